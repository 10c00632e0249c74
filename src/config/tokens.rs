//! `[token.NAME]`: token profiles, where each one's tokens come from and how they are asked
//! for. The token flags set the only profile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::checker::{either, is_absolute_uri, key_in, list, path_str, pick, secret_str};
use super::checker::{Checker, Src};
use super::file::RawToken;
use super::grants::{grant, grant_src, unused_options};
use super::settings::token::*;
use super::settings::{NoDefault, Setting};
use super::{is_loopback_host, ClientAuth, Flags, Grant, JwtSettings, TokenConfig, Warning};
use super::{ClientCertFiles, CLIENT_AUTH_METHODS};
use crate::proxy::upstream::Upstream;
use crate::ratelimit::Rate;
use crate::secret::SecretSource;
use crate::token::oauth::assertion::{self, SigningKey};

/// Form fields the sidecar sets itself: `params` and `--token-param` may not.
const RESERVED_PARAMS: [&str; 15] = [
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "assertion",
    "refresh_token",
    "username",
    "password",
    "scope",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
];

/// The token flags given, in the order they are reported when they cannot apply.
pub(super) fn flags_given(flags: &Flags) -> Vec<&'static str> {
    [
        (
            TOKEN_REQUEST_BUDGET.flag,
            flags.token_request_budget.is_some(),
        ),
        (GRANT.flag, flags.grant.is_some()),
        (TOKEN_URL.flag, flags.token_url.is_some()),
        (CLIENT_ID.flag, flags.client_id.is_some()),
        (CLIENT_SECRET.flag, flags.client_secret.is_some()),
        (CLIENT_SECRET_FILE.flag, flags.client_secret_file.is_some()),
        (CLIENT_AUTH.flag, flags.client_auth.is_some()),
        (
            JWT_SIGNING_KEY_FILE.flag,
            flags.jwt_signing_key_file.is_some(),
        ),
        (JWT_KEY_ID.flag, flags.jwt_key_id.is_some()),
        (JWT_ALG.flag, flags.jwt_alg.is_some()),
        (JWT_AUDIENCE.flag, flags.jwt_audience.is_some()),
        (
            CLIENT_ASSERTION_FILE.flag,
            flags.client_assertion_file.is_some(),
        ),
        (
            TLS_CLIENT_CERT_FILE.flag,
            flags.tls_client_cert_file.is_some(),
        ),
        (
            TLS_CLIENT_KEY_FILE.flag,
            flags.tls_client_key_file.is_some(),
        ),
        (TOKEN_CA_FILE.flag, flags.token_ca_file.is_some()),
        (ISSUER.flag, flags.issuer.is_some()),
        (AUDIENCE.flag, !flags.audience.is_empty()),
        (RESOURCE.flag, !flags.resource.is_empty()),
        (SUBJECT_TOKEN_FILE.flag, flags.subject_token_file.is_some()),
        (SUBJECT_TOKEN_TYPE.flag, flags.subject_token_type.is_some()),
        (ACTOR_TOKEN_FILE.flag, flags.actor_token_file.is_some()),
        (ACTOR_TOKEN_TYPE.flag, flags.actor_token_type.is_some()),
        (
            REQUESTED_TOKEN_TYPE.flag,
            flags.requested_token_type.is_some(),
        ),
        (ASSERTION_FILE.flag, flags.assertion_file.is_some()),
        (REFRESH_TOKEN_FILE.flag, flags.refresh_token_file.is_some()),
        (USERNAME.flag, flags.username.is_some()),
        (PASSWORD_FILE.flag, flags.password_file.is_some()),
        (SCOPE.flag, flags.scope.is_some()),
        (TOKEN_PARAM.flag, !flags.token_param.is_empty()),
        (TOKEN_FILE.flag, flags.token_file.is_some()),
        (STATIC_TOKEN.flag, flags.static_token.is_some()),
        (STATE_FILE.flag, flags.state_file.is_some()),
        (REFRESH_MARGIN.flag, flags.refresh_margin.is_some()),
        (
            MIN_REFRESH_INTERVAL.flag,
            flags.min_refresh_interval.is_some(),
        ),
        (FILE_POLL_INTERVAL.flag, flags.file_poll_interval.is_some()),
        (
            DEFAULT_TOKEN_LIFETIME.flag,
            flags.default_token_lifetime.is_some(),
        ),
        (
            TOKEN_REQUEST_TIMEOUT.flag,
            flags.token_request_timeout.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect()
}

/// Checks every profile; `flags_apply` when the token flags set the only profile.
pub(super) fn profiles(
    flags: &Flags,
    raw: &BTreeMap<String, RawToken>,
    flags_apply: bool,
    c: &mut Checker,
) -> BTreeMap<String, TokenConfig> {
    let none = Flags::default();
    let f = if flags_apply { flags } else { &none };
    let mut tokens = BTreeMap::new();
    for (name, t) in raw {
        let p = Profile {
            name,
            f,
            t,
            table: format!("token.{name}"),
        };
        if let Some(tc) = profile(&p, c) {
            tokens.insert(name.clone(), tc);
        }
    }
    check_state_files_distinct(&tokens, c);
    tokens
}

/// Where one profile's values come from: its flags (none unless they apply), its table, and
/// the table's name in messages (`token.NAME`).
pub(super) struct Profile<'a> {
    pub(super) name: &'a str,
    pub(super) f: &'a Flags,
    pub(super) t: &'a RawToken,
    pub(super) table: String,
}

impl Profile<'_> {
    /// A duration setting of the profile.
    fn duration(
        &self,
        flag: &Option<String>,
        file: &Option<String>,
        s: &Setting<Duration>,
        c: &mut Checker,
    ) -> Duration {
        c.duration(pick(flag, file, s, &self.table), s.default)
    }
}

fn profile(p: &Profile, c: &mut Checker) -> Option<TokenConfig> {
    check_name(p.name, c);
    let grant_src = grant_src(p);
    let client = client(p, c);
    let username = pick(&p.f.username, &p.t.username, &USERNAME, &p.table);
    let grant = grant(p, &grant_src, username.as_ref(), c);
    check_sent_values_not_empty(grant.as_ref(), &client.id, &username, c);
    if let Some(g) = &grant {
        for w in unused_options(p, g) {
            c.warn(w);
        }
        if g.is_oauth() {
            check_oauth(p, g, &client, c);
        }
    }
    let params = params(p, c);
    let (audience, resource) = audiences(p, &params, c);
    let timing = timing(p, c);
    let state_file = state_file(p, c);
    let request_budget = request_budget(p, c);
    Some(TokenConfig {
        name: p.name.to_owned(),
        grant: grant?,
        token_url: client.token_url.map(|u| u.value.trim().to_owned()),
        client_id: client.id.map(|u| u.value),
        client_secret: client.secret,
        client_auth: client.auth,
        jwt: client.jwt,
        client_assertion_file: client.assertion_file,
        client_cert: client.cert,
        token_ca_file: client.ca_file,
        issuer: client.issuer.map(|i| i.value),
        audience,
        resource,
        scope: pick(&p.f.scope, &p.t.scope, &SCOPE, &p.table).map(|s| s.value),
        params,
        refresh_margin: timing.refresh_margin,
        min_refresh_interval: timing.min_refresh_interval,
        state_file,
        default_lifetime: timing.default_lifetime,
        request_timeout: timing.request_timeout,
        request_budget,
    })
}

/// The client's endpoint and credentials, as given: [`check_oauth`] checks them against the
/// grant.
struct Client {
    token_url: Option<Src<String>>,
    issuer: Option<Src<String>>,
    id: Option<Src<String>>,
    secret: Option<SecretSource>,
    auth: ClientAuth,
    jwt: JwtSettings,
    assertion_file: Option<PathBuf>,
    cert: Option<ClientCertFiles>,
    ca_file: Option<PathBuf>,
}

fn client(p: &Profile, c: &mut Checker) -> Client {
    let (f, t, table) = (p.f, p.t, p.table.as_str());
    let ca_file = pick(
        &path_str(&f.token_ca_file),
        &t.token_ca_file,
        &TOKEN_CA_FILE,
        table,
    );
    if let Some(ca) = &ca_file {
        if let Err(e) = crate::tls::root_store(Some(Path::new(&ca.value))) {
            c.err(format!("{}: {e}", ca.key));
        }
    }
    let name = p.name;
    Client {
        token_url: pick(&f.token_url, &t.token_url, &TOKEN_URL, table),
        issuer: pick(&f.issuer, &t.issuer, &ISSUER, table),
        id: pick(&f.client_id, &t.client_id, &CLIENT_ID, table),
        secret: c.secret(
            pick(
                &secret_str(&f.client_secret),
                &t.client_secret,
                &CLIENT_SECRET,
                table,
            ),
            pick(
                &path_str(&f.client_secret_file),
                &t.client_secret_file,
                &CLIENT_SECRET_FILE,
                table,
            ),
            "client secret",
        ),
        auth: c.choice(
            pick(&f.client_auth, &t.client_auth, &CLIENT_AUTH, table),
            CLIENT_AUTH.default,
            &CLIENT_AUTH_METHODS,
            ClientAuth::name,
        ),
        jwt: JwtSettings {
            signing_key_file: pick(
                &path_str(&f.jwt_signing_key_file),
                &t.jwt_signing_key_file,
                &JWT_SIGNING_KEY_FILE,
                table,
            )
            .map(|s| PathBuf::from(s.value)),
            key_id: pick(&f.jwt_key_id, &t.jwt_key_id, &JWT_KEY_ID, table).map(|s| s.value),
            alg: pick(&f.jwt_alg, &t.jwt_alg, &JWT_ALG, table).map(|s| s.value),
            audience: pick(&f.jwt_audience, &t.jwt_audience, &JWT_AUDIENCE, table).map(|s| s.value),
        },
        assertion_file: pick(
            &path_str(&f.client_assertion_file),
            &t.client_assertion_file,
            &CLIENT_ASSERTION_FILE,
            table,
        )
        .map(|s| PathBuf::from(s.value)),
        cert: c.client_cert(
            pick(
                &path_str(&f.tls_client_cert_file),
                &t.tls_client_cert_file,
                &TLS_CLIENT_CERT_FILE,
                table,
            ),
            pick(
                &path_str(&f.tls_client_key_file),
                &t.tls_client_key_file,
                &TLS_CLIENT_KEY_FILE,
                table,
            ),
            |option, expires| Warning::token_cert_expires_soon(name, option, expires),
        ),
        ca_file: ca_file.map(|s| PathBuf::from(s.value)),
    }
}

/// What the client authentication needs, and the options it leaves unused.
fn check_client_auth(p: &Profile, v: &Client, c: &mut Checker) {
    let table = p.table.as_str();
    let auth = v.auth;
    let needs = |c: &mut Checker, s: &Setting<NoDefault>, what: &str| {
        c.err(format!(
            "{}: client_auth `{}` needs {what}",
            either(s, table),
            auth.name()
        ));
    };
    // A public client (`none`) sends its id when it has one; a token exchange with a security
    // token service (Google's STS) has none.
    let id_required = matches!(
        auth,
        ClientAuth::PrivateKeyJwt | ClientAuth::ClientSecretJwt | ClientAuth::Tls
    );
    if id_required && v.id.is_none() {
        needs(c, &CLIENT_ID, "a client id");
    }
    let alg = match &v.jwt.alg {
        Some(name) => match assertion::parse_alg(name) {
            Some(a) => Some(a),
            None => {
                c.err(format!(
                    "{}: `{name}` is not a JWS algorithm; use one of {}",
                    either(&JWT_ALG, table),
                    assertion::ALGORITHMS.map(|(n, _)| n).join(", ")
                ));
                None
            }
        },
        None => None,
    };
    match auth {
        ClientAuth::PrivateKeyJwt => match &v.jwt.signing_key_file {
            None => needs(c, &JWT_SIGNING_KEY_FILE, "a signing key file"),
            Some(path) => {
                if let Err(e) = SigningKey::load(path, alg) {
                    c.err(format!("{}: {e}", either(&JWT_SIGNING_KEY_FILE, table)));
                }
            }
        },
        ClientAuth::ClientSecretJwt => match &v.secret {
            None => needs(c, &CLIENT_SECRET_FILE, "a client secret"),
            Some(secret) => {
                if let Ok(secret) = secret.load() {
                    if let Err(e) = SigningKey::from_secret(&secret, alg) {
                        c.err(format!("{}: {e}", either(&JWT_ALG, table)));
                    }
                }
            }
        },
        ClientAuth::AssertionFile => match &v.assertion_file {
            None => needs(c, &CLIENT_ASSERTION_FILE, "a client assertion file"),
            Some(path) => p.check_jwt_file(
                &Src {
                    value: path.display().to_string(),
                    key: either(&CLIENT_ASSERTION_FILE, table),
                },
                c,
            ),
        },
        ClientAuth::Tls => {
            if v.cert.is_none() {
                needs(c, &TLS_CLIENT_CERT_FILE, "a client certificate and key");
            }
        }
        ClientAuth::Basic | ClientAuth::Body | ClientAuth::None => {}
    }
    let signs = matches!(
        auth,
        ClientAuth::PrivateKeyJwt | ClientAuth::ClientSecretJwt
    );
    let (f, t) = (p.f, p.t);
    let unused = [
        (
            either(&JWT_SIGNING_KEY_FILE, table),
            v.jwt.signing_key_file.is_some(),
            auth == ClientAuth::PrivateKeyJwt,
        ),
        (either(&JWT_KEY_ID, table), v.jwt.key_id.is_some(), signs),
        (either(&JWT_ALG, table), v.jwt.alg.is_some(), signs),
        (
            either(&JWT_AUDIENCE, table),
            v.jwt.audience.is_some(),
            signs,
        ),
        (
            either(&CLIENT_ASSERTION_FILE, table),
            v.assertion_file.is_some(),
            auth == ClientAuth::AssertionFile,
        ),
        (
            either(&CLIENT_SECRET_FILE, table),
            f.client_secret.is_some()
                || f.client_secret_file.is_some()
                || t.client_secret.is_some()
                || t.client_secret_file.is_some(),
            auth.uses_secret(),
        ),
    ];
    for (option, given, used) in unused {
        if given && !used {
            c.warn(Warning::unused_by_client_auth(p.name, option, auth.name()));
        }
    }
}

/// When the profile refreshes and how long it waits.
struct Timing {
    refresh_margin: Option<Duration>,
    min_refresh_interval: Duration,
    default_lifetime: Duration,
    request_timeout: Duration,
}

fn timing(p: &Profile, c: &mut Checker) -> Timing {
    let (f, t) = (p.f, p.t);
    let refresh_margin = pick(
        &f.refresh_margin,
        &t.refresh_margin,
        &REFRESH_MARGIN,
        &p.table,
    )
    .and_then(|s| c.parse_duration(s));
    let min_refresh_interval = p.duration(
        &f.min_refresh_interval,
        &t.min_refresh_interval,
        &MIN_REFRESH_INTERVAL,
        c,
    );
    let default_lifetime = p.duration(
        &f.default_token_lifetime,
        &t.default_lifetime,
        &DEFAULT_TOKEN_LIFETIME,
        c,
    );
    c.more_than_zero(default_lifetime, either(&DEFAULT_TOKEN_LIFETIME, &p.table));
    Timing {
        refresh_margin,
        min_refresh_interval,
        default_lifetime,
        request_timeout: p.duration(
            &f.token_request_timeout,
            &t.request_timeout,
            &TOKEN_REQUEST_TIMEOUT,
            c,
        ),
    }
}

fn check_name(name: &str, c: &mut Checker) {
    let allowed = |ch: char| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_';
    if name.is_empty() || !name.chars().all(allowed) {
        c.err(format!(
            "`token.{name}`: a profile name may hold only letters, digits, '-' and '_'"
        ));
    }
}

/// An empty value (often a `${VAR}` whose variable is set but empty) where the grant sends it.
fn check_sent_values_not_empty(
    grant: Option<&Grant>,
    client_id: &Option<Src<String>>,
    username: &Option<Src<String>>,
    c: &mut Checker,
) {
    let uses_username = matches!(grant, Some(Grant::Password { .. }));
    let uses_client_id = grant.is_some_and(Grant::is_oauth);
    for (src, what, used) in [
        (client_id, "client id", uses_client_id),
        (username, "username", uses_username),
    ] {
        if let Some(v) = src.as_ref().filter(|v| used && v.value.trim().is_empty()) {
            c.err(format!("{}: the {what} is empty", v.key));
        }
    }
}

/// What an OAuth2 grant needs besides the grant itself.
fn check_oauth(p: &Profile, g: &Grant, v: &Client, c: &mut Checker) {
    match (&v.token_url, &v.issuer) {
        (None, None) => c.err(format!(
            "{}: required for grant `{}` (or --{} to discover it)",
            either(&TOKEN_URL, &p.table),
            g.kind(),
            ISSUER.flag
        )),
        (Some(u), _) => check_token_url(u, c),
        (None, Some(_)) => {}
    }
    if let Some(i) = &v.issuer {
        check_issuer(i, c);
    }
    check_client_auth(p, v, c);
    if matches!(g, Grant::ClientCredentials) {
        if v.id.is_none() && matches!(v.auth, ClientAuth::Basic | ClientAuth::Body) {
            c.err(format!(
                "{}: required for grant `client_credentials`",
                either(&CLIENT_ID, &p.table)
            ));
        }
        if v.secret.is_none() && matches!(v.auth, ClientAuth::Basic | ClientAuth::Body) {
            c.err(format!(
                "{}: required for grant `client_credentials`",
                either(&CLIENT_SECRET_FILE, &p.table)
            ));
        }
    }
    if v.auth == ClientAuth::Basic && v.secret.is_some() && v.id.is_none() {
        c.err(format!(
            "{}: client_auth `basic` needs a client id with the secret",
            either(&CLIENT_ID, &p.table)
        ));
    }
}

/// An issuer is an https URL (http on loopback) without query or fragment (RFC 8414 2).
fn check_issuer(issuer: &Src<String>, c: &mut Checker) {
    let value = issuer.value.trim();
    if value.contains(['?', '#']) {
        c.err(format!(
            "{}: `{}`: an issuer has no query or fragment",
            issuer.key,
            super::checker::printable_url(value)
        ));
        return;
    }
    check_token_url(issuer, c);
}

fn check_token_url(url: &Src<String>, c: &mut Checker) {
    match Upstream::parse(&url.value) {
        Ok(u) => {
            if !u.is_https() && !is_loopback_host(u.authority().host()) {
                c.warn(Warning::plain_http_token_url(&url.value));
            }
        }
        Err(e) => c.err(format!(
            "{}: `{}`: {e}",
            url.key,
            super::checker::printable_url(&url.value)
        )),
    }
}

/// The file's `params`, then each `--token-param` (replacing a field of the same name).
fn params(p: &Profile, c: &mut Checker) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> =
        p.t.params
            .iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect();
    for kv in &p.f.token_param {
        match kv.split_once('=') {
            Some((key, v)) if !key.is_empty() => {
                params.retain(|(k, _)| k != key);
                params.push((key.to_owned(), v.to_owned()));
            }
            _ => c.err(format!("--{}: `{kv}` is not KEY=VALUE", TOKEN_PARAM.flag)),
        }
    }
    for (key, _) in &params {
        if RESERVED_PARAMS.contains(&key.as_str()) {
            c.err(format!(
                "`{}` / --{}: `{key}` is set by the sidecar; use its own option",
                key_in(&p.table, TOKEN_PARAM.key),
                TOKEN_PARAM.flag
            ));
        }
    }
    params
}

/// `audience` and `resource` values: given as options, or as `params` (one way only).
fn audiences(
    p: &Profile,
    params: &[(String, String)],
    c: &mut Checker,
) -> (Vec<String>, Vec<String>) {
    let table = p.table.as_str();
    let mut out = [Vec::new(), Vec::new()];
    let each = [
        (&p.f.audience, &p.t.audience, &AUDIENCE, "audience"),
        (&p.f.resource, &p.t.resource, &RESOURCE, "resource"),
    ];
    for (slot, (flag, file, s, field)) in out.iter_mut().zip(each) {
        let file = file.as_ref().map(super::file::OneOrMany::to_vec);
        let values = list(flag, &file, s, table);
        if !values.is_empty() && params.iter().any(|(k, _)| k == field) {
            c.err(format!(
                "{}: `{field}` is also given as a token param; give it one way",
                either(s, table)
            ));
        }
        for v in values {
            let value = v.value.trim();
            if value.is_empty() {
                c.err(format!("{}: an empty {field}", v.key));
            } else if field == "resource" && (!is_absolute_uri(value) || value.contains('#')) {
                c.err(format!(
                    "{}: `{value}` is not an absolute URI without a fragment (RFC 8707)",
                    v.key
                ));
            } else {
                slot.push(value.to_owned());
            }
        }
    }
    let [audience, resource] = out;
    (audience, resource)
}

/// The state file, in a directory other users cannot write.
fn state_file(p: &Profile, c: &mut Checker) -> Option<PathBuf> {
    let src = pick(
        &path_str(&p.f.state_file),
        &p.t.state_file,
        &STATE_FILE,
        &p.table,
    )?;
    if let Err(e) = crate::token::state::check_location(Path::new(&src.value)) {
        c.err(format!("{}: {e}", src.key));
    }
    Some(PathBuf::from(src.value))
}

fn request_budget(p: &Profile, c: &mut Checker) -> Rate {
    let s = &TOKEN_REQUEST_BUDGET;
    match pick(
        &p.f.token_request_budget,
        &p.t.token_request_budget,
        s,
        &p.table,
    ) {
        None => s.default,
        Some(src) => src.value.parse::<Rate>().unwrap_or_else(|e| {
            c.err(format!("{}: `{}`: {e}", src.key, src.value));
            s.default
        }),
    }
}

/// One state file per profile: two profiles writing the same file would take each other's
/// tokens (and rotated refresh tokens) on every restart and every refresh.
fn check_state_files_distinct(tokens: &BTreeMap<String, TokenConfig>, c: &mut Checker) {
    let mut state_files: BTreeMap<&PathBuf, &str> = BTreeMap::new();
    for t in tokens.values() {
        if let Some(path) = &t.state_file {
            if let Some(other) = state_files.insert(path, &t.name) {
                c.err(format!(
                    "`{}`: {} is also the state file of token `{other}`; give each profile its own",
                    key_in(&format!("token.{}", t.name), STATE_FILE.key),
                    path.display()
                ));
            }
        }
    }
}
