//! Rare positive classes: the report's binary figures on real data (MNIST's
//! zeros against the rest) and on `tessera synth --coded`'s wide table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use util::{Scratch, number};

/// A rare positive class on real data: MNIST's zeros against every other
/// digit (about 10% of the rows). The terminal leads with the AUC and what
/// the threshold misses; the report's `final.binary` agrees with the
/// accuracy counted row by row (at 0.5, accuracy is the positive rate's
/// mix of sensitivity and specificity), though one comes from the sites'
/// summed histograms and the other from their counts.
#[test]
fn rare_positives_are_reported_by_auc_pr_auc_and_balanced_accuracy() {
    let s = Scratch::new("rare-positives");
    let plan = util::root().join("examples/mnist.toml");
    let out = s
        .run(&[
            "simulate",
            "--plan",
            plan.to_str().unwrap(),
            "--set",
            "data.schema.positive=[\"0\"]",
            "--set",
            "federation.rounds=3",
            "--baselines",
            "--report",
            "zeros.json",
        ])
        .ok();
    let line = out.lines().find(|l| l.starts_with("final: ")).unwrap();
    assert!(line.starts_with("final: AUC 0."), "{line}");
    assert!(
        line.contains("PR-AUC") && line.contains("balanced accuracy"),
        "{line}"
    );
    let report = s.json("zeros.json");
    let rate = number(&report, "final.binary.positive_rate");
    assert!((0.05..0.15).contains(&rate), "{rate}");
    let (sens, spec) = (
        number(&report, "final.binary.sensitivity"),
        number(&report, "final.binary.specificity"),
    );
    let accuracy = number(&report, "final.accuracy");
    assert!(
        (rate * sens + (1.0 - rate) * spec - accuracy).abs() < 1e-9,
        "{rate} {sens} {spec} {accuracy}"
    );
    assert!(
        (number(&report, "final.binary.balanced_accuracy") - (sens + spec) / 2.0).abs() < 1e-12
    );
    let pr_auc = number(&report, "final.binary.pr_auc");
    assert!(pr_auc > rate && pr_auc <= 1.0, "{pr_auc}");
    let ece = number(&report, "final.binary.calibration_error");
    assert!((0.0..=1.0).contains(&ece), "{ece}");
    // The baselines by the same figures: pooled on the pooled test rows,
    // local with every site's rows scored by its own model; the rows and
    // so the positive rate are the federated run's.
    let line = out
        .lines()
        .find(|l| l.starts_with("baselines (positives rare): "))
        .unwrap();
    assert!(
        line.contains("pooled AUC ") && line.contains("local only AUC "),
        "{line}"
    );
    for who in ["pooled", "local"] {
        let key = format!("baselines.{who}.binary.positive_rate");
        assert!((number(&report, &key) - rate).abs() < 1e-12, "{key}");
        let auc = number(&report, &format!("baselines.{who}.auc"));
        assert!(auc > 0.5 && auc <= 1.0, "{who}: {auc}");
    }
    // Each baseline's weight decay and length, chosen on rows held out of
    // its own training rows (the plan does not turn it off): in the report
    // and on the terminal.
    let held = number(&report, "baselines.pooled.choice.validation_rows");
    let trained = number(&report, "baselines.pooled.choice.trained");
    assert!(held >= 50.0, "{held}");
    assert!(trained >= 1.0 && trained <= number(&report, "baselines.pooled.choice.of"));
    let choices = report["baselines"]["local"]["choices"].as_object().unwrap();
    assert!(!choices.is_empty());
    let line = out
        .lines()
        .find(|l| l.starts_with("baselines chosen on held-out training rows: pooled weight decay "))
        .unwrap();
    // Of MNIST's 20 sites (Dirichlet-sized) only those with 250 training
    // rows or more hold 50 out and choose; the line counts them.
    let chose = choices
        .values()
        .filter(|c| c["validation_rows"].as_u64().unwrap() > 0)
        .count();
    assert!(
        line.contains(&format!("; local: chosen at {chose} of 20 sites")),
        "{line}"
    );
}

/// `tessera synth --coded`: wide data with a rare positive class, which
/// `simulate` reads ad hoc (coded columns one-hot encoded) and reports by
/// AUC; bad settings are refused in one line.
#[test]
fn wide_coded_data_with_rare_positives_simulates() {
    let s = Scratch::new("synth-wide");
    let out = s
        .run(&[
            "synth",
            "--coded",
            "2",
            "--levels",
            "40",
            "--features",
            "4",
            "--sites",
            "4",
            "--rows",
            "500",
            "--seed",
            "3",
            "--out",
            "wide.csv",
        ])
        .ok();
    assert!(out.is_empty(), "{out}");
    let text = std::fs::read_to_string(s.path("wide.csv")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "site,x0,x1,x2,x3,c0,c1,y");
    assert_eq!(lines.len(), 2001);
    let positives = lines[1..].iter().filter(|l| l.ends_with(",1")).count();
    assert!((100..=350).contains(&positives), "{positives} of 2000");
    let run = s.run(&[
        "simulate",
        "--data",
        "wide.csv",
        "--target",
        "y",
        "--site-column",
        "site",
        "--rounds",
        "3",
        "--report",
        "wide.json",
    ]);
    let out = run.ok() + &run.stderr();
    let final_line = out.lines().find(|l| l.starts_with("final: ")).unwrap();
    assert!(final_line.starts_with("final: AUC "), "{out}");
    // 4 measurements and up to 40 levels of each coded column, one-hot.
    let header = out.lines().find(|l| l.contains(" features, ")).unwrap();
    let features: usize = header
        .split(", ")
        .find_map(|p| p.strip_suffix(" features"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{header}"));
    assert!((40..=84).contains(&features), "{header}");
    for (args, says) in [
        (&["--coded", "2", "--classes", "3"][..], "binary label"),
        (
            &["--coded", "2", "--positive-rate", "1.5"],
            "--positive-rate",
        ),
        (&["--coded", "2", "--levels", "0"], "--levels"),
        (
            &["--coded", "2", "--sites", "5000", "--rows", "5000"],
            "at most",
        ),
        // 1M rows of 1000 measurements would hold 4 GB before a row is written.
        (
            &[
                "--coded",
                "1",
                "--features",
                "1000",
                "--sites",
                "10",
                "--rows",
                "100000",
            ],
            "MB",
        ),
        (&["--coded", "2", "--positive-rate", "0.00001"], "0.001"),
        (&["--levels", "20"], "--levels is for --coded"),
        (
            &["--coded", "2", "--department-variance", "2"],
            "--department-variance",
        ),
    ] {
        let mut all = vec!["synth", "--out", "bad.csv"];
        all.extend_from_slice(args);
        let line = s.run(&all).fails();
        assert!(line.contains(says), "{args:?}: {line}");
    }
}
