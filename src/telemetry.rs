//! Logging: tracing to stderr, JSON by default, filtered by `TOKEN_SIDECAR_LOG`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The environment variable holding the log filter (`info`, `token_sidecar=debug`, ...).
pub const LOG_ENV: &str = "TOKEN_SIDECAR_LOG";

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(format: LogFormat) {
    // A filter that does not parse falls back to `info`, and says so once logging is up.
    let mut bad_filter = None;
    let filter = match std::env::var(LOG_ENV) {
        Ok(spec) => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            bad_filter = Some((spec, e.to_string()));
            EnvFilter::new("info")
        }),
        Err(_) => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    if let (Ok(()), Some((spec, error))) = (installed, bad_filter) {
        tracing::warn!(
            filter = %spec,
            %error,
            "{LOG_ENV} is not a valid log filter (e.g. info, token_sidecar=debug); logging at info"
        );
    }
}
