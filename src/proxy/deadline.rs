//! The upstream timeout of one request, as a future polled in place.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

pin_project! {
    /// Resolves to `Some(output)` of `inner`, or `None` once `timeout` has passed. With a
    /// `body_sent` receiver, the time starts only when the request body has been sent.
    pub struct Deadline<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        body_sent: Option<oneshot::Receiver<()>>,
        timeout: Duration,
    }
}

impl<F: Future> Deadline<F> {
    /// Bounds `inner` by `timeout`.
    pub fn new(inner: F, timeout: Duration, body_sent: Option<oneshot::Receiver<()>>) -> Self {
        Deadline {
            inner,
            // Registered with the timer on its first poll only.
            sleep: tokio::time::sleep(timeout),
            body_sent,
            timeout,
        }
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(Some(out));
        }
        if let Some(sent) = this.body_sent.as_mut() {
            // Sent, failed or dropped: either way the upload is over.
            if Pin::new(sent).poll(cx).is_pending() {
                return Poll::Pending;
            }
            *this.body_sent = None;
            this.sleep.as_mut().reset(Instant::now() + *this.timeout);
        }
        this.sleep.poll(cx).map(|()| None)
    }
}
