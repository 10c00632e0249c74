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
mod exchange;
pub mod growth;
mod limited;
pub mod origin;
pub mod pool;
mod prepare;
pub mod replay;
pub mod rewrite;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;

use crate::body::Body;
use crate::error::{error_response, ErrorKind};
use crate::metrics::RouteMetrics;
use crate::ratelimit::limits::{Later, Pass};
use crate::ratelimit::rules::Shape;
use crate::ratelimit::RouteLimits;
use crate::token::{Profile, TokenStore};
use pool::Pool;
use replay::{Held, Replay, ReplayBudget};
use upstream::Upstream;

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
    /// Where the route's background work runs (a refresh after a 401 that cannot be replayed,
    /// WebSocket tunnels), awaited at shutdown.
    pub tasks: tokio_util::task::TaskTracker,
    /// The route's rate limits (`None`: off).
    pub limits: Option<Arc<RouteLimits>>,
}

/// What [`Route::prepare`] decided.
enum Step {
    /// The sidecar answers itself (a refused request, no token).
    Answer(Response<Body>),
    /// The request waits for a rate limit (a block to end, room in a rate) first.
    Later(Box<(Request<Incoming>, Later)>),
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
    /// The request's path shape, to learn its group from the answer.
    shape: Shape,
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
    tasks: tokio_util::task::TaskTracker,
    limits: Option<Arc<RouteLimits>>,
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
            tasks: settings.tasks,
            limits: settings.limits,
        }
    }

    /// The route's rate limits (`None`: off).
    pub fn limits(&self) -> Option<&Arc<RouteLimits>> {
        self.limits.as_ref()
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
        // A bug must not drop the connection without an answer: a panic becomes a 500 with the
        // sidecar's JSON body (`catch_unwind` costs nothing until something panics).
        let step = std::panic::catch_unwind(AssertUnwindSafe(|| {
            route.prepare(req, start, local, Pass::default())
        }))
        .unwrap_or_else(|_| Step::Answer(route.internal_error()));
        async move {
            let exchange = async {
                match step {
                    Step::Answer(resp) => resp,
                    Step::Forward(fwd) => route.exchange(fwd).await,
                    Step::BufferFirst(fwd, body) => {
                        Box::pin(route.clone().buffer_then_exchange(fwd, body)).await
                    }
                    Step::Later(later) => Box::pin(route.clone().later(*later, local)).await,
                }
            };
            let resp = AssertUnwindSafe(exchange)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| route.internal_error());
            route.observe(&resp, start, log);
            Ok(resp)
        }
    }

    /// The answer to a request whose handling panicked (a bug): logged, 500.
    fn internal_error(&self) -> Response<Body> {
        tracing::error!(route = %self.name, "handling a request panicked; answered 500");
        self.reject(
            ErrorKind::Internal,
            "The sidecar failed to handle this request; see its logs.",
        )
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
}

/// A copy of a request head for a replay (the body is kept separately).
pub(super) fn clone_head(
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
