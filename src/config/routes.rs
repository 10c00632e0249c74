//! `[[route]]`: proxy routes, one listener and upstream each. The route flags set the only
//! route.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

use super::checker::{bool_str, either, key_in, list, path_str, pick, printable_url, u64_str};
use super::checker::{Checker, Src};
use super::file::RawRoute;
use super::settings::route::*;
use super::settings::Setting;
use super::{is_loopback_host, Flags, RouteConfig, Warning};
use super::{LimitRule, LimitSettings, Pattern, RateLimitMode};
use crate::proxy::upstream::Upstream;
use crate::ratelimit::limits::normalize_group;
use crate::ratelimit::Rate;

/// The route flags given, in the order they are reported when they cannot apply.
pub(super) fn flags_given(flags: &Flags) -> Vec<&'static str> {
    [
        (MAX_CONNECTIONS.flag, flags.max_connections.is_some()),
        (ALLOWED_HOST.flag, !flags.allowed_host.is_empty()),
        (ALLOWED_ORIGIN.flag, !flags.allowed_origin.is_empty()),
        (LISTEN.flag, flags.listen.is_some()),
        (UPSTREAM.flag, flags.upstream.is_some()),
        (UPSTREAM_CA_FILE.flag, flags.upstream_ca_file.is_some()),
        (
            UPSTREAM_TLS_CLIENT_CERT_FILE.flag,
            flags.upstream_tls_client_cert_file.is_some(),
        ),
        (
            UPSTREAM_TLS_CLIENT_KEY_FILE.flag,
            flags.upstream_tls_client_key_file.is_some(),
        ),
        (REFRESH_ON_401.flag, flags.refresh_on_401.is_some()),
        (RETRY_BODY_LIMIT.flag, flags.retry_body_limit.is_some()),
        (HEADER.flag, flags.header.is_some()),
        (HEADER_PREFIX.flag, flags.header_prefix.is_some()),
        (UPSTREAM_TIMEOUT.flag, flags.upstream_timeout.is_some()),
        (CONNECT_TIMEOUT.flag, flags.connect_timeout.is_some()),
        (
            UPSTREAM_IDLE_TIMEOUT.flag,
            flags.upstream_idle_timeout.is_some(),
        ),
        (
            MAX_UPSTREAM_CONNECTIONS.flag,
            flags.max_upstream_connections.is_some(),
        ),
        (
            HEADER_READ_TIMEOUT.flag,
            flags.header_read_timeout.is_some(),
        ),
        (
            MAX_REQUEST_HEADER_BYTES.flag,
            flags.max_request_header_bytes.is_some(),
        ),
        (RATE_LIMIT_MODE.flag, flags.rate_limit_mode.is_some()),
        (
            RATE_LIMIT_MAX_WAIT.flag,
            flags.rate_limit_max_wait.is_some(),
        ),
        (
            RATE_LIMIT_DEFAULT_WAIT.flag,
            flags.rate_limit_default_wait.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect()
}

/// Checks every route; `flags_apply` when the route flags set the only route. `profiles` are
/// the names of the token profiles, `admin_listen` the admin listener they must not collide
/// with.
pub(super) fn routes(
    flags: &Flags,
    raw: &[RawRoute],
    flags_apply: bool,
    profiles: &[&str],
    admin_listen: SocketAddr,
    c: &mut Checker,
) -> Vec<RouteConfig> {
    let none = Flags::default();
    let f = if flags_apply { flags } else { &none };
    let routes: Vec<RouteConfig> = raw
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let sources = Sources {
                i,
                f,
                r,
                table: format!("route[{i}]"),
            };
            route(&sources, profiles, c)
        })
        .collect();
    check_listeners_distinct(admin_listen, &routes, c);
    check_names_unique(&routes, c);
    routes
}

/// Where one route's values come from: its flags (none unless they apply), its table, and the
/// table's name in messages (`route[N]`).
struct Sources<'a> {
    i: usize,
    f: &'a Flags,
    r: &'a RawRoute,
    table: String,
}

impl Sources<'_> {
    /// A duration setting of the route.
    fn duration(
        &self,
        flag: &Option<String>,
        file: &Option<String>,
        s: &Setting<Duration>,
        c: &mut Checker,
    ) -> Duration {
        c.duration(pick(flag, file, s, &self.table), s.default)
    }

    /// A whole-number setting of the route.
    fn number(
        &self,
        flag: &Option<String>,
        file: &Option<u64>,
        s: &Setting<u64>,
        c: &mut Checker,
    ) -> u64 {
        c.number(pick(flag, &u64_str(file), s, &self.table), s.default)
    }
}

fn route(src: &Sources, profiles: &[&str], c: &mut Checker) -> Option<RouteConfig> {
    let (f, r, table) = (src.f, src.r, src.table.as_str());
    let name = r.name.clone().unwrap_or_else(|| match src.i {
        0 => "default".into(),
        i => format!("route{i}"),
    });
    if name.is_empty() {
        c.err(format!("`{}`: must not be empty", key_in(table, "name")));
    }
    let listen = c.addr(pick(&f.listen, &r.listen, &LISTEN, table).unwrap_or(Src {
        value: LISTEN.default.into(),
        key: format!("--{}", LISTEN.flag),
    }));
    let upstream = upstream(&name, src, c);
    let upstream_ca_file = upstream_ca_file(src, c);
    let upstream_client_cert = c.client_cert(
        pick(
            &path_str(&f.upstream_tls_client_cert_file),
            &r.upstream_tls_client_cert_file,
            &UPSTREAM_TLS_CLIENT_CERT_FILE,
            table,
        ),
        pick(
            &path_str(&f.upstream_tls_client_key_file),
            &r.upstream_tls_client_key_file,
            &UPSTREAM_TLS_CLIENT_KEY_FILE,
            table,
        ),
        |option, expires| Warning::route_cert_expires_soon(&name, option, expires),
    );
    let token = token(src, profiles, c);
    let refresh_on_401 = c.boolean(
        pick(
            &f.refresh_on_401,
            &bool_str(&r.refresh_on_401),
            &REFRESH_ON_401,
            table,
        ),
        REFRESH_ON_401.default,
    );
    let retry_body_limit = src.number(
        &f.retry_body_limit,
        &r.retry_body_limit,
        &RETRY_BODY_LIMIT,
        c,
    );
    let header = header(pick(&f.header, &r.header, &HEADER, table), c);
    let header_prefix = header_prefix(src, c);
    let limits = limits(src, c);
    let allowed_hosts = allowed_hosts(src, c);
    let allowed_origins = allowed_origins(src, c);
    let rate_limits = rate_limits(src, c);
    let (listen, upstream) = (listen?, upstream?);
    if upstream_client_cert.is_some() && !upstream.is_https() {
        c.err(format!(
            "{}: a client certificate needs an https upstream",
            either(&UPSTREAM_TLS_CLIENT_CERT_FILE, table)
        ));
    }
    if !listen.ip().is_loopback() {
        c.warn(Warning::listener_off_loopback(&name, listen));
    }
    Some(RouteConfig {
        name,
        listen,
        upstream,
        upstream_ca_file,
        upstream_client_cert,
        token,
        refresh_on_401,
        retry_body_limit,
        header,
        header_prefix,
        upstream_timeout: limits.upstream_timeout,
        connect_timeout: limits.connect_timeout,
        upstream_idle_timeout: limits.upstream_idle_timeout,
        max_upstream_connections: limits.max_upstream_connections as usize,
        header_read_timeout: limits.header_read_timeout,
        max_request_header_bytes: limits.max_request_header_bytes as usize,
        max_connections: limits.max_connections as usize,
        allowed_hosts,
        allowed_origins,
        limits: rate_limits,
    })
}

/// The route's rate limits: its mode, waits and `[[route.limit]]` rules.
fn rate_limits(src: &Sources, c: &mut Checker) -> LimitSettings {
    let (f, r, table) = (src.f, src.r, src.table.as_str());
    let mode = c.choice(
        pick(
            &f.rate_limit_mode,
            &r.rate_limit_mode,
            &RATE_LIMIT_MODE,
            table,
        ),
        RATE_LIMIT_MODE.default,
        &RateLimitMode::ALL,
        RateLimitMode::name,
    );
    let max_wait = src.duration(
        &f.rate_limit_max_wait,
        &r.rate_limit_max_wait,
        &RATE_LIMIT_MAX_WAIT,
        c,
    );
    let default_wait = src.duration(
        &f.rate_limit_default_wait,
        &r.rate_limit_default_wait,
        &RATE_LIMIT_DEFAULT_WAIT,
        c,
    );
    c.more_than_zero(default_wait, either(&RATE_LIMIT_DEFAULT_WAIT, table));
    let mut rules = Vec::new();
    let mut groups = std::collections::BTreeMap::new();
    for (i, raw) in r.limit.iter().enumerate() {
        let key = format!("{}.limit[{i}]", table);
        let group = match raw.group.as_deref().map(normalize_group) {
            Some(Some(g)) => g,
            Some(None) => {
                c.err(format!(
                    "`{key}.group`: a group is 1 to 64 visible characters, not `*`"
                ));
                continue;
            }
            None => {
                c.err(format!(
                    "`{key}.group`: required: the group's name, as the upstream names it"
                ));
                continue;
            }
        };
        let patterns: Vec<String> = raw
            .patterns
            .as_ref()
            .map(|p| p.to_vec())
            .unwrap_or_default();
        if patterns.is_empty() {
            c.err(format!(
                "`{key}.match`: required: the requests of the group, e.g. [\"GET /v1/items/*\"]"
            ));
        }
        let patterns: Vec<Pattern> = patterns
            .iter()
            .filter_map(|p| match Pattern::parse(p) {
                Ok(p) => Some(p),
                Err(e) => {
                    c.err(format!("`{key}.match`: `{p}`: {e}"));
                    None
                }
            })
            .collect();
        let rate = raw.rate.as_ref().and_then(|s| match s.parse::<Rate>() {
            Ok(rate) => Some(rate),
            Err(e) => {
                c.err(format!("`{key}.rate`: `{s}`: {e}"));
                None
            }
        });
        // One rate per group: two rules of a group share its count.
        if let Some(rate) = rate {
            if let Some(prev) = groups.insert(group.clone(), rate) {
                if prev != rate {
                    c.err(format!(
                        "`{key}.rate`: group `{group}` already has the rate {prev} in this route"
                    ));
                }
            }
        }
        rules.push(LimitRule {
            group,
            patterns,
            rate,
        });
    }
    LimitSettings {
        mode,
        max_wait,
        default_wait,
        rules,
    }
}

/// The upstream base URL (required); plain http to a remote host is a warning.
fn upstream(name: &str, src: &Sources, c: &mut Checker) -> Option<Upstream> {
    let Some(u) = pick(&src.f.upstream, &src.r.upstream, &UPSTREAM, &src.table) else {
        c.err(format!(
            "{}: required: the base URL requests are forwarded to",
            either(&UPSTREAM, &src.table)
        ));
        return None;
    };
    match Upstream::parse(u.value.trim()) {
        Ok(up) => {
            if !up.is_https() && !is_loopback_host(up.authority().host()) {
                c.warn(Warning::plain_http_upstream(name));
            }
            Some(up)
        }
        Err(e) => {
            c.err(format!("{}: `{}`: {e}", u.key, printable_url(&u.value)));
            None
        }
    }
}

/// An extra CA file, which must load.
fn upstream_ca_file(src: &Sources, c: &mut Checker) -> Option<PathBuf> {
    let s = pick(
        &path_str(&src.f.upstream_ca_file),
        &src.r.upstream_ca_file,
        &UPSTREAM_CA_FILE,
        &src.table,
    )?;
    if let Err(e) = crate::tls::root_store(Some(Path::new(&s.value))) {
        c.err(format!("{}: {e}", s.key));
    }
    Some(PathBuf::from(s.value))
}

/// The token profile the route uses: named, or the only one there is.
fn token(src: &Sources, profiles: &[&str], c: &mut Checker) -> String {
    let key = key_in(&src.table, "token");
    let token = match &src.r.token {
        Some(t) => t.clone(),
        None if profiles.len() > 1 => {
            c.err(format!(
                "`{key}`: required: the config file defines several token profiles ({}); name the one this route uses",
                profiles.join(", ")
            ));
            String::new()
        }
        None => profiles.first().map(|p| p.to_string()).unwrap_or_default(),
    };
    if !token.is_empty() && !profiles.contains(&token.as_str()) {
        c.err(format!(
            "`{key}`: no token profile `{token}` (defined: {})",
            profiles.join(", ")
        ));
    }
    token
}

/// The header the token goes in: not a hop-by-hop header, not `Host`.
fn header(src: Option<Src<String>>, c: &mut Checker) -> HeaderName {
    let h = src.unwrap_or_else(|| Src {
        value: HEADER.default.into(),
        key: format!("--{}", HEADER.flag),
    });
    match HeaderName::from_bytes(h.value.trim().as_bytes()) {
        Ok(n) if !crate::proxy::rewrite::is_hop_by_hop_name(&n) && n != http::header::HOST => n,
        _ => {
            c.err(format!(
                "{}: `{}` is not a header name the sidecar can set",
                h.key, h.value
            ));
            // A stand-in: the configuration is refused.
            http::header::AUTHORIZATION
        }
    }
}

fn header_prefix(src: &Sources, c: &mut Checker) -> String {
    let prefix = pick(
        &src.f.header_prefix,
        &src.r.header_prefix,
        &HEADER_PREFIX,
        &src.table,
    )
    .map_or_else(|| HEADER_PREFIX.default.to_owned(), |p| p.value);
    if http::HeaderValue::from_str(&prefix).is_err() {
        c.err(format!(
            "{}: not allowed in a header value",
            either(&HEADER_PREFIX, &src.table)
        ));
    }
    prefix
}

/// Timeouts and sizes of a route.
struct Limits {
    upstream_timeout: Duration,
    connect_timeout: Duration,
    upstream_idle_timeout: Duration,
    max_upstream_connections: u64,
    header_read_timeout: Duration,
    max_request_header_bytes: u64,
    max_connections: u64,
}

fn limits(src: &Sources, c: &mut Checker) -> Limits {
    let (f, r, table) = (src.f, src.r, src.table.as_str());
    let upstream_timeout = src.duration(
        &f.upstream_timeout,
        &r.upstream_timeout,
        &UPSTREAM_TIMEOUT,
        c,
    );
    let connect_timeout = src.duration(&f.connect_timeout, &r.connect_timeout, &CONNECT_TIMEOUT, c);
    let upstream_idle_timeout = src.duration(
        &f.upstream_idle_timeout,
        &r.upstream_idle_timeout,
        &UPSTREAM_IDLE_TIMEOUT,
        c,
    );
    let max_upstream_connections = src.number(
        &f.max_upstream_connections,
        &r.max_upstream_connections,
        &MAX_UPSTREAM_CONNECTIONS,
        c,
    );
    if max_upstream_connections > 65536 {
        c.err(format!(
            "{}: {max_upstream_connections} is out of range (0..=65536; 0 means no limit)",
            either(&MAX_UPSTREAM_CONNECTIONS, table)
        ));
    }
    let header_read_timeout = src.duration(
        &f.header_read_timeout,
        &r.header_read_timeout,
        &HEADER_READ_TIMEOUT,
        c,
    );
    for (d, s) in [
        (upstream_timeout, &UPSTREAM_TIMEOUT),
        (connect_timeout, &CONNECT_TIMEOUT),
        (upstream_idle_timeout, &UPSTREAM_IDLE_TIMEOUT),
        (header_read_timeout, &HEADER_READ_TIMEOUT),
    ] {
        c.more_than_zero(d, either(s, table));
    }
    let max_request_header_bytes = src.number(
        &f.max_request_header_bytes,
        &r.max_request_header_bytes,
        &MAX_REQUEST_HEADER_BYTES,
        c,
    );
    if !(1024..=1024 * 1024).contains(&max_request_header_bytes) {
        c.err(format!(
            "{}: {max_request_header_bytes} is out of range (1024..=1048576)",
            either(&MAX_REQUEST_HEADER_BYTES, table)
        ));
    }
    let max_connections = c.count_in(
        pick(
            &f.max_connections,
            &u64_str(&r.max_connections),
            &MAX_CONNECTIONS,
            table,
        ),
        MAX_CONNECTIONS.default,
        1..=65536,
        &either(&MAX_CONNECTIONS, table),
    );
    Limits {
        upstream_timeout,
        connect_timeout,
        upstream_idle_timeout,
        max_upstream_connections,
        header_read_timeout,
        max_request_header_bytes,
        max_connections,
    }
}

/// Host names besides the listener's own (`*.` prefixes for subdomains), lowercased.
fn allowed_hosts(src: &Sources, c: &mut Checker) -> Vec<String> {
    list(
        &src.f.allowed_host,
        &src.r.allowed_hosts,
        &ALLOWED_HOST,
        &src.table,
    )
    .into_iter()
    .filter_map(|h| match crate::proxy::origin::host_pattern(&h.value) {
        Ok(p) => Some(p),
        Err(e) => {
            c.err(format!("{}: `{}`: {e}", h.key, h.value));
            None
        }
    })
    .collect()
}

/// Browser origins besides the listener's own, as `scheme://host[:port]`.
fn allowed_origins(src: &Sources, c: &mut Checker) -> Vec<String> {
    list(
        &src.f.allowed_origin,
        &src.r.allowed_origins,
        &ALLOWED_ORIGIN,
        &src.table,
    )
    .into_iter()
    .filter_map(|o| match crate::proxy::origin::origin(&o.value) {
        Ok(p) => Some(p),
        Err(e) => {
            c.err(format!("{}: `{}`: {e}", o.key, o.value));
            None
        }
    })
    .collect()
}

/// Listeners must not collide (port 0 asks the OS for a fresh port each time).
fn check_listeners_distinct(admin_listen: SocketAddr, routes: &[RouteConfig], c: &mut Checker) {
    let mut seen: Vec<(SocketAddr, String)> = vec![(admin_listen, "the admin listener".into())];
    for r in routes {
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
}

fn check_names_unique(routes: &[RouteConfig], c: &mut Checker) {
    let mut names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    for w in names.windows(2) {
        if w[0] == w[1] {
            c.err(format!("route name `{}` is used twice", w[0]));
        }
    }
}
