//! The trust boundary: a hostile participant's statistics, counts and names
//! refused or bounded, with the honest run equal to its simulation.

use std::time::Duration;

use crate::util::procs::{HEART_SITES, Proc, coordinator, examples, participant};
use crate::util::status::status_of;
use crate::util::{self, Scratch};
use crate::{LIMIT, OUTPUTS, heart_text, hello};

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
            start_loss: None,
            train_seconds: None,
            test_rows: None,
            quality: None,
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
pub(crate) async fn next_task_header(
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
        let honest = tessera_data::FeatureStatistics::of_features(data.raw_train());
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
    assert_eq!(util::model(&s.path("dep.model")), expected);
    assert_eq!(
        status_of(&db).audit_count(|a| a.site == "va"
            && a.action == "agree-statistics"
            && a.outcome == "rejected"),
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
        status_of(&db).audit_count(|a| a.site == "va"
            && a.outcome == "rejected"
            && (a.action == "update" || a.action == "evaluation")),
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
    assert_eq!(util::model(&s.path("dep.model")), expected);
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
    // the 40 long names and the calls on one connection not turned away
    // (its burst of 20 and what refilled while the 100 ran) add the rest.
    let audit = status_of(&db).audit();
    let rows = audit.len() as i64;
    let allowed = 50 + (seconds * 50.0).ceil() as i64 + 40 + (100 - throttled as i64);
    assert!(rows <= allowed, "{rows} audit rows; at most {allowed}");
    let longest = audit
        .iter()
        .map(|a| a.site.chars().count() + a.detail.chars().count())
        .max()
        .unwrap_or(0);
    let split = audit.iter().filter(|a| a.site.contains('\n')).count();
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
    assert_eq!(util::model(&s.path("dep.model")), expected);
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
