//! Logging: tracing to stderr, JSON by default, filtered by `TOKEN_SIDECAR_LOG`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The environment variable holding the log filter (`info`, `token_sidecar=debug`, ...).
pub const LOG_ENV: &str = "TOKEN_SIDECAR_LOG";

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}
