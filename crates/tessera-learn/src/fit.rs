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
    /// Per-FedAvg's first-order meta step with this inner step size
    /// `alpha`: each step takes two batches, adapts a copy of the model by
    /// one plain gradient step of size `alpha` on the first, and moves the
    /// model by the optimiser with the adapted copy's gradient on the
    /// second (no DP).
    pub meta: Option<f32>,
}

impl<'a> LocalPlan<'a> {
    /// Plain local training with nothing added.
    pub fn plain(training: &'a TrainingConfig) -> Self {
        Self {
            training,
            term: None,
            dp: None,
            meta: None,
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
        if plan.meta.is_some() {
            return Err(LearnError::Config(
                "Per-FedAvg's meta steps do not run under DP-SGD".into(),
            ));
        }
        return train_dp(net, data, plan, &dp, rng);
    }
    let inner_lr = match plan.meta {
        Some(alpha) if !(alpha.is_finite() && alpha > 0.0) => {
            return Err(LearnError::Config(format!(
                "Per-FedAvg's inner step size {alpha} must be positive"
            )));
        }
        meta => meta,
    };
    let n_steps = plan.n_steps(n)?;
    let mut grad = net.parameters().zeros_like();
    let mut optimizer = Optimizer::new(&plan.training.optimizer, grad.n_values());
    let mut batches = Batches::new(data, plan.training.batch_size, rng);
    // Per-FedAvg's adapted copy.
    let mut adapted = inner_lr.map(|_| net.clone());
    let mut loss_sum = 0.0;
    for step in 0..n_steps {
        let (rows, y) = batches.next(rng);
        let mut loss = net.loss_and_gradient(rows, y, None, &mut grad);
        if let (Some(alpha), Some(adapted)) = (inner_lr, adapted.as_mut()) {
            // w' = w - alpha * g(w; first batch); the step's gradient is
            // g(w'; second batch), applied to w (first-order Per-FedAvg).
            let params = adapted.params_mut();
            for ((a, w), g) in params
                .values_mut()
                .zip(net.parameters().values())
                .zip(grad.values())
            {
                *a = w - alpha * g;
            }
            if !loss.is_finite() {
                return Err(LearnError::Diverged { step });
            }
            let (rows, y) = batches.next(rng);
            loss = adapted.loss_and_gradient(rows, y, None, &mut grad);
        }
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
        start_loss: None,
    })
}

/// Mini-batches of `data` in a fresh random order at each pass; the last
/// batch of a pass may be short.
struct Batches<'a> {
    data: &'a Dataset,
    batch_size: usize,
    order: Vec<usize>,
    position: usize,
    x: ndarray::Array2<f32>,
    y: Vec<u32>,
}

impl<'a> Batches<'a> {
    fn new(data: &'a Dataset, batch_size: usize, rng: &mut SeededRng) -> Self {
        let n = data.n_rows();
        Self {
            data,
            batch_size,
            order: rng.permutation(n),
            position: 0,
            x: ndarray::Array2::<f32>::zeros((batch_size.min(n), data.n_features())),
            y: Vec::with_capacity(batch_size.min(n)),
        }
    }

    /// The next batch's rows and labels.
    fn next(&mut self, rng: &mut SeededRng) -> (ndarray::ArrayView2<'_, f32>, &[u32]) {
        let n = self.data.n_rows();
        if self.position >= n {
            self.order = rng.permutation(n);
            self.position = 0;
        }
        let batch = &self.order[self.position..(self.position + self.batch_size).min(n)];
        self.position += self.batch_size;
        self.y.clear();
        for (k, &i) in batch.iter().enumerate() {
            self.data.x.write_row(i, self.x.row_mut(k));
            self.y.push(self.data.y[i]);
        }
        (self.x.slice(ndarray::s![..batch.len(), ..]), &self.y)
    }
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
            let rows = data.x.select(&chosen);
            let rows = rows.dense();
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
        start_loss: None,
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

    /// With full batches, a Per-FedAvg step is `w - beta * g(w - alpha *
    /// g(w))`, computed here from the network's gradient directly.
    #[test]
    fn a_meta_step_moves_by_the_gradient_at_the_adapted_point() {
        let mut config = ModelConfig::of_kind(ModelKind::Mlp);
        config.hidden = vec![5];
        let (x, y) = rows(24, 4);
        let data = Dataset { x: x.into(), y };
        let (alpha, beta) = (0.3f32, 0.2f32);
        let mut training = TrainingConfig {
            steps: Some(2),
            epochs: None,
            batch_size: 24,
            ..TrainingConfig::default()
        };
        training.optimizer.lr = beta;
        let start = Network::new(&config, 4, 3, 7).unwrap();

        let mut expected = start.clone();
        let mut g = expected.parameters().zeros_like();
        for _ in 0..2 {
            expected.loss_and_gradient(data.x.dense().view(), &data.y, None, &mut g);
            let mut adapted = expected.clone();
            adapted.params_mut().add_scaled(&g, -alpha).unwrap();
            adapted.loss_and_gradient(data.x.dense().view(), &data.y, None, &mut g);
            expected.params_mut().add_scaled(&g, -beta).unwrap();
        }

        let mut net = start.clone();
        let plan = LocalPlan {
            meta: Some(alpha),
            ..LocalPlan::plain(&training)
        };
        let stats = train(&mut net, &data, &plan, &mut SeededRng::new(5)).unwrap();
        assert_eq!(stats.n_steps, 2);
        // Full batches in another order sum in another order: equal to
        // float rounding.
        for (a, b) in net
            .parameters()
            .values()
            .zip(expected.parameters().values())
        {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // Not the plain step: the adaptation matters.
        let mut plain = start.clone();
        train(
            &mut plain,
            &data,
            &LocalPlan::plain(&training),
            &mut SeededRng::new(5),
        )
        .unwrap();
        let apart = plain
            .parameters()
            .values()
            .zip(net.parameters().values())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(apart > 1e-3, "{apart}");

        for bad in [0.0, -1.0, f32::NAN] {
            let plan = LocalPlan {
                meta: Some(bad),
                ..LocalPlan::plain(&training)
            };
            let err = train(&mut net, &data, &plan, &mut SeededRng::new(5)).unwrap_err();
            assert!(err.to_string().contains("inner step size"), "{err}");
        }
    }

    #[test]
    fn dp_sgd_trains_and_its_noise_is_keyed() {
        let config = ModelConfig::of_kind(ModelKind::Softmax);
        let (x, y) = rows(300, 4);
        let data = Dataset { x: x.into(), y };
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
