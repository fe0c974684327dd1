//! Strategy pairs end to end through the engine and real sites, against an
//! independent computation: on heterogeneous sites, FedDyn (server and local
//! part) reaches the federation's optimum, computed here by Newton's method
//! in f64 on the sites' rows, where FedAvg with the same local work stops
//! short of it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

use tessera_aggregate::{StrategyConfig, StrategyKind};
use tessera_core::{ParticipantId, SeededRng, Timestamp};
use tessera_data::Dataset;
use tessera_engine::{EngineConfig, RoundEngine, RoundStatus, Site, Weighting};
use tessera_learn::{
    Init, Learner, ModelConfig, ModelKind, Network, OptimizerConfig, TrainingConfig,
};

/// Three sites whose rows and labelling differ (feature means and the true
/// coefficients both move), of 30, 60 and 90 rows, two features.
fn sites(seed: u64) -> Vec<Dataset> {
    let mut rng = SeededRng::new(seed);
    let means = [(-1.0, 0.5), (0.5, 1.0), (1.5, -1.0)];
    let truth = [(1.0, -1.0, 0.2), (-0.5, 1.0, -0.3), (2.0, 0.5, 0.0)];
    [30usize, 60, 90]
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let mut x = ndarray::Array2::<f32>::zeros((n, 2));
            let mut y = Vec::with_capacity(n);
            for i in 0..n {
                let a = rng.gaussian(means[k].0, 1.0);
                let b = rng.gaussian(means[k].1, 1.0);
                x[[i, 0]] = a as f32;
                x[[i, 1]] = b as f32;
                let (w0, w1, c) = truth[k];
                let p = 1.0 / (1.0 + (-(w0 * a + w1 * b + c)).exp());
                y.push(u32::from(rng.bernoulli(p)));
            }
            Dataset { x: x.into(), y }
        })
        .collect()
}

/// The minimiser of `(1/K) Σ_k mean_i BCE(σ(w·x_i + b), y_i)`, the
/// objective FedDyn's fixed point solves with one weight per site, by
/// Newton's method in f64 (independent of the learner and of f32).
fn optimum(data: &[Dataset]) -> [f64; 3] {
    let mut theta = [0.0f64; 3];
    for _ in 0..100 {
        let mut g = [0.0f64; 3];
        let mut h = [[0.0f64; 3]; 3];
        for site in data {
            let n = site.y.len() as f64;
            for (row, &y) in site.x.dense().rows().into_iter().zip(&site.y) {
                let z = [f64::from(row[0]), f64::from(row[1]), 1.0];
                let s = z.iter().zip(&theta).map(|(a, b)| a * b).sum::<f64>();
                let p = 1.0 / (1.0 + (-s).exp());
                let scale = 1.0 / (n * data.len() as f64);
                for i in 0..3 {
                    g[i] += scale * (p - f64::from(y)) * z[i];
                    for j in 0..3 {
                        h[i][j] += scale * p * (1.0 - p) * z[i] * z[j];
                    }
                }
            }
        }
        // Solve h d = g by Gaussian elimination (h is positive definite).
        let mut a = h;
        let mut d = g;
        for c in 0..3 {
            for r in c + 1..3 {
                let f = a[r][c] / a[c][c];
                for k in c..3 {
                    a[r][k] -= f * a[c][k];
                }
                d[r] -= f * d[c];
            }
        }
        for c in (0..3).rev() {
            for k in c + 1..3 {
                d[c] -= a[c][k] * d[k];
            }
            d[c] /= a[c][c];
        }
        for i in 0..3 {
            theta[i] -= d[i];
        }
    }
    theta
}

/// Runs `rounds` rounds of `kind` over the sites (full participation, full
/// batches, 20 local steps at learning rate 0.5, one weight per site) and
/// returns the global `[w0, w1, b]`.
fn federate(kind: StrategyKind, data: &[Dataset], rounds: u32) -> [f64; 3] {
    let model = ModelConfig {
        init: Init::Zeros,
        ..ModelConfig::of_kind(ModelKind::Logistic)
    };
    let training = TrainingConfig {
        steps: Some(20),
        batch_size: 1_000,
        optimizer: OptimizerConfig {
            lr: 0.5,
            ..Default::default()
        },
        ..TrainingConfig::default()
    };
    let settings = StrategyConfig {
        alpha: Some(0.1),
        ..Default::default()
    };
    let initial = Network::new(&model, 2, 2, 0).unwrap();
    let config = EngineConfig {
        rounds,
        fraction: 1.0,
        min_participants: 1,
        quorum: 1,
        deadline: None,
        seed: 1,
        weighting: Weighting::Equal,
    };
    let mut engine = RoundEngine::new(
        config,
        settings.build(kind).unwrap(),
        initial.parameters().clone(),
    );
    let ids: Vec<ParticipantId> = (0..data.len())
        .map(|k| ParticipantId::new(format!("site{k}")))
        .collect();
    let mut sites: Vec<Site> = ids
        .iter()
        .map(|id| {
            let net = Network::new(&model, 2, 2, 0).unwrap();
            Site::new(id.clone(), Box::new(net), training.clone(), 1)
        })
        .collect();
    for id in &ids {
        engine.register(id.clone());
    }
    let t = Timestamp::ZERO;
    while !engine.is_finished() {
        let start = engine.begin_round(t).unwrap();
        for (k, id) in ids.iter().enumerate() {
            let task = start.task(engine.instructions_for(id));
            let update = sites[k].fit(&task, &data[k]).unwrap();
            engine.submit(t, id, start.round, &update).unwrap();
        }
        let outcome = engine.poll(t).unwrap();
        assert_eq!(outcome.status, RoundStatus::Completed);
        for (k, id) in ids.iter().enumerate() {
            sites[k].round_closed(outcome.accepted.contains(id));
        }
    }
    let global: Vec<f64> = engine.global().values().map(f64::from).collect();
    [global[0], global[1], global[2]]
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn feddyn_reaches_the_federation_optimum_where_fedavg_drifts() {
    for seed in [11, 12, 13] {
        let data = sites(seed);
        let best = optimum(&data);
        let feddyn = distance(federate(StrategyKind::FedDyn, &data, 300), best);
        let fedavg = distance(federate(StrategyKind::FedAvg, &data, 300), best);
        eprintln!(
            "seed {seed}: optimum {best:?}, feddyn off by {feddyn:.2e}, fedavg by {fedavg:.2e}"
        );
        assert!(
            feddyn < 1e-3,
            "seed {seed}: feddyn is {feddyn} from the optimum"
        );
        assert!(
            fedavg > 10.0 * feddyn.max(1e-4),
            "seed {seed}: fedavg {fedavg} against feddyn {feddyn}"
        );
    }
}
