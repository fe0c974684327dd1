//! Multiparty-BFV aggregation against an independent computation (the
//! wrapping sum of the plain values) and against a coordinator that tries to
//! have less than a sum decrypted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tessera_he::{
    Contribution, DEGREE, HeError, HeParams, KeyHolder, VerifiedSum, combine, common_poly, encrypt,
    joint_key,
};
use tessera_secagg::{Ed25519Directory, Ed25519Signer};

struct Round {
    params: HeParams,
    holders: Vec<KeyHolder>,
    key: fhe::bfv::PublicKey,
    signers: Vec<Ed25519Signer>,
    directory: Ed25519Directory,
}

fn round(number: u32, holders: usize, sites: usize) -> Round {
    let params = HeParams::new().unwrap();
    let crp = common_poly(&params, &[number as u8; 32]).unwrap();
    let (holders, shares): (Vec<_>, Vec<_>) = (0..holders)
        .map(|i| KeyHolder::new(&params, number, [50 + i as u8; 32], &crp).unwrap())
        .unzip();
    let key = joint_key(shares).unwrap();
    let signers: Vec<Ed25519Signer> = (0..sites)
        .map(|i| Ed25519Signer::from_secret(secret(i as u32, 1)))
        .collect();
    let mut directory = Ed25519Directory::new();
    for (i, s) in signers.iter().enumerate() {
        directory.insert(i as u32, s.public()).unwrap();
    }
    Round {
        params,
        holders,
        key,
        signers,
        directory,
    }
}

/// A distinct 32-byte secret for each site and use.
fn secret(site: u32, tag: u8) -> [u8; 32] {
    let mut s = [tag; 32];
    s[..4].copy_from_slice(&site.to_le_bytes());
    s
}

/// Site `site`'s values: spread over all of `Z_2^32`, so that sums wrap.
fn values(length: usize, site: u32) -> Vec<u32> {
    (0..length as u32)
        .map(|i| {
            i.wrapping_mul(2_654_435_761)
                .wrapping_add(site.wrapping_mul(40_503))
                .rotate_left(site)
        })
        .collect()
}

fn contribute(r: &Round, number: u32, site: u32, values: &[u32]) -> Contribution {
    encrypt(
        &r.params,
        &r.key,
        number,
        site,
        values,
        &secret(site, 2),
        &r.signers[site as usize],
    )
    .unwrap()
}

fn refused(e: Result<impl Sized, HeError>) -> String {
    match e {
        Err(HeError::Refused(why)) => why,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a result"),
    }
}

#[test]
fn the_key_holders_decrypt_the_sum_modulo_2_32() {
    // Two ciphertexts and a partial third; five sites, three key holders.
    let length = 2 * DEGREE + 123;
    let r = round(3, 3, 5);
    let mut sum = VerifiedSum::new(&r.params, 3, length);
    let mut expected = vec![0u32; length];
    for site in 0..5 {
        let v = values(length, site);
        for (e, x) in expected.iter_mut().zip(&v) {
            *e = e.wrapping_add(*x);
        }
        sum.absorb(&contribute(&r, 3, site, &v), &r.directory)
            .unwrap();
    }
    assert_eq!(sum.contributors().len(), 5);
    let shares = r
        .holders
        .into_iter()
        .map(|h| h.decryption_shares(&sum, 5).unwrap())
        .collect();
    assert_eq!(combine(shares, length).unwrap(), expected);
}

#[test]
fn a_ciphertext_hides_its_values_and_the_same_values_encrypt_differently() {
    let r = round(1, 2, 2);
    let v = vec![0u32; DEGREE];
    let a = contribute(&r, 1, 0, &v);
    let b = contribute(&r, 1, 1, &v);
    // Two sites with the same (all-zero) values send different ciphertexts.
    assert_ne!(a.digest, b.digest);
    // The encoded values do not appear in the wire bytes.
    use fhe_traits::Serialize;
    let marker: Vec<u32> = (0..DEGREE as u32).map(|i| 0xA5A5_0000 | i).collect();
    let c = contribute(&r, 1, 0, &marker);
    let bytes = c.ciphertexts[0].to_bytes();
    let needle = 0xA5A5_0007u32.to_le_bytes();
    assert!(!bytes.windows(4).any(|w| w == needle));
}

#[test]
fn the_coordinator_cannot_have_one_contribution_decrypted() {
    let r = round(4, 3, 3);
    let length = 100;
    let target = contribute(&r, 4, 0, &values(length, 0));

    // A "sum" of the target alone: every key holder refuses it.
    let mut alone = VerifiedSum::new(&r.params, 4, length);
    alone.absorb(&target, &r.directory).unwrap();
    let mut r = r;
    let h = r.holders.remove(0);
    let why = refused(h.decryption_shares(&alone, 2));
    assert!(why.contains("at least 2"), "{why}");

    // The target beside an encryption of zero the coordinator made itself
    // (it holds the joint public key) under another site's id: the
    // signature does not verify.
    let mut padded = VerifiedSum::new(&r.params, 4, length);
    padded.absorb(&target, &r.directory).unwrap();
    let own = Ed25519Signer::from_secret([222; 32]);
    let forged = encrypt(&r.params, &r.key, 4, 1, &vec![0; length], &[9; 32], &own).unwrap();
    let why = refused(padded.absorb(&forged, &r.directory));
    assert!(why.contains("participant 1"), "{why}");

    // The target twice.
    let why = refused(padded.absorb(&target, &r.directory));
    assert!(why.contains("second contribution"), "{why}");

    // A real contribution from another site with its ciphertexts swapped
    // for the coordinator's zeros: the digest no longer matches.
    let mut swapped = contribute(&r, 4, 1, &values(length, 1));
    swapped.ciphertexts = forged.ciphertexts;
    let why = refused(padded.absorb(&swapped, &r.directory));
    assert!(why.contains("digest"), "{why}");
    assert_eq!(padded.contributors().len(), 1);
}

#[test]
fn a_past_rounds_contribution_and_key_are_refused() {
    let old = round(5, 2, 2);
    let new = round(6, 2, 2);
    let replayed = contribute(&old, 5, 1, &values(10, 1));
    let mut sum = VerifiedSum::new(&new.params, 6, 10);
    let why = refused(sum.absorb(&replayed, &new.directory));
    assert!(why.contains("round 5"), "{why}");
    // A contribution re-labelled with the new round: the signature covers
    // the round.
    let mut relabelled = replayed;
    relabelled.round = 6;
    let why = refused(sum.absorb(&relabelled, &new.directory));
    assert!(why.contains("participant 1"), "{why}");
    // An old round's key does not decrypt this round's sum.
    sum.absorb(&contribute(&new, 6, 0, &values(10, 0)), &new.directory)
        .unwrap();
    sum.absorb(&contribute(&new, 6, 1, &values(10, 1)), &new.directory)
        .unwrap();
    let h = old.holders.into_iter().next().unwrap();
    let why = refused(h.decryption_shares(&sum, 2));
    assert!(why.contains("round 6"), "{why}");
}

#[test]
fn every_key_holder_is_needed_to_decrypt() {
    let length = 300;
    let r = round(7, 3, 2);
    let mut sum = VerifiedSum::new(&r.params, 7, length);
    let mut expected = vec![0u32; length];
    for site in 0..2 {
        let v = values(length, site);
        for (e, x) in expected.iter_mut().zip(&v) {
            *e = e.wrapping_add(*x);
        }
        sum.absorb(&contribute(&r, 7, site, &v), &r.directory)
            .unwrap();
    }
    let mut shares: Vec<_> = r
        .holders
        .into_iter()
        .map(|h| h.decryption_shares(&sum, 2).unwrap())
        .collect();
    shares.pop();
    // Two of three key holders: the "sum" shares no value with the true one
    // beyond chance.
    let partial = combine(shares, length).unwrap();
    let agree = partial
        .iter()
        .zip(&expected)
        .filter(|(a, b)| a == b)
        .count();
    assert!(
        agree <= 2,
        "{agree} of {length} values decrypted without a key holder"
    );
}

#[test]
fn a_sum_of_many_contributions_still_decrypts() {
    // The noise grows with each ciphertext added: 200 sites of values at the
    // top of the range decrypt exactly.
    let length = 64;
    let sites = 200;
    let r = round(8, 2, sites);
    let mut sum = VerifiedSum::new(&r.params, 8, length);
    let v = vec![u32::MAX; length];
    for site in 0..sites as u32 {
        sum.absorb(&contribute(&r, 8, site, &v), &r.directory)
            .unwrap();
    }
    let shares = r
        .holders
        .into_iter()
        .map(|h| h.decryption_shares(&sum, 2).unwrap())
        .collect();
    let expected = u32::MAX.wrapping_mul(sites as u32);
    assert_eq!(combine(shares, length).unwrap(), vec![expected; length]);
}

#[test]
fn a_ciphertext_is_two_polynomials_at_36_bits_a_coefficient() {
    let r = round(9, 1, 1);
    let c = contribute(&r, 9, 0, &values(DEGREE, 0));
    // Two polynomials, each 4096 coefficients under two 36-bit moduli, and
    // the serialisation's framing.
    let two = 2 * HeParams::polynomial_bytes();
    assert_eq!(two, 2 * 2 * 4096 * 36 / 8);
    assert!(
        c.wire_bytes >= two && c.wire_bytes < two + 256,
        "{}",
        c.wire_bytes
    );
}
