//! Requests that wait for a rate limit: until a block ends (`--rate-limit-mode hold`), for
//! room in a rate, or for a place in a rate shared in Redis. Boxed off the common path: only
//! such requests pay for it. After the wait the request is prepared again (checks, the token
//! current then, the headers) and goes on as any other.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;

use super::{Route, Step};
use crate::body::Body;
use crate::error::ErrorKind;
use crate::ratelimit::limits::{Later, Wait};
use crate::ratelimit::Admit;

impl Route {
    /// Waits as `later` says, decides again, and forwards or answers.
    pub(super) async fn later(
        self: Arc<Self>,
        (mut req, mut later): (Request<Incoming>, Later),
        local: IpAddr,
    ) -> Response<Body> {
        let Some(limits) = self.limits.clone() else {
            return self.internal_error();
        };
        loop {
            // Held by a block: the place at the gate, kept until the upstream has answered.
            let mut _released = None;
            let pass = match later.wait {
                Wait::Until(at) => {
                    tokio::time::sleep_until(at.into()).await;
                    later.pass
                }
                Wait::Block(at) => {
                    tokio::time::sleep_until(at.into()).await;
                    let deadline = later.pass.deadline().unwrap_or(at).max(at);
                    let gate = limits.released().acquire();
                    match tokio::time::timeout_at(deadline.into(), gate).await {
                        Ok(Ok(permit)) => _released = Some(permit),
                        // The wait is over: the group may be free, but this request's time is up.
                        _ => return self.rate_limited(&later.group, Duration::from_secs(1)),
                    }
                    later.pass
                }
                Wait::Shared(rule) => {
                    match limits
                        .take_shared(rule, later.pass, later.group.clone())
                        .await
                    {
                        Admit::Later(next) if matches!(next.wait, Wait::Until(at) if at <= Instant::now()) => {
                            next.pass
                        }
                        Admit::Later(next) => {
                            later = *next;
                            continue;
                        }
                        Admit::Refuse { group, retry_after } => {
                            return self.rate_limited(&group, retry_after)
                        }
                        Admit::Go(_) => later.pass,
                    }
                }
            };
            match self.prepare(req, Instant::now(), local, pass) {
                Step::Answer(resp) => return resp,
                Step::Forward(fwd) => return self.exchange(fwd).await,
                Step::BufferFirst(fwd, body) => {
                    return self.clone().buffer_then_exchange(fwd, body).await
                }
                Step::Later(next) => {
                    (req, later) = *next;
                }
            }
        }
    }

    /// The sidecar's `429` for a request of a blocked or paced group.
    pub(super) fn rate_limited(&self, group: &str, retry_after: Duration) -> Response<Body> {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        let mut resp = self.reject(
            ErrorKind::RateLimited,
            &format!(
                "Requests of the rate-limit group `{group}` are held back; retry after {}s.",
                secs.max(1)
            ),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        resp
    }
}
