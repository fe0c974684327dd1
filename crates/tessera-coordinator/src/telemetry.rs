//! Prometheus metrics of the coordinator, served at `/metrics`.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::CoordinatorError;

/// Metric names, in one place.
pub mod names {
    /// Rounds closed, by status (`completed`, `quorum_not_met`, `failed`).
    pub const ROUNDS: &str = "tessera_rounds_closed_total";
    /// The round in progress.
    pub const CURRENT_ROUND: &str = "tessera_round";
    /// Participants heard from within the liveness period.
    pub const CONNECTED: &str = "tessera_participants_connected";
    /// Participants that joined the run.
    pub const JOINED: &str = "tessera_participants_joined";
    /// Updates accepted.
    pub const ACCEPTED: &str = "tessera_updates_accepted_total";
    /// Updates rejected, by reason.
    pub const REJECTED: &str = "tessera_updates_rejected_total";
    /// Reports (updates, evaluations, offers, statistics) refused at the
    /// trust boundary, by kind.
    pub const REFUSED_REPORTS: &str = "tessera_refused_reports_total";
    /// Calls turned away unread because their connection had too many
    /// refused calls a second.
    pub const THROTTLED: &str = "tessera_throttled_calls_total";
    /// Bytes received from participants.
    pub const BYTES_RECEIVED: &str = "tessera_bytes_received_total";
    /// Bytes sent to participants.
    pub const BYTES_SENT: &str = "tessera_bytes_sent_total";
    /// Bytes received from each participant (label `site`).
    pub const SITE_BYTES_RECEIVED: &str = "tessera_participant_bytes_received_total";
    /// Bytes sent to each participant (label `site`).
    pub const SITE_BYTES_SENT: &str = "tessera_participant_bytes_sent_total";
    /// Bytes of updates, by participant and codec (labels `site`, `codec`).
    pub const UPDATE_BYTES: &str = "tessera_update_bytes_total";
    /// Each participant's measured upload rate, bytes per second (label `site`).
    pub const UPLOAD_RATE: &str = "tessera_participant_upload_bytes_per_second";
    /// Seconds from a round's opening to its close.
    pub const ROUND_SECONDS: &str = "tessera_round_duration_seconds";
    /// TLS handshakes refused, by reason (label `reason`).
    pub const HANDSHAKE_REFUSALS: &str = "tessera_handshake_refusals_total";
}

/// Installs the Prometheus recorder (once per process) and serves it at
/// `http://ADDR/metrics`; returns the bound address.
pub async fn serve_metrics(address: SocketAddr) -> Result<SocketAddr, CoordinatorError> {
    let handle = recorder()?;
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
        CoordinatorError::Network(format!("cannot listen on {address} for metrics: {e}"))
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| CoordinatorError::Network(e.to_string()))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(%e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

fn recorder() -> Result<PrometheusHandle, CoordinatorError> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(names::ROUND_SECONDS.to_string()),
            &[
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
            ],
        )
        .map_err(|e| CoordinatorError::Config(e.to_string()))?
        .install_recorder()
        .map_err(|e| CoordinatorError::Config(format!("metrics: {e}")))?;
    metrics::describe_counter!(
        names::HANDSHAKE_REFUSALS,
        "TLS handshakes refused, by reason: unknown_ca, revoked, expired, bad_certificate, \
         no_certificate, not_tls, timeout, files, other"
    );
    Ok(HANDLE.get_or_init(|| handle).clone())
}
