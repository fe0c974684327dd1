//! Exact, order-independent summation of weighted `f32` values.

use tessera_core::{CoreError, ParameterSet};

use crate::AggregateError;
use crate::fold::{self, Kind, Term};

/// Fractional bits of the fixed-point representation.
const FRAC_BITS: i32 = 56;
/// `2^FRAC_BITS`.
pub(crate) const SCALE: f64 = (1u64 << FRAC_BITS) as f64;
/// Weighted values must stay below this magnitude (2^48): a term is then
/// below 2^104 in fixed point.
const LIMIT: f64 = 281_474_976_710_656.0;
/// Terms a 128-bit sum takes before it is moved into the wide sums
/// ([`ExactSum`]'s `wide`): 2^(127 - 104) terms can never overflow it.
const SPILL_AT: u64 = 1 << 23;

/// Whether a weighted value fits the accumulator (false for NaN and infinities).
pub(crate) fn in_range(term: f64) -> bool {
    term.abs() < LIMIT
}

/// The fixed-point value of an in-range term: `term * 2^56`, truncated.
///
/// Split in two exact halves so that only fast `f64 -> i64` conversions are
/// needed: `hi = trunc(s / 2^52)`, `lo = s - hi * 2^52` (exact), and the value
/// is `hi * 2^52 + trunc(lo)`. Any fixed function of the term keeps the sum
/// order-independent; this one is within 2^-56 of the term and odd
/// (`fixed(-t) = -fixed(t)`), so an addition can be undone by adding the
/// negated term.
#[inline]
pub(crate) fn fixed(term: f64) -> i128 {
    const SPLIT: f64 = (1u64 << 52) as f64;
    let scaled = term * SCALE;
    let hi = (scaled / SPLIT) as i64;
    let lo = scaled - hi as f64 * SPLIT;
    (i128::from(hi) << 52) + i128::from(lo as i64)
}

/// A 256-bit integer, `hi * 2^128 + lo`: a sum of any number of 128-bit
/// sums (2^128 of them before it could wrap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Wide {
    hi: i128,
    lo: u128,
}

impl Wide {
    /// `self + v`.
    fn plus(self, v: i128) -> Wide {
        let (lo, carry) = self.lo.overflowing_add(v as u128);
        // `v`'s sign extended: its high half is -1 or 0.
        Wide {
            hi: self
                .hi
                .wrapping_add(v >> 127)
                .wrapping_add(i128::from(carry)),
            lo,
        }
    }

    /// `self + other`.
    fn plus_wide(self, other: Wide) -> Wide {
        let (lo, carry) = self.lo.overflowing_add(other.lo);
        Wide {
            hi: self
                .hi
                .wrapping_add(other.hi)
                .wrapping_add(i128::from(carry)),
            lo,
        }
    }

    /// As `f64`, rounded to nearest, ties to even, as [`to_f64`] rounds.
    fn to_f64(self) -> f64 {
        let high_bit = (self.lo >> 127) as i128;
        if self.hi == -high_bit {
            // Within 128 bits.
            return to_f64(self.lo as i128);
        }
        let negative = self.hi < 0;
        let (hi, lo) = if negative {
            let lo = (!self.lo).wrapping_add(1);
            ((!(self.hi as u128)).wrapping_add(u128::from(lo == 0)), lo)
        } else {
            (self.hi as u128, self.lo)
        };
        // Past 128 bits as a signed value, so the magnitude has at least
        // 128 bits (`hi` is zero for 2^127 to 2^128 - 1): its top 64 bits,
        // with a sticky bit for any bit below them.
        let shift = 192 - hi.leading_zeros();
        let (top, below) = if shift < 128 {
            (
                (lo >> shift) | (hi << (128 - shift)),
                lo & ((1u128 << shift) - 1),
            )
        } else {
            (
                hi >> (shift - 128),
                (hi & ((1u128 << (shift - 128)) - 1)) | lo,
            )
        };
        let top = top as u64 | u64::from(below != 0);
        let value = top as f64 * f64::from_bits(u64::from(1023 + shift) << 52);
        if negative { -value } else { value }
    }
}

/// `s as f64` (rounded to nearest, ties to even) through a 64-bit integer,
/// without the software routine 128-bit conversions take: beyond 64 bits,
/// the top 64 bits are converted with a sticky bit standing for any bits
/// shifted out (they can only break a tie, never move the rounding), then
/// scaled back by a power of two, exactly.
#[inline]
fn to_f64(s: i128) -> f64 {
    if let Ok(small) = i64::try_from(s) {
        return small as f64;
    }
    let magnitude = s.unsigned_abs();
    let shift = 64 - magnitude.leading_zeros();
    let sticky = u64::from(magnitude & ((1u128 << shift) - 1) != 0);
    let top = (magnitude >> shift) as u64 | sticky;
    // 2^shift, shift in 0..=64, built from its bits (`powi` is a call).
    let value = top as f64 * f64::from_bits(u64::from(1023 + shift) << 52);
    if s < 0 { -value } else { value }
}

/// The first weighted value out of range, named.
fn out_of_range(chunks: &[&[f32]], weight: f64) -> AggregateError {
    let value = chunks
        .iter()
        .flat_map(|c| c.iter())
        .map(|&v| f64::from(v) * weight)
        .find(|&t| !in_range(t))
        .unwrap_or(f64::NAN);
    AggregateError::OutOfRange { value }
}

/// Checks that every weighted value is in range (by the largest magnitude,
/// a loop that vectorises).
fn check_chunks(chunks: &[&[f32]], weight: f64) -> Result<(), AggregateError> {
    if chunks.iter().all(|c| c.is_empty()) {
        return Ok(());
    }
    let max_bits = chunks
        .iter()
        .map(|c| fold::max_abs_bits(c))
        .max()
        .unwrap_or(0);
    match fold::kind(max_bits, weight) {
        Kind::OutOfRange => Err(out_of_range(chunks, weight)),
        Kind::Small | Kind::Large => Ok(()),
    }
}

/// A parameter set's values as chunks in layout order.
fn chunks_of(values: &ParameterSet) -> Vec<&[f32]> {
    values.tensors().iter().map(|t| t.data()).collect()
}

/// A vector of sums in 128-bit fixed point with 56 fractional bits.
///
/// Each term `value * weight` is computed in `f64` (exact when the weight is
/// an integer below 2^29, as example counts are) and turned once into a
/// multiple of 2^-56; the sums are then exact integer additions, which are
/// associative. So the result is the same bits whatever the order of the
/// terms, the number of threads, or how partial sums were merged. Any
/// number of terms fits: every 2^23 terms (before 128 bits could overflow)
/// the sums are moved into 256-bit ones, and the value is their total.
///
/// A batch of terms added at once ([`ExactSum::add_many`]) is summed at
/// about half the speed of copying the values (BENCHMARKS): see `fold` for
/// how.
#[derive(Debug, Clone)]
pub struct ExactSum {
    sums: Vec<i128>,
    /// Terms in `sums` since they were last moved into `wide`.
    n_terms: u64,
    /// The sums moved out of `sums` every 2^23 terms; `None` until then
    /// (boxed: a round of fewer than 4 million updates never needs it).
    wide: Option<Box<[Wide]>>,
}

/// Equal totals are equal sums, however their terms were split between
/// the 128-bit and the wide sums.
impl PartialEq for ExactSum {
    fn eq(&self, other: &Self) -> bool {
        self.sums.len() == other.sums.len()
            && (0..self.sums.len()).all(|i| self.total(i) == other.total(i))
    }
}

impl Eq for ExactSum {}

impl ExactSum {
    /// `n` zero sums.
    pub fn new(n: usize) -> Self {
        Self {
            sums: vec![0; n],
            n_terms: 0,
            wide: None,
        }
    }

    /// Sum `index` in 256 bits (zero past the last).
    fn total(&self, index: usize) -> Wide {
        let wide = self
            .wide
            .as_ref()
            .and_then(|w| w.get(index).copied())
            .unwrap_or_default();
        wide.plus(self.sums.get(index).copied().unwrap_or(0))
    }

    /// Moves the 128-bit sums into the wide ones, emptying them for 2^23
    /// more terms.
    fn spill(&mut self) {
        let n = self.sums.len();
        let wide = self
            .wide
            .get_or_insert_with(|| vec![Wide::default(); n].into_boxed_slice());
        for (w, s) in wide.iter_mut().zip(&mut self.sums) {
            *w = w.plus(std::mem::take(s));
        }
        self.n_terms = 0;
    }

    /// Number of sums.
    pub fn len(&self) -> usize {
        self.sums.len()
    }

    /// Whether there are no sums.
    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }

    /// Room for `count` (at most 2^23) more terms in the 128-bit sums,
    /// moving them into the wide ones first where there is not.
    fn reserve_terms(&mut self, count: u64) {
        if self.n_terms.saturating_add(count) > SPILL_AT {
            self.spill();
        }
        self.n_terms += count;
    }

    /// Checks, without adding, that `weight * values[i]` fits for every
    /// value.
    pub fn check(&self, values: &ParameterSet, weight: f64) -> Result<(), AggregateError> {
        check_chunks(&chunks_of(values), weight)
    }

    /// Adds `weight * values[i]` to sum `i`, the values taken from a
    /// parameter set in layout order. On error nothing is added.
    pub fn add(&mut self, values: &ParameterSet, weight: f64) -> Result<(), AggregateError> {
        self.add_chunks(&chunks_of(values), weight)
    }

    /// Adds `weight * values[i]` to sum `i`. On error nothing is added.
    pub fn add_slice(&mut self, values: &[f32], weight: f64) -> Result<(), AggregateError> {
        self.add_chunks(&[values], weight)
    }

    fn add_chunks(&mut self, chunks: &[&[f32]], weight: f64) -> Result<(), AggregateError> {
        self.add_many_chunks(&[(chunks, weight)])
            .pop()
            .unwrap_or(Err(AggregateError::Empty))
    }

    /// Adds each `weight * values[i]` of a batch to sum `i`: the same bits as
    /// adding them one by one, several times faster (the sums are read and
    /// written once per batch). Each term is accepted or refused alone (with
    /// the error `add` would give); a refused one adds nothing.
    pub fn add_many(&mut self, batch: &[(&ParameterSet, f64)]) -> Vec<Result<(), AggregateError>> {
        let chunks: Vec<Vec<&[f32]>> = batch.iter().map(|(v, _)| chunks_of(v)).collect();
        let terms: Vec<(&[&[f32]], f64)> = chunks
            .iter()
            .zip(batch)
            .map(|(c, (_, w))| (&c[..], *w))
            .collect();
        self.add_many_chunks(&terms)
    }

    fn add_many_chunks(&mut self, batch: &[(&[&[f32]], f64)]) -> Vec<Result<(), AggregateError>> {
        let mut results: Vec<Option<Result<(), AggregateError>>> = batch
            .iter()
            .map(|&(chunks, _)| {
                let n: usize = chunks.iter().map(|c| c.len()).sum();
                (n != self.sums.len()).then(|| {
                    Err(AggregateError::Layout(CoreError::LayoutMismatch(format!(
                        "expected {} values, got {n}",
                        self.sums.len()
                    ))))
                })
            })
            .collect();
        // As many terms as the 128-bit sums have room for, in order, then
        // the sums moved into the wide ones for the rest.
        loop {
            if self.n_terms >= SPILL_AT {
                self.spill();
            }
            let room = usize::try_from(SPILL_AT - self.n_terms).unwrap_or(usize::MAX);
            let next: Vec<usize> = (0..batch.len())
                .filter(|&i| results[i].is_none())
                .take(room)
                .collect();
            if next.is_empty() {
                break;
            }
            let terms: Vec<Term<'_>> = next
                .iter()
                .map(|&i| Term {
                    chunks: batch[i].0,
                    weight: batch[i].1,
                })
                .collect();
            for (&i, added) in next.iter().zip(fold::fold(&mut self.sums, &terms)) {
                results[i] = Some(if added {
                    self.n_terms += 1;
                    Ok(())
                } else {
                    Err(out_of_range(batch[i].0, batch[i].1))
                });
            }
        }
        // (Every term was decided above.)
        results
            .into_iter()
            .map(|result| result.unwrap_or(Err(AggregateError::Overflow)))
            .collect()
    }

    /// Takes out a term added before with the same values and weight:
    /// fixed point is odd, so the sums are exactly as if it had never been
    /// added.
    pub(crate) fn remove(&mut self, values: &ParameterSet, weight: f64) {
        let chunks = chunks_of(values);
        let undo = [Term {
            chunks: &chunks,
            weight: -weight,
        }];
        // In range, as it was when it was added; counted as one more term
        // (the sums it comes out of may have been moved since).
        self.reserve_terms(1);
        fold::fold(&mut self.sums, &undo);
    }

    /// Adds a single term to sum `index`.
    pub fn add_one(&mut self, index: usize, term: f64) -> Result<(), AggregateError> {
        if !in_range(term) {
            return Err(AggregateError::OutOfRange { value: term });
        }
        if index >= self.sums.len() {
            return Err(AggregateError::Layout(CoreError::LayoutMismatch(format!(
                "no sum {index} among {}",
                self.sums.len()
            ))));
        }
        let term = fixed(term);
        self.reserve_terms(1);
        if let Some(sum) = self.sums.get_mut(index) {
            *sum += term;
        }
        Ok(())
    }

    /// Adds another set of sums (a partial sum from another thread or shard).
    pub fn merge(&mut self, other: &ExactSum) -> Result<(), AggregateError> {
        if other.sums.len() != self.sums.len() {
            return Err(AggregateError::Layout(CoreError::LayoutMismatch(format!(
                "merging {} sums into {}",
                other.sums.len(),
                self.sums.len()
            ))));
        }
        self.reserve_terms(other.n_terms);
        for (a, b) in self.sums.iter_mut().zip(&other.sums) {
            *a += *b;
        }
        if let Some(theirs) = &other.wide {
            let n = self.sums.len();
            let ours = self
                .wide
                .get_or_insert_with(|| vec![Wide::default(); n].into_boxed_slice());
            for (a, b) in ours.iter_mut().zip(theirs.iter()) {
                *a = a.plus_wide(*b);
            }
        }
        Ok(())
    }

    /// Sum `index` as `f64`.
    pub fn value(&self, index: usize) -> f64 {
        if index >= self.sums.len() {
            return 0.0;
        }
        self.total(index).to_f64() * 2f64.powi(-FRAC_BITS)
    }

    /// Every sum divided by `divisor`, as `f32` (one rounding from the exact sum
    /// to `f64`, one division, one rounding to `f32`).
    pub fn quotient(&self, divisor: f64) -> Vec<f32> {
        let scale = 2f64.powi(-FRAC_BITS);
        if self.wide.is_some() {
            return (0..self.sums.len())
                .map(|i| (self.total(i).to_f64() * scale / divisor) as f32)
                .collect();
        }
        let mut out = vec![0.0; self.sums.len()];
        fold::convert(&self.sums, &mut out, |s| {
            (to_f64(s) * scale / divisor) as f32
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixed_point_conversion_is_odd_and_exact_on_representable_values() {
        for t in [
            0.0,
            1.0,
            -1.0,
            0.5,
            3.25e-10,
            -7.75e13,
            1.0 / 3.0,
            2.0f64.powi(-60),
        ] {
            assert_eq!(fixed(-t), -fixed(t), "{t}");
            let back = fixed(t) as f64 * 2f64.powi(-FRAC_BITS);
            assert!((back - t).abs() <= 2f64.powi(-FRAC_BITS), "{t} -> {back}");
        }
        assert_eq!(fixed(1.5), 3i128 << 55);
        assert_eq!(
            fixed(-(2f64.powi(47) + 0.75)),
            -((1i128 << 103) + (3i128 << 54))
        );
    }

    #[test]
    fn the_fast_conversion_rounds_as_the_128_bit_one() {
        for s in [
            0i128,
            1,
            -1,
            (1 << 53) + 1,
            -((1 << 60) + 3),
            i128::from(i64::MAX),
            i128::from(i64::MIN),
            i128::from(i64::MAX) + 1,
            i128::from(i64::MIN) - 1,
            (1 << 104) + (1 << 51) + 1,
            -(1 << 110) - 12345,
        ] {
            assert_eq!(to_f64(s).to_bits(), (s as f64).to_bits(), "{s}");
        }
        // Ties broken by bits far below, and random sums of every size.
        let tie = (1i128 << 100) + (1 << 47);
        for s in [
            tie,
            tie + 1,
            tie - 1,
            tie + (1 << 48),
            -tie - 1,
            i128::MAX,
            i128::MIN + 1,
        ] {
            assert_eq!(to_f64(s).to_bits(), (s as f64).to_bits(), "{s}");
        }
        let mut rng = tessera_core::SeededRng::new(3);
        for _ in 0..100_000 {
            let bits = rng.below(127) as u32;
            let s = (i128::from(rng.next_u64()) << 64 | i128::from(rng.next_u64())) >> (127 - bits);
            assert_eq!(to_f64(s).to_bits(), (s as f64).to_bits(), "{s}");
        }
    }

    #[test]
    fn wide_sums_round_as_the_exact_value_does() {
        let wide = |v: i128| Wide::default().plus(v);
        // Within 128 bits: as the 128-bit conversion.
        for v in [
            0i128,
            1,
            -1,
            i128::MAX,
            i128::MIN,
            (1 << 100) + 7,
            -(1 << 90) - 3,
        ] {
            assert_eq!(wide(v).to_f64().to_bits(), (v as f64).to_bits(), "{v}");
        }
        let two = |e: i32| 2f64.powi(e);
        let cases = [
            // 2^128, 3.5 * 2^128.
            (Wide { hi: 1, lo: 0 }, two(128)),
            (
                Wide {
                    hi: 3,
                    lo: 1 << 127,
                },
                3.5 * two(128),
            ),
            // (2^53 + 1) * 2^140: a tie, to even; one more unit breaks it up.
            (
                Wide {
                    hi: ((1i128 << 53) + 1) << 12,
                    lo: 0,
                },
                two(193),
            ),
            (
                Wide {
                    hi: ((1i128 << 53) + 1) << 12,
                    lo: 1,
                },
                two(193) + two(141),
            ),
            // Just past 2^127, and its negation.
            (wide(i128::MAX).plus(2), two(127)),
            (wide(i128::MIN).plus(-1), -two(127)),
            (
                Wide::default().plus_wide(Wide { hi: -4, lo: 0 }),
                -4.0 * two(128),
            ),
        ];
        for (w, expected) in cases {
            assert_eq!(w.to_f64().to_bits(), expected.to_bits(), "{w:?}");
        }
    }

    #[test]
    fn past_two_to_the_23_terms_the_sums_stay_exact() {
        // 2^24 + 3 terms of 2^47: 2^71 + 3 * 2^47, past 2^127 in fixed point.
        let n = (1u64 << 24) + 3;
        let mut up = ExactSum::new(2);
        for _ in 0..n {
            up.add_one(0, 2f64.powi(47)).unwrap();
            up.add_one(1, -(2f64.powi(47))).unwrap();
        }
        let exact = 2f64.powi(71) + 3.0 * 2f64.powi(47);
        assert_eq!((up.value(0), up.value(1)), (exact, -exact));
        assert_eq!(up.quotient(2f64.powi(47)), [n as f32, -(n as f32)]);
        // Merged with another past its bound, and in another order: the
        // same sums.
        let mut other = ExactSum::new(2);
        other.n_terms = SPILL_AT - 1;
        other.add_one(0, 1.0).unwrap();
        other.add_one(0, 0.5).unwrap();
        other.add_one(1, -0.25).unwrap();
        let mut a = up.clone();
        a.merge(&other).unwrap();
        let mut b = other.clone();
        b.merge(&up).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.value(0), exact + 1.5);
        assert_eq!(b.value(1), -exact - 0.25);
        assert_eq!(a.quotient(3.0), b.quotient(3.0));
    }

    #[test]
    fn a_batch_across_the_spill_sums_as_adding_in_turn_does() {
        let mut one_by_one = ExactSum::new(3);
        one_by_one.add_slice(&[1.0, 2.0, 3.0], 1.0).unwrap();
        one_by_one.n_terms = SPILL_AT - 2;
        let mut batched = one_by_one.clone();
        let (ok, far, short) = ([0.5f32, -0.25, 4.0], [1.0f32, 1e30, 0.0], [1.0f32]);
        let batch: [(&[f32], f64); 6] = [
            (&far, 1.0),
            (&ok, 3.0),
            (&short, 1.0),
            (&far, 2.0),
            (&ok, 5.0),
            (&ok, 7.0),
        ];
        let expected: Vec<_> = batch
            .iter()
            .map(|&(v, w)| one_by_one.add_slice(v, w))
            .collect();
        let chunks: Vec<[&[f32]; 1]> = batch.iter().map(|&(v, _)| [v]).collect();
        let terms: Vec<(&[&[f32]], f64)> = chunks
            .iter()
            .zip(&batch)
            .map(|(c, &(_, w))| (&c[..], w))
            .collect();
        let got = batched.add_many_chunks(&terms);
        assert_eq!(got, expected);
        assert!(matches!(got[3], Err(AggregateError::OutOfRange { .. })));
        assert!(got[4].is_ok() && got[5].is_ok());
        assert!(batched.wide.is_some());
        assert_eq!(batched, one_by_one);
        // The sums of 1*[1,2,3] + 3*ok + 5*ok + 7*ok, exactly.
        let expected_sums = [1.0 + 15.0 * 0.5, 2.0 - 15.0 * 0.25, 3.0 + 15.0 * 4.0];
        assert_eq!(batched.quotient(1.0), expected_sums);
        // Nothing to check is nothing refused, whatever the weight.
        assert!(
            ExactSum::new(0)
                .check(&ParameterSet::new(), f64::NAN)
                .is_ok()
        );
    }

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
