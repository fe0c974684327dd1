//! Differentially private evaluation metrics (`site_metrics = "dp"`).
//!
//! Each evaluated round, the coordinator learns the sum across sites of
//! their evaluations (through secure aggregation) and releases it only after
//! adding Gaussian noise; [`MetricsDp`] calibrates that noise and accounts
//! for the releases.
//!
//! **Neighbouring relation**: one row added to or removed from one site's
//! test set. The released sum has six parts, each of which that row moves by
//! at most one unit once scaled:
//!
//! | part | moves by at most | noise standard deviation |
//! |---|---|---|
//! | rows evaluated | 1 | `z S` |
//! | rows predicted right | 1 | `z S` |
//! | log-loss sum | [`LOSS_BOUND`] (probabilities are clipped at 1e-12) | `z S LOSS_BOUND` |
//! | one bin of the score histogram (by label) | 1 | `z S` per bin |
//! | sum of the sites' accuracies | 1 | `z S` |
//! | sites with test rows | 1 | `z S` |
//!
//! so the L2 sensitivity is `S = sqrt(6)` in those units, and each release is
//! the Gaussian mechanism with noise multiplier `z` (sampling rate 1).
//!
//! **What it composes with**: the test rows are not the training rows. The
//! training's releases (central or local DP) depend on the training rows
//! only; the metrics depend on the test rows and on the released models,
//! which is post-processing for the training rows. A row is in one split or
//! the other, so its privacy loss is the metrics' epsilon (test rows) or the
//! training's (training rows), never their sum: the run's epsilon for a row
//! is the larger of the two, which is what reports show beside each other.
//!
//! **Against whom**: the coordinator unmasks the exact sum and adds the noise
//! itself, in memory, with a key from the operating system that is never
//! stored; its database, reports, `status` and dashboard hold only noised
//! sums. A coordinator that is itself curious sees the exact sum across sites
//! (never one site's evaluation, which secure aggregation hides).

use crate::{Accountant, AccountantKind, DpEvent, PrivacyConfig, PrivacyError};

/// The largest log loss of one row: `-ln(1e-12)`, the clip of evaluation
/// probabilities, rounded up.
pub const LOSS_BOUND: f64 = 27.64;

/// The L2 sensitivity of a released sum in the units of the module's table.
pub const SENSITIVITY: f64 = 2.449_489_742_783_178;

/// The metrics' epsilon when the plan gives none.
pub const DEFAULT_METRICS_EPSILON: f64 = 1.0;

/// Noise calibration and the spend of a run's noised evaluations.
#[derive(Debug, Clone)]
pub struct MetricsDp {
    noise_multiplier: f64,
    budget: f64,
    delta: f64,
    releases: u32,
    spend: Accountant,
}

impl MetricsDp {
    /// For a run that evaluates at most `evaluations` models: the smallest
    /// noise multiplier that keeps them all within the plan's
    /// `metrics_epsilon` at its `delta`, by its accountant.
    pub fn new(config: &PrivacyConfig, evaluations: u32) -> Result<Self, PrivacyError> {
        config.validate()?;
        let budget = config.metrics_epsilon.unwrap_or(DEFAULT_METRICS_EPSILON);
        let noise_multiplier = crate::calibrate_noise_multiplier_with(
            config.accountant,
            1.0,
            u64::from(evaluations.max(1)),
            budget,
            config.delta,
        )?;
        Ok(Self {
            noise_multiplier,
            budget,
            delta: config.delta,
            releases: 0,
            spend: Accountant::new(config.accountant),
        })
    }

    /// The noise multiplier `z` of every release.
    pub fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }

    /// The standard deviation of the noise on a part that one row moves by
    /// at most one unit (`z S`).
    pub fn unit_std(&self) -> f64 {
        self.noise_multiplier * SENSITIVITY
    }

    /// One release's event.
    pub fn event(&self) -> DpEvent {
        DpEvent {
            sampling_rate: 1.0,
            noise_multiplier: self.noise_multiplier,
            steps: 1,
        }
    }

    /// Charges one release, or refuses it (and charges nothing) when it
    /// would bring the spend above the budget.
    pub fn charge(&mut self) -> Result<f64, PrivacyError> {
        let mut after = self.spend.clone();
        after.compose(&self.event())?;
        let epsilon = after.epsilon(self.delta);
        // The calibration is to 0.1%; the last release may land that far
        // above the target.
        if epsilon > self.budget * 1.001 {
            return Err(PrivacyError::BudgetExceeded {
                scope: "metrics".into(),
                budget: self.budget,
                delta: self.delta,
                what: format!("evaluation {}", self.releases + 1),
                would_spend: epsilon,
                over: epsilon - self.budget,
            });
        }
        self.spend = after;
        self.releases += 1;
        Ok(epsilon)
    }

    /// Resuming: `releases` earlier releases, charged without checks.
    pub fn restore(&mut self, releases: u32) -> Result<(), PrivacyError> {
        for _ in 0..releases {
            self.spend.compose(&self.event())?;
        }
        self.releases += releases;
        Ok(())
    }

    /// Releases so far.
    pub fn releases(&self) -> u32 {
        self.releases
    }

    /// The epsilon spent so far, at the plan's delta.
    pub fn epsilon(&self) -> f64 {
        if self.releases == 0 {
            0.0
        } else {
            self.spend.epsilon(self.delta)
        }
    }

    /// The budget.
    pub fn budget(&self) -> f64 {
        self.budget
    }

    /// The delta of every epsilon.
    pub fn delta(&self) -> f64 {
        self.delta
    }

    /// The accountant.
    pub fn accountant(&self) -> AccountantKind {
        self.spend.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SiteMetrics;

    fn config(epsilon: f64, accountant: AccountantKind) -> PrivacyConfig {
        PrivacyConfig {
            site_metrics: SiteMetrics::Dp,
            metrics_epsilon: Some(epsilon),
            accountant,
            ..PrivacyConfig::default()
        }
    }

    #[test]
    fn the_sensitivity_is_the_root_of_six_unit_parts() {
        assert!((SENSITIVITY - 6f64.sqrt()).abs() < 1e-15);
        assert!(LOSS_BOUND >= -(1e-12f64.ln()));
    }

    #[test]
    fn the_planned_evaluations_fit_the_budget_and_one_more_is_refused() {
        for kind in [AccountantKind::Rdp, AccountantKind::Pld] {
            let mut dp = MetricsDp::new(&config(1.0, kind), 15).expect("calibrates");
            let mut last = 0.0;
            for _ in 0..15 {
                let eps = dp.charge().expect("within the budget");
                assert!(eps > last);
                last = eps;
            }
            assert!(last <= 1.001 && last > 0.9, "{kind:?}: {last}");
            let refused = dp.charge().expect_err("a 16th release is over");
            assert!(refused.to_string().contains("metrics"), "{refused}");
            assert_eq!(dp.releases(), 15);
            assert!((dp.epsilon() - last).abs() < 1e-12);
        }
    }

    #[test]
    fn one_release_is_the_gaussian_mechanism_of_the_classical_bound() {
        // The classical analytic bound (Dwork and Roth, Theorem A.1):
        // z = sqrt(2 ln(1.25 / delta)) / epsilon suffices for epsilon < 1,
        // so the calibrated multiplier can only be smaller.
        let dp = MetricsDp::new(&config(0.5, AccountantKind::Rdp), 1).expect("calibrates");
        let classical = (2.0 * (1.25f64 / 1e-5).ln()).sqrt() / 0.5;
        assert!(
            dp.noise_multiplier() < classical,
            "{}",
            dp.noise_multiplier()
        );
        assert!(dp.noise_multiplier() > classical / 2.0);
    }

    #[test]
    fn a_restored_run_spends_what_it_spent() {
        let mut first = MetricsDp::new(&config(2.0, AccountantKind::Rdp), 10).expect("calibrates");
        for _ in 0..4 {
            first.charge().expect("within");
        }
        let mut resumed =
            MetricsDp::new(&config(2.0, AccountantKind::Rdp), 10).expect("calibrates");
        resumed.restore(4).expect("restores");
        assert_eq!(resumed.releases(), 4);
        assert!((resumed.epsilon() - first.epsilon()).abs() < 1e-12);
    }

    #[test]
    fn metrics_epsilon_without_dp_metrics_is_refused() {
        let plan = PrivacyConfig {
            metrics_epsilon: Some(1.0),
            ..PrivacyConfig::default()
        };
        let e = plan.validate().expect_err("refused");
        assert!(e.to_string().contains("site_metrics = \"dp\""), "{e}");
        let bad = config(-1.0, AccountantKind::Rdp);
        assert!(bad.validate().is_err());
    }
}
