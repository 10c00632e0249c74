//! A real, independent, OpenID-certified authorization server for the client-authentication
//! tests: `oidc-provider` (npm) run by `node tests/oidc/server.mjs CONFIG` on 127.0.0.1 port 0,
//! with the keys, certificates and signed JWTs those tests need.
//!
//! - [`ProviderConfig`] / [`OidcProvider`]: the clients (auth method, public JWKS or secret,
//!   token lifetime), HTTPS with client certificates (RFC 8705), the token-exchange subject
//!   issuer, the auth methods listed in the metadata. The process is killed when the handle is
//!   dropped (and exits by itself when the test process goes away: its stdin closes).
//! - Its log: one JSON line per token request ([`OidcProvider::token_requests`]) with the client,
//!   the auth method, each assertion's `jti`/`kid`/`alg` and the registered key that verifies it,
//!   the client certificate's fingerprint, the `audience`/`resource` fields and what a token
//!   exchange carried; [`OidcProvider::introspect`] asks the provider whether a token is real.
//! - Keys: RSA (PKCS#8 and PKCS#1), EC P-256 and P-384 (PKCS#8 and SEC1) and Ed25519 (PKCS#8)
//!   from Node's crypto (`tests/oidc/keys.mjs`, [`generate_keys`]); ES256 keys for JWTs the test
//!   signs itself from rcgen ([`EsKey`]); JWTs signed with ring ([`Signer`]).
//! - Certificates with rcgen ([`Pki`]): a CA, the provider's server certificate, client
//!   certificates (CA-issued or self-signed), short-lived ones for `check`'s expiry warning.
//!
//! Needs `node` and `npm ci --prefix tests/oidc` (scripts/test.sh runs it): without them the
//! tests fail, naming the missing step.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use ring::signature;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};

/// How long the provider may take to start (Node, oidc-provider's import, its signing key).
const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long a test waits for refreshes driven by short token lifetimes.
pub const REFRESH_DEADLINE: Duration = Duration::from_secs(40);

/// The token-exchange grant type.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The JWT token type (RFC 8693).
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The access-token token type (RFC 8693).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// `client_assertion_type` of RFC 7523.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// `tests/oidc`, the Node project.
pub fn harness_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// Panics, naming the step, when the Node project's dependencies are not installed.
pub fn assert_installed() {
    let dir = harness_dir();
    assert!(
        dir.join("node_modules/oidc-provider/package.json")
            .is_file()
            && dir.join("node_modules/jose/package.json").is_file(),
        "the OIDC test harness is not installed: run `npm ci --prefix tests/oidc` first \
         (scripts/test.sh does); it needs Node.js >= 20.19 and npm"
    );
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// SHA-256 of `s`, lower-case hex (how the provider's log names the tokens it issued).
pub fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh random identifier (128 bits, hex).
pub fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A random client secret long enough for HS256 (48 characters).
pub fn random_secret() -> String {
    format!("{}{}", random_id(), &random_id()[..16])
}

// --- keys ------------------------------------------------------------------------------------

/// A key type `tests/oidc/keys.mjs` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 2048.
    Rsa,
    /// EC P-256.
    P256,
    /// EC P-384.
    P384,
    /// Ed25519.
    Ed25519,
}

impl KeyKind {
    fn arg(self) -> &'static str {
        match self {
            KeyKind::Rsa => "rsa",
            KeyKind::P256 => "p256",
            KeyKind::P384 => "p384",
            KeyKind::Ed25519 => "ed25519",
        }
    }
}

/// A private key in its PEM encodings and its public JWK.
#[derive(Debug, Clone)]
pub struct KeyMaterial {
    /// Its type.
    pub kind: KeyKind,
    /// PKCS#8 (`BEGIN PRIVATE KEY`).
    pub pkcs8_pem: String,
    /// PKCS#1 (`BEGIN RSA PRIVATE KEY`) for RSA, SEC1 (`BEGIN EC PRIVATE KEY`) for EC, none for
    /// Ed25519.
    pub traditional_pem: Option<String>,
    /// The public key as a JWK, without `kid`.
    pub public_jwk: Value,
}

impl KeyMaterial {
    /// The public JWK with `kid`.
    pub fn jwk(&self, kid: &str) -> Value {
        let mut j = self.public_jwk.clone();
        j["kid"] = json!(kid);
        j
    }

    /// The base64 lines of both PEM encodings: none of them may ever be printed.
    pub fn secret_fragments(&self) -> Vec<String> {
        let mut out = pem_body_lines(&self.pkcs8_pem);
        if let Some(t) = &self.traditional_pem {
            out.extend(pem_body_lines(t));
        }
        out
    }

    /// A signer with this key (PKCS#8) for `alg`.
    pub fn signer(&self, alg: Alg, kid: Option<&str>) -> Signer {
        Signer::from_pkcs8_der(alg, &pem_to_der(&self.pkcs8_pem), kid)
    }
}

/// Makes one key per kind with Node's crypto (`tests/oidc/keys.mjs`).
pub fn generate_keys(kinds: &[KeyKind]) -> Vec<KeyMaterial> {
    assert_installed();
    let out = Command::new("node")
        .arg(harness_dir().join("keys.mjs"))
        .args(kinds.iter().map(|k| k.arg()))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `node` (is Node.js installed?): {e}"));
    assert!(
        out.status.success(),
        "keys.mjs failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "keys.mjs printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(v.len(), kinds.len(), "keys.mjs: one key per kind");
    kinds
        .iter()
        .zip(v)
        .map(|(kind, k)| KeyMaterial {
            kind: *kind,
            pkcs8_pem: k["pkcs8_pem"].as_str().expect("pkcs8_pem").to_owned(),
            traditional_pem: k["traditional_pem"].as_str().map(str::to_owned),
            public_jwk: k["public_jwk"].clone(),
        })
        .collect()
}

/// The base64 lines between the PEM armour lines.
pub fn pem_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .map(str::to_owned)
        .collect()
}

/// The DER inside a PEM block (the first one).
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    STANDARD.decode(b64).expect("PEM body is base64")
}

/// An ES256 key made by rcgen, for JWTs the test signs itself (client assertions written to a
/// file, subject and actor tokens).
pub struct EsKey {
    /// Its `kid`.
    pub kid: String,
    der: Vec<u8>,
    public_raw: Vec<u8>,
}

impl EsKey {
    /// A fresh P-256 key named `kid`.
    pub fn new(kid: &str) -> EsKey {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        EsKey {
            kid: kid.to_owned(),
            der: key.serialize_der(),
            public_raw: key.public_key_raw().to_vec(),
        }
    }

    /// The public JWK (with `kid`).
    pub fn jwk(&self) -> Value {
        let mut j = p256_jwk(&self.public_raw);
        j["kid"] = json!(self.kid);
        j
    }

    /// `{"keys": [jwk]}`.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk()] })
    }

    /// Signs `claims` (ES256, header `kid`).
    pub fn sign(&self, claims: &Value) -> String {
        Signer::from_pkcs8_der(Alg::ES256, &self.der, Some(&self.kid)).sign(claims)
    }
}

/// The JWK of an uncompressed P-256 point.
fn p256_jwk(raw: &[u8]) -> Value {
    assert_eq!(raw.len(), 65, "uncompressed P-256 point");
    json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
        "use": "sig",
    })
}

// --- JWTs ------------------------------------------------------------------------------------

/// A JWS algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 SHA-256.
    RS256,
    /// RSASSA-PSS SHA-256.
    PS256,
    /// ECDSA P-256 SHA-256.
    ES256,
    /// ECDSA P-384 SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
    /// HMAC SHA-256.
    HS256,
}

impl Alg {
    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::PS256 => "PS256",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
        }
    }
}

enum SignerKey {
    Rsa(signature::RsaKeyPair, &'static dyn signature::RsaEncoding),
    Ec(signature::EcdsaKeyPair),
    Ed(signature::Ed25519KeyPair),
    Hmac(ring::hmac::Key),
}

/// Signs compact JWTs with ring.
pub struct Signer {
    alg: Alg,
    kid: Option<String>,
    key: SignerKey,
}

impl Signer {
    /// From a PKCS#8 private key.
    pub fn from_pkcs8_der(alg: Alg, der: &[u8], kid: Option<&str>) -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let key = match alg {
            Alg::RS256 | Alg::PS256 => SignerKey::Rsa(
                signature::RsaKeyPair::from_pkcs8(der).expect("RSA PKCS#8 key"),
                rsa_encoding(alg),
            ),
            Alg::ES256 => SignerKey::Ec(
                signature::EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &rng,
                )
                .expect("P-256 PKCS#8 key"),
            ),
            Alg::ES384 => SignerKey::Ec(
                signature::EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    der,
                    &rng,
                )
                .expect("P-384 PKCS#8 key"),
            ),
            Alg::EdDSA => SignerKey::Ed(
                signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .expect("Ed25519 PKCS#8 key"),
            ),
            Alg::HS256 => panic!("HS256 takes a secret: Signer::hs256"),
        };
        Signer {
            alg,
            kid: kid.map(str::to_owned),
            key,
        }
    }

    /// From a PKCS#1 RSA private key (PEM), for RS256 or PS256.
    pub fn from_rsa_pkcs1_pem(alg: Alg, pem: &str, kid: Option<&str>) -> Signer {
        assert!(pem.contains("BEGIN RSA PRIVATE KEY"), "a PKCS#1 PEM");
        Signer {
            alg,
            kid: kid.map(str::to_owned),
            key: SignerKey::Rsa(
                signature::RsaKeyPair::from_der(&pem_to_der(pem)).expect("RSA PKCS#1 key"),
                rsa_encoding(alg),
            ),
        }
    }

    /// HS256 with `secret`.
    pub fn hs256(secret: &[u8]) -> Signer {
        Signer {
            alg: Alg::HS256,
            kid: None,
            key: SignerKey::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret)),
        }
    }

    /// The compact JWS of `claims`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = json!({ "alg": self.alg.name(), "typ": "JWT" });
        if let Some(kid) = &self.kid {
            header["kid"] = json!(kid);
        }
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = match &self.key {
            SignerKey::Rsa(k, enc) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(*enc, &rng, input.as_bytes(), &mut sig).unwrap();
                sig
            }
            SignerKey::Ec(k) => k.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            SignerKey::Ed(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
            SignerKey::Hmac(k) => ring::hmac::sign(k, input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

fn rsa_encoding(alg: Alg) -> &'static dyn signature::RsaEncoding {
    match alg {
        Alg::RS256 => &signature::RSA_PKCS1_SHA256,
        Alg::PS256 => &signature::RSA_PSS_SHA256,
        other => panic!("{other:?} is not an RSA algorithm"),
    }
}

/// The claims of a client assertion (RFC 7523) for `client_id` at `aud`, valid `lifetime`
/// seconds from now (negative: already expired), with a fresh `jti`.
pub fn assertion_claims(client_id: &str, aud: &str, lifetime: i64) -> Value {
    let now = now_secs();
    json!({
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "jti": random_id(),
        "iat": now.min(now + lifetime),
        "exp": now + lifetime,
    })
}

/// The claims of a subject (or actor) token: `sub` issued by `iss`, valid `lifetime` seconds.
pub fn subject_claims(iss: &str, sub: &str, lifetime: i64) -> Value {
    let now = now_secs();
    json!({
        "iss": iss,
        "sub": sub,
        "aud": "token-exchange",
        "jti": random_id(),
        "iat": now.min(now + lifetime),
        "exp": now + lifetime,
    })
}

/// The payload of a compact JWT, read without verification.
pub fn jwt_payload(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).expect("a compact JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url payload"))
        .expect("JSON payload")
}

// --- certificates ----------------------------------------------------------------------------

/// A certificate with its key.
#[derive(Clone)]
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    public_raw: Vec<u8>,
}

impl Leaf {
    /// SHA-256 of the DER as Node prints it (`fingerprint256`): upper-case hex pairs joined by
    /// colons.
    pub fn fingerprint256(&self) -> String {
        ring::digest::digest(&ring::digest::SHA256, &self.der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The public JWK of the certificate's key with `x5c` (for `self_signed_tls_client_auth`).
    pub fn x5c_jwk(&self, kid: &str) -> Value {
        let mut j = p256_jwk(&self.public_raw);
        j["kid"] = json!(kid);
        j["x5c"] = json!([STANDARD.encode(&self.der)]);
        j
    }

    /// The base64 lines of the private key's PEM.
    pub fn key_fragments(&self) -> Vec<String> {
        pem_body_lines(&self.key_pem)
    }
}

/// A throwaway certificate authority.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The CA certificate, DER.
    pub ca_der: Vec<u8>,
}

impl Pki {
    /// A CA named `name`.
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_pem = ca.pem();
        let ca_der = ca.der().to_vec();
        Pki { ca, ca_pem, ca_der }
    }

    /// A server certificate for `127.0.0.1` and `localhost`.
    pub fn server_leaf(&self) -> Leaf {
        self.leaf(&["127.0.0.1", "localhost"], "127.0.0.1", None)
    }

    /// A client certificate naming `dns` (subjectAltName and CN); with `valid_days`, it expires
    /// within that many days (from a day ago), else in decades.
    pub fn client_leaf(&self, dns: &str, valid_days: Option<i64>) -> Leaf {
        self.leaf(&[dns], dns, valid_days)
    }

    fn leaf(&self, names: &[&str], cn: &str, valid_days: Option<i64>) -> Leaf {
        let (params, key) = leaf_params(names, cn, valid_days);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            public_raw: key.public_key_raw().to_vec(),
        }
    }
}

/// A self-signed client certificate naming `dns`.
pub fn self_signed_client(dns: &str) -> Leaf {
    let (params, key) = leaf_params(&[dns], dns, None);
    let cert = params.self_signed(&key).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
        key_der: key.serialize_der(),
        public_raw: key.public_key_raw().to_vec(),
    }
}

fn leaf_params(names: &[&str], cn: &str, valid_days: Option<i64>) -> (CertificateParams, KeyPair) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    // A random serial: two certificates for the same name must differ.
    params.serial_number = Some(rcgen::SerialNumber::from(rand::random::<u64>() >> 1));
    if let Some(days) = valid_days {
        let (y, m, d) = civil_date_in_days(-1);
        params.not_before = rcgen::date_time_ymd(y, m, d);
        let (y, m, d) = civil_date_in_days(days);
        params.not_after = rcgen::date_time_ymd(y, m, d);
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    (params, key)
}

/// The UTC calendar date `days` days from today (Howard Hinnant's civil_from_days).
fn civil_date_in_days(days: i64) -> (i32, u8, u8) {
    let z = now_secs().div_euclid(86_400) + days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

// --- the provider ----------------------------------------------------------------------------

/// What `server.mjs` is started with (see its header for every field).
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    json: Value,
    server_ca_der: Option<Vec<u8>>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl ProviderConfig {
    /// No client yet; access tokens live 5 s.
    pub fn new() -> Self {
        ProviderConfig {
            json: json!({
                "access_token_ttl": 5,
                "clients": [],
                "exit_on_stdin_close": true,
            }),
            server_ca_der: None,
        }
    }

    /// The default access-token lifetime, seconds.
    pub fn access_token_ttl(mut self, secs: u64) -> Self {
        self.json["access_token_ttl"] = json!(secs);
        self
    }

    /// A client: oidc-provider client metadata (`client_id`, `token_endpoint_auth_method`,
    /// `jwks`, `client_secret`, ...) plus `access_token_ttl`. `grant_types` defaults to
    /// client_credentials and token exchange.
    pub fn client(mut self, metadata: Value) -> Self {
        self.json["clients"].as_array_mut().unwrap().push(metadata);
        self
    }

    /// The client authentication methods the provider supports (and lists in its metadata).
    pub fn client_auth_methods(mut self, methods: &[&str]) -> Self {
        self.json["client_auth_methods"] = json!(methods);
        self
    }

    /// HTTPS with a server certificate issued by `server`, asking every client for a
    /// certificate; `client_ca` is the CA `tls_client_auth` certificates must come from.
    pub fn https(mut self, server: &Pki, client_ca: Option<&Pki>) -> Self {
        let leaf = server.server_leaf();
        self.json["https"] = json!({
            "cert_pem": leaf.cert_pem,
            "key_pem": leaf.key_pem,
            "client_ca_pem": client_ca.map(|c| c.ca_pem.clone()),
        });
        self.server_ca_der = Some(server.ca_der.clone());
        self
    }

    /// Token exchange: subject and actor tokens must be signed by a key of `jwks` and issued
    /// by `issuer`.
    pub fn subject_token_issuer(mut self, issuer: &str, jwks: Value) -> Self {
        self.json["subject_token"] = json!({ "issuer": issuer, "jwks": jwks });
        self
    }

    /// Whether `/.well-known/oauth-authorization-server` is served (by default it is, as is
    /// `/.well-known/openid-configuration`).
    pub fn serve_oauth_metadata(mut self, on: bool) -> Self {
        self.json["serve_oauth_metadata"] = json!(on);
        self
    }
}

/// A running `oidc-provider`.
pub struct OidcProvider {
    child: Child,
    _stdin: ChildStdin,
    /// `http(s)://127.0.0.1:PORT`.
    pub issuer: String,
    /// The bound port.
    pub port: u16,
    token_endpoint: String,
    introspection_endpoint: String,
    server_ca_der: Option<Vec<u8>>,
    introspector: Option<(String, String)>,
    stderr: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        // Kills this child by its PID (SIGKILL), then reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reader(stream: impl std::io::Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).split(b'\n') {
            match line {
                Ok(l) => lines
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&l).into_owned()),
                Err(_) => break,
            }
        }
    });
}

impl OidcProvider {
    /// Starts `node tests/oidc/server.mjs` with `cfg` and waits (with a deadline) for its
    /// ready line. An introspection client is added when `client_secret_basic` is supported.
    pub async fn start(cfg: ProviderConfig) -> OidcProvider {
        assert_installed();
        let ProviderConfig {
            mut json,
            server_ca_der,
        } = cfg;
        let basic_ok = json["client_auth_methods"]
            .as_array()
            .is_none_or(|m| m.iter().any(|v| v.as_str() == Some("client_secret_basic")));
        let introspector = basic_ok.then(|| ("introspector".to_owned(), random_secret()));
        if let Some((id, secret)) = &introspector {
            json["introspector"] = json!({ "client_id": id, "client_secret": secret });
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("provider.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();

        let mut child = Command::new("node")
            .arg(harness_dir().join("server.mjs"))
            .arg(&path)
            .current_dir(harness_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` (is Node.js installed?): {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        reader(child.stdout.take().unwrap(), stdout.clone());
        reader(child.stderr.take().unwrap(), stderr.clone());

        let end = Instant::now() + START_DEADLINE;
        let ready: Value = loop {
            // oidc-provider prints its notices to stdout too: the ready line is the JSON one.
            let ready = stdout
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.starts_with('{'))
                .find_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["ready"] == true);
            if let Some(v) = ready {
                break v;
            }
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "oidc-provider exited with {status} before listening; stderr:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
            if Instant::now() > end {
                let _ = child.kill();
                panic!(
                    "oidc-provider did not print its ready line within {START_DEADLINE:?}; stderr:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(ready["ready"], true, "ready line: {ready}");
        OidcProvider {
            child,
            _stdin: stdin,
            issuer: ready["issuer"].as_str().unwrap().to_owned(),
            port: ready["port"].as_u64().unwrap() as u16,
            token_endpoint: ready["token_endpoint"].as_str().unwrap().to_owned(),
            introspection_endpoint: ready["introspection_endpoint"].as_str().unwrap().to_owned(),
            server_ca_der,
            introspector,
            stderr,
            _dir: dir,
        }
    }

    /// The token endpoint URL.
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// The process id of `node`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stderr line so far (the JSON log and Node's own warnings), for failure messages.
    pub fn log_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// How many log events (token requests and other requests) have been read so far.
    fn event_count(&self) -> usize {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("{\"event\""))
            .count()
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == kind)
            .collect()
    }

    /// Every token request so far, in order (see `server.mjs` for the fields).
    pub fn all_token_requests(&self) -> Vec<Value> {
        self.events("token")
    }

    /// The token requests of `client_id`.
    pub fn token_requests(&self, client_id: &str) -> Vec<Value> {
        self.all_token_requests()
            .into_iter()
            .filter(|v| v["client_id"] == client_id)
            .collect()
    }

    /// The token requests of `client_id` that were answered 200.
    pub fn successes(&self, client_id: &str) -> Vec<Value> {
        self.token_requests(client_id)
            .into_iter()
            .filter(|v| v["status"] == 200)
            .collect()
    }

    /// Every other request (`method`, `path`, `status`).
    pub fn requests(&self) -> Vec<Value> {
        self.events("request")
    }

    /// Waits until `cond` holds for the token requests of `client_id`.
    pub async fn wait_for_token_requests(
        &self,
        client_id: &str,
        deadline: Duration,
        what: &str,
        cond: impl Fn(&[Value]) -> bool,
    ) {
        let end = Instant::now() + deadline;
        loop {
            let reqs = self.token_requests(client_id);
            if cond(&reqs) {
                return;
            }
            if Instant::now() > end {
                panic!(
                    "timed out after {deadline:?} waiting for: {what}; token requests of {client_id}:\n{}",
                    reqs.iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The logged token request that issued `token` (matched by its SHA-256), if this provider
    /// issued it.
    pub fn issuing_request(&self, token: &str) -> Option<Value> {
        let h = sha256_hex(token);
        self.all_token_requests()
            .into_iter()
            .find(|r| r["issued"]["token_sha256"] == h.as_str())
    }

    /// Waits for the log line of the token request that issued `token` (the provider writes
    /// it before answering, but the test reads the log on a thread of its own).
    pub async fn wait_for_issuing_request(&self, token: &str) -> Value {
        let end = Instant::now() + super::DEADLINE;
        loop {
            if let Some(r) = self.issuing_request(token) {
                return r;
            }
            assert!(
                Instant::now() < end,
                "the token the upstream got was not issued by the provider; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `client_id` has more than `n` logged token requests; returns them all.
    pub async fn wait_for_more(&self, client_id: &str, n: usize) -> Vec<Value> {
        self.wait_for_token_requests(
            client_id,
            super::DEADLINE,
            &format!("more than {n} token requests"),
            |r| r.len() > n,
        )
        .await;
        self.token_requests(client_id)
    }

    /// Asserts that this provider issued `token` to `client_id` and that it is real: the
    /// introspection endpoint calls it active, or it has provably expired since (its lifetime,
    /// as the provider logged it when issuing, has passed: a slow machine may take that long
    /// between the request and the introspection). Returns the introspection answer when active.
    pub async fn assert_issued(&self, token: &str, client_id: &str) -> Option<Value> {
        let issued = self.wait_for_issuing_request(token).await;
        assert_eq!(
            issued["client_id"], client_id,
            "the token was issued to another client: {issued}"
        );
        let info = self.introspect(token).await;
        if info["active"] == true {
            assert_eq!(info["client_id"], client_id, "introspection: {info}");
            return Some(info);
        }
        let at = issued["at"].as_f64().unwrap() as i64;
        let lifetime = issued["issued"]["expires_in"].as_i64().unwrap();
        assert!(
            now_secs() >= at + lifetime - 1,
            "introspection calls the token inactive before its expiry: {info}; issued by {issued}"
        );
        None
    }

    /// Asks the provider's introspection endpoint (RFC 7662) about `token`.
    pub async fn introspect(&self, token: &str) -> Value {
        let (id, secret) = self
            .introspector
            .as_ref()
            .expect("introspection needs client_secret_basic among the provider's auth methods");
        let (status, body) = self
            .post_form(
                &self.introspection_endpoint,
                &[("token", token)],
                Some((id, secret)),
                None,
            )
            .await;
        assert_eq!(status, 200, "introspection: {body}");
        body
    }

    /// POSTs a token request straight to the provider (no sidecar): `form`, optionally HTTP
    /// Basic credentials and a client certificate. Returns the status and the JSON body.
    pub async fn post_token(
        &self,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
        client_cert: Option<&Leaf>,
    ) -> (u16, Value) {
        self.post_form(&self.token_endpoint, form, basic, client_cert)
            .await
    }

    /// GETs `path` of the issuer: status and JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let req = http::Request::get(format!("{}{path}", self.issuer))
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.send(req, None).await
    }

    async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
        client_cert: Option<&Leaf>,
    ) -> (u16, Value) {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut req = http::Request::post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json");
        if let Some((id, secret)) = basic {
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let cred = STANDARD.encode(format!("{}:{}", enc(id), enc(secret)));
            req = req.header("authorization", format!("Basic {cred}"));
        }
        self.send(req.body(Full::new(Bytes::from(body))).unwrap(), client_cert)
            .await
    }

    async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
        client_cert: Option<&Leaf>,
    ) -> (u16, Value) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &self.server_ca_der {
            roots.add(CertificateDer::from(ca.clone())).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let tls = match client_cert {
            Some(leaf) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from(leaf.der.clone())],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client: HyperClient<_, Full<Bytes>> =
            HyperClient::builder(TokioExecutor::new()).build(connector);
        let what = format!("{} {}", req.method(), req.uri());
        let logged_before = self.event_count();
        let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
            .await
            .unwrap_or_else(|_| panic!("no answer within 20s to {what}"))
            .unwrap_or_else(|e| panic!("{what} failed: {e:?}"));
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("no body within 20s from {what}"))
            .unwrap()
            .to_bytes();
        let v = serde_json::from_slice(&body).unwrap_or_else(
            |_| json!({ "non_json_body": String::from_utf8_lossy(&body).into_owned() }),
        );
        // The provider logs each request before answering it; wait until this one's line has
        // been read, so that the caller sees it.
        let end = Instant::now() + super::DEADLINE;
        while self.event_count() <= logged_before {
            assert!(
                Instant::now() < end,
                "the provider did not log {what}; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (status, v)
    }
}

/// Writes `content` to `path` atomically (a temporary file renamed over it), as a secret
/// mounted by Kubernetes changes: a reader sees the old or the new file, never a mix.
pub fn replace_file(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension(format!("tmp-{}", random_id()));
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(content.as_bytes()).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
