//! Why a secure-aggregation step failed, and how its messages write numbers.

use thiserror::Error;

/// Why a secure-aggregation step failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SecAggError {
    /// The settings cannot work.
    #[error("secure aggregation: {0}")]
    Config(String),
    /// A message is malformed or does not fit the round.
    #[error("secure aggregation: bad message from {from}: {reason}")]
    BadMessage {
        /// The sender.
        from: u32,
        /// What was wrong.
        reason: String,
    },
    /// Too many participants dropped to recover the sum.
    #[error("secure aggregation: cannot recover the sum: {0}")]
    TooManyDropouts(String),
    /// The server asked for both secrets of one participant.
    #[error("secure aggregation: refusing to unmask: {0}")]
    Refused(String),
}

/// `x` for a message: scientific when tiny or huge (this crate stands
/// alone; `tessera_core::value` does the same elsewhere).
pub(crate) fn short<T>(x: T) -> String
where
    T: Copy + Into<f64> + std::fmt::Display + std::fmt::LowerExp,
{
    let wide: f64 = x.into();
    if wide != 0.0 && wide.is_finite() && !(1e-4..1e15).contains(&wide.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}
