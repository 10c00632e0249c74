//! Configuration: flags, environment and an optional TOML file, checked once into a typed
//! [`Config`].
//!
//! Precedence: a flag, then its `TOKEN_SIDECAR_*` variable (clap reads both), then the file,
//! then the default. Route and token flags apply to the file's route or token profile when
//! there is exactly one. Every problem is collected and reported at once, naming the flag or
//! key; [`ConfigErrors`] maps to exit code 64. Warnings are returned with the configuration
//! ([`Loaded`]) for the caller to log.
//!
//! Each setting's flag, variable, key, default and help are declared once, in [`settings`].
//! [`load`] reads the file, then checks each section in turn (`admin` and the top level,
//! `shared`, `tokens` with their `grants`, `routes`), all through one `checker` that gathers
//! the problems and the warnings.

pub mod cli;
pub mod file;
pub mod settings;

mod admin;
mod checker;
mod grants;
mod routes;
mod shared;
mod tokens;
mod warning;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use crate::proxy::upstream::Upstream;
use crate::secret::{Secret, SecretSource};
use checker::Checker;
pub use cli::{CheckFlags, Cli, Command, DevFlags, Flags};
pub use warning::{log_warnings, Warning};

/// The exit code for an invalid configuration (`EX_USAGE`).
pub const EXIT_INVALID_CONFIG: i32 = crate::exit::INVALID_CONFIG;

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Proxy routes, one listener each.
    pub routes: Vec<RouteConfig>,
    /// Token profiles by name.
    pub tokens: BTreeMap<String, TokenConfig>,
    /// The shared store, when replicas share a token.
    pub shared: Option<SharedConfig>,
    /// Log format.
    pub log_format: LogFormat,
    /// Time in-flight requests get to finish on SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Worker threads.
    pub threads: usize,
    /// Connections the admin listener holds open at once.
    pub admin_max_connections: usize,
    /// Bytes of request bodies held for 401 replays, all routes together.
    pub retry_body_budget: u64,
}

/// `[shared]`: replicas share one token set through Redis (the shared store's own settings
/// type, so that the store does not depend on the configuration).
pub use crate::token::shared::SharedConfig;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// One `[[route]]`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Metric label `route`.
    pub name: String,
    /// Where the app connects.
    pub listen: SocketAddr,
    /// Where requests go.
    pub upstream: Upstream,
    /// Extra CA file for the upstream.
    pub upstream_ca_file: Option<PathBuf>,
    /// Client certificate presented to the upstream (mutual TLS).
    pub upstream_client_cert: Option<ClientCertFiles>,
    /// The token profile used.
    pub token: String,
    /// Refresh and retry once on a 401.
    pub refresh_on_401: bool,
    /// Bodies up to this size are kept for a replay after a 401.
    pub retry_body_limit: u64,
    /// Header the token is written to.
    pub header: HeaderName,
    /// Written before the token.
    pub header_prefix: String,
    /// Upper bound on waiting for the upstream's response headers.
    pub upstream_timeout: Duration,
    /// Upper bound on connecting to the upstream.
    pub connect_timeout: Duration,
    /// Idle upstream connections are closed after this time.
    pub upstream_idle_timeout: Duration,
    /// Upstream connections open at once, at most (0: no limit).
    pub max_upstream_connections: usize,
    /// Time an app has to send request headers; idle keep-alive connections close after it.
    pub header_read_timeout: Duration,
    /// Request header blocks over this size get 431.
    pub max_request_header_bytes: usize,
    /// Connections the listener holds open at once; more are closed at once.
    pub max_connections: usize,
    /// Host names requests may name besides the listener's own (lowercase; `*.` prefixes
    /// match subdomains).
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed besides the listener's own (lowercase `scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
    /// Rate limits: blocks learned from the upstream, groups, rates.
    pub limits: LimitSettings,
}

pub use crate::ratelimit::limits::{LimitSettings, Mode as RateLimitMode};
pub use crate::ratelimit::rules::{LimitRule, Pattern};

/// How the client authenticates to the token endpoint (RFC 6749 2.3.1, RFC 7523, RFC 8705).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with client id and secret.
    Basic,
    /// `client_id` (and `client_secret`) in the form body.
    Body,
    /// `client_id` only: a public client.
    None,
    /// A client assertion signed with a private key ([`JwtSettings`]).
    PrivateKeyJwt,
    /// A client assertion signed HS256 with the client secret.
    ClientSecretJwt,
    /// A client assertion read from a file before every request (a projected
    /// service-account token).
    AssertionFile,
    /// Mutual TLS: the client certificate authenticates, `client_id` in the form.
    Tls,
}

/// Every client authentication method, in the order the help lists them.
pub const CLIENT_AUTH_METHODS: [ClientAuth; 7] = [
    ClientAuth::Basic,
    ClientAuth::Body,
    ClientAuth::None,
    ClientAuth::PrivateKeyJwt,
    ClientAuth::ClientSecretJwt,
    ClientAuth::AssertionFile,
    ClientAuth::Tls,
];

/// How client assertions are signed (`private_key_jwt`, `client_secret_jwt`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtSettings {
    /// The PEM private key (`private_key_jwt`).
    pub signing_key_file: Option<PathBuf>,
    /// The `kid` header.
    pub key_id: Option<String>,
    /// The algorithm (JOSE name); `None`: from the key.
    pub alg: Option<String>,
    /// The `aud` claim; `None`: the token endpoint URL.
    pub audience: Option<String>,
}

pub use crate::tls::ClientCertFiles;

/// Where a profile's tokens come from.
#[derive(Debug, Clone)]
pub enum Grant {
    /// OAuth2 `client_credentials`.
    ClientCredentials,
    /// RFC 7523 JWT bearer assertion.
    JwtBearer {
        /// The JWT.
        assertion: SecretSource,
    },
    /// RFC 8693 token exchange.
    TokenExchange {
        /// The subject token, read before every request.
        subject_token_file: PathBuf,
        /// Its type.
        subject_token_type: String,
        /// An actor token, read before every request.
        actor_token_file: Option<PathBuf>,
        /// Its type.
        actor_token_type: String,
        /// The type of token asked for.
        requested_token_type: Option<String>,
    },
    /// A bootstrap refresh token.
    RefreshToken {
        /// The refresh token.
        refresh_token: SecretSource,
    },
    /// Resource owner password.
    Password {
        /// Username.
        username: String,
        /// Password.
        password: SecretSource,
    },
    /// An access token read from a file and re-read when it changes.
    File {
        /// The file.
        path: PathBuf,
        /// Checked at least this often besides the watch.
        poll_interval: Duration,
    },
    /// A fixed token.
    Static {
        /// The token.
        token: Secret,
    },
}

impl Grant {
    /// The grant's name as configured.
    pub fn kind(&self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::JwtBearer { .. } => "jwt_bearer",
            Grant::TokenExchange { .. } => "token_exchange",
            Grant::RefreshToken { .. } => "refresh_token",
            Grant::Password { .. } => "password",
            Grant::File { .. } => "file",
            Grant::Static { .. } => "static",
        }
    }

    /// Whether tokens come from an OAuth2 token endpoint.
    pub fn is_oauth(&self) -> bool {
        !matches!(self, Grant::File { .. } | Grant::Static { .. })
    }
}

/// One `[token.NAME]` profile.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// The profile's name (metric label `token`).
    pub name: String,
    /// Where tokens come from.
    pub grant: Grant,
    /// The token endpoint (OAuth2 grants).
    pub token_url: Option<String>,
    /// Client id.
    pub client_id: Option<String>,
    /// Client secret.
    pub client_secret: Option<SecretSource>,
    /// How the client authenticates.
    pub client_auth: ClientAuth,
    /// How client assertions are signed.
    pub jwt: JwtSettings,
    /// The client assertion file (`assertion_file`).
    pub client_assertion_file: Option<PathBuf>,
    /// The client certificate presented to the token endpoint.
    pub client_cert: Option<ClientCertFiles>,
    /// Extra CA file for the token endpoint and the issuer.
    pub token_ca_file: Option<PathBuf>,
    /// The authorization server whose metadata names the token endpoint.
    pub issuer: Option<String>,
    /// `audience` values sent with every request.
    pub audience: Vec<String>,
    /// `resource` values (RFC 8707) sent with every request.
    pub resource: Vec<String>,
    /// Space-separated scopes.
    pub scope: Option<String>,
    /// Extra form fields.
    pub params: Vec<(String, String)>,
    /// Fixed refresh margin; `None` means max(60 s, 10 % of the lifetime).
    pub refresh_margin: Option<Duration>,
    /// Lower bound between two 401-triggered refreshes.
    pub min_refresh_interval: Duration,
    /// Where the token set is persisted.
    pub state_file: Option<PathBuf>,
    /// Lifetime assumed when `expires_in` is missing.
    pub default_lifetime: Duration,
    /// Upper bound on one token request.
    pub request_timeout: Duration,
    /// Token requests allowed per window, all replicas together when shared.
    pub request_budget: crate::ratelimit::Rate,
}

impl LogFormat {
    /// The format's name as configured.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        }
    }
}

impl ClientAuth {
    /// The method's name as configured.
    pub fn name(self) -> &'static str {
        match self {
            ClientAuth::Basic => "basic",
            ClientAuth::Body => "body",
            ClientAuth::None => "none",
            ClientAuth::PrivateKeyJwt => "private_key_jwt",
            ClientAuth::ClientSecretJwt => "client_secret_jwt",
            ClientAuth::AssertionFile => "assertion_file",
            ClientAuth::Tls => "tls",
        }
    }

    /// The names an authorization server's metadata gives the method
    /// (`token_endpoint_auth_methods_supported`, RFC 8414 2, RFC 8705 2.1).
    pub fn metadata_names(self) -> &'static [&'static str] {
        match self {
            ClientAuth::Basic => &["client_secret_basic"],
            ClientAuth::Body => &["client_secret_post"],
            ClientAuth::None => &["none"],
            ClientAuth::PrivateKeyJwt | ClientAuth::AssertionFile => &["private_key_jwt"],
            ClientAuth::ClientSecretJwt => &["client_secret_jwt"],
            ClientAuth::Tls => &["tls_client_auth", "self_signed_tls_client_auth"],
        }
    }

    /// Whether the method sends the client secret (or signs with it).
    pub fn uses_secret(self) -> bool {
        matches!(
            self,
            ClientAuth::Basic | ClientAuth::Body | ClientAuth::ClientSecretJwt
        )
    }
}

/// A configuration that loaded, and the warnings found on the way, for the caller to log.
///
/// It dereferences to its [`Config`], for code that only reads the configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// What deserves a word, in the order found.
    pub warnings: Vec<Warning>,
}

impl std::ops::Deref for Loaded {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

/// Every problem found in a configuration (`.0`, printed by `Display`), and the warnings
/// found on the way (`.1`), which the caller logs as it would for a valid configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>, pub Vec<Warning>);

impl ConfigErrors {
    /// The warnings found before the configuration was refused.
    pub fn warnings(&self) -> &[Warning] {
        &self.1
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The longest duration any setting accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Default proxy listener.
pub const DEFAULT_LISTEN: &str = settings::route::LISTEN.default;
/// Default admin listener.
pub const DEFAULT_ADMIN_LISTEN: &str = settings::admin::LISTEN.default;
/// Default cap on a proxy listener's open connections.
pub const DEFAULT_MAX_CONNECTIONS: u64 = settings::route::MAX_CONNECTIONS.default;
/// Default cap on the admin listener's open connections.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: u64 = settings::admin::MAX_CONNECTIONS.default;
/// Default total of request bytes held for 401 replays.
pub const DEFAULT_RETRY_BODY_BUDGET: u64 = settings::top::RETRY_BODY_BUDGET.default;
/// Default token request budget: RingCentral's Auth group, 5 requests a minute.
pub const DEFAULT_TOKEN_REQUEST_BUDGET: crate::ratelimit::Rate =
    settings::token::TOKEN_REQUEST_BUDGET.default;

/// The log format asked for, read before the configuration is loaded so that the warnings
/// of loading it are already written in that format: `--log-format` (or its variable), else
/// the config file's `log_format`, else the default (JSON), also for a bad value: [`load`]
/// reports it.
pub fn log_format_hint(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> LogFormat {
    let s = &settings::top::LOG_FORMAT;
    let from_file = || {
        let text = std::fs::read_to_string(flags.config.as_ref()?).ok()?;
        let value: toml::Value = toml::from_str(&text).ok()?;
        file::expand(value.get(s.key)?.as_str()?, env).ok()
    };
    let asked = flags.log_format.clone().or_else(from_file);
    [LogFormat::Json, LogFormat::Text]
        .into_iter()
        .find(|f| asked.as_deref() == Some(f.name()))
        .unwrap_or(s.default)
}

/// Loads the configuration from flags (already merged with the environment by clap), the
/// config file they name, and `env` for `${VAR}` expansion. Nothing is logged: the warnings
/// come back with the configuration, or with the problems.
pub fn load(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigErrors> {
    let mut c = Checker::default();
    let Some(mut raw) = read_file(flags, env, &mut c) else {
        return Err(c.into_errors());
    };
    let (raw_routes, raw_tokens) = sections(
        std::mem::take(&mut raw.route),
        std::mem::take(&mut raw.token),
    );
    let route_flags_apply = raw_routes.len() == 1;
    let token_flags_apply = raw_tokens.len() == 1;
    if flags.config.is_some() {
        if !route_flags_apply {
            refuse(routes::flags_given(flags), "routes", "route's", &mut c);
        }
        if !token_flags_apply {
            refuse(
                tokens::flags_given(flags),
                "token profiles",
                "profile's",
                &mut c,
            );
        }
    }
    let process = admin::process(flags, &raw, &mut c);
    let shared = shared::shared(flags, raw.shared.take().unwrap_or_default(), &mut c);
    let tokens = tokens::profiles(flags, &raw_tokens, token_flags_apply, &mut c);
    let profiles: Vec<&str> = raw_tokens.keys().map(String::as_str).collect();
    let routes = routes::routes(
        flags,
        &raw_routes,
        route_flags_apply,
        &profiles,
        process.admin_listen,
        &mut c,
    );
    c.finish(|| Config {
        admin_listen: process.admin_listen,
        routes,
        tokens,
        shared,
        log_format: process.log_format,
        shutdown_grace: process.shutdown_grace,
        threads: process.threads,
        admin_max_connections: process.admin_max_connections,
        retry_body_budget: process.retry_body_budget,
    })
}

/// The file `--config` names, parsed (an empty one without `--config`). A file that cannot be
/// read or parsed is the only problem reported (`None`): checking the flags against an empty
/// file would name routes and profiles that are not there.
fn read_file(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
    c: &mut Checker,
) -> Option<file::RawFile> {
    let Some(path) = &flags.config else {
        return Some(file::RawFile::default());
    };
    match std::fs::read_to_string(path) {
        Ok(text) => file::parse(&path.display().to_string(), &text, env, c.errors_mut()),
        Err(e) => {
            c.err(format!("--config: cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// The routes and token profiles to check: the file's, or one of each for the flags to set.
fn sections(
    mut routes: Vec<file::RawRoute>,
    mut tokens: BTreeMap<String, file::RawToken>,
) -> (Vec<file::RawRoute>, BTreeMap<String, file::RawToken>) {
    if routes.is_empty() {
        // With several profiles in the file, which one the route uses is not guessed: the
        // route's check reports the missing `token`.
        let token = match tokens.len() {
            0 => Some("default".to_owned()),
            1 => tokens.keys().next().cloned(),
            _ => None,
        };
        routes.push(file::RawRoute {
            name: Some("default".into()),
            token,
            ..Default::default()
        });
    }
    if tokens.is_empty() {
        let name = routes[0].token.clone().unwrap_or_else(|| "default".into());
        tokens.insert(name, file::RawToken::default());
    }
    (routes, tokens)
}

/// Route or token flags given while the file defines several routes or profiles.
fn refuse(given: Vec<&str>, several: &str, table: &str, c: &mut Checker) {
    for name in given {
        c.err(format!(
            "--{name}: the config file defines several {several}; set it in the {table} table instead"
        ));
    }
}

/// Whether `host` is `localhost` or a loopback IP.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Config {
    /// A summary for `check` and the startup log: no secrets.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "admin: {}", self.admin_listen);
        for r in &self.routes {
            // A fixed token cannot answer a 401 with a newer one: its 401s pass through.
            let fixed = self
                .tokens
                .get(&r.token)
                .is_some_and(|t| matches!(t.grant, Grant::Static { .. }));
            let _ = writeln!(
                s,
                "route {}: {} -> {}://{}{} (token {}, header {}, refresh_on_401 {}, rate limits {}{})",
                r.name,
                r.listen,
                r.upstream.scheme(),
                r.upstream.authority(),
                r.upstream.base_path(),
                r.token,
                r.header,
                if fixed && r.refresh_on_401 {
                    "false (a static token cannot be renewed)"
                } else if r.refresh_on_401 {
                    "true"
                } else {
                    "false"
                },
                r.limits.mode.name(),
                match r.limits.rules.len() {
                    0 => String::new(),
                    n => format!(", {n} rule(s)"),
                }
            );
            if let Some(c) = &r.upstream_client_cert {
                let _ = writeln!(s, "route {}: upstream {}", r.name, cert_summary(c));
            }
        }
        for t in self.tokens.values() {
            let _ = write!(s, "token {}: grant {}", t.name, t.grant.kind());
            if let Some(u) = &t.token_url {
                let _ = write!(s, ", token_url {u}");
            }
            if let Some(id) = &t.client_id {
                let _ = write!(s, ", client_id {id}");
            }
            if let Grant::File { path, .. } = &t.grant {
                let _ = write!(s, ", token_file {}", path.display());
            }
            if let Some(p) = &t.state_file {
                let _ = write!(s, ", state_file {}", p.display());
            }
            if t.grant.is_oauth() {
                if t.token_url.is_none() {
                    if let Some(i) = &t.issuer {
                        let _ = write!(s, ", token endpoint discovered from issuer {i}");
                    }
                }
                let _ = write!(s, ", client_auth {}", t.client_auth.name());
                if let Some(alg) = t.jwt_alg() {
                    let _ = write!(s, ", jwt alg {alg}");
                }
                if let Some(c) = &t.client_cert {
                    let _ = write!(s, ", {}", cert_summary(c));
                }
                let _ = write!(s, ", token_request_budget {}", t.request_budget);
            }
            let _ = writeln!(s);
        }
        if let Some(shared) = &self.shared {
            let sealing = if shared.seal_keys.is_some() {
                "entries sealed with the shared key"
            } else {
                "entries NOT sealed (no --shared-key-file)"
            };
            let _ = writeln!(s, "shared store: redis (URL redacted), {sealing}");
        }
        let _ = writeln!(
            s,
            "threads: {}, shutdown grace: {:?}",
            self.threads, self.shutdown_grace
        );
        s
    }
}

impl TokenConfig {
    /// The algorithm client assertions are signed with (`private_key_jwt`,
    /// `client_secret_jwt`), as the key in its file now decides it: for `check`.
    pub fn jwt_alg(&self) -> Option<&'static str> {
        use crate::token::oauth::assertion::{alg_name, parse_alg, SigningKey};
        let alg = self.jwt.alg.as_deref().and_then(parse_alg);
        match self.client_auth {
            ClientAuth::PrivateKeyJwt => {
                let path = self.jwt.signing_key_file.as_deref()?;
                SigningKey::load(path, alg).ok().map(|k| alg_name(k.alg()))
            }
            ClientAuth::ClientSecretJwt => Some(alg.map_or("HS256", alg_name)),
            _ => None,
        }
    }
}

/// A client certificate as `check` shows it: its subject and expiry, never the key.
fn cert_summary(files: &ClientCertFiles) -> String {
    match files.summary() {
        Ok(c) => format!(
            "client certificate {} (expires {})",
            c.subject,
            warning::unix_to_rfc3339(c.not_after)
        ),
        Err(e) => format!("client certificate: {e}"),
    }
}

#[cfg(test)]
mod tests;
