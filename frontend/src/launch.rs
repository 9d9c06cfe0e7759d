//! Building the request for `exec`, `run` and `shell`, and handing it to the starter.

use crate::env;
use crate::image::{self, ImageInfo};
use crate::sys;
use crate::RunOpts;
use anyhow::{anyhow, bail, Context, Result};
use husk_protocol::{Bind, GroupName, Identity, Namespaces, Request};
use serde_json::json;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub enum Action {
    Exec(Vec<String>),
    Run(Vec<String>),
    /// The shell, with these arguments (`husk shell IMAGE -c 'cmd'`).
    Shell(Vec<String>),
}

/// The start of every wrapper: source Apptainer's environment scripts as
/// Apptainer does, then restore what the user forced (HUSKENV_ names in
/// HUSK_KEEP_ENV, PATH additions), since the scripts may overwrite it. Values
/// are only ever expanded, never evaluated: `eval` sees variable names,
/// which husk checked are shell names.
const ENV_PROLOGUE: &str = r#"__husk_path=$PATH
for __husk_n in $HUSK_KEEP_ENV; do eval "__husk_keep_$__husk_n=\${$__husk_n}"; done
for __husk_f in /.singularity.d/env/*.sh; do if [ -r "$__husk_f" ]; then . "$__husk_f"; fi; done
for __husk_n in $HUSK_KEEP_ENV; do eval "export $__husk_n=\"\${__husk_keep_$__husk_n}\"; unset __husk_keep_$__husk_n"; done
if [ "$PATH" != "$__husk_path" ]; then
  if [ -n "$HUSK_PREPEND_PATH" ]; then PATH="$HUSK_PREPEND_PATH:$PATH"; fi
  if [ -n "$HUSK_APPEND_PATH" ]; then PATH="$PATH:$HUSK_APPEND_PATH"; fi
fi
export PATH
unset __husk_n __husk_f __husk_path HUSK_KEEP_ENV HUSK_PREPEND_PATH HUSK_APPEND_PATH
"#;

/// `run`: the runscript with the arguments, as Apptainer's `run` does; `/bin/sh` when there is none.
const RUN_MAIN: &str = r#"if [ -x /.singularity.d/runscript ]; then exec /.singularity.d/runscript "$@"; fi
exec /bin/sh "$@""#;

const SHELL_MAIN: &str = r#"if [ -x /bin/bash ]; then SHELL=/bin/bash; export SHELL; exec /bin/bash --norc "$@"; fi
SHELL=/bin/sh; export SHELL; exec /bin/sh "$@""#;

/// `exec` on an image whose environment scripts matter.
const EXEC_MAIN: &str = r#"exec "$@""#;

/// Host directories whose contents the image provides: never bound as cwd.
const SYSTEM_DIRS: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root",
    "/run", "/sbin", "/sys", "/usr", "/var",
];

fn is_under(p: &[u8], dir: &[u8]) -> bool {
    dir == b"/" || p == dir || (p.starts_with(dir) && p.get(dir.len()) == Some(&b'/'))
}

fn wrapper(main: &str, name: &str, args: &[String]) -> Vec<String> {
    let script = format!("{ENV_PROLOGUE}{main}");
    let mut v = vec!["/bin/sh".to_string(), "-c".to_string(), script, name.to_string()];
    v.extend(args.iter().cloned());
    v
}

/// What `run` executes: the runscript when the image may have one, else the
/// OCI rule (ENTRYPOINT + CMD, arguments replacing CMD), else `/bin/sh`.
fn run_argv(img: &ImageInfo, args: &[String]) -> Vec<String> {
    if img.may_have_runscript() {
        return wrapper(RUN_MAIN, "husk-run", args);
    }
    let (ep, cmd) = (&img.config.entrypoint, &img.config.cmd);
    if ep.as_ref().is_none_or(Vec::is_empty) && cmd.as_ref().is_none_or(Vec::is_empty) {
        let mut v = vec!["/bin/sh".to_string()];
        v.extend(args.iter().cloned());
        return v;
    }
    let mut v = ep.clone().unwrap_or_default();
    if args.is_empty() {
        v.extend(cmd.clone().unwrap_or_default());
    } else {
        v.extend(args.iter().cloned());
    }
    v
}

fn shell_argv(shell: Option<&OsStr>, args: &[String]) -> Vec<Vec<u8>> {
    let mut argv = match shell {
        Some(s) if !s.is_empty() => vec![s.as_bytes().to_vec()],
        _ => {
            return wrapper(SHELL_MAIN, "husk-shell", args)
                .into_iter()
                .map(String::into_bytes)
                .collect()
        }
    };
    argv.extend(args.iter().map(|a| a.as_bytes().to_vec()));
    argv
}

/// A normal absolute path in the container: no `.`/`..`, no doubled or trailing `/`.
fn container_path(flag: &str, p: &str) -> Result<Vec<u8>> {
    let trimmed = if p.len() > 1 { p.trim_end_matches('/') } else { p };
    husk_protocol::check_path("path", trimmed.as_bytes()).map_err(|e| {
        anyhow!("{flag} {p}: must be an absolute path without '.' or '..' ({})", e.reason)
    })?;
    Ok(trimmed.as_bytes().to_vec())
}

/// Resolve a bind source as the caller and make sure it can be read.
fn host_source(what: &str, src: &str) -> Result<PathBuf> {
    let fail = || anyhow!("{what} {src}: not found or not accessible");
    let p = std::fs::canonicalize(src).map_err(|_| fail())?;
    let ok = if p.is_dir() { std::fs::read_dir(&p).is_ok() } else { File::open(&p).is_ok() };
    if !ok {
        return Err(fail());
    }
    Ok(p)
}

/// Split `s` at every `sep` not escaped with a backslash; escapes are kept
/// for the next level.
fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                parts.last_mut().unwrap().push(c);
                if let Some(n) = chars.next() {
                    parts.last_mut().unwrap().push(n);
                }
            }
            c if c == sep => parts.push(String::new()),
            c => parts.last_mut().unwrap().push(c),
        }
    }
    parts
}

/// `\,` is a comma, `\:` a colon, `\\` a backslash.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next().unwrap_or(c) } else { c });
    }
    out
}

/// One bind: a host source the caller can read, a container destination.
fn bind(spec: &str, src: &str, dst: &str, readonly: bool) -> Result<Bind> {
    let src = host_source("bind source", src)?;
    let dst = container_path("--bind", dst).map_err(|_| {
        anyhow!("{spec}: destination '{dst}' is not an absolute path without '.' or '..'")
    })?;
    if dst == b"/" {
        bail!("{spec}: cannot bind over the container root");
    }
    Ok(Bind { src: src.as_os_str().as_bytes().to_vec(), dst, readonly })
}

/// `-B` values: comma-separated `SRC[:DST[:ro|rw]]` (a backslash escapes a
/// comma or colon in a path), and `--mount type=bind,source=SRC,
/// destination=DST[,readonly]` as Docker takes it; shallowest destination
/// first.
fn parse_binds(specs: &[String], mounts: &[String]) -> Result<Vec<Bind>> {
    let mut binds = Vec::new();
    for item in specs.iter().flat_map(|s| split_escaped(s, ',')).filter(|s| !s.is_empty()) {
        let parts: Vec<String> = split_escaped(&item, ':').iter().map(|p| unescape(p)).collect();
        let what = format!("--bind {item}");
        let readonly = match parts.get(2).map(String::as_str) {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(o) => bail!("{what}: unknown option '{o}' (want ro or rw)"),
        };
        if parts.len() > 3 || parts[0].is_empty() {
            bail!("{what}: expected SRC[:DST[:ro|rw]]");
        }
        binds.push(bind(&what, &parts[0], parts.get(1).unwrap_or(&parts[0]), readonly)?);
    }
    for m in mounts {
        binds.push(parse_mount(m)?);
    }
    binds.sort_by_key(|b| b.dst.iter().filter(|&&c| c == b'/').count());
    Ok(binds)
}

/// Docker's `--mount`: `type=bind,source=SRC,destination=DST[,readonly]`
/// (also `src`, `dst`, `target`, `ro`, `readonly=true|false`).
fn parse_mount(m: &str) -> Result<Bind> {
    let what = format!("--mount {m}");
    let (mut kind, mut src, mut dst, mut readonly) = (None, None, None, false);
    for field in split_escaped(m, ',').iter().filter(|f| !f.is_empty()) {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k, Some(unescape(v))),
            None => (field.as_str(), None),
        };
        match (k, v) {
            ("type", Some(v)) => kind = Some(v),
            ("source" | "src", Some(v)) => src = Some(v),
            ("destination" | "dst" | "target", Some(v)) => dst = Some(v),
            ("readonly" | "ro", None) => readonly = true,
            ("readonly" | "ro", Some(v)) => {
                readonly = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => bail!("{what}: readonly={v} (want true or false)"),
                }
            }
            _ => bail!("{what}: unknown field '{field}'"),
        }
    }
    if kind.as_deref() != Some("bind") {
        bail!("{what}: only type=bind is supported");
    }
    let (Some(src), Some(dst)) = (src, dst) else {
        bail!("{what}: needs source= and destination=");
    };
    bind(&what, &src, &dst, readonly)
}

fn identity(uid: u32, gid: u32) -> Result<(Identity, Vec<u8>)> {
    let pw = sys::passwd(uid)
        .context("look up the caller in the host's passwd")?
        .ok_or_else(|| anyhow!("uid {uid} has no passwd entry on this host"))?;
    let mut gids = vec![gid];
    for g in sys::groups().context("getgroups")? {
        if !gids.contains(&g) {
            gids.push(g);
        }
    }
    let groups = gids
        .into_iter()
        .filter_map(|g| sys::group_name(g).map(|name| GroupName { gid: g, name }))
        .filter(|g| !g.name.is_empty() && !g.name.contains(&b':') && !g.name.contains(&b'\n'))
        .collect();
    // GECOS may hold anything; the passwd line cannot hold ':' or newlines.
    let gecos = pw.gecos.iter().map(|&b| if b == b':' || b == b'\n' { b' ' } else { b }).collect();
    Ok((Identity { user_name: pw.name, gecos, groups }, pw.dir))
}

/// The host cwd is bound at the same path unless it is `/`, a system
/// directory, already visible through home or /tmp, inside (or covered by) a
/// user bind's destination, or unreadable.
fn cwd_bind(cwd: &[u8], home: Option<&[u8]>, tmp: bool, binds: &[Bind]) -> bool {
    if cwd == b"/"
        || SYSTEM_DIRS.iter().any(|d| is_under(cwd, d.as_bytes()))
            && !(tmp && is_under(cwd, b"/var/tmp"))
    {
        return false;
    }
    let visible = home.is_some_and(|h| is_under(cwd, h))
        || (tmp && (is_under(cwd, b"/tmp") || is_under(cwd, b"/var/tmp")))
        || binds.iter().any(|b| is_under(cwd, &b.dst));
    !visible && std::fs::read_dir(OsStr::from_bytes(cwd)).is_ok()
}

/// The home bind: the caller's home at the same path, or `-H SRC[:DST]`,
/// or none with `--no-home`.
fn home_bind(opts: &RunOpts, home: Vec<u8>) -> Result<Option<Bind>> {
    match (&opts.home, opts.no_home) {
        (Some(_), true) => bail!("--home and --no-home: choose one"),
        (None, true) => Ok(None),
        // --contain: an empty home (made by the starter), or one kept in
        // the work directory.
        (None, false) if opts.contain => match workdir_sub(opts, "home")? {
            Some(src) => Ok(Some(Bind { src, dst: home, readonly: false })),
            None => Ok(None),
        },
        (Some(spec), false) => {
            let (src, dst) = spec.split_once(':').unwrap_or((spec, spec));
            let src = host_source("--home", src)?;
            if !src.is_dir() {
                bail!("--home {spec}: {} is not a directory", src.display());
            }
            let dst = container_path("--home", dst)?;
            let system = SYSTEM_DIRS.iter().any(|d| is_under(&dst, d.as_bytes()));
            if dst == b"/" || system || dst.iter().any(|&b| b == b':' || b == b'\n') {
                bail!("--home {spec}: not a usable home directory inside the container");
            }
            Ok(Some(Bind { src: src.as_os_str().as_bytes().to_vec(), dst, readonly: false }))
        }
        (None, false) => {
            husk_protocol::check_path("home", &home).map_err(|_| {
                anyhow!("home directory {} is not an absolute path", String::from_utf8_lossy(&home))
            })?;
            Ok(Some(Bind { src: home.clone(), dst: home, readonly: false }))
        }
    }
}

/// `-W DIR`: the directory `DIR/name`, made if missing (as the caller).
fn workdir_sub(opts: &RunOpts, name: &str) -> Result<Option<Vec<u8>>> {
    let Some(w) = &opts.workdir else { return Ok(None) };
    let base = host_source("--workdir", w)?;
    if !base.is_dir() {
        bail!("--workdir {w}: not a directory");
    }
    let sub = base.join(name);
    std::fs::create_dir_all(&sub)
        .map_err(|e| anyhow!("--workdir {w}: make {}: {}", sub.display(), crate::describe(&e)))?;
    Ok(Some(sub.into_os_string().into_vec()))
}

pub fn build_request(opts: &RunOpts, img: &ImageInfo, action: Action) -> Result<Request> {
    let (uid, gid) = sys::ids();
    let (ident, home) = identity(uid, gid)?;
    let home_bind = home_bind(opts, home.clone())?;
    // $HOME inside: the home's path there (with --no-home, the host's).
    let home = home_bind.as_ref().map_or(home, |b| b.dst.clone());
    let host: Vec<(Vec<u8>, Vec<u8>)> =
        std::env::vars_os().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect();
    let path = img.path_bytes();
    let name = img.path.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
    let set = env::user_set(opts.env_file.as_deref(), &opts.env, &host)?;
    let environment = env::compute(&env::Inputs {
        host: &host,
        image: &img.config.env,
        home: &home,
        container: &path,
        name: &name,
        cleanenv: opts.cleanenv,
        set: &set,
    });
    let argv: Vec<Vec<u8>> = match action {
        Action::Exec(cmd) if img.env_scripts_matter() => {
            wrapper(EXEC_MAIN, "husk-exec", &cmd).into_iter().map(String::into_bytes).collect()
        }
        Action::Exec(cmd) => cmd.into_iter().map(String::into_bytes).collect(),
        Action::Run(args) => run_argv(img, &args).into_iter().map(String::into_bytes).collect(),
        Action::Shell(args) => shell_argv(std::env::var_os("HUSK_SHELL").as_deref(), &args),
    };
    let mut env = environment.entries();
    if argv.get(2).is_some_and(|s| s.starts_with(ENV_PROLOGUE.as_bytes())) {
        env.extend(wrapper_env(&environment));
    }
    let hostname = match &opts.hostname {
        Some(h) => {
            husk_protocol::check_hostname(h.as_bytes())
                .map_err(|_| anyhow!("--hostname {h}: not an RFC 1123 host name"))?;
            Some(h.as_bytes().to_vec())
        }
        None => None,
    };
    let mut binds = parse_binds(&opts.bind, &opts.mount)?;
    // -W: /tmp and /var/tmp from the work directory; --contain alone:
    // fresh ones. (They do not hide the current directory: it is bound
    // over them, as over the host's.)
    let mut tmp_binds = Vec::new();
    for (name, dst) in [("tmp", &b"/tmp"[..]), ("var_tmp", b"/var/tmp")] {
        if let Some(src) = workdir_sub(opts, name)? {
            tmp_binds.push(Bind { src, dst: dst.to_vec(), readonly: false });
        }
    }
    let fresh_tmp = opts.contain && opts.workdir.is_none();
    let mount_tmp = !opts.contain && opts.workdir.is_none();
    let fresh_home = (opts.contain && opts.home.is_none() && !opts.no_home && home_bind.is_none())
        .then(|| home.clone());
    let workdir = opts.compat.then(|| img.config.working_dir.clone()).flatten();
    let (cwd, cwd_required) = match &opts.pwd {
        Some(p) => (container_path("--pwd", p)?, true),
        // --compat: Docker's WORKDIR (else its default, /).
        None if opts.compat => match workdir.as_deref().filter(|w| !w.is_empty()) {
            Some(w) => (container_path("WORKDIR", w)?, false),
            None => (b"/".to_vec(), false),
        },
        // --contain: the current directory stays outside; start at home.
        None if opts.contain => (if opts.no_home { b"/".to_vec() } else { home.clone() }, false),
        None => {
            let c = std::env::current_dir()
                .map(|c| c.as_os_str().as_bytes().to_vec())
                .unwrap_or(b"/".to_vec());
            let c = if husk_protocol::check_path("cwd", &c).is_ok() { c } else { b"/".to_vec() };
            if cwd_bind(&c, home_bind.as_ref().map(|h| &h.dst[..]), mount_tmp, &binds) {
                binds.push(Bind { src: c.clone(), dst: c.clone(), readonly: false });
            }
            (c, false)
        }
    };
    // Mount points inside the work directory's /tmp and /var/tmp are made
    // here, by the caller, in the caller's own directory: the starter never
    // creates anything inside a host bind.
    for b in &binds {
        for t in tmp_binds.iter().filter(|t| is_under(&b.dst, &t.dst) && b.dst != t.dst) {
            let inside = [&t.src[..], &b.dst[t.dst.len()..]].concat();
            let inside = Path::new(OsStr::from_bytes(&inside));
            let made = if Path::new(OsStr::from_bytes(&b.src)).is_dir() {
                std::fs::create_dir_all(inside)
            } else {
                inside.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|_| {
                    std::fs::OpenOptions::new().create(true).append(true).open(inside).map(drop)
                })
            };
            made.map_err(|e| {
                anyhow!("--workdir: make {}: {}", inside.display(), crate::describe(&e))
            })?;
        }
    }
    binds.extend(tmp_binds);
    // Shallowest first: nothing is mounted over what lies inside it.
    binds.sort_by_key(|b| b.dst.split(|&c| c == b'/').filter(|c| !c.is_empty()).count());
    // The shell's idea of the current directory, inside.
    env.retain(|e| !e.starts_with(b"PWD="));
    env.push([&b"PWD="[..], &cwd].concat());
    Ok(Request {
        image: husk_protocol::Image { path, kind: img.kind },
        argv,
        env,
        cwd,
        cwd_required,
        home: home_bind,
        mount_tmp,
        binds,
        identity: ident,
        namespaces: Namespaces {
            user: opts.userns,
            pid: opts.pid,
            ipc: opts.ipc,
            net: opts.net,
            uts: opts.uts || hostname.is_some(),
        },
        hostname,
        writable_tmpfs: opts.writable_tmpfs,
        fresh_tmp,
        fresh_home,
        minimal_dev: opts.contain,
        no_init: opts.no_init,
        end_with_parent: false,
    })
}

/// What the wrapper's prologue restores after the image's scripts ran.
fn wrapper_env(e: &env::Env) -> Vec<Vec<u8>> {
    let shell_name = |n: &[u8]| {
        n.first().is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
            && n.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
    };
    let keep: Vec<&[u8]> = e.forced.iter().map(|n| &n[..]).filter(|n| shell_name(n)).collect();
    let mut v = vec![[&b"HUSK_KEEP_ENV="[..], &keep.join(&b' ')].concat()];
    if let Some(p) = &e.prepend_path {
        v.push([&b"HUSK_PREPEND_PATH="[..], p].concat());
    }
    if let Some(a) = &e.append_path {
        v.push([&b"HUSK_APPEND_PATH="[..], a].concat());
    }
    v
}

/// The starter sits at `../libexec/husk/husk-starter` from the husk binary.
fn starter_path() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("find the husk executable")?;
    let prefix = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("husk is not installed in a prefix"))?;
    let p = prefix.join("libexec/husk/husk-starter");
    if !p.exists() {
        bail!("starter {} not found: husk is not installed correctly", p.display());
    }
    Ok(p)
}

fn hand_over(req: &Request) -> Result<ExitCode> {
    let starter = starter_path()?;
    let frame = husk_protocol::encode(req).map_err(|e| anyhow!("request: {e}"))?;
    let (r, w) = sys::pipe().context("create request pipe")?;
    if frame.len() > 60 * 1024 {
        sys::set_pipe_size(&w, frame.len()).context("request too large for a pipe")?;
    }
    File::from(w).write_all(&frame).context("write request")?;
    sys::dup_to(&r, 3).context("pass request pipe")?;
    let path = CString::new(starter.as_os_str().as_bytes()).context("starter path")?;
    let err = sys::exec(&path, &[CString::new("husk-starter")?]);
    bail!("exec starter {}: {}", starter.display(), crate::describe(&err))
}

/// An image path, or a source converted through the cache.
fn open_image(image: &str, arch: Option<&str>, insecure: bool) -> Result<ImageInfo> {
    match crate::oci::Source::parse(image)? {
        Some(src) => {
            let src = src.insecure(insecure);
            let opts = crate::convert::Options {
                compression: crate::squashfs::Compression::Zstd { level: 3 },
                platform: crate::oci::Platform::host(arch),
            };
            let sif = crate::cache::sif_for(&src, image, &opts)?;
            image::open(&sif.to_string_lossy())
        }
        None => {
            if let Some(a) = arch {
                bail!("--arch {a}: only for an image source (docker://, oci:, ...), not {image}");
            }
            image::open(image)
        }
    }
}

pub fn exec(opts: &RunOpts, image: &str, action: Action) -> Result<ExitCode> {
    let img = open_image(image, opts.arch.as_deref(), opts.insecure)?;
    if opts.unsquash && img.kind != husk_protocol::ImageKind::Dir {
        return run_unsquashed(opts, img, action);
    }
    let req = build_request(&opts.expanded(), &img, action)?;
    hand_over(&req)
}

/// `--unsquash`: the image's root extracted (by unsquashfs) into a
/// temporary directory, which runs as a directory image and is removed
/// when the container ends. husk stays for that, passing SIGTERM and SIGHUP
/// on (the terminal's ^C reaches the container by itself).
fn run_unsquashed(opts: &RunOpts, img: ImageInfo, action: Action) -> Result<ExitCode> {
    let tmp = crate::unsquash::Unpacked::new(&img)?;
    let mut dir_img = img;
    dir_img.path = tmp.root().to_path_buf();
    dir_img.kind = husk_protocol::ImageKind::Dir;
    let mut req = build_request(&opts.expanded(), &dir_img, action)?;
    // Killed, husk could not remove the extraction: the container ends too.
    req.end_with_parent = true;
    let child = sys::fork().context("fork")?;
    if child == 0 {
        let err = hand_over(&req).err().map(|e| format!("{e:#}")).unwrap_or_default();
        let _ = writeln!(std::io::stderr(), "husk: {err}");
        sys::exit_now(255);
    }
    sys::ignore(libc::SIGINT);
    sys::ignore(libc::SIGQUIT);
    if let Ok(rx) = sys::catch_signals(&[libc::SIGTERM, libc::SIGHUP]) {
        std::thread::spawn(move || loop {
            sys::kill(child, sys::next_signal(&rx));
        });
    }
    let code = sys::wait_code(child).context("wait for the container")?;
    drop(tmp);
    // Ended by a signal, the container's end looks the same from outside.
    if code > 128 && quiet_signal(i32::from(code) - 128) {
        sys::die_of(i32::from(code) - 128);
    }
    Ok(ExitCode::from(code))
}

/// Signals whose default action ends a process without a core dump.
fn quiet_signal(sig: i32) -> bool {
    [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGKILL,
        libc::SIGPIPE,
        libc::SIGALRM,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ]
    .contains(&sig)
}

pub fn inspect(image: &str, as_json: bool, arch: Option<&str>, insecure: bool) -> Result<()> {
    let img = open_image(image, arch, insecure)?;
    let (offset, size) = match img.kind {
        husk_protocol::ImageKind::Sif { offset, size } => (Some(offset), Some(size)),
        _ => (None, None),
    };
    let run = run_argv(&img, &[]);
    let c = &img.config;
    let husk_str = |k: &str| img.husk.as_ref().and_then(|h| h.get(k)?.as_str().map(str::to_owned));
    let (source, digest, arch) = (husk_str("source"), husk_str("digest"), husk_str("architecture"));
    let v = json!({
        "path": img.path.display().to_string(),
        "format": img.kind_name(),
        "source": source,
        "digest": digest,
        "architecture": arch,
        "partition": offset.map(|o| json!({"offset": o, "size": size})),
        "env": c.env,
        "entrypoint": c.entrypoint,
        "cmd": c.cmd,
        "workdir": c.working_dir,
        "user": c.user,
        "labels": img.labels(),
        "runscript": img.runscript(),
        "environment": img.apptainer.as_ref().and_then(|a| a.pointer("/data/attributes/environment")),
        "run": run,
    });
    if as_json {
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    say!("image:      {}", img.path.display());
    match (offset, size) {
        (Some(o), Some(s)) => {
            say!("format:     sif (squashfs partition at offset {o}, {s} bytes)")
        }
        _ => say!("format:     {}", img.kind_name()),
    }
    for (k, v) in [("source", &source), ("digest", &digest), ("arch", &arch)] {
        if let Some(v) = v {
            say!("{:<12}{v}", format!("{k}:"));
        }
    }
    for e in &c.env {
        say!("env:        {e}");
    }
    let list = |l: &Option<Vec<String>>| {
        l.as_ref().map(|v| format!("{v:?}")).unwrap_or_else(|| "-".into())
    };
    say!("entrypoint: {}", list(&c.entrypoint));
    say!("cmd:        {}", list(&c.cmd));
    if let Some(u) = &c.user {
        say!("user:       {u} (not applied: husk runs as the caller)");
    }
    if let Some(w) = &c.working_dir {
        say!("workdir:    {w} (not applied: husk starts in your current directory)");
    }
    if let Some(l) = img.labels().and_then(|l| l.as_object()) {
        for (k, v) in l {
            say!(
                "label:      {k}={}",
                v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())
            );
        }
    }
    if img.may_have_runscript() {
        say!("run:        /.singularity.d/runscript (after sourcing /.singularity.d/env/*.sh), else /bin/sh");
    } else {
        say!("run:        {run:?}");
    }
    if let Some(r) = img.runscript() {
        say!("runscript:");
        for l in r.lines() {
            say!("    {l}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cwd_rules() {
        let home = Some(&b"/home/a"[..]);
        assert!(!cwd_bind(b"/", home, true, &[]));
        assert!(!cwd_bind(b"/usr/bin", home, true, &[]));
        assert!(!cwd_bind(b"/home/a/src", home, true, &[]));
        assert!(!cwd_bind(b"/tmp/x", home, true, &[]));
        assert!(!cwd_bind(b"/var/tmp/x", home, true, &[]));
        // /home itself is neither a system dir nor visible.
        assert!(cwd_bind(b"/home", home, true, &[]));
        let b = Bind { src: b"/data".to_vec(), dst: b"/data".to_vec(), readonly: false };
        assert!(!cwd_bind(b"/data/x", home, true, &[b]));
    }

    #[test]
    fn bind_specs() {
        let b = parse_binds(&["/tmp:/a/b/c:ro,/:/x".to_string()], &[]).unwrap();
        assert_eq!(b[0].dst, b"/x");
        assert_eq!(b[1].dst, b"/a/b/c");
        assert!(b[1].readonly && !b[0].readonly);
        for bad in ["/tmp:/x:rx", "/tmp:rel", "/tmp:/", "/no/such/dir"] {
            assert!(parse_binds(&[bad.to_string()], &[]).is_err(), "{bad}");
        }
        // Escaped commas and colons are parts of the paths.
        let b = parse_binds(&["/tmp:/a\\,b\\:c:ro".to_string()], &[]).unwrap();
        assert_eq!((b[0].dst.as_slice(), b[0].readonly), (&b"/a,b:c"[..], true));
        assert_eq!(split_escaped("a\\,b,c", ','), ["a\\,b", "c"]);
        assert_eq!(unescape("a\\,b\\\\c"), "a,b\\c");
    }

    #[test]
    fn mount_specs() {
        let m = |s: &str| parse_binds(&[], &[s.to_string()]);
        let b = m("type=bind,source=/tmp,destination=/data,readonly").unwrap();
        assert_eq!((b[0].src.as_slice(), b[0].dst.as_slice()), (&b"/tmp"[..], &b"/data"[..]));
        assert!(b[0].readonly);
        let b = m("type=bind,src=/tmp,target=/d,ro=false").unwrap();
        assert!(!b[0].readonly);
        for (bad, why) in [
            ("type=volume,source=x,destination=/d", "only type=bind"),
            ("type=bind,source=/tmp", "needs source= and destination="),
            ("type=bind,source=/tmp,destination=/d,bind-propagation=shared", "unknown field"),
            ("type=bind,source=/tmp,destination=/d,readonly=maybe", "readonly=maybe"),
        ] {
            let e = m(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn oci_run_rule() {
        let mut img = ImageInfo {
            path: PathBuf::from("/nonexistent-dir-image"),
            kind: husk_protocol::ImageKind::Dir,
            config: Default::default(),
            apptainer: None,
            husk: None,
        };
        img.config.entrypoint = Some(vec!["/e".into()]);
        img.config.cmd = Some(vec!["c".into()]);
        assert_eq!(run_argv(&img, &[]), vec!["/e", "c"]);
        assert_eq!(run_argv(&img, &["x".into()]), vec!["/e", "x"]);
        img.config = Default::default();
        assert_eq!(run_argv(&img, &["-c".into()]), vec!["/bin/sh", "-c"]);
    }
}
