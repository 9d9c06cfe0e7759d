//! The spine: a real SIF (built by Apptainer), the same root as a squashfs
//! file and as a directory, run as the unprivileged test user through the
//! installed setuid starter.

mod common;
use common::*;

fn img_str(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn exec_sees_caller_uid_and_name() {
    let Some(e) = env() else { return };
    for (kind, img) in all_kinds() {
        let r = husk(&["exec", &img_str(&img), "/bin/busybox", "id", "-u"]).run();
        assert_eq!(r.code, 0, "{kind:?}: {}", r.stderr);
        assert_eq!(r.stdout.trim(), e.uid.to_string(), "{kind:?}");
        let r = husk(&["exec", &img_str(&img), "id", "-un"]).run();
        assert_eq!(r.stdout.trim(), e.user, "{kind:?}: {}", r.stderr);
    }
}

#[test]
fn payload_has_no_privileges_left() {
    let Some(e) = env() else { return };
    for (kind, img) in all_kinds() {
        let r = husk(&["exec", &img_str(&img), "cat", "/proc/self/status"]).run();
        assert_eq!(r.code, 0, "{kind:?}: {}", r.stderr);
        let field = |name: &str| -> Vec<String> {
            let line = r
                .stdout
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing"));
            line.split_whitespace().skip(1).map(str::to_owned).collect()
        };
        assert_eq!(field("Uid:"), vec![e.uid.to_string(); 4], "{kind:?}");
        assert_eq!(field("Gid:"), vec![e.gid.to_string(); 4], "{kind:?}");
        let caps: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("Cap")).collect();
        assert_eq!(caps.len(), 5, "{kind:?}: {caps:?}");
        for c in caps {
            assert!(c.ends_with("0000000000000000"), "{kind:?}: {c}");
        }
        assert_eq!(field("NoNewPrivs:"), vec!["1"], "{kind:?}");
        // Supplementary groups are the caller's, as the host has them.
        let host_groups = sh(&format!("id -G {}", e.user));
        let inside = husk(&["exec", &img_str(&img), "id", "-G"]).run();
        let mut a: Vec<&str> = host_groups.split_whitespace().collect();
        let mut b: Vec<&str> = inside.stdout.split_whitespace().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{kind:?}");
    }
}

#[test]
fn run_replaces_cmd_with_arguments() {
    if env().is_none() {
        return;
    }
    let Some(sif) = image(Kind::Sif) else { return };
    for (kind, img) in all_kinds() {
        let r = husk(&["run", &img_str(&img), "sh", "-c", "echo hi"]).run();
        assert_eq!((r.code, r.stdout.as_str()), (0, "hi\n"), "{kind:?}: {}", r.stderr);
    }
    // Without arguments the runscript runs the image's CMD (sh), reading stdin.
    let r = husk(&["run", &img_str(&sif)]).stdin(b"echo from-cmd; exit 3\n".to_vec()).run();
    assert_eq!((r.code, r.stdout.as_str()), (3, "from-cmd\n"), "{}", r.stderr);
}

#[test]
fn home_cwd_and_tmp_are_the_hosts() {
    let Some(e) = env() else { return };
    let Some(img) = image(Kind::Sif) else { return };
    // A cwd outside home and /tmp, owned by the user, so it must be bound.
    let cwd = e.work.join("cwd-test");
    sh(&format!("mkdir -p {0} && chown {1} {0}", cwd.display(), e.user));
    let tag = format!("husk-{}", std::process::id());
    let script = format!(
        "echo h > $HOME/{tag}.home && echo c > {tag}.cwd && echo t > /tmp/{tag}.tmp && pwd"
    );
    let r = husk(&["exec", &img_str(&img), "sh", "-c", &script]).cwd(&cwd).run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), cwd.to_string_lossy());
    for (path, want) in [
        (e.home.join(format!("{tag}.home")), "h\n"),
        (cwd.join(format!("{tag}.cwd")), "c\n"),
        (std::path::PathBuf::from(format!("/tmp/{tag}.tmp")), "t\n"),
    ] {
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), want, "{}", path.display());
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn environment_rules() {
    if env().is_none() {
        return;
    }
    let Some(img) = image(Kind::Sif) else { return };
    let r = husk(&["exec", &img_str(&img), "env"])
        .env("HOST_VAR", "from host")
        .env("HUSKENV_FOO", "bar")
        .env("PATH", "/host/only/bin:/usr/bin:/bin")
        .env("LD_LIBRARY_PATH", "/host/lib")
        .run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let vars: Vec<&str> = r.stdout.lines().collect();
    assert!(vars.contains(&"HOST_VAR=from host"), "{vars:?}");
    assert!(vars.contains(&"FOO=bar"), "{vars:?}");
    // The image's PATH (from its OCI config), not the host's.
    assert!(
        vars.contains(&"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "{vars:?}"
    );
    assert!(!vars.iter().any(|v| v.starts_with("LD_LIBRARY_PATH=")), "{vars:?}");
    assert!(!vars.iter().any(|v| v.starts_with("HUSKENV_")), "{vars:?}");
    assert!(vars.contains(&format!("HUSK_CONTAINER={}", img.display()).as_str()), "{vars:?}");
}

#[test]
fn exit_status_passes_through() {
    if env().is_none() {
        return;
    }
    for (kind, img) in all_kinds() {
        let r = husk(&["exec", &img_str(&img), "sh", "-c", "exit 7"]).run();
        assert_eq!(r.code, 7, "{kind:?}: {}", r.stderr);
    }
}

#[test]
fn sigterm_to_husk_stops_the_container_with_143() {
    let Some(e) = env() else { return };
    let Some(img) = image(Kind::Sif) else { return };
    let husk_bin = e.prefix.join("bin/husk");
    let script = format!(
        "{} exec {} sleep 30 & pid=$!; sleep 1; kill -TERM $pid; wait $pid; echo $?",
        husk_bin.display(),
        img.display()
    );
    let start = std::time::Instant::now();
    let r = as_user(&["sh", "-c", &script]).run();
    assert_eq!(r.stdout.trim(), "143", "stderr: {}", r.stderr);
    assert!(start.elapsed().as_secs() < 20, "the container did not stop on SIGTERM");
    // SIGINT sent to a husk in the foreground reaches it too (a shell's
    // background job would ignore SIGINT, as POSIX says).
    let mut child =
        husk(&["exec", &img.to_string_lossy(), "sleep", "30"]).command().spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    sh(&format!("kill -INT {}", child.id()));
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(2), "{status:?}");
}

#[test]
fn missing_and_unrunnable_commands_give_127_and_126() {
    if env().is_none() {
        return;
    }
    for (kind, img) in all_kinds() {
        let r = husk(&["exec", &img_str(&img), "no-such-command"]).run();
        assert_eq!(r.code, 127, "{kind:?}: {}", r.stderr);
        assert!(r.stderr.contains("no-such-command"), "{}", r.stderr);
        let r = husk(&["exec", &img_str(&img), "/no/such/file"]).run();
        assert_eq!(r.code, 127, "{kind:?}: {}", r.stderr);
        let r = husk(&["exec", &img_str(&img), "/etc/passwd"]).run();
        assert_eq!(r.code, 126, "{kind:?}: {}", r.stderr);
        let r = husk(&["exec", &img_str(&img), "/etc"]).run();
        assert_eq!(r.code, 126, "{kind:?}: {}", r.stderr);
    }
}

#[test]
fn bad_images_get_one_line_and_255() {
    let Some(e) = env() else { return };
    let r = husk(&["exec", "/no/such/image.sif", "true"]).run();
    assert_one_line_error(&r, "/no/such/image.sif");

    let dir = e.work.join("bad-images");
    sh(&format!("mkdir -p {0} && chmod 755 {0}", dir.display()));
    let text = dir.join("notes.txt");
    std::fs::write(&text, "just some text, not an image\n").unwrap();
    let r = husk(&["exec", &img_str(&text), "true"]).run();
    assert_one_line_error(&r, "not a SIF, squashfs or directory image");

    let Some(sif) = image(Kind::Sif) else { return };
    let data = std::fs::read(&sif).unwrap();
    // Truncated inside the partition, and inside the header.
    for (name, len, needle) in [("cut.sif", 40_000, "truncated"), ("stub.sif", 100, "truncated")] {
        let p = dir.join(name);
        std::fs::write(&p, &data[..len]).unwrap();
        let r = husk(&["exec", &img_str(&p), "true"]).run();
        assert_one_line_error(&r, needle);
    }
    // The partition descriptor turned into a data partition: no primary one.
    let mut noprim = data.clone();
    let table = u64::from_le_bytes(data[96..104].try_into().unwrap()) as usize;
    let count = u64::from_le_bytes(data[88..96].try_into().unwrap()) as usize;
    let mut patched = 0;
    for i in 0..count {
        let d = table + i * 585;
        if data[d + 4] == 1 && i32::from_le_bytes(data[d..d + 4].try_into().unwrap()) == 0x4004 {
            noprim[d + 205..d + 209].copy_from_slice(&3i32.to_le_bytes());
            patched += 1;
        }
    }
    assert_eq!(patched, 1, "fixture should have one partition");
    let p = dir.join("noprimary.sif");
    std::fs::write(&p, &noprim).unwrap();
    let r = husk(&["exec", &img_str(&p), "true"]).run();
    assert_one_line_error(&r, "no primary partition");
}

#[test]
fn unreadable_bind_sources_are_refused() {
    let Some(e) = env() else { return };
    let Some(img) = image(Kind::Sif) else { return };
    let secret = e.work.join("root-only");
    sh(&format!("mkdir -p {0} && chmod 700 {0}", secret.display()));
    let missing = e.work.join("does-not-exist");
    let link = e.home.join("shadow-link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/etc/shadow", &link).unwrap();
    for src in [
        "/etc/shadow".to_string(),
        secret.to_string_lossy().into_owned(),
        missing.to_string_lossy().into_owned(),
        link.to_string_lossy().into_owned(),
    ] {
        let spec = format!("{src}:/mnt/x");
        let r = husk(&["exec", "-B", &spec, &img_str(&img), "true"]).run();
        assert_one_line_error(&r, "not found or not accessible");
        // The message is the same whether the object exists or not.
        assert!(r.stderr.contains(&src), "{}", r.stderr);
    }
    let _ = std::fs::remove_file(&link);
}

#[test]
fn binds_work_and_honour_ro() {
    let Some(e) = env() else { return };
    let Some(img) = image(Kind::Sif) else { return };
    let data = e.work.join("bind-data");
    sh(&format!(
        "mkdir -p {0} && chown {1} {0} && echo payload > {0}/f && chown {1} {0}/f",
        data.display(),
        e.user
    ));
    let d = data.to_string_lossy();
    let spec = format!("{d}:/mnt/data/deep:ro,{d}:/opt/rw,{d}:/bin/newdir");
    let r = husk(&[
        "exec",
        "-B",
        &spec,
        &img_str(&img),
        "sh",
        "-c",
        "cat /mnt/data/deep/f; touch /mnt/data/deep/new; echo rc=$?; touch /opt/rw/new2 && echo ok; \
         cat /bin/newdir/f; test -x /bin/busybox && test -x /bin/ls && echo image-kept",
    ])
    .run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("payload\n"), "{}", r.stdout);
    assert!(!r.stdout.contains("rc=0"), "read-only bind accepted a write: {}", r.stdout);
    assert!(r.stdout.contains("ok\npayload\nimage-kept"), "{}", r.stdout);
    assert!(data.join("new2").exists());
    assert!(!data.join("new").exists());
}

#[test]
fn the_image_and_every_mount_are_nosuid_nodev() {
    if env().is_none() {
        return;
    }
    for (kind, img) in all_kinds() {
        let r = husk(&["exec", &img_str(&img), "cat", "/proc/self/mountinfo"]).run();
        assert_eq!(r.code, 0, "{kind:?}: {}", r.stderr);
        for line in r.stdout.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (mnt, opts) = (fields[4], fields[5]);
            assert!(opts.contains("nosuid"), "{kind:?}: {mnt} lacks nosuid: {line}");
            if mnt != "/dev" && !mnt.starts_with("/dev/") {
                assert!(opts.contains("nodev"), "{kind:?}: {mnt} lacks nodev: {line}");
            }
            if mnt == "/" {
                assert!(opts.split(',').any(|o| o == "ro"), "{kind:?}: root is writable: {line}");
            }
        }
    }
}

#[test]
fn inspect_shows_what_run_does() {
    if env().is_none() {
        return;
    }
    let Some(img) = image(Kind::Sif) else { return };
    let r = husk(&["inspect", &img_str(&img)]).run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("format:     sif (squashfs partition at offset 45056"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("cmd:        [\"sh\"]"), "{}", r.stdout);
    assert!(r.stdout.contains("runscript"), "{}", r.stdout);
    let r = husk(&["version"]).run();
    assert!(r.stdout.starts_with("husk version "), "{}", r.stdout);
}

#[test]
fn options_after_the_image_belong_to_the_command() {
    if env().is_none() {
        return;
    }
    let Some(img) = image(Kind::Sif) else { return };
    let i = img_str(&img);
    let r = husk(&["exec", &i, "printf", "%s ", "-B", "/x", "--help", "--pwd"]).run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "-B /x --help --pwd "), "{}", r.stderr);
    let r = husk(&["exec", &i, "--", "echo", "hi"]).run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "hi\n"), "{}", r.stderr);
    let r = husk(&["run", &i, "printf", "%s", "--help"]).run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "--help"), "{}", r.stderr);
    let r = husk(&["exec", &i]).run();
    assert_one_line_error(&r, "no COMMAND");
    let r = husk(&["inspect"]).run();
    assert_one_line_error(&r, "<IMAGE>");
}

#[test]
fn run_and_shell_keep_what_the_user_forced() {
    if env().is_none() {
        return;
    }
    let Some(img) = image(Kind::Sif) else { return };
    let i = img_str(&img);
    let image_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    // The SIF's env script resets PATH; PATH additions and HUSKENV_ survive it.
    // (Apptainer's runscript evaluates its arguments once more, so the
    // value is read with printenv rather than expanded in them.)
    let r = husk(&["run", &i, "sh", "-c", "echo $PATH; printenv FOO"])
        .env("HUSKENV_PREPEND_PATH", "/pre")
        .env("HUSKENV_APPEND_PATH", "/post")
        .env("HUSKENV_FOO", "a 'b' $(c)")
        .run();
    assert_eq!(r.stdout, format!("/pre:{image_path}:/post\na 'b' $(c)\n"), "{}", r.stderr);
    let r = husk(&["run", &i, "sh", "-c", "echo $PATH"]).env("HUSKENV_PATH", "/p2:/bin").run();
    assert_eq!(r.stdout, "/p2:/bin\n", "{}", r.stderr);
    let r = husk(&["shell", &i])
        .env("HUSKENV_PREPEND_PATH", "/pre")
        .stdin(b"echo $SHELL; echo $PATH; id -un\n".to_vec())
        .run();
    let e = env().unwrap();
    assert_eq!(r.stdout, format!("/bin/sh\n/pre:{image_path}\n{}\n", e.user), "{}", r.stderr);
}

#[test]
fn exec_sources_environment_scripts_that_set_something() {
    let Some(e) = env() else { return };
    let Some(dir) = image(Kind::Dir) else { return };
    let custom = e.work.join("images/rootfs-env");
    sh(&format!(
        "rm -rf {c} && cp -a {d} {c} && printf 'export FROM_SCRIPT=yes\\nexport FOO=script\\n' > {c}/.singularity.d/env/90-environment.sh",
        c = custom.display(),
        d = dir.display()
    ));
    let r = husk(&["exec", &img_str(&custom), "sh", "-c", "echo $FROM_SCRIPT $FOO"])
        .env("HUSKENV_FOO", "user")
        .run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "yes user\n"), "{}", r.stderr);
    // inspect reads the directory's metadata.
    let r = husk(&["inspect", "--json", &img_str(&custom)]).run();
    assert!(r.stdout.contains("FROM_SCRIPT"), "{}", r.stdout);
    assert!(r.stdout.contains("\"runscript\": \"#!/bin/sh"), "{}", r.stdout);
    // The plain fixture's scripts only mirror its OCI config: no shell needed.
    let sif = image(Kind::Sif).unwrap();
    let r = husk(&["exec", &img_str(&sif), "cat", "/proc/self/cmdline"]).run();
    assert_eq!(r.stdout, "cat\0/proc/self/cmdline\0", "{}", r.stderr);
}

#[test]
fn an_explicit_bind_over_the_cwd_wins() {
    let Some(e) = env() else { return };
    let Some(img) = image(Kind::Sif) else { return };
    let base = e.work.join("cwd-over");
    sh(&format!(
        "rm -rf {0} && mkdir -p {0}/here {0}/other && touch {0}/here/host-file {0}/other/bound-file && chown -R {1} {0}",
        base.display(),
        e.user
    ));
    let here = base.join("here");
    for dst in [here.clone(), base.clone()] {
        let spec = format!("{}/other:{}:ro", base.display(), dst.display());
        let r = husk(&["exec", "-B", &spec, &img_str(&img), "ls"]).cwd(&here).run();
        if dst == here {
            assert_eq!((r.code, r.stdout.as_str()), (0, "bound-file\n"), "{}", r.stderr);
        } else {
            // The cwd does not exist inside the bind: start in the home, and say so.
            assert_eq!(r.code, 0, "{}", r.stderr);
            assert!(r.stderr.contains("warning"), "{}", r.stderr);
        }
    }
}

#[test]
fn the_payload_gets_default_sigpipe() {
    let Some(e) = env() else { return };
    let Some(img) = image(Kind::Sif) else { return };
    let husk_bin = e.prefix.join("bin/husk").to_string_lossy().into_owned();
    // With SIGPIPE ignored, `yes` would spin forever once `head` exits.
    let r =
        as_user(&["timeout", "20", &husk_bin, "exec", &img_str(&img), "sh", "-c", "yes | head -1"])
            .run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "y\n"), "{}", r.stderr);
    // Ignored signals are the caller's, exactly.
    let outside = as_user(&["grep", "SigIgn", "/proc/self/status"]).run();
    let inside = husk(&["exec", &img_str(&img), "grep", "SigIgn", "/proc/self/status"]).run();
    assert_eq!(inside.stdout, outside.stdout, "{}", inside.stderr);
    let ign = u64::from_str_radix(inside.stdout.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(ign & (1 << 12), 0, "SIGPIPE ignored: {}", inside.stdout);
}

#[test]
fn a_file_size_limit_fails_cleanly() {
    let Some(e) = env() else { return };
    let Some(img) = image(Kind::Sif) else { return };
    let husk_bin = e.prefix.join("bin/husk").to_string_lossy().into_owned();
    let script = format!("ulimit -f 0; exec {husk_bin} exec {} true", img.display());
    let r = as_user(&["sh", "-c", &script]).run();
    assert_one_line_error(&r, "file too large");
}

#[test]
fn the_bounding_set_is_empty_whatever_proc_says() {
    let Some(e) = env() else { return };
    let Some(img) = image(Kind::Sif) else { return };
    // The starter must not read files the caller can bind over.
    let fake = e.home.join("fake_cap_last_cap");
    std::fs::write(&fake, "0\n").unwrap();
    let spec = format!("{}:/proc/sys/kernel/cap_last_cap", fake.display());
    let r =
        husk(&["exec", "-B", &spec, &img_str(&img), "grep", "CapBnd", "/proc/self/status"]).run();
    let _ = std::fs::remove_file(&fake);
    assert_eq!(r.stdout.split_whitespace().nth(1), Some("0000000000000000"), "{}", r.stderr);
}

#[test]
fn tiocsti_cannot_reach_the_callers_terminal() {
    let Some(e) = env() else { return };
    let Some(img) = image(Kind::Sif) else { return };
    // A static program that pushes a command into its controlling terminal.
    let dir = e.work.join("tiocsti");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("sti.c");
    std::fs::write(
        &src,
        r#"#include <fcntl.h>
#include <sys/ioctl.h>
#include <stdio.h>
int main(void) {
    const char *cmd = "echo INJECTED\n";
    int fd = open("/dev/tty", O_RDWR);
    for (int i = 0; i < 2; i++) {
        int t = i == 0 ? fd : 1;
        if (t < 0) continue;
        for (const char *c = cmd; *c; c++) if (ioctl(t, TIOCSTI, c) != 0) { perror("TIOCSTI"); break; }
    }
    return 0;
}
"#,
    )
    .unwrap();
    let bin = dir.join("sti");
    sh(&format!(
        "gcc -static -O1 -o {} {} && chmod -R a+rX {}",
        bin.display(),
        src.display(),
        dir.display()
    ));
    // Under a pseudo-terminal, run it non-interactively, then read what the
    // terminal has queued for the next reader.
    let husk_bin = e.prefix.join("bin/husk");
    let inner = format!(
        "{} exec -B {}:/sti {} /sti </dev/null 2>/dev/null; read -t 2 line; echo \"got:$line\"",
        husk_bin.display(),
        bin.display(),
        img.display()
    );
    let r = as_user(&["script", "-qec", &inner, "/dev/null"]).env("SHELL", "/bin/bash").run();
    assert!(r.stdout.contains("got:"), "the check did not run: {}", r.stdout);
    assert!(!r.stdout.contains("got:echo INJECTED"), "TIOCSTI reached the terminal: {}", r.stdout);
    // The same program outside husk does inject: the check can fail.
    let outside =
        format!("{} </dev/null 2>/dev/null; read -t 2 line; echo \"got:$line\"", bin.display());
    let r = as_user(&["script", "-qec", &outside, "/dev/null"]).env("SHELL", "/bin/bash").run();
    assert!(r.stdout.contains("got:echo INJECTED"), "control failed: {}", r.stdout);
}
