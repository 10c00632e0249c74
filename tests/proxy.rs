//! The data plane against the real binary: forwarding rules, the sidecar's own answers,
//! HTTP/2, WebSocket, streaming, TLS to the upstream, metrics and the admin endpoints.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Version};
use http_body_util::BodyExt;
use support::client::{channel_body, empty, full};
use support::metrics;
use support::{
    eventually, pattern, raw_request, wait_until, Client, Fnv, Sidecar, SidecarBuilder, Upstream,
    DEADLINE, MARKER,
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// A fake upstream and a sidecar in front of it with the static marker token.
async fn setup() -> (Upstream, Sidecar) {
    let up = Upstream::start().await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .start()
        .await;
    (up, sc)
}

fn bearer() -> String {
    format!("Bearer {MARKER}")
}

#[tokio::test]
async fn injects_exactly_one_authorization_and_drops_the_apps_credentials() {
    let (up, sc) = setup().await;
    let mut req = Request::post(sc.url("/echo"))
        .body(full("payload"))
        .unwrap();
    let h = req.headers_mut();
    h.append("authorization", "Bearer app-token-1".parse().unwrap());
    h.append("authorization", "Basic YXBwOnB3".parse().unwrap());
    h.append("proxy-authorization", "Basic cHJveHk6cHc=".parse().unwrap());
    let resp = Client::http1().send(req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "payload");
    assert!(resp.header("x-token-sidecar-error").is_none());

    let got = up.last();
    assert_eq!(got.header_values("authorization"), vec![bearer()]);
    assert!(got.header_values("proxy-authorization").is_empty());
    assert_eq!(got.body, Bytes::from_static(b"payload"));
}

#[tokio::test]
async fn custom_header_and_prefix_carry_the_token() {
    let up = Upstream::start().await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .args(["--header", "X-Api-Key", "--header-prefix", "Token "])
        .start()
        .await;
    let resp = Client::http1()
        .get_with(
            &sc.url("/x"),
            &[("authorization", "Bearer app"), ("x-api-key", "app-key")],
        )
        .await;
    assert_eq!(resp.status, 200);
    let got = up.last();
    assert_eq!(
        got.header_values("x-api-key"),
        vec![format!("Token {MARKER}")]
    );
    assert!(
        got.header_values("authorization").is_empty(),
        "the app's Authorization must be removed"
    );
}

#[tokio::test]
async fn empty_header_prefix_sends_the_bare_token() {
    let up = Upstream::start().await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .args(["--header-prefix", ""])
        .start()
        .await;
    let resp = Client::http1().get(&sc.url("/x")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(up.last().header_values("authorization"), vec![MARKER]);
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let (up, sc) = setup().await;
    let req = "POST /hop HTTP/1.1\r\n\
        Host: localhost:8080\r\n\
        Connection: close, X-Custom-Hop,x-other-hop\r\n\
        Keep-Alive: timeout=5\r\n\
        X-Custom-Hop: 1\r\n\
        X-Other-Hop: 2\r\n\
        Proxy-Connection: keep-alive\r\n\
        Upgrade: h2c\r\n\
        TE: gzip\r\n\
        Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
        X-End-To-End: kept\r\n\
        Accept: application/json\r\n\
        User-Agent: test-app/1.0\r\n\
        Transfer-Encoding: chunked\r\n\
        \r\n\
        5\r\nhello\r\n0\r\n\r\n";
    let resp = raw_request(sc.proxy_addr, req.as_bytes()).await;
    assert_eq!(
        resp.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(resp.body, b"hello");

    let got = up.last();
    for name in [
        "connection",
        "keep-alive",
        "x-custom-hop",
        "x-other-hop",
        "proxy-connection",
        "upgrade",
        "te",
        "proxy-authorization",
    ] {
        assert!(
            got.header_values(name).is_empty(),
            "{name} was forwarded: {:?}",
            got.headers
        );
    }
    // The app's framing is not forwarded; the sidecar's client frames the body itself.
    for te in got.header_values("transfer-encoding") {
        assert_eq!(
            te, "chunked",
            "transfer-encoding forwarded: {:?}",
            got.headers
        );
    }
    assert_eq!(got.header("x-end-to-end").as_deref(), Some("kept"));
    assert_eq!(got.header("accept").as_deref(), Some("application/json"));
    assert_eq!(got.header("user-agent").as_deref(), Some("test-app/1.0"));
    assert_eq!(got.header_values("authorization"), vec![bearer()]);
    assert_eq!(got.body, Bytes::from_static(b"hello"));
}

#[tokio::test]
async fn te_trailers_is_forwarded_and_other_te_values_are_not() {
    let (up, sc) = setup().await;
    let client = Client::http1();
    let r = client
        .get_with(&sc.url("/te1"), &[("te", "trailers")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("te").as_deref(), Some("trailers"));

    let r = client.get_with(&sc.url("/te2"), &[("te", "gzip")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("te"), None);
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_not_returned() {
    let (_up, sc) = setup().await;
    let r = Client::http1().get(&sc.url("/resp-hop")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-resp-keep"), Some("kept"));
    assert_eq!(r.header("x-upstream"), Some("fake"));
    for name in ["x-resp-hop", "keep-alive", "proxy-authenticate"] {
        assert!(r.header(name).is_none(), "{name} returned: {:?}", r.headers);
    }
    if let Some(c) = r.header("connection") {
        assert!(!c.contains("x-resp-hop"), "connection: {c}");
    }
}

#[tokio::test]
async fn host_is_the_upstreams() {
    let (up, sc) = setup().await;
    let r = Client::http1()
        .get_with(&sc.url("/host"), &[("host", "localhost:1234")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header_values("host"), vec![up.addr.to_string()]);
}

#[tokio::test]
async fn path_and_query_are_joined_onto_the_upstream_base_path() {
    let up = Upstream::start().await;
    let sc = SidecarBuilder::new(&up.url("/base"))
        .static_token(MARKER)
        .start()
        .await;
    let client = Client::http1();
    for (sent, want) in [
        ("/a/b?c=d", "/base/a/b?c=d"),
        (
            "/a%20b/c%2Fd?x=1&y=%20z&flag",
            "/base/a%20b/c%2Fd?x=1&y=%20z&flag",
        ),
        ("/?q=1", "/base/?q=1"),
        ("//double/slash", "/base//double/slash"),
    ] {
        let r = client.get(&sc.url(sent)).await;
        assert_eq!(r.status, 200, "{sent}");
        let got = up.last();
        assert_eq!(got.path_and_query(), want, "{sent}");
        assert_eq!(got.header_values("host"), vec![up.addr.to_string()]);
    }
}

#[tokio::test]
async fn connect_is_refused_and_nothing_reaches_the_upstream() {
    let (up, sc) = setup().await;
    let r = raw_request(
        sc.proxy_addr,
        b"CONNECT evil.example.com:443 HTTP/1.1\r\nHost: evil.example.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    r.assert_sidecar_error(400, "bad_request");
    assert_eq!(up.request_count(), 0);
    assert_eq!(up.connections(), 0);
}

#[tokio::test]
async fn absolute_form_naming_another_host_is_refused() {
    let (up, sc) = setup().await;
    for target in [
        "http://evil.example.com/steal",
        "https://evil.example.com:443/steal",
        "http://evil.example.com:80/",
    ] {
        let req =
            format!("GET {target} HTTP/1.1\r\nHost: evil.example.com\r\nConnection: close\r\n\r\n");
        let r = raw_request(sc.proxy_addr, req.as_bytes()).await;
        r.assert_sidecar_error(400, "bad_request");
    }
    assert_eq!(up.request_count(), 0);
    assert_eq!(up.connections(), 0);
}

#[tokio::test]
async fn absolute_form_naming_the_sidecar_or_upstream_goes_to_the_upstream() {
    let (up, sc) = setup().await;
    for target in [
        format!("http://{}/self?x=1", sc.proxy_addr),
        format!("http://{}/up", up.addr),
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: whatever\r\nConnection: close\r\n\r\n");
        let r = raw_request(sc.proxy_addr, req.as_bytes()).await;
        assert_eq!(r.status, 200, "{target}");
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].path_and_query(), "/self?x=1");
    assert_eq!(reqs[1].path_and_query(), "/up");
    for r in &reqs {
        assert_eq!(r.header_values("host"), vec![up.addr.to_string()]);
    }
}

#[tokio::test]
async fn dot_segment_paths_are_refused() {
    let (up, sc) = setup().await;
    for path in [
        "/a/../b",
        "/a/%2e%2E/b",
        "/./x",
        "/..",
        "/a/.%2E",
        "/a/./",
        // Separators and suffixes some upstreams resolve before the dot segments.
        "/a/..%2Fb",
        "/a\\..\\b",
        "/a/%2e%2e%5cb",
        "/a/..;/b",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let r = raw_request(sc.proxy_addr, req.as_bytes()).await;
        assert_eq!(r.status, 400, "{path}");
        r.assert_sidecar_error(400, "bad_request");
    }
    assert_eq!(up.request_count(), 0);

    // Dots that are not whole segments are fine.
    let client = Client::http1();
    for path in [
        "/files/report..pdf",
        "/.well-known/x",
        "/v1.2/a%2Fb",
        "/a/..b",
    ] {
        assert_eq!(client.get(&sc.url(path)).await.status, 200, "{path}");
        assert_eq!(up.last().path_and_query(), path);
    }
}

#[tokio::test]
async fn oversized_request_headers_get_431() {
    let (up, sc) = setup().await;
    let big = "a".repeat(4000);
    let mut req = String::from("GET /big HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for i in 0..10 {
        req.push_str(&format!("X-Big-{i}: {big}\r\n"));
    }
    req.push_str("\r\n");
    let r = raw_request(sc.proxy_addr, req.as_bytes()).await;
    r.assert_sidecar_error(431, "header_too_large");
    assert_eq!(up.request_count(), 0);

    // Just under the default limit (32 KiB) still goes through.
    let mut req = String::from("GET /fits HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for i in 0..6 {
        req.push_str(&format!("X-Big-{i}: {big}\r\n"));
    }
    req.push_str("\r\n");
    let r = raw_request(sc.proxy_addr, req.as_bytes()).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn many_small_headers_are_judged_by_the_byte_limit() {
    let (up, sc) = setup().await;
    // 300 small headers are well under 32 KiB: forwarded.
    let mut req = String::from("GET /many HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for i in 0..300 {
        req.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    req.push_str("\r\n");
    let r = raw_request(sc.proxy_addr, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(up.last().header("x-h299").as_deref(), Some("299"));

    // 700 headers of 40 bytes are over it: the sidecar's own 431, not hyper's bare one.
    let value = "v".repeat(40);
    let mut req = String::from("GET /many HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for i in 0..700 {
        req.push_str(&format!("X-H{i}: {value}\r\n"));
    }
    req.push_str("\r\n");
    let r = raw_request(sc.proxy_addr, req.as_bytes()).await;
    r.assert_sidecar_error(431, "header_too_large");
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn oversized_request_headers_over_h2c_get_431() {
    let (up, sc) = setup().await;
    let big = "b".repeat(4000);
    let mut req = Request::get(sc.url("/big")).body(empty()).unwrap();
    for i in 0..10 {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-big-{i}").as_bytes()).unwrap(),
            big.parse().unwrap(),
        );
    }
    let r = Client::h2c().send(req).await;
    r.assert_sidecar_error(431, "header_too_large");
    assert_eq!(up.request_count(), 0);
}

#[tokio::test]
async fn upstream_connection_refused_gives_502() {
    // A port nothing listens on: bind, note it, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let sc = SidecarBuilder::new(&format!("http://127.0.0.1:{port}"))
        .static_token(MARKER)
        .start()
        .await;
    let r = Client::http1().get(&sc.url("/x")).await;
    r.assert_sidecar_error(502, "upstream_unreachable");
    let m = sc.metrics().await;
    assert_eq!(
        metrics::value(
            &m,
            "token_sidecar_upstream_errors_total",
            &[("route", "default"), ("kind", "connect")]
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn slow_upstream_gives_504_after_the_upstream_timeout() {
    let up = Upstream::start().await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .args(["--upstream-timeout", "500ms"])
        .start()
        .await;
    let start = Instant::now();
    let r = Client::http1().get(&sc.url("/slow?ms=5000")).await;
    let took = start.elapsed();
    r.assert_sidecar_error(504, "upstream_timeout");
    assert!(
        took >= Duration::from_millis(450),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(4), "answered after {took:?}");
    let m = sc.metrics().await;
    assert_eq!(
        metrics::value(
            &m,
            "token_sidecar_upstream_errors_total",
            &[("route", "default"), ("kind", "timeout")]
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn upstream_error_statuses_pass_through_untouched() {
    let (_up, sc) = setup().await;
    let client = Client::http1();
    for code in [401u16, 404, 418, 500, 503] {
        let r = client.get(&sc.url(&format!("/status/{code}"))).await;
        assert_eq!(r.status, code);
        assert_eq!(r.text(), format!("status {code}"));
        assert_eq!(r.header("x-upstream"), Some("fake"));
        assert!(r.header("x-token-sidecar-error").is_none());
    }
}

#[tokio::test]
async fn h2c_prior_knowledge_from_the_app_is_forwarded() {
    let (up, sc) = setup().await;
    let client = Client::h2c();
    let mut req = Request::post(sc.url("/h2/echo?x=1"))
        .body(full("over h2"))
        .unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer app".parse().unwrap());
    req.headers_mut().insert("te", "trailers".parse().unwrap());
    let r = client.send(req).await;
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "over h2");
    let got = up.last();
    assert_eq!(got.path_and_query(), "/h2/echo?x=1");
    assert_eq!(got.header_values("authorization"), vec![bearer()]);
    assert_eq!(got.header_values("host"), vec![up.addr.to_string()]);
    assert_eq!(got.header("te").as_deref(), Some("trailers"));

    // Several concurrent streams on the one connection.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = client.clone();
        let url = sc.url(&format!("/h2/echo?i={i}"));
        tasks.push(tokio::spawn(async move {
            client
                .send(Request::post(url).body(full(format!("n{i}"))).unwrap())
                .await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("n{i}"));
    }
    assert_eq!(up.request_count(), 9);
}

#[tokio::test]
async fn websocket_round_trip_with_the_token_on_the_handshake() {
    let (up, sc) = setup().await;
    let stream = tokio::net::TcpStream::connect(sc.proxy_addr).await.unwrap();
    let mut req = format!("ws://{}/ws?room=1", sc.proxy_addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer app".parse().unwrap());
    let (mut ws, resp) =
        tokio::time::timeout(DEADLINE, tokio_tungstenite::client_async(req, stream))
            .await
            .expect("handshake in time")
            .expect("handshake");
    assert_eq!(resp.status(), 101);

    ws.send(Message::text("hello through the sidecar"))
        .await
        .unwrap();
    let echo = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::text("hello through the sidecar"));

    let bin = pattern(5, 0, 200_000);
    ws.send(Message::binary(bin.clone())).await.unwrap();
    let echo = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_data().to_vec(), bin);
    ws.close(None).await.unwrap();

    let got = up.last();
    assert_eq!(got.path_and_query(), "/ws?room=1");
    assert_eq!(got.header_values("authorization"), vec![bearer()]);
    assert_eq!(got.header("upgrade").as_deref(), Some("websocket"));
    assert_eq!(got.version, Version::HTTP_11);
}

/// Sends `total` bytes (chunks of 64 KiB) streamed from a producer task to `/upload`.
async fn streamed_upload(client: &Client, url: String, total: usize) -> (u64, u64) {
    let chunk = 64 * 1024;
    let (tx, body) = channel_body();
    let mut expected = Fnv::default();
    for i in 0..(total / chunk) {
        expected.update(&pattern(3, i as u64, chunk));
    }
    let producer = tokio::spawn(async move {
        for i in 0..(total / chunk) {
            tx.send(Bytes::from(pattern(3, i as u64, chunk)))
                .await
                .unwrap();
        }
    });
    let r = client.send(Request::post(url).body(body).unwrap()).await;
    producer.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = support::json(&r.body);
    assert_eq!(v["len"], total as u64);
    assert_eq!(v["hash"], expected.0.to_string());
    (total as u64, expected.0)
}

#[tokio::test]
async fn multi_megabyte_streamed_upload_arrives_intact() {
    let (up, sc) = setup().await;
    let (len, hash) = streamed_upload(&Client::http1(), sc.url("/upload"), 8 * 1024 * 1024).await;
    let got = up.last();
    assert_eq!((got.body_len, got.body_hash), (len, hash));
    assert_eq!(got.header_values("authorization"), vec![bearer()]);
}

#[tokio::test]
async fn multi_megabyte_streamed_upload_over_h2c_arrives_intact() {
    let (up, sc) = setup().await;
    let (len, hash) = streamed_upload(&Client::h2c(), sc.url("/upload"), 4 * 1024 * 1024).await;
    let got = up.last();
    assert_eq!((got.body_len, got.body_hash), (len, hash));
}

#[tokio::test]
async fn slow_download_is_streamed_not_buffered() {
    let (up, sc) = setup().await;
    let chunks = 6u64;
    let size = 4096usize;
    let resp = Client::http1()
        .send_streaming(
            Request::get(sc.url(&format!(
                "/slow-download?chunks={chunks}&size={size}&delay_ms=20"
            )))
            .body(empty())
            .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = Vec::new();
    // The upstream holds its last chunk back until told; the first must arrive before.
    let first = tokio::time::timeout(DEADLINE, async {
        loop {
            let frame = body.frame().await.expect("a frame").expect("frame ok");
            if let Ok(d) = frame.into_data() {
                if !d.is_empty() {
                    return d;
                }
            }
        }
    })
    .await
    .expect("the first chunk arrives while the upstream still holds the last one");
    received.extend_from_slice(&first);
    assert!(up.download_chunks_sent() < chunks as usize);
    up.release_download();
    let rest = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    received.extend_from_slice(&rest);

    let mut expected = Vec::new();
    for i in 0..chunks {
        expected.extend_from_slice(&pattern(7, i, size));
    }
    assert_eq!(received.len(), expected.len());
    assert_eq!(Fnv::of(&received), Fnv::of(&expected));
    assert_eq!(up.download_chunks_sent(), chunks as usize);
}

#[tokio::test]
async fn multi_megabyte_download_arrives_intact() {
    let (_up, sc) = setup().await;
    let size = 8 * 1024 * 1024u64;
    let r = Client::http1()
        .get(&sc.url(&format!("/large-download?size={size}")))
        .await;
    assert_eq!(r.status, 200);
    let mut expected = Fnv::default();
    let mut i = 0;
    let mut left = size as usize;
    while left > 0 {
        let n = left.min(64 * 1024);
        expected.update(&pattern(11, i, n));
        left -= n;
        i += 1;
    }
    assert_eq!(r.body.len() as u64, size);
    assert_eq!(Fnv::of(&r.body), expected.0);
}

#[tokio::test]
async fn https_upstream_with_a_private_ca_file() {
    let tls = support::tls::material();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let up = Upstream::start_tls(tls.server_config.clone()).await;
    let sc = SidecarBuilder::new(&up.url("/api"))
        .static_token(MARKER)
        .arg("--upstream-ca-file")
        .arg(&ca)
        .start()
        .await;
    let r = Client::http1().get(&sc.url("/secure?x=1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.last();
    assert_eq!(got.path_and_query(), "/api/secure?x=1");
    assert_eq!(got.header_values("authorization"), vec![bearer()]);
    // ALPN negotiated HTTP/2 with the upstream.
    assert_eq!(got.version, Version::HTTP_2);

    // A streamed upload over the h2 upstream connection.
    streamed_upload(&Client::http1(), sc.url("/upload"), 1024 * 1024).await;
    sc.assert_logs_free_of(MARKER);
}

#[tokio::test]
async fn https_upstream_with_an_unknown_ca_is_unreachable_and_never_sees_the_token() {
    let tls = support::tls::material();
    let up = Upstream::start_tls(tls.server_config.clone()).await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .start()
        .await;
    let r = Client::http1().get(&sc.url("/secure")).await;
    r.assert_sidecar_error(502, "upstream_unreachable");
    assert_eq!(up.request_count(), 0);
    wait_until(DEADLINE, "the upstream to see a failed handshake", || {
        up.tls_failures() >= 1
    })
    .await;
    let m = sc.metrics().await;
    assert_eq!(
        metrics::value(
            &m,
            "token_sidecar_upstream_errors_total",
            &[("route", "default"), ("kind", "tls")]
        ),
        Some(1.0),
        "{m}\n{}",
        sc.logs().join("\n")
    );
}

#[tokio::test]
async fn metric_values_after_traffic() {
    let (_up, sc) = setup().await;
    let client = Client::http1();
    for _ in 0..3 {
        assert_eq!(client.get(&sc.url("/ok")).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(client.get(&sc.url("/status/404")).await.status, 404);
    }
    let r = raw_request(
        sc.proxy_addr,
        b"GET /a/../b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);

    let m = sc.metrics().await;
    let requests = |status: &str| {
        metrics::value(
            &m,
            "token_sidecar_requests_total",
            &[("route", "default"), ("status", status)],
        )
    };
    assert_eq!(requests("200"), Some(3.0), "{m}");
    assert_eq!(requests("404"), Some(2.0), "{m}");
    assert_eq!(requests("400"), Some(1.0), "{m}");
    assert_eq!(
        metrics::sum(&m, "token_sidecar_requests_total", &[]),
        6.0,
        "{m}"
    );
    assert_eq!(
        metrics::value(
            &m,
            "token_sidecar_rejected_requests_total",
            &[("route", "default"), ("kind", "bad_request")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metrics::value(
            &m,
            "token_sidecar_request_duration_seconds_count",
            &[("route", "default")]
        ),
        Some(6.0),
        "{m}"
    );
    assert_eq!(
        metrics::value(&m, "token_sidecar_token_valid", &[("token", "default")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metrics::value(
            &m,
            "token_sidecar_token_expiry_timestamp_seconds",
            &[("token", "default")]
        ),
        Some(0.0),
        "{m}"
    );
    assert!(!m.contains(MARKER));
    // Every metric family of the spec is declared.
    for family in [
        "token_sidecar_requests_total",
        "token_sidecar_request_duration_seconds",
        "token_sidecar_token_valid",
        "token_sidecar_token_expiry_timestamp_seconds",
    ] {
        assert!(m.contains(&format!("# TYPE {family} ")), "{family} in {m}");
    }
}

#[tokio::test]
async fn admin_endpoints_answer_and_reveal_no_token() {
    let (_up, sc) = setup().await;
    let (status, body) = sc.admin_get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = sc.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = sc.admin_get("/token-info").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(MARKER), "{body}");
    let v = support::json(body.as_bytes());
    let t = &v["tokens"]["default"];
    assert_eq!(t["grant"], "static", "{v}");
    assert_eq!(t["version"], 1, "{v}");
    assert_eq!(t["valid"], true, "{v}");

    let r = Client::http1().get(&sc.admin_url("/nope")).await;
    r.assert_sidecar_error(404, "not_found");
    // The admin listener forwards nothing.
    assert_eq!(
        Client::http1().get(&sc.admin_url("/echo")).await.status,
        404
    );
}

#[tokio::test]
async fn the_token_never_appears_in_logs_metrics_token_info_or_error_bodies() {
    let (up, sc) = setup().await;
    let client = Client::http1();
    let mut bodies = Vec::new();
    for path in ["/ok", "/status/401", "/status/500", "/upload"] {
        let r = client.get(&sc.url(path)).await;
        bodies.push(r.text());
    }
    bodies.push(Client::h2c().get(&sc.url("/h2")).await.text());
    for raw in [
        &b"GET /a/../b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"[..],
        &b"GET http://evil.example.com/ HTTP/1.1\r\nHost: evil.example.com\r\nConnection: close\r\n\r\n"[..],
        &b"CONNECT evil.example.com:443 HTTP/1.1\r\nHost: evil.example.com:443\r\nConnection: close\r\n\r\n"[..],
    ] {
        let r = raw_request(sc.proxy_addr, raw).await;
        assert_eq!(r.status, 400);
        bodies.push(String::from_utf8_lossy(&r.body).into_owned());
    }
    // The token went upstream each time a request was forwarded.
    assert_eq!(up.request_count(), 5);
    assert!(up
        .requests()
        .iter()
        .all(|r| r.header_values("authorization") == vec![bearer()]));

    for b in &bodies {
        assert!(!b.contains(MARKER), "token in a response body: {b}");
    }
    for path in ["/metrics", "/token-info", "/readyz", "/healthz"] {
        let (_, body) = sc.admin_get(path).await;
        assert!(!body.contains(MARKER), "token in {path}: {body}");
    }
    // A debug log line is written per request; wait for the last one, then check every line.
    eventually(DEADLINE, "a debug log line per request", || async {
        sc.json_logs()
            .iter()
            .filter(|v| v["message"] == "request")
            .count()
            >= 8
    })
    .await;
    sc.assert_logs_free_of(MARKER);
}

#[tokio::test]
async fn slow_header_senders_and_idle_connections_are_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .args(["--header-read-timeout", "300ms"])
        .start()
        .await;

    // Half a request head, then silence: the connection is closed.
    let mut s = tokio::net::TcpStream::connect(sc.proxy_addr).await.unwrap();
    s.write_all(b"GET /slowloris HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
        .await
        .expect("the sidecar closes a connection whose headers never complete");
    assert!(n.is_err() || !buf.starts_with(b"HTTP/1.1 200"), "{buf:?}");
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(up.request_count(), 0);

    // A keep-alive connection left idle after a complete exchange is closed as well.
    let mut s = tokio::net::TcpStream::connect(sc.proxy_addr).await.unwrap();
    s.write_all(b"GET /idle HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "an idle keep-alive connection stays open");
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn upstream_closing_without_an_answer_gives_502() {
    use tokio::io::AsyncReadExt;
    // An upstream that reads the request and hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let sc = SidecarBuilder::new(&format!("http://{addr}"))
        .static_token(MARKER)
        .start()
        .await;
    let r = Client::http1().get(&sc.url("/x")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.header("x-token-sidecar-error").is_some());
    support::assert_sidecar_error(
        r.status,
        &r.headers,
        &r.body,
        502,
        r.header("x-token-sidecar-error").unwrap(),
    );
    let m = sc.metrics().await;
    assert_eq!(
        metrics::value(
            &m,
            "token_sidecar_upstream_errors_total",
            &[("route", "default"), ("kind", "protocol")]
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn head_and_no_content_responses_pass_through() {
    let (up, sc) = setup().await;
    let client = Client::http1();
    let r = client
        .send(
            Request::head(sc.url("/large-download?size=1000"))
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000"));
    assert!(r.body.is_empty());
    assert_eq!(up.last().method, http::Method::HEAD);

    let r = client.get(&sc.url("/status/204")).await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    // The connection is still usable afterwards.
    assert_eq!(client.get(&sc.url("/after")).await.status, 200);
}

#[tokio::test]
async fn h2c_upgrade_requests_are_forwarded_as_plain_http1() {
    // `curl --http2 http://...` asks to upgrade to h2c. Passing that through would turn the
    // connection into a tunnel whose later requests bypass the sidecar (no token, no base
    // path, no checks), so the upgrade offer is dropped and the request forwarded as is.
    let (up, sc) = setup().await;
    let req = "GET /offer-h2c HTTP/1.1\r\n\
        Host: localhost\r\n\
        Connection: Upgrade, HTTP2-Settings, close\r\n\
        Upgrade: h2c\r\n\
        HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\
        \r\n";
    let r = raw_request(sc.proxy_addr, req.as_bytes()).await;
    assert_eq!(r.status, 200);
    let got = up.last();
    assert_eq!(got.path_and_query(), "/offer-h2c");
    for name in ["upgrade", "http2-settings", "connection"] {
        assert!(
            got.header_values(name).is_empty(),
            "{name} forwarded: {:?}",
            got.headers
        );
    }
    assert_eq!(got.header_values("authorization"), vec![bearer()]);
}

#[tokio::test]
async fn upstream_connect_timeout_gives_502() {
    // A listener that never accepts, its backlog filled: further connection attempts hang.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let sc = SidecarBuilder::new(&format!("http://{addr}"))
        .static_token(MARKER)
        .args(["--connect-timeout", "300ms"])
        .start()
        .await;
    let start = Instant::now();
    let r = Client::http1().get(&sc.url("/x")).await;
    let took = start.elapsed();
    r.assert_sidecar_error(502, "upstream_unreachable");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    let m = sc.metrics().await;
    assert_eq!(
        metrics::value(
            &m,
            "token_sidecar_upstream_errors_total",
            &[("route", "default"), ("kind", "timeout")]
        ),
        Some(1.0),
        "{m}\n{}",
        sc.logs().join("\n")
    );
    drop((listener, fillers));
}
