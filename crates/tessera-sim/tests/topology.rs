//! Topologies in simulation on Synthetic(0.5, 0.5), 10 classes, 60 features:
//! a tree of aggregators (47 sites in 5 regions, and three levels) against
//! flat FedAvg, and gossip over 12 sites with one lost midway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use tessera_engine::report::RunReport;
use tessera_engine::{FailureConfig, GossipGraph, GroupConfig, Plan, TopologyKind};
use tessera_learn::Evaluation;
use tessera_sim::{SimOptions, simulate};

/// The first round whose accuracy (the report's per-round figure) reaches `target`.
fn rounds_to(report: &RunReport, target: f64) -> Option<u32> {
    report
        .rounds
        .iter()
        .find(|r| r.accuracy >= target)
        .map(|r| r.round)
}

/// Prints rounds to each target for `a` and `b`; returns them.
fn print_rounds_to(
    targets: &[f64],
    (a_name, a): (&str, &RunReport),
    (b_name, b): (&str, &RunReport),
) -> Vec<(Option<u32>, Option<u32>)> {
    targets
        .iter()
        .map(|&t| {
            let (x, y) = (rounds_to(a, t), rounds_to(b, t));
            println!("rounds to {t:.2}: {a_name} {x:?}, {b_name} {y:?}");
            (x, y)
        })
        .collect()
}

fn flat_of(plan: &Plan) -> Plan {
    let mut flat = plan.clone();
    flat.topology = Default::default();
    flat
}

#[test]
fn five_regions_match_flat_fedavg_and_cut_the_root_traffic_by_the_fan_in() {
    let (plan, data) = common::synthetic_10class("synthetic-hierarchical.toml");
    let options = SimOptions::default();
    let tree = simulate(&plan, &data, &options, &mut |_| {}).unwrap();
    let flat = simulate(&flat_of(&plan), &data, &options, &mut |_| {}).unwrap();
    let (h, f) = (
        tree.final_metrics.accuracy.unwrap(),
        flat.final_metrics.accuracy.unwrap(),
    );
    println!("47 sites: flat {f:.4}, 5 regions {h:.4}");
    assert!((h - f).abs() <= 0.01, "{h} vs {f}");
    // Rounds to each accuracy: the tree's global model follows the flat one
    // round for round while accuracy climbs (each round costs one more hop
    // each way); near the plateau (0.69) a crossing moves by a round or two.
    let reached = print_rounds_to(
        &[0.5, 0.6, 0.65, 0.69],
        ("flat", &flat),
        ("5 regions", &tree),
    );
    for &(flat_rounds, tree_rounds) in &reached[..3] {
        let (Some(x), Some(y)) = (flat_rounds, tree_rounds) else {
            panic!("both reach every target: {flat_rounds:?} {tree_rounds:?}");
        };
        assert!(x.abs_diff(y) <= 1, "{x} vs {y}");
    }
    // One round: the root's mean of regional means is the flat mean (to float rounding).
    let mut one = plan.clone();
    one.federation.rounds = 1;
    let a = simulate(&one, &data, &options, &mut |_| {}).unwrap();
    let b = simulate(&flat_of(&one), &data, &options, &mut |_| {}).unwrap();
    let worst = a
        .final_parameters
        .values()
        .zip(b.final_parameters.values())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "{worst}");
    // Root traffic: 5 region updates a round instead of 47 site updates.
    let topology = tree.topology.as_ref().unwrap();
    let root = topology.root_bytes_up;
    let flat_updates = flat.communication.update_bytes_up;
    println!(
        "root receives {root} bytes against {flat_updates} flat ({:.1}x less)",
        flat_updates as f64 / root as f64
    );
    assert_eq!(root * 47, flat_updates * 5);
    assert_eq!(topology.bytes_up_by_depth.len(), 2);
    assert_eq!(topology.bytes_up_by_depth[1], flat_updates);
    // Every region's model is kept; on its own sites it does at least as well
    // as the global model for most regions (they personalise).
    assert_eq!(topology.regions.len(), 5);
    for (name, region) in &topology.regions {
        println!(
            "{name}: regional {:.4}, global {:.4}",
            region.accuracy.unwrap(),
            region.global_accuracy
        );
        assert_eq!(region.depth, 1);
    }
    // Per-round traffic names regions and sites.
    let traffic = &tree.rounds[0].traffic;
    assert!(traffic.contains_key("region-1") && traffic.contains_key("site0"));
}

#[test]
fn a_three_level_tree_trains_like_flat_fedavg() {
    let (mut plan, data) = common::synthetic_10class("synthetic-hierarchical.toml");
    plan.federation.rounds = 10;
    plan.topology.regions = None;
    // Two regions, each of two hospitals of sites; site46 reports to the root directly.
    let names: Vec<String> = (0..46).map(|i| format!("site{i}")).collect();
    let group = |name: &str, members: &[String]| GroupConfig {
        name: name.into(),
        members: members.to_vec(),
    };
    plan.topology.groups = vec![
        group("north", &["h1".into(), "h2".into()]),
        group("south", &["h3".into(), "h4".into()]),
        group("h1", &names[0..10]),
        group("h2", &names[10..23]),
        group("h3", &names[23..35]),
        group("h4", &names[35..46]),
    ];
    let options = SimOptions::default();
    let tree = simulate(&plan, &data, &options, &mut |_| {}).unwrap();
    let flat = simulate(&flat_of(&plan), &data, &options, &mut |_| {}).unwrap();
    let (h, f) = (
        tree.final_metrics.accuracy.unwrap(),
        flat.final_metrics.accuracy.unwrap(),
    );
    assert!((h - f).abs() <= 0.01, "{h} vs {f}");
    let topology = tree.topology.unwrap();
    assert_eq!(topology.bytes_up_by_depth.len(), 3);
    // The root hears from two regions and one site.
    assert_eq!(topology.regions["h1"].depth, 2);
    assert_eq!(topology.regions["north"].sites.len(), 23);
}

#[test]
fn gossip_over_12_sites_loses_one_midway_and_ends_within_a_point_of_fedavg() {
    let (plan, data) = common::synthetic_sites("synthetic-gossip.toml", 12);
    assert_eq!(plan.topology.kind, TopologyKind::Gossip);
    assert_eq!(
        plan.topology.failures,
        vec![FailureConfig {
            site: "site4".into(),
            round: 30
        }]
    );
    let options = SimOptions::default();
    let gossip = simulate(&plan, &data, &options, &mut |_| {}).unwrap();
    let fedavg = simulate(&flat_of(&plan), &data, &options, &mut |_| {}).unwrap();
    // Both on the survivors' test rows: FedAvg's model, and each survivor's own.
    let survivors: Vec<usize> = (0..12).filter(|&i| i != 4).collect();
    let mut learner = tessera_sim::initial_model(&plan, &data).unwrap();
    let evaluations: Vec<Evaluation> = survivors
        .iter()
        .map(|&s| {
            learner.set_parameters(&fedavg.final_parameters).unwrap();
            learner.evaluate(&data.sites[s].test).unwrap()
        })
        .collect();
    let fedavg_accuracy = Evaluation::pool(&evaluations).accuracy();
    let topology = gossip.topology.as_ref().unwrap();
    let own = topology.site_models_accuracy.unwrap();
    let mean = topology.mean_model_accuracy.unwrap();
    println!(
        "12 sites, site4 lost at round 30 of 60: FedAvg {fedavg_accuracy:.4}; gossip site models {own:.4}, their mean {mean:.4}, consensus distance {:.3}",
        topology.consensus_distance.unwrap()
    );
    assert!(own >= fedavg_accuracy - 0.01, "{own} vs {fedavg_accuracy}");
    // Rounds to each accuracy (FedAvg: its model on all 12 sites' test rows;
    // gossip: each living site's own model on its own rows, pooled).
    let reached = print_rounds_to(
        &[0.7, 0.75, 0.8, 0.83],
        ("FedAvg", &fedavg),
        ("gossip", &gossip),
    );
    assert!(
        reached.iter().all(|(f, g)| f.is_some() && g.is_some()),
        "{reached:?}"
    );
    assert_eq!(gossip.rounds[40].dropped, 1);
    assert_eq!(gossip.rounds[20].dropped, 0);
    // Nothing reaches a root: sites send only to their neighbours (degree 4).
    assert_eq!(topology.root_bytes_up, 0);
    assert!(topology.neighbours.values().all(|n| n.len() == 4));
}

#[test]
fn gossip_on_the_complete_graph_reaches_consensus() {
    let (mut plan, data) = common::synthetic_sites("synthetic-gossip.toml", 12);
    plan.topology.graph = GossipGraph::Complete;
    plan.topology.failures.clear();
    plan.federation.rounds = 5;
    let report = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let distance = report.topology.unwrap().consensus_distance.unwrap();
    assert!(distance < 1e-4, "{distance}");
}

#[test]
fn topologies_that_cannot_work_are_refused_with_the_reason() {
    let (plan, data) = common::synthetic_10class("synthetic-hierarchical.toml");
    let mut secure = plan.clone();
    secure.secure_aggregation.enabled = true;
    secure.topology.kind = TopologyKind::Gossip;
    let err = secure.validate().unwrap_err().to_string();
    assert!(
        err.contains("gossip topology does not support secure aggregation yet"),
        "{err}"
    );
    let mut local = plan.clone();
    local.privacy = tessera_privacy::PrivacyConfig {
        mode: tessera_privacy::PrivacyMode::Local,
        noise_multiplier: Some(1.0),
        ..Default::default()
    };
    let err = local.validate().unwrap_err().to_string();
    assert!(
        err.contains("does not support local differential privacy"),
        "{err}"
    );
    let mut unknown = plan.clone();
    unknown.topology.regions = None;
    unknown.topology.groups = vec![GroupConfig {
        name: "r".into(),
        members: vec!["site0".into(), "nowhere".into()],
    }];
    let err = simulate(&unknown, &data, &SimOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lists 'nowhere', neither a site nor an aggregator"),
        "{err}"
    );
    let mut cycle = plan.clone();
    cycle.topology.regions = None;
    cycle.topology.groups = vec![
        GroupConfig {
            name: "a".into(),
            members: vec!["b".into(), "site0".into()],
        },
        GroupConfig {
            name: "b".into(),
            members: vec!["a".into()],
        },
    ];
    let err = simulate(&cycle, &data, &SimOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("cycle"), "{err}");
    let (mut gossip, data12) = common::synthetic_sites("synthetic-gossip.toml", 12);
    gossip.topology.degree = 12;
    let err = simulate(&gossip, &data12, &SimOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("random 12-regular graph over 12 sites"),
        "{err}"
    );
}

#[test]
fn central_dp_runs_at_the_aggregators_that_hold_sites() {
    let (mut plan, data) = common::synthetic_10class("synthetic-hierarchical.toml");
    plan.federation.rounds = 10;
    plan.privacy = tessera_privacy::PrivacyConfig {
        mode: tessera_privacy::PrivacyMode::Central,
        noise_multiplier: Some(0.8),
        clip_norm: 1.0,
        site_metrics: tessera_privacy::SiteMetrics::Clear,
        ..Default::default()
    };
    plan.validate().unwrap();
    let run = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let privacy = run.privacy.as_ref().unwrap();
    // Each region clipped its ~9 sites and noised their sum once a round;
    // every site is in one region's releases: 10 releases' worth.
    assert_eq!(privacy.ledger.len(), 10);
    let mut flat = flat_of(&plan);
    flat.federation.fraction = 1.0;
    let flat = simulate(&flat, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let flat_privacy = flat.privacy.as_ref().unwrap();
    println!(
        "central DP z=0.8: 5 regions epsilon {:.3}, accuracy {:.4}; flat epsilon {:.3}, accuracy {:.4}",
        privacy.epsilon,
        run.final_metrics.accuracy.unwrap(),
        flat_privacy.epsilon,
        flat.final_metrics.accuracy.unwrap()
    );
    // The same mechanism and rounds: the same spend per site.
    assert!((privacy.epsilon - flat_privacy.epsilon).abs() < 1e-9);
    // Each region noises its own sum: about sqrt(5) times the flat run's
    // noise in the global model for the same spend; it learns all the same.
    assert!(
        run.final_metrics.accuracy.unwrap() > 0.15,
        "{}",
        run.final_metrics.accuracy.unwrap()
    );
    // Noise moved the model away from the noiseless tree.
    let mut plain = plan.clone();
    plain.privacy = tessera_privacy::PrivacyConfig {
        site_metrics: tessera_privacy::SiteMetrics::Clear,
        ..Default::default()
    };
    let plain = simulate(&plain, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    assert_ne!(plain.final_parameters, run.final_parameters);
    // A tree where an aggregator holds sites and an aggregator: refused.
    let mut mixed = plan.clone();
    mixed.topology.regions = None;
    mixed.topology.groups = vec![
        GroupConfig {
            name: "low".into(),
            members: (0..20).map(|i| format!("site{i}")).collect(),
        },
        GroupConfig {
            name: "high".into(),
            members: std::iter::once("low".to_string())
                .chain((20..47).map(|i| format!("site{i}")))
                .collect(),
        },
    ];
    let err = simulate(&mixed, &data, &SimOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("'high' holds both"), "{err}");
}

#[test]
fn secure_aggregation_at_every_level_trains_like_the_plain_tree() {
    let (mut plan, data) = common::synthetic_10class("synthetic-hierarchical.toml");
    plan.federation.rounds = 10;
    let plain = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    plan.secure_aggregation.enabled = true;
    plan.validate().unwrap();
    let secure = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let (a, b) = (
        plain.final_metrics.accuracy.unwrap(),
        secure.final_metrics.accuracy.unwrap(),
    );
    println!("5 regions, 10 rounds: plain {a:.4}, masked at every level {b:.4}");
    // Masked sums weigh each member once (as flat secure aggregation weighs
    // each site once) and are rounded to fixed point: close, not equal.
    assert!((a - b).abs() <= 0.01, "{a} vs {b}");
    let worst = plain
        .final_parameters
        .values()
        .zip(secure.final_parameters.values())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst > 0.0 && worst < 0.1, "{worst}");
    // Masked inputs and the protocol's messages are counted as the sites' traffic.
    let traffic = &secure.rounds[0].traffic;
    assert!(traffic["site0"].up > plain.rounds[0].traffic["site0"].up);
}

/// A site whose local training fails in a hierarchical round (its rows
/// 1e30 times too large: the loss overflows) leaves the round, and the
/// round's record says why, as in the flat simulation. Before, the tree
/// dropped the error (`.fit(...).ok()`).
#[test]
fn a_failing_site_in_a_tree_is_recorded_as_in_flat() {
    let (mut plan, mut data) = common::synthetic_10class("synthetic-hierarchical.toml");
    plan.federation.rounds = 2;
    (data.sites[3].train.x.as_dense_mut().expect("dense")).mapv_inplace(|v| v * 1e30);
    let options = SimOptions::default();
    let tree = simulate(&plan, &data, &options, &mut |_| {}).unwrap();
    let flat = simulate(&flat_of(&plan), &data, &options, &mut |_| {}).unwrap();
    let name = &data.sites[3].name;
    for report in [&tree, &flat] {
        let errors = &report.rounds[0].site_errors;
        assert!(
            errors.len() == 1 && errors[0].starts_with(&format!("site '{name}': ")),
            "{errors:?}"
        );
    }
    assert_eq!(tree.rounds[0].site_errors, flat.rounds[0].site_errors);
}
