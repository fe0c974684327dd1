//! The model file: a trained model that describes itself, so that a site can
//! inspect it, apply it to raw CSV rows and export it without the plan or
//! the run.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! "TSRMODEL"          8 bytes, the magic
//! version             u32 (MODEL_FILE_VERSION)
//! header length       u64, at most MAX_HEADER_BYTES
//! header              JSON (ModelHeader)
//! values              f32 each, the tensors in the header's order
//! ```
//!
//! The header holds the model kind and shape, the task (target and classes),
//! the agreed columns with their encodings (feature order, one-hot
//! vocabularies), the standardisation, the missing-value tokens and the
//! delimiter, the plan's name, hash and seed, the run, and the lineage.
//! Reading checks everything before building anything: the magic (a bare
//! parameter file from an older Tessera is refused with what to do), the
//! version, every declared size against the bytes present, the header's
//! consistency, and the tensors against the model the header describes.
//! Nothing in a hostile file panics or allocates beyond the file's size.

use serde::{Deserialize, Serialize};
use tessera_core::{ParameterSet, Tensor};
use tessera_data::{Agreement, Encoding, StandardizeConfig};
use tessera_learn::{Learner, ModelConfig};
use thiserror::Error;

mod apply;
mod onnx;

pub use apply::{Predictions, Scores};
pub use onnx::to_onnx;

/// The version of the layout this crate writes, and the only one it reads.
pub const MODEL_FILE_VERSION: u32 = 1;

/// The first bytes of every model file.
pub const MAGIC: &[u8; 8] = b"TSRMODEL";

/// The largest header a model file may declare (64 MiB).
pub const MAX_HEADER_BYTES: u64 = 64 << 20;

/// The most parameters a model file may hold (as many as a model may have).
pub const MAX_VALUES: u64 = 1 << 30;

/// What is wrong with a model file, or with applying it.
#[derive(Debug, Error)]
pub enum ModelFileError {
    /// The bytes are not a model file of this version.
    #[error("not a usable model file: {0}")]
    Malformed(String),
    /// The file is of another version of the format.
    #[error(
        "model file format version {found}; this tessera reads version {MODEL_FILE_VERSION} (use the tessera that wrote it)"
    )]
    Version {
        /// The version the file declares.
        found: u32,
    },
    /// Rows to apply the model to are unusable.
    #[error("{0}")]
    Rows(String),
    /// The model cannot be exported as asked.
    #[error("{0}")]
    Export(String),
}

/// The standardisation a model's inputs need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standardization {
    /// The plan's settings (enabled, scope, ddof, epsilon).
    pub config: StandardizeConfig,
    /// Where `mean` and `scale` come from: `federation` (the agreement's
    /// merged statistics), `site:NAME` (that site's training rows) or
    /// `none` (standardisation off); absent when the file carries none (a
    /// global model of a run whose sites each standardise with their own
    /// statistics: rows are then standardised with their own statistics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Per feature: the mean subtracted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f64>>,
    /// Per feature: the divisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<Vec<f64>>,
}

/// The plan a model was trained under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanInfo {
    /// Its name.
    pub name: String,
    /// SHA-256 (hex) of the plan as canonical TOML (settings changed with
    /// `--set` included), see [`plan_hash`].
    pub hash: String,
    /// The run seed.
    pub seed: u64,
}

/// The run that produced a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInfo {
    /// The coordinator's run id (`null`: a simulation, which has none).
    pub id: Option<String>,
    /// Who wrote the file: `simulation`, `coordinator` or `participant NAME`.
    pub written_by: String,
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    /// The round (or asynchronous step) whose model this is (0: the initial model).
    pub round: u32,
    /// Rounds the plan asks for.
    pub rounds_planned: u32,
    /// Its ancestor: the initial model the run started from.
    pub parent: String,
}

/// One tensor's name and shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Its name (`dense0.weight`).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
}

/// What a model file says about its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelHeader {
    /// The model kind and shape.
    pub model: ModelConfig,
    /// The column predicted.
    pub target: String,
    /// Feature columns in order, each one's encoding (one-hot vocabularies),
    /// and the classes (a prediction is an index into them).
    pub agreement: Agreement,
    /// The encoded features in the model's input order.
    pub features: Vec<String>,
    /// How inputs are standardised.
    pub standardization: Standardization,
    /// Tokens that mark a missing value in a CSV field.
    pub missing: Vec<String>,
    /// The CSV field delimiter.
    pub delimiter: char,
    /// The plan.
    pub plan: PlanInfo,
    /// The run.
    pub run: RunInfo,
    /// Where the model comes from.
    pub lineage: Lineage,
    /// The tensors, in the order their values follow the header.
    pub parameters: Vec<TensorSpec>,
}

/// A model and what it needs to be applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFile {
    /// Everything but the values.
    pub header: ModelHeader,
    /// The parameters.
    pub parameters: ParameterSet,
}

/// SHA-256 (hex) of `plan` written as canonical TOML: the same for a plan
/// read from a file, sent over the wire or changed by the same `--set`s.
pub fn plan_hash(plan: &crate::Plan) -> String {
    use sha2::Digest;
    let text = toml::to_string(plan).unwrap_or_default();
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 (hex) of `parameters`' values, little-endian, in order: how a
/// continued run's lineage and an importance file name a model.
pub fn parameters_sha256(parameters: &ParameterSet) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for v in parameters.values() {
        hash.update(v.to_le_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl ModelFile {
    /// The file of `parameters`, trained under `plan` with `agreement`:
    /// checked as a reader would check it.
    pub fn new(
        plan: &crate::Plan,
        agreement: &Agreement,
        standardization: Standardization,
        run: RunInfo,
        round: u32,
        parameters: ParameterSet,
    ) -> Result<Self, ModelFileError> {
        let header = ModelHeader {
            model: plan.model.clone(),
            target: plan.data.schema.target.clone(),
            agreement: agreement.clone(),
            features: agreement.feature_names(),
            standardization,
            missing: plan.data.schema.missing.clone(),
            delimiter: plan.data.schema.delimiter,
            plan: PlanInfo {
                name: plan.name.clone(),
                hash: plan_hash(plan),
                seed: plan.seed,
            },
            run,
            lineage: Lineage {
                round,
                rounds_planned: plan.federation.rounds,
                parent: format!("the plan's initial model (seed {})", plan.seed),
            },
            parameters: parameters
                .iter()
                .map(|(name, t)| TensorSpec {
                    name: name.to_string(),
                    shape: t.shape().to_vec(),
                })
                .collect(),
        };
        let file = Self { header, parameters };
        file.check()?;
        Ok(file)
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A header of plain data always serialises.
        let header = serde_json::to_vec_pretty(&self.header).unwrap_or_default();
        let mut bytes = Vec::with_capacity(20 + header.len() + 4 * self.parameters.n_values());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&MODEL_FILE_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&header);
        for v in self.parameters.values() {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes
    }

    /// A model file from its bytes, checked.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelFileError> {
        let malformed = |what: String| ModelFileError::Malformed(what);
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(malformed(
                "it does not start with 'TSRMODEL' (a bare parameter file, from an older tessera \
                 or an aggregator's or gossip peer's --model-out, has no feature order, \
                 vocabularies or standardisation: write the model with this tessera's simulate, \
                 coordinator or participant --model-out)"
                    .into(),
            ));
        }
        let rest = &bytes[MAGIC.len()..];
        let Some(version) = rest.get(..4) else {
            return Err(malformed("it ends inside the format version".into()));
        };
        let version = u32::from_le_bytes([version[0], version[1], version[2], version[3]]);
        if version != MODEL_FILE_VERSION {
            return Err(ModelFileError::Version { found: version });
        }
        let Some(length) = rest.get(4..12) else {
            return Err(malformed("it ends inside the header length".into()));
        };
        let mut eight = [0u8; 8];
        eight.copy_from_slice(length);
        let declared = u64::from_le_bytes(eight);
        let body = &rest[12..];
        if declared > MAX_HEADER_BYTES {
            return Err(malformed(format!(
                "its header declares {declared} bytes, more than the {MAX_HEADER_BYTES} allowed"
            )));
        }
        if declared > body.len() as u64 {
            return Err(malformed(format!(
                "its header declares {declared} bytes, the file holds {} after it (truncated?)",
                body.len()
            )));
        }
        let (header, values) = body.split_at(declared as usize);
        let header: serde_json::Value = serde_json::from_slice(header)
            .map_err(|e| malformed(format!("its header is not a model header: {e}")))?;
        // Files written before `indicators` was a setting standardised
        // one-hot indicators like measurements.
        let before_indicators = header
            .pointer("/standardization/config")
            .is_some_and(|c| c.get("indicators").is_none());
        let mut header: ModelHeader = serde_json::from_value(header)
            .map_err(|e| malformed(format!("its header is not a model header: {e}")))?;
        if before_indicators {
            header.standardization.config.indicators = tessera_data::IndicatorScaling::Standardize;
        }
        if values.len() % 4 != 0 {
            return Err(malformed(format!(
                "{} bytes of values is not a whole number of 4-byte values (truncated?)",
                values.len()
            )));
        }
        let n_values = (values.len() / 4) as u64;
        let mut declared_values: u64 = 0;
        for spec in &header.parameters {
            let n = spec
                .shape
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
                .filter(|&n| n <= MAX_VALUES)
                .ok_or_else(|| {
                    malformed(format!(
                        "tensor '{}' declares shape {:?}, more than {MAX_VALUES} values",
                        tessera_core::shown(&spec.name, 100),
                        spec.shape
                    ))
                })?;
            declared_values = declared_values.saturating_add(n);
        }
        if declared_values != n_values {
            return Err(malformed(format!(
                "its header declares {declared_values} values, the file holds {n_values} (truncated?)"
            )));
        }
        let mut floats = values
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let mut parameters = ParameterSet::new();
        for spec in &header.parameters {
            let n: usize = spec.shape.iter().product();
            let data: Vec<f32> = floats.by_ref().take(n).collect();
            let tensor = Tensor::new(spec.shape.clone(), data)
                .map_err(|e| malformed(format!("tensor '{}': {e}", spec.name)))?;
            parameters
                .push(spec.name.clone(), tensor)
                .map_err(|e| malformed(format!("tensor '{}': {e}", spec.name)))?;
        }
        let file = Self { header, parameters };
        file.check()?;
        Ok(file)
    }

    /// Number of encoded features.
    pub fn n_features(&self) -> usize {
        self.header.features.len()
    }

    /// The classes, in the order of the model's outputs.
    pub fn classes(&self) -> &[String] {
        &self.header.agreement.classes
    }

    /// The model, built and loaded with the parameters.
    pub fn learner(&self) -> Result<Box<dyn Learner>, ModelFileError> {
        let mut learner = tessera_learn::learner(
            &self.header.model,
            self.n_features(),
            self.classes().len(),
            0,
        )
        .map_err(|e| ModelFileError::Malformed(format!("its model: {e}")))?;
        learner
            .set_parameters(&self.parameters)
            .map_err(|e| ModelFileError::Malformed(format!("its parameters: {e}")))?;
        Ok(learner)
    }

    /// Checks the header against itself and the parameters against the
    /// model it describes, before anything is built.
    fn check(&self) -> Result<(), ModelFileError> {
        let malformed = |what: String| ModelFileError::Malformed(what);
        let h = &self.header;
        let a = &h.agreement;
        if a.columns.len() != a.encodings.len() {
            return Err(malformed(format!(
                "{} columns with {} encodings",
                a.columns.len(),
                a.encodings.len()
            )));
        }
        for (name, encoding) in a.columns.iter().zip(&a.encodings) {
            if let Encoding::OneHot {
                levels,
                drop_first: true,
            } = encoding
                && levels.is_empty()
            {
                return Err(malformed(format!(
                    "column '{}' drops the first of no levels",
                    tessera_core::shown(name, 100)
                )));
            }
        }
        if a.feature_names() != h.features {
            return Err(malformed(
                "its feature list differs from what its columns and encodings give".into(),
            ));
        }
        if h.features.is_empty() {
            return Err(malformed("it has no features".into()));
        }
        if a.classes.len() < 2 {
            return Err(malformed(format!(
                "it has {} classes, a model needs at least 2",
                a.classes.len()
            )));
        }
        let d = h.features.len();
        let s = &h.standardization;
        match (&s.mean, &s.scale) {
            (Some(mean), Some(scale)) => {
                if mean.len() != d || scale.len() != d {
                    return Err(malformed(format!(
                        "its standardisation has {} means and {} scales for {d} features",
                        mean.len(),
                        scale.len()
                    )));
                }
                if mean.iter().any(|m| !m.is_finite())
                    || scale.iter().any(|s| !(s.is_finite() && *s > 0.0))
                {
                    return Err(malformed(
                        "its standardisation has a mean that is not finite or a scale that is not \
                         positive"
                            .into(),
                    ));
                }
            }
            (None, None) => {}
            _ => {
                return Err(malformed(
                    "its standardisation has means without scales or scales without means".into(),
                ));
            }
        }
        let expected = h
            .model
            .n_parameters(d, a.classes.len())
            .filter(|&n| n <= MAX_VALUES)
            .ok_or_else(|| malformed("its model would be too large".into()))?;
        if expected != self.parameters.n_values() as u64 {
            return Err(malformed(format!(
                "its model ({:?} on {d} features, {} classes) has {expected} parameters, the \
                 file holds {}",
                h.model.kind,
                a.classes.len(),
                self.parameters.n_values()
            )));
        }
        // Sizes agree: building the model costs no more than the file.
        let built = tessera_learn::initial_parameters(&h.model, d, a.classes.len(), 0)
            .map_err(|e| malformed(format!("its model: {e}")))?;
        built
            .check_same_layout(&self.parameters)
            .map_err(|e| malformed(format!("its parameters do not fit its model: {e}")))?;
        self.parameters
            .check_finite()
            .map_err(|e| malformed(format!("its parameters: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
