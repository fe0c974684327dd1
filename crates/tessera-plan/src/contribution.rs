//! `[contribution]`: attributing the global model to the sites whose
//! updates made it (simulation).

use serde::{Deserialize, Serialize};

/// How each site's contribution is measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttributionMethod {
    /// No attribution (the default).
    #[default]
    Off,
    /// GTG-Shapley's estimate of each site's Shapley value, every round.
    Gtg,
    /// Exact Shapley values (every set of the round's sites; at most 20).
    Exact,
    /// What the round's model loses without each site.
    LeaveOneOut,
}

impl AttributionMethod {
    /// The name a plan gives it.
    pub fn name(self) -> &'static str {
        match self {
            AttributionMethod::Off => "off",
            AttributionMethod::Gtg => "gtg",
            AttributionMethod::Exact => "exact",
            AttributionMethod::LeaveOneOut => "leave-one-out",
        }
    }
}

/// What a set of sites' model is worth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttributionUtility {
    /// Minus the mean log loss over every site's test rows: smooth, so
    /// small contributions still count, but one evaluation a set.
    Loss,
    /// The accuracy over every site's test rows.
    Accuracy,
    /// The loss's first-order change: minus the gradient of the mean log
    /// loss over the round's counted sites' test rows (each site's clipped
    /// to three times the round's median norm), at the round's start,
    /// times the set's mean update. One gradient a site a round instead of
    /// one evaluation a set, so attribution costs a small part of
    /// training, and the only utility a deployed run can take; exact where
    /// the loss is linear along the updates, an approximation elsewhere
    /// (the default).
    #[default]
    FirstOrder,
    /// First order less a curvature term: half of `c` times the squared
    /// norm of the set's mean update, with `c` the one curvature (the same
    /// in every direction) at which the whole round's value is the change
    /// of the test loss the example-weighted mean of its counted updates
    /// makes, measured on the counted sites' test rows (0 where first
    /// order falls short of that change; the aggregated model, with a
    /// server step, robust rule or DP, may differ). One gradient and
    /// two evaluations a site a round; a long update (scaled up, or noise)
    /// is worth less the longer it is, where first order takes it for a
    /// long way downhill. Simulation only.
    Quadratic,
}

impl AttributionUtility {
    /// The name a plan gives it.
    pub fn name(self) -> &'static str {
        match self {
            AttributionUtility::Loss => "loss",
            AttributionUtility::Accuracy => "accuracy",
            AttributionUtility::FirstOrder => "first-order",
            AttributionUtility::Quadratic => "quadratic",
        }
    }
}

/// How a round's cohort is drawn when it is a part of the sites.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// Every site equally likely (the default).
    #[default]
    Uniform,
    /// Each site in proportion to a weight from its attribution so far:
    /// 0.1 + 0.9 times its rank score among the sites valued so far (1 for
    /// the largest mean value a round, 0 for the smallest), 1 for a site
    /// never asked, so that every site is tried, and 0.55 for one asked
    /// but never counted.
    Reputation,
}

impl Selection {
    /// The name a plan gives it.
    pub fn name(self) -> &'static str {
        match self {
            Selection::Uniform => "uniform",
            Selection::Reputation => "reputation",
        }
    }
}

/// Attribution's settings. A round's *utility* of a set of its sites is
/// the value of the model the round's start would become with the
/// example-weighted mean of those sites' updates (the empty set: the
/// round's start), evaluated on every site's test rows and summed across
/// sites, as the sites' evaluations are.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContributionConfig {
    /// The attribution (off by default).
    #[serde(default)]
    pub method: AttributionMethod,
    /// The utility.
    #[serde(default)]
    pub utility: AttributionUtility,
    /// Each site evaluates a set's model on at most this many of its test
    /// rows, the first in the split's order (all of them: 0). Built-in
    /// models only: an external model evaluates on the rows its learner
    /// holds, one call a site for every set valued.
    #[serde(default = "default_rows")]
    pub rows_per_site: usize,
    /// GTG-Shapley: stop once every estimate's standard error is at most
    /// this fraction of the round's whole gain.
    #[serde(default = "default_convergence")]
    pub convergence: f64,
    /// GTG-Shapley: most orders sampled a round.
    #[serde(default = "default_max_orders")]
    pub max_orders: usize,
    /// GTG-Shapley: an order stops counting once its prefix is within this
    /// fraction of the round's whole gain.
    #[serde(default = "default_truncation")]
    pub truncation: f64,
    /// Each site releases its label balance and distinct rows with the
    /// Laplace mechanism at this epsilon in all, half each (changing one
    /// training row the neighbouring notion, the row counts public);
    /// completeness comes from counts its reading reports anyway.
    #[serde(default = "default_quality_epsilon")]
    pub quality_epsilon: f64,
    /// A value (credits, compute hours, money) the report shares out among
    /// the sites by their positive attribution totals (none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// How each round's cohort is drawn (`federation.fraction` below 1):
    /// uniformly, or weighted by each site's attribution so far.
    #[serde(default, skip_serializing_if = "is_uniform")]
    pub selection: Selection,
}

fn is_uniform(s: &Selection) -> bool {
    *s == Selection::Uniform
}

fn default_quality_epsilon() -> f64 {
    1.0
}

fn default_rows() -> usize {
    100
}

fn default_convergence() -> f64 {
    0.003
}

fn default_max_orders() -> usize {
    400
}

fn default_truncation() -> f64 {
    0.001
}

impl Default for ContributionConfig {
    fn default() -> Self {
        Self {
            method: AttributionMethod::Off,
            utility: AttributionUtility::FirstOrder,
            rows_per_site: default_rows(),
            convergence: default_convergence(),
            max_orders: default_max_orders(),
            truncation: default_truncation(),
            quality_epsilon: default_quality_epsilon(),
            value: None,
            selection: Selection::Uniform,
        }
    }
}

impl ContributionConfig {
    /// Whether the plan attributes nothing.
    pub fn is_off(&self) -> bool {
        self.method == AttributionMethod::Off
    }

    /// The settings' own errors (the rules across sections are in `rules`).
    pub fn check(&self) -> Result<(), String> {
        for (key, v) in [
            ("convergence", self.convergence),
            ("truncation", self.truncation),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(format!(
                    "contribution.{key} must be a fraction from 0 to 1, got {v}"
                ));
            }
        }
        if !(self.quality_epsilon.is_finite() && self.quality_epsilon > 0.0) {
            return Err(format!(
                "contribution.quality_epsilon must be a number above 0, got {}",
                self.quality_epsilon
            ));
        }
        if let Some(v) = self.value.filter(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(format!(
                "contribution.value must be a number at least 0, got {v}"
            ));
        }
        if self.max_orders < 2 {
            return Err(format!(
                "contribution.max_orders must be at least 2 (an order and its reverse), got {}",
                self.max_orders
            ));
        }
        Ok(())
    }
}
