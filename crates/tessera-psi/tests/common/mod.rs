//! Shared helpers: synthetic identifier sets and byte-level runs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use tessera_psi::*;

pub fn key() -> MatchingKey {
    MatchingKey::from_bytes([7u8; 32])
}

/// Identifiers `P-000123` for `range`.
pub fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("P-{i:06}")).collect()
}

pub fn tokens(ids: &[String]) -> PreparedSet {
    prepare(&key(), ids).unwrap()
}

/// The normalised identifiers both lists share.
pub fn expected(a: &[String], b: &[String]) -> BTreeSet<String> {
    let a: BTreeSet<String> = a.iter().map(|s| normalise(s)).collect();
    let b: BTreeSet<String> = b.iter().map(|s| normalise(s)).collect();
    a.intersection(&b).cloned().collect()
}

/// The normalised identifiers at token positions `pos` of a prepared list.
pub fn names(ids: &[String], set: &PreparedSet, pos: &[usize]) -> BTreeSet<String> {
    pos.iter()
        .map(|&i| normalise(&ids[set.first_row[i]]))
        .collect()
}

/// What one run leaves each party with, and every message as bytes.
pub struct Run {
    pub receiver: ReceiverOutput,
    pub sender: SenderOutput,
    pub query: Vec<u8>,
    pub response: Vec<u8>,
    pub reveal: Option<Vec<u8>>,
}

/// A two-party run over serialised messages, seeded.
pub fn run(config: PsiConfig, a: &[Token], b: &[Token], seed: u64) -> Run {
    let (r, q) = Receiver::start_seeded_for_tests(config, a, seed).unwrap();
    let query = q.to_bytes();
    let (s, resp) =
        Sender::respond_seeded_for_tests(config, b, &Query::from_bytes(&query).unwrap(), seed + 1)
            .unwrap();
    let response = resp.to_bytes();
    let (receiver, reveal) = r.finish(&Response::from_bytes(&response).unwrap()).unwrap();
    let reveal = reveal.map(|r| r.to_bytes());
    let sender = s
        .finish(
            reveal
                .as_ref()
                .map(|b| Reveal::from_bytes(b).unwrap())
                .as_ref(),
        )
        .unwrap();
    Run {
        receiver,
        sender,
        query,
        response,
        reveal,
    }
}

/// Intersection-sum over serialised messages, seeded: A's output, what B
/// learned, and every message.
pub fn run_sum(
    config: SumConfig,
    a: &[Token],
    b: &[Token],
    values: &[u64],
    seed: u64,
) -> (SumOutput, usize, Vec<Vec<u8>>) {
    let (r, q) = SumReceiver::start_seeded_for_tests(config, a, seed).unwrap();
    let m1 = q.to_bytes();
    let (s, resp) = SumSender::respond_seeded_for_tests(
        config,
        b,
        values,
        &SumQuery::from_bytes(&m1).unwrap(),
        seed + 1,
    )
    .unwrap();
    let b_learned = s.receiver_size();
    let m2 = resp.to_bytes();
    let (w, req) = r.combine(&SumResponse::from_bytes(&m2).unwrap()).unwrap();
    let m3 = req.to_bytes();
    let share = s
        .decrypt(&DecryptRequest::from_bytes(&m3).unwrap())
        .unwrap();
    let m4 = share.to_bytes();
    let out = w.finish(&DecryptShare::from_bytes(&m4).unwrap()).unwrap();
    (out, b_learned, vec![m1, m2, m3, m4])
}

/// A tiny deterministic generator for test data.
pub fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}
