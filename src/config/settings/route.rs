//! Settings of a `[[route]]`; the flags set the only route.

use super::*;

/// `--listen` / `route[N].listen`.
pub const LISTEN: Setting<&str> = Setting {
    flag: "listen",
    env: "TOKEN_SIDECAR_LISTEN",
    key: "listen",
    value: "ADDR",
    default: "127.0.0.1:8080",
    help: "Where the app sends its requests",
};
/// `--upstream` / `route[N].upstream` (required).
pub const UPSTREAM: Setting<NoDefault> = Setting {
    flag: "upstream",
    env: "TOKEN_SIDECAR_UPSTREAM",
    key: "upstream",
    value: "URL",
    default: NoDefault,
    help: "Base URL requests are forwarded to, e.g. https://platform.ringcentral.com",
};
/// `--upstream-ca-file` / `route[N].upstream_ca_file`.
pub const UPSTREAM_CA_FILE: Setting<NoDefault> = Setting {
    flag: "upstream-ca-file",
    env: "TOKEN_SIDECAR_UPSTREAM_CA_FILE",
    key: "upstream_ca_file",
    value: "FILE",
    default: NoDefault,
    help: "Extra PEM CA(s) trusted for the upstream",
};
/// `--upstream-tls-client-cert-file` / `route[N].upstream_tls_client_cert_file`.
pub const UPSTREAM_TLS_CLIENT_CERT_FILE: Setting<NoDefault> = Setting {
    flag: "upstream-tls-client-cert-file",
    env: "TOKEN_SIDECAR_UPSTREAM_TLS_CLIENT_CERT_FILE",
    key: "upstream_tls_client_cert_file",
    value: "FILE",
    default: NoDefault,
    help:
        "PEM certificate chain presented to the upstream (mutual TLS); read again when it changes",
};
/// `--upstream-tls-client-key-file` / `route[N].upstream_tls_client_key_file`.
pub const UPSTREAM_TLS_CLIENT_KEY_FILE: Setting<NoDefault> = Setting {
    flag: "upstream-tls-client-key-file",
    env: "TOKEN_SIDECAR_UPSTREAM_TLS_CLIENT_KEY_FILE",
    key: "upstream_tls_client_key_file",
    value: "FILE",
    default: NoDefault,
    help: "PEM private key of --upstream-tls-client-cert-file",
};
/// `--refresh-on-401` / `route[N].refresh_on_401`.
pub const REFRESH_ON_401: Setting<bool> = Setting {
    flag: "refresh-on-401",
    env: "TOKEN_SIDECAR_REFRESH_ON_401",
    key: "refresh_on_401",
    value: "BOOL",
    default: true,
    help: "On a 401 from the upstream, refresh and retry once",
};
/// `--retry-body-limit` / `route[N].retry_body_limit`.
pub const RETRY_BODY_LIMIT: Setting<u64> = Setting {
    flag: "retry-body-limit",
    env: "TOKEN_SIDECAR_RETRY_BODY_LIMIT",
    key: "retry_body_limit",
    value: "BYTES",
    default: 65536,
    help: "Request bodies up to this many bytes are kept for a replay after a 401",
};
/// `--header` / `route[N].header`.
pub const HEADER: Setting<&str> = Setting {
    flag: "header",
    env: "TOKEN_SIDECAR_HEADER",
    key: "header",
    value: "NAME",
    default: "Authorization",
    help: "Header the token is written to",
};
/// `--header-prefix` / `route[N].header_prefix`.
pub const HEADER_PREFIX: Setting<&str> = Setting {
    flag: "header-prefix",
    env: "TOKEN_SIDECAR_HEADER_PREFIX",
    key: "header_prefix",
    value: "P",
    default: "Bearer ",
    help: "Written before the token",
};
/// `--upstream-timeout` / `route[N].upstream_timeout`.
pub const UPSTREAM_TIMEOUT: Setting<Duration> = Setting {
    flag: "upstream-timeout",
    env: "TOKEN_SIDECAR_UPSTREAM_TIMEOUT",
    key: "upstream_timeout",
    value: "DURATION",
    default: Duration::from_secs(60),
    help: "Upper bound on waiting for the upstream's response headers",
};
/// `--connect-timeout` / `route[N].connect_timeout`.
pub const CONNECT_TIMEOUT: Setting<Duration> = Setting {
    flag: "connect-timeout",
    env: "TOKEN_SIDECAR_CONNECT_TIMEOUT",
    key: "connect_timeout",
    value: "DURATION",
    default: Duration::from_secs(5),
    help: "Upper bound on connecting to the upstream",
};
/// `--upstream-idle-timeout` / `route[N].upstream_idle_timeout`.
pub const UPSTREAM_IDLE_TIMEOUT: Setting<Duration> = Setting {
    flag: "upstream-idle-timeout",
    env: "TOKEN_SIDECAR_UPSTREAM_IDLE_TIMEOUT",
    key: "upstream_idle_timeout",
    value: "DURATION",
    default: Duration::from_secs(90),
    help: "Idle upstream connections are closed after this time",
};
/// `--max-upstream-connections` / `route[N].max_upstream_connections`.
pub const MAX_UPSTREAM_CONNECTIONS: Setting<u64> = Setting {
    flag: "max-upstream-connections",
    env: "TOKEN_SIDECAR_MAX_UPSTREAM_CONNECTIONS",
    key: "max_upstream_connections",
    value: "N",
    default: 512,
    help: "Upstream connections open at once, at most; more requests wait for one (0: no limit)",
};
/// `--header-read-timeout` / `route[N].header_read_timeout`.
pub const HEADER_READ_TIMEOUT: Setting<Duration> = Setting {
    flag: "header-read-timeout",
    env: "TOKEN_SIDECAR_HEADER_READ_TIMEOUT",
    key: "header_read_timeout",
    value: "DURATION",
    default: Duration::from_secs(30),
    help: "Time an app has to send a request's headers; also closes idle keep-alive connections",
};
/// `--max-request-header-bytes` / `route[N].max_request_header_bytes`.
pub const MAX_REQUEST_HEADER_BYTES: Setting<u64> = Setting {
    flag: "max-request-header-bytes",
    env: "TOKEN_SIDECAR_MAX_REQUEST_HEADER_BYTES",
    key: "max_request_header_bytes",
    value: "BYTES",
    default: 32 * 1024,
    help: "Request header blocks over this size are answered 431",
};
/// `--max-connections` / `route[N].max_connections`.
pub const MAX_CONNECTIONS: Setting<u64> = Setting {
    flag: "max-connections",
    env: "TOKEN_SIDECAR_MAX_CONNECTIONS",
    key: "max_connections",
    value: "N",
    default: 4096,
    help: "Connections a proxy listener holds open at once; more are closed at once",
};
/// `--allowed-host` (repeatable) / `route[N].allowed_hosts`.
pub const ALLOWED_HOST: Setting<NoDefault> = Setting {
    flag: "allowed-host",
    env: "TOKEN_SIDECAR_ALLOWED_HOST",
    key: "allowed_hosts",
    value: "HOST",
    default: NoDefault,
    help: "A host name requests may name besides the listener's own (repeatable; *.example.com for subdomains)",
};
/// `--allowed-origin` (repeatable) / `route[N].allowed_origins`.
pub const ALLOWED_ORIGIN: Setting<NoDefault> = Setting {
    flag: "allowed-origin",
    env: "TOKEN_SIDECAR_ALLOWED_ORIGIN",
    key: "allowed_origins",
    value: "ORIGIN",
    default: NoDefault,
    help: "A browser origin allowed to use the route, e.g. http://localhost:3000 (repeatable)",
};

/// `--rate-limit-mode` / `route[N].rate_limit_mode`.
pub const RATE_LIMIT_MODE: Setting<Mode> = Setting {
    flag: "rate-limit-mode",
    env: "TOKEN_SIDECAR_RATE_LIMIT_MODE",
    key: "rate_limit_mode",
    value: "reject|hold|off",
    default: Mode::Reject,
    help: "Requests of a group the upstream blocked (429, or 503 with Retry-After): reject answers 429 without going upstream, hold waits for the block to end within --rate-limit-max-wait, off forwards everything",
};
/// `--rate-limit-max-wait` / `route[N].rate_limit_max_wait`.
pub const RATE_LIMIT_MAX_WAIT: Setting<Duration> = Setting {
    flag: "rate-limit-max-wait",
    env: "TOKEN_SIDECAR_RATE_LIMIT_MAX_WAIT",
    key: "rate_limit_max_wait",
    value: "DURATION",
    default: Duration::from_secs(10),
    help: "The longest a request waits for a block to end (hold) or for room in its group's rate",
};
/// `--rate-limit-default-wait` / `route[N].rate_limit_default_wait`.
pub const RATE_LIMIT_DEFAULT_WAIT: Setting<Duration> = Setting {
    flag: "rate-limit-default-wait",
    env: "TOKEN_SIDECAR_RATE_LIMIT_DEFAULT_WAIT",
    key: "rate_limit_default_wait",
    value: "DURATION",
    default: Duration::from_secs(60),
    help: "How long a 429 without Retry-After blocks its group",
};

/// Every setting of this table.
pub const ALL: &[&dyn AnySetting] = &[
    &LISTEN,
    &UPSTREAM,
    &UPSTREAM_CA_FILE,
    &UPSTREAM_TLS_CLIENT_CERT_FILE,
    &UPSTREAM_TLS_CLIENT_KEY_FILE,
    &RATE_LIMIT_MODE,
    &RATE_LIMIT_MAX_WAIT,
    &RATE_LIMIT_DEFAULT_WAIT,
    &REFRESH_ON_401,
    &RETRY_BODY_LIMIT,
    &HEADER,
    &HEADER_PREFIX,
    &UPSTREAM_TIMEOUT,
    &CONNECT_TIMEOUT,
    &UPSTREAM_IDLE_TIMEOUT,
    &MAX_UPSTREAM_CONNECTIONS,
    &HEADER_READ_TIMEOUT,
    &MAX_REQUEST_HEADER_BYTES,
    &MAX_CONNECTIONS,
    &ALLOWED_HOST,
    &ALLOWED_ORIGIN,
];
