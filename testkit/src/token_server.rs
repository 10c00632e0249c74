//! A RingCentral-faithful OAuth2 token server double.
//!
//! Size: one file of about 1,800 lines, because every behaviour below reads and changes the
//! same state (sessions, tokens, grace windows, limits, faults) under one lock.
//!
//! It reproduces RingCentral's token endpoint as its public API reference and its SDKs
//! (ringcentral-js, RingCentral.Net) describe it:
//!
//! - `POST /restapi/oauth/token`, form-urlencoded, client authentication by
//!   `Authorization: Basic` or `client_id` (+ `client_secret`) in the body; the grants
//!   `urn:ietf:params:oauth:grant-type:jwt-bearer`, `refresh_token`, `password` and (when allowed)
//!   `client_credentials`; RingCentral's success body (`token_type` is `"bearer"`, `owner_id` a
//!   string) and its error bodies (RFC 6749 plus an `errors` array with `OAU-*` codes).
//! - Sessions: each login (JWT, password, client credentials) opens one; a refresh keeps it.
//!   Over the session cap the oldest session is ended and its tokens stop working.
//! - Rotation: a refresh returns a new pair and the old access token stops working at once.
//!   The old refresh token replayed within the grace window returns the same new pair; after
//!   it, `400 invalid_grant` `OAU-213`, and the use is recorded
//!   ([`TokenServer::stale_refresh_token_uses`]).
//! - The "Auth" rate-limit group (token and revoke share it), per client id: 429 with
//!   `Retry-After` and the `X-Rate-Limit-*` headers; each request during the penalty restarts it.
//! - `POST /restapi/oauth/revoke` (`token=`): ends the whole session.
//!
//! For tests it adds fault injection ([`TokenServer::set_fault`]), a record of every token
//! request with its secrets redacted ([`TokenServer::requests`]), watches to await requests
//! without sleeping, and a way to take the listener down and bring it back on the same address.
//!
//! Where RingCentral's documentation leaves something unconfirmed, or does not mention it, the
//! choice made here is documented next to the code that makes it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rand::Rng;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// Path of the token endpoint.
pub const TOKEN_PATH: &str = "/restapi/oauth/token";
/// Path of the revocation endpoint.
pub const REVOKE_PATH: &str = "/restapi/oauth/revoke";
/// `grant_type` of RingCentral's JWT flow (RFC 7523).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Every access and refresh token starts with this, as RingCentral's do, so that a test can
/// search logs and files for leaked tokens.
pub const TOKEN_PREFIX: &str = "U1BCMDFUMDRKV";
/// The JWT assertion that [`TokenServerConfig::default`] accepts (a well-formed, unsigned
/// stand-in for the JWT credential of RingCentral's developer console).
pub const DEV_ASSERTION: &str =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImRldiJ9.eyJzdWIiOiJ0b2tlbi1zaWRlY2FyLWRldiJ9.ZGV2LXNpZ25hdHVyZQ";
/// Size of the body that [`Fault::HugeBody`] sends.
pub const HUGE_BODY_LEN: usize = 10 * 1024 * 1024;
/// The value that replaces secrets in [`TokenRequestRecord::params`].
pub const REDACTED: &str = "<redacted>";

/// Largest request body the token endpoint reads.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// RingCentral's bounds of `access_token_ttl` and `refresh_token_ttl` (seconds).
const RC_ACCESS_TTL_RANGE: (u64, u64) = (600, 3600);
const RC_REFRESH_TTL_MAX: u64 = 2_592_000;
/// Form fields whose values never reach a record.
const SECRET_PARAMS: &[&str] = &[
    "assertion",
    "refresh_token",
    "password",
    "client_secret",
    "code",
    "code_verifier",
    "token",
];

/// `X-Rate-Limit-Group` of the token and revoke endpoints.
const AUTH_GROUP: &str = "auth";

/// RingCentral's "Auth" rate-limit group: `max` requests per `window`, then `penalty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per window (RingCentral: 5).
    pub max: u32,
    /// The window (RingCentral: 60 s).
    pub window: Duration,
    /// How long requests are refused once over the limit; every request during the penalty
    /// restarts it (RingCentral: 60 s).
    pub penalty: Duration,
}

impl Default for RateLimit {
    /// RingCentral's Auth group: 5 requests per 60 s, 60 s penalty.
    fn default() -> Self {
        RateLimit {
            max: 5,
            window: Duration::from_secs(60),
            penalty: Duration::from_secs(60),
        }
    }
}

/// How the token server behaves.
///
/// [`Default`] is RingCentral's behaviour tuned for tests: no rate limit, and the TTL form
/// fields are honoured without clamping so that a client can ask for 2-second tokens.
/// [`TokenServerConfig::ringcentral`] is RingCentral's behaviour unchanged.
#[derive(Debug, Clone)]
pub struct TokenServerConfig {
    /// Lifetime of access tokens when the request does not ask for another (default 3600 s).
    pub access_ttl: Duration,
    /// Lifetime of refresh tokens when the request does not ask for another (default 7 days).
    pub refresh_ttl: Duration,
    /// The accepted client id (default `test-client`).
    pub client_id: String,
    /// The accepted client secret (default `test-secret`). Empty: a public client (PKCE), that
    /// authenticates with `client_id` in the body and no secret.
    pub client_secret: String,
    /// The accepted JWT assertion; `None` refuses the JWT grant with `unauthorized_client`
    /// (default [`DEV_ASSERTION`]).
    pub jwt_assertion: Option<String>,
    /// The accepted `(username, password)`; `None` refuses the password grant with
    /// `unauthorized_client` (default `None`).
    pub password_user: Option<(String, String)>,
    /// Whether the `client_credentials` grant is allowed (RingCentral: partner apps only;
    /// default `false`). It issues no refresh token.
    pub allow_client_credentials: bool,
    /// Most sessions open at once; a login over it ends the oldest (RingCentral: 5, the default).
    pub session_cap: Option<usize>,
    /// The Auth rate-limit group; `None` turns it off (default `None`; RingCentral: 5/60 s/60 s).
    pub rate_limit: Option<RateLimit>,
    /// How long an exchanged refresh token still works once the new access token has been used
    /// against the API (RingCentral: about 10 s, the default).
    pub grace_after_use: Duration,
    /// How long an exchanged refresh token still works while the new access token has not been
    /// used (RingCentral: up to 60 min, the default).
    pub grace_unused: Duration,
    /// Whether the `access_token_ttl` and `refresh_token_ttl` form fields are honoured (default
    /// `true`, as RingCentral).
    pub honor_ttl_param: bool,
    /// Whether those fields are clamped as RingCentral does (`access_token_ttl` to 600..3600 s,
    /// `refresh_token_ttl` to at most 30 days). Default `false`, so that tests and the demo can
    /// ask for short lifetimes.
    pub clamp_ttl: bool,
    /// The `scope` of every token (default `ReadAccounts`).
    pub scope: String,
    /// The `owner_id` of every token (default `1000000001`).
    pub owner_id: String,
}

impl Default for TokenServerConfig {
    fn default() -> Self {
        TokenServerConfig {
            access_ttl: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            client_id: "test-client".to_owned(),
            client_secret: "test-secret".to_owned(),
            jwt_assertion: Some(DEV_ASSERTION.to_owned()),
            password_user: None,
            allow_client_credentials: false,
            session_cap: Some(5),
            rate_limit: None,
            grace_after_use: Duration::from_secs(10),
            grace_unused: Duration::from_secs(3600),
            honor_ttl_param: true,
            clamp_ttl: false,
            scope: "ReadAccounts".to_owned(),
            owner_id: "1000000001".to_owned(),
        }
    }
}

impl TokenServerConfig {
    /// RingCentral's behaviour unchanged: the Auth rate limit on and the TTL fields clamped.
    pub fn ringcentral() -> Self {
        TokenServerConfig {
            rate_limit: Some(RateLimit::default()),
            clamp_ttl: true,
            ..TokenServerConfig::default()
        }
    }
}

/// A failure the token endpoint injects instead of (or on top of) its normal answer. Faults
/// apply to token requests only, never to revocation or the API double, and they bypass the
/// rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status with an RFC 6749-style JSON error body (`server_error`,
    /// `temporarily_unavailable` for 503, `invalid_request`/`invalid_client` for 4xx).
    Status(u16),
    /// 429 with RingCentral's `CMN-301` body, and `Retry-After` when given (seconds).
    TooManyRequests {
        /// The `Retry-After` value, if any.
        retry_after: Option<u64>,
    },
    /// 200, `content-type: application/json`, a body that is not JSON.
    Garbage,
    /// 502 with an HTML page, like a load balancer in front of a dead backend.
    Html,
    /// 200 with an empty body.
    Empty,
    /// 200 with a JSON body that has no `access_token`.
    MissingAccessToken,
    /// A normal answer (a real token is issued) whose body lacks `expires_in`.
    MissingExpiresIn,
    /// 200 with a body of [`HUGE_BODY_LEN`] bytes (JSON without `access_token`).
    HugeBody,
    /// The normal answer, after this delay.
    Slow(Duration),
    /// Close the connection without answering.
    DropConnection,
    /// 400 `invalid_grant` `OAU-211` "Token revoked" (nothing is actually revoked).
    InvalidGrant,
}

/// How a token request authenticated its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthKind {
    /// `Authorization: Basic`.
    Basic,
    /// `client_id` (and `client_secret`) in the form.
    Body,
    /// No client authentication at all.
    None,
}

/// One request to the token endpoint, as recorded when it was answered.
#[derive(Debug, Clone)]
pub struct TokenRequestRecord {
    /// The `grant_type` field (empty when absent).
    pub grant_type: String,
    /// When the request arrived.
    pub at: Instant,
    /// The status answered; 0 when the connection was dropped without an answer.
    pub status: u16,
    /// How the client authenticated.
    pub client_auth: ClientAuthKind,
    /// The form fields, with the values of secrets (`assertion`, `refresh_token`, `password`,
    /// `client_secret`, `code`, `code_verifier`) replaced by [`REDACTED`]. A repeated field
    /// keeps its first value.
    pub params: BTreeMap<String, String>,
    /// The fault that shaped the answer, if any.
    pub fault: Option<Fault>,
}

/// A session ended because a login went over [`TokenServerConfig::session_cap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEviction {
    /// The session that was ended (the oldest open one).
    pub session_id: u64,
    /// When.
    pub at: Instant,
}

/// An exchanged refresh token presented after its grace window (or after the pair it was
/// exchanged for had itself been refreshed, which closes the window too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleRefreshUse {
    /// [`token_fingerprint`] of the refresh token.
    pub token_fingerprint: String,
    /// Its session.
    pub session_id: u64,
    /// When it was presented again.
    pub at: Instant,
    /// How long before that it had been exchanged.
    pub exchanged_ago: Duration,
}

/// A short, stable, non-reversible name of a token for logs and assertions: the first 8 hex
/// digits of its 64-bit FNV-1a hash. Never a secret, and never enough to recover the token.
pub fn token_fingerprint(token: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in token.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:016x}", h)[..8].to_owned()
}

// ---------------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------------

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    Evicted,
    Revoked,
}

#[derive(Debug)]
struct Session {
    created: Instant,
    ended: Option<SessionEnd>,
    endpoint_id: String,
    current_access: String,
    current_refresh: Option<String>,
    /// When the session lapses by itself: the expiry of its newest refresh token (or access
    /// token when it has none).
    expires_at: Instant,
}

impl Session {
    fn is_open(&self, now: Instant) -> bool {
        self.ended.is_none() && now < self.expires_at
    }
}

#[derive(Debug)]
struct AccessEntry {
    session: u64,
    expires_at: Instant,
    /// Replaced by a refresh: stops working at once.
    rotated: bool,
    first_used: Option<Instant>,
}

#[derive(Debug)]
struct RefreshEntry {
    session: u64,
    expires_at: Instant,
    exchanged: Option<Exchange>,
}

#[derive(Debug, Clone)]
struct Exchange {
    at: Instant,
    new_access: String,
    new_refresh: String,
}

#[derive(Debug, Default)]
struct RateState {
    window_start: Option<Instant>,
    count: u32,
    penalty_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct Inner {
    next_session: u64,
    sessions: BTreeMap<u64, Session>,
    access: HashMap<String, AccessEntry>,
    refresh: HashMap<String, RefreshEntry>,
    records: Vec<TokenRequestRecord>,
    evictions: Vec<SessionEviction>,
    stale: Vec<StaleRefreshUse>,
    rate: HashMap<String, RateState>,
    fault: Option<(Fault, Option<u32>)>,
    logins: usize,
    refreshes: usize,
    grace_replays: usize,
    revocations: usize,
}

/// What the API double learns from the token server about an access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessCheck {
    /// Valid; the token now counts as used.
    Valid { session_id: u64 },
    /// Known, current, but past its lifetime.
    Expired,
    /// Unknown, rotated, or its session ended.
    Invalid,
}

/// State shared by the token server and the API doubles started from it.
pub(crate) struct Shared {
    cfg: TokenServerConfig,
    inner: Mutex<Inner>,
    arrivals: watch::Sender<u64>,
    answered: watch::Sender<usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks an access token presented to the API and marks it used.
    pub(crate) fn use_access_token(&self, token: &str) -> AccessCheck {
        let now = Instant::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(entry) = inner.access.get_mut(token) else {
            return AccessCheck::Invalid;
        };
        let open = inner
            .sessions
            .get(&entry.session)
            .is_some_and(|s| s.ended.is_none());
        if entry.rotated || !open {
            return AccessCheck::Invalid;
        }
        if now >= entry.expires_at {
            return AccessCheck::Expired;
        }
        entry.first_used.get_or_insert(now);
        AccessCheck::Valid {
            session_id: entry.session,
        }
    }
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn new_endpoint_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whole seconds left until `deadline` (what `expires_in` says).
fn secs_left(deadline: Instant, now: Instant) -> u64 {
    deadline.saturating_duration_since(now).as_secs()
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

pub(crate) type HttpResponse = Response<Full<Bytes>>;
/// An error answer carried through `Result` (boxed: a response is large).
type Reject = Box<HttpResponse>;

pub(crate) fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn raw_response(status: StatusCode, content_type: &'static str, body: Bytes) -> HttpResponse {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// An RFC 6749 error body, with RingCentral's `errors` array when the error code is known.
fn oauth_error(status: StatusCode, error: &str, code: Option<&str>, message: &str) -> HttpResponse {
    let body = match code {
        Some(code) => json!({
            "error": error,
            "errors": [{"errorCode": code, "message": message}],
            "error_description": message,
        }),
        None => json!({"error": error, "error_description": message}),
    };
    json_response(status, &body)
}

fn invalid_request(message: &str) -> HttpResponse {
    // RingCentral's code for a missing or invalid parameter is unconfirmed: no `errors` array.
    oauth_error(StatusCode::BAD_REQUEST, "invalid_request", None, message)
}

fn invalid_client(client_id: &str) -> HttpResponse {
    let message = format!("Invalid client: {client_id}");
    json_response(
        StatusCode::UNAUTHORIZED,
        &json!({
            "error": "invalid_client",
            "errors": [{
                "errorCode": "OAU-153",
                "message": message,
                "parameterName": "client_id",
                "parameterValue": client_id,
            }],
            "error_description": message,
        }),
    )
}

fn unauthorized_client() -> HttpResponse {
    oauth_error(
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        None,
        "Unauthorized for this grant type",
    )
}

fn token_not_found() -> HttpResponse {
    oauth_error(
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        Some("OAU-213"),
        "Token not found",
    )
}

fn token_revoked() -> HttpResponse {
    oauth_error(
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        Some("OAU-211"),
        "Token revoked",
    )
}

/// RingCentral's answer when a rate-limit group is exhausted (the token endpoint's Auth group
/// and the API double's groups alike).
pub(crate) fn rate_exceeded(retry_after: Option<u64>) -> HttpResponse {
    let mut resp = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({
            "errorCode": "CMN-301",
            "message": "Request rate exceeded",
            "errors": [{"errorCode": "CMN-301", "message": "Request rate exceeded"}],
        }),
    );
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn not_found() -> HttpResponse {
    // Unconfirmed shape; RingCentral's API error style.
    json_response(
        StatusCode::NOT_FOUND,
        &json!({
            "errorCode": "CMN-102",
            "message": "Resource not found",
            "errors": [{"errorCode": "CMN-102", "message": "Resource not found"}],
        }),
    )
}

fn method_not_allowed() -> HttpResponse {
    let mut resp = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"errorCode": "CMN-405", "message": "Method not allowed"}),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    resp
}

fn fault_status_response(code: u16) -> HttpResponse {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = status.canonical_reason().unwrap_or("Error");
    let error = match status.as_u16() {
        401 => "invalid_client",
        503 => "temporarily_unavailable",
        400..=499 => "invalid_request",
        _ => "server_error",
    };
    json_response(
        status,
        &json!({"error": error, "error_description": reason}),
    )
}

const HTML_502: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

// ---------------------------------------------------------------------------------------------
// Listener (also used by the API double)
// ---------------------------------------------------------------------------------------------

/// A handler's way of saying "close the connection without answering".
#[derive(Debug)]
pub(crate) struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for DropConnection {}

pub(crate) type HandlerFuture =
    Pin<Box<dyn Future<Output = Result<HttpResponse, DropConnection>> + Send>>;
pub(crate) type Handler = Arc<dyn Fn(Request<Incoming>) -> HandlerFuture + Send + Sync>;

struct Generation {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// An accept loop on a fixed address that can be stopped and started again, and that ends
/// (with every connection) when dropped.
pub(crate) struct Listener {
    addr: SocketAddr,
    root: CancellationToken,
    _guard: DropGuard,
    current: Mutex<Option<Generation>>,
    handler: Handler,
}

impl Listener {
    pub(crate) async fn bind(addr: SocketAddr, handler: Handler) -> io::Result<Listener> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let root = CancellationToken::new();
        let generation = spawn_accept_loop(listener, root.child_token(), handler.clone());
        Ok(Listener {
            addr,
            _guard: root.clone().drop_guard(),
            root,
            current: Mutex::new(Some(generation)),
            handler,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn shutdown(&self) {
        self.root.cancel();
    }

    pub(crate) async fn stop(&self) {
        let generation = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(g) = generation {
            g.cancel.cancel();
            let _ = g.task.await;
        }
    }

    pub(crate) async fn resume(&self) -> io::Result<()> {
        if self.root.is_cancelled() {
            return Err(io::Error::other("the server has been shut down"));
        }
        if self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr).await?;
        let generation = spawn_accept_loop(listener, self.root.child_token(), self.handler.clone());
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.is_some() {
            // A concurrent resume won; keep its listener.
            generation.cancel.cancel();
        } else {
            *current = Some(generation);
        }
        Ok(())
    }
}

fn spawn_accept_loop(
    listener: TcpListener,
    cancel: CancellationToken,
    handler: Handler,
) -> Generation {
    let task_cancel = cancel.clone();
    let task = tokio::spawn(async move {
        let cancel = task_cancel;
        let tracker = TaskTracker::new();
        loop {
            let stream = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            let cancel = cancel.clone();
            tracker.spawn(async move {
                // A handler's `DropConnection` closes the whole connection: HTTP/1 does so by
                // itself, HTTP/2 would only reset the stream.
                let kill = CancellationToken::new();
                let killer = kill.clone();
                let service = hyper::service::service_fn(move |req| {
                    let answer = handler(req);
                    let killer = killer.clone();
                    async move {
                        let answer = answer.await;
                        if answer.is_err() {
                            killer.cancel();
                        }
                        answer
                    }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http1().timer(TokioTimer::new());
                builder.http2().timer(TokioTimer::new());
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    _ = kill.cancelled() => {}
                    // Abrupt on purpose: a stopped double is a dead server.
                    _ = cancel.cancelled() => {}
                }
            });
        }
        drop(listener);
        tracker.close();
        tracker.wait().await;
    });
    Generation { cancel, task }
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/// A running token server double. Dropping it (or [`shutdown`](Self::shutdown)) stops it and
/// closes its connections; API doubles started from it keep working on its state.
pub struct TokenServer {
    shared: Arc<Shared>,
    listener: Listener,
}

impl fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenServer")
            .field("addr", &self.listener.addr())
            .finish_non_exhaustive()
    }
}

impl TokenServer {
    /// Starts a token server on `127.0.0.1`, on a port the system chooses.
    pub async fn start(cfg: TokenServerConfig) -> io::Result<TokenServer> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), cfg).await
    }

    /// Starts a token server on `addr`.
    pub async fn start_on(addr: SocketAddr, cfg: TokenServerConfig) -> io::Result<TokenServer> {
        let shared = Arc::new(Shared {
            cfg,
            inner: Mutex::new(Inner {
                next_session: 1,
                ..Inner::default()
            }),
            arrivals: watch::Sender::new(0),
            answered: watch::Sender::new(0),
        });
        let handler_state = shared.clone();
        let handler: Handler = Arc::new(move |req| {
            let shared = handler_state.clone();
            Box::pin(async move { handle(shared, req).await })
        });
        let listener = Listener::bind(addr, handler).await?;
        Ok(TokenServer { shared, listener })
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &TokenServerConfig {
        &self.shared.cfg
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.listener.addr()
    }

    /// `http://ADDR`, the "server" of an SDK.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `http://ADDR/restapi/oauth/token`.
    pub fn token_url(&self) -> String {
        format!("http://{}{TOKEN_PATH}", self.addr())
    }

    /// `http://ADDR/restapi/oauth/revoke`.
    pub fn revoke_url(&self) -> String {
        format!("http://{}{REVOKE_PATH}", self.addr())
    }

    /// Stops the server and closes its connections (also done on drop).
    pub fn shutdown(&self) {
        self.listener.shutdown();
    }

    /// Closes the listener and every open connection, keeping all state (an outage): clients
    /// then get "connection refused". Returns once the port is closed.
    pub async fn stop_listening(&self) {
        self.listener.stop().await;
    }

    /// Listens again on the same address after [`stop_listening`](Self::stop_listening).
    pub async fn resume_listening(&self) -> io::Result<()> {
        self.listener.resume().await
    }

    /// Injects `fault` into the next `times` token requests (`None`: until cleared;
    /// `Some(0)`: clears). Replaces any fault already set.
    pub fn set_fault(&self, fault: Fault, times: Option<u32>) {
        let mut inner = self.shared.lock();
        inner.fault = match times {
            Some(0) => None,
            _ => Some((fault, times)),
        };
    }

    /// Removes the fault.
    pub fn clear_fault(&self) {
        self.shared.lock().fault = None;
    }

    /// Every token request answered so far (or dropped), oldest first.
    pub fn requests(&self) -> Vec<TokenRequestRecord> {
        self.shared.lock().records.clone()
    }

    /// How many token requests were answered (or dropped) so far.
    pub fn request_count(&self) -> usize {
        self.shared.lock().records.len()
    }

    /// A watch of the number of token requests that have *arrived* (incremented before the
    /// request is handled, even when a fault delays or drops it).
    pub fn arrivals(&self) -> watch::Receiver<u64> {
        self.shared.arrivals.subscribe()
    }

    /// A watch of the number of token requests answered (what
    /// [`request_count`](Self::request_count) returns).
    pub fn answered(&self) -> watch::Receiver<usize> {
        self.shared.answered.subscribe()
    }

    /// Waits until at least `n` token requests have arrived; `false` on timeout.
    pub async fn wait_for_arrivals(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.arrivals();
        tokio::time::timeout(timeout, rx.wait_for(|&c| c >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until at least `n` token requests have been answered; `false` on timeout.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.answered();
        tokio::time::timeout(timeout, rx.wait_for(|&c| c >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Logins that opened a session (JWT, password, client credentials).
    pub fn successful_logins(&self) -> usize {
        self.shared.lock().logins
    }

    /// Refresh-token exchanges that issued a new pair (grace-window replays not counted).
    pub fn successful_refreshes(&self) -> usize {
        self.shared.lock().refreshes
    }

    /// Refresh tokens replayed within their grace window (answered with the same new pair).
    pub fn grace_replays(&self) -> usize {
        self.shared.lock().grace_replays
    }

    /// Sessions open now (not ended, not lapsed).
    pub fn active_sessions(&self) -> usize {
        let now = Instant::now();
        self.shared
            .lock()
            .sessions
            .values()
            .filter(|s| s.is_open(now))
            .count()
    }

    /// Sessions ended by the session cap, oldest first.
    pub fn sessions_evicted(&self) -> Vec<SessionEviction> {
        self.shared.lock().evictions.clone()
    }

    /// Exchanged refresh tokens presented after their grace window. A well-behaved client keeps
    /// this empty: it never sends a refresh token it has already exchanged.
    pub fn stale_refresh_token_uses(&self) -> Vec<StaleRefreshUse> {
        self.shared.lock().stale.clone()
    }

    /// Successful calls of the revocation endpoint.
    pub fn revocations(&self) -> usize {
        self.shared.lock().revocations
    }

    /// Whether the API would accept this access token now (does not mark it used).
    pub fn is_access_token_valid(&self, token: &str) -> bool {
        let now = Instant::now();
        let inner = self.shared.lock();
        inner.access.get(token).is_some_and(|a| {
            !a.rotated
                && now < a.expires_at
                && inner
                    .sessions
                    .get(&a.session)
                    .is_some_and(|s| s.ended.is_none())
        })
    }

    /// Whether this refresh token would be exchanged for a new pair now (not yet exchanged,
    /// unexpired, session open).
    pub fn is_refresh_token_valid(&self, token: &str) -> bool {
        let now = Instant::now();
        let inner = self.shared.lock();
        inner.refresh.get(token).is_some_and(|r| {
            r.exchanged.is_none()
                && now < r.expires_at
                && inner
                    .sessions
                    .get(&r.session)
                    .is_some_and(|s| s.ended.is_none())
        })
    }

    /// Makes every current access token expire now (refresh tokens are untouched), so that the
    /// API answers `OAU-128` to a token its client still believes valid. Returns how many.
    pub fn expire_access_tokens(&self) -> usize {
        let now = Instant::now();
        let mut inner = self.shared.lock();
        let mut n = 0;
        for a in inner.access.values_mut() {
            if !a.rotated && a.expires_at > now {
                a.expires_at = now;
                n += 1;
            }
        }
        n
    }

    /// Ends the session of this access or refresh token, as the revocation endpoint or an
    /// administrator would. `false` when the token is unknown.
    pub fn revoke(&self, token: &str) -> bool {
        self.shared.lock().revoke(token)
    }

    /// Time left in the rate-limit penalty of `client_id`, if it is being penalised.
    pub fn rate_limit_penalty_remaining(&self, client_id: &str) -> Option<Duration> {
        let now = Instant::now();
        self.shared
            .lock()
            .rate
            .get(client_id)
            .and_then(|r| r.penalty_until)
            .filter(|&until| until > now)
            .map(|until| until - now)
    }
}

// ---------------------------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------------------------

struct Form {
    params: BTreeMap<String, String>,
    duplicate: Option<String>,
}

impl Form {
    fn parse(body: &[u8]) -> Form {
        let mut params = BTreeMap::new();
        let mut duplicate = None;
        for (k, v) in form_urlencoded::parse(body) {
            if params.contains_key(k.as_ref()) {
                duplicate.get_or_insert_with(|| k.to_string());
            } else {
                params.insert(k.into_owned(), v.into_owned());
            }
        }
        Form { params, duplicate }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    fn redacted(&self) -> BTreeMap<String, String> {
        self.params
            .iter()
            .map(|(k, v)| {
                let v = if SECRET_PARAMS.contains(&k.as_str()) {
                    REDACTED.to_owned()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }
}

/// Client credentials as presented.
enum Presented {
    Basic(Option<(String, String)>),
    Body { id: String, secret: Option<String> },
    None,
}

impl Presented {
    fn from(headers: &HeaderMap, form: &Form) -> Presented {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value.to_str().unwrap_or("");
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            if scheme.eq_ignore_ascii_case("basic") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(rest.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.split_once(':').map(|(i, p)| (i.to_owned(), p.to_owned())));
                return Presented::Basic(decoded);
            }
        }
        match form.get("client_id") {
            Some(id) => Presented::Body {
                id: id.to_owned(),
                secret: form.get("client_secret").map(str::to_owned),
            },
            None => Presented::None,
        }
    }

    fn kind(&self) -> ClientAuthKind {
        match self {
            Presented::Basic(_) => ClientAuthKind::Basic,
            Presented::Body { .. } => ClientAuthKind::Body,
            Presented::None => ClientAuthKind::None,
        }
    }

    /// The client id claimed, for the rate limit and the error body.
    fn client_id(&self) -> &str {
        match self {
            Presented::Basic(Some((id, _))) => id,
            Presented::Body { id, .. } => id,
            _ => "",
        }
    }

    fn authenticates(&self, cfg: &TokenServerConfig) -> bool {
        // RFC 6749 2.3.1 form-encodes id and secret before Basic; accept both spellings.
        let decode = |s: &str| {
            form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let matches = |got: &str, want: &str| got == want || decode(got) == want;
        match self {
            Presented::Basic(Some((id, secret))) => {
                matches(id, &cfg.client_id) && matches(secret, &cfg.client_secret)
            }
            Presented::Basic(None) | Presented::None => false,
            Presented::Body { id, secret } => {
                id == &cfg.client_id
                    && match secret {
                        Some(s) => s == &cfg.client_secret,
                        None => cfg.client_secret.is_empty(),
                    }
            }
        }
    }
}

/// RingCentral's rate-limit headers: `X-Rate-Limit-Group` (the group's name in lower case),
/// `-Limit` (requests per window), `-Remaining` and `-Window` (seconds).
pub(crate) struct RateHeaders {
    pub(crate) group: &'static str,
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    pub(crate) window: u64,
}

impl RateHeaders {
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        headers.insert("x-rate-limit-group", HeaderValue::from_static(self.group));
        headers.insert("x-rate-limit-limit", HeaderValue::from(self.limit));
        headers.insert("x-rate-limit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-rate-limit-window", HeaderValue::from(self.window));
    }
}

/// `d` in whole seconds, rounded up, at least 1 (what `Retry-After` and `X-Rate-Limit-Window`
/// say).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s.max(1)
    }
}

impl Inner {
    /// Counts a request of the Auth group; `Err` is the 429 to send.
    fn rate_check(
        &mut self,
        limit: &RateLimit,
        client_id: &str,
        now: Instant,
    ) -> Result<RateHeaders, Reject> {
        let state = self.rate.entry(client_id.to_owned()).or_default();
        let window = limit.window.as_secs();
        let refuse = |state: &mut RateState| {
            state.penalty_until = Some(now + limit.penalty);
            let mut resp = rate_exceeded(Some(ceil_secs(limit.penalty)));
            RateHeaders {
                group: AUTH_GROUP,
                limit: limit.max,
                remaining: 0,
                window,
            }
            .apply(resp.headers_mut());
            resp
        };
        if let Some(until) = state.penalty_until {
            if now < until {
                // Every request during the penalty restarts it.
                return Err(Box::new(refuse(state)));
            }
            // The penalty is over: a fresh window.
            state.penalty_until = None;
            state.window_start = None;
        }
        if state
            .window_start
            .is_none_or(|start| now >= start + limit.window)
        {
            state.window_start = Some(now);
            state.count = 0;
        }
        state.count += 1;
        if state.count > limit.max {
            return Err(Box::new(refuse(state)));
        }
        Ok(RateHeaders {
            group: AUTH_GROUP,
            limit: limit.max,
            remaining: limit.max - state.count,
            window,
        })
    }

    fn take_fault(&mut self) -> Option<Fault> {
        let (fault, times) = self.fault.as_mut()?;
        let fault = fault.clone();
        if let Some(n) = times {
            *n -= 1;
            if *n == 0 {
                self.fault = None;
            }
        }
        Some(fault)
    }

    fn end_session(&mut self, id: u64, why: SessionEnd) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.ended.get_or_insert(why);
        }
    }

    fn revoke(&mut self, token: &str) -> bool {
        let session = self
            .access
            .get(token)
            .map(|a| a.session)
            .or_else(|| self.refresh.get(token).map(|r| r.session));
        match session {
            Some(id) => {
                self.end_session(id, SessionEnd::Revoked);
                true
            }
            None => false,
        }
    }

    /// Opens a session and issues its first tokens.
    fn login(
        &mut self,
        cfg: &TokenServerConfig,
        now: Instant,
        ttls: Ttls,
        with_refresh: bool,
        endpoint_id: Option<&str>,
    ) -> Value {
        let id = self.next_session;
        self.next_session += 1;
        let access = new_token();
        let access_expires = now + ttls.access;
        let (refresh, expires_at) = if with_refresh {
            let rt = new_token();
            let rt_expires = now + ttls.refresh;
            self.refresh.insert(
                rt.clone(),
                RefreshEntry {
                    session: id,
                    expires_at: rt_expires,
                    exchanged: None,
                },
            );
            (Some(rt), rt_expires.max(access_expires))
        } else {
            (None, access_expires)
        };
        self.access.insert(
            access.clone(),
            AccessEntry {
                session: id,
                expires_at: access_expires,
                rotated: false,
                first_used: None,
            },
        );
        self.sessions.insert(
            id,
            Session {
                created: now,
                ended: None,
                endpoint_id: endpoint_id.map_or_else(new_endpoint_id, str::to_owned),
                current_access: access,
                current_refresh: refresh,
                expires_at,
            },
        );
        self.logins += 1;
        if let Some(cap) = cfg.session_cap {
            loop {
                let open: Vec<u64> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.is_open(now))
                    .map(|(&id, _)| id)
                    .collect();
                if open.len() <= cap {
                    break;
                }
                // Session ids grow with creation time: the first open one is the oldest.
                let oldest = open[0];
                debug_assert!(self.sessions[&oldest].created <= now);
                self.end_session(oldest, SessionEnd::Evicted);
                self.evictions.push(SessionEviction {
                    session_id: oldest,
                    at: now,
                });
            }
        }
        self.success_body(cfg, id, now)
    }

    /// The token body of a session's current pair.
    fn success_body(&self, cfg: &TokenServerConfig, id: u64, now: Instant) -> Value {
        let s = &self.sessions[&id];
        let mut body = Map::new();
        body.insert("access_token".into(), json!(s.current_access));
        body.insert("token_type".into(), json!("bearer"));
        body.insert(
            "expires_in".into(),
            json!(secs_left(self.access[&s.current_access].expires_at, now)),
        );
        if let Some(rt) = &s.current_refresh {
            body.insert("refresh_token".into(), json!(rt));
            body.insert(
                "refresh_token_expires_in".into(),
                json!(secs_left(self.refresh[rt].expires_at, now)),
            );
        }
        body.insert("scope".into(), json!(cfg.scope));
        body.insert("owner_id".into(), json!(cfg.owner_id));
        body.insert("endpoint_id".into(), json!(s.endpoint_id));
        body.insert("session_id".into(), json!(id.to_string()));
        Value::Object(body)
    }

    /// The refresh grant: rotation, grace window, stale-use detection.
    fn refresh_grant(
        &mut self,
        cfg: &TokenServerConfig,
        now: Instant,
        ttls: Ttls,
        token: &str,
    ) -> Result<Value, Reject> {
        let Some(entry) = self.refresh.get(token) else {
            return Err(Box::new(token_not_found()));
        };
        let session_id = entry.session;
        let expires_at = entry.expires_at;
        let exchanged = entry.exchanged.clone();
        let ended = self.sessions.get(&session_id).and_then(|s| s.ended);
        if let Some(ex) = exchanged {
            let first_used = self.access.get(&ex.new_access).and_then(|a| a.first_used);
            let unused_deadline = ex.at + cfg.grace_unused;
            let deadline = match first_used {
                Some(used) => (used + cfg.grace_after_use).min(unused_deadline),
                None => unused_deadline,
            };
            let successor_current = self
                .refresh
                .get(&ex.new_refresh)
                .is_some_and(|r| r.exchanged.is_none())
                && self
                    .sessions
                    .get(&session_id)
                    .is_some_and(|s| s.current_refresh.as_deref() == Some(&ex.new_refresh));
            let in_window = now < deadline && successor_current;
            if in_window && ended.is_none() {
                self.grace_replays += 1;
                return Ok(self.success_body(cfg, session_id, now));
            }
            if !in_window {
                self.stale.push(StaleRefreshUse {
                    token_fingerprint: token_fingerprint(token),
                    session_id,
                    at: now,
                    exchanged_ago: now - ex.at,
                });
            }
            return Err(Box::new(if ended.is_some() {
                token_revoked()
            } else {
                token_not_found()
            }));
        }
        if ended.is_some() {
            return Err(Box::new(token_revoked()));
        }
        if now >= expires_at {
            // RingCentral's code for an expired refresh token is unconfirmed; an expired token
            // is as good as gone.
            return Err(Box::new(token_not_found()));
        }
        // Rotate.
        let access = new_token();
        let refresh = new_token();
        let access_expires = now + ttls.access;
        let refresh_expires = now + ttls.refresh;
        self.access.insert(
            access.clone(),
            AccessEntry {
                session: session_id,
                expires_at: access_expires,
                rotated: false,
                first_used: None,
            },
        );
        self.refresh.insert(
            refresh.clone(),
            RefreshEntry {
                session: session_id,
                expires_at: refresh_expires,
                exchanged: None,
            },
        );
        if let Some(e) = self.refresh.get_mut(token) {
            e.exchanged = Some(Exchange {
                at: now,
                new_access: access.clone(),
                new_refresh: refresh.clone(),
            });
        }
        let session = self
            .sessions
            .get_mut(&session_id)
            .expect("a refresh token's session exists");
        let old_access = std::mem::replace(&mut session.current_access, access);
        session.current_refresh = Some(refresh);
        session.expires_at = refresh_expires.max(access_expires);
        if let Some(a) = self.access.get_mut(&old_access) {
            a.rotated = true;
        }
        self.refreshes += 1;
        Ok(self.success_body(cfg, session_id, now))
    }
}

#[derive(Debug, Clone, Copy)]
struct Ttls {
    access: Duration,
    refresh: Duration,
}

fn parse_ttls(cfg: &TokenServerConfig, form: &Form) -> Result<Ttls, Reject> {
    let mut ttls = Ttls {
        access: cfg.access_ttl,
        refresh: cfg.refresh_ttl,
    };
    if !cfg.honor_ttl_param {
        return Ok(ttls);
    }
    let parse = |name: &str| -> Result<Option<u64>, Reject> {
        match form.get(name) {
            None => Ok(None),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(Box::new(invalid_request(&format!(
                    "Parameter [{name}] value is invalid"
                )))),
            },
        }
    };
    if let Some(n) = parse("access_token_ttl")? {
        let n = if cfg.clamp_ttl {
            n.clamp(RC_ACCESS_TTL_RANGE.0, RC_ACCESS_TTL_RANGE.1)
        } else {
            n
        };
        ttls.access = Duration::from_secs(n);
    }
    if let Some(n) = parse("refresh_token_ttl")? {
        let n = if cfg.clamp_ttl {
            n.min(RC_REFRESH_TTL_MAX)
        } else {
            n
        };
        ttls.refresh = Duration::from_secs(n);
    }
    Ok(ttls)
}

fn looks_like_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| {
            !p.is_empty()
                && base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p.trim_end_matches('='))
                    .is_ok()
        })
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<HttpResponse, DropConnection> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        TOKEN_PATH | REVOKE_PATH if req.method() != Method::POST => Ok(method_not_allowed()),
        TOKEN_PATH => handle_token(&shared, req).await,
        REVOKE_PATH => Ok(handle_revoke(&shared, req).await),
        _ => Ok(not_found()),
    }
}

async fn read_form(req: Request<Incoming>) -> Result<(http::request::Parts, Form), HttpResponse> {
    let (parts, body) = req.into_parts();
    match Limited::new(body, MAX_FORM_BYTES).collect().await {
        Ok(b) => Ok((parts, Form::parse(&b.to_bytes()))),
        Err(_) => Err(invalid_request("Request body is too large or unreadable")),
    }
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

async fn handle_token(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
) -> Result<HttpResponse, DropConnection> {
    let arrived = Instant::now();
    shared.arrivals.send_modify(|n| *n += 1);
    let (parts, form) = match read_form(req).await {
        Ok(f) => f,
        Err(resp) => {
            let record = TokenRequestRecord {
                grant_type: String::new(),
                at: arrived,
                status: 0,
                client_auth: ClientAuthKind::None,
                params: BTreeMap::new(),
                fault: None,
            };
            return Ok(finish(shared, record, resp));
        }
    };
    let presented = Presented::from(&parts.headers, &form);
    let mut record = TokenRequestRecord {
        grant_type: form.get("grant_type").unwrap_or("").to_owned(),
        at: arrived,
        status: 0,
        client_auth: presented.kind(),
        params: form.redacted(),
        fault: None,
    };

    let fault = shared.lock().take_fault();
    record.fault = fault.clone();
    let mut strip_expires_in = false;
    match fault {
        None => {}
        Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::MissingExpiresIn) => strip_expires_in = true,
        Some(Fault::DropConnection) => {
            finish(shared, record, Response::new(Full::default()));
            return Err(DropConnection);
        }
        Some(fault) => {
            let resp = match fault {
                Fault::Status(code) => fault_status_response(code),
                Fault::TooManyRequests { retry_after } => rate_exceeded(retry_after),
                Fault::Garbage => raw_response(
                    StatusCode::OK,
                    "application/json",
                    Bytes::from_static(b"\x00\x01 this is <not> JSON {\"access_token\": "),
                ),
                Fault::Html => raw_response(
                    StatusCode::BAD_GATEWAY,
                    "text/html",
                    Bytes::from_static(HTML_502.as_bytes()),
                ),
                Fault::Empty => raw_response(StatusCode::OK, "application/json", Bytes::new()),
                Fault::MissingAccessToken => json_response(
                    StatusCode::OK,
                    &json!({
                        "token_type": "bearer",
                        "expires_in": shared.cfg.access_ttl.as_secs(),
                        "scope": shared.cfg.scope,
                        "owner_id": shared.cfg.owner_id,
                    }),
                ),
                Fault::HugeBody => {
                    let mut body = Vec::with_capacity(HUGE_BODY_LEN);
                    body.extend_from_slice(br#"{"padding":""#);
                    body.resize(HUGE_BODY_LEN - 2, b'x');
                    body.extend_from_slice(br#""}"#);
                    raw_response(StatusCode::OK, "application/json", Bytes::from(body))
                }
                Fault::InvalidGrant => token_revoked(),
                Fault::Slow(_) | Fault::MissingExpiresIn | Fault::DropConnection => {
                    unreachable!("handled above")
                }
            };
            return Ok(finish(shared, record, resp));
        }
    }

    let now = Instant::now();
    let resp = token_endpoint(shared, &parts.headers, &form, &presented, now);
    let resp = if strip_expires_in && resp.status() == StatusCode::OK {
        strip_field(resp, "expires_in").await
    } else {
        resp
    };
    Ok(finish(shared, record, resp))
}

async fn strip_field(resp: HttpResponse, field: &str) -> HttpResponse {
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if let Some(obj) = value.as_object_mut() {
        obj.remove(field);
    }
    Response::from_parts(parts, Full::new(Bytes::from(value.to_string())))
}

fn finish(shared: &Shared, mut record: TokenRequestRecord, resp: HttpResponse) -> HttpResponse {
    record.status = if record.fault == Some(Fault::DropConnection) {
        0
    } else {
        resp.status().as_u16()
    };
    let count = {
        let mut inner = shared.lock();
        inner.records.push(record);
        inner.records.len()
    };
    shared.answered.send_replace(count);
    resp
}

/// The token endpoint proper: rate limit, request checks, client authentication, grant.
fn token_endpoint(
    shared: &Shared,
    headers: &HeaderMap,
    form: &Form,
    presented: &Presented,
    now: Instant,
) -> HttpResponse {
    let cfg = &shared.cfg;
    let mut inner = shared.lock();
    let rate = match &cfg.rate_limit {
        Some(limit) => match inner.rate_check(limit, presented.client_id(), now) {
            Ok(h) => Some(h),
            Err(resp) => return *resp,
        },
        None => None,
    };
    let mut resp = grant(cfg, &mut inner, headers, form, presented, now);
    if let Some(rate) = rate {
        rate.apply(resp.headers_mut());
    }
    resp
}

fn grant(
    cfg: &TokenServerConfig,
    inner: &mut Inner,
    headers: &HeaderMap,
    form: &Form,
    presented: &Presented,
    now: Instant,
) -> HttpResponse {
    // RingCentral's exact answers to these request errors are unconfirmed; RFC 6749 5.2.
    if !is_form(headers) {
        return invalid_request("Content-Type must be application/x-www-form-urlencoded");
    }
    if let Some(dup) = &form.duplicate {
        return invalid_request(&format!("Parameter [{dup}] is duplicated"));
    }
    if !presented.authenticates(cfg) {
        return invalid_client(presented.client_id());
    }
    let Some(grant_type) = form.get("grant_type") else {
        return invalid_request("Required parameter [grant_type] is missing");
    };
    let ttls = match parse_ttls(cfg, form) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let endpoint_id = form.get("endpoint_id");
    let body = match grant_type {
        JWT_BEARER_GRANT => {
            let Some(accepted) = &cfg.jwt_assertion else {
                return unauthorized_client();
            };
            match form.get("assertion") {
                None => return invalid_request("Required parameter [assertion] is missing"),
                Some(a) if a == accepted => {}
                Some(a) if !looks_like_jwt(a) => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        None,
                        "Unparseable assertion",
                    )
                }
                Some(_) => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        None,
                        "Invalid assertion signature",
                    )
                }
            }
            inner.login(cfg, now, ttls, true, endpoint_id)
        }
        "password" => {
            let Some((user, pass)) = &cfg.password_user else {
                return unauthorized_client();
            };
            match (form.get("username"), form.get("password")) {
                (Some(u), Some(p)) if u == user && p == pass => {}
                (Some(_), Some(_)) => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        None,
                        "Invalid resource owner credentials",
                    )
                }
                _ => {
                    return invalid_request("Required parameters [username, password] are missing")
                }
            }
            inner.login(cfg, now, ttls, true, endpoint_id)
        }
        "client_credentials" => {
            if !cfg.allow_client_credentials {
                return unauthorized_client();
            }
            inner.login(cfg, now, ttls, false, endpoint_id)
        }
        "refresh_token" => {
            let Some(rt) = form.get("refresh_token") else {
                return invalid_request("Required parameter [refresh_token] is missing");
            };
            match inner.refresh_grant(cfg, now, ttls, rt) {
                Ok(body) => body,
                Err(resp) => return *resp,
            }
        }
        // RingCentral knows this grant; the double has no authorization server to issue codes.
        "authorization_code" => return unauthorized_client(),
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                None,
                "Unsupported grant type",
            )
        }
    };
    let mut resp = json_response(StatusCode::OK, &body);
    // RFC 6749 5.1.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

async fn handle_revoke(shared: &Shared, req: Request<Incoming>) -> HttpResponse {
    let (parts, form) = match read_form(req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let presented = Presented::from(&parts.headers, &form);
    let now = Instant::now();
    let cfg = &shared.cfg;
    let mut inner = shared.lock();
    let rate = match &cfg.rate_limit {
        Some(limit) => match inner.rate_check(limit, presented.client_id(), now) {
            Ok(h) => Some(h),
            Err(resp) => return *resp,
        },
        None => None,
    };
    let mut resp = if !is_form(&parts.headers) {
        invalid_request("Content-Type must be application/x-www-form-urlencoded")
    } else if !presented.authenticates(cfg) {
        invalid_client(presented.client_id())
    } else {
        match form.get("token") {
            None => invalid_request("Required parameter [token] is missing"),
            Some(token) => {
                // RFC 7009: an unknown token is not an error.
                if inner.revoke(token) {
                    inner.revocations += 1;
                }
                Response::new(Full::default())
            }
        }
    };
    if let Some(rate) = rate {
        rate.apply(resp.headers_mut());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_short_and_stable() {
        let f = token_fingerprint("U1BCMDFUMDRKVabc");
        assert_eq!(f.len(), 8);
        assert_eq!(f, token_fingerprint("U1BCMDFUMDRKVabc"));
        assert_ne!(f, token_fingerprint("U1BCMDFUMDRKVabd"));
    }

    #[test]
    fn tokens_are_recognisable_and_header_safe() {
        let t = new_token();
        assert!(t.starts_with(TOKEN_PREFIX));
        assert!(HeaderValue::from_str(&format!("Bearer {t}")).is_ok());
        assert_ne!(t, new_token());
    }

    #[test]
    fn dev_assertion_looks_like_a_jwt() {
        assert!(looks_like_jwt(DEV_ASSERTION));
        assert!(!looks_like_jwt("not-a-jwt"));
    }

    #[test]
    fn rate_limit_restarts_the_penalty() {
        let mut inner = Inner::default();
        let limit = RateLimit {
            max: 2,
            window: Duration::from_secs(60),
            penalty: Duration::from_secs(10),
        };
        let t0 = Instant::now();
        assert!(inner.rate_check(&limit, "c", t0).is_ok());
        assert!(inner.rate_check(&limit, "c", t0).is_ok());
        assert!(inner.rate_check(&limit, "c", t0).is_err());
        // 9 s later: still penalised, and the penalty restarts.
        assert!(inner
            .rate_check(&limit, "c", t0 + Duration::from_secs(9))
            .is_err());
        assert!(inner
            .rate_check(&limit, "c", t0 + Duration::from_secs(18))
            .is_err());
        // 10 s after the last request: a fresh window.
        let later = t0 + Duration::from_secs(28);
        let h = inner.rate_check(&limit, "c", later).unwrap();
        assert_eq!(h.remaining, 1);
        // Other clients are not affected.
        assert!(inner.rate_check(&limit, "other", t0).is_ok());
    }
}
