//! Metadata blocks: a stream of records cut into 8 KiB pieces, each stored
//! with a 16-bit length header (bit 15 set when stored uncompressed).
//! References into such a stream are `(block start << 16) | offset`, the
//! block start counted from the first block of the table.

use super::compress::Compressor;
use anyhow::{bail, Result};

pub const METADATA_SIZE: usize = 8192;
const UNCOMPRESSED: u16 = 0x8000;

/// Builds one metadata table in memory.
pub struct MetaWriter {
    /// Finished on-disk blocks, headers included.
    out: Vec<u8>,
    /// The block being filled (always shorter than 8 KiB between calls).
    buf: Vec<u8>,
    /// On-disk offset of every finished block, relative to the table.
    starts: Vec<u64>,
    /// Uncompressed bytes appended so far.
    total: u64,
}

impl MetaWriter {
    pub fn new() -> Self {
        MetaWriter {
            out: Vec::new(),
            buf: Vec::with_capacity(METADATA_SIZE),
            starts: Vec::new(),
            total: 0,
        }
    }

    /// Where the next byte goes: (on-disk start of its block, offset in it).
    pub fn pos(&self) -> (u64, u16) {
        (self.out.len() as u64, self.buf.len() as u16)
    }

    /// The 64-bit reference of the next byte.
    pub fn reference(&self) -> Result<u64> {
        let (block, offset) = self.pos();
        if block >= 1 << 48 {
            bail!("metadata table larger than 2^48 bytes");
        }
        Ok(block << 16 | u64::from(offset))
    }

    /// Uncompressed bytes appended so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn write(&mut self, c: &mut Compressor, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = (METADATA_SIZE - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            self.total += n as u64;
            if self.buf.len() == METADATA_SIZE {
                self.flush(c);
            }
        }
    }

    fn flush(&mut self, c: &mut Compressor) {
        if self.buf.is_empty() {
            return;
        }
        self.starts.push(self.out.len() as u64);
        match c.compress(&self.buf) {
            Some(z) => {
                // z.len() < buf.len() <= 8192, so it fits in 15 bits.
                self.out.extend_from_slice(&(z.len() as u16).to_le_bytes());
                self.out.extend_from_slice(&z);
            }
            None => {
                self.out.extend_from_slice(&(self.buf.len() as u16 | UNCOMPRESSED).to_le_bytes());
                self.out.extend_from_slice(&self.buf);
            }
        }
        self.buf.clear();
    }

    /// The finished table and the offset of each of its blocks.
    pub fn finish(mut self, c: &mut Compressor) -> (Vec<u8>, Vec<u64>) {
        self.flush(c);
        (self.out, self.starts)
    }
}

/// Little-endian record building.
pub trait Put {
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn u64(&mut self, v: u64);
}

impl Put for Vec<u8> {
    fn u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
}
