//! Who a round needs: `min_participants` counts the participants a driver
//! can reach when a round would open, and a round below its quorum waits up
//! to its deadline for those who left it, instead of closing at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use tessera_aggregate::{StrategyConfig, StrategyKind};
use tessera_core::{FitStats, ParameterSet, ParticipantId, Tensor, Timestamp, Update};
use tessera_engine::{EngineConfig, EngineError, RoundEngine, RoundStatus};

fn params(values: &[f32]) -> ParameterSet {
    let mut p = ParameterSet::new();
    p.push(
        "w",
        Tensor::new(vec![values.len()], values.to_vec()).unwrap(),
    )
    .unwrap();
    p
}

fn update(v: f32) -> Update {
    Update {
        delta: params(&[v, v]),
        n_examples: 1,
        aux: None,
        stats: FitStats::default(),
    }
}

fn id(i: usize) -> ParticipantId {
    ParticipantId::new(format!("s{i:02}"))
}

fn engine(min_participants: usize, quorum: usize, deadline: Option<f64>) -> RoundEngine {
    let config = EngineConfig {
        rounds: 3,
        fraction: 1.0,
        min_participants,
        quorum,
        deadline: deadline.map(Duration::from_secs_f64),
        seed: 7,
        weighting: tessera_engine::Weighting::Examples,
    };
    let strategy = StrategyConfig::default()
        .build(StrategyKind::FedAvg)
        .unwrap();
    let mut e = RoundEngine::new(config, strategy, params(&[0.0, 0.0]));
    for i in 0..4 {
        e.register(id(i));
    }
    e
}

fn reachable(sites: &[usize]) -> BTreeSet<ParticipantId> {
    sites.iter().map(|&i| id(i)).collect()
}

#[test]
fn no_round_opens_with_fewer_reachable_participants_than_min_participants() {
    let mut e = engine(4, 1, None);
    match e.begin_round_among(Timestamp::ZERO, &reachable(&[0, 1, 2])) {
        Err(EngineError::NotEnoughParticipants {
            round: 1,
            needed: 4,
            available: 3,
        }) => {}
        other => panic!("a round opened with three of a minimum of four: {other:?}"),
    }
    assert_eq!(e.open_round(), None);
    let start = e
        .begin_round_among(Timestamp::ZERO, &reachable(&[0, 1, 2, 3]))
        .unwrap();
    assert_eq!(start.cohort.len(), 4);
}

#[test]
fn no_round_opens_when_the_reachable_cohort_cannot_meet_the_quorum() {
    let mut e = engine(1, 4, Some(60.0));
    assert!(matches!(
        e.begin_round_among(Timestamp::ZERO, &reachable(&[0, 1, 2])),
        Err(EngineError::NotEnoughParticipants { needed: 4, .. })
    ));
    // A quorum that no cohort of the registered participants can meet is
    // still the plan's error, not a wait.
    let mut e = engine(1, 5, None);
    assert!(matches!(
        e.begin_round_among(Timestamp::ZERO, &reachable(&[0, 1, 2, 3])),
        Err(EngineError::State(_))
    ));
}

#[test]
fn the_cohort_is_drawn_from_the_reachable_participants_only() {
    let mut e = engine(1, 1, None);
    let start = e
        .begin_round_among(Timestamp::ZERO, &reachable(&[1, 3]))
        .unwrap();
    assert_eq!(start.cohort, vec![id(1), id(3)]);
}

#[test]
fn a_round_below_quorum_waits_up_to_its_deadline_for_who_left() {
    let mut e = engine(1, 4, Some(60.0));
    e.begin_round(Timestamp::ZERO).unwrap();
    for i in 0..3 {
        e.submit(Timestamp::from_secs_f64(1.0), &id(i), 1, &update(1.0))
            .unwrap();
    }
    e.report_dropout(&id(3));
    assert!(
        e.poll(Timestamp::from_secs_f64(2.0)).is_none(),
        "a round three of a quorum of four closed before its deadline"
    );
    assert_eq!(e.awaited(), vec![id(3)]);
    // The site comes back and is taken back into the round.
    assert!(e.readmit(&id(3), Timestamp::from_secs_f64(30.0)));
    assert!(!e.readmit(&id(3), Timestamp::from_secs_f64(30.0)));
    e.submit(Timestamp::from_secs_f64(31.0), &id(3), 1, &update(1.0))
        .unwrap();
    let outcome = e.poll(Timestamp::from_secs_f64(31.0)).unwrap();
    assert_eq!(outcome.status, RoundStatus::Completed);
    assert_eq!(outcome.accepted.len(), 4);
}

#[test]
fn a_round_below_quorum_closes_at_its_deadline_if_nobody_comes_back() {
    let mut e = engine(1, 4, Some(60.0));
    e.begin_round(Timestamp::ZERO).unwrap();
    for i in 0..3 {
        e.submit(Timestamp::ZERO, &id(i), 1, &update(1.0)).unwrap();
    }
    e.report_dropout(&id(3));
    assert!(e.poll(Timestamp::from_secs_f64(59.0)).is_none());
    let outcome = e.poll(Timestamp::from_secs_f64(60.0)).unwrap();
    assert_eq!(
        outcome.status,
        RoundStatus::QuorumNotMet {
            accepted: 3,
            needed: 4
        }
    );
    assert!(!e.readmit(&id(3), Timestamp::from_secs_f64(61.0)));
}

#[test]
fn a_round_that_meets_its_quorum_takes_nobody_back_and_closes_at_once() {
    let mut e = engine(1, 2, Some(60.0));
    e.begin_round(Timestamp::ZERO).unwrap();
    for i in 0..3 {
        e.submit(Timestamp::ZERO, &id(i), 1, &update(1.0)).unwrap();
    }
    e.report_dropout(&id(3));
    assert!(!e.readmit(&id(3), Timestamp::ZERO));
    assert!(e.awaited().is_empty());
    assert_eq!(
        e.poll(Timestamp::ZERO).unwrap().status,
        RoundStatus::Completed
    );
}

#[test]
fn without_a_deadline_a_round_below_quorum_closes_when_nobody_is_left() {
    let mut e = engine(1, 4, None);
    e.begin_round(Timestamp::ZERO).unwrap();
    e.submit(Timestamp::ZERO, &id(0), 1, &update(1.0)).unwrap();
    for i in 1..4 {
        e.report_dropout(&id(i));
    }
    assert!(matches!(
        e.poll(Timestamp::ZERO).unwrap().status,
        RoundStatus::QuorumNotMet { .. }
    ));
}

/// Rounds evaluated on other test rows than the evaluated round before them
/// are flagged; unevaluated rounds (no test rows) are skipped.
#[test]
fn rounds_evaluated_on_other_test_rows_are_flagged() {
    use tessera_engine::report::{RoundRecord, population_changes, population_line};
    let rounds: Vec<RoundRecord> = [(1, 254), (2, 254), (3, 0), (4, 209), (5, 209), (6, 254)]
        .into_iter()
        .map(|(round, n_test)| RoundRecord {
            round,
            n_test,
            ..RoundRecord::default()
        })
        .collect();
    let changes = population_changes(&rounds);
    let flagged: Vec<(u32, u64, u64)> = changes
        .iter()
        .map(|c| (c.round, c.n_test, c.previous_n_test))
        .collect();
    assert_eq!(flagged, vec![(4, 209, 254), (6, 254, 209)]);
    let line = population_line(&changes).unwrap();
    assert!(
        line.contains("round 4 on 209 test rows (was 254)"),
        "{line}"
    );
    assert!(population_line(&population_changes(&rounds[..2])).is_none());
}
