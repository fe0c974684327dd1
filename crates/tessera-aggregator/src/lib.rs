//! The aggregator of a hierarchical run: a participant toward its parent
//! (a coordinator or another aggregator) and a coordinator toward its
//! members (participants or aggregators below), at any depth.
//!
//! It joins its parent under its name in the plan's topology, takes the plan
//! from it, and serves its members with the same [`Federation`] the
//! coordinator runs, opened as that aggregator (see
//! `tessera_coordinator::Federation::open_node`). Its members' agreement
//! offers go up merged; each parent task opens the same round below; the
//! round's weighted mean goes up as one update carrying the members'
//! examples; the members' pooled evaluation of the parent's model goes up.
//!
//! Key design decision: the aggregator keeps its own database, and the
//! parent re-sends a task until it is answered, so an aggregator killed at
//! any moment and restarted on the same database resumes its round with the
//! updates it had accepted; its members reconnect on their own.
//!
//! `run(config)` binds its members' address, joins its parent, opens its
//! federation with the parent's plan as its node of the tree, serves its
//! members, and turns the parent's tasks into rounds below (agreement, fit,
//! evaluate), sending heartbeats to the parent while it waits. A round that
//! closes below without an update is a withdrawal from the parent's round,
//! as the simulation drops an empty region.
//!
//! *Invariant:* keeps nothing outside its database that the parent cannot
//! send again.
#![deny(missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use tessera_coordinator::{
    AgreementStep, CoordinatorError, Federation, Shared, SqliteStore, StoreError,
};
use tessera_engine::Plan;
use tessera_engine::report::RunReport;
use tessera_participant::ParticipantError;
use tessera_participant::client;
use tessera_participant::supervisor::{Failure, Progress, Retry, Stopped, supervise};
use tessera_proto::convert;
use tessera_proto::pb::federation_client::FederationClient;
use tessera_proto::pb::{self, agree_reply, task};
use thiserror::Error;
use tonic::Code;
use tonic::transport::Channel;

/// Why an aggregator stopped.
#[derive(Debug, Error)]
pub enum AggregatorError {
    /// Toward the members: the federation or its database failed.
    #[error(transparent)]
    Members(#[from] CoordinatorError),
    /// Toward the parent: refused, unreachable, or its plan unusable.
    #[error(transparent)]
    Parent(#[from] ParticipantError),
}

/// How to run an aggregator.
#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    /// The parent's URL, e.g. `http://127.0.0.1:7000`.
    pub upstream: String,
    /// This aggregator's name in the plan's topology.
    pub name: String,
    /// Where its members connect.
    pub listen: SocketAddr,
    /// Its database; a restart with the same file resumes.
    pub db: PathBuf,
    /// Silence after which a member counts as gone.
    pub liveness: Duration,
    /// Mutual TLS toward the members (a coordinator's files).
    pub tls: Option<tessera_tls::TlsFiles>,
    /// Mutual TLS toward the parent (a site's files, naming this aggregator).
    pub upstream_tls: Option<tessera_tls::TlsFiles>,
    /// The parent's name in its certificate (default: the URL's host).
    pub upstream_domain: Option<String>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Longest wait between reconnection attempts to the parent.
    pub max_backoff: Duration,
    /// Give up after this long without reaching the parent.
    pub give_up_after: Duration,
}

pub mod shard;

type Server = tokio::task::JoinHandle<Result<RunReport, CoordinatorError>>;

/// What lives across reconnections to the parent.
struct State {
    listener: Option<tokio::net::TcpListener>,
    shared: Option<(Arc<Shared>, Arc<Plan>)>,
    server: Option<Server>,
    key_ring: Option<tessera_secagg::KeyRing>,
    /// Secure aggregation toward the parent: this aggregator's certificate
    /// key and the federation CA.
    identity: client::SecureIdentity,
    /// This aggregator, told apart from another with the same name: the
    /// parent refuses a second live aggregator of one name, as it refuses a
    /// second participant of one site (kept beside the database, see
    /// [`session_of`]).
    process: String,
}

impl State {
    /// Why the members' federation stopped on a fatal database failure, if it did.
    async fn fatal(&self) -> Option<String> {
        let (shared, _) = self.shared.as_ref()?;
        shared
            .call(|f| f.fatal().map(str::to_string))
            .await
            .ok()
            .flatten()
    }
}

fn fatal(e: impl std::fmt::Display) -> Failure {
    Failure::Fatal(ParticipantError::Local(e.to_string()))
}

/// A failure of the members' federation: its database failing for a while
/// (busy, a disk briefly full) is retried, as a participant retries a
/// coordinator's `Unavailable`; a damaged record or any other error stops
/// the aggregator. (A failure after the engine counted something stops the
/// federation itself, which `wait_for` reports as fatal.)
fn failed(e: CoordinatorError) -> Failure {
    match e {
        CoordinatorError::Store(StoreError::Sqlite(e)) => {
            Failure::Retry(format!("the members' database failed ({e}); trying again"))
        }
        e => fatal(e),
    }
}

/// Runs the aggregator until its parent's run is over and its members were
/// told; returns its own report (its rounds, its members' traffic, its last
/// regional model). `on_listening` gets the members' address at once.
pub async fn run(
    config: AggregatorConfig,
    on_listening: impl FnOnce(SocketAddr) + Send + 'static,
) -> Result<RunReport, AggregatorError> {
    let endpoint = client::endpoint(
        &config.upstream,
        config.upstream_tls.as_ref(),
        config.upstream_domain.as_deref(),
    )?;
    // Members may connect (and wait) before the parent is reached.
    let listener = tessera_coordinator::bind(config.listen).await?;
    let address = listener
        .local_addr()
        .map_err(|e| CoordinatorError::Network(e.to_string()))?;
    on_listening(address);
    let mut state = State {
        listener: Some(listener),
        shared: None,
        server: None,
        key_ring: None,
        identity: client::SecureIdentity::load(config.upstream_tls.as_ref())?,
        process: session_of(&config.db)?,
    };
    let ended = supervise(
        &Retry::reconnect(config.max_backoff, config.give_up_after),
        &mut state,
        async |state: &mut State, progress| {
            match session(&config, &endpoint, state, progress).await {
                // The members' server stopped (it failed, or is stopping on
                // a fatal failure): its error is the one to report.
                Err(Failure::Retry(reason)) => {
                    let stopped = state.server.as_ref().is_some_and(|s| s.is_finished())
                        || state.fatal().await.is_some();
                    if stopped {
                        Ok(())
                    } else {
                        Err(Failure::Retry(reason))
                    }
                }
                other => other,
            }
        },
        |_, reason, backoff| tracing::warn!(%reason, ?backoff, "parent connection lost; retrying"),
    )
    .await;
    match ended {
        Ok(()) => {}
        Err(Stopped::Fatal(e)) => {
            // The members' database failed: that is the error to report.
            if let Some(reason) = state.fatal().await {
                return Err(CoordinatorError::Fatal(reason).into());
            }
            return Err(e.into());
        }
        Err(Stopped::GaveUp { after, reason }) => {
            return Err(ParticipantError::Unreachable(format!(
                "gave up: the parent has been unreachable for {after:?} (--give-up-after): {reason}"
            ))
            .into());
        }
    }
    let Some(server) = state.server else {
        return Err(ParticipantError::Local("the run ended before it started".into()).into());
    };
    let report = server
        .await
        .map_err(|e| CoordinatorError::Network(format!("the members' server crashed: {e}")))??;
    Ok(report)
}

/// This aggregator's session toward its parent: drawn once (16 random
/// bytes, hexadecimal) and kept beside its database (`DB.session`), so that
/// an aggregator restarted on its database after a crash is the same one
/// to its parent and resumes at once, while another process of the same
/// name on another database is refused as a second live one.
fn session_of(db: &std::path::Path) -> Result<String, CoordinatorError> {
    let path = std::path::PathBuf::from(format!("{}.session", db.display()));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let session = text.trim();
            if session.len() == 32 && session.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(session.to_string());
            }
            return Err(CoordinatorError::Config(format!(
                "{}: not a session (32 hexadecimal digits); remove it to draw a new one",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(CoordinatorError::Config(format!(
                "{}: cannot read: {e}",
                path.display()
            )));
        }
    }
    let session = draw_session()?;
    std::fs::write(&path, format!("{session}\n"))
        .map_err(|e| CoordinatorError::Config(format!("{}: cannot write: {e}", path.display())))?;
    Ok(session)
}

/// A new session: 16 random bytes, hexadecimal.
fn draw_session() -> Result<String, CoordinatorError> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce)
        .map_err(|e| CoordinatorError::Config(format!("cannot draw a session: {e}")))?;
    Ok(nonce.iter().map(|b| format!("{b:02x}")).collect())
}

/// Opens the federation below this aggregator with the parent's plan and
/// starts serving the members.
async fn start(
    config: &AggregatorConfig,
    state: &mut State,
    welcome: &pb::Welcome,
) -> Result<(Arc<Shared>, Arc<Plan>), Failure> {
    if let Some(shared) = &state.shared {
        return Ok(shared.clone());
    }
    let plan = Plan::from_toml(&welcome.plan_toml, "the parent's plan").map_err(fatal)?;
    let (opened, text) = (plan.clone(), welcome.plan_toml.clone());
    let (db, liveness, name) = (config.db.clone(), config.liveness, config.name.clone());
    // Opening reads the database and replays the run: on the federation's
    // own thread, not the async runtime's.
    let shared = Shared::open(move || {
        let store = SqliteStore::open(&db).map_err(fatal)?;
        let federation =
            Federation::open_node(opened, &text, Box::new(store), liveness, Some(&name))
                .map_err(fatal)?;
        tracing::info!(run = federation.run_id(), aggregator = %name, "aggregator ready");
        Ok::<_, Failure>(federation)
    })
    .await?;
    let Some(listener) = state.listener.take() else {
        return Err(fatal("the members' listener is gone"));
    };
    state.server = Some(tokio::spawn(tessera_coordinator::serve_shared(
        Arc::clone(&shared),
        listener,
        config.tls.clone(),
        config.metrics,
        |_| {},
    )));
    let opened = (shared, Arc::new(plan));
    state.shared = Some(opened.clone());
    Ok(opened)
}

/// One connection to the parent: join, relay the agreement, answer tasks.
async fn session(
    config: &AggregatorConfig,
    endpoint: &client::Remote,
    state: &mut State,
    progress: &Progress,
) -> Result<(), Failure> {
    let (mut parent, welcome) = client::join(
        endpoint,
        &config.upstream,
        &config.name,
        Some(state.process.as_str()),
    )
    .await?;
    progress.made();
    let (shared, plan) = start(config, state, &welcome).await?;
    let beat = client::heartbeat_interval(&welcome);
    let mut up = Upstream {
        name: &config.name,
        remote: endpoint,
        parent: &mut parent,
        shared: &shared,
        beat,
        withdraw: client::can_withdraw(&welcome),
        plan: &plan,
        key_ring: &mut state.key_ring,
        identity: &state.identity,
    };
    up.agreement().await?;
    up.tasks().await
}

/// The connection to the parent and the federation below.
struct Upstream<'a> {
    name: &'a str,
    /// The parent's address (its certificate is checked at every task).
    remote: &'a client::Remote,
    parent: &'a mut FederationClient<Channel>,
    shared: &'a Shared,
    beat: Option<Duration>,
    /// Whether the parent takes withdrawals (1.4).
    withdraw: bool,
    plan: &'a Plan,
    /// Secure aggregation: this aggregator's key pairs between rounds.
    key_ring: &'a mut Option<tessera_secagg::KeyRing>,
    identity: &'a client::SecureIdentity,
}

impl Upstream<'_> {
    /// Waits until `check` gives a value; meanwhile, with `round`, tells the
    /// parent every heartbeat interval that this aggregator is at work.
    /// `None` when the parent stopped waiting for round `round` (with
    /// `released`) before the value came.
    async fn wait_for<T: Send + 'static>(
        &mut self,
        round: Option<u32>,
        released: bool,
        check: impl Fn(&mut Federation) -> Result<Option<T>, CoordinatorError> + Clone + Send + 'static,
    ) -> Result<Option<T>, Failure> {
        let mut changes = self.shared.subscribe();
        let mut last_beat = tokio::time::Instant::now();
        loop {
            // The members' database failed: this aggregator stops (a
            // restart on its database resumes).
            let reason = self.shared.call(|f| f.fatal().map(str::to_string)).await;
            if let Some(reason) = reason.map_err(|e| fatal(e.message()))? {
                return Err(fatal(format!("the members' federation stopped: {reason}")));
            }
            let value = self.shared.call(check.clone()).await;
            if let Some(value) = value.map_err(|e| fatal(e.message()))?.map_err(failed)? {
                return Ok(Some(value));
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
            if let (Some(round), Some(beat)) = (round, self.beat)
                && last_beat.elapsed() >= beat
            {
                last_beat = tokio::time::Instant::now();
                let request = pb::HeartbeatRequest {
                    site: self.name.to_string(),
                    round,
                };
                match self.parent.heartbeat(request).await {
                    Ok(reply) if released && !reply.get_ref().keep_going => return Ok(None),
                    Ok(_) => {}
                    Err(status) => return Err(status.into()),
                }
            }
        }
    }

    /// The agreement steps: the members' merged offer up, the parent's answer down.
    async fn agreement(&mut self) -> Result<(), Failure> {
        let data = &self.plan.data;
        let federation_scale = data.standardize.enabled
            && data.standardize.scope == tessera_data::ScaleScope::Federation;
        for step in AgreementStep::ALL {
            if step == AgreementStep::Statistics && !federation_scale {
                continue;
            }
            let offer = self
                .wait_for(None, false, move |f| {
                    if f.relay_settled(step)? {
                        return Ok(Some(None));
                    }
                    Ok(f.relay_offer(step)?.map(Some))
                })
                .await?
                .flatten();
            let Some(offer) = offer else { continue };
            tracing::info!(%step, "members' offers merged; offering them to the parent");
            let reply = client::agree(self.parent, self.name, offer).await?;
            let settled = match (step, reply) {
                (AgreementStep::Kinds, agree_reply::Result::Kinds(k)) => {
                    let kinds = convert::kinds_from_pb(k).map_err(fatal)?;
                    self.shared.call(move |f| f.settle_kinds(kinds)).await
                }
                (AgreementStep::Levels, agree_reply::Result::Agreement(a)) => {
                    let agreement = convert::agreement_from_pb(a).map_err(fatal)?;
                    self.shared
                        .call(move |f| f.settle_agreement(agreement))
                        .await
                }
                (AgreementStep::Statistics, agree_reply::Result::Statistics(s)) => {
                    self.shared.call(move |f| f.settle_statistics(s)).await
                }
                _ => return Err(Failure::Retry("agreement out of order".into())),
            };
            settled.map_err(|e| fatal(e.message()))?.map_err(failed)?;
        }
        Ok(())
    }

    /// The parent's tasks until its run is over.
    async fn tasks(&mut self) -> Result<(), Failure> {
        loop {
            let Some((metadata, header, mut stream)) =
                next_task(self.parent, self.name, self.remote).await?
            else {
                self.shared
                    .call(Federation::relay_finish)
                    .await
                    .map_err(|e| fatal(e.message()))?
                    .map_err(fatal)?;
                return Ok(());
            };
            // The task joins the parent's round trace; this aggregator's
            // round below, and its members' spans, join it too.
            let span = client::task_span(self.name, &header, &metadata);
            let (global, _) = client::receive_parameters(&header, &mut stream, None)
                .instrument(span.clone())
                .await?;
            let global = Arc::new(global);
            let round = header.round;
            match header.kind() {
                pb::TaskKind::Fit => self.fit(round, global, span).await?,
                pb::TaskKind::Evaluate => {
                    self.evaluate(round, global, header.regional_model)
                        .instrument(span)
                        .await?
                }
                // An aggregator answers no analytics queries (its plan's tree
                // serves none: the coordinator keeps only flat runs), and
                // takes no part in rollouts (flat runs too).
                pb::TaskKind::Analyze
                | pb::TaskKind::Unspecified
                | pb::TaskKind::Canary
                | pb::TaskKind::Serve => {
                    return Err(Failure::Retry("task of unknown kind".into()));
                }
            }
        }
    }

    /// Runs round `round` below from the parent's `global`; sends its mean up.
    async fn fit(
        &mut self,
        round: u32,
        global: Arc<tessera_core::ParameterSet>,
        task: tracing::Span,
    ) -> Result<(), Failure> {
        let under = task.clone();
        self.shared
            .call(move |f| f.relay_fit(round, global, under))
            .await
            .map_err(|e| fatal(e.message()))?;
        let answer = self
            .wait_for(Some(round), true, move |f| f.relay_answer(round))
            .await?;
        match answer {
            None => {
                tracing::warn!(
                    round,
                    "the parent stopped waiting for this aggregator's round"
                );
            }
            Some(None) => {
                empty_round(self.parent, self.name, round, self.withdraw, self.beat).await?
            }
            Some(Some(update)) => {
                // Under secure aggregation this aggregator masks its
                // members' mean toward its parent, as they masked theirs.
                let reply = if self.plan.secure_aggregation.enabled {
                    client::secure_submit(
                        self.parent,
                        self.name,
                        self.plan,
                        self.identity,
                        self.key_ring,
                        round,
                        update.clone(),
                        Duration::ZERO,
                    )
                    .instrument(tracing::info_span!(parent: &task, "upload"))
                    .await?
                } else {
                    client::send_update(
                        self.name,
                        self.parent,
                        round,
                        &update,
                        tessera_compress::Codec::NONE,
                        None,
                        client::Extras::default(),
                    )
                    .instrument(tracing::info_span!(parent: &task, "upload"))
                    .await?
                };
                if reply.accepted {
                    tracing::info!(
                        round,
                        examples = update.n_examples,
                        "update accepted by the parent"
                    );
                } else {
                    tracing::warn!(round, reason = %reply.reason, "update refused by the parent");
                }
            }
        }
        Ok(())
    }

    /// The members evaluate the parent's model of round `round` (with
    /// `regional`, the parent's own regional model once its run is over);
    /// their pooled evaluation goes up, with each site's.
    async fn evaluate(
        &mut self,
        round: u32,
        global: Arc<tessera_core::ParameterSet>,
        regional: bool,
    ) -> Result<(), Failure> {
        self.shared
            .call(move |f| f.relay_evaluate(round, global, regional))
            .await
            .map_err(|e| fatal(e.message()))?;
        let Some(evaluated) = self
            .wait_for(Some(round), false, move |f| f.relay_evaluation(round))
            .await?
        else {
            return Ok(());
        };
        evaluation_up(
            self.parent,
            self.name,
            round,
            &evaluated.pooled,
            &evaluated.sites,
        )
        .await?;
        Ok(())
    }
}

/// The parent's next task: its header (with the call's metadata) and the
/// stream of its parameters; `None` once the parent's run is over.
async fn next_task(
    parent: &mut FederationClient<Channel>,
    name: &str,
    remote: &client::Remote,
) -> Result<
    Option<(
        tonic::metadata::MetadataMap,
        pb::TaskHeader,
        tonic::Streaming<pb::Task>,
    )>,
    Failure,
> {
    let (metadata, mut stream, _) = parent
        .next_task(pb::TaskRequest {
            site: name.to_string(),
            held_round: None,
        })
        .await?
        .into_parts();
    let Some(first) = stream.message().await? else {
        return Err(Failure::Retry("task stream ended without a task".into()));
    };
    client::still_trusted(remote, "the parent")?;
    match first.part {
        Some(task::Part::Finished(f)) => {
            tracing::info!(reason = %f.reason, "the parent's run is over");
            Ok(None)
        }
        Some(task::Part::Header(h)) => Ok(Some((metadata, h, stream))),
        _ => Err(Failure::Retry("a task starts with its header".into())),
    }
}

/// Round `round` closed below without an update to send up: with
/// `withdraw`, the parent's round goes on without this aggregator at once
/// (the simulation drops an empty region as a dropout); a parent without
/// withdrawals waits until its deadline or liveness, and asked again the
/// answer is the same: wait a heartbeat interval (`beat`) before asking.
async fn empty_round(
    parent: &mut FederationClient<Channel>,
    name: &str,
    round: u32,
    withdraw: bool,
    beat: Option<Duration>,
) -> Result<(), Failure> {
    let reason = "its members' round closed without an update to send up";
    if withdraw {
        let withdrawn = client::withdraw(parent, name, round, reason, false).await?;
        tracing::warn!(
            round,
            withdrawn,
            "withdrew from the parent's round: {reason}"
        );
    } else {
        tracing::warn!(round, "{reason}");
        tokio::time::sleep(beat.unwrap_or(Duration::from_secs(1))).await;
    }
    Ok(())
}

/// Each site's evaluation of round `round` sent up beside their pooled
/// one, so that the root reports every site (protocol 1.9). Whether the
/// parent took it (a refusal is logged, not an error).
async fn evaluation_up(
    parent: &mut FederationClient<Channel>,
    name: &str,
    round: u32,
    pooled: &tessera_learn::Evaluation,
    sites: &[(String, tessera_learn::Evaluation)],
) -> Result<bool, Failure> {
    let mut report = tonic::Request::new(convert::evaluation_with_sites_to_pb(
        name, round, pooled, sites,
    ));
    tessera_proto::trace::inject(&tracing::Span::current(), report.metadata_mut());
    match parent.submit_evaluation(report).await {
        Ok(_) => {
            tracing::info!(
                round,
                examples = pooled.n_examples,
                sites = sites.len(),
                "evaluation sent up"
            );
            Ok(true)
        }
        Err(status) if status.code() == Code::InvalidArgument => {
            tracing::warn!(round, reason = %status.message(), "evaluation refused by the parent");
            Ok(false)
        }
        Err(status) => Err(status.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The members' database failing for a while is retried; a damaged
    /// record, or any other failure, stops the aggregator.
    #[test]
    fn a_failing_database_is_retried_and_a_damaged_one_is_fatal() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some("database is locked".into()),
        );
        match failed(CoordinatorError::Store(StoreError::Sqlite(busy))) {
            Failure::Retry(reason) => assert!(reason.contains("database is locked"), "{reason}"),
            Failure::Fatal(e) => panic!("a busy database stopped the aggregator: {e}"),
        }
        let damaged = CoordinatorError::Store(StoreError::Damaged("round 3".into()));
        assert!(matches!(failed(damaged), Failure::Fatal(_)));
        let config = CoordinatorError::Config("another plan".into());
        assert!(matches!(failed(config), Failure::Fatal(_)));
    }
}
