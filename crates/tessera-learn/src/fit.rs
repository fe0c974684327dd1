//! The local training loop shared by the built-in models.

use tessera_core::{FitStats, ParameterSet, SeededRng};
use tessera_data::Dataset;

use crate::config::{Schedule, TrainingConfig};
use crate::network::Network;
use crate::optim::Optimizer;
use crate::{LearnError, Learner};

/// What one round of local training does: the training settings plus what a
/// strategy adds to every step.
#[derive(Debug, Clone, Copy)]
pub struct LocalPlan<'a> {
    /// Schedule, batch size and optimiser.
    pub training: &'a TrainingConfig,
    /// FedProx: `(mu, anchor)` adds `mu/2 ||w - anchor||²` to the loss, that is
    /// `mu (w - anchor)` to every gradient.
    pub proximal: Option<(f32, &'a ParameterSet)>,
    /// SCAFFOLD: `c - c_i`, added to every gradient.
    pub correction: Option<&'a ParameterSet>,
}

impl<'a> LocalPlan<'a> {
    /// Plain local training with nothing added.
    pub fn plain(training: &'a TrainingConfig) -> Self {
        Self {
            training,
            proximal: None,
            correction: None,
        }
    }

    /// Number of optimiser steps this plan takes on `n_rows` rows.
    pub fn n_steps(&self, n_rows: usize) -> Result<u64, LearnError> {
        Ok(match self.training.schedule()? {
            Schedule::Steps(steps) => steps,
            Schedule::Epochs(epochs) => {
                epochs.saturating_mul(n_rows.div_ceil(self.training.batch_size.max(1)) as u64)
            }
        })
    }
}

/// Mini-batch training: rows are visited in a fresh random order at each pass;
/// the last batch of a pass may be short.
pub(crate) fn train(
    net: &mut Network,
    data: &Dataset,
    plan: &LocalPlan<'_>,
    rng: &mut SeededRng,
) -> Result<FitStats, LearnError> {
    plan.training.validate()?;
    let n = data.n_rows();
    if n == 0 {
        return Err(LearnError::Config("no training rows".into()));
    }
    if let Some((mu, anchor)) = plan.proximal {
        net.parameters().check_same_layout(anchor)?;
        if !(mu.is_finite() && mu >= 0.0) {
            return Err(LearnError::Config(format!(
                "proximal mu must be >= 0, got {mu}"
            )));
        }
    }
    if let Some(correction) = plan.correction {
        net.parameters().check_same_layout(correction)?;
    }
    let batch_size = plan.training.batch_size;
    let n_steps = plan.n_steps(n)?;
    let mut grad = net.parameters().zeros_like();
    let mut optimizer = Optimizer::new(&plan.training.optimizer, grad.n_values());
    let mut order = rng.permutation(n);
    let mut position = 0;
    let mut loss_sum = 0.0;
    let mut batch_y = Vec::with_capacity(batch_size.min(n));
    let mut batch_x = ndarray::Array2::<f32>::zeros((batch_size.min(n), data.n_features()));
    for step in 0..n_steps {
        if position >= n {
            order = rng.permutation(n);
            position = 0;
        }
        let batch = &order[position..(position + batch_size).min(n)];
        position += batch_size;
        batch_y.clear();
        for (k, &i) in batch.iter().enumerate() {
            batch_x.row_mut(k).assign(&data.x.row(i));
            batch_y.push(data.y[i]);
        }
        let rows = batch_x.slice(ndarray::s![..batch.len(), ..]);
        let loss = net.loss_and_gradient(rows, &batch_y, None, &mut grad);
        if !loss.is_finite() {
            return Err(LearnError::Diverged { step });
        }
        loss_sum += loss;
        if let Some((mu, anchor)) = plan.proximal {
            for ((g, w), a) in grad
                .values_mut()
                .zip(net.parameters().values())
                .zip(anchor.values())
            {
                *g += mu * (w - a);
            }
        }
        if let Some(correction) = plan.correction {
            for (g, c) in grad.values_mut().zip(correction.values()) {
                *g += c;
            }
        }
        optimizer.step(net.params_mut(), &grad);
    }
    if net.parameters().check_finite().is_err() {
        return Err(LearnError::Diverged { step: n_steps });
    }
    Ok(FitStats {
        n_steps,
        mean_train_loss: if n_steps > 0 {
            loss_sum / n_steps as f64
        } else {
            0.0
        },
    })
}
