//! A key holder's view of a round (1.33 `he-half-fetch`): each
//! contribution's second polynomials and the digests of its first ones,
//! checked against the contributors' commitments as whole contributions
//! are. The adversary is the coordinator that relays them: other
//! polynomials or digests than those committed to are refused, and what a
//! key holder answers depends on nothing it did not fetch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use tessera_he::{Contribution, DEGREE, KeyHolder, POLYNOMIAL_BYTES, Reveal, VerifiedSum, combine};

/// A contribution as the coordinator relays it to a key holder: its first
/// polynomials' digests and its second polynomials' bytes.
type Halves = (Vec<Vec<u8>>, Vec<Vec<u8>>);

fn halves(c: &Contribution) -> Halves {
    let digests = c.first_digests().iter().map(|d| d.to_vec()).collect();
    let seconds = (c.ciphertext_bytes().into_iter())
        .map(|b| b[POLYNOMIAL_BYTES..].to_vec())
        .collect();
    (digests, seconds)
}

/// A round's contributions summed whole (as the coordinator sums them) and
/// as a key holder fetches them, with each contributor's halves and list
/// signature.
struct Sums {
    whole: VerifiedSum,
    half: VerifiedSum,
    relayed: Vec<(Contribution, Halves, Vec<u8>)>,
}

fn sums(r: &Round, sites: u32, length: usize) -> Sums {
    let cs: Vec<Contribution> = (0..sites).map(|s| contribute(r, s, length)).collect();
    let list = list_of(&cs.iter().map(|c| &c.commitment).collect::<Vec<_>>());
    let empty = || VerifiedSum::new(&r.params, &r.key, length, list.clone(), &r.directory).unwrap();
    let (mut whole, mut half) = (empty(), empty());
    let mut relayed = Vec::new();
    for c in cs {
        let relay = halves(&c);
        let commitment = c.commitment.clone();
        let revealed = reveal(r, c, &list);
        let fetched =
            Contribution::for_key_holder(&r.params, commitment.clone(), &relay.0, &relay.1)
                .unwrap();
        let signature = revealed.list_signature.clone();
        half.absorb(
            &Reveal {
                contribution: fetched,
                list_signature: signature.clone(),
            },
            &r.directory,
        )
        .unwrap();
        whole.absorb(&revealed, &r.directory).unwrap();
        let again = Contribution::for_key_holder(&r.params, commitment, &relay.0, &relay.1);
        relayed.push((again.unwrap(), relay, signature));
    }
    Sums {
        whole,
        half,
        relayed,
    }
}

#[test]
fn key_holders_fetching_second_polynomials_alone_decrypt_the_whole_sum() {
    let length = 2 * DEGREE + 5;
    let r = round(1, 3, 4);
    let s = sums(&r, 4, length);
    // One digest names the sum at the coordinator and at a key holder.
    assert_eq!(s.half.digest(), s.whole.digest());
    let answers = (r.holders.into_iter())
        .zip(&r.holder_signers)
        .map(|(h, signer)| h.answer(&s.half, 2, signer).unwrap())
        .collect();
    let summed = combine(
        &r.id,
        answers,
        &r.holder_ids,
        &r.params,
        s.whole.ciphertexts(),
        length,
        &r.directory,
    )
    .unwrap();
    let inputs: Vec<Vec<u32>> = (0..4).map(|site| values(length, site)).collect();
    assert_eq!(summed, wrapping_sum(&inputs));
}

/// The attack: a coordinator that relays a key holder another first
/// polynomial's digest or another second polynomial than the contributor
/// committed to (to have it decrypt something else than the list's sum),
/// or malformed pieces. Each is refused, naming why; the honest relay is
/// taken.
#[test]
fn a_coordinator_relaying_other_polynomials_or_digests_is_refused() {
    let length = DEGREE + 1;
    let r = round(2, 2, 3);
    let s = sums(&r, 3, length);
    let (mine, (digests, seconds), signature) = &s.relayed[0];
    let list = list_of(
        &s.relayed
            .iter()
            .map(|(c, ..)| &c.commitment)
            .collect::<Vec<_>>(),
    );
    let absorb = |digests: &[Vec<u8>], seconds: &[Vec<u8>]| {
        let mut sum =
            VerifiedSum::new(&r.params, &r.key, length, list.clone(), &r.directory).unwrap();
        let fetched =
            Contribution::for_key_holder(&r.params, mine.commitment.clone(), digests, seconds)?;
        sum.absorb(
            &Reveal {
                contribution: fetched,
                list_signature: signature.clone(),
            },
            &r.directory,
        )
    };
    absorb(digests, seconds).unwrap();
    let mut other = digests.clone();
    other[1][7] ^= 2;
    assert!(refused(absorb(&other, seconds)).contains("do not match its commitment"));
    let mut other = seconds.clone();
    other[0][100] ^= 2;
    assert!(refused(absorb(digests, &other)).contains("do not match its commitment"));
    // Another contributor's halves under this one's commitment.
    let (_, (theirs_d, theirs_s), _) = &s.relayed[1];
    assert!(refused(absorb(theirs_d, theirs_s)).contains("do not match its commitment"));
    // Malformed: a whole ciphertext where a second polynomial is due, a
    // short digest, a digest missing.
    let mut whole = seconds.clone();
    whole[0] = vec![0; 2 * POLYNOMIAL_BYTES];
    assert!(refused(absorb(digests, &whole)).contains("a polynomial of 63488 bytes"));
    let mut short = digests.clone();
    short[0].pop();
    assert!(refused(absorb(&short, seconds)).contains("digest of 31 bytes, not 32"));
    let why = refused(absorb(&digests[1..], seconds));
    assert!(
        why.contains("1 first polynomials' digests for 2 second"),
        "{why}"
    );
}

/// What a key holder gives depends on nothing it did not fetch: a twin of
/// its round key answers the whole sum with the very shares, digest and
/// signature it gives for the sum of second polynomials.
#[test]
fn a_decryption_share_depends_on_the_second_polynomials_alone() {
    let length = 3 * DEGREE;
    let mut r = round(3, 2, 2);
    let s = sums(&r, 2, length);
    let (id, signer) = (r.holder_ids[0], &r.holder_signers[0]);
    let twin = KeyHolder::new(&r.params, id, r.id, secret(id, 3), signer)
        .unwrap()
        .0;
    let whole = twin.answer(&s.whole, 2, signer).unwrap();
    let half = r.holders.remove(0).answer(&s.half, 2, signer).unwrap();
    assert_eq!(whole.sum_digest, half.sum_digest);
    assert_eq!(whole.signature, half.signature);
    assert_eq!(whole.share_bytes(), half.share_bytes());
    assert!(
        whole
            .share_bytes()
            .iter()
            .all(|b| b.len() == POLYNOMIAL_BYTES)
    );
}
