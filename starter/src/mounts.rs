//! Phase 5: a private mount namespace, the image, the container's mounts and
//! `pivot_root`. Every mount target is resolved component by component from
//! the container root without following symlinks, and every mount is made
//! on an fd, never on a path the caller could change.

use crate::config::Config;
use crate::entry::{as_caller, Caller};
use crate::error::{show, Context, Error, Result};
use crate::identity;
use crate::objects::{Image, Objects};
use crate::sys;
use husk_protocol::{ImageKind, Request};
use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// Where the starter builds the container inside its own mount namespace: a
/// fresh tmpfs mounted over the host's /tmp (whose fd was opened earlier).
const STAGE: &CStr = c"/tmp";
const LOWER: &CStr = c"/tmp/lower";
const ROOT: &CStr = c"/tmp/root";
const PROBE: &CStr = c"/tmp/probe";
const SYSFS: &CStr = c"/tmp/sys";
const PROCFS: &CStr = c"/tmp/t-proc";
/// Overlay metadata in the image (which a directory image's owner may craft
/// through a filesystem they control) is never followed.
const OVERLAY_OPTS: &CStr =
    c"lowerdir=/tmp/lower,upperdir=/tmp/upper,workdir=/tmp/work,redirect_dir=nofollow,metacopy=off,index=off";
/// The same in a user namespace, where overlayfs keeps its attributes in
/// `user.` extended attributes (it may not write `trusted.` ones, and says
/// so in the kernel log at every mount otherwise).
const OVERLAY_OPTS_USERNS: &CStr =
    c"lowerdir=/tmp/lower,upperdir=/tmp/upper,workdir=/tmp/work,redirect_dir=nofollow,metacopy=off,index=off,userxattr";

const MAX_IDENTITY_FILE: u64 = 1 << 20;

/// A detached copy of a host mount tree, cloned while still in the host's
/// namespace (a clone must be made there), with its flags already set.
struct Detached {
    tree: OwnedFd,
    dst: Vec<u8>,
    is_dir: bool,
}

fn detach(
    fd: BorrowedFd<'_>,
    dst: &[u8],
    is_dir: bool,
    recursive: bool,
    attrs: u64,
) -> Result<Detached> {
    let what = || format!("bind {}", show(dst));
    let tree = sys::clone_tree(fd, recursive).ctx(what)?;
    sys::set_mount_attrs(tree.as_fd(), attrs, recursive).ctx(what)?;
    Ok(Detached { tree, dst: dst.to_vec(), is_dir })
}

const PROC_SYS: u64 = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC;

/// The host's /proc, /sys and /dev, where the container shows them:
/// without /proc when the container has its own PID namespace, without
/// /sys when the container has its own network namespace (sysfs
/// shows the network of whoever mounted it) and without /dev when it has a
/// /dev of its own; those are made in the namespace ([`made_here`]).
fn detach_system(
    objs: &Objects,
    own_pid: bool,
    own_net: bool,
    own_dev: bool,
) -> Result<Vec<Detached>> {
    let mut v = Vec::new();
    if let Some(p) = objs.proc_.as_ref().filter(|_| !own_pid) {
        v.push(detach(p.as_fd(), b"/proc", true, true, PROC_SYS)?);
    }
    if let Some(s) = objs.sys_.as_ref().filter(|_| !own_net) {
        v.push(detach(s.as_fd(), b"/sys", true, true, PROC_SYS)?);
    }
    // Devices must work under /dev; setuid files must not.
    if let Some(d) = objs.dev.as_ref().filter(|_| !own_dev) {
        v.push(detach(d.as_fd(), b"/dev", true, true, sys::MOUNT_ATTR_NOSUID)?);
    }
    Ok(v)
}

/// Every other host object the container shows, in mount order.
fn detach_rest(objs: &Objects) -> Result<Vec<Detached>> {
    let mut v = Vec::new();
    let sources = objs
        .etc_files
        .iter()
        .chain(&objs.home)
        .chain(&objs.tmp)
        .chain(&objs.site_binds)
        .chain(&objs.binds);
    for s in sources {
        let mut attrs = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
        if s.readonly {
            attrs |= sys::MOUNT_ATTR_RDONLY;
        }
        v.push(detach(s.fd.as_fd(), &s.dst, s.is_dir, true, attrs)?);
    }
    Ok(v)
}

pub fn build(req: &Request, caller: &Caller, objs: Objects, conf: &Config) -> Result<()> {
    let image_tree = match objs.image.kind {
        ImageKind::Dir => {
            let attrs = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
            let fd = objs.image.fd.as_fd();
            // The overlay's lower layer never crosses mounts, so it would show
            // what a mount inside the directory hides: such a directory is
            // refused, which the recursive copy lets us find out.
            let probe = sys::clone_tree(fd, true).ctx(|| "clone image directory".into())?;
            // Private like every other detached tree, though it lives only
            // for a moment in the private staging area.
            sys::set_mount_attrs(probe.as_fd(), 0, true).ctx(|| "clone image directory".into())?;
            // In a user namespace the kernel refuses the copy without the
            // mounts inside (which they would reveal) at once.
            let tree = match sys::clone_tree(fd, false) {
                Err(e) if caller.userns && e.raw_os_error() == Some(libc::EINVAL) => {
                    return Err(inner_mounts(&req.image.path))
                }
                r => r.ctx(|| "bind /".into())?,
            };
            sys::set_mount_attrs(tree.as_fd(), attrs, false).ctx(|| "bind /".into())?;
            Some((tree, probe))
        }
        _ => None,
    };
    let ns = &req.namespaces;
    let own_dev = req.minimal_dev || conf.minimal_dev;
    let mut binds = detach_system(&objs, ns.pid, ns.net, own_dev)?;
    let rest = detach_rest(&objs)?;
    // In user-namespace mode the mount namespace exists already (made with
    // the user namespace, so that the trees above could be cloned in it).
    let mut flags = if caller.userns { 0 } else { libc::CLONE_NEWNS };
    let asked = [
        (ns.pid, libc::CLONE_NEWPID),
        (ns.ipc, libc::CLONE_NEWIPC),
        (ns.net, libc::CLONE_NEWNET),
        (ns.uts, libc::CLONE_NEWUTS),
    ];
    for (on, flag) in asked {
        if on {
            flags |= flag;
        }
    }
    // In user-namespace mode a new PID namespace comes after the image,
    // whose squashfuse must not be born into it (as its PID 1); the others
    // before it, so that squashfuse, which the container could reach,
    // lives in them too.
    let (now, later) = if caller.userns {
        (flags & !libc::CLONE_NEWPID, flags & libc::CLONE_NEWPID)
    } else {
        (flags, 0)
    };
    if now != 0 {
        sys::unshare(now).ctx(|| "unshare namespaces".into())?;
    }
    if !caller.userns {
        sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
            .ctx(|| "make / private".into())?;
    }
    sys::umask(0);
    stage()?;
    match image_tree {
        Some((t, probe)) => {
            refuse_inner_mounts(probe, &req.image.path)?;
            let lower =
                sys::open(LOWER, libc::O_PATH | libc::O_DIRECTORY).ctx(|| "open lower".into())?;
            sys::move_mount_to(t.as_fd(), lower.as_fd()).ctx(|| "mount image directory".into())?;
        }
        None if caller.userns => crate::userns::attach_squashfuse(&objs.image, LOWER, caller)?,
        None => attach_squashfs(&objs.image, conf)?,
    }
    if later != 0 {
        sys::unshare(later).ctx(|| "unshare the PID namespace".into())?;
    }
    if ns.pid {
        // From here on, the namespace's PID 1 builds the container. (Not
        // before the probe above: a copy of its fd in the starter would
        // make it look busy.)
        crate::pidns::enter(caller, req.no_init)?;
    }
    if let Some(name) = &req.hostname {
        sys::sethostname(name).ctx(|| "set the host name".into())?;
    }
    if ns.net {
        sys::loopback_up().ctx(|| "bring up lo in the new network namespace".into())?;
    }
    let (made, own_devs) = made_here(req, &objs, caller, own_dev)?;
    binds.extend(made);
    binds.extend(rest);
    // Shallowest first, so that nothing is mounted over what lies inside
    // it; among equals, in the order above (the system mounts first).
    binds.sort_by_key(|d| d.dst.split(|&b| b == b'/').filter(|c| !c.is_empty()).count());
    sys::mount(
        Some(c"overlay"),
        ROOT,
        Some(c"overlay"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(if caller.userns { OVERLAY_OPTS_USERNS } else { OVERLAY_OPTS }),
    )
    .ctx(|| "mount container root overlay".into())?;
    let root = sys::open(ROOT, libc::O_PATH | libc::O_DIRECTORY).ctx(|| "open root".into())?;
    let tree = Tree {
        overlay_dev: sys::fstat(root.as_fd()).ctx(|| "stat root".into())?.st_dev,
        own_devs: RefCell::new(own_devs),
        root: RefCell::new(root),
        caller,
        mirrors: RefCell::new(Vec::new()),
        writable: req.writable_tmpfs,
    };

    write_identity(&tree, req, caller)?;

    for d in &binds {
        let target = tree.target(&d.dst, d.is_dir)?;
        sys::move_mount_to(d.tree.as_fd(), target.as_fd())
            .ctx(|| format!("bind {}", show(&d.dst)))?;
    }

    if req.writable_tmpfs && caller.userns {
        // As below, but a directory whose owner the namespace does not map
        // cannot be copied up: the top is a mirror the caller owns.
        let root = tree.root.borrow().try_clone().ctx(|| "container root".into())?;
        tree.mirror(root.as_fd(), None, None, "/")?;
    } else if req.writable_tmpfs {
        // Writes land in the staging tmpfs (64 MiB) and vanish with it. The
        // caller owns the container's root directory, so that entries can be
        // made at the top as in Apptainer; deeper directories keep the
        // image's owners. Only now: the starter writes nothing more there.
        // (Through the overlay, which keeps its own copy of the attributes.)
        let root = sys::open(ROOT, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .ctx(|| "open container root".into())?;
        sys::fchown(root.as_fd(), caller.uid, caller.gid).ctx(|| "chown container root".into())?;
    } else {
        let ro = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
        sys::set_mount_attrs(tree.root.borrow().as_fd(), ro, false)
            .ctx(|| "make root read-only".into())?;
        for m in tree.mirrors.borrow().iter() {
            sys::set_mount_attrs(m.as_fd(), ro, false).ctx(|| "make root read-only".into())?;
        }
    }
    enter(ROOT)
}

/// Attach the recursive copy of a directory image and unmount it again: the
/// kernel refuses (EBUSY) exactly when mounts lie inside it.
fn refuse_inner_mounts(probe: OwnedFd, image: &[u8]) -> Result<()> {
    let at = sys::open(PROBE, libc::O_PATH | libc::O_DIRECTORY).ctx(|| "open probe".into())?;
    sys::move_mount_to(probe.as_fd(), at.as_fd()).ctx(|| "attach image probe".into())?;
    drop((probe, at));
    match sys::umount(PROBE) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(inner_mounts(image)),
        Err(e) => Err(Error::io("detach image probe", e)),
    }
}

fn inner_mounts(image: &[u8]) -> Error {
    Error::new(format!(
        "image {}: the directory has mount points inside it, which could hide files from you; \
         husk does not run such a directory",
        show(image)
    ))
}

/// A private tmpfs for the overlay's upper and work directories.
fn stage() -> Result<()> {
    sys::mount(
        Some(c"husk"),
        STAGE,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(c"mode=0700,size=64m"),
    )
    .ctx(|| "mount staging tmpfs".into())?;
    let stage = sys::open(STAGE, libc::O_PATH | libc::O_DIRECTORY).ctx(|| "open staging".into())?;
    let dirs = [
        (c"lower", 0o755),
        (c"upper", 0o755),
        (c"work", 0o700),
        (c"root", 0o755),
        (c"probe", 0o700),
        (c"sys", 0o755),
        (c"t-dev", 0o755),
        (c"t-proc", 0o755),
        (c"t-tmp", 0o755),
        (c"t-vartmp", 0o755),
        (c"t-home", 0o755),
        (c"t-shm", 0o755),
    ];
    for (name, mode) in dirs {
        sys::mkdirat(stage.as_fd(), name, mode).ctx(|| format!("mkdir staging {name:?}"))?;
    }
    Ok(())
}

/// A new filesystem mounted at `at` in the staging area (`source` names it
/// in the mount table) and detached for `dst` with the same restrictions;
/// and its device number.
fn fresh_fs(
    (source, fstype): (&CStr, &CStr),
    at: &CStr,
    dst: &[u8],
    flags: libc::c_ulong,
    opts: Option<&CStr>,
) -> Result<(Detached, libc::dev_t)> {
    let what = || format!("mount {} for the container", show(dst));
    sys::mount(Some(source), at, Some(fstype), flags, opts).ctx(what)?;
    let fd = sys::open(at, libc::O_PATH | libc::O_DIRECTORY).ctx(what)?;
    let dev = sys::fstat(fd.as_fd()).ctx(what)?.st_dev;
    let mut attrs = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    if flags & libc::MS_NOEXEC != 0 {
        attrs |= sys::MOUNT_ATTR_NOEXEC;
    }
    Ok((detach(fd.as_fd(), dst, true, false, attrs)?, dev))
}

/// A tmpfs of the starter's for `dst`, and its device number.
fn fresh_tmpfs(at: &CStr, dst: &[u8], opts: &CStr) -> Result<(Detached, libc::dev_t)> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    fresh_fs((c"husk", c"tmpfs"), at, dst, flags, Some(opts))
}

/// A new instance of the kernel filesystem `fstype` (proc, sysfs) for `dst`.
fn fresh_kernel_fs(fstype: &CStr, at: &CStr, dst: &[u8]) -> Result<Detached> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    Ok(fresh_fs((fstype, fstype), at, dst, flags, None)?.0)
}

/// What is made in the container's own namespaces rather than taken from
/// the host: procfs for a new PID namespace, sysfs for a new network
/// namespace, a minimal /dev, and the
/// empty /tmp, /var/tmp and home of `--contain`.
fn made_here(
    req: &Request,
    objs: &Objects,
    caller: &Caller,
    own_dev: bool,
) -> Result<(Vec<Detached>, Vec<libc::dev_t>)> {
    let mut v = Vec::new();
    // procfs and sysfs show the PID and network namespaces of whoever
    // mounts them: PID 1 here, in the container's network namespace.
    if req.namespaces.pid && objs.proc_.is_some() {
        v.push(fresh_kernel_fs(c"proc", PROCFS, b"/proc")?);
    }
    if req.namespaces.net && objs.sys_.is_some() {
        v.push(fresh_kernel_fs(c"sysfs", SYSFS, b"/sys")?);
    }
    if own_dev && objs.dev.is_some() {
        v.push(minimal_dev(caller.userns)?);
    } else if req.namespaces.ipc && objs.dev.is_some() {
        // POSIX shared memory lives in /dev/shm: an IPC namespace of its
        // own gets a /dev/shm of its own over the host's.
        let (shm, _) = fresh_tmpfs(c"/tmp/t-shm", b"/dev/shm", c"mode=1777")?;
        v.push(shm);
    }
    let mut devs = Vec::new();
    let mut tmpfs = |at: &CStr, dst: &[u8], opts: &CStr| -> Result<()> {
        let (d, dev) = fresh_tmpfs(at, dst, opts)?;
        v.push(d);
        devs.push(dev);
        Ok(())
    };
    if req.fresh_tmp {
        tmpfs(c"/tmp/t-tmp", b"/tmp", c"mode=1777")?;
        tmpfs(c"/tmp/t-vartmp", b"/var/tmp", c"mode=1777")?;
    }
    if let Some(home) = &req.fresh_home {
        let opts = CString::new(format!("mode=0700,uid={},gid={}", caller.uid, caller.gid))
            .map_err(|_| Error::new("home tmpfs options"))?;
        tmpfs(c"/tmp/t-home", home, &opts)?;
    }
    Ok((v, devs))
}

/// A /dev of the container's own: the harmless character devices, a new
/// devpts instance (with ptmx), /dev/shm, and the usual links into /proc.
/// The tmpfs holding them is not nodev (the devices must open) but holds
/// nothing else, and the caller can add nothing to it. In a user namespace
/// no device node can be made (nor opened on a filesystem mounted there):
/// the host's nodes are bound instead.
fn minimal_dev(userns: bool) -> Result<Detached> {
    const DEV: &CStr = c"/tmp/t-dev";
    let what = || "minimal /dev".to_string();
    let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    sys::mount(Some(c"husk-dev"), DEV, Some(c"tmpfs"), flags, Some(c"mode=0755,size=1m"))
        .ctx(what)?;
    let dir = sys::open(DEV, libc::O_PATH | libc::O_DIRECTORY).ctx(what)?;
    let nodes = [
        (c"null", 1, 3),
        (c"zero", 1, 5),
        (c"full", 1, 7),
        (c"random", 1, 8),
        (c"urandom", 1, 9),
        (c"tty", 5, 0),
    ];
    for (name, major, minor) in nodes {
        if !userns {
            sys::mknodat(dir.as_fd(), name, libc::S_IFCHR | 0o666, major, minor).ctx(what)?;
            continue;
        }
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        drop(sys::openat(Some(dir.as_fd()), name, flags, 0o666).ctx(what)?);
        let host = CString::new([&b"/dev/"[..], name.to_bytes()].concat())
            .map_err(|_| Error::new("device path"))?;
        let at = CString::new([&b"/tmp/t-dev/"[..], name.to_bytes()].concat())
            .map_err(|_| Error::new("device path"))?;
        let node = sys::open(&host, libc::O_PATH | libc::O_NOFOLLOW).ctx(what)?;
        let st = sys::fstat(node.as_fd()).ctx(what)?;
        if kind(&st) != libc::S_IFCHR || st.st_rdev != libc::makedev(major, minor) {
            return Err(Error::new(format!(
                "host {} is not the expected device",
                show(host.as_bytes())
            )));
        }
        let tree = sys::clone_tree(node.as_fd(), false).ctx(what)?;
        let target = sys::open(&at, libc::O_PATH | libc::O_NOFOLLOW).ctx(what)?;
        sys::move_mount_to(tree.as_fd(), target.as_fd()).ctx(what)?;
    }
    let links = [
        (c"ptmx", c"pts/ptmx"),
        (c"fd", c"/proc/self/fd"),
        (c"stdin", c"/proc/self/fd/0"),
        (c"stdout", c"/proc/self/fd/1"),
        (c"stderr", c"/proc/self/fd/2"),
    ];
    for (name, target) in links {
        sys::symlinkat(target, dir.as_fd(), name).ctx(what)?;
    }
    sys::mkdirat(dir.as_fd(), c"pts", 0o755).ctx(what)?;
    sys::mkdirat(dir.as_fd(), c"shm", 0o1777).ctx(what)?;
    let pts_opts = c"newinstance,ptmxmode=0666,mode=0620";
    sys::mount(Some(c"devpts"), c"/tmp/t-dev/pts", Some(c"devpts"), flags, Some(pts_opts))
        .ctx(|| "mount devpts".into())?;
    sys::mount(
        Some(c"husk-shm"),
        c"/tmp/t-dev/shm",
        Some(c"tmpfs"),
        flags | libc::MS_NODEV,
        Some(c"mode=1777"),
    )
    .ctx(|| "mount /dev/shm".into())?;
    let d =
        detach(dir.as_fd(), b"/dev", true, true, sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC)?;
    // Nothing may be added to it (in a user namespace the caller owns it);
    // its devpts and /dev/shm stay writable.
    sys::set_mount_attrs(d.tree.as_fd(), sys::MOUNT_ATTR_RDONLY, false).ctx(what)?;
    Ok(d)
}

/// Mount a squashfs image through a loop device, read-only, nosuid, nodev, at `LOWER`.
fn attach_squashfs(img: &Image, conf: &Config) -> Result<()> {
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    let (_loop_fd, dev) = match conf.shared_loop_devices.then(|| shared_loop(img)).flatten() {
        Some(found) => found,
        None => attach_loop(img, conf.max_loop_devices)?,
    };
    sys::mount(Some(&dev), LOWER, Some(c"squashfs"), flags, None)
        .ctx(|| "mount squashfs image".into())
    // The loop device's fd closes here; with autoclear the device goes away
    // as soon as the mount does (when the last process in the namespace exits).
}

/// A loop device that a running container attached to the same extent of
/// the very file the caller opened (same `st_dev` and `st_ino`, offset and
/// size), read-only and auto-clearing. Mounting it reuses that container's
/// squashfs superblock, and so its page cache: the many ranks of one job
/// start without decompressing the image again each. The device is open
/// while it is checked, so it cannot be detached and rebound in between.
/// Any doubt (an unreadable listing, a device gone) means "none".
fn shared_loop(img: &Image) -> Option<(OwnedFd, CString)> {
    let st = sys::fstat(img.fd.as_fd()).ok()?;
    for entry in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = entry.file_name();
        let Some(n) = name.to_str().and_then(|s| s.strip_prefix("loop")) else { continue };
        if n.parse::<u32>().is_err() || !entry.path().join("loop").exists() {
            continue; // not a loop device, or not bound
        }
        let Ok(dev) = CString::new(format!("/dev/loop{n}")) else { continue };
        let Ok(fd) = sys::open(&dev, libc::O_RDONLY) else { continue };
        let Ok(s) = sys::loop_status(fd.as_fd()) else { continue };
        if s.read_only_autoclear
            && s.device == st.st_dev
            && s.inode == st.st_ino
            && s.offset == img.offset
            && s.size == img.size
        {
            return Some((fd, dev));
        }
    }
    None
}

/// How many loop devices, from the first free one up, a start tries before
/// it gives up.
const LOOP_CANDIDATES: u32 = 128;

fn attach_loop(img: &Image, max: u32) -> Result<(OwnedFd, CString)> {
    let control =
        sys::open(c"/dev/loop-control", libc::O_RDWR).ctx(|| "open /dev/loop-control".into())?;
    // The kernel names the lowest free device, to every concurrent start
    // alike, and a device it calls free may still be claimed by someone
    // else: on EBUSY walk upwards rather than ask again for the same one.
    let first = sys::loop_get_free(control.as_fd()).ctx(|| "find a free loop device".into())?;
    let mut last = None;
    let end = first.saturating_add(LOOP_CANDIDATES).min(max);
    for n in first..end {
        let dev = CString::new(format!("/dev/loop{n}")).map_err(|_| Error::new("loop path"))?;
        let fd = match open_loop(control.as_fd(), &dev, n) {
            Ok(fd) => fd,
            // Still being made by a concurrent start, or going: the next.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENXIO)) => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(Error::io(format!("open {}", dev.to_string_lossy()), e)),
        };
        match sys::loop_configure(fd.as_fd(), img.fd.as_fd(), img.offset, img.size) {
            Ok(()) => return Ok((fd, dev)),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = Some(e),
            Err(e) => return Err(Error::io("configure loop device", e)),
        }
    }
    if end == max {
        return Err(Error::new(format!(
            "no free loop device below {max}, the 'max loop devices' in {}",
            crate::config::CONFIG_PATH
        )));
    }
    Err(Error::io("configure loop device", last.unwrap_or_else(|| std::io::Error::other("busy"))))
}

/// Open loop device `n`, adding it if it does not exist. A device that
/// another start is adding may, for a moment, have no node yet (ENOENT) or
/// not be live yet (ENXIO): wait for it a little (up to 100 ms), as a fresh
/// machine, which has few devices, makes many starts add them at once.
fn open_loop(control: BorrowedFd<'_>, dev: &CStr, n: u32) -> std::io::Result<OwnedFd> {
    let mut added = false;
    let mut tries = 0;
    loop {
        match sys::open(dev, libc::O_RDONLY) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !added => {
                added = true;
                match sys::loop_add(control, n) {
                    Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
                    _ => {}
                }
            }
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENXIO)) && tries < 50 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            r => return r,
        }
    }
}

/// The container root and the device number of its overlay: directories on
/// that device may be changed by the starter; any other (a host bind) never.
struct Tree<'a> {
    root: RefCell<OwnedFd>,
    overlay_dev: libc::dev_t,
    /// The tmpfs the starter made (--contain's /tmp, /var/tmp and home, the
    /// mirrors): mount points may be made in them too.
    own_devs: RefCell<Vec<libc::dev_t>>,
    caller: &'a Caller,
    /// The mirrors made in user-namespace mode (see [`Tree::mirror`]).
    mirrors: RefCell<Vec<OwnedFd>>,
    /// `--writable-tmpfs`: what a mirror binds stays writable.
    writable: bool,
}

fn kind(st: &sys::Stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

impl Tree<'_> {
    /// Is `dir` in the overlay or a tmpfs of the starter's, not a host bind?
    fn on_overlay(&self, dir: BorrowedFd<'_>) -> Result<bool> {
        let dev = sys::fstat(dir).ctx(|| "stat mount target".into())?.st_dev;
        Ok(dev == self.overlay_dev || self.own_devs.borrow().contains(&dev))
    }

    /// In a user namespace the overlay cannot copy up a directory whose
    /// owner the namespace does not map (root, mostly), so nothing can be
    /// made in it: the kernel says EOVERFLOW. Cover such a directory `dir`
    /// with a mirror instead: a tmpfs holding a bind of each of its entries
    /// (a copy of each symlink), all but `skip`, mounted over it. New entries
    /// go into the mirror. `parent` holds `dir` under its name (`None`: `dir`
    /// is the root). Returns the mirror's root.
    fn mirror(
        &self,
        dir: BorrowedFd<'_>,
        parent: Option<(BorrowedFd<'_>, &CStr)>,
        skip: Option<&CStr>,
        p: &str,
    ) -> Result<OwnedFd> {
        let what = || format!("mount point {p}: mirror the image directory");
        let n = self.mirrors.borrow().len();
        let name = CString::new(format!("m{n}")).map_err(|_| Error::new("mirror name"))?;
        let at = CString::new(format!("/tmp/m{n}")).map_err(|_| Error::new("mirror name"))?;
        let stage = sys::open(STAGE, libc::O_PATH | libc::O_DIRECTORY).ctx(what)?;
        sys::mkdirat(stage.as_fd(), &name, 0o755).ctx(what)?;
        let st = sys::fstat(dir).ctx(what)?;
        let opts = CString::new(format!("mode={:o},size=64m", st.st_mode & 0o7777))
            .map_err(|_| Error::new("mirror options"))?;
        let flags = libc::MS_NOSUID | libc::MS_NODEV;
        sys::mount(Some(c"husk"), &at, Some(c"tmpfs"), flags, Some(&opts)).ctx(what)?;
        let m = sys::open(&at, libc::O_PATH | libc::O_DIRECTORY).ctx(what)?;
        let listing = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let entries = as_caller(self.caller, || {
            std::fs::read_dir(&listing)
                .and_then(|d| {
                    d.map(|e| e.map(|e| e.file_name())).collect::<std::io::Result<Vec<_>>>()
                })
                .ctx(what)
        })?;
        for entry in entries {
            let ename = CString::new(entry.as_bytes()).map_err(|_| Error::new("entry name"))?;
            if Some(ename.as_c_str()) == skip {
                continue;
            }
            let child =
                sys::openat(Some(dir), &ename, libc::O_PATH | libc::O_NOFOLLOW, 0).ctx(what)?;
            let k = kind(&sys::fstat(child.as_fd()).ctx(what)?);
            if k == libc::S_IFLNK {
                let target = std::fs::read_link(format!("{listing}/{}", entry.to_string_lossy()))
                    .ctx(what)?;
                let target = CString::new(target.into_os_string().into_vec())
                    .map_err(|_| Error::new("link target"))?;
                sys::symlinkat(&target, m.as_fd(), &ename).ctx(what)?;
                continue;
            }
            let spot = self.create(m.as_fd(), &ename, k == libc::S_IFDIR, p)?;
            let t = sys::clone_tree(child.as_fd(), k == libc::S_IFDIR).ctx(what)?;
            if !self.writable {
                // As the root they come from will be (what is mounted
                // inside them keeps its own flags).
                sys::set_mount_attrs(t.as_fd(), sys::MOUNT_ATTR_RDONLY, false).ctx(what)?;
            }
            sys::move_mount_to(t.as_fd(), spot.as_fd()).ctx(what)?;
        }
        let dev = sys::fstat(m.as_fd()).ctx(what)?.st_dev;
        let t = sys::clone_tree(m.as_fd(), true).ctx(what)?;
        // The tmpfs alone: what is bound in it keeps its own flags (a host
        // /dev its devices).
        sys::set_mount_attrs(t.as_fd(), sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV, false)
            .ctx(what)?;
        sys::move_mount_to(t.as_fd(), dir).ctx(what)?;
        self.own_devs.borrow_mut().push(dev);
        self.mirrors.borrow_mut().push(t);
        // The directory's name now leads to the mirror on top of it.
        let top = match parent {
            Some((pd, pname)) => sys::openat(Some(pd), pname, libc::O_PATH | libc::O_DIRECTORY, 0),
            None => sys::open(ROOT, libc::O_PATH | libc::O_DIRECTORY),
        }
        .ctx(what)?;
        if parent.is_none() {
            *self.root.borrow_mut() = top.try_clone().ctx(what)?;
        }
        Ok(top)
    }

    /// Open `path` inside the container as a mount target of the wanted
    /// kind, creating missing components in the overlay. A symlink or a
    /// non-directory in the way is replaced when it lies in the overlay, and
    /// refused when it lies in a host bind.
    fn target(&self, path: &[u8], want_dir: bool) -> Result<OwnedFd> {
        let p = show(path);
        let comps: Vec<&[u8]> = path.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
        let mut cur = sys::openat(
            Some(self.root.borrow().as_fd()),
            c".",
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .ctx(|| "open root".into())?;
        // The directories above `cur`, each with the name that leads on.
        let mut trail: Vec<(OwnedFd, CString)> = Vec::new();
        for (i, comp) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            let dir_here = !last || want_dir;
            let name =
                CString::new(*comp).map_err(|_| Error::new(format!("mount target {p}: NUL")))?;
            // Look as the caller, in host binds and in the image alike (a
            // directory image may be a host tree): root's view would tell
            // what exists in directories the caller may not search.
            let on_overlay = self.on_overlay(cur.as_fd())?;
            let look = || sys::openat(Some(cur.as_fd()), &name, libc::O_PATH | libc::O_NOFOLLOW, 0);
            let existing = match as_caller(self.caller, || Ok(look()))? {
                Ok(fd) => Some(fd),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                    return Err(Error::new(format!(
                        "mount target {p}: not found or not accessible"
                    )))
                }
                Err(e) => return Err(Error::io(format!("mount target {p}"), e)),
            };
            let next = match existing {
                Some(fd) => {
                    let k = kind(&sys::fstat(fd.as_fd()).ctx(|| format!("mount target {p}"))?);
                    let fits = if dir_here {
                        k == libc::S_IFDIR
                    } else {
                        k != libc::S_IFDIR && k != libc::S_IFLNK
                    };
                    if fits {
                        fd
                    } else if k == libc::S_IFDIR {
                        return Err(Error::new(format!(
                            "mount target {p}: is a directory, the source is a file"
                        )));
                    } else if last && k == libc::S_IFREG {
                        return Err(Error::new(format!(
                            "mount target {p}: is a file, the source is a directory"
                        )));
                    } else if on_overlay {
                        match sys::unlinkat(cur.as_fd(), &name, 0) {
                            Err(e) if self.unmapped(&e) => {
                                cur = self.mirror_at(cur, &trail, Some(&name), &p)?;
                            }
                            r => r.ctx(|| format!("replace mount target {p}"))?,
                        }
                        self.create(cur.as_fd(), &name, dir_here, &p)?
                    } else {
                        return Err(Error::new(format!(
                            "mount target {p}: a symlink or file inside a bind is in the way"
                        )));
                    }
                }
                None if on_overlay => match make(cur.as_fd(), &name, dir_here) {
                    Err(e) if self.unmapped(&e) => {
                        cur = self.mirror_at(cur, &trail, None, &p)?;
                        self.create(cur.as_fd(), &name, dir_here, &p)?
                    }
                    r => r.ctx(|| format!("create mount point {p}"))?,
                },
                None => {
                    return Err(Error::new(format!(
                    "mount target {p}: not found or not accessible inside the bind that holds it"
                )))
                }
            };
            trail.push((std::mem::replace(&mut cur, next), name));
        }
        Ok(cur)
    }

    /// Did the kernel refuse to copy up a directory of unmapped owner?
    fn unmapped(&self, e: &std::io::Error) -> bool {
        // (EACCES when the directory's unmapped owner alone may write it;
        // EROFS in a read-only bind of an earlier mirror.)
        self.caller.userns
            && matches!(e.raw_os_error(), Some(libc::EOVERFLOW | libc::EACCES | libc::EROFS))
    }

    /// [`Tree::mirror`] the directory `cur`, reached through `trail`.
    fn mirror_at(
        &self,
        cur: OwnedFd,
        trail: &[(OwnedFd, CString)],
        skip: Option<&CStr>,
        p: &str,
    ) -> Result<OwnedFd> {
        let parent = trail.last().map(|(fd, name)| (fd.as_fd(), name.as_c_str()));
        self.mirror(cur.as_fd(), parent, skip, p)
    }

    fn create(&self, dir: BorrowedFd<'_>, name: &CStr, is_dir: bool, p: &str) -> Result<OwnedFd> {
        make(dir, name, is_dir).ctx(|| format!("create mount point {p}"))
    }
}

/// Make an empty directory or file `name` in `dir` as a mount point; its fd.
fn make(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) -> std::io::Result<OwnedFd> {
    if is_dir {
        sys::mkdirat(dir, name, 0o755)?;
    } else {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        sys::openat(Some(dir), name, flags, 0o644)?;
    }
    sys::openat(Some(dir), name, libc::O_PATH | libc::O_NOFOLLOW, 0)
}

/// Read a small regular file of the image as the caller (so that a link to a
/// file the caller may not read yields nothing). Missing means empty.
fn read_image_file(dir: BorrowedFd<'_>, name: &CStr) -> Result<Vec<u8>> {
    let what = || format!("image /etc/{}", name.to_string_lossy());
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    let fd = match sys::openat(Some(dir), name, flags, 0) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ELOOP | libc::EACCES)) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(Error::io(what(), e)),
    };
    if kind(&sys::fstat(fd.as_fd()).ctx(what)?) != libc::S_IFREG {
        return Ok(Vec::new());
    }
    let mut data = Vec::new();
    std::fs::File::from(fd).take(MAX_IDENTITY_FILE).read_to_end(&mut data).ctx(what)?;
    Ok(data)
}

fn write_file(dir: BorrowedFd<'_>, name: &CStr, data: &[u8]) -> Result<()> {
    let what = || format!("write /etc/{}", name.to_string_lossy());
    match sys::unlinkat(dir, name, 0) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(Error::io(what(), e)),
        _ => {}
    }
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    let fd = sys::openat(Some(dir), name, flags, 0o644).ctx(what)?;
    std::fs::File::from(fd).write_all(data).ctx(what)
}

/// Generated `/etc/passwd` and `/etc/group`, written into the overlay.
fn write_identity(tree: &Tree, req: &Request, caller: &Caller) -> Result<()> {
    let etc = tree.target(b"/etc", true)?;
    let (pw, gr) = as_caller(caller, || {
        Ok((read_image_file(etc.as_fd(), c"passwd")?, read_image_file(etc.as_fd(), c"group")?))
    })?;
    let home = req.home_dir().unwrap_or(b"/");
    let user = identity::User {
        name: &req.identity.user_name,
        uid: caller.uid,
        gid: caller.gid,
        gecos: &req.identity.gecos,
        home,
    };
    // Only groups the kernel says the caller has; names from the host.
    let mut gids = vec![caller.gid];
    gids.extend(caller.groups.iter().filter(|&&g| g != caller.gid));
    let groups: Vec<(u32, &[u8])> = gids
        .iter()
        .filter_map(|&g| {
            let name = req.identity.groups.iter().find(|n| n.gid == g)?;
            Some((g, &name.name[..]))
        })
        .collect();
    let passwd = identity::passwd(&pw, &user);
    let group = identity::group(&gr, &req.identity.user_name, &groups);
    if !caller.userns {
        write_file(etc.as_fd(), c"passwd", &passwd)?;
        return write_file(etc.as_fd(), c"group", &group);
    }
    // In a user namespace /etc usually cannot be written (see
    // `Tree::mirror`): the files are made in the staging area and bound.
    drop(etc);
    let stage = sys::open(STAGE, libc::O_PATH | libc::O_DIRECTORY).ctx(|| "open staging".into())?;
    for (name, data, dst) in
        [(c"passwd", passwd, &b"/etc/passwd"[..]), (c"group", group, &b"/etc/group"[..])]
    {
        write_file(stage.as_fd(), name, &data)?;
        let f = sys::openat(Some(stage.as_fd()), name, libc::O_PATH | libc::O_NOFOLLOW, 0)
            .ctx(|| format!("open {}", show(dst)))?;
        let attrs = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
        let d = detach(f.as_fd(), dst, false, false, attrs)?;
        let target = tree.target(dst, false)?;
        sys::move_mount_to(d.tree.as_fd(), target.as_fd()).ctx(|| format!("bind {}", show(dst)))?;
    }
    Ok(())
}

/// Make `new_root` the root of this mount namespace and drop the old one.
fn enter(new_root: &CStr) -> Result<()> {
    sys::chdir(new_root).ctx(|| "chdir to container root".into())?;
    sys::pivot_root(c".", c".").ctx(|| "pivot_root".into())?;
    sys::umount_detach(c".").ctx(|| "detach old root".into())?;
    sys::chdir(c"/").ctx(|| "chdir /".into())
}
