//! Client authentication at the token endpoint: what each `--client-auth` method adds to a
//! token request (RFC 6749 2.3.1, RFC 7523 2.2, RFC 8705 2).
//!
//! Every file is read when the request is made, never cached past it: a rotated client
//! secret, signing key or projected service-account token is used by the next request.

use std::path::Path;

use super::assertion::{self, SigningKey, JWT_BEARER_ASSERTION_TYPE};
use super::{z, FormFields, OAuthError};
use crate::config::{ClientAuth, TokenConfig};
use crate::secret::{read_secret_file, Secret, SecretSource};

/// What a method adds besides its form fields.
#[derive(Default)]
pub(super) struct Authenticated {
    /// The client secret, sent with the client id in HTTP Basic (`basic`).
    pub(super) basic: Option<Secret>,
    /// The JWT read from a file, with its `exp` (`assertion_file`).
    pub(super) credential: Option<(String, u64)>,
}

/// Adds the fields of the profile's client authentication to `fields`; `token_url` is the
/// default audience of signed assertions.
pub(super) fn authenticate(
    cfg: &TokenConfig,
    token_url: &str,
    fields: &mut FormFields,
) -> Result<Authenticated, OAuthError> {
    let client_id = cfg.client_id.as_deref();
    let mut out = Authenticated::default();
    let id_field = |fields: &mut FormFields| {
        if let Some(id) = client_id {
            fields.push(("client_id", z(id)));
        }
    };
    match cfg.client_auth {
        ClientAuth::Basic | ClientAuth::Body => {
            let secret = cfg
                .client_secret
                .as_ref()
                .map(SecretSource::load)
                .transpose()?;
            match secret {
                Some(s) if cfg.client_auth == ClientAuth::Basic => out.basic = Some(s),
                Some(s) => {
                    id_field(fields);
                    fields.push(("client_secret", z(s.expose())));
                }
                None => id_field(fields),
            }
        }
        ClientAuth::None | ClientAuth::Tls => id_field(fields),
        ClientAuth::PrivateKeyJwt | ClientAuth::ClientSecretJwt => {
            let key = signing_key(cfg)?;
            let id = client_id.unwrap_or_default();
            let aud = cfg.jwt.audience.as_deref().unwrap_or(token_url);
            let jwt = key.sign(id, aud, cfg.jwt.key_id.as_deref()).map_err(|e| {
                OAuthError::Credentials(format!("signing the client assertion: {e}"))
            })?;
            id_field(fields);
            fields.push(("client_assertion_type", z(JWT_BEARER_ASSERTION_TYPE)));
            fields.push(("client_assertion", jwt));
        }
        ClientAuth::AssertionFile => {
            let path = cfg.client_assertion_file.as_deref().ok_or_else(|| {
                OAuthError::Credentials("no client assertion file is configured".into())
            })?;
            let (jwt, credential) = read_jwt_file(path, "client assertion file")?;
            out.credential = credential;
            id_field(fields);
            fields.push(("client_assertion_type", z(JWT_BEARER_ASSERTION_TYPE)));
            fields.push(("client_assertion", z(jwt.expose())));
        }
    }
    Ok(out)
}

/// The key that signs this request's assertion, read now.
fn signing_key(cfg: &TokenConfig) -> Result<SigningKey, OAuthError> {
    let alg =
        match cfg.jwt.alg.as_deref() {
            Some(name) => Some(assertion::parse_alg(name).ok_or_else(|| {
                OAuthError::Credentials(format!("`{name}` is not a JWS algorithm"))
            })?),
            None => None,
        };
    if cfg.client_auth == ClientAuth::ClientSecretJwt {
        let secret = cfg
            .client_secret
            .as_ref()
            .ok_or_else(|| OAuthError::Credentials("no client secret is configured".into()))?
            .load()?;
        return SigningKey::from_secret(&secret, alg).map_err(OAuthError::Credentials);
    }
    let path =
        cfg.jwt.signing_key_file.as_deref().ok_or_else(|| {
            OAuthError::Credentials("no JWT signing key file is configured".into())
        })?;
    SigningKey::load(path, alg).map_err(|e| OAuthError::Credentials(e.to_string()))
}

/// A JWT read from `path` for one request, and its `exp` when it has one (`what` names the
/// file in `/readyz`).
pub(super) fn read_jwt_file(
    path: &Path,
    what: &str,
) -> Result<(Secret, Option<(String, u64)>), OAuthError> {
    let jwt = read_secret_file(path)?;
    let exp = assertion::unverified_exp(jwt.expose())
        .map(|exp| (format!("{what} {}", path.display()), exp));
    Ok((jwt, exp))
}

/// The one of two credentials that expires first.
pub(super) fn earliest(
    a: Option<(String, u64)>,
    b: Option<(String, u64)>,
) -> Option<(String, u64)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.1 < a.1 { b } else { a }),
        (a, b) => a.or(b),
    }
}
