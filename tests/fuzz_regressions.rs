//! Fuzzing's findings kept as ordinary tests: every file under `tests/fuzz_regressions/<target>/`
//! (crash inputs copied there by `scripts/fuzz.sh`) and every seed under `fuzz/corpus/<target>/`
//! goes through the same invariants as the fuzz target (`fuzz/checks.rs`, shared with
//! `#[path]`), so `cargo test` keeps them fixed without a nightly toolchain.
//!
//! Targets: `token_response` (token endpoint bodies and `Retry-After`), `config_file` (TOML
//! config files), `rewrite` (upstream URL, request target and headers).

#[path = "../fuzz/checks.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        root.join("tests/fuzz_regressions").join(target),
        root.join("fuzz/corpus").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_file() && p.file_name().is_none_or(|n| n != "README.md") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// Runs every input of `target` through `check` and reports all failures at once.
fn run(target: &str) {
    let check = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .unwrap();
    let files = inputs(target);
    assert!(!files.is_empty(), "no inputs for {target}");
    let mut failures = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap();
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failures.push(format!("{}: {msg}", f.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {target} inputs break an invariant:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn token_response_inputs() {
    run("token_response");
}

#[test]
fn config_file_inputs() {
    let result = catch_unwind(|| run("config_file"));
    checks::remove_scratch();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn rewrite_inputs() {
    run("rewrite");
}

// ---------------------------------------------------------------------------------------------
// Bugs found by fuzzing, now fixed; each test below pins its fix (the crash inputs stay under
// tests/fuzz_regressions/<target>/ and run through `*_inputs` above too).
// ---------------------------------------------------------------------------------------------

/// `token::oauth::parse_retry_after` caps an HTTP date at 24 h, as it does delay-seconds: one
/// `429` with a `Retry-After` years ahead must not hold every refresh that long (found by
/// fuzzing `token_response`).
#[test]
fn retry_after_http_date_is_capped_at_a_day() {
    use token_sidecar::token::oauth::parse_retry_after;
    let day = std::time::Duration::from_secs(24 * 3600);
    // An HTTP date (RFC 9110's three forms) years ahead: read, and cut to a day.
    for v in [
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Friday, 31-Dec-99 23:59:59 GMT",
        "Fri Dec 31 23:59:59 9999",
    ] {
        let d = parse_retry_after(v);
        assert!(
            d.is_some_and(|d| d <= day),
            "Retry-After {v:?} parsed as {d:?}, more than the 24 h cap on delay-seconds"
        );
    }
    // Not an HTTP date: not a Retry-After at all (the default wait applies), never a longer one.
    assert_eq!(parse_retry_after("2099-01-01 00:00:00"), None);
}

/// `proxy::rewrite::strip_hop_by_hop` splits `Connection` as bytes: one byte >= 0x80 must not
/// hide the other headers it names (RFC 9110 7.6.1; found by fuzzing `rewrite`).
#[test]
fn connection_with_obs_text_still_names_headers() {
    use http::{HeaderMap, HeaderValue};
    let mut h = HeaderMap::new();
    h.insert(
        "connection",
        HeaderValue::from_bytes(b"x-hop, HTTP2-Settings, \xff").unwrap(),
    );
    h.insert("x-hop", HeaderValue::from_static("1"));
    h.insert(
        "http2-settings",
        HeaderValue::from_static("AAMAAABkAARAAAAAAAIAAAAA"),
    );
    token_sidecar::proxy::rewrite::prepare_request_headers(&mut h, false);
    assert!(h.is_empty(), "forwarded: {h:?}");
}

/// A target with an empty path and a query (`http://api.example.com?x` in absolute form, or
/// HTTP/2's authority form) is forwarded as `/?x`: RFC 9113 8.3.1 wants `:path` to start with
/// `/`, and under a base path it must become `/restapi/?x` (found by fuzzing `rewrite`).
#[test]
fn empty_path_with_query_is_forwarded_with_a_slash() {
    use http::{Method, Uri, Version};
    use token_sidecar::proxy::rewrite::check_target;
    use token_sidecar::proxy::upstream::Upstream;
    for base in ["https://api.example.com", "https://api.example.com/restapi"] {
        let up = Upstream::parse(base).unwrap();
        let expected = up.join(&"/?x=1".parse().unwrap()).unwrap();
        for (target, version) in [
            ("http://api.example.com?x=1", Version::HTTP_11),
            ("http://whatever.example?x=1", Version::HTTP_2),
        ] {
            let uri: Uri = target.parse().unwrap();
            let pq = check_target(&Method::GET, version, &uri, &up).unwrap();
            let joined = up.join(&pq).unwrap();
            assert_eq!(
                joined.path_and_query().unwrap().as_str(),
                expected.path_and_query().unwrap().as_str(),
                "{target} via {base}"
            );
        }
    }
}

/// `config::load` refuses durations over 365 days, so that no deadline computed from one can
/// overflow (`default_lifetime = "300000000000y"` used to panic in `parse_success` at the
/// first token response without `expires_in`).
#[test]
fn huge_durations_are_refused_by_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.toml");
    std::fs::write(
        &path,
        "[[route]]\nupstream = \"https://api.example.com\"\n\
         [token.t]\ngrant = \"client_credentials\"\n\
         token_url = \"https://id.example.com/oauth2/token\"\n\
         client_id = \"id\"\nclient_secret = \"s\"\n\
         default_lifetime = \"300000000000y\"\n",
    )
    .unwrap();
    let flags = token_sidecar::config::Flags {
        config: Some(path),
        ..Default::default()
    };
    // Refusing the configuration is a fix; so is accepting a lifetime that cannot overflow.
    if let Ok(cfg) = token_sidecar::config::load(&flags, &|_| None) {
        let set = token_sidecar::token::oauth::parse_success(
            br#"{"access_token":"a","token_type":"bearer"}"#,
            std::time::SystemTime::now(),
            cfg.tokens["t"].default_lifetime,
        );
        assert!(set.is_ok(), "{set:?}");
    }
}
