//! A site's data quality, computed at the site from its own rows: each
//! score in [0, 1], 1 the best. Completeness is a function of the counts a
//! site's reading already reports (rows read, dropped, imputed); label
//! balance and distinct rows are of the rows themselves, and come with how
//! much changing one training row can move them (their sensitivity, for a
//! differentially private release, the row counts and the train/test split
//! public as a site's declared counts are).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::{Dataset, SiteSummary};

/// A draw of the Laplace distribution of scale `b` (inverse CDF).
fn laplace(rng: &mut tessera_core::SeededRng, b: f64) -> f64 {
    let u = rng.next_f64() - 0.5;
    -b * u.signum() * (1.0 - 2.0 * u.abs()).max(f64::MIN_POSITIVE).ln()
}

/// A site's data quality scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Rows kept of the rows read, times the share of kept values that
    /// were present (not imputed).
    pub completeness: f64,
    /// The rarest class's share of the training rows times the number of
    /// classes (1: balanced; 0: a class missing).
    pub label_balance: f64,
    /// Distinct training rows (features and label) over training rows.
    pub uniqueness: f64,
}

impl Quality {
    /// The scores of `train` (`classes` classes), read as `summary` says.
    pub fn of(train: &Dataset, summary: &SiteSummary, classes: usize) -> Quality {
        let read = summary.rows_read.max(1) as f64;
        let dropped = summary.dropped_missing_target + summary.dropped_missing_feature;
        let kept = summary.rows_read.saturating_sub(dropped) as f64 / read;
        let cells = (summary.rows_read.saturating_sub(dropped) * train.n_features()).max(1) as f64;
        let present = 1.0 - (summary.imputed_values as f64 / cells).min(1.0);
        let n = train.n_rows();
        let mut counts = vec![0usize; classes.max(1)];
        for &y in &train.y {
            if let Some(c) = counts.get_mut(y as usize) {
                *c += 1;
            }
        }
        let rarest = counts.iter().copied().min().unwrap_or(0) as f64;
        let label_balance = if n == 0 {
            0.0
        } else {
            (rarest / n as f64 * classes as f64).min(1.0)
        };
        let distinct: HashSet<(Vec<u32>, u32)> = train
            .x
            .rows()
            .into_iter()
            .zip(&train.y)
            .map(|(row, &y)| (row.iter().map(|v| v.to_bits()).collect(), y))
            .collect();
        Quality {
            completeness: (kept * present).clamp(0.0, 1.0),
            label_balance,
            uniqueness: if n == 0 {
                0.0
            } else {
                distinct.len() as f64 / n as f64
            },
        }
    }

    /// How much changing one of `n` training rows (`classes` classes)
    /// moves label balance and distinct rows at most, in the order of
    /// [`Quality::private`].
    pub fn sensitivities(n: usize, classes: usize) -> [f64; 2] {
        let n = n.max(1) as f64;
        [
            // The rarest class's count moves by at most one, times the
            // classes over the rows.
            (classes.max(1) as f64 / n).min(1.0),
            // One row is at most one distinct row more or less.
            1.0 / n,
        ]
    }

    /// The score a site releases: the mean of its label balance and
    /// distinct rows, each with Laplace noise of its sensitivity to
    /// changing one of its `n_train` training rows over `epsilon / 2` and
    /// clamped to [0, 1], and (`with_completeness`: in simulation, whose
    /// report shows the counts it comes from anyway) its completeness as it
    /// is. A deployed site leaves completeness out: the counts behind it
    /// (rows read, dropped, imputed) never leave the site. `rng` is the
    /// site's own secret stream (in simulation derived from the run seed:
    /// an experiment, not a release).
    pub fn released(
        &self,
        n_train: usize,
        classes: usize,
        epsilon: f64,
        with_completeness: bool,
        rng: &mut tessera_core::SeededRng,
    ) -> f64 {
        let half = epsilon / 2.0;
        let bounds = Quality::sensitivities(n_train, classes);
        let noised: f64 = self
            .private()
            .iter()
            .zip(bounds)
            .map(|(s, b)| (s + laplace(rng, b / half)).clamp(0.0, 1.0))
            .sum();
        if with_completeness {
            (self.completeness + noised) / 3.0
        } else {
            noised / 2.0
        }
    }

    /// The scores of the rows themselves: label balance, distinct rows.
    pub fn private(&self) -> [f64; 2] {
        [self.label_balance, self.uniqueness]
    }

    /// The scores, in a fixed order.
    pub fn scores(&self) -> [f64; 3] {
        [self.completeness, self.label_balance, self.uniqueness]
    }

    /// Their mean: the site's quality.
    pub fn mean(&self) -> f64 {
        self.scores().iter().sum::<f64>() / 3.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn scores_count_what_they_say() {
        let train = Dataset {
            x: array![[1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
            y: vec![0, 0, 1, 0],
        };
        let summary = SiteSummary {
            site: "a".into(),
            rows_read: 5,
            dropped_missing_feature: 1,
            n_train: 4,
            imputed_values: 2,
            ..Default::default()
        };
        let q = Quality::of(&train, &summary, 2);
        // 4 of 5 rows kept, 2 of 8 values imputed.
        assert!((q.completeness - 0.8 * 0.75).abs() < 1e-12);
        // One row of class 1 in 4, two classes.
        assert!((q.label_balance - 0.5).abs() < 1e-12);
        // Rows 1 and 2 are the same row.
        assert!((q.uniqueness - 0.75).abs() < 1e-12);
        // The same rows with another label are another row.
        let relabelled = Dataset {
            y: vec![0, 1, 1, 0],
            ..train.clone()
        };
        assert_eq!(Quality::of(&relabelled, &summary, 2).uniqueness, 1.0);
        // A class with no rows: no balance.
        assert_eq!(Quality::of(&train, &summary, 3).label_balance, 0.0);
    }

    #[test]
    fn changing_one_row_moves_a_score_by_at_most_its_sensitivity() {
        let x = array![[1.0], [2.0], [2.0], [3.0], [4.0], [4.0]];
        let y = vec![0, 1, 1, 0, 2, 2];
        let train = Dataset { x, y };
        let summary = |n: usize| SiteSummary {
            rows_read: n,
            n_train: n,
            ..Default::default()
        };
        let base = Quality::of(&train, &summary(6), 3);
        let bounds = Quality::sensitivities(6, 3);
        // Every change of one row to a new row, or to another row's
        // features, with every label.
        let mut largest = [0.0f64; 2];
        for row in 0..6 {
            for to in [9.0, 1.0, 2.0, 4.0] {
                for label in 0..3 {
                    let mut changed = train.clone();
                    changed.y[row] = label;
                    changed.x[[row, 0]] = to;
                    let q = Quality::of(&changed, &summary(6), 3);
                    for (k, (a, b)) in q.private().iter().zip(base.private()).enumerate() {
                        let moved = (a - b).abs();
                        assert!(moved <= bounds[k] + 1e-12, "row {row} to {to}/{label}: {k}");
                        largest[k] = largest[k].max(moved);
                    }
                }
            }
        }
        // The bounds are reached: not loose by construction.
        assert!((largest[0] - bounds[0]).abs() < 1e-12, "{largest:?}");
        assert!((largest[1] - bounds[1]).abs() < 1e-12, "{largest:?}");
    }
}
