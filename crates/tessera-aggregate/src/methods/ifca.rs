//! IFCA (Ghosh, Chung, Yin, Ramchandran, NeurIPS 2020, "An Efficient
//! Framework for Clustered Federated Learning"): `k` cluster models. Each
//! round every site takes the cluster whose model has the lowest loss on its
//! own training rows, trains that model, and each cluster model moves by the
//! example-weighted mean of its members' changes (the paper's model
//! averaging); a cluster no site took stays as it was. A site's
//! personalized model is its cluster's. The clusters start from `k`
//! different initialisations, or the sites would never tell them apart.
//!
//! The federation's model is the `k` cluster models stacked into one set
//! ([`Ifca::stack`]: `c0/NAME`, ..., `c{k-1}/NAME`, then `ifca/shares`, the
//! share of the last round's examples each cluster took). A site's update
//! has the same layout: its trained cluster's change, zeros for the others,
//! and a one in its cluster's share. The weighted mean of such updates,
//! which the round engine forms in every runtime, holds each cluster's
//! `Σ w Δ / W` and its share `W_j / W`; their quotient is the members' mean
//! change. So the server never needs to know which site took which
//! cluster: only the sums.

use tessera_core::{LocalModel, ParameterSet, ParticipantId, Tensor};

use crate::local::{LocalAlgorithm, LocalFit, mismatch, put, restore_choice, save_choice, take};
use crate::{AggregateError, Attendance, Instructions, Needs, RoundAggregate, Strategy};

/// The most clusters a plan may ask for.
pub const MAX_CLUSTERS: u32 = 16;

/// The stacked model's last tensor: each cluster's share of the last
/// round's examples.
pub const SHARES: &str = "ifca/shares";

/// IFCA's server part: each cluster's average, over the stacked model.
#[derive(Debug, Clone)]
pub struct Ifca {
    /// How many cluster models.
    pub clusters: u32,
    /// Server learning rate (each cluster's).
    pub server_lr: f32,
}

impl Ifca {
    /// What IFCA needs: synchronous flat rounds and a cluster model per
    /// site to report (no local DP, built-in models).
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

    /// The cluster models as the federation's one model, with `shares`
    /// (one per cluster).
    pub fn stack(
        clusters: &[ParameterSet],
        shares: &[f32],
    ) -> Result<ParameterSet, AggregateError> {
        if clusters.len() != shares.len() || clusters.is_empty() {
            return Err(AggregateError::Config(format!(
                "ifca: {} cluster models with {} shares",
                clusters.len(),
                shares.len()
            )));
        }
        let mut stacked = ParameterSet::new();
        for (j, cluster) in clusters.iter().enumerate() {
            cluster.check_same_layout(&clusters[0])?;
            put(&mut stacked, &format!("c{j}"), cluster)?;
        }
        stacked.push(SHARES, Tensor::new(vec![shares.len()], shares.to_vec())?)?;
        Ok(stacked)
    }

    /// The cluster models and shares of a stacked model of `k` clusters;
    /// refused, naming what is wrong, for any other layout.
    pub fn unstack(
        stacked: &ParameterSet,
        k: usize,
    ) -> Result<(Vec<ParameterSet>, Vec<f32>), AggregateError> {
        let shares = stacked
            .get(SHARES)
            .filter(|t| t.len() == k)
            .ok_or_else(|| {
                AggregateError::Config(format!(
                    "ifca: the model is not {k} stacked cluster models (no '{SHARES}' of {k} values)"
                ))
            })?;
        let per = stacked.n_tensors().saturating_sub(1) / k.max(1);
        if per == 0 || per * k + 1 != stacked.n_tensors() {
            return Err(AggregateError::Config(format!(
                "ifca: {} tensors do not stack {k} cluster models",
                stacked.n_tensors()
            )));
        }
        let clusters: Vec<ParameterSet> = (0..k)
            .map(|j| {
                let cluster = take(stacked, &format!("c{j}"))?;
                if cluster.n_tensors() != per {
                    return Err(AggregateError::Config(format!(
                        "ifca: cluster {j} has {} tensors, not {per}",
                        cluster.n_tensors()
                    )));
                }
                cluster.check_same_layout(&take(stacked, "c0")?)?;
                Ok(cluster)
            })
            .collect::<Result<_, AggregateError>>()?;
        Ok((clusters, shares.data().to_vec()))
    }

    /// The run's one model: the cluster that took the largest share of the
    /// last round's examples (the first of equal ones; the first cluster
    /// before any round).
    pub fn served(stacked: &ParameterSet, k: usize) -> Result<ParameterSet, AggregateError> {
        let (mut clusters, shares) = Self::unstack(stacked, k)?;
        let largest = (0..k).fold(0, |best, j| if shares[j] > shares[best] { j } else { best });
        Ok(clusters.swap_remove(largest))
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
        Instructions::Ifca {
            clusters: self.clusters,
        }
    }

    /// A site's update must be one cluster's: its shares one 1 and zeros,
    /// every other cluster's change zero (a site that spread its weight,
    /// or sent a fraction of a share to steer a cluster by its inverse, is
    /// refused, saying so).
    fn check_update(
        &self,
        _from: &ParticipantId,
        update: &tessera_core::Update,
    ) -> Result<(), AggregateError> {
        let k = self.clusters as usize;
        let (changes, shares) = Self::unstack(&update.delta, k)?;
        let ones: Vec<usize> = (0..k).filter(|&j| shares[j] == 1.0).collect();
        let [chosen] = ones[..] else {
            return Err(AggregateError::Config(format!(
                "ifca: an update's shares must be one 1 and zeros, got {:?}",
                shares
            )));
        };
        for (j, (change, &share)) in changes.iter().zip(&shares).enumerate() {
            if j != chosen && (share != 0.0 || change.values().any(|v| v != 0.0)) {
                return Err(AggregateError::Config(format!(
                    "ifca: an update for cluster {chosen} changes cluster {j} too"
                )));
            }
        }
        Ok(())
    }

    /// Each cluster moves by `server_lr` times its slice of the round's
    /// mean change over its share (its members' weighted mean change); a
    /// cluster of no share stays. A cluster's weight, its share times the
    /// round's, is a whole number of examples, rounded to one before it
    /// divides, and the clusters' weights add up to the round's. The shares
    /// become the round's.
    fn aggregate_fit(
        &mut self,
        global: &ParameterSet,
        round: &RoundAggregate,
        _attendance: &Attendance,
    ) -> Result<ParameterSet, AggregateError> {
        let k = self.clusters as usize;
        let (mut clusters, _) = Self::unstack(global, k)?;
        let (changes, shares) = Self::unstack(&round.mean_delta, k)?;
        let taken = move_by_shares(
            ("ifca", "cluster"),
            (&mut clusters, &changes),
            &shares,
            round.weight_sum,
            self.server_lr,
        )?;
        let next = Self::stack(&clusters, &taken)?;
        next.check_finite()?;
        Ok(next)
    }
}

/// Moves each of `parts` (IFCA's clusters, multi-task's heads) by
/// `server_lr` times its slice of the round's mean change (`changes`) over
/// its share of the round's examples (`shares`, of the round's weight
/// `total`): its own members' weighted mean change. A part's weight, its
/// share times the round's, is a whole number of examples, rounded to one
/// before it divides; a part of no weight stays; the parts' weights must
/// add up to the round's. Returns the round's shares; errors name `what`
/// (the method, and what a part is).
pub(crate) fn move_by_shares(
    (method, part): (&str, &str),
    (parts, changes): (&mut [ParameterSet], &[ParameterSet]),
    shares: &[f32],
    total: f64,
    server_lr: f32,
) -> Result<Vec<f32>, AggregateError> {
    let mut taken = Vec::with_capacity(parts.len());
    for (j, (model, change)) in parts.iter_mut().zip(changes).enumerate() {
        let share = shares.get(j).copied().unwrap_or(f32::NAN);
        let weight = (f64::from(share) * total).round();
        if !(weight.is_finite() && weight >= 0.0 && weight <= total.round()) {
            return Err(AggregateError::Config(format!(
                "{method}: {part} {j}'s share of the round's examples is {}, not in [0, 1]",
                tessera_core::value(share)
            )));
        }
        if weight >= 1.0 {
            model.add_scaled(change, server_lr * (total / weight) as f32)?;
        }
        taken.push((weight / total) as f32);
    }
    let sum: f64 = taken.iter().map(|&t| (f64::from(t) * total).round()).sum();
    if (sum - total.round()).abs() > 0.5 {
        return Err(AggregateError::Config(format!(
            "{method}: the {part}s' weights add up to {sum}, not the round's {}",
            total.round()
        )));
    }
    Ok(taken)
}

/// IFCA's local part: the site's cluster, chosen each round by the lowest
/// loss on its training rows.
#[derive(Debug, Clone, Default)]
pub struct IfcaLocal {
    /// The cluster the site took at its last training, of how many.
    chosen: Option<(usize, usize)>,
}

impl IfcaLocal {
    /// The cluster the site took at its last training.
    pub fn chosen(&self) -> Option<usize> {
        self.chosen.map(|(j, _)| j)
    }
}

impl LocalAlgorithm for IfcaLocal {
    /// Measures every cluster model's loss on the site's training rows,
    /// trains the lowest's, and returns the stacked change: that cluster's
    /// change, zeros elsewhere, a one in its share.
    fn fit(
        &mut self,
        instructions: &Instructions,
        global: &ParameterSet,
        model: &mut dyn LocalModel,
    ) -> Result<LocalFit, AggregateError> {
        let Instructions::Ifca { clusters } = instructions else {
            return Err(mismatch("ifca", instructions));
        };
        let k = *clusters as usize;
        let (models, _) = Ifca::unstack(global, k)?;
        let losses: Vec<f64> = models
            .iter()
            .map(|m| model.loss(m))
            .collect::<Result<_, _>>()?;
        let chosen = Ifca::choose(&losses).ok_or_else(|| {
            AggregateError::Config("ifca: no cluster model has a finite loss here".into())
        })?;
        model.set_parameters(&models[chosen])?;
        let stats = model.train(None)?;
        let change = model.parameters().sub(&models[chosen])?;
        change.check_finite()?;
        let changes: Vec<ParameterSet> = (0..k)
            .map(|j| {
                if j == chosen {
                    change.clone()
                } else {
                    change.zeros_like()
                }
            })
            .collect();
        let shares: Vec<f32> = (0..k).map(|j| f32::from(u8::from(j == chosen))).collect();
        self.chosen = Some((chosen, k));
        Ok(LocalFit {
            delta: Ifca::stack(&changes, &shares)?,
            aux: None,
            stats,
        })
    }

    /// The model of the cluster the site took, as `global` has it.
    fn personal(&self, global: &ParameterSet) -> Option<ParameterSet> {
        let (chosen, k) = self.chosen?;
        Ifca::unstack(global, k)
            .ok()
            .map(|(mut models, _)| models.swap_remove(chosen))
    }

    fn cluster(&self) -> Option<usize> {
        self.chosen()
    }

    /// The cluster and the number of clusters, as two values.
    fn saved(&self) -> Option<ParameterSet> {
        let (chosen, k) = self.chosen?;
        save_choice("ifca/chosen", chosen, k)
    }

    /// Refused unless the saved state is a cluster below a number of
    /// clusters from 2 to [`MAX_CLUSTERS`].
    fn restore(&mut self, saved: &ParameterSet) -> Result<(), AggregateError> {
        self.chosen = Some(
            restore_choice(saved, "ifca/chosen", MAX_CLUSTERS as usize).ok_or_else(|| {
                AggregateError::Config(
                    "the saved state has no cluster below a number of clusters from 2 to 16".into(),
                )
            })?,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tessera_core::Tensor;

    use super::*;
    use crate::methods::testing::Toward;

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

    /// The stacked rounds reach what each cluster's own average reaches,
    /// computed apart ([`Ifca::aggregate`], in f64): sites near cluster 0's
    /// model take it, the one near cluster 1's takes that, and the server,
    /// which sees only the weighted mean of the stacked changes, moves each
    /// cluster by its own members' mean change.
    #[test]
    fn the_stacked_round_moves_each_cluster_by_its_members_mean_change() {
        let clusters = [set(&[0.0, 0.0]), set(&[10.0, 10.0]), set(&[-5.0, 5.0])];
        let global = Ifca::stack(&clusters, &[0.0; 3]).unwrap();
        let sites = [
            (vec![1.0f32, -1.0], 2u64),
            (vec![2.0, 1.0], 1),
            (vec![9.0, 12.0], 4),
        ];
        let mut sum = crate::UpdateAccumulator::new(&global, None);
        let mut members: Vec<Vec<(ParameterSet, f64)>> = vec![Vec::new(); 3];
        for (target, rows) in &sites {
            let mut local = IfcaLocal::default();
            let mut model = Toward {
                w: set(&[0.0, 0.0]),
                target: target.clone(),
            };
            let fit = local
                .fit(&Instructions::Ifca { clusters: 3 }, &global, &mut model)
                .unwrap();
            let chosen = local.chosen().unwrap();
            // Only its cluster's slice and share are not zero.
            let (changes, shares) = Ifca::unstack(&fit.delta, 3).unwrap();
            for j in 0..3 {
                assert_eq!(shares[j], if j == chosen { 1.0 } else { 0.0 });
                if j != chosen {
                    assert!(changes[j].values().all(|v| v == 0.0));
                }
            }
            members[chosen].push((changes[chosen].clone(), *rows as f64));
            let personal = local.personal(&global).unwrap();
            assert_eq!(personal, clusters[chosen]);
            let update = tessera_core::Update {
                delta: fit.delta,
                n_examples: *rows,
                aux: None,
                stats: fit.stats,
            };
            sum.add(&update, *rows as f64).unwrap();
        }
        assert_eq!(members.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1, 0]);
        let mut ifca = Ifca {
            clusters: 3,
            server_lr: 1.0,
        };
        let next = ifca
            .aggregate_fit(
                &global,
                &sum.finish(3).unwrap(),
                &crate::Attendance::default(),
            )
            .unwrap();
        let (moved, shares) = Ifca::unstack(&next, 3).unwrap();
        for j in 0..3 {
            let refs: Vec<(&ParameterSet, f64)> = members[j].iter().map(|(c, w)| (c, *w)).collect();
            let apart = ifca.aggregate(&clusters[j], &refs).unwrap();
            for (a, b) in moved[j].values().zip(apart.values()) {
                assert!((a - b).abs() < 1e-5, "cluster {j}: {a} against {b}");
            }
        }
        // The cluster nobody took stays as it was, bit for bit.
        assert_eq!(moved[2], clusters[2]);
        assert_eq!(shares, [3.0 / 7.0, 4.0 / 7.0, 0.0]);
        // The run's one model is the cluster of the largest share.
        assert_eq!(Ifca::served(&next, 3).unwrap(), moved[1]);
    }

    #[test]
    fn a_model_that_does_not_stack_the_clusters_is_refused() {
        let one = set(&[1.0, 2.0]);
        let e = Ifca::unstack(&one, 2).unwrap_err().to_string();
        assert!(e.contains("not 2 stacked cluster models"), "{e}");
        let stacked = Ifca::stack(&[one.clone(), one.clone()], &[0.5, 0.5]).unwrap();
        let e = Ifca::unstack(&stacked, 3).unwrap_err().to_string();
        assert!(e.contains("not 3 stacked"), "{e}");
        assert!(Ifca::stack(&[one.clone(), set(&[1.0])], &[0.0, 0.0]).is_err());
        // A share outside [0, 1] in the round's mean is refused by name.
        let mut ifca = Ifca {
            clusters: 2,
            server_lr: 1.0,
        };
        let mut round = crate::methods::testing::round(&[0.0]);
        round.mean_delta = Ifca::stack(&[one.clone(), one.clone()], &[3.0, 0.0]).unwrap();
        let e = ifca
            .aggregate_fit(&stacked, &round, &crate::Attendance::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("share of the round's examples is 3"), "{e}");
        // A site's update must be one cluster's.
        let update = |delta: ParameterSet| tessera_core::Update {
            delta,
            n_examples: 10,
            aux: None,
            stats: Default::default(),
        };
        let zero = set(&[0.0, 0.0]);
        let stacked_update = |a: &ParameterSet, b: &ParameterSet, shares: &[f32]| {
            update(Ifca::stack(&[a.clone(), b.clone()], shares).unwrap())
        };
        ifca.check_update(
            &ParticipantId::new("s"),
            &stacked_update(&one, &zero, &[1.0, 0.0]),
        )
        .unwrap();
        for (a, b, shares, why) in [
            (&one, &zero, [0.5, 0.5], "one 1 and zeros"),
            (&one, &zero, [1e-6, 0.0], "one 1 and zeros"),
            (&one, &zero, [1.0, 1.0], "one 1 and zeros"),
            (&one, &zero, [1.0, -1.0], "changes cluster 1 too"),
            (&one, &one, [1.0, 0.0], "changes cluster 1 too"),
        ] {
            let e = ifca
                .check_update(&ParticipantId::new("s"), &stacked_update(a, b, &shares))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{shares:?}: {e}");
        }
        assert!(
            ifca.check_update(&ParticipantId::new("s"), &update(one.clone()))
                .is_err()
        );
        // A restarted site takes back its cluster; a bad one is refused.
        let mut local = IfcaLocal {
            chosen: Some((1, 2)),
        };
        let saved = local.saved().unwrap();
        let mut fresh = IfcaLocal::default();
        fresh.restore(&saved).unwrap();
        assert_eq!(fresh.chosen(), Some(1));
        local.chosen = None;
        assert!(local.saved().is_none());
        for values in [vec![1.5, 2.0], vec![2.0, 2.0], vec![0.0, 17.0], vec![1.0]] {
            let mut bad = ParameterSet::new();
            let n = values.len();
            bad.push("ifca/chosen", Tensor::new(vec![n], values).unwrap())
                .unwrap();
            assert!(fresh.restore(&bad).is_err());
        }
    }
}
