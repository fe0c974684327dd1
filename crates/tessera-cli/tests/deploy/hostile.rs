//! A lying coordinator: a proxy in front of a real coordinator, speaking
//! the same gRPC service, that passes every call through but rewrites each
//! task's instructions. Under FedPer a site's head never leaves it; a
//! coordinator that strips the instructions asks for FedAvg's whole-model
//! update, head included. Each site must refuse before it trains, saying
//! why, and nothing of it may reach the coordinator; so must they when it
//! asks for another method's update (Ditto's, the whole model) or another
//! split of the model (two head layers); and under multi-task, when it
//! asks a site to train the other task's head. Passing tasks
//! unchanged, the same proxy reads every update on the wire: under FedPer
//! the head's values in them are all zero.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tessera_proto::pb;
use tessera_proto::pb::federation_client::FederationClient;
use tessera_proto::pb::federation_server::{Federation, FederationServer};
use tessera_proto::pb::instructions::Kind;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::util::procs::{HEART_SITES, coordinator, participant};
use crate::{LIMIT, Scratch, heart_text, util};

type TaskStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Task, Status>> + Send>>;

/// Passes every call to `upstream`; rewrites each task header with
/// `rewrite`; counts the updates that sites send through it.
struct Liar {
    upstream: FederationClient<Channel>,
    rewrite: fn(&mut pb::TaskHeader),
    updates: Arc<AtomicUsize>,
    chunks: Chunks,
}

/// Every update chunk that passed: (tensor, little-endian f32 values).
type Chunks = Arc<Mutex<Vec<(u32, Vec<u8>)>>>;

impl Liar {
    fn up(&self) -> FederationClient<Channel> {
        self.upstream.clone()
    }
}

#[tonic::async_trait]
impl Federation for Liar {
    type NextTaskStream = TaskStream;

    async fn join(&self, r: Request<pb::Hello>) -> Result<Response<pb::Welcome>, Status> {
        self.up().join(r.into_inner()).await
    }

    async fn agree(
        &self,
        r: Request<pb::AgreeRequest>,
    ) -> Result<Response<pb::AgreeReply>, Status> {
        self.up().agree(r.into_inner()).await
    }

    async fn next_task(&self, r: Request<pb::TaskRequest>) -> Result<Response<TaskStream>, Status> {
        let stream = self.up().next_task(r.into_inner()).await?.into_inner();
        let rewrite = self.rewrite;
        let lied = stream.map(move |part| {
            part.map(|mut task| {
                if let Some(pb::task::Part::Header(header)) = &mut task.part {
                    rewrite(header);
                }
                task
            })
        });
        Ok(Response::new(Box::pin(lied)))
    }

    async fn submit_update(
        &self,
        r: Request<Streaming<pb::UpdatePart>>,
    ) -> Result<Response<pb::UpdateReply>, Status> {
        self.updates.fetch_add(1, Ordering::SeqCst);
        let chunks = Arc::clone(&self.chunks);
        let parts = r.into_inner().filter_map(Result::ok).map(move |part| {
            if let Some(pb::update_part::Part::Chunk(c)) = &part.part
                && c.set == 0
            {
                chunks.lock().unwrap().push((c.tensor, c.values.to_vec()));
            }
            part
        });
        self.up().submit_update(parts).await
    }

    async fn submit_evaluation(
        &self,
        r: Request<pb::EvaluationReport>,
    ) -> Result<Response<pb::EvaluationReply>, Status> {
        self.up().submit_evaluation(r.into_inner()).await
    }

    async fn secure_aggregation(
        &self,
        r: Request<pb::SecAggRequest>,
    ) -> Result<Response<pb::SecAggReply>, Status> {
        self.up().secure_aggregation(r.into_inner()).await
    }

    async fn heartbeat(
        &self,
        r: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        self.up().heartbeat(r.into_inner()).await
    }

    async fn withdraw(
        &self,
        r: Request<pb::WithdrawRequest>,
    ) -> Result<Response<pb::WithdrawReply>, Status> {
        self.up().withdraw(r.into_inner()).await
    }

    async fn post_join_message(
        &self,
        r: Request<pb::JoinPost>,
    ) -> Result<Response<pb::JoinPostReply>, Status> {
        self.up().post_join_message(r.into_inner()).await
    }

    async fn poll_join_messages(
        &self,
        r: Request<pb::JoinPollRequest>,
    ) -> Result<Response<pb::JoinPollReply>, Status> {
        self.up().poll_join_messages(r.into_inner()).await
    }

    async fn submit_site_answer(
        &self,
        r: Request<pb::SiteAnswer>,
    ) -> Result<Response<pb::SiteAnswerReply>, Status> {
        self.up().submit_site_answer(r.into_inner()).await
    }
}

/// Serves a [`Liar`] in front of `upstream` on 127.0.0.1; its URL, the
/// count of updates sent through it and their chunks.
fn serve_liar(
    runtime: &tokio::runtime::Runtime,
    upstream: &str,
    rewrite: fn(&mut pb::TaskHeader),
) -> (String, Arc<AtomicUsize>, Chunks) {
    let _inside = runtime.enter();
    let updates = Arc::new(AtomicUsize::new(0));
    let incoming =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = incoming.local_addr().unwrap();
    let channel = Channel::from_shared(upstream.to_string())
        .unwrap()
        .connect_lazy();
    let liar = Liar {
        upstream: FederationClient::new(channel).max_decoding_message_size(64 << 20),
        rewrite,
        updates: Arc::clone(&updates),
        chunks: Chunks::default(),
    };
    let chunks = Arc::clone(&liar.chunks);
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(FederationServer::new(liar).max_decoding_message_size(64 << 20))
            .serve_with_incoming(incoming),
    );
    (format!("http://{address}"), updates, chunks)
}

/// `strategy` (FedPer or FedRep, with `settings`) on Fed-Heart-Disease
/// with an MLP, two rounds.
fn personal_text(s: &Scratch, (strategy, settings): (&str, &str)) -> String {
    heart_text(s, 2)
        .replace("kind = \"logistic\"", "kind = \"mlp\"\nhidden = [8]")
        .replace(
            "strategy = \"fedavg\"",
            &format!("strategy = \"{strategy}\""),
        )
        + "\n[privacy]\nsite_metrics = \"clear\"\n"
        + settings
}

/// Runs the plan `text` (written as `NAME.toml`) with every heart site
/// behind a proxy that rewrites tasks with `rewrite`; the sites'
/// processes, the coordinator, the count of updates that passed and their
/// chunks.
fn behind(
    s: &Scratch,
    runtime: &tokio::runtime::Runtime,
    (name, text): (&str, &str),
    rewrite: fn(&mut pb::TaskHeader),
) -> (
    Vec<util::procs::Proc>,
    util::procs::Proc,
    Arc<AtomicUsize>,
    Chunks,
) {
    let plan = s.write(&format!("{name}.toml"), text);
    let (coordinator, url) = coordinator(&s.dir, &plan, &s.path("r.sqlite"), 0, &[]);
    let (liar, updates, chunks) = serve_liar(runtime, &url, rewrite);
    let sites = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &liar, site, &["--give-up-after", "20"]))
        .collect();
    (sites, coordinator, updates, chunks)
}

/// Under multi-task, a coordinator that asks each site to train the other
/// task's head (to steer it with rows of another target) is refused at
/// every site before it trains, saying why; no update passes.
#[test]
fn multitask_sites_refuse_to_train_another_tasks_head() {
    if util::skip_e2e("multitask_sites_refuse_to_train_another_tasks_head") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let s = Scratch::new("hostile-coordinator-multitask");
    let text = crate::multitask::multitask_text(2);
    let (mut sites, mut coordinator, updates, _) =
        behind(&s, &runtime, ("multitask", &text), |h| {
            if let Some(pb::Instructions {
                kind: Some(Kind::Multitask(m)),
            }) = &mut h.instructions
            {
                m.task = 1 - m.task;
            }
        });
    for (p, site) in sites.iter_mut().zip(HEART_SITES) {
        assert!(!p.wait(LIMIT).success(), "{site} trained: {}", p.log());
        let (own, other) = match site {
            "cleveland" | "va" => (0, 1),
            _ => (1, 0),
        };
        let log = p.log();
        assert!(
            log.contains(&format!(
                "plan refused: the coordinator's task asks for multitask (task {other} of 2), \
                 not what the plan's strategy fedavg gives (multitask (task {own} of 2))"
            )),
            "{site}: {log}"
        );
    }
    assert_eq!(updates.load(Ordering::SeqCst), 0, "an update passed");
    coordinator.kill_9();
}

/// The attack: FedPer's instructions stripped, so that the task asks for
/// FedAvg's whole-model update. Every site refuses before training, saying
/// why at the site; no update passes, and the coordinator's database holds
/// no round. The control, the same proxy passing tasks unchanged, runs to
/// the end (the proxy is faithful, and the refusal is the sites'), and no
/// head value is on the wire.
#[test]
fn fedper_sites_refuse_a_coordinator_that_asks_for_their_heads() {
    if util::skip_e2e("fedper_sites_refuse_a_coordinator_that_asks_for_their_heads") {
        return;
    }
    refuse_the_liar(("fedper", ""));
}

/// The same against FedRep's sites.
#[test]
fn fedrep_sites_refuse_a_coordinator_that_asks_for_their_heads() {
    if util::skip_e2e("fedrep_sites_refuse_a_coordinator_that_asks_for_their_heads") {
        return;
    }
    refuse_the_liar(("fedrep", "\n[strategies.fedrep]\nhead_passes = 3\n"));
}

fn refuse_the_liar(strategy: (&str, &str)) {
    let name = strategy.0;
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let s = Scratch::new(&format!("hostile-coordinator-control-{name}"));
    let text = personal_text(&s, strategy);
    let (mut sites, mut coordinator, updates, chunks) = behind(&s, &runtime, (name, &text), |_| {});
    for p in &mut sites {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    let passed = updates.load(Ordering::SeqCst);
    println!("{name} control: {passed} updates passed the proxy");
    assert!(passed >= 8, "the control's updates");
    // On the wire: the MLP's tensors are the hidden layer's weight and
    // bias, then the head's (2 and 3); the head's values are all zero, the
    // body's are not.
    let chunks = chunks.lock().unwrap();
    let values = |tensor: u32| -> Vec<f32> {
        chunks
            .iter()
            .filter(|(t, _)| *t == tensor)
            .flat_map(|(_, bytes)| {
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            })
            .collect()
    };
    assert!(
        chunks.iter().all(|(t, _)| *t < 4),
        "a tensor beyond the MLP's four"
    );
    let body: Vec<f32> = values(0).into_iter().chain(values(1)).collect();
    assert!(body.iter().any(|v| *v != 0.0), "no body change passed");
    let head: Vec<f32> = values(2).into_iter().chain(values(3)).collect();
    assert!(head.iter().all(|v| *v == 0.0), "a head value on the wire");
    println!(
        "{name} control: {} body values on the wire, {} head values, all zero",
        body.len(),
        head.len()
    );
    drop(chunks);

    // The lies: (name, the rewrite, what the task then asks for).
    type Lie = (&'static str, fn(&mut pb::TaskHeader), &'static str);
    fn arm(kind: Kind) -> Option<pb::Instructions> {
        Some(pb::Instructions { kind: Some(kind) })
    }
    let lies: [Lie; 3] = [
        ("stripped", |h| h.instructions = None, "plain"),
        (
            "ditto",
            |h| h.instructions = arm(Kind::Ditto(pb::Ditto { lambda: 0.1 })),
            "ditto (lambda 0.1)",
        ),
        (
            "two head layers",
            |h| h.instructions = arm(Kind::Fedper(pb::FedPer { head_layers: 2 })),
            "fedper (head_layers 2)",
        ),
    ];
    for (lie, rewrite, asked) in lies {
        let s = Scratch::new(&format!(
            "hostile-coordinator-{name}-{}",
            lie.replace(' ', "-")
        ));
        let text = personal_text(&s, strategy);
        let (mut sites, mut coordinator, updates, _) = behind(&s, &runtime, (name, &text), rewrite);
        for (p, site) in sites.iter_mut().zip(HEART_SITES) {
            assert!(!p.wait(LIMIT).success(), "{site} trained: {}", p.log());
            let log = p.log();
            assert!(
                log.contains(&format!(
                    "plan refused: the coordinator's task asks for {asked}, not what the plan's \
                     strategy {name} gives"
                )),
                "{lie}, {site}: {log}"
            );
            let said = log.lines().rev().find(|l| l.contains("gives ("));
            assert_eq!(
                p.wait(LIMIT).code(),
                Some(17),
                "{lie}, {site}: the plan-refused exit code"
            );
            println!("{lie}, {site}: {}", said.unwrap_or_default());
        }
        assert_eq!(updates.load(Ordering::SeqCst), 0, "{lie}: an update passed");
        coordinator.kill_9();
        let rounds =
            util::procs::query_i64(&s.path("r.sqlite"), "SELECT COUNT(*) FROM round_aggregates");
        assert_eq!(rounds, 0, "{lie}");
    }
}
