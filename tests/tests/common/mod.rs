//! Shared set-up for the integration tests. They run as root (to prepare
//! images and inspect the host) and run every container command as the
//! unprivileged test user against the setuid starter that
//! `packaging/install.sh` put into `HUSK_TEST_PREFIX` (see tests/run.sh).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub struct TestEnv {
    pub prefix: PathBuf,
    pub work: PathBuf,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// The mode these tests run the containers in: the setuid starter, or
    /// (HUSK_TEST_MODE=userns, against an install without the setuid bit)
    /// an unprivileged user namespace.
    pub userns: bool,
}

fn id_of(user: &str, flag: &str) -> u32 {
    let out = Command::new("id").args([flag, user]).output().expect("run id");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric id")
}

/// The installed test environment, or `None` (with a message) when the
/// tests run outside `tests/run.sh`. With HUSK_TEST_REQUIRED=1 a missing
/// environment is a failure, so CI can never skip silently.
pub fn env() -> Option<&'static TestEnv> {
    static ENV: OnceLock<Option<TestEnv>> = OnceLock::new();
    ENV.get_or_init(|| {
        let (Some(prefix), Some(work)) = (std::env::var_os("HUSK_TEST_PREFIX"), std::env::var_os("HUSK_TEST_WORK")) else {
            if std::env::var_os("HUSK_TEST_REQUIRED").is_some() {
                panic!("HUSK_TEST_REQUIRED is set but HUSK_TEST_PREFIX/HUSK_TEST_WORK are not");
            }
            eprintln!("skipped: integration tests need the set-up of tests/run.sh (HUSK_TEST_PREFIX unset)");
            return None;
        };
        let user = std::env::var("HUSK_TEST_USER").unwrap_or_else(|_| "husktest".into());
        let uid = id_of(&user, "-u");
        let gid = id_of(&user, "-g");
        let home = PathBuf::from(format!("/home/{user}"));
        let userns = match std::env::var("HUSK_TEST_MODE").as_deref() {
            Ok("userns") => true,
            Ok("setuid") | Err(_) => false,
            Ok(other) => panic!("HUSK_TEST_MODE={other}: want setuid or userns"),
        };
        Some(TestEnv { prefix: prefix.into(), work: work.into(), user, uid, gid, home, userns })
    })
    .as_ref()
}

/// The Apptainer-built fixture from ../shared, copied where the test user
/// can read it. `None` (with a message) where ../shared is absent.
pub fn fixture_sif() -> Option<PathBuf> {
    static SIF: OnceLock<Option<PathBuf>> = OnceLock::new();
    SIF.get_or_init(|| {
        let e = env()?;
        let src = std::env::var_os("HUSK_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
            .join("apptainer-busybox_amd64.sif");
        if !src.exists() {
            eprintln!("skipped: {} is absent (no ../shared beside the repo)", src.display());
            return None;
        }
        let dir = e.work.join("images");
        std::fs::create_dir_all(&dir).unwrap();
        let dst = dir.join("busybox.sif");
        std::fs::copy(&src, &dst).unwrap();
        sh(&format!("chmod 644 {}", dst.display()));
        Some(dst)
    })
    .clone()
}

/// Run a shell command as root for set-up; panics on failure.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("spawn sh");
    assert!(
        out.status.success(),
        "set-up command failed: {cmd}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sif,
    Squashfs,
    Dir,
}

/// The same busybox root as a SIF, a bare squashfs (made with mksquashfs)
/// and a directory (made with unsquashfs).
pub fn image(kind: Kind) -> Option<PathBuf> {
    static MADE: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    let sif = fixture_sif()?;
    let (sqfs, dir) = MADE
        .get_or_init(|| {
            let images = sif.parent().unwrap();
            let dir = images.join("rootfs");
            let sqfs = images.join("busybox.sqfs");
            let off = offset_of(&sif);
            sh(&format!(
                "rm -rf {d} && unsquashfs -q -n -o {off} -d {d} {s} >/dev/null && mksquashfs {d} {q} -quiet -noappend -comp gzip >/dev/null && chmod 644 {q}",
                d = dir.display(),
                s = sif.display(),
                q = sqfs.display()
            ));
            Some((sqfs, dir))
        })
        .clone()?;
    Some(match kind {
        Kind::Sif => sif,
        Kind::Squashfs => sqfs,
        Kind::Dir => dir,
    })
}

/// The primary partition's offset, from `husk inspect --json` (as the user).
fn offset_of(sif: &Path) -> u64 {
    let out = husk(&["inspect", "--json", &sif.to_string_lossy()]).run();
    assert_eq!(out.code, 0, "inspect failed: {}", out.stderr);
    let v = out.stdout.split("\"offset\":").nth(1).expect("offset in inspect output");
    v.trim().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

pub fn all_kinds() -> Vec<(Kind, PathBuf)> {
    [Kind::Sif, Kind::Squashfs, Kind::Dir]
        .into_iter()
        .filter_map(|k| image(k).map(|p| (k, p)))
        .collect()
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Run {
        use std::os::unix::process::ExitStatusExt;
        let code = out.status.code().unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
        Run {
            code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A command run as the test user with a small, known environment.
pub struct UserCmd {
    argv: Vec<String>,
    envs: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
}

/// `husk ARGS...` as the test user.
pub fn husk(args: &[&str]) -> UserCmd {
    let e = env().expect("test env");
    let mut argv = vec![e.prefix.join("bin/husk").to_string_lossy().into_owned()];
    argv.extend(args.iter().map(|s| s.to_string()));
    UserCmd { argv, envs: vec![], cwd: None, stdin: None }
}

/// Do the containers of this run live in a user namespace?
pub fn userns() -> bool {
    env().is_some_and(|e| e.userns)
}

/// Any program as the test user.
pub fn as_user(argv: &[&str]) -> UserCmd {
    UserCmd {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        envs: vec![],
        cwd: None,
        stdin: None,
    }
}

impl UserCmd {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    pub fn cwd(mut self, p: &Path) -> Self {
        self.cwd = Some(p.to_path_buf());
        self
    }

    pub fn stdin(mut self, data: Vec<u8>) -> Self {
        self.stdin = Some(data);
        self
    }

    pub fn command(&self) -> Command {
        let e = env().expect("test env");
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            &e.uid.to_string(),
            "--regid",
            &e.gid.to_string(),
            "--init-groups",
            "--",
            "env",
            "-i",
        ]);
        c.arg(format!("HOME={}", e.home.display()));
        c.arg(format!("USER={}", e.user));
        c.arg(format!("LOGNAME={}", e.user));
        c.arg("PATH=/usr/local/bin:/usr/bin:/bin");
        for (k, v) in &self.envs {
            c.arg(format!("{k}={v}"));
        }
        c.args(&self.argv);
        c.current_dir(self.cwd.as_deref().unwrap_or(&e.home));
        c
    }

    pub fn run(self) -> Run {
        use std::io::Write;
        let mut c = self.command();
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = c.spawn().expect("spawn setpriv");
        if let Some(data) = &self.stdin {
            let mut w = child.stdin.take().unwrap();
            // The starter may refuse and exit before reading everything.
            let _ = w.write_all(data);
        }
        Run::from(child.wait_with_output().expect("wait"))
    }
}

/// Assert husk failed the way every bad input must: status 255 and exactly
/// one line on stderr that contains `needle`.
pub fn assert_one_line_error(r: &Run, needle: &str) {
    assert_eq!(r.code, 255, "want status 255, got {} (stderr: {})", r.code, r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line on stderr, got: {:?}", r.stderr);
    assert!(lines[0].contains(needle), "stderr {:?} does not mention {needle:?}", lines[0]);
}

/// Loop devices bound to the file `img`, as `losetup -j` lists them.
pub fn loops_bound_to(img: &str) -> usize {
    sh(&format!("losetup -j {img}")).lines().count()
}

/// Start a container of `a`, and while it runs one of `b`; while both run,
/// count the loop devices bound to each file. Both must succeed, and every
/// device must be gone after them.
pub fn loops_while_two_run(a: &str, b: &str) -> (usize, usize) {
    let tag = format!("/tmp/husk-two-{}-{:?}", std::process::id(), std::thread::current().id());
    let tag: String =
        tag.chars().filter(|c| c.is_ascii_alphanumeric() || "/-".contains(*c)).collect();
    let start = |img: &str, mark: String, secs: u32| {
        let img = img.to_string();
        let script = format!("touch {mark} && sleep {secs}");
        let t = std::thread::spawn(move || husk(&["exec", &img, "sh", "-c", &script]).run());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !std::path::Path::new(&mark).exists() {
            assert!(std::time::Instant::now() < deadline, "{mark} never appeared");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        t
    };
    let first = start(a, format!("{tag}-a"), 2);
    let second = start(b, format!("{tag}-b"), 1);
    let counts = (loops_bound_to(a), loops_bound_to(b));
    for (t, which) in [(first, a), (second, b)] {
        let r = t.join().unwrap();
        assert_eq!(r.code, 0, "container of {which}: {}", r.stderr);
    }
    let _ = std::fs::remove_file(format!("{tag}-a"));
    let _ = std::fs::remove_file(format!("{tag}-b"));
    let mut tries = 0;
    while loops_bound_to(a) + loops_bound_to(b) > 0 && tries < 50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        tries += 1;
    }
    assert_eq!(loops_bound_to(a) + loops_bound_to(b), 0, "loop devices left behind");
    counts
}

// --- raw requests, bypassing the frontend ------------------------------------

pub fn starter() -> String {
    env().unwrap().prefix.join("libexec/husk/husk-starter").to_string_lossy().into_owned()
}

/// Run the starter as the test user with `bytes` on its fd 3 (a pipe).
pub fn send(bytes: Vec<u8>) -> Run {
    as_user(&["sh", "-c", "exec \"$0\" 3<&0 </dev/null", &starter()]).stdin(bytes).run()
}

/// A request the frontend could have sent: `argv` in the fixture SIF.
pub fn valid_request(argv: &[&str]) -> husk_protocol::Request {
    use husk_protocol::*;
    let e = env().unwrap();
    let img = image(Kind::Sif).unwrap();
    let (offset, size) = sif_partition(&img);
    let kind = ImageKind::Sif { offset, size };
    Request {
        image: Image { path: img.to_string_lossy().as_bytes().to_vec(), kind },
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env: vec![b"PATH=/bin".to_vec()],
        cwd: b"/".to_vec(),
        cwd_required: false,
        home: None,
        mount_tmp: false,
        binds: vec![],
        identity: Identity { user_name: e.user.as_bytes().to_vec(), gecos: vec![], groups: vec![] },
        namespaces: Namespaces::default(),
        hostname: None,
        writable_tmpfs: false,
        fresh_tmp: false,
        fresh_home: None,
        minimal_dev: false,
        no_init: false,
        end_with_parent: false,
    }
}

/// The primary partition (offset, size) of a SIF, read from its descriptors.
pub fn sif_partition(p: &std::path::Path) -> (u64, u64) {
    let d = std::fs::read(p).unwrap();
    let table = u64::from_le_bytes(d[96..104].try_into().unwrap()) as usize;
    let count = u64::from_le_bytes(d[88..96].try_into().unwrap()) as usize;
    (0..count)
        .map(|i| &d[table + i * 585..table + (i + 1) * 585])
        .find(|x| x[4] == 1 && i32::from_le_bytes(x[0..4].try_into().unwrap()) == 0x4004)
        .map(|x| {
            (
                u64::from_le_bytes(x[17..25].try_into().unwrap()),
                u64::from_le_bytes(x[25..33].try_into().unwrap()),
            )
        })
        .unwrap()
}
