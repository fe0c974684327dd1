//! The evaluation round on virtual time.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use tessera_engine::report::{EvaluationView, RoundRecord, mean_site_accuracy};
use tessera_learn::Evaluation;
use tessera_orchestrator::{EvaluationRound, NotAsked, Timestamp, completed};

fn at(seconds: u64) -> Timestamp {
    Timestamp(seconds * 1_000_000)
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// An evaluation of `n` rows of which `correct` right.
fn eval(n: u64, correct: u64) -> Evaluation {
    Evaluation {
        n_examples: n,
        loss_sum: (n - correct) as f64,
        n_correct: correct,
        auc: None,
        histogram: None,
    }
}

fn never_stale(_: &str) -> bool {
    false
}

#[test]
fn closes_once_every_target_answered() {
    let mut round = EvaluationRound::open(3, names(&["a", "b"]), at(60));
    assert!(round.awaits("a"));
    round.receive("a", 3, eval(10, 5)).unwrap();
    assert!(!round.awaits("a"), "answered once");
    assert!(!round.is_complete());
    assert!(round.give_up(at(10), never_stale).is_empty());
    round.receive("b", 3, eval(30, 30)).unwrap();
    assert!(round.is_complete());
    let (sites, evaluations) = round.results();
    assert_eq!(sites, ["a", "b"]);
    assert_eq!(evaluations.len(), 2);
}

#[test]
fn refuses_other_rounds_and_other_sites() {
    let mut round = EvaluationRound::open(3, names(&["a"]), at(60));
    assert_eq!(
        round.receive("a", 2, eval(1, 1)),
        Err(NotAsked {
            round: 3,
            got: 2,
            site: "a".into()
        })
    );
    assert!(round.receive("z", 3, eval(1, 1)).is_err());
    assert!(round.received().is_empty());
    assert!(!round.awaits("z"));
}

#[test]
fn gives_up_on_silent_sites_and_at_the_deadline() {
    let mut round = EvaluationRound::open(1, names(&["a", "b", "c"]), at(60));
    round.receive("a", 1, eval(10, 10)).unwrap();
    // b is silent; c is live: only b is given up on before the deadline.
    let missing = round.give_up(at(30), |s| s == "b");
    assert_eq!(missing, ["b"]);
    assert_eq!(round.targets(), &names(&["a", "c"]));
    assert!(!round.is_complete());
    // A microsecond before the deadline c is still waited for.
    assert!(
        round
            .give_up(Timestamp(at(60).0 - 1), never_stale)
            .is_empty()
    );
    assert_eq!(round.give_up(at(60), never_stale), ["c"]);
    assert!(round.is_complete());
    let (sites, _) = round.results();
    assert_eq!(sites, ["a"]);
}

#[test]
fn an_answered_site_is_never_given_up_on() {
    let mut round = EvaluationRound::open(1, names(&["a"]), at(5));
    round.receive("a", 1, eval(1, 1)).unwrap();
    assert!(round.give_up(at(100), |_| true).is_empty());
    assert!(round.is_complete());
}

#[test]
fn rewaiting_extends_the_deadline() {
    let mut round = EvaluationRound::open(1, names(&["a"]), at(5));
    round.rewait(names(&["a", "b"]), at(50));
    assert_eq!(round.until(), at(50));
    assert!(round.give_up(at(10), never_stale).is_empty());
    assert!(round.awaits("b"));
}

#[test]
fn resumed_rounds_keep_what_was_received() {
    let received = BTreeMap::from([("a".to_string(), eval(4, 2))]);
    let round = EvaluationRound::resumed(7, names(&["a", "b"]), received, at(9));
    assert_eq!(round.round(), 7);
    assert!(!round.awaits("a"));
    assert!(round.awaits("b"));
}

#[test]
fn the_record_takes_the_views_metrics_and_keeps_the_rest() {
    let evaluations = [eval(10, 5), eval(30, 30)];
    let record = RoundRecord {
        round: 4,
        status: "completed".into(),
        accepted: 2,
        train_loss: 0.25,
        ..RoundRecord::default()
    };
    let view = EvaluationView::pooled(&evaluations);
    let closed = completed(&record, &view, 1.5);
    assert_eq!(closed.round, 4);
    assert_eq!(closed.status, "completed");
    assert_eq!(closed.accepted, 2);
    assert_eq!(closed.train_loss, 0.25);
    assert_eq!(closed.seconds, 1.5);
    assert_eq!(closed.n_test, 40);
    assert_eq!(closed.accuracy, 35.0 / 40.0);
    assert_eq!(closed.mean_site_accuracy, mean_site_accuracy(&evaluations));
    assert_eq!(closed.mean_site_accuracy, 0.75);
    assert_eq!(closed.loss, Evaluation::pool(&evaluations).mean_loss());
}
