//! The plan the sites run: a coordinator's settings reaching them, and plans
//! or offers refused (a model beyond memory, files outside the plan folder,
//! an odd offer, undeclared value sets).

use crate::util::procs::{HEART_SITES, Proc, coordinator, participant, participant_with};
use crate::util::{self, Scratch};
use crate::{LIMIT, heart_text, plan};

/// `coordinator --set` changes the plan the sites receive: they train the
/// changed plan, and the run equals the simulation of the same change.
#[test]
fn a_coordinator_setting_reaches_the_sites() {
    if util::skip_e2e("a_coordinator_setting_reaches_the_sites") {
        return;
    }
    let s = Scratch::new("deploy-set");
    let plan = plan(&s, "fedavg", "");
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &s.path("c.sqlite"),
        0,
        &[
            "--set",
            "federation.rounds=2",
            "--set",
            "training.lr=0.005",
            "--model-out",
            "dep.model",
            "--report",
            "dep.json",
        ],
    );
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for site in &mut sites {
        assert!(site.wait(LIMIT).success(), "{}", site.log());
    }
    let text = std::fs::read_to_string(&plan).unwrap();
    let changed = s.write(
        "changed.toml",
        &text.replace("rounds = 15", "rounds = 2").replace(
            "optimizer = \"sgd\"\nlr = 0.001",
            "optimizer = \"sgd\"\nlr = 0.005",
        ),
    );
    let (_, expected) = s.simulate(&changed, "sim.model");
    assert_eq!(s.json("dep.json")["rounds"].as_array().unwrap().len(), 2);
    assert_eq!(util::model(&s.path("dep.model")), expected);
}

/// A plan whose model cannot fit in the coordinator's memory stops the run
/// at the agreement, before any model is built: the coordinator exits with
/// the reason, and every site is told it. Before, the run grew until the
/// machine aborted it.
#[test]
fn a_model_too_big_for_the_coordinator_stops_the_run_before_round_1() {
    if util::skip_e2e("a_model_too_big_for_the_coordinator_stops_the_run_before_round_1") {
        return;
    }
    let s = Scratch::new("deploy-memory-coordinator");
    let text = std::fs::read_to_string(plan(&s, "fedavg", "")).unwrap();
    // 10^12 hidden units: 1.5 x 10^13 parameters, four copies of 4 bytes.
    let text = text.replace(
        "[model]\nkind = \"logistic\"",
        "[model]\nkind = \"mlp\"\nhidden = [1000000000000]",
    );
    let plan = s.write("huge.toml", &text);
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &s.path("c.sqlite"), 0, &[]);
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    assert!(!coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    assert!(
        coordinator
            .log()
            .contains("the plan needs at least 240000.0 GB of memory")
            && coordinator
                .log()
                .contains("the coordinator machine's available memory"),
        "{}",
        coordinator.log()
    );
    for site in &mut sites {
        assert!(!site.wait(LIMIT).success(), "{}", site.log());
        assert!(
            site.log().contains("refused by the coordinator")
                && site.log().contains("the plan needs at least"),
            "{}",
            site.log()
        );
    }
}

/// A site gives the run at most --max-memory-gb: a plan whose model needs
/// more there is refused at the site, saying why, before any model is
/// built; the others go on.
#[test]
fn a_site_refuses_a_model_beyond_its_memory_limit() {
    if util::skip_e2e("a_site_refuses_a_model_beyond_its_memory_limit") {
        return;
    }
    let s = Scratch::new("deploy-memory-site");
    // The other three go on without the site that refused.
    let plan = s.write(
        "small.toml",
        &heart_text(&s, 2).replace("min_participants = 4", "min_participants = 3"),
    );
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &s.path("c.sqlite"), 0, &[]);
    let mut others: Vec<Proc> = HEART_SITES[..3]
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    assert_eq!(HEART_SITES[3], "va");
    let mut small = participant(&s.dir, &url, "va", &["--max-memory-gb", "1e-9"]);
    assert!(!small.wait(LIMIT).success(), "{}", small.log());
    assert!(
        small.log().contains("the plan needs at least")
            && small
                .log()
                .contains("a model of 14 parameters, its copies at a site")
            && small.log().contains("this site's --max-memory-gb"),
        "{}",
        small.log()
    );
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for site in &mut others {
        assert!(site.wait(LIMIT).success(), "{}", site.log());
    }
    let bad = participant(&s.dir, &url, "va", &["--max-memory-gb", "-1"]).wait(LIMIT);
    assert!(!bad.success());
}

/// A coordinator's plan that names a file outside the site's --plan-dir
/// (an absolute path) is refused at the site, saying why, before any file
/// of it is read. Before, a coordinator's plan could make participants read
/// any absolute path.
#[test]
fn a_plan_cannot_make_a_site_read_outside_its_plan_dir() {
    if util::skip_e2e("a_plan_cannot_make_a_site_read_outside_its_plan_dir") {
        return;
    }
    let s = Scratch::new("deploy-plan-paths");
    let text = std::fs::read_to_string(plan(&s, "fedavg", "")).unwrap();
    let outside = s.write("elsewhere.csv", "center,row_in_file,flamby_split\n");
    let start = text.find("[data.split.membership]\npath = \"").unwrap();
    let end = start + text[start..].find(".csv\"").unwrap() + 5;
    let text = format!(
        "{}[data.split.membership]\npath = \"{}\"{}",
        &text[..start],
        outside.display(),
        &text[end..]
    );
    let plan = s.write("paths.toml", &text);
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &s.path("c.sqlite"), 0, &[]);
    let mut site = participant(&s.dir, &url, "cleveland", &[]);
    assert!(!site.wait(LIMIT).success(), "{}", site.log());
    assert!(
        site.log().contains("outside this site's --plan-dir"),
        "{}",
        site.log()
    );
    coordinator.kill_9();
}

/// A site whose data has other columns than the rest is refused at the
/// agreement, naming the columns, and the others go on without it. Before,
/// one odd offer made the agreement fail for everyone and every honest
/// participant exited.
#[test]
fn an_odd_offer_refuses_the_odd_site_not_the_federation() {
    if util::skip_e2e("an_odd_offer_refuses_the_odd_site_not_the_federation") {
        return;
    }
    let s = Scratch::new("deploy-odd-offer");
    let (plan, data) = util::synthetic(&s, 4, 3, "kind = \"flat\"");
    let text = std::fs::read_to_string(&plan).unwrap();
    let plan = s.write(
        "plan.toml",
        &text.replace("rounds = 3", "rounds = 3\nmin_participants = 3"),
    );
    let csv = std::fs::read_to_string(&data).unwrap();
    let odd: String = csv
        .lines()
        .enumerate()
        .map(|(i, line)| {
            if i == 0 {
                format!("extra,{line}\n")
            } else {
                format!("{i},{line}\n")
            }
        })
        .collect();
    let odd = s.write("odd.csv", &odd);
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &s.path("c.sqlite"),
        0,
        &["--report", "dep.json"],
    );
    let mut refused = participant_with(&s.dir, &url, "site3", &odd, &[]);
    // The odd offer is in before any honest one (else the three honest
    // ones agree first and site3 is handed their kinds).
    let db = s.path("c.sqlite");
    crate::util::procs::wait_until(LIMIT, "site3's offer of its column kinds", || {
        crate::util::status::status(&db).is_some_and(|st| {
            st.0["waiting"]["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("1 of"))
        })
    });
    let mut honest: Vec<Proc> = ["site0", "site1", "site2"]
        .iter()
        .map(|site| participant_with(&s.dir, &url, site, &data, &[]))
        .collect();
    assert!(!refused.wait(LIMIT).success(), "{}", refused.log());
    assert!(
        refused.log().contains("only here: [extra]"),
        "the odd site hears why:\n{}",
        refused.log()
    );
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut honest {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    let report = s.json("dep.json");
    assert_eq!(report["rounds"].as_array().unwrap().len(), 3);
}

/// A coordinator's plan that makes a column categorical without
/// declaring its levels (so that sites would send every distinct value,
/// here every patient's age) is refused at the site unless it consents.
#[test]
fn a_site_sends_undeclared_value_sets_only_with_consent() {
    if util::skip_e2e("a_site_sends_undeclared_value_sets_only_with_consent") {
        return;
    }
    let s = Scratch::new("deploy-levels-consent");
    let text = std::fs::read_to_string(plan(&s, "fedavg", "")).unwrap();
    let greedy = text.replace(
        "{ name = \"age\", type = \"numeric\" }",
        "{ name = \"age\", type = \"categorical\" }",
    );
    assert_ne!(greedy, text);
    let plan = s.write("greedy.toml", &greedy);
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &s.path("c.sqlite"), 0, &[]);
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    for site in &mut sites {
        assert!(!site.wait(LIMIT).success(), "{}", site.log());
        assert!(
            site.log()
                .contains("categorical without declaring their levels (age)")
                && site.log().contains("--share-levels"),
            "{}",
            site.log()
        );
    }
    coordinator.kill_9();
}
