//! Requests written straight to the starter's pipe, bypassing the frontend
//! (attack classes 1 and 2): the starter must refuse each one, and a valid
//! one proves the client really reaches the starter.

mod common;
use common::*;
use husk_protocol::*;

fn header(version: u16, len: u32) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h
}

#[test]
fn a_valid_raw_request_runs() {
    let Some(e) = env() else { return };
    if image(Kind::Sif).is_none() {
        return;
    }
    let r = send(encode(&valid_request(&["id", "-u"])).unwrap());
    assert_eq!((r.code, r.stdout.trim()), (0, e.uid.to_string().as_str()), "{}", r.stderr);
}

#[test]
fn malformed_frames_are_refused() {
    if env().is_none() || image(Kind::Sif).is_none() {
        return;
    }
    let good = encode(&valid_request(&["id"])).unwrap();
    let body = &good[HEADER_LEN..];
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "truncated"),
        ("garbage", b"\x7fELF this is not a request at all".to_vec(), "not a husk request"),
        ("oversized length", header(VERSION, MAX_BODY as u32 + 1), "exceeds"),
        ("u32::MAX length", header(VERSION, u32::MAX), "exceeds"),
        (
            "wrong version",
            [header(VERSION + 1, body.len() as u32), body.to_vec()].concat(),
            "version",
        ),
        ("EOF mid-body", good[..good.len() - 5].to_vec(), "truncated"),
        ("trailing bytes", [good.clone(), b"x".to_vec()].concat(), "trailing"),
        ("zero length", header(VERSION, 0), "truncated"),
    ];
    // A body that claims a 1 TiB string.
    let mut huge = header(VERSION, 16);
    huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
    huge.extend_from_slice(&[0; 8]);
    cases.push(("1 TiB string", huge, "request"));
    for (name, bytes, needle) in cases {
        let r = send(bytes);
        assert_one_line_error(&r, needle);
        assert!(r.stdout.is_empty(), "{name}: payload output {}", r.stdout);
    }
}

#[test]
fn forged_fields_are_refused() {
    if env().is_none() || image(Kind::Sif).is_none() {
        return;
    }
    let mut relative = valid_request(&["id"]);
    relative.image.path = b"images/busybox.sif".to_vec();
    let mut dotdot = valid_request(&["id"]);
    dotdot.binds.push(Bind { src: b"/tmp/../etc".to_vec(), dst: b"/x".to_vec(), readonly: false });
    let mut shadow = valid_request(&["id"]);
    shadow.binds.push(Bind { src: b"/etc/shadow".to_vec(), dst: b"/x".to_vec(), readonly: false });
    let mut root_dir = valid_request(&["id"]);
    root_dir.binds.push(Bind { src: b"/root".to_vec(), dst: b"/x".to_vec(), readonly: false });
    let mut over_root = valid_request(&["id"]);
    over_root.binds.push(Bind { src: b"/tmp".to_vec(), dst: b"/".to_vec(), readonly: false });
    let mut bad_offset = valid_request(&["id"]);
    bad_offset.image.kind = ImageKind::Sif { offset: 0, size: 4096 };
    let mut bare_as_sif = valid_request(&["id"]);
    let sqfs = image(Kind::Squashfs).unwrap();
    bare_as_sif.image.path = sqfs.to_string_lossy().as_bytes().to_vec();
    let sqfs_len = std::fs::metadata(&sqfs).unwrap().len();
    bare_as_sif.image.kind = ImageKind::Sif { offset: 0, size: sqfs_len };
    // The fixture's partition, less its first 4 KiB: squashfs magic or not,
    // not what the SIF says.
    let mut shifted = valid_request(&["id"]);
    if let ImageKind::Sif { offset, size } = shifted.image.kind {
        shifted.image.kind = ImageKind::Sif { offset, size: size - 4096 };
    }
    let mut past_end = valid_request(&["id"]);
    past_end.image.kind = ImageKind::Sif { offset: 45056, size: 1 << 40 };
    let mut host_root = valid_request(&["id"]);
    host_root.image.kind = ImageKind::Dir;
    host_root.image.path = b"/".to_vec();
    let mut shadow_image = valid_request(&["id"]);
    shadow_image.image.path = b"/etc/shadow".to_vec();
    shadow_image.image.kind = ImageKind::Squashfs;
    let mut hostname = valid_request(&["id"]);
    hostname.hostname = Some(b"box1".to_vec());
    let mut evil_name = valid_request(&["id"]);
    evil_name.identity.user_name = b"root:x:0:0::/:/bin/sh\nx".to_vec();
    for (name, req, needle) in [
        ("relative image path", relative, "not absolute"),
        ("'..' in a bind source", dotdot, "'..'"),
        ("bind of /etc/shadow", shadow, "not found or not accessible"),
        ("bind of /root", root_dir, "not found or not accessible"),
        ("bind over /", over_root, "container root"),
        ("offset without squashfs", bad_offset, "not the SIF's primary squashfs partition"),
        ("a bare squashfs called a SIF", bare_as_sif, "not a SIF file"),
        ("another extent of the SIF", shifted, "not the SIF's primary squashfs partition"),
        ("partition past the end", past_end, "outside the file"),
        ("host root as image", host_root, "host root"),
        ("/etc/shadow as image", shadow_image, "not found or not accessible"),
        ("host name without a UTS namespace", hostname, "hostname"),
        ("passwd injection", evil_name, "user_name"),
    ] {
        let r = send(encode(&req).unwrap());
        assert_one_line_error(&r, needle);
        assert!(r.stdout.is_empty(), "{name}: payload ran: {}", r.stdout);
    }
}

#[test]
fn a_starter_without_setuid_gives_only_a_user_namespace() {
    let Some(e) = env() else { return };
    if image(Kind::Sif).is_none() {
        return;
    }
    // A copy of the starter without the setuid bit, owned by the user: it
    // has the user's rights only, and so builds the container in a user
    // namespace mapping the user alone, whatever the request says.
    let copy = e.work.join("starter-copy");
    sh(&format!("cp {} {1} && chown {2} {1} && chmod 755 {1}", starter(), copy.display(), e.user));
    let run = |req: &husk_protocol::Request| {
        let bytes = husk_protocol::encode(req).unwrap();
        as_user(&["sh", "-c", "exec \"$0\" 3<&0 </dev/null", &copy.to_string_lossy()])
            .stdin(bytes)
            .run()
    };
    let r = run(&valid_request(&["cat", "/proc/self/uid_map", "/proc/self/status"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let map: Vec<&str> = r.stdout.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(map, [e.uid.to_string(), e.uid.to_string(), "1".into()]);
    let uid_line = format!("Uid:\t{0}\t{0}\t{0}\t{0}", e.uid);
    assert!(r.stdout.contains(&uid_line), "{}", r.stdout);
    assert!(r.stdout.contains("CapEff:\t0000000000000000"), "{}", r.stdout);
    // Its config is the installed one, owned by root: a user-owned copy
    // elsewhere is never read, and an empty request is still refused.
    let r = as_user(&["sh", "-c", "exec \"$0\" 3<&0 </dev/null", &copy.to_string_lossy()])
        .stdin(vec![])
        .run();
    assert_one_line_error(&r, "request is truncated");
    let _ = std::fs::remove_file(copy);
}

/// A root process whose cwd is a world-readable directory inside a root-only
/// one; killed when dropped.
struct RootSleeper {
    child: std::process::Child,
    vault: std::path::PathBuf,
}

impl RootSleeper {
    fn start(name: &str) -> RootSleeper {
        let e = env().unwrap();
        let vault = e.work.join(name);
        sh(&format!(
            "rm -rf {0} && mkdir -m 700 {0} && mkdir -m 755 {0}/pub && echo TOPSECRET > {0}/pub/secret && chmod 644 {0}/pub/secret",
            vault.display()
        ));
        let child = std::process::Command::new("sleep")
            .arg("60")
            .current_dir(vault.join("pub"))
            .spawn()
            .unwrap();
        RootSleeper { child, vault }
    }
}

impl Drop for RootSleeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.vault);
    }
}

#[test]
fn proc_magic_links_do_not_bypass_directory_permissions() {
    if env().is_none() || image(Kind::Sif).is_none() {
        return;
    }
    let sleeper = RootSleeper::start("vault-magic");
    let pid = sleeper.child.id();
    let srcs = [
        format!("/proc/{pid}/cwd"),
        format!("/proc/{pid}/cwd/secret"),
        format!("/proc/{pid}/root/etc"),
    ];
    for src in &srcs {
        let mut req = valid_request(&["cat", "/x/secret"]);
        req.binds.push(Bind { src: src.as_bytes().to_vec(), dst: b"/x".to_vec(), readonly: true });
        let r = send(encode(&req).unwrap());
        assert_one_line_error(&r, "not found or not accessible");
        assert!(!r.stdout.contains("TOPSECRET"), "{src}: {}", r.stdout);
    }
    let mut req = valid_request(&["cat", "/secret"]);
    req.image = Image { path: srcs[0].as_bytes().to_vec(), kind: ImageKind::Dir };
    let r = send(encode(&req).unwrap());
    assert_one_line_error(&r, "not found or not accessible");
}

#[test]
fn mount_targets_inside_binds_are_no_existence_oracle() {
    let Some(e) = env() else { return };
    if image(Kind::Sif).is_none() {
        return;
    }
    let sleeper = RootSleeper::start("vault-oracle");
    let file = e.home.join("oracle-src");
    std::fs::write(&file, "x").unwrap();
    sh(&format!("chown {} {}", e.user, file.display()));
    let vault = sleeper.vault.to_string_lossy().into_owned();
    let mut errors = vec![];
    for name in ["pub/secret", "pub", "nothing-here"] {
        let mut req = valid_request(&["true"]);
        req.binds.push(Bind { src: b"/".to_vec(), dst: b"/h".to_vec(), readonly: true });
        let dst = format!("/h{vault}/{name}");
        req.binds.push(Bind {
            src: file.to_string_lossy().as_bytes().to_vec(),
            dst: dst.as_bytes().to_vec(),
            readonly: true,
        });
        let r = send(encode(&req).unwrap());
        assert_one_line_error(&r, "not found or not accessible");
        errors.push(r.stderr.replace(&dst, "DST"));
    }
    assert!(errors.iter().all(|m| m == &errors[0]), "messages differ: {errors:?}");
    let _ = std::fs::remove_file(file);
}

#[test]
fn home_path_cannot_inject_passwd_lines() {
    if env().is_none() || image(Kind::Sif).is_none() {
        return;
    }
    let mut req = valid_request(&["cat", "/etc/passwd"]);
    let dst = b"/x\nroot2:x:0:0::/:/bin/sh".to_vec();
    req.home = Some(Bind { src: b"/tmp".to_vec(), dst, readonly: false });
    let r = send(encode(&req).unwrap());
    assert_one_line_error(&r, "home");
    assert!(!r.stdout.contains("root2"), "{}", r.stdout);
}

#[test]
fn directory_images_with_mounts_inside_are_refused() {
    let Some(e) = env() else { return };
    if image(Kind::Sif).is_none() {
        return;
    }
    // A directory whose subdirectory holds a file that a mount hides.
    let d = e.work.join("overmounted");
    sh(&format!(
        "rm -rf {0} && mkdir -p {0}/hidden && echo HIDDEN > {0}/hidden/secret && chmod -R a+rX {0} && mount -t tmpfs husk-test {0}/hidden",
        d.display()
    ));
    let mut req = valid_request(&["cat", "/hidden/secret"]);
    req.image = Image { path: d.to_string_lossy().as_bytes().to_vec(), kind: ImageKind::Dir };
    let r = send(encode(&req).unwrap());
    sh(&format!("umount {}/hidden", d.display()));
    assert_one_line_error(&r, "mount points inside it");
    assert!(!r.stdout.contains("HIDDEN"), "{}", r.stdout);
    // The host root, named through a symlink the caller owns.
    let link = e.home.join("rootlink");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/", &link).unwrap();
    let mut req = valid_request(&["true"]);
    req.image = Image { path: link.to_string_lossy().as_bytes().to_vec(), kind: ImageKind::Dir };
    let r = send(encode(&req).unwrap());
    let _ = std::fs::remove_file(&link);
    assert_one_line_error(&r, "mount points inside it");
}

#[test]
fn mount_targets_inside_a_directory_image_are_no_existence_oracle() {
    let Some(e) = env() else { return };
    let Some(dir) = image(Kind::Dir) else { return };
    // A directory image holding a root-only directory with a subdirectory.
    let img = e.work.join("images/rootfs-vault");
    sh(&format!(
        "rm -rf {i} && cp -a {d} {i} && mkdir -m 700 {i}/vault && mkdir {i}/vault/sub",
        i = img.display(),
        d = dir.display()
    ));
    let file = e.home.join("oracle-src2");
    std::fs::write(&file, "x").unwrap();
    sh(&format!("chown {} {}", e.user, file.display()));
    let mut errors = vec![];
    for dst in ["/vault/sub", "/vault/nothing"] {
        let mut req = valid_request(&["true"]);
        req.image = Image { path: img.to_string_lossy().as_bytes().to_vec(), kind: ImageKind::Dir };
        req.binds.push(Bind {
            src: file.to_string_lossy().as_bytes().to_vec(),
            dst: dst.as_bytes().to_vec(),
            readonly: true,
        });
        let r = send(encode(&req).unwrap());
        assert_one_line_error(&r, "not found or not accessible");
        errors.push(r.stderr.replace(dst, "DST"));
    }
    assert_eq!(errors[0], errors[1]);
    let _ = std::fs::remove_file(file);
}
