//! Local learning: the [`Learner`] trait every model implements (read and
//! write parameters as named `f32` tensors, fit with a local plan, evaluate),
//! the built-in models (logistic regression, softmax regression, MLP with ReLU)
//! as one [`Network`] with hand-written backpropagation on ndarray, the SGD and
//! Adam optimisers, and the evaluation metrics (accuracy, AUC, log loss, and for rare
//! positives PR-AUC, sensitivity, specificity, calibration).
//!
//! Key design decision: models own their parameters as a
//! [`tessera_core::ParameterSet`], so reading and writing them is free and
//! optimisers, proximal terms and control variates all work on the same flat
//! values. Gradients are exact and available per example (their norms in
//! closed form, `||a||² ||δ||²` per dense layer), which differentially private
//! training needs.
//!
//! This crate knows nothing about rounds, strategies or networks.
//!
//! `learner` and `initial_parameters` are the one place a model kind becomes
//! a model (the engine's `PlanBuild` calls them): callers hold a
//! `Box<dyn Learner>`, a coordinator only parameters. A `Learner` reads and
//! writes its parameters, fits (`fit(data, LocalPlan, rng)`), evaluates and
//! clones itself (`clone_box`). `LocalPlan` carries what a strategy adds to
//! every step (a `tessera_core::GradientTerm`) and, under local DP, DP-SGD's
//! settings (`LocalDp`). `Optimizer` is SGD or Adam over flat values.
//! `Evaluation` holds counts, loss and a sparse score histogram, so that AUC
//! pools across sites without any score being sent; `encode_summable` and
//! `decode_summable` turn it into 16-bit limbs that sum in `Z_2^32`, for
//! site metrics under secure aggregation (`site_metrics = "aggregate-only"`
//! and `"dp"`).
#![deny(missing_docs)]

mod binary;
mod config;
mod error;
mod fit;
mod metrics;
mod network;
mod optim;
mod summable;

pub use binary::{BinaryMetrics, CALIBRATION_BINS, RARE_POSITIVES};
pub use config::{
    Init, ModelConfig, ModelKind, OptimizerConfig, OptimizerKind, Schedule, TrainingConfig,
};
pub use error::LearnError;
pub use fit::LocalPlan;
pub use metrics::{Evaluation, HISTOGRAM_BINS, ScoreHistogram, accuracy, auc, log_loss_binary};
pub use network::Network;
pub use optim::Optimizer;
pub use summable::{MAX_SITES, SUMMABLE_LEN, SummedEvaluation, decode_summable, encode_summable};
pub use tessera_core::LocalDp;

use tessera_core::{FitStats, ParameterSet, SeededRng};
use tessera_data::Dataset;

/// A model that can take part in federated training: its parameters are named
/// `f32` tensors that can be read and replaced, it trains on local rows with a
/// [`LocalPlan`], and it evaluates itself on rows.
pub trait Learner: Send {
    /// The current parameters.
    fn parameters(&self) -> &ParameterSet;

    /// Replaces the parameters; the layout must match.
    fn set_parameters(&mut self, parameters: &ParameterSet) -> Result<(), LearnError>;

    /// Trains on `data` as `plan` says, drawing batches from `rng`.
    fn fit(
        &mut self,
        data: &Dataset,
        plan: &LocalPlan<'_>,
        rng: &mut SeededRng,
    ) -> Result<FitStats, LearnError>;

    /// Loss, accuracy and ranking quality on `data`.
    fn evaluate(&self, data: &Dataset) -> Result<Evaluation, LearnError>;

    /// A copy of this learner, parameters included (one per simulated site).
    fn clone_box(&self) -> Box<dyn Learner>;

    /// How much each parameter matters to the model's fit of `data`: the
    /// diagonal of the empirical Fisher information, the mean over the
    /// first `max_rows` rows of each example's squared loss gradient (the
    /// importance elastic weight consolidation weighs parameters by).
    fn importance(&self, data: &Dataset, max_rows: usize) -> Result<ParameterSet, LearnError>;

    /// The mean loss over the first `max_rows` rows of `data` and its
    /// gradient (APFL's mixing weight steps along it).
    fn gradient(&self, data: &Dataset, max_rows: usize) -> Result<(f64, ParameterSet), LearnError>;
}

/// The learner `config` describes for `n_features` inputs and `n_classes`
/// classes, initialised from `seed`: the one place a model kind becomes a
/// concrete model (today every built-in kind is a [`Network`]).
pub fn learner(
    config: &ModelConfig,
    n_features: usize,
    n_classes: usize,
    seed: u64,
) -> Result<Box<dyn Learner>, LearnError> {
    Ok(Box::new(Network::new(config, n_features, n_classes, seed)?))
}

/// The initial parameters of the learner [`learner`] would build, without
/// building it (a coordinator holds parameters, never a model).
pub fn initial_parameters(
    config: &ModelConfig,
    n_features: usize,
    n_classes: usize,
    seed: u64,
) -> Result<ParameterSet, LearnError> {
    network::initial_parameters(config, n_features, n_classes, seed)
}
