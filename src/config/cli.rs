//! Command-line flags, each mirrored by a `TOKEN_SIDECAR_<NAME>` environment variable.
//!
//! Values are taken as text and checked in [`super::load`], so that every bad value is
//! reported at once rather than the first one only.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// token-sidecar: owns an API token so the apps next to it never have to.
#[derive(Debug, Parser)]
#[command(
    name = "token-sidecar",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do (default: `run`).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags for the default `run`.
    #[command(flatten)]
    pub flags: Flags,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve: proxy listener(s), admin listener and background token refresh (the default).
    Run(Flags),
    /// Validate the configuration and print a summary without secrets; exit 64 when invalid.
    Check(Flags),
    /// Force one refresh now, persist it, print its metadata (never the token) and exit.
    Refresh(Flags),
    /// A self-contained demo: a built-in OAuth2 server, an echo upstream and the sidecar.
    Dev(DevFlags),
}

/// Flags of `dev`.
#[derive(Debug, Args, Clone, Default)]
pub struct DevFlags {
    /// Where the demo sidecar listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Where the demo admin listener listens.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: String,
    /// Lifetime of the demo tokens.
    #[arg(long, default_value = "30s")]
    pub token_lifetime: String,
    /// text or json.
    #[arg(long, default_value = "text", value_name = "text|json", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// A secret given on the command line or in the environment: `Debug` prints a placeholder.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretArg(pub String);

impl From<String> for SecretArg {
    fn from(s: String) -> Self {
        SecretArg(s)
    }
}

impl From<&str> for SecretArg {
    fn from(s: &str) -> Self {
        SecretArg(s.to_owned())
    }
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Flags of `run`, `check` and `refresh`.
#[derive(Debug, Args, Clone, Default)]
pub struct Flags {
    /// TOML configuration file (several routes and token profiles).
    #[arg(long, env = "TOKEN_SIDECAR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the app sends its requests [default: 127.0.0.1:8080].
    #[arg(long, env = "TOKEN_SIDECAR_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Admin listener: /metrics, /healthz, /readyz, /token-info, /refresh [default: 0.0.0.0:9090].
    #[arg(long, env = "TOKEN_SIDECAR_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Base URL requests are forwarded to, e.g. https://platform.ringcentral.com.
    #[arg(long, env = "TOKEN_SIDECAR_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,
    /// Extra PEM CA(s) trusted for the upstream.
    #[arg(long, env = "TOKEN_SIDECAR_UPSTREAM_CA_FILE", value_name = "FILE")]
    pub upstream_ca_file: Option<PathBuf>,
    /// client_credentials, jwt_bearer, refresh_token, password, file or static [default: client_credentials].
    #[arg(long, env = "TOKEN_SIDECAR_GRANT", value_name = "KIND")]
    pub grant: Option<String>,
    /// OAuth2 token endpoint.
    #[arg(long, env = "TOKEN_SIDECAR_TOKEN_URL", value_name = "URL")]
    pub token_url: Option<String>,
    /// OAuth2 client id.
    #[arg(long, env = "TOKEN_SIDECAR_CLIENT_ID", value_name = "ID")]
    pub client_id: Option<String>,
    /// OAuth2 client secret (prefer --client-secret-file).
    #[arg(
        long,
        env = "TOKEN_SIDECAR_CLIENT_SECRET",
        value_name = "S",
        hide_env_values = true
    )]
    pub client_secret: Option<SecretArg>,
    /// File holding the OAuth2 client secret.
    #[arg(long, env = "TOKEN_SIDECAR_CLIENT_SECRET_FILE", value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// basic or body: how the client authenticates to the token endpoint [default: basic].
    #[arg(long, env = "TOKEN_SIDECAR_CLIENT_AUTH", value_name = "basic|body")]
    pub client_auth: Option<String>,
    /// File holding the JWT assertion for jwt_bearer.
    #[arg(long, env = "TOKEN_SIDECAR_ASSERTION_FILE", value_name = "FILE")]
    pub assertion_file: Option<PathBuf>,
    /// File holding the bootstrap refresh token for refresh_token.
    #[arg(long, env = "TOKEN_SIDECAR_REFRESH_TOKEN_FILE", value_name = "FILE")]
    pub refresh_token_file: Option<PathBuf>,
    /// Username for password.
    #[arg(long, env = "TOKEN_SIDECAR_USERNAME", value_name = "U")]
    pub username: Option<String>,
    /// File holding the password for password.
    #[arg(long, env = "TOKEN_SIDECAR_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Space-separated scopes.
    #[arg(long, env = "TOKEN_SIDECAR_SCOPE", value_name = "S")]
    pub scope: Option<String>,
    /// Extra form field for the token endpoint, K=V (repeatable; comma-separated in the environment).
    #[arg(
        long,
        env = "TOKEN_SIDECAR_TOKEN_PARAM",
        value_name = "K=V",
        value_delimiter = ','
    )]
    pub token_param: Vec<String>,
    /// For --grant file: the file holding the access token.
    #[arg(long, env = "TOKEN_SIDECAR_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// For --grant static: a fixed token (for tests).
    #[arg(
        long,
        env = "TOKEN_SIDECAR_STATIC_TOKEN",
        value_name = "T",
        hide_env_values = true
    )]
    pub static_token: Option<SecretArg>,
    /// Refresh this long before expiry, jittered [default: max(60s, 10% of the lifetime)].
    #[arg(long, env = "TOKEN_SIDECAR_REFRESH_MARGIN", value_name = "DURATION")]
    pub refresh_margin: Option<String>,
    /// On a 401 from the upstream, refresh and retry once [default: true].
    #[arg(long, env = "TOKEN_SIDECAR_REFRESH_ON_401", value_name = "BOOL")]
    pub refresh_on_401: Option<String>,
    /// Lower bound between two 401-triggered refreshes of one token [default: 10s].
    #[arg(
        long,
        env = "TOKEN_SIDECAR_MIN_REFRESH_INTERVAL",
        value_name = "DURATION"
    )]
    pub min_refresh_interval: Option<String>,
    /// Request bodies up to this many bytes are kept for a replay after a 401 [default: 65536].
    #[arg(long, env = "TOKEN_SIDECAR_RETRY_BODY_LIMIT", value_name = "BYTES")]
    pub retry_body_limit: Option<String>,
    /// Persist the token set here (mode 0600) and reuse it at start.
    #[arg(long, env = "TOKEN_SIDECAR_STATE_FILE", value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// Share one token among replicas through Redis.
    #[arg(
        long,
        env = "TOKEN_SIDECAR_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis_url: Option<SecretArg>,
    /// File holding the Redis URL, password included (instead of --redis-url).
    #[arg(long, env = "TOKEN_SIDECAR_REDIS_URL_FILE", value_name = "FILE")]
    pub redis_url_file: Option<PathBuf>,
    /// File holding the key that seals shared-store entries: 32 random bytes, raw or base64 (one key per line; the first seals).
    #[arg(long, env = "TOKEN_SIDECAR_SHARED_KEY_FILE", value_name = "FILE")]
    pub shared_key_file: Option<PathBuf>,
    /// Token requests a profile may send, N/DURATION, all replicas together when shared [default: 5/60s].
    #[arg(
        long,
        env = "TOKEN_SIDECAR_TOKEN_REQUEST_BUDGET",
        value_name = "N/DURATION"
    )]
    pub token_request_budget: Option<String>,
    /// Connections a proxy listener holds open at once; more are closed at once [default: 4096].
    #[arg(long, env = "TOKEN_SIDECAR_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<String>,
    /// Connections the admin listener holds open at once; more are closed at once [default: 256].
    #[arg(long, env = "TOKEN_SIDECAR_ADMIN_MAX_CONNECTIONS", value_name = "N")]
    pub admin_max_connections: Option<String>,
    /// A host name requests may name besides the listener's own (repeatable; *.example.com for subdomains).
    #[arg(
        long,
        env = "TOKEN_SIDECAR_ALLOWED_HOST",
        value_name = "HOST",
        value_delimiter = ','
    )]
    pub allowed_host: Vec<String>,
    /// A browser origin allowed to use the route, e.g. http://localhost:3000 (repeatable).
    #[arg(
        long,
        env = "TOKEN_SIDECAR_ALLOWED_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origin: Vec<String>,
    /// Bytes of request bodies held for 401 replays, all routes together [default: 16777216].
    #[arg(long, env = "TOKEN_SIDECAR_RETRY_BODY_BUDGET", value_name = "BYTES")]
    pub retry_body_budget: Option<String>,
    /// Header the token is written to [default: Authorization].
    #[arg(long, env = "TOKEN_SIDECAR_HEADER", value_name = "NAME")]
    pub header: Option<String>,
    /// Written before the token [default: "Bearer "].
    #[arg(long, env = "TOKEN_SIDECAR_HEADER_PREFIX", value_name = "P")]
    pub header_prefix: Option<String>,
    /// json or text [default: json].
    #[arg(long, env = "TOKEN_SIDECAR_LOG_FORMAT", value_name = "json|text")]
    pub log_format: Option<String>,
    /// On SIGTERM/SIGINT, let in-flight requests finish within this time [default: 30s].
    #[arg(long, env = "TOKEN_SIDECAR_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<String>,
    /// Worker threads [default: the CPUs available to the process].
    #[arg(long, env = "TOKEN_SIDECAR_THREADS", value_name = "N")]
    pub threads: Option<String>,
    /// Upper bound on waiting for the upstream's response headers [default: 60s].
    #[arg(long, env = "TOKEN_SIDECAR_UPSTREAM_TIMEOUT", value_name = "DURATION")]
    pub upstream_timeout: Option<String>,
    /// Upper bound on connecting to the upstream [default: 5s].
    #[arg(long, env = "TOKEN_SIDECAR_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<String>,
    /// Idle upstream connections are closed after this time [default: 90s].
    #[arg(
        long,
        env = "TOKEN_SIDECAR_UPSTREAM_IDLE_TIMEOUT",
        value_name = "DURATION"
    )]
    pub upstream_idle_timeout: Option<String>,
    /// Upstream connections open at once, at most; more requests wait for one (0: no limit) [default: 512].
    #[arg(long, env = "TOKEN_SIDECAR_MAX_UPSTREAM_CONNECTIONS", value_name = "N")]
    pub max_upstream_connections: Option<String>,
    /// Time an app has to send a request's headers; also closes idle keep-alive connections [default: 30s].
    #[arg(
        long,
        env = "TOKEN_SIDECAR_HEADER_READ_TIMEOUT",
        value_name = "DURATION"
    )]
    pub header_read_timeout: Option<String>,
    /// Request header blocks over this size are answered 431 [default: 32768].
    #[arg(
        long,
        env = "TOKEN_SIDECAR_MAX_REQUEST_HEADER_BYTES",
        value_name = "BYTES"
    )]
    pub max_request_header_bytes: Option<String>,
    /// For --grant file: check the file at least this often besides watching it [default: 10s].
    #[arg(
        long,
        env = "TOKEN_SIDECAR_FILE_POLL_INTERVAL",
        value_name = "DURATION"
    )]
    pub file_poll_interval: Option<String>,
    /// Lifetime assumed when a token response has no expires_in [default: 1h].
    #[arg(
        long,
        env = "TOKEN_SIDECAR_DEFAULT_TOKEN_LIFETIME",
        value_name = "DURATION"
    )]
    pub default_token_lifetime: Option<String>,
    /// Upper bound on one call to the token endpoint [default: 10s].
    #[arg(
        long,
        env = "TOKEN_SIDECAR_TOKEN_REQUEST_TIMEOUT",
        value_name = "DURATION"
    )]
    pub token_request_timeout: Option<String>,
}
