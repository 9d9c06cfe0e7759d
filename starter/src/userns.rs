//! User-namespace mode: the starter holds no privileges of its own (it was
//! installed without the setuid bit, or dropped them all at once) and builds
//! the container in a user namespace that maps only the caller's uid and
//! gid, to themselves. The kernel will not mount a squashfs there, so SIF
//! and squashfs images are served by `squashfuse`, a helper that lives
//! exactly as long as the container.

use crate::entry::Caller;
use crate::error::{show, Context, Error, Result};
use crate::objects::Image;
use crate::sys;
use std::ffi::{CStr, CString};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

/// Where the helpers may be; the first that exists is used. Fixed, as the
/// starter reads no environment: the system's, then the `bin` of the prefix
/// husk was installed into (set at build time by `packaging/install.sh`),
/// where a user's own install may have its own. `squashfuse_ll` is the
/// faster one.
fn helpers() -> Vec<CString> {
    let mut dirs = vec!["/usr/bin".to_string(), "/usr/local/bin".to_string()];
    if let Some(prefix) = option_env!("HUSK_PREFIX") {
        dirs.push(format!("{prefix}/bin"));
    }
    let names = ["squashfuse_ll", "squashfuse"];
    dirs.iter()
        .flat_map(|d| names.iter().map(move |n| format!("{d}/{n}")))
        .filter_map(|p| CString::new(p).ok())
        .collect()
}

/// The squashfuse process serving the image, if one was started.
static HELPER: AtomicI32 = AtomicI32::new(0);
/// The squashfuse binary, opened before the user namespace exists (inside
/// it, root's files and any other user's all show as the overflow uid, so
/// trust could not be told there).
static HELPER_FILE: Mutex<Option<(CString, OwnedFd)>> = Mutex::new(None);

/// The first squashfuse in [`helpers`] that the starter trusts as it trusts
/// its config: it serves the caller's container, so it and every directory
/// above it must be root's (or, for a starter without the setuid bit, the
/// caller's) and writable by no one else.
fn find_helper(caller: &Caller) -> Option<(CString, OwnedFd)> {
    helpers().into_iter().find_map(|p| {
        let fd = crate::config::open_trusted(p.to_str().ok()?, caller.trusted_user).ok()?;
        let st = sys::fstat(fd.as_fd()).ok()?;
        (st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_mode & 0o111 != 0).then_some((p, fd))
    })
}

/// Make a user namespace mapping the caller to themselves, then a private
/// mount namespace in it. Called with no privileges at all.
pub fn enter(caller: &mut Caller) -> Result<()> {
    *HELPER_FILE.lock().unwrap_or_else(|e| e.into_inner()) = find_helper(caller);
    // The kernel lets a process write its own maps only while it is
    // dumpable; it holds nothing of anyone else's.
    sys::set_dumpable().ctx(|| "set dumpable".into())?;
    sys::unshare(libc::CLONE_NEWUSER).map_err(unavailable)?;
    let (u, g) = (caller.uid, caller.gid);
    write_proc(c"/proc/self/uid_map", format!("{u} {u} 1\n").as_bytes())?;
    write_proc(c"/proc/self/setgroups", b"deny")?;
    write_proc(c"/proc/self/gid_map", format!("{g} {g} 1\n").as_bytes())?;
    sys::unshare(libc::CLONE_NEWNS).ctx(|| "unshare the mount namespace".into())?;
    sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .ctx(|| "make / private".into())?;
    caller.userns = true;
    Ok(())
}

fn write_proc(path: &CStr, data: &[u8]) -> Result<()> {
    let what = || format!("write {}", path.to_string_lossy());
    let fd = sys::open(path, libc::O_WRONLY).ctx(what)?;
    std::fs::File::from(fd).write_all(data).ctx(what)
}

/// Why no user namespace could be made, naming the setting that forbids it.
fn unavailable(e: std::io::Error) -> Error {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    let settings = [
        ("/proc/sys/user/max_user_namespaces", "user.max_user_namespaces", "0"),
        ("/proc/sys/kernel/unprivileged_userns_clone", "kernel.unprivileged_userns_clone", "0"),
        (
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "kernel.apparmor_restrict_unprivileged_userns",
            "1",
        ),
    ];
    for (file, name, off) in settings {
        if read(file).as_deref() == Some(off) {
            return Error::new(format!(
                "user namespaces are disabled on this host (sysctl {name} = {off}); \
                 ask the administrator for the setuid starter or to enable them"
            ));
        }
    }
    if e.raw_os_error() == Some(libc::ENOSPC) {
        return Error::new(
            "no more user namespaces may be made (the limit is sysctl user.max_user_namespaces)",
        );
    }
    Error::io("create a user namespace", e)
}

/// Mount a SIF partition or squashfs file at `at` through squashfuse. The
/// starter mounts the FUSE filesystem itself (it may, in its namespace) and
/// hands the helper the connection and the image as open fds.
pub fn attach_squashfuse(img: &Image, at: &CStr, caller: &Caller) -> Result<()> {
    let (helper_path, helper) =
        HELPER_FILE.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or_else(|| {
            Error::new(
                "squashfuse is not installed (install the squashfuse package): in user \
                 namespace mode SIF and squashfs images need it, or run with --unsquash \
                 (husk looks in /usr/bin, /usr/local/bin and its prefix's bin, at files \
                 that only root can change)",
            )
        })?;
    let fuse = sys::open(c"/dev/fuse", libc::O_RDWR).map_err(|e| {
        Error::new(format!(
            "open /dev/fuse: {} (in user namespace mode SIF and squashfs images need FUSE; \
             or run with --unsquash)",
            crate::error::describe(&e)
        ))
    })?;
    let opts = format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions",
        fuse.as_raw_fd(),
        caller.uid,
        caller.gid
    );
    let opts = CString::new(opts).map_err(|_| Error::new("fuse options"))?;
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    sys::mount(Some(c"squashfuse"), at, Some(c"fuse.squashfuse"), flags, Some(&opts))
        .ctx(|| "mount FUSE for the image".into())?;
    let argv: Vec<CString> = [
        &b"squashfuse"[..],
        b"-f",
        b"-o",
        format!("offset={}", img.offset).as_bytes(),
        b"/proc/self/fd/4",
        b"/dev/fd/3",
    ]
    .iter()
    .map(|a| CString::new(*a).map_err(|_| Error::new("helper argument")))
    .collect::<Result<_>>()?;
    let parent = sys::getpid();
    let pid = sys::fork().ctx(|| "fork squashfuse".into())?;
    if pid == 0 {
        let e = start_helper((&helper_path, helper), &argv, parent, &fuse, img);
        let _ = writeln!(std::io::stderr(), "husk: start squashfuse: {e}");
        sys::exit(127);
    }
    drop(helper);
    HELPER.store(pid, Ordering::Relaxed);
    // The helper alone holds the connection now: should it end, every
    // request fails rather than waits.
    drop(fuse);
    // The first request waits until squashfuse has read the image.
    let root = sys::open(at, libc::O_PATH | libc::O_DIRECTORY).ctx(|| "open FUSE root".into());
    if root.and_then(|r| sys::fstat(r.as_fd()).ctx(|| "stat FUSE root".into())).is_err() {
        finish(0);
        return Err(Error::new(format!(
            "image {}: squashfuse could not read it (a damaged or truncated squashfs?)",
            show(&img_path(img))
        )));
    }
    Ok(())
}

fn img_path(img: &Image) -> Vec<u8> {
    sys::fd_path(img.fd.as_fd()).unwrap_or_else(|_| b"?".to_vec())
}

/// In the forked child: fds 0-2, the FUSE connection as 3 and the image as
/// 4, nothing else; tied to the starter; out of the terminal's process
/// group (a ^C is for the container, not for what serves its files); then
/// exec. Returns only on failure.
fn start_helper(
    (path, helper): (&CStr, OwnedFd),
    argv: &[CString],
    parent: libc::pid_t,
    fuse: &std::os::fd::OwnedFd,
    img: &Image,
) -> std::io::Error {
    let run = || -> std::io::Result<std::io::Error> {
        sys::set_parent_death_signal(libc::SIGKILL)?;
        if sys::getppid() != parent {
            return Ok(std::io::Error::other("the starter ended"));
        }
        sys::setsid()?;
        // Its name (for ps and the like) still leads to the very file
        // checked: every directory on the way is root's, or the caller's.
        let now = sys::open(path, libc::O_PATH).and_then(|fd| sys::fstat(fd.as_fd()))?;
        let then = sys::fstat(helper.as_fd())?;
        if (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino) {
            return Ok(std::io::Error::other("squashfuse changed"));
        }
        drop(helper);
        let f = sys::dup_above(fuse.as_fd(), 10)?;
        let i = sys::dup_above(img.fd.as_fd(), 10)?;
        sys::dup_inheritable(f, 3)?;
        sys::dup_inheritable(i, 4)?;
        // Its own words would make a second line: husk says what failed.
        let null = sys::open(c"/dev/null", libc::O_RDWR)?;
        for n in 0..3 {
            sys::dup_inheritable(null.as_raw_fd(), n)?;
        }
        sys::close_from(5)?;
        sys::unblock_all_signals()?;
        Ok(sys::execve(path, argv, &[]))
    };
    run().unwrap_or_else(|e| e)
}

pub fn helper_running() -> bool {
    HELPER.load(Ordering::Relaxed) > 0
}

/// End the helper, if any, and wait for it: its FUSE mount is gone with the
/// namespace. Passes `code` through, for the starter's exit.
pub fn finish(code: i32) -> i32 {
    let pid = HELPER.swap(0, Ordering::Relaxed);
    if pid > 0 {
        sys::kill(pid, libc::SIGKILL);
        let _ = sys::wait_for(pid);
    }
    code
}
