//! Phase 7: restore the caller's process state and exec the payload.

use crate::entry::Caller;
use crate::error::{describe, show, Context, Error, Result};
use crate::sys;
use husk_protocol::Request;
use std::convert::Infallible;
use std::ffi::CString;
use std::io::{self, Write};

const DEFAULT_PATH: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn cstring(b: &[u8]) -> Result<CString> {
    // validate() has refused NUL bytes already.
    CString::new(b).map_err(|_| Error::new("argument contains NUL"))
}

fn chdir_cwd(req: &Request) -> Result<()> {
    let cwd = cstring(&req.cwd)?;
    match sys::chdir(&cwd) {
        Ok(()) => Ok(()),
        Err(e) if req.cwd_required => {
            Err(Error::io(format!("working directory {}", show(&req.cwd)), e))
        }
        Err(_) => {
            // As Apptainer does: say so, and start in the home, else in `/`.
            let home = req.home_dir().map(cstring).transpose()?;
            let fallback = match home {
                Some(h) if sys::chdir(&h).is_ok() => h,
                _ => {
                    sys::chdir(c"/").ctx(|| "chdir /".into())?;
                    c"/".into()
                }
            };
            let _ = writeln!(
                std::io::stderr(),
                "husk: warning: {} is not in the container; starting in {}",
                show(&req.cwd),
                fallback.to_string_lossy()
            );
            Ok(())
        }
    }
}

pub fn exec(req: &Request, caller: &Caller) -> Result<Infallible> {
    chdir_cwd(req)?;
    sys::umask(caller.umask);
    sys::close_from(3).ctx(|| "close fds".into())?;
    sys::restore_signals(&caller.signals).ctx(|| "restore signals".into())?;

    let argv = req.argv.iter().map(|a| cstring(a)).collect::<Result<Vec<_>>>()?;
    let envp = req.env.iter().map(|e| cstring(e)).collect::<Result<Vec<_>>>()?;
    let cmd = &req.argv[0];
    let name = show(cmd);
    if cmd.contains(&b'/') {
        let e = sys::execve(&argv[0], &argv, &envp);
        return Err(exec_error(&name, e, false));
    }
    let path = req.env.iter().find_map(|e| e.strip_prefix(b"PATH=")).unwrap_or(DEFAULT_PATH);
    let mut denied = None;
    for dir in path.split(|&b| b == b':') {
        let dir = if dir.is_empty() { &b"."[..] } else { dir };
        let mut full = dir.to_vec();
        full.push(b'/');
        full.extend_from_slice(cmd);
        let e = sys::execve(&cstring(&full)?, &argv, &envp);
        match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG) => {}
            Some(libc::EACCES) => denied = Some(e),
            _ => return Err(exec_error(&name, e, true)),
        }
    }
    Err(match denied {
        Some(e) => exec_error(&name, e, true),
        None => Error::new(format!("{name}: command not found in the container")).with_code(127),
    })
}

/// 127 for a command that is not there, 126 for one that cannot run.
fn exec_error(name: &str, e: io::Error, searched: bool) -> Error {
    let code = match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR) if !searched => 127,
        _ => 126,
    };
    Error::new(format!("{name}: {}", describe(&e))).with_code(code)
}
