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
//!    for one of the pair, subtracted for the other). An update's training
//!    metadata (example count, train loss, step count) is appended to the
//!    quantised vector as 16-bit limbs before masking
//!    ([`Client::masked_update`], [`encode_metadata`]), so that the server
//!    learns only the survivors' sums of it too ([`split_sum`]).
//! 4. **Consistency check.** The server names the survivors and the
//!    dropped; each survivor signs that view (Bonawitz et al. 2017, active
//!    variant).
//! 5. **Unmask.** The server relays the survivors' signatures; each survivor
//!    checks that at least `t` survivors signed exactly the view it signed,
//!    and that no relayed signature is of another view, then returns its
//!    share of `b` for survivors and of `s` for the dropped, never both for
//!    the same participant, and answers once a round.
//!
//! The server then removes self masks (from `b`) and the dropped
//! participants' pairwise masks (from their `s`); survivors' pairwise masks
//! cancel. What the server can compute about any strict subset of the
//! survivors still carries the pairwise masks of the edges leaving it, so
//! while the survivors' graph is connected it learns only the total
//! ([`Server::survivor_graph_is_connected`]).
//!
//! Threat model of secure aggregation: the coordinator may be malicious. It may
//! lie about who dropped, show different participants different survivor sets,
//! withhold or replay messages, substitute keys, lower the threshold or reshape
//! the cohort, keep everything it relays across rounds, and collude with fewer
//! than `t` of any participant's neighbours; the other participants follow the
//! protocol. Against it, key advertisements and each survivor's view of the
//! round are signed with the site's certificate key and checked by the other
//! sites against the federation CA; participants check the round's parameters
//! against the plan (and, with `--expect-plan`, the plan against the one they
//! agreed to); the threshold is more than half the neighbours, so no
//! coordinator can collect enough shares of both a participant's self-mask seed
//! and its mask key; a participant masks only when the shares of at least `t`
//! neighbours reached it, and neither signs nor reveals for a view in which
//! fewer than `t` of its neighbours survive, so its pairwise masks cannot be
//! stripped by calling its partners dropped; a consistency check makes an
//! equivocating coordinator's round abort before any share is revealed; mask
//! keys are fresh every round and shares are encrypted under them, so a key
//! rebuilt when a participant drops unmasks nothing of its earlier rounds and a
//! replayed round decrypts nothing; and a site takes part in each secure round
//! number once. Not covered: a coordinator that leaves honest participants out
//! of a cohort (it learns the sum of those it keeps, at least `t`), or that
//! asks for sums of two cohorts over the same model in different rounds
//! (without local DP their difference can be one input), inputs out of range,
//! sparse neighbour graphs (above about 200 sites), where the check on
//! surviving neighbours guards each participant's own view only, and
//! deployments without TLS, where nothing is signed and the protection holds
//! against an honest-but-curious coordinator only. With central DP on top, the
//! coordinator unmasks the exact sum and adds the noise itself.
//!
//! (The same words stand in README and docs/PROTOCOL.md.) The pieces:
//! [`Signer`] and [`Verifier`] for signatures, [`RoundParams::check`] for
//! the parameters, [`Client::sign_view`] and [`Client::unmask`] for the
//! consistency check, [`KeyRing`] for fresh mask keys.

#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};

#[cfg(test)]
mod attacks;
mod metadata;

pub use metadata::{
    MAX_LOSS, MAX_SUMMANDS, METADATA_LEN, Metadata, MetadataSum, decode_metadata_sum,
    encode_metadata, loss_code, masked_dimension,
};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use blahaj::{Share, Sharks};
use hkdf::Hkdf;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
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
    /// Shares needed to rebuild a secret (default: `neighbours / 2 + 1`).
    /// Must be more than half the neighbours, so that a coordinator that
    /// tells some neighbours "survived" and others "dropped" can never
    /// collect both of a participant's secrets.
    #[serde(default)]
    pub threshold: Option<usize>,
    /// Instead of `threshold`: the share of each participant's neighbours
    /// that may drop while its secrets stay recoverable (threshold =
    /// `neighbours x (1 - dropout_tolerance)`, and more than half the
    /// neighbours, so below 0.5). Higher tolerates more dropouts; lower needs
    /// more colluding neighbours to break privacy.
    #[serde(default)]
    pub dropout_tolerance: Option<f64>,
    /// The share of a round's cohort that may drop mid-round (below 0.5):
    /// sets the default neighbour count ([`RoundParams::default_neighbours`]).
    #[serde(default = "default_max_dropout")]
    pub max_dropout: f64,
}

fn default_max_dropout() -> f64 {
    0.3
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
            max_dropout: default_max_dropout(),
        }
    }
}

impl SecureAggregationConfig {
    /// Checks the settings that do not depend on the cohort.
    pub fn validate(&self) -> Result<(), SecAggError> {
        if !(self.clip_range.is_finite() && self.clip_range > 0.0) {
            return Err(SecAggError::Config(format!(
                "clip_range must be positive, got {}",
                short(self.clip_range)
            )));
        }
        if self.threshold.is_some() && self.dropout_tolerance.is_some() {
            return Err(SecAggError::Config(
                "give threshold or dropout_tolerance, not both".into(),
            ));
        }
        if let Some(tol) = self.dropout_tolerance
            && !(0.0..0.5).contains(&tol)
        {
            return Err(SecAggError::Config(format!(
                "dropout_tolerance must be in [0, 0.5), got {}: the threshold must stay above half the neighbours, or a coordinator that lies about who dropped could rebuild both of a participant's secrets",
                short(tol)
            )));
        }
        RoundParams::default_neighbours(3, self.max_dropout)?;
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
        self.validate()?;
        let mut params = RoundParams::with_dropout(
            round,
            participants,
            graph_seed,
            dimension,
            self.clip_range,
            self.max_dropout,
        )?;
        if let Some(k) = self.neighbours {
            params.neighbours = k;
            params.threshold = RoundParams::default_threshold(k);
        }
        match (self.threshold, self.dropout_tolerance) {
            (Some(t), _) => params.threshold = t,
            (None, Some(tol)) => {
                let k = params.neighbours as f64;
                params.threshold = ((k * (1.0 - tol)).ceil() as usize)
                    .max(RoundParams::default_threshold(params.neighbours))
                    .min(params.neighbours);
            }
            (None, None) => {}
        }
        params.validate()?;
        Ok(params)
    }
}

/// What a participant knows of a round before the coordinator speaks: from
/// the plan and its own state. [`RoundParams::check`] refuses parameters
/// that do not follow from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected<'a> {
    /// The plan's `[secure_aggregation]`.
    pub config: &'a SecureAggregationConfig,
    /// The round this participant is training for.
    pub round: u32,
    /// This participant's id in the round.
    pub id: u32,
    /// The plan's graph seed for the round.
    pub graph_seed: [u8; 32],
    /// The length of the vector this participant will mask.
    pub dimension: usize,
    /// The fewest participants the plan allows in a round.
    pub min_cohort: usize,
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
    /// The default threshold of `k` neighbours: `k/2 + 1`, the least with
    /// `2t > k` (at least 2).
    pub fn default_threshold(k: usize) -> usize {
        (k / 2 + 1).max(2)
    }

    /// The default number of neighbours of each of `n` participants when up
    /// to `max_dropout` of them may drop mid-round: with threshold
    /// `k/2 + 1`, a participant loses its secrets when fewer than that many
    /// of its neighbours survive; with each surviving with probability
    /// `1 - max_dropout`, the Chernoff bound gives
    /// `P(Bin(k, 1 - d) <= k/2) <= exp(-k D(1/2 || 1 - d))`, and `k` is the
    /// least even number (at least `3 log2 n` and 4) that keeps this below
    /// `2^-20 / n` for every participant at once. At the default
    /// `max_dropout` 0.3 that is the complete graph up to about 200
    /// participants (the bound asks k = 204 at n = 47, so 46), and sparse
    /// above (232 at n = 500, 240 at n = 1,000); a lower `max_dropout` thins
    /// it (0.1: 36 of 46 at n = 47, 42 at n = 1,000). At most 254 (shares
    /// live in GF(256)).
    pub fn default_neighbours(n: usize, max_dropout: f64) -> Result<usize, SecAggError> {
        if !(0.0..0.5).contains(&max_dropout) {
            return Err(SecAggError::Config(format!(
                "max_dropout must be in [0, 0.5), got {}: with a threshold above half the neighbours, more than half dropping can never be recovered",
                short(max_dropout)
            )));
        }
        let survive = 1.0 - max_dropout;
        // Kullback-Leibler divergence of Bernoulli(1/2) from Bernoulli(survive).
        let divergence = if max_dropout == 0.0 {
            f64::INFINITY
        } else {
            0.5 * (0.5 / survive).ln() + 0.5 * (0.5 / max_dropout).ln()
        };
        let needed = (((n as f64).ln() + 20.0 * std::f64::consts::LN_2) / divergence).ceil();
        let log = (n as f64).log2().ceil() as usize;
        let mut k = (3 * log).max(4).max(needed.min(1e6) as usize);
        if !k.is_multiple_of(2) {
            k += 1;
        }
        if k >= n {
            // The complete graph.
            k = n - 1;
        }
        Ok(k.min(254))
    }

    /// Parameters for `participants` (ids, any order) with the default
    /// neighbourhood for up to 30% dropping mid-round (see
    /// [`RoundParams::with_dropout`]).
    pub fn new(
        round: u32,
        participants: &[u32],
        graph_seed: [u8; 32],
        dimension: usize,
        range: f32,
    ) -> Result<Self, SecAggError> {
        Self::with_dropout(round, participants, graph_seed, dimension, range, 0.3)
    }

    /// Parameters for `participants` (ids, any order) with the default
    /// neighbourhood for up to `max_dropout` of them dropping
    /// ([`RoundParams::default_neighbours`]) and threshold `k/2 + 1`: a
    /// participant's secrets survive while more than half its neighbours
    /// do, stay secret unless `k/2 + 1` neighbours collude with the server,
    /// and `2t > k`, so that no coordinator can gather `t` shares of both of
    /// a participant's secrets by telling different neighbours different
    /// stories.
    pub fn with_dropout(
        round: u32,
        participants: &[u32],
        graph_seed: [u8; 32],
        dimension: usize,
        range: f32,
        max_dropout: f64,
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
        let k = Self::default_neighbours(n, max_dropout)?;
        let params = Self {
            round,
            participants: ids,
            neighbours: k,
            threshold: Self::default_threshold(k),
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
        if self.threshold < 2 || self.threshold > k || 2 * self.threshold <= k {
            return Err(SecAggError::Config(format!(
                "threshold must be more than half the {k} neighbours and at most {k} (so in [{}, {k}]), got {}",
                Self::default_threshold(k),
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

    /// A digest of every parameter. Every signed message binds it, so that
    /// participants given different parameters never accept each other's
    /// messages.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"tessera secagg round parameters v1");
        h.update(self.round.to_le_bytes());
        h.update((self.participants.len() as u64).to_le_bytes());
        for p in &self.participants {
            h.update(p.to_le_bytes());
        }
        h.update((self.neighbours as u64).to_le_bytes());
        h.update((self.threshold as u64).to_le_bytes());
        h.update(self.graph_seed);
        h.update((self.dimension as u64).to_le_bytes());
        h.update(self.range.to_bits().to_le_bytes());
        h.finalize().into()
    }

    /// Checks parameters the coordinator sent against what the plan gives
    /// for the same cohort: the round, the graph seed, the dimension, the
    /// clipping range, the neighbours and the threshold, this participant's
    /// place in the cohort and the cohort's size. A coordinator that lowers
    /// the threshold, shrinks the cohort or reshapes the neighbour graph is
    /// refused, naming the field.
    pub fn check(&self, expected: &Expected<'_>) -> Result<(), SecAggError> {
        let refuse = |what: String| {
            Err(SecAggError::Refused(format!(
                "the coordinator's round parameters differ from the plan: {what}"
            )))
        };
        if self.round != expected.round {
            return refuse(format!(
                "round {}, this participant trains for round {}",
                self.round, expected.round
            ));
        }
        if !self.participants.is_sorted() || self.participants.windows(2).any(|w| w[0] == w[1]) {
            return refuse("the participant list is not sorted and distinct".into());
        }
        if self.participants.binary_search(&expected.id).is_err() {
            return refuse(format!(
                "this participant's id {} is not in the cohort",
                expected.id
            ));
        }
        if self.participants.len() < expected.min_cohort.max(3) {
            return refuse(format!(
                "a cohort of {}, the plan needs at least {}",
                self.participants.len(),
                expected.min_cohort.max(3)
            ));
        }
        let plan = expected.config.round_params(
            expected.round,
            &self.participants,
            expected.graph_seed,
            expected.dimension,
        )?;
        for (field, given, wanted) in [
            ("neighbours", self.neighbours, plan.neighbours),
            ("threshold", self.threshold, plan.threshold),
            ("dimension", self.dimension, plan.dimension),
        ] {
            if given != wanted {
                return refuse(format!("{field} {given}, the plan gives {wanted}"));
            }
        }
        if self.graph_seed != plan.graph_seed {
            return refuse("the neighbour graph's seed is not the plan's".into());
        }
        if self.range.to_bits() != plan.range.to_bits() {
            return refuse(format!(
                "clipping range {}, the plan gives {}",
                self.range, plan.range
            ));
        }
        self.validate()
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

/// The top bit of a secure round's number marks a round that sums the
/// sites' evaluations (`site_metrics = "aggregate-only"`) rather than their
/// updates: training round `r`'s evaluation is secure round
/// `r | EVALUATION_ROUND`, so its derived keys and ciphertexts never
/// coincide with those of training round `r`.
pub const EVALUATION_ROUND: u32 = 1 << 31;

/// Signs this participant's protocol messages with a key whose public half
/// the other participants know without the coordinator's word (from the
/// federation CA's certificates in deployment), so that the coordinator can
/// neither substitute a participant's keys nor forge its view of a round.
pub trait Signer: Send + Sync {
    /// The signature of `message`.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SecAggError>;
}

/// Checks other participants' signatures.
pub trait Verifier: Send + Sync {
    /// `Ok` when `signature` is participant `who`'s on `message`; the reason
    /// otherwise.
    fn verify(&self, who: u32, message: &[u8], signature: &[u8]) -> Result<(), String>;
}

/// An Ed25519 signing key (simulation and tests; deployment signs with the
/// site's certificate key).
pub struct Ed25519Signer(ed25519_dalek::SigningKey);

impl Ed25519Signer {
    /// The key of a 32-byte secret.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&secret))
    }

    /// The public key others verify with.
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
}

impl Signer for Ed25519Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SecAggError> {
        use ed25519_dalek::Signer as _;
        Ok(self.0.sign(message).to_bytes().to_vec())
    }
}

/// Ed25519 public keys by participant id.
#[derive(Debug, Clone, Default)]
pub struct Ed25519Directory(BTreeMap<u32, ed25519_dalek::VerifyingKey>);

impl Ed25519Directory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds participant `id`'s public key.
    pub fn insert(&mut self, id: u32, public: [u8; 32]) -> Result<(), SecAggError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&public)
            .map_err(|e| SecAggError::Config(format!("participant {id}'s public key: {e}")))?;
        self.0.insert(id, key);
        Ok(())
    }
}

impl Verifier for Ed25519Directory {
    fn verify(&self, who: u32, message: &[u8], signature: &[u8]) -> Result<(), String> {
        let key = self
            .0
            .get(&who)
            .ok_or_else(|| format!("no public key is known for participant {who}"))?;
        let signature = ed25519_dalek::Signature::from_slice(signature)
            .map_err(|_| format!("participant {who}'s signature is malformed"))?;
        key.verify_strict(message, &signature)
            .map_err(|_| format!("participant {who}'s signature does not verify"))
    }
}

/// No authentication: signs nothing and accepts everything. Only for a
/// deployment that explicitly runs without TLS, where participants have no
/// keys to sign with; the coordinator can then substitute keys and forge
/// views, and secure aggregation protects against an honest-but-curious
/// coordinator only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unauthenticated;

impl Signer for Unauthenticated {
    fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, SecAggError> {
        Ok(Vec::new())
    }
}

impl Verifier for Unauthenticated {
    fn verify(&self, _who: u32, _message: &[u8], _signature: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// The bytes a participant signs to advertise its keys.
pub fn keys_message(
    params_digest: &[u8; 32],
    from: u32,
    c_public: &[u8; 32],
    s_public: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(22 + 32 + 4 + 64);
    m.extend_from_slice(b"tessera secagg keys v1");
    m.extend_from_slice(params_digest);
    m.extend_from_slice(&from.to_le_bytes());
    m.extend_from_slice(c_public);
    m.extend_from_slice(s_public);
    m
}

/// The bytes a survivor signs in the consistency check: the round's
/// parameters and the survivor and dropped sets it was given.
pub fn view_message(params_digest: &[u8; 32], request: &UnmaskRequest) -> Vec<u8> {
    let mut m =
        Vec::with_capacity(22 + 32 + 16 + 4 * (request.survivors.len() + request.dropped.len()));
    m.extend_from_slice(b"tessera secagg view v1");
    m.extend_from_slice(params_digest);
    for set in [&request.survivors, &request.dropped] {
        m.extend_from_slice(&(set.len() as u64).to_le_bytes());
        for id in set {
            m.extend_from_slice(&id.to_le_bytes());
        }
    }
    m
}

/// Stage 1: a participant's public keys, signed by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertiseKeys {
    /// Sender.
    pub from: u32,
    /// Key for share encryption.
    pub c_public: [u8; 32],
    /// Key for pairwise masks (fresh every round).
    pub s_public: [u8; 32],
    /// The sender's signature of [`keys_message`].
    pub signature: Vec<u8>,
}

/// Stage 4 (consistency check): a survivor's signature of the survivor and
/// dropped sets it was given ([`view_message`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedView {
    /// Signer.
    pub from: u32,
    /// Its signature.
    pub signature: Vec<u8>,
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

/// Stages 4 and 5, server to participants: whose self masks and whose
/// pairwise masks to reveal (signed by every survivor in stage 4, revealed
/// in stage 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    /// Participants whose masked input arrived.
    pub survivors: Vec<u32>,
    /// Participants who shared keys but sent no masked input.
    pub dropped: Vec<u32>,
}

/// Stage 5, participants to server: shares of survivors' self-mask seeds and
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

/// The key that encrypts shares between two participants in one session of
/// a round: from the lasting `c` agreement, the round, and both parties'
/// mask keys of this session (fresh every session), so that ciphertexts of
/// an earlier session of the same round number never decrypt again, and no
/// (key, nonce) pair repeats.
fn share_cipher(shared: &[u8; 32], round: u32, s_a: &[u8; 32], s_b: &[u8; 32]) -> Aes256Gcm {
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
    c_secret: StaticSecret,
    s_secret: StaticSecret,
    c_public: [u8; 32],
    s_public: [u8; 32],
    /// Agreements of the encryption key, by the peer's public key.
    c_agreements: BTreeMap<[u8; 32], [u8; 32]>,
    /// Agreements of the mask key, by the peer's public key.
    s_agreements: BTreeMap<[u8; 32], [u8; 32]>,
    /// Secure rounds in which this participant revealed shares: it takes
    /// part in each round number once (a second session of the same round
    /// could reveal a neighbour's other secret, or the difference of two
    /// sums over the same inputs).
    answered: BTreeSet<u32>,
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

/// Splits the sum of a round's masked updates ([`Server::finish`] of
/// inputs from [`Client::masked_update`]) into the real-valued sum of the
/// `count` survivors' updates and the sums of their metadata. Refuses a sum
/// of another length than the round's dimension, or one too short to hold
/// the metadata.
pub fn split_sum(
    sum: &[u32],
    count: usize,
    params: &RoundParams,
) -> Result<(Vec<f64>, MetadataSum), SecAggError> {
    if sum.len() != params.dimension || sum.len() < METADATA_LEN {
        return Err(SecAggError::Config(format!(
            "a sum of {} values, the round has {} (the update and {METADATA_LEN} of metadata)",
            sum.len(),
            params.dimension
        )));
    }
    let (update, meta) = sum.split_at(sum.len() - METADATA_LEN);
    Ok((
        dequantize_sum(update, count, params),
        decode_metadata_sum(meta, count)?,
    ))
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
    /// The survivor and dropped sets this participant signed (stage 4).
    signed_view: Option<UnmaskRequest>,
    /// Whether it answered an unmasking request (at most once a round).
    unmasked: bool,
    digest: [u8; 32],
}

impl Client {
    /// A participant `id` of the round with fresh keys, from 32 bytes of
    /// secret randomness (from the operating system in deployment), and its
    /// stage 1 message, signed by `signer`.
    pub fn new(
        id: u32,
        params: RoundParams,
        randomness: [u8; 32],
        signer: &dyn Signer,
    ) -> Result<(Self, AdvertiseKeys), SecAggError> {
        let mut rng = ChaCha20Rng::from_seed(randomness);
        let mut draw = || {
            let mut b = [0u8; 32];
            rng.fill_bytes(&mut b);
            b
        };
        let keys = KeyRing::new(draw(), draw());
        Self::with_keys(id, params, keys, draw(), signer)
    }

    /// A participant `id` of the round with its key ring from the round
    /// before (see [`KeyRing`]), 32 bytes of fresh secret randomness for this
    /// round's self mask, and its stage 1 message, signed by `signer`.
    pub fn with_keys(
        id: u32,
        params: RoundParams,
        keys: KeyRing,
        seed: [u8; 32],
        signer: &dyn Signer,
    ) -> Result<(Self, AdvertiseKeys), SecAggError> {
        params.validate()?;
        if params.participants.binary_search(&id).is_err() {
            return Err(SecAggError::Config(format!(
                "participant {id} is not in the round"
            )));
        }
        if keys.answered.contains(&params.round) {
            return Err(SecAggError::Refused(format!(
                "this participant already revealed shares in secure round {}: it takes part in each round once",
                params.round
            )));
        }
        let digest = params.digest();
        let signature = signer.sign(&keys_message(&digest, id, &keys.c_public, &keys.s_public))?;
        let advertised = AdvertiseKeys {
            from: id,
            c_public: keys.c_public,
            s_public: keys.s_public,
            signature,
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
                signed_view: None,
                unmasked: false,
                digest,
            },
            advertised,
        ))
    }

    /// Ends the round and returns the key ring for the next one, its mask
    /// key replaced by a fresh one from `s_randomness` (whatever happened in
    /// this round: see [`KeyRing`]).
    pub fn into_keys(self, s_randomness: [u8; 32]) -> KeyRing {
        let mut keys = self.keys;
        if self.unmasked {
            keys.answered.insert(self.params.round);
        }
        keys.rotate_mask_key(s_randomness);
        keys
    }

    /// This participant's neighbours.
    pub fn neighbours(&self) -> &[u32] {
        &self.neighbours
    }

    /// Stage 2: takes the neighbours' keys (as relayed by the server),
    /// checks each neighbour's signature with `verifier`, and returns the
    /// encrypted shares of this participant's secrets. A key advertisement
    /// its sender did not sign (the server substituted it) ends the round
    /// for this participant before any share is made.
    pub fn share_keys(
        &mut self,
        keys: &[AdvertiseKeys],
        verifier: &dyn Verifier,
    ) -> Result<ShareKeys, SecAggError> {
        for k in keys {
            if self.neighbours.binary_search(&k.from).is_ok() {
                if k.c_public == k.s_public {
                    return Err(SecAggError::BadMessage {
                        from: k.from,
                        reason: "its two public keys are equal".into(),
                    });
                }
                let message = keys_message(&self.digest, k.from, &k.c_public, &k.s_public);
                if let Err(why) = verifier.verify(k.from, &message, &k.signature) {
                    return Err(SecAggError::Refused(format!(
                        "the keys relayed for participant {} are not signed by it ({why}): the coordinator may have substituted them",
                        k.from
                    )));
                }
                if self.peers.insert(k.from, k.clone()).is_some() {
                    return Err(SecAggError::BadMessage {
                        from: k.from,
                        reason: "its keys were relayed twice".into(),
                    });
                }
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
            let cipher = share_cipher(
                &c_shared,
                self.params.round,
                &self.keys.s_public,
                &keys.s_public,
            );
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
    /// and returns the masked, quantised `input` (of the round's full
    /// dimension; see [`Client::masked_update`] for an update with its
    /// metadata).
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
        let values = quantize(input, &self.params);
        self.masked_values(shares, values)
    }

    /// Stage 3 for an update and its training metadata: quantises `update`
    /// (the round's dimension less [`METADATA_LEN`] values), appends the
    /// encoded `metadata` ([`encode_metadata`]) and masks the whole, so that
    /// the server learns only the survivors' sums of both
    /// ([`split_sum`]).
    pub fn masked_update(
        &mut self,
        shares: &[(u32, Vec<u8>)],
        update: &[f32],
        metadata: &Metadata,
    ) -> Result<MaskedInput, SecAggError> {
        if masked_dimension(update.len()) != self.params.dimension {
            return Err(SecAggError::Config(format!(
                "an update of {} values and {METADATA_LEN} of metadata, the round has {}",
                update.len(),
                self.params.dimension
            )));
        }
        if self.params.participants.len() > MAX_SUMMANDS {
            return Err(SecAggError::Config(format!(
                "{} participants: the metadata of at most {MAX_SUMMANDS} sums exactly",
                self.params.participants.len()
            )));
        }
        let mut values = quantize(update, &self.params);
        values.extend_from_slice(&encode_metadata(metadata));
        self.masked_values(shares, values)
    }

    /// Stage 3 for raw values of `Z_2^32` (exactly the round's dimension):
    /// takes the shares addressed to this participant and returns `values`
    /// masked. The caller answers for their range: the server's sum wraps
    /// modulo `2^32`.
    pub fn masked_values(
        &mut self,
        shares: &[(u32, Vec<u8>)],
        mut values: Vec<u32>,
    ) -> Result<MaskedInput, SecAggError> {
        if self.masked {
            // Two vectors under the same masks would give away their difference.
            return Err(SecAggError::Refused(
                "this participant already sent its masked input this round".into(),
            ));
        }
        if values.len() != self.params.dimension {
            return Err(SecAggError::Config(format!(
                "{} values to mask, the round has {}",
                values.len(),
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
        // Pairwise masks only with those whose shares arrived: with fewer
        // than `t` of them, a coordinator that withheld the others (or later
        // calls them all dropped and rebuilds their mask keys) could strip
        // every pairwise mask, and the self mask's seed is revealed for a
        // survivor. Such a round could not recover this input anyway.
        if self.held.len() < self.params.threshold {
            return Err(SecAggError::Refused(format!(
                "the shares of only {} neighbours reached this participant, fewer than the threshold {}: its input would be protected by its self mask alone",
                self.held.len(),
                self.params.threshold
            )));
        }
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

    /// Checks an unmasking request before signing or answering it: this
    /// participant a survivor, nobody both survivor and dropped, everyone in
    /// the round, and enough survivors for a threshold.
    fn check_request(&self, request: &UnmaskRequest) -> Result<(), SecAggError> {
        if !self.masked {
            return Err(SecAggError::Refused(
                "this participant has not sent its masked input".into(),
            ));
        }
        let survivors: BTreeSet<u32> = request.survivors.iter().copied().collect();
        let dropped: BTreeSet<u32> = request.dropped.iter().copied().collect();
        if survivors.len() != request.survivors.len() || dropped.len() != request.dropped.len() {
            return Err(SecAggError::Refused(
                "the request names a participant twice".into(),
            ));
        }
        if let Some(both) = survivors.intersection(&dropped).next() {
            return Err(SecAggError::Refused(format!(
                "participant {both} is named both survivor and dropped"
            )));
        }
        if let Some(stranger) = survivors
            .iter()
            .chain(&dropped)
            .find(|p| self.params.participants.binary_search(p).is_err())
        {
            return Err(SecAggError::Refused(format!(
                "participant {stranger} is not in the round"
            )));
        }
        if !survivors.contains(&self.id) {
            return Err(SecAggError::Refused(
                "the request does not count this participant as a survivor".into(),
            ));
        }
        if survivors.len() < self.params.threshold {
            return Err(SecAggError::Refused(format!(
                "{} survivors, fewer than the threshold {}",
                survivors.len(),
                self.params.threshold
            )));
        }
        // A round that can complete has at least `t` surviving neighbours of
        // every survivor. A view with fewer around this participant calls
        // most of its neighbours dropped: with 2t > k that is how a
        // coordinator would strip a victim's pairwise masks (declare the
        // neighbours it masked with dropped, rebuild their mask keys), so
        // nobody who sees it signs or reveals.
        let alive = self
            .neighbours
            .iter()
            .filter(|n| survivors.contains(n))
            .count();
        if alive < self.params.threshold {
            return Err(SecAggError::Refused(format!(
                "only {alive} of this participant's {} neighbours survive in the view, fewer than the threshold {}: the round cannot complete, and a view that drops most of them is how a coordinator strips a participant's masks",
                self.neighbours.len(),
                self.params.threshold
            )));
        }
        Ok(())
    }

    /// Stage 4, the consistency check (Bonawitz et al. 2017, active
    /// variant): signs the survivor and dropped sets the server names. A
    /// participant signs one view a round.
    pub fn sign_view(
        &mut self,
        request: &UnmaskRequest,
        signer: &dyn Signer,
    ) -> Result<SignedView, SecAggError> {
        self.check_request(request)?;
        if let Some(signed) = &self.signed_view
            && signed != request
        {
            return Err(SecAggError::Refused(
                "the server asked this participant to sign a second, different view of the round"
                    .into(),
            ));
        }
        let signature = signer.sign(&view_message(&self.digest, request))?;
        self.signed_view = Some(request.clone());
        Ok(SignedView {
            from: self.id,
            signature,
        })
    }

    /// Stage 5: reveals shares of survivors' seeds and dropped participants'
    /// keys, once, after the consistency check: the request must be the view
    /// this participant signed, and `views` must hold at least `threshold`
    /// signatures of that same view by distinct survivors. Any signature of
    /// another view (a server that told different participants different
    /// survivor sets) or one that does not verify aborts the round for this
    /// participant without revealing anything.
    pub fn unmask(
        &mut self,
        request: &UnmaskRequest,
        views: &[SignedView],
        verifier: &dyn Verifier,
    ) -> Result<UnmaskResponse, SecAggError> {
        self.check_request(request)?;
        if self.unmasked {
            return Err(SecAggError::Refused(
                "this participant already answered an unmasking request this round".into(),
            ));
        }
        match &self.signed_view {
            None => {
                return Err(SecAggError::Refused(
                    "no consistency check: this participant has not signed a view of the round"
                        .into(),
                ));
            }
            Some(signed) if signed != request => {
                return Err(SecAggError::Refused(
                    "the unmasking request differs from the survivor set this participant signed"
                        .into(),
                ));
            }
            Some(_) => {}
        }
        let message = view_message(&self.digest, request);
        let mut signers = BTreeSet::new();
        for view in views {
            if !request.survivors.contains(&view.from) {
                return Err(SecAggError::Refused(format!(
                    "participant {} signed a view of the round, but the survivor set this participant was given does not name it: the coordinator sent different views of the round; no share revealed",
                    view.from
                )));
            }
            if let Err(why) = verifier.verify(view.from, &message, &view.signature) {
                return Err(SecAggError::Refused(format!(
                    "participant {} did not sign the survivor set this participant was given ({why}): the coordinator sent different views of the round; no share revealed",
                    view.from
                )));
            }
            signers.insert(view.from);
        }
        if signers.len() < self.params.threshold {
            return Err(SecAggError::Refused(format!(
                "{} survivors signed this view of the round, {} needed",
                signers.len(),
                self.params.threshold
            )));
        }
        let survivors: BTreeSet<u32> = request.survivors.iter().copied().collect();
        let dropped: BTreeSet<u32> = request.dropped.iter().copied().collect();
        self.unmasked = true;
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
    /// Stage 4: survivors' signatures of the unmasking request.
    views: BTreeMap<u32, Vec<u8>>,
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
            views: BTreeMap::new(),
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
        if keys.signature.len() > 1024 {
            return Err(SecAggError::BadMessage {
                from: keys.from,
                reason: format!("a signature of {} bytes", keys.signature.len()),
            });
        }
        if self.keys.contains_key(&keys.from) {
            return Err(SecAggError::BadMessage {
                from: keys.from,
                reason: "keys advertised twice".into(),
            });
        }
        self.keys.insert(keys.from, keys);
        Ok(())
    }

    /// Whether participant `id` advertised its keys.
    pub fn has_keys(&self, id: u32) -> bool {
        self.keys.contains_key(&id)
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

    /// Stage 3 → 4: who survived and who dropped after sharing (the view
    /// every survivor signs in stage 4 and answers in stage 5).
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

    /// Stage 4: a survivor's signature of the unmasking request.
    pub fn receive_view(&mut self, view: SignedView) -> Result<(), SecAggError> {
        let from = view.from;
        if !self.masked.contains_key(&from) || self.views.contains_key(&from) {
            return Err(SecAggError::BadMessage {
                from,
                reason: "a signed view from a non-survivor, or twice".into(),
            });
        }
        if view.signature.len() > 1024 {
            return Err(SecAggError::BadMessage {
                from,
                reason: format!("a signature of {} bytes", view.signature.len()),
            });
        }
        self.views.insert(from, view.signature);
        Ok(())
    }

    /// Stage 4 → 5: the survivors' signatures, sent to each of them.
    pub fn views(&self) -> Vec<SignedView> {
        self.views
            .iter()
            .map(|(from, signature)| SignedView {
                from: *from,
                signature: signature.clone(),
            })
            .collect()
    }

    /// Stage 5: a survivor's shares (from one that signed its view).
    pub fn receive_unmask(&mut self, response: UnmaskResponse) -> Result<(), SecAggError> {
        let from = response.from;
        if !self.views.contains_key(&from) || self.responses.contains_key(&from) {
            return Err(SecAggError::BadMessage {
                from,
                reason: "unmasking from a survivor that signed no view, or twice".into(),
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

/// `x` for a message: scientific when tiny or huge (this crate stands
/// alone; `tessera_core::value` does the same elsewhere).
fn short<T>(x: T) -> String
where
    T: Copy + Into<f64> + std::fmt::Display + std::fmt::LowerExp,
{
    let wide: f64 = x.into();
    if wide != 0.0 && wide.is_finite() && !(1e-4..1e15).contains(&wide.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}
