//! Exponential ElGamal on ristretto255 and a bounded discrete logarithm
//! (baby-step giant-step), the additively homomorphic tool of
//! intersection-sum.
//!
//! `Enc(m) = (k G, m G + k Y)` with `Y = x G`; ciphertexts add
//! component-wise to an encryption of the sum, and `m G = c2 - x c1`.
//! Recovering `m` from `m G` takes about `2 sqrt(bound)` group operations,
//! so sums are bounded (see [`crate::sum::MAX_SUM_BITS`]).

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{RistrettoBasepointTable, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use rayon::prelude::*;
use sha2::{Digest, Sha512};
use std::collections::HashMap;

const NONCE_DOMAIN: &[u8] = b"tessera-psi/elgamal-nonce/v1\0";

/// The `j`-th encryption nonce from a 32-byte secret seed.
fn nonce(seed: &[u8; 32], j: u64) -> Scalar {
    let mut h = Sha512::new();
    h.update(NONCE_DOMAIN);
    h.update(seed);
    h.update(j.to_le_bytes());
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

/// Encrypts `values` under `public`, nonces from `seed`; 64 bytes each
/// (`c1 || c2`, compressed). Both components are computed halved and then
/// doubled and compressed in batches (one field inversion per batch).
pub(crate) fn encrypt_all(
    public: &RistrettoPoint,
    values: &[u64],
    seed: &[u8; 32],
) -> Vec<[u8; 64]> {
    const CHUNK: usize = 256;
    let table = RistrettoBasepointTable::create(public);
    let half = Scalar::from(2u64).invert();
    let mut out = vec![[0u8; 64]; values.len()];
    out.par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(b, (o, vs))| {
            let mut halves = Vec::with_capacity(2 * vs.len());
            for (i, v) in vs.iter().enumerate() {
                let k = nonce(seed, (b * CHUNK + i) as u64) * half;
                halves.push(RISTRETTO_BASEPOINT_TABLE * &k);
                halves.push(&table * &k + RISTRETTO_BASEPOINT_TABLE * &(Scalar::from(*v) * half));
            }
            let compressed = RistrettoPoint::double_and_compress_batch(&halves);
            for (o, pair) in o.iter_mut().zip(compressed.chunks_exact(2)) {
                o[..32].copy_from_slice(pair[0].as_bytes());
                o[32..].copy_from_slice(pair[1].as_bytes());
            }
        });
    out
}

/// The `m` in `[0, bound]` with `m G = target`, if there is one.
pub(crate) fn bounded_log(target: &RistrettoPoint, bound: u64) -> Option<u64> {
    // m = i * step + j with 0 <= j < step, 0 <= i <= bound / step.
    let step = (bound as f64 + 1.0).sqrt().ceil().max(1.0) as u64;
    let g = RISTRETTO_BASEPOINT_TABLE * &Scalar::ONE;
    // Baby steps j G, keyed by the encoding of 2 j G (batched compression).
    // The points are dropped once the table holds their encodings.
    let table: HashMap<[u8; 32], u64> = {
        let mut baby = Vec::with_capacity(step as usize);
        let mut acc = RistrettoPoint::identity();
        for _ in 0..step {
            baby.push(acc);
            acc += g;
        }
        RistrettoPoint::double_and_compress_batch(&baby)
            .into_iter()
            .enumerate()
            .map(|(j, c)| (c.to_bytes(), j as u64))
            .collect()
    };
    // Giant steps target - i step G, in batches.
    let giant = RISTRETTO_BASEPOINT_TABLE * &Scalar::from(step);
    let mut cur = *target;
    let mut i = 0u64;
    let last = bound / step;
    while i <= last {
        let n = (last - i + 1).min(1024);
        let mut batch = Vec::with_capacity(n as usize);
        for _ in 0..n {
            batch.push(cur);
            cur -= giant;
        }
        for (o, c) in RistrettoPoint::double_and_compress_batch(&batch)
            .iter()
            .enumerate()
        {
            if let Some(j) = table.get(c.as_bytes()) {
                let m = (i + o as u64) * step + j;
                return (m <= bound).then_some(m);
            }
        }
        i += n;
    }
    None
}
