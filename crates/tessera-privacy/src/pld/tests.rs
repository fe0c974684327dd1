//! The PLD accountant's tests: the discretisation, the composition and the accountant.

use super::gaussian::{Side, SubsampledGaussian, normal_cdf, normal_log_cdf};
use super::pmf::{Pmf, compose, self_compose};
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
