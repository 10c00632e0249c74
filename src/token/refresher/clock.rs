//! The refresher's clock: tokio's monotonic clock for its timers, and the wall clock for token
//! lifetimes. In tests tokio's clock is paused and advanced by hand; [`Clock::following_tokio`]
//! then makes the wall clock move with it, so a whole refresh cycle runs in microseconds.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Where the refresher reads the time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// With `Some((wall, at))`, the wall clock is `wall` plus the time tokio's clock has moved
    /// since `at`.
    anchor: Option<(SystemTime, Instant)>,
}

impl Clock {
    /// The system's clocks.
    pub const fn system() -> Self {
        Clock { anchor: None }
    }

    /// A wall clock that moves with tokio's clock (paused in tests), starting now.
    pub fn following_tokio() -> Self {
        Clock {
            anchor: Some((SystemTime::now(), Instant::now())),
        }
    }

    /// Now, on tokio's monotonic clock.
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// Now, on the wall clock.
    pub fn wall(&self) -> SystemTime {
        match self.anchor {
            None => SystemTime::now(),
            Some((wall, at)) => wall + Instant::now().saturating_duration_since(at),
        }
    }

    /// The wall-clock time `d` from now.
    pub fn wall_in(&self, d: Duration) -> SystemTime {
        self.wall() + d
    }
}
