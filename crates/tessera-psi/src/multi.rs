//! Intersection among three or more sites: a leader runs two-party rounds.
//!
//! # Schedule
//!
//! With the leader `L = S_0` and sites `S_1 .. S_k`:
//!
//! 1. Chain: `T_0 = S_0`; for `j = 1..k`, the leader, as receiver, runs a
//!    receiver-only round of its current `T_{j-1}` against `S_j` and keeps
//!    `T_j = T_{j-1} ∩ S_j`. After the chain `T_k` is the intersection of
//!    all sites. Each chain query is padded to `|S_0|` elements with fresh
//!    random tokens (their blinded points are uniformly random, like every
//!    other point of the query under additive blinding), whose results the
//!    leader drops: every chain query is `32 |S_0|` bytes whatever the
//!    overlaps.
//! 2. Broadcast: for each `j`, a round in mode both of `T_k` against
//!    `S_j`; since `T_k ⊆ S_j`, site `j` learns exactly which of its own
//!    elements are in the full intersection.
//!
//! # What each party learns (semi-honest parties)
//!
//! - The leader: every prefix intersection `T_1 ⊇ T_2 ⊇ .. ⊇ T_k` (so the
//!   intersection of its set with `S_1`, with `S_1` and `S_2`, and so on),
//!   and each site's set size.
//! - Site `j`: `|S_0|` (the padded chain query), then the full
//!   intersection as its own elements and its size.
//! - A relaying coordinator: pseudorandom points and coded values, and the
//!   lengths: `|S_0|` and every `|S_j|` from the chain, then the size of
//!   the full intersection `|T_k|` (the broadcast queries, and the reveals,
//!   carry it). Without the padding the chain queries, `32 |T_{j-1}|`
//!   bytes, would also give it (and site `j`) every running intersection
//!   size `|S_0 ∩ S_1|`, `|S_0 ∩ S_1 ∩ S_2|`, ...; with it they do not.
//!
//! The leader alone learns the prefix intersections: put the site whose
//! pairwise overlaps matter least to hide first in the chain. Where only
//! the size of the intersection of all sites is wanted, this schedule is
//! not the tool: pairwise [`crate::Mode::Cardinality`] rounds give pairwise
//! sizes, never a multi-way one.
//!
//! [`intersect_sites`] drives the schedule in one process over the
//! message types of [`crate::psi`] (the transport is the caller's): it is
//! the reference for a deployed run and what the tests use.

use sha2::{Digest, Sha256};

use crate::group::{random_seed, seeded_bytes};
use crate::psi::{Mode, PsiConfig, Receiver, Sender};
use crate::{PsiError, Token};

const PAD_DOMAIN: &[u8] = b"tessera-psi/chain-padding/v1\0";

/// Padding token `k` of chain round `j`: SHA-256 of the leader's secret
/// padding seed, `j` and `k` (pseudorandom to everyone else; a collision
/// with a real token has chance `2^-256`).
fn pad_token(seed: &[u8; 32], j: usize, k: usize) -> Token {
    let mut h = Sha256::new();
    h.update(PAD_DOMAIN);
    h.update(seed);
    h.update((j as u64).to_le_bytes());
    h.update((k as u64).to_le_bytes());
    Token(h.finalize().into())
}

/// The result of a run among several sites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiOutput {
    /// Per site (the leader first), the positions of its own tokens that
    /// are in the intersection of all sites, ascending.
    pub intersection: Vec<Vec<usize>>,
    /// The sizes of the leader's prefix intersections `T_1 .. T_k`.
    pub chain_sizes: Vec<usize>,
    /// The bytes of every message exchanged.
    pub bytes: usize,
    /// The bytes of each chain query, in order (all `32 |S_0|` plus the
    /// framing: the padding hides the running intersection sizes).
    pub chain_query_bytes: Vec<usize>,
}

/// Runs the schedule with secrets from the operating system's random
/// source. `sites[0]` leads; `config.mode` is ignored (the schedule fixes
/// the modes).
pub fn intersect_sites(config: PsiConfig, sites: &[&[Token]]) -> Result<MultiOutput, PsiError> {
    run(config, sites, None)
}

/// Runs the schedule with secrets derived from `seed`: for tests and
/// simulation only.
#[cfg(any(test, feature = "test-seeds"))]
#[doc(hidden)]
pub fn intersect_sites_seeded_for_tests(
    config: PsiConfig,
    sites: &[&[Token]],
    seed: u64,
) -> Result<MultiOutput, PsiError> {
    run(config, sites, Some(seed))
}

fn run(config: PsiConfig, sites: &[&[Token]], seed: Option<u64>) -> Result<MultiOutput, PsiError> {
    let Some((leader, others)) = sites.split_first() else {
        return Err(PsiError::Config("no sites to intersect".into()));
    };
    let mut bytes = 0;
    // Positions into the leader's tokens of the current T_j.
    let mut current: Vec<usize> = (0..leader.len()).collect();
    let mut chain_sizes = Vec::with_capacity(others.len());
    let mut chain_query_bytes = Vec::with_capacity(others.len());
    let round_seed = |j: usize, phase: u64| seed.map(|s| party_seeds(s, j, phase));
    let pad_seed = match seed {
        Some(s) => seeded_bytes(s, b"multi leader padding"),
        None => random_seed()?,
    };
    for (j, site) in others.iter().enumerate() {
        let cfg = PsiConfig {
            mode: Mode::ReceiverOnly,
            ..config
        };
        let mut subset: Vec<Token> = current.iter().map(|&i| leader[i]).collect();
        subset.extend((current.len()..leader.len()).map(|k| pad_token(&pad_seed, j, k)));
        let (out, b, qb) = round(cfg, &subset, site, round_seed(j, 1))?;
        bytes += b;
        chain_query_bytes.push(qb);
        let found = out.0.intersection.unwrap_or_default();
        // Positions past T_{j-1} are padding: their results are dropped.
        current = found
            .into_iter()
            .filter_map(|i| current.get(i).copied())
            .collect();
        chain_sizes.push(current.len());
    }
    let final_set: Vec<Token> = current.iter().map(|&i| leader[i]).collect();
    let mut intersection = vec![current];
    for (j, site) in others.iter().enumerate() {
        let cfg = PsiConfig {
            mode: Mode::Both,
            ..config
        };
        let (out, b, _) = round(cfg, &final_set, site, round_seed(j, 2))?;
        bytes += b;
        intersection.push(out.1.intersection.unwrap_or_default());
    }
    Ok(MultiOutput {
        intersection,
        chain_sizes,
        bytes,
        chain_query_bytes,
    })
}

type RoundOutputs = (crate::psi::ReceiverOutput, crate::psi::SenderOutput);

/// The receiver's and the sender's seeds of one seeded round, each derived
/// on its own from the run's seed (SHA-256 of a label, the round and the
/// phase), so that neither follows from the other.
fn party_seeds(seed: u64, j: usize, phase: u64) -> (u64, u64) {
    let derive = |party: &[u8]| {
        let mut label = party.to_vec();
        label.extend_from_slice(&(j as u64).to_le_bytes());
        label.extend_from_slice(&phase.to_le_bytes());
        let d = seeded_bytes(seed, &label);
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        u64::from_le_bytes(b)
    };
    (derive(b"multi receiver"), derive(b"multi sender"))
}

/// One two-party round over serialised messages; returns both outputs, the
/// bytes exchanged and the query's bytes.
fn round(
    cfg: PsiConfig,
    receiver: &[Token],
    sender: &[Token],
    seed: Option<(u64, u64)>,
) -> Result<(RoundOutputs, usize, usize), PsiError> {
    let (r, query) = match seed {
        Some((s, _)) => Receiver::start_seeded(cfg, receiver, s)?,
        None => Receiver::start(cfg, receiver)?,
    };
    let q = query.to_bytes();
    let query = crate::psi::Query::from_bytes(&q)?;
    let (s, response) = match seed {
        Some((_, s)) => Sender::respond_seeded(cfg, sender, &query, s)?,
        None => Sender::respond(cfg, sender, &query)?,
    };
    let rb = response.to_bytes();
    let response = crate::psi::Response::from_bytes(&rb)?;
    let (rout, reveal) = r.finish(&response)?;
    let mut bytes = q.len() + rb.len();
    let reveal = match reveal {
        Some(rev) => {
            let v = rev.to_bytes();
            bytes += v.len();
            Some(crate::psi::Reveal::from_bytes(&v)?)
        }
        None => None,
    };
    let sout = s.finish(reveal.as_ref())?;
    Ok(((rout, sout), bytes, q.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Knowing one party's seed gives no other party's: no XOR relation
    /// between the two sides of a round, and every seed of a run distinct.
    #[test]
    fn each_party_seed_is_derived_independently() {
        let mut all = std::collections::HashSet::new();
        for phase in 1..=2 {
            for j in 0..8 {
                let (r, s) = party_seeds(42, j, phase);
                assert_ne!(s, r ^ 0x5eed, "round {j} phase {phase}");
                assert_ne!(s, r);
                assert!(all.insert(r) && all.insert(s), "a seed repeats");
            }
        }
        let (r, s) = party_seeds(42, 0, 1);
        let (r2, s2) = party_seeds(42 ^ 1, 0, 1);
        assert_eq!((r ^ r2).count_ones() > 8, (s ^ s2).count_ones() > 8);
        assert!(
            (r ^ r2).count_ones() > 8,
            "a one-bit change of the seed gives a nearby seed"
        );
    }
}
