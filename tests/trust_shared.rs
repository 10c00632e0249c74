//! Hostile tests of the shared store (issue 15, "Trust"), against the real binary, a real
//! `redis-server` and the RingCentral double: whatever another Redis client writes under a
//! profile's key, replicas never storm the token endpoint, never adopt what they cannot trust,
//! and keep serving; sealed entries hide the tokens; the Redis password stays out of `/proc`;
//! 401 storms and manual refreshes are limited for the whole fleet; a refresh token one replica
//! exchanged is never presented by another.
//!
//! New flags that only tune a test (the token request budget) are passed through the
//! environment (`TOKEN_SIDECAR_<NAME>`, which the contract reads too): today's binary ignores
//! them and shows its defect instead of refusing to start.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use support::client::empty;
use support::metrics;
use support::redis::Redis;
use support::trust_tokens::{self as tt, BUDGET_ENV, NEW_KEY, OLD_KEY};
use support::{Client, Resp, Sidecar, SidecarBuilder, Upstream, DEADLINE};
use token_sidecar_testkit::token_server::{
    token_fingerprint, Fault, TokenServerConfig, TOKEN_PREFIX,
};

type Conn = ::redis::aio::MultiplexedConnection;

/// A token server double, its API double and one Redis.
struct Fleet {
    rc: support::rc::Rig,
    redis: Redis,
}

impl Fleet {
    async fn new(cfg: TokenServerConfig) -> Fleet {
        Fleet {
            rc: support::rc::Rig::new(cfg).await,
            redis: Redis::start(),
        }
    }

    /// Replica `n`: JWT grant, in front of the API double, sharing through Redis.
    fn replica(&self, n: usize) -> SidecarBuilder {
        self.rc
            .sidecar()
            .args(["--redis-url", &self.redis.url()])
            .env("TOKEN_SIDECAR_REPLICA", &format!("r{n}"))
    }

    /// Replica `n` in front of `upstream` instead of the API double.
    fn replica_for(&self, n: usize, upstream: &Upstream) -> SidecarBuilder {
        SidecarBuilder::new(&upstream.url(""))
            .args(self.rc.jwt_flags())
            .args(["--redis-url", &self.redis.url()])
            .env("TOKEN_SIDECAR_REPLICA", &format!("r{n}"))
    }

    /// The `profile` today's sidecar writes for the JWT flow of this double.
    fn profile(&self) -> String {
        tt::profile_key(&self.rc.ts.token_url(), "test-client", "jwt_bearer")
    }

    /// The most token requests the double received in any 60-second window.
    fn max_token_requests_per_minute(&self) -> usize {
        let at: Vec<Instant> = self.rc.ts.requests().iter().map(|r| r.at).collect();
        tt::max_in_window(&at, Duration::from_secs(60))
    }
}

fn rejected(m: &str, reason: &str) -> f64 {
    metrics::value(
        m,
        "token_sidecar_shared_rejected_entries_total",
        &[("token", "default"), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

async fn post_refresh(sc: &Sidecar) -> Resp {
    Client::http1()
        .send(
            Request::post(sc.admin_url("/refresh"))
                .body(empty())
                .unwrap(),
        )
        .await
}

async fn api_get(sc: &Sidecar) -> Resp {
    Client::http1()
        .get(&sc.url("/restapi/v1.0/account/~"))
        .await
}

// ---------------------------------------------------------------------------------------------
// Poisoned entries
// ---------------------------------------------------------------------------------------------

/// What the `data` field of a poisoned hash holds.
#[derive(Debug, Clone, Copy)]
enum Data {
    /// A well-formed set (today's format, this configuration's profile) whose access token
    /// expired an hour ago, without a refresh token.
    ExpiredSet,
    /// JSON cut short.
    Malformed,
    /// 4 MB of binary junk.
    Junk,
    /// No `data` field at all.
    Missing,
}

#[derive(Debug, Clone, Copy)]
enum Poison {
    Hash {
        version: &'static str,
        data: Data,
    },
    /// The key is a Redis list, not a hash.
    List,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    poison: Poison,
    /// Whether the entry is malformed (must be counted as `reason="invalid"`).
    malformed: bool,
}

fn cases() -> Vec<Case> {
    let version = |name, version, malformed| Case {
        name,
        poison: Poison::Hash {
            version,
            data: Data::ExpiredSet,
        },
        malformed,
    };
    let data = |name, data, malformed| Case {
        name,
        poison: Poison::Hash { version: "5", data },
        malformed,
    };
    vec![
        version("version 2^53", "9007199254740992", false),
        version("version 2^63-1", "9223372036854775807", false),
        version("version 2^64-1", "18446744073709551615", false),
        version("version -1", "-1", true),
        version("version 1.5", "1.5", true),
        version("version 1e3", "1e3", true),
        version("version abc", "abc", true),
        version("version empty", "", true),
        data("data malformed JSON", Data::Malformed, true),
        data("data 4 MB of junk", Data::Junk, true),
        data("data missing", Data::Missing, true),
        data("data an expired set", Data::ExpiredSet, false),
        Case {
            name: "the key a list",
            poison: Poison::List,
            malformed: true,
        },
    ]
}

/// Writes `poison` under profile `default`'s key, in the new layout and in today's (so that
/// today's binary meets it too), and announces it on both update channels.
async fn plant(c: &mut Conn, poison: Poison, profile: &str) {
    for key in [NEW_KEY, OLD_KEY] {
        let k = key.as_bytes();
        let _: i64 = tt::redis_cmd(c, &[b"DEL", k]).await.unwrap();
        match poison {
            Poison::List => {
                let _: i64 = tt::redis_cmd(c, &[b"RPUSH", k, b"poison", b"list"])
                    .await
                    .unwrap();
            }
            Poison::Hash { version, data } => {
                let value: Option<Vec<u8>> = match data {
                    Data::ExpiredSet => Some(
                        tt::shared_set_json(
                            profile,
                            7,
                            "poison-expired-token",
                            None,
                            tt::unix_now() - 3600,
                        )
                        .into_bytes(),
                    ),
                    Data::Malformed => Some(
                        format!("{{\"state\": {{\"format\": 1, \"profile\": \"{profile}\", \"vers")
                            .into_bytes(),
                    ),
                    Data::Junk => Some(support::pattern(99, 0, 4 * 1024 * 1024)),
                    Data::Missing => None,
                };
                let mut args: Vec<&[u8]> = vec![b"HSET", k, b"version", version.as_bytes()];
                if let Some(v) = &value {
                    args.push(b"data");
                    args.push(v);
                }
                let _: i64 = tt::redis_cmd(c, &args).await.unwrap();
            }
        }
        let channel = format!("{key}:updates");
        let _: i64 = tt::redis_cmd(c, &[b"PUBLISH", channel.as_bytes(), b"0"])
            .await
            .unwrap();
    }
}

/// What a replica must answer during an observation window.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// 200 from the API double, every time.
    Ok,
    /// 200, or the sidecar's own 503 `token_unavailable` (a replica without a token).
    OkOr503,
}

/// Sends a request through every replica every 250 ms for `window`; returns what went wrong:
/// unexpected answers, and logs that grew by 100 lines or more (a loop).
async fn observe(replicas: &[(&str, &Sidecar, Expect)], window: Duration) -> Vec<String> {
    let lines: Vec<usize> = replicas.iter().map(|(_, sc, _)| sc.logs().len()).collect();
    let mut bad: Vec<Vec<String>> = vec![Vec::new(); replicas.len()];
    let end = Instant::now() + window;
    while Instant::now() < end {
        for (i, (_, sc, expect)) in replicas.iter().enumerate() {
            let r = api_get(sc).await;
            let fine = r.status == 200
                || (*expect == Expect::OkOr503
                    && r.status == 503
                    && r.header("x-token-sidecar-error") == Some("token_unavailable"));
            if !fine {
                bad[i].push(format!(
                    "{} {}",
                    r.status,
                    r.text().chars().take(200).collect::<String>()
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut problems = Vec::new();
    for (i, (name, sc, expect)) in replicas.iter().enumerate() {
        if let Some(first) = bad[i].first() {
            problems.push(format!(
                "{name} answered {} requests other than {expect:?} in {window:?}, the first: {first}",
                bad[i].len()
            ));
        }
        let grown = sc.logs().len() - lines[i];
        if grown >= 100 {
            problems.push(format!(
                "{name} logged {grown} lines in {window:?} (a loop); the last ones:\n      {}",
                tt::last_lines(&sc.logs(), 5).join("\n      ")
            ));
        }
    }
    problems
}

/// Runs `f` for every case, three at a time, each with its own doubles and Redis; panics
/// with every case that failed.
async fn run_cases<F, Fut>(what: &str, f: F)
where
    F: Fn(Case) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(3));
    let mut tasks = Vec::new();
    let all = cases();
    for case in all.iter().copied() {
        let fut = f(case);
        let permits = permits.clone();
        tasks.push((
            case.name,
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.unwrap();
                fut.await
            }),
        ));
    }
    let mut failures = Vec::new();
    for (name, task) in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("- {name}:\n   {e}")),
            Err(e) => {
                let p = e.into_panic();
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failures.push(format!(
                    "- {name}: panicked: {}",
                    msg.chars().take(1500).collect::<String>()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{what}: {} of {} poisons broke the fleet:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

/// The budget the poison tests set: sharp, for all replicas together.
const POISON_BUDGET: &str = "3/60s";
const POISON_BUDGET_N: usize = 3;

fn poison_replica(fleet: &Fleet, n: usize) -> SidecarBuilder {
    fleet
        .replica(n)
        .env(BUDGET_ENV, POISON_BUDGET)
        .env("TOKEN_SIDECAR_LOG", "info")
}

fn budget_and_metrics(
    fleet: &Fleet,
    case: Case,
    rejected_invalid: f64,
    problems: &mut Vec<String>,
) {
    let most = fleet.max_token_requests_per_minute();
    if most > POISON_BUDGET_N {
        problems.push(format!(
            "{most} token requests in one minute for the fleet (budget {POISON_BUDGET}); {} in all",
            fleet.rc.ts.request_count()
        ));
    }
    if case.malformed && rejected_invalid <= 0.0 {
        problems.push(
            "token_sidecar_shared_rejected_entries_total{token=\"default\",reason=\"invalid\"} \
             is not above 0 on either replica"
                .to_owned(),
        );
    }
}

/// Attack: before the replicas start, another Redis client (anyone who can write to the Redis)
/// writes profile `default`'s entry: absurd versions (2^53, 2^63-1, 2^64-1, -1, 1.5, 1e3,
/// "abc", empty) over an expired set, malformed or 4 MB `data`, no `data`, or a list instead of a
/// hash. Property: over ~10 s the two replicas send no more token requests than the budget
/// (3/60s for both), serve every request with their own token, count the malformed entries as
/// `reason="invalid"`, do not loop (logs), and a replica restarted with the poison in place
/// does not storm either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_entry_written_before_start_never_causes_a_storm() {
    run_cases("poison before start", |case| async move {
        let fleet = Fleet::new(TokenServerConfig::default()).await;
        let mut c = tt::redis_conn(&fleet.redis.url()).await;
        plant(&mut c, case.poison, &fleet.profile()).await;
        let mut problems = Vec::new();
        let r0 = poison_replica(&fleet, 0).start().await;
        let r1 = poison_replica(&fleet, 1).start().await;
        for (name, sc) in [("r0", &r0), ("r1", &r1)] {
            if let Err(e) = tt::ready_within(sc, DEADLINE).await {
                problems.push(format!("{name} {e}"));
            }
        }
        problems.extend(
            observe(
                &[("r0", &r0, Expect::Ok), ("r1", &r1, Expect::Ok)],
                Duration::from_secs(10),
            )
            .await,
        );
        let mut invalid =
            rejected(&r0.metrics().await, "invalid") + rejected(&r1.metrics().await, "invalid");

        // r1 restarts while the poison is in place again.
        plant(&mut c, case.poison, &fleet.profile()).await;
        drop(r1);
        let r1 = poison_replica(&fleet, 1).start().await;
        problems.extend(
            observe(
                &[
                    ("r0", &r0, Expect::Ok),
                    ("restarted r1", &r1, Expect::OkOr503),
                ],
                Duration::from_secs(5),
            )
            .await,
        );
        invalid +=
            rejected(&r0.metrics().await, "invalid") + rejected(&r1.metrics().await, "invalid");
        budget_and_metrics(&fleet, case, invalid, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n   "))
        }
    })
    .await;
}

/// Attack: the same poisons written while two replicas run, just as their access tokens stop
/// working (the API double expires them), so the next requests are answered 401 and the
/// replicas turn to the shared store. Property: each replica serves again (200) within the
/// deadline and keeps serving, the fleet stays within the budget (3/60s), malformed entries are
/// counted as `reason="invalid"`, and nothing loops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_entry_written_while_replicas_run_never_causes_a_storm() {
    run_cases("poison while running", |case| async move {
        let fleet = Fleet::new(TokenServerConfig::default()).await;
        let r0 = poison_replica(&fleet, 0).start().await;
        let r1 = poison_replica(&fleet, 1).start().await;
        for (name, sc) in [("r0", &r0), ("r1", &r1)] {
            tt::ready_within(sc, DEADLINE)
                .await
                .map_err(|e| format!("before any poison, {name} {e}"))?;
        }
        let mut c = tt::redis_conn(&fleet.redis.url()).await;
        plant(&mut c, case.poison, &fleet.profile()).await;
        fleet.rc.ts.expire_access_tokens();
        let mut problems = Vec::new();
        for (name, sc) in [("r0", &r0), ("r1", &r1)] {
            let end = Instant::now() + DEADLINE;
            loop {
                let r = api_get(sc).await;
                if r.status == 200 {
                    break;
                }
                if Instant::now() >= end {
                    problems.push(format!(
                        "{name} did not serve again within {DEADLINE:?} after its token expired: {} {}",
                        r.status,
                        r.text().chars().take(200).collect::<String>()
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        problems.extend(
            observe(
                &[("r0", &r0, Expect::Ok), ("r1", &r1, Expect::Ok)],
                Duration::from_secs(8),
            )
            .await,
        );
        let invalid = rejected(&r0.metrics().await, "invalid") + rejected(&r1.metrics().await, "invalid");
        budget_and_metrics(&fleet, case, invalid, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n   "))
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Sealing
// ---------------------------------------------------------------------------------------------

/// 32 random bytes, base64, in a 0600 file; returns the file and its base64 text.
fn shared_key(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    use base64::Engine;
    let key: [u8; 32] = rand::random();
    let text = base64::engine::general_purpose::STANDARD.encode(key);
    let path = dir.join("shared.key");
    tt::write_private(&path, format!("{text}\n").as_bytes());
    (path, text)
}

/// Changes one byte of a sealed `data` while keeping its encoding: a character in the middle of
/// its longest run of base64 or hex text is replaced by another of the same alphabet (binary
/// data: one bit of its middle byte flips).
fn flip_one_byte(data: &mut [u8]) {
    let b64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_');
    let (mut best, mut start) = ((0, 0), None);
    for i in 0..=data.len() {
        match (i < data.len() && b64(data[i]), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if i - s > best.1 - best.0 {
                    best = (s, i);
                }
                start = None;
            }
            _ => {}
        }
    }
    let (s, e) = best;
    if e - s < 16 {
        let mid = data.len() / 2;
        data[mid] ^= 0x01;
        return;
    }
    let pos = s + (e - s) / 2;
    let hex = data[s..e].iter().all(u8::is_ascii_hexdigit);
    data[pos] = match (data[pos], hex) {
        (b'9', _) => b'0',
        (b'f', true) => b'a',
        (b'F', true) => b'A',
        (b'z', false) => b'a',
        (b'Z', false) => b'A',
        (b, _) if b.is_ascii_alphanumeric() => b + 1,
        _ => b'A',
    };
}

/// Attack: a reader of Redis (a read-only user, a backup, a replica of the Redis) looks for the
/// tokens; a writer plants a well-formed plain JSON entry with a newer version and
/// `attacker-token`, or flips one byte of a sealed entry. Property: with `--shared-key-file`,
/// no key under the prefix holds a token in clear, the replicas still share one login, the
/// plain entry is rejected as `unsealed` and the modified one as `tampered`, `attacker-token`
/// never reaches the upstream, the next refresh replaces the planted entry, and the key never
/// shows in the logs.
#[tokio::test]
async fn sealed_entries_hide_the_tokens_and_unsealed_or_tampered_ones_are_rejected() {
    let fleet = Fleet::new(TokenServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (key_file, key_text) = shared_key(dir.path());
    let up = Upstream::start().await;
    let sealed = |n| {
        fleet
            .replica_for(n, &up)
            .arg("--shared-key-file")
            .arg(&key_file)
    };
    let r0 = sealed(0).start().await;
    tt::wait_ready(&r0).await;
    let r1 = sealed(1).start().await;
    tt::wait_ready(&r1).await;
    assert_eq!(
        fleet.rc.ts.successful_logins(),
        1,
        "the second replica did not adopt the sealed entry: it logged in again"
    );
    let client = Client::http1();
    for sc in [&r0, &r1] {
        assert_eq!(client.get(&sc.url("/x")).await.status, 200);
    }
    let seen = tt::bearer_tokens(&up);
    let token = seen.last().cloned().unwrap();
    assert!(token.starts_with(TOKEN_PREFIX), "{token}");

    // Nothing under the prefix holds a token in clear.
    let mut c = tt::redis_conn(&fleet.redis.url()).await;
    let keys = tt::keys_matching(&mut c, "token-sidecar*").await;
    assert!(
        keys.iter().any(|k| k == NEW_KEY),
        "no hash {NEW_KEY}; the keys are {keys:?}"
    );
    for k in &keys {
        for v in tt::raw_values(&mut c, k).await {
            assert!(
                !tt::contains(&v, TOKEN_PREFIX.as_bytes()) && !tt::contains(&v, token.as_bytes()),
                "key {k} holds a token in clear: {:?}",
                String::from_utf8_lossy(&v[..v.len().min(300)])
            );
        }
    }

    // One byte of the sealed entry changed; its version moved on by one, as a new write's
    // would, so that no replica can skip it as already known.
    let data: Vec<u8> = tt::redis_cmd(&mut c, &[b"HGET", NEW_KEY.as_bytes(), b"data"])
        .await
        .unwrap();
    let version: String = tt::redis_cmd(&mut c, &[b"HGET", NEW_KEY.as_bytes(), b"version"])
        .await
        .unwrap();
    let bumped = (version.parse::<u64>().unwrap_or(0) + 1).to_string();
    let mut flipped = data.clone();
    flip_one_byte(&mut flipped);
    assert_ne!(flipped, data);
    let _: i64 = tt::redis_cmd(
        &mut c,
        &[
            b"HSET",
            NEW_KEY.as_bytes(),
            b"version",
            bumped.as_bytes(),
            b"data",
            &flipped,
        ],
    )
    .await
    .unwrap();
    let _: i64 = tt::redis_cmd(
        &mut c,
        &[
            b"PUBLISH",
            b"token-sidecar:{default}:updates",
            bumped.as_bytes(),
        ],
    )
    .await
    .unwrap();
    support::eventually(
        DEADLINE,
        "a replica to count the entry as tampered",
        || async {
            rejected(&r0.metrics().await, "tampered") + rejected(&r1.metrics().await, "tampered")
                > 0.0
        },
    )
    .await;
    for sc in [&r0, &r1] {
        assert_eq!(client.get(&sc.url("/x")).await.status, 200);
        assert_eq!(tt::bearer_tokens(&up).last(), Some(&token));
    }

    // A plain entry, today's format, newer version, an attacker's token.
    let version: String = tt::redis_cmd(&mut c, &[b"HGET", NEW_KEY.as_bytes(), b"version"])
        .await
        .unwrap();
    let newer = version.parse::<u64>().unwrap_or(1) + 100;
    let plain = tt::shared_set_json(
        &fleet.profile(),
        newer,
        "attacker-token",
        Some("attacker-refresh-token"),
        tt::unix_now() + 3600,
    );
    let newer = newer.to_string();
    let _: i64 = tt::redis_cmd(
        &mut c,
        &[
            b"HSET",
            NEW_KEY.as_bytes(),
            b"version",
            newer.as_bytes(),
            b"data",
            plain.as_bytes(),
        ],
    )
    .await
    .unwrap();
    let _: i64 = tt::redis_cmd(
        &mut c,
        &[
            b"PUBLISH",
            b"token-sidecar:{default}:updates",
            newer.as_bytes(),
        ],
    )
    .await
    .unwrap();
    support::eventually(
        DEADLINE,
        "a replica to count the entry as unsealed",
        || async {
            rejected(&r0.metrics().await, "unsealed") + rejected(&r1.metrics().await, "unsealed")
                > 0.0
        },
    )
    .await;
    for _ in 0..5 {
        for sc in [&r0, &r1] {
            assert_eq!(client.get(&sc.url("/x")).await.status, 200);
        }
    }
    // The next refresh replaces the planted entry with a sealed one.
    let r = post_refresh(&r1).await;
    assert_eq!(r.status, 200, "{}", r.text());
    support::eventually(DEADLINE, "the planted entry to be replaced", || async {
        let mut c = tt::redis_conn(&fleet.redis.url()).await;
        let vals = tt::raw_values(&mut c, NEW_KEY).await;
        !vals.is_empty() && vals.iter().all(|v| !tt::contains(v, b"attacker-token"))
    })
    .await;
    for sc in [&r0, &r1] {
        assert_eq!(client.get(&sc.url("/x")).await.status, 200);
    }
    let seen = tt::bearer_tokens(&up);
    assert!(
        !seen.iter().any(|t| t == "attacker-token"),
        "the planted plain entry's token reached the upstream"
    );
    for sc in [&r0, &r1] {
        sc.assert_logs_free_of(&key_text);
        sc.assert_logs_free_of(TOKEN_PREFIX);
    }
}

/// Attack: none; an operator's mistake. Property: `check` with `--redis-url` and no
/// `--shared-key-file` warns, naming `--shared-key-file`; with a key (base64 or raw) it does
/// not warn and never prints the key.
#[tokio::test]
async fn check_warns_when_redis_is_used_without_a_shared_key() {
    let rig = support::rc::Rig::new(TokenServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (key_file, key_text) = shared_key(dir.path());
    // Raw bytes, none of them a line break or blank: the file holds one key per line.
    let mut raw_key: [u8; 32] = rand::random();
    for b in raw_key.iter_mut() {
        if b.is_ascii_whitespace() || *b == 0x0b {
            *b = 0xa5;
        }
    }
    let raw_key_file = dir.path().join("raw.key");
    tt::write_private(&raw_key_file, &raw_key);
    let base = {
        let mut a = vec![
            "check".to_owned(),
            "--upstream".into(),
            rig.api.url(),
            "--redis-url".into(),
            "redis://127.0.0.1:6379/0".into(),
        ];
        a.extend(rig.jwt_flags());
        a
    };
    let run = |extra: Vec<String>| {
        let mut args = base.clone();
        args.extend(extra);
        tokio::task::spawn_blocking(move || support::sidecar::run_once(args, &[]))
    };
    let out = run(vec![]).await.unwrap();
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.all().contains("--shared-key-file"),
        "no warning naming --shared-key-file for Redis without a key:\n{}",
        out.all()
    );
    for file in [&key_file, &raw_key_file] {
        let out = run(vec!["--shared-key-file".into(), file.display().to_string()])
            .await
            .unwrap();
        assert_eq!(out.code, Some(0), "{}", out.all());
        let all = out.all();
        for line in all.lines() {
            let l = line.to_lowercase();
            assert!(
                !(l.contains("warn") && (l.contains("shared-key-file") || l.contains("seal"))),
                "a warning although a key is given: {line}"
            );
        }
        assert!(
            !all.contains(&key_text),
            "the key in check's output:\n{all}"
        );
        assert!(
            !tt::contains(all.as_bytes(), &raw_key[..8]),
            "the raw key in check's output"
        );
    }
}

/// Attack: reading another process's command line or environment (`ps`, `/proc`, a crash
/// report) for the Redis password. Property: with `--redis-url-file` the sidecar uses a
/// password-protected Redis, and the password is in neither `/proc/PID/cmdline`, nor
/// `/proc/PID/environ`, nor the logs.
#[tokio::test]
async fn the_redis_password_comes_from_a_file_and_stays_out_of_proc_and_logs() {
    const PASSWORD: &str = "redis-pw-MARKER-51c0e7";
    let redis = tt::PassRedis::start(PASSWORD);
    let rig = support::rc::Rig::new(TokenServerConfig::default()).await;
    let url_file = rig.path("redis-url");
    tt::write_private(&url_file, format!("{}\n", redis.url()).as_bytes());
    let sc = rig
        .sidecar()
        .arg("--redis-url-file")
        .arg(&url_file)
        .start()
        .await;
    tt::wait_ready(&sc).await;
    assert_eq!(api_get(&sc).await.status, 200);
    let mut c = tt::redis_conn(&redis.url()).await;
    support::eventually(DEADLINE, "the token set to be written to Redis", || {
        let mut c = c.clone();
        async move { !tt::keys_matching(&mut c, "token-sidecar*").await.is_empty() }
    })
    .await;
    let keys = tt::keys_matching(&mut c, "token-sidecar*").await;
    assert!(keys.iter().any(|k| k == NEW_KEY), "keys {keys:?}");
    for name in ["cmdline", "environ"] {
        let bytes = std::fs::read(format!("/proc/{}/{name}", sc.pid())).unwrap();
        assert!(
            !tt::contains(&bytes, PASSWORD.as_bytes()),
            "the Redis password is in /proc/PID/{name}"
        );
    }
    sc.assert_logs_free_of(PASSWORD);
}

// ---------------------------------------------------------------------------------------------
// Refresh storms
// ---------------------------------------------------------------------------------------------

/// Attack: an upstream (or a path of it) that answers 401 to everything, behind three replicas
/// under steady traffic. Property: with `--min-refresh-interval 10s`, the 401s cost at most one
/// token request per 10 s for the whole fleet (at most 4 in 30 s), not one per replica; the
/// budget is lifted (100/60s) so that only the interval limits.
#[tokio::test]
async fn a_401_storm_costs_one_refresh_per_interval_for_the_whole_fleet() {
    let fleet = Fleet::new(TokenServerConfig::default()).await;
    let up = Upstream::start().await;
    let mut replicas = Vec::new();
    for n in 0..3 {
        let sc = fleet
            .replica_for(n, &up)
            .args(["--min-refresh-interval", "10s"])
            .env(BUDGET_ENV, "100/60s")
            .env("TOKEN_SIDECAR_LOG", "info")
            .start()
            .await;
        tt::wait_ready(&sc).await;
        replicas.push(sc);
    }
    let before = fleet.rc.ts.request_count();
    let client = Client::http1();
    let end = Instant::now() + Duration::from_secs(30);
    let mut statuses = std::collections::BTreeMap::new();
    while Instant::now() < end {
        for sc in &replicas {
            let r = client.get(&sc.url("/status/401")).await;
            *statuses.entry(r.status).or_insert(0) += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refreshes = fleet.rc.ts.request_count() - before;
    assert!(
        refreshes <= 4,
        "{refreshes} token requests in 30 s of 401s across 3 replicas with \
         --min-refresh-interval 10s (at most 4 for the fleet); answers {statuses:?}"
    );
    assert!(
        refreshes >= 1,
        "no 401-triggered refresh at all in 30 s: the test exercised nothing"
    );
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec![401],
        "the upstream's 401 goes back to the app"
    );
}

/// Attack: a script (or a panicking operator) calling `POST /refresh` in a loop on one
/// replica's admin port. Property: the first call refreshes (at most one token request), the 19
/// that follow within `--min-refresh-interval` (10 s) are answered 429 `rate_limited` with a
/// `Retry-After`, without a token request.
#[tokio::test]
async fn repeated_manual_refreshes_are_answered_429_without_a_token_request() {
    let fleet = Fleet::new(TokenServerConfig::default()).await;
    let r0 = fleet.replica(0).start().await;
    tt::wait_ready(&r0).await;
    let r1 = fleet.replica(1).start().await;
    tt::wait_ready(&r1).await;
    let before = fleet.rc.ts.request_count();
    let first = post_refresh(&r0).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let mut statuses = Vec::new();
    for _ in 0..19 {
        let r = post_refresh(&r0).await;
        statuses.push(r.status);
        if r.status == 429 {
            r.assert_sidecar_error(429, "rate_limited");
            let after: Option<u64> = r.header("retry-after").and_then(|v| v.parse().ok());
            assert!(
                after.is_some_and(|s| (1..=10).contains(&s)),
                "Retry-After {:?}",
                r.header("retry-after")
            );
        }
    }
    let sent = fleet.rc.ts.request_count() - before;
    assert!(
        sent <= 1,
        "20 sequential POST /refresh cost {sent} token requests; answers after the first: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 429),
        "answers after the first: {statuses:?}"
    );
}

/// Attack: many `POST /refresh` at once (a fleet of cron jobs, a retry loop). Property: they
/// share one refresh: one token request, every call answered 200 (the token endpoint answers
/// slowly so that all of them arrive while it is in flight).
#[tokio::test]
async fn concurrent_manual_refreshes_share_one_token_request() {
    let fleet = Fleet::new(TokenServerConfig::default()).await;
    let r0 = fleet.replica(0).start().await;
    tt::wait_ready(&r0).await;
    let r1 = fleet.replica(1).start().await;
    tt::wait_ready(&r1).await;
    let before = fleet.rc.ts.request_count();
    fleet
        .rc
        .ts
        .set_fault(Fault::Slow(Duration::from_secs(2)), Some(1));
    let r0 = Arc::new(r0);
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let sc = r0.clone();
            tokio::spawn(async move { post_refresh(&sc).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap().status);
    }
    let sent = fleet.rc.ts.request_count() - before;
    assert_eq!(
        sent, 1,
        "20 concurrent POST /refresh cost {sent} token requests; answers {statuses:?}"
    );
    assert!(statuses.iter().all(|s| *s == 200), "answers {statuses:?}");
}

// ---------------------------------------------------------------------------------------------
// Spent refresh tokens
// ---------------------------------------------------------------------------------------------

/// Attack: none; a fleet on the `refresh_token` grant, every replica given the same bootstrap
/// refresh token file (one Kubernetes Secret). Replica A exchanges it at start; later replica
/// B's refresh token is refused once (`invalid_grant`). Property: B never falls back to the
/// bootstrap token A already exchanged (the double, with no grace window, records any reuse of
/// an exchanged refresh token).
#[tokio::test]
async fn a_refresh_token_one_replica_exchanged_is_never_presented_by_another() {
    let fleet = Fleet::new(TokenServerConfig {
        grace_unused: Duration::ZERO,
        grace_after_use: Duration::ZERO,
        ..TokenServerConfig::default()
    })
    .await;
    let rc = &fleet.rc;
    // The operator's bootstrap refresh token: one JWT login, kept in a file.
    let boot = rc.path("bootstrap-state.json");
    let out = rc
        .refresh_subcommand(&["--state-file", boot.to_str().unwrap()])
        .await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    let rt0 = support::json(&std::fs::read(&boot).unwrap())["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let rt_file = rc.path("rt");
    tt::write_private(&rt_file, rt0.as_bytes());
    let replica = |n: usize| {
        SidecarBuilder::new(&rc.api.url())
            .args(["--grant", "refresh_token", "--client-id", "test-client"])
            .args(["--token-url", &rc.ts.token_url()])
            .arg("--client-secret-file")
            .arg(rc.path("secret"))
            .arg("--refresh-token-file")
            .arg(&rt_file)
            .args(["--redis-url", &fleet.redis.url()])
            .env("TOKEN_SIDECAR_REPLICA", &format!("r{n}"))
    };
    let a = replica(0).start().await;
    tt::wait_ready(&a).await;
    let b = replica(1).start().await;
    tt::wait_ready(&b).await;
    assert_eq!(
        rc.count("refresh_token", 200),
        1,
        "the bootstrap token is exchanged once, by A; B adopts A's set"
    );
    rc.ts.set_fault(Fault::InvalidGrant, Some(1));
    let r = post_refresh(&b).await;
    let stale = rc.ts.stale_refresh_token_uses();
    let fp0 = token_fingerprint(&rt0);
    assert!(
        !stale.iter().any(|s| s.token_fingerprint == fp0),
        "replica B presented the bootstrap refresh token that A had exchanged \
         (POST /refresh answered {} {}); stale uses {stale:?}",
        r.status,
        r.text()
    );
    assert!(stale.is_empty(), "stale refresh token uses {stale:?}");
    assert_eq!(api_get(&a).await.status, 200);
    for sc in [&a, &b] {
        sc.assert_logs_free_of(&rt0);
    }
}
