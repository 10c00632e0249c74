//! Where a profile's tokens come from: each grant, what it needs, and the options it leaves
//! unused.

use std::path::PathBuf;

use super::checker::{either, key_in, path_str, pick, secret_str, Checker, Src};
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
        "refresh_token" => refresh_token(p, g, c),
        "password" => password(p, g, username, c),
        "file" => file(p, g, c),
        "static" => static_token(p, g, c),
        other => {
            c.err(format!(
                "{}: `{other}` is not a grant; use client_credentials, jwt_bearer, refresh_token, password, file or static",
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
    let (f, t) = (p.f, p.t);
    let oauth = grant.is_oauth();
    let options: [(&Setting<NoDefault>, bool, bool); 10] = [
        (
            &TOKEN_URL,
            f.token_url.is_some() || t.token_url.is_some(),
            oauth,
        ),
        (
            &CLIENT_ID,
            f.client_id.is_some() || t.client_id.is_some(),
            oauth,
        ),
        (
            &CLIENT_SECRET_FILE,
            f.client_secret.is_some()
                || f.client_secret_file.is_some()
                || t.client_secret.is_some()
                || t.client_secret_file.is_some(),
            oauth,
        ),
        (
            &ASSERTION_FILE,
            f.assertion_file.is_some() || t.assertion.is_some() || t.assertion_file.is_some(),
            matches!(grant, Grant::JwtBearer { .. }),
        ),
        (
            &REFRESH_TOKEN_FILE,
            f.refresh_token_file.is_some() || t.refresh_token_file.is_some(),
            matches!(grant, Grant::RefreshToken { .. }),
        ),
        (
            &USERNAME,
            f.username.is_some() || t.username.is_some(),
            matches!(grant, Grant::Password { .. }),
        ),
        (
            &PASSWORD_FILE,
            f.password_file.is_some() || t.password.is_some() || t.password_file.is_some(),
            matches!(grant, Grant::Password { .. }),
        ),
        (
            &TOKEN_FILE,
            f.token_file.is_some() || t.token_file.is_some(),
            matches!(grant, Grant::File { .. }),
        ),
        (
            &STATIC_TOKEN,
            f.static_token.is_some() || t.static_token.is_some(),
            matches!(grant, Grant::Static { .. }),
        ),
        (
            &STATE_FILE,
            f.state_file.is_some() || t.state_file.is_some(),
            oauth,
        ),
    ];
    options
        .into_iter()
        .filter(|(_, given, used)| *given && !*used)
        .map(|(s, _, _)| Warning::unused_option(p.name, either(s, &p.table), grant.kind()))
        .collect()
}
