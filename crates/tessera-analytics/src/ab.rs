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
    paired_noised(
        n as f64,
        correct_a as f64,
        b_only as f64,
        a_only as f64,
        0.0,
    )
}

/// [`paired`] from sums that each carry Gaussian noise of standard
/// deviation `sigma` (a DP release of the four counts): the counts are
/// brought back to what fits (`correct_a` within `[0, n]`, `b_only` at most
/// the rows A got wrong, `a_only` at most those it got right), and the
/// variance gains the noise's, `sigma² (2 + d²) / n²` for a difference `d`
/// (the noise of `b_only` and `a_only`, and of `n` through the delta method).
pub fn paired_noised(
    n: f64,
    correct_a: f64,
    b_only: f64,
    a_only: f64,
    sigma: f64,
) -> Result<Comparison, String> {
    let finite = [n, correct_a, b_only, a_only, sigma]
        .iter()
        .all(|v| v.is_finite());
    if !finite || n < 1.0 || sigma < 0.0 {
        return Err(format!(
            "{n:.1} rows, {correct_a:.1} right by A, {b_only:.1} by B only and {a_only:.1} by A \
             only (noise {sigma}): too few rows to compare"
        ));
    }
    let nf = n;
    let right = correct_a.clamp(0.0, nf);
    let b = b_only.clamp(0.0, nf - right);
    let c = a_only.clamp(0.0, right);
    let difference = (b - c) / nf;
    let sampling = ((b + c) - (b - c) * (b - c) / nf).max(0.0) / (nf * nf);
    let noise = sigma * sigma * (2.0 + difference * difference) / (nf * nf);
    let standard_error = (sampling + noise).sqrt();
    let accuracy_a = right / nf;
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

/// The most rows one canary site may say it scored.
pub const MAX_CANARY_ROWS: u64 = 1_000_000_000;

/// The values of a canary's comparison as it is summed securely: the site
/// count (1), rows scored by both models, rows production got right, rows
/// the candidate alone got right, rows production alone got right.
pub const CANARY_FIELDS: usize = 5;

/// A canary comparison's counts: one site's, or the canaries' sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CanaryCounts {
    /// Sites summed.
    pub sites: u64,
    /// Test rows scored by both models.
    pub rows: u64,
    /// Rows production got right.
    pub production_right: u64,
    /// Rows the candidate alone got right.
    pub candidate_only: u64,
    /// Rows production alone got right.
    pub production_only: u64,
}

impl CanaryCounts {
    /// One site's counts.
    pub fn of_site(
        rows: u64,
        production_right: u64,
        candidate_only: u64,
        production_only: u64,
    ) -> Self {
        Self {
            sites: 1,
            rows,
            production_right,
            candidate_only,
            production_only,
        }
    }

    /// The values a site masks: each count as 16-bit limbs
    /// ([`crate::secure::limbs`]), so that the sum of up to 2^16 sites does
    /// not wrap.
    pub fn encode(&self) -> Vec<u32> {
        crate::secure::limbs(&[
            self.sites,
            self.rows,
            self.production_right,
            self.candidate_only,
            self.production_only,
        ])
    }

    /// The length of [`Self::encode`].
    pub fn dimension() -> usize {
        CANARY_FIELDS * crate::secure::LIMBS
    }

    /// The canaries' sum from the unmasked sum of `survivors` sites'
    /// encodings, or why it does not fit: the site count is the survivors',
    /// each site scored 1 to [`MAX_CANARY_ROWS`] rows, and the counts fit
    /// the rows (a site that masked counts out of bounds shows here, though
    /// which one cannot be told).
    pub fn decode(sum: &[u32], survivors: usize) -> Result<Self, String> {
        if sum.len() != Self::dimension() {
            return Err(format!(
                "{} values summed, the comparison has {}",
                sum.len(),
                Self::dimension()
            ));
        }
        let v = crate::secure::recombine(sum);
        let counts = Self {
            sites: v[0],
            rows: v[1],
            production_right: v[2],
            candidate_only: v[3],
            production_only: v[4],
        };
        let survivors = survivors as u64;
        // Which checks fail, never the values: the exact sum of the others
        // is not to be shown to a canary that sent counts out of bounds.
        let mut failed = Vec::new();
        if counts.sites != survivors || survivors == 0 {
            failed.push("the site count summed is not the canaries'");
        }
        if !(survivors..=survivors.saturating_mul(MAX_CANARY_ROWS)).contains(&counts.rows) {
            failed.push("the rows summed are not 1 to 10^9 a canary");
        }
        if counts.production_right > counts.rows
            || counts.candidate_only > counts.rows - counts.production_right.min(counts.rows)
            || counts.production_only > counts.production_right
        {
            failed.push("the rows right do not fit the rows scored");
        }
        if failed.is_empty() {
            Ok(counts)
        } else {
            Err(format!(
                "the sum of {survivors} canaries' comparisons does not fit ({}): a canary masked \
                 counts out of bounds",
                failed.join("; ")
            ))
        }
    }
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

    /// The four counts noised (sigma 15 on 400 rows, the paired rows of the
    /// test above): the widened interval still covers the true difference
    /// about 95% of the time, and is wider than the exact counts' one.
    #[test]
    fn the_noised_paired_interval_covers_95_percent() {
        let mut rng = Lcg(23);
        let (trials, rows, sigma) = (2000, 400u64, 15.0);
        let mut covered = 0;
        for _ in 0..trials {
            let (mut ca, mut b_only, mut a_only) = (0, 0, 0);
            for _ in 0..rows {
                let u = rng.uniform();
                let (a, b) = (u < 0.70, u < 0.65 || (0.70..0.80).contains(&u));
                ca += u64::from(a);
                b_only += u64::from(b && !a);
                a_only += u64::from(a && !b);
            }
            let mut noised = |v: u64| v as f64 + sigma * rng.normal();
            let c = paired_noised(
                noised(rows),
                noised(ca),
                noised(b_only),
                noised(a_only),
                sigma,
            )
            .unwrap();
            if c.ci95.0 <= 0.05 && 0.05 <= c.ci95.1 {
                covered += 1;
            }
            let exact = paired(rows, ca, b_only, a_only).unwrap();
            assert!(c.standard_error > exact.standard_error);
        }
        let rate = f64::from(covered) / f64::from(trials);
        assert!((0.93..=0.97).contains(&rate), "{rate}");
        // Counts the noise pushed out of range are brought back.
        let c = paired_noised(100.0, 104.0, 3.0, -2.0, 5.0).unwrap();
        assert!((c.accuracy_a - 1.0).abs() < 1e-12 && c.difference == 0.0);
        assert!(paired_noised(0.4, 0.0, 0.0, 0.0, 5.0).is_err());
        assert!(paired_noised(f64::NAN, 0.0, 0.0, 0.0, 5.0).is_err());
    }

    /// Three sites' comparisons summed limb by limb decode to their sum;
    /// a sum with a site's counts out of bounds is refused.
    #[test]
    fn canary_counts_sum_through_their_encoding() {
        let sites = [
            CanaryCounts::of_site(70_000, 50_000, 3_000, 1_000),
            CanaryCounts::of_site(5, 2, 1, 0),
            CanaryCounts::of_site(MAX_CANARY_ROWS, 600_000_000, 70_000, 65_536),
        ];
        let sum = |all: &[CanaryCounts]| {
            let mut sum = vec![0u32; CanaryCounts::dimension()];
            for s in all {
                for (acc, v) in sum.iter_mut().zip(s.encode()) {
                    *acc = acc.wrapping_add(v);
                }
            }
            sum
        };
        let decoded = CanaryCounts::decode(&sum(&sites), 3).unwrap();
        assert_eq!(decoded.sites, 3);
        assert_eq!(decoded.rows, 70_005 + MAX_CANARY_ROWS);
        assert_eq!(decoded.production_right, 600_050_002);
        assert_eq!(decoded.candidate_only, 73_001);
        assert_eq!(decoded.production_only, 66_536);
        // A site counted twice, a survivor count that is not the sum's,
        // production alone right on more rows than it got right in all (a
        // site's counts out of bounds show only when the sum does not
        // fit), and a short sum.
        let twice = CanaryCounts {
            sites: 2,
            ..sites[1]
        };
        assert!(CanaryCounts::decode(&sum(&[sites[0], twice]), 2).is_err());
        assert!(CanaryCounts::decode(&sum(&sites), 2).is_err());
        let wrong = CanaryCounts::of_site(10, 0, 0, 60_000);
        let e = CanaryCounts::decode(&sum(&[sites[0], wrong]), 2).unwrap_err();
        assert!(e.contains("out of bounds"), "{e}");
        // Which check failed, never the sum (70,010 rows, production right
        // on 50,000), which would give the others' counts away.
        assert!(e.contains("the rows right do not fit"), "{e}");
        for value in ["70010", "70,010", "50000", "61000", "3000"] {
            assert!(!e.contains(value), "{value}: {e}");
        }
        let empty = CanaryCounts::of_site(0, 0, 0, 0);
        assert!(CanaryCounts::decode(&sum(&[empty]), 1).is_err());
        assert!(CanaryCounts::decode(&[0; 3], 1).is_err());
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
