//! The bytes-against-accuracy table of BENCHMARKS.md ("Communication"):
//! every codec on both bundled benchmarks, then the adaptive protocol.
//!
//!     cargo run --release -p tessera-sim --example compression_table

use std::path::Path;

use tessera_compress::{AdaptiveConfig, Codec};
use tessera_data::{FederatedData, Filesystem};
use tessera_engine::Plan;
use tessera_engine::report::RunReport;
use tessera_sim::{SimOptions, simulate};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn example(name: &str) -> Result<(Plan, FederatedData)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let plan = Plan::from_file(&dir.join(name))?;
    let data = tessera_data::load(&plan.data, &dir, &Filesystem)?;
    Ok((plan, data))
}

fn run(plan: &Plan, data: &FederatedData) -> Result<RunReport> {
    plan.validate()?;
    Ok(simulate(plan, data, &SimOptions::default(), &mut |_| {})?)
}

fn table(name: &str, rows: &[(&str, bool, bool)]) -> Result<()> {
    let (plan, data) = example(name)?;
    println!(
        "\n{} ({} sites, {} rounds)\n",
        plan.name,
        data.sites.len(),
        plan.federation.rounds
    );
    println!(
        "| upload codec | error feedback | update bytes up | of none | bytes down | accuracy | vs none (pts) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut reference: Option<RunReport> = None;
    for &(spec, feedback, secure) in rows {
        let mut p = plan.clone();
        p.compression.upload = spec.parse::<Codec>()?;
        p.compression.error_feedback = feedback;
        p.secure_aggregation.enabled = secure;
        let r = run(&p, &data)?;
        let base = reference.get_or_insert_with(|| r.clone());
        let share =
            r.communication.update_bytes_up as f64 / base.communication.update_bytes_up as f64;
        println!(
            "| {spec}{} | {} | {} | {:.2}% | {} | {:.4} | {:+.1} |",
            if secure { " (SecAgg)" } else { "" },
            if p.compression.upload.is_identity() {
                "-"
            } else if feedback {
                "yes"
            } else {
                "no"
            },
            r.communication.update_bytes_up,
            100.0 * share,
            r.communication.bytes_down,
            r.final_metrics.accuracy.unwrap_or(f64::NAN),
            100.0
                * (r.final_metrics.accuracy.unwrap_or(f64::NAN)
                    - base.final_metrics.accuracy.unwrap_or(f64::NAN)),
        );
    }
    Ok(())
}

fn download() -> Result<()> {
    let (mut plan, data) = example("mnist.toml")?;
    plan.compression.upload = "topk:0.02+q2".parse()?;
    println!("\ndownload: MNIST, updates up at topk:0.02+q2 with error feedback\n");
    println!("| download codec | bytes down | of none | accuracy |");
    println!("|---|---:|---:|---:|");
    let mut reference = None;
    for codec in ["none", "fp16", "q8", "q4", "q2", "topk:0.1+q8"] {
        let mut p = plan.clone();
        p.compression.download = codec.parse()?;
        let r = run(&p, &data)?;
        let base = *reference.get_or_insert(r.communication.bytes_down);
        println!(
            "| {codec} | {} | {:.2}% | {:.4} |",
            r.communication.bytes_down,
            100.0 * r.communication.bytes_down as f64 / base as f64,
            r.final_metrics.accuracy.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

fn adaptive() -> Result<()> {
    let (mut plan, data) = example("mnist.toml")?;
    plan.simulation.bandwidth_bytes_per_second = Some(tessera_engine::Range { min: 1e5, max: 1e7 });
    plan.compression.download = "q8".parse()?;
    println!(
        "\nadaptive: MNIST, bandwidth 100 kB/s to 10 MB/s (log-uniform, 100x), models down at q8\n"
    );
    println!("| upload | rounds 2..30: mean / slowest virtual s | update bytes up | accuracy |");
    println!("|---|---:|---:|---:|");
    for (label, codec, target) in [
        ("none", "none", None),
        ("fixed topk:0.02+q2", "topk:0.02+q2", None),
        ("fixed topk:0.001+q8", "topk:0.001+q8", None),
        ("adaptive, target 1 s", "none", Some(1.0)),
        ("adaptive, target 0.5 s", "none", Some(0.5)),
    ] {
        let mut p = plan.clone();
        p.compression.upload = codec.parse()?;
        p.compression.adaptive = target.map(|t| AdaptiveConfig {
            target_round_seconds: t,
            ladder: AdaptiveConfig::default_ladder(),
        });
        let r = run(&p, &data)?;
        let later: Vec<f64> = r.rounds[1..].iter().map(|x| x.virtual_seconds).collect();
        let mean = later.iter().sum::<f64>() / later.len().max(1) as f64;
        let slowest = later.iter().copied().fold(0.0, f64::max);
        println!(
            "| {label} | {mean:.3} / {slowest:.3} | {} | {:.4} |",
            r.communication.update_bytes_up,
            r.final_metrics.accuracy.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let mnist = [
        ("none", true, false),
        ("fp16", true, false),
        ("q8", true, false),
        ("q4", true, false),
        ("q2", true, false),
        ("q2", false, false),
        ("topk:0.1", true, false),
        ("topk:0.01", true, false),
        ("topk:0.01", false, false),
        ("topk:0.01+q8", true, false),
        ("topk:0.02+q2", true, false),
        ("topk:0.02+q2", false, false),
        ("topk:0.003+q8", true, false),
        ("topk:0.003+q8", false, false),
        ("randk:0.1", true, false),
        ("randk:0.1", false, false),
        ("randk:0.1", true, true),
    ];
    table("mnist.toml", &mnist)?;
    let heart = [
        ("none", true, false),
        ("fp16", true, false),
        ("q8", true, false),
        ("q4", true, false),
        ("q2", true, false),
        ("topk:0.2", true, false),
        ("topk:0.2", false, false),
        ("topk:0.2+q8", true, false),
        ("randk:0.5", true, false),
        ("randk:0.5", true, true),
    ];
    table("fed-heart-disease.toml", &heart)?;
    download()?;
    adaptive()
}
