//! The admin config: the starter refuses one that the caller could have
//! tampered with (attack class 12), and obeys the directives it has. These
//! tests change the installed config, so they run one at a time, in their
//! own test binary, and restore it afterwards.

mod common;
use common::*;
use std::path::PathBuf;
use std::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::new(());

fn conf() -> PathBuf {
    env().unwrap().prefix.join("etc/husk/husk.conf")
}

/// Restores the config file, its mode, owner and directory on drop.
struct Restore {
    saved: Vec<u8>,
    _lock: std::sync::MutexGuard<'static, ()>,
}

fn edit() -> Restore {
    let lock = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    Restore { saved: std::fs::read(conf()).unwrap(), _lock: lock }
}

impl Drop for Restore {
    fn drop(&mut self) {
        let c = conf();
        let dir = c.parent().unwrap();
        sh(&format!(
            "chmod 755 {0} && chown root:root {0} && rm -rf {1}",
            dir.display(),
            c.display()
        ));
        std::fs::write(&c, &self.saved).unwrap();
        sh(&format!("chown root:root {0} && chmod 644 {0}", c.display()));
    }
}

fn run_true() -> Run {
    let img = image(Kind::Sif).unwrap();
    husk(&["exec", &img.to_string_lossy(), "true"]).run()
}

fn write_conf(text: &str) {
    std::fs::write(conf(), text).unwrap();
}

#[test]
fn tampered_configs_are_refused() {
    let Some(e) = env() else { return };
    if image(Kind::Sif).is_none() {
        return;
    }
    let c = conf().display().to_string();
    let dir = conf().parent().unwrap().display().to_string();
    {
        let _r = edit();
        assert_eq!(run_true().code, 0, "the untouched config must work");
    }
    for (setup, needle) in [
        (format!("chown {} {c}", e.user), "not owned by root"),
        (format!("chmod 664 {c}"), "writable by group or others"),
        (format!("chmod 646 {c}"), "writable by group or others"),
        (format!("chmod 777 {dir}"), "writable by group or others"),
        (format!("chown {} {dir}", e.user), "not owned by root"),
        (format!("mv {c} {c}.real && ln -s {c}.real {c}"), "symbolic links"),
        (format!("rm {c}"), "no such file"),
        (format!("rm {c} && mkdir {c}"), "not a regular file"),
    ] {
        let _r = edit();
        sh(&setup);
        let r = run_true();
        assert_one_line_error(&r, needle);
        assert!(r.stderr.contains("config"), "{setup}: {}", r.stderr);
        sh(&format!("rm -rf {c}.real"));
    }
}

#[test]
fn unknown_directives_name_the_line() {
    if env().is_none() || image(Kind::Sif).is_none() {
        return;
    }
    let _r = edit();
    write_conf("# policy\nallow setuid = yes\nallow root = yes\n");
    assert_one_line_error(&run_true(), "line 3: unknown directive 'allow root'");
    write_conf("mount home = perhaps\n");
    assert_one_line_error(&run_true(), "line 1: 'perhaps' is not yes or no");
}

#[test]
fn allow_setuid_no_means_user_namespaces_and_both_no_refuses() {
    let Some(e) = env() else { return };
    let Some(img) = image(Kind::Sif) else { return };
    let img = img.to_string_lossy().into_owned();
    let _r = edit();
    let in_userns = |r: &Run| {
        let map: Vec<&str> = r.stdout.split_whitespace().collect();
        map == [e.uid.to_string(), e.uid.to_string(), "1".into()]
    };
    // Not setuid: the same container, in a user namespace of the caller's.
    write_conf("allow setuid = no\n");
    let r = husk(&["exec", &img, "cat", "/proc/self/uid_map"]).run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(in_userns(&r), "{}", r.stdout);
    write_conf("allow setuid = no\nallow user namespaces = no\n");
    assert_one_line_error(&run_true(), "neither setuid mode nor user namespace mode is allowed");
    // -u asks for a user namespace, which the admin may refuse.
    write_conf("allow user namespaces = no\n");
    let r = husk(&["exec", "-u", &img, "true"]).run();
    assert_one_line_error(&r, "--userns: not allowed by 'allow user namespaces'");
    let r = husk(&["exec", &img, "cat", "/proc/self/uid_map"]).run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!in_userns(&r), "setuid mode should not use a user namespace: {}", r.stdout);
    write_conf("allow user namespaces = perhaps\n");
    assert_one_line_error(&run_true(), "line 1: 'perhaps' is not yes or no");
}

#[test]
fn mount_home_and_tmp_no_leave_them_out() {
    let Some(e) = env() else { return };
    let Some(img) = image(Kind::Sif) else { return };
    let _r = edit();
    write_conf("mount home = no\nmount tmp = no\n");
    let marker = format!("husk-conf-{}", std::process::id());
    sh(&format!("touch /tmp/{marker} {}/{marker}", e.home.display()));
    let script = format!("ls /tmp/{marker} $HOME/{marker} 2>/dev/null; echo done");
    let r = husk(&["exec", &img.to_string_lossy(), "sh", "-c", &script]).run();
    sh(&format!("rm -f /tmp/{marker} {}/{marker}", e.home.display()));
    assert_eq!((r.code, r.stdout.as_str()), (0, "done\n"), "{}", r.stderr);
}

#[test]
fn bind_path_adds_site_binds() {
    let Some(e) = env() else { return };
    let Some(img) = image(Kind::Sif) else { return };
    let site = e.work.join("site-data");
    sh(&format!("mkdir -p {0} && echo site > {0}/f && chmod -R a+rX {0}", site.display()));
    let _r = edit();
    write_conf(&format!("bind path = {}:/site\nbind path = /no/such/host/path\n", site.display()));
    let r = husk(&["exec", &img.to_string_lossy(), "cat", "/site/f"]).run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "site\n"), "{}", r.stderr);
}

#[test]
fn shared_loop_devices_no_gives_each_container_its_own() {
    if env().is_none() {
        return;
    }
    let Some(sif) = image(Kind::Sif) else { return };
    let sif = sif.to_string_lossy().into_owned();
    let _r = edit();
    write_conf("shared loop devices = no\n");
    assert_eq!(loops_while_two_run(&sif, &sif), (2, 2));
}

#[test]
fn namespace_directives_refuse_through_the_frontend_and_raw_requests() {
    if env().is_none() {
        return;
    }
    let Some(sif) = image(Kind::Sif) else { return };
    let sif = sif.to_string_lossy().into_owned();
    for (directive, flag, set) in [
        (
            "allow pid namespace",
            "--pid",
            (|r| r.namespaces.pid = true) as fn(&mut husk_protocol::Request),
        ),
        ("allow ipc namespace", "--ipc", |r| r.namespaces.ipc = true),
        ("allow net namespace", "--net", |r| r.namespaces.net = true),
        ("allow uts namespace", "--hostname", |r| {
            r.namespaces.uts = true;
            r.hostname = Some(b"box1".to_vec());
        }),
    ] {
        let _r = edit();
        write_conf(&format!("{directive} = no\n"));
        let mut args = vec!["exec", flag];
        if flag == "--hostname" {
            args.push("box1");
        }
        args.extend_from_slice(&[&sif, "echo", "ran"]);
        let r = husk(&args).run();
        assert_one_line_error(&r, &format!("not allowed by '{directive}'"));
        assert!(r.stdout.is_empty());
        let mut req = valid_request(&["echo", "ran"]);
        set(&mut req);
        let r = send(husk_protocol::encode(&req).unwrap());
        assert_one_line_error(&r, &format!("not allowed by '{directive}'"));
        assert!(r.stdout.is_empty(), "{directive}: a forged request ran");
        // Allowed (the default), the same request runs.
        write_conf(&format!("{directive} = yes\n"));
        let r = send(husk_protocol::encode(&req).unwrap());
        assert_eq!((r.code, r.stdout.as_str()), (0, "ran\n"), "{directive}: {}", r.stderr);
    }
}

/// `husk exec IMAGE echo ran` and the same as a raw request must both be
/// refused naming `directive`, and the payload must not run.
fn refused_both_ways(args: &[&str], req: &husk_protocol::Request, directive: &str) {
    let mut a = vec!["exec"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["echo", "ran"]);
    let r = husk(&a).cwd(std::path::Path::new("/")).run();
    assert_one_line_error(&r, &format!("not allowed by '{directive}'"));
    assert!(r.stdout.is_empty(), "{directive}: ran through the frontend");
    let r = send(husk_protocol::encode(req).unwrap());
    assert_one_line_error(&r, &format!("not allowed by '{directive}'"));
    assert!(r.stdout.is_empty(), "{directive}: a forged request ran");
}

#[test]
fn image_formats_owners_groups_and_paths_are_limited() {
    let Some(e) = env() else { return };
    let Some(sif) = image(Kind::Sif) else { return };
    let sif_s = sif.to_string_lossy().into_owned();
    let dir = image(Kind::Dir).unwrap().to_string_lossy().into_owned();
    let req = valid_request(&["echo", "ran"]);
    let _r = edit();

    write_conf("allowed image formats = squashfs, dir\n");
    refused_both_ways(&[&sif_s], &req, "allowed image formats");
    assert_eq!(husk(&["exec", &dir, "true"]).run().code, 0, "a dir image is still allowed");

    // Owned by root, group root: limits that name others refuse it.
    write_conf("limit container owners = 4242\n");
    refused_both_ways(&[&sif_s], &req, "limit container owners");
    write_conf("limit container owners = 4242, 0\n");
    assert_eq!(run_true().code, 0);
    write_conf("limit container groups = 4242\n");
    refused_both_ways(&[&sif_s], &req, "limit container groups");
    // In user-namespace mode the owner is checked as the host has it, not
    // as the namespace shows it (unmapped: the overflow id 65534).
    write_conf("limit container owners = 0\n");
    let r = husk(&["exec", "-u", &sif_s, "true"]).run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    write_conf("limit container owners = 65534\nlimit container groups = 65534\n");
    let r = husk(&["exec", "-u", &sif_s, "true"]).run();
    assert_one_line_error(&r, "limit container owners");

    // Paths compare whole components, on where the file really is.
    let scratch = e.work.join("scratch");
    let scratch2 = e.work.join("scratch2");
    sh(&format!(
        "rm -rf {a} {b} && mkdir -p {a} {b} && cp {s} {b}/img.sif && chmod -R a+rX {a} {b} && ln -s {b}/img.sif {a}/link.sif",
        a = scratch.display(),
        b = scratch2.display(),
        s = sif.display()
    ));
    write_conf(&format!("limit container paths = {}\n", scratch.display()));
    for img in [scratch2.join("img.sif"), scratch.join("link.sif")] {
        let img_s = img.to_string_lossy().into_owned();
        let mut forged = req.clone();
        forged.image.path = img_s.as_bytes().to_vec();
        refused_both_ways(&[&img_s], &forged, "limit container paths");
    }
    write_conf(&format!("limit container paths = {}\n", scratch2.display()));
    let r = husk(&["exec", &scratch2.join("img.sif").to_string_lossy(), "true"]).run();
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn mount_directives_leave_out_proc_sys_and_dev() {
    if env().is_none() {
        return;
    }
    let Some(sif) = image(Kind::Sif) else { return };
    let sif = sif.to_string_lossy().into_owned();
    let _r = edit();
    for (directive, dir) in [("mount proc", "/proc"), ("mount sys", "/sys"), ("mount dev", "/dev")]
    {
        let count = |conf: &str| {
            write_conf(conf);
            let r = husk(&["exec", &sif, "sh", "-c", &format!("ls {dir} | wc -l")]).run();
            assert_eq!(r.code, 0, "{conf}: {}", r.stderr);
            r.stdout.trim().parse::<u32>().unwrap()
        };
        assert!(
            count(&format!("{directive} = yes\n")) > 0,
            "{dir} is empty with {directive} = yes"
        );
        assert_eq!(
            count(&format!("{directive} = no\n")),
            0,
            "{dir} is there with {directive} = no"
        );
    }
    // The minimal /dev for every container, --contain or not.
    write_conf("mount dev = minimal\n");
    let r = husk(&["exec", &sif, "sh", "-c", "ls /dev | tr '\\n' ' '"]).run();
    assert_eq!(
        r.stdout.trim(),
        "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero",
        "{}",
        r.stderr
    );
}

#[test]
fn user_bind_control_no_refuses_user_binds_but_not_the_cwd() {
    let Some(e) = env() else { return };
    if image(Kind::Sif).is_none() {
        return;
    }
    let sif = image(Kind::Sif).unwrap().to_string_lossy().into_owned();
    let _r = edit();
    write_conf("user bind control = no\n");
    let bind = format!("{}:/mnt", e.home.display());
    let mut req = valid_request(&["echo", "ran"]);
    req.binds.push(husk_protocol::Bind {
        src: e.home.to_string_lossy().as_bytes().to_vec(),
        dst: b"/mnt".to_vec(),
        readonly: false,
    });
    refused_both_ways(&["-B", &bind, &sif], &req, "user bind control");
    // The current directory is still bound where it is.
    let cwd = e.work.join("cwd-bind");
    sh(&format!("mkdir -p {0} && chown {1}: {0}", cwd.display(), e.user));
    let r = husk(&["exec", "--no-home", &sif, "pwd"]).cwd(&cwd).run();
    assert_eq!((r.code, r.stdout.trim()), (0, cwd.to_str().unwrap()), "{}", r.stderr);
}

#[test]
fn max_loop_devices_bounds_the_devices_a_start_may_use() {
    if env().is_none() {
        return;
    }
    let Some(sif) = image(Kind::Sif) else { return };
    let sif = sif.to_string_lossy().into_owned();
    let _r = edit();
    // The first free device, claimed so that it stays the first free one
    // and cannot be used: a limit just above it leaves nothing to use.
    let dev = sh("losetup -f").trim().to_string();
    let n: u32 = dev.trim_start_matches("/dev/loop").parse().unwrap();
    use std::os::unix::fs::OpenOptionsExt;
    let _hold =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_EXCL).open(&dev).unwrap();
    write_conf(&format!("max loop devices = {}\nshared loop devices = no\n", n + 1));
    let r = husk(&["exec", &sif, "true"]).run();
    assert_one_line_error(&r, "'max loop devices'");
    write_conf(&format!("max loop devices = {}\nshared loop devices = no\n", n + 2));
    let r = husk(&["exec", &sif, "true"]).run();
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn user_bind_control_no_cannot_be_got_round_with_a_forged_cwd() {
    let Some(e) = env() else { return };
    if image(Kind::Sif).is_none() {
        return;
    }
    let _r = edit();
    write_conf("user bind control = no\nmount proc = no\n");
    // The raw client runs from the test user's home; a request that claims
    // another start directory, or a system one, gets no bind of it.
    let other = e.work.to_string_lossy().into_owned();
    for dir in ["/etc", "/proc", "/dev", &other] {
        let mut req = valid_request(&["ls", dir]);
        req.cwd = dir.as_bytes().to_vec();
        req.binds.push(husk_protocol::Bind {
            src: dir.as_bytes().to_vec(),
            dst: dir.as_bytes().to_vec(),
            readonly: false,
        });
        let r = send(husk_protocol::encode(&req).unwrap());
        assert_one_line_error(&r, "not allowed by 'user bind control'");
        assert!(r.stdout.is_empty(), "{dir}: a forged start directory was bound");
    }
}

/// In user-namespace mode the starter becomes dumpable after its drop (to
/// write its own uid map), and with squashfuse it stays while the
/// container runs: nothing of a root-only config may be left in its memory.
#[test]
fn a_root_only_config_leaves_nothing_in_the_dumpable_starter() {
    let Some(img) = image(Kind::Sif) else { return };
    let _r = edit();
    let token = format!("HUSK-SECRET-{}", std::process::id());
    // The installed config (a few KiB, as a site's would be) with the token.
    let text = String::from_utf8_lossy(&_r.saved).into_owned();
    // (Throughout it: the allocator reuses parts of what was freed.)
    write_conf(&format!(
        "{}{text}\n{}",
        format!("# {token}\n").repeat(100),
        format!("# {token}\n").repeat(100)
    ));
    sh(&format!("chmod 600 {}", conf().display()));
    let mut child =
        husk(&["exec", "-u", &img.to_string_lossy(), "sleep", "20"]).command().spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let pid = child.id();
    // The whole writable memory of the starter, read as root.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut found = false;
    let mut regions = 0;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next().unwrap(), f.next().unwrap());
        if !perms.starts_with("rw") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap());
        let mut buf = vec![0u8; (b - a) as usize];
        use std::io::{Read, Seek, SeekFrom};
        if mem.seek(SeekFrom::Start(a)).is_ok() && mem.read_exact(&mut buf).is_ok() {
            regions += 1;
            found |= buf.windows(token.len()).any(|w| w == token.as_bytes());
        }
    }
    sh(&format!("kill -TERM {pid}"));
    let _ = child.wait();
    assert!(regions > 0, "no memory read");
    assert!(!found, "the config's text is still in the starter's memory");
}
