//! Homomorphic aggregation in simulation (`secure_aggregation.scheme =
//! "homomorphic"`): each round the plan's key holders draw fresh key shares
//! and publish the joint public key; every cohort member that trained
//! quantises its update and metadata exactly as for SecAgg+, encrypts them
//! under the joint key and signs them (`tessera_he::encrypt`); the key
//! holders sum the signed contributions themselves, answer with their
//! decryption shares, and the shares combine into the sum, decoded as
//! SecAgg+'s (`tessera_orchestrator::secure::update_of_sum`). With the same
//! survivors the summed update equals SecAgg+'s to the bit.
//!
//! Every key holder would compute the same verified sum from the same
//! contributions; the simulation computes it once, one contribution at a
//! time (one site's ciphertexts in memory at once), and counts each key
//! holder's download of every contribution. Secrets (key shares, encryption
//! randomness, identity keys) come from the run seed here, as in `secure.rs`.
//! Members that drop out simply send nothing: the sum needs no recovery.

use std::collections::BTreeMap;

use tessera_core::{ParameterSet, ParticipantId, Update, derive_key};
use tessera_engine::streams;
use tessera_engine::{EngineError, Plan};
use tessera_he::{HeError, HeParams, KeyHolder, VerifiedSum};
use tessera_orchestrator::secure;
use tessera_privacy::clip_to_norm;
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
    let ids: Vec<u32> = cohort.iter().map(|&s| s as u32).collect();
    let kept = plan.secure_coordinates(round, layout.n_values());
    // The quantisation SecAgg+ would use for this cohort.
    let params = secure::training_params(plan, round, &ids, layout.n_values())?;
    if let Some(bound) = plan.masked_update_bound() {
        for update in updates.values_mut() {
            clip_to_norm(&mut update.delta, bound);
        }
    }
    let he_params = HeParams::new().map_err(he)?;
    let poly = HeParams::polynomial_bytes();
    let secret = |tag: u64, site: usize| {
        derive_key(
            plan.seed,
            &[streams::SECAGG, u64::from(round), site as u64, tag],
        )
    };
    let mut bytes_up: BTreeMap<usize, u64> = BTreeMap::new();
    let mut bytes_down: BTreeMap<usize, u64> = BTreeMap::new();

    // Keys: each key holder's share on the round's public polynomial.
    let crp = tessera_he::common_poly(&he_params, &plan.secagg_graph_seed(round)).map_err(he)?;
    let mut holders = Vec::with_capacity(key_holders.len());
    let mut shares = Vec::with_capacity(key_holders.len());
    for &h in key_holders {
        let (holder, share) = KeyHolder::new(&he_params, round, secret(20, h), &crp).map_err(he)?;
        *bytes_up.entry(h).or_default() += poly;
        holders.push(holder);
        shares.push(share);
    }
    let key = tessera_he::joint_key(shares).map_err(he)?;
    // The joint key (two polynomials) comes down to every contributor.
    for &site in updates.keys() {
        *bytes_down.entry(site).or_default() += 2 * poly;
    }

    // Each site's identity key, the same every round (as in `secure.rs`).
    let signer = |site: usize| {
        Ed25519Signer::from_secret(derive_key(plan.seed, &[streams::SECAGG, 0, site as u64, 5]))
    };
    let mut directory = Ed25519Directory::new();
    for &site in cohort {
        directory.insert(site as u32, signer(site).public())?;
    }

    // Contributions, one at a time, into the key holders' verified sum.
    let length = params.dimension;
    let mut sum = VerifiedSum::new(&he_params, round, length);
    let mut masked_bytes = BTreeMap::new();
    let mut downloaded = 0u64;
    for (&site, update) in &updates {
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
        let c = tessera_he::encrypt(
            &he_params,
            &key,
            round,
            site as u32,
            &quantised,
            &secret(21, site),
            &signer(site),
        )
        .map_err(he)?;
        let size = c.wire_bytes + 4 + 4 + 8 + 32 + c.signature.len() as u64;
        *bytes_up.entry(site).or_default() += size;
        masked_bytes.insert(site, size);
        downloaded += size;
        sum.absorb(&c, &directory).map_err(he)?;
    }

    // Decryption: every key holder downloads every contribution, checks and
    // sums them, and answers with a share a ciphertext.
    let min = plan.federation.min_participants;
    let n_ciphertexts = HeParams::ciphertexts_for(length) as u64;
    let mut answers = Vec::with_capacity(holders.len());
    for (holder, &h) in holders.into_iter().zip(key_holders) {
        answers.push(holder.decryption_shares(&sum, min).map_err(he)?);
        *bytes_down.entry(h).or_default() += downloaded;
        *bytes_up.entry(h).or_default() += n_ciphertexts * poly;
    }
    let summed = tessera_he::combine(answers, length).map_err(he)?;
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
