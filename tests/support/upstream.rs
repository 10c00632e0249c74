//! A fake upstream that records every request it receives and answers by path.
//!
//! A hyper 1.x server (hyper-util auto builder: HTTP/1.1 and h2c, or h2 and HTTP/1.1 by ALPN
//! over TLS) on `127.0.0.1:0`. The endpoint is chosen by the first path segment that names one,
//! so the same endpoints work under a base path (`/base/status/418`):
//!
//! | segment | answer |
//! |---|---|
//! | `status/N` | status `N` |
//! | `slow?ms=N` | 200 after `N` ms |
//! | `hold` | 200 once the test calls [`Upstream::release_hold`] |
//! | `slow-download?chunks=N&size=S&delay_ms=D` | `N` chunks of `S` bytes, `D` ms apart; the last one only after [`Upstream::release_download`] |
//! | `large-download?size=N` | `N` bytes streamed in 64 KiB chunks |
//! | `upload` | `{"len": .., "hash": ..}` of the request body |
//! | `resp-hop` | 200 with hop-by-hop response headers |
//! | `ws` | a WebSocket echo server |
//! | anything else | 200, echoing the request body |

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::client::{full, BoxError, TestBody};
use super::{pattern, Fnv};

/// Bodies up to this size are kept in the record (and echoed).
const KEEP_BODY: u64 = 1024 * 1024;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: Method,
    /// Request target as received.
    pub uri: Uri,
    /// HTTP version.
    pub version: Version,
    /// Every header, repeated ones included.
    pub headers: HeaderMap,
    /// Body length.
    pub body_len: u64,
    /// FNV-1a of the body.
    pub body_hash: u64,
    /// The body, when at most 1 MiB.
    pub body: Bytes,
    /// When the request's body had been read.
    pub at: Instant,
}

impl Recorded {
    /// Every value of header `name`, as text.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The only value of header `name`; panics when it appears more than once.
    pub fn header(&self, name: &str) -> Option<String> {
        let mut v = self.header_values(name);
        assert!(v.len() <= 1, "header {name} appears {} times", v.len());
        v.pop()
    }

    /// Path and query as received.
    pub fn path_and_query(&self) -> String {
        self.uri
            .path_and_query()
            .map_or_else(|| self.uri.path().to_owned(), |p| p.as_str().to_owned())
    }
}

struct State {
    requests: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
    tls_failures: AtomicUsize,
    download_chunks_sent: AtomicUsize,
    download_release: watch::Sender<bool>,
    hold_release: watch::Sender<bool>,
}

/// A running fake upstream; stops accepting when dropped.
pub struct Upstream {
    /// The bound address.
    pub addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Plain HTTP (HTTP/1.1 and h2c).
    pub async fn start() -> Self {
        Self::start_inner(None).await
    }

    /// HTTPS with `config` (ALPN as configured).
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> Self {
        Self::start_inner(Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn start_inner(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            tls_failures: AtomicUsize::new(0),
            download_chunks_sent: AtomicUsize::new(0),
            download_release: watch::channel(false).0,
            hold_release: watch::channel(false).0,
        });
        let is_tls = tls.is_some();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _peer)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                let counters = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(st, req).await) }
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder.http1().max_headers(4096);
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(s) => {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(s), service)
                                    .await;
                            }
                            Err(_) => {
                                counters.tls_failures.fetch_add(1, Ordering::SeqCst);
                            }
                        },
                    }
                });
            }
        });
        Upstream {
            addr,
            tls: is_tls,
            state,
            task,
        }
    }

    /// `http(s)://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// How many requests were received.
    pub fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// The last request received; panics when there is none.
    pub fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed.
    pub fn tls_failures(&self) -> usize {
        self.state.tls_failures.load(Ordering::SeqCst)
    }

    /// Chunks of `slow-download` bodies sent so far.
    pub fn download_chunks_sent(&self) -> usize {
        self.state.download_chunks_sent.load(Ordering::SeqCst)
    }

    /// Lets `slow-download` send its last chunk.
    pub fn release_download(&self) {
        self.state.download_release.send_replace(true);
    }

    /// Lets `hold` requests answer.
    pub fn release_hold(&self) {
        self.state.hold_release.send_replace(true);
    }
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect::<HashMap<_, _>>()
        })
        .unwrap_or_default()
}

fn num(q: &HashMap<String, String>, k: &str, default: u64) -> u64 {
    q.get(k).and_then(|v| v.parse().ok()).unwrap_or(default)
}

const ENDPOINTS: [&str; 9] = [
    "status",
    "slow",
    "hold",
    "slow-download",
    "large-download",
    "upload",
    "resp-hop",
    "ws",
    "echo",
];

/// The endpoint named by the path and the segment after it.
fn endpoint(path: &str) -> (&str, Option<&str>) {
    let segs: Vec<&str> = path.split('/').collect();
    for (i, s) in segs.iter().enumerate() {
        if ENDPOINTS.contains(s) {
            return (s, segs.get(i + 1).copied());
        }
    }
    ("echo", None)
}

fn response(status: u16, body: TestBody) -> Response<TestBody> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("x-upstream", http::HeaderValue::from_static("fake"));
    r
}

/// A body fed by a spawned producer.
fn produced_body() -> (
    tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    TestBody,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (tx, BodyExt::boxed(StreamBody::new(stream)))
}

async fn handle(st: Arc<State>, mut req: Request<Incoming>) -> Response<TestBody> {
    let (name, arg) = {
        let (n, a) = endpoint(req.uri().path());
        (n.to_owned(), a.map(str::to_owned))
    };
    let q = query(req.uri());

    if name == "ws" && req.headers().contains_key("sec-websocket-key") {
        return websocket(st, &mut req);
    }

    // Read (and hash) the whole body first, then record.
    let (parts, mut body) = req.into_parts();
    let mut len = 0u64;
    let mut hash = Fnv::default();
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return response(400, full("request body broken"));
        };
        if let Ok(data) = frame.into_data() {
            len += data.len() as u64;
            hash.update(&data);
            if len <= KEEP_BODY {
                kept.extend_from_slice(&data);
            }
        }
    }
    if len > KEEP_BODY {
        kept.clear();
    }
    st.requests.lock().unwrap().push(Recorded {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body_len: len,
        body_hash: hash.0,
        body: Bytes::from(kept.clone()),
        at: Instant::now(),
    });

    match name.as_str() {
        "status" => {
            let code = arg.and_then(|a| a.parse().ok()).unwrap_or(200);
            response(code, full(format!("status {code}")))
        }
        "slow" => {
            tokio::time::sleep(Duration::from_millis(num(&q, "ms", 1000))).await;
            response(200, full("slow"))
        }
        "hold" => {
            let mut rx = st.hold_release.subscribe();
            let _ = rx.wait_for(|released| *released).await;
            response(200, full("released"))
        }
        "slow-download" => {
            let chunks = num(&q, "chunks", 10).max(1);
            let size = num(&q, "size", 1024) as usize;
            let delay = Duration::from_millis(num(&q, "delay_ms", 20));
            let (tx, body) = produced_body();
            let st2 = st.clone();
            tokio::spawn(async move {
                for i in 0..chunks {
                    if i > 0 {
                        tokio::time::sleep(delay).await;
                    }
                    if i == chunks - 1 {
                        let mut rx = st2.download_release.subscribe();
                        let _ = rx.wait_for(|released| *released).await;
                    }
                    if tx
                        .send(Ok(Frame::data(Bytes::from(pattern(7, i, size)))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    st2.download_chunks_sent.fetch_add(1, Ordering::SeqCst);
                }
            });
            let mut r = response(200, body);
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        "large-download" => {
            let size = num(&q, "size", 8 * 1024 * 1024);
            let (tx, body) = produced_body();
            tokio::spawn(async move {
                let chunk = 64 * 1024u64;
                let mut sent = 0u64;
                let mut i = 0u64;
                while sent < size {
                    let n = chunk.min(size - sent);
                    if tx
                        .send(Ok(Frame::data(Bytes::from(pattern(11, i, n as usize)))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    sent += n;
                    i += 1;
                }
            });
            let mut r = response(200, body);
            r.headers_mut()
                .insert("content-length", http::HeaderValue::from(size));
            r
        }
        "upload" => {
            let body = serde_json::json!({ "len": len, "hash": hash.0.to_string() }).to_string();
            response(200, full(body))
        }
        "resp-hop" => {
            let mut r = response(200, full("hop"));
            let h = r.headers_mut();
            h.insert("connection", "x-resp-hop".parse().unwrap());
            h.insert("x-resp-hop", "secret-hop".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("proxy-authenticate", "Basic realm=\"x\"".parse().unwrap());
            h.insert("x-resp-keep", "kept".parse().unwrap());
            r
        }
        _ => response(200, full(kept)),
    }
}

fn websocket(st: Arc<State>, req: &mut Request<Incoming>) -> Response<TestBody> {
    st.requests.lock().unwrap().push(Recorded {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
        body_len: 0,
        body_hash: Fnv::default().0,
        body: Bytes::new(),
        at: Instant::now(),
    });
    let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    return;
                }
            } else if msg.is_close() {
                let _ = ws.close(None).await;
                return;
            }
        }
    });
    let mut r = response(101, full(Bytes::new()));
    let h = r.headers_mut();
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("connection", "upgrade".parse().unwrap());
    h.insert(
        "sec-websocket-accept",
        derive_accept_key(&key).parse().unwrap(),
    );
    r
}
