//! The evaluation of each round's model: every site's evaluation in the
//! clear (`site_metrics = "clear"`), or only their masked sum
//! (`"aggregate-only"`, `"dp"`: a secure round of its own), checked at the
//! trust boundary, stored, then the round's record completed.

use prost::Message;
use tessera_core::Timestamp;
use tessera_engine::report::RoundRecord;
use tessera_learn::Evaluation;
use tessera_proto::{convert, pb};

use super::{Federation, Phase, Refusal};
use crate::CoordinatorError;

impl Federation {
    /// Records an evaluation of the model of `round`.
    pub fn submit_evaluation(
        &mut self,
        site: &str,
        report: &pb::EvaluationReport,
    ) -> Result<(), Refusal> {
        self.require_joined(site)?;
        self.touch(site);
        if self.aggregate_only() {
            let reason = "this run keeps site metrics aggregate-only: evaluations travel masked \
                          through secure aggregation, never in the clear";
            self.audit(site, "evaluation", "refused", reason);
            return Err(Refusal::Denied(reason.into()));
        }
        let evaluation = convert::evaluation_from_pb(report)
            .map_err(|e| e.to_string())
            .and_then(|e| self.check_evaluation(site, &e).map(|()| e))
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
            Phase::Evaluating { round, .. } => Some(*round),
            _ => self.records.last().map(|r| r.round),
        };
        if current.is_some_and(|c| report.round < c)
            || (current == Some(report.round) && !matches!(self.phase, Phase::Evaluating { .. }))
        {
            tracing::debug!(%site, round = report.round, "late evaluation ignored");
            return Ok(());
        }
        let Phase::Evaluating {
            round,
            targets,
            received,
            ..
        } = &mut self.phase
        else {
            return Err(Refusal::Invalid(format!(
                "no evaluation is open (got round {})",
                report.round
            )));
        };
        if *round != report.round || !targets.contains(site) {
            return Err(Refusal::Invalid(format!(
                "evaluation for round {} from '{site}', evaluating round {round}",
                report.round
            )));
        }
        if let Err(e) = self
            .store
            .put_evaluation(&run, *round, site, &report.encode_to_vec())
        {
            return Err(Refusal::Invalid(format!(
                "cannot store the evaluation: {e}"
            )));
        }
        received.insert(site.to_string(), evaluation);
        self.version += 1;
        self.advance();
        Ok(())
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
        closed.traffic = std::mem::take(&mut self.links.traffic);
        closed.bytes_up = closed.traffic.values().map(|t| t.up).sum();
        closed.bytes_down = closed.traffic.values().map(|t| t.down).sum();
        let record_json =
            serde_json::to_string(&*closed).map_err(|e| CoordinatorError::Config(e.to_string()))?;
        self.store
            .finish_round_evaluation(&self.run.id, round, &record_json)?;
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
        let seconds = self
            .round_started
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        let metrics_epsilon = self.metrics_released.take();
        let mut closed = match &view {
            Some(view) => RoundRecord {
                accuracy: view.pooled.accuracy(),
                loss: view.pooled.mean_loss(),
                mean_site_accuracy: view.mean_site_accuracy,
                n_test: view.pooled.n_examples,
                auc: view.pooled.auc,
                seconds,
                metrics_epsilon,
                ..(**record).clone()
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
                (Phase::Evaluating { targets, .. }, Some(secure)) if secure.evaluation => targets
                    .iter()
                    .filter(|s| self.stale(s, now))
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            for site in &silent {
                self.secure_withdraw(site);
            }
            self.advance_secure(now);
            let Phase::Evaluating { round, .. } = &self.phase else {
                return Ok(());
            };
            return self.step_secure_evaluation(*round);
        }
        let stale: Vec<String> = match &self.phase {
            Phase::Evaluating {
                targets,
                received,
                until,
                ..
            } => targets
                .iter()
                .filter(|s| !received.contains_key(*s) && (self.stale(s, now) || now >= *until))
                .cloned()
                .collect(),
            _ => return Ok(()),
        };
        for site in &stale {
            self.audit(site, "evaluation", "missing", "no evaluation in time");
        }
        let Phase::Evaluating {
            round,
            targets,
            received,
            record,
            ..
        } = &mut self.phase
        else {
            return Ok(());
        };
        for site in &stale {
            targets.remove(site);
        }
        if !targets.iter().all(|s| received.contains_key(s)) {
            if !stale.is_empty() {
                self.version += 1;
            }
            return Ok(());
        }
        let round = *round;
        let names: Vec<String> = received.keys().cloned().collect();
        let evaluations: Vec<Evaluation> = received.values().cloned().collect();
        let mut closed = round_record_with(
            record,
            &evaluations,
            self.round_started
                .map_or(0.0, |t| t.elapsed().as_secs_f64()),
        );
        self.store_evaluated(round, &mut closed)?;
        if let Some(relay) = self.training.relay_mut() {
            relay.evaluated(round, Evaluation::pool(&evaluations));
            // The aggregator's own model, evaluated once the parent's run is over.
            if relay.is_regional_evaluation(round) {
                relay.regional = Some(closed);
                return self.finish_relay_run();
            }
        }
        self.records.push(closed);
        self.last_evaluations = names.into_iter().zip(evaluations).collect();
        self.phase = Phase::Training;
        self.version += 1;
        Ok(())
    }
}

/// A round's record completed with the evaluations of its model.
fn round_record_with(
    record: &RoundRecord,
    evaluations: &[Evaluation],
    seconds: f64,
) -> RoundRecord {
    let pooled = Evaluation::pool(evaluations);
    RoundRecord {
        accuracy: pooled.accuracy(),
        loss: pooled.mean_loss(),
        mean_site_accuracy: tessera_engine::report::mean_site_accuracy(evaluations),
        n_test: pooled.n_examples,
        auc: pooled.auc,
        seconds,
        ..record.clone()
    }
}
