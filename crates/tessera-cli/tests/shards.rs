//! Simulator shards (`tessera shard`): one simulation spread over several
//! processes (machines, in use) under a deployed coordinator, each shard an
//! aggregator of the plan's tree whose sites it simulates. Real processes
//! on 127.0.0.1; the model equals the single-process simulation's bit for
//! bit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::path::Path;
use std::time::Duration;

use util::Scratch;
use util::procs::{Proc, coordinator};

const LIMIT: Duration = Duration::from_secs(180);

const TWO_SHARDS: &str = r#"kind = "hierarchical"

[[topology.groups]]
name = "east"
members = ["site0", "site1", "site2"]

[[topology.groups]]
name = "west"
members = ["site3", "site4", "site5"]
"#;

fn shard(s: &Scratch, url: &str, name: &str, data: &Path) -> Proc {
    Proc::start(
        name,
        &s.dir,
        &[
            "shard",
            "--upstream",
            url,
            "--name",
            name,
            "--data",
            data.to_str().unwrap(),
            "--insecure",
            "--give-up-after",
            "60",
        ],
        None,
    )
}

/// Runs `plan` over two shards under a coordinator; returns the deployed
/// model's bytes and report.
fn sharded(s: &Scratch, plan: &Path, data: &Path) -> (Vec<u8>, serde_json::Value) {
    let (mut root, url) = coordinator(
        &s.dir,
        plan,
        &s.path("root.sqlite"),
        0,
        &["--model-out", "dep.model", "--report", "dep.json"],
    );
    let mut shards = [shard(s, &url, "east", data), shard(s, &url, "west", data)];
    assert!(root.wait(LIMIT).success(), "{}", root.log());
    for p in &mut shards {
        assert!(p.wait(LIMIT).success(), "{}:\n{}", p.name, p.log());
        assert!(
            p.log().contains("3 sites, 6 rounds, 6 evaluations"),
            "{}",
            p.log()
        );
    }
    (util::model(&s.path("dep.model")), s.json("dep.json"))
}

/// Two shard processes of three sites each give the single-process
/// simulation's model bit for bit, with standardisation and simulated
/// dropouts (each shard draws its sites' dropouts on the virtual clock as
/// the single process does), and every site's final evaluation.
#[test]
fn two_shard_processes_equal_the_single_process_simulation_bit_for_bit() {
    if util::skip_e2e("two_shard_processes_equal_the_single_process_simulation_bit_for_bit") {
        return;
    }
    let s = Scratch::new("shards");
    let (plan, data) = util::synthetic(&s, 6, 6, TWO_SHARDS);
    let text = std::fs::read_to_string(&plan).unwrap().replace(
        "[data.standardize]\nenabled = false",
        "[data.standardize]\nenabled = true",
    );
    std::fs::write(&plan, format!("{text}\n[simulation]\ndropout = 0.3\n")).unwrap();
    let (simulated, expected) = s.simulate(&plan, "sim.model");
    // Dropouts happened: some site missed some round.
    let dropped: u64 = simulated["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dropped"].as_u64().unwrap_or(0))
        .sum();
    assert!(dropped > 0, "{simulated}");
    let (model, report) = sharded(&s, &plan, &data);
    assert_eq!(model, expected, "the sharded run's model differs");
    assert_eq!(
        report["final"]["per_site"], simulated["final"]["per_site"],
        "{report}"
    );
    assert_eq!(report["final"]["accuracy"], simulated["final"]["accuracy"]);
}

/// A shard of a name that is no aggregator of the plan says why and stops
/// (what else a shard refuses: `cargo test -p tessera-sim --test shard`).
#[test]
fn a_shard_the_plan_cannot_run_stops_with_the_reason() {
    if util::skip_e2e("a_shard_the_plan_cannot_run_stops_with_the_reason") {
        return;
    }
    let s = Scratch::new("shards-refused");
    let (plan, data) = util::synthetic(&s, 6, 2, TWO_SHARDS);
    let (mut root, url) = coordinator(&s.dir, &plan, &s.path("root.sqlite"), 0, &[]);
    let mut stray = shard(&s, &url, "north", &data);
    assert!(!stray.wait(LIMIT).success());
    assert!(stray.log().contains("north"), "{}", stray.log());
    root.kill_9();
}
