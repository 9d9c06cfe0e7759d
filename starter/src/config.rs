//! The admin config: a root-owned file at a path compiled into the starter.

use crate::error::{Context, Error, Result};
use crate::sys;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Set at build time by `packaging/install.sh`; never read at run time.
pub const CONFIG_PATH: &str = match option_env!("HUSK_CONFIG_PATH") {
    Some(p) => p,
    None => "/etc/husk/husk.conf",
};

const MAX_CONFIG: u64 = 64 * 1024;

/// The owner the kernel shows for files whose owner a user namespace does
/// not map (its default; /proc/sys/kernel/overflowuid).
const OVERFLOW_UID: u32 = 65534;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub allow_setuid: bool,
    /// May containers run in an unprivileged user namespace (`-u`, or a
    /// starter without the setuid bit)?
    pub allow_user_ns: bool,
    pub mount_home: bool,
    pub mount_tmp: bool,
    /// May a start mount a loop device that a running container attached to
    /// the same image file?
    pub shared_loop_devices: bool,
    /// May users ask for their own PID, IPC, network and UTS namespaces?
    pub allow_pid_ns: bool,
    pub allow_ipc_ns: bool,
    pub allow_net_ns: bool,
    pub allow_uts_ns: bool,
    /// Image formats users may run: SIF, bare squashfs, directory.
    pub formats: Formats,
    /// When not empty: images must lie under one of these directories
    /// (whole components), be owned by one of these uids, or belong to one
    /// of these gids.
    pub limit_paths: Vec<Vec<u8>>,
    pub limit_owners: Vec<u32>,
    pub limit_groups: Vec<u32>,
    /// The host's /proc, /sys and /dev in the container.
    pub mount_proc: bool,
    pub mount_sys: bool,
    pub mount_dev: bool,
    /// `mount dev = minimal`: every container gets the minimal /dev of
    /// `--contain`.
    pub minimal_dev: bool,
    /// May users bind host paths of their own (`-B`)?
    pub user_bind_control: bool,
    /// Loop devices numbered from this up are never used.
    pub max_loop_devices: u32,
    /// Site-wide binds: (host source, container destination).
    pub bind_paths: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formats {
    pub sif: bool,
    pub squashfs: bool,
    pub dir: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            allow_setuid: true,
            allow_user_ns: true,
            mount_home: true,
            mount_tmp: true,
            shared_loop_devices: true,
            allow_pid_ns: true,
            allow_ipc_ns: true,
            allow_net_ns: true,
            allow_uts_ns: true,
            formats: Formats { sif: true, squashfs: true, dir: true },
            limit_paths: Vec::new(),
            limit_owners: Vec::new(),
            limit_groups: Vec::new(),
            mount_proc: true,
            mount_sys: true,
            mount_dev: true,
            minimal_dev: false,
            user_bind_control: true,
            max_loop_devices: 256,
            bind_paths: Vec::new(),
        }
    }
}

/// Refuse an object unless root owns it (or, for a starter without the
/// setuid bit, which has only the caller's rights anyway, the caller: a
/// user's own install) and neither group nor others may write it.
fn check_trusted(fd: BorrowedFd<'_>, what: &str, user: Option<u32>) -> Result<sys::Stat> {
    let st = sys::fstat(fd).ctx(|| format!("config {what}"))?;
    // Run inside some user namespace, an unprivileged starter sees root's
    // files owned by the overflow uid: as trusted as root's to it.
    let unmapped = user.is_some() && st.st_uid == OVERFLOW_UID;
    if st.st_uid != 0 && Some(st.st_uid) != user && !unmapped {
        let who = if user.is_some() { "root or you" } else { "root" };
        return Err(Error::new(format!("config {what}: not owned by {who}")));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(Error::new(format!("config {what}: writable by group or others")));
    }
    Ok(st)
}

/// Open the config through root-owned, non-writable directories only, with
/// no symlink anywhere on the way.
pub fn open_trusted(path: &str, user: Option<u32>) -> Result<OwnedFd> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let Some((file, dirs)) = comps.split_last() else {
        return Err(Error::new("config path is empty"));
    };
    let dir_flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let mut cur = sys::open(c"/", dir_flags).ctx(|| "config /".into())?;
    check_trusted(cur.as_fd(), "/", user)?;
    let mut walked = String::new();
    for d in dirs {
        walked.push('/');
        walked.push_str(d);
        let name = CString::new(*d).map_err(|_| Error::new("config path has NUL"))?;
        cur = sys::openat(Some(cur.as_fd()), &name, dir_flags, 0)
            .ctx(|| format!("config {walked}"))?;
        check_trusted(cur.as_fd(), &walked, user)?;
    }
    let name = CString::new(*file).map_err(|_| Error::new("config path has NUL"))?;
    let fd = sys::openat(
        Some(cur.as_fd()),
        &name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
        0,
    )
    .ctx(|| format!("config {path}"))?;
    let st = check_trusted(fd.as_fd(), path, user)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::new(format!("config {path}: not a regular file")));
    }
    Ok(fd)
}

/// Load the config; `user` is the caller's uid when the starter runs
/// without privileges (whose own config may then be theirs).
pub fn load(user: Option<u32>) -> Result<Config> {
    let fd = open_trusted(CONFIG_PATH, user)?;
    // Room for all of it at once: the text is never moved, and is wiped
    // below (in user-namespace mode the starter becomes dumpable, and the
    // file may be readable by root alone).
    let mut text = String::with_capacity(MAX_CONFIG as usize + 1);
    std::fs::File::from(fd)
        .take(MAX_CONFIG + 1)
        .read_to_string(&mut text)
        .ctx(|| format!("config {CONFIG_PATH}"))?;
    if text.len() as u64 > MAX_CONFIG {
        return Err(Error::new(format!("config {CONFIG_PATH}: larger than 64 KiB")));
    }
    let conf = parse(&text).map_err(|e| Error::new(format!("config {CONFIG_PATH}: {e}")));
    let mut bytes = text.into_bytes();
    bytes.fill(0);
    std::hint::black_box(&bytes);
    conf
}

fn yes_no(v: &str) -> std::result::Result<bool, String> {
    match v {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("'{v}' is not yes or no")),
    }
}

/// Parse the config text. Every line is blank, a `#` comment or
/// `directive = value`; anything else is an error naming the line.
pub fn parse(text: &str) -> std::result::Result<Config, String> {
    let mut c = Config::default();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {n}: expected 'directive = value'"));
        };
        let key = key.split_whitespace().collect::<Vec<_>>().join(" ");
        let value = value.trim();
        let r = match key.as_str() {
            "allow setuid" => yes_no(value).map(|v| c.allow_setuid = v),
            "allow user namespaces" => yes_no(value).map(|v| c.allow_user_ns = v),
            "mount home" => yes_no(value).map(|v| c.mount_home = v),
            "mount tmp" => yes_no(value).map(|v| c.mount_tmp = v),
            "shared loop devices" => yes_no(value).map(|v| c.shared_loop_devices = v),
            "allow pid namespace" => yes_no(value).map(|v| c.allow_pid_ns = v),
            "allow ipc namespace" => yes_no(value).map(|v| c.allow_ipc_ns = v),
            "allow net namespace" => yes_no(value).map(|v| c.allow_net_ns = v),
            "allow uts namespace" => yes_no(value).map(|v| c.allow_uts_ns = v),
            "allowed image formats" => parse_formats(value).map(|f| c.formats = f),
            "limit container paths" => {
                parse_list(value, parse_dir).map(|v| c.limit_paths.extend(v))
            }
            "limit container owners" => {
                parse_list(value, parse_id).map(|v| c.limit_owners.extend(v))
            }
            "limit container groups" => {
                parse_list(value, parse_id).map(|v| c.limit_groups.extend(v))
            }
            "mount proc" => yes_no(value).map(|v| c.mount_proc = v),
            "mount sys" => yes_no(value).map(|v| c.mount_sys = v),
            "mount dev" if value == "minimal" => {
                c.mount_dev = true;
                c.minimal_dev = true;
                Ok(())
            }
            "mount dev" => yes_no(value).map(|v| {
                c.mount_dev = v;
                c.minimal_dev = false;
            }),
            "user bind control" => yes_no(value).map(|v| c.user_bind_control = v),
            "max loop devices" => value
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1 << 20).contains(n))
                .map(|n| c.max_loop_devices = n)
                .ok_or_else(|| format!("'{value}' is not a number from 1 to 1048576")),
            "bind path" => parse_bind(value).map(|b| c.bind_paths.push(b)),
            _ => Err(format!("unknown directive '{key}'")),
        };
        r.map_err(|e| format!("line {n}: {e}"))?;
    }
    Ok(c)
}

/// A comma- or space-separated list, each item parsed by `one`.
fn parse_list<T>(
    v: &str,
    one: fn(&str) -> std::result::Result<T, String>,
) -> std::result::Result<Vec<T>, String> {
    let items: Vec<&str> = v.split([',', ' ', '\t']).filter(|i| !i.is_empty()).collect();
    if items.is_empty() {
        return Err("empty list".into());
    }
    items.into_iter().map(one).collect()
}

fn parse_dir(p: &str) -> std::result::Result<Vec<u8>, String> {
    husk_protocol::check_path("path", p.as_bytes())
        .map_err(|_| format!("'{p}' is not an absolute normal path"))?;
    Ok(p.as_bytes().to_vec())
}

/// A numeric uid or gid: the starter resolves no names (it reads no
/// passwd or group file).
fn parse_id(v: &str) -> std::result::Result<u32, String> {
    v.parse().map_err(|_| format!("'{v}' is not a numeric uid or gid"))
}

fn parse_formats(v: &str) -> std::result::Result<Formats, String> {
    let mut f = Formats { sif: false, squashfs: false, dir: false };
    for w in parse_list(v, |w| Ok(w.to_string()))? {
        match w.as_str() {
            "sif" => f.sif = true,
            "squashfs" => f.squashfs = true,
            "dir" => f.dir = true,
            _ => return Err(format!("'{w}' is not sif, squashfs or dir")),
        }
    }
    Ok(f)
}

/// Is `path` the directory `limit` or inside it (whole components)?
pub fn is_beneath(path: &[u8], limit: &[u8]) -> bool {
    limit == b"/"
        || path == limit
        || (path.starts_with(limit) && path.get(limit.len()) == Some(&b'/'))
}

fn parse_bind(v: &str) -> std::result::Result<(Vec<u8>, Vec<u8>), String> {
    let (src, dst) = v.split_once(':').unwrap_or((v, v));
    for p in [src, dst] {
        husk_protocol::check_path("bind path", p.as_bytes())
            .map_err(|_| format!("bind path '{p}' is not an absolute normal path"))?;
    }
    if dst == "/" {
        return Err("bind path destination is the container root".into());
    }
    Ok((src.as_bytes().to_vec(), dst.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_directives() {
        let c = parse(
            "# site policy\n\nallow setuid = yes\nmount  home = no\nmount tmp=no\n\
             shared loop devices = no\nallow pid namespace = no\nallow ipc namespace = no\nallow net namespace = no\n\
             allow uts namespace = no\n\
             bind path = /etc/localtime\nbind path = /data:/mnt/data\n",
        )
        .unwrap();
        assert!(c.allow_setuid && !c.mount_home && !c.mount_tmp && !c.shared_loop_devices);
        assert!(!c.allow_pid_ns && !c.allow_ipc_ns && !c.allow_net_ns && !c.allow_uts_ns);
        assert_eq!(
            c.bind_paths,
            vec![
                (b"/etc/localtime".to_vec(), b"/etc/localtime".to_vec()),
                (b"/data".to_vec(), b"/mnt/data".to_vec())
            ]
        );
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn limits_formats_and_mounts() {
        let c = parse(
            "allowed image formats = sif, dir\nlimit container paths = /scratch, /opt/img\n\
             limit container paths = /data\nlimit container owners = 0 1000\n\
             limit container groups = 100\nmount proc = no\nmount sys = no\nmount dev = no\n\
             user bind control = no\nmax loop devices = 8\n",
        )
        .unwrap();
        assert_eq!(c.formats, Formats { sif: true, squashfs: false, dir: true });
        assert_eq!(
            c.limit_paths,
            vec![b"/scratch".to_vec(), b"/opt/img".to_vec(), b"/data".to_vec()]
        );
        assert_eq!((c.limit_owners, c.limit_groups), (vec![0, 1000], vec![100]));
        assert!(!c.mount_proc && !c.mount_sys && !c.mount_dev && !c.user_bind_control);
        assert_eq!(c.max_loop_devices, 8);
        let m = parse("mount dev = minimal\n").unwrap();
        assert!(m.mount_dev && m.minimal_dev);
        for bad in [
            "allowed image formats = sif, ext3",
            "limit container paths = scratch",
            "limit container owners = alice",
            "max loop devices = 0",
            "max loop devices = many",
            "limit container paths =",
        ] {
            assert!(parse(bad).unwrap_err().starts_with("line 1:"), "{bad}");
        }
    }

    #[test]
    fn path_limits_compare_whole_components() {
        assert!(is_beneath(b"/scratch/a.sif", b"/scratch"));
        assert!(is_beneath(b"/scratch", b"/scratch"));
        assert!(!is_beneath(b"/scratch2/a.sif", b"/scratch"));
        assert!(!is_beneath(b"/scratc", b"/scratch"));
        assert!(is_beneath(b"/anything", b"/"));
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            parse("allow setuid = yes\nallow everything = yes\n").unwrap_err(),
            "line 2: unknown directive 'allow everything'"
        );
        assert!(parse("mount home = maybe").unwrap_err().starts_with("line 1:"));
        assert!(parse("bind path = relative").is_err());
        assert!(parse("bind path = /a:/").is_err());
        assert!(parse("just words").is_err());
    }
}
