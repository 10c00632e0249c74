//! The token endpoint from the authorization server's metadata: `--issuer URL` is looked up
//! at start in `URL/.well-known/oauth-authorization-server` (RFC 8414 3), else
//! `URL/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 4).
//!
//! The metadata must name the same issuer (RFC 8414 3.3: anything else could be an attacker's
//! document) and an https token endpoint (http only on loopback). When it lists
//! `token_endpoint_auth_methods_supported` and the configured client authentication is not
//! among them, starting fails with both named: the first token request would be refused.
//! With `--client-auth tls`, the token endpoint of `mtls_endpoint_aliases` is used when there
//! is one (RFC 8705 5).

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;

use super::{http_client, HttpClient, MAX_RESPONSE_BYTES};
use crate::config::{ClientAuth, TokenConfig};

/// Where the metadata of `issuer` is looked for, in order.
pub fn metadata_urls(issuer: &str) -> Vec<String> {
    let issuer = issuer.trim().trim_end_matches('/');
    // RFC 8414 3.1: the well-known part goes between the host and the issuer's path.
    let (origin, path) = match issuer.split_once("://") {
        Some((scheme, rest)) => match rest.find('/') {
            Some(i) => (format!("{scheme}://{}", &rest[..i]), &rest[i..]),
            None => (issuer.to_owned(), ""),
        },
        None => (issuer.to_owned(), ""),
    };
    vec![
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{issuer}/.well-known/openid-configuration"),
    ]
}

/// The profile with its token endpoint taken from the issuer's metadata, when it has an
/// issuer and no `--token-url` (which wins). The error names what failed, never a secret.
pub async fn resolve(cfg: &TokenConfig) -> Result<TokenConfig, String> {
    let Some(issuer) = cfg.issuer.as_deref().filter(|_| cfg.token_url.is_none()) else {
        return Ok(cfg.clone());
    };
    let http = http_client(cfg)?;
    let mut tried = Vec::new();
    for url in metadata_urls(issuer) {
        match fetch(&http, &url, cfg.request_timeout).await {
            Ok(doc) => {
                let token_url = token_endpoint(&doc, issuer, cfg.client_auth, &url)?;
                tracing::info!(token = %cfg.name, issuer, metadata = %url, token_url = %token_url, "token endpoint discovered");
                let mut out = cfg.clone();
                out.token_url = Some(token_url);
                return Ok(out);
            }
            Err(e) => tried.push(format!("{url}: {e}")),
        }
    }
    Err(format!(
        "no authorization server metadata for issuer {issuer}: {}",
        tried.join("; ")
    ))
}

async fn fetch(http: &HttpClient, url: &str, timeout: Duration) -> Result<Value, String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(header::ACCEPT, "application/json")
        .header(
            header::USER_AGENT,
            concat!("token-sidecar/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = http
            .request(req)
            .await
            .map_err(|e| crate::error::ErrorChain(&e).to_string())?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|_| format!("the answer is not readable or over {MAX_RESPONSE_BYTES} bytes"))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(format!("answered {}", status.as_u16()));
        }
        serde_json::from_slice::<Value>(&body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| "the answer is not a JSON object".to_owned())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?
}

/// The token endpoint a metadata document names, once it is checked against the issuer and
/// the client authentication.
pub fn token_endpoint(
    doc: &Value,
    issuer: &str,
    auth: ClientAuth,
    from: &str,
) -> Result<String, String> {
    let named = doc
        .get("issuer")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if named.trim_end_matches('/') != issuer.trim().trim_end_matches('/') {
        return Err(format!(
            "the metadata at {from} is for issuer `{named}`, not `{issuer}`"
        ));
    }
    if let Some(methods) = doc
        .get("token_endpoint_auth_methods_supported")
        .and_then(Value::as_array)
    {
        let listed: Vec<&str> = methods.iter().filter_map(Value::as_str).collect();
        if !auth.metadata_names().iter().any(|m| listed.contains(m)) {
            return Err(format!(
                "client_auth `{}` ({}) is not among the methods the authorization server supports (token_endpoint_auth_methods_supported: {})",
                auth.name(),
                auth.metadata_names().join(" or "),
                listed.join(", ")
            ));
        }
    }
    let alias = (auth == ClientAuth::Tls)
        .then(|| doc.pointer("/mtls_endpoint_aliases/token_endpoint"))
        .flatten()
        .and_then(Value::as_str);
    let endpoint = alias
        .or_else(|| doc.get("token_endpoint").and_then(Value::as_str))
        .ok_or_else(|| format!("the metadata at {from} names no token_endpoint"))?;
    let url = crate::proxy::upstream::Upstream::parse(endpoint)
        .map_err(|e| format!("the metadata's token_endpoint `{endpoint}`: {e}"))?;
    if !url.is_https() && !crate::config::is_loopback_host(url.authority().host()) {
        return Err(format!(
            "the metadata's token_endpoint `{endpoint}` is plain http on a non-loopback host"
        ));
    }
    Ok(endpoint.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_well_known_part_goes_after_the_host() {
        assert_eq!(
            metadata_urls("https://as.example.com"),
            [
                "https://as.example.com/.well-known/oauth-authorization-server",
                "https://as.example.com/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            metadata_urls("https://login.example.com/tenant-1/v2.0/"),
            [
                "https://login.example.com/.well-known/oauth-authorization-server/tenant-1/v2.0",
                "https://login.example.com/tenant-1/v2.0/.well-known/openid-configuration"
            ]
        );
    }

    #[test]
    fn the_metadata_must_be_for_the_issuer_and_support_the_method() {
        let doc = json!({
            "issuer": "https://as.example.com",
            "token_endpoint": "https://as.example.com/oauth/token",
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
            "mtls_endpoint_aliases": {"token_endpoint": "https://mtls.as.example.com/token"}
        });
        let iss = "https://as.example.com/";
        assert_eq!(
            token_endpoint(&doc, iss, ClientAuth::PrivateKeyJwt, "m").unwrap(),
            "https://as.example.com/oauth/token"
        );
        assert_eq!(
            token_endpoint(&doc, iss, ClientAuth::AssertionFile, "m").unwrap(),
            "https://as.example.com/oauth/token"
        );
        let e = token_endpoint(&doc, iss, ClientAuth::Body, "m").unwrap_err();
        assert!(
            e.contains("client_auth `body` (client_secret_post)")
                && e.contains("client_secret_basic, private_key_jwt"),
            "{e}"
        );
        let e = token_endpoint(&doc, "https://evil.example", ClientAuth::Basic, "m").unwrap_err();
        assert!(e.contains("not `https://evil.example`"), "{e}");
        let mut tls = doc.clone();
        tls["token_endpoint_auth_methods_supported"] = json!(["self_signed_tls_client_auth"]);
        assert_eq!(
            token_endpoint(&tls, iss, ClientAuth::Tls, "m").unwrap(),
            "https://mtls.as.example.com/token"
        );
        let plain = json!({"issuer": iss, "token_endpoint": "http://as.example.com/token"});
        assert!(token_endpoint(&plain, iss, ClientAuth::Basic, "m").is_err());
        let unlisted = json!({"issuer": iss, "token_endpoint": "http://127.0.0.1:9/token"});
        assert_eq!(
            token_endpoint(&unlisted, iss, ClientAuth::None, "m").unwrap(),
            "http://127.0.0.1:9/token"
        );
        assert!(token_endpoint(&json!({"issuer": iss}), iss, ClientAuth::Basic, "m").is_err());
    }
}
