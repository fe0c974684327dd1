//! Homomorphic aggregation: the alternative to SecAgg+ that a plan chooses
//! with `secure_aggregation.scheme = "homomorphic"`.
//!
//! Multiparty BFV (Mouchet et al., "Multiparty Homomorphic Encryption from
//! Ring-Learning-with-Errors", PoPETs 2021) from the fhe.rs crate. A round,
//! every message signed by its sender's identity key over the round's seed
//! (which binds the run and the round) and the round number:
//!
//! 1. **Keys.** Every designated key holder draws a fresh secret key share
//!    and commits to its public key share on the round's common random
//!    polynomial, signed ([`KeyHolder::new`]); once every key holder's
//!    commitment is in, each publishes its share signed over all of them
//!    ([`KeyHolder::share`]), so that none can choose its share after seeing
//!    another's (a rogue key cancelling the others'). Each contributor checks
//!    every commitment, every share against its commitment and every
//!    signature over the same commitments, and adds the shares up itself
//!    ([`EndorsedKey::assemble`]): the joint public key. Nobody holds the
//!    joint secret key: it is the sum of the key holders' shares.
//! 2. **Commit.** Each contributor quantises its update into `Z_2^32`
//!    exactly as for SecAgg+ (`tessera_secagg::quantize`, the metadata
//!    appended), packs [`DEGREE`] values a ciphertext in the coefficients of
//!    the plaintext polynomial (plaintext modulus `2^32`), encrypts them
//!    ([`encrypt`]) and sends only its signed digest (a [`Commitment`]).
//! 3. **Reveal.** The coordinator closes the round's [`CommitmentList`]; each
//!    contributor signs the list it was shown, if its own commitment is in it,
//!    and only then sends its ciphertexts ([`Contribution::reveal`], which
//!    consumes the contribution: one list a contribution).
//! 4. **Sum and decryption.** A decryption share of a summed ciphertext
//!    `(c0, c1)` is `c1 s_i + e`: it depends on the sum's second polynomial
//!    alone. So each key holder fetches every listed contribution's second
//!    polynomials with the SHA-256 of each first one
//!    ([`Contribution::for_key_holder`]; 1.33 `he-half-fetch`, half the
//!    bytes of the whole ciphertexts), checks every commitment (which binds
//!    both polynomials' digests) and every contributor's signature of the
//!    same list, and every ciphertext against its commitment, and sums the
//!    second polynomials itself ([`VerifiedSum`]); with every listed
//!    contribution in and at least the plan's minimum (and two), it answers
//!    with its decryption shares of that sum, one polynomial a ciphertext,
//!    signed with the digest of the summed second polynomials
//!    ([`KeyHolder::answer`]). The first polynomials it never sees change
//!    nothing it gives: the coordinator, which sums them, combines the
//!    answers with its own sum. The answers of every key holder,
//!    all for the same sum, combine into the plaintext sum ([`combine`]):
//!    the sum of the quantised vectors modulo `2^32`, the values SecAgg+
//!    unmasks, so the decoded update is the same to the bit.
//!
//! The adversary is the coordinator, alone or with some sites: it relays
//! everything and sees every ciphertext but holds no key share. It cannot
//! have one contribution decrypted: key holders decrypt only sums they
//! computed themselves from at least the minimum of signed contributions of
//! this round and run, one a site; it cannot pass its own encryptions as
//! sites' (unsigned), replay another round's or run's (the round seed is
//! signed), substitute the joint key or a key holder's share of it
//! (contributors add up the shares themselves, each signed by its key
//! holder and matching the commitment it made before any share was out,
//! which stops a key holder that colludes with it from choosing its share
//! to cancel the others'), or give the key holders different sums (every answer names the
//! digest of its sum). A sum of one honest site's contribution and
//! encryptions of zero from sites the coordinator controls reveals that
//! site's input, as with any sum: the plan's minimum counts honest sites. A colluding site that saw the others' ciphertexts
//! could choose its own to cancel theirs (no proof of well-formedness is
//! made), so that the "sum" decrypts to one site's input: the commitments
//! stop it, since every honest contributor reveals only after the list it
//! signed closed, and the key holders sum exactly that list. Every secret
//! draw is bound to everything it protects: a key share to the round's seed,
//! an encryption to the key and the values, a decryption share to the sum;
//! reusing a draw for different inputs would expose a key share or the
//! values. Colluding with every key holder, the coordinator learns
//! everything; with sites, what the sum minus their inputs reveals.
//!
//! Limits, stated: decryption is n-of-n (one key holder offline and the
//! round's sum cannot be decrypted; name few, reliable key holders);
//! fhe.rs's decryption shares carry the scheme's ordinary error rather than
//! the paper's larger "smudging" noise, which bears on the secret key of
//! this round only, since each round's keys are fresh; the key holders
//! download every contribution's second polynomials to recompute the sum;
//! and a malformed
//! ciphertext from a malicious site (committed before it saw any other) can
//! spoil the sum, though not reveal anyone's input.

#![deny(missing_docs)]

use std::borrow::Borrow;
use std::sync::Arc;

use fhe::bfv::{BfvParameters, BfvParametersBuilder, Ciphertext, PublicKey, SecretKey};
use fhe::mbfv::{AggregateIter, CommonRandomPoly, PublicKeyShare};
use fhe_math::rq::Poly;
use fhe_traits::Serialize;
use rand_chacha_09::ChaCha20Rng;
use rand_chacha_09::rand_core::SeedableRng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tessera_secagg::{Signer, Verifier};

mod bfv;
mod combine;
mod keys;
mod sum;
mod wire;
pub use combine::{combine, open_with};
pub use keys::{EndorsedKey, KeyCommitment, KeyShare, share_digest};
pub use sum::{VerifiedSum, sum_digest};
use wire::MODULI;
pub use wire::{
    CIPHERTEXT_BYTES, POLYNOMIAL_BYTES, ciphertext_from_bytes, ciphertext_to_bytes, misfit_length,
    polynomial_from_bytes, polynomial_to_bytes,
};

/// Values a ciphertext holds: the ring degree.
pub const DEGREE: usize = 4096;

/// The plaintext modulus: sums are taken modulo `2^32`, as SecAgg+'s.
const PLAINTEXT_MODULUS: u64 = 1 << 32;

/// Ciphertexts a message carries at most (about 4.1 MB): contributions,
/// and answers, travel in pieces of this many.
pub const PIECE: usize = 64;

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

fn refused(why: impl Into<String>) -> HeError {
    HeError::Refused(why.into())
}

/// The scheme's parameters (the same for every round).
#[derive(Clone, Debug)]
pub struct HeParams(Arc<BfvParameters>);

impl HeParams {
    /// Degree [`DEGREE`], one 62-bit modulus, plaintext modulus `2^32`.
    pub fn new() -> Result<Self, HeError> {
        BfvParametersBuilder::new()
            .set_degree(DEGREE)
            .set_plaintext_modulus(PLAINTEXT_MODULUS)
            .set_moduli(&MODULI)
            .build_arc()
            .map(Self)
            .map_err(fhe)
            .and_then(|params| {
                wire::check_encoding(&params)?;
                Ok(params)
            })
    }

    /// The process's one instance of the parameters, made at its first use
    /// (7 to 8 ms each time otherwise: every party reads and adds messages
    /// on one instance anyway).
    pub fn shared() -> Result<Self, HeError> {
        static SHARED: std::sync::OnceLock<HeParams> = std::sync::OnceLock::new();
        if let Some(params) = SHARED.get() {
            return Ok(params.clone());
        }
        let made = Self::new()?;
        Ok(SHARED.get_or_init(|| made).clone())
    }

    /// fhe.rs's parameters (for tests that build ciphertexts by hand).
    pub fn bfv(&self) -> &Arc<BfvParameters> {
        &self.0
    }

    /// Ciphertexts for `length` values.
    pub fn ciphertexts_for(length: usize) -> usize {
        length.div_ceil(DEGREE)
    }

    /// The bytes of one polynomial in the ciphertext ring as it travels:
    /// [`DEGREE`] coefficients for each modulus, at the modulus's bit width
    /// (half of [`CIPHERTEXT_BYTES`]).
    pub fn polynomial_bytes() -> u64 {
        MODULI
            .iter()
            .map(|q| (DEGREE as u64 * u64::from(64 - q.leading_zeros())).div_ceil(8))
            .sum()
    }
}

/// The public facts of a round that every signature covers: its seed
/// (derived from the run and the round: the common random polynomial comes
/// from it) and its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundId {
    /// The round's number.
    pub round: u32,
    /// The round's public seed.
    pub seed: [u8; 32],
}

impl RoundId {
    /// A signed message: a label, this round, then `parts`.
    fn message(&self, label: &str, parts: &[&[u8]]) -> Vec<u8> {
        let mut m = format!("tessera-he {label} v1").into_bytes();
        m.extend_from_slice(&self.seed);
        m.extend_from_slice(&self.round.to_le_bytes());
        for part in parts {
            m.extend_from_slice(&(part.len() as u64).to_le_bytes());
            m.extend_from_slice(part);
        }
        m
    }
}

/// A generator seeded from a secret and everything the draw is bound to.
fn rng(secret: &[u8; 32], label: &[u8], bound: &[&[u8]]) -> ChaCha20Rng {
    let mut h = Sha256::new();
    h.update(b"tessera-he rng v1");
    h.update(secret);
    for part in std::iter::once(&label).chain(bound) {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    ChaCha20Rng::from_seed(h.finalize().into())
}

/// The round's common random polynomial, from its public seed.
pub fn common_poly(params: &HeParams, round: &RoundId) -> Result<CommonRandomPoly, HeError> {
    CommonRandomPoly::new(&params.0, &mut rng(&round.seed, b"crp", &[])).map_err(fhe)
}

/// The joint public key of the round: the sum of its key holders' shares.
/// Refuses an empty set.
pub fn joint_key(shares: Vec<PublicKeyShare>) -> Result<PublicKey, HeError> {
    if shares.is_empty() {
        return Err(refused("a joint key needs at least one key holder's share"));
    }
    shares.into_iter().aggregate().map_err(fhe)
}

/// The SHA-256 of a public key's bytes.
pub fn key_digest(key: &PublicKey) -> [u8; 32] {
    Sha256::digest(key.to_bytes()).into()
}

/// A key holder's part in one round: its secret key share, used for one
/// answer.
pub struct KeyHolder {
    id: u32,
    round: RoundId,
    /// The share in the NTT representation, as its answer takes it.
    share_ntt: bfv::SecretPoly,
    secret: [u8; 32],
    /// Its public key share's bytes, and its commitment to them.
    public: Vec<u8>,
    commitment: KeyCommitment,
    /// The list of commitments its share is signed over, once signed.
    signed_list: std::sync::OnceLock<[u8; 32]>,
}

impl KeyHolder {
    /// Key holder `id`'s round key from its own `secret` (drawn for this
    /// round's seed), and its signed commitment to the public key share it
    /// will publish ([`KeyHolder::share`]) once every key holder has
    /// committed.
    pub fn new(
        params: &HeParams,
        id: u32,
        round: RoundId,
        secret: [u8; 32],
        signer: &dyn Signer,
    ) -> Result<(Self, KeyCommitment), HeError> {
        let crp = common_poly(params, &round)?;
        let mut g = rng(&secret, b"key", &[&round.seed, &round.round.to_le_bytes()]);
        let share = SecretKey::random(&params.0, &mut g);
        let public = PublicKeyShare::new(&share, crp, &mut g).map_err(fhe)?;
        let public = joint_key(vec![public])?.to_bytes();
        let share_ntt = bfv::SecretPoly::of(params, &share)?;
        let mut commitment = KeyCommitment {
            from: id,
            digest: keys::share_digest(&public),
            signature: Vec::new(),
        };
        commitment.signature = signer
            .sign(&commitment.message(&round))
            .map_err(|e| HeError::Fhe(format!("signing the key commitment: {e}")))?;
        Ok((
            Self {
                id,
                round,
                share_ntt,
                secret,
                public,
                commitment: commitment.clone(),
                signed_list: std::sync::OnceLock::new(),
            },
            commitment,
        ))
    }

    /// Its public key share, signed over `commitments` (every one of
    /// `holders`' commitments, each signed): given only when its own
    /// commitment is in them as it made it, so that no key holder can choose
    /// its share after seeing this one; and under one list of commitments
    /// only (asked again, the same list is signed again, another refused: a
    /// coordinator that showed the share to a colluding key holder cannot
    /// have it signed again beside a new commitment cancelling it).
    pub fn share(
        &self,
        commitments: &[KeyCommitment],
        holders: &[u32],
        verifier: &dyn Verifier,
        signer: &dyn Signer,
    ) -> Result<KeyShare, HeError> {
        let list = keys::check_commitments(&self.round, commitments, holders, verifier)?;
        if !commitments.contains(&self.commitment) {
            return Err(refused(format!(
                "key holder {}'s commitment is not in the list as it made it",
                self.id
            )));
        }
        if *self.signed_list.get_or_init(|| list) != list {
            return Err(refused(format!(
                "key holder {} shared its key under another list of commitments this round",
                self.id
            )));
        }
        Ok(KeyShare {
            from: self.id,
            share: self.public.clone(),
            signature: keys::sign_share(&self.round, &self.public, &list, signer)?,
        })
    }

    /// This key holder's decryption shares of `sum`, one a ciphertext,
    /// signed with the digest of the sum's second polynomials (all a share
    /// depends on): only for a sum of this round that it
    /// verified itself, holding every listed contribution and at least
    /// `min_contributions` (never fewer than two). Consumes the round key.
    pub fn answer(
        self,
        sum: &VerifiedSum,
        min_contributions: usize,
        signer: &dyn Signer,
    ) -> Result<Answer, HeError> {
        if sum.round != self.round {
            return Err(refused(format!(
                "a sum of round {}, this key is round {}'s",
                sum.round.round, self.round.round
            )));
        }
        let missing = sum.list.len() - sum.absorbed.len();
        if missing > 0 {
            return Err(refused(format!(
                "{missing} listed contribution(s) missing from the sum"
            )));
        }
        let min = min_contributions.max(2);
        if sum.absorbed.len() < min {
            return Err(refused(format!(
                "a sum of {} contribution(s); a key holder decrypts sums of at least {min}",
                sum.absorbed.len()
            )));
        }
        let digest = sum.digest();
        let shares = sum
            .sums
            .par_iter()
            .enumerate()
            .map(|(i, ct)| {
                let mut g = rng(
                    &self.secret,
                    b"decrypt",
                    &[&self.round.seed, &digest, &(i as u64).to_le_bytes()],
                );
                // The decryption share `c1 s_i + e`, of the sum's second
                // polynomial alone (1.33 `he-half-fetch`: a key holder
                // fetches no first polynomial); what fhe.rs's key switch of
                // `(0, c1)` to the zero key makes, to the bit.
                let second = ct.get(1).ok_or_else(|| refused("an empty sum"))?;
                self.share_ntt.share(second, &mut g)
            })
            .collect::<Result<_, _>>()?;
        let signature = signer
            .sign(&self.round.message("answer", &[&digest]))
            .map_err(|e| HeError::Fhe(format!("signing the answer: {e}")))?;
        Ok(Answer {
            from: self.id,
            sum_digest: digest,
            shares,
            signature,
        })
    }
}

/// A key holder's answer: its decryption shares of the sum whose digest it
/// names.
pub struct Answer {
    /// The key holder.
    pub from: u32,
    /// The digest of the summed ciphertexts' second polynomials, which the
    /// shares decrypt ([`sum_digest`]).
    pub sum_digest: [u8; 32],
    /// One share a summed ciphertext `(c0, c1)`: this key holder's part of
    /// the decryption, the polynomial `c1 s_i + e` (in the NTT
    /// representation); every key holder's added to `c0` make the
    /// plaintext's phase.
    pub shares: Vec<Poly>,
    /// Its signature of the round and the digest.
    pub signature: Vec<u8>,
}

/// A contributor's signed digest of its ciphertexts, sent before them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commitment {
    /// The contributor.
    pub from: u32,
    /// Values encrypted.
    pub length: usize,
    /// The digest of the ciphertexts (see [`Contribution::digest_of`]):
    /// of each ciphertext's two polynomials' SHA-256, so that a key holder
    /// checks the second polynomials against it given the first's digests.
    pub digest: [u8; 32],
    /// The contributor's signature of the round, the key, the length and
    /// the digest.
    pub signature: Vec<u8>,
}

impl Commitment {
    fn message(&self, round: &RoundId, key: &[u8; 32]) -> Vec<u8> {
        round.message(
            "commitment",
            &[
                &self.from.to_le_bytes(),
                key,
                &(self.length as u64).to_le_bytes(),
                &self.digest,
            ],
        )
    }
}

/// The round's commitments, closed before any ciphertext is revealed: one
/// a contributor, ordered by contributor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitmentList {
    entries: Vec<Commitment>,
}

impl CommitmentList {
    /// The list of `commitments`; refuses two from one contributor.
    pub fn new(mut commitments: Vec<Commitment>) -> Result<Self, HeError> {
        commitments.sort_by_key(|c| c.from);
        if let Some(w) = commitments.windows(2).find(|w| w[0].from == w[1].from) {
            return Err(refused(format!(
                "two commitments from participant {}",
                w[0].from
            )));
        }
        Ok(Self {
            entries: commitments,
        })
    }

    /// The commitments, by contributor.
    pub fn entries(&self) -> &[Commitment] {
        &self.entries
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn find(&self, from: u32) -> Option<&Commitment> {
        self.entries
            .binary_search_by_key(&from, |c| c.from)
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The list's digest: what each contributor signs before it reveals.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"tessera-he list v1");
        for c in &self.entries {
            h.update(c.from.to_le_bytes());
            h.update((c.length as u64).to_le_bytes());
            h.update(c.digest);
        }
        h.finalize().into()
    }
}

/// One contributor's encrypted input to a round, kept until it reveals.
pub struct Contribution {
    /// The contributor's commitment to its ciphertexts.
    pub commitment: Commitment,
    /// The ciphertexts, [`DEGREE`] values each.
    ciphertexts: Vec<Ciphertext>,
    /// Each ciphertext's SHA-256 and size in its canonical encoding,
    /// computed once where the contribution was made or read (the
    /// ciphertexts cannot change after).
    each: Vec<Hashed>,
    /// The parameters the ciphertexts were made or read on, where this
    /// crate built them (two polynomials each, at the top level): a sum on
    /// the same instance adds them as they are, without rebuilding a copy.
    built_on: Option<HeParams>,
    /// The ciphertexts' bytes, where they were made here (serialised once,
    /// to hash them, and kept to send them).
    made_bytes: Option<Vec<Vec<u8>>>,
}

/// A ciphertext's polynomials' SHA-256 and its size, in its canonical
/// encoding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hashed {
    first: [u8; 32],
    second: [u8; 32],
    len: u64,
}

/// `bytes`, a ciphertext's (two polynomials, one after the other), hashed.
pub(crate) fn hashed(bytes: &[u8]) -> Hashed {
    let (first, second) = bytes.split_at(bytes.len() / 2);
    Hashed {
        first: Sha256::digest(first).into(),
        second: Sha256::digest(second).into(),
        len: bytes.len() as u64,
    }
}

impl Contribution {
    /// `ciphertexts` under `commitment`, as their contributor made them
    /// (whether they match the commitment is [`VerifiedSum::absorb`]'s
    /// check).
    pub fn new(commitment: Commitment, ciphertexts: Vec<Ciphertext>) -> Self {
        let each = ciphertexts
            .par_iter()
            .map(|ct| hashed(&ciphertext_to_bytes(ct)))
            .collect();
        Self {
            commitment,
            ciphertexts,
            each,
            built_on: None,
            made_bytes: None,
        }
    }

    /// The ciphertexts, [`DEGREE`] values each.
    pub fn ciphertexts(&self) -> &[Ciphertext] {
        &self.ciphertexts
    }

    /// The ciphertexts' serialised size.
    pub fn wire_bytes(&self) -> u64 {
        self.each.iter().map(|h| h.len).sum()
    }

    /// Each ciphertext's first polynomial's SHA-256: what a key holder is
    /// sent in its place ([`Contribution::for_key_holder`]).
    pub fn first_digests(&self) -> Vec<[u8; 32]> {
        self.each.iter().map(|h| h.first).collect()
    }

    /// The digest and serialised size of `ciphertexts`: the SHA-256 of
    /// each ciphertext's two polynomials' bytes (hashed in parallel), then
    /// of that list.
    pub fn digest_of<C: Borrow<Ciphertext> + Sync>(ciphertexts: &[C]) -> ([u8; 32], u64) {
        let each: Vec<Hashed> = ciphertexts
            .par_iter()
            .map(|ct| hashed(&ciphertext_to_bytes(ct.borrow())))
            .collect();
        Self::list_digest(&each)
    }

    /// The digest of ciphertexts hashed one by one, and their total size.
    fn list_digest(each: &[Hashed]) -> ([u8; 32], u64) {
        let mut h = Sha256::new();
        h.update(b"tessera-he ciphertexts v2");
        let mut bytes = 0u64;
        for e in each {
            h.update(e.len.to_le_bytes());
            h.update(e.first);
            h.update(e.second);
            bytes += e.len;
        }
        (h.finalize().into(), bytes)
    }

    /// Reveals the contribution under the contributor's signature of
    /// `list`, which it gives only if its own commitment is in the list as
    /// it made it. Consumes the contribution: it is revealed under one list.
    pub fn reveal(
        self,
        round: &RoundId,
        list: &CommitmentList,
        signer: &dyn Signer,
    ) -> Result<Reveal, HeError> {
        match list.find(self.commitment.from) {
            Some(c) if *c == self.commitment => {}
            _ => {
                return Err(refused(format!(
                    "participant {}'s commitment is not in the list as it made it",
                    self.commitment.from
                )));
            }
        }
        let list_signature = signer
            .sign(&round.message("list", &[&list.digest()]))
            .map_err(|e| HeError::Fhe(format!("signing the list: {e}")))?;
        Ok(Reveal {
            contribution: self,
            list_signature,
        })
    }
}

/// A contribution revealed under its contributor's signature of the
/// round's closed list of commitments.
pub struct Reveal {
    /// The contribution.
    pub contribution: Contribution,
    /// The contributor's signature of the list.
    pub list_signature: Vec<u8>,
}

/// Encrypts `values` (each below `2^32`) for contributor `from` under the
/// assembled joint `key`, with randomness drawn from its own `secret` for
/// this key and these values, and commits to them.
pub fn encrypt(
    params: &HeParams,
    key: &EndorsedKey,
    from: u32,
    values: &[u32],
    secret: &[u8; 32],
    signer: &dyn Signer,
) -> Result<Contribution, HeError> {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    let values_digest: [u8; 32] = h.finalize().into();
    let made: Vec<(Ciphertext, Hashed, Vec<u8>)> = values
        .par_chunks(DEGREE)
        .enumerate()
        .map(|(i, chunk)| {
            if let Some(v) = chunk.iter().find(|&&v| u64::from(v) >= PLAINTEXT_MODULUS) {
                return Err(refused(format!("a value {v} past the plaintext modulus")));
            }
            let mut g = rng(
                secret,
                b"encrypt",
                &[
                    &key.round.seed,
                    &key.digest,
                    &values_digest,
                    &(i as u64).to_le_bytes(),
                ],
            );
            // As fhe.rs's `try_encrypt` (to the bit), in fewer transforms.
            let ct = bfv::encrypt_chunk(params, &key.polys, chunk, &mut g)?;
            let bytes = ciphertext_to_bytes(&ct);
            Ok((ct, hashed(&bytes), bytes))
        })
        .collect::<Result<_, HeError>>()?;
    let mut ciphertexts = Vec::with_capacity(made.len());
    let mut each = Vec::with_capacity(made.len());
    let mut made_bytes = Vec::with_capacity(made.len());
    for (ct, hash, bytes) in made {
        ciphertexts.push(ct);
        each.push(hash);
        made_bytes.push(bytes);
    }
    let (digest, _) = Contribution::list_digest(&each);
    let mut commitment = Commitment {
        from,
        length: values.len(),
        digest,
        signature: Vec::new(),
    };
    commitment.signature = signer
        .sign(&commitment.message(&key.round, &key.digest))
        .map_err(|e| HeError::Fhe(format!("signing the commitment: {e}")))?;
    Ok(Contribution {
        commitment,
        ciphertexts,
        each,
        // Made on this instance.
        built_on: Some(params.clone()),
        made_bytes: Some(made_bytes),
    })
}
