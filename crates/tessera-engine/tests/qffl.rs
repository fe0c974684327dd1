//! q-FFL through the round engine: two rounds of updates with their start
//! losses, in every arrival order, each round's new model against q-FedAvg's
//! step computed here in f64 from the paper's formula (the second round's
//! weights taken against the first's mean training loss, which must
//! cancel); and an update whose start loss is missing or out of range is
//! refused with its reason while the others count.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tessera_aggregate::{StrategyConfig, StrategyKind};
use tessera_core::{FitStats, ParameterSet, ParticipantId, Tensor, Timestamp, Update};
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

fn update(delta: &[f32], n: u64, start: Option<f64>, train: f64) -> Update {
    Update {
        delta: params(delta),
        n_examples: n,
        aux: None,
        stats: FitStats {
            n_steps: 1,
            mean_train_loss: train,
            start_loss: start,
        },
    }
}

const Q: f32 = 2.0;
const L: f32 = 3.0;

fn engine() -> RoundEngine {
    let config = EngineConfig {
        rounds: 2,
        fraction: 1.0,
        min_participants: 1,
        quorum: 1,
        deadline: None,
        seed: 3,
        weighting: tessera_engine::Weighting::Examples,
    };
    let strategy = StrategyConfig {
        q: Some(Q),
        lipschitz: Some(L),
        ..Default::default()
    }
    .build(StrategyKind::Qffl)
    .unwrap();
    let mut e = RoundEngine::new(config, strategy, params(&[0.5, -1.0, 2.0]));
    for i in 0..4 {
        e.register(ParticipantId::new(format!("s{i}")));
    }
    e
}

/// q-FedAvg's step from `global` over `updates`, as the paper writes it.
fn paper(global: &[f64], updates: &[Update]) -> Vec<f64> {
    let (l, q) = (f64::from(L), f64::from(Q));
    let mut num = vec![0.0f64; global.len()];
    let mut den = 0.0;
    for u in updates {
        let f = u.stats.start_loss.unwrap();
        let p = u.n_examples as f64;
        let dw: Vec<f64> = u.delta.values().map(|d| -l * f64::from(d)).collect();
        let sq: f64 = dw.iter().map(|x| x * x).sum();
        for (n, x) in num.iter_mut().zip(&dw) {
            *n += p * f.powf(q) * x;
        }
        den += p * (q * f.powf(q - 1.0) * sq + l * f.powf(q));
    }
    global.iter().zip(num).map(|(w, n)| w - n / den).collect()
}

#[test]
fn the_engines_rounds_are_q_fedavgs_steps_in_any_order() {
    let rounds = [
        [
            update(&[0.2, -0.1, 0.05], 30, Some(0.7), 0.6),
            update(&[-0.3, 0.2, 0.0], 10, Some(2.2), 1.9),
            update(&[0.05, 0.05, -0.4], 50, Some(0.2), 0.15),
            update(&[0.1, -0.3, 0.2], 20, Some(1.1), 0.8),
        ],
        [
            update(&[0.1, 0.0, -0.05], 30, Some(0.5), 0.45),
            update(&[-0.2, 0.1, 0.1], 10, Some(1.6), 1.2),
            update(&[0.0, 0.02, -0.1], 50, Some(0.15), 0.1),
            update(&[0.05, -0.1, 0.1], 20, Some(0.9), 0.7),
        ],
    ];
    let mut models = Vec::new();
    for order in [[0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]] {
        let mut e = engine();
        let mut expected: Vec<f64> = e.global().values().map(f64::from).collect();
        for (r, updates) in rounds.iter().enumerate() {
            let round = r as u32 + 1;
            e.begin_round(Timestamp::ZERO).unwrap();
            for &k in &order {
                let site = ParticipantId::new(format!("s{k}"));
                e.submit(Timestamp::ZERO, &site, round, &updates[k])
                    .unwrap();
            }
            let outcome = e.poll(Timestamp(1)).unwrap();
            assert_eq!(outcome.status, RoundStatus::Completed);
            expected = paper(&expected, updates);
            let got: Vec<f64> = e.global().values().map(f64::from).collect();
            for (g, w) in got.iter().zip(&expected) {
                assert!(
                    (g - w).abs() < 1e-5,
                    "round {round}: {got:?} vs {expected:?}"
                );
            }
        }
        models.push(e.global().as_ref().clone());
    }
    // The exact sum: every arrival order gives the same bits.
    assert!(models.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn an_update_without_a_sound_start_loss_is_refused_and_the_round_goes_on() {
    let mut e = engine();
    e.begin_round(Timestamp::ZERO).unwrap();
    let site = |k: usize| ParticipantId::new(format!("s{k}"));
    for (k, start) in [(0, None), (1, Some(f64::NAN)), (2, Some(99.0))] {
        let err = e
            .submit(
                Timestamp::ZERO,
                &site(k),
                1,
                &update(&[0.1, 0.1, 0.1], 10, start, 0.5),
            )
            .unwrap_err();
        let Rejection::Invalid(reason) = err else {
            panic!("{err}")
        };
        assert!(reason.contains("start loss"), "{reason}");
    }
    e.submit(
        Timestamp::ZERO,
        &site(3),
        1,
        &update(&[0.1, 0.1, 0.1], 10, Some(0.5), 0.5),
    )
    .unwrap();
    let outcome = e.poll(Timestamp(1)).unwrap();
    assert_eq!(outcome.status, RoundStatus::Completed);
    assert!(e.global().check_finite().is_ok());
}
