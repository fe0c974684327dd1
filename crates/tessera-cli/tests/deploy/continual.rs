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

/// The parameters of the model file at `path`.
fn parameters(path: &std::path::Path) -> tessera_core::ParameterSet {
    let bytes = std::fs::read(path).expect("model file");
    tessera_engine::model_file::ModelFile::from_bytes(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .parameters
}

/// Elastic weight consolidation deployed: each site measures its own
/// importance of the final model at the end of a run and keeps it; in the
/// next run each holds its training to that model with it. Both runs are
/// the simulator's with `--site-importance-out` and `--site-importance`,
/// bit for bit; a site that continues from a model the run does not start
/// from (the agreement names the run's initial model by its SHA-256)
/// refuses to train, saying why.
#[test]
fn sites_hold_a_continued_run_to_the_earlier_model_with_their_own_importance() {
    if util::skip_e2e("sites_hold_a_continued_run_to_the_earlier_model_with_their_own_importance") {
        return;
    }
    let s = Scratch::new("deploy-continue-ewc");
    let earlier = heart(&s, "earlier.toml", 42, "");
    let earlier_plan = earlier.to_str().unwrap();
    s.run(&[
        "simulate",
        "--plan",
        earlier_plan,
        "--model-out",
        "sim1.model",
        "--site-importance-out",
        "sim1",
    ])
    .ok();
    let (mut coordinator1, url) = coordinator(&s.dir, &earlier, &s.path("c1.sqlite"), 0, &[]);
    let own = |site: &str, what: &str| format!("{site}.{what}");
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| {
            let (model, importance) = (own(site, "model"), own(site, "importance"));
            participant(
                &s.dir,
                &url,
                site,
                &["--model-out", &model, "--importance-out", &importance],
            )
        })
        .collect();
    assert!(coordinator1.wait(LIMIT).success(), "{}", coordinator1.log());
    for site in &mut sites {
        assert!(site.wait(LIMIT).success(), "{}", site.log());
    }
    for site in HEART_SITES {
        assert_eq!(
            parameters(&s.path(&own(site, "model"))),
            parameters(&s.path("sim1.model"))
        );
        // Each site's own importance, as the simulator measures it.
        let importance = parameters(&s.path(&own(site, "importance")));
        assert_eq!(
            importance,
            parameters(&s.path(&format!("sim1/{site}.importance")))
        );
        let largest = importance.values().fold(0.0f32, f32::max);
        assert_eq!(largest, 1.0, "{site}");
    }

    // The next run continues from the earlier model, each site held to it
    // by its own importance.
    let later = heart(&s, "later.toml", 7, "");
    let later_plan = later.to_str().unwrap();
    let simulated = |name: &str, more: &[&str]| {
        let mut args = vec![
            "simulate",
            "--plan",
            later_plan,
            "--continue-from",
            "sim1.model",
            "--model-out",
            name,
        ];
        args.extend_from_slice(more);
        s.run(&args).ok()
    };
    let said = simulated(
        "sim2.model",
        &["--ewc-lambda", "1", "--site-importance", "sim1"],
    );
    assert!(said.contains("each site's own importance"), "{said}");
    simulated("plain.model", &[]);
    let (mut coordinator2, url) = coordinator(
        &s.dir,
        &later,
        &s.path("c2.sqlite"),
        0,
        &["--continue-from", "sim1.model", "--model-out", "dep2.model"],
    );
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| {
            let (model, importance) = (own(site, "model"), own(site, "importance"));
            let (report, after) = (own(site, "json"), own(site, "after"));
            participant(
                &s.dir,
                &url,
                site,
                &[
                    "--continue-from",
                    &model,
                    "--ewc-lambda",
                    "1",
                    "--importance",
                    &importance,
                    "--report",
                    &report,
                    "--model-out",
                    &after,
                ],
            )
        })
        .collect();
    assert!(coordinator2.wait(LIMIT).success(), "{}", coordinator2.log());
    for site in &mut sites {
        assert!(site.wait(LIMIT).success(), "{}", site.log());
        assert!(
            site.log().contains("the model it continued from: 0."),
            "{}",
            site.log()
        );
    }
    // Each site's report has the model it continued from on its test rows
    // beside the final one.
    let report = s.json("cleveland.json");
    let continued = &report["continued"];
    assert!(
        continued["from"]
            .as_str()
            .unwrap()
            .starts_with("cleveland.model (round 4)")
    );
    assert_eq!(continued["ewc_lambda"], 1.0);
    assert_eq!(continued["n_test"], report["global"]["n_test"]);
    assert!(continued["accuracy"].as_f64().unwrap() > 0.0);
    // Its model file names the model it continued from.
    let inspected = s.run(&["model", "inspect", "cleveland.after"]).ok();
    assert!(
        inspected.contains("cleveland.model (round 4), parameters sha256"),
        "{inspected}"
    );
    let deployed = parameters(&s.path("dep2.model"));
    assert_eq!(deployed, parameters(&s.path("sim2.model")));
    assert_ne!(deployed, parameters(&s.path("plain.model")));

    // A coordinator that does not start from the model a site continues
    // from: that site refuses to train, and says why.
    let (_coordinator3, url) = coordinator(&s.dir, &later, &s.path("c3.sqlite"), 0, &[]);
    let mut refusing = participant(
        &s.dir,
        &url,
        "cleveland",
        &["--continue-from", "cleveland.model"],
    );
    let _others: Vec<Proc> = HEART_SITES[1..]
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    assert!(!refusing.wait(LIMIT).success(), "{}", refusing.log());
    let why = "the run starts from another model";
    assert!(refusing.log().contains(why), "{}", refusing.log());
    // An importance file is not a model to continue from.
    let refused = s
        .run(&[
            "coordinator",
            "--plan",
            later_plan,
            "--db",
            "c4.sqlite",
            "--insecure",
            "--continue-from",
            "cleveland.importance",
        ])
        .fails();
    assert!(
        refused.contains("an importance file, not a model"),
        "{refused}"
    );
}
