//! SCAFFOLD's server part: the control variate `c` and the global step.
//! Its local part is [`crate::ScaffoldLocal`].

use std::sync::Arc;

use tessera_core::{ParameterSet, ParticipantId};

use super::fedavg::moved;
use crate::{AggregateError, Attendance, Instructions, Needs, RoundAggregate, Strategy};

/// The name of SCAFFOLD's auxiliary sum.
pub(crate) const AUX: &str = "control-variate change";

/// SCAFFOLD (Karimireddy et al. 2020): participants correct every local
/// gradient by `c - c_i`, and return the change of their control variate
/// (option II); the server moves `x += η Δ̄` and `c += Σ Δc_i / N`.
#[derive(Debug, Clone)]
pub struct Scaffold {
    /// Server learning rate η.
    pub server_lr: f32,
    control: Option<Arc<ParameterSet>>,
}

impl Scaffold {
    /// What SCAFFOLD needs from the plan: its control variates assume plain
    /// SGD and synchronous rounds, its control-variate changes travel in the
    /// clear, and server and site each keep two more copies of the model.
    pub const NEEDS: Needs = Needs {
        sync_rounds: true,
        plain_sgd: true,
        clear_aux_sum: Some(AUX),
        flat_only: true,
        server_copies: 2,
        site_copies: 2,
        personal: false,
        meta_steps: false,
    };

    /// SCAFFOLD with a zero server control variate.
    pub fn new(server_lr: f32) -> Self {
        Self {
            server_lr,
            control: None,
        }
    }
}

impl Strategy for Scaffold {
    fn name(&self) -> &'static str {
        "scaffold"
    }

    fn configure_fit(&self, global: &ParameterSet, _site: &ParticipantId) -> Instructions {
        Instructions::Scaffold {
            server_control: self
                .control
                .clone()
                .unwrap_or_else(|| Arc::new(global.zeros_like())),
        }
    }

    fn aux_sum(&self) -> Option<&'static str> {
        Some(AUX)
    }

    fn aggregate_fit(
        &mut self,
        global: &ParameterSet,
        round: &RoundAggregate,
        _attendance: &Attendance,
    ) -> Result<ParameterSet, AggregateError> {
        let step = round.aux_step.as_ref().ok_or_else(|| {
            AggregateError::Rejected("SCAFFOLD round without control-variate changes".into())
        })?;
        let next = moved(global, &round.mean_delta, self.server_lr)?;
        let mut control = self
            .control
            .as_deref()
            .cloned()
            .unwrap_or_else(|| global.zeros_like());
        control.add_scaled(step, 1.0)?;
        next.check_finite()?;
        control.check_finite()?;
        self.control = Some(Arc::new(control));
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testing::{NONE_FAILED, round, set, values};

    fn control(s: &Scaffold, global: &ParameterSet) -> ParameterSet {
        match s.configure_fit(global, &ParticipantId::new("a")) {
            Instructions::Scaffold { server_control } => server_control.as_ref().clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scaffold_moves_its_control_variate() {
        let mut s = Scaffold::new(1.0);
        let global = set(&[1.0, 2.0]);
        let c0 = control(&s, &global);
        assert_eq!(values(&c0), [0.0, 0.0]);
        let mut r = round(&[0.5, -0.5]);
        r.mean_delta = set(&[0.5, -0.5]);
        r.aux_step = Some(set(&[0.25, 0.125]));
        let next = s.aggregate_fit(&global, &r, &NONE_FAILED).unwrap();
        assert_eq!(values(&next), [1.5, 1.5]);
        assert_eq!(values(&control(&s, &next)), [0.25, 0.125]);
        r.aux_step = None;
        assert!(s.aggregate_fit(&next, &r, &NONE_FAILED).is_err());
    }
}
