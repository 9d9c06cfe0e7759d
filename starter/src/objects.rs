//! Phase 4: open every object the request names, as the caller, and keep the
//! fds. From here on the starter uses these fds, never the names again.

use crate::config::{self, Config};
use crate::entry::{as_caller, Caller};
use crate::error::{show, Context, Error, Result};
use crate::sys;
use husk_protocol::{Bind, ImageKind, Request};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

pub struct Image {
    pub fd: OwnedFd,
    pub kind: ImageKind,
    /// For file images: the squashfs extent inside the file.
    pub offset: u64,
    pub size: u64,
}

/// A host object to bind into the container at `dst`.
pub struct Source {
    pub fd: OwnedFd,
    pub dst: Vec<u8>,
    pub is_dir: bool,
    pub readonly: bool,
}

pub struct Objects {
    pub image: Image,
    /// Host /proc, /sys and /dev (recursive binds), unless the config
    /// leaves them out.
    pub proc_: Option<OwnedFd>,
    pub sys_: Option<OwnedFd>,
    pub dev: Option<OwnedFd>,
    /// Host files that give the container the host's network names and time.
    pub etc_files: Vec<Source>,
    pub home: Option<Source>,
    pub tmp: Vec<Source>,
    pub site_binds: Vec<Source>,
    pub binds: Vec<Source>,
}

fn cpath(what: &str, p: &[u8]) -> Result<CString> {
    CString::new(p).map_err(|_| Error::new(format!("{what}: path contains NUL")))
}

fn is_type(st: &sys::Stat, t: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == t
}

/// Lookup failures give one message whether the object is missing or
/// hidden from the caller, so that the starter is no oracle (attack class 8).
fn open_failed(what: String, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::EACCES | libc::ENOTDIR | libc::ELOOP | libc::EPERM) => {
            Error::new(format!("{what}: not found or not accessible"))
        }
        _ => Error::io(what, e),
    }
}

/// Directories husk never binds as the start directory (as the frontend
/// never does), whatever the request says.
const SYSTEM_DIRS: &[&[u8]] = &[
    b"/bin", b"/boot", b"/dev", b"/etc", b"/lib", b"/lib32", b"/lib64", b"/libx32", b"/proc",
    b"/root", b"/run", b"/sbin", b"/sys", b"/usr", b"/var",
];

/// Is `b` husk's bind of the directory it was started in (which `user bind
/// control = no` still allows)? Only the very directory the caller ran
/// husk from — the same inode — at the same path, that path the start
/// directory, and never a system directory.
fn is_cwd_bind(req: &Request, caller: &Caller, b: &Bind, s: &Source) -> Result<bool> {
    let system = SYSTEM_DIRS.iter().any(|d| config::is_beneath(&b.dst, d))
        && !config::is_beneath(&b.dst, b"/var/tmp");
    if b.src != b.dst || b.dst != req.cwd || system || b.dst == b"/" {
        return Ok(false);
    }
    let st = sys::fstat(s.fd.as_fd()).ctx(|| format!("bind source {}", show(&b.src)))?;
    Ok(caller.cwd == Some((st.st_dev, st.st_ino)))
}

/// Read exactly `buf.len()` bytes at `at`; false at the end of the file.
fn pread_exact(fd: BorrowedFd<'_>, buf: &mut [u8], at: u64) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match sys::pread(fd, &mut buf[done..], at + done as u64)? {
            0 => return Ok(false),
            n => done += n,
        }
    }
    Ok(true)
}

/// For a SIF, the extent the request names must be the file's primary
/// system partition as the file's own descriptor table says: otherwise any
/// bytes of an allowed file (another partition, a squashfs inside some
/// archive) could be mounted, and `allowed image formats` told apart from
/// nothing. A small fixed-layout read: the header (magic at byte 32,
/// descriptor count at 88, table offset at 96) and 585-byte descriptors
/// (type, used flag, offset, size, partition's filesystem and kind).
fn check_sif_extent(fd: BorrowedFd<'_>, offset: u64, size: u64) -> std::result::Result<(), String> {
    const DESCRIPTOR: usize = 585;
    const MAX_DESCRIPTORS: u64 = 4096;
    let le64 = |b: &[u8], at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        i64::from_le_bytes(a)
    };
    let le32 = |b: &[u8], at: usize| {
        let mut a = [0u8; 4];
        a.copy_from_slice(&b[at..at + 4]);
        i32::from_le_bytes(a)
    };
    let io = |e: io::Error| format!("read SIF: {e}");
    let mut h = [0u8; 128];
    if !pread_exact(fd, &mut h, 0).map_err(io)? || &h[32..42] != b"SIF_MAGIC\0" {
        return Err("not a SIF file".into());
    }
    let (count, table) = (le64(&h, 88), le64(&h, 96));
    let (Ok(count), Ok(table)) = (u64::try_from(count), u64::try_from(table)) else {
        return Err("bad SIF header".into());
    };
    if count > MAX_DESCRIPTORS {
        return Err("bad SIF header".into());
    }
    let mut d = [0u8; DESCRIPTOR];
    for i in 0..count {
        let at = table.checked_add(i * DESCRIPTOR as u64).ok_or("bad SIF header")?;
        if !pread_exact(fd, &mut d, at).map_err(io)? {
            return Err("truncated SIF descriptor table".into());
        }
        let primary = d[4] != 0 && le32(&d, 0) == 0x4004 && le32(&d, 205) == 2;
        if primary {
            let fits = le32(&d, 201) == 1
                && u64::try_from(le64(&d, 17)) == Ok(offset)
                && u64::try_from(le64(&d, 25)) == Ok(size);
            return if fits {
                Ok(())
            } else {
                Err("the extent asked for is not the SIF's primary squashfs partition".into())
            };
        }
    }
    Err("SIF has no primary partition".into())
}

/// The admin's limits on images, checked on the opened file: its owner, its
/// group and where it really is (the kernel's path of the fd, so that no
/// symlink or `..` in the request gets round a limit).
fn check_limits(conf: &Config, fd: BorrowedFd<'_>, st: &sys::Stat, what: &str) -> Result<()> {
    let deny = |directive: &str| {
        Err(Error::new(format!("{what}: not allowed by '{directive}' in {}", config::CONFIG_PATH)))
    };
    if !conf.limit_owners.is_empty() && !conf.limit_owners.contains(&st.st_uid) {
        return deny("limit container owners");
    }
    if !conf.limit_groups.is_empty() && !conf.limit_groups.contains(&st.st_gid) {
        return deny("limit container groups");
    }
    if !conf.limit_paths.is_empty() {
        let real = sys::fd_path(fd).ctx(|| what.to_string())?;
        if !conf.limit_paths.iter().any(|l| config::is_beneath(&real, l)) {
            return deny("limit container paths");
        }
    }
    Ok(())
}

/// The image's identity (`st_dev`, `st_ino`) once its limits are checked.
pub type Checked = (u64, u64);

fn open_image_fd(req: &Request) -> Result<(OwnedFd, sys::Stat)> {
    let path = cpath("image", &req.image.path)?;
    let what = || format!("image {}", show(&req.image.path));
    let dir = req.image.kind == ImageKind::Dir;
    let flags = libc::O_RDONLY
        | libc::O_NOCTTY
        | libc::O_NONBLOCK
        | if dir { libc::O_DIRECTORY } else { 0 };
    let fd = sys::open_user_path(&path, flags).map_err(|e| open_failed(what(), e))?;
    let st = sys::fstat(fd.as_fd()).ctx(what)?;
    Ok((fd, st))
}

/// In user-namespace mode, before the namespace exists: check the image's
/// limits while its owner and group still show as the host has them (in
/// the namespace all but the caller's show as the overflow id).
pub fn check_image_early(req: &Request, conf: &Config, caller: &Caller) -> Result<Checked> {
    as_caller(caller, || {
        let (fd, st) = open_image_fd(req)?;
        check_limits(conf, fd.as_fd(), &st, &format!("image {}", show(&req.image.path)))?;
        Ok((st.st_dev, st.st_ino))
    })
}

fn open_image(req: &Request, conf: &Config, checked: Option<Checked>) -> Result<Image> {
    let what = || format!("image {}", show(&req.image.path));
    let (fd, st) = open_image_fd(req)?;
    match checked {
        None => check_limits(conf, fd.as_fd(), &st, &what())?,
        Some(id) if id != (st.st_dev, st.st_ino) => {
            return Err(Error::new(format!("{}: changed while husk started", what())))
        }
        Some(_) => {}
    }
    let (offset, size) = match req.image.kind {
        ImageKind::Dir => return Ok(Image { fd, kind: ImageKind::Dir, offset: 0, size: 0 }),
        ImageKind::Sif { offset, size } => (offset, size),
        ImageKind::Squashfs => (0, st.st_size as u64),
    };
    if !is_type(&st, libc::S_IFREG) {
        return Err(Error::new(format!("{}: not a regular file", what())));
    }
    let end = offset.checked_add(size);
    if size == 0 || end.is_none_or(|end| end > st.st_size as u64) {
        return Err(Error::new(format!("{}: squashfs partition lies outside the file", what())));
    }
    if let ImageKind::Sif { .. } = req.image.kind {
        check_sif_extent(fd.as_fd(), offset, size)
            .map_err(|e| Error::new(format!("{}: {e}", what())))?;
    }
    let mut magic = [0u8; 4];
    let n = sys::pread(fd.as_fd(), &mut magic, offset).ctx(what)?;
    if n != 4 || &magic != b"hsqs" {
        return Err(Error::new(format!("{}: no squashfs filesystem at offset {offset}", what())));
    }
    Ok(Image { fd, kind: req.image.kind, offset, size })
}

/// Open a bind source as the caller: it must exist, be a directory or a
/// regular file, and be readable by the caller.
fn open_bind_source(what: &str, b: &Bind) -> Result<Source> {
    let what = format!("{what} {}", show(&b.src));
    let path = cpath(&what, &b.src)?;
    let fd = sys::open_user_path(&path, libc::O_PATH).map_err(|e| open_failed(what.clone(), e))?;
    let st = sys::fstat(fd.as_fd()).ctx(|| what.clone())?;
    let is_dir = is_type(&st, libc::S_IFDIR);
    if is_dir {
        sys::openat(Some(fd.as_fd()), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| open_failed(what.clone(), e))?;
    } else if is_type(&st, libc::S_IFREG) {
        let again = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|_| Error::new("fd path"))?;
        sys::open(&again, libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK)
            .map_err(|e| open_failed(what.clone(), e))?;
    } else {
        return Err(Error::new(format!("{what}: not a directory or regular file")));
    }
    Ok(Source { fd, dst: b.dst.clone(), is_dir, readonly: b.readonly })
}

/// Open a host path as root (system mounts and the admin's binds).
/// Missing objects are skipped: not every host has /etc/localtime.
fn open_system(path: &[u8], dst: &[u8]) -> Result<Option<Source>> {
    let what = format!("host {}", show(path));
    let fd = match sys::open(&cpath(&what, path)?, libc::O_PATH) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(Error::io(what, e)),
    };
    let st = sys::fstat(fd.as_fd()).ctx(|| what.clone())?;
    let is_dir = is_type(&st, libc::S_IFDIR);
    if !is_dir && !is_type(&st, libc::S_IFREG) {
        return Err(Error::new(format!("{what}: not a directory or regular file")));
    }
    Ok(Some(Source { fd, dst: dst.to_vec(), is_dir, readonly: false }))
}

fn open_system_dir(path: &'static std::ffi::CStr) -> Result<OwnedFd> {
    sys::open(path, libc::O_PATH | libc::O_DIRECTORY)
        .ctx(|| format!("host {}", path.to_string_lossy()))
}

/// `checked`: the image's limits were checked already, on this file.
pub fn open_all(
    req: &Request,
    conf: &Config,
    caller: &Caller,
    checked: Option<Checked>,
) -> Result<Objects> {
    let (image, home, binds) = as_caller(caller, || {
        let image = open_image(req, conf, checked)?;
        let home = match &req.home {
            Some(h) if conf.mount_home => Some(open_bind_source("home", h)?),
            _ => None,
        };
        let binds = req
            .binds
            .iter()
            .map(|b| open_bind_source("bind source", b))
            .collect::<Result<Vec<_>>>()?;
        Ok((image, home, binds))
    })?;
    if !conf.user_bind_control {
        for (b, s) in req.binds.iter().zip(&binds) {
            if !is_cwd_bind(req, caller, b, s)? {
                return Err(Error::new(format!(
                    "--bind {}: not allowed by 'user bind control' in {}",
                    show(&b.src),
                    config::CONFIG_PATH
                )));
            }
        }
    }
    let mut etc_files = Vec::new();
    for f in ["/etc/resolv.conf", "/etc/hosts", "/etc/localtime"] {
        etc_files.extend(open_system(f.as_bytes(), f.as_bytes())?);
    }
    let mut tmp = Vec::new();
    if req.mount_tmp && conf.mount_tmp && !req.fresh_tmp {
        for d in ["/tmp", "/var/tmp"] {
            tmp.extend(open_system(d.as_bytes(), d.as_bytes())?);
        }
    }
    let mut site_binds = Vec::new();
    for (src, dst) in &conf.bind_paths {
        site_binds.extend(open_system(src, dst)?);
    }
    Ok(Objects {
        image,
        proc_: conf.mount_proc.then(|| open_system_dir(c"/proc")).transpose()?,
        sys_: conf.mount_sys.then(|| open_system_dir(c"/sys")).transpose()?,
        dev: conf.mount_dev.then(|| open_system_dir(c"/dev")).transpose()?,
        etc_files,
        home,
        tmp,
        site_binds,
        binds,
    })
}
