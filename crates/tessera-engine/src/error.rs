use thiserror::Error;

use crate::PlanError;

/// Errors of the round engine and the participant's side of a round.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The plan is unusable.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A round cannot start or close as asked.
    #[error("{0}")]
    State(String),
    /// Too few participants to start a round.
    #[error("round {round} needs at least {needed} participants, {available} available")]
    NotEnoughParticipants {
        /// The round that could not start.
        round: u32,
        /// Participants required.
        needed: usize,
        /// Participants registered.
        available: usize,
    },
    /// Aggregation failed (the round is closed as failed).
    #[error(transparent)]
    Aggregate(#[from] tessera_aggregate::AggregateError),
    /// Local training or evaluation failed.
    #[error(transparent)]
    Learn(#[from] tessera_learn::LearnError),
    /// Differential privacy refused the work (a budget would be exceeded).
    #[error(transparent)]
    Privacy(#[from] tessera_privacy::PrivacyError),
    /// Parameter layouts disagree.
    #[error(transparent)]
    Core(#[from] tessera_core::CoreError),
    /// An external learner failed or returned something unusable.
    #[error("external learner: {0}")]
    External(#[from] crate::ExternalError),
}
