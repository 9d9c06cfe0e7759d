//! Block compression (zstd, or zlib streams for squashfs' "gzip") and the
//! pool of worker threads that compresses data blocks in parallel.
//!
//! The pool only transforms blocks; the caller keeps the order: every job
//! carries a sequence number and the writer puts results back in sequence
//! before they reach the output, so the image does not depend on timing.

use anyhow::{anyhow, bail, Result};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Largest block size squashfs allows (1 MiB).
pub const MAX_BLOCK_SIZE: usize = 1 << 20;

/// Zeros to compare full blocks against (slice equality is a memcmp).
static ZEROS: [u8; MAX_BLOCK_SIZE] = [0; MAX_BLOCK_SIZE];

/// The compressor of an image: one for data blocks and metadata alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// zstd (squashfs compressor id 6; Linux 4.14 and later).
    Zstd {
        /// A zstd compression level (1 to 22; negative levels are faster).
        level: i32,
    },
    /// zlib streams, which squashfs calls "gzip" (id 1; every kernel).
    Gzip {
        /// A zlib level, 1 to 9.
        level: u32,
    },
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd { level: 3 }
    }
}

impl Compression {
    /// The compressor id in the superblock.
    pub fn id(self) -> u16 {
        match self {
            Compression::Gzip { .. } => 1,
            Compression::Zstd { .. } => 6,
        }
    }

    pub fn validate(self) -> Result<()> {
        match self {
            Compression::Zstd { level } => {
                let range = zstd::compression_level_range();
                if level == 0 || !range.contains(&level) {
                    bail!(
                        "zstd level {level} is outside {}..={} (0 excluded)",
                        range.start(),
                        range.end()
                    );
                }
            }
            Compression::Gzip { level } => {
                if !(1..=9).contains(&level) {
                    bail!("gzip level {level} is outside 1..=9");
                }
            }
        }
        Ok(())
    }
}

enum Engine {
    Zstd(zstd::bulk::Compressor<'static>),
    Gzip(flate2::Compress),
}

/// One compressor context, reused from block to block.
pub struct Compressor {
    engine: Engine,
}

impl Compressor {
    pub fn new(compression: Compression) -> Result<Self> {
        compression.validate()?;
        let engine = match compression {
            Compression::Zstd { level } => Engine::Zstd(
                zstd::bulk::Compressor::new(level)
                    .map_err(|e| anyhow!("cannot set up zstd level {level}: {e}"))?,
            ),
            Compression::Gzip { level } => {
                Engine::Gzip(flate2::Compress::new(flate2::Compression::new(level), true))
            }
        };
        Ok(Compressor { engine })
    }

    /// Compresses `input`. `None` means the result would not be smaller
    /// than the input, and the block is to be stored as it is.
    pub fn compress(&mut self, input: &[u8]) -> Option<Vec<u8>> {
        if input.len() < 2 {
            return None;
        }
        // Room for strictly fewer bytes than the input: a result that does
        // not fit is not worth keeping.
        let mut out = Vec::with_capacity(input.len() - 1);
        match &mut self.engine {
            Engine::Zstd(c) => match c.compress_to_buffer(input, &mut out) {
                Ok(n) if n < input.len() => Some(out),
                _ => None,
            },
            Engine::Gzip(c) => {
                c.reset();
                match c.compress_vec(input, &mut out, flate2::FlushCompress::Finish) {
                    Ok(flate2::Status::StreamEnd) if out.len() < input.len() => Some(out),
                    _ => None,
                }
            }
        }
    }
}

/// A block handed to the pool.
pub struct Job {
    pub seq: u64,
    pub data: Vec<u8>,
    /// Whether a block of zeros may be stored as a hole (full data blocks
    /// only; never fragment blocks).
    pub sparse_ok: bool,
}

/// What a block became.
pub enum Packed {
    /// All zeros: nothing is stored, the block size word is 0.
    Sparse,
    /// Stored as it is (bit 24 set in the size word).
    Raw(Vec<u8>),
    Compressed(Vec<u8>),
    /// The compressor panicked.
    Failed,
}

pub struct Done {
    pub seq: u64,
    pub raw_len: usize,
    pub packed: Packed,
}

fn pack(compressor: &mut Compressor, data: Vec<u8>, sparse_ok: bool) -> Packed {
    if sparse_ok && data[..] == ZEROS[..data.len().min(MAX_BLOCK_SIZE)] {
        return Packed::Sparse;
    }
    match compressor.compress(&data) {
        Some(c) => Packed::Compressed(c),
        None => Packed::Raw(data),
    }
}

/// Worker threads, each with its own compressor.
pub struct Pool {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    pub fn new(compression: Compression, threads: usize) -> Result<Self> {
        let (job_tx, job_rx) = channel::<Job>();
        let (done_tx, done_rx) = channel::<Done>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let mut compressor = Compressor::new(compression)?;
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("squashfs-{i}"))
                .spawn(move || loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => match rx.recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        },
                        Err(_) => return,
                    };
                    let raw_len = job.data.len();
                    let (data, sparse_ok) = (job.data, job.sparse_ok);
                    // A panic in a compression library must not leave the
                    // writer waiting for this block forever.
                    let packed = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        pack(&mut compressor, data, sparse_ok)
                    }))
                    .unwrap_or(Packed::Failed);
                    if done_tx.send(Done { seq: job.seq, raw_len, packed }).is_err() {
                        return;
                    }
                })
                .map_err(|e| anyhow!("cannot start a compression thread: {e}"))?;
            workers.push(handle);
        }
        Ok(Pool { jobs: Some(job_tx), done: done_rx, workers })
    }

    pub fn submit(&self, job: Job) -> Result<()> {
        match &self.jobs {
            Some(tx) => tx.send(job).map_err(|_| anyhow!("the compression threads have stopped")),
            None => bail!("the compression threads have stopped"),
        }
    }

    /// Waits for the next finished block (in whatever order they finish).
    pub fn recv(&self) -> Result<Done> {
        self.done.recv().map_err(|_| anyhow!("the compression threads have stopped"))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the job channel ends the workers' loops.
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
