//! token-sidecar: a small, fast sidecar that owns an API token so that the applications next
//! to it never have to.
//!
//! The app sends plain requests to the sidecar on loopback; the sidecar adds the token from a
//! lock-free store, forwards to the real API over TLS and streams the answer back, while
//! background tasks keep the token fresh.
//!
//! The binary is a thin layer over [`cli::main`]; tests start [`app::start`] or the binary on
//! port 0.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod body;
pub mod cli;
pub mod config;
#[cfg(feature = "dev")]
pub mod demo;
pub mod error;
pub mod exit;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod token;
