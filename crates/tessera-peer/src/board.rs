//! What a peer publishes for its neighbours (its agreement offers and its
//! model after each round's training and averaging steps), and the gRPC
//! service that hands them out: a call waits until the peer has what it asks for.
//!
//! A peer publishes its offers, and each (round, step) model, before it asks
//! for anyone else's, so that calls that wait never wait in a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prost::Message;
use tessera_core::ParameterSet;
use tessera_proto::pb::gossip_server::Gossip;
use tessera_proto::pb::{self, peer_model_part};
use tessera_proto::{CAPABILITIES, CHUNK_BYTES, MAJOR, MINOR, chunks, layout_of};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Who this peer is and what it runs: callers must run the same.
pub(crate) struct Identity {
    pub site: String,
    pub sites: BTreeSet<String>,
    pub plan_digest: Vec<u8>,
    pub sites_digest: Vec<u8>,
}

#[derive(Default)]
struct Published {
    offers: BTreeMap<u32, pb::PeerOffer>,
    /// (round, step) -> the model and this peer's degree when it published it.
    models: BTreeMap<(u32, u32), (Arc<ParameterSet>, u32)>,
    /// Rounds before this one are no longer served.
    oldest: u32,
    /// (site, round, step) models sent, and bytes sent per site.
    served: BTreeSet<(String, u32, u32)>,
    bytes_sent: BTreeMap<String, u64>,
}

/// The published state, shared by the peer's loop and its service.
pub(crate) struct Board {
    pub identity: Identity,
    published: Mutex<Published>,
    changed: watch::Sender<u64>,
}

impl Board {
    pub fn new(identity: Identity) -> Arc<Self> {
        Arc::new(Self {
            identity,
            published: Mutex::new(Published::default()),
            changed: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Published> {
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn touch(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn publish_offer(&self, step: u32, offer: pb::PeerOffer) {
        self.lock().offers.insert(step, offer);
        self.touch();
    }

    /// Publishes the model of (`round`, `step`); rounds before `round - 1` are forgotten.
    pub fn publish_model(&self, round: u32, step: u32, model: Arc<ParameterSet>, degree: u32) {
        let mut published = self.lock();
        published.oldest = round.saturating_sub(1);
        let oldest = published.oldest;
        published.models.retain(|(r, _), _| *r >= oldest);
        published.models.insert((round, step), (model, degree));
        drop(published);
        self.touch();
    }

    /// Whether `site` has fetched the model of (`round`, `step`).
    pub fn served(&self, site: &str, round: u32, step: u32) -> bool {
        self.lock()
            .served
            .contains(&(site.to_string(), round, step))
    }

    /// Bytes sent to each site so far.
    pub fn bytes_sent(&self) -> BTreeMap<String, u64> {
        self.lock().bytes_sent.clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits until `check` gives a value (it is asked again at every change).
    async fn wait_for<T>(
        &self,
        mut check: impl FnMut(&mut Published) -> Option<Result<T, Status>>,
    ) -> Result<T, Status> {
        let mut changes = self.subscribe();
        loop {
            if let Some(result) = check(&mut self.lock()) {
                return result;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
        }
    }
}

/// The `Gossip` service of one peer.
pub(crate) struct Service {
    pub board: Arc<Board>,
    pub callers: tessera_tls::Callers,
}

impl Service {
    /// The caller's site, checked against its certificate (which must name
    /// it and must not have been revoked since the connection opened) and
    /// the directory.
    fn caller<T>(&self, request: &Request<T>, claimed: &str) -> Result<String, Status> {
        let certs = request.peer_certs();
        self.callers
            .check(certs.as_deref().map(Vec::as_slice), claimed)
            .map_err(Status::permission_denied)?;
        if claimed == self.board.identity.site || !self.board.identity.sites.contains(claimed) {
            return Err(Status::permission_denied(format!(
                "site '{claimed}' is not among this peer's neighbours' sites"
            )));
        }
        Ok(claimed.to_string())
    }
}

type ModelStream = Pin<Box<dyn Stream<Item = Result<pb::PeerModelPart, Status>> + Send>>;

#[tonic::async_trait]
impl Gossip for Service {
    async fn greet(
        &self,
        request: Request<pb::PeerHello>,
    ) -> Result<Response<pb::PeerWelcome>, Status> {
        let site = self.caller(&request, &request.get_ref().site)?;
        let hello = request.into_inner();
        let me = &self.board.identity;
        if hello.major != MAJOR {
            return Err(Status::failed_precondition(format!(
                "peer '{site}' speaks protocol {}.{}, this peer {MAJOR}.{MINOR}",
                hello.major, hello.minor
            )));
        }
        if !hello.capabilities.iter().any(|c| c == "gossip") {
            return Err(Status::failed_precondition(format!(
                "peer '{site}' does not speak gossip (protocol 1.3)"
            )));
        }
        if hello.plan_digest != me.plan_digest {
            return Err(Status::failed_precondition(format!(
                "peer '{site}' runs another plan than '{}' (the plans' texts differ)",
                me.site
            )));
        }
        if hello.sites_digest != me.sites_digest {
            return Err(Status::failed_precondition(format!(
                "peer '{site}' lists other sites than '{}'",
                me.site
            )));
        }
        Ok(Response::new(pb::PeerWelcome {
            major: MAJOR,
            minor: MINOR,
            capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            site: me.site.clone(),
        }))
    }

    async fn offer(
        &self,
        request: Request<pb::PeerOfferRequest>,
    ) -> Result<Response<pb::PeerOffer>, Status> {
        let site = self.caller(&request, &request.get_ref().site)?;
        let step = request.get_ref().step;
        if !(1..=3).contains(&step) {
            return Err(Status::invalid_argument(format!(
                "agreement step {step} does not exist (1 to 3)"
            )));
        }
        let offer = self
            .board
            .wait_for(|p| p.offers.get(&step).cloned().map(Ok))
            .await?;
        let size = offer.encoded_len() as u64;
        *self.board.lock().bytes_sent.entry(site).or_default() += size;
        Ok(Response::new(offer))
    }

    type ModelStream = ModelStream;

    async fn model(
        &self,
        request: Request<pb::PeerModelRequest>,
    ) -> Result<Response<Self::ModelStream>, Status> {
        let site = self.caller(&request, &request.get_ref().site)?;
        let (round, step) = (request.get_ref().round, request.get_ref().step);
        let (model, degree) = self
            .board
            .wait_for(|p| {
                if round < p.oldest {
                    return Some(Err(Status::failed_precondition(format!(
                        "round {round} is gone (this peer keeps rounds from {})",
                        p.oldest
                    ))));
                }
                p.models.get(&(round, step)).cloned().map(Ok)
            })
            .await?;
        let (tx, rx) = mpsc::channel(4);
        let board = Arc::clone(&self.board);
        tokio::spawn(async move {
            let header = pb::PeerModelPart {
                part: Some(peer_model_part::Part::Header(pb::PeerModelHeader {
                    round,
                    step,
                    degree,
                    layout: layout_of(&model),
                })),
            };
            let mut sent = header.encoded_len() as u64;
            if tx.send(Ok(header)).await.is_err() {
                return;
            }
            for chunk in chunks(0, &model, CHUNK_BYTES) {
                let part = pb::PeerModelPart {
                    part: Some(peer_model_part::Part::Chunk(chunk)),
                };
                sent += part.encoded_len() as u64;
                if tx.send(Ok(part)).await.is_err() {
                    return;
                }
            }
            let mut published = board.lock();
            *published.bytes_sent.entry(site.clone()).or_default() += sent;
            published.served.insert((site, round, step));
            drop(published);
            board.touch();
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as ModelStream
        ))
    }
}
