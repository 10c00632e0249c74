//! The admin listener (`[admin]`) and the settings of the file's top level: log format,
//! shutdown grace, threads and the retry body budget.

use std::net::SocketAddr;
use std::time::Duration;

use super::checker::{pick, u64_str, Checker, Src};
use super::file::RawFile;
use super::settings::{admin, top};
use super::{Flags, LogFormat};

/// The process-wide settings.
pub(super) struct Process {
    pub(super) admin_listen: SocketAddr,
    pub(super) admin_max_connections: usize,
    pub(super) log_format: LogFormat,
    pub(super) shutdown_grace: Duration,
    pub(super) threads: usize,
    pub(super) retry_body_budget: u64,
}

/// Checks the admin and top-level settings.
pub(super) fn process(flags: &Flags, raw: &RawFile, c: &mut Checker) -> Process {
    Process {
        admin_listen: admin_listen(flags, raw, c),
        log_format: log_format(flags, raw, c),
        shutdown_grace: c.duration(
            pick(
                &flags.shutdown_grace,
                &raw.shutdown_grace,
                &top::SHUTDOWN_GRACE,
                "",
            ),
            top::SHUTDOWN_GRACE.default,
        ),
        threads: threads(flags, raw, c),
        admin_max_connections: admin_max_connections(flags, raw, c),
        retry_body_budget: retry_body_budget(flags, raw, c),
    }
}

fn admin_listen(flags: &Flags, raw: &RawFile, c: &mut Checker) -> SocketAddr {
    let s = &admin::LISTEN;
    let file = raw.admin.as_ref().and_then(|a| a.listen.clone());
    let src = pick(&flags.admin_listen, &file, s, "admin").unwrap_or(Src {
        value: s.default.into(),
        key: format!("--{}", s.flag),
    });
    // After a bad address, the default stands in, so that the listeners are still compared.
    c.addr(src)
        .unwrap_or_else(|| s.default.parse().expect("the default admin address parses"))
}

fn log_format(flags: &Flags, raw: &RawFile, c: &mut Checker) -> LogFormat {
    let s = &top::LOG_FORMAT;
    c.choice(
        pick(&flags.log_format, &raw.log_format, s, ""),
        s.default,
        &[LogFormat::Json, LogFormat::Text],
        LogFormat::name,
    )
}

fn threads(flags: &Flags, raw: &RawFile, c: &mut Checker) -> usize {
    let s = &top::THREADS;
    let n = c.count_in(
        pick(&flags.threads, &u64_str(&raw.threads), s, ""),
        top::default_threads(),
        1..=1024,
        &format!("--{}", s.flag),
    );
    n.clamp(1, 1024) as usize
}

fn admin_max_connections(flags: &Flags, raw: &RawFile, c: &mut Checker) -> usize {
    let s = &admin::MAX_CONNECTIONS;
    let file = raw.admin.as_ref().and_then(|a| a.max_connections);
    c.count_in(
        pick(&flags.admin_max_connections, &u64_str(&file), s, "admin"),
        s.default,
        1..=65536,
        &format!("--{}", s.flag),
    ) as usize
}

fn retry_body_budget(flags: &Flags, raw: &RawFile, c: &mut Checker) -> u64 {
    let s = &top::RETRY_BODY_BUDGET;
    c.count_in(
        pick(
            &flags.retry_body_budget,
            &u64_str(&raw.retry_body_budget),
            s,
            "",
        ),
        s.default,
        0..=1 << 30,
        &format!("--{}", s.flag),
    )
}
