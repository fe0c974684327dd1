//! The gossip peer: decentralised averaging with no coordinator (D-PSGD;
//! Lian et al. 2017), over gRPC between sites with mutual TLS from the
//! federation's CA.
//!
//! Every peer reads the same plan (`[topology] kind = "gossip"`) and the same
//! directory of sites; from them each computes the same graph
//! ([`tessera_engine::gossip_neighbours`]). The data layout is agreed without
//! a coordinator: each peer publishes its offer and fetches every other
//! peer's, and all compute the same agreement from the same offers. Then each
//! round a peer trains from its own model, publishes the result, fetches its
//! living neighbours' and replaces its model by the Metropolis-Hastings
//! average ([`tessera_engine::metropolis_mix`]), `gossip_steps` times. With
//! no failures every peer's model is the simulation's bit for bit.
//!
//! Key design decision: peers pull. A peer serves what it has published and
//! a call for something not yet published waits; a neighbour that cannot be
//! reached for the liveness period is lost, and the peer re-weights among the
//! living (its published degree tells its neighbours). A peer restarted
//! after a crash asks its neighbours to take it back and adopts a
//! neighbour's current model (see `rounds`); its neighbours stop waiting for
//! it at once and mix with it again from the round after their current one.
//!
//! `run(config)` checks that the plan is gossip and the directory matches
//! it, serves `Gossip` from its board (see `board`), greets every peer,
//! agrees the data from every peer's offers, then trains, publishes and
//! averages with the simulation's `metropolis_mix`.
#![deny(missing_docs)]

mod board;
mod personal;
mod rounds;
mod trace;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tessera_core::{ParameterSet, ParticipantId};
use tessera_data::{Agreement, KindsOffer, LevelsOffer, ScaleScope};
use tessera_engine::PlanBuild;
use tessera_engine::model_file::{ModelFile, RunInfo, Standardization};
use tessera_engine::report::{Communication, RunReport, Timing, TopologyReport};
use tessera_engine::{Plan, Site, TopologyKind};
use tessera_participant::supervisor::{self, GiveUpClock, Refused, Retry, Stopped, supervise};
use tessera_proto::pb::gossip_client::GossipClient;
use tessera_proto::pb::{self, peer_offer};
use tessera_proto::{CAPABILITIES, MAJOR, MINOR, convert};
use thiserror::Error;
use tonic::transport::Channel;

use board::{Board, Identity, Service};
use rounds::Progress;

/// Why a peer stopped.
#[derive(Debug, Error)]
pub enum PeerError {
    /// A setting, the plan or the directory is unusable.
    #[error("{0}")]
    Config(String),
    /// The site's data is unusable, or training failed.
    #[error("{0}")]
    Local(String),
    /// Another peer refused this one (another plan, another directory, identity).
    #[error("refused by a peer: {0}")]
    Refused(String),
    /// The network failed for good.
    #[error("network: {0}")]
    Network(String),
}

/// How to run a peer.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The plan (its `[topology]` is gossip).
    pub plan: Plan,
    /// Its text: every peer must run the same.
    pub plan_text: String,
    /// This site's name.
    pub site: String,
    /// This site's data file (`None`: the plan's file for this site, or
    /// the rows the plan generates, `[data.synthetic]`).
    pub data: Option<PathBuf>,
    /// Folder for the plan's other relative paths.
    pub plan_dir: PathBuf,
    /// Where the other peers reach this one.
    pub listen: SocketAddr,
    /// Every other site of the run and its URL.
    pub peers: BTreeMap<String, String>,
    /// A neighbour unreachable this long is lost (until it rejoins after a
    /// restart); a restarted peer waits this long for each neighbour.
    pub liveness: Duration,
    /// Give up on the agreement after this long without every peer.
    pub give_up_after: Duration,
    /// Mutual TLS with a site's files (`tessera ca issue --site`); `None`:
    /// the explicit insecure mode.
    pub tls: Option<tessera_tls::TlsFiles>,
    /// Fault injection for drills and tests: a slow site, pausing this long
    /// after each round's training.
    pub pause_each_round: Duration,
}

/// A connection to another peer.
struct Link {
    name: String,
    endpoint: tessera_participant::client::Remote,
    client: Option<GossipClient<Channel>>,
}

/// A call's failure: try again (network) or stop (refused: a
/// [`PeerError::Refused`]), classified as every client's.
type Failure = supervisor::Failure<PeerError>;

impl From<Refused> for PeerError {
    fn from(refused: Refused) -> Self {
        PeerError::Refused(refused.0)
    }
}

fn digest(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

fn local(e: impl std::fmt::Display) -> PeerError {
    PeerError::Local(e.to_string())
}

impl Link {
    fn new(name: &str, url: &str, tls: Option<&tessera_tls::TlsFiles>) -> Result<Self, PeerError> {
        // With TLS the neighbour must be the site it is called by: its
        // certificate names it.
        let domain = match tls {
            Some(_) if !url.starts_with("https://") => {
                return Err(PeerError::Config(format!(
                    "peer '{name}': with mutual TLS its URL starts with https://, got '{url}'"
                )));
            }
            Some(_) => Some(
                tessera_tls::site_dns_name(name).map_err(|e| PeerError::Config(e.to_string()))?,
            ),
            None => None,
        };
        let endpoint = tessera_participant::client::endpoint(url, tls, domain.as_deref())
            .map_err(|e| PeerError::Config(format!("peer '{name}': {e}")))?;
        Ok(Self {
            name: name.to_string(),
            endpoint,
            client: None,
        })
    }

    async fn client(&mut self) -> Result<&mut GossipClient<Channel>, Failure> {
        if self.client.is_none() {
            let channel = self.endpoint.connect().await.map_err(|e| {
                Failure::Retry(format!(
                    "cannot connect to '{}': {}",
                    self.name,
                    tessera_participant::client::chain(&e)
                ))
            })?;
            self.client = Some(
                GossipClient::new(channel)
                    .max_decoding_message_size(16 << 20)
                    .max_encoding_message_size(16 << 20),
            );
        }
        self.client
            .as_mut()
            .ok_or_else(|| Failure::Retry("no connection".into()))
    }

    /// Runs `call` until it succeeds, is refused, or `patience` passes
    /// without success (`None`: the peer counts as unreachable).
    async fn retry<T>(
        &mut self,
        patience: Duration,
        mut call: impl AsyncFnMut(&mut GossipClient<Channel>) -> Result<T, Failure>,
    ) -> Result<Option<T>, PeerError> {
        let policy = Retry {
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            give_up_after: patience,
            clock: GiveUpClock::Start,
        };
        let mut said = String::new();
        let ended = supervise(
            &policy,
            self,
            async |link: &mut Link, _| {
                let attempt = async {
                    let client = link.client().await?;
                    call(client).await
                };
                let reason = match tokio::time::timeout(patience * 10, attempt).await {
                    Ok(Err(Failure::Retry(reason))) => reason,
                    Ok(done) => return done,
                    Err(_) => format!("'{}' did not answer in {:?}", link.name, patience * 10),
                };
                link.client = None;
                Err(Failure::Retry(reason))
            },
            |link, reason, _| {
                // Each new reason once (a refused certificate, then a closed port...).
                if reason != said {
                    tracing::warn!(peer = %link.name, %reason, "retrying");
                    said = reason.to_string();
                }
            },
        )
        .await;
        match ended {
            Ok(value) => Ok(Some(value)),
            Err(Stopped::Fatal(PeerError::Refused(reason))) => {
                Err(PeerError::Refused(format!("'{}': {reason}", self.name)))
            }
            Err(Stopped::Fatal(e)) => Err(e),
            Err(Stopped::GaveUp { reason, .. }) => {
                tracing::warn!(peer = %self.name, %reason, "unreachable");
                Ok(None)
            }
        }
    }
}

/// Takes part in the gossip run until its last round; returns this peer's
/// report (its own model on its own test rows each round, the neighbours it
/// lost, its traffic) and its model file. `on_listening` gets the bound address.
pub async fn run(
    config: PeerConfig,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<PeerOutcome, PeerError> {
    let started = Instant::now();
    let plan = &config.plan;
    if plan.topology.kind != TopologyKind::Gossip {
        return Err(PeerError::Config(
            "peers run plans with [topology] kind = \"gossip\"; others have a coordinator".into(),
        ));
    }
    if config.peers.contains_key(&config.site) {
        return Err(PeerError::Config(format!(
            "--peer lists this site ('{}') itself",
            config.site
        )));
    }
    let mut sites: Vec<String> = config.peers.keys().cloned().collect();
    sites.push(config.site.clone());
    sites.sort();
    if !plan.data.sites.is_empty() {
        let mut listed: Vec<String> = plan.data.sites.iter().map(|s| s.name.clone()).collect();
        listed.sort();
        if listed != sites {
            return Err(PeerError::Config(format!(
                "the peers ({}) are not the plan's sites ({})",
                sites.join(", "),
                listed.join(", ")
            )));
        }
    }
    if !plan.topology.failures.is_empty() {
        tracing::warn!("[[topology.failures]] is simulation only; peers ignore it");
    }
    if !plan.personalization.new_sites.is_empty() {
        return Err(PeerError::Config(
            "personalization.new_sites is a simulation setting: in deployment a new site is \
             one that did not join; remove it from the plan"
                .into(),
        ));
    }
    let me = sites
        .iter()
        .position(|s| *s == config.site)
        .ok_or_else(|| PeerError::Config("this site is not in the directory".into()))?;
    let graph = tessera_engine::gossip_neighbours(
        plan.topology.graph,
        sites.len(),
        plan.topology.degree,
        plan.seed,
    )
    .map_err(|e| PeerError::Config(e.to_string()))?;
    let neighbours: Vec<String> = graph[me].iter().map(|&j| sites[j].clone()).collect();
    tracing::info!(site = %config.site, neighbours = %neighbours.join(", "), "gossip graph");

    let board = Board::new(Identity {
        site: config.site.clone(),
        sites: sites.iter().cloned().collect(),
        neighbours: neighbours.iter().cloned().collect(),
        plan_digest: digest(&config.plan_text),
        sites_digest: digest(&sites.join("\n")),
        trace_nonce: trace::draw_nonce(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| PeerError::Network(format!("cannot listen on {}: {e}", config.listen)))?;
    let address = listener
        .local_addr()
        .map_err(|e| PeerError::Network(e.to_string()))?;
    on_listening(address);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        Arc::clone(&board),
        listener,
        config.tls.clone(),
        stopped,
    ));

    let mut links: BTreeMap<String, Link> = BTreeMap::new();
    for (name, url) in &config.peers {
        links.insert(name.clone(), Link::new(name, url, config.tls.as_ref())?);
    }
    let result = work(&config, &board, &mut links, &neighbours).await;
    // Calls still waiting are answered now, so that the server stops at once.
    board.close();
    let _ = stop.send(());
    let _ = server.await;
    let Worked {
        progress,
        model,
        agreement,
        scaler,
        personalization,
    } = result?;
    let model_file = model_file(plan, &config.site, &agreement, scaler, &progress, &model)?;

    let last = progress.last.clone().into_iter().collect::<Vec<_>>();
    let final_metrics = tessera_engine::report::final_metrics(
        &tessera_engine::report::POOLED,
        &[config.site.as_str()],
        &last,
    );
    let sent = board.bytes_sent();
    let bytes_up: u64 = sent.values().sum();
    let bytes_down: u64 = progress.bytes_received.values().sum();
    let elapsed = started.elapsed().as_secs_f64();
    let n_rounds = progress.records.len().max(1) as f64;
    let report = RunReport {
        plan: plan.name.clone(),
        strategy: plan.federation.strategy.to_string(),
        seed: plan.seed,
        model: format!("{:?}", plan.model.kind).to_lowercase(),
        features: agreement.feature_names(),
        classes: agreement.classes.clone(),
        data: Vec::new(),
        population_changes: tessera_engine::report::population_changes(&progress.records),
        per_site: None,
        rounds: progress.records,
        final_metrics,
        baselines: None,
        personalization,
        new_sites: None,
        continual: None,
        tasks: Vec::new(),
        contributions: None,
        fairness: None,
        timing: Timing {
            total_seconds: elapsed,
            data_seconds: 0.0,
            rounds_seconds: elapsed,
            seconds_per_round: elapsed / n_rounds,
            baselines_seconds: 0.0,
            virtual_seconds: elapsed,
            virtual_seconds_to_target: None,
            threads: 1,
            peak_rss_bytes: None,
        },
        communication: Communication {
            bytes_up,
            bytes_down,
            bytes_up_per_site: BTreeMap::from([(config.site.clone(), bytes_up)]),
            update_bytes_up: 0,
        },
        privacy: None,
        metrics_privacy: None,
        robustness: None,
        topology: Some(TopologyReport {
            kind: "gossip".into(),
            neighbours: BTreeMap::from([(config.site.clone(), neighbours)]),
            lost: progress.lost,
            rejoined: progress.rejoined,
            ..TopologyReport::default()
        }),
        final_parameters: model.as_ref().clone(),
    };
    Ok(PeerOutcome {
        report,
        model: model_file,
    })
}

/// What a peer takes away from its run.
#[derive(Debug)]
pub struct PeerOutcome {
    /// Its report: its own model on its own test rows each round, its traffic.
    pub report: RunReport,
    /// Its final model as a self-describing file (feature order,
    /// vocabularies, the standardisation it trained with, lineage).
    pub model: ModelFile,
}

/// Site `site`'s final model `model` as a self-describing file: the
/// standardisation is the one its rows were scaled with (the federation's
/// under federation scope, its own under site scope).
fn model_file(
    plan: &Plan,
    site: &str,
    agreement: &Agreement,
    scaler: tessera_data::Scaler,
    progress: &Progress,
    model: &ParameterSet,
) -> Result<ModelFile, PeerError> {
    let config = plan.data.standardize.clone();
    let source = if !config.enabled {
        "none".to_string()
    } else if config.scope == ScaleScope::Federation {
        "federation".to_string()
    } else {
        format!("site:{site}")
    };
    let standardization = Standardization {
        config,
        source: Some(source),
        mean: Some(scaler.mean),
        scale: Some(scaler.scale),
    };
    ModelFile::new(
        plan,
        agreement,
        standardization,
        RunInfo {
            id: None,
            written_by: format!("peer {site}"),
        },
        progress.records.last().map_or(0, |r| r.round),
        model.clone(),
    )
    .map_err(|e| PeerError::Local(format!("this peer's model file: {e}")))
}

/// Serves the board until `stopped`.
async fn serve(
    board: Arc<Board>,
    listener: tokio::net::TcpListener,
    tls: Option<tessera_tls::TlsFiles>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), PeerError> {
    let callers = match &tls {
        Some(files) => tessera_tls::Callers::new(files.clone()),
        None => tessera_tls::Callers::insecure(),
    };
    let service = tessera_proto::pb::gossip_server::GossipServer::new(Service { board, callers })
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .add_service(service);
    let shutdown = async {
        let _ = stopped.await;
    };
    let network = |e: tonic::transport::Error| PeerError::Network(e.to_string());
    match tls {
        None => server
            .serve_with_incoming_shutdown(tessera_tls::plain_incoming(listener), shutdown)
            .await
            .map_err(network),
        Some(files) => {
            let tls = tessera_tls::ServerTls::load(files)
                .map_err(|e| PeerError::Config(e.to_string()))?;
            let incoming = tessera_tls::incoming(listener, tls, |refusal| {
                tracing::warn!(reason = %refusal.message, "connection refused");
            });
            server
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .map_err(network)
        }
    }
}

/// Greets every peer, agrees the data, runs the rounds.
async fn work(
    config: &PeerConfig,
    board: &Board,
    links: &mut BTreeMap<String, Link>,
    neighbours: &[String],
) -> Result<Worked, PeerError> {
    let plan = &config.plan;
    let mut site_data = tessera_participant::client::read_site(
        &plan.data,
        &config.site,
        config.data.as_deref(),
        &config.plan_dir,
        None,
    )
    .await
    .map_err(|e| PeerError::Local(e.to_string()))?;
    let hello = pb::PeerHello {
        major: MAJOR,
        minor: MINOR,
        capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        site: config.site.clone(),
        plan_digest: board.identity.plan_digest.clone(),
        sites_digest: board.identity.sites_digest.clone(),
    };
    // Each peer's trace nonce, this one's included: the rounds' traces.
    let mut nonces = BTreeMap::from([(config.site.clone(), board.identity.trace_nonce.clone())]);
    for link in links.values_mut() {
        let hello = hello.clone();
        let greeted = link
            .retry(config.give_up_after, async |c| {
                Ok(c.greet(hello.clone()).await?.into_inner())
            })
            .await?;
        let Some(welcome) = greeted else {
            return Err(PeerError::Network(format!(
                "peer '{}' unreachable for {:?}: the agreement needs every site",
                link.name, config.give_up_after
            )));
        };
        nonces.insert(link.name.clone(), welcome.trace_nonce);
    }
    let traces = trace::RoundTraces::of(&nonces);
    tracing::info!(peers = links.len(), "every peer greeted");

    // The agreement: every peer's offers, the same answer everywhere.
    let kinds_offer = site_data.kinds_offer();
    let kinds_offers: Vec<KindsOffer> = gather(
        config,
        board,
        links,
        1,
        pb::PeerOffer {
            offer: Some(peer_offer::Offer::Kinds(convert::kinds_offer_to_pb(
                &kinds_offer,
            ))),
        },
        |site, offer| match offer {
            peer_offer::Offer::Kinds(k) => convert::kinds_offer_from_pb(site, k).ok(),
            _ => None,
        },
    )
    .await?
    .into_iter()
    .chain([kinds_offer])
    .collect();
    let kinds = tessera_data::agree_kinds(&plan.data, &kinds_offers).map_err(local)?;
    let levels_offer = site_data.levels_offer(&plan.data, &kinds).map_err(local)?;
    let levels_offers: Vec<LevelsOffer> = gather(
        config,
        board,
        links,
        2,
        pb::PeerOffer {
            offer: Some(peer_offer::Offer::Levels(convert::levels_offer_to_pb(
                &levels_offer,
            ))),
        },
        |site, offer| match offer {
            peer_offer::Offer::Levels(l) => Some(convert::levels_offer_from_pb(site, l)),
            _ => None,
        },
    )
    .await?
    .into_iter()
    .chain([levels_offer])
    .collect();
    let agreement =
        tessera_data::agree_vocabulary(&plan.data, &kinds, &levels_offers).map_err(local)?;
    let (mut data, _) = site_data.prepare(&plan.data, &agreement).map_err(local)?;
    if plan.data.standardize.enabled && plan.data.standardize.scope == ScaleScope::Federation {
        let n = agreement.feature_names().len();
        let own = tessera_data::FeatureStatistics::of_features(data.raw_train());
        let mut all: BTreeMap<String, tessera_data::FeatureStatistics> = gather(
            config,
            board,
            links,
            3,
            pb::PeerOffer {
                offer: Some(peer_offer::Offer::Statistics(convert::statistics_to_pb(
                    &own,
                ))),
            },
            |site, offer| match offer {
                peer_offer::Offer::Statistics(s) => convert::statistics_from_pb(s, n)
                    .ok()
                    .map(|s| (site.to_string(), s)),
                _ => None,
            },
        )
        .await?
        .into_iter()
        .collect();
        all.insert(config.site.clone(), own);
        // In site order, everywhere the same.
        let merged = tessera_data::FeatureStatistics::merge_all(n, all.values());
        data.rescale(tessera_data::Scaler::from_statistics(
            &merged,
            &plan.data.standardize,
            &agreement.indicators(),
        ));
    }
    let learner = plan
        .learner(agreement.feature_names().len(), agreement.classes.len())
        .map_err(local)?;
    let model = Arc::new(learner.parameters().clone());
    // The gossip topology refuses local DP in the plan's validation, so the
    // secret key is never asked for.
    let site = Site::of_plan(plan, ParticipantId::new(&config.site), learner, || {
        Err(local("the gossip topology does not support local DP"))
    })?;
    tracing::info!(
        features = agreement.feature_names().len(),
        train = data.train.n_rows(),
        "data agreed"
    );
    let scaler = data.scaler().clone();
    let departments = tessera_engine::Departments::of(plan, &agreement, &data)
        .map_err(|e| local(e.to_string()))?;
    let (train, test) = (Arc::new(data.train), Arc::new(data.test));
    let (progress, model) = rounds::rounds(
        config,
        board,
        links,
        neighbours,
        site,
        model,
        Arc::clone(&train),
        Arc::clone(&test),
        &traces,
    )
    .await?;
    // Off the async threads, which still serve the neighbours; a failure
    // leaves the rounds' results whole.
    let (plan, site, agreed) = (plan.clone(), config.site.clone(), agreement.clone());
    let (own, last) = (Arc::clone(&model), progress.last.clone());
    let scale = scaler.scale.clone();
    let personalization = tokio::task::spawn_blocking(move || {
        personal::personalization(
            &plan,
            (&site, &agreed, departments.as_ref()),
            (&own, last.as_ref()),
            (&train, &test),
            &scale,
        )
    })
    .await
    .map_err(|e| PeerError::Local(format!("fine-tuning crashed: {e}")))
    .and_then(|done| done)
    .unwrap_or_else(|e| {
        tracing::warn!(error = %e, "no personalization section: fine-tuning failed");
        None
    });
    Ok(Worked {
        progress,
        model,
        agreement,
        scaler,
        personalization,
    })
}

/// What a peer's run gave it.
struct Worked {
    progress: Progress,
    model: Arc<ParameterSet>,
    agreement: Agreement,
    scaler: tessera_data::Scaler,
    personalization: Option<tessera_engine::report::PersonalizationReport>,
}

/// Publishes this peer's offer of `step` and fetches every other peer's
/// (read with `read`; a malformed offer stops the run with its sender's name).
async fn gather<T>(
    config: &PeerConfig,
    board: &Board,
    links: &mut BTreeMap<String, Link>,
    step: u32,
    own: pb::PeerOffer,
    read: impl Fn(&str, peer_offer::Offer) -> Option<T>,
) -> Result<Vec<T>, PeerError> {
    board.publish_offer(step, own);
    let mut out = Vec::new();
    for link in links.values_mut() {
        let request = pb::PeerOfferRequest {
            site: config.site.clone(),
            step,
        };
        let offer = link
            .retry(config.give_up_after, async |c| {
                Ok(c.offer(request.clone()).await?.into_inner())
            })
            .await?
            .ok_or_else(|| {
                PeerError::Network(format!(
                    "peer '{}' unreachable during the agreement (step {step})",
                    link.name
                ))
            })?;
        let value = offer
            .offer
            .and_then(|o| read(&link.name, o))
            .ok_or_else(|| {
                PeerError::Refused(format!(
                    "peer '{}' sent a malformed offer for agreement step {step}",
                    link.name
                ))
            })?;
        out.push(value);
    }
    Ok(out)
}
