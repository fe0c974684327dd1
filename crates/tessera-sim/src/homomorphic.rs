//! Homomorphic aggregation in simulation (`secure_aggregation.scheme =
//! "homomorphic"`): each round the plan's key holders draw fresh key shares,
//! commit to them, and once every commitment is in publish them signed over
//! the commitments; every cohort member that trained assembles the joint key
//! from the signed shares, quantises its update and metadata exactly as for
//! SecAgg+, encrypts them under that key and commits to them; once the list
//! of commitments is closed each signs it and reveals its ciphertexts
//! (`tessera_he`); the key holders sum exactly the listed contributions
//! themselves and answer with their decryption shares, and the answers
//! combine into the sum, decoded as SecAgg+'s
//! (`tessera_orchestrator::secure::update_of_sum`).
//! With the same survivors the summed update equals SecAgg+'s to the bit.
//!
//! Every key holder would compute the same verified sum from the same
//! contributions, and every contributor the same check of the key
//! holders' shares; the simulation makes each once and counts every party's
//! bytes. Secrets (key shares, encryption randomness, identity keys) come
//! from the run seed here, as in `secure.rs`. Members that drop out send
//! nothing: the sum needs no recovery.

use std::collections::BTreeMap;

use tessera_core::{ParameterSet, ParticipantId, Update, derive_key};
use tessera_engine::streams;
use tessera_engine::{EngineError, Plan};
use tessera_he::{
    CommitmentList, Contribution, EndorsedKey, HeError, HeParams, KeyHolder, RoundId, VerifiedSum,
};
use tessera_orchestrator::secure;
use tessera_secagg::{
    Ed25519Directory, Ed25519Signer, Metadata, Scheme, SecAggError, encode_metadata,
};

use crate::secure::SecureRound;

/// The site indices of the plan's key holders when it aggregates
/// homomorphically; refuses a key holder that is not one of the sites.
pub(crate) fn key_holders(
    plan: &Plan,
    index: &BTreeMap<&ParticipantId, usize>,
) -> Result<Option<Vec<usize>>, EngineError> {
    let config = &plan.secure_aggregation;
    if !config.enabled || config.scheme != Scheme::Homomorphic {
        return Ok(None);
    }
    config
        .key_holders
        .iter()
        .map(|name| {
            index
                .get(&ParticipantId::new(name))
                .copied()
                .ok_or_else(|| {
                    let mut sites: Vec<&str> =
                        index.keys().map(|id| id.as_str()).take(10).collect();
                    if index.len() > 10 {
                        sites.push("...");
                    }
                    EngineError::State(format!(
                        "key holder '{}' is not a site of the federation (its sites: {})",
                        name.chars().take(64).collect::<String>(),
                        sites.join(", ")
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A key holder's commitment: its id, the share's digest, a signature.
const KEY_COMMITMENT_BYTES: u64 = 4 + 32 + 64;

fn he(e: HeError) -> SecAggError {
    SecAggError::Config(format!("homomorphic aggregation: {e}"))
}

/// Runs one homomorphic round for `cohort` (site indices) where `updates`
/// holds the updates of those who finished training; `key_holders` are the
/// site indices of the plan's key holders.
pub(crate) fn homomorphic_round(
    plan: &Plan,
    round: u32,
    cohort: &[usize],
    mut updates: BTreeMap<usize, Update>,
    layout: &ParameterSet,
    key_holders: &[usize],
) -> Result<SecureRound, SecAggError> {
    // The quantisation and clipping SecAgg+ would use for this cohort.
    let (_, kept, params) = crate::secure::prepare(plan, round, cohort, &mut updates, layout)?;
    let he_params = HeParams::shared().map_err(he)?;
    let poly = HeParams::polynomial_bytes();
    let secret = |tag: u64, site: usize| {
        derive_key(
            plan.seed,
            &[streams::SECAGG, u64::from(round), site as u64, tag],
        )
    };
    let mut bytes_up: BTreeMap<usize, u64> = BTreeMap::new();
    let mut bytes_down: BTreeMap<usize, u64> = BTreeMap::new();
    // Each site's identity key, the same every round (as in `secure.rs`):
    // it signs key shares, commitments, lists and answers.
    let signer = |site: usize| {
        Ed25519Signer::from_secret(derive_key(plan.seed, &[streams::SECAGG, 0, site as u64, 5]))
    };
    let mut directory = Ed25519Directory::new();
    for &site in cohort.iter().chain(key_holders) {
        directory.insert(site as u32, signer(site).public())?;
    }
    let id = RoundId {
        round,
        seed: plan.secagg_graph_seed(round),
    };
    let holder_ids: Vec<u32> = key_holders.iter().map(|&h| h as u32).collect();

    // Keys: each key holder commits to its share, then (every commitment
    // in) publishes it signed over the commitments; every contributor
    // checks the signatures and commitments and adds the shares up itself
    // (the same check for all: made once here).
    let mut holders = Vec::with_capacity(key_holders.len());
    let mut commitments = Vec::with_capacity(key_holders.len());
    for &h in key_holders {
        let (holder, commitment) =
            KeyHolder::new(&he_params, h as u32, id, secret(20, h), &signer(h)).map_err(he)?;
        holders.push(holder);
        commitments.push(commitment);
        *bytes_up.entry(h).or_default() += KEY_COMMITMENT_BYTES;
    }
    let mut shares = Vec::with_capacity(key_holders.len());
    for (holder, &h) in holders.iter().zip(key_holders) {
        let share = holder
            .share(&commitments, &holder_ids, &directory, &signer(h))
            .map_err(he)?;
        shares.push(share);
        *bytes_down.entry(h).or_default() += KEY_COMMITMENT_BYTES * key_holders.len() as u64;
        *bytes_up.entry(h).or_default() += poly + 64;
    }
    let key = EndorsedKey::assemble(
        &he_params,
        id,
        &commitments,
        &shares,
        &holder_ids,
        &directory,
    )
    .map_err(he)?;
    drop(shares);
    for &site in updates.keys() {
        *bytes_down.entry(site).or_default() +=
            (poly + 64 + KEY_COMMITMENT_BYTES) * key_holders.len() as u64;
    }

    // A site's quantised input and its contribution.
    let length = params.dimension;
    let contribute = |site: usize, update: &Update| {
        let values: Vec<f32> = update.delta.values().collect();
        let input: Vec<f32> = match &kept {
            Some(ix) => ix.iter().map(|&i| values[i]).collect(),
            None => values,
        };
        let mut quantised = tessera_secagg::quantize(&input, &params);
        quantised.extend_from_slice(&encode_metadata(&Metadata {
            n_examples: update.n_examples,
            train_loss: update.stats.mean_train_loss,
            n_steps: update.stats.n_steps,
        }));
        tessera_he::encrypt(
            &he_params,
            &key,
            site as u32,
            &quantised,
            &secret(21, site),
            &signer(site),
        )
        .map_err(he)
    };
    // Commit: every contributor encrypts and sends its signed digest. The
    // contributions are kept for the reveal as the bytes they travel as
    // (read back as a key holder reads them) while they fit in 1 GiB, made
    // again past it (the same ciphertexts: the same draw).
    const KEEP_BYTES: u64 = 1 << 30;
    let mut kept_bytes = 0u64;
    let mut kept_contributions = BTreeMap::new();
    let mut commitments = Vec::with_capacity(updates.len());
    const COMMITMENT_BYTES: u64 = 4 + 8 + 32 + 64;
    for (&site, update) in &updates {
        let mut c = contribute(site, update)?;
        *bytes_up.entry(site).or_default() += COMMITMENT_BYTES;
        commitments.push(c.commitment.clone());
        if kept_bytes.saturating_add(c.wire_bytes()) <= KEEP_BYTES {
            kept_bytes += c.wire_bytes();
            kept_contributions.insert(site, (c.commitment.clone(), c.take_ciphertext_bytes()));
        }
    }
    let list = CommitmentList::new(commitments).map_err(he)?;
    let list_bytes = COMMITMENT_BYTES * list.entries().len() as u64;
    // Reveal: each contributor signs the closed list, then sends its
    // ciphertexts; the key holders' verified sum takes them one at a time.
    let mut sum =
        VerifiedSum::new(&he_params, &key, length, list.clone(), &directory).map_err(he)?;
    let mut masked_bytes = BTreeMap::new();
    let n_ciphertexts = HeParams::ciphertexts_for(length) as u64;
    // What each key holder downloads: the list, and of each contribution
    // its second polynomials with its first ones' digests (1.33).
    let mut downloaded = list_bytes;
    for (&site, update) in &updates {
        let c = match kept_contributions.remove(&site) {
            Some((commitment, bytes)) => {
                Contribution::from_wire(&he_params, commitment, &bytes).map_err(he)?
            }
            None => contribute(site, update)?,
        };
        let revealed = c.reveal(&id, &list, &signer(site)).map_err(he)?;
        let size = revealed.contribution.wire_bytes() + revealed.list_signature.len() as u64;
        *bytes_up.entry(site).or_default() += size;
        *bytes_down.entry(site).or_default() += list_bytes;
        masked_bytes.insert(site, size + COMMITMENT_BYTES);
        downloaded += n_ciphertexts * (poly + 32) + revealed.list_signature.len() as u64;
        sum.absorb(&revealed, &directory).map_err(he)?;
    }

    // Decryption: every key holder downloads the list and every
    // contribution's second polynomials, checks and sums them, and answers
    // with a share (one polynomial) a ciphertext; one sum stands for every
    // key holder's (its second polynomials are theirs).
    let min = plan.federation.min_participants;
    let mut answers = Vec::with_capacity(holders.len());
    for (holder, &h) in holders.into_iter().zip(key_holders) {
        answers.push(holder.answer(&sum, min, &signer(h)).map_err(he)?);
        *bytes_down.entry(h).or_default() += downloaded;
        *bytes_up.entry(h).or_default() += n_ciphertexts * poly + 32 + 64;
    }
    let summed = tessera_he::combine(
        &id,
        answers,
        &holder_ids,
        &he_params,
        sum.ciphertexts(),
        length,
        &directory,
    )
    .map_err(he)?;
    let survivors: Vec<usize> = sum.contributors().iter().map(|&s| s as usize).collect();
    let sum = secure::update_of_sum(&summed, survivors.len(), &params, layout, kept.as_deref())?;
    Ok(SecureRound {
        sum,
        survivors,
        bytes_up,
        masked_bytes,
        bytes_down,
    })
}
