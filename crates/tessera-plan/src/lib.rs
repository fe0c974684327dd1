//! The plan: one TOML file that describes a federation (data, model, local
//! training, strategy, rounds, privacy, topology), its schema with the
//! defaults of every key, and its validation: each section checks itself,
//! then a table of rules checks the sections against one another, and every
//! conflict is reported at once.
//!
//! This crate only describes and checks; what a plan builds (models,
//! strategies, DP mechanisms, round engines, sites) is the engine's.
//! Besides reading a plan file and the machine's available memory
//! ([`available_memory`]) it does no I/O: no clock, no sockets.
//!
//! `Plan` holds the sections; `FederationConfig`, `SimulationConfig` and
//! `TopologyConfig` are this crate's, the other sections' types their
//! crates'. `Plan::from_file` and `Plan::from_toml` read a plan;
//! `with_settings` applies `--set section.key=value` to the TOML value
//! before it is read, and names a bad key or value by its setting.
//! `Plan::default()` is generated data with every section at its default,
//! and reads no file. The rules across sections are `RULES`, each a named
//! check (those of one strategy read its `Needs`); then come the checks
//! against the federation's size (`Plan::check_cohort`).
//! `PlanError::Conflicts` holds every `Conflict`, each with the keys it
//! concerns. The plan also derives the values every runtime must agree on
//! (`secure_coordinates`, `secagg_graph_seed`, `masked_update_bound`,
//! `local_training`) and estimates the memory each role needs
//! (`check_memory`, against `simulation.max_memory_gb` or the machine's);
//! `streams` names every derived seed stream.
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tessera_aggregate::{RobustConfig, StrategyConfig, StrategyKind};
use tessera_core::derive_seed;
use tessera_data::DataConfig;
use tessera_learn::{ModelConfig, TrainingConfig};
use tessera_privacy::PrivacyConfig;
use thiserror::Error;

mod baseline_choice;
mod contribution;
mod default;
mod features;
mod memory;
mod multitask;
mod personalization;
mod rules;
mod settings;
pub mod streams;
mod topology;
mod validate;

pub use baseline_choice::{BaselineChoiceConfig, MAX_WEIGHT_DECAYS};
pub use contribution::{AttributionMethod, AttributionUtility, ContributionConfig, Selection};
pub use features::{FLAGGABLE, FeatureFlag};
pub use memory::{MemoryRole, available_memory};
pub use multitask::{MAX_TASKS, MultitaskConfig, TaskKind, TaskSpec};
pub use personalization::PersonalizationConfig;
pub use rules::{Conflict, RULES, Rule};
pub use topology::{FailureConfig, GossipGraph, GroupConfig, TopologyConfig, TopologyKind};

/// The widest `secure_aggregation.clip_range` a plan may set: values are
/// quantised to at most 2^32 levels over `[-clip_range, clip_range]`.
pub const MAX_CLIP_RANGE: f32 = 1000.0;

/// A plan that cannot be used, with the reason.
#[derive(Debug, Error)]
pub enum PlanError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The plan file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or mistyped keys.
    #[error("{path}: {message}")]
    Parse {
        /// The plan file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A setting is out of range or settings contradict each other (names
    /// from the plan quoted with their control characters escaped: the
    /// message stays on one line).
    #[error("plan: {}", tessera_core::one_line(.0))]
    Invalid(String),
    /// Settings out of range or that contradict each other: every one the
    /// plan has, each naming its keys and why (shown on one line, joined
    /// with "; ").
    #[error("plan: {}", tessera_core::one_line(&joined(.0)))]
    Conflicts(Vec<Conflict>),
}

fn joined(conflicts: &[Conflict]) -> String {
    let reasons: Vec<&str> = conflicts.iter().map(|c| c.reason.as_str()).collect();
    reasons.join("; ")
}

/// Everything about a federation: data, model, local training, how rounds
/// run, and the settings of each strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// A short name, used in reports.
    #[serde(default = "default_name")]
    pub name: String,
    /// Run seed: initial model, cohorts, local batches, simulated profiles.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Where each site's data is and what it means (none with an external
    /// model, whose rows stay with each site's learner).
    #[serde(default = "no_data")]
    pub data: DataConfig,
    /// The model.
    pub model: ModelConfig,
    /// Local training in each round.
    #[serde(default)]
    pub training: TrainingConfig,
    /// How rounds run.
    #[serde(default)]
    pub federation: FederationConfig,
    /// Settings per strategy, by name (`[strategies.fedadam]`).
    #[serde(default)]
    pub strategies: BTreeMap<String, StrategyConfig>,
    /// Centralised and local-only baselines' training (default: the local
    /// training settings, as many epochs as there are rounds).
    #[serde(default)]
    pub baselines: Option<TrainingConfig>,
    /// Simulated participants: speeds, latencies, dropouts.
    #[serde(default)]
    pub simulation: SimulationConfig,
    /// Differential privacy (`[privacy]`): off unless the plan turns it on.
    #[serde(default)]
    pub privacy: PrivacyConfig,
    /// Byzantine-robust aggregation (`[robust]`): the plain mean by default.
    #[serde(default)]
    pub robust: RobustConfig,
    /// Secure aggregation (`[secure_aggregation]`): off by default.
    #[serde(default)]
    pub secure_aggregation: tessera_secagg::SecureAggregationConfig,
    /// Update and model compression (`[compression]`): none by default.
    #[serde(default)]
    pub compression: tessera_compress::CompressionConfig,
    /// Flat, hierarchical or gossip (`[topology]`): flat by default.
    #[serde(default)]
    pub topology: TopologyConfig,
    /// Federated statistics (`[analytics]`, `tessera analyze`): DP answers
    /// at epsilon 1 a query unless the plan says otherwise.
    #[serde(default)]
    pub analytics: tessera_analytics::AnalyticsConfig,
    /// Personalized models (`[personalization]`): fine-tuning after the
    /// last round; none by default.
    #[serde(default)]
    pub personalization: PersonalizationConfig,
    /// Multi-task federated learning (`[multitask]`): sites with different
    /// targets share the model's body, each task its own head (simulation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multitask: Option<MultitaskConfig>,
    /// Feature flags (`[[features]]`): a feature on for a named cohort of
    /// sites only; none by default (every feature on at every site).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<FeatureFlag>,
    /// Attribution of the model to the sites (`[contribution]`): off by
    /// default.
    #[serde(default, skip_serializing_if = "ContributionConfig::is_off")]
    pub contribution: ContributionConfig,
    /// How the baselines are regularised and early-stopped on held-out
    /// training rows (`[baseline_choice]`): on by default.
    #[serde(default, skip_serializing_if = "BaselineChoiceConfig::is_default")]
    pub baseline_choice: BaselineChoiceConfig,
}

/// The `[data]` of a plan without one: no files, no columns, no target.
/// Only a plan whose model is external may leave `[data]` out.
pub fn no_data() -> DataConfig {
    DataConfig {
        path: None,
        site_column: None,
        partition: None,
        sites: Vec::new(),
        schema: tessera_data::SchemaConfig {
            header: true,
            delimiter: ',',
            columns: Vec::new(),
            missing: Vec::new(),
            target: String::new(),
            positive: Vec::new(),
            negative: Vec::new(),
            missing_policy: Default::default(),
            absent: Default::default(),
            version: None,
        },
        split: Default::default(),
        standardize: Default::default(),
        synthetic: None,
        cross_silo: None,
    }
}

/// How rounds run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// Number of rounds.
    #[serde(default = "default_rounds")]
    pub rounds: u32,
    /// The strategy, by name (`fedavg`, `fedprox`, `scaffold`, ...; see [`StrategyKind::ALL`]).
    #[serde(default = "default_strategy")]
    pub strategy: StrategyKind,
    /// Share of the available participants sampled into each round's cohort.
    #[serde(default = "default_fraction")]
    pub fraction: f64,
    /// Smallest cohort; a round does not open with fewer live participants
    /// (heard from within the liveness period; in simulation, every site).
    #[serde(default = "default_one")]
    pub min_participants: usize,
    /// Fewest accepted updates for a round to count, and the smallest
    /// cohort a round opens with. A round that can no longer meet it waits
    /// up to its deadline for those who left it (taking back any that
    /// return); with fewer by the deadline it fails and the model stays as
    /// it was.
    #[serde(default = "default_one")]
    pub quorum: usize,
    /// Seconds a round waits for updates; without it a round waits for every
    /// member of its cohort (or its dropout) and, below its quorum, closes
    /// once nobody is left to wait for.
    #[serde(default)]
    pub deadline_seconds: Option<f64>,
    /// `sync` rounds, or `async` buffered aggregation (FedBuff); in async mode
    /// `rounds` counts server steps.
    #[serde(default)]
    pub mode: Mode,
    /// Async: accepted updates per server step (K).
    #[serde(default = "default_buffer")]
    pub buffer_size: usize,
    /// Async: updates based on a model more than this many steps old are refused.
    #[serde(default = "default_max_staleness")]
    pub max_staleness: u32,
    /// Async: how an update's weight falls with its staleness τ.
    #[serde(default)]
    pub staleness: StalenessWeighting,
    /// How updates weigh in a round's mean: `examples` (the default: by the
    /// training rows each site declared and reports, FedAvg's weighting) or
    /// `equal` (every update the same, for federations that do not trust
    /// declared sizes: a site that declares more rows than it holds then
    /// gains nothing).
    #[serde(default)]
    pub weighting: Weighting,
}

/// How updates weigh in a round's mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    /// By example count (FedAvg).
    #[default]
    Examples,
    /// Every update the same.
    Equal,
}

/// Synchronous rounds or asynchronous buffered aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every cohort member trains on the same model; the round closes together.
    #[default]
    Sync,
    /// Participants train whenever they are free; every K updates make a step (FedBuff).
    Async,
}

/// An update's weight as a function of its staleness τ (server steps since
/// the model it trained from).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StalenessWeighting {
    /// `1 / sqrt(1 + τ)` (Nguyen et al., FedBuff, 2022).
    #[default]
    InverseSqrt,
    /// Every update weighs the same.
    Constant,
}

impl StalenessWeighting {
    /// The weight factor for staleness `tau`.
    pub fn factor(self, tau: u32) -> f64 {
        match self {
            StalenessWeighting::InverseSqrt => 1.0 / (1.0 + f64::from(tau)).sqrt(),
            StalenessWeighting::Constant => 1.0,
        }
    }
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            rounds: default_rounds(),
            strategy: default_strategy(),
            fraction: default_fraction(),
            min_participants: 1,
            quorum: 1,
            deadline_seconds: None,
            mode: Mode::default(),
            buffer_size: default_buffer(),
            max_staleness: default_max_staleness(),
            staleness: StalenessWeighting::default(),
            weighting: Weighting::default(),
        }
    }
}

/// An interval, for simulated profiles; draws are log-uniform when both ends
/// are positive.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

/// Simulated participants. Each gets a seeded profile: a compute speed and a
/// network latency drawn from these ranges, and a chance to drop out of each
/// round after receiving its task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulationConfig {
    /// Training examples processed per virtual second.
    #[serde(default = "default_speed")]
    pub examples_per_second: Range,
    /// One-way message latency in virtual seconds.
    #[serde(default = "default_latency")]
    pub latency_seconds: Range,
    /// Probability that a participant drops out of a round.
    #[serde(default)]
    pub dropout: f64,
    /// Network bandwidth, bytes per virtual second, each way; without it
    /// transfers take no time (only latency).
    #[serde(default)]
    pub bandwidth_bytes_per_second: Option<Range>,
    /// The most memory a simulation may plan for, in GB (default: what the
    /// machine has available); a plan whose models need more is refused
    /// before any is built.
    #[serde(default)]
    pub max_memory_gb: Option<f64>,
}

impl Default for SimulationConfig {
    fn default() -> Self {
        Self {
            examples_per_second: default_speed(),
            latency_seconds: default_latency(),
            dropout: 0.0,
            bandwidth_bytes_per_second: None,
            max_memory_gb: None,
        }
    }
}

impl Plan {
    /// Reads and checks a plan file.
    pub fn from_file(path: &Path) -> Result<Plan, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Plan::from_toml(&text, &path.display().to_string())
    }

    /// Parses and checks a plan; `origin` names it in messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Plan, PlanError> {
        Plan::from_toml_with(text, origin, &[])
    }

    /// Parses a plan, applies `settings` ([`Plan::with_settings`]) and
    /// checks the result: a plan that needs a setting to be valid (a
    /// `[contribution]` plan with `--set privacy.site_metrics=clear`) reads.
    pub fn from_toml_with(
        text: &str,
        origin: &str,
        settings: &[String],
    ) -> Result<Plan, PlanError> {
        let plan: Plan = toml::from_str(text).map_err(|e| PlanError::Parse {
            path: origin.to_string(),
            message: one_line(&e, text),
        })?;
        if !settings.is_empty() {
            return plan.with_settings(settings);
        }
        plan.validate()?;
        Ok(plan)
    }

    /// Reads a plan file, applies `settings` and checks the result.
    pub fn from_file_with(path: &Path, settings: &[String]) -> Result<Plan, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Plan::from_toml_with(&text, &path.display().to_string(), settings)
    }

    /// Compression under secure aggregation: the seed from which every
    /// participant of `round` picks the same random-k coordinates.
    pub fn shared_codec_seed(&self, round: u32) -> u64 {
        derive_seed(self.seed, &[streams::COMPRESS, u64::from(round)])
    }

    /// Secure aggregation with a random-k upload codec: the coordinates of an
    /// `n_values` model every participant of `round` masks (ascending);
    /// `None` when the whole update is masked.
    pub fn secure_coordinates(&self, round: u32, n_values: usize) -> Option<Vec<usize>> {
        let codec = self.compression.upload;
        (self.secure_aggregation.enabled && !codec.is_identity()).then(|| {
            tessera_compress::random_k_indices(
                n_values,
                codec.kept(n_values),
                self.shared_codec_seed(round),
            )
        })
    }

    /// Secure aggregation: the public seed of round `round`'s neighbour
    /// graph, the same in simulation and deployment.
    pub fn secagg_graph_seed(&self, round: u32) -> [u8; 32] {
        tessera_core::derive_key(self.seed, &[streams::SECAGG, u64::from(round)])
    }

    /// Secure aggregation: the L2 bound each participant clips its own update
    /// to before masking (the coordinator cannot): the central DP clipping
    /// norm and the robust norm bound, whichever is smaller.
    pub fn masked_update_bound(&self) -> Option<f64> {
        [
            (self.privacy.mode == tessera_privacy::PrivacyMode::Central)
                .then_some(self.privacy.clip_norm),
            self.robust.norm_bound,
        ]
        .into_iter()
        .flatten()
        .reduce(f64::min)
    }

    /// The settings of the chosen strategy (defaults where the plan has none).
    pub fn strategy_config(&self) -> StrategyConfig {
        self.strategies
            .get(self.federation.strategy.as_str())
            .cloned()
            .unwrap_or_default()
    }

    /// Local training with the strategy's client learning rate applied.
    pub fn local_training(&self) -> TrainingConfig {
        let mut training = self.training.clone();
        if let Some(lr) = self.strategy_config().client_lr {
            training.optimizer.lr = lr;
        }
        training
    }

    /// With `[data.cross_silo]` among `sites` sites: the noise multiplier
    /// `z` of each site's answers, the standard deviation of the noise on
    /// each answer (`z sqrt(max_visits)`: one patient changes at most
    /// `max_visits` answers by one) and the event each answering site is
    /// charged (it answers the other `sites - 1`), calibrated so that this
    /// spends the section's epsilon at its delta. `None` without the
    /// section or with fewer than two sites.
    pub fn cross_silo_noise(
        &self,
        sites: usize,
    ) -> Result<Option<(f64, f64, tessera_privacy::DpEvent)>, tessera_privacy::PrivacyError> {
        let Some(config) = &self.data.cross_silo else {
            return Ok(None);
        };
        let receivers = sites.saturating_sub(1) as u64;
        if receivers == 0 {
            return Ok(None);
        }
        let z = tessera_privacy::calibrate_noise_multiplier_with(
            self.privacy.accountant,
            1.0,
            receivers,
            config.epsilon,
            config.delta,
        )?;
        let event = tessera_privacy::DpEvent {
            sampling_rate: 1.0,
            noise_multiplier: z,
            steps: receivers,
        };
        Ok(Some((z, z * f64::from(config.max_visits).sqrt(), event)))
    }

    /// The seed of the initial global model (stream [`streams::INIT`]).
    pub fn init_seed(&self) -> u64 {
        derive_seed(self.seed, &[streams::INIT])
    }

    /// How many cluster models the plan's strategy stacks: IFCA's
    /// `clusters` (2 by default); `None` under any other strategy.
    pub fn clusters(&self) -> Option<usize> {
        (self.federation.strategy == tessera_aggregate::StrategyKind::Ifca)
            .then(|| self.strategy_config().clusters.unwrap_or(2) as usize)
    }

    /// Whether the run reports personalized models: a personalized
    /// strategy, or fine-tuning after the last round.
    pub fn personalizes(&self) -> bool {
        self.federation.strategy.needs().personal || self.personalization.fine_tunes()
    }

    /// How many of the plan's local trainings a site runs per round: one,
    /// two under Ditto (the update, then the personal model), one more
    /// than the head's passes under FedRep.
    pub fn trainings_per_round(&self) -> u64 {
        match self.federation.strategy {
            // The update, then the personal model.
            StrategyKind::Ditto => 2,
            // The head's passes, then the body's one.
            StrategyKind::FedRep => u64::from(self.strategy_config().head_passes.unwrap_or(10)) + 1,
            // The update, then the personal model through the mixture.
            StrategyKind::Apfl => 2,
            // Two batches a step.
            StrategyKind::PerFedAvg => 2,
            _ => 1,
        }
    }

    /// Local training of `[personalization]` fine-tuning: the plan's, for
    /// `finetune_epochs` epochs, at `finetune_lr` where given.
    pub fn finetune_training(&self) -> TrainingConfig {
        let mut training = self.local_training();
        training.steps = None;
        training.epochs = Some(self.personalization.finetune_epochs);
        if let Some(lr) = self.personalization.finetune_lr {
            training.optimizer.lr = lr;
        }
        training
    }

    /// Training of the baselines.
    pub fn baseline_training(&self) -> TrainingConfig {
        self.baselines.clone().unwrap_or_else(|| {
            let mut training = self.training.clone();
            let per_round = training.epochs.unwrap_or(1);
            training.steps = None;
            training.epochs = Some(per_round.saturating_mul(u64::from(self.federation.rounds)));
            training
        })
    }
}

/// A parser message on one line, with the line and column it points at.
fn one_line(error: &toml::de::Error, text: &str) -> String {
    let message = error.message().trim().replace('\n', " ");
    match error.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// Longest time a plan may name (about 31 years).
const MAX_SECONDS: f64 = 1e9;

fn default_buffer() -> usize {
    10
}
fn default_max_staleness() -> u32 {
    100
}

fn default_name() -> String {
    "tessera".into()
}
fn default_seed() -> u64 {
    42
}
fn default_rounds() -> u32 {
    10
}
fn default_strategy() -> StrategyKind {
    StrategyKind::FedAvg
}
fn default_fraction() -> f64 {
    1.0
}
fn default_one() -> usize {
    1
}
fn default_speed() -> Range {
    Range {
        min: 10_000.0,
        max: 10_000.0,
    }
}
fn default_latency() -> Range {
    Range {
        min: 0.05,
        max: 0.05,
    }
}
