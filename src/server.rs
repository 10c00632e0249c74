//! Accept loops: hyper's HTTP/1.1 and HTTP/2 (h2c) server connections, a cap on open
//! connections, header-read timeout, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
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
    /// with the sidecar's JSON body; hyper's own answer is a bare 431). Also what one
    /// connection's read buffer may grow to while a request head arrives.
    pub max_header_bytes: usize,
}

/// How many connections a listener holds open at once, and where refusals are counted.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    /// Connections open at once, at most; a connection accepted beyond it is closed at once.
    pub max: usize,
    /// `token_sidecar_open_connections{listener}`.
    pub open: IntGauge,
    /// `token_sidecar_connections_rejected_total{listener}`.
    pub rejected: IntCounter,
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

/// The two protocols a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// What a client speaks, and what was read of it to tell.
enum Detected {
    /// HTTP/1, nothing read from the socket yet.
    Http1,
    /// HTTP/2, the preface still on the socket.
    Http2,
    /// HTTP/1 or HTTP/2 whose first bytes had to be read from the socket (they arrived in
    /// pieces that began like the HTTP/2 preface): they are replayed to the server.
    Prefixed(Protocol, Bytes),
}

/// Waits, within `limit`, until the client has sent enough to tell HTTP/1 from HTTP/2: a first
/// byte that is not the HTTP/2 preface's, or the whole preface. hyper's header-read timeout
/// only starts once a request begins, so without this a client that sends nothing (or
/// dribbles the preface) would hold its connection forever. `None`: the client closed, failed
/// or took too long.
///
/// Every wait is for the socket to become readable, never a timer: a connection that sends
/// nothing, or stops partway through the preface, costs no CPU until its deadline. (A peek
/// returns at once while bytes are buffered, so once part of the preface is there, the bytes
/// are read and kept instead of peeked again.)
async fn detect(stream: &mut TcpStream, limit: Duration) -> Option<Detected> {
    let known = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(Detected::Http1);
        }
        if n == H2_PREFACE.len() {
            return Some(Detected::Http2);
        }
        let mut got = 0;
        loop {
            let m = stream.read(&mut buf[got..]).await.ok()?;
            if m == 0 {
                return None;
            }
            got += m;
            let prefix = Bytes::copy_from_slice(&buf[..got]);
            if buf[..got] != H2_PREFACE[..got] {
                // `P`, then `OST /...`: an HTTP/1 request that arrived in pieces.
                return Some(Detected::Prefixed(Protocol::Http1, prefix));
            }
            if got == H2_PREFACE.len() {
                return Some(Detected::Prefixed(Protocol::Http2, prefix));
            }
        }
    };
    tokio::time::timeout(limit, known).await.ok().flatten()
}

pin_project_lite::pin_project! {
    /// A stream whose first bytes were already read: they are returned first.
    struct Rewind {
        prefix: Bytes,
        #[pin]
        inner: TcpStream,
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
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
/// connection from the peer's address and the local address it was accepted on; handlers
/// never fail (`Infallible`): every problem is a response.
pub async fn serve<M, H, F>(
    listener: TcpListener,
    builder: ConnBuilder,
    first_bytes_timeout: Duration,
    make: M,
    limit: ConnectionLimit,
    shutdown: CancellationToken,
) where
    M: Fn(SocketAddr, IpAddr) -> H,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limit.max));
    // A listener on one address is reached on that address; one on 0.0.0.0 or [::] asks the
    // kernel for each connection's.
    let bound = listener
        .local_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
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
        // Over the cap, the connection is closed before anything is read or allocated for it.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            limit.rejected.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let local = if bound.is_unspecified() {
            stream.local_addr().map_or(bound, |a| a.ip())
        } else {
            bound
        };
        let handler = make(peer, local);
        // The handler's future goes to hyper as it is: no wrapping future to move around.
        let service = hyper::service::service_fn(handler);
        let builder = builder.clone();
        let open = limit.open.clone();
        let shutdown = shutdown.clone();
        open.inc();
        connections.spawn(async move {
            let mut stream = stream;
            match detect(&mut stream, first_bytes_timeout).await {
                Some(Detected::Http1) => serve_h1(&builder, stream, service, shutdown, peer).await,
                Some(Detected::Http2) => serve_h2(&builder, stream, service, shutdown, peer).await,
                Some(Detected::Prefixed(protocol, prefix)) => {
                    let stream = Rewind {
                        prefix,
                        inner: stream,
                    };
                    match protocol {
                        Protocol::Http1 => {
                            serve_h1(&builder, stream, service, shutdown, peer).await
                        }
                        Protocol::Http2 => {
                            serve_h2(&builder, stream, service, shutdown, peer).await
                        }
                    }
                }
                None => {}
            }
            open.dec();
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

async fn serve_h1<I, S>(
    builder: &ConnBuilder,
    io: I,
    service: S,
    shutdown: CancellationToken,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder
        .h1
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    drive(conn, |c| c.graceful_shutdown(), shutdown, peer).await;
}

async fn serve_h2<I, S>(
    builder: &ConnBuilder,
    io: I,
    service: S,
    shutdown: CancellationToken,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.h2.serve_connection(TokioIo::new(io), service);
    drive(conn, |c| c.graceful_shutdown(), shutdown, peer).await;
}
