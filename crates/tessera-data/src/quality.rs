//! A site's data quality, computed at the site from its own rows: each
//! score in [0, 1], 1 the best, with how much one row can move it (its
//! sensitivity, for a differentially private release).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::{Dataset, SiteSummary};

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

    /// How much adding, removing or changing one row of `n` training rows
    /// (`read` rows read, `classes` classes) moves each score at most, in
    /// the order of [`Quality::scores`].
    pub fn sensitivities(n: usize, read: usize, classes: usize) -> [f64; 3] {
        let (n, read) = (n.max(1) as f64, read.max(1) as f64);
        // One row more or less moves a share of k rows by at most 1/(k-1)
        // (k at least 2), counts and denominator together.
        let share = |k: f64| 1.0 / (k - 1.0).max(1.0);
        [
            // Kept rows (of the rows read) times present values (of the
            // kept rows' values, at least the training rows'): a product of
            // two shares moves by at most the sum of their moves.
            share(read) + share(n),
            // The rarest class's share, times the classes.
            (classes.max(1) as f64 * share(n)).min(1.0),
            // Distinct rows: one row is one distinct row more or less.
            share(n),
        ]
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
    fn one_row_moves_a_score_by_at_most_its_sensitivity() {
        let x = array![[1.0], [2.0], [2.0], [3.0], [4.0], [4.0]];
        let y = vec![0, 1, 1, 0, 2, 2];
        let train = Dataset { x, y };
        let summary = |n: usize| SiteSummary {
            rows_read: n,
            n_train: n,
            ..Default::default()
        };
        let base = Quality::of(&train, &summary(6), 3);
        let bounds = Quality::sensitivities(6, 6, 3);
        // Every one-row removal and every change of one row to another
        // row of the set or label.
        for drop in 0..6 {
            let keep: Vec<usize> = (0..6).filter(|&i| i != drop).collect();
            let q = Quality::of(&train.select(&keep), &summary(5), 3);
            for (k, (a, b)) in q.scores().iter().zip(base.scores()).enumerate() {
                assert!((a - b).abs() <= bounds[k] + 1e-12, "drop {drop}, score {k}");
            }
            for label in 0..3 {
                let mut changed = train.clone();
                changed.y[drop] = label;
                changed.x[[drop, 0]] = 9.0;
                let q = Quality::of(&changed, &summary(6), 3);
                for (k, (a, b)) in q.scores().iter().zip(base.scores()).enumerate() {
                    assert!(
                        (a - b).abs() <= bounds[k] + 1e-12,
                        "change {drop}, score {k}"
                    );
                }
            }
        }
    }
}
