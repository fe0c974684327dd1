//! `tessera profile` and `tessera harmonize`: proposals from the sites'
//! DP profiles, accepted unchanged, train the clean plan's model bit for
//! bit; every profile released is charged to a ledger, and refused past
//! the site's budget.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

/// The four Fed-Heart-Disease hospitals, each keeping its own names,
/// codings, units and missing tokens (data/uci-heart-disease/rewritten/):
/// `tessera harmonize` profiles each (fresh noise every run), proposes
/// their mappings, and the plan reading each file through its proposal
/// trains exactly the model of the original files.
#[test]
fn proposals_accepted_unchanged_train_the_clean_model_bit_for_bit() {
    let s = util::fresh_copy("harmonize");
    let model = |plan: &str, out: &str| {
        s.run(&["simulate", "-q", "--plan", plan, "--model-out", out])
            .ok();
        util::parameters(&std::fs::read(s.path(out)).unwrap())
    };
    let clean = model("examples/fed-heart-disease.toml", "clean.model");
    for attempt in 0..3 {
        let dir = format!("proposed{attempt}");
        let out = s
            .run(&[
                "harmonize",
                "--schema",
                "examples/schemas/heart.toml",
                "--plan",
                "examples/fed-heart-disease-mapped.toml",
                "--out-dir",
                &dir,
            ])
            .ok();
        // The plan ignores slope, ca and thal: no site's file but
        // Switzerland's has one of them, and each left over is reported
        // with its candidates.
        assert!(out.contains("ca           UNMATCHED; best:"), "{out}");
        assert!(out.contains("chol         <- chol_mmol"), "{out}");
        let va = std::fs::read_to_string(s.path(&format!("{dir}/va.toml"))).unwrap();
        assert!(
            va.contains("[derive.age]") && va.contains("years_since = \"birth_year\""),
            "{va}"
        );
        assert!(va.contains("# UNMATCHED thal: best candidates"), "{va}");
        let ledger: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(s.path(&format!("{dir}/ledger.json"))).unwrap(),
        )
        .unwrap();
        let charged: Vec<&str> = ledger
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["participant"].as_str().unwrap())
            .collect();
        assert_eq!(charged, ["cleveland", "hungarian", "switzerland", "va"]);
        let proposed = model(&format!("{dir}/plan.toml"), &format!("{dir}.model"));
        assert_eq!(proposed, clean, "attempt {attempt}");
    }
}

/// A site profiles its own file: the profile is charged to the site's
/// ledger before it is written, each profile again, and one past the
/// plan's budget is refused with nothing written.
#[test]
fn a_profile_is_charged_to_the_sites_ledger_and_refused_past_its_budget() {
    let s = util::fresh_copy("profile");
    let plan = s.path("examples/fed-heart-disease.toml");
    let mut text = std::fs::read_to_string(&plan).unwrap();
    text.push_str("\n[privacy]\nbudget = 1.5\n");
    std::fs::write(&plan, text).unwrap();
    let profile = |out: &str| {
        s.run(&[
            "profile",
            "--plan",
            "examples/fed-heart-disease.toml",
            "--schema",
            "examples/schemas/heart.toml",
            "--site",
            "va",
            "--data",
            "data/uci-heart-disease/rewritten/va.csv",
            "--out",
            out,
        ])
    };
    let first = profile("va1.json").ok();
    assert!(
        first.contains("charged to tessera-ledger-va.json"),
        "{first}"
    );
    profile("va2.json").ok();
    let refused = profile("va3.json").fails();
    assert!(refused.contains("the profile was not written"), "{refused}");
    assert!(refused.contains("budget"), "{refused}");
    assert!(!s.path("va3.json").exists());
    let ledger: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.path("tessera-ledger-va.json")).unwrap())
            .unwrap();
    let plans = ledger["plans"].as_object().unwrap();
    assert_eq!(plans.len(), 1);
    let entries = plans.values().next().unwrap()["entries"]
        .as_array()
        .unwrap();
    assert_eq!(entries.len(), 2, "{ledger}");
    assert!(entries.iter().all(|e| e["kind"] == "profile"));
    // The profile holds counts on bins, no value of a row: each column
    // has exactly the profile's fields, and no level (none released).
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.path("va1.json")).unwrap()).unwrap();
    for column in json["columns"].as_array().unwrap() {
        let mut keys: Vec<&str> = column
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "levels",
                "missing",
                "name",
                "numbers",
                "other_text",
                "points",
                "words"
            ]
        );
        assert!(column["levels"].as_array().unwrap().is_empty());
    }
    // Without a budget, a second profile under a plan is refused.
    let under = |out: &str| {
        s.run(&[
            "profile",
            "--plan",
            "examples/fed-heart-disease-mapped.toml",
            "--schema",
            "examples/schemas/heart.toml",
            "--site",
            "va",
            "--data",
            "data/uci-heart-disease/rewritten/va.csv",
            "--out",
            out,
        ])
    };
    under("once.json").ok();
    let e = under("twice.json").fails();
    assert!(e.contains("sets no privacy budget"), "{e}");
    assert!(!s.path("twice.json").exists());
    // Harmonize reads the sites' profiles back.
    let out = s
        .run(&[
            "harmonize",
            "--schema",
            "examples/schemas/heart.toml",
            "--profiles",
            "va1.json",
            "--out-dir",
            "proposals",
        ])
        .ok();
    assert!(out.contains("num          <- outcome"), "{out}");
    // Two profiles of one site would write one mapping: refused.
    let e = s
        .run(&[
            "harmonize",
            "--schema",
            "examples/schemas/heart.toml",
            "--profiles",
            "va1.json",
            "va2.json",
            "--out-dir",
            "twice",
        ])
        .fails();
    assert!(e.contains("another site's"), "{e}");
    let bad = s.write("bad.json", "{\"format\": \"tessera-profile/1\"}");
    let e = s
        .run(&[
            "harmonize",
            "--schema",
            "examples/schemas/heart.toml",
            "--profiles",
            bad.to_str().unwrap(),
            "--out-dir",
            "proposals",
        ])
        .fails();
    assert!(e.contains("bad.json") && e.contains("profile"), "{e}");
}

/// Schema evolution: the plan is on version 2 of the target schema (two
/// columns renamed, one added); VA's file still follows version 1 through
/// its own mapping. `tessera schema upgrade` writes the mapping that reads
/// it as version 2 (the committed one), and the run trains the version-1
/// plan's model bit for bit; VA's version-1 mapping, declared as such, is
/// refused, naming the upgrade.
#[test]
fn an_older_site_on_schema_version_1_joins_a_version_2_plan_through_its_upgraded_mapping() {
    let s = util::fresh_copy("evolve");
    let out = s
        .run(&[
            "schema",
            "upgrade",
            "--schema",
            "examples/schemas/heart-v2.toml",
            "--from",
            "1",
            "--mapping",
            "examples/mappings/heart-va.toml",
            "--out",
            "va-v2.toml",
        ])
        .ok();
    assert!(out.contains("2 renamed, 1 added"), "{out}");
    let made = std::fs::read_to_string(s.path("va-v2.toml")).unwrap();
    let committed = std::fs::read_to_string(s.path("examples/mappings/heart-va-v2.toml")).unwrap();
    assert_eq!(
        made.lines().skip(1).collect::<Vec<_>>(),
        committed.lines().skip(1).collect::<Vec<_>>(),
        "the committed mapping is the command's"
    );
    let model = |plan: &str, out: &str| {
        s.run(&["simulate", "-q", "--plan", plan, "--model-out", out])
            .ok();
        util::parameters(&std::fs::read(s.path(out)).unwrap())
    };
    let v1 = model("examples/fed-heart-disease.toml", "v1.model");
    let v2 = model("examples/fed-heart-disease-v2.toml", "v2.model");
    assert_eq!(v2, v1);
    // The version-1 mapping, saying so, is refused by the version-2 plan.
    let old = std::fs::read_to_string(s.path("examples/mappings/heart-va.toml")).unwrap();
    std::fs::write(
        s.path("examples/mappings/heart-va-v2.toml"),
        old.replace("version = 1\n", "version = 1\nschema_version = 1\n"),
    )
    .unwrap();
    let e = s
        .run(&[
            "simulate",
            "-q",
            "--plan",
            "examples/fed-heart-disease-v2.toml",
        ])
        .fails();
    assert!(
        e.contains("maps to schema version 1") && e.contains("tessera schema upgrade"),
        "{e}"
    );
}

/// `tessera catalog`: every feature with its sites, DP summaries and
/// quality, on the bundled heart plan (through the sites' mappings,
/// against the target schema) and on the MNIST example (its own 785
/// columns), each site's profile charged to the catalog's ledger; from
/// sites' profiles nothing new is charged.
#[test]
fn the_catalog_lists_the_federations_features_from_dp_profiles() {
    let s = util::fresh_copy("catalog");
    let out = s
        .run(&[
            "catalog",
            "--plan",
            "examples/fed-heart-disease-mapped.toml",
            "--schema",
            "examples/schemas/heart.toml",
            "--json",
            "heart.json",
        ])
        .ok();
    assert!(out.contains("charged: va profile"), "{out}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.path("heart.json")).unwrap()).unwrap();
    let features = doc["features"].as_array().unwrap();
    assert_eq!(features.len(), 14);
    let feature = |name: &str| features.iter().find(|f| f["name"] == name).unwrap().clone();
    for name in ["age", "sex", "chol", "num"] {
        assert_eq!(
            feature(name)["sites"].as_array().unwrap().len(),
            4,
            "{name}"
        );
    }
    // Cholesterol's median (about 240 mg/dL at the four hospitals, two of
    // them in mmol/L converted) falls in the reported bin.
    let median = &feature("chol")["quartiles"][1];
    let (lo, hi) = (median[0].as_f64().unwrap(), median[1].as_f64().unwrap());
    assert!(lo <= 240.0 && 240.0 <= hi, "{median}");
    assert!(feature("age")["quality"]["score"].as_f64().unwrap() > 0.9);
    // Thal is in no site's file (the rewritten files dropped it): no
    // sites, no summary.
    assert_eq!(feature("thal")["sites"].as_array().unwrap().len(), 0);
    assert!(feature("thal")["quartiles"].is_null());
    assert_eq!(doc["ledger"].as_array().unwrap().len(), 4);
    // The MNIST example: 785 columns over 20 sites of 40 to 700 rows. At
    // the default epsilon of 1 a profile of 785 columns shows nearly every
    // pixel below the noise (said so); at epsilon 8 the blank corner shows.
    let mnist = |epsilon: &str, out: &str| {
        s.run(&[
            "catalog",
            "--plan",
            "examples/mnist.toml",
            "--epsilon",
            epsilon,
            "--json",
            out,
        ])
        .ok();
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(s.path(out)).unwrap()).unwrap();
        doc
    };
    let doc = mnist("1", "mnist1.json");
    let features = doc["features"].as_array().unwrap();
    assert_eq!(features.len(), 785);
    assert!(
        features
            .iter()
            .all(|f| f["sites"].as_array().unwrap().len() == 20)
    );
    let hidden = features.iter().filter(|f| f["quartiles"].is_null()).count();
    assert!(hidden >= 700, "{hidden} of 785 features below the noise");
    let doc = mnist("8", "mnist8.json");
    assert_eq!(
        doc["features"][0]["quartiles"][1],
        serde_json::json!([0.0, 0.0])
    );
    assert_eq!(doc["ledger"].as_array().unwrap().len(), 20);
}
