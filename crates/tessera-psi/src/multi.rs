//! Intersection among three or more sites: a leader runs two-party rounds.
//!
//! # Schedule
//!
//! With the leader `L = S_0` and sites `S_1 .. S_k`:
//!
//! 1. Chain: `T_0 = S_0`; for `j = 1..k`, the leader, as receiver, runs a
//!    receiver-only round of its current `T_{j-1}` against `S_j` and keeps
//!    `T_j = T_{j-1} ∩ S_j`. After the chain `T_k` is the intersection of
//!    all sites.
//! 2. Broadcast: for each `j`, a round in mode both of `T_k` against
//!    `S_j`; since `T_k ⊆ S_j`, site `j` learns exactly which of its own
//!    elements are in the full intersection.
//!
//! # What each party learns (semi-honest parties)
//!
//! - The leader: every prefix intersection `T_1 ⊇ T_2 ⊇ .. ⊇ T_k` (so the
//!   intersection of its set with `S_1`, with `S_1` and `S_2`, and so on),
//!   and each site's set size.
//! - Site `j`: the size of `T_{j-1}` (the leader's running intersection
//!   with the sites before it), then the full intersection as its own
//!   elements and its size.
//! - A relaying coordinator: only pseudorandom points and coded values.
//!
//! Put the site whose pairwise overlaps matter least to hide first in the
//! chain, or use [`crate::Mode::Cardinality`] rounds where only sizes are
//! wanted.
//!
//! [`intersect_sites`] drives the schedule in one process over the
//! message types of [`crate::psi`] (the transport is the caller's): it is
//! the reference for a deployed run and what the tests use.

use crate::psi::{Mode, PsiConfig, Receiver, Sender};
use crate::{PsiError, Token};

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
}

/// Runs the schedule with secrets from the operating system's random
/// source. `sites[0]` leads; `config.mode` is ignored (the schedule fixes
/// the modes).
pub fn intersect_sites(config: PsiConfig, sites: &[&[Token]]) -> Result<MultiOutput, PsiError> {
    run(config, sites, None)
}

/// Runs the schedule with secrets derived from `seed`: for tests and
/// simulation only.
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
    let round_seed = |j: usize, phase: u64| seed.map(|s| s ^ (phase << 40) ^ (j as u64) << 8);
    for (j, site) in others.iter().enumerate() {
        let cfg = PsiConfig {
            mode: Mode::ReceiverOnly,
            ..config
        };
        let subset: Vec<Token> = current.iter().map(|&i| leader[i]).collect();
        let (out, b) = round(cfg, &subset, site, round_seed(j, 1))?;
        bytes += b;
        let found = out.0.intersection.unwrap_or_default();
        current = found.into_iter().map(|i| current[i]).collect();
        chain_sizes.push(current.len());
    }
    let final_set: Vec<Token> = current.iter().map(|&i| leader[i]).collect();
    let mut intersection = vec![current];
    for (j, site) in others.iter().enumerate() {
        let cfg = PsiConfig {
            mode: Mode::Both,
            ..config
        };
        let (out, b) = round(cfg, &final_set, site, round_seed(j, 2))?;
        bytes += b;
        intersection.push(out.1.intersection.unwrap_or_default());
    }
    Ok(MultiOutput {
        intersection,
        chain_sizes,
        bytes,
    })
}

type RoundOutputs = (crate::psi::ReceiverOutput, crate::psi::SenderOutput);

/// One two-party round over serialised messages; returns both outputs and
/// the bytes exchanged.
fn round(
    cfg: PsiConfig,
    receiver: &[Token],
    sender: &[Token],
    seed: Option<u64>,
) -> Result<(RoundOutputs, usize), PsiError> {
    let (r, query) = match seed {
        Some(s) => Receiver::start_seeded_for_tests(cfg, receiver, s)?,
        None => Receiver::start(cfg, receiver)?,
    };
    let q = query.to_bytes();
    let query = crate::psi::Query::from_bytes(&q)?;
    let (s, response) = match seed {
        Some(seed) => Sender::respond_seeded_for_tests(cfg, sender, &query, seed ^ 0x5eed)?,
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
    Ok(((rout, sout), bytes))
}
