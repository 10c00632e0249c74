//! Prometheus metrics, in a registry the application owns.
//!
//! Label sets are bounded: routes and token profiles come from the configuration, statuses are
//! HTTP codes and every other label is an enum.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};
use prometheus::{GaugeVec, IntGaugeVec};

/// Every metric of the process.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `token_sidecar_requests_total{route,status}`.
    pub requests: IntCounterVec,
    /// `token_sidecar_request_duration_seconds{route}`.
    pub request_duration: HistogramVec,
    /// `token_sidecar_upstream_errors_total{route,kind}`.
    pub upstream_errors: IntCounterVec,
    /// `token_sidecar_unauthorized_retries_total{route,result}`.
    pub unauthorized_retries: IntCounterVec,
    /// `token_sidecar_token_refreshes_total{token,trigger,result}`.
    pub token_refreshes: IntCounterVec,
    /// `token_sidecar_token_expiry_timestamp_seconds{token}`.
    pub token_expiry: GaugeVec,
    /// `token_sidecar_token_valid{token}`.
    pub token_valid: IntGaugeVec,
    /// `token_sidecar_token_version{token}`.
    pub token_version: IntGaugeVec,
    /// `token_sidecar_rejected_requests_total{route,kind}`: requests answered by the sidecar itself.
    pub rejected: IntCounterVec,
    /// `token_sidecar_open_connections{listener}`.
    pub open_connections: IntGaugeVec,
    /// `token_sidecar_upstream_connections{route}`.
    pub upstream_connections: IntGaugeVec,
    /// `token_sidecar_shared_store_operations_total{token,op,result}`.
    pub shared_ops: IntCounterVec,
    /// `token_sidecar_shared_lock_acquisitions_total{token}`.
    pub shared_lock_acquisitions: IntCounterVec,
    /// `token_sidecar_shared_rejected_entries_total{token,reason}`.
    pub shared_rejected: IntCounterVec,
    /// `token_sidecar_connections_rejected_total{listener}`.
    pub connections_rejected: IntCounterVec,
    /// `token_sidecar_retry_body_bytes`.
    pub retry_body_bytes: prometheus::IntGauge,
    /// `token_sidecar_retry_body_budget_exceeded_total{route}`.
    pub retry_body_budget_exceeded: IntCounterVec,
    /// `token_sidecar_token_requests_deferred_total{token}`.
    pub token_requests_deferred: IntCounterVec,
    /// `token_sidecar_client_assertion_expiry_timestamp_seconds{token}`.
    pub client_assertion_expiry: GaugeVec,
    /// `token_sidecar_rate_limited_total{route,group,source}`.
    pub rate_limited: IntCounterVec,
    /// `token_sidecar_rate_limit_blocked_until_timestamp_seconds{route,group}`.
    pub rate_limit_blocked_until: GaugeVec,
    /// `token_sidecar_rate_limit_shared_up{route}`.
    pub rate_limit_shared_up: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    reg.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn int_gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    reg.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    /// Creates every metric in a new registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = counter(
            &registry,
            "token_sidecar_requests_total",
            "Requests answered to the app, by route and status code sent back.",
            &["route", "status"],
        );
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "token_sidecar_request_duration_seconds",
                "Time from receiving a request to sending the response headers back.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["route"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(request_duration.clone()))
            .expect("metric registered once");
        let upstream_errors = counter(
            &registry,
            "token_sidecar_upstream_errors_total",
            "Failures talking to the upstream, by kind (connect, timeout, tls, protocol).",
            &["route", "kind"],
        );
        let unauthorized_retries = counter(
            &registry,
            "token_sidecar_unauthorized_retries_total",
            "Requests answered 401 by the upstream and how the retry went.",
            &["route", "result"],
        );
        let token_refreshes = counter(
            &registry,
            "token_sidecar_token_refreshes_total",
            "Attempts to obtain a token, by trigger and result.",
            &["token", "trigger", "result"],
        );
        let token_expiry = GaugeVec::new(
            Opts::new(
                "token_sidecar_token_expiry_timestamp_seconds",
                "When the current token expires (unix seconds); 0 when it does not expire.",
            ),
            &["token"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(token_expiry.clone()))
            .expect("metric registered once");
        let token_valid = int_gauge(
            &registry,
            "token_sidecar_token_valid",
            "1 while the profile holds an unexpired token, else 0.",
            &["token"],
        );
        let token_version = int_gauge(
            &registry,
            "token_sidecar_token_version",
            "Version of the current token of the profile.",
            &["token"],
        );
        let rejected = counter(
            &registry,
            "token_sidecar_rejected_requests_total",
            "Requests the sidecar answered itself, by kind of error.",
            &["route", "kind"],
        );
        let open_connections = int_gauge(
            &registry,
            "token_sidecar_open_connections",
            "Connections currently open from apps, by listener.",
            &["listener"],
        );
        let upstream_connections = int_gauge(
            &registry,
            "token_sidecar_upstream_connections",
            "Connections currently open to the upstream, by route.",
            &["route"],
        );
        let shared_ops = counter(
            &registry,
            "token_sidecar_shared_store_operations_total",
            "Operations on the shared store (Redis) by op and result.",
            &["token", "op", "result"],
        );
        let shared_lock_acquisitions = counter(
            &registry,
            "token_sidecar_shared_lock_acquisitions_total",
            "Times this replica took the shared refresh lock.",
            &["token"],
        );
        let shared_rejected = counter(
            &registry,
            "token_sidecar_shared_rejected_entries_total",
            "Shared-store entries ignored because they could not be trusted, by reason (unsealed, tampered, invalid).",
            &["token", "reason"],
        );
        let connections_rejected = counter(
            &registry,
            "token_sidecar_connections_rejected_total",
            "Connections closed at once because the listener held its maximum of open connections.",
            &["listener"],
        );
        let retry_body_bytes = prometheus::IntGauge::new(
            "token_sidecar_retry_body_bytes",
            "Bytes of request bodies held now for a replay after a 401, all routes together.",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(retry_body_bytes.clone()))
            .expect("metric registered once");
        let retry_body_budget_exceeded = counter(
            &registry,
            "token_sidecar_retry_body_budget_exceeded_total",
            "Requests streamed through without a copy for a replay because --retry-body-budget was in use.",
            &["route"],
        );
        let token_requests_deferred = counter(
            &registry,
            "token_sidecar_token_requests_deferred_total",
            "Token requests held back because the profile's --token-request-budget was spent.",
            &["token"],
        );
        let client_assertion_expiry = GaugeVec::new(
            Opts::new(
                "token_sidecar_client_assertion_expiry_timestamp_seconds",
                "When the client assertion or subject token read from a file for the last token request expires (unix seconds, its JWT exp).",
            ),
            &["token"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(client_assertion_expiry.clone()))
            .expect("metric registered once");
        let rate_limited = counter(
            &registry,
            "token_sidecar_rate_limited_total",
            "Rate limiting by group: 429/503 received from the upstream (source upstream), requests answered or held during a block (blocked), requests held or refused by a configured rate (paced).",
            &["route", "group", "source"],
        );
        let rate_limit_blocked_until = GaugeVec::new(
            Opts::new(
                "token_sidecar_rate_limit_blocked_until_timestamp_seconds",
                "When the latest block of a group ends (unix seconds; in the past once it has ended). Group `*` is the whole route.",
            ),
            &["route", "group"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(rate_limit_blocked_until.clone()))
            .expect("metric registered once");
        let rate_limit_shared_up = int_gauge(
            &registry,
            "token_sidecar_rate_limit_shared_up",
            "1 while the route's rate limits are shared through Redis, 0 while Redis is unreachable and each replica counts on its own.",
            &["route"],
        );
        Metrics {
            rate_limited,
            rate_limit_blocked_until,
            rate_limit_shared_up,
            client_assertion_expiry,
            shared_rejected,
            connections_rejected,
            retry_body_bytes,
            retry_body_budget_exceeded,
            token_requests_deferred,
            shared_ops,
            shared_lock_acquisitions,
            registry,
            requests,
            request_duration,
            upstream_errors,
            unauthorized_retries,
            token_refreshes,
            token_expiry,
            token_valid,
            token_version,
            rejected,
            open_connections,
            upstream_connections,
        }
    }

    /// The registry, for adding more collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything in the Prometheus text format.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(8 * 1024);
        let enc = prometheus::TextEncoder::new();
        // Encoding into a Vec cannot fail on I/O; a failure would be a bug in a collector.
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        buf
    }
}

/// The per-request metric handles of one route, resolved once so that the request path does
/// no label lookup.
#[derive(Debug)]
pub struct RouteMetrics {
    route: String,
    requests: IntCounterVec,
    by_status: Box<[OnceLock<IntCounter>]>,
    /// The route's request duration histogram.
    pub duration: Histogram,
    metrics: Metrics,
}

impl RouteMetrics {
    /// Handles for `route`.
    pub fn new(metrics: &Metrics, route: &str) -> Self {
        RouteMetrics {
            route: route.to_owned(),
            requests: metrics.requests.clone(),
            by_status: (100..600).map(|_| OnceLock::new()).collect(),
            duration: metrics.request_duration.with_label_values(&[route]),
            metrics: metrics.clone(),
        }
    }

    /// Counts a response with `status` sent back to the app.
    #[inline]
    pub fn count(&self, status: u16) {
        let idx = usize::from(status.clamp(100, 599) - 100);
        self.by_status[idx]
            .get_or_init(|| {
                self.requests
                    .with_label_values(&[self.route.as_str(), &status.to_string()])
            })
            .inc();
    }

    /// Counts an upstream failure.
    pub fn upstream_error(&self, kind: &str) {
        self.metrics
            .upstream_errors
            .with_label_values(&[self.route.as_str(), kind])
            .inc();
    }

    /// Counts a request the sidecar answered itself.
    pub fn rejected(&self, kind: &str) {
        self.metrics
            .rejected
            .with_label_values(&[self.route.as_str(), kind])
            .inc();
    }

    /// Counts a request streamed through without a replay copy: the replay budget was in use.
    pub fn retry_body_budget_exceeded(&self) {
        self.metrics
            .retry_body_budget_exceeded
            .with_label_values(&[self.route.as_str()])
            .inc();
    }

    /// Counts how a retry after a 401 went.
    pub fn unauthorized_retry(&self, result: &str) {
        self.metrics
            .unauthorized_retries
            .with_label_values(&[self.route.as_str(), result])
            .inc();
    }
}
