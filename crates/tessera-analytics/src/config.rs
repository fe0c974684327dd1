//! The plan's `[analytics]` table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How queries over the federation are answered (`[analytics]`).
///
/// ```toml
/// [analytics]
/// dp = true            # false: answers are exact; with a store recorded in
///                      # analytics_queries as unprotected, never as ledger rows
/// epsilon = 1.0        # per query, at `delta`
/// delta = 1e-6
/// min_group = 10       # groups whose noisy count is below are suppressed
/// per_site = false     # whether PER SITE answers are allowed
/// public_levels = false # whether GROUP BY / crosstab may use levels the schema does not declare
/// analysts = ["alice"] # who may query a deployed federation (their certificates' names)
/// serve_seconds = 600  # how long sites stay connected for queries after training
/// [analytics.bounds]
/// age = [0, 120]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsConfig {
    /// Whether answers carry Gaussian noise; `false` must be written out.
    /// An exact answer is recorded (with a run store) in
    /// `analytics_queries` as unprotected, not in the privacy ledger.
    #[serde(default = "yes")]
    pub dp: bool,
    /// Each query's epsilon (at `delta`), for one row added or removed
    /// (replacing one costs up to twice); training's central DP protects a
    /// whole site, so a run epsilon summing both is a row-level bound.
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
    /// Each query's delta.
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// Groups whose noisy row count is below this are suppressed.
    #[serde(default = "default_min_group")]
    pub min_group: f64,
    /// Whether `PER SITE` answers (each site's own) are allowed.
    #[serde(default)]
    pub per_site: bool,
    /// Whether GROUP BY and crosstab may read a categorical column whose
    /// levels the `[data]` schema does not declare: its levels come from
    /// the data, and the answer lists them (a rare level shows).
    #[serde(default)]
    pub public_levels: bool,
    /// Levels of the quantile tree (`2^depth` leaves over a column's bounds).
    #[serde(default = "default_depth")]
    pub quantile_depth: u32,
    /// Cells of a count-distinct sketch.
    #[serde(default = "default_cells")]
    pub sketch_cells: usize,
    /// Agreed bounds of numeric columns, `name = [low, high]`.
    #[serde(default)]
    pub bounds: BTreeMap<String, [f64; 2]>,
    /// Who may query a deployed federation (`tessera analyze
    /// --coordinator`): the names of their certificates of the federation
    /// CA (issued like a site's, `tessera ca issue --site NAME`). Empty (the
    /// default): deployed queries are refused.
    #[serde(default)]
    pub analysts: Vec<String>,
    /// Seconds the coordinator keeps the sites connected after the last
    /// training round so that analysts can query them (0, the default: the
    /// run ends with its last round). The run ends when they elapse, or
    /// earlier at an analyst's `tessera analyze --coordinator ... --close`.
    #[serde(default)]
    pub serve_seconds: u64,
    /// Secure joins between deployed sites (`[[analytics.joins]]`, see
    /// [`crate::join`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joins: Vec<crate::join::JoinSpec>,
}

/// The longest `serve_seconds`: a week.
pub const MAX_SERVE_SECONDS: u64 = 7 * 24 * 3600;

fn yes() -> bool {
    true
}

fn default_epsilon() -> f64 {
    1.0
}

fn default_delta() -> f64 {
    1e-6
}

fn default_min_group() -> f64 {
    10.0
}

fn default_depth() -> u32 {
    10
}

fn default_cells() -> usize {
    4096
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            dp: true,
            epsilon: default_epsilon(),
            delta: default_delta(),
            min_group: default_min_group(),
            per_site: false,
            public_levels: false,
            quantile_depth: default_depth(),
            sketch_cells: default_cells(),
            bounds: BTreeMap::new(),
            analysts: Vec::new(),
            serve_seconds: 0,
            joins: Vec::new(),
        }
    }
}

impl AnalyticsConfig {
    /// Every problem of the settings on their own, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            out.push(format!(
                "analytics.epsilon must be positive, got {}",
                self.epsilon
            ));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            out.push(format!(
                "analytics.delta must be in (0, 1), got {}",
                self.delta
            ));
        }
        if !(self.min_group.is_finite() && self.min_group >= 0.0) {
            out.push(format!(
                "analytics.min_group must be a count (finite, >= 0), got {}",
                self.min_group
            ));
        }
        if !(1..=20).contains(&self.quantile_depth) {
            out.push(format!(
                "analytics.quantile_depth must be in 1..=20, got {}",
                self.quantile_depth
            ));
        }
        if !(1..=1 << 20).contains(&self.sketch_cells) {
            out.push(format!(
                "analytics.sketch_cells must be in 1..=1048576, got {}",
                self.sketch_cells
            ));
        }
        if self.serve_seconds > MAX_SERVE_SECONDS {
            out.push(format!(
                "analytics.serve_seconds must be at most {MAX_SERVE_SECONDS} (a week), got {}",
                self.serve_seconds
            ));
        }
        for name in &self.analysts {
            if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                out.push(format!(
                    "analytics.analysts: {name:?} is not a certificate name (1 to 128 bytes, no \
                     control characters)"
                ));
            }
        }
        for (name, [low, high]) in &self.bounds {
            if !(low.is_finite() && high.is_finite() && low < high && (high - low).is_finite()) {
                out.push(format!(
                    "analytics.bounds.{name} = [{low}, {high}]: the lower bound must be below \
                     the upper, both finite and their difference too"
                ));
            }
        }
        out
    }
}
