//! `--pid`: the container's first process is a child of the starter, in a
//! new PID namespace. The starter itself drops to the caller at once and
//! only relays: signals sent to it go to the container, and the
//! container's status becomes its own. Inside, a small init (PID 1, the
//! caller too by then) starts the payload as PID 2, reaps every orphan,
//! passes on the signals sent to it and exits with the payload's status.

use crate::entry::Caller;
use crate::error::{Context, Error, Result};
use crate::{payload, privs, sys};
use husk_protocol::Request;
use std::convert::Infallible;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

/// Fork into the PID namespace that `unshare(CLONE_NEWPID)` prepared. Only
/// the child (its PID 1) returns; the starter drops and relays until the
/// child ends, then exits with its status.
pub fn enter(caller: &Caller, no_init: bool) -> Result<()> {
    // Blocked from here: signals wait for `relay` (or, in the payload, are
    // restored to the caller's mask before exec).
    sys::block_all_signals().ctx(|| "block signals".into())?;
    // The starter holds the write end as long as it lives (its parent is
    // outside the child's namespace, so getppid() there says nothing).
    let (alive_r, alive_w) = sys::pipe_nonblocking().ctx(|| "pipe".into())?;
    let child = sys::fork().ctx(|| "fork into the PID namespace".into())?;
    if child == 0 {
        // Out of the caller's reach while it builds (the caller could stop
        // a process whose real uid is theirs); the drop gives it back. (In
        // a user namespace it holds nothing the caller lacks.)
        if !caller.userns {
            sys::become_root_entirely().ctx(|| "setresuid".into())?;
        }
        drop(alive_w);
        // Whatever ends the starter ends the container; had it ended
        // before this took effect, the pipe says so.
        sys::set_parent_death_signal(libc::SIGKILL).ctx(|| "set parent death signal".into())?;
        check_starter(&alive_r)?;
        *ALIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(alive_r);
        return Ok(());
    }
    drop(alive_r);
    let _alive = sys::move_fd(alive_w, 3).ctx(|| "keep pipe".into())?;
    sys::close_from(4).ctx(|| "close fds".into())?;
    privs::drop_for_good(caller)?;
    tie_to_parent(caller)?;
    end_as(crate::userns::finish(relay(child, false, no_init)))
}

/// Exit with the container's status; ended by a signal, it looks the same
/// from outside (the caller's shell stops a loop on ^C, say).
fn end_as(code: i32) -> ! {
    if let Some(sig) = code.checked_sub(128).filter(|s| QUIET_SIGNALS.contains(s)) {
        sys::die_of(sig);
    }
    sys::exit(code)
}

/// Without a PID namespace, when a helper serves the image: the payload
/// runs in a child, and the starter (dropped already) relays signals to
/// it, then ends the helper and exits with the payload's status. Only the
/// child returns.
pub fn supervise(caller: &Caller) -> Result<()> {
    sys::block_all_signals().ctx(|| "block signals".into())?;
    let parent = sys::getpid();
    let child = sys::fork().ctx(|| "fork the payload".into())?;
    if child == 0 {
        sys::set_parent_death_signal(libc::SIGKILL).ctx(|| "set parent death signal".into())?;
        if sys::getppid() != parent {
            return Err(Error::new("the starter ended while the container was being built"));
        }
        return Ok(());
    }
    sys::close_from(3).ctx(|| "close fds".into())?;
    tie_to_parent(caller)?;
    end_as(crate::userns::finish(relay(child, false, false)))
}

/// With `end_with_parent` (set by the starter's caller in the request):
/// after the drop, the process the container hangs on ends when the one
/// that started the starter does (which must still be there).
pub fn tie_to_parent(caller: &Caller) -> Result<()> {
    if !caller.end_with_parent {
        return Ok(());
    }
    sys::set_parent_death_signal(libc::SIGKILL).ctx(|| "set parent death signal".into())?;
    if sys::getppid() != caller.ppid {
        return Err(Error::new("the process that started husk-starter has ended"));
    }
    Ok(())
}

/// Signals whose default action ends a process without a core dump.
const QUIET_SIGNALS: [libc::c_int; 8] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGKILL,
    libc::SIGPIPE,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// The read end of the pipe whose writer is the starter, kept by PID 1
/// until [`rearm`].
static ALIVE: Mutex<Option<OwnedFd>> = Mutex::new(None);

fn check_starter(alive: &OwnedFd) -> Result<()> {
    if sys::pipe_writer_gone(alive.as_fd()) {
        return Err(Error::new("the starter ended while the container was being built"));
    }
    Ok(())
}

/// In PID 1 while it builds the container (elsewhere a no-op): the kernel
/// forgets the parent-death signal whenever the credentials change, as they
/// do for every lookup made as the caller and at the drop. Set it again,
/// and make sure the starter did not end in between.
pub fn keep_tied() -> Result<()> {
    let alive = ALIVE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(a) = alive.as_ref() {
        sys::set_parent_death_signal(libc::SIGKILL).ctx(|| "set parent death signal".into())?;
        check_starter(a)?;
    }
    Ok(())
}

/// After the drop, in PID 1: tied to the starter one last time; the pipe
/// is no longer needed.
pub fn rearm() -> Result<()> {
    if ALIVE.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
        return Err(Error::new("PID namespace: no link to the starter"));
    }
    keep_tied()?;
    ALIVE.lock().unwrap_or_else(|e| e.into_inner()).take();
    Ok(())
}

/// PID 1 of the container: start the payload as PID 2 and stay as its init.
pub fn init(req: &Request, caller: &Caller) -> Result<Infallible> {
    sys::close_from(3).ctx(|| "close fds".into())?;
    let payload = sys::fork().ctx(|| "fork the payload".into())?;
    if payload == 0 {
        return payload::exec(req, caller);
    }
    sys::exit(relay(payload, true, false))
}

/// Wait for `child`, passing on every signal a process sends to us (those
/// the terminal sends to the whole process group reach the child already);
/// with `reap_all`, reap every other child that ends meanwhile. The
/// child's status, as an exit code.
/// With `first_in_ns`, the child is a PID namespace's first process that
/// runs the payload itself (`--no-init`): it ignores the terminal's stop
/// signals, so a ^Z stops it with SIGSTOP.
fn relay(child: libc::pid_t, reap_all: bool, first_in_ns: bool) -> i32 {
    // Signals the child may not be sent yet (it is root until its drop),
    // tried again every 10 ms until it may.
    let mut held: Vec<libc::c_int> = Vec::new();
    loop {
        let next = sys::next_signal((!held.is_empty()).then_some(10));
        held.retain(|&s| !sys::kill(child, s));
        match next {
            Some((libc::SIGCHLD, _)) => {
                while let Some((pid, status)) = sys::reap(if reap_all { -1 } else { child }) {
                    if pid == child {
                        return sys::status_code(status);
                    }
                }
            }
            // Job control: ^Z stopped the container (the terminal signals
            // its whole process group); the starter stops too, so that the
            // shell sees a stopped job, and `fg` continues them both. (Not
            // husk's init, which cannot stop itself.) A stop sent to the
            // starter alone goes on to the container first.
            Some((sig @ (libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU), sent)) if !reap_all => {
                if sent {
                    sys::kill(child, sig);
                } else if first_in_ns {
                    sys::kill(child, libc::SIGSTOP);
                }
                sys::stop_self();
            }
            Some((sig, true)) if !sys::kill(child, sig) => held.push(sig),
            _ => {}
        }
    }
}
