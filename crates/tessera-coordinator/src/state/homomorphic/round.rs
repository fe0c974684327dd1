//! A homomorphic round's state: its stages, what each waits for, and the
//! messages it takes (checked and refused naming why); `super` is the
//! coordinator's glue.

use std::collections::{BTreeMap, BTreeSet};

use tessera_core::Timestamp;
use tessera_he::{
    Answer, Commitment, CommitmentList, Contribution, EndorsedKey, HeParams, KeyCommitment,
    KeyShare, Reveal, RoundId, VerifiedSum,
};
use tessera_proto::pb;
use tessera_proto::pb::sec_agg_reply::State as Reply;
use tessera_proto::pb::sec_agg_request::Step;
use tessera_secagg::{RoundParams, Unauthenticated};

use crate::state::Refusal;

/// Where a homomorphic round is.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum HeStage {
    KeyCommitments,
    Keys,
    Commit,
    Reveal,
    Answer,
    /// Combined: the summed values.
    Done(Vec<u32>),
    Failed(String),
}

impl HeStage {
    pub(super) fn name(&self) -> &'static str {
        match self {
            HeStage::KeyCommitments => "key commitments",
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
pub(in crate::state) struct HomomorphicRound {
    pub(super) round: u32,
    pub(super) id: RoundId,
    pub(super) he: HeParams,
    /// Quantisation and the contributors' check, as SecAgg+'s.
    pub(super) params: RoundParams,
    /// Every party's id: the cohort's in its order, then key holders that
    /// are not in it.
    pub(super) index: BTreeMap<String, u32>,
    pub(super) members: BTreeSet<u32>,
    pub(super) holders: Vec<u32>,
    pub(super) stage: HeStage,
    pub(super) deadline: Timestamp,
    pub(super) key_commitments: BTreeMap<u32, KeyCommitment>,
    pub(super) shares: BTreeMap<u32, KeyShare>,
    pub(super) key: Option<EndorsedKey>,
    pub(super) commitments: BTreeMap<u32, Commitment>,
    /// Members that left the round: before committing, left out of the
    /// list; listed, the list's sum cannot be made (the round fails at
    /// once, not at the reveals' deadline).
    pub(super) gone: BTreeSet<u32>,
    pub(super) list: Option<CommitmentList>,
    /// The reveals, as they came (relayed to the key holders).
    pub(super) reveals: BTreeMap<u32, pb::HeContribution>,
    /// Reveals and answers arriving in pieces.
    pub(super) revealing: BTreeMap<u32, pb::HeContribution>,
    pub(super) answering: BTreeMap<u32, pb::HeAnswer>,
    pub(super) sum: Option<VerifiedSum>,
    pub(super) answers: BTreeMap<u32, Answer>,
}

impl HomomorphicRound {
    pub(super) fn name_of(&self, id: u32) -> &str {
        self.index
            .iter()
            .find(|(_, i)| **i == id)
            .map_or("?", |(s, _)| s.as_str())
    }

    /// The open stage's name and the sites it still waits for.
    pub(super) fn awaited(&self) -> (&'static str, Vec<String>) {
        let waiting: Vec<u32> = match &self.stage {
            HeStage::KeyCommitments => (self.holders.iter())
                .filter(|h| !self.key_commitments.contains_key(h))
                .copied()
                .collect(),
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

    pub(super) fn key_commitments_pb(&self) -> Vec<pb::HeKeyCommitmentFrom> {
        self.key_commitments
            .values()
            .map(|c| pb::HeKeyCommitmentFrom {
                from: c.from,
                digest: c.digest.to_vec(),
                signature: c.signature.clone(),
            })
            .collect()
    }

    pub(super) fn params_pb(
        &self,
        id: u32,
        certificates: &BTreeMap<String, Vec<u8>>,
    ) -> pb::SecAggParams {
        let p = &self.params;
        let site_of = |i: &u32| self.name_of(*i).to_string();
        let certificate = |i: &u32| {
            certificates
                .get(self.name_of(*i))
                .cloned()
                .unwrap_or_default()
        };
        pb::SecAggParams {
            key_holders: self.holders.clone(),
            key_holder_sites: self.holders.iter().map(site_of).collect(),
            key_holder_certificates: self.holders.iter().map(certificate).collect(),
            ..crate::state::secure::params_to_pb(
                p,
                id,
                p.participants.iter().map(site_of).collect(),
                p.participants.iter().map(certificate).collect(),
            )
        }
    }

    /// Moves on from the current stage when nobody is awaited or its
    /// deadline has passed; true when the stage changed.
    pub(super) fn advance(
        &mut self,
        now: Timestamp,
        liveness: std::time::Duration,
        min: usize,
    ) -> bool {
        let (_, waiting) = self.awaited();
        // Listed contributors that withdrew: the reveals cannot complete.
        let withdrawn: Vec<&str> = (self.list.iter())
            .filter(|_| self.stage == HeStage::Reveal)
            .flat_map(|l| l.entries().iter().map(|c| c.from))
            .filter(|m| self.gone.contains(m) && !self.reveals.contains_key(m))
            .map(|m| self.name_of(m))
            .collect();
        let late = now >= self.deadline || !withdrawn.is_empty();
        if !waiting.is_empty() && !late {
            return false;
        }
        let next = match &self.stage {
            HeStage::KeyCommitments if !waiting.is_empty() => HeStage::Failed(format!(
                "key holder(s) {} sent no key commitment in time; a sum is decrypted by every \
                 key holder or not at all",
                waiting.join(", ")
            )),
            HeStage::KeyCommitments => HeStage::Keys,
            HeStage::Keys if !waiting.is_empty() => HeStage::Failed(format!(
                "key holder(s) {} sent no key share in time; a sum is decrypted by every key \
                 holder or not at all",
                waiting.join(", ")
            )),
            HeStage::Keys => {
                let shares: Vec<KeyShare> = self.shares.values().cloned().collect();
                let commitments: Vec<KeyCommitment> =
                    self.key_commitments.values().cloned().collect();
                let key = EndorsedKey::assemble(
                    &self.he,
                    self.id,
                    &commitments,
                    &shares,
                    &self.holders,
                    &Unauthenticated,
                );
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
            HeStage::Reveal if !withdrawn.is_empty() => HeStage::Failed(format!(
                "listed contributor(s) {} withdrew before revealing; the key holders decrypt \
                 the whole list's sum or nothing",
                withdrawn.join(", ")
            )),
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
        // Key holders fetch and check every contribution before they
        // answer: a liveness period more for each 256 MiB of them.
        let periods = match next {
            HeStage::Answer => {
                let bytes: u64 = (self.reveals.values())
                    .flat_map(|r| r.ciphertexts.iter().map(|c| c.len() as u64))
                    .sum();
                1 + u32::try_from(bytes >> 28).unwrap_or(u32::MAX)
            }
            _ => 1,
        };
        self.stage = next;
        self.deadline = now.plus(liveness.saturating_mul(periods));
        true
    }

    /// One step of `site` (id `id`) in this round: the reply, or why it
    /// was refused.
    pub(super) fn receive(
        &mut self,
        site: &str,
        id: u32,
        step: Option<Step>,
        certificates: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Reply, Refusal> {
        let holder = self.holders.contains(&id);
        let over = matches!(self.stage, HeStage::Done(_) | HeStage::Failed(_));
        let member = self.members.contains(&id);
        match step {
            None => Err(Refusal::Invalid(
                "an empty secure-aggregation request".into(),
            )),
            // Not reached: a round done is taken at once (its outcome is
            // then `sum_counted`'s).
            Some(_) if over => Ok(Reply::Done(false)),
            Some(Step::Poll(1)) => Ok(Reply::Params(self.params_pb(id, certificates))),
            Some(Step::Poll(2)) if self.key.is_some() => Ok(Reply::HeKeys(pb::HeKeyShares {
                commitments: self.key_commitments_pb(),
                shares: self
                    .shares
                    .values()
                    .map(|k| pb::HeKeyShareFrom {
                        from: k.from,
                        share: k.share.clone(),
                        signature: k.signature.clone(),
                    })
                    .collect(),
            })),
            Some(Step::Poll(3)) => match &self.list {
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
            Some(Step::HeKeyCommitment(c)) => {
                if !holder
                    || self.stage != HeStage::KeyCommitments
                    || self.key_commitments.contains_key(&id)
                {
                    Err(Refusal::Invalid(format!(
                        "a key commitment from '{site}' now (stage {})",
                        self.stage.name()
                    )))
                } else if c.signature.len() > MAX_SIGNATURE {
                    Err(Refusal::Invalid(format!(
                        "a signature of {} bytes",
                        c.signature.len()
                    )))
                } else {
                    digest32(&c.digest, "the key commitment's digest").map(|digest| {
                        self.key_commitments.insert(
                            id,
                            KeyCommitment {
                                from: id,
                                digest,
                                signature: c.signature,
                            },
                        );
                        Reply::Wait(true)
                    })
                }
            }
            Some(Step::HeKeyShare(k)) => {
                let committed = self.key_commitments.get(&id).map(|c| c.digest);
                let digest = tessera_he::share_digest(&k.share);
                if !holder || self.stage != HeStage::Keys || self.shares.contains_key(&id) {
                    Err(Refusal::Invalid(format!(
                        "a key share from '{site}' now (stage {})",
                        self.stage.name()
                    )))
                } else if committed != Some(digest) {
                    Err(Refusal::Invalid(format!(
                        "key holder '{site}''s key share does not match its commitment"
                    )))
                } else if k.signature.len() > MAX_SIGNATURE {
                    Err(Refusal::Invalid(format!(
                        "a signature of {} bytes",
                        k.signature.len()
                    )))
                } else {
                    self.shares.insert(
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
                if !member || self.stage != HeStage::Commit || self.commitments.contains_key(&id) {
                    Err(Refusal::Invalid(format!(
                        "a commitment from '{site}' now (stage {})",
                        self.stage.name()
                    )))
                } else if c.signature.len() > MAX_SIGNATURE {
                    Err(Refusal::Invalid(format!(
                        "a signature of {} bytes",
                        c.signature.len()
                    )))
                } else if c.length as usize != self.params.dimension {
                    Err(Refusal::Invalid(format!(
                        "a commitment to {} values; the round has {}",
                        c.length, self.params.dimension
                    )))
                } else {
                    digest32(&c.digest, "the commitment's digest").map(|digest| {
                        self.commitments.insert(
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
            Some(Step::HeReveal(r)) => self.reveal(site, id, r),
            // Not yet revealed, while the reveals are open: asked again soon.
            Some(Step::HeFetch(f))
                if holder
                    && self.stage == HeStage::Reveal
                    && !self.reveals.contains_key(&f.from)
                    && (self.list.iter()).any(|l| l.entries().iter().any(|c| c.from == f.from)) =>
            {
                Ok(Reply::Wait(true))
            }
            Some(Step::HeFetch(f)) => match self.reveals.get(&f.from) {
                Some(c) if holder && matches!(self.stage, HeStage::Reveal | HeStage::Answer) => {
                    let first = f.first as usize;
                    if first >= c.ciphertexts.len() {
                        Err(Refusal::Invalid(format!(
                            "no ciphertext {first} of {}'s {}",
                            f.from,
                            c.ciphertexts.len()
                        )))
                    } else {
                        // A key holder's share depends on the second
                        // polynomials alone: those, with the first's digests.
                        let last = (first + tessera_he::PIECE).min(c.ciphertexts.len());
                        let seconds = c.ciphertexts[first..last].iter();
                        Ok(Reply::HeContribution(pb::HeContribution {
                            from: c.from,
                            list_signature: c.list_signature.clone(),
                            ciphertexts: Vec::new(),
                            first: f.first,
                            total: c.ciphertexts.len() as u32,
                            second_polynomials: seconds
                                .map(|ct| {
                                    ct.get(tessera_he::POLYNOMIAL_BYTES..)
                                        .unwrap_or_default()
                                        .to_vec()
                                })
                                .collect(),
                            first_digests: (c.first_digests.get(first..last))
                                .unwrap_or_default()
                                .to_vec(),
                        }))
                    }
                }
                _ => Err(Refusal::Invalid(format!(
                    "no contribution of {} for '{site}' now (stage {})",
                    f.from,
                    self.stage.name()
                ))),
            },
            Some(Step::HeAnswer(a)) => self.answer(site, id, holder, a),
            Some(other) => Err(Refusal::Invalid(format!(
                "{} is no step of a homomorphic round",
                match other {
                    Step::Buffer(_) => "a buffer join",
                    _ => "a SecAgg+ message",
                }
            ))),
        }
    }

    /// A piece of `site`'s reveal: appended in order; the piece that
    /// completes the contribution has it checked against its commitment and
    /// added to the coordinator's sum (refused, the site may send it again
    /// from its first piece).
    fn reveal(&mut self, site: &str, id: u32, r: pb::HeReveal) -> Result<Reply, Refusal> {
        let listed = (self.list.as_ref())
            .and_then(|l| l.entries().iter().find(|c| c.from == id))
            .cloned();
        let Some(commitment) =
            listed.filter(|_| self.stage == HeStage::Reveal && !self.reveals.contains_key(&id))
        else {
            return Err(Refusal::Invalid(format!(
                "a reveal from '{site}' now (stage {}; listed or already revealed)",
                self.stage.name()
            )));
        };
        if r.list_signature.len() > MAX_SIGNATURE {
            return Err(Refusal::Invalid(format!(
                "a signature of {} bytes",
                r.list_signature.len()
            )));
        }
        let total = HeParams::ciphertexts_for(self.params.dimension);
        if r.first == 0 {
            // A first piece starts the reveal (again).
            self.revealing.remove(&id);
        }
        let partial = self
            .revealing
            .entry(id)
            .or_insert_with(|| pb::HeContribution {
                from: id,
                list_signature: r.list_signature.clone(),
                ciphertexts: Vec::new(),
                first: 0,
                total: total as u32,
                second_polynomials: Vec::new(),
                first_digests: Vec::new(),
            });
        let have = partial.ciphertexts.len();
        let piece = r.ciphertexts.len();
        let refusal = if r.first as usize != have {
            Some(format!(
                "a piece from ciphertext {}; {have} came so far",
                r.first
            ))
        } else if piece == 0 || piece > tessera_he::PIECE || have + piece > total {
            Some(format!(
                "a piece of {piece} ciphertexts from {have} (a piece carries 1 to {}, the \
                 contribution {total})",
                tessera_he::PIECE
            ))
        } else if let Some(c) =
            tessera_he::misfit_length(&r.ciphertexts, tessera_he::CIPHERTEXT_BYTES, "ciphertext")
        {
            Some(c)
        } else if r.list_signature != partial.list_signature {
            Some("a piece signed otherwise than the first".into())
        } else {
            None
        };
        if let Some(why) = refusal {
            self.revealing.remove(&id);
            return Err(Refusal::Invalid(format!(
                "{why}; send the reveal again from its start"
            )));
        }
        partial.ciphertexts.extend(r.ciphertexts);
        if partial.ciphertexts.len() < total {
            return Ok(Reply::Wait(true));
        }
        let Some(mut done) = self.revealing.remove(&id) else {
            return Ok(Reply::Wait(true));
        };
        let sum = self
            .sum
            .as_mut()
            .ok_or_else(|| Refusal::Invalid("the round has no sum".into()))?;
        let first_digests = Contribution::from_wire(&self.he, commitment, &done.ciphertexts)
            .and_then(|contribution| {
                let revealed = Reveal {
                    contribution,
                    list_signature: done.list_signature.clone(),
                };
                let first_digests = revealed.contribution.first_digests();
                sum.absorb(&revealed, &Unauthenticated)
                    .map(|()| first_digests)
            })
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        // Kept for the key holders' fetches (computed here once).
        done.first_digests = first_digests.iter().map(|d| d.to_vec()).collect();
        self.reveals.insert(id, done);
        Ok(Reply::Wait(true))
    }

    /// A piece of key holder `site`'s answer: appended in order; complete,
    /// it is read and kept for the combination.
    fn answer(
        &mut self,
        site: &str,
        id: u32,
        holder: bool,
        a: pb::HeAnswer,
    ) -> Result<Reply, Refusal> {
        if !holder || self.stage != HeStage::Answer || self.answers.contains_key(&id) {
            return Err(Refusal::Invalid(format!(
                "an answer from '{site}' now (stage {})",
                self.stage.name()
            )));
        }
        if a.signature.len() > MAX_SIGNATURE {
            return Err(Refusal::Invalid(format!(
                "a signature of {} bytes",
                a.signature.len()
            )));
        }
        let total = HeParams::ciphertexts_for(self.params.dimension);
        if a.first == 0 {
            // A first piece starts the answer (again).
            self.answering.remove(&id);
        }
        let partial = self.answering.entry(id).or_insert_with(|| pb::HeAnswer {
            sum_digest: a.sum_digest.clone(),
            shares: Vec::new(),
            signature: a.signature.clone(),
            first: 0,
        });
        let have = partial.shares.len();
        let piece = a.shares.len();
        let refusal = if a.first as usize != have {
            Some(format!(
                "a piece from share {}; {have} came so far",
                a.first
            ))
        } else if piece == 0 || piece > tessera_he::PIECE || have + piece > total {
            Some(format!(
                "a piece of {piece} decryption shares from {have} (a piece carries 1 to {}, \
                 the sum has {total} ciphertexts)",
                tessera_he::PIECE
            ))
        } else if let Some(c) =
            tessera_he::misfit_length(&a.shares, tessera_he::POLYNOMIAL_BYTES, "decryption share")
        {
            Some(c)
        } else if a.sum_digest.len() != 32 {
            Some(format!(
                "a sum digest of {} bytes, not 32",
                a.sum_digest.len()
            ))
        } else if a.sum_digest != partial.sum_digest || a.signature != partial.signature {
            Some("a piece for another sum or signed otherwise than the first".into())
        } else {
            None
        };
        if let Some(why) = refusal {
            self.answering.remove(&id);
            return Err(Refusal::Invalid(format!(
                "{why}; send the answer again from its start"
            )));
        }
        partial.shares.extend(a.shares);
        if partial.shares.len() < total {
            return Ok(Reply::Wait(true));
        }
        let Some(done) = self.answering.remove(&id) else {
            return Ok(Reply::Wait(true));
        };
        let digest = digest32(&done.sum_digest, "the answer's sum digest")?;
        let answer = Answer::from_wire(&self.he, id, digest, &done.shares, done.signature)
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        self.answers.insert(id, answer);
        Ok(Reply::Wait(true))
    }
}

/// The most bytes of contributions a round keeps at the coordinator (to
/// relay them to the key holders).
const MAX_ROUND_BYTES: u64 = 4 << 30;

/// Refuses a round whose contributions do not fit the coordinator's memory
/// budget all together.
pub(super) fn check_size(dimension: usize, contributors: usize) -> Result<(), String> {
    let per_site =
        HeParams::ciphertexts_for(dimension) as u64 * (2 * HeParams::polynomial_bytes() + 96);
    let all = per_site.saturating_mul(contributors as u64);
    if all > MAX_ROUND_BYTES {
        return Err(format!(
            "{contributors} contributions of {} KiB each take {} MiB at the coordinator, past \
             its {} MiB for one round: a smaller cohort (clients_per_round) or model",
            per_site >> 10,
            all >> 20,
            MAX_ROUND_BYTES >> 20
        ));
    }
    Ok(())
}

/// The longest signature kept (an ECDSA P-256 signature in DER is at most
/// 72 bytes, an Ed25519 one 64).
pub(super) const MAX_SIGNATURE: usize = 256;

/// `bytes` as 32 bytes, or refused naming `what`.
fn digest32(bytes: &[u8], what: &str) -> Result<[u8; 32], Refusal> {
    bytes
        .try_into()
        .map_err(|_| Refusal::Invalid(format!("{what} is {} bytes, not 32", bytes.len())))
}
