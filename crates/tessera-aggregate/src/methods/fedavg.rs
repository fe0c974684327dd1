//! FedAvg and its server-only family (FedAvgM, FedProx's server, FedOpt).

use tessera_core::{ParameterSet, ParticipantId};

use crate::{AggregateError, Attendance, Instructions, RoundAggregate, Strategy};

/// `global + server_lr * step`, layout checked.
pub(crate) fn moved(
    global: &ParameterSet,
    step: &ParameterSet,
    server_lr: f32,
) -> Result<ParameterSet, AggregateError> {
    let mut next = global.clone();
    next.add_scaled(step, server_lr)?;
    Ok(next)
}

/// Federated averaging (McMahan et al. 2017): the example-weighted mean of the
/// participants' changes, scaled by a server learning rate (1 is plain FedAvg).
#[derive(Debug, Clone)]
pub struct FedAvg {
    /// Server learning rate.
    pub server_lr: f32,
}

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        "fedavg"
    }

    fn configure_fit(&self, _global: &ParameterSet, _site: &ParticipantId) -> Instructions {
        Instructions::Plain
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

/// FedAvg with server momentum (Hsu et al. 2019): `v = βv + Δ`, `x += η v`.
#[derive(Debug, Clone)]
pub struct FedAvgM {
    /// Server learning rate η.
    pub server_lr: f32,
    /// Momentum β.
    pub momentum: f32,
    velocity: Option<ParameterSet>,
}

impl FedAvgM {
    /// FedAvgM with fresh momentum.
    pub fn new(server_lr: f32, momentum: f32) -> Self {
        Self {
            server_lr,
            momentum,
            velocity: None,
        }
    }
}

impl Strategy for FedAvgM {
    fn name(&self) -> &'static str {
        "fedavgm"
    }

    fn configure_fit(&self, _global: &ParameterSet, _site: &ParticipantId) -> Instructions {
        Instructions::Plain
    }

    fn aggregate_fit(
        &mut self,
        global: &ParameterSet,
        round: &RoundAggregate,
        _attendance: &Attendance,
    ) -> Result<ParameterSet, AggregateError> {
        global.check_same_layout(&round.mean_delta)?;
        let velocity = match self.velocity.clone() {
            Some(mut v) => {
                for (v, d) in v.values_mut().zip(round.mean_delta.values()) {
                    *v = self.momentum * *v + d;
                }
                v
            }
            None => round.mean_delta.clone(),
        };
        let next = moved(global, &velocity, self.server_lr)?;
        next.check_finite()?;
        self.velocity = Some(velocity);
        Ok(next)
    }
}

/// FedProx (Li et al. 2020): FedAvg whose participants add a proximal term
/// `mu/2 ||w - w_global||²` to their local loss.
#[derive(Debug, Clone)]
pub struct FedProx {
    /// Proximal weight mu.
    pub mu: f32,
    /// Server learning rate.
    pub server_lr: f32,
}

impl Strategy for FedProx {
    fn name(&self) -> &'static str {
        "fedprox"
    }

    fn configure_fit(&self, _global: &ParameterSet, _site: &ParticipantId) -> Instructions {
        Instructions::Proximal { mu: self.mu }
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

/// Which adaptive server optimiser (Reddi et al. 2021).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FedOptVariant {
    /// `v = β2 v + (1 - β2) Δ²`
    Adam,
    /// `v = v - (1 - β2) Δ² sign(v - Δ²)`
    Yogi,
    /// `v = v + Δ²`
    Adagrad,
}

/// Adaptive federated optimisation (Reddi et al., ICLR 2021): the mean change
/// Δ is a pseudo-gradient for a server optimiser, `m = β1 m + (1 - β1) Δ`,
/// `v` per the variant, `x += η m / (sqrt(v) + τ)`, without bias correction
/// as in the paper's Algorithm 2. `m` and `v` start at zero as in FLamby (the
/// paper allows any `v ≥ τ²`; τ in the denominator keeps the first step finite).
#[derive(Debug, Clone)]
pub struct FedOpt {
    /// Adam, Yogi or Adagrad.
    pub variant: FedOptVariant,
    /// Server learning rate η.
    pub server_lr: f32,
    /// First-moment decay β1.
    pub beta1: f32,
    /// Second-moment decay β2 (unused by Adagrad).
    pub beta2: f32,
    /// Adaptivity τ.
    pub tau: f32,
    moments: Option<(ParameterSet, ParameterSet)>,
}

impl FedOpt {
    /// A server optimiser with zero moments.
    pub fn new(variant: FedOptVariant, server_lr: f32, beta1: f32, beta2: f32, tau: f32) -> Self {
        Self {
            variant,
            server_lr,
            beta1,
            beta2,
            tau,
            moments: None,
        }
    }
}

impl Strategy for FedOpt {
    fn name(&self) -> &'static str {
        match self.variant {
            FedOptVariant::Adam => "fedadam",
            FedOptVariant::Yogi => "fedyogi",
            FedOptVariant::Adagrad => "fedadagrad",
        }
    }

    fn configure_fit(&self, _global: &ParameterSet, _site: &ParticipantId) -> Instructions {
        Instructions::Plain
    }

    fn aggregate_fit(
        &mut self,
        global: &ParameterSet,
        round: &RoundAggregate,
        _attendance: &Attendance,
    ) -> Result<ParameterSet, AggregateError> {
        global.check_same_layout(&round.mean_delta)?;
        let (mut m, mut v) = self
            .moments
            .clone()
            .unwrap_or_else(|| (global.zeros_like(), global.zeros_like()));
        let mut next = global.clone();
        let (b1, b2) = (self.beta1, self.beta2);
        for (((x, d), m), v) in next
            .values_mut()
            .zip(round.mean_delta.values())
            .zip(m.values_mut())
            .zip(v.values_mut())
        {
            *m = b1 * *m + (1.0 - b1) * d;
            let d2 = d * d;
            *v = match self.variant {
                FedOptVariant::Adam => b2 * *v + (1.0 - b2) * d2,
                FedOptVariant::Yogi => *v - (1.0 - b2) * d2 * sign(*v - d2),
                FedOptVariant::Adagrad => *v + d2,
            };
            *x += self.server_lr * *m / (v.sqrt() + self.tau);
        }
        next.check_finite()?;
        self.moments = Some((m, v));
        Ok(next)
    }
}

/// numpy's sign: -1, 0 or 1.
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testing::{NONE_FAILED, round, set, values};
    use tessera_core::Tensor;

    #[test]
    fn the_fedavg_family_ignores_failures() {
        let id = ParticipantId::new;
        let failed = Attendance {
            cohort: vec![id("a"), id("b"), id("c")],
            counted: vec![id("a")],
            failures: vec![
                (id("b"), crate::Failure::Dropped),
                (id("c"), crate::Failure::Refused("non-finite".into())),
            ],
        };
        // IFCA's model stacks its clusters (its own test covers it).
        for kind in crate::StrategyKind::ALL
            .into_iter()
            .filter(|k| *k != crate::StrategyKind::Ifca)
        {
            let config = crate::StrategyConfig {
                lipschitz: Some(10.0),
                ..Default::default()
            };
            let (mut with, mut without) =
                (config.build(kind).unwrap(), config.build(kind).unwrap());
            // Two layers, so that the personal strategies keep a shared body.
            let layers = |v: f32| {
                let mut p = ParameterSet::new();
                for name in ["body.w", "head.w"] {
                    p.push(name, Tensor::new(vec![1], vec![v]).expect("shape"))
                        .expect("distinct names");
                }
                p
            };
            let mut x = (layers(0.5), layers(0.5));
            for d in [0.25f32, -1.0] {
                let mut r = round(&[d]);
                r.mean_delta = layers(d);
                r.aux_step = with.aux_sum().map(|_| layers(0.0));
                x.0 = with.aggregate_fit(&x.0, &r, &failed).unwrap();
                x.1 = without.aggregate_fit(&x.1, &r, &NONE_FAILED).unwrap();
            }
            assert_eq!(values(&x.0), values(&x.1), "{kind}");
        }
    }

    #[test]
    fn fedavgm_accumulates_velocity() {
        let mut s = FedAvgM::new(1.0, 0.5);
        let x1 = s
            .aggregate_fit(&set(&[0.0]), &round(&[1.0]), &NONE_FAILED)
            .unwrap();
        assert_eq!(values(&x1), [1.0]);
        let x2 = s.aggregate_fit(&x1, &round(&[1.0]), &NONE_FAILED).unwrap();
        assert_eq!(values(&x2), [2.5]); // v = 0.5 * 1 + 1
    }

    #[test]
    fn fedopt_variants_match_hand_computation() {
        // Two rounds with Δ = 0.1 then -0.2, η = 0.01, β1 = 0.9, β2 = 0.999, τ = 1e-8.
        let (eta, b1, b2, tau) = (0.01f64, 0.9f64, 0.999f64, 1e-8f64);
        for variant in [
            FedOptVariant::Adam,
            FedOptVariant::Yogi,
            FedOptVariant::Adagrad,
        ] {
            let mut s = FedOpt::new(variant, eta as f32, b1 as f32, b2 as f32, tau as f32);
            let (mut x, mut m, mut v) = (0.0f64, 0.0f64, 0.0f64);
            let mut current = set(&[0.0]);
            for d in [0.1f64, -0.2] {
                m = b1 * m + (1.0 - b1) * d;
                v = match variant {
                    FedOptVariant::Adam => b2 * v + (1.0 - b2) * d * d,
                    FedOptVariant::Yogi => v - (1.0 - b2) * d * d * (v - d * d).signum(),
                    FedOptVariant::Adagrad => v + d * d,
                };
                x += eta * m / (v.sqrt() + tau);
                current = s
                    .aggregate_fit(&current, &round(&[d as f32]), &NONE_FAILED)
                    .unwrap();
                let got = f64::from(values(&current)[0]);
                assert!(
                    (got - x).abs() < 1e-4 * x.abs().max(1e-3),
                    "{variant:?}: {got} vs {x}"
                );
            }
        }
    }

    #[test]
    fn a_non_finite_result_leaves_the_strategy_state_unchanged() {
        // A huge server rate overflows f32: the round fails, and the next round
        // behaves as if the failed one never happened.
        for make in [
            || Box::new(FedAvgM::new(3e38, 0.9)) as Box<dyn Strategy>,
            || {
                Box::new(FedOpt::new(FedOptVariant::Adam, 3e38, 0.9, 0.99, 1e-3))
                    as Box<dyn Strategy>
            },
        ] {
            let mut failing = make();
            let mut fresh = make();
            assert!(
                failing
                    .aggregate_fit(&set(&[0.0]), &round(&[1e3]), &NONE_FAILED)
                    .is_err()
            );
            let a = failing.aggregate_fit(&set(&[0.0]), &round(&[1e-40]), &NONE_FAILED);
            let b = fresh.aggregate_fit(&set(&[0.0]), &round(&[1e-40]), &NONE_FAILED);
            assert_eq!(a.map(|p| values(&p)), b.map(|p| values(&p)));
        }
    }
}
