//! Aggregation: the [`Strategy`] trait (Flower's shape: `configure_fit` says
//! what participants add to local training, `aggregate_fit` turns the round's
//! mean update into new global parameters), its implementations (FedAvg,
//! FedAvgM, FedProx, SCAFFOLD, FedAdam, FedYogi, FedAdagrad), and the streaming
//! [`UpdateAccumulator`] behind them.
//!
//! Key design decision: updates are summed in exact fixed-point arithmetic
//! ([`ExactSum`]), so the sum does not depend on the order in which updates
//! arrive. Simulation with many threads, deployment over a real network and a
//! run resumed after a crash therefore produce the same bits. Memory stays
//! flat as participants grow: one accumulator per round, whatever the cohort.
//!
//! This crate never does I/O and never sees raw data.
#![deny(missing_docs)]

mod accumulate;
mod config;
mod error;
mod exact;
mod robust;
mod strategies;

pub use accumulate::{RoundAggregate, UpdateAccumulator};
pub use config::{StrategyConfig, StrategyKind};
pub use error::AggregateError;
pub use exact::ExactSum;
pub use robust::{RobustConfig, RobustRule};
pub use strategies::{FedAvg, FedAvgM, FedOpt, FedOptVariant, FedProx, Scaffold};

use std::sync::Arc;

use tessera_core::{ParameterSet, Update};

/// What a strategy asks every participant to add to local training in a round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FitInstructions {
    /// FedProx: weight of the proximal term `mu/2 ||w - w_global||²`.
    pub proximal_mu: Option<f32>,
    /// SCAFFOLD: the server control variate `c`.
    pub server_control: Option<Arc<ParameterSet>>,
}

/// How a federated algorithm combines updates, in Flower's shape. A strategy
/// does no I/O: it says what participants receive and computes new global
/// parameters from the round's aggregate.
pub trait Strategy: Send {
    /// Short name (`fedavg`, ...).
    fn name(&self) -> &'static str;

    /// What participants add to local training this round.
    fn configure_fit(&self, global: &ParameterSet) -> FitInstructions;

    /// Weight of an update in the round's average (default: its example count).
    fn weight(&self, update: &Update) -> f64 {
        update.n_examples as f64
    }

    /// Whether updates must carry control-variate changes (SCAFFOLD).
    fn needs_control_deltas(&self) -> bool {
        false
    }

    /// New global parameters from the current ones and the round's aggregate.
    /// On error (including non-finite results) the strategy's own state
    /// (momentum, moments, control variates) must be left as it was.
    fn aggregate_fit(
        &mut self,
        global: &ParameterSet,
        round: &RoundAggregate,
    ) -> Result<ParameterSet, AggregateError>;
}
