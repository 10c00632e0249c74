//! The shared store against one `redis-server` run as production runs it, with the RingCentral
//! double as identity provider and real sidecar processes:
//!
//! - TLS only, with a private CA, with and without client certificates, and a least-privilege
//!   ACL user ([`ACL_RULE`], the rule to document) with the `default` user off: two
//!   replicas share the token and the rate limits with no command, key or channel denied;
//!   the password, given in `--redis-url-file`, shows up in no log, command line or
//!   environment;
//! - Redis restarting empty: the replicas keep serving, one of them refreshes for all, all of
//!   them subscribe again;
//! - Redis unreachable (frozen, so connections hang as behind a partition) for longer than a
//!   token lives: no token request while it is away, 503 `token_unavailable` rather than an
//!   expired token, and one refresh for the fleet when it is back;
//! - the refresh lock's holder paused (`SIGSTOP`) between its token response and its write,
//!   another replica refreshing meanwhile: the late write is fenced off and the paused replica
//!   adopts the newer set.

mod support;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use support::load::Load;
use support::redis::{RedisBuilder, RedisServer, RedisTlsFiles};
use support::{eventually, Client, Sidecar, SidecarBuilder, DEADLINE};
use token_sidecar_testkit::token_server::{Fault, RateLimit, TokenServerConfig, TOKEN_PREFIX};

/// The ACL rule of the sidecar's Redis user, after `user NAME on >PASSWORD`, for one server:
/// its keys and channels only (under the default `key_prefix`: another prefix replaces
/// `token-sidecar` in both patterns), and only the commands it sends, including those its Lua
/// scripts call (Redis checks those against the caller's ACL too). Found on Redis 7.0 by
/// starting from `-@all +evalsha +script|load` and adding what the fleet below needed (`ACL
/// LOG`, `INFO commandstats`); kept equal to the commands of the sources and to the rule of
/// docs/shared-store.md by [`the_acl_rule_allows_exactly_the_commands_the_sidecar_sends`].
const ACL_RULE: &str = "resetkeys ~token-sidecar:* resetchannels &token-sidecar:* -@all \
    +evalsha +script|load \
    +get +set +del +exists +pttl +pexpire +type +time \
    +hget +hmget +hset +hdel +hstrlen +hexists +hlen +hgetall \
    +zadd +zrem +zcard +zrange +zrangebyscore +zremrangebyscore +zremrangebyrank \
    +publish +subscribe";

/// The keys and channel of the profile `default` under the default prefix.
const ENTRY: &str = "token-sidecar:{default}";
const LOCK: &str = "token-sidecar:{default}:lock";
const UPDATES: &str = "token-sidecar:{default}:updates";

/// RingCentral's limits: 5 sessions, `auth_calls` token requests a minute.
fn ringcentral(auth_calls: u32) -> TokenServerConfig {
    TokenServerConfig {
        rate_limit: Some(RateLimit {
            max: auth_calls,
            window: Duration::from_secs(60),
            penalty: Duration::from_secs(60),
        }),
        session_cap: Some(5),
        ..TokenServerConfig::default()
    }
}

/// A replica named `name` of the JWT flow against `rc`, with tokens of `ttl_secs`.
fn replica(rc: &support::rc::Rig, name: &str, ttl_secs: u64) -> SidecarBuilder {
    rc.sidecar()
        .args(["--token-param", &format!("access_token_ttl={ttl_secs}")])
        .env("TOKEN_SIDECAR_REPLICA", name)
}

async fn start_ready(builders: Vec<SidecarBuilder>) -> Vec<Sidecar> {
    let mut out = Vec::new();
    for b in builders {
        out.push(b.start().await);
    }
    for sc in &out {
        sc.wait_ready().await;
    }
    out
}

/// What the app saw through one replica.
#[derive(Debug, Default)]
struct Tally {
    ok: u32,
    /// 503 `token_unavailable`: failing closed.
    unavailable: u32,
    /// Anything else.
    other: Vec<String>,
}

/// Steady requests through every replica, to each of `paths` (support::load).
fn load(replicas: &[Sidecar], paths: &[&str]) -> Load {
    Load::start(
        replicas
            .iter()
            .flat_map(|sc| paths.iter().map(|p| sc.url(p)))
            .collect(),
    )
}

/// Stops the load and adds up what the app saw.
async fn tally(load: Load) -> Tally {
    let mut all = Tally::default();
    for outcome in load.finish().await {
        all.ok += outcome.ok;
        for f in outcome.failed {
            if f.starts_with("503 ") && f.contains(r#""error":"token_unavailable""#) {
                all.unavailable += 1;
            } else {
                all.other.push(f);
            }
        }
    }
    all
}

/// The version every replica serves when they all serve the one each token request produced:
/// as many versions as token requests answered, i.e. no two replicas refreshed for one cycle.
async fn converged(replicas: &[Sidecar], rc: &support::rc::Rig) -> Option<u64> {
    let answered = rc.ts.request_count() as u64;
    for sc in replicas {
        if sc.token_version().await != answered {
            return None;
        }
    }
    (rc.ts.request_count() as u64 == answered).then_some(answered)
}

/// The fingerprint of the token a replica sends upstream (the API double echoes it).
async fn upstream_fingerprint(sc: &Sidecar) -> String {
    let r = Client::http1().get(&sc.url("/restapi/v1.0/echo")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    support::json(&r.body)["token_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// How many requests reached the API with an expired token (RingCentral's `OAU-128`). A
/// token replaced by a refresh a moment ago may still be sent by a replica that has not
/// adopted the new one yet: the API refuses it (`OAU-129`), and the sidecar replays the request
/// with the new one.
fn expired_upstream(rc: &support::rc::Rig) -> usize {
    rc.api
        .requests()
        .iter()
        .filter(|r| r.error_code == Some("OAU-128"))
        .count()
}

/// `token_sidecar_shared_store_operations_total` for `op` and `result`.
fn ops(metrics: &str, op: &str, result: &str) -> f64 {
    support::metrics::sum(
        metrics,
        "token_sidecar_shared_store_operations_total",
        &[("op", op), ("result", result)],
    )
}

/// Every operation counted, by `op`, over the results other than `error`.
fn ops_done(metrics: &str) -> BTreeMap<String, f64> {
    let mut done = BTreeMap::new();
    for s in support::metrics::parse(metrics) {
        if s.name == "token_sidecar_shared_store_operations_total"
            && s.labels.get("result").map(String::as_str) != Some("error")
        {
            *done.entry(s.labels["op"].clone()).or_insert(0.0) += s.value;
        }
    }
    done
}

async fn acl_log(redis: &RedisServer) -> Vec<redis::Value> {
    let mut admin = redis.admin().await;
    redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut admin)
        .await
        .unwrap()
}

/// What the store holds: the version field and who refreshed (entries in clear only).
async fn stored(redis: &RedisServer) -> (Option<String>, Option<String>) {
    let mut admin = redis.admin().await;
    let (version, data): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(ENTRY)
        .arg("version")
        .arg("data")
        .query_async(&mut admin)
        .await
        .unwrap();
    let by = data.and_then(|d| {
        serde_json::from_str::<serde_json::Value>(&d).ok()?["refreshed_by"]
            .as_str()
            .map(str::to_owned)
    });
    (version, by)
}

/// `CLIENT LIST` as one map of fields per client.
async fn client_list(redis: &RedisServer) -> Vec<BTreeMap<String, String>> {
    let mut admin = redis.admin().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    list.lines()
        .map(|l| {
            l.split(' ')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// TLS and a least-privilege ACL user
// ---------------------------------------------------------------------------------------------

/// Two replicas through a TLS-only Redis as the user of [`ACL_RULE`], `default` off: tokens
/// (login, timed refreshes, a refresh after a 401, a token endpoint's `Retry-After` shared as
/// a hold) and rate limits (a shared rate, a shared block) all work, and Redis denied nothing.
async fn acl_fleet(auth_clients: &str, client_cert: bool) {
    let tls = RedisTlsFiles::generate();
    let password = format!("pw{:032x}", rand::random::<u128>());
    let redis = RedisBuilder::new()
        .tls(&tls, auth_clients)
        .conf("user default off")
        .conf(format!("user sidecar on >{password} {ACL_RULE}"))
        .start();
    let rc = support::rc::Rig::new(ringcentral(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("redis-url");
    std::fs::write(
        &url_file,
        format!("{}\n", redis.url(Some(("sidecar", &password)))),
    )
    .unwrap();
    let key_file = dir.path().join("shared-key");
    {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        std::fs::write(&key_file, key).unwrap();
    }
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        r#"
[[route]]
name = "default"

[[route.limit]]
group = "heavy"
match = ["GET /restapi/v1.0/heavy/**"]

[[route.limit]]
group = "paced"
match = ["GET /restapi/v1.0/paced/**"]
rate = "20/1s"
"#,
    )
    .unwrap();
    let with_redis = |b: SidecarBuilder, cert: bool| {
        let b = b
            .arg("--config")
            .arg(&config)
            .arg("--redis-url-file")
            .arg(&url_file)
            .arg("--redis-ca-file")
            .arg(tls.path("ca.pem"))
            .arg("--shared-key-file")
            .arg(&key_file);
        if cert {
            b.arg("--redis-client-cert-file")
                .arg(tls.path("client.pem"))
                .arg("--redis-client-key-file")
                .arg(tls.path("client-key.pem"))
        } else {
            b
        }
    };
    let replicas = start_ready(vec![
        with_redis(replica(&rc, "a", 10), client_cert),
        with_redis(replica(&rc, "b", 10), client_cert),
    ])
    .await;
    let (a, b) = (&replicas[0], &replicas[1]);
    let traffic = load(&replicas, &["/restapi/v1.0/echo", "/restapi/v1.0/paced/1"]);

    // Timed refreshes: two cycles.
    eventually(Duration::from_secs(25), "two refresh cycles", || async {
        a.token_version().await >= 3 && b.token_version().await >= 3
    })
    .await;

    // A 429 of the upstream to one replica blocks its group on the other.
    let client = Client::http1();
    let r = client
        .get(&a.url("/restapi/v1.0/heavy/1?status=429&group=heavy"))
        .await;
    assert_eq!(r.status, 429, "{}", r.text());
    eventually(DEADLINE, "the block pushed to b", || async {
        let v = support::json(b.admin_get("/rate-limits").await.1.as_bytes());
        v["routes"]["default"]["blocks"]
            .as_array()
            .is_some_and(|blocks| blocks.iter().any(|b| b["group"] == "heavy"))
    })
    .await;
    let r = client.get(&b.url("/restapi/v1.0/heavy/2")).await;
    r.assert_sidecar_error(429, "rate_limited");
    assert!(
        !rc.api
            .requests()
            .iter()
            .any(|r| r.path == "/restapi/v1.0/heavy/2"),
        "b forwarded a request of the blocked group"
    );

    // A 401: the API stops accepting the token before its refresh is due.
    let v = a.token_version().await.max(b.token_version().await);
    assert!(rc.ts.expire_access_tokens() >= 1);
    eventually(DEADLINE, "a refresh after the 401", || async {
        a.token_version().await > v && b.token_version().await > v
    })
    .await;

    // A Retry-After of the token endpoint, shared as a hold: whichever replica asks next gets
    // it, and the fleet waits, then refreshes again.
    let v = a.token_version().await.max(b.token_version().await);
    rc.ts.set_fault(
        Fault::TooManyRequests {
            retry_after: Some(2),
        },
        Some(1),
    );
    let r = a.post_refresh().await;
    assert!(
        r.status == 502 || r.status == 429 || r.status == 200,
        "{}",
        r.text()
    );
    eventually(DEADLINE, "the hold written", || async {
        ops(&a.metrics().await, "hold", "ok") + ops(&b.metrics().await, "hold", "ok") >= 1.0
    })
    .await;
    eventually(
        Duration::from_secs(25),
        "a refresh after the hold",
        || async { a.token_version().await > v && b.token_version().await > v },
    )
    .await;
    let tally = tally(traffic).await;
    assert!(
        tally.other.is_empty(),
        "{} failed requests: {:?}",
        tally.other.len(),
        tally.other.first()
    );
    assert!(tally.ok > 20, "{tally:?}");

    // Redis denied nothing: no ACL log entry, no failed operation, every operation done.
    let denied = acl_log(&redis).await;
    assert!(denied.is_empty(), "ACL LOG: {denied:#?}");
    let mut done = BTreeMap::new();
    for sc in &replicas {
        let m = sc.metrics().await;
        // Nothing failed but, on a busy machine, a rate decision that waited more than its
        // 250 ms for Redis (a refusal would be in the ACL log and in the logs).
        for sample in support::metrics::parse(&m) {
            if sample.name == "token_sidecar_shared_store_operations_total"
                && sample.labels["result"] == "error"
            {
                assert!(
                    sample.value == 0.0 || sample.labels["op"] == "rate",
                    "{sample:?}"
                );
            }
        }
        for (op, n) in ops_done(&m) {
            *done.entry(op).or_insert(0.0) += n;
        }
    }
    for op in [
        "read",
        "write",
        "lock",
        "unlock",
        "extend",
        "budget",
        "subscribe",
        "unauthorized",
        "hold",
        "rate",
        "block",
        "blocks",
    ] {
        assert!(
            done.get(op).copied().unwrap_or(0.0) > 0.0,
            "{op} never done: {done:?}"
        );
    }
    // Every replica connection is the least-privilege user's.
    let users: Vec<String> = client_list(&redis)
        .await
        .into_iter()
        .filter(|c| c["user"] != "admin")
        .map(|c| c["user"].clone())
        .collect();
    assert!(users.len() >= 4, "{users:?}");
    assert!(users.iter().all(|u| u == "sidecar"), "{users:?}");

    // The password is in the URL file only.
    for sc in &replicas {
        sc.assert_logs_free_of(&password);
        sc.assert_logs_free_of(TOKEN_PREFIX);
        for line in sc.logs() {
            assert!(!line.contains("NOPERM"), "{line}");
            assert!(!line.contains("\"level\":\"ERROR\""), "{line}");
        }
        for (what, bytes) in [
            ("cmdline", support::procfs::cmdline(sc.pid())),
            ("environ", support::procfs::environ(sc.pid())),
        ] {
            assert!(!bytes.is_empty(), "/proc/{}/{what} unreadable", sc.pid());
            assert!(
                !String::from_utf8_lossy(&bytes).contains(&password),
                "the Redis password in /proc/PID/{what}"
            );
        }
        for path in ["/token-info", "/metrics", "/readyz", "/rate-limits"] {
            assert!(!sc.admin_get(path).await.1.contains(&password), "{path}");
        }
    }
    assert_eq!(rc.ts.successful_logins(), 1);
    assert!(rc.ts.sessions_evicted().is_empty());
    assert!(rc.ts.stale_refresh_token_uses().is_empty());
    assert_eq!(
        rc.api
            .requests()
            .iter()
            .filter(|r| r.status == 429 && r.path != "/restapi/v1.0/heavy/1")
            .count(),
        0
    );

    if client_cert {
        // A replica without the client certificate is refused at the handshake: it never
        // gets a token of its own, and says why without the password.
        let c = with_redis(replica(&rc, "c", 10), false).start().await;
        eventually(DEADLINE, "c's connection refused", || async {
            let m = c.metrics().await;
            support::metrics::sum(
                &m,
                "token_sidecar_shared_store_operations_total",
                &[("result", "error")],
            ) > 0.0
        })
        .await;
        assert_eq!(c.admin_get("/readyz").await.0, 503);
        c.assert_logs_free_of(&password);
        assert_eq!(rc.ts.successful_logins(), 1, "c logged in on its own");
    }
}

#[tokio::test]
async fn tls_with_client_certificates_and_a_least_privilege_acl_user() {
    acl_fleet("yes", true).await;
}

#[tokio::test]
async fn tls_without_client_certificates_and_a_least_privilege_acl_user() {
    acl_fleet("optional", false).await;
}

/// The command names `src` sends: `redis.call('NAME'` in Lua, `redis::cmd("NAME")` in Rust.
fn commands_in(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (open, close) in [("redis.call('", '\''), ("redis::cmd(\"", '"')] {
        for rest in src.split(open).skip(1) {
            if let Some(name) = rest.split(close).next() {
                out.push(name.to_ascii_lowercase());
            }
        }
    }
    out
}

/// The rule allows exactly the commands the single-server store and the rate limits send,
/// including those of script paths the fleet tests may not reach (`ZREMRANGEBYRANK`, when a
/// window holds more than its rate allows after the rate was lowered), and it is the rule the
/// documentation gives, without the commands of Sentinel and Cluster.
#[test]
fn the_acl_rule_allows_exactly_the_commands_the_sidecar_sends() {
    let allowed: BTreeSet<&str> = ACL_RULE
        .split_whitespace()
        .filter_map(|r| r.strip_prefix('+'))
        .collect();
    let mut sent: BTreeSet<String> = [
        include_str!("../src/token/shared/scripts.rs"),
        include_str!("../src/token/shared/redis.rs"),
        include_str!("../src/ratelimit/rate.rs"),
        include_str!("../src/ratelimit/shared.rs"),
    ]
    .iter()
    .flat_map(|src| commands_in(src))
    .collect();
    for known in ["type", "hgetall", "zremrangebyrank", "publish", "set"] {
        assert!(sent.contains(known), "{known} not found in {sent:?}");
    }
    // redis::Script sends EVALSHA, and SCRIPT LOAD when Redis does not know the script yet;
    // the followers SUBSCRIBE.
    sent.extend(["evalsha", "script|load", "subscribe"].map(String::from));
    let sent: BTreeSet<&str> = sent.iter().map(String::as_str).collect();
    // docs/shared-store.md gives this rule, plus what Sentinel and Cluster need.
    let documented = include_str!("../docs/shared-store.md")
        .lines()
        .find_map(|l| l.strip_prefix("ACL SETUSER token-sidecar on >PASSWORD "))
        .expect("the rule in docs/shared-store.md");
    let topologies = ["+role", "+cluster|slots", "+ping", "+asking"];
    assert_eq!(
        documented
            .split_whitespace()
            .filter(|r| !topologies.contains(r))
            .collect::<Vec<_>>(),
        ACL_RULE.split_whitespace().collect::<Vec<_>>(),
        "docs/shared-store.md: {documented}"
    );
    assert_eq!(
        allowed, sent,
        "ACL_RULE allows {allowed:?}, the sidecar sends {sent:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Failure stories
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn redis_restarting_empty_costs_no_request_and_one_replica_refreshes_for_all() {
    let mut redis = RedisBuilder::new().start();
    let rc = support::rc::Rig::new(ringcentral(20)).await;
    let budget = 12;
    let replicas = start_ready(
        ["r0", "r1", "r2"]
            .iter()
            .map(|n| {
                replica(&rc, n, 8)
                    .args(["--redis-url", &redis.url(None)])
                    .args(["--token-request-budget", &format!("{budget}/60s")])
            })
            .collect(),
    )
    .await;
    let traffic = load(&replicas, &["/restapi/v1.0/echo"]);
    // One timed refresh cycle first; then Redis restarts right after one, empty.
    let v = Cell::new(0);
    eventually(Duration::from_secs(15), "a refresh cycle", || async {
        v.set(converged(&replicas, &rc).await.unwrap_or(0));
        v.get() >= 2
    })
    .await;
    let v = v.get();
    redis.restart();
    let mut admin = redis.admin().await;
    assert_eq!(
        redis::cmd("EXISTS")
            .arg(ENTRY)
            .query_async::<i64>(&mut admin)
            .await
            .unwrap(),
        0,
        "not empty after the restart"
    );
    // Every replica subscribes again.
    eventually(DEADLINE, "three subscribers again", || async {
        let subs: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(UPDATES)
            .query_async(&mut admin.clone())
            .await
            .unwrap();
        subs.first().map(|s| s.1) == Some(3)
    })
    .await;
    // The next refresh: one token request, one new version, which every replica adopts.
    let now = Cell::new(0);
    eventually(Duration::from_secs(15), "one refresh for all", || async {
        now.set(converged(&replicas, &rc).await.unwrap_or(0));
        now.get() > v
    })
    .await;
    let now = now.get();
    let tally = tally(traffic).await;
    assert!(tally.other.is_empty(), "failed requests: {:?}", tally.other);
    assert_eq!(tally.unavailable, 0, "{tally:?}");
    assert!(tally.ok > 20, "{tally:?}");
    // Redis holds the fleet's set again.
    let (stored_version, _) = stored(&redis).await;
    let stored_version: u64 = stored_version.expect("a set in Redis").parse().unwrap();
    assert!(stored_version >= now, "{stored_version} < {now}");
    let requests = rc.ts.requests();
    assert!(
        requests.iter().all(|r| r.status == 200),
        "{:?}",
        requests.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        requests.len() <= budget,
        "{} token requests",
        requests.len()
    );
    assert_eq!(
        rc.ts.successful_logins(),
        1,
        "a new session after the restart"
    );
    assert!(rc.ts.stale_refresh_token_uses().is_empty());
    assert_eq!(expired_upstream(&rc), 0, "an expired token sent upstream");
}

#[tokio::test]
async fn a_partition_from_redis_longer_than_a_token_lives_fails_closed_without_a_storm() {
    let redis = RedisBuilder::new().start();
    // RingCentral's auth limit, and the sidecar's default budget: 5 a minute.
    let rc = support::rc::Rig::new(ringcentral(5)).await;
    let ttl = Duration::from_secs(6);
    let replicas = start_ready(
        ["r0", "r1", "r2"]
            .iter()
            .map(|n| {
                replica(&rc, n, ttl.as_secs())
                    .args(["--redis-url", &redis.url(None)])
                    .args(["--token-request-budget", "5/60s"])
                    .args(["--token-request-timeout", "2s"])
            })
            .collect(),
    )
    .await;
    eventually(Duration::from_secs(20), "one token for all", || async {
        converged(&replicas, &rc).await == Some(1)
    })
    .await;
    let traffic = load(&replicas, &["/restapi/v1.0/echo"]);
    let before = rc.ts.request_count();
    redis.freeze();
    let frozen = Instant::now();
    // Past the token's life every replica fails closed, none asks the token endpoint.
    let client = Client::http1();
    for sc in &replicas {
        eventually(Duration::from_secs(20), "503 token_unavailable", || async {
            client
                .get(&sc.url("/restapi/v1.0/echo"))
                .await
                .header("x-token-sidecar-error")
                == Some("token_unavailable")
        })
        .await;
        assert_eq!(sc.admin_get("/readyz").await.0, 503);
    }
    // The partition lasts longer than a token lives, whatever the replicas did meanwhile.
    if let Some(rest) = (ttl + Duration::from_secs(2)).checked_sub(frozen.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    assert_eq!(
        rc.ts.request_count(),
        before,
        "token requests while Redis was unreachable"
    );
    redis.thaw();
    // One replica refreshes with the refresh token all hold; all adopt its set.
    eventually(Duration::from_secs(30), "recovery", || async {
        let mut all = converged(&replicas, &rc).await.is_some_and(|v| v > 1);
        for sc in &replicas {
            all = all && client.get(&sc.url("/restapi/v1.0/echo")).await.status == 200;
        }
        all
    })
    .await;
    let tally = tally(traffic).await;
    assert!(
        tally.other.is_empty(),
        "neither served nor failed closed: {:?}",
        tally.other
    );
    // Failing closed is asserted on each replica above; the load's own count of 503s is not
    // (on a very busy machine it once saw none, with every request served before or after).
    assert!(tally.ok > 0, "{tally:?}");
    let requests = rc.ts.requests();
    assert!(
        requests.iter().all(|r| r.status == 200),
        "{:?}",
        requests.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(requests.len() <= 5, "{} token requests", requests.len());
    assert_eq!(
        rc.ts.successful_logins(),
        1,
        "a new session after the partition"
    );
    assert!(rc.ts.stale_refresh_token_uses().is_empty());
    assert_eq!(expired_upstream(&rc), 0, "an expired token sent upstream");
}

#[tokio::test]
async fn a_lock_holder_paused_before_its_write_is_fenced_off_and_adopts_the_newer_set() {
    let redis = RedisBuilder::new().start();
    let rc = support::rc::Rig::new(ringcentral(20)).await;
    // The lock lives 2 x 2 s + 5 s = 9 s.
    let replicas = start_ready(
        ["a", "b"]
            .iter()
            .map(|n| {
                replica(&rc, n, 3600)
                    .args(["--redis-url", &redis.url(None)])
                    .args(["--token-request-timeout", "2s"])
            })
            .collect(),
    )
    .await;
    let (a, b) = (&replicas[0], &replicas[1]);
    let v = eventually_converged(&replicas, &rc).await;
    let mut admin = redis.admin().await;
    let writes_before = ops(&a.metrics().await, "write", "ok");

    // a refreshes; the token endpoint answers after a second.
    rc.ts
        .set_fault(Fault::Slow(Duration::from_secs(1)), Some(1));
    let arrived = *rc.ts.arrivals().borrow();
    let a_refresh = tokio::spawn({
        let url = a.admin_url("/refresh");
        async move {
            Client::http1()
                .send(
                    http::Request::post(url)
                        .body(support::client::empty())
                        .unwrap(),
                )
                .await
        }
    });
    assert!(
        rc.ts.wait_for_arrivals(arrived + 1, DEADLINE).await,
        "a's token request"
    );
    let owner: String = redis::cmd("GET")
        .arg(LOCK)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(owner.starts_with("a/"), "the lock is {owner}");
    // Writes wait in Redis while a gets its answer: a's next command (extending its lock before
    // writing) waits there, and a is paused right then, between its token and its write.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(30_000)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        rc.ts.wait_for_requests(v as usize + 1, DEADLINE).await,
        "the token endpoint answered a"
    );
    // a's commands waiting in Redis (flag `b`): extending its lock, then, should the pause come
    // later than that command's 2 s timeout, its write. The write carries the token set, the
    // extension a few names: `argv-mem` tells them apart.
    let waiting = || async {
        let ports = support::procfs::tcp_ports_to(a.pid(), redis.port());
        client_list(&redis)
            .await
            .into_iter()
            .filter(|c| {
                c["flags"].contains('b')
                    && c["cmd"] == "evalsha"
                    && c["addr"]
                        .rsplit_once(':')
                        .and_then(|(_, p)| p.parse::<u16>().ok())
                        .is_some_and(|p| ports.contains(&p))
            })
            .map(|c| c["argv-mem"].parse::<usize>().unwrap())
            .collect::<Vec<_>>()
    };
    eventually(DEADLINE, "a's command waiting in Redis", || async {
        !waiting().await.is_empty()
    })
    .await;
    support::procfs::signal(a.pid(), "STOP");
    let pending = waiting().await;
    assert!(
        pending.len() == 1 && pending[0] < 400,
        "a was paused after sending its write (argv-mem {pending:?}): this test needs a to stop \
         within 2 s of its token response, the machine is too busy"
    );
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut admin)
        .await
        .unwrap();

    // a's lock expires; b refreshes (the endpoint replays the pair a got, within its grace).
    eventually(Duration::from_secs(20), "a's lock to expire", || async {
        redis::cmd("EXISTS")
            .arg(LOCK)
            .query_async::<i64>(&mut admin.clone())
            .await
            .unwrap()
            == 0
    })
    .await;
    let r = b.post_refresh().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let newer = v + 1;
    assert_eq!(b.token_version().await, newer);
    assert_eq!(
        stored(&redis).await,
        (Some(newer.to_string()), Some("b".into()))
    );

    // a goes on: its write of the same version is fenced off, and it adopts b's set.
    support::procfs::signal(a.pid(), "CONT");
    let r = a_refresh.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let m = a.metrics().await;
    assert_eq!(ops(&m, "write", "fenced"), 1.0, "{m}");
    assert_eq!(ops(&m, "write", "ok"), writes_before, "{m}");
    assert_eq!(
        stored(&redis).await,
        (Some(newer.to_string()), Some("b".into())),
        "the store lost b's set"
    );
    let info = a.token_info().await;
    assert_eq!(info["version"], newer, "{info}");
    assert_eq!(info["shared"]["refreshed_by"], "b", "{info}");
    assert_eq!(upstream_fingerprint(a).await, upstream_fingerprint(b).await);
    assert!(
        a.has_log("the write to the shared store was fenced off by a newer set; using that one")
    );
    assert_eq!(rc.ts.successful_logins(), 1);
    assert_eq!(
        rc.ts.grace_replays(),
        1,
        "b's refresh replayed a's exchange"
    );
    assert!(rc.ts.stale_refresh_token_uses().is_empty());
}

/// Waits until the replicas serve one version, that of the last token request; returns it.
async fn eventually_converged(replicas: &[Sidecar], rc: &support::rc::Rig) -> u64 {
    let v = Cell::new(0);
    eventually(DEADLINE, "the replicas to converge", || async {
        v.set(converged(replicas, rc).await.unwrap_or(0));
        v.get() > 0
    })
    .await;
    v.get()
}
