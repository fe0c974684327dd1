//! What the strategies' unit tests share: one-tensor parameter sets and
//! round aggregates.

use tessera_core::{LocalModel, ParameterSet, Tensor};

use crate::{Attendance, RoundAggregate};

/// A parameter set of one tensor `w` holding `values`.
pub(crate) fn set(values: &[f32]) -> ParameterSet {
    let mut p = ParameterSet::new();
    p.push(
        "w",
        Tensor::new(vec![values.len()], values.to_vec()).expect("shape matches"),
    )
    .expect("one name");
    p
}

/// The values of `p`, in order.
pub(crate) fn values(p: &ParameterSet) -> Vec<f32> {
    p.values().collect()
}

/// A round whose mean change is `delta`, from `n_updates` of
/// `n_participants` participants.
pub(crate) fn round_of(delta: &[f32], n_updates: u64, n_participants: u64) -> RoundAggregate {
    RoundAggregate {
        mean_delta: set(delta),
        aux_step: None,
        n_updates,
        n_participants,
        n_examples: 10,
        weight_sum: n_updates as f64,
        mean_train_loss: 0.0,
    }
}

/// A round of one update, from a federation of one.
pub(crate) fn round(delta: &[f32]) -> RoundAggregate {
    round_of(delta, 1, 1)
}

/// The attendance of a round in which every update counted.
pub(crate) const NONE_FAILED: Attendance = Attendance {
    cohort: Vec::new(),
    counted: Vec::new(),
    failures: Vec::new(),
};

/// A site's model whose loss is the squared distance to `target`, and
/// whose training moves half way toward it.
pub(crate) struct Toward {
    /// Its parameters.
    pub(crate) w: ParameterSet,
    /// Where training moves them.
    pub(crate) target: Vec<f32>,
}

impl LocalModel for Toward {
    fn parameters(&self) -> &ParameterSet {
        &self.w
    }
    fn set_parameters(&mut self, p: &ParameterSet) -> Result<(), tessera_core::CoreError> {
        p.check_same_layout(&self.w)?;
        self.w = p.clone();
        Ok(())
    }
    fn n_rows(&self) -> usize {
        1
    }
    fn lr(&self) -> f32 {
        0.5
    }
    fn weight_decay(&self) -> f32 {
        0.0
    }
    fn loss(&mut self, p: &ParameterSet) -> Result<f64, tessera_core::CoreError> {
        Ok(p.values()
            .zip(&self.target)
            .map(|(w, t)| f64::from(w - t).powi(2))
            .sum())
    }
    fn train(
        &mut self,
        _term: Option<&dyn tessera_core::GradientTerm>,
    ) -> Result<tessera_core::FitStats, tessera_core::CoreError> {
        let moved: Vec<f32> = self
            .w
            .values()
            .zip(&self.target)
            .map(|(w, t)| w + 0.5 * (t - w))
            .collect();
        self.w = self.w.with_values(&moved)?;
        Ok(tessera_core::FitStats::default())
    }
    fn train_private(
        &mut self,
        _term: Option<&dyn tessera_core::GradientTerm>,
        _dp: &tessera_core::LocalDp,
        _rng: &mut tessera_core::SeededRng,
    ) -> Result<tessera_core::FitStats, tessera_core::CoreError> {
        unreachable!("no DP here")
    }
}
