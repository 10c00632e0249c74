//! Helpers of the "Trust" tests of tokens, the state file and the shared store
//! (tests/trust_tokens.rs, tests/trust_shared.rs): today's on-disk and in-Redis formats (what an
//! attacker copies), raw Redis access, a password-protected Redis, a sidecar run under another
//! uid, and counting in sliding windows.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Sidecar, Upstream};

/// The token request budget, as an environment variable: the contract reads every flag from
/// `TOKEN_SIDECAR_<NAME>` too. Today's binary ignores an unknown variable (an unknown flag would
/// stop it at start-up), so a test can show today's storm and still bind the fixed binary.
pub const BUDGET_ENV: &str = "TOKEN_SIDECAR_TOKEN_REQUEST_BUDGET";

/// Profile `default`'s hash in the new key layout (one hash slot per profile).
pub const NEW_KEY: &str = "token-sidecar:{default}";
/// Profile `default`'s hash in today's key layout.
pub const OLD_KEY: &str = "token-sidecar:default";

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// How today's sidecar names the configuration a token set belongs to (the `profile` field).
pub fn profile_key(token_url: &str, client_id: &str, grant: &str) -> String {
    format!("{token_url}|{client_id}|{grant}")
}

/// A token set in today's state-file format (`src/token/state.rs`), valid until
/// `expires_at` (unix seconds).
pub fn state_json(
    profile: &str,
    version: u64,
    access_token: &str,
    refresh_token: Option<&str>,
    expires_at: u64,
) -> serde_json::Value {
    let obtained_at = expires_at.saturating_sub(3600);
    serde_json::json!({
        "format": 1,
        "profile": profile,
        "version": version,
        "access_token": access_token,
        "obtained_at": obtained_at,
        "expires_at": expires_at,
        "refresh_token": refresh_token,
        "refresh_token_expires_at": null,
        "scope": null,
        "obtained_at_ms": obtained_at * 1000,
        "expires_at_ms": expires_at * 1000,
    })
}

/// A token set in today's shared-store format (`data` of the hash: `SharedSet` as JSON).
pub fn shared_set_json(
    profile: &str,
    version: u64,
    access_token: &str,
    refresh_token: Option<&str>,
    expires_at: u64,
) -> String {
    serde_json::json!({
        "state": state_json(profile, version, access_token, refresh_token, expires_at),
        "refreshed_by": "attacker",
        "refreshed_at": unix_now(),
    })
    .to_string()
}

/// Writes `bytes` to a new file with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(bytes).unwrap();
}

/// Replaces `path` by rename (as Kubernetes and editors do), with mode 0600.
pub fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("replacing");
    write_private(&tmp, bytes);
    std::fs::rename(&tmp, path).unwrap();
}

/// Mode bits of `path` itself (a symlink is not followed).
pub fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Sets the mode of `path`.
pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The most instants of `times` that fall in any window of length `window`.
pub fn max_in_window(times: &[Instant], window: Duration) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi].duration_since(sorted[lo]) >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Waits up to `deadline` for `/readyz` to answer 200; the last answer when it never does.
pub async fn ready_within(sc: &Sidecar, deadline: Duration) -> Result<(), String> {
    let end = Instant::now() + deadline;
    loop {
        let (status, body) = sc.admin_get("/readyz").await;
        if status == 200 {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(format!(
                "not ready after {deadline:?}: /readyz {status} {body}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for readiness or panics with the logs.
pub async fn wait_ready(sc: &Sidecar) {
    if let Err(e) = ready_within(sc, super::DEADLINE).await {
        panic!(
            "{e}\nlast log lines:\n{}",
            last_lines(&sc.logs(), 40).join("\n")
        );
    }
}

/// The last `n` of `lines`.
pub fn last_lines(lines: &[String], n: usize) -> Vec<String> {
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.chars().take(600).collect())
        .collect()
}

/// `/token-info` of profile `default`.
pub async fn token_info(sc: &Sidecar) -> serde_json::Value {
    super::json(sc.admin_get("/token-info").await.1.as_bytes())["tokens"]["default"].clone()
}

/// Every `Authorization` value the upstream received, `Bearer ` stripped.
pub fn bearer_tokens(up: &Upstream) -> Vec<String> {
    up.requests()
        .iter()
        .flat_map(|r| r.header_values("authorization"))
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(&v).to_owned())
        .collect()
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A JSON log line at WARN or ERROR that mentions `what`.
pub fn warning_about(sc: &Sidecar, what: &str) -> Option<String> {
    sc.logs()
        .into_iter()
        .find(|l| l.contains(what) && (l.contains("\"WARN\"") || l.contains("\"ERROR\"")))
}

// ---------------------------------------------------------------------------------------------
// Redis, raw
// ---------------------------------------------------------------------------------------------

/// A connection to the Redis at `url`.
pub async fn redis_conn(url: &str) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connect to redis: {e}"))
}

/// Runs one command whose arguments are byte strings.
pub async fn redis_cmd<T: ::redis::FromRedisValue>(
    c: &mut ::redis::aio::MultiplexedConnection,
    args: &[&[u8]],
) -> ::redis::RedisResult<T> {
    let mut cmd = ::redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c).await
}

/// Every key matching `pattern` (SCAN).
pub async fn keys_matching(
    c: &mut ::redis::aio::MultiplexedConnection,
    pattern: &str,
) -> Vec<String> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await
            .unwrap();
        out.extend(keys);
        if next == 0 {
            out.sort();
            out.dedup();
            return out;
        }
        cursor = next;
    }
}

/// Everything a read-only client sees of `key`, as raw bytes (names and values), whatever its
/// type.
pub async fn raw_values(c: &mut ::redis::aio::MultiplexedConnection, key: &str) -> Vec<Vec<u8>> {
    let kind: String = ::redis::cmd("TYPE").arg(key).query_async(c).await.unwrap();
    let k = key.as_bytes();
    let r: ::redis::RedisResult<Vec<Vec<u8>>> = match kind.as_str() {
        "string" => redis_cmd::<Vec<u8>>(c, &[b"GET", k]).await.map(|v| vec![v]),
        "hash" => redis_cmd(c, &[b"HGETALL", k]).await,
        "list" => redis_cmd(c, &[b"LRANGE", k, b"0", b"-1"]).await,
        "set" => redis_cmd(c, &[b"SMEMBERS", k]).await,
        "zset" => redis_cmd(c, &[b"ZRANGE", k, b"0", b"-1"]).await,
        "none" => Ok(Vec::new()),
        other => Ok(vec![format!("<type {other}>").into_bytes()]),
    };
    r.unwrap_or_else(|e| panic!("read {key}: {e}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A `redis-server` with `requirepass`, on a free loopback port, stopped on drop.
pub struct PassRedis {
    child: Child,
    port: u16,
    password: String,
    _dir: tempfile::TempDir,
}

impl PassRedis {
    /// Starts it.
    pub fn start(password: &str) -> PassRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir.path())
            .arg("--requirepass")
            .arg(password)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is required");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < end, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        PassRedis {
            child,
            port,
            password: password.to_owned(),
            _dir: dir,
        }
    }

    /// `redis://:PASSWORD@127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}/0", self.password, self.port)
    }
}

impl Drop for PassRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// A sidecar under another uid
// ---------------------------------------------------------------------------------------------

/// A copy of the binary that `uid` can execute: in a directory of mode 0755 (the temporary
/// directories are 0700), mode 0755 itself.
pub fn executable_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let bin = dir.path().join("token-sidecar");
    std::fs::copy(super::sidecar::binary(), &bin).unwrap();
    chmod(&bin, 0o755);
    (dir, bin)
}

/// A process spawned by [`spawn_as`]; killed on drop.
pub struct Detached {
    /// The child.
    pub child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for Detached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Detached {
    /// Stderr lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits for the JSON log line `message` and returns its `addr`.
    pub async fn wait_addr(&mut self, message: &str) -> SocketAddr {
        let end = Instant::now() + super::DEADLINE;
        loop {
            let found = self.logs().iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"] == message)
                    .then(|| v["addr"].as_str().and_then(|a| a.parse().ok()))
                    .flatten()
            });
            if let Some(a) = found {
                return a;
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "exited with {st} before logging {message:?}:\n{}",
                    self.logs().join("\n")
                );
            }
            assert!(
                Instant::now() < end,
                "no {message:?} log line:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Spawns `program args` as `uid`/`gid` with a clean `TOKEN_SIDECAR_*` environment, stderr
/// collected.
pub fn spawn_as(
    uid: u32,
    gid: u32,
    program: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Detached {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TOKEN_SIDECAR_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(envs.iter().copied())
        .current_dir("/")
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn as another uid");
    let stderr = child.stderr.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let l = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).split(b'\n') {
            match line {
                Ok(b) => l
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&b).into_owned()),
                Err(_) => break,
            }
        }
    });
    Detached { child, logs }
}

/// The owner uid of `/proc/PID/<name>`.
pub fn proc_owner(pid: u32, name: &str) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/{name}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/{name}: {e}"))
        .uid()
}
