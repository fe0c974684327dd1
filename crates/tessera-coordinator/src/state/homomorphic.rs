//! Homomorphic aggregation in deployment (1.29, `homomorphic-aggregation`;
//! `secure_aggregation.scheme = "homomorphic"`): a synchronous training
//! round's cohort encrypts its quantised updates under a joint key of the
//! plan's key holders, and the engine receives only the decrypted sum.
//!
//! Stages, each closed when everyone it waits for has answered or after the
//! liveness period: **key commitments** and **keys** (every key holder's
//! signed commitment to a fresh key share, then the share, signed over all
//! the commitments, so that none picks its share after seeing another's;
//! decryption is n-of-n, so a key holder missing fails the round),
//! **commit** (each contributor's signed digest of its ciphertexts; those
//! that do not commit in time are left out), **reveal** (the closed list's
//! contributors sign it and send their ciphertexts; one missing fails the
//! round: the key holders decrypt exactly that list's sum or nothing) and
//! **answer** (each key holder fetches every contribution, checks and sums
//! them itself, and answers with its decryption shares of that sum). The
//! coordinator combines the answers into the sum of the quantised vectors
//! (`tessera_he`), decoded as SecAgg+'s: with the same contributors the
//! model equals SecAgg+'s, and the simulation's, to the bit.
//!
//! The coordinator relays and sums too (to refuse a reveal that does not
//! match its commitment at once, and to combine the answers), but holds no
//! key share: it cannot decrypt. It does not check signatures (it has no
//! reason to trust its own checks; the contributors check the key holders'
//! shares and the key holders check every commitment, list signature and
//! ciphertext against the certificates relayed with the parameters; the
//! coordinator's own sum reads them as `Unauthenticated`). The
//! state is not stored: after a restart the round is reopened and every
//! key holder draws fresh keys.

use std::collections::{BTreeMap, BTreeSet};

use tessera_core::{ParticipantId, Timestamp};
use tessera_he::{HeParams, RoundId};
use tessera_proto::pb;
use tessera_proto::pb::sec_agg_reply::State as Reply;
use tessera_proto::pb::sec_agg_request::Step;

use super::{Federation, Refusal};

mod round;

pub(in crate::state) use round::HomomorphicRound;
use round::{HeStage, check_size};

impl Federation {
    /// Whether the plan aggregates homomorphically.
    pub(super) fn is_homomorphic(&self) -> bool {
        let secure = &self.plan.secure_aggregation;
        secure.enabled && secure.scheme == tessera_secagg::Scheme::Homomorphic
    }

    /// Starts homomorphic aggregation for training round `round` just
    /// opened with `cohort`.
    pub(super) fn open_homomorphic(
        &mut self,
        round: u32,
        cohort: &[ParticipantId],
        now: Timestamp,
    ) {
        let Some(n_values) = self.training.rounds().map(|e| e.global().n_values()) else {
            return;
        };
        let mut index: BTreeMap<String, u32> = cohort
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_str().to_string(), i as u32))
            .collect();
        let ids: Vec<u32> = (0..cohort.len() as u32).collect();
        let mut holders = Vec::new();
        for name in &self.plan.secure_aggregation.key_holders {
            let next = index.len() as u32;
            holders.push(*index.entry(name.clone()).or_insert(next));
        }
        let made = tessera_orchestrator::secure::training_params(&self.plan, round, &ids, n_values)
            .map_err(|e| e.to_string())
            .and_then(|params| {
                check_size(params.dimension, cohort.len())?;
                HeParams::shared()
                    .map(|he| (params, he))
                    .map_err(|e| e.to_string())
            });
        match made {
            Ok((params, he)) => {
                self.homomorphic = Some(HomomorphicRound {
                    round,
                    id: RoundId {
                        round,
                        seed: self.plan.secagg_graph_seed(round),
                    },
                    he,
                    params,
                    index,
                    members: ids.into_iter().collect(),
                    holders,
                    stage: HeStage::KeyCommitments,
                    deadline: now.plus(self.roster.liveness()),
                    key_commitments: BTreeMap::new(),
                    shares: BTreeMap::new(),
                    key: None,
                    commitments: BTreeMap::new(),
                    gone: BTreeSet::new(),
                    list: None,
                    reveals: BTreeMap::new(),
                    revealing: BTreeMap::new(),
                    answering: BTreeMap::new(),
                    sum: None,
                    answers: BTreeMap::new(),
                });
                self.audit(
                    "-",
                    "homomorphic-aggregation",
                    "opened",
                    &format!(
                        "round {round}: {} contributors, key holders {}",
                        cohort.len(),
                        self.plan.secure_aggregation.key_holders.join(", ")
                    ),
                );
                self.version += 1;
            }
            Err(e) => {
                tracing::error!(round, %e, "homomorphic aggregation cannot start");
                self.audit("-", "homomorphic-aggregation", "failed", &e);
                // No round of this run could start: it stops, saying why.
                if self.stopped.is_none() {
                    let reason = format!("homomorphic aggregation cannot run: {e}");
                    self.audit("-", "run", "stopped", &reason);
                    self.stopped = Some(reason);
                }
                if let Some(engine) = self.training.rounds_mut() {
                    for p in cohort {
                        engine.report_dropout(p);
                    }
                }
            }
        }
    }

    /// `site` left the open round: a contributor that has not committed is
    /// not waited for; one listed fails the round at once (the key holders
    /// decrypt the whole list's sum or nothing). A key holder is waited for
    /// as one until its stage's deadline (its site may withdraw as a
    /// contributor and still answer).
    pub(super) fn homomorphic_withdraw(&mut self, site: &str) {
        if let Some(he) = self.homomorphic.as_mut()
            && let Some(&id) = he.index.get(site)
            && he.members.contains(&id)
        {
            he.gone.insert(id);
        }
    }

    /// The step the run waits in, for the status view.
    pub(super) fn homomorphic_awaited(&self) -> Option<(String, Vec<String>)> {
        let he = self.homomorphic.as_ref()?;
        let (stage, sites) = he.awaited();
        (!sites.is_empty()).then(|| {
            (
                format!("homomorphic aggregation of round {}: {stage}", he.round),
                sites,
            )
        })
    }

    /// Training round `round` closed (`status`: its deadline passed, or its
    /// quorum) while its homomorphic aggregation was still under way: the
    /// aggregation ends, audited as failed, and the sites' polls are told
    /// their input did not count (the key holders stop working for it).
    pub(super) fn abandon_homomorphic(&mut self, round: u32, status: &str) {
        if self.homomorphic.as_ref().is_none_or(|he| he.round != round) {
            return;
        }
        self.homomorphic = None;
        self.sum_counted = Some((round, Default::default()));
        let detail =
            format!("round {round}: the round closed ({status}) before its sum was decrypted");
        self.audit("-", "homomorphic-aggregation", "failed", &detail);
        self.version += 1;
    }

    /// One `SecureAggregation` request of a homomorphic run.
    pub(super) fn homomorphic_step(
        &mut self,
        site: &str,
        round: u32,
        step: Option<Step>,
        now: Timestamp,
    ) -> Result<pb::SecAggReply, Refusal> {
        let reply = |state| Ok(pb::SecAggReply { state: Some(state) });
        let finished = matches!(self.phase, super::Phase::Finished);
        // A round that is over: whether the site's input counted.
        let counted = self
            .sum_counted
            .as_ref()
            .is_some_and(|(r, sites)| *r == round && sites.contains(site));
        let Some(he) = self.homomorphic.as_mut() else {
            // Between rounds: a key holder waits, a contributor is done.
            return match step {
                Some(Step::HeHolder(_)) if !finished => reply(Reply::Wait(true)),
                _ => reply(Reply::Done(counted)),
            };
        };
        if round != he.round && !matches!(step, Some(Step::HeHolder(_))) {
            // A step of a round that is over (or was reopened after a
            // restart; the next may have opened at its last step, without
            // this site): stop, told whether its input counted.
            return reply(Reply::Done(counted));
        }
        let Some(&id) = he.index.get(site) else {
            return match step {
                Some(Step::HeHolder(_)) => Err(Refusal::Denied(format!(
                    "site '{site}' is not a key holder of this run"
                ))),
                _ => Err(Refusal::Denied(format!(
                    "site '{site}' is not in round {}'s cohort",
                    he.round
                ))),
            };
        };
        let holder = he.holders.contains(&id);
        if let Some(Step::HeHolder(_)) = step {
            if !holder {
                return Err(Refusal::Denied(format!(
                    "site '{site}' is not a key holder of this run"
                )));
            }
            let (stage, key_commitments) = match he.stage {
                HeStage::KeyCommitments if !he.key_commitments.contains_key(&id) => (1, Vec::new()),
                HeStage::Keys if !he.shares.contains_key(&id) => (3, he.key_commitments_pb()),
                // From the list's close: a key holder fetches each
                // contribution once it is revealed (1.33).
                HeStage::Reveal | HeStage::Answer if !he.answers.contains_key(&id) => {
                    (2, Vec::new())
                }
                _ => return reply(Reply::Wait(true)),
            };
            return reply(Reply::HeTask(pb::HeHolderTask {
                round: he.round,
                stage,
                key_commitments,
            }));
        }
        let outcome = he.receive(site, id, step, &self.certificates);
        if let Err(e) = &outcome {
            self.audit(site, "homomorphic-aggregation", "rejected", &e.to_string());
        }
        self.advance_homomorphic(now);
        outcome.map(|state| pb::SecAggReply { state: Some(state) })
    }

    /// Moves the open round on; once done (or failed), hands the decoded
    /// sum to the engine.
    pub(super) fn advance_homomorphic(&mut self, now: Timestamp) {
        let liveness = self.roster.liveness();
        let min = self.plan.federation.min_participants;
        let Some(he) = self.homomorphic.as_mut() else {
            return;
        };
        let mut moved = false;
        while he.advance(now, liveness, min) {
            moved = true;
        }
        if moved {
            self.version += 1;
        }
        if !matches!(he.stage, HeStage::Done(_) | HeStage::Failed(_)) {
            return;
        }
        let Some(he) = self.homomorphic.take() else {
            return;
        };
        let round = he.round;
        let contributors: Vec<u32> = he
            .list
            .as_ref()
            .map(|l| l.entries().iter().map(|c| c.from).collect())
            .unwrap_or_default();
        let names: Vec<&str> = contributors.iter().map(|&i| he.name_of(i)).collect();
        let decoded = match &he.stage {
            HeStage::Done(values) => self
                .training
                .rounds()
                .map(|e| e.global().clone())
                .ok_or_else(|| "the run has no model".to_string())
                .and_then(|global| {
                    let kept = self.plan.secure_coordinates(round, global.n_values());
                    tessera_orchestrator::secure::update_of_sum(
                        values,
                        contributors.len(),
                        &he.params,
                        &global,
                        kept.as_deref(),
                    )
                    .map_err(|e| e.to_string())
                })
                .and_then(|update| {
                    self.check_secure_sums(&names, update.n_examples, update.stats.n_steps)
                        .map(|()| update)
                }),
            HeStage::Failed(reason) => Err(reason.clone()),
            _ => return,
        };
        let update = match decoded {
            Ok(update) => Some(update),
            Err(e) => {
                tracing::warn!(round, %e, "homomorphic aggregation failed");
                let detail = format!("round {round}: {e}");
                self.audit("-", "homomorphic-aggregation", "failed", &detail);
                None
            }
        };
        let mut refused = None;
        let Some(engine) = self.training.rounds_mut() else {
            return;
        };
        let counted: Vec<ParticipantId> = match update {
            Some(update) => {
                let ids: Vec<ParticipantId> =
                    names.iter().map(|n| ParticipantId::new(*n)).collect();
                match engine.submit_sum(now, round, &ids, &update) {
                    Ok(()) => ids,
                    Err(e) => {
                        tracing::warn!(round, %e, "the homomorphic sum was refused");
                        refused = Some(format!("round {round}: the sum was refused: {e}"));
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        };
        for &m in &he.members {
            let p = ParticipantId::new(he.name_of(m));
            if !counted.contains(&p) {
                engine.report_dropout(&p);
            }
        }
        if let Some(reason) = refused {
            self.audit("-", "homomorphic-aggregation", "failed", &reason);
        }
        self.sum_counted = Some((
            round,
            counted.iter().map(|p| p.as_str().to_string()).collect(),
        ));
        if !counted.is_empty() {
            let detail = format!(
                "round {round}: the sum of {} of {} updates, decrypted by key holders {}",
                counted.len(),
                he.members.len(),
                self.plan.secure_aggregation.key_holders.join(", ")
            );
            self.audit("-", "homomorphic-aggregation", "completed", &detail);
        }
        self.version += 1;
    }
}
