//! Files that exist only while husk works on them: a SIF being written, a
//! blob being downloaded, a cache lock, an `--unsquash` extraction. Each is removed when its guard is
//! dropped, unless kept (renamed into place); and all of them are removed
//! when husk is interrupted (SIGINT, SIGTERM, SIGHUP), after which husk
//! ends by that signal as if it had not caught it.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, Once};

static WATCH: Once = Once::new();
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Directory trees in charge (an `--unsquash` extraction).
static LIVE_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// A helper process writing into one of them, killed first.
static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

fn live() -> MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

fn live_dirs() -> MutexGuard<'static, Vec<PathBuf>> {
    LIVE_DIRS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Take charge of the directory tree `path` (made just after): removed if
/// husk is interrupted, until [`forget_dir`].
pub fn watch_dir(path: &Path) {
    WATCH.call_once(watch_signals);
    live_dirs().push(path.to_path_buf());
}

pub fn forget_dir(path: &Path) {
    let mut l = live_dirs();
    if let Some(i) = l.iter().position(|x| x == path) {
        l.swap_remove(i);
    }
}

/// The process now writing into a watched tree (0: none): killed, should
/// husk be interrupted, before the tree is removed.
pub fn set_child(pid: u32) {
    CHILD.store(pid as i32, std::sync::atomic::Ordering::Relaxed);
}

/// Remove a tree the caller made, though some of its directories may be
/// read-only (an image's /proc, /sys, a 0555 directory).
pub fn remove_tree(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
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

fn forget(p: &Path) {
    let mut l = live();
    if let Some(i) = l.iter().position(|x| x == p) {
        l.swap_remove(i);
    }
}

pub struct Scratch {
    path: Option<PathBuf>,
}

impl Scratch {
    /// Take charge of `path`, which the caller is about to create.
    pub fn new(path: PathBuf) -> Scratch {
        WATCH.call_once(watch_signals);
        live().push(path.clone());
        Scratch { path: Some(path) }
    }

    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// The file was renamed into place: nothing is left to remove.
    pub fn keep(mut self) {
        if let Some(p) = self.path.take() {
            forget(&p);
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(&p);
            forget(&p);
        }
    }
}

fn watch_signals() {
    let sigs = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
    let Ok(rx) = crate::sys::catch_signals(&sigs) else { return };
    std::thread::spawn(move || {
        let sig = crate::sys::next_signal(&rx);
        // Held until the process ends: nothing is taken in charge after
        // this sweep, and callers take charge of a file before making it.
        let held = live();
        // Twice: a file taken in charge just before may be made just after
        // the first sweep (nothing new can be taken in charge meanwhile).
        for pass in 0..2 {
            if pass == 1 {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            for p in held.iter() {
                let _ = std::fs::remove_file(p);
            }
        }
        let child = CHILD.load(std::sync::atomic::Ordering::Relaxed);
        if child > 0 {
            crate::sys::kill(child, libc::SIGKILL);
            let _ = crate::sys::wait_code(child);
        }
        for d in live_dirs().iter() {
            remove_tree(d);
        }
        crate::sys::die_of(sig)
    });
}
