//! The image cache under `$HUSK_CACHEDIR` (default `~/.cache/husk`): SIFs
//! by image digest and source (`sif/HEX-SRC.sif`, SRC a short hash of the
//! source as given, since a SIF records the source it came from) and
//! registry blobs by digest
//! (`blobs/sha256/HEX`). Each is written under a temporary name and renamed
//! into place, under a per-item lock, so concurrent runs do the work once
//! and an interrupted one leaves nothing a later run trusts.

use crate::convert::{self, Options};
use crate::oci::{self, Source};
use anyhow::{anyhow, Context, Result};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

pub fn dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("HUSK_CACHEDIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("HOME is not set; set HUSK_CACHEDIR"))?;
    Ok(PathBuf::from(home).join(".cache/husk"))
}

fn subdir(name: &str) -> Result<PathBuf> {
    let d = dir()?.join(name);
    fs::create_dir_all(&d).with_context(|| format!("cache {}", d.display()))?;
    Ok(d)
}

/// Where registry blobs are kept: `blobs/sha256/HEX` under the cache root
/// (the layout of an OCI image layout, so blobs are read the same way).
pub fn blob_dir() -> Result<PathBuf> {
    subdir("blobs/sha256")
}

/// An exclusive lock on a cache item, held until dropped. The lock file is
/// removed on drop: a process that then locks a fresh file only finds the
/// item done, and work in progress always goes to a name of its own.
pub struct Lock {
    // Dropped in this order: the file goes, then the lock.
    _path: crate::scratch::Scratch,
    _file: File,
}

pub fn lock(path: &Path) -> Result<Lock> {
    // In charge before it exists, so that an interrupted pull leaves none.
    // (A waiter interrupted meanwhile may remove the file another process
    // holds; a third may then do the same work at once, which the renames
    // into place make harmless.)
    let scratch = crate::scratch::Scratch::new(path.to_path_buf());
    let file = File::create(path).with_context(|| format!("cache lock {}", path.display()))?;
    file.lock().with_context(|| format!("cache lock {}", path.display()))?;
    Ok(Lock { _path: scratch, _file: file })
}

/// The cached SIF for `src`, converted first if it is not there yet. For a
/// registry image only the manifest is fetched when the SIF is cached.
pub fn sif_for(src: &Source, reference: &str, opts: &Options) -> Result<PathBuf> {
    let located = oci::locate(src, &opts.platform)?;
    let hex = oci::hex_of(located.digest())?;
    let key = format!("{hex}-{}", &oci::sha256_hex(reference.as_bytes())[..12]);
    let dir = subdir("sif")?;
    let path = dir.join(format!("{key}.sif"));
    if path.is_file() {
        if opts.platform.explicit {
            let img = crate::image::open(&path.to_string_lossy())?;
            let arch = img.husk.as_ref().and_then(|h| h.get("architecture")?.as_str());
            opts.platform.check(
                &format!("image {}", located.digest()),
                arch.unwrap_or("?"),
                None,
            )?;
        }
        return Ok(path);
    }
    let _lock = lock(&dir.join(format!("{key}.lock")))?;
    // Whoever held the lock may have written it meanwhile.
    if !path.is_file() {
        let image = located.fetch()?;
        convert::write_sif(&image, reference, &path, opts)?;
    }
    Ok(path)
}

pub fn list() -> Result<()> {
    let dir = subdir("sif")?;
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
        say!("{}  {:>10}  {}", e.file_name().to_string_lossy(), len, source);
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
