//! The report of a simulated run, as written to JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_data::SiteSummary;
use tessera_learn::Evaluation;

use crate::{RoundOutcome, RoundStatus};

mod contributions;
mod fairness;
mod headline;
mod per_site;
mod personal;
mod tasks;
mod view;

pub use contributions::{
    ContributionsReport, REPUTATION_WEIGHTS, RoundContribution, SiteContribution, SiteRecord,
};
pub use fairness::Fairness;
pub use per_site::{PerSiteParts, PerSiteSummary, SPLIT_ABOVE, SiteLine, Spread};
pub use personal::{
    DepartmentAccuracy, DepartmentsSummary, NewSitesReport, PersonalSite, PersonalizationReport,
};
pub use tasks::TaskFigures;
pub use view::{DP_HISTOGRAM_BINS, EvaluationView, POOLED, sums};

/// One round, as the table and the JSON show it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round number, from 1.
    pub round: u32,
    /// `completed`, `quorum not met (a/b)` or `failed: ...`.
    pub status: String,
    /// Accuracy of the global model over all sites' test rows (example-weighted).
    pub accuracy: f64,
    /// Mean log loss over all test rows.
    pub loss: f64,
    /// Unweighted mean over sites of each site's test accuracy.
    pub mean_site_accuracy: f64,
    /// Test rows the accuracy and loss are over (0: the round's model was
    /// not evaluated, and accuracy and loss mean nothing).
    #[serde(default)]
    pub n_test: u64,
    /// Pooled AUC (binary tasks).
    pub auc: Option<f64>,
    /// Weighted mean of the participants' training losses.
    pub train_loss: f64,
    /// Updates accepted.
    pub accepted: usize,
    /// Cohort members cut off by the deadline.
    pub stragglers: usize,
    /// Cohort members that dropped out.
    pub dropped: usize,
    /// Updates rejected as invalid.
    pub rejected: usize,
    /// Wall-clock seconds of the round (training, aggregation, evaluation).
    pub seconds: f64,
    /// Virtual seconds from the round's start to its close.
    pub virtual_seconds: f64,
    /// Run clock at the round's close, seconds (virtual in simulation).
    #[serde(default)]
    pub virtual_time: f64,
    /// Bytes sent by participants this round.
    pub bytes_up: u64,
    /// Bytes sent to participants this round.
    pub bytes_down: u64,
    /// Bytes each site sent and received this round, and its upload codec.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub traffic: BTreeMap<String, SiteTraffic>,
    /// Sites whose local training failed this round (they left the round), with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub site_errors: Vec<String>,
    /// With central DP: the run's epsilon after this round's release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// With central DP: the clipping norm this round used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_norm: Option<f64>,
    /// With `site_metrics = "dp"`: the metrics' epsilon after this round's
    /// noised evaluation (absent when the round released no evaluation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_epsilon: Option<f64>,
    /// A deployed run under `[contribution]`: the round's attribution, as
    /// the coordinator computed it at the round's close (a simulation
    /// reports its rounds' in `contributions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contribution: Option<RoundContribution>,
}

/// A hierarchical or gossip run's topology and what moved through it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TopologyReport {
    /// `hierarchical` or `gossip`.
    pub kind: String,
    /// Hierarchical: bytes the aggregators at each depth received from their
    /// members over the run (0: the root).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bytes_up_by_depth: Vec<u64>,
    /// Hierarchical: bytes the aggregators at each depth sent their members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bytes_down_by_depth: Vec<u64>,
    /// Bytes the root received (hierarchical); nothing in gossip, which has none.
    pub root_bytes_up: u64,
    /// Hierarchical: each aggregator's last regional model on its sites' test rows.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub regions: BTreeMap<String, RegionReport>,
    /// Gossip: the graph, and each site's neighbours.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub neighbours: BTreeMap<String, Vec<String>>,
    /// Gossip: sites lost during the run, with the round they were lost in.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lost: BTreeMap<String, u32>,
    /// Gossip deployment: peers restarted after a crash and taken back, with
    /// the round from which they are mixed with again (a peer's own name:
    /// the round it rejoined the run at).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rejoined: BTreeMap<String, u32>,
    /// Gossip: the largest distance (L2) of a surviving site's model from
    /// the survivors' mean model, at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consensus_distance: Option<f64>,
    /// Gossip: the survivors' mean model on all the survivors' test rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_model_accuracy: Option<f64>,
    /// Gossip: over the survivors, the mean accuracy of each one's own model
    /// on all the survivors' test rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_models_accuracy: Option<f64>,
}

/// An aggregator's regional model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionReport {
    /// Its depth below the root.
    pub depth: usize,
    /// The sites below it.
    pub sites: Vec<String>,
    /// Its last regional model's accuracy on those sites' test rows (absent
    /// in the report of a deployed hierarchy's root, which never holds the
    /// regional models: each aggregator's own report has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// The final global model's accuracy on the same rows.
    pub global_accuracy: f64,
}

/// One site's traffic in one round.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SiteTraffic {
    /// Bytes the site sent (update, protocol messages, evaluation).
    pub up: u64,
    /// Bytes the site received (task and model).
    pub down: u64,
    /// Of `up`, its update alone.
    #[serde(default)]
    pub update: u64,
    /// The codec of its update, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
}

/// How one site's test rows were predicted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteMetrics {
    /// Accuracy (`null` for a site without test rows).
    pub accuracy: Option<f64>,
    /// Mean log loss (`null` for a site without test rows).
    pub loss: Option<f64>,
    /// AUC (binary tasks with both classes among the site's test rows).
    pub auc: Option<f64>,
    /// Test rows.
    pub n_test: u64,
}

/// The final global model's metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalMetrics {
    /// Over all test rows (example-weighted); `null` when no test row was
    /// evaluated.
    pub accuracy: Option<f64>,
    /// Unweighted mean over sites (`null` when none was evaluated).
    pub mean_site_accuracy: Option<f64>,
    /// Pooled AUC from the sites' score histograms (binary tasks).
    pub auc: Option<f64>,
    /// Mean log loss over all test rows (`null` when none was evaluated).
    pub loss: Option<f64>,
    /// Binary tasks: PR-AUC, sensitivity and specificity at 0.5, balanced
    /// accuracy and calibration error, from the same pooled histograms
    /// (absent where the histograms are not kept: `site_metrics = "dp"`
    /// reports the rounds' noised figures only, and a deployed run resumed
    /// after a restart its last round's stored figures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<tessera_learn::BinaryMetrics>,
    /// Per site.
    pub per_site: BTreeMap<String, SiteMetrics>,
}

/// Each site trained alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalBaseline {
    /// Mean over sites of each site's model on its own test rows.
    pub mean_site_accuracy: f64,
    /// Each site's model on its own test rows.
    pub per_site: BTreeMap<String, SiteMetrics>,
    /// Each site's model on every site's test rows: the unweighted mean of
    /// its accuracies (FLamby's "Local i" rows).
    pub cross_site_mean_accuracy: BTreeMap<String, f64>,
    /// Binary tasks: the AUC of every site's test rows, each scored by its
    /// own site's model (the score histograms summed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auc: Option<f64>,
    /// Binary tasks: [`FinalMetrics::binary`]'s figures, so scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<tessera_learn::BinaryMetrics>,
    /// How each site's model was regularised and stopped, chosen on its
    /// held-out training rows ([`crate::baseline`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub choices: BTreeMap<String, crate::baseline::BaselineChoice>,
}

/// One model trained on all training rows pooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PooledBaseline {
    /// On all test rows pooled, scaled with the pooled training statistics.
    pub accuracy: f64,
    /// Mean over sites, each site's test rows scaled with its own statistics.
    pub mean_site_accuracy: f64,
    /// AUC on the pooled test rows.
    pub auc: Option<f64>,
    /// Binary tasks: [`FinalMetrics::binary`]'s figures on the pooled test
    /// rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<tessera_learn::BinaryMetrics>,
    /// Per site (own statistics).
    pub per_site: BTreeMap<String, SiteMetrics>,
    /// How it was regularised and stopped, chosen on held-out training rows
    /// ([`crate::baseline`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<crate::baseline::BaselineChoice>,
}

/// Baselines on the same splits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    /// Local-only training.
    pub local: LocalBaseline,
    /// Centralised training (absent if it failed; see `errors`).
    pub pooled: Option<PooledBaseline>,
    /// Baselines that could not be trained, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Wall-clock and virtual timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Seconds of the whole command (set by the caller).
    pub total_seconds: f64,
    /// Seconds reading and preparing data (set by the caller).
    pub data_seconds: f64,
    /// Seconds of all rounds.
    pub rounds_seconds: f64,
    /// `rounds_seconds` over the number of rounds.
    pub seconds_per_round: f64,
    /// Seconds of the baselines.
    pub baselines_seconds: f64,
    /// Virtual seconds of the whole federated run.
    pub virtual_seconds: f64,
    /// Run clock when accuracy (all test rows) first reached the target, if asked and reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_seconds_to_target: Option<f64>,
    /// Worker threads.
    pub threads: usize,
    /// Peak resident memory of the process, bytes (set by the caller where known).
    pub peak_rss_bytes: Option<u64>,
}

/// Bytes the messages of the run would take on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Communication {
    /// Sent by participants (updates, evaluation results).
    pub bytes_up: u64,
    /// Sent to participants (tasks with the global model, evaluation requests).
    pub bytes_down: u64,
    /// Sent by each participant.
    pub bytes_up_per_site: BTreeMap<String, u64>,
    /// Of `bytes_up`, the updates alone (their codec's bytes and envelope).
    #[serde(default)]
    pub update_bytes_up: u64,
}

/// A run that continued from an earlier run's model: accuracy (over every
/// test row) of the model continued from and of the final one, on this
/// run's data and, where the simulation was told what it was, on the
/// earlier data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContinualReport {
    /// The model file continued from.
    pub from: String,
    /// The round of the earlier run it holds.
    pub from_round: u32,
    /// Elastic weight consolidation's lambda (`None`: plain continued training).
    pub ewc_lambda: Option<f32>,
    /// Whose importance weighs the pull: `"federation"` (one, over every
    /// site's rows) or `"site"` (each site its own); absent without EWC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ewc_importance: Option<String>,
    /// This run's data: the model continued from.
    pub new_before: f64,
    /// This run's data: the final model.
    pub new_after: f64,
    /// The earlier data, where given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earlier: Option<EarlierData>,
}

/// The data an earlier run trained on, evaluated again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlierData {
    /// How the earlier data differs from this run's plan (`--set` settings).
    pub settings: Vec<String>,
    /// Accuracy of the model continued from.
    pub before: f64,
    /// Accuracy of the final model.
    pub after: f64,
}

/// Everything a run produced (simulated or deployed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The plan's name.
    pub plan: String,
    /// Strategy used.
    pub strategy: String,
    /// Run seed.
    pub seed: u64,
    /// Model kind.
    pub model: String,
    /// Encoded features.
    pub features: Vec<String>,
    /// Class names.
    pub classes: Vec<String>,
    /// Rows per site.
    pub data: Vec<SiteSummary>,
    /// Every round.
    pub rounds: Vec<RoundRecord>,
    /// The final model.
    #[serde(rename = "final")]
    pub final_metrics: FinalMetrics,
    /// Baselines, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baselines: Option<Baselines>,
    /// Timings.
    pub timing: Timing,
    /// Traffic.
    pub communication: Communication,
    /// Differential privacy applied and spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacyReport>,
    /// With `site_metrics = "dp"`: the metrics' noise and spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_privacy: Option<MetricsPrivacyReport>,
    /// Byzantine-robust aggregation and simulated attacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robustness: Option<RobustnessReport>,
    /// Hierarchical and gossip runs: the topology and its traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<TopologyReport>,
    /// Personalized models against the global and local-only ones (a
    /// personalized strategy, or `[personalization]` fine-tuning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personalization: Option<PersonalizationReport>,
    /// Sites that took no part and adapted the final model after the run
    /// (simulation's `[personalization] new_sites`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_sites: Option<NewSitesReport>,
    /// Continual learning: the model the run continued from, and what it
    /// kept of the earlier data (simulation's `--continue-from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continual: Option<ContinualReport>,
    /// A deployed multi-task run's figures, one per task (the simulator
    /// reports a `[multitask]` plan in a report of its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskFigures>,
    /// Each site's contribution to the global model (`[contribution]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contributions: Option<ContributionsReport>,
    /// The final model's accuracy across sites, where each site's
    /// evaluation is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fairness: Option<Fairness>,
    /// Evaluated rounds whose test rows differ from the previous evaluated
    /// round's (a site joined, left or was not heard from): their accuracy
    /// has another denominator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub population_changes: Vec<PopulationChange>,
    /// Where the per-site figures went when they were written apart (past
    /// [`SPLIT_ABOVE`] sites): the file and a summary; `data`,
    /// `final_metrics.per_site`, the baselines' per-site maps and each
    /// round's `traffic` are then empty here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_site: Option<PerSiteSummary>,
    /// The final global parameters.
    #[serde(skip)]
    pub final_parameters: tessera_core::ParameterSet,
}

/// Per-site metrics of an evaluation.
pub fn site_metrics(e: &Evaluation) -> SiteMetrics {
    SiteMetrics {
        accuracy: (e.n_examples > 0).then(|| e.accuracy()),
        loss: (e.n_examples > 0).then(|| e.mean_loss()),
        auc: e.auc,
        n_test: e.n_examples,
    }
}

/// Unweighted mean accuracy over the sites that have test rows.
pub fn mean_site_accuracy<'a>(evaluations: impl IntoIterator<Item = &'a Evaluation>) -> f64 {
    let results: Vec<tessera_aggregate::SiteEvaluation> = evaluations
        .into_iter()
        .map(|e| tessera_aggregate::SiteEvaluation {
            site: tessera_core::ParticipantId::new(""),
            sums: view::sums(e),
        })
        .collect();
    tessera_aggregate::pool_evaluations(&results).mean_site_accuracy
}

/// The final model's metrics from each site's evaluation, as `strategy`
/// aggregates them.
pub fn final_metrics(
    strategy: &dyn tessera_aggregate::Strategy,
    names: &[&str],
    evaluations: &[Evaluation],
) -> FinalMetrics {
    final_metrics_view(
        &EvaluationView::clear(strategy, names, evaluations),
        names
            .iter()
            .zip(evaluations)
            .map(|(n, e)| (n.to_string(), site_metrics(e)))
            .collect(),
    )
}

/// The final model's metrics from what the coordinator saw, with `per_site`
/// (empty when it saw only sums).
pub fn final_metrics_view(
    view: &EvaluationView,
    per_site: BTreeMap<String, SiteMetrics>,
) -> FinalMetrics {
    let evaluated = view.pooled.n_examples > 0;
    FinalMetrics {
        accuracy: evaluated.then(|| view.pooled.accuracy()),
        mean_site_accuracy: evaluated.then_some(view.mean_site_accuracy),
        auc: view.pooled.auc,
        loss: evaluated.then(|| view.pooled.mean_loss()),
        binary: view
            .pooled
            .histogram
            .as_ref()
            .and_then(|h| h.binary_metrics(0.5)),
        per_site,
    }
}

/// A round's line of the report before its model is evaluated.
pub fn round_record(
    outcome: &RoundOutcome,
    seconds: f64,
    bytes_up: u64,
    bytes_down: u64,
) -> RoundRecord {
    round_record_view(
        outcome,
        &EvaluationView::clear(&view::POOLED, &[], &[]),
        seconds,
        bytes_up,
        bytes_down,
    )
}

/// A round's line of the report from what the coordinator saw of the
/// sites' evaluations.
pub fn round_record_view(
    outcome: &RoundOutcome,
    view: &EvaluationView,
    seconds: f64,
    bytes_up: u64,
    bytes_down: u64,
) -> RoundRecord {
    RoundRecord {
        round: outcome.round,
        status: match &outcome.status {
            RoundStatus::Completed => "completed".to_string(),
            RoundStatus::QuorumNotMet { accepted, needed } => {
                format!("quorum not met ({accepted}/{needed})")
            }
            RoundStatus::Failed(reason) => format!("failed: {reason}"),
        },
        train_loss: outcome.mean_train_loss,
        accepted: outcome.accepted.len(),
        stragglers: outcome.stragglers.len(),
        dropped: outcome.dropped.len(),
        rejected: outcome.rejected.len(),
        virtual_seconds: outcome.closed_at.since(outcome.opened_at).as_secs_f64(),
        virtual_time: outcome.closed_at.as_secs_f64(),
        bytes_up,
        bytes_down,
        traffic: BTreeMap::new(),
        site_errors: Vec::new(),
        epsilon: outcome.privacy.as_ref().map(|(_, e)| e.run_epsilon),
        clip_norm: outcome.privacy.as_ref().map(|(r, _)| r.clip_norm),
        metrics_epsilon: None,
        ..RoundRecord::default()
    }
    .evaluated(view, seconds)
}

impl RoundRecord {
    /// This line with the metrics of what was seen of its model's
    /// evaluations (`view`) and its wall time: the one place a record's
    /// metrics come from, for every runtime and mode.
    pub fn evaluated(&self, view: &EvaluationView, seconds: f64) -> RoundRecord {
        let pooled = &view.pooled;
        RoundRecord {
            accuracy: pooled.accuracy(),
            loss: pooled.mean_loss(),
            mean_site_accuracy: view.mean_site_accuracy,
            n_test: pooled.n_examples,
            auc: pooled.auc,
            seconds,
            ..self.clone()
        }
    }
}

/// An evaluated round whose test rows differ from the previous evaluated
/// round's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PopulationChange {
    /// The round.
    pub round: u32,
    /// Its test rows.
    pub n_test: u64,
    /// The previous evaluated round's test rows.
    pub previous_n_test: u64,
}

/// The evaluated rounds (test rows > 0) of `rounds` whose test rows differ
/// from the previous evaluated round's.
pub fn population_changes(rounds: &[RoundRecord]) -> Vec<PopulationChange> {
    let evaluated: Vec<&RoundRecord> = rounds.iter().filter(|r| r.n_test > 0).collect();
    evaluated
        .windows(2)
        .filter(|w| w[0].n_test != w[1].n_test)
        .map(|w| PopulationChange {
            round: w[1].round,
            n_test: w[1].n_test,
            previous_n_test: w[0].n_test,
        })
        .collect()
}

/// The summary's line on rounds evaluated on other test rows than the round
/// before, if any.
pub fn population_line(changes: &[PopulationChange]) -> Option<String> {
    if changes.is_empty() {
        return None;
    }
    let each: Vec<String> = changes
        .iter()
        .map(|c| {
            format!(
                "round {} on {} test rows (was {})",
                c.round, c.n_test, c.previous_n_test
            )
        })
        .collect();
    Some(format!(
        "evaluated population changed: {}; accuracies on different test rows do not compare",
        each.join(", ")
    ))
}

/// The robust aggregation of a run and the attack it faced (simulation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobustnessReport {
    /// The aggregation rule.
    pub rule: String,
    /// The norm bound, if any.
    pub norm_bound: Option<f64>,
    /// The simulated attack (`none`, `sign_flip`, ...).
    pub attack: String,
    /// The malicious sites.
    pub malicious: Vec<String>,
    /// Accuracy of the final model on the honest sites' test rows.
    pub honest_accuracy: f64,
}

/// What differential privacy a run applied and spent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacyReport {
    /// `central`.
    pub mode: String,
    /// The total noise multiplier (what the accountant counts).
    pub noise_multiplier: f64,
    /// The noise multiplier on the updates (lower with adaptive clipping).
    pub update_noise_multiplier: f64,
    /// The initial clipping norm.
    pub clip_norm: f64,
    /// Whether the clipping norm adapted.
    pub adaptive_clipping: bool,
    /// The accountant that gave the epsilons: `rdp` or `pld`.
    #[serde(default = "rdp")]
    pub accountant: String,
    /// Epsilon spent by the run, from the ledger.
    pub epsilon: f64,
    /// The delta of that epsilon.
    pub delta: f64,
    /// The run's epsilon budget.
    pub budget: Option<f64>,
    /// Local DP: each site's noise multiplier (with a target epsilon each
    /// site calibrates its own to its sampling rate), its latest in the ledger.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub site_noise_multipliers: BTreeMap<String, f64>,
    /// Whether the noise came from secrets that never left the party that
    /// added it (deployment). `false` in simulation: the noise and DP-SGD's
    /// batch sampling derive from the printed run seed, so anyone with the
    /// plan and seed can recompute and subtract the noise.
    #[serde(default)]
    pub release: bool,
    /// What `release` means for this run, in words.
    #[serde(default)]
    pub note: String,
    /// Every release.
    pub ledger: Vec<tessera_privacy::LedgerEntry>,
}

/// `site_metrics = "dp"`: the noise on the released evaluations and what
/// it spent, on the test rows (see [`tessera_privacy::metrics`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsPrivacyReport {
    /// The neighbouring relation of `epsilon`.
    pub relation: String,
    /// The accountant that gave the epsilons: `rdp` or `pld`.
    pub accountant: String,
    /// Each release's noise multiplier.
    pub noise_multiplier: f64,
    /// The L2 sensitivity the noise is scaled to.
    pub sensitivity: f64,
    /// Evaluations released.
    pub releases: u32,
    /// Epsilon spent by them.
    pub epsilon: f64,
    /// The delta of that epsilon.
    pub delta: f64,
    /// The plan's `metrics_epsilon`.
    pub budget: f64,
    /// Whether the noise came from a key the coordinator drew from the
    /// operating system (deployment); `false` in simulation.
    pub release: bool,
    /// What it protects and from whom, in words.
    pub note: String,
}

impl MetricsPrivacyReport {
    /// What `dp` has spent; `release` as in [`PrivacyReport::release`].
    pub fn of(dp: &tessera_privacy::MetricsDp, release: bool) -> Self {
        Self {
            relation: "one row added to or removed from one site's test set".into(),
            accountant: dp.accountant().name().into(),
            noise_multiplier: dp.noise_multiplier(),
            sensitivity: tessera_privacy::metrics::SENSITIVITY,
            releases: dp.releases(),
            epsilon: dp.epsilon(),
            delta: dp.delta(),
            budget: dp.budget(),
            release,
            note: if release {
                DEPLOYED_METRICS_DP_NOTE.into()
            } else {
                SIMULATED_DP_NOTE.into()
            },
        }
    }
}

/// The report's note on deployed DP metrics.
pub const DEPLOYED_METRICS_DP_NOTE: &str = "the sites' evaluations are summed under secure \
     aggregation; the coordinator adds the noise to the exact sum in memory with a key it drew \
     from the operating system and never stored, so its database, reports and status hold only \
     noised sums. Test rows are not training rows: a row's privacy loss is this epsilon or the \
     training's, never their sum";

/// The report's note on simulated DP.
pub const SIMULATED_DP_NOTE: &str = "simulated DP is an experiment, not a release: \
     the noise and DP-SGD's batch sampling derive from the run seed";

/// The report's note on deployed central DP.
pub const DEPLOYED_CENTRAL_DP_NOTE: &str = "the noise comes from a key the coordinator \
     drew from the operating system and never stored; the coordinator (which also unmasks \
     the exact sum under secure aggregation) sees the updates before the noise, so central \
     DP protects the released model against everyone but the coordinator";

/// The report's note on deployed local DP.
pub const DEPLOYED_LOCAL_DP_NOTE: &str = "each site's noise and batch sampling come from \
     a key it drew from the operating system and never sent or stored";

fn rdp() -> String {
    "rdp".into()
}

fn accountant_name(ledger: &tessera_privacy::Ledger) -> String {
    match ledger.accountant() {
        tessera_privacy::AccountantKind::Rdp => "rdp".into(),
        tessera_privacy::AccountantKind::Pld => "pld".into(),
    }
}

impl PrivacyReport {
    /// The report of local DP-SGD: `noise_multiplier` is the smallest any
    /// participant used (with a target epsilon each calibrates its own);
    /// each one's is in `site_noise_multipliers`. Marked simulated (not a
    /// release) until [`PrivacyReport::deployed`] says otherwise.
    pub fn local(
        config: &tessera_privacy::PrivacyConfig,
        noise_multiplier: f64,
        ledger: &tessera_privacy::Ledger,
    ) -> Self {
        let site_noise_multipliers = ledger
            .entries()
            .iter()
            .filter_map(|e| {
                e.participant
                    .as_ref()
                    .map(|p| (p.clone(), e.event.noise_multiplier))
            })
            .collect();
        Self {
            mode: "local".into(),
            noise_multiplier,
            update_noise_multiplier: noise_multiplier,
            clip_norm: config.clip_norm,
            adaptive_clipping: false,
            accountant: accountant_name(ledger),
            epsilon: ledger.run_epsilon(),
            delta: ledger.budgets().delta,
            budget: ledger.budgets().run,
            site_noise_multipliers,
            release: false,
            note: SIMULATED_DP_NOTE.into(),
            ledger: ledger.entries().to_vec(),
        }
    }

    /// Marks the report as a deployment's: the noise came from secrets.
    pub fn deployed(mut self) -> Self {
        self.release = true;
        self.note = if self.mode == "local" {
            DEPLOYED_LOCAL_DP_NOTE
        } else {
            DEPLOYED_CENTRAL_DP_NOTE
        }
        .into();
        self
    }

    /// The report of central DP's settings and ledger, marked simulated
    /// (not a release) until [`PrivacyReport::deployed`] says otherwise.
    pub fn new(
        config: &tessera_privacy::PrivacyConfig,
        dp: &tessera_privacy::CentralDp,
        ledger: &tessera_privacy::Ledger,
    ) -> Self {
        Self {
            mode: "central".into(),
            noise_multiplier: dp.noise_multiplier(),
            update_noise_multiplier: dp.delta_noise_multiplier(),
            clip_norm: config.clip_norm,
            adaptive_clipping: config.adaptive_clipping.is_some(),
            accountant: accountant_name(ledger),
            epsilon: ledger.run_epsilon(),
            delta: ledger.budgets().delta,
            budget: ledger.budgets().run,
            site_noise_multipliers: BTreeMap::new(),
            release: false,
            note: SIMULATED_DP_NOTE.into(),
            ledger: ledger.entries().to_vec(),
        }
    }
}
