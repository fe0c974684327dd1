//! A simulator shard (`tessera_sim::Shard`, what `tessera shard` runs):
//! which aggregators it can be and what it refuses, and that a round sent
//! again is computed again to the same bits. That shards under a deployed
//! coordinator equal the single-process simulation bit for bit is tested
//! with real processes (`TESSERA_E2E=1 cargo test -p tessera-cli --test
//! shards`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use tessera_data::FederatedData;
use tessera_engine::{GroupConfig, Plan};
use tessera_sim::{Shard, initial_model};

/// The example tree plan with two groups of named sites: `east` (the first
/// three sites) and `west` (the other 44).
fn two_groups() -> (Plan, FederatedData) {
    let (mut plan, data) = common::synthetic_10class("synthetic-hierarchical.toml");
    let names: Vec<String> = data.sites.iter().map(|s| s.name.clone()).collect();
    plan.topology.regions = None;
    plan.topology.groups = vec![
        GroupConfig {
            name: "east".into(),
            members: names[..3].to_vec(),
        },
        GroupConfig {
            name: "west".into(),
            members: names[3..].to_vec(),
        },
    ];
    (plan, data)
}

/// `data`'s sites among `names` only.
fn only(data: &FederatedData, names: &[String]) -> FederatedData {
    let mut out = data.clone();
    let keep: Vec<bool> = data.sites.iter().map(|s| names.contains(&s.name)).collect();
    let mut k = keep.iter();
    out.sites.retain(|_| *k.next().unwrap());
    let mut k = keep.iter();
    out.summary.retain(|_| *k.next().unwrap());
    out
}

#[test]
fn a_shard_is_an_aggregator_of_named_sites_and_holds_exactly_their_rows() {
    let (plan, data) = two_groups();
    let err = Shard::members(&plan, "north").unwrap_err().to_string();
    assert!(
        err.contains("north") && err.contains("[[topology.groups]]"),
        "{err}"
    );
    let east = Shard::members(&plan, "east").unwrap();
    assert_eq!(east.len(), 3);
    // Every site's rows, or too few, are refused, naming the missing ones.
    let err = Shard::new(&plan, "east", data.clone()).err().unwrap();
    assert!(err.to_string().contains("its members are"), "{err}");
    let err = Shard::new(&plan, "east", only(&data, &east[..2]))
        .err()
        .unwrap();
    assert!(err.to_string().contains(&east[2]), "{err}");
    // An aggregator over aggregators is no shard.
    let mut deep = plan.clone();
    deep.topology.groups.push(GroupConfig {
        name: "continent".into(),
        members: vec!["east".into(), "west".into()],
    });
    let err = Shard::members(&deep, "continent").unwrap_err().to_string();
    assert!(err.contains("'east' is an aggregator"), "{err}");
    // What a shard cannot carry yet is refused with the reason.
    let mut secure = plan.clone();
    secure.secure_aggregation.enabled = true;
    let err = Shard::new(&secure, "east", only(&data, &east))
        .err()
        .unwrap();
    assert!(err.to_string().contains("secure aggregation"), "{err}");
    let mut deadline = plan.clone();
    deadline.federation.deadline_seconds = Some(30.0);
    let err = Shard::new(&deadline, "east", only(&data, &east))
        .err()
        .unwrap();
    assert!(err.to_string().contains("deadline"), "{err}");
    let mut scaled = plan.clone();
    scaled.data.standardize.enabled = true;
    scaled.data.standardize.scope = tessera_data::ScaleScope::Federation;
    let err = Shard::new(&scaled, "east", only(&data, &east))
        .err()
        .unwrap();
    assert!(err.to_string().contains("scope"), "{err}");
    let mut flat = plan.clone();
    flat.topology.kind = tessera_engine::TopologyKind::Flat;
    let err = Shard::members(&flat, "east").unwrap_err().to_string();
    assert!(err.contains("hierarchical"), "{err}");
    let mut personal = plan.clone();
    personal.personalization.finetune_epochs = 1;
    let err = Shard::new(&personal, "east", only(&data, &east))
        .err()
        .unwrap();
    assert!(err.to_string().contains("personalization"), "{err}");
}

#[test]
fn a_round_sent_again_is_computed_again_to_the_same_bits() {
    let (mut plan, data) = two_groups();
    plan.simulation.dropout = 0.3;
    let east = Shard::members(&plan, "east").unwrap();
    let shard = Shard::new(&plan, "east", only(&data, &east)).unwrap();
    assert_eq!(shard.sites(), east.as_slice());
    let global = Arc::new(initial_model(&plan, &data).unwrap().parameters().clone());
    let mut sent = 0;
    for round in 1..=6 {
        let first = shard.fit(round, Arc::clone(&global)).unwrap();
        let again = shard.fit(round, Arc::clone(&global)).unwrap();
        match (first.update, again.update) {
            (Some(a), Some(b)) => {
                assert_eq!(a.n_examples, b.n_examples);
                assert_eq!(a.delta, b.delta, "round {round}");
                assert!(a.n_examples > 0);
                sent += 1;
            }
            (None, None) => {}
            (a, b) => panic!("round {round}: {a:?} then {b:?}"),
        }
    }
    assert!(sent > 0);
    let evaluations = shard.evaluate(&global).unwrap();
    let names: Vec<&String> = evaluations.iter().map(|(n, _)| n).collect();
    assert_eq!(names, east.iter().collect::<Vec<_>>());
}
