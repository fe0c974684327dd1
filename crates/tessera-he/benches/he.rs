//! Homomorphic aggregation's costs at 100,000 and 1,000,000 values: one
//! site's encryption (quantised values to signed ciphertexts), one
//! contribution added to a key holder's verified sum (digest, signature,
//! addition), one key holder's decryption shares, and the shares of three
//! key holders combined. Single numbers for BENCHMARKS come from
//! `cargo bench -p tessera-he`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use divan::{Bencher, black_box};
use tessera_he::{HeParams, KeyHolder, VerifiedSum, combine, common_poly, encrypt, joint_key};
use tessera_secagg::{Ed25519Directory, Ed25519Signer};

fn main() {
    divan::main();
}

const LENGTHS: &[usize] = &[100_000, 1_000_000];
const HOLDERS: usize = 3;

struct Setup {
    params: HeParams,
    holders: Vec<KeyHolder>,
    key: fhe::bfv::PublicKey,
    signers: Vec<Ed25519Signer>,
    directory: Ed25519Directory,
}

fn setup(sites: usize) -> Setup {
    let params = HeParams::new().expect("parameters");
    let crp = common_poly(&params, &[9; 32]).expect("crp");
    let (holders, shares): (Vec<_>, Vec<_>) = (0..HOLDERS)
        .map(|i| KeyHolder::new(&params, 1, [i as u8 + 1; 32], &crp).expect("key"))
        .unzip();
    let key = joint_key(shares).expect("joint key");
    let signers: Vec<Ed25519Signer> = (0..sites)
        .map(|i| Ed25519Signer::from_secret([100 + i as u8; 32]))
        .collect();
    let mut directory = Ed25519Directory::new();
    for (i, s) in signers.iter().enumerate() {
        directory.insert(i as u32, s.public()).expect("key");
    }
    Setup {
        params,
        holders,
        key,
        signers,
        directory,
    }
}

fn values(length: usize, seed: u32) -> Vec<u32> {
    (0..length as u32)
        .map(|i| i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 6)
        .collect()
}

#[divan::bench(args = LENGTHS, sample_count = 3)]
fn encrypt_one_site(bencher: Bencher, length: usize) {
    let s = setup(1);
    let v = values(length, 1);
    bencher.bench_local(|| {
        black_box(encrypt(&s.params, &s.key, 1, 0, &v, &[7; 32], &s.signers[0]).expect("encrypt"))
    });
}

#[divan::bench(args = LENGTHS, sample_count = 3)]
fn add_one_contribution(bencher: Bencher, length: usize) {
    let s = setup(1);
    let c = encrypt(
        &s.params,
        &s.key,
        1,
        0,
        &values(length, 1),
        &[7; 32],
        &s.signers[0],
    )
    .expect("encrypt");
    bencher.bench_local(|| {
        let mut sum = VerifiedSum::new(&s.params, 1, length);
        sum.absorb(&c, &s.directory).expect("absorb");
        black_box(sum)
    });
}

#[divan::bench(args = LENGTHS, sample_count = 3)]
fn decrypt_and_combine(bencher: Bencher, length: usize) {
    bencher
        .with_inputs(|| {
            let s = setup(2);
            let mut sum = VerifiedSum::new(&s.params, 1, length);
            for site in 0..2 {
                let c = encrypt(
                    &s.params,
                    &s.key,
                    1,
                    site,
                    &values(length, site),
                    &[site as u8; 32],
                    &s.signers[site as usize],
                )
                .expect("encrypt");
                sum.absorb(&c, &s.directory).expect("absorb");
            }
            (s.holders, sum)
        })
        .bench_local_values(|(holders, sum)| {
            let shares: Vec<_> = holders
                .into_iter()
                .map(|h| h.decryption_shares(&sum, 2).expect("share"))
                .collect();
            black_box(combine(shares, length).expect("combine"))
        });
}
