use super::*;
use proptest::prelude::*;

fn sample() -> Request {
    Request {
        image: Image {
            path: b"/images/busybox.sif".to_vec(),
            kind: ImageKind::Sif { offset: 45056, size: 745472 },
        },
        argv: vec![b"/bin/sh".to_vec(), b"-c".to_vec(), b"echo hi".to_vec()],
        env: vec![b"PATH=/bin".to_vec(), b"A=b=c".to_vec()],
        cwd: b"/home/alice".to_vec(),
        cwd_required: false,
        home: Some(Bind {
            src: b"/home/alice".to_vec(),
            dst: b"/home/alice".to_vec(),
            readonly: false,
        }),
        mount_tmp: true,
        binds: vec![],
        identity: Identity {
            user_name: b"alice".to_vec(),
            gecos: b"Alice".to_vec(),
            groups: vec![GroupName { gid: 1000, name: b"alice".to_vec() }],
        },
        namespaces: Namespaces::default(),
        hostname: None,
        writable_tmpfs: false,
        fresh_tmp: false,
        fresh_home: None,
        minimal_dev: false,
        no_init: false,
        end_with_parent: false,
    }
}

#[test]
fn round_trip() {
    let r = sample();
    let bytes = encode(&r).unwrap();
    assert_eq!(read_frame(&bytes[..]).unwrap(), r);
    validate(&r).unwrap();
}

#[test]
fn wrong_version_is_refused() {
    let mut bytes = encode(&sample()).unwrap();
    bytes[4..6].copy_from_slice(&(VERSION + 1).to_le_bytes());
    assert_eq!(read_frame(&bytes[..]), Err(DecodeError::Version(VERSION + 1)));
    bytes[4..6].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(read_frame(&bytes[..]), Err(DecodeError::Version(1)));
}

#[test]
fn bad_magic_is_refused() {
    let mut bytes = encode(&sample()).unwrap();
    bytes[0] = b'X';
    assert_eq!(read_frame(&bytes[..]), Err(DecodeError::BadMagic));
}

#[test]
fn oversized_length_is_refused_before_reading() {
    let mut bytes = encode(&sample()).unwrap();
    bytes[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(read_frame(&bytes[..]), Err(DecodeError::TooLong(u64::from(u32::MAX))));
    bytes[6..10].copy_from_slice(&((MAX_BODY as u32) + 1).to_le_bytes());
    assert!(matches!(read_frame(&bytes[..]), Err(DecodeError::TooLong(_))));
}

#[test]
fn truncation_at_every_point_is_refused() {
    let bytes = encode(&sample()).unwrap();
    for cut in 0..bytes.len() {
        assert!(read_frame(&bytes[..cut]).is_err(), "cut at {cut} accepted");
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode(&sample()).unwrap();
    bytes.push(0);
    assert_eq!(read_frame(&bytes[..]), Err(DecodeError::TrailingBytes));
    // Trailing bytes inside the declared body are refused by the codec.
    let mut bytes = encode(&sample()).unwrap();
    let len = u32::from_le_bytes(bytes[6..10].try_into().unwrap()) + 1;
    bytes[6..10].copy_from_slice(&len.to_le_bytes());
    bytes.push(0);
    assert!(read_frame(&bytes[..]).is_err());
}

#[test]
fn huge_claimed_string_does_not_allocate() {
    // A body that claims a 1 TiB string must fail cleanly, not abort.
    let mut body = vec![];
    body.extend_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(decode_body(&body).is_err());
}

#[test]
fn validation_rejects_bad_paths() {
    for p in [&b"relative/x.sif"[..], b"", b"/a//b", b"/a/../b", b"/a/./b", b"/a/", b"/a\0b", b"/"]
    {
        let mut r = sample();
        r.image.path = p.to_vec();
        assert!(validate(&r).is_err(), "{:?} accepted", p);
    }
    let mut r = sample();
    r.binds.push(Bind { src: b"/data".to_vec(), dst: b"/".to_vec(), readonly: true });
    assert!(validate(&r).is_err());
}

#[test]
fn validation_rejects_bad_fields() {
    let mut r = sample();
    r.argv.clear();
    assert!(validate(&r).is_err());
    let mut r = sample();
    r.env.push(b"=x".to_vec());
    assert!(validate(&r).is_err());
    let mut r = sample();
    r.env.push(b"NOEQUALS".to_vec());
    assert!(validate(&r).is_err());
    let mut r = sample();
    r.identity.user_name = b"root:x:0:0".to_vec();
    assert!(validate(&r).is_err());
    let mut r = sample();
    r.home.as_mut().unwrap().dst = b"/x\nroot:x:0:0::/:/bin/sh".to_vec();
    assert!(validate(&r).is_err());
    let mut r = sample();
    r.image.kind = ImageKind::Sif { offset: u64::MAX, size: 2 };
    assert!(validate(&r).is_err());
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..40)
}

prop_compose! {
    fn arb_bind()(src in bytes(), dst in bytes(), readonly in any::<bool>()) -> Bind {
        Bind { src, dst, readonly }
    }
}

prop_compose! {
    fn arb_request()(
        path in bytes(),
        kind in prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(offset, size)| ImageKind::Sif { offset, size }),
            Just(ImageKind::Squashfs),
            Just(ImageKind::Dir),
        ],
        argv in proptest::collection::vec(bytes(), 0..5),
        env in proptest::collection::vec(bytes(), 0..5),
        cwd in bytes(),
        cwd_required in any::<bool>(),
        home in proptest::option::of(arb_bind()),
        mount_tmp in any::<bool>(),
        binds in proptest::collection::vec(arb_bind(), 0..4),
        user_name in bytes(),
        gecos in bytes(),
        groups in proptest::collection::vec((any::<u32>(), bytes()), 0..4),
        ns in any::<(bool, bool, bool, bool)>(),
        hostname in proptest::option::of(bytes()),
        writable_tmpfs in any::<bool>(),
        contain in any::<(bool, bool)>(),
        fresh_home in proptest::option::of(bytes()),
    ) -> Request {
        Request {
            image: Image { path, kind },
            argv, env, cwd, cwd_required, home, mount_tmp, binds,
            identity: Identity {
                user_name, gecos,
                groups: groups.into_iter().map(|(gid, name)| GroupName { gid, name }).collect(),
            },
            namespaces: Namespaces { user: false, pid: ns.0, ipc: ns.1, net: ns.2, uts: ns.3 },
            hostname,
            writable_tmpfs,
            fresh_tmp: contain.0,
            fresh_home,
            minimal_dev: contain.1,
            no_init: contain.0 && contain.1,
            end_with_parent: contain.1,
        }
    }
}

proptest! {
    #[test]
    fn any_request_round_trips(r in arb_request()) {
        let bytes = encode(&r).unwrap();
        prop_assert_eq!(read_frame(&bytes[..]).unwrap(), r.clone());
        let _ = validate(&r);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(r) = read_frame(&data[..]) {
            let _ = validate(&r);
        }
        if let Ok(r) = decode_body(&data) {
            let _ = validate(&r);
        }
    }

    #[test]
    fn mutated_frames_never_panic(r in arb_request(), idx in any::<usize>(), val in any::<u8>()) {
        let mut bytes = encode(&r).unwrap();
        let i = idx % bytes.len();
        bytes[i] = val;
        if let Ok(r) = read_frame(&bytes[..]) {
            let _ = validate(&r);
        }
    }
}

#[test]
fn host_names_follow_rfc_1123_and_need_a_uts_namespace() {
    let mut r = sample();
    r.namespaces.uts = true;
    for good in ["box1", "a", "node-7.cluster.example", &"a".repeat(63)] {
        r.hostname = Some(good.as_bytes().to_vec());
        assert_eq!(validate(&r), Ok(()), "{good}");
    }
    let long = format!("{}.{}", "a".repeat(40), "b".repeat(30));
    for bad in ["", "-x", "x-", "a..b", "under_score", "sp ace", "x\n", &"a".repeat(64), &long] {
        r.hostname = Some(bad.as_bytes().to_vec());
        assert_eq!(validate(&r).unwrap_err().field, "hostname", "{bad:?}");
    }
    r.namespaces.uts = false;
    r.hostname = Some(b"box1".to_vec());
    assert_eq!(validate(&r).unwrap_err().reason, "set without a UTS namespace");
}

#[test]
fn a_fresh_home_excludes_a_home_bind() {
    let mut r = sample();
    r.fresh_home = Some(b"/home/alice".to_vec());
    assert_eq!(validate(&r).unwrap_err().field, "fresh_home");
    r.home = None;
    assert_eq!(validate(&r), Ok(()));
    assert_eq!(r.home_dir(), Some(&b"/home/alice"[..]));
    for bad in [&b"/"[..], b"relative", b"/a:b", b"/a/../b"] {
        r.fresh_home = Some(bad.to_vec());
        assert!(validate(&r).is_err(), "{bad:?}");
    }
}
