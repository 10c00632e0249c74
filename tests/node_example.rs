//! The runnable Node example (`examples/ringcentral-node`): the RingCentral JS SDK with
//! `authProxy: true` behind the sidecar, against the RingCentral doubles.
//!
//! Needs `node` and the example's dependencies (`npm ci --prefix examples/ringcentral-node`,
//! which `scripts/test.sh` runs); the test fails, rather than skips, without them.

mod support;

use std::path::Path;
use std::process::Command;

use support::rc::Rig;
use token_sidecar_testkit::token_server::TokenServerConfig;

#[tokio::test]
async fn ringcentral_sdk_with_auth_proxy_works_through_the_sidecar() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ringcentral-node");
    assert!(
        example.join("node_modules/@ringcentral/sdk").is_dir(),
        "run `npm ci --prefix examples/ringcentral-node` first (scripts/test.sh does)"
    );
    let rig = Rig::new(TokenServerConfig::ringcentral()).await;
    let sc = rig.sidecar().start().await;
    support::eventually(support::DEADLINE, "ready", || async {
        sc.admin_get("/readyz").await.0 == 200
    })
    .await;
    let url = sc.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("index.js")
            .current_dir(&example)
            .env("SIDECAR_URL", url)
            .env("REQUESTS", "5")
            .output()
            .expect("run node (is Node.js installed?)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| support::json(l.as_bytes()))
        .collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    for l in &lines {
        assert_eq!(l["status"], 200);
        assert_eq!(l["session"], "1", "one session for every request");
    }
    assert_eq!(rig.ts.successful_logins(), 1);
    assert_eq!(rig.api.count_by_status().get(&200).copied(), Some(5));
    sc.assert_logs_free_of(token_sidecar_testkit::token_server::TOKEN_PREFIX);
}
