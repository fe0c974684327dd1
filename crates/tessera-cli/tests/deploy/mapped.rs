//! Sites that keep their data in layouts of their own: each reads its file
//! through its mapping (`--mapping`), which never leaves the site, and the
//! federation trains what it would on files in the plan's layout.

use std::path::PathBuf;

use crate::util::procs::{HEART_SITES, Proc, coordinator, participant_with};
use crate::util::{self, Scratch};
use crate::{LIMIT, OUTPUTS, heart_text};

fn rewritten(site: &str) -> PathBuf {
    util::root().join(format!("data/uci-heart-disease/rewritten/{site}.csv"))
}

fn mapping(site: &str) -> String {
    let path = util::root().join(format!("examples/mappings/heart-{site}.toml"));
    path.to_str().unwrap().to_string()
}

/// The four hospitals' rewritten files (own names, codings, units, missing
/// tokens), each read through its site's mapping: the deployed model is
/// the simulation of the plan on the original files, bit for bit; a site
/// whose file is read without its mapping stops, saying why.
#[test]
fn sites_reading_through_their_mappings_train_the_plans_model() {
    if util::skip_e2e("sites_reading_through_their_mappings_train_the_plans_model") {
        return;
    }
    let s = Scratch::new("mapped");
    let plan = s.write("heart.toml", &heart_text(&s, 4));
    let (_, simulated) = s.simulate(&plan, "sim.model");
    // Without its mapping, a rewritten file is not the plan's layout: the
    // site says so, naming its file, and stops before it trains.
    let (mut waiting, url) = coordinator(&s.dir, &plan, &s.path("w.sqlite"), 0, &[]);
    let mut lost = participant_with(&s.dir, &url, "va", &rewritten("va"), &[]);
    assert!(!lost.wait(LIMIT).success());
    let log = lost.log();
    assert!(log.contains("va.csv") && log.contains("fields"), "{log}");
    waiting.kill_9();
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &s.path("r.sqlite"), 0, OUTPUTS);
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| {
            let mapping = mapping(site);
            participant_with(
                &s.dir,
                &url,
                site,
                &rewritten(site),
                &["--mapping", &mapping],
            )
        })
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for site in &mut sites {
        assert!(site.wait(LIMIT).success(), "{}", site.log());
    }
    assert_eq!(util::model(&s.path("dep.model")), simulated);
}

/// Schema evolution deployed: a coordinator runs the plan on version 2 of
/// the target schema; three hospitals' files follow it, and VA, still on
/// version 1 (its own layout mapped to version 1), joins through the
/// mapping `tessera schema upgrade` made. The model is the simulation's
/// bit for bit.
#[test]
fn an_older_site_on_schema_version_1_joins_a_version_2_run() {
    if util::skip_e2e("an_older_site_on_schema_version_1_joins_a_version_2_run") {
        return;
    }
    let s = Scratch::new("evolved");
    let text = std::fs::read_to_string(util::root().join("examples/fed-heart-disease-v2.toml"))
        .unwrap()
        .replace("\"../data/", &format!("\"{}/data/", util::root().display()))
        .replace(
            "mapping = \"mappings/",
            &format!("mapping = \"{}/examples/mappings/", util::root().display()),
        )
        .replace("rounds = 15", "rounds = 4");
    let plan = s.write("v2.toml", &text);
    let (_, simulated) = s.simulate(&plan, "sim.model");
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &s.path("r.sqlite"), 0, OUTPUTS);
    let upgraded = util::root().join("examples/mappings/heart-va-v2.toml");
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| match *site {
            "va" => participant_with(
                &s.dir,
                &url,
                site,
                &rewritten(site),
                &["--mapping", upgraded.to_str().unwrap()],
            ),
            _ => participant_with(&s.dir, &url, site, &util::procs::heart_file(site), &[]),
        })
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for site in &mut sites {
        assert!(site.wait(LIMIT).success(), "{}", site.log());
    }
    assert_eq!(util::model(&s.path("dep.model")), simulated);
    // The store keeps the schema version the run used.
    let status = s.run(&["status", "--db", "r.sqlite", "--json"]).ok();
    let doc: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(doc["run"]["schema_version"], 2, "{status}");
    // The catalog reads the store for usage: the renamed column was used
    // by this run, the column new in version 2 by none.
    s.run(&[
        "catalog",
        "--plan",
        plan.to_str().unwrap(),
        "--schema",
        util::root()
            .join("examples/schemas/heart-v2.toml")
            .to_str()
            .unwrap(),
        "--db",
        "r.sqlite",
        "--json",
        "catalog.json",
    ])
    .ok();
    let catalog: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.path("catalog.json")).unwrap()).unwrap();
    let used = |name: &str| {
        catalog["features"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .map(|f| f["used_by"].as_array().unwrap().len())
    };
    assert_eq!(used("resting_bp"), Some(1), "{catalog}");
    assert_eq!(used("smoker"), Some(0), "{catalog}");
}
