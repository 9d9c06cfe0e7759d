//! Merging image layers into one tree, with the OCI "applying changesets"
//! rules: layers in order; `.wh.NAME` hides NAME from lower layers;
//! `.wh..wh..opq` hides everything lower in its directory; a whiteout never
//! hides what its own layer adds, whatever the order in the tar; a later
//! entry replaces an earlier one of any type; hard links share an inode;
//! every path is resolved inside the root (absolute names, `..` and
//! symlinked parents can never leave it).
//!
//! File contents are not kept: each regular file's bytes go to a
//! [`DataSink`] as the tar stream is read (once), and the tree keeps the
//! sink's handle. Data of files that later layers delete stays in the sink.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::io::Read;

/// Where file contents go; returns a handle the final tree refers to.
pub trait DataSink {
    type Handle: Clone;
    fn write(&mut self, data: &mut dyn Read, len: u64) -> Result<Self::Handle>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<H> {
    Dir(BTreeMap<Vec<u8>, Entry>),
    File { data: H, size: u64 },
    Symlink(Vec<u8>),
    Char { major: u32, minor: u32 },
    Block { major: u32, minor: u32 },
    Fifo,
}

/// A directory entry: the node it names and the last layer that declared it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub node: usize,
    touched: usize,
}

#[derive(Debug, Clone)]
pub struct Node<H> {
    pub kind: Kind<H>,
    pub meta: Meta,
}

/// The merged tree: an arena of nodes; node 0 is the root directory. Hard
/// links are several entries naming one node.
pub struct Tree<H> {
    pub nodes: Vec<Node<H>>,
}

const MAX_SYMLINK_HOPS: usize = 40;
const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Split a tar path into normal components, resolving `.`, `..` (never above
/// the root) and dropping leading `/`.
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            _ => out.push(c.to_vec()),
        }
    }
    out
}

/// `chmod a+rX`: everyone may read every file and search every directory,
/// and run what anyone could run. Image modes give no secrecy from a caller
/// who can read the image file anyway.
pub fn normalise_mode(mode: u32, is_dir: bool) -> u32 {
    let mut m = mode | 0o444;
    if is_dir || mode & 0o111 != 0 {
        m |= 0o111;
    }
    m
}

impl<H: Clone> Tree<H> {
    pub fn new() -> Self {
        let meta = Meta { mode: 0o755, uid: 0, gid: 0, mtime: 0, xattrs: Vec::new() };
        Tree { nodes: vec![Node { kind: Kind::Dir(BTreeMap::new()), meta }] }
    }

    pub fn children(&self, node: usize) -> Option<&BTreeMap<Vec<u8>, Entry>> {
        match &self.nodes[node].kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    fn children_mut(&mut self, node: usize) -> Option<&mut BTreeMap<Vec<u8>, Entry>> {
        match &mut self.nodes[node].kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    fn add(&mut self, kind: Kind<H>, meta: Meta) -> usize {
        self.nodes.push(Node { kind, meta });
        self.nodes.len() - 1
    }

    /// Resolve the directory `comps`, following symlinks inside the root.
    /// With `declare = Some(layer)`, every directory on the way counts as
    /// declared by that layer and missing ones are made; with `None` it is a
    /// plain lookup (`Ok(None)` when something is missing).
    fn parent_dir(&mut self, comps: &[Vec<u8>], declare: Option<usize>) -> Result<Option<usize>> {
        let mut hops = 0;
        let mut stack: Vec<usize> = vec![0];
        let mut queue: std::collections::VecDeque<Vec<u8>> = comps.iter().cloned().collect();
        while let Some(name) = queue.pop_front() {
            let cur = *stack.last().unwrap_or(&0);
            if name == b".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let existing = self.children(cur).and_then(|c| c.get(&name)).copied();
            match existing.map(|e| (e, &self.nodes[e.node].kind)) {
                Some((e, Kind::Dir(_))) => {
                    if let (Some(layer), Some(c)) = (declare, self.children_mut(cur)) {
                        c.insert(name, Entry { node: e.node, touched: layer });
                    }
                    stack.push(e.node);
                }
                Some((_, Kind::Symlink(target))) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        bail!("too many levels of symbolic links");
                    }
                    let target = target.clone();
                    if target.starts_with(b"/") {
                        stack.truncate(1);
                    }
                    for c in target.split(|&b| b == b'/').rev() {
                        if !c.is_empty() && c != b"." {
                            queue.push_front(c.to_vec());
                        }
                    }
                }
                Some(_) | None => {
                    // A missing parent, or a non-directory in the way (as
                    // tar does: replaced by a directory).
                    let Some(layer) = declare else { return Ok(None) };
                    let meta = Meta { mode: 0o755, uid: 0, gid: 0, mtime: 0, xattrs: Vec::new() };
                    let d = self.add(Kind::Dir(BTreeMap::new()), meta);
                    if let Some(c) = self.children_mut(cur) {
                        c.insert(name, Entry { node: d, touched: layer });
                    }
                    stack.push(d);
                }
            }
        }
        Ok(Some(*stack.last().unwrap_or(&0)))
    }

    /// Remove from `node`'s subtree everything no entry of `layer` declared;
    /// returns whether the entry itself goes.
    fn purge(&mut self, entry: Entry, layer: usize) -> bool {
        let names: Vec<(Vec<u8>, Entry)> = match self.children(entry.node) {
            Some(c) => c.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            None => return entry.touched < layer,
        };
        for (name, child) in names {
            if self.purge(child, layer) {
                if let Some(c) = self.children_mut(entry.node) {
                    c.remove(&name);
                }
            }
        }
        entry.touched < layer
    }

    #[cfg(test)]
    fn lookup(&self, comps: &[Vec<u8>]) -> Option<usize> {
        let mut cur = 0;
        for c in comps {
            cur = self.children(cur)?.get(c)?.node;
        }
        Some(cur)
    }
}

impl<H: Clone> Default for Tree<H> {
    fn default() -> Self {
        Self::new()
    }
}

/// Open a layer blob: gzip, zstd or plain tar, by its first bytes.
pub fn decompress<'a>(mut r: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let chained = std::io::Cursor::new(head[..n].to_vec()).chain(r);
    Ok(if head[..n].starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(chained))
    } else if head[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::new(chained)?)
    } else {
        Box::new(chained)
    })
}

fn xattrs_of<R: Read>(e: &mut tar::Entry<'_, R>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = e.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                out.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Apply one layer's tar stream (already decompressed) as layer number
/// `layer` (counting from 1). Errors name the entry.
pub fn apply_layer<S: DataSink>(
    tree: &mut Tree<S::Handle>,
    tar_stream: impl Read,
    layer: usize,
    sink: &mut S,
) -> Result<()> {
    let mut archive = tar::Archive::new(tar_stream);
    for entry in archive.entries().context("read layer tar")? {
        let mut e = entry.context("read layer tar entry")?;
        let path = e.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&path).into_owned();
        apply_entry(tree, &mut e, &path, layer, sink).with_context(|| format!("entry {shown}"))?;
    }
    Ok(())
}

fn apply_entry<S: DataSink, R: Read>(
    tree: &mut Tree<S::Handle>,
    e: &mut tar::Entry<'_, R>,
    path: &[u8],
    layer: usize,
    sink: &mut S,
) -> Result<()> {
    use tar::EntryType as T;
    let etype = e.header().entry_type();
    if matches!(etype, T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink) {
        return Ok(());
    }
    let comps = components(path);
    let h = e.header();
    let meta = Meta {
        mode: h.mode().context("mode")? & 0o7777,
        uid: u32::try_from(h.uid().context("uid")?).map_err(|_| anyhow!("uid out of range"))?,
        gid: u32::try_from(h.gid().context("gid")?).map_err(|_| anyhow!("gid out of range"))?,
        mtime: h.mtime().unwrap_or(0),
        xattrs: Vec::new(),
    };
    let Some((name, dir_comps)) = comps.split_last() else {
        // The root itself.
        if etype == T::Directory {
            let xattrs = xattrs_of(e)?;
            tree.nodes[0].meta = Meta { mode: normalise_mode(meta.mode, true), xattrs, ..meta };
        }
        return Ok(());
    };
    // Whiteouts only look: they neither make nor declare directories.
    let is_whiteout = name.starts_with(WHITEOUT);
    let Some(parent) = tree.parent_dir(dir_comps, (!is_whiteout).then_some(layer))? else {
        return Ok(());
    };

    if name == OPAQUE {
        let names: Vec<(Vec<u8>, Entry)> = tree
            .children(parent)
            .map(|c| c.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        for (n, child) in names {
            if tree.purge(child, layer) {
                if let Some(c) = tree.children_mut(parent) {
                    c.remove(&n);
                }
            }
        }
        return Ok(());
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT) {
        if let Some(child) = tree.children(parent).and_then(|c| c.get(hidden)).copied() {
            if tree.purge(child, layer) {
                if let Some(c) = tree.children_mut(parent) {
                    c.remove(hidden);
                }
            }
        }
        return Ok(());
    }

    let xattrs = xattrs_of(e)?;
    let existing = tree.children(parent).and_then(|c| c.get(name)).copied();
    let node = match etype {
        T::Directory => {
            let meta = Meta { mode: normalise_mode(meta.mode, true), xattrs, ..meta };
            match existing.filter(|x| matches!(tree.nodes[x.node].kind, Kind::Dir(_))) {
                Some(x) => {
                    tree.nodes[x.node].meta = meta;
                    x.node
                }
                None => tree.add(Kind::Dir(BTreeMap::new()), meta),
            }
        }
        T::Regular | T::Continuous | T::GNUSparse => {
            let size = e.size();
            let data = sink.write(e, size)?;
            let meta = Meta { mode: normalise_mode(meta.mode, false), xattrs, ..meta };
            tree.add(Kind::File { data, size }, meta)
        }
        T::Symlink => {
            let target =
                e.link_name_bytes().ok_or_else(|| anyhow!("symlink without target"))?.into_owned();
            tree.add(Kind::Symlink(target), Meta { mode: 0o777, xattrs, ..meta })
        }
        T::Link => {
            let target = e.link_name_bytes().ok_or_else(|| anyhow!("hard link without target"))?;
            let tcomps = components(&target);
            let found = match tcomps.split_last() {
                Some((tname, tdir)) => tree
                    .parent_dir(tdir, None)?
                    .and_then(|p| tree.children(p).and_then(|c| c.get(tname)).map(|x| x.node)),
                None => None,
            };
            match found {
                Some(n) if !matches!(tree.nodes[n].kind, Kind::Dir(_)) => n,
                _ => bail!(
                    "hard link to {} which is not in the image",
                    String::from_utf8_lossy(&target)
                ),
            }
        }
        T::Char | T::Block => {
            let major = e.header().device_major()?.unwrap_or(0);
            let minor = e.header().device_minor()?.unwrap_or(0);
            let kind = if etype == T::Char {
                Kind::Char { major, minor }
            } else {
                Kind::Block { major, minor }
            };
            tree.add(kind, Meta { mode: normalise_mode(meta.mode, false), xattrs, ..meta })
        }
        T::Fifo => {
            tree.add(Kind::Fifo, Meta { mode: normalise_mode(meta.mode, false), xattrs, ..meta })
        }
        other => bail!("unsupported tar entry type {:?}", other.as_byte() as char),
    };
    if let Some(c) = tree.children_mut(parent) {
        c.insert(name.clone(), Entry { node, touched: layer });
    }
    Ok(())
}

/// Add a regular file made by husk itself (after every layer), with parent
/// directories as needed, owned by root.
pub fn put_file<H: Clone>(
    tree: &mut Tree<H>,
    path: &[u8],
    data: H,
    size: u64,
    mode: u32,
) -> Result<()> {
    let comps = components(path);
    let (name, dir) = comps.split_last().ok_or_else(|| anyhow!("empty path"))?;
    let layer = usize::MAX;
    let parent =
        tree.parent_dir(dir, Some(layer))?.ok_or_else(|| anyhow!("no parent directory"))?;
    let meta = Meta { mode, uid: 0, gid: 0, mtime: 0, xattrs: Vec::new() };
    let node = tree.add(Kind::File { data, size }, meta);
    if let Some(c) = tree.children_mut(parent) {
        c.insert(name.clone(), Entry { node, touched: layer });
    }
    Ok(())
}

/// Look up a path in the merged tree.
#[cfg(test)]
pub fn find<H: Clone>(tree: &Tree<H>, path: &str) -> Option<usize> {
    tree.lookup(&components(path.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps file contents in memory; the handle is an index.
    #[derive(Default)]
    struct MemSink(Vec<Vec<u8>>);

    impl DataSink for MemSink {
        type Handle = usize;
        fn write(&mut self, data: &mut dyn Read, len: u64) -> Result<usize> {
            let mut v = Vec::new();
            data.read_to_end(&mut v)?;
            assert_eq!(v.len() as u64, len);
            self.0.push(v);
            Ok(self.0.len() - 1)
        }
    }

    enum E<'a> {
        Dir(&'a str, u32),
        File(&'a str, u32, &'a str),
        Link(&'a str, &'a str),
        Sym(&'a str, &'a str),
        Char(&'a str, u32, u32),
        Fifo(&'a str),
        Xattr(&'a str, &'a str, &'a [u8]),
    }

    /// A tar layer with names written byte for byte (tools won't write
    /// `../x` or `/abs`, so neither does the tar crate's path checking).
    fn layer(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1);
            h.set_uid(0);
            h.set_gid(0);
            let (name, data): (&str, &[u8]) = match e {
                E::Dir(n, m) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*m);
                    (n, b"")
                }
                E::File(n, m, d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*m);
                    (n, d.as_bytes())
                }
                E::Link(n, t) | E::Sym(n, t) => {
                    let ty = if matches!(e, E::Link(..)) {
                        tar::EntryType::Link
                    } else {
                        tar::EntryType::Symlink
                    };
                    h.set_entry_type(ty);
                    h.set_mode(0o777);
                    h.set_link_name_literal(t).unwrap();
                    (n, b"")
                }
                E::Char(n, ma, mi) => {
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_mode(0o600);
                    h.set_device_major(*ma).unwrap();
                    h.set_device_minor(*mi).unwrap();
                    (n, b"")
                }
                E::Fifo(n) => {
                    h.set_entry_type(tar::EntryType::Fifo);
                    h.set_mode(0o600);
                    (n, b"")
                }
                E::Xattr(n, k, v) => {
                    let key = format!("SCHILY.xattr.{k}");
                    b.append_pax_extensions([(key.as_str(), *v)]).unwrap();
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    (n, b"")
                }
            };
            h.set_size(data.len() as u64);
            if name.len() <= 100 {
                h.as_old_mut().name = [0; 100];
                h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                h.set_cksum();
                b.append(&h, data).unwrap();
            } else {
                b.append_data(&mut h, name, data).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    fn merge(layers: &[Vec<u8>]) -> (Tree<usize>, MemSink) {
        let mut t = Tree::new();
        let mut sink = MemSink::default();
        for (i, l) in layers.iter().enumerate() {
            apply_layer(&mut t, &l[..], i + 1, &mut sink).unwrap();
        }
        (t, sink)
    }

    fn content(t: &Tree<usize>, s: &MemSink, path: &str) -> Option<String> {
        match &t.nodes[find(t, path)?].kind {
            Kind::File { data, .. } => Some(String::from_utf8(s.0[*data].clone()).unwrap()),
            _ => None,
        }
    }

    fn names(t: &Tree<usize>, path: &str) -> Vec<String> {
        t.children(find(t, path).unwrap())
            .unwrap()
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    #[test]
    fn whiteout_removes_lower_file_and_no_marker_remains() {
        let (t, _) = merge(&[
            layer(&[
                E::Dir("etc/", 0o755),
                E::File("etc/a", 0o644, "a"),
                E::File("etc/b", 0o644, "b"),
            ]),
            layer(&[E::File("etc/.wh.a", 0o644, "")]),
        ]);
        assert_eq!(names(&t, "etc"), vec!["b"]);
    }

    #[test]
    fn opaque_directory_keeps_only_its_own_layer_in_any_order() {
        for order in [0, 1] {
            let mut l2 = vec![E::Dir("d/", 0o755), E::File("d/new", 0o644, "n")];
            let opq = E::File("d/.wh..wh..opq", 0o644, "");
            if order == 0 {
                l2.insert(1, opq);
            } else {
                l2.push(opq);
            }
            let (t, _) =
                merge(&[layer(&[E::Dir("d/", 0o755), E::File("d/old", 0o644, "o")]), layer(&l2)]);
            assert_eq!(names(&t, "d"), vec!["new"], "order {order}");
        }
    }

    #[test]
    fn whiteout_and_recreation_in_one_layer_keep_the_new_entry() {
        for order in [0, 1] {
            let wh = E::File(".wh.f", 0o644, "");
            let new = E::File("f", 0o644, "new");
            let l2 = if order == 0 { vec![wh, new] } else { vec![new, wh] };
            let (t, s) = merge(&[layer(&[E::File("f", 0o644, "old")]), layer(&l2)]);
            assert_eq!(content(&t, &s, "f").as_deref(), Some("new"), "order {order}");
        }
        // rm -rf dir && mkdir dir && touch dir/x, whiteout last.
        let (t, _) = merge(&[
            layer(&[
                E::Dir("dir/", 0o755),
                E::File("dir/old", 0o644, ""),
                E::Dir("dir/sub/", 0o755),
            ]),
            layer(&[
                E::Dir("dir/", 0o755),
                E::File("dir/x", 0o644, ""),
                E::File(".wh.dir", 0o644, ""),
            ]),
        ]);
        assert_eq!(names(&t, "dir"), vec!["x"]);
    }

    #[test]
    fn whiteout_then_deeper_entries() {
        let (t, _) = merge(&[
            layer(&[E::Dir("a/", 0o755), E::Dir("a/b/", 0o755), E::File("a/b/old", 0o644, "")]),
            layer(&[E::File("a/.wh.b", 0o644, ""), E::File("a/b/c/d", 0o644, "d")]),
        ]);
        assert_eq!(names(&t, "a/b"), vec!["c"]);
        assert_eq!(names(&t, "a/b/c"), vec!["d"]);
    }

    #[test]
    fn hard_links_keep_the_inode_across_layers() {
        let (t, s) = merge(&[
            layer(&[E::File("orig", 0o644, "first"), E::Link("link", "orig")]),
            layer(&[E::File("orig", 0o644, "second"), E::Link("link2", "link")]),
            layer(&[E::File(".wh.orig", 0o644, "")]),
        ]);
        assert_eq!(find(&t, "orig"), None);
        assert_eq!(content(&t, &s, "link").as_deref(), Some("first"));
        assert_eq!(find(&t, "link"), find(&t, "link2"));
        // A link to something missing names it.
        let mut tree = Tree::new();
        let err =
            apply_layer(&mut tree, &layer(&[E::Link("l", "nope")])[..], 1, &mut MemSink::default());
        assert!(format!("{:#}", err.unwrap_err()).contains("nope"));
    }

    #[test]
    fn types_replace_each_other() {
        let (t, _) = merge(&[
            layer(&[E::Sym("x", "/etc"), E::Dir("y/", 0o755), E::File("y/f", 0o644, "")]),
            layer(&[
                E::Dir("x/", 0o755),
                E::File("x/in", 0o644, ""),
                E::File("y", 0o644, "now a file"),
            ]),
        ]);
        assert!(matches!(t.nodes[find(&t, "x").unwrap()].kind, Kind::Dir(_)));
        assert_eq!(names(&t, "x"), vec!["in"]);
        assert!(matches!(t.nodes[find(&t, "y").unwrap()].kind, Kind::File { .. }));
    }

    #[test]
    fn names_never_leave_the_root() {
        let (t, s) = merge(&[layer(&[
            E::Dir("etc/", 0o755),
            E::File("/abs", 0o644, "abs"),
            E::File("../x", 0o644, "x"),
            E::File("a/../../../y", 0o644, "y"),
            E::Sym("link", "/etc"),
            E::File("link/viasym", 0o644, "v"),
            E::Sym("rel", "../../../etc"),
            E::File("rel/viarel", 0o644, "r"),
        ])]);
        assert_eq!(content(&t, &s, "abs").as_deref(), Some("abs"));
        assert_eq!(content(&t, &s, "x").as_deref(), Some("x"));
        assert_eq!(content(&t, &s, "y").as_deref(), Some("y"));
        assert_eq!(names(&t, "etc"), vec!["viarel", "viasym"]);
        // The symlinks themselves are still there.
        assert!(matches!(t.nodes[find(&t, "link").unwrap()].kind, Kind::Symlink(_)));
    }

    #[test]
    fn symlink_loops_are_an_error() {
        let l = layer(&[E::Sym("a", "b"), E::Sym("b", "a"), E::File("a/x", 0o644, "")]);
        let err = apply_layer(&mut Tree::new(), &l[..], 1, &mut MemSink::default()).unwrap_err();
        assert!(format!("{err:#}").contains("a/x"), "{err:#}");
    }

    #[test]
    fn modes_are_normalised_and_special_files_kept() {
        let (t, _) = merge(&[layer(&[
            E::File("secret", 0o000, "s"),
            E::Dir("ro/", 0o555),
            E::File("ro/later", 0o700, "x"),
            E::File("setuid", 0o4750, ""),
            E::Char("dev/null", 1, 3),
            E::Fifo("fifo"),
            E::Dir("home/u/", 0o700),
            E::File("home/u/key", 0o600, "k"),
        ])]);
        let mode = |p: &str| t.nodes[find(&t, p).unwrap()].meta.mode;
        assert_eq!(mode("secret"), 0o444);
        assert_eq!(mode("ro"), 0o555);
        assert_eq!(mode("ro/later"), 0o755);
        assert_eq!(mode("setuid"), 0o4755);
        assert_eq!(mode("home/u"), 0o755);
        assert_eq!(mode("home/u/key"), 0o644);
        assert_eq!(t.nodes[find(&t, "dev/null").unwrap()].kind, Kind::Char { major: 1, minor: 3 });
        assert_eq!(t.nodes[find(&t, "fifo").unwrap()].kind, Kind::Fifo);
    }

    #[test]
    fn long_names_duplicates_and_xattrs() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(79));
        assert_eq!(long.len(), 200);
        let (t, s) = merge(&[layer(&[
            E::File(&long, 0o644, "long"),
            E::File("dup", 0o644, "one"),
            E::File("dup", 0o644, "two"),
            E::Xattr("cap", "security.capability", b"\x01\x00\x00\x02"),
        ])]);
        assert_eq!(content(&t, &s, &long).as_deref(), Some("long"));
        assert_eq!(content(&t, &s, "dup").as_deref(), Some("two"));
        assert_eq!(
            t.nodes[find(&t, "cap").unwrap()].meta.xattrs,
            vec![(b"security.capability".to_vec(), b"\x01\x00\x00\x02".to_vec())]
        );
    }

    #[test]
    fn compressed_layers_are_recognised() {
        use std::io::Write;
        let plain = layer(&[E::File("f", 0o644, "data")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&plain[..], 1).unwrap();
        for blob in [plain, gz, zs] {
            let mut t = Tree::new();
            let mut sink = MemSink::default();
            apply_layer(&mut t, decompress(&blob[..]).unwrap(), 1, &mut sink).unwrap();
            assert_eq!(content(&t, &sink, "f").as_deref(), Some("data"));
        }
    }
}
