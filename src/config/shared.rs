//! `[shared]`: the Redis store replicas share a token set through, and the key sealing its
//! entries.

use std::path::Path;
use std::sync::Arc;

use super::checker::list;
use super::checker::{path_str, pick, secret_str, Checker, Src};
use super::file::RawShared;
use super::settings::shared::{self as s, DEFAULT_KEY_PREFIX};
use super::{Flags, SharedConfig, Warning};
use crate::secret::Secret;
use crate::token::shared::seal::SealKeys;
use crate::token::shared::{RedisTls, Topology};

/// Checks `[shared]` and its flags; `None` when no Redis is given (neither a URL, nor
/// sentinels, nor cluster nodes).
pub(super) fn shared(flags: &Flags, raw: RawShared, c: &mut Checker) -> Option<SharedConfig> {
    let url = redis_url(flags, &raw, c);
    let topology = topology(flags, &raw, c);
    // With Sentinel or Cluster, the URL is optional: it gives the credentials and TLS only.
    let url = match (url, &topology) {
        (None, Some(t)) if *t != Topology::Single => Some(Src {
            value: "redis://127.0.0.1/".to_owned(),
            key: format!("--{}", s::REDIS_URL.flag),
        }),
        (url, _) => url,
    };
    let tls = redis_tls(flags, &raw, url.as_ref(), c);
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
            topology: topology.unwrap_or(Topology::Single),
            tls,
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

/// Sentinel or Cluster, when their settings are given (checked together).
fn topology(flags: &Flags, raw: &RawShared, c: &mut Checker) -> Option<Topology> {
    let sentinels = list(
        &flags.redis_sentinels,
        &raw.redis_sentinels.as_ref().map(|v| v.to_vec()),
        &s::REDIS_SENTINELS,
        "shared",
    );
    let master = pick(
        &flags.redis_sentinel_master,
        &raw.redis_sentinel_master,
        &s::REDIS_SENTINEL_MASTER,
        "shared",
    );
    let nodes = list(
        &flags.redis_cluster_nodes,
        &raw.redis_cluster_nodes.as_ref().map(|v| v.to_vec()),
        &s::REDIS_CLUSTER_NODES,
        "shared",
    );
    let host_ports = |c: &mut Checker, v: &[Src<String>]| -> Vec<String> {
        v.iter()
            .filter_map(|n| {
                let value = n.value.trim();
                let ok = value
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if ok {
                    Some(value.to_owned())
                } else {
                    c.err(format!("{}: `{value}` is not HOST:PORT", n.key));
                    None
                }
            })
            .collect()
    };
    match (sentinels.is_empty(), master, nodes.is_empty()) {
        (true, None, true) => None,
        (false, _, false) => {
            c.err(format!(
                "--{} and --{}: a Redis is reached through Sentinel or as a Cluster, not both",
                s::REDIS_SENTINELS.flag,
                s::REDIS_CLUSTER_NODES.flag
            ));
            None
        }
        (false, Some(m), true) if !m.value.trim().is_empty() => Some(Topology::Sentinel {
            sentinels: host_ports(c, &sentinels),
            master: m.value.trim().to_owned(),
        }),
        (false, _, true) => {
            c.err(format!(
                "--{}: required with --{}: the name the sentinels monitor the primary under",
                s::REDIS_SENTINEL_MASTER.flag,
                s::REDIS_SENTINELS.flag
            ));
            None
        }
        (true, Some(m), _) => {
            c.err(format!(
                "{}: needs --{} (the sentinels to ask)",
                m.key,
                s::REDIS_SENTINELS.flag
            ));
            None
        }
        (true, None, false) => Some(Topology::Cluster {
            nodes: host_ports(c, &nodes),
        }),
    }
}

/// A CA and a client certificate for `rediss://`.
fn redis_tls(
    flags: &Flags,
    raw: &RawShared,
    url: Option<&Src<String>>,
    c: &mut Checker,
) -> RedisTls {
    let ca = pick(
        &path_str(&flags.redis_ca_file),
        &raw.redis_ca_file,
        &s::REDIS_CA_FILE,
        "shared",
    );
    if let Some(ca) = &ca {
        if let Err(e) = crate::tls::root_store(Some(Path::new(&ca.value))) {
            c.err(format!("{}: {e}", ca.key));
        }
    }
    let client_cert = c.client_cert(
        pick(
            &path_str(&flags.redis_client_cert_file),
            &raw.redis_client_cert_file,
            &s::REDIS_CLIENT_CERT_FILE,
            "shared",
        ),
        pick(
            &path_str(&flags.redis_client_key_file),
            &raw.redis_client_key_file,
            &s::REDIS_CLIENT_KEY_FILE,
            "shared",
        ),
        Warning::redis_cert_expires_soon,
    );
    let tls_url = url.is_some_and(|u| u.value.starts_with("rediss://"));
    if (ca.is_some() || client_cert.is_some()) && !tls_url {
        c.err(format!(
            "--{} / --{}: TLS settings need a rediss:// URL",
            s::REDIS_CA_FILE.flag,
            s::REDIS_CLIENT_CERT_FILE.flag
        ));
    }
    RedisTls {
        ca_file: ca.map(|c| std::path::PathBuf::from(c.value)),
        client_cert,
    }
}
