//! An API upstream double that accepts exactly the access tokens its [`TokenServer`] holds
//! valid, and answers like RingCentral's API gateway otherwise:
//!
//! | request | answer |
//! |---|---|
//! | no `Authorization` header | 401 `AGW-401` "Authorization header is not specified" |
//! | not `Bearer <token>` (scheme in any case), e.g. the bare `Bearer` of an SDK with no token | 401 `AGW-402` "Invalid Authorization header" |
//! | unknown, rotated, revoked or evicted token | 401 `TokenInvalid` / `OAU-129` "Access token corrupted" |
//! | expired token | 401 `TokenInvalid` / `OAU-128` "Access token expired" |
//! | valid token, over its group's rate limit or in its penalty (only with [`ApiLimits`]) | 429 `CMN-301` "Request rate exceeded", `Retry-After` |
//! | valid token | 200, a JSON description of the request (never the token) |
//!
//! A valid token is marked used, which shortens the grace window of the refresh token it
//! replaced. Every path answers the same way; query knobs shape the answer of any path:
//! `sleep_ms=N` delays it by N milliseconds (not a 429: the gateway refuses at once),
//! `status=N` replaces the 200 of an authorized request (the body stays the echo), and
//! `group=light|medium|heavy|auth` puts the request in that rate-limit group instead of the
//! one [`group_of`] gives its method and path.
//!
//! Rate limits (<https://developers.ringcentral.com/guide/basics/rate-limits>; the group of each
//! endpoint is its "API Group" in <https://developers.ringcentral.com/api-reference>): every
//! answer carries `X-Rate-Limit-Group` (`light`, `medium`, `heavy`, `auth`),
//! `X-Rate-Limit-Limit`, `X-Rate-Limit-Remaining` and `X-Rate-Limit-Window` (seconds), as the
//! real API's do. [`ApiServer::start_with_limits`] enforces [`ApiLimits`] (per group, a sliding
//! window, a penalty that each request during it restarts; see [`limits`] for the
//! details); [`ApiServer::start`] enforces none but still counts and reports
//! [`ApiLimits::ringcentral`] in the headers (so `X-Rate-Limit-Remaining` can say 0 while the
//! request is answered).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::token_server::{
    json_response, rate_exceeded, token_fingerprint, AccessCheck, Handler, HttpResponse, Listener,
    Shared, TokenServer,
};

pub mod limits;

pub use limits::{group_of, ApiLimits, Group};
use limits::{Limiter, Verdict};

/// How much of a request body the echo returns.
const ECHO_BODY_LIMIT: usize = 64 * 1024;
/// The longest `sleep_ms` honoured.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// One request the API double answered.
#[derive(Debug, Clone)]
pub struct ApiRequestRecord {
    /// The method.
    pub method: String,
    /// The path (without the query).
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The status answered.
    pub status: u16,
    /// Whether the token was accepted.
    pub authorized: bool,
    /// [`token_fingerprint`] of the bearer token presented, if any.
    pub token_fingerprint: Option<String>,
    /// The session of the accepted token.
    pub session_id: Option<u64>,
    /// The `errorCode` of a refusal: nested in a 401 (`AGW-401`, `AGW-402`, `OAU-129`,
    /// `OAU-128`), or `CMN-301` for a 429 of the rate limit.
    pub error_code: Option<&'static str>,
    /// Its rate-limit group (`X-Rate-Limit-Group`: `light`, `medium`, `heavy`, `auth`), from
    /// [`group_of`] or the `group=` knob, whether or not it was counted.
    pub group: &'static str,
    /// It arrived while its group was already in a penalty window: answered 429 without being
    /// counted, and the penalty restarted.
    pub in_penalty: bool,
    /// When the request arrived.
    pub at: Instant,
}

struct ApiState {
    tokens: Arc<Shared>,
    limiter: Limiter,
    records: Mutex<Vec<ApiRequestRecord>>,
    count: AtomicU64,
    answered: watch::Sender<usize>,
}

/// A running API double. Dropping it (or [`shutdown`](Self::shutdown)) stops it.
pub struct ApiServer {
    state: Arc<ApiState>,
    listener: Listener,
}

impl fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.listener.addr())
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Starts an API double on `127.0.0.1`, on a port the system chooses, accepting the tokens
    /// of `token_server`. It enforces no rate limit, but sends the `X-Rate-Limit-*` headers of
    /// [`ApiLimits::ringcentral`].
    pub async fn start(token_server: &TokenServer) -> io::Result<ApiServer> {
        Self::start_with_limits(token_server, None).await
    }

    /// Starts an API double on `127.0.0.1`, on a port the system chooses, accepting the tokens
    /// of `token_server` and enforcing `limits` (`None`: as [`start`](Self::start)).
    pub async fn start_with_limits(
        token_server: &TokenServer,
        limits: Option<ApiLimits>,
    ) -> io::Result<ApiServer> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_on_with_limits(addr, token_server, limits).await
    }

    /// Starts an API double on `addr`, accepting the tokens of `token_server`, without limits.
    pub async fn start_on(addr: SocketAddr, token_server: &TokenServer) -> io::Result<ApiServer> {
        Self::start_on_with_limits(addr, token_server, None).await
    }

    /// Starts an API double on `addr`, accepting the tokens of `token_server` and enforcing
    /// `limits`.
    pub async fn start_on_with_limits(
        addr: SocketAddr,
        token_server: &TokenServer,
        limits: Option<ApiLimits>,
    ) -> io::Result<ApiServer> {
        let state = Arc::new(ApiState {
            tokens: token_server.shared(),
            limiter: Limiter::new(limits),
            records: Mutex::new(Vec::new()),
            count: AtomicU64::new(0),
            answered: watch::Sender::new(0),
        });
        let handler_state = state.clone();
        let handler: Handler = Arc::new(move |req| {
            let state = handler_state.clone();
            Box::pin(async move { Ok(handle(&state, req).await) })
        });
        let listener = Listener::bind(addr, handler).await?;
        Ok(ApiServer { state, listener })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.listener.addr()
    }

    /// `http://ADDR`: the upstream base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Stops the server and closes its connections (also done on drop).
    pub fn shutdown(&self) {
        self.listener.shutdown();
    }

    /// Closes the listener and every open connection (an outage). Returns once the port is
    /// closed.
    pub async fn stop_listening(&self) {
        self.listener.stop().await;
    }

    /// Listens again on the same address after [`stop_listening`](Self::stop_listening).
    pub async fn resume_listening(&self) -> io::Result<()> {
        self.listener.resume().await
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<ApiRequestRecord> {
        self.state
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many requests were answered so far.
    pub fn request_count(&self) -> usize {
        self.state
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Answered requests by status.
    pub fn count_by_status(&self) -> BTreeMap<u16, usize> {
        let mut counts = BTreeMap::new();
        for r in self
            .state
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            *counts.entry(r.status).or_insert(0) += 1;
        }
        counts
    }

    /// A watch of the number of requests answered.
    pub fn answered(&self) -> watch::Receiver<usize> {
        self.state.answered.subscribe()
    }

    /// Waits until at least `n` requests have been answered; `false` on timeout.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.answered();
        tokio::time::timeout(timeout, rx.wait_for(|&c| c >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The rate limits enforced, if any.
    pub fn limits(&self) -> Option<ApiLimits> {
        self.state.limiter.limits()
    }

    fn count_records(&self, pred: impl Fn(&ApiRequestRecord) -> bool) -> usize {
        self.state
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| pred(r))
            .count()
    }

    /// How many requests of `group` were answered 429 by the rate limit (not by the `status`
    /// knob).
    pub fn rate_limited(&self, group: Group) -> usize {
        self.count_records(|r| r.group == group.as_str() && r.error_code == Some(RATE_EXCEEDED))
    }

    /// How many requests of `group` arrived while it was already in a penalty window (each
    /// restarted it).
    pub fn arrived_during_penalty(&self, group: Group) -> usize {
        self.count_records(|r| r.group == group.as_str() && r.in_penalty)
    }

    /// How many times `group` went over its limit and a penalty started (not counting the
    /// restarts).
    pub fn penalties_started(&self, group: Group) -> usize {
        self.count_records(|r| {
            r.group == group.as_str() && r.error_code == Some(RATE_EXCEEDED) && !r.in_penalty
        })
    }

    /// Time left in the penalty of `group`, if it is in one.
    pub fn rate_limit_penalty_remaining(&self, group: Group) -> Option<Duration> {
        self.state.limiter.penalty_remaining(group)
    }
}

/// The `errorCode` of RingCentral's 429.
const RATE_EXCEEDED: &str = "CMN-301";

/// RingCentral's API error body: a top-level code and message, and the same in `errors`.
fn api_error(top_code: &str, code: &str, message: &str) -> HttpResponse {
    json_response(
        StatusCode::UNAUTHORIZED,
        &json!({
            "errorCode": top_code,
            "message": message,
            "errors": [{"errorCode": code, "message": message}],
        }),
    )
}

/// The outcome of checking the `Authorization` header.
enum Auth {
    Ok {
        session_id: u64,
        fingerprint: String,
    },
    Refused {
        code: &'static str,
        response: HttpResponse,
        fingerprint: Option<String>,
    },
}

fn authorize(tokens: &Shared, value: Option<&HeaderValue>) -> Auth {
    let Some(value) = value else {
        return Auth::Refused {
            code: "AGW-401",
            response: api_error(
                "AGW-401",
                "AGW-401",
                "Authorization header is not specified",
            ),
            fingerprint: None,
        };
    };
    let malformed = || Auth::Refused {
        code: "AGW-402",
        response: api_error("AGW-402", "AGW-402", "Invalid Authorization header"),
        fingerprint: None,
    };
    let Ok(value) = value.to_str() else {
        return malformed();
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return malformed();
    };
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return malformed();
    }
    let fingerprint = token_fingerprint(token);
    match tokens.use_access_token(token) {
        AccessCheck::Valid { session_id } => Auth::Ok {
            session_id,
            fingerprint,
        },
        AccessCheck::Expired => Auth::Refused {
            code: "OAU-128",
            response: api_error("TokenInvalid", "OAU-128", "Access token expired"),
            fingerprint: Some(fingerprint),
        },
        AccessCheck::Invalid => Auth::Refused {
            code: "OAU-129",
            response: api_error("TokenInvalid", "OAU-129", "Access token corrupted"),
            fingerprint: Some(fingerprint),
        },
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn handle(state: &ApiState, req: Request<Incoming>) -> HttpResponse {
    let at = Instant::now();
    let number = state.count.fetch_add(1, Ordering::Relaxed) + 1;
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let group = query_param(query.as_deref(), "group")
        .and_then(|name| Group::from_name(&name))
        .unwrap_or_else(|| group_of(&parts.method, &path));
    let auth = authorize(&state.tokens, parts.headers.get(header::AUTHORIZATION));
    // The gateway counts a request when it arrives, and only once its token is accepted.
    let (verdict, rate_headers) = match auth {
        Auth::Ok { .. } => {
            let (verdict, headers) = state.limiter.admit(group);
            (Some(verdict), headers)
        }
        Auth::Refused { .. } => (None, state.limiter.peek(group)),
    };

    // Read the body (echoing at most ECHO_BODY_LIMIT bytes of it), whatever the answer.
    let mut body = body;
    let mut body_len: u64 = 0;
    let mut kept: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            body_len += data.len() as u64;
            let room = ECHO_BODY_LIMIT.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }

    let limited = matches!(verdict, Some(Verdict::Exceeded | Verdict::InPenalty));
    if !limited {
        if let Some(ms) =
            query_param(query.as_deref(), "sleep_ms").and_then(|v| v.parse::<u64>().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms).min(MAX_SLEEP)).await;
        }
    }

    let record = |status: StatusCode,
                  authorized: bool,
                  fingerprint: Option<String>,
                  session_id: Option<u64>,
                  error_code: Option<&'static str>| ApiRequestRecord {
        method: parts.method.to_string(),
        path: path.clone(),
        query: query.clone(),
        status: status.as_u16(),
        authorized,
        token_fingerprint: fingerprint,
        session_id,
        error_code,
        group: group.as_str(),
        in_penalty: verdict == Some(Verdict::InPenalty),
        at,
    };
    let (mut response, record) = match auth {
        Auth::Refused {
            code,
            response,
            fingerprint,
        } => {
            let record = record(response.status(), false, fingerprint, None, Some(code));
            (response, record)
        }
        Auth::Ok {
            session_id,
            fingerprint,
        } if limited => {
            let response = rate_exceeded(Some(state.limiter.retry_after()));
            let record = record(
                response.status(),
                true,
                Some(fingerprint),
                Some(session_id),
                Some(RATE_EXCEEDED),
            );
            (response, record)
        }
        Auth::Ok {
            session_id,
            fingerprint,
        } => {
            let mut headers = Map::new();
            for (name, value) in &parts.headers {
                if name == header::AUTHORIZATION {
                    continue;
                }
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                match headers.get_mut(name.as_str()) {
                    Some(Value::String(prev)) => {
                        prev.push_str(", ");
                        prev.push_str(&value);
                    }
                    _ => {
                        headers.insert(name.as_str().to_owned(), Value::String(value));
                    }
                }
            }
            // What arrived, shown without the secret: the scheme and the token's fingerprint.
            if let Some(v) = parts.headers.get(header::AUTHORIZATION) {
                let v = String::from_utf8_lossy(v.as_bytes());
                let scheme = v.split_whitespace().next().unwrap_or("");
                headers.insert(
                    "authorization".into(),
                    Value::String(format!("{scheme} <redacted; fingerprint {fingerprint}>")),
                );
            }
            let echo = json!({
                "method": parts.method.as_str(),
                "path": path,
                "query": query,
                "version": format!("{:?}", parts.version),
                "headers": headers,
                "body_len": body_len,
                "body": String::from_utf8_lossy(&kept),
                "token_fingerprint": fingerprint,
                "session_id": session_id.to_string(),
                "request_count": number,
            });
            let status = query_param(query.as_deref(), "status")
                .and_then(|v| v.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
            let response = json_response(status, &echo);
            let record = record(status, true, Some(fingerprint), Some(session_id), None);
            (response, record)
        }
    };
    rate_headers.apply(response.headers_mut());
    let count = {
        let mut records = state.records.lock().unwrap_or_else(|e| e.into_inner());
        records.push(record);
        records.len()
    };
    state.answered.send_replace(count);
    response
}
