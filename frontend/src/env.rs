//! The container's environment, computed here and passed verbatim: no shell
//! ever evaluates a value.
//!
//! Precedence, lowest first: host < image ENV < SINGULARITYENV_ <
//! APPTAINERENV_ < HUSKENV_ < `--env-file` < `--env`. Never from the host:
//! PATH, LD_LIBRARY_PATH, HOME and HUSK_* variables; with `--cleanenv`
//! nothing but TERM and the proxy variables (and LANG=C).

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const PREFIXES: [&[u8]; 3] = [b"SINGULARITYENV_", b"APPTAINERENV_", b"HUSKENV_"];
const NOT_FROM_HOST: [&[u8]; 3] = [b"PATH", b"LD_LIBRARY_PATH", b"HOME"];
/// What `--cleanenv` still passes from the host.
const CLEANENV_KEEP: [&[u8]; 11] = [
    b"TERM",
    b"http_proxy",
    b"https_proxy",
    b"ftp_proxy",
    b"no_proxy",
    b"all_proxy",
    b"HTTP_PROXY",
    b"HTTPS_PROXY",
    b"FTP_PROXY",
    b"NO_PROXY",
    b"ALL_PROXY",
];

/// An ordered list of variables; setting a name again replaces its value in
/// place. Also remembers what the user forced, so that a wrapper that sources
/// an image's environment scripts can restore it afterwards.
#[derive(Default, Debug)]
pub struct Env {
    vars: Vec<(Vec<u8>, Vec<u8>)>,
    /// Names set through HUSKENV_ (and its Apptainer aliases).
    pub forced: Vec<Vec<u8>>,
    pub prepend_path: Option<Vec<u8>>,
    pub append_path: Option<Vec<u8>>,
}

impl Env {
    pub fn set(&mut self, k: &[u8], v: &[u8]) {
        match self.vars.iter_mut().find(|(n, _)| n == k) {
            Some(e) => e.1 = v.to_vec(),
            None => self.vars.push((k.to_vec(), v.to_vec())),
        }
    }

    /// Set a variable the user asked for, which the image's environment
    /// scripts must not undo.
    fn force(&mut self, k: &[u8], v: &[u8]) {
        self.set(k, v);
        if !self.forced.iter().any(|f| f == k) {
            self.forced.push(k.to_vec());
        }
    }

    pub fn get(&self, k: &[u8]) -> Option<&[u8]> {
        self.vars.iter().find(|(n, _)| n == k).map(|(_, v)| &v[..])
    }

    pub fn entries(&self) -> Vec<Vec<u8>> {
        self.vars.iter().map(|(k, v)| [&k[..], b"=", &v[..]].concat()).collect()
    }
}

pub struct Inputs<'a> {
    pub host: &'a [(Vec<u8>, Vec<u8>)],
    /// The image config's `Env`, as `NAME=value` strings.
    pub image: &'a [String],
    pub home: &'a [u8],
    pub container: &'a [u8],
    pub name: &'a [u8],
    /// `--cleanenv`: the host's variables are left out.
    pub cleanenv: bool,
    /// From `--env-file`, then from `--env`, in order.
    pub set: &'a [(Vec<u8>, Vec<u8>)],
}

fn split(entry: &str) -> (&[u8], &[u8]) {
    match entry.split_once('=') {
        Some((k, v)) => (k.as_bytes(), v.as_bytes()),
        None => (entry.as_bytes(), b""),
    }
}

/// One `NAME=value` the user set, or `NAME` alone for the host's value (left
/// out when the host has none), as Docker reads `-e` and `--env-file`.
fn user_var(
    what: &str,
    entry: &[u8],
    host: &[(Vec<u8>, Vec<u8>)],
) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let (name, value) = match entry.iter().position(|&b| b == b'=') {
        Some(at) => (&entry[..at], Some(&entry[at + 1..])),
        None => (entry, None),
    };
    if name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace()) {
        anyhow::bail!(
            "{what}: '{}' is not NAME=value (no name, or white space in it)",
            String::from_utf8_lossy(entry)
        );
    }
    Ok(match value {
        Some(v) => Some((name.to_vec(), v.to_vec())),
        None => host.iter().find(|(k, _)| k == name).cloned(),
    })
}

/// What `--env-file FILE` and then each `--env` set, in order. The file has
/// Docker's format: a `NAME=value` per line taken verbatim (no quoting, no
/// expansion), `#` comment lines and blank lines skipped.
pub fn user_set(
    file: Option<&std::path::Path>,
    flags: &[String],
    host: &[(Vec<u8>, Vec<u8>)],
) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use anyhow::Context;
    let mut out = Vec::new();
    if let Some(f) = file {
        let text = std::fs::read(f).with_context(|| format!("--env-file {}", f.display()))?;
        for (n, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let start = line.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(line.len());
            let line = &line[start..];
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            let what = format!("--env-file {} line {}", f.display(), n + 1);
            out.extend(user_var(&what, line, host)?);
        }
    }
    for f in flags {
        out.extend(user_var("--env", f.as_bytes(), host)?);
    }
    Ok(out)
}

pub fn compute(i: &Inputs<'_>) -> Env {
    let mut env = Env::default();
    if i.cleanenv {
        env.set(b"LANG", b"C");
    }
    for (k, v) in i.host {
        let prefixed = PREFIXES.iter().any(|p| k.starts_with(p));
        if k.is_empty() || prefixed || k.starts_with(b"HUSK_") || NOT_FROM_HOST.contains(&&k[..]) {
            continue;
        }
        if i.cleanenv && !CLEANENV_KEEP.contains(&&k[..]) {
            continue;
        }
        env.set(k, v);
    }
    for e in i.image {
        let (k, v) = split(e);
        if !k.is_empty() {
            env.set(k, v);
        }
    }
    let (mut prepend, mut append) = (None, None);
    for p in PREFIXES {
        for (k, v) in i.host {
            let Some(name) = k.strip_prefix(p) else {
                continue;
            };
            match name {
                b"" => {}
                b"PREPEND_PATH" => prepend = Some(v.clone()),
                b"APPEND_PATH" => append = Some(v.clone()),
                _ => env.force(name, v),
            }
        }
    }
    for (k, v) in i.set {
        env.force(k, v);
    }
    let mut path = env.get(b"PATH").unwrap_or(DEFAULT_PATH.as_bytes()).to_vec();
    if let Some(p) = &prepend {
        path = [&p[..], b":", &path[..]].concat();
    }
    if let Some(a) = &append {
        path = [&path[..], b":", &a[..]].concat();
    }
    env.set(b"PATH", &path);
    env.prepend_path = prepend;
    env.append_path = append;
    env.set(b"HOME", i.home);
    for k in ["HUSK_CONTAINER", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"] {
        env.set(k.as_bytes(), i.container);
    }
    for k in ["HUSK_NAME", "APPTAINER_NAME", "SINGULARITY_NAME"] {
        env.set(k.as_bytes(), i.name);
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    fn run(h: &[(&str, &str)], image: &[&str]) -> Env {
        run_with(h, image, false, &[])
    }

    fn run_with(h: &[(&str, &str)], image: &[&str], cleanenv: bool, set: &[(&str, &str)]) -> Env {
        let h = host(h);
        let set = host(set);
        let image: Vec<String> = image.iter().map(|s| s.to_string()).collect();
        compute(&Inputs {
            host: &h,
            image: &image,
            home: b"/home/a",
            container: b"/i.sif",
            name: b"i.sif",
            cleanenv,
            set: &set,
        })
    }

    #[test]
    fn cleanenv_keeps_term_and_proxies_and_sets_lang() {
        let h = [("FOO", "1"), ("TERM", "xterm"), ("http_proxy", "p"), ("HUSKENV_B", "b")];
        let e = run_with(&h, &[], true, &[]);
        assert_eq!(e.get(b"FOO"), None);
        assert_eq!(e.get(b"TERM"), Some(&b"xterm"[..]));
        assert_eq!(e.get(b"http_proxy"), Some(&b"p"[..]));
        assert_eq!(e.get(b"LANG"), Some(&b"C"[..]));
        assert_eq!(e.get(b"B"), Some(&b"b"[..]));
        // The image's LANG still wins over the default.
        assert_eq!(run_with(&h, &["LANG=en"], true, &[]).get(b"LANG"), Some(&b"en"[..]));
    }

    #[test]
    fn env_file_lines_and_flags_are_read_as_docker_does() {
        let dir = std::env::temp_dir().join(format!("husk-envfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("env");
        std::fs::write(&f, "# comment\n\n  A=1\nB=\"q\" $(x)\r\nFROMHOST\nMISSING\nC==x\n")
            .unwrap();
        let h = host(&[("FROMHOST", "h")]);
        let got = user_set(Some(&f), &["D=4".into(), "FROMHOST".into()], &h).unwrap();
        let want = host(&[
            ("A", "1"),
            ("B", "\"q\" $(x)"),
            ("FROMHOST", "h"),
            ("C", "=x"),
            ("D", "4"),
            ("FROMHOST", "h"),
        ]);
        assert_eq!(got, want);
        std::fs::write(&f, "OK=1\nBAD NAME=2\n").unwrap();
        let err = user_set(Some(&f), &[], &h).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("BAD NAME=2"), "{err}");
        let err = user_set(None, &["=x".into()], &h).unwrap_err().to_string();
        assert!(err.starts_with("--env: '=x'"), "{err}");
        let err = user_set(Some(&dir.join("none")), &[], &h).unwrap_err();
        assert!(format!("{err:#}").contains("--env-file"), "{err:#}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn env_file_and_env_come_last_in_that_order() {
        let e = run_with(
            &[("V", "host"), ("HUSKENV_V", "huskenv")],
            &["V=image"],
            false,
            &[("V", "file"), ("W", "file"), ("V", "flag"), ("PATH", "/mine")],
        );
        assert_eq!(e.get(b"V"), Some(&b"flag"[..]));
        assert_eq!(e.get(b"W"), Some(&b"file"[..]));
        assert_eq!(e.get(b"PATH"), Some(&b"/mine"[..]));
        assert_eq!(e.forced, vec![b"V".to_vec(), b"W".to_vec(), b"PATH".to_vec()]);
    }

    #[test]
    fn host_passes_but_not_path_home_or_husk() {
        let e = run(
            &[
                ("FOO", "1"),
                ("PATH", "/host"),
                ("HOME", "/x"),
                ("LD_LIBRARY_PATH", "/l"),
                ("HUSK_X", "1"),
            ],
            &[],
        );
        assert_eq!(e.get(b"FOO"), Some(&b"1"[..]));
        assert_eq!(e.get(b"PATH"), Some(DEFAULT_PATH.as_bytes()));
        assert_eq!(e.get(b"HOME"), Some(&b"/home/a"[..]));
        assert_eq!(e.get(b"LD_LIBRARY_PATH"), None);
        assert_eq!(e.get(b"HUSK_X"), None);
        assert_eq!(e.get(b"HUSK_CONTAINER"), Some(&b"/i.sif"[..]));
    }

    #[test]
    fn precedence_host_image_prefixes() {
        let e = run(
            &[
                ("V", "host"),
                ("HUSKENV_V", "husk"),
                ("APPTAINERENV_V", "apptainer"),
                ("SINGULARITYENV_W", "sing"),
                ("APPTAINERENV_W", "app"),
            ],
            &["V=image", "W=image", "PATH=/img/bin"],
        );
        assert_eq!(e.get(b"V"), Some(&b"husk"[..]));
        assert_eq!(e.get(b"W"), Some(&b"app"[..]));
        assert_eq!(e.get(b"PATH"), Some(&b"/img/bin"[..]));
        assert_eq!(e.get(b"HUSKENV_V"), None);
        assert_eq!(e.forced, vec![b"W".to_vec(), b"V".to_vec()]);
    }

    #[test]
    fn values_are_verbatim_and_path_extends() {
        let e = run(
            &[
                ("HUSKENV_PREPEND_PATH", "/pre"),
                ("HUSKENV_APPEND_PATH", "/post"),
                ("HUSKENV_Q", "$(id) `x` a=b;c 'q'"),
            ],
            &["PATH=/bin"],
        );
        assert_eq!(e.get(b"PATH"), Some(&b"/pre:/bin:/post"[..]));
        assert_eq!(e.get(b"Q"), Some(&b"$(id) `x` a=b;c 'q'"[..]));
    }
}
