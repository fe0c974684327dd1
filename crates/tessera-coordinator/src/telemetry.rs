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
    /// Sites the run waits for in its current step (`tessera status` names them).
    pub const WAITING_SITES: &str = "tessera_waiting_sites";
    /// Seconds the current step has waited.
    pub const WAITING_SECONDS: &str = "tessera_waiting_seconds";
    /// 1 while the run waits for this site, else 0 (label `site`).
    pub const SITE_AWAITED: &str = "tessera_site_awaited";
    /// When each site last called, Unix seconds (label `site`).
    pub const SITE_LAST_SEEN: &str = "tessera_site_last_seen_unix_seconds";
    /// The last evaluated round's (or step's) accuracy on every test row.
    pub const ROUND_ACCURACY: &str = "tessera_round_accuracy";
    /// The last evaluated round's (or step's) mean loss on every test row.
    pub const ROUND_LOSS: &str = "tessera_round_loss";
    /// Cohort members dropped for silence longer than the liveness period.
    pub const LIVENESS_DROPS: &str = "tessera_liveness_drops_total";
    /// TLS handshakes refused, by reason (label `reason`).
    pub const HANDSHAKE_REFUSALS: &str = "tessera_handshake_refusals_total";
}

/// Describes every metric of [`names`] to the installed recorder: the
/// `# HELP` line of each (and its unit, where it has one), once at start-up.
/// A metric added to `names` is described here too.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        names::ROUNDS,
        "Rounds closed, by status (completed, quorum_not_met, failed)."
    );
    describe_gauge!(names::CURRENT_ROUND, "The round (or step) in progress.");
    describe_gauge!(
        names::CONNECTED,
        "Participants heard from within the liveness period."
    );
    describe_gauge!(names::JOINED, "Participants that joined the run.");
    describe_counter!(names::ACCEPTED, "Updates accepted.");
    describe_counter!(
        names::REJECTED,
        "Updates rejected, by reason (malformed, implausible, revoked, identity, or the engine's reason)."
    );
    describe_counter!(
        names::REFUSED_REPORTS,
        "Reports (updates, evaluations, offers, statistics) refused at the trust boundary, by kind."
    );
    describe_counter!(
        names::THROTTLED,
        "Calls turned away unread: their connection had too many refused calls a second."
    );
    describe_counter!(
        names::BYTES_RECEIVED,
        Unit::Bytes,
        "Bytes received from participants."
    );
    describe_counter!(
        names::BYTES_SENT,
        Unit::Bytes,
        "Bytes sent to participants."
    );
    describe_counter!(
        names::SITE_BYTES_RECEIVED,
        Unit::Bytes,
        "Bytes received from each participant (label site)."
    );
    describe_counter!(
        names::SITE_BYTES_SENT,
        Unit::Bytes,
        "Bytes sent to each participant (label site)."
    );
    describe_counter!(
        names::UPDATE_BYTES,
        Unit::Bytes,
        "Bytes of updates, by participant and codec (labels site, codec)."
    );
    describe_gauge!(
        names::UPLOAD_RATE,
        "Each participant's measured upload rate in bytes per second (label site)."
    );
    describe_histogram!(
        names::ROUND_SECONDS,
        Unit::Seconds,
        "Seconds from a round's opening to its close."
    );
    describe_gauge!(
        names::ROUND_ACCURACY,
        "Accuracy of the last evaluated round's model on every test row."
    );
    describe_gauge!(
        names::ROUND_LOSS,
        "Mean loss of the last evaluated round's model on every test row."
    );
    describe_counter!(
        names::LIVENESS_DROPS,
        "Cohort members dropped for silence longer than the liveness period."
    );
    describe_gauge!(
        names::WAITING_SITES,
        "Sites the run waits for in its current step (tessera status names them)."
    );
    describe_gauge!(
        names::WAITING_SECONDS,
        Unit::Seconds,
        "Seconds the current step has waited."
    );
    describe_gauge!(
        names::SITE_AWAITED,
        "1 while the run waits for this site, else 0 (label site)."
    );
    describe_gauge!(
        names::SITE_LAST_SEEN,
        "When each site last called, Unix seconds (label site)."
    );
    describe_counter!(
        names::HANDSHAKE_REFUSALS,
        "TLS handshakes refused, by reason: unknown_ca, revoked, expired, bad_certificate, \
         no_certificate, not_tls, timeout, files, other"
    );
    // Shown from the start, at zero, rather than absent until a first drop.
    metrics::counter!(names::LIVENESS_DROPS).increment(0);
}

/// Sets the accuracy and loss gauges to a round's (or step's) evaluation.
pub fn round_evaluated(accuracy: f64, loss: f64) {
    metrics::gauge!(names::ROUND_ACCURACY).set(accuracy);
    metrics::gauge!(names::ROUND_LOSS).set(loss);
}

/// The `reason` label of an update refused before it was read, from the
/// refusal's text: `revoked` for a revoked certificate, `identity` for any
/// other certificate that may not speak for the site, `malformed` otherwise.
pub fn update_rejection(reason: &str) -> &'static str {
    let lower = reason.to_ascii_lowercase();
    if lower.contains("revoked") {
        "revoked"
    } else if lower.contains("certificate") {
        "identity"
    } else {
        "malformed"
    }
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
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}
