//! What travels: ciphertexts, key shares and decryption shares as bytes,
//! read back with every check a hostile sender calls for. Contributions and
//! decryption shares travel in Tessera's own encoding ([`ciphertext_to_bytes`],
//! 1.31 `he-ntt-wire`, one 62-bit modulus since 1.32 `he-one-modulus`): the polynomials as they are held, in the NTT
//! representation, where fhe.rs's serialisation writes the power basis (an
//! inverse NTT a polynomial to write, a forward one to read: most of the
//! cost of sending and reading a contribution). Key shares, one a key
//! holder a round, keep fhe.rs's encoding (which it may panic on when
//! malformed: refused here instead).

use std::panic::{AssertUnwindSafe, catch_unwind};

use fhe::bfv::{Ciphertext, PublicKey, SecretKey};
use fhe::mbfv::PublicKeyShare;
use fhe_math::rq::traits::TryConvertFrom;
use fhe_math::rq::{Poly, Representation};
use fhe_math::zq::Modulus;
use fhe_traits::{DeserializeParametrized, Serialize};
use prost::Message;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::{
    Answer, Commitment, Contribution, DEGREE, Hashed, HeError, HeParams, RoundId, common_poly, fhe,
    hashed, joint_key, refused, rng,
};

/// The ciphertext modulus: one NTT-friendly prime of 62 bits (well inside
/// the 109 bits that 128-bit security allows at degree 4096; one modulus
/// where two of 36 bits took twice the transforms and arithmetic). With the
/// plaintext modulus `2^32` the scale is `2^30`: a fresh ciphertext's noise
/// under a joint key of 16 key holders (the most a plan names) stays below
/// `2^15`, and a sum of [`crate::MAX_CONTRIBUTIONS`] independent ones grows
/// it about `2^10`-fold (the square root of their number), well below the
/// `2^29` that decryption tolerates (`tests/noise.rs` measures a fresh one's
/// room and a sum of 1,024's; the `2^20` figure is estimated from them).
pub(crate) const MODULI: [u64; 1] = [0x3fff_ffff_ffff_0001];

/// Bits a coefficient takes on the wire: the modulus is a prime of 62 bits,
/// and a modulus's coefficients fill whole 64-bit words.
const BITS: usize = 62;
const _: () = assert!(MODULI.len() == 1 && MODULI[0] >> (BITS - 1) == 1);
const _: () = assert!((DEGREE * BITS).is_multiple_of(64));

/// A coefficient's bits.
const MASK: u64 = (1 << BITS) - 1;

/// The bytes of one ciphertext in Tessera's encoding: two polynomials of
/// [`DEGREE`] coefficients, 62 bits each.
pub const CIPHERTEXT_BYTES: usize = 2 * MODULI.len() * DEGREE * BITS / 8;

/// The bytes of one of a ciphertext's polynomials in Tessera's encoding:
/// half of [`CIPHERTEXT_BYTES`]. A key holder fetches each contribution's
/// second polynomials alone, and answers with one polynomial a ciphertext
/// (1.33 `he-half-fetch`).
pub const POLYNOMIAL_BYTES: usize = CIPHERTEXT_BYTES / 2;

/// A contribution's or decryption share's ciphertext as it travels: its two
/// polynomials in the NTT representation, each's [`DEGREE`] coefficients
/// reduced below the modulus and packed at 62 bits, each coefficient's bits
/// after the one before's, little-endian (fhe.rs's bit order), nothing
/// else. Every ciphertext takes [`CIPHERTEXT_BYTES`] and has exactly this
/// one encoding ([`ciphertext_from_bytes`] refuses any other). The NTT
/// representation is fhe.rs's: its version is pinned exactly, and
/// [`HeParams::new`] checks a known answer, so that a peer built with
/// another refuses to start rather than read other polynomials.
pub fn ciphertext_to_bytes(ct: &Ciphertext) -> Vec<u8> {
    let mut out = Vec::with_capacity(CIPHERTEXT_BYTES);
    for poly in ct.iter() {
        write_polynomial(poly, &mut out);
    }
    // (A ciphertext of another shape, which a sum refuses, makes bytes of
    // another length, which every reader refuses.)
    out
}

/// One polynomial in Tessera's encoding (a ciphertext's is its two
/// polynomials' one after the other; see [`ciphertext_to_bytes`]).
pub fn polynomial_to_bytes(poly: &Poly) -> Vec<u8> {
    let mut out = Vec::with_capacity(POLYNOMIAL_BYTES);
    write_polynomial(poly, &mut out);
    out
}

fn write_polynomial(poly: &Poly, out: &mut Vec<u8>) {
    let ntt;
    let poly = if *poly.representation() == Representation::Ntt {
        poly
    } else {
        let mut p = poly.clone();
        p.change_representation(Representation::Ntt);
        ntt = p;
        &ntt
    };
    for (row, &q) in poly.coefficients().outer_iter().zip(&MODULI) {
        let (mut held, mut bits) = (0u128, 0);
        for &c in row {
            held |= u128::from(if c < q { c } else { c % q }) << bits;
            bits += BITS;
            if bits >= 64 {
                out.extend_from_slice(&(held as u64).to_le_bytes());
                held >>= 64;
                bits -= 64;
            }
        }
        // (A row fills whole words: nothing is left held.)
    }
}

/// The SHA-256 of [`known_answer`]'s bytes as protocol 1.32 defines them
/// (fhe-math 0.1.1's NTT: its roots of unity, found from a ChaCha8
/// generator seeded 0, and its order).
const KNOWN_ANSWER: [u8; 32] = [
    0xcc, 0x0f, 0x26, 0xda, 0xbd, 0x5e, 0x88, 0x1a, 0x02, 0x64, 0xcd, 0x85, 0xcf, 0x10, 0x06, 0xe4,
    0x5d, 0xe5, 0x8f, 0x5f, 0xd4, 0xc1, 0x89, 0x3e, 0xbd, 0xae, 0x12, 0xc3, 0x00, 0x01, 0xee, 0xac,
];

/// Two polynomials of fixed power-basis coefficients taken to the NTT
/// representation on `params`, as a ciphertext: its bytes name the NTT this
/// build computes.
pub(crate) fn known_answer(params: &HeParams) -> Result<Ciphertext, HeError> {
    let ctx = params.bfv().context_at_level(0).map_err(fhe)?;
    let poly = |k: u64| {
        let v: Vec<u64> = (0..(MODULI.len() * DEGREE) as u64)
            .map(|i| (i * i + k) % 1_000_003)
            .collect();
        let mut p =
            Poly::try_convert_from(v, ctx, true, Representation::PowerBasis).map_err(fhe)?;
        p.change_representation(Representation::Ntt);
        Ok::<_, HeError>(p)
    };
    Ciphertext::new(vec![poly(1)?, poly(2)?], params.bfv()).map_err(fhe)
}

/// Whether this build's NTT is the one the wire encoding is defined by
/// (checked where the parameters are made): another (another fhe-math, or
/// `rand` under it, or fhe-math's `tfhe-ntt` feature) would have peers read
/// one another's ciphertexts as other polynomials with every check passing.
pub(crate) fn check_encoding(params: &HeParams) -> Result<(), HeError> {
    let digest: [u8; 32] = Sha256::digest(ciphertext_to_bytes(&known_answer(params)?)).into();
    if digest != KNOWN_ANSWER {
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        return Err(HeError::Fhe(format!(
            "this build's NTT is not the one protocol 1.32's ciphertext encoding (he-ntt-wire, \
             he-one-modulus) is defined by (its known answer hashes to {hex}), so its ciphertexts \
             would be read as other polynomials: build with the project's lock file (cargo build \
             --locked)"
        )));
    }
    Ok(())
}

/// One modulus's coefficients from their packed bytes (whole 64-bit
/// words), each checked below `q` (`None` for one that is not: another
/// encoding of a coefficient).
fn unpack(bytes: &[u8], q: u64, out: &mut Vec<u64>) -> Option<()> {
    let (mut held, mut bits) = (0u128, 0);
    for word in bytes.chunks_exact(8) {
        held |= u128::from(u64::from_le_bytes(word.try_into().ok()?)) << bits;
        bits += 64;
        while bits >= BITS {
            let c = held as u64 & MASK;
            if c >= q {
                return None;
            }
            out.push(c);
            held >>= BITS;
            bits -= BITS;
        }
    }
    Some(())
}

/// The first of `items` (a piece of a contribution, of a fetched
/// contribution's second polynomials or of an answer, as it arrives) whose
/// length is not `size` ([`CIPHERTEXT_BYTES`] or [`POLYNOMIAL_BYTES`]),
/// described as a `what`: refused as
/// it comes, so that a piece held until its message is whole holds no more
/// than its ciphertexts' bytes.
pub fn misfit_length(items: &[Vec<u8>], size: usize, what: &str) -> Option<String> {
    let (at, bad) = (items.iter().enumerate()).find(|(_, c)| c.len() != size)?;
    Some(format!(
        "{what} {at} of the piece takes {} bytes, not {size}",
        bad.len()
    ))
}

/// A ciphertext of `params` from its bytes in Tessera's encoding (see
/// [`ciphertext_to_bytes`]), or refused with the reason: a length other
/// than [`CIPHERTEXT_BYTES`], or a coefficient not below its modulus.
pub fn ciphertext_from_bytes(params: &HeParams, bytes: &[u8]) -> Result<Ciphertext, HeError> {
    if bytes.len() != CIPHERTEXT_BYTES {
        return Err(refused(format!(
            "a ciphertext of {} bytes, not {CIPHERTEXT_BYTES}",
            bytes.len()
        )));
    }
    let polys = bytes
        .chunks_exact(POLYNOMIAL_BYTES)
        .map(|poly| read_polynomial(params, poly, "ciphertext"))
        .collect::<Result<Vec<_>, _>>()?;
    Ciphertext::new(polys, params.bfv())
        .map_err(|e| refused(format!("a malformed ciphertext: {e}")))
}

/// A polynomial of `params`'s ciphertext ring from its bytes in Tessera's
/// encoding (see [`polynomial_to_bytes`]), or refused with the reason: a
/// length other than [`POLYNOMIAL_BYTES`], or a coefficient not below the
/// modulus.
pub fn polynomial_from_bytes(params: &HeParams, bytes: &[u8]) -> Result<Poly, HeError> {
    if bytes.len() != POLYNOMIAL_BYTES {
        return Err(refused(format!(
            "a polynomial of {} bytes, not {POLYNOMIAL_BYTES}",
            bytes.len()
        )));
    }
    read_polynomial(params, bytes, "polynomial")
}

/// `bytes` (exactly one polynomial's) read back, a `what` in messages.
fn read_polynomial(params: &HeParams, bytes: &[u8], what: &str) -> Result<Poly, HeError> {
    let ctx = params.bfv().context_at_level(0).map_err(fhe)?;
    let mut coefficients = Vec::with_capacity(MODULI.len() * DEGREE);
    for (part, &q) in bytes.chunks_exact(DEGREE * BITS / 8).zip(&MODULI) {
        unpack(part, q, &mut coefficients)
            .ok_or_else(|| refused(format!("a {what} not in its canonical encoding")))?;
    }
    Poly::try_convert_from(coefficients, ctx, true, Representation::Ntt)
        .map_err(|e| refused(format!("a malformed {what}: {e}")))
}

/// The most bytes a ciphertext takes in fhe.rs's encoding: two polynomials
/// and its framing.
fn max_ciphertext_bytes() -> usize {
    2 * HeParams::polynomial_bytes() as usize + 1024
}

/// fhe.rs's `Ciphertext` message (fhe 0.1.1, `bfv.proto`), to check an
/// encoding before fhe.rs reads it.
#[derive(Clone, PartialEq, prost::Message)]
struct CiphertextMessage {
    #[prost(bytes = "vec", repeated, tag = "1")]
    c: Vec<Vec<u8>>,
    #[prost(bytes = "vec", tag = "2")]
    seed: Vec<u8>,
    #[prost(uint32, tag = "3")]
    level: u32,
}

/// fhe-math's polynomial message (fhe-math 0.1.1, `rq.proto`).
#[derive(Clone, PartialEq, prost::Message)]
struct RqMessage {
    /// `Representation`: 2 is NTT.
    #[prost(int32, tag = "1")]
    representation: i32,
    #[prost(uint32, tag = "2")]
    degree: u32,
    #[prost(bytes = "vec", tag = "3")]
    coefficients: Vec<u8>,
    #[prost(bool, tag = "4")]
    allow_variable_time: bool,
}

/// Whether `bytes` are a ciphertext's one encoding, as fhe.rs writes one:
/// each message in protobuf's canonical form (fields in order, defaults
/// left out, no field fhe.rs ignores: decoded and encoded again, the same
/// bytes), no seed standing for a polynomial, level 0, two polynomials of
/// [`DEGREE`] in the NTT representation, every coefficient below its
/// modulus, and each polynomial's variable-time flag as fhe.rs sets it on
/// that kind of message (`flags`: a flag cleared or set is another encoding
/// of the same ciphertext, under another digest). Checked on the bytes,
/// without the inverse NTT that encoding the ciphertext again would take.
fn canonical(bytes: &[u8], flags: [bool; 2]) -> Result<(), &'static str> {
    let ct = CiphertextMessage::decode(bytes).map_err(|_| "a malformed ciphertext")?;
    if ct.encode_to_vec() != bytes || !ct.seed.is_empty() || ct.level != 0 || ct.c.len() != 2 {
        return Err("a ciphertext not in its canonical encoding");
    }
    for (poly, flag) in ct.c.iter().zip(flags) {
        let rq = RqMessage::decode(poly.as_slice()).map_err(|_| "a malformed polynomial")?;
        if rq.encode_to_vec() != *poly
            || rq.representation != 2
            || rq.degree as usize != DEGREE
            || rq.allow_variable_time != flag
        {
            return Err("a ciphertext not in its canonical encoding");
        }
        let mut rest = rq.coefficients.as_slice();
        for q in MODULI {
            let modulus = Modulus::new(q).map_err(|_| "a modulus")?;
            let size = modulus.serialization_length(DEGREE);
            if rest.len() < size {
                return Err("a malformed polynomial");
            }
            let (these, after) = rest.split_at(size);
            if modulus.deserialize_vec(these).iter().any(|&c| c >= q) {
                return Err("a ciphertext not in its canonical encoding");
            }
            rest = after;
        }
        if !rest.is_empty() {
            return Err("a malformed polynomial");
        }
    }
    Ok(())
}

/// A ciphertext of `params` from `bytes` in fhe.rs's encoding: two
/// polynomials at the top level, in its canonical encoding (every
/// coefficient reduced, the polynomials' variable-time flags `flags`; see
/// [`canonical`]), or refused with the reason; never a panic.
pub(crate) fn fhe_ciphertext_from_bytes(
    params: &HeParams,
    bytes: &[u8],
    flags: [bool; 2],
) -> Result<Ciphertext, HeError> {
    if bytes.len() > max_ciphertext_bytes() {
        return Err(refused(format!(
            "a ciphertext of {} bytes; one takes at most {}",
            bytes.len(),
            max_ciphertext_bytes()
        )));
    }
    canonical(bytes, flags).map_err(refused)?;
    let parsed = catch_unwind(AssertUnwindSafe(|| {
        Ciphertext::from_bytes(bytes, params.bfv())
    }))
    .map_err(|_| refused("a malformed ciphertext"))?
    .map_err(|e| refused(format!("a malformed ciphertext: {e}")))?;
    if parsed.len() != 2 {
        return Err(refused(format!(
            "a ciphertext of {} polynomials, not 2",
            parsed.len()
        )));
    }
    if !matches!(params.bfv().level_of_context(parsed[0].ctx()), Ok(0)) {
        return Err(refused("a ciphertext at another level"));
    }
    // Rebuilt from its polynomials on these parameters (each in the NTT
    // representation, of one context).
    Ciphertext::new(parsed.to_vec(), params.bfv())
        .map_err(|e| refused(format!("a malformed ciphertext: {e}")))
}

/// `inner` as field 1 of a protobuf message (fhe.rs's `PublicKey` holds its
/// ciphertext so).
fn wrap(inner: &[u8]) -> Vec<u8> {
    let mut out = vec![0x0a];
    let mut n = inner.len() as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(inner);
    out
}

/// The field-1 bytes of a message of that one field alone.
fn unwrap(bytes: &[u8]) -> Option<&[u8]> {
    let (&tag, mut rest) = bytes.split_first()?;
    if tag != 0x0a {
        return None;
    }
    let mut len = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, tail) = rest.split_first()?;
        rest = tail;
        len |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return (len == rest.len() as u64).then_some(rest);
        }
    }
    None
}

/// A one-party public key's ciphertext `(p0, a)` from its bytes (a key
/// holder's share as it travels).
pub(crate) fn one_party_key(params: &HeParams, bytes: &[u8]) -> Result<Ciphertext, HeError> {
    let inner = unwrap(bytes).ok_or_else(|| refused("not a public key"))?;
    // fhe.rs clears the flag of a key's second polynomial (the common one).
    fhe_ciphertext_from_bytes(params, inner, [true, false])
}

/// The public key whose ciphertext is `polys`.
pub(crate) fn public_key(params: &HeParams, polys: Vec<Poly>) -> Result<PublicKey, HeError> {
    let ct = Ciphertext::new(polys, params.bfv()).map_err(fhe)?;
    PublicKey::from_bytes(&wrap(&ct.to_bytes()), params.bfv()).map_err(fhe)
}

/// The round's common random polynomial as a one-party key of a throwaway
/// secret shows it: the key's second polynomial.
pub(crate) fn crp_probe(params: &HeParams, round: &RoundId) -> Result<Ciphertext, HeError> {
    let crp = common_poly(params, round)?;
    let mut g = rng(&round.seed, b"crp probe", &[]);
    let throwaway = SecretKey::random(params.bfv(), &mut g);
    let share = PublicKeyShare::new(&throwaway, crp, &mut g).map_err(fhe)?;
    one_party_key(params, &joint_key(vec![share])?.to_bytes())
}

/// The secret key zero: a decryption share is a key switch to it, and the
/// sum with every key holder's share decrypts under it.
pub(crate) fn zero_key(params: &HeParams) -> Result<SecretKey, HeError> {
    // fhe.rs's `SecretKey { repeated sint64 coeffs = 1 }`, packed: DEGREE
    // zeros of one byte each.
    SecretKey::from_bytes(&wrap(&[0u8; DEGREE]), params.bfv()).map_err(fhe)
}

impl Contribution {
    /// Its ciphertexts as they travel (serialised in parallel).
    pub fn ciphertext_bytes(&self) -> Vec<Vec<u8>> {
        (self.ciphertexts.par_iter())
            .map(ciphertext_to_bytes)
            .collect()
    }

    /// Its ciphertexts as they travel, taken: the bytes they were hashed
    /// from where it was made here (no copy; a second call serialises).
    pub fn take_ciphertext_bytes(&mut self) -> Vec<Vec<u8>> {
        (self.made_bytes.take()).unwrap_or_else(|| self.ciphertext_bytes())
    }

    /// A contribution received: `commitment` and the ciphertexts' bytes,
    /// each read back with [`ciphertext_from_bytes`] and hashed as it came
    /// (its one encoding), in parallel (whether they match the commitment
    /// is [`crate::VerifiedSum::absorb`]'s check).
    pub fn from_wire(
        params: &HeParams,
        commitment: Commitment,
        ciphertexts: &[Vec<u8>],
    ) -> Result<Self, HeError> {
        let from = commitment.from;
        let read = ciphertexts
            .par_iter()
            .map(|b| ciphertext_from_bytes(params, b).map(|ct| (ct, hashed(b))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| refused(format!("participant {from}'s contribution: {e}")))?;
        let (ciphertexts, each) = read.into_iter().unzip();
        Ok(Self {
            commitment,
            ciphertexts,
            each,
            built_on: Some(params.clone()),
            made_bytes: None,
        })
    }

    /// A contribution as a key holder fetches it (1.33 `he-half-fetch`):
    /// `commitment`, each ciphertext's first polynomial's SHA-256
    /// (`first_digests`) and its second polynomial's bytes (`seconds`), read
    /// back with [`polynomial_from_bytes`] and hashed as they came, in
    /// parallel. Each ciphertext is held as `(0, c1)`: a sum of them is the
    /// contributions' sum's second polynomials, all a decryption share
    /// depends on; whether the digests match the commitment is
    /// [`crate::VerifiedSum::absorb`]'s check, as for a whole contribution.
    pub fn for_key_holder(
        params: &HeParams,
        commitment: Commitment,
        first_digests: &[Vec<u8>],
        seconds: &[Vec<u8>],
    ) -> Result<Self, HeError> {
        let from = commitment.from;
        if first_digests.len() != seconds.len() {
            return Err(refused(format!(
                "participant {from}'s contribution: {} first polynomials' digests for {} second \
                 polynomials",
                first_digests.len(),
                seconds.len()
            )));
        }
        let read = (seconds.par_iter().zip(first_digests))
            .map(|(bytes, first)| {
                let first: [u8; 32] = first.as_slice().try_into().map_err(|_| {
                    refused(format!(
                        "a first polynomial's digest of {} bytes, not 32",
                        first.len()
                    ))
                })?;
                let second = polynomial_from_bytes(params, bytes)?;
                let zero = Poly::zero(second.ctx(), Representation::Ntt);
                let ct = Ciphertext::new(vec![zero, second], params.bfv())
                    .map_err(|e| refused(format!("a malformed ciphertext: {e}")))?;
                let each = Hashed {
                    first,
                    second: Sha256::digest(bytes).into(),
                    len: CIPHERTEXT_BYTES as u64,
                };
                Ok((ct, each))
            })
            .collect::<Result<Vec<_>, HeError>>()
            .map_err(|e| refused(format!("participant {from}'s contribution: {e}")))?;
        let (ciphertexts, each) = read.into_iter().unzip();
        Ok(Self {
            commitment,
            ciphertexts,
            each,
            built_on: Some(params.clone()),
            made_bytes: None,
        })
    }
}

impl Answer {
    /// Its decryption shares as they travel, one polynomial each
    /// (serialised in parallel).
    pub fn share_bytes(&self) -> Vec<Vec<u8>> {
        self.shares.par_iter().map(polynomial_to_bytes).collect()
    }

    /// An answer received from key holder `from`.
    pub fn from_wire(
        params: &HeParams,
        from: u32,
        sum_digest: [u8; 32],
        shares: &[Vec<u8>],
        signature: Vec<u8>,
    ) -> Result<Self, HeError> {
        let shares = shares
            .par_iter()
            .map(|b| polynomial_from_bytes(params, b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| refused(format!("key holder {from}'s decryption share: {e}")))?;
        Ok(Self {
            from,
            sum_digest,
            shares,
            signature,
        })
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
