//! Key agreement, the keys and masks derived from it, and a participant's key ring.

use std::collections::{BTreeMap, BTreeSet};

use aes_gcm::aead::KeyInit;
use aes_gcm::{Aes256Gcm, Key};
use hkdf::Hkdf;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

fn hkdf32(ikm: &[u8], round: u32, info: &str) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(&round.to_le_bytes()), ikm);
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit of 8160.
    if hk.expand(info.as_bytes(), &mut out).is_err() {
        unreachable!("HKDF output length is valid");
    }
    out
}

fn mask_stream(seed: [u8; 32]) -> ChaCha20Rng {
    ChaCha20Rng::from_seed(seed)
}

pub(crate) fn add_mask(values: &mut [u32], seed: [u8; 32], sign_plus: bool) {
    let mut rng = mask_stream(seed);
    if sign_plus {
        for v in values.iter_mut() {
            *v = v.wrapping_add(rng.next_u32());
        }
    } else {
        for v in values.iter_mut() {
            *v = v.wrapping_sub(rng.next_u32());
        }
    }
}

pub(crate) fn agree(secret: &StaticSecret, peer: &[u8; 32]) -> [u8; 32] {
    secret.diffie_hellman(&PublicKey::from(*peer)).to_bytes()
}

pub(crate) fn pairwise_seed(shared: &[u8; 32], round: u32) -> [u8; 32] {
    hkdf32(shared, round, "tessera secagg pairwise mask")
}

/// The key that encrypts shares between two participants in one session of
/// a round: from the lasting `c` agreement, the round, and both parties'
/// mask keys of this session (fresh every session), so that ciphertexts of
/// an earlier session of the same round number never decrypt again, and no
/// (key, nonce) pair repeats.
pub(crate) fn share_cipher(
    shared: &[u8; 32],
    round: u32,
    s_a: &[u8; 32],
    s_b: &[u8; 32],
) -> Aes256Gcm {
    let (low, high) = if s_a <= s_b { (s_a, s_b) } else { (s_b, s_a) };
    let hk = Hkdf::<Sha256>::new(Some(&round.to_le_bytes()), shared);
    let mut info = Vec::with_capacity(31 + 64);
    info.extend_from_slice(b"tessera secagg share encryption");
    info.extend_from_slice(low);
    info.extend_from_slice(high);
    let mut key = [0u8; 32];
    if hk.expand(&info, &mut key).is_err() {
        unreachable!("HKDF output length is valid");
    }
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key))
}

/// A participant's key pairs between rounds.
///
/// The encryption pair `c` is never revealed, so it lasts the run, and its
/// agreements with neighbours' public keys are computed once and kept (each
/// round derives its own keys from them with HKDF, salted with the round).
/// The mask pair `s` is replaced after every round, whatever happened in it:
/// a participant that survives rounds 1 and 2 reveals its self-mask seeds
/// there, and if it drops in round 3 its mask key is rebuilt; had the key
/// lasted, the server would then remove the pairwise masks of rounds 1 and 2
/// and read those inputs.
pub struct KeyRing {
    pub(crate) c_secret: StaticSecret,
    pub(crate) s_secret: StaticSecret,
    pub(crate) c_public: [u8; 32],
    pub(crate) s_public: [u8; 32],
    /// Agreements of the encryption key, by the peer's public key.
    c_agreements: BTreeMap<[u8; 32], [u8; 32]>,
    /// Agreements of the mask key, by the peer's public key.
    s_agreements: BTreeMap<[u8; 32], [u8; 32]>,
    /// Secure rounds in which this participant revealed shares: it takes
    /// part in each round number once (a second session of the same round
    /// could reveal a neighbour's other secret, or the difference of two
    /// sums over the same inputs).
    pub(crate) answered: BTreeSet<u32>,
}

impl KeyRing {
    /// Fresh key pairs from 64 bytes of secret randomness (from the operating
    /// system in deployment).
    pub fn new(c_randomness: [u8; 32], s_randomness: [u8; 32]) -> Self {
        let c_secret = StaticSecret::from(c_randomness);
        let s_secret = StaticSecret::from(s_randomness);
        Self {
            c_public: PublicKey::from(&c_secret).to_bytes(),
            s_public: PublicKey::from(&s_secret).to_bytes(),
            c_secret,
            s_secret,
            c_agreements: BTreeMap::new(),
            s_agreements: BTreeMap::new(),
            answered: BTreeSet::new(),
        }
    }

    /// Replaces the mask key pair.
    pub fn rotate_mask_key(&mut self, s_randomness: [u8; 32]) {
        self.s_secret = StaticSecret::from(s_randomness);
        self.s_public = PublicKey::from(&self.s_secret).to_bytes();
        self.s_agreements.clear();
    }

    pub(crate) fn agree_c(&mut self, peer: &[u8; 32]) -> [u8; 32] {
        let secret = &self.c_secret;
        *self
            .c_agreements
            .entry(*peer)
            .or_insert_with(|| agree(secret, peer))
    }

    pub(crate) fn agree_s(&mut self, peer: &[u8; 32]) -> [u8; 32] {
        let secret = &self.s_secret;
        *self
            .s_agreements
            .entry(*peer)
            .or_insert_with(|| agree(secret, peer))
    }
}

pub(crate) fn nonce(from: u32, to: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&from.to_le_bytes());
    n[4..8].copy_from_slice(&to.to_le_bytes());
    n
}

pub(crate) fn aad(round: u32, from: u32, to: u32) -> [u8; 12] {
    let mut a = [0u8; 12];
    a[..4].copy_from_slice(&round.to_le_bytes());
    a[4..8].copy_from_slice(&from.to_le_bytes());
    a[8..].copy_from_slice(&to.to_le_bytes());
    a
}
