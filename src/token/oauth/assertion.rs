//! Client assertions (RFC 7523 2.2, OpenID Connect Core 9): the JWT a client signs to
//! authenticate to the token endpoint (`private_key_jwt`, `client_secret_jwt`), and the
//! `exp` of a JWT read without verifying it (a projected service-account token).
//!
//! Signing is [`jsonwebtoken`]'s (over ring). This module only turns the PEM files people have
//! into the DER forms it takes: PKCS#8 for every key type, PKCS#1 for RSA, SEC1 for EC
//! (converted to PKCS#8, which is what ring reads). Nothing here depends on the
//! configuration: the loader calls [`SigningKey::load`] to check a key file, the OAuth client
//! to sign.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::secret::{read_bounded, Secret};

/// `client_assertion_type` of a JWT client assertion (RFC 7523 2.2).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a signed assertion is valid: short, as each is used once (OIDC Core 9 asks for a
/// short lifetime; servers refuse ones over a few minutes).
pub const ASSERTION_LIFETIME_SECS: u64 = 60;

/// The algorithms `--jwt-alg` accepts, by name.
pub const ALGORITHMS: [(&str, Algorithm); 12] = [
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
];

/// The algorithm named `name` (as JOSE writes it: `ES256`, `EdDSA`).
pub fn parse_alg(name: &str) -> Option<Algorithm> {
    ALGORITHMS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// The JOSE name of `alg`.
pub fn alg_name(alg: Algorithm) -> &'static str {
    ALGORITHMS
        .iter()
        .find(|(_, a)| *a == alg)
        .map_or("?", |(n, _)| *n)
}

/// Why a key could not be used. Never holds key material.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("{0}")]
    Read(String),
    /// The file holds no private key the sidecar can read.
    #[error("{path}: {why}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong, in words.
        why: String,
    },
    /// The algorithm asked for does not fit the key.
    #[error("{path}: a {kind} key cannot sign {alg}; use {fits}")]
    Mismatch {
        /// The file.
        path: String,
        /// The key's type.
        kind: &'static str,
        /// The algorithm asked for.
        alg: &'static str,
        /// The algorithms that fit.
        fits: &'static str,
    },
    /// Signing failed (a key ring refuses, such as RSA under 2048 bits).
    #[error("{path}: the key cannot sign {alg}: {why}")]
    Sign {
        /// The file.
        path: String,
        /// The algorithm.
        alg: &'static str,
        /// Why, in jsonwebtoken's words (which never hold the key).
        why: String,
    },
}

/// The kind of an asymmetric key, which decides the algorithms it signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RSA",
            KeyKind::P256 => "EC P-256",
            KeyKind::P384 => "EC P-384",
            KeyKind::Ed25519 => "Ed25519",
        }
    }

    fn default_alg(self) -> Algorithm {
        match self {
            KeyKind::Rsa => Algorithm::RS256,
            KeyKind::P256 => Algorithm::ES256,
            KeyKind::P384 => Algorithm::ES384,
            KeyKind::Ed25519 => Algorithm::EdDSA,
        }
    }

    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }

    fn fitting(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RS256, RS384, RS512, PS256, PS384 or PS512",
            KeyKind::P256 => "ES256",
            KeyKind::P384 => "ES384",
            KeyKind::Ed25519 => "EdDSA",
        }
    }
}

/// A key that signs assertions, and the algorithm it signs with.
pub struct SigningKey {
    key: EncodingKey,
    alg: Algorithm,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &alg_name(self.alg))
            .finish_non_exhaustive()
    }
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_ED25519: &str = "1.3.101.112";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

impl SigningKey {
    /// Reads the PEM private key in `path` (PKCS#8, PKCS#1 RSA or SEC1 EC) and checks that it
    /// signs `alg` (by default: RS256 for RSA, ES256 / ES384 for P-256 / P-384, EdDSA for
    /// Ed25519) by signing a throwaway assertion.
    pub fn load(path: &Path, alg: Option<Algorithm>) -> Result<Self, KeyError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::PrivateKeyDer;
        let shown = path.display().to_string();
        let format = |why: &str| KeyError::Format {
            path: shown.clone(),
            why: why.to_owned(),
        };
        let pem = read_bounded(path).map_err(|e| KeyError::Read(e.to_string()))?;
        let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                format("no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")
            }
            _ => format("not a readable PEM private key"),
        })?;
        let (kind, key) = match &der {
            PrivateKeyDer::Pkcs1(k) => (
                KeyKind::Rsa,
                EncodingKey::from_rsa_der(k.secret_pkcs1_der()),
            ),
            PrivateKeyDer::Sec1(k) => {
                let (kind, pkcs8) = sec1_to_pkcs8(k.secret_sec1_der()).map_err(&format)?;
                (kind, EncodingKey::from_ec_der(&pkcs8))
            }
            PrivateKeyDer::Pkcs8(k) => pkcs8_key(k.secret_pkcs8_der()).map_err(&format)?,
            _ => return Err(format("an unknown kind of private key")),
        };
        let alg = alg.unwrap_or(kind.default_alg());
        if !kind.fits(alg) {
            return Err(KeyError::Mismatch {
                path: shown,
                kind: kind.name(),
                alg: alg_name(alg),
                fits: kind.fitting(),
            });
        }
        let signing = SigningKey { key, alg };
        signing
            .sign("check", "check", None)
            .map_err(|why| KeyError::Sign {
                path: shown,
                alg: alg_name(alg),
                why,
            })?;
        Ok(signing)
    }

    /// A key for `client_secret_jwt`: the client secret, with HS256 unless `alg` says HS384 or
    /// HS512.
    pub fn from_secret(secret: &Secret, alg: Option<Algorithm>) -> Result<Self, String> {
        let alg = alg.unwrap_or(Algorithm::HS256);
        if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(format!(
                "client_secret_jwt signs with HS256, HS384 or HS512, not {}",
                alg_name(alg)
            ));
        }
        Ok(SigningKey {
            key: EncodingKey::from_secret(secret.expose().as_bytes()),
            alg,
        })
    }

    /// The algorithm it signs with.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// A fresh assertion: `iss` = `sub` = `client_id`, `aud`, a random `jti`, `iat` = `nbf` =
    /// now, `exp` a minute later; `kid` in the header when given. The error never holds the
    /// key.
    pub fn sign(
        &self,
        client_id: &str,
        audience: &str,
        kid: Option<&str>,
    ) -> Result<Zeroizing<String>, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            iss: client_id,
            sub: client_id,
            aud: audience,
            jti: jti(),
            iat: now,
            nbf: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(Zeroizing::new)
            .map_err(|e| e.to_string())
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// 128 random bits, URL-safe base64: a `jti` no server has seen.
fn jti() -> String {
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The key inside a PKCS#8 document, by its algorithm identifier.
fn pkcs8_key(der: &[u8]) -> Result<(KeyKind, EncodingKey), &'static str> {
    use pkcs8::der::Decode;
    let info = pkcs8::PrivateKeyInfo::from_der(der).map_err(|_| "not a valid PKCS#8 key")?;
    match info.algorithm.oid.to_string().as_str() {
        // ring signs RSA from the PKCS#1 structure the PKCS#8 wraps.
        OID_RSA => Ok((KeyKind::Rsa, EncodingKey::from_rsa_der(info.private_key))),
        OID_EC => {
            let curve = info
                .algorithm
                .parameters_oid()
                .map_err(|_| "an EC key without a named curve")?;
            Ok((
                curve_kind(&curve.to_string())?,
                EncodingKey::from_ec_der(der),
            ))
        }
        OID_ED25519 => Ok((KeyKind::Ed25519, EncodingKey::from_ed_der(der))),
        _ => Err("a key type that is not RSA, EC P-256/P-384 or Ed25519"),
    }
}

fn curve_kind(oid: &str) -> Result<KeyKind, &'static str> {
    match oid {
        OID_P256 => Ok(KeyKind::P256),
        OID_P384 => Ok(KeyKind::P384),
        _ => Err("an EC key on a curve other than P-256 or P-384"),
    }
}

/// A SEC1 `EC PRIVATE KEY` (what `openssl ecparam -genkey` writes) wrapped in PKCS#8.
fn sec1_to_pkcs8(der: &[u8]) -> Result<(KeyKind, Zeroizing<Vec<u8>>), &'static str> {
    use pkcs8::der::{Decode, Encode};
    let ec = sec1::EcPrivateKey::from_der(der).map_err(|_| "not a valid SEC1 EC key")?;
    let curve = ec
        .parameters
        .and_then(|p| p.named_curve())
        .ok_or("an EC key without a named curve")?;
    let kind = curve_kind(&curve.to_string())?;
    let algorithm = pkcs8::AlgorithmIdentifierRef {
        oid: pkcs8::ObjectIdentifier::new_unwrap(OID_EC),
        parameters: Some((&curve).into()),
    };
    let info = pkcs8::PrivateKeyInfo {
        algorithm,
        private_key: der,
        public_key: None,
    };
    let out = info.to_der().map_err(|_| "not a valid SEC1 EC key")?;
    Ok((kind, Zeroizing::new(out)))
}

/// The `exp` of a JWT, read without verifying its signature (the sidecar only forwards the
/// token; the server verifies it). `None` when it is not a JWT or has no numeric `exp`.
pub fn unverified_exp(jwt: &str) -> Option<u64> {
    let parts: Vec<&str> = jwt.trim().split('.').collect();
    let [_header, payload, _signature] = parts[..] else {
        return None;
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?;
    exp.as_u64()
        .or_else(|| exp.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, pem: &str) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    }

    fn payload(jwt: &str) -> serde_json::Value {
        let part = jwt.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn header(jwt: &str) -> serde_json::Value {
        let part = jwt.split('.').next().unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn each_key_format_signs_with_its_default_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        for (name, pem, alg) in [
            ("p256.pem", ec.serialize_pem(), "ES256"),
            ("p384.pem", p384.serialize_pem(), "ES384"),
            ("ed.pem", ed.serialize_pem(), "EdDSA"),
        ] {
            let key = SigningKey::load(&write(&dir, name, &pem), None).unwrap();
            assert_eq!(alg_name(key.alg()), alg, "{name}");
            let jwt = key
                .sign("client-1", "https://as/token", Some("k1"))
                .unwrap();
            let (h, p) = (header(&jwt), payload(&jwt));
            assert_eq!(h["alg"], alg);
            assert_eq!(h["kid"], "k1");
            assert_eq!(p["iss"], "client-1");
            assert_eq!(p["sub"], "client-1");
            assert_eq!(p["aud"], "https://as/token");
            let (iat, exp) = (p["iat"].as_u64().unwrap(), p["exp"].as_u64().unwrap());
            assert_eq!(exp - iat, ASSERTION_LIFETIME_SECS);
        }
    }

    #[test]
    fn every_assertion_has_a_fresh_jti() {
        let dir = tempfile::tempdir().unwrap();
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = SigningKey::load(&write(&dir, "k.pem", &ec.serialize_pem()), None).unwrap();
        let a = payload(&key.sign("c", "a", None).unwrap())["jti"].clone();
        let b = payload(&key.sign("c", "a", None).unwrap())["jti"].clone();
        assert_ne!(a, b);
        assert!(header(&key.sign("c", "a", None).unwrap())
            .get("kid")
            .is_none());
    }

    /// The formats `openssl` writes: PKCS#1 (`-traditional`) and PKCS#8 RSA, SEC1 EC.
    #[test]
    fn openssl_key_formats_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let gen = |name: &str, args: &[&str]| {
            let path = dir.path().join(name);
            let out = std::process::Command::new("openssl")
                .arg(args[0])
                .arg("-out")
                .arg(&path)
                .args(&args[1..])
                .output()
                .expect("openssl (scripts/test.sh installs it)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            path
        };
        let pkcs1 = gen("pkcs1.pem", &["genrsa", "-traditional", "2048"]);
        let pkcs8 = gen(
            "pkcs8.pem",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
        );
        let sec1 = gen(
            "sec1.pem",
            &["ecparam", "-genkey", "-noout", "-name", "prime256v1"],
        );
        let sec1_384 = gen(
            "sec1-384.pem",
            &["ecparam", "-genkey", "-noout", "-name", "secp384r1"],
        );
        assert!(std::fs::read_to_string(&pkcs1)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY"));
        assert!(std::fs::read_to_string(&sec1)
            .unwrap()
            .contains("BEGIN EC PRIVATE KEY"));
        for (path, alg, want) in [
            (&pkcs1, None, "RS256"),
            (&pkcs8, None, "RS256"),
            (&pkcs8, Some(Algorithm::PS256), "PS256"),
            (&sec1, None, "ES256"),
            (&sec1_384, None, "ES384"),
        ] {
            let key = SigningKey::load(path, alg).unwrap_or_else(|e| panic!("{e}"));
            let jwt = key.sign("c", "a", None).unwrap();
            assert_eq!(header(&jwt)["alg"], want);
        }
        let small = gen("small.pem", &["genrsa", "-traditional", "1024"]);
        let e = SigningKey::load(&small, None).unwrap_err().to_string();
        assert!(e.contains("cannot sign RS256"), "{e}");
    }

    #[test]
    fn a_key_refuses_an_algorithm_of_another_family() {
        let dir = tempfile::tempdir().unwrap();
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let path = write(&dir, "k.pem", &ec.serialize_pem());
        let e = SigningKey::load(&path, Some(Algorithm::RS256)).unwrap_err();
        assert!(
            e.to_string()
                .contains("EC P-256 key cannot sign RS256; use ES256"),
            "{e}"
        );
        let e = SigningKey::load(&path, Some(Algorithm::ES384)).unwrap_err();
        assert!(e.to_string().contains("use ES256"), "{e}");
    }

    #[test]
    fn files_that_hold_no_key_are_named_without_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let path = write(&dir, "cert.pem", &cert.cert.pem());
        let e = SigningKey::load(&path, None).unwrap_err().to_string();
        assert!(e.contains("no PEM private key"), "{e}");
        let garbage =
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXNlY3JldA==\n-----END PRIVATE KEY-----\n";
        let e = SigningKey::load(&write(&dir, "bad.pem", garbage), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid PKCS#8 key"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
        assert!(SigningKey::load(&dir.path().join("missing"), None).is_err());
    }

    #[test]
    fn client_secret_jwt_signs_with_hmac_only() {
        let s = Secret::new("s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t");
        let k = SigningKey::from_secret(&s, None).unwrap();
        assert_eq!(alg_name(k.alg()), "HS256");
        assert_eq!(header(&k.sign("c", "a", None).unwrap())["alg"], "HS256");
        assert!(SigningKey::from_secret(&s, Some(Algorithm::ES256)).is_err());
        assert!(!format!("{k:?}").contains("s3cr3t"));
    }

    #[test]
    fn exp_is_read_from_a_jwt_without_verifying_it() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!("{}.{}.sig", b64("{}"), b64(r#"{"exp":1700000000}"#));
        assert_eq!(unverified_exp(&jwt), Some(1_700_000_000));
        assert_eq!(unverified_exp(&format!("{jwt}\n")), Some(1_700_000_000));
        let float = format!("{}.{}.sig", b64("{}"), b64(r#"{"exp":17.5}"#));
        assert_eq!(unverified_exp(&float), Some(17));
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            &format!("x.{}.y", b64(r#"{"iat":1}"#)),
        ] {
            assert_eq!(unverified_exp(bad), None, "{bad}");
        }
    }
}
