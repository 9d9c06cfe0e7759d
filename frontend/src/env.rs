//! The container's environment, computed here and passed verbatim: no shell
//! ever evaluates a value.
//!
//! Precedence, lowest first: host < image ENV < SINGULARITYENV_ <
//! APPTAINERENV_ < HUSKENV_. Never from the host: PATH, LD_LIBRARY_PATH,
//! HOME and HUSK_* variables.

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const PREFIXES: [&[u8]; 3] = [b"SINGULARITYENV_", b"APPTAINERENV_", b"HUSKENV_"];
const NOT_FROM_HOST: [&[u8]; 3] = [b"PATH", b"LD_LIBRARY_PATH", b"HOME"];

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
}

fn split(entry: &str) -> (&[u8], &[u8]) {
    match entry.split_once('=') {
        Some((k, v)) => (k.as_bytes(), v.as_bytes()),
        None => (entry.as_bytes(), b""),
    }
}

pub fn compute(i: &Inputs<'_>) -> Env {
    let mut env = Env::default();
    for (k, v) in i.host {
        let prefixed = PREFIXES.iter().any(|p| k.starts_with(p));
        if k.is_empty() || prefixed || k.starts_with(b"HUSK_") || NOT_FROM_HOST.contains(&&k[..]) {
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
                _ => {
                    env.set(name, v);
                    if !env.forced.iter().any(|f| f == name) {
                        env.forced.push(name.to_vec());
                    }
                }
            }
        }
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
        let h = host(h);
        let image: Vec<String> = image.iter().map(|s| s.to_string()).collect();
        compute(&Inputs {
            host: &h,
            image: &image,
            home: b"/home/a",
            container: b"/i.sif",
            name: b"i.sif",
        })
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
