//! A rollout's comparison summed securely, under a plan whose site metrics
//! are sums only (`"aggregate-only"`, `"dp"`; capability `canary-secure`).
//!
//! Once every site of the plan has joined (or the deadline passes), the
//! live canary sites are the cohort of SecAgg+ round `candidate |
//! ROLLOUT_ROUND`; each is sent the two model files with that round in the
//! task, scores both, and masks its counts
//! ([`tessera_analytics::ab::CanaryCounts`]: rows, rows production got
//! right, rows each model alone got right). The coordinator unmasks only
//! their sum, checks that it fits the survivors, and decides on its paired
//! interval. With `"dp"`, the sum is noised here in memory, with a key
//! from the operating system, before anything else reads it (the
//! neighbouring relation of [`tessera_privacy::metrics`]: one test row
//! moves at most three of the four counts by one, within the metrics'
//! sensitivity), the release is charged to the run's metrics budget, and
//! the interval is widened by the noise
//! ([`tessera_analytics::ab::paired_noised`]).
//!
//! Against whom: the coordinator (and its database, the registry's
//! evidence, the audit log) never sees one canary's counts; which canaries
//! were summed it knows. With `"dp"` it sees the exact sum before it
//! noises it. A canary masks one comparison of a version (the
//! participant's `compared-vN` mark), so that a coordinator cannot ask for
//! a second sum over another cohort and take the difference. A canary may
//! mask any counts it likes, and so steer the decision: only a sum that
//! does not fit shows it, and then there is no decision, whose reason
//! names the check that failed, never the values. The cohort needs at
//! least three sites (and the plan's `min_participants`), as every secure
//! round does: with fewer, there is no decision.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use tessera_analytics::ab::{CanaryCounts, paired, paired_noised};
use tessera_core::Timestamp;
use tessera_orchestrator::secure::SecureRound as SecureStages;

use super::super::secure::SecureRound;
use super::{Federation, RolloutState, shown_list};
use crate::CoordinatorError;

/// The secure sum's progress.
#[derive(Debug, Default)]
pub(in crate::state) struct Summing {
    /// Whether the round was opened (it opens once).
    opened: bool,
    /// Why the decision was taken before every site joined, for its text.
    late: String,
    /// Members that restarted after sending their keys: not waited for.
    pub(super) restarted: BTreeSet<String>,
    /// The sum once the round is over: noised where the plan says, or why
    /// there is none.
    outcome: Option<Result<Summed, String>>,
}

/// The canaries' sum as the decision reads it.
#[derive(Debug)]
struct Summed {
    sites: Vec<String>,
    rows: f64,
    production_right: f64,
    candidate_only: f64,
    production_only: f64,
    /// The noise's standard deviation on each count (0 without DP).
    sigma: f64,
    /// The metrics' epsilon after this release (with DP).
    epsilon: Option<f64>,
}

/// The secure round of `rollout`'s comparison.
pub(in crate::state) fn round_of(rollout: &RolloutState) -> u32 {
    rollout.spec.candidate.version | tessera_secagg::ROLLOUT_ROUND
}

impl Federation {
    /// The rollout's step before its decision, under sums only: opens the
    /// secure round once every site has joined (or at the deadline),
    /// drives it, and decides on its sum.
    pub(super) fn rollout_secure_step(
        &mut self,
        now: Timestamp,
        live: &BTreeSet<String>,
        everyone: bool,
    ) -> Result<(), CoordinatorError> {
        let Some(rollout) = self.rollout.as_mut() else {
            return Ok(());
        };
        let round = round_of(rollout);
        let Some(summing) = rollout.summed.as_mut() else {
            return Ok(());
        };
        if let Some(outcome) = summing.outcome.take() {
            let late = summing.late.clone();
            let production = rollout.spec.production.version;
            return match outcome.and_then(|summed| decide_summed(rollout, &summed)) {
                Ok((promote, text, evidence)) => {
                    self.conclude_rollout(promote, format!("{text}{late}"), &evidence)
                }
                Err(why) => {
                    let text = format!(
                        "no decision: {why}{late}; production version {production} is served, and the \
                         candidate stays a canary"
                    );
                    self.rollout_undecided(text);
                    Ok(())
                }
            };
        }
        if summing.opened {
            // A canary gone quiet (it heartbeats while it scores), or
            // restarted after sending its keys, is not waited for: each
            // stage closes without it.
            let gone: Vec<String> = self
                .secure
                .as_ref()
                .filter(|s| s.round == round)
                .map(|s| {
                    s.stages()
                        .members()
                        .keys()
                        .filter(|m| !live.contains(*m) || summing.restarted.contains(*m))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for site in &gone {
                self.secure_withdraw(site);
            }
            if self.secure.is_some() {
                self.advance_secure(now);
            }
            return Ok(());
        }
        let past = rollout
            .spec
            .deadline
            .is_some_and(|d| now >= rollout.opened.plus(d));
        if !everyone && !past {
            return Ok(());
        }
        summing.opened = true;
        if !everyone {
            summing.late = format!(
                " (the secure round opened at the deadline: {} site(s) joined of the plan's)",
                self.roster.joined().len()
            );
        }
        let cohort: Vec<String> = rollout
            .canaries
            .iter()
            .filter(|s| live.contains(*s))
            .cloned()
            .collect();
        let needed = self.plan.federation.min_participants.max(3);
        if cohort.len() < needed {
            let why = format!(
                "{} canary site(s) connected ({}), and a comparison summed securely needs at \
                 least {needed} (3, and the plan's min_participants)",
                cohort.len(),
                shown_list(&cohort.iter().collect::<Vec<_>>())
            );
            summing.outcome = Some(Err(why));
            self.version += 1;
            return Ok(());
        }
        if self.secure.is_some() {
            summing.outcome = Some(Err("another secure round is open".into()));
            self.version += 1;
            return Ok(());
        }
        let index: BTreeMap<String, u32> = cohort
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        let ids: Vec<u32> = index.values().copied().collect();
        // Each stage waits up to the rollout's deadline (ten liveness
        // periods without one): a canary receives both files and scores
        // them before it sends its keys.
        let liveness = self.roster.liveness();
        let period = rollout
            .spec
            .deadline
            .unwrap_or(liveness.saturating_mul(10))
            .max(liveness);
        let opened = self
            .plan
            .secure_aggregation
            .round_params(
                round,
                &ids,
                self.plan.secagg_graph_seed(round),
                CanaryCounts::dimension(),
            )
            .map_err(|e| e.to_string())
            .and_then(|params| {
                SecureStages::open(now, round, index, params, period).map_err(|e| e.to_string())
            });
        match opened {
            Ok((stages, effects)) => {
                self.secure = Some(SecureRound::of_stages(round, stages));
                self.apply_secure(effects);
                self.audit(
                    "-",
                    "rollout",
                    "secure comparison",
                    &format!(
                        "the comparison of {} canary site(s) is summed in secure round {round}: {}",
                        cohort.len(),
                        shown_list(&cohort.iter().collect::<Vec<_>>())
                    ),
                );
            }
            Err(e) => {
                if let Some(summing) = self.rollout.as_mut().and_then(|r| r.summed.as_mut()) {
                    summing.outcome = Some(Err(format!("the secure round cannot open: {e}")));
                }
            }
        }
        self.version += 1;
        Ok(())
    }

    /// The comparison's secure round is over: its sum, checked and (with
    /// `"dp"`) noised, kept for the decision; the exact sum goes no further.
    pub(in crate::state) fn finish_rollout_secure(&mut self, secure: &SecureRound) {
        let survivors: Vec<String> = secure
            .stages()
            .survivor_names()
            .into_iter()
            .map(String::from)
            .collect();
        let summed = secure
            .stages()
            .finish()
            .map_err(|e| format!("the secure sum failed: {e}"))
            .and_then(|(sum, count)| CanaryCounts::decode(&sum, count));
        let outcome = summed.and_then(|counts| self.release_counts(counts, survivors));
        let detail = match &outcome {
            Ok(s) => format!(
                "the sum of {} of {} canaries' comparisons{}",
                s.sites.len(),
                secure.stages().members().len(),
                if s.epsilon.is_some() { ", noised" } else { "" }
            ),
            Err(why) => why.clone(),
        };
        self.audit(
            "-",
            "rollout",
            if outcome.is_ok() {
                "secure comparison summed"
            } else {
                "secure comparison failed"
            },
            &detail,
        );
        if let Some(summing) = self.rollout.as_mut().and_then(|r| r.summed.as_mut()) {
            summing.outcome = Some(outcome);
        }
        self.version += 1;
    }

    /// `counts` as released: exact, or with `"dp"` noised and charged.
    fn release_counts(
        &mut self,
        counts: CanaryCounts,
        sites: Vec<String>,
    ) -> Result<Summed, String> {
        let exact = |v: u64| v as f64;
        let Some(std) = self.privacy.metrics().map(|dp| dp.unit_std()) else {
            return Ok(Summed {
                sites,
                rows: exact(counts.rows),
                production_right: exact(counts.production_right),
                candidate_only: exact(counts.candidate_only),
                production_only: exact(counts.production_only),
                sigma: 0.0,
                epsilon: None,
            });
        };
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| format!("cannot draw a secret noise key: {e}"))?;
        let epsilon = self
            .privacy
            .release_metrics()
            .map_err(|e| format!("the comparison is not released: {e}"))?;
        let mut noise = tessera_privacy::GaussianNoise::new(key, 0);
        let mut noised = |v: u64| v as f64 + std * noise.standard_normal();
        Ok(Summed {
            rows: noised(counts.rows),
            production_right: noised(counts.production_right),
            candidate_only: noised(counts.candidate_only),
            production_only: noised(counts.production_only),
            sites,
            sigma: std,
            epsilon,
        })
    }

    /// `site` refuses the comparison's secure round (its checks of the
    /// round failed): not waited for. True when that round was open and had
    /// `site`.
    pub(in crate::state) fn rollout_secure_refused(
        &mut self,
        site: &str,
        round: u32,
        reason: &str,
    ) -> bool {
        tracing::warn!(%site, round, %reason, "a canary refused the secure comparison");
        self.audit(site, "rollout", "secure comparison refused", reason);
        let refused = self
            .secure
            .as_mut()
            .is_some_and(|s| s.round == round && s.stages_mut().refuse(site));
        self.touch(site);
        self.version += 1;
        refused
    }
}

/// Promote or not, the decision in words, and its evidence, from the sum.
fn decide_summed(
    rollout: &RolloutState,
    summed: &Summed,
) -> Result<(bool, String, String), String> {
    let spec = &rollout.spec;
    let comparison = if summed.sigma > 0.0 {
        paired_noised(
            summed.rows,
            summed.production_right,
            summed.candidate_only,
            summed.production_only,
            summed.sigma,
        )
    } else {
        paired(
            summed.rows as u64,
            summed.production_right as u64,
            summed.candidate_only as u64,
            summed.production_only as u64,
        )
    }?;
    let promote = super::promotes(&comparison, spec.max_drop);
    let decision = if promote { "promoted" } else { "rolled back" };
    let how = match summed.epsilon {
        Some(epsilon) => format!(
            "the secure sum, noised (standard deviation {:.1}, metrics epsilon {epsilon:.4}), of",
            summed.sigma
        ),
        None => "the secure sum of".to_string(),
    };
    let interval = if summed.sigma > 0.0 {
        "paired, widened for the noise,"
    } else {
        "paired"
    };
    let text = super::describe(
        spec,
        &comparison,
        promote,
        &format!(
            "{how} {} canary site(s)' {:.0}",
            summed.sites.len(),
            summed.rows
        ),
        interval,
    );
    let evidence = json!({
        "decision": decision,
        "candidate_version": spec.candidate.version,
        "production_version": spec.production.version,
        "canary_sites": summed.sites,
        "secure_aggregation": true,
        "rows": summed.rows,
        "candidate_accuracy": comparison.accuracy_b,
        "production_accuracy": comparison.accuracy_a,
        "difference": comparison.difference,
        "ci95": [comparison.ci95.0, comparison.ci95.1],
        "interval": if summed.sigma > 0.0 { "paired, noised" } else { "paired" },
        "candidate_only_right": summed.candidate_only,
        "production_only_right": summed.production_only,
        "noise_std": summed.sigma,
        "metrics_epsilon": summed.epsilon,
        "max_drop": spec.max_drop,
    });
    Ok((promote, text, evidence.to_string()))
}
