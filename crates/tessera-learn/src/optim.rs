//! SGD and Adam over the flat values of a parameter set.

use tessera_core::ParameterSet;

use crate::config::{OptimizerConfig, OptimizerKind};

/// Optimiser state for one local training run.
#[derive(Debug, Clone)]
pub struct Optimizer {
    config: OptimizerConfig,
    /// SGD: momentum buffer; Adam: first moment.
    first: Vec<f32>,
    /// Adam: second moment.
    second: Vec<f32>,
    steps: i32,
}

impl Optimizer {
    /// Fresh state for parameters with `n_values` values.
    pub fn new(config: &OptimizerConfig, n_values: usize) -> Self {
        let needs_first = config.optimizer == OptimizerKind::Adam || config.momentum > 0.0;
        Self {
            config: config.clone(),
            first: if needs_first {
                vec![0.0; n_values]
            } else {
                Vec::new()
            },
            second: if config.optimizer == OptimizerKind::Adam {
                vec![0.0; n_values]
            } else {
                Vec::new()
            },
            steps: 0,
        }
    }

    /// One step: `params` moves against `grad` (same layout, checked by the caller).
    pub fn step(&mut self, params: &mut ParameterSet, grad: &ParameterSet) {
        self.steps = self.steps.saturating_add(1);
        let c = &self.config;
        let wd = c.weight_decay;
        let values = params.values_mut().zip(grad.values());
        match c.optimizer {
            OptimizerKind::Sgd if c.momentum > 0.0 => {
                for ((w, g), v) in values.zip(self.first.iter_mut()) {
                    let g = g + wd * *w;
                    *v = if self.steps == 1 {
                        g
                    } else {
                        c.momentum * *v + g
                    };
                    *w -= c.lr * *v;
                }
            }
            OptimizerKind::Sgd => {
                for (w, g) in values {
                    *w -= c.lr * (g + wd * *w);
                }
            }
            OptimizerKind::Adam => {
                let bias1 = 1.0 - c.beta1.powi(self.steps);
                let bias2_sqrt = (1.0 - c.beta2.powi(self.steps)).sqrt();
                let step_size = c.lr / bias1;
                for (((w, g), m), v) in values
                    .zip(self.first.iter_mut())
                    .zip(self.second.iter_mut())
                {
                    let g = g + wd * *w;
                    *m = c.beta1 * *m + (1.0 - c.beta1) * g;
                    *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
                    *w -= step_size * *m / (v.sqrt() / bias2_sqrt + c.eps);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::Tensor;

    fn single(v: f32) -> ParameterSet {
        let mut p = ParameterSet::new();
        p.push("w", Tensor::new(vec![1], vec![v]).unwrap()).unwrap();
        p
    }

    #[test]
    fn sgd_with_momentum_matches_hand_steps() {
        let config = OptimizerConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
            ..OptimizerConfig::default()
        };
        let mut opt = Optimizer::new(&config, 1);
        let mut w = single(1.0);
        // step 1: g = 2 + 0.01*1 = 2.01, v = 2.01, w = 1 - 0.201 = 0.799
        opt.step(&mut w, &single(2.0));
        assert!((w.values().next().unwrap() - 0.799).abs() < 1e-6);
        // step 2: g = 2 + 0.00799, v = 0.9*2.01 + 2.00799 = 3.81699, w = 0.799 - 0.381699
        opt.step(&mut w, &single(2.0));
        assert!((w.values().next().unwrap() - 0.417_301).abs() < 1e-5);
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        // With bias correction Adam's first step is lr * sign(g) (up to eps).
        let config = OptimizerConfig {
            optimizer: OptimizerKind::Adam,
            lr: 0.01,
            ..OptimizerConfig::default()
        };
        let mut opt = Optimizer::new(&config, 1);
        let mut w = single(0.5);
        opt.step(&mut w, &single(-3.0));
        assert!((w.values().next().unwrap() - 0.51).abs() < 1e-6);
        // Second step with the same gradient: m̂ = g, v̂ = g², still lr.
        opt.step(&mut w, &single(-3.0));
        assert!((w.values().next().unwrap() - 0.52).abs() < 1e-6);
    }
}
