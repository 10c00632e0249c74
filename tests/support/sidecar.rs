//! The real `token-sidecar` binary as a subprocess on port 0.
//!
//! Every stderr line is kept (a reader thread) so tests can find the bound ports and assert on
//! the logs. The child is killed when the handle is dropped.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::Client;
use super::{wait_until, DEADLINE};

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_token-sidecar")
}

/// The same binary built by `cargo build --release` (`<target>/release/token-sidecar`),
/// whatever profile the tests were built with: for tests that run many sidecars at once
/// (`tests/scale.rs`), where a debug build's memory and CPU would measure the build, not the
/// sidecar. `None` when it has not been built, or when it is older than one of the sources it
/// is built from (`src/`, `Cargo.toml`, `Cargo.lock`): a stale release build would test
/// yesterday's code.
pub fn release_binary() -> Option<std::path::PathBuf> {
    let built = std::path::Path::new(binary());
    let target = built.parent()?.parent()?;
    let release = target
        .join("release")
        .join(built.file_name().unwrap_or_default());
    let built_at = std::fs::metadata(&release).ok()?.modified().ok()?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let newest_source = [root.join("Cargo.toml"), root.join("Cargo.lock")]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok()?.modified().ok())
        .chain(newest_modification(&root.join("src")))
        .max()?;
    (built_at >= newest_source).then_some(release)
}

/// When the most recently modified file under `dir` was modified.
fn newest_modification(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let at = if meta.is_dir() {
            newest_modification(&entry.path())
        } else {
            meta.modified().ok()
        };
        newest = newest.max(at);
    }
    newest
}

/// A command for the binary with a clean environment: no inherited `TOKEN_SIDECAR_*`.
pub fn command() -> Command {
    command_for(OsStr::new(binary()))
}

/// A command for `program` (a build of the binary) with a clean environment.
fn command_for(program: &OsStr) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TOKEN_SIDECAR_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// What a finished `check` (or other one-shot command) printed.
#[derive(Debug)]
pub struct Output {
    /// Exit code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Both streams.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs the binary with `args` and `envs` to completion.
pub fn run_once<I, S>(args: I, envs: &[(&str, &str)]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = command();
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run token-sidecar");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The environment a test sidecar of one route and profile starts with: debug logs, and a token
/// request budget for tokens that live seconds rather than an hour (the default, 5 a minute,
/// would hold back the refresh cycles most tests drive). Tests of the budget set their own
/// (`.env("TOKEN_SIDECAR_TOKEN_REQUEST_BUDGET", ..)` or the flag, which wins). Sidecars
/// configured by a file (`bare`) set theirs in the file, per profile.
fn test_envs() -> Vec<(OsString, OsString)> {
    vec![
        ("TOKEN_SIDECAR_LOG".into(), "debug".into()),
        (
            "TOKEN_SIDECAR_TOKEN_REQUEST_BUDGET".into(),
            "1000/60s".into(),
        ),
    ]
}

/// Builds the command line of a sidecar.
#[derive(Debug, Clone)]
pub struct SidecarBuilder {
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    /// Another build of the binary ([`release_binary`]); `None`: [`binary`].
    program: Option<OsString>,
}

impl SidecarBuilder {
    /// `run --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --upstream <upstream>`, two
    /// worker threads, `TOKEN_SIDECAR_LOG=debug`.
    pub fn new(upstream: &str) -> Self {
        SidecarBuilder {
            args: [
                "run",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--threads",
                "2",
                "--upstream",
                upstream,
            ]
            .iter()
            .map(OsString::from)
            .collect(),
            envs: test_envs(),
            program: None,
        }
    }

    /// Just `run`, two worker threads and `TOKEN_SIDECAR_LOG=debug`: listeners and routes come
    /// from further arguments (a config file).
    pub fn bare() -> Self {
        SidecarBuilder {
            args: ["run", "--threads", "2"]
                .iter()
                .map(OsString::from)
                .collect(),
            envs: vec![("TOKEN_SIDECAR_LOG".into(), "debug".into())],
            program: None,
        }
    }

    /// No arguments at all (another subcommand, such as `dev`), `TOKEN_SIDECAR_LOG=debug`.
    pub fn raw() -> Self {
        SidecarBuilder {
            args: Vec::new(),
            envs: vec![("TOKEN_SIDECAR_LOG".into(), "debug".into())],
            program: None,
        }
    }

    /// `--grant static --static-token <token>`.
    pub fn static_token(self, token: &str) -> Self {
        self.args(["--grant", "static", "--static-token", token])
    }

    /// `--grant file --token-file <path>`.
    pub fn token_file(self, path: &std::path::Path) -> Self {
        self.args(["--grant", "file"]).arg("--token-file").arg(path)
    }

    /// One more argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// More arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Runs `program` (another build of the binary, e.g. [`release_binary`]) instead of the
    /// one cargo built for these tests.
    pub fn program(mut self, program: impl AsRef<OsStr>) -> Self {
        self.program = Some(program.as_ref().to_owned());
        self
    }

    /// `--threads n` instead of the default two worker threads.
    pub fn threads(mut self, n: usize) -> Self {
        match self.args.iter().position(|a| a == "--threads") {
            Some(i) if i + 1 < self.args.len() => self.args[i + 1] = n.to_string().into(),
            _ => self.args.extend(["--threads".into(), n.to_string().into()]),
        }
        self
    }

    /// An environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.retain(|(key, _)| key != k);
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Starts the sidecar and waits until both listeners are bound.
    pub async fn start(self) -> Sidecar {
        let mut cmd = match &self.program {
            Some(p) => command_for(p),
            None => command(),
        };
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn token-sidecar");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr_closed = Arc::new(AtomicBool::new(false));
        {
            let logs = logs.clone();
            let stderr_closed = stderr_closed.clone();
            std::thread::spawn(move || {
                // Split on bytes: a line that is not UTF-8 is kept (lossily), not the end.
                for line in BufReader::new(stderr).split(b'\n') {
                    match line {
                        Ok(l) => logs
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&l).into_owned()),
                        Err(_) => break,
                    }
                }
                stderr_closed.store(true, Ordering::SeqCst);
            });
        }
        let mut sidecar = Sidecar {
            child,
            proxy_addr: "0.0.0.0:0".parse().unwrap(),
            admin_addr: "0.0.0.0:0".parse().unwrap(),
            logs,
            stderr_closed,
            exited: None,
        };
        let end = Instant::now() + DEADLINE;
        loop {
            let proxy = sidecar.find_addr("listening");
            let admin = sidecar.find_addr("admin listening");
            if let (Some(p), Some(a)) = (proxy, admin) {
                sidecar.proxy_addr = p;
                sidecar.admin_addr = a;
                return sidecar;
            }
            if let Some(status) = sidecar.child.try_wait().unwrap() {
                // Let the reader thread drain what is left.
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "token-sidecar exited with {status} before listening; stderr:\n{}",
                    sidecar.logs().join("\n")
                );
            }
            if Instant::now() > end {
                panic!(
                    "token-sidecar did not report its listeners; stderr:\n{}",
                    sidecar.logs().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A running sidecar process.
#[derive(Debug)]
pub struct Sidecar {
    child: Child,
    /// The default route's bound address.
    pub proxy_addr: SocketAddr,
    /// The admin listener's bound address.
    pub admin_addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// Set by the reader thread once stderr reached its end (every line is in `logs`).
    stderr_closed: Arc<AtomicBool>,
    exited: Option<ExitStatus>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Sidecar {
    /// Every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Stderr lines parsed as JSON (lines that are not JSON are skipped).
    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Whether a JSON log line has `message`.
    pub fn has_log(&self, message: &str) -> bool {
        self.json_logs().iter().any(|v| v["message"] == message)
    }

    /// Waits for a JSON log line with `message`.
    pub async fn wait_for_log(&self, message: &str) {
        wait_until(DEADLINE, &format!("log line {message:?}"), || {
            self.has_log(message)
        })
        .await;
    }

    fn find_addr(&self, message: &str) -> Option<SocketAddr> {
        self.json_logs()
            .iter()
            .find(|v| v["message"] == message)
            .and_then(|v| v["addr"].as_str().and_then(|a| a.parse().ok()))
    }

    /// The bound address of route `name`'s listener.
    pub fn route_addr(&self, name: &str) -> SocketAddr {
        self.json_logs()
            .iter()
            .find(|v| v["message"] == "listening" && v["route"] == name)
            .and_then(|v| v["addr"].as_str().and_then(|a| a.parse().ok()))
            .unwrap_or_else(|| panic!("no listener logged for route {name}"))
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        if let Some(st) = self.child.try_wait().unwrap() {
            self.exited = Some(st);
        }
        self.exited.is_some()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://<proxy>` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy_addr)
    }

    /// `http://<admin>` + `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// GET on the admin listener: status and body as text.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let r = Client::http1().get(&self.admin_url(path)).await;
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }

    /// Waits until `/readyz` answers 200 (the sidecar holds a valid token).
    pub async fn wait_ready(&self) {
        let end = Instant::now() + DEADLINE;
        while self.admin_get("/readyz").await.0 != 200 {
            assert!(
                Instant::now() < end,
                "not ready after {DEADLINE:?}: {}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `/token-info` of the profile `default`.
    pub async fn token_info(&self) -> serde_json::Value {
        super::json(self.admin_get("/token-info").await.1.as_bytes())["tokens"]["default"].clone()
    }

    /// The version of the `default` profile's token (0 when none).
    pub async fn token_version(&self) -> u64 {
        self.token_info().await["version"].as_u64().unwrap_or(0)
    }

    /// `POST /refresh` on the admin listener.
    pub async fn post_refresh(&self) -> super::Resp {
        Client::http1()
            .send(
                http::Request::post(self.admin_url("/refresh"))
                    .body(super::client::empty())
                    .unwrap(),
            )
            .await
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let (status, body) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "/metrics");
        body
    }

    /// Sends SIGTERM (through `kill`, to stay free of libc).
    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM failed");
    }

    /// Waits up to `deadline` for the process to exit, then for its last stderr lines to have
    /// been read: the process may exit before the reader thread has caught up, and its final
    /// lines ("shutdown complete") are what tests look for after the exit.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.exited = Some(st);
                self.wait_for_stderr_closed().await;
                return st;
            }
            if Instant::now() > end {
                panic!(
                    "token-sidecar did not exit within {deadline:?}; stderr:\n{}",
                    self.logs().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the reader thread has read stderr to its end (after the process exited).
    async fn wait_for_stderr_closed(&self) {
        wait_until(
            DEADLINE,
            "the sidecar's stderr to be read to its end",
            || self.stderr_closed.load(Ordering::SeqCst),
        )
        .await;
    }

    /// Panics when `secret` appears in any stderr line.
    pub fn assert_logs_free_of(&self, secret: &str) {
        let logs = self.logs();
        assert!(!logs.is_empty(), "no log lines captured");
        for line in &logs {
            assert!(!line.contains(secret), "secret in a log line: {line}");
        }
    }
}
