//! A real `redis-server` on a free loopback port, stopped on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) Redis server.
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Redis {
    /// Starts `redis-server` without persistence on a free port.
    pub fn start() -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is required (scripts/test.sh installs it)");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < end, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (its data is lost, as after a crash without persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Redis as production runs it: TLS, ACL users, a configuration of its own
// ---------------------------------------------------------------------------------------------

/// A private CA, a server certificate for `127.0.0.1`/`localhost` and a client certificate
/// signed by it, as PEM files (for `tls-*-file` and `--redis-ca-file` / `--redis-client-*`).
pub struct RedisTlsFiles {
    dir: tempfile::TempDir,
}

impl RedisTlsFiles {
    /// Makes fresh keys and certificates (rcgen, ECDSA P-256).
    pub fn generate() -> RedisTlsFiles {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, pem: &str| std::fs::write(dir.path().join(name), pem).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "token-sidecar test Redis CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        write("ca.pem", &ca.pem());
        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let mut p = CertificateParams::new(names).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (cert, key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "127.0.0.1",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        write("server.pem", &cert);
        write("server-key.pem", &key);
        let (cert, key) = leaf(
            Vec::new(),
            "token-sidecar",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        write("client.pem", &cert);
        write("client-key.pem", &key);
        RedisTlsFiles { dir }
    }

    /// A file of the set: `ca.pem`, `server.pem`, `server-key.pem`, `client.pem`,
    /// `client-key.pem`.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// Builds a `redis-server` with a configuration file: no persistence, loopback only, a unix
/// socket and an `admin` user (all rights) for the test's own commands, and whatever lines
/// are added (ACL users, `user default off`, TLS).
pub struct RedisBuilder {
    lines: Vec<String>,
    tls: bool,
}

impl Default for RedisBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisBuilder {
    /// No persistence (`save ""`, `appendonly no`): a restart loses everything.
    pub fn new() -> RedisBuilder {
        RedisBuilder {
            lines: Vec::new(),
            tls: false,
        }
    }

    /// One more line of `redis.conf` (an ACL `user`, `user default off`, ...).
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.lines.push(line.into());
        self
    }

    /// TLS only (`port 0`, `tls-port`), with the certificates of `files` and
    /// `tls-auth-clients` set to `auth_clients` (`yes`, `no`, `optional`).
    pub fn tls(mut self, files: &RedisTlsFiles, auth_clients: &str) -> Self {
        self.tls = true;
        for (key, name) in [
            ("tls-cert-file", "server.pem"),
            ("tls-key-file", "server-key.pem"),
            ("tls-ca-cert-file", "ca.pem"),
        ] {
            self.lines
                .push(format!("{key} {}", files.path(name).display()));
        }
        self.lines.push(format!("tls-auth-clients {auth_clients}"));
        self
    }

    /// Starts it on a free port (the TLS port with [`tls`](Self::tls)).
    pub fn start(self) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let admin_password = format!("admin-{:016x}", rand::random::<u64>());
        let socket = dir.path().join("redis.sock");
        let mut conf = vec![
            "bind 127.0.0.1".to_owned(),
            "save \"\"".into(),
            "appendonly no".into(),
            format!("dir {}", dir.path().display()),
            format!("logfile {}", dir.path().join("redis.log").display()),
            format!("unixsocket {}", socket.display()),
            "unixsocketperm 700".into(),
            format!("user admin on >{admin_password} ~* &* +@all"),
        ];
        if self.tls {
            conf.push("port 0".into());
            conf.push(format!("tls-port {port}"));
        } else {
            conf.push(format!("port {port}"));
        }
        conf.extend(self.lines);
        let conf_path = dir.path().join("redis.conf");
        std::fs::write(&conf_path, conf.join("\n") + "\n").unwrap();
        let mut r = RedisServer {
            child: None,
            port,
            tls: self.tls,
            socket,
            conf: conf_path,
            admin_password,
            dir,
        };
        r.spawn();
        r
    }
}

/// A `redis-server` started by [`RedisBuilder`], killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    tls: bool,
    socket: std::path::PathBuf,
    conf: std::path::PathBuf,
    admin_password: String,
    dir: tempfile::TempDir,
}

impl RedisServer {
    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new("redis-server")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is required (scripts/test.sh installs it)");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let end = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err()
            || TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err()
        {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("redis-server exited with {st}: {}", self.log());
            }
            assert!(
                Instant::now() < end,
                "redis-server did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Its port (the TLS port when it serves TLS).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    /// `redis://` or `rediss://` `[USER:PASSWORD@]127.0.0.1:PORT/0`.
    pub fn url(&self, credentials: Option<(&str, &str)>) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = credentials.map_or(String::new(), |(u, p)| format!("{u}:{p}@"));
        format!("{scheme}://{auth}127.0.0.1:{}/0", self.port)
    }

    /// A connection as `admin`, through the unix socket (no TLS needed).
    pub async fn admin(&self) -> ::redis::aio::MultiplexedConnection {
        let url = format!(
            "redis+unix://{}?user=admin&pass={}",
            self.socket.display(),
            self.admin_password
        );
        ::redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection to redis-server")
    }

    /// Kills the server: its data is lost, as after a crash without persistence.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills it and starts it again, empty, on the same port with the same configuration.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Freezes the server (`SIGSTOP`): connections stay open and nothing answers, as
    /// behind a network partition.
    pub fn freeze(&self) {
        super::procfs::signal(self.pid(), "STOP");
    }

    /// Lets a frozen server go on (`SIGCONT`).
    pub fn thaw(&self) {
        super::procfs::signal(self.pid(), "CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
