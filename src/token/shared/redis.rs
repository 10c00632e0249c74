//! [`SharedStore`]: the shared store in one Redis, through Lua scripts that keep every check
//! and write atomic on the server.
//!
//! Size: one file, because each operation is one round trip with its script, its arguments
//! and its metrics, and they share the connection handling.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::connect::{Conn, Connector};

use super::scripts::{
    BUDGET_SCRIPT, EXTEND_SCRIPT, HOLD_SCRIPT, LUA_VERSIONS, READ_SCRIPT, UNLOCK_SCRIPT,
    WRITE_SCRIPT_BODY,
};
use super::seal::{self, OpenError, SealKeys};
use super::{
    parse_version, Entry, RejectReason, Rejected, SharedBackend, SharedConfig, SharedError,
    SharedSet, Updates, MAX_ENTRY_BYTES,
};
use crate::metrics::Metrics;
use crate::ratelimit::rate::Rate;
use crate::token::state::State;

/// The longest wait another replica can impose through `…:hold`.
const MAX_HOLD: Duration = Duration::from_secs(3600);

impl Updates for redis::aio::PubSub {
    async fn next(&mut self) -> bool {
        use futures_util::StreamExt;
        self.on_message().next().await.is_some()
    }
}

impl SharedBackend for SharedStore {
    type Updates = redis::aio::PubSub;

    fn replica(&self) -> &str {
        &self.replica
    }

    fn lock_ttl(&self) -> Duration {
        self.lock_ttl
    }

    fn read(&self) -> impl Future<Output = Result<Entry, SharedError>> + Send {
        SharedStore::read(self)
    }

    fn try_lock(&self) -> impl Future<Output = Result<bool, SharedError>> + Send {
        SharedStore::try_lock(self)
    }

    fn lock_held(&self) -> impl Future<Output = Result<bool, SharedError>> + Send {
        SharedStore::lock_held(self)
    }

    fn extend(&self) -> impl Future<Output = Result<bool, SharedError>> + Send {
        SharedStore::extend(self)
    }

    fn unlock(&self) -> impl Future<Output = Result<bool, SharedError>> + Send {
        SharedStore::unlock(self)
    }

    fn write(
        &self,
        state: State,
        replacing: Option<&Rejected>,
    ) -> impl Future<Output = Result<bool, SharedError>> + Send {
        SharedStore::write(self, state, replacing)
    }

    fn hold(&self, wait: Duration) -> impl Future<Output = Result<(), SharedError>> + Send {
        SharedStore::hold(self, wait)
    }

    fn hold_left(&self) -> impl Future<Output = Result<Option<Duration>, SharedError>> + Send {
        SharedStore::hold_left(self)
    }

    fn take_budget(
        &self,
        rate: Rate,
    ) -> impl Future<Output = Result<Result<(), Duration>, SharedError>> + Send {
        SharedStore::take_budget(self, rate)
    }

    fn claim_unauthorized(
        &self,
        interval: Duration,
    ) -> impl Future<Output = Result<bool, SharedError>> + Send {
        SharedStore::claim_unauthorized(self, interval)
    }

    fn subscribe(&self) -> impl Future<Output = Result<Self::Updates, SharedError>> + Send {
        SharedStore::subscribe(self)
    }
}

/// One profile's view of the shared store.
pub struct SharedStore {
    connector: Connector,
    conn: tokio::sync::Mutex<Option<Conn>>,
    token: String,
    /// The configuration a set must belong to (token URL, client, grant).
    profile_key: String,
    key: String,
    lock_key: String,
    hold_key: String,
    budget_key: String,
    unauthorized_key: String,
    channel: String,
    owner: String,
    replica: String,
    lock_ttl: Duration,
    op_timeout: Duration,
    metrics: Metrics,
    seal: Option<Arc<SealKeys>>,
    read_script: redis::Script,
    write_script: redis::Script,
    unlock_script: redis::Script,
    extend_script: redis::Script,
    hold_script: redis::Script,
    budget_script: redis::Script,
    /// The last rejection logged, so that an entry that stays bad is logged once, not on
    /// every read.
    last_rejection: std::sync::Mutex<Option<Rejected>>,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("key", &self.key)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// This replica's name: `TOKEN_SIDECAR_REPLICA` or the host name (the pod name in Kubernetes).
pub fn replica_name() -> String {
    let name = std::env::var("TOKEN_SIDECAR_REPLICA")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    name.chars().take(253).collect()
}

/// Hex SHA-1, as Lua's `redis.sha1hex` writes it (an identity check of an entry, not a seal).
fn sha1_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl SharedStore {
    /// A store for profile `token`, whose sets belong to the configuration `profile_key` (sets
    /// of another are not trusted). `lock_ttl` bounds how long a dead holder blocks others.
    pub fn new(
        cfg: &SharedConfig,
        token: &str,
        profile_key: &str,
        lock_ttl: Duration,
        metrics: Metrics,
    ) -> Result<Self, SharedError> {
        let connector = Connector::new(&cfg.redis_url, &cfg.topology, &cfg.tls)?;
        let replica = replica_name();
        let owner = format!(
            "{replica}/{}/{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let key = format!("{}:{{{token}}}", cfg.key_prefix);
        Ok(SharedStore {
            connector,
            conn: tokio::sync::Mutex::new(None),
            token: token.to_owned(),
            profile_key: profile_key.to_owned(),
            lock_key: format!("{key}:lock"),
            hold_key: format!("{key}:hold"),
            budget_key: format!("{key}:budget"),
            unauthorized_key: format!("{key}:unauthorized"),
            channel: format!("{key}:updates"),
            key,
            owner,
            replica,
            lock_ttl,
            op_timeout: Duration::from_secs(2),
            metrics,
            seal: cfg.seal_keys.clone(),
            read_script: redis::Script::new(READ_SCRIPT),
            write_script: redis::Script::new(&format!("{LUA_VERSIONS}{WRITE_SCRIPT_BODY}")),
            unlock_script: redis::Script::new(UNLOCK_SCRIPT),
            extend_script: redis::Script::new(EXTEND_SCRIPT),
            hold_script: redis::Script::new(HOLD_SCRIPT),
            budget_script: redis::Script::new(BUDGET_SCRIPT),
            last_rejection: std::sync::Mutex::new(None),
        })
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The lock's time to live.
    pub fn lock_ttl(&self) -> Duration {
        self.lock_ttl
    }

    /// Whether entries are sealed.
    pub fn sealed(&self) -> bool {
        self.seal.is_some()
    }

    fn count(&self, op: &str, result: &str) {
        self.metrics
            .shared_ops
            .with_label_values(&[self.token.as_str(), op, result])
            .inc();
    }

    /// The connection, opened when there is none. For a write (`checked`), an open connection
    /// is first confirmed to reach the current primary ([`Connector::is_current`]): after a
    /// Sentinel failover that left the old primary up, a write there would be lost when it
    /// resyncs from the new one.
    async fn conn(&self, checked: bool) -> Result<Conn, SharedError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if !checked {
                return Ok(c.clone());
            }
            let current = tokio::time::timeout(self.op_timeout, self.connector.is_current(c))
                .await
                .map_err(|_| SharedError("timed out asking the sentinels".into()))??;
            if current {
                return Ok(c.clone());
            }
            tracing::info!(token = %self.token, "the sentinels name another primary; reconnecting");
            *guard = None;
        }
        let c = self.connector.connect(self.op_timeout).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Runs one operation with a timeout; a failure drops the connection so that the next
    /// operation reconnects. Operations that write are sent only to the current primary (see
    /// [`Self::conn`]).
    async fn op<T, F, Fut>(&self, name: &str, f: F) -> Result<T, SharedError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let writes = matches!(
            name,
            "lock" | "extend" | "unlock" | "write" | "hold" | "budget" | "unauthorized"
        );
        let result = async {
            let c = self.conn(writes).await?;
            tokio::time::timeout(self.op_timeout, f(c))
                .await
                .map_err(|_| SharedError("timed out".into()))?
                .map_err(SharedError::from)
        }
        .await;
        if result.is_err() {
            self.count(name, "error");
            *self.conn.lock().await = None;
        }
        result
    }

    /// The associated data that binds a sealed entry to its key and version.
    fn aad(&self, version: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(32 + self.key.len() + version.len());
        aad.extend_from_slice(b"token-sidecar/v2\0");
        aad.extend_from_slice(self.key.as_bytes());
        aad.push(0);
        aad.extend_from_slice(version.as_bytes());
        aad
    }

    /// What the profile's key holds. An entry that is not trusted is counted in
    /// `token_sidecar_shared_rejected_entries_total` and logged (once while it stays the same).
    pub async fn read(&self) -> Result<Entry, SharedError> {
        let (script, key) = (&self.read_script, self.key.clone());
        // Bytes, not strings: an entry that is not UTF-8 is a bad entry, not a Redis failure.
        let reply: Vec<Vec<u8>> = self
            .op("read", |mut c| async move {
                script
                    .key(&key)
                    .arg(MAX_ENTRY_BYTES)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        self.count("read", "ok");
        let entry = self.judge(&reply);
        match &entry {
            Entry::Rejected(r) => self.report(r),
            _ => {
                *self
                    .last_rejection
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None
            }
        }
        Ok(entry)
    }

    fn judge(&self, reply: &[Vec<u8>]) -> Entry {
        let rejected = |reason, detail, replace: String| {
            Entry::Rejected(Rejected {
                reason,
                detail,
                replace,
            })
        };
        let (version, data) = match reply {
            [kind] if kind == b"none" => return Entry::None,
            [kind] if kind == b"type" => {
                return rejected(
                    RejectReason::Invalid,
                    "the key is not a hash",
                    "*type".into(),
                )
            }
            [kind] if kind == b"large" => {
                return rejected(RejectReason::Invalid, "oversized entry", "*large".into())
            }
            [kind, version, data] if kind == b"hash" => (version, data),
            _ => return rejected(RejectReason::Invalid, "unexpected reply", "*type".into()),
        };
        let replace = sha1_hex(data);
        let (Ok(version), Ok(data)) = (std::str::from_utf8(version), std::str::from_utf8(data))
        else {
            return rejected(RejectReason::Invalid, "the entry is not text", replace);
        };
        let Some(number) = parse_version(version) else {
            return rejected(
                RejectReason::Invalid,
                "the version is not a whole number below 2^63",
                replace,
            );
        };
        let json = match &self.seal {
            Some(keys) => match keys.open(&self.aad(version), data) {
                Ok(plain) => plain,
                Err(OpenError::Unsealed) => {
                    return rejected(RejectReason::Unsealed, "the entry is not sealed", replace)
                }
                Err(OpenError::Tampered) => {
                    return rejected(
                        RejectReason::Tampered,
                        "the entry does not open with the shared key",
                        replace,
                    )
                }
            },
            None if seal::is_sealed(data) => {
                return rejected(
                    RejectReason::Invalid,
                    "the entry is sealed, and no --shared-key-file is configured",
                    replace,
                )
            }
            None => zeroize::Zeroizing::new(data.as_bytes().to_vec()),
        };
        let set: SharedSet = match serde_json::from_slice(&json) {
            Ok(s) => s,
            Err(_) => {
                return rejected(
                    RejectReason::Invalid,
                    "the entry is not a token set",
                    replace,
                )
            }
        };
        if set.state.profile != self.profile_key {
            // Another deployment sharing this Redis and profile name: its tokens are for
            // another app or user (each deployment needs its own `key_prefix`).
            return rejected(
                RejectReason::Invalid,
                "the entry belongs to another token endpoint, client or grant (give each deployment its own [shared] key_prefix)",
                replace,
            );
        }
        if set.state.version != number {
            return rejected(
                RejectReason::Invalid,
                "the entry's version differs from its field",
                replace,
            );
        }
        if let Err(detail) = set.state.validate() {
            return rejected(RejectReason::Invalid, detail, replace);
        }
        Entry::Set(set)
    }

    fn report(&self, r: &Rejected) {
        self.metrics
            .shared_rejected
            .with_label_values(&[self.token.as_str(), r.reason.as_str()])
            .inc();
        let mut last = self
            .last_rejection
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.as_ref() != Some(r) {
            tracing::warn!(
                token = %self.token,
                key = %self.key,
                reason = r.reason.as_str(),
                detail = r.detail,
                "ignoring the shared store's entry: it cannot be trusted (this replica keeps its own token and replaces the entry at its next refresh)"
            );
            *last = Some(r.clone());
        }
    }

    /// Tries to take the refresh lock.
    pub async fn try_lock(&self) -> Result<bool, SharedError> {
        let (key, owner, ttl) = (
            self.lock_key.clone(),
            self.owner.clone(),
            self.lock_ttl.as_millis() as u64,
        );
        let r: Option<String> = self
            .op("lock", |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let acquired = r.is_some();
        self.count("lock", if acquired { "acquired" } else { "busy" });
        if acquired {
            self.metrics
                .shared_lock_acquisitions
                .with_label_values(&[self.token.as_str()])
                .inc();
        }
        Ok(acquired)
    }

    /// Whether any replica holds the refresh lock now.
    pub async fn lock_held(&self) -> Result<bool, SharedError> {
        let key = self.lock_key.clone();
        let n: i64 = self
            .op("lock_check", |mut c| async move {
                redis::cmd("EXISTS").arg(&key).query_async(&mut c).await
            })
            .await?;
        self.count("lock_check", "ok");
        Ok(n == 1)
    }

    /// Extends the lock if this replica still holds it.
    pub async fn extend(&self) -> Result<bool, SharedError> {
        let (script, key, owner, ttl) = (
            &self.extend_script,
            self.lock_key.clone(),
            self.owner.clone(),
            self.lock_ttl.as_millis() as u64,
        );
        let n: i64 = self
            .op("extend", |mut c| async move {
                script
                    .key(&key)
                    .arg(&owner)
                    .arg(ttl)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        self.count("extend", if n == 1 { "ok" } else { "lost" });
        Ok(n == 1)
    }

    /// Releases the lock if this replica holds it.
    pub async fn unlock(&self) -> Result<bool, SharedError> {
        let (script, key, owner) = (
            &self.unlock_script,
            self.lock_key.clone(),
            self.owner.clone(),
        );
        let n: i64 = self
            .op("unlock", |mut c| async move {
                script.key(&key).arg(&owner).invoke_async(&mut c).await
            })
            .await?;
        self.count("unlock", if n == 1 { "ok" } else { "lost" });
        Ok(n == 1)
    }

    /// Writes `state` if its version is newer than the stored one (or the stored entry is the
    /// untrusted one in `replacing`, unchanged since it was read), and announces it. Returns
    /// `false` when the write was fenced off: a newer (or equal) version is stored.
    pub async fn write(
        &self,
        state: State,
        replacing: Option<&Rejected>,
    ) -> Result<bool, SharedError> {
        let version = state.version.to_string();
        if parse_version(&version).is_none() {
            return Err(SharedError("no newer version is possible".into()));
        }
        let set = SharedSet {
            state,
            refreshed_by: self.replica.clone(),
            refreshed_at: crate::token::unix_seconds(SystemTime::now()),
        };
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec(&set).map_err(|e| SharedError(e.to_string()))?,
        );
        let data = match &self.seal {
            Some(keys) => keys.seal(&self.aad(&version), &json).map_err(SharedError)?,
            None => String::from_utf8_lossy(&json).into_owned(),
        };
        let data = zeroize::Zeroizing::new(data);
        let replace = replacing.map_or("", |r| r.replace.as_str());
        let (script, key, channel) = (&self.write_script, self.key.clone(), self.channel.clone());
        let n: i64 = self
            .op("write", |mut c| async move {
                script
                    .key(&key)
                    .arg(&version)
                    .arg(data.as_str())
                    .arg(&channel)
                    .arg(replace)
                    .arg(MAX_ENTRY_BYTES)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        self.count("write", if n == 1 { "ok" } else { "fenced" });
        Ok(n == 1)
    }

    /// Asks every replica to send no token request for `wait` (the token endpoint's
    /// `Retry-After`). A longer hold already set is kept.
    pub async fn hold(&self, wait: Duration) -> Result<(), SharedError> {
        let (script, key, owner, ms) = (
            &self.hold_script,
            self.hold_key.clone(),
            self.owner.clone(),
            wait.min(MAX_HOLD).as_millis().max(1) as u64,
        );
        let _: i64 = self
            .op("hold", |mut c| async move {
                script
                    .key(&key)
                    .arg(ms)
                    .arg(&owner)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        self.count("hold", "ok");
        Ok(())
    }

    /// What is left of a hold set by any replica (at most an hour, whatever Redis says).
    pub async fn hold_left(&self) -> Result<Option<Duration>, SharedError> {
        let key = self.hold_key.clone();
        let ms: i64 = self
            .op("hold_check", |mut c| async move {
                redis::cmd("PTTL").arg(&key).query_async(&mut c).await
            })
            .await?;
        self.count("hold_check", "ok");
        Ok((ms > 0).then(|| Duration::from_millis(ms as u64).min(MAX_HOLD)))
    }

    /// Counts one token request against `rate` for all replicas together: `Ok(Ok(()))` when
    /// it may be sent, `Ok(Err(wait))` when the budget has room again only after `wait`.
    pub async fn take_budget(&self, rate: Rate) -> Result<Result<(), Duration>, SharedError> {
        let (script, key) = (&self.budget_script, self.budget_key.clone());
        let member = format!("{}/{:016x}", self.owner, rand::random::<u64>());
        let window = rate.window.as_millis().max(1) as u64;
        let wait: i64 = self
            .op("budget", |mut c| async move {
                script
                    .key(&key)
                    .arg(window)
                    .arg(rate.max)
                    .arg(&member)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        self.count("budget", if wait == 0 { "ok" } else { "spent" });
        Ok(if wait <= 0 {
            Ok(())
        } else {
            Err(Duration::from_millis(wait as u64).min(rate.window))
        })
    }

    /// Claims the one 401-triggered refresh every replica together may make per `interval`.
    /// `false`: another replica made one less than `interval` ago.
    pub async fn claim_unauthorized(&self, interval: Duration) -> Result<bool, SharedError> {
        let (key, owner, ms) = (
            self.unauthorized_key.clone(),
            self.owner.clone(),
            interval.as_millis().max(1) as u64,
        );
        let r: Option<String> = self
            .op("unauthorized", |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        self.count(
            "unauthorized",
            if r.is_some() { "acquired" } else { "busy" },
        );
        Ok(r.is_some())
    }

    /// A subscription to update notifications.
    pub async fn subscribe(&self) -> Result<redis::aio::PubSub, SharedError> {
        let fut = async {
            let mut ps = self.connector.pubsub().await?;
            ps.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(Ok(ps)) => {
                self.count("subscribe", "ok");
                Ok(ps)
            }
            Ok(Err(e)) => {
                self.count("subscribe", "error");
                Err(e.into())
            }
            Err(_) => {
                self.count("subscribe", "error");
                Err(SharedError("subscribe timed out".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_lua() {
        // redis.sha1hex('') in Redis.
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    }
}
