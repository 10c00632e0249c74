//! The pooled upstream client: hyper-util's legacy client over rustls.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;

/// The client type every route uses.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file could not be read.
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file held no usable certificate.
    #[error("CA file {0} contains no usable PEM certificate")]
    NoCertificate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Settings shared by the clients of a route.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Upper bound on establishing a TCP connection (TLS included in the request timeout).
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Extra PEM CA file trusted besides the system and webpki roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Loads the trust roots: webpki's bundled roots, the system's, and an optional PEM file.
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "skipping a system CA certificate");
    }
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        use rustls_pki_types::pem::PemObject;
        let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
            path: path.display().to_string(),
            source,
        })?;
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .filter_map(Result::ok)
            .collect();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(ClientError::NoCertificate(path.display().to_string()));
        }
    }
    Ok(roots)
}

/// Builds a TLS client configuration (the connector sets ALPN).
pub fn tls_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Builds the route's two clients: the main one (ALPN h2 and http/1.1) and one that speaks
/// only HTTP/1.1, for protocol upgrades (WebSocket) which HTTP/2 cannot carry.
pub fn build(settings: &ClientSettings) -> Result<(UpstreamClient, UpstreamClient), ClientError> {
    let roots = root_store(settings.ca_file.as_deref())?;
    let main = make_client(settings, tls_config(roots.clone())?, true);
    let h1 = make_client(settings, tls_config(roots)?, false);
    Ok((main, h1))
}

fn make_client(settings: &ClientSettings, tls: rustls::ClientConfig, h2: bool) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1();
    let connector = if h2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .http2_keep_alive_interval(Some(Duration::from_secs(30)))
        .http2_keep_alive_timeout(Duration::from_secs(20))
        .build(connector)
}
