//! The upstream connection pool against the real binary: connections are reused across
//! requests and app connections, never reused after an abandoned response, replaced
//! transparently when the upstream closes them, and closed after the idle timeout.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use support::client::empty;
use support::scripted::Scripted;
use support::{
    eventually, metrics, raw_request, wait_until, Client, Sidecar, SidecarBuilder, Upstream,
    DEADLINE, MARKER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn setup() -> (Upstream, Sidecar) {
    let up = Upstream::start().await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .start()
        .await;
    (up, sc)
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let (up, sc) = setup().await;
    let client = Client::http1();
    for i in 0..20 {
        let r = client.get(&sc.url(&format!("/seq/{i}"))).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A new app connection per request: the upstream connection still carries them all.
    for i in 0..10 {
        let req =
            format!("GET /fresh/{i} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let r = raw_request(sc.route_addr("default"), req.as_bytes()).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.request_count(), 30);
    assert_eq!(
        up.connections(),
        1,
        "every request should reuse the first connection"
    );
}

#[tokio::test]
async fn concurrent_requests_reuse_their_connections() {
    let (up, sc) = setup().await;
    let client = Client::http1();
    let mut after_first_round = 0;
    for round in 0..5 {
        let urls: Vec<String> = (0..16)
            .map(|i| sc.url(&format!("/c/{round}/{i}")))
            .collect();
        let replies = futures_util::future::join_all(urls.iter().map(|u| client.get(u))).await;
        assert!(replies.iter().all(|r| r.status == 200));
        if round == 0 {
            after_first_round = up.connections();
        }
    }
    assert_eq!(up.request_count(), 80);
    assert!(
        (1..=16).contains(&after_first_round),
        "{after_first_round} connections for 16 concurrent requests"
    );
    // Later rounds find idle connections instead of opening new ones (a few more may be
    // opened when a round's requests arrive before the previous round's connections are
    // idle again, but never one per request).
    assert!(
        up.connections() <= 32,
        "{} connections for 80 requests, 16 at a time",
        up.connections()
    );
}

#[tokio::test]
async fn a_response_abandoned_halfway_does_not_leave_its_connection_in_the_pool() {
    let (up, sc) = setup().await;
    {
        let client = Client::http1();
        let resp = client
            .send_streaming(
                Request::get(sc.url("/large-download?size=33554432"))
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
        // The app goes away with 32 MiB still to come.
    }
    // The next requests must not land on the connection with the rest of that body.
    let client = Client::http1();
    for i in 0..5 {
        let r = client.get(&sc.url(&format!("/after/{i}"))).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(up.last().path_and_query(), format!("/after/{i}"));
    }
    assert_eq!(
        up.connections(),
        2,
        "one connection for the abandoned download, one reused for the rest"
    );
}

/// An upstream that answers one request per connection and then closes it, without saying
/// `Connection: close`, as servers do when their keep-alive timeout fires.
async fn one_shot_upstream() -> Scripted {
    Scripted::start(|mut c| async move {
        if c.read_request().await.is_some() {
            let body = format!("conn {}", c.index);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = c.stream.write_all(resp.as_bytes()).await;
        }
    })
    .await
}

#[tokio::test]
async fn connections_closed_by_the_upstream_are_replaced_without_failing_requests() {
    let up = one_shot_upstream().await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .start()
        .await;
    let client = Client::http1();
    for i in 0..20 {
        let r = client.get(&sc.url(&format!("/r/{i}"))).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), format!("conn {i}"));
    }
    assert_eq!(up.connections(), 20);
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let closed = Arc::new(AtomicBool::new(false));
    let answered_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let idle_for = Arc::new(std::sync::Mutex::new(None::<Duration>));
    let (c2, a2, i2) = (closed.clone(), answered_at.clone(), idle_for.clone());
    let up = Scripted::start(move |mut c| {
        let (closed, answered_at, idle_for) = (c2.clone(), a2.clone(), i2.clone());
        async move {
            while c.read_request().await.is_some() {
                let _ = c
                    .stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                *answered_at.lock().unwrap() = Some(Instant::now());
            }
            // `read_request` returned None: the sidecar closed the connection.
            let since = answered_at.lock().unwrap().map(|t| t.elapsed());
            *idle_for.lock().unwrap() = since;
            closed.store(true, Ordering::SeqCst);
            let mut rest = Vec::new();
            let _ = c.stream.read_to_end(&mut rest).await;
        }
    })
    .await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .args(["--upstream-idle-timeout", "1s"])
        .start()
        .await;
    let r = Client::http1().get(&sc.url("/once")).await;
    assert_eq!(r.status, 200);
    wait_until(
        DEADLINE,
        "the idle upstream connection to be closed",
        || closed.load(Ordering::SeqCst),
    )
    .await;
    let idle = idle_for.lock().unwrap().expect("answered before closing");
    assert!(
        idle >= Duration::from_millis(900),
        "closed after {idle:?} idle, before the 1s idle timeout"
    );
    assert_eq!(up.connections(), 1);
}

/// `check` with `flag value` exits 64 and names the flag.
fn assert_refused(flag: &str, value: &str) {
    let out = support::sidecar::run_once(
        [
            "check",
            "--grant",
            "static",
            "--upstream",
            "http://127.0.0.1:9",
            flag,
            value,
        ],
        &[("TOKEN_SIDECAR_STATIC_TOKEN", "x")],
    );
    assert_eq!(out.code, Some(64), "{}", out.all());
    assert!(out.all().contains(flag), "{}", out.all());
}

#[test]
fn a_bad_upstream_idle_timeout_is_refused() {
    assert_refused("--upstream-idle-timeout", "0s");
}

#[tokio::test]
async fn requests_beyond_the_connection_limit_wait_for_a_connection() {
    let up = Upstream::start().await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .args(["--max-upstream-connections", "2"])
        .start()
        .await;
    let gauge = |m: &str, name: &str, label: (&str, &str)| metrics::value(m, name, &[label]);
    let client = Client::http1();
    let urls: Vec<String> = (0..5).map(|i| sc.url(&format!("/hold/{i}"))).collect();
    let all = futures_util::future::join_all(urls.iter().map(|u| client.get(u)));
    let check = async {
        // All five reached the sidecar; two went upstream, three wait for a connection.
        eventually(
            DEADLINE,
            "five app connections and two upstream requests",
            || async {
                let m = sc.metrics().await;
                gauge(
                    &m,
                    "token_sidecar_open_connections",
                    ("listener", "default"),
                ) == Some(5.0)
                    && up.request_count() == 2
            },
        )
        .await;
        let m = sc.metrics().await;
        assert_eq!(
            gauge(
                &m,
                "token_sidecar_upstream_connections",
                ("route", "default")
            ),
            Some(2.0),
            "{m}"
        );
        assert_eq!(up.request_count(), 2);
        up.release_hold();
    };
    let (replies, ()) = tokio::join!(all, check);
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(up.request_count(), 5);
    assert_eq!(
        up.connections(),
        2,
        "the waiting requests reuse the two connections"
    );
}

/// A slow upstream needs a connection per request in flight: a burst far beyond the pool's
/// floor (64) reaches it at once, and requests to fast endpoints are not held up meanwhile.
#[tokio::test]
async fn a_burst_to_a_slow_upstream_gets_a_connection_per_request() {
    let (up, sc) = setup().await;
    const HELD: usize = 300;
    let client = Client::http1();
    let urls: Vec<String> = (0..HELD).map(|i| sc.url(&format!("/hold/{i}"))).collect();
    let all = futures_util::future::join_all(urls.iter().map(|u| client.get(u)));
    let check = async {
        eventually(DEADLINE, "every held request at the upstream", || async {
            up.request_count() >= HELD
        })
        .await;
        let m = sc.metrics().await;
        let open = metrics::value(
            &m,
            "token_sidecar_upstream_connections",
            &[("route", "default")],
        )
        .unwrap_or(0.0);
        assert!(open >= HELD as f64, "{open} upstream connections");
        // Fast requests still get through while all of those are held.
        for i in 0..20 {
            let r = client.get(&sc.url(&format!("/fast/{i}"))).await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        up.release_hold();
    };
    let (replies, ()) = tokio::join!(all, check);
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(up.request_count(), HELD + 20);
}

/// Beyond the floor (64), requests the pool may not open a connection for yet wait for room
/// together: one keeps the clock, the others wait for its news. When the one keeping the clock
/// gets a connection that came back instead, another must keep it: the others must not wait
/// until a connection comes back to each of them (here, until the upstream timeout).
#[tokio::test]
async fn requests_waiting_for_room_get_it_after_the_one_keeping_the_clock_got_a_connection() {
    const BURST: usize = 400;
    // Each round makes it likely that the request keeping the clock is among the first to be
    // handed a connection; three make it near certain.
    for round in 0..3 {
        let (up, sc) = setup().await;
        let client = Client::http1();
        // The floor's connections, each busy with a download that ends on release_download.
        let urls: Vec<String> = (0..64)
            .map(|i| sc.url(&format!("/slow-download/{round}/{i}?chunks=1")))
            .collect();
        let downloads = futures_util::future::join_all(urls.iter().map(|u| client.get(u)));
        let rest = async {
            eventually(
                DEADLINE,
                "the floor's downloads at the upstream",
                || async { up.request_count() >= 64 },
            )
            .await;
            let urls: Vec<String> = (0..BURST)
                .map(|i| sc.url(&format!("/hold/{round}/{i}")))
                .collect();
            let burst = futures_util::future::join_all(urls.iter().map(|u| client.get(u)));
            let check = async {
                // The pool grows beyond its floor, a window at a time, while the rest of the
                // burst waits. The downloads' connections come back to the oldest waiting
                // requests, the one keeping the clock among them.
                eventually(DEADLINE, "the pool growing beyond its floor", || async {
                    up.request_count() > 64 + 64
                })
                .await;
                up.release_download();
                eventually(
                    DEADLINE,
                    "every request of the burst at the upstream",
                    || async { up.request_count() >= 64 + BURST },
                )
                .await;
                up.release_hold();
            };
            let (replies, ()) = tokio::join!(burst, check);
            assert!(replies.iter().all(|r| r.status == 200), "round {round}");
        };
        let (downloaded, ()) = tokio::join!(downloads, rest);
        assert!(downloaded.iter().all(|r| r.status == 200), "round {round}");
    }
}

#[test]
fn a_bad_connection_limit_is_refused() {
    assert_refused("--max-upstream-connections", "lots");
    assert_refused("--max-upstream-connections", "100000");
}
