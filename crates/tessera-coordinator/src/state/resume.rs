//! Resuming a run from its database after a restart: the agreement, the
//! rounds closed, the round in progress with its accepted updates.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use tessera_aggregate::Attendance;
use tessera_core::{ParticipantId, Timestamp};
use tessera_engine::PlanBuild;
use tessera_engine::report::RoundRecord;
use tessera_engine::{EngineConfig, RoundEngine};
use tessera_learn::Evaluation;
use tessera_proto::{convert, pb};

use super::{EvaluationRound, Federation, Phase, trust};
use crate::CoordinatorError;
use crate::store::{AgreementStep, EvaluationRow, RoundRow, StoreError};

impl Federation {
    /// Rebuilds the state a previous coordinator left in the database.
    pub(super) fn resume(&mut self) -> Result<(), CoordinatorError> {
        let run = self.run.id.clone();
        if self.store.latest_model_version(&run)?.is_none() {
            // A rollout or a dry run builds no model; neither is resumed
            // as training (the run's log says which it was).
            let opened = self.store.audit_log(&run)?.into_iter().find(|r| {
                r.site == "-"
                    && r.outcome == "opened"
                    && ["rollout", "dry-run"].contains(&&*r.action)
            });
            if let Some(row) = opened {
                return Err(CoordinatorError::Config(format!(
                    "run {run} in this database is an interrupted {} ({}): it is not resumed as \
                     a training run; end it with `tessera abort` on this database (the \
                     registry shows whether a rollout decided), then start again",
                    if row.action == "rollout" {
                        "rollout"
                    } else {
                        "dry run"
                    },
                    row.detail
                )));
            }
        }
        self.roster.set_joined(self.store.participants(&run)?);
        for (site, bytes) in self.store.offers(&run, AgreementStep::Levels)? {
            let offer = pb::LevelsOffer::decode(bytes.as_slice())
                .map_err(|e| StoreError::Damaged(e.to_string()))?;
            // Stored offers were checked when they came.
            if let Ok(declared) = trust::Declared::of(&offer) {
                self.declared.insert(site, declared);
            }
        }
        self.resume_external_offers()?;
        if let Some(bytes) = self.store.agreement(&run, AgreementStep::Kinds)? {
            let kinds = pb::ColumnKinds::decode(bytes.as_slice())
                .map_err(|e| StoreError::Damaged(e.to_string()))?;
            self.kinds = Some(convert::kinds_from_pb(kinds)?);
        }
        let Some(bytes) = self.store.agreement(&run, AgreementStep::Levels)? else {
            return Ok(());
        };
        let agreement = pb::Agreement::decode(bytes.as_slice())
            .map_err(|e| StoreError::Damaged(e.to_string()))?;
        self.task_classes = agreement
            .task_classes
            .iter()
            .map(|t| t.classes.clone())
            .collect();
        let specs = self
            .plan
            .multitask
            .as_ref()
            .map_or(&[][..], |m| &m.tasks[..]);
        if self.task_classes.len() != specs.len() {
            return Err(StoreError::Damaged(format!(
                "the stored agreement holds {} tasks' classes, and the plan has {} tasks",
                self.task_classes.len(),
                specs.len()
            ))
            .into());
        }
        for (task, classes) in specs.iter().zip(&self.task_classes) {
            task.check_classes(classes).map_err(StoreError::Damaged)?;
        }
        self.agreement = Some(if self.plan.model.kind.is_external() {
            // An external model's data agreement is empty (no columns, no classes).
            tessera_data::Agreement {
                columns: agreement.columns,
                encodings: Vec::new(),
                classes: agreement.classes,
            }
        } else {
            convert::agreement_from_pb(agreement)?
        });
        if self.is_aggregator() {
            return self.resume_relay(&run);
        }
        if self.plan.federation.mode == tessera_engine::Mode::Async {
            return self.resume_async(&run);
        }
        let Some(closed) = self.store.latest_model_version(&run)? else {
            return Err(CoordinatorError::Store(StoreError::Damaged(
                "agreed run without an initial model".into(),
            )));
        };
        // Replay every completed round's aggregate: it rebuilds the strategy's
        // state (momentum, moments, control variate) and must reproduce the
        // stored model exactly.
        let mut strategy = self.plan.strategy()?;
        let mut global = self
            .store
            .model(&run, 0)?
            .ok_or_else(|| StoreError::Damaged("no initial model".into()))?;
        let aggregates: BTreeMap<u32, _> =
            self.store.aggregates(&run, closed)?.into_iter().collect();
        let ids = |names: Vec<String>| names.into_iter().map(ParticipantId::new).collect();
        let attendances: BTreeMap<u32, _> = self
            .store
            .cohorts(&run)?
            .into_iter()
            .map(|row| {
                let attendance = Attendance::replayed(ids(row.cohort), ids(row.counted));
                (row.round, attendance)
            })
            .collect();
        // The model participants hold goes through the same changes.
        let mut downlink = self.new_downlink(Arc::new(global.clone()));
        for round in 1..=closed {
            if let Some(aggregate) = aggregates.get(&round) {
                let attendance = attendances.get(&round).cloned().unwrap_or_default();
                global = RoundEngine::replay(strategy.as_mut(), &global, aggregate, &attendance)?;
            }
            if let Some(down) = downlink.as_mut() {
                down.advance(round, &global)?;
            }
        }
        self.downlink = downlink;
        let stored = self
            .store
            .model(&run, closed)?
            .ok_or_else(|| StoreError::Damaged("missing model".into()))?;
        if stored
            .values()
            .map(f32::to_bits)
            .ne(global.values().map(f32::to_bits))
        {
            return Err(CoordinatorError::Store(StoreError::Damaged(format!(
                "replaying rounds 1..{closed} does not give the stored model"
            ))));
        }
        let mut engine = self.protect(RoundEngine::restore(
            EngineConfig::from_plan(&self.plan),
            strategy,
            global,
            closed,
        ))?;
        if self.plan.privacy.is_on() {
            for row in self.store.privacy_ledger(&run)? {
                engine
                    .restore_privacy(row.entry, row.next_clip_norm)
                    .map_err(CoordinatorError::from)?;
            }
        }
        for site in self.roster.joined() {
            engine.register(ParticipantId::new(site.as_str()));
        }
        let now = self.now();
        let until = now.plus(self.evaluation_wait());
        self.resume_rounds(&run, until)?;
        if self.aggregate_only()
            && let Phase::Evaluating { evaluation, .. } = &self.phase
        {
            // The secure sum of that evaluation died with the process (its
            // protocol state is not stored): the round closes without
            // evaluation figures rather than asking for clear ones.
            let round = evaluation.round();
            self.audit(
                "-",
                "secure-evaluation",
                "failed",
                &format!("round {round}'s evaluation was under way when the coordinator stopped"),
            );
            self.secure_evaluated = Some((round, None));
        }
        let mut reopened_secure = None;
        if matches!(self.phase, Phase::Agreeing) {
            self.phase = Phase::Training;
            if let Some(open) = self.store.open_round_of(&run)? {
                let round = open.round;
                let start = engine.reopen_round(round, open.cohort, open.opened)?;
                reopened_secure = Some((round, start.cohort));
                for stored in self.store.updates(&run, round)? {
                    let (site, update, at) = (stored.site, stored.update, stored.at);
                    if let Err(rejection) = engine.submit(at, &site, round, &update) {
                        tracing::warn!(%site, round, %rejection, "a stored update no longer counts");
                    }
                }
                self.round_started = Some(now);
            }
        }
        self.roster.seen_all(now);
        self.training.set_rounds(Some(engine));
        if let Some((round, cohort)) = reopened_secure {
            // The protocol's state is not stored: the cohort starts it again.
            self.open_secure_round(round, &cohort, now);
        }
        if self.training.rounds().is_some_and(RoundEngine::is_finished)
            && matches!(self.phase, Phase::Training)
        {
            self.phase = Phase::Finished;
        }
        tracing::info!(run = %run, rounds_closed = closed, "resumed");
        Ok(())
    }

    /// Rebuilds who was in which round and the rounds' records; a round
    /// whose evaluation had not finished is evaluated again until `until`.
    pub(super) fn resume_rounds(
        &mut self,
        run: &str,
        until: Timestamp,
    ) -> Result<(), CoordinatorError> {
        for row in self.store.cohorts(run)? {
            for site in row.cohort {
                let was_counted = row.counted.contains(&site);
                self.roster.record_round(&site, row.round, was_counted);
            }
        }
        for RoundRow {
            round,
            record,
            evaluated,
            ..
        } in self.store.rounds(run)?
        {
            let record: RoundRecord = serde_json::from_str(&record)
                .map_err(|e| StoreError::Damaged(format!("round {round}: {e}")))?;
            if evaluated {
                self.records.push(record);
            } else {
                let received = self.stored_evaluations(run, round)?;
                self.phase = Phase::Evaluating {
                    evaluation: EvaluationRound::resumed(
                        round,
                        self.roster.joined().clone(),
                        received,
                        until,
                    ),
                    record: Box::new(record),
                };
            }
        }
        Ok(())
    }

    /// The evaluations of `round`'s model stored so far, by site.
    pub(super) fn stored_evaluations(
        &self,
        run: &str,
        round: u32,
    ) -> Result<BTreeMap<String, Evaluation>, StoreError> {
        Ok(self
            .store
            .evaluations(run, round)?
            .into_iter()
            .filter_map(|EvaluationRow { site, report }| {
                let report = pb::EvaluationReport::decode(report.as_slice()).ok()?;
                Some((site, convert::evaluation_from_pb(&report).ok()?))
            })
            .collect())
    }
}
