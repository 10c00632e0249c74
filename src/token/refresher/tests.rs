//! Unit tests of the refresher's state machine: fakes of the token endpoint and the shared
//! store, tokio's paused clock (a test sleeps through hours in microseconds). Each test is one
//! transition; the end-to-end tests in `tests/` run the same paths against the real doubles.
//!
//! Size: one test per transition, after the fakes they share (about 350 lines).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Clock, RefreshFailure, Refresher};
use crate::config::{ClientAuth, Grant, TokenConfig};
use crate::ratelimit::Rate;
use crate::secret::{Secret, SecretSource};
use crate::token::oauth::{GrantRequest, OAuthError, TokenEndpoint};
use crate::token::set::TokenSet;
use crate::token::shared::{
    Entry, RejectReason, Rejected, SharedBackend, SharedError, SharedSet, Updates,
};
use crate::token::state::State;
use crate::token::{fingerprint, TokenStore, Trigger};

const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// The fake token endpoint
// ---------------------------------------------------------------------------------------------

/// What a token request carried.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    /// The primary grant.
    Primary,
    /// A refresh with this refresh token.
    Refresh(String),
}

/// How the fake answers the next request (then: a new token set).
enum Answer {
    Fail(OAuthError),
}

struct EndpointState {
    clock: Clock,
    lifetime: Mutex<Duration>,
    /// How long an answer takes.
    delay: Mutex<Duration>,
    sent: Mutex<Vec<(Instant, Sent)>>,
    script: Mutex<VecDeque<Answer>>,
    issued: AtomicU64,
}

/// A token endpoint that issues `at-N` / `rt-N` and records every request.
#[derive(Clone)]
struct Endpoint(Arc<EndpointState>);

impl Endpoint {
    fn new(clock: Clock, lifetime: Duration) -> Self {
        Endpoint(Arc::new(EndpointState {
            clock,
            lifetime: Mutex::new(lifetime),
            delay: Mutex::new(Duration::ZERO),
            sent: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            issued: AtomicU64::new(0),
        }))
    }

    fn then_fail(&self, e: OAuthError) {
        self.0.script.lock().unwrap().push_back(Answer::Fail(e));
    }

    fn sent(&self) -> Vec<Sent> {
        self.0
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }

    fn times(&self) -> Vec<Instant> {
        self.0
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| *t)
            .collect()
    }
}

impl TokenEndpoint for Endpoint {
    fn request(
        &self,
        grant: GrantRequest<'_>,
    ) -> impl std::future::Future<Output = Result<TokenSet, OAuthError>> + Send {
        let st = self.0.clone();
        let sent = match grant {
            GrantRequest::Primary => Sent::Primary,
            GrantRequest::Refresh(rt) => Sent::Refresh(rt.expose().to_owned()),
        };
        async move {
            st.sent.lock().unwrap().push((st.clock.now(), sent));
            let delay = *st.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            if let Some(Answer::Fail(e)) = st.script.lock().unwrap().pop_front() {
                return Err(e);
            }
            let n = st.issued.fetch_add(1, Ordering::SeqCst) + 1;
            let now = st.clock.wall();
            Ok(TokenSet {
                access_token: Secret::new(format!("at-{n}")),
                expires_at: now + *st.lifetime.lock().unwrap(),
                refresh_token: Some(Secret::new(format!("rt-{n}"))),
                refresh_expires_at: None,
                scope: None,
                obtained_at: now,
            })
        }
    }
}

fn invalid_grant() -> OAuthError {
    OAuthError::Endpoint {
        status: 400,
        error: "invalid_grant".into(),
        description: None,
        codes: vec![],
    }
}

fn transient() -> OAuthError {
    OAuthError::Transport("connection refused".into())
}

// ---------------------------------------------------------------------------------------------
// The fake shared store
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Redis {
    entry: Option<Entry>,
    lock: Option<(String, Instant)>,
    hold_until: Option<Instant>,
    budget: Vec<Instant>,
    unauthorized_until: Option<Instant>,
    down: bool,
    writes: Vec<u64>,
    /// The next reads return this older entry (a write that has not reached the reader yet).
    stale: Option<(Entry, usize)>,
}

struct SharedState {
    redis: Mutex<Redis>,
    updates: tokio::sync::watch::Sender<u64>,
}

/// One replica's handle on a shared in-memory store.
#[derive(Clone)]
struct Shared {
    state: Arc<SharedState>,
    replica: String,
}

impl Shared {
    fn new() -> Self {
        Shared {
            state: Arc::new(SharedState {
                redis: Mutex::new(Redis::default()),
                updates: tokio::sync::watch::channel(0).0,
            }),
            replica: "r0".into(),
        }
    }

    fn replica(&self, name: &str) -> Self {
        Shared {
            state: self.state.clone(),
            replica: name.into(),
        }
    }

    fn redis(&self) -> std::sync::MutexGuard<'_, Redis> {
        self.state.redis.lock().unwrap()
    }

    fn check(&self) -> Result<(), SharedError> {
        if self.redis().down {
            Err(SharedError::from(redis::RedisError::from((
                redis::ErrorKind::Io,
                "down",
            ))))
        } else {
            Ok(())
        }
    }
}

struct Watch(tokio::sync::watch::Receiver<u64>);

impl Updates for Watch {
    async fn next(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

impl SharedBackend for Shared {
    type Updates = Watch;

    fn replica(&self) -> &str {
        &self.replica
    }

    fn lock_ttl(&self) -> Duration {
        Duration::from_secs(25)
    }

    async fn read(&self) -> Result<Entry, SharedError> {
        self.check()?;
        let mut r = self.redis();
        if let Some((entry, n)) = r.stale.as_mut() {
            if *n > 0 {
                *n -= 1;
                return Ok(entry.clone());
            }
        }
        Ok(r.entry.clone().unwrap_or(Entry::None))
    }

    async fn try_lock(&self) -> Result<bool, SharedError> {
        self.check()?;
        let mut r = self.redis();
        let now = Instant::now();
        if r.lock.as_ref().is_some_and(|(_, until)| *until > now) {
            return Ok(false);
        }
        r.lock = Some((self.replica.clone(), now + self.lock_ttl()));
        Ok(true)
    }

    async fn lock_held(&self) -> Result<bool, SharedError> {
        self.check()?;
        let now = Instant::now();
        Ok(self
            .redis()
            .lock
            .as_ref()
            .is_some_and(|(_, until)| *until > now))
    }

    async fn extend(&self) -> Result<bool, SharedError> {
        self.check()?;
        Ok(true)
    }

    async fn unlock(&self) -> Result<bool, SharedError> {
        self.check()?;
        let mut r = self.redis();
        if r.lock
            .as_ref()
            .is_some_and(|(owner, _)| *owner == self.replica)
        {
            r.lock = None;
            return Ok(true);
        }
        Ok(false)
    }

    async fn write(&self, state: State, replacing: Option<&Rejected>) -> Result<bool, SharedError> {
        self.check()?;
        let version = state.version;
        let mut r = self.redis();
        let fenced = match &r.entry {
            Some(Entry::Set(s)) => s.state.version >= version,
            Some(Entry::Rejected(_)) => replacing.is_none(),
            _ => false,
        };
        if fenced {
            return Ok(false);
        }
        r.entry = Some(Entry::Set(SharedSet {
            state,
            refreshed_by: self.replica.clone(),
            refreshed_at: 0,
        }));
        r.writes.push(version);
        drop(r);
        self.state.updates.send_replace(version);
        Ok(true)
    }

    async fn hold(&self, wait: Duration) -> Result<(), SharedError> {
        self.check()?;
        self.redis().hold_until = Some(Instant::now() + wait);
        Ok(())
    }

    async fn hold_left(&self) -> Result<Option<Duration>, SharedError> {
        self.check()?;
        let now = Instant::now();
        Ok(self
            .redis()
            .hold_until
            .filter(|u| *u > now)
            .map(|u| u - now))
    }

    async fn take_budget(&self, rate: Rate) -> Result<Result<(), Duration>, SharedError> {
        self.check()?;
        let mut r = self.redis();
        let now = Instant::now();
        r.budget.retain(|t| *t + rate.window > now);
        if r.budget.len() < rate.max as usize {
            r.budget.push(now);
            return Ok(Ok(()));
        }
        Ok(Err(r.budget[0] + rate.window - now))
    }

    async fn claim_unauthorized(&self, interval: Duration) -> Result<bool, SharedError> {
        self.check()?;
        let mut r = self.redis();
        let now = Instant::now();
        if r.unauthorized_until.is_some_and(|u| u > now) {
            return Ok(false);
        }
        r.unauthorized_until = Some(now + interval);
        Ok(true)
    }

    async fn subscribe(&self) -> Result<Watch, SharedError> {
        self.check()?;
        Ok(Watch(self.state.updates.subscribe()))
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------------

fn config(grant: Grant) -> TokenConfig {
    TokenConfig {
        name: "t".into(),
        grant,
        token_url: Some("https://id.example.com/token".into()),
        client_id: Some("client".into()),
        client_secret: None,
        client_auth: ClientAuth::Basic,
        jwt: Default::default(),
        client_assertion_file: None,
        client_cert: None,
        token_ca_file: None,
        issuer: None,
        audience: vec![],
        resource: vec![],
        scope: None,
        params: vec![],
        refresh_margin: None,
        min_refresh_interval: Duration::from_secs(10),
        state_file: None,
        default_lifetime: HOUR,
        request_timeout: Duration::from_secs(10),
        request_budget: "100/60s".parse().unwrap(),
    }
}

fn jwt() -> Grant {
    Grant::JwtBearer {
        assertion: SecretSource::Inline(Secret::new("jwt")),
    }
}

struct Rig<S: SharedBackend = Shared> {
    refresher: Arc<Refresher<Endpoint, S>>,
    endpoint: Endpoint,
    store: Arc<TokenStore>,
    cancel: CancellationToken,
}

impl<S: SharedBackend> Drop for Rig<S> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn rig_with<S: SharedBackend>(cfg: TokenConfig, lifetime: Duration, shared: Option<S>) -> Rig<S> {
    let clock = Clock::following_tokio();
    rig_on(cfg, Endpoint::new(clock, lifetime), shared, clock)
}

/// A replica on an endpoint other replicas may share (one identity provider).
fn rig_on<S: SharedBackend>(
    cfg: TokenConfig,
    endpoint: Endpoint,
    shared: Option<S>,
    clock: Clock,
) -> Rig<S> {
    let store = Arc::new(TokenStore::new("t", vec!["Bearer ".into()]));
    let refresher = Arc::new(Refresher::with_parts(
        &cfg,
        store.clone(),
        endpoint.clone(),
        shared,
        clock,
    ));
    Rig {
        refresher,
        endpoint,
        store,
        cancel: CancellationToken::new(),
    }
}

fn rig(cfg: TokenConfig, lifetime: Duration) -> Rig {
    rig_with::<Shared>(cfg, lifetime, None)
}

impl<S: SharedBackend> Rig<S> {
    /// Starts the timed refresh loop.
    fn run(&self) {
        tokio::spawn(
            self.refresher
                .clone()
                .run(self.cancel.clone(), TaskTracker::new()),
        );
    }

    /// Lets the refresher run for `d` of (paused, auto-advancing) time.
    async fn pass(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Waits (in paused time) until the endpoint has seen `n` requests.
    async fn until_sent(&self, n: usize) {
        let end = Instant::now() + 24 * HOUR;
        while self.endpoint.sent().len() < n {
            assert!(Instant::now() < end, "only {:?} sent", self.endpoint.sent());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Schedule and rotation
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn startup_obtains_one_token_and_the_timer_refreshes_it_before_expiry() {
    let r = rig(config(jwt()), HOUR);
    r.run();
    r.until_sent(1).await;
    assert_eq!(r.store.version(), 1);
    let first = r.endpoint.times()[0];
    r.until_sent(2).await;
    let refreshed_after = r.endpoint.times()[1] - first;
    // Default margin for an hour: 6 minutes, jittered up to 6 more earlier.
    assert!(
        refreshed_after >= Duration::from_secs(48 * 60)
            && refreshed_after <= Duration::from_secs(54 * 60),
        "refreshed after {refreshed_after:?}"
    );
    assert_eq!(
        r.endpoint.sent(),
        [Sent::Primary, Sent::Refresh("rt-1".into())]
    );
    assert_eq!(r.store.version(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_rotated_refresh_token_is_sent_once_and_remembered_as_spent() {
    let r = rig(config(jwt()), HOUR);
    r.run();
    r.until_sent(3).await;
    assert_eq!(
        r.endpoint.sent(),
        [
            Sent::Primary,
            Sent::Refresh("rt-1".into()),
            Sent::Refresh("rt-2".into())
        ]
    );
    let inner = r.refresher.inner.lock().await;
    assert!(inner.spent.contains(&fingerprint(&Secret::new("rt-1"))));
    assert!(inner.spent.contains(&fingerprint(&Secret::new("rt-2"))));
    assert_eq!(
        inner.refresh_token.as_ref().map(Secret::expose),
        Some("rt-3")
    );
}

#[tokio::test(start_paused = true)]
async fn a_rejected_refresh_token_falls_back_to_the_primary_grant_once() {
    let r = rig(config(jwt()), HOUR);
    r.refresher.refresh(Trigger::Startup, None).await.unwrap();
    r.endpoint.then_fail(invalid_grant());
    let v = r.refresher.refresh(Trigger::Manual, None).await.unwrap();
    assert_eq!(v, 2);
    assert_eq!(
        r.endpoint.sent(),
        [Sent::Primary, Sent::Refresh("rt-1".into()), Sent::Primary]
    );
}

#[tokio::test(start_paused = true)]
async fn a_spent_bootstrap_refresh_token_is_never_sent_again() {
    let grant = Grant::RefreshToken {
        refresh_token: SecretSource::Inline(Secret::new("bootstrap")),
    };
    let r = rig(config(grant), HOUR);
    r.refresher.refresh(Trigger::Startup, None).await.unwrap();
    // The rotated refresh token is rejected: the bootstrap one was exchanged already.
    r.endpoint.then_fail(invalid_grant());
    let e = r
        .refresher
        .refresh(Trigger::Manual, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already exchanged"), "{e}");
    assert_eq!(
        r.endpoint.sent(),
        [Sent::Primary, Sent::Refresh("rt-1".into())]
    );
    // Nothing is sent again, whatever asks.
    let _ = r.refresher.refresh(Trigger::Manual, None).await;
    assert_eq!(r.endpoint.sent().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_adopted_set_never_brings_back_a_spent_refresh_token() {
    let r = rig(config(jwt()), HOUR);
    r.refresher.refresh(Trigger::Startup, None).await.unwrap();
    r.refresher.refresh(Trigger::Manual, None).await.unwrap();
    // A newer set whose refresh token is rt-1, spent already.
    let mut old = r.refresher.inner.lock().await;
    let set = TokenSet {
        access_token: Secret::new("at-x"),
        expires_at: Clock::following_tokio().wall() + HOUR,
        refresh_token: Some(Secret::new("rt-1")),
        refresh_expires_at: None,
        scope: None,
        obtained_at: Clock::following_tokio().wall(),
    };
    let st = State::new(&r.refresher.profile_key, 9, &set);
    assert!(r.refresher.adopt(&mut old, &st, None));
    assert_eq!(old.refresh_token.as_ref().map(Secret::expose), Some("rt-2"));
}

#[tokio::test(start_paused = true)]
async fn a_newer_state_file_from_another_process_is_taken_over_without_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(jwt());
    cfg.state_file = Some(dir.path().join("state").join("t.json"));
    let r = rig(cfg.clone(), HOUR);
    r.refresher.refresh(Trigger::Startup, None).await.unwrap();
    // The `refresh` subcommand (another process) rotated the set behind it.
    let other = rig(cfg, HOUR);
    assert!(other.refresher.load_state().await);
    // Tokens of its own numbering: `rt-101` comes from the other process.
    other.endpoint.0.issued.store(100, Ordering::SeqCst);
    other
        .refresher
        .refresh(Trigger::Manual, None)
        .await
        .unwrap();
    // The 401 for the old token is answered by the file's newer one.
    assert_eq!(r.refresher.on_unauthorized(1).await.unwrap(), 2);
    assert_eq!(r.endpoint.sent(), [Sent::Primary]);
    assert_eq!(
        other.endpoint.sent(),
        [Sent::Refresh("rt-1".into())],
        "the other process used the file's refresh token"
    );
    let inner = r.refresher.inner.lock().await;
    assert_eq!(
        inner.refresh_token.as_ref().map(Secret::expose),
        Some("rt-101")
    );
}

// ---------------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_within_bounds_and_keep_the_token() {
    let r = rig(config(jwt()), HOUR);
    r.refresher.refresh(Trigger::Startup, None).await.unwrap();
    for _ in 0..6 {
        r.endpoint.then_fail(transient());
    }
    // Jump to the timed refresh; then the retries.
    r.run();
    r.until_sent(8).await;
    let t = r.endpoint.times();
    let gaps: Vec<Duration> = t.windows(2).skip(1).map(|w| w[1] - w[0]).collect();
    for (i, g) in gaps.iter().enumerate().take(6) {
        assert!(*g >= super::BACKOFF_FLOOR, "retry {i} after {g:?}");
        assert!(*g <= super::BACKOFF_CAP, "retry {i} after {g:?}");
    }
    assert_eq!(r.store.version(), 2, "the token was kept, then replaced");
}

#[tokio::test(start_paused = true)]
async fn retry_after_holds_every_trigger_until_it_ends() {
    let mut cfg = config(jwt());
    cfg.min_refresh_interval = Duration::ZERO;
    let r = rig(cfg, HOUR);
    r.refresher.refresh(Trigger::Startup, None).await.unwrap();
    r.endpoint.then_fail(OAuthError::Throttled {
        status: 429,
        retry_after: Some(Duration::from_secs(30)),
    });
    assert!(r.refresher.refresh(Trigger::Manual, None).await.is_err());
    assert!(matches!(
        r.refresher.refresh(Trigger::Manual, None).await,
        Err(RefreshFailure::Waiting(_))
    ));
    assert!(r.refresher.on_unauthorized(1).await.is_err());
    assert_eq!(r.endpoint.sent().len(), 2, "a request inside Retry-After");
    r.pass(Duration::from_secs(31)).await;
    r.refresher.refresh(Trigger::Manual, None).await.unwrap();
    assert_eq!(r.endpoint.sent().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn rejected_credentials_hold_the_timer_but_a_manual_refresh_may_retry() {
    let r = rig(config(jwt()), HOUR);
    r.endpoint.then_fail(OAuthError::Endpoint {
        status: 401,
        error: "invalid_client".into(),
        description: None,
        codes: vec![],
    });
    r.run();
    r.until_sent(1).await;
    r.pass(Duration::from_secs(60)).await;
    assert_eq!(
        r.endpoint.sent().len(),
        1,
        "retried rejected credentials at once"
    );
    r.refresher.refresh(Trigger::Manual, None).await.unwrap();
    assert_eq!(r.store.version(), 1);
}

#[tokio::test(start_paused = true)]
async fn versions_that_cannot_grow_send_nothing() {
    let r = rig(config(jwt()), HOUR);
    r.refresher.inner.lock().await.version_floor = crate::token::MAX_VERSION - 1;
    assert!(r.refresher.refresh(Trigger::Manual, None).await.is_err());
    assert!(r.endpoint.sent().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Budget, 401s, manual refreshes
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_budget_holds_requests_back_and_the_timer_waits_for_room() {
    let mut cfg = config(jwt());
    cfg.request_budget = "2/60s".parse().unwrap();
    // 10-second tokens want a refresh every ~5-8 s: far more than 2 a minute.
    let r = rig(cfg, Duration::from_secs(10));
    r.run();
    r.pass(Duration::from_secs(300)).await;
    let t = r.endpoint.times();
    assert!(t.len() >= 8, "only {} requests in 5 minutes", t.len());
    for (i, start) in t.iter().enumerate() {
        let in_window = t[i..]
            .iter()
            .take_while(|x| **x < *start + Duration::from_secs(60))
            .count();
        assert!(in_window <= 2, "{in_window} requests within a minute");
    }
    let status = r.store.status();
    assert!(
        status.error.as_ref().is_none_or(|e| e.contains("budget")),
        "{status:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_manual_refresh_over_budget_is_refused_with_the_wait() {
    let mut cfg = config(jwt());
    cfg.request_budget = "1/60s".parse().unwrap();
    cfg.min_refresh_interval = Duration::ZERO;
    let r = rig(cfg, HOUR);
    r.refresher.refresh(Trigger::Startup, None).await.unwrap();
    let e = r.refresher.refresh_manual().await.unwrap_err();
    let wait = e.retry_after().unwrap();
    assert!(matches!(e, RefreshFailure::OverBudget(_)), "{e}");
    assert!(
        wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
        "{wait:?}"
    );
    assert_eq!(r.endpoint.sent().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn manual_refreshes_are_coalesced_and_throttled() {
    let r = rig(config(jwt()), HOUR);
    r.refresher.refresh(Trigger::Startup, None).await.unwrap();
    *r.endpoint.0.delay.lock().unwrap() = Duration::from_secs(1);
    let (a, b) = tokio::join!(r.refresher.refresh_manual(), r.refresher.refresh_manual());
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(
        r.endpoint.sent().len(),
        2,
        "two concurrent calls, one request"
    );
    let e = r.refresher.refresh_manual().await.unwrap_err();
    assert!(matches!(e, RefreshFailure::Throttled(_)), "{e}");
    r.pass(Duration::from_secs(11)).await;
    r.refresher.refresh_manual().await.unwrap();
    assert_eq!(r.endpoint.sent().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_401_for_an_old_token_is_answered_by_the_newer_one_without_a_request() {
    let r = rig(config(jwt()), HOUR);
    r.refresher.refresh(Trigger::Startup, None).await.unwrap();
    r.refresher.refresh(Trigger::Manual, None).await.unwrap();
    assert_eq!(r.refresher.on_unauthorized(1).await.unwrap(), 2);
    assert_eq!(r.endpoint.sent().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_401_refreshes_at_most_once_per_min_refresh_interval() {
    let r = rig(config(jwt()), HOUR);
    r.refresher.refresh(Trigger::Startup, None).await.unwrap();
    assert_eq!(r.refresher.on_unauthorized(1).await.unwrap(), 2);
    assert!(matches!(
        r.refresher.on_unauthorized(2).await,
        Err(RefreshFailure::TooSoon)
    ));
    r.pass(Duration::from_secs(10)).await;
    assert_eq!(r.refresher.on_unauthorized(2).await.unwrap(), 3);
    assert_eq!(r.endpoint.sent().len(), 3);
}

// ---------------------------------------------------------------------------------------------
// The shared store
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn two_replicas_make_one_request_per_cycle_and_converge() {
    let shared = Shared::new();
    let clock = Clock::following_tokio();
    let idp = Endpoint::new(clock, Duration::from_secs(600));
    let a = rig_on(config(jwt()), idp.clone(), Some(shared.replica("a")), clock);
    let b = rig_on(config(jwt()), idp.clone(), Some(shared.replica("b")), clock);
    a.run();
    a.until_sent(1).await;
    b.run();
    b.pass(Duration::from_secs(3600)).await;
    let sent = idp.sent();
    let writes = shared.redis().writes.len();
    assert_eq!(sent.len(), writes, "one write per request");
    // 10-minute tokens refreshed at 8-9 minutes: 6 or 7 cycles in an hour, plus the login.
    assert!(
        (7..=9).contains(&sent.len()),
        "{} requests in an hour",
        sent.len()
    );
    assert_eq!(a.store.version(), b.store.version());
    assert_eq!(
        sent.iter().filter(|s| **s == Sent::Primary).count(),
        1,
        "one session for both: {sent:?}"
    );
    // Each refresh token was sent once.
    let mut refreshes: Vec<&Sent> = sent.iter().filter(|s| **s != Sent::Primary).collect();
    let n = refreshes.len();
    refreshes.dedup();
    assert_eq!(refreshes.len(), n, "a refresh token sent twice: {sent:?}");
}

#[tokio::test(start_paused = true)]
async fn a_fresh_shared_set_is_adopted_without_a_request() {
    let shared = Shared::new();
    let a = rig_with(config(jwt()), HOUR, Some(shared.replica("a")));
    a.refresher.refresh(Trigger::Startup, None).await.unwrap();
    let b = rig_with(config(jwt()), HOUR, Some(shared.replica("b")));
    assert_eq!(b.refresher.refresh(Trigger::Timer, None).await.unwrap(), 1);
    assert!(b.endpoint.sent().is_empty());
    let inner = b.refresher.inner.lock().await;
    assert_eq!(
        inner.refresh_token.as_ref().map(Secret::expose),
        Some("rt-1")
    );
}

#[tokio::test(start_paused = true)]
async fn an_untrusted_entry_is_never_used_and_replaced_at_the_next_refresh() {
    let shared = Shared::new();
    shared.redis().entry = Some(Entry::Rejected(Rejected::new(
        RejectReason::Tampered,
        "does not open",
        "abc".into(),
    )));
    let a = rig_with(config(jwt()), HOUR, Some(shared.replica("a")));
    assert_eq!(
        a.refresher.refresh(Trigger::Startup, None).await.unwrap(),
        1
    );
    assert_eq!(a.endpoint.sent(), [Sent::Primary]);
    assert!(matches!(shared.redis().entry, Some(Entry::Set(_))));
}

#[tokio::test(start_paused = true)]
async fn a_fenced_write_keeps_the_newer_set() {
    let shared = Shared::new();
    let a = rig_with(config(jwt()), HOUR, Some(shared.replica("a")));
    a.refresher.refresh(Trigger::Startup, None).await.unwrap();
    // Another replica wrote version 5 while this one was obtaining (its lock expired).
    let newer = {
        let Some(Entry::Set(s)) = shared.redis().entry.clone() else {
            panic!("no entry")
        };
        let mut st = s.state.clone();
        st.version = 5;
        st
    };
    let writer = shared.replica("other");
    let _ = writer.write(newer, None).await;
    let v = a.refresher.refresh(Trigger::Manual, None).await.unwrap();
    assert_eq!(v, 6, "the refresh writes after the newest version");
    assert_eq!(shared.redis().writes, [1, 5, 6]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_answered_to_one_replica_holds_the_others() {
    let shared = Shared::new();
    let a = rig_with(config(jwt()), HOUR, Some(shared.replica("a")));
    a.refresher.refresh(Trigger::Startup, None).await.unwrap();
    a.endpoint.then_fail(OAuthError::Throttled {
        status: 429,
        retry_after: Some(Duration::from_secs(60)),
    });
    assert!(a.refresher.refresh(Trigger::Manual, None).await.is_err());
    let b = rig_with(config(jwt()), HOUR, Some(shared.replica("b")));
    assert!(matches!(
        b.refresher.refresh(Trigger::Manual, None).await,
        Err(RefreshFailure::Waiting(_))
    ));
    assert!(b.endpoint.sent().is_empty());
}

#[tokio::test(start_paused = true)]
async fn with_the_shared_store_down_only_client_credentials_refresh_alone() {
    let shared = Shared::new();
    shared.redis().down = true;
    let jwt_replica = rig_with(config(jwt()), HOUR, Some(shared.replica("a")));
    assert!(matches!(
        jwt_replica.refresher.refresh(Trigger::Startup, None).await,
        Err(RefreshFailure::Shared(_))
    ));
    assert!(jwt_replica.endpoint.sent().is_empty());
    let cc = rig_with(
        config(Grant::ClientCredentials),
        HOUR,
        Some(shared.replica("b")),
    );
    assert_eq!(
        cc.refresher.refresh(Trigger::Startup, None).await.unwrap(),
        1
    );
    assert_eq!(cc.endpoint.sent(), [Sent::Primary]);
}

#[tokio::test(start_paused = true)]
async fn the_budget_is_counted_for_all_replicas_together() {
    let shared = Shared::new();
    let mut cfg = config(Grant::ClientCredentials);
    cfg.request_budget = "1/60s".parse().unwrap();
    cfg.min_refresh_interval = Duration::ZERO;
    let a = rig_with(cfg.clone(), HOUR, Some(shared.replica("a")));
    let b = rig_with(cfg, HOUR, Some(shared.replica("b")));
    a.refresher.refresh(Trigger::Startup, None).await.unwrap();
    assert!(matches!(
        b.refresher.refresh(Trigger::Manual, None).await,
        Err(RefreshFailure::OverBudget(_))
    ));
    assert!(b.endpoint.sent().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_401_refresh_is_claimed_once_per_interval_for_the_whole_fleet() {
    let shared = Shared::new();
    let a = rig_with(config(jwt()), HOUR, Some(shared.replica("a")));
    a.refresher.refresh(Trigger::Startup, None).await.unwrap();
    shared.redis().unauthorized_until = Some(Instant::now() + Duration::from_secs(10));
    assert!(matches!(
        a.refresher.on_unauthorized(1).await,
        Err(RefreshFailure::TooSoon)
    ));
    assert_eq!(a.endpoint.sent().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_401_that_a_newer_set_answers_claims_nothing() {
    // b's 401 for version 1 first reads the store before a's version 2 lands there (the API
    // refused b's token because a's refresh replaced it), then finds it while refreshing: no
    // token request, and neither the fleet's claim on its one 401 refresh per interval nor
    // b's own. A 401 for version 2 right after is refreshed.
    let shared = Shared::new();
    let clock = Clock::following_tokio();
    let idp = Endpoint::new(clock, HOUR);
    let a = rig_on(config(jwt()), idp.clone(), Some(shared.replica("a")), clock);
    let b = rig_on(config(jwt()), idp.clone(), Some(shared.replica("b")), clock);
    a.refresher.refresh(Trigger::Startup, None).await.unwrap();
    assert_eq!(b.refresher.refresh(Trigger::Timer, None).await.unwrap(), 1);
    let v1 = shared.redis().entry.clone().unwrap();
    a.refresher.refresh(Trigger::Manual, None).await.unwrap();
    shared.redis().stale = Some((v1, 1));
    assert_eq!(b.refresher.on_unauthorized(1).await.unwrap(), 2);
    assert_eq!(idp.sent().len(), 2, "b sent a token request");
    assert!(shared.redis().unauthorized_until.is_none(), "claimed");
    assert_eq!(b.refresher.on_unauthorized(2).await.unwrap(), 3);
    assert_eq!(idp.sent().len(), 3);
    assert!(shared.redis().unauthorized_until.is_some());
    // That one is claimed: a's 401 for version 3 now is too soon.
    assert!(matches!(
        a.refresher.on_unauthorized(3).await,
        Err(RefreshFailure::TooSoon)
    ));
    assert_eq!(idp.sent().len(), 3);
}
