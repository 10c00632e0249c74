//! Wiring: builds the token profiles, routes and listeners from a [`Config`] and runs them
//! until shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::AdminState;
use crate::config::{Config, Grant};
use crate::metrics::{Metrics, RouteMetrics};
use crate::proxy::pool::ClientSettings;
use crate::proxy::pool::{Pool, PoolLimits};
use crate::proxy::replay::ReplayBudget;
use crate::proxy::{Route, RouteSettings};
use crate::ratelimit::shared::SharedLimits;
use crate::ratelimit::RouteLimits;
use crate::server::{self, ListenerSettings};
use crate::token::file::TokenFile;
use crate::token::refresher::Refresher;
use crate::token::source::Fixed;
use crate::token::{Profile, TokenSource, TokenStore, Trigger};

/// Idle upstream connections kept per route; more are closed when they become idle.
const MAX_IDLE_CONNECTIONS: usize = 1024;

/// The admin endpoints take no large requests: a small head (hyper's smallest read buffer)
/// keeps a flood of connections from the pod network cheap.
const ADMIN_MAX_HEADER_BYTES: usize = 8 * 1024;
/// Time an admin client has to send its request head (probes and scrapes send it at once).
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The upstream client could not be built.
    #[error("route {route}: {source}")]
    Client {
        /// The route.
        route: String,
        /// Why.
        source: crate::proxy::pool::ClientError,
    },
    /// A token source could not be set up.
    #[error("token {token}: {message}")]
    Token {
        /// The profile.
        token: String,
        /// Why.
        message: String,
    },
}

/// A started sidecar.
#[derive(Debug)]
pub struct Running {
    /// The bound address of each route's listener, in configuration order.
    pub proxy_addrs: Vec<SocketAddr>,
    /// The bound admin address.
    pub admin_addr: SocketAddr,
    /// What the admin endpoints see: routes, profiles, metrics.
    pub shared: Arc<AdminState>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish within `grace`, stops background tasks.
    /// Returns whether everything finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }

    /// A token that fires when shutdown starts.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// A route's rate limits (none with `--rate-limit-mode off`), shared through Redis when
/// replicas share a store; the follower of the other replicas' blocks runs in `tracker`.
fn route_limits(
    rc: &crate::config::RouteConfig,
    metrics: &Metrics,
    shared: Option<&crate::config::SharedConfig>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<RouteLimits>>, String> {
    if rc.limits.mode == crate::config::RateLimitMode::Off {
        return Ok(None);
    }
    let shared = shared
        .map(|sc| SharedLimits::new(sc, &rc.token, &rc.name, metrics.clone()).map(Arc::new))
        .transpose()?;
    let limits = Arc::new(RouteLimits::new(
        &rc.name,
        rc.limits.clone(),
        metrics.clone(),
        shared.clone(),
        tracker.clone(),
        shutdown.clone(),
    ));
    if let Some(s) = shared {
        tracker.spawn(s.follow(limits.clone(), shutdown.clone()));
    }
    Ok(Some(limits))
}

/// Starts every listener and background task of `config`.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    // Token profiles, each rendering the header prefixes of the routes that use it.
    let mut profiles = BTreeMap::new();
    for (name, tc) in &config.tokens {
        let mut prefixes: Vec<String> = config
            .routes
            .iter()
            .filter(|r| &r.token == name)
            .map(|r| r.header_prefix.clone())
            .collect();
        prefixes.sort();
        prefixes.dedup();
        let store =
            Arc::new(TokenStore::new(name.as_str(), prefixes).with_metrics(metrics.clone()));
        let start_error = |message: String| StartError::Token {
            token: name.clone(),
            message,
        };
        let source: Arc<dyn TokenSource> = match &tc.grant {
            Grant::Static { token } => Arc::new(
                Fixed::publish(&store, token.clone()).map_err(|e| start_error(e.to_string()))?,
            ),
            Grant::File {
                path,
                poll_interval,
            } => {
                let file = Arc::new(TokenFile::new(path.clone(), *poll_interval, store.clone()));
                file.reload(Trigger::Startup);
                tracker.spawn(file.clone().run(shutdown.clone()));
                file
            }
            _ => {
                let tc = crate::token::oauth::discovery::resolve(tc)
                    .await
                    .map_err(start_error)?;
                let refresher = Arc::new(
                    Refresher::new(&tc, store.clone(), metrics.clone(), config.shared.as_ref())
                        .map_err(start_error)?,
                );
                tracker.spawn(refresher.clone().run(shutdown.clone(), tracker.clone()));
                refresher
            }
        };
        profiles.insert(
            name.clone(),
            Arc::new(Profile {
                name: name.clone(),
                grant_kind: tc.grant.kind(),
                store,
                source,
            }),
        );
    }

    // Routes and their listeners. Every route's replay copies count against one budget.
    let replay_budget =
        ReplayBudget::new(config.retry_body_budget, metrics.retry_body_bytes.clone());
    let mut routes = Vec::new();
    let mut proxy_addrs = Vec::new();
    let mut listeners = Vec::new();
    for rc in &config.routes {
        let profile = profiles[&rc.token].clone();
        // A token that cannot be renewed (a static one): a 401 is passed through as it is.
        let refresh_on_401 = rc.refresh_on_401 && profile.source.can_renew();
        let store = profile.store.clone();
        let pool = Pool::new(
            &rc.upstream,
            &ClientSettings {
                connect_timeout: rc.connect_timeout,
                pool_idle_timeout: rc.upstream_idle_timeout,
                ca_file: rc.upstream_ca_file.clone(),
                client_cert: rc.upstream_client_cert.clone(),
            },
            PoolLimits {
                max_idle: MAX_IDLE_CONNECTIONS,
                max_connections: rc.max_upstream_connections,
            },
            metrics
                .upstream_connections
                .with_label_values(&[rc.name.as_str()]),
        )
        .map_err(|source| StartError::Client {
            route: rc.name.clone(),
            source,
        })?;
        let limits = route_limits(rc, &metrics, config.shared.as_ref(), &tracker, &shutdown)
            .map_err(|message| StartError::Token {
                token: rc.token.clone(),
                message,
            })?;
        let route = Arc::new(Route::new(
            RouteSettings {
                name: rc.name.clone(),
                upstream: rc.upstream.clone(),
                store,
                header_name: rc.header.clone(),
                header_prefix: rc.header_prefix.clone(),
                upstream_timeout: rc.upstream_timeout,
                max_request_header_bytes: rc.max_request_header_bytes,
                profile,
                refresh_on_401,
                retry_body_limit: rc.retry_body_limit,
                replay_budget: replay_budget.clone(),
                allowed: crate::proxy::origin::Allowed {
                    hosts: rc.allowed_hosts.clone(),
                    origins: rc.allowed_origins.clone(),
                },
                tasks: tracker.clone(),
                limits,
            },
            pool,
            RouteMetrics::new(&metrics, &rc.name),
        ));
        let listener = TcpListener::bind(rc.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: rc.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: rc.listen,
            source,
        })?;
        proxy_addrs.push(addr);
        listeners.push((listener, addr, rc.clone()));
        routes.push(route);
    }
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.admin_listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.admin_listen,
            source,
        })?;

    let shared = Arc::new(AdminState {
        routes: routes.clone(),
        profiles,
        metrics: metrics.clone(),
    });

    for ((listener, addr, rc), route) in listeners.into_iter().zip(routes) {
        let builder = server::builder(&ListenerSettings {
            header_read_timeout: rc.header_read_timeout,
            // hyper's own hard limit sits above the route's, which answers with JSON.
            max_header_bytes: rc.max_request_header_bytes * 2,
        });
        let limit = server::ConnectionLimit {
            max: rc.max_connections,
            open: metrics
                .open_connections
                .with_label_values(&[rc.name.as_str()]),
            rejected: metrics
                .connections_rejected
                .with_label_values(&[rc.name.as_str()]),
        };
        tracing::info!(route = %rc.name, %addr, upstream = %format!("{}://{}{}", rc.upstream.scheme(), rc.upstream.authority(), rc.upstream.base_path()), "listening");
        tracker.spawn(server::serve(
            listener,
            builder,
            rc.header_read_timeout,
            move |_peer, local| {
                let route = route.clone();
                move |req| route.handle(req, local)
            },
            limit,
            shutdown.clone(),
        ));
    }
    {
        let shared = shared.clone();
        let builder = server::builder(&ListenerSettings {
            header_read_timeout: ADMIN_HEADER_READ_TIMEOUT,
            max_header_bytes: ADMIN_MAX_HEADER_BYTES,
        });
        let limit = server::ConnectionLimit {
            max: config.admin_max_connections,
            open: metrics.open_connections.with_label_values(&["admin"]),
            rejected: metrics.connections_rejected.with_label_values(&["admin"]),
        };
        tracing::info!(addr = %admin_addr, "admin listening");
        tracker.spawn(server::serve(
            admin_listener,
            builder,
            ADMIN_HEADER_READ_TIMEOUT,
            move |peer, _local| {
                let shared = shared.clone();
                move |req| {
                    let shared = shared.clone();
                    async move { Ok(crate::admin::handle(&shared, peer, req).await) }
                }
            },
            limit,
            shutdown.clone(),
        ));
    }

    Ok(Running {
        proxy_addrs,
        admin_addr,
        shared,
        shutdown,
        tracker,
    })
}

/// Waits for SIGTERM or SIGINT; returns which.
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
