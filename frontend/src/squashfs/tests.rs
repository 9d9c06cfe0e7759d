//! Tests: images are checked by Debian's `unsquashfs` (skipped when it is
//! not installed) and, when running as root, by mounting them with the
//! kernel.

use super::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Cursor, Read as _, Seek as _};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// Mount checks run one at a time.
static MOUNT_LOCK: Mutex<()> = Mutex::new(());

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("husk-sqfs-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Unmounts on drop, whatever happened in between.
struct Mounted(PathBuf);

impl Mounted {
    fn new(img: &Path, dir: &Path) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "squashfs", "-o", "loop,ro"])
            .arg(img)
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount failed: {}", String::from_utf8_lossy(&out.stderr));
        Mounted(dir.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn have(cmd: &str) -> bool {
    Command::new(cmd).arg("--help").output().is_ok()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.trim_ascii() == b"0").unwrap_or(false)
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

fn text_bytes(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 64);
    let mut i = 0;
    while v.len() < n {
        v.extend_from_slice(
            format!("line {i}: the quick brown fox jumps over the lazy dog\n").as_bytes(),
        );
        i += 1;
    }
    v.truncate(n);
    v
}

#[derive(Clone, Debug)]
enum EKind {
    Dir,
    File(Arc<Vec<u8>>),
    Symlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    Socket,
}

#[derive(Clone, Debug)]
struct Expect {
    kind: EKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u32,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    nlink: u32,
    inode: InodeId,
}

type XattrList = Vec<(Vec<u8>, Vec<u8>)>;

/// Expected entries by path ("" is the root).
type Expected = BTreeMap<Vec<u8>, Expect>;

fn x(name: &str, value: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (name.as_bytes().to_vec(), value.to_vec())
}

struct Case<W: Write + Seek> {
    w: Writer<W>,
    tree: Tree,
    exp: Expected,
    clock: u32,
}

impl<W: Write + Seek> Case<W> {
    fn new(w: Writer<W>) -> Self {
        let root = Meta { mode: 0o755, uid: 0, gid: 0, mtime: 1_600_000_000, xattrs: vec![] };
        let tree = Tree::new(root).unwrap();
        let mut exp = Expected::new();
        exp.insert(
            vec![],
            Expect {
                kind: EKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 1_600_000_000,
                xattrs: vec![],
                nlink: 0,
                inode: tree.root(),
            },
        );
        Case { w, tree, exp, clock: 1_700_000_000 }
    }

    fn add(
        &mut self,
        path: &[u8],
        kind: EKind,
        mode: u32,
        owner: (u32, u32),
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    ) {
        self.clock += 61;
        let node = match &kind {
            EKind::Dir => Node::Dir,
            EKind::File(data) => {
                Node::File(self.w.write_file_data(&mut &data[..], data.len() as u64).unwrap())
            }
            EKind::Symlink(t) => Node::Symlink(t.clone()),
            EKind::Char(major, minor) => Node::CharDevice { major: *major, minor: *minor },
            EKind::Block(major, minor) => Node::BlockDevice { major: *major, minor: *minor },
            EKind::Fifo => Node::Fifo,
            EKind::Socket => Node::Socket,
        };
        let meta =
            Meta { mode, uid: owner.0, gid: owner.1, mtime: self.clock, xattrs: xattrs.clone() };
        let inode = self.tree.insert(path, node, meta).unwrap();
        let e = Expect {
            kind,
            mode,
            uid: owner.0,
            gid: owner.1,
            mtime: self.clock,
            xattrs,
            nlink: 0,
            inode,
        };
        self.exp.insert(path.to_vec(), e);
    }

    fn file(&mut self, path: &[u8], data: &Arc<Vec<u8>>, mode: u32) {
        self.add(path, EKind::File(Arc::clone(data)), mode, (0, 0), vec![]);
    }

    fn dir(&mut self, path: &[u8], mode: u32) {
        self.add(path, EKind::Dir, mode, (0, 0), vec![]);
    }

    fn link(&mut self, path: &[u8], target: &[u8]) {
        let id = self.tree.lookup(target).unwrap();
        self.tree.link(path, id).unwrap();
        let e = self.exp[target].clone();
        self.exp.insert(path.to_vec(), e);
    }

    /// Fills in the link counts and writes the image.
    fn finish(mut self) -> (W, Expected) {
        let mut counts: BTreeMap<(bool, InodeId), u32> = BTreeMap::new();
        let paths: Vec<Vec<u8>> = self.exp.keys().cloned().collect();
        for p in &paths {
            let e = &self.exp[p];
            if let EKind::Dir = e.kind {
                // A directory counts its subdirectories and itself twice.
                *counts.entry((true, e.inode)).or_default() += 2;
                if !p.is_empty() {
                    let parent = parent_of(p);
                    let pid = self.exp[parent].inode;
                    *counts.entry((true, pid)).or_default() += 1;
                }
            } else {
                *counts.entry((false, e.inode)).or_default() += 1;
            }
        }
        for e in self.exp.values_mut() {
            e.nlink = counts[&(matches!(e.kind, EKind::Dir), e.inode)];
        }
        let (out, _) = self.w.finish(&self.tree).unwrap();
        (out, self.exp)
    }
}

fn parent_of(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => &p[..i],
        None => b"",
    }
}

fn name_of(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => &p[i + 1..],
        None => p,
    }
}

/// The test image: every kind of inode and the awkward sizes and names.
fn build_image(opts: Options) -> (Vec<u8>, Expected) {
    let w = Writer::new(Cursor::new(Vec::new()), opts).unwrap();
    let mut c = Case::new(w);
    let bs = opts.block_size as usize;
    let text = Arc::new(text_bytes(5000));

    c.add(b"a", EKind::Dir, 0o755, (0, 0), vec![x("user.dir", b"top")]);
    c.add(b"a/b", EKind::Dir, 0o700, (1000, 1000), vec![]);
    c.dir(b"a/b/c", 0o755);
    c.add(b"a/b/c/deep.txt", EKind::File(Arc::clone(&text)), 0o644, (1000, 100), vec![]);
    c.dir(b"empty", 0o755);
    c.file(b"empty_file", &Arc::new(vec![]), 0o600);
    c.file(b"one_block", &Arc::new(random_bytes(bs, 1)), 0o644);
    c.file(b"one_block_plus", &Arc::new(random_bytes(bs + 1, 2)), 0o644);
    c.file(b"random3m", &Arc::new(random_bytes(3_000_000, 3)), 0o644);
    c.file(b"zeros10m", &Arc::new(vec![0; 10 << 20]), 0o644);
    c.file(b"zeros_odd", &Arc::new(vec![0; 1_000_001]), 0o644);
    c.file(b"text1m", &Arc::new(text_bytes((1 << 20) + 17)), 0o644);
    // A file both compressible and not, with a hole in the middle.
    let mut mixed = random_bytes(bs * 2, 4);
    mixed.extend(vec![0; bs * 3]);
    mixed.extend(text_bytes(bs + 100));
    c.file(b"mixed", &Arc::new(mixed), 0o640);

    c.dir(b"bin", 0o755);
    c.file(b"bin/su", &Arc::new(text_bytes(2000)), 0o4755);
    c.add(b"bin/sg", EKind::File(Arc::new(text_bytes(2100))), 0o2755, (0, 42), vec![]);
    let cap = [1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c.add(
        b"bin/ping",
        EKind::File(Arc::new(random_bytes(70_000, 5))),
        0o755,
        (0, 0),
        vec![x("security.capability", &cap), x("user.comment", b"ping!"), x("trusted.note", b"t")],
    );
    c.add(
        b"bin/hl1",
        EKind::File(Arc::new(text_bytes(3000))),
        0o755,
        (100_000, 200_000),
        vec![x("user.x", b"hl")],
    );
    c.link(b"bin/hl2", b"bin/hl1");
    c.link(b"a/b/hl3", b"bin/hl1");
    // Hard links to an inode without xattrs: extended for nlink alone.
    c.add(b"bin/plain", EKind::File(Arc::new(text_bytes(10))), 0o644, (7, 8), vec![]);
    c.link(b"bin/plain2", b"bin/plain");
    c.add(b"tmp", EKind::Dir, 0o1777, (0, 0), vec![]);
    c.add(b"shared", EKind::Dir, 0o2775, (0, 50), vec![]);

    c.add(b"a/link", EKind::Symlink(b"b/c/deep.txt".to_vec()), 0o777, (0, 0), vec![]);
    c.link(b"a/link2", b"a/link");
    c.add(b"abs", EKind::Symlink(b"/etc/passwd".to_vec()), 0o777, (0, 0), vec![]);
    let mut long = b"x/".repeat(500);
    long.extend_from_slice(b"end");
    c.add(b"longlink", EKind::Symlink(long), 0o777, (0, 0), vec![]);
    c.add(b"seclink", EKind::Symlink(b"a".to_vec()), 0o777, (0, 0), vec![x("security.husk", b"s")]);

    c.dir(b"dev", 0o755);
    c.add(b"dev/null", EKind::Char(1, 3), 0o666, (0, 0), vec![]);
    c.link(b"dev/null2", b"dev/null");
    c.add(b"dev/sda", EKind::Block(8, 0), 0o660, (0, 6), vec![]);
    c.add(b"dev/big", EKind::Char(300, 70_000), 0o600, (0, 0), vec![]);
    c.add(b"dev/fifo", EKind::Fifo, 0o644, (0, 0), vec![]);
    c.add(b"dev/sock", EKind::Socket, 0o755, (0, 0), vec![]);
    c.add(b"dev/xnull", EKind::Char(1, 3), 0o666, (0, 0), vec![x("trusted.t", b"dev")]);
    c.add(b"dev/xsda", EKind::Block(8, 16), 0o660, (0, 0), vec![x("security.husk", b"blk")]);
    c.add(b"dev/xfifo", EKind::Fifo, 0o644, (0, 0), vec![x("security.husk", b"f")]);
    c.add(b"dev/xsock", EKind::Socket, 0o644, (0, 0), vec![x("trusted.s", &[0, 1, 2, 255])]);

    c.dir(b"names", 0o755);
    let small = Arc::new(b"small\n".to_vec());
    let mut long_name = b"names/".to_vec();
    long_name.extend(vec![b'n'; 255]);
    c.file(&long_name, &small, 0o644);
    for name in
        [&b"\xc3\xa9-utf8"[..], b"\xff-high", b" sp ace", b"A", b"a", b"_", b"~", b"a.b", b"a-b"]
    {
        let mut p = b"names/".to_vec();
        p.extend_from_slice(name);
        c.file(&p, &small, 0o644);
    }

    // 3000 entries with long names: a listing over 64 KiB, with an index.
    c.dir(b"many", 0o755);
    let tiny = Arc::new(b"tiny".to_vec());
    for i in 0..3000 {
        let p = format!("many/entry-{i:05}-abcdefghijklmnopqrstuvwxyz");
        if i % 100 == 0 {
            c.dir(p.as_bytes(), 0o755);
        } else if i % 7 == 0 {
            c.add(p.as_bytes(), EKind::Symlink(b"../a".to_vec()), 0o777, (0, 0), vec![]);
        } else {
            c.add(p.as_bytes(), EKind::File(Arc::clone(&tiny)), 0o644, (i % 5, i % 3), vec![]);
        }
    }
    c.file(b"many/entry-00100-abcdefghijklmnopqrstuvwxyz/inside", &small, 0o644);
    // A hard link whose inode number is far from its neighbours'.
    c.link(b"many/zz-hardlink", b"bin/hl1");
    c.link(b"many/aa-hardlink", b"bin/plain");

    // Many thousands of entries (all empty files sharing no data).
    c.dir(b"huge", 0o755);
    let nothing = Arc::new(vec![]);
    for i in 0..20_000 {
        c.file(format!("huge/f{i}").as_bytes(), &nothing, 0o644);
    }

    let (out, exp) = c.finish();
    (out.into_inner(), exp)
}

fn mode_string(kind: &EKind, mode: u32) -> String {
    let t = match kind {
        EKind::Dir => 'd',
        EKind::File(_) => '-',
        EKind::Symlink(_) => 'l',
        EKind::Char(..) => 'c',
        EKind::Block(..) => 'b',
        EKind::Fifo => 'p',
        EKind::Socket => 's',
    };
    let mut s = String::from(t);
    for (shift, special, lower, upper) in
        [(6, 0o4000, 's', 'S'), (3, 0o2000, 's', 'S'), (0, 0o1000, 't', 'T')]
    {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// "YYYY-MM-DD HH:MM" in UTC.
fn utc_minute(t: u32) -> String {
    let days = i64::from(t / 86400);
    let secs = t % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", secs / 3600, secs % 3600 / 60)
}

/// Splits off `n` space-separated fields; returns them and the rest.
fn fields(line: &[u8], n: usize) -> (Vec<&[u8]>, &[u8]) {
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < n {
        while i < line.len() && line[i] == b' ' {
            i += 1;
        }
        let start = i;
        while i < line.len() && line[i] != b' ' {
            i += 1;
        }
        out.push(&line[start..i]);
    }
    (out, line.get(i + 1..).unwrap_or(b""))
}

fn unsquashfs(args: &[&OsStr]) -> std::process::Output {
    Command::new("unsquashfs").args(args).env("TZ", "UTC").output().unwrap()
}

/// Checks the image with unsquashfs: superblock, listing, contents.
fn check_with_unsquashfs(img: &Path, exp: &Expected, comp: &str) {
    let s = unsquashfs(&["-s".as_ref(), img.as_os_str()]);
    let text = String::from_utf8_lossy(&s.stdout);
    assert!(s.status.success(), "unsquashfs -s: {text} {}", String::from_utf8_lossy(&s.stderr));
    assert!(text.contains("Found a valid SQUASHFS 4:0 superblock"), "{text}");
    assert!(text.contains(&format!("Compression {comp}")), "{text}");

    let l = unsquashfs(&["-lln".as_ref(), img.as_os_str()]);
    assert!(l.status.success(), "unsquashfs -lln: {}", String::from_utf8_lossy(&l.stderr));
    assert!(l.stderr.is_empty(), "unsquashfs -lln: {}", String::from_utf8_lossy(&l.stderr));
    let mut seen = 0;
    for line in l.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let (f, _) = fields(line, 1);
        // Devices show "major, minor" with padding after the comma.
        let mut joined = line.to_vec();
        if f[0].starts_with(b"c") || f[0].starts_with(b"b") {
            let comma = joined.iter().position(|&b| b == b',').unwrap();
            while joined.get(comma + 1) == Some(&b' ') {
                joined.remove(comma + 1);
            }
        }
        let line = &joined[..];
        let (f, rest) = fields(line, 5);
        let rest = rest.strip_prefix(b"squashfs-root").unwrap_or_else(|| panic!("{line:?}"));
        let rest = rest.strip_prefix(b"/").unwrap_or(rest);
        let (path, target) = if f[0].starts_with(b"l") {
            let i = rest.windows(4).position(|w| w == b" -> ").unwrap();
            (&rest[..i], Some(&rest[i + 4..]))
        } else {
            (rest, None)
        };
        let what = String::from_utf8_lossy(line);
        let e = exp.get(path).unwrap_or_else(|| panic!("unexpected entry: {what}"));
        seen += 1;
        assert_eq!(f[0], mode_string(&e.kind, e.mode).as_bytes(), "{what}");
        assert_eq!(f[1], format!("{}/{}", e.uid, e.gid).as_bytes(), "{what}");
        let when = format!(
            "{} {}",
            String::from_utf8_lossy(f[f.len() - 2]),
            String::from_utf8_lossy(f[f.len() - 1])
        );
        assert_eq!(when, utc_minute(e.mtime), "{what}");
        match &e.kind {
            EKind::File(d) => assert_eq!(f[2], d.len().to_string().as_bytes(), "{what}"),
            EKind::Symlink(t) => {
                assert_eq!(f[2], t.len().to_string().as_bytes(), "{what}");
                assert_eq!(target, Some(&t[..]), "{what}");
            }
            EKind::Char(ma, mi) | EKind::Block(ma, mi) => {
                // unsquashfs prints the stored number as (n >> 8, n & 0xff);
                // the kernel check below decodes it properly.
                let n = (mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12);
                assert_eq!(f[2], format!("{},{}", n >> 8, n & 0xff).as_bytes(), "{what}");
            }
            EKind::Fifo | EKind::Socket => assert_eq!(f[2], b"0", "{what}"),
            EKind::Dir => {}
        }
    }
    assert_eq!(seen, exp.len(), "unsquashfs listed {seen} entries, expected {}", exp.len());

    for (path, e) in exp {
        let EKind::File(data) = &e.kind else { continue };
        // Sample the big directories; check everything else.
        let sampled = path.starts_with(b"huge/") || path.starts_with(b"many/");
        if sampled && !path.ends_with(b"7-abcdefghijklmnopqrstuvwxyz") && !path.ends_with(b"f19999")
        {
            continue;
        }
        let out = unsquashfs(&["-cat".as_ref(), img.as_os_str(), OsStr::from_bytes(path)]);
        assert!(out.status.success(), "unsquashfs -cat {}", String::from_utf8_lossy(path));
        assert!(
            out.stdout == **data,
            "unsquashfs -cat {}: contents differ",
            String::from_utf8_lossy(path)
        );
    }
}

fn major_minor(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// Undoes getfattr's octal escapes in file names.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let octal = s.get(i + 1..i + 4).filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(o)) = (s[i], octal) {
            out.push(((o[0] - b'0') << 6) | ((o[1] - b'0') << 3) | (o[2] - b'0'));
            i += 4;
        } else if s[i] == b'\\' && s.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

fn hex(s: &[u8]) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| {
            u8::from_str_radix(std::str::from_utf8(&s[2 * i..2 * i + 2]).unwrap(), 16).unwrap()
        })
        .collect()
}

/// Mounts the image with the kernel and compares every entry.
fn check_with_kernel(img: &Path, exp: &Expected, scratch: &Path) {
    let _lock = MOUNT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mnt = scratch.join("mnt");
    let _m = Mounted::new(img, &mnt);
    let at = |p: &[u8]| -> PathBuf {
        let mut full = mnt.as_os_str().as_bytes().to_vec();
        if !p.is_empty() {
            full.push(b'/');
            full.extend_from_slice(p);
        }
        PathBuf::from(OsStr::from_bytes(&full))
    };
    let mut children: BTreeMap<&[u8], Vec<&[u8]>> = BTreeMap::new();
    for path in exp.keys().filter(|p| !p.is_empty()) {
        children.entry(parent_of(path)).or_default().push(name_of(path));
    }
    for (path, e) in exp {
        let full = at(path);
        let what = String::from_utf8_lossy(path).into_owned();
        let m = std::fs::symlink_metadata(&full).unwrap_or_else(|err| panic!("stat {what}: {err}"));
        let ft = m.file_type();
        assert_eq!(m.mode() & 0o7777, e.mode, "{what}");
        assert_eq!((m.uid(), m.gid()), (e.uid, e.gid), "{what}");
        assert_eq!(m.mtime(), i64::from(e.mtime), "{what}");
        assert_eq!(m.nlink(), u64::from(e.nlink), "nlink of {what}");
        match &e.kind {
            EKind::Dir => {
                assert!(ft.is_dir(), "{what}");
                let mut names: Vec<Vec<u8>> = std::fs::read_dir(&full)
                    .unwrap()
                    .map(|d| d.unwrap().file_name().as_bytes().to_vec())
                    .collect();
                names.sort();
                let mut want: Vec<Vec<u8>> = children
                    .get(&path[..])
                    .map(|v| v.iter().map(|n| n.to_vec()).collect())
                    .unwrap_or_default();
                want.sort();
                assert!(names == want, "entries of {what}");
            }
            EKind::File(data) => {
                assert!(ft.is_file(), "{what}");
                assert_eq!(m.size(), data.len() as u64, "{what}");
                let sampled = path.starts_with(b"huge/") || path.starts_with(b"many/");
                if !sampled
                    || path.ends_with(b"f19999")
                    || path.ends_with(b"7-abcdefghijklmnopqrstuvwxyz")
                {
                    assert!(std::fs::read(&full).unwrap() == **data, "contents of {what}");
                }
            }
            EKind::Symlink(t) => {
                assert!(ft.is_symlink(), "{what}");
                assert_eq!(
                    std::fs::read_link(&full).unwrap().as_os_str().as_bytes(),
                    &t[..],
                    "{what}"
                );
            }
            EKind::Char(ma, mi) => {
                assert!(ft.is_char_device(), "{what}");
                assert_eq!(major_minor(m.rdev()), (*ma, *mi), "{what}");
            }
            EKind::Block(ma, mi) => {
                assert!(ft.is_block_device(), "{what}");
                assert_eq!(major_minor(m.rdev()), (*ma, *mi), "{what}");
            }
            EKind::Fifo => assert!(ft.is_fifo(), "{what}"),
            EKind::Socket => assert!(ft.is_socket(), "{what}"),
        }
    }

    if !have("getfattr") {
        println!("xattrs not checked: getfattr not installed (apt-get install attr)");
        return;
    }
    let out = Command::new("getfattr")
        .args(["-R", "-h", "-d", "-m", "-", "-e", "hex", "--absolute-names"])
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "getfattr: {}", String::from_utf8_lossy(&out.stderr));
    let prefix = mnt.as_os_str().as_bytes();
    let mut got: BTreeMap<Vec<u8>, XattrList> = BTreeMap::new();
    let mut cur: Option<Vec<u8>> = None;
    for line in out.stdout.split(|&b| b == b'\n') {
        if let Some(f) = line.strip_prefix(b"# file: ") {
            let f = unescape(f);
            let rel = f.strip_prefix(prefix).unwrap().to_vec();
            let rel = rel.strip_prefix(b"/").unwrap_or(&rel).to_vec();
            cur = Some(rel);
        } else if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let value = line[eq + 1..].strip_prefix(b"0x").map(hex).unwrap_or_else(|| {
                // getfattr shows an empty value without "0x"
                vec![]
            });
            got.entry(cur.clone().unwrap()).or_default().push((line[..eq].to_vec(), value));
        }
    }
    let want: BTreeMap<Vec<u8>, XattrList> = exp
        .iter()
        .filter(|(_, e)| !e.xattrs.is_empty())
        .map(|(p, e)| {
            let mut x = e.xattrs.clone();
            x.sort();
            (p.clone(), x)
        })
        .collect();
    for v in got.values_mut() {
        v.sort();
    }
    assert_eq!(got, want);
}

fn check_image(opts: Options, comp: &str, tag: &str) {
    let (img, exp) = build_image(opts);
    assert_eq!(img.len() % 4096, 0);
    if !have("unsquashfs") {
        println!("skipped: unsquashfs not installed");
        return;
    }
    let dir = TempDir::new(tag);
    let path = dir.0.join("img.sqfs");
    std::fs::write(&path, &img).unwrap();
    check_with_unsquashfs(&path, &exp, comp);
    if is_root() {
        check_with_kernel(&path, &exp, &dir.0);
    } else {
        println!("kernel mount not checked: not running as root");
    }
}

#[test]
fn squashfs_zstd_image() {
    let opts = Options { mtime: 1_234_567_890, ..Options::default() };
    check_image(opts, "zstd", "zstd");
}

#[test]
fn squashfs_gzip_image() {
    let opts = Options { compression: Compression::Gzip { level: 6 }, ..Options::default() };
    check_image(opts, "gzip", "gzip");
}

#[test]
fn squashfs_small_blocks_no_fragments() {
    let opts = Options {
        compression: Compression::Zstd { level: 19 },
        block_size: 4096,
        fragments: false,
        threads: 3,
        ..Options::default()
    };
    check_image(opts, "zstd", "small");
}

#[test]
fn squashfs_big_blocks_gzip_one_thread() {
    let opts = Options {
        compression: Compression::Gzip { level: 1 },
        block_size: 1 << 20,
        threads: 1,
        ..Options::default()
    };
    check_image(opts, "gzip", "big");
}

#[test]
fn squashfs_deterministic() {
    let a = build_image(Options { threads: 1, ..Options::default() }).0;
    let b = build_image(Options { threads: 4, ..Options::default() }).0;
    assert!(a == b, "two writes of the same tree differ");
}

/// The image is relative to where the output was when the writer started.
#[test]
fn squashfs_at_an_offset() {
    let tiny = |out: Cursor<Vec<u8>>| {
        let mut w = Writer::new(out, Options::default()).unwrap();
        let d = w.write_file_data(&mut &b"hello"[..], 5).unwrap();
        let mut t = Tree::new(Meta { mode: 0o755, ..Meta::default() }).unwrap();
        t.insert("f", Node::File(d), Meta { mode: 0o644, ..Meta::default() }).unwrap();
        let (out, len) = w.finish(&t).unwrap();
        (out.into_inner(), len)
    };
    let (plain, len) = tiny(Cursor::new(Vec::new()));
    assert_eq!(plain.len() as u64, len);
    let mut prefixed = Cursor::new(vec![7u8; 1000]);
    prefixed.seek(SeekFrom::End(0)).unwrap();
    let (shifted, len2) = tiny(prefixed);
    assert_eq!(len, len2);
    assert!(shifted[..1000].iter().all(|&b| b == 7));
    assert!(shifted[1000..] == plain[..]);
}

/// A file over 4 GiB (mostly a hole, so the test stays quick).
#[test]
fn squashfs_file_over_4gib() {
    let hole: u64 = (9 << 29) + 12345; // 4.5 GiB and a bit
    let tail = text_bytes(300_000);
    let len = hole + tail.len() as u64;
    let mut w = Writer::new(Cursor::new(Vec::new()), Options::default()).unwrap();
    let mut reader = std::io::repeat(0).take(hole).chain(&tail[..]);
    let d = w.write_file_data(&mut reader, len).unwrap();
    let mut t = Tree::new(Meta { mode: 0o755, ..Meta::default() }).unwrap();
    t.insert("big", Node::File(d), Meta { mode: 0o644, mtime: 5, ..Meta::default() }).unwrap();
    let (out, _) = w.finish(&t).unwrap();
    let img = out.into_inner();
    assert!(img.len() < 4 << 20, "the hole should take no space");
    if !have("unsquashfs") {
        println!("skipped: unsquashfs not installed");
        return;
    }
    let dir = TempDir::new("big");
    let path = dir.0.join("img.sqfs");
    std::fs::write(&path, &img).unwrap();
    let l = unsquashfs(&["-lln".as_ref(), path.as_os_str()]);
    assert!(l.status.success());
    let listing = String::from_utf8_lossy(&l.stdout);
    assert!(
        listing.lines().any(|l| l.contains(&format!(" {len} ")) && l.ends_with("/big")),
        "{listing}"
    );
    if !is_root() {
        println!("kernel mount not checked: not running as root");
        return;
    }
    let _lock = MOUNT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mnt = dir.0.join("mnt");
    let _m = Mounted::new(&path, &mnt);
    let mut f = std::fs::File::open(mnt.join("big")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), len);
    let mut buf = vec![0u8; 1 << 20];
    f.seek(SeekFrom::Start(hole - 4096)).unwrap();
    let mut got = Vec::new();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got[..4096].iter().all(|&b| b == 0));
    assert!(got[4096..] == tail[..]);
}

#[test]
fn squashfs_rejects_bad_input() {
    let meta = || Meta { mode: 0o644, ..Meta::default() };
    assert!(Writer::new(
        Cursor::new(Vec::new()),
        Options { block_size: 1000, ..Options::default() }
    )
    .is_err());
    assert!(Writer::new(
        Cursor::new(Vec::new()),
        Options { block_size: 2 << 20, ..Options::default() }
    )
    .is_err());
    let gz = Options { compression: Compression::Gzip { level: 10 }, ..Options::default() };
    assert!(Writer::new(Cursor::new(Vec::new()), gz).is_err());

    let mut w = Writer::new(Cursor::new(Vec::new()), Options::default()).unwrap();
    // A reader that ends early.
    assert!(w.write_file_data(&mut &b"abc"[..], 10).is_err());
    let d = w.write_file_data(&mut &b"abc"[..], 3).unwrap();

    let mut t = Tree::new(meta()).unwrap();
    assert!(t.insert("missing/f", Node::File(d.clone()), meta()).is_err());
    assert!(t.insert("../f", Node::Fifo, meta()).is_err());
    assert!(t.insert("a\0b", Node::Fifo, meta()).is_err());
    assert!(t.insert(vec![b'n'; 256], Node::Fifo, meta()).is_err());
    assert!(t.insert("s", Node::Symlink(vec![]), meta()).is_err());
    assert!(t.insert("s", Node::Symlink(vec![b'x'; 5000]), meta()).is_err());
    assert!(t.insert("c", Node::CharDevice { major: 4096, minor: 0 }, meta()).is_err());
    assert!(t.insert("c", Node::CharDevice { major: 0, minor: 1 << 20 }, meta()).is_err());
    let bad = |name: &str| Meta { xattrs: vec![x(name, b"v")], ..meta() };
    assert!(t.insert("x", Node::Fifo, bad("system.posix_acl_access")).is_err());
    assert!(t.insert("x", Node::Fifo, bad("user.")).is_err());
    let dup = Meta { xattrs: vec![x("user.a", b"1"), x("user.a", b"2")], ..meta() };
    assert!(t.insert("x", Node::Fifo, dup).is_err());
    assert!(t.insert("", Node::Fifo, meta()).is_err());

    let f = t.insert("./f", Node::File(d.clone()), meta()).unwrap();
    assert!(t.insert("f", Node::File(d.clone()), meta()).is_err());
    assert!(t.insert("f/g", Node::Fifo, meta()).is_err());
    t.insert("dir", Node::Dir, meta()).unwrap();
    assert!(t.link("dir2", t.lookup("dir").unwrap()).is_err());
    assert!(t.link("f", f).is_err());
    t.link("dir/f", f).unwrap();
    // Re-inserting a directory updates it in place.
    t.insert("dir/", Node::Dir, Meta { mode: 0o700, ..meta() }).unwrap();
    assert!(t.lookup("dir/f").is_some());
    assert!(t.remove("dir/f").unwrap());
    assert!(!t.remove("dir/f").unwrap());
    assert!(!t.remove("nowhere/f").unwrap());
    assert!(t.remove("/").is_err());
    let other = Tree::new(meta()).unwrap();
    assert!(t.link("g", other.root()).is_err());

    // File data from another writer.
    let mut w2 = Writer::new(Cursor::new(Vec::new()), Options::default()).unwrap();
    let d2 = w2.write_file_data(&mut &b"xyz"[..], 3).unwrap();
    let mut t2 = Tree::new(meta()).unwrap();
    t2.insert("g", Node::File(d2), meta()).unwrap();
    assert!(w.finish(&t2).is_err());
    // The right one works.
    assert!(w2.finish(&t2).is_ok());
}

/// Throughput on real files: `cargo test -p husk --release squashfs_speed
/// -- --ignored --nocapture` with SQUASHFS_SPEED_SRC=DIR (default
/// /usr/lib), stopping after SQUASHFS_SPEED_MB megabytes (default 200).
#[test]
#[ignore]
fn squashfs_speed() {
    let src =
        PathBuf::from(std::env::var("SQUASHFS_SPEED_SRC").unwrap_or_else(|_| "/usr/lib".into()));
    let limit: u64 =
        std::env::var("SQUASHFS_SPEED_MB").ok().and_then(|s| s.parse().ok()).unwrap_or(200) << 20;
    let level: i32 =
        std::env::var("SQUASHFS_SPEED_LEVEL").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let out_path =
        std::env::temp_dir().join(format!("husk-sqfs-speed-{}.sqfs", std::process::id()));
    let start = std::time::Instant::now();
    let out = std::fs::File::create(&out_path).unwrap();
    let opts = Options { compression: Compression::Zstd { level }, ..Options::default() };
    let mut w = Writer::new(std::io::BufWriter::new(out), opts).unwrap();
    let mut tree = Tree::new(Meta { mode: 0o755, ..Meta::default() }).unwrap();
    let mut total = 0u64;
    let mut stack = vec![PathBuf::new()];
    'walk: while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> =
            std::fs::read_dir(src.join(&rel)).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let relp = rel.join(e.file_name());
            let m = e.path().symlink_metadata().unwrap();
            let meta =
                Meta { mode: m.mode(), uid: m.uid(), gid: m.gid(), mtime: 0, xattrs: vec![] };
            let key = relp.as_os_str().as_bytes().to_vec();
            if m.is_dir() {
                tree.insert(&key, Node::Dir, meta).unwrap();
                stack.push(relp);
            } else if m.is_symlink() {
                let t = std::fs::read_link(e.path()).unwrap();
                tree.insert(&key, Node::Symlink(t.as_os_str().as_bytes().to_vec()), meta).unwrap();
            } else if m.is_file() {
                let mut f = std::fs::File::open(e.path()).unwrap();
                let d = w.write_file_data(&mut f, m.len()).unwrap();
                tree.insert(&key, Node::File(d), meta).unwrap();
                total += m.len();
                if total >= limit {
                    break 'walk;
                }
            }
        }
    }
    let (_, len) = w.finish(&tree).unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "squashfs speed: {:.1} MB in {secs:.2} s = {:.1} MB/s, image {:.1} MB (zstd {level})",
        total as f64 / 1e6,
        total as f64 / 1e6 / secs,
        len as f64 / 1e6
    );
    let _ = std::fs::remove_file(&out_path);
}
