//! Exact, order-independent summation of weighted `f32` values.

use tessera_core::{CoreError, ParameterSet};

use crate::AggregateError;

/// Fractional bits of the fixed-point representation.
const FRAC_BITS: i32 = 56;
/// Weighted values must stay below this magnitude (2^48), so that at least
/// 2^23 terms of the largest size fit in 128 bits.
const LIMIT: f64 = 281_474_976_710_656.0;

/// A vector of sums in 128-bit fixed point with 56 fractional bits.
///
/// Each term `value * weight` is computed in `f64` (exact when the weight is
/// an integer below 2^29, as example counts are) and rounded once to a
/// multiple of 2^-56; the sums are then exact integer additions, which are
/// associative. So the result is the same bits whatever the order of the
/// terms, the number of threads, or how partial sums were merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactSum {
    sums: Vec<i128>,
}

impl ExactSum {
    /// `n` zero sums.
    pub fn new(n: usize) -> Self {
        Self { sums: vec![0; n] }
    }

    /// Number of sums.
    pub fn len(&self) -> usize {
        self.sums.len()
    }

    /// Whether there are no sums.
    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }

    fn fixed(term: f64) -> Result<i128, AggregateError> {
        if !(term.abs() < LIMIT) {
            return Err(AggregateError::OutOfRange { value: term });
        }
        Ok((term * 2f64.powi(FRAC_BITS)).round() as i128)
    }

    /// Adds `weight * values[i]` to sum `i`, the values taken from a
    /// parameter set in layout order. On error nothing is added.
    pub fn add(&mut self, values: &ParameterSet, weight: f64) -> Result<(), AggregateError> {
        self.add_chunks(values.tensors().iter().map(|t| t.data()), weight)
    }

    /// Adds `weight * values[i]` to sum `i`. On error nothing is added.
    pub fn add_slice(&mut self, values: &[f32], weight: f64) -> Result<(), AggregateError> {
        self.add_chunks(std::iter::once(values), weight)
    }

    fn add_chunks<'a>(&mut self, chunks: impl Iterator<Item = &'a [f32]> + Clone, weight: f64) -> Result<(), AggregateError> {
        let n: usize = chunks.clone().map(<[f32]>::len).sum();
        if n != self.sums.len() {
            return Err(AggregateError::Layout(CoreError::LayoutMismatch(format!(
                "expected {} values, got {n}",
                self.sums.len()
            ))));
        }
        let scale = 2f64.powi(FRAC_BITS);
        let mut done = 0;
        let mut failure = None;
        'outer: for chunk in chunks.clone() {
            let sums = &mut self.sums[done..done + chunk.len()];
            for (sum, &v) in sums.iter_mut().zip(chunk) {
                let term = f64::from(v) * weight;
                if !(term.abs() < LIMIT) {
                    failure = Some(AggregateError::OutOfRange { value: term });
                    break 'outer;
                }
                match sum.checked_add((term * scale).round() as i128) {
                    Some(total) => *sum = total,
                    None => {
                        failure = Some(AggregateError::Overflow);
                        break 'outer;
                    }
                }
                done += 1;
            }
        }
        let Some(error) = failure else {
            return Ok(());
        };
        // Undo the terms already added.
        for (sum, v) in self.sums[..done].iter_mut().zip(chunks.flat_map(|c| c.iter())) {
            *sum -= (f64::from(*v) * weight * scale).round() as i128;
        }
        Err(error)
    }

    /// Adds a single term to sum `index`.
    pub fn add_one(&mut self, index: usize, term: f64) -> Result<(), AggregateError> {
        let fixed = Self::fixed(term)?;
        if let Some(sum) = self.sums.get_mut(index) {
            *sum = sum.checked_add(fixed).ok_or(AggregateError::Overflow)?;
        }
        Ok(())
    }

    /// Adds another set of sums (a partial sum from another thread or shard).
    /// On overflow nothing is added.
    pub fn merge(&mut self, other: &ExactSum) -> Result<(), AggregateError> {
        let merged: Option<Vec<i128>> = self.sums.iter().zip(&other.sums).map(|(a, b)| a.checked_add(*b)).collect();
        self.sums = merged.ok_or(AggregateError::Overflow)?;
        Ok(())
    }

    /// Sum `index` as `f64`.
    pub fn value(&self, index: usize) -> f64 {
        self.sums.get(index).map_or(0.0, |&s| s as f64 * 2f64.powi(-FRAC_BITS))
    }

    /// Every sum divided by `divisor`, as `f32` (one rounding from the exact sum
    /// to `f64`, one division, one rounding to `f32`).
    pub fn quotient(&self, divisor: f64) -> Vec<f32> {
        let scale = 2f64.powi(-FRAC_BITS);
        self.sums.iter().map(|&s| (s as f64 * scale / divisor) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_of_range_terms_change_nothing() {
        let mut s = ExactSum::new(2);
        s.add_slice(&[1.0f32, 2.0], 3.0).unwrap();
        let before = s.clone();
        let err = s.add_slice(&[1.0f32, 1e30], 1.0).unwrap_err();
        assert_eq!(s, before);
        let err2 = s.add_slice(&[5.0f32, f32::NAN], 1.0).unwrap_err();
        assert!(matches!(err2, AggregateError::OutOfRange { .. }));
        assert!(matches!(err, AggregateError::OutOfRange { .. }));
        assert_eq!(s, before);
        assert_eq!(s.quotient(3.0), vec![1.0, 2.0]);
    }

    proptest! {
        /// Any order and any grouping into partial sums gives the same bits.
        #[test]
        fn order_and_grouping_do_not_matter(
            terms in proptest::collection::vec((proptest::collection::vec(-1e4f32..1e4, 3), 1u32..5000), 1..40),
            seed in any::<u64>(),
            split in 0usize..40,
        ) {
            let mut forward = ExactSum::new(3);
            for (values, w) in &terms {
                forward.add_slice(values, f64::from(*w)).unwrap();
            }
            let mut order: Vec<usize> = (0..terms.len()).collect();
            tessera_core::SeededRng::new(seed).shuffle(&mut order);
            let split = split.min(order.len());
            let mut a = ExactSum::new(3);
            let mut b = ExactSum::new(3);
            for (k, &i) in order.iter().enumerate() {
                let target = if k < split { &mut a } else { &mut b };
                target.add_slice(&terms[i].0, f64::from(terms[i].1)).unwrap();
            }
            a.merge(&b).unwrap();
            prop_assert_eq!(&a, &forward);
            // And the value is the true sum to within the rounding of each term.
            for j in 0..3 {
                let reference: f64 = terms.iter().map(|(v, w)| f64::from(v[j]) * f64::from(*w)).sum();
                prop_assert!((forward.value(j) - reference).abs() <= 1e-9 * reference.abs().max(1.0));
            }
        }
    }
}
