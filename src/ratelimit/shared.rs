//! A route's rate limits shared by every replica through Redis.
//!
//! Keys, under the profile's hash tag so that a Redis Cluster keeps them in one slot:
//! - `PREFIX:{TOKEN}:rl:ROUTE:blocks`: a hash, group → when its block ends (unix ms, sealed
//!   with the shared key when there is one), expiring with its longest block; at most
//!   [`MAX_BLOCKS`] fields;
//! - `PREFIX:{TOKEN}:rl:ROUTE:ends`: a sorted set, group by when its block ends (plain), by
//!   which each write first removes the blocks that have ended: without it a hash kept alive by
//!   one long block would fill with ended ones and refuse new blocks;
//! - the channel of the same name: each new block is published there, so every replica holds
//!   it within a round trip (pushed, not polled);
//! - `PREFIX:{TOKEN}:rl:ROUTE:rate:GROUP`: the sliding window of a group's rate
//!   ([`SHARED_WINDOW_SCRIPT`]), expiring with its window, at most the rate's count of members.
//!
//! Redis operations on the request path (a rate) have a short timeout. After a failure the
//! shared view is "down" for a few seconds: every replica decides on its own (its local
//! window, the blocks it knows), says so in `token_sidecar_rate_limit_shared_up` and in
//! `/rate-limits`, and keeps serving.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::limits::{normalize_group, Origin, RouteLimits, MAX_BLOCKS, WHOLE_ROUTE};
use super::rate::{Rate, SHARED_WINDOW_SCRIPT};
use crate::metrics::Metrics;
use crate::token::shared::seal::{OpenError, SealKeys};
use crate::token::shared::{Conn, Connector, RejectReason, SharedConfig};

/// The longest a rate decision waits for Redis: past it, the local window decides.
const RATE_TIMEOUT: Duration = Duration::from_millis(250);
/// The longest any other operation waits.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the shared view stays down after a failure before Redis is tried again.
const DOWN_FOR: Duration = Duration::from_secs(5);

/// KEYS[1] the blocks hash (and its channel), KEYS[2] the sorted set of when each ends;
/// ARGV[1] the group, ARGV[2] the value (when the block ends, maybe sealed), ARGV[3] its time
/// to live (ms), ARGV[4] the most fields, ARGV[5] when it ends (unix ms, plain).
///
/// Ended blocks are removed first (by Redis' clock), so only blocks in force count against
/// the limit. The sorted set only says what to remove: what a replica applies is the hash's
/// value, sealed when there is a key.
const BLOCK_SCRIPT: &str = r"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then redis.call('DEL', KEYS[1]) end
if redis.call('TYPE', KEYS[2])['ok'] ~= 'zset' then redis.call('DEL', KEYS[2]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ended = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1024)
for _, g in ipairs(ended) do redis.call('HDEL', KEYS[1], g) end
if #ended > 0 then redis.call('ZREM', KEYS[2], unpack(ended)) end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
local ttl = tonumber(ARGV[3])
for _, k in ipairs(KEYS) do
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
end
redis.call('PUBLISH', KEYS[1], ARGV[1] .. '\n' .. ARGV[2])
return 1
";

/// One route's view of the shared limits.
pub struct SharedLimits {
    connector: Connector,
    conn: tokio::sync::Mutex<Option<Conn>>,
    route: String,
    token: String,
    base: String,
    blocks_key: String,
    ends_key: String,
    seal: Option<Arc<SealKeys>>,
    owner: String,
    up: AtomicBool,
    /// While down: when Redis is tried again (ms since the Unix epoch).
    retry_at_ms: AtomicU64,
    /// When an entry that did not open was last logged (ms since the Unix epoch).
    rejected_logged_ms: AtomicU64,
    metrics: Metrics,
    block_script: redis::Script,
    window_script: redis::Script,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SharedLimits {
    /// The shared limits of route `route`, whose token profile is `token`.
    pub fn new(
        cfg: &SharedConfig,
        token: &str,
        route: &str,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let connector =
            Connector::new(&cfg.redis_url, &cfg.topology, &cfg.tls).map_err(|e| e.to_string())?;
        let base = format!("{}:{{{token}}}:rl:{route}", cfg.key_prefix);
        Ok(SharedLimits {
            connector,
            conn: tokio::sync::Mutex::new(None),
            route: route.to_owned(),
            token: token.to_owned(),
            blocks_key: format!("{base}:blocks"),
            ends_key: format!("{base}:ends"),
            base,
            seal: cfg.seal_keys.clone(),
            owner: format!(
                "{}/{}/{:016x}",
                crate::token::shared::replica_name(),
                std::process::id(),
                rand::random::<u64>()
            ),
            up: AtomicBool::new(true),
            retry_at_ms: AtomicU64::new(0),
            rejected_logged_ms: AtomicU64::new(0),
            metrics,
            block_script: redis::Script::new(BLOCK_SCRIPT),
            window_script: redis::Script::new(SHARED_WINDOW_SCRIPT),
        })
    }

    /// Whether decisions are shared now: Redis answered last time, or it is time to try again.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed) || now_ms() >= self.retry_at_ms.load(Ordering::Relaxed)
    }

    /// Whether Redis answered the last operation.
    pub fn answered_last(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn count(&self, op: &str, result: &str) {
        self.metrics
            .shared_ops
            .with_label_values(&[self.token.as_str(), op, result])
            .inc();
    }

    fn mark(&self, up: bool) {
        if !up {
            self.retry_at_ms
                .store(now_ms() + DOWN_FOR.as_millis() as u64, Ordering::Relaxed);
        }
        let was = self.up.swap(up, Ordering::Relaxed);
        if was != up {
            self.metrics
                .rate_limit_shared_up
                .with_label_values(&[self.route.as_str()])
                .set(i64::from(up));
            if up {
                tracing::info!(route = %self.route, "rate limits are shared through Redis again");
            } else {
                tracing::warn!(route = %self.route, "Redis is unreachable: this replica applies the rate limits it knows on its own");
            }
        }
    }

    async fn conn(&self) -> Result<Conn, redis::RedisError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = self.connector.connect(OP_TIMEOUT).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Runs one operation within `timeout`; a failure marks the view down and drops the
    /// connection.
    async fn op<T, F, Fut>(&self, name: &str, timeout: Duration, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let result = tokio::time::timeout(timeout, async {
            let c = self.conn().await?;
            f(c).await
        })
        .await;
        match result {
            Ok(Ok(v)) => {
                self.mark(true);
                self.count(name, "ok");
                Some(v)
            }
            Ok(Err(e)) => {
                tracing::debug!(route = %self.route, op = name, error = %e, "shared rate limits: Redis failed");
                self.fail(name).await;
                None
            }
            Err(_) => {
                self.fail(name).await;
                None
            }
        }
    }

    async fn fail(&self, name: &str) {
        self.count(name, "error");
        self.mark(false);
        *self.conn.lock().await = None;
    }

    /// The associated data that binds a sealed block to its key and group.
    fn aad(&self, group: &str) -> Vec<u8> {
        format!("token-sidecar/rl/v1\0{}\0{group}", self.blocks_key).into_bytes()
    }

    /// Takes a place in `group`'s window of `rate` for all replicas: `Some(Ok(()))` when the
    /// request may go, `Some(Err(wait))` when there is room only after `wait`, `None` when
    /// Redis did not answer in time.
    pub async fn take(&self, group: &str, rate: Rate) -> Option<Result<(), Duration>> {
        let key = format!("{}:rate:{group}", self.base);
        let member = format!("{}/{:016x}", self.owner, rand::random::<u64>());
        let window = rate.window.as_millis().max(1) as u64;
        let script = &self.window_script;
        let wait: i64 = self
            .op("rate", RATE_TIMEOUT, |mut c| async move {
                script
                    .key(&key)
                    .arg(window)
                    .arg(rate.max)
                    .arg(&member)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Some(if wait <= 0 {
            Ok(())
        } else {
            Err(Duration::from_millis(wait as u64).min(rate.window))
        })
    }

    /// Writes a block of `group` (`None`: the whole route) ending `wait` from now and pushes it
    /// to every replica.
    pub async fn publish_block(&self, group: Option<&str>, wait: Duration) {
        let field = group.unwrap_or(WHOLE_ROUTE).to_owned();
        let until_ms = now_ms() + wait.as_millis() as u64;
        let until = until_ms.to_string();
        let value = match &self.seal {
            Some(keys) => match keys.seal(&self.aad(&field), until.as_bytes()) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(route = %self.route, error = %e, "a rate limit block could not be sealed; not shared");
                    return;
                }
            },
            None => until,
        };
        let script = &self.block_script;
        let (key, ends) = (self.blocks_key.clone(), self.ends_key.clone());
        let ttl = wait.as_millis().max(1) as u64;
        let _: Option<i64> = self
            .op("block", OP_TIMEOUT, |mut c| async move {
                script
                    .key(&key)
                    .key(&ends)
                    .arg(&field)
                    .arg(&value)
                    .arg(ttl)
                    .arg(MAX_BLOCKS)
                    .arg(until_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
    }

    /// The block a field and value of the hash (or a message) describe, when it opens, names
    /// a group and has not ended: its group (`None`: the whole route) and the time left.
    fn parse_block(&self, field: &str, value: &str) -> Option<(Option<Arc<str>>, Duration)> {
        let group = if field == WHOLE_ROUTE {
            None
        } else {
            Some(Arc::from(normalize_group(field)?))
        };
        let until: u64 = match &self.seal {
            Some(keys) => match keys.open(&self.aad(field), value) {
                Ok(plain) => std::str::from_utf8(&plain).ok()?.parse().ok()?,
                Err(e) => {
                    let reason = match e {
                        OpenError::Unsealed => RejectReason::Unsealed,
                        OpenError::Tampered => RejectReason::Tampered,
                    };
                    self.metrics
                        .shared_rejected
                        .with_label_values(&[self.token.as_str(), reason.as_str()])
                        .inc();
                    // Anyone who can publish can send these: one line per 10 s at most.
                    let now = now_ms();
                    let last = self.rejected_logged_ms.load(Ordering::Relaxed);
                    if now.saturating_sub(last) >= 10_000
                        && self
                            .rejected_logged_ms
                            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                    {
                        tracing::warn!(route = %self.route, reason = reason.as_str(), "a shared rate limit block does not open with the shared key; ignored (counted in token_sidecar_shared_rejected_entries_total)");
                    }
                    return None;
                }
            },
            None => value.parse().ok()?,
        };
        let left = until.checked_sub(now_ms()).filter(|ms| *ms > 0)?;
        // A block longer than any Retry-After the sidecar honours is not believed.
        let left = Duration::from_millis(left).min(super::retry_after::MAX_RETRY_AFTER);
        Some((group, left))
    }

    /// Follows the blocks of the other replicas until `shutdown`: reads those in force, then
    /// applies each one pushed; reconnects after a failure.
    pub async fn follow(self: Arc<Self>, limits: Arc<RouteLimits>, shutdown: CancellationToken) {
        use futures_util::StreamExt;
        let mut backoff = Duration::from_millis(200);
        loop {
            let subscribed = tokio::time::timeout(OP_TIMEOUT, async {
                let mut ps = self.connector.pubsub().await?;
                ps.subscribe(&self.blocks_key).await?;
                Ok::<_, redis::RedisError>(ps)
            })
            .await;
            match subscribed {
                Ok(Ok(mut ps)) => {
                    self.count("subscribe", "ok");
                    backoff = Duration::from_millis(200);
                    self.load_blocks(&limits).await;
                    let mut messages = ps.on_message();
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            msg = messages.next() => {
                                let Some(msg) = msg else { break };
                                let payload: String = msg.get_payload().unwrap_or_default();
                                if let Some((field, value)) = payload.split_once('\n') {
                                    if let Some((group, left)) = self.parse_block(field, value) {
                                        limits.block(group, left, Origin::Shared);
                                    }
                                }
                            }
                        }
                    }
                    self.fail("subscribe").await;
                }
                _ => self.fail("subscribe").await,
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Applies the blocks in force in Redis.
    async fn load_blocks(&self, limits: &Arc<RouteLimits>) {
        let key = self.blocks_key.clone();
        let fields: Option<Vec<(String, String)>> = self
            .op("blocks", OP_TIMEOUT, |mut c| async move {
                redis::cmd("HGETALL").arg(&key).query_async(&mut c).await
            })
            .await;
        for (field, value) in fields.unwrap_or_default().into_iter().take(MAX_BLOCKS) {
            if let Some((group, left)) = self.parse_block(&field, &value) {
                limits.block(group, left, Origin::Shared);
            }
        }
    }
}
