//! The isolation options (semantics.md, "The seed's isolation options"),
//! each checked from inside the container, as the unprivileged user.

mod common;
use common::*;

fn fixture() -> Option<String> {
    env()?;
    Some(image(Kind::Sif)?.to_string_lossy().into_owned())
}

#[test]
fn cleanenv_keeps_only_term_and_proxies() {
    let Some(img) = fixture() else { return };
    for how in ["flag", "variable"] {
        let mut args = vec!["exec"];
        if how == "flag" {
            args.push("--cleanenv");
        }
        args.extend_from_slice(&[&img, "env"]);
        let mut c = husk(&args)
            .env("FROM_HOST", "1")
            .env("TERM", "xterm-husk")
            .env("http_proxy", "http://proxy:3128")
            .env("HUSKENV_VIA_PREFIX", "kept");
        if how == "variable" {
            c = c.env("HUSK_CLEANENV", "1");
        }
        let r = c.run();
        assert_eq!(r.code, 0, "{how}: {}", r.stderr);
        let vars: Vec<&str> = r.stdout.lines().collect();
        assert!(!vars.iter().any(|v| v.starts_with("FROM_HOST=")), "{how}: {vars:?}");
        assert!(!vars.iter().any(|v| v.starts_with("USER=")), "{how}: {vars:?}");
        for want in ["TERM=xterm-husk", "http_proxy=http://proxy:3128", "LANG=C", "VIA_PREFIX=kept"]
        {
            assert!(vars.contains(&want), "{how}: {want} missing from {vars:?}");
        }
    }
    // Without it the host's variables arrive.
    let r = husk(&["exec", &img, "env"]).env("FROM_HOST", "1").run();
    assert!(r.stdout.lines().any(|l| l == "FROM_HOST=1"), "{}", r.stdout);
}

#[test]
fn env_flags_set_values_verbatim_and_bad_ones_are_one_line() {
    let Some(img) = fixture() else { return };
    let r =
        husk(&["exec", "--cleanenv", "--env", "A=$(id -u) 'q'", "--env", "FROM_HOST", &img, "env"])
            .env("FROM_HOST", "passed by name")
            .run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.lines().any(|l| l == "A=$(id -u) 'q'"), "{}", r.stdout);
    assert!(r.stdout.lines().any(|l| l == "FROM_HOST=passed by name"), "{}", r.stdout);
    let r = husk(&["exec", "--env", "=x", &img, "true"]).run();
    assert_one_line_error(&r, "--env");
    let r = husk(&["exec", "--env-file", "/nonexistent/env", &img, "true"]).run();
    assert_one_line_error(&r, "/nonexistent/env");
}

#[test]
fn net_gives_only_loopback_up_and_no_way_to_the_hosts() {
    let Some(img) = fixture() else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    // Accept in the background so that a connection that gets through is seen.
    listener.set_nonblocking(true).unwrap();
    let connect = format!("echo hi | nc -w 2 127.0.0.1 {port} && echo connected");
    for how in ["--net", "-n"] {
        let r = husk(&["exec", how, &img, "sh", "-c", "ls /sys/class/net; ip link show lo"]).run();
        assert_eq!(r.code, 0, "{how}: {}", r.stderr);
        let mut lines = r.stdout.lines();
        assert_eq!(lines.next(), Some("lo"), "{how}: /sys/class/net: {}", r.stdout);
        let link = lines.collect::<Vec<_>>().join("\n");
        assert_eq!(r.stdout.lines().filter(|l| !l.starts_with(' ')).count(), 2, "{}", r.stdout);
        assert!(link.contains("<LOOPBACK,UP"), "{how}: lo is not up: {link}");
        let r = husk(&["exec", how, &img, "sh", "-c", &connect]).run();
        assert!(!r.stdout.contains("connected"), "{how}: reached the host's loopback");
    }
    assert!(listener.accept().is_err(), "a connection from a --net container arrived");
    // Without --net the same connection works: the check above can fail.
    let r = husk(&["exec", &img, "sh", "-c", &connect]).run();
    assert!(r.stdout.contains("connected"), "no connection without --net: {}", r.stderr);
    // And the container sees the host's interfaces.
    let r = husk(&["exec", &img, "ls", "/sys/class/net"]).run();
    let host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(r.stdout.lines().count(), host.len(), "{}", r.stdout);
}

#[test]
fn ipc_gives_a_new_ipc_namespace() {
    let Some(img) = fixture() else { return };
    let host = std::fs::read_link("/proc/self/ns/ipc").unwrap();
    let host = host.to_string_lossy();
    let inside = |args: &[&str]| {
        let mut a = vec!["exec"];
        a.extend_from_slice(args);
        a.extend_from_slice(&[&img, "readlink", "/proc/self/ns/ipc"]);
        let r = husk(&a).run();
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.stdout.trim().to_string()
    };
    assert_eq!(inside(&[]), host, "without --ipc the host's");
    assert_ne!(inside(&["--ipc"]), host);
    assert_ne!(inside(&["-i"]), host);
    // POSIX shared memory too: /dev/shm is the container's own.
    let marker = format!("husk-shm-{}", std::process::id());
    sh(&format!("touch /dev/shm/{marker}"));
    let shm = |args: &[&str]| {
        let mut a = vec!["exec"];
        a.extend_from_slice(args);
        a.extend_from_slice(&[&img, "ls", "/dev/shm"]);
        husk(&a).run().stdout.lines().any(|l| l == marker)
    };
    let (without, with) = (shm(&[]), shm(&["--ipc"]));
    sh(&format!("rm -f /dev/shm/{marker}"));
    assert!(without, "without --ipc the host's /dev/shm");
    assert!(!with, "--ipc shows the host's /dev/shm");
}

#[test]
fn hostname_sets_the_containers_name_only() {
    let Some(img) = fixture() else { return };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let r = husk(&["exec", "--hostname", "box1", &img, "hostname"]).run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "box1\n"), "{}", r.stderr);
    let r = husk(&["exec", &img, "hostname"]).env("HUSK_HOSTNAME", "box2").run();
    assert_eq!(r.stdout, "box2\n", "HUSK_HOSTNAME: {}", r.stderr);
    // --uts alone keeps the name but in a namespace of its own.
    let r =
        husk(&["exec", "--uts", &img, "sh", "-c", "hostname; readlink /proc/self/ns/uts"]).run();
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some(host.trim()), "{}", r.stderr);
    let host_uts = std::fs::read_link("/proc/self/ns/uts").unwrap();
    assert_ne!(lines.next().unwrap_or(""), host_uts.to_string_lossy());
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(), host);
    for bad in ["bad_name", "-x", "a..b", &"x".repeat(65)] {
        let r = husk(&["exec", &format!("--hostname={bad}"), &img, "true"]).run();
        assert_one_line_error(&r, "--hostname");
    }
}

#[test]
fn writable_tmpfs_takes_writes_that_vanish_at_exit() {
    let Some(img) = fixture() else { return };
    let script = "touch /husk-new && mkdir /husk-dir && echo kept > /husk-dir/f && cat /husk-dir/f";
    for how in ["flag", "variable"] {
        let mut args = vec!["exec"];
        if how == "flag" {
            args.push("--writable-tmpfs");
        }
        args.extend_from_slice(&[&img, "sh", "-c", script]);
        let mut c = husk(&args);
        if how == "variable" {
            c = c.env("HUSK_WRITABLE_TMPFS", "yes");
        }
        let r = c.run();
        assert_eq!((r.code, r.stdout.as_str()), (0, "kept\n"), "{how}: {}", r.stderr);
    }
    // Gone at exit; and without the flag the root is read-only.
    let r = husk(&["exec", &img, "sh", "-c", "ls /husk-new; touch /husk-new"]).run();
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("No such file"), "{}", r.stderr);
    assert!(r.stderr.contains("Read-only file system"), "{}", r.stderr);
    // The image's own directories keep their owners; the tmpfs is bounded.
    let r = husk(&["exec", "--writable-tmpfs", &img, "sh", "-c", "touch /etc/husk-x"]).run();
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    let fill = "dd if=/dev/zero of=/fill bs=1M count=200 2>/dev/null; ls -l /fill";
    let r = husk(&["exec", "--writable-tmpfs", &img, "sh", "-c", fill]).run();
    let size: u64 = r.stdout.split_whitespace().nth(4).and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(size > 0 && size <= 64 << 20, "wrote {size} bytes: {}", r.stdout);
}

#[test]
fn home_option_binds_another_home() {
    let Some(img) = fixture() else { return };
    let e = env().unwrap();
    let alt = e.work.join("alt-home");
    sh(&format!("rm -rf {0} && mkdir -p {0} && chown {1}: {0}", alt.display(), e.user));
    let spec = format!("{}:/home/box", alt.display());
    let script = "echo $HOME; grep \"^$(id -un):\" /etc/passwd | cut -d: -f6; \
                  touch ~/made-inside; ls /home";
    for how in ["-H", "--home", "variable"] {
        let mut args = vec!["exec"];
        if how != "variable" {
            args.extend_from_slice(&[how, &spec]);
        }
        args.extend_from_slice(&[&img, "sh", "-c", script]);
        // From /, so that no current directory is bound under /home.
        let mut c = husk(&args).cwd(std::path::Path::new("/"));
        if how == "variable" {
            c = c.env("HUSK_HOME", &spec);
        }
        let r = c.run();
        assert_eq!(r.code, 0, "{how}: {}", r.stderr);
        // $HOME, the passwd entry and the directory all say /home/box; the
        // caller's own home is not there.
        assert_eq!(r.stdout, "/home/box\n/home/box\nbox\n", "{how}");
        assert!(alt.join("made-inside").exists(), "{how}: the write did not reach the host");
        std::fs::remove_file(alt.join("made-inside")).unwrap();
    }
    // SRC alone: the same path inside.
    let alt_s = alt.to_string_lossy().into_owned();
    let r = husk(&["exec", "-H", &alt_s, &img, "sh", "-c", "echo $HOME"]).run();
    assert_eq!(r.stdout.trim(), alt_s, "{}", r.stderr);
    let r = husk(&["exec", "-H", "/root", &img, "true"]).run();
    assert_one_line_error(&r, "--home /root");
    let r = husk(&["exec", "-H", &alt_s, "--no-home", &img, "true"]).run();
    assert_one_line_error(&r, "--no-home");
}

#[test]
fn contain_gives_an_empty_home_fresh_tmp_and_a_minimal_dev() {
    let Some(img) = fixture() else { return };
    let e = env().unwrap();
    // Something of the user's in the host's /tmp and home.
    let marker = format!("husk-contain-{}", std::process::id());
    sh(&format!("touch /tmp/{marker} /var/tmp/{marker} && chmod 644 /tmp/{marker}"));
    let script = format!(
        "echo home=$HOME; echo pwd=$(pwd); ls -A $HOME | wc -l; ls /tmp/{marker} /var/tmp/{marker} 2>&1 | wc -l; \
         ls -A /dev | tr '\\n' ' '; echo; ls -A /dev/pts | tr '\\n' ' '; echo; \
         echo x > /dev/null && head -c 8 /dev/urandom | wc -c; touch ~/mine /tmp/mine && echo wrote; \
         touch /dev/added 2>/dev/null && echo dev-writable || echo dev-closed"
    );
    for how in ["-c", "--contain", "variable"] {
        let mut args = vec!["exec"];
        if how != "variable" {
            args.push(how);
        }
        args.extend_from_slice(&[&img, "sh", "-c", &script]);
        let mut c = husk(&args).cwd(&e.home);
        if how == "variable" {
            c = c.env("HUSK_CONTAIN", "1");
        }
        let r = c.run();
        assert_eq!(r.code, 0, "{how}: {}", r.stderr);
        let lines: Vec<&str> = r.stdout.lines().collect();
        let home = e.home.to_string_lossy();
        assert_eq!(lines[0], format!("home={home}"), "{how}");
        assert_eq!(lines[1], format!("pwd={home}"), "{how}: the start directory is the home");
        assert_eq!(lines[2], "0", "{how}: the home is not empty");
        // Both ls calls fail: one error line each.
        assert_eq!(lines[3], "2", "{how}: the host's /tmp or /var/tmp shows");
        let dev: Vec<&str> = lines[4].split_whitespace().collect();
        let want = [
            "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
            "tty", "urandom", "zero",
        ];
        assert_eq!(dev, want, "{how}: /dev");
        assert_eq!(lines[5].trim(), "ptmx", "{how}: a devpts of its own");
        // Nothing can be added to the minimal /dev (in a user namespace
        // the caller owns its tmpfs: it is read-only).
        assert_eq!(lines[6..], ["8", "wrote", "dev-closed"], "{how}");
    }
    // Nothing written inside reached the host.
    assert!(!e.home.join("mine").exists());
    assert!(!std::path::Path::new("/tmp/mine").exists());
    sh(&format!("rm -f /tmp/{marker} /var/tmp/{marker}"));
}

#[test]
fn contain_with_a_workdir_keeps_home_and_tmp_there() {
    let Some(img) = fixture() else { return };
    let e = env().unwrap();
    let w = e.work.join("contain-workdir");
    sh(&format!("rm -rf {0} && mkdir -p {0} && chown {1}: {0}", w.display(), e.user));
    let w_s = w.to_string_lossy().into_owned();
    let write = "echo h > ~/h && echo t > /tmp/t && echo v > /var/tmp/v";
    let r = husk(&["exec", "-c", "-W", &w_s, &img, "sh", "-c", write]).run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    for (f, want) in [("home/h", "h\n"), ("tmp/t", "t\n"), ("var_tmp/v", "v\n")] {
        assert_eq!(std::fs::read_to_string(w.join(f)).unwrap(), want, "{f}");
    }
    // They persist into the next run.
    let r =
        husk(&["exec", "--contain", "--workdir", &w_s, &img, "cat", "/tmp/t", "/var/tmp/v"]).run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "t\nv\n"), "{}", r.stderr);
    let r = husk(&["exec", "-c", "-W", &w_s, &img, "sh", "-c", "cat ~/h"]).run();
    assert_eq!(r.stdout, "h\n", "{}", r.stderr);
    let r = husk(&["exec", "-c", "-W", "/nonexistent/w", &img, "true"]).run();
    assert_one_line_error(&r, "--workdir /nonexistent/w");
}

/// Running processes (not zombies) whose command line contains `needle`.
fn running_with(needle: &str) -> Vec<String> {
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").split_whitespace().next().unwrap_or("");
        if String::from_utf8_lossy(&cmd).contains(needle) && state != "Z" {
            found.push(format!("{} {}", e.file_name().to_string_lossy(), stat));
        }
    }
    found
}

#[test]
fn pid_runs_the_command_as_2_under_an_init_that_reaps_and_relays() {
    let Some(img) = fixture() else { return };
    let script = "echo $$; cat /proc/1/comm; ls /proc | grep -c '^[0-9]'; \
                  (sleep 0.2 &); sleep 0.8; ps -o stat | grep -c Z";
    for how in ["--pid", "-p", "variable"] {
        let mut args = vec!["exec"];
        if how != "variable" {
            args.push(how);
        }
        args.extend_from_slice(&[&img, "sh", "-c", script]);
        let mut c = husk(&args);
        if how == "variable" {
            c = c.env("HUSK_PID", "1");
        }
        let r = c.run();
        assert_eq!(r.code, 1, "{how}: grep -c finds no zombie and says 1: {}", r.stderr);
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert_eq!(lines[0], "2", "{how}: the command's PID");
        assert_eq!(lines[1], "husk-starter", "{how}: PID 1 is husk's init");
        // init, sh, ls and grep at most: no host process is visible.
        let seen: u32 = lines[2].parse().unwrap();
        assert!(seen <= 4, "{how}: {seen} processes in /proc");
        assert_eq!(lines[3], "0", "{how}: an orphan was left a zombie");
    }
    let r = husk(&["exec", "-p", &img, "sh", "-c", "exit 3"]).run();
    assert_eq!(r.code, 3);
    let r = husk(&["exec", "-p", "--no-init", &img, "sh", "-c", "echo $$"]).run();
    assert_eq!(r.stdout, "1\n", "--no-init: {}", r.stderr);
}

#[test]
fn signals_reach_a_pid_namespace_and_killing_husk_ends_it() {
    let Some(img) = fixture() else { return };
    // Without husk's init the command is PID 1, which the kernel shields
    // from signals it has no handler for: only SIGKILL is sure to end it.
    let cases =
        [("TERM", 143, true), ("INT", 130, true), ("KILL", 137, true), ("KILL", 137, false)];
    for (sig, want, init) in cases {
        {
            let marker = format!("31.{}", if init { 5 } else { 7 });
            let mut args = vec!["exec", "-p"];
            if !init {
                args.push("--no-init");
            }
            args.extend_from_slice(&[&img, "sleep", &marker]);
            let mut child = husk(&args).command();
            child.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
            let mut child = child.spawn().unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while running_with(&format!("sleep\0{marker}")).is_empty() {
                assert!(std::time::Instant::now() < deadline, "the container never started");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            sh(&format!("kill -{sig} {}", child.id()));
            let status = child.wait().unwrap();
            use std::os::unix::process::ExitStatusExt;
            let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            assert_eq!(code, want, "SIG{sig} to husk (init: {init})");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !running_with(&format!("sleep\0{marker}")).is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "SIG{sig} (init: {init}): the container outlived husk: {:?}",
                    running_with(&format!("sleep\0{marker}"))
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn containall_contains_cleans_the_environment_and_isolates_pid_and_ipc() {
    let Some(img) = fixture() else { return };
    let e = env().unwrap();
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap();
    let script = "echo $$; ls -A ~ | wc -l; echo ${FROM_HOST:-unset}; readlink /proc/self/ns/ipc";
    for how in ["-C", "--containall", "variable"] {
        let mut args = vec!["exec"];
        if how != "variable" {
            args.push(how);
        }
        args.extend_from_slice(&[&img, "sh", "-c", script]);
        let mut c = husk(&args).env("FROM_HOST", "1").cwd(&e.home);
        if how == "variable" {
            c = c.env("HUSK_CONTAINALL", "yes");
        }
        let r = c.run();
        assert_eq!(r.code, 0, "{how}: {}", r.stderr);
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert_eq!(lines[..3], ["2", "0", "unset"], "{how}");
        assert_ne!(lines[3], host_ipc.to_string_lossy(), "{how}: the host's IPC namespace");
    }
}

#[test]
fn mount_and_escaped_binds_reach_the_container() {
    let Some(img) = fixture() else { return };
    let e = env().unwrap();
    let src = e.work.join("mount-src");
    sh(&format!(
        "rm -rf {0} && mkdir -p {0} && echo data > {0}/f && chown -R {1}: {0}",
        src.display(),
        e.user
    ));
    let s = src.to_string_lossy().into_owned();
    // Docker's --mount: a destination the image lacks, read-only.
    let spec = format!("type=bind,source={s},destination=/no/such/place,readonly");
    let r = husk(&[
        "exec",
        "--mount",
        &spec,
        &img,
        "sh",
        "-c",
        "cat /no/such/place/f; touch /no/such/place/g",
    ])
    .run();
    assert_eq!(r.stdout, "data\n", "{}", r.stderr);
    assert!(r.stderr.contains("Read-only file system"), "{}", r.stderr);
    let spec = format!("type=bind,src={s},target=/rw");
    let r = husk(&["exec", "--mount", &spec, &img, "touch", "/rw/g"]).run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(src.join("g").exists());
    // -B with an escaped comma and colon in the destination.
    let spec = format!("{s}:/odd\\,name\\:here:ro");
    let r = husk(&["exec", "-B", &spec, &img, "cat", "/odd,name:here/f"]).run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "data\n"), "{}", r.stderr);
    let r = husk(&["exec", "--mount", "type=volume,source=x,destination=/d", &img, "true"]).run();
    assert_one_line_error(&r, "only type=bind");
}

#[test]
fn pid_namespaces_work_for_directory_images_every_time() {
    if env().is_none() {
        return;
    }
    let Some(dir) = image(Kind::Dir) else { return };
    let dir = dir.to_string_lossy().into_owned();
    // (A starter-side copy of the directory probe once made it look busy,
    // about one start in four.)
    for i in 0..20 {
        let r = husk(&["exec", "-p", &dir, "sh", "-c", "echo $$"]).run();
        assert_eq!((r.code, r.stdout.as_str()), (0, "2\n"), "run {i}: {}", r.stderr);
    }
}

#[test]
fn binds_land_inside_fresh_and_workdir_tmp_and_pwd_follows() {
    let Some(img) = fixture() else { return };
    let e = env().unwrap();
    let base = e.work.join("tmp-binds");
    sh(&format!(
        "rm -rf {0} && mkdir -p {0}/src {0}/w && echo in-src > {0}/src/f && chown -R {1}: {0}",
        base.display(),
        e.user
    ));
    let src = base.join("src").to_string_lossy().into_owned();
    let w = base.join("w").to_string_lossy().into_owned();
    // Into --contain's fresh /tmp, and a home there.
    let spec = format!("{src}:/tmp/in");
    let r = husk(&["exec", "-c", "-B", &spec, &img, "cat", "/tmp/in/f"]).run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "in-src\n"), "{}", r.stderr);
    let home = format!("{src}:/tmp/home");
    let r = husk(&["exec", "-c", "-H", &home, &img, "sh", "-c", "cat ~/f"]).run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "in-src\n"), "{}", r.stderr);
    // Into -W's /tmp; and the current directory under the host's /tmp is
    // still where it was.
    let r = husk(&["exec", "-W", &w, "-B", &spec, &img, "cat", "/tmp/in/f"]).run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "in-src\n"), "{}", r.stderr);
    let cwd = std::path::Path::new("/tmp").join(format!("husk-cwd-{}", std::process::id()));
    sh(&format!("mkdir -p {0} && chown {1}: {0}", cwd.display(), e.user));
    let r = husk(&["exec", "-W", &w, &img, "sh", "-c", "pwd; echo $PWD"]).cwd(&cwd).run();
    let want = format!("{0}\n{0}\n", cwd.display());
    assert_eq!((r.code, r.stdout.as_str()), (0, want.as_str()), "{}", r.stderr);
    let r = husk(&["exec", "--pwd", "/", &img, "sh", "-c", "echo $PWD"]).cwd(&cwd).run();
    assert_eq!(r.stdout, "/\n", "PWD follows --pwd");
    sh(&format!("rm -rf {}", cwd.display()));
    // Inside the host's /tmp the starter makes nothing: one clear line.
    let r = husk(&["exec", "-H", &home, &img, "true"]).run();
    assert_one_line_error(&r, "/tmp/home");
}

#[test]
fn option_forms_users_type_are_understood() {
    let Some(img) = fixture() else { return };
    let e = env().unwrap();
    let d = e.work.join("forms");
    sh(&format!(
        "rm -rf {0} && mkdir -p {0} && echo f > {0}/f && chown -R {1}: {0}",
        d.display(),
        e.user
    ));
    let ds = d.to_string_lossy().into_owned();
    // An attached short option value.
    let r = husk(&["exec", &format!("-B{ds}:/m"), &img, "cat", "/m/f"]).run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "f\n"), "{}", r.stderr);
    // Binds from the environment add to -B, Apptainer's variables too.
    for var in ["HUSK_BIND", "APPTAINER_BIND", "SINGULARITY_BINDPATH"] {
        let r = husk(&["exec", "-B", &format!("{ds}:/m2"), &img, "cat", "/m1/f", "/m2/f"])
            .env(var, &format!("{ds}:/m1"))
            .run();
        assert_eq!((r.code, r.stdout.as_str()), (0, "f\nf\n"), "{var}: {}", r.stderr);
    }
    // shell passes what follows IMAGE to the shell.
    let r = husk(&["shell", &img, "-c", "echo shell-args"]).run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "shell-args\n"), "{}", r.stderr);
    // Options after IMAGE belong to the command.
    let r = husk(&["exec", &img, "sh", "-c", "echo $0", "-c"]).run();
    assert_eq!(r.stdout, "-c\n", "{}", r.stderr);
    let r = husk(&["exec", "--no-such", &img, "true"]).run();
    assert_one_line_error(&r, "unknown option --no-such");
    // Mistakes about homes and mount targets.
    let r = husk(&["exec", "-H", &format!("{ds}/f"), &img, "true"]).run();
    assert_one_line_error(&r, "is not a directory");
    let r = husk(&["exec", "-H", &format!("{ds}:/etc"), &img, "true"]).run();
    assert_one_line_error(&r, "not a usable home directory");
    let r = husk(&["exec", "-B", &format!("{ds}:/bin/sh"), &img, "true"]).run();
    assert_one_line_error(&r, "is a file, the source is a directory");
}

/// The pids whose parent is `ppid`.
fn children_of(ppid: u32) -> Vec<u32> {
    let mut v = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        if after.split_whitespace().nth(1) == Some(&ppid.to_string()) {
            v.push(pid);
        }
    }
    v
}

#[test]
fn a_stopped_pid_namespace_dies_with_a_killed_husk() {
    let Some(img) = fixture() else { return };
    let e = env().unwrap();
    let d = e.work.join("many-binds");
    sh(&format!("mkdir -p {0} && chown {1}: {0}", d.display(), e.user));
    // Many binds: a long build, looked up as the caller again and again.
    let binds: Vec<String> = (0..150).map(|i| format!("{}:/mnt/d{i}", d.display())).collect();
    let spec = binds.join(",");
    let mut survivors = vec![];
    for delay_ms in [2u64, 5, 8, 12, 16, 20, 25, 30, 40, 50] {
        let mut c = husk(&["exec", "-p", "-B", &spec, &img, "true"]).command();
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        // As the user: stop the container's first process, kill husk.
        let inner = children_of(child.id());
        for p in &inner {
            let _ = as_user(&["kill", "-STOP", &p.to_string()]).run();
        }
        let _ = as_user(&["kill", "-KILL", &child.id().to_string()]).run();
        let _ = child.wait();
        std::thread::sleep(std::time::Duration::from_millis(100));
        for p in inner {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").split_whitespace().next();
            if matches!(state, Some(s) if s != "Z") {
                survivors.push(format!("{delay_ms} ms: {p} {stat}"));
                let _ = sh(&format!("kill -KILL {p} 2>/dev/null || true"));
            }
        }
    }
    assert_eq!(survivors, Vec::<String>::new(), "container processes outlived husk");
}

/// ^Z at a terminal stops the container and `fg` continues it, with or
/// without a PID namespace: husk itself stops too (when it stays as the
/// container's parent, as with --pid or in user-namespace mode), so the
/// caller's shell sees a stopped job.
#[test]
fn ctrl_z_stops_the_job_and_fg_continues_it() {
    let Some(img) = fixture() else { return };
    let husk_bin = env().unwrap().prefix.join("bin/husk");
    let script = r#"
import os, pty, sys, time, select
husk, img, flags, marker = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
pid, fd = pty.fork()
if pid == 0:
    os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
seen = b""
def expect(what, secs):
    global seen
    end = time.time() + secs
    while what not in seen and time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return what in seen
os.write(fd, f"{husk} exec {flags} {img} sh -c 'sleep 1.5; touch {marker}'\n".encode())
time.sleep(0.7)
os.write(fd, b"\x1a")
stopped = expect(b"Stopped", 5)
# Stopped means stopped: the command does not go on meanwhile.
time.sleep(2.5)
held = not os.path.exists(marker)
# bash reads the second line once `fg` has waited for the job to end.
os.write(fd, b"fg\necho RC$?\n")
done = expect(b"RC0", 15)
os.write(fd, b"exit\n")
print("stopped" if stopped else "not stopped", "held" if held else "ran on",
      "done" if done and os.path.exists(marker) else "not done")
"#;
    let marker = env().unwrap().home.join(".husk-ctrl-z");
    for flags in ["-p", "--no-home", "-p --no-init"] {
        let _ = std::fs::remove_file(&marker);
        let r = as_user(&[
            "python3",
            "-c",
            script,
            &husk_bin.to_string_lossy(),
            &img,
            flags,
            &marker.to_string_lossy(),
        ])
        .run();
        assert_eq!(r.stdout.trim(), "stopped held done", "{flags}: {}", r.stderr);
    }
    let _ = std::fs::remove_file(&marker);
}

/// Every mount of the image is read-only, however husk had to make mount
/// points in it (in a user namespace it covers such directories with
/// mirrors of binds: those binds are read-only too).
#[test]
fn the_image_is_read_only_wherever_it_shows() {
    let Some(img) = fixture() else { return };
    let e = env().unwrap();
    let src = e.work.join("ro-bind-src");
    sh(&format!("mkdir -p {0} && chmod 755 {0}", src.display()));
    // A mount point in an image directory (root's): in a user namespace
    // /usr becomes a mirror.
    let bind = format!("{}:/usr/husk-new/inner", src.display());
    let script = "cat /proc/self/mountinfo; touch /bin/husk-x 2>/dev/null && echo wrote-bin; \
                  touch /usr/husk-x /usr/bin/husk-x 2>/dev/null && echo wrote-usr; true";
    let r = husk(&["exec", "-B", &bind, &img, "sh", "-c", script]).run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("wrote"), "{}", r.stdout);
    let mut image_mounts = 0;
    for line in r.stdout.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let fstype = right.split_whitespace().next().unwrap_or("");
        if fstype == "overlay" || fstype.starts_with("fuse.squashfuse") {
            image_mounts += 1;
            let opts = left.split_whitespace().nth(5).unwrap_or("");
            assert!(opts.split(',').any(|o| o == "ro"), "not read-only: {line}");
        }
    }
    assert!(image_mounts > 0, "no image mount found:\n{}", r.stdout);
}

/// A second mount point below an image directory that an earlier one made
/// husk cover (in a user namespace: a mirror, whose binds are read-only).
#[test]
fn binds_nest_under_each_other_in_image_directories() {
    let Some(img) = fixture() else { return };
    let e = env().unwrap();
    let (a, b) = (e.work.join("nest-a"), e.work.join("nest-b"));
    sh(&format!(
        "mkdir -p {0} {1} && echo A > {0}/f && echo B > {1}/f && chmod -R a+rX {0} {1}",
        a.display(),
        b.display()
    ));
    let r = husk(&[
        "exec",
        "-B",
        &format!("{}:/usr/husk-a", a.display()),
        "-B",
        &format!("{}:/usr/bin/husk-b", b.display()),
        &img,
        "cat",
        "/usr/husk-a/f",
        "/usr/bin/husk-b/f",
    ])
    .run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "A\nB\n"), "{}", r.stderr);
}
