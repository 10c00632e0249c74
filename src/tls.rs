//! TLS client settings shared by the upstream pool and the token endpoint client: trust roots
//! (webpki's, the system's, an extra PEM file), the client certificate for mutual TLS (read
//! again when its files change), and the rustls configuration.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
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
    /// A client certificate or its key could not be used. Never holds key material.
    #[error("client certificate: {0}")]
    ClientCert(String),
}

/// Loads the trust roots: webpki's bundled roots, the system's, and an optional PEM file.
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "skipping a system CA certificate");
    }
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| TlsError::CaFile {
            path: path.display().to_string(),
            source,
        })?;
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
            .filter_map(Result::ok)
            .collect();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsError::NoCertificate(path.display().to_string()));
        }
    }
    Ok(roots)
}

/// Builds a TLS client configuration (the connector sets ALPN), presenting the client
/// certificate of `client_cert` when the server asks for one.
pub fn tls_config(
    roots: rustls::RootCertStore,
    client_cert: Option<&ClientCertFiles>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match client_cert {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let mut cfg = builder
                .with_client_cert_resolver(Arc::new(ReloadingClientCert::new(files.clone())?));
            // A resumed session keeps the identity of the handshake it resumes: after a
            // renewal, the server would still see the old certificate. Every connection
            // presents the current one.
            cfg.resumption = rustls::client::Resumption::disabled();
            cfg
        }
    })
}

/// A client certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
}

/// What `check` says of a client certificate: never its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The leaf's subject.
    pub subject: String,
    /// When the leaf expires (unix seconds).
    pub not_after: u64,
}

/// The largest certificate or key file read (a chain is a few kilobytes).
const MAX_PEM_BYTES: u64 = 256 * 1024;

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let err = |e: std::io::Error| {
        TlsError::ClientCert(format!("cannot read the {what} {}: {e}", path.display()))
    };
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .map_err(err)?
        .take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(err)?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::ClientCert(format!(
            "the {what} {} is larger than {MAX_PEM_BYTES} bytes",
            path.display()
        )));
    }
    Ok(std::mem::take(&mut *buf))
}

impl ClientCertFiles {
    /// Reads the chain and the key and checks that they belong together.
    pub fn load(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let chain = self.chain()?;
        let key_pem = zeroize::Zeroizing::new(read_pem(&self.key, "client key")?);
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
            TlsError::ClientCert(format!(
                "{} holds no readable PEM private key",
                self.key.display()
            ))
        })?;
        let provider = rustls::crypto::ring::default_provider();
        let signer = provider.key_provider.load_private_key(key).map_err(|_| {
            TlsError::ClientCert(format!(
                "{}: a key type TLS cannot use (RSA, EC P-256/P-384 or Ed25519)",
                self.key.display()
            ))
        })?;
        let certified = CertifiedKey::new(chain, signer);
        certified.keys_match().map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::ClientCert(format!(
                "the key in {} does not belong to the certificate in {}",
                self.key.display(),
                self.cert.display()
            )),
            // webpki reads X.509 v3 only: `openssl x509 -req` without extensions makes v1.
            other => TlsError::ClientCert(format!(
                "the certificate in {} cannot be used ({other}); it must be an X.509 v3 \
                 certificate (a version 1 certificate, as `openssl x509 -req` makes without \
                 `-extfile`, is not)",
                self.cert.display()
            )),
        })?;
        Ok(Arc::new(certified))
    }

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let pem = read_pem(&self.cert, "client certificate")?;
        let chain: Vec<_> = CertificateDer::pem_slice_iter(&pem)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            return Err(TlsError::ClientCert(format!(
                "{} holds no PEM certificate",
                self.cert.display()
            )));
        }
        Ok(chain)
    }

    /// The leaf certificate's subject and expiry, for `check` and its warnings.
    pub fn summary(&self) -> Result<CertSummary, TlsError> {
        let chain = self.chain()?;
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|_| {
            TlsError::ClientCert(format!(
                "{}: the first certificate cannot be parsed",
                self.cert.display()
            ))
        })?;
        Ok(CertSummary {
            subject: leaf.subject().to_string(),
            not_after: u64::try_from(leaf.validity().not_after.timestamp()).unwrap_or(0),
        })
    }
}

/// Whether a certificate that expires at `not_after` (unix seconds) has less than `within`
/// left at `now`.
pub fn expires_within(not_after: u64, within: Duration, now: SystemTime) -> bool {
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    not_after < now.saturating_add(within.as_secs())
}

/// Presents the certificate of a [`ClientCertFiles`], read again when either file changes
/// (a renewed Kubernetes Secret, cert-manager): the files' size, modification time and inode
/// are compared at every handshake. A renewed pair that cannot be used is logged and the
/// previous one kept.
#[derive(Debug)]
pub struct ReloadingClientCert {
    files: ClientCertFiles,
    current: Mutex<(Stamp, Arc<CertifiedKey>)>,
}

/// What identifies a version of the two files.
type Stamp = [Option<(u64, SystemTime, u64)>; 2];

fn stamp(files: &ClientCertFiles) -> Stamp {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        #[cfg(unix)]
        let ino = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let ino = 0;
        Some((m.len(), m.modified().ok()?, ino))
    };
    [one(&files.cert), one(&files.key)]
}

impl ReloadingClientCert {
    /// Reads the files now: a pair that cannot be used is an error at start.
    pub fn new(files: ClientCertFiles) -> Result<Self, TlsError> {
        let stamp = stamp(&files);
        let key = files.load()?;
        Ok(ReloadingClientCert {
            files,
            current: Mutex::new((stamp, key)),
        })
    }

    /// The current pair, read again first when the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let now = stamp(&self.files);
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.0 != now {
            match self.files.load() {
                Ok(key) => {
                    tracing::info!(cert = %self.files.cert.display(), "client certificate reloaded");
                    *cur = (now, key);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the renewed client certificate cannot be used; keeping the previous one");
                    // Not retried at every handshake until the files change again.
                    cur.0 = now;
                }
            }
        }
        cur.1.clone()
    }
}

impl ResolvesClientCert for ReloadingClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cn: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![cn.to_owned()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn replace(path: &Path, content: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn a_renewed_pair_is_used_and_a_broken_one_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let files = ClientCertFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        let (a_cert, a_key) = pair("a");
        std::fs::write(&files.cert, &a_cert).unwrap();
        std::fs::write(&files.key, &a_key).unwrap();
        let r = ReloadingClientCert::new(files.clone()).unwrap();
        let first = r.current();
        assert!(
            Arc::ptr_eq(&first, &r.current()),
            "unchanged files are not read again"
        );
        assert_eq!(files.summary().unwrap().subject, "CN=a");

        let (b_cert, b_key) = pair("b");
        replace(&files.key, &b_key);
        replace(&files.cert, &b_cert);
        let second = r.current();
        assert_ne!(second.cert, first.cert);

        // Half a renewal (the certificate of a key not yet written) is not used.
        let (c_cert, _) = pair("c");
        replace(&files.cert, &c_cert);
        assert_eq!(r.current().cert, second.cert);
        replace(&files.cert, "not a certificate");
        assert_eq!(r.current().cert, second.cert);
    }

    #[test]
    fn a_pair_that_does_not_belong_together_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (a_cert, _) = pair("a");
        let (_, b_key) = pair("b");
        let files = ClientCertFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        std::fs::write(&files.cert, &a_cert).unwrap();
        std::fs::write(&files.key, &b_key).unwrap();
        let e = ReloadingClientCert::new(files.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not belong to the certificate"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
        std::fs::write(&files.key, "garbage").unwrap();
        let e = files.load().unwrap_err().to_string();
        assert!(e.contains("no readable PEM private key"), "{e}");
    }

    #[test]
    fn expiry_is_compared_with_the_warning_window() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = 24 * 3600;
        assert!(expires_within(
            1_000_000 + 6 * day,
            Duration::from_secs(7 * day),
            now
        ));
        assert!(!expires_within(
            1_000_000 + 8 * day,
            Duration::from_secs(7 * day),
            now
        ));
        assert!(
            expires_within(10, Duration::from_secs(7 * day), now),
            "expired"
        );
    }
}
