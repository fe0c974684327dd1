//! Homomorphic aggregation's costs at 100,000 and 1,000,000 values: one
//! site's encryption (quantised values to committed ciphertexts), one
//! contribution checked and added to a key holder's verified sum (list
//! signature, digest, addition), and three key holders' answers combined.
//! Single numbers for BENCHMARKS come from `cargo bench -p tessera-he`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use divan::{Bencher, black_box};
use tessera_he::{
    CommitmentList, Contribution, EndorsedKey, HeParams, KeyHolder, RoundId, VerifiedSum, combine,
    encrypt,
};
use tessera_secagg::{Ed25519Directory, Ed25519Signer};

fn main() {
    divan::main();
}

const LENGTHS: &[usize] = &[100_000, 1_000_000];
const HOLDERS: u32 = 3;
const ROUND: RoundId = RoundId {
    round: 1,
    seed: [9; 32],
};

struct Setup {
    params: HeParams,
    holders: Vec<KeyHolder>,
    holder_ids: Vec<u32>,
    holder_signers: Vec<Ed25519Signer>,
    key: EndorsedKey,
    signers: Vec<Ed25519Signer>,
    directory: Ed25519Directory,
}

fn setup(sites: u32) -> Setup {
    let params = HeParams::new().unwrap();
    let holder_ids: Vec<u32> = (0..HOLDERS).map(|i| 100 + i).collect();
    let holder_signers: Vec<_> = holder_ids
        .iter()
        .map(|&h| Ed25519Signer::from_secret([h as u8; 32]))
        .collect();
    let signers: Vec<_> = (0..sites)
        .map(|i| Ed25519Signer::from_secret([i as u8 + 1; 32]))
        .collect();
    let mut directory = Ed25519Directory::new();
    for (i, s) in signers.iter().enumerate() {
        directory.insert(i as u32, s.public()).unwrap();
    }
    for (&h, s) in holder_ids.iter().zip(&holder_signers) {
        directory.insert(h, s.public()).unwrap();
    }
    let (holders, commitments): (Vec<_>, Vec<_>) = holder_ids
        .iter()
        .zip(&holder_signers)
        .map(|(&h, s)| KeyHolder::new(&params, h, ROUND, [h as u8 + 50; 32], s).unwrap())
        .unzip();
    let shares: Vec<_> = holders
        .iter()
        .zip(&holder_signers)
        .map(|(h, s)| h.share(&commitments, &holder_ids, &directory, s).unwrap())
        .collect();
    let key = EndorsedKey::assemble(
        &params,
        ROUND,
        &commitments,
        &shares,
        &holder_ids,
        &directory,
    )
    .unwrap();
    Setup {
        params,
        holders,
        holder_ids,
        holder_signers,
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

fn contribute(s: &Setup, site: u32, length: usize) -> Contribution {
    encrypt(
        &s.params,
        &s.key,
        site,
        &values(length, site),
        &[site as u8 + 7; 32],
        &s.signers[site as usize],
    )
    .unwrap()
}

#[divan::bench(args = LENGTHS, sample_count = 3)]
fn encrypt_one_site(bencher: Bencher, length: usize) {
    let s = setup(1);
    let v = values(length, 1);
    bencher.bench_local(|| {
        black_box(encrypt(&s.params, &s.key, 0, &v, &[7; 32], &s.signers[0]).unwrap())
    });
}

#[divan::bench(args = LENGTHS, sample_count = 3)]
fn add_one_contribution(bencher: Bencher, length: usize) {
    let s = setup(1);
    let c = contribute(&s, 0, length);
    let list = CommitmentList::new(vec![c.commitment.clone()]).unwrap();
    let revealed = c.reveal(&ROUND, &list, &s.signers[0]).unwrap();
    bencher.bench_local(|| {
        let mut sum =
            VerifiedSum::new(&s.params, &s.key, length, list.clone(), &s.directory).unwrap();
        sum.absorb(&revealed, &s.directory).unwrap();
        black_box(sum)
    });
}

/// Two sites' contributions of `length` values, checked and summed.
fn two_site_sum(length: usize) -> (Setup, VerifiedSum) {
    let s = setup(2);
    let cs: Vec<_> = (0..2).map(|site| contribute(&s, site, length)).collect();
    let list = CommitmentList::new(cs.iter().map(|c| c.commitment.clone()).collect()).unwrap();
    let mut sum = VerifiedSum::new(&s.params, &s.key, length, list.clone(), &s.directory).unwrap();
    for c in cs {
        let signer = &s.signers[c.commitment.from as usize];
        let revealed = c.reveal(&ROUND, &list, signer).unwrap();
        sum.absorb(&revealed, &s.directory).unwrap();
    }
    (s, sum)
}

#[divan::bench(args = LENGTHS, sample_count = 3)]
fn decrypt_and_combine(bencher: Bencher, length: usize) {
    bencher
        .with_inputs(|| two_site_sum(length))
        .bench_local_values(|(s, sum)| {
            let answers: Vec<_> = s
                .holders
                .into_iter()
                .zip(&s.holder_signers)
                .map(|(h, signer)| h.answer(&sum, 2, signer).unwrap())
                .collect();
            black_box(
                combine(
                    &ROUND,
                    answers,
                    &s.holder_ids,
                    &s.params,
                    sum.ciphertexts(),
                    length,
                    &s.directory,
                )
                .unwrap(),
            )
        });
}

#[divan::bench(args = LENGTHS, sample_count = 3)]
fn send_one_contribution(bencher: Bencher, length: usize) {
    let s = setup(1);
    let c = contribute(&s, 0, length);
    bencher.bench_local(|| black_box(c.ciphertext_bytes()));
}

#[divan::bench(args = LENGTHS, sample_count = 3)]
fn read_one_contribution(bencher: Bencher, length: usize) {
    let s = setup(1);
    let c = contribute(&s, 0, length);
    let bytes = c.ciphertext_bytes();
    bencher.bench_local(|| {
        black_box(Contribution::from_wire(&s.params, c.commitment.clone(), &bytes).unwrap())
    });
}

#[divan::bench(args = LENGTHS, sample_count = 3)]
fn answer_one_holder(bencher: Bencher, length: usize) {
    bencher
        .with_inputs(|| two_site_sum(length))
        .bench_local_values(|(mut s, sum)| {
            let holder = s.holders.remove(0);
            let answer = holder.answer(&sum, 2, &s.holder_signers[0]).unwrap();
            black_box(answer.share_bytes())
        });
}

#[divan::bench(sample_count = 5)]
fn make_params() -> HeParams {
    HeParams::new().unwrap()
}
