//! The plan's `[analytics]` table: defaults to DP at epsilon 1 a query, is
//! read with its bounds, and bad settings are reported naming their key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tessera_plan::Plan;

const BASE: &str = "[model]\nkind = \"logistic\"\n[data]\npath = \"rows.csv\"\nsite_column = \"site\"\n[data.schema]\ntarget = \"y\"\n";

#[test]
fn analytics_defaults_to_dp_and_reads_bounds() {
    let plan = Plan::from_toml(BASE, "plan.toml").unwrap();
    assert!(
        plan.analytics.dp,
        "answers are noised unless the plan says otherwise"
    );
    assert_eq!(plan.analytics.epsilon, 1.0);
    let plan = Plan::from_toml(
        &format!("{BASE}[analytics]\ndp = false\n[analytics.bounds]\nage = [0, 120]\n"),
        "plan.toml",
    )
    .unwrap();
    assert!(!plan.analytics.dp);
    assert_eq!(plan.analytics.bounds["age"], [0.0, 120.0]);
    let plan = Plan::from_file(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/analytics-synthetic.toml"
    )))
    .unwrap();
    plan.validate().unwrap();
    assert!(plan.analytics.per_site);
}

#[test]
fn bad_analytics_settings_are_refused_naming_their_key() {
    let error = Plan::from_toml(
        &format!(
            "{BASE}[analytics]\nepsilon = -1\ndelta = 2\n[analytics.bounds]\nage = [120, 0]\n"
        ),
        "plan.toml",
    )
    .unwrap_err()
    .to_string();
    for key in [
        "analytics.epsilon",
        "analytics.delta",
        "analytics.bounds.age",
    ] {
        assert!(error.contains(key), "{key}: {error}");
    }
    let error = Plan::from_toml(&format!("{BASE}[analytics]\nepsilom = 1\n"), "plan.toml")
        .unwrap_err()
        .to_string();
    assert!(error.contains("epsilom"), "{error}");
}

/// An adversary who may ask the deployed federation as often as it likes
/// averages the noise away: a plan that keeps the sites for DP queries
/// must bound them with a budget, and rounds stay below the reserved round
/// numbers of analytics and evaluation.
#[test]
fn serving_dp_queries_needs_a_budget_and_rounds_stay_below_the_reserved_numbers() {
    let serving = "[analytics]\nserve_seconds = 60\nanalysts = [\"alice\"]\n";
    let refused = Plan::from_toml(&format!("{BASE}{serving}"), "plan.toml")
        .and_then(|p| p.validate().map(|()| p));
    let error = match refused {
        Ok(_) => panic!("a plan serving DP queries without a budget was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("[privacy]") && error.contains("average"),
        "{error}"
    );
    let budgeted = Plan::from_toml(
        &format!("{BASE}[privacy]\nbudget = 3.0\n{serving}"),
        "plan.toml",
    )
    .unwrap();
    budgeted.validate().unwrap();
    let unprotected =
        Plan::from_toml(&format!("{BASE}{serving}dp = false\n"), "plan.toml").unwrap();
    unprotected.validate().unwrap();
    let many = Plan::from_toml(
        &format!("[federation]\nrounds = 1073741824\n{BASE}"),
        "plan.toml",
    )
    .and_then(|p| p.validate().map(|()| p));
    let error = match many {
        Ok(_) => panic!("2^30 rounds were accepted"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("federation.rounds"), "{error}");
}
