//! Continual learning deployed: a coordinator started with
//! `--continue-from` runs from an earlier run's model, bit for bit as
//! `tessera simulate --continue-from` does, and names that model in its
//! model file's lineage; a model of other features stops the run at the
//! agreement, saying why at the coordinator and at every site.

use super::*;

/// Fed-Heart-Disease, 4 rounds, with `seed`.
fn heart(s: &Scratch, name: &str, seed: u32, extra: &str) -> std::path::PathBuf {
    let text = heart_text(s, 4).replace("seed = 42", &format!("seed = {seed}")) + extra;
    assert!(text.contains(&format!("seed = {seed}")));
    s.write(name, &text)
}

#[test]
fn a_deployed_run_continues_from_a_model_file_as_the_simulation_does() {
    if util::skip_e2e("a_deployed_run_continues_from_a_model_file_as_the_simulation_does") {
        return;
    }
    let s = Scratch::new("deploy-continue");
    let earlier = heart(&s, "earlier.toml", 42, "");
    s.simulate(&earlier, "before.model");
    let later = heart(&s, "later.toml", 7, "");
    let plan = later.to_str().unwrap();
    s.run(&[
        "simulate",
        "--plan",
        plan,
        "--continue-from",
        "before.model",
        "--model-out",
        "sim.model",
        "--report",
        "sim.json",
    ])
    .ok();
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &later,
        &s.path("c.sqlite"),
        0,
        &[
            "--continue-from",
            "before.model",
            "--model-out",
            "dep.model",
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
    let deployed = util::model(&s.path("dep.model"));
    assert_eq!(deployed, util::model(&s.path("sim.model")));
    // Not the run from the plan's own initial model.
    s.simulate(&later, "fresh.model");
    assert_ne!(deployed, util::model(&s.path("fresh.model")));
    let inspected = s.run(&["model", "inspect", "dep.model"]).ok();
    assert!(inspected.contains("before.model (round 4"), "{inspected}");
    let audit = s
        .run(&["status", "--db", "c.sqlite", "--audit", "1000"])
        .ok();
    assert!(audit.contains("continued from"), "{audit}");
}

#[test]
fn a_model_of_other_features_stops_a_continued_run_at_the_agreement() {
    if util::skip_e2e("a_model_of_other_features_stops_a_continued_run_at_the_agreement") {
        return;
    }
    let s = Scratch::new("deploy-continue-other");
    // The earlier run left `chol` out: one feature fewer.
    let text = heart_text(&s, 2).replace(
        "{ name = \"chol\", type = \"numeric\" }",
        "{ name = \"chol\", type = \"ignore\" }",
    );
    assert!(text.contains("\"chol\", type = \"ignore\""));
    let other = s.write("other.toml", &text);
    s.simulate(&other, "other.model");
    let later = heart(&s, "later.toml", 7, "");
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &later,
        &s.path("c.sqlite"),
        0,
        &["--continue-from", "other.model"],
    );
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    assert!(!coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    let why = "features are not the agreed";
    assert!(coordinator.log().contains(why), "{}", coordinator.log());
    for site in &mut sites {
        assert!(!site.wait(LIMIT).success(), "{}", site.log());
        assert!(site.log().contains(why), "{}", site.log());
    }
    // A plan that cannot continue is refused before anything opens.
    let ditto = plan(&s, "ditto", "");
    let refused = s
        .run(&[
            "coordinator",
            "--plan",
            ditto.to_str().unwrap(),
            "--db",
            "d.sqlite",
            "--insecure",
            "--continue-from",
            "other.model",
        ])
        .fails();
    assert!(refused.contains("a FedAvg-family strategy"), "{refused}");
}
