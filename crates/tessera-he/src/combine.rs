//! The last step: every key holder's answer, each for the same sum,
//! combined into the plaintext sum.

use std::collections::BTreeMap;
use std::sync::Arc;

use fhe::bfv::{Ciphertext, Encoding};
use fhe_math::rq::Poly;
use fhe_traits::{FheDecoder, FheDecrypter};
use rayon::prelude::*;
use tessera_secagg::Verifier;

use crate::{Answer, HeError, HeParams, RoundId, fhe, refused, sum_digest};

/// Combines the answers of every one of `holders`, each signed and each for
/// the summed ciphertexts `sums` (by their second polynomials' digest,
/// [`sum_digest`]), into the `length`
/// summed values modulo `2^32`.
pub fn combine(
    round: &RoundId,
    answers: Vec<Answer>,
    holders: &[u32],
    params: &HeParams,
    sums: &[Arc<Ciphertext>],
    length: usize,
    verifier: &dyn Verifier,
) -> Result<Vec<u32>, HeError> {
    let n = HeParams::ciphertexts_for(length);
    if sums.len() != n {
        return Err(refused(format!(
            "{} summed ciphertexts for {length} values",
            sums.len()
        )));
    }
    let digest = sum_digest(sums);
    let sum_digest = &digest;
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
    let mut by_ct: Vec<Vec<Poly>> = (0..n).map(|_| Vec::with_capacity(holders.len())).collect();
    for answer in by_holder.into_values() {
        for (i, share) in answer.shares.into_iter().enumerate() {
            by_ct[i].push(share);
        }
    }
    let chunks: Vec<Vec<u32>> = by_ct
        .into_par_iter()
        .zip(sums)
        .map(|(shares, sum)| open_with(params, sum, &shares))
        .collect::<Result<_, HeError>>()?;
    let mut out: Vec<u32> = chunks.into_iter().flatten().collect();
    out.truncate(length);
    Ok(out)
}

/// The values that `shares` (key holders' decryption shares of `sum`
/// `(c0, c1)`, each `c1 s_i + e_i`) open: `(c0 + c1 s + e, c1)`, with `s`
/// the sum of those key holders' secrets, whose phase under the zero key is
/// the plaintext when `s` is the joint secret (every key holder's share is
/// in); noise otherwise.
pub fn open_with(
    params: &HeParams,
    sum: &Ciphertext,
    shares: &[Poly],
) -> Result<Vec<u32>, HeError> {
    if shares.is_empty() {
        return Err(refused("no decryption share"));
    }
    let [c0, c1] = sum.to_vec().try_into().map_err(|polys: Vec<Poly>| {
        refused(format!(
            "a summed ciphertext of {} polynomials",
            polys.len()
        ))
    })?;
    let mut first = c0;
    for share in shares {
        if share.ctx() != first.ctx() {
            return Err(refused("a decryption share of another ring"));
        }
        first += share;
    }
    // On this instance of the parameters, as the zero key's (fhe.rs
    // decrypts ciphertexts of one instance only).
    let acc = Ciphertext::new(vec![first, c1], params.bfv()).map_err(fhe)?;
    let zero = crate::wire::zero_key(params)?;
    let pt = zero.try_decrypt(&acc).map_err(fhe)?;
    let coefficients = Vec::<u64>::try_decode(&pt, Encoding::poly()).map_err(fhe)?;
    // Below the plaintext modulus 2^32.
    Ok(coefficients.into_iter().map(|c| c as u32).collect())
}
