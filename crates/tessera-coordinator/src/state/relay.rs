//! An aggregator of a hierarchical run: a coordinator toward its members
//! whose rounds come from its parent. The members' agreement offers go up
//! merged, the parent's answers come back; each parent task of round `r`
//! opens round `r` here over the same [`RoundEngine`] (each member told
//! what the plan's strategy tells it, their updates combined as FedAvg at
//! server learning rate 1, see [`tessera_engine::aggregator_engine`]), whose
//! aggregate goes up as one update carrying the members' examples; the
//! members evaluate the model the parent sends next and their pooled
//! evaluation goes up. Everything decided is in this aggregator's own
//! database, so a restarted aggregator resumes its round when its parent
//! sends the task again.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use tessera_core::{ParameterSet, ParticipantId, Timestamp, Update};
use tessera_data::{Agreement, ColumnKinds, FeatureStatistics, KindsOffer, LevelsOffer};
use tessera_engine::report::{RegionReport, RoundRecord, TopologyReport};
use tessera_learn::Evaluation;
use tessera_proto::{convert, pb};

use super::{EvaluationRound, Federation, Phase, RoundEngine, Training};
use crate::CoordinatorError;
use crate::store::{AgreementStep, StoreError};

/// What an aggregator knows of its parent's work.
pub(super) struct Relay {
    /// Its name in the plan's topology (the site its parent knows).
    name: String,
    /// The parent's training task: round and model.
    fit: Option<(u32, Arc<ParameterSet>)>,
    /// The parent's evaluation task: round and model.
    evaluation: Option<(u32, Arc<ParameterSet>)>,
    /// The round a previous process left open, reopened when its task comes again.
    reopen: Option<(u32, Vec<ParticipantId>, Timestamp)>,
    /// The newest round closed here.
    closed_through: u32,
    /// Answers of rounds closed by this process (older ones are in the database).
    answers: BTreeMap<u32, Option<Update>>,
    /// The sites' evaluations finished by this process, by round.
    evaluations: BTreeMap<u32, Vec<(String, Evaluation)>>,
    /// Its depth in the tree and the sites below it.
    depth: usize,
    sites: Vec<String>,
    /// The parent's run is over; the members evaluate this aggregator's
    /// last regional model in round `closed_through + 1`.
    finishing: bool,
    /// That evaluation.
    pub(super) regional: Option<RoundRecord>,
    /// The round of that evaluation: after every round evaluated here.
    own_regional: Option<u32>,
    /// The round in which the members evaluated the parent's own regional
    /// model (a tree of three levels or more: the parent is an aggregator
    /// whose run is over); not a round of this aggregator's.
    parent_regional: Option<u32>,
    /// The open round's engine (or the last one's), built when the
    /// parent's task comes.
    pub(super) engine: Option<RoundEngine>,
}

impl Relay {
    pub(super) fn new(name: &str, depth: usize, sites: Vec<String>) -> Self {
        Self {
            name: name.to_string(),
            fit: None,
            evaluation: None,
            reopen: None,
            closed_through: 0,
            answers: BTreeMap::new(),
            evaluations: BTreeMap::new(),
            depth,
            sites,
            finishing: false,
            regional: None,
            own_regional: None,
            parent_regional: None,
            engine: None,
        }
    }

    /// Whether `round` is the evaluation of this aggregator's own model.
    pub(super) fn is_regional_evaluation(&self, round: u32) -> bool {
        self.finishing && self.own_regional == Some(round)
    }

    /// Whether `round` is the evaluation of the parent's regional model.
    pub(super) fn is_parents_regional_evaluation(&self, round: u32) -> bool {
        self.parent_regional == Some(round)
    }

    /// Whether the members evaluate a regional model in `round` (this
    /// aggregator's own or its parent's), not a global one: their task
    /// says so (`TaskHeader.regional_model`), and the deepest one they
    /// evaluate, this aggregator's own, comes last.
    pub(super) fn evaluates_regional(&self, round: u32) -> bool {
        self.is_regional_evaluation(round) || self.is_parents_regional_evaluation(round)
    }

    /// What the report says of this aggregator: its sites, its last regional
    /// model's accuracy on their test rows against the parent's last model's.
    pub(super) fn topology(&self, records: &[RoundRecord]) -> TopologyReport {
        let mut regions = BTreeMap::new();
        if let Some(regional) = &self.regional {
            regions.insert(
                self.name.clone(),
                RegionReport {
                    depth: self.depth,
                    sites: self.sites.clone(),
                    accuracy: Some(regional.accuracy),
                    global_accuracy: records
                        .iter()
                        .rev()
                        .find(|r| !self.is_parents_regional_evaluation(r.round))
                        .map_or(0.0, |r| r.accuracy),
                },
            );
        }
        TopologyReport {
            kind: "hierarchical".into(),
            regions,
            ..TopologyReport::default()
        }
    }

    /// Round `round` closed here with `answer` (none if it did not complete).
    pub(super) fn closed(&mut self, round: u32, answer: Option<Update>) {
        self.closed_through = self.closed_through.max(round);
        self.answers.insert(round, answer);
    }

    /// Round `round`'s members finished evaluating the parent's model:
    /// each site's evaluation (those of members that are aggregators
    /// replaced by their sites').
    pub(super) fn evaluated(&mut self, round: u32, sites: Vec<(String, Evaluation)>) {
        self.evaluations.insert(round, sites);
    }

    /// The model the members evaluate in `phase`, when the parent sent it.
    pub(super) fn evaluating(&self, phase: &Phase) -> Option<Arc<ParameterSet>> {
        match (phase, &self.evaluation) {
            (Phase::Evaluating { evaluation, .. }, Some((r, model)))
                if *r == evaluation.round() =>
            {
                Some(Arc::clone(model))
            }
            _ => None,
        }
    }
}

/// An aggregator's members' evaluation of a parent's model, for its parent.
#[derive(Debug, Clone)]
pub struct SiteEvaluations {
    /// All of them pooled.
    pub pooled: Evaluation,
    /// Each site's (below members that are aggregators, too).
    pub sites: Vec<(String, Evaluation)>,
}

impl SiteEvaluations {
    fn new(sites: Vec<(String, Evaluation)>) -> Self {
        Self {
            pooled: Evaluation::pool(sites.iter().map(|(_, e)| e)),
            sites,
        }
    }
}

fn damaged(e: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Store(StoreError::Damaged(e.to_string()))
}

impl Federation {
    /// Whether this federation is an aggregator below a parent.
    pub fn is_aggregator(&self) -> bool {
        matches!(self.training, Training::Relay(_))
    }

    /// Aggregator: the merged offer of agreement step `step` once every
    /// member has offered and the parent's answer has not come yet.
    pub fn relay_offer(
        &self,
        step: AgreementStep,
    ) -> Result<Option<pb::agree_request::Offer>, CoordinatorError> {
        let Some(relay) = self.training.relay() else {
            return Ok(None);
        };
        if self.relay_settled(step)? {
            return Ok(None);
        }
        let Some(offers) = self.quorum_of_offers(step)? else {
            return Ok(None);
        };
        let name = relay.name.as_str();
        Ok(Some(match step {
            AgreementStep::Kinds => {
                let offers = offers
                    .into_iter()
                    .map(|(site, bytes)| {
                        let offer = pb::KindsOffer::decode(bytes.as_slice()).map_err(damaged)?;
                        convert::kinds_offer_from_pb(&site, offer).map_err(damaged)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let merged = KindsOffer::merge(name, &offers)
                    .map_err(|e| CoordinatorError::Config(e.to_string()))?;
                pb::agree_request::Offer::Kinds(convert::kinds_offer_to_pb(&merged))
            }
            AgreementStep::Levels => {
                let columns = self.kinds.as_ref().map_or(0, |k| k.columns.len());
                let offers = offers
                    .into_iter()
                    .map(|(site, bytes)| {
                        let offer = pb::LevelsOffer::decode(bytes.as_slice()).map_err(damaged)?;
                        Ok(convert::levels_offer_from_pb(&site, offer))
                    })
                    .collect::<Result<Vec<_>, CoordinatorError>>()?;
                let merged = LevelsOffer::merge(name, columns, &offers);
                pb::agree_request::Offer::Levels(convert::levels_offer_to_pb(&merged))
            }
            AgreementStep::Statistics => {
                let n = self
                    .agreement
                    .as_ref()
                    .map_or(0, |a| a.feature_names().len());
                let parts = offers
                    .into_iter()
                    .map(|(_, bytes)| {
                        let stats =
                            pb::FeatureStatistics::decode(bytes.as_slice()).map_err(damaged)?;
                        convert::statistics_from_pb(stats, n).map_err(damaged)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let merged = FeatureStatistics::merge_all(n, &parts);
                pb::agree_request::Offer::Statistics(convert::statistics_to_pb(&merged))
            }
            AgreementStep::External => {
                // Refused at validation: an external model runs flat.
                return Err(CoordinatorError::Config(
                    "an external model runs in flat rounds: an aggregator relays no external \
                     offers"
                        .into(),
                ));
            }
        }))
    }

    /// Aggregator: the parent agreed the column kinds.
    pub fn settle_kinds(&mut self, kinds: ColumnKinds) -> Result<(), CoordinatorError> {
        if self.kinds.is_none() {
            self.store.put_agreement(
                &self.run.id,
                AgreementStep::Kinds,
                &convert::kinds_to_pb(&kinds).encode_to_vec(),
            )?;
            self.audit("-", "agree-kinds", "from parent", &kinds.columns.join(","));
            self.kinds = Some(kinds);
            self.version += 1;
        }
        Ok(())
    }

    /// Aggregator: the parent agreed the vocabulary; training can start.
    pub fn settle_agreement(&mut self, agreement: Agreement) -> Result<(), CoordinatorError> {
        if self.agreement.is_none() {
            self.close_vocabulary("-", &agreement)
                .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        }
        Ok(())
    }

    /// Aggregator: the parent merged the feature statistics.
    pub fn settle_statistics(
        &mut self,
        merged: pb::FeatureStatistics,
    ) -> Result<(), CoordinatorError> {
        let n = self
            .agreement
            .as_ref()
            .map_or(0, |a| a.feature_names().len());
        // Checked before it is kept: the members decode it too.
        convert::statistics_from_pb(merged.clone(), n)?;
        if self
            .store
            .agreement(&self.run.id, AgreementStep::Statistics)?
            .is_none()
        {
            self.store.put_agreement(
                &self.run.id,
                AgreementStep::Statistics,
                &merged.encode_to_vec(),
            )?;
            self.version += 1;
        }
        Ok(())
    }

    /// Aggregator: whether agreement step `step` has its parent's answer.
    pub fn relay_settled(&self, step: AgreementStep) -> Result<bool, CoordinatorError> {
        Ok(match step {
            AgreementStep::Kinds => self.kinds.is_some(),
            AgreementStep::Levels => self.agreement.is_some(),
            AgreementStep::Statistics => self.store.agreement(&self.run.id, step)?.is_some(),
            AgreementStep::External => self.agreement.is_some(),
        })
    }

    /// Aggregator: the parent asks for round `round`'s update, trained from `global`.
    /// Its round's spans are children of `trace`, the span of the parent's task.
    pub fn relay_fit(&mut self, round: u32, global: Arc<ParameterSet>, trace: tracing::Span) {
        self.trace_under(trace);
        if let Some(relay) = self.training.relay_mut()
            && relay.fit.as_ref().is_none_or(|(r, _)| *r != round)
        {
            relay.fit = Some((round, global));
            self.version += 1;
            self.advance();
        }
    }

    /// Aggregator: the answer to the parent's task of round `round` once the
    /// round closed here (`Some(None)`: it closed without an aggregate).
    pub fn relay_answer(&self, round: u32) -> Result<Option<Option<Update>>, CoordinatorError> {
        let Some(relay) = self.training.relay() else {
            return Ok(None);
        };
        if let Some(answer) = relay.answers.get(&round) {
            return Ok(Some(answer.clone()));
        }
        if round > relay.closed_through {
            return Ok(None);
        }
        // Closed by an earlier process: its aggregate is in the database.
        Ok(Some(
            self.store
                .aggregates(&self.run.id, round)?
                .into_iter()
                .find(|(r, _)| *r == round)
                .map(|(_, aggregate)| tessera_engine::upward_update(aggregate)),
        ))
    }

    /// Aggregator: the parent asks for an evaluation of `global`, its model
    /// after round `round`, or with `regional` (protocol 1.17) of its own
    /// regional model once its run is over: then the members evaluate it as
    /// a regional model, and it is no round of this aggregator's.
    pub fn relay_evaluate(&mut self, round: u32, global: Arc<ParameterSet>, regional: bool) {
        let now = self.now();
        let wait = self.evaluation_wait();
        let targets = self.live(now);
        let Some(relay) = self.training.relay_mut() else {
            return;
        };
        if relay.evaluation.as_ref().is_some_and(|(r, _)| *r == round) {
            return;
        }
        relay.evaluation = Some((round, global));
        if regional {
            relay.parent_regional = Some(round);
        }
        let evaluated = self.records.iter().any(|r| r.round == round);
        match &mut self.phase {
            Phase::Evaluating { evaluation, .. } if evaluation.round() == round => {
                evaluation.rewait(targets, now.plus(wait));
            }
            _ if evaluated => {}
            _ => {
                // This aggregator was not in round `round` (it was down when
                // the round ran): its members evaluate the model all the same.
                if relay
                    .engine
                    .as_ref()
                    .is_some_and(|e| e.open_round().is_some())
                {
                    relay.engine = None;
                }
                let status = if regional {
                    // The parent's run is over: no round of its opens again.
                    relay.fit = None;
                    "the parent's regional model"
                } else {
                    relay.closed_through = relay.closed_through.max(round);
                    "not in this round"
                };
                let record = RoundRecord {
                    round,
                    status: status.into(),
                    ..RoundRecord::default()
                };
                self.phase = Phase::Evaluating {
                    evaluation: EvaluationRound::open(round, targets, now.plus(wait)),
                    record: Box::new(record),
                };
            }
        }
        self.version += 1;
        self.advance();
    }

    /// Whether the evaluation under way may close: an aggregator's waits
    /// for its parent's model.
    pub(super) fn relay_may_evaluate(&self) -> bool {
        match (self.training.relay(), &self.phase) {
            (Some(relay), Phase::Evaluating { evaluation, .. }) => relay
                .evaluation
                .as_ref()
                .is_some_and(|(r, _)| *r == evaluation.round()),
            _ => true,
        }
    }

    /// Aggregator: the members' evaluation of the parent's model of round
    /// `round`, once they have all answered (or the wait ended): pooled, and
    /// by site (the sites below members that are aggregators, too).
    pub fn relay_evaluation(
        &self,
        round: u32,
    ) -> Result<Option<SiteEvaluations>, CoordinatorError> {
        let Some(relay) = self.training.relay() else {
            return Ok(None);
        };
        if let Some(sites) = relay.evaluations.get(&round) {
            return Ok(Some(SiteEvaluations::new(sites.clone())));
        }
        if !self.records.iter().any(|r| r.round == round) {
            return Ok(None);
        }
        let stored = self.stored_evaluations(&self.run.id, round)?;
        let (members, evaluations): (Vec<String>, Vec<Evaluation>) = stored.into_iter().unzip();
        let (names, evaluations) = self.by_site(round, members, evaluations);
        Ok(Some(SiteEvaluations::new(
            names.into_iter().zip(evaluations).collect(),
        )))
    }

    /// Aggregator: the parent's run is over. The members evaluate this
    /// aggregator's last regional model (kept in its database), then its run
    /// is over too.
    pub fn relay_finish(&mut self) -> Result<(), CoordinatorError> {
        let now = self.now();
        let wait = self.evaluation_wait();
        let targets = self.live(now);
        let Some(relay) = self.training.relay() else {
            return Ok(());
        };
        if relay.finishing || matches!(self.phase, Phase::Finished) {
            return Ok(());
        }
        let closed = relay.closed_through;
        // After every round evaluated here (the parent's regional model's too).
        let round = closed.max(relay.parent_regional.unwrap_or(0)) + 1;
        // Its last regional model: that of the last round it closed itself
        // (a round it missed left none).
        let regional = match self.store.latest_model_version(&self.run.id)? {
            Some(version) if version > 0 => self.store.model(&self.run.id, version)?,
            _ => None,
        };
        let Some(relay) = self.training.relay_mut() else {
            return Ok(());
        };
        relay.finishing = true;
        relay.own_regional = Some(round);
        let Some(model) = regional else {
            return self.finish_relay_run();
        };
        relay.evaluation = Some((round, Arc::new(model)));
        self.phase = Phase::Evaluating {
            evaluation: EvaluationRound::open(round, targets, now.plus(wait)),
            record: Box::new(RoundRecord {
                round,
                status: "regional model".into(),
                ..RoundRecord::default()
            }),
        };
        self.version += 1;
        self.advance();
        Ok(())
    }

    /// The aggregator's run is over.
    pub(super) fn finish_relay_run(&mut self) -> Result<(), CoordinatorError> {
        self.store.finish_run(&self.run.id)?;
        self.audit("-", "run", "finished", "the parent's run is over");
        self.phase = Phase::Finished;
        self.follow_trace();
        self.version += 1;
        Ok(())
    }

    /// An aggregator's training step with no round open: opens the parent's
    /// round when its task has come. True when a round is open.
    pub(super) fn relay_step(&mut self, now: Timestamp) -> Result<bool, CoordinatorError> {
        if self
            .training
            .rounds()
            .is_some_and(|e| e.open_round().is_some())
        {
            return Ok(true);
        }
        let Some(relay) = self.training.relay_mut() else {
            return Ok(true);
        };
        let Some((round, global)) = relay.fit.clone() else {
            return Ok(false);
        };
        if round <= relay.closed_through {
            return Ok(false);
        }
        let reopen = relay.reopen.take();
        let run = self.run.id.clone();
        // With central DP this aggregator clips and noises its sites' sum;
        // its ledger so far comes back from the database.
        let mut engine = self.protect(tessera_engine::aggregator_engine(
            &self.plan,
            global.as_ref().clone(),
            round,
        )?)?;
        if engine.privacy().is_some() {
            for row in self.store.privacy_ledger(&run)? {
                engine.restore_privacy(row.entry, row.next_clip_norm)?;
            }
        }
        for site in self.roster.joined() {
            engine.register(ParticipantId::new(site.as_str()));
        }
        let cohort = match reopen {
            Some((open, cohort, opened_at)) if open == round => {
                let start = engine.reopen_round(round, cohort, opened_at)?;
                for stored in self.store.updates(&run, round)? {
                    let (site, update, at) = (stored.site, stored.update, stored.at);
                    if let Err(rejection) = engine.submit(at, &site, round, &update) {
                        tracing::warn!(%site, round, %rejection, "a stored update no longer counts");
                    }
                }
                tracing::info!(round, "round reopened");
                start.cohort
            }
            _ => match engine.begin_round(now) {
                Ok(start) => {
                    self.store.open_round(&run, round, &start.cohort, now)?;
                    tracing::info!(round, cohort = start.cohort.len(), "round opened");
                    start.cohort
                }
                Err(tessera_engine::EngineError::NotEnoughParticipants { .. }) => {
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            },
        };
        metrics::gauge!(crate::telemetry::names::CURRENT_ROUND).set(f64::from(round));
        self.round_started = Some(now);
        self.training.set_rounds(Some(engine));
        // With secure aggregation the members mask their updates; the
        // protocol's state is not stored, so a reopened round starts it again.
        self.open_secure_round(round, &cohort, now);
        self.version += 1;
        Ok(true)
    }

    /// Rebuilds an aggregator from its database: rounds closed, records,
    /// the round left open (reopened when its parent's task comes again).
    pub(super) fn resume_relay(&mut self, run: &str) -> Result<(), CoordinatorError> {
        self.resume_rounds(run, Timestamp(u64::MAX))?;
        let open = self
            .store
            .open_round_of(run)?
            .map(|o| (o.round, o.cohort, o.opened));
        let closed = self.store.latest_model_version(run)?.unwrap_or(0);
        if let Some(relay) = self.training.relay_mut() {
            relay.closed_through = closed;
            relay.reopen = open;
        }
        if matches!(self.phase, Phase::Agreeing) {
            self.phase = Phase::Training;
        }
        let now = self.now();
        self.roster.seen_all(now);
        tracing::info!(run, rounds_closed = closed, "resumed");
        Ok(())
    }
}
