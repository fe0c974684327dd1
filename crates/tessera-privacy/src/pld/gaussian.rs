//! The subsampled Gaussian's privacy loss, its exact divergence and its discretisation.

use super::pmf::{Failure, Pmf};
use super::{MAX_GRID_LEN, Z_TRUNCATION};
use crate::rdp::log_erfc;

/// Which distribution of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Remove,
    Add,
}

/// The privacy loss of the Gaussian mechanism (sensitivity 1) on a Poisson
/// sample, for one side of the add-or-remove-one relation.
pub(super) struct SubsampledGaussian {
    q: f64,
    sigma: f64,
    variance: f64,
    side: Side,
}

impl SubsampledGaussian {
    pub(super) fn new(q: f64, sigma: f64, side: Side) -> Self {
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
    pub(super) fn delta(&self, epsilon: f64) -> f64 {
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
    pub(super) fn connect_the_dots(&self, d: f64) -> Result<Pmf, Failure> {
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
pub(super) fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// `ln Φ(z)`, accurate far into the lower tail.
pub(super) fn normal_log_cdf(z: f64) -> f64 {
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
