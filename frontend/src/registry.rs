//! `docker://` sources: the registry HTTP API v2. Manifests and indexes are
//! fetched (bounded, digest-checked) and followed to the platform's image
//! with the same code as OCI layouts; blobs go into the cache as
//! `blobs/sha256/HEX`, verified while they stream, so conversion reads them
//! like a layout's. Auth: bearer tokens (anonymous or with credentials) and
//! basic auth, credentials from `husk registry login` or Docker's
//! config.json. Redirects are followed by hand so that `Authorization`
//! never leaves the registry's own origin.

use crate::cache;
use crate::oci::{self, Descriptor, Doc, Image, Manifest, Platform, MAX_JSON};
use crate::progress::Progress;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{self, File};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use ureq::http::{Response, Uri};
use ureq::Body;

/// Docker Hub, as image references and husk's auth file name it.
const DOCKER_HUB: &str = "docker.io";
/// Docker's default registry endpoint, where Docker Hub's API is served.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Other names of Docker Hub in references and config.json keys.
const DOCKER_HUB_ALIASES: [&str; 2] = ["index.docker.io", DOCKER_HUB_API];

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";
const MAX_REDIRECTS: usize = 5;
/// Tries of one request on connection errors, 5xx and 429.
const ATTEMPTS: u32 = 3;

/// `[REGISTRY/]NAME[:TAG|@DIGEST]`, with Docker's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]`; Docker Hub is `docker.io`.
    pub registry: String,
    pub repository: String,
    /// A tag, or a `sha256:` digest.
    pub reference: String,
}

fn valid_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    !b.is_empty()
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter().all(|&x| alnum(x) || matches!(x, b'.' | b'_' | b'-'))
}

fn valid_tag(t: &str) -> bool {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    t.len() <= 128
        && t.bytes().next().is_some_and(ok)
        && t.bytes().all(|b| ok(b) || b == b'.' || b == b'-')
}

/// The registry a host name or config.json key means: keys may be URLs
/// (`https://index.docker.io/v1/`), and Docker Hub has several names.
fn canonical_registry(key: &str) -> String {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k);
    if host == DOCKER_HUB || DOCKER_HUB_ALIASES.contains(&host) {
        DOCKER_HUB.to_string()
    } else {
        host.to_string()
    }
}

impl ImageRef {
    /// Docker's rules: a first component with `.` or `:`, or `localhost`,
    /// is a registry host, else the image is on Docker Hub, where one-part
    /// names are under `library/`; the tag defaults to `latest`.
    pub fn parse(s: &str) -> Result<ImageRef> {
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        let (name, tag) = match name.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t)),
            _ => (name, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (canonical_registry(first), rest)
            }
            _ => (DOCKER_HUB.to_string(), name),
        };
        if !path.split('/').all(valid_component) {
            bail!("invalid image name {path:?} (lower-case letters and digits, separated by . _ - or /)");
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        if let Some(t) = tag.filter(|t| !valid_tag(t)) {
            bail!("invalid tag {t:?}");
        }
        let reference = match (digest, tag) {
            (Some(d), _) => {
                oci::hex_of(d)?;
                d.to_string()
            }
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".to_string(),
        };
        Ok(ImageRef { registry, repository, reference })
    }

    fn by_digest(&self) -> bool {
        self.reference.starts_with("sha256:")
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = if self.by_digest() { '@' } else { ':' };
        write!(f, "docker://{}/{}{sep}{}", self.registry, self.repository, self.reference)
    }
}

/// Docker talks plain HTTP to registries on the loopback.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => registry.split(':').next().unwrap_or(""),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
}

// ---- credentials ----------------------------------------------------------

#[derive(Debug, Clone)]
enum Creds {
    /// `helper`: a Docker credential helper that holds them (not used).
    Anonymous { helper: Option<String> },
    /// base64 of `user:password`.
    Basic(String),
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("HOME is not set"))
}

/// `$XDG_CONFIG_HOME/husk/auth.json`, else `~/.config/husk/auth.json`.
fn auth_file() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => home()?.join(".config"),
    };
    Ok(base.join("husk/auth.json"))
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn docker_config_file() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        Some(d) => Some(PathBuf::from(d).join("config.json")),
        None => home().ok().map(|h| h.join(".docker/config.json")),
    }
}

fn read_config(path: &Path) -> Result<Option<Value>> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .with_context(|| format!("{}: not JSON", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => bail!("read {}: {}", path.display(), crate::describe(&e)),
    }
}

/// The `auths` entry for `registry`, as base64 of `user:password`.
fn lookup(cfg: &Value, registry: &str) -> Option<String> {
    let auths = cfg.get("auths")?.as_object()?;
    auths.iter().filter(|(k, _)| canonical_registry(k) == registry).find_map(|(_, e)| {
        if let Some(a) = e.get("auth").and_then(Value::as_str).filter(|a| !a.is_empty()) {
            return Some(a.to_string());
        }
        let user = e.get("username")?.as_str()?;
        let pass = e.get("password")?.as_str()?;
        Some(base64(format!("{user}:{pass}").as_bytes()))
    })
}

/// Credentials for `registry`: husk's own file first, then Docker's.
fn credentials(registry: &str) -> Result<Creds> {
    if let Some(a) = read_config(&auth_file()?)?.and_then(|c| lookup(&c, registry)) {
        return Ok(Creds::Basic(a));
    }
    let Some(cfg) = docker_config_file().map(|p| read_config(&p)).transpose()?.flatten() else {
        return Ok(Creds::Anonymous { helper: None });
    };
    if let Some(a) = lookup(&cfg, registry) {
        return Ok(Creds::Basic(a));
    }
    let helper = cfg
        .get("credHelpers")
        .and_then(Value::as_object)
        .and_then(|h| h.iter().find(|(k, _)| canonical_registry(k) == registry))
        .and_then(|(_, v)| v.as_str())
        .or_else(|| cfg.get("credsStore").and_then(Value::as_str))
        .map(|h| format!("docker-credential-{h}"));
    Ok(Creds::Anonymous { helper })
}

/// Write `data` readable by the owner only, atomically.
fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().ok_or_else(|| anyhow!("{}: no directory", path.display()))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let tmp = dir.join(format!(".auth.json.{}.tmp", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

/// Read a line from the terminal, without echo for a secret.
fn prompt(label: &str, secret: bool) -> Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("no {label} given and standard input is not a terminal (use --username, --password-stdin)");
    }
    let stty = |arg: &str| {
        if let Ok(tty) = File::open("/dev/tty") {
            let _ = std::process::Command::new("stty").arg(arg).stdin(tty).status();
        }
    };
    eprint!("{label}: ");
    if secret {
        stty("-echo");
    }
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line);
    if secret {
        stty("echo");
        eprintln!();
    }
    read.with_context(|| format!("read {label}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// `husk registry login`: check the credentials against the registry, then
/// keep them in husk's auth file (Docker's config.json format, mode 0600).
pub fn login(
    registry: &str,
    username: Option<&str>,
    password_stdin: bool,
    insecure: bool,
) -> Result<()> {
    let registry = canonical_registry(registry);
    let user = match username {
        Some(u) => u.to_string(),
        None => prompt("username", false)?,
    };
    let pass = if password_stdin {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("read the password from stdin")?;
        s.trim_end_matches(['\r', '\n']).to_string()
    } else {
        prompt("password", true)?
    };
    if user.is_empty() || pass.is_empty() || user.contains(':') {
        bail!("login to {registry}: a user name (without ':') and a password are needed");
    }
    let auth = base64(format!("{user}:{pass}").as_bytes());
    let mut client = Client::new(&registry, "", insecure);
    client.creds = Some(Creds::Basic(auth.clone()));
    client.get("/v2/", None).with_context(|| format!("login to {registry}"))?;

    let path = auth_file()?;
    let mut cfg = read_config(&path)?.unwrap_or_else(|| json!({}));
    forget(&mut cfg, &registry);
    cfg.as_object_mut()
        .ok_or_else(|| anyhow!("{}: not a JSON object", path.display()))?
        .entry("auths")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| anyhow!("{}: auths is not an object", path.display()))?
        .insert(registry.clone(), json!({ "auth": auth }));
    write_private(&path, &serde_json::to_vec_pretty(&cfg)?)?;
    eprintln!("husk: logged in to {registry} (credentials in {})", path.display());
    Ok(())
}

/// Drop `registry`'s entries; whether there were any.
fn forget(cfg: &mut Value, registry: &str) -> bool {
    let Some(auths) = cfg.get_mut("auths").and_then(Value::as_object_mut) else { return false };
    let before = auths.len();
    auths.retain(|k, _| canonical_registry(k) != registry);
    auths.len() != before
}

/// `husk registry logout`.
pub fn logout(registry: &str) -> Result<()> {
    let registry = canonical_registry(registry);
    let path = auth_file()?;
    let mut cfg = read_config(&path)?.unwrap_or_else(|| json!({}));
    if forget(&mut cfg, &registry) {
        write_private(&path, &serde_json::to_vec_pretty(&cfg)?)?;
        eprintln!("husk: logged out of {registry}");
    } else {
        eprintln!("husk: not logged in to {registry}");
    }
    Ok(())
}

// ---- HTTP -----------------------------------------------------------------

/// One `WWW-Authenticate` challenge: a scheme (lower case) and its parameters.
#[derive(Debug)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn parse(h: &str) -> Option<Challenge> {
        let h = h.trim();
        let (scheme, mut rest) = h.split_once(' ').unwrap_or((h, ""));
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            let Some((key, after)) = rest.split_once('=') else { break };
            let (value, tail) = match after.strip_prefix('"') {
                Some(q) => {
                    let mut value = String::new();
                    let mut chars = q.char_indices();
                    let mut end = q.len();
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => value.extend(chars.next().map(|(_, c)| c)),
                            '"' => {
                                end = i + 1;
                                break;
                            }
                            c => value.push(c),
                        }
                    }
                    (value, &q[end..])
                }
                None => {
                    let (v, t) = after.split_once(',').unwrap_or((after, ""));
                    (v.trim().to_string(), t)
                }
            };
            params.push((key.trim().to_ascii_lowercase(), value));
            rest = tail;
        }
        (!scheme.is_empty()).then(|| Challenge { scheme: scheme.to_ascii_lowercase(), params })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `scheme://authority` of a URL.
fn origin_of(url: &str) -> Option<String> {
    let u: Uri = url.parse().ok()?;
    Some(format!("{}://{}", u.scheme_str()?, u.authority()?.as_str()))
}

/// A redirect's `Location`, made absolute against the URL it came from.
fn join(base: &str, location: &str) -> Result<String> {
    if origin_of(location).is_some() {
        return Ok(location.to_string());
    }
    let origin = origin_of(base).ok_or_else(|| anyhow!("bad URL {base}"))?;
    if let Some(rest) = location.strip_prefix("//") {
        let scheme = origin.split("://").next().unwrap_or("https");
        return Ok(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Ok(format!("{origin}{location}"));
    }
    let path = base.split(['?', '#']).next().unwrap_or(base);
    let dir = path.rsplit_once('/').map_or(path, |(d, _)| d);
    Ok(format!("{dir}/{location}"))
}

/// Worth trying again: the connection failed or broke, not the request.
fn transient(e: &ureq::Error) -> bool {
    use ureq::Error as E;
    matches!(e, E::Io(_) | E::Timeout(_) | E::ConnectionFailed | E::Protocol(_) | E::BodyStalled)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Followed by hand, so that Authorization stays with the registry.
        .max_redirects(0)
        .user_agent(concat!("husk/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .build()
        .new_agent()
}

/// A JSON body, bounded.
fn read_small(resp: Response<Body>) -> Result<Vec<u8>> {
    resp.into_body().into_with_config().limit(MAX_JSON).read_to_vec().map_err(|e| match e {
        ureq::Error::BodyExceedsLimit(_) => anyhow!("larger than {} MiB", MAX_JSON >> 20),
        e => anyhow!("read: {e}"),
    })
}

/// A response and the URL it came from, or a transport failure.
type Sent = Result<(Response<Body>, String), ureq::Error>;

/// A connection to one repository of one registry.
struct Client {
    agent: ureq::Agent,
    /// `scheme://host[:port]` of the registry: the only origin that is sent
    /// the registry's `Authorization`.
    origin: String,
    registry: String,
    /// Empty for requests outside a repository (`/v2/` at login).
    repository: String,
    /// Read when the first challenge comes, so anonymous pulls read no file.
    creds: Option<Creds>,
    authorization: Option<String>,
    /// First retry delay, doubled for each further one.
    backoff: Duration,
}

impl Client {
    fn new(registry: &str, repository: &str, insecure: bool) -> Client {
        let scheme = if insecure || is_loopback(registry) { "http" } else { "https" };
        let host = if registry == DOCKER_HUB { DOCKER_HUB_API } else { registry };
        Client {
            agent: agent(),
            origin: format!("{scheme}://{host}"),
            registry: registry.to_string(),
            repository: repository.to_string(),
            creds: None,
            authorization: None,
            backoff: Duration::from_millis(200),
        }
    }

    /// One GET, following redirects by hand: `auth` (origin, header) is sent
    /// only to that origin. The outer error is fatal, the inner one a
    /// transport failure worth retrying. Gives the response and its URL.
    fn send(&self, url: &str, accept: Option<&str>, auth: Option<(&str, &str)>) -> Result<Sent> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some((origin, value)) = auth {
                if origin_of(&url).as_deref() == Some(origin) {
                    req = req.header("Authorization", value);
                }
            }
            let resp = match req.call() {
                Ok(r) => r,
                Err(e) => return Ok(Err(e)),
            };
            let location = resp.headers().get("location").and_then(|l| l.to_str().ok());
            match location {
                Some(loc) if resp.status().is_redirection() => url = join(&url, loc)?,
                _ => return Ok(Ok((resp, url))),
            }
        }
        bail!("more than {MAX_REDIRECTS} redirects")
    }

    /// `send`, tried again with backoff on transport errors, 5xx and 429.
    fn request(
        &self,
        url: &str,
        accept: Option<&str>,
        auth: Option<(&str, &str)>,
    ) -> Result<(Response<Body>, String)> {
        let mut attempt = 1;
        loop {
            let r = self.send(url, accept, auth)?;
            let again = match &r {
                Err(e) => transient(e),
                Ok((resp, _)) => resp.status() == 429 || resp.status().is_server_error(),
            };
            if !again || attempt == ATTEMPTS {
                let origin = origin_of(url).unwrap_or_default();
                return r.map_err(|e| match e {
                    ureq::Error::Io(e) => anyhow!("{origin}: {}", crate::describe(&e)),
                    e => anyhow!("{origin}: {e}"),
                });
            }
            std::thread::sleep(self.backoff * 2u32.pow(attempt - 1));
            attempt += 1;
        }
    }

    fn creds(&mut self) -> Result<Creds> {
        if self.creds.is_none() {
            self.creds = Some(credentials(&self.registry)?);
        }
        Ok(self.creds.clone().unwrap_or(Creds::Anonymous { helper: None }))
    }

    /// A registry path; answers a challenge (first, or for an expired token)
    /// by authenticating once and trying again.
    fn get(&mut self, path: &str, accept: Option<&str>) -> Result<Response<Body>> {
        let url = format!("{}{path}", self.origin);
        let mut renewed = false;
        loop {
            let auth = self.authorization.as_deref().map(|a| (self.origin.as_str(), a));
            let (resp, at) = self.request(&url, accept, auth)?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status == 401 && !renewed && origin_of(&at).as_deref() == Some(&self.origin) {
                renewed = true;
                self.authenticate(&resp)?;
                continue;
            }
            let missing = status == 404 && path.contains("/manifests/");
            let why = self.failure(resp);
            if missing {
                // Registries say the same for a repository they do not have.
                bail!("{why}: {} has no such repository or tag", self.registry);
            }
            bail!("{why}")
        }
    }

    fn auth_required(&self) -> String {
        match &self.creds {
            Some(Creds::Anonymous { helper: Some(h) }) => format!(
                "authentication required (401); Docker's config.json keeps the credentials \
                 in {h}, which husk does not use: run husk registry login {}",
                self.registry
            ),
            _ => "authentication required (401)".to_string(),
        }
    }

    /// A failed response in a few words: the registry's own message if it
    /// sent one, else the status.
    fn failure(&self, resp: Response<Body>) -> String {
        let status = resp.status();
        if status == 401 {
            return self.auth_required();
        }
        let message = resp
            .into_body()
            .into_with_config()
            .limit(64 << 10)
            .read_to_vec()
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.pointer("/errors/0/message")?.as_str().map(str::to_owned))
            .filter(|m| !m.is_empty() && !m.contains('\n'));
        match message {
            Some(m) => format!("{m} ({})", status.as_u16()),
            None => format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")),
        }
    }

    /// Answer a 401's challenge: a bearer token from the realm (with the
    /// credentials if there are any), or basic auth.
    fn authenticate(&mut self, resp: &Response<Body>) -> Result<()> {
        let creds = self.creds()?;
        let challenges: Vec<Challenge> = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok().and_then(Challenge::parse))
            .collect();
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            let token = self.token(c, &creds)?;
            self.authorization = Some(format!("Bearer {token}"));
            return Ok(());
        }
        match creds {
            Creds::Basic(a) if challenges.iter().any(|c| c.scheme == "basic") => {
                self.authorization = Some(format!("Basic {a}"));
                Ok(())
            }
            _ => bail!("{}", self.auth_required()),
        }
    }

    fn token(&self, c: &Challenge, creds: &Creds) -> Result<String> {
        let realm = c.get("realm").ok_or_else(|| anyhow!("bearer challenge without a realm"))?;
        let origin = origin_of(realm).ok_or_else(|| anyhow!("token realm {realm}: bad URL"))?;
        let pull = format!("repository:{}:pull", self.repository);
        let scope = c.get("scope").or((!self.repository.is_empty()).then_some(pull.as_str()));
        let query: Vec<String> = [("service", c.get("service")), ("scope", scope)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={}", percent_encode(v))))
            .collect();
        let url = match (query.is_empty(), realm.contains('?')) {
            (true, _) => realm.to_string(),
            (false, true) => format!("{realm}&{}", query.join("&")),
            (false, false) => format!("{realm}?{}", query.join("&")),
        };
        let basic = match creds {
            Creds::Basic(a) => Some(format!("Basic {a}")),
            Creds::Anonymous { .. } => None,
        };
        let what = || format!("token from {realm}");
        let (resp, _) = self
            .request(&url, None, basic.as_deref().map(|b| (origin.as_str(), b)))
            .with_context(what)?;
        if !resp.status().is_success() {
            bail!("{}: {}", what(), self.failure(resp));
        }
        let v: Value = serde_json::from_slice(&read_small(resp).with_context(what)?)
            .with_context(|| format!("{}: not JSON", what()))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("{}: no token in the answer", what()))
    }

    /// A manifest or index by tag or digest, bounded; checked against the
    /// digest it was asked by, else named by the sha256 of its bytes.
    fn manifest(&mut self, reference: &str) -> Result<Doc> {
        let path = format!("/v2/{}/manifests/{reference}", self.repository);
        let resp = self.get(&path, Some(MANIFEST_TYPES))?;
        let media_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_string());
        let bytes = read_small(resp)?;
        let digest = format!("sha256:{}", oci::sha256_hex(&bytes));
        if reference.starts_with("sha256:") && digest != reference {
            bail!("manifest {reference}: digest mismatch (got {digest})");
        }
        let json = serde_json::from_slice(&bytes)
            .with_context(|| format!("manifest {digest} is not JSON"))?;
        Ok(Doc { digest, media_type, json })
    }

    /// Put a blob into `dir` (`dir/HEX`) unless it is there: fetched into a
    /// temporary file of this process, verified while it streams, renamed
    /// into place; under a per-blob lock so concurrent pulls fetch it once.
    fn fetch_blob(&mut self, desc: &Descriptor, dir: &Path) -> Result<()> {
        let hex = oci::hex_of(&desc.digest)?;
        let dest = dir.join(hex);
        if dest.is_file() {
            return Ok(());
        }
        let what = || format!("blob {}", desc.digest);
        let _lock = cache::lock(&dir.join(format!("{hex}.lock"))).with_context(what)?;
        if dest.is_file() {
            return Ok(());
        }
        // Never a blob's name (64 hex digits): a left-over is never trusted.
        let tmp =
            crate::scratch::Scratch::new(dir.join(format!("{hex}.{}.tmp", std::process::id())));
        self.download(desc, tmp.path()).with_context(what)?;
        fs::rename(tmp.path(), &dest)
            .with_context(|| format!("rename to {}", dest.display()))
            .with_context(what)?;
        tmp.keep();
        Ok(())
    }

    fn download(&mut self, desc: &Descriptor, tmp: &Path) -> Result<()> {
        let path = format!("/v2/{}/blobs/{}", self.repository, desc.digest);
        let mut attempt = 1;
        loop {
            let resp = self.get(&path, None)?;
            let mut file =
                File::create(tmp).with_context(|| format!("create {}", tmp.display()))?;
            let mut hasher = Sha256::new();
            let short = desc.digest.get(7..19).unwrap_or(&desc.digest);
            let mut progress = Progress::new(format!("fetch {short}"), desc.size);
            // One byte past the size in the manifest is enough to refuse it.
            let mut body =
                resp.into_body().into_reader().take(desc.size.map_or(u64::MAX, |s| s + 1));
            let mut buf = vec![0u8; 256 << 10];
            let mut len = 0u64;
            let read = loop {
                match body.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                        file.write_all(&buf[..n])
                            .with_context(|| format!("write {}", tmp.display()))?;
                        len += n as u64;
                        progress.add(n as u64);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            match read {
                Err(_) if attempt < ATTEMPTS => {
                    std::thread::sleep(self.backoff * 2u32.pow(attempt - 1));
                    attempt += 1;
                    continue;
                }
                Err(e) => bail!("download: {}", crate::describe(&e)),
                Ok(()) => {}
            }
            if let Some(size) = desc.size.filter(|&s| s != len) {
                bail!("{len} bytes or more where the manifest says {size}");
            }
            let got = format!("{:x}", hasher.finalize());
            if got != oci::hex_of(&desc.digest)? {
                bail!("digest mismatch (got sha256:{got})");
            }
            progress.finish();
            return file.sync_all().with_context(|| format!("write {}", tmp.display()));
        }
    }
}

/// Remove temporary blobs that killed pulls left: a download in progress
/// writes all the time (reads time out after two minutes), so a file an hour
/// old has no writer.
fn remove_stale(dir: &Path) {
    let hour = Duration::from_secs(3600);
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let age = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if e.file_name().to_string_lossy().ends_with(".tmp") && age.is_some_and(|a| a > hour) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// A registry image whose manifest is read and whose blobs may still have
/// to be fetched.
pub struct Pending {
    client: Client,
    image: ImageRef,
    pub manifest: Manifest,
}

/// Fetch the manifest (and index) of `image` and pick `platform`'s image.
pub fn locate(image: &ImageRef, insecure: bool, platform: &Platform) -> Result<Pending> {
    let mut client = Client::new(&image.registry, &image.repository, insecure);
    let manifest = client.manifest(&image.reference).and_then(|first| {
        oci::follow(first, platform, |desc| {
            let digest = desc.get("digest").and_then(Value::as_str).unwrap_or_default();
            client.manifest(oci::hex_of(digest).map(|_| digest)?)
        })
    });
    let manifest = manifest.with_context(|| image.to_string())?;
    Ok(Pending { client, image: image.clone(), manifest })
}

impl Pending {
    /// Fetch the blobs that are not in the cache yet.
    pub fn fetch(mut self) -> Result<Image> {
        let what = self.image.to_string();
        let dir = cache::blob_dir()?;
        remove_stale(&dir);
        for desc in std::iter::once(&self.manifest.config).chain(&self.manifest.layers) {
            self.client.fetch_blob(desc, &dir).with_context(|| what.clone())?;
        }
        Image::in_cache(cache::dir()?, self.manifest).with_context(|| what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A request as the fake registry saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        host: String,
        path: String,
        auth: Option<String>,
    }

    type Reply = (u16, Vec<(&'static str, String)>, Vec<u8>);

    /// A tiny HTTP/1.1 server on 127.0.0.1 answering each request (one per
    /// connection) with `answer`; returns its port and what it saw.
    fn serve(
        mut answer: impl FnMut(&Seen, u16) -> Reply + Send + 'static,
    ) -> (u16, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut r = BufReader::new(stream);
                let mut lines = Vec::new();
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).unwrap_or(0) == 0 || l.trim().is_empty() {
                        break;
                    }
                    lines.push(l.trim().to_string());
                }
                let header = |n: &str| {
                    lines.iter().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case(n).then(|| v.trim().to_string())
                    })
                };
                let path = lines.first().and_then(|l| l.split(' ').nth(1)).unwrap_or("");
                let req = Seen {
                    host: header("host").unwrap_or_default(),
                    path: path.to_string(),
                    auth: header("authorization"),
                };
                let (code, headers, body) = answer(&req, port);
                seen.lock().unwrap().push(req);
                let mut out = format!("HTTP/1.1 {code} X\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("Connection: close\r\n\r\n");
                let mut s = r.into_inner();
                let _ = s.write_all(out.as_bytes()).and_then(|_| s.write_all(&body));
            }
        });
        (port, log)
    }

    fn client(port: u16, creds: Creds) -> Client {
        let mut c = Client::new(&format!("127.0.0.1:{port}"), "x", false);
        c.creds = Some(creds);
        c.backoff = Duration::from_millis(1);
        c
    }

    fn anonymous() -> Creds {
        Creds::Anonymous { helper: None }
    }

    fn blob(data: &[u8]) -> Descriptor {
        Descriptor {
            digest: format!("sha256:{}", oci::sha256_hex(data)),
            size: Some(data.len() as u64),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-registry-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn ok(body: &[u8]) -> Reply {
        (200, vec![], body.to_vec())
    }

    const MANIFEST: &[u8] = br#"{"schemaVersion":2,"layers":[],"config":{"digest":
        "sha256:0000000000000000000000000000000000000000000000000000000000000000"}}"#;

    #[test]
    fn references_get_dockers_defaults() {
        let r = |s: &str| ImageRef::parse(s).unwrap();
        let hub = |repo: &str, reference: &str| ImageRef {
            registry: DOCKER_HUB.into(),
            repository: repo.into(),
            reference: reference.into(),
        };
        assert_eq!(r("alpine"), hub("library/alpine", "latest"));
        assert_eq!(r("alpine:3.20"), hub("library/alpine", "3.20"));
        assert_eq!(r("docker.io/alpine"), hub("library/alpine", "latest"));
        assert_eq!(r("index.docker.io/user/app:v1"), hub("user/app", "v1"));
        assert_eq!(r("user/app"), hub("user/app", "latest"));
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(r(&format!("alpine:3.20@{digest}")), hub("library/alpine", &digest));
        let local = r("127.0.0.1:5000/x:1");
        assert_eq!((local.registry.as_str(), local.repository.as_str()), ("127.0.0.1:5000", "x"));
        assert_eq!(local.to_string(), "docker://127.0.0.1:5000/x:1");
        assert_eq!(r("localhost/a/b").registry, "localhost");
        assert_eq!(r("quay.example/a/b:c").repository, "a/b");
        assert_eq!(r("[::1]:5000/a").registry, "[::1]:5000");
        for bad in ["Alpine", "a//b", "a:", "a:-x", "a@sha256:12", "x/-y", ""] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            oci::Source::parse("docker://alpine").unwrap(),
            Some(oci::Source::Docker { image: hub("library/alpine", "latest"), insecure: false })
        );
        assert!(
            is_loopback("127.0.0.1:5000") && is_loopback("localhost") && is_loopback("[::1]:80")
        );
        assert!(!is_loopback("registry.example:5000") && !is_loopback("10.0.0.1"));
    }

    #[test]
    fn small_pieces() {
        assert_eq!(base64(b"u:p"), "dTpw");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab"), "YWI=");
        let c =
            Challenge::parse(r#"Bearer realm="https://a/t?x=1",scope="repository:r:pull,push""#)
                .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.get("realm"), Some("https://a/t?x=1"));
        assert_eq!(c.get("scope"), Some("repository:r:pull,push"));
        assert_eq!(c.get("service"), None);
        assert_eq!(Challenge::parse("Basic realm=x").unwrap().get("realm"), Some("x"));
        assert_eq!(join("http://a:1/v2/x", "http://b/y").unwrap(), "http://b/y");
        assert_eq!(join("http://a:1/v2/x", "/y?z").unwrap(), "http://a:1/y?z");
        assert_eq!(join("https://a/v2/x", "//b/y").unwrap(), "https://b/y");
        assert_eq!(join("http://a/v2/x?q", "y").unwrap(), "http://a/v2/y");
        assert_eq!(canonical_registry("https://index.docker.io/v1/"), DOCKER_HUB);
        let cfg = json!({"auths": {"https://index.docker.io/v1/": {"auth": "QQ=="},
                                   "r:5000": {"username": "u", "password": "p"}}});
        assert_eq!(lookup(&cfg, DOCKER_HUB).as_deref(), Some("QQ=="));
        assert_eq!(lookup(&cfg, "r:5000").as_deref(), Some("dTpw"));
        assert_eq!(lookup(&cfg, "other"), None);
    }

    #[test]
    fn bearer_challenge_without_service() {
        let (port, seen) = serve(|r, port| match r.path.as_str() {
            p if p.starts_with("/token") => ok(br#"{"token":"tok"}"#),
            _ if r.auth.as_deref() == Some("Bearer tok") => ok(MANIFEST),
            _ => (
                401,
                vec![(
                    "WWW-Authenticate",
                    format!(r#"Bearer realm="http://127.0.0.1:{port}/token""#),
                )],
                vec![],
            ),
        });
        let doc = client(port, anonymous()).manifest("1").unwrap();
        assert_eq!(doc.digest, format!("sha256:{}", oci::sha256_hex(MANIFEST)));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[1].path, "/token?scope=repository%3Ax%3Apull");
        assert_eq!(seen[1].auth, None);
    }

    #[test]
    fn basic_auth_answers_a_basic_challenge() {
        let data = b"layer bytes";
        let (port, seen) = serve(|r, _| match r.auth.as_deref() {
            Some("Basic dTpw") => ok(b"layer bytes"),
            _ => (401, vec![("WWW-Authenticate", r#"Basic realm="reg""#.into())], vec![]),
        });
        let dir = scratch("basic");
        client(port, Creds::Basic("dTpw".into())).fetch_blob(&blob(data), &dir).unwrap();
        assert_eq!(fs::read(dir.join(oci::sha256_hex(data))).unwrap(), data);
        assert_eq!(seen.lock().unwrap().len(), 2);
        // Without credentials: one line saying so.
        let err = client(port, anonymous()).manifest("1").unwrap_err();
        assert_eq!(format!("{err:#}"), "authentication required (401)");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn expired_token_is_renewed_once() {
        let data = b"blob";
        let mut tokens = 0;
        let (port, seen) = serve(move |r, port| {
            let challenge = || {
                let h = format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="reg""#);
                (401, vec![("WWW-Authenticate", h)], vec![])
            };
            match (r.path.as_str(), r.auth.as_deref()) {
                (p, _) if p.starts_with("/token") => {
                    tokens += 1;
                    ok(format!(r#"{{"access_token":"t{tokens}"}}"#).as_bytes())
                }
                (p, Some("Bearer t1")) if p.contains("/manifests/") => ok(MANIFEST),
                (p, Some("Bearer t2")) if p.contains("/blobs/") => ok(b"blob"),
                _ => challenge(),
            }
        });
        let mut c = client(port, anonymous());
        c.manifest("1").unwrap();
        let dir = scratch("renew");
        c.fetch_blob(&blob(data), &dir).unwrap();
        let seen = seen.lock().unwrap();
        let tokens: Vec<_> = seen.iter().filter(|s| s.path.starts_with("/token")).collect();
        assert_eq!(tokens.len(), 2, "{seen:?}");
        assert!(tokens[0].path.contains("service=reg"));
        // A token refused again is an error, not a loop.
        drop(seen);
        let err = c.manifest("2").unwrap_err();
        assert!(format!("{err:#}").contains("authentication required (401)"), "{err:#}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn redirect_to_another_host_drops_authorization() {
        let data = b"stored elsewhere";
        let (port, seen) = serve(|r, port| match (r.path.as_str(), r.auth.as_deref()) {
            ("/storage", None) => ok(b"stored elsewhere"),
            ("/storage", Some(_)) => (400, vec![], b"leaked".to_vec()),
            (_, Some("Basic dTpw")) => {
                (307, vec![("Location", format!("http://localhost:{port}/storage"))], vec![])
            }
            _ => (401, vec![("WWW-Authenticate", "Basic realm=r".into())], vec![]),
        });
        let dir = scratch("redirect");
        client(port, Creds::Basic("dTpw".into())).fetch_blob(&blob(data), &dir).unwrap();
        let seen = seen.lock().unwrap();
        let last = seen.last().unwrap();
        assert_eq!(
            (last.path.as_str(), last.host.clone()),
            ("/storage", format!("localhost:{port}"))
        );
        assert_eq!(last.auth, None);
        fs::remove_dir_all(dir).unwrap();
        // A redirect loop ends.
        let (port, _) = serve(|r, _| (302, vec![("Location", r.path.clone())], vec![]));
        let err = client(port, anonymous()).manifest("1").unwrap_err();
        assert_eq!(format!("{err:#}"), "more than 5 redirects");
    }

    #[test]
    fn server_errors_are_retried_then_reported() {
        let data = b"eventually";
        let mut n = 0;
        let (port, _) = serve(move |r, _| {
            n += 1;
            match r.path.as_str() {
                p if p.ends_with("/manifests/fails") => (500, vec![], vec![]),
                _ if n == 1 => (500, vec![], vec![]),
                _ => ok(b"eventually"),
            }
        });
        let dir = scratch("retry");
        let mut c = client(port, anonymous());
        c.fetch_blob(&blob(data), &dir).unwrap();
        let err = c.manifest("fails").unwrap_err();
        assert_eq!(format!("{err:#}"), "500 Internal Server Error");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn not_found_is_one_clear_line() {
        let (port, seen) = serve(|r, _| {
            let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
            match r.path.as_str() {
                "/v2/x/manifests/1" => (404, vec![], body.to_vec()),
                _ => (404, vec![], vec![]),
            }
        });
        let mut c = client(port, anonymous());
        assert_eq!(
            format!("{:#}", c.manifest("1").unwrap_err()),
            format!("manifest unknown (404): 127.0.0.1:{port} has no such repository or tag")
        );
        let dir = scratch("missing");
        let err = c.fetch_blob(&blob(b"x"), &dir).unwrap_err();
        assert_eq!(format!("{err:#}"), format!("blob {}: 404 Not Found", blob(b"x").digest));
        assert_eq!(seen.lock().unwrap().len(), 2, "a 404 is not retried");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn blob_with_wrong_digest_leaves_nothing() {
        let (port, _) = serve(|_, _| ok(b"tampered"));
        let dir = scratch("mismatch");
        let want = Descriptor { size: Some(8), ..blob(b"original") };
        let err = client(port, anonymous()).fetch_blob(&want, &dir).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.starts_with(&format!("blob {}: digest mismatch", want.digest)), "{msg}");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        // Longer than the manifest says: refused as well.
        let err = client(port, anonymous()).fetch_blob(&blob(b"short"), &dir).unwrap_err();
        assert!(format!("{err:#}").contains("where the manifest says 5"), "{err:#}");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn index_picks_the_platform_and_checks_digests() {
        let amd64 = MANIFEST.to_vec();
        let amd64_digest = format!("sha256:{}", oci::sha256_hex(&amd64));
        let index = json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": format!("sha256:{}", "b".repeat(64)),
                 "platform": {"os": "linux", "architecture": "arm64"}},
                {"digest": amd64_digest, "platform": {"os": "linux", "architecture": "amd64"}}]});
        let index = serde_json::to_vec(&index).unwrap();
        let d = amd64_digest.clone();
        let (port, _) = serve(move |r, _| match r.path.rsplit('/').next().unwrap() {
            "1" => ok(&index),
            p if p == d => ok(&amd64),
            _ => ok(b"{}"),
        });
        let mut c = client(port, anonymous());
        let first = c.manifest("1").unwrap();
        let pick = |c: &mut Client, arch: &str| {
            oci::follow(first.clone(), &Platform::host(Some(arch)), |desc| {
                c.manifest(desc["digest"].as_str().unwrap())
            })
        };
        assert_eq!(pick(&mut c, "x86_64").unwrap().digest, amd64_digest);
        let err = pick(&mut c, "aarch64").err().unwrap();
        assert!(format!("{err:#}").contains("digest mismatch"), "{err:#}");
        let err = pick(&mut c, "riscv64").err().unwrap();
        assert!(format!("{err:#}").contains("no image for platform linux/riscv64"), "{err:#}");
    }
}
