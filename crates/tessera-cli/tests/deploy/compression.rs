//! Compression deployed: compressed updates and models over gRPC equal to
//! simulation, random-k under secure aggregation, and adaptive codecs.

use crate::util::procs::{HEART_SITES, Proc, coordinator, free_port, participant, wait_until};
use crate::util::status::poll;
use crate::util::{self, Scratch};
use crate::{
    LIMIT, heart_text, heart_with_slow_va, http_get, plan_with, run_federation, simulated_model,
};

/// Compressed updates over gRPC: the task names the codec, the participant
/// sends its encoding, the coordinator decodes it: the model equals the
/// simulation's bit for bit, traffic is per site and round in the report and
/// per site and codec at the metrics endpoint.
#[test]
fn compressed_updates_over_grpc_equal_simulation_bit_for_bit() {
    if util::skip_e2e("compressed_updates_over_grpc_equal_simulation_bit_for_bit") {
        return;
    }
    let s = Scratch::new("deploy-compress");
    let plan = plan_with(&s, "compress", "[compression]\nupload = \"topk:0.3+q8\"\n");
    let expected = simulated_model(&s, &plan, "sim.model");
    let metrics = format!("127.0.0.1:{}", free_port());
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &s.path("c.sqlite"),
        0,
        &[
            "--metrics",
            &metrics,
            "--model-out",
            "dep.model",
            "--report",
            "dep.json",
        ],
    );
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    // The metrics endpoint while the run goes on.
    let mut scraped = String::new();
    wait_until(
        LIMIT,
        "update bytes per site at the metrics endpoint",
        || {
            if std::net::TcpStream::connect(&metrics).is_err() {
                return false;
            }
            scraped = http_get(&metrics, "/metrics");
            scraped.contains("tessera_update_bytes_total{site=\"va\"")
        },
    );
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
        assert!(p.log().contains("done: 15 updates accepted"), "{}", p.log());
    }
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    assert_eq!(util::model(&s.path("dep.model")), expected);
    let report = s.json("dep.json");
    let rounds = report["rounds"].as_array().unwrap();
    for r in rounds {
        let traffic = r["traffic"].as_object().unwrap();
        assert_eq!(traffic.len(), 4, "{r}");
        for (site, t) in traffic {
            assert_eq!(t["codec"], "topk:0.3+q8", "{site}: {t}");
            let (update, up) = (t["update"].as_u64().unwrap(), t["up"].as_u64().unwrap());
            assert!(update > 0 && update < up, "{site}: {t}");
            assert!(t["down"].as_u64().unwrap() > 0, "{site}: {t}");
        }
        let up: u64 = traffic.values().map(|t| t["up"].as_u64().unwrap()).sum();
        assert_eq!(r["bytes_up"].as_u64().unwrap(), up);
    }
    assert!(
        scraped.contains("tessera_update_bytes_total{site=\"va\",codec=\"topk:0.3+q8\"}"),
        "{scraped}"
    );
    assert!(
        scraped.contains("tessera_participant_bytes_sent_total{site=\"va\"}"),
        "{scraped}"
    );
}

/// Random-k under secure aggregation over gRPC: every participant masks the
/// round's shared coordinates; the model equals the simulation's.
#[test]
fn random_k_under_secure_aggregation_over_grpc_equals_simulation() {
    if util::skip_e2e("random_k_under_secure_aggregation_over_grpc_equals_simulation") {
        return;
    }
    let s = Scratch::new("deploy-compress-secagg");
    let plan = plan_with(
        &s,
        "secure-randk",
        "[secure_aggregation]\nenabled = true\n\n[compression]\nupload = \"randk:0.5\"\n",
    );
    let expected = simulated_model(&s, &plan, "sim.model");
    let (mut coordinator, mut participants) =
        run_federation(&s, &plan, "secure.sqlite", "dep.model");
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert_eq!(util::model(&s.path("dep.model")), expected);
}

/// Adaptive compression in deployment: the first task, with no measurement
/// yet, asks for the ladder's first codec; once a site's upload has been
/// timed, a target no link can meet gets the ladder's most compressive one.
#[test]
fn adaptive_codecs_follow_measured_uploads() {
    if util::skip_e2e("adaptive_codecs_follow_measured_uploads") {
        return;
    }
    let s = Scratch::new("deploy-adaptive");
    let text = heart_text(&s, 3);
    let plan = s.write(
        "adaptive.toml",
        &format!(
            "{text}\n[compression.adaptive]\ntarget_round_seconds = 1e-9\nladder = [\"none\", \"q8\", \"topk:0.5+q4\"]\n"
        ),
    );
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &s.path("c.sqlite"),
        0,
        &["--report", "dep.json"],
    );
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    let report = s.json("dep.json");
    let rounds = report["rounds"].as_array().unwrap();
    let codecs = |r: &serde_json::Value| -> Vec<String> {
        r["traffic"]
            .as_object()
            .unwrap()
            .values()
            .map(|t| t["codec"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(codecs(&rounds[0]).iter().all(|c| c == "none"), "{rounds:?}");
    assert!(
        codecs(&rounds[2]).iter().all(|c| c == "topk:0.5+q4"),
        "{rounds:?}"
    );
}

/// Compressed models over gRPC: after the first task, each model reaches a
/// participant as the encoded change from the one it holds (or not at all
/// when it holds it already); the run equals the simulation bit for bit,
/// also across a coordinator killed with SIGKILL and restarted (it rebuilds
/// the model the participants hold from the stored rounds).
#[test]
fn compressed_models_over_grpc_equal_simulation_across_a_coordinator_restart() {
    if util::skip_e2e("compressed_models_over_grpc_equal_simulation_across_a_coordinator_restart") {
        return;
    }
    let s = Scratch::new("deploy-compress-down");
    let plan = plan_with(
        &s,
        "down",
        "[compression]\nupload = \"q8\"\ndownload = \"q4\"\n",
    );
    let expected = simulated_model(&s, &plan, "sim.model");
    let db = s.path("c.sqlite");
    let (mut first, url) = coordinator(&s.dir, &plan, &db, 0, &[]);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut participants = heart_with_slow_va(&s, &url, "0.5");
    // Mid-round in round 4 or one of the next six: VA's pause holds a round
    // open about 0.5 s, which one `tessera status` under load can miss.
    wait_until(LIMIT, "a round from 4 to 10 open", || {
        poll(&db, |s| (4..=10).map(|r| s.pending_updates_of(r)).sum()) >= 1
    });
    first.kill_9();
    let (mut second, _) = coordinator(
        &s.dir,
        &plan,
        &db,
        port,
        &["--model-out", "dep.model", "--report", "dep.json"],
    );
    assert!(second.wait(LIMIT).success(), "{}", second.log());
    assert!(second.log().contains("resumed"), "{}", second.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert_eq!(util::model(&s.path("dep.model")), expected);
    let report = s.json("dep.json");
    let rounds = report["rounds"].as_array().unwrap();
    let down = |r: usize, site: &str| rounds[r]["traffic"][site]["down"].as_u64().unwrap();
    // After the restart, models still go down as changes: less than the
    // whole initial model that round 1 sent.
    for site in ["cleveland", "hungarian", "switzerland", "va"] {
        assert!(down(10, site) < down(0, site), "{site}: {rounds:?}");
    }
}

/// A feature flag: the upload codec is on for a cohort of two sites only.
/// The cohort's updates arrive compressed, the other sites' whole, and the
/// deployed model equals the simulation of the same plan bit for bit.
#[test]
fn a_feature_flag_compresses_the_cohort_only_and_equals_simulation() {
    if util::skip_e2e("a_feature_flag_compresses_the_cohort_only_and_equals_simulation") {
        return;
    }
    let s = Scratch::new("deploy-feature-flag");
    let plan = plan_with(
        &s,
        "flagged",
        "[compression]\nupload = \"topk:0.3+q8\"\n\n[[features]]\nname = \"compression.upload\"\n\
         sites = [\"cleveland\", \"hungarian\"]\n",
    );
    let (sim, expected) = s.simulate(&plan, "sim.model");
    let (mut coordinator, mut participants) = run_federation(&s, &plan, "c.sqlite", "dep.model");
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    assert_eq!(util::model(&s.path("dep.model")), expected);
    for (name, report) in [("deployed", s.json("dep.model.json")), ("simulated", sim)] {
        for r in report["rounds"].as_array().unwrap() {
            let traffic = r["traffic"].as_object().unwrap();
            assert_eq!(traffic.len(), 4, "{name}: {r}");
            for (site, t) in traffic {
                let cohort = site == "cleveland" || site == "hungarian";
                let codec = t["codec"].as_str().unwrap_or("none");
                assert_eq!(
                    codec == "topk:0.3+q8",
                    cohort,
                    "{name}: {site}'s codec {codec}: {t}"
                );
            }
        }
    }
}
