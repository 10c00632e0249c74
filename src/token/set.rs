//! A token set: what a successful token response brings, persisted in the state file and shared
//! through the shared store.

use std::time::{Duration, SystemTime};

use crate::secret::Secret;

/// Access and refresh tokens longer than this are refused: a token is sent with every request
/// and persisted, and no issuer's tokens come near this size.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A token set from a successful token response (RFC 6749 5.1).
#[derive(Debug, Clone)]
pub struct TokenSet {
    /// The access token.
    pub access_token: Secret,
    /// When it expires.
    pub expires_at: SystemTime,
    /// The refresh token, when one was issued.
    pub refresh_token: Option<Secret>,
    /// When the refresh token expires, when the server says.
    pub refresh_expires_at: Option<SystemTime>,
    /// Granted scopes, when the server says.
    pub scope: Option<String>,
    /// When the token was obtained.
    pub obtained_at: SystemTime,
}

impl TokenSet {
    /// The access token's lifetime as issued.
    pub fn lifetime(&self) -> Duration {
        self.expires_at
            .duration_since(self.obtained_at)
            .unwrap_or(Duration::ZERO)
    }
}
