//! Hierarchical deployment with real processes on 127.0.0.1: a coordinator,
//! regional aggregators (`tessera aggregator`) and participants below them
//! give the hierarchical simulation's model bit for bit, also when a
//! regional aggregator is killed with SIGKILL mid-round and restarted, and
//! at three levels.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::path::{Path, PathBuf};
use std::time::Duration;

use util::Scratch;
use util::procs::{
    Proc, aggregator, coordinator, free_port, participant_with, query_i64, wait_until,
};
use util::status::{poll, status_of};

const LIMIT: Duration = Duration::from_secs(180);

/// Six synthetic sites under the `[topology]` groups (TOML tables), 6 rounds.
fn setup(s: &Scratch, groups: &str) -> (PathBuf, PathBuf) {
    util::synthetic(s, 6, 6, &format!("kind = \"hierarchical\"\n{groups}"))
}

const TWO_REGIONS: &str = r#"
[[topology.groups]]
name = "east"
members = ["site0", "site1", "site2"]

[[topology.groups]]
name = "west"
members = ["site3", "site4", "site5"]
"#;

fn simulated(s: &Scratch, plan: &Path) -> Vec<u8> {
    s.simulate(plan, "sim.model").1
}

/// A coordinator over `plan` (with `root_extra` arguments), regional
/// aggregators (each with `--report NAME.json`) and their sites.
struct Regions {
    root: Proc,
    regions: Vec<(Proc, PathBuf)>,
    members: Vec<Proc>,
}

/// The regions of `TWO_REGIONS`.
const EAST_WEST: [(&str, &[&str]); 2] = [
    ("east", &["site0", "site1", "site2"]),
    ("west", &["site3", "site4", "site5"]),
];

impl Regions {
    fn start(
        s: &Scratch,
        plan: &Path,
        data: &Path,
        root_extra: &[&str],
        layout: &[(&str, &[&str])],
    ) -> Self {
        let (root, url) = coordinator(&s.dir, plan, &s.path("root.sqlite"), 0, root_extra);
        let mut regions = Vec::new();
        let mut members = Vec::new();
        for &(name, sites_of) in layout {
            let db = s.path(&format!("{name}.sqlite"));
            let report = format!("{name}.json");
            let (proc, region_url) = aggregator(&s.dir, &url, name, &db, 0, &["--report", &report]);
            members.extend(sites(s, &region_url, sites_of, data, None));
            regions.push((proc, db));
        }
        Self {
            root,
            regions,
            members,
        }
    }

    /// Waits for every process to finish well.
    fn finish(&mut self) {
        assert!(self.root.wait(LIMIT).success(), "{}", self.root.log());
        for (proc, _) in &mut self.regions {
            assert!(proc.wait(LIMIT).success(), "{}", proc.log());
        }
        finish(&mut self.members);
    }
}

fn sites(s: &Scratch, url: &str, names: &[&str], data: &Path, slow: Option<&str>) -> Vec<Proc> {
    names
        .iter()
        .map(|site| {
            let extra: &[&str] = if Some(*site) == slow {
                &["--pause-before-update", "1.5"]
            } else {
                &[]
            };
            participant_with(&s.dir, url, site, data, extra)
        })
        .collect()
}

/// The six sites of `EAST_WEST` under their regions' aggregators (`slow`,
/// if one, trains slowly).
fn east_west_sites(
    s: &Scratch,
    east_url: &str,
    west_url: &str,
    data: &Path,
    slow: Option<&str>,
) -> Vec<Proc> {
    let mut members = sites(s, east_url, EAST_WEST[0].1, data, slow);
    members.extend(sites(s, west_url, EAST_WEST[1].1, data, slow));
    members
}

fn finish(procs: &mut [Proc]) {
    for p in procs {
        assert!(p.wait(LIMIT).success(), "{}:\n{}", p.name, p.log());
    }
}

#[test]
fn a_regional_aggregator_killed_mid_round_resumes_and_the_run_equals_simulation() {
    if util::skip_e2e(
        "a_regional_aggregator_killed_mid_round_resumes_and_the_run_equals_simulation",
    ) {
        return;
    }
    let s = Scratch::new("hierarchy-kill");
    let (plan, data) = setup(&s, TWO_REGIONS);
    let expected = simulated(&s, &plan);
    let (mut root, url) = coordinator(
        &s.dir,
        &plan,
        &s.path("root.sqlite"),
        0,
        &["--model-out", "dep.model", "--report", "dep.json"],
    );
    let east_port = free_port();
    let east_db = s.path("east.sqlite");
    let (mut east, east_url) = aggregator(&s.dir, &url, "east", &east_db, east_port, &[]);
    let (mut west, west_url) = aggregator(
        &s.dir,
        &url,
        "west",
        &s.path("west.sqlite"),
        0,
        &["--report", "west.json"],
    );
    // site2 is slow, so east's rounds sit open with two updates accepted.
    let mut members = east_west_sites(&s, &east_url, &west_url, &data, Some("site2"));
    wait_until(LIMIT, "east's round 3 with two accepted updates", || {
        poll(&east_db, |s| s.pending_updates_of(3)) == 2
    });
    east.kill_9();
    assert_eq!(
        status_of(&east_db).pending_updates_of(3),
        2,
        "the accepted updates of the open round are in east's database"
    );
    let (mut east, _) = aggregator(
        &s.dir,
        &url,
        "east",
        &east_db,
        east_port,
        &["--report", "east.json", "--model-out", "east.model"],
    );
    assert!(root.wait(LIMIT).success(), "{}", root.log());
    for aggregator in [&mut east, &mut west] {
        assert!(aggregator.wait(LIMIT).success(), "{}", aggregator.log());
    }
    finish(&mut members);
    let log = east.log();
    assert!(
        log.contains("resumed") && log.contains("round reopened"),
        "{log}"
    );
    assert_eq!(
        util::model(&s.path("dep.model")),
        expected,
        "the tree in deployment differs from the tree in simulation"
    );
    // Each region's update counted once per round at the root.
    let root_db = s.path("root.sqlite");
    for region in ["east", "west"] {
        let accepted = status_of(&root_db).accepted_updates_of(region);
        assert_eq!(accepted, 6, "{region}");
    }
    // Every site's update once per round in its region, across the restart.
    let duplicates = status_of(&east_db).duplicate_accepted_updates();
    assert_eq!(duplicates, 0);
    // The root saw two members and their pooled evaluations: its accuracy
    // is the simulation's over all six sites' rows.
    let report = s.json("dep.json");
    let simulated = s.json("sim.model.json");
    assert_eq!(report["final"]["accuracy"], simulated["final"]["accuracy"]);
    assert_eq!(report["rounds"].as_array().unwrap().len(), 6);
    // The root reports every site, not every aggregator, as simulation does
    // (the aggregators send their sites' evaluations up, protocol 1.9).
    assert_eq!(
        report["final"]["per_site"], simulated["final"]["per_site"],
        "{report}"
    );
    assert_eq!(
        report["final"]["mean_site_accuracy"],
        simulated["final"]["mean_site_accuracy"]
    );
    // And it carries the topology: each aggregator's sites and the final
    // model's accuracy on them (the regional models stay at the aggregators).
    let topology = &report["topology"];
    assert_eq!(topology["kind"], "hierarchical", "{report}");
    assert!(
        topology["root_bytes_up"].as_u64().unwrap() > 0,
        "{topology}"
    );
    for (name, sites_of) in EAST_WEST {
        let region = &topology["regions"][name];
        assert_eq!(region["sites"], serde_json::json!(sites_of), "{topology}");
        assert_eq!(region["depth"], 1);
        assert!(region.get("accuracy").is_none(), "{topology}");
        assert_eq!(
            region["global_accuracy"], simulated["topology"]["regions"][name]["global_accuracy"],
            "{name}"
        );
    }
    // The regions report their own rounds and keep their regional model.
    let west = s.json("west.json");
    let rounds = west["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 6);
    assert!(rounds.iter().all(|r| r["accepted"] == 3), "{west}");
    // Its regional model is a self-describing file.
    let inspected = s.run(&["model", "inspect", "east.model"]).ok();
    assert!(
        inspected.contains("written by aggregator east"),
        "{inspected}"
    );
    // Each region's last model, evaluated by its sites once the run is over.
    for (name, sites_of) in EAST_WEST {
        let report = s.json(&format!("{name}.json"));
        let region = &report["topology"]["regions"][name];
        let accuracy = region["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy), "{report}");
        assert_eq!(region["sites"], serde_json::json!(sites_of), "{report}");
        assert_eq!(
            region["global_accuracy"], report["rounds"][5]["accuracy"],
            "{report}"
        );
        // The same numbers as the simulation's regions.
        let simulated = &simulated["topology"]["regions"][name];
        assert_eq!(region["accuracy"], simulated["accuracy"], "{name}");
        assert_eq!(
            region["global_accuracy"], simulated["global_accuracy"],
            "{name}"
        );
    }
}

#[test]
fn three_levels_deploy_as_they_simulate() {
    if util::skip_e2e("three_levels_deploy_as_they_simulate") {
        return;
    }
    let s = Scratch::new("hierarchy-deep");
    let groups = format!(
        "{TWO_REGIONS}
[[topology.groups]]
name = \"continent\"
members = [\"east\", \"west\"]
"
    );
    let (plan, data) = setup(&s, &groups);
    fine_tuning(&plan);
    let expected = simulated(&s, &plan);
    let (mut root, url) = coordinator(
        &s.dir,
        &plan,
        &s.path("root.sqlite"),
        0,
        &["--model-out", "dep.model", "--report", "dep.json"],
    );
    let (mut continent, continent_url) =
        aggregator(&s.dir, &url, "continent", &s.path("c.sqlite"), 0, &[]);
    let (mut east, east_url) =
        aggregator(&s.dir, &continent_url, "east", &s.path("e.sqlite"), 0, &[]);
    let (mut west, west_url) =
        aggregator(&s.dir, &continent_url, "west", &s.path("w.sqlite"), 0, &[]);
    let mut members = sites_with_reports(&s, &east_url, EAST_WEST[0].1, &data);
    members.extend(sites_with_reports(&s, &west_url, EAST_WEST[1].1, &data));
    assert!(root.wait(LIMIT).success(), "{}", root.log());
    for p in [&mut continent, &mut east, &mut west] {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    finish(&mut members);
    assert_eq!(util::model(&s.path("dep.model")), expected);
    // The root took one update a round: the continent's.
    let accepted_from: std::collections::BTreeSet<String> = status_of(&s.path("root.sqlite"))
        .audit()
        .into_iter()
        .filter(|a| a.action == "update" && a.outcome == "accepted")
        .map(|a| a.site)
        .collect();
    assert_eq!(accepted_from.len(), 1, "{accepted_from:?}");
    // The sites' evaluations climb both levels: the root reports each of the
    // six sites as simulation does, all of them below the continent.
    let report = s.json("dep.json");
    let simulated = s.json("sim.model.json");
    assert_eq!(
        report["final"]["per_site"], simulated["final"]["per_site"],
        "{report}"
    );
    assert_eq!(
        report["topology"]["regions"]["continent"]["sites"],
        serde_json::json!(["site0", "site1", "site2", "site3", "site4", "site5"]),
        "{report}"
    );
    // Each site evaluated the continent's regional model, then its own
    // region's, the deepest, which it fine-tunes from as the simulation
    // does; its model file is the global model.
    sites_fine_tuned_as_simulated(&s, &expected, &simulated);
}

/// FedProx's pull reaches the sites below the regional aggregators as it
/// does in the simulation: each aggregator tells each of its members what
/// the plan's strategy tells it.
#[test]
fn fedprox_reaches_the_sites_below_the_aggregators_as_in_simulation() {
    if util::skip_e2e("fedprox_reaches_the_sites_below_the_aggregators_as_in_simulation") {
        return;
    }
    let s = Scratch::new("hierarchy-fedprox");
    let (plan, data) = setup(&s, TWO_REGIONS);
    let text = std::fs::read_to_string(&plan).unwrap();
    let fedprox = s.write(
        "fedprox.toml",
        &text
            .replace("[federation]\n", "[federation]\nstrategy = \"fedprox\"\n")
            .replace(
                "[topology]\n",
                "[strategies.fedprox]\nmu = 1.0\n\n[topology]\n",
            ),
    );
    let plain = simulated(&s, &plan);
    let expected = s.simulate(&fedprox, "prox.model").1;
    assert_ne!(expected, plain, "mu = 1 moves the model");
    let mut run = Regions::start(
        &s,
        &fedprox,
        &data,
        &["--model-out", "dep.model"],
        &EAST_WEST,
    );
    run.finish();
    assert_eq!(util::model(&s.path("dep.model")), expected);
}

#[test]
fn aggregators_that_do_not_fit_the_plan_are_refused_with_the_reason() {
    if util::skip_e2e("aggregators_that_do_not_fit_the_plan_are_refused_with_the_reason") {
        return;
    }
    let s = Scratch::new("hierarchy-refused");
    let (plan, _) = setup(&s, TWO_REGIONS);
    let (_root, url) = coordinator(&s.dir, &plan, &s.path("root.sqlite"), 0, &[]);
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let run = |name: &str, db: &str| {
        s.run(&[
            "aggregator",
            "--upstream",
            &url,
            "--name",
            name,
            "--db",
            db,
            "--listen",
            &listen,
            "--insecure",
        ])
    };
    // Not in the tree: the parent refuses it by name.
    let refused = |run: util::Run, reason: &str| {
        assert!(!run.output.status.success());
        let stderr = run.stderr();
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(reason), "{stderr}");
    };
    refused(
        run("north", "n.sqlite"),
        "'north' is not among the plan's sites",
    );
    // A gossip plan has no coordinator.
    let gossip = std::fs::read_to_string(&plan).unwrap().replace(
        "kind = \"hierarchical\"",
        "kind = \"gossip\"\ngraph = \"ring\"",
    );
    let gossip = s.write("gossip.toml", &gossip);
    refused(
        s.run(&[
            "coordinator",
            "--plan",
            gossip.to_str().unwrap(),
            "--db",
            "g.sqlite",
            "--listen",
            "127.0.0.1:0",
            "--insecure",
        ]),
        "gossip topology has no coordinator",
    );
}

#[test]
fn central_dp_runs_at_the_regional_aggregators_with_their_own_keys_and_ledgers() {
    if util::skip_e2e("central_dp_runs_at_the_regional_aggregators_with_their_own_keys_and_ledgers")
    {
        return;
    }
    let s = Scratch::new("hierarchy-dp");
    let (plan, data) = setup(&s, TWO_REGIONS);
    let text = std::fs::read_to_string(&plan).unwrap();
    let plan = s.write(
        "dp.toml",
        &text.replace(
            "[privacy]\n",
            "[privacy]\nmode = \"central\"\nnoise_multiplier = 0.8\nclip_norm = 1.0\n",
        ),
    );
    let (sim, _) = s.simulate(&plan, "sim.model");
    let root_db = s.path("root.sqlite");
    let mut run = Regions::start(&s, &plan, &data, &["--report", "dep.json"], &EAST_WEST);
    run.finish();
    let regions = run.regions;
    // The root sees noised regional sums only: no ledger of its own; and no
    // database keeps a noise key (each region's is in its memory only).
    assert_eq!(status_of(&root_db).ledger().len(), 0);
    // (The file itself is checked for a key table: not something status shows.)
    let secrets = "SELECT COUNT(*) FROM sqlite_master WHERE name = 'run_secrets'";
    assert_eq!(query_i64(&root_db, secrets), 0);
    let sim_epsilon = sim["privacy"]["epsilon"].as_f64().unwrap();
    for (name, db) in [("east", &regions[0].1), ("west", &regions[1].1)] {
        // Each region drew its own noise key, kept it out of its database,
        // and recorded each round's release.
        assert_eq!(query_i64(db, secrets), 0, "{name}");
        assert_eq!(status_of(db).ledger().len(), 6, "{name}");
        let report = s.json(&format!("{name}.json"));
        let epsilon = report["privacy"]["epsilon"].as_f64().unwrap();
        assert!(
            (epsilon - sim_epsilon).abs() < 1e-9,
            "{name}: {epsilon} vs {sim_epsilon}"
        );
        let ledger = s.run(&["privacy", "--db", db.to_str().unwrap()]).ok();
        assert!(ledger.contains("central DP, 6 release(s)"), "{ledger}");
    }
    let report = s.json("dep.json");
    assert_eq!(report["rounds"].as_array().unwrap().len(), 6);
}

#[test]
fn secure_aggregation_at_every_level_equals_simulation_bit_for_bit() {
    if util::skip_e2e("secure_aggregation_at_every_level_equals_simulation_bit_for_bit") {
        return;
    }
    let s = Scratch::new("hierarchy-secagg");
    let layout: [(&str, &[&str]); 3] = [
        ("east", &["site0", "site1", "site2"]),
        ("north", &["site3", "site4", "site5"]),
        ("west", &["site6", "site7", "site8"]),
    ];
    let groups: String = layout
        .iter()
        .map(|(name, members)| {
            format!("[[topology.groups]]\nname = \"{name}\"\nmembers = {members:?}\n\n")
        })
        .collect();
    let (plan, data) = util::synthetic(
        &s,
        9,
        6,
        &format!("kind = \"hierarchical\"\n\n{groups}[secure_aggregation]\nenabled = true\n"),
    );
    let expected = simulated(&s, &plan);
    let root_db = s.path("root.sqlite");
    let mut run = Regions::start(&s, &plan, &data, &["--model-out", "dep.model"], &layout);
    run.finish();
    // The sums are exact: the tree of masked sums is the simulation's.
    assert_eq!(util::model(&s.path("dep.model")), expected);
    // Each region saw only its sites' sums and the root only the regions'
    // sums: one protocol run a round at each, no update stored anywhere.
    for db in run.regions.iter().map(|(_, db)| db).chain([&root_db]) {
        let status = status_of(db);
        assert_eq!(
            status.audited("secure-aggregation", "completed"),
            6,
            "{}",
            db.display()
        );
        assert_eq!(status.audited("secure-aggregation", "failed"), 0);
        assert_eq!(status.pending_updates(), 0);
    }
    // Two regions cannot mask toward the root (each would learn the other's
    // update from the sum): refused with the reason.
    let (two, _) = setup(&s, TWO_REGIONS);
    let text = std::fs::read_to_string(&two).unwrap();
    let two = s.write(
        "two.toml",
        &format!("{text}\n[secure_aggregation]\nenabled = true\n"),
    );
    let run = s.run(&[
        "coordinator",
        "--plan",
        two.to_str().unwrap(),
        "--db",
        "two.sqlite",
        "--listen",
        "127.0.0.1:0",
        "--insecure",
    ]);
    assert!(!run.output.status.success());
    assert!(
        run.stderr()
            .contains("every aggregator needs at least 3 members ('root' has 2)"),
        "{}",
        run.stderr()
    );
}

/// Every site of `east` is killed with SIGKILL mid-run. The plan has no
/// deadline and the root's liveness is a minute, but east's next round closes
/// empty as soon as east's own liveness (2 s) drops its sites; east then
/// withdraws from the root's round, which closes on west alone, and so on to
/// the last round. Without withdrawals the root would wait for east forever.
#[test]
fn a_region_that_loses_all_its_sites_withdraws_and_the_run_goes_on() {
    if util::skip_e2e("a_region_that_loses_all_its_sites_withdraws_and_the_run_goes_on") {
        return;
    }
    let s = Scratch::new("hierarchy-withdraw");
    let (plan, data) =
        util::synthetic(&s, 6, 8, &format!("kind = \"hierarchical\"\n{TWO_REGIONS}"));
    let root_db = s.path("root.sqlite");
    let (mut root, url) = coordinator(
        &s.dir,
        &plan,
        &root_db,
        0,
        &["--liveness", "60", "--report", "dep.json"],
    );
    let (mut east, east_url) = aggregator(
        &s.dir,
        &url,
        "east",
        &s.path("east.sqlite"),
        0,
        &["--liveness", "2", "--report", "east.json"],
    );
    let (mut west, west_url) = aggregator(
        &s.dir,
        &url,
        "west",
        &s.path("west.sqlite"),
        0,
        &["--liveness", "2"],
    );
    let mut east_sites = sites(&s, &east_url, &["site0", "site1", "site2"], &data, None);
    // site3 is slow, so the run lasts long enough to lose east midway.
    let mut west_sites = sites(
        &s,
        &west_url,
        &["site3", "site4", "site5"],
        &data,
        Some("site3"),
    );
    wait_until(LIMIT, "the root's second round", || {
        poll(&root_db, |s| s.rounds().len()) >= 2
    });
    for site in &mut east_sites {
        site.kill_9();
    }
    assert!(root.wait(LIMIT).success(), "{}", root.log());
    for aggregator in [&mut east, &mut west] {
        assert!(aggregator.wait(LIMIT).success(), "{}", aggregator.log());
    }
    finish(&mut west_sites);
    let status = status_of(&root_db);
    let withdrawn = status.audit_count(|a| {
        a.site == "east" && a.action == "withdraw" && a.outcome == "left the round"
    });
    assert!(withdrawn >= 1, "{}", east.log());
    // East was never taken for dead: it said it had nothing.
    assert_eq!(
        status.audit_count(|a| a.site == "east" && a.action == "liveness"),
        0
    );
    let report = s.json("dep.json");
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 8);
    assert!(
        rounds.iter().all(|r| r["status"] == "completed"),
        "{report}"
    );
    assert_eq!(rounds[0]["accepted"], 2, "{report}");
    // Each withdrawal is a round that counted west's update alone.
    for r in rounds {
        eprintln!(
            "round {}: accepted {} dropped {} in {:.2} s",
            r["round"],
            r["accepted"],
            r["dropped"],
            r["seconds"].as_f64().unwrap()
        );
    }
    let alone = rounds
        .iter()
        .filter(|r| r["accepted"] == 1 && r["dropped"] == 1)
        .count();
    assert_eq!(alone, withdrawn, "{report}");
    assert_eq!(rounds[7]["accepted"], 1, "{report}");
}

/// A second live process of an aggregator (another host started with the
/// same name) is refused by the parent and audited, as a second participant
/// of one site is; the run goes on with the first and equals simulation.
#[test]
fn a_second_live_process_of_an_aggregator_is_refused() {
    if util::skip_e2e("a_second_live_process_of_an_aggregator_is_refused") {
        return;
    }
    let s = Scratch::new("hierarchy-second");
    let (plan, data) = setup(&s, TWO_REGIONS);
    let expected = simulated(&s, &plan);
    let root_db = s.path("root.sqlite");
    let (mut root, url) = coordinator(
        &s.dir,
        &plan,
        &root_db,
        0,
        &["--liveness", "5", "--model-out", "dep.model"],
    );
    let (mut east, east_url) = aggregator(&s.dir, &url, "east", &s.path("e.sqlite"), 0, &[]);
    let (mut west, west_url) = aggregator(&s.dir, &url, "west", &s.path("w.sqlite"), 0, &[]);
    let mut members = east_west_sites(&s, &east_url, &west_url, &data, Some("site2"));
    wait_until(LIMIT, "round 1 closed at the root", || {
        poll(&root_db, |s| usize::from(s.round_closed(1))) == 1
    });
    let (mut second, _) = aggregator(&s.dir, &url, "east", &s.path("e2.sqlite"), 0, &[]);
    wait_until(LIMIT, "the second east refused", || {
        second.log().contains("another live process")
    });
    let refused = status_of(&root_db).audit_count(|a| {
        a.site == "east"
            && a.action == "join"
            && a.outcome == "refused"
            && a.detail.contains("another live process")
    });
    assert!(refused >= 1, "the refusal is audited");
    assert!(root.wait(LIMIT).success(), "{}", root.log());
    for p in [&mut east, &mut west] {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    finish(&mut members);
    second.kill_9();
    assert_eq!(util::model(&s.path("dep.model")), expected);
}

/// Adds two epochs of fine-tuning after the last round to `plan`.
fn fine_tuning(plan: &Path) {
    let text =
        std::fs::read_to_string(plan).unwrap() + "\n[personalization]\nfinetune_epochs = 2\n";
    std::fs::write(plan, text).unwrap();
}

/// Participants for `names` below `url`, each with `--report SITE.json`
/// and `--model-out SITE.model`.
fn sites_with_reports(s: &Scratch, url: &str, names: &[&str], data: &Path) -> Vec<Proc> {
    names
        .iter()
        .map(|site| {
            let (report, model) = (format!("{site}.json"), format!("{site}.model"));
            let extra = ["--report", report.as_str(), "--model-out", model.as_str()];
            participant_with(&s.dir, url, site, data, &extra)
        })
        .collect()
}

/// Every site of `EAST_WEST` reports the simulation's global, regional and
/// fine-tuned figures, and its model file is the global model `expected`.
fn sites_fine_tuned_as_simulated(s: &Scratch, expected: &[u8], simulated: &serde_json::Value) {
    let mut tuned = 0;
    for (_, sites_of) in EAST_WEST {
        for site in sites_of {
            let report = s.json(&format!("{site}.json"));
            let want = &simulated["personalization"]["per_site"][site];
            for level in ["global", "regional", "personalized"] {
                assert_eq!(
                    report[level]["accuracy"], want[level],
                    "{site} {level}: {report}"
                );
            }
            // The site's model file is the global model, not a region's.
            assert_eq!(
                util::model(&s.path(&format!("{site}.model"))),
                expected,
                "{site}"
            );
            tuned += usize::from(report["personalized"] != report["regional"]);
            println!(
                "{site}: global {}, regional {}, fine-tuned {}",
                report["global"]["accuracy"],
                report["regional"]["accuracy"],
                report["personalized"]["accuracy"]
            );
        }
    }
    assert!(
        tuned >= 3,
        "{tuned} of 6 sites' fine-tuned models differ from their region's"
    );
}

/// Fine-tuning on a deployed hierarchy: once the run is over each
/// aggregator has its sites evaluate its own last regional model
/// (protocol 1.17, `regional_model`); each site keeps it apart from the
/// final global model (its `--model-out` is still the coordinator's global
/// model) and fine-tunes from it, as the simulation does: its report's
/// `global`, `regional` and `personalized` are the simulation's.
#[test]
fn on_a_deployed_hierarchy_each_site_fine_tunes_its_regions_model_as_simulated() {
    if util::skip_e2e("on_a_deployed_hierarchy_each_site_fine_tunes_its_regions_model_as_simulated")
    {
        return;
    }
    let s = Scratch::new("hierarchy-finetune");
    let (plan, data) = setup(&s, TWO_REGIONS);
    fine_tuning(&plan);
    let expected = simulated(&s, &plan);
    let simulated = s.json("sim.model.json");
    let (mut root, url) = coordinator(
        &s.dir,
        &plan,
        &s.path("root.sqlite"),
        0,
        &["--model-out", "dep.model"],
    );
    let mut regions = Vec::new();
    let mut members = Vec::new();
    for (name, sites_of) in EAST_WEST {
        let db = s.path(&format!("{name}.sqlite"));
        let (proc, region_url) = aggregator(&s.dir, &url, name, &db, 0, &[]);
        regions.push(proc);
        members.extend(sites_with_reports(&s, &region_url, sites_of, &data));
    }
    assert!(root.wait(LIMIT).success(), "{}", root.log());
    for proc in &mut regions {
        assert!(proc.wait(LIMIT).success(), "{}", proc.log());
    }
    finish(&mut members);
    assert_eq!(util::model(&s.path("dep.model")), expected);
    sites_fine_tuned_as_simulated(&s, &expected, &simulated);
}
