//! `tessera contributions` on a simulated run's report: every site's
//! contribution, reputation and credits, and a clear refusal of a report
//! without them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use util::Scratch;

#[test]
fn contributions_table_ranks_every_site_and_shares_the_value() {
    let s = Scratch::new("contributions");
    let out = s
        .run(&[
            "simulate",
            "--set",
            "contribution.method=exact",
            "--set",
            "contribution.value=100",
            "--set",
            "privacy.site_metrics=clear",
            "--report",
            "run.json",
        ])
        .ok();
    assert!(
        out.contains("contributions (exact first-order, 15 rounds"),
        "{out}"
    );
    let report = s.json("run.json");
    let sites = report["contributions"]["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 4);
    let credits: f64 = sites.iter().map(|s| s["credits"].as_f64().unwrap()).sum();
    assert!((credits - 100.0).abs() < 1e-9, "{credits}");
    let table = s.run(&["contributions", "--report", "run.json"]).ok();
    for site in ["cleveland", "hungarian", "switzerland", "va"] {
        assert!(table.contains(site), "{table}");
    }
    assert!(
        table.contains("reputation = 0.6 x attribution score"),
        "{table}"
    );
    let json = s
        .run(&["contributions", "--report", "run.json", "--json"])
        .ok();
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["method"], "exact");

    // A run without [contribution]: refused, saying how to get them.
    s.run(&["simulate", "--report", "plain.json"]).ok();
    let err = s.run(&["contributions", "--report", "plain.json"]).fails();
    assert!(err.contains("has no contributions"), "{err}");
    let err = s
        .run(&["contributions", "--report", "nowhere.json"])
        .fails();
    assert!(err.contains("reading nowhere.json"), "{err}");
}
