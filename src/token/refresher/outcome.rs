//! What the refresher does with the outcome of an attempt: a new token is committed (state
//! persisted, published, next refresh planned); a failure backs off or holds; a spent budget
//! waits for room.

use std::time::Duration;

use super::{jitter, Hold, Inner, RefreshFailure, Refresher};
use super::{BACKOFF_BASE, BACKOFF_CAP, BACKOFF_FLOOR, DEFAULT_RETRY_AFTER, REJECTED_RETRY};
use crate::token::oauth::{FailureClass, OAuthError, TokenEndpoint};
use crate::token::schedule::{backoff, refresh_delay};
use crate::token::set::TokenSet;
use crate::token::shared::SharedBackend;
use crate::token::{NewToken, Outcome, Trigger};

impl<E: TokenEndpoint, S: SharedBackend> Refresher<E, S> {
    /// No newer version can follow the newest known one: only a state file or shared entry
    /// written by someone else can get there. Nothing is requested; the current token is kept.
    pub(super) fn versions_exhausted(&self, inner: &mut Inner) -> RefreshFailure {
        tracing::error!(token = %self.name, "the token versions are exhausted (a state file or shared entry claimed a version no newer one can follow); remove it, and seal shared entries with --shared-key-file");
        self.set_next_attempt(inner, self.clock.now() + REJECTED_RETRY);
        RefreshFailure::OAuth(OAuthError::Credentials(
            "no newer token version is possible".into(),
        ))
    }

    /// Records a successful token request: refresh token kept, state persisted, token
    /// published, next refresh scheduled.
    pub(super) fn commit(
        &self,
        inner: &mut Inner,
        trigger: Trigger,
        set: TokenSet,
        version: u64,
    ) -> u64 {
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
        // `Ok(None)`: a newer version was published meanwhile (adopted from elsewhere): it
        // stays. An error is defensive: the response parser already checked the token.
        if let Err(e) = published {
            tracing::error!(token = %self.name, error = %e, "the new token could not be published");
        }
        inner.failures = 0;
        inner.not_before = None;
        let delay = refresh_delay(set.lifetime(), self.cfg.refresh_margin, jitter());
        self.set_next_attempt(inner, self.clock.now() + delay.max(BACKOFF_FLOOR));
        self.store.set_retry_after(1);
        self.store.record(trigger, Outcome::Obtained);
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
    pub(super) fn failed(
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
    pub(super) fn over_budget(&self, inner: &mut Inner, trigger: Trigger, wait: Duration) {
        let spread = (wait / 10 + BACKOFF_FLOOR).mul_f64(jitter());
        let now = self.clock.now();
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
        self.store.record(trigger, Outcome::Deferred(message));
    }

    pub(super) fn fail(&self, inner: &mut Inner, trigger: Trigger, e: &OAuthError) {
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
        let now = self.clock.now();
        if let Some(h) = hold {
            inner.not_before = Some((now + delay, h));
        }
        self.set_next_attempt(inner, now + delay);
        self.store.set_retry_after(delay.as_secs().clamp(1, 300));
        self.store.record(trigger, Outcome::Failed(e.to_string()));
        let valid = self
            .store
            .load()
            .as_ref()
            .is_some_and(|t| t.is_valid_at(std::time::Instant::now()));
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
}
