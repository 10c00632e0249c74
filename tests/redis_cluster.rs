//! Replicas sharing one token and the upstream's rate-limit blocks through a Redis Cluster, as
//! real processes, against the RingCentral doubles: every key of a profile lives in the one
//! slot of its hash tag, notifications cross nodes by the cluster's broadcast, and when the
//! primary of that slot dies its replica takes over and the sidecars follow. The sidecars log
//! in as an ACL user allowed only the commands of `support::redis_topology::DATA_ACL`.

mod support;

use std::time::Duration;

use support::load::Load;
use support::redis_topology::{self as topo, subscriptions, versions, Cluster, PREFIX, SETTLE};
use support::{eventually, Client, Sidecar, DEADLINE};
use token_sidecar_testkit::api::{ApiLimits, ApiServer, Group};
use token_sidecar_testkit::token_server::{RateLimit, TokenServerConfig, TOKEN_PREFIX};

/// The call log: RingCentral's Heavy group.
const HEAVY: &str = "/restapi/v1.0/account/~/call-log";
/// An extension's details: the Light group.
const LIGHT: &str = "/restapi/v1.0/account/~/extension/~";

struct Rig {
    rc: support::rc::Rig,
    redis: Cluster,
}

impl Rig {
    async fn new(primaries: usize, replicas: usize) -> Rig {
        let redis = Cluster::start(primaries, replicas).await;
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

    /// `n` replicas with one-hour tokens in front of `api`, reaching the cluster through
    /// `nodes` (`--redis-cluster-nodes`), ready.
    async fn replicas(&self, n: usize, api: &str, nodes: &str, extra: &[&str]) -> Vec<Sidecar> {
        let mut out = Vec::new();
        for i in 0..n {
            out.push(
                support::SidecarBuilder::new(api)
                    .args(self.rc.jwt_flags())
                    .args(["--redis-url", &topo::sidecar_url()])
                    .args(["--redis-cluster-nodes", nodes])
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

    async fn assert_no_acl_denial(&self) {
        let denials = self.redis.acl_denials().await;
        assert!(
            denials.is_empty(),
            "commands outside the sidecar's ACL: {denials:#?}"
        );
    }
}

/// The profile's slot, its owner, and the keys of every primary under the prefix; asserts
/// that every one of them is on the owner, in that slot.
async fn assert_keys_in_one_slot(redis: &Cluster, profile: &str) -> (u16, u16, Vec<String>) {
    let slot = redis.slot_of(&format!("{PREFIX}:{{{profile}}}")).await;
    let owner = redis.owner(slot).await;
    let by_node = redis.keys_by_primary(&format!("{PREFIX}:*")).await;
    for (port, keys) in &by_node {
        if *port != owner {
            assert!(
                keys.is_empty(),
                "keys of the profile on {port}, not on the slot's owner {owner}: {by_node:?}"
            );
        }
    }
    let keys = by_node.get(&owner).cloned().unwrap_or_default();
    for k in &keys {
        assert!(
            k.starts_with(&format!("{PREFIX}:{{{profile}}}")),
            "a key without the profile's hash tag: {k}"
        );
        assert_eq!(redis.slot_of(k).await, slot, "{k}");
    }
    (slot, owner, keys)
}

#[tokio::test]
async fn replicas_on_a_cluster_share_one_token_and_the_upstreams_rate_limit_blocks() {
    let rig = Rig::new(3, 0).await;
    // The API double enforces RingCentral's limits, with room for 3 Heavy requests a minute.
    let api = ApiServer::start_with_limits(
        &rig.rc.ts,
        Some(ApiLimits {
            heavy: (3, Duration::from_secs(60)),
            penalty: Duration::from_secs(30),
            ..ApiLimits::ringcentral()
        }),
    )
    .await
    .unwrap();
    let nodes = rig.redis.node_list();
    let replicas = rig.replicas(3, &api.url(), &nodes, &[]).await;
    assert_eq!(
        rig.rc.ts.request_count(),
        1,
        "one token request for the first token"
    );
    assert_eq!(versions(&replicas).await, [1, 1, 1]);

    // A set written by one replica (on the slot's node) is adopted by the others, whose
    // subscriptions are on whichever node answered first.
    let r = replicas[2].post_refresh().await;
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(DEADLINE, "every replica adopts version 2", || async {
        versions(&replicas).await == [2, 2, 2]
    })
    .await;
    assert_eq!(rig.rc.ts.request_count(), 2);

    // Each replica learns the Heavy group from an ordinary answer (3 of the 3 allowed).
    let client = Client::http1();
    for sc in &replicas {
        let r = client.get(&sc.url(HEAVY)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-rate-limit-group"), Some("heavy"));
    }
    // One more through r0: the upstream's 429 for the group, passed on as it is.
    let r = client.get(&replicas[0].url(HEAVY)).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(
        r.header("x-token-sidecar-error").is_none(),
        "the upstream's own 429"
    );
    assert_eq!(api.rate_limited(Group::Heavy), 1);
    // The block reaches the other replicas: they answer for the group without asking.
    let heavy_seen = api.requests().iter().filter(|q| q.path == HEAVY).count();
    for sc in &replicas[1..] {
        eventually(DEADLINE, "the block on every replica", || async {
            sc.admin_get("/rate-limits")
                .await
                .1
                .contains(r#""group":"heavy""#)
        })
        .await;
        let r = client.get(&sc.url(HEAVY)).await;
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.header("x-token-sidecar-error"), Some("rate_limited"));
        let r = client.get(&sc.url(LIGHT)).await;
        assert_eq!(r.status, 200, "other groups flow: {}", r.text());
    }
    assert_eq!(
        api.requests().iter().filter(|q| q.path == HEAVY).count(),
        heavy_seen,
        "a Heavy request reached the upstream during the block"
    );
    assert_eq!(api.arrived_during_penalty(Group::Heavy), 0);

    // Every key of the profile (the set, the budget, the blocks and their ends) is in one slot,
    // on one node.
    let (slot, owner, keys) = assert_keys_in_one_slot(&rig.redis, "default").await;
    for want in ["", ":budget", ":rl:default:blocks", ":rl:default:ends"] {
        let key = format!("{PREFIX}:{{default}}{want}");
        assert!(
            keys.contains(&key),
            "{key} not on {owner} (slot {slot}): {keys:?}"
        );
    }
    assert_eq!(topo::stored_version(owner, "default").await, Some(2));
    for sc in &replicas {
        sc.assert_logs_free_of(TOKEN_PREFIX);
    }
    assert_eq!(rig.rc.ts.successful_logins(), 1);
    assert!(rig.rc.ts.stale_refresh_token_uses().is_empty());
    rig.assert_no_acl_denial().await;
}

#[tokio::test]
async fn the_primary_of_the_profiles_slot_dies_and_its_replica_takes_over() {
    let mut rig = Rig::new(3, 1).await;
    let slot = rig.redis.slot_of(&format!("{PREFIX}:{{default}}")).await;
    let old = rig.redis.owner(slot).await;
    // The slot's owner is listed first: the subscriptions start on the node that dies.
    let mut listed: Vec<String> = rig
        .redis
        .nodes
        .iter()
        .map(topo::Server::addr)
        .filter(|a| *a != format!("127.0.0.1:{old}"))
        .collect();
    listed.insert(0, format!("127.0.0.1:{old}"));
    let replicas = rig
        .replicas(
            3,
            &rig.rc.api.url(),
            &listed.join(","),
            &["--min-refresh-interval", "1s"],
        )
        .await;
    assert_eq!(rig.rc.ts.request_count(), 1);
    assert_eq!(topo::stored_version(old, "default").await, Some(1));
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
    eventually(DEADLINE, "load flowing", || async {
        rig.rc.api.request_count() > 30
    })
    .await;
    // The primary of the profile's slot crashes; its replica takes the slot over.
    rig.redis.node(old).kill();
    let new = rig.redis.wait_owner_moved(slot, old).await;
    assert_eq!(
        topo::stored_version(new, "default").await,
        Some(1),
        "the replica had the set"
    );
    for (sc, before) in replicas.iter().zip(&subscribed) {
        eventually(SETTLE, "a new subscription, on a live node", || async {
            subscriptions(&sc.metrics().await) > *before
        })
        .await;
    }
    // A refresh forced on one replica is written to the new owner and reaches the others.
    // Until the replica's cluster connection has caught up with the new owner, the attempt
    // fails without a token request (a manual refresh may be retried after 1 s).
    let attempts = std::cell::Cell::new(0);
    eventually(SETTLE, "a forced refresh succeeds", || async {
        attempts.set(attempts.get() + 1);
        let r = replicas[1].post_refresh().await;
        if r.status != 200 {
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        r.status == 200
    })
    .await;
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
    for o in load.finish().await {
        assert!(o.failed.is_empty(), "failed requests: {:?}", o.failed);
        assert!(o.ok > 10, "{o:?}");
    }
    let (_, owner, keys) = assert_keys_in_one_slot(&rig.redis, "default").await;
    assert_eq!(owner, new);
    assert!(keys.contains(&format!("{PREFIX}:{{default}}")), "{keys:?}");
    assert_eq!(
        rig.rc.ts.request_count(),
        2,
        "the login and the refresh ({} attempts)",
        attempts.get()
    );
    assert_eq!(rig.rc.ts.successful_logins(), 1);
    assert!(rig.rc.ts.stale_refresh_token_uses().is_empty());
    rig.assert_no_acl_denial().await;
}
