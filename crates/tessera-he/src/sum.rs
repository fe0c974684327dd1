//! A key holder's (and the coordinator's) sum of a round's contributions,
//! each checked against the closed list of signed commitments, and the
//! digest its answers name.

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::sync::Arc;

use fhe::bfv::Ciphertext;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tessera_secagg::Verifier;

use crate::{
    CommitmentList, Contribution, EndorsedKey, HeError, HeParams, MAX_CONTRIBUTIONS, Reveal,
    RoundId, polynomial_to_bytes, refused,
};

/// The digest of summed ciphertexts' second polynomials: what a key
/// holder's answer names (a decryption share depends on them alone).
pub fn sum_digest<C: Borrow<Ciphertext> + Sync>(sums: &[C]) -> [u8; 32] {
    let each: Vec<[u8; 32]> = sums
        .par_iter()
        .map(|ct| match ct.borrow().get(1) {
            Some(second) => Sha256::digest(polynomial_to_bytes(second)).into(),
            None => [0; 32],
        })
        .collect();
    let mut h = Sha256::new();
    h.update(b"tessera-he sum v2");
    for digest in each {
        h.update(digest);
    }
    h.finalize().into()
}

/// A sum of contributions that a key holder computed and checked itself:
/// exactly the round's closed list of signed commitments, each ciphertext
/// matching its commitment and revealed under its contributor's signature
/// of that list.
pub struct VerifiedSum {
    pub(crate) params: HeParams,
    pub(crate) round: RoundId,
    pub(crate) list: CommitmentList,
    pub(crate) list_digest: [u8; 32],
    pub(crate) absorbed: BTreeSet<u32>,
    pub(crate) sums: Vec<Arc<Ciphertext>>,
    /// The sums' digest, once asked for (cleared by each contribution).
    pub(crate) digest: std::sync::OnceLock<[u8; 32]>,
}

impl VerifiedSum {
    /// An empty sum of the contributions `list` commits to, of `length`
    /// values, under the assembled `key`: every commitment's signature is
    /// checked first.
    pub fn new(
        params: &HeParams,
        key: &EndorsedKey,
        length: usize,
        list: CommitmentList,
        verifier: &dyn Verifier,
    ) -> Result<Self, HeError> {
        if list.len() > MAX_CONTRIBUTIONS {
            return Err(refused(format!(
                "{} commitments; a sum takes at most {MAX_CONTRIBUTIONS}",
                list.len()
            )));
        }
        for c in list.entries() {
            if c.length != length {
                return Err(refused(format!(
                    "participant {} committed to {} values, the round has {length}",
                    c.from, c.length
                )));
            }
            verifier
                .verify(c.from, &c.message(&key.round, &key.digest), &c.signature)
                .map_err(|why| refused(format!("participant {}'s commitment: {why}", c.from)))?;
        }
        let zero = Arc::new(Ciphertext::zero(&params.0));
        Ok(Self {
            params: params.clone(),
            round: key.round,
            list_digest: list.digest(),
            list,
            absorbed: BTreeSet::new(),
            sums: vec![zero; HeParams::ciphertexts_for(length)],
            digest: std::sync::OnceLock::new(),
        })
    }

    /// Adds a revealed contribution after checking it; a refused one leaves
    /// the sum as it was.
    pub fn absorb(&mut self, revealed: &Reveal, verifier: &dyn Verifier) -> Result<(), HeError> {
        let (c, list_signature) = (&revealed.contribution, &revealed.list_signature);
        let from = c.commitment.from;
        let committed = self.list.find(from).ok_or_else(|| {
            refused(format!(
                "participant {from} is not in the round's list of commitments"
            ))
        })?;
        if self.absorbed.contains(&from) {
            return Err(refused(format!(
                "a second contribution from participant {from}"
            )));
        }
        verifier
            .verify(
                from,
                &self.round.message("list", &[&self.list_digest]),
                list_signature,
            )
            .map_err(|why| {
                refused(format!(
                    "participant {from} did not sign the round's list of commitments: {why}"
                ))
            })?;
        if c.ciphertexts.len() != self.sums.len() {
            return Err(refused(format!(
                "participant {from} sent {} ciphertexts, the round has {}",
                c.ciphertexts.len(),
                self.sums.len()
            )));
        }
        // Each ciphertext rebuilt on these parameters: two polynomials at the
        // top level, or refused (fhe.rs would panic on a mismatch); as it is
        // where this crate built it on this instance.
        let same = (c.built_on.as_ref()).is_some_and(|p| Arc::ptr_eq(&p.0, &self.params.0));
        let rebuilt: Vec<Ciphertext> = (c.ciphertexts.iter())
            .filter(|_| !same)
            .map(|ct| {
                if ct.len() != 2 {
                    return Err(refused(format!(
                        "participant {from} sent a ciphertext of {} polynomials, not 2",
                        ct.len()
                    )));
                }
                match self.params.0.level_of_context(ct[0].ctx()) {
                    Ok(0) => {}
                    _ => {
                        return Err(refused(format!(
                            "participant {from} sent a ciphertext at another level"
                        )));
                    }
                }
                Ciphertext::new(ct.to_vec(), &self.params.0)
                    .map_err(|e| refused(format!("participant {from}'s ciphertext: {e}")))
            })
            .collect::<Result<_, _>>()?;
        // The commitment covers these ciphertexts (hashed where they were
        // made or read, in the one encoding each has).
        let (digest, _) = Contribution::list_digest(&c.each);
        if digest != committed.digest {
            return Err(refused(format!(
                "participant {from}'s ciphertexts do not match its commitment"
            )));
        }
        let addends = if same { &c.ciphertexts } else { &rebuilt };
        self.sums
            .par_iter_mut()
            .zip(addends)
            .for_each(|(sum, ct)| *Arc::make_mut(sum) += ct);
        self.absorbed.insert(from);
        self.digest = std::sync::OnceLock::new();
        Ok(())
    }

    /// Who is in the sum so far.
    pub fn contributors(&self) -> &BTreeSet<u32> {
        &self.absorbed
    }

    /// The summed ciphertexts.
    pub fn ciphertexts(&self) -> &[Arc<Ciphertext>] {
        &self.sums
    }

    /// The digest of the summed ciphertexts' second polynomials
    /// ([`sum_digest`]).
    pub fn digest(&self) -> [u8; 32] {
        *self.digest.get_or_init(|| sum_digest(&self.sums))
    }
}
