//! Tests of [`super::load`]: defaults, warnings as data, and which flags each section takes.

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn static_defaults() {
    let flags = Flags {
        upstream: Some("https://api.example.com".into()),
        grant: Some("static".into()),
        static_token: Some("tok".into()),
        ..Default::default()
    };
    let cfg = load(&flags, &no_env).unwrap();
    assert_eq!(cfg.routes.len(), 1);
    assert_eq!(cfg.routes[0].listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(cfg.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
    assert!(cfg.routes[0].refresh_on_401);
    assert!(!format!("{cfg:?}").contains("tok\""));
}

#[test]
fn all_problems_at_once() {
    let flags = Flags {
        listen: Some("nowhere".into()),
        grant: Some("client_credentials".into()),
        refresh_margin: Some("soon".into()),
        ..Default::default()
    };
    let errs = load(&flags, &no_env).unwrap_err().0;
    let all = errs.join("\n");
    assert!(all.contains("--listen"), "{all}");
    assert!(all.contains("--upstream"), "{all}");
    assert!(all.contains("--token-url"), "{all}");
    assert!(all.contains("--client-id"), "{all}");
    assert!(all.contains("--refresh-margin"), "{all}");
}

fn static_flags() -> Flags {
    Flags {
        upstream: Some("https://api.example.com".into()),
        grant: Some("static".into()),
        static_token: Some("tok".into()),
        ..Default::default()
    }
}

#[test]
fn unset_values_are_the_settings_defaults() {
    use settings::{admin, route, token, top};
    let cfg = load(&static_flags(), &no_env).unwrap().config;
    let r = &cfg.routes[0];
    assert_eq!(
        r.header.as_str(),
        route::HEADER.default.to_ascii_lowercase()
    );
    assert_eq!(r.header_prefix, route::HEADER_PREFIX.default);
    assert_eq!(r.refresh_on_401, route::REFRESH_ON_401.default);
    assert_eq!(r.retry_body_limit, route::RETRY_BODY_LIMIT.default);
    assert_eq!(r.upstream_timeout, route::UPSTREAM_TIMEOUT.default);
    assert_eq!(r.connect_timeout, route::CONNECT_TIMEOUT.default);
    assert_eq!(
        r.upstream_idle_timeout,
        route::UPSTREAM_IDLE_TIMEOUT.default
    );
    assert_eq!(r.header_read_timeout, route::HEADER_READ_TIMEOUT.default);
    assert_eq!(
        r.max_upstream_connections as u64,
        route::MAX_UPSTREAM_CONNECTIONS.default
    );
    assert_eq!(
        r.max_request_header_bytes as u64,
        route::MAX_REQUEST_HEADER_BYTES.default
    );
    assert_eq!(r.max_connections as u64, DEFAULT_MAX_CONNECTIONS);
    let t = &cfg.tokens["default"];
    assert_eq!(t.client_auth, token::CLIENT_AUTH.default);
    assert_eq!(t.refresh_margin, None);
    assert_eq!(t.min_refresh_interval, token::MIN_REFRESH_INTERVAL.default);
    assert_eq!(t.default_lifetime, token::DEFAULT_TOKEN_LIFETIME.default);
    assert_eq!(t.request_timeout, token::TOKEN_REQUEST_TIMEOUT.default);
    assert_eq!(t.request_budget, DEFAULT_TOKEN_REQUEST_BUDGET);
    assert_eq!(cfg.log_format, top::LOG_FORMAT.default);
    assert_eq!(cfg.shutdown_grace, top::SHUTDOWN_GRACE.default);
    assert_eq!(cfg.threads as u64, top::default_threads().min(1024));
    assert_eq!(cfg.retry_body_budget, DEFAULT_RETRY_BODY_BUDGET);
    assert_eq!(
        cfg.admin_max_connections as u64,
        admin::MAX_CONNECTIONS.default
    );

    let flags = Flags {
        grant: None,
        token_url: Some("https://id.example.com/token".into()),
        client_id: Some("id".into()),
        client_secret: Some("s".into()),
        static_token: None,
        ..static_flags()
    };
    let cfg = load(&flags, &no_env).unwrap();
    assert_eq!(cfg.tokens["default"].grant.kind(), token::GRANT.default);
}

#[test]
fn warnings_are_returned_in_order_and_not_logged() {
    let flags = Flags {
        listen: Some("0.0.0.0:18080".into()),
        upstream: Some("http://api.example.com".into()),
        token_file: Some("/nonexistent/token".into()),
        ..static_flags()
    };
    let loaded = load(&flags, &no_env).unwrap();
    assert_eq!(
        loaded.warnings,
        [
            Warning::unused_option(
                "default",
                "--token-file (or `token.default.token_file`)".into(),
                "static"
            ),
            Warning::plain_http_upstream("default"),
            Warning::listener_off_loopback("default", "0.0.0.0:18080".parse().unwrap()),
        ]
    );
    let w = &loaded.warnings[2];
    assert!(w.message.contains("not on loopback"), "{w}");
    assert_eq!(
        w.fields(),
        [
            ("route", "default".into()),
            ("listen", "0.0.0.0:18080".into())
        ]
    );
    assert_eq!(
        loaded.warnings[0].to_string(),
        "this option is not used by the profile's grant and is ignored token=default option=--token-file (or `token.default.token_file`) grant=static"
    );
}

#[test]
fn a_refused_configuration_keeps_its_warnings() {
    let flags = Flags {
        token_url: Some("http://id.example.com/token".into()),
        grant: Some("client_credentials".into()),
        shared_key_file: Some("/nonexistent/key".into()),
        static_token: None,
        ..static_flags()
    };
    let e = load(&flags, &no_env).unwrap_err();
    assert!(e.0.iter().any(|p| p.contains("--client-id")), "{e}");
    assert_eq!(
        e.warnings(),
        [
            Warning::shared_key_without_store("--shared-key-file".into()),
            Warning::plain_http_token_url("http://id.example.com/token"),
        ]
    );
    assert!(!e.to_string().contains("plain http"), "{e}");
}

/// Each route flag (and each token flag) is refused when the file has several routes
/// (profiles): the lists of flags given cover every setting of the table.
#[test]
fn every_route_and_token_flag_is_known_to_the_section_it_sets() {
    use clap::Parser;
    let mut args = vec!["token-sidecar".to_owned()];
    for s in settings::all() {
        args.extend([format!("--{}", s.flag()), "1".into()]);
    }
    let flags = Cli::try_parse_from(args).unwrap().flags;
    for (given, table) in [
        (routes::flags_given(&flags), settings::route::ALL),
        (tokens::flags_given(&flags), settings::token::ALL),
    ] {
        let mut want: Vec<&str> = table.iter().map(|s| s.flag()).collect();
        let mut given = given;
        want.sort_unstable();
        given.sort_unstable();
        assert_eq!(given, want);
    }
}

#[test]
fn the_log_format_hint_reads_the_flag_then_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "log_format = \"${FMT}\"\n").unwrap();
    let env = |v: &str| (v == "FMT").then(|| "text".to_owned());
    let from_file = Flags {
        config: Some(file.clone()),
        ..Default::default()
    };
    assert_eq!(log_format_hint(&from_file, &env), LogFormat::Text);
    assert_eq!(log_format_hint(&from_file, &no_env), LogFormat::Json);
    let flag = Flags {
        log_format: Some("json".into()),
        ..from_file
    };
    assert_eq!(log_format_hint(&flag, &env), LogFormat::Json);
    let bad = Flags {
        log_format: Some("yaml".into()),
        ..Default::default()
    };
    assert_eq!(log_format_hint(&bad, &no_env), LogFormat::Json);
}

/// A profile of `client_credentials` at `https://id.example.com/token` for client `c1`, as
/// `extra` TOML lines complete it.
fn auth_profile(extra: &str) -> Result<Loaded, ConfigErrors> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[[route]]\nupstream = \"https://api.example.com\"\n[token.t]\ntoken_url = \"https://id.example.com/token\"\nclient_id = \"c1\"\n{extra}\n"
        ),
    )
    .unwrap();
    let flags = Flags {
        config: Some(path),
        ..Default::default()
    };
    load(&flags, &no_env)
}

#[test]
fn each_client_auth_names_what_it_lacks() {
    for (auth, lacks) in [
        ("private_key_jwt", "--jwt-signing-key-file"),
        ("client_secret_jwt", "--client-secret-file"),
        ("assertion_file", "--client-assertion-file"),
        ("tls", "--tls-client-cert-file"),
    ] {
        let errs = auth_profile(&format!("client_auth = \"{auth}\""))
            .unwrap_err()
            .0;
        let all = errs.join("\n");
        assert!(
            all.contains(lacks) && all.contains(&format!("client_auth `{auth}` needs")),
            "{auth}: {all}"
        );
    }
    let errs = auth_profile("client_auth = \"mtls\"").unwrap_err().0;
    assert!(
        errs.join("\n")
            .contains("is not basic or body or none or private_key_jwt or client_secret_jwt or assertion_file or tls"),
        "{errs:?}"
    );
    let errs = auth_profile(
        "client_auth = \"client_secret_jwt\"\nclient_secret = \"s\"\njwt_alg = \"ES256\"",
    )
    .unwrap_err()
    .0;
    assert!(
        errs.join("\n").contains("HS256, HS384 or HS512"),
        "{errs:?}"
    );
    let errs = auth_profile(
        "client_auth = \"client_secret_jwt\"\nclient_secret = \"s\"\njwt_alg = \"none\"",
    )
    .unwrap_err()
    .0;
    assert!(
        errs.join("\n").contains("`none` is not a JWS algorithm"),
        "{errs:?}"
    );
}

#[test]
fn options_the_client_auth_does_not_use_are_warned_about() {
    let loaded = auth_profile(
        "client_auth = \"none\"\nclient_secret = \"s\"\njwt_key_id = \"k\"\nclient_assertion_file = \"/x\"",
    )
    .unwrap();
    let options: Vec<String> = loaded
        .warnings
        .iter()
        .filter(|w| w.client_auth == Some("none"))
        .filter_map(|w| w.option.clone())
        .collect();
    assert_eq!(options.len(), 3, "{:?}", loaded.warnings);
    let t = &loaded.tokens["t"];
    assert_eq!(t.client_auth, ClientAuth::None);
}

#[test]
fn audience_and_resource_take_a_string_or_a_list() {
    let loaded = auth_profile(
        "client_secret = \"s\"\naudience = \"https://api.example.com\"\nresource = [\"https://a.example.com/\", \"urn:example:b\"]",
    )
    .unwrap();
    let t = &loaded.tokens["t"];
    assert_eq!(t.audience, ["https://api.example.com"]);
    assert_eq!(t.resource, ["https://a.example.com/", "urn:example:b"]);
    let errs = auth_profile(
        "client_secret = \"s\"\nresource = [\"https://a.example.com/#frag\", \"not a uri\"]",
    )
    .unwrap_err()
    .0;
    assert_eq!(errs.len(), 2, "{errs:?}");
    let errs =
        auth_profile("client_secret = \"s\"\naudience = \"a\"\nparams = { audience = \"b\" }")
            .unwrap_err()
            .0;
    assert!(
        errs.join("\n").contains("also given as a token param"),
        "{errs:?}"
    );
}

#[test]
fn token_exchange_needs_a_subject_token_and_takes_uri_token_types() {
    let dir = tempfile::tempdir().unwrap();
    let subject = dir.path().join("subject");
    std::fs::write(&subject, "eyJ.eyJ.sig").unwrap();
    let errs = auth_profile("grant = \"token_exchange\"\nclient_auth = \"none\"")
        .unwrap_err()
        .0;
    assert!(
        errs.join("\n").contains("needs a subject token"),
        "{errs:?}"
    );
    let loaded = auth_profile(&format!(
        "grant = \"token_exchange\"\nclient_auth = \"none\"\nsubject_token_file = \"{}\"\nrequested_token_type = \"urn:ietf:params:oauth:token-type:access_token\"",
        subject.display()
    ))
    .unwrap();
    match &loaded.tokens["t"].grant {
        Grant::TokenExchange {
            subject_token_type,
            actor_token_file,
            requested_token_type,
            ..
        } => {
            assert_eq!(subject_token_type, settings::token::JWT_TOKEN_TYPE);
            assert!(actor_token_file.is_none());
            assert_eq!(
                requested_token_type.as_deref(),
                Some("urn:ietf:params:oauth:token-type:access_token")
            );
        }
        g => panic!("{g:?}"),
    }
    let errs = auth_profile(&format!(
        "grant = \"token_exchange\"\nsubject_token_file = \"{}\"\nsubject_token_type = \"jwt\"",
        subject.display()
    ))
    .unwrap_err()
    .0;
    assert!(
        errs.join("\n").contains("is not a token type URI"),
        "{errs:?}"
    );
}

#[test]
fn an_issuer_stands_in_for_the_token_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[[route]]\nupstream = \"https://api.example.com\"\n[token.t]\nissuer = \"https://id.example.com/tenant\"\nclient_id = \"c1\"\nclient_secret = \"s\"\n",
    )
    .unwrap();
    let flags = Flags {
        config: Some(path.clone()),
        ..Default::default()
    };
    let cfg = load(&flags, &no_env).unwrap();
    assert_eq!(cfg.tokens["t"].token_url, None);
    assert!(cfg
        .summary()
        .contains("token endpoint discovered from issuer https://id.example.com/tenant"));
    std::fs::write(
        &path,
        "[[route]]\nupstream = \"https://api.example.com\"\n[token.t]\nissuer = \"https://id.example.com/?x=1\"\nclient_id = \"c1\"\nclient_secret = \"s\"\n",
    )
    .unwrap();
    let errs = load(&flags, &no_env).unwrap_err().0;
    assert!(errs.join("\n").contains("no query or fragment"), "{errs:?}");
}
