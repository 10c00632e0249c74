//! The OAuth2 token endpoint (RFC 6749): the [`TokenEndpoint`] seam the refresher talks to,
//! and [`OAuthClient`], its HTTP implementation, which builds the grant requests
//! ([`GrantRequest`]), sends them and hands the answer to [`response`].
//!
//! - [`client_auth`]: what each client authentication method adds to a request;
//! - [`assertion`]: signed client assertions, and the `exp` of a JWT read from a file;
//! - [`discovery`]: the token endpoint from the issuer's metadata (RFC 8414, OIDC);
//! - [`error`]: why a request failed and how the refresher reacts ([`OAuthError`]);
//! - [`response`]: the strict parsing of token and error bodies, and `Retry-After`.

pub mod assertion;
mod client_auth;
pub mod discovery;
pub mod error;
pub mod response;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use zeroize::Zeroizing;

use crate::config::{Grant, TokenConfig};
use crate::secret::{zeroizing_bytes, Secret};
use crate::token::set::TokenSet;
use crate::token::TokenStore;
pub use error::{FailureClass, OAuthError};
pub use response::{parse_error, parse_retry_after, parse_success};

/// RFC 7523's grant type.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// RFC 8693's grant type.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Token responses larger than this are refused (a token set is a few kilobytes).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Where token requests go: the token endpoint, or a fake of it in the refresher's tests.
pub trait TokenEndpoint: Send + Sync + 'static {
    /// Sends one token request and parses the answer.
    fn request(
        &self,
        grant: GrantRequest<'_>,
    ) -> impl Future<Output = Result<TokenSet, OAuthError>> + Send;
}

impl TokenEndpoint for OAuthClient {
    fn request(
        &self,
        grant: GrantRequest<'_>,
    ) -> impl Future<Output = Result<TokenSet, OAuthError>> + Send {
        self.send(grant)
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

/// The HTTP client of a profile's authorization server: the extra CA of `--token-ca-file`,
/// and the client certificate of `--tls-client-cert-file` (read again when it changes).
fn http_client(cfg: &TokenConfig) -> Result<HttpClient, String> {
    let roots = crate::tls::root_store(cfg.token_ca_file.as_deref()).map_err(|e| e.to_string())?;
    let tls = crate::tls::tls_config(roots, cfg.client_cert.as_ref()).map_err(|e| e.to_string())?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(cfg.request_timeout));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30));
    if cfg.client_cert.is_some() {
        // The certificate authenticates the client at the handshake: a kept-alive connection
        // would go on presenting a renewed one's predecessor. Token requests are rare; each
        // gets its own connection.
        builder.pool_max_idle_per_host(0);
    }
    Ok(builder.build(connector))
}

/// A client of one profile's token endpoint.
#[derive(Clone)]
pub struct OAuthClient {
    http: HttpClient,
    token_url: Uri,
    cfg: TokenConfig,
    /// Where the expiry of a JWT read from a file is reported.
    store: Option<Arc<TokenStore>>,
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
        Ok(OAuthClient {
            http: http_client(cfg)?,
            token_url,
            cfg: cfg.clone(),
            store: None,
        })
    }

    /// The same client, reporting the expiry of each JWT it reads from a file (a client
    /// assertion, a subject token) to `store`.
    pub fn reporting_to(mut self, store: Arc<TokenStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The form fields of a request (secrets included: never log the result), the client
    /// secret when it goes in HTTP Basic instead, and the JWT read from a file that expires
    /// first.
    fn form(&self, grant: &GrantRequest<'_>) -> Result<Form, OAuthError> {
        let mut fields: FormFields = Vec::new();
        let mut credential = None;
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
                Grant::TokenExchange {
                    subject_token_file,
                    subject_token_type,
                    actor_token_file,
                    actor_token_type,
                    requested_token_type,
                } => {
                    fields.push(("grant_type", z(TOKEN_EXCHANGE)));
                    let (subject, exp) =
                        client_auth::read_jwt_file(subject_token_file, "subject token file")?;
                    credential = exp;
                    fields.push(("subject_token", z(subject.expose())));
                    fields.push(("subject_token_type", z(subject_token_type.as_str())));
                    if let Some(path) = actor_token_file {
                        let (actor, exp) = client_auth::read_jwt_file(path, "actor token file")?;
                        credential = client_auth::earliest(credential, exp);
                        fields.push(("actor_token", z(actor.expose())));
                        fields.push(("actor_token_type", z(actor_token_type.as_str())));
                    }
                    if let Some(t) = requested_token_type {
                        fields.push(("requested_token_type", z(t.as_str())));
                    }
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
        // RFC 8693 2.1, RFC 8707 2: one field per value, with every grant.
        for a in &self.cfg.audience {
            fields.push(("audience", z(a.as_str())));
        }
        for r in &self.cfg.resource {
            fields.push(("resource", z(r.as_str())));
        }
        let auth = client_auth::authenticate(&self.cfg, &self.token_url.to_string(), &mut fields)?;
        Ok(Form {
            fields,
            basic: auth.basic,
            credential: client_auth::earliest(credential, auth.credential),
        })
    }

    /// Sends one token request and parses the answer.
    pub async fn send(&self, grant: GrantRequest<'_>) -> Result<TokenSet, OAuthError> {
        let form = self.form(&grant);
        if let (Some(store), Ok(form)) = (&self.store, &form) {
            store.note_credential_expiry(form.credential.clone());
        }
        let Form { fields, basic, .. } = form?;
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
        if let Some(secret) = basic {
            let id = self.cfg.client_id.as_deref().unwrap_or_default();
            let secret = z(secret.expose());
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
                .map_err(|e| OAuthError::Transport(crate::error::ErrorChain(&e).to_string()))?;
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

/// A request's form, before it is encoded.
struct Form {
    fields: FormFields,
    basic: Option<Secret>,
    credential: Option<(String, u64)>,
}

/// Form fields whose values are credentials.
const SECRET_FIELDS: [&str; 7] = [
    "assertion",
    "refresh_token",
    "password",
    "client_secret",
    "client_assertion",
    "subject_token",
    "actor_token",
];
