//! TLS material for an HTTPS fake upstream: a throwaway CA and a server certificate for
//! `127.0.0.1` and `localhost`, made with rcgen.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA (PEM, for `--upstream-ca-file`) and a server configuration signed by it.
pub struct TlsMaterial {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// A rustls server configuration offering ALPN `h2` and `http/1.1`.
    pub server_config: Arc<rustls::ServerConfig>,
}

/// Makes a fresh CA and server certificate for `127.0.0.1` and `localhost`.
pub fn material() -> TlsMaterial {
    material_for(&["127.0.0.1", "localhost"], false)
}

/// A CA and a server configuration whose certificate names only `names` and, with `expired`,
/// stopped being valid years ago: for upstreams whose certificate must be refused although
/// its CA is trusted.
pub fn material_for(names: &[&str], expired: bool) -> TlsMaterial {
    material_inner(names, expired, None)
}

/// Like [`material`], for a server that asks for a client certificate and accepts only those
/// signed by `client_ca` (mutual TLS).
pub fn material_requiring_client_certs(client_ca: CertificateDer<'static>) -> TlsMaterial {
    material_inner(&["127.0.0.1", "localhost"], false, Some(client_ca))
}

fn material_inner(
    names: &[&str],
    expired: bool,
    client_ca: Option<CertificateDer<'static>>,
) -> TlsMaterial {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "token-sidecar test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let mut leaf_params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("x"));
    if expired {
        leaf_params.not_before = rcgen::date_time_ymd(2015, 1, 1);
        leaf_params.not_after = rcgen::date_time_ymd(2016, 1, 1);
    }
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsMaterial {
        ca_pem: ca.pem(),
        server_config: Arc::new(cfg),
    }
}
