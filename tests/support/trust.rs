//! Helpers of the trust tests (issue 15): many raw connections held open at once, the CPU time
//! and peak RSS of a process, a raw HTTP/1 exchange that reports what happened instead of
//! panicking, and a list of checks that are all evaluated and reported together.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::{procfs, MARKER};

// ---------------------------------------------------------------------------------------------
// Findings
// ---------------------------------------------------------------------------------------------

/// Checks that are all evaluated: the test fails at [`Findings::finish`] with every check that
/// did not hold, so one run tells everything that is wrong, not only the first thing.
#[derive(Debug, Default)]
pub struct Findings {
    failed: Vec<String>,
}

impl Findings {
    /// No failed check yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `what` as failed unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failed.push(what.into());
        }
    }

    /// Records a failed check.
    pub fn fail(&mut self, what: impl Into<String>) {
        self.failed.push(what.into());
    }

    /// Records `problem` when there is one.
    pub fn problem(&mut self, problem: Option<String>) {
        if let Some(p) = problem {
            self.failed.push(p);
        }
    }

    /// Panics listing every failed check (nothing happens when all held).
    #[track_caller]
    pub fn finish(self, context: &str) {
        if !self.failed.is_empty() {
            panic!(
                "{context}: {} check(s) failed:\n  - {}",
                self.failed.len(),
                self.failed.join("\n  - ")
            );
        }
    }
}

/// Polls `cond` every 10 ms until it holds (`true`) or `deadline` passes (`false`): for a
/// condition whose failure is one finding among others rather than the end of the test.
pub async fn holds_within(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The process
// ---------------------------------------------------------------------------------------------

/// CPU time (user + system, every thread) of `pid` in clock ticks: fields 14 and 15 of
/// `/proc/PID/stat`, counted after the command name, which may hold spaces and parentheses.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    let after_name = &stat[stat.rfind(')').expect("a command name in /proc/PID/stat") + 1..];
    // After the name: field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |i: usize| -> u64 {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("field {} of /proc/{pid}/stat: {stat}", i + 3))
    };
    field(11) + field(12)
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn clock_ticks_per_second() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("run getconf CLK_TCK");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("getconf CLK_TCK printed {text:?}"))
}

/// Resident memory of `pid` in KiB; panics when the process is gone.
pub fn rss_kib(pid: u32) -> u64 {
    procfs::rss_kib(pid).unwrap_or_else(|| panic!("no VmRSS for pid {pid}: has it exited?"))
}

/// The highest RSS of a process seen by a thread sampling it every 5 ms, from
/// [`RssPeak::start`] until the value is dropped.
pub struct RssPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssPeak {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(kib) = procfs::rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        RssPeak {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// The highest RSS seen so far, in KiB.
    pub fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Many connections held open
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Counts {
    connected: AtomicUsize,
    connect_failed: AtomicUsize,
    written: AtomicUsize,
    closed: AtomicUsize,
    closed_silent: AtomicUsize,
    bytes_received: AtomicUsize,
}

/// A set of raw client connections: each writes its payload once, then reads (and throws
/// away) whatever comes until the server closes it. Dropping the set closes every connection
/// still open.
pub struct Conns {
    n: usize,
    counts: Arc<Counts>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Conns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How many connections are being opened at any time: the listen backlog stays short.
const CONNECTING_AT_ONCE: usize = 100;

impl Conns {
    /// Opens `n` connections to `addr` that each write `payload` (nothing when empty) and
    /// hold on. Returns once every connection attempt has finished (connected or failed);
    /// the writes may still be under way (see [`Conns::written`]).
    pub async fn open(addr: SocketAddr, n: usize, payload: &[u8]) -> Conns {
        let counts = Arc::new(Counts::default());
        let payload: Arc<[u8]> = Arc::from(payload);
        let gate = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let permit = gate
                .clone()
                .acquire_owned()
                .await
                .expect("the connect gate is never closed");
            tasks.push(tokio::spawn(hold(
                addr,
                payload.clone(),
                counts.clone(),
                permit,
            )));
        }
        let conns = Conns { n, counts, tasks };
        super::wait_until(
            Duration::from_secs(60),
            &format!("{n} connection attempts to {addr} to finish"),
            || conns.connected() + conns.connect_failed() == n,
        )
        .await;
        conns
    }

    /// How many connections the set was asked to open.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Connections established.
    pub fn connected(&self) -> usize {
        self.counts.connected.load(Ordering::SeqCst)
    }

    /// Connection attempts that failed.
    pub fn connect_failed(&self) -> usize {
        self.counts.connect_failed.load(Ordering::SeqCst)
    }

    /// Connections whose payload write has finished (written, or failed because the server
    /// had closed).
    pub fn written(&self) -> usize {
        self.counts.written.load(Ordering::SeqCst)
    }

    /// Connections the server has closed (end of stream or reset).
    pub fn closed(&self) -> usize {
        self.counts.closed.load(Ordering::SeqCst)
    }

    /// Connections the server closed without writing a single byte.
    pub fn closed_silent(&self) -> usize {
        self.counts.closed_silent.load(Ordering::SeqCst)
    }

    /// Bytes received over all connections.
    pub fn bytes_received(&self) -> usize {
        self.counts.bytes_received.load(Ordering::SeqCst)
    }

    /// Connections established and not closed by the server (nor by us).
    pub fn open_now(&self) -> usize {
        self.connected().saturating_sub(self.closed())
    }

    /// Closes the first `k` connections of the set (client side).
    pub fn close_first(&mut self, k: usize) {
        let k = k.min(self.tasks.len());
        for t in self.tasks.drain(..k) {
            t.abort();
        }
    }

    /// A line for failure messages.
    pub fn summary(&self) -> String {
        format!(
            "{} asked, {} connected, {} connect failures, {} written, {} closed by the server \
             ({} without a byte), {} still open, {} bytes received",
            self.n,
            self.connected(),
            self.connect_failed(),
            self.written(),
            self.closed(),
            self.closed_silent(),
            self.open_now(),
            self.bytes_received()
        )
    }
}

async fn hold(
    addr: SocketAddr,
    payload: Arc<[u8]>,
    counts: Arc<Counts>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let stream = match tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(addr)).await
    {
        Ok(Ok(s)) => s,
        _ => {
            counts.connect_failed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    counts.connected.fetch_add(1, Ordering::SeqCst);
    drop(permit);
    let (mut r, mut w) = stream.into_split();
    // Write and read at once: a server that refuses may close before taking the payload. The
    // write half is kept until reading ends (dropping it would half-close the connection).
    let writer = {
        let counts = counts.clone();
        async move {
            if !payload.is_empty() {
                let _ = w.write_all(&payload).await;
            }
            counts.written.fetch_add(1, Ordering::SeqCst);
            w
        }
    };
    let reader = async {
        let mut got = 0usize;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got += n;
                    counts.bytes_received.fetch_add(n, Ordering::SeqCst);
                }
            }
        }
        counts.closed.fetch_add(1, Ordering::SeqCst);
        if got == 0 {
            counts.closed_silent.fetch_add(1, Ordering::SeqCst);
        }
    };
    let (_w, ()) = tokio::join!(writer, reader);
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1 exchanges
// ---------------------------------------------------------------------------------------------

/// A response read off the wire.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Header lines in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A short description for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {:?} {:?}",
            self.status,
            self.header("x-token-sidecar-error"),
            truncate(&self.text(), 300)
        )
    }

    /// What is wrong with this as the sidecar's own `status` answer of `kind` (the
    /// `x-token-sidecar-error` header and a JSON body of exactly `error` and `message`), if
    /// anything; also a problem: the marker token in a header or the body.
    pub fn sidecar_error_problem(&self, status: u16, kind: &str) -> Option<String> {
        let marker_in_headers = self
            .headers
            .iter()
            .any(|(k, v)| k.contains(MARKER) || v.contains(MARKER));
        if marker_in_headers || contains(&self.body, MARKER.as_bytes()) {
            return Some(format!("the token is in the response: {self:?}"));
        }
        let json: Option<serde_json::Value> = serde_json::from_slice(&self.body).ok();
        let ok = self.status == status
            && self.header("x-token-sidecar-error") == Some(kind)
            && json.as_ref().is_some_and(|v| {
                v["error"] == kind
                    && v["message"].as_str().is_some_and(|m| !m.is_empty())
                    && v.as_object().map(|o| o.len()) == Some(2)
            });
        (!ok).then(|| format!("expected {status} {kind}, got {}", self.describe()))
    }
}

/// What one raw exchange saw.
#[derive(Debug)]
pub struct Exchange {
    /// The first complete response, if one came.
    pub answer: Option<Answer>,
    /// Every byte received.
    pub received: Vec<u8>,
    /// Whether the server closed the connection (end of stream or reset) during the read.
    pub closed: bool,
}

impl Exchange {
    /// The server closed the connection without writing anything.
    pub fn closed_silently(&self) -> bool {
        self.closed && self.received.is_empty()
    }

    /// A short description for failure messages.
    pub fn describe(&self) -> String {
        match &self.answer {
            Some(a) => a.describe(),
            None if self.closed_silently() => "closed without a byte".into(),
            None => format!(
                "no complete response (closed: {}): {:?}",
                self.closed,
                truncate(&String::from_utf8_lossy(&self.received), 300)
            ),
        }
    }

    /// What is wrong with this exchange as the sidecar's own `status` answer of `kind`; also
    /// a problem: the marker token anywhere in what came back.
    pub fn sidecar_error_problem(&self, status: u16, kind: &str) -> Option<String> {
        if contains(&self.received, MARKER.as_bytes()) {
            return Some(format!(
                "the token is in the response: {:?}",
                String::from_utf8_lossy(&self.received)
            ));
        }
        match &self.answer {
            Some(a) => a.sidecar_error_problem(status, kind),
            None => Some(format!("expected {status} {kind}, got {}", self.describe())),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Writes `request` verbatim on a new connection to `addr` while reading, until one complete
/// response has come, the server closes, or `wait` passes. Write errors (the server closed
/// early) are tolerated. A failed connect panics.
pub async fn exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> Exchange {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    exchange_on(stream, request, wait).await.0
}

/// [`exchange`] on an open connection; also returns the connection (for writing more).
pub async fn exchange_on(
    stream: TcpStream,
    request: &[u8],
    wait: Duration,
) -> (Exchange, TcpStream) {
    let (mut r, mut w) = stream.into_split();
    let data = request.to_vec();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&data).await;
        w
    });
    let (received, answer, closed) = read_answer(&mut r, wait).await;
    let w = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("the request written within 5s of the answer")
        .expect("the writer task");
    let stream = r.reunite(w).expect("the halves of one stream");
    (
        Exchange {
            answer,
            received,
            closed,
        },
        stream,
    )
}

/// Reads from `r` until one complete response has come, the peer closes, or `wait` passes.
pub async fn read_answer(
    r: &mut (impl AsyncReadExt + Unpin),
    wait: Duration,
) -> (Vec<u8>, Option<Answer>, bool) {
    let mut received = Vec::new();
    let mut closed = false;
    let end = Instant::now() + wait;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(a) = parse_answer(&received, false) {
            return (received, Some(a), closed);
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, r.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
        }
    }
    let answer = parse_answer(&received, closed);
    (received, answer, closed)
}

/// Reads from `r` until the peer closes or `wait` passes; returns the bytes and whether it
/// closed.
pub async fn read_to_close(r: &mut (impl AsyncReadExt + Unpin), wait: Duration) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let end = Instant::now() + wait;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (received, false);
        }
        match tokio::time::timeout(left, r.read(&mut chunk)).await {
            Err(_) => return (received, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (received, true),
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
        }
    }
}

/// `GET path` with `Host: localhost` and `Connection: close` on a fresh connection.
pub async fn fresh_get(addr: SocketAddr, path: &str) -> Exchange {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    exchange(addr, req.as_bytes(), Duration::from_secs(10)).await
}

/// Parses the first complete response of `buf`; at `eof`, a body without a length ends where
/// the bytes end.
fn parse_answer(buf: &[u8], eof: bool) -> Option<Answer> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let rest = &buf[end + 4..];
    let body = if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if rest.len() < len {
            return None;
        }
        rest[..len].to_vec()
    } else if status == 101 || status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if eof {
        rest.to_vec()
    } else {
        return None;
    };
    Some(Answer {
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

/// A hyper response turned into an [`Answer`], its body collected (within 30 s).
pub async fn answer_of(resp: http::Response<hyper::body::Incoming>) -> Result<Answer, String> {
    use http_body_util::BodyExt;
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .map_err(|_| "no complete body within 30s".to_owned())?
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    })
}
