//! SCAFFOLD's local part: the site's control variate `c_i`, the correction
//! `c - c_i` added to every gradient, and the control-variate change its
//! update carries (option II). The server part is [`crate::Scaffold`].

use tessera_core::{CoreError, GradientTerm, ParameterSet};

use crate::local::{LocalAlgorithm, LocalOutcome, mismatch};
use crate::{AggregateError, Instructions};

/// A site's SCAFFOLD state (Karimireddy et al. 2020).
#[derive(Debug, Clone, Default)]
pub struct ScaffoldLocal {
    /// `c_i`: zero until an update of this site counts.
    control: Option<ParameterSet>,
    /// `c_i+` of the last training, until its round closes.
    pending: Option<ParameterSet>,
}

/// The correction `c - c_i`, added to every gradient.
#[derive(Debug)]
struct Correction(ParameterSet);

impl GradientTerm for Correction {
    fn check(&self, parameters: &ParameterSet) -> Result<(), CoreError> {
        parameters.check_same_layout(&self.0)
    }

    fn add(&self, grad: &mut ParameterSet, _parameters: &ParameterSet) {
        for (g, c) in grad.values_mut().zip(self.0.values()) {
            *g += c;
        }
    }
}

impl LocalAlgorithm for ScaffoldLocal {
    fn begin<'a>(
        &'a mut self,
        instructions: &'a Instructions,
        global: &'a ParameterSet,
    ) -> Result<Option<Box<dyn GradientTerm + 'a>>, AggregateError> {
        let Instructions::Scaffold { server_control } = instructions else {
            return Err(mismatch("scaffold", instructions));
        };
        let own = self.control.get_or_insert_with(|| global.zeros_like());
        Ok(Some(Box::new(Correction(server_control.sub(own)?))))
    }

    fn finish(
        &mut self,
        instructions: &Instructions,
        outcome: &LocalOutcome<'_>,
    ) -> Result<Option<ParameterSet>, AggregateError> {
        let Instructions::Scaffold { server_control } = instructions else {
            return Err(mismatch("scaffold", instructions));
        };
        // Option II: c_i+ = c_i - c + (x - y_i) / (K lr), so
        // Δc_i = c_i+ - c_i = -c - Δy / (K lr).
        let scale = 1.0 / (outcome.stats.n_steps.max(1) as f32 * outcome.lr);
        let mut change = server_control.as_ref().clone();
        for (c, d) in change.values_mut().zip(outcome.delta.values()) {
            *c = -*c - d * scale;
        }
        let mut next = self
            .control
            .clone()
            .unwrap_or_else(|| outcome.global.zeros_like());
        next.add_scaled(&change, 1.0)?;
        self.pending = Some(next);
        Ok(Some(change))
    }

    fn round_closed(&mut self, counted: bool) {
        let pending = self.pending.take();
        if counted {
            self.control = pending.or(self.control.take());
        }
    }
}
