//! `[shared]`: the Redis store replicas share a token set through, and the key sealing its
//! entries.

use std::path::Path;
use std::sync::Arc;

use super::checker::{path_str, pick, secret_str, Checker, Src};
use super::file::RawShared;
use super::settings::shared::{self as s, DEFAULT_KEY_PREFIX};
use super::{Flags, SharedConfig, Warning};
use crate::secret::Secret;
use crate::token::shared::seal::SealKeys;

/// Checks `[shared]` and its flags; `None` when no Redis URL is given.
pub(super) fn shared(flags: &Flags, raw: RawShared, c: &mut Checker) -> Option<SharedConfig> {
    let url = redis_url(flags, &raw, c);
    let key_file = pick(
        &path_str(&flags.shared_key_file),
        &raw.shared_key_file,
        &s::SHARED_KEY_FILE,
        "shared",
    );
    let seal_keys = key_file.as_ref().and_then(|k| seal_keys(k, c));
    match (&url, &key_file) {
        (None, Some(k)) => c.warn(Warning::shared_key_without_store(k.key.clone())),
        (Some(_), None) => c.warn(Warning::unsealed_shared_store()),
        _ => {}
    }
    url.map(|u| {
        check_redis_url(&u, c);
        SharedConfig {
            redis_url: Secret::new(u.value),
            key_prefix: raw.key_prefix.unwrap_or_else(|| DEFAULT_KEY_PREFIX.into()),
            seal_keys,
        }
    })
}

/// The Redis URL, given inline or in a file (one way only).
fn redis_url(flags: &Flags, raw: &RawShared, c: &mut Checker) -> Option<Src<String>> {
    let inline = pick(
        &secret_str(&flags.redis_url),
        &raw.redis_url,
        &s::REDIS_URL,
        "shared",
    );
    let from_file = pick(
        &path_str(&flags.redis_url_file),
        &raw.redis_url_file,
        &s::REDIS_URL_FILE,
        "shared",
    );
    match (inline, from_file) {
        (Some(i), Some(f)) => {
            c.err(format!(
                "{} and {}: give the Redis URL one way only",
                i.key, f.key
            ));
            None
        }
        (Some(i), None) => Some(i),
        (None, Some(f)) => match crate::secret::read_secret_file(Path::new(&f.value)) {
            Ok(secret) => Some(Src {
                value: secret.expose().to_owned(),
                key: f.key,
            }),
            Err(e) => {
                c.err(format!("{}: {e}", f.key));
                None
            }
        },
        (None, None) => None,
    }
}

fn seal_keys(key_file: &Src<String>, c: &mut Checker) -> Option<Arc<SealKeys>> {
    match SealKeys::load(Path::new(&key_file.value)) {
        Ok(keys) => Some(Arc::new(keys)),
        Err(e) => {
            c.err(format!("{}: {e}", key_file.key));
            None
        }
    }
}

/// Parsed only, no connection. The URL may hold a password: never printed.
fn check_redis_url(u: &Src<String>, c: &mut Checker) {
    const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];
    if !SCHEMES.iter().any(|p| u.value.starts_with(p)) {
        c.err(format!("{}: must be a redis:// or rediss:// URL", u.key));
    } else if let Err(e) = redis::Client::open(u.value.as_str()) {
        c.err(format!(
            "{}: not a valid Redis URL ({:?}); expected redis://[:PASSWORD@]HOST[:PORT][/DB]",
            u.key,
            e.kind()
        ));
    }
}
