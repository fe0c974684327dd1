//! Metrics for a binary target whose positives are rare, from the pooled
//! score histogram (so from sums across sites only, as the pooled AUC).
//!
//! Accuracy says little when one class is rare: on a target with 11%
//! positives, a model that never predicts a positive is 89% accurate.
//! These say what it does with the positives: precision against recall
//! over every threshold (PR-AUC), sensitivity and specificity at the
//! decision threshold, their mean (balanced accuracy), and how far the
//! predicted probabilities are from the observed rates (calibration
//! error).

use serde::{Deserialize, Serialize};

use crate::metrics::{HISTOGRAM_BINS, ScoreHistogram};

/// Below this share of positives, a report's headline is the AUC, not the
/// accuracy.
pub const RARE_POSITIVES: f64 = 0.2;

/// Equal-width bins of predicted probability the calibration error is
/// taken over.
pub const CALIBRATION_BINS: usize = 10;

/// A binary model's metrics beyond accuracy (see the module).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    /// Positives among the rows.
    pub positive_rate: f64,
    /// The decision threshold: a row is predicted positive when its
    /// probability is at least this (0.5: the one accuracy counts by). A
    /// multiple of 1/1024, the histogram's bin edges: a threshold asked
    /// for between two is taken at the edge above it.
    pub threshold: f64,
    /// Area under the precision-recall curve, as average precision: the
    /// precision at each threshold weighted by the recall it adds (rows in
    /// one bin of the histogram tie). A model no better than chance scores
    /// the positive rate.
    pub pr_auc: f64,
    /// Positives predicted positive, over positives (recall).
    pub sensitivity: f64,
    /// Negatives predicted negative, over negatives.
    pub specificity: f64,
    /// The mean of sensitivity and specificity.
    pub balanced_accuracy: f64,
    /// Expected calibration error: over [`CALIBRATION_BINS`] equal-width
    /// bins of predicted probability, the rows' share times the distance
    /// between the bin's mean probability and its share of positives.
    /// From the histogram, each row is taken at its histogram bin's centre
    /// (at most 1/2048 from its probability) and put in the calibration bin
    /// of that centre: a row within 1/1024 of a tenth may land in the bin
    /// beside its own, which on few rows can move the figure by more.
    pub calibration_error: f64,
}

impl BinaryMetrics {
    /// Whether positives are rare enough ([`RARE_POSITIVES`]) that the AUC,
    /// not the accuracy, should lead.
    pub fn positives_rare(&self) -> bool {
        self.positive_rate < RARE_POSITIVES
    }
}

impl ScoreHistogram {
    /// [`BinaryMetrics`] at `threshold` (taken to the histogram's bin edge
    /// at or above it, exact for 0.5; at 1, no row is predicted positive);
    /// `None` where either class is absent or the threshold is not in
    /// `[0, 1]`.
    pub fn binary_metrics(&self, threshold: f64) -> Option<BinaryMetrics> {
        if !(0.0..=1.0).contains(&threshold) {
            return None;
        }
        let positives: u64 = self.bins.iter().map(|b| b.1).fold(0, u64::saturating_add);
        let negatives: u64 = self.bins.iter().map(|b| b.2).fold(0, u64::saturating_add);
        if positives == 0 || negatives == 0 {
            return None;
        }
        let (p, n) = (positives as f64, negatives as f64);
        // Predicted positive: a bin at or above the threshold's edge.
        let edge = (threshold * HISTOGRAM_BINS as f64).ceil() as u64;
        let (mut true_pos, mut true_neg) = (0u64, 0u64);
        for &(bin, pos, neg) in &self.bins {
            if u64::from(bin) >= edge {
                true_pos = true_pos.saturating_add(pos);
            } else {
                true_neg = true_neg.saturating_add(neg);
            }
        }
        let sensitivity = true_pos as f64 / p;
        let specificity = true_neg as f64 / n;
        // Average precision: from the highest bin down, each bin a
        // threshold; its precision weighted by the recall it adds.
        let (mut tp, mut fp, mut pr_auc) = (0.0f64, 0.0f64, 0.0f64);
        for &(_, pos, neg) in self.bins.iter().rev() {
            tp += pos as f64;
            fp += neg as f64;
            if pos > 0 {
                pr_auc += (pos as f64 / p) * (tp / (tp + fp));
            }
        }
        // Calibration: rows, probability mass and positives per bin.
        let mut calibration = [(0.0f64, 0.0f64, 0.0f64); CALIBRATION_BINS];
        for &(bin, pos, neg) in &self.bins {
            let centre = (f64::from(bin) + 0.5) / HISTOGRAM_BINS as f64;
            let c = ((centre * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1);
            let rows = pos as f64 + neg as f64;
            calibration[c].0 += rows;
            calibration[c].1 += rows * centre;
            calibration[c].2 += pos as f64;
        }
        let calibration_error = calibration
            .iter()
            .filter(|c| c.0 > 0.0)
            .map(|&(rows, mass, pos)| rows / (p + n) * (mass / rows - pos / rows).abs())
            .sum();
        Some(BinaryMetrics {
            positive_rate: p / (p + n),
            threshold: edge as f64 / HISTOGRAM_BINS as f64,
            pr_auc,
            sensitivity,
            specificity,
            balanced_accuracy: (sensitivity + specificity) / 2.0,
            calibration_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Average precision from the scores themselves, ties grouped (as
    /// scikit-learn's `average_precision_score` computes it).
    fn average_precision(rows: &[(f64, bool)]) -> f64 {
        let mut sorted = rows.to_vec();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
        let p = rows.iter().filter(|r| r.1).count() as f64;
        let (mut tp, mut seen, mut ap, mut i) = (0.0, 0.0, 0.0, 0);
        while i < sorted.len() {
            let mut j = i;
            let mut added = 0.0;
            while j < sorted.len() && sorted[j].0 == sorted[i].0 {
                added += f64::from(u8::from(sorted[j].1));
                j += 1;
            }
            tp += added;
            seen += (j - i) as f64;
            ap += added / p * (tp / seen);
            i = j;
        }
        ap
    }

    fn histogram(rows: &[(f64, bool)]) -> ScoreHistogram {
        ScoreHistogram::from_scores(rows.iter().copied())
    }

    #[test]
    fn a_model_that_never_predicts_the_rare_class_is_found_out() {
        // 89 negatives and 11 positives, every probability 0.2: accuracy
        // 0.89, but no positive found, and the scores rank nothing.
        let rows: Vec<(f64, bool)> = (0..100).map(|i| (0.2, i < 11)).collect();
        let m = histogram(&rows).binary_metrics(0.5).unwrap();
        assert!((m.positive_rate - 0.11).abs() < 1e-12);
        assert!(m.positives_rare());
        assert_eq!((m.sensitivity, m.specificity), (0.0, 1.0));
        assert_eq!(m.balanced_accuracy, 0.5);
        // One tie group: precision 0.11 at recall 1.
        assert!((m.pr_auc - 0.11).abs() < 1e-12);
        // Predicted 0.2 (its bin's centre 204.5/1024 = 0.19971), observed 0.11.
        let centre = (f64::from((0.2 * 1024.0) as u32) + 0.5) / 1024.0;
        assert!((m.calibration_error - (centre - 0.11)).abs() < 1e-12);
    }

    #[test]
    fn counts_at_the_threshold_by_hand() {
        // Positives at 0.9, 0.6, 0.3; negatives at 0.7, 0.2, 0.1, 0.05.
        let rows = [
            (0.9, true),
            (0.6, true),
            (0.3, true),
            (0.7, false),
            (0.2, false),
            (0.1, false),
            (0.05, false),
        ];
        let m = histogram(&rows).binary_metrics(0.5).unwrap();
        assert!((m.sensitivity - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.specificity - 0.75).abs() < 1e-12);
        assert!((m.balanced_accuracy - (2.0 / 3.0 + 0.75) / 2.0).abs() < 1e-12);
        // Precision 1 at the first positive, 2/3 at the second, 3/4 at the third.
        let ap = (1.0 + 2.0 / 3.0 + 3.0 / 4.0) / 3.0;
        assert!((m.pr_auc - ap).abs() < 1e-12, "{} {ap}", m.pr_auc);
        // A lower threshold finds every positive and loses a negative.
        let low = histogram(&rows).binary_metrics(0.15).unwrap();
        assert_eq!((low.sensitivity, low.specificity), (1.0, 0.5));
        assert!(histogram(&rows).binary_metrics(1.5).is_none());
        // Between two bin edges: the edge above.
        let between = histogram(&rows).binary_metrics(0.3).unwrap();
        assert_eq!(between.threshold, 308.0 / 1024.0);
        assert_eq!(between.sensitivity, 2.0 / 3.0);
        assert!(histogram(&rows[..3]).binary_metrics(0.5).is_none());
    }

    /// At 0.5 the histogram predicts as accuracy does: an `f32`
    /// probability of exactly 0.5 is positive, the one below it negative.
    #[test]
    fn the_threshold_edge_is_the_one_accuracy_uses() {
        let below = 0.5f32.next_down();
        let proba = ndarray::array![
            [0.5f32, 0.5],
            [1.0 - below, below],
            [0.5, 0.5],
            [1.0 - below, below]
        ];
        let y = [1, 1, 0, 0];
        let e = crate::Evaluation::from_probabilities(&proba, &y);
        let m = e.histogram.as_ref().unwrap().binary_metrics(0.5).unwrap();
        assert_eq!((m.sensitivity, m.specificity), (0.5, 0.5));
        assert_eq!(e.accuracy(), 0.5);
        assert_eq!(
            m.positive_rate * m.sensitivity + (1.0 - m.positive_rate) * m.specificity,
            0.5
        );
    }

    proptest! {
        /// Against the scores themselves: average precision equal (each
        /// score its own bin's centre, so the histogram loses nothing), and
        /// the calibration error as computed from the rows.
        #[test]
        fn pr_auc_and_calibration_match_a_direct_computation(
            data in proptest::collection::vec((0u32..1024, any::<bool>()), 2..200),
        ) {
            let rows: Vec<(f64, bool)> = data
                .iter()
                .map(|&(b, p)| ((f64::from(b) + 0.5) / 1024.0, p))
                .collect();
            let m = histogram(&rows).binary_metrics(0.5);
            prop_assume!(m.is_some());
            let m = m.unwrap();
            let ap = average_precision(&rows);
            prop_assert!((m.pr_auc - ap).abs() < 1e-9, "{} {}", m.pr_auc, ap);
            let mut bins = [(0.0f64, 0.0f64, 0.0f64); CALIBRATION_BINS];
            for &(s, pos) in &rows {
                let c = ((s * 10.0) as usize).min(9);
                bins[c].0 += 1.0;
                bins[c].1 += s;
                bins[c].2 += f64::from(u8::from(pos));
            }
            let n = rows.len() as f64;
            let ece: f64 = bins
                .iter()
                .filter(|b| b.0 > 0.0)
                .map(|b| b.0 / n * (b.1 / b.0 - b.2 / b.0).abs())
                .sum();
            prop_assert!((m.calibration_error - ece).abs() < 1e-9);
            let (tp, pos) = rows.iter().fold((0.0, 0.0), |(t, p), r| {
                (t + f64::from(u8::from(r.1 && r.0 >= 0.5)), p + f64::from(u8::from(r.1)))
            });
            prop_assert!((m.sensitivity - tp / pos).abs() < 1e-12);
        }
    }
}
