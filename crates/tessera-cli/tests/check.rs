//! `tessera check`: a site's preflight names the site and the cause of
//! whatever would stop it at the agreement, before it joins.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

const PLAN: &str = "examples/fed-heart-disease.toml";

#[test]
fn a_site_that_fits_is_ready_and_one_that_does_not_is_named_with_its_cause() {
    let s = util::fresh_copy("check");
    let out = s.run(&["check", "--plan", PLAN, "--site", "va"]).ok();
    assert!(out.contains("protocol 1."), "{out}");
    assert!(
        out.contains("site 'va': 200 rows read; 85 training and 45 test rows"),
        "{out}"
    );
    assert!(out.contains("classes 0, not 0"), "{out}");
    assert!(
        out.contains("site 'va': ready for plan 'fed-heart-disease'"),
        "{out}"
    );
    assert!(!out.contains("bounds"), "{out}");
    // With bounds on cholesterol: VA's zeros are named as out of range.
    let plan = std::fs::read_to_string(s.path(PLAN)).unwrap().replace(
        "{ name = \"chol\", type = \"numeric\" }",
        "{ name = \"chol\", type = \"numeric\", min = 80, max = 700 }",
    );
    s.write("examples/bounded.toml", &plan);
    let out = s
        .run(&["check", "--plan", "examples/bounded.toml", "--site", "va"])
        .ok();
    assert!(
        out.contains("site 'va': 22 of 85 training values of the schema's bounded columns are outside their bounds"),
        "{out}"
    );
    let va = std::fs::read_to_string(s.path("data/uci-heart-disease/processed.va.data")).unwrap();
    // A column short: every row has 13 fields where the schema has 14.
    let short: String = va
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(',').collect();
            f.remove(7);
            f.join(",") + "\n"
        })
        .collect();
    let refused = |data: &str| {
        s.run(&["check", "--plan", PLAN, "--site", "va", "--data", data])
            .fails()
    };
    s.write("short.data", &short);
    let e = refused("short.data");
    assert!(e.starts_with("error: site 'va':"), "{e}");
    assert!(e.contains("row has 13 fields, expected 14"), "{e}");
    // Text in a numeric column, named with its place.
    s.write("text.data", &va.replacen("63,", "sixty-three,", 1));
    let e = refused("text.data");
    assert!(
        e.contains("column 'age': 'sixty-three' is not a number"),
        "{e}"
    );
    // A level the schema does not declare.
    let odd: String = va
        .lines()
        .map(|l| {
            let mut f: Vec<String> = l.split(',').map(str::to_string).collect();
            if f[2] == "4" {
                f[2] = "7".into();
            }
            f.join(",") + "\n"
        })
        .collect();
    s.write("odd.data", &odd);
    let e = refused("odd.data");
    assert!(
        e.starts_with("error: site 'va':") && e.contains("cp"),
        "{e}"
    );
    // A site the plan does not have.
    let e = s
        .run(&["check", "--plan", PLAN, "--site", "nowhere"])
        .fails();
    assert!(
        e.contains("site 'nowhere' is not among the plan's sites"),
        "{e}"
    );
    // A site the plan does not have, even with a file of its own.
    let e = s
        .run(&[
            "check",
            "--plan",
            PLAN,
            "--site",
            "nowhere",
            "--data",
            "data/uci-heart-disease/processed.va.data",
        ])
        .fails();
    assert!(
        e.contains("site 'nowhere' is not among the plan's sites (cleveland, hungarian"),
        "{e}"
    );
    // With a header, a declared column the file lacks.
    s.write("h.csv", "age,num\n50,0\n60,1\n55,0\n65,1\n");
    let plan = std::fs::read_to_string(s.path(PLAN))
        .unwrap()
        .replace("header = false", "header = true");
    s.write("examples/h.toml", &plan);
    let e = s
        .run(&[
            "check",
            "--plan",
            "examples/h.toml",
            "--site",
            "va",
            "--data",
            "h.csv",
        ])
        .fails();
    assert!(
        e.contains("no described column named 'sex' (columns: age, num)"),
        "{e}"
    );
}

/// What the federation accepts, the preflight accepts: a site whose rows
/// hold one class (the others hold the rest), and a plan whose feature is
/// computed across sites.
#[test]
fn a_one_class_site_and_a_cross_silo_plan_are_ready() {
    let s = util::fresh_copy("check-ready");
    let va = std::fs::read_to_string(s.path("data/uci-heart-disease/processed.va.data")).unwrap();
    let healthy: String = va
        .lines()
        .filter(|l| l.ends_with(",0"))
        .map(|l| format!("{l}\n"))
        .collect();
    s.write("healthy.data", &healthy);
    let out = s
        .run(&[
            "check",
            "--plan",
            PLAN,
            "--site",
            "va",
            "--data",
            "healthy.data",
        ])
        .ok();
    assert!(
        out.contains("holds one class only") || out.contains("hold one class only"),
        "{out}"
    );
    assert!(out.contains("site 'va': ready"), "{out}");
    // The plan's folder given apart from the plan: its paths read from there.
    std::fs::create_dir_all(s.path("a/b")).unwrap();
    s.write(
        "a/b/plan.toml",
        &std::fs::read_to_string(s.path(PLAN)).unwrap(),
    );
    let out = s
        .run(&[
            "check",
            "--plan",
            "a/b/plan.toml",
            "--plan-dir",
            "examples",
            "--site",
            "va",
        ])
        .ok();
    assert!(out.contains("site 'va': ready"), "{out}");
    let e = s
        .run(&["check", "--plan", "a/b/plan.toml", "--site", "va"])
        .fails();
    assert!(e.contains("site 'va'"), "{e}");
    let out = s
        .run(&[
            "check",
            "--plan",
            "examples/cross-silo-visits.toml",
            "--site",
            "hospital_b",
        ])
        .ok();
    assert!(out.contains("--expect-plan"), "{out}");
    assert!(out.contains("site 'hospital_b': ready"), "{out}");
    // A feature flag: the cohort's site is asked for the codecs, the others not.
    let heart = std::fs::read_to_string(s.path(PLAN)).unwrap();
    s.write(
        "examples/flagged.toml",
        &format!(
            "{heart}\n[compression]\nupload = \"topk:0.3+q8\"\n\n[[features]]\n\
             name = \"compression.upload\"\nsites = [\"cleveland\"]\n"
        ),
    );
    let check = |site: &str| {
        s.run(&["check", "--plan", "examples/flagged.toml", "--site", site])
            .ok()
    };
    let out = check("cleveland");
    assert!(
        out.contains("site 'cleveland' is in the cohort of compression.upload"),
        "{out}"
    );
    let needs = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("the plan's run needs of this site's participant"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(needs(&out).contains("codec-topk"), "{out}");
    let out = check("va");
    assert!(out.contains("site 'va' is in the cohort of none"), "{out}");
    assert!(!needs(&out).contains("codec-topk"), "{out}");
    assert!(needs(&out).contains("feature-flags"), "{out}");
    // What the cohort needs beyond every site.
    let out = s.run(&["protocol", "--plan", "examples/flagged.toml"]).ok();
    assert!(
        out.contains("and of the sites of feature 'compression.upload' (1 sites): also"),
        "{out}"
    );
    // A cohort name the plan does not have is refused before anything runs.
    let v2 = std::fs::read_to_string(s.path("examples/fed-heart-disease-v2.toml")).unwrap();
    s.write(
        "examples/flagged-v2.toml",
        &format!(
            "{v2}\n[compression]\nupload = \"topk:0.3+q8\"\n\n[[features]]\n\
             name = \"compression.upload\"\nsites = [\"nowhere\"]\n"
        ),
    );
    let e = s
        .run(&["simulate", "-q", "--plan", "examples/flagged-v2.toml"])
        .fails();
    assert!(
        e.contains("names site 'nowhere', which is not among the plan's sites"),
        "{e}"
    );
}

/// docs/COMPATIBILITY.md is what `tessera protocol --markdown` prints now
/// (regenerate it with that command when the protocol changes).
#[test]
fn the_compatibility_matrix_in_docs_is_current() {
    let s = util::fresh_copy("protocol");
    let printed = s.run(&["protocol", "--markdown"]).ok();
    let kept = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/COMPATIBILITY.md"),
    )
    .unwrap();
    assert!(
        printed == kept,
        "docs/COMPATIBILITY.md is out of date: run `tessera protocol --markdown > docs/COMPATIBILITY.md`"
    );
    assert!(printed.contains("| strategy ifca |"), "{printed}");
    let out = s
        .run(&["protocol", "--plan", "examples/fed-heart-disease.toml"])
        .ok();
    assert!(
        out.contains("plan 'fed-heart-disease' needs of every participant: agreement, chunked-tensors, declared-rows, secure-aggregation, secure-aggregation-signed; the oldest participant that joins it: 1.6"),
        "{out}"
    );
}
