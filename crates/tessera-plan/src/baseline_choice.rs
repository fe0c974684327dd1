//! `[baseline_choice]`: how the baselines a federated model is compared
//! with (each site alone, every site's rows pooled) are regularised and
//! early-stopped on rows held out of their own training rows, so that the
//! comparison is against models trained as carefully as one would train
//! them alone. On by default; a plan reproducing a published protocol whose
//! baselines train a fixed length turns it off.

use serde::{Deserialize, Serialize};

/// The held-out choice of the baselines' weight decay and length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineChoiceConfig {
    /// Whether the baselines are chosen so (else trained as `[baselines]`
    /// says, from start to end).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Share of a baseline's training rows held out to choose by.
    #[serde(default = "default_share")]
    pub validation_share: f64,
    /// Weight decays tried, beside the baseline training's own.
    #[serde(default = "default_decays")]
    pub weight_decays: Vec<f32>,
    /// Epochs (stages) without a lower held-out loss after which a weight
    /// decay's training stops (10: at 3, SGD's noisy held-out loss stopped
    /// trainings that went on to improve).
    #[serde(default = "default_patience")]
    pub patience: u64,
    /// Fewest rows held out to choose on: a baseline that would hold out
    /// fewer is trained as `[baselines]` says, with its own weight decay and
    /// full length (50: a site of 48 training rows choosing on 10 stopped
    /// after one epoch and lost to its own full-length training).
    #[serde(default = "default_min_rows")]
    pub min_validation_rows: u64,
}

fn yes() -> bool {
    true
}

fn default_share() -> f64 {
    0.2
}

fn default_decays() -> Vec<f32> {
    vec![0.0, 1e-3, 1e-2]
}

fn default_patience() -> u64 {
    10
}

fn default_min_rows() -> u64 {
    50
}

impl Default for BaselineChoiceConfig {
    fn default() -> Self {
        Self {
            enabled: yes(),
            validation_share: default_share(),
            weight_decays: default_decays(),
            patience: default_patience(),
            min_validation_rows: default_min_rows(),
        }
    }
}

/// Most weight decays a plan may try (each is a training of every baseline).
pub const MAX_WEIGHT_DECAYS: usize = 8;

impl BaselineChoiceConfig {
    /// Whether these are the defaults (left out of a plan's text, so that a
    /// plan's hash does not change with them).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The settings' own errors.
    pub fn check(&self) -> Result<(), String> {
        if !(0.05..=0.5).contains(&self.validation_share) {
            return Err(format!(
                "baseline_choice.validation_share must be between 0.05 and 0.5, not {}",
                self.validation_share
            ));
        }
        if self.weight_decays.len() > MAX_WEIGHT_DECAYS {
            return Err(format!(
                "baseline_choice.weight_decays: at most {MAX_WEIGHT_DECAYS}, not {}",
                self.weight_decays.len()
            ));
        }
        if let Some(d) = self
            .weight_decays
            .iter()
            .find(|d| !(d.is_finite() && (0.0..=1.0).contains(*d)))
        {
            return Err(format!(
                "baseline_choice.weight_decays: {d} is not between 0 and 1"
            ));
        }
        if self.min_validation_rows == 0 {
            return Err("baseline_choice.min_validation_rows must be at least 1".into());
        }
        if !(1..=1000).contains(&self.patience) {
            return Err(format!(
                "baseline_choice.patience must be between 1 and 1000, not {}",
                self.patience
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_out_of_range_are_refused_by_name() {
        assert!(BaselineChoiceConfig::default().check().is_ok());
        for (change, key) in [
            (
                (|c: &mut BaselineChoiceConfig| c.validation_share = 0.9)
                    as fn(&mut BaselineChoiceConfig),
                "validation_share",
            ),
            (|c| c.validation_share = f64::NAN, "validation_share"),
            (|c| c.weight_decays = vec![0.1; 9], "weight_decays"),
            (|c| c.weight_decays = vec![f32::NAN], "weight_decays"),
            (|c| c.weight_decays = vec![-1e-3], "weight_decays"),
            (|c| c.patience = 0, "patience"),
            (|c| c.min_validation_rows = 0, "min_validation_rows"),
        ] {
            let mut config = BaselineChoiceConfig::default();
            change(&mut config);
            let e = config.check().unwrap_err();
            assert!(e.contains(key), "{e}");
        }
    }
}
