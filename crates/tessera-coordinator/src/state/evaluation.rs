//! The evaluation of each round's model: every site's evaluation in the
//! clear (`site_metrics = "clear"`), or only their masked sum
//! (`"aggregate-only"`, `"dp"`: a secure round of its own), checked at the
//! trust boundary, stored, then the round's record completed.

use std::collections::BTreeMap;

use prost::Message;
use tessera_core::Timestamp;
use tessera_engine::report::RoundRecord;
use tessera_learn::Evaluation;
use tessera_orchestrator::completed;
use tessera_proto::{convert, pb};

use super::{Federation, Phase, Refusal, unavailable};
use crate::CoordinatorError;
use crate::store::{EvaluationRow, StoreError};

impl Federation {
    /// Records an evaluation of the model of `round`.
    pub fn submit_evaluation(
        &mut self,
        site: &str,
        report: &pb::EvaluationReport,
    ) -> Result<(), Refusal> {
        self.require_joined(site)?;
        self.touch(site);
        if let Some(result) = self.rollout_evaluation(site, report) {
            return result;
        }
        if self.aggregate_only() {
            let reason = "this run keeps site metrics aggregate-only: evaluations travel masked \
                          through secure aggregation, never in the clear";
            self.audit(site, "evaluation", "refused", reason);
            return Err(Refusal::Denied(reason.into()));
        }
        let evaluation = convert::evaluation_from_pb(report)
            .map_err(|e| e.to_string())
            .and_then(|e| self.check_evaluation(site, &e).map(|()| e))
            .and_then(|e| self.check_site_evaluations(site, report).map(|()| e))
            .map_err(|reason| {
                self.refuse_report(site, "evaluation", &reason);
                Refusal::Invalid(reason)
            })?;
        let run = self.run.id.clone();
        if self.training.buffered().is_some() && matches!(self.phase, Phase::Training) {
            return self.async_evaluation(site, report, evaluation);
        }
        // An evaluation of a model the federation has moved past comes too late
        // to count; it is not an error.
        let current = match &self.phase {
            Phase::Evaluating { evaluation, .. } => Some(evaluation.round()),
            _ => self.records.last().map(|r| r.round),
        };
        if current.is_some_and(|c| report.round < c)
            || (current == Some(report.round) && !matches!(self.phase, Phase::Evaluating { .. }))
        {
            tracing::debug!(%site, round = report.round, "late evaluation ignored");
            return Ok(());
        }
        let Phase::Evaluating {
            evaluation: open, ..
        } = &mut self.phase
        else {
            return Err(Refusal::Invalid(format!(
                "no evaluation is open (got round {})",
                report.round
            )));
        };
        open.check(site, report.round)
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        if let Err(e) = self
            .store
            .put_evaluation(&run, open.round(), site, &report.encode_to_vec())
        {
            return Err(unavailable(format!("cannot store the evaluation: {e}")));
        }
        open.receive(site, report.round, evaluation)
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        self.version += 1;
        self.advance();
        Ok(())
    }

    /// The sites' evaluations an aggregator's `report` carries (protocol
    /// 1.9): well formed, adding up to its own, sent by a member that is an
    /// aggregator of the plan's tree, and naming only sites below it there.
    fn check_site_evaluations(
        &self,
        member: &str,
        report: &pb::EvaluationReport,
    ) -> Result<(), String> {
        if report.sites.is_empty() {
            return Ok(());
        }
        let Some((tree, _)) = &self.tree else {
            return Err(
                "it names sites' evaluations, which only an aggregator of a \
                        hierarchical run sends"
                    .into(),
            );
        };
        let Some(node) = tree.find(member) else {
            return Err(format!(
                "it names sites' evaluations, which only an aggregator sends; \
                 '{member}' is a site of the plan's topology"
            ));
        };
        let sites = convert::site_evaluations_from_pb(report).map_err(|e| e.to_string())?;
        let below = tree.sites_below(node);
        for (name, _) in &sites {
            if !below.iter().any(|&s| tree.sites[s] == *name) {
                return Err(format!(
                    "it names '{name}', which is not below '{member}' in the plan's topology"
                ));
            }
        }
        Ok(())
    }

    /// Each member's stored evaluation of round `round` as the sites' it
    /// stands for (an aggregator's, protocol 1.9), by member.
    fn stored_site_evaluations(
        &self,
        round: u32,
    ) -> Result<BTreeMap<String, Vec<(String, Evaluation)>>, StoreError> {
        let mut out = BTreeMap::new();
        for EvaluationRow { site, report } in self.store.evaluations(&self.run.id, round)? {
            let Ok(report) = pb::EvaluationReport::decode(report.as_slice()) else {
                continue;
            };
            let sites = match convert::site_evaluations_from_pb(&report) {
                Ok(sites) if !sites.is_empty() => sites,
                _ => match convert::evaluation_from_pb(&report) {
                    Ok(e) => vec![(site.clone(), e)],
                    Err(_) => continue,
                },
            };
            out.insert(site, sites);
        }
        Ok(out)
    }

    /// The evaluations of `members` (by name, in order) of round `round`
    /// by site: an aggregator's replaced by the evaluations of the sites
    /// below it it sent (protocol 1.9), so that a hierarchy's root reports
    /// every site, as simulation does: sorted by site, as simulation pools
    /// them (the pooled loss is a sum of floats, and a tree's sites in
    /// member order are not in that order).
    pub(super) fn by_site(
        &self,
        round: u32,
        members: Vec<String>,
        evaluations: Vec<Evaluation>,
    ) -> (Vec<String>, Vec<Evaluation>) {
        let mut stored = match self.stored_site_evaluations(round) {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(round, error = %e, "cannot read the sites' evaluations; reporting per member");
                BTreeMap::new()
            }
        };
        let mut names = Vec::with_capacity(members.len());
        let mut out = Vec::with_capacity(members.len());
        for (member, evaluation) in members.into_iter().zip(evaluations) {
            match stored.remove(&member) {
                Some(sites)
                    if sites.len() > 1 || sites.first().is_some_and(|(s, _)| *s != member) =>
                {
                    for (site, e) in sites {
                        names.push(site);
                        out.push(e);
                    }
                }
                _ => {
                    names.push(member);
                    out.push(evaluation);
                }
            }
        }
        let mut sorted: Vec<(String, Evaluation)> = names.into_iter().zip(out).collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        sorted.into_iter().unzip()
    }

    /// Whether only sums of the sites' evaluations may reach the coordinator.
    pub(super) fn aggregate_only(&self) -> bool {
        self.plan.privacy.site_metrics.sums_only()
    }

    /// Completes an evaluated round's record with everything sent since the
    /// previous round was evaluated, and stores it.
    pub(super) fn store_evaluated(
        &mut self,
        round: u32,
        closed: &mut RoundRecord,
    ) -> Result<(), CoordinatorError> {
        closed.traffic = self.traffic.round.take();
        closed.bytes_up = closed.traffic.values().map(|t| t.up).sum();
        closed.bytes_down = closed.traffic.values().map(|t| t.down).sum();
        let record_json =
            serde_json::to_string(&*closed).map_err(|e| CoordinatorError::Config(e.to_string()))?;
        self.store
            .finish_round_evaluation(&self.run.id, round, &record_json)?;
        crate::telemetry::round_evaluated(closed.accuracy, closed.loss);
        tracing::info!(
            round,
            accuracy = closed.accuracy,
            mean_site_accuracy = closed.mean_site_accuracy,
            "round evaluated"
        );
        Ok(())
    }

    /// `aggregate-only`: closes the evaluation of `round` once its secure
    /// sum is in (or failed).
    pub(super) fn step_secure_evaluation(&mut self, round: u32) -> Result<(), CoordinatorError> {
        let view = match &self.secure_evaluated {
            Some((r, view)) if *r == round => view.clone(),
            _ => return Ok(()),
        };
        let Phase::Evaluating { record, .. } = &self.phase else {
            return Ok(());
        };
        let seconds = self.round_seconds();
        let metrics_epsilon = self.privacy.take_metrics_released();
        let mut closed = match &view {
            Some(view) => RoundRecord {
                metrics_epsilon,
                ..completed(record, view, seconds)
            },
            None => RoundRecord {
                seconds,
                ..(**record).clone()
            },
        };
        self.store_evaluated(round, &mut closed)?;
        self.records.push(closed);
        self.last_evaluations.clear();
        if view.is_some() {
            self.last_view = view;
        }
        self.phase = Phase::Training;
        self.version += 1;
        Ok(())
    }

    pub(super) fn step_evaluating(&mut self, now: Timestamp) -> Result<(), CoordinatorError> {
        if !self.relay_may_evaluate() {
            return Ok(());
        }
        if self.aggregate_only() {
            // Stages close on answers, on the silence of those that went
            // quiet, or after the liveness period.
            let silent: Vec<String> = match (&self.phase, &self.secure) {
                (Phase::Evaluating { evaluation, .. }, Some(secure)) if secure.evaluation => {
                    evaluation
                        .targets()
                        .iter()
                        .filter(|s| self.stale(s, now))
                        .cloned()
                        .collect()
                }
                _ => Vec::new(),
            };
            for site in &silent {
                self.secure_withdraw(site);
            }
            self.advance_secure(now);
            let Phase::Evaluating { evaluation, .. } = &self.phase else {
                return Ok(());
            };
            return self.step_secure_evaluation(evaluation.round());
        }
        let Phase::Evaluating { evaluation, .. } = &mut self.phase else {
            return Ok(());
        };
        let roster = &self.roster;
        let stale = evaluation.give_up(now, |s| roster.is_stale(s, now));
        for site in &stale {
            self.audit(site, "evaluation", "missing", "no evaluation in time");
        }
        let Phase::Evaluating { evaluation, .. } = &self.phase else {
            return Ok(());
        };
        if !evaluation.is_complete() {
            if !stale.is_empty() {
                self.version += 1;
            }
            return Ok(());
        }
        let round = evaluation.round();
        let (members, evaluations) = evaluation.results();
        let (names, evaluations) = self.by_site(round, members, evaluations);
        let Phase::Evaluating { record, .. } = &self.phase else {
            return Ok(());
        };
        let sites: Vec<&str> = names.iter().map(String::as_str).collect();
        let view = tessera_engine::report::EvaluationView::clear(
            self.training
                .rounds()
                .map_or(&tessera_engine::report::POOLED, |e| e.strategy()),
            &sites,
            &evaluations,
        );
        let mut closed = completed(record, &view, self.round_seconds());
        self.store_evaluated(round, &mut closed)?;
        if let Some(relay) = self.training.relay_mut() {
            relay.evaluated(
                round,
                names
                    .iter()
                    .cloned()
                    .zip(evaluations.iter().cloned())
                    .collect(),
            );
            // The aggregator's own model, evaluated once the parent's run is over.
            if relay.is_regional_evaluation(round) {
                relay.regional = Some(closed);
                return self.finish_relay_run();
            }
            // The parent's regional model: for the parent's report, not a
            // round of this aggregator's.
            if relay.is_parents_regional_evaluation(round) {
                self.phase = Phase::Training;
                self.version += 1;
                return Ok(());
            }
        }
        self.records.push(closed);
        self.last_evaluations = names.into_iter().zip(evaluations).collect();
        self.phase = Phase::Training;
        self.version += 1;
        Ok(())
    }
}
