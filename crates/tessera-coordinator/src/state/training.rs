//! Training rounds: what each site is asked to do, its update checked and
//! recorded (with its local-DP release), and the time-driven steps that open
//! and close synchronous rounds.

use std::sync::Arc;

use tessera_core::{ParameterSet, ParticipantId, Timestamp, Update};
use tessera_engine::report::round_record;
use tessera_engine::{RoundEngine, RoundStatus};
use tessera_orchestrator::Effect;
use tessera_orchestrator::privacy::{LocalReport, PrivacyBook, PrivacyEffect};
use tessera_proto::pb;

use super::attribution::UpdateExtras;
use super::{EvaluationRound, Federation, ModelPart, Phase, Refusal, TaskView, Training};
use crate::CoordinatorError;
use crate::store::{RoundClose, RunStore};
use crate::telemetry::names;

impl Federation {
    pub(super) fn previous(&self, site: &str) -> (u32, bool) {
        self.roster.previous(site)
    }

    /// What `site` should do now; `held` is the round whose model it holds.
    pub fn task_for(&mut self, site: &str, held: Option<u32>) -> Result<TaskView, Refusal> {
        self.require_joined(site)?;
        self.touch(site);
        if let Some(view) = self.rollout_task(site, held) {
            return Ok(view);
        }
        let (previous_round, previous_update_counted) = self.previous(site);
        if self.training.buffered().is_some() && matches!(self.phase, Phase::Training) {
            return Ok(self.async_task(site));
        }
        match &self.phase {
            Phase::Finished => Ok(self.analytics_task(site)),
            Phase::Agreeing => Ok(TaskView::Wait),
            Phase::Training => {
                if self.training.rounds().is_none() {
                    return Ok(TaskView::Wait);
                }
                let id = ParticipantId::new(site);
                // A site back in time for a round that cannot meet its
                // quorum without it is taken back (not under secure
                // aggregation, whose stages went on without it).
                let now = self.now();
                if !self.plan.secure_aggregation.enabled
                    && let Some(engine) = self.training.rounds_mut()
                    && engine.readmit(&id, now)
                {
                    let round = engine.open_round().unwrap_or_default();
                    tracing::info!(%site, round, "taken back into the round");
                    self.audit(site, "round", "rejoined", &format!("round {round}"));
                    self.version += 1;
                }
                let Some(engine) = self.training.rounds() else {
                    return Ok(TaskView::Wait);
                };
                let Some(task) = engine.task_for(&id).filter(|_| engine.is_pending(&id)) else {
                    return Ok(TaskView::Wait);
                };
                let now = self.now();
                let codec = self.links.assign(
                    &self.plan.compression_for(site),
                    site,
                    task.round,
                    task.global.n_values(),
                    now,
                );
                let mut header = pb::TaskHeader {
                    round: task.round,
                    kind: pb::TaskKind::Fit as i32,
                    layout: tessera_proto::layout_of(&task.global),
                    deadline_micros: task.deadline.map_or(0, |d| d.0),
                    previous_update_counted,
                    previous_round,
                    upload_codec: if codec.is_identity() {
                        String::new()
                    } else {
                        codec.to_string()
                    },
                    ..Default::default()
                };
                tessera_proto::convert::instructions_to_pb(&task.instructions, &mut header);
                let (global, model) = self.model_for(&mut header, task.global, held);
                Ok(TaskView::Fit {
                    header,
                    global,
                    tensors: task.instructions.tensors().cloned(),
                    model,
                })
            }
            Phase::Evaluating { evaluation, .. } => {
                let round = &evaluation.round();
                if !evaluation.awaits(site) {
                    return Ok(TaskView::Wait);
                }
                // Aggregate-only: a site evaluates once, then waits for the
                // secure sum of everyone's evaluations to close.
                let secure_round = *round | tessera_secagg::EVALUATION_ROUND;
                if self.aggregate_only()
                    && !self.secure.as_ref().is_some_and(|s| {
                        s.round == secure_round
                            && s.is_evaluation()
                            && !s.has_joined(site)
                            && !s.has_refused(site)
                    })
                {
                    return Ok(TaskView::Wait);
                }
                let Some(global) = self.current_global() else {
                    return Ok(TaskView::Wait);
                };
                let mut header = pb::TaskHeader {
                    round: *round,
                    kind: pb::TaskKind::Evaluate as i32,
                    layout: tessera_proto::layout_of(&global),
                    deadline_micros: 0,
                    previous_update_counted,
                    previous_round,
                    regional_model: self
                        .training
                        .relay()
                        .is_some_and(|r| r.evaluates_regional(*round)),
                    ..Default::default()
                };
                let (global, model) = self.model_for(&mut header, global, held);
                Ok(TaskView::Evaluate {
                    header,
                    global,
                    model,
                })
            }
        }
    }

    /// With a download codec: the model participants hold instead of
    /// `global`, and how it reaches a participant holding round `held`'s.
    pub(super) fn model_for(
        &self,
        header: &mut pb::TaskHeader,
        global: Arc<ParameterSet>,
        held: Option<u32>,
    ) -> (Arc<ParameterSet>, ModelPart) {
        let Some(down) = &self.downlink else {
            return (global, ModelPart::Whole);
        };
        header.model_round = down.round();
        header.model_codec = down.codec().to_string();
        let (delivery, part) = match (held, down.change()) {
            (Some(h), _) if h == down.round() => (pb::ModelDelivery::Held, ModelPart::Held),
            (Some(h), Some(change)) if h + 1 == down.round() => (
                pb::ModelDelivery::Change,
                ModelPart::Change(change.to_vec()),
            ),
            _ => (pb::ModelDelivery::Full, ModelPart::Whole),
        };
        header.model_delivery = delivery as i32;
        (Arc::clone(down.held()), part)
    }

    /// The layout updates must have, and whether they carry the strategy's
    /// auxiliary sum.
    pub fn update_layout(&self) -> Option<(Arc<ParameterSet>, bool)> {
        match &self.training {
            Training::Async(buffered) => Some((buffered.as_ref()?.current().0, false)),
            Training::Sync(_) | Training::Relay(_) => {
                let engine = self.training.rounds()?;
                Some((Arc::clone(engine.global()), engine.aux_sum().is_some()))
            }
        }
    }

    /// Records an update. Accepted updates are durable before this returns.
    pub fn submit_update(
        &mut self,
        site: &str,
        round: u32,
        update: &Update,
    ) -> Result<(), Refusal> {
        self.submit_update_with(site, round, update, UpdateExtras::default())
    }

    /// Records an update with what it brought for attribution
    /// (`[contribution]`: every update has a test gradient, else none).
    pub fn submit_update_with(
        &mut self,
        site: &str,
        round: u32,
        update: &Update,
        extras: UpdateExtras,
    ) -> Result<(), Refusal> {
        let UpdateExtras { gradient, quality } = &extras;
        self.require_joined(site)?;
        self.touch(site);
        if self.plan.secure_aggregation.enabled {
            // It would take the site off the round's pending list and void
            // the cohort's secure sum (or a buffer's): refused, audited.
            let why = match self.training.is_async() {
                true => {
                    "this run sums each buffer securely: an update leaves masked, in its \
                     buffer's secure round (protocol 1.28, secure-buffers), never in the clear"
                }
                false => {
                    "this run aggregates securely: an update leaves masked, in the round's \
                     secure aggregation, never in the clear"
                }
            };
            self.refuse_report(site, "update", &format!("round {round}: {why}"));
            return Err(Refusal::Invalid(why.into()));
        }
        let now = self.now();
        let checked = self
            .check_update(site, update)
            .and_then(|()| self.check_extras(site, &extras));
        if let Err(reason) = checked.and_then(|()| {
            // Local DP: the update's report of its DP-SGD, checked
            // against the plan and every budget before it counts.
            self.privacy
                .check_local(round, site, LocalReport::of(update))
                .map_err(|e| format!("its DP-SGD cannot be accounted for: {e}"))
        }) {
            self.refuse_report(site, "update", &format!("round {round}: {reason}"));
            metrics::counter!(names::REJECTED, "reason" => "implausible").increment(1);
            return Err(Refusal::Invalid(reason));
        }
        if self.training.buffered().is_some() {
            return self.async_submit(site, round, update, now);
        }
        let id = ParticipantId::new(site);
        let Some(engine) = self.training.rounds_mut() else {
            return Err(Refusal::Invalid("no round is open".into()));
        };
        match engine.submit(now, &id, round, update) {
            Ok(()) => {
                // Local DP: the update's DP-SGD goes in the ledger before the
                // update is stored (a crash in between over-counts, never under).
                // The engine counted the update: if the database cannot hold
                // it, nothing more is acknowledged and the coordinator stops
                // (a restart resumes from the database).
                let effects = self
                    .privacy
                    .record_local(now, round, site, LocalReport::of(update));
                if let Err(e) = self.apply_privacy(effects) {
                    return Err(self.fail("cannot record a release in the privacy ledger", e));
                }
                if let Err(e) = self.store.put_update(
                    &self.run.id,
                    round,
                    round,
                    site,
                    update,
                    gradient.as_ref().map(|(rows, g)| (*rows, g)),
                    now,
                ) {
                    return Err(self.fail("cannot store an accepted update", e));
                }
                metrics::counter!(names::ACCEPTED).increment(1);
                self.audit(
                    site,
                    "update",
                    "accepted",
                    &match quality {
                        Some(q) => {
                            format!("round {round}, {} examples, quality {q}", update.n_examples)
                        }
                        None => format!("round {round}, {} examples", update.n_examples),
                    },
                );
                self.version += 1;
                self.advance();
                Ok(())
            }
            Err(rejection) => {
                let label = match &rejection {
                    tessera_engine::Rejection::WrongRound { .. } => "wrong_round",
                    tessera_engine::Rejection::NotInCohort => "not_in_cohort",
                    tessera_engine::Rejection::NotPending => "not_pending",
                    tessera_engine::Rejection::Late => "late",
                    tessera_engine::Rejection::Invalid(_) => "invalid",
                };
                metrics::counter!(names::REJECTED, "reason" => label).increment(1);
                let reason = rejection.to_string();
                self.audit(
                    site,
                    "update",
                    "rejected",
                    &format!("round {round}: {reason}"),
                );
                self.version += 1;
                self.advance();
                Err(Refusal::Invalid(reason))
            }
        }
    }

    /// Records the seconds of local training `site` reported for its
    /// counted update of `round` (bounded at the boundary; a figure the
    /// site measured, never used to weigh anything), for the participation
    /// table (`tessera contributions --db`).
    pub fn note_training(&mut self, site: &str, round: u32, seconds: f64) {
        self.audit(
            site,
            "resources",
            "reported",
            &format!("round {round}, {seconds:.6} s training"),
        );
    }

    /// Carries out the privacy book's effects: its rows go to the store.
    pub(super) fn apply_privacy(
        &mut self,
        effects: Vec<PrivacyEffect>,
    ) -> Result<(), CoordinatorError> {
        for effect in effects {
            match effect {
                Effect::Persist(row) => self.store.put_ledger_row(&self.run.id, &row)?,
                Effect::Audit(a) => self.audit(
                    a.site.as_deref().unwrap_or("-"),
                    "privacy",
                    &a.event,
                    &a.detail,
                ),
                Effect::Fatal(reason) => return Err(CoordinatorError::Config(reason)),
                Effect::Wake(_) => {}
            }
        }
        Ok(())
    }

    pub(super) fn step_training(&mut self, now: Timestamp) -> Result<(), CoordinatorError> {
        let run = self.run.id.clone();
        // An aggregator opens a round when its parent's task for it comes.
        if self.is_aggregator() && !self.relay_step(now)? {
            return Ok(());
        }
        let Some(engine) = self.training.rounds_mut() else {
            return Ok(());
        };
        if engine.open_round().is_none() {
            if engine.is_finished() || self.stop_requested.is_some() {
                let what = format!("{} rounds", self.records.len());
                return self.end_after_last_round(&what);
            }
            // Reputation-weighted selection: the draw weighs the sites by
            // the attribution so far.
            let weights = self.selection_weights()?;
            let Some(engine) = self.training.rounds_mut() else {
                return Ok(());
            };
            engine.set_selection_weights(weights);
            // Only sites heard from within the liveness period are drawn:
            // a round does not open with fewer than the plan's minimum.
            let live: std::collections::BTreeSet<ParticipantId> = self
                .roster
                .live(now)
                .iter()
                .map(|s| ParticipantId::new(s.as_str()))
                .collect();
            match engine.begin_round_among(now, &live) {
                Ok(start) => {
                    self.store
                        .open_round(&run, start.round, &start.cohort, now)?;
                    self.open_secure_round(start.round, &start.cohort, now);
                    metrics::gauge!(names::CURRENT_ROUND).set(f64::from(start.round));
                    self.round_started = Some(now);
                    tracing::info!(
                        round = start.round,
                        cohort = start.cohort.len(),
                        "round opened"
                    );
                    self.version += 1;
                }
                Err(tessera_engine::EngineError::NotEnoughParticipants { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(());
        }
        // A cohort member that has not been heard of for too long is gone.
        let silent: Vec<String> = self
            .roster
            .stale(now)
            .into_iter()
            .filter(|s| engine.is_pending(&ParticipantId::new(s.as_str())))
            .collect();
        for site in &silent {
            engine.report_dropout(&ParticipantId::new(site.as_str()));
            metrics::counter!(names::LIVENESS_DROPS).increment(1);
        }
        let round = engine.open_round().unwrap_or_default();
        for site in &silent {
            // Under secure aggregation the current stage stops waiting for it.
            self.secure_withdraw(site);
            self.homomorphic_withdraw(site);
            self.watch.departed(
                site,
                format!(
                    "dropped from round {round}: silent for more than {:?}",
                    self.roster.liveness()
                ),
            );
            self.audit(
                site,
                "liveness",
                "dropped",
                &format!("silent for more than {:?}", self.roster.liveness()),
            );
            self.version += 1;
        }
        self.advance_secure(now);
        self.advance_homomorphic(now);
        let Some(engine) = self.training.rounds_mut() else {
            return Ok(());
        };
        let Some(outcome) = engine.poll(now) else {
            return Ok(());
        };
        let model = Arc::clone(engine.global());
        if let Some(down) = self.downlink.as_mut() {
            down.advance(outcome.round, &model)?;
        }
        let seconds = self.round_seconds();
        let cohort: Vec<String> = outcome
            .cohort
            .iter()
            .map(|p| p.as_str().to_string())
            .collect();
        let counted: Vec<String> = if outcome.status == RoundStatus::Completed {
            outcome
                .accepted
                .iter()
                .map(|p| p.as_str().to_string())
                .collect()
        } else {
            Vec::new()
        };
        let mut record = round_record(&outcome, seconds, 0, 0);
        // Attribution, stored with the round's record in the close's
        // transaction: a round that cannot be attributed still closes.
        record.contribution = match self.attribute_round(outcome.round, &counted) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(round = outcome.round, error = %e, "round not attributed");
                None
            }
        };
        let record_json =
            serde_json::to_string(&record).map_err(|e| CoordinatorError::Config(e.to_string()))?;
        let status = record.status.clone();
        // Central DP: the release's ledger row is stored with the round.
        let central = outcome
            .privacy
            .as_ref()
            .map(|(release, entry)| self.privacy.central_release(now, release, entry));
        self.store.close_round(
            &run,
            &RoundClose {
                round: outcome.round,
                aggregate: outcome.aggregate.as_ref(),
                model: &model,
                status: &status,
                record_json: &record_json,
                cohort: &cohort,
                counted: &counted,
                at: now,
                privacy: central.as_ref(),
            },
        )?;
        // Recorded closed: an aggregation still under way for it ends.
        self.abandon_secure(outcome.round, &status);
        self.abandon_homomorphic(outcome.round, &status);
        for site in &cohort {
            self.roster
                .record_round(site, outcome.round, counted.contains(site));
        }
        let label = match &outcome.status {
            RoundStatus::Completed => "completed",
            RoundStatus::QuorumNotMet { .. } => "quorum_not_met",
            RoundStatus::Failed(_) => "failed",
        };
        metrics::counter!(names::ROUNDS, "status" => label).increment(1);
        metrics::histogram!(names::ROUND_SECONDS)
            .record(outcome.closed_at.since(outcome.opened_at).as_secs_f64());
        for (site, reason) in &outcome.rejected {
            tracing::warn!(%site, %reason, round = outcome.round, "update rejected");
        }
        tracing::info!(
            round = outcome.round,
            status = %status,
            accepted = outcome.accepted.len(),
            stragglers = outcome.stragglers.len(),
            dropped = outcome.dropped.len(),
            "round closed"
        );
        let targets = self.live(now);
        // An aggregator's answer goes up; its members then evaluate the
        // model the parent sends next, and wait for it.
        let until = match self.training.relay_mut() {
            Some(relay) => {
                relay.closed(
                    outcome.round,
                    outcome.aggregate.map(tessera_engine::upward_update),
                );
                Timestamp(u64::MAX)
            }
            None => now.plus(self.evaluation_wait()),
        };
        if self.aggregate_only() {
            let cohort = self.roster.joined().clone();
            self.open_secure_evaluation(outcome.round, &cohort, &targets, now);
        }
        self.phase = Phase::Evaluating {
            evaluation: EvaluationRound::open(outcome.round, targets, until),
            record: Box::new(record),
        };
        self.version += 1;
        Ok(())
    }

    /// The current global model, sync or async.
    pub(super) fn current_global(&self) -> Option<Arc<ParameterSet>> {
        // An aggregator's members evaluate its parent's model, once it came.
        match &self.training {
            Training::Relay(relay) if matches!(self.phase, Phase::Evaluating { .. }) => {
                relay.evaluating(&self.phase)
            }
            Training::Async(buffered) => buffered.as_ref().map(|b| b.current().0),
            Training::Sync(_) | Training::Relay(_) => {
                self.training.rounds().map(|e| Arc::clone(e.global()))
            }
        }
    }

    /// Central DP: a fresh noise key from the operating system, never
    /// stored, after checking that the rounds still to run fit every privacy
    /// budget, so that work that could not be released is refused before it
    /// starts. The closed rounds' noise is in their stored aggregates, which
    /// a resume replays; the open round (and every later one) is noised with
    /// this key, so nothing in the database reproduces or removes any noise.
    pub(super) fn privacy_preflight(
        privacy: &PrivacyBook,
        store: &dyn RunStore,
        run: &str,
    ) -> Result<[u8; 32], CoordinatorError> {
        let entries: Vec<_> = store
            .privacy_ledger(run)?
            .into_iter()
            .map(|row| row.entry)
            .collect();
        privacy
            .forecast_central(&entries)
            .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| {
            CoordinatorError::Config(format!("cannot draw a secret noise key: {e}"))
        })?;
        Ok(key)
    }

    /// Adds the plan's robust aggregation and central DP (where the privacy
    /// book says it runs here) to an engine.
    pub(super) fn protect(&self, engine: RoundEngine) -> Result<RoundEngine, CoordinatorError> {
        Ok(match self.central_dp {
            Some((cohort, key)) => engine.protected(&self.plan, Some(key), cohort)?,
            None => engine.protected(&self.plan, None, tessera_engine::DpCohort::Sampled(0))?,
        })
    }

    /// The downlink of a run with a download codec, starting from `initial`.
    pub(super) fn new_downlink(
        &self,
        initial: Arc<ParameterSet>,
    ) -> Option<tessera_engine::Downlink> {
        tessera_engine::Downlink::of_plan(&self.plan, initial)
    }
}
