//! FedDyn's server part (Acar et al. 2021, "Federated Learning Based on
//! Dynamic Regularization"): the state `h` and the global step. Its local
//! part is [`crate::FedDynLocal`].

use tessera_core::{ParameterSet, ParticipantId, Update};

use crate::{AggregateError, Attendance, Instructions, Needs, RoundAggregate, Strategy};

/// FedDyn: each participant `k` minimises
/// `L_k(θ) - <g_k, θ> + α/2 ||θ - θ_global||²` and moves its `g_k` by
/// `-α Δ_k`; the server keeps `h`, the federation's mean of the `g_k`:
/// `h ← h - α Σ_{k in round} Δ_k / N` and `θ ← θ + mean_k Δ_k - h / α`
/// (uniform weights, as in the paper's Algorithm 1). At a fixed point every
/// `Δ_k` is zero and `Σ_k ∇L_k(θ) = 0`: the federation's optimum, which
/// FedAvg with many local steps misses on heterogeneous sites.
#[derive(Debug, Clone)]
pub struct FedDyn {
    /// The regularisation weight α.
    pub alpha: f32,
    h: Option<ParameterSet>,
}

impl FedDyn {
    /// What FedDyn needs from the plan: each site's `g_k` stays in step
    /// with synchronous rounds and a flat topology; the server keeps `h`,
    /// a site `g_k` and its pending value.
    pub const NEEDS: Needs = Needs {
        sync_rounds: true,
        plain_sgd: false,
        clear_aux_sum: None,
        flat_only: true,
        server_copies: 1,
        site_copies: 2,
        personal: false,
        meta_steps: false,
    };

    /// FedDyn with `h = 0`.
    pub fn new(alpha: f32) -> Self {
        Self { alpha, h: None }
    }
}

impl Strategy for FedDyn {
    fn name(&self) -> &'static str {
        "feddyn"
    }

    fn configure_fit(&self, _global: &ParameterSet, _site: &ParticipantId) -> Instructions {
        Instructions::FedDyn { alpha: self.alpha }
    }

    fn weight(&self, _update: &Update) -> f64 {
        1.0
    }

    fn aggregate_fit(
        &mut self,
        global: &ParameterSet,
        round: &RoundAggregate,
        _attendance: &Attendance,
    ) -> Result<ParameterSet, AggregateError> {
        global.check_same_layout(&round.mean_delta)?;
        let n = round.n_participants.max(round.n_updates).max(1) as f32;
        // Σ_k Δ_k / N from the round's mean over its n_updates members.
        let share = round.n_updates as f32 / n;
        let alpha = self.alpha;
        let mut h = self.h.clone().unwrap_or_else(|| global.zeros_like());
        let mut next = global.clone();
        for ((h, x), d) in h
            .values_mut()
            .zip(next.values_mut())
            .zip(round.mean_delta.values())
        {
            *h -= alpha * share * d;
            *x += d - *h / alpha;
        }
        next.check_finite()?;
        h.check_finite()?;
        self.h = Some(h);
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testing::{NONE_FAILED, round_of as round, set};

    #[test]
    fn the_server_step_matches_the_paper_by_hand() {
        let mut s = FedDyn::new(0.5);
        // Round 1: 2 of 4 sites, mean change 0.2: h = -0.5 * (2/4) * 0.2 = -0.05,
        // θ = 1 + 0.2 + 0.05 / 0.5 = 1.3.
        let x1 = s
            .aggregate_fit(&set(&[1.0]), &round(&[0.2], 2, 4), &NONE_FAILED)
            .unwrap();
        assert!((x1.values().next().unwrap() - 1.3).abs() < 1e-6);
        // Round 2: all 4, mean change -0.1: h = -0.05 + 0.5 * 0.1 = 0,
        // θ = 1.3 - 0.1 - 0 = 1.2.
        let x2 = s
            .aggregate_fit(&x1, &round(&[-0.1], 4, 4), &NONE_FAILED)
            .unwrap();
        assert!((x2.values().next().unwrap() - 1.2).abs() < 1e-6);
        assert_eq!(
            s.configure_fit(&x2, &ParticipantId::new("a")),
            Instructions::FedDyn { alpha: 0.5 }
        );
        assert_eq!(
            s.weight(&Update {
                delta: set(&[0.0]),
                n_examples: 99,
                aux: None,
                stats: Default::default(),
            }),
            1.0
        );
    }

    #[test]
    fn a_failed_step_leaves_h_as_it_was() {
        let mut failing = FedDyn::new(1e-30);
        let mut fresh = FedDyn::new(1e-30);
        assert!(
            failing
                .aggregate_fit(&set(&[0.0]), &round(&[3e38], 1, 1), &NONE_FAILED)
                .is_err()
        );
        let a = failing
            .aggregate_fit(&set(&[0.0]), &round(&[0.0], 1, 1), &NONE_FAILED)
            .unwrap();
        let b = fresh
            .aggregate_fit(&set(&[0.0]), &round(&[0.0], 1, 1), &NONE_FAILED)
            .unwrap();
        assert_eq!(a, b);
    }
}
