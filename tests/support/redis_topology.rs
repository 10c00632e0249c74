//! Redis as production runs it, as real processes on free loopback ports: a primary with
//! replicas watched by three sentinels ([`Sentinels`]), or a Redis Cluster ([`Cluster`]).
//!
//! - Every process is a child of the test, killed (SIGKILL, by its PID) when its handle is
//!   dropped; configuration files, data and logs live in a temporary directory.
//! - Ports are chosen at run time (a bind to port 0), a cluster node's only when its bus port
//!   (port + 10000) is free too.
//! - The sidecar logs in as the ACL user [`USER`], allowed exactly [`DATA_ACL`] on the data
//!   nodes and [`SENTINEL_ACL`] on the sentinels: any other command it sends is refused and
//!   shows in `ACL LOG` ([`acl_denials`]), which the tests check is empty. The harness itself
//!   uses the unrestricted `default` user.
//! - Everything that waits for the topology to settle does so against a deadline, with the
//!   processes' logs in the panic message.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, RedisResult};

/// The name the sentinels monitor the primary under.
pub const MASTER: &str = "mymaster";
/// The ACL user of the sidecars.
pub const USER: &str = "sidecar";
/// Its password.
pub const PASSWORD: &str = "sidecar-pw-5d1c";
/// The key prefix of the sidecars (the default `key_prefix`).
pub const PREFIX: &str = "token-sidecar";

/// What the sidecar's user may run on a data node, and nothing else: the commands the token
/// store and the shared rate limits send (the scripts, and the commands their Lua calls, which
/// Redis checks against the caller's ACL too), `SCRIPT LOAD` after a `NOSCRIPT` (a promoted
/// replica has an empty script cache), `ROLE` (the Sentinel client checks that the node the
/// sentinels name is a primary), `CLUSTER SLOTS` (the cluster client's map of slots), `PING`
/// (the cluster client checks each node connection with it) and `ASKING` (a slot in
/// migration). Keys and channels: the prefix only.
pub const DATA_ACL: &str = "resetkeys ~token-sidecar:* resetchannels &token-sidecar:* -@all \
     +evalsha +script|load \
     +get +set +del +exists +pttl +pexpire +type +time \
     +hget +hmget +hset +hdel +hstrlen +hexists +hlen +hgetall \
     +zadd +zrem +zcard +zrange +zrangebyscore +zremrangebyscore +zremrangebyrank \
     +publish +subscribe \
     +role +cluster|slots +ping +asking";

/// What the sidecar's user may run on a sentinel: the list of monitored primaries (the
/// Sentinel client's lookup) and `ROLE` (its check that it talks to a sentinel).
pub const SENTINEL_ACL: &str = "-@all +sentinel|masters +role";

/// How long the topology has to settle (processes up, replication linked, failover done).
pub const SETTLE: Duration = Duration::from_secs(30);

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A free loopback port whose cluster bus port (port + 10000) is free too.
pub fn free_cluster_port() -> u16 {
    for _ in 0..200 {
        let port = free_port();
        if port > 55_000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port with a free bus port");
}

/// One redis-server or redis-sentinel process.
pub struct Server {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    fn spawn(program: &str, conf: &Path, port: u16, log: PathBuf) -> Server {
        let child = Command::new(program)
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} is required (scripts/test.sh installs it): {e}"));
        Server {
            port,
            child: Some(child),
            log,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether it has not been killed.
    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    /// Kills it with SIGKILL (as a crash: nothing is saved) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An unrestricted connection (the `default` user) to the server on `port`.
pub async fn admin(port: u16) -> RedisResult<MultiplexedConnection> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// Runs one command on the server on `port` as `default`.
pub async fn cmd<T: FromRedisValue>(port: u16, args: &[&str]) -> RedisResult<T> {
    let mut c = admin(port).await?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut c).await
}

/// The field `key` of an `INFO` text.
pub fn info_field(info: &str, key: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_owned())
}

/// The `HGET key field` of the token set's version on `port`, when the node answers.
pub async fn stored_version(port: u16, profile: &str) -> Option<u64> {
    let v: Option<String> = cmd(
        port,
        &["HGET", &format!("{PREFIX}:{{{profile}}}"), "version"],
    )
    .await
    .ok()?;
    Some(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Waits for `cond` (async) until `deadline`, then panics with `what` and `context()`.
pub async fn settle<F, Fut>(
    deadline: Duration,
    what: &str,
    context: impl Fn() -> String,
    mut cond: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() >= end {
            panic!(
                "timed out after {deadline:?} waiting for: {what}\n{}",
                context()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `ACL LOG` entries of the server on `port` (commands refused to a user), as text.
pub async fn acl_denials(port: u16) -> Vec<String> {
    let Ok(entries) = cmd::<Vec<redis::Value>>(port, &["ACL", "LOG"]).await else {
        return Vec::new();
    };
    entries
        .into_iter()
        .map(|e| {
            let fields: Vec<String> = match e {
                redis::Value::Array(items) => items
                    .iter()
                    .map(|v| redis::from_redis_value_ref::<String>(v).unwrap_or_default())
                    .collect(),
                other => vec![format!("{other:?}")],
            };
            let field = |name: &str| {
                fields
                    .iter()
                    .position(|f| f == name)
                    .and_then(|i| fields.get(i + 1))
                    .cloned()
                    .unwrap_or_default()
            };
            format!(
                "{port}: {} refused {} `{}` ({} times)",
                field("username"),
                field("reason"),
                field("object"),
                field("count")
            )
        })
        .collect()
}

/// The sidecar's `--redis-url`: the ACL user and its password (with Sentinel or Cluster the
/// URL's host is not used).
pub fn sidecar_url() -> String {
    format!("redis://{USER}:{PASSWORD}@127.0.0.1:1/0")
}

fn common_conf(dir: &Path, port: u16, name: &str) -> String {
    format!(
        "bind 127.0.0.1\nport {port}\ndir {dir}\nlogfile {log}\nsave \"\"\nappendonly no\n\
         repl-diskless-sync-delay 0\nuser default on nopass ~* &* +@all\n\
         user {USER} on >{PASSWORD} {DATA_ACL}\n",
        dir = dir.display(),
        log = dir.join(format!("{name}.log")).display(),
    )
}

fn write_conf(dir: &Path, name: &str, text: &str) -> (PathBuf, PathBuf) {
    let node_dir = dir.join(name);
    std::fs::create_dir_all(&node_dir).unwrap();
    let conf = node_dir.join(format!("{name}.conf"));
    std::fs::write(&conf, text).unwrap();
    (conf, node_dir.join(format!("{name}.log")))
}

async fn wait_pong(server: &Server) {
    let port = server.port;
    settle(
        SETTLE,
        &format!("{} to answer PING", server.addr()),
        || server.log_tail(20),
        || async move { cmd::<String>(port, &["PING"]).await.is_ok() },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------------------------

/// A primary, its replicas and three sentinels (quorum 2, a primary is down after 1 s without
/// an answer).
pub struct Sentinels {
    /// The data nodes; the first was the primary at the start.
    pub data: Vec<Server>,
    /// The sentinels.
    pub sentinels: Vec<Server>,
    dir: tempfile::TempDir,
}

impl Sentinels {
    /// Starts a primary with `replicas` replicas and three sentinels, and waits until every
    /// replica is in sync and every sentinel knows every replica and the other sentinels.
    pub async fn start(replicas: usize) -> Sentinels {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut data = Vec::new();
        let primary_port = free_port();
        for i in 0..=replicas {
            let port = if i == 0 { primary_port } else { free_port() };
            let name = format!("data-{port}");
            let node_dir = dir.path().join(&name);
            let mut text = common_conf(&node_dir, port, &name);
            if i > 0 {
                text.push_str(&format!("replicaof 127.0.0.1 {primary_port}\n"));
            }
            let (conf, log) = write_conf(dir.path(), &name, &text);
            data.push(Server::spawn("redis-server", &conf, port, log));
        }
        for s in &data {
            wait_pong(s).await;
        }
        let set = Sentinels {
            data,
            sentinels: Vec::new(),
            dir,
        };
        for s in &set.data[1..] {
            let port = s.port;
            settle(
                SETTLE,
                &format!("replica {} in sync", s.addr()),
                || set.logs(),
                || async move {
                    cmd::<String>(port, &["INFO", "replication"])
                        .await
                        .ok()
                        .and_then(|i| info_field(&i, "master_link_status"))
                        .as_deref()
                        == Some("up")
                },
            )
            .await;
        }
        let mut set = set;
        for _ in 0..3 {
            let port = free_port();
            let name = format!("sentinel-{port}");
            let node_dir = set.dir.path().join(&name);
            let text = format!(
                "bind 127.0.0.1\nport {port}\ndir {dir}\nlogfile {log}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 4000\n\
                 sentinel parallel-syncs {MASTER} {replicas}\n\
                 user default on nopass ~* &* +@all\n\
                 user {USER} on >{PASSWORD} {SENTINEL_ACL}\n",
                dir = node_dir.display(),
                log = node_dir.join(format!("{name}.log")).display(),
            );
            let (conf, log) = write_conf(set.dir.path(), &name, &text);
            set.sentinels
                .push(Server::spawn("redis-sentinel", &conf, port, log));
        }
        for s in &set.sentinels {
            wait_pong(s).await;
        }
        for s in &set.sentinels {
            let port = s.port;
            settle(
                SETTLE,
                &format!(
                    "sentinel {} to know the replicas and the other sentinels",
                    s.addr()
                ),
                || set.logs(),
                || async move {
                    let Ok(m) =
                        cmd::<BTreeMap<String, String>>(port, &["SENTINEL", "MASTER", MASTER])
                            .await
                    else {
                        return false;
                    };
                    let Ok(rs) = cmd::<Vec<BTreeMap<String, String>>>(
                        port,
                        &["SENTINEL", "REPLICAS", MASTER],
                    )
                    .await
                    else {
                        return false;
                    };
                    m.get("flags").map(String::as_str) == Some("master")
                        && m.get("num-slaves") == Some(&replicas.to_string())
                        && m.get("num-other-sentinels").map(String::as_str) == Some("2")
                        && rs.len() == replicas
                        && rs
                            .iter()
                            .all(|r| r.get("flags").map(String::as_str) == Some("slave"))
                },
            )
            .await;
        }
        set
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn sentinel_list(&self) -> String {
        self.sentinels
            .iter()
            .map(Server::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The sidecar's flags: the URL (user and password) and the sentinels.
    pub fn sidecar_flags(&self) -> Vec<String> {
        vec![
            "--redis-url".into(),
            sidecar_url(),
            "--redis-sentinels".into(),
            self.sentinel_list(),
            "--redis-sentinel-master".into(),
            MASTER.into(),
        ]
    }

    /// The primary the first sentinel that answers names.
    pub async fn primary(&self) -> Option<u16> {
        for s in self.sentinels.iter().filter(|s| s.alive()) {
            if let Ok(Some((_, port))) = cmd::<Option<(String, u16)>>(
                s.port,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER],
            )
            .await
            {
                return Some(port);
            }
        }
        None
    }

    /// The data node on `port`.
    pub fn node(&mut self, port: u16) -> &mut Server {
        self.data
            .iter_mut()
            .find(|s| s.port == port)
            .unwrap_or_else(|| panic!("no data node on {port}"))
    }

    /// The ports of the data nodes still running.
    pub fn live_data(&self) -> Vec<u16> {
        self.data
            .iter()
            .filter(|s| s.alive())
            .map(|s| s.port)
            .collect()
    }

    /// `SENTINEL FAILOVER`: promotes a replica although the primary is up.
    pub async fn force_failover(&self) {
        let r: String = cmd(self.sentinels[0].port, &["SENTINEL", "FAILOVER", MASTER])
            .await
            .expect("SENTINEL FAILOVER");
        assert_eq!(r, "OK");
    }

    /// Waits until every sentinel names a primary other than `old`, and that node says it
    /// is a primary; returns its port.
    pub async fn wait_new_primary(&self, old: u16) -> u16 {
        let found = std::cell::Cell::new(0u16);
        let ports: Vec<u16> = self.sentinels.iter().map(|s| s.port).collect();
        settle(
            SETTLE,
            &format!("the sentinels to promote a replica of {old}"),
            || self.logs(),
            || {
                let ports = ports.clone();
                let found = &found;
                async move {
                    let mut named = Vec::new();
                    for p in &ports {
                        match cmd::<Option<(String, u16)>>(
                            *p,
                            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER],
                        )
                        .await
                        {
                            Ok(Some((_, port))) => named.push(port),
                            _ => return false,
                        }
                    }
                    let new = named[0];
                    if new == old || named.iter().any(|p| *p != new) {
                        return false;
                    }
                    let role: RedisResult<Vec<redis::Value>> = cmd(new, &["ROLE"]).await;
                    let is_primary = matches!(
                        role.as_deref(),
                        Ok([redis::Value::BulkString(r), ..]) if r == b"master"
                    );
                    if is_primary {
                        found.set(new);
                    }
                    is_primary
                }
            },
        )
        .await;
        found.get()
    }

    /// Waits until the node on `port` replicates the primary on `primary`, in sync.
    pub async fn wait_replica_of(&self, port: u16, primary: u16) {
        settle(
            SETTLE,
            &format!("{port} to replicate {primary}"),
            || self.logs(),
            || async move {
                let Ok(info) = cmd::<String>(port, &["INFO", "replication"]).await else {
                    return false;
                };
                info_field(&info, "role").as_deref() == Some("slave")
                    && info_field(&info, "master_port") == Some(primary.to_string())
                    && info_field(&info, "master_link_status").as_deref() == Some("up")
            },
        )
        .await;
    }

    /// Every `ACL LOG` entry of the live data nodes and sentinels.
    pub async fn acl_denials(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in self
            .data
            .iter()
            .chain(&self.sentinels)
            .filter(|s| s.alive())
        {
            out.extend(acl_denials(s.port).await);
        }
        out
    }

    /// The tails of every log, for a failure message.
    pub fn logs(&self) -> String {
        self.data
            .iter()
            .chain(&self.sentinels)
            .map(|s| format!("--- {} ---\n{}", s.addr(), s.log_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

/// A Redis Cluster (node timeout 1 s).
pub struct Cluster {
    /// Its nodes, primaries first as `redis-cli --cluster create` assigned them.
    pub nodes: Vec<Server>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `primaries` primaries with `replicas` replicas each, creates the cluster and
    /// waits until every node says `cluster_state:ok` and every replica is in sync.
    pub async fn start(primaries: usize, replicas: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let total = primaries * (1 + replicas);
        let mut nodes = Vec::new();
        for _ in 0..total {
            let port = free_cluster_port();
            let name = format!("node-{port}");
            let node_dir = dir.path().join(&name);
            let mut text = common_conf(&node_dir, port, &name);
            text.push_str(&format!(
                "cluster-enabled yes\ncluster-config-file {}\ncluster-node-timeout 1000\n\
                 cluster-replica-validity-factor 0\n",
                node_dir.join("nodes.conf").display()
            ));
            let (conf, log) = write_conf(dir.path(), &name, &text);
            nodes.push(Server::spawn("redis-server", &conf, port, log));
        }
        for n in &nodes {
            wait_pong(n).await;
        }
        let cluster = Cluster { nodes, dir };
        let out = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.nodes.iter().map(Server::addr))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_healthy().await;
        cluster
    }

    /// Waits until every live node says `cluster_state:ok`, knows every live node, and every
    /// live replica is in sync with its primary.
    pub async fn wait_healthy(&self) {
        for n in self.nodes.iter().filter(|n| n.alive()) {
            let port = n.port;
            settle(
                SETTLE,
                &format!("{} to be a healthy cluster node", n.addr()),
                || self.logs(),
                || async move {
                    let Ok(info) = cmd::<String>(port, &["CLUSTER", "INFO"]).await else {
                        return false;
                    };
                    if info_field(&info, "cluster_state").as_deref() != Some("ok") {
                        return false;
                    }
                    let Ok(repl) = cmd::<String>(port, &["INFO", "replication"]).await else {
                        return false;
                    };
                    info_field(&repl, "role").as_deref() == Some("master")
                        || info_field(&repl, "master_link_status").as_deref() == Some("up")
                },
            )
            .await;
        }
    }

    /// `127.0.0.1:P1,...`, every node.
    pub fn node_list(&self) -> String {
        self.nodes
            .iter()
            .map(Server::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The sidecar's flags: the URL (user and password) and the nodes.
    pub fn sidecar_flags(&self) -> Vec<String> {
        vec![
            "--redis-url".into(),
            sidecar_url(),
            "--redis-cluster-nodes".into(),
            self.node_list(),
        ]
    }

    fn any_live(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.alive())
            .expect("a live node")
            .port
    }

    /// `CLUSTER KEYSLOT key`.
    pub async fn slot_of(&self, key: &str) -> u16 {
        cmd(self.any_live(), &["CLUSTER", "KEYSLOT", key])
            .await
            .expect("CLUSTER KEYSLOT")
    }

    /// The primary serving `slot`, as the live node `asked` sees it (`CLUSTER SLOTS`).
    pub async fn owner_seen_by(asked: u16, slot: u16) -> Option<u16> {
        let ranges: Vec<redis::Value> = cmd(asked, &["CLUSTER", "SLOTS"]).await.ok()?;
        for r in ranges {
            let redis::Value::Array(items) = r else {
                continue;
            };
            let (Some(redis::Value::Int(lo)), Some(redis::Value::Int(hi))) =
                (items.first(), items.get(1))
            else {
                continue;
            };
            if (*lo..=*hi).contains(&i64::from(slot)) {
                if let Some(redis::Value::Array(primary)) = items.get(2) {
                    if let Some(redis::Value::Int(port)) = primary.get(1) {
                        return u16::try_from(*port).ok();
                    }
                }
            }
        }
        None
    }

    /// The primary serving `slot`, as a live node sees it.
    pub async fn owner(&self, slot: u16) -> u16 {
        Self::owner_seen_by(self.any_live(), slot)
            .await
            .expect("an owner of the slot")
    }

    /// The node on `port`.
    pub fn node(&mut self, port: u16) -> &mut Server {
        self.nodes
            .iter_mut()
            .find(|s| s.port == port)
            .unwrap_or_else(|| panic!("no node on {port}"))
    }

    /// Waits until every live node names a live primary other than `old` for `slot`, the
    /// cluster is healthy again, and returns the new owner.
    pub async fn wait_owner_moved(&self, slot: u16, old: u16) -> u16 {
        let live: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.alive())
            .map(|n| n.port)
            .collect();
        let found = std::cell::Cell::new(0u16);
        settle(
            SETTLE,
            &format!("a replica of {old} to take over slot {slot}"),
            || self.logs(),
            || {
                let live = live.clone();
                let found = &found;
                async move {
                    let mut owners = Vec::new();
                    for p in &live {
                        match Self::owner_seen_by(*p, slot).await {
                            Some(o) => owners.push(o),
                            None => return false,
                        }
                    }
                    let new = owners[0];
                    let agreed = new != old && owners.iter().all(|o| *o == new);
                    if agreed {
                        found.set(new);
                    }
                    agreed
                }
            },
        )
        .await;
        self.wait_healthy().await;
        found.get()
    }

    /// The keys matching `pattern` on each live primary.
    pub async fn keys_by_primary(&self, pattern: &str) -> BTreeMap<u16, Vec<String>> {
        let mut out = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.alive()) {
            let repl: String = cmd(n.port, &["INFO", "replication"]).await.unwrap();
            if info_field(&repl, "role").as_deref() != Some("master") {
                continue;
            }
            let mut keys: Vec<String> = cmd(n.port, &["KEYS", pattern]).await.unwrap();
            keys.sort();
            out.insert(n.port, keys);
        }
        out
    }

    /// Every `ACL LOG` entry of the live nodes.
    pub async fn acl_denials(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in self.nodes.iter().filter(|n| n.alive()) {
            out.extend(acl_denials(n.port).await);
        }
        out
    }

    /// The tails of every log, for a failure message.
    pub fn logs(&self) -> String {
        let _ = &self.dir;
        self.nodes
            .iter()
            .map(|s| format!("--- {} ---\n{}", s.addr(), s.log_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The token version each replica holds, in order.
pub async fn versions(replicas: &[super::Sidecar]) -> Vec<u64> {
    let mut out = Vec::new();
    for sc in replicas {
        out.push(sc.token_version().await);
    }
    out
}

/// Subscriptions to the shared store a replica's metrics count (each one a (re)subscription).
pub fn subscriptions(metrics: &str) -> f64 {
    super::metrics::sum(
        metrics,
        "token_sidecar_shared_store_operations_total",
        &[("op", "subscribe"), ("result", "ok")],
    )
}
