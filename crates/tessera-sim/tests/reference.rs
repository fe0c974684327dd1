//! The simulator against an independent FedAvg written here in plain `f64`
//! loops, and its behaviour on the virtual clock: stragglers, dropouts,
//! quorum, and the same bits whatever the number of threads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::Path;

use tessera_core::{SeededRng, tag};
use tessera_data::synth::{SynthConfig, write_synthetic};
use tessera_data::{FederatedData, FileSource};
use tessera_engine::{Plan, Range, streams};
use tessera_sim::{SimOptions, simulate};

struct Memory(Vec<u8>);

impl FileSource for Memory {
    fn open(&self, _path: &Path) -> std::io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.0.as_slice()))
    }
}

fn plan(extra: &str) -> Plan {
    let text = format!(
        r#"
seed = 5
[data]
path = "synth.csv"
site_column = "site"
[data.schema]
target = "y"
[model]
kind = "logistic"
init = "zeros"
[training]
epochs = 1
batch_size = 8
lr = 0.1
[federation]
rounds = 3
{extra}
"#
    );
    Plan::from_toml(&text, "test").unwrap()
}

fn data(plan: &Plan, sites: usize) -> FederatedData {
    let mut csv = Vec::new();
    let config = SynthConfig {
        sites,
        rows_per_site: 60,
        features: 4,
        classes: 2,
        alpha: 1.0,
        beta: 1.0,
        seed: 11,
        departments: 0,
        department_variance: 0.0,
    };
    write_synthetic(&config, &mut csv).unwrap();
    tessera_data::load(&plan.data, Path::new(""), &Memory(csv)).unwrap()
}

/// FedAvg of logistic regression, mini-batch SGD, from zeros, in f64.
fn reference_fedavg(plan: &Plan, data: &FederatedData) -> Vec<f64> {
    let d = data.n_features();
    let lr = f64::from(plan.training.optimizer.lr);
    let batch = plan.training.batch_size;
    let mut global = vec![0.0f64; d + 1]; // weights then bias
    for round in 1..=plan.federation.rounds {
        let mut sum = vec![0.0f64; d + 1];
        let mut examples = 0.0;
        for site in &data.sites {
            let x = site.train.x.dense();
            let y = &site.train.y;
            let n = y.len();
            let mut w = global.clone();
            let mut rng = SeededRng::derived(
                plan.seed,
                &[streams::FIT, u64::from(round), tag(&site.name)],
            );
            let order = rng.permutation(n);
            for chunk in order.chunks(batch) {
                let mut grad = vec![0.0f64; d + 1];
                for &i in chunk {
                    let z: f64 = (0..d).map(|j| f64::from(x[[i, j]]) * w[j]).sum::<f64>() + w[d];
                    let err = 1.0 / (1.0 + (-z).exp()) - f64::from(y[i]);
                    for j in 0..d {
                        grad[j] += err * f64::from(x[[i, j]]);
                    }
                    grad[d] += err;
                }
                for j in 0..=d {
                    w[j] -= lr * grad[j] / chunk.len() as f64;
                }
            }
            for j in 0..=d {
                sum[j] += n as f64 * (w[j] - global[j]);
            }
            examples += n as f64;
        }
        for j in 0..=d {
            global[j] += sum[j] / examples;
        }
    }
    global
}

#[test]
fn fedavg_equals_an_independent_implementation() {
    let plan = plan("");
    let data = data(&plan, 5);
    let report = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let expected = reference_fedavg(&plan, &data);
    let got: Vec<f32> = report.final_parameters.values().collect();
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert!((f64::from(*g) - e).abs() < 1e-4, "{got:?} vs {expected:?}");
    }
    assert!(expected.iter().any(|v| v.abs() > 1e-2), "the model moved");
}

#[test]
fn results_do_not_depend_on_the_number_of_threads() {
    let plan = plan("strategy = \"scaffold\"\nfraction = 0.5\nmin_participants = 2\n");
    let data = data(&plan, 9);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap())
    };
    let (one, three) = (run(1), run(3));
    let bits = |r: &tessera_sim::RunReport| {
        r.final_parameters
            .values()
            .map(f32::to_bits)
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&one), bits(&three));
    assert_eq!(one.final_metrics, three.final_metrics);
    assert!(
        one.rounds.iter().all(|r| r.accepted == 5),
        "ceil(0.5 * 9) sites per round"
    );
}

#[test]
fn stragglers_and_dropouts_on_the_virtual_clock() {
    let mut plan = plan("deadline_seconds = 0.5\nquorum = 2\n");
    plan.federation.rounds = 6;
    // 48 training rows per site take 0.048 s at the fastest speed and 4.8 s at the slowest.
    plan.simulation.examples_per_second = Range {
        min: 10.0,
        max: 1000.0,
    };
    plan.simulation.dropout = 0.2;
    let data = data(&plan, 12);
    let report = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let stragglers: usize = report.rounds.iter().map(|r| r.stragglers).sum();
    let dropped: usize = report.rounds.iter().map(|r| r.dropped).sum();
    assert!(stragglers > 0, "slow sites miss the deadline");
    assert!(dropped > 0, "some sites drop out");
    for r in &report.rounds {
        assert_eq!(
            r.accepted + r.stragglers + r.dropped + r.rejected,
            12,
            "{r:?}"
        );
        assert!(
            r.virtual_seconds <= 0.5 + 1e-9,
            "a round closes by its deadline: {r:?}"
        );
        assert!(
            r.status == "completed" || r.status.starts_with("quorum not met"),
            "{r:?}"
        );
    }
    let again = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(
        report
            .rounds
            .iter()
            .map(|r| (r.accepted, r.stragglers, r.dropped))
            .collect::<Vec<_>>(),
        again
            .rounds
            .iter()
            .map(|r| (r.accepted, r.stragglers, r.dropped))
            .collect::<Vec<_>>()
    );
    assert_eq!(report.final_metrics, again.final_metrics);
}

#[test]
fn a_round_without_quorum_leaves_the_model() {
    let mut plan = plan("deadline_seconds = 0.01\nquorum = 3\n");
    plan.federation.rounds = 2;
    plan.simulation.latency_seconds = Range { min: 1.0, max: 1.0 };
    let data = data(&plan, 4);
    let report = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    assert!(
        report
            .rounds
            .iter()
            .all(|r| r.status == "quorum not met (0/3)"),
        "{:?}",
        report.rounds
    );
    assert!(
        report.final_parameters.values().all(|v| v == 0.0),
        "zeros stay zeros"
    );
}

#[test]
fn a_site_whose_training_fails_leaves_the_round_with_the_reason() {
    let mut plan = plan("");
    plan.training.optimizer.lr = 3e38;
    plan.federation.rounds = 1;
    let data = data(&plan, 3);
    let report = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let round = &report.rounds[0];
    assert!(round.dropped >= 1, "{round:?}");
    assert_eq!(round.site_errors.len(), round.dropped, "{round:?}");
    assert!(
        round.site_errors.iter().all(|e| e.contains("diverged")),
        "{:?}",
        round.site_errors
    );
    assert_eq!(round.accepted + round.dropped + round.rejected, 3);
}
