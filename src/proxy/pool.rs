//! A route's upstream connections: hyper's connection-level HTTP/1.1 and HTTP/2 clients over
//! hyper-rustls, with a stack of idle HTTP/1.1 connections.
//!
//! Size: one file, because checkout, hand-over and return are one state machine over the
//! pool's shared counters and idle stack; split, each part would reach into the others.
//!
//! A route talks to exactly one upstream, so the pool needs no key, no hashing and no
//! per-request task: an HTTP/1.1 connection is taken from the top of the idle stack (the most
//! recently used, whose socket is warm), the request is sent, and the connection goes back on
//! the stack when the response body has been read to its end ([`PoolReturn`]). When ALPN
//! negotiates HTTP/2, one shared connection carries every request. A background task closes
//! connections idle for longer than the idle timeout.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use http::header::{HeaderValue, HOST};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use prometheus::IntGauge;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tower::Service as _;

use crate::tls::{tls_config, TlsError};

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The upstream URL cannot be used as a request target or `Host` header.
    #[error("upstream URL: {0}")]
    Upstream(String),
}

/// Connection settings of a route's upstream pool.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Upper bound on establishing a TCP connection (TLS included in the request timeout).
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Extra PEM CA file trusted besides the system and webpki roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// The client certificate presented to the upstream (mutual TLS).
    pub client_cert: Option<crate::tls::ClientCertFiles>,
}
use super::growth::{Growth, FLOOR};
use super::upstream::Upstream;
use crate::body::{Body, Checkin, PooledBody};

type BoxError = Box<dyn StdError + Send + Sync>;
type Connector = HttpsConnector<HttpConnector>;
/// An opened (and, for HTTPS, TLS-established) connection to the upstream.
type Io = <Connector as tower::Service<Uri>>::Response;

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be established (DNS, TCP, TLS, or the HTTP/2 handshake).
    #[error("connecting to the upstream failed")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was sent or before the response head arrived.
    #[error("the upstream request failed")]
    Request(#[source] hyper::Error),
}

impl SendError {
    /// Whether the error happened while connecting.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

/// A pool of connections to one upstream.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("authority", &self.inner.authority_uri)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// ALPN h2 and http/1.1 (plain HTTP: HTTP/1.1).
    connector: Connector,
    /// ALPN http/1.1 only, for protocol upgrades, which HTTP/2 cannot carry.
    upgrade_connector: Connector,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// `scheme://authority`, what the connector is called with.
    authority_uri: Uri,
    /// The `Host` header of HTTP/1.1 requests.
    host: HeaderValue,
    idle: Mutex<Vec<Idle>>,
    shared_h2: Mutex<Option<http2::SendRequest<Body>>>,
    idle_timeout: Duration,
    max_idle: usize,
    /// Permits for opening connections (`None`: no limit); each open connection holds one.
    limit: Option<Arc<Semaphore>>,
    /// Requests waiting for a connection (at the limit, or held back by [`Growth`]), oldest
    /// first: a connection that comes back goes to them before the idle stack, so that
    /// newcomers cannot overtake them.
    waiters: Mutex<VecDeque<Waiter>>,
    /// Whether a request that finds no idle connection may open one.
    growth: Growth,
    /// Connections being opened: requests that may open one, hold a permit for it if there
    /// is a limit, and have not finished yet.
    opening: AtomicUsize,
    /// Open connections that carry requests (HTTP/1.1 and HTTP/2, upgrades aside): what
    /// [`Growth`] counts. An upgraded connection belongs to its tunnel and never serves
    /// another request.
    pooled: Arc<AtomicUsize>,
    /// Open connections (upgrades included).
    open: IntGauge,
    reaper: std::sync::Once,
}

/// How many connections a pool keeps and opens.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Idle HTTP/1.1 connections kept for reuse, at most.
    pub max_idle: usize,
    /// Connections open at once, at most, upgrades aside (0: no limit). Requests beyond it
    /// wait for a connection to come back idle or to close.
    pub max_connections: usize,
}

/// A connection being opened, counted in [`Inner::opening`] until dropped.
struct Opening<'a>(&'a AtomicUsize);

impl<'a> Opening<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Opening(count)
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an open connection holds until it closes: its permit and its place in the gauge and,
/// unless it is for an upgrade, in [`Inner::pooled`].
struct Held {
    _permit: Option<OwnedSemaphorePermit>,
    open: IntGauge,
    pooled: Option<Arc<AtomicUsize>>,
}

impl Held {
    fn new(
        permit: Option<OwnedSemaphorePermit>,
        open: &IntGauge,
        pooled: Option<&Arc<AtomicUsize>>,
    ) -> Self {
        open.inc();
        if let Some(p) = pooled {
            p.fetch_add(1, Ordering::Relaxed);
        }
        Held {
            _permit: permit,
            open: open.clone(),
            pooled: pooled.cloned(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.dec();
        if let Some(p) = &self.pooled {
            p.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

struct Idle {
    tx: http1::SendRequest<Body>,
    since: Instant,
}

/// A request waiting for a connection to come back, in [`Inner::waiters`].
struct Waiter {
    handoff: oneshot::Sender<http1::SendRequest<Body>>,
    since: Instant,
}

/// A waiting request's end of its place in [`Inner::waiters`]. A connection handed over after
/// the request stopped waiting (it found an idle one, got room or a permit to open one, or its
/// app went away) but before it dropped its end goes back to the pool instead of being closed:
/// [`Inner::checkin`] counted it as handed over.
struct Handed<'a> {
    pool: &'a Arc<Inner>,
    rx: oneshot::Receiver<http1::SendRequest<Body>>,
}

impl Drop for Handed<'_> {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(tx) = self.rx.try_recv() {
            self.pool.checkin(tx);
        }
    }
}

/// What a request waiting for a connection got.
enum Waited<T> {
    /// A connection that came back.
    Conn(Conn),
    /// What it waited for besides.
    Other(T),
    /// The connection handed over was closing: look again.
    Again,
}

enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

type SlowSend = Pin<Box<dyn Future<Output = Result<Response<Body>, SendError>> + Send>>;

pin_project! {
    /// The future of [`Pool::send`].
    #[project = PoolSendProj]
    #[allow(missing_docs)]
    pub enum PoolSend<F> {
        /// On an idle connection that was ready: hyper's request future, and the connection
        /// to give back once the response body has been read.
        // Fields: hyper's request future, the connection it was sent on, and the pool the
        // connection goes back to.
        Ready {
            #[pin]
            fut: F,
            tx: Option<http1::SendRequest<Body>>,
            pool: Pool,
        },
        /// Everything else.
        Slow {
            fut: SlowSend,
        },
    }
}

impl<F> Future for PoolSend<F>
where
    F: Future<Output = Result<Response<Incoming>, TrySendError<Request<Body>>>>,
{
    type Output = Result<Response<Body>, SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let slow = match self.as_mut().project() {
            PoolSendProj::Slow { fut } => return fut.as_mut().poll(cx),
            PoolSendProj::Ready { fut, tx, pool } => match ready!(fut.poll(cx)) {
                Ok(resp) => match tx.take() {
                    Some(tx) => return Poll::Ready(Ok(pool.pooled(resp, tx))),
                    None => return Poll::Ready(Ok(resp.map(Body::Incoming))),
                },
                Err(mut e) => match e.take_message() {
                    // Closed before the request went out: the request is intact and goes on
                    // another connection.
                    Some(unsent) => Box::pin(pool.clone().send_slow(unsent, false)),
                    None => return Poll::Ready(Err(SendError::Request(e.into_error()))),
                },
            },
        };
        self.set(PoolSend::Slow { fut: slow });
        self.poll(cx)
    }
}

/// How many times a request is moved to another connection when a pooled one turns out to
/// be closed before the request was written to it.
const MAX_UNSENT_RETRIES: usize = 3;

impl Pool {
    /// A pool for `upstream`; `open` counts its open connections.
    pub fn new(
        upstream: &Upstream,
        settings: &ClientSettings,
        limits: PoolLimits,
        open: IntGauge,
    ) -> Result<Self, ClientError> {
        let roots = crate::tls::root_store(settings.ca_file.as_deref())?;
        let cert = settings.client_cert.as_ref();
        let connector = make_connector(settings, tls_config(roots.clone(), cert)?, true);
        let upgrade_connector = make_connector(settings, tls_config(roots, cert)?, false);
        let mut h1 = http1::Builder::new();
        h1.writev(false);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        let authority_uri = Uri::builder()
            .scheme(upstream.scheme().clone())
            .authority(upstream.authority().clone())
            .path_and_query("/")
            .build()
            .map_err(|e| ClientError::Upstream(e.to_string()))?;
        let host = host_header(upstream).map_err(|e| ClientError::Upstream(e.to_string()))?;
        Ok(Pool {
            inner: Arc::new(Inner {
                connector,
                upgrade_connector,
                h1,
                h2,
                authority_uri,
                host,
                idle: Mutex::new(Vec::new()),
                shared_h2: Mutex::new(None),
                idle_timeout: settings.pool_idle_timeout,
                max_idle: limits.max_idle,
                limit: (limits.max_connections > 0)
                    .then(|| Arc::new(Semaphore::new(limits.max_connections))),
                waiters: Mutex::new(VecDeque::new()),
                growth: Growth::new(match limits.max_connections {
                    0 => FLOOR,
                    cap => FLOOR.min(cap),
                }),
                opening: AtomicUsize::new(0),
                pooled: Arc::new(AtomicUsize::new(0)),
                open,
                reaper: std::sync::Once::new(),
            }),
        })
    }

    /// Sends `req`, whose URI is the origin-form path and query, and returns the response.
    /// The `Host` header (HTTP/1.1) or `:authority` (HTTP/2) is the upstream's.
    ///
    /// An `upgrade` request (WebSocket) gets a fresh HTTP/1.1 connection of its own that
    /// is never pooled: after a `101` it belongs to the upgraded stream, and after any other
    /// answer it closes.
    pub fn send(
        &self,
        mut req: Request<Body>,
        upgrade: bool,
    ) -> PoolSend<
        impl Future<Output = Result<Response<Incoming>, TrySendError<Request<Body>>>> + Send,
    > {
        // The common case, polled in place: an idle HTTP/1.1 connection ready for the next
        // request. Everything else (connecting, HTTP/2, retries, upgrades) is a boxed future.
        if !upgrade {
            if let Some(mut tx) = self.inner.pop_ready() {
                req.headers_mut().insert(HOST, self.inner.host.clone());
                return PoolSend::Ready {
                    fut: tx.try_send_request(req),
                    tx: Some(tx),
                    pool: self.clone(),
                };
            }
        }
        PoolSend::Slow {
            fut: Box::pin(self.clone().send_slow(req, upgrade)),
        }
    }

    async fn send_slow(
        self,
        mut req: Request<Body>,
        upgrade: bool,
    ) -> Result<Response<Body>, SendError> {
        // Connecting is rare and its future large (it holds the TLS state).
        if upgrade {
            let mut tx = Box::pin(self.inner.connect_h1_for_upgrade()).await?;
            req.headers_mut().insert(HOST, self.inner.host.clone());
            // Not pooled, whatever the answer: a connection opened for an upgrade is outside
            // the pool's count and limit, and closes with its tunnel or its response.
            let resp = tx.send_request(req).await.map_err(SendError::Request)?;
            return Ok(resp.map(Body::Incoming));
        }
        let mut attempts = 0;
        loop {
            let (conn, reused) = self.inner.acquire().await?;
            let result = match conn {
                Conn::H2(tx) => return self.send_h2(tx, req).await,
                Conn::H1(tx) => self.send_h1(tx, req).await,
            };
            match result {
                Ok(resp) => return Ok(resp),
                // The pooled connection closed before the request went out: the request is
                // intact and can go on another connection.
                Err((e, Some(unsent))) if reused && attempts < MAX_UNSENT_RETRIES => {
                    tracing::trace!(error = %e, "pooled connection closed, retrying the request");
                    attempts += 1;
                    req = unsent;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    fn pooled(&self, resp: Response<Incoming>, tx: http1::SendRequest<Body>) -> Response<Body> {
        let (parts, body) = resp.into_parts();
        let pool: Weak<dyn Checkin> = Arc::downgrade(&self.inner) as Weak<dyn Checkin>;
        Response::from_parts(parts, Body::Pooled(PooledBody::new(body, tx, pool)))
    }

    async fn send_h1(
        &self,
        mut tx: http1::SendRequest<Body>,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, (SendError, Option<Request<Body>>)> {
        req.headers_mut().insert(HOST, self.inner.host.clone());
        match tx.try_send_request(req).await {
            Ok(resp) => Ok(self.pooled(resp, tx)),
            Err(mut e) => {
                let unsent = e.take_message();
                Err((SendError::Request(e.into_error()), unsent))
            }
        }
    }

    async fn send_h2(
        &self,
        mut tx: http2::SendRequest<Body>,
        req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        let (mut parts, body) = req.into_parts();
        parts.uri = absolute(&self.inner.authority_uri, parts.uri);
        let resp = tx
            .send_request(Request::from_parts(parts, body))
            .await
            .map_err(SendError::Request)?;
        Ok(resp.map(Body::Incoming))
    }
}

impl Inner {
    /// The most recently idle HTTP/1.1 connection if it is ready for a request now (and no
    /// HTTP/2 connection is shared).
    fn pop_ready(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().ok()?;
        let top = idle.last()?;
        // Expiry is the reaper's job: one clock read less per request.
        if top.tx.is_ready() {
            idle.pop().map(|i| i.tx)
        } else {
            None
        }
    }

    /// A connection for a request: a pooled one, else a new one, else (at the limit, or while
    /// [`Growth`] holds the pool back) the first to come back or room for a new one. `true`
    /// with a pooled connection.
    async fn acquire(self: &Arc<Self>) -> Result<(Conn, bool), SendError> {
        loop {
            if let Some(c) = self.checkout().await {
                return Ok((c, true));
            }
            if !self.growth.may_open(self.open_count()) {
                match self
                    .wait_for_return(self.growth.room(|| self.open_count()))
                    .await
                {
                    Waited::Conn(c) => return Ok((c, true)),
                    Waited::Other(()) | Waited::Again => continue,
                }
            }
            let permit = match &self.limit {
                None => None,
                Some(limit) => match limit.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => match self.wait_for_return(limit.clone().acquire_owned()).await {
                        Waited::Conn(c) => return Ok((c, true)),
                        Waited::Other(Ok(p)) => Some(p),
                        // The semaphore is never closed; look again.
                        Waited::Other(Err(_)) | Waited::Again => continue,
                    },
                },
            };
            // Counted from now on, so that a burst of requests does not all see the same
            // count while their connections are being established. Not while waiting for a
            // permit above: those requests open nothing until a connection closes, and
            // counted they would make a pool at its limit look larger than its floor (and
            // shrink it while the runtime is saturated, each connection closed reopened at
            // once by a request holding its permit).
            let _opening = Opening::new(&self.opening);
            return Ok((Box::pin(self.connect(permit)).await?, false));
        }
    }

    /// Queues the request for the next connection that comes back ([`Inner::checkin`]) and
    /// waits for it, or for `other`, whichever is first.
    async fn wait_for_return<T>(self: &Arc<Self>, other: impl Future<Output = T>) -> Waited<T> {
        let (handoff, handed) = oneshot::channel();
        self.queue(handoff);
        let mut handed = Handed {
            pool: self,
            rx: handed,
        };
        // One may have come back before this request queued up.
        if let Some(c) = self.checkout().await {
            return Waited::Conn(c);
        }
        tokio::select! {
            biased;
            tx = &mut handed.rx => {
                if let Ok(mut tx) = tx {
                    if tx.ready().await.is_ok() {
                        return Waited::Conn(Conn::H1(tx));
                    }
                }
                Waited::Again
            }
            other = other => Waited::Other(other),
        }
    }

    fn queue(&self, handoff: oneshot::Sender<http1::SendRequest<Body>>) {
        if let Ok(mut waiters) = self.waiters.lock() {
            // Requests that got room for a new connection instead leave their entry behind;
            // swept now and then.
            if waiters.len() >= 64 && waiters.len().is_power_of_two() {
                waiters.retain(|w| !w.handoff.is_closed());
            }
            waiters.push_back(Waiter {
                handoff,
                since: Instant::now(),
            });
        }
    }

    /// A usable pooled connection: the shared HTTP/2 one, else the most recently idle HTTP/1.1.
    async fn checkout(self: &Arc<Self>) -> Option<Conn> {
        if let Ok(h2) = self.shared_h2.lock() {
            if let Some(tx) = h2.as_ref().filter(|tx| !tx.is_closed()) {
                return Some(Conn::H2(tx.clone()));
            }
        }
        loop {
            let idle = self.idle.lock().ok()?.pop()?;
            let mut tx = idle.tx;
            // Expiry is the reaper's job, as on the fast path.
            if tx.is_closed() {
                continue;
            }
            // A connection is returned as soon as its response body has been read; its task
            // may not have asked for the next request yet. `ready` waits for that, or fails
            // when the connection is closing.
            if tx.ready().await.is_ok() {
                return Some(Conn::H1(tx));
            }
        }
    }

    /// Connections that carry requests open now or being opened (upgraded ones aside: with
    /// as many WebSockets open as the floor, a pool that counted them could neither open a
    /// connection nor keep one while the runtime is saturated).
    fn open_count(&self) -> usize {
        self.pooled.load(Ordering::Relaxed) + self.opening.load(Ordering::Relaxed)
    }

    fn checkin(self: &Arc<Self>, mut tx: http1::SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        if let Ok(mut waiters) = self.waiters.lock() {
            while let Some(w) = waiters.front() {
                // That request has gone (or got a new connection).
                if w.handoff.is_closed() {
                    waiters.pop_front();
                    continue;
                }
                // Requests wait while the runtime has no time to spare and connections come
                // back often: this one does not help them, dropping it (closing it) makes the
                // pool smaller.
                if self.growth.should_shrink(self.open_count()) {
                    return;
                }
                let Some(w) = waiters.pop_front() else { break };
                match w.handoff.send(tx) {
                    Ok(()) => {
                        self.growth.waited(w.since.elapsed());
                        return;
                    }
                    Err(back) => tx = back,
                }
            }
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.len() >= self.max_idle {
            return;
        }
        idle.push(Idle {
            tx,
            since: Instant::now(),
        });
        drop(idle);
        self.reaper
            .call_once(|| spawn_reaper(Arc::downgrade(self), self.idle_timeout));
    }

    async fn open(&self, connector: &Connector) -> Result<Io, SendError> {
        connector
            .clone()
            .call(self.authority_uri.clone())
            .await
            .map_err(SendError::Connect)
    }

    /// Opens a connection; HTTP/2 when ALPN says so (it then becomes the shared one).
    async fn connect(
        self: &Arc<Self>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Conn, SendError> {
        let io = self.open(&self.connector).await?;
        let held = Held::new(permit, &self.open, Some(&self.pooled));
        if io.connected().is_negotiated_h2() {
            let (tx, conn) = self
                .h2
                .handshake(io)
                .await
                .map_err(|e| SendError::Connect(Box::new(e)))?;
            spawn_connection(conn, held);
            let shared = self.shared_h2.lock().is_ok_and(|mut shared| {
                let vacant = shared.as_ref().is_none_or(|s| s.is_closed());
                if vacant {
                    *shared = Some(tx.clone());
                }
                vacant
            });
            if shared {
                // Requests held back by the growth rule wait for a window with room, which
                // may not come while the runtime is saturated: this connection carries them.
                self.growth.wake();
            }
            return Ok(Conn::H2(tx));
        }
        let (tx, conn) = self.handshake_h1(io).await?;
        spawn_connection(conn, held);
        Ok(Conn::H1(tx))
    }

    /// The HTTP/1.1 handshake on a freshly opened connection.
    async fn handshake_h1(
        &self,
        io: Io,
    ) -> Result<(http1::SendRequest<Body>, http1::Connection<Io, Body>), SendError> {
        self.h1
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(Box::new(e)))
    }

    async fn connect_h1_for_upgrade(&self) -> Result<http1::SendRequest<Body>, SendError> {
        let io = self.open(&self.upgrade_connector).await?;
        let (tx, conn) = self.handshake_h1(io).await?;
        spawn_connection(conn.with_upgrades(), Held::new(None, &self.open, None));
        Ok(tx)
    }
}

/// Runs an upstream connection until it closes, then gives back what it `held`. Not in the
/// app's task tracker, on purpose: an idle pooled connection lives until its idle timeout, and
/// shutdown must not wait for it; the requests it carries are what shutdown waits for.
fn spawn_connection<F>(conn: F, held: Held)
where
    F: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
        drop(held);
    });
}

/// Closes idle connections older than `timeout`, checking every `timeout / 4` (at least 1 s),
/// until the pool is dropped (it ends with the pool, not with shutdown).
fn spawn_reaper(pool: Weak<Inner>, timeout: Duration) {
    let period = (timeout / 4).max(Duration::from_secs(1));
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(pool) = pool.upgrade() else { return };
            let expired: Vec<Idle> = match pool.idle.lock() {
                Ok(mut idle) => {
                    let now = Instant::now();
                    // Oldest at the bottom of the stack.
                    let keep_from = idle
                        .iter()
                        .position(|i| !i.tx.is_closed() && now.duration_since(i.since) <= timeout)
                        .unwrap_or(idle.len());
                    let mut rest = idle.split_off(keep_from);
                    rest.retain(|i| !i.tx.is_closed());
                    std::mem::replace(&mut *idle, rest)
                }
                Err(_) => return,
            };
            // Dropping the senders lets each connection's task close its socket.
            drop(expired);
        }
    });
}

impl Checkin for Inner {
    fn give_back(self: Arc<Self>, tx: Option<http1::SendRequest<Body>>) {
        self.growth.returned();
        if let Some(tx) = tx {
            self.checkin(tx);
        }
    }
}

fn make_connector(settings: &ClientSettings, tls: rustls::ClientConfig, h2: bool) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1();
    if h2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.wrap_connector(http)
    }
}

/// `Host` as HTTP/1.1 clients send it: the host, and the port unless it is the scheme's default.
fn host_header(upstream: &Upstream) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let auth = upstream.authority();
    let default = if upstream.is_https() { 443 } else { 80 };
    match auth.port_u16() {
        Some(p) if p != default => HeaderValue::from_str(&format!("{}:{p}", auth.host())),
        _ => HeaderValue::from_str(auth.host()),
    }
}

/// The absolute-form URI HTTP/2 needs (`:scheme`, `:authority`, `:path`).
fn absolute(base: &Uri, origin: Uri) -> Uri {
    let mut parts = origin.into_parts();
    parts.scheme = base.scheme().cloned();
    parts.authority = base.authority().cloned();
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt as _;
    use tokio::net::TcpListener;

    /// A pool for a listener that accepts connections into its backlog and never reads: enough
    /// for HTTP/1.1 connections that are open and ready for a request.
    async fn pool(max_connections: usize) -> (Pool, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Upstream::parse(&format!("http://{}", listener.local_addr().unwrap()));
        let pool = Pool::new(
            &upstream.unwrap(),
            &ClientSettings {
                connect_timeout: Duration::from_secs(5),
                pool_idle_timeout: Duration::from_secs(90),
                ca_file: None,
                client_cert: None,
            },
            PoolLimits {
                max_idle: 8,
                max_connections,
            },
            IntGauge::new("upstream_connections", "test").unwrap(),
        )
        .unwrap();
        (pool, listener)
    }

    async fn opened(inner: &Arc<Inner>) -> http1::SendRequest<Body> {
        match inner.acquire().await {
            Ok((Conn::H1(tx), false)) => tx,
            _ => panic!("a new HTTP/1.1 connection"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_handed_to_a_request_that_stopped_waiting_goes_back_to_the_pool() {
        let (pool, _listener) = pool(0).await;
        let inner = &pool.inner;
        let tx = opened(inner).await;
        let mut waiting = Box::pin(inner.wait_for_return(std::future::pending::<()>()));
        assert!(waiting.as_mut().now_or_never().is_none());
        inner.checkin(tx);
        assert_eq!(
            inner.idle.lock().unwrap().len(),
            0,
            "handed to the waiting request"
        );
        // It stops waiting before it takes the connection: it got room or a permit to open
        // one at the same time on another worker, or its app went away.
        drop(waiting);
        assert_eq!(
            inner.idle.lock().unwrap().len(),
            1,
            "the connection went back to the pool instead of being closed"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_that_comes_back_to_a_waiting_request_tells_how_long_it_waited() {
        let (pool, _listener) = pool(0).await;
        let inner = &pool.inner;
        let tx = opened(inner).await;
        let mut waiting = Box::pin(inner.wait_for_return(std::future::pending::<()>()));
        assert!(waiting.as_mut().now_or_never().is_none());
        let wait = Duration::from_millis(20);
        tokio::time::sleep(wait).await;
        inner.checkin(tx);
        assert!(
            inner.growth.longest_wait() >= wait,
            "counted {:?}",
            inner.growth.longest_wait()
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn requests_waiting_for_a_permit_are_not_counted_as_opening_connections() {
        let (pool, _listener) = pool(1).await;
        let inner = &pool.inner;
        let _tx = opened(inner).await;
        assert_eq!(inner.open_count(), 1);
        let mut waiting = Box::pin(inner.acquire());
        assert!(waiting.as_mut().now_or_never().is_none(), "at the limit");
        assert_eq!(inner.open_count(), 1, "one open, none being opened");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_whose_upgrade_was_refused_is_not_pooled() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (pool, listener) = pool(0).await;
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
                .await;
            let _ = s.read(&mut buf).await;
        });
        let req = Request::get("/ws")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Body::Empty)
            .unwrap();
        let resp = pool.send(req, true).await.unwrap();
        assert_eq!(resp.status(), 401);
        let body = resp.into_body();
        drop(body);
        assert_eq!(
            pool.inner.idle.lock().unwrap().len(),
            0,
            "a connection outside the pool's count stays out of it"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn upgraded_connections_are_not_counted_by_the_growth_rule() {
        let (pool, _listener) = pool(0).await;
        let inner = &pool.inner;
        let _upgrade = inner.connect_h1_for_upgrade().await.unwrap();
        assert_eq!(inner.open.get(), 1, "in the gauge");
        assert_eq!(inner.open_count(), 0, "not in what the pool counts");
    }
}
