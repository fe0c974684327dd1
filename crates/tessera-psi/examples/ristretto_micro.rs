//! Microbenchmark, one thread: µs per point of the group operations behind
//! ECDH-PSI, curve25519-dalek one point at a time against this process's
//! engine (`tessera_psi::engine_name()`: eight lanes of AVX-512 IFMA where
//! the processor has them, else dalek).
//!
//! ```text
//! cargo run --release -p tessera-psi --example ristretto_micro -- 20000
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use std::time::Instant;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(20_000, |a| a.parse().expect("a number of points"));
    let per = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let k = Scalar::from_bytes_mod_order_wide(&[7u8; 64]);
    let inputs: Vec<[u8; 64]> = (0..n)
        .map(|i| {
            let mut b = [0u8; 64];
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
            b[8..16].copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
            b
        })
        .collect();
    let t = Instant::now();
    let pts: Vec<RistrettoPoint> = inputs
        .iter()
        .map(RistrettoPoint::from_uniform_bytes)
        .collect();
    let hash = per(t);
    let t = Instant::now();
    let mult: Vec<RistrettoPoint> = pts.iter().map(|p| p * k).collect();
    let mul = per(t);
    let t = Instant::now();
    let comp: Vec<CompressedRistretto> = mult.iter().map(|p| p.compress()).collect();
    let c1 = per(t);
    let t = Instant::now();
    let mut batch = Vec::new();
    for ch in mult.chunks(512) {
        batch.extend(RistrettoPoint::double_and_compress_batch(ch));
    }
    let c2 = per(t);
    let t = Instant::now();
    let dec: Vec<RistrettoPoint> = comp.iter().map(|c| c.decompress().unwrap()).collect();
    let d = per(t);
    assert_eq!(dec.len(), n);
    println!(
        "dalek, per point, µs: from_uniform_bytes {hash:.2}  mul {mul:.2}  compress {c1:.2}  \
         double_and_compress_batch {c2:.2}  decompress {d:.2}"
    );

    // The engine's batch operations against dalek's, same inputs.
    let packed: Vec<u8> = comp.iter().flat_map(|c| c.to_bytes()).collect();
    let mut want = vec![0u8; packed.len()];
    let t = Instant::now();
    for (i, o) in packed.chunks(32 * 512).zip(want.chunks_mut(32 * 512)) {
        let pts: Vec<RistrettoPoint> = i
            .chunks(32)
            .map(|c| {
                CompressedRistretto::from_slice(c)
                    .unwrap()
                    .decompress()
                    .unwrap()
                    * k
            })
            .collect();
        for (c, o) in RistrettoPoint::double_and_compress_batch(&pts)
            .iter()
            .zip(o.chunks_mut(32))
        {
            o.copy_from_slice(c.as_bytes());
        }
    }
    let dalek_points = per(t);
    let mut got = vec![0u8; packed.len()];
    let t = Instant::now();
    for (i, o) in packed.chunks(32 * 512).zip(got.chunks_mut(32 * 512)) {
        tessera_psi::bench::mul2_compress(i, &k, o).unwrap();
    }
    let engine_points = per(t);
    assert_eq!(got, want, "the engine's bytes differ from dalek's");
    let t = Instant::now();
    for (h, o) in inputs.chunks(512).zip(want.chunks_mut(32 * 512)) {
        let pts: Vec<RistrettoPoint> = h
            .iter()
            .map(|h| RistrettoPoint::from_uniform_bytes(h) * k)
            .collect();
        for (c, o) in RistrettoPoint::double_and_compress_batch(&pts)
            .iter()
            .zip(o.chunks_mut(32))
        {
            o.copy_from_slice(c.as_bytes());
        }
    }
    let dalek_hash = per(t);
    let t = Instant::now();
    for (h, o) in inputs.chunks(512).zip(got.chunks_mut(32 * 512)) {
        tessera_psi::bench::hash_mul2_compress(h, &k, o);
    }
    let engine_hash = per(t);
    assert_eq!(got, want, "the engine's bytes differ from dalek's");
    println!(
        "decode, multiply, double and compress, per point, µs: dalek {dalek_points:.2}, engine {} {engine_points:.2}",
        tessera_psi::engine_name()
    );
    println!(
        "hash to the group, multiply, double and compress, per point, µs: dalek {dalek_hash:.2}, engine {} {engine_hash:.2}",
        tessera_psi::engine_name()
    );
}
