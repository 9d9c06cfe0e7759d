//! An image source to a SIF: layers merged while they stream (each blob read
//! once, its digest checked), the merged tree written as the squashfs
//! partition, the image metadata as JSON objects and `/.singularity.d`
//! files. Nothing is extracted to disk, so ownership, devices and setuid
//! bits survive whoever runs the conversion. Same source, same bytes.

use crate::image::OciConfig;
use crate::layers::{self, DataSink, Kind};
use crate::oci::{self, Platform, Source};
use crate::progress::{Counting, Progress};
use crate::sif::{self, SifWriter};
use crate::squashfs::{self, Compression, FileData, InodeId, Meta, Node};
use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

use std::io::{Read, Seek, Write};
use std::path::Path;

pub struct Options {
    pub compression: Compression,
    pub platform: Platform,
}

struct Sink<'a, W: Write + Seek>(&'a mut squashfs::Writer<W>);

impl<W: Write + Seek> DataSink for Sink<'_, W> {
    type Handle = FileData;
    fn write(&mut self, data: &mut dyn Read, len: u64) -> Result<FileData> {
        self.0.write_file_data(data, len)
    }
}

/// Removes a half-written file unless disarmed.
/// Quote a value for a POSIX shell: single quotes, with `'` as `'\''`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn is_shell_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// The `/.singularity.d` files that make Apptainer run the image as husk
/// does: its environment (values quoted, never evaluated) and a runscript
/// with the OCI rule (arguments replace CMD, follow ENTRYPOINT).
fn singularity_files(c: &OciConfig, labels: &Value) -> Vec<(&'static str, Vec<u8>, u32)> {
    let mut env = String::from("#!/bin/sh\n# Written by husk from the image config.\n");
    for e in &c.env {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        if is_shell_name(k) {
            env.push_str(&format!("export {k}={}\n", shell_quote(v)));
        }
    }
    let words = |l: &Option<Vec<String>>| {
        l.iter().flatten().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
    };
    let (ep, cmd) = (words(&c.entrypoint), words(&c.cmd));
    let runscript = format!(
        "#!/bin/sh\n# Written by husk: ENTRYPOINT, then the arguments or else CMD.\n\
         if [ $# -gt 0 ]; then set -- {ep} \"$@\"; else set -- {ep} {cmd}; fi\n\
         if [ $# -eq 0 ]; then set -- /bin/sh; fi\nexec \"$@\"\n"
    );
    let sourcing =
        "for f in /.singularity.d/env/*.sh; do if [ -r \"$f\" ]; then . \"$f\"; fi; done\n";
    let action = |tail: &str| format!("#!/bin/sh\n{sourcing}{tail}\n").into_bytes();
    vec![
        ("env/10-docker2singularity.sh", env.into_bytes(), 0o755),
        ("runscript", runscript.into_bytes(), 0o755),
        ("labels.json", serde_json::to_vec_pretty(labels).unwrap_or_default(), 0o644),
        ("actions/exec", action("exec \"$@\""), 0o755),
        ("actions/run", action("exec /.singularity.d/runscript \"$@\""), 0o755),
        (
            "actions/shell",
            action(
                "if [ -x /bin/bash ]; then exec /bin/bash --norc \"$@\"; fi\nexec /bin/sh \"$@\"",
            ),
            0o755,
        ),
    ]
}

/// Copy the merged tree into the squashfs tree, depth first; a node met
/// again is a hard link.
fn to_squashfs(tree: &layers::Tree<FileData>) -> Result<squashfs::Tree> {
    let meta = |m: &layers::Meta| Meta {
        mode: m.mode,
        uid: m.uid,
        gid: m.gid,
        mtime: u32::try_from(m.mtime).unwrap_or(u32::MAX),
        // squashfs stores the user, trusted and security namespaces only.
        xattrs: m
            .xattrs
            .iter()
            .filter(|(k, _)| squashfs::XATTR_PREFIXES.iter().any(|(p, _)| k.starts_with(p)))
            .cloned()
            .collect(),
    };
    let mut out = squashfs::Tree::new(meta(&tree.nodes[0].meta))?;
    let mut seen: HashMap<usize, InodeId> = HashMap::new();
    let mut stack: Vec<(usize, Vec<u8>)> = vec![(0, Vec::new())];
    while let Some((node, path)) = stack.pop() {
        let Some(children) = tree.children(node) else { continue };
        for (name, entry) in children.iter().rev() {
            let mut p = path.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(name);
            if let Some(&id) = seen.get(&entry.node) {
                out.link(&p, id)?;
                continue;
            }
            let n = &tree.nodes[entry.node];
            let kind = match &n.kind {
                Kind::Dir(_) => Node::Dir,
                Kind::File { data, .. } => Node::File(data.clone()),
                Kind::Symlink(t) => Node::Symlink(t.clone()),
                Kind::Char { major, minor } => Node::CharDevice { major: *major, minor: *minor },
                Kind::Block { major, minor } => Node::BlockDevice { major: *major, minor: *minor },
                Kind::Fifo => Node::Fifo,
            };
            let shown = String::from_utf8_lossy(&p).into_owned();
            let id =
                out.insert(&p, kind, meta(&n.meta)).with_context(|| format!("entry {shown}"))?;
            if matches!(n.kind, Kind::Dir(_)) {
                stack.push((entry.node, p));
            } else {
                seen.insert(entry.node, id);
            }
        }
    }
    Ok(out)
}

fn add_file<W: Write + Seek>(
    tree: &mut layers::Tree<FileData>,
    sq: &mut squashfs::Writer<W>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> Result<()> {
    let fd = sq.write_file_data(&mut &data[..], data.len() as u64)?;
    layers::put_file(tree, path.as_bytes(), fd, data.len() as u64, mode)
}

/// A UUID (version 5 layout) derived from the image digest, so that the SIF
/// names the image it came from and two conversions agree.
fn uuid_for(digest: &str) -> [u8; 16] {
    let h = Sha256::digest(format!("husk-sif:{digest}").as_bytes());
    let mut u = [0u8; 16];
    u.copy_from_slice(&h[..16]);
    u[6] = (u[6] & 0x0f) | 0x50;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// What the conversion read from the source.
pub struct Built {
    pub digest: String,
}

/// Convert `src` into the SIF `dest`, written under a temporary name next
/// to it and renamed into place only when complete.
pub fn build(src: &Source, reference: &str, dest: &Path, opts: &Options) -> Result<Built> {
    let image = oci::resolve(src, &opts.platform)?;
    write_sif(&image, reference, dest, opts)
}

/// Write the SIF for an image already resolved.
pub fn write_sif(
    image: &oci::Image,
    reference: &str,
    dest: &Path,
    opts: &Options,
) -> Result<Built> {
    let cfg: Value = serde_json::from_slice(&image.config).context("image config is not JSON")?;
    let oci_config = crate::image::parse_oci_config(&image.config)?;
    let labels = cfg
        .pointer("/config/Labels")
        .cloned()
        .filter(|v| v.is_object())
        .unwrap_or_else(|| json!({}));
    let arch = cfg.get("architecture").and_then(Value::as_str).unwrap_or("amd64").to_string();
    let variant = cfg.get("variant").and_then(Value::as_str);
    opts.platform.check(&format!("image {}", image.digest), &arch, variant)?;

    dest.file_name().ok_or_else(|| anyhow!("{}: not a file name", dest.display()))?;
    let tmp = crate::temp_beside(dest);
    let guard = crate::scratch::Scratch::new(tmp.clone());
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;

    let mut sifw = SifWriter::new(&mut file);
    let part = sifw.partition()?;
    let sq_opts = squashfs::Options { compression: opts.compression, ..Default::default() };
    let mut sq = squashfs::Writer::new(part, sq_opts)?;
    let mut tree: layers::Tree<FileData> = layers::Tree::new();
    for (i, layer) in image.layers.iter().enumerate() {
        let what = || format!("layer {}", layer.digest);
        let mut blob = image.open_layer(layer).with_context(what)?;
        let short = layer.digest.get(7..19).unwrap_or(&layer.digest);
        let mut progress =
            Progress::new(format!("layer {}/{} {short}", i + 1, image.layers.len()), None);
        {
            let counted = Counting { inner: &mut blob, progress: &mut progress };
            let mut stream = layers::decompress(counted).with_context(what)?;
            layers::apply_layer(&mut tree, &mut stream, i + 1, &mut Sink(&mut sq))
                .with_context(what)?;
            std::io::copy(&mut stream, &mut std::io::sink()).with_context(what)?;
        }
        blob.finish().with_context(what)?;
        progress.finish();
    }
    for (path, data, mode) in singularity_files(&oci_config, &labels) {
        add_file(&mut tree, &mut sq, &format!(".singularity.d/{path}"), &data, mode)?;
    }
    let sqtree = to_squashfs(&tree)?;
    let (_, len) = sq.finish(&sqtree)?;

    let config_part = cfg.get("config").cloned().unwrap_or_else(|| json!({}));
    let meta = json!({
        "source": reference,
        "digest": image.digest,
        "architecture": arch,
        "config": config_part,
    });
    let objects = vec![
        ("oci-config.json".to_string(), serde_json::to_vec(&config_part)?),
        ("husk.json".to_string(), serde_json::to_vec(&meta)?),
    ];
    let info = sif::Info {
        arch: sif::arch_code(&arch),
        uuid: uuid_for(&image.digest),
        time: 0,
        json: &objects,
    };
    sifw.finish(len, &info)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dest).with_context(|| format!("rename to {}", dest.display()))?;
    guard.keep();
    Ok(Built { digest: image.digest.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_is_exact() {
        assert_eq!(shell_quote("a'b $(c) `d`"), r"'a'\''b $(c) `d`'");
        assert!(is_shell_name("_A1") && !is_shell_name("1A") && !is_shell_name("a.b"));
        let c = OciConfig {
            env: vec!["A=x y".into(), "B=it's".into(), "not.valid=1".into()],
            entrypoint: Some(vec!["/e".into()]),
            cmd: Some(vec!["c d".into()]),
            ..Default::default()
        };
        let files = singularity_files(&c, &json!({}));
        let env = String::from_utf8(files[0].1.clone()).unwrap();
        assert!(env.contains("export A='x y'\nexport B='it'\\''s'\n"), "{env}");
        assert!(!env.contains("not.valid"));
        let run = String::from_utf8(files[1].1.clone()).unwrap();
        assert!(run.contains("set -- '/e' \"$@\"; else set -- '/e' 'c d'"), "{run}");
    }
}
