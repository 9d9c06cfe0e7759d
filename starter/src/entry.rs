//! Phase 1: entry hygiene. Record who called us, then put the process into a
//! known state before reading a single byte from the caller.

use crate::error::{Context, Error, Result};
use crate::sys;
use std::os::fd::AsFd;

/// The caller, as the kernel reports it at entry. Never taken from the request.
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub umask: u32,
    pub signals: sys::SignalState,
    /// The directory husk was started in (`st_dev`, `st_ino`), if it could
    /// be looked at: the one bind `user bind control = no` still allows.
    pub cwd: Option<(u64, u64)>,
    /// The process that started the starter.
    pub ppid: libc::pid_t,
    /// The request's `end_with_parent`.
    pub end_with_parent: bool,
    /// Whose files, besides root's, the starter may trust (its config, its
    /// helper): the caller's, for a starter without the setuid bit, which
    /// has the caller's rights only. Fixed at entry.
    pub trusted_user: Option<u32>,
    /// Started with root's powers (setuid root, or by root itself); false
    /// for a starter installed without the setuid bit.
    pub privileged: bool,
    /// Set once the starter has dropped everything and made a user
    /// namespace of its own: what it may do from then on, it may do only
    /// there.
    pub userns: bool,
}

pub fn sanitize() -> Result<Caller> {
    sys::ensure_stdio().ctx(|| "reopen closed stdio".into())?;
    let (ruid, euid, _) = sys::getresuid();
    let (rgid, _, _) = sys::getresgid();
    let setuid = sys::at_secure() && euid == 0;
    let root = ruid == 0 && euid == 0;
    // Without the setuid bit the starter has no more rights than the
    // caller and runs in a user namespace (see `userns`).
    let plain = !sys::at_secure() && ruid == euid;
    if !setuid && !root && !plain {
        return Err(Error::new(
            "husk-starter must be setuid root or have no special rights at all",
        ));
    }
    let groups = sys::getgroups().ctx(|| "getgroups".into())?;
    sys::clearenv();
    let umask = sys::umask(0o077);
    let signals = sys::reset_signals().ctx(|| "reset signals".into())?;
    let cwd = sys::open(c".", libc::O_PATH | libc::O_DIRECTORY)
        .and_then(|d| sys::fstat(d.as_fd()))
        .ok()
        .map(|st| (st.st_dev, st.st_ino));
    sys::chdir(c"/").ctx(|| "chdir /".into())?;
    sys::close_from(sys::REQUEST_FD as u32 + 1).ctx(|| "close inherited fds".into())?;
    // A non-interactive run gets no controlling terminal (TIOCSTI, attack class 19).
    if !sys::stdin_is_tty() {
        sys::drop_controlling_tty();
    }
    sys::set_no_new_privs().ctx(|| "set no_new_privs".into())?;
    sys::set_not_dumpable().ctx(|| "set not dumpable".into())?;
    let privileged = setuid || root;
    let ppid = sys::getppid();
    Ok(Caller {
        uid: ruid,
        gid: rgid,
        groups,
        umask,
        signals,
        cwd,
        ppid,
        end_with_parent: false,
        trusted_user: (!privileged).then_some(ruid),
        privileged,
        userns: false,
    })
}

/// Run `f` with the caller's filesystem uid and gid and no effective
/// capabilities, so that the kernel checks every lookup and open against the
/// caller's rights alone (CAP_SYS_PTRACE, say, would otherwise let root
/// follow `/proc/PID/cwd` of a process the caller may not trace).
pub fn as_caller<T>(caller: &Caller, f: impl FnOnce() -> Result<T>) -> Result<T> {
    // Root needs no switch; neither does a starter that has dropped, or
    // never had, any privilege.
    if caller.uid == 0 || (!caller.privileged && !caller.userns) {
        return f();
    }
    if caller.userns {
        // The ids are the caller's already; only the namespace's
        // capabilities are put aside.
        sys::set_effective_capabilities(false).ctx(|| "drop effective capabilities".into())?;
        let r = f();
        sys::set_effective_capabilities(true).ctx(|| "restore effective capabilities".into())?;
        crate::pidns::keep_tied()?;
        return r;
    }
    // The fs ids first, while CAP_SETUID is still effective (in a PID
    // namespace's first process the real uid is root too).
    sys::set_fs_ids(caller.uid, caller.gid).ctx(|| "switch to caller's fs ids".into())?;
    sys::set_effective_capabilities(false).ctx(|| "drop effective capabilities".into())?;
    if sys::get_capabilities().ctx(|| "capget".into())?[0] != 0 {
        return Err(Error::new("effective capabilities were not dropped"));
    }
    let r = f();
    // setfsuid(0) needs CAP_SETUID: capabilities first.
    sys::set_effective_capabilities(true).ctx(|| "restore effective capabilities".into())?;
    sys::set_fs_ids(0, 0).ctx(|| "switch back from caller's fs ids".into())?;
    // The credentials changed: a PID namespace's first process must be
    // tied to the starter again.
    crate::pidns::keep_tied()?;
    r
}
