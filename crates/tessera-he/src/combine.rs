//! The last step: every key holder's answer, each for the same sum,
//! combined into the plaintext sum.

use std::collections::BTreeMap;

use fhe::bfv::{Encoding, Plaintext};
use fhe::mbfv::{AggregateIter, DecryptionShare};
use fhe_traits::FheDecoder;
use rayon::prelude::*;
use tessera_secagg::Verifier;

use crate::{Answer, HeError, HeParams, RoundId, fhe, refused};

/// Combines the answers of every one of `holders`, each signed and each for
/// the sum whose digest is `sum_digest`, into the `length` summed values
/// modulo `2^32`.
pub fn combine(
    round: &RoundId,
    answers: Vec<Answer>,
    holders: &[u32],
    sum_digest: &[u8; 32],
    length: usize,
    verifier: &dyn Verifier,
) -> Result<Vec<u32>, HeError> {
    let n = HeParams::ciphertexts_for(length);
    let mut by_holder: BTreeMap<u32, Answer> = BTreeMap::new();
    for a in answers {
        if !holders.contains(&a.from) {
            return Err(refused(format!(
                "an answer from {}, not a key holder",
                a.from
            )));
        }
        if a.sum_digest != *sum_digest {
            return Err(refused(format!(
                "key holder {} decrypted another sum than the round's",
                a.from
            )));
        }
        verifier
            .verify(
                a.from,
                &round.message("answer", &[&a.sum_digest]),
                &a.signature,
            )
            .map_err(|why| refused(format!("key holder {}'s answer: {why}", a.from)))?;
        if a.shares.len() != n {
            return Err(refused(format!(
                "key holder {} answered with {} decryption shares, the sum has {n} ciphertexts",
                a.from,
                a.shares.len()
            )));
        }
        if by_holder.insert(a.from, a).is_some() {
            return Err(refused("two answers from one key holder"));
        }
    }
    if let Some(missing) = holders.iter().find(|h| !by_holder.contains_key(h)) {
        return Err(refused(format!(
            "key holder {missing} did not answer: every key holder's share is needed"
        )));
    }
    // Regroup by ciphertext: the i-th share of every key holder.
    let mut by_ct: Vec<Vec<DecryptionShare>> =
        (0..n).map(|_| Vec::with_capacity(holders.len())).collect();
    for answer in by_holder.into_values() {
        for (i, share) in answer.shares.into_iter().enumerate() {
            by_ct[i].push(share);
        }
    }
    let chunks: Vec<Vec<u32>> = by_ct
        .into_par_iter()
        .map(|shares| {
            let pt: Plaintext = shares.into_iter().aggregate().map_err(fhe)?;
            let coefficients = Vec::<u64>::try_decode(&pt, Encoding::poly()).map_err(fhe)?;
            // Below the plaintext modulus 2^32.
            Ok(coefficients.into_iter().map(|c| c as u32).collect())
        })
        .collect::<Result<_, HeError>>()?;
    let mut out: Vec<u32> = chunks.into_iter().flatten().collect();
    out.truncate(length);
    Ok(out)
}
