//! The personalization table of BENCHMARKS.md: on each benchmark, the
//! personalized methods against the global FedAvg model and local-only
//! training on the same splits, five seeds (the run seed, and the split
//! where the split is random). Settings are the methods' defaults (Ditto
//! lambda 0.1, FedPer's head the last layer, fine-tuning one epoch), not
//! tuned on these seeds.
//!
//!     cargo run --release -p tessera-sim --example personalization_table
//!
//! Arguments, if any, keep only the methods whose label contains one of
//! them (`... -- FedRep`); `new-sites` gives the new-sites table alone: the
//! last sites of each split take no part and adapt the final model with 20
//! of their rows.

use std::path::Path;

use tessera_aggregate::StrategyKind;
use tessera_data::{FederatedData, Filesystem};
use tessera_engine::Plan;
use tessera_engine::report::PersonalizationReport;
use tessera_sim::{SimOptions, simulate};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const SEEDS: [u64; 5] = [11, 12, 13, 14, 15];

/// A benchmark: its plan file and what changes for seed `s`.
struct Bench {
    name: &'static str,
    file: &'static str,
    setup: fn(&mut Plan, u64),
}

fn benches() -> Vec<Bench> {
    vec![
        Bench {
            name: "Fed-Heart-Disease (4 sites, logistic)",
            file: "fed-heart-disease.toml",
            setup: |p, s| p.seed = s,
        },
        Bench {
            name: "MNIST Dirichlet(0.5), 20 sites, MLP 784-64-10",
            file: "mnist.toml",
            setup: |p, s| {
                p.seed = s;
                if let Some(part) = p.data.partition.as_mut() {
                    part.seed = s;
                }
            },
        },
        Bench {
            name: "MNIST Dirichlet(0.1), 20 sites, MLP 784-64-10",
            file: "mnist.toml",
            setup: |p, s| {
                p.seed = s;
                if let Some(part) = p.data.partition.as_mut() {
                    part.seed = s;
                    part.alpha = 0.1;
                }
            },
        },
        Bench {
            name: "Synthetic(0.5, 0.5), 47 sites, MLP 60-32-10",
            file: "synthetic-hierarchical.toml",
            setup: |p, s| {
                p.seed = s;
                p.topology.kind = tessera_engine::TopologyKind::Flat;
                p.model.kind = tessera_learn::ModelKind::Mlp;
                p.model.hidden = vec![32];
                if let Some(synthetic) = p.data.synthetic.as_mut() {
                    synthetic.seed = s;
                }
            },
        },
    ]
}

/// The methods: (label, strategy, fine-tuning epochs, few-shot rows).
const METHODS: [(&str, StrategyKind, u64, Option<usize>); 10] = [
    (
        "FedAvg + fine-tuning (1 epoch)",
        StrategyKind::FedAvg,
        1,
        None,
    ),
    ("Ditto (lambda 0.1)", StrategyKind::Ditto, 0, None),
    ("FedPer (head: last layer)", StrategyKind::FedPer, 0, None),
    (
        "FedRep (head: last layer, 10 head passes)",
        StrategyKind::FedRep,
        0,
        None,
    ),
    (
        "Ditto + fine-tuning (1 epoch)",
        StrategyKind::Ditto,
        1,
        None,
    ),
    (
        "Per-FedAvg (alpha 0.01) + fine-tuning (1 epoch)",
        StrategyKind::PerFedAvg,
        1,
        None,
    ),
    (
        "FedAvg + few-shot fine-tuning (20 rows, 5 epochs)",
        StrategyKind::FedAvg,
        5,
        Some(20),
    ),
    (
        "Per-FedAvg (alpha 0.01) + few-shot fine-tuning (20 rows, 5 epochs)",
        StrategyKind::PerFedAvg,
        5,
        Some(20),
    ),
    ("APFL (initial alpha 0.5)", StrategyKind::Apfl, 0, None),
    ("IFCA (2 clusters)", StrategyKind::Ifca, 0, None),
];

fn load(file: &str, setup: fn(&mut Plan, u64), seed: u64) -> Result<(Plan, FederatedData)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut plan = Plan::from_file(&dir.join(file))?;
    setup(&mut plan, seed);
    plan.privacy.site_metrics = tessera_privacy::SiteMetrics::Clear;
    let data = tessera_data::load(&plan.data, &dir, &Filesystem)?;
    Ok((plan, data))
}

fn mean_sd(values: &[f64]) -> String {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    format!("{:.4} ± {:.4}", mean, var.sqrt())
}

/// Share of sites where `report`'s personalized model beats the better of
/// `reference`'s global model (FedAvg's) and the local-only model (or, with
/// `ties`, at least matches it).
fn share(report: &PersonalizationReport, reference: &PersonalizationReport, ties: bool) -> f64 {
    let beating = report
        .per_site
        .iter()
        .filter(|(name, site)| {
            let fedavg = reference.per_site.get(*name).map_or(f64::NAN, |r| r.global);
            let best = fedavg.max(site.local_only.unwrap_or(f64::NAN));
            site.personalized > best || (ties && site.personalized >= best)
        })
        .count();
    beating as f64 / report.sites.max(1) as f64
}

/// Per seed: personalized, FedAvg's global and local-only means, and the
/// shares of sites beating (and at least matching) the better of the two.
type Row = [f64; 5];

fn run(plan: &Plan, data: &FederatedData) -> Result<PersonalizationReport> {
    plan.validate()?;
    let report = simulate(plan, data, &SimOptions::default(), &mut |_| {})?;
    Ok(report.personalization.ok_or("no personalization section")?)
}

/// The new-sites methods: (label, strategy, fine-tuning epochs).
const NEW_SITE_METHODS: [(&str, StrategyKind, u64); 4] = [
    ("FedAvg, adapted 1 epoch", StrategyKind::FedAvg, 1),
    ("FedAvg, adapted 5 epochs", StrategyKind::FedAvg, 5),
    (
        "Per-FedAvg (alpha 0.01), adapted 1 epoch",
        StrategyKind::PerFedAvg,
        1,
    ),
    (
        "Per-FedAvg (alpha 0.01), adapted 5 epochs",
        StrategyKind::PerFedAvg,
        5,
    ),
];

/// The last `k` sites of each split (by name) are new: they take no part
/// and adapt the final model on 20 of their rows.
fn new_sites_table() -> Result<()> {
    for (bench, k) in benches().into_iter().skip(1).zip([4usize, 4, 5]) {
        println!(
            "\n{}: the last {k} sites new, adapting on 20 rows\n",
            bench.name
        );
        println!(
            "| method | adapted (mean of new sites) | global | trained alone on the same 20 rows | new sites where adapted beats both |"
        );
        println!("|---|---:|---:|---:|---:|");
        let mut rows: Vec<Vec<[f64; 4]>> = vec![Vec::new(); NEW_SITE_METHODS.len()];
        for seed in SEEDS {
            let (mut plan, data) = load(bench.file, bench.setup, seed)?;
            let mut names: Vec<String> = data.sites.iter().map(|s| s.name.clone()).collect();
            names.sort_by_key(|n| (n.len(), n.clone()));
            plan.personalization.new_sites = names.split_off(names.len() - k);
            plan.personalization.finetune_rows = Some(20);
            for (i, (_, strategy, epochs)) in NEW_SITE_METHODS.into_iter().enumerate() {
                plan.federation.strategy = strategy;
                plan.personalization.finetune_epochs = epochs;
                plan.validate()?;
                let report = simulate(&plan, &data, &SimOptions::default(), &mut |_| {})?;
                let n = report.new_sites.ok_or("no new_sites section")?;
                rows[i].push([
                    n.mean_adapted,
                    n.mean_global,
                    n.mean_local_only.unwrap_or(f64::NAN),
                    n.sites_beating_both as f64 / n.sites.max(1) as f64,
                ]);
            }
        }
        for (i, (label, _, _)) in NEW_SITE_METHODS.into_iter().enumerate() {
            let column = |c: usize| -> Vec<f64> { rows[i].iter().map(|r| r[c]).collect() };
            let share = 100.0 * column(3).iter().sum::<f64>() / rows[i].len() as f64;
            println!(
                "| {label} | {} | {} | {} | {share:.0}% |",
                mean_sd(&column(0)),
                mean_sd(&column(1)),
                mean_sd(&column(2))
            );
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let only: Vec<String> = std::env::args().skip(1).collect();
    if only.iter().any(|o| o == "new-sites") {
        return new_sites_table();
    }
    let chosen = |label: &str| only.is_empty() || only.iter().any(|o| label.contains(o.as_str()));
    for bench in benches() {
        println!("\n{}\n", bench.name);
        println!(
            "| method | personalized (mean of sites) | global FedAvg | local only | sites where personalized beats the better of the two | ... or ties it |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        // Per method: (personalized, FedAvg global, local-only, share) per seed.
        let mut rows: Vec<Vec<Row>> = vec![Vec::new(); METHODS.len()];
        let mut refused: Vec<Option<String>> = vec![None; METHODS.len()];
        for seed in SEEDS {
            let (mut plan, data) = load(bench.file, bench.setup, seed)?;
            // FedAvg's global model is the reference every method is compared with.
            plan.personalization.finetune_epochs = 1;
            plan.personalization.finetune_rows = None;
            plan.federation.strategy = StrategyKind::FedAvg;
            let reference = run(&plan, &data)?;
            for (i, (label, strategy, epochs, few)) in METHODS.into_iter().enumerate() {
                if !chosen(label) {
                    continue;
                }
                plan.federation.strategy = strategy;
                plan.personalization.finetune_epochs = epochs;
                plan.personalization.finetune_rows = few;
                match run(&plan, &data) {
                    Ok(p) => rows[i].push([
                        p.mean_personalized,
                        reference.mean_global,
                        p.mean_local_only.unwrap_or(f64::NAN),
                        share(&p, &reference, false),
                        share(&p, &reference, true),
                    ]),
                    Err(e) => refused[i] = Some(e.to_string()),
                }
            }
        }
        for (i, (label, _, _, _)) in METHODS.into_iter().enumerate() {
            if !chosen(label) {
                continue;
            }
            if let Some(why) = &refused[i] {
                println!("| {label} | n/a: {why} | | | | |");
                continue;
            }
            let column = |k: usize| -> Vec<f64> { rows[i].iter().map(|r| r[k]).collect() };
            let percent = |k: usize| 100.0 * column(k).iter().sum::<f64>() / rows[i].len() as f64;
            println!(
                "| {label} | {} | {} | {} | {:.0}% | {:.0}% |",
                mean_sd(&column(0)),
                mean_sd(&column(1)),
                mean_sd(&column(2)),
                percent(3),
                percent(4)
            );
        }
    }
    Ok(())
}
