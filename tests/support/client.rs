//! Clients playing the app: a pooled hyper client (HTTP/1.1 or h2c prior knowledge) and a raw
//! HTTP/1.1 writer for requests no well-behaved client would send.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The boxed error of test bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of the test clients and the fake upstream.
pub type TestBody = BoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> TestBody {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed()
}

/// A body held in memory.
pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A body streamed from a channel (chunks sent by the caller as it likes).
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
    });
    (tx, StreamBody::new(stream).boxed())
}

/// A response with its body collected.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// HTTP version of the response.
    pub version: Version,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Resp {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts this is the sidecar's own answer of `kind` with `status`.
    pub fn assert_sidecar_error(&self, status: u16, kind: &str) {
        super::assert_sidecar_error(self.status, &self.headers, &self.body, status, kind);
    }
}

/// A pooled client.
#[derive(Clone, Debug)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, TestBody>,
}

impl Client {
    /// HTTP/1.1.
    pub fn http1() -> Self {
        Client {
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .build(HttpConnector::new()),
        }
    }

    /// HTTP/2 with prior knowledge over cleartext (h2c).
    pub fn h2c() -> Self {
        Client {
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(HttpConnector::new()),
        }
    }

    /// GET `url`.
    pub async fn get(&self, url: &str) -> Resp {
        self.send(Request::get(url).body(empty()).unwrap()).await
    }

    /// GET `url` with extra headers.
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = Request::get(url).body(empty()).unwrap();
        for (k, v) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        self.send(req).await
    }

    /// Sends `req` and collects the response.
    pub async fn send(&self, req: Request<TestBody>) -> Resp {
        let resp = self.send_streaming(req).await;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
            .await
            .expect("response body within 30s")
            .expect("response body")
            .to_bytes();
        Resp {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body,
        }
    }

    /// Sends `req` and returns the response with its body still streaming.
    pub async fn send_streaming(&self, req: Request<TestBody>) -> Response<Incoming> {
        let what = format!("{} {}", req.method(), req.uri());
        tokio::time::timeout(Duration::from_secs(30), self.inner.request(req))
            .await
            .unwrap_or_else(|_| panic!("no response within 30s to {what}"))
            .unwrap_or_else(|e| panic!("request {what} failed: {e:?}"))
    }

    /// Sends `req` and returns the client's error, if any.
    pub async fn try_send(
        &self,
        req: Request<TestBody>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.inner.request(req).await
    }
}

/// A response read off the wire by [`raw_request`].
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Asserts this is the sidecar's own answer of `kind` with `status`.
    pub fn assert_sidecar_error(&self, status: u16, kind: &str) {
        super::assert_sidecar_error(self.status, &self.headers, &self.body, status, kind);
    }
}

/// Writes `request` verbatim to `addr` and reads the response until the server closes the
/// connection (send `Connection: close`).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write request");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(r) = parse_complete(&buf, false) {
                        return r;
                    }
                }
            }
        }
        parse_complete(&buf, true)
            .unwrap_or_else(|| panic!("incomplete response: {:?}", String::from_utf8_lossy(&buf)))
    })
    .await;
    read.unwrap_or_else(|_| panic!("no complete response within 20s"))
}

/// Parses one complete response from `buf`, or `None` when more bytes are needed. At `eof`, a
/// body without a length ends where the bytes end.
fn parse_complete(buf: &[u8], eof: bool) -> Option<RawResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).expect("response head is text");
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = HeaderMap::new();
    for l in lines {
        let (k, v) = l.split_once(':')?;
        headers.append(
            HeaderName::from_bytes(k.trim().as_bytes()).ok()?,
            HeaderValue::from_str(v.trim()).ok()?,
        );
    }
    let rest = &buf[end + 4..];
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_str().unwrap_or("").contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if rest.len() < len {
            return None;
        }
        rest[..len].to_vec()
    } else if status == 101 || status == 204 || status == 304 {
        Vec::new()
    } else if eof {
        rest.to_vec()
    } else {
        // Read until close: only complete at EOF.
        return None;
    };
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}
