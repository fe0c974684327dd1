//! `tessera debug-bundle`: a site's bundle holds its plan, this build and
//! its ledger's DP summary (the releases `tessera profile` charged, the
//! epsilon the profile printed, the plan's budget), and none of the marked
//! values in the site's data file; another site's ledger is refused, a
//! missing one noted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use util::Scratch;

/// Values that occur nowhere else: a birth year and a cholesterol.
const MARKS: [&str; 2] = ["1931.27", "7.918273"];

#[test]
fn a_bundle_holds_configuration_versions_and_dp_summaries_and_no_data() {
    let s = Scratch::new("debug-bundle");
    let root = util::root();
    let plan_text = std::fs::read_to_string(root.join("examples/fed-heart-disease.toml"))
        .unwrap()
        .replace("\"../data/", &format!("\"{}/data/", root.display()))
        + "\n[privacy]\nbudget = 8\n";
    let plan = s.write("plan.toml", &plan_text);
    let plan = plan.to_str().unwrap();
    let schema = root.join("examples/schemas/heart.toml");
    let schema = schema.to_str().unwrap();
    // va's rewritten file with one marked row.
    let original =
        std::fs::read_to_string(root.join("data/uci-heart-disease/rewritten/va.csv")).unwrap();
    let mut lines: Vec<String> = original.lines().map(String::from).collect();
    lines[1] = format!("{},M,4,140,{},0,1,112,1,3,2", MARKS[0], MARKS[1]);
    let data = s.write("va.csv", &(lines.join("\n") + "\n"));
    let data = data.to_str().unwrap();

    let mut printed = 0.0;
    for epsilon in ["1", "0.5"] {
        let out = s
            .run(&[
                "profile",
                "--plan",
                plan,
                "--schema",
                schema,
                "--site",
                "va",
                "--data",
                data,
                "--epsilon",
                epsilon,
                "--out",
                "va.profile.json",
            ])
            .ok();
        let now = out.split("is now ").nth(1).unwrap();
        printed = now.trim().parse::<f64>().unwrap();
    }
    let out = s
        .run(&[
            "debug-bundle",
            "--site",
            "va",
            "--plan",
            plan,
            "--data",
            data,
            "--out",
            "b.json",
        ])
        .ok();
    assert!(out.contains("2 release(s) under 1 plan(s)"), "{out}");
    let bundle = s.json("b.json");
    assert_eq!(bundle["format"], "tessera-debug-bundle/1");
    assert_eq!(
        bundle["build"]["protocol"],
        format!("{}.{}", tessera_proto::MAJOR, tessera_proto::MINOR)
    );
    assert_eq!(bundle["plan"]["conflicts"].as_array().unwrap().len(), 0);
    assert_eq!(bundle["plan"]["names_site"], true);
    assert!(
        bundle["plan"]["text"]
            .as_str()
            .unwrap()
            .contains("budget = 8.0")
    );
    assert_eq!(bundle["data"]["exists"], true);
    // Neither size nor time: they would tell the rows.
    assert!(bundle["data"].get("bytes").is_none());
    let plans = bundle["ledger"]["summary"]["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 1);
    let entry = &plans[0];
    assert_eq!(entry["name"], "fed-heart-disease");
    assert_eq!(entry["releases"]["profile"], 2);
    assert_eq!(entry["dp_releases"], 2);
    assert_eq!(entry["budget"], 8.0);
    let epsilon = entry["epsilon"].as_f64().unwrap();
    assert!((epsilon - printed).abs() < 1e-4, "{epsilon} vs {printed}");
    assert!(epsilon > 1.0 && epsilon < 8.0, "{epsilon}");
    // Nothing of the data: neither marked value, nor the profile's.
    let text = std::fs::read_to_string(s.path("b.json")).unwrap();
    for mark in MARKS {
        assert!(!text.contains(mark), "{mark} is in the bundle");
        assert!(std::fs::read_to_string(data).unwrap().contains(mark));
    }

    // Another site's ledger is refused; a missing one is noted.
    let err = s
        .run(&[
            "debug-bundle",
            "--site",
            "cleveland",
            "--ledger",
            "tessera-ledger-va.json",
        ])
        .fails();
    assert!(err.contains("it is site 'va''s ledger"), "{err}");
    let out = s.run(&["debug-bundle", "--site", "cleveland"]).ok();
    assert!(
        out.contains("ledger: none at tessera-ledger-cleveland.json"),
        "{out}"
    );
    let bundle = s.json("tessera-debug-cleveland.json");
    assert!(bundle["ledger"]["summary"].is_null());
    assert!(bundle["plan"].is_null());
    let err = s
        .run(&["debug-bundle", "--site", "va", "--plan", "missing.toml"])
        .fails();
    assert!(err.contains("missing.toml"), "{err}");
}
