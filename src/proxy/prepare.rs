//! Everything before the upstream is involved, in order: the header block's size, the target,
//! who asks (host and browser), the protocol switch, the rate limits, the token, the headers, a
//! body kept for a replay. Synchronous: the future a request leaves behind holds only what goes upstream.

use std::net::IpAddr;
use std::time::Instant;

use http::header::HeaderValue;
use http::{Request, Version};
use hyper::body::Incoming;

use super::replay::Replay;
use super::rewrite::{self, check_target, header_list_size, prepare_request_headers};
use super::{clone_head, origin, Forward, Route, Step};
use crate::body::Body;
use crate::error::{token_unavailable, ErrorKind};
use crate::ratelimit::limits::Pass;
use crate::ratelimit::rules::Shape;
use crate::ratelimit::Admit;

impl Route {
    /// Everything before the upstream is involved: limits, target, who asks, token, headers.
    pub(super) fn prepare(
        &self,
        mut req: Request<Incoming>,
        now: Instant,
        local: IpAddr,
        pass: Pass,
    ) -> Step {
        if header_list_size(req.headers()) > self.max_request_header_bytes {
            return Step::Answer(self.reject(
                ErrorKind::HeaderTooLarge,
                "The request headers are larger than this sidecar accepts.",
            ));
        }
        let target = match check_target(req.method(), req.version(), req.uri(), &self.upstream) {
            Ok(t) => t,
            Err(e) => return Step::Answer(self.reject(ErrorKind::BadRequest, &e.to_string())),
        };
        // HTTP/2 names its host in `:authority`; an HTTP/1 absolute-form target's authority
        // was checked above (and `Host` is then ignored, RFC 9112 3.2.2).
        let host = || {
            req.headers()
                .get(http::header::HOST)
                .map(HeaderValue::as_bytes)
        };
        let authority = if req.version() == Version::HTTP_2 {
            req.uri()
                .authority()
                .map(|a| a.as_str().as_bytes())
                .or_else(host)
        } else if req.uri().authority().is_some() {
            None
        } else {
            host()
        };
        if let Err(refused) = origin::check(authority, req.headers(), local, &self.allowed) {
            let kind = match refused {
                origin::Refused::Host => ErrorKind::BadRequest,
                origin::Refused::CrossSite => ErrorKind::Forbidden,
            };
            return Step::Answer(self.reject(kind, &refused.to_string()));
        }
        let upgrade = match rewrite::upgrade_of(req.method(), req.version(), req.headers()) {
            Ok(u) => u == rewrite::Upgrade::WebSocket,
            Err(e) => return Step::Answer(self.reject(ErrorKind::BadRequest, &e.to_string())),
        };
        // Rate limits before the token: a request that waits takes the token current when it
        // goes.
        let shape = match &self.limits {
            None => Shape::default(),
            Some(limits) => match limits.admit(req.method(), req.uri().path(), now, pass) {
                Admit::Go(shape) => shape,
                Admit::Refuse { group, retry_after } => {
                    return Step::Answer(self.rate_limited(&group, retry_after))
                }
                Admit::Later(later) => return Step::Later(Box::new((req, *later))),
            },
        };
        let (token_header, version) = match self.store.load().as_ref() {
            Some(t) if t.is_valid_at(now) => (t.header(self.header_index).clone(), t.version()),
            _ => {
                self.metrics.rejected(ErrorKind::TokenUnavailable.as_str());
                return Step::Answer(token_unavailable(self.store.retry_after()));
            }
        };
        let uri = match self.upstream.path(target) {
            Ok(pq) => http::Uri::from(pq),
            Err(e) => return Step::Answer(self.reject(ErrorKind::BadRequest, &e.to_string())),
        };
        let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        // The pool speaks HTTP/2 instead when ALPN negotiates it.
        parts.version = Version::HTTP_11;
        parts.extensions = http::Extensions::new();
        prepare_request_headers(&mut parts.headers, upgrade);

        // Keep what a replay after a 401 needs: the request head and a small body.
        let replayable = self.refresh_on_401 && !upgrade;
        let replay = if replayable && http_body::Body::is_end_stream(&body) {
            let head = clone_head(&parts.method, &parts.uri, parts.version, &parts.headers);
            Some(Box::new(Replay {
                head,
                body: bytes::Bytes::new(),
                _held: None,
            }))
        } else if let Some(held) = replayable.then(|| self.hold_for_replay(&body)).flatten() {
            // The body must be read first; the token header goes on once it has been.
            let fwd = Forward {
                out: Request::from_parts(parts, Body::Empty),
                version,
                upgrade,
                on_upgrade,
                replay: None,
                shape,
            };
            return Step::BufferFirst(Box::new((fwd, token_header, held)), body);
        } else {
            None
        };
        parts.headers.insert(self.header_name.clone(), token_header);
        let body = if http_body::Body::is_end_stream(&body) {
            Body::Empty
        } else {
            Body::Incoming(body)
        };
        Step::Forward(Forward {
            out: Request::from_parts(parts, body),
            version,
            upgrade,
            on_upgrade,
            replay,
            shape,
        })
    }
}
