//! Images made by real tools: tests/images/setup.sh builds them with buildah
//! from the Dockerfiles in tests/images/, writes them as OCI layouts, OCI
//! archives and docker-archives, and pushes them to two Distribution
//! registries on 127.0.0.1 (anonymous and basic auth). Every conversion and
//! container here runs as the unprivileged test user.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

const TAG: &str = "latest";

struct Images {
    dir: PathBuf,
    registry: String,
    registry_auth: String,
    user: String,
    password: String,
}

/// The images of tests/images/setup.sh, or `None` (with a message) when it
/// did not run; with HUSK_TEST_REQUIRED=1 that is a failure.
fn images() -> Option<&'static Images> {
    static IMAGES: OnceLock<Option<Images>> = OnceLock::new();
    IMAGES
        .get_or_init(|| {
            env()?;
            let required = std::env::var_os("HUSK_TEST_REQUIRED").is_some();
            let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            let Some(dir) = var("HUSK_TEST_IMAGES") else {
                assert!(!required, "HUSK_TEST_REQUIRED is set but HUSK_TEST_IMAGES is not (tests/images/setup.sh did not run)");
                eprintln!("skipped: image tests need tests/images/setup.sh (HUSK_TEST_IMAGES unset)");
                return None;
            };
            let need = |k: &str| var(k).unwrap_or_else(|| panic!("HUSK_TEST_IMAGES is set but {k} is not"));
            let creds = need("HUSK_TEST_REGISTRY_CREDS");
            let (user, password) = creds.split_once(':').expect("HUSK_TEST_REGISTRY_CREDS is USER:PASSWORD");
            Some(Images {
                dir: dir.into(),
                registry: need("HUSK_TEST_REGISTRY"),
                registry_auth: need("HUSK_TEST_REGISTRY_AUTH"),
                user: user.into(),
                password: password.into(),
            })
        })
        .as_ref()
}

/// Every source form of image `name` that needs no login, labelled.
fn sources(name: &str) -> Vec<(&'static str, String)> {
    let i = images().unwrap();
    let d = i.dir.display();
    vec![
        ("oci", format!("oci:{d}/{name}-oci:{TAG}")),
        ("oci-archive", format!("oci-archive:{d}/{name}.oci.tar:{TAG}")),
        ("docker-archive", format!("docker-archive:{d}/{name}.docker.tar:{name}:{TAG}")),
        ("docker", docker_ref(&i.registry, name, TAG)),
    ]
}

fn docker_ref(registry: &str, name: &str, tag: &str) -> String {
    format!("docker://{registry}/husk-test/{name}:{tag}")
}

fn oci_source(name: &str) -> String {
    format!("oci:{}/{name}-oci:{TAG}", images().unwrap().dir.display())
}

/// A directory of the test user's own for one test, with its own cache
/// (`HUSK_CACHEDIR`), home and credential stores, so tests never share
/// state.
struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    fn new(name: &str) -> Sandbox {
        let e = env().unwrap();
        let base = e.work.join("image-tests");
        let dir = base.join(name);
        sh(&format!(
            "mkdir -p {b} && chmod 755 {b} && rm -rf {d} && mkdir -p {d}/home && chown -R {u}: {d}",
            b = base.display(),
            d = dir.display(),
            u = e.user
        ));
        Sandbox { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn cache(&self) -> PathBuf {
        self.path("cache")
    }

    /// `husk ARGS` as the test user, in this sandbox.
    fn husk(&self, args: &[&str]) -> UserCmd {
        husk(args)
            .env("HUSK_CACHEDIR", &self.cache().to_string_lossy())
            .env("HOME", &self.path("home").to_string_lossy())
            .env("XDG_CONFIG_HOME", &self.path("home/.config").to_string_lossy())
            .env("DOCKER_CONFIG", &self.path("home/.docker").to_string_lossy())
            .cwd(&self.dir)
    }

    /// `husk build NAME.sif SOURCE`, which must succeed.
    fn build(&self, file: &str, source: &str) -> PathBuf {
        self.convert("build", file, source)
    }

    /// `husk pull NAME.sif SOURCE`, which must succeed.
    fn pull(&self, file: &str, source: &str) -> PathBuf {
        self.convert("pull", file, source)
    }

    fn convert(&self, how: &str, file: &str, source: &str) -> PathBuf {
        let dest = self.path(file);
        let r = self.husk(&[how, &dest.to_string_lossy(), source]).run();
        assert_eq!(r.code, 0, "husk {how} {source}: {}", r.stderr);
        dest
    }

    /// The `*.sif` files in the cache's `sif/` directory.
    fn cached_sifs(&self) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(self.cache().join("sif")) else { return vec![] };
        let mut v: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sif"))
            .collect();
        v.sort();
        v
    }

    /// Everything in the cache's `sif/` directory but lock files.
    fn cache_sif_dir_entries(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.cache().join("sif")) else { return vec![] };
        rd.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect()
    }
}

/// The SIF of image `name` converted from its OCI layout, made once and
/// shared by the tests that only run it.
fn sif(name: &'static str) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<std::collections::HashMap<&'static str, PathBuf>>> =
        OnceLock::new();
    let map = BUILT.get_or_init(Default::default);
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(name)
        .or_insert_with(|| {
            Sandbox::new(&format!("shared-{name}")).build(&format!("{name}.sif"), &oci_source(name))
        })
        .clone()
}

/// The primary partition's offset, as `husk inspect --json` reports it.
fn partition_offset(sif: &Path) -> u64 {
    let v = inspect_json(&sif.to_string_lossy());
    v["partition"]["offset"].as_u64().unwrap_or_else(|| panic!("no partition offset in {v}"))
}

fn inspect_json(image: &str) -> Value {
    let r = husk(&["inspect", "--json", image]).run();
    assert_eq!(r.code, 0, "inspect {image}: {}", r.stderr);
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("inspect --json {image}: {e}: {}", r.stdout))
}

/// `unsquashfs -lln` of a SIF's partition: numeric owners, modes, sizes,
/// times and link targets, one entry a line.
fn listing(sif: &Path) -> String {
    let off = partition_offset(sif);
    let out = sh(&format!("unsquashfs -o {off} -lln {}", sif.display()));
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(" squashfs-root")).collect();
    assert!(lines.len() > 100, "unsquashfs -lln {} lists too little:\n{out}", sif.display());
    lines.join("\n")
}

fn sha256_file(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    let data = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The image config of `name` (its OCI layout's only manifest), read with
/// serde_json as any OCI tool would.
fn image_config(name: &str) -> Value {
    let layout = images().unwrap().dir.join(format!("{name}-oci"));
    let read = |p: PathBuf| -> Value {
        let text =
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        serde_json::from_str(&text).unwrap()
    };
    let blob = |digest: &Value| {
        layout.join("blobs/sha256").join(digest.as_str().unwrap().trim_start_matches("sha256:"))
    };
    let index = read(layout.join("index.json"));
    let manifest = read(blob(&index["manifests"][0]["digest"]));
    read(blob(&manifest["config"]["digest"]))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn exec_ok(image: &Path, argv: &[&str]) -> String {
    let mut args = vec!["exec", image.to_str().unwrap()];
    args.extend(argv);
    let r = husk(&args).run();
    assert_eq!(r.code, 0, "exec {argv:?}: {}", r.stderr);
    r.stdout
}

/// Stderr is one line (status 255) that mentions one of `any`.
fn assert_one_line_error_any(r: &Run, any: &[&str]) {
    assert_eq!(r.code, 255, "want status 255, got {} (stderr: {})", r.code, r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line on stderr, got: {:?}", r.stderr);
    let low = lines[0].to_lowercase();
    assert!(
        any.iter().any(|n| low.contains(&n.to_lowercase())),
        "stderr {:?} mentions none of {any:?}",
        lines[0]
    );
}

// --- one image, every source form -----------------------------------------

#[test]
fn every_source_form_gives_the_same_image() {
    if images().is_none() {
        return;
    }
    let sb = Sandbox::new("forms");
    for name in ["layers", "shellentry", "shellcmd"] {
        let mut first: Option<(&str, String)> = None;
        for (form, source) in sources(name) {
            let sif = sb.build(&format!("{name}-{form}.sif"), &source);
            let list = listing(&sif);
            assert!(
                !list.contains("/.wh."),
                "{name} from {form}: a whiteout marker in the image:\n{list}"
            );
            match &first {
                None => first = Some((form, list)),
                Some((f0, l0)) => {
                    assert_eq!(
                        l0, &list,
                        "{name}: {form} gives other contents than {f0} (unsquashfs -lln)"
                    )
                }
            }
            // The metadata a user sees is the same whatever the source.
            let v = inspect_json(&sif.to_string_lossy());
            let config = image_config(name);
            assert_eq!(strings(&v["env"]), strings(&config["config"]["Env"]), "{name} from {form}");
            assert_eq!(
                strings(&v["entrypoint"]),
                strings(&config["config"]["Entrypoint"]),
                "{name} from {form}"
            );
            assert_eq!(strings(&v["cmd"]), strings(&config["config"]["Cmd"]), "{name} from {form}");
        }
    }
}

#[test]
fn a_registry_behind_basic_auth_needs_login() {
    let Some(i) = images() else { return };
    let sb = Sandbox::new("auth");
    let source = docker_ref(&i.registry_auth, "layers", TAG);
    let dest = sb.path("layers.sif");
    let dest_s = dest.to_string_lossy().into_owned();

    let r = sb.husk(&["pull", &dest_s, &source]).run();
    assert_one_line_error_any(&r, &["401", "authentication", "unauthorized"]);
    assert!(!dest.exists(), "a failed pull wrote {}", dest.display());
    assert_eq!(
        sb.cache_sif_dir_entries(),
        Vec::<String>::new(),
        "a failed pull left files in the cache"
    );

    let r = sb
        .husk(&["registry", "login", "--username", &i.user, "--password-stdin", &i.registry_auth])
        .stdin(format!("{}\n", i.password).into_bytes())
        .run();
    assert_eq!(r.code, 0, "registry login: {}", r.stderr);

    sb.pull("layers.sif", &source);
    let reference = sb.build("layers-oci.sif", &oci_source("layers"));
    assert_eq!(
        listing(&dest),
        listing(&reference),
        "the authenticated pull gives other contents than oci:"
    );
}

// --- inside the container ---------------------------------------------------

#[test]
fn deleted_files_are_gone_and_opaque_directories_hold_only_new_entries() {
    if images().is_none() {
        return;
    }
    let img = sif("layers");
    let check = "test ! -e /data/gone.txt && test ! -e /etc/husk-test-gone && cat /data/keep/file \
                 && ls -A /data/opq && cat /data/opq/new.txt /data/opq/sub/deep.txt";
    let out = exec_ok(&img, &["sh", "-c", check]);
    assert_eq!(
        out, "keep\nnew.txt\nsub\nnew\ndeep\n",
        "lower-layer files deleted by RUN rm or rm -rf must be gone"
    );
    let out = exec_ok(&img, &["find", "/", "-xdev", "-name", ".wh.*"]);
    assert_eq!(out, "", "whiteout markers visible in the container");
}

#[test]
fn a_private_home_from_user_is_readable_by_the_caller() {
    let Some(_) = images() else { return };
    let e = env().unwrap();
    let img = sif("layers");
    // USER is ignored: the caller is inside, and still reads the 0600 file
    // under the 0700 home the Dockerfile made for its user.
    assert_eq!(exec_ok(&img, &["id", "-u"]).trim(), e.uid.to_string());
    assert_eq!(exec_ok(&img, &["cat", "/home/appuser/secret.txt"]), "secret\n");
    assert_eq!(exec_ok(&img, &["ls", "/home/appuser"]), "secret.txt\n");
    // Ownership is kept; inspect still shows USER. (A user namespace maps
    // only the caller: other owners show as the overflow id, 65534.)
    let owner = if userns() { "65534:65534\n" } else { "1234:1234\n" };
    assert_eq!(exec_ok(&img, &["stat", "-c", "%u:%g", "/home/appuser/secret.txt"]), owner);
    assert_eq!(inspect_json(&img.to_string_lossy())["user"], "appuser");
}

#[test]
fn inspect_shows_the_image_config() {
    if images().is_none() {
        return;
    }
    let config = image_config("layers");
    let c = &config["config"];
    assert_eq!(c["Labels"]["com.example.quoted"], "it's \"quoted\"", "the Dockerfile's LABEL: {c}");
    let img = sif("layers");
    let v = inspect_json(&img.to_string_lossy());
    assert_eq!(v["labels"], c["Labels"], "husk inspect --json: labels");
    assert_eq!(v["workdir"], c["WorkingDir"], "husk inspect --json: workdir");
    assert_eq!(v["user"], c["User"], "husk inspect --json: user");
    // The same labels inside, where Apptainer looks for them.
    let inside: Value =
        serde_json::from_str(&exec_ok(&img, &["cat", "/.singularity.d/labels.json"])).unwrap();
    assert_eq!(inside, c["Labels"], "/.singularity.d/labels.json");
}

#[test]
fn env_values_are_the_image_configs_byte_for_byte() {
    if images().is_none() {
        return;
    }
    let config = image_config("layers");
    let want = strings(&config["config"]["Env"]);
    // The Dockerfile's values really hold what shells would mangle.
    for needle in [
        "  b   c",
        " lead and trail ",
        "=value=",
        ";two;",
        "it's",
        "\"hi\"",
        "$(id -u)",
        "`uname -a`",
    ] {
        assert!(
            want.iter().any(|v| v.contains(needle)),
            "the image config lost {needle:?}: {want:?}"
        );
    }
    let img = sif("layers");
    for run in [
        vec!["exec", "IMG", "cat", "/proc/self/environ"],
        vec!["exec", "IMG", "/bin/cat", "/proc/self/environ"],
    ] {
        let args: Vec<&str> =
            run.iter().map(|a| if *a == "IMG" { img.to_str().unwrap() } else { a }).collect();
        let r = husk(&args).env("SPACES", "from the host").run();
        assert_eq!(r.code, 0, "{}", r.stderr);
        let got: Vec<&str> = r.stdout.split('\0').collect();
        for var in &want {
            assert!(
                got.contains(&var.as_str()),
                "{var:?} is not byte-for-byte in the container's environment: {got:?}"
            );
        }
    }
    // Each value as a script reads it ("$NAME" is not evaluated further).
    for var in &want {
        let (name, value) = var.split_once('=').unwrap();
        let script = format!("printf '%s' \"${name}\"");
        assert_eq!(exec_ok(&img, &["sh", "-c", &script]), value, "{name}");
    }
}

#[test]
fn environment_precedence_holds_at_all_five_levels() {
    if images().is_none() {
        return;
    }
    // SINGLE is set by the image's ENV; set it at every other level too,
    // then peel the levels off from the top.
    let config = image_config("layers");
    assert!(strings(&config["config"]["Env"]).contains(&"SINGLE=word".to_string()));
    let sb = Sandbox::new("env-levels");
    let file = sb.path("env-file");
    std::fs::write(&file, "# levels\nSINGLE=from-file\n").unwrap();
    sh(&format!("chmod 644 {}", file.display()));
    let img = sif("layers");
    let img = img.to_str().unwrap();
    let file = file.to_str().unwrap();
    let value = |args: &[&str], huskenv: bool| {
        let mut a = vec!["exec"];
        a.extend_from_slice(args);
        a.extend_from_slice(&[img, "sh", "-c", "printf %s \"$SINGLE\""]);
        let mut c = sb.husk(&a).env("SINGLE", "from-host");
        if huskenv {
            c = c.env("HUSKENV_SINGLE", "from-huskenv");
        }
        let r = c.run();
        assert_eq!(r.code, 0, "{a:?}: {}", r.stderr);
        r.stdout
    };
    let all = ["--env-file", file, "--env", "SINGLE=from-flag"];
    assert_eq!(value(&all, true), "from-flag");
    assert_eq!(value(&all[..2], true), "from-file");
    assert_eq!(value(&[], true), "from-huskenv");
    assert_eq!(value(&[], false), "word", "the image's ENV over the host's");
    // Without the image's ENV the host's value would show: it does for a
    // name the image does not set.
    let r =
        sb.husk(&["exec", img, "sh", "-c", "printf %s \"$HOSTONLY\""]).env("HOSTONLY", "h").run();
    assert_eq!(r.stdout, "h");
}

/// What the OCI rule says `run ARGS` executes: ENTRYPOINT + (ARGS, else CMD).
fn oci_argv(name: &str, args: &[&str]) -> Vec<String> {
    let c = &image_config(name)["config"];
    let mut argv = strings(&c["Entrypoint"]);
    if args.is_empty() {
        argv.extend(strings(&c["Cmd"]));
    } else {
        argv.extend(args.iter().map(|a| a.to_string()));
    }
    argv
}

#[test]
fn run_gives_the_oci_result_for_exec_and_shell_forms() {
    let Some(_) = images() else { return };
    let e = env().unwrap();
    let sb = Sandbox::new("run-forms");
    let cwd = sb.dir.to_string_lossy().into_owned();
    let cases: [(&str, &[&str], &str); 6] = [
        ("layers", &[], "entry default args\n"),
        ("layers", &["one", "two  three"], "entry one two  three\n"),
        ("shellentry", &[], "entry-shell: hello there [from-cmd] [more]\n"),
        ("shellentry", &["a", "b c", "d"], "entry-shell: hello there [a] [b c d]\n"),
        ("shellcmd", &[], ""),
        ("shellcmd", &["echo", "replaced", "$(not evaluated)"], "replaced $(not evaluated)\n"),
    ];
    for (name, args, want) in cases {
        let img = sif(name);
        let mut run = vec!["run", img.to_str().unwrap()];
        run.extend(args);
        let r = sb.husk(&run).run();
        assert_eq!(r.code, 0, "run {name} {args:?}: {}", r.stderr);
        // The same argv through exec: run adds nothing and loses nothing.
        let argv = oci_argv(name, args);
        let mut exec = vec!["exec", img.to_str().unwrap()];
        exec.extend(argv.iter().map(String::as_str));
        let x = sb.husk(&exec).run();
        assert_eq!(
            (x.code, &x.stdout),
            (0, &r.stdout),
            "run {name} {args:?} differs from exec {argv:?}"
        );
        // Without --compat the start directory is the caller's, not WORKDIR.
        let want =
            if want.is_empty() { format!("cmd-shell-cmd in {cwd}\n") } else { want.to_string() };
        assert_eq!(r.stdout, want, "run {name} {args:?} (as {})", e.user);
    }
}

#[test]
fn workdir_is_honoured_only_with_compat() {
    if images().is_none() {
        return;
    }
    let sb = Sandbox::new("workdir");
    let img = sif("shellcmd");
    let img_s = img.to_string_lossy().into_owned();
    assert_eq!(inspect_json(&img_s)["workdir"], "/srv/shell");
    let r = sb.husk(&["exec", &img_s, "pwd"]).run();
    assert_eq!((r.code, r.stdout.trim()), (0, sb.dir.to_str().unwrap()), "{}", r.stderr);
    // The directory WORKDIR made is there, with what the build wrote in it.
    assert_eq!(exec_ok(&img, &["cat", "/srv/shell/marker"]), "built-here\n");
    let r = sb.husk(&["run", "--compat", &img_s]).run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "cmd-shell-cmd in /srv/shell\n"), "{}", r.stderr);
    // --compat is Docker-like in the rest too: PID 1 is the command (no
    // init), the root is writable, the host's environment stays out.
    let script = "echo $$; touch /compat-was-here && echo writable; echo ${FROM_HOST:-unset}";
    let r = sb.husk(&["exec", "--compat", &img_s, "sh", "-c", script]).env("FROM_HOST", "1").run();
    assert_eq!((r.code, r.stdout.as_str()), (0, "1\nwritable\nunset\n"), "{}", r.stderr);
}

#[test]
fn exec_on_a_source_converts_through_the_cache() {
    if images().is_none() {
        return;
    }
    let sb = Sandbox::new("exec-source");
    for (form, source) in sources("layers") {
        let r = sb.husk(&["exec", &source, "cat", "/data/opq/new.txt"]).run();
        assert_eq!((r.code, r.stdout.as_str()), (0, "new\n"), "exec on {form}: {}", r.stderr);
    }
    assert!(!sb.cached_sifs().is_empty(), "nothing in the cache after exec on a source");
}

// --- the files husk writes --------------------------------------------------

#[test]
fn conversions_are_byte_identical_across_caches() {
    if images().is_none() {
        return;
    }
    for (form, source) in sources("layers") {
        let a = Sandbox::new(&format!("repro-{form}-a"));
        let b = Sandbox::new(&format!("repro-{form}-b"));
        let (pa, pb) = (a.pull("pulled.sif", &source), b.pull("pulled.sif", &source));
        assert_eq!(
            sha256_file(&pa),
            sha256_file(&pb),
            "{form}: two pulls with different caches differ"
        );
        let (ca, cb) = (a.cached_sifs(), b.cached_sifs());
        assert_eq!(ca.len(), 1, "{form}: {ca:?}");
        assert_eq!(
            ca.iter().map(|p| p.file_name()).collect::<Vec<_>>(),
            cb.iter().map(|p| p.file_name()).collect::<Vec<_>>()
        );
        assert_eq!(sha256_file(&ca[0]), sha256_file(&cb[0]), "{form}: the cached SIFs differ");
        assert_eq!(
            sha256_file(&ca[0]),
            sha256_file(&pa),
            "{form}: pull wrote other bytes than it cached"
        );
        let (ba, bb) = (a.build("built.sif", &source), b.build("built.sif", &source));
        assert_eq!(sha256_file(&ba), sha256_file(&bb), "{form}: two builds differ");
        assert_eq!(
            sha256_file(&ba),
            sha256_file(&pa),
            "{form}: build and pull of the same source differ"
        );
    }
}

/// The SIF a user pulls from a source says it came from that source, even
/// when the cache already held the same image from another source.
#[test]
fn a_pulled_sif_names_the_source_it_came_from() {
    if images().is_none() {
        return;
    }
    let sb = Sandbox::new("source-name");
    for (form, source) in sources("layers") {
        let dest = sb.pull(&format!("{form}.sif"), &source);
        let v = inspect_json(&dest.to_string_lossy());
        assert_eq!(
            v["source"].as_str(),
            Some(source.as_str()),
            "BUG: husk pull {source} (same image digest already in the cache from another source) writes a SIF whose source is another"
        );
    }
}

#[test]
fn unsquashfs_lists_every_sif_husk_writes() {
    if images().is_none() {
        return;
    }
    let sb = Sandbox::new("list");
    let mut sifs = vec![];
    for name in ["layers", "shellentry", "shellcmd", "big"] {
        sifs.push(sb.build(&format!("{name}.sif"), &oci_source(name)));
    }
    sifs.extend(sb.cached_sifs());
    sifs.push(sb.pull("pulled.sif", &oci_source("layers")));
    sifs.extend(sb.cached_sifs());
    for sif in &sifs {
        let off = partition_offset(sif);
        assert_eq!(off % 4096, 0, "{}: partition at {off}, not 4096-aligned", sif.display());
        let out = sh(&format!("unsquashfs -o {off} -l {}", sif.display()));
        assert!(out.contains("squashfs-root/bin/busybox"), "{}: {out}", sif.display());
    }
    let big = listing(&sb.path("big.sif"));
    assert!(
        big.lines().any(|l| l.contains(" 48000000 ") && l.ends_with("squashfs-root/big.bin")),
        "{big}"
    );
}

// --- registries, concurrency, interruption ----------------------------------

#[test]
fn two_pulls_started_together_both_succeed() {
    let Some(i) = images() else { return };
    let sb = Sandbox::new("together");
    let source = docker_ref(&i.registry, "big", TAG);
    let dests = [sb.path("one.sif"), sb.path("two.sif")];
    let children: Vec<_> = dests
        .iter()
        .map(|d| {
            let mut c = sb.husk(&["pull", &d.to_string_lossy(), &source]).command();
            c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    for (c, d) in children.into_iter().zip(&dests) {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "pull to {}: {}",
            d.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        sha256_file(&dests[0]),
        sha256_file(&dests[1]),
        "the two pulls wrote different files"
    );
    assert_eq!(sb.cached_sifs().len(), 1, "one image, one cached SIF");
    let reference = Sandbox::new("together-ref").build("big.sif", &oci_source("big"));
    assert_eq!(listing(&dests[0]), listing(&reference));
}

/// Kill `husk pull` at several points, then check that nothing in the cache
/// or at the destination is a half-written file, and that a new pull
/// completes. A pull of the big image takes a few hundred milliseconds here,
/// so the kills come early and often; a SIF that did get finished is
/// removed from the cache so that the next pull converts again.
fn pull_survives_sigkill(label: &str, source: &str) {
    let e = env().unwrap();
    let reference = Sandbox::new(&format!("kill-ref-{label}"));
    let want = sha256_file(&reference.pull("big.sif", source));
    let sb = Sandbox::new(&format!("kill-{label}"));
    let dest = sb.path("big.sif");
    let mut killed_mid_way = 0;
    for delay_ms in [5, 15, 30, 50, 80, 120, 170, 250, 400] {
        let mut child = sb.husk(&["pull", &dest.to_string_lossy(), source]).command();
        child.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let mut child = child.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // setpriv and env exec in place, so the child's pid is husk's.
        let _ = sh(&format!("kill -KILL {} 2>/dev/null || true", child.id()));
        if !child.wait().unwrap().success() {
            killed_mid_way += 1;
        }
        let when = format!("{label}: after SIGKILL at {delay_ms} ms");
        assert_cache_trustworthy(&sb, &want, &when);
        if dest.exists() {
            assert_eq!(sha256_file(&dest), want, "{when}: {} is half written", dest.display());
            std::fs::remove_file(&dest).unwrap();
        }
        for f in sb.cached_sifs() {
            std::fs::remove_file(f).unwrap();
        }
    }
    assert!(
        killed_mid_way > 0,
        "{label}: every pull finished before the kill; the test proves nothing"
    );
    sb.pull("big.sif", source);
    assert_eq!(sha256_file(&dest), want, "{label}: the pull after the kills differs");
    assert_cache_trustworthy(&sb, &want, label);
    assert_eq!(sb.cached_sifs().len(), 1, "{label}");
    // SIGKILL cannot be caught: its temporary files may stay (never
    // trusted, and stale temporary blobs go after an hour).
    let left = leftovers(&sb);
    if !left.is_empty() {
        eprintln!("note ({label}, as {}): SIGKILLed pulls left temporary files:\n{left}", e.user);
    }
}

/// Files a pull writes only while it works: temporary SIFs and blobs, locks.
fn leftovers(sb: &Sandbox) -> String {
    sh(&format!(
        "find {} -name '*husk-tmp*' -o -name '*.tmp' -o -name '*.lock' | head",
        sb.dir.display()
    ))
}

#[test]
fn an_interrupted_pull_leaves_nothing_behind() {
    let Some(i) = images() else { return };
    let source = docker_ref(&i.registry, "big", TAG);
    for (sig, status) in [("INT", 130), ("TERM", 143), ("HUP", 129)] {
        let sb = Sandbox::new(&format!("interrupt-{sig}"));
        let dest = sb.path("big.sif");
        let mut interrupted = 0;
        for delay_ms in [5, 20, 50, 100, 200, 300] {
            let _ = sh(&format!("rm -rf {} {}", sb.cache().display(), dest.display()));
            let mut child = sb.husk(&["pull", &dest.to_string_lossy(), &source]).command();
            child.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
            let mut child = child.spawn().unwrap();
            std::thread::sleep(Duration::from_millis(delay_ms));
            let _ = sh(&format!("kill -{sig} {} 2>/dev/null || true", child.id()));
            let r = child.wait().unwrap();
            use std::os::unix::process::ExitStatusExt;
            let code = r.code().unwrap_or_else(|| 128 + r.signal().unwrap_or(0));
            let when = format!("SIG{sig} after {delay_ms} ms");
            assert!(code == 0 || code == status, "{when}: status {code}");
            if code == status {
                interrupted += 1;
                assert!(!dest.exists(), "{when}: {} was written", dest.display());
            }
            assert_eq!(leftovers(&sb), "", "{when}: left behind");
        }
        assert!(interrupted > 0, "SIG{sig}: every pull finished first; the test proves nothing");
    }
}

/// Every `*.sif` in the cache is the complete image, and every blob stored
/// under its digest has that digest.
fn assert_cache_trustworthy(sb: &Sandbox, want_sif: &str, when: &str) {
    for f in sb.cached_sifs() {
        assert_eq!(sha256_file(&f), want_sif, "{when}: the cache holds a bad {}", f.display());
    }
    let Ok(blobs) = std::fs::read_dir(sb.cache().join("blobs/sha256")) else { return };
    for b in blobs.flatten() {
        let name = b.file_name().to_string_lossy().into_owned();
        if name.len() == 64 && name.bytes().all(|c| c.is_ascii_hexdigit()) {
            assert_eq!(
                sha256_file(&b.path()),
                name,
                "{when}: blob {name} in the cache is not whole"
            );
        }
    }
}

#[test]
fn a_killed_registry_pull_can_be_run_again() {
    let Some(i) = images() else { return };
    pull_survives_sigkill("docker", &docker_ref(&i.registry, "big", TAG));
}

#[test]
fn a_killed_archive_conversion_can_be_run_again() {
    let Some(i) = images() else { return };
    pull_survives_sigkill(
        "oci-archive",
        &format!("oci-archive:{}/big.oci.tar:{TAG}", i.dir.display()),
    );
}

// --- bad input --------------------------------------------------------------

/// A copy of the `layers` layout the test may damage, and its layer digests.
fn layout_copy(sb: &Sandbox) -> (PathBuf, Vec<String>) {
    let e = env().unwrap();
    let src = images().unwrap().dir.join("layers-oci");
    let dst = sb.path("layout");
    sh(&format!(
        "cp -a {} {} && chown -R {}: {}",
        src.display(),
        dst.display(),
        e.user,
        dst.display()
    ));
    let config = image_config("layers");
    assert!(config.is_object());
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(dst.join("index.json")).unwrap()).unwrap();
    let mdigest =
        index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dst.join("blobs/sha256").join(mdigest)).unwrap(),
    )
    .unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    (dst, layers)
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

#[test]
fn a_flipped_byte_in_a_layer_names_the_blob() {
    if images().is_none() {
        return;
    }
    // The first layer (the busybox root, about 1 MB of gzip) and a small one.
    for which in [0usize, 3] {
        let sb = Sandbox::new(&format!("flip-{which}"));
        let (layout, layers) = layout_copy(&sb);
        let blob = blob_path(&layout, &layers[which]);
        let mut data = std::fs::read(&blob).unwrap();
        let at = data.len() / 2;
        data[at] ^= 0x01;
        std::fs::write(&blob, &data).unwrap();
        let source = format!("oci:{}:{TAG}", layout.display());
        let dest = sb.path("bad.sif");
        let r = sb.husk(&["pull", &dest.to_string_lossy(), &source]).run();
        assert_one_line_error(&r, &layers[which]);
        assert!(!dest.exists(), "a failed pull wrote {}", dest.display());
        let r = sb.husk(&["exec", &source, "true"]).run();
        assert_one_line_error(&r, &layers[which]);
        assert_eq!(
            sb.cache_sif_dir_entries(),
            Vec::<String>::new(),
            "layer {which}: the cache kept something from a corrupt blob"
        );
        let r = sb.husk(&["build", &dest.to_string_lossy(), &source]).run();
        assert_one_line_error(&r, &layers[which]);
        assert!(!dest.exists(), "a failed build left {}", dest.display());
    }
}

#[test]
fn a_tag_the_registry_does_not_have_is_one_line() {
    let Some(i) = images() else { return };
    let sb = Sandbox::new("no-tag");
    let source = docker_ref(&i.registry, "layers", "no-such-tag");
    let r = sb.husk(&["pull", &sb.path("x.sif").to_string_lossy(), &source]).run();
    assert_one_line_error(&r, "no-such-tag");
    assert_one_line_error_any(&r, &["404", "not found", "unknown"]);
    let source = docker_ref(&i.registry, "no-such-image", TAG);
    let r = sb.husk(&["pull", &sb.path("y.sif").to_string_lossy(), &source]).run();
    assert_one_line_error(&r, "no-such-image");
    assert_eq!(sb.cache_sif_dir_entries(), Vec::<String>::new());
}

#[test]
fn pull_destinations_are_checked_before_any_work() {
    let Some(i) = images() else { return };
    let source = docker_ref(&i.registry, "layers", TAG);
    let sb = Sandbox::new("dest-checks");
    // A directory is no destination, --force or not.
    let dir = sb.path("adir");
    sh(&format!("mkdir {0} && chown {1}: {0}", dir.display(), env().unwrap().user));
    for force in [false, true] {
        let mut args = vec!["pull"];
        if force {
            args.push("--force");
        }
        let d = dir.to_string_lossy().into_owned();
        args.extend_from_slice(&[&d, &source]);
        let r = sb.husk(&args).run();
        assert_one_line_error(&r, "is a directory");
    }
    // A directory the user cannot write, or one that does not exist: said
    // at once, naming the destination, and nothing is fetched.
    for dest in ["/root/x.sif", "/nonexistent/x.sif"] {
        let r = sb.husk(&["pull", dest, &source]).run();
        assert_one_line_error(&r, &format!("{dest}: cannot write there"));
        assert!(!r.stderr.contains("husk-tmp"), "{}", r.stderr);
    }
    assert!(
        !sb.cache().join("blobs").exists(),
        "blobs were fetched for a pull that could not be written"
    );
    assert_eq!(leftovers(&sb), "");
    assert_eq!(
        sh(&format!("ls -A {}", dir.display())),
        "",
        "something was left in {}",
        dir.display()
    );
}

#[test]
fn arch_names_a_platform_the_image_must_have() {
    if images().is_none() {
        return;
    }
    let sb = Sandbox::new("arch");
    let source = oci_source("layers");
    let other = if std::env::consts::ARCH == "aarch64" { "amd64" } else { "arm64" };
    let dest = sb.path("x.sif");
    let r = sb.husk(&["pull", "--arch", other, &dest.to_string_lossy(), &source]).run();
    assert_one_line_error(&r, &format!("--arch {other}"));
    assert!(!dest.exists());
    // Also when the image is already in the cache.
    let r = sb.husk(&["exec", &source, "true"]).run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = sb.husk(&["exec", "--arch", other, &source, "true"]).run();
    assert_one_line_error(&r, &format!("--arch {other}"));
    // A file image has no platforms to pick from.
    let img = sif("layers");
    let r = sb.husk(&["exec", "--arch", other, &img.to_string_lossy(), "true"]).run();
    assert_one_line_error(&r, "only for an image source");
}

#[test]
fn output_into_a_closed_pipe_and_unknown_options_are_handled() {
    if images().is_none() {
        return;
    }
    let img = sif("layers");
    let img = img.to_string_lossy().into_owned();
    for json in [false, true] {
        let mut args = vec!["inspect"];
        if json {
            args.push("--json");
        }
        args.push(&img);
        let mut c = husk(&args).command();
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        drop(child.stdout.take()); // the reader goes away at once
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "husk inspect into a closed pipe: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{stderr}");
    }
    let r = husk(&["exec", "--no-such-option", &img, "true"]).run();
    assert_one_line_error(&r, "unknown option --no-such-option");
    let r = husk(&["run", "--no-such-option", &img]).run();
    assert_one_line_error(&r, "unknown option --no-such-option");
}
