//! Configuration: `check`, every problem named at once with exit code 64, the TOML file
//! (unknown keys, `${VAR}` expansion, several routes), `TOKEN_SIDECAR_*` variables, and no
//! secret ever printed.

mod support;

use std::path::PathBuf;

use support::metrics;
use support::sidecar::{run_once, Output};
use support::{Client, SidecarBuilder, Upstream};

const EXIT_INVALID: Option<i32> = Some(64);

fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let p = dir.path().join("sidecar.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn check(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    run_once(all, envs)
}

/// `check` of a minimal valid command line (`--upstream`, a static token) plus `extra`.
fn check_static(extra: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "--upstream",
        "https://api.example.com",
        "--grant",
        "static",
        "--static-token",
        "x",
    ];
    args.extend_from_slice(extra);
    check(&args, envs)
}

/// `check --config` of a config file holding `text`, written in `dir`.
fn check_file(dir: &tempfile::TempDir, text: &str) -> Output {
    let cfg = write_config(dir, text);
    check(&["--config", cfg.to_str().unwrap()], &[])
}

/// Exit 64, every one of `needles` named.
fn assert_invalid(out: &Output, needles: &[&str]) {
    assert_eq!(out.code, EXIT_INVALID, "{}", out.all());
    assert_names(out, needles);
}

fn assert_names(out: &Output, needles: &[&str]) {
    let all = out.all();
    for n in needles {
        assert!(all.contains(n), "{n:?} not named in:\n{all}");
    }
}

#[tokio::test]
async fn check_with_a_valid_configuration_prints_a_summary_and_exits_zero() {
    let out = check(
        &[
            "--upstream",
            "https://api.example.com/base/",
            "--grant",
            "static",
            "--static-token",
            "valid-secret-123",
            "--listen",
            "127.0.0.1:18080",
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stdout.contains("configuration OK"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("127.0.0.1:18080 -> https://api.example.com/base"),
        "{}",
        out.stdout
    );
    assert!(!out.all().contains("valid-secret-123"));
}

#[tokio::test]
async fn check_names_every_bad_flag_at_once_and_exits_64() {
    let out = check(
        &[
            "--listen",
            "nowhere",
            "--admin-listen",
            "bad",
            "--upstream",
            "ftp://x",
            "--grant",
            "bogus",
            "--shutdown-grace",
            "soon",
            "--threads",
            "0",
            "--upstream-timeout",
            "xyz",
            "--header",
            "bad header",
            "--max-request-header-bytes",
            "10",
            "--log-format",
            "yaml",
        ],
        &[],
    );
    assert_invalid(
        &out,
        &[
            "--listen",
            "nowhere",
            "--admin-listen",
            "--upstream",
            "ftp://x",
            "--grant",
            "bogus",
            "--shutdown-grace",
            "--threads",
            "--upstream-timeout",
            "--header",
            "--max-request-header-bytes",
            "--log-format",
            "(10 problem(s))",
        ],
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[tokio::test]
async fn grant_requirements_are_named() {
    let out = check(
        &[
            "--upstream",
            "https://api.example.com",
            "--grant",
            "client_credentials",
        ],
        &[],
    );
    assert_invalid(
        &out,
        &["--token-url", "--client-id", "--client-secret-file"],
    );

    let out = check(
        &["--upstream", "https://api.example.com", "--grant", "file"],
        &[],
    );
    assert_invalid(&out, &["--token-file"]);

    let out = check(
        &["--upstream", "https://api.example.com", "--grant", "static"],
        &[],
    );
    assert_invalid(&out, &["--static-token"]);
}

#[tokio::test]
async fn a_missing_upstream_is_named() {
    let out = check(&["--grant", "static", "--static-token", "x"], &[]);
    assert_invalid(&out, &["--upstream", "required"]);
}

#[tokio::test]
async fn run_with_an_invalid_configuration_exits_64() {
    let out = run_once(
        [
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--grant",
            "static",
            "--static-token",
            "run-secret",
        ],
        &[],
    );
    assert_invalid(&out, &["--upstream"]);
    assert!(!out.all().contains("run-secret"));
}

#[tokio::test]
async fn config_file_unknown_keys_are_each_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_file(
        &dir,
        r#"
bogus = 1

[admin]
listn = "127.0.0.1:9090"

[[route]]
name = "api"
upstream = "https://api.example.com"
upstreem = "https://typo.example.com"
token = "t"

[token.t]
grant = "static"
static_token = "x"
grnt = "file"
"#,
    );
    assert_eq!(out.code, EXIT_INVALID, "{}", out.all());
    let all = out.all();
    assert!(all.contains("`bogus`"), "{all}");
    assert!(all.contains("`admin.listn`"), "{all}");
    assert!(all.contains("`route[0].upstreem`"), "{all}");
    assert!(all.contains("`token.t.grnt`"), "{all}");
    assert_names(&out, &["(4 problem(s))"]);
}

#[tokio::test]
async fn config_file_bad_values_name_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_file(
        &dir,
        r#"
[[route]]
name = "api"
listen = "nowhere"
upstream = "https://api.example.com"
upstream_timeout = "soon"
token = "missing"

[[route]]
name = "other"
upstream = "https://other.example.com"
refresh_on_401 = true
token = "t"

[token.t]
grant = "file"
"#,
    );
    assert_invalid(
        &out,
        &[
            "route[0].listen",
            "route[0].upstream_timeout",
            "route[0].token",
            "token.t.token_file",
        ],
    );

    let out = check_file(&dir, "[[route]]\nrefresh_on_401 = \"yes\"\n");
    assert_invalid(&out, &["route[0].refresh_on_401"]);

    let out = check(&["--config", "/nonexistent/sidecar.toml"], &[]);
    assert_invalid(&out, &["--config", "/nonexistent/sidecar.toml"]);
}

#[tokio::test]
async fn route_and_token_flags_are_refused_when_the_file_has_several() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        r#"
[[route]]
name = "a"
listen = "127.0.0.1:18001"
upstream = "https://a.example.com"
token = "one"

[[route]]
name = "b"
listen = "127.0.0.1:18002"
upstream = "https://b.example.com"
token = "two"

[token.one]
grant = "static"
static_token = "x"

[token.two]
grant = "static"
static_token = "y"
"#,
    );
    let out = check(&["--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stdout.contains("route a:"), "{}", out.stdout);
    assert!(out.stdout.contains("route b:"), "{}", out.stdout);

    let out = check(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--upstream",
            "https://c.example.com",
            "--header",
            "X-Key",
            "--static-token",
            "z",
        ],
        &[],
    );
    assert_invalid(
        &out,
        &["--upstream", "--header", "--static-token", "(3 problem(s))"],
    );
}

#[tokio::test]
async fn config_file_expands_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        r#"
[[route]]
name = "api"
upstream = "${TS_TEST_UPSTREAM}/v1"
token = "t"

[token.t]
grant = "static"
static_token = "${TS_TEST_TOKEN}"
"#,
    );
    let envs = [
        ("TS_TEST_UPSTREAM", "https://expanded.example.com"),
        ("TS_TEST_TOKEN", "expanded-secret-9"),
    ];
    let out = check(&["--config", cfg.to_str().unwrap()], &envs);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("https://expanded.example.com/v1"),
        "{}",
        out.stdout
    );
    assert!(!out.all().contains("expanded-secret-9"));

    // An unset variable is named, with the key that uses it.
    let out = check(
        &["--config", cfg.to_str().unwrap()],
        &[("TS_TEST_UPSTREAM", "https://expanded.example.com")],
    );
    assert_invalid(&out, &["TS_TEST_TOKEN", "token.t.static_token"]);
}

#[tokio::test]
async fn environment_variables_mirror_flags_and_flags_win() {
    let envs = [
        ("TOKEN_SIDECAR_UPSTREAM", "https://from-env.example.com"),
        ("TOKEN_SIDECAR_GRANT", "static"),
        ("TOKEN_SIDECAR_STATIC_TOKEN", "env-secret-5"),
        ("TOKEN_SIDECAR_LISTEN", "127.0.0.1:18181"),
    ];
    let out = check(&[], &envs);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout
            .contains("127.0.0.1:18181 -> https://from-env.example.com"),
        "{}",
        out.stdout
    );
    assert!(!out.all().contains("env-secret-5"));

    let out = check(&["--upstream", "https://from-flag.example.com"], &envs);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("https://from-flag.example.com"),
        "{}",
        out.stdout
    );

    // A bad value from the environment is named like its flag.
    let out = check(
        &[],
        &[envs[0], envs[1], envs[2], ("TOKEN_SIDECAR_THREADS", "many")],
    );
    assert_invalid(&out, &["--threads", "many"]);
}

#[tokio::test]
async fn flags_override_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        r#"
[[route]]
name = "api"
upstream = "https://from-file.example.com"
token = "t"

[token.t]
grant = "static"
static_token = "file-secret"
"#,
    );
    let out = check(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--upstream",
            "https://from-flag.example.com",
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("https://from-flag.example.com"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("from-file"), "{}", out.stdout);
}

#[tokio::test]
async fn check_never_prints_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("client-secret");
    std::fs::write(&secret_file, "file-client-secret-77\n").unwrap();

    // Valid configurations: the summary has no secret.
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            vec![
                "--upstream".into(),
                "https://api.example.com".into(),
                "--grant".into(),
                "static".into(),
                "--static-token".into(),
                "static-secret-11".into(),
            ],
            vec![],
        ),
        (
            vec![
                "--upstream".into(),
                "https://api.example.com".into(),
                "--token-url".into(),
                "https://id.example.com/oauth/token".into(),
                "--client-id".into(),
                "my-client".into(),
                "--client-secret".into(),
                "inline-client-secret-22".into(),
                "--redis-url".into(),
                "redis://:redis-password-33@redis:6379/0".into(),
            ],
            vec![],
        ),
        (
            vec![
                "--upstream".into(),
                "https://api.example.com".into(),
                "--token-url".into(),
                "https://id.example.com/oauth/token".into(),
                "--client-id".into(),
                "my-client".into(),
                "--client-secret-file".into(),
                secret_file.display().to_string(),
            ],
            vec![],
        ),
        (
            vec![
                "--upstream".into(),
                "https://api.example.com".into(),
                "--token-url".into(),
                "https://id.example.com/oauth/token".into(),
                "--client-id".into(),
                "my-client".into(),
            ],
            vec![("TOKEN_SIDECAR_CLIENT_SECRET", "env-client-secret-44")],
        ),
    ];
    let secrets = [
        "static-secret-11",
        "inline-client-secret-22",
        "redis-password-33",
        "file-client-secret-77",
        "env-client-secret-44",
    ];
    for (args, envs) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = check(&args, envs);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.all());
        for s in secrets {
            assert!(
                !out.all().contains(s),
                "{s} printed for {args:?}:\n{}",
                out.all()
            );
        }
    }

    // Invalid configurations: the problems are named, the secrets are not printed.
    let bad: Vec<Vec<&str>> = vec![
        vec![
            "--upstream",
            "https://api.example.com",
            "--client-secret",
            "inline-client-secret-22",
            "--client-secret-file",
            secret_file.to_str().unwrap(),
            "--redis-url",
            "http://:redis-password-33@redis",
        ],
        vec![
            "--upstream",
            "https://user:static-secret-11@api.example.com",
            "--token-url",
            "https://my-client:inline-client-secret-22@id.example.com/token",
            "--grant",
            "client_credentials",
        ],
        vec![
            "--upstream",
            "https://api.example.com",
            "--grant",
            "static",
            "--static-token",
            "static-secret-11\u{7}",
        ],
    ];
    for args in &bad {
        let out = check(args, &[]);
        assert_eq!(out.code, EXIT_INVALID, "{args:?}: {}", out.all());
        for s in secrets {
            assert!(
                !out.all().contains(s),
                "{s} printed for {args:?}:\n{}",
                out.all()
            );
        }
    }
}

#[tokio::test]
async fn config_file_routes_each_get_their_own_token_and_upstream() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        r#"
[admin]
listen = "127.0.0.1:0"

[[route]]
name = "alpha"
listen = "127.0.0.1:0"
upstream = "${TS_TEST_UPSTREAM}/a"
token = "one"

[[route]]
name = "beta"
listen = "127.0.0.1:0"
upstream = "${TS_TEST_UPSTREAM}/b/"
token = "two"
header = "X-Api-Key"
header_prefix = ""

[token.one]
grant = "static"
static_token = "${TS_TEST_TOKEN_ONE}"

[token.two]
grant = "static"
static_token = "literal-token-two"
"#,
    );
    let upstream = up.url("");
    let sc = SidecarBuilder::bare()
        .arg("--config")
        .arg(&cfg)
        .env("TS_TEST_UPSTREAM", &upstream)
        .env("TS_TEST_TOKEN_ONE", "env-token-one")
        .start()
        .await;
    let client = Client::http1();
    let alpha = sc.route_addr("alpha");
    let beta = sc.route_addr("beta");
    assert_ne!(alpha, beta);

    let r = client.get(&format!("http://{alpha}/x?y=1")).await;
    assert_eq!(r.status, 200);
    let got = up.last();
    assert_eq!(got.path_and_query(), "/a/x?y=1");
    assert_eq!(
        got.header_values("authorization"),
        vec!["Bearer env-token-one"]
    );

    let r = client
        .get_with(
            &format!("http://{beta}/z"),
            &[("authorization", "Bearer app")],
        )
        .await;
    assert_eq!(r.status, 200);
    let got = up.last();
    assert_eq!(got.path_and_query(), "/b/z");
    assert_eq!(got.header_values("x-api-key"), vec!["literal-token-two"]);
    assert!(got.header_values("authorization").is_empty());

    let m = sc.metrics().await;
    for route in ["alpha", "beta"] {
        assert_eq!(
            metrics::value(
                &m,
                "token_sidecar_requests_total",
                &[("route", route), ("status", "200")]
            ),
            Some(1.0),
            "{m}"
        );
    }
    for token in ["one", "two"] {
        assert_eq!(
            metrics::value(&m, "token_sidecar_token_valid", &[("token", token)]),
            Some(1.0),
            "{m}"
        );
    }
    let (_, info) = sc.admin_get("/token-info").await;
    for secret in ["env-token-one", "literal-token-two"] {
        assert!(!info.contains(secret), "{info}");
        assert!(!m.contains(secret));
        sc.assert_logs_free_of(secret);
    }
}

#[tokio::test]
async fn the_config_files_log_format_is_used() {
    let dir = tempfile::tempdir().unwrap();
    // The admin port is taken: `run` logs why it cannot start, then exits 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = write_config(
        &dir,
        &format!(
            r#"
log_format = "text"

[admin]
listen = "{}"

[[route]]
name = "api"
listen = "127.0.0.1:0"
upstream = "https://api.example.com"
token = "t"

[token.t]
grant = "static"
static_token = "x"
"#,
            taken.local_addr().unwrap()
        ),
    );
    let out = run_once(["run", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("cannot start"))
        .unwrap_or_else(|| panic!("no `cannot start` line:\n{}", out.stderr));
    assert!(
        serde_json::from_str::<serde_json::Value>(line).is_err() && line.contains(" ERROR "),
        "not a text log line: {line}"
    );

    // The flag still wins over the file.
    let out = run_once(
        [
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        &[],
    );
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["message"] == "cannot start"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn an_unreadable_or_malformed_config_file_is_the_only_problem_reported() {
    let dir = tempfile::tempdir().unwrap();
    let broken = write_config(&dir, "[[route]\nname = \"api\"\n");
    let type_error = dir.path().join("types.toml");
    std::fs::write(&type_error, "[[route]]\nrefresh_on_401 = \"yes\"\n").unwrap();
    let missing = dir.path().join("missing.toml");
    for (path, named) in [
        (&broken, "sidecar.toml:1:"),
        (&type_error, "`route[0].refresh_on_401`"),
        (&missing, "--config"),
    ] {
        let out = check(&["--config", path.to_str().unwrap()], &[]);
        assert_eq!(out.code, EXIT_INVALID, "{}", out.all());
        assert_names(&out, &[named, "(1 problem(s))"]);
        // Nothing about the route and profile the file never got to define.
        assert!(!out.all().contains("token.default"), "{}", out.all());
        // One line per problem, then where to go from here.
        let problems: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| !l.starts_with("token-sidecar: invalid configuration"))
            .filter(|l| !l.starts_with("Run `token-sidecar --help`"))
            .collect();
        assert_eq!(problems.len(), 1, "{}", out.stderr);
    }
}

#[tokio::test]
async fn a_route_without_token_must_name_one_when_the_file_has_several_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        r#"
[[route]]
name = "api"
upstream = "https://api.example.com"

[token.zz]
grant = "static"
static_token = "x"

[token.aa]
grant = "static"
static_token = "y"
"#,
    );
    let out = check(&["--config", cfg.to_str().unwrap()], &[]);
    assert_invalid(&out, &["`route[0].token`", "aa, zz", "(1 problem(s))"]);

    // With one profile, it is the route's without saying.
    let out = check_file(
        &dir,
        "[[route]]\nname = \"api\"\nupstream = \"https://api.example.com\"\n\
         [token.only]\ngrant = \"static\"\nstatic_token = \"x\"\n",
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stdout.contains("(token only,"), "{}", out.stdout);
}

#[tokio::test]
async fn every_token_flag_is_refused_when_the_file_has_several_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        r#"
[[route]]
name = "a"
upstream = "https://a.example.com"
token = "one"

[token.one]
grant = "static"
static_token = "x"

[token.two]
grant = "static"
static_token = "y"
"#,
    );
    let flags = [
        ("--username", "u"),
        ("--token-param", "a=b"),
        ("--min-refresh-interval", "1s"),
        ("--file-poll-interval", "1s"),
        ("--default-token-lifetime", "1m"),
        ("--token-request-timeout", "2s"),
    ];
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    for (f, v) in flags {
        args.extend([f, v]);
    }
    let out = check(&args, &[]);
    assert_eq!(out.code, EXIT_INVALID, "{}", out.all());
    let mut needles: Vec<&str> = flags.iter().map(|(f, _)| *f).collect();
    needles.push("(6 problem(s))");
    assert_names(&out, &needles);
}

#[tokio::test]
async fn range_errors_name_the_config_key_the_value_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        r#"
threads = 0

[[route]]
name = "api"
upstream = "https://api.example.com"
upstream_timeout = "0s"
connect_timeout = "0s"
upstream_idle_timeout = "0s"
header_read_timeout = "0s"

[token.t]
grant = "static"
static_token = "x"
"#,
    );
    let out = check(&["--config", cfg.to_str().unwrap()], &[]);
    assert_invalid(
        &out,
        &[
            "`threads`: 0 is out of range",
            "`route[0].upstream_timeout`",
            "`route[0].connect_timeout`",
            "`route[0].upstream_idle_timeout`",
            "`route[0].header_read_timeout`",
            "(5 problem(s))",
        ],
    );
}

#[tokio::test]
async fn bad_credentials_options_are_each_one_clear_problem() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("client-secret");
    std::fs::write(&secret_file, "s\n").unwrap();
    let base = [
        "--upstream",
        "https://api.example.com",
        "--token-url",
        "https://id.example.com/token",
    ];

    // A secret given twice: that is the problem, not a missing secret.
    let mut args = base.to_vec();
    args.extend([
        "--client-id",
        "app",
        "--client-secret",
        "inline-secret-5",
        "--client-secret-file",
        secret_file.to_str().unwrap(),
    ]);
    let out = check(&args, &[]);
    assert_invalid(
        &out,
        &["--client-secret and --client-secret-file", "(1 problem(s))"],
    );
    assert!(!out.all().contains("inline-secret-5"));

    // An empty client id (an unset Secret key expanded to ""), or username.
    let mut args = base.to_vec();
    args.extend(["--client-id", " ", "--client-secret-file"]);
    args.push(secret_file.to_str().unwrap());
    let out = check(&args, &[]);
    assert_invalid(&out, &["--client-id: the client id is empty"]);
    let mut args = base.to_vec();
    args.extend(["--grant", "password", "--username", "", "--password-file"]);
    args.push(secret_file.to_str().unwrap());
    let out = check(&args, &[]);
    assert_invalid(&out, &["--username: the username is empty"]);
}

#[tokio::test]
async fn a_redis_url_that_does_not_parse_is_refused_by_check_without_printing_it() {
    let out = check_static(
        &["--redis-url", "redis://:redis-password-66@redis:notaport/0"],
        &[],
    );
    assert_invalid(&out, &["--redis-url", "not a valid Redis URL"]);
    assert!(!out.all().contains("redis-password-66"), "{}", out.all());

    let dir = tempfile::tempdir().unwrap();
    let out = check_file(
        &dir,
        "[[route]]\nupstream = \"https://api.example.com\"\n\
         [token.t]\ngrant = \"static\"\nstatic_token = \"x\"\n\
         [shared]\nredis_url = \"redis://\"\n",
    );
    assert_invalid(&out, &["`shared.redis_url`", "not a valid Redis URL"]);
}

#[tokio::test]
async fn options_the_grant_does_not_use_are_named_in_a_warning() {
    let out = check_static(
        &["--token-file", "/nonexistent/token", "--log-format", "text"],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stderr.contains("not used by the profile's grant")
            && out
                .stderr
                .contains("--token-file (or `token.default.token_file`)"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn check_shows_the_configurations_warnings() {
    let out = check_static(&["--listen", "0.0.0.0:18080"], &[]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stdout.starts_with("configuration OK"), "{}", out.stdout);
    assert!(
        out.stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["level"] == "WARN"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("not on loopback"))),
        "{}",
        out.stderr
    );
}

/// A command line that does not parse (an unknown flag, a value outside a fixed set) is
/// clap's usage error: exit 2, the offending argument named.
#[tokio::test]
async fn a_bad_command_line_exits_2_naming_the_argument() {
    let out = run_once(["--upstrem", "https://api.example.com"], &[]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert_names(&out, &["--upstrem"]);
    let out = run_once(["dev", "--log-format", "xml"], &[]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert_names(&out, &["--log-format", "xml"]);
}

#[tokio::test]
async fn an_invalid_log_filter_is_reported() {
    let out = check_static(&[], &[("TOKEN_SIDECAR_LOG", "token_sidecar=verbose")]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stderr
            .contains("TOKEN_SIDECAR_LOG is not a valid log filter")
            && out.stderr.contains("token_sidecar=verbose"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn two_profiles_cannot_share_a_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s").unwrap();
    let profile = |name: &str, state: &str| {
        format!(
            "[token.{name}]\ngrant = \"client_credentials\"\ntoken_url = \"https://auth.example.com/token\"\n\
             client_id = \"c\"\nclient_secret_file = \"{}\"\nstate_file = \"{}\"\n",
            secret.display(),
            dir.path().join(state).display()
        )
    };
    let routes = "[[route]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nupstream = \"https://api.example.com\"\ntoken = \"one\"\n\
                  [[route]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\nupstream = \"https://api.example.com\"\ntoken = \"two\"\n";
    let out = check_file(
        &dir,
        &format!(
            "{routes}{}{}",
            profile("one", "same.json"),
            profile("two", "same.json")
        ),
    );
    assert_invalid(
        &out,
        &["`token.two.state_file`", "token `one`", "(1 problem(s))"],
    );
    // Their own files: fine.
    let out = check_file(
        &dir,
        &format!(
            "{routes}{}{}",
            profile("one", "one.json"),
            profile("two", "two.json")
        ),
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
}
