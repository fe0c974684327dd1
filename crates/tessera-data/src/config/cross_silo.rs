//! `[data.cross_silo]`: a training feature computed across sites from an
//! identifier column, under differential privacy.

use serde::{Deserialize, Serialize};

use super::DataConfig;

/// The most rows of one identifier a site counts (`max_visits`): each
/// counted row is one query point per identifier.
pub const MAX_VISITS: u32 = 64;

/// A cross-silo feature: for each row, how often its identifier occurs at
/// the *other* sites (rows per site counted up to `max_visits`), learnt
/// through noisy membership (`tessera-psi`'s `noisy`) so that no site
/// learns another's exact answer. The identifier column is read only for
/// this and never becomes a feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossSiloConfig {
    /// The column holding each row's identifier (for example a patient
    /// number), compared after normalisation (case, whitespace and
    /// separators, as `tessera-psi` normalises).
    pub identifier: String,
    /// The new feature's name.
    #[serde(default = "default_feature")]
    pub feature: String,
    /// What each site spends on the feature (all its answers together), at
    /// `delta`.
    pub epsilon: f64,
    /// The delta of `epsilon`.
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// The most rows of one identifier each other site counts: 1 counts
    /// sites ("at how many other sites is this patient known"), more counts
    /// visits up to this cap (the noise grows with its square root).
    #[serde(default = "default_max_visits")]
    pub max_visits: u32,
}

fn default_feature() -> String {
    "visits_elsewhere".into()
}
fn default_delta() -> f64 {
    1e-5
}
fn default_max_visits() -> u32 {
    1
}

impl CrossSiloConfig {
    /// What can be checked without reading a file; `config` is the data
    /// section that holds it.
    pub(crate) fn validate(&self, config: &DataConfig) -> Result<(), String> {
        let mut reasons = Vec::new();
        if self.identifier.trim().is_empty() {
            reasons.push("identifier must name a column".to_string());
        }
        if self.feature.trim().is_empty() {
            reasons.push("feature must be a name".to_string());
        }
        if self.identifier == config.schema.target {
            reasons.push(format!(
                "identifier '{}' is the target column",
                self.identifier
            ));
        }
        if config.site_column.as_deref() == Some(self.identifier.as_str()) {
            reasons.push(format!(
                "identifier '{}' is the site column",
                self.identifier
            ));
        }
        if self.feature == self.identifier || self.feature == config.schema.target {
            reasons.push(format!(
                "feature '{}' must differ from the identifier and the target",
                self.feature
            ));
        }
        if config.schema.columns.iter().any(|c| c.name == self.feature) {
            reasons.push(format!(
                "feature '{}' is already a column of the schema",
                self.feature
            ));
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            reasons.push(format!(
                "epsilon must be positive, got {}",
                tessera_core::value(self.epsilon)
            ));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            reasons.push(format!(
                "delta must lie in (0, 1), got {}",
                tessera_core::value(self.delta)
            ));
        }
        if !(1..=MAX_VISITS).contains(&self.max_visits) {
            reasons.push(format!(
                "max_visits must lie in 1..={MAX_VISITS}, got {}",
                self.max_visits
            ));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }
}
