//! Nothing outlives a container: after many runs, and after runs killed
//! halfway, the host's mount table, its loop devices and its process list
//! are as they were, and no squashfuse (user-namespace mode) is left. Alone in its own
//! test binary so that no other test's containers are running meanwhile.

mod common;
use common::*;

/// The tests here compare the whole host before and after: one at a time.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

fn mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

fn loops() -> String {
    sh("losetup -a")
}

/// Processes whose executable is inside the test prefix or image directory.
fn husk_processes() -> Vec<String> {
    let e = env().unwrap();
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(exe) = std::fs::read_link(entry.path().join("exe")) {
            if exe.starts_with(&e.prefix) || exe.starts_with(&e.work) {
                found.push(format!("{} {}", entry.file_name().to_string_lossy(), exe.display()));
            }
        }
    }
    found
}

#[test]
fn two_hundred_runs_leave_nothing_behind() {
    if env().is_none() {
        return;
    }
    let kinds = all_kinds();
    if kinds.is_empty() {
        return;
    }
    let _alone = alone();
    let (m0, l0) = (mounts(), loops());
    for i in 0..200 {
        let (kind, img) = &kinds[i % kinds.len()];
        let r = husk(&["exec", &img.to_string_lossy(), "true"]).run();
        assert_eq!(r.code, 0, "run {i} ({kind:?}): {}", r.stderr);
    }
    // Failed starts too: a missing command after the image is mounted.
    for (_, img) in &kinds {
        let r = husk(&["exec", &img.to_string_lossy(), "no-such-command"]).run();
        assert_eq!(r.code, 127);
    }
    // Loop devices detach when the last mount goes; give the kernel a moment.
    let mut tries = 0;
    while loops() != l0 && tries < 50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        tries += 1;
    }
    assert_eq!(loops(), l0, "loop devices left behind");
    assert_eq!(mounts(), m0, "host mount table changed");
    assert_eq!(husk_processes(), Vec::<String>::new(), "husk processes left behind");
    assert_eq!(fuse_leftovers(), Vec::<String>::new(), "squashfuse left behind");
}

/// squashfuse processes, and FUSE mounts that any process still sees (a
/// container's mounts live in its own namespace, so the host's table alone
/// would not tell).
fn fuse_leftovers() -> Vec<String> {
    let uid = env().unwrap().uid;
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = entry.path();
        // The test user's processes (other users' containers are theirs).
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata(&p).map(|m| m.uid()).ok() != Some(uid) {
            continue;
        }
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.starts_with("squashfuse") {
            found.push(format!("process {} {}", entry.file_name().to_string_lossy(), comm.trim()));
        }
        let mi = std::fs::read_to_string(p.join("mountinfo")).unwrap_or_default();
        if mi.contains("fuse.squashfuse") {
            found.push(format!("FUSE mount seen by {}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// Wait (up to 10 s) until `done` holds: the kernel delivers parent-death
/// signals and tears namespaces down a moment after a kill.
fn settle(done: impl Fn() -> bool) {
    for _ in 0..100 {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn runs_killed_halfway_leave_nothing_behind() {
    let Some(e) = env() else { return };
    let kinds = all_kinds();
    if kinds.is_empty() {
        return;
    }
    let _alone = alone();
    let (m0, l0) = (mounts(), loops());
    for i in 0..20 {
        let (kind, img) = &kinds[i % kinds.len()];
        let marker = e.home.join(format!(".husk-killed-{i}"));
        let _ = std::fs::remove_file(&marker);
        let script = format!("touch {}; exec sleep 30", marker.display());
        let mut child =
            husk(&["exec", &img.to_string_lossy(), "sh", "-c", &script]).command().spawn().unwrap();
        if i % 2 == 0 {
            // Once the container runs.
            settle(|| marker.exists());
            assert!(marker.exists(), "run {i} ({kind:?}) did not start");
        } else {
            // While it is being set up.
            std::thread::sleep(std::time::Duration::from_millis(3 * i as u64));
        }
        sh(&format!("kill -KILL {}", child.id()));
        let _ = child.wait();
        let _ = std::fs::remove_file(&marker);
    }
    settle(|| fuse_leftovers().is_empty() && husk_processes().is_empty() && loops() == l0);
    assert_eq!(fuse_leftovers(), Vec::<String>::new(), "squashfuse left behind");
    assert_eq!(husk_processes(), Vec::<String>::new(), "husk processes left behind");
    assert_eq!(loops(), l0, "loop devices left behind");
    assert_eq!(mounts(), m0, "host mount table changed");
}
