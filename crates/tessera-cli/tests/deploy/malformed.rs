//! A rogue participant's malformed updates and withdrawals, refused with
//! their reasons while the rounds go on.

use crate::trust::next_task_header;
use crate::util::procs::{HEART_SITES, Proc, coordinator, examples, participant};
use crate::util::status::status_of;
use crate::util::{self, Scratch};
use crate::{LIMIT, hello, plan_with};

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
    // This test speaks gRPC itself and sends clear evaluations; once it has
    // sent its malformed updates it leaves, and the rounds go on with three.
    let plan = plan_with(&s, "malformed", "[privacy]\nsite_metrics = \"clear\"\n");
    let text = std::fs::read_to_string(&plan).unwrap();
    let plan = s.write(
        "malformed.toml",
        &text.replace("min_participants = 4", "min_participants = 3"),
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
        while replies.len() < 7 {
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
                start_loss: None,
                train_seconds: Some(0.5),
                test_rows: None,
                quality: None,
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
                5 => vec![head(good_header), compressed(vec![0x00, 0x0e])],
                // Training seconds no site can have spent.
                _ => {
                    let mut bad = good_header;
                    bad.train_seconds = Some(-1.0);
                    vec![head(bad), chunk(0, 0, &vec![0.0; n_values as usize])]
                }
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
    assert!(
        replies[6].contains("training seconds -1 outside [0, 604800]"),
        "{replies:?}"
    );
    assert_eq!(
        replies[7..],
        [
            "error: a withdrawal's reason is at most 1000 bytes, got 1001",
            "error: site 'nowhere' has not joined",
            "withdrawn: false",
        ],
        "{replies:?}"
    );
    assert_eq!(
        status_of(&db).audit_count(|a| a.site == "va"
            && a.action == "withdraw"
            && a.outcome == "not waited for"
            && a.detail == "round 999: not open"),
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
    let rejected = status_of(&db).audit_count(|a| a.site == "va" && a.outcome == "rejected");
    assert!(
        rejected >= 3,
        "rejections recorded with their reason: {rejected}"
    );
}
