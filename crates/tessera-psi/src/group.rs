//! The group side: hashing tokens to ristretto255, secret scalars, and
//! batched, parallel blinding with checked decoding of received points.

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use rayon::prelude::*;
use sha2::{Digest, Sha256, Sha512};

use crate::{PsiError, Token, mb};

/// Bytes of one compressed ristretto255 point on the wire.
pub const POINT_BYTES: usize = 32;

/// Elements per parallel batch (one batched compression each).
pub(crate) const BATCH: usize = 512;

const HASH_DOMAIN: &[u8] = b"tessera-psi/hash-to-group/v1\0";
const PRF_DOMAIN: &[u8] = b"tessera-psi/prf/v1\0";
const SEED_DOMAIN: &[u8] = b"tessera-psi/seeded-for-tests/v1\0";

/// A token hashed to the group (SHA-512 then ristretto255's
/// `from_uniform_bytes`, two Elligator maps: a random oracle into the group
/// whose discrete logarithms nobody knows).
pub(crate) fn hash_to_group(t: &Token) -> RistrettoPoint {
    RistrettoPoint::from_uniform_bytes(&token_hash(t))
}

/// A non-zero secret scalar from the operating system's random source.
pub(crate) fn random_scalar() -> Result<Scalar, PsiError> {
    let mut wide = [0u8; 64];
    getrandom::fill(&mut wide).map_err(|e| PsiError::Randomness(e.to_string()))?;
    let s = Scalar::from_bytes_mod_order_wide(&wide);
    if s == Scalar::ZERO {
        return Err(PsiError::Randomness("drew the zero scalar".into()));
    }
    Ok(s)
}

/// 32 secret bytes from the operating system's random source.
pub(crate) fn random_seed() -> Result<[u8; 32], PsiError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| PsiError::Randomness(e.to_string()))?;
    Ok(seed)
}

/// A scalar derived from a seed and a label: for tests and simulation only
/// (reached through the `*_seeded_for_tests` constructors).
pub(crate) fn seeded_scalar(seed: u64, label: &[u8]) -> Scalar {
    let mut h = Sha512::new();
    h.update(SEED_DOMAIN);
    h.update(seed.to_le_bytes());
    h.update(label);
    let s = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    if s == Scalar::ZERO { Scalar::ONE } else { s }
}

/// 32 bytes derived from a seed and a label: for tests only.
pub(crate) fn seeded_bytes(seed: u64, label: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SEED_DOMAIN);
    h.update(seed.to_le_bytes());
    h.update(label);
    h.finalize().into()
}

/// The number of elements a packed field of 32-byte points holds, checked
/// against its declared count and the agreed bound.
pub(crate) fn check_packed(
    what: &'static str,
    packed: &[u8],
    declared: u32,
    elem: usize,
    bound: usize,
) -> Result<usize, PsiError> {
    let n = declared as usize;
    if n > bound {
        return Err(PsiError::TooManyElements {
            what,
            got: n,
            bound,
        });
    }
    let expected = n.checked_mul(elem).ok_or(PsiError::TooManyElements {
        what,
        got: n,
        bound,
    })?;
    if packed.len() != expected {
        return Err(PsiError::WrongLength {
            what,
            expected,
            got: packed.len(),
        });
    }
    Ok(n)
}

/// Decodes the point at `index` of a packed field.
pub(crate) fn decode(
    what: &'static str,
    bytes: &[u8],
    index: usize,
) -> Result<RistrettoPoint, PsiError> {
    CompressedRistretto::from_slice(bytes)
        .ok()
        .and_then(|c| c.decompress())
        .ok_or(PsiError::InvalidPoint { what, index })
}

/// Compresses `2 P` for each point into `out`, one batch: doubling first
/// lets the batch share one field inversion (ristretto255's
/// `double_and_compress_batch`).
pub(crate) fn double_compress_into(points: &[RistrettoPoint], out: &mut [u8]) {
    for (c, o) in RistrettoPoint::double_and_compress_batch(points)
        .iter()
        .zip(out.chunks_exact_mut(POINT_BYTES))
    {
        o.copy_from_slice(c.as_bytes());
    }
}

/// The 64 bytes a token is mapped to the group from (SHA-512).
fn token_hash(t: &Token) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(HASH_DOMAIN);
    h.update(t.0);
    h.finalize().into()
}

/// `compress(2 k H(t))` for every token, packed.
pub(crate) fn tokens_times_two(tokens: &[Token], k: &Scalar) -> Vec<u8> {
    let mut out = vec![0u8; tokens.len() * POINT_BYTES];
    out.par_chunks_mut(BATCH * POINT_BYTES)
        .zip(tokens.par_chunks(BATCH))
        .for_each(|(o, ts)| {
            let hashes: Vec<[u8; 64]> = ts.iter().map(token_hash).collect();
            mb::hash_mul2_compress(&hashes, k, o);
        });
    out
}

/// `compress(2 k P)` for every packed point `P` received in `what`;
/// refused naming the first element that is not a valid encoding.
pub(crate) fn points_times_two(
    what: &'static str,
    packed: &[u8],
    k: &Scalar,
) -> Result<Vec<u8>, PsiError> {
    let mut out = vec![0u8; packed.len()];
    out.par_chunks_mut(BATCH * POINT_BYTES)
        .zip(packed.par_chunks(BATCH * POINT_BYTES))
        .enumerate()
        .try_for_each(|(b, (o, input))| {
            mb::mul2_compress(input, k, o).map_err(|i| PsiError::InvalidPoint {
                what,
                index: b * BATCH + i,
            })
        })?;
    Ok(out)
}

/// Half of a scalar: `compress(s P)` is `compress(2 (s / 2) P)`.
pub(crate) fn half(s: &Scalar) -> Scalar {
    s * Scalar::from(2u64).invert()
}

/// `s * H(t)` for every token, packed.
pub(crate) fn blind_tokens(tokens: &[Token], s: &Scalar) -> Vec<u8> {
    tokens_times_two(tokens, &half(s))
}

/// `s * P` for every packed point `P` received in `what`, packed.
pub(crate) fn blind_points(
    what: &'static str,
    packed: &[u8],
    s: &Scalar,
) -> Result<Vec<u8>, PsiError> {
    points_times_two(what, packed, &half(s))
}

/// Checks that every packed point of `what` is a valid encoding.
pub(crate) fn validate_points(what: &'static str, packed: &[u8]) -> Result<(), PsiError> {
    packed
        .par_chunks(POINT_BYTES)
        .enumerate()
        .try_for_each(|(i, c)| decode(what, c, i).map(|_| ()))
}

/// A pseudorandom value in `[0, range)` of one doubly-blinded point (the
/// first 16 bytes of SHA-256, reduced; the bias is below `range / 2^128`).
pub(crate) fn prf_value(point: &[u8], range: u128) -> u128 {
    let mut h = Sha256::new();
    h.update(PRF_DOMAIN);
    h.update(point);
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    u128::from_le_bytes(b) % range.max(1)
}

/// Sorts packed `N`-byte elements by their bytes, in place: a canonical
/// order that depends only on the set, never on the order the elements
/// came in.
pub(crate) fn sort_packed<const N: usize>(packed: &mut [u8]) {
    packed.as_chunks_mut::<N>().0.par_sort_unstable();
}

/// Refuses `tokens` if one occurs twice (sorted copy, neighbours compared).
pub(crate) fn check_distinct_tokens(what: &'static str, tokens: &[Token]) -> Result<(), PsiError> {
    let mut sorted = tokens.to_vec();
    sorted.par_sort_unstable();
    if sorted.par_windows(2).any(|w| w[0] == w[1]) {
        return Err(PsiError::DuplicateTokens { what });
    }
    Ok(())
}

/// Refuses the identity and repeated points among the leading points of
/// the `N`-byte rows of `packed` (valid encodings, checked before: the
/// identity's only encoding is all zeros).
pub(crate) fn check_distinct_points<const N: usize>(
    what: &'static str,
    packed: &[u8],
) -> Result<(), PsiError> {
    let mut points: Vec<[u8; POINT_BYTES]> = packed
        .as_chunks::<N>()
        .0
        .iter()
        .map(|row| {
            let mut p = [0u8; POINT_BYTES];
            p.copy_from_slice(&row[..POINT_BYTES]);
            p
        })
        .collect();
    if let Some(index) = points.iter().position(|p| *p == [0u8; POINT_BYTES]) {
        return Err(PsiError::Malformed {
            what,
            detail: format!("element {index} is the identity point"),
        });
    }
    points.par_sort_unstable();
    if points.par_windows(2).any(|w| w[0] == w[1]) {
        return Err(PsiError::Malformed {
            what,
            detail: "a point occurs more than once".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_packed_orders_rows_by_their_bytes() {
        let mut state = 7u64;
        let mut packed: Vec<u8> = (0..96 * 50)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                (state >> 56) as u8
            })
            .collect();
        let mut want: Vec<Vec<u8>> = packed.chunks(96).map(<[u8]>::to_vec).collect();
        want.sort();
        sort_packed::<96>(&mut packed);
        assert_eq!(packed, want.concat());
        let mut want: Vec<Vec<u8>> = packed.chunks(32).map(<[u8]>::to_vec).collect();
        want.sort();
        sort_packed::<32>(&mut packed);
        assert_eq!(packed, want.concat());
    }
}
