//! The report of a simulated run, as written to JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_data::SiteSummary;
use tessera_learn::Evaluation;

use crate::{RoundOutcome, RoundStatus};

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
    /// Its last regional model's accuracy on those sites' test rows.
    pub accuracy: f64,
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
    /// Per site (own statistics).
    pub per_site: BTreeMap<String, SiteMetrics>,
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
    let (sum, count) = evaluations
        .into_iter()
        .filter(|e| e.n_examples > 0)
        .fold((0.0, 0usize), |(s, c), e| (s + e.accuracy(), c + 1));
    if count == 0 { 0.0 } else { sum / count as f64 }
}

/// What a report shows of the sites' evaluations of one model: the pooled
/// evaluation and the mean of the sites' accuracies.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluationView {
    /// Counts, loss and score histogram over every site's test rows.
    pub pooled: Evaluation,
    /// Unweighted mean accuracy over the sites with test rows.
    pub mean_site_accuracy: f64,
}

impl EvaluationView {
    /// From each site's evaluation (`site_metrics = "clear"`).
    pub fn clear(evaluations: &[Evaluation]) -> Self {
        Self {
            pooled: Evaluation::pool(evaluations),
            mean_site_accuracy: mean_site_accuracy(evaluations),
        }
    }

    /// From the unmasked sum of the sites' summable evaluations
    /// (`site_metrics = "aggregate-only"` in deployment).
    pub fn summed(summed: &tessera_learn::SummedEvaluation) -> Self {
        Self {
            pooled: summed.pooled.clone(),
            mean_site_accuracy: summed.mean_site_accuracy,
        }
    }

    /// What a coordinator unmasks under `aggregate-only` from these sites'
    /// evaluations: the sum of their summable encodings, decoded (fixed
    /// point to 2^-16 in the loss and accuracies), so that a simulation
    /// reports the numbers its deployment would.
    pub fn aggregate_only(evaluations: &[Evaluation]) -> Result<Self, String> {
        Self::summed_of(evaluations).map(|s| Self::summed(&s))
    }

    /// `site_metrics = "dp"`: the summed evaluation with Gaussian noise of
    /// `dp`'s calibration on every part (see [`tessera_privacy::metrics`]):
    /// row counts, rows predicted right, the loss sum, the sum of the sites'
    /// accuracies and the count of sites with rows, and every bin of the
    /// score histogram, coarsened first to [`DP_HISTOGRAM_BINS`] bins so
    /// that fewer noised counts make up the AUC. Counts are rounded and
    /// clamped at zero (post-processing).
    pub fn noised(
        summed: &tessera_learn::SummedEvaluation,
        dp: &tessera_privacy::MetricsDp,
        noise: &mut tessera_privacy::GaussianNoise,
    ) -> Self {
        let std = dp.unit_std();
        let count = |value: f64, noise: &mut tessera_privacy::GaussianNoise| {
            (value + std * noise.standard_normal()).round().max(0.0)
        };
        let n_examples = count(summed.pooled.n_examples as f64, noise);
        let n_correct = count(summed.pooled.n_correct as f64, noise).min(n_examples);
        let loss_sum = (summed.pooled.loss_sum
            + std * tessera_privacy::metrics::LOSS_BOUND * noise.standard_normal())
        .max(0.0);
        let accuracy_sum = summed.mean_site_accuracy * summed.sites_with_rows as f64
            + std * noise.standard_normal();
        let with_rows = summed.sites_with_rows as f64 + std * noise.standard_normal();
        let histogram = summed.pooled.histogram.as_ref().map(|h| {
            let width = (tessera_learn::HISTOGRAM_BINS / DP_HISTOGRAM_BINS) as u32;
            let mut coarse = vec![(0u64, 0u64); DP_HISTOGRAM_BINS];
            for &(bin, p, n) in &h.bins {
                if let Some(slot) = coarse.get_mut((bin / width) as usize) {
                    slot.0 = slot.0.saturating_add(p);
                    slot.1 = slot.1.saturating_add(n);
                }
            }
            tessera_learn::ScoreHistogram {
                bins: coarse
                    .into_iter()
                    .enumerate()
                    .map(|(i, (p, n))| {
                        (
                            i as u32 * width + width / 2,
                            count(p as f64, noise) as u64,
                            count(n as f64, noise) as u64,
                        )
                    })
                    .filter(|&(_, p, n)| p + n > 0)
                    .collect(),
            }
        });
        let pooled = Evaluation {
            n_examples: n_examples as u64,
            loss_sum,
            n_correct: n_correct as u64,
            auc: histogram
                .as_ref()
                .and_then(tessera_learn::ScoreHistogram::auc),
            histogram,
        };
        Self {
            pooled,
            mean_site_accuracy: (accuracy_sum / with_rows.max(1.0)).clamp(0.0, 1.0),
        }
    }

    /// As the plan's `site_metrics` lets the coordinator see them; `dp`
    /// needs the calibration and the noise.
    pub fn of(
        site_metrics: tessera_privacy::SiteMetrics,
        evaluations: &[Evaluation],
        dp: Option<(
            &tessera_privacy::MetricsDp,
            &mut tessera_privacy::GaussianNoise,
        )>,
    ) -> Result<Self, String> {
        match (site_metrics, dp) {
            (tessera_privacy::SiteMetrics::Clear, _) => Ok(Self::clear(evaluations)),
            (tessera_privacy::SiteMetrics::AggregateOnly, _) => Self::aggregate_only(evaluations),
            (tessera_privacy::SiteMetrics::Dp, Some((dp, noise))) => {
                Ok(Self::noised(&Self::summed_of(evaluations)?, dp, noise))
            }
            (tessera_privacy::SiteMetrics::Dp, None) => {
                Err("site_metrics = \"dp\" needs the metrics' noise calibration".into())
            }
        }
    }

    /// What the secure sum of these evaluations decodes to.
    pub fn summed_of(
        evaluations: &[Evaluation],
    ) -> Result<tessera_learn::SummedEvaluation, String> {
        let mut sum = vec![0u32; tessera_learn::SUMMABLE_LEN];
        for e in evaluations {
            for (s, v) in sum.iter_mut().zip(tessera_learn::encode_summable(e)) {
                *s = s.wrapping_add(v);
            }
        }
        tessera_learn::decode_summable(&sum, evaluations.len())
    }
}

/// Bins of the score histogram released under `site_metrics = "dp"`.
pub const DP_HISTOGRAM_BINS: usize = 32;

/// The final model's metrics from each site's evaluation.
pub fn final_metrics(names: &[&str], evaluations: &[Evaluation]) -> FinalMetrics {
    final_metrics_view(
        &EvaluationView::clear(evaluations),
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
        per_site,
    }
}

/// A round's line of the report.
pub fn round_record(
    outcome: &RoundOutcome,
    evaluations: &[Evaluation],
    seconds: f64,
    bytes_up: u64,
    bytes_down: u64,
) -> RoundRecord {
    round_record_view(
        outcome,
        &EvaluationView::clear(evaluations),
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
    let pooled = &view.pooled;
    RoundRecord {
        round: outcome.round,
        status: match &outcome.status {
            RoundStatus::Completed => "completed".to_string(),
            RoundStatus::QuorumNotMet { accepted, needed } => {
                format!("quorum not met ({accepted}/{needed})")
            }
            RoundStatus::Failed(reason) => format!("failed: {reason}"),
        },
        accuracy: pooled.accuracy(),
        loss: pooled.mean_loss(),
        mean_site_accuracy: view.mean_site_accuracy,
        n_test: pooled.n_examples,
        auc: pooled.auc,
        train_loss: outcome.mean_train_loss,
        accepted: outcome.accepted.len(),
        stragglers: outcome.stragglers.len(),
        dropped: outcome.dropped.len(),
        rejected: outcome.rejected.len(),
        seconds,
        virtual_seconds: outcome.closed_at.since(outcome.opened_at).as_secs_f64(),
        virtual_time: outcome.closed_at.as_secs_f64(),
        bytes_up,
        bytes_down,
        traffic: BTreeMap::new(),
        site_errors: Vec::new(),
        epsilon: outcome.privacy.as_ref().map(|(_, e)| e.run_epsilon),
        clip_norm: outcome.privacy.as_ref().map(|(r, _)| r.clip_norm),
        metrics_epsilon: None,
    }
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

impl FinalMetrics {
    /// "accuracy A (all test rows), mean of sites M", or that nothing was
    /// evaluated.
    pub fn summary(&self) -> String {
        match (self.accuracy, self.mean_site_accuracy) {
            (Some(a), Some(m)) => {
                format!("accuracy {a:.4} (all test rows), mean of sites {m:.4}")
            }
            _ => "not evaluated (no test rows)".to_string(),
        }
    }

    /// Accuracy over the test rows of every site not in `excluded` (0 when
    /// they have none).
    pub fn accuracy_without(&self, excluded: &[String]) -> f64 {
        let (correct, rows) = self
            .per_site
            .iter()
            .filter(|(name, _)| !excluded.contains(name))
            .filter_map(|(_, m)| m.accuracy.map(|a| (a * m.n_test as f64, m.n_test)))
            .fold((0.0, 0u64), |(c, n), (ci, ni)| (c + ci, n + ni));
        if rows == 0 {
            0.0
        } else {
            correct / rows as f64
        }
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tessera_learn::{ScoreHistogram, SummedEvaluation};
    use tessera_privacy::{GaussianNoise, MetricsDp, PrivacyConfig, SiteMetrics};

    fn summed() -> SummedEvaluation {
        let bins: Vec<(u32, u64, u64)> = (0..1024u32)
            .step_by(8)
            .map(|b| (b, u64::from(b / 8), u64::from(128 - b / 8)))
            .collect();
        let histogram = ScoreHistogram { bins };
        SummedEvaluation {
            sites: 5,
            pooled: Evaluation {
                n_examples: 5_000,
                loss_sum: 2_500.0,
                n_correct: 3_500,
                auc: histogram.auc(),
                histogram: Some(histogram),
            },
            mean_site_accuracy: 0.7,
            sites_with_rows: 5,
        }
    }

    /// A run whose sites had no test rows reports its final accuracy, loss
    /// and mean of sites as null, not 0 (which reads as a model that is
    /// always wrong).
    #[test]
    fn nothing_evaluated_is_null_not_zero() {
        let none = Evaluation {
            n_examples: 0,
            loss_sum: 0.0,
            n_correct: 0,
            auc: None,
            histogram: None,
        };
        let f = final_metrics(&["a", "b"], &[none.clone(), none]);
        assert_eq!(
            (f.accuracy, f.loss, f.mean_site_accuracy),
            (None, None, None)
        );
        let json = serde_json::to_value(&f).unwrap();
        assert!(
            json["accuracy"].is_null() && json["loss"].is_null(),
            "{json}"
        );
        assert_eq!(f.summary(), "not evaluated (no test rows)");
        let one = Evaluation {
            n_examples: 4,
            loss_sum: 2.0,
            n_correct: 3,
            auc: None,
            histogram: None,
        };
        let f = final_metrics(&["a"], &[one]);
        assert_eq!((f.accuracy, f.loss), (Some(0.75), Some(0.5)));
    }

    fn mean_std(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt())
    }

    /// The released parts carry noise of the calibrated standard deviation
    /// (the loss scaled by its bound), centred on the exact sums, and the
    /// histogram is coarsened to `DP_HISTOGRAM_BINS` noised bins.
    #[test]
    fn noised_views_carry_the_calibrated_noise() {
        let config = PrivacyConfig {
            site_metrics: SiteMetrics::Dp,
            metrics_epsilon: Some(1.0),
            ..PrivacyConfig::default()
        };
        let dp = MetricsDp::new(&config, 10).unwrap();
        let exact = summed();
        let (mut rows, mut correct, mut loss) = (Vec::new(), Vec::new(), Vec::new());
        for stream in 0..3_000u64 {
            let mut noise = GaussianNoise::new([7; 32], stream);
            let view = EvaluationView::noised(&exact, &dp, &mut noise);
            rows.push(view.pooled.n_examples as f64);
            correct.push(view.pooled.n_correct as f64);
            loss.push(view.pooled.loss_sum);
            let h = view.pooled.histogram.unwrap();
            assert!(h.bins.len() <= DP_HISTOGRAM_BINS);
            assert!((0.0..=1.0).contains(&view.mean_site_accuracy));
        }
        let std = dp.unit_std();
        assert!(
            std > 10.0,
            "ten releases at epsilon 1 need real noise: {std}"
        );
        for (values, exact, scale) in [
            (&rows, 5_000.0, 1.0),
            (&correct, 3_500.0, 1.0),
            (&loss, 2_500.0, tessera_privacy::metrics::LOSS_BOUND),
        ] {
            let (mean, sd) = mean_std(values);
            let want = std * scale;
            assert!((sd / want - 1.0).abs() < 0.06, "sd {sd} against {want}");
            // The mean within 4 standard errors (rounding adds at most 0.5).
            assert!(
                (mean - exact).abs() < 4.0 * want / (values.len() as f64).sqrt() + 0.5,
                "mean {mean} against {exact}"
            );
        }
    }

    /// Without noise (a vanishing multiplier is not constructible, so the
    /// check is on the coarsening alone): the coarse histogram keeps the
    /// counts and the AUC stays near the fine one.
    #[test]
    fn the_coarse_histogram_keeps_counts_and_nearly_the_auc() {
        let exact = summed();
        let config = PrivacyConfig {
            site_metrics: SiteMetrics::Dp,
            metrics_epsilon: Some(1e6),
            ..PrivacyConfig::default()
        };
        let dp = MetricsDp::new(&config, 1).unwrap();
        // Far below the half unit that could change a rounded count.
        assert!(dp.unit_std() < 0.05, "{}", dp.unit_std());
        let view = EvaluationView::noised(&exact, &dp, &mut GaussianNoise::new([1; 32], 0));
        let h = view.pooled.histogram.unwrap();
        let total: u64 = h.bins.iter().map(|b| b.1 + b.2).sum();
        let exact_total: u64 = exact
            .pooled
            .histogram
            .as_ref()
            .unwrap()
            .bins
            .iter()
            .map(|b| b.1 + b.2)
            .sum();
        assert_eq!(total, exact_total);
        let (fine, coarse) = (exact.pooled.auc.unwrap(), view.pooled.auc.unwrap());
        // Pairs within one coarse bin count half: here 0.025 lower.
        assert!((fine - coarse).abs() < 0.03, "{fine} {coarse}");
        assert_eq!(view.pooled.n_examples, 5_000);
        // A ratio of two noised sums over five sites.
        assert!((view.mean_site_accuracy - 0.7).abs() < 0.03);
    }
}
