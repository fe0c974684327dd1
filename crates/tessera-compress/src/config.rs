//! The plan's `[compression]` section and the adaptive ladder.

use serde::{Deserialize, Serialize};

use crate::{Codec, CompressError};

/// How updates (up) and models (down) travel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    /// Codec of each participant's update (`none` by default).
    #[serde(default)]
    pub upload: Codec,
    /// Codec of the global model's change sent to participants (`none` by default).
    #[serde(default)]
    pub download: Codec,
    /// Keep what the upload codec left out and add it to the next update.
    #[serde(default = "default_true")]
    pub error_feedback: bool,
    /// Choose each participant's upload codec from its bandwidth.
    #[serde(default)]
    pub adaptive: Option<AdaptiveConfig>,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            upload: Codec::NONE,
            download: Codec::NONE,
            error_feedback: true,
            adaptive: None,
        }
    }
}

fn default_true() -> bool {
    true
}

impl CompressionConfig {
    /// Whether anything is compressed.
    pub fn is_active(&self) -> bool {
        !self.upload.is_identity() || !self.download.is_identity() || self.adaptive.is_some()
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), CompressError> {
        if let Some(adaptive) = &self.adaptive {
            adaptive.validate()?;
        }
        Ok(())
    }

    /// Every upload codec a run may use (the fixed one, or the ladder's).
    pub fn upload_codecs(&self) -> Vec<Codec> {
        match &self.adaptive {
            Some(a) => a.ladder.clone(),
            None => vec![self.upload],
        }
    }
}

/// Bandwidth-adaptive compression: each round, each participant gets the
/// least lossy codec of the ladder whose upload fits the target round time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// Seconds a round should take (download, training and upload).
    pub target_round_seconds: f64,
    /// Codecs from least to most compressive.
    #[serde(default = "AdaptiveConfig::default_ladder")]
    pub ladder: Vec<Codec>,
}

impl AdaptiveConfig {
    /// none, q8, topk:0.1+q8, topk:0.01+q8, topk:0.001+q8.
    pub fn default_ladder() -> Vec<Codec> {
        ["none", "q8", "topk:0.1+q8", "topk:0.01+q8", "topk:0.001+q8"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }

    /// Checks the target and the ladder's order.
    pub fn validate(&self) -> Result<(), CompressError> {
        let error = |reason: String| CompressError::Spec {
            spec: "compression.adaptive".into(),
            reason,
        };
        if !(self.target_round_seconds.is_finite() && self.target_round_seconds > 0.0) {
            return Err(error(format!(
                "target_round_seconds must be positive, got {}",
                tessera_core::value(self.target_round_seconds)
            )));
        }
        if self.ladder.is_empty() {
            return Err(error("the ladder needs at least one codec".into()));
        }
        Ok(())
    }

    /// The ladder, for choosing.
    pub fn ladder(&self) -> Ladder<'_> {
        Ladder {
            codecs: &self.ladder,
        }
    }
}

/// Codecs from least to most compressive.
#[derive(Debug, Clone, Copy)]
pub struct Ladder<'a> {
    codecs: &'a [Codec],
}

impl<'a> Ladder<'a> {
    /// A ladder over `codecs`.
    pub fn new(codecs: &'a [Codec]) -> Self {
        Self { codecs }
    }

    /// The index of the first codec whose encoding of `n` values takes at
    /// most `seconds` at `bytes_per_second` (the last codec if none does).
    /// An unknown bandwidth (`None`) gets the first codec.
    pub fn choose(&self, n: usize, bytes_per_second: Option<f64>, seconds: f64) -> usize {
        let Some(bandwidth) = bytes_per_second.filter(|b| *b > 0.0) else {
            return 0;
        };
        self.codecs
            .iter()
            .position(|c| c.max_encoded_len(n) as f64 / bandwidth <= seconds)
            .unwrap_or(self.codecs.len().saturating_sub(1))
    }

    /// The codec at `index` (the last if past the end; `none` if empty).
    pub fn get(&self, index: usize) -> Codec {
        self.codecs
            .get(index)
            .or(self.codecs.last())
            .copied()
            .unwrap_or(Codec::NONE)
    }
}
