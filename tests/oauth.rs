//! The OAuth2 token lifecycle against the RingCentral-faithful token server and API doubles:
//! grants, timed refresh with rotation, failures and recovery, refresh on 401, the state file,
//! the `refresh` subcommand and `POST /refresh`.

mod support;

use std::time::{Duration, Instant};

use support::metrics;
use support::rc::Rig;
use support::{Client, Sidecar, SidecarBuilder, DEADLINE};
use token_sidecar_testkit::token_server::{
    Fault, TokenServerConfig, DEV_ASSERTION, JWT_BEARER_GRANT, TOKEN_PREFIX,
};

/// Neither a token nor a credential in any log line, metric or /token-info.
async fn assert_nothing_leaked(sc: &Sidecar) {
    for secret in [TOKEN_PREFIX, DEV_ASSERTION, "test-secret"] {
        sc.assert_logs_free_of(secret);
        assert!(!sc.metrics().await.contains(secret));
        assert!(!sc.admin_get("/token-info").await.1.contains(secret));
    }
}

#[tokio::test]
async fn jwt_login_injects_a_token_the_api_accepts() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let sc = rig.sidecar().start().await;
    sc.wait_ready().await;
    let r = Client::http1()
        .get_with(
            &sc.url("/restapi/v1.0/account/~"),
            &[("authorization", "Bearer app-forged")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let reqs = rig.ts.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].grant_type, JWT_BEARER_GRANT);
    assert_eq!(
        reqs[0].client_auth,
        token_sidecar_testkit::token_server::ClientAuthKind::Basic
    );
    // /readyz turns 200 once the token is published; the refresher records the outcome (and
    // whether it holds a refresh token) just after that: wait for the record.
    support::eventually(DEADLINE, "the startup refresh to be recorded", || async {
        sc.token_info().await["last_refresh"]["result"] == "success"
    })
    .await;
    let info = sc.token_info().await;
    assert_eq!(info["grant"], "jwt_bearer");
    assert_eq!(info["valid"], true);
    assert_eq!(info["has_refresh_token"], true);
    assert_eq!(info["last_refresh"]["trigger"], "startup");
    assert_nothing_leaked(&sc).await;
}

#[tokio::test]
async fn timed_refresh_cycles_under_load_lose_no_request() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    // 3-second tokens: refreshed every ~1.2-1.5 s.
    let sc = rig
        .sidecar()
        .args(["--token-param", "access_token_ttl=3"])
        .start()
        .await;
    sc.wait_ready().await;
    let url = sc.url("/restapi/v1.0/echo");
    let end = Instant::now() + Duration::from_secs(7);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::http1();
            let (mut ok, mut failed) = (0u32, Vec::new());
            while Instant::now() < end {
                let r = client.get(&url).await;
                if r.status == 200 {
                    ok += 1;
                } else {
                    failed.push((r.status, r.text()));
                }
            }
            (ok, failed)
        }));
    }
    let mut total = 0;
    for t in tasks {
        let (ok, failed) = t.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total > 100, "only {total} requests");
    let refreshes = rig.count("refresh_token", 200);
    assert!(refreshes >= 3, "only {refreshes} refreshes");
    assert_eq!(
        rig.ts.successful_logins(),
        1,
        "one session, kept by refreshes"
    );
    assert!(
        rig.ts.stale_refresh_token_uses().is_empty(),
        "an exchanged refresh token was reused"
    );
    assert!(rig.ts.sessions_evicted().is_empty());
    let timed = |m: &str| {
        metrics::value(
            m,
            "token_sidecar_token_refreshes_total",
            &[
                ("token", "default"),
                ("trigger", "timer"),
                ("result", "success"),
            ],
        )
        .unwrap_or(0.0)
    };
    // The token server counts a refresh when it answers; the sidecar counts it once it has
    // handled the answer, which may be a moment later for the last one.
    support::eventually(DEADLINE, "three timed refreshes counted", || async {
        timed(&sc.metrics().await) >= 3.0
    })
    .await;
    let m = sc.metrics().await;
    assert!(timed(&m) >= 3.0, "{m}");
    assert_eq!(
        metrics::sum(
            &m,
            "token_sidecar_requests_total",
            &[("route", "default"), ("status", "200")]
        ) as u32,
        total
    );
    assert_nothing_leaked(&sc).await;
}

#[tokio::test]
async fn concurrent_401s_share_one_refresh_and_are_replayed() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let sc = rig.sidecar().start().await;
    sc.wait_ready().await;
    let before = rig.ts.request_count();
    assert!(rig.ts.expire_access_tokens() >= 1);
    let client = Client::http1();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let client = client.clone();
        let url = sc.url(&format!("/restapi/v1.0/echo?i={i}"));
        tasks.push(tokio::spawn(async move { client.get(&url).await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        rig.ts.request_count() - before,
        1,
        "exactly one token request"
    );
    assert_eq!(rig.count("refresh_token", 200), 1);
    // Every 401 the API gave was replayed successfully.
    let api_401s = rig.api.count_by_status().get(&401).copied().unwrap_or(0);
    assert!(api_401s >= 1);
    let m = sc.metrics().await;
    assert_eq!(
        metrics::value(
            &m,
            "token_sidecar_unauthorized_retries_total",
            &[("route", "default"), ("result", "success")]
        ),
        Some(api_401s as f64),
        "{m}"
    );
    assert_eq!(
        metrics::value(
            &m,
            "token_sidecar_token_refreshes_total",
            &[
                ("token", "default"),
                ("trigger", "unauthorized"),
                ("result", "success")
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn refresh_on_401_off_passes_the_401_through() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let sc = rig
        .sidecar()
        .args(["--refresh-on-401", "false"])
        .start()
        .await;
    sc.wait_ready().await;
    let before = rig.ts.request_count();
    rig.ts.expire_access_tokens();
    let r = Client::http1().get(&sc.url("/restapi/v1.0/echo")).await;
    assert_eq!(r.status, 401);
    assert!(
        r.header("x-token-sidecar-error").is_none(),
        "the upstream's own 401"
    );
    assert!(r.text().contains("OAU-128"), "{}", r.text());
    // Nothing is triggered: no token request, no retry counted. Both are final once the 401 is
    // back: a retry is counted before the answer, and a refresh for a bodiless (replayable)
    // request would have been awaited before it. (A yield here would not let the sidecar, a
    // separate process, do anything more.)
    assert_eq!(rig.ts.request_count(), before);
    let m = sc.metrics().await;
    assert_eq!(
        metrics::sum(&m, "token_sidecar_unauthorized_retries_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn a_large_body_is_not_replayed_but_the_refresh_still_happens() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let sc = rig
        .sidecar()
        .args(["--retry-body-limit", "1024"])
        .start()
        .await;
    sc.wait_ready().await;
    let version = sc.token_info().await["version"].as_u64().unwrap_or(0);
    rig.ts.expire_access_tokens();
    let body = vec![b'x'; 10 * 1024];
    let req = http::Request::post(sc.url("/restapi/v1.0/upload"))
        .body(support::client::full(body.clone()))
        .unwrap();
    let r = Client::http1().send(req).await;
    assert_eq!(r.status, 401, "not replayed");
    // The token server answering is not enough: wait until the sidecar holds the new token.
    support::eventually(DEADLINE, "the background refresh", || async {
        sc.token_info().await["version"].as_u64().unwrap_or(0) > version
    })
    .await;
    assert_eq!(rig.count("refresh_token", 200), 1);
    // The app's own retry succeeds, and a small body is replayed transparently.
    let req = http::Request::post(sc.url("/restapi/v1.0/upload"))
        .body(support::client::full(body))
        .unwrap();
    assert_eq!(Client::http1().send(req).await.status, 200);
    let m = sc.metrics().await;
    assert_eq!(
        metrics::value(
            &m,
            "token_sidecar_unauthorized_retries_total",
            &[("route", "default"), ("result", "not_replayable")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn endpoint_down_keeps_the_valid_token_then_503_past_expiry_then_recovers() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let sc = rig
        .sidecar()
        .args(["--token-param", "access_token_ttl=4"])
        .start()
        .await;
    sc.wait_ready().await;
    let obtained = Instant::now();
    rig.ts.set_fault(Fault::Status(503), None);
    let client = Client::http1();
    // While the token is valid (4 s lifetime; refresh attempts fail from ~2 s): zero errors.
    while obtained.elapsed() < Duration::from_millis(3300) {
        let r = client.get(&sc.url("/restapi/v1.0/echo")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past expiry: the sidecar's own 503, never an expired token upstream.
    support::eventually(DEADLINE, "token_unavailable", || async {
        client.get(&sc.url("/restapi/v1.0/echo")).await.status == 503
    })
    .await;
    let r = client.get(&sc.url("/restapi/v1.0/echo")).await;
    r.assert_sidecar_error(503, "token_unavailable");
    assert!(r.header("retry-after").is_some());
    let (status, body) = sc.admin_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("default") && body.contains("expired"),
        "{body}"
    );
    let api_401s = rig.api.count_by_status().get(&401).copied().unwrap_or(0);
    assert_eq!(api_401s, 0, "an expired token was sent upstream");
    // No stampede: the failures are backed off.
    let failures = rig.ts.requests().iter().filter(|r| r.status == 503).count();
    assert!(
        failures <= 8,
        "{failures} token requests during a ~3 s outage"
    );
    // Recovery by itself.
    rig.ts.clear_fault();
    support::eventually(Duration::from_secs(20), "recovery", || async {
        client.get(&sc.url("/restapi/v1.0/echo")).await.status == 200
    })
    .await;
    assert_eq!(sc.admin_get("/readyz").await.0, 200);
    assert_nothing_leaked(&sc).await;
}

#[tokio::test]
async fn malformed_token_responses_are_retried_until_a_good_one() {
    for fault in [
        Fault::Garbage,
        Fault::Html,
        Fault::Empty,
        Fault::MissingAccessToken,
        Fault::HugeBody,
        Fault::DropConnection,
        Fault::Status(500),
    ] {
        let rig = Rig::new(TokenServerConfig::default()).await;
        rig.ts.set_fault(fault.clone(), Some(2));
        let sc = rig.sidecar().start().await;
        sc.wait_ready().await;
        let reqs = rig.ts.requests();
        assert_eq!(reqs.len(), 3, "{fault:?}: two failures then success");
        assert!(reqs[2].fault.is_none() && reqs[2].status == 200);
        // Backed off: the second retry waited at least the floor.
        assert!(reqs[2].at.duration_since(reqs[1].at) >= Duration::from_millis(200));
        let logs = sc.logs().join("\n");
        assert!(logs.contains("token refresh failed"), "{fault:?}: {logs}");
        let m = sc.metrics().await;
        assert_eq!(
            metrics::value(
                &m,
                "token_sidecar_token_refreshes_total",
                &[
                    ("token", "default"),
                    ("trigger", "startup"),
                    ("result", "failure")
                ]
            ),
            Some(2.0),
            "{fault:?}"
        );
        assert_eq!(Client::http1().get(&sc.url("/x")).await.status, 200);
        sc.assert_logs_free_of(TOKEN_PREFIX);
    }
}

#[tokio::test]
async fn missing_expires_in_takes_the_default_lifetime() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    rig.ts.set_fault(Fault::MissingExpiresIn, Some(1));
    let sc = rig
        .sidecar()
        .args(["--default-token-lifetime", "20m"])
        .start()
        .await;
    sc.wait_ready().await;
    let info = sc.token_info().await;
    let left = info["seconds_left"].as_u64().unwrap();
    assert!((1100..=1200).contains(&left), "{info}");
}

#[tokio::test]
async fn retry_after_is_honoured_on_429() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    rig.ts.set_fault(
        Fault::TooManyRequests {
            retry_after: Some(2),
        },
        Some(1),
    );
    let sc = rig.sidecar().start().await;
    sc.wait_ready().await;
    let reqs = rig.ts.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].status, 429);
    let waited = reqs[1].at.duration_since(reqs[0].at);
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    // Meanwhile the app got a clear answer with a Retry-After.
    drop(sc);
}

#[tokio::test]
async fn a_rejected_refresh_token_falls_back_to_the_jwt() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let sc = rig.sidecar().start().await;
    sc.wait_ready().await;
    rig.ts.set_fault(Fault::InvalidGrant, Some(1));
    let r = Client::http1()
        .send(
            http::Request::post(sc.admin_url("/refresh"))
                .body(support::client::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let grants: Vec<(String, u16)> = rig
        .ts
        .requests()
        .iter()
        .map(|r| (r.grant_type.clone(), r.status))
        .collect();
    assert_eq!(
        grants,
        vec![
            (JWT_BEARER_GRANT.to_owned(), 200),
            ("refresh_token".to_owned(), 400),
            (JWT_BEARER_GRANT.to_owned(), 200),
        ]
    );
    assert_eq!(Client::http1().get(&sc.url("/x")).await.status, 200);
}

/// A sidecar started with a wrong client secret, once it has handled the rejection (not just
/// once the token server has sent it).
async fn start_with_a_wrong_secret(rig: &Rig) -> Sidecar {
    std::fs::write(rig.path("secret"), "wrong-secret").unwrap();
    let sc = rig.sidecar().start().await;
    support::eventually(DEADLINE, "the first attempt", || async {
        sc.admin_get("/readyz").await.1.contains("invalid_client")
    })
    .await;
    sc
}

/// The timer's next attempt is minutes away, not after a backoff.
async fn assert_on_hold(sc: &Sidecar) {
    let v = support::json(sc.admin_get("/token-info").await.1.as_bytes());
    let next = v["tokens"]["default"]["next_refresh_at"].as_u64().unwrap();
    let now = v["now"].as_u64().unwrap();
    assert!(next >= now + 60, "next attempt at {next}, now {now}");
}

#[tokio::test]
async fn rejected_credentials_are_not_retried_blindly() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let sc = start_with_a_wrong_secret(&rig).await;
    let (status, body) = sc.admin_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("invalid_client"), "{body}");
    let r = Client::http1().get(&sc.url("/x")).await;
    r.assert_sidecar_error(503, "token_unavailable");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 60, "Retry-After {retry}");
    // No blind retry: the next attempt is planned minutes away (the count alone, read at once,
    // could not tell).
    assert_on_hold(&sc).await;
    assert_eq!(rig.ts.request_count(), 1, "no blind retry");
    // Fixing the secret file and asking for a refresh is enough; no restart, no 5-minute wait.
    std::fs::write(rig.path("secret"), "test-secret").unwrap();
    let r = sc.post_refresh().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(rig.ts.request_count(), 2);
    assert_eq!(sc.admin_get("/readyz").await.0, 200);
    assert_eq!(Client::http1().get(&sc.url("/x")).await.status, 200);
    sc.assert_logs_free_of("wrong-secret");
    sc.assert_logs_free_of("test-secret");
}

#[tokio::test]
async fn rejected_credentials_hold_the_timer_but_a_manual_refresh_may_try_again() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let sc = start_with_a_wrong_secret(&rig).await;
    // Still wrong: the manual refresh asks (the operator asked for it) and fails clearly.
    let r = sc.post_refresh().await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(rig.ts.request_count(), 2);
    let info = sc.token_info().await;
    assert!(
        info["last_refresh"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid_client")),
        "{info}"
    );
    assert_eq!(info["last_refresh"]["trigger"], "manual");
    // The failed manual attempt puts the timer on hold again.
    assert_on_hold(&sc).await;
}

#[tokio::test]
async fn state_file_survives_a_restart_without_a_token_request() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let state = rig.path("state.json");
    let mut sc = rig.sidecar().arg("--state-file").arg(&state).start().await;
    sc.wait_ready().await;
    let v1 = sc.token_info().await["version"].as_u64().unwrap();
    sc.sigterm();
    assert!(sc.wait_exit(DEADLINE).await.success());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let requests = rig.ts.request_count();
    let sc = rig.sidecar().arg("--state-file").arg(&state).start().await;
    sc.wait_ready().await;
    assert_eq!(Client::http1().get(&sc.url("/x")).await.status, 200);
    assert_eq!(
        rig.ts.request_count(),
        requests,
        "zero token requests after the restart"
    );
    assert_eq!(sc.token_info().await["version"].as_u64().unwrap(), v1);
    // The next refresh uses the persisted refresh token: the same session.
    let r = Client::http1()
        .send(
            http::Request::post(sc.admin_url("/refresh"))
                .body(support::client::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        rig.ts.requests().last().unwrap().grant_type,
        "refresh_token"
    );
    assert!(
        sc.token_info().await["version"].as_u64().unwrap() > v1,
        "versions keep growing"
    );
    assert_eq!(rig.ts.successful_logins(), 1);
}

#[tokio::test]
async fn a_corrupt_state_file_is_reported_and_ignored() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let state = rig.path("state.json");
    std::fs::write(&state, "{not json").unwrap();
    let sc = rig.sidecar().arg("--state-file").arg(&state).start().await;
    sc.wait_ready().await;
    // Logged before the token request, but read from the sidecar's stderr by another thread.
    support::wait_until(DEADLINE, "the state file to be reported", || {
        sc.logs().join("\n").contains("ignoring the state file")
    })
    .await;
    // Replaced by a good one.
    support::json(&std::fs::read(&state).unwrap());
}

#[tokio::test]
async fn refresh_subcommand_persists_and_prints_metadata_only() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let state = rig.path("state.json");
    let out = rig
        .refresh_subcommand(&["--state-file", state.to_str().unwrap()])
        .await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    let line = support::json(out.stdout.trim().as_bytes());
    assert_eq!(line["result"], "success");
    assert_eq!(line["version"], 1);
    assert!(!out.all().contains(TOKEN_PREFIX));
    // The second run uses the persisted refresh token.
    let out = rig
        .refresh_subcommand(&["--state-file", state.to_str().unwrap()])
        .await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(support::json(out.stdout.trim().as_bytes())["version"], 2);
    assert_eq!(
        rig.ts.requests().last().unwrap().grant_type,
        "refresh_token"
    );
    assert_eq!(rig.ts.successful_logins(), 1);
    // A failure exits non-zero with the reason.
    rig.ts.set_fault(Fault::Status(500), None);
    let out = rig
        .refresh_subcommand(&["--state-file", state.to_str().unwrap()])
        .await;
    assert_eq!(out.code, Some(1));
    assert_eq!(
        support::json(out.stdout.trim().as_bytes())["result"],
        "failure"
    );
}

#[tokio::test]
async fn manual_refresh_is_single_flight_and_loopback_only() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let sc = rig.sidecar().start().await;
    sc.wait_ready().await;
    let r = Client::http1()
        .send(
            http::Request::post(sc.admin_url("/refresh?token=default"))
                .body(support::client::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    let v = support::json(&r.body);
    assert_eq!(v["default"]["version"], 2);
    assert_eq!(v["default"]["last_refresh"]["trigger"], "manual");
    assert!(!r.text().contains(TOKEN_PREFIX));
    let r = Client::http1()
        .send(
            http::Request::post(sc.admin_url("/refresh?token=nope"))
                .body(support::client::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 404);
    let m = sc.metrics().await;
    assert_eq!(
        metrics::value(
            &m,
            "token_sidecar_token_refreshes_total",
            &[
                ("token", "default"),
                ("trigger", "manual"),
                ("result", "success")
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn client_credentials_with_body_auth_and_extra_params() {
    let rig = Rig::new(TokenServerConfig {
        allow_client_credentials: true,
        ..TokenServerConfig::default()
    })
    .await;
    let sc = SidecarBuilder::new(&rig.api.url())
        .args([
            "--grant",
            "client_credentials",
            "--client-id",
            "test-client",
            "--client-auth",
            "body",
            "--scope",
            "ReadAccounts",
        ])
        .args(["--token-param", "endpoint_id=abc"])
        .arg("--token-url")
        .arg(rig.ts.token_url())
        .arg("--client-secret-file")
        .arg(rig.path("secret"))
        .start()
        .await;
    sc.wait_ready().await;
    let req = &rig.ts.requests()[0];
    assert_eq!(req.grant_type, "client_credentials");
    assert_eq!(
        req.client_auth,
        token_sidecar_testkit::token_server::ClientAuthKind::Body
    );
    assert_eq!(
        req.params.get("scope").map(String::as_str),
        Some("ReadAccounts")
    );
    assert_eq!(
        req.params.get("endpoint_id").map(String::as_str),
        Some("abc")
    );
    assert_eq!(Client::http1().get(&sc.url("/x")).await.status, 200);
    assert_nothing_leaked(&sc).await;
}

// The demo is in the binary only with the `dev` feature; scripts/test.sh always enables it
// (scripts/check-release-deps.sh checks the answer of a binary without it).
#[cfg(feature = "dev")]
#[tokio::test]
async fn dev_subcommand_shows_injection_and_refresh_working() {
    let sc = SidecarBuilder::raw()
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "json", "--token-lifetime", "3s"])
        .start()
        .await;
    sc.wait_ready().await;
    let r = Client::http1()
        .get_with(
            &sc.url("/restapi/v1.0/account/~"),
            &[("authorization", "Bearer forged")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("token_fingerprint"));
    // 3-second tokens: the version grows by itself.
    support::eventually(DEADLINE, "a timed refresh", || async {
        sc.token_info().await["version"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    assert_eq!(Client::http1().get(&sc.url("/x")).await.status, 200);
    sc.assert_logs_free_of(TOKEN_PREFIX);
}

#[tokio::test]
async fn password_grant() {
    let rig = Rig::new(TokenServerConfig {
        password_user: Some(("alice".into(), "pa55word".into())),
        ..TokenServerConfig::default()
    })
    .await;
    std::fs::write(rig.path("password"), "pa55word\n").unwrap();
    let sc = SidecarBuilder::new(&rig.api.url())
        .args([
            "--grant",
            "password",
            "--client-id",
            "test-client",
            "--username",
            "alice",
        ])
        .arg("--token-url")
        .arg(rig.ts.token_url())
        .arg("--client-secret-file")
        .arg(rig.path("secret"))
        .arg("--password-file")
        .arg(rig.path("password"))
        .start()
        .await;
    sc.wait_ready().await;
    assert_eq!(rig.ts.requests()[0].grant_type, "password");
    assert_eq!(
        rig.ts.requests()[0]
            .params
            .get("username")
            .map(String::as_str),
        Some("alice")
    );
    assert_eq!(Client::http1().get(&sc.url("/x")).await.status, 200);
    sc.assert_logs_free_of("pa55word");
}

#[tokio::test]
async fn refresh_token_grant_bootstraps_from_a_file_and_keeps_the_session() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    // Obtain a refresh token the way an operator would (here: one JWT login, persisted).
    let state = rig.path("bootstrap-state.json");
    let out = rig
        .refresh_subcommand(&["--state-file", state.to_str().unwrap()])
        .await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    let rt = support::json(&std::fs::read(&state).unwrap())["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(rig.path("rt"), &rt).unwrap();
    let sc = SidecarBuilder::new(&rig.api.url())
        .args(["--grant", "refresh_token", "--client-id", "test-client"])
        .arg("--token-url")
        .arg(rig.ts.token_url())
        .arg("--client-secret-file")
        .arg(rig.path("secret"))
        .arg("--refresh-token-file")
        .arg(rig.path("rt"))
        .args(["--token-param", "access_token_ttl=3"])
        .start()
        .await;
    sc.wait_ready().await;
    // Timed refreshes use the rotated token, never the spent bootstrap one again.
    support::eventually(DEADLINE, "two timed refreshes", || async {
        rig.count("refresh_token", 200) >= 3
    })
    .await;
    assert_eq!(Client::http1().get(&sc.url("/x")).await.status, 200);
    assert_eq!(
        rig.ts.successful_logins(),
        1,
        "the bootstrap session is kept"
    );
    assert!(rig.ts.stale_refresh_token_uses().is_empty());
    assert_eq!(rig.ts.grace_replays(), 0);
    sc.assert_logs_free_of(&rt);
}

#[tokio::test]
async fn the_refresh_subcommand_rotating_the_state_file_behind_a_running_sidecar_costs_no_session()
{
    // No grace window: an exchanged refresh token presented again is refused (OAU-213).
    let rig = Rig::new(TokenServerConfig {
        grace_unused: Duration::ZERO,
        grace_after_use: Duration::ZERO,
        ..TokenServerConfig::default()
    })
    .await;
    let state = rig.path("state.json");
    let sc = rig.sidecar().arg("--state-file").arg(&state).start().await;
    sc.wait_ready().await;
    // A CronJob (or an operator) runs `refresh` on the same state file: the refresh token the
    // sidecar holds is exchanged.
    let out = rig
        .refresh_subcommand(&["--state-file", state.to_str().unwrap()])
        .await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(support::json(out.stdout.trim().as_bytes())["version"], 2);
    // The sidecar's token was replaced at the server: its next refresh takes the state file's
    // newer refresh token instead of presenting the exchanged one and logging in again.
    let r = sc.post_refresh().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(Client::http1().get(&sc.url("/x")).await.status, 200);
    assert!(
        rig.ts.stale_refresh_token_uses().is_empty(),
        "the exchanged refresh token was presented"
    );
    assert_eq!(rig.ts.successful_logins(), 1, "a second session");
    assert!(sc.token_info().await["version"].as_u64().unwrap() > 2);
}

#[tokio::test]
async fn the_refresh_subcommand_fails_when_its_state_file_cannot_be_written() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    // A directory no one can create (root ignores permission bits; /proc takes no new
    // directories): the configuration is fine, the write fails.
    let state = std::path::Path::new("/proc/self/token-sidecar-test/state.json");
    let out = rig
        .refresh_subcommand(&["--state-file", state.to_str().unwrap()])
        .await;
    // The refresh token was exchanged (or a session opened) and its successor is kept nowhere:
    // a CronJob reporting success here opens a new session on every run.
    assert_ne!(out.code, Some(0), "{}", out.all());
    assert_eq!(
        support::json(out.stdout.trim().as_bytes())["result"],
        "failure"
    );
}
