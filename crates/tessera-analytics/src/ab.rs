//! A/B tests of two models from aggregated statistics: the units (sites,
//! or rows) are split between the arms by a keyed hash, each site sums
//! over its own units the counts of each arm (rows scored, rows right),
//! and only the sums leave, optionally with Gaussian noise. The difference
//! of the arms' accuracies gets a 95% confidence interval from the
//! binomial sampling error and the noise's (delta method).

use serde::Serialize;
use sha2::{Digest, Sha256};

/// One arm's sums over every site (noised where the test is DP).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct ArmSums {
    /// Rows scored.
    pub n: f64,
    /// Rows the arm's model got right.
    pub correct: f64,
}

/// The test's result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Comparison {
    /// Arm A's accuracy.
    pub accuracy_a: f64,
    /// Arm B's accuracy.
    pub accuracy_b: f64,
    /// B's accuracy less A's.
    pub difference: f64,
    /// The difference's standard error (sampling and noise).
    pub standard_error: f64,
    /// Its 95% confidence interval.
    pub ci95: (f64, f64),
}

/// The normal quantile of a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Which arm `unit` falls in under `key`: the low bit of SHA-256 of the
/// key, a separator and the unit's name (`false`: A, `true`: B). Without
/// the key the split cannot be foreseen or steered; with it, it is the same
/// every time.
pub fn arm_of(key: &[u8; 32], unit: &str) -> bool {
    let mut h = Sha256::new();
    h.update(key);
    h.update([0u8]);
    h.update(unit.as_bytes());
    h.finalize()[31] & 1 == 1
}

/// The accuracy of `arm` and its variance: the binomial `p (1 - p) / n`
/// plus the noise's, `sigma² (1 + p²) / n²` (each sum's noise of standard
/// deviation `sigma`, through `p = correct / n`).
fn accuracy(arm: &ArmSums, sigma: f64) -> Result<(f64, f64), String> {
    if !(arm.n.is_finite() && arm.correct.is_finite()) || arm.n < 1.0 {
        return Err(format!(
            "an arm has {:.1} rows scored: too few to compare (split by rows, or give more sites)",
            arm.n
        ));
    }
    let p = (arm.correct / arm.n).clamp(0.0, 1.0);
    let variance = p * (1.0 - p) / arm.n + sigma * sigma * (1.0 + p * p) / (arm.n * arm.n);
    Ok((p, variance))
}

/// Compares the arms whose sums each carry noise of standard deviation
/// `sigma` (0 without noise).
pub fn compare(a: &ArmSums, b: &ArmSums, sigma: f64) -> Result<Comparison, String> {
    let (pa, va) = accuracy(a, sigma)?;
    let (pb, vb) = accuracy(b, sigma)?;
    let difference = pb - pa;
    let standard_error = (va + vb).sqrt();
    Ok(Comparison {
        accuracy_a: pa,
        accuracy_b: pb,
        difference,
        standard_error,
        ci95: (
            difference - Z95 * standard_error,
            difference + Z95 * standard_error,
        ),
    })
}

/// Two models scored on the same `n` rows: `b_only` rows only model B
/// gets right, `a_only` rows only model A. B's accuracy less A's is
/// `(b_only - a_only) / n`, and its 95% interval the paired (Wald) one,
/// whose variance `((b_only + a_only) - (b_only - a_only)² / n) / n²`
/// leaves out the rows both models get right or both wrong: narrower than
/// [`compare`]'s when the models agree on most rows. `correct_a` gives
/// the accuracies.
pub fn paired(n: u64, correct_a: u64, b_only: u64, a_only: u64) -> Result<Comparison, String> {
    let rows_fit = correct_a <= n && a_only <= correct_a && b_only <= n - correct_a && n > 0;
    if !rows_fit {
        return Err(format!(
            "{n} rows, {correct_a} right by A, {b_only} by B only and {a_only} by A only do not fit"
        ));
    }
    let nf = n as f64;
    let (b, c) = (b_only as f64, a_only as f64);
    let difference = (b - c) / nf;
    let variance = ((b + c) - (b - c) * (b - c) / nf).max(0.0) / (nf * nf);
    let standard_error = variance.sqrt();
    let accuracy_a = correct_a as f64 / nf;
    Ok(Comparison {
        accuracy_a,
        accuracy_b: accuracy_a + difference,
        difference,
        standard_error,
        ci95: (
            difference - Z95 * standard_error,
            difference + Z95 * standard_error,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// By hand: 100 rows, A right on 60, B alone right on 15 and A alone on
    /// 5: B's accuracy 0.70, difference 0.10, variance (20 - 1) / 100².
    #[test]
    fn the_paired_interval_is_the_textbook_one() {
        let c = paired(100, 60, 15, 5).unwrap();
        assert!((c.accuracy_a - 0.60).abs() < 1e-12);
        assert!((c.accuracy_b - 0.70).abs() < 1e-12);
        assert!((c.difference - 0.10).abs() < 1e-12);
        let se = (19.0f64).sqrt() / 100.0;
        assert!((c.standard_error - se).abs() < 1e-12);
        assert!((c.ci95.0 - (0.10 - Z95 * se)).abs() < 1e-12);
        assert!(
            paired(100, 60, 41, 5).is_err(),
            "41 more right than 40 wrong"
        );
        assert!(paired(100, 60, 5, 61).is_err());
        assert!(paired(0, 0, 0, 0).is_err());
    }

    /// Paired rows (each model right with its own chance, the two agreeing
    /// on most rows): the paired interval covers the true difference about
    /// 95% of the time, and is narrower than the unpaired one.
    #[test]
    fn the_paired_interval_covers_95_percent_and_is_narrower() {
        let mut rng = Lcg(11);
        let (trials, rows) = (2000, 400);
        let (mut covered, mut narrower) = (0, 0);
        for _ in 0..trials {
            // Both right 0.65, A only 0.05, B only 0.10: accuracies 0.70
            // and 0.75, a true difference of 0.05.
            let (mut ca, mut cb, mut b_only, mut a_only) = (0, 0, 0, 0);
            for _ in 0..rows {
                let u = rng.uniform();
                let (a, b) = (u < 0.70, u < 0.65 || (0.70..0.80).contains(&u));
                ca += u64::from(a);
                cb += u64::from(b);
                b_only += u64::from(b && !a);
                a_only += u64::from(a && !b);
            }
            let c = paired(rows, ca, b_only, a_only).unwrap();
            if c.ci95.0 <= 0.05 && 0.05 <= c.ci95.1 {
                covered += 1;
            }
            let arm = |correct: u64| ArmSums {
                n: rows as f64,
                correct: correct as f64,
            };
            let unpaired = compare(&arm(ca), &arm(cb), 0.0).unwrap();
            assert!((unpaired.difference - c.difference).abs() < 1e-12);
            if c.standard_error < unpaired.standard_error {
                narrower += 1;
            }
        }
        let rate = f64::from(covered) / f64::from(trials);
        assert!((0.93..=0.97).contains(&rate), "{rate}");
        assert_eq!(narrower, trials);
    }

    /// Draws from a seeded generator, for the tests only.
    struct Lcg(u64);
    impl Lcg {
        fn uniform(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform().max(1e-300), self.uniform());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
    }

    /// The interval covers the true difference about 95% of the time, with
    /// and without noise on the sums (2,000 tests each, true accuracies
    /// 0.70 and 0.75 on 400 rows an arm).
    #[test]
    fn the_interval_covers_the_true_difference_95_percent_of_the_time() {
        let mut rng = Lcg(7);
        for sigma in [0.0, 20.0] {
            let mut covered = 0;
            let trials = 2000;
            for _ in 0..trials {
                let mut draw = |p: f64| {
                    let correct = (0..400).filter(|_| rng.uniform() < p).count() as f64;
                    ArmSums {
                        n: 400.0 + sigma * rng.normal(),
                        correct: correct + sigma * rng.normal(),
                    }
                };
                let (a, b) = (draw(0.70), draw(0.75));
                let c = compare(&a, &b, sigma).unwrap();
                if c.ci95.0 <= 0.05 && 0.05 <= c.ci95.1 {
                    covered += 1;
                }
            }
            let rate = f64::from(covered) / f64::from(trials);
            assert!((0.93..=0.97).contains(&rate), "sigma {sigma}: {rate}");
        }
    }

    #[test]
    fn the_split_is_keyed_stable_and_even() {
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let units: Vec<String> = (0..2000).map(|i| format!("site/{i}")).collect();
        let b = units.iter().filter(|u| arm_of(&k1, u)).count();
        assert!((900..=1100).contains(&b), "{b}");
        assert!(units.iter().all(|u| arm_of(&k1, u) == arm_of(&k1, u)));
        let moved = units
            .iter()
            .filter(|u| arm_of(&k1, u) != arm_of(&k2, u))
            .count();
        assert!((900..=1100).contains(&moved), "{moved}");
    }

    #[test]
    fn an_empty_arm_is_refused() {
        let e = compare(
            &ArmSums::default(),
            &ArmSums {
                n: 10.0,
                correct: 5.0,
            },
            0.0,
        )
        .unwrap_err();
        assert!(e.contains("too few"), "{e}");
    }
}
