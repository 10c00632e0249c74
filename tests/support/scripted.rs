//! A raw TCP server whose every connection is handled by a test's own script: for upstreams
//! and token endpoints that misbehave below HTTP (resets mid-body, late answers, redirects,
//! bodies no HTTP library would write).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running scripted server; stops accepting when dropped.
pub struct Scripted {
    /// The bound address.
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a script gets: the connection, its index (0 for the first), and a log of request
/// heads the script may push to (see [`read_request`]).
pub struct Accepted {
    /// The connection.
    pub stream: TcpStream,
    /// 0 for the first connection accepted.
    pub index: usize,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Accepted {
    /// Reads one request (head and body) and records its head.
    pub async fn read_request(&mut self) -> Option<(String, Vec<u8>)> {
        let r = read_request(&mut self.stream).await?;
        self.requests.lock().unwrap().push(r.0.clone());
        Some(r)
    }
}

impl Scripted {
    /// Starts a server on `127.0.0.1:0`; `script` runs for every accepted connection.
    pub async fn start<F, Fut>(script: F) -> Scripted
    where
        F: Fn(Accepted) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let (c, r) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let index = c.fetch_add(1, Ordering::SeqCst);
                let script = script.clone();
                let requests = r.clone();
                tokio::spawn(async move {
                    script(Accepted {
                        stream,
                        index,
                        requests,
                    })
                    .await
                });
            }
        });
        Scripted {
            addr,
            connections,
            requests,
            task,
        }
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Request heads read through [`Accepted::read_request`].
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Reads one HTTP/1.1 request: its head (up to the blank line, as text) and its body
/// (`Content-Length` or chunked). `None` when the peer closes first.
pub async fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let lower = head.to_ascii_lowercase();
    let header = |name: &str| {
        lower
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    if let Some(len) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        return Some((head, rest));
    }
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        // Read until the last chunk; the body is returned still chunked-encoded.
        while !rest.windows(5).any(|w| w == b"0\r\n\r\n") {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        return Some((head, rest));
    }
    Some((head, Vec::new()))
}
