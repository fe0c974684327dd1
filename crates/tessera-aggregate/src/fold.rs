//! The exact sum's inner loop: a batch of weighted terms folded into 128-bit
//! fixed-point sums at close to memory speed, with the same bits as adding
//! them one at a time.
//!
//! Three things make it fast, none of which changes a result:
//! - **Blocks.** The sums are walked in blocks of [`BLOCK`] values; every
//!   term of the batch is folded into a block while it sits in the core's
//!   cache, so the 16-byte sums cross the memory bus once per
//!   batch instead of once per term.
//! - **One conversion where one suffices.** A block of a term is range-checked
//!   by its largest magnitude (an integer maximum over the `f32` bits, which
//!   vectorises). Where every weighted value is below 2^7, its fixed-point
//!   value `trunc(x * 2^56)` fits an `i64` and one truncating conversion gives
//!   it; larger values take the exact two-part split of `exact::fixed`. Both
//!   are `trunc(x * 2^56)`, so the choice never shows.
//! - **Threads over ranges of the sums**, which are disjoint, so integer sums
//!   need no merge and the result cannot depend on the thread count.
//!
//! A term found out of range (NaN, infinite, or |x| >= 2^48) in some block is
//! skipped from there on and its earlier blocks are subtracted again: fixed
//! point is odd (`fixed(-x) = -fixed(x)`) and integer addition exact, so the
//! sums come back to exactly what they were without it.

use std::sync::OnceLock;

use crate::exact::{SCALE, fixed, in_range};

/// Values per block: 32 KiB of sums and 8 KiB of each term, which stay in
/// a core's cache while a batch is folded into them (2048 measured best of
/// 1024-4096 on the aggregation benchmark).
const BLOCK: usize = 2048;
/// Terms in a batch from which small ones are summed in split halves (4
/// measured best of 2-16: fewer do not repay the halves' final carry).
const SPLIT_MIN: usize = 4;
/// Values x terms below which one thread does the work (a thread costs tens
/// of microseconds to start; this is about a millisecond of folding).
const PER_THREAD: usize = 1 << 16;
/// Threads at most, whatever the machine has.
const MAX_THREADS: usize = 16;
/// The `f32` bits of infinity, with the sign cleared: larger is NaN.
const INFINITY_BITS: i32 = 0x7f80_0000;

/// One weighted term of a batch: its values in consecutive chunks (the
/// tensors of a parameter set), `len` of them in all.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Term<'a> {
    pub chunks: &'a [&'a [f32]],
    pub weight: f64,
}

/// Where a term's values are read next.
#[derive(Clone)]
struct Cursor<'a> {
    chunks: &'a [&'a [f32]],
    chunk: usize,
    offset: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at value `position` of `chunks`.
    fn at(chunks: &'a [&'a [f32]], position: usize) -> Self {
        let mut cursor = Self {
            chunks,
            chunk: 0,
            offset: 0,
        };
        cursor.take(position, |_, _| {});
        cursor
    }

    /// Passes the next `n` values to `f` as slices, each with its offset
    /// among the `n`, and moves past them (fewer if the chunks end).
    #[inline(always)]
    fn take(&mut self, n: usize, mut f: impl FnMut(usize, &'a [f32])) {
        let mut done = 0;
        while done < n {
            let Some(chunk) = self.chunks.get(self.chunk) else {
                return;
            };
            let rest = chunk.get(self.offset..).unwrap_or_default();
            if rest.is_empty() {
                self.chunk += 1;
                self.offset = 0;
                continue;
            }
            let k = rest.len().min(n - done);
            f(done, &rest[..k]);
            done += k;
            self.offset += k;
        }
    }
}

/// The largest `|v|` of `values` as `f32` bits with the sign cleared: NaN is
/// above infinity's bits, so one integer maximum finds both.
#[inline(always)]
pub(crate) fn max_abs_bits(values: &[f32]) -> i32 {
    values
        .iter()
        .fold(0, |m, v| m.max((v.to_bits() & 0x7fff_ffff) as i32))
}

/// How a term's values with largest magnitude `max_bits` and `weight` are folded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Every weighted value is below 2^7: one conversion each.
    Small,
    /// In range: the two-part conversion.
    Large,
    /// Some weighted value is NaN, infinite or at least 2^48.
    OutOfRange,
}

/// Decides by the largest magnitude alone: `|v * w|` rounds monotonically in
/// `|v|`, so the largest value has the largest weighted magnitude.
#[inline(always)]
pub(crate) fn kind(max_bits: i32, weight: f64) -> Kind {
    if max_bits > INFINITY_BITS {
        return Kind::OutOfRange;
    }
    let largest = f64::from(f32::from_bits(max_bits as u32)) * weight.abs();
    if !in_range(largest) {
        Kind::OutOfRange
    } else if largest < 128.0 {
        Kind::Small
    } else {
        Kind::Large
    }
}

/// `trunc(v * weight * 2^56)`, as `fixed` gives it, for a value of a block
/// whose kind is [`Kind::Small`].
#[inline(always)]
fn small_fixed(v: f32, weight: f64) -> i64 {
    let x = f64::from(v) * weight * SCALE;
    debug_assert!(x.abs() < 2f64.powi(63), "{x}");
    // SAFETY: the block's kind is `Small`: every |v * weight| is finite and
    // below 2^7, so x (scaled by a power of two, exactly) is finite and below
    // 2^63 in magnitude, where the conversion is defined and truncates. The
    // checked `as` would add four instructions a value and keep the loop
    // from vectorising.
    #[allow(unsafe_code)]
    unsafe {
        x.to_int_unchecked::<i64>()
    }
}

#[inline(always)]
fn fold_small(sums: &mut [i128], values: &[f32], weight: f64) {
    for (sum, &v) in sums.iter_mut().zip(values) {
        *sum += i128::from(small_fixed(v, weight));
    }
}

/// Adds the small terms' fixed-point values `t` split in two, `t >> 32` to
/// `high` and `t & (2^32 - 1)` to `low`: 64-bit integer additions, which
/// vector units do where 128-bit ones are carries. Fewer than 2^31 terms a
/// block cannot overflow them.
#[inline(always)]
fn split_small(high: &mut [i64], low: &mut [i64], values: &[f32], weight: f64) {
    for ((h, l), &v) in high.iter_mut().zip(low.iter_mut()).zip(values) {
        let t = small_fixed(v, weight);
        *h += t >> 32;
        *l += t & 0xffff_ffff;
    }
}

#[inline(always)]
fn fold_large(sums: &mut [i128], values: &[f32], weight: f64) {
    for (sum, &v) in sums.iter_mut().zip(values) {
        *sum += fixed(f64::from(v) * weight);
    }
}

/// Folds `terms` into `sums`, which hold values `start..start + sums.len()`;
/// returns, for each term, where it was found out of range (its values before
/// that were added, none after).
fn fold_range(sums: &mut [i128], start: usize, terms: &[Term<'_>]) -> Vec<Option<usize>> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        // SAFETY: the processor has the features the function is compiled
        // for, checked just above; the function itself is safe code.
        #[allow(unsafe_code)]
        return unsafe { fold_range_avx512(sums, start, terms) };
    }
    fold_range_body(sums, start, terms)
}

/// [`fold_range`] compiled for AVX-512 (Intel server processors since 2017,
/// AMD since Zen 4),
/// whose vector conversion from `f64` to 64-bit integers lets the small
/// terms' loop and the range check vectorise: two to three times as fast (BENCHMARKS).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
fn fold_range_avx512(sums: &mut [i128], start: usize, terms: &[Term<'_>]) -> Vec<Option<usize>> {
    fold_range_body(sums, start, terms)
}

#[inline(always)]
fn fold_range_body(sums: &mut [i128], start: usize, terms: &[Term<'_>]) -> Vec<Option<usize>> {
    let mut cursors: Vec<Cursor<'_>> = terms.iter().map(|t| Cursor::at(t.chunks, start)).collect();
    let mut out_of_range = vec![None; terms.len()];
    let mut position = start;
    // A batch's small terms are summed in two 64-bit halves and added to the
    // 128-bit sums once per block.
    let split = terms.len() >= SPLIT_MIN;
    let halves = if split { BLOCK } else { 0 };
    let (mut high, mut low) = (vec![0i64; halves], vec![0i64; halves]);
    for block in sums.chunks_mut(BLOCK) {
        let n = block.len();
        let mut any_small = false;
        for ((term, cursor), bad) in terms.iter().zip(&mut cursors).zip(&mut out_of_range) {
            if bad.is_some() {
                cursor.take(n, |_, _| {});
                continue;
            }
            let mut max_bits = 0;
            cursor
                .clone()
                .take(n, |_, s| max_bits = max_bits.max(max_abs_bits(s)));
            let w = term.weight;
            match kind(max_bits, w) {
                Kind::Small if split => {
                    any_small = true;
                    cursor.take(n, |at, s| {
                        split_small(&mut high[at..], &mut low[at..], s, w);
                    });
                }
                Kind::Small => cursor.take(n, |at, s| fold_small(&mut block[at..], s, w)),
                Kind::Large => cursor.take(n, |at, s| fold_large(&mut block[at..], s, w)),
                Kind::OutOfRange => {
                    *bad = Some(position);
                    cursor.take(n, |_, _| {});
                }
            }
        }
        if any_small {
            for ((sum, h), l) in block.iter_mut().zip(&mut high).zip(&mut low) {
                *sum += (i128::from(*h) << 32) + i128::from(*l);
                (*h, *l) = (0, 0);
            }
        }
        position += n;
    }
    out_of_range
}

fn available_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(MAX_THREADS)
    })
}

/// `out[i] = f(sums[i])`, over threads where there are enough sums (a
/// round's division back to `f32`: about 4 ns a value on one core).
pub(crate) fn convert(sums: &[i128], out: &mut [f32], f: impl Fn(i128) -> f32 + Sync) {
    let threads = (sums.len() / PER_THREAD).clamp(1, available_threads());
    let per_thread = sums.len().div_ceil(threads).max(1);
    let convert_part = |sums: &[i128], out: &mut [f32]| {
        for (o, &s) in out.iter_mut().zip(sums) {
            *o = f(s);
        }
    };
    if threads == 1 {
        convert_part(sums, out);
        return;
    }
    std::thread::scope(|scope| {
        for (s, o) in sums.chunks(per_thread).zip(out.chunks_mut(per_thread)) {
            scope.spawn(|| convert_part(s, o));
        }
    });
}

/// Folds every term into `sums` (each term `sums.len()` values long); returns
/// which terms were added. A term with any value out of range is not: the
/// sums are left exactly as if it had never been in the batch.
pub(crate) fn fold(sums: &mut [i128], terms: &[Term<'_>]) -> Vec<bool> {
    let n = sums.len();
    let work = n.saturating_mul(terms.len());
    let threads = (work / PER_THREAD)
        .min(n / BLOCK)
        .clamp(1, available_threads());
    let per_thread = n.div_ceil(threads).next_multiple_of(BLOCK).max(BLOCK);
    let parts: Vec<(usize, usize, Vec<Option<usize>>)> = if threads == 1 {
        vec![(0, n, fold_range(sums, 0, terms))]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = sums
                .chunks_mut(per_thread)
                .enumerate()
                .map(|(i, part)| {
                    let start = i * per_thread;
                    let len = part.len();
                    scope.spawn(move || (start, start + len, fold_range(part, start, terms)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    };
    let added: Vec<bool> = (0..terms.len())
        .map(|k| parts.iter().all(|(_, _, bad)| bad[k].is_none()))
        .collect();
    for (k, term) in terms.iter().enumerate().filter(|&(k, _)| !added[k]) {
        let undo = [Term {
            chunks: term.chunks,
            weight: -term.weight,
        }];
        for (start, end, bad) in &parts {
            let until = bad[k].unwrap_or(*end);
            if until > *start {
                // In range there (it was added), so this cannot fail.
                fold_range(&mut sums[*start..until], *start, &undo);
            }
        }
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_at_a_time(n: usize, terms: &[(Vec<f32>, f64)]) -> Vec<i128> {
        let mut sums = vec![0i128; n];
        for (values, w) in terms {
            if values.iter().all(|&v| in_range(f64::from(v) * w)) {
                for (s, &v) in sums.iter_mut().zip(values) {
                    *s += fixed(f64::from(v) * w);
                }
            }
        }
        sums
    }

    #[test]
    fn blocks_threads_and_rejections_give_the_sums_of_the_accepted_terms() {
        let n = 3 * BLOCK + 17;
        let mut rng = tessera_core::SeededRng::new(7);
        // Twenty terms: a batch of them sums small terms in split halves.
        let mut terms: Vec<(Vec<f32>, f64)> = (0..20)
            .map(|i| {
                let scale = [1e-3f32, 1.0, 1e3, 1e6][i % 4];
                let values = (0..n)
                    .map(|_| (rng.next_f64() as f32 - 0.5) * scale)
                    .collect();
                (values, [1.0, 37.0, 1e4, 0.3, -2.5][i % 5])
            })
            .collect();
        // Out of range late (after blocks were added), early, and by NaN.
        terms[2].0[n - 1] = 1e30;
        terms[5].0[BLOCK + 3] = f32::NAN;
        terms[7].0[0] = f32::INFINITY;
        terms[17].0[2 * BLOCK] = -1e30;
        let bad = [2, 5, 7, 17];
        let expected = one_at_a_time(n, &terms);
        let chunked: Vec<Vec<&[f32]>> = terms
            .iter()
            .map(|(v, _)| vec![&v[..5], &v[5..BLOCK + 40], &v[BLOCK + 40..]])
            .collect();
        let batch: Vec<Term<'_>> = chunked
            .iter()
            .zip(&terms)
            .map(|(c, (_, w))| Term {
                chunks: c,
                weight: *w,
            })
            .collect();
        // Batches large enough to split the small terms' sums, and one not.
        assert!(batch.len() - 4 >= SPLIT_MIN && SPLIT_MIN > 3);
        for (start, part) in [(0, &batch[..]), (0, &batch[..3]), (4, &batch[4..])] {
            let mut sums = vec![0i128; n];
            let added = fold(&mut sums, part);
            let reference = one_at_a_time(n, &terms[start..start + part.len()]);
            assert_eq!(sums, reference);
            for (k, a) in added.iter().enumerate() {
                assert_eq!(*a, !bad.contains(&(start + k)));
            }
        }
        // The portable build and the one this processor runs agree, rejected
        // terms' partial sums included.
        let (mut portable, mut dispatched) = (vec![0i128; n], vec![0i128; n]);
        assert_eq!(
            fold_range_body(&mut portable, 0, &batch),
            fold_range(&mut dispatched, 0, &batch)
        );
        assert_eq!(portable, dispatched);
        let mut sums = vec![0i128; n];
        fold(&mut sums, &batch);
        assert_eq!(sums, expected);
        // Several threads over the same work: forced by a long vector.
        let long = vec![0.25f32; 2 * PER_THREAD + 5];
        let chunks = [&long[..]];
        let mut sums = vec![0i128; long.len()];
        let added = fold(
            &mut sums,
            &[Term {
                chunks: &chunks,
                weight: 3.0,
            }],
        );
        assert_eq!(added, vec![true]);
        assert!(sums.iter().all(|&s| s == fixed(0.75)));
        // Converted back over threads, each sum in its place.
        sums.iter_mut()
            .enumerate()
            .for_each(|(i, s)| *s += i as i128);
        let mut out = vec![0.0f32; sums.len()];
        convert(&sums, &mut out, |s| (s - fixed(0.75)) as f32);
        assert!(out.iter().enumerate().all(|(i, &v)| v == i as f32));
    }

    #[test]
    fn the_kind_is_decided_by_the_largest_magnitude() {
        let bits = |v: f32| max_abs_bits(&[0.0, v, -1.0]);
        assert_eq!(kind(bits(3.0), 42.0), Kind::Small);
        assert_eq!(kind(bits(-3.0), -43.0), Kind::Large);
        assert_eq!(kind(bits(f32::NAN), 1.0), Kind::OutOfRange);
        assert_eq!(kind(bits(f32::NEG_INFINITY), 0.0), Kind::OutOfRange);
        assert_eq!(kind(bits(1.0), f64::NAN), Kind::OutOfRange);
        assert_eq!(kind(bits(1.0), 2f64.powi(48)), Kind::OutOfRange);
        assert_eq!(kind(max_abs_bits(&[0.0, -0.0]), 2f64.powi(60)), Kind::Small);
        assert_eq!(kind(max_abs_bits(&[0.0]), f64::INFINITY), Kind::OutOfRange);
        // Just below 2^7 after weighting is small, 2^7 itself is not.
        assert_eq!(kind(bits(1.0), 127.999), Kind::Small);
        assert_eq!(kind(bits(1.0), 128.0), Kind::Large);
    }
}
