//! Continual learning in deployment (`tessera coordinator --continue-from`):
//! the run starts from an earlier run's model instead of the plan's initial
//! one, once the agreement shows the model fits this federation's data.

use tessera_core::ParameterSet;
use tessera_data::Agreement;
use tessera_engine::PlanBuild;

use super::Federation;
use crate::CoordinatorError;

/// An earlier run's model to start from.
#[derive(Debug, Clone, PartialEq)]
pub struct InitialModel {
    /// The encoded features it was trained on, in order.
    pub features: Vec<String>,
    /// Its classes, in order.
    pub classes: Vec<String>,
    /// Its parameters.
    pub parameters: ParameterSet,
    /// Where it came from, for the audit log.
    pub from: String,
}

impl Federation {
    /// Starts the run from `initial` instead of the plan's initial model
    /// (checked against the agreement when it closes). A run resumed from
    /// the database keeps the initial model it stored: another one is
    /// refused, so that nothing names a model the run did not start from.
    pub fn continue_from(&mut self, initial: InitialModel) -> Result<(), CoordinatorError> {
        if self.plan.multitask.is_some() {
            return Err(CoordinatorError::Config(format!(
                "--continue-from {}: a multi-task run starts from its plan's body and heads; \
                 continuing one is not supported yet",
                initial.from
            )));
        }
        if let Some(stored) = self.store.model(&self.run.id, 0)?
            && stored != initial.parameters
        {
            return Err(CoordinatorError::Config(format!(
                "--continue-from {}: this run (resumed from its database) started from \
                 another model; give the file it started from, or none",
                initial.from
            )));
        }
        self.continued = Some(initial);
        Ok(())
    }

    /// SHA-256 of the run's stored initial model's values (empty before the
    /// agreement stores it), which the reply to a levels offer carries.
    pub fn initial_model_sha256(&self) -> String {
        match self.store.model(&self.run.id, 0) {
            Ok(Some(initial)) => tessera_engine::model_file::parameters_sha256(&initial),
            _ => String::new(),
        }
    }

    /// The run's initial model: the plan's, or the one continued from,
    /// refused (naming the difference) where it does not fit `agreement`.
    pub(super) fn initial_model(&self, agreement: &Agreement) -> Result<ParameterSet, String> {
        let (features, classes) = (agreement.feature_names(), &agreement.classes);
        let plans = match self.plan.multitask {
            Some(_) => self
                .plan
                .multitask_parameters(features.len(), &self.task_class_counts()),
            None => self.plan.initial_parameters(features.len(), classes.len()),
        }
        .map_err(|e| e.to_string())?;
        let Some(continued) = &self.continued else {
            return Ok(plans);
        };
        if continued.features != features {
            let missing = features.iter().find(|f| !continued.features.contains(f));
            return Err(format!(
                "--continue-from {}: its {} features are not the agreed {} (in order){}; \
                 continue only on data of the same columns",
                continued.from,
                continued.features.len(),
                features.len(),
                missing.map_or_else(String::new, |f| format!(", e.g. it lacks '{f}'"))
            ));
        }
        if &continued.classes != classes {
            return Err(format!(
                "--continue-from {}: a model of the classes {:?}, and the agreed ones are {:?}; \
                 continue on data with the same classes",
                continued.from, continued.classes, classes
            ));
        }
        continued
            .parameters
            .check_same_layout(&plans)
            .map_err(|e| {
                format!(
                    "--continue-from {}: not the plan's model: {e}",
                    continued.from
                )
            })?;
        continued
            .parameters
            .check_finite()
            .map_err(|e| format!("--continue-from {}: {e}", continued.from))?;
        Ok(continued.parameters.clone())
    }
}
