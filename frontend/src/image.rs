//! Recognising an image (SIF, bare squashfs, directory) and reading the
//! metadata that decides the container's environment and default command.

use crate::sif::{self, Sif};
use anyhow::{anyhow, bail, Context, Result};
use husk_protocol::ImageKind;
use serde_json::Value;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The OCI image config fields husk uses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OciConfig {
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug)]
pub struct ImageInfo {
    /// Absolute, symlink-free path.
    pub path: PathBuf,
    pub kind: ImageKind,
    pub config: OciConfig,
    /// Apptainer's inspect metadata (labels, runscript...), when the SIF has it.
    pub apptainer: Option<Value>,
    /// husk's own metadata (source, digest), in SIFs husk wrote: such an
    /// image runs by the OCI rule, with no shell in between.
    pub husk: Option<Value>,
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
}

/// Parse an OCI image config, either whole (`{"config": {...}}`) or just its
/// `config` part, as Apptainer stores it in `oci-config.json`.
pub fn parse_oci_config(data: &[u8]) -> Result<OciConfig> {
    let v: Value = serde_json::from_slice(data).context("oci-config.json is not JSON")?;
    let c = v.get("config").filter(|c| c.is_object()).unwrap_or(&v);
    Ok(OciConfig {
        env: c.get("Env").and_then(strings).unwrap_or_default(),
        entrypoint: c.get("Entrypoint").and_then(strings),
        cmd: c.get("Cmd").and_then(strings),
        working_dir: c.get("WorkingDir").and_then(|s| s.as_str()).map(str::to_owned),
        user: c.get("User").and_then(|s| s.as_str()).map(str::to_owned),
    })
}

pub fn open(arg: &str) -> Result<ImageInfo> {
    let path = std::fs::canonicalize(arg).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("image {arg}: no such file or directory"),
        _ => anyhow!("image {arg}: {}", crate::describe(&e)),
    })?;
    let shown = path.display().to_string();
    let meta = std::fs::metadata(&path).with_context(|| format!("image {shown}"))?;
    if meta.is_dir() {
        let apptainer = dir_metadata(&path);
        return Ok(ImageInfo {
            path,
            kind: ImageKind::Dir,
            config: OciConfig::default(),
            apptainer,
            husk: None,
        });
    }
    let mut f = File::open(&path).map_err(|e| anyhow!("image {shown}: {}", crate::describe(&e)))?;
    let mut head = Vec::with_capacity(64);
    (&mut f).take(64).read_to_end(&mut head).with_context(|| format!("image {shown}"))?;
    if head.starts_with(b"hsqs") {
        return Ok(ImageInfo {
            path,
            kind: ImageKind::Squashfs,
            config: OciConfig::default(),
            apptainer: None,
            husk: None,
        });
    }
    if !sif::has_magic(&head) {
        bail!("image {shown}: not a SIF, squashfs or directory image");
    }
    let s = Sif::read(&mut f).map_err(|e| anyhow!("image {shown}: {e}"))?;
    let part = s.primary_partition().map_err(|e| anyhow!("image {shown}: {e}"))?;
    let kind = ImageKind::Sif { offset: part.offset, size: part.size };
    let config = match s
        .json_object(&mut f, "oci-config.json")
        .map_err(|e| anyhow!("image {shown}: {e}"))?
    {
        Some(data) => parse_oci_config(&data).with_context(|| format!("image {shown}"))?,
        None => OciConfig::default(),
    };
    let apptainer = s
        .json_object(&mut f, "inspect-metadata.json")
        .map_err(|e| anyhow!("image {shown}: {e}"))?
        .and_then(|d| serde_json::from_slice::<Value>(&d).ok());
    let husk = s
        .json_object(&mut f, "husk.json")
        .map_err(|e| anyhow!("image {shown}: {e}"))?
        .and_then(|d| serde_json::from_slice::<Value>(&d).ok());
    Ok(ImageInfo { path, kind, config, apptainer, husk })
}

/// A directory image's `/.singularity.d` files, in the shape of Apptainer's
/// SIF inspect metadata. Read as the caller; unreadable files are left out.
fn dir_metadata(root: &Path) -> Option<Value> {
    let d = root.join(".singularity.d");
    if !d.is_dir() {
        return None;
    }
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    let labels = read(d.join("labels.json")).and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let mut environment = serde_json::Map::new();
    if let Ok(entries) = std::fs::read_dir(d.join("env")) {
        let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names.into_iter().filter(|p| p.extension().is_some_and(|e| e == "sh")) {
            if let Some(text) = read(p.clone()) {
                let key = format!("/.singularity.d/env/{}", p.file_name()?.to_string_lossy());
                environment.insert(key, Value::String(text));
            }
        }
    }
    Some(serde_json::json!({"data": {"attributes": {
        "labels": labels,
        "runscript": read(d.join("runscript")),
        "environment": environment,
    }}}))
}

impl ImageInfo {
    pub fn path_bytes(&self) -> Vec<u8> {
        self.path.as_os_str().as_bytes().to_vec()
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ImageKind::Sif { .. } => "sif",
            ImageKind::Squashfs => "squashfs",
            ImageKind::Dir => "directory",
        }
    }

    /// Whether the image may carry an Apptainer runscript. For a directory we
    /// can look; inside a squashfs the wrapper looks at run time.
    pub fn may_have_runscript(&self) -> bool {
        if self.husk.is_some() {
            return false;
        }
        match self.kind {
            ImageKind::Dir => Path::new(&self.path).join(".singularity.d/runscript").exists(),
            _ => true,
        }
    }

    /// Apptainer's labels, else (a SIF husk wrote) the image config's.
    pub fn labels(&self) -> Option<&Value> {
        if let Some(l) = self.apptainer.as_ref().and_then(|a| a.pointer("/data/attributes/labels"))
        {
            return Some(l);
        }
        self.husk.as_ref()?.pointer("/config/Labels").filter(|l| !l.is_null())
    }

    /// Whether the image's Apptainer environment scripts set anything that
    /// husk does not already take from the OCI config. The script Apptainer
    /// writes from a Docker image's ENV mirrors that config.
    pub fn env_scripts_matter(&self) -> bool {
        if self.husk.is_some() {
            return false;
        }
        let Some(scripts) = self
            .apptainer
            .as_ref()
            .and_then(|a| a.pointer("/data/attributes/environment"))
            .and_then(Value::as_object)
        else {
            return false;
        };
        scripts.iter().any(|(name, body)| {
            if name.ends_with("/10-docker2singularity.sh") && !self.config.env.is_empty() {
                return false;
            }
            body.as_str().is_some_and(|b| {
                b.lines().map(str::trim).any(|l| !l.is_empty() && !l.starts_with('#'))
            })
        })
    }

    pub fn runscript(&self) -> Option<&str> {
        self.apptainer.as_ref()?.pointer("/data/attributes/runscript")?.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_config_both_shapes() {
        let part = br#"{"Env":["PATH=/bin","A=b c"],"Cmd":["sh"]}"#;
        let c = parse_oci_config(part).unwrap();
        assert_eq!(c.env, vec!["PATH=/bin", "A=b c"]);
        assert_eq!(c.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(c.entrypoint, None);
        let whole = br#"{"architecture":"amd64","config":{"Entrypoint":["/e"],"WorkingDir":"/w","User":"1000"}}"#;
        let c = parse_oci_config(whole).unwrap();
        assert_eq!(c.entrypoint, Some(vec!["/e".to_string()]));
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
        assert_eq!(c.user.as_deref(), Some("1000"));
        assert!(parse_oci_config(b"not json").is_err());
    }
}
