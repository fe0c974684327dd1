//! The site's model as a strategy's local part drives it.

use crate::{CoreError, FitStats, GradientTerm, ParameterSet, SeededRng};

/// DP-SGD (Abadi et al. 2016): each step draws a Poisson sample of the rows
/// (each row with probability `batch_size / n`, independently), clips every
/// example's gradient to L2 norm `clip_norm` (exact per-example norms),
/// sums them, adds Gaussian noise of standard deviation
/// `noise_multiplier * clip_norm` from a ChaCha20 generator keyed with
/// `noise_key`, and divides by the expected batch size. A round of `T` steps
/// is the DP event (q = batch_size / n, noise_multiplier, T) for the
/// accountant. The training loss is not reported (it would be released
/// without noise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalDp {
    /// Noise standard deviation over the clipping norm.
    pub noise_multiplier: f64,
    /// Per-example gradient norm bound.
    pub clip_norm: f64,
    /// Secret key of the noise.
    pub noise_key: [u8; 32],
    /// Noise stream (for example the round), so rounds draw independent noise.
    pub stream: u64,
}

/// A site's model and training rows, as a strategy's local part
/// (`tessera_aggregate::LocalAlgorithm`) drives them: it sets the
/// parameters, trains (with its term added to every gradient), reads the
/// result, and may train more than once (personalised methods keep a model
/// of their own). It never sees a row. The engine implements it over a
/// learner and the site's rows; DP-SGD wraps it so that every training the
/// algorithm asks for runs privately.
pub trait LocalModel {
    /// The current parameters.
    fn parameters(&self) -> &ParameterSet;

    /// Replaces the parameters; the layout must match.
    fn set_parameters(&mut self, parameters: &ParameterSet) -> Result<(), CoreError>;

    /// Training rows at the site.
    fn n_rows(&self) -> usize;

    /// The optimiser's learning rate.
    fn lr(&self) -> f32;

    /// The optimiser's weight decay (added to every gradient as
    /// `weight_decay * w`; 0 when the learner has none or does its own).
    fn weight_decay(&self) -> f32;

    /// One local training from the current parameters, as the plan's
    /// training settings say, with `term` added to every gradient.
    fn train(&mut self, term: Option<&dyn GradientTerm>) -> Result<FitStats, CoreError>;

    /// The mean loss of `parameters` on the site's training rows (the
    /// current parameters become `parameters`). Refused by a model that
    /// cannot measure it (an external learner).
    fn loss(&mut self, parameters: &ParameterSet) -> Result<f64, CoreError> {
        let _ = parameters;
        Err(CoreError::Invalid(
            "this model cannot measure its loss on the site's rows (an external learner)".into(),
        ))
    }

    /// One local training of first-order Per-FedAvg meta steps with inner
    /// step size `inner_lr` (each step adapts a copy by one gradient step on
    /// a batch and moves the model with the copy's gradient on the next),
    /// `term` added to every gradient. Refused by a model that cannot take
    /// them (DP-SGD, an external learner).
    fn train_meta(
        &mut self,
        term: Option<&dyn GradientTerm>,
        inner_lr: f32,
    ) -> Result<FitStats, CoreError> {
        let _ = (term, inner_lr);
        Err(CoreError::Invalid(
            "this model cannot take Per-FedAvg's meta steps (DP-SGD or an external learner)".into(),
        ))
    }

    /// The loss gradient at the current parameters on the site's training
    /// rows (the first rows, up to a bound). Refused by a model that cannot
    /// give it (DP-SGD, whose gradients are released only noised; an
    /// external learner).
    fn gradient(&mut self) -> Result<ParameterSet, CoreError> {
        Err(CoreError::Invalid(
            "this model cannot give its loss gradient (DP-SGD or an external learner)".into(),
        ))
    }

    /// One local training with DP-SGD: noise as `dp` says, batches drawn
    /// from `rng` (which the caller keys with the site's secret).
    fn train_private(
        &mut self,
        term: Option<&dyn GradientTerm>,
        dp: &LocalDp,
        rng: &mut SeededRng,
    ) -> Result<FitStats, CoreError>;
}
