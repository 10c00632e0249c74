//! `--grant file`: the token read from a file, re-read when the file changes (rename, the
//! Kubernetes `..data` symlink swap), and kept when the file goes bad.

mod support;

use std::path::Path;

use support::metrics;
use support::{eventually, Client, Sidecar, SidecarBuilder, Upstream, DEADLINE};

async fn start(up: &Upstream, token_file: &Path) -> Sidecar {
    SidecarBuilder::new(&up.url(""))
        .token_file(token_file)
        .start()
        .await
}

/// Sends one request and returns the status and the Authorization the upstream saw for it.
async fn probe(up: &Upstream, sc: &Sidecar) -> (u16, Option<String>) {
    let before = up.request_count();
    let r = Client::http1().get(&sc.url("/probe")).await;
    let seen = (up.request_count() > before).then(|| up.last().header("authorization"));
    (r.status, seen.flatten())
}

/// Waits until a request carries `Bearer <token>` to the upstream.
async fn wait_for_token(up: &Upstream, sc: &Sidecar, token: &str) {
    let want = format!("Bearer {token}");
    eventually(DEADLINE, &format!("the upstream to receive {want}"), || {
        let want = want.clone();
        async move { probe(up, sc).await == (200, Some(want)) }
    })
    .await;
}

/// Replaces `path` atomically: write a temporary file next to it, then rename it over.
fn replace_by_rename(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn empty_token_file_gives_503_until_the_file_is_written() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "").unwrap();
    let sc = start(&up, &file).await;

    let r = Client::http1().get(&sc.url("/x")).await;
    r.assert_sidecar_error(503, "token_unavailable");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry >= 1);
    assert_eq!(
        up.request_count(),
        0,
        "nothing is forwarded without a token"
    );

    let (status, body) = sc.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let v = support::json(body.as_bytes());
    assert!(
        v["routes"]["default"]["reason"].is_string(),
        "/readyz names the route: {v}"
    );

    std::fs::write(&file, "file-token-1\n").unwrap();
    wait_for_token(&up, &sc, "file-token-1").await;
    let (status, body) = sc.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");

    // Probes made while waiting may have been refused too: each refusal is counted once as
    // a 503 sent and once as a `token_unavailable` rejection.
    let m = sc.metrics().await;
    let sent_503 = metrics::value(
        &m,
        "token_sidecar_requests_total",
        &[("route", "default"), ("status", "503")],
    )
    .unwrap_or(0.0);
    assert!(sent_503 >= 1.0, "{m}");
    assert_eq!(
        metrics::value(
            &m,
            "token_sidecar_rejected_requests_total",
            &[("route", "default"), ("kind", "token_unavailable")]
        ),
        Some(sent_503),
        "{m}"
    );
    assert_eq!(
        metrics::value(&m, "token_sidecar_token_valid", &[("token", "default")]),
        Some(1.0),
        "{m}"
    );
    sc.assert_logs_free_of("file-token-1");
}

#[tokio::test]
async fn missing_token_file_is_picked_up_when_created() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let sc = start(&up, &file).await;
    Client::http1()
        .get(&sc.url("/x"))
        .await
        .assert_sidecar_error(503, "token_unavailable");
    let (_, info) = sc.admin_get("/token-info").await;
    let v = support::json(info.as_bytes());
    assert_eq!(
        v["tokens"]["default"]["last_refresh"]["result"], "failure",
        "{v}"
    );

    replace_by_rename(&file, "created-later");
    wait_for_token(&up, &sc, "created-later").await;
}

#[tokio::test]
async fn rotation_by_temp_file_and_rename() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "rename-one").unwrap();
    let sc = start(&up, &file).await;
    assert_eq!(
        probe(&up, &sc).await,
        (200, Some("Bearer rename-one".to_owned()))
    );

    replace_by_rename(&file, "rename-two\n");
    wait_for_token(&up, &sc, "rename-two").await;
    // The watch survives the rename: a second rotation is seen too.
    replace_by_rename(&file, "rename-three");
    wait_for_token(&up, &sc, "rename-three").await;

    let (_, info) = sc.admin_get("/token-info").await;
    let v = support::json(info.as_bytes());
    assert_eq!(v["tokens"]["default"]["grant"], "file", "{v}");
    assert_eq!(v["tokens"]["default"]["version"], 3, "{v}");
    for t in ["rename-one", "rename-two", "rename-three"] {
        assert!(!info.contains(t), "{info}");
        sc.assert_logs_free_of(t);
    }
}

/// Lays a Kubernetes Secret volume out as the kubelet does: `..<timestamp>/token`, `..data`
/// pointing at it and `token` pointing at `..data/token`.
fn k8s_volume(dir: &Path, stamp: &str, token: &str) {
    let data_dir = dir.join(stamp);
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("token"), token).unwrap();
    std::os::unix::fs::symlink(stamp, dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
}

/// An update as the kubelet makes it: a new timestamped directory, a new `..data` symlink
/// renamed atomically over the old one, the old directory removed.
fn k8s_update(dir: &Path, old_stamp: &str, new_stamp: &str, token: &str) {
    let data_dir = dir.join(new_stamp);
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("token"), token).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(new_stamp, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join(old_stamp)).unwrap();
}

#[tokio::test]
async fn kubernetes_data_symlink_swap() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    k8s_volume(dir.path(), "..2026_01_01_00_00_00.000000001", "k8s-one");
    let sc = start(&up, &dir.path().join("token")).await;
    assert_eq!(
        probe(&up, &sc).await,
        (200, Some("Bearer k8s-one".to_owned()))
    );

    k8s_update(
        dir.path(),
        "..2026_01_01_00_00_00.000000001",
        "..2026_01_01_00_05_00.000000002",
        "k8s-two",
    );
    wait_for_token(&up, &sc, "k8s-two").await;
    k8s_update(
        dir.path(),
        "..2026_01_01_00_05_00.000000002",
        "..2026_01_01_00_10_00.000000003",
        "k8s-three",
    );
    wait_for_token(&up, &sc, "k8s-three").await;
    for t in ["k8s-one", "k8s-two", "k8s-three"] {
        sc.assert_logs_free_of(t);
    }
}

#[tokio::test]
async fn an_empty_file_over_a_valid_one_keeps_the_previous_token() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "keep-me").unwrap();
    let sc = start(&up, &file).await;
    assert_eq!(
        probe(&up, &sc).await,
        (200, Some("Bearer keep-me".to_owned()))
    );

    replace_by_rename(&file, "  \n");
    sc.wait_for_log("token file not usable; keeping the previous token")
        .await;
    // The line is logged just before /token-info records the failure: wait for the record.
    eventually(DEADLINE, "the empty file to be recorded", || async {
        let (_, info) = sc.admin_get("/token-info").await;
        support::json(info.as_bytes())["tokens"]["default"]["last_refresh"]["result"] == "failure"
    })
    .await;
    assert_eq!(
        probe(&up, &sc).await,
        (200, Some("Bearer keep-me".to_owned()))
    );
    let (status, _) = sc.admin_get("/readyz").await;
    assert_eq!(status, 200);
    let (_, info) = sc.admin_get("/token-info").await;
    let v = support::json(info.as_bytes());
    let t = &v["tokens"]["default"];
    assert_eq!(t["valid"], true, "{v}");
    assert_eq!(t["version"], 1, "{v}");
    assert_eq!(t["last_refresh"]["result"], "failure", "{v}");
    assert!(
        t["last_refresh"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("empty")),
        "{v}"
    );

    // Bytes a header cannot carry are refused the same way.
    replace_by_rename(&file, "bad\u{1}token");
    eventually(DEADLINE, "the invalid token to be reported", || async {
        let (_, info) = sc.admin_get("/token-info").await;
        info.contains("not allowed in an HTTP header")
    })
    .await;
    assert_eq!(
        probe(&up, &sc).await,
        (200, Some("Bearer keep-me".to_owned()))
    );

    // A good file afterwards is used again.
    replace_by_rename(&file, "after-empty");
    wait_for_token(&up, &sc, "after-empty").await;
    sc.assert_logs_free_of("keep-me");
    sc.assert_logs_free_of("bad\u{1}token");
}

#[tokio::test]
async fn a_manual_refresh_of_a_token_file_is_counted() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "manual-one").unwrap();
    let sc = start(&up, &file).await;
    wait_for_token(&up, &sc, "manual-one").await;

    std::fs::remove_file(&file).unwrap();
    // The watcher notices the removal and fails a reload of its own first; the manual refresh
    // that follows is then an attempt of its own, not one joined to the watcher's.
    eventually(DEADLINE, "the watcher's reload to fail", || async {
        let m = sc.metrics().await;
        metrics::value(
            &m,
            "token_sidecar_token_refreshes_total",
            &[
                ("token", "default"),
                ("trigger", "file"),
                ("result", "failure"),
            ],
        )
        .is_some()
    })
    .await;
    let r = Client::http1()
        .send(
            http::Request::post(sc.admin_url("/refresh"))
                .body(support::client::empty())
                .unwrap(),
        )
        .await;
    r.assert_sidecar_error(502, "refresh_failed");
    let m = sc.metrics().await;
    assert_eq!(
        metrics::value(
            &m,
            "token_sidecar_token_refreshes_total",
            &[
                ("token", "default"),
                ("trigger", "manual"),
                ("result", "failure")
            ]
        ),
        Some(1.0),
        "{m}"
    );
    // The previous token is kept.
    assert_eq!(
        probe(&up, &sc).await,
        (200, Some("Bearer manual-one".to_owned()))
    );
}

/// `POST /refresh` without `?token=` refreshes every profile; a profile that cannot be
/// refreshed is named in the sidecar's answer, and `?token=` still picks one.
#[tokio::test]
async fn manual_refresh_without_a_name_refreshes_every_profile() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    std::fs::write(&one, "token-one-v1").unwrap();
    std::fs::write(&two, "token-two-v1").unwrap();
    let cfg = dir.path().join("sidecar.toml");
    std::fs::write(
        &cfg,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[route]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{up}\"\ntoken = \"one\"\n\
             [[route]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{up}\"\ntoken = \"two\"\n\
             [token.one]\ngrant = \"file\"\ntoken_file = \"{}\"\n\
             [token.two]\ngrant = \"file\"\ntoken_file = \"{}\"\n",
            one.display(),
            two.display(),
            up = up.url(""),
        ),
    )
    .unwrap();
    let sc = SidecarBuilder::bare()
        .arg("--config")
        .arg(&cfg)
        .start()
        .await;
    let post = |path: &str| {
        let url = sc.admin_url(path);
        async move {
            Client::http1()
                .send(
                    http::Request::post(url)
                        .body(support::client::empty())
                        .unwrap(),
                )
                .await
        }
    };
    let r = post("/refresh").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = support::json(r.text().as_bytes());
    assert!(
        body.get("one").is_some() && body.get("two").is_some(),
        "{body}"
    );
    // One profile's file gone: the answer names it.
    std::fs::remove_file(&two).unwrap();
    let r = post("/refresh").await;
    r.assert_sidecar_error(502, "refresh_failed");
    assert!(r.text().contains("two"), "{}", r.text());
    assert!(!r.text().contains("token-one"), "{}", r.text());
    // A name still picks one.
    assert_eq!(post("/refresh?token=one").await.status, 200);
}
