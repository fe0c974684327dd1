//! What the round engine hands its strategy beyond the round's mean: who
//! was asked and why those whose updates are missing are missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_aggregate::{
    AggregateError, Attendance, Failure, FedAvg, Instructions, RoundAggregate, Strategy,
};
use tessera_core::{FitStats, ParameterSet, ParticipantId, Tensor, Timestamp, Update};
use tessera_engine::{EngineConfig, RoundEngine, RoundStatus};

fn params(values: &[f32]) -> ParameterSet {
    let mut p = ParameterSet::new();
    p.push(
        "w",
        Tensor::new(vec![values.len()], values.to_vec()).unwrap(),
    )
    .unwrap();
    p
}

fn update(values: &[f32]) -> Update {
    Update {
        delta: params(values),
        n_examples: 1,
        aux: None,
        stats: FitStats::default(),
    }
}

fn id(i: usize) -> ParticipantId {
    ParticipantId::new(format!("s{i:02}"))
}

/// FedAvg that records every attendance it is given and, unless it
/// accepts failures, refuses a round that has any (Flower's
/// `accept_failures = False`).
struct Recording {
    seen: Arc<Mutex<Vec<Attendance>>>,
    accept_failures: bool,
    inner: FedAvg,
}

impl Strategy for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }

    fn configure_fit(&self, global: &ParameterSet, site: &ParticipantId) -> Instructions {
        self.inner.configure_fit(global, site)
    }

    fn aggregate_fit(
        &mut self,
        global: &ParameterSet,
        round: &RoundAggregate,
        attendance: &Attendance,
    ) -> Result<ParameterSet, AggregateError> {
        self.seen.lock().unwrap().push(attendance.clone());
        if !self.accept_failures && !attendance.is_complete() {
            return Err(AggregateError::Config(format!(
                "{} of {} failed",
                attendance.failures.len(),
                attendance.cohort.len()
            )));
        }
        self.inner.aggregate_fit(global, round, attendance)
    }
}

fn engine(accept_failures: bool) -> (RoundEngine, Arc<Mutex<Vec<Attendance>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let strategy = Recording {
        seen: Arc::clone(&seen),
        accept_failures,
        inner: FedAvg { server_lr: 1.0 },
    };
    let config = EngineConfig {
        rounds: 2,
        fraction: 1.0,
        min_participants: 1,
        quorum: 1,
        deadline: Some(Duration::from_secs(10)),
        seed: 7,
        weighting: tessera_engine::Weighting::Examples,
    };
    let mut e = RoundEngine::new(config, Box::new(strategy), params(&[0.0]));
    for i in 0..4 {
        e.register(id(i));
    }
    (e, seen)
}

/// Round 1 of four: s00 counts, s01 drops out, s02 sends a malformed
/// update, s03 never answers.
fn eventful_round(e: &mut RoundEngine) -> tessera_engine::RoundOutcome {
    let t = Timestamp::ZERO;
    e.begin_round(t).unwrap();
    e.submit(t, &id(0), 1, &update(&[2.0])).unwrap();
    e.report_dropout(&id(1));
    assert!(e.submit(t, &id(2), 1, &update(&[1.0, 1.0])).is_err());
    assert!(
        e.poll(Timestamp::ZERO.plus(Duration::from_secs(9)))
            .is_none()
    );
    e.poll(Timestamp::ZERO.plus(Duration::from_secs(10)))
        .unwrap()
}

#[test]
fn the_strategy_sees_who_was_asked_and_why_updates_are_missing() {
    let (mut e, seen) = engine(true);
    let outcome = eventful_round(&mut e);
    assert_eq!(outcome.status, RoundStatus::Completed);
    assert_eq!(e.global().values().collect::<Vec<_>>(), [2.0]);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let a = &seen[0];
    assert_eq!(a.cohort, [id(0), id(1), id(2), id(3)]);
    assert_eq!(a.counted, [id(0)]);
    assert_eq!(a.failures.len(), 3);
    assert_eq!(a.failures[0], (id(1), Failure::Dropped));
    assert!(
        matches!(&a.failures[1], (who, Failure::Refused(why)) if *who == id(2) && why.contains("layout")),
        "{:?}",
        a.failures[1]
    );
    assert_eq!(a.failures[2], (id(3), Failure::TimedOut));
}

#[test]
fn a_strategy_may_refuse_a_round_with_failures() {
    let (mut e, seen) = engine(false);
    let outcome = eventful_round(&mut e);
    assert_eq!(
        outcome.status,
        RoundStatus::Failed("strategy config: 3 of 4 failed".into())
    );
    assert_eq!(e.global().values().collect::<Vec<_>>(), [0.0]);
    // A round where everyone counts goes through.
    let t = Timestamp(100);
    e.begin_round(t).unwrap();
    for i in 0..4 {
        e.submit(t, &id(i), 2, &update(&[1.0])).unwrap();
    }
    assert_eq!(e.poll(t).unwrap().status, RoundStatus::Completed);
    assert_eq!(e.global().values().collect::<Vec<_>>(), [1.0]);
    assert!(seen.lock().unwrap()[1].is_complete());
}
