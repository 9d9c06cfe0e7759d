//! Phase 6: drop to the caller for good, then prove it.

use crate::entry::Caller;
use crate::error::{Context, Error, Result};
use crate::sys;

pub fn drop_for_good(caller: &Caller) -> Result<()> {
    sys::drop_bounding_set().ctx(|| "drop capability bounding set".into())?;
    sys::clear_ambient().ctx(|| "clear ambient capabilities".into())?;
    // In a user namespace setgroups is denied (it could shed a group that
    // denies access): the caller keeps the groups the kernel gave them.
    if !caller.userns {
        sys::setgroups(&caller.groups).ctx(|| "setgroups".into())?;
    }
    sys::setresgid(caller.gid).ctx(|| "setresgid".into())?;
    sys::setresuid(caller.uid).ctx(|| "setresuid".into())?;
    sys::clear_capabilities().ctx(|| "clear capabilities".into())?;
    verify(caller)
}

fn verify(caller: &Caller) -> Result<()> {
    let fail = |what: &str| Err(Error::new(format!("privilege drop failed: {what}")));
    let (u, g) = (caller.uid, caller.gid);
    if sys::getresuid() != (u, u, u) || sys::getresgid() != (g, g, g) {
        return fail("ids");
    }
    // In a user namespace, groups that are not mapped show as the overflow
    // gid: there only their number can be compared.
    let groups = sys::getgroups().ctx(|| "getgroups".into())?;
    let same =
        if caller.userns { groups.len() == caller.groups.len() } else { groups == caller.groups };
    if !same {
        return fail("groups");
    }
    if sys::get_capabilities().ctx(|| "capget".into())? != [0, 0, 0] || !sys::bounding_set_empty() {
        return fail("capabilities");
    }
    if u != 0 && sys::setresuid(0).is_ok() {
        return fail("uid 0 could be regained");
    }
    Ok(())
}
