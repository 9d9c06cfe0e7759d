//! The isolation options (semantics.md, "The seed's isolation options"),
//! each checked from inside the container, as the unprivileged user.

mod common;
use common::*;

fn fixture() -> Option<String> {
    env()?;
    Some(image(Kind::Sif)?.to_string_lossy().into_owned())
}

#[test]
fn cleanenv_keeps_only_term_and_proxies() {
    let Some(img) = fixture() else { return };
    for how in ["flag", "variable"] {
        let mut args = vec!["exec"];
        if how == "flag" {
            args.push("--cleanenv");
        }
        args.extend_from_slice(&[&img, "env"]);
        let mut c = husk(&args)
            .env("FROM_HOST", "1")
            .env("TERM", "xterm-husk")
            .env("http_proxy", "http://proxy:3128")
            .env("HUSKENV_VIA_PREFIX", "kept");
        if how == "variable" {
            c = c.env("HUSK_CLEANENV", "1");
        }
        let r = c.run();
        assert_eq!(r.code, 0, "{how}: {}", r.stderr);
        let vars: Vec<&str> = r.stdout.lines().collect();
        assert!(!vars.iter().any(|v| v.starts_with("FROM_HOST=")), "{how}: {vars:?}");
        assert!(!vars.iter().any(|v| v.starts_with("USER=")), "{how}: {vars:?}");
        for want in ["TERM=xterm-husk", "http_proxy=http://proxy:3128", "LANG=C", "VIA_PREFIX=kept"]
        {
            assert!(vars.contains(&want), "{how}: {want} missing from {vars:?}");
        }
    }
    // Without it the host's variables arrive.
    let r = husk(&["exec", &img, "env"]).env("FROM_HOST", "1").run();
    assert!(r.stdout.lines().any(|l| l == "FROM_HOST=1"), "{}", r.stdout);
}

#[test]
fn env_flags_set_values_verbatim_and_bad_ones_are_one_line() {
    let Some(img) = fixture() else { return };
    let r =
        husk(&["exec", "--cleanenv", "--env", "A=$(id -u) 'q'", "--env", "FROM_HOST", &img, "env"])
            .env("FROM_HOST", "passed by name")
            .run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.lines().any(|l| l == "A=$(id -u) 'q'"), "{}", r.stdout);
    assert!(r.stdout.lines().any(|l| l == "FROM_HOST=passed by name"), "{}", r.stdout);
    let r = husk(&["exec", "--env", "=x", &img, "true"]).run();
    assert_one_line_error(&r, "--env");
    let r = husk(&["exec", "--env-file", "/nonexistent/env", &img, "true"]).run();
    assert_one_line_error(&r, "/nonexistent/env");
}
