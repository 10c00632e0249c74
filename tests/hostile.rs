//! Hostile clients against the real binary: slowloris, oversized heads and bodies, request
//! smuggling shapes, open-proxy and Host tricks, path tricks, and HTTP/2 abuse (rapid reset,
//! too many streams, CONTINUATION floods, HPACK bombs). Each test names the attack it tries.
//!
//! The invariants every test checks, besides its own: the sidecar stays up and serves normal
//! requests afterwards; the token goes to the configured upstream only; a request the sidecar
//! accepts reaches the upstream as exactly one well-formed request under the base path.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use support::client::empty;
use support::h2raw::{self, Conn};
use support::scripted::Scripted;
use support::{
    eventually, metrics, procfs, Client, Sidecar, SidecarBuilder, Upstream, DEADLINE, MARKER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bearer() -> String {
    format!("Bearer {MARKER}")
}

/// A fake upstream at `base` and a sidecar in front of it with the marker token and `args`.
async fn setup(base: &str, args: &[&str]) -> (Upstream, Sidecar) {
    let up = Upstream::start().await;
    let sc = SidecarBuilder::new(&up.url(base))
        .static_token(MARKER)
        .args(args)
        .start()
        .await;
    (up, sc)
}

/// The sidecar is alive and forwards a normal request with the token, over HTTP/1.1 and h2c.
async fn assert_still_serving(sc: &mut Sidecar, up: &Upstream) {
    assert!(
        !sc.has_exited(),
        "the sidecar exited:\n{}",
        sc.logs().join("\n")
    );
    for client in [Client::http1(), Client::h2c()] {
        let start = Instant::now();
        let r = client.get(&sc.url("/still-serving")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "a normal request took {:?}",
            start.elapsed()
        );
        let got = up.last();
        assert!(got.path_and_query().ends_with("/still-serving"));
        assert_eq!(got.header_values("authorization"), vec![bearer()]);
    }
    assert_eq!(sc.admin_get("/healthz").await.0, 200);
    let logs = sc.logs().join("\n");
    assert!(!logs.contains("panicked"), "a panic:\n{logs}");
}

/// What one raw connection exchanged.
struct Exchange {
    received: Vec<u8>,
    write_failed: bool,
    closed: bool,
}

/// Writes `bytes` on a new connection while reading, until the sidecar closes it or `wait`
/// passes. Write errors (the sidecar refused and closed early) are tolerated and reported.
async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Exchange {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let data = bytes.to_vec();
    // The write half is kept until reading ends: dropping it would half-close the connection.
    let writer = tokio::spawn(async move {
        let failed = w.write_all(&data).await.is_err();
        (w, failed)
    });
    let mut received = Vec::new();
    let mut closed = false;
    let end = Instant::now() + wait;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
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
    let write_failed = match tokio::time::timeout(Duration::from_secs(5), writer).await {
        Ok(Ok((_w, failed))) => failed,
        _ => true,
    };
    Exchange {
        received,
        write_failed,
        closed,
    }
}

/// A response parsed off the wire.
#[derive(Debug)]
struct Parsed {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Parsed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The sidecar's own JSON error of `kind`.
    fn is_sidecar_error(&self, kind: &str) -> bool {
        self.header("x-token-sidecar-error") == Some(kind)
            && serde_json::from_slice::<serde_json::Value>(&self.body)
                .is_ok_and(|v| v["error"] == kind)
    }
}

/// Every complete response in `buf`, in order.
fn responses(mut buf: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let Some(status) = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
        else {
            break;
        };
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
        let (body, used) = if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            let mut p = rest;
            let mut used = 0;
            loop {
                let Some(le) = p.windows(2).position(|w| w == b"\r\n") else {
                    return out;
                };
                let size = usize::from_str_radix(
                    std::str::from_utf8(&p[..le])
                        .unwrap_or("x")
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim(),
                    16,
                );
                let Ok(size) = size else { return out };
                if size == 0 {
                    used += le + 4;
                    break;
                }
                if p.len() < le + 2 + size + 2 {
                    return out;
                }
                body.extend_from_slice(&p[le + 2..le + 2 + size]);
                used += le + 2 + size + 2;
                p = &p[le + 2 + size + 2..];
            }
            (body, used)
        } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            if rest.len() < len {
                return out;
            }
            (rest[..len].to_vec(), len)
        } else {
            (rest.to_vec(), rest.len())
        };
        out.push(Parsed {
            status,
            headers,
            body,
        });
        buf = &buf[end + 4 + used..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Slowloris
// ---------------------------------------------------------------------------------------------

/// Normal traffic on the side: sequential requests (a fresh connection every fifth) until
/// `stop`; returns (requests, failures, the slowest).
fn normal_traffic(
    url: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>, Duration)> {
    tokio::spawn(async move {
        let pooled = Client::http1();
        let (mut n, mut failures, mut slowest) = (0usize, Vec::new(), Duration::ZERO);
        while !stop.load(Ordering::SeqCst) {
            let client = if n % 5 == 4 {
                Client::http1()
            } else {
                pooled.clone()
            };
            let start = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                client.try_send(Request::get(url.as_str()).body(empty()).unwrap()),
            )
            .await;
            let took = start.elapsed();
            slowest = slowest.max(took);
            match r {
                Ok(Ok(resp)) if resp.status() == 200 => {}
                Ok(Ok(resp)) => failures.push(format!("status {}", resp.status())),
                Ok(Err(e)) => failures.push(format!("error {e:?}")),
                Err(_) => failures.push("no answer within 10s".into()),
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (n, failures, slowest)
    })
}

/// Opens a connection that writes `first`, then the next byte of `dribble` every 100 ms (over
/// and over when `repeat`, else once, then silence), until the sidecar closes it. Returns how long it stayed open (`None`: still open
/// after `give_up`).
async fn dribbler(
    addr: SocketAddr,
    first: Vec<u8>,
    dribble: &'static [u8],
    repeat: bool,
    give_up: Duration,
) -> Option<Duration> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let opened = Instant::now();
    if !first.is_empty() && s.write_all(&first).await.is_err() {
        return Some(opened.elapsed());
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut buf = [0u8; 1024];
    let mut next: Box<dyn Iterator<Item = &u8> + Send> = if repeat {
        Box::new(dribble.iter().cycle())
    } else {
        Box::new(dribble.iter())
    };
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(opened.elapsed()),
                Ok(_) => {}
            },
            _ = tick.tick() => {
                if opened.elapsed() > give_up {
                    return None;
                }
                let Some(b) = next.next() else { continue };
                if s.write_all(&[*b]).await.is_err() {
                    return Some(opened.elapsed());
                }
            }
        }
    }
}

/// Runs `n` dribbling connections built by `first` while normal traffic flows; asserts the
/// traffic is unaffected, every slow connection is closed after about `timeout`, and nothing
/// reached the upstream from them.
async fn slowloris(
    n: usize,
    timeout: Duration,
    first: impl Fn(usize) -> Vec<u8>,
    dribble: &'static [u8],
    repeat: bool,
) {
    let timeout_arg = format!("{}ms", timeout.as_millis());
    let (up, mut sc) = setup("", &["--header-read-timeout", &timeout_arg]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = normal_traffic(sc.url("/normal"), stop.clone());
    let give_up = timeout + Duration::from_secs(8);
    let mut slow = Vec::new();
    for i in 0..n {
        slow.push(tokio::spawn(dribbler(
            sc.proxy_addr,
            first(i),
            dribble,
            repeat,
            give_up,
        )));
    }
    let mut open_for = Vec::new();
    for t in slow {
        open_for.push(t.await.unwrap());
    }
    stop.store(true, Ordering::SeqCst);
    let (requests, failures, slowest) = traffic.await.unwrap();

    let still_open = open_for.iter().filter(|d| d.is_none()).count();
    assert_eq!(
        still_open, 0,
        "{still_open} of {n} slow connections were still open {give_up:?} after connecting"
    );
    let shortest = open_for.iter().flatten().min().copied().unwrap();
    let longest = open_for.iter().flatten().max().copied().unwrap();
    assert!(
        shortest >= timeout.mul_f64(0.7),
        "a slow connection was closed after {shortest:?}, before the header read timeout {timeout:?}"
    );
    assert!(
        longest <= timeout + Duration::from_secs(5),
        "closed only after {longest:?}"
    );

    assert!(failures.is_empty(), "normal requests failed: {failures:?}");
    assert!(requests >= 10, "only {requests} normal requests");
    assert!(
        slowest < Duration::from_secs(2),
        "a normal request took {slowest:?}"
    );
    assert!(
        up.requests()
            .iter()
            .all(|r| r.path_and_query() == "/normal"),
        "a slow connection's request reached the upstream"
    );
    // Every slow connection is gone from the gauge too.
    eventually(DEADLINE, "open connections back to normal", || async {
        let m = sc.metrics().await;
        metrics::value(
            &m,
            "token_sidecar_open_connections",
            &[("listener", "default")],
        )
        .unwrap_or(f64::MAX)
            <= 3.0
    })
    .await;
    assert_still_serving(&mut sc, &up).await;
}

#[tokio::test]
async fn slowloris_300_connections_dribbling_header_bytes_are_cut_off_at_the_header_read_timeout() {
    slowloris(
        300,
        Duration::from_millis(1500),
        |i| format!("GET /slowloris-{i} HTTP/1.1\r\nHost: localhost\r\nX-Slow: ").into_bytes(),
        b"a",
        true,
    )
    .await;
}

#[tokio::test]
async fn slowloris_silent_connections_that_send_nothing_are_closed_at_the_header_read_timeout() {
    slowloris(100, Duration::from_millis(1500), |_| Vec::new(), b"", false).await;
}

#[tokio::test]
async fn slowloris_dribbling_the_http2_preface_is_cut_off_at_the_header_read_timeout() {
    // Each byte of the h2 preface keeps hyper-util guessing between HTTP/1 and HTTP/2 (the
    // 24 bytes take 2.4 s at this pace, longer than the timeout).
    slowloris(
        100,
        Duration::from_millis(1500),
        |_| Vec::new(),
        h2raw::PREFACE,
        false,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Oversized heads and bodies
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_one_mebibyte_header_is_refused_with_431_and_never_forwarded() {
    let (up, mut sc) = setup("", &[]).await;
    let mut req = b"GET /huge-header HTTP/1.1\r\nHost: localhost\r\nX-Huge: ".to_vec();
    req.extend(std::iter::repeat_n(b'h', 1024 * 1024));
    req.extend_from_slice(b"\r\n\r\n");
    let ex = exchange(sc.proxy_addr, &req, DEADLINE).await;
    let rs = responses(&ex.received);
    // Far over hyper's own buffer (twice the route's limit): hyper answers 431 itself.
    assert!(ex.closed, "the connection stays open");
    if let Some(r) = rs.first() {
        assert_eq!(r.status, 431, "{rs:?}");
    } else {
        // Closed before we finished writing: the 431 may be lost in the reset.
        assert!(ex.write_failed, "no answer and no close: {:?}", ex.received);
    }
    assert_eq!(up.request_count(), 0);
    assert_still_serving(&mut sc, &up).await;
}

#[tokio::test]
async fn a_thousand_tiny_headers_are_judged_by_the_byte_limit_and_refused_with_431_json() {
    let (up, mut sc) = setup("", &[]).await;
    // 1000 headers of a few bytes: small on the wire, but each costs 32 bytes of the limit.
    let mut req =
        String::from("GET /many-tiny HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for i in 0..1000 {
        req.push_str(&format!("h{i}:1\r\n"));
    }
    req.push_str("\r\n");
    let ex = exchange(sc.proxy_addr, req.as_bytes(), DEADLINE).await;
    let rs = responses(&ex.received);
    assert_eq!(rs.len(), 1, "{:?}", String::from_utf8_lossy(&ex.received));
    assert_eq!(rs[0].status, 431);
    assert!(rs[0].is_sidecar_error("header_too_large"), "{rs:?}");
    assert_eq!(up.request_count(), 0);
    assert_still_serving(&mut sc, &up).await;
}

#[tokio::test]
async fn twenty_thousand_empty_headers_are_refused_with_431_and_never_forwarded() {
    let (up, mut sc) = setup("", &[]).await;
    // Over hyper's header count limit: hyper answers a bare 431 before the route sees it.
    let mut req =
        String::from("GET /header-count HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for _ in 0..20_000 {
        req.push_str("a:\r\n");
    }
    req.push_str("\r\n");
    let ex = exchange(sc.proxy_addr, req.as_bytes(), DEADLINE).await;
    let rs = responses(&ex.received);
    assert!(ex.closed);
    if let Some(r) = rs.first() {
        assert_eq!(r.status, 431, "{r:?}");
    } else {
        // The sidecar may close before reading it all; then the 431 is lost in the reset.
        assert!(ex.write_failed, "no answer and no close: {:?}", ex.received);
    }
    assert_eq!(up.request_count(), 0);
    assert_still_serving(&mut sc, &up).await;
}

#[tokio::test]
async fn a_128_mib_upload_streams_through_without_being_buffered() {
    const TOTAL: u64 = 128 * 1024 * 1024;
    const CHUNK: usize = 1024 * 1024;
    // An upstream that counts body bytes as they arrive and answers once all came.
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let up = Scripted::start(move |mut a| {
        let counter = counter.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 256 * 1024];
            let head_end = loop {
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p;
                }
                match a.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            if !head.contains(&format!("content-length: {TOTAL}"))
                || !head.contains(MARKER.to_ascii_lowercase().as_str())
            {
                let _ = a
                    .stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 4\r\n\r\nhead")
                    .await;
                return;
            }
            let mut got = (buf.len() - head_end - 4) as u64;
            counter.store(got, Ordering::SeqCst);
            while got < TOTAL {
                match a.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        got += n as u64;
                        counter.store(got, Ordering::SeqCst);
                    }
                }
            }
            let _ = a
                .stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
        }
    })
    .await;
    let mut sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .start()
        .await;
    let rss_before = procfs::rss_kib(sc.pid()).unwrap();

    let mut s = TcpStream::connect(sc.proxy_addr).await.unwrap();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {TOTAL}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (mut r, mut w) = s.into_split();
    let seen = received.clone();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'u'; CHUNK];
        let mut sent = 0u64;
        let mut streamed = false;
        while sent < TOTAL {
            w.write_all(&chunk).await.unwrap();
            sent += CHUNK as u64;
            if sent == 16 * CHUNK as u64 {
                // Pause with most of the body still unsent: a streaming proxy has already
                // passed megabytes on; a buffering one has passed nothing.
                let end = Instant::now() + DEADLINE;
                while Instant::now() < end {
                    if seen.load(Ordering::SeqCst) >= 8 * CHUNK as u64 {
                        streamed = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        (w, streamed)
    });
    let mut peak_rss = 0;
    let mut resp = Vec::new();
    let mut buf = vec![0u8; 4096];
    let read_end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(rss) = procfs::rss_kib(sc.pid()) {
            peak_rss = peak_rss.max(rss);
        }
        match tokio::time::timeout(Duration::from_millis(20), r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => resp.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        assert!(Instant::now() < read_end, "no answer to the upload");
    }
    let (_w, streamed) = writer.await.unwrap();
    assert!(
        streamed,
        "the upstream received nothing while most of the upload was unsent"
    );
    let rs = responses(&resp);
    assert_eq!(rs.len(), 1, "{:?}", String::from_utf8_lossy(&resp));
    assert_eq!(rs[0].status, 200, "{rs:?}");
    assert_eq!(received.load(Ordering::SeqCst), TOTAL);
    let grown_mib = peak_rss.saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 48,
        "the sidecar's RSS grew by {grown_mib} MiB while 128 MiB went through"
    );
    drop(up);
    assert!(!sc.has_exited());
}

// ---------------------------------------------------------------------------------------------
// Request smuggling
// ---------------------------------------------------------------------------------------------

/// A request that, read the wrong way, hides a second one: `GET /smuggled`.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\nX-S: 1\r\n\r\n";

/// Sends each of `cases` (name, bytes) on its own keep-alive connection to one sidecar and
/// reads until the sidecar closes it (its idle timeout is short), then checks that the
/// upstream saw, per case, at most one request, well-formed, and never the smuggled one.
/// Returns the responses per case.
async fn smuggle(cases: &[(&str, Vec<u8>)]) -> Vec<Vec<Parsed>> {
    let (up, mut sc) = setup("", &["--header-read-timeout", "700ms"]).await;
    let mut tasks = Vec::new();
    for (_, bytes) in cases {
        let (addr, bytes) = (sc.proxy_addr, bytes.clone());
        tasks.push(tokio::spawn(async move {
            exchange(addr, &bytes, DEADLINE).await
        }));
    }
    let mut all = Vec::new();
    for ((name, _), t) in cases.iter().zip(tasks) {
        let ex = t.await.unwrap();
        assert!(ex.closed, "{name}: the connection was not closed");
        all.push(responses(&ex.received));
    }
    let reqs = up.requests();
    for r in &reqs {
        assert!(
            !r.path_and_query().contains("smuggled") && r.header_values("x-s").is_empty(),
            "a smuggled request reached the upstream: {r:?}"
        );
        assert_eq!(r.header_values("authorization"), vec![bearer()]);
        let cl = r.header_values("content-length");
        assert!(cl.len() <= 1, "several Content-Length upstream: {r:?}");
        if let Some(cl) = cl.first() {
            assert_eq!(cl.parse::<u64>().ok(), Some(r.body_len), "{r:?}");
        }
        for te in r.header_values("transfer-encoding") {
            assert_eq!(te, "chunked", "{r:?}");
        }
    }
    for ((name, _), rs) in cases.iter().zip(&all) {
        let path = format!("/{name}");
        let forwarded = reqs.iter().filter(|r| r.path_and_query() == path).count();
        assert!(forwarded <= 1, "{name}: forwarded {forwarded} times");
        assert!(
            rs.len() <= 1,
            "{name}: {} responses on one connection: {rs:?}",
            rs.len()
        );
        match rs.first() {
            Some(r) if r.status == 200 => {
                assert_eq!(forwarded, 1, "{name}: 200 without forwarding")
            }
            Some(r) => {
                assert!(
                    [400, 502].contains(&r.status),
                    "{name}: status {} {:?}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
                assert_eq!(forwarded, 0, "{name}: refused but forwarded");
            }
            None => assert_eq!(forwarded, 0, "{name}: no answer but forwarded"),
        }
    }
    assert_still_serving(&mut sc, &up).await;
    all
}

fn case(name: &str, head: &str, body: &str) -> (String, Vec<u8>) {
    let mut b = format!("POST /{name} HTTP/1.1\r\nHost: localhost\r\n{head}\r\n").into_bytes();
    b.extend_from_slice(body.as_bytes());
    (name.to_owned(), b)
}

fn status_of(rs: &[Parsed]) -> Option<u16> {
    rs.first().map(|r| r.status)
}

#[tokio::test]
async fn smuggling_content_length_with_transfer_encoding_is_read_as_chunked_and_the_connection_closed(
) {
    let chunked_smuggle = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let cl_te_body = format!("0\r\n\r\n{SMUGGLED}");
    let cases: Vec<(String, Vec<u8>)> = vec![
        // CL.TE: a CL-reader sees one request; a TE-reader sees the smuggled one after "0".
        case(
            "cl-te",
            &format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", cl_te_body.len()),
            &cl_te_body,
        ),
        // TE.CL: a CL-reader stops after "2c\r\n" and reads the smuggled one.
        case(
            "te-cl",
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            &chunked_smuggle,
        ),
        // Obfuscated Transfer-Encoding values some parsers ignore.
        case("te-xchunked", "Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n", &format!("0\r\n\r\n{SMUGGLED}")),
        case("te-chunked-identity", "Transfer-Encoding: chunked, identity\r\nContent-Length: 5\r\n", &format!("0\r\n\r\n{SMUGGLED}")),
        case("te-twice", "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", &chunked_smuggle),
        case("te-tab", "Transfer-Encoding:\tchunked\r\nContent-Length: 4\r\n", &chunked_smuggle),
        case("te-space-before-colon", "Transfer-Encoding : chunked\r\nContent-Length: 4\r\n", &chunked_smuggle),
        (
            "te-http10".into(),
            format!("POST /te-http10 HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_smuggle}").into_bytes(),
        ),
    ];
    let cases: Vec<(&str, Vec<u8>)> = cases.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let rs = smuggle(&cases).await;
    // The two classic shapes are read as chunked (RFC 9112 6.1) and forwarded once.
    assert_eq!(status_of(&rs[0]), Some(200), "cl-te: {:?}", rs[0]);
    assert_eq!(status_of(&rs[1]), Some(200), "te-cl: {:?}", rs[1]);
    // A Transfer-Encoding that does not end in chunked, or on HTTP/1.0, is refused.
    for (i, name) in [
        (2, "te-xchunked"),
        (3, "te-chunked-identity"),
        (4, "te-twice"),
        (6, "te-space-before-colon"),
        (7, "te-http10"),
    ] {
        assert_eq!(status_of(&rs[i]), Some(400), "{name}: {:?}", rs[i]);
    }
}

#[tokio::test]
async fn smuggling_duplicate_or_malformed_content_lengths_are_refused() {
    let n = SMUGGLED.len();
    let cases: Vec<(String, Vec<u8>)> = vec![
        case(
            "cl-conflict",
            &format!("Content-Length: 0\r\nContent-Length: {n}\r\n"),
            SMUGGLED,
        ),
        case(
            "cl-conflict-reversed",
            &format!("Content-Length: {n}\r\nContent-Length: 0\r\n"),
            SMUGGLED,
        ),
        case("cl-list", &format!("Content-Length: 0, {n}\r\n"), SMUGGLED),
        case("cl-plus", "Content-Length: +0\r\n", SMUGGLED),
        case("cl-minus", "Content-Length: -1\r\n", SMUGGLED),
        case("cl-hex", "Content-Length: 0x0\r\n", SMUGGLED),
        case(
            "cl-overflow",
            "Content-Length: 184467440737095516160\r\n",
            SMUGGLED,
        ),
        case("cl-space-before-colon", "Content-Length : 0\r\n", SMUGGLED),
        case("cl-trailing-garbage", "Content-Length: 0 x\r\n", SMUGGLED),
        // Two equal values are one length: one request, the smuggled text is its body.
        case(
            "cl-equal-twice",
            &format!("Content-Length: {n}\r\nContent-Length: {n}\r\n"),
            SMUGGLED,
        ),
    ];
    let cases: Vec<(&str, Vec<u8>)> = cases.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let rs = smuggle(&cases).await;
    for (i, (name, _)) in cases.iter().enumerate().take(9) {
        assert_eq!(status_of(&rs[i]), Some(400), "{name}: {:?}", rs[i]);
    }
    assert_eq!(status_of(&rs[9]), Some(200), "cl-equal-twice: {:?}", rs[9]);
}

#[tokio::test]
async fn smuggling_obsolete_line_folding_is_refused() {
    let n = SMUGGLED.len();
    let cases: Vec<(String, Vec<u8>)> = vec![
        // A folding parser reads "X-Fold: a Content-Length: N": no length, then the smuggled one.
        case(
            "fold-space",
            &format!("X-Fold: a\r\n Content-Length: {n}\r\n"),
            SMUGGLED,
        ),
        case(
            "fold-tab",
            &format!("X-Fold: a\r\n\tContent-Length: {n}\r\n"),
            SMUGGLED,
        ),
        case(
            "fold-te",
            &format!("Content-Length: {n}\r\nTransfer-Encoding:\r\n chunked\r\n"),
            SMUGGLED,
        ),
    ];
    let cases: Vec<(&str, Vec<u8>)> = cases.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let rs = smuggle(&cases).await;
    for (i, (name, _)) in cases.iter().enumerate() {
        assert_eq!(status_of(&rs[i]), Some(400), "{name}: {:?}", rs[i]);
    }
}

#[tokio::test]
async fn smuggling_invalid_bytes_in_header_names_values_and_the_request_line_are_refused() {
    let n = SMUGGLED.len();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, header) in [
        ("name-space", "X Bad: 1\r\n".to_owned()),
        ("name-nul", "X-B\0ad: 1\r\n".to_owned()),
        ("name-utf8", "X-\u{e9}: 1\r\n".to_owned()),
        ("name-empty", ": 1\r\n".to_owned()),
        ("name-no-colon", "X-No-Colon\r\n".to_owned()),
        ("name-slash", "X/Bad: 1\r\n".to_owned()),
        ("value-nul", "X-V: a\0b\r\n".to_owned()),
        ("value-bare-cr", "X-V: a\rContent-Length: 0\r\n".to_owned()),
        ("value-del", "X-V: a\x7fb\r\n".to_owned()),
        ("value-ctl", "X-V: a\x01b\r\n".to_owned()),
    ] {
        cases.push(case(
            name,
            &format!("{header}Content-Length: {n}\r\n"),
            SMUGGLED,
        ));
    }
    cases.push((
        "request-line-extra".into(),
        format!("POST /request-line-extra HTTP/1.1 x\r\nHost: localhost\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}").into_bytes(),
    ));
    cases.push((
        "request-line-tab".into(),
        format!("POST /request-line\ttab HTTP/1.1\r\nHost: localhost\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}").into_bytes(),
    ));
    cases.push((
        "request-line-bare-cr".into(),
        format!("POST /request-line-bare-cr HTTP/1.1\rHost: localhost\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}").into_bytes(),
    ));
    let cases: Vec<(&str, Vec<u8>)> = cases.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let rs = smuggle(&cases).await;
    for (i, (name, _)) in cases.iter().enumerate() {
        assert_eq!(status_of(&rs[i]), Some(400), "{name}: {:?}", rs[i]);
    }
}

#[tokio::test]
async fn smuggling_obs_text_and_encoded_crlf_are_forwarded_verbatim_as_one_request() {
    let (up, mut sc) = setup("", &[]).await;
    // Bytes 0x80-0xff are obs-text, allowed in values; %0d%0a in a path is just text.
    let mut req = b"GET /obs-text%0d%0aX-Injected:%20yes HTTP/1.1\r\nHost: localhost\r\nX-Obs: caf\xe9\r\nConnection: close\r\n\r\n".to_vec();
    req.extend_from_slice(SMUGGLED.as_bytes());
    let ex = exchange(sc.proxy_addr, &req, DEADLINE).await;
    let rs = responses(&ex.received);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].status, 200, "{rs:?}");
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].path_and_query(), "/obs-text%0d%0aX-Injected:%20yes");
    assert!(reqs[0].header_values("x-injected").is_empty());
    assert_eq!(reqs[0].headers["x-obs"].as_bytes(), b"caf\xe9");
    assert_still_serving(&mut sc, &up).await;
}

#[tokio::test]
async fn smuggling_bare_lf_line_endings_are_parsed_once_and_reframed() {
    let n = SMUGGLED.len();
    let cases: Vec<(String, Vec<u8>)> = vec![
        // Entirely bare-LF framed.
        (
            "bare-lf".into(),
            format!("POST /bare-lf HTTP/1.1\nHost: localhost\nContent-Length: {n}\n\n{SMUGGLED}").into_bytes(),
        ),
        // A CRLF-only parser sees "Host: localhost\nContent-Length: N" (no length) and then the
        // smuggled request; hyper reads the length. Either way the upstream gets one request,
        // framed by the sidecar.
        (
            "bare-lf-hidden-cl".into(),
            format!("POST /bare-lf-hidden-cl HTTP/1.1\r\nHost: localhost\nContent-Length: {n}\r\n\r\n{SMUGGLED}").into_bytes(),
        ),
        (
            "bare-lf-hidden-te".into(),
            format!(
                "POST /bare-lf-hidden-te HTTP/1.1\r\nHost: localhost\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
                SMUGGLED.len()
            )
            .into_bytes(),
        ),
    ];
    let cases: Vec<(&str, Vec<u8>)> = cases.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    smuggle(&cases).await;
}

#[tokio::test]
async fn smuggling_chunk_size_overflow_and_malformed_chunks_never_reach_the_upstream_complete() {
    let te = "Transfer-Encoding: chunked\r\n";
    let cases: Vec<(String, Vec<u8>)> = vec![
        // 2^64 + 1 wraps to 1 in a careless parser: "A" then the smuggled request.
        case(
            "chunk-overflow",
            te,
            &format!("10000000000000001\r\nA\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        case(
            "chunk-overflow-17-digits",
            te,
            &format!("fffffffffffffffff\r\nA\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        case(
            "chunk-negative",
            te,
            &format!("-1\r\nA\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        case(
            "chunk-hex-prefix",
            te,
            &format!("0x1\r\nA\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        case(
            "chunk-no-crlf-after-data",
            te,
            &format!("1\r\nAXX0\r\n\r\n{SMUGGLED}"),
        ),
        case(
            "chunk-size-not-hex",
            te,
            &format!("g\r\nA\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        case(
            "chunk-extension-flood",
            te,
            &format!("1;{}\r\nA\r\n0\r\n\r\n{SMUGGLED}", "e".repeat(100 * 1024)),
        ),
    ];
    let cases: Vec<(&str, Vec<u8>)> = cases.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let rs = smuggle(&cases).await;
    for (i, (name, _)) in cases.iter().enumerate() {
        assert_ne!(status_of(&rs[i]), Some(200), "{name}: {:?}", rs[i]);
    }
}

// ---------------------------------------------------------------------------------------------
// Open proxy: CONNECT, absolute-form and Host tricks
// ---------------------------------------------------------------------------------------------

/// Sends `target` with `host` (and `Connection: close`) and returns the status.
async fn target_status(sc: &Sidecar, method: &str, target: &str, host: &str) -> Option<u16> {
    let req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let ex = exchange(sc.proxy_addr, req.as_bytes(), DEADLINE).await;
    responses(&ex.received).first().map(|r| r.status)
}

#[tokio::test]
async fn open_proxy_tricks_never_send_the_token_anywhere_but_the_upstream() {
    let (up, mut sc) = setup("", &[]).await;
    // Another server on loopback, the place an attacker wants the token to go.
    let evil = Upstream::start().await;
    let e = evil.addr;
    let ep = e.port();
    let u = up.addr;
    let targets: Vec<(&str, String, String)> = vec![
        ("GET", "/plain".into(), format!("{e}")),
        ("GET", "/plain-evil-host".into(), "evil.example".into()),
        ("GET", format!("http://{e}/loopback-ip"), "x".into()),
        (
            "GET",
            format!("http://localhost:{ep}/loopback-name"),
            "x".into(),
        ),
        ("GET", format!("http://[::1]:{ep}/loopback-v6"), "x".into()),
        ("GET", format!("https://{e}/loopback-https"), "x".into()),
        ("GET", format!("http://{e}"), "x".into()),
        ("GET", format!("{e}"), "x".into()),
        (
            "GET",
            format!("http://evil.example@{e}/userinfo-loopback"),
            "x".into(),
        ),
        (
            "GET",
            format!("http://{u}@evil.example/userinfo-evil"),
            "x".into(),
        ),
        ("GET", "http://evil.example/".into(), "evil.example".into()),
        ("GET", "HTTP://evil.example/upper".into(), "x".into()),
        ("GET", "hTtPs://evil.example/mixed".into(), "x".into()),
        ("GET", "https://127.0.0.1.evil.example/".into(), "x".into()),
        ("GET", "http://localhost.evil.example/".into(), "x".into()),
        (
            "GET",
            format!("http://[::ffff:127.0.0.1]:{ep}/mapped"),
            "x".into(),
        ),
        (
            "GET",
            format!("http://[::ffff:7f00:1]:{ep}/mapped-hex"),
            "x".into(),
        ),
        ("GET", format!("http://127.1:{ep}/short"), "x".into()),
        ("GET", format!("http://2130706433:{ep}/decimal"), "x".into()),
        ("GET", format!("http://0x7f000001:{ep}/hex"), "x".into()),
        (
            "GET",
            format!("http://evil.example:{}/upstream-port", u.port()),
            "x".into(),
        ),
        ("GET", "ftp://evil.example/".into(), "x".into()),
        (
            "GET",
            "//evil.example/scheme-relative".into(),
            "evil.example".into(),
        ),
        ("GET", "*".into(), "x".into()),
        ("OPTIONS", "*".into(), "x".into()),
        ("CONNECT", format!("{e}"), format!("{e}")),
        (
            "CONNECT",
            "evil.example:443".into(),
            "evil.example:443".into(),
        ),
        ("CONNECT", format!("http://{e}/"), "x".into()),
    ];
    let mut forwarded = 0;
    for (method, target, host) in &targets {
        let before = up.request_count();
        let status = target_status(&sc, method, target, host).await;
        let after = up.request_count();
        match status {
            Some(200) => {
                assert_eq!(
                    after,
                    before + 1,
                    "{method} {target}: 200 but not forwarded"
                );
                forwarded += 1;
                let got = up.last();
                assert_eq!(got.header_values("host"), vec![u.to_string()], "{target}");
                assert_eq!(got.header_values("authorization"), vec![bearer()]);
            }
            Some(400) => assert_eq!(after, before, "{method} {target}: refused but forwarded"),
            other => panic!("{method} {target}: {other:?}"),
        }
    }
    assert!(forwarded >= 2, "only {forwarded} forwarded");
    assert_eq!(
        (evil.connections(), evil.request_count()),
        (0, 0),
        "the other server was contacted"
    );
    // Targets naming another host (not loopback, not the upstream) were all refused.
    for path in [
        "/userinfo-evil",
        "/upper",
        "/mixed",
        "/mapped",
        "/mapped-hex",
        "/short",
        "/decimal",
        "/hex",
        "/upstream-port",
    ] {
        assert!(
            !up.requests().iter().any(|r| r.path_and_query() == path),
            "{path} was forwarded"
        );
    }
    assert_still_serving(&mut sc, &up).await;
}

#[tokio::test]
async fn open_proxy_tricks_over_h2c_authority_and_connect_never_reach_another_host() {
    let (up, mut sc) = setup("", &[]).await;
    let evil = Upstream::start().await;
    let e = evil.addr.to_string();
    let mut c = Conn::open(sc.proxy_addr).await;
    let mut bytes = Vec::new();
    // :authority and host naming the other server are ignored like Host.
    let block = h2raw::request_block("GET", "/h2-authority", &e, &[("host", &e)]);
    bytes.extend(h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS | h2raw::END_STREAM,
        1,
        &block,
    ));
    // :scheme https and an absolute :path.
    let mut block = h2raw::literal(":method", b"GET");
    block.extend(h2raw::literal(":scheme", b"https"));
    block.extend(h2raw::literal(
        ":path",
        format!("http://{e}/h2-absolute-path").as_bytes(),
    ));
    block.extend(h2raw::literal(":authority", e.as_bytes()));
    bytes.extend(h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS | h2raw::END_STREAM,
        3,
        &block,
    ));
    // CONNECT to the other server.
    let mut block = h2raw::literal(":method", b"CONNECT");
    block.extend(h2raw::literal(":authority", e.as_bytes()));
    bytes.extend(h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, 5, &block));
    // Extended CONNECT (RFC 8441) for a WebSocket to it.
    let mut block = h2raw::literal(":method", b"CONNECT");
    block.extend(h2raw::literal(":protocol", b"websocket"));
    block.extend(h2raw::literal(":scheme", b"http"));
    block.extend(h2raw::literal(":path", b"/h2-extended-connect"));
    block.extend(h2raw::literal(":authority", e.as_bytes()));
    bytes.extend(h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, 7, &block));
    c.write(&bytes).await.unwrap();
    // Wait for an answer (or reset) on every stream.
    let mut done = std::collections::BTreeSet::new();
    let end = Instant::now() + DEADLINE;
    while done.len() < 4 && Instant::now() < end {
        match c.next(Duration::from_millis(200)).await {
            h2raw::Next::Frame(f) if f.kind == h2raw::HEADERS || f.kind == h2raw::RST_STREAM => {
                done.insert(f.stream);
            }
            h2raw::Next::Frame(f) if f.kind == h2raw::GOAWAY => break,
            h2raw::Next::Closed => break,
            _ => {}
        }
    }
    let status = |id: u32| {
        c.frames
            .iter()
            .find(|f| f.stream == id && f.kind == h2raw::HEADERS)
            .and_then(h2raw::Frame::static_status)
    };
    assert_eq!(status(1), Some(200), "{:?}", c.frames);
    // CONNECT is refused (400, or a reset for the extended form hyper does not enable).
    assert_ne!(status(5), Some(200));
    assert_ne!(status(7), Some(200));
    let got: Vec<String> = up.requests().iter().map(|r| r.path_and_query()).collect();
    assert!(got.contains(&"/h2-authority".to_owned()), "{got:?}");
    assert!(!got.iter().any(|p| p.contains("connect")), "{got:?}");
    for r in up.requests() {
        assert_eq!(r.header_values("host"), vec![up.addr.to_string()]);
        assert_eq!(r.header_values("authorization"), vec![bearer()]);
    }
    assert_eq!((evil.connections(), evil.request_count()), (0, 0));
    assert_still_serving(&mut sc, &up).await;
}

// ---------------------------------------------------------------------------------------------
// Path tricks
// ---------------------------------------------------------------------------------------------

/// Percent-decodes once, bytes as they are (invalid UTF-8 kept as bytes).
fn percent_decode(s: &str) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Whether a path climbs: a `.` or `..` segment after one percent-decoding, with `\` as a
/// separator and `;params` ignored, the way lenient upstreams read it.
fn climbs(path: &str) -> bool {
    let decoded = percent_decode(path);
    decoded
        .split(|b| *b == b'/' || *b == b'\\')
        .map(|seg| seg.split(|b| *b == b';').next().unwrap_or(seg))
        .any(|seg| seg == b"." || seg == b"..")
}

#[tokio::test]
async fn path_tricks_never_leave_the_base_path() {
    let (up, mut sc) = setup("/base", &[]).await;
    let evil = Upstream::start().await;
    let e = evil.addr;
    let paths: Vec<String> = vec![
        format!("//{e}/double-slash"),
        format!("///{e}/triple-slash"),
        format!("/\\{e}/backslash-host"),
        format!("/%2f%2f{e}/encoded-slashes"),
        format!("/%5c%5c{e}/encoded-backslashes"),
        "/..".into(),
        "/../etc/passwd".into(),
        "/%2e%2e/x".into(),
        "/%2E%2e%2Fx".into(),
        "/.%2e/x".into(),
        "/%2e./x".into(),
        "/a/..%2f..%2fx".into(),
        "/a/..%5c..%5cx".into(),
        "/a\\..\\..\\x".into(),
        "/a/..;/x".into(),
        "/a/%2e%2e;x=1/y".into(),
        "/a%2fb".into(),
        "/a%2F..%2Fb".into(),
        // Double encoding, decoded twice by some stacks.
        "/%252e%252e/x".into(),
        "/%252e%252e%252fx".into(),
        // Overlong and other non-standard UTF-8 encodings of '.' and '/'.
        "/%c0%ae%c0%ae/x".into(),
        "/%c0%af..%c0%afx".into(),
        "/%e0%80%ae%e0%80%ae/x".into(),
        "/%c1%9c..%c1%9cx".into(),
        "/%u002e%u002e/x".into(),
        // Full-width dots and NUL tricks.
        "/%ef%bc%8e%ef%bc%8e/x".into(),
        "/..%00/x".into(),
        "/.%00./x".into(),
        "/..%20/x".into(),
        "/..\t/x".into(),
        "/a/.".into(),
        "/a/%2e".into(),
        "/?/../x".into(),
        "/#/../x".into(),
        "/a?x=/../../y".into(),
        "/\u{e9}/raw-utf8".into(),
    ];
    let mut forwarded = 0;
    for path in &paths {
        let before = up.request_count();
        let status = target_status(&sc, "GET", path, "localhost").await;
        match status {
            Some(200) => {
                forwarded += 1;
                assert_eq!(up.request_count(), before + 1, "{path}");
                let got = up.last();
                let pq = got.path_and_query();
                // A fragment is not part of a request target: dropped, the rest kept verbatim.
                let sent = path.split('#').next().unwrap();
                let sent_path = sent.split('?').next().unwrap();
                assert_eq!(pq, format!("/base{sent}"), "{path}: rewritten");
                assert!(pq.starts_with("/base/"), "{path}: left the base path: {pq}");
                assert!(
                    !climbs(got.uri.path()),
                    "{path}: forwarded a climbing path {pq}"
                );
                assert!(!climbs(sent_path), "{path}: a climbing path was accepted");
                assert_eq!(got.header_values("host"), vec![up.addr.to_string()]);
            }
            Some(400) => assert_eq!(up.request_count(), before, "{path}: refused but forwarded"),
            other => panic!("{path}: {other:?}"),
        }
    }
    assert!(forwarded >= 5, "only {forwarded} forwarded");
    assert_eq!((evil.connections(), evil.request_count()), (0, 0));
    assert_still_serving(&mut sc, &up).await;
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 abuse
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn h2_rapid_reset_of_thousands_of_streams_ends_in_goaway_and_the_sidecar_keeps_serving() {
    let (up, mut sc) = setup("", &[]).await;
    let mut c = Conn::open(sc.proxy_addr).await;
    const STREAMS: u32 = 5000;
    let mut bytes = Vec::new();
    for i in 0..STREAMS {
        let id = 2 * i + 1;
        bytes.extend(h2raw::get(id, &format!("/rapid-reset/{i}")));
        bytes.extend(h2raw::rst(id, h2raw::CANCEL));
    }
    // The sidecar may hang up midway: a failed write is part of the expected outcome.
    let _ = c.write(&bytes).await;
    let (code, ended) = c.wait_for_goaway_or_close(DEADLINE).await;
    assert!(
        ended,
        "the abusive connection was neither closed nor sent a GOAWAY"
    );
    if let Some(code) = code {
        assert_eq!(code, h2raw::ENHANCE_YOUR_CALM, "GOAWAY code");
    }
    let reached = up.request_count();
    assert!(
        reached < STREAMS as usize / 2,
        "{reached} of {STREAMS} reset streams reached the upstream"
    );
    assert_still_serving(&mut sc, &up).await;
}

#[tokio::test]
async fn h2_more_concurrent_streams_than_allowed_are_refused_beyond_256() {
    let (up, mut sc) = setup("", &[]).await;
    let mut c = Conn::open(sc.proxy_addr).await;
    const STREAMS: u32 = 300;
    let mut bytes = Vec::new();
    for i in 0..STREAMS {
        bytes.extend(h2raw::get(2 * i + 1, &format!("/hold/{i}")));
    }
    c.write(&bytes).await.unwrap();
    // The streams beyond the limit are refused; the others wait at the upstream.
    let refused_all = c
        .read_until(DEADLINE, {
            let mut refused = 0;
            move |f| {
                if f.kind == h2raw::RST_STREAM && f.error_code() == Some(h2raw::REFUSED_STREAM) {
                    refused += 1;
                }
                refused >= (STREAMS - 256) as usize
            }
        })
        .await;
    assert!(
        refused_all,
        "refused {} streams: {:?}",
        c.resets_with(h2raw::REFUSED_STREAM),
        c.frames
            .iter()
            .map(|f| (f.kind, f.stream, f.error_code()))
            .collect::<Vec<_>>()
    );
    eventually(DEADLINE, "256 held requests at the upstream", || async {
        up.request_count() >= 256
    })
    .await;
    assert_eq!(
        up.request_count(),
        256,
        "more streams than allowed were forwarded"
    );
    // Meanwhile other connections are served.
    let r = Client::http1().get(&sc.url("/while-held")).await;
    assert_eq!(r.status, 200);
    up.release_hold();
    let answered = c
        .read_until(DEADLINE, {
            let mut ends = 0;
            move |f| {
                if f.kind == h2raw::DATA && f.flags & h2raw::END_STREAM != 0 {
                    ends += 1;
                }
                ends >= 256
            }
        })
        .await;
    assert!(answered, "the 256 accepted streams were not all answered");
    assert_eq!(
        c.resets_with(h2raw::REFUSED_STREAM),
        (STREAMS - 256) as usize
    );
    assert_still_serving(&mut sc, &up).await;
}

#[tokio::test]
async fn h2_made_you_reset_streams_the_server_must_reset_itself_end_in_goaway() {
    // "MadeYouReset": each stream is malformed (a connection-specific header, forbidden in
    // HTTP/2), so the server resets it itself; past the limit of such resets
    // (max_local_error_reset_streams) the connection goes.
    let (up, mut sc) = setup("", &[]).await;
    let mut c = Conn::open(sc.proxy_addr).await;
    const STREAMS: u32 = 2000;
    let mut bytes = Vec::new();
    for i in 0..STREAMS {
        let mut block =
            h2raw::request_block("GET", &format!("/made-you-reset/{i}"), "localhost", &[]);
        block.extend(h2raw::literal("connection", b"keep-alive"));
        bytes.extend(h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS | h2raw::END_STREAM,
            2 * i + 1,
            &block,
        ));
    }
    let _ = c.write(&bytes).await;
    let (code, ended) = c.wait_for_goaway_or_close(DEADLINE).await;
    assert!(ended, "no GOAWAY after {STREAMS} malformed streams");
    assert_eq!(code, Some(h2raw::ENHANCE_YOUR_CALM), "GOAWAY code");
    let goaway = c.frames.iter().find(|f| f.kind == h2raw::GOAWAY).unwrap();
    let debug = String::from_utf8_lossy(&goaway.payload[8..]);
    assert!(debug.contains("reset"), "GOAWAY debug data: {debug:?}");
    assert_eq!(up.request_count(), 0, "a malformed stream was forwarded");
    assert_still_serving(&mut sc, &up).await;
}

#[tokio::test]
async fn h2_a_zero_window_update_on_a_stream_ends_the_connection() {
    let (up, mut sc) = setup("", &[]).await;
    let mut c = Conn::open(sc.proxy_addr).await;
    let block = h2raw::request_block("POST", "/zero-window", "localhost", &[]);
    let mut bytes = h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, 1, &block);
    bytes.extend(h2raw::window_update(1, 0));
    let _ = c.write(&bytes).await;
    let (code, ended) = c.wait_for_goaway_or_close(DEADLINE).await;
    assert!(
        ended || c.resets_with(h2raw::PROTOCOL_ERROR) == 1,
        "a zero WINDOW_UPDATE was accepted"
    );
    if let Some(code) = code {
        assert_eq!(code, h2raw::PROTOCOL_ERROR);
    }
    assert!(!up.requests().iter().any(|r| r.body_len > 0));
    assert_still_serving(&mut sc, &up).await;
}

#[tokio::test]
async fn h2_continuation_flood_ends_the_connection_without_forwarding() {
    let (up, mut sc) = setup("", &[]).await;
    let mut c = Conn::open(sc.proxy_addr).await;
    let rss_before = procfs::rss_kib(sc.pid()).unwrap();
    let mut bytes = h2raw::frame(
        h2raw::HEADERS,
        0,
        1,
        &h2raw::request_block("GET", "/continuation-flood", "localhost", &[]),
    );
    // 20 000 CONTINUATION frames of 1 KiB, never END_HEADERS: 20 MiB of header block.
    let filler = h2raw::literal("x-flood", &[b'f'; 1000]);
    for _ in 0..20_000 {
        bytes.extend(h2raw::frame(h2raw::CONTINUATION, 0, 1, &filler));
    }
    let _ = c.write(&bytes).await;
    let (code, ended) = c.wait_for_goaway_or_close(DEADLINE).await;
    assert!(ended, "a CONTINUATION flood was accepted");
    if let Some(code) = code {
        assert_eq!(code, h2raw::ENHANCE_YOUR_CALM, "GOAWAY code");
    }
    assert_eq!(up.request_count(), 0);
    let grown = procfs::rss_kib(sc.pid())
        .unwrap()
        .saturating_sub(rss_before)
        / 1024;
    assert!(grown < 16, "RSS grew by {grown} MiB");
    assert_still_serving(&mut sc, &up).await;
}

#[tokio::test]
async fn h2_hpack_bomb_of_a_tiny_block_decoding_to_megabytes_is_refused() {
    let (up, mut sc) = setup("", &[]).await;
    let mut c = Conn::open(sc.proxy_addr).await;
    // A 4 KB value enters the dynamic table on stream 1, then stream 3 references it 20 000
    // times with one byte each: 20 KB on the wire, 80 MB decoded.
    let mut block = h2raw::request_block("GET", "/hpack-seed", "localhost", &[]);
    block.extend(h2raw::literal_indexed("x-bomb", &[b'b'; 4000]));
    let mut bytes = h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS | h2raw::END_STREAM,
        1,
        &block,
    );
    let mut bomb = h2raw::request_block("GET", "/hpack-bomb", "localhost", &[]);
    for _ in 0..20_000 {
        bomb.extend(h2raw::indexed(62));
    }
    bytes.extend(h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS | h2raw::END_STREAM,
        3,
        &bomb,
    ));
    let _ = c.write(&bytes).await;
    // Stream 3 gets no 200: a 431, a reset, or the connection goes.
    let end = Instant::now() + DEADLINE;
    let mut verdict = None;
    while verdict.is_none() && Instant::now() < end {
        match c.next(Duration::from_millis(200)).await {
            h2raw::Next::Frame(f) if f.stream == 3 && f.kind == h2raw::HEADERS => {
                verdict = Some(format!("headers {:?}", f.static_status()))
            }
            h2raw::Next::Frame(f) if f.stream == 3 && f.kind == h2raw::RST_STREAM => {
                verdict = Some("reset".into())
            }
            h2raw::Next::Frame(f) if f.kind == h2raw::GOAWAY => verdict = Some("goaway".into()),
            h2raw::Next::Closed => verdict = Some("closed".into()),
            _ => {}
        }
    }
    let verdict = verdict.expect("no answer to the HPACK bomb");
    assert_ne!(verdict, "headers Some(200)");
    assert!(
        !up.requests()
            .iter()
            .any(|r| r.path_and_query() == "/hpack-bomb"),
        "the bomb was forwarded"
    );
    assert_still_serving(&mut sc, &up).await;
}

#[tokio::test]
async fn h2_header_list_over_the_limit_gets_431_json_and_the_connection_stays_usable() {
    let (up, mut sc) = setup("", &[]).await;
    let client = Client::h2c();
    for round in 0..3 {
        // 200 headers of 300 bytes: 64 KB, twice the limit.
        let mut req = Request::get(sc.url(&format!("/h2-big-headers/{round}")))
            .body(empty())
            .unwrap();
        for i in 0..200 {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(format!("x-h2-{i}").as_bytes()).unwrap(),
                "v".repeat(300).parse().unwrap(),
            );
        }
        let r = client.send(req).await;
        assert_eq!(r.status, 431, "{}", r.text());
        // The same connection still carries normal requests.
        assert_eq!(client.get(&sc.url("/after-big-headers")).await.status, 200);
    }
    assert!(!up
        .requests()
        .iter()
        .any(|r| r.path_and_query().contains("h2-big-headers")));
    assert_still_serving(&mut sc, &up).await;
}

#[tokio::test]
async fn h2_ping_and_settings_floods_do_not_grow_memory_or_stop_service() {
    let (up, mut sc) = setup("", &[]).await;
    let mut c = Conn::open(sc.proxy_addr).await;
    let rss_before = procfs::rss_kib(sc.pid()).unwrap();
    let mut bytes = Vec::new();
    for i in 0u64..50_000 {
        bytes.extend(h2raw::frame(h2raw::PING, 0, 0, &i.to_be_bytes()));
        if i % 10 == 0 {
            bytes.extend(h2raw::frame(h2raw::SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        }
    }
    // Written without reading a single PING ACK back: the sidecar must push back (stop
    // reading) rather than queue the answers.
    let _ = tokio::time::timeout(Duration::from_secs(3), c.write(&bytes)).await;
    let grown = procfs::rss_kib(sc.pid())
        .unwrap()
        .saturating_sub(rss_before)
        / 1024;
    assert!(grown < 32, "RSS grew by {grown} MiB");
    assert_still_serving(&mut sc, &up).await;
}

#[tokio::test]
async fn a_malformed_chunked_body_from_the_app_is_a_400_not_an_upstream_error() {
    let (up, mut sc) = setup("", &[]).await;
    let req = b"POST /bad-chunks HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nA\r\n0\r\n\r\n";
    let ex = exchange(sc.proxy_addr, req, DEADLINE).await;
    let rs = responses(&ex.received);
    assert_eq!(rs.len(), 1, "{:?}", String::from_utf8_lossy(&ex.received));
    assert!(
        rs[0].status == 400 && rs[0].is_sidecar_error("bad_request"),
        "the app's own malformed body answered {} {:?}",
        rs[0].status,
        String::from_utf8_lossy(&rs[0].body)
    );
    let m = sc.metrics().await;
    assert_eq!(
        metrics::sum(&m, "token_sidecar_upstream_errors_total", &[]),
        0.0,
        "the app's malformed body was counted against the upstream: {m}"
    );
    assert_eq!(up.request_count(), 0);
    assert_still_serving(&mut sc, &up).await;
}
