//! Hand-built layers for what image tools will not produce: each case
//! writes an OCI image layout from tar layers made here (names set byte for
//! byte where the tar crate would normalise them), converts it with
//! `husk build` as the test user, and checks the resulting tree against the
//! layer rules of semantics.md ("Layer semantics", permissions). Corrupt
//! inputs must fail with status 255, one line naming the blob or entry, and
//! leave nothing in the cache or beside the destination.

mod common;
use common::*;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use tar::{EntryType, Header};

/// The SIF partition husk writes (the squashfs starts here).
const OFFSET: &str = "32768";

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

/// A tar layer written entry by entry.
struct Tar(tar::Builder<Vec<u8>>);

/// Write `v` as a NUL-terminated octal field, as tar headers hold numbers.
fn octal(field: &mut [u8], v: u64) {
    let digits = format!("{:0w$o}", v, w = field.len() - 1);
    field[..digits.len()].copy_from_slice(digits.as_bytes());
    field[digits.len()] = 0;
}

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    /// An entry whose name is stored exactly as given: tools never write
    /// `/abs` or `../x`, and the tar crate's path setters refuse them.
    fn raw(
        &mut self,
        name: &str,
        ty: EntryType,
        mode: u32,
        data: &[u8],
        set: impl FnOnce(&mut Header),
    ) -> &mut Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        assert!(name.len() <= 100, "{name}: use long_name for names over 100 bytes");
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        set(&mut h);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(name, EntryType::Directory, mode, b"", |_| {})
    }

    fn file(&mut self, name: &str, mode: u32, data: &str) -> &mut Self {
        self.raw(name, EntryType::Regular, mode, data.as_bytes(), |_| {})
    }

    fn owned_file(&mut self, name: &str, mode: u32, uid: u64, data: &str) -> &mut Self {
        self.raw(name, EntryType::Regular, mode, data.as_bytes(), |h| {
            h.set_uid(uid);
            h.set_gid(uid);
        });
        self
    }

    fn owned_dir(&mut self, name: &str, mode: u32, uid: u64) -> &mut Self {
        self.raw(name, EntryType::Directory, mode, b"", |h| {
            h.set_uid(uid);
            h.set_gid(uid);
        });
        self
    }

    /// A whiteout marker: an empty file named `.wh.NAME` (or the opaque one).
    fn whiteout(&mut self, name: &str) -> &mut Self {
        self.file(name, 0o644, "")
    }

    fn link(&mut self, ty: EntryType, name: &str, target: &str) -> &mut Self {
        self.raw(name, ty, 0o777, b"", |h| h.set_link_name_literal(target).unwrap())
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.link(EntryType::Link, name, target)
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.link(EntryType::Symlink, name, target)
    }

    fn char_dev(&mut self, name: &str, major: u32, minor: u32) -> &mut Self {
        self.raw(name, EntryType::Char, 0o600, b"", |h| {
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
        });
        self
    }

    fn fifo(&mut self, name: &str) -> &mut Self {
        self.raw(name, EntryType::Fifo, 0o600, b"", |_| {})
    }

    /// PAX records for the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.0.append_pax_extensions(records.iter().copied()).unwrap();
        self
    }

    /// A name over 100 bytes as GNU tar writes it (a `././@LongLink` entry).
    fn gnu_long_name(&mut self, name: &str, data: &str) -> &mut Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, name, data.as_bytes()).unwrap();
        self
    }

    /// A name over 100 bytes as a PAX `path` record; the header's own name
    /// is a decoy the record must override.
    fn pax_long_name(&mut self, name: &str, data: &str) -> &mut Self {
        self.pax(&[("path", name.as_bytes())]);
        self.raw("decoy-pax-name", EntryType::Regular, 0o644, data.as_bytes(), |_| {})
    }

    /// A GNU sparse file (type `S`) of `size` bytes holding `chunks` at
    /// their offsets, zeros elsewhere. Chunks but the last are 512 bytes;
    /// a file that ends in a hole ends with an empty chunk at `size`, as
    /// GNU tar writes it.
    fn sparse(&mut self, name: &str, size: u64, chunks: &[(u64, Vec<u8>)]) -> &mut Self {
        let stored: Vec<u8> = chunks.iter().flat_map(|(_, d)| d.iter().copied()).collect();
        self.raw(name, EntryType::GNUSparse, 0o644, &stored, |h| {
            let gnu = h.as_gnu_mut().unwrap();
            for (slot, (off, data)) in gnu.sparse.iter_mut().zip(chunks) {
                octal(&mut slot.offset, *off);
                octal(&mut slot.numbytes, data.len() as u64);
            }
            octal(&mut gnu.realsize, size);
        });
        self
    }

    fn bytes(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// A layer blob as stored, with the digest of its uncompressed tar.
#[derive(Clone)]
struct Blob {
    media_type: &'static str,
    data: Vec<u8>,
    diff_id: String,
}

impl Blob {
    fn plain(tar: Vec<u8>) -> Blob {
        Blob { media_type: TAR, diff_id: sha256(&tar), data: tar }
    }

    fn gzip(tar: Vec<u8>) -> Blob {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        Blob { media_type: TAR_GZ, diff_id: sha256(&tar), data: gz.finish().unwrap() }
    }

    /// Compressed with the `zstd` program; `None` where it is not installed.
    fn zstd(tar: Vec<u8>) -> Option<Blob> {
        let mut child = Command::new("zstd")
            .args(["-q", "-c", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        child.stdin.take().unwrap().write_all(&tar).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "zstd failed");
        Some(Blob { media_type: TAR_ZSTD, diff_id: sha256(&tar), data: out.stdout })
    }

    fn digest(&self) -> String {
        sha256(&self.data)
    }
}

/// The host's architecture as OCI names it (what husk picks by default).
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256(data), "size": data.len() })
}

/// One test case's directory: an OCI layout, a directory the test user
/// writes SIFs into, and a cache directory of its own.
struct Case {
    root: PathBuf,
}

impl Case {
    fn new(name: &str) -> Case {
        let e = env().unwrap();
        let root = e.work.join("layers-edge").join(name);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("layout/blobs/sha256")).unwrap();
        std::fs::create_dir_all(root.join("out")).unwrap();
        sh(&format!("chmod 755 {0} {0}/.. && chown {1} {0}/out", root.display(), e.user));
        Case { root }
    }

    fn layout(&self) -> PathBuf {
        self.root.join("layout")
    }

    fn source(&self) -> String {
        format!("oci:{}", self.layout().display())
    }

    fn out(&self) -> PathBuf {
        self.root.join("out")
    }

    fn cache(&self) -> PathBuf {
        self.out().join("cache")
    }

    fn put_blob(&self, data: &[u8]) -> String {
        let d = sha256(data);
        std::fs::write(self.layout().join("blobs/sha256").join(hex(&d)), data).unwrap();
        d
    }

    /// Write the layout: `layers` in manifest order. Returns the manifest's
    /// bytes.
    fn write(&self, layers: &[&Blob]) -> Vec<u8> {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": host_arch(),
            "os": "linux",
            "config": { "Env": ["PATH=/bin"] },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }))
        .unwrap();
        self.put_blob(&config);
        for l in layers {
            self.put_blob(&l.data);
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": descriptor(CONFIG, &config),
            "layers": layers.iter().map(|l| descriptor(l.media_type, &l.data)).collect::<Vec<_>>(),
        }))
        .unwrap();
        self.put_blob(&manifest);
        let mut desc = descriptor(MANIFEST, &manifest);
        desc["annotations"] = json!({ "org.opencontainers.image.ref.name": "latest" });
        self.write_index(&json!({ "schemaVersion": 2, "manifests": [desc] }));
        std::fs::write(self.layout().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .unwrap();
        sh(&format!("chmod -R a+rX {}", self.layout().display()));
        manifest
    }

    fn write_index(&self, index: &Value) {
        std::fs::write(self.layout().join("index.json"), serde_json::to_vec(index).unwrap())
            .unwrap();
    }

    /// `husk build` as the test user; the SIF's path on success.
    fn build(&self) -> PathBuf {
        let dest = self.out().join("image.sif");
        let r = self.try_build(&dest);
        assert_eq!(r.code, 0, "husk build {}: {}", self.source(), r.stderr);
        dest
    }

    fn try_build(&self, dest: &Path) -> Run {
        husk(&["build", &dest.to_string_lossy(), &self.source()])
            .env("HUSK_CACHEDIR", &self.cache().to_string_lossy())
            .run()
    }
}

/// The merged tree as `unsquashfs -lln` lists it, one line per entry:
/// `MODE UID/GID SIZE PATH[ -> TARGET]` (devices show `MAJOR,MINOR` as
/// SIZE), without husk's own `/.singularity.d`.
fn listing(sif: &Path) -> Vec<String> {
    let out = Command::new("unsquashfs")
        .args(["-o", OFFSET, "-lln"])
        .arg(sif)
        .output()
        .expect("run unsquashfs");
    assert!(out.status.success(), "unsquashfs -lln: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let at = l.find("squashfs-root")?;
            let path = &l[at + "squashfs-root".len()..];
            let path = if path.is_empty() { "/" } else { path };
            if path.starts_with("/.singularity.d") {
                return None;
            }
            let fields: Vec<&str> = l[..at].split_whitespace().collect();
            // MODE OWNER SIZE-or-"MAJ, MIN" DATE TIME
            // (a directory's size depends on the squashfs writer: not shown)
            let size: String = if fields[0].starts_with('d') {
                "-".into()
            } else {
                fields[2..fields.len() - 2].concat()
            };
            Some(format!("{} {} {} {}", fields[0], fields[1], size, path))
        })
        .collect();
    lines.sort();
    lines
}

/// One file's bytes, read from the SIF with `unsquashfs -cat`.
fn cat(sif: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("unsquashfs")
        .args(["-o", OFFSET, "-cat"])
        .arg(sif)
        .arg(path)
        .output()
        .expect("run unsquashfs");
    assert!(
        out.status.success(),
        "unsquashfs -cat {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn cat_str(sif: &Path, path: &str) -> String {
    String::from_utf8(cat(sif, path)).unwrap()
}

/// The whole tree extracted as root (ownership, devices, xattrs kept),
/// for what a listing does not show: inode identity and xattrs.
fn extract(sif: &Path) -> PathBuf {
    let dir = sif.with_extension("root");
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new("unsquashfs")
        .args(["-q", "-n", "-o", OFFSET, "-d"])
        .arg(&dir)
        .arg(sif)
        .output()
        .expect("run unsquashfs");
    assert!(out.status.success(), "unsquashfs: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

fn ino(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().ino()
}

/// A static busybox from the Apptainer fixture, to look at the tree from
/// inside a container; `None` (with a message) where the fixture is absent.
fn busybox_layer() -> Option<Blob> {
    let Some(rootfs) = image(Kind::Dir) else {
        eprintln!("skipped: checks inside the container need the busybox fixture");
        return None;
    };
    let data = std::fs::read(rootfs.join("bin/busybox")).unwrap();
    let mut t = Tar::new();
    t.dir("bin/", 0o755);
    t.raw("bin/busybox", EntryType::Regular, 0o755, &data, |_| {});
    Some(Blob::gzip(t.bytes()))
}

/// `busybox APPLET ARGS...` inside the container, as the test user.
fn inside(sif: &Path, argv: &[&str]) -> Run {
    let mut a = vec!["exec", "--no-home"];
    let s = sif.to_string_lossy().into_owned();
    a.push(&s);
    a.push("/bin/busybox");
    a.extend_from_slice(argv);
    husk(&a).run()
}

fn lines(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn hard_links_to_earlier_layers_keep_their_content() {
    if env().is_none() {
        return;
    }
    let c = Case::new("hardlinks");
    let l1 = Blob::gzip(
        Tar::new()
            .file("orig", 0o644, "first")
            .file("victim", 0o644, "victim")
            .file("shared", 0o644, "shared")
            .bytes(),
    );
    // Links in a later layer to files of the first.
    let l2 = Blob::gzip(
        Tar::new()
            .hardlink("link", "orig")
            .hardlink("vlink", "victim")
            .hardlink("slink", "shared")
            .bytes(),
    );
    // Then `orig` is overwritten and `victim` deleted.
    let l3 = Blob::gzip(Tar::new().file("orig", 0o644, "second!").whiteout(".wh.victim").bytes());
    c.write(&[&l1, &l2, &l3]);
    let sif = c.build();
    assert_eq!(
        listing(&sif),
        lines(&[
            "drwxr-xr-x 0/0 - /",
            "-rw-r--r-- 0/0 5 /link",
            "-rw-r--r-- 0/0 7 /orig",
            "-rw-r--r-- 0/0 6 /shared",
            "-rw-r--r-- 0/0 6 /slink",
            "-rw-r--r-- 0/0 6 /vlink",
        ])
    );
    // semantics.md: a later entry replaces the name, hard links resolve in
    // the merged tree: the link keeps the inode it named, with its content.
    assert_eq!(cat_str(&sif, "orig"), "second!");
    assert_eq!(cat_str(&sif, "link"), "first");
    assert_eq!(cat_str(&sif, "vlink"), "victim");
    let root = extract(&sif);
    assert_eq!(ino(&root.join("shared")), ino(&root.join("slink")));
    assert_ne!(ino(&root.join("orig")), ino(&root.join("link")));
}

#[test]
fn a_whiteout_then_entries_below_the_same_name() {
    if env().is_none() {
        return;
    }
    let c = Case::new("whiteout-deeper");
    let l1 = Blob::gzip(
        Tar::new()
            .dir("a/", 0o755)
            .dir("a/b/", 0o755)
            .file("a/b/old", 0o644, "old")
            .file("a/keep", 0o644, "k")
            .bytes(),
    );
    // `a/.wh.b` hides the lower `a/b`; the same layer then fills it again.
    let l2 = Blob::gzip(Tar::new().whiteout("a/.wh.b").file("a/b/c/d", 0o644, "d").bytes());
    c.write(&[&l1, &l2]);
    let sif = c.build();
    assert_eq!(
        listing(&sif),
        lines(&[
            "drwxr-xr-x 0/0 - /",
            "drwxr-xr-x 0/0 - /a",
            "drwxr-xr-x 0/0 - /a/b",
            "drwxr-xr-x 0/0 - /a/b/c",
            "-rw-r--r-- 0/0 1 /a/b/c/d",
            "-rw-r--r-- 0/0 1 /a/keep",
        ])
    );
}

#[test]
fn types_replace_each_other_across_layers() {
    if env().is_none() {
        return;
    }
    let c = Case::new("types");
    let l1 = Blob::gzip(
        Tar::new()
            .dir("etc/", 0o755)
            .file("etc/hostfile", 0o644, "h")
            .symlink("x", "/etc")
            .dir("y/", 0o755)
            .file("y/f", 0o644, "f")
            .file("z", 0o644, "file")
            .bytes(),
    );
    // The symlink becomes a directory (nothing lands in /etc through it),
    // the directory a symlink, the file a directory.
    let l2 = Blob::gzip(
        Tar::new()
            .dir("x/", 0o755)
            .file("x/in", 0o644, "in")
            .symlink("y", "etc")
            .dir("z/", 0o755)
            .file("z/under", 0o644, "u")
            .bytes(),
    );
    c.write(&[&l1, &l2]);
    let sif = c.build();
    assert_eq!(
        listing(&sif),
        lines(&[
            "drwxr-xr-x 0/0 - /",
            "drwxr-xr-x 0/0 - /etc",
            "-rw-r--r-- 0/0 1 /etc/hostfile",
            "drwxr-xr-x 0/0 - /x",
            "-rw-r--r-- 0/0 2 /x/in",
            "lrwxrwxrwx 0/0 3 /y -> etc",
            "drwxr-xr-x 0/0 - /z",
            "-rw-r--r-- 0/0 1 /z/under",
        ])
    );
}

#[test]
fn names_that_try_to_leave_the_root_stay_inside() {
    let Some(e) = env() else { return };
    let c = Case::new("escape");
    // Names a converter that extracted to disk would write outside its
    // target: the case directory's parent, the host's /etc.
    let canary = e.work.join("layers-edge");
    let outside = ["/abs-husk-test", "/etc/husk-escape", "/etc/husk-escape-rel"];
    let l1 = Blob::gzip(
        Tar::new()
            .dir("etc/", 0o755)
            .file("/abs-husk-test", 0o644, "abs")
            .file("../x", 0o644, "dotdot")
            .file("a/../../../y", 0o644, "deep")
            .symlink("link", "/etc")
            .file("link/husk-escape", 0o644, "via link")
            .symlink("rel", "../../../../etc")
            .file("rel/husk-escape-rel", 0o644, "via rel")
            .bytes(),
    );
    c.write(&[&l1]);
    let sif = c.build();
    assert_eq!(
        listing(&sif),
        lines(&[
            "drwxr-xr-x 0/0 - /",
            "-rw-r--r-- 0/0 3 /abs-husk-test",
            "drwxr-xr-x 0/0 - /etc",
            "-rw-r--r-- 0/0 8 /etc/husk-escape",
            "-rw-r--r-- 0/0 7 /etc/husk-escape-rel",
            "lrwxrwxrwx 0/0 4 /link -> /etc",
            "lrwxrwxrwx 0/0 15 /rel -> ../../../../etc",
            "-rw-r--r-- 0/0 6 /x",
            "-rw-r--r-- 0/0 4 /y",
        ])
    );
    for p in outside {
        assert!(!Path::new(p).exists(), "{p} was written on the host");
    }
    for p in ["x", "y", "../x", "../y"] {
        assert!(!canary.join(p).exists(), "{} was written", canary.join(p).display());
    }
}

#[test]
fn unreadable_files_and_read_only_directories_work_for_the_caller() {
    if env().is_none() {
        return;
    }
    let Some(busybox) = busybox_layer() else { return };
    let c = Case::new("modes");
    let l1 = Blob::gzip(
        Tar::new()
            .file("secret", 0o000, "s3cret")
            .dir("ro/", 0o555)
            .file("ro/later", 0o700, "x")
            .owned_dir("home/", 0o755, 0)
            .owned_dir("home/app/", 0o700, 4321)
            .owned_file("home/app/key", 0o600, 4321, "key")
            .file("suid", 0o4750, "")
            .bytes(),
    );
    // A later layer adds to the 0555 directory.
    let l2 = Blob::gzip(Tar::new().file("ro/from-l2", 0o600, "l2").bytes());
    c.write(&[&busybox, &l1, &l2]);
    let sif = c.build();
    let all = listing(&sif);
    for want in [
        "-r--r--r-- 0/0 6 /secret",
        "dr-xr-xr-x 0/0 - /ro",
        "-rwxr-xr-x 0/0 1 /ro/later",
        "-rw-r--r-- 0/0 2 /ro/from-l2",
        "drwxr-xr-x 4321/4321 - /home/app",
        "-rw-r--r-- 4321/4321 3 /home/app/key",
        "-rwsr-xr-x 0/0 0 /suid",
    ] {
        assert!(all.iter().any(|l| l == want), "{want:?} not in {all:#?}");
    }
    // Inside, the caller reads them all.
    for (path, want) in
        [("/secret", "s3cret"), ("/ro/later", "x"), ("/ro/from-l2", "l2"), ("/home/app/key", "key")]
    {
        let r = inside(&sif, &["cat", path]);
        assert_eq!((r.code, r.stdout.as_str()), (0, want), "cat {path}: {}", r.stderr);
    }
    let r = inside(&sif, &["ls", "/ro"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "from-l2\nlater\n"), "{}", r.stderr);
}

#[test]
fn device_nodes_fifos_setuid_bits_and_xattrs_are_carried() {
    if env().is_none() {
        return;
    }
    let c = Case::new("special");
    let l1 = Blob::gzip(
        Tar::new()
            .dir("dev/", 0o755)
            .char_dev("dev/husk-null", 1, 3)
            .raw("dev/husk-block", EntryType::Block, 0o660, b"", |h| {
                h.set_device_major(7).unwrap();
                h.set_device_minor(200).unwrap();
            })
            .fifo("pipe")
            .pax(&[("SCHILY.xattr.user.note", b"hello xattr")])
            .file("noted", 0o644, "n")
            .bytes(),
    );
    c.write(&[&l1]);
    let sif = c.build();
    let all = listing(&sif);
    for want in [
        "crw-r--r-- 0/0 1,3 /dev/husk-null",
        "brw-rw-r-- 0/0 7,200 /dev/husk-block",
        "prw-r--r-- 0/0 0 /pipe",
        "-rw-r--r-- 0/0 1 /noted",
    ] {
        assert!(all.iter().any(|l| l == want), "{want:?} not in {all:#?}");
    }
    let root = extract(&sif);
    let out = Command::new("getfattr")
        .args(["--only-values", "-n", "user.note"])
        .arg(root.join("noted"))
        .output()
        .expect("run getfattr");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello xattr", "{out:?}");
}

#[test]
fn long_names_sparse_files_and_duplicates() {
    if env().is_none() {
        return;
    }
    let c = Case::new("names");
    let gnu = format!("{}/{}", "g".repeat(120), "f".repeat(79));
    let pax = format!("{}/{}", "p".repeat(150), "f".repeat(49));
    assert_eq!((gnu.len(), pax.len()), (200, 200));
    let chunk = vec![b'a'; 512];
    let l1 = Blob::gzip(
        Tar::new()
            .gnu_long_name(&gnu, "gnu")
            .pax_long_name(&pax, "pax")
            .sparse(
                "sparse",
                12288,
                &[(0, chunk.clone()), (8192, b"end".to_vec()), (12288, vec![])],
            )
            .file("dup", 0o644, "one")
            .file("dup", 0o644, "two")
            .dir("dirthenfile/", 0o755)
            .file("dirthenfile", 0o644, "file")
            .bytes(),
    );
    c.write(&[&l1]);
    let sif = c.build();
    assert_eq!(cat_str(&sif, &gnu), "gnu");
    assert_eq!(cat_str(&sif, &pax), "pax");
    assert!(
        !listing(&sif).iter().any(|l| l.contains("decoy")),
        "the PAX path record did not override the header's name"
    );
    let mut want = chunk;
    want.resize(8192, 0);
    want.extend_from_slice(b"end");
    want.resize(12288, 0);
    assert_eq!(cat(&sif, "sparse"), want, "the sparse file's bytes");
    assert_eq!(cat_str(&sif, "dup"), "two", "the last duplicate wins");
    assert_eq!(cat_str(&sif, "dirthenfile"), "file");
}

#[test]
fn plain_gzip_and_zstd_layers_and_a_layer_listed_twice() {
    if env().is_none() {
        return;
    }
    let Some(l3) = Blob::zstd(Tar::new().file("z", 0o644, "zstd").bytes()) else {
        eprintln!("skipped: the zstd program is not installed");
        return;
    };
    let c = Case::new("compression");
    let l1 = Blob::plain(Tar::new().file("f", 0o644, "plain").file("p", 0o644, "p").bytes());
    let l2 = Blob::gzip(Tar::new().whiteout(".wh.f").file("g", 0o644, "gzip").bytes());
    // l1 again on top: `f` comes back.
    c.write(&[&l1, &l2, &l3, &l1]);
    let sif = c.build();
    assert_eq!(
        listing(&sif),
        lines(&[
            "drwxr-xr-x 0/0 - /",
            "-rw-r--r-- 0/0 5 /f",
            "-rw-r--r-- 0/0 4 /g",
            "-rw-r--r-- 0/0 1 /p",
            "-rw-r--r-- 0/0 4 /z",
        ])
    );
    assert_eq!(cat_str(&sif, "f"), "plain");
    assert_eq!(cat_str(&sif, "z"), "zstd");
}

/// A conversion that must fail: status 255, one line naming `needle`,
/// no SIF written and nothing in the cache.
fn assert_refused(c: &Case, needle: &str) {
    let dest = c.out().join("bad.sif");
    let r = c.try_build(&dest);
    assert_one_line_error(&r, needle);
    assert!(!dest.exists(), "a failed build left {}", dest.display());
    let out = c.out();
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "cache")
        .collect();
    assert_eq!(left, Vec::<String>::new(), "files left beside the destination");
    let sifs = c.cache().join("sif");
    if sifs.exists() {
        let kept: Vec<String> = std::fs::read_dir(&sifs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sif"))
            .collect();
        assert_eq!(kept, Vec::<String>::new(), "the cache kept a SIF");
    }
}

#[test]
fn a_truncated_gzip_layer_names_the_blob() {
    if env().is_none() {
        return;
    }
    let c = Case::new("truncated");
    let good = Blob::gzip(Tar::new().file("f", 0o644, &"x".repeat(100_000)).bytes());
    let mut bad = good.clone();
    bad.data.truncate(bad.data.len() / 2);
    c.write(&[&bad]);
    assert_refused(&c, &bad.digest());
}

#[test]
fn a_manifest_naming_a_missing_blob_names_it() {
    if env().is_none() {
        return;
    }
    let c = Case::new("missing");
    let l1 = Blob::gzip(Tar::new().file("f", 0o644, "f").bytes());
    c.write(&[&l1]);
    std::fs::remove_file(c.layout().join("blobs/sha256").join(hex(&l1.digest()))).unwrap();
    assert_refused(&c, &l1.digest());
}

#[test]
fn garbage_after_a_tar_header_names_the_blob() {
    if env().is_none() {
        return;
    }
    let c = Case::new("garbage");
    let mut tar = Tar::new().file("f", 0o644, "ok").bytes();
    // Replace the end-of-archive blocks with bytes that are no header.
    let first = 1024;
    tar.truncate(first);
    tar.extend(std::iter::repeat_n(0x5a, 2048));
    let l1 = Blob::gzip(tar);
    c.write(&[&l1]);
    assert_refused(&c, &l1.digest());
}

#[test]
fn an_index_without_the_hosts_platform_says_so() {
    if env().is_none() {
        return;
    }
    let c = Case::new("platform");
    let l1 = Blob::gzip(Tar::new().file("f", 0o644, "f").bytes());
    let manifest = c.write(&[&l1]);
    // index.json names an image index whose one image is for another
    // architecture.
    let other = if host_arch() == "s390x" { "riscv64" } else { "s390x" };
    let mut m = descriptor(MANIFEST, &manifest);
    m["platform"] = json!({ "os": "linux", "architecture": other });
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": INDEX, "manifests": [m],
    }))
    .unwrap();
    c.put_blob(&nested);
    let mut d = descriptor(INDEX, &nested);
    d["annotations"] = json!({ "org.opencontainers.image.ref.name": "latest" });
    c.write_index(&json!({ "schemaVersion": 2, "manifests": [d] }));
    sh(&format!("chmod -R a+rX {}", c.layout().display()));
    assert_refused(&c, "platform");
}
