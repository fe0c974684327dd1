use serde::{Deserialize, Serialize};

use crate::LearnError;

/// Which built-in model, and its shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Logistic regression, softmax regression, MLP, or external (a model
    /// each site's own learner holds).
    pub kind: ModelKind,
    /// MLP: width of each hidden layer (ReLU).
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// How the initial parameters are drawn.
    #[serde(default)]
    pub init: Init,
}

impl ModelConfig {
    /// Parameters of this model on `n_features` features and `n_classes`
    /// classes, counted without building it; `None` past 2^64. An
    /// external model's size is not in the plan (the sites' learners offer
    /// it): 0.
    pub fn n_parameters(&self, n_features: usize, n_classes: usize) -> Option<u64> {
        if self.kind == ModelKind::External {
            return Some(0);
        }
        let outputs = if n_classes <= 2 { 1 } else { n_classes as u64 };
        let mut widths = vec![n_features as u64];
        if self.kind == ModelKind::Mlp {
            widths.extend(self.hidden.iter().map(|&w| w as u64));
        } else if self.kind == ModelKind::Softmax {
            // Softmax regression has one output per class, even for two.
            return (n_features as u64)
                .checked_add(1)?
                .checked_mul(n_classes as u64);
        }
        widths.push(outputs);
        widths.windows(2).try_fold(0u64, |total, pair| {
            total.checked_add(pair[0].checked_add(1)?.checked_mul(pair[1])?)
        })
    }

    /// A model of this kind with defaults (MLP: one hidden layer of 32).
    pub fn of_kind(kind: ModelKind) -> Self {
        Self {
            kind,
            hidden: if kind == ModelKind::Mlp {
                vec![32]
            } else {
                Vec::new()
            },
            init: Init::default(),
        }
    }
}

/// The built-in models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// One linear unit with a sigmoid; binary tasks.
    Logistic,
    /// One linear layer with a softmax over the classes.
    Softmax,
    /// Hidden ReLU layers, then a sigmoid (binary) or softmax head.
    Mlp,
    /// A model Tessera does not build: each site's own learner holds it
    /// and its rows (`tessera_engine::ExternalLearner`); the layout comes
    /// from the sites at agreement.
    External,
}

impl ModelKind {
    /// Whether the model lives outside Tessera.
    pub fn is_external(self) -> bool {
        self == ModelKind::External
    }
}

impl std::str::FromStr for ModelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "logistic" => Ok(ModelKind::Logistic),
            "softmax" => Ok(ModelKind::Softmax),
            "mlp" => Ok(ModelKind::Mlp),
            "external" => Ok(ModelKind::External),
            other => Err(format!(
                "unknown model '{other}' (expected logistic, softmax, mlp or external)"
            )),
        }
    }
}

/// Initial parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// Weights and biases uniform in ±1/sqrt(fan_in) (PyTorch's `nn.Linear` default).
    #[default]
    Uniform,
    /// All zeros (linear models only: hidden units would stay identical).
    Zeros,
}

/// Local training: how long, in what batches, with which optimiser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    /// Optimiser steps per round (exclusive with `epochs`).
    #[serde(default)]
    pub steps: Option<u64>,
    /// Passes over the local training rows per round (default 1).
    #[serde(default)]
    pub epochs: Option<u64>,
    /// Rows per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// The optimiser and its settings.
    #[serde(flatten)]
    pub optimizer: OptimizerConfig,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            steps: None,
            epochs: None,
            batch_size: default_batch_size(),
            optimizer: OptimizerConfig::default(),
        }
    }
}

/// How much local work a round does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// A fixed number of optimiser steps (batches reshuffle at each pass).
    Steps(u64),
    /// A number of passes over the rows; the last batch of a pass may be short.
    Epochs(u64),
}

impl TrainingConfig {
    /// Steps or epochs, checked.
    pub fn schedule(&self) -> Result<Schedule, LearnError> {
        match (self.steps, self.epochs) {
            (Some(_), Some(_)) => Err(LearnError::Config(
                "give `steps` or `epochs`, not both".into(),
            )),
            (Some(0), _) | (_, Some(0)) => Err(LearnError::Config(
                "`steps` and `epochs` must be at least 1".into(),
            )),
            (Some(steps), None) => Ok(Schedule::Steps(steps)),
            (None, Some(epochs)) => Ok(Schedule::Epochs(epochs)),
            (None, None) => Ok(Schedule::Epochs(1)),
        }
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), LearnError> {
        match self.schedule()? {
            Schedule::Steps(steps) if steps > MAX_STEPS => {
                return Err(LearnError::Config(format!(
                    "`steps` must be at most {MAX_STEPS}, got {steps}"
                )));
            }
            Schedule::Epochs(epochs) if epochs > MAX_EPOCHS => {
                return Err(LearnError::Config(format!(
                    "`epochs` must be at most {MAX_EPOCHS}, got {epochs}"
                )));
            }
            _ => {}
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH {
            return Err(LearnError::Config(format!(
                "`batch_size` must be between 1 and {MAX_BATCH}, got {}",
                self.batch_size
            )));
        }
        self.optimizer.validate()
    }
}

/// Optimiser settings. SGD follows PyTorch (`g + wd·w`, then momentum `v = μv + g`);
/// Adam follows PyTorch's `Adam` with L2 weight decay and bias correction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// SGD or Adam.
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// Learning rate.
    #[serde(default = "default_lr")]
    pub lr: f32,
    /// SGD momentum.
    #[serde(default)]
    pub momentum: f32,
    /// L2 weight decay.
    #[serde(default)]
    pub weight_decay: f32,
    /// Adam: first-moment decay.
    #[serde(default = "default_beta1")]
    pub beta1: f32,
    /// Adam: second-moment decay.
    #[serde(default = "default_beta2")]
    pub beta2: f32,
    /// Adam: denominator term.
    #[serde(default = "default_eps")]
    pub eps: f32,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            optimizer: OptimizerKind::default(),
            lr: default_lr(),
            momentum: 0.0,
            weight_decay: 0.0,
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
        }
    }
}

impl OptimizerConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), LearnError> {
        let positive = |name: &str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(LearnError::Config(format!(
                    "`{name}` must be a positive number, got {}",
                    tessera_core::value(v)
                )))
            }
        };
        positive("lr", self.lr)?;
        positive("eps", self.eps)?;
        let unit = |name: &str, v: f32| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(LearnError::Config(format!(
                    "`{name}` must be in [0, 1), got {}",
                    tessera_core::value(v)
                )))
            }
        };
        unit("momentum", self.momentum)?;
        unit("beta1", self.beta1)?;
        unit("beta2", self.beta2)?;
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(LearnError::Config(format!(
                "`weight_decay` must be >= 0, got {}",
                tessera_core::value(self.weight_decay)
            )));
        }
        Ok(())
    }
}

/// Which optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Stochastic gradient descent, optionally with momentum.
    #[default]
    Sgd,
    /// Adam.
    Adam,
}

/// Most local steps a round may take.
const MAX_STEPS: u64 = 1_000_000_000;
/// Most local epochs a round may take.
const MAX_EPOCHS: u64 = 1_000_000;
/// Largest batch.
const MAX_BATCH: usize = 1 << 24;
/// Most parameters a built-in model may have (4 GiB of `f32`).
pub(crate) const MAX_PARAMETERS: usize = 1 << 30;

fn default_batch_size() -> usize {
    32
}
fn default_lr() -> f32 {
    0.05
}
fn default_beta1() -> f32 {
    0.9
}
fn default_beta2() -> f32 {
    0.999
}
fn default_eps() -> f32 {
    1e-8
}
