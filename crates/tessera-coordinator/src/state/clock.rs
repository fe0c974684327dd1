//! Time as the federation sees it: a [`Clock`] (the system's, or one a test
//! moves by hand) and the budget of audited refusals per second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::bucket::TokenBucket;

/// Where the federation reads the time: microseconds since the Unix epoch.
/// Every decision that depends on time (liveness, deadlines, evaluation
/// waits) reads it here, so tests can run a federation on virtual time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Microseconds since the Unix epoch.
    fn unix_micros(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_micros(&self) -> u64 {
        unix_micros()
    }
}

/// A clock that moves only when told (tests on virtual time); clones share
/// the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock standing at the system's time now.
    pub fn starting_now() -> Self {
        Self(Arc::new(AtomicU64::new(unix_micros())))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let micros = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        self.0.fetch_add(micros, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn unix_micros(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub(super) fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Refused calls audited one by one per second, beyond which they are only
/// counted (and the count written with the next row).
pub const REFUSALS_PER_SECOND: u32 = 50;

/// A token bucket for audited refusals, with the count of those it
/// turned away.
#[derive(Debug)]
pub(super) struct RefusalBudget {
    state: std::sync::Mutex<(TokenBucket, u64)>,
}

impl Default for RefusalBudget {
    fn default() -> Self {
        let rate = f64::from(REFUSALS_PER_SECOND);
        Self {
            state: std::sync::Mutex::new((TokenBucket::full(rate, rate, Instant::now()), 0)),
        }
    }
}

impl RefusalBudget {
    /// Whether one more refusal may be written; if not, it is counted.
    pub(super) fn admit(&self) -> bool {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (bucket, suppressed) = &mut *state;
        let admitted = bucket.take(Instant::now());
        if !admitted {
            *suppressed += 1;
        }
        admitted
    }

    /// Refusals counted but not written since the last call.
    pub(super) fn take_suppressed(&self) -> u64 {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut state.1)
    }
}
