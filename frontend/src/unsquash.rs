//! `--unsquash`: a SIF or squashfs image extracted by `unsquashfs` into a
//! temporary directory of the caller's, for hosts with neither the setuid
//! starter's loop devices nor FUSE. The directory is removed when the
//! container ends; one left by a husk that was killed is removed by the
//! next `--unsquash` run of the same user.

use crate::image::ImageInfo;
use anyhow::{bail, Context, Result};
use husk_protocol::ImageKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PREFIX: &str = "husk-unsquash-";

pub struct Unpacked {
    dir: PathBuf,
    /// `dir/root`, which unsquashfs makes itself.
    root: PathBuf,
}

fn find_tool() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("unsquashfs"))
        .find(|p| p.is_file())
        .context("--unsquash: unsquashfs not found (install the squashfs-tools package)")
}

impl Unpacked {
    pub fn new(img: &ImageInfo) -> Result<Unpacked> {
        let tool = find_tool()?;
        let base = std::env::temp_dir();
        sweep(&base);
        // PREFIX, our pid (for `sweep`), then something no one can guess:
        // another user may not block the name in a shared /tmp.
        let mut tries = 0;
        let dir = loop {
            let dir = base.join(format!("{PREFIX}{}-{:016x}", std::process::id(), random()?));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
                r => {
                    break r
                        .map(|_| dir.clone())
                        .with_context(|| format!("--unsquash: create {}", dir.display()))?
                }
            }
        };
        let root = dir.join("root");
        let u = Unpacked { dir, root };
        let offset = match img.kind {
            ImageKind::Sif { offset, .. } => offset,
            _ => 0,
        };
        let out = Command::new(&tool)
            .args(["-n", "-no-xattrs", "-o", &offset.to_string(), "-d"])
            .arg(u.root())
            .arg(&img.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("--unsquash: run {}", tool.display()))?;
        if !out.status.success() || !u.root().is_dir() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("failed");
            bail!(
                "--unsquash: unsquashfs could not extract {}: {}",
                img.path.display(),
                last.trim()
            );
        }
        Ok(u)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        remove(&self.dir);
    }
}

fn random() -> Result<u64> {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .context("--unsquash: read /dev/urandom")?;
    Ok(u64::from_le_bytes(b))
}

/// Remove a tree the caller made, though some of its directories may be
/// read-only (an image's /proc, /sys, a 0555 directory).
fn remove(dir: &Path) {
    fn open_up(p: &Path) {
        let Ok(md) = std::fs::symlink_metadata(p) else { return };
        if !md.is_dir() {
            return;
        }
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                open_up(&e.path());
            }
        }
    }
    open_up(dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// Extractions whose husk is gone (killed): removed, if they are ours.
fn sweep(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else { return };
    let me = crate::sys::ids().0;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else { continue };
        let pid = rest.split('-').next().unwrap_or("");
        if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        if e.metadata().is_ok_and(|m| m.uid() == me) {
            remove(&e.path());
        }
    }
}
