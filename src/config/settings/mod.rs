//! Every setting declared once: its flag, environment variable, TOML key, value placeholder,
//! default and help.
//!
//! [`super::cli::Flags`] takes each flag's variable, placeholder and help (with the
//! `[default: X]` it shows) from here, the loader takes each default from here, and the
//! `DEFAULT_*` constants of [`super`] are these defaults. The modules are the TOML tables:
//! [`top`] (the file's top level), [`admin`] (`[admin]`), [`shared`] (`[shared]`), [`route`]
//! (`[[route]]`) and [`token`] (`[token.NAME]`).

use std::time::Duration;

use super::{ClientAuth, LogFormat};
use crate::ratelimit::limits::Mode;
use crate::ratelimit::Rate;

pub mod route;
pub mod token;

/// One setting: a flag, the variable clap reads in its place, and a key of the config file.
#[derive(Debug, Clone, Copy)]
pub struct Setting<T> {
    /// The flag, without `--`.
    pub flag: &'static str,
    /// The environment variable read when the flag is not given.
    pub env: &'static str,
    /// The key in its table of the config file (empty: not in the file).
    pub key: &'static str,
    /// The value's placeholder in the help.
    pub value: &'static str,
    /// The value used when neither the flag, its variable nor the file gives one.
    pub default: T,
    /// What the setting does, as the help shows it before its default.
    pub help: &'static str,
}

/// The default of a setting that has none: optional, or required.
#[derive(Debug, Clone, Copy)]
pub struct NoDefault;

/// A default computed at run time, described in words for the help.
#[derive(Debug, Clone, Copy)]
pub struct Described(pub &'static str);

/// How a default reads in the help (`None`: no `[default: X]`).
pub trait Shown {
    /// The text of the default.
    fn shown(&self) -> Option<String>;
}

impl Shown for NoDefault {
    fn shown(&self) -> Option<String> {
        None
    }
}

impl Shown for Described {
    fn shown(&self) -> Option<String> {
        Some(self.0.to_owned())
    }
}

impl Shown for &'static str {
    fn shown(&self) -> Option<String> {
        // Quoted when its spaces would not show: "Bearer ".
        Some(if self.trim() == *self {
            (*self).to_owned()
        } else {
            format!("{self:?}")
        })
    }
}

impl Shown for u64 {
    fn shown(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl Shown for bool {
    fn shown(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl Shown for Duration {
    fn shown(&self) -> Option<String> {
        Some(show_duration(*self))
    }
}

impl Shown for Rate {
    fn shown(&self) -> Option<String> {
        Some(format!("{}/{}", self.max, show_duration(self.window)))
    }
}

impl Shown for LogFormat {
    fn shown(&self) -> Option<String> {
        Some(self.name().to_owned())
    }
}

impl Shown for Mode {
    fn shown(&self) -> Option<String> {
        Some(self.name().to_owned())
    }
}

impl Shown for ClientAuth {
    fn shown(&self) -> Option<String> {
        Some(self.name().to_owned())
    }
}

/// A duration as the help and the README write it: `1h`, `90s`, `100ms`.
fn show_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        format!("{}ms", d.as_millis())
    } else if secs != 0 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else {
        format!("{secs}s")
    }
}

impl<T: Shown> Setting<T> {
    /// The flag's help: what it does, then its default.
    pub fn help(&self) -> String {
        match self.default.shown() {
            Some(d) => format!("{} [default: {d}]", self.help),
            None => self.help.to_owned(),
        }
    }
}

/// Any setting, whatever the type of its default: for listing them all ([`all`]).
pub trait AnySetting {
    /// The flag, without `--`.
    fn flag(&self) -> &'static str;
    /// The environment variable.
    fn env(&self) -> &'static str;
    /// The key in its table (empty: not in the file).
    fn key(&self) -> &'static str;
    /// The default as the help shows it.
    fn default_shown(&self) -> Option<String>;
    /// The help, default included.
    fn help_text(&self) -> String;
}

impl<T: Shown> AnySetting for Setting<T> {
    fn flag(&self) -> &'static str {
        self.flag
    }
    fn env(&self) -> &'static str {
        self.env
    }
    fn key(&self) -> &'static str {
        self.key
    }
    fn default_shown(&self) -> Option<String> {
        self.default.shown()
    }
    fn help_text(&self) -> String {
        self.help()
    }
}

/// Settings of the file's top level, and `--config`.
pub mod top {
    use super::*;

    /// `--config`: the file itself.
    pub const CONFIG: Setting<NoDefault> = Setting {
        flag: "config",
        env: "TOKEN_SIDECAR_CONFIG",
        key: "",
        value: "FILE",
        default: NoDefault,
        help: "TOML configuration file (several routes and token profiles)",
    };
    /// `--log-format` / `log_format`.
    pub const LOG_FORMAT: Setting<LogFormat> = Setting {
        flag: "log-format",
        env: "TOKEN_SIDECAR_LOG_FORMAT",
        key: "log_format",
        value: "json|text",
        default: LogFormat::Json,
        help: "json or text",
    };
    /// `--shutdown-grace` / `shutdown_grace`.
    pub const SHUTDOWN_GRACE: Setting<Duration> = Setting {
        flag: "shutdown-grace",
        env: "TOKEN_SIDECAR_SHUTDOWN_GRACE",
        key: "shutdown_grace",
        value: "DURATION",
        default: Duration::from_secs(30),
        help: "On SIGTERM/SIGINT, let in-flight requests finish within this time",
    };
    /// `--threads` / `threads`: the default is [`default_threads`].
    pub const THREADS: Setting<Described> = Setting {
        flag: "threads",
        env: "TOKEN_SIDECAR_THREADS",
        key: "threads",
        value: "N",
        default: Described("the CPUs available to the process"),
        help: "Worker threads",
    };
    /// `--retry-body-budget` / `retry_body_budget`.
    pub const RETRY_BODY_BUDGET: Setting<u64> = Setting {
        flag: "retry-body-budget",
        env: "TOKEN_SIDECAR_RETRY_BODY_BUDGET",
        key: "retry_body_budget",
        value: "BYTES",
        default: 16 * 1024 * 1024,
        help: "Bytes of request bodies held for 401 replays, all routes together",
    };

    /// The default of [`THREADS`]: the CPUs the process may use (cgroup quotas included).
    pub fn default_threads() -> u64 {
        std::thread::available_parallelism().map_or(1, |n| n.get()) as u64
    }

    /// Every setting of this table.
    pub const ALL: &[&dyn AnySetting] = &[
        &CONFIG,
        &LOG_FORMAT,
        &SHUTDOWN_GRACE,
        &THREADS,
        &RETRY_BODY_BUDGET,
    ];
}

/// Settings of `[admin]`.
pub mod admin {
    use super::*;

    /// `--admin-listen` / `admin.listen`.
    pub const LISTEN: Setting<&str> = Setting {
        flag: "admin-listen",
        env: "TOKEN_SIDECAR_ADMIN_LISTEN",
        key: "listen",
        value: "ADDR",
        default: "0.0.0.0:9090",
        help: "Admin listener: /metrics, /healthz, /readyz, /token-info, /refresh",
    };
    /// `--admin-max-connections` / `admin.max_connections`.
    pub const MAX_CONNECTIONS: Setting<u64> = Setting {
        flag: "admin-max-connections",
        env: "TOKEN_SIDECAR_ADMIN_MAX_CONNECTIONS",
        key: "max_connections",
        value: "N",
        default: 256,
        help: "Connections the admin listener holds open at once; more are closed at once",
    };

    /// Every setting of this table.
    pub const ALL: &[&dyn AnySetting] = &[&LISTEN, &MAX_CONNECTIONS];
}

/// Settings of `[shared]`.
pub mod shared {
    use super::*;

    /// `--redis-url` / `shared.redis_url`.
    pub const REDIS_URL: Setting<NoDefault> = Setting {
        flag: "redis-url",
        env: "TOKEN_SIDECAR_REDIS_URL",
        key: "redis_url",
        value: "URL",
        default: NoDefault,
        help: "Share one token among replicas through Redis",
    };
    /// `--redis-url-file` / `shared.redis_url_file`.
    pub const REDIS_URL_FILE: Setting<NoDefault> = Setting {
        flag: "redis-url-file",
        env: "TOKEN_SIDECAR_REDIS_URL_FILE",
        key: "redis_url_file",
        value: "FILE",
        default: NoDefault,
        help: "File holding the Redis URL, password included (instead of --redis-url)",
    };
    /// `--shared-key-file` / `shared.shared_key_file`.
    pub const SHARED_KEY_FILE: Setting<NoDefault> = Setting {
        flag: "shared-key-file",
        env: "TOKEN_SIDECAR_SHARED_KEY_FILE",
        key: "shared_key_file",
        value: "FILE",
        default: NoDefault,
        help: "File holding the key that seals shared-store entries: 32 random bytes, raw or base64 (one key per line; the first seals)",
    };
    /// `--redis-ca-file` / `shared.redis_ca_file`.
    pub const REDIS_CA_FILE: Setting<NoDefault> = Setting {
        flag: "redis-ca-file",
        env: "TOKEN_SIDECAR_REDIS_CA_FILE",
        key: "redis_ca_file",
        value: "FILE",
        default: NoDefault,
        help: "PEM CA certificates trusted for rediss:// instead of the system's",
    };
    /// `--redis-client-cert-file` / `shared.redis_client_cert_file`.
    pub const REDIS_CLIENT_CERT_FILE: Setting<NoDefault> = Setting {
        flag: "redis-client-cert-file",
        env: "TOKEN_SIDECAR_REDIS_CLIENT_CERT_FILE",
        key: "redis_client_cert_file",
        value: "FILE",
        default: NoDefault,
        help: "PEM client certificate for a Redis that asks for one (rediss://)",
    };
    /// `--redis-client-key-file` / `shared.redis_client_key_file`.
    pub const REDIS_CLIENT_KEY_FILE: Setting<NoDefault> = Setting {
        flag: "redis-client-key-file",
        env: "TOKEN_SIDECAR_REDIS_CLIENT_KEY_FILE",
        key: "redis_client_key_file",
        value: "FILE",
        default: NoDefault,
        help: "PEM private key of --redis-client-cert-file",
    };
    /// `--redis-sentinels` (repeatable) / `shared.redis_sentinels`.
    pub const REDIS_SENTINELS: Setting<NoDefault> = Setting {
        flag: "redis-sentinels",
        env: "TOKEN_SIDECAR_REDIS_SENTINELS",
        key: "redis_sentinels",
        value: "HOST:PORT",
        default: NoDefault,
        help: "Sentinels that name the Redis primary, with --redis-sentinel-master (comma-separated or repeated); the URL then gives only scheme, user, password and database",
    };
    /// `--redis-sentinel-master` / `shared.redis_sentinel_master`.
    pub const REDIS_SENTINEL_MASTER: Setting<NoDefault> = Setting {
        flag: "redis-sentinel-master",
        env: "TOKEN_SIDECAR_REDIS_SENTINEL_MASTER",
        key: "redis_sentinel_master",
        value: "NAME",
        default: NoDefault,
        help: "The name the sentinels monitor the primary under",
    };
    /// `--redis-cluster-nodes` (repeatable) / `shared.redis_cluster_nodes`.
    pub const REDIS_CLUSTER_NODES: Setting<NoDefault> = Setting {
        flag: "redis-cluster-nodes",
        env: "TOKEN_SIDECAR_REDIS_CLUSTER_NODES",
        key: "redis_cluster_nodes",
        value: "HOST:PORT",
        default: NoDefault,
        help: "Nodes of a Redis Cluster to start from (comma-separated or repeated); the URL then gives only scheme, user, password and database",
    };
    /// `shared.key_prefix` (file only): the prefix of the Redis keys written.
    pub const DEFAULT_KEY_PREFIX: &str = "token-sidecar";

    /// Every setting of this table.
    pub const ALL: &[&dyn AnySetting] = &[
        &REDIS_URL,
        &REDIS_URL_FILE,
        &SHARED_KEY_FILE,
        &REDIS_CA_FILE,
        &REDIS_CLIENT_CERT_FILE,
        &REDIS_CLIENT_KEY_FILE,
        &REDIS_SENTINELS,
        &REDIS_SENTINEL_MASTER,
        &REDIS_CLUSTER_NODES,
    ];
}

/// How long before a client certificate expires `check` and the start-up log warn about it.
pub const CERT_EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// Every setting that has a flag, table by table.
pub fn all() -> impl Iterator<Item = &'static dyn AnySetting> {
    [top::ALL, admin::ALL, shared::ALL, route::ALL, token::ALL]
        .into_iter()
        .flatten()
        .copied()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::config::Cli;

    /// The `check` subcommand as clap builds it: every flag of `run`, `check` and `refresh`.
    fn check_command() -> clap::Command {
        Cli::command()
            .find_subcommand("check")
            .expect("a check subcommand")
            .clone()
    }

    #[test]
    fn every_flag_is_described_and_every_description_is_a_flag() {
        let cmd = check_command();
        let flags: Vec<&str> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| *l != "help" && *l != "strict")
            .collect();
        let described: Vec<&str> = all().map(|s| s.flag()).collect();
        let mut a = flags.clone();
        let mut b = described.clone();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        b.dedup();
        assert_eq!(b.len(), described.len(), "a flag described twice");
    }

    #[test]
    fn each_flag_takes_its_variable_and_help_from_its_description() {
        let cmd = check_command();
        for s in all() {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(s.flag()))
                .unwrap_or_else(|| panic!("no --{}", s.flag()));
            let env = format!(
                "TOKEN_SIDECAR_{}",
                s.flag().replace('-', "_").to_uppercase()
            );
            assert_eq!(s.env(), env, "--{}", s.flag());
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(env.as_str()),
                "--{}",
                s.flag()
            );
            assert_eq!(
                arg.get_help().map(|h| h.to_string()),
                Some(s.help_text()),
                "--{}",
                s.flag()
            );
        }
    }

    #[test]
    fn every_default_is_shown_in_the_help() {
        let help = check_command().render_long_help().to_string();
        let mut shown = 0;
        for s in all() {
            let Some(d) = s.default_shown() else {
                continue;
            };
            shown += 1;
            let line = help
                .lines()
                .skip_while(|l| !l.trim_start().starts_with(&format!("--{} ", s.flag())))
                .nth(1)
                .unwrap_or_else(|| panic!("--{} not in the help:\n{help}", s.flag()));
            assert!(
                line.contains(&format!("[default: {d}]")),
                "--{}: {line}",
                s.flag()
            );
        }
        assert_eq!(help.matches("[default: ").count(), shown, "{help}");
    }

    #[test]
    fn defaults_read_as_the_readme_writes_them() {
        assert_eq!(route::HEADER_PREFIX.default.shown().unwrap(), "\"Bearer \"");
        assert_eq!(
            token::TOKEN_REQUEST_BUDGET.default.shown().unwrap(),
            "5/60s"
        );
        assert_eq!(token::DEFAULT_TOKEN_LIFETIME.default.shown().unwrap(), "1h");
        assert_eq!(route::UPSTREAM_IDLE_TIMEOUT.default.shown().unwrap(), "90s");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(top::LOG_FORMAT.help(), "json or text [default: json]");
        assert_eq!(route::UPSTREAM.help(), route::UPSTREAM.help);
    }

    /// The flag reference (docs/configuration.md) shows the same defaults (those computed at
    /// run time are described in words of its own).
    #[test]
    fn the_flag_reference_shows_the_same_defaults() {
        let readme = include_str!("../../../docs/configuration.md");
        for s in all() {
            let Some(d) = s.default_shown() else {
                continue;
            };
            let row = readme
                .lines()
                .find(|l| l.starts_with("| `--") && l.contains(&format!("`--{} ", s.flag())))
                .unwrap_or_else(|| panic!("no docs/configuration.md row for --{}", s.flag()));
            if [top::THREADS.flag, token::REFRESH_MARGIN.flag].contains(&s.flag()) {
                continue;
            }
            let d = d.trim_matches('"');
            assert!(row.contains(&format!("`{d}`")), "--{}: {row}", s.flag());
        }
    }

    /// No default is written anywhere else in the loader: each is read from here.
    #[test]
    fn the_loader_holds_no_default_of_its_own() {
        let loader = [
            ("cli.rs", include_str!("../cli.rs")),
            ("mod.rs", include_str!("../mod.rs")),
            ("admin.rs", include_str!("../admin.rs")),
            ("shared.rs", include_str!("../shared.rs")),
            ("routes.rs", include_str!("../routes.rs")),
            ("tokens.rs", include_str!("../tokens.rs")),
            ("grants.rs", include_str!("../grants.rs")),
            ("checker.rs", include_str!("../checker.rs")),
        ];
        for (file, text) in loader {
            // The code, not its tests.
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            assert!(
                !text.contains("[default:"),
                "{file} writes a default in a help"
            );
            if file != "mod.rs" {
                for unit in ["from_secs(", "from_millis("] {
                    assert!(!text.contains(unit), "{file} holds a duration");
                }
            }
            // Text defaults (the names of choices, `json`, `basic`, `client_credentials`, are
            // matched by the loader and are not counted).
            for d in [
                route::LISTEN.default,
                admin::LISTEN.default,
                route::HEADER.default,
                route::HEADER_PREFIX.default,
            ] {
                let literal = format!("{d:?}");
                assert!(!text.contains(&literal), "{file} holds {literal}");
            }
        }
    }

    #[test]
    fn keys_are_snake_case_and_unique_in_their_table() {
        for table in [top::ALL, admin::ALL, shared::ALL, route::ALL, token::ALL] {
            let mut keys: Vec<&str> = table.iter().map(|s| s.key()).collect();
            assert!(keys.iter().all(|k| k
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')));
            keys.sort_unstable();
            let n = keys.len();
            keys.dedup();
            assert_eq!(keys.len(), n);
        }
    }
}
