//! A deployed multi-task run (`examples/heart-multitask.toml`: disease at
//! Cleveland and VA, exercise-induced angina at Hungary and Switzerland):
//! each site reads its rows with its own task's target, hears its own
//! task's classes, trains the shared body and its task's head, and takes
//! home its task's model, bit for bit the simulation's; the coordinator's
//! report gives each task's figures, the simulation's. Also with the
//! coordinator killed mid-round and restarted on its database, and with
//! tasks of different classes (the disease grade's five beside angina's
//! two).

use crate::LIMIT;
use crate::util::procs::{
    HEART_SITES, Proc, coordinator, heart_file, participant_with, wait_until,
};
use crate::util::status::poll;
use crate::util::{self, Scratch};

/// The bundled multi-task plan's text, its data paths absolute, with
/// `rounds`.
pub(crate) fn multitask_text(rounds: u32) -> String {
    std::fs::read_to_string(util::root().join("examples/heart-multitask.toml"))
        .unwrap()
        .replace("\"../data/", &format!("\"{}/data/", util::root().display()))
        .replace("rounds = 20", &format!("rounds = {rounds}"))
}

fn task_of(site: &str) -> &'static str {
    match site {
        "cleveland" | "va" => "disease",
        _ => "angina",
    }
}

#[test]
fn multitask_deployed_is_the_simulation_and_each_site_takes_its_tasks_model_home() {
    if util::skip_e2e(
        "multitask_deployed_is_the_simulation_and_each_site_takes_its_tasks_model_home",
    ) {
        return;
    }
    let s = Scratch::new("multitask");
    deployed_as_simulated(&s, &multitask_text(6), false);
    // The stacked model is no model one site serves: the registry refuses it.
    let db = s.path("r.sqlite");
    let e = s
        .run(&[
            "models",
            "--db",
            db.to_str().unwrap(),
            "register",
            "--name",
            "heart",
        ])
        .fails();
    assert!(e.contains("is a multi-task run"), "{e}");
}

#[test]
fn multitask_resumes_after_its_coordinator_is_killed_mid_round() {
    if util::skip_e2e("multitask_resumes_after_its_coordinator_is_killed_mid_round") {
        return;
    }
    let s = Scratch::new("multitask-killed");
    deployed_as_simulated(&s, &multitask_text(6), true);
}

#[test]
fn multitask_tasks_of_different_classes_deployed_are_the_simulation() {
    if util::skip_e2e("multitask_tasks_of_different_classes_deployed_are_the_simulation") {
        return;
    }
    let s = Scratch::new("multitask-grades");
    // The disease task predicts the grade itself: five classes.
    let text = multitask_text(6)
        .replace(
            "negative = [\"0\"]          # y = 1 if num > 0 (any angiographic disease)",
            "",
        )
        .replace(
            "kind = \"binary\"           # refused if the sites' classes are not two",
            "kind = \"multiclass\"",
        );
    assert!(!text.contains("any angiographic disease"));
    let simulated = deployed_as_simulated(&s, &text, false);
    assert_eq!(
        simulated["tasks"][0]["classes"].as_array().unwrap().len(),
        5
    );
    assert_eq!(
        simulated["tasks"][1]["classes"].as_array().unwrap().len(),
        2
    );
}

/// Runs the multi-task plan `text` simulated and deployed on the four heart
/// sites (with `kill`, the coordinator killed once round 3 holds three
/// updates, VA being slow, and restarted on its database) and checks that
/// each site's model and accuracy, and each task's figures, are the
/// simulation's. The simulation's report.
fn deployed_as_simulated(s: &Scratch, text: &str, kill: bool) -> serde_json::Value {
    let plan = s.write("multitask.toml", text);
    s.run(&[
        "simulate",
        "-q",
        "--plan",
        plan.to_str().unwrap(),
        "--report",
        "sim.json",
        "--model-out",
        "sim.tsm",
    ])
    .ok();
    let simulated = s.json("sim.json");
    let db = s.path("r.sqlite");
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &db, 0, &["--report", "dep.json"]);
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| {
            let (report, model) = (format!("{site}.json"), format!("{site}.tsm"));
            let mut args = vec!["--report", &report, "--model-out", &model];
            if kill && *site == "va" {
                args.extend(["--pause-before-update", "1.5"]);
            }
            participant_with(&s.dir, &url, site, &heart_file(site), &args)
        })
        .collect();
    if kill {
        wait_until(LIMIT, "round 3 with three accepted updates", || {
            poll(&db, |s| s.pending_updates_of(3)) == 3
        });
        coordinator.kill_9();
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        coordinator =
            crate::util::procs::coordinator(&s.dir, &plan, &db, port, &["--report", "dep.json"]).0;
    }
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    if kill {
        assert!(
            coordinator.log().contains("resumed"),
            "{}",
            coordinator.log()
        );
    }
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    for site in HEART_SITES {
        let task = task_of(site);
        let file = |name: String| {
            tessera_engine::model_file::ModelFile::from_bytes(
                &std::fs::read(s.path(&name)).unwrap(),
            )
            .unwrap()
        };
        let (own, simulated_model) = (file(format!("{site}.tsm")), file(format!("sim-{task}.tsm")));
        assert_eq!(
            own.parameters, simulated_model.parameters,
            "{site}: not task '{task}''s simulated model"
        );
        // The file names its task's target and the run's plan, as the
        // simulator's does.
        assert_eq!(own.header.target, simulated_model.header.target, "{site}");
        assert_eq!(
            own.header.plan.hash, simulated_model.header.plan.hash,
            "{site}"
        );
        let report = s.json(&format!("{site}.json"));
        assert_eq!(
            report["global"]["accuracy"], simulated["per_site"][site]["shared"],
            "{site}: {report}"
        );
        println!(
            "multitask {site} ({task}): deployed {}, simulated {}",
            report["global"]["accuracy"], simulated["per_site"][site]["shared"]
        );
    }
    // The coordinator's report: each task's figures, the simulation's,
    // with each task's own classes.
    let deployed = s.json("dep.json");
    for (t, task) in ["disease", "angina"].iter().enumerate() {
        let (d, m) = (&deployed["tasks"][t], &simulated["tasks"][t]);
        assert_eq!(d["name"], *task, "{deployed}");
        assert_eq!(d["classes"], m["classes"], "{task}: {d} against {m}");
        assert_eq!(
            d["mean_site_accuracy"], m["shared"]["mean_site_accuracy"],
            "{task}: {d} against {m}"
        );
        assert_eq!(d["accuracy"], m["shared"]["accuracy"], "{task}");
    }
    assert_eq!(
        deployed["final"]["mean_site_accuracy"], simulated["shared"]["mean_site_accuracy"],
        "{deployed}"
    );
    // The two tasks' models share the body and differ in the head.
    let models: Vec<_> = ["cleveland", "hungarian"]
        .iter()
        .map(|site| util::parameters(&std::fs::read(s.path(&format!("{site}.tsm"))).unwrap()))
        .collect();
    for ((name, a), (_, b)) in models[0].iter().zip(models[1].iter()) {
        if name.starts_with("dense0.") {
            assert_eq!(a.data(), b.data(), "{name}: the body is not one");
        } else {
            assert_ne!(a.data(), b.data(), "{name}: the heads are one");
        }
    }
    simulated
}

/// A task declared multiclass whose sites hold two classes ends the run at
/// the agreement: the coordinator says why, and so does each site.
#[test]
fn a_task_whose_classes_are_not_its_declared_kind_ends_the_run_saying_why() {
    if util::skip_e2e("a_task_whose_classes_are_not_its_declared_kind_ends_the_run_saying_why") {
        return;
    }
    let s = Scratch::new("multitask-kind");
    let text = multitask_text(3).replace(
        "kind = \"binary\"\nnegative = [\"0\"]          # y = 1 if exercise induced angina",
        "kind = \"multiclass\"",
    );
    assert!(text.contains("kind = \"multiclass\""));
    let plan = s.write("multitask.toml", &text);
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &s.path("r.sqlite"), 0, &[]);
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant_with(&s.dir, &url, site, &heart_file(site), &[]))
        .collect();
    let why = "'angina' is declared multiclass, and its target 'exang' has 2 classes";
    assert!(!coordinator.wait(LIMIT).success());
    assert!(coordinator.log().contains(why), "{}", coordinator.log());
    for p in &mut participants {
        assert!(!p.wait(LIMIT).success(), "{}", p.log());
        assert!(p.log().contains(why), "{}", p.log());
    }
}
