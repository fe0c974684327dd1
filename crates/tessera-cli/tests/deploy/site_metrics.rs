//! Site metrics deployed: aggregate-only sums and DP-noised metrics at the
//! coordinator.

use crate::util::status::status_of;
use crate::util::{self, Scratch};
use crate::{LIMIT, heart_text, hello, plan, run_federation};

/// `site_metrics = "aggregate-only"`, the default (the plan has no
/// `[privacy]` table): each site's evaluation goes masked through a secure
/// round of its own, and the coordinator holds only sums across sites: no
/// row in its `evaluations` table, no per-site figure in its report, the
/// pooled figures equal to the simulation's (which reports the same sums),
/// and a clear evaluation refused with the reason.
#[test]
fn aggregate_only_site_metrics_reach_the_coordinator_only_as_sums() {
    if util::skip_e2e("aggregate_only_site_metrics_reach_the_coordinator_only_as_sums") {
        return;
    }
    let s = Scratch::new("deploy-aggregate-only");
    let text = std::fs::read_to_string(plan(&s, "fedavg", "")).unwrap();
    assert!(!text.contains("[privacy]"));
    let text = text.replace("rounds = 15", "rounds = 4");
    let plan = s.write("aggregate.toml", &text);
    let (simulated, expected) = s.simulate(&plan, "sim.model");
    let (mut coordinator, mut participants) = run_federation(&s, &plan, "agg.sqlite", "dep.model");
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
        assert!(p.log().contains("4 evaluations"), "{}", p.log());
    }
    assert_eq!(util::model(&s.path("dep.model")), expected);
    let db = s.path("agg.sqlite");
    // What the coordinator received: sums, never a site's evaluation.
    let status = status_of(&db);
    assert_eq!(status.evaluations(), 0);
    assert_eq!(status.audited("secure-evaluation", "completed"), 4);
    let report = s.json("dep.model.json");
    let per_site = report["final"]["per_site"]
        .as_object()
        .expect("the report has final.per_site");
    assert!(per_site.is_empty(), "no per-site metrics: {per_site:?}");
    assert_eq!(
        simulated["final"]["per_site"].as_object().map(|m| m.len()),
        Some(0),
        "the simulation reports the same sums only"
    );
    for key in ["accuracy", "mean_site_accuracy", "loss", "auc"] {
        let (d, m) = (&report["final"][key], &simulated["final"][key]);
        assert!(d.as_f64().is_some_and(|v| v > 0.0), "final {key}: {d}");
        assert_eq!(d, m, "final {key}");
    }
    // The binary metrics from the same summed histograms, as simulated.
    let binary = &report["final"]["binary"];
    assert!(binary["pr_auc"].as_f64().is_some(), "{binary}");
    assert_eq!(binary, &simulated["final"]["binary"]);
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 4);
    for (d, m) in rounds.iter().zip(simulated["rounds"].as_array().unwrap()) {
        assert!(d["accuracy"].as_f64().is_some_and(|v| v > 0.5), "{d}");
        assert_eq!(d["accuracy"], m["accuracy"]);
        assert_eq!(d["mean_site_accuracy"], m["mean_site_accuracy"]);
    }

    // A site that sends its evaluation in the clear anyway is refused.
    use tessera_proto::pb;
    use tessera_proto::pb::federation_client::FederationClient;
    let (mut second, url) = util::procs::coordinator(
        &s.dir,
        &plan,
        &s.path("clear.sqlite"),
        0,
        &["--liveness", "2"],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refused = runtime.block_on(async {
        let mut client = FederationClient::connect(url.clone()).await.unwrap();
        client.join(hello("va")).await.unwrap();
        client
            .submit_evaluation(pb::EvaluationReport {
                site: "va".into(),
                round: 1,
                n_examples: 16,
                loss_sum: 3.0,
                n_correct: 9,
                auc: None,
                histogram: Vec::new(),
                sites: Vec::new(),
                ..Default::default()
            })
            .await
            .unwrap_err()
    });
    assert!(
        refused.message().contains("aggregate-only"),
        "{}",
        refused.message()
    );
    second.kill_9();
    assert_eq!(status_of(&s.path("clear.sqlite")).evaluations(), 0);
}

/// `site_metrics = "dp"` deployed: the coordinator stores and reports only
/// noised sums, with noise from the operating system (two runs of the same
/// plan and seed release different figures, and neither releases the exact
/// sums the aggregate-only simulation computes), each round's evaluation
/// charged to `metrics_epsilon`, the model untouched.
#[test]
fn dp_site_metrics_are_noised_at_the_coordinator_with_its_own_secret() {
    if util::skip_e2e("dp_site_metrics_are_noised_at_the_coordinator_with_its_own_secret") {
        return;
    }
    let s = Scratch::new("deploy-dp-metrics");
    let text = heart_text(&s, 4);
    let exact_plan = s.write("exact.toml", &text);
    let (exact, expected) = s.simulate(&exact_plan, "exact.model");
    let plan = s.write(
        "dp-metrics.toml",
        &format!("{text}\n[privacy]\nsite_metrics = \"dp\"\nmetrics_epsilon = 2.0\n"),
    );
    let mut released = Vec::new();
    for run in ["one", "two"] {
        let (mut coordinator, mut participants) =
            run_federation(&s, &plan, &format!("{run}.sqlite"), &format!("{run}.model"));
        assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
        for p in &mut participants {
            assert!(p.wait(LIMIT).success(), "{}", p.log());
        }
        // The same model (the plans, and so the files' plan hashes, differ).
        assert_eq!(
            util::parameters(&util::model(&s.path(&format!("{run}.model")))),
            util::parameters(&expected)
        );
        let db = s.path(&format!("{run}.sqlite"));
        let status = status_of(&db);
        assert_eq!(status.evaluations(), 0);
        let report = s.json(&format!("{run}.model.json"));
        let dp = &report["metrics_privacy"];
        assert_eq!(dp["releases"], 4, "{dp}");
        assert_eq!(dp["release"], true, "{dp}");
        let epsilon = dp["epsilon"].as_f64().unwrap();
        assert!(epsilon <= 2.0 * 1.001 && epsilon > 1.8, "{dp}");
        assert!(report["final"]["per_site"].as_object().unwrap().is_empty());
        // No figures beyond the rounds' noised ones, as a simulation.
        assert!(
            report["final"].get("binary").is_none(),
            "{}",
            report["final"]
        );
        let rounds: Vec<f64> = report["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert!(r["metrics_epsilon"].as_f64().is_some(), "{r}");
                r["accuracy"].as_f64().unwrap()
            })
            .collect();
        // The database holds the same noised figures, never the exact ones.
        let stored = status
            .rounds()
            .iter()
            .filter(|r| {
                r["metrics"]
                    .to_string()
                    .to_lowercase()
                    .contains("metrics_epsilon")
            })
            .count();
        assert_eq!(stored, 4);
        let ledger = s.run(&["privacy", "--db", db.to_str().unwrap()]).ok();
        assert!(
            ledger.contains("DP metrics, 4 evaluation(s) released"),
            "{ledger}"
        );
        released.push(rounds);
    }
    let exact: Vec<f64> = exact["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["accuracy"].as_f64().unwrap())
        .collect();
    let differs = |a: &[f64], b: &[f64]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    assert!(differs(&released[0], &released[1]) >= 3, "{released:?}");
    assert!(differs(&released[0], &exact) >= 3, "{released:?} {exact:?}");
    assert!(differs(&released[1], &exact) >= 3, "{released:?} {exact:?}");
    for run in &released {
        for (r, e) in run.iter().zip(&exact) {
            assert!((r - e).abs() < 0.5, "{r} against {e}");
        }
    }
}
