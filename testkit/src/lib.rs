//! Test doubles of RingCentral's platform, used by token-sidecar's tests and by the
//! `token-sidecar dev` demo (built only with the `dev` feature). They are not part of the
//! product: the shipped binary does not contain them.
//!
//! - [`token_server`]: the OAuth2 token endpoint (`/restapi/oauth/token`, `/restapi/oauth/revoke`)
//!   with RingCentral's grants, error bodies, refresh-token rotation and grace window, session
//!   cap and "Auth" rate limit, plus fault injection and a record of every request.
//! - [`api`]: an API upstream that accepts exactly the access tokens the token server holds
//!   valid, answers RingCentral's 401 bodies otherwise, and echoes what it received.
//!
//! Both listen on loopback on a port chosen by the system, and stop when dropped.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod token_server;
