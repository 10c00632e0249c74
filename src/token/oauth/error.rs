//! Why a token request failed, and how the refresher should react.

use std::time::Duration;

use crate::secret::SecretError;

/// How a failure should be handled by the refresher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Credentials or grant rejected: retrying soon will not help (`invalid_grant`,
    /// `invalid_client`, `unauthorized_client`, ...). Retried slowly, in case the operator
    /// fixes the secret files.
    Rejected,
    /// The server asked to wait (429, 503 with `Retry-After`).
    RetryAfter(Option<Duration>),
    /// Transient: 5xx, timeouts, dropped connections, malformed bodies. Exponential backoff.
    Transient,
}

/// Why a token request failed. Never holds a token or secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    /// An RFC 6749 5.2 error response.
    #[error("token endpoint answered {status} {error}{}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default(), if codes.is_empty() { String::new() } else { format!(" ({})", codes.join(", ")) })]
    Endpoint {
        /// HTTP status.
        status: u16,
        /// The `error` code.
        error: String,
        /// `error_description`.
        description: Option<String>,
        /// RingCentral's `errors[].errorCode` values.
        codes: Vec<String>,
    },
    /// 429 or 503: the server asked to wait.
    #[error("token endpoint answered {status}{}", retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    Throttled {
        /// HTTP status.
        status: u16,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// Any other unsuccessful status without a usable error body.
    #[error("token endpoint answered {status} without an OAuth2 error body")]
    Status {
        /// HTTP status.
        status: u16,
    },
    /// A 200 whose body is not a usable token response.
    #[error("malformed token response: {0}")]
    Malformed(String),
    /// Connect failure, timeout, dropped connection.
    #[error("token endpoint unreachable: {0}")]
    Transport(String),
    /// A credential file could not be read.
    #[error("{0}")]
    Credentials(String),
}

impl From<SecretError> for OAuthError {
    fn from(e: SecretError) -> Self {
        OAuthError::Credentials(e.to_string())
    }
}

impl OAuthError {
    /// How the refresher should react.
    pub fn class(&self) -> FailureClass {
        match self {
            OAuthError::Endpoint { error, status, .. } => match error.as_str() {
                "invalid_grant"
                | "invalid_client"
                | "unauthorized_client"
                | "unsupported_grant_type"
                | "invalid_scope"
                | "invalid_request" => FailureClass::Rejected,
                _ if *status >= 500 => FailureClass::Transient,
                _ => FailureClass::Rejected,
            },
            // A 503 without Retry-After is an outage like any 5xx; a 429 always means "wait".
            OAuthError::Throttled {
                status: 503,
                retry_after: None,
            } => FailureClass::Transient,
            OAuthError::Throttled { retry_after, .. } => FailureClass::RetryAfter(*retry_after),
            OAuthError::Credentials(_) => FailureClass::Rejected,
            OAuthError::Status { .. } | OAuthError::Malformed(_) | OAuthError::Transport(_) => {
                FailureClass::Transient
            }
        }
    }

    /// Whether the server rejected the grant itself (a refresh token that is spent, revoked or
    /// expired): the refresher then falls back to the primary grant.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, OAuthError::Endpoint { error, .. } if error == "invalid_grant")
    }
}

/// Replaces every occurrence of each secret (as sent, and form-encoded) in `text`.
fn scrub_text<S: AsRef<str>>(text: &str, secrets: &[S]) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().map(AsRef::as_ref).filter(|s| s.len() >= 4) {
        let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        for form in [secret, encoded.as_str()] {
            if out.contains(form) {
                out = out.replace(form, "<redacted>");
            }
        }
    }
    out
}

impl OAuthError {
    /// The same error with every given credential removed from its texts.
    pub fn scrub<S: AsRef<str>>(self, secrets: &[S]) -> Self {
        let s = |t: String| scrub_text(&t, secrets);
        match self {
            OAuthError::Endpoint {
                status,
                error,
                description,
                codes,
            } => OAuthError::Endpoint {
                status,
                error: s(error),
                description: description.map(s),
                codes: codes.into_iter().map(s).collect(),
            },
            OAuthError::Malformed(t) => OAuthError::Malformed(s(t)),
            OAuthError::Transport(t) => OAuthError::Transport(s(t)),
            OAuthError::Credentials(t) => OAuthError::Credentials(s(t)),
            other => other,
        }
    }
}
