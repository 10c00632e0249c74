//! Authentication without a shared secret, at its edges, against local doubles: issuer
//! discovery and the start-up check of the server's methods, a client assertion file that
//! expires (metric, `/readyz`, recovery when it is renewed), and the client certificate a
//! route presents to its upstream, rotated without a restart. The methods themselves are
//! proved against an independent authorization server in `client_auth.rs`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use support::scripted::Scripted;
use support::sidecar::run_once;
use support::{eventually, Client, SidecarBuilder, Upstream, DEADLINE, MARKER};
use tokio::io::AsyncWriteExt;

/// A server answering JSON by path: `answer(path)` gives the status and body; every request's
/// path and form are kept.
async fn json_server(
    answer: impl Fn(&str) -> (u16, serde_json::Value) + Send + Sync + 'static,
) -> (Scripted, Arc<Mutex<Vec<(String, String)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let answer = Arc::new(answer);
    let server = Scripted::start(move |mut a| {
        let (kept, answer) = (kept.clone(), answer.clone());
        async move {
            let Some((head, body)) = a.read_request().await else {
                return;
            };
            let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
            kept.lock()
                .unwrap()
                .push((path.clone(), String::from_utf8_lossy(&body).into_owned()));
            let (status, json) = answer(&path);
            let body = json.to_string();
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = a.stream.write_all(resp.as_bytes()).await;
        }
    })
    .await;
    (server, seen)
}

fn token_answer() -> (u16, serde_json::Value) {
    (
        200,
        serde_json::json!({"access_token": MARKER, "token_type": "Bearer", "expires_in": 3600}),
    )
}

/// An authorization server whose metadata is only at the OpenID Connect location (the RFC 8414
/// one answers 404), naming `issuer` (its own URL unless given) and the methods `methods`.
async fn authorization_server(
    methods: &'static [&'static str],
    issuer: Option<&'static str>,
) -> (Scripted, Arc<Mutex<Vec<(String, String)>>>) {
    let base = Arc::new(Mutex::new(String::new()));
    let b = base.clone();
    let (server, seen) = json_server(move |path| {
        let base = b.lock().unwrap().clone();
        match path {
            "/.well-known/openid-configuration" => (
                200,
                serde_json::json!({
                    "issuer": issuer.map_or(base.clone(), str::to_owned),
                    "token_endpoint": format!("{base}/oauth/token"),
                    "token_endpoint_auth_methods_supported": methods,
                }),
            ),
            "/oauth/token" => token_answer(),
            _ => (404, serde_json::json!({"error": "not_found"})),
        }
    })
    .await;
    *base.lock().unwrap() = server.url("");
    (server, seen)
}

#[tokio::test]
async fn the_token_endpoint_is_discovered_from_the_issuer() {
    let (server, seen) = authorization_server(&["client_secret_basic"], None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "s3cret-value").unwrap();
    let up = Upstream::start().await;
    let sc = SidecarBuilder::new(&up.url(""))
        .args(["--client-id", "c1", "--issuer", &server.url("")])
        .arg("--client-secret-file")
        .arg(dir.path().join("secret"))
        .start()
        .await;
    sc.wait_ready().await;
    let r = Client::http1().get(&sc.url("/x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().header("authorization").as_deref(),
        Some(format!("Bearer {MARKER}").as_str())
    );
    let paths: Vec<String> = seen.lock().unwrap().iter().map(|s| s.0.clone()).collect();
    assert_eq!(
        paths,
        [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
            "/oauth/token"
        ]
    );
}

// `run_once` blocks its thread while the authorization server answers on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_the_server_does_not_list_or_metadata_of_another_issuer_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    let key_file = dir.path().join("key.pem").display().to_string();

    let (server, seen) =
        authorization_server(&["client_secret_basic", "tls_client_auth"], None).await;
    let out = run_once(
        [
            "run",
            "--listen=127.0.0.1:0",
            "--admin-listen=127.0.0.1:0",
            "--upstream=http://127.0.0.1:9",
            "--client-id=c1",
            "--client-auth=private_key_jwt",
            &format!("--jwt-signing-key-file={key_file}"),
            &format!("--issuer={}", server.url("")),
        ],
        &[],
    );
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stderr
            .contains("client_auth `private_key_jwt` (private_key_jwt) is not among")
            && out.stderr.contains("client_secret_basic, tls_client_auth"),
        "{}",
        out.stderr
    );
    assert!(
        !seen.lock().unwrap().iter().any(|s| s.0 == "/oauth/token"),
        "no token request is sent"
    );

    let (other, _) =
        authorization_server(&["client_secret_basic"], Some("https://other.example.com")).await;
    let out = run_once(
        [
            "run",
            "--listen=127.0.0.1:0",
            "--admin-listen=127.0.0.1:0",
            "--upstream=http://127.0.0.1:9",
            "--client-id=c1",
            "--client-secret=x-secret-x",
            &format!("--issuer={}", other.url("")),
        ],
        &[],
    );
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stderr
            .contains("is for issuer `https://other.example.com`"),
        "{}",
        out.stderr
    );
    assert!(!out.all().contains("x-secret-x"));
}

/// A JWT (unsigned: the server only reads it) that expires at `exp`.
fn jwt_expiring(exp: u64) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","kid":"k"}"#),
        b64(&format!(
            r#"{{"iss":"kubernetes","sub":"system:serviceaccount:ns:app","exp":{exp}}}"#
        )),
        b64("signature-bytes")
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn an_expired_assertion_file_fails_readiness_by_name_until_it_is_renewed() {
    let (ts, seen) = json_server(|_| token_answer()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let expired = now() - 60;
    std::fs::write(&file, jwt_expiring(expired)).unwrap();
    let args = [
        "--client-auth=assertion_file".to_owned(),
        format!("--client-assertion-file={}", file.display()),
        format!("--token-url={}", ts.url("/oauth/token")),
    ];

    // `check` warns.
    let out = run_once(
        ["check", "--upstream=http://127.0.0.1:9"]
            .into_iter()
            .map(str::to_owned)
            .chain(args.iter().cloned()),
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stderr.contains("the JWT in this file has expired"),
        "{}",
        out.stderr
    );

    let up = Upstream::start().await;
    let sc = SidecarBuilder::new(&up.url("")).args(&args).start().await;
    eventually(DEADLINE, "a token request", || async {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    // The file's content is the assertion, sent as it is.
    let form = seen.lock().unwrap()[0].1.clone();
    let fields: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes())
        .into_owned()
        .collect();
    assert!(fields.contains(&(
        "client_assertion_type".into(),
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()
    )));
    assert!(fields.contains(&("client_assertion".into(), jwt_expiring(expired))));
    let (status, body) = sc.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("client assertion file") && body.contains("expired"),
        "{body}"
    );
    let metric = format!(
        "token_sidecar_client_assertion_expiry_timestamp_seconds{{token=\"default\"}} {expired}"
    );
    assert!(sc.metrics().await.contains(&metric), "{metric}");

    // Renewed (as the kubelet does, by replacing the file): the next token request reads it.
    let fresh = now() + 3600;
    let tmp = dir.path().join("token.new");
    std::fs::write(&tmp, jwt_expiring(fresh)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let r = sc.post_refresh().await;
    assert_eq!(r.status, 200, "{}", r.text());
    sc.wait_ready().await;
    let metric = format!(
        "token_sidecar_client_assertion_expiry_timestamp_seconds{{token=\"default\"}} {fresh}"
    );
    assert!(sc.metrics().await.contains(&metric), "{metric}");
    let last = seen.lock().unwrap().last().unwrap().1.clone();
    assert!(last.contains(&jwt_expiring(fresh)));
}

/// A CA, and client certificates it signs.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Pki {
            ca: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A client certificate and its key, PEM.
    fn client(&self, cn: &str) -> (String, String) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Replaces a file in one step, as a Kubernetes Secret volume does.
fn replace(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_route_presents_its_client_certificate_and_picks_up_a_renewed_one() {
    // The upstream trusts client certificates of `trusted` only.
    let trusted = Pki::new("trusted client CA");
    let untrusted = Pki::new("another CA");
    let server = support::tls::material_requiring_client_certs(trusted.ca.der().clone());
    let up = Upstream::start_tls(server.server_config.clone()).await;

    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
    );
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let (bad_cert, bad_key) = untrusted.client("stale");
    std::fs::write(&cert, &bad_cert).unwrap();
    std::fs::write(&key, &bad_key).unwrap();
    let sc = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .arg("--upstream-ca-file")
        .arg(&ca)
        .arg("--upstream-tls-client-cert-file")
        .arg(&cert)
        .arg("--upstream-tls-client-key-file")
        .arg(&key)
        .start()
        .await;
    let r = Client::http1().get(&sc.url("/x")).await;
    assert_eq!(r.status, 502, "a certificate of another CA is refused");
    assert!(up.tls_failures() >= 1);
    assert_eq!(up.request_count(), 0);

    // Renewed: the next connection presents the new pair, without a restart.
    let (good_cert, good_key) = trusted.client("app");
    replace(&key, &good_key);
    replace(&cert, &good_cert);
    eventually(DEADLINE, "the renewed certificate in use", || async {
        Client::http1().get(&sc.url("/x")).await.status == 200
    })
    .await;
    assert_eq!(
        up.last().header("authorization").as_deref(),
        Some(format!("Bearer {MARKER}").as_str())
    );
    assert!(sc.has_log("client certificate reloaded"));

    // A route without the certificate is refused by the same upstream.
    let plain = SidecarBuilder::new(&up.url(""))
        .static_token(MARKER)
        .arg("--upstream-ca-file")
        .arg(&ca)
        .start()
        .await;
    assert_eq!(Client::http1().get(&plain.url("/x")).await.status, 502);

    // Only one of the pair, or a key of another certificate, is refused at start.
    let (_, other_key) = trusted.client("other");
    std::fs::write(dir.path().join("other.key"), other_key).unwrap();
    for extra in [
        vec![format!(
            "--upstream-tls-client-cert-file={}",
            cert.display()
        )],
        vec![
            format!("--upstream-tls-client-cert-file={}", cert.display()),
            format!(
                "--upstream-tls-client-key-file={}",
                dir.path().join("other.key").display()
            ),
        ],
    ] {
        let out = run_once(
            [
                "check",
                &format!("--upstream={}", up.url("")),
                "--grant=static",
                "--static-token=t",
            ]
            .into_iter()
            .map(str::to_owned)
            .chain(extra),
            &[],
        );
        assert_eq!(out.code, Some(64), "{}", out.all());
        assert!(
            out.stderr
                .contains("needs both its certificate and its key file")
                || out.stderr.contains("does not belong to the certificate"),
            "{}",
            out.stderr
        );
    }
}
