//! Upstream rate limits against an upstream (and a Redis) that does not play fair: thousands of
//! group names, huge and odd `Retry-After` values, every date format RFC 9110 allows, a `503`
//! without `Retry-After`, blocks forged in Redis, a crowd of requests held at once, and a `429`
//! that names no group. Each property is the contract's (`interface.md`, "Upstream rate limits,
//! shared by every replica") or the issue's bounded-memory requirement.
//!
//! The upstream is a scripted one (keep-alive), recording when each request arrived:
//! - `GET /g/GROUP/...`: 200 naming `GROUP` in `X-Rate-Limit-Group` (`-`: no group);
//! - `GET /r/STATUS/GROUP?ra=VALUE`: `STATUS`, naming `GROUP` (`-`: none), with `Retry-After:
//!   VALUE` when `ra` is given;
//! - anything else: 200 without a group.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::redis::Redis;
use support::scripted::Scripted;
use support::{eventually, Client, Sidecar, SidecarBuilder, DEADLINE, MARKER};
use tokio::io::AsyncWriteExt;

/// What the scripted upstream received: arrival (monotonic and wall) and target.
type Seen = Arc<Mutex<Vec<(Instant, SystemTime, String)>>>;

fn query_value(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn upstream() -> (Scripted, Seen) {
    let seen: Seen = Arc::default();
    let kept = seen.clone();
    let server = Scripted::start(move |mut a| {
        let kept = kept.clone();
        async move {
            while let Some((head, _)) = a.read_request().await {
                let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                kept.lock()
                    .unwrap()
                    .push((Instant::now(), SystemTime::now(), target.clone()));
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                let mut headers = String::new();
                let status = match parts.as_slice() {
                    ["g", group, ..] => {
                        if *group != "-" {
                            headers.push_str(&format!("x-rate-limit-group: {group}\r\n"));
                        }
                        200
                    }
                    ["r", status, group, ..] => {
                        if *group != "-" {
                            headers.push_str(&format!("x-rate-limit-group: {group}\r\n"));
                        }
                        if let Some(ra) = query_value(query, "ra") {
                            headers.push_str(&format!("retry-after: {ra}\r\n"));
                        }
                        status.parse().unwrap_or(500)
                    }
                    _ => 200,
                };
                let resp = format!("HTTP/1.1 {status} X\r\n{headers}content-length: 2\r\n\r\nok");
                if a.stream.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (server, seen)
}

fn arrivals(seen: &Seen, prefix: &str) -> Vec<(Instant, SystemTime, String)> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(_, _, t)| t.starts_with(prefix))
        .cloned()
        .collect()
}

/// A sidecar on `upstream` with a static token, one worker thread.
fn proxy(upstream: &Scripted) -> SidecarBuilder {
    SidecarBuilder::raw()
        .env("TOKEN_SIDECAR_LOG", "info")
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--upstream",
            &upstream.url(""),
            "--grant",
            "static",
            "--static-token",
            MARKER,
        ])
}

/// The blocks `sc` reports on route `default`: (group, until as unix seconds).
async fn blocks(sc: &Sidecar) -> Vec<(String, f64)> {
    let (status, body) = sc.admin_get("/rate-limits").await;
    assert_eq!(status, 200, "{body}");
    let v = support::json(body.as_bytes());
    v["routes"]["default"]["blocks"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|b| {
            (
                b["group"].as_str().unwrap().to_owned(),
                b["until"].as_f64().unwrap(),
            )
        })
        .collect()
}

async fn block_of(sc: &Sidecar, group: &str) -> Option<f64> {
    blocks(sc)
        .await
        .into_iter()
        .find(|(g, _)| g == group)
        .map(|(_, u)| u)
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn retry_after(r: &support::Resp) -> u64 {
    r.header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in seconds: {:?}", r.headers))
}

/// Every value of label `label` among the series of `name`.
fn label_values(metrics: &str, name: &str, label: &str) -> BTreeSet<String> {
    support::metrics::parse(metrics)
        .into_iter()
        .filter(|s| s.name == name)
        .filter_map(|s| s.labels.get(label).cloned())
        .collect()
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The hash of route `default`'s blocks for the profile `default`.
const BLOCKS_KEY: &str = "token-sidecar:{default}:rl:default:blocks";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------------------
// Group names without end
// ---------------------------------------------------------------------------------------------

/// Sends `/r/429/{prefix}{n}?ra={secs}` for every `n` in `names` through `sc`, 16 at a time.
async fn name_groups(sc: &Sidecar, prefix: &str, names: std::ops::Range<usize>, secs: u64) {
    let addr = sc.proxy_addr;
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let prefix = prefix.to_owned();
            let names = names.clone();
            tokio::spawn(async move {
                let client = Client::http1();
                for n in names.skip(t).step_by(16) {
                    let r = client
                        .get(&format!("http://{addr}/r/429/{prefix}{n}?ra={secs}"))
                        .await;
                    assert_eq!(r.status, 429);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// An upstream that names a new group in every 429: three waves of 300 names, each blocked for
/// a second, the next wave once those blocks are over (900 names in all). What the sidecar
/// keeps for them must stay bounded: the blocks it holds, the fields of the shared hash in
/// Redis, and the series of its metrics (each series is memory in the sidecar, and in
/// Prometheus which scrapes it); and it keeps serving other requests.
#[tokio::test]
async fn thousands_of_group_names_keep_blocks_redis_and_metrics_bounded() {
    let (up, _) = upstream().await;
    let redis = Redis::start();
    let sc = proxy(&up).args(["--redis-url", &redis.url()]).start().await;
    let mut most_held = 0;
    for wave in 0..3 {
        name_groups(&sc, "g", wave * 300..(wave + 1) * 300, 1).await;
        most_held = most_held.max(blocks(&sc).await.len());
        eventually(DEADLINE, "the wave's blocks end", || async {
            blocks(&sc).await.is_empty()
        })
        .await;
    }
    assert_eq!(Client::http1().get(&sc.url("/g/other/1")).await.status, 200);
    let mut c = redis_conn(&redis.url()).await;
    let fields: usize = redis::cmd("HLEN")
        .arg(BLOCKS_KEY)
        .query_async(&mut c)
        .await
        .unwrap();
    let m = sc.metrics().await;
    let counted = label_values(&m, "token_sidecar_rate_limited_total", "group").len();
    let gauges = label_values(
        &m,
        "token_sidecar_rate_limit_blocked_until_timestamp_seconds",
        "group",
    )
    .len();
    println!(
        "900 group names: at most {most_held} blocks held at once, {fields} fields in Redis, \
         {counted} groups in token_sidecar_rate_limited_total, {gauges} in the blocked-until \
         gauge, {} bytes of /metrics",
        m.len()
    );
    let bound = 512;
    assert!(most_held <= bound, "{most_held} blocks held");
    assert!(fields <= bound, "{fields} fields in Redis");
    assert!(
        counted <= bound && gauges <= bound,
        "every group name an upstream sends becomes metric series that are never dropped: \
         {counted} group label values in token_sidecar_rate_limited_total, {gauges} in \
         token_sidecar_rate_limit_blocked_until_timestamp_seconds"
    );
}

/// The shared hash of blocks holds at most so many fields, and a field stays after its block
/// ended as long as a longer block keeps the hash alive. Here 300 groups are blocked for a
/// second and one for a minute; once the short blocks are over, a replica holds one block, yet a
/// new `429` of `heavy` on it must still block `heavy` on the other replica (the contract: one
/// replica's 429 blocks the group for every replica).
#[tokio::test]
async fn ended_blocks_in_redis_do_not_keep_a_new_block_from_being_shared() {
    let (up, seen) = upstream().await;
    let redis = Redis::start();
    let a = proxy(&up).args(["--redis-url", &redis.url()]).start().await;
    let b = proxy(&up).args(["--redis-url", &redis.url()]).start().await;
    let client = Client::http1();
    assert_eq!(client.get(&b.url("/g/heavy/1")).await.status, 200);
    assert_eq!(client.get(&a.url("/r/429/long?ra=60")).await.status, 429);
    name_groups(&a, "short", 0..300, 1).await;
    eventually(DEADLINE, "only the long block is left on A", || async {
        blocks(&a).await.len() == 1
    })
    .await;
    assert_eq!(client.get(&a.url("/r/429/heavy?ra=30")).await.status, 429);
    assert!(block_of(&a, "heavy").await.is_some());
    // Pushed within a round trip when shared: three seconds is plenty.
    let mut on_b = false;
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end && !on_b {
        on_b = block_of(&b, "heavy").await.is_some();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = redis_conn(&redis.url()).await;
    let fields: usize = redis::cmd("HLEN")
        .arg(BLOCKS_KEY)
        .query_async(&mut c)
        .await
        .unwrap();
    let r = client.get(&b.url("/g/heavy/2")).await;
    assert!(
        on_b && r.status == 429,
        "A's block of heavy never reached B (B answered {} and sent it upstream: {}); the \
         shared hash holds {fields} fields for 2 blocks in force",
        r.status,
        !arrivals(&seen, "/g/heavy/2").is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// Retry-After: huge, in every date format, unparseable; 503 without it
// ---------------------------------------------------------------------------------------------

/// A `Retry-After` of 10^23 seconds and a date in the year 9999: the sidecar neither overflows
/// nor stops serving; its own `Retry-After` and the block's end stay within a day (the longest
/// wait it honours), and so does the shared entry's time to live in Redis.
#[tokio::test]
async fn a_huge_retry_after_is_bounded_and_the_sidecar_keeps_serving() {
    let (up, _) = upstream().await;
    let redis = Redis::start();
    let mut sc = proxy(&up).args(["--redis-url", &redis.url()]).start().await;
    let client = Client::http1();
    for (group, ra) in [
        ("huge", "100000000000000000000000"),
        ("far", "Fri, 31 Dec 9999 23:59:59 GMT"),
    ] {
        assert_eq!(
            client.get(&sc.url(&format!("/g/{group}/1"))).await.status,
            200
        );
        let ra: String = form_urlencoded::byte_serialize(ra.as_bytes()).collect();
        let r = client
            .get(&sc.url(&format!("/r/429/{group}?ra={ra}")))
            .await;
        assert_eq!(r.status, 429);
        let r = client.get(&sc.url(&format!("/g/{group}/2"))).await;
        r.assert_sidecar_error(429, "rate_limited");
        let secs = retry_after(&r);
        assert!((1..=86_400).contains(&secs), "{group}: Retry-After {secs}");
        let until = block_of(&sc, group).await.unwrap();
        assert!(
            until <= unix(SystemTime::now()) + 86_400.0 + 1.0,
            "{group}: {until}"
        );
    }
    let mut c = redis_conn(&redis.url()).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(BLOCKS_KEY)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        (1..=86_400_000).contains(&pttl),
        "the shared blocks live {pttl} ms"
    );
    assert_eq!(client.get(&sc.url("/g/other/1")).await.status, 200);
    assert!(!sc.has_exited());
    let m = sc.metrics().await;
    let until = support::metrics::value(
        &m,
        "token_sidecar_rate_limit_blocked_until_timestamp_seconds",
        &[("route", "default"), ("group", "huge")],
    )
    .unwrap();
    assert!(until.is_finite() && until <= unix(SystemTime::now()) + 86_401.0);
}

const WEEKDAYS: [(&str, &str); 7] = [
    ("Mon", "Monday"),
    ("Tue", "Tuesday"),
    ("Wed", "Wednesday"),
    ("Thu", "Thursday"),
    ("Fri", "Friday"),
    ("Sat", "Saturday"),
    ("Sun", "Sunday"),
];

/// `at` in RFC 9110's three formats: IMF-fixdate, RFC 850 (two-digit year), asctime.
fn http_dates(at: SystemTime) -> [String; 3] {
    // "Mon, 07 Dec 2026 05:52:43 GMT"
    let imf = httpdate::fmt_http_date(at);
    let p: Vec<&str> = imf.split(' ').collect();
    let (wday, day, mon, year, time) = (p[0].trim_end_matches(','), p[1], p[2], p[3], p[4]);
    let long = WEEKDAYS.iter().find(|(s, _)| *s == wday).unwrap().1;
    let rfc850 = format!("{long}, {day}-{mon}-{} {time} GMT", &year[2..]);
    let day_num: u32 = day.parse().unwrap();
    let asctime = format!("{wday} {mon} {day_num:>2} {time} {year}");
    [imf, rfc850, asctime]
}

/// A 429 whose `Retry-After` is a date, in each of the three formats, blocks its group until
/// that date: answered by the sidecar before it (with `Retry-After` of the seconds left), its
/// block ends at that date, and the group's next request reaches the upstream after it. An
/// unparseable `Retry-After` counts as none: the default wait.
#[tokio::test]
async fn retry_after_dates_in_all_three_formats_block_until_that_date() {
    let (up, seen) = upstream().await;
    let sc = proxy(&up)
        .args(["--rate-limit-default-wait", "40s"])
        .start()
        .await;
    let client = Client::http1();
    let whole = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let date = UNIX_EPOCH + Duration::from_secs(whole + 4);
    let formats = http_dates(date);
    let groups = ["imf", "rfc-eight-fifty", "asctime"];
    for (group, value) in groups.iter().zip(&formats) {
        assert_eq!(
            client.get(&sc.url(&format!("/g/{group}/1"))).await.status,
            200
        );
        let ra: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
        assert_eq!(
            client
                .get(&sc.url(&format!("/r/429/{group}?ra={ra}")))
                .await
                .status,
            429
        );
        let r = client.get(&sc.url(&format!("/g/{group}/2"))).await;
        r.assert_sidecar_error(429, "rate_limited");
        let secs = retry_after(&r);
        assert!(
            (1..=4).contains(&secs),
            "{group} ({value}): Retry-After {secs}"
        );
        let until = block_of(&sc, group)
            .await
            .unwrap_or_else(|| panic!("{group} ({value}) is not blocked"));
        assert!(
            (until - unix(date)).abs() < 0.5,
            "{group} ({value}): the block ends at {until}, the date is {}",
            unix(date)
        );
    }
    // An unparseable Retry-After: the default wait.
    assert_eq!(client.get(&sc.url("/g/odd/1")).await.status, 200);
    assert_eq!(client.get(&sc.url("/r/429/odd?ra=soon")).await.status, 429);
    let r = client.get(&sc.url("/g/odd/2")).await;
    r.assert_sidecar_error(429, "rate_limited");
    assert!((38..=40).contains(&retry_after(&r)), "{:?}", r.headers);
    // After the date, each group flows again, and only then reaches the upstream.
    let left = date
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(left + Duration::from_millis(50)).await;
    for group in groups {
        let r = client.get(&sc.url(&format!("/g/{group}/3"))).await;
        assert_eq!(r.status, 200, "{group}: {}", r.text());
        let got = arrivals(&seen, &format!("/g/{group}/"));
        assert_eq!(got.len(), 2, "{group}: only /1 and /3 went upstream");
        assert!(got[1].1 >= date, "{group}: sent before the date");
    }
}

/// A 503 without `Retry-After` is an outage, not a rate limit: it blocks nothing (with or
/// without a group), the next request goes upstream. With `Retry-After` it blocks.
#[tokio::test]
async fn a_503_without_retry_after_blocks_nothing() {
    let (up, seen) = upstream().await;
    let sc = proxy(&up).start().await;
    let client = Client::http1();
    assert_eq!(client.get(&sc.url("/g/svc/1")).await.status, 200);
    assert_eq!(client.get(&sc.url("/r/503/svc")).await.status, 503);
    assert_eq!(client.get(&sc.url("/r/503/-")).await.status, 503);
    let r = client.get(&sc.url("/g/svc/2")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(client.get(&sc.url("/elsewhere")).await.status, 200);
    assert!(blocks(&sc).await.is_empty());
    assert_eq!(arrivals(&seen, "/g/svc/").len(), 2);
    // With Retry-After: blocked.
    assert_eq!(client.get(&sc.url("/r/503/svc?ra=30")).await.status, 503);
    let r = client.get(&sc.url("/g/svc/3")).await;
    r.assert_sidecar_error(429, "rate_limited");
    assert_eq!(arrivals(&seen, "/g/svc/").len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Blocks forged in Redis
// ---------------------------------------------------------------------------------------------

fn shared_key(dir: &std::path::Path) -> std::path::PathBuf {
    use base64::Engine;
    let key: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let path = dir.join("shared-key");
    std::fs::write(
        &path,
        base64::engine::general_purpose::STANDARD.encode(key) + "\n",
    )
    .unwrap();
    path
}

fn rejected(m: &str, reason: Option<&str>) -> f64 {
    let mut labels = vec![("token", "default")];
    if let Some(r) = reason {
        labels.push(("reason", r));
    }
    support::metrics::sum(m, "token_sidecar_shared_rejected_entries_total", &labels)
}

/// Two replicas sealing with `--shared-key-file`, and a writer of Redis without the key
/// plants a block of `heavy` for a minute, in the hash and on the channel. The replica that is
/// running and one started afterwards both ignore it (Heavy still reaches the upstream) and
/// count it in `token_sidecar_shared_rejected_entries_total`. A real block still reaches the
/// other replica, sealed in Redis.
#[tokio::test]
async fn a_block_forged_in_redis_without_the_seal_is_ignored_and_counted() {
    let (up, seen) = upstream().await;
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let key = shared_key(dir.path());
    let replica = || {
        proxy(&up)
            .args(["--redis-url", &redis.url()])
            .arg("--shared-key-file")
            .arg(&key)
            .start()
    };
    let a = replica().await;
    let b = replica().await;
    let client = Client::http1();
    for sc in [&a, &b] {
        assert_eq!(client.get(&sc.url("/g/heavy/1")).await.status, 200);
        assert_eq!(client.get(&sc.url("/g/light/1")).await.status, 200);
    }
    let mut c = redis_conn(&redis.url()).await;
    let until = (now_ms() + 60_000).to_string();
    let _: () = redis::cmd("HSET")
        .arg(BLOCKS_KEY)
        .arg("heavy")
        .arg(&until)
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("PEXPIRE")
        .arg(BLOCKS_KEY)
        .arg(60_000)
        .query_async(&mut c)
        .await
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(BLOCKS_KEY)
        .arg(format!("heavy\n{until}"))
        .query_async(&mut c)
        .await
        .unwrap();
    eventually(DEADLINE, "B counts the forged block", || async {
        rejected(&b.metrics().await, None) >= 1.0
    })
    .await;
    assert_eq!(client.get(&b.url("/g/heavy/2")).await.status, 200);
    assert!(block_of(&b, "heavy").await.is_none());
    // A replica started now reads the hash, and ignores the entry too.
    let late = replica().await;
    eventually(
        DEADLINE,
        "the late replica counts the forged block",
        || async { rejected(&late.metrics().await, None) >= 1.0 },
    )
    .await;
    assert_eq!(client.get(&late.url("/g/heavy/2")).await.status, 200);
    assert!(block_of(&late, "heavy").await.is_none());
    assert_eq!(arrivals(&seen, "/g/heavy/2").len(), 2);

    // A real block, sealed, still reaches B.
    assert_eq!(client.get(&a.url("/r/429/light?ra=20")).await.status, 429);
    eventually(DEADLINE, "B holds A's block of light", || async {
        block_of(&b, "light").await.is_some()
    })
    .await;
    client
        .get(&b.url("/g/light/2"))
        .await
        .assert_sidecar_error(429, "rate_limited");
    let value: String = redis::cmd("HGET")
        .arg(BLOCKS_KEY)
        .arg("light")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(value.starts_with("tsv2."), "not sealed: {value}");
}

/// The contract's reasons of `token_sidecar_shared_rejected_entries_total`: `unsealed`,
/// `tampered`, `invalid`; the token entries already use them so (tests/trust_shared.rs: a plain
/// entry is `unsealed`). A plain block planted where sealed ones are expected is `unsealed`,
/// not `tampered`: an operator alerting on tampering (someone holding a wrong key, or bytes
/// flipped) must not be told that, and one looking for writers without the key must see them.
#[tokio::test]
async fn a_forged_plain_block_is_counted_as_unsealed() {
    let (up, _) = upstream().await;
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let key = shared_key(dir.path());
    let sc = proxy(&up)
        .args(["--redis-url", &redis.url()])
        .arg("--shared-key-file")
        .arg(&key)
        .start()
        .await;
    let mut c = redis_conn(&redis.url()).await;
    let until = (now_ms() + 60_000).to_string();
    // Published until the replica has subscribed and counted it.
    eventually(DEADLINE, "the forged block is counted", || {
        let mut c = c.clone();
        let until = until.clone();
        let sc = &sc;
        async move {
            let _: i64 = redis::cmd("PUBLISH")
                .arg(BLOCKS_KEY)
                .arg(format!("heavy\n{until}"))
                .query_async(&mut c)
                .await
                .unwrap();
            rejected(&sc.metrics().await, None) >= 1.0
        }
    })
    .await;
    let _: i64 = redis::cmd("DEL")
        .arg(BLOCKS_KEY)
        .query_async(&mut c)
        .await
        .unwrap();
    let m = sc.metrics().await;
    assert!(
        rejected(&m, Some("unsealed")) >= 1.0,
        "a plain block is not counted as unsealed: {:?}",
        m.lines()
            .filter(|l| l.starts_with("token_sidecar_shared_rejected_entries_total"))
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// A crowd held at once
// ---------------------------------------------------------------------------------------------

fn threads_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// `hold`, a group blocked for 3 s, and 1,000 requests of it at once over four h2c connections:
/// all are held (counted `blocked`), the sidecar's memory and threads stay bounded while they
/// wait (under 64 MiB more, i.e. well under 64 KiB a held request, and no thread per request),
/// and once the block is over every one is delivered, none reaching the upstream before the
/// block's end.
#[tokio::test]
async fn a_thousand_requests_held_at_once_stay_bounded_and_are_delivered_after_the_block() {
    let (up, seen) = upstream().await;
    let sc = proxy(&up)
        .args(["--rate-limit-mode", "hold", "--rate-limit-max-wait", "15s"])
        .start()
        .await;
    let pid = sc.pid();
    let h1 = Client::http1();
    assert_eq!(h1.get(&sc.url("/g/heavy/0")).await.status, 200);
    let rss_before = support::procfs::rss_kib(pid).unwrap();
    let threads_before = threads_of(pid);
    assert_eq!(h1.get(&sc.url("/r/429/heavy?ra=4")).await.status, 429);
    let until = block_of(&sc, "heavy").await.unwrap();
    let n = 1000;
    let clients: Vec<Client> = (0..4).map(|_| Client::h2c()).collect();
    let addr = sc.proxy_addr;
    let tasks: Vec<_> = (0..n)
        .map(|k| {
            let client = clients[k % 4].clone();
            tokio::spawn(async move {
                client
                    .get(&format!("http://{addr}/g/heavy/{}", k + 1))
                    .await
                    .status
            })
        })
        .collect();
    let blocked = || async {
        support::metrics::sum(
            &sc.metrics().await,
            "token_sidecar_rate_limited_total",
            &[("group", "heavy"), ("source", "blocked")],
        )
    };
    eventually(DEADLINE, "every request is held", || async {
        blocked().await >= n as f64
    })
    .await;
    let rss_held = support::procfs::rss_kib(pid).unwrap();
    let threads_held = threads_of(pid);
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    println!(
        "{n} held: RSS {rss_before} KiB before, {rss_held} KiB while held; threads \
         {threads_before} -> {threads_held}"
    );
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let got = arrivals(&seen, "/g/heavy/");
    assert_eq!(got.len(), n + 1);
    for (_, wall, target) in &got[1..] {
        assert!(
            unix(*wall) >= until - 0.05,
            "{target} reached the upstream {} s before the block's end",
            until - unix(*wall)
        );
    }
    assert!(
        rss_held.saturating_sub(rss_before) < 64 * 1024,
        "RSS grew by {} KiB for {n} held requests",
        rss_held - rss_before
    );
    assert!(
        threads_held <= threads_before + 4,
        "threads {threads_before} -> {threads_held}"
    );
}

// ---------------------------------------------------------------------------------------------
// A 429 that names no group
// ---------------------------------------------------------------------------------------------

/// A 429 without `X-Rate-Limit-Group` blocks the whole route (group `*`), on every replica:
/// requests of any path, of a known group or none, are answered by the sidecar until the block
/// ends, then reach the upstream again.
#[tokio::test]
async fn a_429_naming_no_group_blocks_the_whole_route_on_every_replica() {
    let (up, seen) = upstream().await;
    let redis = Redis::start();
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(proxy(&up).args(["--redis-url", &redis.url()]).start().await);
    }
    let client = Client::http1();
    assert_eq!(client.get(&fleet[1].url("/g/light/1")).await.status, 200);
    assert_eq!(client.get(&fleet[0].url("/r/429/-?ra=3")).await.status, 429);
    for sc in &fleet {
        eventually(DEADLINE, "the route block everywhere", || async {
            block_of(sc, "*").await.is_some()
        })
        .await;
    }
    let until = block_of(&fleet[0], "*").await.unwrap();
    for (i, path) in [(1, "/g/light/2"), (2, "/never/seen"), (0, "/g/other/1")] {
        let r = client.get(&fleet[i].url(path)).await;
        r.assert_sidecar_error(429, "rate_limited");
        assert!(r.text().contains("`*`"), "{}", r.text());
        assert!(arrivals(&seen, path).is_empty(), "{path} went upstream");
    }
    let m = fleet[1].metrics().await;
    assert_eq!(
        support::metrics::value(
            &m,
            "token_sidecar_rate_limited_total",
            &[("route", "default"), ("group", "*"), ("source", "blocked")]
        ),
        Some(1.0),
        "{m}"
    );
    let left = until - unix(SystemTime::now());
    if left > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(left + 0.05)).await;
    }
    for (i, sc) in fleet.iter().enumerate() {
        let path = format!("/after/{i}");
        assert_eq!(client.get(&sc.url(&path)).await.status, 200);
        let got = arrivals(&seen, &path);
        assert!(unix(got[0].1) >= until - 0.05);
    }
}
