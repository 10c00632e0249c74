//! Where a profile's tokens come from: each grant, what it needs, and the options it leaves
//! unused.

use std::path::PathBuf;

use super::checker::{either, is_absolute_uri, key_in, path_str, pick, secret_str, Checker, Src};
use super::settings::token::*;
use super::settings::{NoDefault, Setting};
use super::tokens::Profile;
use super::{Grant, Warning};
use crate::secret::Secret;

/// The grant asked for, and the name it is reported under.
pub(super) struct GrantSrc {
    name: String,
    key: String,
}

/// The grant asked for (the default when none is).
pub(super) fn grant_src(p: &Profile) -> GrantSrc {
    match pick(&p.f.grant, &p.t.grant, &GRANT, &p.table) {
        Some(g) => GrantSrc {
            name: g.value,
            key: g.key,
        },
        None => GrantSrc {
            name: GRANT.default.to_owned(),
            key: either(&GRANT, &p.table),
        },
    }
}

impl Profile<'_> {
    /// A required value is missing for the grant.
    fn missing(&self, c: &mut Checker, grant: &GrantSrc, what: &str, s: &Setting<NoDefault>) {
        c.err(format!(
            "{}: grant `{}` needs {what} (--{} or `{}`)",
            grant.key,
            grant.name,
            s.flag,
            key_in(&self.table, s.key)
        ));
    }

    /// A secret key written inline in the file only (`assertion`, `password`).
    fn inline(&self, value: &Option<String>, key: &str) -> Option<Src<String>> {
        value.clone().map(|v| Src {
            value: v,
            key: format!("`{}`", key_in(&self.table, key)),
        })
    }
}

/// The grant and what it needs; `None` (with the problem reported) when it cannot be made.
pub(super) fn grant(
    p: &Profile,
    g: &GrantSrc,
    username: Option<&Src<String>>,
    c: &mut Checker,
) -> Option<Grant> {
    match g.name.as_str() {
        "client_credentials" => Some(Grant::ClientCredentials),
        "jwt_bearer" => jwt_bearer(p, g, c),
        "token_exchange" => token_exchange(p, g, c),
        "refresh_token" => refresh_token(p, g, c),
        "password" => password(p, g, username, c),
        "file" => file(p, g, c),
        "static" => static_token(p, g, c),
        other => {
            c.err(format!(
                "{}: `{other}` is not a grant; use client_credentials, jwt_bearer, token_exchange, refresh_token, password, file or static",
                g.key
            ));
            None
        }
    }
}

fn jwt_bearer(p: &Profile, g: &GrantSrc, c: &mut Checker) -> Option<Grant> {
    let file = pick(
        &path_str(&p.f.assertion_file),
        &p.t.assertion_file,
        &ASSERTION_FILE,
        &p.table,
    );
    match c.secret(p.inline(&p.t.assertion, "assertion"), file, "assertion") {
        Some(assertion) => Some(Grant::JwtBearer { assertion }),
        None => {
            p.missing(c, g, "a JWT assertion", &ASSERTION_FILE);
            None
        }
    }
}

fn token_exchange(p: &Profile, g: &GrantSrc, c: &mut Checker) -> Option<Grant> {
    let table = p.table.as_str();
    let subject = pick(
        &path_str(&p.f.subject_token_file),
        &p.t.subject_token_file,
        &SUBJECT_TOKEN_FILE,
        table,
    );
    let actor = pick(
        &path_str(&p.f.actor_token_file),
        &p.t.actor_token_file,
        &ACTOR_TOKEN_FILE,
        table,
    );
    let mut token_type = |flag: &Option<String>, file: &Option<String>, s: &Setting<&str>| {
        let given = pick(flag, file, s, table);
        match given {
            Some(t) if !is_absolute_uri(&t.value) => {
                c.err(format!(
                    "{}: `{}` is not a token type URI (e.g. {})",
                    t.key, t.value, JWT_TOKEN_TYPE
                ));
                s.default.to_owned()
            }
            Some(t) => t.value,
            None => s.default.to_owned(),
        }
    };
    let subject_token_type = token_type(
        &p.f.subject_token_type,
        &p.t.subject_token_type,
        &SUBJECT_TOKEN_TYPE,
    );
    let actor_token_type = token_type(
        &p.f.actor_token_type,
        &p.t.actor_token_type,
        &ACTOR_TOKEN_TYPE,
    );
    let requested_token_type = pick(
        &p.f.requested_token_type,
        &p.t.requested_token_type,
        &REQUESTED_TOKEN_TYPE,
        table,
    );
    if let Some(t) = requested_token_type
        .as_ref()
        .filter(|t| !is_absolute_uri(&t.value))
    {
        c.err(format!(
            "{}: `{}` is not a token type URI (e.g. urn:ietf:params:oauth:token-type:access_token)",
            t.key, t.value
        ));
    }
    if let Some(a) = &actor {
        p.check_jwt_file(a, c);
    }
    let Some(subject) = subject else {
        p.missing(c, g, "a subject token", &SUBJECT_TOKEN_FILE);
        return None;
    };
    p.check_jwt_file(&subject, c);
    Some(Grant::TokenExchange {
        subject_token_file: PathBuf::from(subject.value),
        subject_token_type,
        actor_token_file: actor.map(|a| PathBuf::from(a.value)),
        actor_token_type,
        requested_token_type: requested_token_type.map(|t| t.value),
    })
}

impl Profile<'_> {
    /// A file read before every request (a client assertion, a subject or actor token): it
    /// must be readable now, and a JWT in it that has expired is a warning.
    pub(super) fn check_jwt_file(&self, file: &Src<String>, c: &mut Checker) {
        let path = PathBuf::from(&file.value);
        match crate::secret::read_secret_file(&path) {
            Err(e) => c.err(format!("{}: {e}", file.key)),
            Ok(jwt) => {
                let exp = crate::token::oauth::assertion::unverified_exp(jwt.expose());
                let now = crate::token::unix_seconds(std::time::SystemTime::now());
                if let Some(exp) = exp.filter(|e| *e <= now) {
                    c.warn(Warning::credential_expired(
                        self.name,
                        file.key.clone(),
                        super::warning::unix_to_rfc3339(exp),
                    ));
                }
            }
        }
    }
}

fn refresh_token(p: &Profile, g: &GrantSrc, c: &mut Checker) -> Option<Grant> {
    let file = pick(
        &path_str(&p.f.refresh_token_file),
        &p.t.refresh_token_file,
        &REFRESH_TOKEN_FILE,
        &p.table,
    );
    match c.secret(None, file, "refresh token") {
        Some(refresh_token) => Some(Grant::RefreshToken { refresh_token }),
        None => {
            p.missing(c, g, "a refresh token", &REFRESH_TOKEN_FILE);
            None
        }
    }
}

fn password(
    p: &Profile,
    g: &GrantSrc,
    username: Option<&Src<String>>,
    c: &mut Checker,
) -> Option<Grant> {
    let file = pick(
        &path_str(&p.f.password_file),
        &p.t.password_file,
        &PASSWORD_FILE,
        &p.table,
    );
    let password = c.secret(p.inline(&p.t.password, "password"), file, "password");
    if username.is_none() {
        p.missing(c, g, "a username", &USERNAME);
    }
    if password.is_none() {
        p.missing(c, g, "a password", &PASSWORD_FILE);
    }
    Some(Grant::Password {
        username: username?.value.clone(),
        password: password?,
    })
}

fn file(p: &Profile, g: &GrantSrc, c: &mut Checker) -> Option<Grant> {
    let path = pick(
        &path_str(&p.f.token_file),
        &p.t.token_file,
        &TOKEN_FILE,
        &p.table,
    );
    let poll = c.duration(
        pick(
            &p.f.file_poll_interval,
            &p.t.file_poll_interval,
            &FILE_POLL_INTERVAL,
            &p.table,
        ),
        FILE_POLL_INTERVAL.default,
    );
    c.more_than_zero(poll, either(&FILE_POLL_INTERVAL, &p.table));
    match path {
        Some(path) => Some(Grant::File {
            path: PathBuf::from(path.value),
            poll_interval: poll.max(MIN_FILE_POLL_INTERVAL),
        }),
        None => {
            p.missing(c, g, "a token file", &TOKEN_FILE);
            None
        }
    }
}

fn static_token(p: &Profile, g: &GrantSrc, c: &mut Checker) -> Option<Grant> {
    let token = pick(
        &secret_str(&p.f.static_token),
        &p.t.static_token,
        &STATIC_TOKEN,
        &p.table,
    );
    match token {
        Some(s) if !s.value.is_empty() => {
            if http::HeaderValue::from_str(&s.value).is_err() {
                c.err(format!(
                    "{}: the token holds characters not allowed in a header",
                    s.key
                ));
            }
            Some(Grant::Static {
                token: Secret::new(s.value),
            })
        }
        _ => {
            p.missing(c, g, "a token", &STATIC_TOKEN);
            None
        }
    }
}

/// Each credential option given to a profile whose grant does not use it (`--token-file` with
/// `--grant client_credentials`, ...): it would otherwise be ignored without a word.
pub(super) fn unused_options(p: &Profile, grant: &Grant) -> Vec<Warning> {
    let (f, t, table) = (p.f, p.t, p.table.as_str());
    let oauth = grant.is_oauth();
    let exchange = matches!(grant, Grant::TokenExchange { .. });
    let options: Vec<(String, bool, bool)> = vec![
        (
            either(&TOKEN_URL, table),
            f.token_url.is_some() || t.token_url.is_some(),
            oauth,
        ),
        (
            either(&ISSUER, table),
            f.issuer.is_some() || t.issuer.is_some(),
            oauth,
        ),
        (
            either(&CLIENT_ID, table),
            f.client_id.is_some() || t.client_id.is_some(),
            oauth,
        ),
        (
            either(&CLIENT_SECRET_FILE, table),
            f.client_secret.is_some()
                || f.client_secret_file.is_some()
                || t.client_secret.is_some()
                || t.client_secret_file.is_some(),
            oauth,
        ),
        (
            either(&ASSERTION_FILE, table),
            f.assertion_file.is_some() || t.assertion.is_some() || t.assertion_file.is_some(),
            matches!(grant, Grant::JwtBearer { .. }),
        ),
        (
            either(&SUBJECT_TOKEN_FILE, table),
            f.subject_token_file.is_some() || t.subject_token_file.is_some(),
            exchange,
        ),
        (
            either(&SUBJECT_TOKEN_TYPE, table),
            f.subject_token_type.is_some() || t.subject_token_type.is_some(),
            exchange,
        ),
        (
            either(&ACTOR_TOKEN_FILE, table),
            f.actor_token_file.is_some() || t.actor_token_file.is_some(),
            exchange,
        ),
        (
            either(&ACTOR_TOKEN_TYPE, table),
            f.actor_token_type.is_some() || t.actor_token_type.is_some(),
            exchange,
        ),
        (
            either(&REQUESTED_TOKEN_TYPE, table),
            f.requested_token_type.is_some() || t.requested_token_type.is_some(),
            exchange,
        ),
        (
            either(&REFRESH_TOKEN_FILE, table),
            f.refresh_token_file.is_some() || t.refresh_token_file.is_some(),
            matches!(grant, Grant::RefreshToken { .. }),
        ),
        (
            either(&USERNAME, table),
            f.username.is_some() || t.username.is_some(),
            matches!(grant, Grant::Password { .. }),
        ),
        (
            either(&PASSWORD_FILE, table),
            f.password_file.is_some() || t.password.is_some() || t.password_file.is_some(),
            matches!(grant, Grant::Password { .. }),
        ),
        (
            either(&TOKEN_FILE, table),
            f.token_file.is_some() || t.token_file.is_some(),
            matches!(grant, Grant::File { .. }),
        ),
        (
            either(&STATIC_TOKEN, table),
            f.static_token.is_some() || t.static_token.is_some(),
            matches!(grant, Grant::Static { .. }),
        ),
        (
            either(&STATE_FILE, table),
            f.state_file.is_some() || t.state_file.is_some(),
            oauth,
        ),
        (
            either(&CLIENT_AUTH, table),
            f.client_auth.is_some() || t.client_auth.is_some(),
            oauth,
        ),
        (
            either(&TLS_CLIENT_CERT_FILE, table),
            f.tls_client_cert_file.is_some() || t.tls_client_cert_file.is_some(),
            oauth,
        ),
        (
            either(&TOKEN_CA_FILE, table),
            f.token_ca_file.is_some() || t.token_ca_file.is_some(),
            oauth,
        ),
        (
            either(&AUDIENCE, table),
            !f.audience.is_empty() || t.audience.is_some(),
            oauth,
        ),
        (
            either(&RESOURCE, table),
            !f.resource.is_empty() || t.resource.is_some(),
            oauth,
        ),
    ];
    options
        .into_iter()
        .filter(|(_, given, used)| *given && !*used)
        .map(|(option, _, _)| Warning::unused_option(p.name, option, grant.kind()))
        .collect()
}
