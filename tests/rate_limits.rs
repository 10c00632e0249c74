//! Upstream rate limits through the real binary: a group blocked by the upstream's `429` is
//! answered by the sidecar (`reject`) or waited for (`hold`), other groups keep flowing,
//! configured rates pace their group, and with Redis every replica holds a block one of them
//! learned and counts one rate together. When Redis is away each replica decides on its own
//! and keeps serving.
//!
//! The upstream here is a small scripted API: `GET /g/GROUP/N` answers 200 naming `GROUP` in
//! `X-Rate-Limit-Group`, `GET /block/GROUP?s=N` answers 429 naming it with `Retry-After: N`
//! (`/block/-` names no group). RingCentral's own behaviour is the double's, in
//! `rate_limits_ringcentral.rs`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::redis::Redis;
use support::scripted::Scripted;
use support::{eventually, Client, Sidecar, SidecarBuilder, DEADLINE, MARKER};
use tokio::io::AsyncWriteExt;

/// The scripted API, and the time and path of every request it got.
async fn api() -> (Scripted, Arc<Mutex<Vec<(Instant, String)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let server = Scripted::start(move |mut a| {
        let kept = kept.clone();
        async move {
            let Some((head, _)) = a.read_request().await else {
                return;
            };
            let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
            kept.lock().unwrap().push((Instant::now(), target.clone()));
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let (status, headers) = match parts.as_slice() {
                ["block", group, ..] => {
                    let secs = query.strip_prefix("s=").unwrap_or("2");
                    let mut h = format!("retry-after: {secs}\r\n");
                    if *group != "-" {
                        h.push_str(&format!("x-rate-limit-group: {group}\r\n"));
                    }
                    (429, h)
                }
                ["g", group, ..] => (200, format!("x-rate-limit-group: {group}\r\n")),
                _ => (200, String::new()),
            };
            let resp = format!(
                "HTTP/1.1 {status} X\r\n{headers}content-length: 2\r\nconnection: close\r\n\r\nok"
            );
            let _ = a.stream.write_all(resp.as_bytes()).await;
        }
    })
    .await;
    (server, seen)
}

fn hits(seen: &Arc<Mutex<Vec<(Instant, String)>>>, prefix: &str) -> Vec<Instant> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(_, p)| p.starts_with(prefix))
        .map(|(t, _)| *t)
        .collect()
}

/// The most requests of `times` in any window of `window`.
fn most_in_any_window(times: &[Instant], window: Duration) -> usize {
    let mut t = times.to_vec();
    t.sort();
    (0..t.len())
        .map(|i| t[i..].iter().take_while(|x| **x < t[i] + window).count())
        .max()
        .unwrap_or(0)
}

async fn get(sc: &Sidecar, path: &str) -> support::Resp {
    Client::http1().get(&sc.url(path)).await
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_429_blocks_its_group_on_the_sidecar_and_other_groups_flow() {
    let (up, seen) = api().await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .start()
        .await;
    // The groups are learned from ordinary answers.
    assert_eq!(get(&sc, "/g/heavy/1").await.status, 200);
    assert_eq!(get(&sc, "/g/light/1").await.status, 200);
    // The upstream's 429 is passed to the app as it is, and blocks `heavy`.
    let r = get(&sc, "/block/heavy?s=3").await;
    assert_eq!(r.status, 429);
    assert!(
        r.header("x-token-sidecar-error").is_none(),
        "the upstream's own 429"
    );
    let before = hits(&seen, "/g/heavy").len();
    let r = get(&sc, "/g/heavy/2").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-token-sidecar-error"), Some("rate_limited"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3).contains(&retry), "{retry}");
    assert!(r.text().contains("heavy"), "{}", r.text());
    assert_eq!(hits(&seen, "/g/heavy").len(), before, "not sent upstream");
    // Numbers in the path fold into the same shape.
    assert_eq!(get(&sc, "/g/heavy/77").await.status, 429);
    assert_eq!(get(&sc, "/g/light/2").await.status, 200);
    assert_eq!(get(&sc, "/unnamed").await.status, 200);

    let m = sc.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"token_sidecar_rate_limited_total{group="heavy",route="default",source="upstream"}"#
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"token_sidecar_rate_limited_total{group="heavy",route="default",source="blocked"}"#
        ),
        2.0
    );
    assert!(
        metric(
            &m,
            r#"token_sidecar_rate_limit_blocked_until_timestamp_seconds{group="heavy",route="default"}"#
        ) > 0.0
    );
    let (status, body) = sc.admin_get("/rate-limits").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let blocks = &v["routes"]["default"]["blocks"];
    assert_eq!(blocks[0]["group"], "heavy", "{v}");
    assert_eq!(v["routes"]["default"]["mode"], "reject");

    // When the block ends, the group flows again, and the end is logged.
    sc.wait_for_log("rate limit block ended").await;
    assert_eq!(get(&sc, "/g/heavy/3").await.status, 200);
    assert!(sc.has_log("rate limit block started"));
}

#[tokio::test]
async fn a_429_that_names_no_group_blocks_the_route_and_hold_waits_it_out() {
    let (up, seen) = api().await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .args(["--rate-limit-mode", "hold", "--rate-limit-max-wait", "5s"])
        .start()
        .await;
    assert_eq!(get(&sc, "/block/-?s=1").await.status, 429);
    let blocked_at = Instant::now();
    // Held, then sent once the block is over.
    let r = get(&sc, "/anything").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = hits(&seen, "/anything");
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0] >= blocked_at + Duration::from_millis(900),
        "sent during the block"
    );
    // A block past the maximum wait is answered at once.
    assert_eq!(get(&sc, "/block/-?s=30").await.status, 429);
    let r = get(&sc, "/anything").await;
    assert_eq!(r.header("x-token-sidecar-error"), Some("rate_limited"));
    assert_eq!(hits(&seen, "/anything").len(), 1);
}

#[tokio::test]
async fn off_forwards_everything() {
    let (up, seen) = api().await;
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .args(["--rate-limit-mode", "off"])
        .start()
        .await;
    assert_eq!(get(&sc, "/block/-?s=30").await.status, 429);
    assert_eq!(get(&sc, "/g/x/1").await.status, 200);
    assert_eq!(hits(&seen, "/g/x").len(), 1);
    let (_, body) = sc.admin_get("/rate-limits").await;
    assert!(body.contains(r#""mode":"off""#), "{body}");
}

/// A config file with one route to `upstream` and the rules `limits` (TOML).
fn config_with_limits(
    dir: &tempfile::TempDir,
    upstream: &str,
    extra: &str,
    limits: &str,
) -> std::path::PathBuf {
    let path = dir.path().join("sidecar.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[route]]
name = "api"
listen = "127.0.0.1:0"
upstream = "{upstream}"
{extra}
{limits}

[token.t]
grant = "static"
static_token = "{MARKER}"
"#
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn a_configured_rate_paces_its_group_and_refuses_past_the_maximum_wait() {
    let (up, seen) = api().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_limits(
        &dir,
        &up.url(""),
        r#"rate_limit_max_wait = "10s""#,
        r#"
[[route.limit]]
group = "paced"
match = ["GET /p/**"]
rate = "3/2s"

[[route.limit]]
group = "tight"
match = "GET /t/*"
rate = "1/60s"
"#,
    );
    let sc = SidecarBuilder::bare()
        .arg("--config")
        .arg(&cfg)
        .start()
        .await;
    let client = Client::http1();
    let requests = (0..7).map(|i| {
        let url = sc.url(&format!("/p/{i}"));
        let client = client.clone();
        async move { client.get(&url).await.status }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let times = hits(&seen, "/p/");
    assert_eq!(times.len(), 7);
    assert!(most_in_any_window(&times, Duration::from_secs(2)) <= 3);
    // Unmatched paths are not paced.
    assert_eq!(client.get(&sc.url("/other")).await.status, 200);
    // One a minute: the second waits longer than the maximum wait and is refused.
    assert_eq!(client.get(&sc.url("/t/1")).await.status, 200);
    let r = client.get(&sc.url("/t/2")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-token-sidecar-error"), Some("rate_limited"));
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() > 10);
    let m = sc.metrics().await;
    assert!(
        metric(
            &m,
            r#"token_sidecar_rate_limited_total{group="paced",route="api",source="paced"}"#
        ) >= 4.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"token_sidecar_rate_limited_total{group="tight",route="api",source="paced"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn bad_rules_are_refused_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_limits(
        &dir,
        "http://127.0.0.1:9",
        r#"rate_limit_mode = "sometimes""#,
        r#"
[[route.limit]]
match = ["GET /a"]

[[route.limit]]
group = "x"
match = ["GET /a/**/b", "fetch /a"]
rate = "10"
"#,
    );
    let out = support::sidecar::run_once(
        ["check".as_ref(), "--config".as_ref(), cfg.as_os_str()],
        &[],
    );
    assert_eq!(out.code, Some(64), "{}", out.all());
    for want in [
        "`route[0].rate_limit_mode`: `sometimes` is not reject or hold or off",
        "`route[0].limit[0].group`: required",
        "`route[0].limit[1].match`: `GET /a/**/b`: `**` may only end a pattern",
        "`route[0].limit[1].match`: `fetch /a`",
        "`route[0].limit[1].rate`: `10`: not N/DURATION",
    ] {
        assert!(out.stderr.contains(want), "{want}\n{}", out.stderr);
    }
}

/// Two replicas of one route sharing Redis.
async fn replicas(up: &Scripted, redis: &Redis, extra: &[&str]) -> (Sidecar, Sidecar) {
    let start = || {
        SidecarBuilder::new(&up.url(""))
            .static_token(MARKER)
            .args(["--redis-url", &redis.url()])
            .args(extra.iter().copied())
            .start()
    };
    (start().await, start().await)
}

#[tokio::test]
async fn one_replicas_429_blocks_the_group_on_every_replica() {
    let (up, seen) = api().await;
    let redis = Redis::start();
    let (a, b) = replicas(&up, &redis, &[]).await;
    // Both know the group of the path.
    assert_eq!(get(&a, "/g/heavy/1").await.status, 200);
    assert_eq!(get(&b, "/g/heavy/1").await.status, 200);
    assert_eq!(get(&a, "/block/heavy?s=20").await.status, 429);
    // Pushed to B: its requests of the group stop at the sidecar.
    b.wait_for_log("rate limit block started").await;
    let r = get(&b, "/g/heavy/2").await;
    assert_eq!(r.header("x-token-sidecar-error"), Some("rate_limited"));
    assert_eq!(hits(&seen, "/g/heavy/2").len(), 0);
    assert_eq!(get(&b, "/g/light/1").await.status, 200);
    // A replica started later reads the blocks in force.
    let c = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .args(["--redis-url", &redis.url()])
        .start()
        .await;
    assert_eq!(
        get(&c, "/block/-?s=0").await.status,
        429,
        "learns nothing: Retry-After 0"
    );
    eventually(DEADLINE, "the block on a new replica", || async {
        let (_, body) = c.admin_get("/rate-limits").await;
        body.contains(r#""group":"heavy""#)
    })
    .await;
}

#[tokio::test]
async fn a_shared_rate_is_a_total_across_replicas() {
    let (up, seen) = api().await;
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_limits(
        &dir,
        &up.url(""),
        r#"rate_limit_max_wait = "10s""#,
        r#"
[[route.limit]]
group = "paced"
match = ["/p/**"]
rate = "4/2s"
"#,
    );
    let start = || {
        SidecarBuilder::bare()
            .arg("--config")
            .arg(&cfg)
            .args(["--redis-url", &redis.url()])
            .start()
    };
    let (a, b) = (start().await, start().await);
    let client = Client::http1();
    let requests = (0..10).map(|i| {
        let sc = if i % 2 == 0 { &a } else { &b };
        let url = sc.url(&format!("/p/{i}"));
        let client = client.clone();
        async move { client.get(&url).await.status }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let times = hits(&seen, "/p/");
    assert_eq!(times.len(), 10);
    assert!(
        most_in_any_window(&times, Duration::from_secs(2)) <= 4,
        "more than 4 in 2s across replicas"
    );
}

#[tokio::test]
async fn without_redis_each_replica_limits_on_its_own_and_keeps_serving() {
    let (up, seen) = api().await;
    let mut redis = Redis::start();
    let url = redis.url();
    redis.stop();
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .args(["--redis-url", &url])
        .start()
        .await;
    assert_eq!(get(&sc, "/g/heavy/1").await.status, 200);
    assert_eq!(get(&sc, "/block/heavy?s=20").await.status, 429);
    // The block holds locally.
    assert_eq!(
        get(&sc, "/g/heavy/2").await.header("x-token-sidecar-error"),
        Some("rate_limited")
    );
    assert_eq!(hits(&seen, "/g/heavy/2").len(), 0);
    eventually(DEADLINE, "readiness says limits are local", || async {
        let (status, body) = sc.admin_get("/readyz").await;
        status == 200 && body.contains("Redis is unreachable")
    })
    .await;
    let m = sc.metrics().await;
    assert!(
        m.contains(r#"token_sidecar_rate_limit_shared_up{route="default"} 0"#),
        "{m}"
    );
}
