//! FedDyn's local part: the site's `g_k` (its last local gradient, zero at
//! first), the dynamic regulariser added to every gradient, and `g_k`'s move
//! after training. The server part is [`crate::FedDyn`].

use tessera_core::{CoreError, GradientTerm, ParameterSet};

use crate::local::{LocalAlgorithm, LocalOutcome, mismatch};
use crate::{AggregateError, Instructions};

/// A site's FedDyn state.
#[derive(Debug, Clone, Default)]
pub struct FedDynLocal {
    /// `g_k`: zero until an update of this site counts.
    linear: Option<ParameterSet>,
    /// `g_k - α Δ_k` of the last training, until its round closes.
    pending: Option<ParameterSet>,
}

/// The gradient of `-<g_k, θ> + α/2 ||θ - θ_global||²`: `α (θ - θ_global) - g_k`.
#[derive(Debug)]
struct Dynamic<'a> {
    alpha: f32,
    anchor: &'a ParameterSet,
    linear: &'a ParameterSet,
}

impl GradientTerm for Dynamic<'_> {
    fn check(&self, parameters: &ParameterSet) -> Result<(), CoreError> {
        parameters.check_same_layout(self.anchor)?;
        parameters.check_same_layout(self.linear)?;
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(CoreError::Invalid(format!(
                "feddyn's alpha must be > 0, got {}",
                self.alpha
            )));
        }
        Ok(())
    }

    fn add(&self, grad: &mut ParameterSet, parameters: &ParameterSet) {
        for (((g, w), a), l) in grad
            .values_mut()
            .zip(parameters.values())
            .zip(self.anchor.values())
            .zip(self.linear.values())
        {
            *g += self.alpha * (w - a) - l;
        }
    }
}

impl LocalAlgorithm for FedDynLocal {
    fn begin<'a>(
        &'a mut self,
        instructions: &'a Instructions,
        global: &'a ParameterSet,
    ) -> Result<Option<Box<dyn GradientTerm + 'a>>, AggregateError> {
        let Instructions::FedDyn { alpha } = instructions else {
            return Err(mismatch("feddyn", instructions));
        };
        let linear = self.linear.get_or_insert_with(|| global.zeros_like());
        Ok(Some(Box::new(Dynamic {
            alpha: *alpha,
            anchor: global,
            linear,
        })))
    }

    fn finish(
        &mut self,
        instructions: &Instructions,
        outcome: &LocalOutcome<'_>,
    ) -> Result<Option<ParameterSet>, AggregateError> {
        let Instructions::FedDyn { alpha } = instructions else {
            return Err(mismatch("feddyn", instructions));
        };
        let mut next = self
            .linear
            .clone()
            .unwrap_or_else(|| outcome.global.zeros_like());
        next.add_scaled(outcome.delta, -alpha)?;
        next.check_finite()?;
        self.pending = Some(next);
        Ok(None)
    }

    fn round_closed(&mut self, counted: bool) {
        let pending = self.pending.take();
        if counted {
            self.linear = pending.or(self.linear.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testing::set;
    use tessera_core::FitStats;

    #[test]
    fn the_term_and_the_state_move_as_the_paper_says() {
        let mut local = FedDynLocal::default();
        let instructions = Instructions::FedDyn { alpha: 0.5 };
        let global = set(&[1.0, -1.0]);
        let term = local.begin(&instructions, &global).unwrap().unwrap();
        // g_k = 0: the term is α (w - w_global).
        let mut grad = set(&[0.0, 0.0]);
        term.add(&mut grad, &set(&[3.0, -1.0]));
        assert_eq!(grad.values().collect::<Vec<_>>(), [1.0, 0.0]);
        drop(term);
        let delta = set(&[0.4, -0.2]);
        let outcome = LocalOutcome {
            global: &global,
            delta: &delta,
            stats: FitStats::default(),
            lr: 0.1,
        };
        assert_eq!(local.finish(&instructions, &outcome).unwrap(), None);
        // Not counted: g_k stays zero.
        local.round_closed(false);
        let term = local.begin(&instructions, &global).unwrap().unwrap();
        let mut grad = set(&[0.0, 0.0]);
        term.add(&mut grad, &global);
        assert_eq!(grad.values().collect::<Vec<_>>(), [0.0, 0.0]);
        drop(term);
        // Counted: g_k = -α Δ = [-0.2, 0.1], and the term subtracts it.
        local.finish(&instructions, &outcome).unwrap();
        local.round_closed(true);
        let term = local.begin(&instructions, &global).unwrap().unwrap();
        let mut grad = set(&[0.0, 0.0]);
        term.add(&mut grad, &global);
        assert_eq!(grad.values().collect::<Vec<_>>(), [0.2, -0.1]);
    }

    #[test]
    fn bad_alpha_and_other_instructions_are_refused() {
        let mut local = FedDynLocal::default();
        let global = set(&[1.0]);
        let zero = Instructions::FedDyn { alpha: 0.0 };
        let term = local.begin(&zero, &global).unwrap().unwrap();
        assert!(term.check(&global).is_err());
        drop(term);
        assert!(local.begin(&Instructions::Plain, &global).is_err());
    }
}
