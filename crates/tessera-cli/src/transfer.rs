//! `tessera bench-transfer`: one parameter set down and back up over the real
//! gRPC messages (a task's chunks, an update's chunks), with each side's peak
//! memory. The server checks the values as they stream back, without holding
//! a second copy; the client holds the one set it received.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use tessera_core::{ParameterSet, Tensor};
use tessera_proto::pb::federation_client::FederationClient;
use tessera_proto::pb::federation_server::{Federation, FederationServer};
use tessera_proto::pb::{self, task, update_part};
use tessera_proto::{Assembler, CHUNK_BYTES, Limits, chunks, layout_of};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Arguments of `tessera bench-transfer`.
#[derive(Debug, clap::Args)]
pub struct TransferArgs {
    #[command(subcommand)]
    side: Side,
}

#[derive(Debug, clap::Subcommand)]
enum Side {
    /// Hold a parameter set of `--floats` values and serve it.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Values in the parameter set (250000000: 1 GB).
        #[arg(long)]
        floats: u64,
    },
    /// Fetch the set, send it back, report.
    Fetch {
        /// The server's URL.
        #[arg(long)]
        url: String,
    },
}

fn value(i: usize) -> f32 {
    (i % 1_000_003) as f32 * 1e-3
}

fn peak_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb * 1024.0 / 1e6)
}

struct Server {
    params: Arc<ParameterSet>,
    done: tokio::sync::mpsc::Sender<String>,
}

type TaskStream = Pin<Box<dyn Stream<Item = Result<pb::Task, Status>> + Send>>;

#[tonic::async_trait]
impl Federation for Server {
    async fn join(&self, _: Request<pb::Hello>) -> Result<Response<pb::Welcome>, Status> {
        Err(Status::unimplemented("transfer benchmark"))
    }
    async fn agree(
        &self,
        _: Request<pb::AgreeRequest>,
    ) -> Result<Response<pb::AgreeReply>, Status> {
        Err(Status::unimplemented("transfer benchmark"))
    }
    type NextTaskStream = TaskStream;
    async fn next_task(&self, _: Request<pb::TaskRequest>) -> Result<Response<TaskStream>, Status> {
        let params = Arc::clone(&self.params);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let header = pb::TaskHeader {
                round: 1,
                kind: pb::TaskKind::Fit as i32,
                layout: layout_of(&params),
                ..Default::default()
            };
            if tx
                .send(Ok(pb::Task {
                    part: Some(task::Part::Header(header)),
                }))
                .await
                .is_err()
            {
                return;
            }
            for chunk in chunks(0, &params, CHUNK_BYTES) {
                if tx
                    .send(Ok(pb::Task {
                        part: Some(task::Part::Chunk(chunk)),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as TaskStream,
        ))
    }
    async fn submit_update(
        &self,
        request: Request<Streaming<pb::UpdatePart>>,
    ) -> Result<Response<pb::UpdateReply>, Status> {
        let mut stream = request.into_inner();
        let mut checked = 0usize;
        let mut wrong = 0usize;
        while let Some(part) = stream.message().await? {
            if let Some(update_part::Part::Chunk(chunk)) = part.part {
                for (k, b) in chunk.values.chunks_exact(4).enumerate() {
                    let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    if v != value(chunk.offset as usize + k) {
                        wrong += 1;
                    }
                    checked += 1;
                }
            }
        }
        let _ = self
            .done
            .send(format!(
                "server: {checked} values back, {wrong} wrong; peak {:.0} MB",
                peak_mb()
            ))
            .await;
        Ok(Response::new(pb::UpdateReply {
            accepted: wrong == 0 && checked == self.params.n_values(),
            reason: String::new(),
        }))
    }
    async fn submit_evaluation(
        &self,
        _: Request<pb::EvaluationReport>,
    ) -> Result<Response<pb::EvaluationReply>, Status> {
        Err(Status::unimplemented("transfer benchmark"))
    }
    async fn heartbeat(
        &self,
        _: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        Err(Status::unimplemented("transfer benchmark"))
    }
    async fn secure_aggregation(
        &self,
        _: Request<pb::SecAggRequest>,
    ) -> Result<Response<pb::SecAggReply>, Status> {
        Err(Status::unimplemented("transfer benchmark"))
    }
    async fn withdraw(
        &self,
        _: Request<pb::WithdrawRequest>,
    ) -> Result<Response<pb::WithdrawReply>, Status> {
        Err(Status::unimplemented("transfer benchmark"))
    }
    async fn post_join_message(
        &self,
        _: Request<pb::JoinPost>,
    ) -> Result<Response<pb::JoinPostReply>, Status> {
        Err(Status::unimplemented("transfer benchmark"))
    }
    async fn poll_join_messages(
        &self,
        _: Request<pb::JoinPollRequest>,
    ) -> Result<Response<pb::JoinPollReply>, Status> {
        Err(Status::unimplemented("transfer benchmark"))
    }
    async fn submit_site_answer(
        &self,
        _: Request<pb::SiteAnswer>,
    ) -> Result<Response<pb::SiteAnswerReply>, Status> {
        Err(Status::unimplemented("transfer benchmark"))
    }
}

pub fn run(args: &TransferArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    match &args.side {
        Side::Serve { listen, floats } => runtime.block_on(serve(*listen, *floats)),
        Side::Fetch { url } => runtime.block_on(fetch(url)),
    }
}

async fn serve(listen: SocketAddr, floats: u64) -> anyhow::Result<()> {
    if floats == 0 || floats > 1 << 31 {
        bail!("--floats must be between 1 and 2^31");
    }
    let n = usize::try_from(floats)?;
    let mut params = ParameterSet::new();
    params.push("w", Tensor::new(vec![n], (0..n).map(value).collect())?)?;
    let model_mb = (n * 4) as f64 / 1e6;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    println!(
        "server: holds {model_mb:.0} MB of parameters; peak before transfer {:.0} MB",
        peak_mb()
    );
    let (done, mut finished) = tokio::sync::mpsc::channel(1);
    let service = FederationServer::new(Server {
        params: Arc::new(params),
        done,
    });
    let stop = async move {
        if let Some(line) = finished.recv().await {
            println!("{line}");
        }
    };
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(tessera_tls::plain_incoming(listener), stop)
        .await?;
    Ok(())
}

async fn fetch(url: &str) -> anyhow::Result<()> {
    let mut client = FederationClient::connect(url.to_string()).await?;
    let started = Instant::now();
    let mut stream = client
        .next_task(pb::TaskRequest {
            site: "bench".into(),
            held_round: None,
        })
        .await?
        .into_inner();
    let Some(pb::Task {
        part: Some(task::Part::Header(header)),
    }) = stream.message().await?
    else {
        bail!("no task header");
    };
    let mut assembler = Assembler::new(&header.layout, Limits::default())?;
    while let Some(message) = stream.message().await? {
        if let Some(task::Part::Chunk(chunk)) = message.part {
            assembler.push(&chunk)?;
        }
    }
    let params = Arc::new(assembler.finish()?);
    let down = started.elapsed().as_secs_f64();
    let bytes = params.n_values() * 4;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let sending = Arc::clone(&params);
    tokio::spawn(async move {
        let header = pb::UpdatePart {
            part: Some(update_part::Part::Header(pb::UpdateHeader {
                layout: layout_of(&sending),
                ..Default::default()
            })),
        };
        if tx.send(header).await.is_err() {
            return;
        }
        for chunk in chunks(0, &sending, CHUNK_BYTES) {
            if tx
                .send(pb::UpdatePart {
                    part: Some(update_part::Part::Chunk(chunk)),
                })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let reply = client
        .submit_update(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let total = started.elapsed().as_secs_f64();
    println!(
        "client: {:.0} MB down in {down:.2} s, back up in {:.2} s; {}; peak {:.0} MB",
        bytes as f64 / 1e6,
        total - down,
        if reply.accepted {
            "all values intact"
        } else {
            "values differ"
        },
        peak_mb()
    );
    if !reply.accepted {
        bail!("the parameters did not survive the round trip");
    }
    Ok(())
}
