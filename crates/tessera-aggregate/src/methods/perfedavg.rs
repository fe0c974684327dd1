//! Per-FedAvg (Fallah, Mokhtari, Ozdaglar, NeurIPS 2020), first-order: a
//! global model meta-learned as an initialisation that one or a few local
//! gradient steps adapt well. Each site's local training takes meta steps
//! (adapt a copy by one step of size `alpha` on a batch, move the model with
//! the copy's gradient on the next batch); the server averages the changes
//! as FedAvg does. A site's personalized model is the global one fine-tuned
//! on its own rows after the run (`[personalization]`), a new site's too.

use tessera_core::{LocalModel, ParameterSet, ParticipantId};

use super::fedavg::moved;
use crate::local::{LocalAlgorithm, LocalFit, mismatch};
use crate::{AggregateError, Attendance, Instructions, Needs, RoundAggregate, Strategy};

/// The largest inner step size a plan or a task may give: a bound on what
/// one round's instructions can ask of a site.
pub const MAX_INNER_LR: f32 = 10.0;

/// Per-FedAvg's server part: FedAvg's average, the inner step size sent to
/// every site.
#[derive(Debug, Clone)]
pub struct PerFedAvg {
    /// The inner (adaptation) step size α.
    pub alpha: f32,
    /// Server learning rate.
    pub server_lr: f32,
}

impl PerFedAvg {
    /// What Per-FedAvg needs from the plan: its own training loop at the
    /// sites (built-in models, no local DP).
    pub const NEEDS: Needs = Needs {
        sync_rounds: false,
        plain_sgd: false,
        clear_aux_sum: None,
        flat_only: false,
        server_copies: 0,
        site_copies: 1,
        personal: false,
        meta_steps: true,
    };
}

impl Strategy for PerFedAvg {
    fn name(&self) -> &'static str {
        "perfedavg"
    }

    fn configure_fit(&self, _global: &ParameterSet, _site: &ParticipantId) -> Instructions {
        Instructions::PerFedAvg { alpha: self.alpha }
    }

    fn aggregate_fit(
        &mut self,
        global: &ParameterSet,
        round: &RoundAggregate,
        _attendance: &Attendance,
    ) -> Result<ParameterSet, AggregateError> {
        moved(global, &round.mean_delta, self.server_lr)
    }
}

/// Per-FedAvg's local part: one local training of meta steps from the
/// global model; no state.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerFedAvgLocal;

impl LocalAlgorithm for PerFedAvgLocal {
    fn fit(
        &mut self,
        instructions: &Instructions,
        global: &ParameterSet,
        model: &mut dyn LocalModel,
    ) -> Result<LocalFit, AggregateError> {
        let Instructions::PerFedAvg { alpha } = instructions else {
            return Err(mismatch("perfedavg", instructions));
        };
        if !(alpha.is_finite() && *alpha > 0.0 && *alpha <= MAX_INNER_LR) {
            return Err(AggregateError::Config(format!(
                "perfedavg: the inner step size {alpha} is outside (0, {MAX_INNER_LR}]"
            )));
        }
        model.set_parameters(global)?;
        let stats = model.train_meta(None, *alpha)?;
        let trained = model.parameters();
        trained.check_finite()?;
        let delta = trained.sub(global)?;
        Ok(LocalFit {
            delta,
            aux: None,
            stats,
        })
    }
}
