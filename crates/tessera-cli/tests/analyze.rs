//! `tessera analyze`: a table on stdout, JSON and an SVG plot; with `--db`,
//! each answer charged on top of a run's training releases, refused once it
//! would pass the run's budget, and shown by `tessera privacy` together with
//! training's; an answer without DP only where the plan says so, recorded
//! as an unprotected release.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tessera_coordinator::store::{LedgerRow, RunRow};
use tessera_coordinator::{RunStore, SqliteStore};
use tessera_privacy::{Budgets, DpEvent, Ledger};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-analyze-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const HEART: &str = "examples/fed-heart-disease.toml";

#[test]
fn answers_print_a_table_and_write_json_and_a_histogram_plot() {
    let dir = scratch("outputs");
    let json = dir.join("answer.json");
    let svg = dir.join("age.svg");
    let out = tessera(&[
        "analyze",
        "--plan",
        HEART,
        "--query",
        "SELECT cp, count(*), mean(age), histogram(age, 6) FROM data GROUP BY cp CLAMP age 0 120",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("federation: epsilon 1 at delta 1e-6"),
        "{shown}"
    );
    assert!(shown.contains("cp=4:"), "{shown}");
    assert!(shown.contains("charged to no stored ledger"), "{shown}");
    assert!(
        shown.contains("mean(age)") && shown.contains(" ± "),
        "{shown}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["answers"][0]["groups"].as_array().unwrap().len(), 4);
    assert!(report["answers"][0]["release"]["sigma"].as_f64().unwrap() > 0.0);
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.matches("<rect").count() >= 6);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn answers_are_charged_with_training_and_refused_past_the_run_budget() {
    let dir = scratch("budget");
    let db = dir.join("run.db");
    // A training run's releases, as a coordinator stores them: 3 rounds of
    // central DP at noise multiplier 2.
    let round = DpEvent {
        sampling_rate: 1.0,
        noise_multiplier: 2.0,
        steps: 1,
    };
    let delta = 1e-5;
    let mut ledger = Ledger::new(Budgets {
        delta,
        run: None,
        participants: Default::default(),
    });
    {
        let store = SqliteStore::open(&db).unwrap();
        store
            .create_run(&RunRow {
                id: "train-1".into(),
                name: "fed-heart-disease".into(),
                plan: std::fs::read_to_string(root().join(HEART)).unwrap(),
                strategy: "fedavg".into(),
                seed: 42,
                rounds: 3,
                created_unix_micros: 1,
                status: "finished".into(),
            })
            .unwrap();
        for r in 1..=3 {
            let entry = ledger.record_central(r, round, &[]).unwrap().clone();
            store
                .write(&mut |tx| {
                    tx.put_ledger_row(
                        "train-1",
                        &LedgerRow {
                            entry: entry.clone(),
                            delta,
                            clip_norm: 1.0,
                            next_clip_norm: 1.0,
                            noise_std: 2.0,
                            updates: 4,
                            recorded_micros: 1,
                        },
                    )
                })
                .unwrap();
        }
    }
    let training = ledger.run_epsilon();
    let budget = format!("privacy.budget={:.4}", training + 1.2);
    let mut ran = 0;
    let refusal = loop {
        let out = tessera(&[
            "analyze",
            "--plan",
            HEART,
            "--query",
            "SELECT count(*), mean(age) FROM data CLAMP age 0 120",
            "--db",
            db.to_str().unwrap(),
            "--run",
            "train-1",
            "--set",
            &budget,
        ]);
        if !out.status.success() {
            break text(&out);
        }
        ran += 1;
        assert!(ran < 20, "the budget never ran out");
    };
    assert!(ran >= 1, "an answer within the budget runs: {refusal}");
    assert!(refusal.contains("run privacy budget exceeded"), "{refusal}");
    assert!(
        refusal.contains(&format!("budget of {:.4}", training + 1.2)),
        "{refusal}"
    );
    let out = tessera(&["privacy", "--db", db.to_str().unwrap(), "--run", "train-1"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert_eq!(
        shown.matches("  central  all").count(),
        3,
        "training's rounds: {shown}"
    );
    assert_eq!(
        shown.matches("  analytics all").count(),
        ran,
        "the answers: {shown}"
    );
    let store = SqliteStore::open_existing(&db).unwrap();
    assert_eq!(store.analytics("train-1").unwrap().len(), ran);
    drop(store);
    // A run still running is not charged.
    SqliteStore::open(&db)
        .unwrap()
        .create_run(&RunRow {
            id: "train-2".into(),
            name: "other".into(),
            plan: String::new(),
            strategy: "fedavg".into(),
            seed: 1,
            rounds: 3,
            created_unix_micros: 2,
            status: "running".into(),
        })
        .unwrap();
    let out = tessera(&[
        "analyze",
        "--plan",
        HEART,
        "--query",
        "SELECT count(*) FROM data",
        "--db",
        db.to_str().unwrap(),
        "--run",
        "train-2",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("'train-2' is still running"),
        "{}",
        text(&out)
    );
    println!("training epsilon {training:.4}; {ran} answer(s) ran, then: {refusal}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_answer_without_dp_needs_the_plan_to_say_so_and_is_recorded_unprotected() {
    let dir = scratch("exact");
    let db = dir.join("run.db");
    let out = tessera(&[
        "analyze",
        "--plan",
        HEART,
        "--query",
        "SELECT count(*) FROM data",
        "--db",
        db.to_str().unwrap(),
        "--set",
        "analytics.dp=false",
    ]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("UNPROTECTED"), "{shown}");
    assert!(shown.contains("740"), "the exact count: {shown}");
    let store = SqliteStore::open_existing(&db).unwrap();
    let run = store.runs().unwrap()[0].id.clone();
    let rows = store.analytics(&run).unwrap();
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].protected);
    assert!(store.privacy_ledger(&run).unwrap().is_empty());
    let out = tessera(&["privacy", "--db", db.to_str().unwrap()]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("1 UNPROTECTED analytics release(s)"),
        "{shown}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_query_or_a_missing_bound_is_refused_with_what_to_do() {
    let out = tessera(&[
        "analyze",
        "--plan",
        HEART,
        "--query",
        "SELECT count(*) FROM data WHERE age >> 3",
    ]);
    let shown = text(&out);
    assert!(!out.status.success());
    assert!(shown.contains("at character 38: '>'"), "{shown}");
    let out = tessera(&[
        "analyze",
        "--plan",
        HEART,
        "--query",
        "SELECT mean(chol) FROM data",
    ]);
    let shown = text(&out);
    assert!(!out.status.success());
    assert!(
        shown.contains("'chol' has no bounds") && shown.contains("CLAMP chol"),
        "{shown}"
    );
    let out = tessera(&[
        "analyze",
        "--plan",
        HEART,
        "--query",
        "SELECT count(*) FROM data PER SITE",
    ]);
    let shown = text(&out);
    assert!(!out.status.success());
    assert!(shown.contains("per_site = true"), "{shown}");
}

#[test]
fn an_output_that_would_fail_is_refused_before_anything_is_answered_or_charged() {
    let dir = scratch("refused-outputs");
    let db = dir.join("run.db");
    let db_arg = db.to_str().unwrap().to_string();
    let svg = dir.join("none.svg");
    let out = tessera(&[
        "analyze",
        "--plan",
        HEART,
        "--query",
        "SELECT count(*) FROM data",
        "--plot",
        svg.to_str().unwrap(),
        "--db",
        &db_arg,
    ]);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("--plot draws histograms"), "{shown}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("query:"),
        "no answer shown: {shown}"
    );
    let unwritable = dir.join("no-such-dir").join("answer.json");
    let out = tessera(&[
        "analyze",
        "--plan",
        HEART,
        "--query",
        "SELECT count(*) FROM data",
        "--json",
        unwritable.to_str().unwrap(),
        "--db",
        &db_arg,
    ]);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("cannot be written"), "{shown}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("query:"),
        "no answer shown: {shown}"
    );
    if db.exists() {
        let store = SqliteStore::open_existing(&db).unwrap();
        for run in store.runs().unwrap() {
            assert!(store.analytics(&run.id).unwrap().is_empty(), "charged");
            assert!(store.privacy_ledger(&run.id).unwrap().is_empty());
        }
    }
    // An answer that is shown is in the store, even when its plot fails to
    // draw afterwards.
    let out = tessera(&[
        "analyze",
        "--plan",
        HEART,
        "--query",
        "SELECT count(*), histogram(age, 4) FROM data CLAMP age 0 120",
        "--plot",
        dir.join("age.svg").to_str().unwrap(),
        "--db",
        &db_arg,
    ]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(!shown.contains("charged to no stored ledger"), "{shown}");
    let store = SqliteStore::open_existing(&db).unwrap();
    let run = store.runs().unwrap()[0].id.clone();
    assert_eq!(store.analytics(&run).unwrap().len(), 1);
    assert_eq!(store.privacy_ledger(&run).unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn noise_is_fresh_unless_a_seed_is_asked_for_and_then_the_answer_says_so() {
    let dir = scratch("seed");
    let run = |name: &str, seed: Option<&str>| -> (String, serde_json::Value) {
        let json = dir.join(name);
        let mut args = vec![
            "analyze",
            "--plan",
            HEART,
            "--query",
            "SELECT count(*), mean(age) FROM data CLAMP age 0 120",
            "--json",
            json.to_str().unwrap(),
        ];
        if let Some(seed) = seed {
            args.extend(["--seed", seed]);
        }
        let out = tessera(&args);
        let shown = text(&out);
        assert!(out.status.success(), "{shown}");
        let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        (shown, report)
    };
    let count = |r: &serde_json::Value| {
        r["answers"][0]["groups"][0]["statistics"][0]["values"][0]
            .as_f64()
            .unwrap()
    };
    let (shown_a, a) = run("a.json", None);
    let (_, b) = run("b.json", None);
    assert_ne!(
        count(&a),
        count(&b),
        "two answers without --seed share their noise"
    );
    assert!(!shown_a.contains("EXPERIMENT"), "{shown_a}");
    assert!(a.get("experiment").is_none());
    let (shown_c, c) = run("c.json", Some("7"));
    let (_, d) = run("d.json", Some("7"));
    assert_eq!(count(&c), count(&d), "the same seed gives the same noise");
    assert!(
        shown_c.contains("EXPERIMENT") && shown_c.contains("public seed 7"),
        "{shown_c}"
    );
    assert!(
        c["experiment"]
            .as_str()
            .unwrap()
            .contains("not a private release")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
