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

/// Two shards of `sites` sites: `east` the even ones, `west` the odd ones
/// (so that in site order, site0, site1, site10, ..., they interleave).
fn two_shards(sites: usize) -> String {
    let of = |parity: usize| {
        (0..sites)
            .filter(|i| i % 2 == parity)
            .map(|i| format!("\"site{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "kind = \"hierarchical\"\n\n[[topology.groups]]\nname = \"east\"\nmembers = [{}]\n\n\
         [[topology.groups]]\nname = \"west\"\nmembers = [{}]\n",
        of(0),
        of(1)
    )
}

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
            p.log().contains("20 sites, 6 rounds, 6 evaluations"),
            "{}",
            p.log()
        );
    }
    (util::model(&s.path("dep.model")), s.json("dep.json"))
}

/// Two shard processes of 20 sites each give the single-process
/// simulation's model bit for bit, with standardisation and simulated
/// dropouts (each shard draws its sites' dropouts on the virtual clock as
/// the single process does), and every site's final evaluation.
#[test]
fn two_shard_processes_equal_the_single_process_simulation_bit_for_bit() {
    if util::skip_e2e("two_shard_processes_equal_the_single_process_simulation_bit_for_bit") {
        return;
    }
    let s = Scratch::new("shards");
    let (plan, data) = util::synthetic(&s, 40, 6, &two_shards(40));
    let text = std::fs::read_to_string(&plan).unwrap().replace(
        "[data.standardize]\nenabled = false",
        "[data.standardize]\nenabled = true",
    );
    std::fs::write(&plan, format!("{text}\n[simulation]\ndropout = 0.3\n")).unwrap();
    let (simulated, expected) = s.simulate(&plan, "sim.model");
    // Dropouts happened: sites sent no update in some rounds.
    let dropped = simulated["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["traffic"].as_object().unwrap().values())
        .filter(|t| t["update"] == 0)
        .count();
    assert!(dropped > 0, "{simulated}");
    let (model, report) = sharded(&s, &plan, &data);
    assert_eq!(model, expected, "the sharded run's model differs");
    assert_eq!(
        report["final"]["per_site"], simulated["final"]["per_site"],
        "{report}"
    );
    assert_eq!(report["final"]["accuracy"], simulated["final"]["accuracy"]);
    // Every round's pooled loss too: the root pools the sites' evaluations
    // in site order, as one process does (east and west interleave).
    let losses = |r: &serde_json::Value| -> Vec<serde_json::Value> {
        r["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["loss"].clone())
            .collect()
    };
    assert_eq!(losses(&report), losses(&simulated));
}

/// A shard of a name that is no aggregator of the plan says why and stops
/// (what else a shard refuses: `cargo test -p tessera-sim --test shard`).
#[test]
fn a_shard_the_plan_cannot_run_stops_with_the_reason() {
    if util::skip_e2e("a_shard_the_plan_cannot_run_stops_with_the_reason") {
        return;
    }
    let s = Scratch::new("shards-refused");
    let (plan, data) = util::synthetic(&s, 6, 2, &two_shards(6));
    let (mut root, url) = coordinator(&s.dir, &plan, &s.path("root.sqlite"), 0, &[]);
    let mut stray = shard(&s, &url, "north", &data);
    assert!(!stray.wait(LIMIT).success());
    assert!(stray.log().contains("north"), "{}", stray.log());
    root.kill_9();
}

/// Past 1000 sites a coordinator's report keeps their summary and writes
/// the per-site figures beside it, as a simulation's does; over two shards
/// of 600 sites each the file holds the single process's figures.
#[test]
fn a_sharded_run_of_1200_sites_writes_the_simulations_per_site_file() {
    if util::skip_e2e("a_sharded_run_of_1200_sites_writes_the_simulations_per_site_file") {
        return;
    }
    let s = Scratch::new("shards-1200");
    let (plan, data) = util::synthetic(&s, 1200, 2, &two_shards(1200));
    let (simulated, expected) = s.simulate(&plan, "sim.model");
    let (root, url) = coordinator(
        &s.dir,
        &plan,
        &s.path("root.sqlite"),
        0,
        &["--model-out", "dep.model", "--report", "dep.json"],
    );
    let mut procs = [
        root,
        shard(&s, &url, "east", &data),
        shard(&s, &url, "west", &data),
    ];
    for p in &mut procs {
        assert!(p.wait(LIMIT).success(), "{}:\n{}", p.name, p.log());
    }
    assert_eq!(util::model(&s.path("dep.model")), expected);
    let report = s.json("dep.json");
    assert_eq!(report["per_site"]["file"], "dep.sites.jsonl", "{report}");
    assert_eq!(report["final"], simulated["final"]);
    let finals = |file: &str| -> std::collections::BTreeMap<String, serde_json::Value> {
        std::fs::read_to_string(s.path(file))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|l| l["final_metrics"].is_object())
            .map(|l| {
                (
                    l["site"].as_str().unwrap().to_string(),
                    l["final_metrics"].clone(),
                )
            })
            .collect()
    };
    let (deployed, single) = (finals("dep.sites.jsonl"), finals("sim.model.sites.jsonl"));
    assert_eq!(single.len(), 1200);
    assert_eq!(deployed, single);
}
