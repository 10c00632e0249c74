//! Test doubles of RingCentral's platform, used by token-sidecar's tests and by the
//! `token-sidecar dev` demo (built only with the `dev` feature). They are not part of the
//! product: the shipped binary does not contain them.
//!
//! - [`token_server`]: the OAuth2 token endpoint (`/restapi/oauth/token`, `/restapi/oauth/revoke`)
//!   with RingCentral's grants, error bodies, refresh-token rotation and grace window, session
//!   cap and "Auth" rate limit, plus fault injection and a record of every request.
//! - [`api`]: an API upstream that accepts exactly the access tokens the token server holds
//!   valid, answers RingCentral's 401 bodies otherwise, and echoes what it received; it sends
//!   RingCentral's `X-Rate-Limit-*` headers and, when started with limits, enforces RingCentral's
//!   per-group limits (429 `CMN-301`, `Retry-After`, a penalty each request restarts).
//!
//! Both listen on loopback on a port chosen by the system, and stop when dropped.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod token_server;
