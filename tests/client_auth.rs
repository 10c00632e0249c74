//! Client authentication without a shared secret, token exchange, audiences and resources, and
//! discovery (the contract of issue 17), end to end: the real `token-sidecar` binary against a
//! real, independent, OpenID-certified authorization server, `oidc-provider`
//! (tests/support/oidc.rs, tests/oidc/server.mjs), over sockets on 127.0.0.1, with a fake
//! upstream that shows the injected token. Tokens live a few seconds so that refreshes happen
//! within a test; oidc-provider refuses a replayed client assertion `jti` by itself, so refreshes
//! that keep succeeding prove fresh assertions. After each scenario, no key, secret, assertion or
//! subject token shows up in the sidecar's trace logs, `/metrics`, `/token-info` or the output of
//! `token-sidecar check` run with the same flags.
//!
//! The harness itself is tested without the sidecar in tests/oidc_harness.rs. Needs `node` and
//! `npm ci --prefix tests/oidc` (scripts/test.sh runs it).

mod support;

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::metrics;
use support::oidc::{
    assertion_claims, generate_keys, jwt_payload, random_secret, replace_file, self_signed_client,
    subject_claims, EsKey, KeyKind, KeyMaterial, OidcProvider, Pki, ProviderConfig,
    ACCESS_TOKEN_TYPE, ASSERTION_TYPE, JWT_TOKEN_TYPE, REFRESH_DEADLINE, TOKEN_EXCHANGE,
};
use support::sidecar::Output;
use support::{eventually, Client, Sidecar, SidecarBuilder, Upstream, DEADLINE};

/// The expiry of the client assertion or subject token a profile sends.
const ASSERTION_EXPIRY: &str = "token_sidecar_client_assertion_expiry_timestamp_seconds";

/// The issuer of subject and actor tokens in the token-exchange tests.
const IDP: &str = "https://idp.test";

macro_rules! flags {
    ($($x:expr),* $(,)?) => { vec![$(OsString::from($x)),*] };
}

/// A fake upstream and a directory for the credential files of one scenario.
struct Rig {
    upstream: Upstream,
    dir: tempfile::TempDir,
}

impl Rig {
    async fn new() -> Rig {
        Rig {
            upstream: Upstream::start().await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes `content` to a file of the rig (mode 0600) and returns its path.
    fn file(&self, name: &str, content: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// Where `run` and `check` listen and forward to.
    fn route_args(&self) -> Vec<OsString> {
        flags![
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            self.upstream.url(""),
        ]
    }

    /// `token-sidecar run` with `flags`, logging at trace level, with a token request budget
    /// for tokens that live seconds.
    async fn start(&self, flags: &[OsString]) -> Sidecar {
        SidecarBuilder::new(&self.upstream.url(""))
            .env("TOKEN_SIDECAR_LOG", "trace")
            .args(["--token-request-budget", "100/60s"])
            .args(flags)
            .start()
            .await
    }

    /// `token-sidecar check` with the same flags (and the same trace logging).
    async fn check(&self, flags: &[OsString]) -> Output {
        let mut args = flags!["check"];
        args.extend(self.route_args());
        args.extend(flags!["--token-request-budget", "100/60s"]);
        args.extend(flags.iter().cloned());
        tokio::task::spawn_blocking(move || {
            support::sidecar::run_once(args, &[("TOKEN_SIDECAR_LOG", "trace")])
        })
        .await
        .unwrap()
    }

    /// `token-sidecar run` with `flags`, expected to exit by itself within `deadline` (a
    /// configuration it must refuse at start); killed, failing the test, if it does not.
    async fn run_expecting_exit(&self, flags: &[OsString], deadline: Duration) -> Output {
        let mut args = flags!["run"];
        args.extend(self.route_args());
        args.extend(flags.iter().cloned());
        tokio::task::spawn_blocking(move || {
            let mut child = support::sidecar::command()
                .args(&args)
                .env("TOKEN_SIDECAR_LOG", "trace")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn token-sidecar");
            let mut out_pipe = child.stdout.take().unwrap();
            let mut err_pipe = child.stderr.take().unwrap();
            let out = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = out_pipe.read_to_string(&mut s);
                s
            });
            let err = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err_pipe.read_to_string(&mut s);
                s
            });
            let end = Instant::now() + deadline;
            let status = loop {
                if let Some(st) = child.try_wait().unwrap() {
                    break Some(st);
                }
                if Instant::now() > end {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let output = Output {
                code: status.and_then(|s| s.code()),
                stdout: out.join().unwrap(),
                stderr: err.join().unwrap(),
            };
            assert!(
                status.is_some(),
                "token-sidecar did not exit within {deadline:?}; it had to refuse its configuration at start:\n{}",
                output.all()
            );
            output
        })
        .await
        .unwrap()
    }
}

/// A GET through the sidecar: the token the upstream received (after `Bearer `).
async fn token_seen_upstream(sc: &Sidecar, rig: &Rig) -> String {
    let r = Client::http1().get(&sc.url("/echo")).await;
    assert_eq!(
        r.status,
        200,
        "a request through the sidecar: {}; sidecar logs:\n{}",
        r.text(),
        sc.logs().join("\n")
    );
    let auth = rig
        .upstream
        .last()
        .header("authorization")
        .expect("the upstream got an Authorization header");
    auth.strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a bearer token: {}", &auth[..auth.len().min(12)]))
        .to_owned()
}

/// Waits until the sidecar's requests reach the upstream with another token than `old`.
async fn wait_for_new_token(sc: &Sidecar, rig: &Rig, old: &str) -> String {
    let end = Instant::now() + REFRESH_DEADLINE;
    loop {
        let t = token_seen_upstream(sc, rig).await;
        if t != old {
            return t;
        }
        assert!(
            Instant::now() < end,
            "the upstream still gets the first token after {REFRESH_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for `/readyz` 200, printing the provider's log too when it does not come.
async fn wait_ready(sc: &Sidecar, p: &OidcProvider) {
    let end = Instant::now() + DEADLINE;
    loop {
        let (status, body) = sc.admin_get("/readyz").await;
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < end,
            "the sidecar is not ready after {DEADLINE:?}: {body}\nprovider log:\n{}\nsidecar log (last 60 lines):\n{}",
            p.log_text(),
            tail(&sc.logs(), 60)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn successes(reqs: &[Value]) -> usize {
    reqs.iter().filter(|r| r["status"] == 200).count()
}

/// The value of the assertion-expiry metric of the profile `default`.
async fn assertion_expiry(sc: &Sidecar) -> Option<f64> {
    metrics::value(
        &sc.metrics().await,
        ASSERTION_EXPIRY,
        &[("token", "default")],
    )
}

/// Waits until the assertion-expiry metric equals `exp`.
async fn wait_for_expiry_metric(sc: &Sidecar, exp: i64) {
    eventually(
        DEADLINE,
        &format!("{ASSERTION_EXPIRY}{{token=\"default\"}} to be {exp}"),
        || async { assertion_expiry(sc).await == Some(exp as f64) },
    )
    .await;
}

/// POST /refresh must succeed.
async fn refresh_ok(sc: &Sidecar, p: &OidcProvider) {
    let r = sc.post_refresh().await;
    assert_eq!(
        r.status,
        200,
        "POST /refresh: {}\nprovider log:\n{}",
        r.text(),
        p.log_text()
    );
}

/// The base64 lines of a PEM that are long enough to be unmistakable.
fn pem_fragments(lines: Vec<String>) -> Vec<String> {
    lines.into_iter().filter(|l| l.len() >= 16).collect()
}

/// A JWT and its signature: neither may be printed.
fn jwt_secrets(jwt: &str) -> Vec<String> {
    vec![jwt.to_owned(), jwt.rsplit('.').next().unwrap().to_owned()]
}

/// None of `secrets` in any sidecar log line, `/metrics`, `/token-info` or `check`'s output.
async fn assert_nothing_leaked(sc: &Sidecar, check: &Output, secrets: &[String]) {
    let metrics = sc.metrics().await;
    let (_, info) = sc.admin_get("/token-info").await;
    let check_out = check.all();
    for s in secrets {
        assert!(s.len() >= 16, "too short to search for: {s:?}");
        sc.assert_logs_free_of(s);
        let what = &s[..8];
        assert!(!metrics.contains(s), "a secret ({what}...) in /metrics");
        assert!(!info.contains(s), "a secret ({what}...) in /token-info");
        assert!(
            !check_out.contains(s),
            "a secret ({what}...) in `check` output:\n{check_out}"
        );
    }
}

/// `check` accepts the configuration and names `alg`.
fn assert_check_names(check: &Output, alg: &str) {
    assert_eq!(check.code, Some(0), "check failed:\n{}", check.all());
    assert!(
        check.all().contains(alg),
        "check does not name the algorithm {alg}:\n{}",
        check.all()
    );
}

// --- private_key_jwt ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Pem {
    Pkcs8,
    /// PKCS#1 for RSA, SEC1 for EC.
    Traditional,
}

/// One key type and encoding: the sidecar's first request reaches the upstream with a token the
/// provider issued to the client, and at least two timed refreshes later (each a new assertion
/// with a fresh `jti`, accepted) requests still succeed with a newer token. Every assertion has
/// the contract's claims and header; `check` names the algorithm; nothing leaks.
async fn private_key_jwt_case(kind: KeyKind, pem: Pem, alg: &str, alg_flag: Option<&str>) {
    let key = generate_keys(&[kind]).remove(0);
    let client_id = format!("pkjwt-{}", alg.to_lowercase());
    let kid = format!("{client_id}-2026");
    let p = OidcProvider::start(ProviderConfig::new().access_token_ttl(5).client(json!({
        "client_id": client_id,
        "token_endpoint_auth_method": "private_key_jwt",
        // The provider refuses an assertion signed with any other algorithm.
        "token_endpoint_auth_signing_alg": alg,
        "jwks": { "keys": [key.jwk(&kid)] },
    })))
    .await;
    let rig = Rig::new().await;
    let pem_text = match pem {
        Pem::Pkcs8 => key.pkcs8_pem.clone(),
        Pem::Traditional => key
            .traditional_pem
            .clone()
            .expect("a PKCS#1 / SEC1 encoding"),
    };
    let key_file = rig.file("signing-key.pem", &pem_text);
    let mut flags = flags![
        "--token-url",
        p.token_endpoint(),
        "--client-id",
        &client_id,
        "--client-auth",
        "private_key_jwt",
        "--jwt-signing-key-file",
        &key_file,
        "--jwt-key-id",
        &kid,
    ];
    if let Some(a) = alg_flag {
        flags.extend(flags!["--jwt-alg", a]);
    }
    let sc = rig.start(&flags).await;
    wait_ready(&sc, &p).await;
    let first = token_seen_upstream(&sc, &rig).await;
    p.assert_issued(&first, &client_id).await;

    p.wait_for_token_requests(
        &client_id,
        REFRESH_DEADLINE,
        "three successful token requests (two refreshes)",
        |r| successes(r) >= 3,
    )
    .await;
    let later = wait_for_new_token(&sc, &rig, &first).await;
    p.assert_issued(&later, &client_id).await;

    let reqs = p.token_requests(&client_id);
    let mut jtis = std::collections::HashSet::new();
    for r in &reqs {
        assert_eq!(r["status"], 200, "every assertion is accepted: {r}");
        assert_eq!(r["auth_method"], "private_key_jwt", "{r}");
        assert_eq!(r["grant_type"], "client_credentials", "{r}");
        assert_eq!(
            r["form_client_id"],
            client_id.as_str(),
            "client_id in the form: {r}"
        );
        assert_eq!(r["client_assertion_type"], ASSERTION_TYPE, "{r}");
        let a = &r["assertion"];
        assert_eq!(a["alg"], alg, "{r}");
        assert_eq!(a["kid"], kid.as_str(), "header kid = --jwt-key-id: {r}");
        assert_eq!(a["verified_by"], kid.as_str(), "{r}");
        assert_eq!(a["iss"], client_id.as_str(), "{r}");
        assert_eq!(a["sub"], client_id.as_str(), "{r}");
        assert_eq!(
            a["aud"],
            p.token_endpoint(),
            "aud defaults to the token endpoint: {r}"
        );
        let (iat, exp) = (a["iat"].as_i64().unwrap(), a["exp"].as_i64().unwrap());
        assert!(
            exp > iat && exp - iat <= 300,
            "exp - iat = {} s (at most 5 min): {r}",
            exp - iat
        );
        assert!(
            jtis.insert(a["jti"].as_str().expect("a jti").to_owned()),
            "a jti used twice: {r}"
        );
    }

    let check = rig.check(&flags).await;
    assert_check_names(&check, alg);
    let mut secrets = pem_fragments(key.secret_fragments());
    secrets.extend([first, later]);
    assert_nothing_leaked(&sc, &check, &secrets).await;
}

/// private_key_jwt with an RSA key in PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`): RS256 by default.
#[tokio::test]
async fn private_key_jwt_rs256_from_a_pkcs1_key() {
    private_key_jwt_case(KeyKind::Rsa, Pem::Traditional, "RS256", None).await;
}

/// private_key_jwt with an RSA key in PKCS#8 PEM: RS256 by default.
#[tokio::test]
async fn private_key_jwt_rs256_from_a_pkcs8_key() {
    private_key_jwt_case(KeyKind::Rsa, Pem::Pkcs8, "RS256", None).await;
}

/// private_key_jwt with an RSA key and `--jwt-alg PS256`.
#[tokio::test]
async fn private_key_jwt_ps256_on_request() {
    private_key_jwt_case(KeyKind::Rsa, Pem::Pkcs8, "PS256", Some("PS256")).await;
}

/// private_key_jwt with a P-256 key in SEC1 PEM (`BEGIN EC PRIVATE KEY`): ES256 by default.
#[tokio::test]
async fn private_key_jwt_es256_from_a_sec1_key() {
    private_key_jwt_case(KeyKind::P256, Pem::Traditional, "ES256", None).await;
}

/// private_key_jwt with a P-256 key in PKCS#8 PEM: ES256 by default.
#[tokio::test]
async fn private_key_jwt_es256_from_a_pkcs8_key() {
    private_key_jwt_case(KeyKind::P256, Pem::Pkcs8, "ES256", None).await;
}

/// private_key_jwt with a P-384 key in SEC1 PEM: ES384 by default.
#[tokio::test]
async fn private_key_jwt_es384_from_a_sec1_key() {
    private_key_jwt_case(KeyKind::P384, Pem::Traditional, "ES384", None).await;
}

/// private_key_jwt with a P-384 key in PKCS#8 PEM: ES384 by default.
#[tokio::test]
async fn private_key_jwt_es384_from_a_pkcs8_key() {
    private_key_jwt_case(KeyKind::P384, Pem::Pkcs8, "ES384", None).await;
}

/// private_key_jwt with an Ed25519 key (PKCS#8 PEM): EdDSA by default.
#[tokio::test]
async fn private_key_jwt_eddsa_from_an_ed25519_key() {
    private_key_jwt_case(KeyKind::Ed25519, Pem::Pkcs8, "EdDSA", None).await;
}

/// Replacing the signing key file is picked up without a restart: with both public keys
/// registered at the provider, every assertion before the rotation is verified by the old key,
/// the token request right after it (a manual refresh) and every later one (timed refreshes)
/// by the new key, and the sidecar kept running throughout.
#[tokio::test]
async fn private_key_jwt_a_rotated_key_file_is_used_without_a_restart() {
    let keys = generate_keys(&[KeyKind::P256, KeyKind::P256]);
    let (old, new) = (&keys[0], &keys[1]);
    let id = "rotating";
    let p = OidcProvider::start(ProviderConfig::new().access_token_ttl(5).client(json!({
        "client_id": id,
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "ES256",
        "jwks": { "keys": [old.jwk("old"), new.jwk("new")] },
    })))
    .await;
    let rig = Rig::new().await;
    let key_file = rig.file("signing-key.pem", &old.pkcs8_pem);
    // No --jwt-key-id: a fixed kid would name the old key after the rotation.
    let flags = flags![
        "--token-url",
        p.token_endpoint(),
        "--client-id",
        id,
        "--client-auth",
        "private_key_jwt",
        "--jwt-signing-key-file",
        &key_file,
        "--min-refresh-interval",
        "0s",
    ];
    let mut sc = rig.start(&flags).await;
    wait_ready(&sc, &p).await;
    p.wait_for_token_requests(
        id,
        REFRESH_DEADLINE,
        "two successes with the old key",
        |r| successes(r) >= 2,
    )
    .await;
    let before = p.token_requests(id);
    for r in &before {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["assertion"]["verified_by"], "old", "{r}");
    }

    replace_file(&key_file, &new.pkcs8_pem);
    // The manual refresh waits for a timed one in flight, then asks for a token itself: the
    // token held once it returns comes from a request that began after the rotation.
    refresh_ok(&sc, &p).await;
    let token = token_seen_upstream(&sc, &rig).await;
    let issuing = p.wait_for_issuing_request(&token).await;
    assert_eq!(
        issuing["assertion"]["verified_by"], "new",
        "the token request after the rotation is signed by the new key: {issuing}"
    );
    p.assert_issued(&token, id).await;
    let n = p
        .token_requests(id)
        .iter()
        .position(|r| r["issued"] == issuing["issued"])
        .unwrap();
    p.wait_for_token_requests(
        id,
        REFRESH_DEADLINE,
        "two timed refreshes after the rotation",
        |r| successes(&r[n..]) >= 3,
    )
    .await;
    for r in &p.token_requests(id)[n..] {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["assertion"]["verified_by"], "new", "{r}");
    }
    assert!(!sc.has_exited(), "the sidecar kept running");

    let check = rig.check(&flags).await;
    assert_check_names(&check, "ES256");
    let mut secrets = pem_fragments(old.secret_fragments());
    secrets.extend(pem_fragments(new.secret_fragments()));
    secrets.push(token);
    assert_nothing_leaked(&sc, &check, &secrets).await;
}

// --- client_secret_jwt -------------------------------------------------------------------------

/// client_secret_jwt: assertions signed HS256 with the client secret (from its file) are
/// accepted through at least two refreshes, each with a fresh `jti`, and neither the secret
/// nor a token is ever printed.
#[tokio::test]
async fn client_secret_jwt_signs_with_the_secret_file() {
    let secret = random_secret();
    let id = "hs-client";
    let p = OidcProvider::start(ProviderConfig::new().access_token_ttl(5).client(json!({
        "client_id": id,
        "client_secret": secret,
        "token_endpoint_auth_method": "client_secret_jwt",
        "token_endpoint_auth_signing_alg": "HS256",
    })))
    .await;
    let rig = Rig::new().await;
    let secret_file = rig.file("client-secret", &format!("{secret}\n"));
    let flags = flags![
        "--token-url",
        p.token_endpoint(),
        "--client-id",
        id,
        "--client-auth",
        "client_secret_jwt",
        "--client-secret-file",
        &secret_file,
    ];
    let sc = rig.start(&flags).await;
    wait_ready(&sc, &p).await;
    let first = token_seen_upstream(&sc, &rig).await;
    p.assert_issued(&first, id).await;
    p.wait_for_token_requests(id, REFRESH_DEADLINE, "two refreshes", |r| successes(r) >= 3)
        .await;
    let mut jtis = std::collections::HashSet::new();
    for r in &p.token_requests(id) {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["auth_method"], "client_secret_jwt", "{r}");
        assert_eq!(
            r["presented"], "client_assertion",
            "no Basic, no client_secret: {r}"
        );
        assert_eq!(r["assertion"]["alg"], "HS256", "{r}");
        assert_eq!(r["assertion"]["verified_by"], "client_secret", "{r}");
        assert_eq!(r["assertion"]["iss"], id, "{r}");
        assert!(jtis.insert(r["assertion"]["jti"].to_string()), "{r}");
    }
    let later = wait_for_new_token(&sc, &rig, &first).await;
    p.assert_issued(&later, id).await;

    let check = rig.check(&flags).await;
    assert_check_names(&check, "HS256");
    assert_nothing_leaked(&sc, &check, &[secret, first, later]).await;
}

// --- assertion_file ----------------------------------------------------------------------------

/// assertion_file (workload identity federation): the assertion is read from its file before
/// every token request. A stale file, whose `jti` the provider has already seen, makes the
/// refresh fail; a new file then succeeds without a restart. The expiry metric follows the
/// file's `exp`, and an expired assertion makes `/readyz` answer 503 naming it.
#[tokio::test]
async fn assertion_file_is_read_before_every_token_request() {
    let signer = EsKey::new("wif-2026");
    let id = "workload";
    let p = OidcProvider::start(ProviderConfig::new().client(json!({
        "client_id": id,
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "ES256",
        "jwks": signer.jwks(),
        // Long-lived tokens: the refreshes here are the test's (POST /refresh), none timed.
        "access_token_ttl": 300,
    })))
    .await;
    let rig = Rig::new().await;
    let aud = p.token_endpoint().to_owned();
    let a1_claims = assertion_claims(id, &aud, 600);
    let a1 = signer.sign(&a1_claims);
    let file = rig.file("assertion.jwt", &a1);
    let flags = flags![
        "--token-url",
        p.token_endpoint(),
        "--client-id",
        id,
        "--client-auth",
        "assertion_file",
        "--client-assertion-file",
        &file,
        "--min-refresh-interval",
        "0s",
    ];
    let mut sc = rig.start(&flags).await;
    wait_ready(&sc, &p).await;
    let first = token_seen_upstream(&sc, &rig).await;
    p.assert_issued(&first, id)
        .await
        .expect("a 300-second token is active");
    let ok = p.successes(id);
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert_eq!(
        ok[0]["assertion"]["jti"], a1_claims["jti"],
        "the file's assertion, as is"
    );
    assert_eq!(ok[0]["client_assertion_type"], ASSERTION_TYPE);
    wait_for_expiry_metric(&sc, a1_claims["exp"].as_i64().unwrap()).await;

    // The same file again: the provider has seen its jti.
    let n = p.token_requests(id).len();
    let r = sc.post_refresh().await;
    assert_ne!(
        r.status,
        200,
        "a refresh with a used assertion must fail: {}",
        r.text()
    );
    let last = p.wait_for_more(id, n).await.pop().unwrap();
    assert_eq!(last["status"], 401, "{last}");
    assert_eq!(last["error"], "invalid_client", "{last}");
    assert_eq!(last["assertion"]["jti"], a1_claims["jti"], "{last}");
    // The token held is still good: requests go on.
    assert_eq!(token_seen_upstream(&sc, &rig).await, first);

    // A new file: the next refresh succeeds, no restart.
    let a2_claims = assertion_claims(id, &aud, 900);
    let a2 = signer.sign(&a2_claims);
    replace_file(&file, &a2);
    let n = p.token_requests(id).len();
    refresh_ok(&sc, &p).await;
    let last = p.wait_for_more(id, n).await.pop().unwrap();
    assert_eq!(last["status"], 200, "{last}");
    assert_eq!(last["assertion"]["jti"], a2_claims["jti"], "{last}");
    let second = wait_for_new_token(&sc, &rig, &first).await;
    p.assert_issued(&second, id)
        .await
        .expect("a 300-second token is active");
    wait_for_expiry_metric(&sc, a2_claims["exp"].as_i64().unwrap()).await;
    assert!(!sc.has_exited(), "no restart");

    // An expired assertion: not ready, naming it.
    let a3_claims = assertion_claims(id, &aud, -60);
    let a3 = signer.sign(&a3_claims);
    replace_file(&file, &a3);
    let r = sc.post_refresh().await;
    assert_ne!(
        r.status,
        200,
        "a refresh with an expired assertion must fail: {}",
        r.text()
    );
    wait_for_expiry_metric(&sc, a3_claims["exp"].as_i64().unwrap()).await;
    eventually(
        DEADLINE,
        "/readyz 503 naming the expired assertion",
        || async {
            let (status, body) = sc.admin_get("/readyz").await;
            status == 503 && body.to_lowercase().contains("assertion")
        },
    )
    .await;

    let check = rig.check(&flags).await;
    assert_eq!(check.code, Some(0), "check:\n{}", check.all());
    let mut secrets = Vec::new();
    for a in [&a1, &a2, &a3] {
        secrets.extend(jwt_secrets(a));
    }
    secrets.extend([first, second]);
    assert_nothing_leaked(&sc, &check, &secrets).await;
}

// --- mutual TLS ---------------------------------------------------------------------------------

/// The flags of a sidecar authenticating with a client certificate to an HTTPS provider.
fn tls_flags(p: &OidcProvider, id: &str, cert: &Path, key: &Path, ca: &Path) -> Vec<OsString> {
    flags![
        "--token-url",
        p.token_endpoint(),
        "--client-id",
        id,
        "--client-auth",
        "tls",
        "--tls-client-cert-file",
        cert,
        "--tls-client-key-file",
        key,
        "--token-ca-file",
        ca,
        "--min-refresh-interval",
        "0s",
    ]
}

/// mTLS (RFC 8705, `tls_client_auth`): over HTTPS to a provider trusted through
/// `--token-ca-file`, the sidecar authenticates with its client certificate alone (no secret,
/// no assertion) and its token works; replacing the certificate and key files makes the very
/// next token request use the new certificate, without a restart: a connection kept alive, or
/// a TLS session resumed, from before the change would still carry the old certificate (the
/// provider's log tells which). `check` warns about the new certificate, which expires within
/// 7 days.
#[tokio::test]
async fn tls_client_auth_uses_the_current_client_certificate() {
    let server_pki = Pki::new("provider CA");
    let client_pki = Pki::new("client CA");
    let leaf1 = client_pki.client_leaf("sidecar-client.test", None);
    let leaf2 = client_pki.client_leaf("sidecar-client.test", Some(3));
    let id = "mtls-client";
    let p = OidcProvider::start(
        ProviderConfig::new()
            .https(&server_pki, Some(&client_pki))
            .client(json!({
                "client_id": id,
                "token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_san_dns": "sidecar-client.test",
                // The refreshes here are the test's (POST /refresh).
                "access_token_ttl": 300,
            })),
    )
    .await;
    let rig = Rig::new().await;
    let cert = rig.file("client.crt", &leaf1.cert_pem);
    let key = rig.file("client.key", &leaf1.key_pem);
    let ca = rig.file("provider-ca.pem", &server_pki.ca_pem);
    let flags = tls_flags(&p, id, &cert, &key, &ca);
    let check_before = rig.check(&flags).await;
    assert_eq!(check_before.code, Some(0), "check:\n{}", check_before.all());
    let mut sc = rig.start(&flags).await;
    wait_ready(&sc, &p).await;
    let first = token_seen_upstream(&sc, &rig).await;
    p.assert_issued(&first, id)
        .await
        .expect("a 300-second token is active");
    let n = p.token_requests(id).len();
    refresh_ok(&sc, &p).await;
    for r in &p.wait_for_more(id, n).await {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["auth_method"], "tls_client_auth", "{r}");
        assert_eq!(
            r["presented"], "client_certificate",
            "the certificate alone: {r}"
        );
        assert_eq!(r["form_client_id"], id, "client_id in the form: {r}");
        assert_eq!(r["cert"]["fingerprint256"], leaf1.fingerprint256(), "{r}");
    }

    replace_file(&cert, &leaf2.cert_pem);
    replace_file(&key, &leaf2.key_pem);
    let n = p.token_requests(id).len();
    refresh_ok(&sc, &p).await;
    let last = p.wait_for_more(id, n).await.pop().unwrap();
    assert_eq!(last["status"], 200, "{last}");
    assert_eq!(
        last["cert"]["fingerprint256"],
        leaf2.fingerprint256(),
        "the token request after the rotation presents the new certificate: {last}\n\
         (cert.connection_requests > 1: sent on a kept-alive connection opened with the old \
         certificate; cert.session_reused: a resumed TLS session, which carries the old one)"
    );
    let second = wait_for_new_token(&sc, &rig, &first).await;
    p.assert_issued(&second, id)
        .await
        .expect("a 300-second token is active");
    assert!(!sc.has_exited(), "no restart");

    let check = rig.check(&flags).await;
    assert_eq!(check.code, Some(0), "check:\n{}", check.all());
    let text = check.all().to_lowercase();
    assert!(
        text.contains("expir") && text.contains("cert"),
        "check warns that the client certificate expires within 7 days:\n{}",
        check.all()
    );
    let mut secrets = pem_fragments(leaf1.key_fragments());
    secrets.extend(pem_fragments(leaf2.key_fragments()));
    secrets.extend([first, second]);
    assert_nothing_leaked(&sc, &check_before, &secrets).await;
    assert_nothing_leaked(&sc, &check, &secrets).await;
}

/// mTLS with `self_signed_tls_client_auth`: the provider knows the client by the certificate
/// registered in its JWKS; the sidecar's `tls` method works against it too.
#[tokio::test]
async fn self_signed_tls_client_auth_works() {
    let server_pki = Pki::new("provider CA");
    let leaf = self_signed_client("self-signed-client.test");
    let id = "self-signed";
    let p = OidcProvider::start(
        ProviderConfig::new()
            .https(&server_pki, None)
            .client(json!({
                "client_id": id,
                "token_endpoint_auth_method": "self_signed_tls_client_auth",
                "jwks": { "keys": [leaf.x5c_jwk("cert-1")] },
                "access_token_ttl": 300,
            })),
    )
    .await;
    let rig = Rig::new().await;
    let cert = rig.file("client.crt", &leaf.cert_pem);
    let key = rig.file("client.key", &leaf.key_pem);
    let ca = rig.file("provider-ca.pem", &server_pki.ca_pem);
    let flags = tls_flags(&p, id, &cert, &key, &ca);
    let sc = rig.start(&flags).await;
    wait_ready(&sc, &p).await;
    let token = token_seen_upstream(&sc, &rig).await;
    p.assert_issued(&token, id)
        .await
        .expect("a 300-second token is active");
    let ok = p.successes(id);
    assert_eq!(ok[0]["auth_method"], "self_signed_tls_client_auth");
    assert_eq!(ok[0]["cert"]["fingerprint256"], leaf.fingerprint256());
    let check = rig.check(&flags).await;
    assert_eq!(check.code, Some(0), "check:\n{}", check.all());
    let mut secrets = pem_fragments(leaf.key_fragments());
    secrets.push(token);
    assert_nothing_leaked(&sc, &check, &secrets).await;
}

// --- none, token exchange ------------------------------------------------------------------------

/// `none` (a public client) with token exchange: only `client_id` identifies the client, the
/// provider accepts it (its registered method is `none`) and refreshes keep working; the same
/// flags for a confidential client are refused by the provider, so the sidecar is not ready.
#[tokio::test]
async fn none_authenticates_a_public_client_exchanging_a_token() {
    let idp = EsKey::new("idp-1");
    let conf_secret = random_secret();
    let p = OidcProvider::start(
        ProviderConfig::new()
            .access_token_ttl(5)
            .subject_token_issuer(IDP, idp.jwks())
            .client(json!({
                "client_id": "public-app",
                "token_endpoint_auth_method": "none",
                "grant_types": [TOKEN_EXCHANGE],
            }))
            .client(json!({
                "client_id": "confidential",
                "client_secret": conf_secret,
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": [TOKEN_EXCHANGE],
            })),
    )
    .await;
    let rig = Rig::new().await;
    let subject = idp.sign(&subject_claims(IDP, "user-42", 600));
    let subject_file = rig.file("subject.jwt", &subject);
    let flags_for = |id: &str| {
        flags![
            "--token-url",
            p.token_endpoint(),
            "--grant",
            "token_exchange",
            "--client-auth",
            "none",
            "--client-id",
            id,
            "--subject-token-file",
            &subject_file,
        ]
    };
    let flags = flags_for("public-app");
    let sc = rig.start(&flags).await;
    wait_ready(&sc, &p).await;
    let first = token_seen_upstream(&sc, &rig).await;
    p.assert_issued(&first, "public-app").await;
    p.wait_for_token_requests("public-app", REFRESH_DEADLINE, "two refreshes", |r| {
        successes(r) >= 3
    })
    .await;
    for r in &p.token_requests("public-app") {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["auth_method"], "none", "{r}");
        assert_eq!(
            r["presented"], "none",
            "no secret, assertion or certificate: {r}"
        );
        assert_eq!(r["form_client_id"], "public-app", "{r}");
        assert_eq!(r["grant_type"], TOKEN_EXCHANGE, "{r}");
        assert_eq!(r["exchange"]["subject_sub"], "user-42", "{r}");
        assert_eq!(r["exchange"]["subject_token_type"], JWT_TOKEN_TYPE, "{r}");
    }

    // A confidential client cannot get a token without authenticating.
    let refused = rig.start(&flags_for("confidential")).await;
    p.wait_for_token_requests("confidential", DEADLINE, "the provider to refuse", |r| {
        r.iter().any(|r| r["status"] == 401)
    })
    .await;
    let last = p.token_requests("confidential").pop().unwrap();
    assert_eq!(last["error"], "invalid_client", "{last}");
    assert!(p.successes("confidential").is_empty());
    let (status, body) = refused.admin_get("/readyz").await;
    assert_eq!(status, 503, "not ready without a token: {body}");

    let check = rig.check(&flags).await;
    assert_eq!(check.code, Some(0), "check:\n{}", check.all());
    let mut secrets = jwt_secrets(&subject);
    secrets.push(first);
    assert_nothing_leaked(&sc, &check, &secrets).await;
    refused.assert_logs_free_of(&subject);
}

/// `--grant token_exchange` (RFC 8693) with a subject token, an actor token and
/// `--requested-token-type`: the provider verifies both tokens and issues an access token for
/// the subject; replacing the subject token file is used at the next refresh; the expiry
/// metric shows the current subject token's `exp`.
#[tokio::test]
async fn token_exchange_sends_the_current_subject_token() {
    let idp = EsKey::new("idp-1");
    let secret = random_secret();
    let id = "exchanger";
    let p = OidcProvider::start(
        ProviderConfig::new()
            .subject_token_issuer(IDP, idp.jwks())
            .client(json!({
                "client_id": id,
                "client_secret": secret,
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": [TOKEN_EXCHANGE],
                "access_token_ttl": 300,
            })),
    )
    .await;
    let rig = Rig::new().await;
    let s1_claims = subject_claims(IDP, "user-1", 600);
    let s1 = idp.sign(&s1_claims);
    // The actor token outlives both subject tokens: the metric shows the credential that expires
    // first, here always the subject token.
    let actor = idp.sign(&subject_claims(IDP, "workload-9", 3600));
    let subject_file = rig.file("subject.jwt", &s1);
    let actor_file = rig.file("actor.jwt", &actor);
    let secret_file = rig.file("client-secret", &secret);
    let flags = flags![
        "--token-url",
        p.token_endpoint(),
        "--grant",
        "token_exchange",
        "--client-id",
        id,
        "--client-secret-file",
        &secret_file,
        "--subject-token-file",
        &subject_file,
        "--actor-token-file",
        &actor_file,
        "--requested-token-type",
        ACCESS_TOKEN_TYPE,
        "--min-refresh-interval",
        "0s",
    ];
    let sc = rig.start(&flags).await;
    wait_ready(&sc, &p).await;
    let first = token_seen_upstream(&sc, &rig).await;
    let info = p
        .assert_issued(&first, id)
        .await
        .expect("a 300-second token is active");
    assert_eq!(info["exchanged_sub"], "user-1", "{info}");
    assert_eq!(info["exchanged_act"], "workload-9", "{info}");
    let r = p.successes(id).pop().unwrap();
    assert_eq!(r["grant_type"], TOKEN_EXCHANGE, "{r}");
    assert_eq!(r["auth_method"], "client_secret_basic", "{r}");
    let ex = &r["exchange"];
    assert_eq!(
        ex["subject_token_type"], JWT_TOKEN_TYPE,
        "default type: {r}"
    );
    assert_eq!(ex["actor_token_type"], JWT_TOKEN_TYPE, "default type: {r}");
    assert_eq!(ex["requested_token_type"], ACCESS_TOKEN_TYPE, "{r}");
    wait_for_expiry_metric(&sc, s1_claims["exp"].as_i64().unwrap()).await;

    let s2_claims = subject_claims(IDP, "user-2", 900);
    let s2 = idp.sign(&s2_claims);
    replace_file(&subject_file, &s2);
    let n = p.token_requests(id).len();
    refresh_ok(&sc, &p).await;
    let r = p.wait_for_more(id, n).await.pop().unwrap();
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(
        r["exchange"]["subject_sub"], "user-2",
        "the new subject token: {r}"
    );
    let second = wait_for_new_token(&sc, &rig, &first).await;
    let info = p
        .assert_issued(&second, id)
        .await
        .expect("a 300-second token is active");
    assert_eq!(info["exchanged_sub"], "user-2", "{info}");
    wait_for_expiry_metric(&sc, s2_claims["exp"].as_i64().unwrap()).await;
    assert_eq!(
        jwt_payload(&s2)["exp"].as_i64(),
        s2_claims["exp"].as_i64(),
        "the metric is the file's exp"
    );

    let check = rig.check(&flags).await;
    assert_eq!(check.code, Some(0), "check:\n{}", check.all());
    let mut secrets = Vec::new();
    for t in [&s1, &s2, &actor] {
        secrets.extend(jwt_secrets(t));
    }
    secrets.extend([secret, first, second]);
    assert_nothing_leaked(&sc, &check, &secrets).await;
}

// --- audience, resource ----------------------------------------------------------------------------

/// `--resource` and `--audience` reach the provider as form fields, one per value, in order:
/// with client credentials, the single resource becomes the issued token's audience.
#[tokio::test]
async fn resource_and_audience_reach_the_provider_with_client_credentials() {
    let secret = random_secret();
    let id = "api-client";
    let p = OidcProvider::start(ProviderConfig::new().client(json!({
        "client_id": id,
        "client_secret": secret,
        "token_endpoint_auth_method": "client_secret_basic",
        "access_token_ttl": 300,
    })))
    .await;
    let rig = Rig::new().await;
    let secret_file = rig.file("client-secret", &secret);
    let flags = flags![
        "--token-url",
        p.token_endpoint(),
        "--client-id",
        id,
        "--client-secret-file",
        &secret_file,
        "--resource",
        "https://api.test/orders",
        "--audience",
        "orders-api",
        "--audience",
        "billing-api",
    ];
    let sc = rig.start(&flags).await;
    wait_ready(&sc, &p).await;
    let token = token_seen_upstream(&sc, &rig).await;
    let info = p
        .assert_issued(&token, id)
        .await
        .expect("a 300-second token is active");
    assert_eq!(info["aud"], "https://api.test/orders", "{info}");
    let r = p.successes(id).pop().unwrap();
    assert_eq!(r["resource"], json!(["https://api.test/orders"]), "{r}");
    assert_eq!(r["audience"], json!(["orders-api", "billing-api"]), "{r}");
    let check = rig.check(&flags).await;
    assert_eq!(check.code, Some(0), "check:\n{}", check.all());
    assert_nothing_leaked(&sc, &check, &[secret, token]).await;
}

/// Repeated `--resource` and `--audience` with token exchange: every value reaches the
/// provider, which records them on the issued token.
#[tokio::test]
async fn repeated_resources_and_audiences_reach_the_provider_with_token_exchange() {
    let idp = EsKey::new("idp-1");
    let secret = random_secret();
    let id = "exchanger";
    let p = OidcProvider::start(
        ProviderConfig::new()
            .subject_token_issuer(IDP, idp.jwks())
            .client(json!({
                "client_id": id,
                "client_secret": secret,
                "grant_types": [TOKEN_EXCHANGE],
                "access_token_ttl": 300,
            })),
    )
    .await;
    let rig = Rig::new().await;
    let subject = idp.sign(&subject_claims(IDP, "user-7", 600));
    let subject_file = rig.file("subject.jwt", &subject);
    let secret_file = rig.file("client-secret", &secret);
    let flags = flags![
        "--token-url",
        p.token_endpoint(),
        "--grant",
        "token_exchange",
        "--client-id",
        id,
        "--client-secret-file",
        &secret_file,
        "--subject-token-file",
        &subject_file,
        "--resource",
        "https://api.test/orders",
        "--resource",
        "https://api.test/billing",
        "--audience",
        "orders-api",
        "--audience",
        "billing-api",
    ];
    let sc = rig.start(&flags).await;
    wait_ready(&sc, &p).await;
    let token = token_seen_upstream(&sc, &rig).await;
    let info = p
        .assert_issued(&token, id)
        .await
        .expect("a 300-second token is active");
    assert_eq!(
        info["requested_resource"],
        json!(["https://api.test/orders", "https://api.test/billing"]),
        "{info}"
    );
    assert_eq!(
        info["requested_audience"],
        json!(["orders-api", "billing-api"]),
        "{info}"
    );
    assert_eq!(info["exchanged_sub"], "user-7", "{info}");
    let check = rig.check(&flags).await;
    assert_eq!(check.code, Some(0), "check:\n{}", check.all());
    let mut secrets = jwt_secrets(&subject);
    secrets.extend([secret, token]);
    assert_nothing_leaked(&sc, &check, &secrets).await;
}

// --- discovery ---------------------------------------------------------------------------------------

/// `--issuer` without `--token-url`: the sidecar takes the token endpoint from the provider's
/// metadata, here `/.well-known/openid-configuration` (RFC 8414 metadata is switched off, so
/// the fallback is exercised), and its assertions' `aud` defaults to that endpoint.
#[tokio::test]
async fn issuer_discovery_finds_the_token_endpoint() {
    let key = generate_keys(&[KeyKind::P256]).remove(0);
    let id = "discovering";
    let p = OidcProvider::start(
        ProviderConfig::new()
            .serve_oauth_metadata(false)
            .access_token_ttl(5)
            .client(json!({
                "client_id": id,
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": { "keys": [key.jwk("k1")] },
            })),
    )
    .await;
    let rig = Rig::new().await;
    let key_file = rig.file("signing-key.pem", &key.pkcs8_pem);
    let flags = flags![
        "--issuer",
        &p.issuer,
        "--client-id",
        id,
        "--client-auth",
        "private_key_jwt",
        "--jwt-signing-key-file",
        &key_file,
    ];
    let sc = rig.start(&flags).await;
    wait_ready(&sc, &p).await;
    let token = token_seen_upstream(&sc, &rig).await;
    p.assert_issued(&token, id).await;
    let fetched: Vec<Value> = p
        .requests()
        .into_iter()
        .filter(|r| r["path"] == "/.well-known/openid-configuration" && r["status"] == 200)
        .collect();
    assert!(
        !fetched.is_empty(),
        "the sidecar read the OpenID metadata; requests: {:?}",
        p.requests()
    );
    p.wait_for_token_requests(id, REFRESH_DEADLINE, "a refresh", |r| successes(r) >= 2)
        .await;
    for r in &p.token_requests(id) {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["assertion"]["aud"], p.token_endpoint(), "{r}");
    }
    let check = rig.check(&flags).await;
    let mut secrets = pem_fragments(key.secret_fragments());
    secrets.push(token);
    assert_nothing_leaked(&sc, &check, &secrets).await;
}

/// With `--issuer`, a `--client-auth` the provider does not list in
/// `token_endpoint_auth_methods_supported` makes the sidecar exit 1 at start, naming the
/// method and what the provider supports; a listed one starts.
#[tokio::test]
async fn issuer_discovery_refuses_a_method_the_provider_does_not_support() {
    let key = generate_keys(&[KeyKind::P256]).remove(0);
    let secret = random_secret();
    let p = OidcProvider::start(
        ProviderConfig::new()
            .client_auth_methods(&["private_key_jwt", "client_secret_basic"])
            .client(json!({
                "client_id": "listed",
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": { "keys": [key.jwk("k1")] },
            })),
    )
    .await;
    let rig = Rig::new().await;
    let secret_file = rig.file("client-secret", &secret);
    let key_file = rig.file("signing-key.pem", &key.pkcs8_pem);
    for (method, metadata_name) in [
        ("client_secret_jwt", "client_secret_jwt"),
        ("body", "client_secret_post"),
    ] {
        let flags = flags![
            "--issuer",
            &p.issuer,
            "--client-id",
            "unlisted",
            "--client-auth",
            method,
            "--client-secret-file",
            &secret_file,
        ];
        let out = rig.run_expecting_exit(&flags, DEADLINE).await;
        assert_eq!(out.code, Some(1), "{method}: exit code 1:\n{}", out.all());
        let text = out.all();
        assert!(
            text.contains(metadata_name) && text.contains("private_key_jwt"),
            "{method}: the message names {metadata_name} and the supported methods:\n{text}"
        );
        assert!(
            !text.contains(&secret),
            "{method}: the secret in the output"
        );
    }
    eventually(
        DEADLINE,
        "the sidecar to have read the metadata",
        || async {
            p.requests().iter().any(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/.well-known/"))
            })
        },
    )
    .await;
    assert!(
        p.all_token_requests().is_empty(),
        "no token request with a refused method"
    );

    // A listed method starts.
    let flags = flags![
        "--issuer",
        &p.issuer,
        "--client-id",
        "listed",
        "--client-auth",
        "private_key_jwt",
        "--jwt-signing-key-file",
        &key_file,
    ];
    let sc = rig.start(&flags).await;
    wait_ready(&sc, &p).await;
    let token = token_seen_upstream(&sc, &rig).await;
    p.assert_issued(&token, "listed").await;
    let check = rig.check(&flags).await;
    let mut secrets = pem_fragments(key.secret_fragments());
    secrets.extend([secret, token]);
    assert_nothing_leaked(&sc, &check, &secrets).await;
}

/// `check` parses the key it will sign with (never printing it) and names the algorithm for
/// each key type, without contacting anything.
#[tokio::test]
async fn check_names_the_jwt_algorithm_of_each_key_type() {
    let keys: Vec<KeyMaterial> =
        generate_keys(&[KeyKind::Rsa, KeyKind::P256, KeyKind::P384, KeyKind::Ed25519]);
    let rig = Rig::new().await;
    for (key, alg) in keys.iter().zip(["RS256", "ES256", "ES384", "EdDSA"]) {
        for (n, pem) in [Some(&key.pkcs8_pem), key.traditional_pem.as_ref()]
            .into_iter()
            .flatten()
            .enumerate()
        {
            let key_file = rig.file(&format!("{alg}-{n}.pem"), pem);
            let flags = flags![
                "--token-url",
                "https://login.example.test/oauth/token",
                "--client-id",
                "c",
                "--client-auth",
                "private_key_jwt",
                "--jwt-signing-key-file",
                &key_file,
            ];
            let check = rig.check(&flags).await;
            assert_check_names(&check, alg);
            let out = check.all();
            for frag in pem_fragments(key.secret_fragments()) {
                assert!(!out.contains(&frag), "{alg}: key material in check output");
            }
        }
    }
}
