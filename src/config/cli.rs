//! Command-line flags, each mirrored by a `TOKEN_SIDECAR_<NAME>` environment variable.
//!
//! Values are taken as text and checked in [`super::load`], so that every bad value is
//! reported at once rather than the first one only. Each flag's variable, placeholder and help
//! (its default included) come from [`super::settings`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::settings::{admin, route, shared, token, top};

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
    /// Validate the configuration and print a summary and its warnings without secrets; exit 64
    /// when invalid (or, with --strict, when anything deserves a warning).
    Check(CheckFlags),
    /// Force one refresh now, persist it, print its metadata (never the token) and exit.
    Refresh(Flags),
    /// A self-contained demo: a built-in OAuth2 server, an echo upstream and the sidecar.
    Dev(DevFlags),
}

/// Flags of `check`: those of `run`, and `--strict`.
#[derive(Debug, Args, Clone, Default)]
pub struct CheckFlags {
    /// Treat every warning as a problem: exit 64 when there is one.
    #[arg(long)]
    pub strict: bool,
    /// The flags of `run`.
    #[command(flatten)]
    pub flags: Flags,
}

/// Flags of `dev`.
#[derive(Debug, Args, Clone, Default)]
pub struct DevFlags {
    /// Where the demo sidecar listens.
    #[arg(long, default_value = super::DEFAULT_LISTEN)]
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
    /// `--config`: [`top::CONFIG`].
    #[arg(long, env = top::CONFIG.env, value_name = top::CONFIG.value, help = top::CONFIG.help())]
    pub config: Option<PathBuf>,
    /// `--listen`: [`route::LISTEN`].
    #[arg(long, env = route::LISTEN.env, value_name = route::LISTEN.value, help = route::LISTEN.help())]
    pub listen: Option<String>,
    /// `--admin-listen`: [`admin::LISTEN`].
    #[arg(long, env = admin::LISTEN.env, value_name = admin::LISTEN.value, help = admin::LISTEN.help())]
    pub admin_listen: Option<String>,
    /// `--upstream`: [`route::UPSTREAM`].
    #[arg(long, env = route::UPSTREAM.env, value_name = route::UPSTREAM.value, help = route::UPSTREAM.help())]
    pub upstream: Option<String>,
    /// `--upstream-ca-file`: [`route::UPSTREAM_CA_FILE`].
    #[arg(long, env = route::UPSTREAM_CA_FILE.env, value_name = route::UPSTREAM_CA_FILE.value, help = route::UPSTREAM_CA_FILE.help())]
    pub upstream_ca_file: Option<PathBuf>,
    /// `--upstream-tls-client-cert-file`: [`route::UPSTREAM_TLS_CLIENT_CERT_FILE`].
    #[arg(long, env = route::UPSTREAM_TLS_CLIENT_CERT_FILE.env, value_name = route::UPSTREAM_TLS_CLIENT_CERT_FILE.value, help = route::UPSTREAM_TLS_CLIENT_CERT_FILE.help())]
    pub upstream_tls_client_cert_file: Option<PathBuf>,
    /// `--upstream-tls-client-key-file`: [`route::UPSTREAM_TLS_CLIENT_KEY_FILE`].
    #[arg(long, env = route::UPSTREAM_TLS_CLIENT_KEY_FILE.env, value_name = route::UPSTREAM_TLS_CLIENT_KEY_FILE.value, help = route::UPSTREAM_TLS_CLIENT_KEY_FILE.help())]
    pub upstream_tls_client_key_file: Option<PathBuf>,
    /// `--rate-limit-mode`: [`route::RATE_LIMIT_MODE`].
    #[arg(long, env = route::RATE_LIMIT_MODE.env, value_name = route::RATE_LIMIT_MODE.value, help = route::RATE_LIMIT_MODE.help())]
    pub rate_limit_mode: Option<String>,
    /// `--rate-limit-max-wait`: [`route::RATE_LIMIT_MAX_WAIT`].
    #[arg(long, env = route::RATE_LIMIT_MAX_WAIT.env, value_name = route::RATE_LIMIT_MAX_WAIT.value, help = route::RATE_LIMIT_MAX_WAIT.help())]
    pub rate_limit_max_wait: Option<String>,
    /// `--rate-limit-default-wait`: [`route::RATE_LIMIT_DEFAULT_WAIT`].
    #[arg(long, env = route::RATE_LIMIT_DEFAULT_WAIT.env, value_name = route::RATE_LIMIT_DEFAULT_WAIT.value, help = route::RATE_LIMIT_DEFAULT_WAIT.help())]
    pub rate_limit_default_wait: Option<String>,
    /// `--grant`: [`token::GRANT`].
    #[arg(long, env = token::GRANT.env, value_name = token::GRANT.value, help = token::GRANT.help())]
    pub grant: Option<String>,
    /// `--token-url`: [`token::TOKEN_URL`].
    #[arg(long, env = token::TOKEN_URL.env, value_name = token::TOKEN_URL.value, help = token::TOKEN_URL.help())]
    pub token_url: Option<String>,
    /// `--client-id`: [`token::CLIENT_ID`].
    #[arg(long, env = token::CLIENT_ID.env, value_name = token::CLIENT_ID.value, help = token::CLIENT_ID.help())]
    pub client_id: Option<String>,
    /// `--client-secret`: [`token::CLIENT_SECRET`].
    #[arg(long, env = token::CLIENT_SECRET.env, value_name = token::CLIENT_SECRET.value, help = token::CLIENT_SECRET.help(), hide_env_values = true)]
    pub client_secret: Option<SecretArg>,
    /// `--client-secret-file`: [`token::CLIENT_SECRET_FILE`].
    #[arg(long, env = token::CLIENT_SECRET_FILE.env, value_name = token::CLIENT_SECRET_FILE.value, help = token::CLIENT_SECRET_FILE.help())]
    pub client_secret_file: Option<PathBuf>,
    /// `--client-auth`: [`token::CLIENT_AUTH`].
    #[arg(long, env = token::CLIENT_AUTH.env, value_name = token::CLIENT_AUTH.value, help = token::CLIENT_AUTH.help())]
    pub client_auth: Option<String>,
    /// `--jwt-signing-key-file`: [`token::JWT_SIGNING_KEY_FILE`].
    #[arg(long, env = token::JWT_SIGNING_KEY_FILE.env, value_name = token::JWT_SIGNING_KEY_FILE.value, help = token::JWT_SIGNING_KEY_FILE.help())]
    pub jwt_signing_key_file: Option<PathBuf>,
    /// `--jwt-key-id`: [`token::JWT_KEY_ID`].
    #[arg(long, env = token::JWT_KEY_ID.env, value_name = token::JWT_KEY_ID.value, help = token::JWT_KEY_ID.help())]
    pub jwt_key_id: Option<String>,
    /// `--jwt-alg`: [`token::JWT_ALG`].
    #[arg(long, env = token::JWT_ALG.env, value_name = token::JWT_ALG.value, help = token::JWT_ALG.help())]
    pub jwt_alg: Option<String>,
    /// `--jwt-audience`: [`token::JWT_AUDIENCE`].
    #[arg(long, env = token::JWT_AUDIENCE.env, value_name = token::JWT_AUDIENCE.value, help = token::JWT_AUDIENCE.help())]
    pub jwt_audience: Option<String>,
    /// `--client-assertion-file`: [`token::CLIENT_ASSERTION_FILE`].
    #[arg(long, env = token::CLIENT_ASSERTION_FILE.env, value_name = token::CLIENT_ASSERTION_FILE.value, help = token::CLIENT_ASSERTION_FILE.help())]
    pub client_assertion_file: Option<PathBuf>,
    /// `--tls-client-cert-file`: [`token::TLS_CLIENT_CERT_FILE`].
    #[arg(long, env = token::TLS_CLIENT_CERT_FILE.env, value_name = token::TLS_CLIENT_CERT_FILE.value, help = token::TLS_CLIENT_CERT_FILE.help())]
    pub tls_client_cert_file: Option<PathBuf>,
    /// `--tls-client-key-file`: [`token::TLS_CLIENT_KEY_FILE`].
    #[arg(long, env = token::TLS_CLIENT_KEY_FILE.env, value_name = token::TLS_CLIENT_KEY_FILE.value, help = token::TLS_CLIENT_KEY_FILE.help())]
    pub tls_client_key_file: Option<PathBuf>,
    /// `--token-ca-file`: [`token::TOKEN_CA_FILE`].
    #[arg(long, env = token::TOKEN_CA_FILE.env, value_name = token::TOKEN_CA_FILE.value, help = token::TOKEN_CA_FILE.help())]
    pub token_ca_file: Option<PathBuf>,
    /// `--issuer`: [`token::ISSUER`].
    #[arg(long, env = token::ISSUER.env, value_name = token::ISSUER.value, help = token::ISSUER.help())]
    pub issuer: Option<String>,
    /// `--audience`: [`token::AUDIENCE`].
    #[arg(long, env = token::AUDIENCE.env, value_name = token::AUDIENCE.value, help = token::AUDIENCE.help(), value_delimiter = ',')]
    pub audience: Vec<String>,
    /// `--resource`: [`token::RESOURCE`].
    #[arg(long, env = token::RESOURCE.env, value_name = token::RESOURCE.value, help = token::RESOURCE.help(), value_delimiter = ',')]
    pub resource: Vec<String>,
    /// `--subject-token-file`: [`token::SUBJECT_TOKEN_FILE`].
    #[arg(long, env = token::SUBJECT_TOKEN_FILE.env, value_name = token::SUBJECT_TOKEN_FILE.value, help = token::SUBJECT_TOKEN_FILE.help())]
    pub subject_token_file: Option<PathBuf>,
    /// `--subject-token-type`: [`token::SUBJECT_TOKEN_TYPE`].
    #[arg(long, env = token::SUBJECT_TOKEN_TYPE.env, value_name = token::SUBJECT_TOKEN_TYPE.value, help = token::SUBJECT_TOKEN_TYPE.help())]
    pub subject_token_type: Option<String>,
    /// `--actor-token-file`: [`token::ACTOR_TOKEN_FILE`].
    #[arg(long, env = token::ACTOR_TOKEN_FILE.env, value_name = token::ACTOR_TOKEN_FILE.value, help = token::ACTOR_TOKEN_FILE.help())]
    pub actor_token_file: Option<PathBuf>,
    /// `--actor-token-type`: [`token::ACTOR_TOKEN_TYPE`].
    #[arg(long, env = token::ACTOR_TOKEN_TYPE.env, value_name = token::ACTOR_TOKEN_TYPE.value, help = token::ACTOR_TOKEN_TYPE.help())]
    pub actor_token_type: Option<String>,
    /// `--requested-token-type`: [`token::REQUESTED_TOKEN_TYPE`].
    #[arg(long, env = token::REQUESTED_TOKEN_TYPE.env, value_name = token::REQUESTED_TOKEN_TYPE.value, help = token::REQUESTED_TOKEN_TYPE.help())]
    pub requested_token_type: Option<String>,
    /// `--assertion-file`: [`token::ASSERTION_FILE`].
    #[arg(long, env = token::ASSERTION_FILE.env, value_name = token::ASSERTION_FILE.value, help = token::ASSERTION_FILE.help())]
    pub assertion_file: Option<PathBuf>,
    /// `--refresh-token-file`: [`token::REFRESH_TOKEN_FILE`].
    #[arg(long, env = token::REFRESH_TOKEN_FILE.env, value_name = token::REFRESH_TOKEN_FILE.value, help = token::REFRESH_TOKEN_FILE.help())]
    pub refresh_token_file: Option<PathBuf>,
    /// `--username`: [`token::USERNAME`].
    #[arg(long, env = token::USERNAME.env, value_name = token::USERNAME.value, help = token::USERNAME.help())]
    pub username: Option<String>,
    /// `--password-file`: [`token::PASSWORD_FILE`].
    #[arg(long, env = token::PASSWORD_FILE.env, value_name = token::PASSWORD_FILE.value, help = token::PASSWORD_FILE.help())]
    pub password_file: Option<PathBuf>,
    /// `--scope`: [`token::SCOPE`].
    #[arg(long, env = token::SCOPE.env, value_name = token::SCOPE.value, help = token::SCOPE.help())]
    pub scope: Option<String>,
    /// `--token-param`: [`token::TOKEN_PARAM`].
    #[arg(long, env = token::TOKEN_PARAM.env, value_name = token::TOKEN_PARAM.value, help = token::TOKEN_PARAM.help(), value_delimiter = ',')]
    pub token_param: Vec<String>,
    /// `--token-file`: [`token::TOKEN_FILE`].
    #[arg(long, env = token::TOKEN_FILE.env, value_name = token::TOKEN_FILE.value, help = token::TOKEN_FILE.help())]
    pub token_file: Option<PathBuf>,
    /// `--static-token`: [`token::STATIC_TOKEN`].
    #[arg(long, env = token::STATIC_TOKEN.env, value_name = token::STATIC_TOKEN.value, help = token::STATIC_TOKEN.help(), hide_env_values = true)]
    pub static_token: Option<SecretArg>,
    /// `--refresh-margin`: [`token::REFRESH_MARGIN`].
    #[arg(long, env = token::REFRESH_MARGIN.env, value_name = token::REFRESH_MARGIN.value, help = token::REFRESH_MARGIN.help())]
    pub refresh_margin: Option<String>,
    /// `--refresh-on-401`: [`route::REFRESH_ON_401`].
    #[arg(long, env = route::REFRESH_ON_401.env, value_name = route::REFRESH_ON_401.value, help = route::REFRESH_ON_401.help())]
    pub refresh_on_401: Option<String>,
    /// `--min-refresh-interval`: [`token::MIN_REFRESH_INTERVAL`].
    #[arg(long, env = token::MIN_REFRESH_INTERVAL.env, value_name = token::MIN_REFRESH_INTERVAL.value, help = token::MIN_REFRESH_INTERVAL.help())]
    pub min_refresh_interval: Option<String>,
    /// `--retry-body-limit`: [`route::RETRY_BODY_LIMIT`].
    #[arg(long, env = route::RETRY_BODY_LIMIT.env, value_name = route::RETRY_BODY_LIMIT.value, help = route::RETRY_BODY_LIMIT.help())]
    pub retry_body_limit: Option<String>,
    /// `--state-file`: [`token::STATE_FILE`].
    #[arg(long, env = token::STATE_FILE.env, value_name = token::STATE_FILE.value, help = token::STATE_FILE.help())]
    pub state_file: Option<PathBuf>,
    /// `--redis-url`: [`shared::REDIS_URL`].
    #[arg(long, env = shared::REDIS_URL.env, value_name = shared::REDIS_URL.value, help = shared::REDIS_URL.help(), hide_env_values = true)]
    pub redis_url: Option<SecretArg>,
    /// `--redis-url-file`: [`shared::REDIS_URL_FILE`].
    #[arg(long, env = shared::REDIS_URL_FILE.env, value_name = shared::REDIS_URL_FILE.value, help = shared::REDIS_URL_FILE.help())]
    pub redis_url_file: Option<PathBuf>,
    /// `--redis-ca-file`: [`shared::REDIS_CA_FILE`].
    #[arg(long, env = shared::REDIS_CA_FILE.env, value_name = shared::REDIS_CA_FILE.value, help = shared::REDIS_CA_FILE.help())]
    pub redis_ca_file: Option<PathBuf>,
    /// `--redis-client-cert-file`: [`shared::REDIS_CLIENT_CERT_FILE`].
    #[arg(long, env = shared::REDIS_CLIENT_CERT_FILE.env, value_name = shared::REDIS_CLIENT_CERT_FILE.value, help = shared::REDIS_CLIENT_CERT_FILE.help())]
    pub redis_client_cert_file: Option<PathBuf>,
    /// `--redis-client-key-file`: [`shared::REDIS_CLIENT_KEY_FILE`].
    #[arg(long, env = shared::REDIS_CLIENT_KEY_FILE.env, value_name = shared::REDIS_CLIENT_KEY_FILE.value, help = shared::REDIS_CLIENT_KEY_FILE.help())]
    pub redis_client_key_file: Option<PathBuf>,
    /// `--redis-sentinels`: [`shared::REDIS_SENTINELS`].
    #[arg(long, env = shared::REDIS_SENTINELS.env, value_name = shared::REDIS_SENTINELS.value, help = shared::REDIS_SENTINELS.help(), value_delimiter = ',')]
    pub redis_sentinels: Vec<String>,
    /// `--redis-sentinel-master`: [`shared::REDIS_SENTINEL_MASTER`].
    #[arg(long, env = shared::REDIS_SENTINEL_MASTER.env, value_name = shared::REDIS_SENTINEL_MASTER.value, help = shared::REDIS_SENTINEL_MASTER.help())]
    pub redis_sentinel_master: Option<String>,
    /// `--redis-cluster-nodes`: [`shared::REDIS_CLUSTER_NODES`].
    #[arg(long, env = shared::REDIS_CLUSTER_NODES.env, value_name = shared::REDIS_CLUSTER_NODES.value, help = shared::REDIS_CLUSTER_NODES.help(), value_delimiter = ',')]
    pub redis_cluster_nodes: Vec<String>,
    /// `--shared-key-file`: [`shared::SHARED_KEY_FILE`].
    #[arg(long, env = shared::SHARED_KEY_FILE.env, value_name = shared::SHARED_KEY_FILE.value, help = shared::SHARED_KEY_FILE.help())]
    pub shared_key_file: Option<PathBuf>,
    /// `--token-request-budget`: [`token::TOKEN_REQUEST_BUDGET`].
    #[arg(long, env = token::TOKEN_REQUEST_BUDGET.env, value_name = token::TOKEN_REQUEST_BUDGET.value, help = token::TOKEN_REQUEST_BUDGET.help())]
    pub token_request_budget: Option<String>,
    /// `--max-connections`: [`route::MAX_CONNECTIONS`].
    #[arg(long, env = route::MAX_CONNECTIONS.env, value_name = route::MAX_CONNECTIONS.value, help = route::MAX_CONNECTIONS.help())]
    pub max_connections: Option<String>,
    /// `--admin-max-connections`: [`admin::MAX_CONNECTIONS`].
    #[arg(long, env = admin::MAX_CONNECTIONS.env, value_name = admin::MAX_CONNECTIONS.value, help = admin::MAX_CONNECTIONS.help())]
    pub admin_max_connections: Option<String>,
    /// `--allowed-host`: [`route::ALLOWED_HOST`].
    #[arg(long, env = route::ALLOWED_HOST.env, value_name = route::ALLOWED_HOST.value, help = route::ALLOWED_HOST.help(), value_delimiter = ',')]
    pub allowed_host: Vec<String>,
    /// `--allowed-origin`: [`route::ALLOWED_ORIGIN`].
    #[arg(long, env = route::ALLOWED_ORIGIN.env, value_name = route::ALLOWED_ORIGIN.value, help = route::ALLOWED_ORIGIN.help(), value_delimiter = ',')]
    pub allowed_origin: Vec<String>,
    /// `--retry-body-budget`: [`top::RETRY_BODY_BUDGET`].
    #[arg(long, env = top::RETRY_BODY_BUDGET.env, value_name = top::RETRY_BODY_BUDGET.value, help = top::RETRY_BODY_BUDGET.help())]
    pub retry_body_budget: Option<String>,
    /// `--header`: [`route::HEADER`].
    #[arg(long, env = route::HEADER.env, value_name = route::HEADER.value, help = route::HEADER.help())]
    pub header: Option<String>,
    /// `--header-prefix`: [`route::HEADER_PREFIX`].
    #[arg(long, env = route::HEADER_PREFIX.env, value_name = route::HEADER_PREFIX.value, help = route::HEADER_PREFIX.help())]
    pub header_prefix: Option<String>,
    /// `--log-format`: [`top::LOG_FORMAT`].
    #[arg(long, env = top::LOG_FORMAT.env, value_name = top::LOG_FORMAT.value, help = top::LOG_FORMAT.help())]
    pub log_format: Option<String>,
    /// `--shutdown-grace`: [`top::SHUTDOWN_GRACE`].
    #[arg(long, env = top::SHUTDOWN_GRACE.env, value_name = top::SHUTDOWN_GRACE.value, help = top::SHUTDOWN_GRACE.help())]
    pub shutdown_grace: Option<String>,
    /// `--threads`: [`top::THREADS`].
    #[arg(long, env = top::THREADS.env, value_name = top::THREADS.value, help = top::THREADS.help())]
    pub threads: Option<String>,
    /// `--upstream-timeout`: [`route::UPSTREAM_TIMEOUT`].
    #[arg(long, env = route::UPSTREAM_TIMEOUT.env, value_name = route::UPSTREAM_TIMEOUT.value, help = route::UPSTREAM_TIMEOUT.help())]
    pub upstream_timeout: Option<String>,
    /// `--connect-timeout`: [`route::CONNECT_TIMEOUT`].
    #[arg(long, env = route::CONNECT_TIMEOUT.env, value_name = route::CONNECT_TIMEOUT.value, help = route::CONNECT_TIMEOUT.help())]
    pub connect_timeout: Option<String>,
    /// `--upstream-idle-timeout`: [`route::UPSTREAM_IDLE_TIMEOUT`].
    #[arg(long, env = route::UPSTREAM_IDLE_TIMEOUT.env, value_name = route::UPSTREAM_IDLE_TIMEOUT.value, help = route::UPSTREAM_IDLE_TIMEOUT.help())]
    pub upstream_idle_timeout: Option<String>,
    /// `--max-upstream-connections`: [`route::MAX_UPSTREAM_CONNECTIONS`].
    #[arg(long, env = route::MAX_UPSTREAM_CONNECTIONS.env, value_name = route::MAX_UPSTREAM_CONNECTIONS.value, help = route::MAX_UPSTREAM_CONNECTIONS.help())]
    pub max_upstream_connections: Option<String>,
    /// `--header-read-timeout`: [`route::HEADER_READ_TIMEOUT`].
    #[arg(long, env = route::HEADER_READ_TIMEOUT.env, value_name = route::HEADER_READ_TIMEOUT.value, help = route::HEADER_READ_TIMEOUT.help())]
    pub header_read_timeout: Option<String>,
    /// `--max-request-header-bytes`: [`route::MAX_REQUEST_HEADER_BYTES`].
    #[arg(long, env = route::MAX_REQUEST_HEADER_BYTES.env, value_name = route::MAX_REQUEST_HEADER_BYTES.value, help = route::MAX_REQUEST_HEADER_BYTES.help())]
    pub max_request_header_bytes: Option<String>,
    /// `--file-poll-interval`: [`token::FILE_POLL_INTERVAL`].
    #[arg(long, env = token::FILE_POLL_INTERVAL.env, value_name = token::FILE_POLL_INTERVAL.value, help = token::FILE_POLL_INTERVAL.help())]
    pub file_poll_interval: Option<String>,
    /// `--default-token-lifetime`: [`token::DEFAULT_TOKEN_LIFETIME`].
    #[arg(long, env = token::DEFAULT_TOKEN_LIFETIME.env, value_name = token::DEFAULT_TOKEN_LIFETIME.value, help = token::DEFAULT_TOKEN_LIFETIME.help())]
    pub default_token_lifetime: Option<String>,
    /// `--token-request-timeout`: [`token::TOKEN_REQUEST_TIMEOUT`].
    #[arg(long, env = token::TOKEN_REQUEST_TIMEOUT.env, value_name = token::TOKEN_REQUEST_TIMEOUT.value, help = token::TOKEN_REQUEST_TIMEOUT.help())]
    pub token_request_timeout: Option<String>,
}
