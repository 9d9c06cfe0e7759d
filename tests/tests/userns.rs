//! User-namespace mode as such: `-u` with the setuid starter, a starter
//! installed without the setuid bit (HUSK_TEST_UNPRIV_PREFIX), what is said
//! when the kernel or squashfuse is missing, `--unsquash`, and an install
//! into the test user's home with no root at any step. (The whole suite of
//! spine, images and isolation tests runs in this mode too: tests/run.sh.)

mod common;
use common::*;
use std::path::PathBuf;

/// Held by each test that runs the install without the setuid bit, whose
/// config one of them changes.
static UNPRIV: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn unpriv_lock() -> std::sync::MutexGuard<'static, ()> {
    UNPRIV.lock().unwrap_or_else(|e| e.into_inner())
}

/// The install without the setuid bit that tests/run.sh made.
fn unpriv_prefix() -> Option<PathBuf> {
    env()?;
    match std::env::var_os("HUSK_TEST_UNPRIV_PREFIX") {
        Some(p) => Some(p.into()),
        None => {
            eprintln!("skipped: HUSK_TEST_UNPRIV_PREFIX is not set (tests/run.sh sets it)");
            None
        }
    }
}

fn unpriv_husk(args: &[&str]) -> UserCmd {
    let mut argv = vec![unpriv_prefix().unwrap().join("bin/husk").to_string_lossy().into_owned()];
    argv.extend(args.iter().map(|s| s.to_string()));
    as_user(&argv.iter().map(String::as_str).collect::<Vec<_>>())
}

fn uid_map_is_callers(out: &str) -> bool {
    let e = env().unwrap();
    let map: Vec<&str> = out.lines().next().unwrap_or("").split_whitespace().collect();
    map == [e.uid.to_string(), e.uid.to_string(), "1".into()]
}

#[test]
fn userns_flag_drops_root_before_anything_else() {
    let Some(e) = env() else { return };
    if e.userns {
        return; // this file is for the setuid run
    }
    let Some(img) = image(Kind::Sif) else { return };
    let img = img.to_string_lossy().into_owned();
    for how in ["-u", "--userns", "variable"] {
        let mut args = vec!["exec"];
        if how != "variable" {
            args.push(how);
        }
        args.extend_from_slice(&[&img, "cat", "/proc/self/uid_map"]);
        let mut c = husk(&args);
        if how == "variable" {
            c = c.env("HUSK_USERNS", "1");
        }
        let r = c.run();
        assert_eq!(r.code, 0, "{how}: {}", r.stderr);
        assert!(uid_map_is_callers(&r.stdout), "{how}: {}", r.stdout);
    }
    // While the container runs, the starter (which stays, to end
    // squashfuse) holds no root: real, effective, saved and fs uid are all
    // the caller's, and it has no capability.
    let mut child = husk(&["exec", "-u", &img, "sleep", "20"]).command().spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    sh(&format!("kill -TERM {}", child.id()));
    let _ = child.wait();
    let uid_line = format!("Uid:\t{0}\t{0}\t{0}\t{0}", e.uid);
    assert!(status.contains(&uid_line), "{status}");
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(status.contains("CapPrm:\t0000000000000000"), "{status}");
}

#[test]
fn disabled_user_namespaces_are_named() {
    let Some(p) = unpriv_prefix() else { return };
    let _l = unpriv_lock();
    let Some(img) = image(Kind::Sif) else { return };
    // A user namespace of the test's own whose limit of user namespaces is
    // 0 (the sysctl is per namespace), entered with no capability left.
    let husk_bin = p.join("bin/husk");
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces && \
         exec setpriv --ambient-caps -all --inh-caps -all --bounding-set -all {} exec {} true",
        husk_bin.display(),
        img.display()
    );
    let r = as_user(&["unshare", "--map-current-user", "--keep-caps", "sh", "-c", &script]).run();
    assert_one_line_error(
        &r,
        "user namespaces are disabled on this host (sysctl user.max_user_namespaces = 0)",
    );
}

#[test]
fn missing_squashfuse_is_named_and_unsquash_needs_none() {
    let Some(p) = unpriv_prefix() else { return };
    let _l = unpriv_lock();
    let Some(img) = image(Kind::Sif) else { return };
    let e = env().unwrap();
    let husk_bin = p.join("bin/husk");
    // squashfuse hidden (under /dev/null) in a mount namespace of the test's.
    // (mount(8) wants uid 0: a namespace with root mapped for that, and
    // in it another that maps the test user back for husk.)
    let hide = format!(
        "for f in /usr/bin/squashfuse /usr/bin/squashfuse_ll; do \
         [ -e $f ] && mount --bind /dev/null $f; done; \
         exec unshare --user --map-user={0} --map-group={1} \"$@\"",
        e.uid, e.gid
    );
    let run = |extra: &[&str]| {
        let mut argv = vec!["unshare", "--map-root-user", "--mount", "sh", "-c", &hide, "sh"];
        let bin = husk_bin.to_string_lossy();
        let img = img.to_string_lossy();
        argv.extend_from_slice(&[&bin, "exec"]);
        argv.extend_from_slice(extra);
        argv.extend_from_slice(&[&img, "ls", "/bin/busybox"]);
        as_user(&argv).run()
    };
    let r = run(&[]);
    assert_one_line_error(&r, "squashfuse is not installed (install the squashfuse package)");
    assert!(r.stderr.contains("--unsquash"), "{}", r.stderr);
    let r = run(&["--unsquash"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "/bin/busybox\n");
    // The extracted tree is gone once the container has ended.
    let left = sh("ls /tmp | grep husk-unsquash || true");
    assert_eq!(left.trim(), "", "extraction left in /tmp");
    // The setuid starter runs an extracted image too (as a directory).
    let r = husk(&["exec", "--unsquash", &img.to_string_lossy(), "true"]).run();
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn unprivileged_install_obeys_allow_user_namespaces() {
    let Some(p) = unpriv_prefix() else { return };
    let _l = unpriv_lock();
    let Some(img) = image(Kind::Sif) else { return };
    let conf = p.join("etc/husk/husk.conf");
    let saved = std::fs::read(&conf).unwrap();
    std::fs::write(&conf, "allow user namespaces = no\n").unwrap();
    let r = unpriv_husk(&["exec", &img.to_string_lossy(), "true"]).run();
    std::fs::write(&conf, saved).unwrap();
    assert_one_line_error(
        &r,
        "user namespace mode (this husk-starter is not setuid root): not allowed",
    );
}

/// The Rust toolchain, bound where the test user can reach it (root's home
/// is closed), for as long as the guard lives.
struct Toolchain {
    at: PathBuf,
}

impl Toolchain {
    fn bind() -> Toolchain {
        let e = env().unwrap();
        let sysroot = sh("rustc --print sysroot").trim().to_string();
        let at = e.work.join("toolchain");
        sh(&format!("mkdir -p {0} && mount --bind {1} {0}", at.display(), sysroot));
        Toolchain { at }
    }
}

impl Drop for Toolchain {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.at).status();
    }
}

#[test]
fn a_user_installs_husk_in_their_home_without_root() {
    let Some(e) = env() else { return };
    if e.userns || unpriv_prefix().is_none() {
        return;
    }
    let Some(sif) = fixture_sif() else { return };
    // The source, as the user would have downloaded it.
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let src = e.home.join("husk-src");
    let local = e.home.join(".local");
    sh(&format!(
        "rm -rf {src} {local}/bin/husk {local}/libexec/husk {local}/etc/husk && mkdir -p {src} && \
         cd {repo} && git ls-files -z | xargs -0 tar -cf - | tar -C {src} -xf - && \
         chown -R {user}: {src}",
        src = src.display(),
        local = local.display(),
        repo = repo.display(),
        user = e.user
    ));
    let tc = Toolchain::bind();
    let path = format!("{}/bin:/usr/local/bin:/usr/bin:/bin", tc.at.display());
    let install = format!(
        "cd {} && sh packaging/install.sh --unprivileged {}",
        src.display(),
        local.display()
    );
    let r = as_user(&["sh", "-c", &install])
        .env("PATH", &path)
        .env("CARGO_HOME", &e.home.join(".cargo").to_string_lossy())
        .env("CARGO_TARGET_DIR", &e.home.join("husk-target").to_string_lossy())
        .run();
    drop(tc);
    assert_eq!(r.code, 0, "install: {}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("without setuid"), "{}", r.stdout);
    // Everything installed is the user's; nothing is setuid.
    let listing = sh(&format!(
        "find {0}/bin/husk {0}/libexec/husk {0}/etc/husk -printf '%u %m %p\\n'",
        local.display()
    ));
    for line in listing.lines() {
        assert!(line.starts_with(&format!("{} ", e.user)), "not the user's: {line}");
        let mode = line.split_whitespace().nth(1).unwrap();
        assert!(mode.len() <= 3, "special mode bits: {line}");
    }
    // The Apptainer-built SIF runs, through squashfuse, in a user namespace.
    let husk_bin = local.join("bin/husk").to_string_lossy().into_owned();
    let r = as_user(&[
        &husk_bin,
        "exec",
        &sif.to_string_lossy(),
        "sh",
        "-c",
        "echo hi; cat /proc/self/uid_map",
    ])
    .run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("hi\n"), "{}", r.stdout);
    assert!(uid_map_is_callers(r.stdout.lines().nth(1).unwrap_or("")), "{}", r.stdout);
    // Its runscript starts the image's shell, which reads stdin.
    let r = as_user(&[&husk_bin, "run", &sif.to_string_lossy()])
        .stdin(b"echo from the runscript\n".to_vec())
        .run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "from the runscript\n"), "{}", r.stderr);
    sh(&format!("rm -rf {} {}", src.display(), e.home.join("husk-target").display()));
}

/// squashfuse, which the container's processes could reach (same uid, and
/// without --pid the same PID namespace), lives in the container's network,
/// IPC and UTS namespaces: it is no way out of them.
#[test]
fn squashfuse_shares_the_containers_namespaces() {
    let Some(e) = env() else { return };
    if e.userns {
        return;
    }
    let Some(img) = image(Kind::Sif) else { return };
    let mut child =
        husk(&["exec", "-u", "--net", "--ipc", "--uts", &img.to_string_lossy(), "sleep", "20"])
            .command()
            .spawn()
            .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let starter = child.id().to_string();
    let mut helper = None;
    let mut payload = None;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = entry.path();
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        let ppid = stat.rsplit(") ").next().unwrap_or("").split_whitespace().nth(1).unwrap_or("");
        if ppid != starter {
            continue;
        }
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.starts_with("squashfuse") {
            helper = Some(p);
        } else if comm.trim() == "sleep" {
            payload = Some(p);
        }
    }
    let ns = |p: &std::path::Path, n: &str| std::fs::read_link(p.join("ns").join(n)).unwrap();
    let (helper, payload) = (helper.expect("squashfuse"), payload.expect("payload"));
    let host = std::path::Path::new("/proc/self");
    for n in ["net", "ipc", "uts", "mnt", "user"] {
        assert_eq!(ns(&helper, n), ns(&payload, n), "{n}");
        assert_ne!(ns(&helper, n), ns(host, n), "{n}");
    }
    sh(&format!("kill -TERM {starter}"));
    let _ = child.wait();
}

/// A directory image with a mount inside is refused with the same words in
/// a user namespace (where the kernel refuses its copy at once).
#[test]
fn a_directory_with_mounts_inside_is_refused_in_a_user_namespace_too() {
    let Some(e) = env() else { return };
    if e.userns || image(Kind::Sif).is_none() {
        return;
    }
    let d = e.work.join("overmounted-u");
    sh(&format!(
        "rm -rf {0} && mkdir -p {0}/hidden {0}/bin && echo HIDDEN > {0}/hidden/secret && chmod -R a+rX {0} && mount -t tmpfs husk-test {0}/hidden",
        d.display()
    ));
    let r = husk(&["exec", "-u", &d.to_string_lossy(), "cat", "/hidden/secret"]).run();
    sh(&format!("umount {}/hidden", d.display()));
    assert_one_line_error(&r, "mount points inside it");
}

fn unsquash_dirs() -> Vec<String> {
    let out = sh("ls /tmp | grep '^husk-unsquash-' || true");
    out.lines().map(str::to_string).collect()
}

fn user_procs_matching(pat: &str) -> String {
    let e = env().unwrap();
    sh(&format!("pgrep -u {} -a -f '{pat}' || true", e.uid)).trim().to_string()
}

/// `--unsquash`: an image with a device node extracts (the node left out,
/// with a warning); killing husk ends the container too, and the next run
/// removes what was extracted; interrupting the extraction stops it and
/// removes what it wrote.
#[test]
fn unsquash_cleans_up_whatever_ends_it() {
    let Some(e) = env() else { return };
    if e.userns {
        return;
    }
    let Some(sif) = image(Kind::Sif) else { return };
    let sif = sif.to_string_lossy().into_owned();
    let _l = unpriv_lock();
    // A device node, which only root can make.
    let d = e.work.join("devimg");
    sh(&format!(
        "rm -rf {0} {0}.sqfs && mkdir -p {0}/dev {0}/bin && mknod {0}/dev/null c 1 3 && \
         cp {1} {0}/bin/ && mksquashfs {0} {0}.sqfs -quiet -noappend >/dev/null && chmod 644 {0}.sqfs",
        d.display(),
        "/bin/busybox"
    ));
    let img = format!("{}.sqfs", d.display());
    let r = husk(&["exec", "--unsquash", &img, "/bin/busybox", "ls", "/bin"]).run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "busybox\n"), "{}", r.stderr);
    assert!(r.stderr.contains("1 device node(s) of the image left out"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert_eq!(unsquash_dirs(), Vec::<String>::new());

    // husk killed while the container runs: the container ends with it.
    let marker = e.home.join(".husk-unsquash-started");
    let _ = std::fs::remove_file(&marker);
    let script = format!("touch {}; exec sleep 37", marker.display());
    for flags in [&[][..], &["-p"][..]] {
        let mut args = vec!["exec", "--unsquash"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[&sif, "sh", "-c", &script]);
        let mut child = husk(&args).command().spawn().unwrap();
        for _ in 0..100 {
            if marker.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(marker.exists(), "{flags:?}: the container did not start");
        sh(&format!("kill -KILL {}", child.id()));
        let _ = child.wait();
        let _ = std::fs::remove_file(&marker);
        for _ in 0..50 {
            if user_procs_matching("sleep 37").is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(user_procs_matching("sleep 37"), "", "{flags:?}: the container outlived husk");
    }
    // What the killed husk extracted goes with the next --unsquash run.
    assert!(!unsquash_dirs().is_empty(), "the killed run's extraction should still be there");
    let r = husk(&["exec", "--unsquash", &sif, "true"]).run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(unsquash_dirs(), Vec::<String>::new());

    // Where the copy does not fit, husk says so, and runs nothing.
    let small = e.work.join("small-tmp");
    sh(&format!(
        "mkdir -p {0} && mount -t tmpfs -o size=256k,mode=1777 husk-test {0}",
        small.display()
    ));
    let r =
        husk(&["exec", "--unsquash", &sif, "true"]).env("TMPDIR", &small.to_string_lossy()).run();
    let left = sh(&format!("ls -A {}", small.display()));
    sh(&format!("umount {}", small.display()));
    assert_one_line_error(&r, "No space left on device");
    assert_eq!(left.trim(), "", "extraction left in a full TMPDIR");

    // Interrupted while it extracts (many files take a while).
    let many = e.work.join("manyfiles");
    sh(&format!(
        "rm -rf {0} {0}.sqfs && mkdir -p {0}/bin && cp /bin/busybox {0}/bin/ && \
         for i in $(seq 0 39); do mkdir {0}/d$i; (cd {0}/d$i && seq 1 1000 | xargs touch); done && \
         mksquashfs {0} {0}.sqfs -quiet -noappend >/dev/null && chmod 644 {0}.sqfs && rm -rf {0}",
        many.display()
    ));
    let img = format!("{}.sqfs", many.display());
    for sig in ["TERM", "INT"] {
        let mut child =
            husk(&["exec", "--unsquash", &img, "/bin/busybox", "true"]).command().spawn().unwrap();
        for _ in 0..200 {
            if !user_procs_matching("unsquashfs").is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!user_procs_matching("unsquashfs").is_empty(), "{sig}: no extraction seen");
        sh(&format!("kill -{sig} {}", child.id()));
        let status = child.wait().unwrap();
        assert!(!status.success(), "{sig}: husk went on");
        assert_eq!(user_procs_matching("unsquashfs"), "", "{sig}: unsquashfs left running");
        assert_eq!(unsquash_dirs(), Vec::<String>::new(), "{sig}: extraction left");
    }
}

/// squashfuse serves every caller's container: the setuid starter runs one
/// only from where no one but root can change it; a starter without the
/// setuid bit (the caller's own rights) also from the caller's own places.
#[test]
fn squashfuse_only_from_trusted_places() {
    let Some(e) = env() else { return };
    if e.userns {
        return;
    }
    let Some(p) = unpriv_prefix() else { return };
    let _l = unpriv_lock();
    let Some(img) = image(Kind::Sif) else { return };
    // In a mount namespace of the test's: the system's squashfuse hidden,
    // and one in a /usr/local/bin that the test user owns.
    let run = |husk_bin: &std::path::Path| {
        let script = format!(
            "mount -t tmpfs -o mode=755,uid={uid} husk-test /usr/local/bin && \
             cp /usr/bin/squashfuse_ll /usr/local/bin/ && \
             for f in /usr/bin/squashfuse /usr/bin/squashfuse_ll; do [ -e $f ] && mount --bind /dev/null $f; done; \
             exec setpriv --reuid={uid} --regid={gid} --init-groups env -i HOME={home} {husk} exec -u {img} true",
            uid = e.uid,
            gid = e.gid,
            home = e.home.display(),
            husk = husk_bin.display(),
            img = img.display()
        );
        let out = std::process::Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .output()
            .unwrap();
        Run::from(out)
    };
    let r = run(&e.prefix.join("bin/husk"));
    assert_one_line_error(&r, "squashfuse is not installed");
    let r = run(&p.join("bin/husk"));
    assert_eq!(r.code, 0, "{}", r.stderr);
}
