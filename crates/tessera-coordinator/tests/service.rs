//! The gRPC service in process, over `tokio::io::duplex`: the same service,
//! codec and streams a participant meets, without processes or sockets. The
//! honest sites drive the federation directly; one rogue speaks gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Db, SITES, agree, hello, plan, train};
use tessera_coordinator::{Service, Shared, TaskView};
use tessera_proto::pb::federation_client::FederationClient;
use tessera_proto::pb::federation_server::FederationServer;
use tessera_proto::pb::sec_agg_reply::State;
use tessera_proto::pb::sec_agg_request::Step;
use tessera_proto::pb::{self, task, update_part};
use tonic::transport::{Channel, Endpoint, Server, Uri};

/// Serves `shared` on one end of an in-memory pipe; the client on the other.
async fn in_process(shared: Arc<Shared>) -> FederationClient<Channel> {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let service = FederationServer::new(Service::new(
        shared,
        Arc::new(tessera_tls::Callers::insecure()),
    ))
    .max_decoding_message_size(16 << 20);
    tokio::spawn(async move {
        Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::once(Ok::<_, std::io::Error>(server_io)))
            .await
    });
    let mut client_io = Some(client_io);
    let channel = Endpoint::from_static("http://in-process")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let io = client_io.take();
            async move {
                io.map(hyper_util::rt::TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("one connection only"))
            }
        }))
        .await
        .unwrap();
    FederationClient::new(channel)
}

/// The header of `site`'s next task, the stream read whole.
async fn next_task_header(client: &mut FederationClient<Channel>, site: &str) -> pb::TaskHeader {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_no_site_could_hold_are_refused_before_the_federation_sees_them() {
    let db = Db::new();
    let shared = Shared::new(db.open(&plan("")));
    let mut client = in_process(Arc::clone(&shared)).await;
    let long = "x".repeat(tessera_proto::MAX_SITE_NAME + 1);
    for (name, expected) in [
        (long.as_str(), "a site name is at most"),
        ("va\nroot", "no control characters"),
    ] {
        let status = client.join(hello(name)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{status:?}");
    }
    // A site the plan does not name is refused by the federation itself.
    let status = client.join(hello("nowhere")).await.unwrap_err();
    assert_ne!(status.code(), tonic::Code::Ok);
    let joined = shared
        .call(|f| f.store().participants(f.run_id()).unwrap())
        .await
        .unwrap();
    assert!(joined.is_empty(), "{joined:?}");
}

/// A rogue "va" sends malformed updates and withdrawals over the wire: each
/// is refused with its reason and audited, and the round closes on the other
/// three sites.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_updates_over_the_wire_are_refused_and_the_round_goes_on() {
    let db = Db::new();
    let mut federation = db.open(&plan(""));
    agree(&mut federation);
    let shared = Shared::new(federation);
    let mut client = in_process(Arc::clone(&shared)).await;
    let va = SITES.iter().position(|s| s.name == "va").unwrap();

    let header = next_task_header(&mut client, "va").await;
    assert_eq!(header.kind(), pb::TaskKind::Fit);
    let round = header.round;
    let good = pb::UpdateHeader {
        site: "va".into(),
        round,
        n_examples: 85,
        has_control: false,
        n_steps: 100,
        mean_train_loss: 0.5,
        layout: header.layout.clone(),
        codec: String::new(),
        start_loss: None,
        train_seconds: None,
        test_rows: None,
        quality: None,
    };
    let n0: u64 = header.layout[0].shape.iter().product();
    let n_values: u64 = header
        .layout
        .iter()
        .map(|t| t.shape.iter().product::<u64>())
        .sum();
    let chunk = |tensor: u32, values: &[f32]| pb::UpdatePart {
        part: Some(update_part::Part::Chunk(pb::TensorChunk {
            set: 0,
            tensor,
            offset: 0,
            values: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })),
    };
    let head = |h: pb::UpdateHeader| pb::UpdatePart {
        part: Some(update_part::Part::Header(h)),
    };
    let compressed = |bytes: Vec<u8>| pb::UpdatePart {
        part: Some(update_part::Part::Compressed(bytes)),
    };
    let mut nan = vec![0.0f32; n0 as usize];
    nan[0] = f32::NAN;
    let mut wrong_layout = good.clone();
    wrong_layout.layout[0].shape = vec![5, 1];
    let mut other_codec = good.clone();
    other_codec.codec = "q8".into();
    let attempts: Vec<(Vec<pb::UpdatePart>, &str)> = vec![
        (
            vec![head(good.clone()), chunk(0, &nan), chunk(1, &[0.0])],
            "non-finite",
        ),
        (
            vec![head(wrong_layout), chunk(0, &[0.0; 5]), chunk(1, &[0.0])],
            "not the model's",
        ),
        (
            vec![head(good.clone()), chunk(1, &[0.0])],
            "expected tensor 0",
        ),
        (
            vec![chunk(0, &vec![0.0; n_values as usize])],
            "starts with its header",
        ),
        (
            vec![head(other_codec), compressed(vec![0x02, 0x0e])],
            "update encoded with 'q8', but round",
        ),
        (
            vec![head(good.clone()), compressed(vec![0x00, 0x0e])],
            "compressed parts in an uncompressed update",
        ),
    ];
    for (parts, expected) in attempts {
        let reply = client.submit_update(tokio_stream::iter(parts)).await;
        let said = match reply {
            Ok(r) => format!("refused: {}", r.into_inner().reason),
            Err(status) => format!("error: {}", status.message()),
        };
        assert!(said.contains(expected), "{expected:?} in {said:?}");
    }

    let withdraw = |site: &str, round: u32, reason: String| pb::WithdrawRequest {
        site: site.into(),
        round,
        reason,
        leaving: false,
    };
    let mut said = Vec::new();
    for request in [
        withdraw("va", round, "x".repeat(1001)),
        withdraw("nowhere", round, String::new()),
        withdraw("va", 999, "not open".into()),
    ] {
        said.push(match client.withdraw(request).await {
            Ok(r) => format!("withdrawn: {}", r.into_inner().withdrawn),
            Err(status) => format!("error: {}", status.message()),
        });
    }
    assert_eq!(
        said,
        [
            "error: a withdrawal's reason is at most 1000 bytes, got 1001",
            "error: site 'nowhere' has not joined",
            "withdrawn: false",
        ]
    );

    // The other three train; va's silence is what is left of it.
    let others: Vec<usize> = (0..SITES.len()).filter(|&i| i != va).collect();
    let (audit, next) = shared
        .call(move |f| {
            for i in others {
                let (round, update) = train(f, i);
                f.submit_update(&SITES[i].name, round, &update).unwrap();
            }
            f.withdraw("va", round, "gone", false).unwrap();
            f.advance();
            let next = match f.task_for(&SITES[0].name, None) {
                Ok(TaskView::Evaluate { header, .. }) => Some(header.round),
                _ => None,
            };
            (f.store().audit_log(f.run_id()).unwrap(), next)
        })
        .await
        .unwrap();
    let rejected = audit
        .iter()
        .filter(|a| a.site == "va" && a.outcome == "rejected")
        .count();
    assert!(
        rejected >= 3,
        "refusals audited with their reasons: {audit:?}"
    );
    assert!(
        audit.iter().any(|a| a.site == "va"
            && a.action == "withdraw"
            && a.outcome == "not waited for"
            && a.detail == "round 999: not open"),
        "{audit:?}"
    );
    // The round closed on the other three: its model goes to evaluation.
    assert_eq!(next, Some(round), "{audit:?}");
}

/// A rollout takes no data agreement: a site that offers one over the
/// wire is refused, and nothing is recorded as agreed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_refuses_an_agreement_offer() {
    let db = Db::new();
    let mut federation = db.open(&plan(""));
    federation
        .set_rollout(tessera_coordinator::Rollout {
            name: "heart".into(),
            candidate: tessera_coordinator::RolloutModel {
                version: 2,
                file: Arc::new(vec![2; 10]),
            },
            production: tessera_coordinator::RolloutModel {
                version: 1,
                file: Arc::new(vec![1; 10]),
            },
            max_drop: 0.0,
            deadline: None,
            canaries: None,
            serve_only: false,
        })
        .unwrap();
    let shared = Shared::new(federation);
    let mut client = in_process(Arc::clone(&shared)).await;
    client.join(hello("va")).await.unwrap();
    let status = client
        .agree(pb::AgreeRequest {
            site: "va".into(),
            offer: Some(pb::agree_request::Offer::Kinds(pb::KindsOffer::default())),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("no data agreement"), "{status:?}");
}

/// One secure-aggregation step of `site` over the wire: the reply and how
/// long it took.
async fn ask(
    mut client: FederationClient<Channel>,
    site: &str,
    round: u32,
    step: Step,
) -> (State, Duration) {
    let start = Instant::now();
    let reply = client
        .secure_aggregation(pb::SecAggRequest {
            site: site.into(),
            round,
            step: Some(step),
        })
        .await
        .unwrap();
    (reply.into_inner().state.unwrap(), start.elapsed())
}

/// Waits (up to 30 s) until `site` has `n` polls held at the coordinator:
/// the test's next step then finds them held, however late the tasks that
/// sent them were scheduled.
async fn held_polls(shared: &Shared, site: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = (shared.held_polls.lock())
            .map(|held| held.get(site).copied().unwrap_or(0))
            .unwrap_or(0);
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{site}: {now} polls held, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// 1.30 `long-poll`: a key holder's poll with nothing to do is held at the
/// coordinator until the round moves, and answered then with what it
/// needs; when nothing moves it is answered `wait = false` (ask again at
/// once) after a second. A site's fifth poll at once is not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_poll_is_held_until_the_round_moves() {
    let db = Db::new();
    let mut federation = db.open(&plan(
        "\n[secure_aggregation]\nenabled = true\nscheme = \"homomorphic\"\n\
         key_holders = [\"cleveland\", \"va\"]\n",
    ));
    agree(&mut federation);
    // The first task opens the round.
    let round = train(&mut federation, 0).0;
    let shared = Shared::new(federation);
    let client = in_process(Arc::clone(&shared)).await;
    let (task, _) = ask(client.clone(), "cleveland", 0, Step::HeHolder(true)).await;
    assert!(
        matches!(&task, State::HeTask(t) if t.stage == 1),
        "{task:?}"
    );
    let commitment = Step::HeKeyCommitment(pb::HeKeyCommitment {
        digest: vec![1; 32],
        signature: Vec::new(),
    });
    let sent = ask(client.clone(), "cleveland", round, commitment.clone()).await;
    assert_eq!(sent.0, State::Wait(true));
    // Nothing for Cleveland until VA commits: held a second in vain.
    let (state, held) = ask(client.clone(), "cleveland", 0, Step::HeHolder(true)).await;
    assert_eq!(state, State::Wait(false));
    assert!(
        held >= Duration::from_millis(900),
        "answered after {held:?}"
    );
    // Held again; VA's commitment, once the poll is held, closes the stage:
    // Cleveland is answered then with its next task (a poll that ran out
    // would be answered `wait = false`).
    let waiting = tokio::spawn(ask(client.clone(), "cleveland", 0, Step::HeHolder(true)));
    held_polls(&shared, "cleveland", 1).await;
    assert_eq!(
        ask(client.clone(), "va", round, commitment).await.0,
        State::Wait(true)
    );
    let (task, _) = waiting.await.unwrap();
    assert!(
        matches!(&task, State::HeTask(t) if t.stage == 3),
        "{task:?}"
    );
    // A site's polls beyond four are not held: Hungarian's fifth wait for
    // the key shares is answered at once (`wait = true`: not held), the
    // four held a second.
    let held: Vec<_> = (0..4)
        .map(|_| tokio::spawn(ask(client.clone(), "hungarian", round, Step::Poll(2))))
        .collect();
    held_polls(&shared, "hungarian", 4).await;
    let (state, _) = ask(client.clone(), "hungarian", round, Step::Poll(2)).await;
    assert_eq!(state, State::Wait(true));
    for poll in held {
        let (state, took) = poll.await.unwrap();
        assert_eq!(state, State::Wait(false));
        assert!(
            took >= Duration::from_millis(900),
            "answered after {took:?}"
        );
    }
    // A held poll whose caller gave up gives its slot back: Switzerland's
    // four, cancelled, leave room for a fifth to be held.
    let cancelled: Vec<_> = (0..4)
        .map(|_| tokio::spawn(ask(client.clone(), "switzerland", round, Step::Poll(2))))
        .collect();
    held_polls(&shared, "switzerland", 4).await;
    for poll in &cancelled {
        poll.abort();
    }
    held_polls(&shared, "switzerland", 0).await;
    let (state, took) = ask(client, "switzerland", round, Step::Poll(2)).await;
    assert_eq!(state, State::Wait(false));
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}"
    );
}
