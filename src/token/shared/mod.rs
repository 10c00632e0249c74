//! The shared store: one token set per profile in Redis, shared by every replica.
//!
//! - Every key of a profile shares one hash tag, `{prefix}:{<profile>}`, so that a Redis
//!   Cluster keeps them in one slot (and the scripts below may touch them together).
//! - The set lives in the hash `{prefix}:{<profile>}` with fields `version` (a canonical
//!   decimal below 2^63) and `data`: the set as JSON, sealed with authenticated encryption
//!   when `--shared-key-file` is given ([`seal`]).
//! - Exactly one replica refreshes at a time: it holds `…:lock`, taken with `SET NX PX` and a
//!   random owner id, released or extended only by its owner (compare-and-delete /
//!   compare-and-expire in Lua).
//! - Writes are fenced by version: a Lua script writes only a version greater than the stored
//!   one, comparing them as exact decimal strings, so a replica whose lock expired mid-refresh
//!   can never overwrite a newer set. An entry that cannot be trusted (garbage, a version no
//!   newer one can follow, another type of key, a seal that does not open) is never used, and
//!   the next refresh replaces it, but only if it is still the very entry that was judged.
//! - A `Retry-After` answered to one replica holds them all: `…:hold` lives as long as the
//!   wait (the auth rate limit is the user's, not the replica's).
//! - Token requests of all replicas together stay within the profile's budget: `…:budget` is a
//!   sliding-window log (a sorted set of request times, by Redis's clock).
//! - A 401-triggered refresh is allowed once per `--min-refresh-interval` for all replicas:
//!   `…:unauthorized`, set with `NX PX`.
//! - Each write is announced on the channel `…:updates`; replicas also read the set every
//!   10 s in case a notification was missed (every second while unsubscribed).
//!
//! Everything read from Redis is untrusted input, bounded in size and checked before use,
//! whoever wrote it. Without a key the entries hold the tokens in clear: Redis must then be
//! protected like any secret store (AUTH, TLS with `rediss://`, a network policy).

pub mod connect;
mod redis;
mod scripts;
pub mod seal;

pub use connect::{Conn, Connector, RedisTls, Topology};
pub use redis::{replica_name, SharedStore};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ratelimit::rate::Rate;
use crate::token::state::State;
use crate::token::MAX_VERSION;
use seal::SealKeys;

/// The largest `data` field read (a sealed set of two 16 KiB tokens and the fingerprints).
pub const MAX_ENTRY_BYTES: usize = 128 * 1024;

/// A failure talking to Redis. Never holds a token or the URL's password.
#[derive(Debug, Clone, thiserror::Error)]
#[error("shared store: {0}")]
pub struct SharedError(String);

impl From<::redis::RedisError> for SharedError {
    fn from(e: ::redis::RedisError) -> Self {
        // RedisError's Display names the kind and the server's message; it does not echo
        // command arguments.
        SharedError(e.to_string())
    }
}

/// Where and how replicas share their token sets (`[shared]` of the configuration).
#[derive(Debug, Clone)]
pub struct SharedConfig {
    /// Redis URL (may carry a password, so it is a secret). With Sentinel or Cluster, its
    /// scheme, user, password and database only.
    pub redis_url: crate::secret::Secret,
    /// One server, Sentinel or Cluster.
    pub topology: Topology,
    /// A private CA and a client certificate for `rediss://`.
    pub tls: RedisTls,
    /// Prefix of the keys written.
    pub key_prefix: String,
    /// Keys that seal the entries written to Redis (`--shared-key-file`).
    pub seal_keys: Option<Arc<SealKeys>>,
}

/// The token set as stored in Redis.
#[derive(Clone, Serialize, Deserialize)]
pub struct SharedSet {
    /// The tokens (same layout as the state file, spent refresh tokens included).
    pub state: State,
    /// The replica that obtained it.
    pub refreshed_by: String,
    /// When (unix seconds).
    pub refreshed_at: u64,
}

impl std::fmt::Debug for SharedSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSet")
            .field("version", &self.state.version)
            .field("refreshed_by", &self.refreshed_by)
            .finish_non_exhaustive()
    }
}

/// Why an entry was not trusted (metric label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Plain JSON where a sealed entry was expected.
    Unsealed,
    /// Sealed, but it does not open with our keys.
    Tampered,
    /// Not a usable entry at all.
    Invalid,
}

impl RejectReason {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::Unsealed => "unsealed",
            RejectReason::Tampered => "tampered",
            RejectReason::Invalid => "invalid",
        }
    }
}

/// An entry that was read and not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Why, for the metric.
    pub reason: RejectReason,
    /// Why, for the log (never quotes the entry).
    pub detail: &'static str,
    /// What the write script must still find to replace this very entry.
    replace: String,
}

/// What the profile's key holds.
#[derive(Debug, Clone)]
pub enum Entry {
    /// Nothing.
    None,
    /// A set that opened and passed every check (it may still belong to another
    /// configuration: the refresher checks its profile).
    Set(SharedSet),
    /// Something that cannot be trusted.
    Rejected(Rejected),
}

impl Rejected {
    /// A rejection of an entry, replaced only while the entry is the one `replace` names (the
    /// SHA-1 of its data, `*type` or `*large`).
    pub fn new(reason: RejectReason, detail: &'static str, replace: String) -> Self {
        Rejected {
            reason,
            detail,
            replace,
        }
    }
}

impl Entry {
    /// The set, when there is a trusted one.
    pub fn set(self) -> Option<SharedSet> {
        match self {
            Entry::Set(s) => Some(s),
            _ => None,
        }
    }
}

/// Whether `v` is a canonical decimal below 2^63 that a newer version can follow.
pub fn parse_version(v: &str) -> Option<u64> {
    let canonical = !v.is_empty()
        && v.len() <= 19
        && v.bytes().all(|b| b.is_ascii_digit())
        && !v.starts_with('0');
    canonical
        .then(|| v.parse::<u64>().ok())
        .flatten()
        .filter(|n| *n < MAX_VERSION)
}

/// What the refresher needs of a shared store: [`SharedStore`] (Redis), or a fake of it in the
/// refresher's tests. Every operation may fail with a [`SharedError`] (the store is away).
pub trait SharedBackend: Send + Sync + 'static {
    /// Notifications of new sets.
    type Updates: Updates;
    /// This replica's name.
    fn replica(&self) -> &str;
    /// How long a holder of the refresh lock keeps it without extending it.
    fn lock_ttl(&self) -> Duration;
    /// What the profile's key holds.
    fn read(&self) -> impl Future<Output = Result<Entry, SharedError>> + Send;
    /// Tries to take the refresh lock.
    fn try_lock(&self) -> impl Future<Output = Result<bool, SharedError>> + Send;
    /// Whether any replica holds the refresh lock.
    fn lock_held(&self) -> impl Future<Output = Result<bool, SharedError>> + Send;
    /// Extends the lock if this replica holds it.
    fn extend(&self) -> impl Future<Output = Result<bool, SharedError>> + Send;
    /// Releases the lock if this replica holds it.
    fn unlock(&self) -> impl Future<Output = Result<bool, SharedError>> + Send;
    /// Writes `state` fenced by version (or replacing the untrusted entry `replacing`);
    /// `false` when fenced off.
    fn write(
        &self,
        state: State,
        replacing: Option<&Rejected>,
    ) -> impl Future<Output = Result<bool, SharedError>> + Send;
    /// Asks every replica to send no token request for `wait`.
    fn hold(&self, wait: Duration) -> impl Future<Output = Result<(), SharedError>> + Send;
    /// What is left of a hold set by any replica.
    fn hold_left(&self) -> impl Future<Output = Result<Option<Duration>, SharedError>> + Send;
    /// Counts one token request against `rate` for all replicas together.
    fn take_budget(
        &self,
        rate: Rate,
    ) -> impl Future<Output = Result<Result<(), Duration>, SharedError>> + Send;
    /// Claims the one 401-triggered refresh all replicas may make per `interval`.
    fn claim_unauthorized(
        &self,
        interval: Duration,
    ) -> impl Future<Output = Result<bool, SharedError>> + Send;
    /// Subscribes to notifications of new sets.
    fn subscribe(&self) -> impl Future<Output = Result<Self::Updates, SharedError>> + Send;
}

/// A subscription to notifications of new sets.
pub trait Updates: Send {
    /// Waits for the next notification; `false` when the subscription has ended.
    fn next(&mut self) -> impl Future<Output = bool> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_canonical_whole_numbers_below_2_63() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(
            parse_version("9007199254740993"),
            Some(9_007_199_254_740_993)
        );
        assert_eq!(parse_version("9223372036854775806"), Some(MAX_VERSION - 1));
        for bad in [
            "",
            "0",
            "01",
            "-1",
            "1.5",
            "1e3",
            " 1",
            "abc",
            "9223372036854775807",
            "18446744073709551615",
            "99999999999999999999",
        ] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }
}
