//! The responses the sidecar makes itself, all made here, and the one place where a failure
//! becomes such a response.
//!
//! Each carries `x-token-sidecar-error: <kind>` and a JSON body
//! `{"error": "<kind>", "message": "<one sentence>"}`. Messages are fixed sentences: internal
//! errors are logged (with [`ErrorChain`]), never echoed to the client.

use std::error::Error as StdError;

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::Body;

/// Name of the header that marks a response made by the sidecar.
pub const ERROR_HEADER: &str = "x-token-sidecar-error";

/// Every kind of response the sidecar makes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No unexpired token for the route (503 + `Retry-After`).
    TokenUnavailable,
    /// Connect or TLS failure to the upstream (502).
    UpstreamUnreachable,
    /// The upstream's answer was malformed, or the connection broke before it (502).
    UpstreamError,
    /// The upstream did not answer in time (504).
    UpstreamTimeout,
    /// A request the sidecar refuses to forward (400).
    BadRequest,
    /// Request headers over the limit (431).
    HeaderTooLarge,
    /// A request to the admin listener for something that is not there (404).
    NotFound,
    /// A method the admin endpoint does not answer (405).
    MethodNotAllowed,
    /// An admin action refused to this peer (403).
    Forbidden,
    /// A refresh was requested and failed (502).
    RefreshFailed,
    /// Too many requests: a refresh asked for too soon, the token request budget spent (429
    /// + `Retry-After`).
    RateLimited,
    /// Anything unexpected: a bug caught before it could drop the connection (500).
    Internal,
}

impl ErrorKind {
    /// The `error` value and header value.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::TokenUnavailable => "token_unavailable",
            ErrorKind::UpstreamUnreachable => "upstream_unreachable",
            ErrorKind::UpstreamError => "upstream_error",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::HeaderTooLarge => "header_too_large",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::RefreshFailed => "refresh_failed",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Internal => "internal_error",
        }
    }

    /// The status code sent with it.
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorKind::TokenUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::UpstreamUnreachable | ErrorKind::UpstreamError => StatusCode::BAD_GATEWAY,
            ErrorKind::RefreshFailed => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Builds the sidecar's own response for `kind` with a one-sentence `message`.
pub fn error_response(kind: ErrorKind, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": kind.as_str(), "message": message }).to_string();
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = kind.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(ERROR_HEADER, HeaderValue::from_static(kind.as_str()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// 429 `rate_limited` with `Retry-After` (whole seconds, at least 1).
pub fn rate_limited(message: &str, retry_after: std::time::Duration) -> Response<Body> {
    let mut resp = error_response(ErrorKind::RateLimited, message);
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    resp
}

/// 503 `token_unavailable`, telling the client when to try again.
pub fn token_unavailable(retry_after_secs: u64) -> Response<Body> {
    let mut resp = error_response(
        ErrorKind::TokenUnavailable,
        "No valid token is available for this route yet; retry later.",
    );
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs.max(1)),
    );
    resp
}

/// Why a request to the upstream failed, as far as the app's answer is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The app's own request body failed (a malformed chunk, a dropped upload): its fault.
    AppBody,
    /// The TLS handshake with the upstream failed.
    Tls,
    /// Connecting timed out.
    ConnectTimeout,
    /// The upstream could not be reached.
    Connect,
    /// The connection broke before a complete response arrived.
    Protocol,
}

impl UpstreamFailure {
    /// Classifies `err` (its whole cause chain); `connecting` says whether it happened while the
    /// connection was being established.
    pub fn classify(err: &(dyn StdError + 'static), connecting: bool) -> Self {
        if chain(err).any(|e| {
            e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_user)
        }) {
            return UpstreamFailure::AppBody;
        }
        let mut timed_out = false;
        for e in chain(err) {
            if e.downcast_ref::<rustls::Error>().is_some() {
                return UpstreamFailure::Tls;
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
                if wraps_tls_error(io) {
                    return UpstreamFailure::Tls;
                }
            }
        }
        match (connecting, timed_out) {
            (true, true) => UpstreamFailure::ConnectTimeout,
            (true, false) => UpstreamFailure::Connect,
            (false, _) => UpstreamFailure::Protocol,
        }
    }

    /// The kind of the sidecar's answer.
    pub fn kind(self) -> ErrorKind {
        match self {
            UpstreamFailure::AppBody => ErrorKind::BadRequest,
            UpstreamFailure::Tls | UpstreamFailure::ConnectTimeout | UpstreamFailure::Connect => {
                ErrorKind::UpstreamUnreachable
            }
            UpstreamFailure::Protocol => ErrorKind::UpstreamError,
        }
    }

    /// The `kind` label of `token_sidecar_upstream_errors_total` (`None`: not the upstream's
    /// failure).
    pub fn metric_label(self) -> Option<&'static str> {
        match self {
            UpstreamFailure::AppBody => None,
            UpstreamFailure::Tls => Some("tls"),
            UpstreamFailure::ConnectTimeout => Some("timeout"),
            UpstreamFailure::Connect => Some("connect"),
            UpstreamFailure::Protocol => Some("protocol"),
        }
    }

    /// The sentence sent to the app.
    pub fn message(self) -> &'static str {
        match self {
            UpstreamFailure::AppBody => "The request body could not be read.",
            UpstreamFailure::Tls => "The TLS handshake with the upstream failed.",
            UpstreamFailure::ConnectTimeout => "Connecting to the upstream timed out.",
            UpstreamFailure::Connect => "The upstream could not be reached.",
            UpstreamFailure::Protocol => {
                "The connection to the upstream failed before a complete response arrived."
            }
        }
    }
}

/// An error and its causes, outermost first.
fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn StdError + 'static)| (*e).source())
}

/// Whether an I/O error wraps a rustls error, possibly through further I/O errors (hyper-rustls
/// wraps tokio-rustls's `io::Error` in another one). `io::Error::source` skips the wrapped
/// error itself, so the chain is walked through `get_ref`.
fn wraps_tls_error(io: &std::io::Error) -> bool {
    let mut inner: Option<&(dyn StdError + 'static)> = io.get_ref().map(|e| e as _);
    while let Some(e) = inner {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        inner = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|e| e as _),
            None => e.source(),
        };
    }
    false
}

/// Displays an error with its whole cause chain.
pub struct ErrorChain<'a>(pub &'a (dyn StdError + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        for e in chain(self.0).skip(1) {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn shape() {
        let resp = token_unavailable(0);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[ERROR_HEADER], "token_unavailable");
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "token_unavailable");
        assert!(v["message"].as_str().unwrap().ends_with('.'));
    }

    #[test]
    fn failures_are_classified_through_their_causes() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            UpstreamFailure::classify(&refused, true),
            UpstreamFailure::Connect
        );
        let slow = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        assert_eq!(
            UpstreamFailure::classify(&slow, true),
            UpstreamFailure::ConnectTimeout
        );
        let tls = std::io::Error::other(std::io::Error::other(rustls::Error::DecryptError));
        assert_eq!(UpstreamFailure::classify(&tls, true), UpstreamFailure::Tls);
        assert_eq!(
            UpstreamFailure::classify(&refused, false),
            UpstreamFailure::Protocol
        );
        for f in [
            UpstreamFailure::AppBody,
            UpstreamFailure::Tls,
            UpstreamFailure::Connect,
            UpstreamFailure::Protocol,
        ] {
            assert!(f.message().ends_with('.'));
        }
        assert_eq!(UpstreamFailure::AppBody.kind(), ErrorKind::BadRequest);
        assert_eq!(UpstreamFailure::AppBody.metric_label(), None);
    }

    #[test]
    fn error_chains_show_every_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(ErrorChain(&e).to_string(), "outer: inner");
    }
}
