//! Keeps an OAuth2 profile's token fresh: the timed refresh before expiry, single-flight
//! refreshes on demand (401, manual), refresh-token rotation, failure backoff and the state
//! file.
//!
//! Every token request of a profile happens under one async mutex, so refreshes are
//! single-flight and a rotated refresh token is always the newest one: a refresh token that
//! has been exchanged successfully is replaced before the lock is released and is never sent
//! again.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Grant, TokenConfig};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::token::oauth::{FailureClass, GrantRequest, OAuthClient, OAuthError, TokenSet};
use crate::token::schedule::{backoff, refresh_delay};
use crate::token::state::{self, State};
use crate::token::{unix_seconds, NewToken, TokenStore, Trigger};

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
    /// The endpoint asked to wait (or rejected the credentials) and the wait is not over.
    #[error("not before {0}s from now: the token endpoint asked to wait")]
    Waiting(u64),
    /// A 401-triggered refresh came sooner than `min_refresh_interval` after the last one.
    #[error("a refresh after a 401 happened less than min_refresh_interval ago")]
    TooSoon,
}

struct Inner {
    refresh_token: Option<Secret>,
    refresh_expires_at: Option<SystemTime>,
    /// The bootstrap refresh token once exchanged: never presented again.
    spent_bootstrap: Option<Secret>,
    failures: u32,
    /// No token request before this (Retry-After, rejected credentials).
    not_before: Option<Instant>,
    /// When the timer makes its next attempt.
    next_attempt: Instant,
    /// Versions continue from the state file's across restarts.
    version_floor: u64,
    last_unauthorized: Option<Instant>,
}

/// The refresher of one OAuth2 token profile.
pub struct Refresher {
    name: String,
    store: Arc<TokenStore>,
    client: OAuthClient,
    cfg: TokenConfig,
    metrics: Metrics,
    inner: tokio::sync::Mutex<Inner>,
    reschedule: Notify,
    /// Identifies the configuration a state file belongs to.
    profile_key: String,
    next_attempt_unix: std::sync::atomic::AtomicU64,
    /// Whether a refresh token is held and its expiry, readable without waiting for a refresh.
    rt_snapshot: std::sync::Mutex<(bool, Option<u64>)>,
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

impl Refresher {
    /// A refresher for `cfg`, publishing into `store`.
    pub fn new(
        cfg: &TokenConfig,
        store: Arc<TokenStore>,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let client = OAuthClient::new(cfg)?;
        let profile_key = format!(
            "{}|{}|{}",
            cfg.token_url.as_deref().unwrap_or_default(),
            cfg.client_id.as_deref().unwrap_or_default(),
            cfg.grant.kind()
        );
        Ok(Refresher {
            name: cfg.name.clone(),
            store,
            client,
            cfg: cfg.clone(),
            metrics,
            inner: tokio::sync::Mutex::new(Inner {
                refresh_token: None,
                refresh_expires_at: None,
                spent_bootstrap: None,
                failures: 0,
                not_before: None,
                next_attempt: Instant::now(),
                version_floor: 0,
                last_unauthorized: None,
            }),
            reschedule: Notify::new(),
            profile_key,
            next_attempt_unix: std::sync::atomic::AtomicU64::new(0),
            rt_snapshot: std::sync::Mutex::new((false, None)),
        })
    }

    /// The profile's store.
    pub fn store(&self) -> &Arc<TokenStore> {
        &self.store
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
        let set = st.token_set();
        let now = SystemTime::now();
        let mut inner = self.inner.lock().await;
        inner.version_floor = inner.version_floor.max(st.version);
        if set.refresh_expires_at.is_none_or(|e| e > now) {
            inner.refresh_token = set.refresh_token.clone();
            inner.refresh_expires_at = set.refresh_expires_at;
        }
        if set.expires_at <= now + Duration::from_secs(1) {
            tracing::info!(token = %self.name, has_refresh_token = inner.refresh_token.is_some(), "the state file's access token has expired");
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
            Ok(_) => {
                let delay = refresh_delay(set.lifetime(), self.cfg.refresh_margin, jitter());
                let due = set.obtained_at + delay;
                let wait = due.duration_since(now).unwrap_or(Duration::ZERO);
                self.set_next_attempt(&mut inner, Instant::now() + wait);
                self.store.record_attempt(Trigger::Startup.as_str(), Ok(()));
                tracing::info!(token = %self.name, version = st.version, expires_at = unix_seconds(set.expires_at), "reusing the token from the state file");
                true
            }
            Err(e) => {
                tracing::warn!(token = %self.name, error = %e, "the state file's token is unusable; ignoring it");
                false
            }
        }
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
        let now = Instant::now();
        if let Some(nb) = inner.not_before {
            if now < nb {
                return Err(RefreshFailure::Waiting(
                    nb.duration_since(now).as_secs().max(1),
                ));
            }
        }
        if trigger == Trigger::Unauthorized {
            inner.last_unauthorized = Some(now);
        }
        let result = self.obtain(inner).await;
        let label_result = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .token_refreshes
            .with_label_values(&[self.name.as_str(), trigger.as_str(), label_result])
            .inc();
        match result {
            Ok(set) => {
                if set.refresh_token.is_some() {
                    inner.refresh_token = set.refresh_token.clone();
                    inner.refresh_expires_at = set.refresh_expires_at;
                }
                let version = self.store.version().max(inner.version_floor) + 1;
                inner.version_floor = version;
                // Persist first: the rotated refresh token must survive a crash right after.
                if let Some(path) = &self.cfg.state_file {
                    let mut persisted = set.clone();
                    persisted.refresh_token = inner.refresh_token.clone();
                    persisted.refresh_expires_at = inner.refresh_expires_at;
                    if let Err(e) =
                        state::save(path, &State::new(&self.profile_key, version, &persisted))
                    {
                        tracing::error!(token = %self.name, error = %e, "cannot write the state file");
                    }
                }
                let published = self.store.publish_versioned(
                    NewToken {
                        access_token: set.access_token.clone(),
                        expires_at: Some(set.expires_at),
                        obtained_at: set.obtained_at,
                    },
                    version,
                );
                if let Err(e) = published {
                    // parse_success already checked the token; this is defensive.
                    let e = OAuthError::Malformed(e.to_string());
                    self.fail(inner, trigger, &e);
                    return Err(e.into());
                }
                inner.failures = 0;
                inner.not_before = None;
                let delay = refresh_delay(set.lifetime(), self.cfg.refresh_margin, jitter());
                self.set_next_attempt(inner, Instant::now() + delay);
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
                Ok(version)
            }
            Err(e) => {
                self.fail(inner, trigger, &e);
                Err(e.into())
            }
        }
    }

    fn fail(&self, inner: &mut Inner, trigger: Trigger, e: &OAuthError) {
        inner.failures = inner.failures.saturating_add(1);
        let transient = backoff(
            inner.failures - 1,
            BACKOFF_BASE,
            BACKOFF_CAP,
            BACKOFF_FLOOR,
            jitter(),
        );
        let (delay, hold) = match e.class() {
            FailureClass::Transient => (transient, false),
            FailureClass::RetryAfter(Some(d)) => (d + transient.min(d / 10 + BACKOFF_FLOOR), true),
            FailureClass::RetryAfter(None) => (DEFAULT_RETRY_AFTER.max(transient), true),
            FailureClass::Rejected => (REJECTED_RETRY, true),
        };
        let now = Instant::now();
        if hold {
            inner.not_before = Some(now + delay);
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

    async fn obtain(&self, inner: &mut Inner) -> Result<TokenSet, OAuthError> {
        let now = SystemTime::now();
        if inner.refresh_expires_at.is_some_and(|e| e <= now) {
            tracing::info!(token = %self.name, "the refresh token has expired; using the primary grant");
            inner.refresh_token = None;
        }
        if let Some(rt) = inner.refresh_token.clone() {
            match self.client.request(GrantRequest::Refresh(&rt)).await {
                Ok(set) => return Ok(set),
                Err(e) if e.is_invalid_grant() => {
                    tracing::warn!(token = %self.name, error = %e, "the refresh token was rejected; falling back to the primary grant");
                    inner.refresh_token = None;
                    inner.refresh_expires_at = None;
                }
                Err(e) => return Err(e),
            }
        }
        let bootstrap = match &self.cfg.grant {
            Grant::RefreshToken { refresh_token } => {
                let b = refresh_token.load()?;
                if inner.spent_bootstrap.as_ref() == Some(&b) {
                    return Err(OAuthError::Credentials(
                        "the bootstrap refresh token was already exchanged and the rotated one is gone; write a new refresh token to the refresh token file".into(),
                    ));
                }
                Some(b)
            }
            _ => None,
        };
        let set = self.client.request(GrantRequest::Primary).await;
        if bootstrap.is_some() && set.is_ok() {
            inner.spent_bootstrap = bootstrap;
        }
        set
    }

    /// Handles a 401 for a request sent with `failed_version`: returns once the store holds a
    /// newer token (refreshing single-flight if needed), or why it does not.
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
        if inner
            .last_unauthorized
            .is_some_and(|t| t.elapsed() < self.cfg.min_refresh_interval)
        {
            return Err(RefreshFailure::TooSoon);
        }
        self.refresh_locked(&mut inner, Trigger::Unauthorized, Some(failed_version))
            .await
    }

    /// The timed refresh loop, until `cancel` fires. Obtains the first token unless the state
    /// file provided one.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        if !self.load_state().await {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.refresh(Trigger::Startup, None) => {}
            }
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
        }
    }
}
