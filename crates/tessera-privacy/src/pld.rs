//! Privacy loss distribution (PLD) accounting of the Poisson-subsampled
//! Gaussian mechanism under the add-or-remove-one neighbouring relation.
//!
//! [`PldAccountant`] follows Google's `dp_accounting` `PLDAccountant` with
//! its defaults; `tests/reference/` holds reference values from
//! `dp_accounting` 0.6.0 (and the command that produced them), which the
//! tests require to 1e-3 relative in epsilon (the largest difference is
//! below 1e-7):
//!
//! * **Two distributions.** Adding and removing one record give different
//!   privacy losses once sampled (`q < 1`): *remove* compares
//!   `(1 - q) N(0, σ²) + q N(-1, σ²)` against `N(0, σ²)`, *add* compares
//!   `N(0, σ²)` against `(1 - q) N(0, σ²) + q N(1, σ²)`. Both are composed
//!   and the larger epsilon is reported; at `q = 1` they coincide and one is
//!   kept.
//! * **Pessimistic connect-the-dots discretisation** (Doroshenko, Ghazi,
//!   Kamath, Kumar and Manurangsi 2022, Algorithm 1): the losses are put on
//!   the grid `k · 1e-4`, `k` from the floor of the smallest loss considered
//!   to the ceiling of the largest, with the masses that make the discrete
//!   distribution's hockey-stick divergence `δ(ε)` equal to the mechanism's
//!   exact one at every grid point, and at least the exact one between grid
//!   points. Its deltas, so its epsilons, are upper bounds: the
//!   discretisation is never optimistic. (Second differences of `δ` that
//!   rounding makes negative are set to 0, which adds about 1e-8 of mass, as
//!   in `dp_accounting`.)
//! * **Tail truncation**, pessimistic too: the noise is considered between
//!   the points where the Gaussian's tail mass is `e^-50 / 2`; what lies
//!   beyond the largest loss considered counts as mass at an infinite loss,
//!   what lies below the smallest is moved up onto it. Each composition
//!   drops at most `1e-15` of probability from each tail the same way: the
//!   lower tail's onto the smallest loss kept, the upper tail's to infinity.
//! * **Composition** of `n` equal steps by raising the distribution's
//!   discrete Fourier transform to the `n`th power (output range bounded by
//!   Chernoff bounds, as `dp_accounting` does), and of different events
//!   one after another by FFT convolution; the FFT is this crate's radix-2
//!   one, real sequences transformed at half length.
//!
//! Where ours differs (none of it optimistic):
//!
//! * Events with the same sampling rate and noise multiplier are merged
//!   into one (their steps added) and composed at once, as one
//!   self-composition, when an epsilon is asked for; the result is cached
//!   until the next composition. Composition is commutative, so this changes
//!   nothing but rounding.
//! * When a distribution would need a transform of more than 2²³ points
//!   (epsilons in the hundreds, or noise multipliers far below 0.5), the
//!   discretisation interval is doubled until it fits: a coarser pessimistic
//!   grid, still an upper bound.
//!   [`PldAccountant::value_discretization_interval`] tells which interval
//!   was used. If no interval fits, or a loss overflows, the epsilon is
//!   infinite.
//! * Noise multipliers above `1e100` count as `1e100`, and sampling rates
//!   below `1e-200` (but above 0) as `1e-200`.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::fft::{self, Plan};
use crate::rdp::log_erfc;
use crate::{DpEvent, PrivacyError};

/// The grid spacing of the privacy losses, `dp_accounting`'s default.
pub const VALUE_DISCRETIZATION_INTERVAL: f64 = 1e-4;

/// The probability mass that a composition may move out of each tail
/// (pessimistically), `dp_accounting`'s default.
pub const TAIL_MASS_TRUNCATION: f64 = 1e-15;

/// The standard normal quantile of `e^-50 / 2`: the noise is considered
/// within this many standard deviations (`dp_accounting`'s
/// `log_mass_truncation_bound = -50`).
const Z_TRUNCATION: f64 = -9.745474864965935;

/// The most grid points of any distribution (and so the longest real FFT).
const MAX_GRID_LEN: usize = 1 << 23;

/// How many times the discretisation interval may be doubled.
const MAX_DOUBLINGS: u32 = 64;

const SIGMA_CAP: f64 = 1e100;
const Q_FLOOR: f64 = 1e-200;

/// A privacy loss distribution on the grid `(lower + i) · d`, `i` indexing
/// `probs`, plus a mass at infinite loss.
#[derive(Debug, Clone, PartialEq)]
struct Pmf {
    lower: i64,
    probs: Vec<f64>,
    infinity: f64,
}

/// Why a distribution could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// More grid points than [`MAX_GRID_LEN`], or grid indices past `i64`.
    TooLarge,
    /// A privacy loss overflowed.
    Unbounded,
}

impl Pmf {
    fn identity() -> Self {
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
    fn epsilon(&self, d: f64, delta: f64) -> f64 {
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
    fn delta(&self, d: f64, epsilon: f64) -> f64 {
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

/// Which distribution of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Remove,
    Add,
}

/// The privacy loss of the Gaussian mechanism (sensitivity 1) on a Poisson
/// sample, for one side of the add-or-remove-one relation.
struct SubsampledGaussian {
    q: f64,
    sigma: f64,
    variance: f64,
    side: Side,
}

impl SubsampledGaussian {
    fn new(q: f64, sigma: f64, side: Side) -> Self {
        Self {
            q,
            sigma,
            variance: sigma * sigma,
            side,
        }
    }

    /// The loss at output `x`; non-increasing in `x`.
    fn loss(&self, x: f64) -> f64 {
        match self.side {
            Side::Remove => self.loss_remove(x),
            Side::Add => -self.loss_remove(-x),
        }
    }

    /// `ln(1 - q + q e^{(-1/2 - x)/σ²})`.
    fn loss_remove(&self, x: f64) -> f64 {
        let unsampled = (-0.5 - x) / self.variance;
        if self.q == 1.0 {
            unsampled
        } else {
            log_a_exp_b_plus_c(self.q, unsampled, 1.0 - self.q)
        }
    }

    /// The largest `x` whose loss is at least `loss`.
    fn inverse_loss(&self, loss: f64) -> f64 {
        let q = self.q;
        match self.side {
            Side::Remove => {
                let unsampled = if q == 1.0 {
                    loss
                } else if is_close(loss, (1.0 - q).ln()) {
                    f64::NEG_INFINITY
                } else {
                    log_a_exp_b_plus_c(1.0 / q, loss, 1.0 - 1.0 / q)
                };
                -0.5 - unsampled * self.variance
            }
            Side::Add => {
                let unsampled = if q == 1.0 {
                    loss
                } else if is_close(loss, -(1.0 - q).ln()) {
                    f64::INFINITY
                } else {
                    -log_a_exp_b_plus_c(1.0 / q, -loss, 1.0 - 1.0 / q)
                };
                1.0 + (-0.5 - unsampled * self.variance)
            }
        }
    }

    /// The mechanism's exact hockey-stick divergence at `epsilon`:
    /// `P_upper[X ≤ x] - e^ε P_lower[X ≤ x]` at `x` the inverse loss of `ε`.
    fn delta(&self, epsilon: f64) -> f64 {
        let q = self.q;
        let delta = match self.side {
            Side::Remove if q < 1.0 && epsilon <= (-q).ln_1p() => -epsilon.exp_m1(),
            Side::Add if q < 1.0 && epsilon >= -(-q).ln_1p() => 0.0,
            Side::Remove => {
                let x = self.inverse_loss(epsilon);
                let upper = if q == 1.0 {
                    normal_cdf((x + 1.0) / self.sigma)
                } else {
                    (1.0 - q) * normal_cdf(x / self.sigma) + q * normal_cdf((x + 1.0) / self.sigma)
                };
                upper - (epsilon + normal_log_cdf(x / self.sigma)).exp()
            }
            Side::Add => {
                let x = self.inverse_loss(epsilon);
                let lower_log = if q == 1.0 {
                    normal_log_cdf((x - 1.0) / self.sigma)
                } else {
                    log_add(
                        (-q).ln_1p() + normal_log_cdf(x / self.sigma),
                        q.ln() + normal_log_cdf((x - 1.0) / self.sigma),
                    )
                };
                normal_cdf(x / self.sigma) - (epsilon + lower_log).exp()
            }
        };
        if delta.is_nan() {
            1.0
        } else {
            delta.clamp(0.0, 1.0)
        }
    }

    /// The pessimistic connect-the-dots distribution on the grid of spacing
    /// `d` covering the losses of the non-truncated outputs.
    fn connect_the_dots(&self, d: f64) -> Result<Pmf, Failure> {
        let mut lower_x = self.sigma * Z_TRUNCATION;
        let mut upper_x = -lower_x;
        match self.side {
            Side::Add => upper_x += 1.0,
            Side::Remove => lower_x -= 1.0,
        }
        let (eps_upper, eps_lower) = (self.loss(lower_x), self.loss(upper_x));
        if !(eps_upper.is_finite() && eps_lower.is_finite()) {
            return Err(Failure::Unbounded);
        }
        let (hi, lo) = ((eps_upper / d).ceil(), (eps_lower / d).floor());
        let count = hi - lo + 1.0;
        if !(count >= 1.0 && count <= MAX_GRID_LEN as f64 && lo.abs() < 1e15) {
            return Err(Failure::TooLarge);
        }
        let (lo, count) = (lo as i64, count as usize);
        let mut deltas: Vec<f64> = (0..count)
            .map(|i| self.delta((lo + i as i64) as f64 * d))
            .collect();
        // δ(ε) is non-increasing; remove rounding noise.
        for i in 1..count {
            deltas[i] = deltas[i].min(deltas[i - 1]);
        }
        let last = deltas[count - 1];
        if count == 1 {
            return Ok(Pmf {
                lower: lo,
                probs: vec![1.0 - last],
                infinity: last,
            });
        }
        let (em1, e) = (d.exp_m1(), d.exp());
        let diffs: Vec<f64> = deltas.windows(2).map(|w| w[1] - w[0]).collect();
        let mut probs = Vec::with_capacity(count);
        probs.push(1.0 - deltas[0] + diffs[0] / em1);
        for w in diffs.windows(2) {
            probs.push((w[1] - w[0] * e) / em1);
        }
        probs.push(diffs[count - 2] / (-d).exp_m1());
        for p in &mut probs {
            *p = p.max(0.0);
        }
        Ok(Pmf {
            lower: lo,
            probs,
            infinity: last,
        })
    }
}

/// `Φ(z)`.
fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// `ln Φ(z)`, accurate far into the lower tail.
fn normal_log_cdf(z: f64) -> f64 {
    log_erfc(-z / std::f64::consts::SQRT_2) - std::f64::consts::LN_2
}

/// `ln(e^a + e^b)`.
fn log_add(a: f64, b: f64) -> f64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// `ln(e^a - e^b)`, `-∞` unless `a > b`.
fn log_sub(a: f64, b: f64) -> f64 {
    if b >= a {
        return f64::NEG_INFINITY;
    }
    a + (-(b - a).exp()).ln_1p()
}

/// `ln(a e^b + c)` for `a > 0`.
fn log_a_exp_b_plus_c(a: f64, b: f64, c: f64) -> f64 {
    if b == 0.0 {
        return (a + c).ln();
    }
    let d = b + a.ln();
    if c == 0.0 {
        d
    } else if c < 0.0 {
        log_sub(d, (-c).ln())
    } else {
        log_add(d, c.ln())
    }
}

/// Python's `math.isclose` with its default relative tolerance.
fn is_close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
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
fn self_compose(pmf: &Pmf, n: u64) -> Result<Pmf, Failure> {
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
fn compose(a: &Pmf, b: &Pmf) -> Result<Pmf, Failure> {
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

/// The composed distributions of an accountant.
#[derive(Debug)]
enum Composed {
    Pld {
        /// The discretisation interval used.
        d: f64,
        remove: Pmf,
        /// `None` when equal to `remove` (every event had `q = 1`).
        add: Option<Pmf>,
    },
    /// Some loss is infinite or could not be represented.
    Unbounded,
}

impl Composed {
    fn of(events: &[DpEvent]) -> Composed {
        let mut d = VALUE_DISCRETIZATION_INTERVAL;
        for _ in 0..=MAX_DOUBLINGS {
            match Self::at(events, d) {
                Ok(c) => return c,
                Err(Failure::TooLarge) => d *= 2.0,
                Err(Failure::Unbounded) => return Composed::Unbounded,
            }
        }
        Composed::Unbounded
    }

    fn at(events: &[DpEvent], d: f64) -> Result<Composed, Failure> {
        let mut remove = Pmf::identity();
        let mut add: Option<Pmf> = None;
        for event in events {
            let q = event.sampling_rate.max(Q_FLOOR);
            let sigma = event.noise_multiplier.min(SIGMA_CAP);
            let one = |side| {
                SubsampledGaussian::new(q, sigma, side)
                    .connect_the_dots(d)
                    .and_then(|pmf| self_compose(&pmf, event.steps))
            };
            let r = one(Side::Remove)?;
            let a = if q < 1.0 { Some(one(Side::Add)?) } else { None };
            add = match (add.take(), a) {
                (None, None) => None,
                (previous, a) => Some(compose(
                    previous.as_ref().unwrap_or(&remove),
                    a.as_ref().unwrap_or(&r),
                )?),
            };
            remove = compose(&remove, &r)?;
        }
        Ok(Composed::Pld { d, remove, add })
    }

    fn epsilon(&self, delta: f64) -> f64 {
        match self {
            Composed::Pld { d, remove, add } => {
                let e = remove.epsilon(*d, delta);
                add.as_ref().map_or(e, |a| e.max(a.epsilon(*d, delta)))
            }
            Composed::Unbounded => f64::INFINITY,
        }
    }

    fn delta(&self, epsilon: f64) -> f64 {
        match self {
            Composed::Pld { d, remove, add } => {
                let r = remove.delta(*d, epsilon);
                add.as_ref()
                    .map_or(r, |a| r.max(a.delta(*d, epsilon)))
                    .clamp(0.0, 1.0)
            }
            Composed::Unbounded => 1.0,
        }
    }
}

/// Privacy loss distribution accountant of Poisson-subsampled Gaussian
/// mechanisms (see the [module documentation](self)): tighter than
/// [`RdpAccountant`](crate::RdpAccountant), at the cost of FFTs over up to
/// millions of grid points when an epsilon is asked for.
#[derive(Clone, Default)]
pub struct PldAccountant {
    /// The composed events, equal mechanisms merged.
    events: Vec<DpEvent>,
    /// Whether a mechanism without noise was composed.
    non_private: bool,
    /// The composed distributions, built on demand.
    composed: OnceLock<Arc<Composed>>,
}

impl fmt::Debug for PldAccountant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PldAccountant")
            .field("events", &self.events)
            .field("non_private", &self.non_private)
            .finish_non_exhaustive()
    }
}

impl PartialEq for PldAccountant {
    fn eq(&self, other: &Self) -> bool {
        self.events == other.events && self.non_private == other.non_private
    }
}

impl PldAccountant {
    /// An accountant with nothing spent.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `event`. A sampling rate or a number of steps of 0 adds nothing;
    /// a noise multiplier of 0 (with both positive) makes every epsilon
    /// infinite.
    pub fn compose(&mut self, event: &DpEvent) -> Result<(), PrivacyError> {
        event.validate()?;
        self.add(event);
        Ok(())
    }

    /// Adds everything another accountant has spent.
    pub fn compose_all(&mut self, other: &PldAccountant) {
        self.non_private |= other.non_private;
        for event in &other.events {
            self.add(event);
        }
        self.composed = OnceLock::new();
    }

    fn add(&mut self, event: &DpEvent) {
        if event.steps == 0 || event.sampling_rate == 0.0 {
            return;
        }
        self.composed = OnceLock::new();
        if event.noise_multiplier == 0.0 {
            self.non_private = true;
            return;
        }
        match self.events.iter_mut().find(|e| {
            e.sampling_rate == event.sampling_rate && e.noise_multiplier == event.noise_multiplier
        }) {
            Some(e) => e.steps = e.steps.saturating_add(event.steps),
            None => self.events.push(*event),
        }
    }

    /// The composed events, those of equal sampling rate and noise
    /// multiplier merged into one.
    pub fn events(&self) -> &[DpEvent] {
        &self.events
    }

    fn spent_nothing(&self) -> bool {
        self.events.is_empty() && !self.non_private
    }

    fn composed(&self) -> &Composed {
        self.composed
            .get_or_init(|| Arc::new(Composed::of(&self.events)))
    }

    /// Epsilon spent at `delta` (0 when `delta >= 1`; infinite when
    /// `delta <= 0` or NaN, unless nothing was spent).
    pub fn epsilon(&self, delta: f64) -> f64 {
        if self.spent_nothing() || delta >= 1.0 {
            return 0.0;
        }
        if self.non_private || delta.is_nan() || delta <= 0.0 {
            return f64::INFINITY;
        }
        self.composed().epsilon(delta)
    }

    /// Delta spent at `epsilon`: the composed distribution's hockey-stick
    /// divergence (1 for a NaN epsilon).
    pub fn delta(&self, epsilon: f64) -> f64 {
        if self.spent_nothing() {
            return 0.0;
        }
        if self.non_private || epsilon.is_nan() {
            return 1.0;
        }
        self.composed().delta(epsilon)
    }

    /// The discretisation interval of the composed distribution:
    /// [`VALUE_DISCRETIZATION_INTERVAL`] unless the grid had to be coarsened
    /// to fit (see the [module documentation](self)).
    pub fn value_discretization_interval(&self) -> f64 {
        if self.spent_nothing() || self.non_private {
            return VALUE_DISCRETIZATION_INTERVAL;
        }
        match self.composed() {
            Composed::Pld { d, .. } => *d,
            Composed::Unbounded => VALUE_DISCRETIZATION_INTERVAL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(q: f64, sigma: f64, steps: u64) -> DpEvent {
        DpEvent {
            sampling_rate: q,
            noise_multiplier: sigma,
            steps,
        }
    }

    fn epsilon(q: f64, sigma: f64, steps: u64, delta: f64) -> f64 {
        let mut a = PldAccountant::new();
        a.compose(&event(q, sigma, steps)).expect("valid");
        a.epsilon(delta)
    }

    #[test]
    fn truncation_point_is_the_gaussian_quantile() {
        let tail = normal_cdf(Z_TRUNCATION);
        let want = 0.5 * (-50.0f64).exp();
        assert!((tail - want).abs() <= 1e-12 * want, "{tail} vs {want}");
    }

    #[test]
    fn log_cdf_agrees_with_cdf_and_holds_in_the_tail() {
        for z in [-30.0, -5.0, -1.0, 0.0, 2.0] {
            let (a, b) = (normal_log_cdf(z), normal_cdf(z).ln());
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{z}: {a} vs {b}");
        }
        // Φ(-60) ≈ 5.6e-784 underflows; its log does not.
        assert!((normal_log_cdf(-60.0) + 1804.0).abs() < 10.0);
    }

    #[test]
    fn connect_the_dots_is_a_distribution_matching_the_divergence() {
        for (q, side) in [(1.0, Side::Remove), (0.1, Side::Remove), (0.1, Side::Add)] {
            let g = SubsampledGaussian::new(q, 1.5, side);
            let d = VALUE_DISCRETIZATION_INTERVAL;
            let pmf = g.connect_the_dots(d).expect("fits");
            // The masses add up to 1 but for the rounding noise of second
            // differences clipped at 0 (1 + 1.06e-8 for q = 1, as in
            // dp_accounting).
            let total: f64 = pmf.probs.iter().sum::<f64>() + pmf.infinity;
            assert!((total - 1.0).abs() < 1e-7, "{q} {side:?}: mass {total}");
            // On grid points the discrete divergence equals the exact one
            // (but for that rounding noise), never below it.
            for k in [0i64, 100, 2000, pmf.probs.len() as i64 / 2] {
                let eps = (pmf.lower + k) as f64 * d;
                let (got, want) = (pmf.delta(d, eps), g.delta(eps));
                assert!(
                    got >= want - 1e-12 && got - want <= 1e-7,
                    "{q} {side:?} eps {eps}: {got} vs {want}"
                );
            }
            // Between grid points, above it.
            for k in [10i64, 1000] {
                let eps = (pmf.lower as f64 + k as f64 + 0.5) * d;
                let (got, want) = (pmf.delta(d, eps), g.delta(eps));
                assert!(
                    got >= want - 1e-12,
                    "{q} {side:?} eps {eps}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn self_composition_equals_repeated_convolution() {
        let g = SubsampledGaussian::new(0.3, 2.0, Side::Remove);
        let one = g.connect_the_dots(1e-2).expect("fits");
        let fast = self_compose(&one, 5).expect("fits");
        let mut slow = Pmf::identity();
        for _ in 0..5 {
            slow = compose(&slow, &one).expect("fits");
        }
        for delta in [1e-3, 1e-5, 1e-7] {
            let (a, b) = (fast.epsilon(1e-2, delta), slow.epsilon(1e-2, delta));
            assert!((a - b).abs() <= 1e-9 * b, "{delta}: {a} vs {b}");
        }
    }

    #[test]
    fn no_noise_is_infinite_epsilon() {
        assert_eq!(epsilon(0.5, 0.0, 3, 1e-5), f64::INFINITY);
        assert_eq!(epsilon(1.0, 0.0, 1, 1e-5), f64::INFINITY);
        let mut a = PldAccountant::new();
        a.compose(&event(1.0, 0.0, 1)).expect("valid");
        assert_eq!(a.delta(100.0), 1.0);
    }

    #[test]
    fn nothing_sampled_or_no_steps_spends_nothing() {
        assert_eq!(epsilon(0.0, 1.0, 100, 1e-5), 0.0);
        assert_eq!(epsilon(0.0, 0.0, 100, 1e-5), 0.0);
        assert_eq!(epsilon(0.5, 1.0, 0, 1e-5), 0.0);
        assert_eq!(epsilon(0.5, 0.0, 0, 1e-5), 0.0);
        let a = PldAccountant::new();
        assert_eq!(a.epsilon(1e-5), 0.0);
        assert_eq!(a.epsilon(0.0), 0.0);
        assert_eq!(a.delta(0.0), 0.0);
        assert!(a.events().is_empty());
    }

    #[test]
    fn bad_events_are_refused_and_leave_nothing_behind() {
        let mut a = PldAccountant::new();
        for bad in [
            event(1.5, 1.0, 1),
            event(-0.1, 1.0, 1),
            event(f64::NAN, 1.0, 1),
            event(0.5, f64::NAN, 1),
            event(0.5, -1.0, 1),
            event(0.5, f64::INFINITY, 1),
        ] {
            assert!(a.compose(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(a, PldAccountant::new());
        assert_eq!(a.epsilon(1e-5), 0.0);
    }

    #[test]
    fn odd_deltas() {
        let mut a = PldAccountant::new();
        a.compose(&event(1.0, 2.0, 3)).expect("valid");
        assert_eq!(a.epsilon(0.0), f64::INFINITY);
        assert_eq!(a.epsilon(-1.0), f64::INFINITY);
        assert_eq!(a.epsilon(f64::NAN), f64::INFINITY);
        assert_eq!(a.epsilon(1.0), 0.0);
        assert_eq!(a.delta(f64::NAN), 1.0);
        assert_eq!(a.delta(f64::INFINITY), a.delta(1e300));
    }

    #[test]
    fn extreme_noise_stays_finite_and_ordered() {
        // Huge noise: nearly nothing spent.
        let tiny = epsilon(1.0, 1e300, 10, 1e-5);
        assert!((0.0..1e-3).contains(&tiny), "{tiny}");
        // Tiny sampling rate: nearly nothing spent.
        let tiny = epsilon(1e-300, 1.0, 10, 1e-5);
        assert!((0.0..1e-3).contains(&tiny), "{tiny}");
        // Very little noise: the grid is coarsened, epsilon huge but finite
        // and above what more noise gives.
        let mut a = PldAccountant::new();
        a.compose(&event(1.0, 0.05, 2)).expect("valid");
        let big = a.epsilon(1e-5);
        assert!(a.value_discretization_interval() > VALUE_DISCRETIZATION_INTERVAL);
        assert!(big.is_finite() && big > epsilon(1.0, 0.5, 2, 1e-5), "{big}");
        // Next to no noise: a loss overflows.
        assert_eq!(epsilon(1.0, 1e-200, 1, 1e-5), f64::INFINITY);
    }

    #[test]
    fn equal_events_merge_and_heterogeneous_ones_compose() {
        let mut a = PldAccountant::new();
        a.compose(&event(0.2, 2.0, 5)).expect("valid");
        a.compose(&event(1.0, 5.0, 1)).expect("valid");
        a.compose(&event(0.2, 2.0, 10)).expect("valid");
        assert_eq!(a.events(), &[event(0.2, 2.0, 15), event(1.0, 5.0, 1)]);
        let both = a.epsilon(1e-5);
        let (sub, full) = (epsilon(0.2, 2.0, 15, 1e-5), epsilon(1.0, 5.0, 1, 1e-5));
        assert!(
            both > sub.max(full) && both < sub + full,
            "{both} {sub} {full}"
        );
        let mut b = PldAccountant::new();
        b.compose(&event(1.0, 5.0, 1)).expect("valid");
        let mut c = PldAccountant::new();
        c.compose(&event(0.2, 2.0, 15)).expect("valid");
        b.compose_all(&c);
        assert!((b.epsilon(1e-5) - both).abs() <= 1e-9 * both);
    }

    #[test]
    fn epsilon_and_delta_are_inverse() {
        let mut a = PldAccountant::new();
        a.compose(&event(0.05, 1.0, 100)).expect("valid");
        let eps = a.epsilon(1e-6);
        let delta = a.delta(eps);
        assert!((delta - 1e-6).abs() < 1e-9, "{eps} -> {delta}");
        assert!(a.delta(eps * 0.9) > 1e-6);
    }
}
