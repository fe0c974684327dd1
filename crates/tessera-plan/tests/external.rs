//! A plan whose model is external (`[model] kind = "external"`): no
//! `[data]`, and only the features external learners run under.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tessera_plan::{Plan, PlanError};

const BASE: &str = r#"
name = "external"
seed = 7

[model]
kind = "external"

[training]
lr = 0.1
batch_size = 16

[federation]
rounds = 3
min_participants = 3
quorum = 3
"#;

fn plan(extra: &str) -> Result<Plan, PlanError> {
    let plan = Plan::from_toml(&format!("{BASE}{extra}"), "test")?;
    plan.validate()?;
    Ok(plan)
}

fn refusal(extra: &str) -> String {
    plan(extra).expect_err(extra).to_string()
}

#[test]
fn an_external_plan_needs_no_data_and_round_trips() {
    let plan = plan("").unwrap();
    assert!(plan.model.kind.is_external());
    assert_eq!(plan.data, tessera_plan::no_data());
    // A plan travels as TOML (the coordinator's welcome): it reads back equal.
    let text = toml::to_string(&plan).unwrap();
    assert_eq!(Plan::from_toml(&text, "again").unwrap(), plan);
}

#[test]
fn an_external_plan_takes_the_features_its_learners_run_under() {
    // (a [federation] setting, the tables after it)
    for (federation, tables) in [
        ("strategy = \"fedprox\"", "[strategies.fedprox]\nmu = 0.1\n"),
        ("strategy = \"scaffold\"", ""),
        ("strategy = \"fedadam\"", ""),
        ("", "[robust]\nrule = \"median\"\n"),
        (
            "",
            "[privacy]\nmode = \"central\"\nnoise_multiplier = 1.0\nclip_norm = 1.0\n",
        ),
        // The learner runs DP-SGD with its site's settings; the site accounts it.
        (
            "",
            "[privacy]\nmode = \"local\"\nnoise_multiplier = 1.0\nclip_norm = 1.0\n",
        ),
        ("", "[secure_aggregation]\nenabled = true\n"),
        ("", "[compression]\nupload = \"topk:0.1\"\n"),
    ] {
        let text = BASE.replace("[federation]\n", &format!("[federation]\n{federation}\n"));
        let plan = Plan::from_toml(&format!("{text}{tables}"), "test")
            .unwrap_or_else(|e| panic!("{federation} {tables}: {e}"));
        plan.validate()
            .unwrap_or_else(|e| panic!("{federation} {tables}: {e}"));
    }
}

#[test]
fn an_external_plan_refuses_what_its_learners_cannot_do_naming_it() {
    let e = plan("")
        .map(|mut p| {
            p.federation.mode = tessera_plan::Mode::Async;
            p.validate()
        })
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("external model") && e.contains("asynchronous"),
        "{e}"
    );
    let e = refusal("[topology]\nkind = \"gossip\"\n");
    assert!(e.contains("external model") && e.contains("gossip"), "{e}");
    let e = refusal(
        "[data]\npath = \"x.csv\"\nsite_column = \"site\"\n[data.schema]\ntarget = \"y\"\n",
    );
    assert!(e.contains("no [data]"), "{e}");
}

#[test]
fn a_built_in_plan_still_needs_its_data() {
    let text = BASE.replace("kind = \"external\"", "kind = \"logistic\"");
    let e = Plan::from_toml(&text, "test").unwrap_err().to_string();
    assert!(e.contains("no [data]") && e.contains("external"), "{e}");
}
