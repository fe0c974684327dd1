//! Whole runs deployed: the same model as simulation bit for bit under each
//! strategy, parameters streamed with bounded memory, and asynchronous
//! buffered aggregation.

use std::time::Duration;

use crate::util::procs::{Proc, coordinator, query_i64};
use crate::util::{self, Scratch};
use crate::{LIMIT, plan, run_federation, simulated_model};

#[test]
fn deployment_equals_simulation_bit_for_bit() {
    if util::skip_e2e("deployment_equals_simulation_bit_for_bit") {
        return;
    }
    let s = Scratch::new("deploy-equal");
    // FedAvg: no instructions; SCAFFOLD: instructions with tensors and an
    // auxiliary sum; FedProx and FedDyn: instructions' arms with local parts.
    for strategy in ["fedavg", "scaffold", "fedprox", "feddyn"] {
        let plan = plan(&s, strategy, "");
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
            std::fs::read(s.path(&model)).unwrap(),
            expected,
            "{strategy}: deployment differs from simulation"
        );
        let report = s.json(&format!("{model}.json"));
        let simulated = s.json(&format!("sim-{strategy}.model.json"));
        assert_eq!(report["final"]["accuracy"], simulated["final"]["accuracy"]);
        assert_eq!(
            report["final"]["mean_site_accuracy"],
            simulated["final"]["mean_site_accuracy"]
        );
    }
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
"#,
            data.display()
        ),
    );
    let db = s.path("a.sqlite");
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &db, 0, &["--report", "a.json"]);
    let mut sites: Vec<Proc> = (0..6)
        .map(|i| {
            let site = format!("site{i}");
            let extra: &[&str] = if i == 5 {
                &["--pause-before-update", "0.4"]
            } else {
                &[]
            };
            let mut args = vec![
                "participant",
                "--coordinator",
                &url,
                "--site",
                &site,
                "--data",
                data.to_str().unwrap(),
                "--insecure",
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
    let slow = query_i64(
        &db,
        "SELECT COUNT(*) FROM audit WHERE site = 'site5' AND action = 'update' AND outcome = 'accepted'",
    );
    assert!(slow >= 1, "the slow site's updates count");
    let fast = query_i64(
        &db,
        "SELECT COUNT(*) FROM audit WHERE site = 'site0' AND action = 'update' AND outcome = 'accepted'",
    );
    assert!(
        fast > slow,
        "fast sites contribute more often: {fast} against {slow}"
    );
    assert_eq!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM audit WHERE detail LIKE '%stale%'"
        ),
        0
    );
    assert_eq!(
        query_i64(&db, "SELECT COUNT(*) FROM round_aggregates"),
        30,
        "every step durable"
    );
}
