//! The Grafana dashboard (`deploy/monitoring/grafana-dashboard.json`) and the alerting rules
//! (`deploy/monitoring/alerts.yaml`) use only metrics and labels that the sidecar exports.
//!
//! The metric names are read from every PromQL expression of both files (the panels' queries,
//! the template variables' `label_values(...)`, the rules' `expr`), with the label names of
//! their selectors and of their `by`/`without`/`on`/`ignoring` clauses. A real sidecar (the
//! binary, with Redis and scripted token endpoint and API) is then driven until every one of
//! those series exists: `prometheus` prints a labelled metric only once it has a sample, so
//! its `# HELP`/`# TYPE` lines alone would prove nothing. Its `/metrics` must then hold each
//! name (histograms through `_bucket`, `_sum` and `_count`, with `# TYPE ... histogram`) and
//! each label on that metric's samples. Target labels added by the scrape (namespace, pod,
//! instance, job) are the only others allowed.
//!
//! Also here: the chart embeds the very same dashboard file (its ConfigMap, `.Files.Get`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use support::redis::Redis;
use support::scripted::Scripted;
use support::trust_tokens as tt;
use support::{Client, SidecarBuilder, DEADLINE, MARKER};
use tokio::io::AsyncWriteExt;
use yaml_rust2::{Yaml, YamlLoader};

const DASHBOARD: &str = "deploy/monitoring/grafana-dashboard.json";
const CHART_DASHBOARD: &str = "charts/token-sidecar/dashboards/token-sidecar.json";
const ALERTS: &str = "deploy/monitoring/alerts.yaml";

/// Labels Prometheus adds when it scrapes (Kubernetes service discovery, static configs).
const TARGET_LABELS: &[&str] = &["namespace", "pod", "instance", "job"];

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

// --- what the files use ----------------------------------------------------------------------

/// What one PromQL expression names: metrics with the labels of their selectors, and the
/// labels of its grouping clauses.
#[derive(Debug, Default, PartialEq)]
struct Uses {
    /// Metric name -> label names in its selectors (`{route=~"$route"}`).
    metrics: BTreeMap<String, BTreeSet<String>>,
    /// Labels of `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`.
    grouping: BTreeSet<String>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Scans a PromQL expression (with Grafana's `$variables`, which stay inside strings and range
/// brackets): string literals are skipped, identifiers starting with `token_sidecar_` are
/// metrics, `{...}` after one holds its matchers, and the keyword of a grouping clause is
/// followed by its label list. `label_values(SELECTOR, LABEL)` (a Grafana variable query)
/// counts LABEL as a selector label of the metric.
fn promql_uses(expr: &str) -> Uses {
    let chars: Vec<char> = expr.chars().collect();
    let mut uses = Uses::default();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let ident_at = |mut i: usize| {
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        (chars[start..i].iter().collect::<String>(), i)
    };
    let skip_string = |mut i: usize| {
        let quote = chars[i];
        i += 1;
        while i < chars.len() && chars[i] != quote {
            if chars[i] == '\\' && quote != '`' {
                i += 1;
            }
            i += 1;
        }
        i + 1
    };
    let mut last_metric: Option<String> = None;
    let mut label_values_depth: Option<usize> = None;
    let mut depth = 0usize;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(i);
            continue;
        }
        if c == '(' {
            depth += 1;
        }
        if c == ')' {
            if label_values_depth == Some(depth) {
                label_values_depth = None;
            }
            depth = depth.saturating_sub(1);
        }
        if c == ',' && label_values_depth == Some(depth) {
            // label_values(SELECTOR, LABEL): the label of the selector's metric.
            let (label, end) = ident_at(skip_ws(i + 1));
            if let Some(m) = &last_metric {
                uses.metrics.entry(m.clone()).or_default().insert(label);
            }
            i = end;
            continue;
        }
        // `$__rate_interval` and other Grafana variables are not identifiers.
        if c == '$' {
            i += 1;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            continue;
        }
        if !is_ident_start(c) || (i > 0 && (is_ident(chars[i - 1]) || chars[i - 1] == '.')) {
            i += 1;
            continue;
        }
        let (word, end) = ident_at(i);
        let next = skip_ws(end);
        match word.as_str() {
            "by" | "without" | "on" | "ignoring" if chars.get(next) == Some(&'(') => {
                let close = chars[next..]
                    .iter()
                    .position(|c| *c == ')')
                    .map_or(chars.len(), |p| next + p);
                let list: String = chars[next + 1..close].iter().collect();
                uses.grouping.extend(
                    list.split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                );
                i = close + 1;
                continue;
            }
            "label_values" if chars.get(next) == Some(&'(') => {
                label_values_depth = Some(depth + 1);
                i = next;
                continue;
            }
            _ => {}
        }
        if word.starts_with("token_sidecar_") {
            let labels = uses.metrics.entry(word.clone()).or_default();
            last_metric = Some(word);
            if chars.get(next) == Some(&'{') {
                // Matchers: LABEL OP "VALUE", ...
                let mut j = next + 1;
                loop {
                    j = skip_ws(j);
                    match chars.get(j) {
                        None => break,
                        Some('}') => {
                            j += 1;
                            break;
                        }
                        Some(',') => j += 1,
                        Some(c) if is_ident_start(*c) => {
                            let (label, e) = ident_at(j);
                            labels.insert(label);
                            j = skip_ws(e);
                            while j < chars.len() && "=!~".contains(chars[j]) {
                                j += 1;
                            }
                            j = skip_ws(j);
                            if j < chars.len() && "\"'`".contains(chars[j]) {
                                j = skip_string(j);
                            }
                        }
                        Some(_) => j += 1,
                    }
                }
                i = j;
                continue;
            }
        }
        i = end;
    }
    uses
}

/// Every expression of the dashboard: the panels' (rows' panels included) targets and the
/// query variables, each with where it comes from.
fn dashboard_exprs(text: &str) -> Vec<(String, String)> {
    let d: serde_json::Value = serde_json::from_str(text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("panel {title:?}"), e.to_owned()));
                }
            }
            panels(&p["panels"], out);
        }
    }
    panels(&d["panels"], &mut out);
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .or_else(|| v["definition"].as_str())
                .unwrap_or_default();
            out.push((
                format!("variable ${}", v["name"].as_str().unwrap_or("?")),
                q.to_owned(),
            ));
        }
    }
    out
}

/// Every `expr` of the rules file, with its alert or record name.
fn rule_exprs(text: &str) -> Vec<(String, String)> {
    let docs = YamlLoader::load_from_str(text).expect("the rules are YAML");
    let mut out = Vec::new();
    for doc in &docs {
        for g in doc["groups"].as_vec().expect("groups: a list") {
            for r in g["rules"].as_vec().expect("rules: a list") {
                let name = r["alert"].as_str().or_else(|| r["record"].as_str());
                let expr = match &r["expr"] {
                    Yaml::String(s) => s.clone(),
                    other => panic!("{name:?}: expr is not a string: {other:?}"),
                };
                out.push((format!("rule {}", name.unwrap_or("?")), expr));
            }
        }
    }
    out
}

// --- what the sidecar exports ----------------------------------------------------------------

/// The metric families of a scrape: `# TYPE` lines, and the label names of each sample name.
#[derive(Debug, Default)]
struct Exported {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, BTreeSet<String>>,
}

impl Exported {
    fn parse(text: &str) -> Exported {
        let mut e = Exported::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    e.types.insert(name.to_owned(), kind.to_owned());
                }
            }
        }
        for s in support::metrics::parse(text) {
            e.samples
                .entry(s.name)
                .or_default()
                .extend(s.labels.into_keys());
        }
        e
    }

    /// Why `name` (as written in a query) is not a series of this scrape, if it is not.
    fn missing(&self, name: &str) -> Option<String> {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| self.types.get(*base).map(String::as_str) == Some("histogram"));
        match (family, self.types.get(name)) {
            (None, None) => Some("no such metric".into()),
            _ if !self.samples.contains_key(name) => Some("no sample".into()),
            _ => None,
        }
    }

    fn labels_of(&self, name: &str) -> BTreeSet<String> {
        self.samples.get(name).cloned().unwrap_or_default()
    }
}

// --- the sidecar, driven until every series exists -------------------------------------------

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT (unsigned: the token endpoint double only reads it) that expires at `exp`.
fn jwt_expiring(exp: u64) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","kid":"k"}"#),
        b64(&format!(
            r#"{{"iss":"kubernetes","sub":"system:serviceaccount:ns:app","exp":{exp}}}"#
        )),
        b64("signature")
    )
}

/// Answers every request with `status`, `headers` and "ok", on a closed connection; `None`
/// closes the connection without an answer.
async fn scripted(answer: fn(&str) -> Option<(u16, String, String)>) -> Scripted {
    Scripted::start(move |mut a| async move {
        let Some((head, _)) = a.read_request().await else {
            return;
        };
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        if let Some((status, headers, body)) = answer(&path) {
            let resp = format!(
                "HTTP/1.1 {status} X\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = a.stream.write_all(resp.as_bytes()).await;
        }
    })
    .await
}

/// One sidecar with Redis, a client assertion file and a token request budget of one, driven
/// through a request, a 401, a broken upstream connection, an upstream 429, an untrusted entry
/// in Redis and the connection limit. Returns `/metrics` once every name of `wanted` is there
/// (or the deadline passed).
async fn scrape_after_everything(wanted: &BTreeSet<String>) -> String {
    let redis = Redis::start();
    let token_endpoint = scripted(|_| {
        let body =
            format!(r#"{{"access_token":"{MARKER}","token_type":"Bearer","expires_in":3600}}"#);
        Some((200, "content-type: application/json\r\n".into(), body))
    })
    .await;
    let api = scripted(|path| match path {
        "/unauthorized" => Some((401, String::new(), "no".into())),
        "/block" => Some((
            429,
            "retry-after: 60\r\nx-rate-limit-group: heavy\r\n".into(),
            "slow down".into(),
        )),
        "/drop" => None,
        _ => Some((200, String::new(), "ok".into())),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let assertion = dir.path().join("assertion");
    std::fs::write(&assertion, jwt_expiring(unix_now() + 3600)).unwrap();
    let sc = SidecarBuilder::new(&api.url(""))
        .args(["--grant", "client_credentials", "--client-id", "c1"])
        .args(["--token-url", &token_endpoint.url("/oauth/token")])
        .args(["--client-auth", "assertion_file", "--client-assertion-file"])
        .arg(&assertion)
        .args(["--redis-url", &redis.url()])
        // The start-up token request spends it: the 401's refresh is deferred.
        .args(["--token-request-budget", "1/60s"])
        .args(["--max-connections", "3"])
        .start()
        .await;
    sc.wait_ready().await;

    let get = |path: &str| {
        let url = sc.url(path);
        async move { Client::http1().get(&url).await }
    };
    assert_eq!(get("/ok").await.status, 200);
    // 401: a refresh (deferred: the budget is spent), then the 401 goes back.
    assert_eq!(get("/unauthorized").await.status, 401);
    // The upstream closes the connection without an answer: 502 from the sidecar.
    get("/drop")
        .await
        .assert_sidecar_error(502, "upstream_error");
    // The upstream's 429 blocks group heavy; the next request of the group stops here.
    assert_eq!(get("/block").await.status, 429);
    get("/block")
        .await
        .assert_sidecar_error(429, "rate_limited");

    // An entry in Redis that is not a token set: rejected as invalid.
    let mut c = tt::redis_conn(&redis.url()).await;
    let version: Option<String> =
        tt::redis_cmd(&mut c, &[b"HGET", tt::NEW_KEY.as_bytes(), b"version"])
            .await
            .unwrap();
    let newer = (version.and_then(|v| v.parse::<u64>().ok()).unwrap_or(1) + 100).to_string();
    let _: i64 = tt::redis_cmd(
        &mut c,
        &[
            b"HSET",
            tt::NEW_KEY.as_bytes(),
            b"version",
            newer.as_bytes(),
            b"data",
            b"not a token set",
        ],
    )
    .await
    .unwrap();
    let _: i64 = tt::redis_cmd(
        &mut c,
        &[
            b"PUBLISH",
            b"token-sidecar:{default}:updates",
            newer.as_bytes(),
        ],
    )
    .await
    .unwrap();

    // More connections than --max-connections: the extra ones are closed at once.
    let mut held = Vec::new();
    for _ in 0..6 {
        if let Ok(s) = tokio::net::TcpStream::connect(sc.proxy_addr).await {
            held.push(s);
        }
    }

    let end = Instant::now() + DEADLINE;
    loop {
        let text = sc.metrics().await;
        let exported = Exported::parse(&text);
        if wanted.iter().all(|m| exported.missing(m).is_none()) || Instant::now() > end {
            drop(held);
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --- the tests ------------------------------------------------------------------------------

#[tokio::test]
async fn every_metric_and_label_the_dashboard_and_the_alerts_use_is_exported() {
    let mut exprs = dashboard_exprs(&read(DASHBOARD));
    let from_dashboard = exprs.len();
    exprs.extend(rule_exprs(&read(ALERTS)));
    assert!(from_dashboard >= 20, "{from_dashboard} dashboard queries");
    assert!(
        exprs.len() - from_dashboard >= 10,
        "{} rules",
        exprs.len() - from_dashboard
    );

    let parsed: Vec<(String, String, Uses)> = exprs
        .into_iter()
        .map(|(what, e)| {
            let u = promql_uses(&e);
            (what, e, u)
        })
        .collect();
    let wanted: BTreeSet<String> = parsed
        .iter()
        .flat_map(|(_, _, u)| u.metrics.keys().cloned())
        .collect();
    for (what, e, u) in &parsed {
        assert!(
            !u.metrics.is_empty(),
            "{what} names no token_sidecar metric: {e}"
        );
    }

    let text = scrape_after_everything(&wanted).await;
    let exported = Exported::parse(&text);
    let mut problems = Vec::new();
    for (what, expr, uses) in &parsed {
        let mut all_labels = BTreeSet::new();
        for (metric, labels) in &uses.metrics {
            if let Some(why) = exported.missing(metric) {
                problems.push(format!("{what}: {metric}: {why}"));
                continue;
            }
            let have = exported.labels_of(metric);
            for l in labels {
                if !have.contains(l) && !TARGET_LABELS.contains(&l.as_str()) {
                    problems.push(format!(
                        "{what}: {metric} has no label {l} (it has {have:?})"
                    ));
                }
            }
            all_labels.extend(have);
        }
        for l in &uses.grouping {
            if !all_labels.contains(l) && !TARGET_LABELS.contains(&l.as_str()) {
                problems.push(format!(
                    "{what}: no metric of the expression has the label {l} it groups by: {expr}"
                ));
            }
        }
    }
    let unused: Vec<&String> = exported
        .types
        .keys()
        .filter(|m| {
            m.starts_with("token_sidecar_")
                && !wanted
                    .iter()
                    .any(|w| w == *m || w.starts_with(&format!("{m}_")))
        })
        .collect();
    println!(
        "{} metric names used by {} expressions, all checked; exported and used by neither: {unused:?}",
        wanted.len(),
        parsed.len()
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n\n/metrics:\n{text}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_chart_embeds_the_same_dashboard() {
    let deploy = std::fs::read(repo_file(DASHBOARD)).unwrap();
    let chart = std::fs::read(repo_file(CHART_DASHBOARD)).unwrap();
    assert!(
        deploy == chart,
        "{CHART_DASHBOARD} differs from {DASHBOARD}: copy it (cp {DASHBOARD} {CHART_DASHBOARD})"
    );
}

#[test]
fn the_expression_reader_finds_metrics_selector_labels_and_grouping_labels() {
    let u = promql_uses(
        r#"histogram_quantile(0.99, sum by (route, le) (rate(token_sidecar_request_duration_seconds_bucket{namespace=~"$namespace", route=~"a,b}"}[$__rate_interval])))"#,
    );
    assert_eq!(
        u.metrics,
        BTreeMap::from([(
            "token_sidecar_request_duration_seconds_bucket".to_owned(),
            BTreeSet::from(["namespace".to_owned(), "route".to_owned()])
        )])
    );
    assert_eq!(
        u.grouping,
        BTreeSet::from(["route".to_owned(), "le".to_owned()])
    );

    let u = promql_uses(
        "sum without (trigger, result) (increase(token_sidecar_token_refreshes_total{result=\"failure\"}[15m])) > 0\nunless on (token) token_sidecar_token_valid == 1",
    );
    assert_eq!(
        u.metrics.keys().collect::<Vec<_>>(),
        [
            "token_sidecar_token_refreshes_total",
            "token_sidecar_token_valid"
        ]
    );
    assert_eq!(
        u.grouping,
        BTreeSet::from([
            "trigger".to_owned(),
            "result".to_owned(),
            "token".to_owned()
        ])
    );

    let u =
        promql_uses(r#"label_values(token_sidecar_token_valid{namespace=~"$namespace"}, token)"#);
    assert_eq!(
        u.metrics["token_sidecar_token_valid"],
        BTreeSet::from(["namespace".to_owned(), "token".to_owned()])
    );
    // Strings never count: "token_sidecar_x" in a matcher's value is not a metric.
    let u = promql_uses(r#"token_sidecar_token_valid{token="token_sidecar_fake"} offset 10m"#);
    assert_eq!(u.metrics.len(), 1);

    let exported = Exported::parse(
        "# TYPE token_sidecar_request_duration_seconds histogram\n\
         token_sidecar_request_duration_seconds_bucket{route=\"a\",le=\"0.5\"} 1\n\
         token_sidecar_request_duration_seconds_count{route=\"a\"} 1\n\
         # TYPE token_sidecar_token_valid gauge\n",
    );
    assert_eq!(
        exported.missing("token_sidecar_request_duration_seconds_bucket"),
        None
    );
    assert!(exported
        .missing("token_sidecar_request_duration_seconds_sum")
        .is_some());
    assert!(
        exported.missing("token_sidecar_token_valid").is_some(),
        "no sample"
    );
    assert!(exported.missing("token_sidecar_nothing").is_some());
}
