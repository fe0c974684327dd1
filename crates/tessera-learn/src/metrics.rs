//! Accuracy, AUC and log loss, per site and pooled across sites.

use ndarray::Array2;
use serde::Serialize;

/// Probabilities are clipped to `[EPS, 1 - EPS]` before taking logs.
const EPS: f64 = 1e-12;

/// Bins of the score histogram a site reports for the pooled AUC.
pub const HISTOGRAM_BINS: usize = 1024;

/// Counts of positive and negative examples by predicted probability, in
/// [`HISTOGRAM_BINS`] equal bins over `[0, 1]`, kept sparse (only non-empty
/// bins). Sites add theirs up to give the pooled AUC without sending any score.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ScoreHistogram {
    /// `(bin, positives, negatives)` for each non-empty bin, by bin.
    pub bins: Vec<(u32, u64, u64)>,
}

fn bin_of(score: f64) -> u32 {
    ((score * HISTOGRAM_BINS as f64) as usize).min(HISTOGRAM_BINS - 1) as u32
}

impl ScoreHistogram {
    /// The histogram of `(score, is_positive)` pairs.
    pub(crate) fn from_scores(scores: impl Iterator<Item = (f64, bool)>) -> Self {
        let mut pairs: Vec<(u32, bool)> = scores.map(|(s, p)| (bin_of(s), p)).collect();
        pairs.sort_unstable();
        let mut bins: Vec<(u32, u64, u64)> = Vec::new();
        for (bin, positive) in pairs {
            if bins.last().is_none_or(|b| b.0 != bin) {
                bins.push((bin, 0, 0));
            }
            if let Some(last) = bins.last_mut() {
                if positive {
                    last.1 += 1;
                } else {
                    last.2 += 1;
                }
            }
        }
        Self { bins }
    }

    /// Several histograms added up.
    fn sum<'a>(parts: impl IntoIterator<Item = &'a ScoreHistogram>) -> Self {
        let mut dense = vec![(0u64, 0u64); HISTOGRAM_BINS];
        for part in parts {
            for &(bin, p, n) in &part.bins {
                if let Some(slot) = dense.get_mut(bin as usize) {
                    slot.0 = slot.0.saturating_add(p);
                    slot.1 = slot.1.saturating_add(n);
                }
            }
        }
        Self {
            bins: dense
                .into_iter()
                .enumerate()
                .filter(|(_, (p, n))| *p > 0 || *n > 0)
                .map(|(bin, (p, n))| (bin as u32, p, n))
                .collect(),
        }
    }

    /// Bytes the histogram takes on the wire: packed varint triples
    /// (gap from the previous non-empty bin, positives, negatives).
    pub fn wire_len(&self) -> usize {
        let mut previous = 0;
        let mut payload = 0;
        for &(bin, p, n) in &self.bins {
            payload += tessera_core::varint_len(u64::from(bin - previous))
                + tessera_core::varint_len(p)
                + tessera_core::varint_len(n);
            previous = bin;
        }
        1 + tessera_core::varint_len(payload as u64) + payload
    }

    /// AUC with examples in the same bin counted as ties; within `1/(P N)` of
    /// the exact AUC times the number of positive-negative pairs that share a bin.
    pub fn auc(&self) -> Option<f64> {
        let n_pos: u64 = self.bins.iter().map(|b| b.1).sum();
        let n_neg: u64 = self.bins.iter().map(|b| b.2).sum();
        if n_pos == 0 || n_neg == 0 {
            return None;
        }
        let mut negatives_below = 0u64;
        let mut wins = 0.0f64;
        for &(_, p, n) in &self.bins {
            wins += p as f64 * (negatives_below as f64 + 0.5 * n as f64);
            negatives_below += n;
        }
        Some(wins / (n_pos as f64 * n_neg as f64))
    }
}

/// How a model did on some rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Rows evaluated.
    pub n_examples: u64,
    /// Sum of per-row log loss.
    pub loss_sum: f64,
    /// Rows predicted right (binary: probability >= 0.5; else the arg-max class).
    pub n_correct: u64,
    /// Exact AUC (binary tasks with both classes present).
    pub auc: Option<f64>,
    /// Score histogram (binary tasks) for pooling AUC across sites.
    #[serde(skip)]
    pub histogram: Option<ScoreHistogram>,
}

impl Evaluation {
    /// Metrics from class probabilities (one row per example) and labels.
    pub fn from_probabilities(proba: &Array2<f32>, y: &[u32]) -> Self {
        let binary = proba.ncols() == 2;
        let mut loss_sum = 0.0;
        let mut n_correct = 0;
        let mut scores = Vec::with_capacity(if binary { y.len() } else { 0 });
        for (row, &label) in proba.rows().into_iter().zip(y) {
            let p_true = f64::from(row[label as usize]).clamp(EPS, 1.0 - EPS);
            loss_sum -= p_true.ln();
            let predicted = if binary {
                u32::from(row[1] >= 0.5)
            } else {
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (c, &p)| {
                        if p > best.1 { (c, p) } else { best }
                    })
                    .0 as u32
            };
            n_correct += u64::from(predicted == label);
            if binary {
                scores.push(row[1]);
            }
        }
        let labels: Vec<bool> = y.iter().map(|&l| l == 1).collect();
        let auc = if binary { auc(&scores, &labels) } else { None };
        let histogram = binary.then(|| {
            ScoreHistogram::from_scores(
                scores.iter().zip(&labels).map(|(&s, &p)| (f64::from(s), p)),
            )
        });
        Self {
            n_examples: y.len() as u64,
            loss_sum,
            n_correct,
            auc,
            histogram,
        }
    }

    /// Bytes this evaluation takes on the wire: counts, loss, AUC and the histogram.
    pub fn wire_len(&self) -> usize {
        32 + self.histogram.as_ref().map_or(0, ScoreHistogram::wire_len)
    }

    /// Share of rows predicted right (0 for no rows).
    pub fn accuracy(&self) -> f64 {
        if self.n_examples == 0 {
            0.0
        } else {
            self.n_correct as f64 / self.n_examples as f64
        }
    }

    /// Mean log loss (0 for no rows).
    pub fn mean_loss(&self) -> f64 {
        if self.n_examples == 0 {
            0.0
        } else {
            self.loss_sum / self.n_examples as f64
        }
    }

    /// Several evaluations pooled: counts add up, AUC from the summed histograms.
    pub fn pool<'a>(parts: impl IntoIterator<Item = &'a Evaluation>) -> Evaluation {
        let mut out = Evaluation {
            n_examples: 0,
            loss_sum: 0.0,
            n_correct: 0,
            auc: None,
            histogram: None,
        };
        let mut histograms = Vec::new();
        // Saturating: counts reported by others never wrap (a coordinator
        // bounds them first; saturation keeps a wrong report from turning
        // into a plausible figure).
        for part in parts {
            out.n_examples = out.n_examples.saturating_add(part.n_examples);
            out.loss_sum += part.loss_sum;
            out.n_correct = out.n_correct.saturating_add(part.n_correct);
            histograms.extend(part.histogram.as_ref());
        }
        if !histograms.is_empty() {
            let pooled = ScoreHistogram::sum(histograms);
            out.auc = pooled.auc();
            out.histogram = Some(pooled);
        }
        out
    }
}

/// Share of equal entries.
pub fn accuracy(truth: &[u32], predicted: &[u32]) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    truth.iter().zip(predicted).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64
}

/// Area under the ROC curve: the probability that a random positive scores
/// above a random negative, ties counting one half (Mann-Whitney U). `None`
/// when either class is absent.
pub fn auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the positives' ranks, ties sharing their average rank.
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += average_rank * order[i..=j].iter().filter(|&&k| positive[k]).count() as f64;
        i = j + 1;
    }
    let (p, n) = (n_pos as f64, n_neg as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// Mean binary cross-entropy of probabilities `p` for labels `y` (clipped at 1e-12).
pub fn log_loss_binary(p: &[f64], y: &[u32]) -> f64 {
    let total: f64 = p
        .iter()
        .zip(y)
        .map(|(&p, &y)| {
            let p = p.clamp(EPS, 1.0 - EPS);
            if y == 1 { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum();
    total / p.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn auc_known_values() {
        // sklearn.metrics.roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
        assert_eq!(
            auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
            Some(0.75)
        );
        // All tied: 0.5.
        assert_eq!(auc(&[0.5; 4], &[false, true, false, true]), Some(0.5));
        assert_eq!(auc(&[0.2, 0.3], &[true, true]), None);
    }

    #[test]
    fn log_loss_known_value() {
        // -(ln 0.9 + ln 0.8) / 2
        let expected = -(0.9f64.ln() + 0.8f64.ln()) / 2.0;
        assert!((log_loss_binary(&[0.9, 0.2], &[1, 0]) - expected).abs() < 1e-15);
    }

    #[test]
    fn evaluation_from_probabilities() {
        let proba = ndarray::array![[0.9f32, 0.1], [0.4, 0.6], [0.5, 0.5], [0.2, 0.8]];
        let e = Evaluation::from_probabilities(&proba, &[0, 0, 1, 1]);
        assert_eq!(e.n_correct, 3); // 0.5 counts as positive
        assert!((e.accuracy() - 0.75).abs() < 1e-12);
        let expected = -(0.9f64.ln() + 0.4f64.ln() + 0.5f64.ln() + 0.8f64.ln());
        assert!((e.loss_sum - expected).abs() < 1e-6);
        assert_eq!(e.auc, Some(0.75));
    }

    proptest! {
        /// AUC by ranks equals the count of ordered pairs over all pairs.
        #[test]
        fn auc_equals_pair_count(data in proptest::collection::vec((0u8..20, any::<bool>()), 2..60)) {
            let scores: Vec<f32> = data.iter().map(|(s, _)| f32::from(*s) / 20.0).collect();
            let labels: Vec<bool> = data.iter().map(|(_, l)| *l).collect();
            let mut wins = 0.0;
            let mut pairs = 0.0;
            for (i, &pi) in labels.iter().enumerate() {
                for (j, &pj) in labels.iter().enumerate() {
                    if pi && !pj {
                        pairs += 1.0;
                        if scores[i] > scores[j] { wins += 1.0 } else if scores[i] == scores[j] { wins += 0.5 }
                    }
                }
            }
            let expected = if pairs > 0.0 { Some(wins / pairs) } else { None };
            let got = auc(&scores, &labels);
            match (got, expected) {
                (Some(a), Some(b)) => prop_assert!((a - b).abs() < 1e-12),
                (a, b) => prop_assert_eq!(a, b),
            }
        }

        /// Pooled histograms give the exact AUC when no two scores share a bin.
        #[test]
        fn pooled_auc_matches_exact_for_distinct_bins(
            picks in proptest::collection::btree_set(0usize..HISTOGRAM_BINS, 4..50),
            flips in proptest::collection::vec(any::<bool>(), 50),
        ) {
            let bins: Vec<usize> = picks.into_iter().collect();
            let scores: Vec<f32> = bins.iter().map(|&b| ((b as f64 + 0.5) / HISTOGRAM_BINS as f64) as f32).collect();
            let labels: Vec<u32> = (0..bins.len()).map(|i| u32::from(flips[i])).collect();
            let half = bins.len() / 2;
            let site = |range: std::ops::Range<usize>| {
                let proba = Array2::from_shape_fn((range.len(), 2), |(i, c)| {
                    let s = scores[range.start + i];
                    if c == 1 { s } else { 1.0 - s }
                });
                Evaluation::from_probabilities(&proba, &labels[range])
            };
            let pooled = Evaluation::pool([&site(0..half), &site(half..bins.len())]);
            let truth: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
            match (pooled.auc, auc(&scores, &truth)) {
                (Some(a), Some(b)) => prop_assert!((a - b).abs() < 1e-9, "{a} vs {b}"),
                (a, b) => prop_assert_eq!(a, b),
            }
        }
    }
}
