//! Field checks the starter runs on every decoded request, before any policy
//! check. Pure, total and panic-free.

use crate::{
    Bind, ImageKind, Request, MAX_ARGS, MAX_BINDS, MAX_ENV, MAX_GROUPS, MAX_HOSTNAME, MAX_NAME,
    MAX_PATH,
};
use std::fmt;

#[derive(Debug, PartialEq, Eq)]
pub struct ValidationError {
    pub field: &'static str,
    pub reason: &'static str,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid request: {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ValidationError {}

fn err(field: &'static str, reason: &'static str) -> Result<(), ValidationError> {
    Err(ValidationError { field, reason })
}

/// An absolute, normal path: starts with `/`, no empty, `.` or `..`
/// components, no trailing slash (except `/` itself), no NUL.
pub fn check_path(field: &'static str, p: &[u8]) -> Result<(), ValidationError> {
    if p.is_empty() || p.len() > MAX_PATH {
        return err(field, "path is empty or too long");
    }
    if p.contains(&0) {
        return err(field, "path contains NUL");
    }
    if p[0] != b'/' {
        return err(field, "path is not absolute");
    }
    if p == b"/" {
        return Ok(());
    }
    for comp in p[1..].split(|&b| b == b'/') {
        match comp {
            b"" => return err(field, "path has an empty component or trailing slash"),
            b"." | b".." => return err(field, "path has a '.' or '..' component"),
            _ => {}
        }
    }
    Ok(())
}

fn check_name(field: &'static str, n: &[u8], may_be_empty: bool) -> Result<(), ValidationError> {
    if n.len() > MAX_NAME || (!may_be_empty && n.is_empty()) {
        return err(field, "empty or too long");
    }
    if n.iter().any(|&b| b == 0 || b == b'\n' || b == b':') {
        return err(field, "contains NUL, newline or ':'");
    }
    Ok(())
}

fn check_bind(field: &'static str, b: &Bind) -> Result<(), ValidationError> {
    check_path(field, &b.src)?;
    check_path(field, &b.dst)?;
    if b.dst == b"/" {
        return err(field, "destination is the container root");
    }
    Ok(())
}

/// A host name as RFC 1123 allows: dot-separated labels of 1 to 63 letters,
/// digits and hyphens, no label starting or ending with a hyphen; at most
/// the kernel's 64 bytes in all.
pub fn check_hostname(h: &[u8]) -> Result<(), ValidationError> {
    if h.is_empty() || h.len() > MAX_HOSTNAME {
        return err("hostname", "empty or longer than 64 bytes");
    }
    for label in h.split(|&b| b == b'.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            && label.first() != Some(&b'-')
            && label.last() != Some(&b'-');
        if !ok {
            return err("hostname", "not an RFC 1123 host name");
        }
    }
    Ok(())
}

/// Check every field of a decoded request.
pub fn validate(req: &Request) -> Result<(), ValidationError> {
    check_path("image.path", &req.image.path)?;
    if req.image.path == b"/" {
        return err("image.path", "the host root is not an image");
    }
    if let ImageKind::Sif { offset, size } = req.image.kind {
        if size == 0 || offset.checked_add(size).is_none_or(|end| end > i64::MAX as u64) {
            return err("image.kind", "SIF partition bounds are invalid");
        }
    }
    if req.argv.is_empty() || req.argv.len() > MAX_ARGS {
        return err("argv", "empty or too many arguments");
    }
    if req.argv[0].is_empty() {
        return err("argv", "empty command name");
    }
    if req.argv.iter().any(|a| a.contains(&0)) {
        return err("argv", "argument contains NUL");
    }
    if req.env.len() > MAX_ENV {
        return err("env", "too many variables");
    }
    for e in &req.env {
        match e.iter().position(|&b| b == b'=') {
            Some(0) | None => return err("env", "entry is not NAME=value"),
            Some(_) => {}
        }
        if e.contains(&0) {
            return err("env", "entry contains NUL");
        }
    }
    check_path("cwd", &req.cwd)?;
    if let Some(home) = &req.home {
        check_bind("home", home)?;
    }
    if let Some(fresh) = &req.fresh_home {
        if req.home.is_some() {
            return err("fresh_home", "set together with a home bind");
        }
        check_path("fresh_home", fresh)?;
        if fresh == b"/" {
            return err("fresh_home", "the container root");
        }
    }
    // The home path becomes a field of the container's passwd line.
    if req.home_dir().is_some_and(|h| h.iter().any(|&b| b == b':' || b == b'\n')) {
        return err("home", "path contains ':' or a newline");
    }
    if req.binds.len() > MAX_BINDS {
        return err("binds", "too many binds");
    }
    for b in &req.binds {
        check_bind("binds", b)?;
    }
    check_name("identity.user_name", &req.identity.user_name, false)?;
    check_name("identity.gecos", &req.identity.gecos, true)?;
    if req.identity.groups.len() > MAX_GROUPS {
        return err("identity.groups", "too many groups");
    }
    for g in &req.identity.groups {
        check_name("identity.groups", &g.name, false)?;
    }
    if let Some(h) = &req.hostname {
        if !req.namespaces.uts {
            return err("hostname", "set without a UTS namespace");
        }
        check_hostname(h)?;
    }
    Ok(())
}
