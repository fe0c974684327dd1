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
    /// How the sum is protected: SecAgg+ masks (the default) or homomorphic
    /// encryption under a key shared by `key_holders`.
    #[serde(default)]
    pub scheme: Scheme,
    /// With `scheme = "homomorphic"`: the sites that hold the shares of each
    /// round's decryption key. Every one of them must answer for a round's
    /// sum to be decrypted (n-of-n); at most [`MAX_KEY_HOLDERS`].
    #[serde(default)]
    pub key_holders: Vec<String>,
}

/// The most key holders a plan may name.
pub const MAX_KEY_HOLDERS: usize = 16;

/// How a secure sum is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// SecAgg+ (Bell et al. 2020): pairwise and self masks that cancel in
    /// the sum, dropouts recovered from Shamir shares.
    #[default]
    SecaggPlus,
    /// Multiparty BFV: contributions encrypted under a joint key, sums
    /// decrypted by the key holders together (`tessera-he`).
    Homomorphic,
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
            scheme: Scheme::default(),
            key_holders: Vec::new(),
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
        match self.scheme {
            Scheme::SecaggPlus if !self.key_holders.is_empty() => {
                return Err(SecAggError::Config(
                    "key_holders is for scheme = \"homomorphic\"; SecAgg+ has no key holders"
                        .into(),
                ));
            }
            Scheme::SecaggPlus => {}
            Scheme::Homomorphic => {
                if self.key_holders.is_empty() {
                    return Err(SecAggError::Config(
                        "scheme = \"homomorphic\" needs key_holders: the sites that hold the \
                         shares of each round's decryption key"
                            .into(),
                    ));
                }
                if self.key_holders.len() > MAX_KEY_HOLDERS {
                    return Err(SecAggError::Config(format!(
                        "{} key_holders, at most {MAX_KEY_HOLDERS}: every one must answer for a \
                         sum to be decrypted",
                        self.key_holders.len()
                    )));
                }
                let mut seen = std::collections::BTreeSet::new();
                if let Some(twice) = self.key_holders.iter().find(|k| !seen.insert(k.as_str())) {
                    return Err(SecAggError::Config(format!(
                        "key holder '{}' is named twice",
                        short_name(twice)
                    )));
                }
            }
        }
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

/// A name cut to 64 characters for an error message.
fn short_name(name: &str) -> String {
    name.chars().take(64).collect()
}
