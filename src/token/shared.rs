//! The shared store: one token set per profile in Redis, shared by every replica.
//!
//! - The set lives in a hash `{prefix}:{profile}` with fields `version` and `data` (JSON).
//! - Exactly one replica refreshes at a time: it holds `{prefix}:{profile}:lock`, taken with
//!   `SET NX PX` and a random owner id, released or extended only by its owner (compare-and-
//!   delete / compare-and-expire in Lua).
//! - Writes are fenced by version: a Lua script writes only a version greater than the stored
//!   one, so a replica whose lock expired mid-refresh can never overwrite a newer set.
//! - A `Retry-After` answered to one replica holds them all: `{prefix}:{profile}:hold` lives as
//!   long as the wait (the auth rate limit is the user's, not the replica's).
//! - Each write is announced on the channel `{prefix}:{profile}:updates`; replicas also read the
//!   set every second in case a notification was missed.
//!
//! The set holds the refresh token: Redis must be protected like any secret store (AUTH, TLS
//! with `rediss://`, a network policy).

use std::time::{Duration, SystemTime};

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use serde::{Deserialize, Serialize};

use crate::config::SharedConfig;
use crate::metrics::Metrics;
use crate::token::state::State;

/// A failure talking to Redis. Never holds a token or the URL's password.
#[derive(Debug, Clone, thiserror::Error)]
#[error("shared store: {0}")]
pub struct SharedError(String);

impl From<redis::RedisError> for SharedError {
    fn from(e: redis::RedisError) -> Self {
        // RedisError's Display names the kind and the server's message; it does not echo
        // command arguments.
        SharedError(e.to_string())
    }
}

/// The token set as stored in Redis.
#[derive(Serialize, Deserialize)]
pub struct SharedSet {
    /// The tokens (same layout as the state file).
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

const WRITE_SCRIPT: &str = r"
local cur = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if tonumber(ARGV[1]) <= cur then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'data', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
";

const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

const HOLD_SCRIPT: &str = r"
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
end
return 1
";

const EXTEND_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// One profile's view of the shared store.
pub struct SharedStore {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    token: String,
    key: String,
    lock_key: String,
    hold_key: String,
    channel: String,
    owner: String,
    replica: String,
    lock_ttl: Duration,
    op_timeout: Duration,
    metrics: Metrics,
    write_script: redis::Script,
    unlock_script: redis::Script,
    extend_script: redis::Script,
    hold_script: redis::Script,
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
    std::env::var("TOKEN_SIDECAR_REPLICA")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

impl SharedStore {
    /// A store for profile `token`. `lock_ttl` bounds how long a dead holder blocks others.
    pub fn new(
        cfg: &SharedConfig,
        token: &str,
        lock_ttl: Duration,
        metrics: Metrics,
    ) -> Result<Self, SharedError> {
        let client = redis::Client::open(cfg.redis_url.expose())
            .map_err(|e| SharedError(format!("invalid redis URL ({:?})", e.kind())))?;
        let replica = replica_name();
        let owner = format!(
            "{replica}/{}/{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let key = format!("{}:{token}", cfg.key_prefix);
        Ok(SharedStore {
            client,
            conn: tokio::sync::Mutex::new(None),
            token: token.to_owned(),
            lock_key: format!("{key}:lock"),
            hold_key: format!("{key}:hold"),
            channel: format!("{key}:updates"),
            key,
            owner,
            replica,
            lock_ttl,
            op_timeout: Duration::from_secs(2),
            metrics,
            write_script: redis::Script::new(WRITE_SCRIPT),
            unlock_script: redis::Script::new(UNLOCK_SCRIPT),
            extend_script: redis::Script::new(EXTEND_SCRIPT),
            hold_script: redis::Script::new(HOLD_SCRIPT),
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

    fn count(&self, op: &str, result: &str) {
        self.metrics
            .shared_ops
            .with_label_values(&[self.token.as_str(), op, result])
            .inc();
    }

    async fn conn(&self) -> Result<MultiplexedConnection, SharedError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.op_timeout))
            .set_response_timeout(Some(self.op_timeout));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Runs one operation with a timeout; a failure drops the connection so that the next
    /// operation reconnects.
    async fn op<T, F, Fut>(&self, name: &str, f: F) -> Result<T, SharedError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let result = async {
            let c = self.conn().await?;
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

    /// The stored set, if any.
    pub async fn read(&self) -> Result<Option<SharedSet>, SharedError> {
        let key = self.key.clone();
        let data: Option<String> = self
            .op("read", |mut c| async move {
                redis::cmd("HGET")
                    .arg(&key)
                    .arg("data")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        self.count("read", "ok");
        match data {
            None => Ok(None),
            Some(d) => serde_json::from_str(&d).map(Some).map_err(|e| {
                SharedError(format!(
                    "the stored token set is corrupt: {}",
                    e.classify() as u8
                ))
            }),
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

    /// Writes `state` if its version is newer than the stored one, and announces it. Returns
    /// `false` when a newer (or equal) version is already stored: the write was fenced off.
    pub async fn write(&self, state: State) -> Result<bool, SharedError> {
        let version = state.version;
        let set = SharedSet {
            state,
            refreshed_by: self.replica.clone(),
            refreshed_at: crate::token::unix_seconds(SystemTime::now()),
        };
        let data = serde_json::to_string(&set).map_err(|e| SharedError(e.to_string()))?;
        let (script, key, channel) = (&self.write_script, self.key.clone(), self.channel.clone());
        let n: i64 = self
            .op("write", |mut c| async move {
                script
                    .key(&key)
                    .arg(version)
                    .arg(&data)
                    .arg(&channel)
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
            wait.as_millis().max(1) as u64,
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

    /// What is left of a hold set by any replica.
    pub async fn hold_left(&self) -> Result<Option<Duration>, SharedError> {
        let key = self.hold_key.clone();
        let ms: i64 = self
            .op("hold_check", |mut c| async move {
                redis::cmd("PTTL").arg(&key).query_async(&mut c).await
            })
            .await?;
        Ok((ms > 0).then(|| Duration::from_millis(ms as u64)))
    }

    /// A subscription to update notifications.
    pub async fn subscribe(&self) -> Result<redis::aio::PubSub, SharedError> {
        let fut = async {
            let mut ps = self.client.get_async_pubsub().await?;
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
