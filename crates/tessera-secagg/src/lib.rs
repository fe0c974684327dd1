//! Secure aggregation in the SecAgg+ family (Bell et al. 2020): the server
//! learns the sum of the surviving participants' vectors and nothing else,
//! and the sum is recovered exactly however many participants drop out, at
//! any stage, as long as every participant keeps `threshold` of its
//! neighbours.
//!
//! One round, with the server relaying every message:
//!
//! 1. **Advertise keys.** Each participant draws two X25519 key pairs: `c`
//!    (to encrypt shares) and `s` (to agree pairwise masks).
//! 2. **Share keys.** Each participant draws a self-mask seed `b` and
//!    Shamir-shares `b` and its secret key `s` (threshold `t`) among its
//!    `k` neighbours on a public random Harary graph (`k = O(log n)`), each
//!    share encrypted with AES-256-GCM under a key derived (HKDF-SHA256) from
//!    the `c` key agreement with that neighbour.
//! 3. **Masked input.** Each participant quantises its vector into
//!    `Z_2^32` (clipping range `[-R, R]`, `32 - ceil(log2 n)` bits, so that
//!    the sum of `n` values never wraps) and adds a ChaCha20 self mask from
//!    `b` and, per neighbour, a pairwise mask from the `s` agreement (added
//!    for one of the pair, subtracted for the other).
//! 4. **Unmask.** The server names the survivors and the dropped; each
//!    responder returns its share of `b` for survivors and of `s` for the
//!    dropped, never both for the same participant.
//!
//! The server then removes self masks (from `b`) and the dropped
//! participants' pairwise masks (from their `s`); survivors' pairwise masks
//! cancel. What the server can compute about any strict subset of the
//! survivors still carries the pairwise masks of the edges leaving it, so
//! while the survivors' graph is connected it learns only the total
//! ([`Server::survivor_graph_is_connected`]).
//!
//! Threat model: an honest-but-curious server, and fewer than `t` of any
//! participant's neighbours colluding with it. Key authenticity comes from
//! the transport (mutual TLS in deployment); the server is trusted to relay
//! honestly (no signatures on the key advertisements, unlike the malicious
//! variant of the protocol).

use std::collections::{BTreeMap, BTreeSet};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use blahaj::{Share, Sharks};
use hkdf::Hkdf;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;
use x25519_dalek::{PublicKey, StaticSecret};

/// Why a secure-aggregation step failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SecAggError {
    /// The settings cannot work.
    #[error("secure aggregation: {0}")]
    Config(String),
    /// A message is malformed or does not fit the round.
    #[error("secure aggregation: bad message from {from}: {reason}")]
    BadMessage {
        /// The sender.
        from: u32,
        /// What was wrong.
        reason: String,
    },
    /// Too many participants dropped to recover the sum.
    #[error("secure aggregation: cannot recover the sum: {0}")]
    TooManyDropouts(String),
    /// The server asked for both secrets of one participant.
    #[error("secure aggregation: refusing to unmask: {0}")]
    Refused(String),
}

/// The plan's `[secure_aggregation]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureAggregationConfig {
    /// Whether updates are securely aggregated.
    #[serde(default)]
    pub enabled: bool,
    /// Each update value is clipped to `[-clip_range, clip_range]` before
    /// quantisation.
    #[serde(default = "default_range")]
    pub clip_range: f32,
    /// Neighbours per participant (default: the even number at or above
    /// `3 log2 n`).
    #[serde(default)]
    pub neighbours: Option<usize>,
    /// Shares needed to rebuild a secret (default: `neighbours / 3 + 1`).
    #[serde(default)]
    pub threshold: Option<usize>,
    /// Instead of `threshold`: the share of each participant's neighbours
    /// that may drop while its secrets stay recoverable (threshold =
    /// `neighbours x (1 - dropout_tolerance)`, at least 2). Higher tolerates
    /// more dropouts; lower needs more colluding neighbours to break privacy.
    #[serde(default)]
    pub dropout_tolerance: Option<f64>,
}

fn default_range() -> f32 {
    1.0
}

impl Default for SecureAggregationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            clip_range: default_range(),
            neighbours: None,
            threshold: None,
            dropout_tolerance: None,
        }
    }
}

impl SecureAggregationConfig {
    /// Checks the settings that do not depend on the cohort.
    pub fn validate(&self) -> Result<(), SecAggError> {
        if !(self.clip_range.is_finite() && self.clip_range > 0.0) {
            return Err(SecAggError::Config(format!(
                "clip_range must be positive, got {}",
                self.clip_range
            )));
        }
        if self.threshold.is_some() && self.dropout_tolerance.is_some() {
            return Err(SecAggError::Config(
                "give threshold or dropout_tolerance, not both".into(),
            ));
        }
        if let Some(tol) = self.dropout_tolerance
            && !(0.0..1.0).contains(&tol)
        {
            return Err(SecAggError::Config(format!(
                "dropout_tolerance must be in [0, 1), got {tol}"
            )));
        }
        Ok(())
    }

    /// The parameters of a round with these settings.
    pub fn round_params(
        &self,
        round: u32,
        participants: &[u32],
        graph_seed: [u8; 32],
        dimension: usize,
    ) -> Result<RoundParams, SecAggError> {
        let mut params =
            RoundParams::new(round, participants, graph_seed, dimension, self.clip_range)?;
        if let Some(k) = self.neighbours {
            params.neighbours = k;
            params.threshold = (k / 3 + 1).max(2);
        }
        self.validate()?;
        match (self.threshold, self.dropout_tolerance) {
            (Some(t), _) => params.threshold = t,
            (None, Some(tol)) => {
                let k = params.neighbours as f64;
                params.threshold = ((k * (1.0 - tol)).floor() as usize).clamp(2, params.neighbours);
            }
            (None, None) => {}
        }
        params.validate()?;
        Ok(params)
    }
}

/// Public parameters of one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundParams {
    /// Round number (bound into every derived key and ciphertext).
    pub round: u32,
    /// Participant ids, sorted.
    pub participants: Vec<u32>,
    /// Neighbours per participant (even and below the number of
    /// participants, or all the others: the complete graph).
    pub neighbours: usize,
    /// Shares needed to recover a secret.
    pub threshold: usize,
    /// Public seed of the neighbour graph.
    pub graph_seed: [u8; 32],
    /// Length of the vectors.
    pub dimension: usize,
    /// Values are clipped to `[-range, range]` before quantisation.
    pub range: f32,
}

impl RoundParams {
    /// Parameters for `participants` (ids, any order) with the default
    /// neighbourhood: `k` the even number at or above `3 log2 n` (at least 4,
    /// below `n`) and threshold `k/3 + 1`: a participant's secrets survive
    /// while a third of its neighbours do (so up to about 60% may drop), and
    /// stay secret unless `k/3 + 1` neighbours collude with the server.
    pub fn new(
        round: u32,
        participants: &[u32],
        graph_seed: [u8; 32],
        dimension: usize,
        range: f32,
    ) -> Result<Self, SecAggError> {
        let mut ids = participants.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let n = ids.len();
        if n < 3 {
            return Err(SecAggError::Config(format!(
                "needs at least 3 participants, got {n}"
            )));
        }
        let log = (n as f64).log2().ceil() as usize;
        let mut k = (3 * log).max(4);
        if !k.is_multiple_of(2) {
            k += 1;
        }
        if k >= n {
            // Small cohorts: the complete graph.
            k = n - 1;
        }
        let params = Self {
            round,
            participants: ids,
            neighbours: k,
            threshold: (k / 3 + 1).max(2),
            graph_seed,
            dimension,
            range,
        };
        params.validate()?;
        Ok(params)
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), SecAggError> {
        let n = self.participants.len();
        let k = self.neighbours;
        if k < 2 || (!k.is_multiple_of(2) && k + 1 != n) || k >= n || k > 254 {
            return Err(SecAggError::Config(format!(
                "neighbours must be even (or all the others), at least 2, below the {n} participants and at most 254, got {k}"
            )));
        }
        if self.threshold < 2 || self.threshold > k {
            return Err(SecAggError::Config(format!(
                "threshold must be in [2, {k}], got {}",
                self.threshold
            )));
        }
        if !(self.range.is_finite() && self.range > 0.0) {
            return Err(SecAggError::Config(format!(
                "clipping range {} must be positive",
                self.range
            )));
        }
        Ok(())
    }

    /// Quantisation bits: the sum of every participant's value fits in 32 bits.
    pub fn bits(&self) -> u32 {
        32 - (self.participants.len() as f64).log2().ceil() as u32
    }

    /// The quantisation step.
    pub fn step(&self) -> f64 {
        2.0 * f64::from(self.range) / f64::from(((1u64 << self.bits()) - 1) as u32)
    }

    /// Every participant's neighbours.
    pub fn graph(&self) -> BTreeMap<u32, Vec<u32>> {
        self.participants
            .iter()
            .map(|&p| (p, self.neighbours_of(p)))
            .collect()
    }

    /// The neighbours of `id` on the Harary graph: participants placed on a
    /// ring in a random order (from the public graph seed), each joined to
    /// the `k/2` nearest on either side. The graph is `k`-connected: it stays
    /// connected whenever fewer than `k` drop. It depends on the seed and the
    /// participants only, so that a stable cohort keeps its neighbours (and
    /// its key agreements) from round to round.
    pub fn neighbours_of(&self, id: u32) -> Vec<u32> {
        let n = self.participants.len();
        if self.neighbours + 1 == n {
            return if self.participants.binary_search(&id).is_ok() {
                self.participants
                    .iter()
                    .copied()
                    .filter(|&p| p != id)
                    .collect()
            } else {
                Vec::new()
            };
        }
        let mut ring = self.participants.clone();
        let mut rng = ChaCha20Rng::from_seed(self.graph_seed);
        for i in (1..n).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            ring.swap(i, j);
        }
        let Some(pos) = ring.iter().position(|&p| p == id) else {
            return Vec::new();
        };
        let half = self.neighbours / 2;
        let mut out: Vec<u32> = (1..=half)
            .flat_map(|d| [ring[(pos + d) % n], ring[(pos + n - d) % n]])
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Stage 1: a participant's public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertiseKeys {
    /// Sender.
    pub from: u32,
    /// Key for share encryption.
    pub c_public: [u8; 32],
    /// Key for pairwise masks.
    pub s_public: [u8; 32],
}

/// Stage 2: encrypted shares, one per neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareKeys {
    /// Sender.
    pub from: u32,
    /// `(recipient, ciphertext)`.
    pub shares: Vec<(u32, Vec<u8>)>,
}

/// Stage 3: the masked, quantised vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInput {
    /// Sender.
    pub from: u32,
    /// The masked vector in `Z_2^32`.
    pub values: Vec<u32>,
}

/// Stage 4, server to participants: whose self masks and whose pairwise
/// masks to reveal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    /// Participants whose masked input arrived.
    pub survivors: Vec<u32>,
    /// Participants who shared keys but sent no masked input.
    pub dropped: Vec<u32>,
}

/// Stage 4, participants to server: shares of survivors' self-mask seeds and
/// of the dropped participants' mask keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskResponse {
    /// Sender.
    pub from: u32,
    /// `(survivor, share of its self-mask seed)`.
    pub seed_shares: Vec<(u32, Vec<u8>)>,
    /// `(dropped participant, share of its mask key)`.
    pub key_shares: Vec<(u32, Vec<u8>)>,
}

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

fn add_mask(values: &mut [u32], seed: [u8; 32], sign_plus: bool) {
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

fn agree(secret: &StaticSecret, peer: &[u8; 32]) -> [u8; 32] {
    secret.diffie_hellman(&PublicKey::from(*peer)).to_bytes()
}

fn pairwise_seed(shared: &[u8; 32], round: u32) -> [u8; 32] {
    hkdf32(shared, round, "tessera secagg pairwise mask")
}

fn share_cipher(shared: &[u8; 32], round: u32) -> Aes256Gcm {
    let key = hkdf32(shared, round, "tessera secagg share encryption");
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key))
}

/// A participant's key pairs, kept from round to round.
///
/// The encryption pair `c` is never revealed, so it lasts the run. The mask
/// pair `s` is revealed to the server when the participant is declared
/// dropped, so it is replaced before the next round whenever the participant
/// was not asked to unmask as a survivor. Key agreements with a neighbour's
/// public keys are computed once and kept; each round derives its own keys
/// from them with HKDF (salted with the round), so a stable cohort pays the
/// X25519 cost in its first round only.
pub struct KeyRing {
    c_secret: StaticSecret,
    s_secret: StaticSecret,
    c_public: [u8; 32],
    s_public: [u8; 32],
    /// Agreements of the encryption key, by the peer's public key.
    c_agreements: BTreeMap<[u8; 32], [u8; 32]>,
    /// Agreements of the mask key, by the peer's public key.
    s_agreements: BTreeMap<[u8; 32], [u8; 32]>,
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
        }
    }

    /// Replaces the mask key pair (after it may have been revealed).
    pub fn rotate_mask_key(&mut self, s_randomness: [u8; 32]) {
        self.s_secret = StaticSecret::from(s_randomness);
        self.s_public = PublicKey::from(&self.s_secret).to_bytes();
        self.s_agreements.clear();
    }

    fn agree_c(&mut self, peer: &[u8; 32]) -> [u8; 32] {
        let secret = &self.c_secret;
        *self
            .c_agreements
            .entry(*peer)
            .or_insert_with(|| agree(secret, peer))
    }

    fn agree_s(&mut self, peer: &[u8; 32]) -> [u8; 32] {
        let secret = &self.s_secret;
        *self
            .s_agreements
            .entry(*peer)
            .or_insert_with(|| agree(secret, peer))
    }
}

fn nonce(from: u32, to: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&from.to_le_bytes());
    n[4..8].copy_from_slice(&to.to_le_bytes());
    n
}

fn aad(round: u32, from: u32, to: u32) -> [u8; 12] {
    let mut a = [0u8; 12];
    a[..4].copy_from_slice(&round.to_le_bytes());
    a[4..8].copy_from_slice(&from.to_le_bytes());
    a[8..].copy_from_slice(&to.to_le_bytes());
    a
}

/// Quantises `values` into `[0, 2^bits)` after clipping to `[-range, range]`.
pub fn quantize(values: &[f32], params: &RoundParams) -> Vec<u32> {
    let levels = ((1u64 << params.bits()) - 1) as f64;
    let r = f64::from(params.range);
    values
        .iter()
        .map(|&x| {
            let x = f64::from(x).clamp(-r, r);
            ((x + r) / (2.0 * r) * levels).round() as u32
        })
        .collect()
}

/// The real-valued sum of `count` quantised vectors whose sum is `sum`.
pub fn dequantize_sum(sum: &[u32], count: usize, params: &RoundParams) -> Vec<f64> {
    let step = params.step();
    let offset = count as f64 * f64::from(params.range);
    sum.iter().map(|&s| f64::from(s) * step - offset).collect()
}

/// A participant's side of a round.
pub struct Client {
    id: u32,
    params: RoundParams,
    neighbours: Vec<u32>,
    keys: KeyRing,
    seed: [u8; 32],
    peers: BTreeMap<u32, AdvertiseKeys>,
    /// Per peer: the share cipher and the pairwise mask seed (one key
    /// agreement each, computed once).
    agreed: BTreeMap<u32, (Aes256Gcm, [u8; 32])>,
    /// Shares held for neighbours who completed stage 2: (seed share, key share).
    held: BTreeMap<u32, (Vec<u8>, Vec<u8>)>,
    masked: bool,
    unmasked_as_survivor: bool,
}

impl Client {
    /// A participant `id` of the round with fresh keys, from 32 bytes of
    /// secret randomness (from the operating system in deployment), and its
    /// stage 1 message.
    pub fn new(
        id: u32,
        params: RoundParams,
        randomness: [u8; 32],
    ) -> Result<(Self, AdvertiseKeys), SecAggError> {
        let mut rng = ChaCha20Rng::from_seed(randomness);
        let mut draw = || {
            let mut b = [0u8; 32];
            rng.fill_bytes(&mut b);
            b
        };
        let keys = KeyRing::new(draw(), draw());
        Self::with_keys(id, params, keys, draw())
    }

    /// A participant `id` of the round keeping its key pairs from earlier
    /// rounds (see [`KeyRing`]), with 32 bytes of fresh secret randomness for
    /// this round's self mask, and its stage 1 message.
    pub fn with_keys(
        id: u32,
        params: RoundParams,
        keys: KeyRing,
        seed: [u8; 32],
    ) -> Result<(Self, AdvertiseKeys), SecAggError> {
        params.validate()?;
        if params.participants.binary_search(&id).is_err() {
            return Err(SecAggError::Config(format!(
                "participant {id} is not in the round"
            )));
        }
        let advertised = AdvertiseKeys {
            from: id,
            c_public: keys.c_public,
            s_public: keys.s_public,
        };
        let neighbours = params.neighbours_of(id);
        Ok((
            Self {
                id,
                params,
                neighbours,
                keys,
                seed,
                peers: BTreeMap::new(),
                agreed: BTreeMap::new(),
                held: BTreeMap::new(),
                masked: false,
                unmasked_as_survivor: false,
            },
            advertised,
        ))
    }

    /// Ends the round and returns the key ring for the next one: the mask
    /// key is replaced (with `s_randomness`) unless this participant was
    /// asked to unmask as a survivor, since otherwise the server may have
    /// rebuilt it.
    pub fn into_keys(self, s_randomness: [u8; 32]) -> KeyRing {
        let mut keys = self.keys;
        if !self.unmasked_as_survivor {
            keys.rotate_mask_key(s_randomness);
        }
        keys
    }

    /// This participant's neighbours.
    pub fn neighbours(&self) -> &[u32] {
        &self.neighbours
    }

    /// Stage 2: takes the neighbours' keys (as relayed by the server) and
    /// returns the encrypted shares of this participant's secrets.
    pub fn share_keys(&mut self, keys: &[AdvertiseKeys]) -> Result<ShareKeys, SecAggError> {
        for k in keys {
            if self.neighbours.binary_search(&k.from).is_ok() {
                if k.c_public == k.s_public {
                    return Err(SecAggError::BadMessage {
                        from: k.from,
                        reason: "its two public keys are equal".into(),
                    });
                }
                self.peers.insert(k.from, k.clone());
            }
        }
        if self.peers.len() < self.params.threshold {
            return Err(SecAggError::TooManyDropouts(format!(
                "participant {} has {} neighbours with keys, needs {}",
                self.id,
                self.peers.len(),
                self.params.threshold
            )));
        }
        let sharks = Sharks(self.params.threshold as u8);
        let k = self.peers.len();
        let seed_shares: Vec<Share> = sharks.dealer(&self.seed).take(k).collect();
        let key_shares: Vec<Share> = sharks
            .dealer(self.keys.s_secret.as_bytes())
            .take(k)
            .collect();
        let mut out = Vec::with_capacity(k);
        for ((peer, keys), (b, s)) in self.peers.iter().zip(seed_shares.iter().zip(&key_shares)) {
            let b: Vec<u8> = b.into();
            let s: Vec<u8> = s.into();
            let mut plain = Vec::with_capacity(4 + b.len() + s.len());
            plain.extend_from_slice(&(b.len() as u32).to_le_bytes());
            plain.extend_from_slice(&b);
            plain.extend_from_slice(&s);
            let c_shared = self.keys.agree_c(&keys.c_public);
            let s_shared = self.keys.agree_s(&keys.s_public);
            let cipher = share_cipher(&c_shared, self.params.round);
            let mask_seed = pairwise_seed(&s_shared, self.params.round);
            let cipher = &self.agreed.entry(*peer).or_insert((cipher, mask_seed)).0;
            let ct = cipher
                .encrypt(
                    Nonce::from_slice(&nonce(self.id, *peer)),
                    Payload {
                        msg: &plain,
                        aad: &aad(self.params.round, self.id, *peer),
                    },
                )
                .map_err(|_| SecAggError::Config("encryption failed".into()))?;
            out.push((*peer, ct));
        }
        Ok(ShareKeys {
            from: self.id,
            shares: out,
        })
    }

    /// Stage 3: takes the shares addressed to this participant (the server
    /// relays them; their senders are the neighbours who completed stage 2)
    /// and returns the masked, quantised `input`.
    pub fn masked_input(
        &mut self,
        shares: &[(u32, Vec<u8>)],
        input: &[f32],
    ) -> Result<MaskedInput, SecAggError> {
        if input.len() != self.params.dimension {
            return Err(SecAggError::Config(format!(
                "input has {} values, the round {}",
                input.len(),
                self.params.dimension
            )));
        }
        for (from, ct) in shares {
            let Some((cipher, _)) = self.agreed.get(from) else {
                return Err(SecAggError::BadMessage {
                    from: *from,
                    reason: "not a neighbour with advertised keys".into(),
                });
            };
            let plain = cipher
                .decrypt(
                    Nonce::from_slice(&nonce(*from, self.id)),
                    Payload {
                        msg: ct,
                        aad: &aad(self.params.round, *from, self.id),
                    },
                )
                .map_err(|_| SecAggError::BadMessage {
                    from: *from,
                    reason: "its share does not decrypt".into(),
                })?;
            let bad = || SecAggError::BadMessage {
                from: *from,
                reason: "its share is malformed".into(),
            };
            let len_bytes: [u8; 4] = plain
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(bad)?;
            let len = u32::from_le_bytes(len_bytes) as usize;
            let b = plain.get(4..4 + len).ok_or_else(bad)?.to_vec();
            let s = plain.get(4 + len..).ok_or_else(bad)?.to_vec();
            self.held.insert(*from, (b, s));
        }
        let mut values = quantize(input, &self.params);
        add_mask(&mut values, self.seed, true);
        for (peer, (_, seed)) in &self.agreed {
            if !self.held.contains_key(peer) {
                continue; // it dropped before sharing: no mask with it
            }
            add_mask(&mut values, *seed, self.id < *peer);
        }
        self.masked = true;
        Ok(MaskedInput {
            from: self.id,
            values,
        })
    }

    /// Stage 4: reveals shares of survivors' seeds and dropped participants'
    /// keys; refuses a request naming a participant as both.
    pub fn unmask(&mut self, request: &UnmaskRequest) -> Result<UnmaskResponse, SecAggError> {
        if !self.masked {
            return Err(SecAggError::Refused(
                "this participant has not sent its masked input".into(),
            ));
        }
        let survivors: BTreeSet<u32> = request.survivors.iter().copied().collect();
        let dropped: BTreeSet<u32> = request.dropped.iter().copied().collect();
        if let Some(both) = survivors.intersection(&dropped).next() {
            return Err(SecAggError::Refused(format!(
                "participant {both} is named both survivor and dropped"
            )));
        }
        if !survivors.contains(&self.id) {
            return Err(SecAggError::Refused(
                "the request does not count this participant as a survivor".into(),
            ));
        }
        self.unmasked_as_survivor = true;
        let mut response = UnmaskResponse {
            from: self.id,
            seed_shares: Vec::new(),
            key_shares: Vec::new(),
        };
        for (peer, (b, s)) in &self.held {
            if survivors.contains(peer) {
                response.seed_shares.push((*peer, b.clone()));
            } else if dropped.contains(peer) {
                response.key_shares.push((*peer, s.clone()));
            }
        }
        Ok(response)
    }
}

/// The server's side of a round: relays messages and recovers the sum.
#[derive(Debug, Clone)]
pub struct Server {
    params: RoundParams,
    /// The neighbour graph, by participant.
    graph: BTreeMap<u32, Vec<u32>>,
    keys: BTreeMap<u32, AdvertiseKeys>,
    /// Stage 2 completers, with their shares by recipient.
    shares: BTreeMap<u32, BTreeMap<u32, Vec<u8>>>,
    masked: BTreeMap<u32, Vec<u32>>,
    responses: BTreeMap<u32, UnmaskResponse>,
}

impl Server {
    /// A server for the round.
    pub fn new(params: RoundParams) -> Result<Self, SecAggError> {
        params.validate()?;
        let graph = params.graph();
        Ok(Self {
            params,
            graph,
            keys: BTreeMap::new(),
            shares: BTreeMap::new(),
            masked: BTreeMap::new(),
            responses: BTreeMap::new(),
        })
    }

    /// The round's parameters.
    pub fn params(&self) -> &RoundParams {
        &self.params
    }

    fn neighbours(&self, id: u32) -> &[u32] {
        self.graph.get(&id).map_or(&[], Vec::as_slice)
    }

    fn check_member(&self, from: u32) -> Result<(), SecAggError> {
        if self.params.participants.binary_search(&from).is_err() {
            return Err(SecAggError::BadMessage {
                from,
                reason: "not a participant of the round".into(),
            });
        }
        Ok(())
    }

    /// Stage 1: a participant's keys.
    pub fn receive_keys(&mut self, keys: AdvertiseKeys) -> Result<(), SecAggError> {
        self.check_member(keys.from)?;
        if self.keys.contains_key(&keys.from) {
            return Err(SecAggError::BadMessage {
                from: keys.from,
                reason: "keys advertised twice".into(),
            });
        }
        self.keys.insert(keys.from, keys);
        Ok(())
    }

    /// Stage 1 → 2: the keys of `id`'s neighbours that advertised.
    pub fn keys_for(&self, id: u32) -> Vec<AdvertiseKeys> {
        self.neighbours(id)
            .iter()
            .filter_map(|n| self.keys.get(n).cloned())
            .collect()
    }

    /// Stage 2: a participant's encrypted shares.
    pub fn receive_shares(&mut self, shares: ShareKeys) -> Result<(), SecAggError> {
        let from = shares.from;
        self.check_member(from)?;
        if !self.keys.contains_key(&from) || self.shares.contains_key(&from) {
            return Err(SecAggError::BadMessage {
                from,
                reason: "shares without keys, or shared twice".into(),
            });
        }
        let neighbours = self.neighbours(from);
        let mut by_recipient = BTreeMap::new();
        for (to, ct) in shares.shares {
            if neighbours.binary_search(&to).is_err() || by_recipient.insert(to, ct).is_some() {
                return Err(SecAggError::BadMessage {
                    from,
                    reason: format!("a share for {to}, not a neighbour or twice"),
                });
            }
        }
        self.shares.insert(from, by_recipient);
        Ok(())
    }

    /// Stage 2 → 3: the shares addressed to `id`.
    pub fn shares_for(&self, id: u32) -> Vec<(u32, Vec<u8>)> {
        self.shares
            .iter()
            .filter_map(|(from, by)| by.get(&id).map(|ct| (*from, ct.clone())))
            .collect()
    }

    /// Stage 3: a masked input.
    pub fn receive_masked(&mut self, input: MaskedInput) -> Result<(), SecAggError> {
        let from = input.from;
        if !self.shares.contains_key(&from) || self.masked.contains_key(&from) {
            return Err(SecAggError::BadMessage {
                from,
                reason: "masked input without shares, or sent twice".into(),
            });
        }
        if input.values.len() != self.params.dimension {
            return Err(SecAggError::BadMessage {
                from,
                reason: format!(
                    "{} values, the round has {}",
                    input.values.len(),
                    self.params.dimension
                ),
            });
        }
        self.masked.insert(from, input.values);
        Ok(())
    }

    /// Stage 3 → 4: who survived and who dropped after sharing.
    pub fn unmask_request(&self) -> UnmaskRequest {
        UnmaskRequest {
            survivors: self.masked.keys().copied().collect(),
            dropped: self
                .shares
                .keys()
                .filter(|id| !self.masked.contains_key(id))
                .copied()
                .collect(),
        }
    }

    /// Stage 4: a survivor's shares.
    pub fn receive_unmask(&mut self, response: UnmaskResponse) -> Result<(), SecAggError> {
        let from = response.from;
        if !self.masked.contains_key(&from) || self.responses.contains_key(&from) {
            return Err(SecAggError::BadMessage {
                from,
                reason: "unmasking from a non-survivor, or twice".into(),
            });
        }
        self.responses.insert(from, response);
        Ok(())
    }

    /// Whether the survivors' neighbour graph is connected: then the masked
    /// inputs and revealed secrets determine only the total.
    pub fn survivor_graph_is_connected(&self) -> bool {
        let survivors: Vec<u32> = self.masked.keys().copied().collect();
        let Some(&start) = survivors.first() else {
            return true;
        };
        let mut seen = BTreeSet::from([start]);
        let mut stack = vec![start];
        while let Some(u) = stack.pop() {
            for &v in self.neighbours(u) {
                if self.masked.contains_key(&v) && seen.insert(v) {
                    stack.push(v);
                }
            }
        }
        seen.len() == survivors.len()
    }

    fn recover(&self, owner: u32, shares: Vec<&Vec<u8>>) -> Result<[u8; 32], SecAggError> {
        if shares.len() < self.params.threshold {
            return Err(SecAggError::TooManyDropouts(format!(
                "{} shares of participant {owner}'s secret arrived, {} needed",
                shares.len(),
                self.params.threshold
            )));
        }
        // Any `threshold` shares determine the secret; more only cost time.
        let parsed: Vec<Share> = shares
            .into_iter()
            .take(self.params.threshold)
            .map(|b| Share::try_from(b.as_slice()))
            .collect::<Result<_, _>>()
            .map_err(|e| SecAggError::BadMessage {
                from: owner,
                reason: format!("a share of its secret is malformed: {e}"),
            })?;
        let secret = Sharks(self.params.threshold as u8)
            .recover(parsed.iter())
            .map_err(|e| SecAggError::TooManyDropouts(format!("participant {owner}: {e}")))?;
        secret.try_into().map_err(|_| SecAggError::BadMessage {
            from: owner,
            reason: "its recovered secret is not 32 bytes".into(),
        })
    }

    /// The sum of the survivors' quantised vectors, and how many they are.
    pub fn finish(&self) -> Result<(Vec<u32>, usize), SecAggError> {
        if self.masked.len() < self.params.threshold {
            return Err(SecAggError::TooManyDropouts(format!(
                "{} masked inputs, fewer than the threshold {}",
                self.masked.len(),
                self.params.threshold
            )));
        }
        let mut sum = vec![0u32; self.params.dimension];
        for values in self.masked.values() {
            for (s, v) in sum.iter_mut().zip(values) {
                *s = s.wrapping_add(*v);
            }
        }
        let request = self.unmask_request();
        // Self masks of survivors.
        for &u in &request.survivors {
            let shares: Vec<&Vec<u8>> = self
                .responses
                .values()
                .flat_map(|r| {
                    r.seed_shares
                        .iter()
                        .filter(|(o, _)| *o == u)
                        .map(|(_, s)| s)
                })
                .collect();
            let seed = self.recover(u, shares)?;
            add_mask(&mut sum, seed, false);
        }
        // Pairwise masks between the dropped and their surviving neighbours.
        for &u in &request.dropped {
            let shares: Vec<&Vec<u8>> = self
                .responses
                .values()
                .flat_map(|r| r.key_shares.iter().filter(|(o, _)| *o == u).map(|(_, s)| s))
                .collect();
            let secret = StaticSecret::from(self.recover(u, shares)?);
            for v in self.params.neighbours_of(u) {
                let Some(keys) = self.keys.get(&v) else {
                    continue;
                };
                if !self.masked.contains_key(&v) {
                    continue;
                }
                // v added +mask if v < u, -mask otherwise: undo it.
                let seed = pairwise_seed(&agree(&secret, &keys.s_public), self.params.round);
                add_mask(&mut sum, seed, v > u);
            }
        }
        Ok((sum, self.masked.len()))
    }
}
