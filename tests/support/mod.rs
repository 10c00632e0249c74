//! Shared test support: the sidecar binary as a subprocess, a recording fake upstream, HTTP
//! clients (pooled, h2c and raw bytes), TLS material and small helpers.
//!
//! Every test binary uses a different subset of this module.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod h2raw;
pub mod load;
pub mod metrics;
pub mod oidc;
pub mod procfs;
pub mod rc;
pub mod redis;
pub mod redis_topology;
pub mod scripted;
pub mod sidecar;
pub mod tls;
pub mod trust;
pub mod trust_tokens;
pub mod upstream;

use std::future::Future;
use std::time::{Duration, Instant};

pub use client::{raw_request, Client, RawResponse, Resp};
pub use sidecar::{Sidecar, SidecarBuilder};
pub use upstream::{Recorded, Upstream};

/// A token value that must never show up anywhere but in the upstream's `Authorization`.
pub const MARKER: &str = "tok-MARKER-7f3a9c1e5b";

/// How long a test waits for something that should happen promptly.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `cond` every 10 ms until it holds; panics with `what` after `deadline`.
pub async fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`wait_until`] with an async condition.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// FNV-1a, 64-bit: a content hash that does not depend on how the bytes were split.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> u64 {
        let mut h = Fnv::default();
        h.update(bytes);
        h.0
    }
}

/// Deterministic pseudo-random bytes: the `index`-th chunk of `len` bytes of a stream seeded
/// with `seed` (xorshift), so uploads and downloads are not trivially compressible or uniform.
pub fn pattern(seed: u64, index: u64, len: usize) -> Vec<u8> {
    let mut x = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Parses a JSON body.
pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        )
    })
}

/// Asserts that `resp` is the sidecar's own answer of `kind` with `status`: the
/// `x-token-sidecar-error` header and a JSON body `{"error", "message"}`.
pub fn assert_sidecar_error(
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
    want_status: u16,
    kind: &str,
) {
    assert_eq!(
        status,
        want_status,
        "status for {kind}; body {:?}",
        String::from_utf8_lossy(body)
    );
    assert_eq!(
        headers
            .get("x-token-sidecar-error")
            .and_then(|v| v.to_str().ok()),
        Some(kind),
        "x-token-sidecar-error header; headers {headers:?}"
    );
    let v = json(body);
    assert_eq!(v["error"], kind, "error field of {v}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "message field of {v}");
    assert_eq!(
        v.as_object().map(|o| o.len()),
        Some(2),
        "exactly error and message in {v}"
    );
    assert!(!String::from_utf8_lossy(body).contains(MARKER));
}
