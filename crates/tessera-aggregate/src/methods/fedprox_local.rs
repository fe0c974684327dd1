//! FedProx's local part: the proximal pull toward the global parameters.

use tessera_core::{CoreError, GradientTerm, ParameterSet};

use crate::local::{LocalAlgorithm, LocalOutcome, mismatch};
use crate::{AggregateError, Instructions};

/// Adds `mu/2 ||w - w_global||²` to the local loss, that is `mu (w - w_global)`
/// to every gradient (Li et al. 2020). No state, no auxiliary sum.
#[derive(Debug, Clone, Copy, Default)]
pub struct FedProxLocal;

/// The proximal term.
#[derive(Debug)]
pub(crate) struct Proximal<'a> {
    pub(crate) mu: f32,
    pub(crate) anchor: &'a ParameterSet,
}

impl GradientTerm for Proximal<'_> {
    fn check(&self, parameters: &ParameterSet) -> Result<(), CoreError> {
        parameters.check_same_layout(self.anchor)?;
        if !(self.mu.is_finite() && self.mu >= 0.0) {
            return Err(CoreError::Invalid(format!(
                "proximal mu must be >= 0, got {}",
                self.mu
            )));
        }
        Ok(())
    }

    fn add(&self, grad: &mut ParameterSet, parameters: &ParameterSet) {
        for ((g, w), a) in grad
            .values_mut()
            .zip(parameters.values())
            .zip(self.anchor.values())
        {
            *g += self.mu * (w - a);
        }
    }
}

impl LocalAlgorithm for FedProxLocal {
    fn begin<'a>(
        &'a mut self,
        instructions: &'a Instructions,
        global: &'a ParameterSet,
    ) -> Result<Option<Box<dyn GradientTerm + 'a>>, AggregateError> {
        match instructions {
            Instructions::Proximal { mu } => Ok(Some(Box::new(Proximal {
                mu: *mu,
                anchor: global,
            }))),
            other => Err(mismatch("fedprox", other)),
        }
    }

    fn finish(
        &mut self,
        _instructions: &Instructions,
        _outcome: &LocalOutcome<'_>,
    ) -> Result<Option<ParameterSet>, AggregateError> {
        Ok(None)
    }
}
