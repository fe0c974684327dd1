//! What the strategies' unit tests share: one-tensor parameter sets and
//! round aggregates.

use tessera_core::{ParameterSet, Tensor};

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
