//! Graceful shutdown of the real process: SIGTERM/SIGINT stop accepting, in-flight requests
//! finish within `--shutdown-grace`, the exit code is 0.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    eventually, wait_until, Client, Sidecar, SidecarBuilder, Upstream, DEADLINE, MARKER,
};

async fn setup(extra: &[&str]) -> (Upstream, Sidecar) {
    let up = Upstream::start().await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .args(extra)
        .start()
        .await;
    (up, sc)
}

/// Whether a new TCP connection to `addr` is refused.
async fn refused(addr: std::net::SocketAddr) -> bool {
    match tokio::net::TcpStream::connect(addr).await {
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}

const SHUTTING_DOWN: &str = "shutting down: no new connections, draining in-flight requests";

/// SIGTERM with a request in flight over `client` (HTTP/1.1 or h2c): new connections are
/// refused at once, the request finishes over its protocol, the process exits 0.
async fn sigterm_lets_an_in_flight_request_finish(client: Client, version: http::Version) {
    let (up, mut sc) = setup(&[]).await;
    let in_flight = {
        let url = sc.url("/hold");
        tokio::spawn(async move { client.get(&url).await })
    };
    wait_until(DEADLINE, "the upstream to hold the request", || {
        up.request_count() == 1
    })
    .await;

    sc.sigterm();
    sc.wait_for_log(SHUTTING_DOWN).await;
    let addr = sc.proxy_addr;
    eventually(DEADLINE, "new connections to be refused", || refused(addr)).await;
    assert!(!in_flight.is_finished());
    assert!(!sc.has_log("shutdown complete"));

    up.release_hold();
    let r = tokio::time::timeout(DEADLINE, in_flight)
        .await
        .expect("the in-flight request completes")
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, version);
    assert_eq!(r.text(), "released");

    let status = sc.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(sc.has_log("shutdown complete"));
    assert_eq!(up.request_count(), 1);
    assert_eq!(
        up.last().header_values("authorization"),
        vec![format!("Bearer {MARKER}")]
    );
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_refuses_new_connections_and_exits_zero() {
    sigterm_lets_an_in_flight_request_finish(Client::http1(), http::Version::HTTP_11).await;
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_h2c_request_finish() {
    sigterm_lets_an_in_flight_request_finish(Client::h2c(), http::Version::HTTP_2).await;
}

#[tokio::test]
async fn shutdown_grace_bounds_the_wait_for_in_flight_requests() {
    let (up, mut sc) = setup(&["--shutdown-grace", "300ms"]).await;
    let url = sc.url("/hold");
    let in_flight = tokio::spawn(async move {
        Client::http1()
            .try_send(
                http::Request::get(url)
                    .body(support::client::empty())
                    .unwrap(),
            )
            .await
            .map(|r| r.status())
    });
    wait_until(DEADLINE, "the upstream to hold the request", || {
        up.request_count() == 1
    })
    .await;
    let start = Instant::now();
    sc.sigterm();
    let status = sc.wait_exit(DEADLINE).await;
    let took = start.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(took >= Duration::from_millis(250), "exited after {took:?}");
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    assert!(sc.has_log("in-flight requests did not finish within the grace period"));
    // The app's request did not get a 200 (its connection went away with the process).
    let outcome = tokio::time::timeout(DEADLINE, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_delay_shutdown() {
    let (_up, mut sc) = setup(&[]).await;
    // One idle HTTP/1.1 keep-alive connection and one idle HTTP/2 connection stay pooled.
    let h1 = Client::http1();
    let h2 = Client::h2c();
    assert_eq!(h1.get(&sc.url("/a")).await.status, 200);
    assert_eq!(h2.get(&sc.url("/b")).await.status, 200);

    let start = Instant::now();
    sc.sigterm();
    let status = sc.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "exited after {:?}",
        start.elapsed()
    );
    assert!(sc.has_log("shutdown complete"));
    drop((h1, h2));
}

#[tokio::test]
async fn sigint_also_shuts_down_with_exit_zero() {
    let (_up, mut sc) = setup(&[]).await;
    let st = Command::new("kill")
        .arg("-INT")
        .arg(sc.pid().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let status = sc.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(sc
        .json_logs()
        .iter()
        .any(|v| v["message"] == SHUTTING_DOWN && v["signal"] == "SIGINT"));
}
