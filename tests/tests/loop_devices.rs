//! Loop devices under contention. The kernel names the lowest free loop
//! device to every start alike, and a device it calls free may already be
//! claimed by someone else (another start, blkid, an admin's tool): a start
//! must pass over it, not fail. Containers of one image file running at
//! once share one loop device (and so one squashfs cache). In their own
//! test binary, one at a time, so that the device a test holds stays the
//! first free one.

mod common;
use common::*;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn starts_pass_over_a_claimed_loop_device_and_survive_a_crowd() {
    if env().is_none() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(sif) = image(Kind::Sif) else { return };
    let sif = sif.to_string_lossy().into_owned();
    // Claimed with O_EXCL, the device stays unbound (the first free one)
    // but cannot be configured.
    let dev = sh("losetup -f").trim().to_string();
    let _hold = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&dev)
        .unwrap_or_else(|e| panic!("claim {dev}: {e}"));
    assert_eq!(sh("losetup -f").trim(), dev, "the claimed device is still the first free one");
    for i in 0..3 {
        let r = husk(&["exec", &sif, "true"]).run();
        assert_eq!(r.code, 0, "start {i} with {dev} claimed: {}", r.stderr);
    }
    // A crowd of starts at once, all converging on the same free devices.
    let crowd: Vec<_> = (0..64)
        .map(|_| {
            let sif = sif.clone();
            std::thread::spawn(move || husk(&["exec", &sif, "true"]).run())
        })
        .collect();
    let failed: Vec<String> = crowd
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|r| r.code != 0)
        .map(|r| format!("{}: {}", r.code, r.stderr.trim()))
        .collect();
    assert_eq!(failed, Vec::<String>::new(), "starts among 64 concurrent ones failed");
}

/// Remove every loop device that nothing uses, as on a fresh machine,
/// where concurrent starts must create devices (and a device another start
/// is creating may not be openable yet: no node, or not live).
fn remove_unused_loop_devices() {
    sh(r#"python3 - <<'EOF'
import fcntl, os
ctl = os.open("/dev/loop-control", os.O_RDWR)
for name in os.listdir("/sys/block"):
    if name.startswith("loop") and not os.path.exists(f"/sys/block/{name}/loop"):
        try:
            fcntl.ioctl(ctl, 0x4C81, int(name[4:]))  # LOOP_CTL_REMOVE
        except OSError:
            pass
EOF"#);
}

#[test]
fn a_crowd_of_starts_that_must_create_loop_devices_all_succeed() {
    if env().is_none() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(e) = env() else { return };
    let Some(sif) = image(Kind::Sif) else { return };
    // Several files, so that the starts cannot all share one device.
    let copies: Vec<String> = (0..8)
        .map(|i| {
            let c = e.work.join(format!("images/busybox-crowd-{i}.sif"));
            sh(&format!("cp {} {1} && chmod 644 {1}", sif.display(), c.display()));
            c.to_string_lossy().into_owned()
        })
        .collect();
    for round in 0..3 {
        remove_unused_loop_devices();
        let crowd: Vec<_> = (0..32)
            .map(|i| {
                let img = copies[i % copies.len()].clone();
                std::thread::spawn(move || husk(&["exec", &img, "true"]).run())
            })
            .collect();
        let failed: Vec<String> = crowd
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|r| r.code != 0)
            .map(|r| format!("{}: {}", r.code, r.stderr.trim()))
            .collect();
        assert_eq!(failed, Vec::<String>::new(), "round {round}: starts failed");
    }
}

#[test]
fn containers_of_one_image_share_its_loop_device_and_no_other() {
    let Some(e) = env() else { return };
    let Some(sif) = image(Kind::Sif) else { return };
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sif = sif.to_string_lossy().into_owned();
    assert_eq!(loops_while_two_run(&sif, &sif), (1, 1), "two containers of {sif}");
    // A copy has the same bytes but is another file: never its device.
    let copy = e.work.join("images/busybox-copy.sif");
    sh(&format!("cp {sif} {0} && chmod 644 {0}", copy.display()));
    let copy = copy.to_string_lossy().into_owned();
    assert_eq!(loops_while_two_run(&sif, &copy), (1, 1), "{sif} and its copy");
}
