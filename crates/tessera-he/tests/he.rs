//! Multiparty-BFV aggregation against an independent computation (the
//! wrapping sum of the plain values) and against a coordinator, alone or
//! with a site, that tries to have less than a sum decrypted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fhe::bfv::Ciphertext;
use fhe::mbfv::AggregateIter;
use fhe_traits::{FheDecoder, Serialize};
use tessera_he::{
    Commitment, CommitmentList, Contribution, DEGREE, EndorsedKey, HeError, HeParams, KeyHolder,
    RoundId, VerifiedSum, combine, encrypt, joint_key,
};
use tessera_secagg::{Ed25519Directory, Ed25519Signer, Signer};

/// Key holders' ids start here (sites are 0, 1, ...).
const HOLDER: u32 = 1000;

/// A distinct 32-byte secret for each party and use.
fn secret(party: u32, tag: u8) -> [u8; 32] {
    let mut s = [tag; 32];
    s[..4].copy_from_slice(&party.to_le_bytes());
    s
}

fn round_id(number: u32) -> RoundId {
    RoundId {
        round: number,
        seed: secret(number, 99),
    }
}

struct Round {
    params: HeParams,
    id: RoundId,
    holders: Vec<KeyHolder>,
    holder_ids: Vec<u32>,
    holder_signers: Vec<Ed25519Signer>,
    key: EndorsedKey,
    signers: Vec<Ed25519Signer>,
    directory: Ed25519Directory,
}

fn round(number: u32, holders: u32, sites: u32) -> Round {
    let params = HeParams::new().unwrap();
    let id = round_id(number);
    let signers: Vec<Ed25519Signer> = (0..sites)
        .map(|i| Ed25519Signer::from_secret(secret(i, 1)))
        .collect();
    let holder_ids: Vec<u32> = (0..holders).map(|i| HOLDER + i).collect();
    let holder_signers: Vec<Ed25519Signer> = holder_ids
        .iter()
        .map(|&h| Ed25519Signer::from_secret(secret(h, 1)))
        .collect();
    let mut directory = Ed25519Directory::new();
    for (i, s) in signers.iter().enumerate() {
        directory.insert(i as u32, s.public()).unwrap();
    }
    for (&h, s) in holder_ids.iter().zip(&holder_signers) {
        directory.insert(h, s.public()).unwrap();
    }
    let (holders, shares): (Vec<_>, Vec<_>) = holder_ids
        .iter()
        .map(|&h| KeyHolder::new(&params, h, id, secret(h, 3)).unwrap())
        .unzip();
    let key = joint_key(shares).unwrap();
    let endorsements: Vec<_> = holders
        .iter()
        .zip(&holder_signers)
        .map(|(h, s)| h.endorse(&key, s).unwrap())
        .collect();
    let key = EndorsedKey::check(id, key, &endorsements, &holder_ids, &directory).unwrap();
    Round {
        params,
        id,
        holders,
        holder_ids,
        holder_signers,
        key,
        signers,
        directory,
    }
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

fn contribute(r: &Round, site: u32, values: &[u32]) -> Contribution {
    encrypt(
        &r.params,
        &r.key,
        site,
        values,
        &secret(site, 2),
        &r.signers[site as usize],
    )
    .unwrap()
}

/// The honest protocol: the list closed, every contributor signs it, the
/// key holders sum what it lists.
fn honest_sum(r: &Round, contributions: &[Contribution], length: usize) -> VerifiedSum {
    let list =
        CommitmentList::new(contributions.iter().map(|c| c.commitment.clone()).collect()).unwrap();
    let mut sum = VerifiedSum::new(&r.params, &r.key, length, list.clone(), &r.directory).unwrap();
    for c in contributions {
        let signature = c
            .sign_list(&r.id, &list, &r.signers[c.commitment.from as usize])
            .unwrap();
        sum.absorb(c, &signature, &r.directory).unwrap();
    }
    sum
}

/// Every key holder answers; the answers combined.
fn decrypt(r: Round, sum: &VerifiedSum, min: usize, length: usize) -> Result<Vec<u32>, HeError> {
    let answers = r
        .holders
        .into_iter()
        .zip(&r.holder_signers)
        .map(|(h, s)| h.answer(sum, min, s))
        .collect::<Result<Vec<_>, _>>()?;
    combine(
        &r.id,
        answers,
        &r.holder_ids,
        &sum.digest(),
        length,
        &r.directory,
    )
}

fn refused(e: Result<impl Sized, HeError>) -> String {
    match e {
        Err(HeError::Refused(why)) => why,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a result"),
    }
}

fn wrapping_sum(vectors: &[Vec<u32>]) -> Vec<u32> {
    let mut out = vec![0u32; vectors[0].len()];
    for v in vectors {
        for (o, x) in out.iter_mut().zip(v) {
            *o = o.wrapping_add(*x);
        }
    }
    out
}

#[test]
fn the_key_holders_decrypt_the_sum_modulo_2_32() {
    // Two ciphertexts and a partial third; five sites, three key holders.
    let length = 2 * DEGREE + 123;
    let r = round(3, 3, 5);
    let inputs: Vec<Vec<u32>> = (0..5).map(|s| values(length, s)).collect();
    let contributions: Vec<_> = (0..5)
        .map(|s| contribute(&r, s, &inputs[s as usize]))
        .collect();
    let sum = honest_sum(&r, &contributions, length);
    assert_eq!(sum.contributors().len(), 5);
    assert_eq!(decrypt(r, &sum, 5, length).unwrap(), wrapping_sum(&inputs));
}

#[test]
fn a_colluding_site_cannot_cancel_the_others_ciphertexts() {
    let length = 300;
    let r = round(10, 2, 3);
    let (target, honest, colluder) = (0u32, 1u32, 2u32);
    let t = contribute(&r, target, &values(length, target));
    let h = contribute(&r, honest, &values(length, honest));
    // Having seen the honest site's ciphertexts, the colluder sends their
    // negation: the three "sum" to the target's alone.
    let crafted: Vec<Ciphertext> = h
        .ciphertexts
        .iter()
        .map(|ct| Ciphertext::new(vec![-&ct[0], -&ct[1]], r.params.bfv()).unwrap())
        .collect();
    let (digest, wire_bytes) = Contribution::digest_of(&crafted);
    let mut commitment = Commitment {
        from: colluder,
        length,
        digest,
        signature: Vec::new(),
    };
    // The colluder signs what a commitment signs (it holds its own key).
    let honest_commitment = contribute(&r, colluder, &values(length, colluder)).commitment;
    assert_ne!(honest_commitment.digest, digest);
    commitment.signature = sign_commitment(&r, &commitment);
    let crafted = Contribution {
        commitment,
        ciphertexts: crafted,
        wire_bytes,
    };

    // The control: were the honest sites to sign a list that includes the
    // crafted commitment (had they revealed before the list closed), the
    // key holders would decrypt the target's input exactly.
    let all = [t, h, crafted];
    let sum = honest_sum(&r, &all, length);
    let [t, h, crafted] = all;
    assert_eq!(
        decrypt(round(10, 2, 3), &sum, 2, length).unwrap(),
        values(length, target),
        "the control: the attack works without commitments"
    );

    // The protocol: the honest sites signed the list of their two
    // commitments before revealing; the crafted one came later.
    let before = CommitmentList::new(vec![t.commitment.clone(), h.commitment.clone()]).unwrap();
    let signatures: Vec<Vec<u8>> = [&t, &h]
        .iter()
        .map(|c| {
            c.sign_list(&r.id, &before, &r.signers[c.commitment.from as usize])
                .unwrap()
        })
        .collect();
    // Summing the list they signed leaves the crafted contribution out...
    let mut sum =
        VerifiedSum::new(&r.params, &r.key, length, before.clone(), &r.directory).unwrap();
    sum.absorb(&t, &signatures[0], &r.directory).unwrap();
    sum.absorb(&h, &signatures[1], &r.directory).unwrap();
    let why = refused(sum.absorb(&crafted, &signatures[0], &r.directory));
    assert!(why.contains("not in the round's list"), "{why}");
    // ...and a list with it is not the one the honest sites signed.
    let after = CommitmentList::new(vec![
        t.commitment.clone(),
        h.commitment.clone(),
        crafted.commitment.clone(),
    ])
    .unwrap();
    let mut sum = VerifiedSum::new(&r.params, &r.key, length, after, &r.directory).unwrap();
    let why = refused(sum.absorb(&t, &signatures[0], &r.directory));
    assert!(why.contains("did not sign the round's list"), "{why}");
    // A site shown a list without its own commitment signs nothing.
    let without = CommitmentList::new(vec![h.commitment.clone()]).unwrap();
    let why = refused(t.sign_list(&r.id, &without, &r.signers[0]));
    assert!(why.contains("not in the list"), "{why}");
}

/// What the colluder (or any site) signs for a commitment, made the way
/// `encrypt` makes it: re-signed by the site's own key over a commitment
/// with the same fields, by encrypting nothing new.
fn sign_commitment(r: &Round, c: &Commitment) -> Vec<u8> {
    // The message layout is the library's; reproduce it through a genuine
    // commitment of the same site and round with these fields: sign the
    // bytes `encrypt` signs.
    let mut m = b"tessera-he commitment v1".to_vec();
    m.extend_from_slice(&r.id.seed);
    m.extend_from_slice(&r.id.round.to_le_bytes());
    for part in [
        &c.from.to_le_bytes()[..],
        &r.key.digest()[..],
        &(c.length as u64).to_le_bytes()[..],
        &c.digest[..],
    ] {
        m.extend_from_slice(&(part.len() as u64).to_le_bytes());
        m.extend_from_slice(part);
    }
    r.signers[c.from as usize].sign(&m).unwrap()
}

#[test]
fn a_commitment_signed_as_the_library_signs_is_accepted() {
    // `sign_commitment` (used by the collusion test) signs what `encrypt`
    // signs: re-signing an honest commitment gives a valid one.
    let r = round(11, 1, 2);
    let mut c = contribute(&r, 0, &values(10, 0));
    c.commitment.signature = sign_commitment(&r, &c.commitment);
    let other = contribute(&r, 1, &values(10, 1));
    let sum = honest_sum(&r, &[c, other], 10);
    assert_eq!(sum.contributors().len(), 2);
}

#[test]
fn the_coordinator_cannot_have_one_contribution_decrypted() {
    let length = 100;
    let r = round(4, 3, 3);
    let target = contribute(&r, 0, &values(length, 0));
    let other = contribute(&r, 1, &values(length, 1));

    // A "sum" of the target alone: every key holder refuses it.
    let alone = honest_sum(&r, std::slice::from_ref(&target), length);
    let mut r = r;
    let h = r.holders.remove(0);
    let why = refused(h.answer(&alone, 2, &r.holder_signers[0]));
    assert!(why.contains("at least 2"), "{why}");

    // Beside an encryption of zero the coordinator made itself (it holds the
    // joint key) under site 1's id: the commitment's signature fails.
    let own = Ed25519Signer::from_secret([222; 32]);
    let forged = encrypt(&r.params, &r.key, 1, &vec![0; length], &[9; 32], &own).unwrap();
    let list =
        CommitmentList::new(vec![target.commitment.clone(), forged.commitment.clone()]).unwrap();
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
    let list =
        CommitmentList::new(vec![target.commitment.clone(), other.commitment.clone()]).unwrap();
    let mut sum = VerifiedSum::new(&r.params, &r.key, length, list.clone(), &r.directory).unwrap();
    let swapped = Contribution {
        commitment: other.commitment.clone(),
        ciphertexts: forged.ciphertexts,
        wire_bytes: forged.wire_bytes,
    };
    let signature = other.sign_list(&r.id, &list, &r.signers[1]).unwrap();
    let why = refused(sum.absorb(&swapped, &signature, &r.directory));
    assert!(why.contains("do not match its commitment"), "{why}");
    // With only the target in, a key holder refuses: site 1 is missing.
    let signature0 = target.sign_list(&r.id, &list, &r.signers[0]).unwrap();
    sum.absorb(&target, &signature0, &r.directory).unwrap();
    let why = refused(sum.absorb(&target, &signature0, &r.directory));
    assert!(why.contains("second contribution"), "{why}");
    let h = r.holders.remove(0);
    let why = refused(h.answer(&sum, 2, &r.holder_signers[1]));
    assert!(why.contains("1 listed contribution(s) missing"), "{why}");
}

#[test]
fn a_substituted_key_or_another_rounds_messages_are_refused() {
    let old = round(5, 2, 2);
    let new = round(6, 2, 2);
    // The coordinator hands the sites a key of its own making.
    let params = HeParams::new().unwrap();
    let (_, share) = KeyHolder::new(&params, 7, new.id, [7; 32]).unwrap();
    let own = joint_key(vec![share]).unwrap();
    let why = refused(EndorsedKey::check(
        new.id,
        own,
        &[],
        &new.holder_ids,
        &new.directory,
    ));
    assert!(why.contains("did not endorse"), "{why}");
    // Round 5's endorsements of round 5's key do not pass for round 6.
    let (holders, shares): (Vec<_>, Vec<_>) = new
        .holder_ids
        .iter()
        .map(|&h| KeyHolder::new(&params, h, old.id, secret(h, 3)).unwrap())
        .unzip();
    let key5 = joint_key(shares).unwrap();
    let endorsements: Vec<_> = holders
        .iter()
        .zip(&new.holder_signers)
        .map(|(h, s)| h.endorse(&key5, s).unwrap())
        .collect();
    let why = refused(EndorsedKey::check(
        new.id,
        key5,
        &endorsements,
        &new.holder_ids,
        &new.directory,
    ));
    assert!(why.contains("endorsement"), "{why}");
    // A round-5 commitment in a round-6 list.
    let replayed = contribute(&old, 1, &values(10, 1));
    let list = CommitmentList::new(vec![
        contribute(&new, 0, &values(10, 0)).commitment,
        replayed.commitment,
    ])
    .unwrap();
    let why = refused(VerifiedSum::new(
        &new.params,
        &new.key,
        10,
        list,
        &new.directory,
    ));
    assert!(why.contains("participant 1's commitment"), "{why}");
    // A round-5 key holder does not answer for a round-6 sum.
    let contributions = [
        contribute(&new, 0, &values(10, 0)),
        contribute(&new, 1, &values(10, 1)),
    ];
    let sum = honest_sum(&new, &contributions, 10);
    let h = old.holders.into_iter().next().unwrap();
    let why = refused(h.answer(&sum, 2, &old.holder_signers[0]));
    assert!(why.contains("round 6"), "{why}");
}

#[test]
fn key_holders_shown_different_sums_are_caught_and_all_are_needed() {
    let length = 300;
    let r = round(7, 3, 3);
    let inputs: Vec<Vec<u32>> = (0..3).map(|s| values(length, s)).collect();
    let cs: Vec<_> = (0..3)
        .map(|s| contribute(&r, s, &inputs[s as usize]))
        .collect();
    let all = honest_sum(&r, &cs, length);
    let two = honest_sum(&r, &cs[..2], length);
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
        &all.digest(),
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
    let all = honest_sum(&r, &cs, length);
    let mut answers: Vec<_> = r
        .holders
        .into_iter()
        .zip(&r.holder_signers)
        .map(|(h, s)| h.answer(&all, 2, s).unwrap())
        .collect();
    answers.pop();
    let first_shares: Vec<_> = answers.iter_mut().map(|a| a.shares.remove(0)).collect();
    let pt: fhe::bfv::Plaintext = first_shares.into_iter().aggregate().unwrap();
    let partial = Vec::<u64>::try_decode(&pt, fhe::bfv::Encoding::poly()).unwrap();
    let expected = wrapping_sum(&inputs);
    let agree = partial
        .iter()
        .zip(&expected)
        .filter(|(a, b)| **a as u32 == **b)
        .count();
    assert!(
        agree <= 2,
        "{agree} of {length} values decrypted without a key holder"
    );
    let r = round(7, 3, 3);
    let all = honest_sum(&r, &cs, length);
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
        &all.digest(),
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
    let a = contribute(&r5, 0, &v);
    let b = contribute(&r6, 0, &v);
    let c = contribute(&r5, 0, &w);
    let again = contribute(&r5, 0, &v);
    // The same values in another round, and other values in the same round:
    // the mask polynomial c1 = p1 u + e2 differs (a reused u would give the
    // values' difference away).
    assert_ne!(a.ciphertexts[0][1], b.ciphertexts[0][1]);
    assert_ne!(a.ciphertexts[0][1], c.ciphertexts[0][1]);
    // The same values under the same key: the same ciphertexts (nothing new
    // to learn).
    assert_eq!(a.commitment.digest, again.commitment.digest);
}

#[test]
fn malformed_ciphertexts_are_refused_not_a_panic() {
    let length = 10;
    let r = round(12, 1, 2);
    let good = contribute(&r, 0, &values(length, 0));
    let mut low = contribute(&r, 1, &values(length, 1));
    low.ciphertexts[0].switch_down().unwrap();
    let three = Contribution {
        commitment: low.commitment.clone(),
        ciphertexts: vec![
            Ciphertext::new(
                vec![
                    good.ciphertexts[0][0].clone(),
                    good.ciphertexts[0][1].clone(),
                    good.ciphertexts[0][1].clone(),
                ],
                r.params.bfv(),
            )
            .unwrap(),
        ],
        wire_bytes: 0,
    };
    for (bad, reason) in [(low, "another level"), (three, "3 polynomials")] {
        // Committed honestly to its malformed ciphertexts.
        let mut bad = bad;
        bad.commitment.digest = Contribution::digest_of(&bad.ciphertexts).0;
        bad.commitment.signature = sign_commitment(&r, &bad.commitment);
        let list =
            CommitmentList::new(vec![good.commitment.clone(), bad.commitment.clone()]).unwrap();
        let mut sum =
            VerifiedSum::new(&r.params, &r.key, length, list.clone(), &r.directory).unwrap();
        let signature = bad.sign_list(&r.id, &list, &r.signers[1]).unwrap();
        let why = refused(sum.absorb(&bad, &signature, &r.directory));
        assert!(why.contains(reason), "{why}");
        // The sum goes on.
        let signature = good.sign_list(&r.id, &list, &r.signers[0]).unwrap();
        sum.absorb(&good, &signature, &r.directory).unwrap();
    }
    // Ciphertexts made under another instance of the same parameters are
    // the same ciphertexts.
    let other = HeParams::new().unwrap();
    let bytes = good.ciphertexts[0].to_bytes();
    let _same: Ciphertext =
        fhe_traits::DeserializeParametrized::from_bytes(&bytes, other.bfv()).unwrap();
}

#[test]
fn a_sum_of_many_contributions_still_decrypts() {
    // The noise grows with each ciphertext added: 200 sites of values at the
    // top of the range decrypt exactly.
    let length = 64;
    let sites = 200;
    let r = round(8, 2, sites);
    let v = vec![u32::MAX; length];
    let cs: Vec<_> = (0..sites).map(|s| contribute(&r, s, &v)).collect();
    let sum = honest_sum(&r, &cs, length);
    let expected = u32::MAX.wrapping_mul(sites);
    assert_eq!(decrypt(r, &sum, 2, length).unwrap(), vec![expected; length]);
}

#[test]
fn a_ciphertext_is_two_polynomials_at_36_bits_a_coefficient() {
    let r = round(9, 1, 1);
    let c = contribute(&r, 0, &values(DEGREE, 0));
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
