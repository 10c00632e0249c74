//! Keeps an OAuth2 profile's token fresh: the timed refresh before expiry, single-flight
//! refreshes on demand (401, manual), refresh-token rotation, failure backoff and the token
//! request budget. The state file is in [`persist`], the coordination of replicas through the
//! shared store in [`shared`].
//!
//! Every token request of a profile happens under one async mutex, so refreshes are
//! single-flight and a rotated refresh token is always the newest one. A refresh token that
//! has been exchanged (or rejected) is remembered by its fingerprint, in memory, in the state
//! file and in the shared entry, and is never sent again. Every token request first takes a
//! place in the profile's budget (`--token-request-budget`, all replicas together when
//! shared): whatever fails, whatever Redis holds, the token endpoint never sees more.
//!
//! The token endpoint and the shared store are seams ([`TokenEndpoint`], [`SharedBackend`]),
//! and the clock is tokio's ([`Clock`]): the state machine has unit tests with fakes and a
//! paused clock (`tests.rs`), beside the end-to-end ones.

mod clock;
mod outcome;
mod persist;
mod request;
mod shared;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use clock::Clock;

use crate::config::{SharedConfig, TokenConfig};
use crate::metrics::Metrics;
use crate::ratelimit::SlidingWindow;
use crate::secret::Secret;
use crate::token::oauth::{OAuthClient, OAuthError, TokenEndpoint};
use crate::token::schedule::refresh_delay;
use crate::token::set::TokenSet;
use crate::token::shared::{SharedBackend, SharedError, SharedStore};
use crate::token::source::{RefreshError, TokenSource};
use crate::token::state::State;
use crate::token::{fingerprint, unix_seconds, NewToken, TokenStore, Trigger, MAX_VERSION};

/// First retry delay after a transient failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest delay between retries after transient failures.
pub const BACKOFF_CAP: Duration = Duration::from_secs(120);
/// Shortest delay between retries.
pub const BACKOFF_FLOOR: Duration = Duration::from_millis(250);
/// Delay after the endpoint rejected the credentials (they may be fixed in the secret files).
pub const REJECTED_RETRY: Duration = Duration::from_secs(300);
/// Wait after a 429 without `Retry-After` (RingCentral's advice).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Why a refresh did not produce a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshFailure {
    /// The token endpoint failed.
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    /// The endpoint asked to wait (429, 503 with `Retry-After`) and the wait is not over.
    /// Binding on every trigger, a manual refresh included.
    #[error("not before {0}s from now: the token endpoint asked to wait")]
    Waiting(u64),
    /// The endpoint rejected the credentials; the timer and 401s wait before asking again,
    /// a manual refresh (after fixing the secret files) does not.
    #[error(
        "the token endpoint rejected the credentials; next attempt in {0}s \
         (fix the secret files, then POST /refresh to retry now)"
    )]
    Rejected(u64),
    /// A 401-triggered refresh came sooner than `min_refresh_interval` after the last one (of
    /// any replica, when shared).
    #[error("a refresh after a 401 happened less than min_refresh_interval ago")]
    TooSoon,
    /// A manual refresh came sooner than `min_refresh_interval` after the last one.
    #[error("a manual refresh happened less than min_refresh_interval ago; retry in {}s", .0.as_secs().max(1))]
    Throttled(Duration),
    /// The profile's token request budget is spent: no request before the wait is over.
    #[error("the token request budget is spent; the next token request is possible in {}s", .0.as_secs().max(1))]
    OverBudget(Duration),
    /// Another replica holds the shared refresh lock and published nothing newer in time.
    #[error("another replica is refreshing (shared lock busy)")]
    LockBusy,
    /// The shared store is unreachable: no refresh without it (see the README).
    #[error(transparent)]
    Shared(#[from] SharedError),
}

impl RefreshFailure {
    /// How long an app or operator should wait before asking again, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RefreshFailure::Throttled(d) | RefreshFailure::OverBudget(d) => Some(*d),
            RefreshFailure::Waiting(s) => Some(Duration::from_secs(*s)),
            _ => None,
        }
    }
}

/// Why token requests are on hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// The server asked to wait: nothing overrides that.
    RetryAfter,
    /// The credentials were rejected: a manual refresh may try again at once.
    Rejected,
}

/// The refresher's state, changed only under its mutex (every token request is made under it).
struct Inner {
    refresh_token: Option<Secret>,
    refresh_expires_at: Option<SystemTime>,
    /// Fingerprints of refresh tokens exchanged or rejected, oldest first: never sent again.
    spent: VecDeque<String>,
    /// A fingerprint was added since the state file was last written.
    spent_unsaved: bool,
    failures: u32,
    /// No token request before this: the server asked to wait, or rejected the credentials.
    not_before: Option<(Instant, Hold)>,
    /// When the timer makes its next attempt.
    next_attempt: Instant,
    /// Versions continue from the state file's across restarts.
    version_floor: u64,
    /// When this replica last sent a token request for a 401.
    last_unauthorized: Option<Instant>,
    /// A token set obtained while the shared store was unreachable, still to be written.
    pending_write: Option<State>,
    /// This replica's own count of token requests (the shared count is in Redis).
    budget: SlidingWindow,
}

/// What `/token-info` reads without waiting for a refresh in progress.
#[derive(Debug, Default, Clone)]
struct Observed {
    next_attempt_unix: u64,
    has_refresh_token: bool,
    refresh_expires_unix: Option<u64>,
    /// The replica that obtained the current token (shared mode).
    refreshed_by: Option<String>,
    /// Why the last write of the state file failed (`None` after a successful one).
    state_file_error: Option<String>,
}

/// The outcome of the last manual refresh, shared with the calls that waited for it.
struct Manual {
    /// Counts the manual refreshes made: a call that saw a lower count when it arrived waited
    /// for this one, and shares its result.
    done: u64,
    finished: Instant,
    result: Result<u64, RefreshFailure>,
}

/// The refresher of one OAuth2 token profile, over a token endpoint `E` and, when replicas
/// share the token, a shared store `S`.
pub struct Refresher<E = OAuthClient, S = SharedStore> {
    name: String,
    store: Arc<TokenStore>,
    endpoint: E,
    cfg: TokenConfig,
    clock: Clock,
    inner: tokio::sync::Mutex<Inner>,
    /// Manual refreshes: one at a time, coalesced, at most one per `min_refresh_interval`.
    manual: tokio::sync::Mutex<Option<Manual>>,
    /// Manual refreshes made so far (read without the lock, to tell who waited for whom).
    manual_done: std::sync::atomic::AtomicU64,
    reschedule: Notify,
    /// Identifies the configuration a state file or shared set belongs to.
    profile_key: String,
    observed: std::sync::Mutex<Observed>,
    shared: Option<S>,
}

impl<E, S> std::fmt::Debug for Refresher<E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn jitter() -> f64 {
    rand::random::<f64>()
}

/// The version after the newest of `known`, when one is possible.
fn next_version(known: &[u64]) -> Option<u64> {
    known
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .checked_add(1)
        .filter(|v| *v < MAX_VERSION)
}

/// Identifies the configuration a set belongs to: token URL, client and grant.
pub fn profile_key(cfg: &TokenConfig) -> String {
    format!(
        "{}|{}|{}",
        cfg.token_url.as_deref().unwrap_or_default(),
        cfg.client_id.as_deref().unwrap_or_default(),
        cfg.grant.kind()
    )
}

impl Refresher {
    /// A refresher for `cfg` talking to its token endpoint, publishing into `store`; with
    /// `shared`, replicas share the token set through Redis.
    pub fn new(
        cfg: &TokenConfig,
        store: Arc<TokenStore>,
        metrics: Metrics,
        shared: Option<&SharedConfig>,
    ) -> Result<Self, String> {
        let endpoint = OAuthClient::new(cfg)?.reporting_to(store.clone());
        // A dead holder blocks the others for at most this long; a live one needs at most two
        // token requests (a refresh, then the primary grant) plus the Redis writes.
        let lock_ttl = cfg.request_timeout * 2 + Duration::from_secs(5);
        let shared = shared
            .map(|sc| SharedStore::new(sc, &cfg.name, &profile_key(cfg), lock_ttl, metrics))
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(Self::with_parts(
            cfg,
            store,
            endpoint,
            shared,
            Clock::system(),
        ))
    }
}

impl<E: TokenEndpoint, S: SharedBackend> Refresher<E, S> {
    /// A refresher of `cfg` over `endpoint` and `shared`, reading the time from `clock`.
    pub fn with_parts(
        cfg: &TokenConfig,
        store: Arc<TokenStore>,
        endpoint: E,
        shared: Option<S>,
        clock: Clock,
    ) -> Self {
        Refresher {
            name: cfg.name.clone(),
            store,
            endpoint,
            cfg: cfg.clone(),
            clock,
            inner: tokio::sync::Mutex::new(Inner {
                refresh_token: None,
                refresh_expires_at: None,
                spent: VecDeque::new(),
                spent_unsaved: false,
                failures: 0,
                not_before: None,
                next_attempt: clock.now(),
                version_floor: 0,
                last_unauthorized: None,
                pending_write: None,
                budget: SlidingWindow::new(cfg.request_budget),
            }),
            manual: tokio::sync::Mutex::new(None),
            manual_done: std::sync::atomic::AtomicU64::new(0),
            reschedule: Notify::new(),
            profile_key: profile_key(cfg),
            observed: std::sync::Mutex::new(Observed::default()),
            shared,
        }
    }

    /// The profile's store.
    pub fn store(&self) -> &Arc<TokenStore> {
        &self.store
    }

    fn observed(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This replica's name and the replica that obtained the current token (shared mode).
    pub fn shared_info(&self) -> Option<(String, Option<String>)> {
        self.shared
            .as_ref()
            .map(|s| (s.replica().to_owned(), self.observed().refreshed_by.clone()))
    }

    /// When the next timed attempt is due (unix seconds).
    pub fn next_attempt_unix(&self) -> u64 {
        self.observed().next_attempt_unix
    }

    /// Whether a refresh token is held, and until when it is valid.
    pub fn refresh_token_info(&self) -> (bool, Option<u64>) {
        let o = self.observed();
        (o.has_refresh_token, o.refresh_expires_unix)
    }

    /// Takes over a token set obtained elsewhere (state file, shared store): its spent refresh
    /// tokens, its refresh token unless spent, and its access token when newer and unexpired.
    /// Returns whether it was published.
    fn adopt(&self, inner: &mut Inner, st: &State, refreshed_by: Option<&str>) -> bool {
        for fp in &st.spent_refresh_tokens {
            Self::mark_spent(inner, fp.clone());
        }
        let set = st.token_set();
        let now = self.clock.wall();
        // The newest set known, published or not: a state file's whose access token expired
        // still brought its refresh token. An older set (Redis restored from an old snapshot,
        // a stale state file) carries a refresh token that has been exchanged since.
        let newest = inner.version_floor.max(self.store.version());
        inner.version_floor = newest.max(st.version);
        if st.version < newest {
            return false;
        }
        let rt_spent = set
            .refresh_token
            .as_ref()
            .is_some_and(|rt| inner.spent.contains(&fingerprint(rt)));
        if set.refresh_expires_at.is_none_or(|e| e > now) && !rt_spent {
            inner.refresh_token = set.refresh_token.clone();
            inner.refresh_expires_at = set.refresh_expires_at;
        }
        if set.expires_at <= now + Duration::from_secs(1) || st.version == self.store.version() {
            self.set_next_attempt(inner, inner.next_attempt);
            return false;
        }
        match self.store.publish_versioned(
            NewToken {
                access_token: set.access_token.clone(),
                expires_at: Some(set.expires_at),
                obtained_at: set.obtained_at,
            },
            st.version,
        ) {
            Ok(Some(_)) => {
                let delay = refresh_delay(set.lifetime(), self.cfg.refresh_margin, jitter());
                let wait = (set.obtained_at + delay)
                    .duration_since(now)
                    .unwrap_or(Duration::ZERO);
                inner.failures = 0;
                inner.not_before = None;
                self.set_next_attempt(inner, self.clock.now() + wait.max(BACKOFF_FLOOR));
                self.store.set_retry_after(1);
                if let Some(by) = refreshed_by {
                    self.observed().refreshed_by = Some(by.to_owned());
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(token = %self.name, error = %e, "an adopted token is unusable");
                false
            }
        }
    }

    /// Plans the timed refresh of `st` (a set that is not due yet) at its jittered due time.
    fn schedule_for(&self, inner: &mut Inner, st: &State) {
        let set = st.token_set();
        let delay = refresh_delay(set.lifetime(), self.cfg.refresh_margin, jitter());
        let wait = (set.obtained_at + delay)
            .duration_since(self.clock.wall())
            .unwrap_or(Duration::ZERO)
            .max(BACKOFF_FLOOR);
        self.set_next_attempt(inner, self.clock.now() + wait);
    }

    fn set_next_attempt(&self, inner: &mut Inner, at: Instant) {
        inner.next_attempt = at;
        let mut o = self.observed();
        o.has_refresh_token = inner.refresh_token.is_some();
        o.refresh_expires_unix = inner.refresh_expires_at.map(unix_seconds);
        o.next_attempt_unix =
            unix_seconds(self.clock.wall() + at.saturating_duration_since(self.clock.now()));
    }

    /// Obtains a new token now, single-flight. With `seen_version`, returns at once when the
    /// store already holds a newer token than that (someone else refreshed meanwhile).
    pub async fn refresh(
        &self,
        trigger: Trigger,
        seen_version: Option<u64>,
    ) -> Result<u64, RefreshFailure> {
        let mut inner = self.inner.lock().await;
        self.refresh_locked(&mut inner, trigger, seen_version).await
    }

    /// A manual refresh (`POST /refresh`): calls that arrive while one runs share its result;
    /// one sooner than `min_refresh_interval` after the last is refused with the time to wait.
    pub async fn refresh_manual(&self) -> Result<u64, RefreshFailure> {
        use std::sync::atomic::Ordering;
        let seen = self.manual_done.load(Ordering::Acquire);
        let mut last = self.manual.lock().await;
        let now = self.clock.now();
        if let Some(m) = last.as_ref() {
            if m.done > seen {
                return m.result.clone();
            }
            let next = m.finished + self.cfg.min_refresh_interval;
            if now < next {
                return Err(RefreshFailure::Throttled(next - now));
            }
        }
        let result = self.refresh(Trigger::Manual, None).await;
        let done = self.manual_done.fetch_add(1, Ordering::AcqRel) + 1;
        *last = Some(Manual {
            done,
            finished: self.clock.now(),
            result: result.clone(),
        });
        result
    }

    async fn refresh_locked(
        &self,
        inner: &mut Inner,
        trigger: Trigger,
        seen_version: Option<u64>,
    ) -> Result<u64, RefreshFailure> {
        if let Some(v) = seen_version {
            let current = self.store.version();
            if current > v {
                return Ok(current);
            }
        }
        if let Some(v) = self.take_over_state_file(inner, trigger, seen_version) {
            return Ok(v);
        }
        let now = self.clock.now();
        if let Some((nb, hold)) = inner.not_before {
            if now < nb {
                let secs = nb.duration_since(now).as_secs().max(1);
                match hold {
                    Hold::RetryAfter => return Err(RefreshFailure::Waiting(secs)),
                    // An operator asking for a refresh has presumably fixed the credentials.
                    Hold::Rejected if trigger == Trigger::Manual => {}
                    Hold::Rejected => return Err(RefreshFailure::Rejected(secs)),
                }
            }
        }
        if let Some(shared) = &self.shared {
            return self
                .refresh_shared(inner, shared, trigger, seen_version)
                .await;
        }
        self.refresh_alone(inner, trigger).await
    }

    /// One refresh with no other replica to coordinate with: request, then commit or fail.
    async fn refresh_alone(
        &self,
        inner: &mut Inner,
        trigger: Trigger,
    ) -> Result<u64, RefreshFailure> {
        let Some(version) = next_version(&[self.store.version(), inner.version_floor]) else {
            return Err(self.versions_exhausted(inner));
        };
        if trigger == Trigger::Unauthorized {
            inner.last_unauthorized = Some(self.clock.now());
        }
        match self.obtain(inner).await {
            Ok(set) => Ok(self.commit(inner, trigger, set, version)),
            Err(e) => Err(self.failed(inner, trigger, e)),
        }
    }

    /// Whether a token obtained at `obtained` with `lifetime` is due for its refresh (at the
    /// earliest jittered point).
    fn is_due(&self, st: &State) -> bool {
        let set = st.token_set();
        let earliest = refresh_delay(set.lifetime(), self.cfg.refresh_margin, 1.0);
        self.clock.wall() >= set.obtained_at + earliest
    }

    /// The state to persist or share for `set`, with the spent refresh tokens.
    fn state_of(&self, inner: &Inner, version: u64, set: &TokenSet) -> State {
        State::new(&self.profile_key, version, set).with_spent(inner.spent.iter().cloned())
    }

    /// Handles a 401 for a request sent with `failed_version`: returns once the store holds a
    /// newer token (refreshing single-flight if needed), or why it does not. At most one
    /// 401-triggered token request per `min_refresh_interval`, for all replicas together when
    /// shared; a 401 that a newer token answers counts for nothing.
    pub async fn on_unauthorized(&self, failed_version: u64) -> Result<u64, RefreshFailure> {
        let current = self.store.version();
        if current > failed_version {
            return Ok(current);
        }
        let mut inner = self.inner.lock().await;
        let current = self.store.version();
        if current > failed_version {
            return Ok(current);
        }
        if let Some(shared) = &self.shared {
            if let Some(v) = self
                .newer_from_shared(&mut inner, shared, failed_version)
                .await?
            {
                return Ok(v);
            }
        }
        if inner
            .last_unauthorized
            .is_some_and(|t| self.clock.now().duration_since(t) < self.cfg.min_refresh_interval)
        {
            return Err(RefreshFailure::TooSoon);
        }
        // Shared: the fleet's claim on its one 401 refresh per interval is taken under the
        // refresh lock, once a token request is due (refresh_under_lock).
        self.refresh_locked(&mut inner, Trigger::Unauthorized, Some(failed_version))
            .await
    }

    /// The timed refresh loop, until `cancel` fires. Obtains the first token unless the state
    /// file provided one. In shared mode a second task (in `tasks`) follows the shared store.
    pub async fn run(
        self: Arc<Self>,
        cancel: CancellationToken,
        tasks: tokio_util::task::TaskTracker,
    ) {
        if self.shared.is_some() {
            tasks.spawn(self.clone().follow_shared(cancel.clone()));
        }
        if !self.load_state().await {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.refresh(Trigger::Startup, None) => {}
            }
            self.ensure_future_attempt().await;
        }
        loop {
            let due = self.inner.lock().await.next_attempt;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.reschedule.notified() => continue,
                _ = tokio::time::sleep_until(due) => {}
            }
            let trigger = if self.store.load().is_some() {
                Trigger::Timer
            } else {
                Trigger::Startup
            };
            let _ = self.refresh(trigger, None).await;
            self.ensure_future_attempt().await;
        }
    }

    /// Every outcome plans the next attempt; should one not, the timer still never fires again
    /// at once (a loop of attempts is exactly what must never happen).
    async fn ensure_future_attempt(&self) {
        let mut inner = self.inner.lock().await;
        let now = self.clock.now();
        if inner.next_attempt <= now {
            self.set_next_attempt(&mut inner, now + BACKOFF_FLOOR);
        }
    }
}

impl<E: TokenEndpoint, S: SharedBackend> TokenSource for Refresher<E, S> {
    fn refresh_now(&self, trigger: Trigger) -> BoxFuture<'_, Result<(), RefreshError>> {
        Box::pin(async move {
            let result = if trigger == Trigger::Manual {
                self.refresh_manual().await
            } else {
                self.refresh(trigger, None).await
            };
            result.map(|_| ()).map_err(|e| match e.retry_after() {
                Some(retry_after) => RefreshError::Throttled {
                    message: e.to_string(),
                    retry_after,
                },
                None => RefreshError::Failed(e.to_string()),
            })
        })
    }

    fn on_unauthorized(&self, failed_version: u64) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async move {
            match Refresher::on_unauthorized(self, failed_version).await {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::info!(token = %self.name, reason = %e, "no newer token after a 401");
                    None
                }
            }
        })
    }

    fn info(&self) -> Option<serde_json::Value> {
        let (has_rt, rt_exp) = self.refresh_token_info();
        let mut v = serde_json::json!({
            "has_refresh_token": has_rt,
            "refresh_token_expires_at": rt_exp,
            "next_refresh_at": self.next_attempt_unix(),
        });
        if let (Some((replica, refreshed_by)), Some(obj)) = (self.shared_info(), v.as_object_mut())
        {
            obj.insert(
                "shared".into(),
                serde_json::json!({
                    "replica": replica,
                    "refreshed_by": refreshed_by,
                }),
            );
        }
        Some(v)
    }
}
