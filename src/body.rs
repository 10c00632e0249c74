//! The one body type of every response the sidecar sends, and of every request it forwards.
//!
//! An enum rather than a boxed trait object: the common cases (a streamed [`Incoming`] body,
//! the sidecar's own small JSON answers) cost no allocation.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::{Arc, Weak};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

/// A request or response body.
#[derive(Debug)]
pub enum Body {
    /// No body.
    Empty,
    /// A body held in memory (the sidecar's own answers, a buffered replayable request).
    Full(Option<Bytes>),
    /// A body streamed from the peer.
    Incoming(Incoming),
    /// Frames already read from a peer, followed by the rest of the stream.
    Prefixed(VecDeque<Frame<Bytes>>, Incoming),
    /// A response body streamed from a pooled upstream connection.
    Pooled(PooledBody),
    /// A streamed body that says when it has been read to the end (or failed, or was dropped).
    Watched(Box<Body>, Option<tokio::sync::oneshot::Sender<()>>),
}

impl Body {
    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(bytes))
        }
    }
}

impl Body {
    /// Whether the whole body is already in memory (nothing left to stream from a peer).
    pub fn is_in_memory(&self) -> bool {
        matches!(self, Body::Empty | Body::Full(_))
    }

    /// Wraps a streamed body so that the returned receiver completes once it has been read to
    /// its end (or has failed, or was dropped).
    pub fn watched(self) -> (Body, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Body::Watched(Box::new(self), Some(tx)), rx)
    }
}

impl From<Incoming> for Body {
    fn from(b: Incoming) -> Self {
        Body::Incoming(b)
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(b) => Pin::new(b).poll_frame(cx),
            Body::Pooled(b) => Pin::new(b).poll_frame(cx),
            Body::Prefixed(chunks, rest) => match chunks.pop_front() {
                Some(f) => Poll::Ready(Some(Ok(f))),
                None => Pin::new(rest).poll_frame(cx),
            },
            Body::Watched(inner, done) => {
                let polled = Pin::new(inner.as_mut()).poll_frame(cx);
                if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    if let Some(tx) = done.take() {
                        let _ = tx.send(());
                    }
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Incoming(b) => b.is_end_stream(),
            Body::Pooled(b) => b.is_end_stream(),
            Body::Prefixed(c, rest) => c.is_empty() && rest.is_end_stream(),
            Body::Watched(inner, _) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(b) => b.size_hint(),
            Body::Pooled(b) => b.size_hint(),
            Body::Prefixed(c, rest) => {
                let buffered: u64 = c
                    .iter()
                    .filter_map(Frame::data_ref)
                    .map(|b| b.len() as u64)
                    .sum();
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + buffered);
                if let Some(u) = r.upper() {
                    h.set_upper(u + buffered);
                }
                h
            }
            Body::Watched(inner, _) => inner.size_hint(),
        }
    }
}

/// Reads `body` up to `limit` bytes so that the request can be sent again. Returns the body to
/// send now and, when the whole body fit, a copy for a replay.
///
/// The body is copied into one buffer of its announced length as it arrives, each frame
/// dropped at once: a replayable request holds its length in memory, not twice that (the
/// frames hyper hands over can pin larger read buffers of the connection).
pub async fn buffer_for_replay(
    mut body: Incoming,
    limit: u64,
) -> Result<(Body, Option<Bytes>), hyper::Error> {
    use http_body_util::BodyExt;
    if body.is_end_stream() {
        return Ok((Body::Empty, Some(Bytes::new())));
    }
    // Only a body of known, small length is held back: one of unknown length may be a stream
    // the client feeds slowly, and holding it would stall the request.
    let len = match body.size_hint().exact() {
        Some(len) if len <= limit => len,
        _ => return Ok((Body::Incoming(body), None)),
    };
    let mut buf = bytes::BytesMut::with_capacity(len as usize);
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if (buf.len() + data.len()) as u64 <= limit => {
                    buf.extend_from_slice(&data);
                }
                // Trailers cannot be replayed from a plain buffer; neither can an oversize
                // body: what was read goes first, the rest streams behind it.
                Ok(data) => return Ok((prefixed(buf, Frame::data(data), body), None)),
                Err(trailers) => return Ok((prefixed(buf, trailers, body), None)),
            },
        }
    }
    let bytes = buf.freeze();
    Ok((Body::full(bytes.clone()), Some(bytes)))
}

/// What was read (when anything was), the frame that stopped the reading, then the rest.
fn prefixed(read: bytes::BytesMut, next: Frame<Bytes>, rest: Incoming) -> Body {
    let mut frames = VecDeque::with_capacity(2);
    if !read.is_empty() {
        frames.push_back(Frame::data(read.freeze()));
    }
    frames.push_back(next);
    Body::Prefixed(frames, rest)
}

/// Where an upstream connection goes once the exchange it carried is over (the upstream pool).
pub trait Checkin: Send + Sync {
    /// The exchange is over: `tx` is the connection when its response was read to the end and
    /// it can carry another request, `None` when it closes.
    fn give_back(self: Arc<Self>, tx: Option<SendRequest<Body>>);
}

/// An HTTP/1.1 response body that gives its connection back to the pool once it has been
/// read to its end. A body dropped before its end closes the connection instead: the rest of
/// the response would still be on the wire.
pub struct PooledBody {
    body: Incoming,
    tx: Option<SendRequest<Body>>,
    pool: Weak<dyn Checkin>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("body", &self.body)
            .finish()
    }
}

impl PooledBody {
    /// The response `body` of an exchange on connection `tx`, which goes back to `pool`.
    pub fn new(body: Incoming, tx: SendRequest<Body>, pool: Weak<dyn Checkin>) -> Self {
        PooledBody {
            body,
            tx: Some(tx),
            pool,
        }
    }

    /// The response has been read to its end: the connection goes back to the pool.
    fn release(&mut self) {
        if let (Some(tx), Some(pool)) = (self.tx.take(), self.pool.upgrade()) {
            pool.give_back(Some(tx));
        }
    }

    /// The response failed or was abandoned: the connection closes (the rest of the response
    /// would still be on the wire), and the exchange is over all the same.
    fn discard(&mut self) {
        if self.tx.take().is_some() {
            if let Some(pool) = self.pool.upgrade() {
                pool.give_back(None);
            }
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Err(_))) => self.discard(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A server may stop polling a body of known length once it says it is at its end,
        // and never polls an empty one.
        if self.tx.is_some() && self.body.is_end_stream() {
            self.release();
        } else {
            self.discard();
        }
    }
}
