//! Homomorphic aggregation in deployment (1.29, `homomorphic-aggregation`;
//! `secure_aggregation.scheme = "homomorphic"`): a synchronous training
//! round's cohort encrypts its quantised updates under a joint key of the
//! plan's key holders, and the engine receives only the decrypted sum.
//!
//! Stages, each closed when everyone it waits for has answered or after the
//! liveness period: **keys** (every key holder's signed public key share;
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
use tessera_he::{
    Answer, Commitment, CommitmentList, Contribution, EndorsedKey, HeParams, KeyShare, Reveal,
    RoundId, VerifiedSum,
};
use tessera_proto::pb;
use tessera_proto::pb::sec_agg_reply::State as Reply;
use tessera_proto::pb::sec_agg_request::Step;
use tessera_secagg::{RoundParams, Unauthenticated};

use super::{Federation, Refusal};

/// Where a homomorphic round is.
#[derive(Debug, Clone, PartialEq)]
enum HeStage {
    Keys,
    Commit,
    Reveal,
    Answer,
    /// Combined: the summed values.
    Done(Vec<u32>),
    Failed(String),
}

impl HeStage {
    fn name(&self) -> &'static str {
        match self {
            HeStage::Keys => "key shares",
            HeStage::Commit => "commitments",
            HeStage::Reveal => "reveals",
            HeStage::Answer => "answers",
            HeStage::Done(_) => "done",
            HeStage::Failed(_) => "failed",
        }
    }
}

/// A training round's homomorphic aggregation in progress.
pub(super) struct HomomorphicRound {
    pub(super) round: u32,
    id: RoundId,
    he: HeParams,
    /// Quantisation and the contributors' check, as SecAgg+'s.
    params: RoundParams,
    /// Every party's id: the cohort's in its order, then key holders that
    /// are not in it.
    index: BTreeMap<String, u32>,
    members: BTreeSet<u32>,
    holders: Vec<u32>,
    stage: HeStage,
    deadline: Timestamp,
    shares: BTreeMap<u32, KeyShare>,
    key: Option<EndorsedKey>,
    commitments: BTreeMap<u32, Commitment>,
    /// Members that left before committing.
    gone: BTreeSet<u32>,
    list: Option<CommitmentList>,
    /// The reveals, as they came (relayed to the key holders).
    reveals: BTreeMap<u32, pb::HeContribution>,
    sum: Option<VerifiedSum>,
    answers: BTreeMap<u32, Answer>,
}

impl HomomorphicRound {
    fn name_of(&self, id: u32) -> &str {
        self.index
            .iter()
            .find(|(_, i)| **i == id)
            .map_or("?", |(s, _)| s.as_str())
    }

    /// The open stage's name and the sites it still waits for.
    pub(super) fn awaited(&self) -> (&'static str, Vec<String>) {
        let waiting: Vec<u32> = match &self.stage {
            HeStage::Keys => (self.holders.iter())
                .filter(|h| !self.shares.contains_key(h))
                .copied()
                .collect(),
            HeStage::Commit => (self.members.iter())
                .filter(|m| !self.commitments.contains_key(m) && !self.gone.contains(m))
                .copied()
                .collect(),
            HeStage::Reveal => (self.list.iter())
                .flat_map(|l| l.entries().iter().map(|c| c.from))
                .filter(|m| !self.reveals.contains_key(m))
                .collect(),
            HeStage::Answer => (self.holders.iter())
                .filter(|h| !self.answers.contains_key(h))
                .copied()
                .collect(),
            HeStage::Done(_) | HeStage::Failed(_) => Vec::new(),
        };
        let sites = waiting
            .into_iter()
            .map(|i| self.name_of(i).to_string())
            .collect();
        (self.stage.name(), sites)
    }

    fn params_pb(&self, id: u32, certificates: &BTreeMap<String, Vec<u8>>) -> pb::SecAggParams {
        let p = &self.params;
        let site_of = |i: &u32| self.name_of(*i).to_string();
        let certificate = |i: &u32| {
            certificates
                .get(self.name_of(*i))
                .cloned()
                .unwrap_or_default()
        };
        pb::SecAggParams {
            id,
            participants: p.participants.clone(),
            neighbours: p.neighbours as u32,
            threshold: p.threshold as u32,
            graph_seed: p.graph_seed.to_vec(),
            dimension: p.dimension as u32,
            range: p.range,
            sites: p.participants.iter().map(site_of).collect(),
            certificates: p.participants.iter().map(certificate).collect(),
            key_holders: self.holders.clone(),
            key_holder_sites: self.holders.iter().map(site_of).collect(),
            key_holder_certificates: self.holders.iter().map(certificate).collect(),
        }
    }

    /// Moves on from the current stage when nobody is awaited or its
    /// deadline has passed; true when the stage changed.
    fn advance(&mut self, now: Timestamp, liveness: std::time::Duration, min: usize) -> bool {
        let (_, waiting) = self.awaited();
        let late = now >= self.deadline;
        if !waiting.is_empty() && !late {
            return false;
        }
        let next = match &self.stage {
            HeStage::Keys if !waiting.is_empty() => HeStage::Failed(format!(
                "key holder(s) {} sent no key share in time; a sum is decrypted by every key \
                 holder or not at all",
                waiting.join(", ")
            )),
            HeStage::Keys => {
                let shares: Vec<KeyShare> =
                    std::mem::take(&mut self.shares).into_values().collect();
                let key = EndorsedKey::assemble(
                    &self.he,
                    self.id,
                    &shares,
                    &self.holders,
                    &Unauthenticated,
                );
                self.shares = shares.into_iter().map(|k| (k.from, k)).collect();
                match key {
                    Ok(key) => {
                        self.key = Some(key);
                        HeStage::Commit
                    }
                    Err(e) => HeStage::Failed(format!("the key holders' shares: {e}")),
                }
            }
            HeStage::Commit => {
                let entries: Vec<Commitment> = self.commitments.values().cloned().collect();
                let needed = min.max(2);
                let made = (entries.len() >= needed)
                    .then_some(())
                    .ok_or_else(|| {
                        format!(
                            "{} of {} contributors committed; a sum takes at least {needed}",
                            entries.len(),
                            self.members.len()
                        )
                    })
                    .and_then(|()| CommitmentList::new(entries).map_err(|e| e.to_string()))
                    .and_then(|list| {
                        let key = self.key.as_ref().ok_or("no joint key")?;
                        let length = self.params.dimension;
                        VerifiedSum::new(&self.he, key, length, list.clone(), &Unauthenticated)
                            .map(|sum| (list, sum))
                            .map_err(|e| e.to_string())
                    });
                match made {
                    Ok((list, sum)) => {
                        self.list = Some(list);
                        self.sum = Some(sum);
                        HeStage::Reveal
                    }
                    Err(e) => HeStage::Failed(e),
                }
            }
            HeStage::Reveal if !waiting.is_empty() => HeStage::Failed(format!(
                "listed contributor(s) {} did not reveal in time; the key holders decrypt the \
                 whole list's sum or nothing",
                waiting.join(", ")
            )),
            HeStage::Reveal => HeStage::Answer,
            HeStage::Answer if !waiting.is_empty() => HeStage::Failed(format!(
                "key holder(s) {} did not answer in time; a sum is decrypted by every key \
                 holder or not at all",
                waiting.join(", ")
            )),
            HeStage::Answer => {
                let answers: Vec<Answer> =
                    std::mem::take(&mut self.answers).into_values().collect();
                let combined = match &self.sum {
                    Some(sum) => tessera_he::combine(
                        &self.id,
                        answers,
                        &self.holders,
                        &self.he,
                        sum.ciphertexts(),
                        self.params.dimension,
                        &Unauthenticated,
                    )
                    .map_err(|e| e.to_string()),
                    None => Err("no sum".into()),
                };
                match combined {
                    Ok(values) => HeStage::Done(values),
                    Err(e) => HeStage::Failed(format!("the key holders' answers: {e}")),
                }
            }
            HeStage::Done(_) | HeStage::Failed(_) => return false,
        };
        self.stage = next;
        self.deadline = now.plus(liveness);
        true
    }
}

/// `bytes` as 32 bytes, or refused naming `what`.
fn digest32(bytes: &[u8], what: &str) -> Result<[u8; 32], Refusal> {
    bytes
        .try_into()
        .map_err(|_| Refusal::Invalid(format!("{what} is {} bytes, not 32", bytes.len())))
}

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
                HeParams::new()
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
                    stage: HeStage::Keys,
                    deadline: now.plus(self.roster.liveness()),
                    shares: BTreeMap::new(),
                    key: None,
                    commitments: BTreeMap::new(),
                    gone: BTreeSet::new(),
                    list: None,
                    reveals: BTreeMap::new(),
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
                if let Some(engine) = self.training.rounds_mut() {
                    for p in cohort {
                        engine.report_dropout(p);
                    }
                }
            }
        }
    }

    /// `site` left the open round: a contributor that has not committed is
    /// not waited for (one listed, or a key holder, fails the round at its
    /// deadline: it is not waited for past it).
    pub(super) fn homomorphic_withdraw(&mut self, site: &str) {
        if let Some(he) = self.homomorphic.as_mut()
            && let Some(&id) = he.index.get(site)
            && he.members.contains(&id)
            && !he.commitments.contains_key(&id)
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
        let Some(he) = self.homomorphic.as_mut() else {
            // Between rounds: a key holder waits, a contributor is done.
            return match step {
                Some(Step::HeHolder(_)) if !finished => reply(Reply::Wait(true)),
                _ => reply(Reply::Done(true)),
            };
        };
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
            let stage = match he.stage {
                HeStage::Keys if !he.shares.contains_key(&id) => 1,
                HeStage::Answer if !he.answers.contains_key(&id) => 2,
                _ => return reply(Reply::Wait(true)),
            };
            return reply(Reply::HeTask(pb::HeHolderTask {
                round: he.round,
                stage,
            }));
        }
        if round != he.round {
            // The round is over (or was reopened after a restart): stop.
            return reply(Reply::Done(true));
        }
        let over = matches!(he.stage, HeStage::Done(_) | HeStage::Failed(_));
        let member = he.members.contains(&id);
        let outcome: Result<Reply, Refusal> = match step {
            None => Err(Refusal::Invalid(
                "an empty secure-aggregation request".into(),
            )),
            Some(_) if over => Ok(Reply::Done(true)),
            Some(Step::Poll(1)) => Ok(Reply::Params(he.params_pb(id, &self.certificates))),
            Some(Step::Poll(2)) if he.key.is_some() => Ok(Reply::HeKeys(pb::HeKeyShares {
                shares: he
                    .shares
                    .values()
                    .map(|k| pb::HeKeyShareFrom {
                        from: k.from,
                        share: k.share.clone(),
                        signature: k.signature.clone(),
                    })
                    .collect(),
            })),
            Some(Step::Poll(3)) => match &he.list {
                Some(list) => Ok(Reply::HeList(pb::HeList {
                    commitments: list
                        .entries()
                        .iter()
                        .map(|c| pb::HeCommitmentFrom {
                            from: c.from,
                            length: c.length as u32,
                            digest: c.digest.to_vec(),
                            signature: c.signature.clone(),
                        })
                        .collect(),
                })),
                None => Ok(Reply::Wait(true)),
            },
            Some(Step::Poll(2 | 4)) => Ok(Reply::Wait(true)),
            Some(Step::Poll(want)) => Err(Refusal::Invalid(format!(
                "a homomorphic round has no stage {want}"
            ))),
            Some(Step::HeKeyShare(k)) => {
                if !holder || he.stage != HeStage::Keys || he.shares.contains_key(&id) {
                    Err(Refusal::Invalid(format!(
                        "a key share from '{site}' now (stage {})",
                        he.stage.name()
                    )))
                } else if k.share.len() > 2 * HeParams::polynomial_bytes() as usize + 1024 {
                    Err(Refusal::Invalid(format!(
                        "a key share of {} bytes",
                        k.share.len()
                    )))
                } else {
                    he.shares.insert(
                        id,
                        KeyShare {
                            from: id,
                            share: k.share,
                            signature: k.signature,
                        },
                    );
                    Ok(Reply::Wait(true))
                }
            }
            Some(Step::HeCommitment(c)) => {
                if !member || he.stage != HeStage::Commit || he.commitments.contains_key(&id) {
                    Err(Refusal::Invalid(format!(
                        "a commitment from '{site}' now (stage {})",
                        he.stage.name()
                    )))
                } else if c.length as usize != he.params.dimension {
                    Err(Refusal::Invalid(format!(
                        "a commitment to {} values; the round has {}",
                        c.length, he.params.dimension
                    )))
                } else {
                    digest32(&c.digest, "the commitment's digest").map(|digest| {
                        he.commitments.insert(
                            id,
                            Commitment {
                                from: id,
                                length: c.length as usize,
                                digest,
                                signature: c.signature,
                            },
                        );
                        Reply::Wait(true)
                    })
                }
            }
            Some(Step::HeReveal(r)) => {
                let listed = he
                    .list
                    .as_ref()
                    .and_then(|l| l.entries().iter().find(|c| c.from == id))
                    .cloned();
                match listed {
                    Some(commitment)
                        if he.stage == HeStage::Reveal && !he.reveals.contains_key(&id) =>
                    {
                        let read = Contribution::from_wire(&he.he, commitment, &r.ciphertexts)
                            .map_err(|e| Refusal::Invalid(e.to_string()))
                            .and_then(|contribution| {
                                let revealed = Reveal {
                                    contribution,
                                    list_signature: r.list_signature.clone(),
                                };
                                let sum = he.sum.as_mut().ok_or_else(|| {
                                    Refusal::Invalid("the round has no sum".into())
                                })?;
                                sum.absorb(&revealed, &Unauthenticated)
                                    .map_err(|e| Refusal::Invalid(e.to_string()))
                            });
                        read.map(|()| {
                            he.reveals.insert(
                                id,
                                pb::HeContribution {
                                    from: id,
                                    list_signature: r.list_signature,
                                    ciphertexts: r.ciphertexts,
                                },
                            );
                            Reply::Wait(true)
                        })
                    }
                    _ => Err(Refusal::Invalid(format!(
                        "a reveal from '{site}' now (stage {}; listed or already revealed)",
                        he.stage.name()
                    ))),
                }
            }
            Some(Step::HeFetch(from)) => match he.reveals.get(&from) {
                Some(c) if holder && he.stage == HeStage::Answer => {
                    Ok(Reply::HeContribution(c.clone()))
                }
                _ => Err(Refusal::Invalid(format!(
                    "no contribution of {from} for '{site}' now (stage {})",
                    he.stage.name()
                ))),
            },
            Some(Step::HeAnswer(a)) => {
                if !holder || he.stage != HeStage::Answer || he.answers.contains_key(&id) {
                    Err(Refusal::Invalid(format!(
                        "an answer from '{site}' now (stage {})",
                        he.stage.name()
                    )))
                } else if a.shares.len() != HeParams::ciphertexts_for(he.params.dimension) {
                    Err(Refusal::Invalid(format!(
                        "an answer of {} decryption shares; the sum has {} ciphertexts",
                        a.shares.len(),
                        HeParams::ciphertexts_for(he.params.dimension)
                    )))
                } else {
                    digest32(&a.sum_digest, "the answer's sum digest").and_then(|digest| {
                        Answer::from_wire(&he.he, id, digest, &a.shares, a.signature)
                            .map_err(|e| Refusal::Invalid(e.to_string()))
                            .map(|answer| {
                                he.answers.insert(id, answer);
                                Reply::Wait(true)
                            })
                    })
                }
            }
            Some(other) => Err(Refusal::Invalid(format!(
                "{} is no step of a homomorphic round",
                match other {
                    Step::Buffer(_) => "a buffer join",
                    _ => "a SecAgg+ message",
                }
            ))),
        };
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
