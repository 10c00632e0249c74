//! How the shared store reaches Redis, as production runs it: one server (`redis://`,
//! `rediss://` with a private CA and a client certificate), a Sentinel-managed primary that
//! may fail over, or a Redis Cluster. The token store and the rate limits both connect
//! through a [`Connector`].
//!
//! - **Sentinel**: every (re)connection asks the sentinels for the current primary and checks
//!   its role, so a connection dropped by a failover reconnects to the new primary. A failover
//!   that leaves the old primary running (`SENTINEL FAILOVER`, a partition) does not drop the
//!   connections to it: it stays a writable primary until the sentinels reconfigure it,
//!   seconds later, and then resyncs from the new one, losing what was written to it
//!   meanwhile. So before each write the store checks that the sentinels still name the
//!   server its connection reaches ([`Connector::is_current`]), and reconnects when they
//!   name another. Writes stay fenced by version across it.
//! - **Cluster**: every key of a profile shares one hash tag, so each script runs on the node
//!   of that slot; the cluster client follows slot moves and node loss. Notifications use the
//!   cluster's broadcast: a `PUBLISH` on any node reaches a subscriber on any other, so the
//!   subscriber connects to the first node that answers.

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    Pipeline, RedisFuture, RedisResult, TlsCertificates, Value,
};

use super::SharedError;
use crate::secret::Secret;
use crate::tls::ClientCertFiles;

/// Where the shared store is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One server: the URL's host.
    Single,
    /// The primary the sentinels name for `master`.
    Sentinel {
        /// The sentinels' `host:port`.
        sentinels: Vec<String>,
        /// The name of the monitored primary.
        master: String,
    },
    /// A Redis Cluster reached through any of `nodes` (`host:port`).
    Cluster {
        /// Some nodes of the cluster.
        nodes: Vec<String>,
    },
}

/// TLS to Redis beyond the URL's `rediss://`: a private CA, a client certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// PEM CA certificates trusted instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// A client certificate, when the server asks for one.
    pub client_cert: Option<ClientCertFiles>,
}

/// Opens connections to the shared store, whatever its topology.
pub struct Connector {
    kind: Kind,
}

enum Kind {
    Single(Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    Cluster {
        client: redis::cluster::ClusterClient,
        /// One plain client per listed node, for the subscription.
        nodes: Vec<Client>,
    },
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Single(_) => "single",
            Kind::Sentinel(_) => "sentinel",
            Kind::Cluster { .. } => "cluster",
        };
        f.debug_struct("Connector").field("kind", &kind).finish()
    }
}

/// A connection to the shared store: multiplexed to one server, or to the cluster.
#[derive(Clone)]
pub enum Conn {
    /// One server.
    Single(MultiplexedConnection),
    /// The primary the sentinels named when it was opened, and its address.
    Sentinel(MultiplexedConnection, ConnectionAddr),
    /// The cluster, routing each command by its key's slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) | Conn::Sentinel(c, _) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) | Conn::Sentinel(c, _) => {
                c.req_packed_commands(pipeline, offset, count)
            }
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) | Conn::Sentinel(c, _) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

fn invalid(what: &str, e: &redis::RedisError) -> SharedError {
    // The kind only: a URL's parse error may quote the URL, password included.
    SharedError(format!("{what} ({:?})", e.kind()))
}

/// The certificates of `tls`, read now.
fn certificates(tls: &RedisTls) -> Result<Option<TlsCertificates>, SharedError> {
    if tls.ca_file.is_none() && tls.client_cert.is_none() {
        return Ok(None);
    }
    let read = |p: &PathBuf, what: &str| {
        std::fs::read(p)
            .map_err(|e| SharedError(format!("cannot read the {what} {}: {e}", p.display())))
    };
    let root_cert = tls
        .ca_file
        .as_ref()
        .map(|p| read(p, "Redis CA file"))
        .transpose()?;
    let client_tls = match &tls.client_cert {
        Some(c) => Some(redis::ClientTlsConfig {
            client_cert: read(&c.cert, "Redis client certificate")?,
            client_key: read(&c.key, "Redis client key")?,
        }),
        None => None,
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// `host:port` as a connection address, TLS or not.
fn node_addr(node: &str, tls: bool) -> Result<ConnectionAddr, SharedError> {
    let (host, port) = node
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| SharedError(format!("`{node}` is not host:port")))?;
    Ok(if tls {
        ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_owned(), port)
    })
}

impl Connector {
    /// A connector for `topology`: the URL gives the scheme (`rediss://` for TLS), the user, the
    /// password and the database, and for one server its host.
    pub fn new(url: &Secret, topology: &Topology, tls: &RedisTls) -> Result<Self, SharedError> {
        let info: ConnectionInfo = url
            .expose()
            .into_connection_info()
            .map_err(|e| invalid("invalid redis URL", &e))?;
        let certs = certificates(tls)?;
        let uses_tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        let settings = info.redis_settings().clone();
        let kind = match topology {
            Topology::Single => Kind::Single(
                match certs {
                    Some(c) => Client::build_with_tls(info, c),
                    None => Client::open(info),
                }
                .map_err(|e| invalid("invalid redis URL", &e))?,
            ),
            Topology::Sentinel { sentinels, master } => {
                let addrs = sentinels
                    .iter()
                    .map(|s| node_addr(s, uses_tls))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
                    .map_err(|e| invalid("invalid Sentinel settings", &e))?
                    .set_client_to_redis_db(settings.db());
                if let Some(u) = settings.username() {
                    b = b.set_client_to_redis_username(u);
                }
                if let Some(p) = settings.password() {
                    // The sentinels take the same credentials as the data nodes (as a
                    // `requirepass` / ACL set on both does).
                    b = b
                        .set_client_to_redis_password(p)
                        .set_client_to_sentinel_password(p);
                    if let Some(u) = settings.username() {
                        b = b.set_client_to_sentinel_username(u);
                    }
                }
                if uses_tls {
                    b = b
                        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
                    if let Some(c) = &certs {
                        b = b
                            .set_client_to_redis_certificates(c.clone())
                            .set_client_to_sentinel_certificates(c.clone());
                    }
                }
                Kind::Sentinel(tokio::sync::Mutex::new(
                    b.build()
                        .map_err(|e| invalid("invalid Sentinel settings", &e))?,
                ))
            }
            Topology::Cluster { nodes } => {
                let infos = nodes
                    .iter()
                    .map(|n| {
                        node_addr(n, uses_tls)?
                            .into_connection_info()
                            .map(|i| i.set_redis_settings(settings.clone()))
                            .map_err(|e| invalid("invalid cluster node", &e))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let mut b = ClusterClientBuilder::new(infos.clone())
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(2));
                if let Some(u) = settings.username() {
                    b = b.username(u);
                }
                if let Some(p) = settings.password() {
                    b = b.password(p);
                }
                if uses_tls {
                    b = b.tls(redis::TlsMode::Secure);
                    if let Some(c) = &certs {
                        b = b.certs(c.clone());
                    }
                }
                let client = b
                    .build()
                    .map_err(|e| invalid("invalid cluster settings", &e))?;
                let nodes = infos
                    .into_iter()
                    .map(|i| match &certs {
                        Some(c) => Client::build_with_tls(i, c.clone()),
                        None => Client::open(i),
                    })
                    .collect::<RedisResult<Vec<_>>>()
                    .map_err(|e| invalid("invalid cluster node", &e))?;
                Kind::Cluster { client, nodes }
            }
        };
        Ok(Connector { kind })
    }

    /// A new connection, within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> RedisResult<Conn> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        match &self.kind {
            Kind::Single(c) => Ok(Conn::Single(
                c.get_multiplexed_async_connection_with_config(&cfg).await?,
            )),
            Kind::Sentinel(s) => {
                // Asks the sentinels for the current primary, and checks it is one.
                let client = s.lock().await.async_get_client().await?;
                let addr = client.get_connection_info().addr().clone();
                Ok(Conn::Sentinel(
                    client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?,
                    addr,
                ))
            }
            Kind::Cluster { client, .. } => Ok(Conn::Cluster(client.get_async_connection().await?)),
        }
    }

    /// Whether `conn` still reaches the primary: with Sentinel, whether the sentinels name
    /// (and the node confirms with `ROLE`) the server it was opened to. One lookup, as at a
    /// reconnection: the store asks before each write, not on the request path. Other
    /// topologies: always (a single server is what the URL names; the cluster client follows
    /// the slots' owners itself).
    pub async fn is_current(&self, conn: &Conn) -> RedisResult<bool> {
        match (&self.kind, conn) {
            (Kind::Sentinel(s), Conn::Sentinel(_, addr)) => {
                let client = s.lock().await.async_get_client().await?;
                Ok(client.get_connection_info().addr() == addr)
            }
            _ => Ok(true),
        }
    }

    /// A connection for a subscription.
    pub async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        match &self.kind {
            Kind::Single(c) => c.get_async_pubsub().await,
            Kind::Sentinel(s) => {
                let client = s.lock().await.async_get_client().await?;
                client.get_async_pubsub().await
            }
            Kind::Cluster { nodes, .. } => {
                // The cluster broadcasts PUBLISH to every node: any node will do.
                let mut last = None;
                for n in nodes {
                    match n.get_async_pubsub().await {
                        Ok(ps) => return Ok(ps),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Io, "no cluster node listed"))
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_host_and_port() {
        assert_eq!(
            node_addr("redis-0.redis:6379", false).unwrap(),
            ConnectionAddr::Tcp("redis-0.redis".into(), 6379)
        );
        assert_eq!(
            node_addr("[::1]:7000", false).unwrap(),
            ConnectionAddr::Tcp("::1".into(), 7000)
        );
        for bad in ["redis", "redis:port", ":6379", "host:70000"] {
            assert!(node_addr(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_url_is_refused_without_being_quoted() {
        let e = Connector::new(
            &Secret::new("redis://:hunter2@[bad"),
            &Topology::Single,
            &RedisTls::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let c = Connector::new(
            &Secret::new("redis://:pw@127.0.0.1:1/2"),
            &Topology::Cluster {
                nodes: vec!["127.0.0.1:7000".into(), "127.0.0.1:7001".into()],
            },
            &RedisTls::default(),
        )
        .unwrap();
        assert_eq!(format!("{c:?}"), "Connector { kind: \"cluster\" }");
    }
}
