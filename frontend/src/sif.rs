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

/// SIF architecture code for an OCI architecture name.
pub fn arch_code(oci_arch: &str) -> [u8; 3] {
    let code: &[u8; 2] = match oci_arch {
        "386" => b"01",
        "amd64" => b"02",
        "arm" => b"03",
        "arm64" => b"04",
        "ppc64" => b"05",
        "ppc64le" => b"06",
        "mips" => b"07",
        "mipsle" => b"08",
        "mips64" => b"09",
        "mips64le" => b"10",
        "s390x" => b"11",
        "riscv64" => b"12",
        _ => b"00",
    };
    [code[0], code[1], 0]
}

const LAUNCH: &[u8] = b"#!/usr/bin/env run-singularity\n";
const DESCRIPTORS_AT: u64 = 4096;
const DESCRIPTOR_SLOTS: u64 = 48;
/// Where the first object (the squashfs partition) starts.
pub const DATA_AT: u64 = 32768;
const GROUP: u32 = 0xf000_0001;
const ALIGN: u64 = 4096;

fn align(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// Writes a SIF in one pass: the caller first writes the squashfs
/// partition at [`DATA_AT`] (through [`partition`](Self::partition)), then
/// [`finish`](Self::finish) appends the JSON objects, the descriptor table
/// and the header. Every field comes from the arguments, so the same
/// inputs give the same bytes.
pub struct SifWriter<'a> {
    file: &'a mut File,
}

/// A view of a file shifted by `base`, so that a writer can seek as if it
/// started at 0.
pub struct Shifted<'a> {
    file: &'a mut File,
    base: u64,
}

impl std::io::Write for Shifted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Shifted<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let abs = match pos {
            SeekFrom::Start(n) => self.file.seek(SeekFrom::Start(self.base + n))?,
            other => self.file.seek(other)?,
        };
        abs.checked_sub(self.base).ok_or_else(|| std::io::Error::other("seek before partition"))
    }
}

pub struct Info<'a> {
    pub arch: [u8; 3],
    pub uuid: [u8; 16],
    pub time: i64,
    /// (name, JSON bytes) of the generic JSON objects.
    pub json: &'a [(String, Vec<u8>)],
}

impl<'a> SifWriter<'a> {
    pub fn new(file: &'a mut File) -> Self {
        SifWriter { file }
    }

    pub fn partition(&mut self) -> std::io::Result<Shifted<'_>> {
        self.file.seek(SeekFrom::Start(DATA_AT))?;
        Ok(Shifted { file: self.file, base: DATA_AT })
    }

    pub fn finish(self, partition_len: u64, info: &Info<'_>) -> std::io::Result<()> {
        use std::io::Write;
        struct D<'n> {
            data_type: i32,
            offset: u64,
            size: u64,
            padded: u64,
            name: &'n str,
            part: bool,
        }
        let part_end = DATA_AT + partition_len;
        let mut ds = vec![D {
            data_type: DATA_PARTITION,
            offset: DATA_AT,
            size: partition_len,
            padded: partition_len,
            name: "squashfs",
            part: true,
        }];
        let mut at = align(part_end);
        for (name, data) in info.json {
            self.file.seek(SeekFrom::Start(at))?;
            self.file.write_all(data)?;
            let next = align(at + data.len() as u64);
            ds.push(D {
                data_type: DATA_GENERIC_JSON,
                offset: at,
                size: data.len() as u64,
                padded: next - at,
                name,
                part: false,
            });
            at = next;
        }
        let end = ds.last().map_or(part_end, |d| d.offset + d.size);
        if ds.len() as u64 > DESCRIPTOR_SLOTS {
            return Err(std::io::Error::other("too many SIF objects"));
        }
        let mut table = vec![0u8; (DESCRIPTOR_SLOTS as usize) * DESCRIPTOR_LEN];
        for (i, d) in ds.iter().enumerate() {
            let b = &mut table[i * DESCRIPTOR_LEN..(i + 1) * DESCRIPTOR_LEN];
            b[0..4].copy_from_slice(&d.data_type.to_le_bytes());
            b[4] = 1;
            b[5..9].copy_from_slice(&(i as u32 + 1).to_le_bytes());
            b[9..13].copy_from_slice(&GROUP.to_le_bytes());
            b[17..25].copy_from_slice(&(d.offset as i64).to_le_bytes());
            b[25..33].copy_from_slice(&(d.size as i64).to_le_bytes());
            b[33..41].copy_from_slice(&(d.padded as i64).to_le_bytes());
            b[41..49].copy_from_slice(&info.time.to_le_bytes());
            b[49..57].copy_from_slice(&info.time.to_le_bytes());
            let n = d.name.as_bytes();
            let n = &n[..n.len().min(127)];
            b[73..73 + n.len()].copy_from_slice(n);
            if d.part {
                b[201..205].copy_from_slice(&FS_SQUASH.to_le_bytes());
                b[205..209].copy_from_slice(&PART_PRIMSYS.to_le_bytes());
                b[209..212].copy_from_slice(&info.arch);
            }
        }
        let mut h = [0u8; HEADER_LEN];
        h[..LAUNCH.len()].copy_from_slice(LAUNCH);
        h[32..42].copy_from_slice(MAGIC);
        h[42..45].copy_from_slice(b"01\0");
        h[45..48].copy_from_slice(&info.arch);
        h[48..64].copy_from_slice(&info.uuid);
        let fields = [
            info.time,
            info.time,
            (DESCRIPTOR_SLOTS - ds.len() as u64) as i64,
            DESCRIPTOR_SLOTS as i64,
            DESCRIPTORS_AT as i64,
            table.len() as i64,
            DATA_AT as i64,
            (end - DATA_AT) as i64,
        ];
        for (i, v) in fields.iter().enumerate() {
            h[64 + i * 8..72 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        self.file.seek(SeekFrom::Start(DESCRIPTORS_AT))?;
        self.file.write_all(&table)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&h)?;
        self.file.set_len(end)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn written_sif_reads_back() {
        let dir = std::env::temp_dir().join(format!("husk-sif-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.sif");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut w = SifWriter::new(&mut f);
        let mut part = w.partition().unwrap();
        part.write_all(b"hsqs").unwrap();
        part.write_all(&[7u8; 5000]).unwrap();
        part.seek(SeekFrom::Start(4)).unwrap();
        part.write_all(b"!").unwrap();
        let json = vec![("husk.json".to_string(), b"{\"a\":1}".to_vec())];
        let info = Info { arch: arch_code("amd64"), uuid: [9; 16], time: 0, json: &json };
        w.finish(5004, &info).unwrap();
        let mut f = File::open(&path).unwrap();
        let s = Sif::read(&mut f).unwrap();
        let p = s.primary_partition().unwrap();
        assert_eq!((p.offset, p.size), (DATA_AT, 5004));
        assert_eq!(s.json_object(&mut f, "husk.json").unwrap().unwrap(), b"{\"a\":1}");
        let data = std::fs::read(&path).unwrap();
        assert_eq!(&data[DATA_AT as usize..DATA_AT as usize + 5], b"hsqs!");
        assert_eq!(data[32..42], MAGIC[..]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// husk's SIFs have the layout of the Apptainer-built fixture: launch
    /// line, magic, version, architecture code, descriptor table place and
    /// size, data offset, and a primary squashfs partition that husk's
    /// reader finds where the squashfs superblock is.
    #[test]
    fn layout_agrees_with_apptainer_fixture() {
        let Some(fixtures) = std::env::var_os("HUSK_FIXTURES") else {
            eprintln!("skipped: HUSK_FIXTURES unset (../shared/fixtures absent)");
            return;
        };
        let fixture = std::path::Path::new(&fixtures).join("apptainer-busybox_amd64.sif");
        let theirs = std::fs::read(&fixture).unwrap();
        let dir = std::env::temp_dir().join(format!("husk-sif-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.sif");
        let mut f =
            File::options().create(true).truncate(true).read(true).write(true).open(&path).unwrap();
        let mut w = SifWriter::new(&mut f);
        let mut part = w.partition().unwrap();
        part.write_all(b"hsqs").unwrap();
        part.write_all(&[0u8; 4092]).unwrap();
        let json = vec![("husk.json".to_string(), b"{}".to_vec())];
        let info = Info { arch: arch_code("amd64"), uuid: [1; 16], time: 0, json: &json };
        w.finish(4096, &info).unwrap();
        let ours = std::fs::read(&path).unwrap();
        // Launch line, magic, version, architecture.
        assert_eq!(ours[..0x30], theirs[..0x30]);
        // Descriptor table offset and length, data offset (the fixture's
        // data offset is the older 32768, as husk writes it).
        assert_eq!(ours[0x58..0x78], theirs[0x58..0x78]);
        for (file, data) in [(&fixture, &theirs), (&path, &ours)] {
            let sif = Sif::read(&mut File::open(file).unwrap()).unwrap();
            let p = sif.primary_partition().unwrap().clone();
            assert_eq!((p.fs_type, p.part_type), (FS_SQUASH, PART_PRIMSYS), "{}", file.display());
            let at = p.offset as usize;
            assert_eq!(&data[at..at + 4], b"hsqs", "{}: partition start", file.display());
            assert_eq!(p.offset % ALIGN, 0, "{}", file.display());
        }
        let fixture_sif = Sif::read(&mut File::open(&fixture).unwrap()).unwrap();
        assert_eq!(fixture_sif.primary_partition().unwrap().offset, 45056);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
