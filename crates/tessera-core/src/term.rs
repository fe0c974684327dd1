//! What a local algorithm adds to every gradient step of local training.

use crate::{CoreError, ParameterSet};

/// A term a strategy's local part adds to each gradient of local training
/// (FedProx's proximal pull, SCAFFOLD's drift correction, FedDyn's linear and
/// quadratic terms). The learner calls [`GradientTerm::check`] once before
/// training and [`GradientTerm::add`] after every gradient, before the
/// optimiser's step; under DP-SGD after the noise (the term depends on the
/// parameters and the global model only, never on a row).
pub trait GradientTerm: Sync + std::fmt::Debug {
    /// Refuses parameters the term cannot be applied to (another layout, a
    /// setting out of range).
    fn check(&self, parameters: &ParameterSet) -> Result<(), CoreError>;

    /// Adds the term's gradient at `parameters` to `grad` (same layout, checked).
    fn add(&self, grad: &mut ParameterSet, parameters: &ParameterSet);
}
