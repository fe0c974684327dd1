use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time, in microseconds since the start of a run.
///
/// The round engine never reads a clock: its drivers pass `Timestamp`s in. The
/// simulator passes virtual time, deployment passes wall time since start.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The start of a run.
    pub const ZERO: Timestamp = Timestamp(0);

    /// A timestamp `seconds` after the start (negative and non-finite inputs clamp to zero).
    pub fn from_secs_f64(seconds: f64) -> Self {
        if seconds.is_finite() && seconds > 0.0 {
            Timestamp((seconds * 1e6).round() as u64)
        } else {
            Timestamp::ZERO
        }
    }

    /// Seconds since the start.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }

    /// This timestamp moved later by `duration` (saturating).
    pub fn plus(self, duration: Duration) -> Self {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(micros))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

/// `seconds` as a duration, saturating: negative and NaN give zero, values
/// beyond what a `Duration` holds give `Duration::MAX`. Never panics.
pub fn duration_from_secs(seconds: f64) -> Duration {
    if seconds.is_nan() || seconds <= 0.0 {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_and_clamp() {
        assert_eq!(Timestamp::from_secs_f64(1.5).0, 1_500_000);
        assert_eq!(Timestamp::from_secs_f64(-3.0), Timestamp::ZERO);
        assert_eq!(Timestamp::from_secs_f64(f64::NAN), Timestamp::ZERO);
        let t = Timestamp::from_secs_f64(2.0).plus(Duration::from_millis(250));
        assert_eq!(t.as_secs_f64(), 2.25);
        assert_eq!(t.since(Timestamp::from_secs_f64(3.0)), Duration::ZERO);
        assert_eq!(duration_from_secs(1e300), Duration::MAX);
        assert_eq!(duration_from_secs(f64::NAN), Duration::ZERO);
        assert_eq!(
            Timestamp(u64::MAX - 1).plus(Duration::MAX),
            Timestamp(u64::MAX)
        );
    }
}
