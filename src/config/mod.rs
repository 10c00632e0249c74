//! Configuration: flags, environment and an optional TOML file, checked once into a typed
//! [`Config`].
//!
//! Precedence: a flag, then its `TOKEN_SIDECAR_*` variable (clap reads both), then the file,
//! then the default. Route and token flags apply to the file's route or token profile when
//! there is exactly one. Every problem is collected and reported at once, naming the flag or
//! key; [`ConfigErrors`] maps to exit code 64.

pub mod cli;
pub mod file;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use crate::proxy::upstream::Upstream;
use crate::secret::{Secret, SecretSource};
pub use cli::{Cli, Command, DevFlags, Flags};

/// The exit code for an invalid configuration (`EX_USAGE`).
pub const EXIT_INVALID_CONFIG: i32 = 64;

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

/// `[shared]`: replicas share one token set through Redis.
#[derive(Debug, Clone)]
pub struct SharedConfig {
    /// Redis URL (may carry a password, so it is a secret).
    pub redis_url: Secret,
    /// Prefix of the keys written.
    pub key_prefix: String,
    /// Keys that seal the entries written to Redis (`--shared-key-file`).
    pub seal_keys: Option<std::sync::Arc<crate::token::shared::seal::SealKeys>>,
}

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
}

/// How the client authenticates to the token endpoint (RFC 6749 2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with client id and secret.
    Basic,
    /// `client_id` (and `client_secret`) in the form body.
    Body,
}

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

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

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
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9090";
/// Default cap on a proxy listener's open connections.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 4096;
/// Default cap on the admin listener's open connections.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: u64 = 256;
/// Default total of request bytes held for 401 replays.
pub const DEFAULT_RETRY_BODY_BUDGET: u64 = 16 * 1024 * 1024;
/// Default token request budget: RingCentral's Auth group, 5 requests a minute.
pub const DEFAULT_TOKEN_REQUEST_BUDGET: crate::ratelimit::Rate = crate::ratelimit::Rate {
    max: 5,
    window: Duration::from_secs(60),
};

/// A value and the name it is reported under.
struct Src<T> {
    value: T,
    key: String,
}

/// Picks the flag when given, else the file's value, each labelled for error messages.
fn pick<T: Clone>(
    flag: &Option<T>,
    flag_name: &str,
    file: &Option<T>,
    key: &str,
) -> Option<Src<T>> {
    if let Some(v) = flag {
        return Some(Src {
            value: v.clone(),
            key: format!("--{flag_name}"),
        });
    }
    file.as_ref().map(|v| Src {
        value: v.clone(),
        key: format!("`{key}`"),
    })
}

struct Checker {
    errors: Vec<String>,
}

impl Checker {
    fn err(&mut self, msg: String) {
        self.errors.push(msg);
    }

    fn duration(&mut self, src: Option<Src<String>>, default: Duration) -> Duration {
        match src {
            None => default,
            Some(s) => match humantime::parse_duration(s.value.trim()) {
                // Bounded so that no deadline computed from it can overflow.
                Ok(d) if d > MAX_DURATION => {
                    self.err(format!(
                        "{}: `{}` is longer than the maximum of 365 days",
                        s.key, s.value
                    ));
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    self.err(format!(
                        "{}: `{}` is not a duration ({e}); use e.g. 90s, 5m, 1h",
                        s.key, s.value
                    ));
                    default
                }
            },
        }
    }

    fn addr(&mut self, src: Src<String>) -> Option<SocketAddr> {
        match src.value.trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(format!(
                    "{}: `{}` is not an IP:port address (e.g. 127.0.0.1:8080)",
                    src.key, src.value
                ));
                None
            }
        }
    }

    fn number(&mut self, src: Option<Src<String>>, default: u64) -> u64 {
        match src {
            None => default,
            Some(s) => match s.value.trim().parse::<u64>() {
                Ok(n) => n,
                Err(_) => {
                    self.err(format!("{}: `{}` is not a whole number", s.key, s.value));
                    default
                }
            },
        }
    }

    /// A whole number in `range`; `what` names it when no source does (the default is used).
    fn count_in(
        &mut self,
        src: Option<Src<String>>,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
        what: &str,
    ) -> u64 {
        let key = src
            .as_ref()
            .map_or_else(|| what.to_owned(), |s| s.key.clone());
        let n = self.number(src, default);
        if !range.contains(&n) {
            self.err(format!(
                "{key}: {n} is out of range ({}..={})",
                range.start(),
                range.end()
            ));
            return default;
        }
        n
    }

    fn boolean(&mut self, src: Option<Src<String>>, default: bool) -> bool {
        match src {
            None => default,
            Some(s) => match s.value.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" | "on" => true,
                "false" | "no" | "0" | "off" => false,
                _ => {
                    self.err(format!("{}: `{}` is not true or false", s.key, s.value));
                    default
                }
            },
        }
    }

    fn secret(
        &mut self,
        inline: Option<Src<String>>,
        file: Option<Src<String>>,
        what: &str,
    ) -> Option<SecretSource> {
        match (inline, file) {
            (Some(i), Some(f)) => {
                self.err(format!(
                    "{} and {}: give the {what} one way only",
                    i.key, f.key
                ));
                // Given, if twice: the conflict is the one problem to report.
                Some(SecretSource::File(PathBuf::from(f.value)))
            }
            (Some(i), None) => {
                if i.value.is_empty() {
                    self.err(format!("{}: the {what} is empty", i.key));
                    return None;
                }
                Some(SecretSource::Inline(Secret::new(i.value)))
            }
            (None, Some(f)) => {
                let path = PathBuf::from(&f.value);
                if let Err(e) = crate::secret::read_secret_file(&path) {
                    self.err(format!("{}: {e}", f.key));
                }
                Some(SecretSource::File(path))
            }
            (None, None) => None,
        }
    }
}

/// A repeatable flag when given, else the file's list; each value with the name it is
/// reported under.
fn list(
    flag: &[String],
    flag_name: &str,
    file: &Option<Vec<String>>,
    key: &str,
) -> Vec<(String, String)> {
    if !flag.is_empty() {
        return flag
            .iter()
            .map(|v| (v.clone(), format!("--{flag_name}")))
            .collect();
    }
    file.iter()
        .flatten()
        .map(|v| (v.clone(), format!("`{key}`")))
        .collect()
}

fn path_str(p: &Option<PathBuf>) -> Option<String> {
    p.as_ref().map(|p| p.display().to_string())
}

fn secret_str(v: &Option<cli::SecretArg>) -> Option<String> {
    v.as_ref().map(|s| s.0.clone())
}

fn u64_str(v: &Option<u64>) -> Option<String> {
    v.map(|n| n.to_string())
}

fn bool_str(v: &Option<bool>) -> Option<String> {
    v.map(|b| b.to_string())
}

/// The log format asked for, read before the configuration is loaded so that the warnings
/// of loading it are already written in that format: `--log-format` (or its variable), else
/// the config file's `log_format`, else JSON. A bad value is reported by [`load`].
pub fn log_format_hint(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> LogFormat {
    let from_file = || {
        let text = std::fs::read_to_string(flags.config.as_ref()?).ok()?;
        let value: toml::Value = toml::from_str(&text).ok()?;
        file::expand(value.get("log_format")?.as_str()?, env).ok()
    };
    match flags.log_format.clone().or_else(from_file).as_deref() {
        Some("text") => LogFormat::Text,
        _ => LogFormat::Json,
    }
}

/// Loads the configuration from flags (already merged with the environment by clap), the
/// config file they name, and `env` for `${VAR}` expansion.
pub fn load(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let mut c = Checker { errors: Vec::new() };
    let raw = match &flags.config {
        None => file::RawFile::default(),
        // A file that cannot be read or parsed is the only problem reported: checking the
        // flags against an empty file would name routes and profiles that are not there.
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => match file::parse(&text, env, &mut c.errors) {
                Some(raw) => raw,
                None => return Err(ConfigErrors(c.errors)),
            },
            Err(e) => {
                c.err(format!("--config: cannot read {}: {e}", path.display()));
                return Err(ConfigErrors(c.errors));
            }
        },
    };
    let from_file = flags.config.is_some();

    // Routes and token profiles: from the file, or one of each from the flags.
    let mut raw_routes = raw.route;
    let mut raw_tokens = raw.token;
    if raw_routes.is_empty() {
        // With several profiles in the file, which one the route uses is not guessed: the
        // route loop below reports the missing `token`.
        let token = match raw_tokens.len() {
            0 => Some("default".to_owned()),
            1 => raw_tokens.keys().next().cloned(),
            _ => None,
        };
        raw_routes.push(file::RawRoute {
            name: Some("default".into()),
            token,
            ..Default::default()
        });
    }
    if raw_tokens.is_empty() {
        let name = raw_routes[0]
            .token
            .clone()
            .unwrap_or_else(|| "default".into());
        raw_tokens.insert(name, file::RawToken::default());
    }
    let route_flags_apply = raw_routes.len() == 1;
    let token_flags_apply = raw_tokens.len() == 1;
    if from_file {
        check_flags_fit(flags, route_flags_apply, token_flags_apply, &mut c);
    }

    let raw_admin_max_connections = raw.admin.as_ref().and_then(|a| a.max_connections);
    let admin_listen = pick(
        &flags.admin_listen,
        "admin-listen",
        &raw.admin.and_then(|a| a.listen),
        "admin.listen",
    )
    .unwrap_or(Src {
        value: DEFAULT_ADMIN_LISTEN.into(),
        key: "--admin-listen".into(),
    });
    let admin_listen = c
        .addr(admin_listen)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9090)));

    let log_format = match pick(
        &flags.log_format,
        "log-format",
        &raw.log_format,
        "log_format",
    ) {
        None => LogFormat::Json,
        Some(s) => match s.value.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                c.err(format!("{}: `{other}` is not json or text", s.key));
                LogFormat::Json
            }
        },
    };
    let shutdown_grace = {
        let s = pick(
            &flags.shutdown_grace,
            "shutdown-grace",
            &raw.shutdown_grace,
            "shutdown_grace",
        );
        c.duration(s, Duration::from_secs(30))
    };
    let threads = {
        let s = pick(&flags.threads, "threads", &u64_str(&raw.threads), "threads");
        let key = s
            .as_ref()
            .map_or_else(|| "--threads".to_owned(), |s| s.key.clone());
        let default = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let n = c.number(s, default);
        if n == 0 || n > 1024 {
            c.err(format!("{key}: {n} is out of range (1..=1024)"));
        }
        n.clamp(1, 1024) as usize
    };

    let admin_max_connections = {
        let s = pick(
            &flags.admin_max_connections,
            "admin-max-connections",
            &u64_str(&raw_admin_max_connections),
            "admin.max_connections",
        );
        c.count_in(
            s,
            DEFAULT_ADMIN_MAX_CONNECTIONS,
            1..=65536,
            "--admin-max-connections",
        )
    };
    let retry_body_budget = {
        let s = pick(
            &flags.retry_body_budget,
            "retry-body-budget",
            &u64_str(&raw.retry_body_budget),
            "retry_body_budget",
        );
        c.count_in(
            s,
            DEFAULT_RETRY_BODY_BUDGET,
            0..=1 << 30,
            "--retry-body-budget",
        )
    };

    let shared = {
        let raw_shared = raw.shared.unwrap_or_default();
        let inline = pick(
            &secret_str(&flags.redis_url),
            "redis-url",
            &raw_shared.redis_url,
            "shared.redis_url",
        );
        let from_file = pick(
            &path_str(&flags.redis_url_file),
            "redis-url-file",
            &raw_shared.redis_url_file,
            "shared.redis_url_file",
        );
        let url = match (inline, from_file) {
            (Some(i), Some(f)) => {
                c.err(format!(
                    "{} and {}: give the Redis URL one way only",
                    i.key, f.key
                ));
                None
            }
            (Some(i), None) => Some(i),
            (None, Some(f)) => {
                match crate::secret::read_secret_file(std::path::Path::new(&f.value)) {
                    Ok(secret) => Some(Src {
                        value: secret.expose().to_owned(),
                        key: f.key,
                    }),
                    Err(e) => {
                        c.err(format!("{}: {e}", f.key));
                        None
                    }
                }
            }
            (None, None) => None,
        };
        let key_file = pick(
            &path_str(&flags.shared_key_file),
            "shared-key-file",
            &raw_shared.shared_key_file,
            "shared.shared_key_file",
        );
        let seal_keys = key_file.as_ref().and_then(|k| {
            match crate::token::shared::seal::SealKeys::load(std::path::Path::new(&k.value)) {
                Ok(keys) => Some(std::sync::Arc::new(keys)),
                Err(e) => {
                    c.err(format!("{}: {e}", k.key));
                    None
                }
            }
        });
        match (&url, &key_file) {
            (None, Some(k)) => tracing::warn!(
                option = %k.key,
                "a shared key is given without a Redis URL; it is not used"
            ),
            (Some(_), None) => tracing::warn!(
                "the shared store is used without --shared-key-file: anyone who can read the Redis keys sees the tokens, and anyone who can write them can make the replicas use a token of their own; seal the entries with a key (see docs/shared-store.md)"
            ),
            _ => {}
        }
        url.map(|u| {
            if !(u.value.starts_with("redis://")
                || u.value.starts_with("rediss://")
                || u.value.starts_with("redis+unix://")
                || u.value.starts_with("unix://"))
            {
                c.err(format!("{}: must be a redis:// or rediss:// URL", u.key));
            } else if let Err(e) = redis::Client::open(u.value.as_str()) {
                // Parsed only, no connection. The URL may hold a password: never printed.
                c.err(format!(
                    "{}: not a valid Redis URL ({:?}); expected redis://[:PASSWORD@]HOST[:PORT][/DB]",
                    u.key,
                    e.kind()
                ));
            }
            SharedConfig {
                redis_url: Secret::new(u.value),
                key_prefix: raw_shared
                    .key_prefix
                    .unwrap_or_else(|| "token-sidecar".into()),
                seal_keys,
            }
        })
    };

    // Token profiles.
    let mut tokens = BTreeMap::new();
    for (name, t) in raw_tokens.iter() {
        let f = if token_flags_apply {
            flags.clone()
        } else {
            Flags::default()
        };
        let k = |key: &str| format!("token.{name}.{key}");
        if name.is_empty()
            || !name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            c.err(format!(
                "`token.{name}`: a profile name may hold only letters, digits, '-' and '_'"
            ));
        }
        let grant_src = pick(&f.grant, "grant", &t.grant, &k("grant"));
        let grant_name = grant_src
            .as_ref()
            .map_or("client_credentials".to_owned(), |g| g.value.clone());
        let grant_key = grant_src
            .as_ref()
            .map_or(format!("--grant (or `{}`)", k("grant")), |g| g.key.clone());
        let token_url = pick(&f.token_url, "token-url", &t.token_url, &k("token_url"));
        let client_id = pick(&f.client_id, "client-id", &t.client_id, &k("client_id"));
        let client_secret = c.secret(
            pick(
                &secret_str(&f.client_secret),
                "client-secret",
                &t.client_secret,
                &k("client_secret"),
            ),
            pick(
                &path_str(&f.client_secret_file),
                "client-secret-file",
                &t.client_secret_file,
                &k("client_secret_file"),
            ),
            "client secret",
        );
        let client_auth = match pick(
            &f.client_auth,
            "client-auth",
            &t.client_auth,
            &k("client_auth"),
        ) {
            None => ClientAuth::Basic,
            Some(s) => match s.value.as_str() {
                "basic" => ClientAuth::Basic,
                "body" => ClientAuth::Body,
                other => {
                    c.err(format!("{}: `{other}` is not basic or body", s.key));
                    ClientAuth::Basic
                }
            },
        };
        let username_src = pick(&f.username, "username", &t.username, &k("username"));
        let missing = |c: &mut Checker, what: &str, flag: &str, key: &str| {
            c.err(format!(
                "{grant_key}: grant `{grant_name}` needs {what} (--{flag} or `{}`)",
                k(key)
            ));
        };
        let grant = match grant_name.as_str() {
            "client_credentials" => Some(Grant::ClientCredentials),
            "jwt_bearer" => {
                let a = c.secret(
                    t.assertion.clone().map(|v| Src {
                        value: v,
                        key: format!("`{}`", k("assertion")),
                    }),
                    pick(
                        &path_str(&f.assertion_file),
                        "assertion-file",
                        &t.assertion_file,
                        &k("assertion_file"),
                    ),
                    "assertion",
                );
                match a {
                    Some(assertion) => Some(Grant::JwtBearer { assertion }),
                    None => {
                        missing(
                            &mut c,
                            "a JWT assertion",
                            "assertion-file",
                            "assertion_file",
                        );
                        None
                    }
                }
            }
            "refresh_token" => {
                let r = c.secret(
                    None,
                    pick(
                        &path_str(&f.refresh_token_file),
                        "refresh-token-file",
                        &t.refresh_token_file,
                        &k("refresh_token_file"),
                    ),
                    "refresh token",
                );
                match r {
                    Some(refresh_token) => Some(Grant::RefreshToken { refresh_token }),
                    None => {
                        missing(
                            &mut c,
                            "a refresh token",
                            "refresh-token-file",
                            "refresh_token_file",
                        );
                        None
                    }
                }
            }
            "password" => {
                let user = username_src.as_ref().map(|u| Src {
                    value: u.value.clone(),
                    key: u.key.clone(),
                });
                let pw = c.secret(
                    t.password.clone().map(|v| Src {
                        value: v,
                        key: format!("`{}`", k("password")),
                    }),
                    pick(
                        &path_str(&f.password_file),
                        "password-file",
                        &t.password_file,
                        &k("password_file"),
                    ),
                    "password",
                );
                if user.is_none() {
                    missing(&mut c, "a username", "username", "username");
                }
                if pw.is_none() {
                    missing(&mut c, "a password", "password-file", "password_file");
                }
                match (user, pw) {
                    (Some(u), Some(p)) => Some(Grant::Password {
                        username: u.value,
                        password: p,
                    }),
                    _ => None,
                }
            }
            "file" => {
                let path = pick(
                    &path_str(&f.token_file),
                    "token-file",
                    &t.token_file,
                    &k("token_file"),
                );
                let poll = c.duration(
                    pick(
                        &f.file_poll_interval,
                        "file-poll-interval",
                        &t.file_poll_interval,
                        &k("file_poll_interval"),
                    ),
                    Duration::from_secs(10),
                );
                if poll.is_zero() {
                    c.err(format!(
                        "--file-poll-interval (or `{}`): must be more than 0",
                        k("file_poll_interval")
                    ));
                }
                match path {
                    Some(p) => Some(Grant::File {
                        path: PathBuf::from(p.value),
                        poll_interval: poll.max(Duration::from_millis(100)),
                    }),
                    None => {
                        missing(&mut c, "a token file", "token-file", "token_file");
                        None
                    }
                }
            }
            "static" => match pick(
                &secret_str(&f.static_token),
                "static-token",
                &t.static_token,
                &k("static_token"),
            ) {
                Some(s) if !s.value.is_empty() => {
                    if http::HeaderValue::from_str(&s.value).is_err() {
                        c.err(format!(
                            "{}: the token holds characters not allowed in a header",
                            s.key
                        ));
                    }
                    Some(Grant::Static {
                        token: Secret::new(s.value),
                    })
                }
                _ => {
                    missing(&mut c, "a token", "static-token", "static_token");
                    None
                }
            },
            other => {
                c.err(format!(
                    "{grant_key}: `{other}` is not a grant; use client_credentials, jwt_bearer, refresh_token, password, file or static"
                ));
                None
            }
        };
        // An empty value (often a `${VAR}` whose variable is set but empty) where the grant
        // sends it.
        let uses_username = matches!(grant, Some(Grant::Password { .. }));
        let uses_client_id = grant.as_ref().is_some_and(Grant::is_oauth);
        for (src, what, used) in [
            (&client_id, "client id", uses_client_id),
            (&username_src, "username", uses_username),
        ] {
            if let Some(v) = src.as_ref().filter(|v| used && v.value.trim().is_empty()) {
                c.err(format!("{}: the {what} is empty", v.key));
            }
        }
        if let Some(g) = &grant {
            warn_unused_options(name, g, &f, t);
            if g.is_oauth() {
                match &token_url {
                    None => c.err(format!(
                        "--token-url (or `{}`): required for grant `{}`",
                        k("token_url"),
                        g.kind()
                    )),
                    Some(u) => check_token_url(&u.value, &u.key, &mut c),
                }
                if matches!(g, Grant::ClientCredentials) {
                    if client_id.is_none() {
                        c.err(format!(
                            "--client-id (or `{}`): required for grant `client_credentials`",
                            k("client_id")
                        ));
                    }
                    if client_secret.is_none() {
                        c.err(format!("--client-secret-file (or `{}`): required for grant `client_credentials`", k("client_secret_file")));
                    }
                }
                if client_auth == ClientAuth::Basic
                    && client_secret.is_some()
                    && client_id.is_none()
                {
                    c.err(format!("--client-id (or `{}`): client_auth `basic` needs a client id with the secret", k("client_id")));
                }
            }
        }
        let mut params: Vec<(String, String)> = t
            .params
            .iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect();
        for p in &f.token_param {
            match p.split_once('=') {
                Some((key, v)) if !key.is_empty() => {
                    params.retain(|(k2, _)| k2 != key);
                    params.push((key.to_owned(), v.to_owned()));
                }
                _ => c.err(format!("--token-param: `{p}` is not KEY=VALUE")),
            }
        }
        const RESERVED: [&str; 8] = [
            "grant_type",
            "client_id",
            "client_secret",
            "assertion",
            "refresh_token",
            "username",
            "password",
            "scope",
        ];
        for (key, _) in &params {
            if RESERVED.contains(&key.as_str()) {
                c.err(format!(
                    "`{}` / --token-param: `{key}` is set by the sidecar; use its own option",
                    k("params")
                ));
            }
        }
        let refresh_margin = pick(
            &f.refresh_margin,
            "refresh-margin",
            &t.refresh_margin,
            &k("refresh_margin"),
        )
        .map(|s| c.duration(Some(s), Duration::from_secs(60)));
        let min_refresh_interval = c.duration(
            pick(
                &f.min_refresh_interval,
                "min-refresh-interval",
                &t.min_refresh_interval,
                &k("min_refresh_interval"),
            ),
            Duration::from_secs(10),
        );
        let default_lifetime = c.duration(
            pick(
                &f.default_token_lifetime,
                "default-token-lifetime",
                &t.default_lifetime,
                &k("default_lifetime"),
            ),
            Duration::from_secs(3600),
        );
        if default_lifetime.is_zero() {
            c.err(format!(
                "--default-token-lifetime (or `{}`): must be more than 0",
                k("default_lifetime")
            ));
        }
        let request_timeout = c.duration(
            pick(
                &f.token_request_timeout,
                "token-request-timeout",
                &t.request_timeout,
                &k("request_timeout"),
            ),
            Duration::from_secs(10),
        );
        let state_file = pick(
            &path_str(&f.state_file),
            "state-file",
            &t.state_file,
            &k("state_file"),
        )
        .map(|s| {
            if let Err(e) = crate::token::state::check_location(std::path::Path::new(&s.value)) {
                c.err(format!("{}: {e}", s.key));
            }
            PathBuf::from(s.value)
        });
        let request_budget = match pick(
            &f.token_request_budget,
            "token-request-budget",
            &t.token_request_budget,
            &k("token_request_budget"),
        ) {
            None => DEFAULT_TOKEN_REQUEST_BUDGET,
            Some(s) => match s.value.parse::<crate::ratelimit::Rate>() {
                Ok(r) => r,
                Err(e) => {
                    c.err(format!("{}: `{}`: {e}", s.key, s.value));
                    DEFAULT_TOKEN_REQUEST_BUDGET
                }
            },
        };
        if let Some(g) = grant {
            tokens.insert(
                name.clone(),
                TokenConfig {
                    name: name.clone(),
                    grant: g,
                    token_url: token_url.map(|u| u.value),
                    client_id: client_id.map(|u| u.value),
                    client_secret,
                    client_auth,
                    scope: pick(&f.scope, "scope", &t.scope, &k("scope")).map(|s| s.value),
                    params,
                    refresh_margin,
                    min_refresh_interval,
                    state_file,
                    default_lifetime,
                    request_timeout,
                    request_budget,
                },
            );
        }
    }

    // One state file per profile: two profiles writing the same file would take each other's
    // tokens (and rotated refresh tokens) on every restart and every refresh.
    let mut state_files: BTreeMap<&PathBuf, &str> = BTreeMap::new();
    for t in tokens.values() {
        if let Some(p) = &t.state_file {
            if let Some(other) = state_files.insert(p, &t.name) {
                c.err(format!(
                    "`token.{}.state_file`: {} is also the state file of token `{other}`; give each profile its own",
                    t.name,
                    p.display()
                ));
            }
        }
    }

    // Routes.
    let mut routes = Vec::new();
    for (i, r) in raw_routes.iter().enumerate() {
        let f = if route_flags_apply {
            flags.clone()
        } else {
            Flags::default()
        };
        let k = |key: &str| format!("route[{i}].{key}");
        let name = r.name.clone().unwrap_or_else(|| {
            if i == 0 {
                "default".into()
            } else {
                format!("route{i}")
            }
        });
        if name.is_empty() {
            c.err(format!("`{}`: must not be empty", k("name")));
        }
        let listen = pick(&f.listen, "listen", &r.listen, &k("listen")).unwrap_or(Src {
            value: DEFAULT_LISTEN.into(),
            key: "--listen".into(),
        });
        let listen = c.addr(listen);
        let upstream = match pick(&f.upstream, "upstream", &r.upstream, &k("upstream")) {
            None => {
                c.err(format!(
                    "--upstream (or `{}`): required: the base URL requests are forwarded to",
                    k("upstream")
                ));
                None
            }
            Some(u) => match Upstream::parse(u.value.trim()) {
                Ok(up) => {
                    if !up.is_https() && !is_loopback_host(up.authority().host()) {
                        tracing::warn!(route = %name, "the upstream is plain http on a non-loopback host: the token crosses the network unencrypted");
                    }
                    Some(up)
                }
                Err(e) => {
                    c.err(format!("{}: `{}`: {e}", u.key, printable_url(&u.value)));
                    None
                }
            },
        };
        let upstream_ca_file = pick(
            &path_str(&f.upstream_ca_file),
            "upstream-ca-file",
            &r.upstream_ca_file,
            &k("upstream_ca_file"),
        )
        .map(|s| {
            if let Err(e) = crate::tls::root_store(Some(std::path::Path::new(&s.value))) {
                c.err(format!("{}: {e}", s.key));
            }
            PathBuf::from(s.value)
        });
        let token = match &r.token {
            Some(t) => t.clone(),
            None if raw_tokens.len() > 1 => {
                c.err(format!(
                    "`{}`: required: the config file defines several token profiles ({}); name the one this route uses",
                    k("token"),
                    raw_tokens.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
                String::new()
            }
            None => raw_tokens.keys().next().cloned().unwrap_or_default(),
        };
        if !token.is_empty() && !raw_tokens.contains_key(&token) {
            c.err(format!(
                "`{}`: no token profile `{token}` (defined: {})",
                k("token"),
                raw_tokens.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let refresh_on_401 = c.boolean(
            pick(
                &f.refresh_on_401,
                "refresh-on-401",
                &bool_str(&r.refresh_on_401),
                &k("refresh_on_401"),
            ),
            true,
        );
        let retry_body_limit = c.number(
            pick(
                &f.retry_body_limit,
                "retry-body-limit",
                &u64_str(&r.retry_body_limit),
                &k("retry_body_limit"),
            ),
            65536,
        );
        let header = match pick(&f.header, "header", &r.header, &k("header")) {
            None => http::header::AUTHORIZATION,
            Some(h) => match HeaderName::from_bytes(h.value.trim().as_bytes()) {
                Ok(n)
                    if !crate::proxy::rewrite::is_hop_by_hop_name(&n)
                        && n != http::header::HOST =>
                {
                    n
                }
                _ => {
                    c.err(format!(
                        "{}: `{}` is not a header name the sidecar can set",
                        h.key, h.value
                    ));
                    http::header::AUTHORIZATION
                }
            },
        };
        let header_prefix = pick(
            &f.header_prefix,
            "header-prefix",
            &r.header_prefix,
            &k("header_prefix"),
        )
        .map_or_else(|| "Bearer ".to_owned(), |p| p.value);
        if http::HeaderValue::from_str(&header_prefix).is_err() {
            c.err(format!(
                "--header-prefix (or `{}`): not allowed in a header value",
                k("header_prefix")
            ));
        }
        let upstream_timeout = c.duration(
            pick(
                &f.upstream_timeout,
                "upstream-timeout",
                &r.upstream_timeout,
                &k("upstream_timeout"),
            ),
            Duration::from_secs(60),
        );
        let connect_timeout = c.duration(
            pick(
                &f.connect_timeout,
                "connect-timeout",
                &r.connect_timeout,
                &k("connect_timeout"),
            ),
            Duration::from_secs(5),
        );
        let upstream_idle_timeout = c.duration(
            pick(
                &f.upstream_idle_timeout,
                "upstream-idle-timeout",
                &r.upstream_idle_timeout,
                &k("upstream_idle_timeout"),
            ),
            Duration::from_secs(90),
        );
        let max_upstream_connections = c.number(
            pick(
                &f.max_upstream_connections,
                "max-upstream-connections",
                &u64_str(&r.max_upstream_connections),
                &k("max_upstream_connections"),
            ),
            512,
        );
        if max_upstream_connections > 65536 {
            c.err(format!("--max-upstream-connections (or `{}`): {max_upstream_connections} is out of range (0..=65536; 0 means no limit)", k("max_upstream_connections")));
        }
        let header_read_timeout = c.duration(
            pick(
                &f.header_read_timeout,
                "header-read-timeout",
                &r.header_read_timeout,
                &k("header_read_timeout"),
            ),
            Duration::from_secs(30),
        );
        for (d, what, key) in [
            (upstream_timeout, "upstream-timeout", "upstream_timeout"),
            (connect_timeout, "connect-timeout", "connect_timeout"),
            (
                upstream_idle_timeout,
                "upstream-idle-timeout",
                "upstream_idle_timeout",
            ),
            (
                header_read_timeout,
                "header-read-timeout",
                "header_read_timeout",
            ),
        ] {
            if d.is_zero() {
                c.err(format!("--{what} (or `{}`): must be more than 0", k(key)));
            }
        }
        let max_request_header_bytes = c.number(
            pick(
                &f.max_request_header_bytes,
                "max-request-header-bytes",
                &u64_str(&r.max_request_header_bytes),
                &k("max_request_header_bytes"),
            ),
            32 * 1024,
        );
        if !(1024..=1024 * 1024).contains(&max_request_header_bytes) {
            c.err(format!("--max-request-header-bytes (or `{}`): {max_request_header_bytes} is out of range (1024..=1048576)", k("max_request_header_bytes")));
        }
        let max_connections = c.count_in(
            pick(
                &f.max_connections,
                "max-connections",
                &u64_str(&r.max_connections),
                &k("max_connections"),
            ),
            DEFAULT_MAX_CONNECTIONS,
            1..=65536,
            &format!("--max-connections (or `{}`)", k("max_connections")),
        );
        let allowed_hosts = list(
            &f.allowed_host,
            "allowed-host",
            &r.allowed_hosts,
            &k("allowed_hosts"),
        )
        .into_iter()
        .filter_map(|(h, key)| match crate::proxy::origin::host_pattern(&h) {
            Ok(p) => Some(p),
            Err(e) => {
                c.err(format!("{key}: `{h}`: {e}"));
                None
            }
        })
        .collect();
        let allowed_origins = list(
            &f.allowed_origin,
            "allowed-origin",
            &r.allowed_origins,
            &k("allowed_origins"),
        )
        .into_iter()
        .filter_map(|(o, key)| match crate::proxy::origin::origin(&o) {
            Ok(p) => Some(p),
            Err(e) => {
                c.err(format!("{key}: `{o}`: {e}"));
                None
            }
        })
        .collect();
        if let (Some(listen), Some(upstream)) = (listen, upstream) {
            if !listen.ip().is_loopback() {
                tracing::warn!(route = %name, %listen, "the proxy listener is not on loopback: anything that reaches it can use the token");
            }
            routes.push(RouteConfig {
                name,
                listen,
                upstream,
                upstream_ca_file,
                token,
                refresh_on_401,
                retry_body_limit,
                header,
                header_prefix,
                upstream_timeout,
                connect_timeout,
                upstream_idle_timeout,
                max_upstream_connections: max_upstream_connections as usize,
                header_read_timeout,
                max_request_header_bytes: max_request_header_bytes as usize,
                max_connections: max_connections as usize,
                allowed_hosts,
                allowed_origins,
            });
        }
    }
    // Listeners must not collide (port 0 asks the OS for a fresh port each time).
    let mut seen: Vec<(SocketAddr, String)> = vec![(admin_listen, "the admin listener".into())];
    for r in &routes {
        if r.listen.port() != 0 {
            if let Some((_, other)) = seen.iter().find(|(a, _)| {
                a.port() == r.listen.port()
                    && (a.ip() == r.listen.ip()
                        || a.ip().is_unspecified()
                        || r.listen.ip().is_unspecified())
            }) {
                c.err(format!(
                    "route `{}`: listen address {} collides with {other}",
                    r.name, r.listen
                ));
            }
        }
        seen.push((r.listen, format!("route `{}`", r.name)));
    }
    let mut names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    for w in names.windows(2) {
        if w[0] == w[1] {
            c.err(format!("route name `{}` is used twice", w[0]));
        }
    }

    if c.errors.is_empty() {
        Ok(Config {
            admin_listen,
            routes,
            tokens,
            shared,
            log_format,
            shutdown_grace,
            threads,
            admin_max_connections: admin_max_connections as usize,
            retry_body_budget,
        })
    } else {
        Err(ConfigErrors(c.errors))
    }
}

fn check_flags_fit(flags: &Flags, one_route: bool, one_token: bool, c: &mut Checker) {
    let route_flags: [(&str, bool); 16] = [
        ("max-connections", flags.max_connections.is_some()),
        ("allowed-host", !flags.allowed_host.is_empty()),
        ("allowed-origin", !flags.allowed_origin.is_empty()),
        ("listen", flags.listen.is_some()),
        ("upstream", flags.upstream.is_some()),
        ("upstream-ca-file", flags.upstream_ca_file.is_some()),
        ("refresh-on-401", flags.refresh_on_401.is_some()),
        ("retry-body-limit", flags.retry_body_limit.is_some()),
        ("header", flags.header.is_some()),
        ("header-prefix", flags.header_prefix.is_some()),
        ("upstream-timeout", flags.upstream_timeout.is_some()),
        ("connect-timeout", flags.connect_timeout.is_some()),
        (
            "upstream-idle-timeout",
            flags.upstream_idle_timeout.is_some(),
        ),
        (
            "max-upstream-connections",
            flags.max_upstream_connections.is_some(),
        ),
        ("header-read-timeout", flags.header_read_timeout.is_some()),
        (
            "max-request-header-bytes",
            flags.max_request_header_bytes.is_some(),
        ),
    ];
    if !one_route {
        for (name, given) in route_flags {
            if given {
                c.err(format!("--{name}: the config file defines several routes; set it in the route's table instead"));
            }
        }
    }
    let token_flags: [(&str, bool); 21] = [
        ("token-request-budget", flags.token_request_budget.is_some()),
        ("grant", flags.grant.is_some()),
        ("token-url", flags.token_url.is_some()),
        ("client-id", flags.client_id.is_some()),
        ("client-secret", flags.client_secret.is_some()),
        ("client-secret-file", flags.client_secret_file.is_some()),
        ("client-auth", flags.client_auth.is_some()),
        ("assertion-file", flags.assertion_file.is_some()),
        ("refresh-token-file", flags.refresh_token_file.is_some()),
        ("username", flags.username.is_some()),
        ("password-file", flags.password_file.is_some()),
        ("scope", flags.scope.is_some()),
        ("token-param", !flags.token_param.is_empty()),
        ("token-file", flags.token_file.is_some()),
        ("static-token", flags.static_token.is_some()),
        ("state-file", flags.state_file.is_some()),
        ("refresh-margin", flags.refresh_margin.is_some()),
        ("min-refresh-interval", flags.min_refresh_interval.is_some()),
        ("file-poll-interval", flags.file_poll_interval.is_some()),
        (
            "default-token-lifetime",
            flags.default_token_lifetime.is_some(),
        ),
        (
            "token-request-timeout",
            flags.token_request_timeout.is_some(),
        ),
    ];
    if !one_token {
        for (name, given) in token_flags {
            if given {
                c.err(format!("--{name}: the config file defines several token profiles; set it in the profile's table instead"));
            }
        }
    }
}

/// Logs a warning for each credential option given to a profile whose grant does not use it
/// (`--token-file` with `--grant client_credentials`, `--refresh-token-file` with `jwt_bearer`,
/// ...): it would otherwise be ignored without a word.
fn warn_unused_options(name: &str, grant: &Grant, f: &Flags, t: &file::RawToken) {
    let oauth = grant.is_oauth();
    let options: [(&str, &str, bool, bool); 10] = [
        (
            "token-url",
            "token_url",
            f.token_url.is_some() || t.token_url.is_some(),
            oauth,
        ),
        (
            "client-id",
            "client_id",
            f.client_id.is_some() || t.client_id.is_some(),
            oauth,
        ),
        (
            "client-secret-file",
            "client_secret_file",
            f.client_secret.is_some()
                || f.client_secret_file.is_some()
                || t.client_secret.is_some()
                || t.client_secret_file.is_some(),
            oauth,
        ),
        (
            "assertion-file",
            "assertion_file",
            f.assertion_file.is_some() || t.assertion.is_some() || t.assertion_file.is_some(),
            matches!(grant, Grant::JwtBearer { .. }),
        ),
        (
            "refresh-token-file",
            "refresh_token_file",
            f.refresh_token_file.is_some() || t.refresh_token_file.is_some(),
            matches!(grant, Grant::RefreshToken { .. }),
        ),
        (
            "username",
            "username",
            f.username.is_some() || t.username.is_some(),
            matches!(grant, Grant::Password { .. }),
        ),
        (
            "password-file",
            "password_file",
            f.password_file.is_some() || t.password.is_some() || t.password_file.is_some(),
            matches!(grant, Grant::Password { .. }),
        ),
        (
            "token-file",
            "token_file",
            f.token_file.is_some() || t.token_file.is_some(),
            matches!(grant, Grant::File { .. }),
        ),
        (
            "static-token",
            "static_token",
            f.static_token.is_some() || t.static_token.is_some(),
            matches!(grant, Grant::Static { .. }),
        ),
        (
            "state-file",
            "state_file",
            f.state_file.is_some() || t.state_file.is_some(),
            oauth,
        ),
    ];
    for (flag, key, given, used) in options {
        if given && !used {
            tracing::warn!(
                token = %name,
                option = %format!("--{flag} (or `token.{name}.{key}`)"),
                grant = grant.kind(),
                "this option is not used by the profile's grant and is ignored"
            );
        }
    }
}

fn check_token_url(url: &str, key: &str, c: &mut Checker) {
    match Upstream::parse(url) {
        Ok(u) => {
            if !u.is_https() && !is_loopback_host(u.authority().host()) {
                tracing::warn!(token_url = %url, "the token endpoint is plain http on a non-loopback host: credentials cross the network unencrypted");
            }
        }
        Err(e) => c.err(format!("{key}: `{}`: {e}", printable_url(url))),
    }
}

/// A URL as it may be printed in an error: user information and the query, where credentials
/// hide, are replaced.
fn printable_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("<redacted>@{}", &authority[at + 1..]),
        None => authority.to_owned(),
    };
    let tail = match tail.find(['?', '#']) {
        Some(q) => format!("{}{}<redacted>", &tail[..q], &tail[q..q + 1]),
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
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
            let _ = writeln!(
                s,
                "route {}: {} -> {}://{}{} (token {}, header {}, refresh_on_401 {})",
                r.name,
                r.listen,
                r.upstream.scheme(),
                r.upstream.authority(),
                r.upstream.base_path(),
                r.token,
                r.header,
                r.refresh_on_401
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn static_defaults() {
        let flags = Flags {
            upstream: Some("https://api.example.com".into()),
            grant: Some("static".into()),
            static_token: Some("tok".into()),
            ..Default::default()
        };
        let cfg = load(&flags, &no_env).unwrap();
        assert_eq!(cfg.routes.len(), 1);
        assert_eq!(cfg.routes[0].listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(cfg.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert!(cfg.routes[0].refresh_on_401);
        assert!(!format!("{cfg:?}").contains("tok\""));
    }

    #[test]
    fn printed_urls_hide_credentials() {
        assert_eq!(
            printable_url("https://u:pw@api.example.com/a?key=s#f"),
            "https://<redacted>@api.example.com/a?<redacted>"
        );
        assert_eq!(
            printable_url("http://127.0.0.1:9/x"),
            "http://127.0.0.1:9/x"
        );
        assert_eq!(printable_url("not a url"), "not a url");
    }

    #[test]
    fn all_problems_at_once() {
        let flags = Flags {
            listen: Some("nowhere".into()),
            grant: Some("client_credentials".into()),
            refresh_margin: Some("soon".into()),
            ..Default::default()
        };
        let errs = load(&flags, &no_env).unwrap_err().0;
        let all = errs.join("\n");
        assert!(all.contains("--listen"), "{all}");
        assert!(all.contains("--upstream"), "{all}");
        assert!(all.contains("--token-url"), "{all}");
        assert!(all.contains("--client-id"), "{all}");
        assert!(all.contains("--refresh-margin"), "{all}");
    }
}
