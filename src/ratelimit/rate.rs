//! Rates of the form `N/DURATION`: at most N events in **any** window of length DURATION.
//!
//! A sliding-window log, not a token bucket: a bucket holding N that refills while a burst
//! drains lets up to 2N−1 events through in one window, and an upstream that counts a sliding
//! window (RingCentral's Auth group: 5 token requests a minute) answers the excess with a 429
//! and a penalty. The log keeps the time of the last N events, so memory is bounded by N.
//!
//! [`SlidingWindow`] is the local count; the shared count across replicas is the same rule
//! kept in Redis ([`SHARED_WINDOW_SCRIPT`]).

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The most events a rate may allow per window (bounds the memory of a window's log).
pub const MAX_EVENTS: u32 = 100_000;

/// The longest window: a year, as the longest duration any setting accepts.
pub const MAX_WINDOW: Duration = Duration::from_secs(365 * 24 * 3600);

/// At most `max` events in any window of `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events allowed per window (at least 1).
    pub max: u32,
    /// The window (at least 1 ms, at most 365 days).
    pub window: Duration,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.max,
            humantime::format_duration(self.window)
        )
    }
}

/// Why a rate did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// Not `N/DURATION`.
    #[error("not N/DURATION (e.g. 5/60s)")]
    Shape,
    /// N is not a whole number from 1 to [`MAX_EVENTS`].
    #[error("the count must be a whole number from 1 to {MAX_EVENTS}")]
    Count,
    /// The duration does not parse or is out of range.
    #[error("the window must be a duration from 1ms to 365 days (e.g. 60s, 1m)")]
    Window,
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Self, RateError> {
        let (n, d) = s.trim().split_once('/').ok_or(RateError::Shape)?;
        let max: u32 = n.trim().parse().map_err(|_| RateError::Count)?;
        if max == 0 || max > MAX_EVENTS {
            return Err(RateError::Count);
        }
        let window = humantime::parse_duration(d.trim()).map_err(|_| RateError::Window)?;
        if window < Duration::from_millis(1) || window > MAX_WINDOW {
            return Err(RateError::Window);
        }
        Ok(Rate { max, window })
    }
}

/// The local count of a [`Rate`]: the times of the last `max` events.
#[derive(Debug)]
pub struct SlidingWindow {
    rate: Rate,
    events: VecDeque<Instant>,
}

impl SlidingWindow {
    /// An empty window.
    pub fn new(rate: Rate) -> Self {
        SlidingWindow {
            rate,
            events: VecDeque::with_capacity(rate.max.min(64) as usize),
        }
    }

    /// The rate counted.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Counts an event at `now` if the rate allows one, else returns how long until it does.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        let wait = self.wait(now);
        if wait.is_zero() {
            self.events.push_back(now);
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// Counts an event that happened at `now` whether the rate allowed it or not (a request
    /// that went out before its group was known). The log keeps at most `max` events: the
    /// oldest goes first.
    pub fn record(&mut self, now: Instant) {
        self.wait(now);
        if self.events.len() >= self.rate.max as usize {
            self.events.pop_front();
        }
        self.events.push_back(now);
    }

    /// How long from `now` until an event is allowed (zero: now).
    pub fn wait(&mut self, now: Instant) -> Duration {
        // An event at `t` counts for windows that contain it: until `t + window`.
        while let Some(first) = self.events.front() {
            if *first + self.rate.window <= now {
                self.events.pop_front();
            } else {
                break;
            }
        }
        if self.events.len() < self.rate.max as usize {
            return Duration::ZERO;
        }
        self.events
            .front()
            .map_or(Duration::ZERO, |first| (*first + self.rate.window) - now)
    }
}

/// The sliding-window log of a rate in Redis, by Redis's clock (one clock for every replica).
/// KEYS[1] the sorted set; ARGV[1] the window (ms), ARGV[2] the count allowed, ARGV[3] a unique
/// member. Returns 0 when the event was counted, else the milliseconds until it would be.
/// Entries dated in the future (a clock gone back, or written by someone else) are dropped;
/// the key expires with its window, so memory is bounded by the rate's count.
pub const SHARED_WINDOW_SCRIPT: &str = r"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'zset' then redis.call('DEL', KEYS[1]) end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - window)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. ms, '+inf')
local n = redis.call('ZCARD', KEYS[1])
if n < max then
  redis.call('ZADD', KEYS[1], ms, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
if n > max then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - max - 1) end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = tonumber(oldest[2]) + window - ms
if wait < 1 then wait = 1 end
return wait
";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            "5/60s".parse::<Rate>(),
            Ok(Rate {
                max: 5,
                window: Duration::from_secs(60)
            })
        );
        assert_eq!(
            " 10 / 1m ".parse::<Rate>().map(|r| r.window),
            Ok(Duration::from_secs(60))
        );
        for (bad, why) in [
            ("5", RateError::Shape),
            ("0/60s", RateError::Count),
            ("x/60s", RateError::Count),
            ("-1/60s", RateError::Count),
            ("5/0s", RateError::Window),
            ("5/soon", RateError::Window),
            ("5/400days", RateError::Window),
            ("100001/1s", RateError::Count),
        ] {
            assert_eq!(bad.parse::<Rate>(), Err(why), "{bad}");
        }
        assert_eq!("5/60s".parse::<Rate>().unwrap().to_string(), "5/1m");
    }

    #[test]
    fn a_full_window_says_when_the_oldest_event_leaves() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new("2/10s".parse().unwrap());
        assert!(w.try_acquire(t0).is_ok());
        assert!(w.try_acquire(t0 + Duration::from_secs(3)).is_ok());
        assert_eq!(
            w.try_acquire(t0 + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        assert!(w.try_acquire(t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(
            w.try_acquire(t0 + Duration::from_secs(11)),
            Err(Duration::from_secs(2))
        );
    }

    proptest! {
        /// Whatever the arrival times, no window of the rate's length ever holds more than
        /// `max` granted events, and a refusal's wait is exactly when one would be granted.
        #[test]
        fn never_more_than_max_in_any_window(
            max in 1u32..8,
            window_ms in 1u64..5_000,
            gaps in proptest::collection::vec(0u64..3_000, 1..200),
        ) {
            let rate = Rate { max, window: Duration::from_millis(window_ms) };
            let t0 = Instant::now();
            let mut w = SlidingWindow::new(rate);
            let mut now = t0;
            let mut granted = Vec::new();
            for g in gaps {
                now += Duration::from_millis(g);
                match w.try_acquire(now) {
                    Ok(()) => granted.push(now),
                    Err(wait) => {
                        prop_assert!(!wait.is_zero());
                        let mut probe = SlidingWindow { rate, events: w.events.clone() };
                        prop_assert!(probe.try_acquire(now + wait).is_ok());
                    }
                }
            }
            for (i, start) in granted.iter().enumerate() {
                let inside = granted[i..]
                    .iter()
                    .take_while(|t| **t < *start + rate.window)
                    .count();
                prop_assert!(inside <= max as usize, "{inside} events in one window");
            }
        }
    }
}
