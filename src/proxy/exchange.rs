//! The exchange with the upstream: send within the timeout, a 401 answered by a replay with a
//! newer token (or a background refresh), a WebSocket tunnel, the upstream's failures turned
//! into the sidecar's own answers.

use std::future::Future;

use futures_util::FutureExt as _;
use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::pool::SendError;
use super::replay::Replay;
use super::{deadline, rewrite, Forward, Route};
use crate::body::Body;
use crate::error::{ErrorChain, ErrorKind, UpstreamFailure};

impl Route {
    /// Sends the prepared request and turns the upstream's answer into the app's response.
    pub(super) async fn exchange(&self, fwd: Forward) -> Response<Body> {
        let mut resp = match self.send(fwd.out, fwd.upgrade).await {
            Ok(r) => r,
            Err(r) => return r,
        };
        if let Some(limits) = &self.limits {
            limits.observe(fwd.shape, resp.status(), resp.headers());
        }

        if resp.status() == StatusCode::UNAUTHORIZED && self.refresh_on_401 {
            let version = fwd.version;
            match fwd.replay.map(|r| *r) {
                Some(Replay { head, body, _held }) => {
                    // Boxed: a rare path, kept out of every request's future.
                    let replay = Box::pin(self.replay_after_401(version, head, body));
                    if let Some(r) = replay.await {
                        return r;
                    }
                    self.metrics.unauthorized_retry("still_unauthorized");
                }
                None => {
                    // Too large (or an upgrade) to replay: answer the 401 now and refresh in
                    // the background so that the app's own retry succeeds.
                    self.metrics.unauthorized_retry("not_replayable");
                    let profile = self.profile.clone();
                    self.tasks.spawn(async move {
                        profile.on_unauthorized(version).await;
                    });
                }
            }
        }

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching && !(fwd.upgrade && rewrite::switches_to_websocket(resp.headers())) {
            // A switch nobody asked for, or to another protocol than WebSocket: no tunnel.
            self.metrics.upstream_error("protocol");
            tracing::warn!(route = %self.name, "the upstream switched protocols without a WebSocket handshake to answer; refused");
            return self.reject(
                ErrorKind::UpstreamError,
                "The upstream switched to a protocol the sidecar does not tunnel.",
            );
        }
        if let (true, Some(on_upgrade)) = (switching, fwd.on_upgrade) {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let route = self.name.clone();
            // A tunnel is in flight like a request: shutdown waits for it, within the grace.
            self.tasks.spawn(async move {
                match tokio::try_join!(on_upgrade, upstream_upgrade) {
                    Ok((app, up)) => {
                        let mut app = TokioIo::new(app);
                        let mut up = TokioIo::new(up);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut app, &mut up).await {
                            tracing::debug!(route = %route, error = %e, "upgraded connection ended");
                        }
                    }
                    Err(e) => {
                        tracing::debug!(route = %route, error = %e, "protocol upgrade failed")
                    }
                }
            });
        }
        self.response(resp, switching && fwd.upgrade)
    }

    pub(super) fn response(&self, mut resp: Response<Body>, upgraded: bool) -> Response<Body> {
        rewrite::strip_hop_by_hop(resp.headers_mut(), upgraded);
        resp
    }

    /// Sends one request upstream within the timeout; failures become the sidecar's answer.
    // Both variants are responses of the same size: the error is the sidecar's own answer.
    #[allow(clippy::result_large_err)]
    pub(super) fn send(
        &self,
        req: Request<Body>,
        upgrade: bool,
    ) -> impl Future<Output = Result<Response<Body>, Response<Body>>> + Send + '_ {
        // The upstream's time to answer starts once the app's body has been sent: a slow
        // upload is not an upstream timeout.
        let (req, body_sent) =
            if http_body::Body::is_end_stream(req.body()) || req.body().is_in_memory() {
                (req, None)
            } else {
                let (parts, body) = req.into_parts();
                let (body, sent) = body.watched();
                (Request::from_parts(parts, body), Some(sent))
            };
        // Combinators rather than an async block: the pool's future is polled where it is,
        // never moved into a second slot.
        deadline::Deadline::new(self.pool.send(req, upgrade), self.upstream_timeout, body_sent)
            .map(move |result| match result {
                Some(Ok(resp)) => Ok(resp),
                Some(Err(e)) => Err(self.upstream_failure(&e)),
                None => {
                    self.metrics.upstream_error("timeout");
                    tracing::warn!(route = %self.name, timeout = ?self.upstream_timeout, "upstream did not answer in time");
                    Err(self.reject(
                        ErrorKind::UpstreamTimeout,
                        "The upstream did not answer in time.",
                    ))
                }
            })
    }

    fn upstream_failure(&self, err: &SendError) -> Response<Body> {
        let failure = UpstreamFailure::classify(err, err.is_connect());
        match failure.metric_label() {
            None => {
                tracing::debug!(route = %self.name, error = %ErrorChain(err), "the app's request body failed");
            }
            Some(label) => {
                self.metrics.upstream_error(label);
                tracing::warn!(
                    route = %self.name,
                    kind = label,
                    error = %ErrorChain(err),
                    "upstream request failed"
                );
            }
        }
        self.reject(failure.kind(), failure.message())
    }
}
