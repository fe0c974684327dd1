//! The participant: joins a coordinator, agrees the data layout without
//! sending rows, then trains and evaluates next to the site's data whenever
//! the coordinator asks, with the same [`tessera_engine::Site`] the simulator
//! uses. It reconnects on its own, with backoff, when the coordinator or the
//! network goes away.
//!
//! Key design decision: a participant keeps nothing the coordinator cannot
//! give back; after a reconnection it asks for its task again, and training
//! is deterministic, so a repeated task gives the same update.
//!
//! `run(config)` connects (TLS or insecure), joins, reads only its own rows,
//! agrees, then loops on `NextTask`. Training runs on `spawn_blocking` while
//! heartbeats go out. A transport error means reconnecting with exponential
//! backoff; a refusal (version, identity, data) stops it; a failed local
//! training step withdraws from the run (the `Withdraw` call, with the
//! reason, when the coordinator takes withdrawals) before it stops, so that
//! no round waits out the liveness period for it. An absolute path in the
//! coordinator's plan is read only under `plan_dir` (`--plan-dir`). In
//! deployment the randomness that protects the site's data (DP-SGD's noise
//! and batches, SecAgg secrets) is drawn from the operating system here.
//!
//! `run_with_results` also gives what the site takes home
//! (`results::SiteResults`: the final global model as a model file with the
//! site's standardisation, and its report against a local-only baseline).
//!
//! `cause` names what stops a client for good (a certificate refused, from
//! the wrong CA, revoked or expired; TLS against plain text; the protocol
//! version; a plan refused), each with its process exit code, classified
//! in one place from the connection's or the first call's error chain.
//! Each process draws a random session that goes with its `Join`, so that
//! the coordinator tells a second live process of the same site apart.
//! `client` holds what any client of a federation needs (an endpoint with
//! TLS, an agreement step, a task's parameters, an update's stream, the
//! secure submission); aggregators use it toward their parent.
//! `supervisor` is every client's reconnect loop, shared with the aggregator
//! (toward its parent) and the peer (toward each neighbour): `Failure` (retry
//! or fatal, and the one classification of a gRPC status), a `Retry` policy
//! (first and longest pause, give up after) and `supervise`, which retries
//! an attempt with doubling pauses, stops at a fatal failure, gives up with
//! the last reason, and restarts the give-up clock when an attempt made
//! progress.
#![deny(missing_docs)]

mod analytics;
pub mod cause;
mod checks;
pub mod client;
pub mod continual;
mod cross_silo;
mod external;
mod join;
mod leave;
pub mod ledger;
mod local_state;
mod prepare;
pub mod results;
pub mod rollout;
pub mod supervisor;
mod train;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tessera_data::Dataset;
use tessera_engine::{FitTask, Plan, Site};
use tessera_proto::convert;
use tessera_proto::pb::{self, task};
use thiserror::Error;

pub use checks::plan_differences;
pub use external::{ExternalResults, ExternalSite, run_external};
pub use join::JoinSettings;
pub use leave::leave;
use prepare::{coordinators_plan, prepare};
use train::train;

use client::{receive_parameters, secure_submit, send_update};
use supervisor::{Failure, Progress, Retry, Stopped, supervise};
use tonic::Code;
use tracing::Instrument;

/// Why a participant stopped.
#[derive(Debug, Error)]
pub enum ParticipantError {
    /// The coordinator refused this participant (version, identity, data).
    #[error("refused by the coordinator: {0}")]
    Refused(String),
    /// The site's data or the plan is unusable.
    #[error("{0}")]
    Local(String),
    /// A setting is unusable.
    #[error("{0}")]
    Config(String),
    /// A cause retrying cannot fix (a certificate, TLS, the protocol
    /// version, the plan), named.
    #[error("{0}")]
    Stop(cause::Cause),
    /// The coordinator could not be reached for longer than the give-up time.
    #[error("{0}")]
    Unreachable(String),
}

impl ParticipantError {
    /// The process exit code of this failure (README, "Exit codes"): 10
    /// unreachable, 11 to 17 a [`cause::Cause`], 18 another refusal by the
    /// coordinator, 1 anything else (settings, this site's data).
    pub fn exit_code(&self) -> u8 {
        match self {
            ParticipantError::Unreachable(_) => 10,
            ParticipantError::Stop(cause) => cause.exit_code(),
            ParticipantError::Refused(_) => 18,
            ParticipantError::Local(_) | ParticipantError::Config(_) => 1,
        }
    }

    /// Why this site cannot take part, when it is its own doing (its data,
    /// its memory, a plan it refused): it withdraws with this reason.
    fn local_reason(&self) -> Option<String> {
        match self {
            ParticipantError::Local(why) => Some(why.clone()),
            ParticipantError::Stop(cause @ cause::Cause::PlanRefused(_)) => Some(cause.to_string()),
            _ => None,
        }
    }
}

/// How to run a participant.
#[derive(Debug, Clone)]
pub struct ParticipantConfig {
    /// The coordinator's URL, e.g. `http://127.0.0.1:7000`.
    pub coordinator: String,
    /// Other coordinators of the same run (standbys sharing its PostgreSQL
    /// database): when the one in use cannot be reached, or drops the
    /// session, the next is tried, in turn, with the same backoff and
    /// give-up time; one that is not leading does not listen.
    pub standbys: Vec<String>,
    /// This site's name.
    pub site: String,
    /// This site's data file (`None`: the plan's file for this site, or
    /// the rows the plan generates, `[data.synthetic]`). It is checked
    /// before the coordinator is called.
    pub data: Option<PathBuf>,
    /// This site's mapping of its data file (`data`) to the plan's columns
    /// ([`tessera_data::mapping::Mapping`]), applied as it is read.
    pub mapping: Option<tessera_data::mapping::Mapping>,
    /// Folder against which the plan's relative paths (its data files, a
    /// split membership file) are resolved: the plan's folder.
    pub plan_dir: PathBuf,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Give up after this long without reaching the coordinator.
    pub give_up_after: Duration,
    /// Fault injection for tests and drills: wait this long before sending each update.
    pub pause_before_update: Duration,
    /// Mutual TLS from these files (`None`: the explicit insecure mode).
    pub tls: Option<tessera_tls::TlsFiles>,
    /// The coordinator's name in its certificate (default: the URL's host).
    pub tls_domain: Option<String>,
    /// The plan this site agreed to: the coordinator's plan must equal it,
    /// or the site refuses to train (`None`: the coordinator's plan is taken
    /// as it comes, with a warning, since it sets the privacy this site gets).
    pub expect_plan: Option<Plan>,
    /// Consent to send the value sets of columns the coordinator's plan
    /// declares categorical without their levels (without it, and without
    /// `expect_plan`, such a plan is refused).
    pub share_levels: bool,
    /// The most memory this site gives the run, bytes (besides what the
    /// machine has available): a plan whose model needs more is refused
    /// after the agreement, before any model is built.
    pub max_memory_bytes: Option<f64>,
    /// The plan's secure joins this site consents to, and where their
    /// results go (`join`).
    pub joins: JoinSettings,
    /// This site's own privacy ledger (`ledger`): its releases per plan,
    /// across runs and restarts, checked against the plan's budgets before
    /// each (`None`: kept in memory for the process only).
    pub ledger: Option<PathBuf>,
    /// A personalized strategy's personal state across restarts
    /// (`local_state`; `None`: kept in memory for the process only).
    pub local_state: Option<PathBuf>,
    /// Continual learning: the earlier model this site continues from, and
    /// elastic weight consolidation toward it (`continual`).
    pub continual: Option<continual::SiteContinual>,
    /// The site will measure its importance of the final model
    /// (`--importance-out`): a plan or data that cannot give it is refused
    /// before the run, not after it.
    pub importance_out: bool,
    /// How the site takes part in rollouts of registered models
    /// (`rollout`): whether it tries candidates first, where it keeps the
    /// versions it receives.
    pub rollout: rollout::RolloutSettings,
}

/// What a participant did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParticipantSummary {
    /// Updates sent and accepted.
    pub updates_accepted: u32,
    /// Updates sent and refused.
    pub updates_refused: u32,
    /// Evaluations sent.
    pub evaluations: u32,
    /// Times the connection was re-established.
    pub reconnections: u32,
}

/// A participant ready to work for a run.
pub(crate) struct Ready {
    run_id: String,
    site: Option<Site>,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    /// How often to say we are at work (`None`: the coordinator does not listen).
    heartbeat: Option<Duration>,
    /// Whether the coordinator takes withdrawals (1.4).
    withdraw: bool,
    /// The round whose update awaits its outcome (SCAFFOLD's control variate).
    awaiting: Option<u32>,
    /// Seconds the last local training took (sent with its update, 1.25).
    train_seconds: Option<f64>,
    /// Under `[contribution]`: the rows and mean test-loss gradient at the
    /// last training's start (sent with its update, 1.26).
    test_gradient: Option<(u64, tessera_core::ParameterSet)>,
    /// Under `[contribution]` without DP: this site's data quality score,
    /// released once (its noise from this site's own secret), sent with
    /// every update (1.26).
    quality: Option<f64>,
    /// Asynchronous run: tasks name the model version, not a round, and
    /// batches are drawn from this site's own count of attempts.
    asynchronous: bool,
    attempts: u32,
    /// Secure aggregation: the plan asks for it, and this site's key pairs
    /// between rounds.
    secure: bool,
    /// Under `scheme = "homomorphic"`: updates are encrypted for the key
    /// holders instead of masked.
    homomorphic: bool,
    /// A key holder's round key between its steps, kept across sessions.
    held_key: client::HeldKey,
    key_ring: Option<tessera_secagg::KeyRing>,
    /// Secure aggregation: how this site signs and checks the protocol's
    /// messages (its certificate key and the federation CA).
    identity: Arc<client::SecureIdentity>,
    /// The run's plan (compression settings, shared codec seeds).
    plan: Arc<tessera_engine::Plan>,
    /// With compressed models: the round whose model this site holds, and it.
    held: Option<(u32, Arc<tessera_core::ParameterSet>)>,
    /// What the site keeps for its results.
    takeaway: results::Takeaway,
    /// Its rows and the agreed schema, when the plan keeps sites for
    /// analytics queries after training.
    analytics: Option<analytics::SiteAnalytics>,
    /// This site's own count of the releases of its data (`ledger`).
    site_ledger: ledger::SiteLedger,
    /// Where its personal state is saved after each training.
    state_file: Option<local_state::StateFile>,
}

enum SessionEnd {
    Finished,
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Takes part in the coordinator's run until it is over.
pub async fn run(config: ParticipantConfig) -> Result<ParticipantSummary, ParticipantError> {
    run_with_results(config).await.map(|(summary, _)| summary)
}

/// As [`run`], and what the site takes home ([`results::SiteResults`]:
/// the final global model, its report), where the run reached training.
pub async fn run_with_results(
    config: ParticipantConfig,
) -> Result<(ParticipantSummary, Option<results::SiteResults>), ParticipantError> {
    let (summary, ready) = take_part(&config, None).await?;
    let results = ready.map(|ready| results::SiteResults::of(config.site.clone(), ready));
    Ok((summary, results))
}

/// Takes part until the run is over, with the site's data or, given
/// `external`, its own learner; what it did, and the site as it ended.
async fn take_part(
    config: &ParticipantConfig,
    mut external: Option<external::Slot>,
) -> Result<(ParticipantSummary, Option<Ready>), ParticipantError> {
    // A data file that cannot be read is found here, not after joining.
    if let Some(data) = &config.data {
        std::fs::File::open(data).map_err(|e| {
            ParticipantError::Local(format!(
                "{}: cannot read this site's data file (--data): {e}",
                data.display()
            ))
        })?;
    }
    // This site's ledger is kept by one process at a time, held to the end.
    let _ledger_lock = match &config.ledger {
        Some(path) => Some(ledger::lock(path).map_err(ParticipantError::Local)?),
        None => None,
    };
    // The coordinator and its standbys, tried in turn.
    let urls: Vec<&str> = std::iter::once(config.coordinator.as_str())
        .chain(config.standbys.iter().map(String::as_str))
        .collect();
    let endpoints = urls
        .iter()
        .map(|url| client::endpoint(url, config.tls.as_ref(), config.tls_domain.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    let current = std::cell::Cell::new(0usize);
    // This process, told apart from another with the same identity.
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce)
        .map_err(|e| ParticipantError::Local(format!("cannot draw a session: {e}")))?;
    let process: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    // What lives across reconnections: the prepared site, the counts.
    let mut kept: (Option<Ready>, ParticipantSummary) = (None, ParticipantSummary::default());
    let ended = supervise(
        &Retry::reconnect(config.max_backoff, config.give_up_after),
        &mut kept,
        async |(ready, summary), progress| {
            let external = external.as_mut();
            let at = current.get();
            let ended = session(
                config,
                (&endpoints[at], urls[at]),
                &process,
                ready,
                summary,
                progress,
                external,
            )
            .await;
            // One that could not be reached (or joined): the next, in turn;
            // one that was reached and dropped the session: the same again.
            if ended.is_err() && !progress.reached() && urls.len() > 1 {
                current.set((at + 1) % urls.len());
            }
            ended
        },
        |(_, summary), reason, backoff| {
            tracing::warn!(%reason, ?backoff, next = urls[current.get()], "retrying");
            summary.reconnections += 1;
        },
    )
    .await;
    match ended {
        Ok(SessionEnd::Finished) => Ok((kept.1, kept.0)),
        Err(Stopped::Fatal(e)) => Err(e),
        Err(Stopped::GaveUp { after, reason }) => Err(ParticipantError::Unreachable(format!(
            "gave up: {} unreachable for {after:?} (--give-up-after): {reason}",
            if urls.len() > 1 {
                "every coordinator has been"
            } else {
                "the coordinator has been"
            }
        ))),
    }
}

async fn session(
    config: &ParticipantConfig,
    (endpoint, url): (&client::Remote, &str),
    process: &str,
    ready: &mut Option<Ready>,
    summary: &mut ParticipantSummary,
    progress: &Progress,
    external: Option<&mut external::Slot>,
) -> Result<SessionEnd, Failure> {
    let serving = config
        .rollout
        .models
        .as_deref()
        .map(rollout::served)
        .unwrap_or_default();
    let (mut client, welcome) = client::join_with(
        endpoint,
        url,
        &config.site,
        Some(process),
        config.rollout.canary,
        serving,
    )
    .await?;
    progress.made();
    if welcome.rollout.is_some() {
        return match rollout::take_part(config, &mut client, &welcome).await {
            Ok(()) => Ok(SessionEnd::Finished),
            Err(Failure::Fatal(e)) => {
                // This site cannot take part: it says so, so that the
                // rollout does not wait for it.
                if let Some(why) = e.local_reason() {
                    let reason = format!("this site cannot take part: {why}");
                    if let Err(status) =
                        client::withdraw(&mut client, &config.site, 0, &reason, true).await
                    {
                        tracing::warn!(%status, "could not withdraw");
                    }
                }
                Err(Failure::Fatal(e))
            }
            Err(other) => Err(other),
        };
    }
    if ready.as_ref().is_none_or(|r| r.run_id != welcome.run_id) {
        let prepared = match external {
            Some(slot) => external::prepare(config, &mut client, &welcome, slot).await,
            None => prepare(config, &mut client, &welcome).await,
        };
        match prepared {
            Ok(prepared) => {
                // The plan's joins, once per run, before training.
                join::run_joins(config, &mut client, &welcome, &prepared.plan).await;
                *ready = Some(prepared);
            }
            Err(Failure::Fatal(e)) => {
                // This site cannot take part (its data, its memory, the
                // plan it refused): it says so, so that no round waits for it.
                if let Some(why) = e.local_reason()
                    && client::can_withdraw(&welcome)
                {
                    let reason = format!("this site cannot take part: {why}");
                    match client::withdraw(&mut client, &config.site, 0, &reason, true).await {
                        Ok(_) => tracing::warn!(%reason, "withdrew from the run"),
                        Err(status) => tracing::warn!(%status, "could not withdraw"),
                    }
                }
                return Err(Failure::Fatal(e));
            }
            Err(other) => return Err(other),
        }
    }
    let Some(state) = ready.as_mut() else {
        return Err(Failure::Retry("not ready".into()));
    };
    // A key holder of a homomorphic run answers the coordinator's rounds
    // beside its own tasks, for as long as this session lasts.
    let _key_holder = (state.homomorphic
        && state
            .plan
            .secure_aggregation
            .key_holders
            .contains(&config.site))
    .then(|| {
        AbortOnDrop(tokio::spawn(client::key_holder(
            client.clone(),
            config.site.clone(),
            Arc::clone(&state.plan),
            Arc::clone(&state.identity),
            Arc::clone(&state.held_key),
        )))
    });
    loop {
        // While the coordinator has no task (a run waiting for sites), its
        // certificate is checked again every few seconds: a coordinator
        // revoked meanwhile is left at once, not at a task that never comes.
        let (metadata, mut stream, _) = {
            let asked = client.next_task(pb::TaskRequest {
                site: config.site.clone(),
                held_round: state.held.as_ref().map(|(round, _)| *round),
            });
            tokio::pin!(asked);
            loop {
                tokio::select! {
                    reply = &mut asked => break reply?.into_parts(),
                    () = tokio::time::sleep(Duration::from_secs(2)) => {
                        client::still_trusted(endpoint, "the coordinator")?;
                    }
                }
            }
        };
        let Some(first) = stream.message().await? else {
            return Err(Failure::Retry("task stream ended without a task".into()));
        };
        client::still_trusted(endpoint, "the coordinator")?;
        let header = match first.part {
            Some(task::Part::Finished(f)) => {
                tracing::info!(reason = %f.reason, "run finished");
                return Ok(SessionEnd::Finished);
            }
            Some(task::Part::Header(h)) => h,
            _ => return Err(Failure::Retry("a task starts with its header".into())),
        };
        if header.kind() == pb::TaskKind::Analyze {
            analytics::answer(&mut client, &config.site, state, &header).await?;
            continue;
        }
        if let Some(awaiting) = state.awaiting
            && header.previous_round >= awaiting
            && let Some(site) = state.site.as_mut()
        {
            site.round_closed(header.previous_round == awaiting && header.previous_update_counted);
            state.awaiting = None;
        }
        // This task's spans join the round's trace, whose context the
        // coordinator sent with the task.
        let task_span = client::task_span(&config.site, &header, &metadata);
        let held = state.held.take();
        let (global, tensors) = receive_parameters(&header, &mut stream, held)
            .instrument(tracing::info_span!(parent: &task_span, "receive_model"))
            .await?;
        let global = Arc::new(global);
        // With compressed models, keep the model to apply the next change to.
        if !header.model_codec.is_empty() {
            state.held = Some((header.model_round, Arc::clone(&global)));
        }
        match header.kind() {
            pb::TaskKind::Fit => {
                state.attempts += 1;
                let task = FitTask {
                    // The seed of this attempt's batches: the round, or in an
                    // asynchronous run this site's attempt count (it may train
                    // twice from one model version).
                    round: if state.asynchronous {
                        state.attempts
                    } else {
                        header.round
                    },
                    global: Arc::clone(&global),
                    instructions: tessera_proto::convert::instructions_from_pb(&header, tensors)
                        .map_err(|e| match e {
                            tessera_proto::ProtoError::Incompatible(_) => {
                                Failure::Fatal(ParticipantError::Refused(e.to_string()))
                            }
                            e => Failure::Retry(format!("malformed task: {e}")),
                        })?,
                    deadline: None,
                };
                // A coordinator asking for other work than the plan's (a
                // whole-model update under FedPer would carry the head)
                // is refused here, at the site, before any training.
                tessera_engine::check_instructions(
                    &state.plan,
                    &global,
                    &task.instructions,
                    &config.site,
                )
                .map_err(|e| {
                    Failure::Fatal(ParticipantError::Stop(cause::Cause::PlanRefused(e)))
                })?;
                let codec = if header.upload_codec.is_empty() {
                    tessera_compress::Codec::NONE
                } else {
                    header
                        .upload_codec
                        .parse()
                        .map_err(|e| Failure::Retry(format!("malformed task: {e}")))?
                };
                let Some(mut update) = train(config, &mut client, state, task)
                    .instrument(tracing::info_span!(parent: &task_span, "train"))
                    .await?
                else {
                    continue;
                };
                // Compression: what leaves is the codec's encoding; under
                // secure aggregation, the round's shared coordinates.
                let encoded = match state.site.as_mut() {
                    Some(site) if !codec.is_identity() => {
                        let shared = state
                            .secure
                            .then(|| state.plan.shared_codec_seed(header.round));
                        Some(site.encode_update(&mut update, &codec, header.round, shared))
                    }
                    _ => None,
                };
                // Awaited from here on, whether or not the reply arrives:
                // an update stored by a coordinator that dies before it
                // answers is counted, and the next task says so (SCAFFOLD's
                // pending control variate is then kept, not lost).
                state.awaiting = Some(header.round);
                let upload = tracing::info_span!(parent: &task_span, "upload");
                let reply = if state.secure && state.asynchronous {
                    // Its buffer's secure round, seated with its staleness.
                    client::buffer_submit(
                        &mut client,
                        &config.site,
                        &state.plan,
                        &state.identity,
                        &mut state.key_ring,
                        header.round,
                        update,
                        config.pause_before_update,
                    )
                    .instrument(upload)
                    .await?
                } else if state.secure && state.homomorphic {
                    client::he_submit(
                        &mut client,
                        &config.site,
                        &state.plan,
                        &state.identity,
                        header.round,
                        update,
                    )
                    .instrument(upload)
                    .await?
                } else if state.secure {
                    secure_submit(
                        &mut client,
                        &config.site,
                        &state.plan,
                        &state.identity,
                        &mut state.key_ring,
                        header.round,
                        update,
                        config.pause_before_update,
                    )
                    .instrument(upload)
                    .await?
                } else {
                    send_update(
                        &config.site,
                        &mut client,
                        header.round,
                        &update,
                        codec,
                        encoded,
                        client::Extras {
                            train_seconds: state.train_seconds.take(),
                            test_gradient: state.test_gradient.take(),
                            quality: state.quality,
                        },
                    )
                    .instrument(upload)
                    .await?
                };
                if reply.accepted {
                    summary.updates_accepted += 1;
                    tracing::info!(round = header.round, "update accepted");
                } else {
                    summary.updates_refused += 1;
                    tracing::warn!(round = header.round, reason = %reply.reason, "update refused");
                }
            }
            pb::TaskKind::Evaluate => {
                let mut site = state
                    .site
                    .take()
                    .ok_or_else(|| Failure::Retry("site busy".into()))?;
                let test = Arc::clone(&state.test);
                state
                    .takeaway
                    .evaluated(header.round, header.regional_model, &global);
                let plan = Arc::clone(&state.plan);
                let name = config.site.clone();
                let evaluating = tracing::info_span!(parent: &task_span, "evaluate");
                let (site, evaluation) = tokio::task::spawn_blocking(move || {
                    let _evaluating = evaluating.entered();
                    // The model the global parameters serve (IFCA's
                    // largest cluster, multi-task's body and this site's
                    // task's head), as the simulator evaluates it.
                    let e = tessera_engine::PlanBuild::served_to(plan.as_ref(), &global, &name)
                        .map_err(tessera_engine::EngineError::from)
                        .and_then(|served| site.evaluate(&served, &test));
                    (site, e)
                })
                .await
                .map_err(|e| {
                    Failure::Fatal(ParticipantError::Local(format!("evaluation crashed: {e}")))
                })?;
                state.site = Some(site);
                let evaluation = evaluation
                    .map_err(|e| Failure::Fatal(ParticipantError::Local(e.to_string())))?;
                if state.plan.privacy.site_metrics.sums_only() {
                    // Only the sum across sites may leave: the evaluation
                    // goes masked through a secure round of its own.
                    let counted = client::secure_evaluate(
                        &mut client,
                        &config.site,
                        &state.plan,
                        &state.identity,
                        &mut state.key_ring,
                        header.round,
                        &evaluation,
                    )
                    .instrument(tracing::info_span!(parent: &task_span, "send_evaluation"))
                    .await?;
                    if counted {
                        summary.evaluations += 1;
                    } else {
                        tracing::warn!(
                            round = header.round,
                            "the secure evaluation ended without this site's evaluation"
                        );
                    }
                    continue;
                }
                let mut report = tonic::Request::new(convert::evaluation_to_pb(
                    &config.site,
                    header.round,
                    &evaluation,
                ));
                let sending = tracing::info_span!(parent: &task_span, "send_evaluation");
                tessera_proto::trace::inject(&sending, report.metadata_mut());
                let sent = client.submit_evaluation(report).instrument(sending).await;
                match sent {
                    Ok(_) => summary.evaluations += 1,
                    // A refused evaluation does not end the participant's work.
                    Err(status) if status.code() == Code::InvalidArgument => {
                        tracing::warn!(round = header.round, reason = %status.message(), "evaluation refused");
                    }
                    Err(status) => return Err(status.into()),
                }
            }
            // Answered before the parameters (it has none); a rollout's
            // tasks come in a rollout only.
            pb::TaskKind::Analyze
            | pb::TaskKind::Unspecified
            | pb::TaskKind::Canary
            | pb::TaskKind::Serve => {
                return Err(Failure::Retry("task of unknown kind".into()));
            }
        }
    }
}

impl Ready {
    /// A site ready for `welcome`'s run of `plan`, with its rows (none for
    /// an external learner) and what it keeps for its results.
    fn new(
        config: &ParticipantConfig,
        welcome: &pb::Welcome,
        plan: Plan,
        mut site: Site,
        (train, test): (Dataset, Dataset),
        mut takeaway: results::Takeaway,
    ) -> Result<Self, Failure> {
        let homomorphic = plan.secure_aggregation.enabled
            && plan.secure_aggregation.scheme == tessera_secagg::Scheme::Homomorphic;
        if homomorphic {
            client::he_wire_check(welcome)?;
        }
        let (state_file, restored) = local_state::StateFile::open(
            config.local_state.as_deref(),
            &config.site,
            &welcome.run_id,
            &plan,
            &mut site,
        );
        takeaway.restored = restored;
        let site_ledger = ledger::SiteLedger::open(
            config.ledger.as_deref(),
            &config.site,
            &plan,
            &welcome.run_id,
        )
        .map_err(|e| Failure::Fatal(ParticipantError::Local(e)))?;
        Ok(Self {
            run_id: welcome.run_id.clone(),
            site: Some(site),
            train: Arc::new(train),
            test: Arc::new(test),
            heartbeat: client::heartbeat_interval(welcome),
            withdraw: client::can_withdraw(welcome),
            awaiting: None,
            asynchronous: plan.federation.mode == tessera_engine::Mode::Async,
            attempts: 0,
            train_seconds: None,
            test_gradient: None,
            quality: None,
            secure: plan.secure_aggregation.enabled,
            homomorphic,
            held_key: client::HeldKey::default(),
            key_ring: None,
            identity: Arc::new(
                if plan.secure_aggregation.enabled
                    || plan.privacy.site_metrics.sums_only()
                    || plan.analytics.serve_seconds > 0
                {
                    client::SecureIdentity::load(config.tls.as_ref()).map_err(Failure::Fatal)?
                } else {
                    client::SecureIdentity::load(None).map_err(Failure::Fatal)?
                },
            ),
            plan: Arc::new(plan),
            held: None,
            takeaway,
            analytics: None,
            site_ledger,
            state_file,
        })
    }
}
