//! The plan's `[secure_aggregation]` table and the round parameters it gives.

use serde::{Deserialize, Serialize};

use crate::error::short;
use crate::{RoundParams, SecAggError};

/// The plan's `[secure_aggregation]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureAggregationConfig {
    /// Whether updates are securely aggregated.
    #[serde(default)]
    pub enabled: bool,
    /// Each update value is clipped to `[-clip_range, clip_range]` before
    /// quantisation.
    #[serde(default = "default_range")]
    pub clip_range: f32,
    /// Neighbours per participant (default: the even number at or above
    /// `3 log2 n`).
    #[serde(default)]
    pub neighbours: Option<usize>,
    /// Shares needed to rebuild a secret (default: `neighbours / 2 + 1`).
    /// Must be more than half the neighbours, so that a coordinator that
    /// tells some neighbours "survived" and others "dropped" can never
    /// collect both of a participant's secrets.
    #[serde(default)]
    pub threshold: Option<usize>,
    /// Instead of `threshold`: the share of each participant's neighbours
    /// that may drop while its secrets stay recoverable (threshold =
    /// `neighbours x (1 - dropout_tolerance)`, and more than half the
    /// neighbours, so below 0.5). Higher tolerates more dropouts; lower needs
    /// more colluding neighbours to break privacy.
    #[serde(default)]
    pub dropout_tolerance: Option<f64>,
    /// The share of a round's cohort that may drop mid-round (below 0.5):
    /// sets the default neighbour count ([`RoundParams::default_neighbours`]).
    #[serde(default = "default_max_dropout")]
    pub max_dropout: f64,
}

fn default_max_dropout() -> f64 {
    0.3
}

fn default_range() -> f32 {
    1.0
}

impl Default for SecureAggregationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            clip_range: default_range(),
            neighbours: None,
            threshold: None,
            dropout_tolerance: None,
            max_dropout: default_max_dropout(),
        }
    }
}

impl SecureAggregationConfig {
    /// Checks the settings that do not depend on the cohort.
    pub fn validate(&self) -> Result<(), SecAggError> {
        if !(self.clip_range.is_finite() && self.clip_range > 0.0) {
            return Err(SecAggError::Config(format!(
                "clip_range must be positive, got {}",
                short(self.clip_range)
            )));
        }
        if self.threshold.is_some() && self.dropout_tolerance.is_some() {
            return Err(SecAggError::Config(
                "give threshold or dropout_tolerance, not both".into(),
            ));
        }
        if let Some(tol) = self.dropout_tolerance
            && !(0.0..0.5).contains(&tol)
        {
            return Err(SecAggError::Config(format!(
                "dropout_tolerance must be in [0, 0.5), got {}: the threshold must stay above half the neighbours, or a coordinator that lies about who dropped could rebuild both of a participant's secrets",
                short(tol)
            )));
        }
        RoundParams::default_neighbours(3, self.max_dropout)?;
        Ok(())
    }

    /// The parameters of a round with these settings.
    pub fn round_params(
        &self,
        round: u32,
        participants: &[u32],
        graph_seed: [u8; 32],
        dimension: usize,
    ) -> Result<RoundParams, SecAggError> {
        self.validate()?;
        let mut params = RoundParams::with_dropout(
            round,
            participants,
            graph_seed,
            dimension,
            self.clip_range,
            self.max_dropout,
        )?;
        if let Some(k) = self.neighbours {
            params.neighbours = k;
            params.threshold = RoundParams::default_threshold(k);
        }
        match (self.threshold, self.dropout_tolerance) {
            (Some(t), _) => params.threshold = t,
            (None, Some(tol)) => {
                let k = params.neighbours as f64;
                params.threshold = ((k * (1.0 - tol)).ceil() as usize)
                    .max(RoundParams::default_threshold(params.neighbours))
                    .min(params.neighbours);
            }
            (None, None) => {}
        }
        params.validate()?;
        Ok(params)
    }
}
