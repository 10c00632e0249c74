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

/// Fragments of a credential this long or longer are removed, wherever they appear: a server
/// that echoes a credential in an error may have cut it (the sidecar also clips what it keeps
/// of an error), and a cut credential is still one.
const MIN_FRAGMENT: usize = 12;

/// Replaces every run of `text` that is a piece of a secret (as sent, or form-encoded) of
/// [`MIN_FRAGMENT`] bytes or more (the whole secret when it is shorter, down to 4 bytes), and
/// a text's end that is a secret's first 4 bytes or more, with `<redacted>`.
fn scrub_text<S: AsRef<str>>(text: &str, secrets: &[S]) -> String {
    let bytes = text.as_bytes();
    let mut redact = vec![false; bytes.len()];
    for secret in secrets.iter().map(AsRef::as_ref).filter(|s| s.len() >= 4) {
        let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        for form in [secret.as_bytes(), encoded.as_bytes()] {
            let n = MIN_FRAGMENT.min(form.len());
            let windows: std::collections::HashSet<&[u8]> = form.windows(n).collect();
            for (i, w) in bytes.windows(n).enumerate() {
                if windows.contains(w) {
                    redact[i..i + n].fill(true);
                }
            }
            // A text clipped in the middle of a credential ends with its first bytes.
            if let Some(k) = (4..n).rev().find(|k| bytes.ends_with(&form[..*k])) {
                let len = bytes.len();
                redact[len - k..].fill(true);
            }
        }
    }
    if !redact.contains(&true) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut in_run = false;
    for (i, ch) in text.char_indices() {
        // A character is redacted when any of its bytes is.
        if redact[i..i + ch.len_utf8()].contains(&true) {
            if !in_run {
                out.push_str("<redacted>");
                in_run = true;
            }
        } else {
            out.push(ch);
            in_run = false;
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

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjbGllbnQifQ.c2lnbmF0dXJlLWJ5dGVz";

    #[test]
    fn whole_cut_and_encoded_credentials_are_removed() {
        let cut = &JWT[..30];
        let tail = &JWT[25..];
        for (text, want) in [
            (format!("bad: {JWT}"), "bad: <redacted>"),
            (
                format!("bad: client_assertion={cut}"),
                "bad: client_assertion=<redacted>",
            ),
            (format!("{tail} was refused"), "<redacted> was refused"),
            ("pw=p%40ss%2Fw0rd%3D%3Dlong".to_owned(), "pw=<redacted>"),
            ("nothing here".to_owned(), "nothing here"),
        ] {
            assert_eq!(scrub_text(&text, &[JWT, "p@ss/w0rd==long"]), want);
        }
    }

    #[test]
    fn short_credentials_are_removed_only_whole() {
        assert_eq!(
            scrub_text("k=abcde x=abcd.", &["abcde"]),
            "k=<redacted> x=abcd."
        );
        assert_eq!(
            scrub_text("k=abc", &["abc"]),
            "k=abc",
            "under 4 bytes: never"
        );
        assert_eq!(
            scrub_text("clipped: eyJhbGc", &[JWT]),
            "clipped: <redacted>"
        );
    }

    #[test]
    fn pieces_next_to_other_text_and_multibyte_characters_are_cut_cleanly() {
        let text = format!("é{}ü and more", &JWT[3..20]);
        assert_eq!(scrub_text(&text, &[JWT]), "é<redacted>ü and more");
    }

    #[test]
    fn every_text_of_an_error_is_scrubbed() {
        let e = OAuthError::Endpoint {
            status: 400,
            error: format!("x{}", &JWT[..15]),
            description: Some(JWT[10..40].to_owned()),
            codes: vec![JWT[40..].to_owned()],
        }
        .scrub(&[JWT]);
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(&JWT[..MIN_FRAGMENT]), "{shown}");
        assert!(!shown.contains(&JWT[40..52]), "{shown}");
    }
}
