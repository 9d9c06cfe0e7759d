//! Files that exist only while husk works on them: a SIF being written, a
//! blob being downloaded, a cache lock. Each is removed when its guard is
//! dropped, unless kept (renamed into place); and all of them are removed
//! when husk is interrupted (SIGINT, SIGTERM, SIGHUP), after which husk
//! ends by that signal as if it had not caught it.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, Once};

static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
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
        static WATCH: Once = Once::new();
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
        crate::sys::die_of(sig)
    });
}
