//! The refresher and its state file: reused at start, taken over when another process (the
//! `refresh` subcommand) wrote a newer set, written after every new token.

use super::{Inner, Refresher};
use crate::token::oauth::TokenEndpoint;
use crate::token::set::TokenSet;
use crate::token::shared::SharedBackend;
use crate::token::state;
use crate::token::{Outcome, Trigger};

impl<E: TokenEndpoint, S: SharedBackend> Refresher<E, S> {
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
            self.store.record(Trigger::Startup, Outcome::Reused);
            tracing::info!(token = %self.name, version = st.version, expires_at = st.expires_at, "reusing the token from the state file");
        } else {
            tracing::info!(token = %self.name, has_refresh_token = inner.refresh_token.is_some(), "the state file holds no usable access token");
        }
        published
    }

    /// Without a shared store, another process may refresh through the state file (the
    /// `refresh` subcommand from a CronJob or an operator): the refresh token held here has then
    /// been exchanged, and only the file's newer one still works. Takes a newer set from the
    /// file before any token request; returns the version to answer with when that set makes
    /// the request unnecessary (a 401 answered by its newer token, a timer not due yet).
    pub(super) fn take_over_state_file(
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

    /// Persists a token set to the state file, if one is configured.
    pub(super) fn persist(&self, inner: &mut Inner, set: &TokenSet, version: u64) {
        inner.spent_unsaved = false;
        if let Some(path) = &self.cfg.state_file {
            let mut persisted = set.clone();
            persisted.refresh_token = inner.refresh_token.clone();
            persisted.refresh_expires_at = inner.refresh_expires_at;
            let saved = state::save(path, &self.state_of(inner, version, &persisted));
            if let Err(e) = &saved {
                tracing::error!(token = %self.name, error = %e, "cannot write the state file");
            }
            self.observed().state_file_error = saved.err().map(|e| e.to_string());
        }
    }

    /// Persists the current token again when a failed attempt spent a refresh token, so that
    /// it is remembered across a restart.
    pub(super) fn persist_spent(&self, inner: &mut Inner) {
        if self.cfg.state_file.is_none() || !inner.spent_unsaved {
            return;
        }
        if let Some(set) = self.current_set(inner) {
            self.persist(inner, &set, self.store.version());
        }
    }

    /// The current token as a set, with the refresh token held.
    pub(super) fn current_set(&self, inner: &Inner) -> Option<TokenSet> {
        self.store.current().map(|t| TokenSet {
            access_token: t.access_token().clone(),
            expires_at: t.expires_at().unwrap_or_else(|| self.clock.wall()),
            refresh_token: inner.refresh_token.clone(),
            refresh_expires_at: inner.refresh_expires_at,
            scope: None,
            obtained_at: t.obtained_at(),
        })
    }

    /// Why the last write of the state file failed, if it did.
    pub fn state_file_error(&self) -> Option<String> {
        self.observed().state_file_error.clone()
    }
}
