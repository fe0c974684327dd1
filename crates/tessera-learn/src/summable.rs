//! An evaluation as a vector that sums: what a site masks under secure
//! aggregation when the plan keeps site metrics aggregate-only, so that the
//! coordinator learns the pooled evaluation (and the mean of the sites'
//! accuracies) and nothing of any one site.
//!
//! Every coordinate is a 16-bit limb (or a 0/1 flag), so that the sum of one
//! coordinate over at most [`MAX_SITES`] = 65,536 sites never wraps in
//! `Z_2^32` and `sum_i limb_sum_i << 16 i` recombines the exact total.
//!
//! | coordinates | what | encoding |
//! |---|---|---|
//! | 0..4 | rows evaluated (`u64`) | four limbs, least significant first |
//! | 4..8 | rows predicted right (`u64`) | four limbs |
//! | 8..12 | log-loss sum | fixed point `round(loss x 2^16)`, four limbs (sums to 2^48) |
//! | 12..14 | the site's accuracy | fixed point `round(accuracy x 2^16)`, two limbs |
//! | 14 | 1 when the site has rows | flag |
//! | 15 | 1 when the site sends a histogram | flag |
//! | 16.. | per bin of [`HISTOGRAM_BINS`]: positives, negatives | two limbs each (counts to 2^32, saturating) |
//!
//! A dishonest site can still put any value in its coordinates (as in any
//! secure sum); decoding then gives wrong totals or an error, never a panic.

use crate::{Evaluation, HISTOGRAM_BINS, ScoreHistogram};

/// Coordinates of one summable evaluation.
pub const SUMMABLE_LEN: usize = 16 + 4 * HISTOGRAM_BINS;

/// The most sites whose vectors sum without wrapping.
pub const MAX_SITES: usize = 1 << 16;

const SCALE: f64 = 65_536.0;

fn limbs(value: u64, out: &mut [u32]) {
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = ((value >> (16 * i)) & 0xFFFF) as u32;
    }
}

fn recombine(limbs: &[u32]) -> Option<u64> {
    limbs.iter().enumerate().try_fold(0u64, |total, (i, &l)| {
        u64::from(l)
            .checked_shl(16 * i as u32)
            .filter(|shifted| shifted >> (16 * i as u32) == u64::from(l))
            .and_then(|shifted| total.checked_add(shifted))
    })
}

fn fixed(value: f64, max: u64) -> u64 {
    if value.is_nan() || value <= 0.0 {
        0
    } else {
        ((value * SCALE).round() as u64).min(max)
    }
}

/// `evaluation` as a vector of [`SUMMABLE_LEN`] coordinates.
pub fn encode_summable(evaluation: &Evaluation) -> Vec<u32> {
    let mut v = vec![0u32; SUMMABLE_LEN];
    limbs(evaluation.n_examples, &mut v[0..4]);
    limbs(evaluation.n_correct, &mut v[4..8]);
    limbs(fixed(evaluation.loss_sum, u64::MAX), &mut v[8..12]);
    if evaluation.n_examples > 0 {
        limbs(fixed(evaluation.accuracy(), 1 << 16), &mut v[12..14]);
        v[14] = 1;
    }
    if let Some(h) = &evaluation.histogram {
        v[15] = 1;
        for &(bin, p, n) in &h.bins {
            let at = 16 + 4 * bin as usize;
            if let Some(slot) = v.get_mut(at..at + 4) {
                limbs(p.min(u64::from(u32::MAX)), &mut slot[0..2]);
                limbs(n.min(u64::from(u32::MAX)), &mut slot[2..4]);
            }
        }
    }
    v
}

/// What the sum of `sites` summable evaluations says.
#[derive(Debug, Clone, PartialEq)]
pub struct SummedEvaluation {
    /// How many sites' vectors are in the sum.
    pub sites: usize,
    /// The pooled evaluation (counts, loss sum to 2^-16, the pooled
    /// histogram and its AUC).
    pub pooled: Evaluation,
    /// The mean over sites with rows of their accuracies (to 2^-16).
    pub mean_site_accuracy: f64,
    /// How many of the sites had test rows.
    pub sites_with_rows: usize,
}

/// Decodes the sum of `sites` vectors from [`encode_summable`].
pub fn decode_summable(sum: &[u32], sites: usize) -> Result<SummedEvaluation, String> {
    if sum.len() != SUMMABLE_LEN {
        return Err(format!(
            "a summed evaluation has {} values, not {SUMMABLE_LEN}",
            sum.len()
        ));
    }
    if sites > MAX_SITES {
        return Err(format!("{sites} sites: at most {MAX_SITES} sum exactly"));
    }
    let too_big = |what: &str| format!("the summed {what} does not fit 64 bits");
    let n_examples = recombine(&sum[0..4]).ok_or_else(|| too_big("row count"))?;
    let n_correct = recombine(&sum[4..8]).ok_or_else(|| too_big("count of right predictions"))?;
    let loss = recombine(&sum[8..12]).ok_or_else(|| too_big("loss"))?;
    let accuracy = recombine(&sum[12..14]).ok_or_else(|| too_big("accuracy"))?;
    let with_rows = sum[14] as usize;
    let with_histogram = sum[15] as usize;
    if with_rows > sites || with_histogram > sites || n_correct > n_examples {
        return Err(
            "the summed evaluation is inconsistent (a site sent a malformed vector)".into(),
        );
    }
    let histogram = if with_histogram > 0 {
        let mut bins = Vec::new();
        for (bin, chunk) in sum[16..].chunks_exact(4).enumerate() {
            let p = recombine(&chunk[0..2]).ok_or_else(|| too_big("histogram"))?;
            let n = recombine(&chunk[2..4]).ok_or_else(|| too_big("histogram"))?;
            if p + n > 0 {
                bins.push((bin as u32, p, n));
            }
        }
        Some(ScoreHistogram { bins })
    } else {
        None
    };
    let pooled = Evaluation {
        n_examples,
        loss_sum: loss as f64 / SCALE,
        n_correct,
        auc: histogram.as_ref().and_then(ScoreHistogram::auc),
        histogram,
    };
    Ok(SummedEvaluation {
        sites,
        pooled,
        mean_site_accuracy: if with_rows == 0 {
            0.0
        } else {
            accuracy as f64 / SCALE / with_rows as f64
        },
        sites_with_rows: with_rows,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ndarray::Array2;

    use super::*;

    fn site(rows: usize, seed: u32) -> Evaluation {
        let proba = Array2::from_shape_fn((rows, 2), |(i, j)| {
            let p = ((i as u32 * 7919 + seed * 104_729) % 1000) as f32 / 1000.0;
            if j == 1 { p } else { 1.0 - p }
        });
        let y: Vec<u32> = (0..rows as u32).map(|i| (i * 31 + seed) % 3 % 2).collect();
        Evaluation::from_probabilities(&proba, &y)
    }

    fn add(sum: &mut [u32], v: &[u32]) {
        for (s, x) in sum.iter_mut().zip(v) {
            *s = s.wrapping_add(*x);
        }
    }

    #[test]
    fn the_sum_decodes_to_the_pooled_evaluation() {
        let sites: Vec<Evaluation> = [16, 300, 1, 0, 2_000]
            .iter()
            .zip(1..)
            .map(|(&r, s)| site(r, s))
            .collect();
        let mut sum = vec![0u32; SUMMABLE_LEN];
        for e in &sites {
            add(&mut sum, &encode_summable(e));
        }
        let decoded = decode_summable(&sum, sites.len()).unwrap();
        let pooled = Evaluation::pool(&sites);
        assert_eq!(decoded.pooled.n_examples, pooled.n_examples);
        assert_eq!(decoded.pooled.n_correct, pooled.n_correct);
        assert_eq!(decoded.pooled.histogram, pooled.histogram);
        assert_eq!(decoded.pooled.auc, pooled.auc);
        assert!((decoded.pooled.loss_sum - pooled.loss_sum).abs() <= 5.0 / SCALE);
        let with_rows: Vec<&Evaluation> = sites.iter().filter(|e| e.n_examples > 0).collect();
        let mean = with_rows.iter().map(|e| e.accuracy()).sum::<f64>() / with_rows.len() as f64;
        assert!((decoded.mean_site_accuracy - mean).abs() <= 1.0 / SCALE);
    }

    #[test]
    fn malformed_sums_are_refused_not_panics() {
        assert!(decode_summable(&[0; 3], 1).is_err());
        let mut sum = vec![0u32; SUMMABLE_LEN];
        sum[3] = u32::MAX; // a limb far past 16 bits in the top position
        assert!(decode_summable(&sum, 1).is_err());
        let mut sum = vec![0u32; SUMMABLE_LEN];
        sum[14] = 5; // five sites with rows in a sum of two
        assert!(decode_summable(&sum, 2).is_err());
        let mut sum = vec![u32::MAX; SUMMABLE_LEN];
        sum[3] = 0;
        assert!(decode_summable(&sum, MAX_SITES).is_err());
    }
}
