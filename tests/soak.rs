//! Soak: sustained load through two sidecars for a bounded time while their tokens rotate and
//! the token endpoint fails now and then. Checks zero lost requests, flat memory (VmRSS
//! sampled every second) and no growth in open file descriptors, and prints one line per
//! check, then `N passed, M failed`.
//!
//! - route `file`: `--grant file`, the token file replaced (by rename) every second; the
//!   upstream accepts only the last few tokens written.
//! - route `oauth`: the JWT flow against the RingCentral double with 4-second tokens (a refresh
//!   every ~2 s, each one rotating the refresh token and revoking the previous access token);
//!   every few seconds the next token request fails (5xx, 429, garbage, HTML, empty, no
//!   access_token, a huge body, a dropped connection, slower than the timeout).
//!
//! Ignored by `cargo test`; run it with `scripts/soak.sh [SECONDS]`. Environment:
//! `SOAK_SECONDS` (default 300), `SOAK_WORKERS` per route (default 4), `SOAK_FAULT_EVERY`
//! seconds (default 5), `SOAK_OAUTH_TTL` seconds (default 4).

mod support;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use support::client::full;
use support::procfs::{fd_count, rss_kib};
use support::rc::Rig;
use support::{Client, SidecarBuilder};
use token_sidecar_testkit::token_server::{Fault, TokenServerConfig, DEV_ASSERTION, TOKEN_PREFIX};

const FILE_TOKEN: &str = "soak-MARKER-file";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The upstream of the file route: 200 for one of the last four tokens written, else 401.
struct FileUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<BTreeSet<u64>>>,
    refused: Arc<AtomicU64>,
}

impl FileUpstream {
    async fn start(current: Arc<AtomicU64>) -> FileUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let (cur, s, r) = (current.clone(), seen.clone(), refused.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (cur, s, r) = (cur.clone(), s.clone(), r.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (cur, s, r) = (cur.clone(), s.clone(), r.clone());
                        async move {
                            let version = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.strip_prefix(&format!("Bearer {FILE_TOKEN}-")))
                                .and_then(|n| n.parse::<u64>().ok());
                            let _ = req.into_body().collect().await;
                            let now = cur.load(Ordering::SeqCst);
                            let status = match version {
                                Some(v) if v <= now && v + 3 >= now => {
                                    s.lock().unwrap().insert(v);
                                    StatusCode::OK
                                }
                                _ => {
                                    r.fetch_add(1, Ordering::SeqCst);
                                    StatusCode::UNAUTHORIZED
                                }
                            };
                            let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                            *resp.status_mut() = status;
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FileUpstream {
            addr,
            seen,
            refused,
        }
    }
}

/// Load on one route until `stop`: (ok, failures, first failures).
fn load(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64, Vec<String>)> {
    tokio::spawn(async move {
        let client = Client::http1();
        let (mut ok, mut failed, mut first) = (0u64, 0u64, Vec::new());
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let req = if i.is_multiple_of(10) {
                Request::post(format!("{url}/upload/{i}"))
                    .body(full(vec![b'p'; 512]))
                    .unwrap()
            } else {
                Request::get(format!("{url}/soak/{i}"))
                    .body(support::client::empty())
                    .unwrap()
            };
            match tokio::time::timeout(Duration::from_secs(30), client.try_send(req)).await {
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let body = resp.into_body().collect().await;
                    if status == 200 && body.is_ok() {
                        ok += 1;
                    } else {
                        failed += 1;
                        if first.len() < 10 {
                            let text = body
                                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                                .unwrap_or_else(|e| format!("body error {e}"));
                            first.push(format!("{status} {text}"));
                        }
                    }
                }
                Ok(Err(e)) => {
                    failed += 1;
                    if first.len() < 10 {
                        first.push(format!("error {e:?}"));
                    }
                }
                Err(_) => {
                    failed += 1;
                    if first.len() < 10 {
                        first.push("no answer within 30 s".into());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        (ok, failed, first)
    })
}

/// VmRSS (KiB) and open fds sampled once a second.
#[derive(Default, Clone)]
struct Samples {
    rss: Vec<u64>,
    fds: Vec<usize>,
}

fn sampler(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Samples> {
    tokio::spawn(async move {
        let mut s = Samples::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while !stop.load(Ordering::SeqCst) {
            tick.tick().await;
            if let (Some(r), Some(f)) = (rss_kib(pid), fd_count(pid)) {
                s.rss.push(r);
                s.fds.push(f);
            }
        }
        s
    })
}

/// The checks, printed as they are made.
#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn check(&mut self, ok: bool, name: &str, detail: String) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        println!(
            "soak: {} {name}: {detail}",
            if ok { "PASS" } else { "FAIL" }
        );
    }

    /// Flat memory: after a warm-up (the first tenth, at least 3 s), the average of the last
    /// third is within +20 % or +5 MiB of the average of the first third.
    fn memory(&mut self, route: &str, s: &Samples) {
        let warm = (s.rss.len() / 10).max(3);
        let rss = &s.rss[warm.min(s.rss.len())..];
        if rss.len() < 6 {
            self.check(
                false,
                &format!("{route}: flat memory"),
                format!("only {} samples", rss.len()),
            );
            return;
        }
        let third = rss.len() / 3;
        let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len() as f64;
        let first = avg(&rss[..third]);
        let last = avg(&rss[rss.len() - third..]);
        let bound = (first * 1.2).max(first + 5.0 * 1024.0);
        self.check(
            last <= bound,
            &format!("{route}: flat memory"),
            format!(
                "VmRSS first third {:.1} MiB, last third {:.1} MiB (bound {:.1} MiB, peak {:.1} MiB, {} samples)",
                first / 1024.0,
                last / 1024.0,
                bound / 1024.0,
                *rss.iter().max().unwrap() as f64 / 1024.0,
                rss.len()
            ),
        );
    }

    /// No fd growth: open fds at the end of the load within 10 of those after the warm-up.
    fn fds(&mut self, route: &str, s: &Samples) {
        let warm = (s.fds.len() / 10).max(3);
        let (Some(start), Some(end)) = (s.fds.get(warm), s.fds.last()) else {
            self.check(
                false,
                &format!("{route}: no fd growth"),
                "no samples".into(),
            );
            return;
        };
        let max = s.fds.iter().max().unwrap();
        self.check(
            *end <= start + 10,
            &format!("{route}: no fd growth"),
            format!("open fds after warm-up {start}, at the end {end}, most {max}"),
        );
    }
}

fn write_token(path: &std::path::Path, version: u64) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{FILE_TOKEN}-{version}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a long soak: run it with scripts/soak.sh [SECONDS]"]
async fn soak() {
    let secs = env_u64("SOAK_SECONDS", 300).max(10);
    let workers = env_u64("SOAK_WORKERS", 4).max(1);
    let fault_every = env_u64("SOAK_FAULT_EVERY", 5).max(2);
    let ttl = env_u64("SOAK_OAUTH_TTL", 4).max(3);
    println!(
        "soak: running {secs} s, {workers} workers per route, a token endpoint fault every {fault_every} s, {ttl} s OAuth tokens"
    );

    // Route `file`.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let current = Arc::new(AtomicU64::new(1));
    write_token(&token_file, 1);
    let file_up = FileUpstream::start(current.clone()).await;
    let mut file_sc = SidecarBuilder::new(&format!("http://{}", file_up.addr))
        .token_file(&token_file)
        .args(["--file-poll-interval", "1s"])
        .env("TOKEN_SIDECAR_LOG", "info")
        .start()
        .await;

    // Route `oauth`.
    let rig = Rig::new(TokenServerConfig::default()).await;
    let mut oauth_sc = rig
        .sidecar()
        .args(["--token-param", &format!("access_token_ttl={ttl}")])
        .args(["--token-request-timeout", "300ms"])
        .env("TOKEN_SIDECAR_LOG", "info")
        .start()
        .await;
    support::eventually(support::DEADLINE, "both sidecars ready", || async {
        file_sc.admin_get("/readyz").await.0 == 200 && oauth_sc.admin_get("/readyz").await.0 == 200
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let end = Instant::now() + Duration::from_secs(secs);

    // The token file, replaced every second.
    let rotator = {
        let (stop, current, path) = (stop.clone(), current.clone(), token_file.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut rotations = 0u64;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let next = current.load(Ordering::SeqCst) + 1;
                // The upstream accepts the new token before the sidecar can send it.
                current.store(next, Ordering::SeqCst);
                write_token(&path, next);
                rotations += 1;
            }
            rotations
        })
    };

    // A token endpoint fault every few seconds, one request each.
    let faults = [
        Fault::Status(500),
        Fault::Status(503),
        Fault::Garbage,
        Fault::Html,
        Fault::Empty,
        Fault::MissingAccessToken,
        Fault::HugeBody,
        Fault::DropConnection,
        Fault::Slow(Duration::from_secs(2)),
        Fault::TooManyRequests {
            retry_after: Some(1),
        },
        Fault::Status(502),
    ];
    let rig = Arc::new(rig);
    let injector = {
        let (stop, rig) = (stop.clone(), rig.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(fault_every));
            tick.tick().await;
            let mut injected = 0usize;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                rig.ts
                    .set_fault(faults[injected % faults.len()].clone(), Some(1));
                injected += 1;
            }
            injected
        })
    };

    let file_samples = sampler(file_sc.pid(), stop.clone());
    let oauth_samples = sampler(oauth_sc.pid(), stop.clone());
    let mut loads = Vec::new();
    for _ in 0..workers {
        loads.push(("file", load(file_sc.url(""), stop.clone())));
        loads.push(("oauth", load(oauth_sc.url("/restapi/v1.0"), stop.clone())));
    }

    // Progress once every 30 s (or 10 s for short runs).
    let progress = if secs >= 120 { 30 } else { 10 };
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_secs(progress))).await;
        println!(
            "soak: … {} s left; file sidecar {} KiB / {} fds; oauth sidecar {} KiB / {} fds; {} token requests",
            end.saturating_duration_since(Instant::now()).as_secs(),
            rss_kib(file_sc.pid()).unwrap_or(0),
            fd_count(file_sc.pid()).unwrap_or(0),
            rss_kib(oauth_sc.pid()).unwrap_or(0),
            fd_count(oauth_sc.pid()).unwrap_or(0),
            rig.ts.request_count()
        );
    }
    stop.store(true, Ordering::SeqCst);

    let mut report = Report::default();
    let (mut file_ok, mut file_failed, mut oauth_ok, mut oauth_failed) = (0, 0, 0, 0);
    let (mut file_first, mut oauth_first) = (Vec::new(), Vec::new());
    for (route, t) in loads {
        let (ok, failed, first) = t.await.unwrap();
        if route == "file" {
            file_ok += ok;
            file_failed += failed;
            file_first.extend(first);
        } else {
            oauth_ok += ok;
            oauth_failed += failed;
            oauth_first.extend(first);
        }
    }
    let rotations = rotator.await.unwrap();
    let injected = injector.await.unwrap();
    let file_samples = file_samples.await.unwrap();
    let oauth_samples = oauth_samples.await.unwrap();

    report.check(
        file_failed == 0 && file_ok > secs * 10,
        "file route: zero lost requests",
        format!(
            "{file_ok} answered 200, {file_failed} not; {:?}",
            &file_first[..file_first.len().min(5)]
        ),
    );
    report.check(
        oauth_failed == 0 && oauth_ok > secs * 10,
        "oauth route: zero lost requests",
        format!(
            "{oauth_ok} answered 200, {oauth_failed} not; {:?}",
            &oauth_first[..oauth_first.len().min(5)]
        ),
    );
    let used = file_up.seen.lock().unwrap().len() as u64;
    report.check(
        rotations + 2 >= secs && used * 10 >= rotations * 9,
        "file route: the token rotated every second and each new one was used",
        format!(
            "{rotations} rotations, {used} distinct tokens reached the upstream, {} refused",
            file_up.refused.load(Ordering::SeqCst)
        ),
    );
    let refreshes = rig.ts.successful_refreshes() as u64;
    let logins = rig.ts.successful_logins();
    report.check(
        refreshes * ttl * 2 >= secs * 3 / 2
            && logins == 1
            && rig.ts.stale_refresh_token_uses().is_empty(),
        "oauth route: refreshed every ~ttl/2, one session, no stale refresh token reused",
        format!(
            "{refreshes} refreshes, {logins} login(s), {} stale uses, {} grace replays",
            rig.ts.stale_refresh_token_uses().len(),
            rig.ts.grace_replays()
        ),
    );
    // Each fault fails exactly one token request. (A request slower than the sidecar's
    // timeout is abandoned, and the double records no answer for it: count on the sidecar.)
    let records = rig.ts.requests();
    let faulted = records.iter().filter(|r| r.fault.is_some()).count();
    let m = oauth_sc.metrics().await;
    let failures = support::metrics::sum(
        &m,
        "token_sidecar_token_refreshes_total",
        &[("result", "failure")],
    ) as usize;
    report.check(
        injected + 1 >= (secs / fault_every) as usize
            && failures + 1 >= injected
            && failures <= injected + 2,
        "oauth route: token endpoint faults injected and met, each failing one attempt",
        format!(
            "{injected} injected, {failures} failed refreshes, {faulted} faulty answers recorded by the double"
        ),
    );
    // No stampede: about one request per refresh, plus one retry per fault.
    let bound = refreshes as usize + 2 * injected + 5;
    report.check(
        records.len() <= bound,
        "oauth route: no stampede on the token endpoint",
        format!("{} token requests (bound {bound})", records.len()),
    );
    report.memory("file sidecar", &file_samples);
    report.memory("oauth sidecar", &oauth_samples);
    report.fds("file sidecar", &file_samples);
    report.fds("oauth sidecar", &oauth_samples);

    let alive = !file_sc.has_exited() && !oauth_sc.has_exited();
    let logs: Vec<String> = file_sc.logs().into_iter().chain(oauth_sc.logs()).collect();
    let panics = logs.iter().filter(|l| l.contains("panicked")).count();
    report.check(
        alive && panics == 0,
        "both sidecars alive, no panic",
        format!("alive: {alive}, panic lines: {panics}"),
    );
    let leaked = logs
        .iter()
        .filter(|l| {
            l.contains(FILE_TOKEN)
                || l.contains(TOKEN_PREFIX)
                || l.contains(DEV_ASSERTION)
                || l.contains("test-secret")
        })
        .count();
    report.check(
        leaked == 0,
        "no token or credential in the logs",
        format!("{} log lines, {leaked} with a secret", logs.len()),
    );

    println!("soak: {} passed, {} failed", report.passed, report.failed);
    assert_eq!(report.failed, 0, "soak checks failed");
}
