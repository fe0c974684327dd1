//! Aggregation: the strategy pair and the streaming [`UpdateAccumulator`]
//! behind it. A strategy has a server part, [`Strategy`] (Flower's shape:
//! `configure_fit` gives each participant its [`Instructions`],
//! `aggregate_fit` turns the round's aggregate, with the round's
//! [`Attendance`] in hand, into new global parameters; `configure_evaluate`
//! and `aggregate_evaluate` do the same for the evaluation that follows),
//! and a local part, [`LocalAlgorithm`] (what the site adds to its training
//! and the state it keeps). Built in: FedAvg, FedAvgM, FedProx, SCAFFOLD,
//! FedAdam, FedYogi, FedAdagrad; [`StrategyConfig`] builds both parts.
//!
//! Key design decision: updates are summed in exact fixed-point arithmetic
//! ([`ExactSum`]), so the sum does not depend on the order in which updates
//! arrive. Simulation with many threads, deployment over a real network and a
//! run resumed after a crash therefore produce the same bits. Memory stays
//! flat as participants grow: one accumulator per round, whatever the cohort.
//!
//! This crate never does I/O and never sees raw data.
//!
//! `Attendance` gives `aggregate_fit` the round's cohort, who counted, and
//! why each other member's update is missing (dropped, timed out, refused;
//! unrecorded on a replay). `aggregate_evaluate` works on each site's
//! `EvaluationSums`, named sums rather than the learner's `Evaluation`, which
//! this crate sits below; `pool_evaluations` is the default and the pooling
//! of every report. A `LocalAlgorithm` adds a `GradientTerm` to training,
//! keeps its state between rounds, and may make its update carry an
//! auxiliary sum, named by `Strategy::aux_sum`. `methods` is the registry
//! (kinds, settings, and the `Needs` the plan's validation checks); each
//! strategy is one server file and, if it acts at the sites, one local file
//! in `methods/`. Robust rules (`RobustConfig`, `Robust`) other than the mean
//! need every update at once, so their memory grows with the cohort; the
//! plan refuses them with secure aggregation and with central DP.
//!
//! `ExactSum` is 128-bit fixed point with a resolution of 2^-56 for terms
//! below 2^48 in magnitude: any arrival order, thread count or merge of
//! partial sums gives the same bits (tests check thread-count and
//! arrival-order independence). Every 2^23 terms (about 4 million updates:
//! each adds two terms to the totals) its sums move into 256-bit ones, so a
//! round takes any number of updates. It costs 16 bytes per parameter (48
//! once a round passes 2^23 terms), so a coordinator aggregating a 1 GB
//! model needs about 5 GB.
//! `UpdateAccumulator` validates each update and streams it into an
//! `ExactSum`; a rejected update leaves the accumulator unchanged. A batch of
//! updates (`add_many`: the simulator's window of arrivals, through the
//! engine's `submit_many`) is folded block by block over threads (`fold.rs`),
//! with the same bits and the same refusals as one at a time. Speed is
//! measured (`cargo bench -p tessera-aggregate`), never asserted.
#![deny(missing_docs)]

mod accumulate;
mod attendance;
mod error;
mod evaluate;
mod exact;
mod fold;
pub mod local;
mod methods;
mod robust;

pub use accumulate::{RoundAggregate, UpdateAccumulator};
pub use attendance::{Attendance, Failure};
pub use error::AggregateError;
pub use evaluate::{
    EvaluateInstructions, EvaluationAggregate, EvaluationSums, SiteEvaluation, pool_evaluations,
};
pub use exact::ExactSum;
pub use local::{LocalAlgorithm, LocalFit, LocalOutcome, LocalPart, PlainLocal, restored};
pub use methods::*;
pub use robust::{Robust, RobustConfig, RobustRule};

use tessera_core::{ParameterSet, ParticipantId, Update};

/// The server part of a federated algorithm, in Flower's shape. A strategy
/// does no I/O: it says what each participant receives and computes new
/// global parameters from the round's aggregate. Its local part is the
/// [`LocalAlgorithm`] that [`Instructions::local_algorithm`] builds.
pub trait Strategy: Send {
    /// Short name (`fedavg`, ...).
    fn name(&self) -> &'static str;

    /// What `site` adds to local training this round, starting from `global`.
    fn configure_fit(&self, global: &ParameterSet, site: &ParticipantId) -> Instructions;

    /// Weight of an update in the round's average (default: its example count).
    fn weight(&self, update: &Update) -> f64 {
        update.n_examples as f64
    }

    /// The factor an update's change is multiplied by before it counts
    /// with [`Strategy::weight`] (q-FFL's `F / (F + q L ||Δ||²)`, which with
    /// its weight makes the round's mean its step); default 1: the change
    /// counts as sent.
    fn scale(&self, _update: &Update) -> f64 {
        1.0
    }

    /// `update` with its change scaled by [`Strategy::scale`]; `None` where
    /// the scale is 1 (the update counts as sent).
    fn scaled(&self, update: &Update) -> Option<Update> {
        let scale = self.scale(update);
        (scale != 1.0).then(|| {
            let mut scaled = update.clone();
            let scale = scale as f32;
            scaled.delta.values_mut().for_each(|v| *v *= scale);
            scaled
        })
    }

    /// Refuses an update this strategy cannot count, naming why (IFCA's:
    /// one that is not a single cluster's change; multi-task's: one for
    /// another task than `from`'s). Called on every update the server sees
    /// one by one, before it counts; a secure sum cannot be checked so.
    /// Default: every update counts.
    fn check_update(&self, _from: &ParticipantId, _update: &Update) -> Result<(), AggregateError> {
        Ok(())
    }

    /// The name of the auxiliary sum every update must carry beside its
    /// delta, summed over the round and divided by the federation's size
    /// into [`RoundAggregate::aux_step`] (SCAFFOLD's control-variate change);
    /// `None`: updates carry none.
    fn aux_sum(&self) -> Option<&'static str> {
        None
    }

    /// New global parameters from the current ones and the round's
    /// aggregate; `attendance` says who was asked, whose updates are in the
    /// aggregate and why the others' are not (a strategy may refuse a round
    /// with failures by returning an error; the built-in ones ignore it).
    /// On error (including non-finite results) the strategy's own state
    /// (momentum, moments, control variates) must be left as it was. A
    /// restarted coordinator replays completed rounds through this with
    /// [`Attendance::replayed`], whose failures say no more than who.
    fn aggregate_fit(
        &mut self,
        global: &ParameterSet,
        round: &RoundAggregate,
        attendance: &Attendance,
    ) -> Result<ParameterSet, AggregateError>;

    /// The rule that combines the round's updates (the plan's `[robust]`):
    /// with a norm bound every update is scaled down to it before it
    /// counts; a rule other than the mean has every counted update kept
    /// and combined by [`Strategy::combine`]. Default: the streaming
    /// weighted mean, unbounded ([`RobustConfig::MEAN`]); [`Robust`] gives a
    /// strategy the plan's rule.
    fn robust(&self) -> &RobustConfig {
        &RobustConfig::MEAN
    }

    /// The round's aggregate as [`Strategy::aggregate_fit`] receives it,
    /// from the streaming one and, when [`Strategy::robust`]'s rule needs
    /// them, every counted update (`updates`, bounded, in the order they
    /// counted; empty otherwise). Default: the rule's combination replaces
    /// the mean change.
    fn combine(
        &self,
        mut aggregate: RoundAggregate,
        updates: &[ParameterSet],
    ) -> Result<RoundAggregate, AggregateError> {
        let rule = self.robust();
        if rule.rule.needs_all_updates() {
            aggregate.mean_delta = rule.combine(updates)?;
        }
        Ok(aggregate)
    }

    /// What `site` evaluates once a round has closed on `global`.
    fn configure_evaluate(
        &self,
        _global: &ParameterSet,
        _site: &ParticipantId,
    ) -> EvaluateInstructions {
        EvaluateInstructions::GlobalOnTest
    }

    /// The round's evaluation figures from the sites' evaluations
    /// (default: [`pool_evaluations`]). Only where the sites' evaluations
    /// reach the server in the clear: under `site_metrics =
    /// "aggregate-only"` or `"dp"` the server learns their sum alone.
    fn aggregate_evaluate(&self, results: &[SiteEvaluation]) -> EvaluationAggregate {
        pool_evaluations(results)
    }
}
