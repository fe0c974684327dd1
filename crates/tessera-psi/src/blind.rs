//! The receiver's blinding in ECDH-PSI.
//!
//! In modes both and receiver-only the receiver blinds additively: it sends
//! `Q = 2 (H(a) + r G)` with a fresh scalar `r` per element (a uniformly
//! random point, whatever `a` is), the sender returns `beta Q`, and the
//! receiver removes `2 r Y` with the sender's public key `Y = beta G`,
//! leaving `2 beta H(a)`. Both of the receiver's scalar multiplications
//! have a fixed base (`G`, then `Y`), which precomputed tables make about
//! three times cheaper than the variable-base ones of multiplicative
//! blinding (`alpha H(a)`, then `alpha^-1` of the answer).
//!
//! In cardinality mode the sender returns the answers sorted, so the
//! receiver no longer knows which `r` belongs to which answer; it blinds
//! multiplicatively with one `alpha` for all elements instead.
//!
//! Either way the receiver ends with `compress(4 beta H(a))`, the encoding
//! the sender uses for its own elements, `compress(4 beta H(b))`.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{RistrettoBasepointTable, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use rayon::prelude::*;
use sha2::{Digest, Sha512};

use crate::group::{
    BATCH, POINT_BYTES, blind_tokens, decode, double_compress_into, hash_to_group, points_times_two,
};
use crate::{PsiError, Token};

const MASK_DOMAIN: &[u8] = b"tessera-psi/additive-mask/v1\0";

/// The receiver's secret.
pub(crate) enum Blinding {
    /// One scalar for all elements (cardinality mode).
    Multiplicative(Scalar),
    /// A seed for one mask per element (modes both and receiver-only).
    Additive([u8; 32]),
}

/// The mask of element `i`.
fn mask(seed: &[u8; 32], i: usize) -> Scalar {
    let mut h = Sha512::new();
    h.update(MASK_DOMAIN);
    h.update(seed);
    h.update((i as u64).to_le_bytes());
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

impl Blinding {
    /// The query's packed points.
    pub(crate) fn query(&self, tokens: &[Token]) -> Vec<u8> {
        match self {
            Blinding::Multiplicative(alpha) => blind_tokens(tokens, alpha),
            Blinding::Additive(seed) => {
                let mut out = vec![0u8; tokens.len() * POINT_BYTES];
                out.par_chunks_mut(BATCH * POINT_BYTES)
                    .zip(tokens.par_chunks(BATCH))
                    .enumerate()
                    .for_each(|(b, (o, ts))| {
                        let pts: Vec<RistrettoPoint> = ts
                            .iter()
                            .enumerate()
                            .map(|(i, t)| {
                                hash_to_group(t)
                                    + RISTRETTO_BASEPOINT_TABLE * &mask(seed, b * BATCH + i)
                            })
                            .collect();
                        double_compress_into(&pts, o);
                    });
                out
            }
        }
    }

    /// `compress(4 beta H(a))` for each answer of `evaluated`, in order.
    pub(crate) fn unblind(&self, evaluated: &[u8], public: &[u8; 32]) -> Result<Vec<u8>, PsiError> {
        let what = "response.evaluated";
        match self {
            Blinding::Multiplicative(alpha) => {
                points_times_two(what, evaluated, &(alpha.invert() + alpha.invert()))
            }
            Blinding::Additive(seed) => {
                let y = decode("response.public_key", public, 0)?;
                if y == RistrettoPoint::identity() {
                    // With Y = O nothing is removed: the sender could
                    // return the query itself and code any chosen elements
                    // of the receiver's into its set.
                    return Err(PsiError::Malformed {
                        what: "response.public_key",
                        detail: "the identity is not a public key (it would let the sender choose which elements match)".into(),
                    });
                }
                let table = RistrettoBasepointTable::create(&y);
                let mut out = vec![0u8; evaluated.len()];
                out.par_chunks_mut(BATCH * POINT_BYTES)
                    .zip(evaluated.par_chunks(BATCH * POINT_BYTES))
                    .enumerate()
                    .try_for_each(|(b, (o, input))| {
                        let pts = input
                            .chunks_exact(POINT_BYTES)
                            .enumerate()
                            .map(|(i, c)| {
                                let k = b * BATCH + i;
                                let r = mask(seed, k);
                                decode(what, c, k).map(|e| e - &table * &(r + r))
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        double_compress_into(&pts, o);
                        Ok(())
                    })?;
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::gcs::CompressedSet;
    use crate::group::prf_value;
    use crate::psi::{Mode, PsiConfig, Receiver, Response};

    /// With `Y` the identity, removing `2 r Y` does nothing: the receiver
    /// ends with `compress(2 Q_i)` of its own query points, which a sender
    /// holding none of its identifiers can put in its coded set.
    #[test]
    fn a_response_with_the_identity_as_public_key_is_refused() {
        let a: Vec<Token> = (0u8..8).map(|i| Token([i; 32])).collect();
        for mode in [Mode::Both, Mode::ReceiverOnly] {
            let config = PsiConfig {
                max_elements: 100,
                ..PsiConfig::new(mode)
            };
            let (r, q) = Receiver::start_seeded_for_tests(config, &a, 9).unwrap();
            let p = config.param_bits(a.len()).unwrap();
            let chosen = [1usize, 4, 6];
            let range = CompressedSet::range(chosen.len(), p).unwrap();
            let mut values: Vec<u128> = chosen
                .iter()
                .map(|&i| {
                    let q_i = decode("query", &q.points[i * 32..(i + 1) * 32], i).unwrap();
                    prf_value((q_i + q_i).compress().as_bytes(), range)
                })
                .collect();
            values.sort_unstable();
            let forged = Response {
                public_key: [0; 32],
                count: q.count,
                evaluated: q.points.clone(),
                set: CompressedSet::encode(&values, p),
            };
            match r.finish(&forged) {
                Ok((out, _)) => panic!(
                    "{mode}: the forged response put {:?} in the intersection",
                    out.intersection
                ),
                Err(e) => assert!(
                    matches!(
                        e,
                        PsiError::Malformed {
                            what: "response.public_key",
                            ..
                        }
                    ),
                    "{e}"
                ),
            }
        }
    }
}
