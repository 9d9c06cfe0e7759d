//! The image cache: SIFs by image digest under `$HUSK_CACHEDIR` (default
//! `~/.cache/husk`). A SIF is written under a temporary name and renamed
//! into place, under a per-image lock, so concurrent runs convert once and
//! an interrupted conversion leaves nothing a later run trusts.

use crate::convert::{self, Options};
use crate::oci::{self, Source};
use anyhow::{anyhow, Context, Result};
use std::fs::{self, File};
use std::path::PathBuf;

pub fn dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("HUSK_CACHEDIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("HOME is not set; set HUSK_CACHEDIR"))?;
    Ok(PathBuf::from(home).join(".cache/husk"))
}

fn sif_dir() -> Result<PathBuf> {
    let d = dir()?.join("sif");
    fs::create_dir_all(&d).with_context(|| format!("cache {}", d.display()))?;
    Ok(d)
}

/// The cached SIF for `src`, converted first if it is not there yet.
pub fn sif_for(src: &Source, reference: &str, opts: &Options) -> Result<PathBuf> {
    let image = oci::resolve(src, &opts.platform)?;
    let hex = image.digest.strip_prefix("sha256:").unwrap_or(&image.digest).to_string();
    let dir = sif_dir()?;
    let path = dir.join(format!("{hex}.sif"));
    if path.is_file() {
        return Ok(path);
    }
    let lock_path = dir.join(format!("{hex}.lock"));
    let lock =
        File::create(&lock_path).with_context(|| format!("cache lock {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("cache lock {}", lock_path.display()))?;
    // Whoever held the lock may have written it meanwhile.
    if !path.is_file() {
        convert::write_sif(&image, reference, &path, opts)?;
    }
    let _ = fs::remove_file(&lock_path);
    Ok(path)
}

pub fn list() -> Result<()> {
    let dir = sif_dir()?;
    let mut entries: Vec<_> = fs::read_dir(&dir)?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "sif"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        let source = crate::image::open(&e.path().to_string_lossy())
            .ok()
            .and_then(|i| {
                i.husk.and_then(|h| h.get("source").and_then(|s| s.as_str()).map(str::to_owned))
            })
            .unwrap_or_default();
        println!("{}  {:>10}  {}", e.file_name().to_string_lossy(), len, source);
    }
    Ok(())
}

pub fn clean() -> Result<()> {
    let dir = dir()?;
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    eprintln!("husk: removed {}", dir.display());
    Ok(())
}
