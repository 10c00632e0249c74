//! Hostile tests of the token's own life (issue 15, "Trust"), against the real binary and no
//! Redis: the state file against planted symlinks and files it must not trust, a spent bootstrap
//! refresh token across a restart, oversized token responses and files, the memory held for 401
//! replays, and a process that cannot be read by others of its uid.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use support::client::{empty, full};
use support::metrics;
use support::procfs::rss_kib;
use support::rc::Rig;
use support::scripted::Scripted;
use support::trust_tokens::{self as tt};
use support::{Client, Fnv, Resp, Sidecar, SidecarBuilder, Upstream, DEADLINE, MARKER};
use token_sidecar_testkit::token_server::{
    token_fingerprint, Fault, TokenServerConfig, TOKEN_PREFIX,
};
use tokio::io::AsyncWriteExt;

async fn post_refresh(sc: &Sidecar) -> Resp {
    Client::http1()
        .send(
            Request::post(sc.admin_url("/refresh"))
                .body(empty())
                .unwrap(),
        )
        .await
}

/// The `profile` today's sidecar writes for the JWT flow of `rig`.
fn jwt_profile(rig: &Rig) -> String {
    tt::profile_key(&rig.ts.token_url(), "test-client", "jwt_bearer")
}

// ---------------------------------------------------------------------------------------------
// State file
// ---------------------------------------------------------------------------------------------

/// Attack: a local user who can write to the state file's directory plants symlinks at the
/// names the state file is written through (today `.state.json.tmp-PID`; the pid is known once
/// the process runs, and the startup token request is made slow to leave time), pointing at
/// files outside. Property: the targets receive nothing, the state file is a regular file of
/// mode 0600, and no other file in the directory holds a token, through two saves.
#[tokio::test]
async fn state_file_temporaries_planted_as_symlinks_receive_nothing() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    rig.ts
        .set_fault(Fault::Slow(Duration::from_secs(3)), Some(1));
    let sc = rig.sidecar().arg("--state-file").arg(&state).start().await;
    let pid = sc.pid();
    let names = [
        format!(".state.json.tmp-{pid}"),
        format!("state.json.tmp-{pid}"),
        ".state.json.tmp".to_owned(),
        "state.json.tmp".to_owned(),
        "state.json.new".to_owned(),
    ];
    let mut planted = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let target = outside.path().join(format!("target-{i}"));
        std::fs::write(&target, "untouched").unwrap();
        let link = dir.path().join(name);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        planted.push((link, target));
    }
    assert_eq!(
        rig.ts.request_count(),
        0,
        "the startup token request was answered before the symlinks were planted"
    );
    tt::wait_ready(&sc).await;
    // A second save.
    let r = post_refresh(&sc).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let mut problems = Vec::new();
    for (link, target) in &planted {
        let got = std::fs::read(target).unwrap();
        if got != b"untouched" {
            problems.push(format!(
                "{} (planted at {}) received {} bytes{}",
                target.display(),
                link.display(),
                got.len(),
                if tt::contains(&got, TOKEN_PREFIX.as_bytes()) {
                    ", a token"
                } else {
                    ""
                }
            ));
        }
    }
    let meta = std::fs::symlink_metadata(&state).unwrap();
    if !meta.file_type().is_file() {
        problems.push(format!(
            "the state file is not a regular file: {:?}",
            meta.file_type()
        ));
    } else {
        if tt::mode_of(&state) != 0o600 {
            problems.push(format!("the state file has mode {:o}", tt::mode_of(&state)));
        }
        if !tt::contains(&std::fs::read(&state).unwrap(), TOKEN_PREFIX.as_bytes()) {
            problems.push("the state file holds no token".into());
        }
    }
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p == state || !e.file_type().unwrap().is_file() {
            continue;
        }
        if tt::contains(&std::fs::read(&p).unwrap(), TOKEN_PREFIX.as_bytes()) {
            problems.push(format!("{} holds a token", p.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Attack: a state file the sidecar did not write: its path is a symlink to an attacker's file,
/// or it is writable by group or others, or owned by another uid; it holds a fresh
/// `attacker-token` in today's format. Property: it is never trusted: the upstream never sees
/// `attacker-token` (the sidecar obtains its token the normal way), the attacker's file is not
/// written to, and a warning is logged.
#[tokio::test]
async fn a_state_file_the_sidecar_cannot_trust_is_never_used() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let up = Upstream::start().await;
    let attacker = tt::state_json(
        &jwt_profile(&rig),
        1,
        "attacker-token",
        Some("attacker-refresh-token"),
        tt::unix_now() + 3600,
    )
    .to_string();
    let mut problems = Vec::new();
    for variant in ["a symlink", "mode 0666", "mode 0620", "owned by uid 65534"] {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let evil = elsewhere.path().join("evil.json");
        match variant {
            "a symlink" => {
                tt::write_private(&evil, attacker.as_bytes());
                std::os::unix::fs::symlink(&evil, &state).unwrap();
            }
            "mode 0666" | "mode 0620" => {
                tt::write_private(&state, attacker.as_bytes());
                tt::chmod(&state, if variant == "mode 0666" { 0o666 } else { 0o620 });
            }
            _ => {
                tt::write_private(&state, attacker.as_bytes());
                std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
            }
        }
        let before = up.request_count();
        let sc = SidecarBuilder::new(&up.url(""))
            .args(rig.jwt_flags())
            .arg("--state-file")
            .arg(&state)
            .start()
            .await;
        if let Err(e) = tt::ready_within(&sc, DEADLINE).await {
            problems.push(format!("{variant}: {e}"));
            continue;
        }
        let r = Client::http1().get(&sc.url("/x")).await;
        let used: Vec<String> = up.requests()[before..]
            .iter()
            .flat_map(|r| r.header_values("authorization"))
            .collect();
        if used.iter().any(|t| t.contains("attacker-token")) {
            problems.push(format!(
                "{variant}: the upstream got the planted attacker-token"
            ));
        } else if r.status != 200 || !used.iter().all(|t| t.contains(TOKEN_PREFIX)) {
            problems.push(format!(
                "{variant}: no token of the token endpoint was used: {} {used:?}",
                r.status
            ));
        }
        if variant == "a symlink" && std::fs::read(&evil).unwrap() != attacker.as_bytes() {
            problems.push("a symlink: the sidecar wrote through the symlink".into());
        }
        let warned = sc.logs().iter().any(|l| {
            (l.contains("\"WARN\"") || l.contains("\"ERROR\""))
                && l.to_lowercase().contains("state")
        });
        if !warned {
            problems.push(format!("{variant}: no warning about the state file"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Attack: a state file in a directory anyone can write to (`/tmp`-like, sticky or not), where
/// others can plant or swap files. Property: `check` and `run` refuse the configuration with
/// exit 64, naming `--state-file` and the directory; the same directory with mode 0700 passes.
#[tokio::test]
async fn a_world_writable_state_directory_is_a_configuration_error() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let up = Upstream::start().await;
    for mode in [0o777, 0o1777, 0o700] {
        let dir = tempfile::tempdir().unwrap();
        tt::chmod(dir.path(), mode);
        let state = dir.path().join("state.json");
        let mut args = vec!["--upstream".to_owned(), up.url("")];
        args.extend(rig.jwt_flags());
        args.extend(["--state-file".to_owned(), state.display().to_string()]);
        let check: Vec<String> = std::iter::once("check".to_owned())
            .chain(args.iter().cloned())
            .collect();
        let out = tokio::task::spawn_blocking(move || support::sidecar::run_once(check, &[]))
            .await
            .unwrap();
        if mode == 0o700 {
            assert_eq!(out.code, Some(0), "mode 700: {}", out.all());
            continue;
        }
        let all = out.all();
        assert_eq!(out.code, Some(64), "check, directory mode {mode:o}: {all}");
        assert!(
            all.contains(&dir.path().display().to_string())
                && (all.contains("--state-file") || all.contains("state_file")),
            "check, directory mode {mode:o}: the message names neither the directory nor \
             --state-file: {all}"
        );
        // `run` too, before it listens.
        let mut cmd = support::sidecar::command();
        cmd.arg("run")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let end = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(64),
            "run with the state file in a directory of mode {mode:o}: {status:?} (None: still \
             running after {DEADLINE:?})"
        );
    }
}

/// Attack: none; a fresh install whose state directory does not exist yet. Property: it is
/// created with mode 0700 and the state file is written (mode 0600).
#[tokio::test]
async fn a_missing_state_directory_is_created_private() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("new").join("state");
    let state = dir.join("state.json");
    let sc = rig.sidecar().arg("--state-file").arg(&state).start().await;
    tt::wait_ready(&sc).await;
    let end = Instant::now() + DEADLINE;
    while !state.exists() {
        if Instant::now() >= end {
            let errors: Vec<String> = sc
                .logs()
                .into_iter()
                .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
                .collect();
            panic!(
                "no state file after {DEADLINE:?} in a directory that did not exist; warnings:\n{}",
                errors.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tt::mode_of(&dir), 0o700, "{}", dir.display());
    assert_eq!(tt::mode_of(&state), 0o600);
}

// ---------------------------------------------------------------------------------------------
// A spent bootstrap refresh token
// ---------------------------------------------------------------------------------------------

/// Attack: none; a crash-restart cycle of the `refresh_token` grant. The first start exchanges
/// the bootstrap token of `--refresh-token-file`; after a restart the state file's refresh
/// token is refused. Property: the sidecar never presents the bootstrap token again (the double,
/// with no grace window, records any reuse), reports that a new refresh token is needed, and
/// recovers once the file holds a new one.
#[tokio::test]
async fn a_spent_bootstrap_refresh_token_is_never_sent_again_after_a_restart() {
    let rig = Rig::new(TokenServerConfig {
        grace_unused: Duration::ZERO,
        grace_after_use: Duration::ZERO,
        ..TokenServerConfig::default()
    })
    .await;
    let rig_ref = &rig;
    let login = move |name: &'static str| {
        let path = rig_ref.path(name);
        async move {
            let out = rig_ref
                .refresh_subcommand(&["--state-file", path.to_str().unwrap()])
                .await;
            assert_eq!(out.code, Some(0), "{}", out.all());
            support::json(&std::fs::read(&path).unwrap())["refresh_token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let rt0 = login("boot-1.json").await;
    let rt_file = rig.path("rt");
    tt::write_private(&rt_file, rt0.as_bytes());
    let state = rig.path("state.json");
    let sidecar = || {
        SidecarBuilder::new(&rig.api.url())
            .args(["--grant", "refresh_token", "--client-id", "test-client"])
            .args(["--token-url", &rig.ts.token_url()])
            .arg("--client-secret-file")
            .arg(rig.path("secret"))
            .arg("--refresh-token-file")
            .arg(&rt_file)
            .arg("--state-file")
            .arg(&state)
    };
    let mut sc = sidecar().start().await;
    tt::wait_ready(&sc).await;
    assert_eq!(rig.count("refresh_token", 200), 1, "the bootstrap exchange");
    sc.sigterm();
    assert!(sc.wait_exit(DEADLINE).await.success());
    drop(sc);

    // The state file's refresh token is refused from now on; its access token has expired.
    let mut v = support::json(&std::fs::read(&state).unwrap());
    let now = tt::unix_now();
    v["refresh_token"] = "bogus-refresh-token".into();
    v["obtained_at"] = (now - 3660).into();
    v["obtained_at_ms"] = ((now - 3660) * 1000).into();
    v["expires_at"] = (now - 60).into();
    v["expires_at_ms"] = ((now - 60) * 1000).into();
    std::fs::write(&state, v.to_string()).unwrap();
    assert_eq!(tt::mode_of(&state), 0o600);

    let sc = sidecar().start().await;
    support::eventually(DEADLINE, "the first attempt after the restart", || async {
        !tt::token_info(&sc).await["last_refresh"]["result"].is_null()
    })
    .await;
    let stale = rig.ts.stale_refresh_token_uses();
    assert!(
        !stale
            .iter()
            .any(|s| s.token_fingerprint == token_fingerprint(&rt0)),
        "the bootstrap refresh token, exchanged before the restart, was presented again: {stale:?}"
    );
    assert!(stale.is_empty(), "stale refresh token uses: {stale:?}");
    let (status, body) = sc.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let error = tt::token_info(&sc).await["last_refresh"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        error.contains("refresh token"),
        "/token-info does not say a new refresh token is needed: {error:?}"
    );

    // A new bootstrap token in the file: the sidecar recovers.
    let rt1 = login("boot-2.json").await;
    tt::replace_file(&rt_file, rt1.as_bytes());
    let r = post_refresh(&sc).await;
    support::eventually(DEADLINE, "ready with the new bootstrap token", || async {
        sc.admin_get("/readyz").await.0 == 200
    })
    .await;
    assert!(
        rig.ts.stale_refresh_token_uses().is_empty(),
        "POST /refresh answered {}",
        r.status
    );
    sc.assert_logs_free_of(&rt0);
    sc.assert_logs_free_of(&rt1);
}

// ---------------------------------------------------------------------------------------------
// Token responses and files of absurd size
// ---------------------------------------------------------------------------------------------

/// A token endpoint (raw HTTP/1.1) whose answer to request `i` (0 first) is `answer(i)`; it
/// records the size of every request it reads.
struct TokenEndpoint {
    server: Scripted,
    sizes: Arc<Mutex<Vec<usize>>>,
}

async fn token_endpoint(answer: impl Fn(usize) -> String + Send + Sync + 'static) -> TokenEndpoint {
    let answer = Arc::new(answer);
    let count = Arc::new(AtomicUsize::new(0));
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let s = sizes.clone();
    let server = Scripted::start(move |mut a| {
        let (answer, count, sizes) = (answer.clone(), count.clone(), s.clone());
        async move {
            while let Some((head, body)) = a.read_request().await {
                sizes.lock().unwrap().push(head.len() + body.len());
                let json = answer(count.fetch_add(1, Ordering::SeqCst));
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
                    json.len()
                );
                if a.stream.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    TokenEndpoint { server, sizes }
}

fn token_body(access_token: &str) -> String {
    serde_json::json!({"access_token": access_token, "token_type": "bearer", "expires_in": 3600})
        .to_string()
}

/// `run` with `client_credentials` against `ts`, in front of `up`.
fn cc_sidecar(up: &Upstream, ts: &TokenEndpoint, secret: &Path) -> SidecarBuilder {
    SidecarBuilder::new(&up.url(""))
        .args(["--grant", "client_credentials", "--client-id", "cc-client"])
        .args(["--token-url", &ts.server.url("/oauth/token")])
        .arg("--client-secret-file")
        .arg(secret)
}

/// Attack: a token endpoint (compromised, or a proxy in front of it) answers a refresh with a
/// 200 KB or 20 KB `access_token`, a 20 KB `refresh_token`, or a 100 KB body around a normal
/// token. Property: each is a failed refresh: the previous token keeps being injected, the
/// answer's token never reaches the upstream, and the state file never holds it.
#[tokio::test]
async fn an_oversized_token_response_is_a_failed_refresh() {
    let shapes: Vec<(&str, &'static str, String)> = vec![
        (
            "a 200 KB access_token",
            "huge-at-",
            token_body(&format!("huge-at-{}", "a".repeat(200_000))),
        ),
        (
            "a 20 KB access_token",
            "big-at-",
            token_body(&format!("big-at-{}", "a".repeat(20_000))),
        ),
        (
            "a 20 KB refresh_token",
            "token-with-big-rt",
            serde_json::json!({"access_token": "token-with-big-rt", "token_type": "bearer",
                "expires_in": 3600, "refresh_token": "r".repeat(20_000)})
            .to_string(),
        ),
        (
            "a 100 KB body",
            "token-in-big-body",
            serde_json::json!({"access_token": "token-in-big-body", "token_type": "bearer",
                "expires_in": 3600, "padding": "p".repeat(100_000)})
            .to_string(),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    tt::write_private(&secret, b"cc-secret");
    let mut problems = Vec::new();
    for (what, marker, bad) in shapes {
        let up = Upstream::start().await;
        let ts = token_endpoint(move |i| {
            if i == 0 {
                token_body("good-token-1")
            } else {
                bad.clone()
            }
        })
        .await;
        let state = dir.path().join(format!("{marker}state.json"));
        let sc = cc_sidecar(&up, &ts, &secret)
            .arg("--state-file")
            .arg(&state)
            .start()
            .await;
        tt::wait_ready(&sc).await;
        let client = Client::http1();
        assert_eq!(client.get(&sc.url("/x")).await.status, 200);
        let r = post_refresh(&sc).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(client.get(&sc.url("/x")).await.status);
        }
        let tokens = tt::bearer_tokens(&up);
        let persisted = std::fs::read(&state).unwrap_or_default();
        if tokens.iter().any(|t| t.starts_with(marker)) {
            problems.push(format!(
                "{what}: its token reached the upstream (POST /refresh answered {})",
                r.status
            ));
        }
        if tokens.iter().any(|t| t != "good-token-1") || got.iter().any(|s| *s != 200) {
            problems.push(format!(
                "{what}: the previous token is not what the upstream gets: statuses {got:?}, tokens {:?}",
                tokens.iter().map(|t| t.chars().take(40).collect::<String>()).collect::<Vec<_>>()
            ));
        }
        if tt::contains(&persisted, marker.as_bytes()) {
            problems.push(format!("{what}: the state file holds its token"));
        }
        if ts.sizes.lock().unwrap().len() < 2 {
            problems.push(format!("{what}: the refresh was not attempted"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Attack: the token file (`--grant file`) replaced by 1 MiB, or 1 MiB from the start (a
/// runaway writer, a wrong file mounted). Property: refused: the previous token is kept (no new
/// version, the upstream still gets it), 503 `token_unavailable` when there is none, a warning
/// naming the file, and no jump in RSS.
#[tokio::test]
async fn an_oversized_token_file_is_refused() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    tt::write_private(&file, b"file-token-1\n");
    let file_name = file.display().to_string();
    let sc = SidecarBuilder::new(&up.url(""))
        .token_file(&file)
        .start()
        .await;
    tt::wait_ready(&sc).await;
    let client = Client::http1();
    assert_eq!(client.get(&sc.url("/x")).await.status, 200);
    let v1 = tt::token_info(&sc).await["version"].clone();
    let rss_before = rss_kib(sc.pid()).unwrap();
    let big = format!("big-file-token-{}", "b".repeat(1 << 20));
    tt::replace_file(&file, big.as_bytes());
    support::eventually(
        DEADLINE,
        "the sidecar to react to the 1 MiB file",
        || async {
            tt::warning_about(&sc, &file_name).is_some()
                || tt::token_info(&sc).await["version"] != v1
        },
    )
    .await;
    assert_eq!(
        tt::token_info(&sc).await["version"],
        v1,
        "the 1 MiB file was taken as the new token"
    );
    let r = client.get(&sc.url("/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        tt::bearer_tokens(&up).last().map(String::as_str),
        Some("file-token-1")
    );
    assert!(
        tt::warning_about(&sc, &file_name).is_some(),
        "no warning naming {file_name}"
    );
    let rss_after = rss_kib(sc.pid()).unwrap();
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS went from {rss_before} KiB to {rss_after} KiB"
    );
    drop(sc);

    // From the start: no token at all.
    let sc = SidecarBuilder::new(&up.url(""))
        .token_file(&file)
        .start()
        .await;
    support::eventually(DEADLINE, "the sidecar to read its file", || async {
        tt::warning_about(&sc, &file_name).is_some() || sc.admin_get("/readyz").await.0 == 200
    })
    .await;
    let r = client.get(&sc.url("/x")).await;
    r.assert_sidecar_error(503, "token_unavailable");
    assert!(
        tt::warning_about(&sc, &file_name).is_some(),
        "no warning naming {file_name}"
    );
    assert!(
        !tt::bearer_tokens(&up)
            .iter()
            .any(|t| t.starts_with("big-file-token-")),
        "the 1 MiB token reached the upstream"
    );
}

/// Attack: the client secret file replaced by 1 MiB. Property: refused like an oversized token
/// response: no token request carries it (none over 64 KiB reaches the endpoint), the previous
/// token keeps being injected, a warning names the file, and RSS does not jump.
#[tokio::test]
async fn an_oversized_client_secret_file_is_refused() {
    let up = Upstream::start().await;
    let ts = token_endpoint(|i| token_body(&format!("cs-token-{}", i + 1))).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    tt::write_private(&secret, b"cc-secret");
    let secret_name = secret.display().to_string();
    let sc = cc_sidecar(&up, &ts, &secret).start().await;
    tt::wait_ready(&sc).await;
    let client = Client::http1();
    assert_eq!(client.get(&sc.url("/x")).await.status, 200);
    let rss_before = rss_kib(sc.pid()).unwrap();
    tt::replace_file(&secret, "S".repeat(1 << 20).as_bytes());
    let r = post_refresh(&sc).await;
    let sizes = ts.sizes.lock().unwrap().clone();
    assert!(
        sizes.iter().all(|s| *s <= 64 * 1024),
        "a token request of {:?} bytes carried the 1 MiB secret (POST /refresh answered {})",
        sizes.iter().max(),
        r.status
    );
    assert_eq!(client.get(&sc.url("/x")).await.status, 200);
    assert_eq!(
        tt::bearer_tokens(&up).last().map(String::as_str),
        Some("cs-token-1")
    );
    assert!(
        tt::warning_about(&sc, &secret_name).is_some(),
        "no warning naming {secret_name}"
    );
    let rss_after = rss_kib(sc.pid()).unwrap();
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS went from {rss_before} KiB to {rss_after} KiB"
    );
}

// ---------------------------------------------------------------------------------------------
// Replay memory
// ---------------------------------------------------------------------------------------------

/// One flood of `n` concurrent uploads of `len` bytes to an upstream that holds each for 3 s,
/// through a sidecar started with `extra` flags (token from a file: it can change, so small
/// bodies are kept for a replay after a 401). Returns the RSS growth over idle (KiB) at the
/// peak and the metrics after the flood; checks every upload arrived intact.
async fn upload_flood(n: u64, len: usize, extra: &[&str]) -> (u64, String) {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, MARKER).unwrap();
    let sc = SidecarBuilder::new(&up.url(""))
        .token_file(&token_file)
        .args(extra)
        .env("TOKEN_SIDECAR_LOG", "info")
        .start()
        .await;
    let client = Client::http1();
    let warm = client
        .send(
            Request::post(sc.url("/upload"))
                .body(full(vec![1u8; 1024]))
                .unwrap(),
        )
        .await;
    assert_eq!(warm.status, 200);
    let pid = sc.pid();
    let idle = rss_kib(pid).unwrap();
    let peak = Arc::new(AtomicUsize::new(idle as usize));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some(r) = rss_kib(pid) {
                    peak.fetch_max(r as usize, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let uploads: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            let url = sc.url("/slow?ms=3000");
            tokio::spawn(async move {
                let r = client
                    .send(
                        Request::post(url)
                            .header("x-upload", i.to_string())
                            .body(full(support::pattern(42, i, len)))
                            .unwrap(),
                    )
                    .await;
                (r.status, r.text())
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    for u in uploads {
        let (status, text) = u.await.unwrap();
        *statuses.entry(status).or_insert(0) += 1;
        if status != 200 && failures.len() < 5 {
            failures.push(text);
        }
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed) as u64;
    assert_eq!(
        statuses.get(&200),
        Some(&(n as usize)),
        "statuses {statuses:?}: {failures:?}"
    );
    let received: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.uri.path() == "/slow")
        .collect();
    assert_eq!(received.len(), n as usize);
    for r in &received {
        let i: u64 = r.header("x-upload").unwrap().parse().unwrap();
        assert_eq!(r.body_len, len as u64, "upload {i}");
        assert_eq!(
            r.body_hash,
            Fnv::of(&support::pattern(42, i, len)),
            "upload {i} arrived corrupted"
        );
    }
    support::eventually(
        DEADLINE,
        "token_sidecar_retry_body_bytes back to 0",
        || async {
            metrics::sum(&sc.metrics().await, "token_sidecar_retry_body_bytes", &[]) == 0.0
        },
    )
    .await;
    (peak.saturating_sub(idle), sc.metrics().await)
}

/// Attack: an app (or whoever reaches the loopback port) sends 600 concurrent 64 KiB uploads
/// (37.5 MiB) to a slow upstream, each small enough to be kept for a replay after a 401.
/// Property: the copies held share `--retry-body-budget` (default 16 MiB). The same flood is
/// measured three times: without replays (what the connections themselves cost), with the
/// default budget, and with a budget too large to matter. With the default budget, the
/// memory the copies add stays within twice the budget; without a budget they add well over
/// that, which shows the measurement sees them. The uploads streamed without a
/// copy are counted, the held-bytes gauge returns to 0, and every upload arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_copies_of_request_bodies_share_one_memory_budget() {
    const N: u64 = 600;
    const LEN: usize = 64 * 1024;
    const MIB: u64 = 1024;
    let (no_replays, _) = upload_flood(N, LEN, &["--refresh-on-401", "false"]).await;
    let (budgeted, m) = upload_flood(N, LEN, &[]).await;
    let (unbounded, _) = upload_flood(N, LEN, &["--retry-body-budget", "1073741824"]).await;
    eprintln!(
        "RSS growth under the flood: {} MiB without replays, {} MiB with the default budget, \
         {} MiB without a budget",
        no_replays / MIB,
        budgeted / MIB,
        unbounded / MIB
    );
    let exceeded = metrics::sum(&m, "token_sidecar_retry_body_budget_exceeded_total", &[]);
    assert!(
        exceeded >= 200.0,
        "token_sidecar_retry_body_budget_exceeded_total is {exceeded} after {N} uploads of \
         64 KiB held at once (16 MiB hold 256)"
    );
    // Twice the budget: a copy's allocation is rounded up by the allocator, and the frames it
    // is copied from are in the connection's buffers meanwhile.
    assert!(
        budgeted <= no_replays + 2 * 16 * MIB + 4 * MIB,
        "with the default budget the replay copies added {} MiB (RSS growth {} MiB against {} \
         MiB without replays)",
        budgeted.saturating_sub(no_replays) / MIB,
        budgeted / MIB,
        no_replays / MIB
    );
    assert!(
        unbounded >= budgeted + 16 * MIB,
        "without a budget the copies added only {} MiB: the measurement does not see them",
        unbounded.saturating_sub(no_replays) / MIB
    );
}

// ---------------------------------------------------------------------------------------------
// The process
// ---------------------------------------------------------------------------------------------

/// Attack: another process of the sidecar's uid (the app next to it, when both run as the same
/// user) reads `/proc/PID/environ` or `/proc/PID/mem` for the tokens and secrets. Property: the
/// process is non-dumpable from the start: run as uid 65534, its `/proc/PID/environ` and
/// `/proc/PID/mem` are owned by root, not by 65534. A control process of that uid shows the
/// files are owned by their process's uid otherwise (no `/proc/sys/kernel` setting is read or
/// changed by this test).
#[tokio::test]
async fn the_process_is_not_dumpable_even_under_an_unprivileged_uid() {
    const NOBODY: u32 = 65534;
    assert_eq!(
        std::fs::metadata("/proc/self").unwrap().uid(),
        0,
        "this test runs the sidecar as uid {NOBODY}: it must run as root"
    );
    let (_bin_dir, bin) = tt::executable_copy();
    // The control: a dumpable process of that uid owns its /proc files.
    let control = tt::spawn_as(NOBODY, NOBODY, Path::new("sleep"), &["30"], &[]);
    let control_pid = control.child.id();
    support::wait_until(DEADLINE, "the control process to run as uid 65534", || {
        std::fs::read_to_string(format!("/proc/{control_pid}/status")).is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.contains("65534"))
        })
    })
    .await;
    for name in ["environ", "mem"] {
        assert_eq!(
            tt::proc_owner(control_pid, name),
            NOBODY,
            "control: /proc/PID/{name} of an ordinary process of uid {NOBODY} is not owned by \
             it: this kernel does not show what the test relies on"
        );
    }
    drop(control);

    let up = Upstream::start().await;
    let upstream = up.url("");
    let mut sc = tt::spawn_as(
        NOBODY,
        NOBODY,
        &bin,
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--upstream",
            &upstream,
            "--grant",
            "static",
            "--static-token",
            MARKER,
        ],
        &[("TOKEN_SIDECAR_LOG", "info")],
    );
    let proxy = sc.wait_addr("listening").await;
    let _admin = sc.wait_addr("admin listening").await;
    let r = Client::http1().get(&format!("http://{proxy}/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let pid = sc.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("65534")),
        "the sidecar does not run as uid {NOBODY}:\n{status}"
    );
    for name in ["environ", "mem"] {
        let owner = tt::proc_owner(pid, name);
        assert_eq!(
            owner, 0,
            "/proc/PID/{name} of the sidecar is owned by uid {owner}: the process is dumpable, \
             and every process of its uid can read its memory and environment"
        );
    }
}
