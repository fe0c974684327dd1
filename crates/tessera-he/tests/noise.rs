//! The ciphertext modulus's room for noise: one 62-bit modulus and the
//! plaintext modulus `2^32` leave a scale of `2^30`, and decryption is right
//! while a ciphertext's noise stays below half of it. Measured, not assumed:
//! ciphertexts under the joint key of the most key holders a plan names,
//! added to themselves until their noise (grown as much as the ciphertext)
//! would pass that bound; once for a fresh ciphertext, once for a sum of
//! thousands of independent ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use fhe::bfv::{Ciphertext, Encoding, Plaintext, PublicKey, SecretKey};
use fhe::mbfv::{AggregateIter, CommonRandomPoly, DecryptionShare, PublicKeyShare};
use fhe_traits::{FheDecoder, FheEncoder, FheEncrypter};
use rand_chacha_09::ChaCha20Rng;
use rand_chacha_09::rand_core::{RngCore, SeedableRng};
use tessera_he::{DEGREE, HeParams, MAX_CONTRIBUTIONS};

/// A joint key of `holders` key holders: their secrets and the key.
fn joint_key(
    params: &HeParams,
    holders: usize,
    g: &mut ChaCha20Rng,
) -> (Vec<SecretKey>, PublicKey) {
    let crp = CommonRandomPoly::new(params.bfv(), g).unwrap();
    let secrets: Vec<SecretKey> = (0..holders)
        .map(|_| SecretKey::random(params.bfv(), g))
        .collect();
    let key = (secrets.iter())
        .map(|s| PublicKeyShare::new(s, crp.clone(), g).unwrap())
        .aggregate()
        .unwrap();
    (secrets, key)
}

/// Encrypts `values` with its own generator (as each site draws from its
/// own secret).
fn encrypt(params: &HeParams, key: &PublicKey, values: &[u64], seed: u64) -> Ciphertext {
    let pt = Plaintext::try_encode(values, Encoding::poly(), params.bfv()).unwrap();
    key.try_encrypt(&pt, &mut ChaCha20Rng::seed_from_u64(seed))
        .unwrap()
}

/// The largest `k` for which `ct` (holding `values`), doubled `k` times,
/// still decrypts right under every key holder's share (its noise doubled
/// with it, the plaintext's wrapping modulo `2^32`).
fn doublings_that_decrypt(secrets: &[SecretKey], mut ct: Ciphertext, values: &[u64]) -> u32 {
    let mut g = ChaCha20Rng::seed_from_u64(99);
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
            .zip(values)
            .any(|(g, v)| *g != (v << k) % (1 << 32))
        {
            return k - 1;
        }
    }
    30
}

/// A fresh ciphertext under 16 key holders' joint key doubled fourteen
/// times still decrypts: its noise is below `2^15` (`2^29 / 2^14`); it
/// fails within a few more (the bound is the scale's, not a loose one). A
/// sum of 1,024 independent fresh ciphertexts keeps all but about five
/// doublings of that room (its noise `sqrt(1024) = 2^5` times one's; were
/// the noises of different sites' ciphertexts alike, it would lose ten).
/// So a sum of [`MAX_CONTRIBUTIONS`] (`2^20`) has noise about `2^10` times
/// one's, below `2^25`: sixteen times inside the bound.
#[test]
fn a_fresh_ciphertext_leaves_room_for_a_million_more() {
    assert_eq!(MAX_CONTRIBUTIONS, 1 << 20);
    let max_holders = tessera_secagg::MAX_KEY_HOLDERS;
    assert_eq!(max_holders, 16);
    let params = HeParams::new().unwrap();
    let mut g = ChaCha20Rng::from_seed([7; 32]);
    let (secrets, key) = joint_key(&params, max_holders, &mut g);
    let values_of = |seed: u64| -> Vec<u64> {
        let mut g = ChaCha20Rng::seed_from_u64(seed);
        (0..DEGREE).map(|_| u64::from(g.next_u32())).collect()
    };
    let fresh_values = values_of(1);
    let fresh = encrypt(&params, &key, &fresh_values, 1);
    let one = doublings_that_decrypt(&secrets, fresh, &fresh_values);
    assert!(
        (14..18).contains(&one),
        "a fresh ciphertext: right up to 2^{one}"
    );
    let sites = 1024u64;
    let mut sum_values = vec![0u64; DEGREE];
    let mut sum: Option<Ciphertext> = None;
    for site in 0..sites {
        let values = values_of(1000 + site);
        for (s, v) in sum_values.iter_mut().zip(&values) {
            *s = (*s + v) % (1 << 32);
        }
        let ct = encrypt(&params, &key, &values, 1000 + site);
        sum = Some(match sum {
            Some(sum) => &sum + &ct,
            None => ct,
        });
    }
    let many = doublings_that_decrypt(&secrets, sum.unwrap(), &sum_values);
    eprintln!("one fresh ciphertext: 2^{one}; a sum of {sites}: 2^{many}");
    assert!(
        (one - 7..=one - 3).contains(&many),
        "a sum of {sites}: right up to 2^{many}, one alone up to 2^{one}"
    );
}
