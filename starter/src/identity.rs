//! The container's `/etc/passwd` and `/etc/group`: the image's lines plus the
//! caller. Pure functions over bytes; names come from the host (via the
//! request), numbers from the kernel.

/// Field `i` of a colon-separated line.
fn field(line: &[u8], i: usize) -> Option<&[u8]> {
    line.split(|&b| b == b':').nth(i)
}

fn lines(file: &[u8]) -> impl Iterator<Item = &[u8]> {
    file.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

pub struct User<'a> {
    pub name: &'a [u8],
    pub uid: u32,
    pub gid: u32,
    pub gecos: &'a [u8],
    pub home: &'a [u8],
}

/// The image's passwd with the caller's line replacing any line for the same
/// uid or name (keeping that line's shell), or appended with `/bin/sh`.
pub fn passwd(image: &[u8], u: &User<'_>) -> Vec<u8> {
    let uid = u.uid.to_string();
    let mut shell: Option<&[u8]> = None;
    let mut out = Vec::with_capacity(image.len() + 128);
    for l in lines(image) {
        let same_uid = field(l, 2) == Some(uid.as_bytes());
        if same_uid || field(l, 0) == Some(u.name) {
            if same_uid && shell.is_none() {
                shell = field(l, 6).filter(|s| !s.is_empty());
            }
            continue;
        }
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    for part in [
        u.name,
        b":x:",
        uid.as_bytes(),
        b":",
        u.gid.to_string().as_bytes(),
        b":",
        u.gecos,
        b":",
        u.home,
        b":",
        shell.unwrap_or(b"/bin/sh"),
        b"\n",
    ] {
        out.extend_from_slice(part);
    }
    out
}

/// The image's group file with one line for each of the caller's groups
/// that has a host name (replacing the image's line for that gid), listing
/// the caller as a member.
pub fn group(image: &[u8], user: &[u8], groups: &[(u32, &[u8])]) -> Vec<u8> {
    let ours = |l: &[u8]| {
        groups.iter().any(|(gid, name)| {
            field(l, 2) == Some(gid.to_string().as_bytes()) || field(l, 0) == Some(name)
        })
    };
    let mut out = Vec::with_capacity(image.len() + 64 * groups.len());
    for l in lines(image).filter(|l| !ours(l)) {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    for (gid, name) in groups {
        out.extend_from_slice(name);
        out.extend_from_slice(b":x:");
        out.extend_from_slice(gid.to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(user);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: User<'static> =
        User { name: b"alice", uid: 1000, gid: 1000, gecos: b"Alice", home: b"/home/alice" };

    #[test]
    fn passwd_replaces_same_uid_and_keeps_shell() {
        let img = b"root:x:0:0:root:/root:/bin/sh\nubuntu:x:1000:1000::/home/ubuntu:/bin/bash\n";
        assert_eq!(
            passwd(img, &ALICE),
            b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
        );
    }

    #[test]
    fn passwd_appends_and_handles_missing_file() {
        assert_eq!(passwd(b"", &ALICE), b"alice:x:1000:1000:Alice:/home/alice:/bin/sh\n");
        let img = b"root:x:0:0:root:/root:/bin/sh";
        assert_eq!(
            passwd(img, &ALICE),
            b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
        );
        // A line with the caller's name but another uid goes away.
        let img = b"alice:x:5:5::/:/bin/false\n";
        assert_eq!(passwd(img, &ALICE), b"alice:x:1000:1000:Alice:/home/alice:/bin/sh\n");
    }

    #[test]
    fn group_replaces_and_appends() {
        let img = b"root:x:0:\nusers:x:100:\nstaff:x:50:\n";
        let g: [(u32, &[u8]); 2] = [(1000, b"alice"), (100, b"users")];
        assert_eq!(
            group(img, b"alice", &g),
            b"root:x:0:\nstaff:x:50:\nalice:x:1000:alice\nusers:x:100:alice\n"
        );
    }
}
