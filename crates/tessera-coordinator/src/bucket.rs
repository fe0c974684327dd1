//! A token bucket: `rate` tokens a second, at most `burst` held.

use std::time::Instant;

/// Tokens refilled at a rate up to a burst; a call takes one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub(crate) fn full(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
            rate,
            burst,
        }
    }

    /// The tokens held at `now`.
    pub(crate) fn level(&self, now: Instant) -> f64 {
        (self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * self.rate)
            .min(self.burst)
    }

    /// Whether the bucket is full at `now` (it remembers nothing).
    pub(crate) fn is_full(&self, now: Instant) -> bool {
        self.level(now) >= self.burst
    }

    /// Takes a token at `now` if one is held; whether it was.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let level = self.level(now);
        self.last = now;
        let taken = level >= 1.0;
        self.tokens = if taken { level - 1.0 } else { level };
        taken
    }

    /// Takes a token at `now` whether or not one is held (none left then).
    pub(crate) fn spend(&mut self, now: Instant) {
        self.tokens = (self.level(now) - 1.0).max(0.0);
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(10.0, 3.0, t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        // A tenth of a second gives one token back, never more than the burst.
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        assert!(b.is_full(t0 + Duration::from_secs(10)));
        b.spend(t0 + Duration::from_secs(10));
        assert!((b.level(t0 + Duration::from_secs(10)) - 2.0).abs() < 1e-9);
    }
}
