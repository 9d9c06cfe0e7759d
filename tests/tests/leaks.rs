//! Nothing outlives a container: after many runs the host's mount table,
//! its loop devices and its process list are as they were. Alone in its own
//! test binary so that no other test's containers are running meanwhile.

mod common;
use common::*;

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
}
