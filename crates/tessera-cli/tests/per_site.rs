//! A report whose size does not grow with the site count: the per-site
//! figures written apart (`--per-site`, and without asking past 1000
//! sites) are exactly the ones the whole report holds, and the report keeps
//! their summary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use serde_json::Value;
use util::Scratch;

fn lines(s: &Scratch, name: &str) -> Vec<Value> {
    std::fs::read_to_string(s.path(name))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_per_site_file_holds_what_the_whole_report_holds() {
    let s = Scratch::new("per-site");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "simulate",
            "-q",
            "--baselines",
            "--rounds",
            "2",
            "--set",
            "privacy.site_metrics=clear",
        ];
        args.extend_from_slice(extra);
        s.run(&args).ok();
    };
    run(&["--report", "whole.json"]);
    run(&["--report", "split.json", "--per-site", "sites.jsonl"]);
    let whole = s.json("whole.json");
    let split = s.json("split.json");
    let sites = lines(&s, "sites.jsonl");
    let names: Vec<&str> = sites.iter().map(|l| l["site"].as_str().unwrap()).collect();
    assert_eq!(names, ["cleveland", "hungarian", "switzerland", "va"]);
    for line in &sites {
        let site = line["site"].as_str().unwrap();
        let data = whole["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["site"] == site)
            .unwrap();
        assert_eq!(&line["data"], data, "{site}");
        assert_eq!(line["final_metrics"], whole["final"]["per_site"][site]);
        assert_eq!(line["local"], whole["baselines"]["local"]["per_site"][site]);
        assert_eq!(
            line["local_cross_site_mean_accuracy"],
            whole["baselines"]["local"]["cross_site_mean_accuracy"][site]
        );
        assert_eq!(
            line["pooled"],
            whole["baselines"]["pooled"]["per_site"][site]
        );
        for round in whole["rounds"].as_array().unwrap() {
            let r = round["round"].to_string();
            assert_eq!(
                line["traffic"][&r], round["traffic"][site],
                "{site} round {r}"
            );
        }
        assert_eq!(
            line["bytes_up"],
            whole["communication"]["bytes_up_per_site"][site]
        );
        assert!(line["final_metrics"]["accuracy"].is_number(), "{line}");
    }
    // The report keeps the rest, and a summary in place of the per-site figures.
    assert!(
        split
            .get("data")
            .is_none_or(|d| d.as_array().unwrap().is_empty())
    );
    assert_eq!(split["final"]["per_site"], serde_json::json!({}));
    assert_eq!(
        split["baselines"]["local"]["per_site"],
        serde_json::json!({})
    );
    assert!(split["rounds"][0].get("traffic").is_none());
    assert_eq!(
        split["communication"]["bytes_up_per_site"],
        serde_json::json!({})
    );
    assert_eq!(
        split["communication"]["bytes_up"],
        whole["communication"]["bytes_up"]
    );
    for key in ["accuracy", "auc", "loss", "mean_site_accuracy"] {
        assert_eq!(split["final"][key], whole["final"][key], "{key}");
    }
    assert_eq!(
        split["baselines"]["pooled"]["accuracy"],
        whole["baselines"]["pooled"]["accuracy"]
    );
    let summary = &split["per_site"];
    assert_eq!(summary["sites"], 4);
    assert_eq!(summary["file"], "sites.jsonl");
    let rows: u64 = whole["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["n_train"].as_u64().unwrap())
        .sum();
    assert_eq!(summary["train_rows"], rows);
    let mut accuracies: Vec<f64> = sites
        .iter()
        .map(|l| l["final_metrics"]["accuracy"].as_f64().unwrap())
        .collect();
    accuracies.sort_by(f64::total_cmp);
    assert_eq!(summary["final_accuracy"]["min"], accuracies[0]);
    assert_eq!(summary["final_accuracy"]["max"], accuracies[3]);
    assert_eq!(summary["final_accuracy"]["median"], accuracies[1]);
    assert!(whole.get("per_site").is_none());
}

#[test]
fn past_a_thousand_sites_the_report_stays_small() {
    let s = Scratch::new("per-site-many");
    s.run(&[
        "synth",
        "--sites",
        "1001",
        "--rows",
        "8",
        "--features",
        "2",
        "--classes",
        "2",
        "--seed",
        "1",
        "--out",
        "many.csv",
    ])
    .ok();
    let run = s.run(&[
        "simulate",
        "--data",
        "many.csv",
        "--site-column",
        "site",
        "--target",
        "y",
        "--rounds",
        "2",
        "--report",
        "many.json",
    ]);
    let out = run.ok() + &run.stderr();
    assert!(
        out.contains("per-site figures of 1001 sites: many.sites.jsonl"),
        "{out}"
    );
    let report = s.json("many.json");
    assert_eq!(report["per_site"]["sites"], 1001);
    assert_eq!(report["per_site"]["sites_with_traffic"]["1"], 1001);
    let size = std::fs::metadata(s.path("many.json")).unwrap().len();
    assert!(size < 16 * 1024, "the report is {size} bytes");
    let sites = lines(&s, "many.sites.jsonl");
    assert_eq!(sites.len(), 1001);
    assert!(
        sites
            .windows(2)
            .all(|w| w[0]["site"].as_str() < w[1]["site"].as_str())
    );
    assert!(
        sites
            .iter()
            .all(|l| l["data"]["n_train"].as_u64().unwrap() > 0)
    );
}

#[test]
fn training_failures_go_to_their_sites_and_the_file_is_named_from_the_report() {
    let s = Scratch::new("per-site-errors");
    s.run(&[
        "synth",
        "--sites",
        "4",
        "--rows",
        "50",
        "--features",
        "5",
        "--classes",
        "2",
        "--seed",
        "3",
        "--out",
        "few.csv",
    ])
    .ok();
    s.run(&[
        "simulate",
        "-q",
        "--data",
        "few.csv",
        "--site-column",
        "site",
        "--target",
        "y",
        "--rounds",
        "2",
        "--set",
        "training.lr=3e38",
        "--report",
        "out/d.json",
        "--per-site",
        "out/d.jsonl",
    ])
    .ok();
    let report = s.json("out/d.json");
    assert_eq!(report["per_site"]["file"], "d.jsonl");
    let failed = report["rounds"][0]["site_errors"].as_array().unwrap();
    assert!(!failed.is_empty(), "{report}");
    assert_eq!(report["per_site"]["site_errors"]["1"], failed.len());
    let sites = lines(&s, "out/d.jsonl");
    let with_errors: Vec<&Value> = sites.iter().filter(|l| l.get("errors").is_some()).collect();
    assert_eq!(with_errors.len(), failed.len());
    for line in with_errors {
        let why = line["errors"]["1"].as_str().unwrap();
        assert!(why.contains("diverged"), "{why}");
        let site = line["site"].as_str().unwrap();
        assert!(
            failed
                .iter()
                .any(|f| f.as_str().unwrap() == format!("site '{site}': {why}"))
        );
    }
}
