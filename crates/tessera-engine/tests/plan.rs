//! Plans parse, and bad plans are refused with a message that says why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use tessera_aggregate::StrategyKind;
use tessera_engine::Plan;

fn heart_plan() -> Plan {
    Plan::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fed-heart-disease.toml"),
    )
    .unwrap()
}

#[test]
fn bundled_plan_parses_with_flamby_settings() {
    let plan = heart_plan();
    assert_eq!(plan.federation.rounds, 15);
    assert_eq!(plan.training.steps, Some(100));
    assert_eq!(plan.training.batch_size, 4);
    let lr = |kind: StrategyKind| {
        let mut p = plan.clone();
        p.federation.strategy = kind;
        (
            p.local_training().optimizer.lr,
            p.strategy_config().server_lr,
        )
    };
    assert_eq!(lr(StrategyKind::FedAvg), (0.001, Some(1.0)));
    assert_eq!(lr(StrategyKind::FedAdam), (0.01, Some(0.01)));
    assert_eq!(lr(StrategyKind::FedYogi), (0.003162, Some(0.01)));
    assert_eq!(lr(StrategyKind::FedAdagrad), (0.003162, Some(0.316228)));
    let baselines = plan.baseline_training();
    assert_eq!(
        (
            baselines.epochs,
            baselines.batch_size,
            baselines.optimizer.lr
        ),
        (Some(50), 4, 0.001)
    );
}

fn error(text: &str) -> String {
    let e = Plan::from_toml(text, "p.toml").unwrap_err().to_string();
    assert!(!e.contains('\n'), "{e}");
    e
}

const MINIMAL: &str = r#"
[data]
path = "d.csv"
site_column = "site"
[data.schema]
target = "y"
[model]
kind = "logistic"
"#;

#[test]
fn minimal_plan_gets_defaults() {
    let plan = Plan::from_toml(MINIMAL, "p.toml").unwrap();
    assert_eq!(plan.federation.strategy, StrategyKind::FedAvg);
    assert_eq!(plan.baseline_training().epochs, Some(10));
}

#[test]
fn bad_plans_are_refused() {
    // Every strategy is listed, in the registry's order.
    let quoted: Vec<String> = StrategyKind::ALL.iter().map(|k| format!("`{k}`")).collect();
    assert_eq!(
        error(&format!("{MINIMAL}\n[federation]\nstrategy = \"fedsgd\"\n")),
        format!(
            "p.toml: line 11, column 12: unknown variant `fedsgd`, expected one of {}",
            quoted.join(", ")
        )
    );
    assert!(quoted.starts_with(&["`fedavg`".to_string(), "`fedavgm`".to_string()]));
    assert!(
        error(&format!("{MINIMAL}\n[federation]\nroundz = 3\n")).contains("unknown field `roundz`")
    );
    let names: Vec<&str> = StrategyKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        error(&format!(
            "{MINIMAL}\n[strategies.fedsgd]\nserver_lr = 1.0\n"
        )),
        format!(
            "plan: strategies.fedsgd: unknown strategy 'fedsgd' (expected one of {})",
            names.join(", ")
        )
    );
    assert_eq!(
        error(&format!("{MINIMAL}\n[federation]\nfraction = 0\n")),
        "plan: federation.fraction must be in (0, 1], got 0"
    );
    assert_eq!(
        error(&format!("{MINIMAL}\n[training]\nsteps = 3\nepochs = 1\n")),
        "plan: training: give `steps` or `epochs`, not both"
    );
    assert!(error("[model\n").starts_with("p.toml: line 1"));
}

/// `--set section.key=value` changes any setting at any depth, values as
/// TOML (a bare word as a string), and is checked as a plan file is: an
/// unknown key or a value that cannot work is refused, naming it.
#[test]
fn settings_override_any_key_and_are_checked() {
    let plan = Plan::from_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/fed-heart-disease.toml"),
    )
    .unwrap();
    let set = |s: &[&str]| plan.with_settings(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
    let changed = set(&[
        "federation.strategy=fedadam",
        "federation.rounds = 7",
        "data.split.test_fraction=0.3",
        "model.kind=mlp",
        "model.hidden=[32, 16]",
    ])
    .unwrap();
    assert_eq!(changed.federation.strategy.to_string(), "fedadam");
    assert_eq!(changed.federation.rounds, 7);
    assert_eq!(changed.data.split.test_fraction, 0.3);
    assert_eq!(changed.model.hidden, vec![32, 16]);
    // Nothing else moved.
    let mut back = changed.clone();
    back.federation = plan.federation.clone();
    back.data = plan.data.clone();
    back.model = plan.model.clone();
    assert_eq!(back, plan);
    assert_eq!(set(&[]).unwrap(), plan);
    for (bad, says) in [
        ("federation.roundz=3", "unknown field `roundz`"),
        (
            "federation.rounds=0",
            "federation.rounds must be at least 1",
        ),
        ("federation.rounds", "give section.key=value"),
        ("federation..rounds=3", "empty part"),
        ("seed.x=1", "'seed' is a value, not a section"),
    ] {
        let e = set(&[bad]).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}
