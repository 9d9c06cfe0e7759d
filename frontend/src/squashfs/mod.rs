//! A streaming squashfs 4.0 image writer, written from the format
//! description (squashfs-tools-ng's `doc/format.txt` and the Linux kernel's
//! squashfs documentation), for turning merged container layers into the
//! squashfs partition of a SIF without extracting them to disk.
//!
//! # Use
//!
//! ```ignore
//! let mut w = Writer::new(out, Options { compression: Compression::Zstd { level: 3 }, ..Default::default() })?;
//! // File contents first, in any order, each read once from its stream:
//! let data: FileData = w.write_file_data(&mut reader, expected_len)?;
//! // The tree afterwards (or meanwhile):
//! let mut tree = Tree::new(root_meta)?;
//! let id = tree.insert("usr/bin/su", Node::File(data), meta)?;   // parents must exist
//! tree.link("usr/bin/su2", id)?;                                  // hard link: same inode
//! tree.insert("dev/null", Node::CharDevice { major: 1, minor: 3 }, meta2)?;
//! let (out, image_len) = w.finish(&tree)?;
//! ```
//!
//! * `out` is `Write + Seek`; the image starts at its position when
//!   [`Writer::new`] is called (so it can be a partition inside a larger
//!   file). Data blocks are written as they are produced; the superblock is
//!   written last, by seeking back. The image is padded to 4 KiB.
//! * [`Writer::write_file_data`] reads exactly `expected_len` bytes (an
//!   error if the reader ends early) and splits them into blocks that
//!   worker threads compress while the caller reads on; results are put
//!   back in order, so the output is byte-identical whatever the thread
//!   count or timing. At most a few blocks per thread are in flight, so
//!   memory stays bounded whatever the file sizes. Full blocks of zeros
//!   are stored as holes; blocks that do not shrink are stored as they are.
//!   With `Options::fragments` (the default) tails and small files are
//!   packed together into fragment blocks.
//! * The returned [`FileData`] can be put in the tree under any number of
//!   paths: as several inodes sharing the data, or as one inode with
//!   several names ([`Tree::link`], a hard link, with the right nlink).
//! * [`Tree`] holds the inodes: [`Node`] gives the kind (directory, file,
//!   symlink, char/block device, fifo, socket), [`Meta`] the permission
//!   bits (setuid/setgid/sticky included), uid/gid (32-bit), mtime and
//!   xattrs (`user.`, `trusted.` and `security.` names, the ones squashfs
//!   and the kernel support; others are refused). Inserting a directory
//!   over a directory updates its metadata; [`Tree::remove`] and
//!   [`Tree::lookup`] let a caller apply layers and whiteouts in order.
//!   Invalid input (missing parent, `..`, names over 255 bytes, bad device
//!   numbers, ...) is an error, never a panic.
//! * [`Writer::finish`] writes the inode, directory, fragment, id and xattr
//!   tables and the superblock. Inodes are basic or extended as needed
//!   (xattrs, hard links, holes, sizes or offsets past 4 GiB, directory
//!   listings over 64 KiB or over one metadata block, which get a lookup
//!   index). Directory entries are sorted bytewise, as the kernel expects.
//! * The same calls always give the same bytes: nothing depends on the
//!   clock, hashing or thread timing (the caller passes every mtime).
//! * Defaults ([`Options::default`]): zstd level 3, 128 KiB blocks,
//!   fragments on, one compression thread per core, mkfs time 0.
//!
//! Not written: an NFS export table, a compressor options block, and no
//! deduplication of identical files (beyond a caller reusing a FileData).

mod compress;
mod metadata;
mod tables;
mod tree;

#[cfg(test)]
mod tests;

// Not all of the API is used by husk yet.
#[allow(unused_imports)]
pub use compress::Compression;
#[allow(unused_imports)]
pub use tree::{InodeId, Meta, Node, Tree, XATTR_PREFIXES};

use anyhow::{anyhow, bail, Context, Result};
use compress::{Compressor, Done, Job, Packed, Pool, MAX_BLOCK_SIZE};
use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bit 24 of a block size word: the block is stored uncompressed.
const BLOCK_UNCOMPRESSED: u32 = 1 << 24;
const SUPERBLOCK_SIZE: u64 = 96;
/// The image is padded to a multiple of this (the kernel needs 1 or 4 KiB).
const DEVICE_BLOCK: u64 = 4096;

static NEXT_WRITER: AtomicU64 = AtomicU64::new(1);

/// How to write the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub compression: Compression,
    /// A power of two from 4 KiB to 1 MiB (default 128 KiB).
    pub block_size: u32,
    /// The superblock's creation time.
    pub mtime: u32,
    /// Pack file tails and small files into fragment blocks.
    pub fragments: bool,
    /// Compression threads; 0 means one per available core.
    pub threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            compression: Compression::default(),
            block_size: 128 * 1024,
            mtime: 0,
            fragments: true,
            threads: 0,
        }
    }
}

/// The stored contents of one file, as returned by
/// [`Writer::write_file_data`]; only valid with the writer that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileData {
    writer: u64,
    index: usize,
    len: u64,
}

impl FileData {
    /// The file size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Where a file's data went; filled in as its blocks reach the output.
struct FileRec {
    len: u64,
    /// Image offset of the first data block.
    start: u64,
    /// On-disk size words, one per data block.
    blocks: Vec<u32>,
    /// Bytes stored as holes.
    sparse: u64,
    /// Fragment index and offset of the tail.
    fragment: Option<(u32, u32)>,
}

/// What an in-flight block is.
enum Target {
    Block { file: usize, first: bool },
    Fragment,
}

/// Writes one squashfs image; see the module documentation.
pub struct Writer<W: Write + Seek> {
    out: W,
    /// Position of the image in `out`.
    base: u64,
    /// Bytes of the image written so far.
    pos: u64,
    opts: Options,
    id: u64,
    pool: Pool,
    max_in_flight: usize,
    next_seq: u64,
    /// Targets of the blocks submitted and not yet written, in order.
    targets: VecDeque<Target>,
    /// Blocks finished out of order, waiting for their turn.
    finished: BTreeMap<u64, Done>,
    files: Vec<FileRec>,
    /// (image offset, size word) of each written fragment block.
    fragments: Vec<(u64, u32)>,
    fragments_submitted: u32,
    frag_buf: Vec<u8>,
    /// Set after an output or compression failure: the image is unusable.
    failed: bool,
}

impl<W: Write + Seek> Writer<W> {
    pub fn new(mut out: W, opts: Options) -> Result<Self> {
        let bs = opts.block_size;
        if !bs.is_power_of_two() || !(4096..=MAX_BLOCK_SIZE as u32).contains(&bs) {
            bail!("block size {bs} is not a power of two from 4096 to 1048576");
        }
        opts.compression.validate()?;
        let threads = match opts.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        }
        .min(64);
        let pool = Pool::new(opts.compression, threads)?;
        let base = out.stream_position().context("cannot tell the output position")?;
        // Room for the superblock, written by finish.
        out.write_all(&[0; SUPERBLOCK_SIZE as usize]).context("cannot write the image")?;
        Ok(Writer {
            out,
            base,
            pos: SUPERBLOCK_SIZE,
            opts,
            id: NEXT_WRITER.fetch_add(1, Ordering::Relaxed),
            pool,
            max_in_flight: threads * 3 + 2,
            next_seq: 0,
            targets: VecDeque::new(),
            finished: BTreeMap::new(),
            files: Vec::new(),
            fragments: Vec::new(),
            fragments_submitted: 0,
            frag_buf: Vec::new(),
            failed: false,
        })
    }

    /// Stores the contents of one file: exactly `expected_len` bytes read
    /// from `reader` (which is not read further). The data may still be
    /// in flight when this returns; [`Writer::finish`] waits for it.
    pub fn write_file_data(
        &mut self,
        reader: &mut (impl Read + ?Sized),
        expected_len: u64,
    ) -> Result<FileData> {
        self.check()?;
        let index = self.files.len();
        self.files.push(FileRec {
            len: expected_len,
            start: 0,
            blocks: Vec::new(),
            sparse: 0,
            fragment: None,
        });
        let bs = u64::from(self.opts.block_size);
        let mut remaining = expected_len;
        let mut first = true;
        while remaining > 0 {
            let n = remaining.min(bs) as usize;
            let mut buf = vec![0u8; n];
            read_full(reader, &mut buf)
                .with_context(|| format!("file data ended before {expected_len} bytes"))?;
            remaining -= n as u64;
            if (n as u64) < bs && self.opts.fragments {
                self.add_fragment(index, buf)?;
            } else {
                self.submit(Target::Block { file: index, first }, buf, true)?;
                first = false;
            }
        }
        Ok(FileData { writer: self.id, index, len: expected_len })
    }

    /// Writes the tables for `tree` and the superblock; returns the output
    /// and the length of the image (padded to 4 KiB).
    pub fn finish(mut self, tree: &Tree) -> Result<(W, u64)> {
        self.check()?;
        self.flush_fragment()?;
        while !self.targets.is_empty() {
            self.receive_one()?;
        }
        let mut c = Compressor::new(self.opts.compression)?;
        let built = tables::build(tree, &self.files, self.id, &self.opts, &mut c)?;
        let inode_table = self.pos;
        self.put(&built.inodes)?;
        let directory_table = self.pos;
        self.put(&built.dirs)?;

        let (frag_table, frag_starts) =
            tables::lookup_table(&mut c, &self.fragments, |v, &(start, size)| {
                metadata::Put::u64(v, start);
                metadata::Put::u32(v, size);
                metadata::Put::u32(v, 0);
            });
        let fragment_table = self.put_lookup_table(&frag_table, &frag_starts)?;

        let (id_table, id_starts) =
            tables::lookup_table(&mut c, &built.ids, |v, &id| metadata::Put::u32(v, id));
        let id_table = self.put_lookup_table(&id_table, &id_starts)?;

        let xattr_table = match &built.xattrs {
            None => None,
            Some(x) => {
                let kv_start = self.pos;
                self.put(&x.kv)?;
                let blocks_start = self.pos;
                self.put(&x.ids)?;
                let table = self.pos;
                let mut head = Vec::new();
                metadata::Put::u64(&mut head, kv_start);
                metadata::Put::u32(&mut head, x.count);
                metadata::Put::u32(&mut head, 0);
                for s in &x.id_starts {
                    metadata::Put::u64(&mut head, blocks_start + s);
                }
                self.put(&head)?;
                Some(table)
            }
        };

        let layout = tables::Layout {
            inode_table,
            directory_table,
            fragment_table,
            id_table,
            xattr_table,
            bytes_used: self.pos,
        };
        let padded = self.pos.div_ceil(DEVICE_BLOCK) * DEVICE_BLOCK;
        let pad = vec![0u8; (padded - self.pos) as usize];
        self.put(&pad)?;

        let sb = tables::superblock(&self.opts, &built, &layout, self.fragments.len() as u32);
        let end = self.base + padded;
        let res = (|| -> std::io::Result<()> {
            self.out.seek(SeekFrom::Start(self.base))?;
            self.out.write_all(&sb)?;
            self.out.seek(SeekFrom::Start(end))?;
            self.out.flush()
        })();
        res.context("cannot write the superblock")?;
        let Writer { out, .. } = self;
        Ok((out, padded))
    }

    fn check(&self) -> Result<()> {
        if self.failed {
            bail!("an earlier write to this squashfs image failed");
        }
        Ok(())
    }

    fn add_fragment(&mut self, file: usize, data: Vec<u8>) -> Result<()> {
        if self.frag_buf.len() + data.len() > self.opts.block_size as usize {
            self.flush_fragment()?;
        }
        let offset = self.frag_buf.len() as u32;
        self.frag_buf.extend_from_slice(&data);
        self.files[file].fragment = Some((self.fragments_submitted, offset));
        Ok(())
    }

    fn flush_fragment(&mut self) -> Result<()> {
        if self.frag_buf.is_empty() {
            return Ok(());
        }
        if self.fragments_submitted == u32::MAX - 1 {
            self.failed = true;
            bail!("too many fragment blocks");
        }
        let buf = std::mem::take(&mut self.frag_buf);
        self.submit(Target::Fragment, buf, false)?;
        self.fragments_submitted += 1;
        Ok(())
    }

    fn submit(&mut self, target: Target, data: Vec<u8>, sparse_ok: bool) -> Result<()> {
        while self.targets.len() >= self.max_in_flight {
            self.receive_one()?;
        }
        let seq = self.next_seq;
        if let Err(e) = self.pool.submit(Job { seq, data, sparse_ok }) {
            self.failed = true;
            return Err(e);
        }
        self.targets.push_back(target);
        self.next_seq += 1;
        Ok(())
    }

    /// Waits for one block, then writes every block whose turn has come.
    fn receive_one(&mut self) -> Result<()> {
        let res = self.receive_inner();
        if res.is_err() {
            self.failed = true;
        }
        res
    }

    fn receive_inner(&mut self) -> Result<()> {
        let done = self.pool.recv()?;
        self.finished.insert(done.seq, done);
        loop {
            let next = self.next_seq - self.targets.len() as u64;
            let Some(done) = self.finished.remove(&next) else { break };
            let target =
                self.targets.pop_front().ok_or_else(|| anyhow!("block out of sequence"))?;
            let at = self.pos;
            let word = match &done.packed {
                Packed::Sparse => 0,
                Packed::Failed => bail!("compressing a block failed"),
                Packed::Raw(d) => {
                    self.put(d)?;
                    d.len() as u32 | BLOCK_UNCOMPRESSED
                }
                Packed::Compressed(d) => {
                    self.put(d)?;
                    d.len() as u32
                }
            };
            match target {
                Target::Block { file, first } => {
                    let rec = &mut self.files[file];
                    if first {
                        rec.start = at;
                    }
                    rec.blocks.push(word);
                    if let Packed::Sparse = done.packed {
                        rec.sparse += done.raw_len as u64;
                    }
                }
                Target::Fragment => self.fragments.push((at, word)),
            }
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        if let Err(e) = self.out.write_all(bytes) {
            self.failed = true;
            return Err(e).context("cannot write the image");
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes a lookup table's blocks, then their locations; returns the
    /// locations' offset (what the superblock points at).
    fn put_lookup_table(&mut self, blocks: &[u8], starts: &[u64]) -> Result<u64> {
        let blocks_start = self.pos;
        self.put(blocks)?;
        let table = self.pos;
        let mut list = Vec::with_capacity(starts.len() * 8);
        for s in starts {
            metadata::Put::u64(&mut list, blocks_start + s);
        }
        self.put(&list)?;
        Ok(table)
    }
}

/// Reads exactly `buf.len()` bytes.
fn read_full(reader: &mut (impl Read + ?Sized), buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "short read")),
            Ok(n) => filled = (filled + n).min(buf.len()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
