//! Tokens: the value type, the lock-free store the request path reads, and the sources that
//! publish into it.
//!
//! A [`TokenStore`] holds the current token of one token profile in an [`ArcSwapOption`].
//! Sources ([`source::TokenSource`]: a fixed token, a watched file, the OAuth2
//! [`refresher`]) [`publish`](TokenStore::publish) new tokens and [`record`](TokenStore::record)
//! each attempt, which is also where the refresh metrics are counted; the request path does
//! one atomic load and clones a ready-made [`HeaderValue`] (a reference-count increment, no
//! allocation).

pub mod file;
pub mod oauth;
pub mod refresher;
pub mod schedule;
pub mod set;
pub mod shared;
pub mod source;
pub mod state;

pub use source::{Profile, RefreshError, TokenSource};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use serde::Serialize;
use tokio::sync::watch;

use crate::secret::Secret;

/// Versions are whole numbers below 2^63 (a signed 64-bit integer in Redis, exact in every
/// place that compares them); a version at or past this cannot be followed by a newer one.
pub const MAX_VERSION: u64 = i64::MAX as u64;

/// A fingerprint of a refresh token: enough to recognise it, useless to anyone who reads it
/// (128 bits of SHA-256, URL-safe base64). Spent refresh tokens are remembered by these.
pub fn fingerprint(token: &Secret) -> String {
    use base64::Engine;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"token-sidecar refresh token\0");
    ctx.update(token.expose().as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&ctx.finish().as_ref()[..16])
}

/// What a source hands to [`TokenStore::publish`].
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The access token.
    pub access_token: Secret,
    /// When it expires; `None` when the source does not say (a file or a static token).
    pub expires_at: Option<SystemTime>,
    /// When it was obtained.
    pub obtained_at: SystemTime,
}

/// One published token: immutable, shared by every request that uses it.
pub struct Token {
    version: u64,
    access_token: Secret,
    obtained_at: SystemTime,
    expires_at: Option<SystemTime>,
    /// Monotonic deadline derived from `expires_at`, immune to wall-clock jumps.
    deadline: Option<Instant>,
    /// One ready-made header value per prefix registered with the store.
    headers: Box<[HeaderValue]>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("version", &self.version)
            .field("obtained_at", &self.obtained_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// The version: it grows by at least one with every token published to a store.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The access token itself.
    pub fn access_token(&self) -> &Secret {
        &self.access_token
    }

    /// When the token was obtained.
    pub fn obtained_at(&self) -> SystemTime {
        self.obtained_at
    }

    /// When the token expires, if known.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// Whether the token may still be sent at `now`.
    #[inline]
    pub fn is_valid_at(&self, now: Instant) -> bool {
        self.deadline.is_none_or(|d| now < d)
    }

    /// Time left before expiry (`None` when the token does not expire).
    pub fn time_left(&self, now: Instant) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(now))
    }

    /// The header value for the prefix registered at `index` (see [`TokenStore::new`]).
    #[inline]
    pub fn header(&self, index: usize) -> &HeaderValue {
        &self.headers[index]
    }
}

/// Why a token could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The token holds bytes that a header cannot carry.
    #[error("the token contains characters that are not allowed in an HTTP header value")]
    InvalidHeaderValue,
    /// The token is empty.
    #[error("the token is empty")]
    Empty,
    /// No newer version can follow the current one.
    #[error("no newer token version is possible")]
    VersionsExhausted,
}

/// Result of the last attempt to obtain a token, for `/token-info` and `/readyz`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RefreshStatus {
    /// `success` or `failure`; absent before the first attempt.
    pub result: Option<&'static str>,
    /// What started it (`startup`, `timer`, `unauthorized`, `manual`, `shared`, `file`).
    pub trigger: Option<&'static str>,
    /// When it finished (unix seconds).
    pub at: Option<u64>,
    /// The error of the last failed attempt (never contains a token).
    pub error: Option<String>,
    /// Consecutive failures since the last success.
    pub consecutive_failures: u32,
}

/// The current token of one token profile.
pub struct TokenStore {
    name: Arc<str>,
    prefixes: Box<[String]>,
    current: ArcSwapOption<Token>,
    /// Held while a token is published, so that the version check and the store are one step
    /// (publishing is rare; readers never take it).
    publishing: Mutex<()>,
    next_version: AtomicU64,
    status: Mutex<RefreshStatus>,
    version_tx: watch::Sender<u64>,
    retry_after: AtomicU64,
    /// Where attempts are counted (`token_sidecar_token_refreshes_total`, ...).
    metrics: Option<crate::metrics::Metrics>,
    /// The JWT read from a file for the last token request (a client assertion, a subject
    /// token) that expires first: what it is, and its `exp`.
    credential: Mutex<Option<(String, u64)>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("name", &self.name)
            .field("current", &self.current.load())
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    /// A store for profile `name`, empty, whose tokens are rendered with each of `prefixes`
    /// (`"Bearer "`, `""`, ...). Routes remember the index of their prefix.
    pub fn new(name: impl Into<Arc<str>>, prefixes: Vec<String>) -> Self {
        let prefixes = if prefixes.is_empty() {
            vec![String::new()]
        } else {
            prefixes
        };
        TokenStore {
            name: name.into(),
            prefixes: prefixes.into_boxed_slice(),
            current: ArcSwapOption::empty(),
            publishing: Mutex::new(()),
            next_version: AtomicU64::new(1),
            status: Mutex::new(RefreshStatus::default()),
            version_tx: watch::channel(0).0,
            retry_after: AtomicU64::new(1),
            metrics: None,
            credential: Mutex::new(None),
        }
    }

    /// The same store, counting every attempt in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The profile's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Index of `prefix` among the prefixes this store renders.
    pub fn prefix_index(&self, prefix: &str) -> Option<usize> {
        self.prefixes.iter().position(|p| p == prefix)
    }

    /// The current token, if any (it may have expired: check [`Token::is_valid_at`]).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Option<Arc<Token>>> {
        self.current.load()
    }

    /// The current token as an owned `Arc`.
    pub fn current(&self) -> Option<Arc<Token>> {
        self.current.load_full()
    }

    /// The version of the current token (0 when there is none).
    pub fn version(&self) -> u64 {
        self.current.load().as_ref().map_or(0, |t| t.version)
    }

    /// Publishes a new token with the next version and returns that version.
    pub fn publish(&self, token: NewToken) -> Result<u64, PublishError> {
        self.publish_inner(token, None)?
            .ok_or(PublishError::VersionsExhausted)
    }

    /// Publishes a token with a version chosen elsewhere (a shared store, a state file). The
    /// version must be newer than the current one (and below [`MAX_VERSION`]); otherwise
    /// nothing changes and `Ok(None)` is returned. Versions only move forward, also when
    /// several tasks publish at once.
    pub fn publish_versioned(
        &self,
        token: NewToken,
        version: u64,
    ) -> Result<Option<u64>, PublishError> {
        self.publish_inner(token, Some(version))
    }

    fn publish_inner(
        &self,
        token: NewToken,
        version: Option<u64>,
    ) -> Result<Option<u64>, PublishError> {
        let _publishing = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = version {
            if v <= self.version() || v >= MAX_VERSION {
                return Ok(None);
            }
        }
        let value = token.access_token.expose();
        if value.is_empty() {
            return Err(PublishError::Empty);
        }
        let mut headers = Vec::with_capacity(self.prefixes.len());
        for prefix in self.prefixes.iter() {
            let mut rendered = Vec::with_capacity(prefix.len() + value.len());
            rendered.extend_from_slice(prefix.as_bytes());
            rendered.extend_from_slice(value.as_bytes());
            // Wiped from memory once the last request using this token is done with it.
            let mut hv = HeaderValue::from_maybe_shared(crate::secret::zeroizing_bytes(rendered))
                .map_err(|_| PublishError::InvalidHeaderValue)?;
            hv.set_sensitive(true);
            headers.push(hv);
        }
        let version = match version {
            Some(v) => {
                self.next_version.fetch_max(v + 1, Ordering::AcqRel);
                v
            }
            None => {
                let v = self
                    .next_version
                    .load(Ordering::Acquire)
                    .max(self.version() + 1);
                if v >= MAX_VERSION {
                    return Ok(None);
                }
                self.next_version.store(v + 1, Ordering::Release);
                v
            }
        };
        let deadline = token.expires_at.map(|exp| {
            let left = exp
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            Instant::now() + left
        });
        self.current.store(Some(Arc::new(Token {
            version,
            access_token: token.access_token,
            obtained_at: token.obtained_at,
            expires_at: token.expires_at,
            deadline,
            headers: headers.into_boxed_slice(),
        })));
        self.version_tx.send_replace(version);
        tracing::info!(
            token = %self.name,
            version,
            expires_at = token.expires_at.map(unix_seconds),
            "token updated"
        );
        Ok(Some(version))
    }

    /// Seconds an app should wait before retrying when no valid token is held.
    pub fn retry_after(&self) -> u64 {
        self.retry_after.load(Ordering::Relaxed)
    }

    /// Sets the `Retry-After` hint (the time until the next attempt to obtain a token).
    pub fn set_retry_after(&self, secs: u64) {
        self.retry_after.store(secs.max(1), Ordering::Relaxed);
    }

    /// Waits for a token with a version greater than `version`.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version_tx.subscribe()
    }

    /// Records the outcome of an attempt to obtain a token: for `/token-info` and `/readyz`,
    /// and in the metrics (the one place they are counted).
    pub fn record(&self, trigger: Trigger, outcome: Outcome) {
        if let Some(m) = &self.metrics {
            match &outcome {
                Outcome::Obtained => m
                    .token_refreshes
                    .with_label_values(&[&self.name, trigger.as_str(), "success"])
                    .inc(),
                Outcome::Failed(_) => m
                    .token_refreshes
                    .with_label_values(&[&self.name, trigger.as_str(), "failure"])
                    .inc(),
                Outcome::Deferred(_) => m
                    .token_requests_deferred
                    .with_label_values(&[&self.name])
                    .inc(),
                Outcome::Reused | Outcome::Held(_) => {}
            }
        }
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        st.trigger = Some(trigger.as_str());
        st.at = Some(unix_seconds(SystemTime::now()));
        match outcome {
            Outcome::Obtained | Outcome::Reused => {
                st.result = Some("success");
                st.error = None;
                st.consecutive_failures = 0;
            }
            Outcome::Failed(e) | Outcome::Deferred(e) | Outcome::Held(e) => {
                st.result = Some("failure");
                st.error = Some(e);
                st.consecutive_failures = st.consecutive_failures.saturating_add(1);
            }
        }
    }

    /// The last attempt's outcome.
    pub fn status(&self) -> RefreshStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the JWT read from a file for a token request that expires first (`what`
    /// names the file), or that none had an `exp`: exported as
    /// `token_sidecar_client_assertion_expiry_timestamp_seconds`, and `/readyz` fails once it
    /// has passed.
    pub fn note_credential_expiry(&self, credential: Option<(String, u64)>) {
        if let Some(m) = &self.metrics {
            match &credential {
                Some((_, exp)) => m
                    .client_assertion_expiry
                    .with_label_values(&[&*self.name])
                    .set(*exp as f64),
                None => {
                    let _ = m
                        .client_assertion_expiry
                        .remove_label_values(&[&*self.name]);
                }
            }
        }
        *self.credential.lock().unwrap_or_else(|e| e.into_inner()) = credential;
    }

    /// The JWT read from a file for the last token request that expires first, and its `exp`.
    pub fn credential_expiry(&self) -> Option<(String, u64)> {
        self.credential
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Why this store cannot serve right now, or `None` when it holds a valid token and the
    /// credentials it is renewed with have not expired.
    pub fn unready_reason(&self, now: Instant) -> Option<String> {
        if let Some((what, exp)) = self.credential_expiry() {
            if exp <= unix_seconds(SystemTime::now()) {
                let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(exp));
                return Some(format!(
                    "the {what} expired at {at}; token requests fail until it is renewed"
                ));
            }
        }
        match self.load().as_ref() {
            Some(t) if t.is_valid_at(now) => None,
            Some(_) => Some(self.reason_with_error("the token has expired")),
            None => Some(self.reason_with_error("no token has been obtained yet")),
        }
    }

    fn reason_with_error(&self, base: &str) -> String {
        match self.status().error {
            Some(e) => format!("{base}; last error: {e}"),
            None => base.to_owned(),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_token(v: &str, ttl: Option<u64>) -> NewToken {
        NewToken {
            access_token: Secret::new(v),
            expires_at: ttl.map(|s| SystemTime::now() + Duration::from_secs(s)),
            obtained_at: SystemTime::now(),
        }
    }

    #[test]
    fn versions_grow_and_headers_are_rendered() {
        let store = TokenStore::new("t", vec!["Bearer ".into(), String::new()]);
        assert_eq!(store.version(), 0);
        let v1 = store.publish(new_token("abc", Some(60))).unwrap();
        let v2 = store.publish(new_token("def", None)).unwrap();
        assert!(v2 > v1);
        let t = store.current().unwrap();
        assert_eq!(t.header(0), "Bearer def");
        assert_eq!(t.header(1), "def");
        assert!(t.header(0).is_sensitive());
        assert!(!format!("{t:?}").contains("def"));
    }

    #[test]
    fn versioned_publish_only_moves_forward() {
        let store = TokenStore::new("t", vec![]);
        assert_eq!(
            store.publish_versioned(new_token("a", None), 10).unwrap(),
            Some(10)
        );
        assert_eq!(
            store.publish_versioned(new_token("b", None), 9).unwrap(),
            None
        );
        assert_eq!(store.publish(new_token("c", None)).unwrap(), 11);
    }

    #[test]
    fn invalid_tokens_are_refused() {
        let store = TokenStore::new("t", vec![]);
        assert!(store.publish(new_token("", None)).is_err());
        assert!(store.publish(new_token("a\nb", None)).is_err());
        assert_eq!(store.version(), 0);
    }

    #[test]
    fn expiry_is_checked() {
        let store = TokenStore::new("t", vec![]);
        store.publish(new_token("a", Some(0))).unwrap();
        assert!(!store.current().unwrap().is_valid_at(Instant::now()));
        assert!(store.unready_reason(Instant::now()).is_some());
    }
}

/// How an attempt to obtain a token ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new token was obtained (counted as a successful refresh).
    Obtained,
    /// A still-valid token was taken over without a request (a state file at start).
    Reused,
    /// The request failed (counted as a failed refresh); the message never holds a token.
    Failed(String),
    /// No request was sent: the token request budget was spent (counted as deferred).
    Deferred(String),
    /// No request was sent for another reason (the shared store is away, another replica
    /// holds the lock).
    Held(String),
}

/// What started an attempt to obtain a token (metric label `trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The first token at start.
    Startup,
    /// The timed refresh before expiry.
    Timer,
    /// An upstream 401.
    Unauthorized,
    /// `POST /refresh` or the `refresh` subcommand.
    Manual,
    /// A token learned from the shared store.
    Shared,
    /// A token file that changed.
    File,
}

impl Trigger {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Timer => "timer",
            Trigger::Unauthorized => "unauthorized",
            Trigger::Manual => "manual",
            Trigger::Shared => "shared",
            Trigger::File => "file",
        }
    }
}
