//! Asynchronous runs (FedBuff) in deployment: participants train whenever
//! they are free on the newest model; every K accepted updates the buffered
//! engine takes a step, committed with its aggregate before the update that
//! completed it is acknowledged. Each step's model is evaluated by the sites
//! as they next ask for work; the last one by everyone, as in sync runs.

use prost::Message;
use tessera_core::{ParticipantId, Timestamp, Update};
use tessera_engine::report::{EvaluationView, RoundRecord};
use tessera_engine::{BufferedEngine, Step};
use tessera_learn::Evaluation;
use tessera_orchestrator::completed;
use tessera_proto::pb;

use super::{
    EvaluationRound, Federation, ModelPart, Phase, Refusal, TaskView, Training, unavailable,
};
use crate::CoordinatorError;
use crate::store::{RoundClose, StoreError};
use crate::telemetry::names;

impl Federation {
    /// Evaluate the newest step if this site has not yet; else train.
    pub(super) fn async_task(&mut self, site: &str) -> TaskView {
        let Some(buffered) = self.training.buffered() else {
            return TaskView::Wait;
        };
        let (global, version) = buffered.current();
        let header = |kind: pb::TaskKind| pb::TaskHeader {
            round: version,
            kind: kind as i32,
            layout: tessera_proto::layout_of(&global),
            ..Default::default()
        };
        if self.steps.asks(site, version) {
            return TaskView::Evaluate {
                header: header(pb::TaskKind::Evaluate),
                global,
                model: ModelPart::Whole,
            };
        }
        if buffered.is_finished() || self.stop_requested.is_some() {
            return TaskView::Wait;
        }
        let instructions = buffered.instructions_for(&ParticipantId::new(site));
        let mut header = header(pb::TaskKind::Fit);
        tessera_proto::convert::instructions_to_pb(&instructions, &mut header);
        TaskView::Fit {
            header,
            global,
            tensors: instructions.tensors().cloned(),
            model: ModelPart::Whole,
        }
    }

    /// An update trained from model version `base`.
    pub(super) fn async_submit(
        &mut self,
        site: &str,
        base: u32,
        update: &Update,
        now: Timestamp,
    ) -> Result<(), Refusal> {
        let run = self.run.id.clone();
        let Some(buffered) = self.training.buffered_mut() else {
            return Err(Refusal::Invalid("no model yet".into()));
        };
        if buffered.is_finished() {
            return Err(Refusal::Invalid("every step is done".into()));
        }
        if let Some(reason) = &self.stop_requested {
            return Err(Refusal::Invalid(format!(
                "the operator stopped the run after this step: {reason}"
            )));
        }
        let next_step = buffered.current().1 + 1;
        match buffered.submit(&ParticipantId::new(site), base, update) {
            Ok(None) => {
                if let Err(e) = self
                    .store
                    .put_update(&run, next_step, base, site, update, None, now)
                {
                    // Counted by the engine, not held by the database: stop.
                    return Err(self.fail("cannot store an accepted update", e));
                }
                metrics::counter!(names::ACCEPTED).increment(1);
                self.audit(
                    site,
                    "update",
                    "accepted",
                    &format!("step {next_step}, from model {base}"),
                );
                self.version += 1;
                Ok(())
            }
            Ok(Some(step)) => {
                self.commit_step(step, now)?;
                metrics::counter!(names::ACCEPTED).increment(1);
                self.audit(
                    site,
                    "update",
                    "accepted",
                    &format!("step {next_step}, from model {base}; step taken"),
                );
                Ok(())
            }
            Err(rejection) => {
                metrics::counter!(names::REJECTED, "reason" => rejection.label()).increment(1);
                let reason = rejection.to_string();
                self.audit(
                    site,
                    "update",
                    "rejected",
                    &format!("from model {base}: {reason}"),
                );
                self.version += 1;
                Err(Refusal::Invalid(reason))
            }
        }
    }

    /// Commits a step the engine took: its record and aggregate with the
    /// model, before anything is acknowledged; the step's evaluations open,
    /// older ones close. A database that cannot hold it stops the
    /// coordinator (the refusal says why).
    pub(super) fn commit_step(&mut self, step: Step, now: Timestamp) -> Result<(), Refusal> {
        let run = self.run.id.clone();
        let Some((model, _)) = self.training.buffered().map(BufferedEngine::current) else {
            return Err(Refusal::Invalid("no model yet".into()));
        };
        let seconds = self.round_seconds();
        let contributors: Vec<String> = step
            .contributions
            .iter()
            .map(|(p, _)| p.as_str().to_string())
            .collect();
        let record = RoundRecord {
            round: step.version,
            status: "completed".into(),
            accuracy: 0.0,
            loss: 0.0,
            mean_site_accuracy: 0.0,
            n_test: 0,
            auc: None,
            train_loss: step.mean_train_loss,
            accepted: step.contributions.len(),
            stragglers: 0,
            dropped: 0,
            rejected: 0,
            seconds,
            virtual_seconds: seconds,
            virtual_time: now.as_secs_f64(),
            bytes_up: 0,
            bytes_down: 0,
            traffic: Default::default(),
            site_errors: Vec::new(),
            epsilon: None,
            clip_norm: None,
            metrics_epsilon: None,
            contribution: None,
        };

        let record_json = match serde_json::to_string(&record) {
            Ok(json) => json,
            Err(e) => return Err(self.fail("cannot write a step's record", e)),
        };
        let stored = self.store.close_round(
            &run,
            &RoundClose {
                round: step.version,
                aggregate: Some(&step.aggregate),
                model: &model,
                status: "completed",
                record_json: &record_json,
                cohort: &contributors,
                counted: &contributors,
                at: now,
                privacy: None,
            },
        );
        if let Err(e) = stored {
            return Err(self.fail("cannot store a step", e));
        }
        metrics::counter!(names::ROUNDS, "status" => "completed").increment(1);
        metrics::gauge!(names::CURRENT_ROUND).set(f64::from(step.version));
        let staleness: Vec<u32> = step.contributions.iter().map(|(_, s)| *s).collect();
        tracing::info!(step = step.version, ?staleness, "step taken");
        self.round_started = Some(now);
        // Older steps still waiting for evaluations are closed with what came.
        for version in self.steps.older_than(step.version) {
            // The update counted: a refusal now would have the site
            // stop, or send it again to be counted twice.
            if let Err(e) = self.finish_step_evaluation(version) {
                return Err(self.fail("cannot store a step's evaluation", e));
            }
        }
        self.steps.open(step.version, record);
        self.version += 1;
        // The next updates belong to the next step's trace.
        self.follow_trace();
        Ok(())
    }

    /// An evaluation of step `report.round`'s model.
    pub(super) fn async_evaluation(
        &mut self,
        site: &str,
        report: &pb::EvaluationReport,
        evaluation: Evaluation,
    ) -> Result<(), Refusal> {
        let run = self.run.id.clone();
        self.steps.seen(site, report.round);
        if !self.steps.is_open(report.round) {
            // A newer step closed this evaluation while the site worked on it:
            // nothing is wrong, the answer simply comes too late to count.
            tracing::debug!(%site, step = report.round, "late evaluation ignored");
            return Ok(());
        }
        self.store
            .put_evaluation(&run, report.round, site, &report.encode_to_vec())
            .map_err(|e| unavailable(format!("cannot store the evaluation: {e}")))?;
        self.steps.receive(site, report.round, evaluation);
        self.version += 1;
        Ok(())
    }

    fn finish_step_evaluation(&mut self, version: u32) -> Result<(), StoreError> {
        let Some((record, received)) = self.steps.close(version) else {
            return Ok(());
        };
        let evaluations: Vec<Evaluation> = received.values().cloned().collect();
        let sites: Vec<&str> = received.keys().map(String::as_str).collect();
        let view = EvaluationView::clear(
            self.training
                .buffered()
                .map_or(&tessera_engine::report::POOLED as _, |e| e.strategy()),
            &sites,
            &evaluations,
        );
        let status = if evaluations.is_empty() {
            "completed (not evaluated: the next step came first)".to_string()
        } else {
            record.status.clone()
        };
        let seconds = record.seconds;
        let record = RoundRecord {
            status,
            ..completed(&record, &view, seconds)
        };
        let json =
            serde_json::to_string(&record).map_err(|e| StoreError::Damaged(e.to_string()))?;
        self.store
            .finish_round_evaluation(&self.run.id, version, &json)?;
        crate::telemetry::round_evaluated(record.accuracy, record.loss);
        tracing::info!(
            step = version,
            accuracy = record.accuracy,
            evaluations = evaluations.len(),
            "step evaluated"
        );
        self.records.push(record);
        self.last_evaluations = received.into_iter().collect();
        self.version += 1;
        Ok(())
    }

    /// Closes evaluations every live site has answered; after the last step,
    /// hands the final evaluation to the sync machinery, then finishes.
    pub(super) fn async_step(&mut self, now: Timestamp) -> Result<(), CoordinatorError> {
        if self.has_secure_buffers() {
            // A buffer round's stages close at their deadlines; a full
            // buffer of live sites opens the next.
            self.advance_secure(now);
            self.open_buffer(now);
        }
        let live = self.live(now);
        let complete = self.steps.complete(&live);
        let finished = self.stopping_after_round()
            || self
                .training
                .buffered()
                .is_some_and(BufferedEngine::is_finished);
        let last = self.training.buffered().map_or(0, |b| b.current().1);
        for version in complete {
            if !(finished && version == last) {
                self.finish_step_evaluation(version)?;
            }
        }
        if !finished {
            return Ok(());
        }
        if let Some((record, received)) = self.steps.close(last) {
            // The final model: everyone evaluates it, as at the end of a sync round.
            self.phase = Phase::Evaluating {
                evaluation: EvaluationRound::resumed(
                    last,
                    live,
                    received,
                    now.plus(self.evaluation_wait()),
                ),
                record,
            };
            self.version += 1;
            return Ok(());
        }
        let what = format!("{} steps", self.records.len());
        self.end_after_last_round(&what)
    }

    /// Rebuilds an asynchronous run from the database: the steps' aggregates
    /// replayed, the buffered updates resubmitted.
    pub(super) fn resume_async(&mut self, run: &str) -> Result<(), CoordinatorError> {
        let closed = self.store.latest_model_version(run)?.unwrap_or(0);
        let initial = self
            .store
            .model(run, 0)?
            .ok_or_else(|| StoreError::Damaged("no initial model".into()))?;
        let aggregates: Vec<_> = self
            .store
            .aggregates(run, closed)?
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        let mut engine =
            BufferedEngine::resume(&self.plan, initial, self.roster.joined().len(), &aggregates)?;
        let stored = self
            .store
            .model(run, closed)?
            .ok_or_else(|| StoreError::Damaged("missing model".into()))?;
        if stored
            .values()
            .map(f32::to_bits)
            .ne(engine.current().0.values().map(f32::to_bits))
        {
            return Err(CoordinatorError::Store(StoreError::Damaged(format!(
                "replaying steps 1..{closed} does not give the stored model"
            ))));
        }
        for stored in self.store.updates(run, closed + 1)? {
            if let Err(rejection) = engine.submit(&stored.site, stored.base, &stored.update) {
                tracing::warn!(site = %stored.site, %rejection, "a stored update no longer counts");
            }
        }
        for crate::store::RoundRow {
            round,
            record,
            evaluated,
            ..
        } in self.store.rounds(run)?
        {
            let record: RoundRecord = serde_json::from_str(&record)
                .map_err(|e| StoreError::Damaged(format!("step {round}: {e}")))?;
            if evaluated {
                self.records.push(record);
                continue;
            }
            let received = self.stored_evaluations(run, round)?;
            self.steps.resume(round, record, received);
        }
        let now = self.now();
        self.roster.seen_all(now);
        self.training = Training::Async(Some(Box::new(engine)));
        self.phase = Phase::Training;
        self.restore_buffer_rounds(run)?;
        tracing::info!(run = %run, steps = closed, "resumed");
        Ok(())
    }
}
