//! IFCA (Ghosh, Chung, Yin, Ramchandran, NeurIPS 2020, "An Efficient
//! Framework for Clustered Federated Learning"): `k` cluster models. Each
//! round every site takes the cluster whose model has the lowest loss on its
//! own training rows, trains that model, and each cluster model moves by the
//! example-weighted mean of its members' changes (the paper's model
//! averaging); a cluster no site took stays as it was. A site's
//! personalized model is its cluster's. The clusters start from `k`
//! different initialisations, or the sites would never tell them apart.
//!
//! The round loop is the simulator's (`tessera-sim`'s `ifca.rs`): the
//! federation's model is the `k` cluster models together, which no other
//! strategy's round carries; the coordinator refuses IFCA for now.

use tessera_core::{ParameterSet, ParticipantId};

use crate::{AggregateError, Attendance, Instructions, Needs, RoundAggregate, Strategy};

/// The most clusters a plan may ask for.
pub const MAX_CLUSTERS: u32 = 16;

/// IFCA's server part: the cluster choice and each cluster's average.
#[derive(Debug, Clone)]
pub struct Ifca {
    /// How many cluster models.
    pub clusters: u32,
    /// Server learning rate (each cluster's).
    pub server_lr: f32,
}

impl Ifca {
    /// What IFCA needs: synchronous flat rounds (the simulator's loop) and
    /// a cluster model per site to report (no local DP, built-in models).
    pub const NEEDS: Needs = Needs {
        sync_rounds: true,
        plain_sgd: false,
        clear_aux_sum: None,
        flat_only: true,
        server_copies: 0,
        site_copies: 0,
        personal: true,
        meta_steps: false,
    };

    /// The cluster of the lowest of `losses` (one per cluster; the first of
    /// equal ones); `None` when none is a finite number.
    pub fn choose(losses: &[f64]) -> Option<usize> {
        losses
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .fold(None, |best: Option<(usize, f64)>, (i, &l)| match best {
                Some((_, b)) if b <= l => best,
                _ => Some((i, l)),
            })
            .map(|(i, _)| i)
    }

    /// Cluster model `model` moved by the weighted mean of its members'
    /// changes (`(change, weight)`, in a fixed order; the sum is taken in
    /// f64); `model` itself when it has none or their weights sum to 0.
    pub fn aggregate(
        &self,
        model: &ParameterSet,
        members: &[(&ParameterSet, f64)],
    ) -> Result<ParameterSet, AggregateError> {
        let total: f64 = members.iter().map(|(_, w)| *w).sum();
        if members.is_empty() || !(total.is_finite() && total > 0.0) {
            return Ok(model.clone());
        }
        let mut sum = vec![0.0f64; model.n_values()];
        for (change, weight) in members {
            change.check_same_layout(model)?;
            for (s, v) in sum.iter_mut().zip(change.values()) {
                *s += weight * f64::from(v);
            }
        }
        let mut next = model.clone();
        let step = f64::from(self.server_lr) / total;
        for (m, s) in next.values_mut().zip(&sum) {
            *m += (s * step) as f32;
        }
        next.check_finite()?;
        Ok(next)
    }
}

impl Strategy for Ifca {
    fn name(&self) -> &'static str {
        "ifca"
    }

    fn configure_fit(&self, _global: &ParameterSet, _site: &ParticipantId) -> Instructions {
        Instructions::Plain
    }

    /// Never called: IFCA's rounds are the simulator's own loop, whose
    /// model is the `k` cluster models.
    fn aggregate_fit(
        &mut self,
        _global: &ParameterSet,
        _round: &RoundAggregate,
        _attendance: &Attendance,
    ) -> Result<ParameterSet, AggregateError> {
        Err(AggregateError::Config(
            "ifca: its rounds carry one model per cluster, which only the simulator runs yet"
                .into(),
        ))
    }
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
    fn a_site_takes_the_cluster_of_its_lowest_loss() {
        assert_eq!(Ifca::choose(&[0.7, 0.2, 0.9]), Some(1));
        assert_eq!(Ifca::choose(&[0.5, 0.5]), Some(0));
        assert_eq!(Ifca::choose(&[f64::NAN, 3.0]), Some(1));
        assert_eq!(Ifca::choose(&[f64::NAN, f64::INFINITY]), None);
        assert_eq!(Ifca::choose(&[]), None);
    }

    #[test]
    fn a_cluster_moves_by_its_members_weighted_mean_change() {
        let ifca = Ifca {
            clusters: 2,
            server_lr: 1.0,
        };
        let model = set(&[1.0, 1.0]);
        let (a, b) = (set(&[3.0, 0.0]), set(&[0.0, 3.0]));
        // (3, 0) * 2/3 + (0, 3) * 1/3 = (2, 1).
        let next = ifca.aggregate(&model, &[(&a, 2.0), (&b, 1.0)]).unwrap();
        assert_eq!(next.values().collect::<Vec<_>>(), [3.0, 2.0]);
        // No member: as it was.
        assert_eq!(ifca.aggregate(&model, &[]).unwrap(), model);
        assert!(ifca.aggregate(&model, &[(&set(&[1.0]), 1.0)]).is_err());
    }
}
