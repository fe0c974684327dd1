//! The plan's `[privacy]` table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    AccountantKind, AdaptiveClipping, Budgets, DpEvent, Ledger, PrivacyError,
    calibrate_noise_multiplier_with,
};

/// Which differential privacy a run applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivacyMode {
    /// No differential privacy.
    #[default]
    Off,
    /// Client-level DP-FedAvg: clipped updates, noise on the aggregate.
    Central,
    /// Example-level DP-SGD inside each participant's local training.
    Local,
}

/// Differential privacy settings of a plan.
///
/// ```toml
/// [privacy]
/// mode = "central"
/// epsilon = 3.0        # noise calibrated so the plan's rounds spend this
/// delta = 1e-5
/// clip_norm = 0.5
/// accountant = "pld" # default "rdp"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// `off` or `central`.
    #[serde(default)]
    pub mode: PrivacyMode,
    /// Target epsilon of the whole run; calibrates the noise when
    /// `noise_multiplier` is not given, and is the run budget when `budget`
    /// is not.
    #[serde(default)]
    pub epsilon: Option<f64>,
    /// The delta of every (epsilon, delta) figure.
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// Noise standard deviation over the clipping norm.
    #[serde(default)]
    pub noise_multiplier: Option<f64>,
    /// L2 norm each update is clipped to (the initial norm when adaptive).
    #[serde(default = "default_clip_norm")]
    pub clip_norm: f64,
    /// Adaptive clipping (Andrew et al. 2021); off by default: with a handful
    /// of sites the count's noise would leave too little for the updates.
    #[serde(default)]
    pub adaptive_clipping: Option<AdaptiveClipping>,
    /// The run's epsilon budget (default: `epsilon`).
    #[serde(default)]
    pub budget: Option<f64>,
    /// Budgets of individual participants, by site name.
    #[serde(default)]
    pub participant_budgets: BTreeMap<String, f64>,
    /// The accountant that calibrates the noise and keeps the ledger: `rdp`
    /// (the default) or `pld` (tighter: the same noise spends less epsilon,
    /// so the same epsilon allows less noise).
    #[serde(default)]
    pub accountant: AccountantKind,
    /// What the coordinator may learn of each site's evaluations: `clear`
    /// (each site's counts, loss and score histogram, as before) or
    /// `aggregate-only` (the default: only their sums across sites, through
    /// a secure aggregation round of their own; needs at least three sites)
    /// or `dp` (those sums with Gaussian noise, charged to `metrics_epsilon`).
    #[serde(default)]
    pub site_metrics: SiteMetrics,
    /// With `site_metrics = "dp"`: the epsilon (at `delta`) that all of the
    /// run's evaluations spend together, one row of a site's test set added
    /// or removed; 1 when not given.
    #[serde(default)]
    pub metrics_epsilon: Option<f64>,
}

/// What the coordinator may learn of each site's evaluations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SiteMetrics {
    /// Each site's evaluation reaches the coordinator (its database and
    /// report hold per-site metrics).
    Clear,
    /// Sites mask their evaluations; the coordinator unmasks only the sum
    /// across sites (pooled counts, loss, score histogram, and the mean of
    /// the sites' accuracies).
    #[default]
    AggregateOnly,
    /// As `AggregateOnly`, and the coordinator adds Gaussian noise to the
    /// sums before anything is stored or reported (see [`crate::MetricsDp`]).
    Dp,
}

impl SiteMetrics {
    /// Whether sites mask their evaluations so that only sums reach the
    /// coordinator (`aggregate-only` and `dp`).
    pub fn sums_only(self) -> bool {
        self != Self::Clear
    }

    /// The plan's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Clear => "clear",
            Self::AggregateOnly => "aggregate-only",
            Self::Dp => "dp",
        }
    }
}

fn default_delta() -> f64 {
    1e-5
}
fn default_clip_norm() -> f64 {
    1.0
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            mode: PrivacyMode::Off,
            epsilon: None,
            delta: default_delta(),
            noise_multiplier: None,
            clip_norm: default_clip_norm(),
            adaptive_clipping: None,
            budget: None,
            participant_budgets: BTreeMap::new(),
            accountant: AccountantKind::default(),
            site_metrics: SiteMetrics::default(),
            metrics_epsilon: None,
        }
    }
}

impl PrivacyConfig {
    /// Whether any DP applies.
    pub fn is_on(&self) -> bool {
        self.mode != PrivacyMode::Off
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), PrivacyError> {
        if let Some(eps) = self.metrics_epsilon {
            if !(eps.is_finite() && eps > 0.0) {
                return Err(PrivacyError::Invalid(format!(
                    "metrics_epsilon {} must be positive",
                    tessera_core::value(eps)
                )));
            }
            if self.site_metrics != SiteMetrics::Dp {
                return Err(PrivacyError::Invalid(format!(
                    "metrics_epsilon applies to site_metrics = \"dp\", not \"{}\"",
                    self.site_metrics.name()
                )));
            }
        }
        if self.site_metrics == SiteMetrics::Dp && !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(PrivacyError::Invalid(format!(
                "delta {} must be in (0, 1)",
                tessera_core::value(self.delta)
            )));
        }
        if !self.is_on() {
            return Ok(());
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(PrivacyError::Invalid(format!(
                "delta {} must be in (0, 1)",
                tessera_core::value(self.delta)
            )));
        }
        for (name, value) in [("epsilon", self.epsilon), ("budget", self.budget)]
            .into_iter()
            .chain(
                self.participant_budgets
                    .values()
                    .map(|&b| ("participant budget", Some(b))),
            )
        {
            if let Some(v) = value
                && !(v.is_finite() && v > 0.0)
            {
                return Err(PrivacyError::Invalid(format!(
                    "{name} {} must be positive",
                    tessera_core::value(v)
                )));
            }
        }
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return Err(PrivacyError::Invalid(format!(
                "clip_norm {} must be positive",
                tessera_core::value(self.clip_norm)
            )));
        }
        match self.noise_multiplier {
            Some(z) if !(z.is_finite() && z > 0.0) => Err(PrivacyError::Invalid(format!(
                "noise_multiplier {} must be positive",
                tessera_core::value(z)
            ))),
            None if self.epsilon.is_none() => Err(PrivacyError::Invalid(
                "central DP needs noise_multiplier or a target epsilon to calibrate it".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The noise multiplier of a run of `rounds` rounds: as given, or the
    /// smallest that keeps the rounds within the target epsilon.
    pub fn noise_multiplier_for(&self, rounds: u32) -> Result<f64, PrivacyError> {
        self.validate()?;
        match (self.noise_multiplier, self.epsilon) {
            (Some(z), _) => Ok(z),
            (None, Some(eps)) => calibrate_noise_multiplier_with(
                self.accountant,
                Self::SAMPLING_RATE,
                u64::from(rounds),
                eps,
                self.delta,
            ),
            (None, None) => Err(PrivacyError::Invalid("no noise multiplier".into())),
        }
    }

    /// Local DP-SGD: the noise multiplier of a participant whose rounds take
    /// `steps_per_round` steps at sampling rate `q`: as given, or the
    /// smallest that keeps `rounds` rounds within the target epsilon.
    pub fn local_noise_multiplier(
        &self,
        q: f64,
        steps_per_round: u64,
        rounds: u32,
    ) -> Result<f64, PrivacyError> {
        self.validate()?;
        match (self.noise_multiplier, self.epsilon) {
            (Some(z), _) => Ok(z),
            (None, Some(eps)) => calibrate_noise_multiplier_with(
                self.accountant,
                q,
                steps_per_round.saturating_mul(u64::from(rounds)),
                eps,
                self.delta,
            ),
            (None, None) => Err(PrivacyError::Invalid("no noise multiplier".into())),
        }
    }

    /// The accounting sampling rate of a round. Cohorts are drawn at a fixed
    /// size, not by Poisson sampling, so no amplification by sampling is
    /// claimed: every round counts as if every participant took part.
    pub const SAMPLING_RATE: f64 = 1.0;

    /// The DP event of one round with noise multiplier `noise_multiplier`.
    pub fn round_event(noise_multiplier: f64) -> DpEvent {
        DpEvent {
            sampling_rate: Self::SAMPLING_RATE,
            noise_multiplier,
            steps: 1,
        }
    }

    /// The budgets the ledger enforces.
    pub fn budgets(&self) -> Budgets {
        Budgets {
            delta: self.delta,
            run: self.budget.or(self.epsilon),
            participants: self.participant_budgets.clone(),
        }
    }

    /// An empty ledger of the plan's budgets, kept by the plan's accountant.
    pub fn ledger(&self) -> Ledger {
        Ledger::with_accountant(self.budgets(), self.accountant)
    }
}

#[cfg(test)]
mod tests {
    use serde::de::value::{Error, MapDeserializer};

    use super::*;

    fn read(fields: &[(&'static str, &'static str)]) -> Result<PrivacyConfig, Error> {
        PrivacyConfig::deserialize(MapDeserializer::new(fields.iter().copied()))
    }

    #[test]
    fn the_accountant_defaults_to_rdp_and_reads_pld() {
        let plain = read(&[("mode", "central")]).expect("reads");
        assert_eq!(plain.accountant, AccountantKind::Rdp);
        let pld = read(&[("mode", "central"), ("accountant", "pld")]).expect("reads");
        assert_eq!(pld.accountant, AccountantKind::Pld);
        let err = read(&[("accountant", "moments")]).expect_err("unknown accountant");
        assert!(err.to_string().contains("pld"), "{err}");
        assert_eq!(PrivacyConfig::default().accountant, AccountantKind::Rdp);
    }

    #[test]
    fn the_plans_accountant_calibrates_and_keeps_the_ledger() {
        let rdp = PrivacyConfig {
            mode: PrivacyMode::Central,
            epsilon: Some(3.0),
            ..Default::default()
        };
        let pld = PrivacyConfig {
            accountant: AccountantKind::Pld,
            ..rdp.clone()
        };
        rdp.validate().expect("valid");
        pld.validate().expect("valid");
        let (r, p) = (
            rdp.noise_multiplier_for(15).expect("calibrates"),
            pld.noise_multiplier_for(15).expect("calibrates"),
        );
        assert!(p < r, "PLD {p}, RDP {r}");
        let (r, p) = (
            rdp.local_noise_multiplier(0.05, 10, 5).expect("calibrates"),
            pld.local_noise_multiplier(0.05, 10, 5).expect("calibrates"),
        );
        assert!(p < r, "PLD {p}, RDP {r}");
        assert_eq!(rdp.ledger().accountant(), AccountantKind::Rdp);
        assert_eq!(pld.ledger().accountant(), AccountantKind::Pld);
        assert_eq!(pld.ledger().budgets(), &pld.budgets());
    }
}
