//! The memory budget of request bodies kept for a replay after a 401.
//!
//! A replayable request keeps a copy of its body until the upstream's answer arrives. With a
//! slow upstream, many concurrent uploads would each hold theirs: one budget, shared by every
//! route, caps the total. A request whose body does not fit streams through without a copy and
//! is not replayed, as a body over `--retry-body-limit` already is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::IntGauge;

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
