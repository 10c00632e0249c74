//! The admin listener: health, readiness, token metadata, rate limits, metrics and manual
//! refresh.
//! Nothing here forwards traffic or reveals a token.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::body::Body;
use crate::error::{error_response, ErrorKind};
use crate::metrics::Metrics;
use crate::proxy::Route;
use crate::token::{unix_seconds, Profile};

/// What the admin endpoints report on and act upon.
#[derive(Debug)]
pub struct AdminState {
    /// Every route, in configuration order (readiness).
    pub routes: Vec<Arc<Route>>,
    /// Every token profile by name (token metadata, manual refresh).
    pub profiles: BTreeMap<String, Arc<Profile>>,
    /// The process's metrics.
    pub metrics: Metrics,
}

/// Answers one admin request from `peer`.
pub async fn handle(
    shared: &AdminState,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => readyz(shared),
        (&Method::GET | &Method::HEAD, "/token-info") => json_response(StatusCode::OK, &token_info(shared)),
        (&Method::GET | &Method::HEAD, "/metrics") => metrics(shared),
        (&Method::GET | &Method::HEAD, "/rate-limits") => json_response(StatusCode::OK, &rate_limits(shared)),
        (&Method::POST, "/refresh") => {
            if !peer.ip().is_loopback() && !peer.ip().to_canonical().is_loopback() {
                return error_response(ErrorKind::Forbidden, "Refresh is accepted only from a loopback peer.");
            }
            let name = req.uri().query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "token")
                    .map(|(_, v)| v.into_owned())
            });
            refresh(shared, name).await
        }
        (_, "/healthz" | "/readyz" | "/token-info" | "/metrics" | "/rate-limits" | "/refresh") => {
            error_response(ErrorKind::MethodNotAllowed, "This method is not allowed on this endpoint.")
        }
        _ => error_response(ErrorKind::NotFound, "No such admin endpoint; try /healthz, /readyz, /token-info, /rate-limits, /metrics or POST /refresh."),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn readyz(shared: &AdminState) -> Response<Body> {
    let now = Instant::now();
    let mut not_ready = BTreeMap::new();
    for route in &shared.routes {
        if let Some(reason) = route.store().unready_reason(now) {
            not_ready.insert(
                route.name().to_owned(),
                json!({ "token": route.store().name(), "reason": reason }),
            );
        }
    }
    // Degraded but serving: said, never a reason to take the pod out of service.
    let mut details = serde_json::Map::new();
    for route in &shared.routes {
        if let Some(s) = route.limits().and_then(|l| l.shared()) {
            if !s.answered_last() {
                details.insert(
                    route.name().to_owned(),
                    json!({ "rate_limits": "Redis is unreachable: this replica applies the rate limits it knows on its own" }),
                );
            }
        }
    }
    if not_ready.is_empty() {
        let mut body = json!({ "status": "ready" });
        if !details.is_empty() {
            body["details"] = Value::Object(details);
        }
        json_response(StatusCode::OK, &body)
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "not_ready", "routes": not_ready }),
        )
    }
}

/// Metadata of one profile: never a token, never a secret.
pub fn profile_info(p: &Profile) -> Value {
    let now = Instant::now();
    let status = p.store.status();
    let token = p.store.current();
    let mut v = json!({
        "grant": p.grant_kind,
        "version": token.as_ref().map(|t| t.version()),
        "obtained_at": token.as_ref().map(|t| unix_seconds(t.obtained_at())),
        "expires_at": token.as_ref().and_then(|t| t.expires_at()).map(unix_seconds),
        "seconds_left": token.as_ref().and_then(|t| t.time_left(now)).map(|d| d.as_secs()),
        "valid": token.as_ref().is_some_and(|t| t.is_valid_at(now)),
        "last_refresh": {
            "result": status.result,
            "trigger": status.trigger,
            "at": status.at,
            "error": status.error,
            "consecutive_failures": status.consecutive_failures,
        },
    });
    if let (Some(obj), Some((what, exp))) = (v.as_object_mut(), p.store.credential_expiry()) {
        obj.insert(
            "credential".into(),
            json!({ "file": what, "expires_at": exp }),
        );
    }
    if let Some(extra) = p.extra_info() {
        if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
            obj.extend(more);
        }
    }
    v
}

/// Each route's rate limits: mode, rules, the blocks in force, whether they are shared.
fn rate_limits(shared: &AdminState) -> Value {
    let now = unix_seconds(SystemTime::now());
    let routes: serde_json::Map<String, Value> = shared
        .routes
        .iter()
        .map(|route| {
            let v = match route.limits() {
                None => json!({ "mode": "off" }),
                Some(l) => {
                    let s = l.settings();
                    json!({
                        "mode": s.mode.name(),
                        "max_wait_seconds": s.max_wait.as_secs_f64(),
                        "default_wait_seconds": s.default_wait.as_secs_f64(),
                        "rules": s.rules.iter().map(|r| json!({
                            "group": r.group,
                            "rate": r.rate.map(|rate| rate.to_string()),
                        })).collect::<Vec<_>>(),
                        "learned_shapes": l.learned_shapes(),
                        "shared": l.shared().map(|sh| json!({ "up": sh.answered_last() })),
                        "blocks": l.blocks().into_iter().map(|(group, until)| json!({
                            "group": group,
                            "until": until,
                            "seconds_left": (until - now as f64).max(0.0).ceil(),
                        })).collect::<Vec<_>>(),
                    })
                }
            };
            (route.name().to_owned(), v)
        })
        .collect();
    json!({ "routes": routes, "now": now })
}

fn token_info(shared: &AdminState) -> Value {
    let tokens: serde_json::Map<String, Value> = shared
        .profiles
        .iter()
        .map(|(name, p)| (name.clone(), profile_info(p)))
        .collect();
    json!({ "tokens": tokens, "now": unix_seconds(SystemTime::now()) })
}

fn metrics(shared: &AdminState) -> Response<Body> {
    let now = Instant::now();
    for (name, p) in &shared.profiles {
        let token = p.store.current();
        let valid = token.as_ref().is_some_and(|t| t.is_valid_at(now));
        shared
            .metrics
            .token_valid
            .with_label_values(&[name])
            .set(i64::from(valid));
        let expiry = token
            .as_ref()
            .and_then(|t| t.expires_at())
            .map_or(0.0, |e| unix_seconds(e) as f64);
        shared
            .metrics
            .token_expiry
            .with_label_values(&[name])
            .set(expiry);
        shared
            .metrics
            .token_version
            .with_label_values(&[name])
            .set(token.as_ref().map_or(0, |t| t.version() as i64));
    }
    let mut r = Response::new(Body::full(shared.metrics.encode()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

async fn refresh(shared: &AdminState, name: Option<String>) -> Response<Body> {
    // Without `?token=`, every profile: as the `refresh` subcommand does.
    let profiles: Vec<_> = match &name {
        Some(n) => match shared.profiles.get(n) {
            Some(p) => vec![p],
            None => return error_response(ErrorKind::NotFound, "No token profile by that name."),
        },
        None => shared.profiles.values().collect(),
    };
    let mut info = serde_json::Map::new();
    let mut failed = Vec::new();
    for profile in profiles {
        match profile.refresh_now(crate::token::Trigger::Manual).await {
            Ok(()) => {
                info.insert(profile.name.clone(), profile_info(profile));
            }
            Err(crate::token::RefreshError::Throttled {
                message,
                retry_after,
            }) => {
                return crate::error::rate_limited(
                    &format!("Token {}: {message}.", profile.name),
                    retry_after,
                );
            }
            Err(e) => {
                tracing::warn!(token = %profile.name, error = %e, "manual refresh failed");
                failed.push(profile.name.clone());
            }
        }
    }
    if failed.is_empty() {
        json_response(StatusCode::OK, &serde_json::Value::Object(info))
    } else {
        error_response(
            ErrorKind::RefreshFailed,
            &format!(
                "The refresh of token {} failed; see /token-info and the logs for the reason.",
                failed.join(", ")
            ),
        )
    }
}
