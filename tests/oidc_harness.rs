//! The OIDC test harness itself, without the sidecar: `oidc-provider` (tests/oidc/server.mjs)
//! as `tests/client_auth.rs` configures it, spoken to directly over HTTP(S) with hand-made
//! client assertions, client certificates and subject tokens. When these pass, a failure of
//! `tests/client_auth.rs` is the sidecar's, not the harness's.
//!
//! Needs `node` and `npm ci --prefix tests/oidc` (scripts/test.sh runs it).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::oidc::{
    assertion_claims, generate_keys, random_secret, self_signed_client, subject_claims, Alg, EsKey,
    KeyKind, OidcProvider, Pki, ProviderConfig, Signer, ACCESS_TOKEN_TYPE, ASSERTION_TYPE,
    JWT_TOKEN_TYPE, TOKEN_EXCHANGE,
};
use support::{wait_until, DEADLINE};

/// A private_key_jwt client whose assertions must be signed with `alg` by the key `jwk`.
fn pkjwt_client(id: &str, alg: &str, jwks: Value) -> Value {
    json!({
        "client_id": id,
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": alg,
        "jwks": jwks,
    })
}

/// A client-credentials request authenticated by `assertion`.
async fn with_assertion(p: &OidcProvider, client_id: &str, assertion: &str) -> (u16, Value) {
    p.post_token(
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
        ],
        None,
        None,
    )
    .await
}

/// The provider's discovery documents carry the token endpoint and exactly the configured
/// client authentication methods; RFC 8414 metadata can be switched off (404) while OpenID
/// discovery stays.
#[tokio::test]
async fn discovery_lists_the_token_endpoint_and_the_configured_methods() {
    let p = OidcProvider::start(
        ProviderConfig::new()
            .client_auth_methods(&["private_key_jwt", "client_secret_basic"])
            .serve_oauth_metadata(false),
    )
    .await;
    let (status, doc) = p.get_json("/.well-known/openid-configuration").await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["issuer"], p.issuer.as_str());
    assert_eq!(doc["token_endpoint"], p.token_endpoint());
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!(["private_key_jwt", "client_secret_basic"]),
        "{doc}"
    );
    assert!(doc["grant_types_supported"]
        .as_array()
        .unwrap()
        .contains(&json!(TOKEN_EXCHANGE)));
    let (status, _) = p.get_json("/.well-known/oauth-authorization-server").await;
    assert_eq!(status, 404);
    let paths: Vec<Value> = p.requests().iter().map(|r| r["path"].clone()).collect();
    assert!(
        paths.contains(&json!("/.well-known/openid-configuration")),
        "{paths:?}"
    );

    let p = OidcProvider::start(ProviderConfig::new()).await;
    let (status, doc) = p.get_json("/.well-known/oauth-authorization-server").await;
    assert_eq!(status, 200, "{doc}");
    let methods = doc["token_endpoint_auth_methods_supported"].clone();
    for m in [
        "none",
        "client_secret_basic",
        "client_secret_post",
        "client_secret_jwt",
        "private_key_jwt",
    ] {
        assert!(methods.as_array().unwrap().contains(&json!(m)), "{methods}");
    }
}

/// Assertions signed by every key type and algorithm the sidecar supports (RSA from PKCS#8 and
/// PKCS#1, PS256, P-256, P-384, Ed25519) are accepted, give a token introspection calls active,
/// are logged with their `jti`, `kid`, `alg` and the registered key that verifies them, and
/// are refused when replayed, signed with another algorithm than the client's, or expired.
#[tokio::test]
async fn private_key_jwt_of_every_key_type_is_accepted_once() {
    let keys = generate_keys(&[KeyKind::Rsa, KeyKind::P256, KeyKind::P384, KeyKind::Ed25519]);
    let (rsa, p256, p384, ed) = (&keys[0], &keys[1], &keys[2], &keys[3]);
    assert!(rsa.pkcs8_pem.contains("BEGIN PRIVATE KEY"));
    assert!(rsa
        .traditional_pem
        .as_deref()
        .unwrap()
        .contains("BEGIN RSA PRIVATE KEY"));
    for ec in [p256, p384] {
        assert!(ec
            .traditional_pem
            .as_deref()
            .unwrap()
            .contains("BEGIN EC PRIVATE KEY"));
    }
    assert!(ed.traditional_pem.is_none());
    let jwks = |k: &support::oidc::KeyMaterial, kid: &str| json!({ "keys": [k.jwk(kid)] });
    let cases: Vec<(&str, &str, Signer, Value)> = vec![
        (
            "rs256-pkcs8",
            "RS256",
            rsa.signer(Alg::RS256, Some("rsa-1")),
            jwks(rsa, "rsa-1"),
        ),
        (
            "rs256-pkcs1",
            "RS256",
            Signer::from_rsa_pkcs1_pem(
                Alg::RS256,
                rsa.traditional_pem.as_deref().unwrap(),
                Some("rsa-1"),
            ),
            jwks(rsa, "rsa-1"),
        ),
        (
            "ps256",
            "PS256",
            rsa.signer(Alg::PS256, Some("rsa-1")),
            jwks(rsa, "rsa-1"),
        ),
        (
            "es256",
            "ES256",
            p256.signer(Alg::ES256, Some("p256-1")),
            jwks(p256, "p256-1"),
        ),
        (
            "es384",
            "ES384",
            p384.signer(Alg::ES384, Some("p384-1")),
            jwks(p384, "p384-1"),
        ),
        (
            "eddsa",
            "EdDSA",
            ed.signer(Alg::EdDSA, Some("ed-1")),
            jwks(ed, "ed-1"),
        ),
    ];
    let mut cfg = ProviderConfig::new();
    for (id, alg, _, jwks) in &cases {
        cfg = cfg.client(pkjwt_client(id, alg, jwks.clone()));
    }
    let p = OidcProvider::start(cfg).await;
    for (id, alg, signer, _) in &cases {
        let claims = assertion_claims(id, p.token_endpoint(), 60);
        let assertion = signer.sign(&claims);
        let (status, body) = with_assertion(&p, id, &assertion).await;
        assert_eq!(status, 200, "{id}: {body}\n{}", p.log_text());
        assert_eq!(body["token_type"], "Bearer");
        let expires_in = body["expires_in"].as_u64().unwrap();
        assert!((4..=5).contains(&expires_in), "{id}: {body}");
        let token = body["access_token"].as_str().unwrap();
        let info = p.introspect(token).await;
        assert_eq!(info["active"], true, "{id}: {info}");
        assert_eq!(info["client_id"], *id);

        let logged = p.successes(id).pop().expect("the success is logged");
        assert_eq!(logged["auth_method"], "private_key_jwt");
        assert_eq!(logged["presented"], "client_assertion");
        assert_eq!(logged["assertion"]["jti"], claims["jti"]);
        assert_eq!(logged["assertion"]["alg"], *alg);
        assert_eq!(logged["assertion"]["kid"], signer_kid(&assertion));
        assert_eq!(logged["assertion"]["verified_by"], signer_kid(&assertion));
        assert_eq!(logged["assertion"]["aud"], p.token_endpoint());

        // The same assertion again: its jti was used.
        let (status, body) = with_assertion(&p, id, &assertion).await;
        assert_eq!(status, 401, "{id}: a replayed assertion: {body}");
        assert_eq!(body["error"], "invalid_client");
        let last = p.token_requests(id).pop().unwrap();
        assert!(
            last["error_detail"]
                .as_str()
                .is_some_and(|d| d.contains("only be used once")),
            "{last}"
        );

        // Expired.
        let expired = signer.sign(&assertion_claims(id, p.token_endpoint(), -120));
        let (status, _) = with_assertion(&p, id, &expired).await;
        assert_eq!(status, 401, "{id}: an expired assertion");
    }
    // RS256 for a client registered for PS256: refused (the provider checks the alg).
    let rs = rsa.signer(Alg::RS256, Some("rsa-1"));
    let (status, body) = with_assertion(
        &p,
        "ps256",
        &rs.sign(&assertion_claims("ps256", p.token_endpoint(), 60)),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(p.token_requests("ps256").pop().unwrap()["error_detail"]
        .as_str()
        .is_some_and(|d| d.contains("alg mismatch")));
}

fn signer_kid(jwt: &str) -> Value {
    use base64::Engine as _;
    let header = jwt.split('.').next().unwrap();
    let v: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    v["kid"].clone()
}

/// With two keys registered, the log names the one that signed each assertion (how the key
/// rotation test tells old from new).
#[tokio::test]
async fn the_log_names_the_registered_key_that_verified_an_assertion() {
    let keys = generate_keys(&[KeyKind::P256, KeyKind::P256]);
    let p = OidcProvider::start(ProviderConfig::new().client(pkjwt_client(
        "two-keys",
        "ES256",
        json!({ "keys": [keys[0].jwk("old"), keys[1].jwk("new")] }),
    )))
    .await;
    for (key, kid) in [(&keys[0], "old"), (&keys[1], "new")] {
        // No kid in the header: the provider tries every key.
        let a = key.signer(Alg::ES256, None).sign(&assertion_claims(
            "two-keys",
            p.token_endpoint(),
            60,
        ));
        let (status, body) = with_assertion(&p, "two-keys", &a).await;
        assert_eq!(status, 200, "{body}");
        let logged = p.successes("two-keys").pop().unwrap();
        assert_eq!(logged["assertion"]["kid"], Value::Null);
        assert_eq!(logged["assertion"]["verified_by"], kid);
    }
}

/// client_secret_jwt: an HS256 assertion keyed by the client secret is accepted once; the log
/// says the secret verified it.
#[tokio::test]
async fn client_secret_jwt_is_accepted() {
    let secret = random_secret();
    let p = OidcProvider::start(ProviderConfig::new().client(json!({
        "client_id": "hs",
        "client_secret": secret,
        "token_endpoint_auth_method": "client_secret_jwt",
        "token_endpoint_auth_signing_alg": "HS256",
    })))
    .await;
    let a = Signer::hs256(secret.as_bytes()).sign(&assertion_claims("hs", p.token_endpoint(), 60));
    let (status, body) = with_assertion(&p, "hs", &a).await;
    assert_eq!(status, 200, "{body}\n{}", p.log_text());
    let logged = p.successes("hs").pop().unwrap();
    assert_eq!(logged["auth_method"], "client_secret_jwt");
    assert_eq!(logged["assertion"]["alg"], "HS256");
    assert_eq!(logged["assertion"]["verified_by"], "client_secret");
    let wrong = Signer::hs256(b"not-the-secret-not-the-secret-not-the-secret")
        .sign(&assertion_claims("hs", p.token_endpoint(), 60));
    assert_eq!(with_assertion(&p, "hs", &wrong).await.0, 401);
}

/// Mutual TLS (RFC 8705) over HTTPS: a certificate from the client CA naming the registered
/// DNS name authenticates a `tls_client_auth` client, and the log shows its fingerprint; no
/// certificate, or one from elsewhere, is refused. A `self_signed_tls_client_auth` client is
/// authenticated by the certificate registered in its JWKS (`x5c`) only.
#[tokio::test]
async fn mutual_tls_client_certificates_authenticate() {
    let server_pki = Pki::new("provider CA");
    let client_pki = Pki::new("client CA");
    let good = client_pki.client_leaf("sidecar-client.test", None);
    let other_name = client_pki.client_leaf("someone-else.test", None);
    let foreign = self_signed_client("sidecar-client.test");
    let registered_self = self_signed_client("self.test");
    let unregistered_self = self_signed_client("self.test");
    let p = OidcProvider::start(
        ProviderConfig::new()
            .https(&server_pki, Some(&client_pki))
            .client(json!({
                "client_id": "mtls",
                "token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_san_dns": "sidecar-client.test",
            }))
            .client(json!({
                "client_id": "self-signed",
                "token_endpoint_auth_method": "self_signed_tls_client_auth",
                "jwks": { "keys": [registered_self.x5c_jwk("cert-1")] },
            })),
    )
    .await;
    assert!(p.issuer.starts_with("https://127.0.0.1:"), "{}", p.issuer);
    let form = |id| vec![("grant_type", "client_credentials"), ("client_id", id)];

    let (status, body) = p.post_token(&form("mtls"), None, Some(&good)).await;
    assert_eq!(status, 200, "{body}\n{}", p.log_text());
    let logged = p.successes("mtls").pop().unwrap();
    assert_eq!(logged["auth_method"], "tls_client_auth");
    assert_eq!(logged["cert"]["fingerprint256"], good.fingerprint256());
    let info = p.introspect(body["access_token"].as_str().unwrap()).await;
    assert_eq!(info["active"], true, "{info}");

    for (what, cert) in [
        ("no certificate", None),
        ("a certificate for another name", Some(&other_name)),
        ("a certificate from another CA", Some(&foreign)),
    ] {
        let (status, body) = p.post_token(&form("mtls"), None, cert).await;
        assert_eq!(status, 401, "{what}: {body}");
    }

    let (status, body) = p
        .post_token(&form("self-signed"), None, Some(&registered_self))
        .await;
    assert_eq!(status, 200, "{body}\n{}", p.log_text());
    let (status, _) = p
        .post_token(&form("self-signed"), None, Some(&unregistered_self))
        .await;
    assert_eq!(status, 401, "an unregistered self-signed certificate");
}

/// Token exchange (RFC 8693): a subject token (and actor token) signed by the configured
/// issuer's key gives an access token recording the subject, the actor and every `audience`
/// and `resource`; an expired or foreign subject token, or an unsupported requested type, is
/// refused. A public client (`none`) may exchange too.
#[tokio::test]
async fn token_exchange_checks_the_subject_token() {
    let idp = EsKey::new("idp-1");
    let stranger = EsKey::new("idp-1");
    let secret = random_secret();
    let p = OidcProvider::start(
        ProviderConfig::new()
            .subject_token_issuer("https://idp.test", idp.jwks())
            .client(json!({
                "client_id": "exchanger",
                "client_secret": secret,
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": [TOKEN_EXCHANGE],
            }))
            .client(json!({
                "client_id": "public-app",
                "token_endpoint_auth_method": "none",
                "grant_types": [TOKEN_EXCHANGE],
            })),
    )
    .await;
    let subject = idp.sign(&subject_claims("https://idp.test", "user-42", 120));
    let actor = idp.sign(&subject_claims("https://idp.test", "workload-7", 120));
    let (status, body) = p
        .post_token(
            &[
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", subject.as_str()),
                ("subject_token_type", JWT_TOKEN_TYPE),
                ("actor_token", actor.as_str()),
                ("actor_token_type", JWT_TOKEN_TYPE),
                ("requested_token_type", ACCESS_TOKEN_TYPE),
                ("audience", "orders"),
                ("audience", "billing"),
                ("resource", "https://api.test/orders"),
                ("resource", "https://api.test/billing"),
            ],
            Some(("exchanger", secret.as_str())),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", p.log_text());
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN_TYPE);
    let info = p.introspect(body["access_token"].as_str().unwrap()).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["exchanged_sub"], "user-42");
    assert_eq!(info["exchanged_act"], "workload-7");
    assert_eq!(info["requested_audience"], json!(["orders", "billing"]));
    assert_eq!(
        info["requested_resource"],
        json!(["https://api.test/orders", "https://api.test/billing"])
    );
    let logged = p.successes("exchanger").pop().unwrap();
    assert_eq!(logged["grant_type"], TOKEN_EXCHANGE);
    assert_eq!(logged["exchange"]["subject_sub"], "user-42", "{logged}");
    assert_eq!(logged["exchange"]["actor_sub"], "workload-7", "{logged}");
    assert_eq!(logged["audience"], json!(["orders", "billing"]), "{logged}");

    let (status, body) = exchange(
        &p,
        &secret,
        &idp.sign(&subject_claims("https://idp.test", "u", -60)),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "expired: {body}"
    );
    let (status, body) = exchange(
        &p,
        &secret,
        &stranger.sign(&subject_claims("https://idp.test", "u", 60)),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "foreign key: {body}"
    );
    let (status, body) = exchange(
        &p,
        &secret,
        &idp.sign(&subject_claims("https://other.test", "u", 60)),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "other issuer: {body}"
    );

    let subject = idp.sign(&subject_claims("https://idp.test", "user-43", 120));
    let (status, body) = p
        .post_token(
            &[
                ("grant_type", TOKEN_EXCHANGE),
                ("client_id", "public-app"),
                ("subject_token", subject.as_str()),
                ("subject_token_type", JWT_TOKEN_TYPE),
            ],
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let logged = p.successes("public-app").pop().unwrap();
    assert_eq!(logged["auth_method"], "none");
    assert_eq!(logged["presented"], "none");
    // A public client may not use client_credentials here (not among its grant types).
    let (status, body) = p
        .post_token(
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "public-app"),
            ],
            None,
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

/// A token exchange of `token` by the confidential client `exchanger`.
async fn exchange(p: &OidcProvider, secret: &str, token: &str) -> (u16, Value) {
    p.post_token(
        &[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", token),
            ("subject_token_type", JWT_TOKEN_TYPE),
        ],
        Some(("exchanger", secret)),
        None,
    )
    .await
}

/// Client credentials with one `resource` gives a token whose audience is that resource (two
/// are refused: oidc-provider allows one per client-credentials token); `audience` fields are
/// logged as sent.
#[tokio::test]
async fn client_credentials_with_a_resource_is_issued_for_it() {
    let secret = random_secret();
    let p = OidcProvider::start(ProviderConfig::new().client(json!({
        "client_id": "cc",
        "client_secret": secret,
        "token_endpoint_auth_method": "client_secret_post",
    })))
    .await;
    let (status, body) = p
        .post_token(
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "cc"),
                ("client_secret", secret.as_str()),
                ("resource", "https://api.test/orders"),
                ("audience", "a1"),
                ("audience", "a2"),
            ],
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", p.log_text());
    let info = p.introspect(body["access_token"].as_str().unwrap()).await;
    assert_eq!(info["aud"], "https://api.test/orders", "{info}");
    let logged = p.successes("cc").pop().unwrap();
    assert_eq!(logged["auth_method"], "client_secret_post");
    assert_eq!(logged["resource"], json!(["https://api.test/orders"]));
    assert_eq!(logged["audience"], json!(["a1", "a2"]));
    let (status, body) = p
        .post_token(
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "cc"),
                ("client_secret", secret.as_str()),
                ("resource", "https://api.test/orders"),
                ("resource", "https://api.test/billing"),
            ],
            None,
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target")),
        "{body}"
    );
}

/// A client's own token lifetime wins over the default; a token of a lifetime of 1 s is
/// inactive once it has passed.
#[tokio::test]
async fn token_lifetimes_are_per_client() {
    let secret = random_secret();
    let client = |id: &str, ttl: u64| {
        json!({
            "client_id": id,
            "client_secret": secret,
            "access_token_ttl": ttl,
        })
    };
    let p = OidcProvider::start(
        ProviderConfig::new()
            .access_token_ttl(7)
            .client(client("short", 1))
            .client(client("long", 300))
            .client(json!({ "client_id": "default", "client_secret": secret })),
    )
    .await;
    let mut short_token = String::new();
    for (id, want) in [("short", 1), ("long", 300), ("default", 7)] {
        let (status, body) = p
            .post_token(
                &[("grant_type", "client_credentials")],
                Some((id, secret.as_str())),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let got = body["expires_in"].as_u64().unwrap();
        assert!(
            got == want || got + 1 == want,
            "{id}: expires_in {got}, want {want}"
        );
        if id == "short" {
            short_token = body["access_token"].as_str().unwrap().to_owned();
        }
    }
    // Introspection reports it inactive once its exp has passed (whole seconds).
    support::eventually(
        Duration::from_secs(10),
        "the 1-second token to expire",
        || {
            let t = short_token.clone();
            let p = &p;
            async move { p.introspect(&t).await["active"] == false }
        },
    )
    .await;
}

/// Dropping the handle kills the Node process (by its PID).
#[tokio::test]
async fn the_provider_stops_when_dropped() {
    let p = OidcProvider::start(ProviderConfig::new()).await;
    let pid = p.pid();
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists());
    drop(p);
    wait_until(DEADLINE, "the provider's process to be gone", || {
        !proc_dir.exists()
    })
    .await;
}

/// The whole rig with what the sidecar could already do before issue 17 (a client secret, HTTP
/// Basic or in the form; an extra form field for `resource`): the sidecar gets tokens from
/// oidc-provider, the upstream receives one the provider issued (with the resource as its
/// audience), timed refreshes follow the provider's short lifetimes, and the provider's log
/// shows each request's auth method. So the provider, its log, introspection and the upstream
/// work end to end with the real binary.
#[tokio::test]
async fn the_sidecar_gets_tokens_from_the_provider_with_a_client_secret() {
    let secret = random_secret();
    let p = OidcProvider::start(
        ProviderConfig::new()
            .access_token_ttl(5)
            .client(json!({
                "client_id": "basic-client",
                "client_secret": secret,
                "token_endpoint_auth_method": "client_secret_basic",
            }))
            .client(json!({
                "client_id": "post-client",
                "client_secret": secret,
                "token_endpoint_auth_method": "client_secret_post",
            })),
    )
    .await;
    let upstream = support::Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    for (id, auth, method) in [
        ("basic-client", "basic", "client_secret_basic"),
        ("post-client", "body", "client_secret_post"),
    ] {
        let sc = support::SidecarBuilder::new(&upstream.url(""))
            .args(["--token-url", p.token_endpoint(), "--client-id", id])
            .args(["--client-auth", auth, "--token-request-budget", "100/60s"])
            .arg("--client-secret-file")
            .arg(&secret_file)
            .args(["--token-param", "resource=https://api.test/orders"])
            .start()
            .await;
        sc.wait_ready().await;
        let r = support::Client::http1().get(&sc.url("/echo")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let auth_header = upstream.last().header("authorization").unwrap();
        let token = auth_header.strip_prefix("Bearer ").unwrap();
        let info = p.assert_issued(token, id).await;
        if let Some(info) = info {
            assert_eq!(info["aud"], "https://api.test/orders", "{info}");
        }
        p.wait_for_token_requests(
            id,
            support::oidc::REFRESH_DEADLINE,
            "two timed refreshes",
            |r| r.iter().filter(|r| r["status"] == 200).count() >= 3,
        )
        .await;
        for r in p.token_requests(id) {
            assert_eq!(r["status"], 200, "{r}");
            assert_eq!(r["auth_method"], method, "{r}");
            assert_eq!(r["presented"], method, "{r}");
            assert_eq!(r["resource"], json!(["https://api.test/orders"]), "{r}");
        }
        sc.assert_logs_free_of(&secret);
    }
}
