//! Homomorphic aggregation: the alternative to SecAgg+ that a plan chooses
//! with `secure_aggregation.scheme = "homomorphic"`.
//!
//! Multiparty BFV (Mouchet et al., "Multiparty Homomorphic Encryption from
//! Ring-Learning-with-Errors", PoPETs 2021) from the fhe.rs crate:
//!
//! 1. **Keys.** Each round, every designated key holder draws a fresh secret
//!    key share from its own secret and publishes its public key share on the
//!    round's common random polynomial ([`KeyHolder::new`]); the shares add up
//!    to the round's joint public key ([`joint_key`]). Nobody holds the joint
//!    secret key: it is the sum of the key holders' shares.
//! 2. **Contributions.** Each contributor quantises its update into
//!    `Z_2^32` exactly as for SecAgg+ (`tessera_secagg::quantize`, with the
//!    metadata appended), packs [`DEGREE`] values a ciphertext in the
//!    coefficients of the plaintext polynomial (plaintext modulus `2^32`),
//!    encrypts them under the joint key with randomness from its own secret,
//!    and signs the ciphertexts' digest with its identity key
//!    ([`encrypt`]).
//! 3. **Sum.** Ciphertexts add coefficient-wise; the sum decrypts to the sum
//!    of the quantised vectors modulo `2^32`, the same values SecAgg+
//!    unmasks, so the decoded update is the same to the bit.
//! 4. **Decryption.** Each key holder recomputes the sum itself from the
//!    signed contributions ([`VerifiedSum`]: signatures checked, one a
//!    contributor, this round only) and answers with one decryption share of
//!    that sum, once, if it holds at least the plan's minimum of distinct
//!    contributions ([`KeyHolder::decryption_shares`]); the shares combine
//!    into the plaintext sum ([`combine`]). All key holders must answer
//!    (n-of-n).
//!
//! The adversary is the coordinator: it relays everything and sees every
//! ciphertext, but it holds no key share, so it cannot decrypt a
//! contribution; it cannot have one contribution decrypted in place of a
//! sum, because the key holders decrypt only what they summed themselves
//! from at least the minimum of signed contributions; it cannot pass its own
//! encryptions as sites' (they are not signed by a site), replay a past
//! round's (the round is signed), or ask twice (a key holder's round key is
//! consumed by its one answer, and keys are fresh every round). What it
//! learns is the sum, as with SecAgg+. Colluding with every key holder, it
//! learns everything; colluding with sites, it learns what the sum minus
//! their inputs reveals (as with any sum).
//!
//! Limits, stated: decryption is n-of-n (one key holder offline and the
//! round's sum cannot be decrypted; name few, reliable key holders);
//! fhe.rs's decryption shares carry the scheme's ordinary error rather than
//! the paper's larger "smudging" noise, which bears on the secret key of
//! this round only, since each round's keys are fresh; and the key holders
//! download every contribution to recompute the sum.

#![deny(missing_docs)]

use std::collections::BTreeSet;
use std::sync::Arc;

use fhe::bfv::{
    BfvParameters, BfvParametersBuilder, Ciphertext, Encoding, Plaintext, PublicKey, SecretKey,
};
use fhe::mbfv::{AggregateIter, CommonRandomPoly, DecryptionShare, PublicKeyShare};
use fhe_traits::{FheDecoder, FheEncoder, FheEncrypter, Serialize};
use rand_chacha_09::ChaCha20Rng;
use rand_chacha_09::rand_core::SeedableRng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tessera_secagg::{Signer, Verifier};

/// Values a ciphertext holds: the ring degree.
pub const DEGREE: usize = 4096;

/// The ciphertext moduli: two NTT-friendly primes of 36 bits (72 bits in
/// all, well inside the 109 that 128-bit security allows at degree 4096).
/// With the plaintext modulus `2^32` the scale is `2^40`, room for the noise
/// of a sum of a million fresh ciphertexts.
const MODULI: [u64; 2] = [0xffffee001, 0xffffc4001];

/// The plaintext modulus: sums are taken modulo `2^32`, as SecAgg+'s.
const PLAINTEXT_MODULUS: u64 = 1 << 32;

/// The most contributions one sum takes: past it the noise of the sum could
/// reach the scale and the decryption would be wrong.
pub const MAX_CONTRIBUTIONS: usize = 1 << 20;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum HeError {
    /// The encryption library refused an operation.
    #[error("homomorphic encryption: {0}")]
    Fhe(String),
    /// A message or request was refused, and why.
    #[error("refused: {0}")]
    Refused(String),
}

fn fhe(e: impl std::fmt::Display) -> HeError {
    HeError::Fhe(e.to_string())
}

/// The scheme's parameters (the same for every round).
#[derive(Clone, Debug)]
pub struct HeParams(Arc<BfvParameters>);

impl HeParams {
    /// Degree [`DEGREE`], two 36-bit moduli, plaintext modulus `2^32`.
    pub fn new() -> Result<Self, HeError> {
        BfvParametersBuilder::new()
            .set_degree(DEGREE)
            .set_plaintext_modulus(PLAINTEXT_MODULUS)
            .set_moduli(&MODULI)
            .build_arc()
            .map(Self)
            .map_err(fhe)
    }

    /// Ciphertexts for `length` values.
    pub fn ciphertexts_for(length: usize) -> usize {
        length.div_ceil(DEGREE)
    }

    /// The bytes of one polynomial in the ciphertext ring (a public key
    /// share or a decryption share), packed as fhe.rs packs a ciphertext's:
    /// [`DEGREE`] coefficients for each modulus, at the modulus's bit width.
    pub fn polynomial_bytes() -> u64 {
        MODULI
            .iter()
            .map(|q| (DEGREE as u64 * u64::from(64 - q.leading_zeros())).div_ceil(8))
            .sum()
    }
}

/// A generator seeded from a secret and a label.
fn rng(secret: &[u8; 32], label: &[u8], index: u64) -> ChaCha20Rng {
    let mut h = Sha256::new();
    h.update(b"tessera-he rng v1");
    h.update(secret);
    h.update((label.len() as u64).to_le_bytes());
    h.update(label);
    h.update(index.to_le_bytes());
    ChaCha20Rng::from_seed(h.finalize().into())
}

/// The round's common random polynomial, from a public seed every key
/// holder derives alike (the plan's round seed).
pub fn common_poly(params: &HeParams, seed: &[u8; 32]) -> Result<CommonRandomPoly, HeError> {
    CommonRandomPoly::new(&params.0, &mut rng(seed, b"crp", 0)).map_err(fhe)
}

/// The joint public key of the round: the sum of its key holders' shares.
/// Refuses an empty set.
pub fn joint_key(shares: Vec<PublicKeyShare>) -> Result<PublicKey, HeError> {
    if shares.is_empty() {
        return Err(HeError::Refused(
            "a joint key needs at least one key holder's share".into(),
        ));
    }
    shares.into_iter().aggregate().map_err(fhe)
}

/// A key holder's part in one round: its secret key share, used for one
/// decryption.
pub struct KeyHolder {
    round: u32,
    share: SecretKey,
    secret: [u8; 32],
}

impl KeyHolder {
    /// The key holder's round key from its own `secret`, and the public key
    /// share it publishes.
    pub fn new(
        params: &HeParams,
        round: u32,
        secret: [u8; 32],
        crp: &CommonRandomPoly,
    ) -> Result<(Self, PublicKeyShare), HeError> {
        let mut g = rng(&secret, b"key", u64::from(round));
        let share = SecretKey::random(&params.0, &mut g);
        let public = PublicKeyShare::new(&share, crp.clone(), &mut g).map_err(fhe)?;
        Ok((
            Self {
                round,
                share,
                secret,
            },
            public,
        ))
    }

    /// This key holder's decryption shares of `sum`, one a ciphertext: only
    /// for a sum of this round that it verified itself from at least
    /// `min_contributions` distinct contributors (never fewer than two).
    /// Consumes the round key: one answer a round.
    pub fn decryption_shares(
        self,
        sum: &VerifiedSum,
        min_contributions: usize,
    ) -> Result<Vec<DecryptionShare>, HeError> {
        if sum.round != self.round {
            return Err(HeError::Refused(format!(
                "a sum of round {}, this key is round {}'s",
                sum.round, self.round
            )));
        }
        let min = min_contributions.max(2);
        if sum.contributors.len() < min {
            return Err(HeError::Refused(format!(
                "a sum of {} contribution(s); a key holder decrypts sums of at least {min}",
                sum.contributors.len()
            )));
        }
        sum.sums
            .par_iter()
            .enumerate()
            .map(|(i, ct)| {
                let mut g = rng(
                    &self.secret,
                    b"decrypt",
                    (u64::from(self.round) << 32) | i as u64,
                );
                DecryptionShare::new(&self.share, ct, &mut g).map_err(fhe)
            })
            .collect()
    }
}

/// One contributor's encrypted, signed input to a round.
pub struct Contribution {
    /// The contributor's id.
    pub from: u32,
    /// The round.
    pub round: u32,
    /// Values encrypted.
    pub length: usize,
    /// The ciphertexts, [`DEGREE`] values each.
    pub ciphertexts: Vec<Ciphertext>,
    /// The SHA-256 of the ciphertexts' bytes.
    pub digest: [u8; 32],
    /// The ciphertexts' serialised size.
    pub wire_bytes: u64,
    /// The contributor's signature of [`Contribution::signed_message`].
    pub signature: Vec<u8>,
}

impl Contribution {
    /// What the contributor signs: the round, its id, the length and the
    /// ciphertexts' digest.
    pub fn signed_message(round: u32, from: u32, length: usize, digest: &[u8; 32]) -> Vec<u8> {
        let mut m = b"tessera-he contribution v1".to_vec();
        m.extend_from_slice(&round.to_le_bytes());
        m.extend_from_slice(&from.to_le_bytes());
        m.extend_from_slice(&(length as u64).to_le_bytes());
        m.extend_from_slice(digest);
        m
    }

    /// The digest and serialised size of `ciphertexts`: the SHA-256 of
    /// each ciphertext's bytes (hashed in parallel), then of that list.
    pub fn digest_of(ciphertexts: &[Ciphertext]) -> ([u8; 32], u64) {
        let each: Vec<([u8; 32], u64)> = ciphertexts
            .par_iter()
            .map(|ct| {
                let b = ct.to_bytes();
                (Sha256::digest(&b).into(), b.len() as u64)
            })
            .collect();
        let mut h = Sha256::new();
        h.update(b"tessera-he ciphertexts v1");
        let mut bytes = 0u64;
        for (digest, len) in &each {
            h.update(len.to_le_bytes());
            h.update(digest);
            bytes += len;
        }
        (h.finalize().into(), bytes)
    }
}

/// Encrypts `values` (each below `2^32`) under the round's joint `key` with
/// randomness from the contributor's own `secret`, and signs them.
pub fn encrypt(
    params: &HeParams,
    key: &PublicKey,
    round: u32,
    from: u32,
    values: &[u32],
    secret: &[u8; 32],
    signer: &dyn Signer,
) -> Result<Contribution, HeError> {
    let ciphertexts: Vec<Ciphertext> = values
        .par_chunks(DEGREE)
        .enumerate()
        .map(|(i, chunk)| {
            let coefficients: Vec<u64> = chunk.iter().map(|&v| u64::from(v)).collect();
            let pt =
                Plaintext::try_encode(&coefficients, Encoding::poly(), &params.0).map_err(fhe)?;
            let mut g = rng(secret, b"encrypt", (u64::from(round) << 32) | i as u64);
            key.try_encrypt(&pt, &mut g).map_err(fhe)
        })
        .collect::<Result<_, _>>()?;
    let (digest, wire_bytes) = Contribution::digest_of(&ciphertexts);
    let signature = signer
        .sign(&Contribution::signed_message(
            round,
            from,
            values.len(),
            &digest,
        ))
        .map_err(|e| HeError::Fhe(format!("signing the contribution: {e}")))?;
    Ok(Contribution {
        from,
        round,
        length: values.len(),
        ciphertexts,
        digest,
        wire_bytes,
        signature,
    })
}

/// A sum of contributions that a key holder computed and checked itself:
/// each signed by its contributor for this round and this length, one a
/// contributor.
pub struct VerifiedSum {
    round: u32,
    length: usize,
    contributors: BTreeSet<u32>,
    sums: Vec<Arc<Ciphertext>>,
}

impl VerifiedSum {
    /// An empty sum of `length` values for `round`.
    pub fn new(params: &HeParams, round: u32, length: usize) -> Self {
        let zero = Arc::new(Ciphertext::zero(&params.0));
        Self {
            round,
            length,
            contributors: BTreeSet::new(),
            sums: vec![zero; HeParams::ciphertexts_for(length)],
        }
    }

    /// Adds `c` after checking it; a refused contribution leaves the sum as
    /// it was.
    pub fn absorb(&mut self, c: &Contribution, verifier: &dyn Verifier) -> Result<(), HeError> {
        if c.round != self.round {
            return Err(HeError::Refused(format!(
                "participant {}'s contribution is for round {}, the sum is round {}'s",
                c.from, c.round, self.round
            )));
        }
        if c.length != self.length || c.ciphertexts.len() != self.sums.len() {
            return Err(HeError::Refused(format!(
                "participant {}'s contribution holds {} values in {} ciphertexts, the round has {} in {}",
                c.from,
                c.length,
                c.ciphertexts.len(),
                self.length,
                self.sums.len()
            )));
        }
        if self.contributors.contains(&c.from) {
            return Err(HeError::Refused(format!(
                "a second contribution from participant {}",
                c.from
            )));
        }
        if self.contributors.len() >= MAX_CONTRIBUTIONS {
            return Err(HeError::Refused(format!(
                "a sum takes at most {MAX_CONTRIBUTIONS} contributions"
            )));
        }
        // The digest is recomputed: the signature covers these ciphertexts.
        let (digest, _) = Contribution::digest_of(&c.ciphertexts);
        if digest != c.digest {
            return Err(HeError::Refused(format!(
                "participant {}'s ciphertexts do not match their digest",
                c.from
            )));
        }
        let message = Contribution::signed_message(c.round, c.from, c.length, &digest);
        verifier
            .verify(c.from, &message, &c.signature)
            .map_err(|e| HeError::Refused(format!("participant {}'s contribution: {e}", c.from)))?;
        self.sums
            .par_iter_mut()
            .zip(&c.ciphertexts)
            .for_each(|(sum, ct)| *Arc::make_mut(sum) += ct);
        self.contributors.insert(c.from);
        Ok(())
    }

    /// Who is in the sum.
    pub fn contributors(&self) -> &BTreeSet<u32> {
        &self.contributors
    }

    /// The summed ciphertexts (what the coordinator also computes).
    pub fn ciphertexts(&self) -> &[Arc<Ciphertext>] {
        &self.sums
    }
}

/// Combines every key holder's decryption shares (one list a key holder,
/// each a share a ciphertext) into the `length` summed values modulo `2^32`.
pub fn combine(shares: Vec<Vec<DecryptionShare>>, length: usize) -> Result<Vec<u32>, HeError> {
    let n = HeParams::ciphertexts_for(length);
    if shares.is_empty() {
        return Err(HeError::Refused("no key holder's decryption shares".into()));
    }
    if let Some(bad) = shares.iter().find(|s| s.len() != n) {
        return Err(HeError::Refused(format!(
            "a key holder answered with {} decryption shares, the sum has {n} ciphertexts",
            bad.len()
        )));
    }
    // Regroup by ciphertext: the i-th share of every key holder.
    let mut by_ct: Vec<Vec<DecryptionShare>> =
        (0..n).map(|_| Vec::with_capacity(shares.len())).collect();
    for holder in shares {
        for (i, share) in holder.into_iter().enumerate() {
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
