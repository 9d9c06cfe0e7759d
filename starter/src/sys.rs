//! Every system call the starter makes that needs `unsafe`, each in a small
//! wrapper returning `io::Result`. Nothing else in the starter uses `unsafe`.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{null, null_mut};

pub use libc::stat as Stat;

/// The fd on which the frontend hands over the request.
pub const REQUEST_FD: RawFd = 3;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_long(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Run `f` until it does not fail with EINTR.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

// ---- process state -------------------------------------------------------

/// True when the kernel started us in secure-execution mode (setuid/setgid).
pub fn at_secure() -> bool {
    // SAFETY: getauxval reads the auxiliary vector; no memory is passed.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

pub fn getresuid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out-pointers to uid_t; getresuid cannot fail with them.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

pub fn getresgid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out-pointers to gid_t; getresgid cannot fail with them.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

pub fn getgroups() -> io::Result<Vec<u32>> {
    // SAFETY: size 0 with a null list only asks for the count.
    let n = cvt(unsafe { libc::getgroups(0, null_mut()) })?;
    let mut v = vec![0u32; n as usize];
    // SAFETY: v has room for n entries, and n is passed as its size.
    let got = cvt(unsafe { libc::getgroups(n, v.as_mut_ptr()) })?;
    v.truncate(got as usize);
    Ok(v)
}

pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask only swaps the process's mask.
    unsafe { libc::umask(mask) }
}

/// Signal state inherited from the caller, restored just before exec.
pub struct SignalState {
    ignored: Vec<libc::c_int>,
    mask: libc::sigset_t,
}

fn set_action(sig: libc::c_int, handler: libc::sighandler_t) -> io::Result<libc::sighandler_t> {
    // SAFETY: a zeroed sigaction is a valid action with no flags and an
    // empty mask; `old` is valid out storage.
    let (mut act, mut old): (libc::sigaction, libc::sigaction) = unsafe { (zeroed(), zeroed()) };
    act.sa_sigaction = handler;
    // SAFETY: both pointers are valid for the call.
    cvt(unsafe { libc::sigaction(sig, &act, &mut old) })?;
    Ok(old.sa_sigaction)
}

/// Set every signal to its default action and unblock all; return what the
/// caller had so that it can be restored for the payload.
pub fn reset_signals() -> io::Result<SignalState> {
    let mut ignored = Vec::new();
    for sig in 1..libc::SIGRTMAX() + 1 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // Signals glibc reserves fail with EINVAL and are left alone. Rust's
        // runtime ignores SIGPIPE before main, so its state says nothing
        // about the caller's: the payload gets the default, as from a shell.
        if let Ok(old) = set_action(sig, libc::SIG_DFL) {
            if old == libc::SIG_IGN && sig != libc::SIGPIPE {
                ignored.push(sig);
            }
        }
    }
    // While privileged, a file-size limit must fail a write, not kill us.
    set_action(libc::SIGXFSZ, libc::SIG_IGN)?;
    // SAFETY: `empty` and `mask` are valid sigset_t storage.
    let (mut empty, mut mask): (libc::sigset_t, libc::sigset_t) = unsafe { (zeroed(), zeroed()) };
    // SAFETY: `empty` is valid storage for sigemptyset.
    unsafe { libc::sigemptyset(&mut empty) };
    // SAFETY: valid pointers to sigset_t.
    cvt(unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, &mut mask) })?;
    Ok(SignalState { ignored, mask })
}

pub fn restore_signals(state: &SignalState) -> io::Result<()> {
    set_action(libc::SIGXFSZ, libc::SIG_DFL)?;
    for &sig in &state.ignored {
        set_action(sig, libc::SIG_IGN)?;
    }
    // SAFETY: a valid sigset_t recorded at entry.
    cvt(unsafe { libc::sigprocmask(libc::SIG_SETMASK, &state.mask, null_mut()) })?;
    Ok(())
}

/// Make sure fds 0, 1 and 2 are open, so that nothing we open lands there.
pub fn ensure_stdio() -> io::Result<()> {
    for fd in 0..3 {
        // SAFETY: F_GETFD on any number only queries.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // SAFETY: a constant NUL-terminated path.
            let got = cvt(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) })?;
            if got != fd {
                return Err(io::Error::other("stdio fd could not be reopened"));
            }
        }
    }
    Ok(())
}

/// Close every fd numbered `first` or above.
pub fn close_from(first: u32) -> io::Result<()> {
    // SAFETY: closes fds by number; callers own no fds above `first` they still use.
    cvt(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) } as libc::c_int)?;
    Ok(())
}

/// Give up the controlling terminal, if there is one, so that nothing run
/// from here can push input into it with TIOCSTI. A process-group leader
/// (every job an interactive shell starts) cannot `setsid`, but any process
/// can drop its terminal this way; the terminal's signals (^C) still reach
/// the process group.
pub fn drop_controlling_tty() {
    let Ok(tty) = open(c"/dev/tty", libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK) else {
        return; // no controlling terminal
    };
    // SAFETY: TIOCNOTTY takes no argument; tty is a valid fd.
    unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCNOTTY) };
}

/// True when fd 0 is a terminal.
pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty only queries the fd.
    unsafe { libc::isatty(0) == 1 }
}

pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    Ok(())
}

pub fn set_not_dumpable() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) })?;
    Ok(())
}

/// Make the process dumpable again: in user-namespace mode, after the drop,
/// so that it may write its own `/proc/self/uid_map` (whose owner is root
/// while the process is not dumpable). Nothing privileged is left by then.
pub fn set_dumpable() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) })?;
    Ok(())
}

pub fn getpid() -> libc::pid_t {
    // SAFETY: no arguments; cannot fail.
    unsafe { libc::getpid() }
}

pub fn getppid() -> libc::pid_t {
    // SAFETY: no arguments; cannot fail.
    unsafe { libc::getppid() }
}

/// A session (and process group) of its own, away from the terminal.
pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments.
    cvt(unsafe { libc::setsid() })?;
    Ok(())
}

/// Make `fd` also open as `target`, inherited across exec (for a helper
/// about to be executed; `target` is closed first if open).
pub fn dup_inheritable(fd: RawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: integer arguments only; dup2 leaves close-on-exec clear.
    cvt(unsafe { libc::dup2(fd, target) })?;
    Ok(())
}

/// A copy of `fd` numbered `min` or above (close-on-exec clear).
pub fn dup_above(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<RawFd> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, min) })
}

/// Unblock every signal.
pub fn unblock_all_signals() -> io::Result<()> {
    // SAFETY: `none` is valid sigset_t storage, emptied before use.
    let mut none: libc::sigset_t = unsafe { zeroed() };
    // SAFETY: as above.
    unsafe { libc::sigemptyset(&mut none) };
    // SAFETY: a valid, empty sigset_t; the old mask is not wanted.
    cvt(unsafe { libc::sigprocmask(libc::SIG_SETMASK, &none, null_mut()) })?;
    Ok(())
}

/// Take ownership of the request fd.
pub fn request_file() -> io::Result<File> {
    let st = fstat_raw(REQUEST_FD)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(io::Error::other("fd 3 is not a pipe"));
    }
    // SAFETY: fd 3 is open (fstat succeeded) and nothing else in the
    // process owns it.
    Ok(unsafe { File::from_raw_fd(REQUEST_FD) })
}

fn fstat_raw(fd: RawFd) -> io::Result<Stat> {
    // SAFETY: zeroed stat is valid out storage.
    let mut st: Stat = unsafe { zeroed() };
    // SAFETY: st is a valid out-pointer.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    fstat_raw(fd.as_raw_fd())
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    retry(|| {
        // SAFETY: buf is valid for buf.len() bytes of writes.
        let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    })
}

// ---- filesystem credentials ------------------------------------------------

/// Set the filesystem uid and gid; returns an error unless both took effect.
pub fn set_fs_ids(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: setfsgid/setfsuid take integers; the kernel never fails them
    // outright, so each result is checked by asking again with an invalid id.
    unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
        let now_gid = libc::setfsgid(u32::MAX) as u32;
        let now_uid = libc::setfsuid(u32::MAX) as u32;
        if now_uid != uid || now_gid != gid {
            return Err(io::Error::other("setfsuid/setfsgid did not take effect"));
        }
    }
    Ok(())
}

// ---- files ---------------------------------------------------------------

pub fn open(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    openat(None, path, flags, 0)
}

pub fn openat(
    dir: Option<BorrowedFd<'_>>,
    path: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    let fd = retry(|| {
        // SAFETY: path is NUL-terminated; dirfd is valid or AT_FDCWD.
        cvt(unsafe { libc::openat(dirfd, path.as_ptr(), flags | libc::O_CLOEXEC, mode) })
    })?;
    // SAFETY: openat returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;

/// Open a path the caller named: like `open`, but refusing `/proc` magic
/// links (`/proc/PID/cwd`, `/proc/PID/fd/N`), whose targets need no search
/// permission on the directories above them.
pub fn open_user_path(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a zeroed open_how is valid (all fields are integers).
    let mut how: libc::open_how = unsafe { zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = RESOLVE_NO_MAGICLINKS;
    let fd = retry(|| {
        // SAFETY: path is NUL-terminated and `how` is a valid open_how of the size passed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                libc::AT_FDCWD,
                path.as_ptr(),
                &how as *const libc::open_how,
                size_of::<libc::open_how>(),
            )
        };
        cvt_long(r)
    })?;
    // SAFETY: openat2 returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: name is NUL-terminated, dir is a valid fd.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })?;
    Ok(())
}

pub fn mknodat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: libc::mode_t,
    major: u32,
    minor: u32,
) -> io::Result<()> {
    // SAFETY: name is NUL-terminated; dir is a valid fd; the rest are integers.
    cvt(unsafe {
        libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, libc::makedev(major, minor))
    })?;
    Ok(())
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated; dir is a valid fd.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })?;
    Ok(())
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: name is NUL-terminated, dir is a valid fd.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    Ok(())
}

pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: integer arguments and a valid fd.
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })?;
    Ok(())
}

/// The kernel's path of the object open at `fd` (`/proc/self/fd/N`).
pub fn fd_path(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let link = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: link is NUL-terminated; buf is valid for buf.len() bytes.
    let n = unsafe { libc::readlink(link.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize >= buf.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: path is NUL-terminated.
    cvt(unsafe { libc::chdir(path.as_ptr()) })?;
    Ok(())
}

// ---- namespaces and mounts ---------------------------------------------------

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: integer flags only.
    cvt(unsafe { libc::unshare(flags) })?;
    Ok(())
}

pub fn sethostname(name: &[u8]) -> io::Result<()> {
    // SAFETY: the pointer is valid for name.len() bytes.
    cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
    Ok(())
}

/// Bring the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: plain integer arguments.
    let s = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket returned a new fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: all-zero is a valid ifreq (integers, arrays and a union of them).
    let mut req: libc::ifreq = unsafe { zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: req is a valid ifreq naming an interface; the kernel fills its flags.
    cvt(unsafe {
        libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req as *mut libc::ifreq)
    })?;
    // SAFETY: SIOCGIFFLAGS set the flags member of the union, which is read here.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: req is a valid ifreq with the flags to set.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req as *const libc::ifreq) })?;
    Ok(())
}

pub fn mount(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    // SAFETY: every pointer is NUL-terminated or null, as mount(2) allows.
    cvt(unsafe {
        libc::mount(
            src.map_or(null(), |s| s.as_ptr()),
            target.as_ptr(),
            fstype.map_or(null(), |s| s.as_ptr()),
            flags,
            data.map_or(null(), |s| s.as_ptr().cast()),
        )
    })?;
    Ok(())
}

pub fn umount(target: &CStr) -> io::Result<()> {
    // SAFETY: target is NUL-terminated.
    cvt(unsafe { libc::umount2(target.as_ptr(), 0) })?;
    Ok(())
}

pub fn umount_detach(target: &CStr) -> io::Result<()> {
    // SAFETY: target is NUL-terminated.
    cvt(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })?;
    Ok(())
}

pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: both paths are NUL-terminated.
    cvt_long(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })?;
    Ok(())
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const AT_EMPTY_PATH: libc::c_uint = 0x1000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached copy of the mount tree at `fd` (like a bind mount not yet attached).
pub fn clone_tree(fd: BorrowedFd<'_>, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_EMPTY_PATH;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: an empty NUL-terminated path with AT_EMPTY_PATH names `fd` itself.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) };
    let newfd = cvt_long(r)? as RawFd;
    // SAFETY: open_tree returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(newfd) })
}

/// Set mount attributes on the mount (and with `recursive`, its sub-mounts)
/// at `fd`, and make its propagation private so that nothing mounted on it
/// later can reach the host's mounts.
pub fn set_mount_attrs(fd: BorrowedFd<'_>, set: u64, recursive: bool) -> io::Result<()> {
    let attr =
        MountAttr { attr_set: set, attr_clr: 0, propagation: libc::MS_PRIVATE, userns_fd: 0 };
    let mut flags = AT_EMPTY_PATH;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: attr is a valid mount_attr of the size passed; empty path names fd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            size_of::<MountAttr>(),
        )
    };
    cvt_long(r)?;
    Ok(())
}

/// Attach the detached mount `tree` on top of the object `target` refers to.
pub fn move_mount_to(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: empty paths with the *_EMPTY_PATH flags name the two fds.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    cvt_long(r)?;
    Ok(())
}

// ---- loop devices ------------------------------------------------------------

const LOOP_CTL_ADD: libc::c_ulong = 0x4C80;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Ask the kernel for a free loop device number.
pub fn loop_get_free(control: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument.
    let n = cvt(unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) })?;
    Ok(n as u32)
}

/// What a bound loop device shows of its backing file.
pub struct LoopStatus {
    /// `st_dev` and `st_ino` of the backing file.
    pub device: u64,
    pub inode: u64,
    pub offset: u64,
    pub size: u64,
    /// Read-only and auto-clearing, as every device the starter attaches.
    pub read_only_autoclear: bool,
}

/// The binding of the loop device open at `dev` (ENXIO if it is unbound).
pub fn loop_status(dev: BorrowedFd<'_>) -> io::Result<LoopStatus> {
    // SAFETY: all-zero is a valid LoopInfo64 (plain integers and arrays).
    let mut info: LoopInfo64 = unsafe { zeroed() };
    // SAFETY: info is valid, writable storage of the struct the ioctl fills.
    cvt(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_GET_STATUS64, &mut info as *mut LoopInfo64) })?;
    let want = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
    Ok(LoopStatus {
        device: info.lo_device,
        inode: info.lo_inode,
        offset: info.lo_offset,
        size: info.lo_sizelimit,
        read_only_autoclear: info.lo_flags & want == want,
    })
}

/// Make loop device number `n` exist (`Ok` if it already did).
pub fn loop_add(control: BorrowedFd<'_>, n: u32) -> io::Result<()> {
    // SAFETY: LOOP_CTL_ADD takes the device number as an integer argument.
    match cvt(unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_ADD, n as libc::c_ulong) }) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map(drop),
    }
}

/// Attach `backing` to the loop device `dev`, read-only and auto-clearing,
/// exposing `size` bytes from `offset`.
pub fn loop_configure(
    dev: BorrowedFd<'_>,
    backing: BorrowedFd<'_>,
    offset: u64,
    size: u64,
) -> io::Result<()> {
    // SAFETY: all-zero is a valid LoopConfig (plain integers and arrays).
    let mut cfg: LoopConfig = unsafe { zeroed() };
    cfg.fd = backing.as_raw_fd() as u32;
    cfg.info.lo_offset = offset;
    cfg.info.lo_sizelimit = size;
    cfg.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
    // SAFETY: cfg is a valid struct loop_config for the duration of the call.
    cvt(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) })?;
    Ok(())
}

// ---- processes -------------------------------------------------------------------

/// fork(2): 0 in the child, the child's pid in the parent.
pub fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: the starter is single-threaded, so the child may run any code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// A pipe whose ends do not block, both close-on-exec: (read, write).
pub fn pipe_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two fds pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: pipe2 just made both fds; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// True once every write end of the pipe `r` is closed (and nothing is
/// left to read): its writer has gone.
pub fn pipe_writer_gone(r: BorrowedFd<'_>) -> bool {
    let mut b = 0u8;
    // SAFETY: b is valid for one byte of writes.
    unsafe { libc::read(r.as_raw_fd(), (&mut b as *mut u8).cast(), 1) == 0 }
}

/// Move `fd` to the number `target` (closing what was there), close-on-exec.
pub fn move_fd(fd: OwnedFd, target: RawFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() == target {
        return Ok(fd);
    }
    // SAFETY: both are fd numbers; dup3 closes `target` first if it is open.
    cvt(unsafe { libc::dup3(fd.as_raw_fd(), target, libc::O_CLOEXEC) })?;
    // SAFETY: dup3 made `target` a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(target) })
}

/// Have the kernel send `sig` to this process when its parent dies.
pub fn set_parent_death_signal(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

/// Block every signal: they wait until [`next_signal`] takes them.
pub fn block_all_signals() -> io::Result<()> {
    // SAFETY: `all` is valid sigset_t storage, filled before use.
    let mut all: libc::sigset_t = unsafe { zeroed() };
    // SAFETY: as above.
    unsafe { libc::sigfillset(&mut all) };
    // SAFETY: a valid, filled sigset_t; the old mask is not wanted.
    cvt(unsafe { libc::sigprocmask(libc::SIG_SETMASK, &all, null_mut()) })?;
    Ok(())
}

/// The next pending signal and whether a process sent it (kill, sigqueue)
/// rather than the kernel (a terminal's ^C, a child's exit); with a
/// timeout, `None` when none came in time.
pub fn next_signal(timeout_ms: Option<u64>) -> Option<(libc::c_int, bool)> {
    // SAFETY: `all` is valid sigset_t storage, filled before use.
    let mut all: libc::sigset_t = unsafe { zeroed() };
    // SAFETY: as above.
    unsafe { libc::sigfillset(&mut all) };
    let ts = timeout_ms.map(|ms| libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    });
    loop {
        // SAFETY: all-zero is valid siginfo_t storage.
        let mut info: libc::siginfo_t = unsafe { zeroed() };
        let tp = ts.as_ref().map_or(null(), |t| t as *const libc::timespec);
        // SAFETY: every pointer is valid for the call (or null: no timeout).
        let sig = unsafe { libc::sigtimedwait(&all, &mut info, tp) };
        if sig > 0 {
            let sent = matches!(info.si_code, libc::SI_USER | libc::SI_QUEUE | libc::SI_TKILL);
            return Some((sig, sent));
        }
        if io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
            return None;
        }
    }
}

/// Reap `pid` (or, with -1, any child) if it has ended: its pid and status.
pub fn reap(pid: libc::pid_t) -> Option<(libc::pid_t, libc::c_int)> {
    let mut status = 0;
    // SAFETY: status is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    (r > 0).then_some((r, status))
}

/// Wait until `pid` has ended and reap it.
pub fn wait_for(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    // SAFETY: status is a valid out-pointer.
    retry(|| cvt(unsafe { libc::waitpid(pid, &mut status, 0) }))?;
    Ok(status)
}

/// An exit code for a wait status: the code, or 128 + the killing signal.
pub fn status_code(status: libc::c_int) -> i32 {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// Send `sig` to `pid`; false only if we may not (yet).
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> bool {
    // SAFETY: integer arguments only.
    let r = unsafe { libc::kill(pid, sig) };
    r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
}

/// Make the real and saved uid root as well (the effective one is): the
/// caller can then no longer signal this process, e.g. stop it.
pub fn become_root_entirely() -> io::Result<()> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::setresuid(0, 0, 0) })?;
    Ok(())
}

// ---- identity ------------------------------------------------------------------

pub fn setgroups(groups: &[u32]) -> io::Result<()> {
    // SAFETY: the slice is valid for its length.
    cvt(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
    Ok(())
}

pub fn setresgid(g: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::setresgid(g, g, g) })?;
    Ok(())
}

pub fn setresuid(u: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::setresuid(u, u, u) })?;
    Ok(())
}

/// Remove every capability from the bounding set (needs CAP_SETPCAP). The
/// kernel answers EINVAL past its last capability; no file is read for it.
pub fn drop_bounding_set() -> io::Result<()> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINVAL) { Ok(()) } else { Err(e) };
        }
    }
    Ok(())
}

/// Whether any capability is left in the bounding set.
pub fn bounding_set_empty() -> bool {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        match unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } {
            0 => {}
            1 => return false,
            // Only EINVAL means "past the last capability"; any other
            // failure proves nothing, so the set is not taken as empty.
            _ => return io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL),
        }
    }
    true
}

pub fn clear_ambient() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe {
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0)
    })?;
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Empty the effective, permitted and inheritable sets.
pub fn clear_capabilities() -> io::Result<()> {
    let hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as version 3 requires.
    cvt_long(unsafe { libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, data.as_ptr()) })?;
    Ok(())
}

/// Empty the effective set (keeping the permitted one), or refill it from
/// the permitted set.
pub fn set_effective_capabilities(on: bool) -> io::Result<()> {
    let hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element out array, as version 3 requires.
    cvt_long(unsafe {
        libc::syscall(libc::SYS_capget, &hdr as *const CapHeader, data.as_mut_ptr())
    })?;
    for d in &mut data {
        d.effective = if on { d.permitted } else { 0 };
    }
    // SAFETY: header and a two-element data array, as version 3 requires.
    cvt_long(unsafe { libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, data.as_ptr()) })?;
    Ok(())
}

/// The effective, permitted and inheritable sets, each as 64 bits.
pub fn get_capabilities() -> io::Result<[u64; 3]> {
    let hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element out array, as version 3 requires.
    cvt_long(unsafe {
        libc::syscall(libc::SYS_capget, &hdr as *const CapHeader, data.as_mut_ptr())
    })?;
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok([
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ])
}

// ---- exec ------------------------------------------------------------------------

/// Replace the process image; returns only on failure.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(null());
    let mut e: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    e.push(null());
    // SAFETY: path and every element are NUL-terminated and outlive the
    // call; both arrays end with a null pointer.
    unsafe { libc::execve(path.as_ptr(), a.as_ptr(), e.as_ptr()) };
    io::Error::last_os_error()
}

/// Stop this process (SIGSTOP cannot be blocked) until it is continued.
pub fn stop_self() {
    // SAFETY: integer arguments only.
    unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
}

/// End by `sig` (its default action), else exit with 128 + `sig`.
pub fn die_of(sig: libc::c_int) -> ! {
    // SAFETY: a default disposition, an unblocked signal, sent to ourselves.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut one: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut one);
        libc::sigaddset(&mut one, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &one, null_mut());
        libc::kill(libc::getpid(), sig);
    }
    exit(128 + sig)
}

pub fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process without running any user code.
    unsafe { libc::_exit(code) }
}

pub fn clearenv() {
    // SAFETY: the starter is single-threaded and holds no pointers into the
    // environment; clearenv only empties it.
    unsafe { libc::clearenv() };
}
