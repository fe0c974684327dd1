//! A site's data quality, computed at the site from its own rows: each
//! score in [0, 1], 1 the best. Completeness is a function of the counts a
//! site's reading already reports (rows read, dropped, imputed); label
//! balance, distinct rows, values in range (where the schema gives bounds)
//! and drift (where the site standardises with the federation's
//! statistics) are of the rows themselves, and come with how much changing
//! one training row can move them (their sensitivity, for a differentially
//! private release, the row counts and the train/test split public as a
//! site's declared counts are).

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
    /// One minus the share of the training rows' values of bounded columns
    /// (`min`, `max` in the schema) outside their bounds; none without bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_range: Option<f64>,
    /// One minus the mean, over the features, of the distance of the
    /// site's mean from the federation's, in the federation's standard
    /// deviations (each value clipped to [`DRIFT_CLIP`] of them), over
    /// [`DRIFT_CLIP`]: 1 where the site's rows are centred where the
    /// federation's are. None unless the site standardises with the
    /// federation's statistics (`[data.standardize] scope = "federation"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<f64>,
}

/// How many of the federation's standard deviations one standardised value
/// counts for at most in [`Quality::drift`].
pub const DRIFT_CLIP: f64 = 3.0;

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
        // A row at a time: sparse rows are never densified whole.
        let mut distinct: HashSet<(Vec<u32>, u32)> = HashSet::new();
        train.x.for_each_row(|i, row| {
            if let Some(&y) = train.y.get(i) {
                distinct.insert((row.iter().map(|v| v.to_bits()).collect(), y));
            }
        });
        let checked = summary.bounded_columns * n;
        let in_range = (summary.bounded_columns > 0).then(|| {
            if checked == 0 {
                0.0
            } else {
                1.0 - (summary.out_of_range_values as f64 / checked as f64).min(1.0)
            }
        });
        Quality {
            completeness: (kept * present).clamp(0.0, 1.0),
            label_balance,
            uniqueness: if n == 0 {
                0.0
            } else {
                distinct.len() as f64 / n as f64
            },
            in_range,
            drift: None,
        }
    }

    /// The scores of a site's training rows read under `config`'s
    /// standardisation: [`Quality::of`], with drift where the features are
    /// standardised with the federation's statistics.
    pub fn measure(
        site: &crate::SiteData,
        summary: &SiteSummary,
        classes: usize,
        config: &crate::StandardizeConfig,
    ) -> Quality {
        let quality = Quality::of(&site.train, summary, classes);
        if config.enabled && config.scope == crate::ScaleScope::Federation {
            quality.with_drift(&site.train, &site.imputed_train)
        } else {
            quality
        }
    }

    /// With the drift of `train`, whose features are standardised with the
    /// federation's statistics (so the federation's mean is 0 and its
    /// standard deviation 1 in every feature). The cells `imputed` (row,
    /// feature) count as the federation's mean: an imputed value is the
    /// site's own mean, which one changed row could move in every such cell.
    pub fn with_drift(mut self, train: &Dataset, imputed: &[(usize, usize)]) -> Quality {
        let n = train.n_rows();
        let d = train.n_features();
        self.drift = Some(if n == 0 || d == 0 {
            0.0
        } else {
            // Row by row, each column's sum in row order.
            let mut sums = vec![0.0f64; d];
            train.x.for_each_row(|_, row| {
                for (sum, &v) in sums.iter_mut().zip(row) {
                    *sum += f64::from(v).clamp(-DRIFT_CLIP, DRIFT_CLIP);
                }
            });
            for &(row, feature) in imputed {
                if let (Some(sum), Some(v)) = (
                    sums.get_mut(feature),
                    (row < n).then(|| train.x.get(row, feature)),
                ) {
                    *sum -= f64::from(v).clamp(-DRIFT_CLIP, DRIFT_CLIP);
                }
            }
            let distance: f64 =
                sums.iter().map(|sum| (sum / n as f64).abs()).sum::<f64>() / d as f64;
            (1.0 - distance / DRIFT_CLIP).clamp(0.0, 1.0)
        });
        self
    }

    /// How much changing one of `n` training rows (`classes` classes)
    /// moves each of [`Quality::private`]'s scores at most, in its order.
    pub fn sensitivities(&self, n: usize, classes: usize) -> Vec<f64> {
        let n = n.max(1) as f64;
        let mut out = vec![
            // The rarest class's count moves by at most one, times the
            // classes over the rows.
            (classes.max(1) as f64 / n).min(1.0),
            // One row is at most one distinct row more or less.
            1.0 / n,
        ];
        if self.in_range.is_some() {
            // One row holds one value of each bounded column: the count
            // out of range moves by at most the columns, over columns x rows.
            out.push(1.0 / n);
        }
        if self.drift.is_some() {
            // Each feature's clipped mean moves by at most 2 x DRIFT_CLIP / n,
            // and so their mean distance; over DRIFT_CLIP. Imputed cells
            // count as 0, so one row moves only its own cells. The
            // federation's statistics are taken as given: standardisation
            // shares them exactly already, and a changed row also moves
            // them (and so every standardised value), which this bound does
            // not cover.
            out.push((2.0 / n).min(1.0));
        }
        out
    }

    /// The score a site releases: the mean of its [`Quality::private`]
    /// scores (label balance, distinct rows, and values in range and drift
    /// where it has them), each with Laplace noise of its sensitivity to
    /// changing one of its `n_train` training rows over `epsilon` split
    /// evenly among them and clamped to [0, 1], and (`with_completeness`: in simulation, whose
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
        let private = self.private();
        let k = private.len() as f64;
        let share = epsilon / k;
        let bounds = self.sensitivities(n_train, classes);
        let noised: f64 = private
            .iter()
            .zip(bounds)
            .map(|(s, b)| (s + laplace(rng, b / share)).clamp(0.0, 1.0))
            .sum();
        if with_completeness {
            (self.completeness + noised) / (k + 1.0)
        } else {
            noised / k
        }
    }

    /// The scores of the rows themselves: label balance, distinct rows,
    /// then values in range and drift where the site has them.
    pub fn private(&self) -> Vec<f64> {
        let mut out = vec![self.label_balance, self.uniqueness];
        out.extend(self.in_range);
        out.extend(self.drift);
        out
    }

    /// The scores, completeness first.
    pub fn scores(&self) -> Vec<f64> {
        let mut out = vec![self.completeness];
        out.extend(self.private());
        out
    }

    /// Their mean: the site's quality.
    pub fn mean(&self) -> f64 {
        let scores = self.scores();
        scores.iter().sum::<f64>() / scores.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn scores_count_what_they_say() {
        let train = Dataset {
            x: array![[1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [5.0, 6.0]].into(),
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
        let train = Dataset { x: x.into(), y };
        let summary = |n: usize| SiteSummary {
            rows_read: n,
            n_train: n,
            ..Default::default()
        };
        let base = Quality::of(&train, &summary(6), 3);
        let bounds = base.sensitivities(6, 3);
        // Every change of one row to a new row, or to another row's
        // features, with every label.
        let mut largest = [0.0f64; 2];
        for row in 0..6 {
            for to in [9.0, 1.0, 2.0, 4.0] {
                for label in 0..3 {
                    let mut changed = train.clone();
                    changed.y[row] = label;
                    changed.x.as_dense_mut().expect("dense")[[row, 0]] = to;
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

    #[test]
    fn changing_one_row_moves_drift_and_in_range_by_at_most_their_sensitivity() {
        // Standardised values, two features; 5 rows.
        let x = array![
            [0.5, -1.0],
            [1.0, 0.0],
            [-0.2, 2.5],
            [0.1, -0.3],
            [2.0, 1.0]
        ];
        let train = Dataset {
            x: x.into(),
            y: vec![0, 1, 0, 1, 0],
        };
        let n = train.n_rows();
        // Two bounded columns, 3 values out of range.
        let summary = SiteSummary {
            rows_read: n,
            n_train: n,
            bounded_columns: 2,
            out_of_range_values: 3,
            ..Default::default()
        };
        let base = Quality::of(&train, &summary, 2).with_drift(&train, &[]);
        assert_eq!(base.in_range, Some(1.0 - 3.0 / 10.0));
        let bounds = base.sensitivities(n, 2);
        assert_eq!(bounds.len(), 4);
        // Every change of one row to extreme, clipped and ordinary values.
        let mut largest = 0.0f64;
        for row in 0..n {
            for a in [-100.0f32, -3.0, 0.0, 3.0, 100.0] {
                for b in [-100.0f32, 0.0, 100.0] {
                    let mut changed = train.clone();
                    let x = changed.x.as_dense_mut().expect("dense");
                    x[[row, 0]] = a;
                    x[[row, 1]] = b;
                    let drift = Quality::of(&changed, &summary, 2)
                        .with_drift(&changed, &[])
                        .drift
                        .unwrap_or(f64::NAN);
                    let moved = (drift - base.drift.unwrap_or(f64::NAN)).abs();
                    assert!(moved <= bounds[3] + 1e-12, "row {row} to {a}, {b}: {moved}");
                    largest = largest.max(moved);
                }
            }
        }
        assert!(largest > bounds[3] / 2.0, "{largest} against {}", bounds[3]);
        // One row holds one value of each bounded column: 2 of 10 values.
        for changed_by in [-2i64, 2] {
            let moved = SiteSummary {
                out_of_range_values: (3 + changed_by) as usize,
                ..summary.clone()
            };
            let q = Quality::of(&train, &moved, 2);
            let delta = (q.in_range.unwrap_or(f64::NAN) - base.in_range.unwrap_or(0.0)).abs();
            assert!((delta - bounds[2]).abs() < 1e-12, "{delta}");
        }
        // The release splits epsilon among the four, and stays in [0, 1].
        let mut rng = tessera_core::SeededRng::new(7);
        for _ in 0..100 {
            let r = base.released(n, 2, 1.0, true, &mut rng);
            assert!((0.0..=1.0).contains(&r), "{r}");
        }
        // With a huge epsilon the release is the mean of the scores.
        let exact = base.released(n, 2, 1e12, true, &mut rng);
        assert!(
            (exact - base.mean()).abs() < 1e-9,
            "{exact} {}",
            base.mean()
        );
        assert_eq!(base.scores().len(), 5);
    }
}
