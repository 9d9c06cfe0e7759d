//! The one message husk's frontend sends to `husk-starter`.
//!
//! Wire format: `MAGIC` (4 bytes), `VERSION` (u16 LE), body length (u32 LE),
//! then the body in the codec of [`codec`]. The starter reads it with a hard
//! limit and then runs [`validate`]; neither ever panics.
#![forbid(unsafe_code)]

mod codec;
mod validate;

pub use codec::{decode_body, read_frame, DecodeError};
pub use validate::{check_hostname, check_path, validate, ValidationError};

use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 4] = *b"HUSK";
pub const VERSION: u16 = 3;
/// Header: magic, version, body length.
pub const HEADER_LEN: usize = 10;
/// The largest body the starter accepts.
pub const MAX_BODY: usize = 768 * 1024;

pub const MAX_PATH: usize = 4096;
pub const MAX_ARGS: usize = 65_536;
pub const MAX_ENV: usize = 65_536;
pub const MAX_BINDS: usize = 256;
pub const MAX_GROUPS: usize = 65_536;
pub const MAX_NAME: usize = 256;
/// The kernel's limit on a host name (HOST_NAME_MAX).
pub const MAX_HOSTNAME: usize = 64;

/// Everything the starter needs to build and enter one container.
/// Byte strings are kept as bytes: Linux paths, arguments and environment
/// values need not be UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub image: Image,
    /// argv of the payload; `argv[0]` is looked up in the container's PATH.
    pub argv: Vec<Vec<u8>>,
    /// `NAME=value` entries, passed to the payload verbatim.
    pub env: Vec<Vec<u8>>,
    /// Working directory inside the container.
    pub cwd: Vec<u8>,
    /// With `--pwd`: a missing cwd is an error rather than a fall-back to `/`.
    pub cwd_required: bool,
    /// The caller's home: host path and its path inside. `None` means no home bind.
    pub home: Option<Bind>,
    /// Bind the host's `/tmp` and `/var/tmp`.
    pub mount_tmp: bool,
    /// User binds in the order to mount them.
    pub binds: Vec<Bind>,
    /// Names for the generated `/etc/passwd` and `/etc/group` lines. The
    /// starter takes the uid, gid and groups from the kernel, never from here.
    pub identity: Identity,
    pub namespaces: Namespaces,
    /// With `namespaces.uts`: the container's host name (RFC 1123).
    pub hostname: Option<Vec<u8>>,
    /// Writes to the container root go to a size-limited tmpfs and vanish
    /// at exit; otherwise the root is read-only.
    pub writable_tmpfs: bool,
    /// `--contain`: fresh, empty /tmp and /var/tmp (tmpfs) instead of the
    /// host's.
    pub fresh_tmp: bool,
    /// `--contain`: an empty home at this path (a tmpfs the caller owns)
    /// instead of a bind; `home` is then `None`.
    pub fresh_home: Option<Vec<u8>>,
    /// `--contain`: a /dev of its own (null, zero, full, random, urandom,
    /// tty, a new devpts, /dev/shm) instead of the host's.
    pub minimal_dev: bool,
    /// With `namespaces.pid`: run the payload itself as PID 1, without
    /// husk's small init.
    pub no_init: bool,
    /// The container ends if the process that started the starter does
    /// (`--unsquash`: husk waits, to remove the extracted image after).
    pub end_with_parent: bool,
}

impl Request {
    /// The caller's home inside the container, if there is one.
    pub fn home_dir(&self) -> Option<&[u8]> {
        self.fresh_home.as_deref().or(self.home.as_ref().map(|h| &h.dst[..]))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Absolute path on the host; opened by the starter as the caller.
    pub path: Vec<u8>,
    pub kind: ImageKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageKind {
    /// A squashfs partition at `offset`, `size` bytes long, inside a SIF file.
    Sif { offset: u64, size: u64 },
    /// A whole file that is a squashfs filesystem.
    Squashfs,
    /// A directory holding the root filesystem.
    Dir,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// Absolute host path, opened by the starter as the caller.
    pub src: Vec<u8>,
    /// Absolute path inside the container.
    pub dst: Vec<u8>,
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The caller's user name on the host.
    pub user_name: Vec<u8>,
    /// GECOS field for the passwd line.
    pub gecos: Vec<u8>,
    /// Names of the caller's groups, as the host resolves them.
    pub groups: Vec<GroupName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupName {
    pub gid: u32,
    pub name: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    /// Run without privileges, in a user namespace that maps the caller's
    /// uid and gid to themselves (`-u/--userns`). The starter also takes
    /// this way by itself when it is not setuid or the config says so.
    pub user: bool,
    pub pid: bool,
    pub ipc: bool,
    pub net: bool,
    pub uts: bool,
}

/// Encode a request into one frame. Fails only if the body exceeds [`MAX_BODY`].
pub fn encode(req: &Request) -> Result<Vec<u8>, DecodeError> {
    codec::encode(req)
}

#[cfg(test)]
mod tests;
