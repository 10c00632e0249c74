//! The API double's rate limits over real sockets: RingCentral's `X-Rate-Limit-*` headers on
//! every answer, the 429 `CMN-301` with `Retry-After`, the penalty that each request restarts,
//! independent groups, the `group=` knob, and 401s left uncounted.

use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use token_sidecar_testkit::api::{ApiLimits, ApiServer, Group};
use token_sidecar_testkit::token_server::{
    TokenServer, TokenServerConfig, DEV_ASSERTION, JWT_BEARER_GRANT,
};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const DEADLINE: Duration = Duration::from_secs(5);
/// A window no test outlasts: counts never slide out of it during a test.
const LONG: Duration = Duration::from_secs(60);

const ACCOUNT: &str = "/restapi/v1.0/account/~";
const CALL_LOG: &str = "/restapi/v1.0/account/~/extension/~/call-log";
const SMS: &str = "/restapi/v1.0/account/~/extension/~/sms";

struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `X-Rate-Limit-Group`, `-Limit`, `-Remaining`, `-Window`.
    fn rate(&self) -> (&str, &str, &str, &str) {
        let h = |name| {
            self.header(name)
                .unwrap_or_else(|| panic!("{name} missing on a {}", self.status))
        };
        (
            h("x-rate-limit-group"),
            h("x-rate-limit-limit"),
            h("x-rate-limit-remaining"),
            h("x-rate-limit-window"),
        )
    }
}

struct Rig {
    _ts: TokenServer,
    api: ApiServer,
    client: HttpClient,
    bearer: String,
}

impl Rig {
    async fn new(limits: Option<ApiLimits>) -> Rig {
        let ts = TokenServer::start(TokenServerConfig::default())
            .await
            .unwrap();
        let api = ApiServer::start_with_limits(&ts, limits).await.unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        let creds = base64::engine::general_purpose::STANDARD.encode("test-client:test-secret");
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", JWT_BEARER_GRANT);
        form.append_pair("assertion", DEV_ASSERTION);
        let login = send(
            &client,
            Method::POST,
            &ts.token_url(),
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &format!("Basic {creds}")),
            ],
            Bytes::from(form.finish()),
        )
        .await;
        assert_eq!(login.status, 200);
        let token = login.json()["access_token"].as_str().unwrap().to_owned();
        Rig {
            _ts: ts,
            api,
            client,
            bearer: format!("Bearer {token}"),
        }
    }

    /// `method path_and_query` with the valid token.
    async fn call(&self, method: Method, path_and_query: &str) -> Resp {
        self.call_as(Some(&self.bearer), method, path_and_query)
            .await
    }

    async fn call_as(&self, auth: Option<&str>, method: Method, path_and_query: &str) -> Resp {
        let url = format!("{}{path_and_query}", self.api.url());
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        send(&self.client, method, &url, &headers, Bytes::new()).await
    }

    async fn get(&self, path_and_query: &str) -> Resp {
        self.call(Method::GET, path_and_query).await
    }
}

async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Resp {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body)).unwrap())
        .await
        .expect("request");
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.expect("read body").to_bytes(),
    }
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

fn rate_exceeded_body() -> Value {
    json!({
        "errorCode": "CMN-301",
        "message": "Request rate exceeded",
        "errors": [{"errorCode": "CMN-301", "message": "Request rate exceeded"}],
    })
}

#[tokio::test]
async fn every_answer_carries_the_rate_limit_headers_of_its_group() {
    // Without limits: RingCentral's published numbers in the headers, nothing refused.
    let rig = Rig::new(None).await;
    assert_eq!(rig.api.limits(), None);
    let resp = rig.get(ACCOUNT).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.rate(), ("light", "50", "49", "60"));
    let resp = rig.call(Method::POST, SMS).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.rate(), ("medium", "40", "39", "60"));
    let resp = rig.get("/restapi/v1.0/account/~/call-log").await;
    assert_eq!(resp.rate(), ("heavy", "10", "9", "60"));
    let resp = rig.call(Method::POST, "/restapi/oauth/revoke").await;
    assert_eq!(resp.rate(), ("auth", "5", "4", "60"));
    // A 401 carries them too, and is not counted.
    let resp = rig.call_as(None, Method::GET, CALL_LOG).await;
    assert_eq!(resp.status, 401);
    assert_eq!(resp.rate(), ("heavy", "10", "9", "60"));

    // Past the published number the headers say so, but nothing is refused.
    for n in 2..=12u32 {
        let resp = rig.get(CALL_LOG).await;
        assert_eq!(resp.status, 200);
        let remaining = 10u32.saturating_sub(n).to_string();
        assert_eq!(resp.rate(), ("heavy", "10", remaining.as_str(), "60"));
    }
    for g in Group::ALL {
        assert_eq!(rig.api.rate_limited(g), 0);
        assert_eq!(rig.api.penalties_started(g), 0);
    }
    let groups: Vec<_> = rig.api.requests().iter().map(|r| r.group).collect();
    assert_eq!(&groups[..5], ["light", "medium", "heavy", "auth", "heavy"]);
}

#[tokio::test]
async fn over_the_limit_answers_429_with_retry_after_and_ringcentrals_body() {
    let rig = Rig::new(Some(ApiLimits::uniform(3, LONG, Duration::from_secs(1)))).await;
    for remaining in ["2", "1", "0"] {
        let resp = rig.get(CALL_LOG).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.rate(), ("heavy", "3", remaining, "60"));
    }
    let resp = rig.get(CALL_LOG).await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.rate(), ("heavy", "3", "0", "60"));
    assert_eq!(resp.json(), rate_exceeded_body());

    let last = rig.api.requests().pop().unwrap();
    assert_eq!(last.status, 429);
    assert_eq!(last.group, "heavy");
    assert!(last.authorized);
    assert!(!last.in_penalty, "it started the penalty");
    assert_eq!(last.error_code, Some("CMN-301"));
    assert_eq!(rig.api.rate_limited(Group::Heavy), 1);
    assert_eq!(rig.api.penalties_started(Group::Heavy), 1);
    assert_eq!(rig.api.arrived_during_penalty(Group::Heavy), 0);
    assert!(rig.api.rate_limit_penalty_remaining(Group::Heavy).is_some());

    // The gateway refuses at once: `sleep_ms` does not delay a 429.
    let started = Instant::now();
    let resp = rig.get(&format!("{CALL_LOG}?sleep_ms=30000")).await;
    assert_eq!(resp.status, 429);
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn each_request_during_the_penalty_restarts_it_then_a_fresh_window_opens() {
    let penalty = Duration::from_secs(1);
    let rig = Rig::new(Some(ApiLimits::uniform(2, LONG, penalty))).await;
    for _ in 0..2 {
        assert_eq!(rig.get(CALL_LOG).await.status, 200);
    }
    assert_eq!(rig.get(CALL_LOG).await.status, 429);

    // Let part of the penalty pass, then ask again: refused, and the penalty starts over.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = rig.api.rate_limit_penalty_remaining(Group::Heavy).unwrap();
    assert!(before <= Duration::from_millis(400));
    let resp = rig.get(CALL_LOG).await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert_eq!(resp.json(), rate_exceeded_body());
    let after = rig.api.rate_limit_penalty_remaining(Group::Heavy).unwrap();
    assert!(after > before, "{after:?} should exceed {before:?}");
    let last = rig.api.requests().pop().unwrap();
    assert!(last.in_penalty);
    assert_eq!(rig.api.arrived_during_penalty(Group::Heavy), 1);
    assert_eq!(rig.api.penalties_started(Group::Heavy), 1);
    assert_eq!(rig.api.rate_limited(Group::Heavy), 2);

    // Once the penalty lapses (nobody asked meanwhile), a fresh window, although the 60 s
    // window of the first requests has not passed.
    assert!(eventually(|| rig.api.rate_limit_penalty_remaining(Group::Heavy).is_none()).await);
    let resp = rig.get(CALL_LOG).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.rate(), ("heavy", "2", "1", "60"));
}

#[tokio::test]
async fn the_window_slides() {
    let window = Duration::from_secs(1);
    let rig = Rig::new(Some(ApiLimits::uniform(3, window, LONG))).await;
    for _ in 0..3 {
        assert_eq!(rig.get(ACCOUNT).await.status, 200);
    }
    // Once the window has passed since the last of them, none of them counts any more.
    tokio::time::sleep(window).await;
    let resp = rig.get(ACCOUNT).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.rate(), ("light", "3", "2", "1"));
    assert_eq!(rig.api.rate_limited(Group::Light), 0);
}

#[tokio::test]
async fn groups_are_independent() {
    let rig = Rig::new(Some(ApiLimits {
        heavy: (2, LONG),
        ..ApiLimits::uniform(5, LONG, LONG)
    }))
    .await;
    for _ in 0..2 {
        assert_eq!(rig.get(CALL_LOG).await.status, 200);
    }
    assert_eq!(rig.get(CALL_LOG).await.status, 429);
    // Heavy is blocked while Light and Medium flow.
    for n in 1..=4u32 {
        let resp = rig.get(ACCOUNT).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.rate().2, (5 - n).to_string());
        let resp = rig.call(Method::POST, SMS).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.rate().0, "medium");
        let resp = rig.get("/restapi/v1.0/account/~/call-log").await;
        assert_eq!(resp.status, 429, "the account call log is Heavy too");
        assert_eq!(resp.rate(), ("heavy", "2", "0", "60"));
    }
    assert_eq!(rig.api.rate_limited(Group::Heavy), 5);
    assert_eq!(rig.api.arrived_during_penalty(Group::Heavy), 4);
    assert_eq!(rig.api.rate_limited(Group::Light), 0);
    assert_eq!(rig.api.rate_limited(Group::Medium), 0);
    assert!(rig.api.rate_limit_penalty_remaining(Group::Light).is_none());

    // A 429 asked for with the `status` knob is not the rate limit's.
    let resp = rig.get(&format!("{ACCOUNT}?status=429")).await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after"), None);
    assert_eq!(rig.api.rate_limited(Group::Light), 0);
}

#[tokio::test]
async fn the_group_knob_picks_the_group_of_any_path() {
    let rig = Rig::new(Some(ApiLimits::uniform(2, LONG, LONG))).await;
    let resp = rig.get("/anything?group=heavy").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.rate(), ("heavy", "2", "1", "60"));
    // The same counter as the paths that are Heavy by themselves.
    assert_eq!(rig.get(CALL_LOG).await.status, 200);
    assert_eq!(rig.get("/anything?group=HEAVY").await.status, 429);
    assert_eq!(rig.get(CALL_LOG).await.status, 429);
    // A Heavy path put in another group flows.
    let resp = rig.get(&format!("{CALL_LOG}?group=light")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.rate().0, "light");
    let resp = rig
        .call(Method::DELETE, "/whatever?sleep_ms=1&group=medium")
        .await;
    assert_eq!(resp.rate(), ("medium", "2", "1", "60"));
    // An unknown name leaves the classifier's group.
    let resp = rig.get("/anything?group=huge").await;
    assert_eq!(resp.rate().0, "light");
    let groups: Vec<_> = rig.api.requests().iter().map(|r| r.group).collect();
    assert_eq!(
        groups,
        ["heavy", "heavy", "heavy", "heavy", "light", "medium", "light"]
    );
    assert_eq!(rig.api.rate_limited(Group::Heavy), 2);
}

#[tokio::test]
async fn unauthorized_requests_are_answered_401_and_not_counted() {
    let rig = Rig::new(Some(ApiLimits::uniform(2, LONG, LONG))).await;
    let refusals = [
        None,
        Some("Bearer"),
        Some("Basic abc"),
        Some("Bearer U1BCMDFUMDRKVunknown"),
    ];
    for auth in refusals {
        let resp = rig.call_as(auth, Method::GET, CALL_LOG).await;
        assert_eq!(resp.status, 401, "{auth:?}");
        assert_eq!(resp.rate(), ("heavy", "2", "2", "60"), "{auth:?}");
    }
    assert_eq!(rig.get(CALL_LOG).await.rate().2, "1");
    assert_eq!(rig.get(CALL_LOG).await.rate().2, "0");
    assert_eq!(rig.get(CALL_LOG).await.status, 429);

    // During the penalty a bad token is still a 401, and it does not restart the penalty.
    let before = rig.api.rate_limit_penalty_remaining(Group::Heavy).unwrap();
    let resp = rig.call_as(None, Method::GET, CALL_LOG).await;
    assert_eq!(resp.status, 401);
    assert_eq!(resp.json()["errorCode"], "AGW-401");
    assert_eq!(resp.rate(), ("heavy", "2", "0", "60"));
    let after = rig.api.rate_limit_penalty_remaining(Group::Heavy).unwrap();
    assert!(after <= before, "{after:?} should not exceed {before:?}");
    let last = rig.api.requests().pop().unwrap();
    assert!(!last.authorized);
    assert!(!last.in_penalty);
    assert_eq!(rig.api.arrived_during_penalty(Group::Heavy), 0);
    assert_eq!(rig.api.rate_limited(Group::Heavy), 1);
}
