//! Rate limits: the upstream's, learned from its answers and respected by every replica
//! together, and the sidecar's own pacing of configured rates (the token endpoint's budget is
//! one of them: RingCentral's Auth group).
//!
//! - [`rate`]: `N/DURATION` and its sliding-window count ([`SlidingWindow`]), kept in Redis by
//!   [`SHARED_WINDOW_SCRIPT`] when replicas share it;
//! - [`rules`]: which group a request is in (`[[route.limit]]` patterns, or the group the
//!   upstream named for the same method and path shape);
//! - [`limits`]: one route's blocks and rates, decided on the request path;
//! - [`shared`]: blocks and rates kept in Redis for every replica, blocks pushed by pub/sub;
//! - [`retry_after`]: `Retry-After` in its three date formats and in seconds.

pub mod limits;
pub mod rate;
pub mod retry_after;
pub mod rules;
pub mod shared;

pub use limits::{Admit, RouteLimits};
pub use rate::{Rate, RateError, SlidingWindow, MAX_EVENTS, MAX_WINDOW};
pub use retry_after::parse_retry_after;

pub use rate::SHARED_WINDOW_SCRIPT;
