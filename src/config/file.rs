//! The TOML configuration file: raw structures, `${VAR}` expansion and unknown-key detection.
//!
//! The raw fields mirror the typed ones in [`super`], where each is documented.
#![allow(missing_docs)]

use std::collections::BTreeMap;

use serde::Deserialize;

/// The file as written. Every field is optional here; [`super::load`] checks them. No `Debug`:
/// it holds secrets.
#[derive(Default, Deserialize)]
pub struct RawFile {
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
    #[serde(default)]
    pub token: BTreeMap<String, RawToken>,
    pub shared: Option<RawShared>,
    pub log_format: Option<String>,
    pub shutdown_grace: Option<String>,
    pub threads: Option<u64>,
    pub retry_body_budget: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub max_connections: Option<u64>,
}

#[derive(Default, Deserialize)]
pub struct RawShared {
    pub redis_url: Option<String>,
    pub redis_url_file: Option<String>,
    pub shared_key_file: Option<String>,
    pub key_prefix: Option<String>,
    pub redis_ca_file: Option<String>,
    pub redis_client_cert_file: Option<String>,
    pub redis_client_key_file: Option<String>,
    pub redis_sentinels: Option<OneOrMany>,
    pub redis_sentinel_master: Option<String>,
    pub redis_cluster_nodes: Option<OneOrMany>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRoute {
    pub name: Option<String>,
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub upstream_ca_file: Option<String>,
    pub upstream_tls_client_cert_file: Option<String>,
    pub upstream_tls_client_key_file: Option<String>,
    pub token: Option<String>,
    pub refresh_on_401: Option<bool>,
    pub retry_body_limit: Option<u64>,
    pub header: Option<String>,
    pub header_prefix: Option<String>,
    pub upstream_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub upstream_idle_timeout: Option<String>,
    pub max_upstream_connections: Option<u64>,
    pub header_read_timeout: Option<String>,
    pub max_request_header_bytes: Option<u64>,
    pub max_connections: Option<u64>,
    pub allowed_hosts: Option<Vec<String>>,
    pub allowed_origins: Option<Vec<String>>,
    pub rate_limit_mode: Option<String>,
    pub rate_limit_max_wait: Option<String>,
    pub rate_limit_default_wait: Option<String>,
    #[serde(default)]
    pub limit: Vec<RawLimit>,
}

/// One `[[route.limit]]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawLimit {
    pub group: Option<String>,
    #[serde(rename = "match")]
    pub patterns: Option<OneOrMany>,
    pub rate: Option<String>,
}

#[derive(Default, Deserialize)]
pub struct RawToken {
    pub grant: Option<String>,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    pub client_auth: Option<String>,
    pub jwt_signing_key_file: Option<String>,
    pub jwt_key_id: Option<String>,
    pub jwt_alg: Option<String>,
    pub jwt_audience: Option<String>,
    pub client_assertion_file: Option<String>,
    pub tls_client_cert_file: Option<String>,
    pub tls_client_key_file: Option<String>,
    pub token_ca_file: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<OneOrMany>,
    pub resource: Option<OneOrMany>,
    pub subject_token_file: Option<String>,
    pub subject_token_type: Option<String>,
    pub actor_token_file: Option<String>,
    pub actor_token_type: Option<String>,
    pub requested_token_type: Option<String>,
    pub assertion: Option<String>,
    pub assertion_file: Option<String>,
    pub refresh_token_file: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
    pub scope: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    pub token_file: Option<String>,
    pub static_token: Option<String>,
    pub refresh_margin: Option<String>,
    pub min_refresh_interval: Option<String>,
    pub state_file: Option<String>,
    pub default_lifetime: Option<String>,
    pub request_timeout: Option<String>,
    pub file_poll_interval: Option<String>,
    pub token_request_budget: Option<String>,
}

/// A key that takes one string or a list of them (`audience = "a"`, `audience = ["a", "b"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values, in order.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Parses the text of the config file `name`. `${VAR}` in string values is replaced from
/// `env` (`$${` writes a literal `${`). Problems are appended to `errors`, each naming the file
/// and its key (a syntax error its line and column; an unknown key the known one it is
/// closest to).
pub fn parse(
    name: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) -> Option<RawFile> {
    let mut value: toml::Value = match toml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let message = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    errors.push(format!("{name}:{line}:{column}: {message}"));
                }
                None => errors.push(format!("{name}: {message}")),
            }
            return None;
        }
    };
    expand_value(&mut value, &mut String::new(), env, errors, name);
    let mut unknown = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(unknown_key(&path));
    let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
    let parsed: Result<RawFile, _> = serde_path_to_error::deserialize(de);
    for (key, hint) in unknown {
        match hint {
            Some(known) => errors.push(format!(
                "{name}: unknown key `{key}`; did you mean `{known}`?"
            )),
            None => errors.push(format!("{name}: unknown key `{key}`")),
        }
    }
    match parsed {
        Ok(raw) => Some(raw),
        Err(e) => {
            // The message alone: toml's `Display` appends the key again, on lines of its own
            // and without the array index.
            let message = e.inner().message().trim().replace('\n', " ");
            errors.push(format!("{name}: `{}`: {message}", e.path()));
            None
        }
    }
}

/// An unknown key's path, and the known key of its table it is closest to (a typo).
fn unknown_key(path: &serde_ignored::Path<'_>) -> (String, Option<&'static str>) {
    use serde_ignored::Path;
    let full = key_path(path);
    let (parent, key) = match path {
        Path::Map { parent, key } => (key_path(parent), key.as_str()),
        _ => return (full, None),
    };
    // The table, without array indexes and profile names: `route[0].limit[1]` → `route.limit`.
    let mut table = String::new();
    for (i, part) in parent.split('.').enumerate() {
        let part = part.split('[').next().unwrap_or(part);
        if i == 1 && table == "token" {
            continue;
        }
        if !table.is_empty() {
            table.push('.');
        }
        table.push_str(part);
    }
    let known = known_keys(&table);
    let best = known
        .iter()
        .map(|k| (strsim::jaro_winkler(key, k), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k);
    (full, best)
}

/// The keys of a table of the file (`""` the top level, `route`, `route.limit`, `token`,
/// `admin`, `shared`).
fn known_keys(table: &str) -> Vec<&'static str> {
    use super::settings::{admin, route, shared, token, top, AnySetting};
    let keys = |all: &[&dyn AnySetting]| -> Vec<&'static str> {
        all.iter()
            .map(|s| s.key())
            .filter(|k| !k.is_empty())
            .collect()
    };
    let mut out = match table {
        "" => {
            let mut k = keys(top::ALL);
            k.extend(["admin", "route", "token", "shared"]);
            k
        }
        "admin" => keys(admin::ALL),
        "shared" => {
            let mut k = keys(shared::ALL);
            k.push("key_prefix");
            k
        }
        "route" => {
            let mut k = keys(route::ALL);
            k.extend(["name", "token", "limit"]);
            k
        }
        "route.limit" => vec!["group", "match", "rate"],
        "token" => {
            let mut k = keys(token::ALL);
            k.extend(["assertion", "password"]);
            k
        }
        _ => Vec::new(),
    };
    out.sort_unstable();
    out.dedup();
    out
}

/// Renders an ignored key's path as the other messages name keys: `admin.listen`,
/// `route[0].upstream` (serde_ignored's own `Display` writes `admin.?.listen` for an
/// `Option` table and `route.0.upstream` for an array).
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => {
            let parent = key_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

fn expand_value(
    v: &mut toml::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
    name: &str,
) {
    match v {
        toml::Value::String(s) => match expand(s, env) {
            Ok(e) => *s = e,
            Err(var) => errors.push(format!(
                "{name}: `{path}`: environment variable `{var}` is not set"
            )),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_value(item, path, env, errors, name);
                path.truncate(len);
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                expand_value(item, path, env, errors, name);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Expands `${VAR}`; returns the name of the first unset variable as the error.
pub fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            match tail.find('}') {
                Some(end) => {
                    let name = &tail[..end];
                    match env(name) {
                        Some(val) => out.push_str(&val),
                        None => return Err(name.to_owned()),
                    }
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push_str(after);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "ID").then(|| "abc".to_owned())
    }

    #[test]
    fn expansion() {
        assert_eq!(expand("x-${ID}-y", &env).unwrap(), "x-abc-y");
        assert_eq!(expand("$${ID} $5", &env).unwrap(), "${ID} $5");
        assert_eq!(expand("${NOPE}", &env).unwrap_err(), "NOPE");
    }

    #[test]
    fn unknown_keys_all_reported() {
        let mut errors = vec![];
        let text = "bogus = 1\n[[route]]\nname = \"a\"\nlisten_addr = \"x\"\n[token.t]\ngrnt = \"static\"\n";
        let raw = parse("c.toml", text, &env, &mut errors);
        assert!(raw.is_some());
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("`bogus`")));
        assert!(
            errors.iter().any(|e| e.contains("`route[0].listen_addr`")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("token.t.grnt")),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_keys_in_optional_tables_have_plain_paths() {
        let mut errors = vec![];
        parse(
            "c.toml",
            "[admin]\nlistn = \"x\"\n[shared]\nredis = \"y\"\n",
            &env,
            &mut errors,
        );
        assert!(
            errors.iter().any(|e| e.contains("`admin.listn`")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("`shared.redis`")),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_keys_suggest_the_closest_known_one_and_syntax_errors_their_place() {
        let mut errors = vec![];
        let text = "log_fromat = \"json\"\n[[route]]\nupstrem = \"x\"\n[[route.limit]]\ngruop = \"a\"\n[token.rc]\ntoken_ulr = \"u\"\nzzz = 1\n";
        parse("/etc/ts.toml", text, &env, &mut errors);
        for want in [
            "/etc/ts.toml: unknown key `log_fromat`; did you mean `log_format`?",
            "/etc/ts.toml: unknown key `route[0].upstrem`; did you mean `upstream`?",
            "/etc/ts.toml: unknown key `route[0].limit[0].gruop`; did you mean `group`?",
            "/etc/ts.toml: unknown key `token.rc.token_ulr`; did you mean `token_url`?",
            "/etc/ts.toml: unknown key `token.rc.zzz`",
        ] {
            assert!(errors.iter().any(|e| e == want), "{want}: {errors:?}");
        }
        let mut errors = vec![];
        parse(
            "ts.toml",
            "[admin]\nlisten = \"x\"\nthreads = = 2\n",
            &env,
            &mut errors,
        );
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("ts.toml:3:11: "), "{errors:?}");
    }

    #[test]
    fn type_errors_name_the_key() {
        let mut errors = vec![];
        parse(
            "c.toml",
            "[[route]]\nrefresh_on_401 = \"yes\"\n",
            &env,
            &mut errors,
        );
        assert!(errors[0].contains("route[0].refresh_on_401"), "{errors:?}");
        assert!(!errors[0].contains('\n'), "{errors:?}");
        assert!(!errors[0].contains("route.refresh_on_401"), "{errors:?}");
    }

    #[test]
    fn missing_variable_names_the_key() {
        let mut errors = vec![];
        parse(
            "c.toml",
            "[token.rc]\nclient_id = \"${NOPE}\"\n",
            &env,
            &mut errors,
        );
        assert!(
            errors[0].contains("token.rc.client_id") && errors[0].contains("NOPE"),
            "{errors:?}"
        );
    }
}
