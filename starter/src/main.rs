//! husk-starter: the setuid part of husk. Reads one request from fd 3,
//! checks it against the root-owned config, builds the container in a new
//! mount namespace, drops to the caller for good and execs the payload.
//! Installed without the setuid bit, or asked to (`-u`), it drops first and
//! builds the same container in a user namespace of its own (`userns`).
//! See SECURITY.md for the threat model; the phases below are in order.

#![deny(unsafe_code)]

mod config;
mod entry;
mod error;
mod identity;
mod mounts;
mod objects;
mod payload;
mod pidns;
mod privs;
mod userns;
// The only module allowed `unsafe`: one small wrapper per system call.
#[allow(unsafe_code)]
mod sys;

use error::{Error, Result};
use std::convert::Infallible;
use std::io::Write;

fn run() -> Result<Infallible> {
    // 1. entry hygiene: stdio, setuid check, caller ids, env, umask, signals, fds
    let mut caller = entry::sanitize()?;
    // 2. the request: bounded read, strict decode, field validation
    let req = read_request()?;
    caller.end_with_parent = req.end_with_parent;
    // 3. the admin config and the policy it sets
    let conf = config::load(caller.trusted_user)?;
    let user_ns = choose_user_ns(&req, &conf, &caller)?;
    check_policy(&req, &conf)?;
    let mut checked = None;
    if user_ns {
        // Nothing privileged from here on: drop first, then a user
        // namespace of the caller's own.
        if caller.privileged {
            privs::drop_for_good(&caller)?;
            caller.privileged = false;
        }
        checked = Some(objects::check_image_early(&req, &conf, &caller)?);
        userns::enter(&mut caller)?;
    }
    // 4. open the image and bind sources as the caller; keep the fds
    let objs = objects::open_all(&req, &conf, &caller, checked)?;
    // 5. namespaces, image, mounts, pivot_root
    mounts::build(&req, &caller, objs, &conf)?;
    // 6. drop to the caller for good
    privs::drop_for_good(&caller)?;
    // 7. restore the caller's state and exec (with --pid, under a small init)
    if req.namespaces.pid {
        pidns::rearm()?;
    } else if userns::helper_running() {
        // squashfuse serves the image: the starter stays, to end it when
        // the container ends.
        pidns::supervise(&caller)?;
    } else {
        // The starter itself becomes the payload.
        pidns::tie_to_parent(&caller)?;
    }
    if req.namespaces.pid && !req.no_init {
        pidns::init(&req, &caller)
    } else {
        payload::exec(&req, &caller)
    }
}

fn read_request() -> Result<husk_protocol::Request> {
    let pipe = sys::request_file().map_err(|e| Error::io("request", e))?;
    let req = husk_protocol::read_frame(pipe).map_err(|e| Error::new(format!("request: {e}")))?;
    husk_protocol::validate(&req).map_err(|e| Error::new(e.to_string()))?;
    Ok(req)
}

/// Setuid mode, or an unprivileged user namespace? The latter when asked
/// for (`-u`), when the starter has no privileges, or when the config
/// allows no setuid mode; refused unless the config allows it.
fn choose_user_ns(
    req: &husk_protocol::Request,
    conf: &config::Config,
    caller: &entry::Caller,
) -> Result<bool> {
    let path = config::CONFIG_PATH;
    let why = if req.namespaces.user {
        "--userns"
    } else if !caller.privileged {
        "user namespace mode (this husk-starter is not setuid root)"
    } else if caller.uid != 0 && !conf.allow_setuid {
        if !conf.allow_user_ns {
            return Err(Error::new(format!(
                "neither setuid mode nor user namespace mode is allowed \
                 ('allow setuid' and 'allow user namespaces' in {path})"
            )));
        }
        return Ok(true);
    } else {
        return Ok(false);
    };
    if !conf.allow_user_ns {
        return Err(Error::new(format!("{why}: not allowed by 'allow user namespaces' in {path}")));
    }
    Ok(true)
}

fn check_policy(req: &husk_protocol::Request, conf: &config::Config) -> Result<()> {
    let deny = |what: String, directive: &str| {
        Err(Error::new(format!("{what}: not allowed by '{directive}' in {}", config::CONFIG_PATH)))
    };
    let f = conf.formats;
    let (allowed, name) = match req.image.kind {
        husk_protocol::ImageKind::Sif { .. } => (f.sif, "sif"),
        husk_protocol::ImageKind::Squashfs => (f.squashfs, "squashfs"),
        husk_protocol::ImageKind::Dir => (f.dir, "dir"),
    };
    if !allowed {
        let image = error::show(&req.image.path);
        return deny(format!("image {image}: format {name}"), "allowed image formats");
    }
    let ns = &req.namespaces;
    let asked = [
        (ns.pid, conf.allow_pid_ns, "--pid", "allow pid namespace"),
        (ns.ipc, conf.allow_ipc_ns, "--ipc", "allow ipc namespace"),
        (ns.net, conf.allow_net_ns, "--net", "allow net namespace"),
        (ns.uts, conf.allow_uts_ns, "--uts/--hostname", "allow uts namespace"),
    ];
    for (on, allowed, flag, directive) in asked {
        if on && !allowed {
            return Err(Error::new(format!(
                "{flag}: not allowed by '{directive}' in {}",
                config::CONFIG_PATH
            )));
        }
    }
    Ok(())
}

fn main() {
    let err = match run() {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // stderr may be closed or a broken pipe; the exit status still tells.
    let _ = writeln!(std::io::stderr(), "husk: {err}");
    sys::exit(err.code);
}
