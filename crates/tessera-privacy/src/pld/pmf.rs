//! A privacy loss distribution on a grid, and its composition by FFT.

use super::{MAX_GRID_LEN, TAIL_MASS_TRUNCATION};
use crate::fft::{self, Plan};

/// A privacy loss distribution on the grid `(lower + i) · d`, `i` indexing
/// `probs`, plus a mass at infinite loss.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Pmf {
    pub(super) lower: i64,
    pub(super) probs: Vec<f64>,
    pub(super) infinity: f64,
}

/// Why a distribution could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// More grid points than [`MAX_GRID_LEN`], or grid indices past `i64`.
    TooLarge,
    /// A privacy loss overflowed.
    Unbounded,
}

impl Pmf {
    pub(super) fn identity() -> Self {
        Self {
            lower: 0,
            probs: vec![1.0],
            infinity: 0.0,
        }
    }

    fn loss(&self, i: usize, d: f64) -> f64 {
        (self.lower as f64 + i as f64) * d
    }

    /// The smallest epsilon whose hockey-stick divergence is at most
    /// `delta`: `ln((P[L ≥ ε] - δ) / E[e^-L; L ≥ ε])` at the loss where the
    /// scan from the top stops.
    pub(super) fn epsilon(&self, d: f64, delta: f64) -> f64 {
        if self.infinity > delta {
            return f64::INFINITY;
        }
        let (mut upper, mut lower) = (self.infinity, 0.0f64);
        for i in (0..self.probs.len()).rev() {
            let (loss, p) = (self.loss(i, d), self.probs[i]);
            if upper > delta && lower > 0.0 && ((upper - delta) / lower).ln() >= loss {
                break;
            }
            if p == 0.0 {
                continue;
            }
            upper += p;
            lower += (-loss).exp() * p;
            if upper >= delta && lower == 0.0 {
                return loss.max(0.0);
            }
        }
        if upper <= lower + delta {
            return 0.0;
        }
        ((upper - delta) / lower).ln()
    }

    /// The hockey-stick divergence at `epsilon`.
    pub(super) fn delta(&self, d: f64, epsilon: f64) -> f64 {
        let mut delta = self.infinity;
        for (i, &p) in self.probs.iter().enumerate().rev() {
            let loss = self.loss(i, d);
            if loss <= epsilon {
                break;
            }
            delta += -(epsilon - loss).exp_m1() * p;
        }
        delta
    }
}

/// `[lower, upper]`: index bounds outside which the `n`-fold
/// self-convolution of `probs` has at most `tail / 2` mass on each side, by
/// Chernoff bounds at the orders `±1/m, ..., ±20/m`.
fn self_convolution_bounds(probs: &[f64], n: u64, tail: f64) -> (f64, f64) {
    let m = probs.len();
    let (mf, nf) = (m as f64, n as f64);
    let (mut lower, mut upper) = (0.0f64, (mf - 1.0) * nf);
    let mut positive = [0.0f64; 20];
    let mut negative = [0.0f64; 20];
    for (i, &p) in probs.iter().enumerate() {
        if p == 0.0 {
            continue;
        }
        let i = i as f64;
        let (t, u) = (((i - (mf - 1.0)) / mf).exp(), (-i / mf).exp());
        let (mut tk, mut uk) = (1.0, 1.0);
        for k in 0..20 {
            tk *= t;
            uk *= u;
            positive[k] += p * tk;
            negative[k] += p * uk;
        }
    }
    let log_two_over_tail = (2.0 / tail).ln();
    for k in 1..=20 {
        let order = k as f64 / mf;
        let log_mgf = positive[k - 1].ln() + (mf - 1.0) * order;
        let bound = (nf * log_mgf + log_two_over_tail) / order;
        if bound.is_finite() {
            upper = upper.min(bound.ceil());
        }
        let log_mgf = negative[k - 1].ln();
        let bound = (nf * log_mgf + log_two_over_tail) / -order;
        if bound.is_finite() {
            lower = lower.max(bound.floor());
        }
    }
    (lower, upper.max(lower))
}

/// `pmf` composed with itself `n` times: the inverse FFT of its FFT to the
/// `n`th power, over the range that the Chernoff bounds keep (the rest, at
/// most `TAIL_MASS_TRUNCATION`, counted at infinite loss).
pub(super) fn self_compose(pmf: &Pmf, n: u64) -> Result<Pmf, Failure> {
    if n == 1 {
        return Ok(pmf.clone());
    }
    let m = pmf.probs.len();
    let (lo, hi) = self_convolution_bounds(&pmf.probs, n, TAIL_MASS_TRUNCATION);
    let out_len = hi - lo + 1.0;
    if out_len.is_nan() || out_len > MAX_GRID_LEN as f64 {
        return Err(Failure::TooLarge);
    }
    let (lo, out_len) = (lo as u64, out_len as usize);
    let len = fft::transform_len(out_len.max(m), MAX_GRID_LEN).ok_or(Failure::TooLarge)?;
    let plan = Plan::new(len);
    let mut spectrum = plan.forward(&pmf.probs);
    for bin in &mut spectrum {
        *bin = bin.powu(n);
    }
    let cyclic = plan.inverse(&spectrum);
    // The transform wraps indices modulo its length: read from `lo` on.
    let start = (lo % len as u64) as usize;
    let probs: Vec<f64> = cyclic[start..]
        .iter()
        .chain(&cyclic[..start])
        .take(out_len)
        .copied()
        .collect();
    let lower = i64::try_from(n)
        .ok()
        .and_then(|n| pmf.lower.checked_mul(n))
        .and_then(|l| l.checked_add(i64::try_from(lo).ok()?))
        .filter(|l| l.unsigned_abs() < 1 << 53)
        .ok_or(Failure::TooLarge)?;
    let infinity = (TAIL_MASS_TRUNCATION - (n as f64 * (-pmf.infinity).ln_1p()).exp_m1()).min(1.0);
    Ok(Pmf {
        lower,
        probs,
        infinity,
    })
}

/// `a` then `b`: the convolution, its tails truncated by at most
/// `TAIL_MASS_TRUNCATION` (pessimistically).
pub(super) fn compose(a: &Pmf, b: &Pmf) -> Result<Pmf, Failure> {
    let mut probs = fft::convolve(&a.probs, &b.probs, MAX_GRID_LEN).ok_or(Failure::TooLarge)?;
    let lower = a
        .lower
        .checked_add(b.lower)
        .filter(|l| l.unsigned_abs() < 1 << 53)
        .ok_or(Failure::TooLarge)?;
    let infinity = a.infinity + b.infinity - a.infinity * b.infinity;
    let (offset, right) = truncate_tails(&mut probs, TAIL_MASS_TRUNCATION);
    Ok(Pmf {
        lower: lower + offset as i64,
        probs,
        infinity: (infinity + right).min(1.0),
    })
}

/// Drops the longest prefix and suffix of `probs` each of mass at most
/// `tail / 2`; the prefix's mass is added to the first value kept. Returns
/// the prefix's length and the suffix's mass.
fn truncate_tails(probs: &mut Vec<f64>, tail: f64) -> (usize, f64) {
    let prefix = |values: &mut dyn Iterator<Item = f64>| {
        let mut sum = 0.0;
        let mut count = 0;
        for v in values {
            sum += v;
            if sum > tail / 2.0 {
                break;
            }
            count += 1;
        }
        count
    };
    let len = probs.len();
    let left = prefix(&mut probs.iter().copied());
    if left >= len {
        return (0, 0.0);
    }
    let right = (len - prefix(&mut probs.iter().rev().copied())).max(left + 1);
    let left_mass: f64 = probs[..left].iter().sum();
    let right_mass: f64 = probs[right..].iter().sum();
    probs.truncate(right);
    probs.drain(..left);
    probs[0] += left_mass;
    (left, right_mass)
}
