//! The round's joint key: each key holder commits to its key share before
//! any share is shown, reveals it under its signature of every key holder's
//! commitment, and each contributor adds the shares up itself.
//!
//! The commitments stop a rogue key: a key holder that saw the others'
//! shares first (the coordinator relays them) could otherwise choose its own
//! to cancel theirs, making a joint key whose secret it alone knows. Here
//! every share must match the commitment its holder signed before any share
//! was out, and every key holder's share is signed over the same list of
//! commitments: a commitment changed after an honest key holder revealed is
//! caught by that key holder's signature.

use sha2::{Digest, Sha256};
use tessera_secagg::{Signer, Verifier};

use crate::{HeError, HeParams, RoundId, key_digest, refused, wire};

/// A key holder's signed commitment to its key share, sent before any
/// share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyCommitment {
    /// The key holder.
    pub from: u32,
    /// The SHA-256 of its key share's bytes.
    pub digest: [u8; 32],
    /// Its signature of the round, its id and the digest.
    pub signature: Vec<u8>,
}

impl KeyCommitment {
    pub(crate) fn message(&self, round: &RoundId) -> Vec<u8> {
        round.message("key commitment", &[&self.from.to_le_bytes(), &self.digest])
    }
}

/// Checks that `commitments` hold one signed commitment of each of
/// `holders` (a non-empty list) and no other; their digest, by key holder.
pub(crate) fn check_commitments(
    round: &RoundId,
    commitments: &[KeyCommitment],
    holders: &[u32],
    verifier: &dyn Verifier,
) -> Result<[u8; 32], HeError> {
    if holders.is_empty() {
        return Err(refused("a joint key needs at least one key holder"));
    }
    if let Some(stranger) = commitments.iter().find(|c| !holders.contains(&c.from)) {
        return Err(refused(format!(
            "a key commitment from {}, not a key holder",
            stranger.from
        )));
    }
    let mut sorted: Vec<&KeyCommitment> = Vec::with_capacity(holders.len());
    for &holder in holders {
        let mut theirs = commitments.iter().filter(|c| c.from == holder);
        let c = theirs
            .next()
            .ok_or_else(|| refused(format!("no key commitment from key holder {holder}")))?;
        if theirs.next().is_some() {
            return Err(refused(format!(
                "two key commitments from key holder {holder}"
            )));
        }
        verifier
            .verify(holder, &c.message(round), &c.signature)
            .map_err(|why| refused(format!("key holder {holder}'s key commitment: {why}")))?;
        sorted.push(c);
    }
    sorted.sort_by_key(|c| c.from);
    let mut h = Sha256::new();
    h.update(b"tessera-he key commitments v1");
    for c in sorted {
        h.update(c.from.to_le_bytes());
        h.update(c.digest);
    }
    Ok(h.finalize().into())
}

/// What a key holder signs when it reveals its share: the share's digest
/// and the list of commitments it was shown.
pub(crate) fn share_message(round: &RoundId, share: &[u8], list: &[u8; 32]) -> Vec<u8> {
    round.message("key share", &[&share_digest(share), list])
}

/// Signs `share` for `round` under the list `list`.
pub(crate) fn sign_share(
    round: &RoundId,
    share: &[u8],
    list: &[u8; 32],
    signer: &dyn Signer,
) -> Result<Vec<u8>, HeError> {
    signer
        .sign(&share_message(round, share, list))
        .map_err(|e| HeError::Fhe(format!("signing the key share: {e}")))
}

/// A key holder's public key share for one round, signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyShare {
    /// The key holder.
    pub from: u32,
    /// Its public key share on the round's common random polynomial, as the
    /// bytes of the one-party public key it makes alone (fhe.rs serialises
    /// keys, not shares): what travels.
    pub share: Vec<u8>,
    /// Its signature of the round, the share's digest and the digest of
    /// every key holder's commitment it was shown.
    pub signature: Vec<u8>,
}

/// The digest of a public key share's bytes: what its commitment holds.
pub fn share_digest(share: &[u8]) -> [u8; 32] {
    Sha256::digest(share).into()
}

/// The round's joint key, assembled by the contributor itself from every
/// key holder's signed share: the only key a contributor encrypts under.
pub struct EndorsedKey {
    pub(crate) round: RoundId,
    /// The key's two polynomials (NTT representation), as encryption takes
    /// them.
    pub(crate) polys: Vec<fhe_math::rq::Poly>,
    pub(crate) digest: [u8; 32],
}

impl EndorsedKey {
    /// Checks that `commitments` hold one signed commitment of each of
    /// `holders` (a non-empty list), that `shares` hold one share of each,
    /// matching its commitment, signed by its key holder for `round` over
    /// those same commitments, and on the round's common random polynomial,
    /// and adds them up.
    pub fn assemble(
        params: &HeParams,
        round: RoundId,
        commitments: &[KeyCommitment],
        shares: &[KeyShare],
        holders: &[u32],
        verifier: &dyn Verifier,
    ) -> Result<Self, HeError> {
        let list = check_commitments(&round, commitments, holders, verifier)?;
        // The round's common polynomial, as a one-party key of its own
        // shows it: every share must be on it.
        let probe = wire::crp_probe(params, &round)?;
        let mut p0 = None;
        for &holder in holders {
            let mut theirs = shares.iter().filter(|k| k.from == holder);
            let k = theirs
                .next()
                .ok_or_else(|| refused(format!("no key share from key holder {holder}")))?;
            if theirs.next().is_some() {
                return Err(refused(format!("two key shares from key holder {holder}")));
            }
            let committed = commitments.iter().find(|c| c.from == holder);
            if committed.is_none_or(|c| c.digest != share_digest(&k.share)) {
                return Err(refused(format!(
                    "key holder {holder}'s key share does not match its commitment"
                )));
            }
            verifier
                .verify(
                    holder,
                    &share_message(&round, &k.share, &list),
                    &k.signature,
                )
                .map_err(|why| refused(format!("key holder {holder}'s key share: {why}")))?;
            let one = wire::one_party_key(params, &k.share)
                .map_err(|why| refused(format!("key holder {holder}'s key share: {why}")))?;
            if one[1] != probe[1] {
                return Err(refused(format!(
                    "key holder {holder}'s key share is not on the round's common polynomial"
                )));
            }
            p0 = Some(match p0 {
                None => one[0].clone(),
                Some(mut sum) => {
                    sum += &one[0];
                    sum
                }
            });
        }
        if let Some(stranger) = shares.iter().find(|k| !holders.contains(&k.from)) {
            return Err(refused(format!(
                "a key share from {}, not a key holder",
                stranger.from
            )));
        }
        let p0 = p0.ok_or_else(|| refused("a joint key needs at least one key holder"))?;
        let polys = vec![p0, probe[1].clone()];
        let key = wire::public_key(params, polys.clone())?;
        let digest = key_digest(&key);
        Ok(Self {
            round,
            polys,
            digest,
        })
    }

    /// The key's digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}
