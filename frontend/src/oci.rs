//! Image sources: an OCI image layout (`oci:DIR[:TAG]`), the same packed in
//! a tar (`oci-archive:FILE[:TAG]`), `docker save` output
//! (`docker-archive:FILE[:REF]`) and a registry (`docker://`, in
//! `registry.rs`). Each resolves to one image: its config, its layers in
//! order, and a way to read every blob with its digest checked.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub use crate::registry::ImageRef;

/// Manifests, indexes and configs are small; refuse anything larger.
pub const MAX_JSON: u64 = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    OciDir {
        dir: PathBuf,
        tag: Option<String>,
    },
    OciArchive {
        file: PathBuf,
        tag: Option<String>,
    },
    DockerArchive {
        file: PathBuf,
        reference: Option<String>,
    },
    /// `insecure`: plain HTTP even for a registry not on the loopback.
    Docker {
        image: ImageRef,
        insecure: bool,
    },
}

/// Split `PATH[:TAG]`: the tag is what follows the last `:` when that part
/// has no `/` (so `/a:b/c` is a path).
fn path_and_tag(s: &str) -> (PathBuf, Option<String>) {
    match s.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !p.is_empty() => {
            (PathBuf::from(p), Some(t.to_string()))
        }
        _ => (PathBuf::from(s), None),
    }
}

impl Source {
    /// Parse a source reference; `None` when it is not one of these forms,
    /// an error when it is but is malformed.
    pub fn parse(s: &str) -> Result<Option<Source>> {
        if let Some(rest) = s.strip_prefix("docker://") {
            let image = ImageRef::parse(rest).with_context(|| format!("source {s}"))?;
            return Ok(Some(Source::Docker { image, insecure: false }));
        }
        Ok(Source::parse_local(s))
    }

    /// Allow plain HTTP to a registry source (`--insecure`).
    pub fn insecure(self, insecure: bool) -> Source {
        match self {
            Source::Docker { image, insecure: was } => {
                Source::Docker { image, insecure: was || insecure }
            }
            other => other,
        }
    }

    fn parse_local(s: &str) -> Option<Source> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = path_and_tag(rest);
            return Some(Source::OciDir { dir, tag });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (file, tag) = path_and_tag(rest);
            return Some(Source::OciArchive { file, tag });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            // A reference holds a ':' of its own (name:tag): split at the first
            // ':' that follows an existing file's path.
            for (i, _) in rest.match_indices(':') {
                if Path::new(&rest[..i]).is_file() {
                    return Some(Source::DockerArchive {
                        file: PathBuf::from(&rest[..i]),
                        reference: Some(rest[i + 1..].to_string()),
                    });
                }
            }
            return Some(Source::DockerArchive { file: PathBuf::from(rest), reference: None });
        }
        None
    }
}

/// One layer of the chosen image.
#[derive(Debug, Clone)]
pub struct Layer {
    /// `sha256:HEX` of the blob as stored.
    pub digest: String,
    /// Where the blob is, inside the layout or archive.
    pub path: String,
}

/// The chosen image.
pub struct Image {
    /// `sha256:HEX` naming this image: its manifest's digest (for a docker
    /// archive, which has no manifest, its config's digest).
    pub digest: String,
    /// The image config (JSON), digest-checked.
    pub config: Vec<u8>,
    pub layers: Vec<Layer>,
    blobs: Blobs,
}

/// Files of a layout directory, or members of an uncompressed tar.
enum Blobs {
    Dir(PathBuf),
    Tar { file: PathBuf, members: HashMap<String, (u64, u64)> },
}

fn clean(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            _ => parts.push(c),
        }
    }
    parts.join("/")
}

impl Blobs {
    fn tar(file: &Path) -> Result<Blobs> {
        let f = File::open(file).with_context(|| format!("open {}", file.display()))?;
        let mut ar = tar::Archive::new(f);
        let mut members = HashMap::new();
        let mut links = Vec::new();
        let bad = || format!("{}: not a tar archive, or a damaged one", file.display());
        for e in ar.entries_with_seek().with_context(bad)? {
            let e = e.with_context(bad)?;
            let name = clean(&String::from_utf8_lossy(&e.path_bytes()));
            match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    members.insert(name, (e.raw_file_position(), e.size()));
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    if let Some(t) = e.link_name_bytes() {
                        let t = String::from_utf8_lossy(&t).into_owned();
                        let base = if e.header().entry_type() == tar::EntryType::Symlink {
                            name.rsplit_once('/').map_or(String::new(), |(d, _)| d.to_string())
                        } else {
                            String::new()
                        };
                        links.push((name, clean(&format!("{base}/{t}"))));
                    }
                }
                _ => {}
            }
        }
        // `docker save` links layers shared by several images.
        for (name, target) in links {
            if let Some(&m) = members.get(&target) {
                members.insert(name, m);
            }
        }
        Ok(Blobs::Tar { file: file.to_path_buf(), members })
    }

    fn open(&self, path: &str) -> Result<(Box<dyn Read>, u64)> {
        match self {
            Blobs::Dir(root) => {
                let p = root.join(clean(path));
                let f = File::open(&p).with_context(|| format!("blob {path} is missing"))?;
                let len = f.metadata()?.len();
                Ok((Box::new(f), len))
            }
            Blobs::Tar { file, members } => {
                let &(at, len) =
                    members.get(&clean(path)).ok_or_else(|| anyhow!("blob {path} is missing"))?;
                let mut f = File::open(file)?;
                f.seek(SeekFrom::Start(at))?;
                Ok((Box::new(f.take(len)), len))
            }
        }
    }

    /// A small file, read whole (bounded).
    fn read_small(&self, path: &str) -> Result<Vec<u8>> {
        let (r, len) = self.open(path)?;
        if len > MAX_JSON {
            bail!("{path} is {len} bytes, more than a manifest or config can be");
        }
        let mut v = Vec::with_capacity(len as usize);
        r.take(MAX_JSON).read_to_end(&mut v)?;
        Ok(v)
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// The hex part of a `sha256:HEX` digest, checked to be well formed.
pub fn hex_of(digest: &str) -> Result<&str> {
    let hex =
        digest.strip_prefix("sha256:").ok_or_else(|| anyhow!("unsupported digest {digest}"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        bail!("malformed digest {digest}");
    }
    Ok(hex)
}

pub fn blob_path(digest: &str) -> Result<String> {
    Ok(format!("blobs/sha256/{}", hex_of(digest)?))
}

/// Read a JSON blob by digest and check the digest before parsing it.
fn verified_json(blobs: &Blobs, digest: &str) -> Result<(Vec<u8>, Value)> {
    let data = blobs.read_small(&blob_path(digest)?)?;
    if sha256_hex(&data) != hex_of(digest)? {
        bail!("blob {digest}: digest mismatch");
    }
    let v = serde_json::from_slice(&data).with_context(|| format!("blob {digest} is not JSON"))?;
    Ok((data, v))
}

/// The platform to pick from an index.
#[derive(Debug, Clone)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
    /// Named with `--arch`: an image for another architecture is an error.
    pub explicit: bool,
}

impl Platform {
    pub fn host(arch_override: Option<&str>) -> Platform {
        let (arch, variant) = match arch_override.unwrap_or(std::env::consts::ARCH) {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            a => match a.split_once('/') {
                Some((a, v)) => (a, Some(v)),
                None => (a, None),
            },
        };
        Platform {
            os: "linux".into(),
            arch: arch.to_string(),
            variant: variant.map(str::to_string),
            explicit: arch_override.is_some(),
        }
    }

    /// With `--arch`, refuse an image (`what`) built for another
    /// architecture, as a single-architecture image has no index to pick from.
    pub fn check(&self, what: &str, arch: &str, variant: Option<&str>) -> Result<()> {
        let other_variant = matches!((&self.variant, variant), (Some(w), Some(h)) if w != h);
        if self.explicit && (arch != self.arch || other_variant) {
            let have = variant.map_or(arch.to_string(), |v| format!("{arch}/{v}"));
            bail!(
                "--arch {}: {what} is for {have} only",
                self.describe().trim_start_matches("linux/")
            );
        }
        Ok(())
    }

    fn matches(&self, p: &Value) -> bool {
        let s = |k: &str| p.get(k).and_then(Value::as_str);
        if s("os") != Some(&self.os) || s("architecture") != Some(&self.arch) {
            return false;
        }
        match (&self.variant, s("variant")) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        }
    }

    pub fn describe(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{}", self.os, self.arch, v),
            None => format!("{}/{}", self.os, self.arch),
        }
    }
}

fn is_index(media_type: Option<&str>, v: &Value) -> bool {
    matches!(
        media_type,
        Some("application/vnd.oci.image.index.v1+json")
            | Some("application/vnd.docker.distribution.manifest.list.v2+json")
    ) || (media_type.is_none() && v.get("manifests").is_some())
}

/// A manifest or an index, read and digest-checked.
#[derive(Debug, Clone)]
pub struct Doc {
    pub digest: String,
    /// From the descriptor or the transport, when either said.
    pub media_type: Option<String>,
    pub json: Value,
}

/// A blob named by a manifest.
#[derive(Debug, Clone)]
pub struct Descriptor {
    pub digest: String,
    pub size: Option<u64>,
}

impl Descriptor {
    fn from_json(v: &Value, what: &str) -> Result<Descriptor> {
        let digest = v
            .get("digest")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{what} without digest"))?;
        hex_of(digest)?;
        Ok(Descriptor { digest: digest.to_string(), size: v.get("size").and_then(Value::as_u64) })
    }
}

/// The image manifest chosen for a platform: what it names, in order.
#[derive(Debug)]
pub struct Manifest {
    pub digest: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// From a first manifest or index, follow indexes to the image manifest for
/// `platform`; `fetch` reads the document a descriptor names. Layouts and
/// registries share this, so they pick the same image.
pub fn follow(
    mut doc: Doc,
    platform: &Platform,
    mut fetch: impl FnMut(&Value) -> Result<Doc>,
) -> Result<Manifest> {
    for _ in 0..4 {
        let v = &doc.json;
        let digest = &doc.digest;
        let mt = v.get("mediaType").and_then(Value::as_str).or(doc.media_type.as_deref());
        if is_index(mt, v) {
            let list = v.get("manifests").and_then(Value::as_array).cloned().unwrap_or_default();
            let desc = list
                .iter()
                .find(|m| m.get("platform").is_some_and(|p| platform.matches(p)))
                .ok_or_else(|| {
                    anyhow!("index {digest} has no image for platform {}", platform.describe())
                })?;
            doc = fetch(desc)?;
            continue;
        }
        if v.get("schemaVersion").and_then(Value::as_u64) == Some(1) {
            bail!("manifest {digest}: Docker schema 1 manifests are not supported");
        }
        let config = v
            .get("config")
            .ok_or_else(|| anyhow!("manifest {digest} has no config"))
            .and_then(|c| Descriptor::from_json(c, "config"))?;
        let layers = v
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("manifest {digest} has no layers"))?
            .iter()
            .map(|l| Descriptor::from_json(l, "layer"))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Manifest { digest: doc.digest, config, layers });
    }
    bail!("indexes nested too deeply")
}

impl Image {
    /// The image a manifest names, its blobs under `blobs/sha256/` of a
    /// layout or archive (or the cache, for registry images).
    fn from_manifest(blobs: Blobs, m: Manifest) -> Result<Image> {
        let (config, _) = verified_json(&blobs, &m.config.digest)?;
        let layers = m
            .layers
            .into_iter()
            .map(|l| Ok(Layer { path: blob_path(&l.digest)?, digest: l.digest }))
            .collect::<Result<Vec<_>>>()?;
        Ok(Image { digest: m.digest, config, layers, blobs })
    }

    /// A registry image whose blobs are in the cache directory `root`.
    pub fn in_cache(root: PathBuf, m: Manifest) -> Result<Image> {
        Image::from_manifest(Blobs::Dir(root), m)
    }
}

/// From a descriptor in index.json, the image for `platform`.
fn resolve_manifest(blobs: Blobs, desc: &Value, platform: &Platform) -> Result<Image> {
    let read = |d: &Value| -> Result<Doc> {
        let desc = Descriptor::from_json(d, "descriptor")?;
        let (_, json) = verified_json(&blobs, &desc.digest)?;
        let media_type = d.get("mediaType").and_then(Value::as_str).map(str::to_owned);
        Ok(Doc { digest: desc.digest, media_type, json })
    };
    let m = follow(read(desc)?, platform, read)?;
    Image::from_manifest(blobs, m)
}

fn from_layout(blobs: Blobs, tag: Option<&str>, platform: &Platform, what: &str) -> Result<Image> {
    let index: Value = serde_json::from_slice(
        &blobs.read_small("index.json").with_context(|| format!("{what}: no index.json"))?,
    )
    .with_context(|| format!("{what}: index.json is not JSON"))?;
    let list = index.get("manifests").and_then(Value::as_array).cloned().unwrap_or_default();
    let name = |m: &Value| {
        m.pointer("/annotations/org.opencontainers.image.ref.name")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let chosen = match tag {
        Some(t) => list.iter().find(|m| name(m).as_deref() == Some(t)),
        None if list.len() == 1 => list.first(),
        None => list.iter().find(|m| name(m).as_deref() == Some("latest")),
    };
    let Some(desc) = chosen else {
        let tags: Vec<String> = list.iter().filter_map(name).collect();
        match tag {
            Some(t) => bail!("{what}: no image tagged {t} (tags: {})", tags.join(", ")),
            None => bail!("{what}: holds several images; name one of: {}", tags.join(", ")),
        }
    };
    resolve_manifest(blobs, desc, platform).with_context(|| what.to_string())
}

fn docker_archive(file: &Path, reference: Option<&str>, platform: &Platform) -> Result<Image> {
    let what = format!("docker-archive {}", file.display());
    let blobs = Blobs::tar(file).with_context(|| what.clone())?;
    let manifest: Value = serde_json::from_slice(
        &blobs.read_small("manifest.json").with_context(|| format!("{what}: no manifest.json"))?,
    )
    .with_context(|| format!("{what}: manifest.json is not JSON"))?;
    let entries = manifest.as_array().cloned().unwrap_or_default();
    let tags = |e: &Value| -> Vec<String> {
        e.get("RepoTags")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let wanted = |t: &str, r: &str| {
        t == r || t == format!("{r}:latest") || t.rsplit_once('/').is_some_and(|(_, n)| n == r)
    };
    let entry = match reference {
        Some(r) => entries.iter().find(|e| tags(e).iter().any(|t| wanted(t, r))),
        None if entries.len() == 1 => entries.first(),
        None => None,
    };
    let Some(entry) = entry else {
        let all: Vec<String> = entries.iter().flat_map(tags).collect();
        bail!(
            "{what}: no image {} (images: {})",
            reference.unwrap_or("given and several are present"),
            all.join(", ")
        );
    };
    let config_path = entry
        .get("Config")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{what}: manifest.json entry without Config"))?;
    let config = blobs.read_small(config_path).with_context(|| what.clone())?;
    let config_hex = sha256_hex(&config);
    // The config is named by its digest (`HEX.json` or `blobs/sha256/HEX`).
    let named = config_path.rsplit('/').next().unwrap_or("").trim_end_matches(".json");
    if named.len() == 64 && named != config_hex {
        bail!("{what}: config {config_path}: digest mismatch");
    }
    let cfg: Value =
        serde_json::from_slice(&config).with_context(|| format!("{what}: config is not JSON"))?;
    if let Some(arch) = cfg.get("architecture").and_then(Value::as_str) {
        if arch != platform.arch {
            bail!("{what}: image is for {arch}, not {}", platform.arch);
        }
    }
    let diff_ids: Vec<String> = cfg
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let paths: Vec<String> = entry
        .get("Layers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if paths.len() != diff_ids.len() {
        bail!("{what}: {} layers but {} diff_ids in the config", paths.len(), diff_ids.len());
    }
    // Layers are stored uncompressed: their digests are the config's diff_ids.
    let layers =
        paths.into_iter().zip(diff_ids).map(|(path, digest)| Layer { digest, path }).collect();
    Ok(Image { digest: format!("sha256:{config_hex}"), config, layers, blobs })
}

pub fn resolve(src: &Source, platform: &Platform) -> Result<Image> {
    match src {
        Source::OciDir { dir, tag } => {
            let what = format!("oci:{}", dir.display());
            if !dir.join("oci-layout").is_file() {
                bail!("{what}: not an OCI image layout (no oci-layout file)");
            }
            from_layout(Blobs::Dir(dir.clone()), tag.as_deref(), platform, &what)
        }
        Source::OciArchive { file, tag } => {
            let what = format!("oci-archive:{}", file.display());
            let blobs = Blobs::tar(file).with_context(|| what.clone())?;
            from_layout(blobs, tag.as_deref(), platform, &what)
        }
        Source::DockerArchive { file, reference } => {
            docker_archive(file, reference.as_deref(), platform)
        }
        Source::Docker { .. } => locate(src, platform)?.fetch(),
    }
}

/// A source resolved as far as its image digest; a registry image's blobs
/// are fetched only by `fetch`, so a cached SIF costs a manifest request.
pub enum Located {
    Local(Image),
    Remote(Box<crate::registry::Pending>),
}

impl Located {
    pub fn digest(&self) -> &str {
        match self {
            Located::Local(i) => &i.digest,
            Located::Remote(p) => &p.manifest.digest,
        }
    }

    pub fn fetch(self) -> Result<Image> {
        match self {
            Located::Local(i) => Ok(i),
            Located::Remote(p) => p.fetch(),
        }
    }
}

pub fn locate(src: &Source, platform: &Platform) -> Result<Located> {
    match src {
        Source::Docker { image, insecure } => crate::registry::locate(image, *insecure, platform)
            .map(|p| Located::Remote(Box::new(p))),
        _ => resolve(src, platform).map(Located::Local),
    }
}

/// A reader that hashes what passes through and fails at the end of the
/// stream if the digest is not the expected one.
pub struct Verified<R> {
    inner: R,
    hasher: Sha256,
    expect: String,
    digest: String,
    done: bool,
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        if n == 0 && !buf.is_empty() && !self.done {
            self.done = true;
            let got = format!("{:x}", self.hasher.clone().finalize());
            if got != self.expect {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("blob {}: digest mismatch (got sha256:{got})", self.digest),
                ));
            }
        }
        Ok(n)
    }
}

impl<R: Read> Verified<R> {
    /// Read to the end (a tar reader stops at its end marker) so that the
    /// digest is checked over every byte.
    pub fn finish(mut self) -> Result<()> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok(())
    }
}

impl Image {
    /// Open a layer's blob; the digest is checked when it has been read.
    pub fn open_layer(&self, layer: &Layer) -> Result<Verified<Box<dyn Read>>> {
        let (r, _) = self.blobs.open(&layer.path)?;
        Ok(Verified {
            inner: r,
            hasher: Sha256::new(),
            expect: hex_of(&layer.digest)?.to_string(),
            digest: layer.digest.clone(),
            done: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_forms() {
        let parse = |s: &str| Source::parse(s).unwrap();
        assert_eq!(
            parse("oci:/x/y:1.0"),
            Some(Source::OciDir { dir: "/x/y".into(), tag: Some("1.0".into()) })
        );
        assert_eq!(parse("oci:/x:y/z"), Some(Source::OciDir { dir: "/x:y/z".into(), tag: None }));
        assert_eq!(
            parse("oci-archive:img.tar"),
            Some(Source::OciArchive { file: "img.tar".into(), tag: None })
        );
        assert_eq!(
            parse("docker-archive:/nonexistent.tar"),
            Some(Source::DockerArchive { file: "/nonexistent.tar".into(), reference: None })
        );
        assert_eq!(parse("/x.sif"), None);
    }

    #[test]
    fn digests_are_checked() {
        assert!(hex_of("sha256:abc").is_err());
        assert!(hex_of(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(hex_of(&format!("sha512:{}", "a".repeat(64))).is_err());
        let data = b"hello";
        let good = sha256_hex(data);
        let mut v = Verified {
            inner: &data[..],
            hasher: Sha256::new(),
            expect: good,
            digest: "d".into(),
            done: false,
        };
        let mut out = Vec::new();
        v.read_to_end(&mut out).unwrap();
        let mut v = Verified {
            inner: &data[..],
            hasher: Sha256::new(),
            expect: "0".repeat(64),
            digest: "sha256:bad".into(),
            done: false,
        };
        let err = v.read_to_end(&mut out).unwrap_err();
        assert!(err.to_string().contains("sha256:bad"), "{err}");
    }
}
