//! Central DP in the round engine, checked by an independent computation:
//! the released model moves by the mean of the clipped updates plus Gaussian
//! noise of standard deviation `z C / n`, each release is in the ledger, and
//! a round past the budget does not open.

#![allow(clippy::unwrap_used)]

use tessera_aggregate::{RobustConfig, RobustRule, StrategyConfig, StrategyKind};
use tessera_core::{FitStats, ParameterSet, ParticipantId, Tensor, Timestamp, Update};
use tessera_engine::{EngineConfig, EngineError, RoundEngine};
use tessera_privacy::{Budgets, CentralDp, Ledger};

const D: usize = 40_000;

fn params(values: Vec<f32>) -> ParameterSet {
    let mut p = ParameterSet::new();
    p.push("w", Tensor::new(vec![values.len()], values).unwrap())
        .unwrap();
    p
}

fn update(values: Vec<f32>, n: u64) -> Update {
    Update {
        delta: params(values),
        n_examples: n,
        aux: None,
        stats: FitStats::default(),
    }
}

fn config(rounds: u32) -> EngineConfig {
    EngineConfig {
        rounds,
        fraction: 1.0,
        min_participants: 1,
        quorum: 1,
        deadline: None,
        seed: 7,
        weighting: tessera_engine::Weighting::Examples,
    }
}

fn engine(rounds: u32, budget: Option<f64>) -> RoundEngine {
    let config = config(rounds);
    let strategy = StrategyConfig::default()
        .build(StrategyKind::FedAvg)
        .unwrap();
    let dp = CentralDp::new(2.0, 0.5, None, 4, [9; 32]).unwrap();
    let ledger = Ledger::new(Budgets {
        delta: 1e-5,
        run: budget,
        participants: Default::default(),
    });
    let mut e = RoundEngine::new(config, strategy, params(vec![0.0; D])).with_privacy(dp, ledger);
    for i in 0..4 {
        e.register(ParticipantId::new(format!("s{i}")));
    }
    e
}

/// Four updates: two within the clipping norm 0.5, two far beyond it, with
/// very different example counts (which DP must ignore).
fn deltas() -> Vec<(Vec<f32>, u64)> {
    let spread = |scale: f32, phase: usize| -> Vec<f32> {
        (0..D)
            .map(|i| scale * (((i + phase) % 7) as f32 - 3.0) / (D as f32).sqrt())
            .collect()
    };
    vec![
        (spread(0.1, 0), 10),
        (spread(0.2, 3), 1000),
        (spread(5.0, 1), 1),
        (spread(50.0, 5), 50),
    ]
}

#[test]
fn the_release_is_the_clipped_mean_plus_the_stated_noise() {
    let mut e = engine(1, None);
    let start = e.begin_round(Timestamp::ZERO).unwrap();
    for (i, (values, n)) in deltas().into_iter().enumerate() {
        e.submit(Timestamp::ZERO, &start.cohort[i], 1, &update(values, n))
            .unwrap();
    }
    let outcome = e.poll(Timestamp(1)).unwrap();
    let (release, entry) = outcome.privacy.clone().unwrap();
    assert_eq!(release.unclipped, 2);
    assert_eq!(release.updates, 4);
    assert_eq!(entry.release, 1);
    assert!((release.noise_std - 2.0 * 0.5 / 4.0).abs() < 1e-12);

    // Independently: clip each update to 0.5, average with equal weights.
    let mut expected = vec![0f64; D];
    for (values, _) in deltas() {
        let norm = values
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        let scale = if norm > 0.5 { 0.5 / norm } else { 1.0 };
        for (e, v) in expected.iter_mut().zip(values) {
            *e += f64::from(v) * scale / 4.0;
        }
    }
    let residual: Vec<f64> = e
        .global()
        .values()
        .zip(&expected)
        .map(|(got, want)| f64::from(got) - want)
        .collect();
    let mean = residual.iter().sum::<f64>() / D as f64;
    let std = (residual.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / D as f64).sqrt();
    // With 40,000 coordinates the sample std is within 1% of the truth (5 sigma).
    assert!(
        (std / 0.25 - 1.0).abs() < 0.02,
        "noise std {std}, expected 0.25"
    );
    assert!(
        mean.abs() < 0.25 * 5.0 / (D as f64).sqrt(),
        "noise mean {mean}"
    );
}

#[test]
fn rounds_past_the_budget_do_not_open() {
    // Rounds at z = 2 spend 2.17, 3.19, 4.01 at delta 1e-5 (dp_accounting):
    // a budget of 3 allows one.
    let mut e = engine(3, Some(3.0));
    match e.check_privacy_forecast() {
        Err(EngineError::Privacy(p)) => {
            let message = p.to_string();
            assert!(
                message.contains("the plan's 3 remaining rounds"),
                "{message}"
            );
            assert!(
                message.starts_with("run privacy budget exceeded"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let start = e.begin_round(Timestamp::ZERO).unwrap();
    for id in &start.cohort {
        e.submit(Timestamp::ZERO, id, 1, &update(vec![0.01; D], 1))
            .unwrap();
    }
    e.poll(Timestamp(1)).unwrap();
    let before = e.global().clone();
    let refused = match e.begin_round(Timestamp(2)) {
        Err(err) => err.to_string(),
        Ok(start) => panic!("round {} opened past the budget", start.round),
    };
    assert!(
        refused.contains("round 2 would bring the spend"),
        "{refused}"
    );
    assert_eq!(e.global(), &before, "nothing released");
    let (_, ledger) = e.privacy().unwrap();
    assert_eq!(ledger.entries().len(), 1);
    assert!((ledger.run_epsilon() - 2.165_715_659).abs() < 1e-6);
}

#[test]
fn norm_bounding_and_robust_rules_apply_in_the_engine() {
    let config = config(1);
    let strategy = StrategyConfig::default()
        .build(StrategyKind::FedAvg)
        .unwrap();
    let robust = RobustConfig {
        rule: RobustRule::Median,
        norm_bound: Some(10.0),
        ..RobustConfig::default()
    };
    let mut e = RoundEngine::new(config, strategy, params(vec![0.0, 0.0])).with_robust(robust);
    for i in 0..3 {
        e.register(ParticipantId::new(format!("s{i}")));
    }
    let start = e.begin_round(Timestamp::ZERO).unwrap();
    let values = [vec![1.0, 2.0], vec![3.0, -1.0], vec![3000.0, 4000.0]];
    for (id, v) in start.cohort.iter().zip(values) {
        e.submit(Timestamp::ZERO, id, 1, &update(v, 1)).unwrap();
    }
    e.poll(Timestamp(1)).unwrap();
    // The outlier is bounded to (6, 8) first; the medians are 3 and 2.
    assert_eq!(e.global().values().collect::<Vec<_>>(), [3.0, 2.0]);
}
