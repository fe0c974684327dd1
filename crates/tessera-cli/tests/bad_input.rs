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
    assert_eq!(
        line,
        "error: unknown strategy 'fedsgd' (expected one of fedavg, fedavgm, fedprox, scaffold, fedadam, fedyogi, fedadagrad)"
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
    assert!(line.contains("missing field `data`"), "{line}");
    let line = s.run(&["simulate", "--rounds", "many"]).fails();
    assert!(line.contains("invalid value 'many'"), "{line}");
    let line = s.run(&["simulate", "--data", "x.csv"]).fails();
    assert!(line.contains("--site-column"), "{line}");
    let line = s.run(&["synth", "--sites", "0", "--out", "x.csv"]).fails();
    assert_eq!(
        line,
        "error: --sites, --rows and --features must be at least 1"
    );
    let line = s.run(&["simulate", "--init", "gaussian"]).fails();
    assert_eq!(
        line,
        "error: unknown init 'gaussian' (expected uniform or zeros)"
    );
    let line = s.run(&["simulate", "--lr=-1"]).fails();
    assert!(line.contains("lr"), "{line}");
    // Compression: codecs that do not parse, or cannot work with the rest.
    let line = s.run(&["simulate", "--upload-codec", "zip"]).fails();
    assert!(line.contains("codec 'zip': unknown stage 'zip'"), "{line}");
    let line = s
        .run(&["simulate", "--upload-codec", "q8+topk:0.1"])
        .fails();
    assert!(line.contains("before the value coding"), "{line}");
    let line = s
        .run(&[
            "simulate",
            "--secure-aggregation",
            "--upload-codec",
            "topk:0.1",
        ])
        .fails();
    assert!(
        line.contains("cannot be summed under secure aggregation"),
        "{line}"
    );
    let line = s
        .run(&["simulate", "--mode", "async", "--upload-codec", "q8"])
        .fails();
    assert!(line.contains("synchronous rounds"), "{line}");
    let line = s.run(&["simulate", "--bandwidth", "fast"]).fails();
    assert!(line.contains("expected MIN:MAX"), "{line}");
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
