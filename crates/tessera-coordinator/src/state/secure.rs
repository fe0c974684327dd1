//! Secure aggregation in deployment: the open round's cohort runs a SecAgg+
//! round through `SecureAggregation` requests, and the engine receives only
//! the recovered sum. Each stage closes when every participant still in it has
//! answered, or after the liveness period; whoever has not answered by then
//! has dropped, and the protocol recovers the sum of the others. The
//! protocol's state is not stored: after a coordinator restart the round is
//! reopened and the cohort trains again (no update was accepted).
//!
//! Stages, waiting, deadlines, refusals and the decoded sum are the
//! orchestrator's [`SecureStages`] (the same the simulator drives); this
//! file is its gRPC and engine glue. The coordinator relays: each
//! participant checks the parameters against the plan, its neighbours'
//! signatures against the certificates relayed with the parameters (which it
//! verifies against the federation CA itself), and the survivors' signed
//! views before it reveals anything (see `tessera_secagg`).
//!
//! Each participant's example count, train loss and step count travel inside
//! its masked vector, after the update ([`tessera_secagg::encode_metadata`]):
//! the coordinator learns only the survivors' sums of them, decoded when the
//! round closes. The clear fields of `SecAggMasked` (before 1.5) are not read.

use std::collections::{BTreeMap, BTreeSet};

use tessera_core::{ParticipantId, Timestamp};
use tessera_orchestrator::Effect;
use tessera_orchestrator::secure::{
    Message, Poll, Refused, SecureEffect, SecureRound as SecureStages, Stage, training_params,
};
use tessera_proto::pb;
use tessera_proto::pb::sec_agg_reply::State as Reply;
use tessera_proto::pb::sec_agg_request::Step;
use tessera_secagg::{AdvertiseKeys, MaskedInput, ShareKeys, SignedView, UnmaskResponse};

use super::{Federation, Refusal};

/// A round's secure aggregation in progress.
pub(super) struct SecureRound {
    pub(super) round: u32,
    /// Its stages.
    stages: SecureStages,
    /// Whether it sums the sites' evaluations (`site_metrics =
    /// "aggregate-only"`) rather than their updates.
    pub(super) evaluation: bool,
}

impl SecureRound {
    /// Whether `site` took part in this round from its first stage (it has
    /// sent its keys).
    pub(super) fn has_joined(&self, site: &str) -> bool {
        self.stages.has_joined(site)
    }

    /// Whether `site` has refused the round.
    pub(super) fn has_refused(&self, site: &str) -> bool {
        self.stages.has_refused(site)
    }

    /// Whether it sums evaluations.
    pub(super) fn is_evaluation(&self) -> bool {
        self.evaluation
    }

    /// A secure round over `stages` that sums neither updates nor
    /// evaluations (an analytics query's, `state/analytics.rs`).
    pub(super) fn of_stages(round: u32, stages: SecureStages) -> Self {
        Self {
            round,
            stages,
            evaluation: false,
        }
    }

    /// Its stages.
    pub(super) fn stages(&self) -> &SecureStages {
        &self.stages
    }

    /// Its stages, to change.
    pub(super) fn stages_mut(&mut self) -> &mut SecureStages {
        &mut self.stages
    }

    /// The open stage's name and the members it still waits for.
    pub(super) fn awaited(&self) -> (&'static str, Vec<String>) {
        let stage = self.stages.stage();
        let sites = self
            .stages
            .members()
            .keys()
            .filter(|s| self.stages.awaits(s, stage).is_ok())
            .cloned()
            .collect();
        (stage.name(), sites)
    }
}

fn shares_to_pb(shares: Vec<(u32, Vec<u8>)>) -> Vec<pb::SecAggShare> {
    shares
        .into_iter()
        .map(|(peer, data)| pb::SecAggShare { peer, data })
        .collect()
}

fn shares_from_pb(shares: Vec<pb::SecAggShare>) -> Vec<(u32, Vec<u8>)> {
    shares.into_iter().map(|s| (s.peer, s.data)).collect()
}

/// Round parameters `p` as a member with id `id` is sent them, with the
/// participants' `sites` and `certificates` (in their order).
pub(super) fn params_to_pb(
    p: &tessera_secagg::RoundParams,
    id: u32,
    sites: Vec<String>,
    certificates: Vec<Vec<u8>>,
) -> pb::SecAggParams {
    pb::SecAggParams {
        id,
        participants: p.participants.clone(),
        neighbours: p.neighbours as u32,
        threshold: p.threshold as u32,
        graph_seed: p.graph_seed.to_vec(),
        dimension: p.dimension as u32,
        range: p.range,
        sites,
        certificates,
        ..Default::default()
    }
}

fn key32(bytes: &[u8], what: &str) -> Result<[u8; 32], Refusal> {
    bytes
        .try_into()
        .map_err(|_| Refusal::Invalid(format!("{what} is {} bytes, not 32", bytes.len())))
}

/// The stage a request's step belongs to (`None` for a poll).
fn stage_of(step: &Step) -> Option<Stage> {
    match step {
        Step::Keys(_) => Some(Stage::Keys),
        Step::Shares(_) => Some(Stage::Shares),
        Step::Masked(_) => Some(Stage::Masked),
        Step::View(_) => Some(Stage::Views),
        Step::Unmask(_) => Some(Stage::Unmask),
        Step::Poll(_) | Step::Buffer(_) => None,
        // Not of a SecAgg+ round: refused as a message.
        Step::HeKeyShare(_)
        | Step::HeKeyCommitment(_)
        | Step::HeCommitment(_)
        | Step::HeReveal(_)
        | Step::HeAnswer(_)
        | Step::HeFetch(_)
        | Step::HeHolder(_) => None,
    }
}

/// Member `id`'s step as a protocol message.
fn message_of(id: u32, step: Step) -> Result<Message, Refusal> {
    Ok(match step {
        Step::Keys(k) => Message::Keys(AdvertiseKeys {
            from: id,
            c_public: key32(&k.c_public, "the encryption key")?,
            s_public: key32(&k.s_public, "the mask key")?,
            signature: k.signature,
        }),
        Step::Shares(s) => Message::Shares(ShareKeys {
            from: id,
            shares: shares_from_pb(s.shares),
        }),
        // The clear n_examples, mean_train_loss and n_steps (zero since
        // 1.5) are ignored: they are in the vector.
        Step::Masked(m) => Message::Masked(MaskedInput {
            from: id,
            values: m.values,
        }),
        Step::View(v) => Message::View(SignedView {
            from: id,
            signature: v.signature,
        }),
        Step::Unmask(u) => Message::Unmask(UnmaskResponse {
            from: id,
            seed_shares: shares_from_pb(u.seed_shares),
            key_shares: shares_from_pb(u.key_shares),
        }),
        Step::Poll(want) => {
            return Err(Refusal::Invalid(format!(
                "a poll for stage {want} is no message"
            )));
        }
        Step::Buffer(_) => {
            return Err(Refusal::Invalid(
                "a buffer join is no message of a secure round".into(),
            ));
        }
        Step::HeKeyShare(_)
        | Step::HeKeyCommitment(_)
        | Step::HeCommitment(_)
        | Step::HeReveal(_)
        | Step::HeAnswer(_)
        | Step::HeFetch(_)
        | Step::HeHolder(_) => {
            return Err(Refusal::Invalid(
                "a homomorphic round's message in a SecAgg+ round".into(),
            ));
        }
    })
}

impl Federation {
    /// Keeps the client certificate `site` presented (with mutual TLS), to
    /// relay to the cohorts of secure rounds.
    pub fn remember_certificate(&mut self, site: &str, certificate: Option<Vec<u8>>) {
        if let Some(der) = certificate
            && self.roster.is_joined(site)
            && self.certificates.get(site) != Some(&der)
        {
            self.certificates.insert(site.to_string(), der);
        }
    }

    /// The stages of training secure round `round` among `members` (ids in
    /// their order) over a model of `n_values`, and what opening asks.
    pub(super) fn open_training_stages<'a>(
        &self,
        round: u32,
        members: impl Iterator<Item = &'a str>,
        n_values: usize,
        now: Timestamp,
    ) -> Result<(SecureStages, Vec<SecureEffect>), String> {
        let index: BTreeMap<String, u32> = members
            .enumerate()
            .map(|(i, name)| (name.to_string(), i as u32))
            .collect();
        let ids: Vec<u32> = index.values().copied().collect();
        training_params(&self.plan, round, &ids, n_values)
            .map_err(|e| e.to_string())
            .and_then(|params| {
                SecureStages::open(now, round, index, params, self.roster.liveness())
                    .map_err(|e| e.to_string())
            })
    }

    /// The survivors' sum of training secure round `round` (`what` in the
    /// audit log), laid out as `global`, checked against what they declared
    /// together (one site's count is hidden; their sums are bounded). On
    /// refusal, why, and whether the sum was recovered but did not fit (one
    /// of them lied, and which one cannot be told).
    pub(super) fn recover_checked(
        &self,
        stages: &SecureStages,
        round: u32,
        global: &tessera_core::ParameterSet,
        what: &str,
    ) -> Result<tessera_core::Update, (String, bool)> {
        let kept = self.plan.secure_coordinates(round, global.n_values());
        let update = stages
            .recover(global, kept.as_deref())
            .map_err(|e| (e.to_string(), false))?;
        let names = stages.survivor_names();
        match self.check_secure_sums(&names, update.n_examples, update.stats.n_steps) {
            Ok(()) => Ok(update),
            Err(reason) => {
                self.refuse_report("-", "secure-aggregation", &format!("{what}: {reason}"));
                Err((reason, true))
            }
        }
    }

    /// Starts secure aggregation for a round just opened with `cohort`.
    pub(super) fn open_secure_round(
        &mut self,
        round: u32,
        cohort: &[ParticipantId],
        now: Timestamp,
    ) {
        if !self.plan.secure_aggregation.enabled {
            return;
        }
        if self.is_homomorphic() {
            self.open_homomorphic(round, cohort, now);
            return;
        }
        let Some(n_values) = self.training.rounds().map(|e| e.global().n_values()) else {
            return;
        };
        let names = cohort.iter().map(ParticipantId::as_str);
        match self.open_training_stages(round, names, n_values, now) {
            Ok((stages, effects)) => {
                self.secure = Some(SecureRound {
                    round,
                    stages,
                    evaluation: false,
                });
                self.apply_secure(effects);
            }
            Err(e) => {
                // The round cannot be secured (too small a cohort): nobody's update counts.
                tracing::error!(round, %e, "secure aggregation cannot start");
                self.audit("-", "secure-aggregation", "failed", &e);
                if let Some(engine) = self.training.rounds_mut() {
                    for p in cohort {
                        engine.report_dropout(p);
                    }
                }
            }
        }
    }

    /// Starts the secure sum of the evaluations of round `round`'s model by
    /// `targets`, the live sites of `cohort` (`site_metrics =
    /// "aggregate-only"` or `"dp"`): secure round `round | EVALUATION_ROUND`,
    /// over the summable encoding.
    pub(super) fn open_secure_evaluation(
        &mut self,
        round: u32,
        cohort: &BTreeSet<String>,
        targets: &BTreeSet<String>,
        now: Timestamp,
    ) {
        let secure_round = round | tessera_secagg::EVALUATION_ROUND;
        let index: BTreeMap<String, u32> = cohort
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        let ids: Vec<u32> = index.values().copied().collect();
        let absent: Vec<String> = index
            .keys()
            .filter(|s| !targets.contains(*s))
            .cloned()
            .collect();
        let made = self
            .plan
            .secure_aggregation
            .round_params(
                secure_round,
                &ids,
                self.plan.secagg_graph_seed(secure_round),
                tessera_learn::SUMMABLE_LEN,
            )
            .map_err(|e| e.to_string())
            .and_then(|params| {
                SecureStages::open(now, secure_round, index, params, self.roster.liveness())
                    .map_err(|e| e.to_string())
            });
        match made {
            Ok((stages, effects)) => {
                self.secure = Some(SecureRound {
                    round: secure_round,
                    stages,
                    evaluation: true,
                });
                self.apply_secure(effects);
                // Sites that are not live (they left the run, or went
                // silent) are in the cohort, as in a training round, and
                // counted as dropped at once.
                for site in &absent {
                    self.secure_withdraw(site);
                }
            }
            Err(e) => {
                let detail = format!(
                    "round {round}'s evaluation cannot be summed securely: {e}; the round has no \
                     evaluation figures (site_metrics = \"clear\" in [privacy] lets the \
                     coordinator see each site's evaluation)"
                );
                tracing::error!(round, %e, "secure evaluation cannot start");
                self.audit("-", "secure-evaluation", "failed", &detail);
                self.secure_evaluated = Some((round, None));
            }
        }
    }

    /// Carries out what the stages ask: audit entries are written; wakes
    /// need nothing, as the coordinator's tick advances the stages anyway.
    pub(super) fn apply_secure(&self, effects: Vec<SecureEffect>) {
        for effect in effects {
            match effect {
                Effect::Audit(a) => self.audit(
                    a.site.as_deref().unwrap_or("-"),
                    "secure-aggregation",
                    &a.event,
                    &a.detail,
                ),
                Effect::Fatal(reason) => {
                    tracing::error!(%reason, "secure aggregation cannot go on");
                }
                Effect::Wake(_) => {}
                Effect::Persist(never) => match never {},
            }
        }
    }

    /// The answer to `site`'s poll for stage `want`.
    fn secure_poll(&self, site: &str, want: u32) -> Result<Reply, Refused> {
        let Some(secure) = self.secure.as_ref() else {
            return Ok(Reply::Done(true));
        };
        Ok(match secure.stages.poll(site, want)? {
            Poll::Params(p, id) => {
                let sites: Vec<String> = p
                    .participants
                    .iter()
                    .map(|i| secure.stages.name_of(*i).unwrap_or_default().to_string())
                    .collect();
                let certificates = sites
                    .iter()
                    .map(|s| self.certificates.get(s).cloned().unwrap_or_default())
                    .collect();
                Reply::Params(params_to_pb(p, id, sites, certificates))
            }
            Poll::Keys(keys) => Reply::Keys(pb::SecAggNeighbourKeys {
                peers: keys.iter().map(|k| k.from).collect(),
                keys: keys
                    .into_iter()
                    .map(|k| pb::SecAggKeys {
                        c_public: k.c_public.to_vec(),
                        s_public: k.s_public.to_vec(),
                        signature: k.signature,
                    })
                    .collect(),
            }),
            Poll::Shares(shares) => Reply::Shares(pb::SecAggShares {
                shares: shares_to_pb(shares),
            }),
            Poll::Unmask(r) => Reply::Unmask(pb::SecAggUnmaskRequest {
                survivors: r.survivors,
                dropped: r.dropped,
            }),
            Poll::Views(views) => Reply::Views(pb::SecAggViews {
                views: views
                    .into_iter()
                    .map(|v| pb::SecAggSignedView {
                        id: v.from,
                        signature: v.signature,
                    })
                    .collect(),
            }),
            Poll::Done => Reply::Done(true),
            Poll::Wait => Reply::Wait(true),
        })
    }

    /// One `SecureAggregation` request. The step that completes a secure
    /// sum moves the run on at once (the round closes, the next opens), as
    /// an accepted clear update does, not at the next tick.
    pub fn secure_step(
        &mut self,
        site: &str,
        round: u32,
        step: Option<Step>,
    ) -> Result<pb::SecAggReply, Refusal> {
        let open = |f: &Self| f.secure.is_some() || f.homomorphic.is_some();
        let was_open = open(self);
        let reply = self.take_secure_step(site, round, step);
        if was_open && !open(self) {
            self.advance();
        }
        reply
    }

    fn take_secure_step(
        &mut self,
        site: &str,
        round: u32,
        step: Option<Step>,
    ) -> Result<pb::SecAggReply, Refusal> {
        self.require_joined(site)?;
        self.touch(site);
        let now = self.now();
        let reply = |state| Ok(pb::SecAggReply { state: Some(state) });
        if let Some(Step::Buffer(join)) = &step {
            // Its refusals are audited there.
            return self.buffer_join(site, join.base, now).and_then(reply);
        }
        let training_round = round & tessera_secagg::EVALUATION_ROUND == 0
            && round & tessera_secagg::ANALYTICS_ROUND == 0
            && !tessera_secagg::is_rollout_round(round);
        if self.is_homomorphic() && (training_round || matches!(step, Some(Step::HeHolder(_)))) {
            // Its refusals are audited there.
            return self.homomorphic_step(site, round, step, now);
        }
        let Some(secure) = self.secure.as_mut().filter(|s| s.round == round) else {
            // The round is over (or was reopened after a restart): stop,
            // told whether its input counted where this coordinator saw the
            // round's sum end (else that it did).
            let counted = (self.sum_counted.as_ref())
                .is_none_or(|(r, sites)| *r != round || sites.contains(site));
            return reply(Reply::Done(counted));
        };
        let Some(id) = secure.stages.id_of(site) else {
            return Err(Refusal::Denied(format!(
                "site '{site}' is not in round {round}'s cohort"
            )));
        };
        let outcome = match step {
            None => Err(Refusal::Invalid(
                "an empty secure-aggregation request".into(),
            )),
            Some(Step::Poll(want)) => match self.secure_poll(site, want) {
                Ok(state) => reply(state),
                // A stage that does not exist: refused, not audited.
                Err(e) => return Err(Refusal::Invalid(e.to_string())),
            },
            Some(step) => {
                let stage = stage_of(&step).unwrap_or(Stage::Unmask);
                let before = secure.stages.stage();
                match secure.stages.awaits(site, stage) {
                    Err(late @ Refused::Late { .. }) => {
                        // Too late: the round goes on without this site.
                        self.apply_secure(vec![late.audit(site)]);
                        return reply(Reply::Done(true));
                    }
                    Err(e) => Err(Refusal::Invalid(e.to_string())),
                    Ok(_) => {
                        let received = message_of(id, step).and_then(|message| {
                            secure
                                .stages
                                .receive(now, site, message)
                                .map_err(|e| Refusal::Invalid(e.to_string()))
                        });
                        // Each stage it closed is news for those waiting.
                        let moved = secure.stages.stage().number() - before.number();
                        self.version += u64::from(moved);
                        received.map(|effects| {
                            self.apply_secure(effects);
                            pb::SecAggReply {
                                state: Some(Reply::Wait(true)),
                            }
                        })
                    }
                }
            }
        };
        if let Err(e) = &outcome {
            self.audit(site, "secure-aggregation", "rejected", &e.to_string());
        }
        self.advance_secure(now);
        outcome
    }

    /// `site` refuses the secure sum of evaluations numbered `secure_round`:
    /// it is not waited for, nor given the evaluation again. True when that
    /// round is open and has `site`.
    pub(super) fn secure_evaluation_refused(&mut self, site: &str, secure_round: u32) -> bool {
        self.secure.as_mut().is_some_and(|secure| {
            secure.evaluation && secure.round == secure_round && secure.stages.refuse(site)
        })
    }

    /// `site` left the open round: the current stage stops waiting for it
    /// (what it already sent in this stage stands).
    pub(super) fn secure_withdraw(&mut self, site: &str) {
        if let Some(secure) = self.secure.as_mut() {
            secure.stages.withdraw(site);
        }
    }

    /// Training round `round` closed (`status`: its deadline passed, or its
    /// quorum) while its SecAgg+ round was still under way: the secure
    /// round ends, audited as failed (its sites' polls are told to stop).
    pub(super) fn abandon_secure(&mut self, round: u32, status: &str) {
        if (self.secure.as_ref()).is_none_or(|s| s.evaluation || s.round != round) {
            return;
        }
        self.secure = None;
        self.sum_counted = Some((round, Default::default()));
        let detail =
            format!("round {round}: the round closed ({status}) before its sum was unmasked");
        self.audit("-", "secure-aggregation", "failed", &detail);
        self.version += 1;
    }

    /// Closes the current stage when everyone in it has answered or the
    /// liveness period is over; after the last one, hands the sum to the engine.
    pub(super) fn advance_secure(&mut self, now: Timestamp) {
        let Some(secure) = self.secure.as_mut() else {
            return;
        };
        let before = secure.stages.stage();
        let effects = secure.stages.advance(now);
        let after = secure.stages.stage();
        self.version += u64::from(after.number() - before.number());
        self.apply_secure(effects);
        if after != Stage::Done {
            return;
        }
        let Some(secure) = self.secure.take() else {
            return;
        };
        if secure.evaluation {
            self.finish_secure_evaluation(&secure);
            return;
        }
        if tessera_secagg::is_rollout_round(secure.round) {
            self.finish_rollout_secure(&secure);
            return;
        }
        if secure.round & tessera_secagg::ANALYTICS_ROUND != 0 {
            self.finish_analytics(&secure);
            return;
        }
        if self.has_secure_buffers() {
            self.finish_buffer(&secure, now);
            return;
        }
        let round = secure.round;
        let stages = &secure.stages;
        let Some(global) = self.training.rounds().map(|e| e.global().clone()) else {
            return;
        };
        let recovered = stages.dropped_names().len();
        let names = stages.survivor_names();
        let result = self.recover_checked(stages, round, &global, &format!("round {round}"));
        let mut failed = None;
        let Some(engine) = self.training.rounds_mut() else {
            return;
        };
        // Only the survivors' sums: examples and steps are the cohort's
        // totals (the steps no longer the max), the loss their mean (2^-16
        // fixed point, clipped to [0, 65,536)).
        let counted = match result {
            Ok(update) => {
                let contributors: Vec<ParticipantId> =
                    names.iter().map(|name| ParticipantId::new(*name)).collect();
                match engine.submit_sum(now, round, &contributors, &update) {
                    Ok(()) => contributors,
                    Err(e) => {
                        tracing::warn!(round, %e, "the secure sum was refused");
                        failed = Some(format!("round {round}: the sum was refused: {e}"));
                        Vec::new()
                    }
                }
            }
            Err((e, audited)) => {
                tracing::warn!(round, %e, "secure aggregation failed");
                if !audited {
                    failed = Some(format!("round {round}: {e}"));
                }
                Vec::new()
            }
        };
        for site in stages.members().keys() {
            let p = ParticipantId::new(site.as_str());
            if !counted.contains(&p) {
                engine.report_dropout(&p);
            }
        }
        self.sum_counted = Some((
            round,
            counted.iter().map(|p| p.as_str().to_string()).collect(),
        ));
        if let Some(reason) = failed {
            self.audit("-", "secure-aggregation", "failed", &reason);
        }
        if !counted.is_empty() {
            let detail = format!(
                "round {round}: the sum of {} of {} updates; the masks of {recovered} that dropped after sharing keys removed",
                counted.len(),
                stages.members().len()
            );
            self.audit("-", "secure-aggregation", "completed", &detail);
        }
        self.version += 1;
    }

    /// The sum of the sites' evaluations is in: decoded, it is all the
    /// coordinator learns of them.
    fn finish_secure_evaluation(&mut self, secure: &SecureRound) {
        let round = secure.round & !tessera_secagg::EVALUATION_ROUND;
        let summed = secure
            .stages
            .finish()
            .map_err(|e| e.to_string())
            .and_then(|(sum, count)| tessera_learn::decode_summable(&sum, count))
            .and_then(|summed| {
                self.check_secure_evaluation(
                    &secure.stages.survivor_names(),
                    summed.pooled.n_examples,
                    summed.pooled.loss_sum,
                )
                .map(|()| summed)
            });
        let noised = self.privacy.metrics().is_some();
        let (outcome, detail, view) = match (summed, noised) {
            (Ok(summed), false) => (
                "completed",
                format!(
                    "round {round}'s evaluation: the sum of {} of {} sites' evaluations ({} test rows)",
                    summed.sites,
                    secure.stages.members().len(),
                    summed.pooled.n_examples
                ),
                Some(tessera_engine::report::EvaluationView::summed(&summed)),
            ),
            // `site_metrics = "dp"`: noised in memory with a key from the
            // operating system that is dropped here; the exact sum goes no
            // further than this function (not in the audit detail either).
            // The privacy book charges the release first.
            (Ok(summed), true) => {
                let mut key = [0u8; 32];
                let drawn = getrandom::fill(&mut key)
                    .map_err(|e| format!("cannot draw a secret noise key: {e}"))
                    .and_then(|()| self.privacy.release_metrics().map_err(|e| e.to_string()));
                match (drawn, self.privacy.metrics()) {
                    (Ok(Some(epsilon)), Some(dp)) => {
                        let mut noise = tessera_privacy::GaussianNoise::new(key, 0);
                        let view =
                            tessera_engine::report::EvaluationView::noised(&summed, dp, &mut noise);
                        (
                            "completed",
                            format!(
                                "round {round}'s evaluation: the sum of {} of {} sites' evaluations, \
                                 noised (metrics epsilon {epsilon:.4} of {})",
                                summed.sites,
                                secure.stages.members().len(),
                                dp.budget()
                            ),
                            Some(view),
                        )
                    }
                    (Err(e), _) => (
                        "failed",
                        format!("round {round}'s evaluation not released: {e}"),
                        None,
                    ),
                    (Ok(_), _) => (
                        "failed",
                        format!("round {round}'s evaluation not released: no DP metrics"),
                        None,
                    ),
                }
            }
            (Err(e), _) => ("failed", format!("round {round}'s evaluation: {e}"), None),
        };
        self.audit("-", "secure-evaluation", outcome, &detail);
        self.secure_evaluated = Some((round, view));
        self.version += 1;
    }
}
