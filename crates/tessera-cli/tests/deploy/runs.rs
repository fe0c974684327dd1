//! Whole runs deployed: the same model as simulation bit for bit under each
//! strategy, parameters streamed with bounded memory, and asynchronous
//! buffered aggregation.

use std::time::Duration;

use crate::util::procs::{Proc, coordinator};
use crate::util::status::status_of;
use crate::util::{self, Scratch};
use crate::{LIMIT, plan, run_federation, simulated_model};

#[test]
fn deployment_equals_simulation_bit_for_bit() {
    if util::skip_e2e("deployment_equals_simulation_bit_for_bit") {
        return;
    }
    let s = Scratch::new("deploy-equal");
    // FedAvg: no instructions; SCAFFOLD: instructions with tensors and an
    // auxiliary sum; FedProx and FedDyn: instructions' arms with local parts;
    // q-FFL: each update weighed by the start loss its site reports.
    for strategy in ["fedavg", "scaffold", "fedprox", "feddyn", "qffl"] {
        let mut plan = plan(&s, strategy, "");
        if strategy == "qffl" {
            let text = std::fs::read_to_string(&plan).unwrap()
                + "\n[strategies.qffl]\nq = 2\nlipschitz = 0.1\n\n[privacy]\nsite_metrics = \"clear\"\n";
            plan = s.write("qffl.toml", &text);
        }
        let expected = simulated_model(&s, &plan, &format!("sim-{strategy}.model"));
        let model = format!("dep-{strategy}.model");
        let (mut coordinator, mut participants) =
            run_federation(&s, &plan, &format!("{strategy}.sqlite"), &model);
        assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
        for p in &mut participants {
            assert!(p.wait(LIMIT).success(), "{}", p.log());
            assert!(p.log().contains("done: 15 updates accepted"), "{}", p.log());
        }
        assert_eq!(
            util::model(&s.path(&model)),
            expected,
            "{strategy}: deployment differs from simulation"
        );
        let report = s.json(&format!("{model}.json"));
        if strategy == "fedavg" {
            status_tells_the_report(&s.path(&format!("{strategy}.sqlite")), &report);
        }
        let simulated = s.json(&format!("sim-{strategy}.model.json"));
        assert_eq!(report["final"]["accuracy"], simulated["final"]["accuracy"]);
        assert_eq!(
            report["final"]["mean_site_accuracy"],
            simulated["final"]["mean_site_accuracy"]
        );
    }
}

/// `tessera status --json` of a finished run's database says what the
/// run's report says: its rounds, who counted, the models, no round open.
fn status_tells_the_report(db: &std::path::Path, report: &serde_json::Value) {
    let status = status_of(db);
    let doc = &status.0;
    assert_eq!(doc["state"], "finished", "{doc}");
    assert_eq!(doc["run"]["status"], "finished");
    assert_eq!(doc["run"]["rounds"], 15);
    let hash = doc["run"]["plan_hash"].as_str().unwrap();
    assert!(hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(doc["participants"].as_array().unwrap().len(), 4);
    for step in ["kinds", "levels"] {
        assert_eq!(doc["agreement"][step]["agreed"], true, "{step}");
        assert_eq!(
            doc["agreement"][step]["offers"].as_array().unwrap().len(),
            4
        );
    }
    assert_eq!(doc["agreement"]["statistics"]["agreed"], false);
    let reported = report["rounds"].as_array().unwrap();
    assert_eq!(status.rounds().len(), reported.len());
    for (stored, line) in status.rounds().iter().zip(reported) {
        assert_eq!(stored["round"], line["round"]);
        assert_eq!(stored["evaluated"], true);
        assert_eq!(stored["metrics"]["accuracy"], line["accuracy"], "{stored}");
        assert_eq!(stored["cohort"].as_array().unwrap().len(), 4);
        assert_eq!(
            stored["counted"].as_array().unwrap().len() as u64,
            line["accepted"].as_u64().unwrap()
        );
        assert_eq!(
            stored["aggregate"]["n_updates"], line["accepted"],
            "{stored}"
        );
        assert!(stored["dropped"].as_array().unwrap().is_empty());
    }
    assert!(doc["open_round"].is_null());
    assert_eq!(status.pending_updates(), 0);
    let versions: Vec<u64> = doc["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, (0..=15).collect::<Vec<u64>>());
    assert_eq!(doc["privacy"]["releases"], 0);
    assert_eq!(status.audited("update", "accepted"), 60);
    assert_eq!(status.duplicate_accepted_updates(), 0);
}

/// A parameter set streams down and back in chunks with each side holding
/// about one copy: the wire protocol adds buffers, not copies.
#[test]
fn parameters_stream_with_bounded_memory() {
    if util::skip_e2e("parameters_stream_with_bounded_memory") {
        return;
    }
    let s = Scratch::new("transfer");
    let floats = 25_000_000u64; // 100 MB
    let (tx, rx) = std::sync::mpsc::channel();
    let floats_arg = floats.to_string();
    let mut server = Proc::start(
        "server",
        &s.dir,
        &["bench-transfer", "serve", "--floats", &floats_arg],
        Some(tx),
    );
    let address = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let url = format!("http://{address}");
    let mut client = Proc::start(
        "client",
        &s.dir,
        &["bench-transfer", "fetch", "--url", &url],
        None,
    );
    assert!(client.wait(LIMIT).success(), "{}", client.log());
    assert!(server.wait(LIMIT).success(), "{}", server.log());
    let peak = |log: &str, side: &str| -> f64 {
        let line = log
            .lines()
            .find(|l| l.starts_with(side) && l.contains("peak "))
            .unwrap();
        line.rsplit("peak ")
            .next()
            .unwrap()
            .trim_end_matches(" MB")
            .parse()
            .unwrap()
    };
    let model_mb = floats as f64 * 4.0 / 1e6;
    let (client_peak, server_peak) = (
        peak(&client.log(), "client:"),
        peak(&server.log(), "server: 25000000"),
    );
    eprintln!("model {model_mb} MB: client peak {client_peak} MB, server peak {server_peak} MB");
    assert!(client.log().contains("all values intact"));
    assert!(client_peak < 2.0 * model_mb, "client {client_peak} MB");
    assert!(server_peak < 2.0 * model_mb, "server {server_peak} MB");
}

/// Asynchronous buffered aggregation in deployment: six participants, one of
/// them slow; every K updates a step is committed; the slow site's updates
/// count with their staleness; the run finishes with every step taken.
/// Each site then holds the final model (its model file is the
/// coordinator's) and fine-tunes it on its own rows.
#[test]
fn asynchronous_deployment_takes_every_step_and_keeps_slow_sites() {
    if util::skip_e2e("asynchronous_deployment_takes_every_step_and_keeps_slow_sites") {
        return;
    }
    let s = Scratch::new("deploy-async");
    s.run(&[
        "synth",
        "--sites",
        "6",
        "--rows",
        "150",
        "--features",
        "20",
        "--classes",
        "4",
        "--alpha",
        "0.5",
        "--beta",
        "0.5",
        "--seed",
        "2",
        "--out",
        "s.csv",
    ])
    .ok();
    let data = s.path("s.csv");
    let plan = s.write(
        "async.toml",
        &format!(
            r#"
name = "async"
[data]
path = "{}"
site_column = "site"
[data.schema]
target = "y"
[data.standardize]
scope = "federation"
[model]
kind = "softmax"
[training]
epochs = 1
lr = 0.2
[federation]
rounds = 30
mode = "async"
buffer_size = 3
min_participants = 6
[privacy]
site_metrics = "clear"
[personalization]
finetune_epochs = 3
"#,
            data.display()
        ),
    );
    let db = s.path("a.sqlite");
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &db,
        0,
        &["--report", "a.json", "--model-out", "a.model"],
    );
    let mut sites: Vec<Proc> = (0..6)
        .map(|i| {
            let site = format!("site{i}");
            // The fast sites take 0.1 s an update, the slow one 0.4 s
            // (without a pause a fast site's update takes milliseconds, and
            // the 30 steps would be over before the slow site's first).
            let extra: &[&str] = if i == 5 {
                &["--pause-before-update", "0.4"]
            } else {
                &["--pause-before-update", "0.1"]
            };
            let (report, model) = (format!("{site}.json"), format!("{site}.model"));
            let mut args = vec![
                "participant",
                "--coordinator",
                &url,
                "--site",
                &site,
                "--data",
                data.to_str().unwrap(),
                "--insecure",
                "--report",
                &report,
                "--model-out",
                &model,
            ];
            args.extend_from_slice(extra);
            Proc::start(&site, &s.dir, &args, None)
        })
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut sites {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    let report = s.json("a.json");
    assert_eq!(report["rounds"].as_array().unwrap().len(), 30);
    assert!(
        report["final"]["accuracy"].as_f64().unwrap() > 0.4,
        "{}",
        report["final"]
    );
    // The slow site contributed, with stale models, and nothing was refused as too stale.
    let status = status_of(&db);
    let slow = status.accepted_updates_of("site5");
    assert!(slow >= 1, "the slow site's updates count");
    let fast = status.accepted_updates_of("site0");
    assert!(
        fast > slow,
        "fast sites contribute more often: {fast} against {slow}"
    );
    assert_eq!(
        status.audit_count(|a| a.detail.to_lowercase().contains("stale")),
        0
    );
    assert_eq!(status.aggregates().len(), 30, "every step durable");
    let final_model = util::model(&s.path("a.model"));
    let mut tuned = 0;
    for i in 0..6 {
        let site = format!("site{i}");
        assert_eq!(
            util::model(&s.path(&format!("{site}.model"))),
            final_model,
            "{site}"
        );
        let report = s.json(&format!("{site}.json"));
        assert!(report["personalized"]["accuracy"].is_number(), "{report}");
        tuned += usize::from(report["personalized"] != report["global"]);
    }
    assert!(
        tuned >= 3,
        "{tuned} of 6 sites' fine-tuned models differ from the final one"
    );
}
