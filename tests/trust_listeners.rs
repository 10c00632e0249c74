//! Hostile clients against the listeners of the real binary, for the trust fixes of issue 15
//! (the contract's sections "Listeners", "Upgrades" and "Host and browsers"): connection
//! floods on the admin and proxy listeners, oversized admin heads, connections stalled in the
//! HTTP/2 preface, protocol upgrades that must not become tunnels, and requests from
//! DNS-rebound or cross-site browser pages.
//!
//! Every refusal is also checked for the token: it appears in no response, and the upstream
//! receives nothing. Tests whose checks are independent record every failed check and report
//! them together ([`Findings`]), so one run tells everything that is wrong.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::client::{empty, TestBody};
use support::scripted::Scripted;
use support::trust::{
    answer_of, clock_ticks_per_second, contains, cpu_ticks, exchange, exchange_on, fresh_get,
    holds_within, read_to_close, rss_kib, Conns, Exchange, Findings, RssPeak,
};
use support::{
    eventually, metrics, wait_until, Client, Sidecar, SidecarBuilder, Upstream, DEADLINE, MARKER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// KiB in a MiB (RSS is read in KiB).
const MIB: u64 = 1024;
/// Connections of a memory flood.
const FLOOD: usize = 1500;
/// Bytes of the one header line each flood connection sends (under hyper's 64 KiB buffer of
/// a proxy listener, over the admin listener's 8 KiB).
const FLOOD_HEADER: usize = 60_000;
/// A partial request head that stays under every limit: it holds a connection slot until the
/// header-read timeout.
const HOLD_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Hold: ";
/// The first 16 bytes of the HTTP/2 connection preface.
const PARTIAL_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
/// The rejection counter of the contract.
const REJECTED: &str = "token_sidecar_connections_rejected_total";
/// The open-connections gauge.
const OPEN: &str = "token_sidecar_open_connections";

fn bearer() -> String {
    format!("Bearer {MARKER}")
}

/// A recording fake upstream and a sidecar in front of it with the marker token and `args`.
async fn setup(args: &[&str]) -> (Upstream, Sidecar) {
    let up = Upstream::start().await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .args(args)
        .start()
        .await;
    (up, sc)
}

/// A request line and `FLOOD_HEADER` bytes of one header line, never finished.
fn flood_payload(path: &str) -> Vec<u8> {
    let mut p = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Flood: ").into_bytes();
    p.extend(std::iter::repeat_n(b'f', FLOOD_HEADER));
    p
}

fn mib(kib: u64) -> u64 {
    kib / MIB
}

/// A metric's value from the admin `/metrics`, read over a fresh connection that may be
/// refused (`Err` says what happened).
async fn admin_metric(sc: &Sidecar, name: &str, labels: &[(&str, &str)]) -> Result<f64, String> {
    let ex = fresh_get(sc.admin_addr, "/metrics").await;
    match &ex.answer {
        Some(a) if a.status == 200 => metrics::value(&a.text(), name, labels)
            .ok_or_else(|| format!("no series {name}{labels:?} in /metrics")),
        _ => Err(format!("/metrics: {}", ex.describe())),
    }
}

/// Calls `attempt` every 20 ms until it succeeds, or returns its last error after `deadline`.
async fn poll_until<F, Fut>(deadline: Duration, mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let end = std::time::Instant::now() + deadline;
    loop {
        let last = match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if std::time::Instant::now() >= end {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls a fresh `GET /healthz` on the admin listener until it answers 200, or returns what
/// the last attempt saw after `DEADLINE`.
async fn healthz_answers(sc: &Sidecar) -> Result<(), String> {
    let admin = sc.admin_addr;
    poll_until(DEADLINE, move || async move {
        let ex = fresh_get(admin, "/healthz").await;
        match &ex.answer {
            Some(a) if a.status == 200 => Ok(()),
            _ => Err(ex.describe()),
        }
    })
    .await
}

/// After a flood: waits up to 30 s, polling `/healthz` as a liveness probe would, for RSS to
/// come back within 8 MiB of `rss_before`; records a failure otherwise (with the listener's
/// open-connections gauge, to tell kept connections from kept memory).
async fn check_memory_back(
    f: &mut Findings,
    sc: &Sidecar,
    rss_before: u64,
    listener: &str,
    what: &str,
) {
    let (pid, admin) = (sc.pid(), sc.admin_addr);
    let back = poll_until(Duration::from_secs(30), move || async move {
        let _ = fresh_get(admin, "/healthz").await;
        let now = rss_kib(pid);
        if now <= rss_before + 8 * MIB {
            Ok(())
        } else {
            Err(format!("{} MiB", mib(now)))
        }
    })
    .await;
    if let Err(now) = back {
        let open = admin_metric(sc, OPEN, &[("listener", listener)]).await;
        f.fail(format!(
            "30s after the {what} ended, RSS is {now}, more than 8 MiB over the {} MiB before \
             it ({OPEN}{{listener=\"{listener}\"}}: {open:?})",
            mib(rss_before)
        ));
    }
}

/// The sidecar is alive and forwards a normal request with the token.
async fn check_still_serving(f: &mut Findings, sc: &mut Sidecar, up: &Upstream, path: &str) {
    if sc.has_exited() {
        f.fail(format!(
            "the sidecar exited:\n{}",
            sc.logs()[sc.logs().len().saturating_sub(20)..].join("\n")
        ));
        return;
    }
    let r = Client::http1().get(&sc.url(path)).await;
    f.check(
        r.status == 200,
        format!("a normal request to {path}: {} {}", r.status, r.text()),
    );
    f.check(
        up.requests()
            .iter()
            .any(|g| g.path_and_query() == path && g.header_values("authorization") == [bearer()]),
        format!("{path} did not reach the upstream with the token"),
    );
}

/// One HTTP/1.1 connection of the app's, kept alive across requests.
struct KeepAlive {
    tx: http1::SendRequest<TestBody>,
    host: String,
}

impl KeepAlive {
    async fn open(addr: std::net::SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect a keep-alive connection");
        let (tx, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 client handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        KeepAlive {
            tx,
            host: addr.to_string(),
        }
    }

    /// `GET path` on this connection: the status, or what went wrong.
    async fn get(&mut self, path: &str) -> Result<u16, String> {
        tokio::time::timeout(DEADLINE, self.tx.ready())
            .await
            .map_err(|_| "connection not ready within 10s".to_owned())?
            .map_err(|e| format!("connection closed: {e}"))?;
        let req = Request::get(path)
            .header("host", &self.host)
            .body(empty())
            .expect("a valid request");
        let resp = tokio::time::timeout(DEADLINE, self.tx.send_request(req))
            .await
            .map_err(|_| "no response within 10s".to_owned())?
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status().as_u16();
        answer_of(resp).await?;
        Ok(status)
    }
}

// ---------------------------------------------------------------------------------------------
// Listeners: connection floods
// ---------------------------------------------------------------------------------------------

/// The admin flood of the two tests below: `cap` connections hold every admin slot, a fresh
/// connection and then `FLOOD` connections with 60 KB header lines come on top.
async fn admin_flood(cap: usize, args: &[&str]) {
    let (up, mut sc) = setup(args).await;
    let pid = sc.pid();
    let mut f = Findings::new();

    // Warm up both listeners; then the baseline.
    let warm = fresh_get(sc.admin_addr, "/healthz").await;
    assert_eq!(
        warm.answer.as_ref().map(|a| a.status),
        Some(200),
        "/healthz before the flood: {}",
        warm.describe()
    );
    assert_eq!(Client::http1().get(&sc.url("/warm-up")).await.status, 200);
    let rss_before = rss_kib(pid);

    // Every admin slot held by a connection stalled in its request head.
    let mut holders = Conns::open(sc.admin_addr, cap, HOLD_HEAD).await;
    assert_eq!(holders.connected(), cap, "holders: {}", holders.summary());

    // One more connection is beyond the cap: closed at once, without a byte. (Polled: the
    // sidecar counts the holders as it accepts them.)
    let admin = sc.admin_addr;
    let refused = poll_until(DEADLINE, move || async move {
        let ex = fresh_get(admin, "/healthz").await;
        if ex.closed_silently() {
            Ok(())
        } else {
            Err(ex.describe())
        }
    })
    .await;
    if let Err(last) = refused {
        f.fail(format!(
            "with all {cap} admin slots held, a fresh connection was not closed at once \
             without a byte; it got: {last}"
        ));
    }

    // The flood, on top of the held slots.
    let peak = RssPeak::start(pid);
    let flood = Conns::open(sc.admin_addr, FLOOD, &flood_payload("/healthz")).await;
    wait_until(
        Duration::from_secs(60),
        "every flood payload written (or refused)",
        || flood.written() == FLOOD,
    )
    .await;
    let all_closed = holds_within(DEADLINE, || flood.open_now() == 0).await;
    f.check(
        all_closed,
        format!(
            "flood connections beyond the admin cap of {cap} were still open after \
             {DEADLINE:?}: {}",
            flood.summary()
        ),
    );
    f.check(
        flood.closed_silent() * 10 >= FLOOD * 9,
        format!(
            "fewer than 90% of the flood connections beyond the cap were closed without a \
             byte: {}",
            flood.summary()
        ),
    );
    let peak_kib = peak.peak_kib();
    drop(peak);
    f.check(
        peak_kib <= rss_before + 32 * MIB,
        format!(
            "RSS peaked at {} MiB during the admin flood, {} MiB over the {} MiB before it \
             (allowed: 32 MiB)",
            mib(peak_kib),
            mib(peak_kib.saturating_sub(rss_before)),
            mib(rss_before)
        ),
    );

    // Some slots free up: /healthz answers a fresh connection while the rest stay held.
    holders.close_first(8);
    if let Err(last) = healthz_answers(&sc).await {
        f.fail(format!(
            "/healthz did not answer a fresh connection once 8 admin slots were freed: {last}"
        ));
    }

    // The refusals were counted.
    match admin_metric(&sc, REJECTED, &[("listener", "admin")]).await {
        Ok(v) => f.check(
            v > 0.0,
            format!("{REJECTED}{{listener=\"admin\"}} is {v} after the flood"),
        ),
        Err(e) => f.fail(format!("{REJECTED}{{listener=\"admin\"}}: {e}")),
    }

    // The flood ends: memory comes back.
    drop(flood);
    drop(holders);
    check_memory_back(&mut f, &sc, rss_before, "admin", "admin flood").await;
    if let Err(last) = healthz_answers(&sc).await {
        f.fail(format!("/healthz after the flood: {last}"));
    }
    check_still_serving(&mut f, &mut sc, &up, "/after-admin-flood").await;
    f.finish("admin connection flood");
}

/// Attack: while 64 slow connections hold every slot of `--admin-max-connections 64`, 1,500
/// more connect to the admin listener, each sending a request line and 60 KB of one header
/// line and never finishing. Property: a connection beyond the cap is closed at once without
/// a byte and counted in `token_sidecar_connections_rejected_total{listener="admin"}`; RSS
/// stays within 32 MiB of idle; `/healthz` answers a fresh connection once slots free up; and
/// after the flood RSS returns within 8 MiB of what it was before.
#[tokio::test]
async fn admin_flood_beyond_admin_max_connections_is_refused_at_once_and_memory_stays_bounded() {
    admin_flood(64, &["--admin-max-connections", "64"]).await;
}

/// The same attack against the default admin cap (256, no flag): 256 slow connections hold
/// every slot, then 1,500 connections with 60 KB header lines. Property: as above.
#[tokio::test]
async fn admin_flood_beyond_the_default_admin_cap_of_256_is_refused_at_once_and_memory_stays_bounded(
) {
    admin_flood(256, &[]).await;
}

/// Attack: 1,500 connections to a proxy listener with `--max-connections 200`, each sending a
/// request line and 60 KB of one header line and never finishing, while the app has 5
/// keep-alive connections open. Property: at most 200 connections are open at any time, the
/// rest are closed at once without a byte and counted in
/// `token_sidecar_connections_rejected_total{listener="default"}`; the app's existing
/// connections are still served; RSS stays bounded; after the flood RSS returns within 8 MiB
/// of what it was before; nothing of the flood reaches the upstream.
#[tokio::test]
async fn proxy_flood_beyond_max_connections_is_refused_at_once_while_open_connections_are_served() {
    const CAP: usize = 200;
    const KEEPERS: usize = 5;
    let (up, mut sc) = setup(&["--max-connections", "200", "--header-read-timeout", "120s"]).await;
    let pid = sc.pid();
    let mut f = Findings::new();

    let mut keepers = Vec::new();
    for i in 0..KEEPERS {
        let mut k = KeepAlive::open(sc.proxy_addr).await;
        assert_eq!(
            k.get(&format!("/before-flood-{i}")).await,
            Ok(200),
            "a keep-alive connection before the flood"
        );
        keepers.push(k);
    }
    let rss_before = rss_kib(pid);

    let peak = RssPeak::start(pid);
    let flood = Conns::open(sc.proxy_addr, FLOOD, &flood_payload("/flood")).await;
    wait_until(
        Duration::from_secs(60),
        "every flood payload written (or refused)",
        || flood.written() == FLOOD,
    )
    .await;
    let settled = holds_within(DEADLINE, || flood.open_now() <= CAP - KEEPERS).await;
    f.check(
        settled,
        format!(
            "more than {} flood connections (the cap {CAP} less the app's {KEEPERS}) still \
             open after {DEADLINE:?}: {}",
            CAP - KEEPERS,
            flood.summary()
        ),
    );
    f.check(
        flood.closed_silent() >= FLOOD - CAP,
        format!(
            "fewer than {} flood connections were closed without a byte: {}",
            FLOOD - CAP,
            flood.summary()
        ),
    );

    // The app's connections, open before the flood, are still served during it.
    for (i, k) in keepers.iter_mut().enumerate() {
        let path = format!("/during-flood-{i}");
        match k.get(&path).await {
            Ok(200) => f.check(
                up.requests().iter().any(|g| {
                    g.path_and_query() == path && g.header_values("authorization") == [bearer()]
                }),
                format!("{path} did not reach the upstream with the token"),
            ),
            other => f.fail(format!(
                "keep-alive connection {i} during the flood: {other:?}"
            )),
        }
    }

    let m = sc.metrics().await;
    let rejected = metrics::value(&m, REJECTED, &[("listener", "default")]);
    f.check(
        rejected.is_some_and(|v| v >= (FLOOD - CAP) as f64),
        format!(
            "{REJECTED}{{listener=\"default\"}} is {rejected:?}, expected at least {}",
            FLOOD - CAP
        ),
    );
    let open = metrics::value(&m, OPEN, &[("listener", "default")]);
    f.check(
        open.is_some_and(|v| v <= CAP as f64),
        format!("{OPEN}{{listener=\"default\"}} is {open:?} during the flood (cap {CAP})"),
    );
    let peak_kib = peak.peak_kib();
    drop(peak);
    // 200 connections with 60 KB heads need at most 200 x 128 KiB of buffers.
    f.check(
        peak_kib <= rss_before + 48 * MIB,
        format!(
            "RSS peaked at {} MiB during the proxy flood, {} MiB over the {} MiB before it \
             (allowed: 48 MiB)",
            mib(peak_kib),
            mib(peak_kib.saturating_sub(rss_before)),
            mib(rss_before)
        ),
    );

    drop(flood);
    check_memory_back(&mut f, &sc, rss_before, "default", "proxy flood").await;
    for (i, k) in keepers.iter_mut().enumerate() {
        let r = k.get(&format!("/after-flood-{i}")).await;
        f.check(
            r == Ok(200),
            format!("keep-alive connection {i} after the flood: {r:?}"),
        );
    }
    f.check(
        !up.requests()
            .iter()
            .any(|r| r.path_and_query().starts_with("/flood")),
        "a flood request reached the upstream",
    );
    check_still_serving(&mut f, &mut sc, &up, "/after-proxy-flood").await;
    f.finish("proxy connection flood with --max-connections 200");
}

/// Attack: 4,200 connections that send nothing, against a proxy listener with the default
/// `--max-connections` (4096) and a long header-read timeout. Property: at most 4096 stay
/// open, the rest are closed at once without a byte and counted with `listener="default"`;
/// once they go, new connections are served.
#[tokio::test]
async fn proxy_flood_beyond_the_default_max_connections_of_4096_is_refused_at_once() {
    const CAP: usize = 4096;
    const N: usize = 4200;
    let (up, mut sc) = setup(&["--header-read-timeout", "120s"]).await;
    let mut f = Findings::new();

    let flood = Conns::open(sc.proxy_addr, N, b"").await;
    let settled = holds_within(DEADLINE, || flood.open_now() <= CAP).await;
    f.check(
        settled,
        format!(
            "more than the default cap of {CAP} connections still open after {DEADLINE:?}: {}",
            flood.summary()
        ),
    );
    f.check(
        flood.closed_silent() >= N - CAP,
        format!(
            "fewer than {} connections were closed without a byte: {}",
            N - CAP,
            flood.summary()
        ),
    );
    let m = sc.metrics().await;
    let rejected = metrics::value(&m, REJECTED, &[("listener", "default")]);
    f.check(
        rejected.is_some_and(|v| v >= (N - CAP) as f64),
        format!(
            "{REJECTED}{{listener=\"default\"}} is {rejected:?}, expected at least {}",
            N - CAP
        ),
    );
    let open = metrics::value(&m, OPEN, &[("listener", "default")]);
    f.check(
        open.is_some_and(|v| v <= CAP as f64),
        format!("{OPEN}{{listener=\"default\"}} is {open:?} (default cap {CAP})"),
    );

    drop(flood);
    eventually(
        Duration::from_secs(30),
        "the flood's connections gone from the gauge",
        || async {
            metrics::value(&sc.metrics().await, OPEN, &[("listener", "default")])
                .is_some_and(|v| v <= 1.0)
        },
    )
    .await;
    check_still_serving(&mut f, &mut sc, &up, "/after-default-cap-flood").await;
    f.finish("proxy connection flood against the default --max-connections");
}

/// Attack: request heads over 8 KiB to the admin listener (header lines of 9 KiB, 16 KiB and
/// 60 KiB over HTTP/1.1, and a 9 KiB header over h2c), which the admin listener would
/// otherwise buffer (up to 64 KiB each). Property: each is refused, with hyper's 431 or a
/// closed connection, never answered 200; a 4 KiB head still is.
#[tokio::test]
async fn admin_request_heads_over_8_kib_are_refused_and_never_answered_200() {
    let (_up, sc) = setup(&[]).await;
    let mut f = Findings::new();

    let head = |value_len: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "b".repeat(value_len)
        )
    };
    let small = exchange(sc.admin_addr, head(4 * 1024).as_bytes(), DEADLINE).await;
    assert_eq!(
        small.answer.as_ref().map(|a| a.status),
        Some(200),
        "a 4 KiB head to /healthz: {}",
        small.describe()
    );
    for len in [9 * 1024, 16 * 1024, 60 * 1024] {
        let ex = exchange(sc.admin_addr, head(len).as_bytes(), DEADLINE).await;
        let refused = !contains(&ex.received, MARKER.as_bytes())
            && match &ex.answer {
                Some(a) => a.status == 431,
                None => ex.closed,
            };
        f.check(
            refused,
            format!(
                "a {} KiB header line to the admin listener: expected 431 or a closed \
                 connection, got {}",
                len / 1024,
                ex.describe()
            ),
        );
    }

    // The same over h2c: the header block is over 8 KiB.
    let stream = TcpStream::connect(sc.admin_addr)
        .await
        .expect("connect the admin listener");
    match http2::handshake::<_, _, TestBody>(TokioExecutor::new(), TokioIo::new(stream)).await {
        Err(e) => f.fail(format!("h2c handshake with the admin listener failed: {e}")),
        Ok((mut tx, conn)) => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = Request::get(format!("http://localhost:{}/healthz", sc.admin_addr.port()))
                .header("x-big", "b".repeat(9 * 1024))
                .body(empty())
                .expect("a valid request");
            match tokio::time::timeout(DEADLINE, tx.send_request(req)).await {
                Err(_) => f.fail("no answer within 10s to a 9 KiB h2c header block"),
                Ok(Err(_)) => {} // refused: reset or closed
                Ok(Ok(resp)) => f.check(
                    resp.status() != 200,
                    "a 9 KiB h2c header block to the admin listener was answered 200",
                ),
            }
        }
    }
    f.finish("admin request heads over 8 KiB");
}

/// Attack: connections to the admin listener that stall in their request head (20 with a
/// partial head, 20 that send nothing), each holding a slot and its buffer. Property: the
/// admin listener's 10 s header-read timeout closes every one of them (within a 15 s
/// deadline), and `/healthz` still answers.
#[tokio::test]
async fn admin_connections_stalled_in_their_request_head_are_cut_off_by_a_10s_timeout() {
    let (_up, sc) = setup(&[]).await;
    let mut f = Findings::new();
    let partial = Conns::open(sc.admin_addr, 20, HOLD_HEAD).await;
    let silent = Conns::open(sc.admin_addr, 20, b"").await;
    let cut = holds_within(Duration::from_secs(15), || {
        partial.open_now() == 0 && silent.open_now() == 0
    })
    .await;
    f.check(
        cut,
        format!(
            "stalled admin connections still open 15s after they connected: partial heads \
             {}; silent {}",
            partial.summary(),
            silent.summary()
        ),
    );
    if let Err(last) = healthz_answers(&sc).await {
        f.fail(format!("/healthz after the stalled connections: {last}"));
    }
    f.finish("stalled admin connections");
}

/// Attack: 3,000 connections that send only `PRI * HTTP/2.0\r\n` (the first 16 bytes of the
/// HTTP/2 preface) and stop, plus 500 that send nothing, held for 5 s on a proxy listener
/// whose header-read timeout (60 s) does not cut them off meanwhile. Property: waiting, they
/// cost under 5 % of one core (utime+stime of the process over the 5 s window); none is
/// closed before the timeout; nothing reaches the upstream; normal requests are served.
#[tokio::test]
async fn stalled_http2_prefaces_and_silent_connections_cost_no_cpu_while_they_wait() {
    const PARTIAL: usize = 3000;
    const SILENT: usize = 500;
    const WINDOW: Duration = Duration::from_secs(5);
    let (up, mut sc) = setup(&["--header-read-timeout", "60s"]).await;
    let pid = sc.pid();
    let mut f = Findings::new();

    let partial = Conns::open(sc.proxy_addr, PARTIAL, PARTIAL_PREFACE).await;
    let silent = Conns::open(sc.proxy_addr, SILENT, b"").await;
    wait_until(DEADLINE, "every partial preface written", || {
        partial.written() == PARTIAL
    })
    .await;
    assert_eq!(
        (partial.connected(), silent.connected()),
        (PARTIAL, SILENT),
        "connections: partial prefaces {}; silent {}",
        partial.summary(),
        silent.summary()
    );
    // Every connection accepted by the sidecar before the window opens.
    eventually(
        Duration::from_secs(30),
        "the sidecar to have accepted every connection",
        || async {
            metrics::value(&sc.metrics().await, OPEN, &[("listener", "default")])
                .is_some_and(|v| v >= (PARTIAL + SILENT) as f64)
        },
    )
    .await;

    let tck = clock_ticks_per_second();
    let before = cpu_ticks(pid);
    tokio::time::sleep(WINDOW).await;
    let used = cpu_ticks(pid) - before;
    // 5 % of one core over the window.
    let limit = tck * WINDOW.as_secs() / 20;
    f.check(
        used < limit,
        format!(
            "{PARTIAL} stalled prefaces and {SILENT} silent connections cost {used} clock \
             ticks of CPU in {WINDOW:?} ({:.0}% of one core; allowed: under {limit} ticks, 5%)",
            used as f64 * 100.0 / (tck * WINDOW.as_secs()) as f64
        ),
    );
    f.check(
        partial.closed() == 0 && silent.closed() == 0,
        format!(
            "connections were closed before the 60s header-read timeout: partial prefaces \
             {}; silent {}",
            partial.summary(),
            silent.summary()
        ),
    );

    // Normal requests are served meanwhile, over HTTP/1.1 and h2c.
    for (name, client) in [("http1", Client::http1()), ("h2c", Client::h2c())] {
        let path = format!("/during-stalled-prefaces-{name}");
        let r = client.get(&sc.url(&path)).await;
        f.check(
            r.status == 200,
            format!("{name} request during the stall: {} {}", r.status, r.text()),
        );
    }
    drop(partial);
    drop(silent);
    check_still_serving(&mut f, &mut sc, &up, "/after-stalled-prefaces").await;
    let got: Vec<String> = up.requests().iter().map(|r| r.path_and_query()).collect();
    f.check(
        got.iter()
            .all(|p| p.starts_with("/during-stalled-prefaces") || p == "/after-stalled-prefaces"),
        format!("unexpected requests reached the upstream: {got:?}"),
    );
    f.finish("stalled HTTP/2 prefaces");
}

// ---------------------------------------------------------------------------------------------
// Upgrades
// ---------------------------------------------------------------------------------------------

const WS_KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
const WS_VERSION: &str = "Sec-WebSocket-Version: 13";

/// A request with `Host: localhost` and the given header lines (each without CRLF).
fn request(method: &str, path: &str, lines: &[&str]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    for l in lines {
        r.push_str(l);
        r.push_str("\r\n");
    }
    if method == "POST" {
        r.push_str("Content-Length: 0\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// What is wrong with `ex` as a request the sidecar refused with `status` `kind`, the
/// upstream having received nothing since it had `before` requests.
fn refused_problem(
    what: &str,
    ex: &Exchange,
    up: &Upstream,
    before: usize,
    status: u16,
    kind: &str,
) -> Option<String> {
    let reached = up.request_count() - before;
    match (ex.sidecar_error_problem(status, kind), reached) {
        (None, 0) => None,
        (p, n) => Some(format!(
            "{what}: {}; {n} request(s) reached the upstream",
            p.unwrap_or_else(|| format!("{status} {kind} as expected"))
        )),
    }
}

/// What is wrong with `ex` as a request forwarded once, to `path`, with the token.
fn forwarded_problem(
    what: &str,
    ex: &Exchange,
    up: &Upstream,
    before: usize,
    path: &str,
) -> Option<String> {
    if ex.answer.as_ref().map(|a| a.status) != Some(200) {
        return Some(format!("{what}: expected 200, got {}", ex.describe()));
    }
    if up.request_count() != before + 1 {
        return Some(format!(
            "{what}: 200 but {} requests reached the upstream",
            up.request_count() - before
        ));
    }
    let got = up.last();
    if got.path_and_query() != path || got.header_values("authorization") != [bearer()] {
        return Some(format!(
            "{what}: the upstream got {} with authorization {:?}",
            got.path_and_query(),
            got.header_values("authorization")
        ));
    }
    None
}

/// Property (the one upgrade that is tunnelled): a WebSocket handshake that is a GET with one
/// `Upgrade: websocket` (any case), `Connection: upgrade`, a key and a version is switched,
/// messages echo through, and the token is on the handshake.
#[tokio::test]
async fn upgrade_a_well_formed_websocket_handshake_is_still_tunnelled() {
    let (up, sc) = setup(&[]).await;
    let stream = TcpStream::connect(sc.proxy_addr)
        .await
        .expect("connect the proxy listener");
    let req = format!("ws://{}/ws?room=1", sc.proxy_addr)
        .into_client_request()
        .expect("a WebSocket request");
    let (mut ws, resp) =
        tokio::time::timeout(DEADLINE, tokio_tungstenite::client_async(req, stream))
            .await
            .expect("WebSocket handshake within 10s")
            .expect("WebSocket handshake");
    assert_eq!(resp.status(), 101);
    send_and_expect_echo(&mut ws, "hello through the sidecar").await;
    let _ = ws.close(None).await;
    let got = up.last();
    assert_eq!(got.path_and_query(), "/ws?room=1");
    assert_eq!(got.header_values("authorization"), vec![bearer()]);

    // Mixed case and a longer Connection list are the same handshake.
    let before = up.request_count();
    let raw = request(
        "GET",
        "/ws?room=2",
        &[
            "Upgrade: WebSocket",
            "Connection: keep-alive, Upgrade",
            WS_KEY,
            WS_VERSION,
        ],
    );
    let ex = exchange(sc.proxy_addr, &raw, DEADLINE).await;
    assert_eq!(
        ex.answer.as_ref().map(|a| a.status),
        Some(101),
        "Upgrade: WebSocket: {}",
        ex.describe()
    );
    assert_eq!(up.request_count(), before + 1);
    let got = up.last();
    assert_eq!(got.path_and_query(), "/ws?room=2");
    assert_eq!(got.header_values("authorization"), vec![bearer()]);
    assert!(
        !contains(&ex.received, MARKER.as_bytes()),
        "the token in the 101"
    );
}

/// Sends a text message and waits for its echo.
async fn send_and_expect_echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    ws.send(Message::text(text))
        .await
        .expect("send a WebSocket message");
    let echo = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("an echo within 10s")
        .expect("an echo before the end")
        .expect("a WebSocket message");
    assert_eq!(echo, Message::text(text));
}

/// Attack: `Upgrade: h2c` (what `curl --http2` sends over cleartext), which would make the
/// connection an HTTP/2 tunnel past the sidecar's checks. Property: forwarded as a plain
/// HTTP/1.1 request without `Upgrade`, without `HTTP2-Settings` and without an `upgrade`
/// token in `Connection`, the upstream's answer passed back.
#[tokio::test]
async fn upgrade_h2c_alone_is_forwarded_as_plain_http1_without_any_upgrade_header() {
    let (up, sc) = setup(&[]).await;
    let mut f = Findings::new();
    let cases: [(&str, &[&str]); 3] = [
        (
            "curl --http2",
            &[
                "Connection: Upgrade, HTTP2-Settings, close",
                "Upgrade: h2c",
                "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
            ],
        ),
        (
            "bare Upgrade: h2c and HTTP2-Settings",
            &[
                "Upgrade: h2c",
                "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
                "Connection: close",
            ],
        ),
        (
            "upper-case H2C",
            &["Connection: Upgrade, close", "Upgrade: H2C"],
        ),
    ];
    for (i, (what, lines)) in cases.iter().enumerate() {
        let path = format!("/h2c-offer-{i}");
        let before = up.request_count();
        let ex = exchange(sc.proxy_addr, &request("GET", &path, lines), DEADLINE).await;
        if let Some(p) = forwarded_problem(what, &ex, &up, before, &path) {
            f.fail(p);
            continue;
        }
        let got = up.last();
        for name in ["upgrade", "http2-settings"] {
            f.check(
                got.header_values(name).is_empty(),
                format!("{what}: {name} reached the upstream: {:?}", got.headers),
            );
        }
        f.check(
            !got.header_values("connection")
                .iter()
                .any(|v| v.to_ascii_lowercase().contains("upgrade")),
            format!("{what}: Connection: upgrade reached the upstream"),
        );
    }
    f.finish("Upgrade: h2c alone");
}

/// Attack: upgrade requests that are not exactly one plain WebSocket handshake, the shapes
/// that smuggle a tunnel past a filter: lists hiding `websocket` behind `h2c` (or the
/// reverse), unknown or versioned protocols, repeated `Upgrade` lines, and WebSocket
/// handshakes without `Connection: upgrade`, the key or the version, or on POST. Property:
/// each is answered 400 `bad_request`, without the token, and nothing reaches the upstream.
#[tokio::test]
async fn upgrade_lists_unknown_protocols_repeats_and_incomplete_websocket_handshakes_get_400() {
    let (up, sc) = setup(&[]).await;
    let mut f = Findings::new();
    let conn = "Connection: Upgrade";
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        (
            "Upgrade: h2c, websocket",
            "GET",
            vec!["Upgrade: h2c, websocket", conn, WS_KEY, WS_VERSION],
        ),
        (
            "Upgrade: websocket, h2c",
            "GET",
            vec!["Upgrade: websocket, h2c", conn, WS_KEY, WS_VERSION],
        ),
        (
            "Upgrade: foo/1",
            "GET",
            vec!["Upgrade: foo/1", conn, WS_KEY, WS_VERSION],
        ),
        (
            "Upgrade: tls/1.2",
            "GET",
            vec!["Upgrade: tls/1.2", conn, WS_KEY, WS_VERSION],
        ),
        (
            "Upgrade: websocket/13",
            "GET",
            vec!["Upgrade: websocket/13", conn, WS_KEY, WS_VERSION],
        ),
        (
            "Upgrade: h2c and Upgrade: websocket lines",
            "GET",
            vec![
                "Upgrade: h2c",
                "Upgrade: websocket",
                conn,
                WS_KEY,
                WS_VERSION,
            ],
        ),
        (
            "two Upgrade: websocket lines",
            "GET",
            vec![
                "Upgrade: websocket",
                "Upgrade: websocket",
                conn,
                WS_KEY,
                WS_VERSION,
            ],
        ),
        (
            "websocket without Connection: upgrade",
            "GET",
            vec![
                "Upgrade: websocket",
                "Connection: keep-alive",
                WS_KEY,
                WS_VERSION,
            ],
        ),
        (
            "websocket without Sec-WebSocket-Key",
            "GET",
            vec!["Upgrade: websocket", conn, WS_VERSION],
        ),
        (
            "websocket without Sec-WebSocket-Version",
            "GET",
            vec!["Upgrade: websocket", conn, WS_KEY],
        ),
        (
            "websocket on POST",
            "POST",
            vec!["Upgrade: websocket", conn, WS_KEY, WS_VERSION],
        ),
    ];
    for (i, (what, method, lines)) in cases.iter().enumerate() {
        let before = up.request_count();
        // `/ws` is the fake upstream's WebSocket endpoint: a tunnel would open there.
        let raw = request(method, &format!("/ws?case={i}"), lines);
        let ex = exchange(sc.proxy_addr, &raw, DEADLINE).await;
        f.problem(refused_problem(what, &ex, &up, before, 400, "bad_request"));
    }
    f.finish("upgrade requests that are not one plain WebSocket handshake");
}

/// Bytes no HTTP parser accepts: if they reach the upstream, they went through a tunnel.
const PROBE: &[u8] = b"\x00\x01tunnel-probe\x02\r\n\r\n";

/// A raw upstream that answers every request `101 Switching Protocols` to h2c, then echoes
/// whatever comes after it, recording those bytes: what reaches it after a 101 went through
/// a tunnel.
async fn switching_upstream() -> (Scripted, Arc<Mutex<Vec<u8>>>) {
    let after = Arc::new(Mutex::new(Vec::new()));
    let rec = after.clone();
    let server = Scripted::start(move |mut a| {
        let rec = rec.clone();
        async move {
            if a.read_request().await.is_none() {
                return;
            }
            let switch =
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n";
            if a.stream.write_all(switch).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match a.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        rec.lock()
                            .expect("the record lock")
                            .extend_from_slice(&buf[..n]);
                        if a.stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    })
    .await;
    (server, after)
}

/// Sends `first` on a new connection to the sidecar in front of a [`switching_upstream`],
/// then [`PROBE`] on the same connection, then a second request on a fresh connection;
/// checks each answer is 502 `upstream_error` and nothing reached the upstream after a 101.
async fn switch_must_not_tunnel(first: &[u8], what: &str) {
    let (server, after) = switching_upstream().await;
    let mut sc = SidecarBuilder::new(&server.url(""))
        .static_token(MARKER)
        .start()
        .await;
    let mut f = Findings::new();

    let stream = TcpStream::connect(sc.proxy_addr)
        .await
        .expect("connect the proxy listener");
    let (ex, mut stream) = exchange_on(stream, first, DEADLINE).await;
    f.problem(
        ex.sidecar_error_problem(502, "upstream_error")
            .map(|p| format!("{what}: {p}")),
    );
    // Whatever the app sends next on that connection must not reach the upstream: the
    // sidecar answers it as HTTP (400) or closes.
    let _ = stream.write_all(PROBE).await;
    let (rest, _closed) = read_to_close(&mut stream, DEADLINE).await;
    f.check(
        !contains(&rest, PROBE),
        format!("{what}: bytes sent after the answer came back echoed through a tunnel"),
    );
    // A second request, on a fresh connection: the switched upstream connection is not reused.
    let second = exchange(
        sc.proxy_addr,
        b"GET /second HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    f.problem(
        second
            .sidecar_error_problem(502, "upstream_error")
            .map(|p| format!("{what}, then a plain request: {p}")),
    );
    let leaked = after.lock().expect("the record lock").clone();
    f.check(
        leaked.is_empty(),
        format!(
            "{what}: bytes reached the upstream after its 101: {:?}",
            String::from_utf8_lossy(&leaked)
        ),
    );
    f.check(!sc.has_exited(), "the sidecar exited");
    f.finish(what);
}

/// Attack: an upstream (or whatever answers in its place) that switches protocols on a request
/// that asked for no upgrade, turning the app's connection into a raw tunnel to it. Property:
/// the app gets 502 `upstream_error`, no tunnel opens: bytes the app sends afterwards never
/// reach the upstream, and the switched upstream connection is not reused.
#[tokio::test]
async fn upgrade_a_101_to_a_request_that_asked_for_none_is_a_502_and_opens_no_tunnel() {
    switch_must_not_tunnel(
        b"GET /no-upgrade HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "a 101 to a plain GET",
    )
    .await;
}

/// Attack: a WebSocket handshake answered `101` with `Upgrade: h2c`, a switch to another
/// protocol than the one asked for. Property: 502 `upstream_error`, no tunnel opens.
#[tokio::test]
async fn upgrade_a_101_to_another_protocol_than_websocket_is_a_502_and_opens_no_tunnel() {
    let handshake = request(
        "GET",
        "/ws",
        &[
            "Upgrade: websocket",
            "Connection: Upgrade",
            WS_KEY,
            WS_VERSION,
        ],
    );
    switch_must_not_tunnel(&handshake, "a 101 to h2c for a WebSocket handshake").await;
}

// ---------------------------------------------------------------------------------------------
// Host and browsers
// ---------------------------------------------------------------------------------------------

/// `GET path` with `host` as the `Host` line (`None`: no `Host` line) and more lines.
fn get_with_host(version: &str, path: &str, host: Option<&str>, lines: &[&str]) -> Vec<u8> {
    let mut r = format!("GET {path} {version}\r\n");
    if let Some(h) = host {
        r.push_str(&format!("Host: {h}\r\n"));
    }
    for l in lines {
        r.push_str(l);
        r.push_str("\r\n");
    }
    r.push_str("Connection: close\r\n\r\n");
    r.into_bytes()
}

/// Sends each `(host, expect_forwarded)` as `GET /<label>-<i>` and records what went wrong.
async fn check_hosts(
    f: &mut Findings,
    sc: &Sidecar,
    up: &Upstream,
    label: &str,
    hosts: &[(&str, bool)],
) {
    for (i, (host, forward)) in hosts.iter().enumerate() {
        let path = format!("/{label}-{i}");
        let before = up.request_count();
        let ex = exchange(
            sc.proxy_addr,
            &get_with_host("HTTP/1.1", &path, Some(host), &[]),
            DEADLINE,
        )
        .await;
        let what = format!("Host: {host}");
        if *forward {
            f.problem(forwarded_problem(&what, &ex, up, before, &path));
        } else {
            f.problem(refused_problem(&what, &ex, up, before, 400, "bad_request"));
        }
    }
}

/// Attack: DNS rebinding: a page on attacker.example re-points its name at 127.0.0.1, and its
/// requests reach the sidecar with `Host: <the attacker's name>`. Property (default
/// settings): a host that is not loopback is answered 400 `bad_request` without the token and
/// nothing reaches the upstream, with or without a port, with a trailing dot, in upper case,
/// or with a loopback-looking prefix.
#[tokio::test]
async fn dns_rebinding_hosts_that_do_not_name_the_listener_are_refused_with_400() {
    let (up, mut sc) = setup(&[]).await;
    let mut f = Findings::new();
    let with_our_port = format!("rebind.attacker.example:{}", sc.proxy_addr.port());
    let hosts: Vec<(&str, bool)> = vec![
        ("rebind.attacker.example", false),
        ("rebind.attacker.example:8080", false),
        (&with_our_port, false),
        ("REBIND.ATTACKER.EXAMPLE", false),
        ("attacker.example.", false),
        ("attacker.example.:80", false),
        ("localhost.attacker.example", false),
        ("127.0.0.1.attacker.example", false),
    ];
    check_hosts(&mut f, &sc, &up, "rebind", &hosts).await;
    check_still_serving(&mut f, &mut sc, &up, "/after-rebinding").await;
    f.finish("DNS rebinding, default settings");
}

/// Attack: the same rebinding over h2c, `:authority: attacker.example` (with and without a
/// port). Property: 400 `bad_request` and nothing upstream, while a request naming
/// 127.0.0.1 on the same connection still goes through.
#[tokio::test]
async fn dns_rebinding_over_h2c_authority_is_refused_with_400() {
    let (up, sc) = setup(&[]).await;
    let mut f = Findings::new();
    let stream = TcpStream::connect(sc.proxy_addr)
        .await
        .expect("connect the proxy listener");
    let (mut tx, conn) =
        http2::handshake::<_, _, TestBody>(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake with the proxy listener");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let port = sc.proxy_addr.port();
    let cases = [
        ("attacker.example".to_owned(), false),
        ("attacker.example:8080".to_owned(), false),
        (format!("rebind.attacker.example:{port}"), false),
        (format!("127.0.0.1:{port}"), true),
    ];
    for (i, (authority, forward)) in cases.iter().enumerate() {
        let path = format!("/h2-authority-{i}");
        let before = up.request_count();
        let req = Request::get(format!("http://{authority}{path}"))
            .body(empty())
            .expect("a valid request");
        let what = format!(":authority {authority}");
        let answer = match tokio::time::timeout(DEADLINE, tx.send_request(req)).await {
            Ok(Ok(resp)) => answer_of(resp).await,
            Ok(Err(e)) => Err(format!("request failed: {e}")),
            Err(_) => Err("no answer within 10s".into()),
        };
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                f.fail(format!("{what}: {e}"));
                continue;
            }
        };
        let reached = up.request_count() - before;
        if *forward {
            f.check(
                answer.status == 200 && reached == 1,
                format!(
                    "{what}: {}, {reached} request(s) upstream",
                    answer.describe()
                ),
            );
        } else {
            f.problem(
                answer
                    .sidecar_error_problem(400, "bad_request")
                    .map(|p| format!("{what}: {p}")),
            );
            f.check(
                reached == 0,
                format!("{what}: {reached} request(s) reached the upstream"),
            );
        }
    }
    f.finish("DNS rebinding over h2c");
}

/// Property (no false refusals, default settings): the names a local app uses are forwarded
/// with the token: `localhost` in any case, any 127.0.0.0/8 literal, `[::1]`, with any port;
/// an HTTP/1.0 request without `Host`; an h2c request to 127.0.0.1; and an absolute-form
/// target naming the sidecar, whose `Host` is not checked.
#[tokio::test]
async fn loopback_hosts_with_any_port_and_http10_without_host_are_forwarded() {
    let (up, sc) = setup(&[]).await;
    let mut f = Findings::new();
    let port = sc.proxy_addr.port();
    let ours = format!("127.0.0.1:{port}");
    let hosts: Vec<(&str, bool)> = vec![
        ("localhost", true),
        ("LOCALHOST:8080", true),
        ("Localhost:1", true),
        (&ours, true),
        ("127.5.6.7", true),
        ("[::1]:1", true),
        ("[::1]", true),
    ];
    check_hosts(&mut f, &sc, &up, "loopback", &hosts).await;

    let before = up.request_count();
    let ex = exchange(
        sc.proxy_addr,
        &get_with_host("HTTP/1.0", "/http10-no-host", None, &[]),
        DEADLINE,
    )
    .await;
    f.problem(forwarded_problem(
        "HTTP/1.0 without Host",
        &ex,
        &up,
        before,
        "/http10-no-host",
    ));

    let before = up.request_count();
    let ex = exchange(
        sc.proxy_addr,
        &get_with_host(
            "HTTP/1.1",
            &format!("http://{ours}/absolute-form"),
            Some("rebind.attacker.example"),
            &[],
        ),
        DEADLINE,
    )
    .await;
    f.problem(forwarded_problem(
        "absolute-form naming the sidecar, Host: rebind.attacker.example",
        &ex,
        &up,
        before,
        "/absolute-form",
    ));

    let r = Client::h2c().get(&sc.url("/h2c-loopback")).await;
    f.check(
        r.status == 200 && up.last().path_and_query() == "/h2c-loopback",
        format!("h2c to {ours}: {} {}", r.status, r.text()),
    );
    f.finish("loopback hosts");
}

/// Property: `--allowed-host api.internal` adds that one name, in any case and with any port
/// (`api.internal:8080`), and nothing else: `api.internal.attacker.example`,
/// `other.internal` and `internal` are still refused; loopback still goes through.
#[tokio::test]
async fn allowed_host_admits_that_name_with_any_port_and_nothing_else() {
    let (up, sc) = setup(&["--allowed-host", "api.internal"]).await;
    let mut f = Findings::new();
    let hosts: Vec<(&str, bool)> = vec![
        ("api.internal:8080", true),
        ("api.internal", true),
        ("API.Internal:1", true),
        ("localhost", true),
        ("api.internal.attacker.example", false),
        ("other.internal", false),
        ("internal", false),
        ("xapi.internal", false),
    ];
    check_hosts(&mut f, &sc, &up, "allowed-host", &hosts).await;
    f.finish("--allowed-host api.internal");
}

/// Property: `--allowed-host '*.svc.cluster.local'` admits any subdomain
/// (`x.ns.svc.cluster.local`, with a port too) and not names that merely end in or contain
/// it: `svc.cluster.local.evil.example`, `evilsvc.cluster.local`.
#[tokio::test]
async fn allowed_host_wildcard_admits_subdomains_but_not_lookalike_names() {
    let (up, sc) = setup(&["--allowed-host", "*.svc.cluster.local"]).await;
    let mut f = Findings::new();
    let hosts: Vec<(&str, bool)> = vec![
        ("x.ns.svc.cluster.local", true),
        ("x.ns.svc.cluster.local:8080", true),
        ("svc.cluster.local.evil.example", false),
        ("evilsvc.cluster.local", false),
        ("x.ns.svc.cluster.local.evil.example", false),
    ];
    check_hosts(&mut f, &sc, &up, "allowed-wildcard", &hosts).await;
    f.finish("--allowed-host '*.svc.cluster.local'");
}

/// Sends each `(what, lines, expect_forwarded)` as `GET /<label>-<i>` with `Host:
/// localhost:<port>` and records what went wrong (a refusal must be 403 `forbidden`).
async fn check_browser(
    f: &mut Findings,
    sc: &Sidecar,
    up: &Upstream,
    label: &str,
    cases: &[(&str, Vec<String>, bool)],
) {
    let host = format!("localhost:{}", sc.proxy_addr.port());
    for (i, (what, lines, forward)) in cases.iter().enumerate() {
        let path = format!("/{label}-{i}");
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let before = up.request_count();
        let ex = exchange(
            sc.proxy_addr,
            &get_with_host("HTTP/1.1", &path, Some(&host), &lines),
            DEADLINE,
        )
        .await;
        if *forward {
            f.problem(forwarded_problem(what, &ex, up, before, &path));
        } else {
            f.problem(refused_problem(what, &ex, up, before, 403, "forbidden"));
        }
    }
}

fn lines(ls: &[&str]) -> Vec<String> {
    ls.iter().map(|s| (*s).to_owned()).collect()
}

/// Attack: a page on another site makes the victim's browser send requests to the sidecar
/// on localhost (the browser adds `Sec-Fetch-Site` and `Origin`), including a POST and a
/// cross-site WebSocket handshake. Property: `Sec-Fetch-Site: cross-site` or `same-site`, or
/// an `Origin` that is not allowed (`http://evil.example`, `null`, a localhost-looking
/// name), is answered 403 `forbidden` without the token, and nothing reaches the upstream.
#[tokio::test]
async fn cross_site_browser_requests_are_refused_with_403() {
    let (up, mut sc) = setup(&[]).await;
    let mut f = Findings::new();
    let port = sc.proxy_addr.port();
    let lookalike = format!("Origin: http://localhost.evil.example:{port}");
    let cases = vec![
        (
            "Sec-Fetch-Site: cross-site",
            lines(&["Sec-Fetch-Site: cross-site"]),
            false,
        ),
        (
            "Sec-Fetch-Site: same-site",
            lines(&["Sec-Fetch-Site: same-site"]),
            false,
        ),
        (
            "Origin: http://evil.example",
            lines(&["Origin: http://evil.example"]),
            false,
        ),
        ("Origin: null", lines(&["Origin: null"]), false),
        ("a localhost-looking Origin", vec![lookalike], false),
        (
            "Origin: http://evil.example with Sec-Fetch-Site: cross-site",
            lines(&[
                "Origin: http://evil.example",
                "Sec-Fetch-Site: cross-site",
                "Sec-Fetch-Mode: cors",
            ]),
            false,
        ),
    ];
    check_browser(&mut f, &sc, &up, "cross-site", &cases).await;

    // A cross-site form POST and a cross-site WebSocket handshake.
    let host = format!("localhost:{port}");
    let post = format!(
        "POST /cross-site-post HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\n\
         Sec-Fetch-Site: cross-site\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\
         Connection: close\r\n\r\nhello"
    );
    let ws = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\n\
         Sec-Fetch-Site: cross-site\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         {WS_KEY}\r\n{WS_VERSION}\r\n\r\n"
    );
    for (what, raw) in [
        ("a cross-site POST", post),
        ("a cross-site WebSocket handshake", ws),
    ] {
        let before = up.request_count();
        let ex = exchange(sc.proxy_addr, raw.as_bytes(), DEADLINE).await;
        f.problem(refused_problem(what, &ex, &up, before, 403, "forbidden"));
    }
    check_still_serving(&mut f, &mut sc, &up, "/after-cross-site").await;
    f.finish("cross-site browser requests");
}

/// Property (no false refusals): `Origin: http://localhost:<port>` with `Sec-Fetch-Site:
/// same-origin`, `Sec-Fetch-Site: none` (typed into the address bar) and `Origin:
/// http://127.0.0.1:1234` are forwarded with the token.
#[tokio::test]
async fn same_origin_browser_requests_are_forwarded() {
    let (up, sc) = setup(&[]).await;
    let mut f = Findings::new();
    let origin = format!("Origin: http://localhost:{}", sc.proxy_addr.port());
    let cases = vec![
        (
            "same-origin from http://localhost:<port>",
            vec![origin, "Sec-Fetch-Site: same-origin".to_owned()],
            true,
        ),
        (
            "Sec-Fetch-Site: none",
            lines(&["Sec-Fetch-Site: none"]),
            true,
        ),
        (
            "Origin: http://127.0.0.1:1234",
            lines(&["Origin: http://127.0.0.1:1234"]),
            true,
        ),
    ];
    check_browser(&mut f, &sc, &up, "same-origin", &cases).await;
    f.finish("same-origin browser requests");
}

/// Property: `--allowed-origin http://app.example:3000` lets exactly that origin through (in
/// any case), even with `Sec-Fetch-Site: cross-site`; another port, another scheme or no port
/// is still 403 `forbidden` with nothing upstream.
#[tokio::test]
async fn allowed_origin_admits_that_origin_even_cross_site_and_no_other() {
    let (up, sc) = setup(&["--allowed-origin", "http://app.example:3000"]).await;
    let mut f = Findings::new();
    let cases = vec![
        (
            "the allowed origin, cross-site",
            lines(&[
                "Origin: http://app.example:3000",
                "Sec-Fetch-Site: cross-site",
            ]),
            true,
        ),
        (
            "the allowed origin in upper case",
            lines(&[
                "Origin: HTTP://APP.EXAMPLE:3000",
                "Sec-Fetch-Site: cross-site",
            ]),
            true,
        ),
        (
            "another port",
            lines(&[
                "Origin: http://app.example:3001",
                "Sec-Fetch-Site: cross-site",
            ]),
            false,
        ),
        (
            "another scheme",
            lines(&[
                "Origin: https://app.example:3000",
                "Sec-Fetch-Site: cross-site",
            ]),
            false,
        ),
        (
            "no port",
            lines(&["Origin: http://app.example", "Sec-Fetch-Site: cross-site"]),
            false,
        ),
        (
            "evil.example",
            lines(&["Origin: http://evil.example"]),
            false,
        ),
    ];
    check_browser(&mut f, &sc, &up, "allowed-origin", &cases).await;
    f.finish("--allowed-origin http://app.example:3000");
}
