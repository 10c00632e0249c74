//! Keeps an OAuth2 profile's token fresh: the timed refresh before expiry, single-flight
//! refreshes on demand (401, manual), refresh-token rotation, failure backoff, the token
//! request budget and the state file.
//!
//! Every token request of a profile happens under one async mutex, so refreshes are
//! single-flight and a rotated refresh token is always the newest one. A refresh token that
//! has been exchanged (or rejected) is remembered by its fingerprint, in memory, in the state
//! file and in the shared entry, and is never sent again. Every token request first takes a
//! place in the profile's budget (`--token-request-budget`, all replicas together when
//! shared): whatever fails, whatever Redis holds, the token endpoint never sees more.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Grant, SharedConfig, TokenConfig};
use crate::metrics::Metrics;
use crate::ratelimit::SlidingWindow;
use crate::secret::Secret;
use crate::token::oauth::{FailureClass, GrantRequest, OAuthClient, OAuthError, TokenEndpoint};
use crate::token::schedule::{backoff, refresh_delay};
use crate::token::set::TokenSet;
use crate::token::shared::{Entry, Rejected, SharedError, SharedSet, SharedStore};
use crate::token::state::{self, State, MAX_SPENT};
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
/// Reads of the shared store prompted by notifications are at least this far apart.
const NOTIFIED_READ_GAP: Duration = Duration::from_millis(100);

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
    last_unauthorized: Option<Instant>,
    /// A token set obtained while the shared store was unreachable, still to be written.
    pending_write: Option<State>,
    /// This replica's own count of token requests (the shared count is in Redis).
    budget: SlidingWindow,
}

/// The outcome of the last manual refresh, shared with the calls that waited for it.
struct Manual {
    finished: Instant,
    result: Result<u64, RefreshFailure>,
}

/// The refresher of one OAuth2 token profile.
pub struct Refresher {
    name: String,
    store: Arc<TokenStore>,
    client: OAuthClient,
    cfg: TokenConfig,
    metrics: Metrics,
    inner: tokio::sync::Mutex<Inner>,
    /// Manual refreshes: one at a time, coalesced, at most one per `min_refresh_interval`.
    manual: tokio::sync::Mutex<Option<Manual>>,
    reschedule: Notify,
    /// Identifies the configuration a state file belongs to.
    profile_key: String,
    next_attempt_unix: std::sync::atomic::AtomicU64,
    /// Whether a refresh token is held and its expiry, readable without waiting for a refresh.
    rt_snapshot: std::sync::Mutex<(bool, Option<u64>)>,
    shared: Option<SharedStore>,
    /// The replica that obtained the current token (shared mode).
    refreshed_by: std::sync::Mutex<Option<String>>,
    /// Why the last write of the state file failed (`None` after a successful one).
    state_file_error: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Refresher {
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

impl Refresher {
    /// A refresher for `cfg`, publishing into `store`; with `shared`, replicas share the token
    /// set through Redis.
    pub fn new(
        cfg: &TokenConfig,
        store: Arc<TokenStore>,
        metrics: Metrics,
        shared: Option<&SharedConfig>,
    ) -> Result<Self, String> {
        let client = OAuthClient::new(cfg)?;
        let profile_key = format!(
            "{}|{}|{}",
            cfg.token_url.as_deref().unwrap_or_default(),
            cfg.client_id.as_deref().unwrap_or_default(),
            cfg.grant.kind()
        );
        // A dead holder blocks the others for at most this long; a live one needs at most two
        // token requests (a refresh, then the primary grant) plus the Redis writes.
        let lock_ttl = cfg.request_timeout * 2 + Duration::from_secs(5);
        let shared = shared
            .map(|sc| SharedStore::new(sc, &cfg.name, &profile_key, lock_ttl, metrics.clone()))
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(Refresher {
            name: cfg.name.clone(),
            store,
            client,
            cfg: cfg.clone(),
            metrics,
            inner: tokio::sync::Mutex::new(Inner {
                refresh_token: None,
                refresh_expires_at: None,
                spent: VecDeque::new(),
                spent_unsaved: false,
                failures: 0,
                not_before: None,
                next_attempt: Instant::now(),
                version_floor: 0,
                last_unauthorized: None,
                pending_write: None,
                budget: SlidingWindow::new(cfg.request_budget),
            }),
            manual: tokio::sync::Mutex::new(None),
            reschedule: Notify::new(),
            profile_key,
            next_attempt_unix: std::sync::atomic::AtomicU64::new(0),
            rt_snapshot: std::sync::Mutex::new((false, None)),
            shared,
            refreshed_by: std::sync::Mutex::new(None),
            state_file_error: std::sync::Mutex::new(None),
        })
    }

    /// The profile's store.
    pub fn store(&self) -> &Arc<TokenStore> {
        &self.store
    }

    /// This replica's name and the replica that obtained the current token (shared mode).
    pub fn shared_info(&self) -> Option<(String, Option<String>)> {
        self.shared.as_ref().map(|s| {
            (
                s.replica().to_owned(),
                self.refreshed_by
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            )
        })
    }

    /// Loads a still-usable token set from the state file, if configured. Returns whether a
    /// valid access token was published (no token request needed).
    pub async fn load_state(&self) -> bool {
        let Some(path) = &self.cfg.state_file else {
            return false;
        };
        let st = match state::load(path) {
            Ok(Some(s)) => s,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(token = %self.name, error = %e, "ignoring the state file");
                return false;
            }
        };
        if st.profile != self.profile_key {
            tracing::warn!(token = %self.name, path = %path.display(), "the state file belongs to another token endpoint, client or grant; ignoring it");
            return false;
        }
        let mut inner = self.inner.lock().await;
        let published = self.adopt(&mut inner, &st, None);
        if published {
            self.store.record_attempt(Trigger::Startup.as_str(), Ok(()));
            tracing::info!(token = %self.name, version = st.version, expires_at = st.expires_at, "reusing the token from the state file");
        } else {
            tracing::info!(token = %self.name, has_refresh_token = inner.refresh_token.is_some(), "the state file holds no usable access token");
        }
        published
    }

    /// Remembers that a refresh token must never be sent again.
    fn mark_spent(inner: &mut Inner, fp: String) {
        if !inner.spent.contains(&fp) {
            inner.spent_unsaved = true;
            inner.spent.push_back(fp);
            while inner.spent.len() > MAX_SPENT {
                inner.spent.pop_front();
            }
        }
    }

    /// Takes over a token set obtained elsewhere (state file, shared store): its spent refresh
    /// tokens, its refresh token unless spent, and its access token when newer and unexpired.
    /// Returns whether it was published.
    fn adopt(&self, inner: &mut Inner, st: &State, refreshed_by: Option<&str>) -> bool {
        for fp in &st.spent_refresh_tokens {
            Self::mark_spent(inner, fp.clone());
        }
        let set = st.token_set();
        let now = SystemTime::now();
        // The newest set known, published or not: a state file's whose access token expired
        // still brought its refresh token. An older set (Redis restored from an old snapshot,
        // a stale state file) carries a refresh token that has been exchanged since.
        let newest = inner.version_floor.max(self.store.version());
        inner.version_floor = newest.max(st.version);
        if st.version < newest {
            return false;
        }
        let rt_usable = set
            .refresh_token
            .as_ref()
            .is_some_and(|rt| !inner.spent.contains(&fingerprint(rt)));
        if set.refresh_expires_at.is_none_or(|e| e > now)
            && (rt_usable || set.refresh_token.is_none())
        {
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
                self.set_next_attempt(inner, Instant::now() + wait.max(BACKOFF_FLOOR));
                self.store.set_retry_after(1);
                if let Some(by) = refreshed_by {
                    *self.refreshed_by.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(by.to_owned());
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

    /// Adopts a set read from the shared store (already checked by the store: sealed when a
    /// key is configured, well-formed, of this configuration), counting it as a `shared`
    /// refresh.
    fn adopt_shared(&self, inner: &mut Inner, remote: &SharedSet) -> bool {
        let published = self.adopt(inner, &remote.state, Some(&remote.refreshed_by));
        if published {
            self.metrics
                .token_refreshes
                .with_label_values(&[self.name.as_str(), Trigger::Shared.as_str(), "success"])
                .inc();
            self.store.record_attempt(Trigger::Shared.as_str(), Ok(()));
            self.persist(inner, &remote.state.token_set(), remote.state.version);
            self.reschedule.notify_one();
            tracing::debug!(token = %self.name, version = remote.state.version, refreshed_by = %remote.refreshed_by, "adopted the shared token");
        }
        published
    }

    /// Plans the timed refresh of `st` (a set that is not due yet) at its jittered due time.
    fn schedule_for(&self, inner: &mut Inner, st: &State) {
        let set = st.token_set();
        let delay = refresh_delay(set.lifetime(), self.cfg.refresh_margin, jitter());
        let wait = (set.obtained_at + delay)
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .max(BACKOFF_FLOOR);
        self.set_next_attempt(inner, Instant::now() + wait);
    }

    fn set_next_attempt(&self, inner: &mut Inner, at: Instant) {
        *self.rt_snapshot.lock().unwrap_or_else(|e| e.into_inner()) = (
            inner.refresh_token.is_some(),
            inner.refresh_expires_at.map(unix_seconds),
        );
        inner.next_attempt = at;
        let unix = unix_seconds(SystemTime::now() + at.saturating_duration_since(Instant::now()));
        self.next_attempt_unix
            .store(unix, std::sync::atomic::Ordering::Relaxed);
    }

    /// When the next timed attempt is due (unix seconds).
    pub fn next_attempt_unix(&self) -> u64 {
        self.next_attempt_unix
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a refresh token is held, and until when it is valid.
    pub fn refresh_token_info(&self) -> (bool, Option<u64>) {
        *self.rt_snapshot.lock().unwrap_or_else(|e| e.into_inner())
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
        let arrived = Instant::now();
        let mut last = self.manual.lock().await;
        if let Some(m) = last.as_ref() {
            if m.finished >= arrived {
                return m.result.clone();
            }
            let next = m.finished + self.cfg.min_refresh_interval;
            if arrived < next {
                return Err(RefreshFailure::Throttled(next - arrived));
            }
        }
        let result = self.refresh(Trigger::Manual, None).await;
        *last = Some(Manual {
            finished: Instant::now(),
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
        let now = Instant::now();
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
        if trigger == Trigger::Unauthorized {
            inner.last_unauthorized = Some(now);
        }
        if self.shared.is_some() {
            return self.refresh_shared(inner, trigger, seen_version).await;
        }
        let Some(version) = next_version(&[self.store.version(), inner.version_floor]) else {
            return Err(self.versions_exhausted(inner));
        };
        match self.obtain(inner).await {
            Ok(set) => Ok(self.commit(inner, trigger, set, version)),
            Err(e) => Err(self.failed(inner, trigger, e)),
        }
    }

    /// No newer version can follow the newest known one: only a state file or shared entry
    /// written by someone else can get there. Nothing is requested; the current token is kept.
    fn versions_exhausted(&self, inner: &mut Inner) -> RefreshFailure {
        tracing::error!(token = %self.name, "the token versions are exhausted (a state file or shared entry claimed a version no newer one can follow); remove it, and seal shared entries with --shared-key-file");
        self.set_next_attempt(inner, Instant::now() + REJECTED_RETRY);
        RefreshFailure::OAuth(OAuthError::Credentials(
            "no newer token version is possible".into(),
        ))
    }

    /// Without a shared store, another process may refresh through the state file (the
    /// `refresh` subcommand from a CronJob or an operator): the refresh token held here has then
    /// been exchanged, and only the file's newer one still works. Takes a newer set from the
    /// file before any token request; returns the version to answer with when that set makes
    /// the request unnecessary (a 401 answered by its newer token, a timer not due yet).
    fn take_over_state_file(
        &self,
        inner: &mut Inner,
        trigger: Trigger,
        seen_version: Option<u64>,
    ) -> Option<u64> {
        if self.shared.is_some() {
            return None;
        }
        let path = self.cfg.state_file.as_ref()?;
        let st = state::load(path).ok().flatten()?;
        if st.profile != self.profile_key
            || st.version <= inner.version_floor.max(self.store.version())
        {
            return None;
        }
        tracing::info!(token = %self.name, version = st.version, "the state file holds a newer token set, written by another process; taking it over");
        let published = self.adopt(inner, &st, None);
        let current = self.store.version();
        match seen_version {
            Some(v) => (current > v).then_some(current),
            None if published
                && matches!(trigger, Trigger::Timer | Trigger::Startup)
                && !self.is_due(&st) =>
            {
                Some(current)
            }
            None => None,
        }
    }

    /// Whether a token obtained at `obtained` with `lifetime` is due for its refresh (at the
    /// earliest jittered point).
    fn is_due(&self, st: &State) -> bool {
        let set = st.token_set();
        let earliest = refresh_delay(set.lifetime(), self.cfg.refresh_margin, 1.0);
        SystemTime::now() >= set.obtained_at + earliest
    }

    /// Whether the shared set `remote` (already adopted) makes a token request unnecessary,
    /// and the version to answer with. A 401 for `seen_version` is answered only by a newer
    /// token, however fresh the rejected one looks; a manual refresh never is; the timer is
    /// when the set is not due yet, and then plans its next attempt at the set's due time
    /// (the timer may have fired early, after a failed manual or 401 refresh: returning
    /// without a new plan would fire it again at once, in a loop).
    fn answered(
        &self,
        inner: &mut Inner,
        remote: &SharedSet,
        seen_version: Option<u64>,
        force: bool,
    ) -> Option<u64> {
        let current = self.store.version();
        match seen_version {
            Some(v) => (current > v).then_some(current),
            None if force => None,
            None => {
                let fresh = remote.state.expires_at > unix_seconds(SystemTime::now())
                    && !self.is_due(&remote.state);
                if fresh && current >= remote.state.version {
                    self.schedule_for(inner, &remote.state);
                    Some(current)
                } else {
                    None
                }
            }
        }
    }

    /// The shared-store refresh: adopt a newer set when there is one; otherwise take the lock,
    /// refresh with the newest refresh token, write it fenced by version, then use it.
    async fn refresh_shared(
        &self,
        inner: &mut Inner,
        trigger: Trigger,
        seen_version: Option<u64>,
    ) -> Result<u64, RefreshFailure> {
        let Some(shared) = self.shared.as_ref() else {
            return Err(RefreshFailure::LockBusy);
        };
        let force = trigger == Trigger::Manual;
        let remote = match shared.read().await {
            Ok(r) => r,
            Err(e) => return self.shared_unavailable(inner, trigger, e).await,
        };
        let mut seen_remote = 0;
        if let Entry::Set(r) = &remote {
            seen_remote = r.state.version;
            self.adopt_shared(inner, r);
            if let Some(v) = self.answered(inner, r, seen_version, force) {
                return Ok(v);
            }
        }
        // Another replica was asked to wait: so is this one (the limit is the fleet's).
        if let Ok(Some(left)) = shared.hold_left().await {
            return Err(self.held_by_another(inner, left));
        }
        match shared.try_lock().await {
            Ok(true) => {}
            Ok(false) => return self.wait_for_holder(inner, shared, seen_remote).await,
            Err(e) => return self.shared_unavailable(inner, trigger, e).await,
        }
        let result = self
            .refresh_under_lock(inner, shared, trigger, force, seen_version)
            .await;
        if let Err(e) = shared.unlock().await {
            tracing::debug!(token = %self.name, error = %e, "releasing the shared lock failed; it expires by itself");
        }
        result
    }

    async fn refresh_under_lock(
        &self,
        inner: &mut Inner,
        shared: &SharedStore,
        trigger: Trigger,
        force: bool,
        seen_version: Option<u64>,
    ) -> Result<u64, RefreshFailure> {
        // Someone may have written between our read and the lock.
        let remote = match shared.read().await {
            Ok(r) => r,
            Err(e) => return self.shared_unavailable(inner, trigger, e).await,
        };
        let (remote_version, replacing): (u64, Option<Rejected>) = match &remote {
            Entry::None => (0, None),
            Entry::Set(r) => {
                self.adopt_shared(inner, r);
                if let Some(v) = self.answered(inner, r, seen_version, force) {
                    return Ok(v);
                }
                (r.state.version, None)
            }
            // Never used, never a fence: replaced by what this refresh obtains, if it is still
            // the entry that was judged when the write comes.
            Entry::Rejected(rejected) => (0, Some(rejected.clone())),
        };
        let Some(version) =
            next_version(&[remote_version, self.store.version(), inner.version_floor])
        else {
            return Err(self.versions_exhausted(inner));
        };
        let set = match self.obtain(inner).await {
            Ok(set) => set,
            Err(e) => {
                let failure = self.failed(inner, trigger, e);
                if let Some((until, Hold::RetryAfter)) = inner.not_before {
                    let wait = until.saturating_duration_since(Instant::now());
                    if let Err(e) = shared.hold(wait).await {
                        tracing::debug!(token = %self.name, error = %e, "the wait could not be shared");
                    }
                }
                return Err(failure);
            }
        };
        let mut to_store = set.clone();
        if to_store.refresh_token.is_none() {
            to_store.refresh_token = inner.refresh_token.clone();
            to_store.refresh_expires_at = inner.refresh_expires_at;
        }
        let state = self.state_of(inner, version, &to_store);
        let _ = shared.extend().await;
        // The new refresh token reaches Redis before the new access token is used anywhere.
        match shared.write(state, replacing.as_ref()).await {
            Ok(true) => {
                *self.refreshed_by.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(shared.replica().to_owned());
                Ok(self.commit(inner, trigger, set, version))
            }
            Ok(false) => {
                // Another replica wrote a newer set meanwhile (a lock that expired under one
                // of us). Its set is the newest: use it. When it cannot be used, keep the set
                // this request obtained rather than waste it, and plan as for any new token.
                tracing::warn!(token = %self.name, version, "the write to the shared store was fenced off by a newer set; using that one");
                if let Ok(Entry::Set(r)) = shared.read().await {
                    if self.adopt_shared(inner, &r) || self.store.version() >= r.state.version {
                        return Ok(self.store.version());
                    }
                }
                let version =
                    next_version(&[self.store.version(), inner.version_floor]).unwrap_or(version);
                Ok(self.commit(inner, trigger, set, version))
            }
            Err(e) => {
                tracing::error!(token = %self.name, error = %e, "the new token could not be written to the shared store; using it here and retrying the write");
                inner.pending_write = Some(self.state_of(inner, version, &to_store));
                Ok(self.commit(inner, trigger, set, version))
            }
        }
    }

    /// The state to persist or share for `set`, with the spent refresh tokens.
    fn state_of(&self, inner: &Inner, version: u64, set: &TokenSet) -> State {
        State::new(&self.profile_key, version, set).with_spent(inner.spent.iter().cloned())
    }

    /// Another replica was answered `Retry-After` and `left` of it remains: hold here too, and
    /// plan the timer after it (spread, so that the replicas do not all ask at its end).
    fn held_by_another(&self, inner: &mut Inner, left: Duration) -> RefreshFailure {
        let now = Instant::now();
        inner.not_before = Some((now + left, Hold::RetryAfter));
        let spread = (left / 10 + BACKOFF_FLOOR).mul_f64(jitter());
        self.set_next_attempt(inner, now + left + spread);
        self.store
            .set_retry_after((left + spread).as_secs().clamp(1, 300));
        tracing::info!(token = %self.name, wait_ms = left.as_millis() as u64, "another replica was asked to wait by the token endpoint; waiting too");
        RefreshFailure::Waiting(left.as_secs().max(1))
    }

    /// Another replica holds the lock: wait (bounded by the lock's TTL) for the set it writes.
    async fn wait_for_holder(
        &self,
        inner: &mut Inner,
        shared: &SharedStore,
        seen_remote: u64,
    ) -> Result<u64, RefreshFailure> {
        let deadline = Instant::now() + shared.lock_ttl();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(Entry::Set(r)) = shared.read().await {
                if r.state.version > seen_remote {
                    self.adopt_shared(inner, &r);
                    return Ok(self.store.version());
                }
            }
        }
        // The holder died or is stuck; its lock expires and the next attempt may take it.
        self.set_next_attempt(inner, Instant::now() + BACKOFF_FLOOR);
        Err(RefreshFailure::LockBusy)
    }

    /// Redis is unreachable. Grants that issue no refresh token cannot race on rotation, so
    /// they refresh alone (within this replica's own budget); the others wait for Redis rather
    /// than rotate a refresh token that other replicas hold (or each log in, opening a session
    /// per replica).
    async fn shared_unavailable(
        &self,
        inner: &mut Inner,
        trigger: Trigger,
        e: SharedError,
    ) -> Result<u64, RefreshFailure> {
        if matches!(self.cfg.grant, Grant::ClientCredentials) && inner.refresh_token.is_none() {
            tracing::warn!(token = %self.name, error = %e, "shared store unreachable; client_credentials issues no refresh token, refreshing alone");
            let Some(version) = next_version(&[self.store.version(), inner.version_floor]) else {
                return Err(self.versions_exhausted(inner));
            };
            return match self.obtain(inner).await {
                Ok(set) => Ok(self.commit(inner, trigger, set, version)),
                Err(e) => Err(self.failed(inner, trigger, e)),
            };
        }
        inner.failures = inner.failures.saturating_add(1);
        let delay = backoff(
            inner.failures - 1,
            BACKOFF_BASE,
            Duration::from_secs(30),
            BACKOFF_FLOOR,
            jitter(),
        );
        self.set_next_attempt(inner, Instant::now() + delay);
        self.store.set_retry_after(delay.as_secs().max(1));
        self.store
            .record_attempt(trigger.as_str(), Err(e.to_string()));
        tracing::warn!(token = %self.name, error = %e, retry_in_ms = delay.as_millis() as u64, "shared store unreachable; not refreshing without it (the current token is kept while valid)");
        Err(e.into())
    }

    /// Persists a token set to the state file, if one is configured.
    fn persist(&self, inner: &mut Inner, set: &TokenSet, version: u64) {
        inner.spent_unsaved = false;
        if let Some(path) = &self.cfg.state_file {
            let mut persisted = set.clone();
            persisted.refresh_token = inner.refresh_token.clone();
            persisted.refresh_expires_at = inner.refresh_expires_at;
            let saved = state::save(path, &self.state_of(inner, version, &persisted));
            if let Err(e) = &saved {
                tracing::error!(token = %self.name, error = %e, "cannot write the state file");
            }
            *self
                .state_file_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = saved.err().map(|e| e.to_string());
        }
    }

    /// Persists the current token again when a failed attempt spent a refresh token, so that
    /// it is remembered across a restart.
    fn persist_spent(&self, inner: &mut Inner) {
        if self.cfg.state_file.is_none() || !inner.spent_unsaved {
            return;
        }
        if let Some(t) = self.store.current() {
            let set = TokenSet {
                access_token: t.access_token().clone(),
                expires_at: t.expires_at().unwrap_or_else(SystemTime::now),
                refresh_token: inner.refresh_token.clone(),
                refresh_expires_at: inner.refresh_expires_at,
                scope: None,
                obtained_at: t.obtained_at(),
            };
            self.persist(inner, &set, t.version());
        }
    }

    /// Why the last write of the state file failed, if it did.
    pub fn state_file_error(&self) -> Option<String> {
        self.state_file_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records a successful token request: refresh token kept, state persisted, token
    /// published, next refresh scheduled.
    fn commit(&self, inner: &mut Inner, trigger: Trigger, set: TokenSet, version: u64) -> u64 {
        self.metrics
            .token_refreshes
            .with_label_values(&[self.name.as_str(), trigger.as_str(), "success"])
            .inc();
        if set.refresh_token.is_some() {
            inner.refresh_token = set.refresh_token.clone();
            inner.refresh_expires_at = set.refresh_expires_at;
        }
        inner.version_floor = inner.version_floor.max(version);
        // Persist first: the rotated refresh token must survive a crash right after.
        self.persist(inner, &set, version);
        let published = self.store.publish_versioned(
            NewToken {
                access_token: set.access_token.clone(),
                expires_at: Some(set.expires_at),
                obtained_at: set.obtained_at,
            },
            version,
        );
        match published {
            Ok(Some(_)) => {}
            // A newer version was published meanwhile (adopted from elsewhere): it stays.
            Ok(None) => {}
            // parse_success already checked the token; this is defensive.
            Err(e) => {
                tracing::error!(token = %self.name, error = %e, "the new token could not be published")
            }
        }
        inner.failures = 0;
        inner.not_before = None;
        let delay = refresh_delay(set.lifetime(), self.cfg.refresh_margin, jitter());
        self.set_next_attempt(inner, Instant::now() + delay.max(BACKOFF_FLOOR));
        self.store.set_retry_after(1);
        self.store.record_attempt(trigger.as_str(), Ok(()));
        tracing::debug!(
            token = %self.name,
            trigger = trigger.as_str(),
            version,
            lifetime_s = set.lifetime().as_secs(),
            next_refresh_in_s = delay.as_secs(),
            rotated_refresh_token = set.refresh_token.is_some(),
            "token refreshed"
        );
        if trigger != Trigger::Timer {
            self.reschedule.notify_one();
        }
        version
    }

    /// Handles a failed attempt: the endpoint's failures back off; a spent budget waits for
    /// room. Returns the failure to report.
    fn failed(
        &self,
        inner: &mut Inner,
        trigger: Trigger,
        failure: RefreshFailure,
    ) -> RefreshFailure {
        match &failure {
            RefreshFailure::OAuth(e) => self.fail(inner, trigger, e),
            RefreshFailure::OverBudget(wait) => self.over_budget(inner, trigger, *wait),
            _ => {}
        }
        self.persist_spent(inner);
        failure
    }

    /// The budget has no room: nothing was sent. The timer waits for room (jittered, so that
    /// replicas do not all ask at once); other triggers report it.
    fn over_budget(&self, inner: &mut Inner, trigger: Trigger, wait: Duration) {
        self.metrics
            .token_requests_deferred
            .with_label_values(&[self.name.as_str()])
            .inc();
        let spread = (wait / 10 + BACKOFF_FLOOR).mul_f64(jitter());
        let now = Instant::now();
        if inner.next_attempt < now + wait {
            self.set_next_attempt(inner, now + wait + spread);
        }
        self.store
            .set_retry_after((wait + spread).as_secs().clamp(1, 3600));
        let message = format!(
            "the token request budget ({}) is spent; next token request in {}s",
            self.cfg.request_budget,
            wait.as_secs().max(1)
        );
        tracing::warn!(token = %self.name, trigger = trigger.as_str(), wait_ms = wait.as_millis() as u64, "{message}");
        self.store.record_attempt(trigger.as_str(), Err(message));
    }

    fn fail(&self, inner: &mut Inner, trigger: Trigger, e: &OAuthError) {
        self.metrics
            .token_refreshes
            .with_label_values(&[self.name.as_str(), trigger.as_str(), "failure"])
            .inc();
        inner.failures = inner.failures.saturating_add(1);
        let transient = backoff(
            inner.failures - 1,
            BACKOFF_BASE,
            BACKOFF_CAP,
            BACKOFF_FLOOR,
            jitter(),
        );
        let (delay, hold) = match e.class() {
            FailureClass::Transient => (transient, None),
            // Never shorter than the backoff: a 429 saying `Retry-After: 0` (or an HTTP date
            // already past, from a server whose clock is behind) is still a refusal, and
            // retrying it on a fixed 250 ms beat would keep the rate limit's penalty going.
            FailureClass::RetryAfter(Some(d)) => (
                (d + transient.min(d / 10 + BACKOFF_FLOOR)).max(transient),
                Some(Hold::RetryAfter),
            ),
            FailureClass::RetryAfter(None) => {
                (DEFAULT_RETRY_AFTER.max(transient), Some(Hold::RetryAfter))
            }
            FailureClass::Rejected => (REJECTED_RETRY, Some(Hold::Rejected)),
        };
        let now = Instant::now();
        if let Some(h) = hold {
            inner.not_before = Some((now + delay, h));
        }
        self.set_next_attempt(inner, now + delay);
        self.store.set_retry_after(delay.as_secs().clamp(1, 300));
        self.store
            .record_attempt(trigger.as_str(), Err(e.to_string()));
        let valid = self
            .store
            .load()
            .as_ref()
            .is_some_and(|t| t.is_valid_at(now));
        tracing::warn!(
            token = %self.name,
            trigger = trigger.as_str(),
            error = %e,
            consecutive_failures = inner.failures,
            retry_in_ms = delay.as_millis() as u64,
            current_token_valid = valid,
            "token refresh failed"
        );
        if trigger != Trigger::Timer {
            self.reschedule.notify_one();
        }
    }

    /// Takes a place in the token request budget: this replica's own count, and the count of
    /// all replicas in Redis when shared. Redis being unreachable leaves the local count, which
    /// still bounds this replica.
    async fn spend_budget(&self, inner: &mut Inner) -> Result<(), RefreshFailure> {
        let local = inner.budget.wait(Instant::now());
        if !local.is_zero() {
            return Err(RefreshFailure::OverBudget(local));
        }
        if let Some(shared) = &self.shared {
            match shared.take_budget(self.cfg.request_budget).await {
                Ok(Ok(())) => {}
                Ok(Err(wait)) => return Err(RefreshFailure::OverBudget(wait)),
                Err(e) => {
                    tracing::debug!(token = %self.name, error = %e, "the shared budget could not be read; counting locally");
                }
            }
        }
        inner
            .budget
            .try_acquire(Instant::now())
            .map_err(RefreshFailure::OverBudget)
    }

    /// One token request within the budget.
    async fn request(
        &self,
        inner: &mut Inner,
        grant: GrantRequest<'_>,
    ) -> Result<TokenSet, RefreshFailure> {
        self.spend_budget(inner).await?;
        Ok(self.client.request(grant).await?)
    }

    /// Obtains a token set: with the refresh token when one is held (and not spent), else with
    /// the primary grant. Every refresh token sent is remembered as spent once the endpoint
    /// has exchanged or rejected it.
    async fn obtain(&self, inner: &mut Inner) -> Result<TokenSet, RefreshFailure> {
        let now = SystemTime::now();
        if inner.refresh_expires_at.is_some_and(|e| e <= now) {
            tracing::info!(token = %self.name, "the refresh token has expired; using the primary grant");
            inner.refresh_token = None;
        }
        if let Some(rt) = inner.refresh_token.clone() {
            let fp = fingerprint(&rt);
            if inner.spent.contains(&fp) {
                tracing::warn!(token = %self.name, "the refresh token held was already exchanged; using the primary grant");
                inner.refresh_token = None;
                inner.refresh_expires_at = None;
            } else {
                match self.request(inner, GrantRequest::Refresh(&rt)).await {
                    Ok(set) => {
                        Self::mark_spent(inner, fp);
                        return Ok(set);
                    }
                    Err(RefreshFailure::OAuth(e)) if e.is_invalid_grant() => {
                        tracing::warn!(token = %self.name, error = %e, "the refresh token was rejected; falling back to the primary grant");
                        Self::mark_spent(inner, fp);
                        inner.refresh_token = None;
                        inner.refresh_expires_at = None;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let bootstrap = match &self.cfg.grant {
            Grant::RefreshToken { refresh_token } => {
                let b = refresh_token.load().map_err(OAuthError::from)?;
                let fp = fingerprint(&b);
                if inner.spent.contains(&fp) {
                    return Err(OAuthError::Credentials(
                        "the refresh token in the refresh token file was already exchanged and the rotated one is gone; write a new refresh token to the file".into(),
                    )
                    .into());
                }
                Some(fp)
            }
            _ => None,
        };
        let set = self.request(inner, GrantRequest::Primary).await;
        if let Some(fp) = bootstrap {
            let sent = match &set {
                Ok(_) => true,
                Err(RefreshFailure::OAuth(e)) => e.is_invalid_grant(),
                Err(_) => false,
            };
            if sent {
                Self::mark_spent(inner, fp);
            }
        }
        set
    }

    /// Handles a 401 for a request sent with `failed_version`: returns once the store holds a
    /// newer token (refreshing single-flight if needed), or why it does not. At most one
    /// 401-triggered refresh per `min_refresh_interval`, for all replicas together when shared.
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
        // Another replica may have refreshed already (its refresh revoked our token), or be
        // refreshing right now: its token is about to be written.
        if let Some(shared) = &self.shared {
            let mut remote_version = 0;
            if let Ok(Entry::Set(remote)) = shared.read().await {
                remote_version = remote.state.version;
                self.adopt_shared(&mut inner, &remote);
                let current = self.store.version();
                if current > failed_version {
                    return Ok(current);
                }
            }
            if shared.lock_held().await.unwrap_or(false) {
                return self
                    .wait_for_holder(&mut inner, shared, remote_version)
                    .await;
            }
        }
        if inner
            .last_unauthorized
            .is_some_and(|t| t.elapsed() < self.cfg.min_refresh_interval)
        {
            return Err(RefreshFailure::TooSoon);
        }
        if let Some(shared) = &self.shared {
            match shared
                .claim_unauthorized(self.cfg.min_refresh_interval)
                .await
            {
                Ok(true) => {}
                Ok(false) => return Err(RefreshFailure::TooSoon),
                // Redis unreachable: this replica's own interval still applies.
                Err(_) => {}
            }
        }
        self.refresh_locked(&mut inner, Trigger::Unauthorized, Some(failed_version))
            .await
    }

    /// The timed refresh loop, until `cancel` fires. Obtains the first token unless the state
    /// file provided one. In shared mode a second loop follows the shared store.
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
                _ = tokio::time::sleep_until(due.into()) => {}
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
        let now = Instant::now();
        if inner.next_attempt <= now {
            let at = now + BACKOFF_FLOOR;
            self.set_next_attempt(&mut inner, at);
        }
    }

    /// Shared mode: adopts sets other replicas write, on notification and every second as a
    /// fallback, and retries writes that failed while Redis was away.
    async fn follow_shared(self: Arc<Self>, cancel: CancellationToken) {
        let Some(shared) = self.shared.as_ref() else {
            return;
        };
        let mut subscription: Option<redis::aio::PubSub> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_read = Instant::now();
        loop {
            let notified = async {
                match subscription.as_mut() {
                    Some(ps) => {
                        use futures_util::StreamExt;
                        ps.on_message().next().await.is_some()
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                alive = notified => {
                    if !alive {
                        tracing::debug!(token = %self.name, "shared store subscription closed");
                        subscription = None;
                    }
                    // A burst of notifications (or someone publishing on the channel) costs
                    // at most one read per gap.
                    let next = last_read + NOTIFIED_READ_GAP;
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep_until(next.into()) => {}
                    }
                }
                _ = tick.tick() => {
                    if subscription.is_none() {
                        subscription = shared.subscribe().await.ok();
                    }
                }
            }
            last_read = Instant::now();
            self.sync_from_shared(shared).await;
        }
    }

    /// One read of the shared store: adopt a newer set; write a pending one.
    async fn sync_from_shared(&self, shared: &SharedStore) {
        // A refresh in progress reads the store itself.
        let Ok(mut inner) = self.inner.try_lock() else {
            return;
        };
        let remote = match shared.read().await {
            Ok(r) => r,
            Err(_) => return,
        };
        if let Some(pending) = inner.pending_write.take() {
            let (stale, replacing) = match &remote {
                Entry::None => (true, None),
                Entry::Set(r) => (r.state.version < pending.version, None),
                Entry::Rejected(rejected) => (true, Some(rejected)),
            };
            if stale {
                match shared.write(pending, replacing).await {
                    Ok(_) => {
                        tracing::info!(token = %self.name, "wrote the pending token set to the shared store")
                    }
                    Err(e) => {
                        tracing::debug!(token = %self.name, error = %e, "pending write failed again");
                        let version = self.store.version();
                        if let Some(t) = self.store.current() {
                            let set = TokenSet {
                                access_token: t.access_token().clone(),
                                expires_at: t.expires_at().unwrap_or_else(SystemTime::now),
                                refresh_token: inner.refresh_token.clone(),
                                refresh_expires_at: inner.refresh_expires_at,
                                scope: None,
                                obtained_at: t.obtained_at(),
                            };
                            inner.pending_write = Some(self.state_of(&inner, version, &set));
                        }
                    }
                }
                return;
            }
        }
        if let Entry::Set(r) = remote {
            if r.state.version > self.store.version() {
                self.adopt_shared(&mut inner, &r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_stop_before_the_top() {
        assert_eq!(next_version(&[]), Some(1));
        assert_eq!(next_version(&[3, 9, 2]), Some(10));
        assert_eq!(next_version(&[MAX_VERSION - 2]), Some(MAX_VERSION - 1));
        assert_eq!(next_version(&[MAX_VERSION - 1]), None);
        assert_eq!(next_version(&[u64::MAX]), None);
    }
}
