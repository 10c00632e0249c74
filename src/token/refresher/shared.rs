//! The refresher with other replicas: one shared token set, one refresher at a time under the
//! shared lock, writes fenced by version, a `Retry-After` that holds every replica, and a
//! follower that adopts what the others write.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    jitter, next_version, Hold, Inner, RefreshFailure, Refresher, BACKOFF_BASE, BACKOFF_FLOOR,
};
use crate::config::Grant;
use crate::token::oauth::TokenEndpoint;
use crate::token::schedule::backoff;
use crate::token::shared::{Entry, Rejected, SharedBackend, SharedError, SharedSet, Updates};
use crate::token::{unix_seconds, Outcome, Trigger};

/// Reads of the shared store prompted by notifications are at least this far apart.
const NOTIFIED_READ_GAP: Duration = Duration::from_millis(100);

/// How often a subscribed replica reads the store anyway: a notification missed without the
/// subscription breaking is caught within this (reads grow linearly with replicas: about 6 a
/// minute each, plus one per new set).
pub(super) const SUBSCRIBED_READ_INTERVAL: Duration = Duration::from_secs(10);

impl<E: TokenEndpoint, S: SharedBackend> Refresher<E, S> {
    /// Adopts a set read from the shared store (already checked by the store: sealed when a
    /// key is configured, well-formed, of this configuration), counting it as a `shared`
    /// refresh.
    pub(super) fn adopt_shared(&self, inner: &mut Inner, remote: &SharedSet) -> bool {
        let published = self.adopt(inner, &remote.state, Some(&remote.refreshed_by));
        if published {
            self.store.record(Trigger::Shared, Outcome::Obtained);
            self.persist(inner, &remote.state.token_set(), remote.state.version);
            self.reschedule.notify_one();
            tracing::debug!(token = %self.name, version = remote.state.version, refreshed_by = %remote.refreshed_by, "adopted the shared token");
        }
        published
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
                let fresh = remote.state.expires_at > unix_seconds(self.clock.wall())
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

    /// After a 401 for `failed_version`: another replica may have refreshed already (its
    /// refresh revoked our token), or be refreshing right now (its token is about to be
    /// written). The version of a newer token when there is one.
    pub(super) async fn newer_from_shared(
        &self,
        inner: &mut Inner,
        shared: &S,
        failed_version: u64,
    ) -> Result<Option<u64>, RefreshFailure> {
        let mut remote_version = 0;
        if let Ok(Entry::Set(remote)) = shared.read().await {
            remote_version = remote.state.version;
            self.adopt_shared(inner, &remote);
            let current = self.store.version();
            if current > failed_version {
                return Ok(Some(current));
            }
        }
        if shared.lock_held().await.unwrap_or(false) {
            return self
                .wait_for_holder(inner, shared, remote_version)
                .await
                .map(Some);
        }
        Ok(None)
    }

    /// The shared-store refresh: adopt a newer set when there is one; otherwise take the lock,
    /// refresh with the newest refresh token, write it fenced by version, then use it.
    pub(super) async fn refresh_shared(
        &self,
        inner: &mut Inner,
        shared: &S,
        trigger: Trigger,
        seen_version: Option<u64>,
    ) -> Result<u64, RefreshFailure> {
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
            return Err(self.held_by_another(inner, trigger, left));
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
        shared: &S,
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
        if trigger == Trigger::Unauthorized {
            // The fleet's one 401-triggered token request per interval, claimed only now that
            // one is due, and under the lock: a 401 that a newer set answered claims nothing,
            // and a replica that finds the claim taken finds the claimer's set already written
            // (the claimer held the lock until then).
            match shared
                .claim_unauthorized(self.cfg.min_refresh_interval)
                .await
            {
                Ok(true) => {}
                Ok(false) => return Err(RefreshFailure::TooSoon),
                // Redis failing now: this replica's own interval still applies.
                Err(_) => {}
            }
            inner.last_unauthorized = Some(self.clock.now());
        }
        let set = match self.obtain(inner).await {
            Ok(set) => set,
            Err(e) => {
                let failure = self.failed(inner, trigger, e);
                if let Some((until, Hold::RetryAfter)) = inner.not_before {
                    let wait = until.saturating_duration_since(self.clock.now());
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
                self.observed().refreshed_by = Some(shared.replica().to_owned());
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

    /// Another replica was answered `Retry-After` and `left` of it remains: hold here too, and
    /// plan the timer after it (spread, so that the replicas do not all ask at its end).
    fn held_by_another(
        &self,
        inner: &mut Inner,
        trigger: Trigger,
        left: Duration,
    ) -> RefreshFailure {
        let now = self.clock.now();
        inner.not_before = Some((now + left, Hold::RetryAfter));
        let spread = (left / 10 + BACKOFF_FLOOR).mul_f64(jitter());
        self.set_next_attempt(inner, now + left + spread);
        self.store
            .set_retry_after((left + spread).as_secs().clamp(1, 300));
        tracing::info!(token = %self.name, wait_ms = left.as_millis() as u64, "another replica was asked to wait by the token endpoint; waiting too");
        let failure = RefreshFailure::Waiting(left.as_secs().max(1));
        self.store
            .record(trigger, Outcome::Held(failure.to_string()));
        failure
    }

    /// Another replica holds the lock: wait (bounded by the lock's TTL) for the set it writes.
    async fn wait_for_holder(
        &self,
        inner: &mut Inner,
        shared: &S,
        seen_remote: u64,
    ) -> Result<u64, RefreshFailure> {
        let deadline = self.clock.now() + shared.lock_ttl();
        while self.clock.now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(Entry::Set(r)) = shared.read().await {
                if r.state.version > seen_remote {
                    self.adopt_shared(inner, &r);
                    return Ok(self.store.version());
                }
            }
        }
        // The holder died or is stuck; its lock expires and the next attempt may take it.
        self.set_next_attempt(inner, self.clock.now() + BACKOFF_FLOOR);
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
            return self.refresh_alone(inner, trigger).await;
        }
        inner.failures = inner.failures.saturating_add(1);
        let delay = backoff(
            inner.failures - 1,
            BACKOFF_BASE,
            Duration::from_secs(30),
            BACKOFF_FLOOR,
            jitter(),
        );
        self.set_next_attempt(inner, self.clock.now() + delay);
        self.store.set_retry_after(delay.as_secs().max(1));
        self.store.record(trigger, Outcome::Held(e.to_string()));
        tracing::warn!(token = %self.name, error = %e, retry_in_ms = delay.as_millis() as u64, "shared store unreachable; not refreshing without it (the current token is kept while valid)");
        Err(e.into())
    }

    /// Shared mode: adopts sets other replicas write, on notification, and reads the store
    /// every [`SUBSCRIBED_READ_INTERVAL`] as a safety net (every second while it is not
    /// subscribed); retries writes that failed while Redis was away.
    pub(super) async fn follow_shared(self: Arc<Self>, cancel: CancellationToken) {
        let Some(shared) = self.shared.as_ref() else {
            return;
        };
        let mut subscription: Option<S::Updates> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_read = Instant::now();
        loop {
            let notified = async {
                match subscription.as_mut() {
                    Some(updates) => updates.next().await,
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
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep_until(last_read + NOTIFIED_READ_GAP) => {}
                    }
                }
                _ = tick.tick() => {
                    if subscription.is_none() {
                        subscription = shared.subscribe().await.ok();
                    } else if last_read.elapsed() < SUBSCRIBED_READ_INTERVAL {
                        // Subscribed: notifications bring new sets; the read is a safety net.
                        continue;
                    }
                }
            }
            last_read = Instant::now();
            self.sync_from_shared(shared).await;
        }
    }

    /// One read of the shared store: adopt a newer set; write a pending one.
    async fn sync_from_shared(&self, shared: &S) {
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
                let version = pending.version;
                match shared.write(pending, replacing).await {
                    Ok(true) => {
                        tracing::info!(token = %self.name, version, "wrote the pending token set to the shared store")
                    }
                    Ok(false) => {
                        tracing::info!(token = %self.name, version, "the pending token set was fenced off by a newer set in the shared store")
                    }
                    Err(e) => {
                        tracing::debug!(token = %self.name, error = %e, "pending write failed again");
                        if let Some(set) = self.current_set(&inner) {
                            let state = self.state_of(&inner, self.store.version(), &set);
                            inner.pending_write = Some(state);
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
