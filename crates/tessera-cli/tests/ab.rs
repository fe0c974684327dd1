//! `tessera ab`: an A/B test of two model files on the heart plan's sites.
//! Each arm's accuracy is checked against the simulation's own per-site
//! evaluation of the same model (another code path: the engine's prepared
//! test rows, not the model file applied to text rows); the split is keyed
//! and repeatable; noise widens the interval; bad keys are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

const PLAN: &str = "examples/fed-heart-disease.toml";

#[test]
fn each_arm_scores_its_units_and_the_difference_has_an_interval() {
    let s = util::fresh_copy("ab");
    for (model, rounds) in [("a", "1"), ("b", "15")] {
        s.run(&[
            "simulate",
            "--plan",
            PLAN,
            "--set",
            &format!("federation.rounds={rounds}"),
            "--set",
            "privacy.site_metrics=clear",
            "--model-out",
            &format!("{model}.model"),
            "--report",
            &format!("{model}.json"),
        ])
        .ok();
    }
    let ab = |key: &str, extra: &[&str]| {
        let mut args = vec![
            "ab",
            "--plan",
            PLAN,
            "--a",
            "a.model",
            "--b",
            "b.model",
            "--key-file",
            key,
        ];
        args.extend_from_slice(extra);
        s.run(&args)
    };
    // A key that puts two sites in each arm.
    let doc = (1..=40u8)
        .find_map(|i| {
            let key = format!("k{i}");
            s.write(&key, &format!("{}\n", format!("{i:02x}").repeat(32)));
            let run = ab(&key, &["--json"]);
            let doc: serde_json::Value = serde_json::from_str(&run.stdout()).ok()?;
            (doc["a"]["sites"].as_array()?.len() == 2).then_some(doc)
        })
        .expect("some key splits the four sites two and two");
    // Each arm's accuracy is its sites' accuracy in the simulation's report
    // of that model, weighted by their test rows.
    let mut total = 0.0;
    for arm in ["a", "b"] {
        let report = s.json(&format!("{arm}.json"));
        let per_site = &report["final"]["per_site"];
        let (mut rows, mut right) = (0.0, 0.0);
        for site in doc[arm]["sites"].as_array().unwrap() {
            let site = &per_site[site.as_str().unwrap()];
            let n = site["n_test"].as_f64().unwrap();
            rows += n;
            right += n * site["accuracy"].as_f64().unwrap();
        }
        assert_eq!(doc[arm]["rows"].as_f64().unwrap(), rows, "{doc}");
        let accuracy = doc[arm]["accuracy"].as_f64().unwrap();
        assert!(
            (accuracy - right / rows).abs() < 1e-12,
            "{arm}: {accuracy} against {}",
            right / rows
        );
        total += rows;
    }
    assert_eq!(total, 254.0);
    let (d, lo, hi) = (
        doc["difference"].as_f64().unwrap(),
        doc["ci95"][0].as_f64().unwrap(),
        doc["ci95"][1].as_f64().unwrap(),
    );
    assert!(lo < d && d < hi, "{doc}");
    // By row: every test row in one arm, the same split with the same key.
    s.write("row.key", &format!("{}\n", "ab".repeat(32)));
    let by_row = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["--by", "row", "--json"];
        args.extend_from_slice(extra);
        serde_json::from_str(&ab("row.key", &args).ok()).unwrap()
    };
    let (first, again) = (by_row(&[]), by_row(&[]));
    assert_eq!(first, again);
    let rows =
        |d: &serde_json::Value| d["a"]["rows"].as_f64().unwrap() + d["b"]["rows"].as_f64().unwrap();
    assert_eq!(rows(&first), 254.0);
    assert!(
        first["a"]["rows"].as_f64().unwrap() > 80.0 && first["b"]["rows"].as_f64().unwrap() > 80.0
    );
    // With noise: its sigma, and a wider interval than the exact sums'.
    let noisy = by_row(&["--epsilon", "1"]);
    let width =
        |d: &serde_json::Value| d["ci95"][1].as_f64().unwrap() - d["ci95"][0].as_f64().unwrap();
    assert!(noisy["privacy"]["sigma"].as_f64().unwrap() > 1.0, "{noisy}");
    assert!(width(&noisy) > width(&first), "{noisy} {first}");
    // A new key file is written, readable by its owner only.
    let out = ab("new.key", &["--by", "row"]);
    assert!(
        out.stderr().contains("wrote a new split key"),
        "{}",
        out.stderr()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.path("new.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    s.write("bad.key", "not a key\n");
    let e = ab("bad.key", &[]).fails();
    assert!(e.contains("not a key (64 hexadecimal digits)"), "{e}");
    let e = ab("row.key", &["--epsilon=-1"]).fails();
    assert!(e.contains("--epsilon"), "{e}");
    s.write("text.model", "hello");
    let e = s
        .run(&[
            "ab",
            "--plan",
            PLAN,
            "--a",
            "text.model",
            "--b",
            "b.model",
            "--key-file",
            "row.key",
        ])
        .fails();
    assert!(e.contains("--a"), "{e}");
}
