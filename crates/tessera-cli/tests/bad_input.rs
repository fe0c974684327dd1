//! Bad input exits non-zero with one line naming the problem; never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use util::{Scratch, root};

const HEADER: &str = "site,a,b,y\n";

#[test]
fn ragged_rows() {
    let s = Scratch::new("ragged");
    s.write("d.csv", &format!("{HEADER}s1,1,2,0\ns1,3,1\n"));
    let line = s
        .run(&[
            "simulate",
            "--data",
            "d.csv",
            "--site-column",
            "site",
            "--target",
            "y",
        ])
        .fails();
    assert_eq!(line, "error: d.csv:3: row has 3 fields, expected 4");
}

#[test]
fn empty_file() {
    let s = Scratch::new("empty");
    s.write("d.csv", "");
    let line = s
        .run(&[
            "simulate",
            "--data",
            "d.csv",
            "--site-column",
            "site",
            "--target",
            "y",
        ])
        .fails();
    assert_eq!(line, "error: d.csv: file is empty");
}

#[test]
fn missing_target_column() {
    let s = Scratch::new("target");
    s.write("d.csv", &format!("{HEADER}s1,1,2,0\n"));
    let line = s
        .run(&[
            "simulate",
            "--data",
            "d.csv",
            "--site-column",
            "site",
            "--target",
            "outcome",
        ])
        .fails();
    assert_eq!(
        line,
        "error: d.csv:1: no target column named 'outcome' (columns: site, a, b, y)"
    );
}

#[test]
fn unknown_strategy() {
    let s = Scratch::new("strategy");
    let line = s.run(&["simulate", "--strategy", "fedsgd"]).fails();
    let names: Vec<&str> = tessera_aggregate::StrategyKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        line,
        format!(
            "error: unknown strategy 'fedsgd' (expected one of {})",
            names.join(", ")
        )
    );
    assert!(
        line.contains("fedavg, fedavgm, fedprox, scaffold"),
        "{line}"
    );
}

#[test]
fn text_in_a_column_declared_numeric() {
    let s = Scratch::new("numeric");
    s.write(
        "d.csv",
        &format!("{HEADER}s1,1,2,0\ns1,1,2,1\ns2,4,abc,0\ns2,1,2,1\n"),
    );
    s.write(
        "plan.toml",
        r#"
[data]
path = "d.csv"
site_column = "site"
[data.schema]
target = "y"
columns = [{ name = "b", type = "numeric" }]
[model]
kind = "logistic"
"#,
    );
    let line = s.run(&["simulate", "--plan", "plan.toml"]).fails();
    assert_eq!(
        line,
        "error: d.csv:4:3: column 'b': 'abc' is not a number, and the schema declares this column numeric"
    );
}

#[test]
fn bad_plans_and_arguments() {
    let s = Scratch::new("plans");
    let line = s.run(&["simulate", "--plan", "missing.toml"]).fails();
    assert!(
        line.starts_with("error: missing.toml: cannot read:"),
        "{line}"
    );
    s.write("p.toml", "[model]\nkind = \"logistic\"\n");
    let line = s.run(&["simulate", "--plan", "p.toml"]).fails();
    assert!(line.contains("the plan has no [data]"), "{line}");
    let line = s.run(&["simulate", "--rounds", "many"]).fails();
    assert!(line.contains("invalid value 'many'"), "{line}");
    let line = s.run(&["simulate", "--data", "x.csv"]).fails();
    assert!(line.contains("--site-column"), "{line}");
    let line = s.run(&["synth", "--sites", "0", "--out", "x.csv"]).fails();
    assert_eq!(
        line,
        "error: --sites, --rows and --features must be at least 1"
    );
    let line = s.run(&["simulate", "--set", "model.init=gaussian"]).fails();
    assert!(
        line.contains("--set 'model.init=gaussian': unknown variant `gaussian`"),
        "{line}"
    );
    let line = s.run(&["simulate", "--set", "training.lr=-1"]).fails();
    assert!(line.contains("lr"), "{line}");
    // Compression: codecs that do not parse, or cannot work with the rest.
    let line = s
        .run(&["simulate", "--set", "compression.upload=zip"])
        .fails();
    assert!(line.contains("codec 'zip': unknown stage 'zip'"), "{line}");
    let line = s
        .run(&["simulate", "--set", "compression.upload=q8+topk:0.1"])
        .fails();
    assert!(line.contains("before the value coding"), "{line}");
    let line = s
        .run(&[
            "simulate",
            "--set",
            "secure_aggregation.enabled=true",
            "--set",
            "compression.upload=topk:0.1",
        ])
        .fails();
    assert!(
        line.contains("cannot be summed under secure aggregation"),
        "{line}"
    );
    let line = s
        .run(&[
            "simulate",
            "--set",
            "federation.mode=async",
            "--set",
            "compression.upload=q8",
        ])
        .fails();
    assert!(line.contains("synchronous rounds"), "{line}");
    let line = s
        .run(&[
            "simulate",
            "--set",
            "simulation.bandwidth_bytes_per_second=fast",
        ])
        .fails();
    assert!(
        line.contains("--set 'simulation.bandwidth_bytes_per_second=fast'"),
        "{line}"
    );
}

#[test]
fn logistic_on_ten_classes_says_what_to_do() {
    let s = Scratch::new("classes");
    s.run(&[
        "synth",
        "--sites",
        "2",
        "--rows",
        "50",
        "--features",
        "4",
        "--classes",
        "10",
        "--out",
        "d.csv",
    ])
    .ok();
    let line = s
        .run(&[
            "simulate",
            "--data",
            "d.csv",
            "--site-column",
            "site",
            "--target",
            "y",
        ])
        .fails();
    assert!(
        line.contains("needs a binary target") && line.contains("softmax"),
        "{line}"
    );
}

#[test]
fn a_plan_path_outside_the_working_folder_resolves_data_beside_it() {
    let s = Scratch::new("plan-path");
    let plan = root().join("examples/fed-heart-disease.toml");
    s.run(&[
        "simulate",
        "-q",
        "--plan",
        plan.to_str().unwrap(),
        "--rounds",
        "1",
        "--report",
        "r.json",
    ])
    .ok();
    assert_eq!(s.json("r.json")["rounds"].as_array().unwrap().len(), 1);
}

#[test]
fn an_identifier_column_is_named_and_can_be_ignored() {
    let s = Scratch::new("ignore");
    let mut csv = String::from("site,patient,a,y\n");
    for i in 0..1200 {
        csv.push_str(&format!("s{},p{i},{},{}\n", i % 3, i % 7, i % 2));
    }
    s.write("d.csv", &csv);
    let line = s
        .run(&[
            "simulate",
            "--data",
            "d.csv",
            "--site-column",
            "site",
            "--target",
            "y",
        ])
        .fails();
    assert!(
        line.contains("column 'patient' has 1200 distinct values")
            && line.contains("--ignore patient"),
        "{line}"
    );
    s.run(&[
        "simulate",
        "-q",
        "--data",
        "d.csv",
        "--site-column",
        "site",
        "--target",
        "y",
        "--ignore",
        "patient",
        "--rounds",
        "1",
        "--report",
        "r.json",
    ])
    .ok();
    assert_eq!(s.json("r.json")["features"], serde_json::json!(["a"]));
}

#[test]
fn ca_validity_out_of_range_and_bad_hosts() {
    let s = Scratch::new("ca");
    let line = s
        .run(&["ca", "init", "--dir", "ca", "--days", "3000000"])
        .fails();
    assert!(
        line.starts_with(
            "error: --days 3000000 is too far: the CA certificate must expire by \
             9999-12-31 (X.509 GeneralizedTime), at most"
        ),
        "{line}"
    );
    let line = s.run(&["ca", "init", "--dir", "ca", "--days", "0"]).fails();
    assert_eq!(
        line,
        "error: --days 0: the CA certificate must be valid for at least 1 day"
    );
    s.run(&["ca", "init", "--dir", "ca"]).ok();
    let line = s
        .run(&[
            "ca", "issue", "--dir", "ca", "--site", "va", "--days", "3000000",
        ])
        .fails();
    assert!(
        line.starts_with("error: --days 3000000 is too far: a certificate must expire by"),
        "{line}"
    );
    let line = s
        .run(&[
            "ca",
            "issue",
            "--dir",
            "ca",
            "--coordinator",
            "--host",
            "a b",
        ])
        .fails();
    assert!(
        line.starts_with(
            "error: coordinator host 'a b' is neither an IP address nor a DNS name: ' ' is \
             not allowed"
        ),
        "{line}"
    );
    let line = s
        .run(&["ca", "issue", "--dir", "ca", "--coordinator", "--host", ""])
        .fails();
    assert_eq!(
        line,
        "error: coordinator host '' is empty: give a DNS name or an IP address"
    );
}

/// A two-site plan in `cfg/` whose data lies in `data/` (named `../data/...`
/// from the plan's folder): the plan's path.
fn plan_beside_its_data(s: &Scratch) -> &'static str {
    std::fs::create_dir_all(s.path("cfg")).unwrap();
    std::fs::create_dir_all(s.path("data")).unwrap();
    let mut csv = String::from("site,a,b,y\n");
    for i in 0..40 {
        csv.push_str(&format!("s{},{},{},{}\n", i % 2, i % 5, i % 3, i % 2));
    }
    s.write("data/d.csv", &csv);
    s.write(
        "cfg/plan.toml",
        r#"name = "tiny"
[data]
path = "../data/d.csv"
site_column = "site"
[data.schema]
target = "y"
[model]
kind = "logistic"
[federation]
rounds = 1
"#,
    );
    "cfg/plan.toml"
}

#[test]
fn a_report_over_the_plan_is_refused_and_the_plan_kept() {
    let s = Scratch::new("out-plan");
    let plan = plan_beside_its_data(&s);
    let before = std::fs::read(s.path(plan)).unwrap();
    let line = s
        .run(&["simulate", "-q", "--plan", plan, "--report", plan])
        .fails();
    assert_eq!(
        line,
        "error: --report cfg/plan.toml is the plan file (cfg/plan.toml): choose another path"
    );
    // Reached another way (through `..`), it is the same file.
    let line = s
        .run(&[
            "simulate",
            "-q",
            "--plan",
            plan,
            "--plot",
            "data/../cfg/plan.toml",
        ])
        .fails();
    assert_eq!(
        line,
        "error: --plot data/../cfg/plan.toml is the plan file (cfg/plan.toml): choose another path"
    );
    assert_eq!(std::fs::read(s.path(plan)).unwrap(), before);
    assert!(!s.path("tessera-out").exists(), "nothing was written");
}

#[test]
fn a_model_over_a_data_file_of_the_plan_is_refused_and_the_data_kept() {
    let s = Scratch::new("out-data");
    let plan = plan_beside_its_data(&s);
    let before = std::fs::read(s.path("data/d.csv")).unwrap();
    let line = s
        .run(&[
            "simulate",
            "-q",
            "--plan",
            plan,
            "--report",
            "r.json",
            "--model-out",
            "data/d.csv",
        ])
        .fails();
    assert_eq!(
        line,
        "error: --model-out data/d.csv is a data file of the plan (cfg/../data/d.csv): choose another path"
    );
    assert_eq!(std::fs::read(s.path("data/d.csv")).unwrap(), before);
    assert!(!s.path("r.json").exists(), "nothing was written");
    // Ad hoc, the --data file.
    let line = s
        .run(&[
            "simulate",
            "-q",
            "--data",
            "data/d.csv",
            "--site-column",
            "site",
            "--target",
            "y",
            "--report",
            "data/d.csv",
        ])
        .fails();
    assert_eq!(
        line,
        "error: --report data/d.csv is the --data file (data/d.csv): choose another path"
    );
    assert_eq!(std::fs::read(s.path("data/d.csv")).unwrap(), before);
}

#[test]
fn two_outputs_on_one_path_are_refused() {
    let s = Scratch::new("out-twice");
    let plan = plan_beside_its_data(&s);
    let line = s
        .run(&[
            "simulate",
            "-q",
            "--plan",
            plan,
            "--report",
            "a",
            "--model-out",
            "a",
        ])
        .fails();
    assert_eq!(
        line,
        "error: --model-out a is the same file as --report a: choose another path"
    );
    // The plot's default is the report's path with .svg.
    let line = s
        .run(&["simulate", "-q", "--plan", plan, "--report", "r.svg"])
        .fails();
    assert_eq!(
        line,
        "error: --plot (default: the report's path with .svg) r.svg is the same file as --report r.svg: choose another path"
    );
    assert!(!s.path("a").exists() && !s.path("r.svg").exists());
}

#[test]
fn deployed_outputs_over_inputs_are_refused_before_listening() {
    let s = Scratch::new("out-deploy");
    let plan = plan_beside_its_data(&s);
    let (plan_before, data_before) = (
        std::fs::read(s.path(plan)).unwrap(),
        std::fs::read(s.path("data/d.csv")).unwrap(),
    );
    let line = s
        .run(&[
            "coordinator",
            "--plan",
            plan,
            "--db",
            "run.db",
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--report",
            "run.db",
        ])
        .fails();
    assert_eq!(
        line,
        "error: --report run.db is the --db database (run.db): choose another path"
    );
    assert!(!s.path("run.db").exists(), "the coordinator never started");
    let line = s
        .run(&[
            "peer",
            "--plan",
            plan,
            "--site",
            "s0",
            "--data",
            "data/d.csv",
            "--listen",
            "127.0.0.1:0",
            "--peer",
            "s1=http://127.0.0.1:1",
            "--insecure",
            "--model-out",
            "data/d.csv",
        ])
        .fails();
    // --data is the working folder's, named as resolved.
    assert_eq!(
        line,
        format!(
            "error: --model-out data/d.csv is the --data file ({}): choose another path",
            std::path::absolute(s.path("data/d.csv")).unwrap().display()
        )
    );
    assert_eq!(std::fs::read(s.path(plan)).unwrap(), plan_before);
    assert_eq!(std::fs::read(s.path("data/d.csv")).unwrap(), data_before);
}

/// A negative number for a numeric option is checked as a number, not
/// taken for an unknown flag; a negative learning rate set on the plan is
/// refused as a learning rate.
#[test]
fn a_negative_learning_rate_is_refused_as_a_learning_rate() {
    let s = Scratch::new("negative-lr");
    let line = s.run(&["simulate", "--set", "training.lr=-1"]).fails();
    assert_eq!(
        line,
        "error: plan: training: `lr` must be a positive number, got -1"
    );
    let line = s.run(&["simulate", "--target-accuracy", "-1"]).fails();
    assert_eq!(
        line,
        "error: --target-accuracy must be between 0 and 1, got -1"
    );
}

/// An operating-system error is printed once, not once per layer.
#[test]
fn an_os_error_is_printed_once() {
    let s = Scratch::new("os-error-once");
    let line = s.run(&["simulate", "--plan", "no-such-plan.toml"]).fails();
    assert_eq!(line.matches("os error 2").count(), 1, "{line}");
}

/// A plan whose cross-silo feature passes its run's budget: a coordinator
/// refuses it before listening, naming the feature and the budget, rather
/// than start a run whose charges do not fit.
#[test]
fn a_coordinator_refuses_a_cross_silo_plan_past_its_budget() {
    let s = Scratch::new("cross-silo-deployed");
    let text = std::fs::read_to_string(root().join("examples/cross-silo-visits.toml"))
        .unwrap()
        .replace(
            "\"../data/",
            &format!("\"{}/data/", root().to_str().unwrap()),
        )
        + "\n[privacy]\nmode = \"central\"\nepsilon = 3.0\n";
    let plan = s.write("plan.toml", &text);
    let run = s.run(&[
        "coordinator",
        "--plan",
        plan.to_str().unwrap(),
        "--db",
        "c.sqlite",
        "--listen",
        "127.0.0.1:0",
        "--insecure",
    ]);
    assert!(!run.output.status.success());
    let err = run.stderr();
    assert!(
        err.contains("[data.cross_silo]") && err.contains("budget exceeded"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
