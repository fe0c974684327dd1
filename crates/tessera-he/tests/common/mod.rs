//! What the tests share: a round's parties (key holders, sites, their
//! signers and directory), sites' values and contributions, the honest
//! protocol, and what a refusal says.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use fhe::bfv::Ciphertext;
use tessera_he::{
    Commitment, CommitmentList, Contribution, EndorsedKey, HeError, HeParams, KeyCommitment,
    KeyHolder, KeyShare, Reveal, RoundId, VerifiedSum, combine, encrypt,
};
use tessera_secagg::{Ed25519Directory, Ed25519Signer, Signer};

/// Key holders' ids start here (sites are 0, 1, ...).
pub const HOLDER: u32 = 1000;

/// A distinct 32-byte secret for each party and use.
pub fn secret(party: u32, tag: u8) -> [u8; 32] {
    let mut s = [tag; 32];
    s[..4].copy_from_slice(&party.to_le_bytes());
    s
}

pub fn round_id(number: u32) -> RoundId {
    RoundId {
        round: number,
        seed: secret(number, 99),
    }
}

pub struct Round {
    pub params: HeParams,
    pub id: RoundId,
    pub holders: Vec<KeyHolder>,
    pub holder_ids: Vec<u32>,
    pub holder_signers: Vec<Ed25519Signer>,
    pub key: EndorsedKey,
    pub signers: Vec<Ed25519Signer>,
    pub directory: Ed25519Directory,
}

pub fn round(number: u32, holders: u32, sites: u32) -> Round {
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
    let (holders, commitments, shares) =
        key_shares(&params, id, &holder_ids, &holder_signers, 3, &directory);
    let key =
        EndorsedKey::assemble(&params, id, &commitments, &shares, &holder_ids, &directory).unwrap();
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

/// Every key holder's commitment, then its share signed over them all.
pub fn key_shares(
    params: &HeParams,
    id: RoundId,
    holder_ids: &[u32],
    signers: &[Ed25519Signer],
    tag: u8,
    directory: &Ed25519Directory,
) -> (Vec<KeyHolder>, Vec<KeyCommitment>, Vec<KeyShare>) {
    let (holders, commitments): (Vec<_>, Vec<_>) = holder_ids
        .iter()
        .zip(signers)
        .map(|(&h, s)| KeyHolder::new(params, h, id, secret(h, tag), s).unwrap())
        .unzip();
    let shares = holders
        .iter()
        .zip(signers)
        .map(|(h, s)| h.share(&commitments, holder_ids, directory, s).unwrap())
        .collect();
    (holders, commitments, shares)
}

/// Site `site`'s values: spread over all of `Z_2^32`, so that sums wrap.
pub fn values(length: usize, site: u32) -> Vec<u32> {
    (0..length as u32)
        .map(|i| {
            i.wrapping_mul(2_654_435_761)
                .wrapping_add(site.wrapping_mul(40_503))
                .rotate_left(site)
        })
        .collect()
}

/// Site `site`'s contribution of its `values(length, site)`; the same
/// ciphertexts each time it is made in a round.
pub fn contribute(r: &Round, site: u32, length: usize) -> Contribution {
    contribute_values(r, site, &values(length, site))
}

pub fn contribute_values(r: &Round, site: u32, values: &[u32]) -> Contribution {
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

pub fn list_of(commitments: &[&Commitment]) -> CommitmentList {
    CommitmentList::new(commitments.iter().map(|&c| c.clone()).collect()).unwrap()
}

/// Contributor `c` reveals under `list`.
pub fn reveal(r: &Round, c: Contribution, list: &CommitmentList) -> Reveal {
    let signer = &r.signers[c.commitment.from as usize];
    c.reveal(&r.id, list, signer).unwrap()
}

/// The honest protocol: the list closed, every contributor signs it and
/// reveals, the key holders sum what it lists.
pub fn honest_sum(r: &Round, contributions: Vec<Contribution>, length: usize) -> VerifiedSum {
    let list = list_of(
        &contributions
            .iter()
            .map(|c| &c.commitment)
            .collect::<Vec<_>>(),
    );
    let mut sum = VerifiedSum::new(&r.params, &r.key, length, list.clone(), &r.directory).unwrap();
    for c in contributions {
        sum.absorb(&reveal(r, c, &list), &r.directory).unwrap();
    }
    sum
}

/// Every key holder answers; the answers combined.
pub fn decrypt(
    r: Round,
    sum: &VerifiedSum,
    min: usize,
    length: usize,
) -> Result<Vec<u32>, HeError> {
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
        &r.params,
        sum.ciphertexts(),
        length,
        &r.directory,
    )
}

pub fn refused(e: Result<impl Sized, HeError>) -> String {
    match e {
        Err(HeError::Refused(why)) => why,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a result"),
    }
}

pub fn wrapping_sum(vectors: &[Vec<u32>]) -> Vec<u32> {
    let mut out = vec![0u32; vectors[0].len()];
    for v in vectors {
        for (o, x) in out.iter_mut().zip(v) {
            *o = o.wrapping_add(*x);
        }
    }
    out
}

/// What a site signs for a commitment, as `encrypt` signs it (checked
/// against the library by `a_commitment_signed_as_the_library_signs_is_accepted`).
pub fn sign_commitment(r: &Round, c: &Commitment) -> Vec<u8> {
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

/// A contribution of site `from`'s choosing (its own signature on
/// ciphertexts it made by hand).
pub fn crafted(r: &Round, from: u32, length: usize, ciphertexts: Vec<Ciphertext>) -> Contribution {
    let (digest, _) = Contribution::digest_of(&ciphertexts);
    let mut commitment = Commitment {
        from,
        length,
        digest,
        signature: Vec::new(),
    };
    commitment.signature = sign_commitment(r, &commitment);
    Contribution::new(commitment, ciphertexts)
}
