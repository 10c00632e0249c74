//! Token endpoint answers, parsed strictly (RFC 6749 5.1 and 5.2) and bounded in size.
//!
//! Only `error`, `error_description` and RingCentral's `errors[].errorCode` are ever taken from
//! an error body; the body itself is never logged, since some servers echo credentials.

use std::time::{Duration, SystemTime};

use http::{HeaderValue, StatusCode};
use serde_json::Value;
use zeroize::Zeroize;

use super::OAuthError;
use crate::secret::Secret;
use crate::token::set::{TokenSet, MAX_TOKEN_BYTES};

pub use crate::ratelimit::parse_retry_after;

/// Parses a 200 token response strictly (RFC 6749 5.1).
pub fn parse_success(
    body: &[u8],
    obtained_at: SystemTime,
    default_lifetime: Duration,
) -> Result<TokenSet, OAuthError> {
    let mut v: Value = serde_json::from_slice(body).map_err(|_| {
        OAuthError::Malformed(format!(
            "not JSON ({} bytes{})",
            body.len(),
            if looks_like_html(body) {
                ", looks like HTML"
            } else {
                ""
            }
        ))
    })?;
    let parsed = parse_fields(&v, obtained_at, default_lifetime);
    // The parsed copy held the tokens: wipe it.
    wipe_json(&mut v);
    parsed
}

/// Overwrites every string of a JSON value with zeros.
fn wipe_json(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(wipe_json),
        Value::Object(map) => map.values_mut().for_each(wipe_json),
        _ => {}
    }
}

fn parse_fields(
    v: &Value,
    obtained_at: SystemTime,
    default_lifetime: Duration,
) -> Result<TokenSet, OAuthError> {
    let obj = v
        .as_object()
        .ok_or_else(|| OAuthError::Malformed("not a JSON object".into()))?;
    if let Some(err) = obj.get("error").and_then(Value::as_str) {
        let err: String = err.chars().take(200).collect();
        return Err(OAuthError::Malformed(format!(
            "a 200 carrying an error ({err})"
        )));
    }
    let access_token = match obj.get("access_token") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(OAuthError::Malformed("access_token is empty".into()))
        }
        Some(_) => return Err(OAuthError::Malformed("access_token is not a string".into())),
        None => return Err(OAuthError::Malformed("no access_token".into())),
    };
    if access_token.len() > MAX_TOKEN_BYTES {
        return Err(OAuthError::Malformed(format!(
            "access_token is longer than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    if HeaderValue::from_str(&access_token).is_err() {
        return Err(OAuthError::Malformed(
            "access_token holds characters not allowed in a header".into(),
        ));
    }
    match obj.get("token_type") {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        // RFC 8693 2.2.1: a token exchange that issues something other than an access token
        // says `N_A`; the token is sent as it is.
        Some(Value::String(t)) if t == "N_A" && obj.contains_key("issued_token_type") => {}
        Some(Value::String(t)) => {
            return Err(OAuthError::Malformed(format!(
                "token_type `{}` is not bearer",
                t.chars().take(32).collect::<String>()
            )))
        }
        Some(_) => return Err(OAuthError::Malformed("token_type is not a string".into())),
        None => return Err(OAuthError::Malformed("no token_type".into())),
    }
    let lifetime = match obj.get("expires_in") {
        None | Some(Value::Null) => default_lifetime,
        Some(v) => Duration::from_secs(seconds(v).ok_or_else(|| {
            OAuthError::Malformed("expires_in is not a positive number of seconds".into())
        })?),
    };
    let refresh_token = match obj.get("refresh_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() > MAX_TOKEN_BYTES => {
            return Err(OAuthError::Malformed(format!(
                "refresh_token is longer than {MAX_TOKEN_BYTES} bytes"
            )))
        }
        Some(Value::String(s)) if !s.is_empty() => Some(Secret::new(s.clone())),
        Some(_) => {
            return Err(OAuthError::Malformed(
                "refresh_token is not a non-empty string".into(),
            ))
        }
    };
    let refresh_expires_at = match obj.get("refresh_token_expires_in") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            obtained_at
                + Duration::from_secs(seconds(v).ok_or_else(|| {
                    OAuthError::Malformed(
                        "refresh_token_expires_in is not a positive number".into(),
                    )
                })?),
        ),
    };
    let scope = obj.get("scope").and_then(Value::as_str).map(str::to_owned);
    Ok(TokenSet {
        access_token: Secret::new(access_token),
        expires_at: obtained_at + lifetime,
        refresh_token,
        refresh_expires_at,
        scope,
        obtained_at,
    })
}

/// A positive whole number of seconds, as a JSON number or a string of digits (some servers
/// send `"3599"`).
fn seconds(v: &Value) -> Option<u64> {
    let n = match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 1.0 && f.is_finite())
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }?;
    (n >= 1).then_some(n.min(10 * 365 * 24 * 3600))
}

fn looks_like_html(body: &[u8]) -> bool {
    let head = &body[..body.len().min(256)];
    let s = String::from_utf8_lossy(head).to_ascii_lowercase();
    s.contains("<html") || s.contains("<!doctype")
}

/// Parses an unsuccessful answer: an RFC 6749 5.2 error body when there is one.
pub fn parse_error(status: StatusCode, body: &[u8]) -> OAuthError {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return OAuthError::Status {
            status: status.as_u16(),
        };
    };
    let Some(error) = obj.get("error").and_then(Value::as_str) else {
        return OAuthError::Status {
            status: status.as_u16(),
        };
    };
    // Error codes are short tokens; cap what is kept so a hostile server cannot flood logs.
    let clip = |s: &str| s.chars().take(200).collect::<String>();
    let codes = obj
        .get("errors")
        .and_then(Value::as_array)
        .map(|errs| {
            errs.iter()
                .filter_map(|e| e.get("errorCode").and_then(Value::as_str))
                .take(5)
                .map(clip)
                .collect()
        })
        .unwrap_or_default();
    OAuthError::Endpoint {
        status: status.as_u16(),
        error: clip(error),
        description: obj
            .get("error_description")
            .and_then(Value::as_str)
            .map(clip),
        codes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::oauth::FailureClass;

    const H: Duration = Duration::from_secs(3600);

    fn ok(body: &str) -> Result<TokenSet, OAuthError> {
        parse_success(body.as_bytes(), SystemTime::UNIX_EPOCH, H)
    }

    #[test]
    fn ringcentral_response() {
        let t = ok(r#"{"access_token":"U1BC","token_type":"bearer","expires_in":3600,"refresh_token":"R1","refresh_token_expires_in":604800,"scope":"ReadAccounts","owner_id":"123","endpoint_id":"x"}"#).unwrap();
        assert_eq!(t.access_token.expose(), "U1BC");
        assert_eq!(t.lifetime(), H);
        assert_eq!(t.refresh_token.unwrap().expose(), "R1");
        assert!(t.refresh_expires_at.is_some());
    }

    #[test]
    fn lenient_where_rfc_allows() {
        let t = ok(r#"{"access_token":"a","token_type":"N_A","issued_token_type":"urn:ietf:params:oauth:token-type:jwt"}"#).unwrap();
        assert_eq!(t.access_token.expose(), "a");
        assert!(ok(r#"{"access_token":"a","token_type":"N_A"}"#).is_err());
        let t = ok(r#"{"access_token":"a","token_type":"Bearer"}"#).unwrap();
        assert_eq!(t.lifetime(), H, "missing expires_in takes the default");
        let t = ok(r#"{"access_token":"a","token_type":"BEARER","expires_in":"60"}"#).unwrap();
        assert_eq!(t.lifetime(), Duration::from_secs(60));
    }

    #[test]
    fn strict_everywhere_else() {
        for body in [
            "",
            "<html><body>502 Bad Gateway</body></html>",
            "[]",
            r#"{"token_type":"bearer","expires_in":60}"#,
            r#"{"access_token":"","token_type":"bearer"}"#,
            r#"{"access_token":5,"token_type":"bearer"}"#,
            r#"{"access_token":"a"}"#,
            r#"{"access_token":"a","token_type":"mac"}"#,
            r#"{"access_token":"a","token_type":"bearer","expires_in":-5}"#,
            r#"{"access_token":"a","token_type":"bearer","expires_in":"soon"}"#,
            r#"{"access_token":"a","token_type":"bearer","expires_in":0}"#,
            r#"{"access_token":"a\nb","token_type":"bearer"}"#,
            r#"{"access_token":"a","token_type":"bearer","refresh_token":7}"#,
            r#"{"error":"invalid_grant"}"#,
        ] {
            let e = ok(body).unwrap_err();
            assert!(matches!(e, OAuthError::Malformed(_)), "{body}: {e:?}");
            assert_eq!(e.class(), FailureClass::Transient);
        }
    }

    #[test]
    fn error_bodies() {
        let e = parse_error(
            StatusCode::BAD_REQUEST,
            br#"{"error":"invalid_grant","errors":[{"errorCode":"OAU-211","message":"Token revoked"}],"error_description":"Token revoked"}"#,
        );
        assert!(e.is_invalid_grant());
        assert_eq!(e.class(), FailureClass::Rejected);
        let msg = e.to_string();
        assert!(
            msg.contains("OAU-211") && msg.contains("Token revoked"),
            "{msg}"
        );
        let e = parse_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(e.class(), FailureClass::Transient);
        let e = parse_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"error":"server_error"}"#,
        );
        assert_eq!(e.class(), FailureClass::Transient);
    }

    #[test]
    fn retry_after() {
        assert_eq!(parse_retry_after("30"), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
