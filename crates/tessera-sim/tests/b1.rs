//! Benchmark B1 (BENCHMARKS.md): the bundled Fed-Heart-Disease plan against
//! FLamby's published results, read from FLamby's own result files.
//!
//! For each strategy, the mean over seeds 42..46 of the final mean-of-sites
//! accuracy must reach FLamby's published figure minus 0.02; the pooled
//! baseline must reach 0.715 (mean of 4).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tessera_aggregate::StrategyKind;
use tessera_data::Filesystem;
use tessera_engine::Plan;
use tessera_sim::{SimOptions, simulate};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// FLamby's published mean over seeds of the mean-of-4 accuracy, per method.
fn flamby_published() -> BTreeMap<String, f64> {
    let mut per_method: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for seed in 42..=46 {
        let path = root().join(format!(
            "data/uci-heart-disease/baselines/heart_seed{seed}.csv"
        ));
        let text = std::fs::read_to_string(path).unwrap();
        // The column order differs between FLamby's files: go by the header.
        let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
        let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let (metric_i, method_i, test_i) = (column("Metric"), column("Method"), column("Test"));
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split(',').collect();
            let (metric, method, test) = (fields[metric_i], fields[method_i], fields[test_i]);
            if test.starts_with("client_test_") {
                per_method
                    .entry(method.to_string())
                    .or_default()
                    .push(metric.parse().unwrap());
            }
        }
    }
    per_method
        .into_iter()
        .map(|(method, values)| (method, values.iter().sum::<f64>() / values.len() as f64))
        .collect()
}

#[test]
fn bundled_plan_meets_flamby_for_every_strategy() {
    let published = flamby_published();
    // The figures BENCHMARKS.md quotes, recomputed from FLamby's files.
    assert!(
        (published["FedAvg100"] - 0.685).abs() < 0.0015,
        "{published:?}"
    );
    assert!(
        (published["FedAdam100"] - 0.726).abs() < 0.0015,
        "{published:?}"
    );
    assert!(
        (published["Pooled Training"] - 0.735).abs() < 0.0015,
        "{published:?}"
    );

    let examples = root().join("examples");
    let base = Plan::from_file(&examples.join("fed-heart-disease.toml")).unwrap();
    let data = tessera_data::load(&base.data, &examples, &Filesystem).unwrap();
    let cases = [
        (StrategyKind::FedAvg, "FedAvg100"),
        (StrategyKind::FedProx, "FedProx100"),
        (StrategyKind::Scaffold, "Scaffold100"),
        (StrategyKind::FedAdam, "FedAdam100"),
        (StrategyKind::FedYogi, "FedYogi100"),
        (StrategyKind::FedAdagrad, "FedAdagrad100"),
    ];
    let mut pooled = Vec::new();
    for (kind, method) in cases {
        let mut accuracies = Vec::new();
        for seed in 42..=46 {
            let mut plan = base.clone();
            plan.federation.strategy = kind;
            plan.seed = seed;
            let options = SimOptions {
                attack: None,
                baselines: kind == StrategyKind::FedAvg,
                target_accuracy: None,
            };
            let report = simulate(&plan, &data, &options, &mut |_| {}).unwrap();
            accuracies.push(report.final_metrics.mean_site_accuracy.unwrap());
            if let Some(b) = report.baselines {
                pooled.push(
                    b.pooled
                        .expect("the pooled baseline trains")
                        .mean_site_accuracy,
                );
            }
        }
        let mean = accuracies.iter().sum::<f64>() / accuracies.len() as f64;
        let target = published[method] - 0.02;
        eprintln!(
            "{kind}: {mean:.4} (FLamby {:.4}, seeds {accuracies:.3?})",
            published[method]
        );
        assert!(
            mean >= target,
            "{kind}: mean of seeds 42..46 is {mean:.4}, below {target:.4}"
        );
    }
    let pooled_mean = pooled.iter().sum::<f64>() / pooled.len() as f64;
    eprintln!(
        "pooled: {pooled_mean:.4} (FLamby {:.4})",
        published["Pooled Training"]
    );
    assert!(
        pooled_mean >= 0.715,
        "pooled baseline {pooled_mean:.4} < 0.715"
    );
}
