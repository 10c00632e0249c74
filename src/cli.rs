//! The command line: parses flags, loads the configuration, runs the chosen subcommand and
//! returns the process exit code.

use clap::Parser;

use crate::config::{self, Cli, Command, Flags};

/// Runs the command line and returns the exit code.
pub fn main() -> i32 {
    harden_process();
    let cli = Cli::parse();
    let env = |name: &str| std::env::var(name).ok();
    match cli.command {
        None => run(&cli.flags, &env),
        Some(Command::Run(flags)) => run(&flags, &env),
        Some(Command::Check(c)) => check(&c.flags, c.strict, &env),
        Some(Command::Refresh(flags)) => refresh(&flags, &env),
        Some(Command::Dev(flags)) => dev(&flags),
    }
}

/// `token-sidecar dev`: the demo, with its RingCentral-like doubles in this build.
#[cfg(feature = "dev")]
fn dev(flags: &config::DevFlags) -> i32 {
    crate::telemetry::init(if flags.log_format == "json" {
        config::LogFormat::Json
    } else {
        config::LogFormat::Text
    });
    match runtime(2) {
        Ok(rt) => rt.block_on(crate::demo::run(flags)),
        Err(e) => {
            eprintln!("token-sidecar: cannot start the runtime: {e}");
            crate::exit::START_FAILED
        }
    }
}

/// `token-sidecar dev` in the shipped build: the product holds no test double, so no demo.
#[cfg(not(feature = "dev"))]
fn dev(_flags: &config::DevFlags) -> i32 {
    eprintln!(
        "token-sidecar dev: this build has no demo; from a source checkout, run it with: \
         cargo run --release --features dev -- dev"
    );
    crate::exit::USAGE
}

/// Makes the process non-dumpable before any secret is read: no core dump, and no other process
/// of the same user can attach to it or read its memory through /proc (PR_SET_DUMPABLE 0).
/// The memory of the process holds the tokens, the refresh token and the client secret.
fn harden_process() {
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("token-sidecar: warning: cannot make the process non-dumpable: {e}");
    }
}

/// Loads the configuration and logs its warnings, also when it is refused (then before the
/// problems are printed).
fn load(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<config::Config, i32> {
    match config::load(flags, env) {
        Ok(loaded) => {
            config::log_warnings(&loaded.warnings);
            Ok(loaded.config)
        }
        Err(e) => {
            config::log_warnings(e.warnings());
            eprint!("token-sidecar: {e}");
            eprintln!("{HINT}");
            Err(crate::exit::INVALID_CONFIG)
        }
    }
}

/// Where to go from a configuration that does not load.
const HINT: &str = "Run `token-sidecar --help` for every flag (docs/configuration.md for the config file), or try the demo, which needs no credentials: `cargo run --release --features dev -- dev`.";

/// Starts logging, in the format the flags or the config file ask for so that configuration
/// warnings already use it, then loads the configuration.
fn init_and_load(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<config::Config, i32> {
    crate::telemetry::init(config::log_format_hint(flags, env));
    load(flags, env)
}

/// `check`: the summary and every warning on stdout (the warnings are also logged, as `run`
/// logs them); with `strict`, a warning fails it as a problem does.
fn check(flags: &Flags, strict: bool, env: &dyn Fn(&str) -> Option<String>) -> i32 {
    crate::telemetry::init(config::log_format_hint(flags, env));
    match config::load(flags, env) {
        Ok(loaded) => {
            config::log_warnings(&loaded.warnings);
            let warnings = &loaded.warnings;
            if strict && !warnings.is_empty() {
                println!(
                    "configuration has {} warning(s) (--strict):",
                    warnings.len()
                );
                for w in warnings {
                    println!("  - {w}");
                }
                return crate::exit::INVALID_CONFIG;
            }
            print!("configuration OK\n{}", loaded.config.summary());
            if !warnings.is_empty() {
                println!("warnings ({}):", warnings.len());
                for w in warnings {
                    println!("  - {w}");
                }
            }
            crate::exit::OK
        }
        Err(e) => {
            config::log_warnings(e.warnings());
            eprint!("token-sidecar: {e}");
            eprintln!("{HINT}");
            crate::exit::INVALID_CONFIG
        }
    }
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

fn run(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> i32 {
    let cfg = match init_and_load(flags, env) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match runtime(cfg.threads) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return crate::exit::START_FAILED;
        }
    };
    rt.block_on(serve(cfg))
}

async fn serve(cfg: config::Config) -> i32 {
    let grace = cfg.shutdown_grace;
    let threads = cfg.threads;
    let running = match crate::app::start(cfg).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return crate::exit::START_FAILED;
        }
    };
    tracing::info!(
        threads,
        version = env!("CARGO_PKG_VERSION"),
        "token-sidecar started"
    );
    let signal = crate::app::shutdown_signal().await;
    tracing::info!(signal, grace = ?grace, "shutting down: no new connections, draining in-flight requests");
    if running.shutdown(grace).await {
        tracing::info!("shutdown complete");
    } else {
        tracing::warn!(grace = ?grace, "in-flight requests did not finish within the grace period");
    }
    crate::exit::OK
}

/// `refresh`: one forced refresh of every OAuth2 profile, as `run`'s refresher does it
/// (using the refresh token from the state file when one is held), persisted, metadata
/// printed as one JSON line per profile. Never prints a token.
fn refresh(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> i32 {
    let cfg = match init_and_load(flags, env) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let profiles: Vec<_> = cfg
        .tokens
        .values()
        .filter(|t| t.grant.is_oauth())
        .cloned()
        .collect();
    if profiles.is_empty() {
        eprintln!("token-sidecar: refresh: no token profile uses an OAuth2 grant");
        return crate::exit::INVALID_CONFIG;
    }
    let rt = match runtime(1) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("token-sidecar: cannot start the runtime: {e}");
            return crate::exit::START_FAILED;
        }
    };
    rt.block_on(async {
        let metrics = crate::metrics::Metrics::new();
        let mut code = 0;
        for tc in profiles {
            if tc.state_file.is_none() && cfg.shared.is_none() {
                tracing::warn!(token = %tc.name, "no state file or shared store: the new token is not kept anywhere");
            }
            let tc = match crate::token::oauth::discovery::resolve(&tc).await {
                Ok(tc) => tc,
                Err(e) => {
                    eprintln!("token-sidecar: token {}: {e}", tc.name);
                    code = crate::exit::START_FAILED;
                    continue;
                }
            };
            let store = std::sync::Arc::new(crate::token::TokenStore::new(tc.name.as_str(), vec![]));
            let refresher = match crate::token::refresher::Refresher::new(&tc, store.clone(), metrics.clone(), cfg.shared.as_ref()) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("token-sidecar: token {}: {e}", tc.name);
                    code = crate::exit::START_FAILED;
                    continue;
                }
            };
            refresher.load_state().await;
            let result = refresher.refresh(crate::token::Trigger::Manual, None).await;
            let token = store.current();
            let (has_rt, rt_exp) = refresher.refresh_token_info();
            // Without a shared store the state file is the only place the new set (and its
            // rotated refresh token) is kept: not writing it is a failure, or every run of a
            // CronJob would open a new session.
            let unsaved = if cfg.shared.is_none() { refresher.state_file_error() } else { None };
            let line = match (&result, unsaved) {
                (Ok(_), Some(e)) => {
                    code = crate::exit::START_FAILED;
                    serde_json::json!({ "token": tc.name, "result": "failure", "error": format!("a token was obtained but the state file could not be written: {e}") })
                }
                (Ok(version), None) => serde_json::json!({
                    "token": tc.name,
                    "result": "success",
                    "version": version,
                    "obtained_at": token.as_ref().map(|t| crate::token::unix_seconds(t.obtained_at())),
                    "expires_at": token.as_ref().and_then(|t| t.expires_at()).map(crate::token::unix_seconds),
                    "has_refresh_token": has_rt,
                    "refresh_token_expires_at": rt_exp,
                    "state_file": tc.state_file.as_ref().map(|p| p.display().to_string()),
                }),
                (Err(e), _) => {
                    code = crate::exit::START_FAILED;
                    serde_json::json!({ "token": tc.name, "result": "failure", "error": e.to_string() })
                }
            };
            println!("{line}");
        }
        code
    })
}
