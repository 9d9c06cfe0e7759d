//! The tables written by `Writer::finish`: inodes, directory listings, ids,
//! xattrs, and the superblock.
//!
//! Inodes are numbered breadth-first-ish (root 1, then each directory's new
//! entries consecutively), so a directory's entries mostly share one
//! listing header. Inodes are written children first: a directory's
//! listing needs its entries' inode references, and a directory inode needs
//! its listing's position; the root comes last.

use super::compress::Compressor;
use super::metadata::{MetaWriter, Put, METADATA_SIZE};
use super::tree::{Kind, Tree, XATTR_PREFIXES};
use super::{FileRec, Options};
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;

const MAGIC: u32 = 0x7371_7368;
const INVALID: u64 = u64::MAX;
const NO_XATTR: u32 = u32::MAX;
const NO_FRAGMENT: u32 = u32::MAX;

const FLAG_NO_FRAGMENTS: u16 = 0x0010;
const FLAG_NO_XATTRS: u16 = 0x0200;

/// Basic inode types; the extended type is the basic one plus 7.
const T_DIR: u16 = 1;
const T_FILE: u16 = 2;
const T_SYMLINK: u16 = 3;
const T_BLOCK: u16 = 4;
const T_CHAR: u16 = 5;
const T_FIFO: u16 = 6;
const T_SOCKET: u16 = 7;
const EXTENDED: u16 = 7;

/// Entries one directory header may introduce.
const DIR_RUN_MAX: usize = 256;
/// Directory index entries an extended directory inode can hold.
const DIR_INDEX_MAX: usize = u16::MAX as usize;

pub struct Xattrs {
    /// Key/value metadata blocks.
    pub kv: Vec<u8>,
    /// Lookup table blocks (ref, count, size per set).
    pub ids: Vec<u8>,
    pub id_starts: Vec<u64>,
    pub count: u32,
}

pub struct Built {
    pub inodes: Vec<u8>,
    pub dirs: Vec<u8>,
    pub ids: Vec<u32>,
    pub xattrs: Option<Xattrs>,
    pub root: u64,
    pub inode_count: u32,
}

/// Image offsets of the tables, for the superblock.
pub struct Layout {
    pub inode_table: u64,
    pub directory_table: u64,
    pub fragment_table: u64,
    pub id_table: u64,
    pub xattr_table: Option<u64>,
    pub bytes_used: u64,
}

struct Entry<'a> {
    name: &'a [u8],
    inode_ref: u64,
    number: u32,
    kind: u16,
}

struct Listing<'a> {
    block: u64,
    offset: u16,
    size: u64,
    /// (offset of the header from the listing start, block, first name).
    index: Vec<(u32, u32, &'a [u8])>,
}

type XattrSet = [(Vec<u8>, Vec<u8>)];

struct Ctx<'a, 'c> {
    tree: &'a Tree,
    files: &'a [FileRec],
    writer_id: u64,
    block_size: u64,
    c: &'c mut Compressor,
    inodes: MetaWriter,
    dirs: MetaWriter,
    ids: Vec<u32>,
    id_map: HashMap<u32, u16>,
    xattr_sets: Vec<&'a XattrSet>,
    xattr_map: HashMap<&'a XattrSet, u32>,
}

pub fn build(
    tree: &Tree,
    files: &[FileRec],
    writer_id: u64,
    opts: &Options,
    c: &mut Compressor,
) -> Result<Built> {
    let n = tree.inodes.len();
    let is_dir = |i: usize| matches!(tree.inodes[i].kind, Kind::Dir(_));

    // Pass 1: number the reachable inodes, count links, find parents.
    let mut number = vec![0u32; n];
    let mut links = vec![0u32; n];
    let mut parent = vec![0usize; n];
    let mut subdirs = vec![0u32; n];
    let mut count: u32 = 1;
    number[0] = 1;
    let mut order = vec![0usize];
    let mut stack = vec![0usize];
    while let Some(d) = stack.pop() {
        for &child in tree.children(d).values() {
            links[child] = links[child].saturating_add(1);
            if number[child] == 0 {
                // Keep count + 1 free: it is the root's parent number.
                if count >= u32::MAX - 1 {
                    bail!("too many inodes");
                }
                count += 1;
                number[child] = count;
            } else if is_dir(child) {
                bail!("a directory is reachable by two paths");
            }
            if is_dir(child) {
                parent[child] = d;
                subdirs[d] = subdirs[d].saturating_add(1);
                stack.push(child);
                order.push(child);
            }
        }
    }

    // Pass 2: write inodes, children before their directory.
    let mut ctx = Ctx {
        tree,
        files,
        writer_id,
        block_size: u64::from(opts.block_size),
        c,
        inodes: MetaWriter::new(),
        dirs: MetaWriter::new(),
        ids: Vec::new(),
        id_map: HashMap::new(),
        xattr_sets: Vec::new(),
        xattr_map: HashMap::new(),
    };
    let mut refs: Vec<Option<u64>> = vec![None; n];
    for &d in order.iter().rev() {
        let children = tree.children(d);
        let mut entries = Vec::with_capacity(children.len());
        for (name, &child) in children {
            let inode_ref = match refs[child] {
                Some(r) => r,
                None if is_dir(child) => bail!("internal error: directory written out of order"),
                None => {
                    let r = ctx.write_inode(child, number[child], links[child])?;
                    refs[child] = Some(r);
                    r
                }
            };
            let kind = basic_type(&tree.inodes[child].kind);
            entries.push(Entry { name, inode_ref, number: number[child], kind });
        }
        let listing = ctx.write_listing(&entries)?;
        let parent_number = if d == 0 { count + 1 } else { number[parent[d]] };
        let nlink = subdirs[d].saturating_add(2);
        refs[d] = Some(ctx.write_dir(d, number[d], nlink, parent_number, &listing)?);
    }
    let root = refs[0].ok_or_else(|| anyhow!("internal error: root not written"))?;

    let xattrs = ctx.xattr_table()?;
    let Ctx { inodes, dirs, ids, c, .. } = ctx;
    let (inodes, _) = inodes.finish(c);
    let (dirs, _) = dirs.finish(c);
    Ok(Built { inodes, dirs, ids, xattrs, root, inode_count: count })
}

fn basic_type(kind: &Kind) -> u16 {
    match kind {
        Kind::Dir(_) => T_DIR,
        Kind::File(_) => T_FILE,
        Kind::Symlink(_) => T_SYMLINK,
        Kind::Block(_) => T_BLOCK,
        Kind::Char(_) => T_CHAR,
        Kind::Fifo => T_FIFO,
        Kind::Socket => T_SOCKET,
    }
}

impl<'a> Ctx<'a, '_> {
    fn id_index(&mut self, id: u32) -> Result<u16> {
        if let Some(&i) = self.id_map.get(&id) {
            return Ok(i);
        }
        let i = u16::try_from(self.ids.len())
            .ok()
            .filter(|&i| i < u16::MAX)
            .ok_or_else(|| anyhow!("more than 65535 distinct uids and gids"))?;
        self.ids.push(id);
        self.id_map.insert(id, i);
        Ok(i)
    }

    fn xattr_index(&mut self, set: &'a XattrSet) -> Result<Option<u32>> {
        if set.is_empty() {
            return Ok(None);
        }
        if let Some(&i) = self.xattr_map.get(set) {
            return Ok(Some(i));
        }
        let i = u32::try_from(self.xattr_sets.len())
            .ok()
            .filter(|&i| i < NO_XATTR)
            .ok_or_else(|| anyhow!("too many distinct xattr sets"))?;
        self.xattr_sets.push(set);
        self.xattr_map.insert(set, i);
        Ok(Some(i))
    }

    /// The common inode header.
    fn header(
        &mut self,
        v: &mut Vec<u8>,
        index: usize,
        kind: u16,
        extended: bool,
        number: u32,
    ) -> Result<()> {
        let meta = &self.tree.inodes[index].meta;
        let (mode, mtime, uid, gid) = (meta.mode, meta.mtime, meta.uid, meta.gid);
        let uid = self.id_index(uid)?;
        let gid = self.id_index(gid)?;
        v.u16(if extended { kind + EXTENDED } else { kind });
        // Permission bits only: the type is the inode type (the kernel
        // refuses inodes whose mode carries file-type bits).
        v.u16((mode & 0o7777) as u16);
        v.u16(uid);
        v.u16(gid);
        v.u32(mtime);
        v.u32(number);
        Ok(())
    }

    /// Writes a non-directory inode; returns its reference.
    fn write_inode(&mut self, index: usize, number: u32, nlink: u32) -> Result<u64> {
        let tree = self.tree;
        let inode = &tree.inodes[index];
        let xattr = self.xattr_index(&inode.meta.xattrs)?;
        let kind = basic_type(&inode.kind);
        let reference = self.inodes.reference()?;
        let mut v = Vec::with_capacity(64);
        match &inode.kind {
            Kind::Dir(_) => bail!("internal error: directory written as a plain inode"),
            Kind::File(data) => {
                let rec = self
                    .files
                    .get(data.index)
                    .filter(|r| data.writer == self.writer_id && r.len == data.len)
                    .ok_or_else(|| anyhow!("file data from another squashfs writer"))?;
                let full = rec.len / self.block_size;
                let expected = match rec.fragment {
                    Some(_) => full,
                    None => rec.len.div_ceil(self.block_size),
                };
                if rec.blocks.len() as u64 != expected {
                    bail!(
                        "internal error: file has {} blocks, expected {expected}",
                        rec.blocks.len()
                    );
                }
                let (frag, frag_offset) = rec.fragment.unwrap_or((NO_FRAGMENT, 0));
                let sparse = rec.sparse.min(rec.len.saturating_sub(1));
                let extended = rec.len > u64::from(u32::MAX)
                    || rec.start > u64::from(u32::MAX)
                    || nlink > 1
                    || xattr.is_some()
                    || sparse > 0;
                self.header(&mut v, index, kind, extended, number)?;
                if extended {
                    v.u64(rec.start);
                    v.u64(rec.len);
                    v.u64(sparse);
                    v.u32(nlink);
                    v.u32(frag);
                    v.u32(frag_offset);
                    v.u32(xattr.unwrap_or(NO_XATTR));
                } else {
                    v.u32(rec.start as u32);
                    v.u32(frag);
                    v.u32(frag_offset);
                    v.u32(rec.len as u32);
                }
                self.inodes.write(self.c, &v);
                // Block lists can be long: write them in pieces.
                for chunk in rec.blocks.chunks(2048) {
                    v.clear();
                    for &w in chunk {
                        v.u32(w);
                    }
                    self.inodes.write(self.c, &v);
                }
                return Ok(reference);
            }
            Kind::Symlink(target) => {
                self.header(&mut v, index, kind, xattr.is_some(), number)?;
                v.u32(nlink);
                v.u32(target.len() as u32);
                v.extend_from_slice(target);
            }
            Kind::Char(dev) | Kind::Block(dev) => {
                self.header(&mut v, index, kind, xattr.is_some(), number)?;
                v.u32(nlink);
                v.u32(*dev);
            }
            Kind::Fifo | Kind::Socket => {
                self.header(&mut v, index, kind, xattr.is_some(), number)?;
                v.u32(nlink);
            }
        }
        if let Some(x) = xattr {
            v.u32(x);
        }
        self.inodes.write(self.c, &v);
        Ok(reference)
    }

    /// Writes a directory's entries (sorted) as runs under headers.
    fn write_listing<'e>(&mut self, entries: &[Entry<'e>]) -> Result<Listing<'e>> {
        let (block, offset) = self.dirs.pos();
        let start_total = self.dirs.total();
        let mut index = Vec::new();
        let mut last_indexed = block;
        let mut i = 0;
        let mut v = Vec::new();
        while i < entries.len() {
            let (hdr_block, hdr_offset) = self.dirs.pos();
            let first = &entries[i];
            let inode_block = first.inode_ref >> 16;
            let base = first.number;
            // Take entries while they share the inode block, their numbers
            // are within i16 of the base, and the run has not crossed into
            // the next metadata block (so the index can point at each).
            let mut j = i;
            let mut run_bytes = 0usize;
            while j < entries.len() && j - i < DIR_RUN_MAX {
                let e = &entries[j];
                let delta = i64::from(e.number) - i64::from(base);
                if e.inode_ref >> 16 != inode_block
                    || i16::try_from(delta).is_err()
                    || (j > i && usize::from(hdr_offset) + 12 + run_bytes >= METADATA_SIZE)
                {
                    break;
                }
                run_bytes += 8 + e.name.len();
                j += 1;
            }
            let rel = self.dirs.total() - start_total;
            if i > 0 && hdr_block != last_indexed && index.len() < DIR_INDEX_MAX {
                let rel =
                    u32::try_from(rel).map_err(|_| anyhow!("directory listing over 4 GiB"))?;
                let b =
                    u32::try_from(hdr_block).map_err(|_| anyhow!("directory table over 4 GiB"))?;
                index.push((rel, b, first.name));
                last_indexed = hdr_block;
            }
            let inode_block =
                u32::try_from(inode_block).map_err(|_| anyhow!("inode table over 4 GiB"))?;
            v.clear();
            v.u32((j - i - 1) as u32);
            v.u32(inode_block);
            v.u32(base);
            for e in &entries[i..j] {
                v.u16((e.inode_ref & 0xffff) as u16);
                v.u16((i64::from(e.number) - i64::from(base)) as i16 as u16);
                v.u16(e.kind);
                v.u16((e.name.len() - 1) as u16);
                v.extend_from_slice(e.name);
            }
            self.dirs.write(self.c, &v);
            i = j;
        }
        Ok(Listing { block, offset, size: self.dirs.total() - start_total, index })
    }

    fn write_dir(
        &mut self,
        index: usize,
        number: u32,
        nlink: u32,
        parent: u32,
        l: &Listing,
    ) -> Result<u64> {
        let xattr = self.xattr_index(&self.tree.inodes[index].meta.xattrs)?;
        let reference = self.inodes.reference()?;
        let file_size = l.size + 3;
        let block = u32::try_from(l.block).map_err(|_| anyhow!("directory table over 4 GiB"))?;
        let extended = file_size > u64::from(u16::MAX) || xattr.is_some() || !l.index.is_empty();
        let mut v = Vec::with_capacity(64);
        self.header(&mut v, index, T_DIR, extended, number)?;
        if extended {
            let file_size =
                u32::try_from(file_size).map_err(|_| anyhow!("directory listing over 4 GiB"))?;
            v.u32(nlink);
            v.u32(file_size);
            v.u32(block);
            v.u32(parent);
            v.u16(l.index.len() as u16);
            v.u16(l.offset);
            v.u32(xattr.unwrap_or(NO_XATTR));
            for &(rel, b, name) in &l.index {
                v.u32(rel);
                v.u32(b);
                v.u32((name.len() - 1) as u32);
                v.extend_from_slice(name);
            }
        } else {
            v.u32(block);
            v.u32(nlink);
            v.u16(file_size as u16);
            v.u16(l.offset);
            v.u32(parent);
        }
        self.inodes.write(self.c, &v);
        Ok(reference)
    }

    fn xattr_table(&mut self) -> Result<Option<Xattrs>> {
        if self.xattr_sets.is_empty() {
            return Ok(None);
        }
        let mut kv = MetaWriter::new();
        let mut ids = MetaWriter::new();
        let mut v = Vec::new();
        let mut entry = Vec::new();
        for set in &self.xattr_sets {
            let reference = kv.reference()?;
            v.clear();
            for (name, value) in set.iter() {
                let (prefix, id) = XATTR_PREFIXES
                    .iter()
                    .find(|(p, _)| name.starts_with(p))
                    .ok_or_else(|| anyhow!("internal error: unchecked xattr name"))?;
                let suffix = &name[prefix.len()..];
                v.u16(*id);
                v.u16(suffix.len() as u16);
                v.extend_from_slice(suffix);
                v.u32(value.len() as u32);
                v.extend_from_slice(value);
            }
            let size =
                u32::try_from(v.len()).map_err(|_| anyhow!("xattrs of one inode over 4 GiB"))?;
            kv.write(self.c, &v);
            entry.clear();
            entry.u64(reference);
            entry.u32(set.len() as u32);
            entry.u32(size);
            ids.write(self.c, &entry);
        }
        let (kv, _) = kv.finish(self.c);
        let (ids, id_starts) = ids.finish(self.c);
        Ok(Some(Xattrs { kv, ids, id_starts, count: self.xattr_sets.len() as u32 }))
    }
}

/// A lookup table (fixed-size records in metadata blocks) and the offsets
/// of its blocks.
pub fn lookup_table<T>(
    c: &mut Compressor,
    items: &[T],
    put: impl Fn(&mut Vec<u8>, &T),
) -> (Vec<u8>, Vec<u64>) {
    let mut mw = MetaWriter::new();
    let mut v = Vec::new();
    for item in items {
        v.clear();
        put(&mut v, item);
        mw.write(c, &v);
    }
    mw.finish(c)
}

pub fn superblock(opts: &Options, built: &Built, layout: &Layout, fragments: u32) -> Vec<u8> {
    let mut flags = 0;
    if !opts.fragments {
        flags |= FLAG_NO_FRAGMENTS;
    }
    if layout.xattr_table.is_none() {
        flags |= FLAG_NO_XATTRS;
    }
    let mut v = Vec::with_capacity(96);
    v.u32(MAGIC);
    v.u32(built.inode_count);
    v.u32(opts.mtime);
    v.u32(opts.block_size);
    v.u32(fragments);
    v.u16(opts.compression.id());
    v.u16(opts.block_size.trailing_zeros() as u16);
    v.u16(flags);
    v.u16(built.ids.len() as u16);
    v.u16(4);
    v.u16(0);
    v.u64(built.root);
    v.u64(layout.bytes_used);
    v.u64(layout.id_table);
    v.u64(layout.xattr_table.unwrap_or(INVALID));
    v.u64(layout.inode_table);
    v.u64(layout.directory_table);
    v.u64(layout.fragment_table);
    v.u64(INVALID);
    v
}
