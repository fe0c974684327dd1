//! The gRPC face of the federation: every call is validated, then handed to
//! the [`Federation`](crate::Federation)'s own thread ([`Shared`]) and its answer awaited.

mod joins;
mod limits;
mod secure;

pub(crate) use limits::ConnectionLimits;

use std::pin::Pin;
use std::sync::Arc;

use prost::Message;
use tessera_compress::Codec;
use tessera_core::Update;
use tessera_proto::pb::federation_server::Federation as FederationService;
use tessera_proto::pb::{self, task, update_part};
use tessera_proto::{Assembler, CHUNK_BYTES, Limits, MAX_WITHDRAW_REASON, chunks, convert};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, Span};

use crate::shared::Shared;
use crate::state::{ModelPart, Refusal, TaskView};

fn refused(refusal: Refusal) -> Status {
    match refusal {
        Refusal::Invalid(m) => Status::invalid_argument(m),
        Refusal::Denied(m) => Status::permission_denied(m),
        Refusal::Unavailable(m) => Status::unavailable(m),
        Refusal::InUse(m) => Status::already_exists(m),
    }
}

/// The service.
pub struct Service {
    shared: Arc<Shared>,
    callers: Arc<tessera_tls::Callers>,
    connections: ConnectionLimits,
}

impl Service {
    /// A service over `shared`, its callers checked by `callers`.
    pub fn new(shared: Arc<Shared>, callers: Arc<tessera_tls::Callers>) -> Self {
        Self {
            shared,
            callers,
            connections: ConnectionLimits::default(),
        }
    }

    fn admit<T>(&self, request: &Request<T>) -> Result<Option<std::net::SocketAddr>, Status> {
        self.connections.admit(request)
    }

    /// The span of a participant's report on the round in progress: under
    /// the round's span in the trace (not in this process's span tree: a
    /// caller that holds its call open cannot hold the round's span open),
    /// linked to, never parented by, the caller's own span.
    async fn report_span(&self, metadata: &tonic::metadata::MetadataMap, update: bool) -> Span {
        let round = self
            .shared
            .call(|f| f.round_span())
            .await
            .unwrap_or_else(|_| Span::none());
        let span = if update {
            tracing::info_span!(parent: None, "receive_update")
        } else {
            tracing::info_span!(parent: None, "receive_evaluation")
        };
        tessera_proto::trace::under(&span, &round);
        tessera_proto::trace::link(&span, metadata);
        span
    }

    fn settle<R>(
        &self,
        peer: Option<std::net::SocketAddr>,
        result: Result<R, Status>,
    ) -> Result<R, Status> {
        self.connections.settle(peer, result)
    }

    /// The site a request speaks for, checked against its client
    /// certificate (which must name it and must not have been revoked since
    /// the connection opened); a refusal is audited.
    async fn check(
        &self,
        certs: Option<Arc<Vec<tonic::transport::CertificateDer<'static>>>>,
        claimed: &str,
        action: &'static str,
    ) -> Result<String, Status> {
        let reason = if claimed.len() > tessera_proto::MAX_SITE_NAME {
            Some(Status::invalid_argument(format!(
                "a site name is at most {} bytes, got {}",
                tessera_proto::MAX_SITE_NAME,
                claimed.len()
            )))
        } else if claimed.chars().any(char::is_control) {
            Some(Status::invalid_argument(
                "a site name has no control characters (line breaks, tabs, escapes)",
            ))
        } else {
            self.callers
                .check(certs.as_deref().map(Vec::as_slice), claimed)
                .err()
                .map(Status::permission_denied)
        };
        if let Some(status) = reason {
            let (claimed, reason) = (claimed.to_string(), status.message().to_string());
            self.shared
                .call(move |f| f.reject_audit(&claimed, action, &reason))
                .await?;
            return Err(status);
        }
        Ok(claimed.to_string())
    }

    async fn caller<T>(&self, request: &Request<T>, claimed: &str) -> Result<String, Status> {
        let certs = request.peer_certs();
        self.check(certs, claimed, "identity").await
    }
}

/// Whether a call that ended with `code` was refused for what it said (not
/// cut off by the network, a timeout or the coordinator stopping).
/// A crash drill: with `TESSERA_DRILL_CRASH_AFTER_STORING=SITE:ROUND` the
/// coordinator exits (137, as if killed) right after storing that site's
/// update of that round, before it replies: the worst moment for the
/// site, whose update counts although it heard nothing. For failure drills
/// and tests; a restart resumes from the database.
fn crash_drill(site: &str, round: u32) {
    static DRILL: std::sync::OnceLock<Option<(String, u32)>> = std::sync::OnceLock::new();
    let drill = DRILL.get_or_init(|| {
        let value = std::env::var("TESSERA_DRILL_CRASH_AFTER_STORING").ok()?;
        let (who, round) = value.rsplit_once(':')?;
        Some((who.to_string(), round.parse().ok()?))
    });
    if drill
        .as_ref()
        .is_some_and(|(who, r)| who == site && *r == round)
    {
        tracing::error!(%site, round, "crash drill: exiting after storing the update, before replying");
        std::process::exit(137);
    }
}

/// The caller's verified end-entity certificate (DER), with mutual TLS.
fn end_entity<T>(request: &Request<T>) -> Option<Vec<u8>> {
    request
        .peer_certs()
        .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()))
}

type TaskStream = Pin<Box<dyn Stream<Item = Result<pb::Task, Status>> + Send>>;

#[tonic::async_trait]
impl FederationService for Service {
    type NextTaskStream = TaskStream;

    async fn join(&self, request: Request<pb::Hello>) -> Result<Response<pb::Welcome>, Status> {
        let peer = self.admit(&request)?;
        let span = tracing::info_span!(parent: None, "join");
        tessera_proto::trace::link(&span, request.metadata());
        let result = self.join_call(request).instrument(span).await;
        self.settle(peer, result)
    }

    async fn agree(
        &self,
        request: Request<pb::AgreeRequest>,
    ) -> Result<Response<pb::AgreeReply>, Status> {
        let peer = self.admit(&request)?;
        let span = tracing::info_span!(parent: None, "agree");
        tessera_proto::trace::link(&span, request.metadata());
        let result = self.agree_call(request).instrument(span).await;
        self.settle(peer, result)
    }

    async fn next_task(
        &self,
        request: Request<pb::TaskRequest>,
    ) -> Result<Response<Self::NextTaskStream>, Status> {
        let peer = self.admit(&request)?;
        let result = self.next_task_call(request).await;
        self.settle(peer, result)
    }

    async fn submit_update(
        &self,
        request: Request<Streaming<pb::UpdatePart>>,
    ) -> Result<Response<pb::UpdateReply>, Status> {
        let peer = self.admit(&request)?;
        let span = self.report_span(request.metadata(), true).await;
        let result = self.submit_update_call(request).instrument(span).await;
        self.settle(peer, result)
    }

    async fn submit_evaluation(
        &self,
        request: Request<pb::EvaluationReport>,
    ) -> Result<Response<pb::EvaluationReply>, Status> {
        let peer = self.admit(&request)?;
        let span = self.report_span(request.metadata(), false).await;
        let result = self.submit_evaluation_call(request).instrument(span).await;
        self.settle(peer, result)
    }

    async fn secure_aggregation(
        &self,
        request: Request<pb::SecAggRequest>,
    ) -> Result<Response<pb::SecAggReply>, Status> {
        let peer = self.admit(&request)?;
        let result = self.secure_aggregation_call(request).await;
        self.settle(peer, result)
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let peer = self.admit(&request)?;
        let result = self.heartbeat_call(request).await;
        self.settle(peer, result)
    }

    async fn withdraw(
        &self,
        request: Request<pb::WithdrawRequest>,
    ) -> Result<Response<pb::WithdrawReply>, Status> {
        let peer = self.admit(&request)?;
        let result = self.withdraw_call(request).await;
        self.settle(peer, result)
    }

    async fn post_join_message(
        &self,
        request: Request<pb::JoinPost>,
    ) -> Result<Response<pb::JoinPostReply>, Status> {
        let peer = self.admit(&request)?;
        let result = self.post_join_message_call(request).await;
        self.settle(peer, result)
    }

    async fn poll_join_messages(
        &self,
        request: Request<pb::JoinPollRequest>,
    ) -> Result<Response<pb::JoinPollReply>, Status> {
        let peer = self.admit(&request)?;
        let result = self.poll_join_messages_call(request).await;
        self.settle(peer, result)
    }

    async fn submit_site_answer(
        &self,
        request: Request<pb::SiteAnswer>,
    ) -> Result<Response<pb::SiteAnswerReply>, Status> {
        let peer = self.admit(&request)?;
        let result = self.submit_site_answer_call(request).await;
        self.settle(peer, result)
    }
}

/// The calls themselves, each behind its connection's refusal limit.
impl Service {
    async fn join_call(
        &self,
        request: Request<pb::Hello>,
    ) -> Result<Response<pb::Welcome>, Status> {
        let site = self.caller(&request, &request.get_ref().site).await?;
        let certificate = end_entity(&request);
        let session = match request.metadata().get(tessera_proto::SESSION_HEADER) {
            None => None,
            Some(value) => match value.to_str() {
                Ok(s) if s.len() <= tessera_proto::MAX_SESSION => Some(s.to_string()),
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "a join's {} is at most {} bytes of text",
                        tessera_proto::SESSION_HEADER,
                        tessera_proto::MAX_SESSION
                    )));
                }
            },
        };
        let hello = request.into_inner();
        let (who, minor) = (site.clone(), hello.minor);
        let welcome = self
            .shared
            .call(move |f| {
                let welcome = f.join_as(&who, &hello, session.as_deref())?;
                f.remember_certificate(&who, certificate);
                Ok(welcome)
            })
            .await?
            .map_err(refused)?;
        // A site that left and came back is waited for again.
        if let Ok(mut told) = self.shared.told_finished.lock() {
            told.remove(&site);
        }
        tracing::info!(%site, minor, "joined");
        Ok(Response::new(welcome))
    }

    async fn agree_call(
        &self,
        request: Request<pb::AgreeRequest>,
    ) -> Result<Response<pb::AgreeReply>, Status> {
        let site = self.caller(&request, &request.get_ref().site).await?;
        let offer = request
            .into_inner()
            .offer
            .ok_or_else(|| Status::invalid_argument("agreement request without an offer"))?;
        let mut changes = self.shared.subscribe();
        let poll = self.shared.call(|f| f.heartbeat_interval()).await?;
        loop {
            let (site, offer) = (site.clone(), offer.clone());
            let result = self
                .shared
                .call(move |f| match offer {
                    // A dry run that ended tells the sites still agreeing.
                    _ if f.dry_run_over().is_some() => Err(crate::state::Refusal::Denied(
                        f.dry_run_over().unwrap_or_default().to_string(),
                    )),
                    _ if f.in_rollout() => Err(crate::state::Refusal::Denied(
                        "this run is a rollout of a registered model: it has no data agreement"
                            .into(),
                    )),
                    pb::agree_request::Offer::Kinds(k) => f.offer_kinds(&site, k).map(|r| {
                        r.map(|k| pb::agree_reply::Result::Kinds(convert::kinds_to_pb(&k)))
                    }),
                    pb::agree_request::Offer::Statistics(st) => {
                        f.offer_statistics(&site, st).map(|r| {
                            r.map(|s| {
                                pb::agree_reply::Result::Statistics(convert::statistics_to_pb(&s))
                            })
                        })
                    }
                    pb::agree_request::Offer::Levels(l) => f.offer_levels(&site, l).map(|r| {
                        r.map(|a| {
                            let mut agreed = convert::agreement_to_pb(&a);
                            agreed.initial_model_sha256 = f.initial_model_sha256();
                            pb::agree_reply::Result::Agreement(agreed)
                        })
                    }),
                    pb::agree_request::Offer::External(e) => f
                        .offer_external(&site, e)
                        .map(|r| r.map(pb::agree_reply::Result::External)),
                })
                .await?
                .map_err(refused)?;
            if let Some(result) = result {
                return Ok(Response::new(pb::AgreeReply {
                    result: Some(result),
                }));
            }
            let _ = tokio::time::timeout(poll, changes.changed()).await;
        }
    }

    async fn next_task_call(
        &self,
        request: Request<pb::TaskRequest>,
    ) -> Result<Response<TaskStream>, Status> {
        let site = self.caller(&request, &request.get_ref().site).await?;
        let held = request.get_ref().held_round;
        let shared = Arc::clone(&self.shared);
        let mut changes = shared.subscribe();
        // Looking again every heartbeat interval also shows the waiting
        // participant is alive.
        let poll = shared.call(|f| f.heartbeat_interval()).await?;
        // Wait here (not in the stream) so that refusals come back as errors.
        let (view, round) = loop {
            let who = site.clone();
            match shared
                .call(move |f| f.task_for(&who, held).map(|v| (v, f.round_span())))
                .await?
                .map_err(refused)?
            {
                (TaskView::Wait, _) => {
                    let _ = tokio::time::timeout(poll, changes.changed()).await;
                }
                task => break task,
            }
        };
        // A round's task is sent under the round's span (in the trace only,
        // so that a participant that never reads it cannot hold the round
        // open), and carries its context to the participant, whose spans
        // join the round's trace.
        let span = match &view {
            TaskView::Fit { header, .. } | TaskView::Evaluate { header, .. } => {
                let span = tracing::info_span!(parent: None, "send_task", %site, round = header.round, kind = header.kind().as_str_name());
                tessera_proto::trace::under(&span, &round);
                span
            }
            _ => Span::none(),
        };
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(
            async move {
                let send = |part| pb::Task { part: Some(part) };
                let mut sent = 0usize;
                let finished = match &view {
                    TaskView::Finished => Some(pb::Finished {
                        reason: "every round is done".into(),
                        serve: None,
                    }),
                    TaskView::RolloutOver { serve, reason } => Some(pb::Finished {
                        reason: reason.clone(),
                        serve: Some(serve.clone()),
                    }),
                    _ => None,
                };
                if let Some(finished) = finished {
                    shared
                        .told_finished
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(site.clone());
                    let _ = tx.send(Ok(send(task::Part::Finished(finished)))).await;
                    return;
                }
                let (header, model, sets) = match view {
                    TaskView::Wait | TaskView::Finished | TaskView::RolloutOver { .. } => return,
                    TaskView::Rollout { header, files } => {
                        let message = send(task::Part::Header(header));
                        sent += message.encoded_len();
                        if tx.send(Ok(message)).await.is_err() {
                            return;
                        }
                        for piece in files.iter().flat_map(|f| f.chunks(CHUNK_BYTES)) {
                            let message = send(task::Part::Compressed(piece.to_vec()));
                            sent += message.encoded_len();
                            if tx.send(Ok(message)).await.is_err() {
                                return;
                            }
                        }
                        let _ = shared.call(move |f| f.count_down(&site, sent)).await;
                        return;
                    }
                    TaskView::Fit {
                        header,
                        global,
                        tensors,
                        model,
                    } => (header, model, vec![Some(global), tensors]),
                    TaskView::Evaluate {
                        header,
                        global,
                        model,
                    } => (header, model, vec![Some(global)]),
                    TaskView::Analyze { header } => (header, ModelPart::Held, Vec::new()),
                };
                let message = send(task::Part::Header(header));
                sent += message.encoded_len();
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
                // The model's change in pieces, when the participant holds the previous one.
                if let ModelPart::Change(bytes) = &model {
                    for piece in bytes.chunks(CHUNK_BYTES) {
                        let message = send(task::Part::Compressed(piece.to_vec()));
                        sent += message.encoded_len();
                        if tx.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                }
                for (index, set) in sets.into_iter().enumerate() {
                    let Some(set) = set else { continue };
                    if index == 0 && model != ModelPart::Whole {
                        continue;
                    }
                    for chunk in chunks(index as u32, &set, CHUNK_BYTES) {
                        let message = send(task::Part::Chunk(chunk));
                        sent += message.encoded_len();
                        if tx.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                }
                let _ = shared.call(move |f| f.count_down(&site, sent)).await;
            }
            .instrument(span.clone()),
        );
        let mut response = Response::new(Box::pin(ReceiverStream::new(rx)) as TaskStream);
        tessera_proto::trace::inject(&span, response.metadata_mut());
        Ok(response)
    }

    async fn submit_update_call(
        &self,
        request: Request<Streaming<pb::UpdatePart>>,
    ) -> Result<Response<pb::UpdateReply>, Status> {
        let identity = request.peer_certs();
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty update stream"))?;
        let started = std::time::Instant::now();
        let mut received = first.encoded_len();
        let Some(update_part::Part::Header(header)) = first.part else {
            return Err(Status::invalid_argument("an update starts with its header"));
        };
        let site = self.check(identity, &header.site, "update").await?;
        let train_seconds = convert::train_seconds_from_pb(&header);
        let result = match &train_seconds {
            Ok(_) => {
                self.receive_update(&site, &header, &mut stream, &mut received)
                    .await
            }
            Err(e) => Err(e.to_string()),
        };
        let seconds = started.elapsed().as_secs_f64();
        let codec = header.codec.parse::<Codec>().unwrap_or(Codec::NONE);
        let who = site.clone();
        self.shared
            .call(move |f| f.count_update(&who, received, codec, seconds, started))
            .await?;
        let (update, gradient) = match result {
            Ok(received) => received,
            Err(reason) => {
                let audit = reason.clone();
                self.shared
                    .call(move |f| f.reject_audit(&site, "update", &audit))
                    .await?;
                return Err(Status::invalid_argument(reason));
            }
        };
        let round = header.round;
        let who = site.clone();
        let train_seconds = train_seconds.ok().flatten();
        let quality = header.quality;
        let reply = match self
            .shared
            .call(move |f| {
                let extras = crate::UpdateExtras { gradient, quality };
                let counted = f.submit_update_with(&site, round, &update, extras);
                if let (Ok(()), Some(seconds)) = (&counted, train_seconds) {
                    f.note_training(&site, round, seconds);
                }
                counted
            })
            .await?
        {
            Ok(()) => {
                crash_drill(&who, round);
                pb::UpdateReply {
                    accepted: true,
                    reason: String::new(),
                }
            }
            Err(Refusal::Invalid(reason)) => pb::UpdateReply {
                accepted: false,
                reason,
            },
            Err(denied) => return Err(refused(denied)),
        };
        Ok(Response::new(reply))
    }

    async fn submit_evaluation_call(
        &self,
        request: Request<pb::EvaluationReport>,
    ) -> Result<Response<pb::EvaluationReply>, Status> {
        let site = self.caller(&request, &request.get_ref().site).await?;
        let report = request.into_inner();
        let size = report.encoded_len();
        self.shared
            .call(move |f| {
                f.count_up(&site, size);
                f.submit_evaluation(&site, &report)
            })
            .await?
            .map_err(refused)?;
        Ok(Response::new(pb::EvaluationReply {}))
    }

    async fn heartbeat_call(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let site = self.caller(&request, &request.get_ref().site).await?;
        let round = request.get_ref().round;
        let keep_going = self
            .shared
            .call(move |f| f.heartbeat(&site, round))
            .await?
            .map_err(refused)?;
        Ok(Response::new(pb::HeartbeatReply { keep_going }))
    }

    async fn withdraw_call(
        &self,
        request: Request<pb::WithdrawRequest>,
    ) -> Result<Response<pb::WithdrawReply>, Status> {
        let site = self.caller(&request, &request.get_ref().site).await?;
        let pb::WithdrawRequest {
            round,
            reason,
            leaving,
            ..
        } = request.into_inner();
        if reason.len() > MAX_WITHDRAW_REASON {
            return Err(Status::invalid_argument(format!(
                "a withdrawal's reason is at most {MAX_WITHDRAW_REASON} bytes, got {}",
                reason.len()
            )));
        }
        let who = site.clone();
        let withdrawn = self
            .shared
            .call(move |f| f.withdraw(&who, round, &reason, leaving))
            .await?
            .map_err(refused)?;
        if leaving && let Ok(mut told) = self.shared.told_finished.lock() {
            told.insert(site);
        }
        Ok(Response::new(pb::WithdrawReply { withdrawn }))
    }
}

impl Service {
    /// Reads an update's chunks into parameter sets, checking them against
    /// the model: the update, and the test rows and test-loss gradient it
    /// came with where its header names rows (set 2, `[contribution]`).
    async fn receive_update(
        &self,
        site: &str,
        header: &pb::UpdateHeader,
        stream: &mut Streaming<pb::UpdatePart>,
        received: &mut usize,
    ) -> Result<(Update, Option<(u64, tessera_core::ParameterSet)>), String> {
        let layout = self.shared.call(|f| f.update_layout()).await;
        let Some((global, needs_aux)) = layout.map_err(|e| e.message().to_string())? else {
            return Err("no model yet".into());
        };
        let stats = convert::fit_stats_from_pb(header).map_err(|e| e.to_string())?;
        let mut delta =
            Assembler::new(&header.layout, Limits::default()).map_err(|e| e.to_string())?;
        delta.expect_layout_of(&global).map_err(|e| e.to_string())?;
        // A compressed delta: the codec the task named, its encoding no
        // longer than that codec's bound for this model.
        let codec = if header.codec.is_empty() {
            Codec::NONE
        } else {
            header
                .codec
                .parse::<Codec>()
                .map_err(|e| format!("update codec: {e}"))?
        };
        let (who, round) = (site.to_string(), header.round);
        let expected = self
            .shared
            .call(move |f| f.expected_codec(&who, round))
            .await
            .map_err(|e| e.message().to_string())?;
        if codec != expected {
            return Err(format!(
                "update encoded with '{codec}', but round {}'s task asked for '{expected}'",
                header.round
            ));
        }
        let mut compressed: Option<Vec<u8>> = (!codec.is_identity()).then(Vec::new);
        let bound = codec.max_encoded_len(global.n_values());
        // The strategy's auxiliary sum (SCAFFOLD's control-variate change), set 1.
        let mut aux = if header.has_control {
            if !needs_aux {
                return Err("this run's updates carry no auxiliary sum".into());
            }
            Some(Assembler::new(&header.layout, Limits::default()).map_err(|e| e.to_string())?)
        } else {
            None
        };
        // The test-loss gradient at the round's start, set 2, laid out as
        // the model.
        let mut gradient = match header.test_rows {
            Some(_) => {
                let g =
                    Assembler::new(&header.layout, Limits::default()).map_err(|e| e.to_string())?;
                g.expect_layout_of(&global).map_err(|e| e.to_string())?;
                Some(g)
            }
            None => None,
        };
        while let Some(part) = stream
            .message()
            .await
            .map_err(|e| format!("update stream broke: {}", e.message()))?
        {
            *received += part.encoded_len();
            let chunk = match part.part {
                Some(update_part::Part::Chunk(chunk)) => chunk,
                Some(update_part::Part::Compressed(piece)) => {
                    let Some(bytes) = compressed.as_mut() else {
                        return Err("compressed parts in an uncompressed update".into());
                    };
                    if bytes.len() + piece.len() > bound {
                        return Err(format!(
                            "the compressed delta passes {bound} bytes, the most '{codec}' takes"
                        ));
                    }
                    bytes.extend_from_slice(&piece);
                    continue;
                }
                _ => return Err("a second header in one update".into()),
            };
            let target = match (chunk.set, aux.as_mut(), gradient.as_mut()) {
                (0, _, _) if compressed.is_some() => {
                    return Err("a compressed update's delta came as chunks too".into());
                }
                (0, _, _) => &mut delta,
                (1, Some(c), _) => c,
                (2, _, Some(g)) => g,
                (set, _, _) => {
                    return Err(format!(
                        "chunk for parameter set {set}, which this update has not"
                    ));
                }
            };
            target.push(&chunk).map_err(|e| e.to_string())?;
        }
        let delta = match compressed {
            Some(bytes) => {
                tessera_compress::decode_set(&bytes, &global).map_err(|e| e.to_string())?
            }
            None => delta.finish().map_err(|e| e.to_string())?,
        };
        let gradient = match (header.test_rows, gradient) {
            (Some(rows), Some(g)) => Some((rows, g.finish().map_err(|e| e.to_string())?)),
            _ => None,
        };
        let update = Update {
            delta,
            n_examples: header.n_examples,
            aux: aux
                .map(Assembler::finish)
                .transpose()
                .map_err(|e| e.to_string())?,
            stats,
        };
        Ok((update, gradient))
    }
}
