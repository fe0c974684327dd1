//! Multiparty-BFV aggregation against an independent computation (the
//! wrapping sum of the plain values) and against a coordinator, alone or
//! with a site, that tries to have less than a sum decrypted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fhe::bfv::Ciphertext;
use fhe_traits::Serialize;
use tessera_he::{
    CommitmentList, Contribution, DEGREE, EndorsedKey, HeError, HeParams, KeyShare, Reveal,
    VerifiedSum, combine, encrypt,
};
use tessera_secagg::Ed25519Signer;

mod common;
use common::*;

#[test]
fn the_key_holders_decrypt_the_sum_modulo_2_32() {
    // Two ciphertexts and a partial third; five sites, three key holders.
    let length = 2 * DEGREE + 123;
    let r = round(3, 3, 5);
    let inputs: Vec<Vec<u32>> = (0..5).map(|s| values(length, s)).collect();
    let contributions: Vec<_> = (0..5).map(|s| contribute(&r, s, length)).collect();
    let sum = honest_sum(&r, contributions, length);
    assert_eq!(sum.contributors().len(), 5);
    assert_eq!(decrypt(r, &sum, 5, length).unwrap(), wrapping_sum(&inputs));
}

#[test]
fn a_commitment_signed_as_the_library_signs_is_accepted() {
    // `sign_commitment` signs what `encrypt` signs: a re-signed honest
    // commitment passes.
    let r = round(11, 1, 2);
    let mut c = contribute(&r, 0, 10);
    c.commitment.signature = sign_commitment(&r, &c.commitment);
    let sum = honest_sum(&r, vec![c, contribute(&r, 1, 10)], 10);
    assert_eq!(sum.contributors().len(), 2);
}

#[test]
fn a_colluding_site_cannot_cancel_the_others_ciphertexts() {
    let length = 300;
    let r = round(10, 2, 3);
    let (target, honest, colluder) = (0u32, 1u32, 2u32);
    // Having seen the honest site's ciphertexts, the colluder sends their
    // negation: the three "sum" to the target's alone.
    let negated: Vec<Ciphertext> = contribute(&r, honest, length)
        .ciphertexts()
        .iter()
        .map(|ct| Ciphertext::new(vec![-&ct[0], -&ct[1]], r.params.bfv()).unwrap())
        .collect();
    let attack = crafted(&r, colluder, length, negated);
    let attack_commitment = attack.commitment.clone();

    // The control: were the honest sites to reveal under a list that holds
    // the crafted commitment (had they revealed before the list closed), the
    // key holders would decrypt the target's input exactly.
    let sum = honest_sum(
        &r,
        vec![
            contribute(&r, target, length),
            contribute(&r, honest, length),
            attack,
        ],
        length,
    );
    assert_eq!(
        decrypt(round(10, 2, 3), &sum, 2, length).unwrap(),
        values(length, target),
        "the control: the attack works without commitments"
    );

    // The protocol: the honest sites revealed under the list of their two
    // commitments; the crafted one came after.
    let (t, h) = (
        contribute(&r, target, length),
        contribute(&r, honest, length),
    );
    let before = list_of(&[&t.commitment, &h.commitment]);
    let after = list_of(&[&t.commitment, &h.commitment, &attack_commitment]);
    let (t, h) = (reveal(&r, t, &before), reveal(&r, h, &before));
    // Summing the list they signed leaves the crafted contribution out...
    let mut sum = VerifiedSum::new(&r.params, &r.key, length, before, &r.directory).unwrap();
    sum.absorb(&t, &r.directory).unwrap();
    sum.absorb(&h, &r.directory).unwrap();
    let negated: Vec<Ciphertext> = h
        .contribution
        .ciphertexts()
        .iter()
        .map(|ct| Ciphertext::new(vec![-&ct[0], -&ct[1]], r.params.bfv()).unwrap())
        .collect();
    let late = reveal(&r, crafted(&r, colluder, length, negated), &after);
    let why = refused(sum.absorb(&late, &r.directory));
    assert!(why.contains("not in the round's list"), "{why}");
    // ...and a list with it is not the one the honest sites signed.
    let mut sum = VerifiedSum::new(&r.params, &r.key, length, after, &r.directory).unwrap();
    let why = refused(sum.absorb(&t, &r.directory));
    assert!(why.contains("did not sign the round's list"), "{why}");
    // A site shown a list without its own commitment reveals nothing.
    let without = list_of(&[&attack_commitment]);
    let why = refused(contribute(&r, target, length).reveal(&r.id, &without, &r.signers[0]));
    assert!(why.contains("not in the list"), "{why}");
}

#[test]
fn the_coordinator_cannot_have_one_contribution_decrypted() {
    let length = 100;
    let mut r = round(4, 3, 3);

    // A "sum" of the target alone: every key holder refuses it.
    let alone = honest_sum(&r, vec![contribute(&r, 0, length)], length);
    let h = r.holders.remove(0);
    let why = refused(h.answer(&alone, 2, &r.holder_signers[0]));
    assert!(why.contains("at least 2"), "{why}");

    // Beside an encryption of zero the coordinator made itself (it can
    // assemble the joint key too) under site 1's id: the commitment's
    // signature fails.
    let own = Ed25519Signer::from_secret([222; 32]);
    let forged = encrypt(&r.params, &r.key, 1, &vec![0; length], &[9; 32], &own).unwrap();
    let target = contribute(&r, 0, length);
    let list = list_of(&[&target.commitment, &forged.commitment]);
    let why = refused(VerifiedSum::new(
        &r.params,
        &r.key,
        length,
        list,
        &r.directory,
    ));
    assert!(why.contains("participant 1's commitment"), "{why}");

    // The target twice.
    let why = refused(CommitmentList::new(vec![
        target.commitment.clone(),
        target.commitment.clone(),
    ]));
    assert!(why.contains("two commitments"), "{why}");

    // Site 1's real commitment with the coordinator's zeros as its
    // ciphertexts: they do not match the commitment.
    let other = contribute(&r, 1, length);
    let list = list_of(&[&target.commitment, &other.commitment]);
    let mut sum = VerifiedSum::new(&r.params, &r.key, length, list.clone(), &r.directory).unwrap();
    let mut swapped = reveal(&r, other, &list);
    swapped.contribution = Contribution::new(
        swapped.contribution.commitment,
        forged.ciphertexts().to_vec(),
    );
    let why = refused(sum.absorb(&swapped, &r.directory));
    assert!(why.contains("do not match its commitment"), "{why}");
    // With only the target in, a key holder refuses: site 1 is missing.
    let target = reveal(&r, target, &list);
    sum.absorb(&target, &r.directory).unwrap();
    let why = refused(sum.absorb(&target, &r.directory));
    assert!(why.contains("second contribution"), "{why}");
    let h = r.holders.remove(0);
    let why = refused(h.answer(&sum, 2, &r.holder_signers[1]));
    assert!(why.contains("1 listed contribution(s) missing"), "{why}");
}

#[test]
fn another_rounds_commitments_and_key_holders_are_refused() {
    let old = round(5, 2, 2);
    let new = round(6, 2, 2);
    // A round-5 commitment in a round-6 list.
    let replayed = contribute(&old, 1, 10);
    let list = list_of(&[&contribute(&new, 0, 10).commitment, &replayed.commitment]);
    let why = refused(VerifiedSum::new(
        &new.params,
        &new.key,
        10,
        list,
        &new.directory,
    ));
    assert!(why.contains("participant 1's commitment"), "{why}");
    // A round-5 key holder does not answer for a round-6 sum.
    let sum = honest_sum(
        &new,
        vec![contribute(&new, 0, 10), contribute(&new, 1, 10)],
        10,
    );
    let h = old.holders.into_iter().next().unwrap();
    let why = refused(h.answer(&sum, 2, &old.holder_signers[0]));
    assert!(why.contains("round 6"), "{why}");
}

#[test]
fn key_holders_shown_different_sums_are_caught_and_all_are_needed() {
    let length = 300;
    let inputs: Vec<Vec<u32>> = (0..3).map(|s| values(length, s)).collect();
    let r = round(7, 3, 3);
    let all = honest_sum(
        &r,
        (0..3).map(|s| contribute(&r, s, length)).collect(),
        length,
    );
    let two = honest_sum(
        &r,
        (0..2).map(|s| contribute(&r, s, length)).collect(),
        length,
    );
    let mut holders = r.holders.into_iter();
    let a = holders
        .next()
        .unwrap()
        .answer(&all, 2, &r.holder_signers[0])
        .unwrap();
    let b = holders
        .next()
        .unwrap()
        .answer(&two, 2, &r.holder_signers[1])
        .unwrap();
    let c = holders
        .next()
        .unwrap()
        .answer(&all, 2, &r.holder_signers[2])
        .unwrap();
    // The second key holder decrypted another sum: refused by its digest.
    let why = refused(combine(
        &r.id,
        vec![a, b, c],
        &r.holder_ids,
        &r.params,
        all.ciphertexts(),
        length,
        &r.directory,
    ));
    assert!(
        why.contains("key holder 1001 decrypted another sum"),
        "{why}"
    );

    // Two of three key holders: refused; and their shares alone (the
    // control, combined by hand) decrypt nothing of the sum.
    let r = round(7, 3, 3);
    let mut answers: Vec<_> = r
        .holders
        .into_iter()
        .zip(&r.holder_signers)
        .take(2)
        .map(|(h, s)| h.answer(&all, 2, s).unwrap())
        .collect();
    let first_shares: Vec<_> = answers.iter_mut().map(|a| a.shares.remove(0)).collect();
    let partial = tessera_he::open_with(&r.params, &all.ciphertexts()[0], &first_shares).unwrap();
    let expected = wrapping_sum(&inputs);
    let agree = partial
        .iter()
        .zip(&expected)
        .filter(|(a, b)| a == b)
        .count();
    assert!(
        agree <= 2,
        "{agree} of {length} values decrypted without a key holder"
    );
    let r = round(7, 3, 3);
    let answers: Vec<_> = r
        .holders
        .into_iter()
        .zip(&r.holder_signers)
        .take(2)
        .map(|(h, s)| h.answer(&all, 2, s).unwrap())
        .collect();
    let why = refused(combine(
        &r.id,
        answers,
        &r.holder_ids,
        &r.params,
        all.ciphertexts(),
        length,
        &r.directory,
    ));
    assert!(why.contains("key holder 1002 did not answer"), "{why}");
}

#[test]
fn each_encryption_draws_fresh_randomness_for_its_key_and_values() {
    let length = DEGREE;
    let r5 = round(5, 2, 1);
    let r6 = round(6, 2, 1);
    let v = values(length, 0);
    let mut w = v.clone();
    w[17] ^= 1;
    let a = contribute_values(&r5, 0, &v);
    let b = contribute_values(&r6, 0, &v);
    let c = contribute_values(&r5, 0, &w);
    let again = contribute_values(&r5, 0, &v);
    // The same values in another round, and other values in the same round:
    // the mask polynomial c1 = p1 u + e2 differs (a reused u would give the
    // values' difference away).
    assert_ne!(a.ciphertexts()[0][1], b.ciphertexts()[0][1]);
    assert_ne!(a.ciphertexts()[0][1], c.ciphertexts()[0][1]);
    // The same values under the same key: the same ciphertexts (nothing new
    // to learn).
    assert_eq!(a.commitment.digest, again.commitment.digest);
}

#[test]
fn malformed_ciphertexts_are_refused_not_a_panic() {
    let length = 10;
    let r = round(12, 1, 2);
    let good = contribute(&r, 0, length);
    // (One modulus: no level below the top for a ciphertext to be at.)
    let bad = vec![
        Ciphertext::new(
            vec![
                good.ciphertexts()[0][0].clone(),
                good.ciphertexts()[0][1].clone(),
                good.ciphertexts()[0][1].clone(),
            ],
            r.params.bfv(),
        )
        .unwrap(),
    ];
    // Committed honestly to its malformed ciphertext.
    let bad = crafted(&r, 1, length, bad);
    let list = list_of(&[&good.commitment, &bad.commitment]);
    let mut sum = VerifiedSum::new(&r.params, &r.key, length, list.clone(), &r.directory).unwrap();
    let why = refused(sum.absorb(&reveal(&r, bad, &list), &r.directory));
    assert!(why.contains("3 polynomials"), "{why}");
    // The sum goes on.
    let again = contribute(&r, 0, length);
    sum.absorb(&reveal(&r, again, &list), &r.directory).unwrap();
    // Ciphertexts read under another instance of the same parameters add
    // to this instance's sums.
    let other = HeParams::new().unwrap();
    let bytes = good.ciphertexts()[0].to_bytes();
    let read: Ciphertext =
        fhe_traits::DeserializeParametrized::from_bytes(&bytes, other.bfv()).unwrap();
    let moved = crafted(&r, 0, length, vec![read]);
    assert_eq!(moved.commitment.digest, good.commitment.digest);
    let sum = honest_sum(&r, vec![moved, contribute(&r, 1, length)], length);
    assert_eq!(sum.contributors().len(), 2);
}

#[test]
fn a_sum_of_many_contributions_still_decrypts() {
    // The noise grows with each ciphertext added: 200 sites of values at the
    // top of the range decrypt exactly.
    let length = 64;
    let sites = 200;
    let r = round(8, 2, sites);
    let v = vec![u32::MAX; length];
    let cs: Vec<_> = (0..sites).map(|s| contribute_values(&r, s, &v)).collect();
    let sum = honest_sum(&r, cs, length);
    let expected = u32::MAX.wrapping_mul(sites);
    assert_eq!(decrypt(r, &sum, 2, length).unwrap(), vec![expected; length]);
}

#[test]
fn a_ciphertext_is_two_polynomials_at_62_bits_a_coefficient() {
    let r = round(9, 1, 1);
    let c = contribute(&r, 0, DEGREE);
    // Two polynomials, each 4096 coefficients under one 62-bit modulus,
    // and the serialisation's framing.
    let two = 2 * HeParams::polynomial_bytes();
    assert_eq!(two, 2 * 4096 * 62 / 8);
    assert!(
        c.wire_bytes() >= two && c.wire_bytes() < two + 256,
        "{}",
        c.wire_bytes()
    );
}

#[test]
fn every_message_travels_as_bytes_and_hostile_bytes_are_refused() {
    // A round whose key shares, contributions and answers all cross the
    // wire (read back on other instances of the parameters, as another
    // machine would) decrypts the wrapping sum.
    let length = 5000;
    let (params, id) = (HeParams::new().unwrap(), round_id(21));
    let r = round(21, 2, 3);
    let (holders, commitments, shares) = key_shares(
        &params,
        id,
        &r.holder_ids,
        &r.holder_signers,
        7,
        &r.directory,
    );
    let theirs = HeParams::new().unwrap();
    let travelled: Vec<KeyShare> = shares
        .iter()
        .map(|k| KeyShare {
            from: k.from,
            share: k.share.clone(),
            signature: k.signature.clone(),
        })
        .collect();
    let key = EndorsedKey::assemble(
        &theirs,
        id,
        &commitments,
        &travelled,
        &r.holder_ids,
        &r.directory,
    )
    .unwrap();
    let inputs: Vec<Vec<u32>> = (0..3).map(|s| values(length, s)).collect();
    let cs: Vec<Contribution> = (0..3u32)
        .map(|s| {
            let signer = &r.signers[s as usize];
            encrypt(&theirs, &key, s, &inputs[s as usize], &secret(s, 8), signer).unwrap()
        })
        .collect();
    let list = list_of(&cs.iter().map(|c| &c.commitment).collect::<Vec<_>>());
    let coordinator = HeParams::new().unwrap();
    let mut sum = VerifiedSum::new(&coordinator, &key, length, list.clone(), &r.directory).unwrap();
    for c in cs {
        let signer = &r.signers[c.commitment.from as usize];
        let bytes = c.ciphertext_bytes();
        let commitment = c.commitment.clone();
        let revealed = c.reveal(&id, &list, signer).unwrap();
        let read = Contribution::from_wire(&coordinator, commitment, &bytes).unwrap();
        let read = Reveal {
            contribution: read,
            list_signature: revealed.list_signature,
        };
        sum.absorb(&read, &r.directory).unwrap();
    }
    let answers: Vec<_> = holders
        .into_iter()
        .zip(&r.holder_signers)
        .map(|(h, s)| {
            let a = h.answer(&sum, 2, s).unwrap();
            tessera_he::Answer::from_wire(
                &coordinator,
                a.from,
                a.sum_digest,
                &a.share_bytes(),
                a.signature,
            )
            .unwrap()
        })
        .collect();
    let summed = combine(
        &id,
        answers,
        &r.holder_ids,
        &coordinator,
        sum.ciphertexts(),
        length,
        &r.directory,
    )
    .unwrap();
    assert_eq!(summed, wrapping_sum(&inputs));

    // Hostile bytes: refused with a reason, never a panic.
    let made = contribute(&r, 0, 10);
    let good = made.ciphertext_bytes().remove(0);
    assert_eq!(good.len(), tessera_he::CIPHERTEXT_BYTES);
    // The encoding reads back to the ciphertext fhe.rs's own reads back to.
    let ours = tessera_he::ciphertext_from_bytes(&r.params, &good).unwrap();
    let fhe_read = <Ciphertext as fhe_traits::DeserializeParametrized>::from_bytes(
        &made.ciphertexts()[0].to_bytes(),
        r.params.bfv(),
    )
    .unwrap();
    // (Their polynomials: fhe.rs's equality also compares the flags of
    // variable-time arithmetic, which each maker and reader sets its way.)
    let coefficients = |ct: &Ciphertext| {
        ct.iter()
            .map(|p| p.coefficients().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(coefficients(&ours), coefficients(&fhe_read));
    assert_eq!(coefficients(&ours), coefficients(&made.ciphertexts()[0]));
    let mut unreduced = good.clone();
    unreduced[..8].fill(0xff);
    let mut longer = good.clone();
    longer.push(0);
    let cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0xff; 64],
        good[..good.len() / 2].to_vec(),
        vec![0u8; 200_000],
        vec![0xff; tessera_he::CIPHERTEXT_BYTES],
        unreduced,
        longer,
        // fhe.rs's own encoding of the same ciphertext.
        made.ciphertexts()[0].to_bytes(),
    ];
    let why: Vec<String> = cases
        .iter()
        .map(|bad| refused(tessera_he::ciphertext_from_bytes(&r.params, bad)))
        .collect();
    assert!(why[4].contains("canonical encoding") && why[5].contains("canonical encoding"));
    assert!(why[7].contains("63488"), "{}", why[7]);
    // Flipped bits: another ciphertext whose one encoding they are (a
    // coefficient past its modulus, refused above, is about one in 2^46
    // here).
    for i in 0..400usize {
        let mut b = good.clone();
        let at = (i * 7919) % b.len();
        b[at] ^= 1 << (i % 8);
        match tessera_he::ciphertext_from_bytes(&r.params, &b) {
            Err(HeError::Refused(_)) => {}
            Err(e) => panic!("not a refusal: {e}"),
            Ok(ct) => assert_eq!(tessera_he::ciphertext_to_bytes(&ct), b),
        }
    }
}

#[test]
fn contributions_made_on_another_instance_of_the_parameters_are_summed() {
    // A sum on this instance adds its own contributions as they are and
    // rebuilds another instance's (fhe.rs panics adding across instances).
    let length = 5000;
    let r = round(23, 2, 3);
    let inputs: Vec<Vec<u32>> = (0..3).map(|s| values(length, s)).collect();
    let mut cs: Vec<Contribution> = (0..3u32)
        .map(|s| contribute_values(&r, s, &inputs[s as usize]))
        .collect();
    // Site 1's as read on another machine's instance.
    let elsewhere = HeParams::new().unwrap();
    let (commitment, bytes) = (cs[1].commitment.clone(), cs[1].ciphertext_bytes());
    cs[1] = Contribution::from_wire(&elsewhere, commitment, &bytes).unwrap();
    let sum = honest_sum(&r, cs, length);
    assert_eq!(decrypt(r, &sum, 3, length).unwrap(), wrapping_sum(&inputs));
}

#[test]
fn the_shared_parameters_are_one_instance() {
    let (a, b) = (HeParams::shared().unwrap(), HeParams::shared().unwrap());
    assert!(std::sync::Arc::ptr_eq(a.bfv(), b.bfv()));
    // A fresh instance is another (messages are rebuilt on the reader's).
    assert!(!std::sync::Arc::ptr_eq(
        a.bfv(),
        HeParams::new().unwrap().bfv()
    ));
}

/// The bytes a contribution was hashed from where it was made are the bytes
/// it sends, taken once (a second take serialises again, the same), and
/// they read back to its commitment's digest.
#[test]
fn the_bytes_a_contribution_sends_are_the_bytes_it_committed_to() {
    let r = round(9, 2, 1);
    let mut c = contribute(&r, 0, DEGREE + 3);
    let serialised = c.ciphertext_bytes();
    assert_eq!(c.take_ciphertext_bytes(), serialised);
    assert_eq!(c.take_ciphertext_bytes(), serialised);
    let read = Contribution::from_wire(&r.params, c.commitment.clone(), &serialised).unwrap();
    assert_eq!(
        Contribution::digest_of(read.ciphertexts()).0,
        c.commitment.digest
    );
}
