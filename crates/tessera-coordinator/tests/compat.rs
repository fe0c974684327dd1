//! The compatibility matrix (docs/COMPATIBILITY.md) against the join
//! itself: for every row, a participant of the row's oldest version joins a
//! run of the row's plan, one a version older is refused naming what it
//! lacks, and another major version is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use tessera_coordinator::compat::matrix;
use tessera_proto::{MAJOR, capabilities_at, pb};

fn hello(site: &str, major: u32, minor: u32) -> pb::Hello {
    pb::Hello {
        major,
        minor,
        capabilities: capabilities_at(minor)
            .into_iter()
            .map(String::from)
            .collect(),
        site: site.into(),
        ..Default::default()
    }
}

/// The versions' capabilities as the releases sent them, written out here
/// (not read from the table the matrix is made from).
#[test]
fn the_versions_capabilities_are_the_releases() {
    let v1_5 = [
        "chunked-tensors",
        "agreement",
        "evaluation-histograms",
        "scaffold",
        "heartbeat",
        "secure-aggregation",
        "compression",
        "compressed-models",
        "codec-topk",
        "codec-randk",
        "codec-fp16",
        "codec-q8",
        "codec-q4",
        "codec-q2",
        "gossip",
        "withdraw",
        "secure-aggregation-signed",
    ];
    assert_eq!(capabilities_at(5), v1_5);
    let mut v1_6 = v1_5.to_vec();
    v1_6.push("declared-rows");
    assert_eq!(capabilities_at(6), v1_6);
    let mut v1_10 = v1_6.clone();
    v1_10.extend([
        "instructions",
        "gossip-rejoin",
        "site-evaluations",
        "external-learners",
    ]);
    assert_eq!(capabilities_at(10), v1_10);
    assert!(capabilities_at(18).contains(&"initial-model-digest"));
    assert!(!capabilities_at(18).contains(&"ifca"));
}

#[test]
fn every_row_of_the_matrix_holds_at_a_real_join() {
    let (base, base_text) = common::plan("");
    let rows = matrix(&base).unwrap();
    assert!(rows.len() >= 20, "{rows:?}");
    for row in &rows {
        let plan = base.with_settings(&row.settings).unwrap();
        // The run's text: the base plan's, the settings noted (a run is
        // known by its plan's text).
        let text = format!("{base_text}\n# {}\n", row.settings.join(" "));
        let db = common::Db::new();
        let mut f = db.open(&(plan, text));
        let [a, b, c, ..] = &common::SITES[..] else {
            panic!("the heart plan has four sites")
        };
        f.join(&a.name, &hello(&a.name, MAJOR, row.oldest))
            .unwrap_or_else(|e| panic!("{}: 1.{} refused: {e}", row.what, row.oldest));
        if row.oldest > 0 {
            let e = f
                .join(&b.name, &hello(&b.name, MAJOR, row.oldest - 1))
                .map(|_| ())
                .expect_err(&row.what)
                .to_string();
            assert!(
                e.contains("lacks") && row.needs.iter().any(|n| e.contains(n)),
                "{}: {e}",
                row.what
            );
        }
        let e = f
            .join(&c.name, &hello(&c.name, MAJOR + 1, 0))
            .map(|_| ())
            .expect_err(&row.what)
            .to_string();
        assert!(e.contains("major versions differ"), "{}: {e}", row.what);
    }
}
