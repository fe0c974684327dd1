//! The coordinator: serves the federation over gRPC, drives the same
//! [`tessera_engine::RoundEngine`] the simulator drives, and keeps every
//! decision durable in its [`RunStore`] (SQLite) so that a coordinator killed at any moment
//! resumes the round it was in, with nothing lost and nothing counted twice.
//!
//! Key design decision: all federation logic lives in [`Federation`], a
//! synchronous state machine owned by one thread of its own ([`Shared`]);
//! the async gRPC layer ([`Service`]) only validates, decodes, sends it work
//! and waits. Accepted updates are committed to the store before they are
//! acknowledged.
//!
//! Inside `Federation`: joining, liveness, audit and traffic in `state.rs`,
//! then one file per phase (`state/agreement.rs`, `training.rs`,
//! `evaluation.rs`, `resume.rs`, `report.rs`), with `advance()` moving it
//! on. How a federation trains is
//! one `Training` (`state/training_mode.rs`: `Sync`, `Async` or `Relay`,
//! each holding its engine once built). In asynchronous runs
//! (`state/buffered.rs`) any free participant gets the newest model, every K
//! accepted updates a step is committed with its aggregate, and each step's
//! model is evaluated as sites next ask for work. Who takes part is the
//! orchestrator's `Roster`, an evaluation under way its `EvaluationRound`,
//! bytes its `Traffic`, and each site's upload codec its `Links` (adaptive:
//! from timed uploads and the time from task to update, on the run clock).
//! With a download codec each task carries the model whole, as a change, or
//! not at all, by what the participant says it holds.
//!
//! `Shared` is an actor: the tonic `Service` and a 100 ms ticker send the
//! federation work (`Shared::call`) and await the answer, so database
//! commits, aggregation and unmasking never run on tokio's workers; opening
//! it, which replays the run, happens on that thread too (`Shared::open`).
//! `serve_shared` serves any open federation, an aggregator's too.
//!
//! The `Federation` holds a `Box<dyn RunStore>` (`store.rs`): typed rows
//! (`store/rows.rs`) and writes in transactions (`RunTx`, committed whole;
//! a round's close, and the vocabulary with the initial model, are one
//! each), so that another backend needs no change to the state machine.
//! `SqliteStore` is SQLite in WAL mode with synchronous commits: runs, the
//! plan, agreement offers and results (by `AgreementStep`, stored as 1, 2,
//! 3), every model version, each completed round's aggregate, the open round
//! and its accepted updates, evaluations, round cohorts, an audit log and a
//! privacy ledger that triggers keep append-only. It holds no key: the
//! central DP noise key is drawn from the operating system at each start
//! and kept in memory, and a restart replays the stored noised aggregates.
//! The file and its `-wal` and `-shm` are mode 0600. A database error while
//! answering a call is `Refusal::Unavailable`, which clients retry; one
//! after the engine counted something is fatal (`state/fatal.rs`).
//!
//! *Invariant:* if an update's commit fails (or its local-DP ledger row, or
//! a buffered step), the federation turns fatal (`Federation::fatal`): that
//! call and every later one are refused as unavailable (participants
//! retry), the server stops at once with `CoordinatorError::Fatal`, and the
//! binary exits 70. A restart
//! replays the stored aggregates through the strategy (rebuilding momentum,
//! moments, control variates), checks that the result equals the stored
//! model bit for bit, then reopens the open round and resubmits its stored
//! updates.
//!
//! # In a tree
//!
//! `state/relay.rs` makes a `Federation` an aggregator of the plan's tree
//! (`Federation::open_node`): its members' merged offers go up and the
//! parent's answers come back (`relay_offer`, `settle_kinds`,
//! `settle_agreement`, `settle_statistics`); a parent's task of round `r`
//! opens round `r` over an `aggregator_engine` (FedAvg at rate 1 from the
//! parent's model), whose aggregate is the answer (`relay_answer`, from the
//! database after a restart); members evaluate the parent's model
//! (`relay_evaluate`), and once the parent's run is over its own last model
//! (`relay_finish`), for the report's `topology.regions`. A restarted
//! aggregator does not replay: it reopens the open round when the parent
//! sends its task again. Secure aggregation runs at every aggregator
//! (`Tree::check_secure_sizes`: at least three members each), and an
//! aggregator masks its own answer toward its parent
//! (`tessera_participant::client::secure_submit`, shared with participants);
//! central DP runs only where sites are members (`Tree::check_privacy_layers`).
//!
//! # Secure aggregation
//!
//! In `state/secure.rs` the round's cohort runs the SecAgg+ stages (keys,
//! shares, masked inputs, signed views, unmasking) through polled
//! `SecureAggregation` calls. The coordinator drives the orchestrator's
//! `secure::SecureRound`, the one the simulator drives, which closes a stage
//! when all have answered or after the liveness period, and hands the
//! recovered sum to the engine (`submit_sum`). It relays the cohort's
//! certificates with the parameters: sites sign keys and views with their
//! certificate keys and check each other against their own CA. The same
//! machinery sums evaluations under `site_metrics = "aggregate-only"` (the
//! default) and `"dp"`: secure round `r | EVALUATION_ROUND`
//! (`open_secure_evaluation`), whose cohort is every joined site, those not
//! live counted as dropped; under `"dp"`, `finish_secure_evaluation` noises
//! the sum with `MetricsDp`'s calibration and a key from the operating
//! system before anything keeps it. None of this state is stored: after a
//! restart the round is reopened and trained again, and an evaluation in
//! progress closes without figures.
//!
//! Against the coordinator: randomness that protects a site's data (DP-SGD
//! noise and batches, SecAgg seeds and mask keys) is drawn at that site; the
//! database holds no noise key; under secure aggregation nothing of one site
//! reaches the coordinator in the clear (update, example count, loss, steps,
//! and its evaluation unless the plan says `site_metrics = "clear"`); under
//! `"dp"` only noised sums of metrics are stored.
//!
//! # Analytics queries
//!
//! With `[analytics] serve_seconds` the sites stay connected after the last
//! round (`state/analytics.rs`): an analyst listed in `[analytics]
//! analysts`, authenticated as a site is, asks through the `Analytics`
//! service (`analytics_service.rs`); the query and the run's budgets are
//! checked before any site sees it, the sites mask their noised
//! contributions in secure round `release | ANALYTICS_ROUND`, and the
//! answer and its ledger rows are stored before the analyst gets them.
//!
//! # Trust boundary
//!
//! Nothing a participant reports is used before it is checked against what
//! the coordinator knows (`state/trust.rs`): the row counts the site
//! declared in its levels offer (fixed for the run, at most 2^40) bound its
//! updates' example and step counts, its evaluations' rows and loss, and its
//! statistics; sums under secure aggregation are bounded by the survivors'
//! declarations. A violation refuses that message with the reason (audited,
//! counted), never the coordinator. Around it: site names of at most 128
//! bytes without control characters, and per-site counters for joined
//! sites only; audit details cut to 1,000 bytes, and refusals past 50 a
//! second counted, not written; a connection refused more than 10 times a
//! second turned away unread (`ConnectionLimits` in `service/limits.rs`); plans
//! refused before round 1 when their settings cannot work (`Plan::validate`
//! and, for the federation's size, `Plan::check_cohort`: every reason at
//! once). docs/PROTOCOL.md has the details.
#![deny(missing_docs)]

mod analytics_service;
mod bucket;
pub mod compat;
mod service;
mod shared;
mod state;
pub mod store;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_engine::report::RunReport;
use tessera_engine::{Plan, PlanError};
use tessera_proto::pb::federation_server::FederationServer;
use thiserror::Error;

pub use service::Service;
pub use shared::Shared;
pub use state::attribution::UpdateExtras;
pub use state::capabilities::{run_capabilities, site_capabilities};
pub use state::rollout::{MAX_MODEL_FILE, Rollout, RolloutModel};
pub use state::waiting::REMIND_EVERY;
pub use state::{
    Clock, Federation, InitialModel, ManualClock, ModelPart, Refusal, SiteEvaluations, SiteView,
    SystemClock, TaskView,
};
pub use store::{
    AgreementStep, Control, ControlRow, NewVersion, PostgresStore, RolloutDecision, RunStatus,
    RunStore, RunTx, SqliteStore, Stage, StoreError, VersionRow, is_postgres,
};

/// Why the coordinator stopped.
#[derive(Debug, Error)]
pub enum CoordinatorError {
    /// The plan is unusable.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine refused.
    #[error(transparent)]
    Engine(#[from] tessera_engine::EngineError),
    /// A stored message does not decode.
    #[error(transparent)]
    Proto(#[from] tessera_proto::ProtoError),
    /// A setting is unusable.
    #[error("{0}")]
    Config(String),
    /// The network failed.
    #[error("network: {0}")]
    Network(String),
    /// The database failed a write the engine had already counted (an
    /// accepted update, its privacy-ledger release, a buffered step): the
    /// coordinator refused every call after it and stopped. A restart on
    /// the same database resumes from what it holds; the command line exits
    /// with status 70 (`EX_SOFTWARE`).
    #[error("stopped on a database failure ({0}); restart on the same database to resume")]
    Fatal(String),
    /// A signal (SIGTERM, SIGINT) stopped the coordinator; everything it
    /// acknowledged is in the database, and a restart on it resumes the run.
    /// The command line exits with 128 + the signal's number.
    #[error(
        "stopped by {0}: every accepted update and closed round is in the database; start the coordinator again on it to resume"
    )]
    Interrupted(&'static str),
    /// The operator aborted the run (`tessera abort`); it never resumes.
    #[error("the run was aborted by its operator: {0}")]
    Aborted(String),
}

/// How to run a coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The plan.
    pub plan: Plan,
    /// Its text, stored with the run.
    pub plan_text: String,
    /// The database: a SQLite file, or a PostgreSQL URL (`postgres://`),
    /// where this coordinator waits for the lease, as a standby, until no
    /// other coordinator on it leads.
    pub db: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Silence after which a participant counts as gone.
    pub liveness: Duration,
    /// Mutual TLS from these files; `None` is the explicit insecure mode.
    pub tls: Option<tessera_tls::TlsFiles>,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Start a new run in a database whose newest run has ended (finished,
    /// stopped or aborted); without it such a database is refused, so that
    /// a coordinator started again by mistake does not train anew.
    pub new_run: bool,
    /// `--continue-from`: start from an earlier run's model instead of the
    /// plan's initial one.
    pub initial: Option<InitialModel>,
    /// `tessera rollout`: the run rolls out a registered model to the sites
    /// instead of training ([`Rollout`]).
    pub rollout: Option<Rollout>,
    /// `tessera dry-run`: the run ends at the data agreement, waiting at
    /// most this long for it.
    pub dry_run: Option<Duration>,
}

/// Runs the federation until every round is done; returns the report.
/// `on_listening` is called with the bound address (useful with port 0).
pub async fn serve(
    config: CoordinatorConfig,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<RunReport, CoordinatorError> {
    serve_until(config, on_listening, std::future::pending()).await
}

/// [`serve`], stopping early when `interrupted` completes (a signal the
/// caller listens for; it gives the signal's name): everything acknowledged
/// is in the database already, the stop is audited, and the result is
/// [`CoordinatorError::Interrupted`].
pub async fn serve_until(
    config: CoordinatorConfig,
    on_listening: impl FnOnce(SocketAddr),
    interrupted: impl std::future::Future<Output = &'static str> + Send,
) -> Result<RunReport, CoordinatorError> {
    let shared = open(&config).await?;
    let listener = bind(config.listen).await?;
    serve_shared_until(
        shared,
        listener,
        config.tls,
        config.metrics,
        on_listening,
        interrupted,
    )
    .await
}

/// Opens the federation of `config` (resuming its unfinished run) on its
/// owner thread, without serving it yet: for callers that serve more beside
/// it (the live dashboard), then [`serve_shared`]. A database whose newest
/// run has ended is refused unless `config.new_run`.
pub async fn open(config: &CoordinatorConfig) -> Result<Arc<Shared>, CoordinatorError> {
    let (plan, text, db, liveness) = (
        config.plan.clone(),
        config.plan_text.clone(),
        config.db.clone(),
        config.liveness,
    );
    let (new_run, initial) = (config.new_run, config.initial.clone());
    let (rollout, dry_run) = (config.rollout.clone(), config.dry_run);
    let listen = config.listen;
    Shared::open(move || {
        let store = open_store(&db, listen)?;
        if !new_run {
            refuse_an_ended_run(&*store, &db)?;
        }
        let mut federation = Federation::open_node(plan, &text, store, liveness, None)?;
        if let Some(initial) = initial {
            federation.continue_from(initial)?;
        }
        if let Some(rollout) = rollout {
            federation.set_rollout(rollout)?;
        }
        if let Some(wait) = dry_run {
            federation.set_dry_run(wait);
        }
        tracing::info!(run = federation.run_id(), "coordinator ready");
        Ok::<_, CoordinatorError>(federation)
    })
    .await
}

/// The coordinator's store at `db`: a SQLite file, or a PostgreSQL database
/// whose lease this coordinator waits for (saying who holds it) and takes.
fn open_store(
    db: &std::path::Path,
    listen: SocketAddr,
) -> Result<Box<dyn RunStore>, CoordinatorError> {
    let Some(url) = db.to_str().filter(|d| is_postgres(d)) else {
        return Ok(Box::new(SqliteStore::open(db)?));
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this machine".into());
    let holder = format!(
        "the coordinator for {listen} (process {} on {host})",
        std::process::id()
    );
    let shown = store::redacted(url);
    let store = PostgresStore::lead(url, &holder, REMIND_EVERY, &mut |by| {
        tracing::warn!(
            "standby: another coordinator leads on {shown}: {by}; this one takes over \
             the run when its lease is released"
        );
    })?;
    tracing::info!(
        epoch = store.epoch(),
        "leading on {shown} (lease epoch {})",
        store.epoch().unwrap_or(0)
    );
    Ok(Box::new(store))
}

/// The stored runs at `db` (a SQLite file, which must exist, or a
/// PostgreSQL URL), to read them or to record an operator's request.
pub fn open_existing_store(db: &std::path::Path) -> Result<Box<dyn RunStore>, StoreError> {
    match db.to_str().filter(|d| is_postgres(d)) {
        Some(url) => Ok(Box::new(PostgresStore::open(url)?)),
        None => Ok(Box::new(SqliteStore::open_existing(db)?)),
    }
}

/// Refuses a database whose newest run has ended and none is running.
fn refuse_an_ended_run(store: &dyn RunStore, db: &std::path::Path) -> Result<(), CoordinatorError> {
    let db = std::path::PathBuf::from(store::redacted(&db.to_string_lossy()));
    if store.unfinished_run()?.is_some() {
        return Ok(());
    }
    let Some(newest) = store.runs()?.into_iter().next() else {
        return Ok(());
    };
    Err(CoordinatorError::Config(format!(
        "the newest run in {} ({}) has {}; `tessera status --db {}` shows it; \
         give --new-run to start another run in this database, or another --db",
        db.display(),
        newest.id,
        match newest.status.as_str() {
            "finished" => "finished",
            "stopped" => "been stopped by its operator",
            "aborted" => "been aborted by its operator",
            _ => "ended",
        },
        db.display(),
    )))
}

/// A listener on `address`.
pub async fn bind(address: SocketAddr) -> Result<tokio::net::TcpListener, CoordinatorError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| CoordinatorError::Network(format!("cannot listen on {address}: {e}")))
}

/// Serves an open federation on `listener` (mutual TLS from `tls`, metrics
/// at `metrics`) until it is finished and its participants were told, or
/// ten seconds after; returns the report. A fatal database failure
/// ([`Federation::fatal`]) stops it at once with [`CoordinatorError::Fatal`].
pub async fn serve_shared(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    tls: Option<tessera_tls::TlsFiles>,
    metrics: Option<SocketAddr>,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<RunReport, CoordinatorError> {
    serve_shared_until(
        shared,
        listener,
        tls,
        metrics,
        on_listening,
        std::future::pending(),
    )
    .await
}

/// [`serve_shared`], stopping early when `interrupted` completes (see
/// [`serve_until`]).
pub async fn serve_shared_until(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    tls: Option<tessera_tls::TlsFiles>,
    metrics: Option<SocketAddr>,
    on_listening: impl FnOnce(SocketAddr),
    interrupted: impl std::future::Future<Output = &'static str> + Send,
) -> Result<RunReport, CoordinatorError> {
    let address = listener
        .local_addr()
        .map_err(|e| CoordinatorError::Network(e.to_string()))?;
    on_listening(address);
    if let Some(metrics) = metrics {
        let bound = telemetry::serve_metrics(metrics).await?;
        tracing::info!(%bound, "metrics at http://{bound}/metrics");
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ticker_shared = Arc::clone(&shared);
    let ticker = tokio::spawn(async move {
        let mut finished_at: Option<Instant> = None;
        let mut stopped_at: Option<Instant> = None;
        let mut ticks = 0u32;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ticks = ticks.wrapping_add(1);
            // The operators' requests (`tessera stop`, `abort`): every second.
            let read_controls = ticks.is_multiple_of(10);
            let Ok((finished, stopped, fatal)) = ticker_shared
                .call(move |f| {
                    if read_controls {
                        f.check_control();
                    }
                    f.advance();
                    (
                        // Finished once the sites are no longer kept for queries.
                        f.is_finished() && !f.serving_queries(),
                        f.stopped().is_some() || f.aborted().is_some(),
                        f.fatal().is_some(),
                    )
                })
                .await
            else {
                continue;
            };
            // Every call is refused already: nothing to wait for.
            if fatal {
                let _ = stop_tx.send(());
                return;
            }
            // A run that cannot go on: the sites still asking are told why
            // for a few seconds, then the server stops.
            if stopped
                && stopped_at.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(3)
            {
                let _ = stop_tx.send(());
                return;
            }
            if finished {
                let started = *finished_at.get_or_insert_with(Instant::now);
                let joined = ticker_shared
                    .call(|f| f.store().participants(f.run_id()).unwrap_or_default())
                    .await
                    .unwrap_or_default();
                let told = ticker_shared
                    .told_finished
                    .lock()
                    .map(|t| joined.iter().all(|s| t.contains(s)))
                    .unwrap_or(true);
                if told || started.elapsed() > Duration::from_secs(10) {
                    let _ = stop_tx.send(());
                    return;
                }
            }
        }
    });
    let callers = Arc::new(match &tls {
        Some(files) => tessera_tls::Callers::new(files.clone()),
        None => tessera_tls::Callers::insecure(),
    });
    let service = FederationServer::new(Service::new(Arc::clone(&shared), Arc::clone(&callers)))
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let analytics = tessera_proto::pb::analytics_server::AnalyticsServer::new(
        analytics_service::AnalyticsService::new(Arc::clone(&shared), Arc::clone(&callers)),
    );
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(service)
        .add_service(analytics);
    let signalled = Arc::new(std::sync::Mutex::new(None::<&'static str>));
    let heard = Arc::clone(&signalled);
    let shutdown = async move {
        tokio::select! {
            _ = stop_rx => {}
            signal = interrupted => {
                tracing::warn!(
                    signal,
                    "stopping: every accepted update and closed round is in the database; \
                     start the coordinator again on it to resume the run"
                );
                if let Ok(mut heard) = heard.lock() {
                    *heard = Some(signal);
                }
            }
        }
    };
    let served = match tls {
        None => server
            .serve_with_incoming_shutdown(tessera_tls::plain_incoming(listener), shutdown)
            .await
            .map_err(|e| CoordinatorError::Network(e.to_string())),
        Some(files) => {
            let tls = tessera_tls::ServerTls::load(files)
                .map_err(|e| CoordinatorError::Config(e.to_string()))?;
            let audit = Arc::clone(&shared);
            let incoming = tessera_tls::incoming(listener, tls, move |refusal| {
                tracing::warn!(reason = %refusal.message, "handshake refused");
                metrics::counter!(
                    telemetry::names::HANDSHAKE_REFUSALS,
                    "reason" => refusal.reason
                )
                .increment(1);
                // Audited under the certificate's name when one was
                // presented (the address and the cause in the detail).
                audit.post(move |f| f.reject_audit(refusal.who(), "connect", &refusal.message));
            });
            server
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .map_err(|e| CoordinatorError::Network(e.to_string()))
        }
    };
    ticker.abort();
    // A fatal failure first: whatever else went wrong came after it. The
    // round's spans close here, so that the collector gets the round as far
    // as it went (an interrupted or stopped run).
    let ended = shared
        .call(|f| {
            f.close_trace();
            let fatal = f.fatal().map(str::to_string);
            (
                fatal,
                f.stopped().map(str::to_string),
                f.aborted().map(str::to_string),
                f.report(),
            )
        })
        .await
        .map_err(|e| CoordinatorError::Config(e.message().to_string()))?;
    if let (Some(reason), _, _, _) = ended {
        return Err(CoordinatorError::Fatal(reason));
    }
    served?;
    if let Some(signal) = signalled.lock().ok().and_then(|s| *s) {
        let audit = shared.call(move |f| {
            f.audit_stop(signal);
        });
        let _ = audit.await;
        return Err(CoordinatorError::Interrupted(signal));
    }
    match ended {
        (_, _, Some(reason), _) => Err(CoordinatorError::Aborted(reason)),
        (_, Some(reason), _, _) => Err(CoordinatorError::Config(reason)),
        (_, None, None, report) => Ok(report),
    }
}
