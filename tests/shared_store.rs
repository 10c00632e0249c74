//! Replicas sharing one token set through a real Redis, against the RingCentral double with its
//! session cap and auth rate limit on: one session, one token request per refresh cycle, no
//! lost request when a replica or Redis goes away, and version fencing.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::redis::Redis;
use support::{Client, Sidecar, SidecarBuilder, DEADLINE};
use token_sidecar_testkit::token_server::{Fault, RateLimit, TokenServerConfig, TOKEN_PREFIX};

struct Rig {
    rc: support::rc::Rig,
    redis: Redis,
}

impl Rig {
    /// RingCentral's limits: 5 sessions, and `max_auth_calls` auth calls a minute.
    async fn new(max_auth_calls: u32) -> Rig {
        let rc = support::rc::Rig::new(TokenServerConfig {
            rate_limit: Some(RateLimit {
                max: max_auth_calls,
                window: Duration::from_secs(60),
                penalty: Duration::from_secs(60),
            }),
            session_cap: Some(5),
            ..TokenServerConfig::default()
        })
        .await;
        Rig {
            rc,
            redis: Redis::start(),
        }
    }

    fn replica(&self, n: usize, ttl_secs: u64, extra: &[&str]) -> SidecarBuilder {
        self.rc
            .sidecar()
            .args(["--redis-url", &self.redis.url()])
            .args(["--token-param", &format!("access_token_ttl={ttl_secs}")])
            .args(extra)
            .env("TOKEN_SIDECAR_REPLICA", &format!("r{n}"))
    }

    async fn replicas(&self, n: usize, ttl_secs: u64, extra: &[&str]) -> Vec<Sidecar> {
        let mut out = Vec::new();
        for i in 0..n {
            out.push(self.replica(i, ttl_secs, extra).start().await);
        }
        for sc in &out {
            support::eventually(DEADLINE, "replica ready", || async {
                sc.admin_get("/readyz").await.0 == 200
            })
            .await;
        }
        out
    }
}

/// Sends requests through every replica until `stop`; returns (ok, failures).
fn load(
    replicas: &[Sidecar],
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u32, Vec<String>)>> {
    replicas
        .iter()
        .map(|sc| {
            let url = sc.url("/restapi/v1.0/echo");
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = Client::http1();
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let r = client.get(&url).await;
                    if r.status == 200 {
                        ok += 1;
                    } else {
                        failed.push(format!("{} {}", r.status, r.text()));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (ok, failed)
            })
        })
        .collect()
}

async fn finish(tasks: Vec<tokio::task::JoinHandle<(u32, Vec<String>)>>) -> u32 {
    let mut total = 0;
    for t in tasks {
        let (ok, failed) = t.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    total
}

#[tokio::test]
async fn six_replicas_one_session_one_token_request_per_cycle() {
    let rig = Rig::new(12).await;
    let replicas = rig.replicas(6, 4, &[]).await;
    assert_eq!(
        rig.rc.ts.successful_logins(),
        1,
        "one login for all replicas"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&replicas, stop.clone());
    // 4-second tokens are refreshed every ~1.6-2 s: several cycles.
    tokio::time::sleep(Duration::from_secs(9)).await;
    stop.store(true, Ordering::Relaxed);
    let total = finish(tasks).await;
    assert!(total > 200, "only {total} requests");

    let requests = rig.rc.ts.requests();
    assert!(
        requests.iter().all(|r| r.status == 200),
        "a token request failed: {:?}",
        requests.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let cycles = requests.len() - 1;
    assert!(cycles >= 3, "only {cycles} refresh cycles");
    // Every token request produced exactly one version, and every replica converged on it.
    // Refreshes go on after the load stops: compare with the token requests answered by now,
    // not with the list read above (a refresh in between would never let them match).
    support::eventually(DEADLINE, "replicas converge", || async {
        let answered = rig.rc.ts.request_count() as u64;
        let mut all = true;
        for sc in &replicas {
            all &= sc.token_version().await == answered;
        }
        all && rig.rc.ts.request_count() as u64 == answered
    })
    .await;
    assert_eq!(rig.rc.ts.successful_logins(), 1);
    assert!(rig.rc.ts.sessions_evicted().is_empty());
    assert!(rig.rc.ts.stale_refresh_token_uses().is_empty());
    for sc in &replicas {
        sc.assert_logs_free_of(TOKEN_PREFIX);
        let m = sc.metrics().await;
        assert!(
            m.contains("token_sidecar_shared_store_operations_total"),
            "{m}"
        );
    }
    // Someone refreshed, and /token-info says who.
    let info = support::json(replicas[0].admin_get("/token-info").await.1.as_bytes());
    let by = info["tokens"]["default"]["shared"]["refreshed_by"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(by.starts_with('r'), "{info}");
    assert_eq!(info["tokens"]["default"]["shared"]["replica"], "r0");
}

#[tokio::test]
async fn the_lock_holder_dies_mid_refresh_and_another_takes_over() {
    let rig = Rig::new(20).await;
    // 20-second tokens, refreshed ~8-10 s in; the lock lives 2 x 1 s + 5 s = 7 s.
    let extra = ["--token-request-timeout", "1s", "--refresh-margin", "10s"];
    let mut replicas = rig.replicas(3, 20, &extra).await;
    let arrivals = rig.rc.ts.request_count();
    rig.rc
        .ts
        .set_fault(Fault::Slow(Duration::from_secs(30)), Some(1));
    assert!(
        rig.rc
            .ts
            .wait_for_arrivals(arrivals as u64 + 1, Duration::from_secs(20))
            .await,
        "no refresh started"
    );
    // The lock's owner id names the holder: the replica whose token request hangs.
    let owner = redis_get(&rig.redis.url(), "token-sidecar:{default}:lock")
        .await
        .expect("the lock is held during the refresh");
    let name = owner.split('/').next().unwrap_or_default().to_owned();
    let holder: usize = name.trim_start_matches('r').parse().expect("replica name");
    let dead = replicas.remove(holder);
    drop(dead); // SIGKILL
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&replicas, stop.clone());
    support::eventually(Duration::from_secs(20), "a survivor refreshes", || async {
        replicas[0].token_version().await >= 2 && replicas[1].token_version().await >= 2
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    finish(tasks).await;
    assert_eq!(rig.rc.ts.successful_logins(), 1);
    assert!(rig.rc.ts.stale_refresh_token_uses().is_empty());
}

#[tokio::test]
async fn redis_outage_costs_no_request_and_past_expiry_nobody_stampedes() {
    let mut rig = Rig::new(20).await;
    let replicas = rig.replicas(3, 8, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&replicas, stop.clone());
    // A short outage while the token is valid: nothing lost.
    rig.redis.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.redis.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    finish(tasks).await;

    // A long outage: past expiry every replica answers 503 and none calls the token endpoint
    // (no stampede, no rotation race on the shared refresh token).
    rig.redis.stop();
    let before = rig.rc.ts.request_count();
    let client = Client::http1();
    for sc in &replicas {
        support::eventually(
            Duration::from_secs(20),
            "token_unavailable past expiry",
            || async { client.get(&sc.url("/x")).await.status == 503 },
        )
        .await;
    }
    assert_eq!(
        rig.rc.ts.request_count(),
        before,
        "token requests while Redis was down"
    );
    let (status, body) = replicas[0].admin_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("shared store"), "{body}");

    // Redis back (empty, as after a crash): one replica refreshes with the shared refresh
    // token, the others adopt it.
    rig.redis.restart();
    for sc in &replicas {
        support::eventually(Duration::from_secs(30), "recovery", || async {
            client.get(&sc.url("/x")).await.status == 200
        })
        .await;
    }
    assert_eq!(
        rig.rc.ts.successful_logins(),
        1,
        "recovered without a new session"
    );
    assert!(rig.rc.ts.stale_refresh_token_uses().is_empty());
    let ok = rig
        .rc
        .ts
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .count();
    assert_eq!(
        rig.rc.ts.request_count() - before,
        1,
        "one token request to recover, {ok} ok in all"
    );
}

#[tokio::test]
async fn a_stale_holders_write_is_fenced_off() {
    use token_sidecar::config::SharedConfig;
    use token_sidecar::secret::Secret;
    use token_sidecar::token::set::TokenSet;
    use token_sidecar::token::shared::SharedStore;
    use token_sidecar::token::state::State;

    let redis = Redis::start();
    let cfg = SharedConfig {
        redis_url: Secret::new(redis.url()),
        topology: token_sidecar::token::shared::Topology::Single,
        tls: Default::default(),
        key_prefix: "test".into(),
        seal_keys: None,
    };
    let metrics = token_sidecar::metrics::Metrics::new();
    let a = SharedStore::new(&cfg, "p", "k", Duration::from_millis(300), metrics.clone()).unwrap();
    let b = SharedStore::new(&cfg, "p", "k", Duration::from_secs(5), metrics).unwrap();
    let set = |v: &str| TokenSet {
        access_token: Secret::new(v),
        expires_at: std::time::SystemTime::now() + Duration::from_secs(60),
        refresh_token: Some(Secret::new(format!("rt-{v}"))),
        refresh_expires_at: None,
        scope: None,
        obtained_at: std::time::SystemTime::now(),
    };
    // A takes the lock, then stalls past its TTL; B takes over and writes version 2.
    assert!(a.try_lock().await.unwrap());
    assert!(!b.try_lock().await.unwrap(), "the lock is exclusive");
    let waited = Instant::now();
    while !b.try_lock().await.unwrap() {
        assert!(waited.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.write(State::new("k", 2, &set("b")), None).await.unwrap());
    // A wakes up and tries to write what it obtained, with the version it computed: rejected.
    assert!(!a.write(State::new("k", 2, &set("a")), None).await.unwrap());
    assert!(!a.write(State::new("k", 1, &set("a")), None).await.unwrap());
    // A cannot release or extend B's lock.
    assert!(!a.unlock().await.unwrap());
    assert!(!a.extend().await.unwrap());
    assert!(b.extend().await.unwrap());
    assert!(b.unlock().await.unwrap());
    let stored = b.read().await.unwrap().set().unwrap();
    assert_eq!(stored.state.version, 2);
    assert_eq!(stored.state.access_token, "b");
    // Versions only grow.
    assert!(a.write(State::new("k", 3, &set("a3")), None).await.unwrap());
    assert_eq!(b.read().await.unwrap().set().unwrap().state.version, 3);
}

async fn redis_get(url: &str, key: &str) -> Option<String> {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// State-machine edge cases of the shared path
// ---------------------------------------------------------------------------------------------

/// One replica sharing through Redis, holding a fresh one-hour token.
async fn one_fresh_replica(rig: &Rig) -> Sidecar {
    let mut replicas = rig.replicas(1, 3600, &[]).await;
    replicas.remove(0)
}

fn shared_reads(m: &str) -> f64 {
    support::metrics::sum(
        m,
        "token_sidecar_shared_store_operations_total",
        &[("op", "read"), ("result", "ok")],
    )
}

#[tokio::test]
async fn a_401_for_a_fresh_shared_token_refreshes_and_replays() {
    let rig = Rig::new(20).await;
    let sc = one_fresh_replica(&rig).await;
    let v1 = sc.token_version().await;
    // The API stops accepting the token long before its refresh is due (as after a revocation
    // of the access token alone, or RingCentral's OAU-128).
    assert!(rig.rc.ts.expire_access_tokens() >= 1);
    let r = Client::http1().get(&sc.url("/restapi/v1.0/echo")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(sc.token_version().await > v1);
    assert_eq!(rig.rc.count("refresh_token", 200), 1);
    assert_eq!(rig.rc.ts.successful_logins(), 1);
}

#[tokio::test]
async fn a_failed_manual_refresh_of_a_fresh_shared_token_does_not_spin() {
    let rig = Rig::new(20).await;
    let sc = one_fresh_replica(&rig).await;
    rig.rc.ts.set_fault(Fault::Status(500), Some(1));
    let r = sc.post_refresh().await;
    assert_eq!(r.status, 502, "{}", r.text());
    // The timer retries after the backoff (at most 1 s), finds the shared token fresh, and
    // plans its next attempt for when that token is due (minutes away), not "now" forever.
    support::eventually(
        DEADLINE,
        "the next attempt planned at the due time",
        || async {
            let v = support::json(sc.admin_get("/token-info").await.1.as_bytes());
            let next = v["tokens"]["default"]["next_refresh_at"]
                .as_u64()
                .unwrap_or(0);
            next > v["now"].as_u64().unwrap() + 600
        },
    )
    .await;
    // And Redis is read at the follower's pace, not in a loop: measured over a window.
    let before = shared_reads(&sc.metrics().await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = shared_reads(&sc.metrics().await) - before;
    assert!(reads <= 10.0, "{reads} Redis reads in 2 s");
    assert_eq!(
        rig.rc.ts.request_count(),
        2,
        "the login and the failed refresh only"
    );
}

#[tokio::test]
async fn an_older_set_in_redis_never_replaces_the_newer_refresh_token_of_the_state_file() {
    // No grace window: a refresh token presented after its exchange is a stale use, visible.
    let rc = support::rc::Rig::new(TokenServerConfig {
        grace_unused: Duration::ZERO,
        grace_after_use: Duration::ZERO,
        ..TokenServerConfig::default()
    })
    .await;
    let redis = Redis::start();
    let state = rc.path("state.json");
    let with_state = |b: SidecarBuilder| {
        b.args(["--redis-url", &redis.url()])
            .arg("--state-file")
            .arg(&state)
            .args(["--token-param", "access_token_ttl=2"])
    };
    // A replica logs in: version 1 in Redis and in its state file.
    let mut sc = with_state(rc.sidecar()).start().await;
    support::eventually(DEADLINE, "ready", || async {
        sc.admin_get("/readyz").await.0 == 200
    })
    .await;
    sc.sigterm();
    assert!(sc.wait_exit(DEADLINE).await.success());
    // The state file moves on without Redis (Redis restored from an old snapshot, or a
    // refresh made while it was away): version 2, refresh token rotated.
    let out = rc
        .refresh_subcommand(&[
            "--state-file",
            state.to_str().unwrap(),
            "--token-param",
            "access_token_ttl=2",
        ])
        .await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(support::json(out.stdout.trim().as_bytes())["version"], 2);
    // Its access token expires; only its refresh token is of use at the next start.
    let expires_ms = support::json(&std::fs::read(&state).unwrap())["expires_at_ms"]
        .as_u64()
        .unwrap();
    support::eventually(DEADLINE, "the persisted access token to expire", || async {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            > expires_ms + 100
    })
    .await;
    let sc = with_state(rc.sidecar()).start().await;
    support::eventually(DEADLINE, "ready again", || async {
        sc.admin_get("/readyz").await.0 == 200
    })
    .await;
    assert!(
        rc.ts.stale_refresh_token_uses().is_empty(),
        "the exchanged refresh token of Redis' older set was presented"
    );
    assert_eq!(
        rc.ts.successful_logins(),
        1,
        "a new session instead of the kept one"
    );
}

#[tokio::test]
async fn another_configurations_set_under_the_same_key_is_never_adopted() {
    // Two deployments (two token endpoints here, as two apps or two users would be) that share
    // one Redis and the default profile name.
    let redis = Redis::start();
    let a_rig = support::rc::Rig::new(TokenServerConfig::default()).await;
    let b_rig = support::rc::Rig::new(TokenServerConfig::default()).await;
    let a = a_rig
        .sidecar()
        .args(["--redis-url", &redis.url()])
        .start()
        .await;
    support::eventually(DEADLINE, "a ready", || async {
        a.admin_get("/readyz").await.0 == 200
    })
    .await;
    let b = b_rig
        .sidecar()
        .args(["--redis-url", &redis.url()])
        .start()
        .await;
    support::eventually(DEADLINE, "b ready", || async {
        b.admin_get("/readyz").await.0 == 200
    })
    .await;
    // b's own login, not a's token, and none of a's refresh tokens sent to b's endpoint.
    let client = Client::http1();
    let r = client.get(&b.url("/restapi/v1.0/echo")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(b_rig.ts.successful_logins(), 1);
    assert_eq!(b_rig.count("refresh_token", 400), 0);
    // Whatever b writes is not adopted by a either: b writes a new set, whose notification
    // makes a's follower read it.
    let reads = shared_reads(&a.metrics().await);
    assert_eq!(b.post_refresh().await.status, 200);
    support::eventually(DEADLINE, "a's follower to read Redis", || async {
        shared_reads(&a.metrics().await) > reads
    })
    .await;
    assert_eq!(a.token_version().await, 1, "a adopted b's set");
    let r = client.get(&a.url("/restapi/v1.0/echo")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a_rig.count("refresh_token", 400), 0);
    for sc in [&a, &b] {
        let m = sc.metrics().await;
        assert_eq!(
            support::metrics::sum(&m, "token_sidecar_unauthorized_retries_total", &[]),
            0.0,
            "{m}"
        );
    }
}

#[tokio::test]
async fn a_retry_after_answered_to_one_replica_binds_every_replica() {
    // RingCentral's auth limit is per user and app: the whole fleet's. A replica that asks
    // during another's Retry-After restarts the penalty for all of them.
    let rig = Rig::new(20).await;
    let replicas = rig.replicas(2, 3600, &[]).await;
    let before = *rig.rc.ts.arrivals().borrow();
    rig.rc.ts.set_fault(
        Fault::TooManyRequests {
            retry_after: Some(30),
        },
        Some(1),
    );
    let r = replicas[0].post_refresh().await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(rig.rc.ts.requests().last().unwrap().status, 429);
    // The other replica's forced refresh (too many requests: 429 and when to ask again), its
    // 401s and its timer all wait too.
    let r = replicas[1].post_refresh().await;
    assert_eq!(r.status, 429, "{}", r.text());
    let retry_after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 25, "Retry-After {retry_after}");
    rig.rc.ts.expire_access_tokens();
    let r = Client::http1()
        .get(&replicas[1].url("/restapi/v1.0/echo"))
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        *rig.rc.ts.arrivals().borrow() - before,
        1,
        "a token request inside another replica's Retry-After"
    );
    let info = support::json(replicas[1].admin_get("/token-info").await.1.as_bytes());
    let next = info["tokens"]["default"]["next_refresh_at"]
        .as_u64()
        .unwrap();
    assert!(
        next >= info["now"].as_u64().unwrap() + 25,
        "the timer is not on hold: {info}"
    );
}
