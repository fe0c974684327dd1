//! A site's side of a homomorphic round (1.29, `homomorphic-aggregation`;
//! `secure_aggregation.scheme = "homomorphic"`): as a contributor, its
//! update quantised as for SecAgg+, encrypted under the key holders' joint
//! key (which it adds up itself from their signed shares, each checked
//! against its key holder's commitment), committed, then revealed under its
//! signature of the closed list; as one of the plan's key holders, its
//! commitment to a fresh key share each round (from this site's own
//! secret), the share once every key holder has committed, and its answer: the decryption shares of a sum it computed and
//! checked itself from every listed contribution (`tessera_he`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_he::{
    Answer, Commitment, CommitmentList, Contribution, EndorsedKey, HeParams, KeyCommitment,
    KeyHolder, KeyShare, Reveal, RoundId, VerifiedSum,
};
use tessera_proto::pb;
use tessera_proto::pb::federation_client::FederationClient;
use tessera_proto::pb::sec_agg_reply::State;
use tessera_proto::pb::sec_agg_request::Step;
use tonic::transport::Channel;

use super::identity::{RoundIdentity, identity_is_own};
use super::secure::poll_pause;
use super::{Failure, SecureIdentity, withdraw};

/// How a refusal of a homomorphic round starts its message.
const REFUSED: &str = "homomorphic aggregation refused: ";

/// How the coordinator's refusal of a step starts its message.
const NOT_TAKEN: &str = "the coordinator did not take this site's step: ";

fn refuse(round: u32, why: impl std::fmt::Display) -> Failure {
    tracing::error!(round, %why, "homomorphic aggregation: this site refuses the round");
    Failure::Retry(format!("{REFUSED}{why}"))
}

fn bad(what: impl std::fmt::Display) -> Failure {
    Failure::Retry(format!("homomorphic aggregation: {what}"))
}

/// One site's requests in round `round`.
struct Caller<'a> {
    client: &'a mut FederationClient<Channel>,
    site: &'a str,
    round: u32,
}

impl Caller<'_> {
    async fn call(&mut self, step: Step) -> Result<Option<State>, Failure> {
        let reply = self
            .client
            .secure_aggregation(pb::SecAggRequest {
                site: self.site.to_string(),
                round: self.round,
                step: Some(step),
            })
            .await;
        match reply {
            Ok(reply) => Ok(reply.into_inner().state),
            // The coordinator refused the step (late, say): this round goes
            // on without it; the session does not end for it.
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                Err(Failure::Retry(format!("{NOT_TAKEN}{}", status.message())))
            }
            Err(status) => Err(status.into()),
        }
    }

    /// Waits for stage `want`; `None` when the round is over.
    async fn wait_for(&mut self, want: u32) -> Result<Option<State>, Failure> {
        loop {
            let asked = Instant::now();
            match self.call(Step::Poll(want)).await? {
                Some(State::Wait(w)) => tokio::time::sleep(poll_pause(w, asked)).await,
                Some(State::Done(_)) => return Ok(None),
                Some(other) => return Ok(Some(other)),
                None => return Err(bad("an empty reply")),
            }
        }
    }
}

/// What the parameters of a round tell a party, checked against the plan.
struct Setup {
    p: pb::SecAggParams,
    /// Every party (cohort and key holders, each once): ids, sites,
    /// certificates.
    ids: Vec<u32>,
    sites: Vec<String>,
    certificates: Vec<Vec<u8>>,
}

impl Setup {
    /// Checks that the key holders are the plan's, each named once.
    fn of(p: pb::SecAggParams, plan: &tessera_engine::Plan, round: u32) -> Result<Self, Failure> {
        let mut named: Vec<&str> = p.key_holder_sites.iter().map(String::as_str).collect();
        let mut planned: Vec<&str> = (plan.secure_aggregation.key_holders.iter())
            .map(String::as_str)
            .collect();
        named.sort_unstable();
        planned.sort_unstable();
        if named != planned || p.key_holders.len() != named.len() {
            return Err(refuse(
                round,
                format!(
                    "the coordinator names key holders [{}]; the plan's are [{}]",
                    named.join(", "),
                    planned.join(", ")
                ),
            ));
        }
        let mut ids = p.participants.clone();
        let mut sites = p.sites.clone();
        let mut certificates = p.certificates.clone();
        for ((id, site), der) in p.key_holders.iter().zip(&p.key_holder_sites).zip(
            p.key_holder_certificates
                .iter()
                .chain(std::iter::repeat(&Vec::new())),
        ) {
            match ids.iter().position(|i| i == id) {
                Some(at) if sites.get(at).is_none_or(|s| s == site) => {}
                Some(_) => {
                    return Err(refuse(round, format!("id {id} is given two sites")));
                }
                None => {
                    ids.push(*id);
                    if !p.sites.is_empty() {
                        sites.push(site.clone());
                        certificates.push(der.clone());
                    }
                }
            }
        }
        Ok(Self {
            p,
            ids,
            sites,
            certificates,
        })
    }

    fn round_id(plan: &tessera_engine::Plan, round: u32) -> RoundId {
        RoundId {
            round,
            seed: plan.secagg_graph_seed(round),
        }
    }

    fn identity<'a>(
        &self,
        identity: &'a SecureIdentity,
        plan: &tessera_engine::Plan,
        round: u32,
    ) -> Result<RoundIdentity<'a>, Failure> {
        identity
            .for_round(
                &self.ids,
                &self.sites,
                &self.certificates,
                &plan.data.named_sites(),
            )
            .map_err(|e| refuse(round, e))
    }

    /// The round's joint key from the key holders' shares (`HeKeyShares`).
    fn key(
        &self,
        he: &HeParams,
        plan: &tessera_engine::Plan,
        round: u32,
        shares: pb::HeKeyShares,
        verifier: &dyn tessera_secagg::Verifier,
    ) -> Result<EndorsedKey, Failure> {
        let commitments = key_commitments(shares.commitments)?;
        let shares: Vec<KeyShare> = shares
            .shares
            .into_iter()
            .map(|k| KeyShare {
                from: k.from,
                share: k.share,
                signature: k.signature,
            })
            .collect();
        EndorsedKey::assemble(
            he,
            Self::round_id(plan, round),
            &commitments,
            &shares,
            &self.p.key_holders,
            verifier,
        )
        .map_err(|e| refuse(round, e))
    }
}

/// `bytes` as a digest, or why not (`what`'s).
fn digest_of(bytes: &[u8], what: &str) -> Result<[u8; 32], Failure> {
    bytes
        .try_into()
        .map_err(|_| bad(format!("{what}'s digest is not 32 bytes")))
}

/// Key holders' commitments as they travel.
fn key_commitments(from: Vec<pb::HeKeyCommitmentFrom>) -> Result<Vec<KeyCommitment>, Failure> {
    from.into_iter()
        .map(|c| {
            Ok(KeyCommitment {
                from: c.from,
                digest: digest_of(&c.digest, "a key commitment")?,
                signature: c.signature,
            })
        })
        .collect()
}

fn list_of(list: pb::HeList, round: u32) -> Result<CommitmentList, Failure> {
    let entries = list
        .commitments
        .into_iter()
        .map(|c| {
            Ok(Commitment {
                from: c.from,
                length: c.length as usize,
                digest: digest_of(&c.digest, "a commitment")?,
                signature: c.signature,
            })
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    CommitmentList::new(entries).map_err(|e| refuse(round, e))
}

/// Whether the coordinator of `welcome` reads this build's ciphertexts
/// (1.31 `he-ntt-wire`, 1.32 `he-one-modulus`) and relays key holders
/// what this build fetches (1.33 `he-half-fetch`): refused, saying so, where
/// it does not, rather than have every contribution refused as malformed.
pub fn he_wire_check(welcome: &pb::Welcome) -> Result<(), Failure> {
    let has = |c: &str| welcome.capabilities.iter().any(|have| have == c);
    let why = if !has("he-ntt-wire") {
        "reads ciphertexts in fhe.rs's encoding only (protocol before 1.31, no `he-ntt-wire`)"
    } else if !has("he-one-modulus") {
        "reads ciphertexts of two 36-bit moduli only (protocol before 1.32, no `he-one-modulus`)"
    } else if !has("he-half-fetch") {
        "sends key holders whole contributions (protocol before 1.33, no `he-half-fetch`)"
    } else {
        return Ok(());
    };
    Err(Failure::Fatal(crate::ParticipantError::Refused(format!(
        "the plan aggregates homomorphically, but the coordinator {why}: upgrade it"
    ))))
}

fn he_params() -> Result<HeParams, Failure> {
    HeParams::shared().map_err(|e| Failure::Fatal(crate::ParticipantError::Local(e.to_string())))
}

/// Sends `update` as `site` through homomorphic round `round` of `plan`'s
/// run: the federation learns only the cohort's sum. Key holders that are
/// not the plan's, key shares their holders did not sign and a list that
/// leaves this site out end the round for this site with the reason, before
/// it reveals anything.
pub async fn he_submit(
    client: &mut FederationClient<Channel>,
    site: &str,
    plan: &tessera_engine::Plan,
    identity: &SecureIdentity,
    round: u32,
    mut update: tessera_core::Update,
) -> Result<pb::UpdateReply, Failure> {
    let (input, metadata) = super::secure::update_input(plan, round, &mut update);
    let mut caller = Caller {
        client,
        site,
        round,
    };
    let outcome = contribute(&mut caller, plan, identity, input, metadata).await;
    let not_counted = |reason: String| pb::UpdateReply {
        accepted: false,
        reason,
    };
    match outcome {
        Ok(true) => Ok(pb::UpdateReply {
            accepted: true,
            reason: String::new(),
        }),
        Ok(false) => Ok(not_counted(
            "the round ended before this site's input counted".into(),
        )),
        Err(Failure::Retry(reason)) if reason.starts_with(NOT_TAKEN) => {
            tracing::warn!(round, %reason, "homomorphic round");
            Ok(not_counted(reason))
        }
        Err(Failure::Retry(reason)) if reason.starts_with(REFUSED) => {
            match withdraw(caller.client, site, round, &reason, false).await {
                Ok(_) => tracing::warn!(round, %reason, "withdrew from the homomorphic round"),
                Err(status) => tracing::warn!(round, %status, "could not withdraw"),
            }
            Ok(not_counted(reason))
        }
        Err(other) => Err(other),
    }
}

/// The contributor's stages: true when its input is in the decrypted sum.
async fn contribute(
    caller: &mut Caller<'_>,
    plan: &tessera_engine::Plan,
    identity: &SecureIdentity,
    input: Vec<f32>,
    metadata: tessera_secagg::Metadata,
) -> Result<bool, Failure> {
    let round = caller.round;
    let Some(State::Params(p)) = caller.wait_for(1).await? else {
        return Ok(false);
    };
    let params = super::secure::round_params(&p, round)?;
    // The quantisation follows from the plan, as for SecAgg+.
    params
        .check(&tessera_secagg::Expected {
            config: &plan.secure_aggregation,
            round,
            id: p.id,
            graph_seed: plan.secagg_graph_seed(round),
            dimension: tessera_secagg::masked_dimension(input.len()),
            min_cohort: plan.federation.min_participants,
        })
        .map_err(|e| refuse(round, e))?;
    if !identity_is_own(&p.sites, &p.participants, p.id, caller.site) {
        return Err(refuse(
            round,
            format!("the coordinator does not give id {} to this site", p.id),
        ));
    }
    let id = p.id;
    let setup = Setup::of(p, plan, round)?;
    let (signer, verifier) = setup.identity(identity, plan, round)?;
    let he = he_params()?;
    let Some(State::HeKeys(shares)) = caller.wait_for(2).await? else {
        return Ok(false);
    };
    let key = setup.key(&he, plan, round, shares, verifier.as_ref())?;
    let mut values = tessera_secagg::quantize(&input, &params);
    values.extend_from_slice(&tessera_secagg::encode_metadata(&metadata));
    let secret = super::secret_key()?;
    let contribution = tessera_he::encrypt(&he, &key, id, &values, &secret, signer.as_ref())
        .map_err(|e| bad(e.to_string()))?;
    let c = &contribution.commitment;
    caller
        .call(Step::HeCommitment(pb::HeCommitment {
            length: c.length as u32,
            digest: c.digest.to_vec(),
            signature: c.signature.clone(),
        }))
        .await?;
    let Some(State::HeList(list)) = caller.wait_for(3).await? else {
        return Ok(false);
    };
    let list = list_of(list, round)?;
    if !list.entries().iter().any(|c| c.from == id) {
        // Committed too late: the round goes on without this site.
        return Ok(false);
    }
    let mut contribution = contribution;
    let ciphertexts = contribution.take_ciphertext_bytes();
    let revealed = contribution
        .reveal(&Setup::round_id(plan, round), &list, signer.as_ref())
        .map_err(|e| refuse(round, e))?;
    let list_signature = revealed.list_signature;
    send_pieces(caller, &ciphertexts, |first, ciphertexts| {
        Step::HeReveal(pb::HeReveal {
            list_signature: list_signature.clone(),
            ciphertexts,
            first,
        })
    })
    .await?;
    // The end: the coordinator says whether the round completed with this
    // site's input (`done` false when it failed).
    loop {
        let asked = Instant::now();
        match caller.call(Step::Poll(4)).await? {
            Some(State::Wait(w)) => tokio::time::sleep(poll_pause(w, asked)).await,
            Some(State::Done(counted)) => return Ok(counted),
            _ => return Err(bad("an unexpected reply at the round's end")),
        }
    }
}

/// A key holder's part, for the whole run: asks the coordinator what the
/// open homomorphic round needs of it, draws a fresh key share from this
/// site's own secret for each round, and answers each sum it checked. Ends
/// when the run does.
pub async fn key_holder(
    mut client: FederationClient<Channel>,
    site: String,
    plan: Arc<tessera_engine::Plan>,
    identity: Arc<SecureIdentity>,
    held: HeldKey,
) {
    let mut idle = Duration::from_millis(20);
    loop {
        let when = Instant::now();
        let asked = Caller {
            client: &mut client,
            site: &site,
            round: 0,
        }
        .call(Step::HeHolder(true))
        .await;
        let task = match asked {
            Ok(Some(State::HeTask(task))) => task,
            Ok(Some(State::Done(_))) => return,
            Ok(Some(State::Wait(false))) => {
                // Held at the coordinator until now (1.30 `long-poll`).
                tokio::time::sleep(poll_pause(false, when)).await;
                idle = Duration::from_millis(20);
                continue;
            }
            Ok(_) => {
                // Nothing to do now: asked again soon, less often while
                // nothing comes (at most every 50 ms: each stage of a
                // round waits for it).
                tokio::time::sleep(idle).await;
                idle = (idle * 2).min(Duration::from_millis(50));
                continue;
            }
            Err(Failure::Retry(e)) if e.contains("is not a key holder") => {
                tracing::error!(reason = %e, "key holder: the coordinator does not count this site one");
                return;
            }
            Err(e) => {
                tracing::warn!(reason = ?e, "key holder: the coordinator did not answer");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        idle = Duration::from_millis(20);
        let mut caller = Caller {
            client: &mut client,
            site: &site,
            round: task.round,
        };
        let done = match task.stage {
            1 => commit(&mut caller, &plan, &identity, &held).await,
            // The round key stays in the slot across a failed step (and a
            // new session) until its answer is made; it signs its share
            // under one list of commitments only (`KeyHolder::share`).
            3 => match current(&held) {
                Some((round, holder)) if round == task.round => {
                    share(&mut caller, &plan, &identity, &holder, task.key_commitments).await
                }
                _ => Err(bad(format!(
                    "no key share of round {} here (restarted since?)",
                    task.round
                ))),
            },
            2 => answer(&mut caller, &plan, &identity, &held).await,
            other => Err(bad(format!("a key holder's task of unknown stage {other}"))),
        };
        match done {
            Ok(()) => tracing::info!(round = task.round, stage = task.stage, "key holder: done"),
            Err(e) => {
                tracing::warn!(round = task.round, reason = ?e, "key holder: the step failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// This key holder's id in the round and the round's set-up.
async fn holder_setup(
    caller: &mut Caller<'_>,
    plan: &tessera_engine::Plan,
) -> Result<(u32, Setup), Failure> {
    let round = caller.round;
    let Some(State::Params(p)) = caller.wait_for(1).await? else {
        return Err(bad("the round is over"));
    };
    let setup = Setup::of(p, plan, round)?;
    let id = (setup.p.key_holders.iter())
        .zip(&setup.p.key_holder_sites)
        .find(|(_, s)| s.as_str() == caller.site)
        .map(|(id, _)| *id)
        .ok_or_else(|| {
            refuse(
                round,
                "the coordinator does not name this site a key holder",
            )
        })?;
    Ok((id, setup))
}

/// Draws this key holder's share of round `caller.round` and sends its
/// commitment to it.
async fn commit(
    caller: &mut Caller<'_>,
    plan: &tessera_engine::Plan,
    identity: &SecureIdentity,
    held: &HeldKey,
) -> Result<(), Failure> {
    let round = caller.round;
    let (id, setup) = holder_setup(caller, plan).await?;
    let (signer, _) = setup.identity(identity, plan, round)?;
    let he = he_params()?;
    let (holder, commitment) = KeyHolder::new(
        &he,
        id,
        Setup::round_id(plan, round),
        super::secret_key()?,
        signer.as_ref(),
    )
    .map_err(|e| bad(e.to_string()))?;
    // Kept before it is sent: a commitment taken whose reply was lost still
    // has its key here.
    *lock(held) = Some((round, Arc::new(holder)));
    caller
        .call(Step::HeKeyCommitment(pb::HeKeyCommitment {
            digest: commitment.digest.to_vec(),
            signature: commitment.signature,
        }))
        .await?;
    Ok(())
}

/// Sends this key holder's share, signed over every key holder's
/// commitment (`commitments`, checked first): only once all have committed.
async fn share(
    caller: &mut Caller<'_>,
    plan: &tessera_engine::Plan,
    identity: &SecureIdentity,
    holder: &KeyHolder,
    commitments: Vec<pb::HeKeyCommitmentFrom>,
) -> Result<(), Failure> {
    let round = caller.round;
    let (_, setup) = holder_setup(caller, plan).await?;
    let (signer, verifier) = setup.identity(identity, plan, round)?;
    let commitments = key_commitments(commitments)?;
    let share = holder
        .share(
            &commitments,
            &setup.p.key_holders,
            verifier.as_ref(),
            signer.as_ref(),
        )
        .map_err(|e| refuse(round, e))?;
    caller
        .call(Step::HeKeyShare(pb::HeKeyShare {
            share: share.share,
            signature: share.signature,
        }))
        .await?;
    Ok(())
}

/// A key holder's round key, kept across sessions until it answers.
pub type HeldKey = Arc<std::sync::Mutex<Option<(u32, Arc<KeyHolder>)>>>;

/// The slot's content (the lock is not held across an await).
fn current(held: &HeldKey) -> Option<(u32, Arc<KeyHolder>)> {
    lock(held).clone()
}

/// The slot's content, taken out (the lock is not held across an await).
fn take(held: &HeldKey) -> Option<(u32, Arc<KeyHolder>)> {
    lock(held).take()
}

fn lock(held: &HeldKey) -> std::sync::MutexGuard<'_, Option<(u32, Arc<KeyHolder>)>> {
    held.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Fetches every listed contribution's second polynomials (with its first
/// ones' digests), sums and checks them, and answers
/// with this key holder's decryption shares of that sum (the round key is
/// used then, once; a failure before leaves it for the next try).
async fn answer(
    caller: &mut Caller<'_>,
    plan: &tessera_engine::Plan,
    identity: &SecureIdentity,
    held: &HeldKey,
) -> Result<(), Failure> {
    let round = caller.round;
    if lock(held).as_ref().is_none_or(|(r, _)| *r != round) {
        return Err(bad(format!(
            "no key share of round {round} here (restarted since?): the round cannot be \
             decrypted"
        )));
    }
    let (_, setup) = holder_setup(caller, plan).await?;
    let (signer, verifier) = setup.identity(identity, plan, round)?;
    let he = he_params()?;
    let Some(State::HeKeys(shares)) = caller.wait_for(2).await? else {
        return Err(bad("the round is over"));
    };
    let key = setup.key(&he, plan, round, shares, verifier.as_ref())?;
    let Some(State::HeList(list)) = caller.wait_for(3).await? else {
        return Err(bad("the round is over"));
    };
    let list = list_of(list, round)?;
    let length = setup.p.dimension as usize;
    let mut sum = VerifiedSum::new(&he, &key, length, list.clone(), verifier.as_ref())
        .map_err(|e| refuse(round, e))?;
    let total = HeParams::ciphertexts_for(length);
    // Each contribution once it is revealed (the coordinator answers
    // `Wait` for one not yet in), in any order: the sum does not depend on
    // it.
    let mut pending: Vec<Commitment> = list.entries().to_vec();
    let mut idle = Duration::from_millis(5);
    while !pending.is_empty() {
        let before = sum.contributors().len();
        let mut waiting = Vec::with_capacity(pending.len());
        for commitment in std::mem::take(&mut pending) {
            match fetch(caller, &he, &commitment, total).await? {
                Some(revealed) => sum
                    .absorb(&revealed, verifier.as_ref())
                    .map_err(|e| refuse(round, e))?,
                None => waiting.push(commitment),
            }
        }
        if sum.contributors().len() == before && !waiting.is_empty() {
            // None revealed since the last pass: asked again soon, less
            // often while none comes (a fetch is not held at the
            // coordinator; at most one pass every 50 ms).
            tokio::time::sleep(idle).await;
            idle = (idle * 2).min(Duration::from_millis(50));
        } else {
            idle = Duration::from_millis(5);
        }
        pending = waiting;
    }
    let Some(holder) = take(held).and_then(|(_, h)| Arc::into_inner(h)) else {
        return Err(bad(format!("no key share of round {round} here")));
    };
    let answer: Answer = holder
        .answer(&sum, plan.federation.min_participants, signer.as_ref())
        .map_err(|e| refuse(round, e))?;
    // The answer is made once: sent again on a transient failure.
    let (sum_digest, signature) = (answer.sum_digest.to_vec(), answer.signature.clone());
    send_pieces(caller, &answer.share_bytes(), |first, shares| {
        Step::HeAnswer(pb::HeAnswer {
            sum_digest: sum_digest.clone(),
            shares,
            signature: signature.clone(),
            first,
        })
    })
    .await
}

/// One listed contribution as a key holder fetches it, a piece at a time,
/// in order: each ciphertext's second polynomial and its first's digest
/// (all a decryption share depends on); `None` while it is not revealed.
async fn fetch(
    caller: &mut Caller<'_>,
    he: &HeParams,
    commitment: &Commitment,
    total: usize,
) -> Result<Option<Reveal>, Failure> {
    let (round, from) = (caller.round, commitment.from);
    let mut seconds: Vec<Vec<u8>> = Vec::with_capacity(total);
    let mut first_digests: Vec<Vec<u8>> = Vec::with_capacity(total);
    let mut list_signature = Vec::new();
    while seconds.len() < total {
        let first = seconds.len() as u32;
        let c = match caller
            .call(Step::HeFetch(pb::HeFetch { from, first }))
            .await?
        {
            Some(State::HeContribution(c)) => c,
            Some(State::Wait(_)) if first == 0 => return Ok(None),
            _ => return Err(bad(format!("no contribution of {from}"))),
        };
        if c.first != first
            || c.total as usize != total
            || c.second_polynomials.is_empty()
            || c.first_digests.len() != c.second_polynomials.len()
            || seconds.len() + c.second_polynomials.len() > total
        {
            return Err(refuse(
                round,
                format!("the coordinator sent a piece of {from}'s contribution out of place"),
            ));
        }
        // Each polynomial and digest one length: a piece is not kept past
        // it.
        if let Some(misfit) = tessera_he::misfit_length(
            &c.second_polynomials,
            tessera_he::POLYNOMIAL_BYTES,
            "second polynomial",
        )
        .or_else(|| tessera_he::misfit_length(&c.first_digests, 32, "first polynomial's digest"))
        {
            return Err(refuse(
                round,
                format!("the coordinator sent a piece of {from}'s contribution: {misfit}"),
            ));
        }
        if first > 0 && c.list_signature != list_signature {
            return Err(refuse(
                round,
                format!("the pieces of {from}'s contribution are signed differently"),
            ));
        }
        list_signature = c.list_signature;
        seconds.extend(c.second_polynomials);
        first_digests.extend(c.first_digests);
    }
    let contribution =
        Contribution::for_key_holder(he, commitment.clone(), &first_digests, &seconds)
            .map_err(|e| refuse(round, e))?;
    Ok(Some(Reveal {
        contribution,
        list_signature,
    }))
}

/// Sends `items` in pieces of [`tessera_he::PIECE`], each made a step by
/// `step` (given the number of its first item); on a transient failure it
/// starts again from the first piece (which the coordinator takes as a new
/// start), at most 5 times.
async fn send_pieces(
    caller: &mut Caller<'_>,
    items: &[Vec<u8>],
    step: impl Fn(u32, Vec<Vec<u8>>) -> Step,
) -> Result<(), Failure> {
    let mut tries = 0;
    'again: loop {
        for (i, piece) in items.chunks(tessera_he::PIECE).enumerate() {
            let first = (i * tessera_he::PIECE) as u32;
            match caller.call(step(first, piece.to_vec())).await {
                Ok(_) => {}
                Err(Failure::Retry(e)) if tries < 5 && !e.starts_with(NOT_TAKEN) => {
                    tries += 1;
                    tracing::warn!(round = caller.round, reason = %e, "sending again from the start");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue 'again;
                }
                Err(e) => return Err(e),
            }
        }
        return Ok(());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_coordinator_reading_fhe_encodings_only_is_left_saying_why() {
        let mut welcome = pb::Welcome {
            capabilities: tessera_proto::capabilities_at(30)
                .into_iter()
                .map(String::from)
                .collect(),
            ..Default::default()
        };
        let e = he_wire_check(&welcome).unwrap_err();
        assert!(
            matches!(&e, Failure::Fatal(crate::ParticipantError::Refused(m)) if m.contains("he-ntt-wire")),
            "{e:?}"
        );
        welcome.capabilities = tessera_proto::capabilities_at(31)
            .into_iter()
            .map(String::from)
            .collect();
        let e = he_wire_check(&welcome).unwrap_err();
        assert!(
            matches!(&e, Failure::Fatal(crate::ParticipantError::Refused(m)) if m.contains("he-one-modulus")),
            "{e:?}"
        );
        welcome.capabilities = tessera_proto::capabilities_at(32)
            .into_iter()
            .map(String::from)
            .collect();
        let e = he_wire_check(&welcome).unwrap_err();
        assert!(
            matches!(&e, Failure::Fatal(crate::ParticipantError::Refused(m)) if m.contains("he-half-fetch")),
            "{e:?}"
        );
        welcome.capabilities = tessera_proto::capabilities_at(33)
            .into_iter()
            .map(String::from)
            .collect();
        assert!(he_wire_check(&welcome).is_ok());
    }
}
