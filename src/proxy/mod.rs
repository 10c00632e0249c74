//! The data plane: one [`Route`] per listener forwards the app's requests to its upstream
//! with the token injected.
//!
//! For each request, in order:
//! 1. the header block is measured (431 over the limit),
//! 2. the target is checked: never CONNECT, never another host, no dot segments (400),
//! 3. the host it names must be the listener's (DNS rebinding, 400) and a browser's request
//!    must come from an allowed origin (403),
//! 4. the token is loaded, one atomic load; none or expired means 503 and nothing is sent,
//! 5. a protocol switch must be a plain WebSocket handshake (400),
//! 6. hop-by-hop headers, `Host` and the app's credentials are dropped, the token header set,
//! 7. a small body is kept for a replay after a 401, within the process's replay budget,
//! 8. the request is sent through the route's connection pool, bodies streamed both ways,
//! 9. upstream failures become the sidecar's own 502/504 answers (see [`crate::error`]).

mod deadline;
pub mod growth;
pub mod origin;
pub mod pool;
pub mod replay;
pub mod rewrite;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::Body;
use crate::error::{error_response, token_unavailable, ErrorChain, ErrorKind, UpstreamFailure};
use crate::metrics::RouteMetrics;
use crate::token::{Profile, TokenStore};
use pool::{Pool, SendError};
use replay::{Held, ReplayBudget};
use rewrite::{check_target, header_list_size, prepare_request_headers, Upstream};

/// Everything a route needs to forward a request.
pub struct RouteSettings {
    /// The route's name (metric label `route`).
    pub name: String,
    /// Where requests go.
    pub upstream: Upstream,
    /// The token profile's store.
    pub store: Arc<TokenStore>,
    /// The header the token is written to.
    pub header_name: HeaderName,
    /// The prefix written before the token (must be registered with `store`).
    pub header_prefix: String,
    /// Upper bound on waiting for the upstream's response headers.
    pub upstream_timeout: Duration,
    /// Request header blocks larger than this (HTTP/2 accounting) are answered 431.
    pub max_request_header_bytes: usize,
    /// The token profile, asked for a newer token after a 401 when `refresh_on_401` is on.
    pub profile: Arc<Profile>,
    /// Refresh and replay once on a 401.
    pub refresh_on_401: bool,
    /// Request bodies up to this size are kept for a replay.
    pub retry_body_limit: u64,
    /// What every replayable body held in memory counts against.
    pub replay_budget: Arc<ReplayBudget>,
    /// Host names and browser origins allowed besides the listener's own.
    pub allowed: origin::Allowed,
}

/// What [`Route::prepare`] decided.
enum Step {
    /// The sidecar answers itself (a refused request, no token).
    Answer(Response<Body>),
    /// Ready to go upstream.
    Forward(Forward),
    /// A body that may be replayed after a 401 must be read first; the token header (the
    /// second field) goes on after that, and the third is the budget it is held against.
    BufferFirst(Box<(Forward, HeaderValue, Held)>, Incoming),
}

/// A request ready for the upstream, and what its answer needs.
struct Forward {
    out: Request<Body>,
    /// The token version the request carries.
    version: u64,
    upgrade: bool,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The head and body to send again after a 401 (and the replay budget the body holds).
    replay: Option<Box<Replay>>,
}

/// What a replay after a 401 sends again.
struct Replay {
    head: http::request::Parts,
    body: bytes::Bytes,
    /// Given back to the replay budget when the replay is sent or no longer needed.
    _held: Option<Held>,
}

/// One route: a listener's fixed upstream, token and client.
pub struct Route {
    name: String,
    upstream: Upstream,
    store: Arc<TokenStore>,
    header_name: HeaderName,
    header_index: usize,
    pool: Pool,
    upstream_timeout: Duration,
    max_request_header_bytes: usize,
    metrics: RouteMetrics,
    profile: Arc<Profile>,
    refresh_on_401: bool,
    retry_body_limit: u64,
    replay_budget: Arc<ReplayBudget>,
    allowed: origin::Allowed,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// Builds a route forwarding through `pool` (a [`Pool`] for `settings.upstream`).
    pub fn new(settings: RouteSettings, pool: Pool, metrics: RouteMetrics) -> Self {
        let header_index = settings
            .store
            .prefix_index(&settings.header_prefix)
            .unwrap_or(0);
        Route {
            name: settings.name,
            upstream: settings.upstream,
            store: settings.store,
            header_name: settings.header_name,
            header_index,
            pool,
            upstream_timeout: settings.upstream_timeout,
            max_request_header_bytes: settings.max_request_header_bytes,
            metrics,
            profile: settings.profile,
            refresh_on_401: settings.refresh_on_401,
            retry_body_limit: settings.retry_body_limit,
            replay_budget: settings.replay_budget,
            allowed: settings.allowed,
        }
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The route's token store.
    pub fn store(&self) -> &Arc<TokenStore> {
        &self.store
    }

    /// Answers one request from the app, received on a connection accepted on `local`. Never
    /// fails: every problem becomes a response.
    ///
    /// The checks and header rewriting run synchronously here; the returned future holds only
    /// the outgoing request and the exchange with the upstream. It is kept small on purpose:
    /// the server moves it into place for every request.
    pub fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        local: IpAddr,
    ) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static {
        let start = Instant::now();
        let route = Arc::clone(self);
        let log = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| Box::new((req.method().clone(), req.uri().path().to_owned())));
        let step = route.prepare(req, start, local);
        async move {
            let resp = match step {
                Step::Answer(resp) => resp,
                Step::Forward(fwd) => route.exchange(fwd).await,
                Step::BufferFirst(fwd, body) => {
                    Box::pin(route.clone().buffer_then_exchange(fwd, body)).await
                }
            };
            route.observe(&resp, start, log);
            Ok(resp)
        }
    }

    /// Counts and (at debug level) logs a finished request.
    fn observe(
        &self,
        resp: &Response<Body>,
        start: Instant,
        log: Option<Box<(http::Method, String)>>,
    ) {
        let status = resp.status().as_u16();
        self.metrics.count(status);
        let elapsed = start.elapsed();
        self.metrics.duration.observe(elapsed.as_secs_f64());
        if let Some(log) = log {
            let (method, path) = *log;
            tracing::debug!(
                route = %self.name,
                method = %method,
                path = %path,
                status,
                error = resp.headers().get(crate::error::ERROR_HEADER).and_then(|v| v.to_str().ok()),
                elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                "request"
            );
        }
    }

    fn reject(&self, kind: ErrorKind, message: &str) -> Response<Body> {
        self.metrics.rejected(kind.as_str());
        error_response(kind, message)
    }

    /// Everything before the upstream is involved: limits, target, who asks, token, headers.
    fn prepare(&self, mut req: Request<Incoming>, now: Instant, local: IpAddr) -> Step {
        if header_list_size(req.headers()) > self.max_request_header_bytes {
            return Step::Answer(self.reject(
                ErrorKind::HeaderTooLarge,
                "The request headers are larger than this sidecar accepts.",
            ));
        }
        let target = match check_target(req.method(), req.version(), req.uri(), &self.upstream) {
            Ok(t) => t,
            Err(e) => return Step::Answer(self.reject(ErrorKind::BadRequest, &e.to_string())),
        };
        // HTTP/2 names its host in `:authority`; an HTTP/1 absolute-form target's authority
        // was checked above (and `Host` is then ignored, RFC 9112 3.2.2).
        let host = || {
            req.headers()
                .get(http::header::HOST)
                .map(HeaderValue::as_bytes)
        };
        let authority = if req.version() == Version::HTTP_2 {
            req.uri()
                .authority()
                .map(|a| a.as_str().as_bytes())
                .or_else(host)
        } else if req.uri().authority().is_some() {
            None
        } else {
            host()
        };
        if let Err(refused) = origin::check(authority, req.headers(), local, &self.allowed) {
            let kind = match refused {
                origin::Refused::Host => ErrorKind::BadRequest,
                origin::Refused::CrossSite => ErrorKind::Forbidden,
            };
            return Step::Answer(self.reject(kind, &refused.to_string()));
        }
        let upgrade = match rewrite::upgrade_of(req.method(), req.version(), req.headers()) {
            Ok(u) => u == rewrite::Upgrade::WebSocket,
            Err(e) => return Step::Answer(self.reject(ErrorKind::BadRequest, &e.to_string())),
        };
        let (token_header, version) = match self.store.load().as_ref() {
            Some(t) if t.is_valid_at(now) => (t.header(self.header_index).clone(), t.version()),
            _ => {
                self.metrics.rejected(ErrorKind::TokenUnavailable.as_str());
                return Step::Answer(token_unavailable(self.store.retry_after()));
            }
        };
        let uri = match self.upstream.path(target) {
            Ok(pq) => http::Uri::from(pq),
            Err(e) => return Step::Answer(self.reject(ErrorKind::BadRequest, &e.to_string())),
        };
        let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        // The pool speaks HTTP/2 instead when ALPN negotiates it.
        parts.version = Version::HTTP_11;
        parts.extensions = http::Extensions::new();
        prepare_request_headers(&mut parts.headers, upgrade);

        // Keep what a replay after a 401 needs: the request head and a small body.
        let replayable = self.refresh_on_401 && !upgrade;
        let replay = if replayable && http_body::Body::is_end_stream(&body) {
            let head = clone_head(&parts.method, &parts.uri, parts.version, &parts.headers);
            Some(Box::new(Replay {
                head,
                body: bytes::Bytes::new(),
                _held: None,
            }))
        } else if let Some(held) = replayable.then(|| self.hold_for_replay(&body)).flatten() {
            // The body must be read first; the token header goes on once it has been.
            let fwd = Forward {
                out: Request::from_parts(parts, Body::Empty),
                version,
                upgrade,
                on_upgrade,
                replay: None,
            };
            return Step::BufferFirst(Box::new((fwd, token_header, held)), body);
        } else {
            None
        };
        parts.headers.insert(self.header_name.clone(), token_header);
        let body = if http_body::Body::is_end_stream(&body) {
            Body::Empty
        } else {
            Body::Incoming(body)
        };
        Step::Forward(Forward {
            out: Request::from_parts(parts, body),
            version,
            upgrade,
            on_upgrade,
            replay,
        })
    }

    /// Room in the replay budget for a body that a replay may need: one of known, small
    /// length (one of unknown length may be a stream the client feeds slowly, and holding it
    /// would stall the request). `None`: it streams through and is not replayed.
    fn hold_for_replay(&self, body: &Incoming) -> Option<Held> {
        let len = http_body::Body::size_hint(body)
            .exact()
            .filter(|len| *len <= self.retry_body_limit)?;
        let held = self.replay_budget.take(len);
        if held.is_none() {
            self.metrics.retry_body_budget_exceeded();
        }
        held
    }

    /// A request with a body that may be replayed after a 401: keeps a copy of a small body,
    /// then goes on like any other request.
    async fn buffer_then_exchange(
        self: Arc<Self>,
        fwd: Box<(Forward, HeaderValue, Held)>,
        body: Incoming,
    ) -> Response<Body> {
        let (mut fwd, token_header, held) = *fwd;
        match crate::body::buffer_for_replay(body, self.retry_body_limit).await {
            Ok((body, kept)) => {
                if let Some(bytes) = kept {
                    let out = &fwd.out;
                    let head = clone_head(out.method(), out.uri(), out.version(), out.headers());
                    fwd.replay = Some(Box::new(Replay {
                        head,
                        body: bytes,
                        _held: Some(held),
                    }));
                }
                fwd.out
                    .headers_mut()
                    .insert(self.header_name.clone(), token_header);
                *fwd.out.body_mut() = body;
                self.exchange(fwd).await
            }
            Err(e) => {
                tracing::debug!(route = %self.name, error = %e, "reading the request body failed");
                self.reject(ErrorKind::BadRequest, "The request body could not be read.")
            }
        }
    }

    /// Sends the prepared request and turns the upstream's answer into the app's response.
    async fn exchange(&self, fwd: Forward) -> Response<Body> {
        let mut resp = match self.send(fwd.out, fwd.upgrade).await {
            Ok(r) => r,
            Err(r) => return r,
        };

        if resp.status() == StatusCode::UNAUTHORIZED && self.refresh_on_401 {
            let version = fwd.version;
            match fwd.replay.map(|r| *r) {
                Some(Replay { head, body, _held }) => {
                    // Boxed: a rare path, kept out of every request's future.
                    let replay = Box::pin(self.replay_after_401(version, head, body));
                    if let Some(r) = replay.await {
                        return r;
                    }
                    self.metrics.unauthorized_retry("still_unauthorized");
                }
                None => {
                    // Too large (or an upgrade) to replay: answer the 401 now and refresh in
                    // the background so that the app's own retry succeeds.
                    self.metrics.unauthorized_retry("not_replayable");
                    let profile = self.profile.clone();
                    tokio::spawn(async move {
                        profile.on_unauthorized(version).await;
                    });
                }
            }
        }

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching && !(fwd.upgrade && rewrite::switches_to_websocket(resp.headers())) {
            // A switch nobody asked for, or to another protocol than WebSocket: no tunnel.
            self.metrics.upstream_error("protocol");
            tracing::warn!(route = %self.name, "the upstream switched protocols without a WebSocket handshake to answer; refused");
            return self.reject(
                ErrorKind::UpstreamError,
                "The upstream switched to a protocol the sidecar does not tunnel.",
            );
        }
        if let (true, Some(on_upgrade)) = (switching, fwd.on_upgrade) {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let route = self.name.clone();
            tokio::spawn(async move {
                match tokio::try_join!(on_upgrade, upstream_upgrade) {
                    Ok((app, up)) => {
                        let mut app = TokioIo::new(app);
                        let mut up = TokioIo::new(up);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut app, &mut up).await {
                            tracing::debug!(route = %route, error = %e, "upgraded connection ended");
                        }
                    }
                    Err(e) => {
                        tracing::debug!(route = %route, error = %e, "protocol upgrade failed")
                    }
                }
            });
        }
        self.response(resp, switching && fwd.upgrade)
    }

    fn response(&self, mut resp: Response<Body>, upgraded: bool) -> Response<Body> {
        rewrite::strip_hop_by_hop(resp.headers_mut(), upgraded);
        resp
    }

    /// Sends one request upstream within the timeout; failures become the sidecar's answer.
    // Both variants are responses of the same size: the error is the sidecar's own answer.
    #[allow(clippy::result_large_err)]
    fn send(
        &self,
        req: Request<Body>,
        upgrade: bool,
    ) -> impl Future<Output = Result<Response<Body>, Response<Body>>> + Send + '_ {
        // The upstream's time to answer starts once the app's body has been sent: a slow
        // upload is not an upstream timeout.
        let (req, body_sent) =
            if http_body::Body::is_end_stream(req.body()) || req.body().is_in_memory() {
                (req, None)
            } else {
                let (parts, body) = req.into_parts();
                let (body, sent) = body.watched();
                (Request::from_parts(parts, body), Some(sent))
            };
        // Combinators rather than an async block: the pool's future is polled where it is,
        // never moved into a second slot.
        deadline::Deadline::new(self.pool.send(req, upgrade), self.upstream_timeout, body_sent)
            .map(move |result| match result {
                Some(Ok(resp)) => Ok(resp),
                Some(Err(e)) => Err(self.upstream_failure(&e)),
                None => {
                    self.metrics.upstream_error("timeout");
                    tracing::warn!(route = %self.name, timeout = ?self.upstream_timeout, "upstream did not answer in time");
                    Err(self.reject(
                        ErrorKind::UpstreamTimeout,
                        "The upstream did not answer in time.",
                    ))
                }
            })
    }

    /// After a 401 to a request sent with token `version`: obtains a newer token (single-flight)
    /// and sends the request once more. `None` means no newer token: answer the first 401.
    async fn replay_after_401(
        &self,
        version: u64,
        head: http::request::Parts,
        body: bytes::Bytes,
    ) -> Option<Response<Body>> {
        self.profile.on_unauthorized(version).await?;
        let header = match self.store.load().as_ref() {
            Some(t) if t.version() > version && t.is_valid_at(Instant::now()) => {
                t.header(self.header_index).clone()
            }
            _ => return None,
        };
        let mut req = Request::from_parts(head, Body::full(body));
        req.headers_mut().insert(self.header_name.clone(), header);
        let resp = match self.send(req, false).await {
            Ok(r) => r,
            Err(r) => return Some(r),
        };
        let result = if resp.status() == StatusCode::UNAUTHORIZED {
            "still_unauthorized"
        } else {
            "success"
        };
        self.metrics.unauthorized_retry(result);
        Some(self.response(resp, false))
    }

    fn upstream_failure(&self, err: &SendError) -> Response<Body> {
        let failure = UpstreamFailure::classify(err, err.is_connect());
        match failure.metric_label() {
            None => {
                tracing::debug!(route = %self.name, error = %ErrorChain(err), "the app's request body failed");
            }
            Some(label) => {
                self.metrics.upstream_error(label);
                tracing::warn!(
                    route = %self.name,
                    kind = label,
                    error = %ErrorChain(err),
                    "upstream request failed"
                );
            }
        }
        self.reject(failure.kind(), failure.message())
    }
}

/// A copy of a request head for a replay (the body is kept separately).
fn clone_head(
    method: &http::Method,
    uri: &http::Uri,
    version: Version,
    headers: &http::HeaderMap,
) -> http::request::Parts {
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = method.clone();
    head.uri = uri.clone();
    head.version = version;
    head.headers = headers.clone();
    head
}
