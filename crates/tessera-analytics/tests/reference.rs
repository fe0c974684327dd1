//! Noiseless answers on Fed-Heart-Disease equal the pooled numpy
//! computation (tests/reference/heart.json, made by analytics_reference.py)
//! to 1e-9 relative, federation-wide and per site.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::Value;
use tessera_privacy::{Budgets, Ledger};

#[test]
fn noiseless_answers_equal_the_pooled_numpy_reference() {
    let (schema, sites) = common::records("fed-heart-disease.toml");
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(
            common::root().join("crates/tessera-analytics/tests/reference/heart.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut ledger = Ledger::new(Budgets::default());
    // The reference groups by the target, whose levels the plan does not
    // declare.
    let mut settings = common::exact();
    settings.config.public_levels = true;
    let mut compared = 0;
    let mut worst: f64 = 0.0;
    for (q, query) in reference["queries"].as_array().unwrap().iter().enumerate() {
        let text = query["query"].as_str().unwrap();
        let report =
            tessera_analytics::answer(text, &schema, &sites, &settings, &mut ledger, q as u32 + 1)
                .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(
            report.ledger.is_empty(),
            "an unprotected release charges no epsilon"
        );
        let want_answers = query["answers"].as_array().unwrap();
        assert_eq!(report.answers.len(), want_answers.len(), "{text}");
        for (got, want) in report.answers.iter().zip(want_answers) {
            assert_eq!(got.scope, want["scope"].as_str().unwrap());
            assert!(!got.release.protected);
            let want_groups = want["groups"].as_array().unwrap();
            assert_eq!(
                got.groups.len(),
                want_groups.len(),
                "{text}: every agreed group"
            );
            for want_group in want_groups {
                let key: Vec<String> = want_group["key"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap().to_string())
                    .collect();
                let group = got
                    .groups
                    .iter()
                    .find(|g| g.key == key)
                    .unwrap_or_else(|| panic!("{text}: no group {key:?}"));
                let stats = want_group["statistics"].as_object().unwrap();
                assert_eq!(group.statistics.len(), stats.len(), "{text} {key:?}");
                for statistic in &group.statistics {
                    let want: Vec<f64> = stats[&statistic.name]
                        .as_array()
                        .unwrap_or_else(|| panic!("{text}: {} missing", statistic.name))
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect();
                    assert_eq!(statistic.values.len(), want.len(), "{}", statistic.name);
                    for (g, w) in statistic.values.iter().zip(&want) {
                        let rel = (g - w).abs() / w.abs().max(1e-6);
                        worst = worst.max(rel);
                        assert!(
                            rel <= 1e-9,
                            "{} {} {key:?} {}: {g} != {w} (relative {rel:e})",
                            got.scope,
                            text,
                            statistic.name
                        );
                        compared += 1;
                    }
                    if !statistic.name.starts_with("count_distinct") {
                        assert!(statistic.errors.iter().all(|&e| e == 0.0));
                    }
                }
            }
        }
    }
    assert!(compared >= 200, "{compared} values compared");
    println!("{compared} values equal the reference, worst relative difference {worst:e}");
}

/// The committed reference is what the script makes (where python3 with
/// numpy is installed, as in CI; elsewhere the test says so and passes).
#[test]
fn the_committed_reference_is_what_the_script_makes() {
    let script =
        common::root().join("crates/tessera-analytics/tests/reference/analytics_reference.py");
    let Ok(out) = std::process::Command::new("python3").arg(&script).output() else {
        eprintln!("no python3: the reference script was not rerun");
        return;
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("No module named 'numpy'"),
            "the reference script failed: {err}"
        );
        eprintln!("no numpy: the reference script was not rerun");
        return;
    }
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(
            common::root().join("crates/tessera-analytics/tests/reference/heart.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(made["queries"], committed["queries"]);
}
