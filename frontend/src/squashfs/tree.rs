//! The directory tree the caller describes after (or while) writing file
//! data: an arena of inodes, directories mapping names to inode ids.

use super::FileData;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Longest file name (Linux NAME_MAX).
pub const NAME_MAX: usize = 255;
/// Longest symlink target (Linux PATH_MAX less the terminating NUL).
pub const SYMLINK_MAX: usize = 4095;
/// Longest xattr name, prefix included (Linux XATTR_NAME_MAX).
pub const XATTR_NAME_MAX: usize = 255;
/// Largest xattr value (Linux XATTR_SIZE_MAX).
pub const XATTR_SIZE_MAX: usize = 65536;

/// The xattr namespaces squashfs can store, with their on-disk prefix ids.
pub const XATTR_PREFIXES: [(&[u8], u16); 3] = [(b"user.", 0), (b"trusted.", 1), (b"security.", 2)];

static NEXT_TREE: AtomicU64 = AtomicU64::new(1);

/// Ownership, permissions, time and extended attributes of an inode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits, setuid/setgid/sticky included (`0o7777`); file-type
    /// bits (`S_IFMT`) are ignored, the [`Node`] gives the type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: u32,
    /// Full names (`user.`, `trusted.` or `security.` prefix) and values.
    /// Order does not matter; names must be unique.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What an inode is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir,
    /// Contents written earlier with [`super::Writer::write_file_data`].
    File(FileData),
    /// The target, 1 to 4095 bytes without NUL.
    Symlink(Vec<u8>),
    /// Major up to 4095, minor up to 1048575.
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    Socket,
}

/// Names an inode of one [`Tree`]; link more paths to it with [`Tree::link`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeId {
    tree: u64,
    index: usize,
}

pub(crate) enum Kind {
    Dir(BTreeMap<Vec<u8>, usize>),
    File(FileData),
    Symlink(Vec<u8>),
    Char(u32),
    Block(u32),
    Fifo,
    Socket,
}

pub(crate) struct Inode {
    pub kind: Kind,
    /// Validated: mode masked to 0o7777, xattrs sorted by name.
    pub meta: Meta,
}

/// A directory tree; paths are byte strings split at `/` (empty and `.`
/// components are skipped, `..` is refused). Directory entries are kept in
/// byte order, the order squashfs requires.
pub struct Tree {
    id: u64,
    pub(crate) inodes: Vec<Inode>,
}

impl Tree {
    /// A tree holding only the root directory.
    pub fn new(root: Meta) -> Result<Tree> {
        let meta = validate_meta(root)?;
        Ok(Tree {
            id: NEXT_TREE.fetch_add(1, Ordering::Relaxed),
            inodes: vec![Inode { kind: Kind::Dir(BTreeMap::new()), meta }],
        })
    }

    pub fn root(&self) -> InodeId {
        InodeId { tree: self.id, index: 0 }
    }

    /// Adds `node` at `path`, whose parent directory must exist. Inserting
    /// a directory where a directory already is (the root included) only
    /// replaces its metadata and keeps its entries; any other existing
    /// path is an error (use [`Tree::remove`] first to replace it).
    pub fn insert(&mut self, path: impl AsRef<[u8]>, node: Node, meta: Meta) -> Result<InodeId> {
        let meta = validate_meta(meta)?;
        let kind = validate_node(node)?;
        let comps = split(path.as_ref())?;
        let Some((name, parents)) = comps.split_last() else {
            // The root itself.
            if let Kind::Dir(_) = kind {
                self.inodes[0].meta = meta;
                return Ok(self.root());
            }
            bail!("the root must be a directory");
        };
        let parent = self.walk_dir(parents)?;
        if let Some(&existing) = self.children(parent).get(*name) {
            if let (Kind::Dir(_), Kind::Dir(_)) = (&self.inodes[existing].kind, &kind) {
                self.inodes[existing].meta = meta;
                return Ok(InodeId { tree: self.id, index: existing });
            }
            bail!("{} already exists", show(path.as_ref()));
        }
        let index = self.inodes.len();
        self.inodes.push(Inode { kind, meta });
        self.children_mut(parent)?.insert(name.to_vec(), index);
        Ok(InodeId { tree: self.id, index })
    }

    /// Adds `path` as a hard link to the (non-directory) inode `target`.
    pub fn link(&mut self, path: impl AsRef<[u8]>, target: InodeId) -> Result<()> {
        let target = self.check_id(target)?;
        if let Kind::Dir(_) = self.inodes[target].kind {
            bail!("cannot hard-link a directory ({})", show(path.as_ref()));
        }
        let comps = split(path.as_ref())?;
        let Some((name, parents)) = comps.split_last() else {
            bail!("cannot replace the root with a hard link");
        };
        let parent = self.walk_dir(parents)?;
        if self.children(parent).contains_key(*name) {
            bail!("{} already exists", show(path.as_ref()));
        }
        self.children_mut(parent)?.insert(name.to_vec(), target);
        Ok(())
    }

    /// The inode at `path`, if any.
    pub fn lookup(&self, path: impl AsRef<[u8]>) -> Option<InodeId> {
        let comps = split(path.as_ref()).ok()?;
        let mut cur = 0;
        for c in comps {
            match &self.inodes[cur].kind {
                Kind::Dir(entries) => cur = *entries.get(c)?,
                _ => return None,
            }
        }
        Some(InodeId { tree: self.id, index: cur })
    }

    /// Removes the entry at `path` (a directory with all it holds); returns
    /// whether there was one. Other hard links to the inode stay.
    pub fn remove(&mut self, path: impl AsRef<[u8]>) -> Result<bool> {
        let comps = split(path.as_ref())?;
        let Some((name, parents)) = comps.split_last() else {
            bail!("cannot remove the root");
        };
        let Ok(parent) = self.walk_dir(parents) else {
            return Ok(false);
        };
        Ok(self.children_mut(parent)?.remove(*name).is_some())
    }

    /// Replaces the metadata of an inode (of all its hard links).
    pub fn set_meta(&mut self, id: InodeId, meta: Meta) -> Result<()> {
        let index = self.check_id(id)?;
        self.inodes[index].meta = validate_meta(meta)?;
        Ok(())
    }

    fn check_id(&self, id: InodeId) -> Result<usize> {
        if id.tree != self.id || id.index >= self.inodes.len() {
            bail!("inode id from another tree");
        }
        Ok(id.index)
    }

    fn walk_dir(&self, comps: &[&[u8]]) -> Result<usize> {
        let mut cur = 0;
        for (i, c) in comps.iter().enumerate() {
            let next = match &self.inodes[cur].kind {
                Kind::Dir(entries) => entries.get(*c).copied(),
                _ => None,
            };
            match next {
                Some(n) if matches!(self.inodes[n].kind, Kind::Dir(_)) => cur = n,
                Some(_) => bail!("{} is not a directory", show(&comps[..=i].join(&b'/'))),
                None => bail!("parent directory {} does not exist", show(&comps[..=i].join(&b'/'))),
            }
        }
        Ok(cur)
    }

    pub(crate) fn children(&self, dir: usize) -> &BTreeMap<Vec<u8>, usize> {
        static EMPTY: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        match &self.inodes[dir].kind {
            Kind::Dir(entries) => entries,
            _ => &EMPTY,
        }
    }

    fn children_mut(&mut self, dir: usize) -> Result<&mut BTreeMap<Vec<u8>, usize>> {
        match &mut self.inodes[dir].kind {
            Kind::Dir(entries) => Ok(entries),
            _ => bail!("not a directory"),
        }
    }
}

fn show(path: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(path))
}

fn split(path: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => bail!("{}: \"..\" is not allowed in paths", show(path)),
            _ => {
                if c.len() > NAME_MAX {
                    bail!("{}: a name is longer than {NAME_MAX} bytes", show(path));
                }
                if c.contains(&0) {
                    bail!("{}: a name contains a NUL byte", show(path));
                }
                out.push(c);
            }
        }
    }
    Ok(out)
}

fn encode_dev(major: u32, minor: u32) -> Result<u32> {
    if major > 0xfff || minor > 0xfffff {
        bail!("device number {major}:{minor} too large (at most 4095:1048575)");
    }
    Ok((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

fn validate_node(node: Node) -> Result<Kind> {
    Ok(match node {
        Node::Dir => Kind::Dir(BTreeMap::new()),
        Node::File(data) => Kind::File(data),
        Node::Symlink(target) => {
            if target.is_empty() || target.len() > SYMLINK_MAX || target.contains(&0) {
                bail!("symlink target {} is empty, too long or holds NUL", show(&target));
            }
            Kind::Symlink(target)
        }
        Node::CharDevice { major, minor } => Kind::Char(encode_dev(major, minor)?),
        Node::BlockDevice { major, minor } => Kind::Block(encode_dev(major, minor)?),
        Node::Fifo => Kind::Fifo,
        Node::Socket => Kind::Socket,
    })
}

fn validate_meta(mut meta: Meta) -> Result<Meta> {
    meta.mode &= 0o7777;
    for (name, value) in &meta.xattrs {
        let Some((prefix, _)) = XATTR_PREFIXES.iter().find(|(p, _)| name.starts_with(p)) else {
            bail!("xattr {}: only user., trusted. and security. names can be stored", show(name));
        };
        if name.len() == prefix.len() || name.len() > XATTR_NAME_MAX || name.contains(&0) {
            bail!("xattr name {} is empty, too long or holds NUL", show(name));
        }
        if value.len() > XATTR_SIZE_MAX {
            bail!("xattr {}: value larger than {XATTR_SIZE_MAX} bytes", show(name));
        }
    }
    meta.xattrs.sort();
    if meta.xattrs.windows(2).any(|w| w[0].0 == w[1].0) {
        bail!("duplicate xattr name");
    }
    Ok(meta)
}
