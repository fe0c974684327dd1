//! The local training loop shared by the built-in models.

use tessera_core::{FitStats, GradientTerm, LocalDp, ParameterSet, SeededRng};
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
    /// What the strategy's local part adds to every gradient (FedProx's
    /// proximal pull, SCAFFOLD's correction, ...).
    pub term: Option<&'a dyn GradientTerm>,
    /// DP-SGD instead of plain mini-batches.
    pub dp: Option<LocalDp>,
}

impl<'a> LocalPlan<'a> {
    /// Plain local training with nothing added.
    pub fn plain(training: &'a TrainingConfig) -> Self {
        Self {
            training,
            term: None,
            dp: None,
        }
    }

    /// DP-SGD's sampling rate on `n_rows` rows.
    pub fn sampling_rate(&self, n_rows: usize) -> f64 {
        (self.training.batch_size as f64 / n_rows.max(1) as f64).min(1.0)
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
    if let Some(term) = plan.term {
        term.check(net.parameters())?;
    }
    if let Some(dp) = plan.dp {
        return train_dp(net, data, plan, &dp, rng);
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
        add_strategy_terms(&mut grad, net, plan);
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

/// Adds the strategy's local term to `grad`.
fn add_strategy_terms(grad: &mut ParameterSet, net: &Network, plan: &LocalPlan<'_>) {
    if let Some(term) = plan.term {
        term.add(grad, net.parameters());
    }
}

/// The clipped-and-summed per-example gradients of `rows`, over `expected`:
/// each example weighs `min(1, C / ||g_i||) / expected`, so one weighted
/// backward pass gives the sum of the clipped gradients exactly.
pub(crate) fn clipped_gradient(
    net: &Network,
    rows: ndarray::ArrayView2<'_, f32>,
    y: &[u32],
    clip_norm: f64,
    expected: f64,
    grad: &mut ParameterSet,
) {
    let norms = net.per_example_gradient_norms(rows, y);
    let weights: Vec<f32> = norms
        .iter()
        .map(|&g| {
            let factor = if f64::from(g) > clip_norm {
                clip_norm / f64::from(g)
            } else {
                1.0
            };
            (factor / expected) as f32
        })
        .collect();
    net.loss_and_gradient(rows, y, Some(&weights), grad);
}

fn train_dp(
    net: &mut Network,
    data: &Dataset,
    plan: &LocalPlan<'_>,
    dp: &LocalDp,
    rng: &mut SeededRng,
) -> Result<FitStats, LearnError> {
    if !(dp.noise_multiplier.is_finite() && dp.noise_multiplier >= 0.0) {
        return Err(LearnError::Config(format!(
            "DP-SGD noise multiplier {} must be >= 0",
            dp.noise_multiplier
        )));
    }
    if !(dp.clip_norm.is_finite() && dp.clip_norm > 0.0) {
        return Err(LearnError::Config(format!(
            "DP-SGD clipping norm {} must be positive",
            dp.clip_norm
        )));
    }
    let n = data.n_rows();
    let q = plan.sampling_rate(n);
    let expected = q * n as f64;
    let n_steps = plan.n_steps(n)?;
    let mut grad = net.parameters().zeros_like();
    let mut optimizer = Optimizer::new(&plan.training.optimizer, grad.n_values());
    let mut noise = tessera_privacy::GaussianNoise::new(dp.noise_key, dp.stream);
    let noise_std = dp.noise_multiplier * dp.clip_norm / expected;
    let mut chosen = Vec::new();
    for step in 0..n_steps {
        // Poisson sampling: every row independently with probability q.
        chosen.clear();
        chosen.extend((0..n).filter(|_| rng.next_f64() < q));
        if chosen.is_empty() {
            grad.values_mut().for_each(|g| *g = 0.0);
        } else {
            let rows = data.x.select(ndarray::Axis(0), &chosen);
            let y: Vec<u32> = chosen.iter().map(|&i| data.y[i]).collect();
            clipped_gradient(net, rows.view(), &y, dp.clip_norm, expected, &mut grad);
        }
        for tensor in grad.tensors_mut() {
            noise.perturb(tensor.data_mut(), noise_std);
        }
        if grad.check_finite().is_err() {
            return Err(LearnError::Diverged { step });
        }
        add_strategy_terms(&mut grad, net, plan);
        optimizer.step(net.params_mut(), &grad);
    }
    if net.parameters().check_finite().is_err() {
        return Err(LearnError::Diverged { step: n_steps });
    }
    Ok(FitStats {
        n_steps,
        mean_train_loss: 0.0,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ndarray::Array2;

    use super::*;
    use crate::config::{ModelConfig, ModelKind};

    fn rows(n: usize, d: usize) -> (Array2<f32>, Vec<u32>) {
        let mut rng = SeededRng::new(3);
        let x = Array2::from_shape_fn((n, d), |_| (rng.next_f64() * 4.0 - 2.0) as f32);
        let y = (0..n).map(|i| (i % 3) as u32).collect();
        (x, y)
    }

    /// The one-pass weighted gradient equals clipping and summing each
    /// example's own gradient, computed one example at a time.
    #[test]
    fn clipped_gradient_equals_the_sum_of_clipped_per_example_gradients() {
        let mut config = ModelConfig::of_kind(ModelKind::Mlp);
        config.hidden = vec![7, 5];
        let net = Network::new(&config, 4, 3, 11).unwrap();
        let (x, y) = rows(12, 4);
        let (clip, expected) = (0.3, 9.0);
        let mut fast = net.parameters().zeros_like();
        clipped_gradient(&net, x.view(), &y, clip, expected, &mut fast);

        let mut reference = vec![0f64; fast.n_values()];
        let mut one = net.parameters().zeros_like();
        let mut clipped_any = false;
        for i in 0..y.len() {
            let row = x.slice(ndarray::s![i..i + 1, ..]);
            net.loss_and_gradient(row, &y[i..i + 1], None, &mut one);
            let norm = one.l2_norm();
            let scale = if norm > clip { clip / norm } else { 1.0 };
            clipped_any |= norm > clip;
            for (r, g) in reference.iter_mut().zip(one.values()) {
                *r += f64::from(g) * scale / expected;
            }
        }
        assert!(clipped_any, "the test must exercise clipping");
        for (a, b) in fast.values().zip(&reference) {
            assert!((f64::from(a) - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn dp_sgd_trains_and_its_noise_is_keyed() {
        let config = ModelConfig::of_kind(ModelKind::Softmax);
        let (x, y) = rows(300, 4);
        let data = Dataset { x, y };
        let training = TrainingConfig {
            epochs: Some(2),
            batch_size: 30,
            ..TrainingConfig::default()
        };
        let fit = |key: [u8; 32], sigma: f64| {
            let mut net = Network::new(&config, 4, 3, 1).unwrap();
            let plan = LocalPlan {
                dp: Some(LocalDp {
                    noise_multiplier: sigma,
                    clip_norm: 1.0,
                    noise_key: key,
                    stream: 1,
                }),
                ..LocalPlan::plain(&training)
            };
            let stats = train(&mut net, &data, &plan, &mut SeededRng::new(5)).unwrap();
            assert_eq!(stats.n_steps, 20);
            assert_eq!(stats.mean_train_loss, 0.0, "not released under DP");
            net.parameters().clone()
        };
        assert_eq!(fit([1; 32], 1.0), fit([1; 32], 1.0));
        assert_ne!(fit([1; 32], 1.0), fit([2; 32], 1.0));
        assert_eq!(fit([1; 32], 0.0), fit([2; 32], 0.0));
    }
}
