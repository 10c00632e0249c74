//! Where a profile's tokens come from: the [`TokenSource`] seam, and [`Profile`], a store and
//! the source that feeds it.
//!
//! Three sources exist: [`Fixed`] (a static token), [`super::file::TokenFile`] (a watched
//! file) and [`super::refresher::Refresher`] (an OAuth2 token endpoint). A new kind of source
//! implements this trait and is wired in `app.rs`; nothing else matches on the kind.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{Outcome, TokenStore, Trigger};

/// Why a forced refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The source could not provide a token; the message never holds one.
    #[error("{0}")]
    Failed(String),
    /// Too soon after the last one, the token endpoint asked to wait, or the token request
    /// budget is spent: nothing was sent.
    #[error("{message}")]
    Throttled {
        /// Why.
        message: String,
        /// When to ask again.
        retry_after: Duration,
    },
}

/// What feeds a profile's [`TokenStore`]. The calls are rare (a 401, an operator's refresh):
/// their futures are boxed.
pub trait TokenSource: Send + Sync + std::fmt::Debug {
    /// Obtains a new token now (`POST /refresh`, the `refresh` subcommand), single-flight
    /// with any refresh in progress.
    fn refresh_now(&self, trigger: Trigger) -> BoxFuture<'_, Result<(), RefreshError>>;

    /// Handles an upstream 401 for a request sent with token `failed_version`: the version of
    /// a newer token to replay with, or `None` when there is none.
    fn on_unauthorized(&self, failed_version: u64) -> BoxFuture<'_, Option<u64>>;

    /// Whether a newer token can ever answer a 401 (a fixed token cannot: its 401s pass
    /// through as they are).
    fn can_renew(&self) -> bool {
        true
    }

    /// Extra fields for `/token-info`.
    fn info(&self) -> Option<Value> {
        None
    }
}

/// A fixed token (`--grant static`): published once, never renewed.
#[derive(Debug)]
pub struct Fixed;

impl TokenSource for Fixed {
    fn refresh_now(&self, _trigger: Trigger) -> BoxFuture<'_, Result<(), RefreshError>> {
        Box::pin(async { Ok(()) })
    }

    fn on_unauthorized(&self, _failed_version: u64) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async { None })
    }

    fn can_renew(&self) -> bool {
        false
    }
}

impl Fixed {
    /// Publishes `token` into `store`: the profile's only token.
    pub fn publish(
        store: &TokenStore,
        token: crate::secret::Secret,
    ) -> Result<Self, super::PublishError> {
        store.publish(super::NewToken {
            access_token: token,
            expires_at: None,
            obtained_at: std::time::SystemTime::now(),
        })?;
        store.record(Trigger::Startup, Outcome::Obtained);
        Ok(Fixed)
    }
}

/// A token profile: its store and the source that feeds it.
pub struct Profile {
    /// The profile's name.
    pub name: String,
    /// The configured grant.
    pub grant_kind: &'static str,
    /// The store its routes read.
    pub store: Arc<TokenStore>,
    /// What feeds the store.
    pub source: Arc<dyn TokenSource>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("name", &self.name)
            .field("grant", &self.grant_kind)
            .finish_non_exhaustive()
    }
}

impl Profile {
    /// Obtains a new token now (for `POST /refresh`), single-flight with any refresh running.
    pub async fn refresh_now(&self, trigger: Trigger) -> Result<(), RefreshError> {
        self.source.refresh_now(trigger).await
    }

    /// Handles an upstream 401 for a request sent with token `failed_version`.
    pub async fn on_unauthorized(&self, failed_version: u64) -> Option<u64> {
        self.source.on_unauthorized(failed_version).await
    }

    /// Extra fields for `/token-info`.
    pub fn extra_info(&self) -> Option<Value> {
        self.source.info()
    }
}
