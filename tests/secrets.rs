//! Secrets: the hostile and faulty scenarios of `hostile.rs` and `faults.rs` replayed with
//! marker tokens and credentials, with every log line at `TOKEN_SIDECAR_LOG=trace`, and the
//! markers searched in everything the sidecar writes or answers: stderr (panic messages
//! included), metrics, `/token-info`, `/readyz`, error bodies, `check`, `refresh` and `--help`
//! output, and `Debug` of the configuration. The state file is mode 0600.
//!
//! Each scenario first proves its marker is in use (the upstream receives it), so that its
//! absence everywhere else means something.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use http::Request;
use support::client::{empty, full};
use support::rc::Rig;
use support::scripted::Scripted;
use support::sidecar::run_once;
use support::{eventually, Client, Sidecar, SidecarBuilder, Upstream, DEADLINE, MARKER};
use token_sidecar_testkit::token_server::{Fault, TokenServerConfig, DEV_ASSERTION, TOKEN_PREFIX};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client secret that must never show.
const SECRET_MARKER: &str = "cs-MARKER-0d9e8f7a6b";
/// A JWT assertion that must never show.
const ASSERTION_MARKER: &str = "as-MARKER-eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl";
/// A Redis password that must never show.
const REDIS_MARKER: &str = "rp-MARKER-5c4b3a2918";

/// A sidecar at trace level.
fn traced(b: SidecarBuilder) -> SidecarBuilder {
    b.env("TOKEN_SIDECAR_LOG", "trace")
}

/// Every answer collected from a scenario, to search for markers.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn add(&mut self, what: &str, text: impl AsRef<str>) {
        self.0.push(format!("{what}: {}", text.as_ref()));
    }

    fn add_resp(&mut self, what: &str, r: &support::Resp) {
        self.add(what, format!("{} {:?} {}", r.status, r.headers, r.text()));
    }

    fn assert_free_of(&self, secrets: &[&str]) {
        for s in secrets {
            for t in &self.0 {
                assert!(!t.contains(s), "{s} in {t}");
            }
        }
    }
}

/// Adds the admin endpoints' answers (and a forced refresh) to `seen`.
async fn admin_answers(sc: &Sidecar, seen: &mut Seen) {
    for path in ["/metrics", "/token-info", "/readyz", "/healthz", "/nope"] {
        let (status, body) = sc.admin_get(path).await;
        seen.add(path, format!("{status} {body}"));
    }
    let r = Client::http1()
        .send(
            Request::post(sc.admin_url("/refresh"))
                .body(empty())
                .unwrap(),
        )
        .await;
    seen.add_resp("POST /refresh", &r);
}

/// No secret in any stderr line (logs and panic messages alike), and no panic at all.
fn assert_stderr_free_of(sc: &Sidecar, secrets: &[&str]) {
    let logs = sc.logs();
    assert!(logs.len() > 20, "suspiciously few log lines: {logs:?}");
    assert!(
        logs.iter().any(|l| l.contains("TRACE")),
        "not logging at trace level"
    );
    for line in &logs {
        assert!(!line.contains("panicked"), "a panic: {line}");
        for s in secrets {
            assert!(!line.contains(s), "{s} in stderr: {line}");
        }
    }
}

/// Raw HTTP/1.1 exchange (`Connection: close` expected in `req`): the whole answer as text.
async fn raw(addr: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(req).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The hostile and faulty requests of the other suites, their answers added to `seen`.
async fn battery(sc: &Sidecar, seen: &mut Seen) {
    let (h1, h2) = (Client::http1(), Client::h2c());
    for (name, client) in [("h1", &h1), ("h2c", &h2)] {
        for path in [
            "/ok",
            "/status/401",
            "/status/403",
            "/status/500",
            "/slow?ms=1500",
        ] {
            let r = client
                .get_with(&sc.url(path), &[("authorization", "Bearer app-own")])
                .await;
            seen.add_resp(&format!("{name} GET {path}"), &r);
        }
        let r = client
            .send(
                Request::post(sc.url("/upload"))
                    .body(full(vec![b'x'; 100_000]))
                    .unwrap(),
            )
            .await;
        seen.add_resp(&format!("{name} POST /upload"), &r);
        let mut big = Request::get(sc.url("/big-headers")).body(empty()).unwrap();
        for i in 0..12 {
            big.headers_mut().insert(
                http::HeaderName::from_bytes(format!("x-big-{i}").as_bytes()).unwrap(),
                "b".repeat(4000).parse().unwrap(),
            );
        }
        seen.add_resp(&format!("{name} 431"), &client.send(big).await);
    }
    let huge = format!(
        "GET /huge HTTP/1.1\r\nHost: localhost\r\nX-Huge: {}\r\nConnection: close\r\n\r\n",
        "h".repeat(200_000)
    );
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let bad_chunks = format!(
        "POST /c HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{smuggled}"
    );
    for req in [
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n".to_owned(),
        "GET http://evil.example/steal HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_owned(),
        "GET /a/%2e%2e/b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_owned(),
        "GET /x HTTP/1.1\r\nHost: localhost\r\nX Bad: 1\r\nConnection: close\r\n\r\n".to_owned(),
        format!("POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{smuggled}"),
        bad_chunks,
        huge,
    ] {
        let answer = raw(sc.proxy_addr, req.as_bytes()).await;
        seen.add(&format!("raw {}", &req[..req.len().min(40)]), answer);
    }
    // HTTP/2 abuse: a burst of reset streams.
    let mut c = support::h2raw::Conn::open(sc.proxy_addr).await;
    let mut bytes = Vec::new();
    for i in 0..500u32 {
        bytes.extend(support::h2raw::get(2 * i + 1, "/rapid"));
        bytes.extend(support::h2raw::rst(2 * i + 1, support::h2raw::CANCEL));
    }
    let _ = c.write(&bytes).await;
    let _ = c.wait_for_goaway_or_close(Duration::from_secs(3)).await;
    for f in &c.frames {
        seen.add("h2 frame", String::from_utf8_lossy(&f.payload));
    }
}

#[tokio::test]
async fn a_static_token_never_leaks_at_trace_level_through_hostile_and_faulty_traffic() {
    // Plain HTTP/1.1 upstream, and a TLS one that negotiates h2 (HPACK and rustls at trace).
    let tls = support::tls::material();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let plain = Upstream::start().await;
    let secure = Upstream::start_tls(tls.server_config.clone()).await;
    let mut seen = Seen::default();
    for up in [&plain, &secure] {
        let sc = traced(SidecarBuilder::new(&up.url("/base")))
            .static_token(MARKER)
            .arg("--upstream-ca-file")
            .arg(&ca)
            .args(["--upstream-timeout", "1s"])
            .start()
            .await;
        battery(&sc, &mut seen).await;
        admin_answers(&sc, &mut seen).await;
        // The marker was in use: the upstream received it.
        assert!(up.request_count() >= 8);
        assert!(up
            .requests()
            .iter()
            .all(|r| r.header_values("authorization") == vec![format!("Bearer {MARKER}")]));
        assert_stderr_free_of(&sc, &[MARKER]);
    }
    // Upstreams that fail: refused, a TLS certificate for another name.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let wrong_name = support::tls::material_for(&["other.example"], false);
    std::fs::write(dir.path().join("other-ca.pem"), &wrong_name.ca_pem).unwrap();
    let mismatched = Upstream::start_tls(wrong_name.server_config.clone()).await;
    for (url, ca) in [
        (format!("http://{closed_port}"), ca.clone()),
        (mismatched.url(""), dir.path().join("other-ca.pem")),
    ] {
        let sc = traced(SidecarBuilder::new(&url))
            .static_token(MARKER)
            .arg("--upstream-ca-file")
            .arg(&ca)
            .start()
            .await;
        for client in [Client::http1(), Client::h2c()] {
            let r = client.get(&sc.url("/x")).await;
            assert_eq!(r.status, 502);
            seen.add_resp("failing upstream", &r);
        }
        admin_answers(&sc, &mut seen).await;
        assert_stderr_free_of(&sc, &[MARKER]);
    }
    seen.assert_free_of(&[MARKER]);
}

#[tokio::test]
async fn a_file_token_never_leaks_at_trace_level_even_when_the_file_goes_bad() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{MARKER}-v1\n")).unwrap();
    let sc = traced(SidecarBuilder::new(&up.url("")))
        .token_file(&file)
        .args(["--file-poll-interval", "100ms"])
        .start()
        .await;
    let mut seen = Seen::default();
    let client = Client::http1();
    let wait_for = |v: String| {
        let client = client.clone();
        let url = sc.url("/probe");
        let up = &up;
        async move {
            eventually(DEADLINE, &format!("token {v}"), || {
                let (client, url, v) = (client.clone(), url.clone(), v.clone());
                async move {
                    client.get(&url).await.status == 200
                        && up.last().header("authorization") == Some(format!("Bearer {MARKER}-{v}"))
                }
            })
            .await;
        }
    };
    wait_for("v1".into()).await;
    // Rotations, then unusable contents that carry the marker: a control character, bytes that
    // are not UTF-8, a newline inside. Each keeps the previous token.
    let replace = |content: &[u8]| {
        let tmp = dir.path().join("token.tmp");
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    replace(format!("{MARKER}-v2").as_bytes());
    wait_for("v2".into()).await;
    // Each bad file is reported once, when its error differs from the last one: ordered so
    // that each differs from the one before, every file is seen (and logged) before the next.
    for (i, bad) in [
        format!("{MARKER}-bad\u{1}").into_bytes(),
        [MARKER.as_bytes(), b"-bad\xff\xfe"].concat(),
        format!("{MARKER}-bad\nsecond line").into_bytes(),
        Vec::new(),
    ]
    .into_iter()
    .enumerate()
    {
        replace(&bad);
        eventually(DEADLINE, "the bad file to be noticed", || async {
            sc.logs()
                .iter()
                .filter(|l| l.contains("token file not usable"))
                .count()
                > i
        })
        .await;
        battery_light(&sc, &mut seen).await;
        assert_eq!(
            up.last().header("authorization"),
            Some(format!("Bearer {MARKER}-v2"))
        );
    }
    replace(format!("{MARKER}-v3").as_bytes());
    wait_for("v3".into()).await;
    admin_answers(&sc, &mut seen).await;
    seen.assert_free_of(&[MARKER]);
    assert_stderr_free_of(&sc, &[MARKER]);
}

/// A few requests and sidecar errors (for scenarios where the whole battery is too much).
async fn battery_light(sc: &Sidecar, seen: &mut Seen) {
    let client = Client::http1();
    for path in ["/ok", "/status/401", "/a/../b"] {
        let r = client.get(&sc.url(path)).await;
        seen.add_resp(path, &r);
    }
    let answer = raw(
        sc.proxy_addr,
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    seen.add("CONNECT", answer);
}

#[tokio::test]
async fn oauth_tokens_and_credentials_never_leak_at_trace_level_through_refreshes_and_faults() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let state = rig.path("state.json");
    let sc = traced(rig.sidecar())
        .args([
            "--token-param",
            "access_token_ttl=3",
            "--token-request-timeout",
            "500ms",
            // Two forced refreshes back to back, each time.
            "--min-refresh-interval",
            "0s",
        ])
        .arg("--state-file")
        .arg(&state)
        .start()
        .await;
    eventually(DEADLINE, "ready", || async {
        sc.admin_get("/readyz").await.0 == 200
    })
    .await;
    let mut seen = Seen::default();
    // Every token the sidecar held, read from the state file as it goes.
    let mut tokens = std::collections::BTreeSet::new();
    let note_tokens = |tokens: &mut std::collections::BTreeSet<String>| {
        let v = support::json(&std::fs::read(&state).unwrap());
        for k in ["access_token", "refresh_token"] {
            if let Some(t) = v[k].as_str() {
                assert!(t.starts_with(TOKEN_PREFIX));
                tokens.insert(t.to_owned());
            }
        }
    };
    note_tokens(&mut tokens);
    let client = Client::http1();
    for fault in [
        None,
        Some(Fault::Garbage),
        Some(Fault::Html),
        Some(Fault::Empty),
        Some(Fault::MissingAccessToken),
        Some(Fault::HugeBody),
        Some(Fault::Slow(Duration::from_secs(2))),
        Some(Fault::DropConnection),
        Some(Fault::Status(503)),
        Some(Fault::InvalidGrant),
        // Last: its Retry-After holds the next refreshes back.
        Some(Fault::TooManyRequests {
            retry_after: Some(1),
        }),
    ] {
        if let Some(f) = &fault {
            rig.ts.set_fault(f.clone(), Some(1));
        }
        // A forced refresh (the fault, then a success), a 401-triggered one, traffic.
        let r = Client::http1()
            .send(
                Request::post(sc.admin_url("/refresh"))
                    .body(empty())
                    .unwrap(),
            )
            .await;
        seen.add_resp("POST /refresh", &r);
        rig.ts.clear_fault();
        let r = Client::http1()
            .send(
                Request::post(sc.admin_url("/refresh"))
                    .body(empty())
                    .unwrap(),
            )
            .await;
        seen.add_resp("POST /refresh", &r);
        for _ in 0..3 {
            let r = client.get(&sc.url("/restapi/v1.0/account/~")).await;
            seen.add_resp("GET", &r);
        }
        // A token the API no longer accepts: a 401, a refresh (at most one per
        // --min-refresh-interval) and a replay, or the 401 itself.
        rig.ts.expire_access_tokens();
        let r = client.get(&sc.url("/restapi/v1.0/account/~")).await;
        seen.add_resp("GET after expiry", &r);
        note_tokens(&mut tokens);
    }
    // A timed refresh or two (3-second tokens).
    let v = support::json(sc.admin_get("/token-info").await.1.as_bytes())["tokens"]["default"]
        ["version"]
        .as_u64()
        .unwrap();
    eventually(DEADLINE, "a timed refresh", || async {
        let info = support::json(sc.admin_get("/token-info").await.1.as_bytes());
        info["tokens"]["default"]["version"].as_u64().unwrap_or(0) > v
    })
    .await;
    note_tokens(&mut tokens);
    battery_light(&sc, &mut seen).await;
    admin_answers(&sc, &mut seen).await;
    // The credentials and tokens were in use: the double saw them, the API accepted them.
    assert!(rig.ts.successful_logins() >= 2);
    assert!(rig.ts.successful_refreshes() >= 3);
    assert!(rig.api.count_by_status().get(&200).copied().unwrap_or(0) >= 10);
    assert!(tokens.len() >= 6, "{} tokens seen", tokens.len());

    let mut secrets: Vec<&str> = vec![TOKEN_PREFIX, DEV_ASSERTION, "test-secret"];
    secrets.extend(tokens.iter().map(String::as_str));
    seen.assert_free_of(&secrets);
    assert_stderr_free_of(&sc, &secrets);

    // The `refresh` subcommand's output, with the same state file.
    let out = rig
        .refresh_subcommand(&["--state-file", state.to_str().unwrap()])
        .await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    for s in &secrets {
        assert!(!out.all().contains(s), "{s} in `refresh` output");
    }
    assert_mode_0600(&state);
}

fn assert_mode_0600(p: &Path) {
    let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", p.display());
}

/// A token endpoint that echoes the request it got (its form, credentials included) in every
/// way an error body can carry text.
async fn echoing_token_endpoint(shape: usize) -> Scripted {
    Scripted::start(move |mut a| async move {
        let Some((head, body)) = a.read_request().await else {
            return;
        };
        let form = String::from_utf8_lossy(&body).into_owned();
        let decoded: String = form_urlencoded::parse(form.as_bytes())
            .map(|(k, v)| format!("{k}={v} "))
            .collect();
        let auth = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
            .unwrap_or("")
            .to_owned();
        let echo = format!("{decoded} {auth}");
        let (status, json) = match shape {
            0 => (400, serde_json::json!({"error": "invalid_grant", "error_description": format!("Invalid request: {echo}")})),
            1 => (401, serde_json::json!({"error": "invalid_client", "errors": [{"errorCode": echo.clone(), "message": echo}]})),
            2 => (400, serde_json::json!({"error": echo})),
            3 => (200, serde_json::json!({"error": echo})),
            4 => (200, serde_json::json!({"access_token": MARKER, "token_type": echo})),
            _ => (500, serde_json::json!({"message": echo, "detail": form})),
        };
        let body = json.to_string();
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = a.stream.write_all(resp.as_bytes()).await;
    })
    .await
}

#[tokio::test]
async fn credentials_echoed_by_a_token_endpoint_in_its_errors_never_leak() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET_MARKER).unwrap();
    std::fs::write(dir.path().join("jwt"), ASSERTION_MARKER).unwrap();
    let up = Upstream::start().await;
    for shape in 0..6 {
        let ts = echoing_token_endpoint(shape).await;
        let sc = traced(SidecarBuilder::new(&up.url("")))
            .args(["--grant", "jwt_bearer", "--client-id", "echo-client"])
            .args(["--token-url", &ts.url("/oauth/token")])
            .arg("--client-secret-file")
            .arg(dir.path().join("secret"))
            .arg("--assertion-file")
            .arg(dir.path().join("jwt"))
            .start()
            .await;
        eventually(DEADLINE, "a failed attempt", || async {
            sc.logs().iter().any(|l| l.contains("token refresh failed"))
        })
        .await;
        let mut seen = Seen::default();
        let r = Client::http1().get(&sc.url("/x")).await;
        seen.add_resp("GET", &r);
        admin_answers(&sc, &mut seen).await;
        // The endpoint did receive the credentials (Basic carries the secret in base64).
        assert!(
            ts.requests().iter().any(|h| h.contains("Basic ")),
            "shape {shape}"
        );
        // The Basic credential carries the secret base64-encoded: that counts as the secret.
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("echo-client:{SECRET_MARKER}"));
        let secrets = [
            SECRET_MARKER,
            ASSERTION_MARKER,
            MARKER,
            "as-MARKER",
            "cs-MARKER",
            basic.as_str(),
        ];
        seen.assert_free_of(&secrets);
        assert_stderr_free_of(&sc, &secrets);
    }
}

#[tokio::test]
async fn check_output_never_shows_secrets_valid_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[route]]
name = "a"
listen = "127.0.0.1:0"
upstream = "https://api.example.com"
token = "cc"

[[route]]
name = "b"
listen = "127.0.0.1:0"
upstream = "https://api.example.com"
token = "st"

[[route]]
name = "c"
listen = "127.0.0.1:0"
upstream = "https://api.example.com"
token = "pw"

[[route]]
name = "d"
listen = "127.0.0.1:0"
upstream = "https://api.example.com"
token = "jwt"

[token.cc]
grant = "client_credentials"
token_url = "https://id.example.com/token"
client_id = "id"
client_secret = "${{SECRET_FROM_ENV}}"

[token.st]
grant = "static"
static_token = "{MARKER}"

[token.pw]
grant = "password"
token_url = "https://id.example.com/token"
username = "u"
password = "{SECRET_MARKER}-pw"

[token.jwt]
grant = "jwt_bearer"
token_url = "https://id.example.com/token"
assertion = "{ASSERTION_MARKER}"

[shared]
redis_url = "redis://:{REDIS_MARKER}@127.0.0.1:6379/0"
"#
        ),
    )
    .unwrap();
    let secrets = [MARKER, SECRET_MARKER, ASSERTION_MARKER, REDIS_MARKER];
    let env = [("SECRET_FROM_ENV", SECRET_MARKER)];
    let c = config.to_str().unwrap();
    // (arguments, environment, whether the configuration is valid)
    type Run = (Vec<String>, Vec<(&'static str, &'static str)>, bool);
    let runs: Vec<Run> = vec![
        // Valid: the summary.
        (
            vec!["check".into(), "--config".into(), c.into()],
            env.to_vec(),
            true,
        ),
        (
            vec![
                "check",
                "--upstream",
                "https://api.example.com",
                "--grant",
                "static",
                "--static-token",
                MARKER,
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            vec![],
            true,
        ),
        (
            vec![
                "check",
                "--upstream",
                "https://api.example.com",
                "--grant",
                "client_credentials",
                "--token-url",
                "https://id.example.com/t",
                "--client-id",
                "id",
                "--client-secret",
                SECRET_MARKER,
                "--redis-url",
                &format!("redis://:{REDIS_MARKER}@127.0.0.1/0"),
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            vec![],
            true,
        ),
        // The same through the environment.
        (
            vec![
                "check".into(),
                "--upstream".into(),
                "https://api.example.com".into(),
            ],
            vec![
                ("TOKEN_SIDECAR_GRANT", "static"),
                ("TOKEN_SIDECAR_STATIC_TOKEN", MARKER),
                ("TOKEN_SIDECAR_CLIENT_SECRET", SECRET_MARKER),
            ],
            true,
        ),
        // Invalid: every problem named, no secret.
        (
            vec![
                "check".into(),
                "--config".into(),
                c.into(),
                "--threads".into(),
                "0".into(),
            ],
            env.to_vec(),
            false,
        ),
        (
            vec![
                "check".into(),
                "--upstream".into(),
                format!("https://user:{SECRET_MARKER}@api.example.com/?key={MARKER}"),
                "--grant".into(),
                "client_credentials".into(),
                "--token-url".into(),
                format!("https://u:{SECRET_MARKER}@id.example.com/t?client_secret={SECRET_MARKER}"),
                "--client-secret".into(),
                SECRET_MARKER.into(),
                "--redis-url".into(),
                format!("http://:{REDIS_MARKER}@redis.example/0"),
            ],
            vec![],
            false,
        ),
        (
            vec![
                "check",
                "--upstream",
                "https://api.example.com",
                "--grant",
                "static",
                "--static-token",
            ]
            .into_iter()
            .map(String::from)
            .chain([format!("{MARKER}\u{1}")])
            .collect(),
            vec![],
            false,
        ),
        (
            vec![
                "check".into(),
                "--upstream".into(),
                "https://api.example.com".into(),
                "--redis-url".into(),
                format!("redis//:{REDIS_MARKER}@typo"),
                "--grant".into(),
                "static".into(),
                "--static-token".into(),
                MARKER.into(),
            ],
            vec![],
            false,
        ),
    ];
    for (args, envs, valid) in runs {
        let out = tokio::task::spawn_blocking({
            let envs: Vec<(String, String)> = envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            move || {
                let envs: Vec<(&str, &str)> =
                    envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                run_once(&args, &envs)
            }
        })
        .await
        .unwrap();
        assert_eq!(out.code, Some(if valid { 0 } else { 64 }), "{}", out.all());
        if valid {
            assert!(out.stdout.contains("configuration OK"), "{}", out.all());
        }
        for s in secrets {
            assert!(
                !out.all().contains(s),
                "{s} in `check` output:\n{}",
                out.all()
            );
        }
        assert!(!out.all().contains("panicked"));
    }
}

#[tokio::test]
async fn help_output_never_shows_secrets_from_the_environment() {
    let envs = [
        ("TOKEN_SIDECAR_STATIC_TOKEN", MARKER),
        ("TOKEN_SIDECAR_CLIENT_SECRET", SECRET_MARKER),
        ("TOKEN_SIDECAR_REDIS_URL", REDIS_MARKER),
    ];
    for args in [
        vec!["--help"],
        vec!["help"],
        vec!["run", "--help"],
        vec!["check", "--help"],
        vec!["refresh", "--help"],
        vec!["dev", "--help"],
        vec!["-h"],
        vec!["run", "-h"],
    ] {
        let out = run_once(&args, &envs);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.all());
        assert!(
            out.stdout.contains("Usage") || out.stdout.contains("usage"),
            "{args:?}"
        );
        for (_, s) in envs {
            assert!(!out.all().contains(s), "{s} in {args:?}:\n{}", out.all());
        }
    }
    // A wrong flag next to them: clap's error does not print them either.
    let out = run_once(["run", "--no-such-flag"], &envs);
    assert_eq!(out.code, Some(2));
    for (_, s) in envs {
        assert!(!out.all().contains(s), "{s} in:\n{}", out.all());
    }
}

#[test]
fn debug_of_the_loaded_configuration_redacts_every_secret() {
    use token_sidecar::config::{load, Flags};
    let no_env = |_: &str| None;
    let flag_sets = [
        Flags {
            upstream: Some("https://api.example.com".into()),
            grant: Some("static".into()),
            static_token: Some(MARKER.into()),
            redis_url: Some(format!("redis://:{REDIS_MARKER}@127.0.0.1:6379/0").into()),
            ..Default::default()
        },
        Flags {
            upstream: Some("https://api.example.com".into()),
            grant: Some("client_credentials".into()),
            token_url: Some("https://id.example.com/token".into()),
            client_id: Some("id".into()),
            client_secret: Some(SECRET_MARKER.into()),
            ..Default::default()
        },
    ];
    for flags in &flag_sets {
        let cfg = load(flags, &no_env).unwrap_or_else(|e| panic!("{e}"));
        for text in [format!("{cfg:?}"), format!("{cfg:#?}")] {
            for s in [MARKER, SECRET_MARKER, REDIS_MARKER] {
                assert!(
                    !text.contains(s),
                    "{s} in Debug of the configuration:\n{text}"
                );
            }
            assert!(text.contains("redacted"), "{text}");
        }
    }
    // Inline secrets of a config file, one expanded from the environment.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[route]]
name = "a"
listen = "127.0.0.1:0"
upstream = "https://api.example.com"
token = "pw"

[token.pw]
grant = "password"
token_url = "https://id.example.com/token"
client_id = "id"
client_secret = "${{S}}"
username = "u"
password = "{SECRET_MARKER}-pw"

[shared]
redis_url = "rediss://user:{REDIS_MARKER}@redis.example:6380/1"
"#
        ),
    )
    .unwrap();
    let env = |k: &str| (k == "S").then(|| ASSERTION_MARKER.to_owned());
    let flags = Flags {
        config: Some(file),
        ..Default::default()
    };
    let cfg = load(&flags, &env).unwrap_or_else(|e| panic!("{e}"));
    let text = format!("{cfg:#?}");
    for s in [SECRET_MARKER, REDIS_MARKER, ASSERTION_MARKER] {
        assert!(
            !text.contains(s),
            "{s} in Debug of the configuration:\n{text}"
        );
    }
}

#[test]
fn debug_of_the_command_line_flags_redacts_inline_secrets() {
    let flags = token_sidecar::config::Flags {
        static_token: Some(MARKER.into()),
        client_secret: Some(SECRET_MARKER.into()),
        redis_url: Some(format!("redis://:{REDIS_MARKER}@r/0").into()),
        ..Default::default()
    };
    let text = format!("{flags:?}");
    for s in [MARKER, SECRET_MARKER, REDIS_MARKER] {
        assert!(!text.contains(s), "{s} in {text}");
    }
}

#[tokio::test]
async fn the_state_file_is_0600_whatever_the_umask_or_the_mode_it_had() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    // A state file left world-readable by someone else, with stale content.
    let state = rig.path("state.json");
    std::fs::write(&state, "{}").unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).unwrap();
    let sc = rig.sidecar().arg("--state-file").arg(&state).start().await;
    eventually(DEADLINE, "ready", || async {
        sc.admin_get("/readyz").await.0 == 200
    })
    .await;
    assert_mode_0600(&state);
    let v = support::json(&std::fs::read(&state).unwrap());
    assert!(v["access_token"]
        .as_str()
        .unwrap()
        .starts_with(TOKEN_PREFIX));
    drop(sc);

    // `refresh` under a umask of 000, into a new file.
    let fresh = rig.path("fresh-state.json");
    let mut args = vec![
        "refresh".to_owned(),
        "--upstream".into(),
        rig.api.url(),
        "--state-file".into(),
        fresh.display().to_string(),
    ];
    args.extend(rig.jwt_flags());
    let script = format!(
        "umask 000; exec \"$0\" {}",
        args.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let bin = support::sidecar::binary().to_owned();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .args(["-c", &script, &bin])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert_mode_0600(&fresh);
    // No temporary file left behind, readable or not.
    let names: Vec<String> = std::fs::read_dir(rig.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for n in &names {
        assert!(
            ["secret", "jwt", "state.json", "fresh-state.json"].contains(&n.as_str()),
            "left behind: {n} in {names:?}"
        );
    }
}

/// A subject token that must never show.
const SUBJECT_MARKER: &str = "st-MARKER-eyJzdWJqZWN0.eyJleHAiOjk5OTk5OTk5OTl9.c2ln";
/// An actor token that must never show.
const ACTOR_MARKER: &str = "at-MARKER-eyJhY3Rvcg.eyJleHAiOjk5OTk5OTk5OTl9.c2ln";
/// A client assertion file's content that must never show.
const CLIENT_ASSERTION_MARKER: &str = "ca-MARKER-eyJjbGllbnQ.eyJleHAiOjk5OTk5OTk5OTl9.c2ln";

/// A token endpoint that echoes every form it gets in its error (as [`echoing_token_endpoint`]
/// shape `shape`), and keeps the forms so that a test knows the assertions the sidecar signed.
async fn recording_echo(shape: usize) -> (Scripted, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let forms = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = forms.clone();
    let ts = Scripted::start(move |mut a| {
        let kept = kept.clone();
        async move {
            let Some((_head, body)) = a.read_request().await else {
                return;
            };
            let decoded: Vec<(String, String)> = form_urlencoded::parse(&body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let echo: String = decoded.iter().map(|(k, v)| format!("{k}={v} ")).collect();
            kept.lock().unwrap().extend(decoded.into_iter().map(|(_, v)| v));
            let (status, json) = match shape {
                0 => (400, serde_json::json!({"error": "invalid_client", "error_description": format!("bad: {echo}")})),
                1 => (401, serde_json::json!({"error": "invalid_client", "errors": [{"errorCode": echo.clone(), "message": echo}]})),
                _ => (500, serde_json::json!({"message": echo})),
            };
            let body = json.to_string();
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = a.stream.write_all(resp.as_bytes()).await;
        }
    })
    .await;
    (ts, forms)
}

/// The base64 body of a PEM file, a line at a time: none of it may show.
fn pem_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn assertions_keys_and_subject_tokens_echoed_by_a_token_endpoint_never_leak() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key_pem = key.serialize_pem();
    std::fs::write(dir.path().join("key.pem"), &key_pem).unwrap();
    std::fs::write(dir.path().join("secret"), SECRET_MARKER).unwrap();
    std::fs::write(dir.path().join("assertion"), CLIENT_ASSERTION_MARKER).unwrap();
    std::fs::write(dir.path().join("subject"), SUBJECT_MARKER).unwrap();
    std::fs::write(dir.path().join("actor"), ACTOR_MARKER).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["client".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let methods: [(&str, Vec<String>); 4] = [
        (
            "private_key_jwt",
            vec![
                "--grant=client_credentials".into(),
                "--client-auth=private_key_jwt".into(),
                format!("--jwt-signing-key-file={}", p("key.pem")),
                "--jwt-key-id=k1".into(),
            ],
        ),
        (
            "client_secret_jwt",
            vec![
                "--grant=client_credentials".into(),
                "--client-auth=client_secret_jwt".into(),
                format!("--client-secret-file={}", p("secret")),
            ],
        ),
        (
            "assertion_file",
            vec![
                "--grant=client_credentials".into(),
                "--client-auth=assertion_file".into(),
                format!("--client-assertion-file={}", p("assertion")),
            ],
        ),
        (
            "token_exchange over tls",
            vec![
                "--grant=token_exchange".into(),
                "--client-auth=none".into(),
                format!("--subject-token-file={}", p("subject")),
                format!("--actor-token-file={}", p("actor")),
                format!("--tls-client-cert-file={}", p("cert.pem")),
                format!("--tls-client-key-file={}", p("key.pem")),
                "--audience=https://api.example.com".into(),
            ],
        ),
    ];
    let up = Upstream::start().await;
    for (method, args) in methods {
        for shape in 0..3 {
            let (ts, forms) = recording_echo(shape).await;
            let sc = traced(SidecarBuilder::new(&up.url("")))
                .args(["--client-id", "echo-client"])
                .args(["--token-url", &ts.url("/oauth/token")])
                .args(args.iter().map(String::as_str))
                .start()
                .await;
            eventually(DEADLINE, "a failed attempt", || async {
                sc.logs().iter().any(|l| l.contains("token refresh failed"))
            })
            .await;
            let mut seen = Seen::default();
            let r = Client::http1().get(&sc.url("/x")).await;
            seen.add_resp("GET", &r);
            admin_answers(&sc, &mut seen).await;
            // What the endpoint got: the signed assertion or the files' content.
            let sent = forms.lock().unwrap().clone();
            let credentials: Vec<String> = sent
                .iter()
                .filter(|v| v.len() > 40 && v.matches('.').count() == 2)
                .cloned()
                .collect();
            assert!(!credentials.is_empty(), "{method}: nothing sent: {sent:?}");
            let mut secrets: Vec<String> = credentials;
            secrets.extend(pem_lines(&key_pem));
            secrets.extend(
                [
                    SECRET_MARKER,
                    CLIENT_ASSERTION_MARKER,
                    SUBJECT_MARKER,
                    ACTOR_MARKER,
                    "-MARKER-",
                ]
                .map(String::from),
            );
            let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
            seen.assert_free_of(&secrets);
            assert_stderr_free_of(&sc, &secrets);
        }
    }
}

#[tokio::test]
async fn check_shows_the_algorithm_and_the_certificate_but_never_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let key_pem = key.serialize_pem();
    std::fs::write(dir.path().join("key.pem"), &key_pem).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["client".into()]).unwrap();
    // Expires in three days: `check` warns.
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let out = run_once(
        [
            "check",
            "--upstream",
            "https://api.example.com",
            "--token-url",
            "https://id.example.com/token",
            "--client-id",
            "c1",
            "--client-auth",
            "private_key_jwt",
            "--jwt-signing-key-file",
            &p("key.pem"),
            "--tls-client-cert-file",
            &p("cert.pem"),
            "--tls-client-key-file",
            &p("key.pem"),
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("client_auth private_key_jwt"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("jwt alg ES384"), "{}", out.stdout);
    assert!(
        out.stdout.contains("client certificate CN="),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("the client certificate expires within 7 days"),
        "{}",
        out.stderr
    );
    for line in pem_lines(&key_pem) {
        assert!(!out.stdout.contains(&line) && !out.stderr.contains(&line));
    }
}
