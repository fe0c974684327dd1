//! A round's public parameters, their checks against the plan, and its neighbour graph.

use std::collections::BTreeMap;

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::short;
use crate::{SecAggError, SecureAggregationConfig};

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

/// The second bit of a secure round's number marks a round that sums the
/// sites' answers to an analytics query: release `n` is secure round
/// `n | ANALYTICS_ROUND` (`n < 2^30`), so its derived keys and ciphertexts
/// never coincide with a training round's or an evaluation's.
pub const ANALYTICS_ROUND: u32 = 1 << 30;

/// Both top bits mark a round that sums the canary sites' comparison of a
/// rollout's candidate with production: the candidate version `v` is
/// secure round `v | ROLLOUT_ROUND` (`v < 2^30`), its keys and ciphertexts
/// apart from every other kind of round's.
pub const ROLLOUT_ROUND: u32 = EVALUATION_ROUND | ANALYTICS_ROUND;

/// Whether secure round `round` sums a rollout's canary comparison.
pub fn is_rollout_round(round: u32) -> bool {
    round & ROLLOUT_ROUND == ROLLOUT_ROUND
}
