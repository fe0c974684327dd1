//! A rollout of a registered model (capability "canary", `tessera
//! rollout`): instead of training, the run sends the candidate and the
//! production model files to the sites that opted in (`Hello.canary`),
//! which score both on their own test rows and send each model's sums;
//! once every site of the plan has joined and every live canary site has
//! scored, the pooled comparison decides: the candidate is promoted when
//! the 95% interval of its accuracy less production's lies above
//! `-max_drop` (it is shown to be at most `max_drop` worse), and rolled back
//! (archived) otherwise. The decision and its evidence go to the registry
//! in one transaction, then every site is sent the version it serves from
//! then on (the candidate, or production again), and the run ends once
//! every live site holds it.
//!
//! With a deadline, the decision is taken when it passes with the scores
//! in hand (sites not joined, or still scoring, are named in it), and the
//! run ends a deadline after the decision with whichever sites hold the
//! version decided: a site that never joins, or a hostile canary that
//! polls forever, cannot hold a rollout open. When no canary scored, no
//! decision is recorded: the candidate stays a canary, and the sites are
//! sent production to serve.
//!
//! Under a plan whose site metrics are clear, each canary's sums travel
//! in the clear and the registry's evidence shows them site by site. Under
//! one whose site metrics are sums only (`"aggregate-only"`, `"dp"`), the
//! canaries mask their comparison in a SecAgg+ round and the coordinator
//! learns only their sum, noised with `"dp"` (`rollout/secure.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tessera_proto::pb;

use super::{Federation, Phase, Refusal, TaskView};
use crate::CoordinatorError;
use crate::store::RunStatus;
use tessera_core::Timestamp;

mod clear;
mod secure;

use clear::{check_report, decide};

/// The largest model file a rollout sends, bytes (what participants take).
pub const MAX_MODEL_FILE: usize = 64 << 20;

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
    /// How long the sites have to join and the canaries to score, and
    /// again the sites to take the version decided (`None`: the rollout
    /// waits for every site of the plan).
    pub deadline: Option<Duration>,
    /// The sites whose opt-in counts (`None`: every site that opts in):
    /// the operator's say in who may judge a candidate, since a canary's
    /// counts weigh by the rows it says it scored.
    pub canaries: Option<BTreeSet<String>>,
    /// No comparison: every site is sent production to serve (`tessera
    /// rollout --serve`, after a rollback by hand or a rollout that
    /// stopped before the sites were told); the candidate is production.
    pub serve_only: bool,
}

/// One model's sums from one site.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sums {
    n: u64,
    correct: u64,
    loss_sum: f64,
    /// The candidate's score from a 1.21 participant: the rows the
    /// candidate alone got right, and those production alone got right.
    only: Option<(u64, u64)>,
}

/// The decision, once made.
#[derive(Debug, Clone)]
struct Decision {
    /// The version every site serves.
    serve: u32,
    /// In words: promoted or rolled back, and on what evidence.
    text: String,
    /// When it was taken.
    at: Timestamp,
}

/// A rollout in progress.
#[derive(Debug)]
pub(crate) struct RolloutState {
    spec: Rollout,
    /// When the rollout opened.
    opened: Timestamp,
    /// Sites that opted in at their last join.
    canaries: BTreeSet<String>,
    /// Each canary site's sums: the candidate's, production's.
    scores: BTreeMap<String, [Option<Sums>; 2]>,
    decision: Option<Decision>,
    /// Sites told the rollout is over (holding the version decided).
    over: BTreeSet<String>,
    /// Under a plan whose site metrics are sums only: the secure sum of
    /// the comparison (`None`: the sums come in the clear).
    summed: Option<secure::Summing>,
    /// The decision could not be recorded (the registry changed while the
    /// rollout ran): no site is sent a version, and the run is over.
    halted: Option<String>,
}

impl RolloutState {
    fn new(
        spec: Rollout,
        opened: Timestamp,
        decision: Option<Decision>,
        summed: Option<secure::Summing>,
    ) -> Self {
        Self {
            spec,
            opened,
            canaries: BTreeSet::new(),
            scores: BTreeMap::new(),
            decision,
            over: BTreeSet::new(),
            summed,
            halted: None,
        }
    }

    fn file(&self, version: u32) -> Arc<Vec<u8>> {
        if version == self.spec.candidate.version {
            Arc::clone(&self.spec.candidate.file)
        } else {
            Arc::clone(&self.spec.production.file)
        }
    }

    /// The sites the operator's `--canaries` named that have not taken
    /// part as canaries (a name no site joined under, or a site that did
    /// not opt in), said after a decision; empty when there are none.
    fn unheard(&self) -> String {
        let Some(list) = &self.spec.canaries else {
            return String::new();
        };
        let absent: Vec<&String> = list
            .iter()
            .filter(|s| !self.canaries.contains(*s))
            .collect();
        if absent.is_empty() {
            return String::new();
        }
        format!(
            "; --canaries named {}, which did not take part as canaries",
            shown_list(&absent)
        )
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
        let summed = self.plan.privacy.site_metrics.sums_only();
        if summed && spec.candidate.version >= tessera_secagg::ANALYTICS_ROUND {
            return Err(CoordinatorError::Config(format!(
                "version {} is too large a number for the secure round of its comparison (below \
                 2^30)",
                spec.candidate.version
            )));
        }
        if !(spec.max_drop.is_finite() && (0.0..=1.0).contains(&spec.max_drop)) {
            return Err(CoordinatorError::Config(format!(
                "the rollout's max drop {} is not between 0 and 1",
                spec.max_drop
            )));
        }
        if self.plan.multitask.is_some() {
            return Err(CoordinatorError::Config(
                "a rollout compares one model at every site, and this plan has [multitask] (each \
                 task its own model); roll out without [multitask]"
                    .into(),
            ));
        }
        if self.plan.topology.kind != tessera_engine::TopologyKind::Flat {
            return Err(CoordinatorError::Config(
                "a rollout runs on a flat plan (one coordinator and its sites): this plan's \
                 topology is not flat"
                    .into(),
            ));
        }
        for model in [&spec.candidate, &spec.production] {
            if model.file.is_empty() || model.file.len() > MAX_MODEL_FILE {
                return Err(CoordinatorError::Config(format!(
                    "version {}'s model file is {} bytes: sites take 1 to {MAX_MODEL_FILE}",
                    model.version,
                    model.file.len()
                )));
            }
        }
        if spec.deadline.is_some_and(|d| d.is_zero()) {
            return Err(CoordinatorError::Config(
                "the rollout's deadline is zero".into(),
            ));
        }
        if spec.serve_only {
            return self.serve_everywhere(spec);
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
                "model '{}': candidate version {} against production version {}, max drop {}{}{}",
                spec.name,
                spec.candidate.version,
                spec.production.version,
                spec.max_drop,
                spec.deadline
                    .map_or(String::new(), |d| format!(", deadline {}s", d.as_secs())),
                if summed {
                    ", the canaries' comparison summed securely"
                } else {
                    ""
                }
            ),
        );
        if summed && self.privacy.metrics().is_some() {
            // One noised release in a rollout: the noise is sized for it
            // alone (not for the plan's rounds of evaluations).
            self.privacy = tessera_orchestrator::PrivacyBook::new(
                &self.plan.privacy,
                1,
                self.plan.local_training(),
            )
            .map_err(|e| CoordinatorError::Config(format!("privacy: {e}")))?;
        }
        let opened = self.now();
        self.rollout = Some(RolloutState::new(
            spec,
            opened,
            None,
            summed.then(secure::Summing::default),
        ));
        Ok(())
    }

    /// A rollout that only sends production to every site to serve.
    fn serve_everywhere(&mut self, spec: Rollout) -> Result<(), CoordinatorError> {
        let version = spec.production.version;
        if spec.candidate.version != version {
            return Err(CoordinatorError::Config(format!(
                "a rollout that only serves sends one version, not {} and {version}",
                spec.candidate.version
            )));
        }
        let text = format!(
            "every site serves production version {version} of '{}' (no comparison: tessera \
             rollout --serve)",
            spec.name
        );
        self.audit("-", "rollout", "opened", &text);
        let opened = self.now();
        let decision = Decision {
            serve: version,
            text,
            at: opened,
        };
        self.rollout = Some(RolloutState::new(spec, opened, Some(decision), None));
        self.version += 1;
        Ok(())
    }

    /// Whether this run is a rollout.
    pub fn in_rollout(&self) -> bool {
        self.rollout.is_some()
    }

    /// Before a join in a rollout is taken: the site must speak "canary".
    pub(super) fn rollout_admits(&self, site: &str, hello: &pb::Hello) -> Result<(), Refusal> {
        if self.rollout.is_some() && !hello.capabilities.iter().any(|c| c == "canary") {
            let reason = "this coordinator runs a rollout of a registered model: the participant \
                          needs capability 'canary' (Tessera protocol 1.20 or later)";
            self.audit(site, "join", "refused", reason);
            return Err(Refusal::Invalid(reason.into()));
        }
        if self.rollout.as_ref().is_some_and(|r| r.summed.is_some())
            && !hello.capabilities.iter().any(|c| c == "canary-secure")
        {
            let reason = "this coordinator runs a rollout under a plan whose site metrics are \
                          sums only, where the canaries' comparison is summed securely: the \
                          participant needs capability 'canary-secure' (Tessera protocol 1.22 \
                          or later)";
            self.audit(site, "join", "refused", reason);
            return Err(Refusal::Invalid(reason.into()));
        }
        Ok(())
    }

    /// At a join in a rollout, once the site's process holds its session:
    /// whether it opted in and what it serves are recorded. The welcome's
    /// rollout.
    pub(super) fn rollout_join(
        &mut self,
        site: &str,
        hello: &pb::Hello,
    ) -> Option<pb::ServedModel> {
        // A canary whose process sent its keys to the comparison's secure
        // round and then restarted cannot go on in it (its keys are gone):
        // the round does not wait for it.
        let restarted = self
            .secure
            .as_ref()
            .is_some_and(|s| tessera_secagg::is_rollout_round(s.round) && s.has_joined(site));
        let rollout = self.rollout.as_mut()?;
        if restarted && let Some(summing) = rollout.summed.as_mut() {
            summing.restarted.insert(site.to_string());
        }
        let allowed = rollout
            .spec
            .canaries
            .as_ref()
            .is_none_or(|list| list.contains(site));
        let counted = hello.canary && allowed;
        if counted {
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
            match (hello.canary, allowed) {
                (true, true) => "canary",
                (true, false) =>
                    "opted in as a canary, not on the rollout's --canaries list: \
                                  not a canary",
                (false, _) => "not a canary",
            },
            if serving.is_empty() {
                "nothing".to_string()
            } else {
                serving.join(", ")
            }
        );
        self.audit(site, "rollout-join", "accepted", &detail);
        Some(announced)
    }

    /// What `site` does in a rollout (`None`: the run is no rollout).
    /// `held`: the version the site serves.
    pub(super) fn rollout_task(&mut self, site: &str, held: Option<u32>) -> Option<TaskView> {
        let rollout = self.rollout.as_mut()?;
        let name = rollout.spec.name.clone();
        if let Some(reason) = &rollout.halted {
            return Some(TaskView::RolloutOver {
                serve: pb::ServedModel::default(),
                reason: reason.clone(),
            });
        }
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
        let round = if rollout.summed.is_some() {
            // Under sums only: asked once the secure round has it.
            let round = secure::round_of(rollout);
            let asked = self.secure.as_ref().is_some_and(|s| {
                s.round == round
                    && s.stages().id_of(site).is_some()
                    && !s.has_joined(site)
                    && !s.has_refused(site)
            });
            if !asked {
                return Some(TaskView::Wait);
            }
            round
        } else if !rollout.canaries.contains(site) || rollout.scored(site) {
            return Some(TaskView::Wait);
        } else {
            0
        };
        let (candidate, production) = (&rollout.spec.candidate, &rollout.spec.production);
        let header = pb::TaskHeader {
            round,
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
        if rollout.decision.is_some() || rollout.halted.is_some() {
            // A canary still scoring when the deadline decided: taken and
            // set aside, so that it goes on to the version decided.
            self.audit(
                site,
                "canary-score",
                "ignored",
                &format!("version {}: the rollout has decided", report.round),
            );
            self.touch(site);
            return Some(Ok(()));
        }
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
        let past = |since: Timestamp| rollout.spec.deadline.is_some_and(|d| now >= since.plus(d));
        let everyone = self
            .roster
            .expected()
            .complete(&joined.iter().map(String::as_str).collect());
        if let Some(decision) = &rollout.decision {
            // Waited for: the live sites not holding the version decided,
            // and without a deadline those gone quiet too (a site
            // restarting); not those that withdrew.
            let missing: Vec<&String> = joined
                .iter()
                .filter(|s| {
                    !rollout.over.contains(*s)
                        && (live.contains(*s)
                            || (rollout.spec.deadline.is_none()
                                && self.roster.last_seen(s).is_some()))
                })
                .collect();
            let mut untold: Vec<&String> = joined
                .iter()
                .filter(|s| !rollout.over.contains(*s))
                .collect();
            if let tessera_orchestrator::Expected::Named(all) = self.roster.expected() {
                untold.extend(all.difference(&joined));
            }
            // Every site of the plan is waited for to join too (a rollout
            // that only serves decides before anyone joins).
            let mut detail = if missing.is_empty() && everyone {
                "every site still in the run serves the version decided".to_string()
            } else if past(decision.at) {
                format!(
                    "the deadline passed: every live site serves the version decided but {}",
                    shown_list(&missing)
                )
            } else {
                return Ok(());
            };
            if !untold.is_empty() {
                detail.push_str(&format!(
                    "; not holding it at the end: {} (each serves what it served, until a \
                     rollout reaches it)",
                    shown_list(&untold)
                ));
            }
            self.store.end_run(&self.run.id, RunStatus::Finished)?;
            self.audit("-", "run", "finished", &detail);
            self.phase = Phase::Finished;
            self.version += 1;
            return Ok(());
        }
        let scoring: Vec<&String> = rollout
            .canaries
            .iter()
            .filter(|s| live.contains(*s) && !rollout.scored(s))
            .collect();
        if rollout.summed.is_some() {
            return self.rollout_secure_step(now, &live, everyone);
        }
        let late = if everyone && scoring.is_empty() {
            String::new()
        } else if past(rollout.opened) {
            let mut late = Vec::new();
            if !everyone {
                late.push(format!("{} site(s) joined of the plan's", joined.len()));
            }
            if !scoring.is_empty() {
                late.push(format!("still scoring: {}", shown_list(&scoring)));
            }
            format!(" (decided at the deadline: {})", late.join("; "))
        } else {
            return Ok(());
        };
        let Some((promote, text, evidence)) = decide(rollout)? else {
            // Nothing to decide on: production stays, the candidate stays
            // a canary, and the registry is not touched.
            let text = format!(
                "no decision: no canary site scored version {} (none opted in, or each left){late}; \
                 production version {} is served, and the candidate stays a canary",
                rollout.spec.candidate.version, rollout.spec.production.version
            );
            self.rollout_undecided(text);
            return Ok(());
        };
        self.conclude_rollout(promote, format!("{text}{late}"), &evidence)
    }

    /// Records the decision and its evidence in the registry, then sends
    /// every site the version decided.
    fn conclude_rollout(
        &mut self,
        promote: bool,
        text: String,
        evidence: &str,
    ) -> Result<(), CoordinatorError> {
        let Some(rollout) = self.rollout.as_ref() else {
            return Ok(());
        };
        let spec = &rollout.spec;
        let (name, candidate, production) = (
            spec.name.clone(),
            spec.candidate.version,
            spec.production.version,
        );
        let serve = if promote { candidate } else { production };
        let text = format!("{text}{}", rollout.unheard());
        let reason = format!("rollout run {}: {text}", self.run.id);
        let recorded = self.store.record_rollout(&crate::store::RolloutDecision {
            name: &name,
            candidate,
            production,
            promote,
            reason: &reason,
            evidence,
            at_unix_micros: self.clock.unix_micros(),
        });
        match recorded {
            Ok(()) => {}
            // An operator moved a version while the rollout ran: nothing is
            // recorded, no site is sent a version (production may be
            // retired), and the run ends.
            Err(crate::store::StoreError::Refused(why)) => {
                let text = format!(
                    "no decision recorded ({text}): {why}; no site is sent a version, each serves \
                     what it served (`tessera rollout --serve` sends the version now in production)"
                );
                tracing::warn!(model = %name, %text, "rollout not recorded");
                self.audit("-", "rollout", "undecided", &text);
                if let Some(rollout) = self.rollout.as_mut() {
                    rollout.halted = Some(text.clone());
                }
                self.store.end_run(&self.run.id, RunStatus::Finished)?;
                self.audit("-", "run", "finished", &text);
                self.phase = Phase::Finished;
                self.version += 1;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(model = %name, candidate, serve, %text, "rollout decided");
        self.audit("-", "rollout", "decided", &text);
        let now = self.now();
        self.settle_rollout(Decision {
            serve,
            text,
            at: now,
        });
        Ok(())
    }

    /// No decision (`text` says why): production is served, the candidate
    /// stays a canary, and the registry is not touched.
    fn rollout_undecided(&mut self, text: String) {
        let Some(rollout) = self.rollout.as_ref() else {
            return;
        };
        let serve = rollout.spec.production.version;
        let text = format!("{text}{}", rollout.unheard());
        tracing::warn!(model = %rollout.spec.name, %text, "rollout undecided");
        self.audit("-", "rollout", "undecided", &text);
        let now = self.now();
        self.settle_rollout(Decision {
            serve,
            text,
            at: now,
        });
    }

    /// What a rollout waits for, for `tessera status` (`None`: no rollout).
    pub(super) fn rollout_awaited(&self, now: Timestamp) -> Option<(String, Vec<String>, String)> {
        let rollout = self.rollout.as_ref()?;
        let joined = self.roster.joined();
        if let Some(decision) = &rollout.decision {
            let sites = joined
                .iter()
                .filter(|s| !rollout.over.contains(*s))
                .cloned()
                .collect();
            return Some((
                format!("rollout: sites to take version {}", decision.serve),
                sites,
                decision.text.clone(),
            ));
        }
        let everyone = self
            .roster
            .expected()
            .complete(&joined.iter().map(String::as_str).collect());
        if !everyone {
            let sites = match self.roster.expected() {
                tessera_orchestrator::Expected::Named(all) => {
                    all.difference(joined).cloned().collect()
                }
                tessera_orchestrator::Expected::Count(_) => Vec::new(),
            };
            return Some((
                "rollout: sites to join".into(),
                sites,
                format!(
                    "{} of {} sites joined",
                    joined.len(),
                    self.roster.expected().len()
                ),
            ));
        }
        let live = self.live(now);
        let scoring = rollout
            .canaries
            .iter()
            .filter(|s| live.contains(*s) && !rollout.scored(s))
            .cloned()
            .collect();
        Some((
            "rollout: canaries scoring".into(),
            scoring,
            format!("{} canary site(s)", rollout.canaries.len()),
        ))
    }

    /// From now on every site is sent `decision`'s version to serve.
    fn settle_rollout(&mut self, decision: Decision) {
        if let Some(rollout) = self.rollout.as_mut() {
            rollout.decision = Some(decision);
        }
        self.version += 1;
    }
}

/// Whether `comparison` promotes the candidate: the lower end of the 95%
/// interval of its accuracy less production's is at least `-max_drop`, so
/// the candidate is shown to be no more than `max_drop` worse (a tie, or
/// too few rows to tell, keeps production).
fn promotes(comparison: &tessera_analytics::ab::Comparison, max_drop: f64) -> bool {
    comparison.ci95.0 >= -max_drop
}

/// The decision in words: promoted or rolled back, on `basis` test rows
/// (who scored them and how many), with both accuracies, the difference
/// and its `interval` 95% interval, and the rule.
fn describe(
    spec: &Rollout,
    comparison: &tessera_analytics::ab::Comparison,
    promote: bool,
    basis: &str,
    interval: &str,
) -> String {
    format!(
        "{}: on {basis} test rows, version {}'s accuracy {:.4} against production version {}'s \
         {:.4} (difference {:+.4}, {interval} 95% interval [{:+.4}, {:+.4}]); promoted when the \
         interval's lower end is at least {}",
        if promote { "promoted" } else { "rolled back" },
        spec.candidate.version,
        comparison.accuracy_b,
        spec.production.version,
        comparison.accuracy_a,
        comparison.difference,
        comparison.ci95.0,
        comparison.ci95.1,
        0.0 - spec.max_drop
    )
}

/// At most eight site names, for a log line.
fn shown_list(sites: &[&String]) -> String {
    let mut shown: Vec<String> = sites
        .iter()
        .take(8)
        .map(|s| format!("'{}'", tessera_proto::shown(s, 64)))
        .collect();
    if sites.len() > 8 {
        shown.push(format!("and {} more", sites.len() - 8));
    }
    shown.join(", ")
}
