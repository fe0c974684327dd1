//! A rollout of a registered model (capability "canary", `tessera
//! rollout`): instead of training, the run sends the candidate and the
//! production model files to the sites that opted in (`Hello.canary`),
//! which score both on their own test rows and send each model's sums;
//! once every site of the plan has joined and every live canary site has
//! scored, the pooled comparison decides: the candidate is promoted when
//! its accuracy is at most `max_drop` below production's, and rolled back
//! (archived) otherwise. The decision and its evidence go to the registry
//! in one transaction, then every site is sent the version it serves from
//! then on (the candidate, or production again), and the run ends once
//! every live site holds it.
//!
//! The sums travel in the clear (a plan whose site metrics are sums only
//! is refused when the rollout opens): a secure sum of the comparison is
//! not built.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::json;
use tessera_analytics::ab::{ArmSums, compare};
use tessera_proto::pb;

use super::{Federation, Phase, Refusal, TaskView};
use crate::CoordinatorError;
use crate::store::RunStatus;

/// The most rows one site may say it scored.
const MAX_ROWS: u64 = 1_000_000_000;
/// The most loss per row a report may carry: `-ln 1e-7` (the floor of a
/// probability, as scoring applies it) is about 16.1.
const MAX_LOSS_PER_ROW: f64 = 17.0;

/// A registered model version's file, as sites receive it.
#[derive(Debug, Clone)]
pub struct RolloutModel {
    /// Its version in the registry.
    pub version: u32,
    /// Its model file (`tessera model` format).
    pub file: Arc<Vec<u8>>,
}

/// What a rollout run rolls out (`CoordinatorConfig::rollout`).
#[derive(Debug, Clone)]
pub struct Rollout {
    /// The registered model's name.
    pub name: String,
    /// The candidate version (at the canary stage).
    pub candidate: RolloutModel,
    /// The production version it is compared with.
    pub production: RolloutModel,
    /// The most the candidate's pooled accuracy may fall below
    /// production's and still be promoted (0: it must do at least as well).
    pub max_drop: f64,
}

/// One model's sums from one site.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sums {
    n: u64,
    correct: u64,
    loss_sum: f64,
}

/// The decision, once made.
#[derive(Debug, Clone)]
struct Decision {
    /// The version every site serves.
    serve: u32,
    /// In words: promoted or rolled back, and on what evidence.
    text: String,
}

/// A rollout in progress.
#[derive(Debug)]
pub(crate) struct RolloutState {
    spec: Rollout,
    /// Sites that opted in at their last join.
    canaries: BTreeSet<String>,
    /// Each canary site's sums: the candidate's, production's.
    scores: BTreeMap<String, [Option<Sums>; 2]>,
    decision: Option<Decision>,
    /// Sites told the rollout is over (holding the version decided).
    over: BTreeSet<String>,
}

impl RolloutState {
    fn file(&self, version: u32) -> Arc<Vec<u8>> {
        if version == self.spec.candidate.version {
            Arc::clone(&self.spec.candidate.file)
        } else {
            Arc::clone(&self.spec.production.file)
        }
    }

    fn scored(&self, site: &str) -> bool {
        self.scores
            .get(site)
            .is_some_and(|s| s[0].is_some() && s[1].is_some())
    }
}

impl Federation {
    /// Makes this run a rollout of `spec` (before any site joins).
    pub fn set_rollout(&mut self, spec: Rollout) -> Result<(), CoordinatorError> {
        if self.plan.privacy.site_metrics.sums_only() {
            return Err(CoordinatorError::Config(
                "the plan keeps site metrics as sums only, and a rollout's comparison sends each \
                 canary site's sums in the clear: roll out under a plan whose site_metrics is \
                 \"clear\""
                    .into(),
            ));
        }
        if !(spec.max_drop.is_finite() && (0.0..=1.0).contains(&spec.max_drop)) {
            return Err(CoordinatorError::Config(format!(
                "the rollout's max drop {} is not between 0 and 1",
                spec.max_drop
            )));
        }
        if spec.candidate.version == spec.production.version {
            return Err(CoordinatorError::Config(format!(
                "the candidate and production are both version {}",
                spec.candidate.version
            )));
        }
        self.audit(
            "-",
            "rollout",
            "opened",
            &format!(
                "model '{}': candidate version {} against production version {}, max drop {}",
                spec.name, spec.candidate.version, spec.production.version, spec.max_drop
            ),
        );
        self.rollout = Some(RolloutState {
            spec,
            canaries: BTreeSet::new(),
            scores: BTreeMap::new(),
            decision: None,
            over: BTreeSet::new(),
        });
        Ok(())
    }

    /// At a join in a rollout: the site must speak "canary"; whether it
    /// opted in and what it serves are recorded. The welcome's rollout.
    pub(super) fn rollout_join(
        &mut self,
        site: &str,
        hello: &pb::Hello,
    ) -> Result<Option<pb::ServedModel>, Refusal> {
        let Some(rollout) = self.rollout.as_mut() else {
            return Ok(None);
        };
        if !hello.capabilities.iter().any(|c| c == "canary") {
            let reason = "this coordinator runs a rollout of a registered model: the participant \
                          needs capability 'canary' (Tessera protocol 1.20 or later)";
            self.audit(site, "join", "refused", reason);
            return Err(Refusal::Invalid(reason.into()));
        }
        if hello.canary {
            rollout.canaries.insert(site.to_string());
        } else {
            rollout.canaries.remove(site);
        }
        let serving: Vec<String> = hello
            .serving
            .iter()
            .take(8)
            .map(|s| format!("{} v{}", tessera_proto::shown(&s.name, 100), s.version))
            .collect();
        let announced = pb::ServedModel {
            name: rollout.spec.name.clone(),
            version: rollout.spec.candidate.version,
        };
        let detail = format!(
            "{}; serving {}",
            if hello.canary {
                "canary"
            } else {
                "not a canary"
            },
            if serving.is_empty() {
                "nothing".to_string()
            } else {
                serving.join(", ")
            }
        );
        self.audit(site, "rollout-join", "accepted", &detail);
        Ok(Some(announced))
    }

    /// What `site` does in a rollout (`None`: the run is no rollout).
    /// `held`: the version the site serves.
    pub(super) fn rollout_task(&mut self, site: &str, held: Option<u32>) -> Option<TaskView> {
        let rollout = self.rollout.as_mut()?;
        let name = rollout.spec.name.clone();
        if let Some(decision) = &rollout.decision {
            if held == Some(decision.serve) {
                if rollout.over.insert(site.to_string()) {
                    self.version += 1;
                }
                return Some(TaskView::RolloutOver {
                    serve: pb::ServedModel {
                        name,
                        version: decision.serve,
                    },
                    reason: decision.text.clone(),
                });
            }
            let file = rollout.file(decision.serve);
            let header = pb::TaskHeader {
                kind: pb::TaskKind::Serve as i32,
                rollout: Some(pb::RolloutTask {
                    name,
                    version: decision.serve,
                    bytes: file.len() as u64,
                    decision: decision.text.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            return Some(TaskView::Rollout {
                header,
                files: vec![file],
            });
        }
        if !rollout.canaries.contains(site) || rollout.scored(site) {
            return Some(TaskView::Wait);
        }
        let (candidate, production) = (&rollout.spec.candidate, &rollout.spec.production);
        let header = pb::TaskHeader {
            kind: pb::TaskKind::Canary as i32,
            rollout: Some(pb::RolloutTask {
                name,
                version: candidate.version,
                bytes: candidate.file.len() as u64,
                production_version: production.version,
                production_bytes: production.file.len() as u64,
                decision: String::new(),
            }),
            ..Default::default()
        };
        Some(TaskView::Rollout {
            header,
            files: vec![Arc::clone(&candidate.file), Arc::clone(&production.file)],
        })
    }

    /// A canary site's sums of one model (`None`: the run is no rollout).
    pub(super) fn rollout_evaluation(
        &mut self,
        site: &str,
        report: &pb::EvaluationReport,
    ) -> Option<Result<(), Refusal>> {
        let rollout = self.rollout.as_mut()?;
        let checked = check_report(rollout, site, report);
        Some(match checked {
            Ok((index, sums)) => {
                rollout.scores.entry(site.to_string()).or_default()[index] = Some(sums);
                self.audit(
                    site,
                    "canary-score",
                    "accepted",
                    &format!(
                        "version {}: {} of {} rows right",
                        report.round, sums.correct, sums.n
                    ),
                );
                self.version += 1;
                Ok(())
            }
            Err(reason) => {
                self.refuse_report(site, "canary-score", &reason);
                Err(Refusal::Invalid(reason))
            }
        })
    }

    /// A rollout's step: decides once every site has joined and every live
    /// canary site has scored; ends the run once every live site holds the
    /// version decided.
    pub(super) fn rollout_step(&mut self) -> Result<(), CoordinatorError> {
        let now = self.now();
        let live = self.live(now);
        let joined = self.roster.joined().clone();
        let Some(rollout) = self.rollout.as_ref() else {
            return Ok(());
        };
        if rollout.decision.is_some() {
            if joined
                .iter()
                .all(|s| rollout.over.contains(s) || !live.contains(s))
            {
                self.store.end_run(&self.run.id, RunStatus::Finished)?;
                self.audit(
                    "-",
                    "run",
                    "finished",
                    "every live site serves the version decided",
                );
                self.phase = Phase::Finished;
                self.version += 1;
            }
            return Ok(());
        }
        let everyone = self
            .roster
            .expected()
            .complete(&joined.iter().map(String::as_str).collect());
        let waiting = rollout
            .canaries
            .iter()
            .any(|s| live.contains(s) && !rollout.scored(s));
        if !everyone || waiting {
            return Ok(());
        }
        let (promote, text, evidence) = decide(rollout)?;
        let spec = &rollout.spec;
        let (name, candidate) = (spec.name.clone(), spec.candidate.version);
        let serve = if promote {
            candidate
        } else {
            spec.production.version
        };
        let at = self.clock.unix_micros();
        let reason = format!("rollout run {}: {text}", self.run.id);
        self.store
            .record_rollout(&name, candidate, promote, &reason, &evidence, at)?;
        tracing::info!(model = %name, candidate, serve, %text, "rollout decided");
        self.audit("-", "rollout", "decided", &text);
        if let Some(rollout) = self.rollout.as_mut() {
            rollout.decision = Some(Decision { serve, text });
        }
        self.version += 1;
        Ok(())
    }
}

/// The report's model (0: candidate, 1: production) and sums, or why
/// they are refused.
fn check_report(
    rollout: &RolloutState,
    site: &str,
    report: &pb::EvaluationReport,
) -> Result<(usize, Sums), String> {
    if rollout.decision.is_some() {
        return Err("the rollout has decided: no more scores are taken".into());
    }
    if !rollout.canaries.contains(site) {
        return Err(format!(
            "site '{site}' did not opt in as a canary: its scores are not asked for"
        ));
    }
    let spec = &rollout.spec;
    let index = match report.round {
        v if v == spec.candidate.version => 0,
        v if v == spec.production.version => 1,
        v => {
            return Err(format!(
                "version {v} is neither the candidate ({}) nor production ({})",
                spec.candidate.version, spec.production.version
            ));
        }
    };
    let sums = Sums {
        n: report.n_examples,
        correct: report.n_correct,
        loss_sum: report.loss_sum,
    };
    if !(1..=MAX_ROWS).contains(&sums.n) {
        return Err(format!(
            "{} rows scored (1 to {MAX_ROWS} are taken)",
            sums.n
        ));
    }
    if sums.correct > sums.n {
        return Err(format!("{} rows right of {} scored", sums.correct, sums.n));
    }
    let most = MAX_LOSS_PER_ROW * sums.n as f64;
    if !(sums.loss_sum.is_finite() && (0.0..=most).contains(&sums.loss_sum)) {
        return Err(format!(
            "a loss sum of {} over {} rows (0 to {most} are taken)",
            sums.loss_sum, sums.n
        ));
    }
    let before = rollout.scores.get(site).copied().unwrap_or_default();
    if let Some(other) = before[1 - index]
        && other.n != sums.n
    {
        return Err(format!(
            "{} rows scored with one model and {} with the other: both are scored on the same \
             test rows",
            sums.n, other.n
        ));
    }
    if let Some(earlier) = before[index]
        && earlier != sums
    {
        return Err(format!(
            "version {} was already scored here, with other sums",
            report.round
        ));
    }
    if !report.sites.is_empty() || report.auc.is_some() || !report.histogram.is_empty() {
        return Err("a canary's score is its sums only".into());
    }
    Ok((index, sums))
}

/// Promote or not, the decision in words, and its evidence (JSON).
fn decide(rollout: &RolloutState) -> Result<(bool, String, String), CoordinatorError> {
    let spec = &rollout.spec;
    let mut per_site = serde_json::Map::new();
    let (mut candidate, mut production) = (ArmSums::default(), ArmSums::default());
    let (mut loss_c, mut loss_p) = (0.0, 0.0);
    for (site, scores) in &rollout.scores {
        let [Some(c), Some(p)] = scores else { continue };
        candidate.n += c.n as f64;
        candidate.correct += c.correct as f64;
        production.n += p.n as f64;
        production.correct += p.correct as f64;
        loss_c += c.loss_sum;
        loss_p += p.loss_sum;
        per_site.insert(
            site.clone(),
            json!({
                "rows": c.n,
                "candidate_correct": c.correct,
                "production_correct": p.correct,
                "candidate_loss_sum": c.loss_sum,
                "production_loss_sum": p.loss_sum,
            }),
        );
    }
    let sites = per_site.len();
    if sites == 0 {
        let text = format!(
            "rolled back: no canary site scored version {} (none opted in, or each left)",
            spec.candidate.version
        );
        let evidence =
            json!({"canary_sites": [], "decision": "rolled back", "max_drop": spec.max_drop});
        return Ok((false, text, evidence.to_string()));
    }
    let comparison = compare(&production, &candidate, 0.0).map_err(CoordinatorError::Config)?;
    let promote = comparison.difference >= -spec.max_drop;
    let rows = candidate.n as u64;
    let text = format!(
        "{}: on {sites} canary site(s)' {rows} test rows, version {}'s accuracy {:.4} against \
         production version {}'s {:.4} (difference {:+.4}, 95% interval [{:+.4}, {:+.4}]); \
         promoted when the difference is at least {}",
        if promote { "promoted" } else { "rolled back" },
        spec.candidate.version,
        comparison.accuracy_b,
        spec.production.version,
        comparison.accuracy_a,
        comparison.difference,
        comparison.ci95.0,
        comparison.ci95.1,
        0.0 - spec.max_drop
    );
    let evidence = json!({
        "decision": if promote { "promoted" } else { "rolled back" },
        "candidate_version": spec.candidate.version,
        "production_version": spec.production.version,
        "canary_sites": per_site.keys().collect::<Vec<_>>(),
        "rows": rows,
        "candidate_accuracy": comparison.accuracy_b,
        "production_accuracy": comparison.accuracy_a,
        "difference": comparison.difference,
        "ci95": [comparison.ci95.0, comparison.ci95.1],
        "candidate_mean_loss": loss_c / candidate.n,
        "production_mean_loss": loss_p / production.n,
        "max_drop": spec.max_drop,
        "per_site": per_site,
    });
    Ok((promote, text, evidence.to_string()))
}
