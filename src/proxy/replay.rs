//! The replay after a 401: a small request body is kept (read first, within the process's
//! replay budget) so that the request can be sent again with a newer token.
//!
//! A replayable request keeps a copy of its body until the upstream's answer arrives. With a
//! slow upstream, many concurrent uploads would each hold theirs: one budget, shared by every
//! route, caps the total. A request whose body does not fit streams through without a copy and
//! is not replayed, as a body over `--retry-body-limit` already is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus::IntGauge;

use super::{clone_head, Forward, Route};
use crate::body::Body;
use crate::error::ErrorKind;

/// Bytes that may be held for replays at once, all routes together.
#[derive(Debug)]
pub struct ReplayBudget {
    limit: u64,
    held: AtomicU64,
    gauge: IntGauge,
}

/// Bytes held from a [`ReplayBudget`]; given back when dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<ReplayBudget>,
    bytes: u64,
}

impl ReplayBudget {
    /// A budget of `limit` bytes, reported in `gauge`.
    pub fn new(limit: u64, gauge: IntGauge) -> Arc<Self> {
        Arc::new(ReplayBudget {
            limit,
            held: AtomicU64::new(0),
            gauge,
        })
    }

    /// Takes `bytes` from the budget, or `None` when they do not fit.
    pub fn take(self: &Arc<Self>, bytes: u64) -> Option<Held> {
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            let next = held.checked_add(bytes).filter(|n| *n <= self.limit)?;
            match self
                .held
                .compare_exchange_weak(held, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => held = now,
            }
        }
        self.gauge.add(bytes as i64);
        Some(Held {
            budget: Arc::clone(self),
            bytes,
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.gauge.sub(self.bytes as i64);
    }
}

/// What a replay after a 401 sends again.
pub(super) struct Replay {
    pub(super) head: http::request::Parts,
    pub(super) body: bytes::Bytes,
    /// Given back to the replay budget when the replay is sent or no longer needed.
    pub(super) _held: Option<Held>,
}

impl Route {
    /// Room in the replay budget for a body that a replay may need: one of known, small
    /// length (one of unknown length may be a stream the client feeds slowly, and holding it
    /// would stall the request). `None`: it streams through and is not replayed.
    pub(super) fn hold_for_replay(&self, body: &Incoming) -> Option<Held> {
        let len = http_body::Body::size_hint(body)
            .exact()
            .filter(|len| *len <= self.retry_body_limit)?;
        let held = self.replay_budget.take(len);
        if held.is_none() {
            self.metrics.retry_body_budget_exceeded();
        }
        held
    }

    /// A request with a body that may be replayed after a 401: keeps a copy of a small body,
    /// then goes on like any other request.
    pub(super) async fn buffer_then_exchange(
        self: Arc<Self>,
        fwd: Box<(Forward, HeaderValue, Held)>,
        body: Incoming,
    ) -> Response<Body> {
        let (mut fwd, token_header, held) = *fwd;
        match crate::body::buffer_for_replay(body, self.retry_body_limit).await {
            Ok((body, kept)) => {
                if let Some(bytes) = kept {
                    let out = &fwd.out;
                    let head = clone_head(out.method(), out.uri(), out.version(), out.headers());
                    fwd.replay = Some(Box::new(Replay {
                        head,
                        body: bytes,
                        _held: Some(held),
                    }));
                }
                fwd.out
                    .headers_mut()
                    .insert(self.header_name.clone(), token_header);
                *fwd.out.body_mut() = body;
                self.exchange(fwd).await
            }
            Err(e) => {
                tracing::debug!(route = %self.name, error = %e, "reading the request body failed");
                self.reject(ErrorKind::BadRequest, "The request body could not be read.")
            }
        }
    }

    /// After a 401 to a request sent with token `version`: obtains a newer token (single-flight)
    /// and sends the request once more. `None` means no newer token: answer the first 401.
    pub(super) async fn replay_after_401(
        &self,
        version: u64,
        head: http::request::Parts,
        body: bytes::Bytes,
    ) -> Option<Response<Body>> {
        self.profile.on_unauthorized(version).await?;
        let header = match self.store.load().as_ref() {
            Some(t) if t.version() > version && t.is_valid_at(Instant::now()) => {
                t.header(self.header_index).clone()
            }
            _ => return None,
        };
        let mut req = Request::from_parts(head, Body::full(body));
        req.headers_mut().insert(self.header_name.clone(), header);
        let resp = match self.send(req, false).await {
            Ok(r) => r,
            Err(r) => return Some(r),
        };
        let result = if resp.status() == StatusCode::UNAUTHORIZED {
            "still_unauthorized"
        } else {
            "success"
        };
        self.metrics.unauthorized_retry(result);
        Some(self.response(resp, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_the_limit_and_gives_back_on_drop() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let b = ReplayBudget::new(100, gauge.clone());
        let a = b.take(60).unwrap();
        assert!(b.take(41).is_none());
        let c = b.take(40).unwrap();
        assert_eq!((b.held(), gauge.get()), (100, 100));
        drop(a);
        assert_eq!((b.held(), gauge.get()), (40, 40));
        drop(c);
        assert_eq!((b.held(), gauge.get()), (0, 0));
        assert!(b.take(u64::MAX).is_none());
        let none = ReplayBudget::new(0, IntGauge::new("h", "h").unwrap());
        assert!(none.take(1).is_none());
    }
}
