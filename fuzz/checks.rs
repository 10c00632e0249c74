//! The invariants the fuzz targets check, shared by `fuzz/fuzz_targets/*.rs` (libFuzzer) and
//! `tests/fuzz_regressions.rs` (`cargo test`), both of which include this file with `#[path]`.
//!
//! Each `check_*` function takes one raw input and panics when an invariant is broken: a panic
//! is a crash to libFuzzer and a failed test to `cargo test`, so a crash input saved under
//! `tests/fuzz_regressions/<target>/` keeps failing the normal suite until it is fixed.
//!
//! Inputs are plain text so that seed corpora stay readable:
//! - `token_response`: the whole input is a token endpoint's body (and a `Retry-After` value);
//! - `config_file`: the whole input is a TOML config file;
//! - `rewrite`: line 1 the upstream URL, line 2 the method, line 3 the HTTP version (`1.0`,
//!   `1.1`, `2`), line 4 the request target, then one `name: value` header per line.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Uri};
use http::{Method, StatusCode, Version};
use token_sidecar::config::{self, file, Flags, Grant};
use token_sidecar::proxy::rewrite;
use token_sidecar::proxy::upstream::Upstream;
use token_sidecar::secret::Secret;
use token_sidecar::token::oauth::{self, OAuthError};
use token_sidecar::token::set::TokenSet;

/// Whether an invariant whose violation is a reported, not yet fixed bug is to be skipped:
/// `FUZZ_KNOWN_BUGS=retry-after-cap,connection-obs-text,empty-path,default-lifetime-overflow` lets a fuzzing run look for other bugs
/// meanwhile. `cargo test` leaves it unset, so the regression inputs fail until the fix.
fn known_bug(name: &str) -> bool {
    static KNOWN: OnceLock<Vec<String>> = OnceLock::new();
    KNOWN
        .get_or_init(|| {
            std::env::var("FUZZ_KNOWN_BUGS")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .iter()
        .any(|k| k == name)
}

/// A target's check: panics when an invariant is broken.
pub type Check = fn(&[u8]);

/// Which check a regression file or corpus directory belongs to.
pub const TARGETS: [(&str, Check); 3] = [
    ("token_response", check_token_response),
    ("config_file", check_config_file),
    ("rewrite", check_rewrite),
];

// ---------------------------------------------------------------------------------------------
// token_response: parse_success, parse_error, parse_retry_after
// ---------------------------------------------------------------------------------------------

/// `obtained_at` used for parsing (fixed, so that a crash input reproduces).
const OBTAINED_AT_SECS: u64 = 1_700_000_000;
/// The parser's own cap on `expires_in` (10 years).
const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// `parse_retry_after` caps delay-seconds at a day; an HTTP date must not wait longer.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Error fields are clipped to this many characters.
const MAX_ERROR_FIELD_CHARS: usize = 200;
/// Values substituted for the tokens in a body, which must then never appear in any output.
const SENTINEL_ACCESS: &str = "fuzz-sentinel-access-Q7x2";
const SENTINEL_REFRESH: &str = "fuzz-sentinel-refresh-K9w4";
const ERROR_STATUSES: [u16; 8] = [400, 401, 403, 404, 429, 500, 502, 503];

/// The token endpoint's answer: never a panic; an accepted token is a usable header value; no
/// token ever reaches `Debug` or an error message; error fields are clipped; `Retry-After` is
/// bounded.
pub fn check_token_response(data: &[u8]) {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(OBTAINED_AT_SECS);
    let default_lifetime = Duration::from_secs(3600);
    match oauth::parse_success(data, at, default_lifetime) {
        Ok(set) => check_token_set(&set, at, default_lifetime),
        Err(e) => {
            let _ = e.class();
            let _ = e.is_invalid_grant();
            assert!(
                matches!(e, OAuthError::Malformed(_)),
                "parse_success returned {e:?}, not Malformed"
            );
        }
    }

    // The same body with its tokens replaced by sentinels: whatever the outcome, no output
    // shows them.
    if let Some(body) = with_sentinels(data) {
        let shown = match oauth::parse_success(&body, at, default_lifetime) {
            Ok(set) => format!("{set:?}"),
            Err(e) => format!("{e} {e:?}"),
        };
        assert_no_sentinel(&shown, "parse_success");
        let e = oauth::parse_error(StatusCode::BAD_REQUEST, &body);
        assert_no_sentinel(&format!("{e} {e:?}"), "parse_error");
    }

    let status = ERROR_STATUSES[data.len() % ERROR_STATUSES.len()];
    let e = oauth::parse_error(StatusCode::from_u16(status).unwrap(), data);
    check_endpoint_error(&e, status);

    let text = String::from_utf8_lossy(data);
    check_retry_after(&text);
    for line in text.lines().take(8) {
        check_retry_after(line);
    }
}

fn check_token_set(set: &TokenSet, at: SystemTime, default_lifetime: Duration) {
    let token = set.access_token.expose();
    assert!(!token.is_empty(), "parse_success accepted an empty token");
    assert!(
        HeaderValue::from_str(token).is_ok(),
        "parse_success accepted a token that is not a header value"
    );
    assert!(
        HeaderValue::from_str(&format!("Bearer {token}")).is_ok(),
        "`Bearer <token>` is not a header value"
    );
    assert_eq!(set.obtained_at, at);
    let lifetime = set.lifetime();
    assert!(
        lifetime >= Duration::from_secs(1)
            && (lifetime <= MAX_LIFETIME || lifetime == default_lifetime),
        "lifetime {lifetime:?} out of range"
    );
    if let Some(rt) = &set.refresh_token {
        assert!(!rt.expose().is_empty(), "an empty refresh token was kept");
    }
    if let Some(rx) = set.refresh_expires_at {
        assert!(rx > at, "refresh token expiry not after obtained_at");
    }
    // Debug output must not depend on the secrets' values.
    let redacted = TokenSet {
        access_token: Secret::new("x"),
        refresh_token: set.refresh_token.as_ref().map(|_| Secret::new("y")),
        ..set.clone()
    };
    assert_eq!(
        format!("{set:?}"),
        format!("{redacted:?}"),
        "Debug of a TokenSet shows a token"
    );
}

/// The body with `access_token`/`refresh_token` string values replaced by the sentinels, when
/// it is a JSON object holding either.
fn with_sentinels(data: &[u8]) -> Option<Vec<u8>> {
    if contains(data, b"fuzz-sentinel") {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let obj = v.as_object_mut()?;
    let mut changed = false;
    for (key, sentinel) in [
        ("access_token", SENTINEL_ACCESS),
        ("refresh_token", SENTINEL_REFRESH),
    ] {
        if let Some(slot @ serde_json::Value::String(_)) = obj.get_mut(key) {
            *slot = serde_json::Value::String(sentinel.to_owned());
            changed = true;
        }
    }
    if changed {
        serde_json::to_vec(&v).ok()
    } else {
        None
    }
}

fn assert_no_sentinel(shown: &str, what: &str) {
    assert!(
        !shown.contains(SENTINEL_ACCESS) && !shown.contains(SENTINEL_REFRESH),
        "{what} shows a token: {shown}"
    );
}

fn check_endpoint_error(e: &OAuthError, status: u16) {
    let clipped = |s: &str| s.chars().count() <= MAX_ERROR_FIELD_CHARS;
    match e {
        OAuthError::Endpoint {
            status: s,
            error,
            description,
            codes,
        } => {
            assert_eq!(*s, status);
            assert!(clipped(error), "`error` not clipped");
            assert!(
                description.as_deref().is_none_or(clipped),
                "`error_description` not clipped"
            );
            assert!(codes.len() <= 5, "{} error codes kept", codes.len());
            assert!(
                codes.iter().all(|c| clipped(c)),
                "an error code not clipped"
            );
        }
        OAuthError::Status { status: s } => assert_eq!(*s, status),
        other => panic!("parse_error returned {other:?}"),
    }
    let _ = e.class();
    let shown = e.to_string();
    assert!(
        shown.chars().count() <= 8 * MAX_ERROR_FIELD_CHARS,
        "an error message of {} characters",
        shown.chars().count()
    );
}

fn check_retry_after(v: &str) {
    let parsed = oauth::parse_retry_after(v);
    // delay-seconds is 1*DIGIT (RFC 9110 10.2.3): no sign, however many digits.
    let t = v.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let secs = t.parse::<u64>().unwrap_or(u64::MAX);
        assert_eq!(
            parsed,
            Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER)),
            "delay-seconds {v:?}"
        );
    } else if t.starts_with(['+', '-']) && t[1..].bytes().all(|b| b.is_ascii_digit()) {
        assert_eq!(parsed, None, "a signed number {v:?} is no delay-seconds");
    }
    if let Some(d) = parsed.filter(|_| !known_bug("retry-after-cap")) {
        assert!(
            d <= MAX_RETRY_AFTER,
            "Retry-After {v:?} parsed as {d:?}, more than the 24 h cap on delay-seconds"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// config_file: file::parse, file::expand and config::load
// ---------------------------------------------------------------------------------------------

/// What `${SECRET}` expands to; it must never appear in an error, `Debug` or the summary when
/// it was only given to secret keys.
pub const MARKER: &str = "fuzz-marker-secret-V3n8";

/// Keys of a `[token.NAME]` table that hold a secret inline.
const SECRET_TOKEN_KEYS: [&str; 4] = ["client_secret", "assertion", "password", "static_token"];

/// Keys naming files that `config::load` reads.
fn read_paths(raw: &file::RawFile) -> Vec<Option<&String>> {
    let mut out: Vec<Option<&String>> = raw
        .route
        .iter()
        .map(|r| r.upstream_ca_file.as_ref())
        .collect();
    for t in raw.token.values() {
        out.extend([
            t.client_secret_file.as_ref(),
            t.assertion_file.as_ref(),
            t.refresh_token_file.as_ref(),
            t.password_file.as_ref(),
        ]);
    }
    out
}

struct Scratch {
    dir: PathBuf,
    secret_file: PathBuf,
}

/// A per-process directory holding a secret file (`${SECRET_FILE}`) and the config files
/// handed to `config::load`.
fn scratch() -> &'static Scratch {
    static S: OnceLock<Scratch> = OnceLock::new();
    S.get_or_init(|| {
        let dir = scratch_dir();
        std::fs::create_dir_all(&dir).expect("creating the scratch directory");
        let secret_file = dir.join("secret");
        std::fs::write(&secret_file, "fixture-file-secret\n").expect("writing the secret file");
        Scratch { dir, secret_file }
    })
}

/// Removes this process's scratch directory, when there is one (the tests call it when done;
/// a fuzzing process leaves its small directory behind).
pub fn remove_scratch() {
    let _ = std::fs::remove_dir_all(scratch_dir());
}

fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("token-sidecar-fuzz-{}", std::process::id()))
}

/// The environment `${VAR}` is expanded from.
pub fn fuzz_env(name: &str) -> Option<String> {
    match name {
        "SECRET" => Some(MARKER.to_owned()),
        "RC_CLIENT_ID" => Some("rc-client-id".to_owned()),
        "SECRET_FILE" => Some(scratch().secret_file.display().to_string()),
        "EMPTY" => Some(String::new()),
        // Expansion is not recursive: this stays literal text.
        "DOLLAR" => Some("$${x}${SECRET}".to_owned()),
        _ => None,
    }
}

/// The config file: never a panic; `${VAR}` expansion behaves; a secret given only to secret
/// keys never shows; an accepted configuration is coherent and usable.
pub fn check_config_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check_expand(&text);
    for line in text.lines().take(32) {
        check_expand(line);
    }

    let confined = !text.contains(MARKER) && marker_confined(&text);
    let mut errors = Vec::new();
    let raw = file::parse("fuzz.toml", &text, &fuzz_env, &mut errors);
    if confined {
        for e in &errors {
            assert!(!e.contains(MARKER), "a parse error shows a secret: {e}");
        }
    }
    let Some(raw) = raw else {
        assert!(!errors.is_empty(), "parse failed without an error");
        return;
    };
    // `config::load` reads the files the configuration names: only let it read the fixture
    // secret or paths that do not exist (never a device, a FIFO or /proc), and no CA file
    // (loading the system roots per input would be slow).
    let safe = read_paths(&raw)
        .into_iter()
        .enumerate()
        .all(|(i, p)| match p {
            None => true,
            Some(_) if i < raw.route.len() => false,
            Some(p) => {
                Path::new(p) == scratch().secret_file || std::fs::symlink_metadata(p).is_err()
            }
        });
    if safe {
        check_load(&text, confined);
    }
}

fn check_load(text: &str, confined: bool) {
    let path = scratch()
        .dir
        .join(format!("config-{:?}.toml", std::thread::current().id()));
    std::fs::write(&path, text).expect("writing the config file");
    let flags = Flags {
        config: Some(path),
        ..Default::default()
    };
    match config::load(&flags, &fuzz_env) {
        Ok(cfg) => {
            if confined {
                let debug = format!("{cfg:?}");
                assert!(
                    !debug.contains(MARKER),
                    "Debug of the config shows a secret"
                );
                assert!(
                    !cfg.summary().contains(MARKER),
                    "the config summary shows a secret"
                );
            }
            check_config(&cfg);
        }
        Err(errs) => {
            assert!(!errs.0.is_empty(), "load failed without an error");
            if confined {
                for e in &errs.0 {
                    assert!(!e.contains(MARKER), "a config error shows a secret: {e}");
                }
            }
        }
    }
}

fn check_config(cfg: &config::Config) {
    assert!(!cfg.routes.is_empty(), "a config without routes");
    assert!((1..=1024).contains(&cfg.threads));
    for r in &cfg.routes {
        assert!(
            r.upstream.scheme() == &http::uri::Scheme::HTTP
                || r.upstream.scheme() == &http::uri::Scheme::HTTPS
        );
        assert!(
            cfg.tokens.contains_key(&r.token),
            "route {} names a missing profile",
            r.name
        );
        assert!(
            !rewrite::is_hop_by_hop_name(&r.header) && r.header != header::HOST,
            "the token would go in `{}`",
            r.header
        );
        assert!(HeaderValue::from_str(&r.header_prefix).is_ok());
        assert!((1024..=1024 * 1024).contains(&r.max_request_header_bytes));
        for d in [r.upstream_timeout, r.connect_timeout, r.header_read_timeout] {
            assert!(!d.is_zero());
        }
        if let Grant::Static { token } = &cfg.tokens[&r.token].grant {
            let value = format!("{}{}", r.header_prefix, token.expose());
            assert!(
                HeaderValue::from_str(&value).is_ok(),
                "a static token that cannot be sent"
            );
        }
        assert!(
            r.upstream.join(&"/".parse().unwrap()).is_ok(),
            "upstream {}://{}{} cannot take any request",
            r.upstream.scheme(),
            r.upstream.authority(),
            r.upstream.base_path()
        );
    }
    let lifetimes_checked = !known_bug("default-lifetime-overflow");
    for t in cfg
        .tokens
        .values()
        .filter(|t| t.grant.is_oauth() && lifetimes_checked)
    {
        assert!(!t.default_lifetime.is_zero());
        // A token response without `expires_in` gets the default lifetime: an accepted
        // configuration must not make that panic.
        let set = oauth::parse_success(
            br#"{"access_token":"a","token_type":"bearer"}"#,
            SystemTime::now(),
            t.default_lifetime,
        );
        assert!(set.is_ok(), "{set:?}");
    }
}

/// Whether every string value mentioning `${SECRET}` sits at a secret key, so that the marker
/// may only end up in secrets.
fn marker_confined(text: &str) -> bool {
    fn walk(v: &toml::Value, path: &mut Vec<Option<String>>) -> bool {
        match v {
            toml::Value::String(s) => !s.contains("${SECRET}") || is_secret_key(path),
            toml::Value::Array(items) => items.iter().all(|item| {
                path.push(None);
                let ok = walk(item, path);
                path.pop();
                ok
            }),
            toml::Value::Table(t) => t.iter().all(|(k, item)| {
                path.push(Some(k.clone()));
                let ok = walk(item, path);
                path.pop();
                ok
            }),
            _ => true,
        }
    }
    fn is_secret_key(path: &[Option<String>]) -> bool {
        match path {
            [Some(a), Some(_), Some(k)] => a == "token" && SECRET_TOKEN_KEYS.contains(&k.as_str()),
            [Some(a), Some(k)] => a == "shared" && k == "redis_url",
            _ => false,
        }
    }
    match toml::from_str::<toml::Value>(text) {
        Ok(v) => walk(&v, &mut Vec::new()),
        // Nothing was expanded.
        Err(_) => true,
    }
}

fn check_expand(s: &str) {
    match file::expand(s, &fuzz_env) {
        Ok(out) => {
            if !s.contains('$') {
                assert_eq!(out, s);
            }
        }
        Err(name) => {
            assert!(fuzz_env(&name).is_none(), "`{name}` is set");
            assert!(
                s.contains(&format!("${{{name}}}")),
                "`{name}` is not referenced"
            );
        }
    }
    match file::expand(s, &|_| Some(String::new())) {
        Ok(out) => assert!(out.len() <= s.len(), "expansion to nothing grew {s:?}"),
        Err(name) => panic!("`{name}` reported unset though every variable is set"),
    }
}

// ---------------------------------------------------------------------------------------------
// rewrite: Upstream::parse/join, check_target, hop-by-hop headers
// ---------------------------------------------------------------------------------------------

const FALLBACK_UPSTREAM: &str = "https://platform.ringcentral.com/restapi";

/// Request rewriting: never a panic; an accepted target goes to the upstream's scheme and
/// authority under its base path, without dot segments; no credential, `Host` or hop-by-hop
/// header survives, and every end-to-end header does.
pub fn check_rewrite(data: &[u8]) {
    let mut lines = data.split(|b| *b == b'\n').map(trim_cr);
    let up_line = lines.next().unwrap_or_default();
    let method_line = lines.next().unwrap_or_default();
    let version_line = lines.next().unwrap_or_default();
    let target_line = lines.next().unwrap_or_default();

    let up_text = String::from_utf8_lossy(up_line);
    let upstream = match Upstream::parse(&up_text) {
        Ok(u) => {
            check_upstream(&u, &up_text);
            u
        }
        Err(e) => {
            let _ = e.to_string();
            Upstream::parse(FALLBACK_UPSTREAM).unwrap()
        }
    };
    let method = Method::from_bytes(method_line).unwrap_or(Method::GET);
    let version = match version_line {
        b"0.9" => Version::HTTP_09,
        b"1.0" => Version::HTTP_10,
        b"2" | b"2.0" => Version::HTTP_2,
        b"3" => Version::HTTP_3,
        _ => Version::HTTP_11,
    };

    check_dot_segments(&String::from_utf8_lossy(target_line));
    if let Ok(uri) = Uri::try_from(target_line) {
        check_dot_segments(uri.path());
        check_target(&method, version, &uri, &upstream);
    }

    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    check_headers(&method, &headers, version);
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn check_upstream(u: &Upstream, text: &str) {
    assert!(u.scheme() == &http::uri::Scheme::HTTP || u.scheme() == &http::uri::Scheme::HTTPS);
    assert!(!u.authority().host().is_empty());
    assert!(!u.authority().as_str().contains('@'), "user info kept");
    assert!(!u.base_path().ends_with('/'));
    assert!(!text.contains('#'), "a fragment accepted in {text:?}");
    let uri: Uri = text.parse().expect("an accepted upstream parses");
    assert!(uri.query().is_none(), "a query accepted in {text:?}");
    let root = u
        .join(&"/".parse().unwrap())
        .unwrap_or_else(|e| panic!("upstream {text:?} cannot take `/`: {e}"));
    assert_eq!(root.authority(), Some(u.authority()));
}

fn check_target(method: &Method, version: Version, uri: &Uri, up: &Upstream) {
    let pq = match rewrite::check_target(method, version, uri, up) {
        Ok(pq) => pq,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert_ne!(*method, Method::CONNECT, "CONNECT accepted");
    let path = pq.path();
    assert!(
        path.starts_with('/'),
        "accepted target {uri} has path {path:?}"
    );
    assert!(!dot_segment(path), "accepted target {uri} climbs: {path:?}");
    if version != Version::HTTP_2 {
        if let Some(auth) = uri.authority() {
            assert!(
                names_upstream_or_loopback(auth, up),
                "accepted absolute-form target {uri} names another host"
            );
        }
    }
    let joined = up
        .join(&pq)
        .unwrap_or_else(|e| panic!("accepted target {uri} cannot be joined: {e}"));
    check_joined(&joined, up, &pq);
    // HTTP/2 sends `path_and_query().as_str()` as `:path`, which must start with `/` (RFC 9113
    // 8.3.1); HTTP/1 writes the URI's `Display`, which adds the `/`.
    if !known_bug("empty-path") {
        let wire = joined.path_and_query().map_or("/", |pq| pq.as_str());
        assert!(
            wire.starts_with('/'),
            "accepted target {uri} goes upstream with :path {wire:?}"
        );
    }
    // What goes on the wire, parsed again, still names the upstream.
    let again: Uri = joined
        .to_string()
        .parse()
        .unwrap_or_else(|e| panic!("joined URI {joined} does not parse: {e}"));
    assert_eq!(again.scheme(), joined.scheme());
    assert_eq!(again.authority(), joined.authority());
    assert_eq!(
        again.path_and_query().map(ToString::to_string),
        joined.path_and_query().map(ToString::to_string)
    );
}

fn check_joined(joined: &Uri, up: &Upstream, pq: &http::uri::PathAndQuery) {
    assert_eq!(joined.scheme(), Some(up.scheme()), "scheme of {joined}");
    assert_eq!(
        joined.authority().map(Authority::as_str),
        Some(up.authority().as_str()),
        "the token would go to {joined}"
    );
    let path = joined.path();
    assert!(
        path.starts_with(up.base_path()),
        "{joined} is outside base path {:?}",
        up.base_path()
    );
    // (`PathAndQuery::path()` reports `/` for the empty path of `?x`.)
    if !(pq.as_str().starts_with('?') && known_bug("empty-path")) {
        assert_eq!(&path[up.base_path().len()..], pq.path(), "path of {joined}");
    }
    assert_eq!(joined.query(), pq.query(), "query of {joined}");
}

/// Independent of `rewrite::names_upstream_or_loopback`: an absolute-form target may name the
/// upstream (at its port, or with none) or the sidecar itself on loopback.
fn names_upstream_or_loopback(auth: &Authority, up: &Upstream) -> bool {
    let bare = |h: &str| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase()
    };
    let host = bare(auth.host());
    if host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    {
        return true;
    }
    let up_port = up
        .authority()
        .port_u16()
        .unwrap_or(if up.is_https() { 443 } else { 80 });
    host == bare(up.authority().host()) && auth.port_u16().is_none_or(|p| p == up_port)
}

/// Independent of `rewrite::has_dot_segment`: decode `%2e`, `%2f` and `%5c` once, treat `\`
/// as `/`, drop `;params`, and look for `.` or `..`.
fn dot_segment(path: &str) -> bool {
    let b = path.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = [b[i + 1].to_ascii_lowercase(), b[i + 2].to_ascii_lowercase()];
            let c = match &hex {
                b"2e" => Some(b'.'),
                b"2f" | b"5c" => Some(b'/'),
                _ => None,
            };
            if let Some(c) = c {
                decoded.push(c);
                i += 3;
                continue;
            }
        }
        decoded.push(if b[i] == b'\\' { b'/' } else { b[i] });
        i += 1;
    }
    decoded.split(|c| *c == b'/').any(|seg| {
        let seg = seg.split(|c| *c == b';').next().unwrap_or(seg);
        seg == b"." || seg == b".."
    })
}

fn check_dot_segments(path: &str) {
    if dot_segment(path) {
        assert!(
            rewrite::has_dot_segment(path),
            "has_dot_segment missed {path:?}"
        );
    }
}

/// Connection options named in `Connection`, read as bytes (a value need not be visible
/// ASCII to name headers).
fn connection_options(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter(|v| v.to_str().is_ok() || !known_bug("connection-obs-text"))
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(trim_ows(t)).ok())
        .collect()
}

/// Headers that never reach the upstream as the app sent them.
const ALWAYS_DROPPED: [&str; 8] = [
    "authorization",
    "proxy-authorization",
    "proxy-authenticate",
    "host",
    "keep-alive",
    "transfer-encoding",
    "proxy-connection",
    "connection",
];

fn check_headers(method: &Method, original: &HeaderMap, version: Version) {
    let _ = rewrite::header_list_size(original);
    let upgrades: Vec<&[u8]> = original
        .get_all(header::UPGRADE)
        .iter()
        .map(|v| v.as_bytes().trim_ascii())
        .collect();
    let upgrade = match rewrite::upgrade_of(method, version, original) {
        Ok(rewrite::Upgrade::WebSocket) => {
            assert_eq!(version, Version::HTTP_11, "an upgrade outside HTTP/1.1");
            assert_eq!(*method, Method::GET, "an upgrade on {method}");
            assert!(
                connection_options(original).contains(&header::UPGRADE),
                "an upgrade without `Connection: upgrade`"
            );
            assert!(
                upgrades.len() == 1 && upgrades[0].eq_ignore_ascii_case(b"websocket"),
                "an upgrade to something other than one `websocket`: {upgrades:?}"
            );
            for h in ["sec-websocket-key", "sec-websocket-version"] {
                assert_eq!(original.get_all(h).iter().count(), 1, "{h} in an upgrade");
            }
            true
        }
        Ok(rewrite::Upgrade::None) => {
            assert!(
                upgrades.is_empty()
                    || (upgrades.len() == 1 && upgrades[0].eq_ignore_ascii_case(b"h2c")),
                "an `Upgrade` other than a lone h2c forwarded as a plain request: {upgrades:?}"
            );
            false
        }
        Err(_) => {
            assert!(!upgrades.is_empty(), "refused without an `Upgrade`");
            false
        }
    };

    let mut h = original.clone();
    rewrite::prepare_request_headers(&mut h, upgrade);
    let named = connection_options(original);

    for name in ALWAYS_DROPPED {
        if name == "connection" && upgrade {
            let values: Vec<&HeaderValue> = h.get_all(header::CONNECTION).iter().collect();
            assert_eq!(values, [&HeaderValue::from_static("upgrade")], "{h:?}");
        } else {
            assert!(!h.contains_key(name), "`{name}` forwarded: {h:?}");
        }
    }
    if let Some(te) = h.get(header::TE) {
        assert_eq!(h.get_all(header::TE).iter().count(), 1);
        assert!(
            te.as_bytes().eq_ignore_ascii_case(b"trailers"),
            "`te: {te:?}` forwarded"
        );
    }
    if upgrade {
        let before: Vec<&HeaderValue> = original.get_all(header::UPGRADE).iter().collect();
        let after: Vec<&HeaderValue> = h.get_all(header::UPGRADE).iter().collect();
        assert_eq!(before, after, "`upgrade` changed");
    } else {
        assert!(!h.contains_key(header::UPGRADE), "`upgrade` forwarded");
    }
    for name in &named {
        let kept_for_upgrade = upgrade && (*name == header::UPGRADE || *name == header::CONNECTION);
        // `TE: trailers` is re-added on purpose (checked above; HTTP/1.1 clients must name
        // `TE` in `Connection`); `close` is an option, and `Close` a reserved field name.
        let exempt = *name == header::TE || name.as_str() == "close";
        if !kept_for_upgrade && !exempt {
            assert!(
                !h.contains_key(name),
                "`{name}`, named in `Connection`, forwarded: {h:?}"
            );
        }
    }
    // Every other header goes through untouched (`HTTP2-Settings` belongs to an `h2c` offer,
    // which is dropped).
    if !upgrade {
        assert!(
            !h.contains_key("http2-settings"),
            "`http2-settings` forwarded"
        );
    }
    for name in original.keys() {
        let dropped = ALWAYS_DROPPED.contains(&name.as_str())
            || rewrite::is_hop_by_hop_name(name)
            || named.contains(name)
            || (!upgrade && name.as_str() == "http2-settings");
        if !dropped {
            let before: Vec<&HeaderValue> = original.get_all(name).iter().collect();
            let after: Vec<&HeaderValue> = h.get_all(name).iter().collect();
            assert_eq!(before, after, "end-to-end header `{name}` changed");
        }
    }

    // Stripping alone (no upgrade) is idempotent.
    let mut once = original.clone();
    rewrite::strip_hop_by_hop(&mut once, false);
    let mut twice = once.clone();
    rewrite::strip_hop_by_hop(&mut twice, false);
    assert_eq!(once, twice, "strip_hop_by_hop is not idempotent");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
