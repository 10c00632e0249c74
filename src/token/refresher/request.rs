//! Token requests: each takes a place in the budget first, and every refresh token sent is
//! remembered as spent once the endpoint has exchanged or rejected it.

use super::{Inner, RefreshFailure, Refresher};
use crate::config::Grant;
use crate::token::fingerprint;
use crate::token::oauth::{GrantRequest, OAuthError, TokenEndpoint};
use crate::token::set::TokenSet;
use crate::token::shared::SharedBackend;
use crate::token::state::MAX_SPENT;

impl<E: TokenEndpoint, S: SharedBackend> Refresher<E, S> {
    /// Remembers that a refresh token must never be sent again.
    pub(super) fn mark_spent(inner: &mut Inner, fp: String) {
        if !inner.spent.contains(&fp) {
            inner.spent_unsaved = true;
            inner.spent.push_back(fp);
            while inner.spent.len() > MAX_SPENT {
                inner.spent.pop_front();
            }
        }
    }

    /// Takes a place in the token request budget: this replica's own count, and the count of
    /// all replicas in Redis when shared. Redis being unreachable leaves the local count, which
    /// still bounds this replica.
    pub(super) async fn spend_budget(&self, inner: &mut Inner) -> Result<(), RefreshFailure> {
        let local = inner.budget.wait(self.clock.now().into_std());
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
            .try_acquire(self.clock.now().into_std())
            .map_err(RefreshFailure::OverBudget)
    }

    /// One token request within the budget.
    pub(super) async fn request(
        &self,
        inner: &mut Inner,
        grant: GrantRequest<'_>,
    ) -> Result<TokenSet, RefreshFailure> {
        self.spend_budget(inner).await?;
        Ok(self.endpoint.request(grant).await?)
    }

    /// Obtains a token set: with the refresh token when one is held (and not spent), else with
    /// the primary grant. Every refresh token sent is remembered as spent once the endpoint
    /// has exchanged or rejected it.
    pub(super) async fn obtain(&self, inner: &mut Inner) -> Result<TokenSet, RefreshFailure> {
        if inner
            .refresh_expires_at
            .is_some_and(|e| e <= self.clock.wall())
        {
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
}
