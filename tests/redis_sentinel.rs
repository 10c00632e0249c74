//! Replicas sharing one token through a Sentinel-managed Redis, as real processes: a primary,
//! two replicas and three sentinels (quorum 2), against the RingCentral double with its
//! session cap and auth rate limit on. The replicas find the primary through the sentinels,
//! follow it across a failover (a killed primary, or `SENTINEL FAILOVER` while a refresh is in
//! flight), and the version fence holds across it: the stored set never goes backwards, and
//! every replica ends on the one set the store holds. The sidecars log in as an ACL user
//! allowed only the commands of `support::redis_topology::{DATA_ACL, SENTINEL_ACL}`.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::load::Load;
use support::redis_topology::{self as topo, subscriptions, versions, Sentinels, SETTLE};
use support::{eventually, Client, Sidecar, DEADLINE};
use token_sidecar_testkit::token_server::{Fault, RateLimit, TokenServerConfig, TOKEN_PREFIX};

struct Rig {
    rc: support::rc::Rig,
    redis: Sentinels,
}

impl Rig {
    /// A primary with two replicas, three sentinels, and the RingCentral double (5 sessions,
    /// 20 auth calls a minute).
    async fn new() -> Rig {
        let redis = Sentinels::start(2).await;
        let rc = support::rc::Rig::new(TokenServerConfig {
            rate_limit: Some(RateLimit {
                max: 20,
                window: Duration::from_secs(60),
                penalty: Duration::from_secs(60),
            }),
            session_cap: Some(5),
            ..TokenServerConfig::default()
        })
        .await;
        Rig { rc, redis }
    }

    /// `n` replicas with one-hour tokens (no timed refresh during a test), ready.
    async fn replicas(&self, n: usize, extra: &[&str]) -> Vec<Sidecar> {
        let mut out = Vec::new();
        for i in 0..n {
            out.push(
                self.rc
                    .sidecar()
                    .args(self.redis.sidecar_flags())
                    .args(["--token-param", "access_token_ttl=3600"])
                    .args(extra)
                    .env("TOKEN_SIDECAR_REPLICA", &format!("r{i}"))
                    .start()
                    .await,
            );
        }
        for sc in &out {
            eventually(DEADLINE, "replica ready", || async {
                sc.admin_get("/readyz").await.0 == 200
            })
            .await;
        }
        out
    }

    /// The fingerprint of the token each replica sends upstream (one request through each).
    async fn tokens_in_use(&self, replicas: &[Sidecar]) -> Vec<String> {
        let client = Client::http1();
        let mut out = Vec::new();
        for sc in replicas {
            let r = client.get(&sc.url("/restapi/v1.0/echo")).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let rec = self.rc.api.requests().last().cloned().expect("a request");
            out.push(rec.token_fingerprint.expect("a bearer token"));
        }
        out
    }

    async fn assert_no_acl_denial(&self) {
        let denials = self.redis.acl_denials().await;
        assert!(
            denials.is_empty(),
            "commands outside the sidecar's ACL: {denials:#?}"
        );
    }
}

/// Polls the stored version on every data node until dropped; keeps each node's sequence of
/// distinct answers (a node that does not answer is skipped).
struct VersionWatch {
    seen: Arc<Mutex<BTreeMap<u16, Vec<u64>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl VersionWatch {
    fn start(ports: Vec<u16>) -> VersionWatch {
        let seen: Arc<Mutex<BTreeMap<u16, Vec<u64>>>> = Arc::default();
        let kept = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                for p in &ports {
                    if let Some(v) = topo::stored_version(*p, "default").await {
                        let mut seen = kept.lock().unwrap();
                        let s = seen.entry(*p).or_default();
                        if s.last() != Some(&v) {
                            s.push(v);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        VersionWatch { seen, task }
    }

    /// What was seen so far.
    fn seen(&self) -> BTreeMap<u16, Vec<u64>> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops, and asserts that no node's version ever went down.
    fn assert_never_backwards(self) -> BTreeMap<u16, Vec<u64>> {
        self.task.abort();
        let seen = self.seen.lock().unwrap().clone();
        for (port, s) in &seen {
            assert!(
                s.windows(2).all(|w| w[0] <= w[1]),
                "the set stored on {port} went backwards: {s:?} (every node: {seen:?})"
            );
        }
        seen
    }
}

#[tokio::test]
async fn replicas_reaching_redis_through_sentinels_share_one_token() {
    let rig = Rig::new().await;
    let replicas = rig.replicas(3, &[]).await;
    assert_eq!(
        rig.rc.ts.request_count(),
        1,
        "one token request for the first token"
    );
    assert_eq!(rig.rc.ts.successful_logins(), 1);
    assert_eq!(versions(&replicas).await, [1, 1, 1]);
    // The set is on the primary the sentinels name, and replicated.
    let primary = rig.redis.primary().await.expect("a primary");
    assert_eq!(primary, rig.redis.data[0].port);
    for port in rig.redis.live_data() {
        eventually(DEADLINE, "the set replicated", || async {
            topo::stored_version(port, "default").await == Some(1)
        })
        .await;
    }
    let first = rig.tokens_in_use(&replicas).await;
    assert!(first.iter().all(|f| *f == first[0]), "{first:?}");

    // A set written by one replica is adopted by the others.
    let r = replicas[1].post_refresh().await;
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(DEADLINE, "every replica adopts version 2", || async {
        versions(&replicas).await == [2, 2, 2]
    })
    .await;
    assert_eq!(topo::stored_version(primary, "default").await, Some(2));
    let second = rig.tokens_in_use(&replicas).await;
    assert!(second.iter().all(|f| *f == second[0]), "{second:?}");
    assert_ne!(first[0], second[0], "the refreshed token is in use");
    for sc in &replicas {
        let info = sc.token_info().await;
        assert_eq!(info["shared"]["refreshed_by"], "r1", "{info}");
        sc.assert_logs_free_of(TOKEN_PREFIX);
    }
    assert_eq!(rig.rc.ts.request_count(), 2);
    assert_eq!(rig.rc.ts.successful_logins(), 1);
    assert!(rig.rc.ts.stale_refresh_token_uses().is_empty());
    rig.assert_no_acl_denial().await;
}

#[tokio::test]
async fn a_killed_primary_is_replaced_and_every_replica_follows_the_new_one() {
    let mut rig = Rig::new().await;
    let replicas = rig.replicas(3, &[]).await;
    let old = rig.redis.primary().await.expect("a primary");
    let mut subscribed = Vec::new();
    for sc in &replicas {
        subscribed.push(subscriptions(&sc.metrics().await));
    }
    let load = Load::start(
        replicas
            .iter()
            .map(|sc| sc.url("/restapi/v1.0/echo"))
            .collect(),
    );
    // Under load, the primary crashes; the sentinels promote a replica.
    eventually(DEADLINE, "load flowing", || async {
        rig.rc.api.request_count() > 30
    })
    .await;
    rig.redis.node(old).kill();
    let new = rig.redis.wait_new_primary(old).await;
    // Every replica subscribes again (to the new primary: the old one is gone).
    for (sc, before) in replicas.iter().zip(&subscribed) {
        eventually(SETTLE, "a new subscription", || async {
            subscriptions(&sc.metrics().await) > *before
        })
        .await;
    }
    // A forced refresh on one replica is written to the new primary, and its notification
    // reaches the others.
    let r = replicas[2].post_refresh().await;
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(DEADLINE, "every replica adopts version 2", || async {
        versions(&replicas).await == [2, 2, 2]
    })
    .await;
    assert_eq!(topo::stored_version(new, "default").await, Some(2));
    let after = rig.rc.api.request_count();
    eventually(DEADLINE, "load flowing after the failover", || async {
        rig.rc.api.request_count() > after + 30
    })
    .await;
    let outcomes = load.finish().await;
    for o in &outcomes {
        assert!(o.failed.is_empty(), "failed requests: {:?}", o.failed);
        assert!(o.ok > 10, "{o:?}");
    }
    let used = rig.tokens_in_use(&replicas).await;
    assert!(used.iter().all(|f| *f == used[0]), "{used:?}");
    assert_eq!(rig.rc.ts.request_count(), 2, "the login and the refresh");
    assert_eq!(rig.rc.ts.successful_logins(), 1);
    assert!(rig.rc.ts.stale_refresh_token_uses().is_empty());
    rig.assert_no_acl_denial().await;
}

#[tokio::test]
async fn a_failover_during_a_refresh_keeps_the_version_fence() {
    let rig = Rig::new().await;
    // A budget of 3 token requests a minute for the fleet; the token request may take 20 s.
    let extra = [
        "--token-request-budget",
        "3/60s",
        "--token-request-timeout",
        "20s",
    ];
    let replicas = rig.replicas(3, &extra).await;
    let old = rig.redis.primary().await.expect("a primary");
    let watch = VersionWatch::start(rig.redis.live_data());
    // The next token request takes 6 s: the failover happens while it is in flight.
    rig.rc
        .ts
        .set_fault(Fault::Slow(Duration::from_secs(6)), Some(1));
    let arrived = *rig.rc.ts.arrivals().borrow();
    let refresh = {
        let url = replicas[0].admin_url("/refresh");
        tokio::spawn(async move {
            Client::http1()
                .send(
                    http::Request::post(url)
                        .body(support::client::empty())
                        .unwrap(),
                )
                .await
        })
    };
    assert!(
        rig.rc.ts.wait_for_arrivals(arrived + 1, DEADLINE).await,
        "no refresh started"
    );
    rig.redis.force_failover().await;
    let new = rig.redis.wait_new_primary(old).await;
    assert_eq!(
        rig.rc.ts.request_count(),
        1,
        "the failover completed while the token request was in flight"
    );
    let r = refresh.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // The old primary rejoins as a replica of the new one (the sentinels reconfigure it).
    rig.redis.wait_replica_of(old, new).await;
    // Every replica and every data node end on one version, the refreshed one.
    let last = std::cell::RefCell::new(String::new());
    topo::settle(
        SETTLE,
        "replicas and store converge on version 2",
        || format!("last seen: {}\nwatch: {:?}", last.borrow(), watch.seen()),
        || async {
            let v = versions(&replicas).await;
            let mut stored = Vec::new();
            for p in rig.redis.live_data() {
                stored.push((p, topo::stored_version(p, "default").await));
            }
            *last.borrow_mut() = format!("replicas {v:?}, stored {stored:?}");
            v.iter().all(|x| *x == 2) && stored.iter().all(|(_, s)| *s == Some(2))
        },
    )
    .await;
    let seen = watch.assert_never_backwards();
    assert!(
        seen.values().any(|s| s.contains(&2)),
        "version 2 never stored: {seen:?}"
    );
    let used = rig.tokens_in_use(&replicas).await;
    assert!(used.iter().all(|f| *f == used[0]), "{used:?}");
    let requests = rig.rc.ts.request_count();
    assert!(requests <= 3, "{requests} token requests, over the budget");
    assert_eq!(requests, 2, "the login and the one refresh");
    assert_eq!(rig.rc.ts.successful_logins(), 1);
    assert!(rig.rc.ts.stale_refresh_token_uses().is_empty());
    rig.assert_no_acl_denial().await;
}
