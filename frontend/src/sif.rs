//! Reading SIF files (the Singularity Image Format): the global header, the
//! descriptor table, and the objects husk needs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

pub const MAGIC: &[u8; 10] = b"SIF_MAGIC\0";
const MAGIC_AT: usize = 32;
const HEADER_LEN: usize = 128;
const DESCRIPTOR_LEN: usize = 585;
/// More descriptors than any real image has; bounds the table we read.
const MAX_DESCRIPTORS: u64 = 4096;

pub const DATA_PARTITION: i32 = 0x4004;
pub const DATA_GENERIC_JSON: i32 = 0x4006;
pub const FS_SQUASH: i32 = 1;
pub const PART_PRIMSYS: i32 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub data_type: i32,
    pub id: u32,
    pub offset: u64,
    pub size: u64,
    pub name: String,
    /// Partition extra: filesystem type and partition type.
    pub fs_type: i32,
    pub part_type: i32,
}

#[derive(Debug)]
pub struct Sif {
    pub descriptors: Vec<Descriptor>,
    pub file_size: u64,
}

pub fn has_magic(head: &[u8]) -> bool {
    head.len() >= MAGIC_AT + MAGIC.len() && &head[MAGIC_AT..MAGIC_AT + MAGIC.len()] == MAGIC
}

fn le_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_le_bytes(a)
}

fn le_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_le_bytes(a)
}

fn nonneg(v: i64, what: &str) -> Result<u64, String> {
    u64::try_from(v).map_err(|_| format!("{what} is negative"))
}

impl Sif {
    /// Parse the header and descriptor table; every extent must lie in the file.
    pub fn read(f: &mut File) -> Result<Sif, String> {
        let file_size = f.metadata().map_err(|e| e.to_string())?.len();
        let mut h = [0u8; HEADER_LEN];
        f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        f.read_exact(&mut h).map_err(|_| "truncated SIF header".to_string())?;
        if !has_magic(&h) {
            return Err("not a SIF file".into());
        }
        let total = nonneg(le_i64(&h, 88), "descriptor count")?;
        let doff = nonneg(le_i64(&h, 96), "descriptor offset")?;
        if total > MAX_DESCRIPTORS {
            return Err(format!("SIF claims {total} descriptors"));
        }
        let table_len = total * DESCRIPTOR_LEN as u64;
        if doff.checked_add(table_len).is_none_or(|end| end > file_size) {
            return Err("truncated SIF: descriptor table lies past the end of the file".into());
        }
        let mut table = vec![0u8; table_len as usize];
        f.seek(SeekFrom::Start(doff)).map_err(|e| e.to_string())?;
        f.read_exact(&mut table).map_err(|_| "truncated SIF descriptor table".to_string())?;
        let mut descriptors = Vec::new();
        for d in table.chunks_exact(DESCRIPTOR_LEN) {
            if d[4] == 0 {
                continue; // unused slot
            }
            let offset = nonneg(le_i64(d, 17), "object offset")?;
            let size = nonneg(le_i64(d, 25), "object size")?;
            let name_raw = &d[73..73 + 128];
            let name_len = name_raw.iter().position(|&b| b == 0).unwrap_or(name_raw.len());
            descriptors.push(Descriptor {
                data_type: le_i32(d, 0),
                id: u32::from_le_bytes([d[5], d[6], d[7], d[8]]),
                offset,
                size,
                name: String::from_utf8_lossy(&name_raw[..name_len]).into_owned(),
                fs_type: le_i32(d, 201),
                part_type: le_i32(d, 205),
            });
        }
        Ok(Sif { descriptors, file_size })
    }

    /// The primary system partition, which must be squashfs and lie in the file.
    pub fn primary_partition(&self) -> Result<&Descriptor, String> {
        let d = self
            .descriptors
            .iter()
            .find(|d| d.data_type == DATA_PARTITION && d.part_type == PART_PRIMSYS)
            .ok_or("SIF has no primary partition")?;
        if d.fs_type != FS_SQUASH {
            return Err(format!("SIF primary partition is not squashfs (type {})", d.fs_type));
        }
        if d.size == 0 || d.offset.checked_add(d.size).is_none_or(|end| end > self.file_size) {
            return Err("truncated SIF: primary partition lies past the end of the file".into());
        }
        Ok(d)
    }

    /// The contents of the generic JSON object called `name`, if any (at most 1 MiB).
    pub fn json_object(&self, f: &mut File, name: &str) -> Result<Option<Vec<u8>>, String> {
        let Some(d) =
            self.descriptors.iter().find(|d| d.data_type == DATA_GENERIC_JSON && d.name == name)
        else {
            return Ok(None);
        };
        if d.size > 1 << 20 || d.offset.checked_add(d.size).is_none_or(|e| e > self.file_size) {
            return Err(format!("SIF object {name} is too large or truncated"));
        }
        let mut buf = vec![0u8; d.size as usize];
        f.seek(SeekFrom::Start(d.offset)).map_err(|e| e.to_string())?;
        f.read_exact(&mut buf).map_err(|_| format!("truncated SIF object {name}"))?;
        Ok(Some(buf))
    }
}
