//! `token-sidecar dev`: the whole thing on this machine, with no credentials. Built only with
//! the `dev` feature (`cargo run --release --features dev -- dev`): the shipped binary has no
//! demo and no double.
//!
//! Starts the RingCentral-like token server and API doubles of [`token_sidecar_testkit`] on
//! loopback, then the sidecar in front of the API with the JWT grant, short-lived tokens and a
//! state-less setup, and prints what to try.

use std::time::Duration;

use token_sidecar_testkit::api::ApiServer;
use token_sidecar_testkit::token_server::{TokenServer, TokenServerConfig, DEV_ASSERTION};

use crate::config::{self, DevFlags, Flags};

/// Runs the demo until SIGTERM/SIGINT; returns the exit code.
pub async fn run(flags: &DevFlags) -> i32 {
    let lifetime = match humantime::parse_duration(&flags.token_lifetime) {
        Ok(d) if d >= Duration::from_secs(2) => d,
        _ => {
            eprintln!("token-sidecar dev: --token-lifetime must be a duration of at least 2s");
            return crate::exit::INVALID_CONFIG;
        }
    };
    let ts_cfg = TokenServerConfig {
        access_ttl: lifetime,
        refresh_ttl: Duration::from_secs(24 * 3600),
        ..TokenServerConfig::default()
    };
    let client_id = ts_cfg.client_id.clone();
    let client_secret = ts_cfg.client_secret.clone();
    let token_server = match TokenServer::start(ts_cfg).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the demo token server");
            return crate::exit::START_FAILED;
        }
    };
    let api = match ApiServer::start(&token_server).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the demo API");
            return crate::exit::START_FAILED;
        }
    };

    // Credentials go through files, as they should in production.
    let dir = std::env::temp_dir().join(format!("token-sidecar-dev-{}", std::process::id()));
    let write = |name: &str, value: &str| -> std::io::Result<std::path::PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(value.as_bytes())?;
        Ok(path)
    };
    let (secret_file, jwt_file) = match (
        write("client-secret", &client_secret),
        write("jwt", DEV_ASSERTION),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot write the demo credentials");
            return crate::exit::START_FAILED;
        }
    };
    let sidecar_flags = Flags {
        listen: Some(flags.listen.clone()),
        admin_listen: Some(flags.admin_listen.clone()),
        upstream: Some(api.url()),
        grant: Some("jwt_bearer".into()),
        token_url: Some(token_server.token_url()),
        client_id: Some(client_id),
        client_secret_file: Some(secret_file),
        assertion_file: Some(jwt_file),
        min_refresh_interval: Some("2s".into()),
        // 5 a minute (the default: RingCentral's real limit) would hold back POST /refresh here.
        token_request_budget: Some("20/60s".into()),
        threads: Some("2".into()),
        ..Flags::default()
    };
    let cfg = match config::load(&sidecar_flags, &|_| None) {
        Ok(loaded) => {
            config::log_warnings(&loaded.warnings);
            loaded.config
        }
        Err(e) => {
            eprint!("token-sidecar dev: {e}");
            return crate::exit::INVALID_CONFIG;
        }
    };
    let running = match crate::app::start(cfg).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the sidecar");
            if let crate::app::StartError::Bind { addr, .. } = &e {
                eprintln!(
                    "token-sidecar dev: {addr} is in use. Choose free ports with --listen and \
                     --admin-listen, e.g.: cargo run --release --features dev -- dev \
                     --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:19090"
                );
            }
            let _ = std::fs::remove_dir_all(&dir);
            return crate::exit::START_FAILED;
        }
    };
    let proxy = running.proxy_addrs[0];
    let admin = running.admin_addr;
    println!(
        "\ntoken-sidecar dev: a demo OAuth2 server ({}) issues {}-second tokens; an echo API ({})\n\
         accepts only valid ones. The sidecar listens on http://{proxy} and injects the token.\n\n\
         Try (no credentials in any of these requests):\n\
         \x20 curl -s http://{proxy}/restapi/v1.0/account/~ ; echo   # see \"authorization\": it arrived (redacted)\n\
         \x20 curl -s -H 'Authorization: Bearer forged' http://{proxy}/restapi/v1.0/echo ; echo   # replaced\n\
         \x20 curl -s http://{admin}/token-info ; echo        # version grows every ~{} s\n\
         \x20 curl -s http://{admin}/readyz ; echo\n\
         \x20 curl -s -X POST http://{admin}/refresh ; echo    # force a refresh\n\
         \x20 curl -s http://{admin}/metrics | grep token_sidecar_token\n\
         \x20 curl -s -i http://{}/restapi/v1.0/echo ; echo    # the API itself, without the sidecar: 401\n\n\
         Logs follow on stderr; Ctrl-C stops.\n",
        token_server.url(),
        lifetime.as_secs(),
        api.url(),
        crate::token::schedule::refresh_delay(lifetime, None, 0.0).as_secs(),
        api.addr(),
    );
    let signal = crate::app::shutdown_signal().await;
    tracing::info!(signal, "stopping the demo");
    running.shutdown(Duration::from_secs(5)).await;
    drop(api);
    drop(token_server);
    let _ = std::fs::remove_dir_all(&dir);
    0
}
