//! Upstream rate limits against the RingCentral doubles, from the outside: three replicas
//! (`--threads 1` each) sharing a real Redis, in front of the API double with per-group limits
//! and penalties (`ApiServer::start_with_limits`) and the token double with RingCentral's Auth
//! group, under steady concurrent load from several client tasks.
//!
//! The contract is `interface.md`, "Upstream rate limits, shared by every replica (routes)";
//! issue 18 lists what must be proved. What the double saw is the evidence: which group each
//! request was counted in, whether it arrived during a penalty, and when.
//!
//! Every request a test sends carries `?r=REPLICA&n=SEQUENCE`, so that each answer the app got
//! can be matched with what the double received (or did not).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, Request};
use support::redis::Redis;
use support::{eventually, Client, Sidecar, SidecarBuilder, DEADLINE};
use token_sidecar_testkit::api::{group_of, ApiLimits, ApiRequestRecord, ApiServer, Group};
use token_sidecar_testkit::token_server::{
    RateLimit, TokenServer, TokenServerConfig, DEV_ASSERTION,
};

/// A Heavy endpoint (RingCentral's API reference, and the double's table).
const HEAVY: &str = "/restapi/v1.0/account/~/extension/~/call-log";
/// Another Heavy endpoint.
const HEAVY_2: &str = "/restapi/v1.0/account/~/extension/~/active-calls";
/// A Light endpoint.
const LIGHT: &str = "/restapi/v1.0/account/~/extension/~";
/// A Medium endpoint (POST).
const MEDIUM_POST: &str = "/restapi/v1.0/account/~/extension/~/sms";

/// The route's name in every configuration written here.
const ROUTE: &str = "rc";

// ---------------------------------------------------------------------------------------------
// The rig: the doubles, Redis, configurations, replicas
// ---------------------------------------------------------------------------------------------

/// The API double's limits: Heavy as given, the other API groups out of reach (so that only
/// Heavy is ever limited), and `penalty`.
fn heavy_limited(heavy: u32, window: Duration, penalty: Duration) -> ApiLimits {
    let plenty = (100_000, Duration::from_secs(60));
    ApiLimits {
        light: plenty,
        medium: plenty,
        heavy: (heavy, window),
        auth: (5, Duration::from_secs(60)),
        penalty,
    }
}

/// RingCentral's token endpoint: the Auth group (5 a minute, 60 s penalty), 5 sessions.
fn rc_token_server() -> TokenServerConfig {
    TokenServerConfig {
        rate_limit: Some(RateLimit::default()),
        session_cap: Some(5),
        ..TokenServerConfig::default()
    }
}

struct Rc {
    ts: TokenServer,
    api: ApiServer,
    redis: Redis,
    dir: tempfile::TempDir,
    configs: AtomicUsize,
}

impl Rc {
    async fn start(limits: ApiLimits, ts: TokenServerConfig) -> Rc {
        let ts = TokenServer::start(ts).await.unwrap();
        let api = ApiServer::start_with_limits(&ts, Some(limits))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "test-secret\n").unwrap();
        std::fs::write(dir.path().join("jwt"), DEV_ASSERTION).unwrap();
        Rc {
            ts,
            api,
            redis: Redis::start(),
            dir,
            configs: AtomicUsize::new(0),
        }
    }

    /// A configuration file: one route `rc` to the API double with `route_extra` keys and the
    /// `[[route.limit]]` blocks `rules`, and the token profile `rc` (JWT flow, RingCentral's).
    fn config(&self, route_extra: &str, rules: &str) -> PathBuf {
        let n = self.configs.fetch_add(1, Ordering::SeqCst);
        let path = self.dir.path().join(format!("sidecar-{n}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"
[admin]
listen = "127.0.0.1:0"

[[route]]
name = "{ROUTE}"
listen = "127.0.0.1:0"
upstream = "{api}"
token = "rc"
{route_extra}

{rules}

[token.rc]
grant = "jwt_bearer"
token_url = "{token_url}"
client_id = "test-client"
client_secret_file = "{dir}/secret"
assertion_file = "{dir}/jwt"
"#,
                api = self.api.url(),
                token_url = self.ts.token_url(),
                dir = self.dir.path().display(),
            ),
        )
        .unwrap();
        path
    }

    /// A replica of `cfg` sharing this rig's Redis, one worker thread.
    fn replica(&self, cfg: &Path, n: usize, extra: &[&str]) -> SidecarBuilder {
        SidecarBuilder::raw()
            .env("TOKEN_SIDECAR_LOG", "info")
            .env("TOKEN_SIDECAR_REPLICA", &format!("r{n}"))
            .arg("run")
            .arg("--config")
            .arg(cfg)
            .args(["--threads", "1", "--redis-url", &self.redis.url()])
            .args(extra)
    }

    /// `n` replicas of `cfg`, each holding a token.
    async fn fleet(&self, n: usize, cfg: &Path, extra: &[&str]) -> Vec<Sidecar> {
        let mut out = Vec::new();
        for i in 0..n {
            out.push(self.replica(cfg, i, extra).start().await);
        }
        for sc in &out {
            sc.wait_ready().await;
        }
        out
    }

    /// The double's record of the request tagged `n`.
    fn record(&self, n: u64) -> Option<ApiRequestRecord> {
        self.api
            .requests()
            .into_iter()
            .find(|r| tag_of(r) == Some(n))
    }

    fn heavy_records(&self) -> Vec<ApiRequestRecord> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| r.group == "heavy")
            .collect()
    }
}

/// The `n=` tag of a request the double received.
fn tag_of(r: &ApiRequestRecord) -> Option<u64> {
    form_urlencoded::parse(r.query.as_deref()?.as_bytes())
        .find(|(k, _)| k == "n")
        .and_then(|(_, v)| v.parse().ok())
}

/// The `r=` tag (the replica) of a request the double received.
fn replica_of(r: &ApiRequestRecord) -> Option<usize> {
    form_urlencoded::parse(r.query.as_deref()?.as_bytes())
        .find(|(k, _)| k == "r")
        .and_then(|(_, v)| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Requests and what the app got
// ---------------------------------------------------------------------------------------------

static SEQ: AtomicU64 = AtomicU64::new(1);

/// What one request of the app got.
#[derive(Debug, Clone)]
struct Outcome {
    replica: usize,
    path: &'static str,
    n: u64,
    /// 0: no HTTP answer at all.
    status: u16,
    sidecar_error: Option<String>,
    retry_after: Option<String>,
    body: String,
}

impl Outcome {
    /// The sidecar's own `429 rate_limited`.
    fn sidecar_limited(&self) -> bool {
        self.status == 429 && self.sidecar_error.as_deref() == Some("rate_limited")
    }

    /// The upstream's 429, passed through.
    fn upstream_limited(&self) -> bool {
        self.status == 429 && self.sidecar_error.is_none() && self.body.contains("CMN-301")
    }
}

async fn get(sc: &Sidecar, replica: usize, path: &'static str) -> Outcome {
    send(&Client::http1(), sc.proxy_addr, replica, Method::GET, path).await
}

type Log = Arc<Mutex<Vec<Outcome>>>;

/// When a load task stops on its own: given what it got so far.
type StopWhen = Arc<dyn Fn(&[Outcome]) -> bool + Send + Sync>;

/// A client task that sends `method path` through `sc` every `gap` until `stop` (or its own
/// `stop_when`), recording every outcome in `log`.
#[allow(clippy::too_many_arguments)]
fn load(
    sc: &Sidecar,
    replica: usize,
    method: Method,
    path: &'static str,
    gap: Duration,
    stop: Arc<AtomicBool>,
    stop_when: Option<StopWhen>,
    log: Log,
) -> tokio::task::JoinHandle<()> {
    let proxy = sc.proxy_addr;
    tokio::spawn(async move {
        let client = Client::http1();
        let mut mine = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let o = send(&client, proxy, replica, method.clone(), path).await;
            log.lock().unwrap().push(o.clone());
            mine.push(o);
            if stop_when.as_ref().is_some_and(|f| f(&mine)) {
                break;
            }
            tokio::time::sleep(gap).await;
        }
    })
}

/// Sends `method path?r=replica&n=SEQ` to the proxy at `addr`; a connection error is status 0.
async fn send(
    client: &Client,
    addr: std::net::SocketAddr,
    replica: usize,
    method: Method,
    path: &'static str,
) -> Outcome {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let url = format!("http://{addr}{path}?r={replica}&n={n}");
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(support::client::empty())
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        let resp = client.try_send(req).await?;
        let (parts, body) = resp.into_parts();
        let body = http_body_util::BodyExt::collect(body).await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts, body))
    })
    .await;
    let (status, sidecar_error, retry_after, body) = match answer {
        Ok(Ok((parts, body))) => {
            let h = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            (
                parts.status.as_u16(),
                h("x-token-sidecar-error"),
                h("retry-after"),
                String::from_utf8_lossy(&body).into_owned(),
            )
        }
        Ok(Err(e)) => (0, None, None, format!("{e:?}")),
        Err(_) => (0, None, None, "no answer within 30 s".into()),
    };
    Outcome {
        replica,
        path,
        n,
        status,
        sidecar_error,
        retry_after,
        body,
    }
}

async fn join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        t.await.unwrap();
    }
}

/// The blocks `sc` reports on route `rc`: group → when it ends (unix seconds).
async fn blocks(sc: &Sidecar) -> BTreeMap<String, f64> {
    let (status, body) = sc.admin_get("/rate-limits").await;
    assert_eq!(status, 200, "/rate-limits: {body}");
    let v = support::json(body.as_bytes());
    v["routes"][ROUTE]["blocks"]
        .as_array()
        .unwrap_or_else(|| panic!("no blocks list in {v}"))
        .iter()
        .map(|b| {
            (
                b["group"].as_str().unwrap().to_owned(),
                b["until"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits until every replica reports a block of `group`.
async fn wait_block_everywhere(fleet: &[Sidecar], group: &str) {
    for (i, sc) in fleet.iter().enumerate() {
        eventually(
            DEADLINE,
            &format!("replica {i} holds a block of {group}"),
            || async { blocks(sc).await.contains_key(group) },
        )
        .await;
    }
}

/// The most of `times` in any window of `window`.
fn most_in_any_window(times: &[Instant], window: Duration) -> usize {
    let mut t = times.to_vec();
    t.sort();
    (0..t.len())
        .map(|i| t[i..].iter().take_while(|x| **x < t[i] + window).count())
        .max()
        .unwrap_or(0)
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    support::metrics::sum(text, name, labels)
}

/// The penalty of Heavy the double imposed, from its records: when it started (the request over
/// the limit) and when it ended (`penalty` after the last 429, since each restarts it).
fn heavy_penalty(rc: &Rc, penalty: Duration) -> (Instant, Instant) {
    let heavy = rc.heavy_records();
    let start = heavy
        .iter()
        .find(|r| r.status == 429 && !r.in_penalty)
        .expect("a penalty started")
        .at;
    let last = heavy
        .iter()
        .filter(|r| r.status == 429)
        .map(|r| r.at)
        .max()
        .unwrap();
    (start, last + penalty)
}

/// What the double saw of Heavy during its penalty, for failure messages.
fn penalty_arrivals(rc: &Rc, start: Instant) -> Vec<String> {
    rc.heavy_records()
        .iter()
        .filter(|r| r.in_penalty)
        .map(|r| {
            format!(
                "replica {:?} {} {} ms after the penalty started",
                replica_of(r),
                r.path,
                r.at.saturating_duration_since(start).as_millis()
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. One replica's 429 stops every replica's Heavy requests for the penalty
// ---------------------------------------------------------------------------------------------

/// Three replicas under steady load of Heavy and Light (one task of each per replica). The
/// double limits Heavy to 8 a minute with a 4 s penalty. The first replica to get the double's
/// 429 blocks Heavy on all three: at most one request reaches the double during the penalty
/// (one already in flight), every replica answers Heavy itself (`429 rate_limited`, not sent),
/// Light keeps getting 200 through every replica throughout, and once the penalty is over each
/// replica's Heavy requests flow again without starting another penalty.
#[tokio::test]
async fn one_replicas_429_stops_heavy_on_every_replica_and_light_keeps_flowing() {
    let penalty = Duration::from_secs(4);
    let rc = Rc::start(
        heavy_limited(8, Duration::from_secs(60), penalty),
        rc_token_server(),
    )
    .await;
    let cfg = rc.config("", "");
    let fleet = rc.fleet(3, &cfg, &[]).await;
    // Each replica learns the groups of both endpoints from the double's answers.
    for (i, sc) in fleet.iter().enumerate() {
        assert_eq!(get(sc, i, LIGHT).await.status, 200);
        assert_eq!(get(sc, i, HEAVY).await.status, 200);
    }

    let log: Log = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut light = Vec::new();
    let mut heavy = Vec::new();
    // A Heavy task stops once it got a 200 after having been refused by its sidecar: its
    // replica let Heavy flow again after the block.
    let flowing_again: StopWhen = Arc::new(|mine: &[Outcome]| {
        mine.iter().any(Outcome::sidecar_limited) && mine.last().is_some_and(|o| o.status == 200)
    });
    for (i, sc) in fleet.iter().enumerate() {
        light.push(load(
            sc,
            i,
            Method::GET,
            LIGHT,
            Duration::from_millis(25),
            stop.clone(),
            None,
            log.clone(),
        ));
        heavy.push(load(
            sc,
            i,
            Method::GET,
            HEAVY,
            Duration::from_millis(120),
            stop.clone(),
            Some(flowing_again.clone()),
            log.clone(),
        ));
    }
    // Every Heavy task ends by itself: after the block, its replica forwards again.
    let all_heavy_done = tokio::time::timeout(DEADLINE + penalty, join(heavy)).await;
    stop.store(true, Ordering::Relaxed);
    join(light).await;
    let outcomes = log.lock().unwrap().clone();
    assert!(
        all_heavy_done.is_ok(),
        "some replica's Heavy requests never flowed again after being refused; outcomes: {:?}",
        outcomes
            .iter()
            .filter(|o| o.path == HEAVY)
            .map(|o| (o.replica, o.status))
            .collect::<Vec<_>>()
    );

    assert_eq!(
        rc.api.penalties_started(Group::Heavy),
        1,
        "exactly one penalty: Heavy flowed again after it without starting another"
    );
    let (start, end) = heavy_penalty(&rc, penalty);
    assert!(
        rc.api.arrived_during_penalty(Group::Heavy) <= 1,
        "Heavy requests reached the double during its penalty: {:?}",
        penalty_arrivals(&rc, start)
    );

    // Every replica answered Heavy itself during the block, with the contract's answer, and
    // none of those requests went upstream.
    for i in 0..fleet.len() {
        let refused: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.replica == i && o.path == HEAVY && o.sidecar_limited())
            .collect();
        assert!(!refused.is_empty(), "replica {i} never refused Heavy");
        for o in &refused {
            let secs: u64 = o
                .retry_after
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("Retry-After of the sidecar's 429: {o:?}"));
            assert!((1..=penalty.as_secs()).contains(&secs), "{o:?}");
            assert!(rc.record(o.n).is_none(), "refused but sent upstream: {o:?}");
        }
        let v = support::json(refused[0].body.as_bytes());
        assert_eq!(v["error"], "rate_limited", "{v}");
    }
    // Nothing else went wrong for Heavy: 200s, the sidecar's 429s, and the double's 429 that
    // started the penalty (plus at most the one in flight).
    let upstream_429 = outcomes
        .iter()
        .filter(|o| o.path == HEAVY && o.upstream_limited())
        .count();
    assert!(
        (1..=2).contains(&upstream_429),
        "{upstream_429} of the double's 429s reached the app"
    );
    for o in outcomes.iter().filter(|o| o.path == HEAVY) {
        assert!(
            o.status == 200 || o.sidecar_limited() || o.upstream_limited(),
            "{o:?}"
        );
    }
    // The last Heavy request of each replica (the one that flowed again) reached the double
    // after the penalty was over, and was answered 200.
    for i in 0..fleet.len() {
        let last = outcomes
            .iter()
            .rfind(|o| o.replica == i && o.path == HEAVY)
            .unwrap();
        assert_eq!(last.status, 200, "{last:?}");
        let rec = rc.record(last.n).expect("the double got it");
        assert!(
            rec.at >= end,
            "replica {i} sent Heavy before the penalty ended"
        );
    }

    // Light: every request answered 200, and every replica's Light requests reached the double
    // during the penalty.
    let light_out: Vec<&Outcome> = outcomes.iter().filter(|o| o.path == LIGHT).collect();
    assert!(
        light_out.iter().all(|o| o.status == 200),
        "Light failed: {:?}",
        light_out
            .iter()
            .filter(|o| o.status != 200)
            .collect::<Vec<_>>()
    );
    let during: Vec<usize> = rc
        .api
        .requests()
        .iter()
        .filter(|r| r.group == "light" && r.at > start && r.at < end)
        .filter_map(replica_of)
        .collect();
    for i in 0..fleet.len() {
        assert!(
            during.contains(&i),
            "replica {i} sent no Light request during the penalty"
        );
    }

    // The metrics: the replica that got the double's 429 counts it as `upstream`, every
    // replica counts its refusals as `blocked` and exposes when the block ends.
    let mut upstream_seen = 0.0;
    for (i, sc) in fleet.iter().enumerate() {
        let m = sc.metrics().await;
        let labels = [("route", ROUTE), ("group", "heavy")];
        upstream_seen += metric(
            &m,
            "token_sidecar_rate_limited_total",
            &[labels[0], labels[1], ("source", "upstream")],
        );
        assert!(
            metric(
                &m,
                "token_sidecar_rate_limited_total",
                &[labels[0], labels[1], ("source", "blocked")]
            ) >= 1.0,
            "replica {i}: {m}"
        );
        assert!(
            metric(
                &m,
                "token_sidecar_rate_limit_blocked_until_timestamp_seconds",
                &labels
            ) > 0.0,
            "replica {i}"
        );
    }
    assert!(upstream_seen >= 1.0);
}

/// The double restarts a penalty on every request that arrives during it, and answers that
/// request with a fresh `Retry-After`. When such a 429 reaches another replica later (here: a
/// Heavy endpoint that replica had never called, so it could not know its group), the block it
/// starts is later than the first one, and per the contract it binds every replica until its
/// own `Retry-After`. The replica whose block was first must not let Heavy through between the
/// end of its own block and the end of the later one.
#[tokio::test]
async fn a_later_429_from_another_replica_extends_the_block_on_every_replica() {
    let penalty = Duration::from_secs(4);
    let rc = Rc::start(
        heavy_limited(2, Duration::from_secs(60), penalty),
        rc_token_server(),
    )
    .await;
    let cfg = rc.config("", "");
    let fleet = rc.fleet(2, &cfg, &[]).await;
    let (a, b) = (&fleet[0], &fleet[1]);
    // A learns HEAVY's group and spends the Heavy limit; its third request starts the penalty.
    assert_eq!(get(a, 0, HEAVY).await.status, 200);
    assert_eq!(get(a, 0, HEAVY).await.status, 200);
    assert!(get(a, 0, HEAVY).await.upstream_limited());
    wait_block_everywhere(&fleet, "heavy").await;
    let first_until = blocks(a).await["heavy"];
    // 700 ms later B calls a Heavy endpoint of a shape it has never seen: it cannot know its
    // group, so it goes upstream, arrives during the penalty (restarting it) and gets a 429
    // with Retry-After: 4.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let o = get(b, 1, HEAVY_2).await;
    assert!(o.upstream_limited(), "{o:?}");
    let later_until = blocks(b).await["heavy"];
    assert!(
        later_until > first_until + 0.5,
        "B's block ({later_until}) ends later than A's first one ({first_until})"
    );
    // Wait until A's first block is over, while B's is still in force.
    let wait = first_until + 0.15 - unix_now();
    if wait > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
    assert!(unix_now() < later_until - 0.2, "the test was too slow");
    let a_view = blocks(a).await;
    // A request of Heavy through A now: the double is still in its penalty.
    let o = get(a, 0, HEAVY).await;
    assert!(
        o.sidecar_limited(),
        "A forwarded Heavy while B's later block (until {later_until}) was in force; A's blocks \
         then: {a_view:?}; A's first block ended at {first_until}; answer: {} {}; the double's \
         penalty arrivals: {:?}",
        o.status,
        o.body,
        penalty_arrivals(&rc, heavy_penalty(&rc, penalty).0)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. hold: within the maximum wait, delivered after the penalty; past it, refused
// ---------------------------------------------------------------------------------------------

/// `--rate-limit-mode hold` with a maximum wait of 3 s and a 5 s penalty: right after the
/// double's 429, the block ends too late, so every replica answers `429 rate_limited` at once
/// without going upstream; once the block ends within 3 s, requests through every replica are
/// held and delivered after the penalty (200, none arriving during it).
#[tokio::test]
async fn hold_delivers_after_the_penalty_within_the_maximum_wait_and_refuses_past_it() {
    let penalty = Duration::from_secs(5);
    let rc = Rc::start(
        heavy_limited(3, Duration::from_secs(60), penalty),
        rc_token_server(),
    )
    .await;
    let cfg = rc.config(
        r#"rate_limit_mode = "hold"
rate_limit_max_wait = "3s""#,
        "",
    );
    let fleet = rc.fleet(3, &cfg, &[]).await;
    for (i, sc) in fleet.iter().enumerate() {
        assert_eq!(get(sc, i, HEAVY).await.status, 200);
    }
    // The fourth Heavy request starts the penalty.
    let o = get(&fleet[0], 0, HEAVY).await;
    assert!(o.upstream_limited(), "{o:?}");
    wait_block_everywhere(&fleet, "heavy").await;

    // The block ends in about 5 s, past the 3 s maximum wait: refused at once, not sent.
    for (i, sc) in fleet.iter().enumerate() {
        let o = get(sc, i, HEAVY).await;
        assert!(o.sidecar_limited(), "replica {i}: {o:?}");
        let secs: u64 = o.retry_after.as_deref().unwrap().parse().unwrap();
        assert!(secs >= 3, "Retry-After {secs}");
        assert!(rc.record(o.n).is_none(), "sent upstream: {o:?}");
    }

    // Within 3 s of the block's end: held, then delivered.
    let until = blocks(&fleet[0]).await["heavy"];
    let wait = until - 2.0 - unix_now();
    if wait > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
    let held = futures_util::future::join_all(
        fleet
            .iter()
            .enumerate()
            .map(|(i, sc)| async move { get(sc, i, HEAVY).await }),
    )
    .await;
    let (_, end) = heavy_penalty(&rc, penalty);
    for o in &held {
        assert_eq!(o.status, 200, "{o:?}");
        let rec = rc.record(o.n).unwrap();
        assert!(!rec.in_penalty);
        assert!(rec.at >= end, "delivered before the penalty ended");
    }
    assert_eq!(rc.api.arrived_during_penalty(Group::Heavy), 0);
    assert_eq!(rc.api.penalties_started(Group::Heavy), 1);
    for sc in &fleet {
        let m = sc.metrics().await;
        assert!(
            metric(
                &m,
                "token_sidecar_rate_limited_total",
                &[("route", ROUTE), ("group", "heavy"), ("source", "blocked")]
            ) >= 2.0,
            "{m}"
        );
    }
}

/// `hold` with more requests held than the double's fresh window allows: when the block ends,
/// the held requests are released. Without a configured `rate` the sidecar cannot know the
/// limit, but the release must not start a penalty storm: on each replica the held requests
/// leave one at a time, so that the next penalty's first 429 stops them; across replicas, at
/// most one per other replica may already be on its way (docs/rate-limits.md).
#[tokio::test]
async fn held_requests_released_together_do_not_run_into_a_new_penalty() {
    let penalty = Duration::from_secs(3);
    let rc = Rc::start(
        heavy_limited(3, Duration::from_secs(60), penalty),
        rc_token_server(),
    )
    .await;
    let cfg = rc.config(
        r#"rate_limit_mode = "hold"
rate_limit_max_wait = "10s""#,
        "",
    );
    let fleet = rc.fleet(3, &cfg, &[]).await;
    for (i, sc) in fleet.iter().enumerate() {
        assert_eq!(get(sc, i, HEAVY).await.status, 200);
    }
    assert!(get(&fleet[0], 0, HEAVY).await.upstream_limited());
    wait_block_everywhere(&fleet, "heavy").await;
    // Two requests held on each replica: six, twice the fresh window.
    let held = futures_util::future::join_all((0..6).map(|k| {
        let i = k % 3;
        let sc = &fleet[i];
        async move { get(sc, i, HEAVY).await }
    }))
    .await;
    let statuses: Vec<u16> = held.iter().map(|o| o.status).collect();
    // Each replica releases its held requests one at a time, each after the previous one's
    // answer, and a new block reaches the others within a round trip: at most one request per
    // other replica can be on its way when the first 429 of the next penalty comes back.
    assert!(
        rc.api.arrived_during_penalty(Group::Heavy) < fleet.len(),
        "held requests released together ran into the double's next penalty: statuses {statuses:?}, \
         penalties started {}, arrivals during a penalty {}",
        rc.api.penalties_started(Group::Heavy),
        rc.api.arrived_during_penalty(Group::Heavy)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Configured rates: a total across replicas that never meets the double's 429
// ---------------------------------------------------------------------------------------------

/// The rule file's approach: a `[[route.limit]]` for Heavy whose `rate` is the double's Heavy
/// limit (4 per 3 s, sliding). Six client tasks (two per replica) send Heavy as fast as they get
/// answers for about 8 s: the double never answers Heavy 429, never sees more than 4 in any
/// 3 s window, and every request gets a 200 or, when the wait would pass the 4 s maximum, the
/// sidecar's `429 rate_limited` (both counted and printed).
#[tokio::test]
async fn a_configured_rate_equal_to_the_doubles_limit_never_meets_its_429() {
    let window = Duration::from_secs(3);
    let rc = Rc::start(heavy_limited(4, window, window), rc_token_server()).await;
    let cfg = rc.config(
        r#"rate_limit_max_wait = "4s""#,
        r#"
[[route.limit]]
group = "heavy"
match = ["GET /restapi/v1.0/account/*/extension/*/call-log"]
rate = "4/3s"
"#,
    );
    let fleet = rc.fleet(3, &cfg, &[]).await;
    let log: Log = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        for (i, sc) in fleet.iter().enumerate() {
            tasks.push(load(
                sc,
                i,
                Method::GET,
                HEAVY,
                Duration::from_millis(10),
                stop.clone(),
                None,
                log.clone(),
            ));
        }
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    join(tasks).await;
    let outcomes = log.lock().unwrap().clone();
    let ok = outcomes.iter().filter(|o| o.status == 200).count();
    let refused = outcomes.iter().filter(|o| o.sidecar_limited()).count();
    println!(
        "configured rate 4/3s over 3 replicas: {ok} delivered (200), {refused} refused by the \
         sidecar (429 rate_limited, the wait would have passed 4 s), {} requests in all",
        outcomes.len()
    );
    let other: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.status != 200 && !o.sidecar_limited())
        .collect();
    assert!(other.is_empty(), "other answers: {other:?}");
    assert_eq!(
        rc.api.rate_limited(Group::Heavy),
        0,
        "the double answered Heavy 429"
    );
    let arrivals: Vec<Instant> = rc.heavy_records().iter().map(|r| r.at).collect();
    assert_eq!(arrivals.len(), ok);
    assert!(most_in_any_window(&arrivals, window) <= 4);
    // The load was over the rate (so the rate was what kept it under the limit), and the
    // replicas together were paced, not each on its own: 3 replicas pacing alone would let 12
    // through in a window.
    assert!(ok >= 8, "{ok} delivered");
    assert!(refused + ok > 12, "the load never exceeded the rate");
    for o in outcomes.iter().filter(|o| o.sidecar_limited()) {
        assert!(rc.record(o.n).is_none());
    }
    let mut paced = 0.0;
    for sc in &fleet {
        paced += metric(
            &sc.metrics().await,
            "token_sidecar_rate_limited_total",
            &[("route", ROUTE), ("group", "heavy"), ("source", "paced")],
        );
    }
    assert!(
        paced >= refused as f64,
        "{paced} counted paced, {refused} refused"
    );
}

/// A rate belongs to its group: "a rule's `rate` paces that group". RingCentral names the
/// group of endpoints the rules do not list (the shipped rule file leaves them to the learned
/// fallback), so a Heavy endpoint that is learned as Heavy is in the paced group too. With the
/// rule's `rate` equal to the double's Heavy limit, listed and learned Heavy endpoints together
/// must never meet the double's 429.
#[tokio::test]
async fn a_rate_paces_learned_endpoints_of_its_group_too() {
    let window = Duration::from_secs(3);
    let rc = Rc::start(heavy_limited(3, window, window), rc_token_server()).await;
    let cfg = rc.config(
        r#"rate_limit_max_wait = "4s""#,
        r#"
[[route.limit]]
group = "heavy"
match = ["GET /restapi/v1.0/account/*/extension/*/call-log"]
rate = "3/3s"
"#,
    );
    let fleet = rc.fleet(2, &cfg, &[]).await;
    // HEAVY_2 (active calls) is Heavy at the double, not listed in the rule: learned.
    assert_eq!(get(&fleet[0], 0, HEAVY_2).await.status, 200);
    assert_eq!(get(&fleet[1], 1, HEAVY_2).await.status, 200);
    let log: Log = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, sc) in fleet.iter().enumerate() {
        for path in [HEAVY, HEAVY_2] {
            tasks.push(load(
                sc,
                i,
                Method::GET,
                path,
                Duration::from_millis(150),
                stop.clone(),
                None,
                log.clone(),
            ));
        }
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    join(tasks).await;
    let outcomes = log.lock().unwrap().clone();
    let by_path = |p: &str| {
        let mut m = BTreeMap::new();
        for o in outcomes.iter().filter(|o| o.path == p) {
            let k = if o.sidecar_limited() {
                "sidecar 429".to_owned()
            } else {
                o.status.to_string()
            };
            *m.entry(k).or_insert(0) += 1;
        }
        m
    };
    assert_eq!(
        rc.api.rate_limited(Group::Heavy),
        0,
        "the double answered Heavy 429; listed endpoint: {:?}, learned Heavy endpoint: {:?}",
        by_path(HEAVY),
        by_path(HEAVY_2)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. The token request budget holds across replicas
// ---------------------------------------------------------------------------------------------

/// Flags of a replica configured on the command line (route `default`, profile `default`), JWT
/// flow against `rc`, sharing its Redis.
fn flag_replica(rc: &Rc, n: usize, extra: &[&str]) -> SidecarBuilder {
    SidecarBuilder::raw()
        .env("TOKEN_SIDECAR_LOG", "info")
        .env("TOKEN_SIDECAR_REPLICA", &format!("r{n}"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--upstream",
            &rc.api.url(),
            "--redis-url",
            &rc.redis.url(),
            "--grant",
            "jwt_bearer",
            "--client-id",
            "test-client",
            "--token-url",
            &rc.ts.token_url(),
        ])
        .arg("--client-secret-file")
        .arg(rc.dir.path().join("secret"))
        .arg("--assertion-file")
        .arg(rc.dir.path().join("jwt"))
        .args(extra)
}

/// Forces refreshes on every replica (`POST /refresh` every 100 ms on each) for `secs`;
/// returns the statuses answered.
async fn hammer_refresh(fleet: &[Sidecar], secs: u64) -> Vec<(u16, Option<String>)> {
    let end = Instant::now() + Duration::from_secs(secs);
    let tasks = fleet.iter().map(|sc| async move {
        let mut got = Vec::new();
        while Instant::now() < end {
            let r = sc.post_refresh().await;
            got.push((
                r.status,
                r.header("x-token-sidecar-error").map(str::to_owned),
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        got
    });
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The default budget, 5 token requests a minute (RingCentral's Auth group), for three replicas
/// together: tokens that live 3 s and `POST /refresh` on every replica ten times a second for
/// 12 s. The token double never sees more than 5 token requests (the whole test is within one
/// minute) and never answers its own 429; refreshes over budget are refused by the sidecar
/// (`429 rate_limited`) and counted as deferred.
#[tokio::test]
async fn the_default_token_budget_holds_for_all_replicas_together() {
    let rc = Rc::start(
        heavy_limited(100, Duration::from_secs(60), Duration::from_secs(60)),
        rc_token_server(),
    )
    .await;
    let extra = [
        "--token-param",
        "access_token_ttl=3",
        "--min-refresh-interval",
        "1s",
    ];
    let mut fleet = Vec::new();
    for i in 0..3 {
        fleet.push(flag_replica(&rc, i, &extra).start().await);
    }
    for sc in &fleet {
        sc.wait_ready().await;
    }
    let started = Instant::now();
    let answers = hammer_refresh(&fleet, 12).await;
    let records = rc.ts.requests();
    let statuses: Vec<u16> = records.iter().map(|r| r.status).collect();
    println!(
        "token requests seen by the double: {} ({statuses:?}); POST /refresh answers: {} ok, {} \
         rate_limited, other: {:?}",
        records.len(),
        answers.iter().filter(|a| a.0 == 200).count(),
        answers
            .iter()
            .filter(|a| a.1.as_deref() == Some("rate_limited"))
            .count(),
        answers
            .iter()
            .filter(|a| a.0 != 200 && a.1.as_deref() != Some("rate_limited"))
            .collect::<Vec<_>>(),
    );
    for (i, sc) in fleet.iter().enumerate() {
        for l in sc.logs() {
            if l.contains("\"WARN\"") || l.contains("\"ERROR\"") {
                println!("replica {i}: {l}");
            }
        }
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        records.len() <= 5,
        "the token endpoint saw {} token requests in under a minute",
        records.len()
    );
    assert!(
        records.len() >= 4,
        "the budget was not exercised: {statuses:?}"
    );
    assert!(
        records.iter().all(|r| r.status != 429),
        "the token double answered 429: {statuses:?}"
    );
    assert!(rc.ts.rate_limit_penalty_remaining("test-client").is_none());
    assert!(answers
        .iter()
        .any(|a| a.0 == 429 && a.1.as_deref() == Some("rate_limited")));
    let mut deferred = 0.0;
    for sc in &fleet {
        deferred += metric(
            &sc.metrics().await,
            "token_sidecar_token_requests_deferred_total",
            &[],
        );
    }
    assert!(deferred >= 1.0);
}

/// A short budget (3 per 3 s) and the token double's Auth group at the same numbers, so that
/// the window turns over a few times: forced and timed refreshes on three replicas for 10 s. In
/// any 3 s window the double sees at most 3 token requests (counted when they arrive, as the
/// endpoint counts them), and never answers 429.
#[tokio::test]
async fn a_short_token_budget_holds_at_the_endpoint_in_every_window() {
    let window = Duration::from_secs(3);
    let rc = Rc::start(
        heavy_limited(100, Duration::from_secs(60), Duration::from_secs(60)),
        TokenServerConfig {
            rate_limit: Some(RateLimit {
                max: 3,
                window,
                penalty: window,
            }),
            session_cap: Some(5),
            ..TokenServerConfig::default()
        },
    )
    .await;
    let extra = [
        "--token-param",
        "access_token_ttl=2",
        "--min-refresh-interval",
        "1s",
        "--token-request-budget",
        "3/3s",
    ];
    let mut fleet = Vec::new();
    for i in 0..3 {
        fleet.push(flag_replica(&rc, i, &extra).start().await);
    }
    for sc in &fleet {
        sc.wait_ready().await;
    }
    let answers = hammer_refresh(&fleet, 10).await;
    let records = rc.ts.requests();
    let times: Vec<Instant> = records.iter().map(|r| r.at).collect();
    let t0 = times[0];
    let offsets: Vec<(u128, u16)> = records
        .iter()
        .map(|r| (r.at.duration_since(t0).as_millis(), r.status))
        .collect();
    let mut by_answer: BTreeMap<String, usize> = BTreeMap::new();
    for (status, kind) in &answers {
        *by_answer
            .entry(format!("{status} {}", kind.as_deref().unwrap_or("")))
            .or_default() += 1;
    }
    println!(
        "budget 3/3s: token requests (ms since the first, status): {offsets:?}; POST /refresh \
         answers: {by_answer:?}"
    );
    assert!(
        records.len() >= 8,
        "the budget was not exercised: {offsets:?}"
    );
    assert!(
        records.iter().all(|r| r.status != 429),
        "the token double answered 429 (ms since the first request, status): {offsets:?}"
    );
    assert!(
        most_in_any_window(&times, window) <= 3,
        "more than 3 token requests arrived within 3 s (ms since the first, status): {offsets:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Redis goes away mid-load and comes back
// ---------------------------------------------------------------------------------------------

fn shared_up(m: &str) -> Option<f64> {
    support::metrics::value(m, "token_sidecar_rate_limit_shared_up", &[("route", ROUTE)])
}

/// Three replicas under Light and Medium load (Medium has a configured rate, so every Medium
/// request asks Redis). Redis is killed mid-load, then restarted: no request fails because of
/// it, `/readyz` stays 200 and names the degradation in `details`, the shared-up gauge goes to 0
/// on every replica and back to 1; a block learned after the restart reaches every replica
/// again.
#[tokio::test]
async fn a_redis_outage_costs_no_request_and_sharing_resumes_after_it() {
    let penalty = Duration::from_secs(5);
    let mut rc = Rc::start(
        heavy_limited(4, Duration::from_secs(60), penalty),
        rc_token_server(),
    )
    .await;
    let cfg = rc.config(
        "",
        r#"
[[route.limit]]
group = "medium"
match = ["POST /restapi/v1.0/account/*/extension/*/sms"]
rate = "1000/10s"
"#,
    );
    let fleet = rc.fleet(3, &cfg, &[]).await;
    for (i, sc) in fleet.iter().enumerate() {
        assert_eq!(get(sc, i, HEAVY).await.status, 200);
        assert_eq!(shared_up(&sc.metrics().await), Some(1.0));
    }
    let log: Log = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, sc) in fleet.iter().enumerate() {
        tasks.push(load(
            sc,
            i,
            Method::GET,
            LIGHT,
            Duration::from_millis(30),
            stop.clone(),
            None,
            log.clone(),
        ));
        tasks.push(load(
            sc,
            i,
            Method::POST,
            MEDIUM_POST,
            Duration::from_millis(30),
            stop.clone(),
            None,
            log.clone(),
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    rc.redis.stop();
    for (i, sc) in fleet.iter().enumerate() {
        eventually(
            DEADLINE,
            &format!("replica {i} says its limits are local"),
            || async {
                let (status, body) = sc.admin_get("/readyz").await;
                assert_eq!(status, 200, "/readyz while Redis is away: {body}");
                let v = support::json(body.as_bytes());
                let said = v["details"][ROUTE]["rate_limits"]
                    .as_str()
                    .is_some_and(|s| s.contains("Redis"));
                said && shared_up(&sc.metrics().await) == Some(0.0)
            },
        )
        .await;
    }
    // Load goes on without Redis for a while.
    tokio::time::sleep(Duration::from_secs(1)).await;
    rc.redis.restart();
    for (i, sc) in fleet.iter().enumerate() {
        eventually(
            DEADLINE,
            &format!("replica {i} shares its limits again"),
            || async {
                let (status, body) = sc.admin_get("/readyz").await;
                assert_eq!(status, 200, "{body}");
                let v = support::json(body.as_bytes());
                v.get("details").is_none() && shared_up(&sc.metrics().await) == Some(1.0)
            },
        )
        .await;
    }
    // A block learned after the restart: replica 0 spends the Heavy limit (3 used above).
    let mut o = get(&fleet[0], 0, HEAVY).await;
    while o.status == 200 {
        o = get(&fleet[0], 0, HEAVY).await;
    }
    assert!(o.upstream_limited(), "{o:?}");
    wait_block_everywhere(&fleet, "heavy").await;
    for (i, sc) in fleet.iter().enumerate().skip(1) {
        let o = get(sc, i, HEAVY).await;
        assert!(o.sidecar_limited(), "replica {i}: {o:?}");
        assert!(rc.record(o.n).is_none());
    }
    stop.store(true, Ordering::Relaxed);
    join(tasks).await;
    let outcomes = log.lock().unwrap().clone();
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 200).collect();
    println!(
        "{} Light and Medium requests through the outage",
        outcomes.len()
    );
    assert!(
        failed.is_empty(),
        "requests failed across the outage: {:?}",
        failed
            .iter()
            .map(|o| (
                o.replica,
                o.path,
                o.status,
                o.body.chars().take(200).collect::<String>()
            ))
            .collect::<Vec<_>>()
    );
    assert!(outcomes.len() > 50);
}

// ---------------------------------------------------------------------------------------------
// 6. The shipped RingCentral rule file
// ---------------------------------------------------------------------------------------------

fn example_rules() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ringcentral-rate-limits.toml"),
    )
    .unwrap()
}

/// A configuration with a route to `upstream` (static token) and the shipped rules pasted
/// under it, as the file says to.
fn config_with_example(dir: &Path, upstream: &str) -> PathBuf {
    let path = dir.join("rc-rules.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[route]]
name = "{ROUTE}"
listen = "127.0.0.1:0"
upstream = "{upstream}"
token = "rc"

{rules}

[token.rc]
grant = "static"
static_token = "{marker}"
"#,
            rules = example_rules(),
            marker = support::MARKER,
        ),
    )
    .unwrap();
    path
}

/// The rule file pasted under a route passes `token-sidecar check`; run, a Heavy endpoint's
/// request is in the Heavy group before any answer has named a group: behind an upstream that
/// never sends `X-Rate-Limit-Group`, ten requests of one Heavy endpoint spend the file's
/// `10/60s`, and the first ever request of another Heavy endpoint (the call log) is answered
/// `429 rate_limited` naming `heavy`, without going upstream, while a Light endpoint flows.
#[tokio::test]
async fn the_shipped_rule_file_loads_and_classifies_heavy_endpoints_up_front() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let kept = seen.clone();
    let upstream = support::scripted::Scripted::start(move |mut a| {
        let kept = kept.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            while let Some((head, _)) = a.read_request().await {
                let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                kept.lock().unwrap().push(target);
                let resp = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if a.stream.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_example(dir.path(), &upstream.url(""));
    let out = support::sidecar::run_once(
        ["check".as_ref(), "--config".as_ref(), cfg.as_os_str()],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());

    let sc = SidecarBuilder::raw()
        .env("TOKEN_SIDECAR_LOG", "info")
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .args(["--threads", "1"])
        .start()
        .await;
    let (_, body) = sc.admin_get("/rate-limits").await;
    let v = support::json(body.as_bytes());
    let groups: Vec<&str> = v["routes"][ROUTE]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["group"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["auth", "heavy", "medium", "light"], "{v}");
    let client = Client::http1();
    for _ in 0..10 {
        let r = client
            .get(&sc.url("/restapi/v1.0/account/~/extension/~/active-calls"))
            .await;
        assert_eq!(r.status, 200);
    }
    let r = client.get(&sc.url(HEAVY)).await;
    r.assert_sidecar_error(429, "rate_limited");
    assert!(r.text().contains("`heavy`"), "{}", r.text());
    assert!(
        !seen.lock().unwrap().iter().any(|t| t.contains("call-log")),
        "the call log went upstream"
    );
    assert_eq!(client.get(&sc.url(LIGHT)).await.status, 200);
}

/// Concrete requests a pattern of the rule file matches: `*` as `~`, an account number and a
/// record id; a trailing `**` as nothing and as a deeper path; no method as GET and POST.
fn instances(pattern: &str) -> Vec<(Method, String)> {
    let (methods, path) = match pattern.split_once(' ') {
        Some((m, p)) => (vec![Method::from_bytes(m.as_bytes()).unwrap()], p),
        None => (vec![Method::GET, Method::POST], pattern),
    };
    let mut paths = Vec::new();
    for fill in ["~", "1234567", "77"] {
        let segs: Vec<String> = path
            .split('/')
            .map(|s| {
                if s == "*" {
                    fill.to_owned()
                } else {
                    s.to_owned()
                }
            })
            .collect();
        let p = segs.join("/");
        match p.strip_suffix("/**") {
            Some(base) => {
                paths.push(format!("{base}/parties/5"));
            }
            None => paths.push(p),
        }
    }
    methods
        .into_iter()
        .flat_map(|m| paths.iter().map(move |p| (m.clone(), p.clone())))
        .collect()
}

/// The shipped rule file and the API double's table claim the same source (RingCentral's API
/// reference): every endpoint a rule lists is in the same group at the double, and no request
/// matches rules of two groups.
#[test]
fn the_shipped_rule_file_agrees_with_the_doubles_groups() {
    let doc: toml::Value = toml::from_str(&example_rules()).unwrap();
    let rules = doc["route"]["limit"].as_array().unwrap();
    let mut parsed = Vec::new();
    for r in rules {
        let group = r["group"].as_str().unwrap().to_owned();
        for p in r["match"].as_array().unwrap() {
            let p = p.as_str().unwrap().to_owned();
            let pat = token_sidecar::ratelimit::rules::Pattern::parse(&p).unwrap();
            parsed.push((group.clone(), p, pat));
        }
    }
    let mut disagree = Vec::new();
    for (group, text, _) in &parsed {
        for (m, path) in instances(text) {
            let double = group_of(&m, &path).as_str();
            if double != group {
                disagree.push(format!("{m} {path}: rule {group}, double {double}"));
            }
            let groups: std::collections::BTreeSet<&str> = parsed
                .iter()
                .filter(|(_, _, p)| p.matches(&m, &path))
                .map(|(g, _, _)| g.as_str())
                .collect();
            assert_eq!(groups.len(), 1, "{m} {path} matches rules of {groups:?}");
        }
    }
    assert!(disagree.is_empty(), "{disagree:#?}");
}
