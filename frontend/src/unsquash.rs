//! `--unsquash`: a SIF or squashfs image extracted by `unsquashfs` into a
//! temporary directory of the caller's, for hosts with neither the setuid
//! starter's loop devices nor FUSE. The directory is removed when the
//! container ends; one left by a husk that was killed is removed by the
//! next `--unsquash` run of the same user (see `sweep`).

use crate::image::ImageInfo;
use anyhow::{bail, Context, Result};
use husk_protocol::ImageKind;
use std::io::IsTerminal;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PREFIX: &str = "husk-unsquash-";

pub struct Unpacked {
    /// Locked as long as this husk lives (see [`sweep`]).
    _lock: std::fs::File,
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
            crate::scratch::watch_dir(&dir);
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => {
                    crate::scratch::forget_dir(&dir);
                    tries += 1;
                }
                r => {
                    if r.is_err() {
                        crate::scratch::forget_dir(&dir);
                    }
                    break r
                        .map(|_| dir.clone())
                        .with_context(|| format!("--unsquash: create {}", dir.display()))?;
                }
            }
        };
        let root = dir.join("root");
        let lock = std::fs::File::create(dir.join(".lock"))
            .and_then(|f| crate::sys::lock_file(&f, true).map(|_| f))
            .with_context(|| format!("--unsquash: lock {}", dir.display()))?;
        let u = Unpacked { _lock: lock, dir, root };
        let offset = match img.kind {
            ImageKind::Sif { offset, .. } => offset,
            _ => 0,
        };
        if std::io::stderr().is_terminal() {
            eprintln!("husk: extracting {} into {}", img.path.display(), u.dir.display());
        }
        // -ig: a device node, which only root may make, is left out rather
        // than failing the whole extraction (what else failed is told
        // apart below).
        let mut cmd = Command::new(&tool);
        cmd.args(["-n", "-no-xattrs", "-ig", "-o", &offset.to_string(), "-d"])
            .arg(u.root())
            .arg(&img.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Killed, husk takes the extraction with it.
        crate::sys::die_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("--unsquash: run {}", tool.display()))?;
        // Interrupted now, husk kills it and removes the tree.
        crate::scratch::set_child(child.id());
        let out = child.wait_with_output().context("--unsquash: wait for unsquashfs")?;
        crate::scratch::set_child(0);
        // Ended by ^C (the terminal signals the whole group) or the like:
        // husk ends the same way, with nothing left.
        if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&out.status) {
            drop(u);
            crate::sys::die_of(sig);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let devices = err.lines().filter(|l| is_device_error(l)).count();
        // Anything else it said is an error (a full disk, say): with -ig it
        // would otherwise only exit 2, as for the device nodes.
        let other: Vec<&str> =
            err.lines().map(str::trim).filter(|l| !l.is_empty() && !is_device_error(l)).collect();
        let ok = match out.status.code() {
            Some(0) => true,
            Some(2) => other.is_empty(),
            _ => false,
        };
        if !ok || !u.root().is_dir() {
            let lines: Vec<&str> = err.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            let why = match other.as_slice() {
                [] => lines[lines.len().saturating_sub(2)..].join("; "),
                o => o[o.len().saturating_sub(2)..].join("; "),
            };
            let why = if why.is_empty() { "failed".to_string() } else { why };
            bail!("--unsquash: unsquashfs could not extract {}: {why}", img.path.display());
        }
        if devices > 0 {
            eprintln!(
                "husk: warning: --unsquash: {devices} device node(s) of the image left out (only root can make them)"
            );
        }
        Ok(u)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn is_device_error(line: &str) -> bool {
    line.contains("could not create") && line.contains("not superuser")
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        crate::scratch::remove_tree(&self.dir);
        crate::scratch::forget_dir(&self.dir);
    }
}

fn random() -> Result<u64> {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .context("--unsquash: read /dev/urandom")?;
    Ok(u64::from_le_bytes(b))
}

/// Extractions whose husk is gone (killed): removed, if they are ours. A
/// husk holds its extraction's lock while it lives, wherever it runs (in
/// another PID namespace, on another node sharing this directory); a lock
/// that can be taken is a husk that has ended. One without a lock file is
/// still being made.
fn sweep(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else { return };
    let me = crate::sys::ids().0;
    for e in rd.flatten() {
        if !e.file_name().to_str().is_some_and(|n| n.starts_with(PREFIX)) {
            continue;
        }
        if !e.metadata().is_ok_and(|m| m.uid() == me && m.is_dir()) {
            continue;
        }
        let Ok(lock) = std::fs::File::open(e.path().join(".lock")) else { continue };
        if crate::sys::lock_file(&lock, false).is_ok() {
            crate::scratch::remove_tree(&e.path());
        }
    }
}
