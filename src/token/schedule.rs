//! When to refresh and how long to back off: pure arithmetic, property-tested.

use std::time::Duration;

/// The smallest default margin.
pub const MIN_DEFAULT_MARGIN: Duration = Duration::from_secs(60);

/// The refresh margin: the configured one, or max(60 s, 10 % of the lifetime); never more
/// than half the lifetime, so that short-lived tokens are still used for a while.
pub fn margin(lifetime: Duration, configured: Option<Duration>) -> Duration {
    let m = configured.unwrap_or_else(|| MIN_DEFAULT_MARGIN.max(lifetime / 10));
    m.min(lifetime / 2)
}

/// How long after obtaining a token to refresh it. `jitter` in `[0, 1)` moves the refresh
/// up to 10 % of the lifetime earlier (never later), so that replicas spread out.
pub fn refresh_delay(
    lifetime: Duration,
    configured_margin: Option<Duration>,
    jitter: f64,
) -> Duration {
    let m = margin(lifetime, configured_margin);
    let base = lifetime.saturating_sub(m);
    let spread = (lifetime / 10).min(base / 2);
    base.saturating_sub(spread.mul_f64(jitter.clamp(0.0, 1.0)))
}

/// Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
/// Jitter"): a uniform delay in `[floor, min(cap, base * 2^attempt)]`. `jitter` in `[0, 1)`.
pub fn backoff(
    attempt: u32,
    base: Duration,
    cap: Duration,
    floor: Duration,
    jitter: f64,
) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX));
    let ceiling = exp.min(cap).max(floor);
    floor + (ceiling - floor).mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        let h = Duration::from_secs(3600);
        assert_eq!(margin(h, None), Duration::from_secs(360));
        assert_eq!(
            margin(Duration::from_secs(300), None),
            Duration::from_secs(60)
        );
        assert_eq!(
            margin(Duration::from_secs(30), None),
            Duration::from_secs(15)
        );
        assert_eq!(refresh_delay(h, None, 0.0), Duration::from_secs(3240));
        assert_eq!(
            refresh_delay(h, Some(Duration::from_secs(60)), 0.0),
            Duration::from_secs(3540)
        );
    }

    proptest! {
        #[test]
        fn refresh_happens_before_expiry(lifetime in 1u64..=30 * 86400, m in proptest::option::of(0u64..=86400), j in 0.0f64..1.0) {
            let lifetime = Duration::from_secs(lifetime);
            let d = refresh_delay(lifetime, m.map(Duration::from_secs), j);
            // Before expiry minus the margin, and not before a third of the lifetime.
            prop_assert!(d <= lifetime - margin(lifetime, m.map(Duration::from_secs)));
            prop_assert!(d >= lifetime / 3, "{d:?} for {lifetime:?}");
        }

        #[test]
        fn jitter_only_moves_earlier(lifetime in 2u64..=86400, j in 0.0f64..1.0) {
            let lifetime = Duration::from_secs(lifetime);
            prop_assert!(refresh_delay(lifetime, None, j) <= refresh_delay(lifetime, None, 0.0));
        }

        #[test]
        fn backoff_is_bounded(attempt in 0u32..200, j in 0.0f64..1.0) {
            let base = Duration::from_secs(1);
            let cap = Duration::from_secs(120);
            let floor = Duration::from_millis(250);
            let d = backoff(attempt, base, cap, floor, j);
            prop_assert!(d >= floor && d <= cap);
            let ceiling = backoff(attempt, base, cap, floor, 1.0);
            prop_assert!(d <= ceiling);
            // The ceiling never shrinks as attempts grow.
            prop_assert!(backoff(attempt + 1, base, cap, floor, 1.0) >= ceiling);
        }
    }
}
