//! Faults around the sidecar, against the real binary. The upstream: refused connections,
//! resets mid-body, slow headers, slow bodies, TLS certificates that must be refused,
//! redirects to other hosts. The token endpoint (the RingCentral-faithful double): 5xx, 429
//! with `Retry-After`, garbage, HTML, empty and incomplete bodies, a huge body, slowness past
//! `--token-request-timeout`, dropped connections, an outage. Each test names its fault.
//!
//! What every token-endpoint test checks: no crash, no stampede (token requests over a window
//! stay few), the failure visible in `/token-info`, and the valid token kept: requests keep
//! succeeding while the endpoint fails.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use support::client::{channel_body, empty};
use support::metrics;
use support::rc::Rig;
use support::scripted::{read_request, Scripted};
use support::{eventually, Client, Sidecar, SidecarBuilder, Upstream, DEADLINE, MARKER};
use token_sidecar_testkit::token_server::{Fault, TokenServerConfig, DEV_ASSERTION, TOKEN_PREFIX};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn sidecar_for(upstream: &str, args: &[&str]) -> Sidecar {
    SidecarBuilder::new(upstream)
        .static_token(MARKER)
        .args(args)
        .start()
        .await
}

fn upstream_errors(m: &str, kind: &str) -> f64 {
    metrics::value(
        m,
        "token_sidecar_upstream_errors_total",
        &[("route", "default"), ("kind", kind)],
    )
    .unwrap_or(0.0)
}

/// Reads everything until the peer closes (or `wait` passes).
async fn read_all(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let end = Instant::now() + wait;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream faults
// ---------------------------------------------------------------------------------------------

/// Answers every request on `listener` with 200 "up" and closes the connection.
fn serve_ok(listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if read_request(&mut s).await.is_some() {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nup",
                        )
                        .await;
                }
            });
        }
    })
}

#[tokio::test]
async fn upstream_refusing_connections_gives_502_and_recovers_when_it_listens_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = serve_ok(listener);
    let sc = sidecar_for(&format!("http://{addr}"), &[]).await;
    let client = Client::http1();
    assert_eq!(client.get(&sc.url("/before")).await.status, 200);

    // The upstream goes away: its port refuses connections.
    server.abort();
    let _ = server.await;
    for _ in 0..3 {
        let r = client.get(&sc.url("/down")).await;
        r.assert_sidecar_error(502, "upstream_unreachable");
    }
    let m = sc.metrics().await;
    assert_eq!(upstream_errors(&m, "connect"), 3.0, "{m}");

    // Back on the same port: served again, no restart.
    let server = serve_ok(TcpListener::bind(addr).await.unwrap());
    let r = client.get(&sc.url("/after")).await;
    assert_eq!((r.status, r.text()), (200, "up".to_owned()));
    server.abort();
    sc.assert_logs_free_of(MARKER);
}

/// An upstream that answers `head` and `partial` body bytes, then resets the connection
/// (`linger 0`) or closes it (`FIN`).
async fn truncating_upstream(head: &'static str, partial: usize, reset: bool) -> Scripted {
    Scripted::start(move |mut a| async move {
        if a.read_request().await.is_none() {
            return;
        }
        let mut out = head.as_bytes().to_vec();
        out.extend(std::iter::repeat_n(b'p', partial));
        if a.stream.write_all(&out).await.is_err() {
            return;
        }
        let _ = a.stream.flush().await;
        if reset {
            // SO_LINGER 0: close with a RST (tokio deprecates it for blocking on drop; with a
            // zero linger nothing blocks).
            #[allow(deprecated)]
            let _ = a.stream.set_linger(Some(Duration::ZERO));
        }
        drop(a.stream);
    })
    .await
}

#[tokio::test]
async fn upstream_reset_mid_body_is_an_error_for_the_app_never_a_complete_looking_response() {
    for reset in [true, false] {
        for (name, head) in [
            (
                "content-length",
                "HTTP/1.1 200 OK\r\ncontent-length: 100000\r\ncontent-type: application/octet-stream\r\n\r\n",
            ),
            (
                "chunked",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3e8\r\n",
            ),
        ] {
            let what = format!("{name}, {}", if reset { "RST" } else { "FIN" });
            let up = truncating_upstream(head, 1000, reset).await;
            let sc = sidecar_for(&up.url(""), &[]).await;

            // On the wire (HTTP/1.1): the app must be able to tell the body is incomplete.
            let mut s = TcpStream::connect(sc.proxy_addr).await.unwrap();
            s.write_all(b"GET /truncated HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .unwrap();
            let (raw, closed) = read_all(&mut s, DEADLINE).await;
            assert!(closed, "{what}: the connection to the app stayed open");
            let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
            let head_end = text.find("\r\n\r\n").expect("a response head");
            let body = &raw[head_end + 4..];
            if text.starts_with("http/1.1 502")
                && text[..head_end].contains("x-token-sidecar-error: upstream_error")
            {
                // The reset overtook the response head: the sidecar's own 502, also fine.
            } else if text[..head_end].contains("content-length: 100000") {
                assert!(body.len() < 100_000, "{what}: a complete body was made up");
            } else {
                assert!(
                    text[..head_end].contains("transfer-encoding: chunked"),
                    "{what}: neither a length nor chunked: {text}"
                );
                assert!(
                    !body.ends_with(b"0\r\n\r\n"),
                    "{what}: the truncated body was terminated as complete"
                );
            }

            // Through HTTP clients (HTTP/1.1 and h2c): the response fails, or reading its
            // body does (over h2 the reset can overtake the response head).
            for client in [Client::http1(), Client::h2c()] {
                let sent = client
                    .try_send(Request::get(sc.url("/truncated")).body(empty()).unwrap())
                    .await;
                let Ok(resp) = sent else { continue };
                assert_eq!(resp.status(), 200, "{what}");
                let body = tokio::time::timeout(DEADLINE, resp.into_body().collect())
                    .await
                    .expect("the body ends, in error");
                assert!(body.is_err(), "{what}: the truncated body read as complete");
            }
            assert!(up.connections() >= 3);
        }
    }
}

#[tokio::test]
async fn upstream_slow_to_answer_gives_504_and_its_late_answer_never_reaches_another_request() {
    let late_written = Arc::new(AtomicBool::new(false));
    let flag = late_written.clone();
    let up = Scripted::start(move |mut a| {
        let flag = flag.clone();
        async move {
            while let Some((head, _)) = a.read_request().await {
                if head.contains("/slow") {
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                    let _ = a
                        .stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate")
                        .await;
                    flag.store(true, Ordering::SeqCst);
                } else if a
                    .stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh")
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
    .await;
    let sc = sidecar_for(&up.url(""), &["--upstream-timeout", "400ms"]).await;
    let client = Client::http1();
    let start = Instant::now();
    let r = client.get(&sc.url("/slow")).await;
    r.assert_sidecar_error(504, "upstream_timeout");
    assert!(start.elapsed() < Duration::from_secs(3));
    // Once the late answer has been written, fresh requests get fresh answers.
    support::wait_until(DEADLINE, "the late answer to be written", || {
        late_written.load(Ordering::SeqCst)
    })
    .await;
    for _ in 0..5 {
        let r = client.get(&sc.url("/next")).await;
        assert_eq!((r.status, r.text()), (200, "fresh".to_owned()));
    }
    let m = sc.metrics().await;
    assert_eq!(upstream_errors(&m, "timeout"), 1.0, "{m}");
}

#[tokio::test]
async fn upstream_slow_body_streams_through_longer_than_the_upstream_timeout() {
    let up = Upstream::start().await;
    let sc = sidecar_for(&up.url(""), &["--upstream-timeout", "500ms"]).await;
    let chunks = 8usize;
    let start = Instant::now();
    let resp = Client::http1()
        .send_streaming(
            Request::get(sc.url(&format!(
                "/slow-download?chunks={chunks}&size=1000&delay_ms=150"
            )))
            .body(empty())
            .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0usize;
    let mut first_at = None;
    while let Some(frame) = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .expect("the body keeps coming")
    {
        let frame = frame.expect("no body error");
        if let Ok(d) = frame.into_data() {
            if !d.is_empty() && first_at.is_none() {
                first_at = Some(start.elapsed());
            }
            got += d.len();
        }
        if up.download_chunks_sent() == chunks - 1 {
            up.release_download();
        }
    }
    assert_eq!(got, chunks * 1000);
    let total = start.elapsed();
    assert!(
        total > Duration::from_millis(1000),
        "the body took {total:?}"
    );
    assert!(
        first_at.unwrap() < Duration::from_millis(500),
        "first bytes after {first_at:?}"
    );
    let m = sc.metrics().await;
    assert_eq!(
        metrics::sum(&m, "token_sidecar_upstream_errors_total", &[]),
        0.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_slow_upload_longer_than_the_upstream_timeout_is_not_cut_off() {
    let up = Upstream::start().await;
    let sc = sidecar_for(&up.url(""), &["--upstream-timeout", "500ms"]).await;
    let (tx, body) = channel_body();
    // 8 KB over 1.2 s: bytes keep flowing, the upstream answers once it has them all.
    let producer = tokio::spawn(async move {
        for i in 0..8u8 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            if tx.send(Bytes::from(vec![i; 1000])).await.is_err() {
                return false;
            }
        }
        true
    });
    let r = Client::http1()
        .send(Request::post(sc.url("/upload")).body(body).unwrap())
        .await;
    let sent_all = producer.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(sent_all, "the upload was cut off");
    assert_eq!(support::json(&r.body)["len"], 8000);
}

#[tokio::test]
async fn upstream_tls_certificate_for_another_name_is_refused_and_never_sees_the_token() {
    let tls = support::tls::material_for(&["api.other.example"], false);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let up = Upstream::start_tls(tls.server_config.clone()).await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .arg("--upstream-ca-file")
        .arg(&ca)
        .start()
        .await;
    for _ in 0..2 {
        let r = Client::http1().get(&sc.url("/secure")).await;
        r.assert_sidecar_error(502, "upstream_unreachable");
    }
    assert_eq!(
        up.request_count(),
        0,
        "a request went over the refused TLS session"
    );
    support::wait_until(DEADLINE, "failed handshakes at the upstream", || {
        up.tls_failures() >= 2
    })
    .await;
    let m = sc.metrics().await;
    assert_eq!(upstream_errors(&m, "tls"), 2.0, "{m}");
    sc.assert_logs_free_of(MARKER);
}

#[tokio::test]
async fn upstream_tls_certificate_that_has_expired_is_refused() {
    let tls = support::tls::material_for(&["127.0.0.1", "localhost"], true);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let up = Upstream::start_tls(tls.server_config.clone()).await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .arg("--upstream-ca-file")
        .arg(&ca)
        .start()
        .await;
    let r = Client::http1().get(&sc.url("/secure")).await;
    r.assert_sidecar_error(502, "upstream_unreachable");
    assert_eq!(up.request_count(), 0);
    let m = sc.metrics().await;
    assert_eq!(upstream_errors(&m, "tls"), 1.0, "{m}");
}

#[tokio::test]
async fn upstream_speaking_plain_http_on_an_https_url_is_refused_and_sees_no_token() {
    // What the upstream receives is recorded raw: a ClientHello, never a request.
    let up = Scripted::start(|mut a| async move {
        let mut buf = vec![0u8; 4096];
        if let Ok(n) = a.stream.read(&mut buf).await {
            assert!(
                !String::from_utf8_lossy(&buf[..n]).contains(MARKER),
                "the token was sent in clear"
            );
            let _ = a
                .stream
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        }
    })
    .await;
    let sc = sidecar_for(&format!("https://{}", up.addr), &[]).await;
    let r = Client::http1().get(&sc.url("/x")).await;
    r.assert_sidecar_error(502, "upstream_unreachable");
    assert!(up.connections() >= 1);
}

#[tokio::test]
async fn upstream_redirects_to_another_host_are_passed_back_unchanged_and_not_followed() {
    let evil = Upstream::start().await;
    let location = format!("http://{}/steal?token=please", evil.addr);
    let loc = location.clone();
    let up = Scripted::start(move |mut a| {
        let loc = loc.clone();
        async move {
            while let Some((head, _)) = a.read_request().await {
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let code = path
                    .rsplit('/')
                    .next()
                    .and_then(|c| c.parse::<u16>().ok())
                    .unwrap_or(302);
                let target = if path.contains("relative") {
                    "/elsewhere".to_owned()
                } else {
                    loc.clone()
                };
                let resp = format!(
                    "HTTP/1.1 {code} Redirect\r\nlocation: {target}\r\ncontent-length: 0\r\n\r\n"
                );
                if a.stream.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let sc = sidecar_for(&up.url(""), &[]).await;
    let client = Client::http1();
    let mut sent = 0;
    for code in [301u16, 302, 303, 307, 308] {
        for method in ["GET", "POST"] {
            let req = Request::builder()
                .method(method)
                .uri(sc.url(&format!("/redirect/{code}")))
                .body(support::client::full("body"))
                .unwrap();
            let r = client.send(req).await;
            sent += 1;
            assert_eq!(r.status, code, "{method} {code}");
            assert_eq!(
                r.header("location"),
                Some(location.as_str()),
                "{method} {code}"
            );
            assert!(r.header("x-token-sidecar-error").is_none());
        }
    }
    let r = client.get(&sc.url("/relative/302")).await;
    sent += 1;
    assert_eq!((r.status, r.header("location")), (302, Some("/elsewhere")));
    assert_eq!(
        up.requests().len(),
        sent,
        "a redirect was followed (or a request replayed)"
    );
    assert_eq!((evil.connections(), evil.request_count()), (0, 0));
}

// ---------------------------------------------------------------------------------------------
// Token endpoint faults
// ---------------------------------------------------------------------------------------------

/// Token requests that have arrived at the double so far (dropped and slow ones included).
fn arrivals(rig: &Rig) -> u64 {
    *rig.ts.arrivals().borrow()
}

/// Requests through the sidecar until `stop`: (successes, failures).
fn traffic(sc: &Sidecar, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    let url = sc.url("/restapi/v1.0/account/~");
    tokio::spawn(async move {
        let client = Client::http1();
        let (mut ok, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            let r = client.get(&url).await;
            if r.status == 200 {
                ok += 1;
            } else {
                failed.push(format!("{} {}", r.status, r.text()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (ok, failed)
    })
}

/// No token and no credential anywhere the sidecar writes or answers.
async fn assert_no_secret_anywhere(sc: &Sidecar, extra: &[&str]) {
    let logs = sc.logs().join("\n");
    assert!(!logs.contains("panicked"), "a panic:\n{logs}");
    let mut secrets = vec![TOKEN_PREFIX, DEV_ASSERTION, "test-secret"];
    secrets.extend_from_slice(extra);
    for secret in secrets {
        sc.assert_logs_free_of(secret);
        for path in ["/metrics", "/token-info", "/readyz"] {
            assert!(
                !sc.admin_get(path).await.1.contains(secret),
                "{secret} in {path}"
            );
        }
    }
}

/// The shape of every token-endpoint fault test: a sidecar holding a valid (1-hour) token,
/// the fault switched on, a refresh forced, then a 2.5 s window of traffic. Checks that the
/// traffic never failed, the endpoint was retried but not stormed (attempts 250 ms apart at
/// least, at most 7 in the window), the failure is reported, and that a refresh succeeds
/// once the fault is gone. Returns the sidecar and its rig for further checks.
async fn hold_the_token_through(fault: Fault, args: &[&str]) -> (Rig, Sidecar) {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let mut sc = rig.sidecar().args(args).start().await;
    sc.wait_ready().await;
    let v1 = sc.token_info().await["version"].as_u64().unwrap();
    let before = arrivals(&rig);
    let records_before = rig.ts.request_count();
    rig.ts.set_fault(fault.clone(), None);

    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(&sc, stop.clone());
    let start = Instant::now();
    let r = sc.post_refresh().await;
    r.assert_sidecar_error(502, "refresh_failed");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{fault:?}: the forced refresh took {:?}",
        start.elapsed()
    );
    // The observation window: a rate is measured over time, so this one waits.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    let attempts = arrivals(&rig) - before;

    assert!(
        failed.is_empty(),
        "{fault:?}: requests failed while a valid token was held: {failed:?}"
    );
    assert!(ok >= 20, "{fault:?}: only {ok} requests");
    assert!(
        attempts >= 2,
        "{fault:?}: the endpoint was not retried ({attempts} attempts)"
    );
    assert!(
        attempts <= 7,
        "{fault:?}: {attempts} token requests in 2.5 s: a stampede"
    );
    let records: Vec<_> = rig.ts.requests()[records_before..].to_vec();
    for w in records.windows(2) {
        let gap = w[1].at.duration_since(w[0].at);
        assert!(
            gap >= Duration::from_millis(200),
            "{fault:?}: attempts {gap:?} apart"
        );
    }
    assert!(
        records.iter().all(|r| r.fault.is_some()),
        "{fault:?}: {records:?}"
    );

    assert!(!sc.has_exited(), "{fault:?}: the sidecar exited");
    assert_eq!(
        sc.admin_get("/readyz").await.0,
        200,
        "{fault:?}: not ready with a valid token"
    );
    let info = sc.token_info().await;
    assert_eq!(info["valid"], true, "{info}");
    assert_eq!(info["version"].as_u64(), Some(v1), "{info}");
    assert_eq!(info["last_refresh"]["result"], "failure", "{info}");
    assert!(info["last_refresh"]["error"].is_string(), "{info}");
    let m = sc.metrics().await;
    assert!(
        metrics::sum(
            &m,
            "token_sidecar_token_refreshes_total",
            &[("result", "failure")]
        ) >= 2.0,
        "{m}"
    );

    // The fault gone, a refresh works again without a restart.
    rig.ts.clear_fault();
    eventually(DEADLINE, "a successful refresh after the fault", || async {
        sc.post_refresh().await.status == 200
    })
    .await;
    assert!(sc.token_info().await["version"].as_u64().unwrap() > v1);
    assert_eq!(Client::http1().get(&sc.url("/x")).await.status, 200);
    assert_no_secret_anywhere(&sc, &[]).await;
    (rig, sc)
}

#[tokio::test]
async fn token_endpoint_5xx_errors_keep_the_valid_token_and_are_retried_without_a_stampede() {
    let mut runs = Vec::new();
    for code in [500u16, 502, 503, 504] {
        runs.push(tokio::spawn(hold_the_token_through(
            Fault::Status(code),
            &[],
        )));
    }
    for (code, run) in [500, 502, 503, 504].into_iter().zip(runs) {
        let (_rig, sc) = run.await.unwrap();
        let logs = sc.logs().join("\n");
        assert!(logs.contains(&format!("answered {code}")), "{code}: {logs}");
    }
}

#[tokio::test]
async fn token_endpoint_garbage_body_keeps_the_valid_token() {
    let (_rig, sc) = hold_the_token_through(Fault::Garbage, &[]).await;
    assert!(sc.logs().join("\n").contains("not JSON"));
}

#[tokio::test]
async fn token_endpoint_html_error_page_keeps_the_valid_token() {
    let (_rig, sc) = hold_the_token_through(Fault::Html, &[]).await;
    assert!(sc.logs().join("\n").contains("502"));
}

#[tokio::test]
async fn token_endpoint_empty_body_keeps_the_valid_token() {
    hold_the_token_through(Fault::Empty, &[]).await;
}

#[tokio::test]
async fn token_endpoint_body_without_access_token_keeps_the_valid_token() {
    let (_rig, sc) = hold_the_token_through(Fault::MissingAccessToken, &[]).await;
    assert!(sc.logs().join("\n").contains("no access_token"));
}

#[tokio::test]
async fn token_endpoint_huge_body_is_cut_off_and_keeps_the_valid_token() {
    let (rig, sc) = hold_the_token_through(Fault::HugeBody, &[]).await;
    assert!(sc.logs().join("\n").contains("larger than"));
    drop(rig);
    // Several 10 MiB answers were refused after 256 KiB each: memory stays small.
    let rss = support::procfs::rss_kib(sc.pid()).unwrap() / 1024;
    assert!(rss < 64, "RSS {rss} MiB");
}

#[tokio::test]
async fn token_endpoint_slower_than_the_token_request_timeout_keeps_the_valid_token() {
    let (_rig, sc) = hold_the_token_through(
        Fault::Slow(Duration::from_secs(3)),
        &["--token-request-timeout", "400ms"],
    )
    .await;
    assert!(sc.logs().join("\n").contains("no answer within"));
}

#[tokio::test]
async fn token_endpoint_dropping_connections_keeps_the_valid_token() {
    hold_the_token_through(Fault::DropConnection, &[]).await;
}

#[tokio::test]
async fn token_endpoint_down_keeps_the_valid_token_and_recovers_when_it_listens_again() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let sc = rig.sidecar().start().await;
    sc.wait_ready().await;
    rig.ts.stop_listening().await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(&sc, stop.clone());
    sc.post_refresh()
        .await
        .assert_sidecar_error(502, "refresh_failed");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok >= 20);
    let m = sc.metrics().await;
    let failures = metrics::sum(
        &m,
        "token_sidecar_token_refreshes_total",
        &[("result", "failure")],
    );
    assert!(
        (2.0..=7.0).contains(&failures),
        "{failures} failed attempts in 2.5 s: {m}"
    );
    assert!(sc.token_info().await["last_refresh"]["error"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    rig.ts.resume_listening().await.unwrap();
    eventually(DEADLINE, "a refresh once the endpoint is back", || async {
        sc.post_refresh().await.status == 200
    })
    .await;
    assert_no_secret_anywhere(&sc, &[]).await;
}

#[tokio::test]
async fn token_endpoint_429_retry_after_is_honoured_by_every_trigger() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let sc = rig.sidecar().start().await;
    sc.wait_ready().await;
    let v1 = sc.token_info().await["version"].as_u64().unwrap();
    rig.ts.set_fault(
        Fault::TooManyRequests {
            retry_after: Some(2),
        },
        Some(1),
    );
    let before = arrivals(&rig);
    let records_before = rig.ts.request_count();
    sc.post_refresh()
        .await
        .assert_sidecar_error(502, "refresh_failed");
    let throttled_at = rig.ts.requests().last().unwrap().at;
    assert_eq!(rig.ts.requests().last().unwrap().status, 429);
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(&sc, stop.clone());

    // Within the 2 s: a forced refresh is answered without asking the endpoint (too many
    // requests: the endpoint's wait, and the manual refresh just made)...
    let r = sc.post_refresh().await;
    r.assert_sidecar_error(429, "rate_limited");
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    // ...and so are the 401s of a token the API stopped accepting.
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    assert!(failed.is_empty() && ok >= 1, "{failed:?}");
    rig.ts.expire_access_tokens();
    for _ in 0..10 {
        let r = Client::http1().get(&sc.url("/restapi/v1.0/echo")).await;
        assert_eq!(r.status, 401, "{}", r.text());
    }
    assert!(
        throttled_at.elapsed() < Duration::from_secs(2),
        "the checks took too long"
    );
    assert_eq!(
        arrivals(&rig) - before,
        1,
        "a token request inside Retry-After"
    );

    // After it, the timer tries again by itself, and succeeds.
    assert!(
        rig.ts.wait_for_arrivals(before + 2, DEADLINE).await,
        "no retry after Retry-After"
    );
    // The double counts an arrival before it has read the request, and records it once it
    // has answered: wait for the record before reading it.
    assert!(
        rig.ts.wait_for_requests(records_before + 2, DEADLINE).await,
        "the retry was not answered"
    );
    let retried_at = rig.ts.requests().last().unwrap().at;
    let waited = retried_at.duration_since(throttled_at);
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    assert!(
        waited < Duration::from_secs(4),
        "retried only after {waited:?}"
    );
    eventually(DEADLINE, "the new token", || async {
        sc.token_info().await["version"].as_u64().unwrap_or(0) > v1
    })
    .await;
    assert_eq!(
        Client::http1()
            .get(&sc.url("/restapi/v1.0/echo"))
            .await
            .status,
        200
    );
    assert_no_secret_anywhere(&sc, &[]).await;
}

#[tokio::test]
async fn token_endpoint_outage_during_a_burst_of_401s_makes_one_token_request_not_a_stampede() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    let sc = rig.sidecar().start().await;
    sc.wait_ready().await;
    rig.ts.set_fault(Fault::Status(503), None);
    rig.ts.expire_access_tokens();
    let before = arrivals(&rig);
    let client = Client::http1();
    for wave in 0..2 {
        let mut tasks = Vec::new();
        for i in 0..100 {
            let client = client.clone();
            let url = sc.url(&format!("/restapi/v1.0/echo?wave={wave}&i={i}"));
            tasks.push(tokio::spawn(async move { client.get(&url).await }));
        }
        for t in tasks {
            let r = t.await.unwrap();
            // The API's own 401, passed through once no newer token could be had.
            assert_eq!(r.status, 401, "{}", r.text());
            assert!(r.header("x-token-sidecar-error").is_none());
        }
    }
    // One refresh for the whole burst; the timer's own retries (backed off) may add a few.
    // The double counts a timer attempt when it arrives, the sidecar once it has handled the
    // answer: compare the two at a moment when no attempt is in flight.
    let counted = |m: &str, trigger: &str| {
        metrics::sum(
            m,
            "token_sidecar_token_refreshes_total",
            &[("trigger", trigger)],
        )
    };
    let snapshot = std::cell::RefCell::new((String::new(), 0u64));
    eventually(
        DEADLINE,
        "every token request counted by the sidecar",
        || async {
            let attempts = arrivals(&rig) - before;
            let m = sc.metrics().await;
            let settled = attempts as f64 == counted(&m, "unauthorized") + counted(&m, "timer");
            *snapshot.borrow_mut() = (m, attempts);
            settled
        },
    )
    .await;
    let (m, attempts) = snapshot.into_inner();
    let (on_401, timed) = (counted(&m, "unauthorized"), counted(&m, "timer"));
    assert_eq!(on_401, 1.0, "token requests triggered by 200 401s: {m}");
    assert_eq!(attempts as f64, on_401 + timed, "{m}");
    assert!(attempts <= 4, "{attempts} token requests during the burst");
    assert!(!sc.logs().join("\n").contains("panicked"));
}

#[tokio::test]
async fn token_endpoint_failures_back_off_within_growing_bounds() {
    let rig = Rig::new(TokenServerConfig::default()).await;
    rig.ts.set_fault(Fault::Status(500), None);
    let sc = rig.sidecar().start().await;
    // Startup attempt, then retries after U[0.25, 1], U[0.25, 2], U[0.25, 4] seconds (full
    // jitter): each gap is random, its ceiling doubles.
    assert!(
        rig.ts.wait_for_requests(4, Duration::from_secs(15)).await,
        "fewer than 4 attempts in 15 s"
    );
    let at: Vec<Instant> = rig.ts.requests().iter().take(4).map(|r| r.at).collect();
    let planned: Vec<(u64, u64)> = sc
        .json_logs()
        .iter()
        .filter(|v| v["message"] == "token refresh failed")
        .map(|v| {
            (
                v["consecutive_failures"].as_u64().unwrap(),
                v["retry_in_ms"].as_u64().unwrap(),
            )
        })
        .take(3)
        .collect();
    assert_eq!(planned.len(), 3, "{}", sc.logs().join("\n"));
    for (k, w) in at.windows(2).enumerate() {
        let gap = w[1].duration_since(w[0]);
        let ceiling = Duration::from_secs(1 << k);
        let (failures, retry_ms) = planned[k];
        assert_eq!(failures, k as u64 + 1, "consecutive failures counted");
        assert!(
            (250..=ceiling.as_millis() as u64).contains(&retry_ms),
            "attempt {}: planned {retry_ms} ms, ceiling {ceiling:?}",
            k + 2
        );
        assert!(
            gap >= Duration::from_millis(240),
            "attempt {}: {gap:?} after the last",
            k + 2
        );
        assert!(
            gap <= ceiling + Duration::from_millis(300),
            "attempt {}: {gap:?} after the last, over the ceiling {ceiling:?}",
            k + 2
        );
        let off = gap.as_millis() as i64 - retry_ms as i64;
        assert!(
            off.abs() <= 250,
            "attempt {}: {gap:?} after the last, planned {retry_ms} ms",
            k + 2
        );
    }
    // Never ready without a token, and the apps told when to come back.
    let r = Client::http1().get(&sc.url("/x")).await;
    r.assert_sidecar_error(503, "token_unavailable");
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(sc.admin_get("/readyz").await.0, 503);
}

#[tokio::test]
async fn token_endpoint_429_with_a_zero_retry_after_still_backs_off() {
    // `Retry-After: 0` (or an HTTP date in the past, as a server with a slow clock sends) on a
    // 429: the endpoint is still refusing; the retries must not settle into a fixed fast beat.
    let rig = Rig::new(TokenServerConfig::default()).await;
    rig.ts.set_fault(
        Fault::TooManyRequests {
            retry_after: Some(0),
        },
        None,
    );
    let sc = rig.sidecar().start().await;
    let planned = || -> Vec<u64> {
        sc.json_logs()
            .iter()
            .filter(|v| v["message"] == "token refresh failed")
            .map(|v| v["retry_in_ms"].as_u64().unwrap())
            .collect()
    };
    support::wait_until(Duration::from_secs(20), "three failed attempts", || {
        planned().len() >= 3
    })
    .await;
    let planned: Vec<u64> = planned().into_iter().take(3).collect();
    // Full-jitter backoff draws from [250 ms, 1 s], [250 ms, 2 s], [250 ms, 4 s]: all three
    // at the floor would be a one-in-millions draw; a fixed 250 ms beat is the bug.
    assert!(
        planned.iter().any(|&ms| ms > 260),
        "retries planned {planned:?} ms apart"
    );
    for (k, ms) in planned.iter().enumerate() {
        assert!(
            (250..=1000u64 << k).contains(ms),
            "attempt {}: planned {ms} ms",
            k + 2
        );
    }
}
