//! When a request finds no idle upstream connection: open another one, or wait for one to
//! come back.
//!
//! HTTP/1.1 carries one request per connection at a time, so a route needs about its request
//! rate times the upstream's latency in connections, and a request that finds none idle
//! usually should open one. Not when the sidecar's own threads are the bottleneck (a fast,
//! nearby upstream and many app connections): then more connections add work without adding
//! throughput, since each one is state (a task, buffers, a channel, a socket) that has to come
//! back into the CPU caches for each of its requests. So up to a floor a pool opens freely;
//! beyond it, only while the runtime has time to spare, and at most doubling per window (as
//! TCP's slow start does), so that a burst of requests cannot open hundreds of connections
//! before the load is known. Requests that may not open one wait for one to come back.
//!
//! "Time to spare" is the runtime's own account of the time its workers spent running tasks
//! ([`tokio::runtime::RuntimeMetrics::worker_total_busy_duration`]). Latencies would not do:
//! when this process is saturated, every latency it can measure grows with the load, and an
//! API whose endpoints answer in 50 ms and in 2 s would look congested to a latency gradient.
//!
//! Waiting is only worth it while connections come back soon. The runtime's load is the whole
//! process's: another route's traffic, or long downloads on this one, can saturate it while
//! this pool's connections are held for seconds, and then a request would wait that long
//! for one. So a saturated runtime holds a pool back only while its connections turn over
//! fast, held for less than [`SLOW_HOLD`] on average (by Little's law, the connections busy
//! times the window's length over the connections that came back in it). Nor while requests
//! queue for [`SLOW_WAIT`] or longer for connections held a while (an upstream that answers in
//! 50 ms next to another route that saturates the runtime): with a fixed number of connections
//! such a pool carries a fixed request rate, and more demand only makes the queue longer.
//! Connections that turn over in under [`BUSY_HOLD`] are the mark of a runtime that is itself
//! the bottleneck, where a long queue comes from the load and more connections would not
//! shorten it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::runtime::RuntimeMetrics;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How often the load is measured, and the pace of growth beyond the floor.
pub const WINDOW: Duration = Duration::from_millis(10);

/// The share of the workers' time spent running tasks above which the runtime counts as
/// saturated. The rest of a saturated worker's time goes to polling the I/O driver.
const SATURATED: f64 = 0.85;
/// Once saturated, the share below which it no longer is (a measurement over 10 ms is noisy).
const UNSATURATED: f64 = 0.7;
/// Below this share the pool may double in a window; between it and saturation it grows by an
/// eighth, so that the pool does not overshoot near the point where the runtime saturates.
const IDLE: f64 = 0.5;

/// How long a pool's connections may be held per request on average for its requests to
/// wait for one while the runtime is saturated. Beyond, they wait on the upstream (or on long
/// bodies), not on this process: the pool grows as if the runtime had time to spare, by an
/// eighth per window. A fast upstream next to a saturated sidecar turns its connections over
/// in a few milliseconds.
pub const SLOW_HOLD: Duration = Duration::from_millis(100);

/// How long a request may wait for a connection to come back while the runtime is saturated,
/// if the pool's connections are held for [`BUSY_HOLD`] or longer per request: beyond it the
/// pool grows as for [`SLOW_HOLD`].
pub const SLOW_WAIT: Duration = Duration::from_millis(100);

/// Connections held for less than this per request on average turn over at the pace of a
/// saturated runtime (64 connections at 6,400 requests a second or more): requests that wait
/// long for one wait on this process, and more connections would not help them.
pub const BUSY_HOLD: Duration = Duration::from_millis(10);

/// Connections a pool may always open, whatever the load (at most its cap). As many as an app
/// sending 64 requests at once needs, so that such an app never waits for a connection.
pub const FLOOR: usize = 64;

/// Decides whether a pool may open another connection.
pub struct Growth {
    floor: usize,
    runtime: Option<RuntimeMetrics>,
    window: Mutex<Window>,
    /// Wakes the requests that were told to wait when the pool may grow again.
    room: Notify,
    /// One waiting request keeps the window's clock while the others sleep.
    ticking: AtomicBool,
    /// Wakes one of the others when the request keeping the clock stops waiting before the
    /// pool may grow (a connection came back to it, or its app went away): it keeps the
    /// clock instead, or the others would sleep until a connection comes back to each.
    vacated: Notify,
    /// Connections that came back since the window started.
    returned: AtomicUsize,
    /// The longest a request waited for a connection that came back to it since the window
    /// started, in microseconds.
    waited: AtomicU64,
}

struct Window {
    started: Instant,
    busy_at_start: Duration,
    saturated: bool,
    /// Whether requests would wait long for a connection to come back, as seen in the last
    /// window: the pool's connections were held for [`SLOW_HOLD`] or longer on average, or
    /// for [`BUSY_HOLD`] or longer while a request waited [`SLOW_WAIT`] or longer for one.
    slow: bool,
    /// Connections that may still be opened in this window beyond the floor.
    budget: usize,
    /// Connections that may still be closed in this window to shrink the pool.
    shrink: usize,
}

impl std::fmt::Debug for Growth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Growth")
            .field("floor", &self.floor)
            .finish_non_exhaustive()
    }
}

impl Growth {
    /// A gate that lets `floor` connections open freely. Outside a tokio runtime there is no
    /// load to measure and every request may open a connection.
    pub fn new(floor: usize) -> Self {
        let runtime = tokio::runtime::Handle::try_current()
            .ok()
            .map(|h| h.metrics());
        let mut growth = Growth {
            floor,
            runtime,
            window: Mutex::new(Window {
                started: Instant::now(),
                busy_at_start: Duration::ZERO,
                saturated: false,
                slow: false,
                budget: floor,
                shrink: 0,
            }),
            room: Notify::new(),
            ticking: AtomicBool::new(false),
            vacated: Notify::new(),
            returned: AtomicUsize::new(0),
            waited: AtomicU64::new(0),
        };
        let busy = growth.busy();
        if let Ok(w) = growth.window.get_mut() {
            w.busy_at_start = busy;
        }
        growth
    }

    /// Whether a request may open a connection now, `open` being open already. Counts it
    /// against this window's budget when it may.
    pub fn may_open(&self, open: usize) -> bool {
        if open < self.floor || self.runtime.is_none() {
            return true;
        }
        let Ok(mut w) = self.window.lock() else {
            return true;
        };
        self.refresh(&mut w, open, Instant::now());
        if !w.may_grow() {
            return false;
        }
        w.budget -= 1;
        true
    }

    /// Counts a connection that came back (or closed) after a request.
    #[inline]
    pub fn returned(&self) {
        self.returned.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts how long a request waited for the connection that came back to it.
    pub fn waited(&self, waited: Duration) {
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.waited.fetch_max(micros, Ordering::Relaxed);
    }

    /// The longest wait counted by [`Growth::waited`] in this window.
    #[cfg(test)]
    pub(super) fn longest_wait(&self) -> Duration {
        Duration::from_micros(self.waited.load(Ordering::Relaxed))
    }

    /// Whether a connection that came back, `open` being open, should be closed rather than
    /// handed to a waiting request: when the runtime is saturated while requests wait for
    /// connections that turn over fast, the pool is too large to help, and gives back up to a
    /// sixteenth of its connections per window.
    pub fn should_shrink(&self, open: usize) -> bool {
        if open <= self.floor || self.runtime.is_none() {
            return false;
        }
        let Ok(mut w) = self.window.lock() else {
            return false;
        };
        self.refresh(&mut w, open, Instant::now());
        if w.shrink == 0 {
            return false;
        }
        w.shrink -= 1;
        true
    }

    /// Resolves when the pool may have room to grow: the caller asks [`Growth::may_open`]
    /// again. One caller at a time keeps the window's clock; the others wait for its news, and
    /// one of them takes the clock over when its keeper stops waiting first.
    pub async fn room(&self, open: impl Fn() -> usize) {
        let news = self.room.notified();
        tokio::pin!(news);
        news.as_mut().enable();
        loop {
            if let Some(ticking) = Ticking::take(self) {
                return self.tick(ticking, &open, news.as_mut()).await;
            }
            let vacated = self.vacated.notified();
            tokio::pin!(vacated);
            vacated.as_mut().enable();
            // Given back before this request was ready to hear of it: take it now.
            if !self.ticking.load(Ordering::SeqCst) {
                continue;
            }
            tokio::select! {
                biased;
                () = news.as_mut() => return,
                () = vacated => {}
            }
        }
    }

    /// Keeps the window's clock until the pool may grow, then wakes the other waiting
    /// requests; or until [`Growth::wake`] tells every waiting request to look again.
    async fn tick(
        &self,
        ticking: Ticking<'_>,
        open: &impl Fn() -> usize,
        mut news: Pin<&mut Notified<'_>>,
    ) {
        loop {
            // The window's own end, not a fresh WINDOW from now: the clock changes hands
            // each time its keeper gets a connection that came back, which may be more often
            // than once a window, and a fresh sleep per keeper would never end.
            let end = self
                .window
                .lock()
                .map_or_else(|_| Instant::now() + WINDOW, |w| w.started + WINDOW);
            tokio::select! {
                biased;
                () = news.as_mut() => return,
                () = tokio::time::sleep_until(end) => {}
            }
            let open = open();
            let grow = open < self.floor
                || self.window.lock().is_ok_and(|mut w| {
                    self.refresh(&mut w, open, Instant::now());
                    w.may_grow()
                });
            if grow {
                return ticking.grown();
            }
        }
    }

    /// Wakes every request waiting for room, the one keeping the clock too, to look for a
    /// connection again: one that is not counted here can carry them (a new shared HTTP/2
    /// connection carries every request).
    pub fn wake(&self) {
        self.room.notify_waiters();
    }

    /// Starts a new window once the current one is over: measures how busy the runtime was
    /// in it, and lets the pool double.
    fn refresh(&self, w: &mut Window, open: usize, now: Instant) {
        let elapsed = now.saturating_duration_since(w.started);
        if elapsed < WINDOW {
            return;
        }
        let busy = self.busy();
        let workers = self.runtime.as_ref().map_or(1, |r| r.num_workers().max(1));
        let ratio = busy.saturating_sub(w.busy_at_start).as_secs_f64()
            / (elapsed.as_secs_f64() * workers as f64);
        let returned = self.returned.swap(0, Ordering::Relaxed);
        let waited = Duration::from_micros(self.waited.swap(0, Ordering::Relaxed));
        // (Timers fire late on a saturated runtime: a window of a few times its length is
        // still a measurement.)
        if elapsed >= WINDOW * 10 {
            // Nothing asked for a while (an idle pool): the load now is unknown. Start over
            // as a new pool would, from the floor.
            w.saturated = false;
            w.slow = false;
            w.budget = self.floor;
        } else {
            w.saturated = ratio >= if w.saturated { UNSATURATED } else { SATURATED };
            // Held per request: the connections open (all busy while requests wait) times
            // the window's length, over the requests they carried in it.
            let held = open as f64 * elapsed.as_secs_f64();
            let held_at_least = |d: Duration| held >= returned as f64 * d.as_secs_f64();
            w.slow = held_at_least(SLOW_HOLD) || (waited >= SLOW_WAIT && held_at_least(BUSY_HOLD));
            w.budget = if ratio < IDLE {
                open.max(self.floor)
            } else {
                (open / 8).max(1)
            };
        }
        w.shrink = if w.saturated && !w.slow {
            (open / 16).max(1)
        } else {
            0
        };
        w.started = now;
        w.busy_at_start = busy;
        tracing::trace!(
            busy = ratio,
            saturated = w.saturated,
            slow = w.slow,
            waited_ms = waited.as_millis(),
            open,
            "upstream pool window"
        );
    }

    /// The time the runtime's workers have spent running tasks, in total.
    fn busy(&self) -> Duration {
        self.runtime.as_ref().map_or(Duration::ZERO, |r| {
            (0..r.num_workers())
                .map(|i| r.worker_total_busy_duration(i))
                .sum()
        })
    }
}

impl Window {
    /// Whether the pool may open another connection in this window: the runtime has time to
    /// spare, or the pool's connections are held so long that waiting for one would cost
    /// more than opening one.
    fn may_grow(&self) -> bool {
        (!self.saturated || self.slow) && self.budget > 0
    }
}

/// The right to keep the window's clock, given back when dropped (also when the request
/// holding it goes away, or stops waiting because a connection came back to it).
struct Ticking<'a> {
    growth: &'a Growth,
    grown: bool,
}

impl<'a> Ticking<'a> {
    fn take(growth: &'a Growth) -> Option<Self> {
        if growth.ticking.swap(true, Ordering::SeqCst) {
            return None;
        }
        Some(Ticking {
            growth,
            grown: false,
        })
    }

    /// Gives the clock back and wakes the waiting requests: the pool may grow.
    fn grown(mut self) {
        self.grown = true;
    }
}

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        // Given back first: a request that failed to take the clock before this point had
        // already enabled its wake-ups, and is woken now.
        self.growth.ticking.store(false, Ordering::SeqCst);
        if self.grown {
            self.growth.room.notify_waiters();
        } else {
            // Still no room: one of the others keeps the clock from now on.
            self.growth.vacated.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_runtime_every_request_may_open() {
        let g = Growth::new(2);
        assert!((0..100).all(|open| g.may_open(open)));
    }

    /// Ends the current window as if the runtime had been idle through it.
    fn end_idle_window(g: &Growth) {
        let mut w = g.window.lock().unwrap();
        w.started = Instant::now() - WINDOW;
        w.busy_at_start = g.busy();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn up_to_the_floor_always_then_at_most_doubling_per_window() {
        let g = Growth::new(4);
        // Below the floor: always.
        assert!((0..4).all(|open| g.may_open(open)));
        // The first window's budget is the floor: 4 more, then no more in this window.
        assert!((4..8).all(|open| g.may_open(open)));
        assert!(!g.may_open(8));
        // After an idle window, the budget is what is open: the pool may double.
        end_idle_window(&g);
        assert!((8..16).all(|open| g.may_open(open)));
        assert!(!g.may_open(16));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_runtime_stops_growth_until_it_has_time_again() {
        let g = Growth::new(2);
        assert!(g.may_open(2));
        // Keep this worker running tasks for a few windows: saturated.
        saturate(WINDOW * 3).await;
        // Connections that turn over fast: a request waits only briefly for one.
        (0..1000).for_each(|_| g.returned());
        assert!(!g.may_open(3), "saturated");
        assert!(!g.may_open(3), "still saturated within the window");
        // Once it has had idle windows again, the pool may grow.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !g.may_open(3) {
            assert!(
                std::time::Instant::now() < deadline,
                "no growth after idle windows"
            );
            tokio::time::sleep(WINDOW).await;
        }
    }

    /// Keeps this (current-thread) runtime's worker running a task for `d`.
    async fn saturate(d: Duration) {
        let end = std::time::Instant::now() + d;
        while std::time::Instant::now() < end {}
        // The runtime accounts for busy time when its worker yields to the I/O driver.
        tokio::task::yield_now().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_runtime_shrinks_a_pool_whose_connections_turn_over_fast() {
        let g = Growth::new(2);
        saturate(WINDOW * 3).await;
        // 64 connections that carried 1,000 requests in 30 to 100 ms: each held for 6.4 ms or
        // less. Requests wait long for them, but on this process: more would not help.
        (0..1000).for_each(|_| g.returned());
        g.waited(Duration::from_secs(1));
        assert!(!g.may_open(64), "saturated, connections come back often");
        // A sixteenth of the pool per window.
        assert!((0..4).all(|_| g.should_shrink(64)));
        assert!(!g.should_shrink(64));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_runtime_still_grows_a_pool_whose_connections_are_held_long() {
        let g = Growth::new(2);
        saturate(WINDOW * 3).await;
        // 64 connections that carried 10 requests in 30 ms or more: each held for 190 ms or
        // more (a slow upstream, or long downloads). Waiting for one would take that long.
        (0..10).for_each(|_| g.returned());
        assert!(!g.should_shrink(64), "held long: not too many");
        // Grows by an eighth in a window, as near saturation.
        assert!((0..8).all(|_| g.may_open(64)));
        assert!(!g.may_open(64));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_runtime_grows_a_pool_whose_requests_queue_long_for_connections_held_a_while() {
        // 64 connections that carried 64 requests in 30 to 100 ms: each held for 30 to 100 ms
        // (an upstream that answers in 50 ms, while another route saturates the runtime).
        let held_a_while = || async {
            let g = Growth::new(2);
            saturate(WINDOW * 3).await;
            (0..64).for_each(|_| g.returned());
            g
        };
        // Requests do not wait long: the pool keeps its size.
        let g = held_a_while().await;
        g.waited(SLOW_WAIT / 2);
        assert!(!g.may_open(64), "a short queue");
        // They do: the pool grows by an eighth per window, and does not shrink.
        let g = held_a_while().await;
        g.waited(SLOW_WAIT);
        assert!(!g.should_shrink(64), "a long queue: not too many");
        assert!((0..8).all(|_| g.may_open(64)));
        assert!(!g.may_open(64));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_request_is_told_when_the_pool_may_grow() {
        let g = std::sync::Arc::new(Growth::new(1));
        // Use up the first window's budget.
        assert!(g.may_open(1));
        assert!(!g.may_open(2));
        // Two requests wait: one keeps the clock, the other is woken by it.
        let a = tokio::spawn({
            let g = g.clone();
            async move { g.room(|| 2).await }
        });
        let b = tokio::spawn({
            let g = g.clone();
            async move { g.room(|| 2).await }
        });
        tokio::time::timeout(Duration::from_secs(10), async {
            a.await.unwrap();
            b.await.unwrap();
        })
        .await
        .expect("both waiting requests were woken");
        assert!(g.may_open(2));
    }

    /// A growth gate whose window's budget is used up: requests must wait for room.
    fn used_up() -> std::sync::Arc<Growth> {
        let g = std::sync::Arc::new(Growth::new(1));
        while g.may_open(2) {}
        g
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_that_cannot_take_the_clock_leaves_it_to_its_keeper() {
        use futures_util::FutureExt as _;
        let g = used_up();
        let mut a = Box::pin(g.room(|| 2));
        assert!(a.as_mut().now_or_never().is_none());
        assert!(
            g.ticking.load(Ordering::SeqCst),
            "the first request keeps the clock"
        );
        let mut b = Box::pin(g.room(|| 2));
        assert!(b.as_mut().now_or_never().is_none());
        assert!(
            g.ticking.load(Ordering::SeqCst),
            "the clock is still kept after a second request found it taken"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn when_the_request_keeping_the_clock_goes_away_another_waiting_one_keeps_it() {
        use futures_util::FutureExt as _;
        let g = used_up();
        let mut a = Box::pin(g.room(|| 2));
        assert!(a.as_mut().now_or_never().is_none());
        let mut b = Box::pin(g.room(|| 2));
        assert!(b.as_mut().now_or_never().is_none());
        // The request keeping the clock got a connection that came back, or its app went
        // away: the other one must still learn when the pool may grow.
        drop(a);
        tokio::time::timeout(Duration::from_secs(10), b)
            .await
            .expect("the waiting request was told when the pool may grow");
        assert!(g.may_open(2));
    }

    /// Connections come back every 5 ms, each to the oldest waiting request, the one keeping
    /// the clock: the others must still hear, within a few windows, that the pool may grow.
    #[tokio::test(flavor = "current_thread")]
    async fn waiting_requests_hear_of_room_while_the_clock_changes_hands_often() {
        use futures_util::FutureExt as _;
        fn two() -> usize {
            2
        }
        let g = used_up();
        let mut waiting: std::collections::VecDeque<_> =
            (0..40).map(|_| Box::pin(g.room(two))).collect();
        for w in &mut waiting {
            assert!(w.as_mut().now_or_never().is_none());
        }
        // The oldest waits longest: it keeps the clock, and the next oldest takes it over.
        assert!(g.ticking.load(Ordering::SeqCst));
        let mut told = false;
        while !waiting.is_empty() && !told {
            tokio::time::sleep(Duration::from_millis(5)).await;
            told = waiting
                .iter_mut()
                .any(|w| w.as_mut().now_or_never().is_some());
            // The keeper got a connection that came back; the next one keeps the clock.
            drop(waiting.pop_front());
            told |= waiting
                .iter_mut()
                .any(|w| w.as_mut().now_or_never().is_some());
        }
        assert!(
            told,
            "200 ms with room to grow, and no waiting request was told"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn wake_tells_every_waiting_request_to_look_again_at_once() {
        use futures_util::FutureExt as _;
        let g = used_up();
        let mut a = Box::pin(g.room(|| 2));
        assert!(a.as_mut().now_or_never().is_none());
        let mut b = Box::pin(g.room(|| 2));
        assert!(b.as_mut().now_or_never().is_none());
        g.wake();
        // Not a window later: polled once, both are done.
        assert!(
            a.as_mut().now_or_never().is_some(),
            "the one keeping the clock"
        );
        assert!(b.as_mut().now_or_never().is_some(), "the other one");
        assert!(
            !g.ticking.load(Ordering::SeqCst),
            "the clock was given back"
        );
    }
}
