//! A deployed multi-task run (`examples/heart-multitask.toml`: disease at
//! Cleveland and VA, exercise-induced angina at Hungary and Switzerland):
//! each site reads its rows with its own task's target, hears its own
//! task's classes, trains the shared body and its task's head, and takes
//! home its task's model, bit for bit the simulation's; the coordinator's
//! report gives each task's figures, the simulation's.

use crate::LIMIT;
use crate::util::procs::{HEART_SITES, Proc, coordinator, heart_file, participant_with};
use crate::util::{self, Scratch};

/// The bundled multi-task plan, its data paths absolute, with `rounds`.
fn multitask_plan(s: &Scratch, rounds: u32) -> std::path::PathBuf {
    let text = std::fs::read_to_string(util::root().join("examples/heart-multitask.toml"))
        .unwrap()
        .replace("\"../data/", &format!("\"{}/data/", util::root().display()))
        .replace("rounds = 20", &format!("rounds = {rounds}"));
    s.write("multitask.toml", &text)
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
    let plan = multitask_plan(&s, 6);
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
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &s.path("r.sqlite"),
        0,
        &["--report", "dep.json"],
    );
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| {
            let (report, model) = (format!("{site}.json"), format!("{site}.tsm"));
            participant_with(
                &s.dir,
                &url,
                site,
                &heart_file(site),
                &["--report", &report, "--model-out", &model],
            )
        })
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    for site in HEART_SITES {
        let task = task_of(site);
        let own = util::parameters(&std::fs::read(s.path(&format!("{site}.tsm"))).unwrap());
        let simulated_model =
            util::parameters(&std::fs::read(s.path(&format!("sim-{task}.tsm"))).unwrap());
        assert_eq!(
            own, simulated_model,
            "{site}: not task '{task}''s simulated model"
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
}
