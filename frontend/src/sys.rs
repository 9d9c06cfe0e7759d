//! The few libc calls the frontend needs, each behind a safe wrapper.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::null;

pub fn ids() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail and take no arguments.
    unsafe { (libc::getuid(), libc::getgid()) }
}

pub fn groups() -> io::Result<Vec<u32>> {
    // SAFETY: size 0 with a null list only asks for the count.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut v = vec![0u32; n as usize];
    // SAFETY: v has room for n entries.
    let got = unsafe { libc::getgroups(n, v.as_mut_ptr()) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    v.truncate(got as usize);
    Ok(v)
}

pub struct Passwd {
    pub name: Vec<u8>,
    pub gecos: Vec<u8>,
    pub dir: Vec<u8>,
}

fn bytes(p: *const libc::c_char) -> Vec<u8> {
    if p.is_null() {
        return Vec::new();
    }
    // SAFETY: a non-null field of a passwd/group entry points at a
    // NUL-terminated string inside the buffer we passed, still alive here.
    unsafe { CStr::from_ptr(p) }.to_bytes().to_vec()
}

/// The host's passwd entry for `uid` (through NSS, as `id` would find it).
pub fn passwd(uid: u32) -> io::Result<Option<Passwd>> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: zeroed passwd is valid out storage.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut res: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: pw, buf and res are valid for the call; buf.len() is its size.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut res) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if res.is_null() {
            return Ok(None);
        }
        return Ok(Some(Passwd {
            name: bytes(pw.pw_name),
            gecos: bytes(pw.pw_gecos),
            dir: bytes(pw.pw_dir),
        }));
    }
}

/// The host's name for group `gid`, if it has one.
pub fn group_name(gid: u32) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: zeroed group is valid out storage.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut res: *mut libc::group = std::ptr::null_mut();
        // SAFETY: gr, buf and res are valid for the call; buf.len() is its size.
        let rc =
            unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut res) };
        if rc == libc::ERANGE && buf.len() < 1 << 22 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || res.is_null() {
            return None;
        }
        return Some(bytes(gr.gr_name));
    }
}

/// A pipe whose read end will become the starter's fd 3.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two fds pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just created both fds; we are their only owner.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Grow the pipe buffer so that a request of `len` bytes fits without a reader.
pub fn set_pipe_size(fd: &OwnedFd, len: usize) -> io::Result<()> {
    // SAFETY: F_SETPIPE_SZ takes an integer size.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, len as libc::c_int) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Place `fd` at `target` without close-on-exec.
pub fn dup_to(fd: &OwnedFd, target: i32) -> io::Result<()> {
    if fd.as_raw_fd() == target {
        // SAFETY: clearing FD_CLOEXEC on an fd we own.
        if unsafe { libc::fcntl(target, libc::F_SETFD, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(());
    }
    // SAFETY: dup2 onto a number the frontend does not otherwise use.
    if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Exec `path` with `argv` and an empty environment; returns only on failure.
pub fn exec(path: &CStr, argv: &[CString]) -> io::Error {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(null());
    let envp: [*const libc::c_char; 1] = [null()];
    // SAFETY: path and argv are NUL-terminated and alive; both arrays end in null.
    unsafe { libc::execve(path.as_ptr(), a.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// Lock `f` exclusively (flock); with `wait` false, fail at once if another
/// holds it. The lock goes with the last fd to it, however the holder ends.
pub fn lock_file(f: &std::fs::File, wait: bool) -> io::Result<()> {
    let op = if wait { libc::LOCK_EX } else { libc::LOCK_EX | libc::LOCK_NB };
    // SAFETY: an fd we own and integer flags.
    if unsafe { libc::flock(f.as_raw_fd(), op) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Have `cmd`'s process killed when husk ends, however it ends.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Fork; 0 in the child.
pub fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: called while the frontend has no other thread that holds a
    // lock the child could need (the child only execs or exits).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// Wait for `pid` to end: its exit code, or 128 + the signal that ended it.
pub fn wait_code(pid: libc::pid_t) -> io::Result<u8> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        if unsafe { libc::waitpid(pid, &mut status, 0) } >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let code = if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    };
    Ok(code as u8)
}

/// Ignore `sig` (the terminal sends it to the container too).
pub fn ignore(sig: libc::c_int) {
    // SAFETY: setting a disposition to SIG_IGN.
    unsafe { libc::signal(sig, libc::SIG_IGN) };
}

/// Send `sig` to `pid`.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: integer arguments only.
    unsafe { libc::kill(pid, sig) };
}

/// Leave the process now, without running destructors (a forked child).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit only ends the process.
    unsafe { libc::_exit(code) }
}

// ---- interruption ------------------------------------------------------------

/// Where the signal handler writes the number of the signal it caught.
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn forward_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; `b` lives for the call.
    unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
}

/// Move `fd` to a number of 10 or more (close-on-exec), out of the way of
/// the low numbers the request hand-over uses.
fn high_fd(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an integer lower bound.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl just made this fd; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Catch `sigs` (those not ignored, as under nohup) by writing each one's
/// number to a pipe, whose read end is returned.
pub fn catch_signals(sigs: &[libc::c_int]) -> io::Result<OwnedFd> {
    let (r, w) = pipe()?;
    let (r, w) = (high_fd(r)?, high_fd(w)?);
    use std::os::fd::IntoRawFd;
    SIGNAL_PIPE.store(w.into_raw_fd(), std::sync::atomic::Ordering::Relaxed);
    for &sig in sigs {
        // SAFETY: all-zero is a valid sigaction (no handler, empty mask).
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only reads the current one into `old`.
        if unsafe { libc::sigaction(sig, null(), &mut old) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if old.sa_sigaction == libc::SIG_IGN {
            continue;
        }
        // SAFETY: as above.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = forward_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: sa is a valid action whose handler only calls write(2).
        if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(r)
}

/// Block until a caught signal arrives on `rx`; its number.
pub fn next_signal(rx: &OwnedFd) -> libc::c_int {
    let mut b = 0u8;
    loop {
        // SAFETY: b is valid for one byte of writes.
        let n = unsafe { libc::read(rx.as_raw_fd(), (&mut b as *mut u8).cast(), 1) };
        if n == 1 {
            return b.into();
        }
        if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // The write end is never closed; should it be, end as if interrupted.
            return libc::SIGTERM;
        }
    }
}

/// End the process the way `sig` would have ended it uncaught.
pub fn die_of(sig: libc::c_int) -> ! {
    // SAFETY: resetting a disposition to the default and signalling ourselves.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
    }
    std::process::exit(128 + sig)
}
