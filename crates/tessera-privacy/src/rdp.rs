//! Rényi differential privacy of the Poisson-subsampled Gaussian mechanism
//! (Mironov, Talwar and Zhang 2019), composition, and conversion to
//! (epsilon, delta).
//!
//! The computation follows Google's `dp_accounting` `RdpAccountant` step for
//! step (same orders, same series, same stopping rule, same conversion), so
//! that its figures can be checked against that implementation's to 1e-6
//! relative; `tests/reference/` holds the reference values and the command
//! that produced them.

use std::f64::consts::PI;

/// The Rényi orders considered: `1.1, 1.2, ..., 10.9`, `11..=63`, and
/// `128, 256, 512, 1024` (`dp_accounting`'s defaults).
pub fn default_orders() -> Vec<f64> {
    (1..100)
        .map(|x| 1.0 + f64::from(x) / 10.0)
        .chain((11..64).map(f64::from))
        .chain([128.0, 256.0, 512.0, 1024.0])
        .collect()
}

/// RDP of one application of the Gaussian mechanism with noise multiplier
/// `sigma` (noise standard deviation over L2 sensitivity) on a Poisson
/// sample of rate `q`, at each of `orders`. `f64::INFINITY` where unbounded
/// or where the series for a fractional order does not converge (that order
/// is then ignored by the conversion).
pub fn poisson_subsampled_gaussian(q: f64, sigma: f64, orders: &[f64]) -> Vec<f64> {
    orders
        .iter()
        .map(|&alpha| {
            if q == 0.0 {
                0.0
            } else if alpha.is_infinite() || sigma == 0.0 {
                f64::INFINITY
            } else if q == 1.0 {
                alpha / (2.0 * sigma * sigma)
            } else {
                log_a(q, sigma, alpha) / (alpha - 1.0)
            }
        })
        .collect()
}

/// The (epsilon, order) that a composed RDP curve gives at `delta`: the
/// conversion of Balle et al. 2020 / Canonne, Kamath and Steinke 2020
/// (`eps = rdp + ln(1 - 1/a) - ln(delta a)/(a - 1)`), minimised over orders.
pub fn epsilon(orders: &[f64], rdp: &[f64], delta: f64) -> (f64, f64) {
    if delta <= 0.0 {
        return if rdp.iter().all(|&r| r == 0.0) {
            (0.0, 0.0)
        } else {
            (f64::INFINITY, 0.0)
        };
    }
    let mut best = (f64::INFINITY, orders.first().copied().unwrap_or(0.0));
    for (&a, &r) in orders.iter().zip(rdp) {
        let eps = if r < 0.0 || delta * delta + (-r).exp_m1() > 0.0 {
            0.0
        } else if a > 1.01 {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        } else {
            f64::INFINITY
        };
        // NaN never wins; the first minimum wins ties, as numpy's argmin.
        if eps < best.0 {
            best = (eps, a);
        }
    }
    (best.0.max(0.0), best.1)
}

fn log_a(q: f64, sigma: f64, alpha: f64) -> f64 {
    if alpha.fract() == 0.0 {
        log_a_int(q, sigma, alpha as u64)
    } else {
        log_a_frac(q, sigma, alpha)
    }
}

fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let mut log_a = f64::NEG_INFINITY;
    let log1mq = (-q).ln_1p();
    let a = alpha as f64;
    for i in 0..=alpha {
        let i = i as f64;
        let coef = log_comb(a, i) + i * q.ln() + (a - i) * log1mq;
        let s = coef + (i * i - i) / (2.0 * sigma * sigma);
        log_a = log_add(log_a, s);
    }
    log_a
}

const MAX_STEPS_LOG_A_FRAC: u32 = 1000;

fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let log1mq = (-q).ln_1p();
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let sqrt2_sigma = std::f64::consts::SQRT_2 * sigma;
    for i in 0..MAX_STEPS_LOG_A_FRAC {
        let i = f64::from(i);
        let coef = log_comb(alpha, i);
        let j = alpha - i;
        let log_t0 = coef + i * q.ln() + j * log1mq;
        let log_t1 = coef + j * q.ln() + i * log1mq;
        let log_e0 = 0.5f64.ln() + log_erfc((i - z0) / sqrt2_sigma);
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / sqrt2_sigma);
        let log_s0 = log_t0 + (i * i - i) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
    }
    f64::INFINITY
}

/// `ln(e^x + e^y)`.
fn log_add(x: f64, y: f64) -> f64 {
    let (a, b) = if x < y { (x, y) } else { (y, x) };
    if a == f64::NEG_INFINITY {
        return b;
    }
    (a - b).exp().ln_1p() + b
}

/// `ln |C(n, k)|` for real `n`, through `ln |Γ|`.
fn log_comb(n: f64, k: f64) -> f64 {
    libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - libm::lgamma(n - k + 1.0)
}

/// `ln erfc(x)`, accurate far into the tail.
pub(crate) fn log_erfc(x: f64) -> f64 {
    if x < 25.0 {
        // erfc(25) ≈ 8e-274: still a normal number with full relative precision.
        libm::erfc(x).ln()
    } else {
        // The asymptotic expansion of ln erfc at infinity.
        -PI.ln() / 2.0 - x.ln() - x * x - 0.5 * x.powi(-2) + 0.625 * x.powi(-4)
            - 37.0 / 24.0 * x.powi(-6)
            + 353.0 / 64.0 * x.powi(-8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_match_the_reference_grid() {
        let orders = default_orders();
        assert_eq!(orders.len(), 99 + 53 + 4);
        assert_eq!(orders[0], 1.1);
        assert_eq!(orders[9], 2.0);
        assert_eq!(orders[98], 10.9);
        assert_eq!(orders[99], 11.0);
        assert_eq!(*orders.last().expect("orders"), 1024.0);
    }

    #[test]
    fn unsampled_gaussian_is_alpha_over_two_sigma_squared() {
        let rdp = poisson_subsampled_gaussian(1.0, 2.0, &[2.0, 10.0]);
        assert_eq!(rdp, vec![0.25, 1.25]);
    }

    #[test]
    fn integer_order_two_has_a_closed_form() {
        // A_2 = 1 + q²(e^{1/σ²} - 1) (Mironov et al. 2019, Section 3.3).
        let (q, sigma) = (0.01f64, 1.3f64);
        let expected = (q * q * ((1.0 / (sigma * sigma)).exp() - 1.0)).ln_1p();
        let got = poisson_subsampled_gaussian(q, sigma, &[2.0])[0];
        assert!(
            (got - expected).abs() <= 1e-12 * expected,
            "{got} vs {expected}"
        );
    }

    #[test]
    fn log_erfc_is_continuous_where_the_method_changes() {
        let below = log_erfc(25.0 - 1e-9);
        let above = log_erfc(25.0);
        assert!((below - above).abs() < 1e-6, "{below} vs {above}");
    }
}
