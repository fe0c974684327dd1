//! Continual learning: a run that continues from an earlier run's model and
//! holds on to what that model knew. Elastic weight consolidation
//! (Kirkpatrick et al., PNAS 2017) adds `lambda/2 Σ_j F_j (w_j - a_j)²` to
//! every site's local loss, `a` the earlier model and `F` its importance
//! (the diagonal Fisher information the earlier run measured on its own
//! data, [`tessera_learn::Learner::importance`]). No earlier row is kept or
//! replayed: the importance is all that carries over.

use std::sync::Arc;

use tessera_core::{CoreError, GradientTerm, ParameterSet};
use tessera_data::Dataset;
use tessera_learn::Learner;

use crate::{EngineError, Mode, Plan, TopologyKind};

/// Rows per site the importance is measured on (the first ones).
pub const IMPORTANCE_ROWS: usize = 1000;

/// Scales `importance` so that its largest value is 1 (left as it is when
/// every value is 0): EWC's `lambda` is then the pull on the most important
/// parameter, as FedProx's `mu` is on every one (and plain SGD stays stable
/// while `lr * lambda` is below 1).
pub fn largest_one(importance: &mut ParameterSet) {
    let largest = importance.values().fold(0.0f32, f32::max);
    if largest > 0.0 {
        importance.values_mut().for_each(|m| *m /= largest);
    }
}

/// One site's own importance of `learner`'s parameters: the diagonal
/// empirical Fisher information on up to [`IMPORTANCE_ROWS`] of its
/// training rows `train`, scaled so that the largest is 1. It is a
/// statistic of the site's rows and stays at the site: a deployed
/// participant writes it next to its model file (`--importance-out`), the
/// simulator one file per site (`--site-importance-out`), both with this.
pub fn site_importance(
    learner: &dyn Learner,
    train: &Dataset,
) -> Result<ParameterSet, EngineError> {
    let mut importance = learner.importance(train, IMPORTANCE_ROWS)?;
    largest_one(&mut importance);
    Ok(importance)
}

/// The elastic pull toward an earlier model, parameter by parameter.
#[derive(Debug, Clone)]
pub struct Elastic {
    lambda: f32,
    anchor: ParameterSet,
    importance: ParameterSet,
}

impl Elastic {
    /// The pull of weight `lambda` (>= 0) toward `anchor`, each parameter
    /// weighted by its `importance` (finite, >= 0, the anchor's layout).
    pub fn new(
        lambda: f32,
        anchor: ParameterSet,
        importance: ParameterSet,
    ) -> Result<Arc<Self>, EngineError> {
        let invalid = |what: String| EngineError::State(format!("continual learning: {what}"));
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(invalid(format!(
                "ewc_lambda must be a number >= 0, got {}",
                tessera_core::value(lambda)
            )));
        }
        anchor
            .check_same_layout(&importance)
            .map_err(|e| invalid(format!("the importance does not fit the model: {e}")))?;
        if let Some(bad) = importance.values().find(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(invalid(format!(
                "the importance holds {}, where every value is a finite number >= 0",
                tessera_core::value(bad)
            )));
        }
        Ok(Arc::new(Self {
            lambda,
            anchor,
            importance,
        }))
    }

    /// The earlier model.
    pub fn anchor(&self) -> &ParameterSet {
        &self.anchor
    }

    /// The pull's weight.
    pub fn lambda(&self) -> f32 {
        self.lambda
    }
}

impl GradientTerm for Elastic {
    fn check(&self, parameters: &ParameterSet) -> Result<(), CoreError> {
        parameters.check_same_layout(&self.anchor)
    }

    fn add(&self, grad: &mut ParameterSet, parameters: &ParameterSet) {
        for (((g, w), a), f) in grad
            .values_mut()
            .zip(parameters.values())
            .zip(self.anchor.values())
            .zip(self.importance.values())
        {
            *g += self.lambda * f * (w - a);
        }
    }
}

/// Two terms, added one after the other.
#[derive(Debug)]
pub(crate) struct Both<'a>(pub &'a dyn GradientTerm, pub &'a dyn GradientTerm);

impl GradientTerm for Both<'_> {
    fn check(&self, parameters: &ParameterSet) -> Result<(), CoreError> {
        self.0.check(parameters)?;
        self.1.check(parameters)
    }

    fn add(&self, grad: &mut ParameterSet, parameters: &ParameterSet) {
        self.0.add(grad, parameters);
        self.1.add(grad, parameters);
    }
}

/// Refuses, saying why, a plan that cannot continue from an earlier run's
/// model, in simulation or deployment: continual learning runs on the flat
/// topology with synchronous rounds, a built-in model and a FedAvg-family
/// strategy.
pub fn check_continuable(plan: &Plan) -> Result<(), EngineError> {
    if plan.topology.kind != TopologyKind::Flat
        || plan.federation.mode != Mode::Sync
        || plan.model.kind.is_external()
    {
        return Err(EngineError::State(
            "continual learning runs on the flat topology with synchronous rounds and a \
             built-in model"
                .into(),
        ));
    }
    if plan.federation.strategy.needs().personal {
        // FedPer's and FedRep's global head is the untrained one, and their
        // held layers would be pulled by the elastic term.
        return Err(EngineError::State(format!(
            "continual learning with the personalized strategy {} is not supported yet: \
             continue with a FedAvg-family strategy",
            plan.federation.strategy
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tessera_core::Tensor;

    use super::*;

    fn set(v: &[f32]) -> ParameterSet {
        let mut p = ParameterSet::new();
        p.push("w", Tensor::new(vec![v.len()], v.to_vec()).unwrap())
            .unwrap();
        p
    }

    #[test]
    fn the_pull_is_lambda_times_importance_times_the_distance() {
        let elastic = Elastic::new(2.0, set(&[1.0, 1.0, 1.0]), set(&[0.0, 0.5, 4.0])).unwrap();
        let mut grad = set(&[0.1, 0.1, 0.1]);
        elastic.add(&mut grad, &set(&[3.0, 3.0, 0.0]));
        // 0.1 + 2 * F * (w - a).
        assert_eq!(grad.values().collect::<Vec<_>>(), [0.1, 2.1, -7.9]);
        for bad in [-1.0, f32::NAN] {
            assert!(Elastic::new(bad, set(&[1.0]), set(&[1.0])).is_err());
            assert!(Elastic::new(1.0, set(&[1.0]), set(&[bad])).is_err());
        }
        assert!(Elastic::new(1.0, set(&[1.0]), set(&[1.0, 2.0])).is_err());
    }
}
