//! Accept loops: hyper's HTTP/1.1 and HTTP/2 (h2c) server connections, header-read timeout,
//! graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::Body;

/// Connection-level limits of a listener.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Time a client has to send a request's headers; on HTTP/1 keep-alive connections it also
    /// bounds the idle time between requests.
    pub header_read_timeout: Duration,
    /// The largest header block hyper itself reads (the route's own, smaller limit answers 431
    /// with the sidecar's JSON body; hyper's own answer is a bare 431).
    pub max_header_bytes: usize,
}

/// How a listener's connections are served, per protocol.
#[derive(Debug, Clone)]
pub struct ConnBuilder {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

/// Builds the connection builder for a listener.
pub fn builder(settings: &ListenerSettings) -> ConnBuilder {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        // One buffer and one send(2) per response head and small body, rather than writev(2).
        .writev(false)
        // The route counts every header as at least 32 bytes, so a request with more headers
        // than this is over its limit anyway: hyper's count limit (answered with a bare 431)
        // must not undercut the route's byte limit (answered with the sidecar's JSON).
        .max_headers((settings.max_header_bytes / 64 + 1).max(100))
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(settings.max_header_bytes.min(u32::MAX as usize) as u32)
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    ConnBuilder { h1, h2 }
}

/// The HTTP/2 connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a client speaks, told from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Waits, within `limit`, until the client has sent enough to tell HTTP/1 from HTTP/2: a first
/// byte that is not the HTTP/2 preface's, or the whole preface. hyper's header-read timeout
/// only starts once a request begins, so without this a client that sends nothing (or
/// dribbles the preface) would hold its connection forever. `None`: the client closed, failed
/// or took too long.
async fn wait_for_protocol(stream: &tokio::net::TcpStream, limit: Duration) -> Option<Protocol> {
    let known = async {
        let mut buf = [0u8; 24];
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) if buf[..n] != H2_PREFACE[..n] => return Some(Protocol::Http1),
                Ok(n) if n >= H2_PREFACE.len() => return Some(Protocol::Http2),
                // Part of the preface: peek returns at once while bytes are buffered, so
                // look again shortly for the rest.
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    tokio::time::timeout(limit, known).await.ok().flatten()
}

/// Drives a connection; once `shutdown` fires, lets it finish its in-flight requests.
/// (`graceful` is the connection type's `graceful_shutdown`.)
async fn drive<C, E, G>(conn: C, graceful: G, shutdown: CancellationToken, peer: SocketAddr)
where
    C: Future<Output = Result<(), E>>,
    G: FnOnce(Pin<&mut C>),
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let result = tokio::select! {
        biased;
        r = conn.as_mut() => r,
        () = shutdown.cancelled() => {
            graceful(conn.as_mut());
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::trace!(error = %e, %peer, "connection ended with an error");
    }
}

/// Serves `listener` until `shutdown` fires, then lets open connections finish their
/// in-flight requests (bounded by the caller). `make` builds the request handler of each
/// connection from the peer's address; handlers never fail (`Infallible`): every problem is
/// a response.
pub async fn serve<M, H, F>(
    listener: TcpListener,
    builder: ConnBuilder,
    first_bytes_timeout: Duration,
    make: M,
    open: IntGauge,
    shutdown: CancellationToken,
) where
    M: Fn(SocketAddr) -> H,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = make(peer);
        // The handler's future goes to hyper as it is: no wrapping future to move around.
        let service = hyper::service::service_fn(handler);
        let builder = builder.clone();
        let open = open.clone();
        let shutdown = shutdown.clone();
        open.inc();
        connections.spawn(async move {
            match wait_for_protocol(&stream, first_bytes_timeout).await {
                Some(Protocol::Http1) => {
                    let conn = builder
                        .h1
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    drive(conn, |c| c.graceful_shutdown(), shutdown, peer).await;
                }
                Some(Protocol::Http2) => {
                    let conn = builder.h2.serve_connection(TokioIo::new(stream), service);
                    drive(conn, |c| c.graceful_shutdown(), shutdown, peer).await;
                }
                None => {}
            }
            open.dec();
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
