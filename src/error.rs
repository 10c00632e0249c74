//! The responses the sidecar makes itself, all made here.
//!
//! Each carries `x-token-sidecar-error: <kind>` and a JSON body
//! `{"error": "<kind>", "message": "<one sentence>"}`. Messages are fixed sentences: internal
//! errors are logged, never echoed to the client.

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
    /// Anything unexpected (500).
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
}
