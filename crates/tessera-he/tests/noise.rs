//! The ciphertext modulus's room for noise: one 62-bit modulus and the
//! plaintext modulus `2^32` leave a scale of `2^30`, and decryption is right
//! while a ciphertext's noise stays below half of it. Measured, not assumed:
//! a fresh ciphertext under the joint key of the most key holders a plan
//! names, added to itself until its noise (grown as much as the ciphertext)
//! would pass that bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use fhe::bfv::{Ciphertext, Encoding, Plaintext, PublicKey, SecretKey};
use fhe::mbfv::{AggregateIter, CommonRandomPoly, DecryptionShare, PublicKeyShare};
use fhe_traits::{FheDecoder, FheEncoder, FheEncrypter};
use rand_chacha_09::ChaCha20Rng;
use rand_chacha_09::rand_core::SeedableRng;
use tessera_he::{HeParams, MAX_CONTRIBUTIONS};

/// The largest `k` for which a fresh ciphertext of `values` under a joint
/// key of `holders` key holders, doubled `k` times, still decrypts right
/// (its noise doubled with it, the plaintext's wrapping modulo `2^32`).
fn doublings_that_decrypt(holders: usize, seed: u8) -> u32 {
    let params = HeParams::new().unwrap();
    let bfv = params.bfv();
    let mut g = ChaCha20Rng::from_seed([seed; 32]);
    let crp = CommonRandomPoly::new(bfv, &mut g).unwrap();
    let secrets: Vec<SecretKey> = (0..holders)
        .map(|_| SecretKey::random(bfv, &mut g))
        .collect();
    let key: PublicKey = (secrets.iter())
        .map(|s| PublicKeyShare::new(s, crp.clone(), &mut g).unwrap())
        .aggregate()
        .unwrap();
    let values: Vec<u64> = (0..4096u64)
        .map(|i| (i * 0x9e37_79b9) % (1 << 32))
        .collect();
    let pt = Plaintext::try_encode(&values, Encoding::poly(), bfv).unwrap();
    let mut ct: Ciphertext = key.try_encrypt(&pt, &mut g).unwrap();
    for k in 1..=30 {
        ct = &ct + &ct;
        let shared = Arc::new(ct.clone());
        let opened: Plaintext = (secrets.iter())
            .map(|s| DecryptionShare::new(s, &shared, &mut g).unwrap())
            .aggregate()
            .unwrap();
        let got = Vec::<u64>::try_decode(&opened, Encoding::poly()).unwrap();
        if got
            .iter()
            .zip(&values)
            .any(|(g, v)| *g != (v << k) % (1 << 32))
        {
            return k - 1;
        }
    }
    30
}

/// A fresh ciphertext under 16 key holders' joint key doubled `2^14` times
/// still decrypts: its noise is below `2^15` (`2^29 / 2^14`). A sum of
/// [`MAX_CONTRIBUTIONS`] (`2^20`) independent ones has noise about
/// `sqrt(2^20) = 2^10` times one's, below `2^25`: sixteen times inside the
/// bound. (It fails within a few more doublings, `2^15` to `2^17` times: the
/// bound is the scale's, not a loose one.)
#[test]
fn a_fresh_ciphertext_leaves_room_for_a_million_more() {
    assert_eq!(MAX_CONTRIBUTIONS, 1 << 20);
    let max_holders = tessera_secagg::MAX_KEY_HOLDERS;
    assert_eq!(max_holders, 16);
    for seed in 0..2 {
        let k = doublings_that_decrypt(max_holders, seed);
        assert!((14..18).contains(&k), "seed {seed}: right up to 2^{k}");
    }
}
