use thiserror::Error;

/// Why an update or a round could not be aggregated.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AggregateError {
    /// The update does not fit the model.
    #[error("update rejected: {0}")]
    Layout(#[from] tessera_core::CoreError),
    /// A value is too large for the exact accumulator.
    #[error(
        "update rejected: weighted value {value:e} is beyond the aggregation range (|x| < 2^48)"
    )]
    OutOfRange {
        /// The offending weighted value.
        value: f64,
    },
    /// A count left its range (the updates' example counts past 2^64).
    #[error("aggregate overflow: the updates' example counts pass 2^64")]
    Overflow,
    /// A weight is negative or not finite.
    #[error("update rejected: weight {0} is not a finite non-negative number")]
    BadWeight(f64),
    /// An update is unusable: it lacks the auxiliary sum the strategy needs
    /// (or carries one it did not ask for), reports no examples or a
    /// non-finite loss.
    #[error("update rejected: {0}")]
    Rejected(String),
    /// The round has nothing to aggregate.
    #[error("no updates to aggregate")]
    Empty,
    /// A strategy setting is out of range.
    #[error("strategy config: {0}")]
    Config(String),
}
