//! `tessera simulate` end to end: the bundled plan, report keys, determinism,
//! baselines, ad-hoc data and synthetic data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use serde_json::Value;
use util::{Scratch, number};

#[test]
fn default_run_is_the_bundled_heart_plan_with_report_and_plot() {
    let s = Scratch::new("default");
    let out = s.run(&["simulate"]).ok();
    assert!(out.contains("round  accuracy"), "round table: {out}");
    assert!(out.contains("final: accuracy"), "{out}");
    let report = s.json("tessera-out/fed-heart-disease-fedavg-seed42.json");
    let svg =
        std::fs::read_to_string(s.path("tessera-out/fed-heart-disease-fedavg-seed42.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("federated"), "plot");
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 15);
    for (i, r) in rounds.iter().enumerate() {
        assert_eq!(r["round"], i + 1);
        for key in ["accuracy", "loss", "seconds"] {
            assert!(r[key].is_number(), "rounds[{i}].{key}");
        }
    }
    for key in [
        "final.accuracy",
        "final.mean_site_accuracy",
        "final.auc",
        "timing.total_seconds",
        "timing.seconds_per_round",
        "communication.bytes_up",
        "communication.bytes_down",
    ] {
        number(&report, key);
    }
    // final.accuracy is over all 254 test rows: a multiple of 1/254.
    let correct = number(&report, "final.accuracy") * 254.0;
    assert!((correct - correct.round()).abs() < 1e-6);
    assert_eq!(report["strategy"], "fedavg");
    assert!(report.get("baselines").is_none());
    // Site metrics are sums across sites by default: the report holds what
    // a deployed coordinator would, no site's own figures.
    assert_eq!(report["final"]["per_site"], serde_json::json!({}));
}

#[test]
fn the_same_command_twice_gives_the_same_numbers() {
    let s = Scratch::new("determinism");
    for strategy in ["scaffold", "fedadam"] {
        let mut reports = Vec::new();
        for run in 0..2 {
            let name = format!("{strategy}-{run}.json");
            s.run(&[
                "simulate",
                "-q",
                "--strategy",
                strategy,
                "--seed",
                "7",
                "--report",
                &name,
            ])
            .ok();
            reports.push(s.json(&name));
        }
        let strip = |r: &Value| -> Vec<(Value, Value)> {
            r["rounds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| (x["accuracy"].clone(), x["loss"].clone()))
                .collect()
        };
        assert_eq!(strip(&reports[0]), strip(&reports[1]), "{strategy}: rounds");
        assert_eq!(
            reports[0]["final"], reports[1]["final"],
            "{strategy}: final"
        );
    }
}

#[test]
fn baselines_are_reported() {
    let s = Scratch::new("baselines");
    let out = s
        .run(&[
            "simulate",
            "--baselines",
            "--rounds",
            "3",
            "--report",
            "r.json",
            "--plot",
            "p.svg",
        ])
        .ok();
    assert!(out.contains("baselines: pooled"), "{out}");
    let report = s.json("r.json");
    for key in [
        "baselines.local.mean_site_accuracy",
        "baselines.pooled.accuracy",
        "baselines.pooled.mean_site_accuracy",
    ] {
        let v = number(&report, key);
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    assert!(
        std::fs::read_to_string(s.path("p.svg"))
            .unwrap()
            .contains("pooled")
    );
    // Sums-only site metrics (the default): no per-site comparison.
    assert!(!out.contains("local only   federated"), "{out}");
    // Each site's own figures: each site alone, federated and pooled, the
    // numbers the report holds.
    let out = s
        .run(&[
            "simulate",
            "--baselines",
            "--rounds",
            "3",
            "--set",
            "privacy.site_metrics=clear",
            "--report",
            "c.json",
        ])
        .ok();
    let report = s.json("c.json");
    let lines: Vec<&str> = out.lines().collect();
    let header = lines.iter().position(|l| l.starts_with("site ")).unwrap();
    assert!(
        lines[header].ends_with("local only   federated      pooled"),
        "{out}"
    );
    let mut above = 0;
    for (i, site) in ["cleveland", "hungarian", "switzerland", "va"]
        .iter()
        .enumerate()
    {
        let fields: Vec<&str> = lines[header + 1 + i].split_whitespace().collect();
        assert_eq!(fields[0], *site, "{out}");
        let figure = |path: String| format!("{:.4}", number(&report, &path));
        assert_eq!(
            fields[1],
            figure(format!("baselines.local.per_site.{site}.accuracy"))
        );
        assert_eq!(fields[2], figure(format!("final.per_site.{site}.accuracy")));
        assert_eq!(
            fields[3],
            figure(format!("baselines.pooled.per_site.{site}.accuracy"))
        );
        above += usize::from(
            number(&report, &format!("final.per_site.{site}.accuracy"))
                > number(
                    &report,
                    &format!("baselines.local.per_site.{site}.accuracy"),
                ),
        );
    }
    let count = format!("federated above local only at {above} of 4 sites");
    assert!(lines[header + 5].starts_with(&count), "{out}");
}

#[test]
fn synthetic_data_round_trip_with_softmax() {
    let s = Scratch::new("synth");
    s.run(&[
        "synth",
        "--sites",
        "6",
        "--rows",
        "200",
        "--features",
        "60",
        "--classes",
        "10",
        "--alpha",
        "0.5",
        "--beta",
        "0.5",
        "--seed",
        "3",
        "--out",
        "synth.csv",
    ])
    .ok();
    let text = std::fs::read_to_string(s.path("synth.csv")).unwrap();
    assert_eq!(text.lines().count(), 1 + 6 * 200);
    s.run(&[
        "simulate",
        "-q",
        "--data",
        "synth.csv",
        "--site-column",
        "site",
        "--target",
        "y",
        "--model",
        "softmax",
        "--rounds",
        "20",
        "--set",
        "training.lr=0.2",
        "--set",
        "data.standardize.scope=federation",
        "--report",
        "r.json",
    ])
    .ok();
    let report = s.json("r.json");
    assert!(
        report["classes"].as_array().unwrap().len() >= 8,
        "most of the 10 classes occur"
    );
    let first = number(&report["rounds"][0], "accuracy");
    let last = number(&report, "final.accuracy");
    assert!(
        last > 0.5 && last > first,
        "softmax learns Synthetic(0.5, 0.5): {first} -> {last}"
    );
    assert!(report["final"]["auc"].is_null(), "no AUC for 10 classes");
    // The rows saved once read back to the same run, bit for bit.
    fn ad_hoc(data: &str) -> Vec<&str> {
        let mut args = vec!["simulate", "-q", "--data", data, "--site-column", "site"];
        args.extend(["--target", "y", "--model", "softmax", "--rounds", "20"]);
        args.extend(["--set", "training.lr=0.2"]);
        args.extend(["--set", "data.standardize.scope=federation"]);
        args
    }
    let out = s.run(&[&ad_hoc("synth.csv")[..], &["--save-rows", "synth.trows"]].concat());
    assert!(
        out.ok()
            .contains("saved 1200 rows of 6 sites to synth.trows")
    );
    s.run(&[&ad_hoc("synth.trows")[..], &["--report", "rows.json"]].concat())
        .ok();
    let from_rows = s.json("rows.json");
    assert_eq!(from_rows["final"], report["final"]);
    let accuracy = |r: &Value| {
        r["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["accuracy"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(accuracy(&from_rows), accuracy(&report));
    let e = s.run(&[
        "simulate",
        "--data",
        "synth.trows",
        "--site-column",
        "site",
        "--target",
        "x",
    ]);
    assert!(e.fails().contains("saved with other reading settings"));
}

#[test]
fn ad_hoc_mlp_on_a_plan_dataset_and_overrides() {
    let s = Scratch::new("adhoc");
    s.run(&[
        "synth",
        "--sites",
        "3",
        "--rows",
        "100",
        "--features",
        "5",
        "--seed",
        "1",
        "--out",
        "d.csv",
    ])
    .ok();
    s.run(&[
        "simulate",
        "-q",
        "--data",
        "d.csv",
        "--site-column",
        "site",
        "--target",
        "y",
        "--positive",
        "1",
        "--model",
        "mlp",
        "--hidden",
        "8,4",
        "--strategy",
        "fedavgm",
        "--rounds",
        "2",
        "--set",
        "training.epochs=2",
        "--set",
        "training.batch_size=16",
        "--report",
        "r.json",
    ])
    .ok();
    let report = s.json("r.json");
    assert_eq!(report["model"], "mlp");
    assert_eq!(report["strategy"], "fedavgm");
    assert_eq!(report["rounds"].as_array().unwrap().len(), 2);
    assert_eq!(report["classes"][1], "1");
}

#[test]
fn local_dp_names_each_sites_noise_multiplier_and_says_it_is_no_release() {
    let s = Scratch::new("local-dp-summary");
    let run = |name: &str| {
        s.run(&[
            "simulate",
            "--set",
            "privacy.mode=local",
            "--set",
            "privacy.epsilon=3",
            "--set",
            "privacy.clip_norm=1",
            "--report",
            name,
        ])
        .ok()
    };
    let out = run("local.json");
    println!("{out}");
    let report = s.json("local.json");
    let privacy = &report["privacy"];
    let multipliers = privacy["site_noise_multipliers"].as_object().unwrap();
    let line = out
        .lines()
        .find(|l| l.starts_with("privacy: noise multiplier per site: "))
        .unwrap_or_else(|| panic!("no per-site line in {out}"));
    // The four hospitals hold different numbers of rows, so each calibrated
    // its own multiplier; the summary names every one, as the report does.
    assert_eq!(multipliers.len(), 4, "{multipliers:?}");
    for site in ["cleveland", "hungarian", "switzerland", "va"] {
        let z = multipliers[site].as_f64().unwrap();
        assert!(line.contains(&format!("{site} {z:.4}")), "{site}: {line}");
    }
    let smallest = multipliers
        .values()
        .map(|z| z.as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(number(&report, "privacy.noise_multiplier"), smallest);
    assert!(
        out.contains(&format!("noise multiplier (smallest) {smallest:.4}")),
        "{out}"
    );
    let largest = multipliers
        .values()
        .map(|z| z.as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(largest > smallest, "{multipliers:?}");
    // A simulation is an experiment: its noise and batches come from the seed.
    assert_eq!(privacy["release"], false);
    let note = privacy["note"].as_str().unwrap();
    assert!(
        note.starts_with("simulated DP is an experiment, not a release"),
        "{note}"
    );
    assert!(out.contains(note), "{out}");
    // And therefore anyone with the seed gets the same numbers again.
    run("again.json");
    let again = s.json("again.json");
    assert_eq!(again["final"], report["final"]);
    assert_eq!(again["privacy"], report["privacy"]);
}

/// Sums across sites are the default; a federation too small for a secure
/// sum is refused with the way out, which works; `--site-metrics dp` prints
/// what the noised metrics spent.
#[test]
fn site_metrics_from_the_command_line() {
    let s = Scratch::new("site-metrics");
    for (sites, out) in [("2", "two.csv"), ("4", "four.csv")] {
        s.run(&[
            "synth",
            "--sites",
            sites,
            "--rows",
            "60",
            "--features",
            "4",
            "--classes",
            "2",
            "--seed",
            "1",
            "--out",
            out,
        ])
        .ok();
    }
    let adhoc = |data: &str, extra: &[&str]| {
        let mut args = vec![
            "simulate",
            "--data",
            data,
            "--site-column",
            "site",
            "--target",
            "y",
            "--rounds",
            "3",
        ];
        args.extend_from_slice(extra);
        s.run(&args)
    };
    let refused = adhoc("two.csv", &[]);
    assert!(!refused.output.status.success());
    let refused = refused.stderr();
    assert!(!refused.contains("panicked"), "{refused}");
    assert!(
        refused.contains("needs at least 3 sites; the data has 2")
            && refused.contains("--set privacy.site_metrics=clear"),
        "{refused}"
    );
    let clear = adhoc("two.csv", &["--set", "privacy.site_metrics=clear"]).ok();
    assert!(clear.contains("final: accuracy"), "{clear}");
    let noised = adhoc(
        "four.csv",
        &[
            "--set",
            "privacy.site_metrics=dp",
            "--set",
            "privacy.metrics_epsilon=3",
        ],
    )
    .ok();
    assert!(
        noised.contains("metrics: noised sums across sites, 3 evaluation(s) spent epsilon")
            && noised.contains("of 3 at delta"),
        "{noised}"
    );
    let bad = adhoc("four.csv", &["--set", "privacy.site_metrics=some"]).fails();
    assert!(
        bad.contains("--set 'privacy.site_metrics=some': unknown variant `some`"),
        "{bad}"
    );
}

/// Every example plan runs as it is in a fresh checkout (two rounds each,
/// from a copy of `examples/` and `data/`, named as README names them):
/// the synthetic ones generate their rows (`[data.synthetic]`), the others
/// read the bundled data; the asynchronous example is asynchronous (each
/// step takes `buffer_size` updates, where a synchronous round takes every
/// site's).
#[test]
fn every_example_plan_runs_as_is() {
    let s = util::fresh_copy("examples");
    let mut plans: Vec<String> = std::fs::read_dir(s.path("examples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    plans.sort();
    assert!(plans.len() >= 6, "{plans:?}");
    for (i, plan) in plans.iter().enumerate() {
        let report = format!("r{i}.json");
        let out = s.run(&[
            "simulate",
            "--plan",
            &format!("examples/{plan}"),
            "--rounds",
            "2",
            "--report",
            &report,
            "--plot",
            &format!("r{i}.svg"),
        ]);
        let text = out.ok();
        assert!(text.contains("final: "), "{plan}: {text}");
        let report = s.json(&report);
        let rounds = report["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 2, "{plan}");
        if plan == "synthetic-async.toml" {
            for round in rounds {
                assert_eq!(round["accepted"], 5, "{plan}: a step of 5 updates");
            }
        }
    }
}

/// The four hospitals' files rewritten as each might keep them (own column
/// names and order, sex as M/F or male/female, chest pain in words,
/// cholesterol in mmol/L at two sites, a birth year for an age, their own
/// missing tokens), read through their mappings
/// (`examples/fed-heart-disease-mapped.toml`), train the bundled plan's
/// model bit for bit. The committed files are what their script makes.
#[test]
fn mapped_hospital_files_train_the_bundled_model_bit_for_bit() {
    let s = util::fresh_copy("mapped");
    let rewritten = s.path("data/uci-heart-disease/rewritten");
    let sites = ["cleveland", "hungarian", "switzerland", "va"];
    let committed: Vec<Vec<u8>> = sites
        .iter()
        .map(|site| std::fs::read(rewritten.join(format!("{site}.csv"))).unwrap())
        .collect();
    let script = rewritten.join("make_rewritten.py");
    match std::process::Command::new("python3").arg(&script).output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            for (site, before) in sites.iter().zip(&committed) {
                let made = std::fs::read(rewritten.join(format!("{site}.csv"))).unwrap();
                assert!(&made == before, "{site}: the script makes another file");
            }
        }
        Err(e) => println!("skipped remaking the files: no python3 ({e})"),
    }
    let model = |plan: &str, out: &str| {
        s.run(&["simulate", "-q", "--plan", plan, "--model-out", out])
            .ok();
        util::parameters(&std::fs::read(s.path(out)).unwrap())
    };
    let clean = model("examples/fed-heart-disease.toml", "clean.model");
    let mapped = model("examples/fed-heart-disease-mapped.toml", "mapped.model");
    assert_eq!(mapped, clean);
}

/// `--set SECTION.KEY=VALUE` changes any plan setting without a flag of its
/// own, and a setting that does not exist or cannot work is one line naming
/// it.
#[test]
fn any_plan_setting_can_be_changed_from_the_command_line() {
    let s = Scratch::new("set");
    s.run(&[
        "simulate",
        "--set",
        "federation.rounds=2",
        "--set",
        "model.kind=mlp",
        "--set",
        "model.hidden=[8]",
        "--set",
        "data.split.test_fraction=0.25",
        "--report",
        "r.json",
        "--plot",
        "r.svg",
    ])
    .ok();
    let report = s.json("r.json");
    assert_eq!(report["rounds"].as_array().unwrap().len(), 2);
    assert_eq!(report["model"], "mlp");
    let e = s.run(&["simulate", "--set", "federation.roundz=2"]).fails();
    assert!(
        e.contains("--set 'federation.roundz=2': unknown field `roundz`"),
        "{e}"
    );
    let e = s.run(&["simulate", "--set", "model.hidden=[0]"]).fails();
    assert!(e.contains("hidden"), "{e}");
}

/// A setting three levels deep reaches the run: the strategy's client
/// learning rate changes the model trained, and giving it back its default
/// (nothing after `=`) gives back the plan's model.
#[test]
fn a_nested_setting_changes_the_run() {
    let s = Scratch::new("set-nested");
    let model = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "simulate",
            "-q",
            "--rounds",
            "1",
            "--report",
            "r.json",
            "--model-out",
            name,
        ];
        args.extend_from_slice(extra);
        s.run(&args).ok();
        // The model: the plans (and so the files' plan hashes) differ.
        util::parameters(&std::fs::read(s.path(name)).unwrap())
    };
    let plain = model("plain.model", &[]);
    let faster = model("fast.model", &["--set", "strategies.fedavg.client_lr=0.5"]);
    assert_ne!(plain, faster);
    let back = model(
        "back.model",
        &[
            "--set",
            "strategies.fedavg.client_lr=0.5",
            "--set",
            "strategies.fedavg.client_lr=",
            "--set",
            "training.lr=0.001",
        ],
    );
    assert_eq!(plain, back);
}

/// Two settings that cannot work are both named, on one line.
#[test]
fn every_conflict_of_a_plan_is_reported_at_once() {
    let s = Scratch::new("set-conflicts");
    let e = s
        .run(&[
            "simulate",
            "--set",
            "federation.mode=async",
            "--set",
            "federation.buffer_size=2",
            "--set",
            "secure_aggregation.enabled=true",
            "--set",
            "simulation.dropout=1",
        ])
        .fails();
    for reason in [
        "a secure round among its contributors, which needs at least 3 and min_participants (4); buffer_size is 2",
        "simulation.dropout must be in [0, 1), got 1",
    ] {
        assert!(e.contains(reason), "{reason}: {e}");
    }
    assert!(!e.contains('\n'), "{e}");
}

/// IFCA runs in simulation (its report names each site's cluster; the
/// deployed run is `tests/deploy`'s `personal::ifca_...`).
#[test]
fn ifca_simulates_and_names_each_sites_cluster() {
    let s = Scratch::new("ifca");
    let out = s
        .run(&[
            "simulate",
            "--strategy",
            "ifca",
            "--rounds",
            "3",
            "--report",
            "ifca.json",
        ])
        .ok();
    assert!(out.contains("personalized (ifca)"), "{out}");
    let p = &s.json("ifca.json")["personalization"];
    assert_eq!(p["strategy"], "ifca");
    let counts: u64 = p["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(counts, 4, "{p}");
    assert!(p["per_site"]["cleveland"]["cluster"].is_u64(), "{p}");
}

/// A multi-task plan simulates (each task's figures three ways, the
/// report and the per-site plot written), refuses flags of one model, and
/// the coordinator refuses to write one model of it, saying why (the
/// deployed run is `deploy::multitask`).
#[test]
fn multitask_simulates_and_refuses_flags_of_one_model() {
    let s = util::fresh_copy("multitask");
    let out = s
        .run(&[
            "simulate",
            "--plan",
            "examples/heart-multitask.toml",
            "--rounds",
            "3",
            "--report",
            "mt.json",
            "--plot",
            "mt.svg",
            "--model-out",
            "models/mt.tsm",
        ])
        .ok();
    assert!(out.contains("tasks 'disease'"), "{out}");
    assert!(out.contains("model of task 'angina'"), "{out}");
    // Each task's model predicts its own target from the same rows.
    let rows =
        std::fs::read_to_string(s.path("data/uci-heart-disease/processed.cleveland.data")).unwrap();
    let mut csv = String::from(
        "age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num\n",
    );
    csv.extend(rows.lines().take(5).map(|l| format!("{l}\n")));
    std::fs::write(s.path("rows.csv"), csv).unwrap();
    for task in ["disease", "angina"] {
        let model = format!("models/mt-{task}.tsm");
        let inspect = s.run(&["model", "inspect", &model]).ok();
        let target = if task == "disease" { "num" } else { "exang" };
        assert!(
            inspect.contains(&format!("predict '{target}'")),
            "{inspect}"
        );
        assert!(!inspect.contains(&format!("  {target}\n")), "{inspect}");
        let predicted = s
            .run(&["predict", "--model", &model, "--data", "rows.csv"])
            .ok();
        assert_eq!(predicted.lines().count(), 6, "{predicted}");
    }
    // One body, two heads: the files agree on every tensor but the last
    // layer's, and differ there.
    let files: Vec<_> = ["disease", "angina"]
        .iter()
        .map(|t| util::parameters(&std::fs::read(s.path(&format!("models/mt-{t}.tsm"))).unwrap()))
        .collect();
    let last = files[0]
        .names()
        .last()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_string();
    for ((name, a), (_, b)) in files[0].iter().zip(files[1].iter()) {
        if name.starts_with(&format!("{last}.")) {
            assert_ne!(a.data(), b.data(), "{name}: the heads are one");
        } else {
            assert_eq!(a.data(), b.data(), "{name}: the body is not shared");
        }
    }
    assert!(out.contains("with the shared body"), "{out}");
    let report = s.json("mt.json");
    assert_eq!(report["tasks"][1]["name"], "angina");
    assert_eq!(report["per_site"]["va"]["task"], "disease");
    assert!(report["per_site"]["hungarian"]["local"].is_f64());
    let svg = std::fs::read_to_string(s.path("mt.svg")).unwrap();
    assert!(svg.contains("<svg"), "no plot");
    let e = s
        .run(&[
            "simulate",
            "--plan",
            "examples/heart-multitask.toml",
            "--baselines",
        ])
        .fails();
    assert!(
        e.contains("--baselines is not for a [multitask] plan"),
        "{e}"
    );
    let run = s.run(&[
        "coordinator",
        "--plan",
        "examples/heart-multitask.toml",
        "--db",
        "c.sqlite",
        "--insecure",
        "--model-out",
        "one.tsm",
    ]);
    let e = run.stderr();
    assert!(!run.output.status.success(), "{e}");
    assert!(e.contains("a multi-task run has one per task"), "{e}");
}

/// A reader that stops reading (`tessera simulate | head -1`) ends the
/// command quietly, as SIGPIPE ends a Unix tool: no panic on stderr.
#[test]
fn a_closed_pipe_ends_the_command_without_a_panic() {
    let s = Scratch::new("closed-pipe");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["simulate", "--plan"])
        .arg(util::root().join("examples/synthetic-robust.toml"))
        .current_dir(&s.dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the pipe before the command prints.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}
