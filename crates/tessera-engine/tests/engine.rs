//! The round engine as a state machine: cohorts, acceptance, deadlines,
//! quorum, and order-independent aggregation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use proptest::prelude::*;
use tessera_aggregate::{StrategyConfig, StrategyKind};
use tessera_core::{FitStats, ParameterSet, ParticipantId, SeededRng, Tensor, Timestamp, Update};
use tessera_engine::{EngineConfig, Rejection, RoundEngine, RoundStatus};

fn params(values: &[f32]) -> ParameterSet {
    let mut p = ParameterSet::new();
    p.push(
        "w",
        Tensor::new(vec![values.len()], values.to_vec()).unwrap(),
    )
    .unwrap();
    p
}

fn update(values: &[f32], n: u64) -> Update {
    Update {
        delta: params(values),
        n_examples: n,
        aux: None,
        stats: FitStats::default(),
    }
}

fn config(n_rounds: u32) -> EngineConfig {
    EngineConfig {
        rounds: n_rounds,
        fraction: 1.0,
        min_participants: 1,
        quorum: 1,
        deadline: None,
        seed: 7,
        weighting: tessera_engine::Weighting::Examples,
    }
}

fn engine(config: EngineConfig, n_sites: usize) -> RoundEngine {
    let strategy = StrategyConfig::default()
        .build(StrategyKind::FedAvg)
        .unwrap();
    let mut e = RoundEngine::new(config, strategy, params(&[0.0, 0.0]));
    for i in 0..n_sites {
        e.register(ParticipantId::new(format!("s{i:02}")));
    }
    e
}

fn id(i: usize) -> ParticipantId {
    ParticipantId::new(format!("s{i:02}"))
}

#[test]
fn a_round_waits_for_its_cohort_then_averages() {
    let mut e = engine(config(2), 3);
    let t0 = Timestamp::ZERO;
    let start = e.begin_round(t0).unwrap();
    assert_eq!(start.cohort, [id(0), id(1), id(2)]);
    assert!(e.begin_round(t0).is_err(), "one round at a time");
    e.submit(t0, &id(0), 1, &update(&[1.0, 1.0], 1)).unwrap();
    e.submit(t0, &id(2), 1, &update(&[4.0, -2.0], 2)).unwrap();
    assert!(e.poll(Timestamp(10)).is_none(), "s01 has not answered");
    e.report_dropout(&id(1));
    let outcome = e.poll(Timestamp(20)).unwrap();
    assert_eq!(outcome.status, RoundStatus::Completed);
    assert_eq!(outcome.accepted, [id(0), id(2)]);
    assert_eq!(outcome.dropped, [id(1)]);
    assert_eq!(e.global().values().collect::<Vec<_>>(), [3.0, -1.0]);
}

#[test]
fn rejections_name_their_reason_and_the_round_goes_on() {
    let mut e = engine(config(1), 2);
    let t = Timestamp::ZERO;
    assert_eq!(
        e.submit(t, &id(0), 1, &update(&[1.0, 1.0], 1)),
        Err(Rejection::WrongRound { got: 1, open: None })
    );
    e.begin_round(t).unwrap();
    assert_eq!(
        e.submit(
            t,
            &ParticipantId::new("mallory"),
            1,
            &update(&[1.0, 1.0], 1)
        ),
        Err(Rejection::NotInCohort)
    );
    let bad = e.submit(t, &id(0), 1, &update(&[1.0], 1)).unwrap_err();
    assert!(
        matches!(&bad, Rejection::Invalid(r) if r.contains("expected 1 tensors") || r.contains("shape")),
        "{bad}"
    );
    assert_eq!(
        e.submit(t, &id(0), 1, &update(&[1.0, 1.0], 1)),
        Err(Rejection::NotPending)
    );
    let nan = e
        .submit(t, &id(1), 1, &update(&[f32::NAN, 1.0], 1))
        .unwrap_err();
    assert!(nan.to_string().contains("non-finite"), "{nan}");
    let outcome = e.poll(t).unwrap();
    assert_eq!(outcome.rejected.len(), 2);
    assert_eq!(
        outcome.status,
        RoundStatus::QuorumNotMet {
            accepted: 0,
            needed: 1
        }
    );
    assert_eq!(
        e.global().values().collect::<Vec<_>>(),
        [0.0, 0.0],
        "a failed round leaves the model"
    );
    assert!(e.is_finished());
}

#[test]
fn a_batch_of_updates_has_the_outcome_of_submitting_each_in_turn() {
    let mut c = config(1);
    c.deadline = Some(Duration::from_secs(5));
    let at = Timestamp::from_secs_f64;
    let mallory = ParticipantId::new("mallory");
    let (ok, short, nan) = (
        update(&[1.0, -2.0], 3),
        update(&[1.0], 1),
        update(&[f32::NAN, 1.0], 1),
    );
    let (large, other) = (update(&[3e5, 0.25], 1000), update(&[0.5, 0.5], 7));
    let batch = [
        (at(1.0), &id(0), &ok),
        (at(1.0), &mallory, &ok),
        (at(1.5), &id(1), &short),
        (at(2.0), &id(0), &other),
        (at(2.0), &id(2), &nan),
        (at(9.0), &id(3), &ok),
        (at(3.0), &id(4), &large),
        (at(4.0), &id(5), &other),
    ];
    let mut one_by_one = engine(c.clone(), 6);
    let mut batched = engine(c, 6);
    for e in [&mut one_by_one, &mut batched] {
        e.begin_round(Timestamp::ZERO).unwrap();
    }
    let expected: Vec<_> = batch
        .iter()
        .map(|&(t, from, u)| one_by_one.submit(t, from, 1, u))
        .collect();
    let got = batched.submit_many(1, &batch);
    assert_eq!(got, expected);
    assert_eq!(got[1], Err(Rejection::NotInCohort));
    assert_eq!(got[3], Err(Rejection::NotPending));
    assert_eq!(got[5], Err(Rejection::Late));
    assert!(matches!(&got[4], Err(Rejection::Invalid(r)) if r.contains("non-finite")));
    assert_eq!(got.iter().filter(|r| r.is_ok()).count(), 3);
    let (a, b) = (
        one_by_one.poll(at(6.0)).unwrap(),
        batched.poll(at(6.0)).unwrap(),
    );
    assert_eq!(
        (&a.accepted, &a.rejected, &a.stragglers),
        (&b.accepted, &b.rejected, &b.stragglers)
    );
    let bits = |e: &RoundEngine| e.global().values().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(bits(&one_by_one), bits(&batched));
    assert_eq!(
        batched.submit_many(1, &batch[..1]),
        [Err(Rejection::WrongRound { got: 1, open: None })]
    );
}

#[test]
fn the_deadline_cuts_off_stragglers() {
    let mut c = config(1);
    c.deadline = Some(Duration::from_secs(5));
    let mut e = engine(c, 3);
    let start = e.begin_round(Timestamp::from_secs_f64(1.0)).unwrap();
    assert_eq!(start.deadline, Some(Timestamp::from_secs_f64(6.0)));
    e.submit(
        Timestamp::from_secs_f64(2.0),
        &id(0),
        1,
        &update(&[1.0, 0.0], 1),
    )
    .unwrap();
    assert_eq!(
        e.submit(
            Timestamp::from_secs_f64(6.5),
            &id(1),
            1,
            &update(&[1.0, 0.0], 1)
        ),
        Err(Rejection::Late)
    );
    assert!(e.poll(Timestamp::from_secs_f64(5.9)).is_none());
    let outcome = e.poll(Timestamp::from_secs_f64(6.0)).unwrap();
    assert_eq!(outcome.stragglers, [id(1), id(2)]);
    assert_eq!(outcome.status, RoundStatus::Completed);
}

#[test]
fn cohorts_are_seeded_samples() {
    let mut c = config(3);
    c.fraction = 0.3;
    c.min_participants = 2;
    let mut a = engine(c.clone(), 10);
    let mut b = engine(c, 10);
    let mut seen = Vec::new();
    for round in 1..=3 {
        let ca = a.begin_round(Timestamp::ZERO).unwrap().cohort;
        let cb = b.begin_round(Timestamp::ZERO).unwrap().cohort;
        assert_eq!(ca, cb);
        assert_eq!(ca.len(), 3, "ceil(0.3 * 10)");
        assert!(ca.windows(2).all(|w| w[0] < w[1]));
        for who in &ca {
            a.report_dropout(who);
            b.report_dropout(who);
        }
        a.poll(Timestamp::ZERO).unwrap();
        b.poll(Timestamp::ZERO).unwrap();
        seen.push(ca);
        assert_eq!(a.rounds_closed(), round);
    }
    assert!(
        seen[0] != seen[1] || seen[1] != seen[2],
        "cohorts vary across rounds"
    );
    let mut small = engine(config(1), 0);
    assert!(
        small
            .begin_round(Timestamp::ZERO)
            .unwrap_err()
            .to_string()
            .contains("needs at least 1 participants")
    );
}

proptest! {
    /// The same updates in any arrival order give the same global parameters, bit for bit.
    #[test]
    fn arrival_order_does_not_change_the_model(
        updates in proptest::collection::vec((proptest::collection::vec(-10f32..10.0, 2), 1u64..1000), 2..12),
        seed in any::<u64>(),
    ) {
        let n = updates.len();
        let run = |order: &[usize]| {
            let mut e = engine(config(1), n);
            e.begin_round(Timestamp::ZERO).unwrap();
            for &i in order {
                e.submit(Timestamp::ZERO, &id(i), 1, &update(&updates[i].0, updates[i].1)).unwrap();
            }
            e.poll(Timestamp::ZERO).unwrap();
            e.global().values().map(f32::to_bits).collect::<Vec<_>>()
        };
        let forward: Vec<usize> = (0..n).collect();
        let mut shuffled = forward.clone();
        SeededRng::new(seed).shuffle(&mut shuffled);
        prop_assert_eq!(run(&forward), run(&shuffled));
    }
}

/// With `weighting = "equal"` a site that claims a million examples weighs
/// what one that claims one does; by examples it takes the mean over.
#[test]
fn equal_weighting_takes_no_weight_from_example_counts() {
    let run = |weighting| {
        let mut e = engine(
            EngineConfig {
                weighting,
                ..config(1)
            },
            2,
        );
        let t = Timestamp::ZERO;
        e.begin_round(t).unwrap();
        e.submit(t, &id(0), 1, &update(&[1.0, 0.0], 1)).unwrap();
        e.submit(t, &id(1), 1, &update(&[0.0, 1.0], 1_000_000))
            .unwrap();
        e.poll(Timestamp(10)).unwrap();
        e.global().values().collect::<Vec<f32>>()
    };
    assert_eq!(run(tessera_engine::Weighting::Equal), [0.5, 0.5]);
    let by_examples = run(tessera_engine::Weighting::Examples);
    assert!(
        by_examples[0] < 1e-5 && by_examples[1] > 0.99999,
        "{by_examples:?}"
    );
}

/// A participant that lies about its IFCA update (a fraction of a share, to
/// move a cluster by its inverse, or changes to two clusters) is refused by
/// name, and the round goes on with the honest one.
#[test]
fn an_ifca_update_that_is_not_one_clusters_is_refused() {
    let strategy = StrategyConfig::default().build(StrategyKind::Ifca).unwrap();
    let (a, b) = (params(&[0.0, 0.0]), params(&[5.0, 5.0]));
    let global = tessera_aggregate::Ifca::stack(&[a, b], &[0.0, 0.0]).unwrap();
    let mut e = RoundEngine::new(config(1), strategy, global);
    for i in 0..3 {
        e.register(id(i));
    }
    let t = Timestamp::ZERO;
    e.begin_round(t).unwrap();
    let stacked = |a: &[f32], b: &[f32], shares: &[f32]| Update {
        delta: tessera_aggregate::Ifca::stack(&[params(a), params(b)], shares).unwrap(),
        n_examples: 10,
        aux: None,
        stats: FitStats::default(),
    };
    let tiny = stacked(&[1.0, 1.0], &[0.0, 0.0], &[1e-4, 0.0]);
    let Err(Rejection::Invalid(why)) = e.submit(t, &id(0), 1, &tiny) else {
        panic!("a fraction of a share counted");
    };
    assert!(why.contains("one 1 and zeros"), "{why}");
    let both = stacked(&[1.0, 1.0], &[1.0, 0.0], &[1.0, 0.0]);
    let Err(Rejection::Invalid(why)) = e.submit(t, &id(1), 1, &both) else {
        panic!("an update of two clusters counted");
    };
    assert!(why.contains("changes cluster 1 too"), "{why}");
    e.submit(
        t,
        &id(2),
        1,
        &stacked(&[0.0, 0.0], &[2.0, -2.0], &[0.0, 1.0]),
    )
    .unwrap();
    let outcome = e.poll(Timestamp(1)).unwrap();
    assert_eq!(outcome.status, RoundStatus::Completed);
    assert_eq!(outcome.accepted, [id(2)]);
    let (clusters, shares) = tessera_aggregate::Ifca::unstack(e.global(), 2).unwrap();
    assert_eq!(clusters[0].values().collect::<Vec<_>>(), [0.0, 0.0]);
    assert_eq!(clusters[1].values().collect::<Vec<_>>(), [7.0, 3.0]);
    assert_eq!(shares, [0.0, 1.0]);
}
