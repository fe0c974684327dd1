//! What a peer publishes for its neighbours (its agreement offers and its
//! model after each round's training and averaging steps), and the gRPC
//! service that hands them out: a call waits until the peer has what it asks for.
//!
//! A peer publishes its offers, and each (round, step) model, before it asks
//! for anyone else's, so that calls that wait never wait in a circle.
//!
//! The board also keeps which neighbours the peer does not mix with now
//! (lost, or restarted and not yet readmitted) and when a restarted
//! neighbour is taken back ([`rejoin_round`]).

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
    /// This peer's neighbours in the plan's graph.
    pub neighbours: BTreeSet<String>,
    pub plan_digest: Vec<u8>,
    pub sites_digest: Vec<u8>,
    /// Drawn at start, sent in each welcome: the peers derive each round's
    /// trace id from all of theirs.
    pub trace_nonce: Vec<u8>,
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
    /// The round this peer runs (0: none yet; after the last, the last).
    current: u32,
    /// Neighbours this peer does not mix with now (lost, or restarted).
    absent: BTreeSet<String>,
    /// Restarted neighbours and the round from which this peer mixes with
    /// them again (the last time each asked).
    rejoins: BTreeMap<String, u32>,
    /// The peer is stopping: calls that wait are answered at once.
    closed: bool,
}

/// The round from which a peer running round `current` (0: none yet) mixes
/// with a neighbour that asks to rejoin: 1 while the run has not gone past
/// round 1 and the neighbour is not `absent` (a peer starting with the run,
/// or restarted in round 1 before anyone gave up on it: it redoes round 1
/// from the plan's initial model, the same bits as before); else the round
/// after the current one (the neighbour adopts this peer's model of
/// `current`).
pub(crate) fn rejoin_round(current: u32, absent: bool) -> u32 {
    if current <= 1 && !absent {
        1
    } else {
        current + 1
    }
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

    /// Starts `round`: the neighbours taken back from this round on (they
    /// asked to rejoin while the previous round ran), no longer absent.
    pub fn begin_round(&self, round: u32) -> Vec<String> {
        let mut published = self.lock();
        published.current = round;
        let back: Vec<String> = published
            .rejoins
            .iter()
            .filter(|(_, from)| **from == round)
            .map(|(site, _)| site.clone())
            .collect();
        for site in &back {
            published.absent.remove(site);
        }
        back
    }

    /// This peer stops mixing with `site` (lost) until it asks to rejoin.
    pub fn lose(&self, site: &str) {
        self.lock().absent.insert(site.to_string());
    }

    /// `site` asks to rejoin: the round from which this peer mixes with it
    /// again ([`rejoin_round`]); after round 1 it is absent until then.
    pub fn rejoin(&self, site: &str) -> u32 {
        let mut published = self.lock();
        let from = rejoin_round(published.current, published.absent.contains(site));
        if from > 1 {
            published.absent.insert(site.to_string());
            published.rejoins.insert(site.to_string(), from);
        }
        drop(published);
        self.touch();
        from
    }

    /// The round from which `site`, restarted, is mixed with again, once it
    /// is after `round`: waits until then (the peer stops waiting for the
    /// neighbour's model of `round`).
    pub async fn restarted(&self, site: &str, round: u32) -> u32 {
        let mut changes = self.subscribe();
        loop {
            if let Some(&from) = self.lock().rejoins.get(site).filter(|f| **f > round) {
                return from;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
        }
    }

    /// The neighbours that asked to rejoin after `round` (to be served
    /// this peer's final model of it before it leaves).
    pub fn rejoining_after(&self, round: u32) -> Vec<String> {
        self.lock()
            .rejoins
            .iter()
            .filter(|(_, from)| **from > round)
            .map(|(site, _)| site.clone())
            .collect()
    }

    /// The peer stops: calls that wait are answered `UNAVAILABLE` at once.
    pub fn close(&self) {
        self.lock().closed = true;
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
            let answer = {
                let mut published = self.lock();
                if published.closed {
                    Some(Err(Status::unavailable(format!(
                        "peer '{}' is stopping",
                        self.identity.site
                    ))))
                } else {
                    check(&mut published)
                }
            };
            if let Some(result) = answer {
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
            trace_nonce: me.trace_nonce.clone(),
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
                    return Some(Err(gone(round, p.oldest)));
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

    async fn rejoin(
        &self,
        request: Request<pb::PeerRejoinRequest>,
    ) -> Result<Response<pb::PeerRejoin>, Status> {
        let site = self.caller(&request, &request.get_ref().site)?;
        if !self.board.identity.neighbours.contains(&site) {
            return Err(Status::permission_denied(format!(
                "site '{site}' is not a neighbour of '{}' in the plan's graph",
                self.board.identity.site
            )));
        }
        let round = self.board.rejoin(&site);
        if round > 1 {
            tracing::warn!(
                neighbour = %site,
                rejoins_at = round,
                "neighbour restarted: it is absent until then and adopts this peer's model of the round before"
            );
        }
        Ok(Response::new(pb::PeerRejoin { round }))
    }
}

/// The answer to a peer asking for a round this one no longer keeps:
/// `OUT_OF_RANGE`, which the asking peer retries for its patience and then
/// takes this one for lost (as this one, having moved on without it, has
/// taken it), rather than a refusal that would stop it.
fn gone(round: u32, oldest: u32) -> Status {
    Status::out_of_range(format!(
        "round {round} is gone (this peer keeps rounds from {oldest})"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A peer that fell behind (its neighbours lost it and went on) is
    /// not stopped by asking for a round they no longer keep: the answer is
    /// one it retries and then gives up on, losing the neighbour in turn.
    #[test]
    fn a_round_gone_is_retried_and_given_up_not_refused() {
        let status = gone(3, 5);
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert!(status.message().contains("round 3 is gone"));
        let failure: tessera_participant::supervisor::Failure<crate::PeerError> = status.into();
        assert!(
            matches!(failure, tessera_participant::supervisor::Failure::Retry(_)),
            "{failure:?}"
        );
    }

    fn board() -> Arc<Board> {
        Board::new(Identity {
            site: "b".into(),
            sites: ["a", "b", "c"].iter().map(|s| s.to_string()).collect(),
            neighbours: ["a", "c"].iter().map(|s| s.to_string()).collect(),
            plan_digest: Vec::new(),
            trace_nonce: Vec::new(),
            sites_digest: Vec::new(),
        })
    }

    #[test]
    fn a_peer_starting_with_the_run_is_mixed_with_from_round_1() {
        assert_eq!(rejoin_round(0, false), 1);
        assert_eq!(rejoin_round(1, false), 1);
        let board = board();
        assert_eq!(board.rejoin("a"), 1);
        assert!(board.begin_round(1).is_empty());
        // Nothing recorded: a start is not a rejoin.
        assert!(board.lock().rejoins.is_empty() && board.lock().absent.is_empty());
    }

    #[test]
    fn a_restarted_peer_rejoins_after_the_current_round() {
        // Past round 1, or given up on in round 1: the next round.
        assert_eq!(rejoin_round(1, true), 2);
        assert_eq!(rejoin_round(5, false), 6);
        assert_eq!(rejoin_round(5, true), 6);
        let board = board();
        assert!(board.begin_round(4).is_empty());
        assert_eq!(board.rejoin("a"), 5);
        assert!(board.lock().absent.contains("a"));
        // Taken back when round 5 begins, not before.
        assert!(board.begin_round(5) == ["a"]);
        assert!(board.lock().absent.is_empty());
        assert!(board.begin_round(6).is_empty());
    }

    #[test]
    fn a_lost_neighbour_asking_in_round_1_rejoins_at_round_2() {
        let board = board();
        board.begin_round(1);
        board.lose("c");
        assert_eq!(board.rejoin("c"), 2);
        assert_eq!(board.begin_round(2), ["c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_restarted_neighbours_model_stops_when_it_asks_to_rejoin() {
        let board = board();
        board.begin_round(3);
        let waiting = {
            let board = Arc::clone(&board);
            tokio::spawn(async move { board.restarted("a", 3).await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished());
        // Another neighbour's rejoin does not stop it.
        board.rejoin("c");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished());
        board.rejoin("a");
        assert_eq!(waiting.await.unwrap(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopping_peer_answers_waiting_calls_at_once() {
        let board = board();
        let waiting = {
            let board = Arc::clone(&board);
            tokio::spawn(async move { board.wait_for(|p| p.offers.get(&1).cloned().map(Ok)).await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished());
        board.close();
        let status = waiting.await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("stopping"), "{status:?}");
    }
}
