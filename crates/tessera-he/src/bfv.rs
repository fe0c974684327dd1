//! The two BFV steps every round repeats for each ciphertext, written here
//! on fhe-math's polynomials with fewer transforms than fhe.rs's general
//! versions, and to the bit what those compute (tested against them):
//! a contributor's public-key encryption ([`encrypt_chunk`]: three NTTs
//! where `PublicKey::try_encrypt` with its plaintext's encoding takes
//! five) and a key holder's decryption share ([`SecretPoly::share`]: one
//! NTT where `SecretKeySwitchShare::new` takes three, its key taken to the
//! NTT representation once a round rather than once a ciphertext).

use fhe::bfv::{Ciphertext, SecretKey};
use fhe_math::rq::traits::TryConvertFrom;
use fhe_math::rq::{Poly, Representation};
use fhe_traits::Serialize;
use prost::Message;
use rand_chacha_09::ChaCha20Rng;

use crate::wire::MODULI;
use crate::{DEGREE, HeError, HeParams, PLAINTEXT_MODULUS, fhe, refused};

/// The variance of fhe.rs's centred binomial draws (its parameters'
/// default, which [`crate::HeParams::new`] keeps): secrets, `u` and errors.
const VARIANCE: usize = 10;

/// Encrypts `values` (at most [`DEGREE`], each below the plaintext modulus
/// `t`) under the public key `(p0, p1)` (in the NTT representation) with
/// draws from `g`: `(p0 u + e1 + Δm, p1 u + e2)`, `u`, `e1`, `e2` drawn
/// from `g` in that order as fhe.rs draws them, and `Δm = floor(q m / t)`
/// (what fhe.rs adds, `-[q m]_t / t mod q`) added to `e1` before its
/// transform.
pub(crate) fn encrypt_chunk(
    params: &HeParams,
    key: &[Poly],
    values: &[u32],
    g: &mut ChaCha20Rng,
) -> Result<Ciphertext, HeError> {
    let [p0, p1] = key else {
        return Err(refused("a public key of other than two polynomials"));
    };
    if values.len() > DEGREE {
        return Err(refused(format!(
            "{} values for one ciphertext of {DEGREE}",
            values.len()
        )));
    }
    let ctx = p0.ctx();
    let u = Poly::small(ctx, Representation::Ntt, VARIANCE, g).map_err(fhe)?;
    let mut e1 = Poly::small(ctx, Representation::PowerBasis, VARIANCE, g).map_err(fhe)?;
    let e2 = Poly::small(ctx, Representation::Ntt, VARIANCE, g).map_err(fhe)?;
    let q = u128::from(MODULI[0]);
    let mut scaled = vec![0u64; DEGREE];
    for (s, &v) in scaled.iter_mut().zip(values) {
        // Below q: v < t.
        *s = (q * u128::from(v) / u128::from(PLAINTEXT_MODULUS)) as u64;
    }
    let scaled =
        Poly::try_convert_from(scaled, ctx, false, Representation::PowerBasis).map_err(fhe)?;
    e1 += &scaled;
    e1.change_representation(Representation::Ntt);
    let mut c0 = &u * p0;
    c0 += &e1;
    let mut c1 = &u * p1;
    c1 += &e2;
    Ciphertext::new(vec![c0, c1], params.bfv()).map_err(fhe)
}

/// fhe.rs's `SecretKey` message (fhe 0.1.1): its coefficients.
#[derive(Clone, PartialEq, prost::Message)]
struct SecretKeyMessage {
    #[prost(sint64, repeated, tag = "1")]
    coeffs: Vec<i64>,
}

/// A key holder's secret key share in the NTT representation, taken there
/// once for the round's answer.
pub(crate) struct SecretPoly(Poly);

impl SecretPoly {
    pub(crate) fn of(params: &HeParams, key: &SecretKey) -> Result<Self, HeError> {
        let message = SecretKeyMessage::decode(key.to_bytes().as_slice())
            .map_err(|e| HeError::Fhe(format!("reading a secret key: {e}")))?;
        let ctx = params.bfv().context_at_level(0).map_err(fhe)?;
        let mut s = Poly::try_convert_from(
            message.coeffs.as_slice(),
            ctx,
            false,
            Representation::PowerBasis,
        )
        .map_err(fhe)?;
        s.change_representation(Representation::Ntt);
        Ok(Self(s))
    }

    /// The decryption share of a summed ciphertext whose second polynomial
    /// is `c1`: `c1 s_i + e`, `e` drawn from `g` as fhe.rs's key switch to
    /// the zero key draws it.
    pub(crate) fn share(&self, c1: &Poly, g: &mut ChaCha20Rng) -> Result<Poly, HeError> {
        if c1.ctx() != self.0.ctx() || *c1.representation() != Representation::Ntt {
            return Err(refused(
                "a summed polynomial of another ring or representation",
            ));
        }
        let e = Poly::small(self.0.ctx(), Representation::Ntt, VARIANCE, g).map_err(fhe)?;
        let mut h = &self.0 * c1;
        h += &e;
        Ok(h)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use fhe::bfv::{Encoding, Plaintext, PublicKey};
    use fhe::mbfv::{Aggregate, CommonRandomPoly, PublicKeyShare, SecretKeySwitchShare};
    use fhe_traits::{FheEncoder, FheEncrypter};
    use rand_chacha_09::rand_core::SeedableRng;

    use super::*;
    use crate::joint_key;
    use crate::wire::{ciphertext_to_bytes, one_party_key, zero_key};

    fn values() -> Vec<u32> {
        (0..DEGREE as u32)
            .map(|i| i.wrapping_mul(2_654_435_761) ^ (i << 7))
            .chain([0, 1, u32::MAX])
            .skip(3)
            .collect()
    }

    /// Against fhe.rs's own encryption, from the same draws: the same
    /// ciphertext to the bit, for a full chunk and a short one.
    #[test]
    fn encryption_is_fhe_rs_encryption_to_the_bit() {
        let params = HeParams::new().unwrap();
        let mut g = ChaCha20Rng::from_seed([1; 32]);
        let sk = SecretKey::random(params.bfv(), &mut g);
        let crp = CommonRandomPoly::new(params.bfv(), &mut g).unwrap();
        let share = PublicKeyShare::new(&sk, crp, &mut g).unwrap();
        let pk = joint_key(vec![share]).unwrap();
        let key = one_party_key(&params, &pk.to_bytes()).unwrap().to_vec();
        for (seed, values) in [(2u8, values()), (3, vec![u32::MAX, 0, 7, 1 << 31])] {
            let coefficients: Vec<u64> = values.iter().map(|&v| u64::from(v)).collect();
            let pt = Plaintext::try_encode(&coefficients, Encoding::poly(), params.bfv()).unwrap();
            let theirs = pk
                .try_encrypt(&pt, &mut ChaCha20Rng::from_seed([seed; 32]))
                .unwrap();
            let ours = encrypt_chunk(
                &params,
                &key,
                &values,
                &mut ChaCha20Rng::from_seed([seed; 32]),
            )
            .unwrap();
            assert_eq!(ciphertext_to_bytes(&ours), ciphertext_to_bytes(&theirs));
        }
        let too_many = vec![0; DEGREE + 1];
        assert!(encrypt_chunk(&params, &key, &too_many, &mut g).is_err());
    }

    /// Against fhe.rs's key switch to the zero key of `(0, c1)`, from the
    /// same draws: the same decryption share to the bit.
    #[test]
    fn a_decryption_share_is_fhe_rs_key_switch_to_the_bit() {
        let params = HeParams::new().unwrap();
        let mut g = ChaCha20Rng::from_seed([4; 32]);
        let sk = SecretKey::random(params.bfv(), &mut g);
        let pk = PublicKey::new(&sk, &mut g);
        let pt = Plaintext::try_encode(&[5u64, 6, 7], Encoding::poly(), params.bfv()).unwrap();
        let ct = pk.try_encrypt(&pt, &mut g).unwrap();
        let zero_first = Poly::zero(ct[1].ctx(), Representation::Ntt);
        let half = Ciphertext::new(vec![zero_first, ct[1].clone()], params.bfv()).unwrap();
        let switch = SecretKeySwitchShare::new(
            &sk,
            &zero_key(&params).unwrap(),
            Arc::new(half),
            &mut ChaCha20Rng::from_seed([5; 32]),
        )
        .unwrap();
        let theirs = Ciphertext::from_shares(std::iter::once(switch)).unwrap();
        let ours = SecretPoly::of(&params, &sk)
            .unwrap()
            .share(&ct[1], &mut ChaCha20Rng::from_seed([5; 32]))
            .unwrap();
        assert_eq!(ours.coefficients(), theirs[0].coefficients());
    }
}
