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
fn allow_setuid_no_refuses() {
    if env().is_none() || image(Kind::Sif).is_none() {
        return;
    }
    let _r = edit();
    write_conf("allow setuid = no\n");
    assert_one_line_error(&run_true(), "not allowed by 'allow setuid'");
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
            "allow ipc namespace",
            "--ipc",
            (|r| r.namespaces.ipc = true) as fn(&mut husk_protocol::Request),
        ),
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
