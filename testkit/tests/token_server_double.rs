//! The RingCentral token server and API doubles themselves, over real sockets: what other
//! tests rely on them to do.

use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use token_sidecar_testkit::api::ApiServer;
use token_sidecar_testkit::token_server::{
    token_fingerprint, ClientAuthKind, Fault, RateLimit, TokenServer, TokenServerConfig,
    DEV_ASSERTION, HUGE_BODY_LEN, JWT_BEARER_GRANT, REDACTED, TOKEN_PREFIX,
};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const DEADLINE: Duration = Duration::from_secs(5);

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn basic() -> String {
    let creds = base64::engine::general_purpose::STANDARD.encode("test-client:test-secret");
    format!("Basic {creds}")
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Resp, hyper_util::client::legacy::Error> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Full::new(body)).unwrap()).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("read body").to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

fn form(params: &[(&str, &str)]) -> Bytes {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    Bytes::from(s.finish())
}

/// POSTs a form with Basic client authentication.
async fn post(client: &HttpClient, url: &str, params: &[(&str, &str)]) -> Resp {
    try_post(client, url, params).await.expect("request")
}

async fn try_post(
    client: &HttpClient,
    url: &str,
    params: &[(&str, &str)],
) -> Result<Resp, hyper_util::client::legacy::Error> {
    let auth = basic();
    send(
        client,
        Method::POST,
        url,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &auth),
        ],
        form(params),
    )
    .await
}

async fn jwt_login(client: &HttpClient, ts: &TokenServer) -> Value {
    let resp = post(
        client,
        &ts.token_url(),
        &[
            ("grant_type", JWT_BEARER_GRANT),
            ("assertion", DEV_ASSERTION),
        ],
    )
    .await;
    assert_eq!(
        resp.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    resp.json()
}

async fn refresh(client: &HttpClient, ts: &TokenServer, rt: &str) -> Resp {
    post(
        client,
        &ts.token_url(),
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
    )
    .await
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

async fn api_get(client: &HttpClient, api: &ApiServer, auth: Option<&str>, path: &str) -> Resp {
    let url = format!("{}{path}", api.url());
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    send(client, Method::GET, &url, &headers, Bytes::new())
        .await
        .expect("api request")
}

async fn api_bearer(client: &HttpClient, api: &ApiServer, token: &str) -> Resp {
    api_get(
        client,
        api,
        Some(&format!("Bearer {token}")),
        "/restapi/v1.0/account/~",
    )
    .await
}

/// Polls `cond` (which must not send requests) until it holds or the deadline passes.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

fn token_not_found_body() -> Value {
    json!({
        "error": "invalid_grant",
        "errors": [{"errorCode": "OAU-213", "message": "Token not found"}],
        "error_description": "Token not found",
    })
}

fn token_revoked_body() -> Value {
    json!({
        "error": "invalid_grant",
        "errors": [{"errorCode": "OAU-211", "message": "Token revoked"}],
        "error_description": "Token revoked",
    })
}

fn corrupted_body() -> Value {
    json!({
        "errorCode": "TokenInvalid",
        "message": "Access token corrupted",
        "errors": [{"errorCode": "OAU-129", "message": "Access token corrupted"}],
    })
}

// ---------------------------------------------------------------------------------------------
// Logins and client authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn jwt_login_answers_ringcentrals_token_body() {
    let ts = TokenServer::start(TokenServerConfig::default())
        .await
        .unwrap();
    let c = client();
    let resp = post(
        &c,
        &ts.token_url(),
        &[
            ("grant_type", JWT_BEARER_GRANT),
            ("assertion", DEV_ASSERTION),
        ],
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let body = resp.json();
    assert!(s(&body, "access_token").starts_with(TOKEN_PREFIX));
    assert!(s(&body, "refresh_token").starts_with(TOKEN_PREFIX));
    assert_ne!(body["access_token"], body["refresh_token"]);
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["refresh_token_expires_in"], 604_800);
    assert_eq!(body["scope"], "ReadAccounts");
    assert!(body["owner_id"].is_string());
    assert!(body["endpoint_id"].is_string());

    assert!(ts.is_access_token_valid(s(&body, "access_token")));
    assert!(ts.is_refresh_token_valid(s(&body, "refresh_token")));
    assert_eq!(ts.successful_logins(), 1);
    assert_eq!(ts.active_sessions(), 1);
    assert_eq!(ts.request_count(), 1);
    let rec = &ts.requests()[0];
    assert_eq!(rec.grant_type, JWT_BEARER_GRANT);
    assert_eq!(rec.status, 200);
    assert_eq!(rec.client_auth, ClientAuthKind::Basic);
    assert_eq!(rec.params["assertion"], REDACTED);
    assert_eq!(rec.params["grant_type"], JWT_BEARER_GRANT);
    assert!(rec.fault.is_none());
}

#[tokio::test]
async fn client_authentication_basic_body_and_invalid() {
    let ts = TokenServer::start(TokenServerConfig::default())
        .await
        .unwrap();
    let c = client();
    let url = ts.token_url();
    let ct = ("content-type", "application/x-www-form-urlencoded");

    // In the body.
    let body = form(&[
        ("grant_type", JWT_BEARER_GRANT),
        ("assertion", DEV_ASSERTION),
        ("client_id", "test-client"),
        ("client_secret", "test-secret"),
    ]);
    let resp = send(&c, Method::POST, &url, &[ct], body).await.unwrap();
    assert_eq!(resp.status, 200);
    let rec = ts.requests().pop().unwrap();
    assert_eq!(rec.client_auth, ClientAuthKind::Body);
    assert_eq!(rec.params["client_secret"], REDACTED);
    assert_eq!(rec.params["client_id"], "test-client");

    // A wrong secret in Basic.
    let bad = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("test-client:nope")
    );
    let body = form(&[
        ("grant_type", JWT_BEARER_GRANT),
        ("assertion", DEV_ASSERTION),
    ]);
    let resp = send(
        &c,
        Method::POST,
        &url,
        &[ct, ("authorization", &bad)],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 401);
    let err = resp.json();
    assert_eq!(err["error"], "invalid_client");
    assert_eq!(err["errors"][0]["errorCode"], "OAU-153");
    assert!(s(&err["errors"][0], "message").starts_with("Invalid client: "));
    assert!(s(&err, "error_description").starts_with("Invalid client: "));

    // No client authentication at all.
    let resp = send(&c, Method::POST, &url, &[ct], body).await.unwrap();
    assert_eq!(resp.status, 401);
    assert_eq!(resp.json()["errors"][0]["errorCode"], "OAU-153");
    assert_eq!(
        ts.requests().pop().unwrap().client_auth,
        ClientAuthKind::None
    );
    assert_eq!(ts.successful_logins(), 1);
}

#[tokio::test]
async fn grant_errors_match_ringcentral() {
    let ts = TokenServer::start(TokenServerConfig::default())
        .await
        .unwrap();
    let c = client();
    let url = ts.token_url();

    let resp = post(
        &c,
        &url,
        &[("grant_type", JWT_BEARER_GRANT), ("assertion", "garbage")],
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.json(),
        json!({"error": "invalid_grant", "error_description": "Unparseable assertion"})
    );

    let resp = post(&c, &url, &[("grant_type", "foo")]).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"], "unsupported_grant_type");

    let unauthorized = json!({"error": "unauthorized_client", "error_description": "Unauthorized for this grant type"});
    let resp = post(&c, &url, &[("grant_type", "client_credentials")]).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json(), unauthorized);
    let resp = post(
        &c,
        &url,
        &[
            ("grant_type", "password"),
            ("username", "u"),
            ("password", "p"),
        ],
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json(), unauthorized);

    let resp = refresh(&c, &ts, "U1BCMDFUMDRKVneverissued").await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json(), token_not_found_body());

    let resp = post(&c, &url, &[("assertion", DEV_ASSERTION)]).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"], "invalid_request");

    assert_eq!(ts.successful_logins(), 0);
    assert_eq!(ts.active_sessions(), 0);
    assert!(ts.stale_refresh_token_uses().is_empty());
    let statuses: Vec<u16> = ts.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [400, 400, 400, 400, 400, 400]);
}

#[tokio::test]
async fn password_and_client_credentials_when_allowed() {
    let ts = TokenServer::start(TokenServerConfig {
        password_user: Some(("alice".into(), "wonderland".into())),
        allow_client_credentials: true,
        ..TokenServerConfig::default()
    })
    .await
    .unwrap();
    let c = client();
    let url = ts.token_url();

    let resp = post(
        &c,
        &url,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "wonderland"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200);
    assert!(resp.json()["refresh_token"].is_string());
    assert_eq!(ts.requests()[0].params["password"], REDACTED);
    assert_eq!(ts.requests()[0].params["username"], "alice");

    let resp = post(
        &c,
        &url,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "nope"),
        ],
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"], "invalid_grant");

    let resp = post(&c, &url, &[("grant_type", "client_credentials")]).await;
    assert_eq!(resp.status, 200);
    let body = resp.json();
    assert!(s(&body, "access_token").starts_with(TOKEN_PREFIX));
    assert!(body.get("refresh_token").is_none());
    assert_eq!(ts.successful_logins(), 2);
    assert_eq!(ts.active_sessions(), 2);
}

#[tokio::test]
async fn ttl_fields_are_honoured_and_clamped_like_ringcentral() {
    let ts = TokenServer::start(TokenServerConfig::default())
        .await
        .unwrap();
    let c = client();
    let resp = post(
        &c,
        &ts.token_url(),
        &[
            ("grant_type", JWT_BEARER_GRANT),
            ("assertion", DEV_ASSERTION),
            ("access_token_ttl", "2"),
            ("refresh_token_ttl", "5"),
        ],
    )
    .await;
    let body = resp.json();
    assert_eq!(body["expires_in"], 2);
    assert_eq!(body["refresh_token_expires_in"], 5);

    let rc = TokenServer::start(TokenServerConfig::ringcentral())
        .await
        .unwrap();
    for (asked, got) in [("2", 600), ("7200", 3600), ("1800", 1800)] {
        let resp = post(
            &c,
            &rc.token_url(),
            &[
                ("grant_type", JWT_BEARER_GRANT),
                ("assertion", DEV_ASSERTION),
                ("access_token_ttl", asked),
            ],
        )
        .await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["expires_in"], got, "asked {asked}");
    }

    let resp = post(
        &c,
        &ts.token_url(),
        &[
            ("grant_type", JWT_BEARER_GRANT),
            ("assertion", DEV_ASSERTION),
            ("access_token_ttl", "soon"),
        ],
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"], "invalid_request");
}

// ---------------------------------------------------------------------------------------------
// Rotation and the grace window
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn refresh_rotates_and_the_old_access_token_stops_at_once() {
    let ts = TokenServer::start(TokenServerConfig::default())
        .await
        .unwrap();
    let api = ApiServer::start(&ts).await.unwrap();
    let c = client();
    let first = jwt_login(&c, &ts).await;
    let at1 = s(&first, "access_token");
    assert_eq!(api_bearer(&c, &api, at1).await.status, 200);

    let resp = refresh(&c, &ts, s(&first, "refresh_token")).await;
    assert_eq!(resp.status, 200);
    let second = resp.json();
    let at2 = s(&second, "access_token");
    assert_ne!(at1, at2);
    assert_ne!(first["refresh_token"], second["refresh_token"]);
    assert_eq!(
        first["session_id"], second["session_id"],
        "a refresh keeps the session"
    );
    assert_eq!(first["endpoint_id"], second["endpoint_id"]);

    assert!(!ts.is_access_token_valid(at1));
    assert!(ts.is_access_token_valid(at2));
    assert!(!ts.is_refresh_token_valid(s(&first, "refresh_token")));
    let old = api_bearer(&c, &api, at1).await;
    assert_eq!(old.status, 401);
    assert_eq!(old.json(), corrupted_body());
    assert_eq!(api_bearer(&c, &api, at2).await.status, 200);

    assert_eq!(ts.successful_logins(), 1);
    assert_eq!(ts.successful_refreshes(), 1);
    assert_eq!(ts.active_sessions(), 1);
    assert_eq!(ts.requests()[1].params["refresh_token"], REDACTED);
    assert!(ts.stale_refresh_token_uses().is_empty());
}

#[tokio::test]
async fn replay_while_the_new_token_is_unused_returns_the_same_pair() {
    let ts = TokenServer::start(TokenServerConfig::default())
        .await
        .unwrap();
    let c = client();
    let first = jwt_login(&c, &ts).await;
    let rt1 = s(&first, "refresh_token");
    let second = refresh(&c, &ts, rt1).await.json();
    for _ in 0..2 {
        let replay = refresh(&c, &ts, rt1).await;
        assert_eq!(replay.status, 200);
        let replay = replay.json();
        assert_eq!(replay["access_token"], second["access_token"]);
        assert_eq!(replay["refresh_token"], second["refresh_token"]);
    }
    assert_eq!(ts.grace_replays(), 2);
    assert_eq!(ts.successful_refreshes(), 1);
    assert!(ts.stale_refresh_token_uses().is_empty());
    assert!(ts.is_access_token_valid(s(&second, "access_token")));
}

#[tokio::test]
async fn within_the_grace_window_after_first_use_a_replay_returns_the_same_pair() {
    // A window no machine is slow enough to miss: the assertion always runs.
    let ts = TokenServer::start(TokenServerConfig {
        grace_after_use: Duration::from_secs(60),
        ..TokenServerConfig::default()
    })
    .await
    .unwrap();
    let api = ApiServer::start(&ts).await.unwrap();
    let c = client();
    let first = jwt_login(&c, &ts).await;
    let rt1 = s(&first, "refresh_token");
    let second = refresh(&c, &ts, rt1).await.json();
    assert_eq!(
        api_bearer(&c, &api, s(&second, "access_token"))
            .await
            .status,
        200
    );
    let replay = refresh(&c, &ts, rt1).await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.json()["access_token"], second["access_token"]);
    assert!(ts.stale_refresh_token_uses().is_empty());
}

#[tokio::test]
async fn after_the_grace_window_following_first_use_a_replay_is_stale_and_recorded() {
    let ts = TokenServer::start(TokenServerConfig {
        grace_after_use: Duration::from_millis(200),
        ..TokenServerConfig::default()
    })
    .await
    .unwrap();
    let api = ApiServer::start(&ts).await.unwrap();
    let c = client();
    let first = jwt_login(&c, &ts).await;
    let rt1 = s(&first, "refresh_token");
    let second = refresh(&c, &ts, rt1).await.json();
    assert_eq!(
        api_bearer(&c, &api, s(&second, "access_token"))
            .await
            .status,
        200
    );
    // The window closes 200 ms after the first use: waiting longer is always past it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale = refresh(&c, &ts, rt1).await;
    assert_eq!(stale.status, 400);
    assert_eq!(stale.json(), token_not_found_body());
    let uses = ts.stale_refresh_token_uses();
    assert_eq!(uses.len(), 1);
    assert_eq!(uses[0].token_fingerprint, token_fingerprint(rt1));
    assert_eq!(uses[0].session_id.to_string(), s(&first, "session_id"));
    // The session itself is unharmed.
    assert!(ts.is_access_token_valid(s(&second, "access_token")));
    assert!(ts.is_refresh_token_valid(s(&second, "refresh_token")));
}

#[tokio::test]
async fn replay_after_the_unused_window_is_stale() {
    let ts = TokenServer::start(TokenServerConfig {
        grace_unused: Duration::ZERO,
        ..TokenServerConfig::default()
    })
    .await
    .unwrap();
    let c = client();
    let first = jwt_login(&c, &ts).await;
    let rt1 = s(&first, "refresh_token");
    assert_eq!(refresh(&c, &ts, rt1).await.status, 200);
    let resp = refresh(&c, &ts, rt1).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json(), token_not_found_body());
    assert_eq!(ts.stale_refresh_token_uses().len(), 1);
}

#[tokio::test]
async fn replay_after_the_successor_was_exchanged_is_stale() {
    let ts = TokenServer::start(TokenServerConfig::default())
        .await
        .unwrap();
    let c = client();
    let first = jwt_login(&c, &ts).await;
    let rt1 = s(&first, "refresh_token");
    let second = refresh(&c, &ts, rt1).await.json();
    let third = refresh(&c, &ts, s(&second, "refresh_token")).await.json();
    assert_ne!(second["access_token"], third["access_token"]);
    let resp = refresh(&c, &ts, rt1).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json(), token_not_found_body());
    assert_eq!(ts.stale_refresh_token_uses().len(), 1);
    assert_eq!(ts.successful_refreshes(), 2);
    assert!(ts.is_access_token_valid(s(&third, "access_token")));
}

#[tokio::test]
async fn expired_refresh_token_is_invalid_grant() {
    let ts = TokenServer::start(TokenServerConfig {
        refresh_ttl: Duration::from_secs(1),
        ..TokenServerConfig::default()
    })
    .await
    .unwrap();
    let c = client();
    let first = jwt_login(&c, &ts).await;
    let rt = s(&first, "refresh_token");
    assert_eq!(first["refresh_token_expires_in"], 1);
    assert!(eventually(|| !ts.is_refresh_token_valid(rt)).await);
    let resp = refresh(&c, &ts, rt).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"], "invalid_grant");
    assert!(ts.stale_refresh_token_uses().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Sessions and revocation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn session_cap_evicts_the_oldest_session() {
    let ts = TokenServer::start(TokenServerConfig {
        session_cap: Some(2),
        ..TokenServerConfig::default()
    })
    .await
    .unwrap();
    let api = ApiServer::start(&ts).await.unwrap();
    let c = client();
    let one = jwt_login(&c, &ts).await;
    let two = jwt_login(&c, &ts).await;
    // A refresh keeps its session: no eviction.
    let two = refresh(&c, &ts, s(&two, "refresh_token")).await.json();
    assert!(ts.sessions_evicted().is_empty());
    assert_eq!(ts.active_sessions(), 2);

    let three = jwt_login(&c, &ts).await;
    let evicted = ts.sessions_evicted();
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].session_id.to_string(), s(&one, "session_id"));
    assert_eq!(ts.active_sessions(), 2);

    assert!(!ts.is_access_token_valid(s(&one, "access_token")));
    let resp = api_bearer(&c, &api, s(&one, "access_token")).await;
    assert_eq!(resp.status, 401);
    assert_eq!(resp.json(), corrupted_body());
    let resp = refresh(&c, &ts, s(&one, "refresh_token")).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json(), token_revoked_body());

    for t in [&two, &three] {
        assert_eq!(api_bearer(&c, &api, s(t, "access_token")).await.status, 200);
    }
}

#[tokio::test]
async fn revoke_ends_the_whole_session() {
    let ts = TokenServer::start(TokenServerConfig::default())
        .await
        .unwrap();
    let api = ApiServer::start(&ts).await.unwrap();
    let c = client();
    let body = jwt_login(&c, &ts).await;
    let resp = post(
        &c,
        &ts.revoke_url(),
        &[("token", s(&body, "refresh_token"))],
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(ts.revocations(), 1);
    assert_eq!(ts.active_sessions(), 0);
    assert!(!ts.is_access_token_valid(s(&body, "access_token")));
    let resp = api_bearer(&c, &api, s(&body, "access_token")).await;
    assert_eq!(resp.status, 401);
    assert_eq!(resp.json(), corrupted_body());
    let resp = refresh(&c, &ts, s(&body, "refresh_token")).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json(), token_revoked_body());
    // Revocation is not a token request.
    assert_eq!(ts.request_count(), 2);
}

// ---------------------------------------------------------------------------------------------
// Rate limit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_rate_limit_answers_429_and_each_request_restarts_the_penalty() {
    let penalty = Duration::from_millis(1000);
    let ts = TokenServer::start(TokenServerConfig {
        rate_limit: Some(RateLimit {
            max: 5,
            window: Duration::from_secs(60),
            penalty,
        }),
        session_cap: None,
        ..TokenServerConfig::default()
    })
    .await
    .unwrap();
    let c = client();
    let login = [
        ("grant_type", JWT_BEARER_GRANT),
        ("assertion", DEV_ASSERTION),
    ];
    for remaining in (0..5).rev() {
        let resp = post(&c, &ts.token_url(), &login).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-rate-limit-group"), Some("auth"));
        assert_eq!(resp.header("x-rate-limit-limit"), Some("5"));
        assert_eq!(
            resp.header("x-rate-limit-remaining"),
            Some(remaining.to_string().as_str())
        );
        assert_eq!(resp.header("x-rate-limit-window"), Some("60"));
    }
    let resp = post(&c, &ts.token_url(), &login).await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert_eq!(resp.header("x-rate-limit-group"), Some("auth"));
    assert_eq!(resp.header("x-rate-limit-remaining"), Some("0"));
    assert_eq!(resp.json()["errorCode"], "CMN-301");
    assert!(ts.rate_limit_penalty_remaining("test-client").is_some());
    // Another client is not penalised.
    assert!(ts.rate_limit_penalty_remaining("someone-else").is_none());

    // Let part of the penalty pass, then ask again: refused, and the penalty starts over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ts.rate_limit_penalty_remaining("test-client").unwrap();
    assert!(before <= Duration::from_millis(700));
    let resp = post(&c, &ts.token_url(), &login).await;
    assert_eq!(resp.status, 429);
    let after = ts.rate_limit_penalty_remaining("test-client").unwrap();
    assert!(after > before, "{after:?} should exceed {before:?}");
    // Revocation is in the same group.
    let resp = post(&c, &ts.revoke_url(), &[("token", "x")]).await;
    assert_eq!(resp.status, 429);

    // Once the penalty lapses (nobody asked meanwhile), a fresh window.
    assert!(eventually(|| ts.rate_limit_penalty_remaining("test-client").is_none()).await);
    let resp = post(&c, &ts.token_url(), &login).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-rate-limit-remaining"), Some("4"));
    assert_eq!(ts.successful_logins(), 6);
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

async fn faulted(fault: Fault) -> (TokenServer, Result<Resp, hyper_util::client::legacy::Error>) {
    let ts = TokenServer::start(TokenServerConfig::default())
        .await
        .unwrap();
    ts.set_fault(fault, Some(1));
    let c = client();
    let login = [
        ("grant_type", JWT_BEARER_GRANT),
        ("assertion", DEV_ASSERTION),
    ];
    let resp = try_post(&c, &ts.token_url(), &login).await;
    // `times: Some(1)`: the next request is normal again.
    let next = post(&c, &ts.token_url(), &login).await;
    assert_eq!(next.status, 200);
    assert!(ts.requests().last().unwrap().fault.is_none());
    (ts, resp)
}

#[tokio::test]
async fn fault_status_answers_an_rfc6749_error_body() {
    let (ts, resp) = faulted(Fault::Status(503)).await;
    let resp = resp.unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["error"], "temporarily_unavailable");
    let (_, resp) = faulted(Fault::Status(500)).await;
    let resp = resp.unwrap();
    assert_eq!(resp.status, 500);
    assert_eq!(resp.json()["error"], "server_error");
    assert_eq!(ts.requests()[0].status, 503);
    assert_eq!(ts.requests()[0].fault, Some(Fault::Status(503)));
    assert_eq!(ts.successful_logins(), 1);
}

#[tokio::test]
async fn fault_too_many_requests_with_and_without_retry_after() {
    let (_ts, resp) = faulted(Fault::TooManyRequests {
        retry_after: Some(7),
    })
    .await;
    let resp = resp.unwrap();
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after"), Some("7"));
    let (_ts, resp) = faulted(Fault::TooManyRequests { retry_after: None }).await;
    let resp = resp.unwrap();
    assert_eq!(resp.status, 429);
    assert!(resp.header("retry-after").is_none());
}

#[tokio::test]
async fn fault_garbage_is_a_200_that_is_not_json() {
    let (_ts, resp) = faulted(Fault::Garbage).await;
    let resp = resp.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert!(serde_json::from_slice::<Value>(&resp.body).is_err());
}

#[tokio::test]
async fn fault_html_is_a_load_balancer_502() {
    let (_ts, resp) = faulted(Fault::Html).await;
    let resp = resp.unwrap();
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("content-type"), Some("text/html"));
    assert!(String::from_utf8_lossy(&resp.body).contains("<html>"));
}

#[tokio::test]
async fn fault_empty_is_a_200_without_body() {
    let (_ts, resp) = faulted(Fault::Empty).await;
    let resp = resp.unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_empty());
}

#[tokio::test]
async fn fault_missing_access_token() {
    let (ts, resp) = faulted(Fault::MissingAccessToken).await;
    let resp = resp.unwrap();
    assert_eq!(resp.status, 200);
    let body = resp.json();
    assert!(body.get("access_token").is_none());
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(
        ts.successful_logins(),
        1,
        "only the second request logged in"
    );
}

#[tokio::test]
async fn fault_missing_expires_in_still_issues_a_valid_token() {
    let (ts, resp) = faulted(Fault::MissingExpiresIn).await;
    let body = resp.unwrap().json();
    assert!(body.get("expires_in").is_none());
    assert!(body["refresh_token_expires_in"].is_number());
    assert!(ts.is_access_token_valid(s(&body, "access_token")));
    assert_eq!(ts.successful_logins(), 2);
}

#[tokio::test]
async fn fault_huge_body() {
    let (_ts, resp) = faulted(Fault::HugeBody).await;
    let resp = resp.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), HUGE_BODY_LEN);
}

#[tokio::test]
async fn fault_slow_answers_normally_after_the_delay() {
    let ts = TokenServer::start(TokenServerConfig::default())
        .await
        .unwrap();
    ts.set_fault(Fault::Slow(Duration::from_millis(300)), None);
    let c = client();
    let arrivals = ts.arrivals();
    let started = Instant::now();
    let request = {
        let c = c.clone();
        let url = ts.token_url();
        tokio::spawn(async move {
            post(
                &c,
                &url,
                &[
                    ("grant_type", JWT_BEARER_GRANT),
                    ("assertion", DEV_ASSERTION),
                ],
            )
            .await
        })
    };
    // The request is seen on arrival, before it is answered.
    assert!(ts.wait_for_arrivals(1, DEADLINE).await);
    assert_eq!(*arrivals.borrow(), 1);
    let resp = request.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(resp.status, 200);
    assert!(ts.wait_for_requests(1, DEADLINE).await);
    ts.clear_fault();
    let started = Instant::now();
    jwt_login(&c, &ts).await;
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn fault_drop_connection_closes_without_an_answer() {
    let (ts, resp) = faulted(Fault::DropConnection).await;
    assert!(resp.is_err(), "expected a connection error, got {resp:?}");
    let first = &ts.requests()[0];
    assert_eq!(first.status, 0);
    assert_eq!(first.fault, Some(Fault::DropConnection));
    assert_eq!(ts.successful_logins(), 1);
}

#[tokio::test]
async fn fault_drop_connection_closes_an_http2_connection_too() {
    let ts = TokenServer::start(TokenServerConfig::default())
        .await
        .unwrap();
    let h2: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let login = [
        ("grant_type", JWT_BEARER_GRANT),
        ("assertion", DEV_ASSERTION),
    ];
    // h2c with prior knowledge works.
    assert_eq!(post(&h2, &ts.token_url(), &login).await.status, 200);
    ts.set_fault(Fault::DropConnection, Some(1));
    assert!(try_post(&h2, &ts.token_url(), &login).await.is_err());
    assert_eq!(post(&h2, &ts.token_url(), &login).await.status, 200);
    assert_eq!(ts.successful_logins(), 2);
}

#[tokio::test]
async fn fault_invalid_grant_is_oau_211() {
    let (_ts, resp) = faulted(Fault::InvalidGrant).await;
    let resp = resp.unwrap();
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json(), token_revoked_body());
}

#[tokio::test]
async fn faults_last_until_cleared_and_spare_the_api() {
    let ts = TokenServer::start(TokenServerConfig::default())
        .await
        .unwrap();
    let api = ApiServer::start(&ts).await.unwrap();
    let c = client();
    let body = jwt_login(&c, &ts).await;
    ts.set_fault(Fault::Status(500), None);
    for _ in 0..3 {
        let resp = refresh(&c, &ts, s(&body, "refresh_token")).await;
        assert_eq!(resp.status, 500);
    }
    assert_eq!(
        api_bearer(&c, &api, s(&body, "access_token")).await.status,
        200
    );
    ts.clear_fault();
    assert_eq!(
        refresh(&c, &ts, s(&body, "refresh_token")).await.status,
        200
    );
    // A faulted request consumed nothing: the first real exchange is not a replay.
    assert_eq!(ts.successful_refreshes(), 1);
    assert_eq!(ts.grace_replays(), 0);
}

// ---------------------------------------------------------------------------------------------
// API double
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn api_answers_ringcentrals_401_bodies() {
    let ts = TokenServer::start(TokenServerConfig::default())
        .await
        .unwrap();
    let api = ApiServer::start(&ts).await.unwrap();
    let c = client();

    let resp = api_get(&c, &api, None, "/restapi/v1.0/account/~").await;
    assert_eq!(resp.status, 401);
    assert_eq!(
        resp.json(),
        json!({
            "errorCode": "AGW-401",
            "message": "Authorization header is not specified",
            "errors": [{"errorCode": "AGW-401", "message": "Authorization header is not specified"}],
        })
    );

    for bad in ["Bearer", "Bearer ", "Basic dGVzdDp0ZXN0", "token"] {
        let resp = api_get(&c, &api, Some(bad), "/restapi/v1.0/account/~").await;
        assert_eq!(resp.status, 401, "{bad:?}");
        let body = resp.json();
        assert_eq!(body["errorCode"], "AGW-402", "{bad:?}");
        assert_eq!(body["message"], "Invalid Authorization header");
    }

    let resp = api_bearer(&c, &api, "U1BCMDFUMDRKVnotatoken").await;
    assert_eq!(resp.status, 401);
    assert_eq!(resp.json(), corrupted_body());

    // Expired: past its real lifetime.
    let resp = post(
        &c,
        &ts.token_url(),
        &[
            ("grant_type", JWT_BEARER_GRANT),
            ("assertion", DEV_ASSERTION),
            ("access_token_ttl", "1"),
        ],
    )
    .await;
    let body = resp.json();
    let at = s(&body, "access_token");
    assert!(eventually(|| !ts.is_access_token_valid(at)).await);
    let resp = api_bearer(&c, &api, at).await;
    assert_eq!(resp.status, 401);
    assert_eq!(
        resp.json(),
        json!({
            "errorCode": "TokenInvalid",
            "message": "Access token expired",
            "errors": [{"errorCode": "OAU-128", "message": "Access token expired"}],
        })
    );

    // Expired on demand.
    let body = jwt_login(&c, &ts).await;
    assert_eq!(ts.expire_access_tokens(), 1);
    let resp = api_bearer(&c, &api, s(&body, "access_token")).await;
    assert_eq!(resp.json()["errors"][0]["errorCode"], "OAU-128");
    assert!(ts.is_refresh_token_valid(s(&body, "refresh_token")));

    let codes: Vec<_> = api.requests().iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        [
            Some("AGW-401"),
            Some("AGW-402"),
            Some("AGW-402"),
            Some("AGW-402"),
            Some("AGW-402"),
            Some("OAU-129"),
            Some("OAU-128"),
            Some("OAU-128"),
        ]
    );
    assert!(api.requests().iter().all(|r| !r.authorized));
    assert_eq!(api.count_by_status().get(&401), Some(&8));
}

#[tokio::test]
async fn api_echoes_the_request_but_never_the_token() {
    let ts = TokenServer::start(TokenServerConfig::default())
        .await
        .unwrap();
    let api = ApiServer::start(&ts).await.unwrap();
    let c = client();
    let body = jwt_login(&c, &ts).await;
    let at = s(&body, "access_token");

    // The scheme in lower case is accepted.
    let url = format!("{}/restapi/v1.0/echo?x=1&status=201", api.url());
    let auth = format!("bearer {at}");
    let resp = send(
        &c,
        Method::POST,
        &url,
        &[("authorization", &auth), ("x-app", "demo")],
        Bytes::from_static(b"hello"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 201);
    assert!(!String::from_utf8_lossy(&resp.body).contains(at));
    let echo = resp.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/restapi/v1.0/echo");
    assert_eq!(echo["query"], "x=1&status=201");
    assert_eq!(echo["token_fingerprint"], token_fingerprint(at));
    assert_eq!(echo["session_id"], body["session_id"]);
    assert_eq!(echo["request_count"], 1);
    assert_eq!(echo["body"], "hello");
    assert_eq!(echo["body_len"], 5);
    assert_eq!(echo["headers"]["x-app"], "demo");
    // The Authorization that arrived, redacted to its scheme and the token's fingerprint.
    assert_eq!(
        echo["headers"][header::AUTHORIZATION.as_str()],
        format!("bearer <redacted; fingerprint {}>", token_fingerprint(at))
    );

    let started = Instant::now();
    let resp = api_get(&c, &api, Some(&auth), "/restapi/v1.0/echo?sleep_ms=200").await;
    assert_eq!(resp.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(resp.json()["request_count"], 2);

    api_get(&c, &api, None, "/").await;
    assert!(api.wait_for_requests(3, DEADLINE).await);
    let records = api.requests();
    assert_eq!(records.len(), 3);
    assert!(records[0].authorized);
    assert_eq!(records[0].path, "/restapi/v1.0/echo");
    assert_eq!(
        records[0].token_fingerprint.as_deref(),
        Some(token_fingerprint(at).as_str())
    );
    assert!(!records[2].authorized);
    let counts = api.count_by_status();
    assert_eq!(counts.get(&201), Some(&1));
    assert_eq!(counts.get(&200), Some(&1));
    assert_eq!(counts.get(&401), Some(&1));
}

// ---------------------------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stop_and_resume_listening_keeps_state() {
    let ts = TokenServer::start(TokenServerConfig::default())
        .await
        .unwrap();
    let c = client();
    let body = jwt_login(&c, &ts).await;
    ts.stop_listening().await;
    let err = try_post(&c, &ts.token_url(), &[("grant_type", "refresh_token")]).await;
    assert!(err.is_err(), "the endpoint should be down: {err:?}");
    ts.resume_listening().await.unwrap();
    let resp = refresh(&c, &ts, s(&body, "refresh_token")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(ts.successful_refreshes(), 1);
}

#[tokio::test]
async fn dropping_the_server_closes_its_port() {
    let ts = TokenServer::start(TokenServerConfig::default())
        .await
        .unwrap();
    let addr = ts.addr();
    drop(ts);
    let deadline = Instant::now() + DEADLINE;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Ok(_) => panic!("still listening on {addr}"),
        }
    }
}
