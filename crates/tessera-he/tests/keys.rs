//! The round's joint key against a coordinator that substitutes, replays or
//! forges key shares, and against a rogue key holder that, colluding with
//! the coordinator, sees an honest key holder's share first and replaces
//! its own (which would give a joint key whose secret it alone knows).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tessera_he::{EndorsedKey, HeError, HeParams, KeyCommitment, KeyHolder, KeyShare, RoundId};
use tessera_secagg::{Ed25519Directory, Ed25519Signer, Signer};

const HOLDERS: [u32; 2] = [1000, 1001];

fn round_id(number: u32) -> RoundId {
    RoundId {
        round: number,
        seed: [number as u8; 32],
    }
}

fn signers() -> (Vec<Ed25519Signer>, Ed25519Directory) {
    let signers: Vec<_> = HOLDERS
        .iter()
        .map(|&h| Ed25519Signer::from_secret([h as u8; 32]))
        .collect();
    let mut directory = Ed25519Directory::new();
    for (&h, s) in HOLDERS.iter().zip(&signers) {
        directory.insert(h, s.public()).unwrap();
    }
    (signers, directory)
}

/// Each key holder's round key and commitment, from secret `tag`.
fn commit(
    params: &HeParams,
    id: RoundId,
    signers: &[Ed25519Signer],
    tag: u8,
) -> Vec<(KeyHolder, KeyCommitment)> {
    HOLDERS
        .iter()
        .zip(signers)
        .map(|(&h, s)| KeyHolder::new(params, h, id, [tag + h as u8; 32], s).unwrap())
        .collect()
}

fn refused(e: Result<impl Sized, HeError>) -> String {
    match e {
        Err(HeError::Refused(why)) => why,
        Err(e) => panic!("not a refusal: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn a_key_share_must_match_the_commitment_every_key_holder_signed_before_any_share() {
    let params = HeParams::new().unwrap();
    let id = round_id(3);
    let (signers, directory) = signers();
    let parts = commit(&params, id, &signers, 1);
    let commitments: Vec<KeyCommitment> = parts.iter().map(|(_, c)| c.clone()).collect();
    let shares: Vec<KeyShare> = parts
        .iter()
        .zip(&signers)
        .map(|((h, _), s)| h.share(&commitments, &HOLDERS, &directory, s).unwrap())
        .collect();
    EndorsedKey::assemble(&params, id, &commitments, &shares, &HOLDERS, &directory).unwrap();

    // The rogue (1001) sees the honest share and draws a new key, with a
    // new commitment it signs itself, over the list with it.
    let (rogue, rogue_commitment) =
        KeyHolder::new(&params, HOLDERS[1], id, [99; 32], &signers[1]).unwrap();
    let swapped = vec![commitments[0].clone(), rogue_commitment];
    let rogue_share = rogue
        .share(&swapped, &HOLDERS, &directory, &signers[1])
        .unwrap();
    // Under the first commitments its share does not match its own.
    let why = refused(EndorsedKey::assemble(
        &params,
        id,
        &commitments,
        &[shares[0].clone(), rogue_share.clone()],
        &HOLDERS,
        &directory,
    ));
    assert!(
        why.contains("key holder 1001's key share does not match its commitment"),
        "{why}"
    );
    // Under the swapped commitments, the honest key holder's share was
    // signed over another list.
    let why = refused(EndorsedKey::assemble(
        &params,
        id,
        &swapped,
        &[shares[0].clone(), rogue_share],
        &HOLDERS,
        &directory,
    ));
    assert!(why.contains("key holder 1000's key share"), "{why}");

    // An honest key holder shares only under every key holder's signed
    // commitment, its own as it made it.
    let (honest, _) = &parts[0];
    let why = refused(honest.share(&commitments[1..], &HOLDERS, &directory, &signers[0]));
    assert!(
        why.contains("no key commitment from key holder 1000"),
        "{why}"
    );
    let mut altered = commitments.clone();
    altered[0].digest[0] ^= 1;
    let why = refused(honest.share(&altered, &HOLDERS, &directory, &signers[0]));
    assert!(why.contains("key holder 1000's key commitment"), "{why}");
    // Shared once under a list, asked again under another (the colluder's
    // new commitment): refused; the same list again is signed again.
    let (fresh, _) = KeyHolder::new(&params, HOLDERS[1], id, [42; 32], &signers[1]).unwrap();
    let (rogue_again, rogue_commitment) =
        KeyHolder::new(&params, HOLDERS[1], id, [43; 32], &signers[1]).unwrap();
    drop((fresh, rogue_again));
    let (first, c_first) = KeyHolder::new(&params, HOLDERS[0], id, [44; 32], &signers[0]).unwrap();
    let listed = vec![c_first.clone(), commitments[1].clone()];
    first
        .share(&listed, &HOLDERS, &directory, &signers[0])
        .unwrap();
    let relisted = vec![c_first, rogue_commitment];
    let why = refused(first.share(&relisted, &HOLDERS, &directory, &signers[0]));
    assert!(why.contains("under another list of commitments"), "{why}");
    first
        .share(&listed, &HOLDERS, &directory, &signers[0])
        .unwrap();
    let other = commit(&params, id, &signers, 7);
    let theirs = vec![other[0].1.clone(), commitments[1].clone()];
    let why = refused(honest.share(&theirs, &HOLDERS, &directory, &signers[0]));
    assert!(why.contains("not in the list as it made it"), "{why}");
}

#[test]
fn substituted_replayed_and_forged_key_shares_are_refused() {
    let params = HeParams::new().unwrap();
    let (signers, directory) = signers();
    let (old, new) = (round_id(5), round_id(6));
    // The coordinator's own shares and commitments: not signed as theirs.
    let own: Vec<Ed25519Signer> = (0..2)
        .map(|_| Ed25519Signer::from_secret([7; 32]))
        .collect();
    let fakes = commit(&params, new, &own, 3);
    let commitments: Vec<_> = fakes.iter().map(|(_, c)| c.clone()).collect();
    let why = refused(EndorsedKey::assemble(
        &params,
        new,
        &commitments,
        &[],
        &HOLDERS,
        &directory,
    ));
    assert!(why.contains("key holder 1000's key commitment"), "{why}");
    // Round 5's genuine commitments and shares do not pass for round 6.
    let parts = commit(&params, old, &signers, 1);
    let commitments: Vec<_> = parts.iter().map(|(_, c)| c.clone()).collect();
    let shares: Vec<_> = parts
        .iter()
        .zip(&signers)
        .map(|((h, _), s)| h.share(&commitments, &HOLDERS, &directory, s).unwrap())
        .collect();
    let why = refused(EndorsedKey::assemble(
        &params,
        new,
        &commitments,
        &shares,
        &HOLDERS,
        &directory,
    ));
    assert!(why.contains("key holder 1000's key commitment"), "{why}");
    // A missing key holder's share or commitment, or none at all.
    let why = refused(EndorsedKey::assemble(
        &params,
        old,
        &commitments,
        &shares[1..],
        &HOLDERS,
        &directory,
    ));
    assert!(why.contains("no key share from key holder 1000"), "{why}");
    let why = refused(EndorsedKey::assemble(
        &params,
        old,
        &[],
        &[],
        &HOLDERS,
        &directory,
    ));
    assert!(
        why.contains("no key commitment from key holder 1000"),
        "{why}"
    );
    let why = refused(EndorsedKey::assemble(
        &params,
        old,
        &[],
        &[],
        &[],
        &directory,
    ));
    assert!(why.contains("at least one key holder"), "{why}");
    // Bytes that are not a key, committed and signed: refused, no panic.
    let junk = vec![0x0a, 0x03, 1, 2, 3];
    let mut forged = KeyCommitment {
        from: HOLDERS[0],
        digest: sha2_digest(&junk),
        signature: Vec::new(),
    };
    forged.signature = signers[0].sign(&commitment_message(&old, &forged)).unwrap();
    let list = vec![forged, commitments[1].clone()];
    let forged_share = KeyShare {
        from: HOLDERS[0],
        share: junk,
        signature: Vec::new(),
    };
    let why = refused(EndorsedKey::assemble(
        &params,
        old,
        &list,
        &[forged_share, shares[1].clone()],
        &HOLDERS,
        &directory,
    ));
    assert!(why.contains("key holder 1000's key share"), "{why}");
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// What a key holder signs to commit (as `tessera_he` writes it).
fn commitment_message(round: &RoundId, c: &KeyCommitment) -> Vec<u8> {
    let mut m = b"tessera-he key commitment v1".to_vec();
    m.extend_from_slice(&round.seed);
    m.extend_from_slice(&round.round.to_le_bytes());
    for part in [&c.from.to_le_bytes()[..], &c.digest[..]] {
        m.extend_from_slice(&(part.len() as u64).to_le_bytes());
        m.extend_from_slice(part);
    }
    m
}
