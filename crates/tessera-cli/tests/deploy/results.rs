//! What each site takes home from a deployed run: the final global model,
//! self-describing, bit for bit the coordinator's, and a report whose
//! figures can be recomputed from outside (`tessera predict` on the site's
//! test rows, the coordinator's per-site evaluation, the simulation's
//! local-only baseline).

use tessera_engine::model_file::ModelFile;

use crate::util::procs::{HEART_SITES, Proc, coordinator, participant};
use crate::util::{self, Scratch};
use crate::{LIMIT, heart_text};

/// The site's test rows (the plan's membership file, rows with a missing
/// value dropped as the plan says) as CSV with a header, and their classes.
fn test_rows(site: &str) -> (String, Vec<String>) {
    let data = std::fs::read_to_string(util::procs::heart_file(site)).unwrap();
    let split =
        std::fs::read_to_string(util::root().join("data/uci-heart-disease/flamby_split.csv"))
            .unwrap();
    let test: Vec<usize> = split
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1] == site && f[3] == "test").then(|| f[2].parse().unwrap())
        })
        .collect();
    let mut csv = "age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num\n"
        .to_string();
    let mut classes = Vec::new();
    for (i, line) in data.lines().enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        let kept = fields
            .iter()
            .enumerate()
            .all(|(j, f)| (10..13).contains(&j) || *f != "?");
        if test.contains(&i) && kept {
            csv.push_str(line);
            csv.push('\n');
            classes.push(if fields[13] == "0" { "0" } else { "not 0" }.to_string());
        }
    }
    (csv, classes)
}

#[test]
fn every_site_takes_home_the_global_model_and_its_report() {
    if util::skip_e2e("every_site_takes_home_the_global_model_and_its_report") {
        return;
    }
    let s = Scratch::new("site-results");
    // Clear site metrics: the coordinator's report then has each site's
    // figures for the final model, to check the sites' reports against.
    // The local baselines chosen on held-out rows (the bundled plan turns
    // the choice off, FLamby's protocol), at sites with 10 rows to hold out
    // or more: the site's must be the simulation's.
    let text = heart_text(&s, 4).replace(
        "[baseline_choice]\nenabled = false",
        "[baseline_choice]\nenabled = true\nmin_validation_rows = 10",
    );
    assert!(text.contains("min_validation_rows = 10"));
    let text = text + "\n[privacy]\nsite_metrics = \"clear\"\n";
    let plan = s.write("results.toml", &text);
    let plan_arg = plan.to_str().unwrap();
    s.run(&[
        "simulate",
        "-q",
        "--plan",
        plan_arg,
        "--baselines",
        "--report",
        "sim.json",
        "--model-out",
        "sim.model",
    ])
    .ok();
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &s.path("r.sqlite"),
        0,
        &["--model-out", "dep.model", "--report", "dep.json"],
    );
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| {
            participant(
                &s.dir,
                &url,
                site,
                &[
                    "--model-out",
                    &format!("{site}.model"),
                    "--report",
                    &format!("{site}.json"),
                ],
            )
        })
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    // The coordinator's file: the simulation's model, described the same
    // way, with the run's id.
    assert_eq!(
        util::model(&s.path("dep.model")),
        util::model(&s.path("sim.model"))
    );
    let global = ModelFile::from_bytes(&std::fs::read(s.path("dep.model")).unwrap()).unwrap();
    assert_eq!(global.header.run.written_by, "coordinator");
    let run_id = global.header.run.id.clone().expect("a run id");
    assert_eq!(global.header.lineage.round, 4);
    assert_eq!(
        global.header.standardization.mean, None,
        "each site standardises with its own"
    );
    let deployed = s.json("dep.json");
    let simulated = s.json("sim.json");
    for (site, p) in HEART_SITES.iter().zip(&participants) {
        let file = ModelFile::from_bytes(&std::fs::read(s.path(&format!("{site}.model"))).unwrap())
            .unwrap();
        // The global model, bit for bit, and what it needs.
        let bits = |m: &ModelFile| m.parameters.values().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(&file), bits(&global), "{site}");
        assert_eq!(file.header.agreement, global.header.agreement);
        assert_eq!(file.header.features, global.header.features);
        assert_eq!(file.header.plan, global.header.plan);
        assert_eq!(file.header.lineage, global.header.lineage);
        assert_eq!(file.header.run.id.as_deref(), Some(run_id.as_str()));
        assert_eq!(file.header.run.written_by, format!("participant {site}"));
        assert_eq!(
            file.header.standardization.source.as_deref(),
            Some(format!("site:{site}").as_str())
        );
        assert!(file.header.standardization.mean.is_some());

        // The report's global figures: the coordinator's view of this
        // site's evaluation of the final model.
        let report = s.json(&format!("{site}.json"));
        assert_eq!(report["run_id"], run_id.as_str());
        assert_eq!(report["model_round"], 4);
        let own = &deployed["final"]["per_site"][site];
        for key in ["accuracy", "loss", "auc", "n_test"] {
            assert_eq!(report["global"][key], own[key], "{site} {key}: {report}");
        }
        // Recomputed from outside: `tessera predict` on the site's test rows.
        let (csv, classes) = test_rows(site);
        s.write(&format!("{site}-test.csv"), &csv);
        let out = s
            .run(&[
                "predict",
                "--model",
                &format!("{site}.model"),
                "--data",
                &format!("{site}-test.csv"),
            ])
            .ok();
        let predicted: Vec<&str> = out
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(1).unwrap())
            .collect();
        assert_eq!(predicted.len(), classes.len());
        assert_eq!(report["global"]["n_test"], classes.len());
        let correct = predicted
            .iter()
            .zip(&classes)
            .filter(|(p, c)| *p == c)
            .count();
        let accuracy = correct as f64 / classes.len() as f64;
        let reported = report["global"]["accuracy"].as_f64().unwrap();
        assert!(
            (accuracy - reported).abs() < 1e-12,
            "{site}: {accuracy} against {reported}"
        );
        // The local-only baseline: the simulation's, for this site.
        let local = &simulated["baselines"]["local"]["per_site"][site];
        for key in ["accuracy", "loss", "n_test"] {
            assert_eq!(report["local_baseline"][key], local[key], "{site} {key}");
        }
        let choice = &simulated["baselines"]["local"]["choices"][site];
        let training = report["local_baseline"]["training"].as_str().unwrap();
        let [held, trained, of] =
            ["validation_rows", "trained", "of"].map(|k| choice[k].as_u64().unwrap());
        let length = if held == 0 {
            format!(", {trained} epochs (too few rows")
        } else {
            format!(", {trained} of {of} epochs, chosen on {held} held-out")
        };
        assert!(
            training.contains("weight decay ") && training.contains(&length),
            "{site}: {training} against {choice}"
        );
        let gain = report["gain"].as_f64().unwrap();
        let expected = reported - local["accuracy"].as_f64().unwrap();
        assert!((gain - expected).abs() < 1e-12);
        assert_eq!(report["privacy"]["mode"], "off");
        assert_eq!(report["privacy"]["trainings"], 4);
        // The site's log says how the model does here.
        let log = p.log();
        assert!(
            log.contains(&format!("site '{site}': the global model (round 4)"))
                && log.contains("accuracy"),
            "{log}"
        );
    }
}
