//! Plans whose settings cannot work are refused before round 1, every
//! reason at once. Before, secure aggregation with `clip_range = 1e30`
//! rejected every update without a reason, and `neighbours = 1000` or Krum
//! with f = n ran to the end.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use tessera_engine::Plan;

fn heart() -> Plan {
    Plan::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fed-heart-disease.toml"),
    )
    .unwrap()
}

#[test]
fn a_secure_range_that_rounds_every_update_away_is_refused() {
    let mut plan = heart();
    plan.secure_aggregation.enabled = true;
    plan.secure_aggregation.clip_range = 1e30;
    let e = plan.validate().unwrap_err().to_string();
    assert!(e.contains("clip_range 1e30 is too wide"), "{e}");
    plan.secure_aggregation.clip_range = 10.0;
    plan.validate().unwrap();
}

#[test]
fn settings_too_big_for_the_federation_are_refused_together() {
    let mut plan = heart();
    plan.secure_aggregation.enabled = true;
    plan.secure_aggregation.neighbours = Some(1000);
    plan.federation.quorum = 5;
    let e = plan.validate().unwrap_err().to_string();
    for reason in [
        "federation.quorum = 5 but the federation has 4 sites",
        "secure_aggregation.neighbours = 1000 but a round's cohort has 4 sites",
    ] {
        assert!(e.contains(reason), "{reason}: {e}");
    }
    let mut plan = heart();
    plan.robust.rule = tessera_aggregate::RobustRule::Krum;
    plan.robust.assumed_malicious = 4;
    plan.federation.min_participants = 6;
    let e = plan.validate().unwrap_err().to_string();
    for reason in [
        "federation.min_participants = 6 but the federation has 4 sites",
        "robust rule 'krum' tolerating 4 malicious participants needs at least 11 updates",
    ] {
        assert!(e.contains(reason), "{reason}: {e}");
    }
    // A federation whose size only the data tells (47 sites in one file).
    let mut plan = heart();
    plan.data.sites.clear();
    plan.data.path = Some("all.csv".into());
    plan.data.site_column = Some("site".into());
    plan.secure_aggregation.enabled = true;
    plan.secure_aggregation.neighbours = Some(1000);
    plan.validate().unwrap();
    let e = plan.check_cohort(47).unwrap_err().to_string();
    assert!(e.contains("at most 46 neighbours each"), "{e}");
    plan.secure_aggregation.neighbours = Some(10);
    plan.check_cohort(47).unwrap();
}

/// Settings that cannot work anywhere in the plan (not only those that
/// depend on the federation's size) are named together, so that a plan is
/// fixed in one edit, and numbers are quoted short (1e300, not 301
/// digits). Before, validation stopped at the first.
#[test]
fn every_reason_is_named_at_once() {
    let mut plan = heart();
    plan.federation.rounds = 0;
    plan.federation.fraction = 1e300;
    plan.simulation.dropout = 1.0;
    plan.secure_aggregation.enabled = true;
    plan.secure_aggregation.clip_range = 1e30;
    plan.secure_aggregation.neighbours = Some(1000);
    let e = plan.validate().unwrap_err().to_string();
    assert!(e.starts_with("plan: "), "{e}");
    for reason in [
        "federation.rounds must be at least 1",
        "federation.fraction must be in (0, 1], got 1e300",
        "simulation.dropout must be in [0, 1), got 1",
        "clip_range 1e30 is too wide",
        "secure_aggregation.neighbours = 1000",
    ] {
        assert!(e.contains(reason), "{reason}: {e}");
    }
    assert_eq!(e.matches("plan: ").count(), 1, "{e}");
}

/// A name from the plan with a line break is quoted escaped: the error
/// stays one line (found by the fuzz harness: an aggregator named "a\nb").
#[test]
fn errors_quoting_names_stay_on_one_line() {
    let mut plan = heart();
    plan.topology.kind = tessera_engine::TopologyKind::Hierarchical;
    plan.privacy.site_metrics = tessera_privacy::SiteMetrics::Clear;
    plan.topology.groups = vec![tessera_engine::GroupConfig {
        name: "a\nb".into(),
        members: vec!["nowhere".into()],
    }];
    let e = tessera_engine::Tree::of_plan(&plan)
        .unwrap_err()
        .to_string();
    assert!(e.contains("aggregator 'a\\nb'"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}
