//! The OAuth2 token endpoint client (RFC 6749): builds grant requests, parses responses
//! strictly and classifies failures.
//!
//! Only `error`, `error_description` and RingCentral's `errors[].errorCode` are ever taken
//! from an error body; the body itself is never logged, since some servers echo credentials.

use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;

use zeroize::{Zeroize, Zeroizing};

use crate::config::{ClientAuth, Grant, TokenConfig};
use crate::secret::{zeroizing_bytes, Secret, SecretError, SecretSource};

/// RFC 7523's grant type.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Token responses larger than this are refused (a token set is a few kilobytes).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

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

/// What to ask the token endpoint for.
#[derive(Debug)]
pub enum GrantRequest<'a> {
    /// The profile's primary grant (client credentials, JWT, password, bootstrap refresh token).
    Primary,
    /// A refresh with this refresh token.
    Refresh(&'a Secret),
}

/// Form fields of a token request (secrets included: wiped when dropped).
type FormFields = Vec<(&'static str, Zeroizing<String>)>;

/// A form value that is wiped when dropped.
fn z(s: impl Into<String>) -> Zeroizing<String> {
    Zeroizing::new(s.into())
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client of one profile's token endpoint.
#[derive(Clone)]
pub struct OAuthClient {
    http: HttpClient,
    token_url: Uri,
    cfg: TokenConfig,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

impl OAuthClient {
    /// A client for `cfg` (which must have an OAuth2 grant and a token URL).
    pub fn new(cfg: &TokenConfig) -> Result<Self, String> {
        let url = cfg
            .token_url
            .as_deref()
            .ok_or_else(|| "no token_url".to_owned())?;
        let token_url: Uri = url.parse().map_err(|e| format!("token_url: {e}"))?;
        let roots = crate::proxy::client::root_store(None).map_err(|e| e.to_string())?;
        let tls = crate::proxy::client::tls_config(roots).map_err(|e| e.to_string())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.request_timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(OAuthClient {
            http: client,
            token_url,
            cfg: cfg.clone(),
        })
    }

    /// The form fields of a request (secrets included: never log the result).
    fn form(&self, grant: &GrantRequest<'_>) -> Result<(FormFields, bool), OAuthError> {
        let mut fields: FormFields = Vec::new();
        match grant {
            GrantRequest::Refresh(rt) => {
                fields.push(("grant_type", z("refresh_token")));
                fields.push(("refresh_token", z(rt.expose().to_owned())));
            }
            GrantRequest::Primary => match &self.cfg.grant {
                Grant::ClientCredentials => fields.push(("grant_type", z("client_credentials"))),
                Grant::JwtBearer { assertion } => {
                    fields.push(("grant_type", z(JWT_BEARER)));
                    fields.push(("assertion", z(assertion.load()?.expose().to_owned())));
                }
                Grant::RefreshToken { refresh_token } => {
                    fields.push(("grant_type", z("refresh_token")));
                    fields.push((
                        "refresh_token",
                        z(refresh_token.load()?.expose().to_owned()),
                    ));
                }
                Grant::Password { username, password } => {
                    fields.push(("grant_type", z("password")));
                    fields.push(("username", z(username.clone())));
                    fields.push(("password", z(password.load()?.expose().to_owned())));
                }
                Grant::File { .. } | Grant::Static { .. } => {
                    return Err(OAuthError::Credentials(
                        "this profile has no OAuth2 grant".into(),
                    ))
                }
            },
        }
        if let Some(scope) = &self.cfg.scope {
            // RFC 6749 6: a refresh may narrow the scope but need not repeat it.
            if matches!(grant, GrantRequest::Primary) {
                fields.push(("scope", z(scope.clone())));
            }
        }
        let secret = self
            .cfg
            .client_secret
            .as_ref()
            .map(SecretSource::load)
            .transpose()?;
        let use_basic = self.cfg.client_auth == ClientAuth::Basic && secret.is_some();
        if !use_basic {
            if let Some(id) = &self.cfg.client_id {
                fields.push(("client_id", z(id.clone())));
            }
            if let Some(s) = &secret {
                fields.push(("client_secret", z(s.expose().to_owned())));
            }
        }
        Ok((fields, use_basic))
    }

    /// Sends one token request and parses the answer.
    pub async fn request(&self, grant: GrantRequest<'_>) -> Result<TokenSet, OAuthError> {
        let (fields, use_basic) = self.form(&grant)?;
        // Every credential this request carries, to scrub from whatever the server answers: some
        // servers echo the submitted form in their error descriptions.
        let mut sent_secrets: Vec<Zeroizing<String>> = fields
            .iter()
            .filter(|(k, _)| SECRET_FIELDS.contains(k))
            .map(|(_, v)| v.clone())
            .collect();
        let mut body = Zeroizing::new(String::new());
        {
            let mut ser = form_urlencoded::Serializer::new(&mut *body);
            for (k, v) in &fields {
                ser.append_pair(k, v);
            }
            for (k, v) in &self.cfg.params {
                ser.append_pair(k, v);
            }
            ser.finish();
        }
        let body = zeroizing_bytes(std::mem::take(&mut *body).into_bytes());
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.token_url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("token-sidecar/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| OAuthError::Transport(e.to_string()))?;
        if use_basic {
            let id = self.cfg.client_id.as_deref().unwrap_or_default();
            let secret = self
                .cfg
                .client_secret
                .as_ref()
                .map(SecretSource::load)
                .transpose()?;
            let secret = z(secret.as_ref().map(Secret::expose).unwrap_or_default());
            // RFC 6749 2.3.1: form-encode id and secret before Basic encoding.
            let enc =
                |s: &str| z(form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>());
            let pair = z(format!("{}:{}", *enc(id), *enc(&secret)));
            let creds = z(base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()));
            let header = zeroizing_bytes(format!("Basic {}", *creds).into_bytes());
            sent_secrets.push(secret);
            sent_secrets.push(creds);
            let mut hv = HeaderValue::from_maybe_shared(header).map_err(|_| {
                OAuthError::Credentials("client credentials hold invalid characters".into())
            })?;
            hv.set_sensitive(true);
            req.headers_mut().insert(header::AUTHORIZATION, hv);
        }
        let started = SystemTime::now();
        let timeout = self.cfg.request_timeout;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| OAuthError::Transport(crate::proxy::ErrorChain(&e).to_string()))?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let json_ct = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"));
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        OAuthError::Malformed(format!(
                            "response larger than {MAX_RESPONSE_BYTES} bytes"
                        ))
                    } else {
                        OAuthError::Transport(format!("reading the response: {e}"))
                    }
                })?
                .to_bytes();
            Ok::<_, OAuthError>((status, retry_after, json_ct, body))
        };
        let (status, retry_after, json_ct, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| {
            OAuthError::Transport(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))
        })??;
        if status == StatusCode::OK {
            return parse_success(&body, started, self.cfg.default_lifetime)
                .map_err(|e| match e {
                    OAuthError::Malformed(m) if !json_ct => {
                        OAuthError::Malformed(format!("{m}; the content type is not JSON"))
                    }
                    e => e,
                })
                .map_err(|e| e.scrub(&sent_secrets));
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            return Err(OAuthError::Throttled {
                status: status.as_u16(),
                retry_after,
            });
        }
        Err(parse_error(status, &body).scrub(&sent_secrets))
    }
}

/// Form fields whose values are credentials.
const SECRET_FIELDS: [&str; 4] = ["assertion", "refresh_token", "password", "client_secret"];

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

/// Parses `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    // A server cannot make the sidecar wait longer than a day, however it writes it.
    const MAX: Duration = Duration::from_secs(24 * 3600);
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX));
    }
    httpdate_parse(v).map(|t| {
        t.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(MAX)
    })
}

fn httpdate_parse(v: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(v).ok().or_else(|| {
        // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
        let parts: Vec<&str> = v.split_whitespace().collect();
        if parts.len() != 6 || parts[5] != "GMT" {
            return None;
        }
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = months.iter().position(|m| *m == parts[2])? + 1;
        let s = format!("{}-{:02}-{:0>2}T{}Z", parts[3], month, parts[1], parts[4]);
        humantime::parse_rfc3339(&s).ok()
    })
}

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
