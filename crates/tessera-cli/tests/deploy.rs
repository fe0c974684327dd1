//! Deployment end to end with real processes on 127.0.0.1: the same model as
//! simulation bit for bit, a coordinator killed with SIGKILL mid-round and
//! resumed, a participant killed mid-round, malformed updates rejected.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::time::Duration;

use util::Scratch;
use util::procs::{
    HEART_SITES, Proc, coordinator, examples, free_port, participant, participant_with, query_i64,
    wait_until,
};

const LIMIT: Duration = Duration::from_secs(180);

/// A plain HTTP GET, the body.
fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A participant's greeting as `site`, with every capability of this build.
fn hello(site: &str) -> tessera_proto::pb::Hello {
    tessera_proto::pb::Hello {
        major: tessera_proto::MAJOR,
        minor: tessera_proto::MINOR,
        capabilities: tessera_proto::CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect(),
        site: site.into(),
    }
}

/// The bundled plan under another strategy, written to the scratch folder.
fn plan(s: &Scratch, strategy: &str, federation_extra: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(examples().join("fed-heart-disease.toml")).unwrap();
    let text = text.replace(
        "strategy = \"fedavg\"",
        &format!("strategy = \"{strategy}\"\n{federation_extra}"),
    );
    let text = text.replace("\"../data/", &format!("\"{}/data/", util::root().display()));
    s.write(&format!("{strategy}.toml"), &text)
}

/// The bundled FedAvg plan's text (data paths made absolute) with `rounds`
/// rounds.
fn heart_text(s: &Scratch, rounds: u32) -> String {
    std::fs::read_to_string(plan(s, "fedavg", ""))
        .unwrap()
        .replace("rounds = 15", &format!("rounds = {rounds}"))
}

/// A coordinator's outputs to compare with its simulation: the model and
/// the report.
const OUTPUTS: &[&str] = &["--model-out", "dep.model", "--report", "dep.json"];

fn simulated_model(s: &Scratch, plan: &std::path::Path, name: &str) -> Vec<u8> {
    s.simulate(plan, name).1
}

fn run_federation(s: &Scratch, plan: &std::path::Path, db: &str, model: &str) -> (Proc, Vec<Proc>) {
    let (coordinator, url) = coordinator(
        &s.dir,
        plan,
        &s.path(db),
        0,
        &["--model-out", model, "--report", &format!("{model}.json")],
    );
    let participants = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    (coordinator, participants)
}

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

#[test]
fn coordinator_killed_mid_round_resumes_with_nothing_lost_or_doubled() {
    if util::skip_e2e("coordinator_killed_mid_round_resumes_with_nothing_lost_or_doubled") {
        return;
    }
    let s = Scratch::new("deploy-kill-coordinator");
    let plan = plan(&s, "fedavg", "");
    let expected = simulated_model(&s, &plan, "sim.model");
    let db = s.path("c.sqlite");
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let (mut first, url) = coordinator(&s.dir, &plan, &db, 0, &["--metrics", &metrics]);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| {
            // VA is slow, so each round sits open with three updates accepted.
            let extra: &[&str] = if *site == "va" {
                &["--pause-before-update", "1.5"]
            } else {
                &[]
            };
            participant(&s.dir, &url, site, extra)
        })
        .collect();
    wait_until(LIMIT, "round 3 with three accepted updates", || {
        query_i64(&db, "SELECT COUNT(*) FROM updates WHERE round = 3") == 3
    });
    // Operations view of the round in progress, from the database and the metrics endpoint.
    let status = s.run(&["status", "--db", db.to_str().unwrap()]).ok();
    assert!(
        status.contains("round 3 open: 3 of 4 updates accepted"),
        "{status}"
    );
    let runs = s.run(&["runs", "--db", db.to_str().unwrap()]).ok();
    assert!(runs.contains("running") && runs.contains("2/15"), "{runs}");
    let scraped = http_get(&metrics, "/metrics");
    assert!(
        scraped.contains("tessera_updates_accepted_total 11"),
        "{scraped}"
    );
    assert!(
        scraped.contains("tessera_participants_connected 4"),
        "{scraped}"
    );
    assert!(
        scraped.contains("tessera_rounds_closed_total{status=\"completed\"} 2"),
        "{scraped}"
    );
    assert!(
        scraped.contains("tessera_round_duration_seconds_bucket"),
        "{scraped}"
    );
    first.kill_9();
    // The accepted updates of the open round are in the database.
    assert_eq!(
        query_i64(&db, "SELECT COUNT(*) FROM updates WHERE round = 3"),
        3
    );
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
    assert_eq!(
        std::fs::read(s.path("dep.model")).unwrap(),
        expected,
        "nothing lost, nothing doubled"
    );
    // Exactly one accepted update per site and round in the audit log.
    let duplicates = query_i64(
        &db,
        "SELECT COUNT(*) FROM (SELECT site, detail, COUNT(*) AS n FROM audit
         WHERE action = 'update' AND outcome = 'accepted' GROUP BY site, detail HAVING n > 1)",
    );
    assert_eq!(duplicates, 0);
    assert_eq!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM audit WHERE action = 'update' AND outcome = 'accepted'"
        ),
        60
    );
}

#[test]
fn a_participant_killed_mid_round_the_round_completes_on_quorum_and_it_rejoins() {
    if util::skip_e2e("a_participant_killed_mid_round_the_round_completes_on_quorum_and_it_rejoins")
    {
        return;
    }
    let s = Scratch::new("deploy-kill-participant");
    let plan = plan(&s, "fedavg", "quorum = 3");
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &db,
        0,
        &["--liveness", "1.5", "--report", "dep.json"],
    );
    let mut participants: Vec<Proc> = HEART_SITES[..3]
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    let mut va = participant(&s.dir, &url, "va", &["--pause-before-update", "3"]);
    wait_until(LIMIT, "round 2 with three accepted updates", || {
        query_i64(&db, "SELECT COUNT(*) FROM updates WHERE round = 2") == 3
    });
    va.kill_9();
    // The round goes on without VA once it has been silent for the liveness period.
    wait_until(LIMIT, "round 2 closed", || {
        query_i64(&db, "SELECT COUNT(*) FROM rounds WHERE round = 2") == 1
    });
    let mut va = participant(&s.dir, &url, "va", &[]);
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    assert!(va.wait(LIMIT).success(), "{}", va.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    let report = s.json("dep.json");
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 15);
    assert_eq!(rounds[1]["accepted"], 3, "{}", rounds[1]);
    assert_eq!(rounds[1]["dropped"], 1, "{}", rounds[1]);
    assert_eq!(rounds[1]["status"], "completed");
    assert_eq!(rounds[14]["accepted"], 4, "VA rejoined: {}", rounds[14]);
    assert!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM audit WHERE action = 'liveness' AND site = 'va'"
        ) >= 1
    );
}

/// Four synthetic sites, site3's rows 1e30 times too large (its loss
/// overflows): its local training fails, it withdraws from the run with the
/// reason, the round closes on the other sites at once instead of waiting
/// out the liveness period (60 s here), and the run goes on without it.
fn a_failing_site_withdraws(name: &str, tables: &str) {
    let s = Scratch::new(name);
    let (plan, data) = util::synthetic(&s, 4, 4, "kind = \"flat\"");
    // All four agree the data and start round 1 together.
    let text = std::fs::read_to_string(&plan).unwrap();
    let text = text.replace("rounds = 4", "rounds = 4\nmin_participants = 4");
    let plan = s.write("plan.toml", &format!("{text}\n{tables}"));
    let text = std::fs::read_to_string(&data).unwrap();
    let mut lines = text.lines();
    let mut bad = format!("{}\n", lines.next().unwrap());
    for line in lines {
        let mut fields: Vec<String> = line.split(',').map(str::to_string).collect();
        let target = fields.len() - 1;
        if fields[0] == "site3" {
            for value in &mut fields[1..target] {
                value.push_str("e30");
            }
        }
        bad.push_str(&fields.join(","));
        bad.push('\n');
    }
    let bad = s.write("bad.csv", &bad);
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &db,
        0,
        &["--liveness", "60", "--report", "dep.json"],
    );
    let mut good: Vec<Proc> = ["site0", "site1", "site2"]
        .iter()
        .map(|site| participant_with(&s.dir, &url, site, &data, &[]))
        .collect();
    let mut failing = participant_with(&s.dir, &url, "site3", &bad, &[]);
    assert!(!failing.wait(LIMIT).success(), "{}", failing.log());
    let log = failing.log();
    assert!(
        log.contains("diverged") && log.contains("withdrew"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut good {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    // The coordinator's audit log keeps who left, when and why.
    assert_eq!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM audit WHERE site = 'site3' AND action = 'withdraw'
             AND outcome = 'left the run' AND detail LIKE 'round 1: local training failed:%diverged%'"
        ),
        1
    );
    let report = s.json("dep.json");
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 4);
    assert!(
        rounds
            .iter()
            .all(|r| r["status"] == "completed" && r["accepted"] == 3),
        "{report}"
    );
    assert_eq!(rounds[0]["dropped"], 1, "{}", rounds[0]);
    let first = rounds[0]["seconds"].as_f64().unwrap();
    eprintln!("{name}: round 1 closed in {first:.2} s without the site that withdrew");
    assert!(
        first < 30.0,
        "round 1 waited {first} s for a site that had left"
    );
}

#[test]
fn a_site_whose_training_fails_withdraws_and_the_rounds_do_not_wait_for_it() {
    if util::skip_e2e("a_site_whose_training_fails_withdraws_and_the_rounds_do_not_wait_for_it") {
        return;
    }
    a_failing_site_withdraws("deploy-withdraw", "");
}

/// Under secure aggregation the key stage stops waiting for it too.
#[test]
fn a_site_whose_training_fails_withdraws_from_a_secure_round() {
    if util::skip_e2e("a_site_whose_training_fails_withdraws_from_a_secure_round") {
        return;
    }
    a_failing_site_withdraws(
        "deploy-withdraw-secure",
        "[secure_aggregation]\nenabled = true\n",
    );
}

/// A participant that joins as VA, takes part in the agreement honestly, then
/// sends malformed updates: non-finite values, a wrong shape, chunks out of
/// order, a stream without a header. Each is refused with its reason, the
/// rounds go on with the other sites, and the audit log says why.
#[test]
fn malformed_updates_are_rejected_and_the_rounds_go_on() {
    if util::skip_e2e("malformed_updates_are_rejected_and_the_rounds_go_on") {
        return;
    }
    use tessera_proto::pb::federation_client::FederationClient;
    use tessera_proto::pb::{self, agree_reply, update_part};

    let s = Scratch::new("deploy-malformed");
    // This test speaks gRPC itself and sends clear evaluations.
    let plan = plan_with(&s, "malformed", "[privacy]\nsite_metrics = \"clear\"\n");
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &db,
        0,
        &["--liveness", "2", "--report", "dep.json"],
    );
    let mut honest: Vec<Proc> = HEART_SITES[..3]
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let replies: Vec<String> = runtime.block_on(async {
        let mut client = FederationClient::connect(url.clone()).await.unwrap();
        let welcome = client.join(hello("va")).await.unwrap().into_inner();
        let plan = tessera_engine::Plan::from_toml(&welcome.plan_toml, "plan").unwrap();
        let mut local = tessera_data::read_local_site(
            &plan.data,
            "va",
            Some(&util::procs::heart_file("va")),
            &examples(),
            &tessera_data::Filesystem,
        )
        .unwrap();
        let offer = pb::agree_request::Offer::Kinds(tessera_proto::convert::kinds_offer_to_pb(
            &local.kinds_offer(),
        ));
        let reply = client
            .agree(pb::AgreeRequest {
                site: "va".into(),
                offer: Some(offer),
            })
            .await
            .unwrap()
            .into_inner();
        let Some(agree_reply::Result::Kinds(kinds)) = reply.result else {
            panic!("kinds")
        };
        let kinds = tessera_proto::convert::kinds_from_pb(kinds).unwrap();
        let levels = local.levels_offer(&plan.data, &kinds).unwrap();
        let offer =
            pb::agree_request::Offer::Levels(tessera_proto::convert::levels_offer_to_pb(&levels));
        client
            .agree(pb::AgreeRequest {
                site: "va".into(),
                offer: Some(offer),
            })
            .await
            .unwrap();

        let mut replies = Vec::new();
        while replies.len() < 6 {
            let attempt = replies.len();
            // Wait for a fit task, read it whole.
            let header = next_task_header(&mut client, "va").await;
            if header.kind() != pb::TaskKind::Fit {
                // Evaluations it answers (with no rows), so that rounds move on.
                client
                    .submit_evaluation(pb::EvaluationReport {
                        site: "va".into(),
                        round: header.round,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                continue;
            }
            let n_values: u64 = header
                .layout
                .iter()
                .map(|t| t.shape.iter().product::<u64>())
                .sum();
            let good_header = pb::UpdateHeader {
                site: "va".into(),
                round: header.round,
                n_examples: 85,
                has_control: false,
                n_steps: 100,
                mean_train_loss: 0.5,
                layout: header.layout.clone(),
                codec: String::new(),
            };
            let chunk = |tensor: u32, offset: u64, values: &[f32]| pb::UpdatePart {
                part: Some(update_part::Part::Chunk(pb::TensorChunk {
                    set: 0,
                    tensor,
                    offset,
                    values: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                })),
            };
            let head = |h: pb::UpdateHeader| pb::UpdatePart {
                part: Some(update_part::Part::Header(h)),
            };
            let compressed = |bytes: Vec<u8>| pb::UpdatePart {
                part: Some(update_part::Part::Compressed(bytes)),
            };
            let parts: Vec<pb::UpdatePart> = match attempt {
                // Non-finite values in a well-formed update.
                0 => {
                    let mut values =
                        vec![0.0f32; header.layout[0].shape.iter().product::<u64>() as usize];
                    values[0] = f32::NAN;
                    vec![head(good_header), chunk(0, 0, &values), chunk(1, 0, &[0.0])]
                }
                // A layout that is not the model's.
                1 => {
                    let mut wrong = good_header;
                    wrong.layout[0].shape = vec![5, 1];
                    vec![head(wrong), chunk(0, 0, &[0.0; 5]), chunk(1, 0, &[0.0])]
                }
                // Chunks out of order.
                2 => vec![head(good_header), chunk(1, 0, &[0.0])],
                // No header at all.
                3 => vec![chunk(0, 0, &vec![0.0; n_values as usize])],
                // A codec the task did not ask for.
                4 => {
                    let mut other = good_header;
                    other.codec = "q8".into();
                    vec![head(other), compressed(vec![0x02, 0x0e])]
                }
                // Compressed pieces in an update that says it is not compressed.
                _ => vec![head(good_header), compressed(vec![0x00, 0x0e])],
            };
            let reply = client.submit_update(tokio_stream::iter(parts)).await;
            replies.push(match reply {
                Ok(r) => format!("refused: {}", r.into_inner().reason),
                Err(status) => format!("error: {}", status.message()),
            });
        }
        // Withdrawals: too long a reason, a site that never joined, a round
        // that is not open. None changes a round.
        let withdraw = |site: &str, round: u32, reason: String| pb::WithdrawRequest {
            site: site.into(),
            round,
            reason,
            leaving: false,
        };
        for request in [
            withdraw("va", 1, "x".repeat(1001)),
            withdraw("nowhere", 1, String::new()),
            withdraw("va", 999, "not open".into()),
        ] {
            replies.push(match client.withdraw(request).await {
                Ok(r) => format!("withdrawn: {}", r.into_inner().withdrawn),
                Err(status) => format!("error: {}", status.message()),
            });
        }
        replies
    });
    // The rogue leaves; the liveness check drops it from later rounds.
    drop(runtime);
    assert!(replies[0].contains("non-finite"), "{replies:?}");
    assert!(replies[1].contains("not the model's"), "{replies:?}");
    assert!(replies[2].contains("expected tensor 0"), "{replies:?}");
    assert!(replies[3].contains("starts with its header"), "{replies:?}");
    assert!(
        replies[4].contains("update encoded with 'q8', but round"),
        "{replies:?}"
    );
    assert!(
        replies[5].contains("compressed parts in an uncompressed update"),
        "{replies:?}"
    );
    assert_eq!(
        replies[6..],
        [
            "error: a withdrawal's reason is at most 1000 bytes, got 1001",
            "error: site 'nowhere' has not joined",
            "withdrawn: false",
        ],
        "{replies:?}"
    );
    assert_eq!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM audit WHERE site = 'va' AND action = 'withdraw'
             AND outcome = 'not waited for' AND detail = 'round 999: not open'"
        ),
        1
    );
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut honest {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    let report = s.json("dep.json");
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 15);
    assert!(
        rounds.iter().all(|r| r["status"] == "completed"),
        "{rounds:?}"
    );
    assert!(rounds.iter().all(|r| r["accepted"] == 3), "{rounds:?}");
    let rejected = query_i64(
        &db,
        "SELECT COUNT(*) FROM audit WHERE site = 'va' AND outcome = 'rejected'",
    );
    assert!(
        rejected >= 3,
        "rejections recorded with their reason: {rejected}"
    );
}

/// Mutual TLS from the federation's own CA: a certificate from another CA is
/// refused at the handshake, a revoked one too, a site cannot speak for
/// another, and valid certificates run the whole plan; a site refuses a
/// coordinator whose certificate was revoked.
#[test]
fn mutual_tls_refuses_unknown_revoked_and_impersonating_certificates() {
    if util::skip_e2e("mutual_tls_refuses_unknown_revoked_and_impersonating_certificates") {
        return;
    }
    let s = Scratch::new("deploy-tls");
    let ca = |args: &[&str]| {
        let mut all = vec!["ca", "--dir"];
        all.extend_from_slice(args);
        s.run(&all).ok();
    };
    ca(&["ca", "init"]);
    for site in HEART_SITES {
        ca(&["ca", "issue", "--site", site]);
    }
    ca(&["ca", "issue", "--coordinator", "--host", "127.0.0.1"]);
    ca(&["other", "init"]);
    ca(&["other", "issue", "--site", "va"]);
    // A certificate of another CA, with the federation's CA to trust the coordinator.
    std::fs::create_dir_all(s.path("unknown")).unwrap();
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(
            s.path("other/sites/va").join(file),
            s.path("unknown").join(file),
        )
        .unwrap();
    }
    std::fs::copy(s.path("ca/ca.pem"), s.path("unknown/ca.pem")).unwrap();
    // VA's first certificate, kept aside, is then revoked; VA gets a new one.
    std::fs::create_dir_all(s.path("revoked")).unwrap();
    for file in ["cert.pem", "key.pem", "ca.pem"] {
        std::fs::copy(
            s.path("ca/sites/va").join(file),
            s.path("revoked").join(file),
        )
        .unwrap();
    }
    ca(&["ca", "revoke", "va"]);
    ca(&["ca", "issue", "--site", "va"]);

    let plan = plan(&s, "fedavg", "");
    let expected = simulated_model(&s, &plan, "sim.model");
    let db = s.path("c.sqlite");
    let coordinator_tls = s.path("ca/coordinator");
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &db,
        0,
        &[
            "--tls",
            coordinator_tls.to_str().unwrap(),
            "--model-out",
            "dep.model",
        ],
    );
    let url = url.replace("http://", "https://");
    let refused = |name: &str, site: &str, dir: &std::path::Path| {
        let mut p = participant(
            &s.dir,
            &url,
            site,
            &["--tls", dir.to_str().unwrap(), "--give-up-after", "2"],
        );
        let status = p.wait(LIMIT);
        assert!(!status.success(), "{name} must be refused:\n{}", p.log());
        p.log()
    };
    refused("unknown CA", "va", &s.path("unknown"));
    refused("revoked", "va", &s.path("revoked"));
    let log = refused("impersonation", "va", &s.path("ca/sites/cleveland"));
    assert!(log.contains("does not name site 'va'"), "{log}");
    let handshakes = query_i64(
        &db,
        "SELECT COUNT(*) FROM audit WHERE action = 'connect' AND outcome = 'rejected'",
    );
    assert!(
        handshakes >= 2,
        "refused handshakes are audited: {handshakes}"
    );
    let impersonations = query_i64(
        &db,
        "SELECT COUNT(*) FROM audit WHERE action = 'identity' AND site = 'va'",
    );
    assert!(impersonations >= 1);

    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| {
            let dir = s.path(&format!("ca/sites/{site}"));
            participant(&s.dir, &url, site, &["--tls", dir.to_str().unwrap()])
        })
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut sites {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert_eq!(std::fs::read(s.path("dep.model")).unwrap(), expected);

    // The coordinator's certificate is revoked: the list reaches every
    // site's folder, and a site refuses a coordinator that still serves it.
    ca(&["ca", "revoke", "coordinator"]);
    let list = std::fs::read(s.path("ca/crl.pem")).unwrap();
    assert_eq!(std::fs::read(s.path("ca/sites/va/crl.pem")).unwrap(), list);
    let (mut revoked, revoked_url) = util::procs::coordinator(
        &s.dir,
        &plan,
        &s.path("c2.sqlite"),
        0,
        &["--tls", coordinator_tls.to_str().unwrap()],
    );
    let va = s.path("ca/sites/va");
    let mut p = participant(
        &s.dir,
        &revoked_url.replace("http://", "https://"),
        "va",
        &["--tls", va.to_str().unwrap(), "--give-up-after", "2"],
    );
    assert!(
        !p.wait(LIMIT).success(),
        "a revoked coordinator is refused:\n{}",
        p.log()
    );
    assert!(
        p.log().contains("Revoked"),
        "the site says why:\n{}",
        p.log()
    );
    revoked.kill_9();
}

/// A federation CA in `ca/` with the four sites' certificates and the
/// coordinator's (for 127.0.0.1); returns `ca` to run `tessera ca --dir ca ...`.
fn heart_ca(s: &Scratch) -> impl Fn(&[&str]) + '_ {
    let ca = |args: &[&str]| {
        let mut all = vec!["ca", "--dir", "ca"];
        all.extend_from_slice(args);
        s.run(&all).ok();
    };
    ca(&["init"]);
    for site in HEART_SITES {
        ca(&["issue", "--site", site]);
    }
    ca(&["issue", "--coordinator", "--host", "127.0.0.1"]);
    ca
}

/// A federation under mutual TLS: a CA in `ca/` with the four sites and the
/// coordinator, the coordinator (with `coordinator_extra`), and the four
/// sites, each pausing 0.3 s before its update; returns them once round 2
/// has closed, with `ca` to run `tessera ca --dir ca ...`.
fn tls_run_at_round_2(
    s: &Scratch,
    coordinator_extra: &[&str],
) -> (Proc, Vec<Proc>, std::path::PathBuf, impl Fn(&[&str])) {
    let ca = heart_ca(s);
    let plan = plan(s, "fedavg", "quorum = 3");
    let db = s.path("c.sqlite");
    let coordinator_tls = s.path("ca/coordinator");
    let mut args = vec!["--tls", coordinator_tls.to_str().unwrap()];
    args.extend_from_slice(coordinator_extra);
    let (coordinator, url) = coordinator(&s.dir, &plan, &db, 0, &args);
    let url = url.replace("http://", "https://");
    let sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| {
            let dir = s.path(&format!("ca/sites/{site}"));
            let tls = ["--tls", dir.to_str().unwrap()];
            participant(
                &s.dir,
                &url,
                site,
                &[&tls[..], &["--pause-before-update", "0.3"]].concat(),
            )
        })
        .collect();
    wait_until(LIMIT, "round 2 closed", || {
        query_i64(&db, "SELECT COUNT(*) FROM rounds WHERE round = 2") == 1
    });
    (coordinator, sites, db, ca)
}

/// A site's certificate revoked in the middle of a run: the coordinator
/// refuses the site's next call on the connection it already has open (the
/// handshake is long past), audits why, and the run completes on the others.
#[test]
fn a_site_revoked_mid_run_is_refused_on_its_open_connection() {
    if util::skip_e2e("a_site_revoked_mid_run_is_refused_on_its_open_connection") {
        return;
    }
    let s = Scratch::new("deploy-revoke-mid-run");
    let (mut coordinator, mut sites, db, ca) =
        tls_run_at_round_2(&s, &["--liveness", "1.5", "--report", "dep.json"]);
    ca(&["revoke", "va"]);
    let va = HEART_SITES.iter().position(|s| *s == "va").unwrap();
    assert!(
        !sites[va].wait(LIMIT).success(),
        "VA is refused:\n{}",
        sites[va].log()
    );
    assert!(
        sites[va].log().contains("Revoked"),
        "VA is told why:\n{}",
        sites[va].log()
    );
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for (i, p) in sites.iter_mut().enumerate() {
        if i != va {
            assert!(p.wait(LIMIT).success(), "{}", p.log());
        }
    }
    // Refused at a call, by name (a refused handshake is audited as 'connect').
    let refusals = query_i64(
        &db,
        "SELECT COUNT(*) FROM audit WHERE site = 'va' AND action IN ('identity', 'update') \
         AND outcome = 'rejected' AND detail LIKE '%Revoked%'",
    );
    assert!(refusals >= 1, "the refusal is audited: {refusals}");
    let report = s.json("dep.json");
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 15);
    assert_eq!(rounds[0]["accepted"], 4, "{}", rounds[0]);
    assert_eq!(rounds[14]["accepted"], 3, "{}", rounds[14]);
}

/// The coordinator's certificate revoked in the middle of a run: every site
/// checks it again at its next task and stops, saying why, instead of
/// sending more over the connection it opened before.
#[test]
fn sites_stop_working_for_a_coordinator_revoked_mid_run() {
    if util::skip_e2e("sites_stop_working_for_a_coordinator_revoked_mid_run") {
        return;
    }
    let s = Scratch::new("deploy-revoke-coordinator");
    let (mut coordinator, mut sites, db, ca) = tls_run_at_round_2(&s, &[]);
    ca(&["revoke", "coordinator"]);
    for p in &mut sites {
        assert!(
            !p.wait(LIMIT).success(),
            "{} must stop:\n{}",
            p.name,
            p.log()
        );
        let log = p.log();
        assert!(
            log.contains("the coordinator's certificate is no longer accepted")
                && log.contains("Revoked"),
            "{} says why:\n{log}",
            p.name
        );
    }
    let closed = query_i64(&db, "SELECT COUNT(*) FROM rounds");
    assert!(closed < 15, "the run did not go on: {closed} rounds");
    coordinator.kill_9();
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

/// The bundled plan with `[privacy]` (and other tables) appended.
fn plan_with(s: &Scratch, name: &str, tables: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(plan(s, "fedavg", "")).unwrap();
    s.write(&format!("{name}.toml"), &format!("{text}\n{tables}\n"))
}

#[test]
fn central_dp_in_deployment_records_every_release_and_refuses_past_the_budget() {
    if util::skip_e2e("central_dp_in_deployment_records_every_release_and_refuses_past_the_budget")
    {
        return;
    }
    let s = Scratch::new("deploy-dp");
    let dp = plan_with(
        &s,
        "dp",
        "[privacy]\nmode = \"central\"\nepsilon = 3.0\ndelta = 1e-5\nclip_norm = 0.05\n\n\
         [robust]\nnorm_bound = 10.0\n",
    );
    let (mut coordinator, mut participants) = run_federation(&s, &dp, "dp.sqlite", "dp.model");
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    let db = s.path("dp.sqlite");
    assert_eq!(query_i64(&db, "SELECT COUNT(*) FROM privacy_ledger"), 15);
    assert_no_key_in(&db);
    let ledger = s.run(&["privacy", "--db", db.to_str().unwrap()]).ok();
    println!("{ledger}");
    assert!(
        ledger.contains("central DP, 15 release(s), epsilon 2.99"),
        "{ledger}"
    );
    assert!(ledger.contains("of a budget of 3"), "{ledger}");
    // Each participant's own spend: under central DP, every site spent the run's.
    let report = s.json("dp.model.json");
    let epsilon = report["privacy"]["epsilon"].as_f64().unwrap();
    for site in HEART_SITES {
        assert_eq!(participant_epsilon(&ledger, site), format!("{epsilon:.4}"));
    }
    assert!(epsilon <= 3.0 && epsilon > 2.9, "{epsilon}");
    assert_eq!(report["privacy"]["ledger"].as_array().unwrap().len(), 15);
    assert_eq!(report["privacy"]["release"], true);
    // The ledger is append-only.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let refused = conn.execute("DELETE FROM privacy_ledger", []).unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");

    // A budget too small for the plan: the coordinator refuses before listening.
    let small = plan_with(
        &s,
        "small",
        "[privacy]\nmode = \"central\"\nnoise_multiplier = 5.0\nbudget = 1.0\n",
    );
    let run = s.run(&[
        "coordinator",
        "--plan",
        small.to_str().unwrap(),
        "--db",
        s.path("small.sqlite").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--insecure",
    ]);
    assert!(!run.output.status.success());
    let message = run.stderr();
    assert!(!message.contains("panicked"), "{message}");
    assert!(
        message.contains("error: run privacy budget exceeded: the plan's 15 remaining rounds"),
        "{message}"
    );
}

/// Each participant's epsilon in `tessera privacy`'s table (its second column).
fn participant_epsilon(ledger: &str, site: &str) -> String {
    ledger
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(site))
                .then(|| words.next().map(str::to_string))
                .flatten()
        })
        .unwrap_or_else(|| panic!("no line for {site} in\n{ledger}"))
}

/// Every value of every table of `db`, with its table and column.
fn every_value(db: &std::path::Path) -> Vec<(String, String, rusqlite::types::Value)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = Vec::new();
    for table in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let columns: Vec<String> = stmt.column_names().map(str::to_string).collect();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for (i, column) in columns.iter().enumerate() {
                out.push((table.clone(), column.clone(), row.get(i).unwrap()));
            }
        }
    }
    out
}

/// The database of a central DP run holds no key: no table or column named
/// for a secret, no 32-byte value, no text naming a secret; and the file,
/// its write-ahead log and shared memory are the owner's only.
fn assert_no_key_in(db: &std::path::Path) {
    use rusqlite::types::Value;
    use std::os::unix::fs::PermissionsExt;
    let values = every_value(db);
    assert!(values.len() > 100, "the scan reads the database");
    for (table, column, value) in &values {
        let names = format!("{table}.{column}").to_lowercase();
        assert!(
            !names.contains("secret") && !names.contains("key"),
            "{names}"
        );
        match value {
            Value::Blob(b) => assert_ne!(b.len(), 32, "a 32-byte blob in {names}"),
            Value::Text(t) => assert!(!t.to_lowercase().contains("secret"), "{names}: {t}"),
            _ => {}
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        if let Ok(meta) = std::fs::metadata(&path) {
            assert_eq!(
                meta.permissions().mode() & 0o777,
                0o600,
                "{}",
                std::path::Path::new(&path).display()
            );
        }
    }
}

/// The attack on a central DP database: with a round's noise key the
/// stored noised mean minus the key's noise is the mean of updates clipped
/// to `clip_norm`, so its norm is at most `clip_norm`; every other key
/// leaves noise of norm about sqrt(2 d) noise_std. Tries every 32-byte
/// window of every value in the database, and the simulation's key (from
/// the plan's seed), on every closed round; returns the rounds' noised
/// means' norms over the clipping norm, for the caller to check the noise
/// dominates.
fn try_to_denoise(db: &std::path::Path, seed: u64, clip_norm: f64) -> Vec<f64> {
    use rusqlite::types::Value;
    let conn = rusqlite::Connection::open(db).unwrap();
    let rounds: Vec<(u32, Vec<u8>, f64)> = conn
        .prepare(
            "SELECT a.round, a.mean_delta, l.noise_std FROM round_aggregates a
             JOIN privacy_ledger l ON l.run_id = a.run_id AND l.release = a.round ORDER BY a.round",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!rounds.is_empty());
    let mut candidates: Vec<[u8; 32]> = vec![tessera_sim::simulation_noise_key(seed)];
    for (_, _, value) in every_value(db) {
        let bytes = match value {
            Value::Blob(b) => b,
            Value::Text(t) => t.into_bytes(),
            Value::Integer(i) => i.to_le_bytes().to_vec(),
            _ => continue,
        };
        candidates.extend(bytes.windows(32).map(|w| <[u8; 32]>::try_from(w).unwrap()));
    }
    candidates.sort_unstable();
    candidates.dedup();
    let mut ratios = Vec::new();
    for (round, mean, noise_std) in &rounds {
        let mean = tessera_proto::decode_parameters(mean).unwrap();
        let values: Vec<f64> = mean.values().map(f64::from).collect();
        let norm = values.iter().map(|v| v * v).sum::<f64>().sqrt();
        ratios.push(norm / clip_norm);
        for key in &candidates {
            let mut noise = tessera_privacy::GaussianNoise::new(*key, u64::from(*round));
            let rest = values
                .iter()
                .map(|v| (v - noise_std * noise.standard_normal()).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                rest > clip_norm,
                "round {round}: a key from the database removes the noise ({rest} <= {clip_norm})"
            );
        }
    }
    println!(
        "tried {} candidate keys on {} rounds: none removes the noise",
        candidates.len(),
        rounds.len()
    );
    ratios
}

#[test]
fn central_dp_resumes_after_kill_9_with_no_key_in_the_database() {
    if util::skip_e2e("central_dp_resumes_after_kill_9_with_no_key_in_the_database") {
        return;
    }
    let s = Scratch::new("deploy-dp-kill");
    let dp = plan_with(
        &s,
        "dp",
        "[privacy]\nmode = \"central\"\nepsilon = 3.0\nclip_norm = 0.05\n",
    );
    let (simulated, simulated_model) = s.simulate(&dp, "sim.model");
    let db = s.path("dp.sqlite");
    let (mut first, url) = coordinator(&s.dir, &dp, &db, 0, &[]);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| {
            let extra: &[&str] = if *site == "va" {
                &["--pause-before-update", "1.5"]
            } else {
                &[]
            };
            participant(&s.dir, &url, site, extra)
        })
        .collect();
    wait_until(LIMIT, "round 3 with three accepted updates", || {
        query_i64(&db, "SELECT COUNT(*) FROM updates WHERE round = 3") == 3
    });
    first.kill_9();
    assert_eq!(query_i64(&db, "SELECT COUNT(*) FROM privacy_ledger"), 2);
    assert_no_key_in(&db);
    let (mut second, _) = coordinator(
        &s.dir,
        &dp,
        &db,
        port,
        &["--report", "dep.json", "--model-out", "dep.model"],
    );
    assert!(second.wait(LIMIT).success(), "{}", second.log());
    assert!(second.log().contains("resumed"), "{}", second.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert_eq!(query_i64(&db, "SELECT COUNT(*) FROM privacy_ledger"), 15);
    assert_no_key_in(&db);
    let mut ratios = try_to_denoise(&db, 42, 0.05);
    // A mean of updates clipped to C has norm at most C: every stored mean
    // is above it (its noise is there), and the noise dominates them (the
    // median; one round of 15 can fall near 3 by chance: the norm of the
    // noise is chi-distributed with few degrees of freedom).
    assert!(ratios.iter().all(|&r| r > 1.0), "{ratios:?}");
    ratios.sort_by(f64::total_cmp);
    assert!(ratios[ratios.len() / 2] > 3.0, "{ratios:?}");
    let report = s.json("dep.json");
    let epsilon = report["privacy"]["epsilon"].as_f64().unwrap();
    // The same spend as an uninterrupted run and as the simulation: 15
    // releases, none counted twice, at the same noise.
    assert!((epsilon - 2.9982).abs() < 1e-3, "{epsilon}");
    assert_eq!(
        report["privacy"]["epsilon"],
        simulated["privacy"]["epsilon"]
    );
    assert_eq!(report["privacy"]["ledger"], simulated["privacy"]["ledger"]);
    assert_eq!(report["rounds"].as_array().unwrap().len(), 15);
    let releases: Vec<u64> = report["privacy"]["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["release"].as_u64().unwrap())
        .collect();
    assert_eq!(releases, (1..=15).collect::<Vec<u64>>());
    assert_eq!(report["privacy"]["release"], true);
    assert_eq!(simulated["privacy"]["release"], false);
    // The noise is secret: the deployment's model is not the simulation's.
    let deployed = std::fs::read(s.path("dep.model")).unwrap();
    assert_ne!(deployed, simulated_model, "the noise derives from the seed");
    let (a, b) = (
        tessera_proto::decode_parameters(&deployed).unwrap(),
        tessera_proto::decode_parameters(&simulated_model).unwrap(),
    );
    let gap = a
        .values()
        .zip(b.values())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    println!("largest difference from the simulated model: {gap:e}");
    assert!(gap > 1e-4, "{gap}");
}

#[test]
fn local_dp_sgd_in_deployment_fills_the_ledger_per_participant() {
    if util::skip_e2e("local_dp_sgd_in_deployment_fills_the_ledger_per_participant") {
        return;
    }
    let s = Scratch::new("deploy-local-dp");
    let dp = plan_with(
        &s,
        "local",
        "[privacy]\nmode = \"local\"\nepsilon = 3.0\nclip_norm = 1.0\n",
    );
    let (mut coordinator, mut participants) =
        run_federation(&s, &dp, "local.sqlite", "local.model");
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    let db = s.path("local.sqlite");
    assert_eq!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM privacy_ledger WHERE kind = 'local'"
        ),
        60
    );
    assert_eq!(
        query_i64(
            &db,
            "SELECT COUNT(DISTINCT participant) FROM privacy_ledger"
        ),
        4
    );
    let ledger = s.run(&["privacy", "--db", db.to_str().unwrap()]).ok();
    println!("{ledger}");
    assert!(
        ledger.contains("local DP, 60 release(s), epsilon 2.99"),
        "{ledger}"
    );
    let report = s.json("local.model.json");
    assert_eq!(report["privacy"]["mode"], "local");
    let epsilon = report["privacy"]["epsilon"].as_f64().unwrap();
    assert!(epsilon <= 3.0 && epsilon > 2.99, "{epsilon}");
    // Each site calibrated its own noise to its own sampling rate: the
    // report names every multiplier, and `tessera privacy` every site's own
    // spend (each within the target; the run's is the largest).
    let multipliers = report["privacy"]["site_noise_multipliers"]
        .as_object()
        .unwrap();
    assert_eq!(multipliers.len(), 4, "{multipliers:?}");
    let mut distinct: Vec<String> = multipliers.values().map(|z| z.to_string()).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        4,
        "sites of different sizes: {multipliers:?}"
    );
    let mut largest = 0.0f64;
    for site in HEART_SITES {
        let own: f64 = participant_epsilon(&ledger, site).parse().unwrap();
        assert!(own <= 3.0 && own > 2.9, "{site}: {own}");
        largest = largest.max(own);
    }
    assert_eq!(format!("{largest:.4}"), format!("{epsilon:.4}"));
    assert_eq!(report["privacy"]["release"], true);
}

/// DP-SGD's randomness is the site's secret: with noise too small to move a
/// float (so what is left random is the Poisson sampling), two deployments
/// of the same plan and seed, and its simulation, give three different
/// models; if the batches came from the run seed, all three would be equal.
#[test]
fn local_dp_sgd_batches_cannot_be_recomputed_from_the_plan_and_seed() {
    if util::skip_e2e("local_dp_sgd_batches_cannot_be_recomputed_from_the_plan_and_seed") {
        return;
    }
    let s = Scratch::new("deploy-local-dp-secret");
    let dp = plan_with(
        &s,
        "local",
        "[privacy]\nmode = \"local\"\nnoise_multiplier = 1e-9\nclip_norm = 1.0\n",
    );
    let (simulated, simulated_model) = s.simulate(&dp, "sim.model");
    let mut models = vec![tessera_proto::decode_parameters(&simulated_model).unwrap()];
    let mut accuracies = vec![simulated["final"]["accuracy"].as_f64().unwrap()];
    for run in ["first", "second"] {
        let model = format!("{run}.model");
        let (mut coordinator, mut participants) =
            run_federation(&s, &dp, &format!("{run}.sqlite"), &model);
        assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
        for p in &mut participants {
            assert!(p.wait(LIMIT).success(), "{}", p.log());
            assert!(p.log().contains("done: 15 updates accepted"), "{}", p.log());
        }
        let report = s.json(&format!("{model}.json"));
        assert_eq!(
            report["privacy"]["epsilon"],
            simulated["privacy"]["epsilon"]
        );
        accuracies.push(report["final"]["accuracy"].as_f64().unwrap());
        models.push(
            tessera_proto::decode_parameters(&std::fs::read(s.path(&model)).unwrap()).unwrap(),
        );
    }
    let names = ["simulation", "first deployment", "second deployment"];
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let gap = models[i]
            .values()
            .zip(models[j].values())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        println!(
            "{} against {}: largest parameter difference {gap:e}, accuracy {} against {}",
            names[i], names[j], accuracies[i], accuracies[j]
        );
        assert!(
            gap > 1e-5,
            "{} and {} drew the same batches",
            names[i],
            names[j]
        );
    }
}

#[test]
fn secure_aggregation_over_grpc_equals_simulation_bit_for_bit() {
    if util::skip_e2e("secure_aggregation_over_grpc_equals_simulation_bit_for_bit") {
        return;
    }
    let s = Scratch::new("deploy-secagg");
    let plan = plan_with(&s, "secure", "[secure_aggregation]\nenabled = true\n");
    let (simulated, expected) = s.simulate(&plan, "sim.model");
    let (mut coordinator, mut participants) =
        run_federation(&s, &plan, "secure.sqlite", "dep.model");
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
        assert!(p.log().contains("done: 15 updates accepted"), "{}", p.log());
    }
    // The coordinator saw only sums, and the sums are exact.
    assert_eq!(std::fs::read(s.path("dep.model")).unwrap(), expected);
    let db = s.path("secure.sqlite");
    assert_eq!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM audit WHERE action = 'secure-aggregation' AND outcome = 'completed'"
        ),
        15
    );
    assert_eq!(query_i64(&db, "SELECT COUNT(*) FROM updates"), 0);
    // Example counts, train losses and step counts travel inside the masked
    // vectors: each round's train loss is the simulation's, and it is the
    // mean of 4 losses in 2^-16 fixed point (decoded from the masked sum of
    // their limbs), so 4 x 2^16 times it is a whole number.
    let report = s.json("dep.model.json");
    let rounds = report["rounds"].as_array().unwrap();
    let simulated = simulated["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 15);
    for (r, sim) in rounds.iter().zip(simulated) {
        let loss = r["train_loss"].as_f64().unwrap();
        assert_eq!(r["train_loss"], sim["train_loss"], "round {}", r["round"]);
        assert!(loss > 0.0, "round {}: {loss}", r["round"]);
        let scaled = loss * 4.0 * 65_536.0;
        assert_eq!(scaled, scaled.trunc(), "round {}: {loss}", r["round"]);
    }
    assert_eq!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM round_aggregates WHERE n_updates = 4 AND n_examples > 0
             AND mean_train_loss * 262144.0 = CAST(mean_train_loss * 262144.0 AS INTEGER)"
        ),
        15
    );
    // Nothing per site anywhere in the coordinator's records: no update
    // rows (above), and no loss or example count in the audit log.
    assert_eq!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM audit WHERE detail LIKE '%loss%' OR detail LIKE '%example%'"
        ),
        0
    );
}

/// Secure aggregation under mutual TLS: every key advertisement and every
/// survivor's view is signed with the site's certificate key and checked by
/// the others against the federation CA (the coordinator relays the
/// certificates); the run still equals its simulation bit for bit. Sites
/// that pinned the plan (`--expect-plan`) refuse a coordinator that turns
/// secure aggregation off, saying why, and send it nothing.
#[test]
fn secure_aggregation_under_mutual_tls_signs_keys_and_views_and_sites_refuse_a_weakened_plan() {
    if util::skip_e2e(
        "secure_aggregation_under_mutual_tls_signs_keys_and_views_and_sites_refuse_a_weakened_plan",
    ) {
        return;
    }
    let s = Scratch::new("deploy-secagg-tls");
    let _ca = heart_ca(&s);
    let text = heart_text(&s, 4);
    let secure = s.write(
        "secure-tls.toml",
        &format!("{text}\n[secure_aggregation]\nenabled = true\n"),
    );
    let weak = s.write("weak.toml", &text);
    let expected = simulated_model(&s, &secure, "sim.model");
    let run = |plan: &std::path::Path, db: &str, give_up: &str| {
        let coordinator_tls = s.path("ca/coordinator");
        let (coordinator, url) = coordinator(
            &s.dir,
            plan,
            &s.path(db),
            0,
            &[
                "--tls",
                coordinator_tls.to_str().unwrap(),
                "--model-out",
                &format!("{db}.model"),
            ],
        );
        let url = url.replace("http://", "https://");
        let sites: Vec<Proc> = HEART_SITES
            .iter()
            .map(|site| {
                let dir = s.path(&format!("ca/sites/{site}"));
                participant(
                    &s.dir,
                    &url,
                    site,
                    &[
                        "--tls",
                        dir.to_str().unwrap(),
                        "--expect-plan",
                        secure.to_str().unwrap(),
                        "--give-up-after",
                        give_up,
                    ],
                )
            })
            .collect();
        (coordinator, sites)
    };
    let (mut coordinator, mut sites) = run(&secure, "secure.sqlite", "60");
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut sites {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
        assert!(p.log().contains("done: 4 updates accepted"), "{}", p.log());
        // Signed and checked with certificates, every round (not the
        // unauthenticated mode of --insecure).
        let checked = p
            .log()
            .matches("the cohort's certificates checked against the federation CA")
            .count();
        // Four training rounds and the four secure sums of their evaluations
        // (site metrics are aggregate-only by default).
        assert_eq!(checked, 8, "{}", p.log());
    }
    assert_eq!(
        std::fs::read(s.path("secure.sqlite.model")).unwrap(),
        expected
    );
    let db = s.path("secure.sqlite");
    assert_eq!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM audit WHERE action = 'secure-aggregation' AND outcome = 'completed'"
        ),
        4
    );
    assert_eq!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM audit WHERE action = 'secure-aggregation' AND outcome = 'rejected'"
        ),
        0
    );
    assert_eq!(query_i64(&db, "SELECT COUNT(*) FROM updates"), 0);

    // The coordinator serves a plan without secure aggregation.
    let (mut coordinator, mut sites) = run(&weak, "weak.sqlite", "3");
    for p in &mut sites {
        assert!(!p.wait(LIMIT).success(), "{}", p.log());
        assert!(
            p.log()
                .contains("the coordinator's plan differs from the plan this site expects in [secure_aggregation]"),
            "the site says why:\n{}",
            p.log()
        );
    }
    coordinator.kill_9();
    assert_eq!(
        query_i64(&s.path("weak.sqlite"), "SELECT COUNT(*) FROM updates"),
        0
    );
}

#[test]
fn secure_aggregation_recovers_the_sum_when_a_site_drops_after_sharing_its_keys() {
    if util::skip_e2e(
        "secure_aggregation_recovers_the_sum_when_a_site_drops_after_sharing_its_keys",
    ) {
        return;
    }
    let s = Scratch::new("deploy-secagg-drop");
    let text = heart_text(&s, 3);
    let plan = s.write(
        "secure-drop.toml",
        &format!("{text}\n[secure_aggregation]\nenabled = true\n"),
    );
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &db,
        0,
        &["--liveness", "1.5", "--report", "dep.json"],
    );
    let mut participants: Vec<Proc> = HEART_SITES[..3]
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    // VA masks its update, then goes quiet past the liveness period every round.
    participants.push(participant(
        &s.dir,
        &url,
        "va",
        &["--pause-before-update", "3"],
    ));
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    let report = s.json("dep.json");
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    for r in rounds {
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["accepted"], 3, "{r}");
        assert_eq!(r["dropped"], 1, "{r}");
    }
    assert_eq!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM audit WHERE action = 'secure-aggregation'
             AND detail LIKE '%the sum of 3 of 4 updates;%'"
        ),
        3
    );
    // In round 1 at least, VA had shared its keys before going quiet: its
    // pairwise masks were rebuilt from its neighbours' shares and removed.
    // (Later, it may still be pausing when the next round's keys are due.)
    assert!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM audit WHERE action = 'secure-aggregation'
             AND detail LIKE 'round 1: %the masks of 1 that dropped after sharing keys removed'"
        ) == 1
    );
}

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
    assert_eq!(std::fs::read(s.path("dep.model")).unwrap(), expected);
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
    assert_eq!(std::fs::read(s.path("dep.model")).unwrap(), expected);
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
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| {
            // VA is slow, so each round sits open for a while.
            let extra: &[&str] = if *site == "va" {
                &["--pause-before-update", "0.5"]
            } else {
                &[]
            };
            participant(&s.dir, &url, site, extra)
        })
        .collect();
    wait_until(LIMIT, "round 4 open", || {
        query_i64(&db, "SELECT COUNT(*) FROM updates WHERE round = 4") >= 1
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
    assert_eq!(std::fs::read(s.path("dep.model")).unwrap(), expected);
    let report = s.json("dep.json");
    let rounds = report["rounds"].as_array().unwrap();
    let down = |r: usize, site: &str| rounds[r]["traffic"][site]["down"].as_u64().unwrap();
    // After the restart, models still go down as changes: less than the
    // whole initial model that round 1 sent.
    for site in ["cleveland", "hungarian", "switzerland", "va"] {
        assert!(down(10, site) < down(0, site), "{site}: {rounds:?}");
    }
}

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
    assert_eq!(std::fs::read(s.path("dep.model")).unwrap(), expected);
    let db = s.path("agg.sqlite");
    // What the coordinator received: sums, never a site's evaluation.
    assert_eq!(query_i64(&db, "SELECT COUNT(*) FROM evaluations"), 0);
    assert_eq!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM audit WHERE action = 'secure-evaluation' AND outcome = 'completed'"
        ),
        4
    );
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
    assert_eq!(
        query_i64(&s.path("clear.sqlite"), "SELECT COUNT(*) FROM evaluations"),
        0
    );
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
        assert_eq!(
            std::fs::read(s.path(&format!("{run}.model"))).unwrap(),
            expected
        );
        let db = s.path(&format!("{run}.sqlite"));
        assert_eq!(query_i64(&db, "SELECT COUNT(*) FROM evaluations"), 0);
        let report = s.json(&format!("{run}.model.json"));
        let dp = &report["metrics_privacy"];
        assert_eq!(dp["releases"], 4, "{dp}");
        assert_eq!(dp["release"], true, "{dp}");
        let epsilon = dp["epsilon"].as_f64().unwrap();
        assert!(epsilon <= 2.0 * 1.001 && epsilon > 1.8, "{dp}");
        assert!(report["final"]["per_site"].as_object().unwrap().is_empty());
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
        let stored = query_i64(
            &db,
            "SELECT COUNT(*) FROM rounds WHERE record LIKE '%metrics_epsilon%'",
        );
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

/// An all-zero update from `site` for `header`'s round claiming `n_examples`
/// examples and `n_steps` steps, as the parts a hand-driven client streams.
fn zero_update(
    site: &str,
    header: &tessera_proto::pb::TaskHeader,
    n_examples: u64,
    n_steps: u64,
) -> Vec<tessera_proto::pb::UpdatePart> {
    use tessera_proto::pb::{self, update_part};
    let mut parts = vec![pb::UpdatePart {
        part: Some(update_part::Part::Header(pb::UpdateHeader {
            site: site.into(),
            round: header.round,
            n_examples,
            has_control: false,
            n_steps,
            mean_train_loss: 0.5,
            layout: header.layout.clone(),
            codec: String::new(),
        })),
    }];
    for (tensor, t) in header.layout.iter().enumerate() {
        let n = t.shape.iter().product::<u64>() as usize;
        parts.push(pb::UpdatePart {
            part: Some(update_part::Part::Chunk(pb::TensorChunk {
                set: 0,
                tensor: tensor as u32,
                offset: 0,
                values: vec![0u8; 4 * n],
            })),
        });
    }
    parts
}

/// `site`'s next task, read whole (a hand-driven client): its header.
async fn next_task_header(
    client: &mut tessera_proto::pb::federation_client::FederationClient<tonic::transport::Channel>,
    site: &str,
) -> tessera_proto::pb::TaskHeader {
    use tessera_proto::pb::{self, task};
    let mut stream = client
        .next_task(pb::TaskRequest {
            site: site.into(),
            held_round: None,
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::Task {
        part: Some(task::Part::Header(header)),
    }) = stream.message().await.unwrap()
    else {
        panic!("a task header")
    };
    while stream.message().await.unwrap().is_some() {}
    header
}

/// A hostile "va" that joins and agrees with its true data, for the trust
/// boundary tests: returns the client, the plan and the agreement.
async fn hostile_va(
    url: &str,
) -> (
    tessera_proto::pb::federation_client::FederationClient<tonic::transport::Channel>,
    tessera_engine::Plan,
    tessera_data::LocalSite,
    tessera_data::Agreement,
) {
    use tessera_proto::pb::federation_client::FederationClient;
    use tessera_proto::pb::{self, agree_reply};
    let mut client = FederationClient::connect(url.to_string()).await.unwrap();
    let welcome = client.join(hello("va")).await.unwrap().into_inner();
    let plan = tessera_engine::Plan::from_toml(&welcome.plan_toml, "plan").unwrap();
    let mut local = tessera_data::read_local_site(
        &plan.data,
        "va",
        Some(&util::procs::heart_file("va")),
        &examples(),
        &tessera_data::Filesystem,
    )
    .unwrap();
    let agree = |offer: pb::agree_request::Offer| pb::AgreeRequest {
        site: "va".into(),
        offer: Some(offer),
    };
    let kinds = loop {
        let offer = pb::agree_request::Offer::Kinds(tessera_proto::convert::kinds_offer_to_pb(
            &local.kinds_offer(),
        ));
        let reply = client.agree(agree(offer)).await.unwrap().into_inner();
        if let Some(agree_reply::Result::Kinds(kinds)) = reply.result {
            break tessera_proto::convert::kinds_from_pb(kinds).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut levels = local.levels_offer(&plan.data, &kinds).unwrap();
    // Declared as the participant declares them.
    let hide = plan.secure_aggregation.enabled || plan.privacy.site_metrics.sums_only();
    levels.train_rows = tessera_data::declared_rows(levels.train_rows, hide);
    levels.test_rows = tessera_data::declared_rows(levels.test_rows, hide);
    let agreement = loop {
        let offer =
            pb::agree_request::Offer::Levels(tessera_proto::convert::levels_offer_to_pb(&levels));
        let reply = client.agree(agree(offer)).await.unwrap().into_inner();
        if let Some(agree_reply::Result::Agreement(a)) = reply.result {
            break tessera_proto::convert::agreement_from_pb(a).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (client, plan, local, agreement)
}

/// Statistics beyond what `f32` data can give, or counting more rows than
/// the site declared, are refused with the reason; the site then offers
/// its true statistics, and the run (federation-wide standardisation)
/// equals its simulation bit for bit. Before the trust boundary, +-1e308
/// made the merge non-finite and every honest participant exited.
#[test]
fn hostile_statistics_are_refused_and_the_run_equals_its_simulation() {
    if util::skip_e2e("hostile_statistics_are_refused_and_the_run_equals_its_simulation") {
        return;
    }
    use tessera_proto::pb;
    let s = Scratch::new("deploy-hostile-statistics");
    let text = heart_text(&s, 3).replace(
        "[data.standardize]\n",
        "[data.standardize]\nscope = \"federation\"\n",
    );
    assert!(text.contains("scope = \"federation\""));
    let plan = s.write("federation-scale.toml", &text);
    let (_, expected) = s.simulate(&plan, "sim.model");
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &db, 0, OUTPUTS);
    let mut honest: Vec<Proc> = HEART_SITES[..3]
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refusals: Vec<String> = runtime.block_on(async {
        let (mut client, plan, local, agreement) = hostile_va(&url).await;
        let (data, _) = local.prepare(&plan.data, &agreement).unwrap();
        let honest = tessera_data::FeatureStatistics::of(&data.raw_train);
        let mut huge = honest.clone();
        huge.mean[0] = 1e308;
        let mut counted = honest.clone();
        counted.n = u64::MAX;
        let mut squares = honest.clone();
        squares.m2[1] = f64::MAX;
        let mut refusals = Vec::new();
        for bad in [huge, counted, squares] {
            let status = client
                .agree(pb::AgreeRequest {
                    site: "va".into(),
                    offer: Some(pb::agree_request::Offer::Statistics(
                        tessera_proto::convert::statistics_to_pb(&bad),
                    )),
                })
                .await
                .unwrap_err();
            refusals.push(status.message().to_string());
        }
        refusals
    });
    assert!(refusals[0].contains("beyond any f32 value"), "{refusals:?}");
    assert!(
        refusals[1].contains("'va' declared") && refusals[1].contains("training rows"),
        "{refusals:?}"
    );
    assert!(refusals[2].contains("squared deviations"), "{refusals:?}");
    // The real site now offers its true statistics.
    let mut va = participant(&s.dir, &url, "va", &[]);
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    assert!(va.wait(LIMIT).success(), "{}", va.log());
    for p in &mut honest {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert_eq!(std::fs::read(s.path("dep.model")).unwrap(), expected);
    assert_eq!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM audit WHERE site = 'va' AND action = 'agree-statistics' \
             AND outcome = 'rejected'"
        ),
        3
    );
}

/// Under local DP, an update claiming 2^64 - 1 optimiser steps (before the
/// trust boundary: the coordinator exited 70 and every participant 1), one
/// claiming more examples than the site declared (before: it took 99.98% of
/// the round's weight) and an evaluation claiming 2^64 - 6 rows (before:
/// the pooled counts wrapped) are each refused with the reason and audited;
/// the coordinator goes on, and the site's real participant finishes the run.
#[test]
fn hostile_counts_are_refused_and_the_coordinator_goes_on() {
    if util::skip_e2e("hostile_counts_are_refused_and_the_coordinator_goes_on") {
        return;
    }
    use tessera_proto::pb;
    let s = Scratch::new("deploy-hostile-counts");
    let text = heart_text(&s, 3);
    let plan = s.write(
        "hostile.toml",
        &format!(
            "{text}\n[privacy]\nmode = \"local\"\nnoise_multiplier = 1.0\nclip_norm = 1.0\n\
             site_metrics = \"clear\"\n"
        ),
    );
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &db,
        0,
        &["--liveness", "2", "--report", "dep.json"],
    );
    let mut honest: Vec<Proc> = HEART_SITES[..3]
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refusals: Vec<String> = runtime.block_on(async {
        let (mut client, _, _, _) = hostile_va(&url).await;
        let mut refusals = Vec::new();
        loop {
            let header = next_task_header(&mut client, "va").await;
            match header.kind() {
                pb::TaskKind::Fit if refusals.is_empty() => {
                    // VA trains on 85 rows.
                    for (n_examples, n_steps) in [(85, u64::MAX), (1_000_000, 100)] {
                        let parts = zero_update("va", &header, n_examples, n_steps);
                        let reply = client.submit_update(tokio_stream::iter(parts)).await;
                        refusals.push(match reply {
                            Ok(r) => r.into_inner().reason,
                            Err(status) => status.message().to_string(),
                        });
                    }
                    // Out of the round, so that it closes without waiting.
                    client
                        .withdraw(pb::WithdrawRequest {
                            site: "va".into(),
                            round: header.round,
                            reason: "a hostile test client gives up the round".into(),
                            leaving: false,
                        })
                        .await
                        .unwrap();
                }
                pb::TaskKind::Evaluate => {
                    let status = client
                        .submit_evaluation(pb::EvaluationReport {
                            site: "va".into(),
                            round: header.round,
                            n_examples: u64::MAX - 5,
                            n_correct: 3,
                            loss_sum: 1.0,
                            ..Default::default()
                        })
                        .await
                        .unwrap_err();
                    refusals.push(status.message().to_string());
                    client
                        .withdraw(pb::WithdrawRequest {
                            site: "va".into(),
                            round: header.round,
                            reason: "a hostile test client leaves".into(),
                            leaving: true,
                        })
                        .await
                        .unwrap();
                    return refusals;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    assert_eq!(refusals.len(), 3, "{refusals:?}");
    assert!(refusals[0].contains("optimiser steps"), "{refusals:?}");
    assert!(
        refusals[1].contains("claims 1000000 training examples; 'va' declared"),
        "{refusals:?}"
    );
    assert!(refusals[2].contains("test rows"), "{refusals:?}");
    // The real VA joins again and the run finishes; nobody stopped.
    let mut va = participant(&s.dir, &url, "va", &[]);
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    assert!(va.wait(LIMIT).success(), "{}", va.log());
    for p in &mut honest {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert_eq!(
        query_i64(
            &db,
            "SELECT COUNT(*) FROM audit WHERE site = 'va' AND outcome = 'rejected' \
             AND action IN ('update', 'evaluation')"
        ),
        3
    );
    let report = s.json("dep.json");
    for r in report["rounds"].as_array().unwrap() {
        let accuracy = r["accuracy"].as_f64().unwrap();
        assert!(accuracy > 0.3 && accuracy < 0.95, "{r}");
    }
}

/// Without DP, a site's refused reports leave no trace in the run: an update
/// claiming 10^6 examples (the site declared 85) and an evaluation claiming
/// 2^64 - 6 rows are refused, then the site's real participant takes the
/// same round, and the model equals its simulation bit for bit.
#[test]
fn refused_counts_leave_the_run_equal_to_its_simulation() {
    if util::skip_e2e("refused_counts_leave_the_run_equal_to_its_simulation") {
        return;
    }
    use tessera_proto::pb;
    let s = Scratch::new("deploy-hostile-counts-exact");
    let text = heart_text(&s, 3);
    let plan = s.write(
        "exact.toml",
        &format!("{text}\n[privacy]\nsite_metrics = \"clear\"\n"),
    );
    let (_, expected) = s.simulate(&plan, "sim.model");
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &db, 0, OUTPUTS);
    let mut honest: Vec<Proc> = HEART_SITES[..3]
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refusals: Vec<String> = runtime.block_on(async {
        let (mut client, _, _, _) = hostile_va(&url).await;
        let header = loop {
            let header = next_task_header(&mut client, "va").await;
            if header.kind() == pb::TaskKind::Fit {
                break header;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let parts = zero_update("va", &header, 1_000_000, 100);
        let update = match client.submit_update(tokio_stream::iter(parts)).await {
            Ok(r) => r.into_inner().reason,
            Err(status) => status.message().to_string(),
        };
        let evaluation = client
            .submit_evaluation(pb::EvaluationReport {
                site: "va".into(),
                round: header.round,
                n_examples: u64::MAX - 5,
                n_correct: 3,
                loss_sum: 1.0,
                ..Default::default()
            })
            .await
            .unwrap_err()
            .message()
            .to_string();
        vec![update, evaluation]
    });
    assert!(
        refusals[0].contains("claims 1000000 training examples; 'va' declared"),
        "{refusals:?}"
    );
    assert!(refusals[1].contains("test rows"), "{refusals:?}");
    // The real VA takes the round the hostile client left open.
    let mut va = participant(&s.dir, &url, "va", &[]);
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    assert!(va.wait(LIMIT).success(), "{}", va.log());
    for p in &mut honest {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert_eq!(std::fs::read(s.path("dep.model")).unwrap(), expected);
}

/// Names and strings from outside are bounded before anything keeps them:
/// 1 MiB site names are refused by their length, names with line breaks
/// by their characters, a connection refused more than 10 times a second
/// is turned away unread, names that never joined
/// get no traffic counters or report entries, refusals beyond 50 a second
/// are counted rather than written, and audit details are cut. Before, 100
/// refused joins with 2 MiB names added 424 MB to the database and 206
/// bogus sites appeared in the report. The honest run that follows equals
/// its simulation bit for bit.
#[test]
fn hostile_names_are_bounded_and_the_run_equals_its_simulation() {
    if util::skip_e2e("hostile_names_are_bounded_and_the_run_equals_its_simulation") {
        return;
    }
    use tessera_proto::pb;
    use tessera_proto::pb::federation_client::FederationClient;
    let s = Scratch::new("deploy-hostile-names");
    let plan = s.write("names.toml", &heart_text(&s, 3));
    let (_, expected) = s.simulate(&plan, "sim.model");
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &db, 0, OUTPUTS);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (long, unknown, unjoined, forged, throttled, seconds) = runtime.block_on(async {
        // Each refused call on a connection of its own: the per-connection
        // limit does not apply, the global limit on audited refusals does.
        let fresh = || async {
            FederationClient::connect(url.clone())
                .await
                .unwrap()
                .max_decoding_message_size(8 << 20)
                .max_encoding_message_size(8 << 20)
        };
        let huge = "x".repeat(1 << 20);
        let mut long = Vec::new();
        for _ in 0..40 {
            long.push(
                fresh()
                    .await
                    .join(hello(&huge))
                    .await
                    .unwrap_err()
                    .message()
                    .to_string(),
            );
        }
        // 300 refused calls at once, each on its own connection (opened
        // first): the global limit on audited refusals decides what is
        // written.
        let mut clients = Vec::new();
        for _ in 0..300 {
            clients.push(fresh().await);
        }
        let burst = std::time::Instant::now();
        let mut calls = Vec::new();
        for (i, mut client) in clients.into_iter().enumerate() {
            calls.push(tokio::spawn(async move {
                if i < 200 {
                    let name = format!("{i:0>100}");
                    (true, client.join(hello(&name)).await.unwrap_err())
                } else {
                    let report = pb::EvaluationReport {
                        site: format!("{i:y>100}"),
                        round: 1,
                        ..Default::default()
                    };
                    (false, client.submit_evaluation(report).await.unwrap_err())
                }
            }));
        }
        let (mut unknown, mut unjoined) = (Vec::new(), Vec::new());
        for call in calls {
            let (join, status) = call.await.unwrap();
            if join { &mut unknown } else { &mut unjoined }.push(status.message().to_string());
        }
        let burst = burst.elapsed().as_secs_f64();
        let mut client = fresh().await;
        let forged = client
            .join(hello("cleveland\nrefused hungary"))
            .await
            .unwrap_err()
            .message()
            .to_string();
        // One connection refused 100 times in a row: past its burst, its
        // calls are turned away unread.
        let started = std::time::Instant::now();
        let mut codes = Vec::new();
        for i in 0..100 {
            codes.push(
                client
                    .join(hello(&format!("{i:z>100}")))
                    .await
                    .unwrap_err()
                    .code(),
            );
        }
        let refills = (started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
        let turned_away = codes
            .iter()
            .filter(|c| **c == tonic::Code::ResourceExhausted)
            .count();
        assert!(
            turned_away > 0 && turned_away + 20 + refills >= 100,
            "{turned_away} of 100 calls turned away in {:?}",
            started.elapsed()
        );
        (long, unknown, unjoined, forged, turned_away, burst)
    });
    eprintln!(
        "{throttled} of 100 refused calls on one connection turned away unread; 300 refused \
         calls at once in {seconds:.2} s"
    );
    assert_eq!(
        forged,
        "a site name has no control characters (line breaks, tabs, escapes)"
    );
    assert!(
        long.iter()
            .all(|m| m == "a site name is at most 128 bytes, got 1048576"),
        "{:?}",
        &long[0]
    );
    assert!(
        unknown
            .iter()
            .all(|m| m.contains("is not among the plan's sites"))
    );
    assert!(unjoined.iter().all(|m| m.len() < 300), "{}", unjoined[0]);
    // What the database kept of 441 refusals.
    // Of the 300 at once, at most 50 written a second after a burst of 50;
    // the 40 long names and 21 calls on one connection add at most 61.
    let rows = query_i64(&db, "SELECT COUNT(*) FROM audit");
    let allowed = 50 + (seconds * 50.0).ceil() as i64 + 61;
    assert!(rows <= allowed, "{rows} audit rows; at most {allowed}");
    let longest = query_i64(&db, "SELECT MAX(LENGTH(site) + LENGTH(detail)) FROM audit");
    let split = query_i64(
        &db,
        "SELECT COUNT(*) FROM audit WHERE instr(site, char(10)) > 0",
    );
    assert_eq!(split, 0, "a site name with a line break was kept as-is");
    assert!(longest < 1_400, "an audit row of {longest} bytes");
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert_eq!(std::fs::read(s.path("dep.model")).unwrap(), expected);
    let report = s.json("dep.json");
    let per_site: Vec<&String> = report["communication"]["bytes_up_per_site"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(per_site, HEART_SITES.to_vec(), "only the sites that joined");
    let size = std::fs::metadata(&db).unwrap().len()
        + std::fs::metadata(s.path("c.sqlite-wal")).map_or(0, |m| m.len());
    assert!(size < 8 << 20, "the database grew to {size} bytes");
}

/// A database that another writer holds past the coordinator's busy wait
/// (5 s) while the sites join and agree: their calls are answered
/// "unavailable", they ask again, and the run ends as its simulation, bit for
/// bit. Before, a database error during the agreement refused the site as if
/// its request were wrong, and it stopped for good.
#[test]
fn a_busy_database_during_the_agreement_is_retried_not_fatal() {
    if util::skip_e2e("a_busy_database_during_the_agreement_is_retried_not_fatal") {
        return;
    }
    let s = Scratch::new("deploy-db-busy");
    let plan = s.write("busy.toml", &heart_text(&s, 2));
    let (_, expected) = s.simulate(&plan, "sim.model");
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &db, 0, OUTPUTS);
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    std::thread::sleep(Duration::from_secs(7));
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    let mut retried = 0;
    for site in &mut sites {
        assert!(site.wait(LIMIT).success(), "{}", site.log());
        retried += usize::from(site.log().contains("database failed"));
    }
    assert!(retried >= 1, "no site was told to retry");
    assert_eq!(std::fs::read(s.path("dep.model")).unwrap(), expected);
}

/// `coordinator --set` changes the plan the sites receive: they train the
/// changed plan, and the run equals the simulation of the same change.
#[test]
fn a_coordinator_setting_reaches_the_sites() {
    if util::skip_e2e("a_coordinator_setting_reaches_the_sites") {
        return;
    }
    let s = Scratch::new("deploy-set");
    let plan = plan(&s, "fedavg", "");
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &s.path("c.sqlite"),
        0,
        &[
            "--set",
            "federation.rounds=2",
            "--set",
            "training.lr=0.005",
            "--model-out",
            "dep.model",
            "--report",
            "dep.json",
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
    let text = std::fs::read_to_string(&plan).unwrap();
    let changed = s.write(
        "changed.toml",
        &text.replace("rounds = 15", "rounds = 2").replace(
            "optimizer = \"sgd\"\nlr = 0.001",
            "optimizer = \"sgd\"\nlr = 0.005",
        ),
    );
    let (_, expected) = s.simulate(&changed, "sim.model");
    assert_eq!(s.json("dep.json")["rounds"].as_array().unwrap().len(), 2);
    assert_eq!(std::fs::read(s.path("dep.model")).unwrap(), expected);
}

/// A plan whose model cannot fit in the coordinator's memory stops the run
/// at the agreement, before any model is built: the coordinator exits with
/// the reason, and every site is told it. Before, the run grew until the
/// machine aborted it.
#[test]
fn a_model_too_big_for_the_coordinator_stops_the_run_before_round_1() {
    if util::skip_e2e("a_model_too_big_for_the_coordinator_stops_the_run_before_round_1") {
        return;
    }
    let s = Scratch::new("deploy-memory-coordinator");
    let text = std::fs::read_to_string(plan(&s, "fedavg", "")).unwrap();
    // 10^12 hidden units: 1.5 x 10^13 parameters, four copies of 4 bytes.
    let text = text.replace(
        "[model]\nkind = \"logistic\"",
        "[model]\nkind = \"mlp\"\nhidden = [1000000000000]",
    );
    let plan = s.write("huge.toml", &text);
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &s.path("c.sqlite"), 0, &[]);
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    assert!(!coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    assert!(
        coordinator
            .log()
            .contains("the plan needs at least 240000.0 GB of memory")
            && coordinator
                .log()
                .contains("the coordinator machine's available memory"),
        "{}",
        coordinator.log()
    );
    for site in &mut sites {
        assert!(!site.wait(LIMIT).success(), "{}", site.log());
        assert!(
            site.log().contains("refused by the coordinator")
                && site.log().contains("the plan needs at least"),
            "{}",
            site.log()
        );
    }
}

/// A site gives the run at most --max-memory-gb: a plan whose model needs
/// more there is refused at the site, saying why, before any model is
/// built; the others go on.
#[test]
fn a_site_refuses_a_model_beyond_its_memory_limit() {
    if util::skip_e2e("a_site_refuses_a_model_beyond_its_memory_limit") {
        return;
    }
    let s = Scratch::new("deploy-memory-site");
    let plan = s.write("small.toml", &heart_text(&s, 2));
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &s.path("c.sqlite"), 0, &[]);
    let mut others: Vec<Proc> = HEART_SITES[..3]
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    assert_eq!(HEART_SITES[3], "va");
    let mut small = participant(&s.dir, &url, "va", &["--max-memory-gb", "1e-9"]);
    assert!(!small.wait(LIMIT).success(), "{}", small.log());
    assert!(
        small.log().contains("the plan needs at least")
            && small
                .log()
                .contains("a model of 14 parameters, its copies at a site")
            && small.log().contains("this site's --max-memory-gb"),
        "{}",
        small.log()
    );
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for site in &mut others {
        assert!(site.wait(LIMIT).success(), "{}", site.log());
    }
    let bad = participant(&s.dir, &url, "va", &["--max-memory-gb", "-1"]).wait(LIMIT);
    assert!(!bad.success());
}

/// A coordinator's plan that names a file outside the site's --plan-dir
/// (an absolute path) is refused at the site, saying why, before any file
/// of it is read. Before, a coordinator's plan could make participants read
/// any absolute path.
#[test]
fn a_plan_cannot_make_a_site_read_outside_its_plan_dir() {
    if util::skip_e2e("a_plan_cannot_make_a_site_read_outside_its_plan_dir") {
        return;
    }
    let s = Scratch::new("deploy-plan-paths");
    let text = std::fs::read_to_string(plan(&s, "fedavg", "")).unwrap();
    let outside = s.write("elsewhere.csv", "center,row_in_file,flamby_split\n");
    let start = text.find("[data.split.membership]\npath = \"").unwrap();
    let end = start + text[start..].find(".csv\"").unwrap() + 5;
    let text = format!(
        "{}[data.split.membership]\npath = \"{}\"{}",
        &text[..start],
        outside.display(),
        &text[end..]
    );
    let plan = s.write("paths.toml", &text);
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &s.path("c.sqlite"), 0, &[]);
    let mut site = participant(&s.dir, &url, "cleveland", &[]);
    assert!(!site.wait(LIMIT).success(), "{}", site.log());
    assert!(
        site.log().contains("outside this site's --plan-dir"),
        "{}",
        site.log()
    );
    coordinator.kill_9();
}

/// A site whose data has other columns than the rest is refused at the
/// agreement, naming the columns, and the others go on without it. Before,
/// one odd offer made the agreement fail for everyone and every honest
/// participant exited.
#[test]
fn an_odd_offer_refuses_the_odd_site_not_the_federation() {
    if util::skip_e2e("an_odd_offer_refuses_the_odd_site_not_the_federation") {
        return;
    }
    let s = Scratch::new("deploy-odd-offer");
    let (plan, data) = util::synthetic(&s, 4, 3, "kind = \"flat\"");
    let text = std::fs::read_to_string(&plan).unwrap();
    let plan = s.write(
        "plan.toml",
        &text.replace("rounds = 3", "rounds = 3\nmin_participants = 3"),
    );
    let csv = std::fs::read_to_string(&data).unwrap();
    let odd: String = csv
        .lines()
        .enumerate()
        .map(|(i, line)| {
            if i == 0 {
                format!("extra,{line}\n")
            } else {
                format!("{i},{line}\n")
            }
        })
        .collect();
    let odd = s.write("odd.csv", &odd);
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &s.path("c.sqlite"),
        0,
        &["--report", "dep.json"],
    );
    let mut refused = participant_with(&s.dir, &url, "site3", &odd, &[]);
    std::thread::sleep(Duration::from_secs(2));
    let mut honest: Vec<Proc> = ["site0", "site1", "site2"]
        .iter()
        .map(|site| participant_with(&s.dir, &url, site, &data, &[]))
        .collect();
    assert!(!refused.wait(LIMIT).success(), "{}", refused.log());
    assert!(
        refused.log().contains("only here: [extra]"),
        "the odd site hears why:\n{}",
        refused.log()
    );
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut honest {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    let report = s.json("dep.json");
    assert_eq!(report["rounds"].as_array().unwrap().len(), 3);
}

/// A coordinator's plan that makes a column categorical without
/// declaring its levels (so that sites would send every distinct value,
/// here every patient's age) is refused at the site unless it consents.
#[test]
fn a_site_sends_undeclared_value_sets_only_with_consent() {
    if util::skip_e2e("a_site_sends_undeclared_value_sets_only_with_consent") {
        return;
    }
    let s = Scratch::new("deploy-levels-consent");
    let text = std::fs::read_to_string(plan(&s, "fedavg", "")).unwrap();
    let greedy = text.replace(
        "{ name = \"age\", type = \"numeric\" }",
        "{ name = \"age\", type = \"categorical\" }",
    );
    assert_ne!(greedy, text);
    let plan = s.write("greedy.toml", &greedy);
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &s.path("c.sqlite"), 0, &[]);
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    for site in &mut sites {
        assert!(!site.wait(LIMIT).success(), "{}", site.log());
        assert!(
            site.log()
                .contains("categorical without declaring their levels (age)")
                && site.log().contains("--share-levels"),
            "{}",
            site.log()
        );
    }
    coordinator.kill_9();
}
