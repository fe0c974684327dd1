//! The evaluations of asynchronous steps.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use tessera_engine::report::RoundRecord;
use tessera_learn::Evaluation;
use tessera_orchestrator::StepEvaluations;

fn eval(n: u64) -> Evaluation {
    Evaluation {
        n_examples: n,
        loss_sum: 0.0,
        n_correct: n,
        auc: None,
        histogram: None,
    }
}

fn record(step: u32) -> RoundRecord {
    RoundRecord {
        round: step,
        ..RoundRecord::default()
    }
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_site_is_asked_once_per_step_and_never_for_an_older_one() {
    let mut steps = StepEvaluations::default();
    assert!(!steps.asks("a", 1), "no step taken yet");
    steps.open(1, record(1));
    assert!(steps.asks("a", 1));
    assert!(steps.receive("a", 1, eval(3)));
    assert!(!steps.asks("a", 1), "answered");
    steps.open(2, record(2));
    assert!(steps.asks("a", 2));
    steps.seen("b", 2);
    steps.open(3, record(3));
    assert!(steps.asks("b", 3));
    // b evaluated step 2: step 1 is behind it.
    assert!(!steps.asks("b", 1));
}

#[test]
fn a_step_closes_when_every_live_site_answered() {
    let mut steps = StepEvaluations::default();
    steps.open(1, record(1));
    steps.open(2, record(2));
    steps.receive("a", 1, eval(1));
    steps.receive("a", 2, eval(1));
    steps.receive("b", 2, eval(1));
    assert_eq!(steps.complete(&names(&["a", "b"])), [2]);
    assert_eq!(steps.complete(&names(&["a"])), [1, 2]);
    assert_eq!(steps.older_than(2), [1]);
    let (closed, received) = steps.close(2).unwrap();
    assert_eq!(closed.round, 2);
    assert_eq!(received.len(), 2);
    assert!(steps.close(2).is_none(), "closed once");
}

#[test]
fn a_late_answer_does_not_count_but_is_remembered() {
    let mut steps = StepEvaluations::default();
    steps.open(1, record(1));
    steps.close(1);
    assert!(!steps.receive("a", 1, eval(1)));
    steps.open(1, record(1));
    assert!(!steps.asks("a", 1), "already answered step 1");
}

#[test]
fn a_resumed_step_keeps_who_answered() {
    let mut steps = StepEvaluations::default();
    let received = BTreeMap::from([("a".to_string(), eval(2))]);
    steps.resume(4, record(4), received);
    assert!(steps.is_open(4));
    assert!(!steps.asks("a", 4));
    assert!(steps.asks("b", 4));
    assert_eq!(steps.complete(&names(&["a"])), [4]);
}
