//! Settings of a `[token.NAME]` profile; the flags set the only profile.

use super::*;

/// `--grant` / `token.NAME.grant`.
pub const GRANT: Setting<&str> = Setting {
    flag: "grant",
    env: "TOKEN_SIDECAR_GRANT",
    key: "grant",
    value: "KIND",
    default: "client_credentials",
    help: "client_credentials, jwt_bearer, token_exchange, refresh_token, password, file or static",
};
/// `--token-url` / `token.NAME.token_url`.
pub const TOKEN_URL: Setting<NoDefault> = Setting {
    flag: "token-url",
    env: "TOKEN_SIDECAR_TOKEN_URL",
    key: "token_url",
    value: "URL",
    default: NoDefault,
    help: "OAuth2 token endpoint",
};
/// `--client-id` / `token.NAME.client_id`.
pub const CLIENT_ID: Setting<NoDefault> = Setting {
    flag: "client-id",
    env: "TOKEN_SIDECAR_CLIENT_ID",
    key: "client_id",
    value: "ID",
    default: NoDefault,
    help: "OAuth2 client id",
};
/// `--client-secret` / `token.NAME.client_secret`.
pub const CLIENT_SECRET: Setting<NoDefault> = Setting {
    flag: "client-secret",
    env: "TOKEN_SIDECAR_CLIENT_SECRET",
    key: "client_secret",
    value: "S",
    default: NoDefault,
    help: "OAuth2 client secret (prefer --client-secret-file)",
};
/// `--client-secret-file` / `token.NAME.client_secret_file`.
pub const CLIENT_SECRET_FILE: Setting<NoDefault> = Setting {
    flag: "client-secret-file",
    env: "TOKEN_SIDECAR_CLIENT_SECRET_FILE",
    key: "client_secret_file",
    value: "FILE",
    default: NoDefault,
    help: "File holding the OAuth2 client secret",
};
/// `--client-auth` / `token.NAME.client_auth`.
pub const CLIENT_AUTH: Setting<ClientAuth> = Setting {
    flag: "client-auth",
    env: "TOKEN_SIDECAR_CLIENT_AUTH",
    key: "client_auth",
    value: "METHOD",
    default: ClientAuth::Basic,
    help: "How the client authenticates to the token endpoint: basic, body, none, private_key_jwt, client_secret_jwt, assertion_file or tls",
};
/// `--jwt-signing-key-file` / `token.NAME.jwt_signing_key_file`.
pub const JWT_SIGNING_KEY_FILE: Setting<NoDefault> = Setting {
    flag: "jwt-signing-key-file",
    env: "TOKEN_SIDECAR_JWT_SIGNING_KEY_FILE",
    key: "jwt_signing_key_file",
    value: "FILE",
    default: NoDefault,
    help: "For private_key_jwt: the PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) that signs client assertions; read again when it changes",
};
/// `--jwt-key-id` / `token.NAME.jwt_key_id`.
pub const JWT_KEY_ID: Setting<NoDefault> = Setting {
    flag: "jwt-key-id",
    env: "TOKEN_SIDECAR_JWT_KEY_ID",
    key: "jwt_key_id",
    value: "KID",
    default: NoDefault,
    help: "The `kid` header of client assertions",
};
/// `--jwt-alg` / `token.NAME.jwt_alg`: without it, the key's type decides.
pub const JWT_ALG: Setting<NoDefault> = Setting {
    flag: "jwt-alg",
    env: "TOKEN_SIDECAR_JWT_ALG",
    key: "jwt_alg",
    value: "ALG",
    default: NoDefault,
    help: "Algorithm of client assertions (default from the key: RS256, ES256, ES384 or EdDSA; HS256 for client_secret_jwt); PS256 and the other RS/PS/HS variants on request",
};
/// `--jwt-audience` / `token.NAME.jwt_audience`: without it, the token endpoint's URL.
pub const JWT_AUDIENCE: Setting<NoDefault> = Setting {
    flag: "jwt-audience",
    env: "TOKEN_SIDECAR_JWT_AUDIENCE",
    key: "jwt_audience",
    value: "AUD",
    default: NoDefault,
    help: "The `aud` of client assertions (default: the token endpoint URL)",
};
/// `--client-assertion-file` / `token.NAME.client_assertion_file`.
pub const CLIENT_ASSERTION_FILE: Setting<NoDefault> = Setting {
    flag: "client-assertion-file",
    env: "TOKEN_SIDECAR_CLIENT_ASSERTION_FILE",
    key: "client_assertion_file",
    value: "FILE",
    default: NoDefault,
    help: "For assertion_file: the client assertion (such as a projected service-account token), read before every token request",
};
/// `--tls-client-cert-file` / `token.NAME.tls_client_cert_file`.
pub const TLS_CLIENT_CERT_FILE: Setting<NoDefault> = Setting {
    flag: "tls-client-cert-file",
    env: "TOKEN_SIDECAR_TLS_CLIENT_CERT_FILE",
    key: "tls_client_cert_file",
    value: "FILE",
    default: NoDefault,
    help: "PEM certificate chain presented to the token endpoint (mutual TLS); read again when it changes",
};
/// `--tls-client-key-file` / `token.NAME.tls_client_key_file`.
pub const TLS_CLIENT_KEY_FILE: Setting<NoDefault> = Setting {
    flag: "tls-client-key-file",
    env: "TOKEN_SIDECAR_TLS_CLIENT_KEY_FILE",
    key: "tls_client_key_file",
    value: "FILE",
    default: NoDefault,
    help: "PEM private key of --tls-client-cert-file",
};
/// `--token-ca-file` / `token.NAME.token_ca_file`.
pub const TOKEN_CA_FILE: Setting<NoDefault> = Setting {
    flag: "token-ca-file",
    env: "TOKEN_SIDECAR_TOKEN_CA_FILE",
    key: "token_ca_file",
    value: "FILE",
    default: NoDefault,
    help: "Extra PEM CA certificates trusted for the token endpoint and the issuer",
};
/// `--issuer` / `token.NAME.issuer`.
pub const ISSUER: Setting<NoDefault> = Setting {
    flag: "issuer",
    env: "TOKEN_SIDECAR_ISSUER",
    key: "issuer",
    value: "URL",
    default: NoDefault,
    help: "Authorization server whose metadata (RFC 8414, else OpenID Connect discovery) gives the token endpoint at start",
};
/// `--audience` (repeatable) / `token.NAME.audience`.
pub const AUDIENCE: Setting<NoDefault> = Setting {
    flag: "audience",
    env: "TOKEN_SIDECAR_AUDIENCE",
    key: "audience",
    value: "AUD",
    default: NoDefault,
    help:
        "`audience` sent with every token request (repeatable; comma-separated in the environment)",
};
/// `--resource` (repeatable) / `token.NAME.resource`.
pub const RESOURCE: Setting<NoDefault> = Setting {
    flag: "resource",
    env: "TOKEN_SIDECAR_RESOURCE",
    key: "resource",
    value: "URI",
    default: NoDefault,
    help: "`resource` (RFC 8707) sent with every token request (repeatable; comma-separated in the environment)",
};
/// `--subject-token-file` / `token.NAME.subject_token_file`.
pub const SUBJECT_TOKEN_FILE: Setting<NoDefault> = Setting {
    flag: "subject-token-file",
    env: "TOKEN_SIDECAR_SUBJECT_TOKEN_FILE",
    key: "subject_token_file",
    value: "FILE",
    default: NoDefault,
    help: "For token_exchange: the subject token, read before every token request",
};
/// `--subject-token-type` / `token.NAME.subject_token_type`.
pub const SUBJECT_TOKEN_TYPE: Setting<&str> = Setting {
    flag: "subject-token-type",
    env: "TOKEN_SIDECAR_SUBJECT_TOKEN_TYPE",
    key: "subject_token_type",
    value: "URI",
    default: JWT_TOKEN_TYPE,
    help: "For token_exchange: the subject token's type",
};
/// `--actor-token-file` / `token.NAME.actor_token_file`.
pub const ACTOR_TOKEN_FILE: Setting<NoDefault> = Setting {
    flag: "actor-token-file",
    env: "TOKEN_SIDECAR_ACTOR_TOKEN_FILE",
    key: "actor_token_file",
    value: "FILE",
    default: NoDefault,
    help: "For token_exchange: an actor token, read before every token request",
};
/// `--actor-token-type` / `token.NAME.actor_token_type`.
pub const ACTOR_TOKEN_TYPE: Setting<&str> = Setting {
    flag: "actor-token-type",
    env: "TOKEN_SIDECAR_ACTOR_TOKEN_TYPE",
    key: "actor_token_type",
    value: "URI",
    default: JWT_TOKEN_TYPE,
    help: "For token_exchange: the actor token's type",
};
/// `--requested-token-type` / `token.NAME.requested_token_type`.
pub const REQUESTED_TOKEN_TYPE: Setting<NoDefault> = Setting {
    flag: "requested-token-type",
    env: "TOKEN_SIDECAR_REQUESTED_TOKEN_TYPE",
    key: "requested_token_type",
    value: "URI",
    default: NoDefault,
    help: "For token_exchange: the type of token asked for",
};

/// RFC 8693's token type of a JWT.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// `--assertion-file` / `token.NAME.assertion_file` (or `assertion` inline).
pub const ASSERTION_FILE: Setting<NoDefault> = Setting {
    flag: "assertion-file",
    env: "TOKEN_SIDECAR_ASSERTION_FILE",
    key: "assertion_file",
    value: "FILE",
    default: NoDefault,
    help: "File holding the JWT assertion for jwt_bearer",
};
/// `--refresh-token-file` / `token.NAME.refresh_token_file`.
pub const REFRESH_TOKEN_FILE: Setting<NoDefault> = Setting {
    flag: "refresh-token-file",
    env: "TOKEN_SIDECAR_REFRESH_TOKEN_FILE",
    key: "refresh_token_file",
    value: "FILE",
    default: NoDefault,
    help: "File holding the bootstrap refresh token for refresh_token",
};
/// `--username` / `token.NAME.username`.
pub const USERNAME: Setting<NoDefault> = Setting {
    flag: "username",
    env: "TOKEN_SIDECAR_USERNAME",
    key: "username",
    value: "U",
    default: NoDefault,
    help: "Username for password",
};
/// `--password-file` / `token.NAME.password_file` (or `password` inline).
pub const PASSWORD_FILE: Setting<NoDefault> = Setting {
    flag: "password-file",
    env: "TOKEN_SIDECAR_PASSWORD_FILE",
    key: "password_file",
    value: "FILE",
    default: NoDefault,
    help: "File holding the password for password",
};
/// `--scope` / `token.NAME.scope`.
pub const SCOPE: Setting<NoDefault> = Setting {
    flag: "scope",
    env: "TOKEN_SIDECAR_SCOPE",
    key: "scope",
    value: "S",
    default: NoDefault,
    help: "Space-separated scopes",
};
/// `--token-param` (repeatable) / `token.NAME.params`.
pub const TOKEN_PARAM: Setting<NoDefault> = Setting {
    flag: "token-param",
    env: "TOKEN_SIDECAR_TOKEN_PARAM",
    key: "params",
    value: "K=V",
    default: NoDefault,
    help: "Extra form field for the token endpoint, K=V (repeatable; comma-separated in the environment)",
};
/// `--token-file` / `token.NAME.token_file`.
pub const TOKEN_FILE: Setting<NoDefault> = Setting {
    flag: "token-file",
    env: "TOKEN_SIDECAR_TOKEN_FILE",
    key: "token_file",
    value: "FILE",
    default: NoDefault,
    help: "For --grant file: the file holding the access token",
};
/// `--static-token` / `token.NAME.static_token`.
pub const STATIC_TOKEN: Setting<NoDefault> = Setting {
    flag: "static-token",
    env: "TOKEN_SIDECAR_STATIC_TOKEN",
    key: "static_token",
    value: "T",
    default: NoDefault,
    help: "For --grant static: a fixed token (for tests)",
};
/// `--refresh-margin` / `token.NAME.refresh_margin`: without it the refresher computes the
/// margin from each token's lifetime (the token module's schedule).
pub const REFRESH_MARGIN: Setting<Described> = Setting {
    flag: "refresh-margin",
    env: "TOKEN_SIDECAR_REFRESH_MARGIN",
    key: "refresh_margin",
    value: "DURATION",
    default: Described("max(60s, 10% of the lifetime)"),
    help: "Refresh this long before expiry, jittered",
};
/// `--min-refresh-interval` / `token.NAME.min_refresh_interval`.
pub const MIN_REFRESH_INTERVAL: Setting<Duration> = Setting {
    flag: "min-refresh-interval",
    env: "TOKEN_SIDECAR_MIN_REFRESH_INTERVAL",
    key: "min_refresh_interval",
    value: "DURATION",
    default: Duration::from_secs(10),
    help: "Lower bound between two 401-triggered refreshes of one token",
};
/// `--state-file` / `token.NAME.state_file`.
pub const STATE_FILE: Setting<NoDefault> = Setting {
    flag: "state-file",
    env: "TOKEN_SIDECAR_STATE_FILE",
    key: "state_file",
    value: "FILE",
    default: NoDefault,
    help: "Persist the token set here (mode 0600) and reuse it at start",
};
/// `--token-request-budget` / `token.NAME.token_request_budget`: RingCentral's Auth
/// group allows 5 requests a minute.
pub const TOKEN_REQUEST_BUDGET: Setting<Rate> = Setting {
    flag: "token-request-budget",
    env: "TOKEN_SIDECAR_TOKEN_REQUEST_BUDGET",
    key: "token_request_budget",
    value: "N/DURATION",
    default: Rate {
        max: 5,
        window: Duration::from_secs(60),
    },
    help: "Token requests a profile may send, N/DURATION, all replicas together when shared",
};
/// `--file-poll-interval` / `token.NAME.file_poll_interval`.
pub const FILE_POLL_INTERVAL: Setting<Duration> = Setting {
    flag: "file-poll-interval",
    env: "TOKEN_SIDECAR_FILE_POLL_INTERVAL",
    key: "file_poll_interval",
    value: "DURATION",
    default: Duration::from_secs(10),
    help: "For --grant file: check the file at least this often besides watching it",
};
/// `--default-token-lifetime` / `token.NAME.default_lifetime`.
pub const DEFAULT_TOKEN_LIFETIME: Setting<Duration> = Setting {
    flag: "default-token-lifetime",
    env: "TOKEN_SIDECAR_DEFAULT_TOKEN_LIFETIME",
    key: "default_lifetime",
    value: "DURATION",
    default: Duration::from_secs(3600),
    help: "Lifetime assumed when a token response has no expires_in",
};
/// `--token-request-timeout` / `token.NAME.request_timeout`.
pub const TOKEN_REQUEST_TIMEOUT: Setting<Duration> = Setting {
    flag: "token-request-timeout",
    env: "TOKEN_SIDECAR_TOKEN_REQUEST_TIMEOUT",
    key: "request_timeout",
    value: "DURATION",
    default: Duration::from_secs(10),
    help: "Upper bound on one call to the token endpoint",
};

/// The shortest poll interval of `--grant file`; shorter ones are raised to it.
pub const MIN_FILE_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Every setting of this table.
pub const ALL: &[&dyn AnySetting] = &[
    &GRANT,
    &TOKEN_URL,
    &CLIENT_ID,
    &CLIENT_SECRET,
    &CLIENT_SECRET_FILE,
    &CLIENT_AUTH,
    &JWT_SIGNING_KEY_FILE,
    &JWT_KEY_ID,
    &JWT_ALG,
    &JWT_AUDIENCE,
    &CLIENT_ASSERTION_FILE,
    &TLS_CLIENT_CERT_FILE,
    &TLS_CLIENT_KEY_FILE,
    &TOKEN_CA_FILE,
    &ISSUER,
    &AUDIENCE,
    &RESOURCE,
    &SUBJECT_TOKEN_FILE,
    &SUBJECT_TOKEN_TYPE,
    &ACTOR_TOKEN_FILE,
    &ACTOR_TOKEN_TYPE,
    &REQUESTED_TOKEN_TYPE,
    &ASSERTION_FILE,
    &REFRESH_TOKEN_FILE,
    &USERNAME,
    &PASSWORD_FILE,
    &SCOPE,
    &TOKEN_PARAM,
    &TOKEN_FILE,
    &STATIC_TOKEN,
    &REFRESH_MARGIN,
    &MIN_REFRESH_INTERVAL,
    &STATE_FILE,
    &TOKEN_REQUEST_BUDGET,
    &FILE_POLL_INTERVAL,
    &DEFAULT_TOKEN_LIFETIME,
    &TOKEN_REQUEST_TIMEOUT,
];
