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
#![deny(missing_docs)]

mod bucket;
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
use tokio_stream::wrappers::TcpListenerStream;

pub use service::Service;
pub use shared::Shared;
pub use state::{Clock, Federation, ManualClock, ModelPart, Refusal, SystemClock, TaskView};
pub use store::{AgreementStep, RunStore, RunTx, SqliteStore, StoreError};

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
}

/// How to run a coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The plan.
    pub plan: Plan,
    /// Its text, stored with the run.
    pub plan_text: String,
    /// The database.
    pub db: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Silence after which a participant counts as gone.
    pub liveness: Duration,
    /// Mutual TLS from these files; `None` is the explicit insecure mode.
    pub tls: Option<tessera_tls::TlsFiles>,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
}

/// Runs the federation until every round is done; returns the report.
/// `on_listening` is called with the bound address (useful with port 0).
pub async fn serve(
    config: CoordinatorConfig,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<RunReport, CoordinatorError> {
    let (plan, text, db, liveness) = (
        config.plan.clone(),
        config.plan_text.clone(),
        config.db.clone(),
        config.liveness,
    );
    let shared = Shared::open(move || {
        let store = SqliteStore::open(&db)?;
        let federation = Federation::open(plan, &text, store, liveness)?;
        tracing::info!(run = federation.run_id(), "coordinator ready");
        Ok::<_, CoordinatorError>(federation)
    })
    .await?;
    let listener = bind(config.listen).await?;
    serve_shared(shared, listener, config.tls, config.metrics, on_listening).await
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
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Ok((finished, stopped, fatal)) = ticker_shared
                .call(|f| {
                    f.advance();
                    (f.is_finished(), f.stopped().is_some(), f.fatal().is_some())
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
    let service = FederationServer::new(Service::new(Arc::clone(&shared), callers))
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(service);
    let shutdown = async {
        let _ = stop_rx.await;
    };
    let served = match tls {
        None => server
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
            .map_err(|e| CoordinatorError::Network(e.to_string())),
        Some(files) => {
            let tls = tessera_tls::ServerTls::load(files)
                .map_err(|e| CoordinatorError::Config(e.to_string()))?;
            let audit = Arc::clone(&shared);
            let incoming = tessera_tls::incoming(listener, tls, move |peer, reason| {
                tracing::warn!(%reason);
                audit.post(move |f| f.reject_audit(&peer, "connect", &reason));
            });
            server
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .map_err(|e| CoordinatorError::Network(e.to_string()))
        }
    };
    ticker.abort();
    // A fatal failure first: whatever else went wrong came after it.
    let ended = shared
        .call(|f| {
            let fatal = f.fatal().map(str::to_string);
            (fatal, f.stopped().map(str::to_string), f.report())
        })
        .await
        .map_err(|e| CoordinatorError::Config(e.message().to_string()))?;
    if let (Some(reason), _, _) = ended {
        return Err(CoordinatorError::Fatal(reason));
    }
    served?;
    match ended {
        (_, Some(reason), _) => Err(CoordinatorError::Config(reason)),
        (_, None, report) => Ok(report),
    }
}
