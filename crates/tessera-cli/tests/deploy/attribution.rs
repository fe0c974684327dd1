//! Attribution in deployment (`[contribution]`): each site sends its
//! test-loss gradient with its update, the coordinator attributes each
//! round at its close, and the values equal the simulation's bit for bit;
//! `tessera contributions` reads them from the report and from the store,
//! across runs.

use crate::util::procs::{HEART_SITES, participant};
use crate::util::{self, Scratch};
use crate::{LIMIT, heart_with_slow_va, plan_with, run_federation};

#[test]
fn deployed_attribution_equals_the_simulation_bit_for_bit() {
    if util::skip_e2e("deployed_attribution_equals_the_simulation_bit_for_bit") {
        return;
    }
    let s = Scratch::new("deploy-attribution");
    let plan = plan_with(
        &s,
        "attributed",
        "[privacy]\nsite_metrics = \"clear\"\n\n[contribution]\nmethod = \"gtg\"\nvalue = 100.0\n",
    );
    let (sim, expected) = s.simulate(&plan, "sim.model");
    let (mut coordinator, mut participants) = run_federation(&s, &plan, "c.sqlite", "dep.model");
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    // Attribution changes nothing of the training.
    assert_eq!(util::model(&s.path("dep.model")), expected);
    let deployed = s.json("dep.model.json");
    let (d, m) = (&deployed["contributions"], &sim["contributions"]);
    let rounds = d["rounds"].as_array().expect("deployed rounds attributed");
    assert_eq!(rounds.len(), 15, "{d}");
    assert_eq!(m["rounds"].as_array().map(Vec::len), Some(15), "{m}");
    assert!(
        rounds
            .iter()
            .all(|r| r["gain"].as_f64().is_some_and(|g| g != 0.0)),
        "{d}"
    );
    for (dr, sr) in rounds.iter().zip(m["rounds"].as_array().unwrap()) {
        assert_eq!(dr["round"], sr["round"]);
        assert_eq!(dr["values"], sr["values"], "round {}", dr["round"]);
        assert_eq!(dr["gain"], sr["gain"], "round {}", dr["round"]);
        assert_eq!(dr["orders"], sr["orders"], "round {}", dr["round"]);
        assert_eq!(dr["values"].as_object().unwrap().len(), 4);
    }
    for (ds, ss) in d["sites"]
        .as_array()
        .unwrap()
        .iter()
        .zip(m["sites"].as_array().unwrap())
    {
        assert_eq!((&ds["name"], &ds["total"]), (&ss["name"], &ss["total"]));
        assert_eq!(ds["rank"], ss["rank"]);
        assert_eq!(ds["credits"], ss["credits"]);
        // Each site released its quality score, noised from its own secret
        // (not the simulation's seed-keyed noise).
        let q = ds["quality"].as_f64().expect("a released quality score");
        assert!((0.0..=1.0).contains(&q), "{ds}");
    }
    // The tables: from the deployed report, and from the store.
    let table = s.run(&["contributions", "--report", "dep.model.json"]).ok();
    assert!(
        table.contains("15 rounds attributed by gtg (first-order utility)"),
        "{table}"
    );
    assert!(table.contains("quality released at epsilon 1"), "{table}");
    let db = s.run(&["contributions", "--db", "c.sqlite"]).ok();
    assert!(
        db.contains("attribution over 15 attributed round(s)"),
        "{db}"
    );
    for site in HEART_SITES {
        assert!(db.contains(site), "{db}");
    }
    eprintln!("{table}\n{db}");
    // A second run on the same store: reputation across both runs.
    let (mut second, url) = util::procs::coordinator(
        &s.dir,
        &plan,
        &s.path("c.sqlite"),
        0,
        &["--new-run", "--report", "two.json"],
    );
    let mut participants: Vec<_> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert!(second.wait(LIMIT).success(), "{}", second.log());
    let both = s.run(&["contributions", "--db", "c.sqlite", "--json"]).ok();
    let both: serde_json::Value = serde_json::from_str(&both).unwrap();
    assert_eq!(both["runs"].as_array().unwrap().len(), 2, "{both}");
    let c = &both["contributions"];
    assert_eq!(c["rounds"].as_array().unwrap().len(), 30, "{c}");
    for (site, one) in c["sites"]
        .as_array()
        .unwrap()
        .iter()
        .zip(d["sites"].as_array().unwrap())
    {
        // The same run twice: each total doubled.
        assert_eq!(site["name"], one["name"]);
        let (two, one) = (
            site["total"].as_f64().unwrap(),
            one["total"].as_f64().unwrap(),
        );
        assert!(
            (two - 2.0 * one).abs() <= 1e-12 * one.abs().max(1e-12),
            "{two} {one}"
        );
        assert_eq!(site["rounds"], 30);
    }
}

/// `selection = "reputation"` deployed: half the four sites drawn a round,
/// weighted by the attribution so far; the coordinator draws the cohorts a
/// simulation draws, so every round counts the same sites and the model is
/// the simulation's bit for bit.
#[test]
fn deployed_reputation_selection_draws_as_the_simulation() {
    if util::skip_e2e("deployed_reputation_selection_draws_as_the_simulation") {
        return;
    }
    let s = Scratch::new("deploy-selection");
    let plan = plan_with(
        &s,
        "selected",
        "[privacy]\nsite_metrics = \"clear\"\n\n[contribution]\nmethod = \"exact\"\n\
         selection = \"reputation\"\n",
    );
    let text = std::fs::read_to_string(&plan)
        .unwrap()
        .replace("fraction = 1.0", "fraction = 0.5")
        .replace("min_participants = 4", "min_participants = 2");
    assert!(text.contains("fraction = 0.5") && text.contains("min_participants = 2"));
    let plan = s.write("selected.toml", &text);
    let (sim, expected) = s.simulate(&plan, "sim.model");
    let (mut coordinator, mut participants) = run_federation(&s, &plan, "c.sqlite", "dep.model");
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    let deployed = s.json("dep.model.json");
    let cohorts = |report: &serde_json::Value| -> Vec<Vec<String>> {
        report["contributions"]["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["values"].as_object().unwrap().keys().cloned().collect())
            .collect()
    };
    let (drawn, simulated) = (cohorts(&deployed), cohorts(&sim));
    assert_eq!(drawn.len(), 15);
    assert!(drawn.iter().all(|c| c.len() == 2), "{drawn:?}");
    assert_eq!(drawn, simulated);
    // Each round's values too: the gradient over the counted sites' rows.
    let rounds = |r: &serde_json::Value| timeless(r["contributions"]["rounds"].as_array().unwrap());
    assert_eq!(rounds(&deployed), rounds(&sim));
    // Not every round the same pair: the draw moves with the values.
    assert!(drawn.iter().any(|c| c != &drawn[0]), "{drawn:?}");
    assert_eq!(util::model(&s.path("dep.model")), expected);
}

/// The coordinator killed with SIGKILL mid-round, three of four updates
/// (and their test gradients) stored: after the restart the round closes
/// on what was stored plus the fourth, and every round's values are the
/// simulation's, bit for bit.
#[test]
fn a_coordinator_killed_mid_round_attributes_as_the_simulation_after_its_restart() {
    if util::skip_e2e(
        "a_coordinator_killed_mid_round_attributes_as_the_simulation_after_its_restart",
    ) {
        return;
    }
    let s = Scratch::new("deploy-attribution-kill");
    let plan = plan_with(
        &s,
        "attributed",
        "[privacy]\nsite_metrics = \"clear\"\n\n[contribution]\nmethod = \"gtg\"\n",
    );
    let (sim, expected) = s.simulate(&plan, "sim.model");
    let db = s.path("c.sqlite");
    let (mut first, url) = util::procs::coordinator(&s.dir, &plan, &db, 0, &[]);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut participants = heart_with_slow_va(&s, &url, "1.5");
    util::procs::wait_until(LIMIT, "round 3 with three accepted updates", || {
        util::status::poll(&db, |s| s.pending_updates_of(3)) == 3
    });
    first.kill_9();
    let (mut second, _) = util::procs::coordinator(
        &s.dir,
        &plan,
        &db,
        port,
        &["--model-out", "dep.model", "--report", "dep.json"],
    );
    assert!(second.wait(LIMIT).success(), "{}", second.log());
    assert!(second.log().contains("resumed"), "{}", second.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert_eq!(util::model(&s.path("dep.model")), expected);
    let deployed = s.json("dep.json");
    let (d, m) = (
        deployed["contributions"]["rounds"].as_array().unwrap(),
        sim["contributions"]["rounds"].as_array().unwrap(),
    );
    assert_eq!(d.len(), 15, "{deployed}");
    assert_eq!(
        timeless(d),
        timeless(m),
        "every round's attribution, the resumed one included"
    );
}

/// A report's rounds of attribution, all but the wall-clock seconds each
/// took.
fn timeless(rounds: &[serde_json::Value]) -> Vec<serde_json::Value> {
    rounds
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("seconds");
            r
        })
        .collect()
}
