//! Traces exported over OTLP (`--otlp URL`): the spans of a coordinator,
//! an aggregator or a participant (each round, its tasks, training,
//! uploads, aggregation and evaluation; joins and agreement) sent in
//! batches, over gRPC, to an OpenTelemetry collector. Each process exports
//! its own; the coordinator's round context travels with each task, so a
//! collector that receives from all of them shows one trace a round.
//!
//! Tracing never decides a run: a collector that is down or refuses spans
//! costs the spans (the exporter's error is logged), nothing else. Only
//! plain `http://` is spoken: a collector (or an agent that forwards over
//! TLS) runs next to the process.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};

/// The exporter's provider and the runtime its gRPC client lives on.
struct Exporting {
    provider: SdkTracerProvider,
    _runtime: tokio::runtime::Runtime,
}

static EXPORTING: OnceLock<Exporting> = OnceLock::new();

/// `url` checked: `http://HOST:PORT` (an OTLP/gRPC receiver, usually port
/// 4317), else what is wrong with it.
pub fn check_url(url: &str) -> anyhow::Result<()> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("--otlp {url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => anyhow::bail!(
            "--otlp {url:?}: OTLP over TLS is not spoken here; point --otlp at a collector \
             (or agent) on this host or network over http://, and let it forward over TLS"
        ),
        _ => anyhow::bail!("--otlp {url:?} must be http://HOST:PORT (an OTLP/gRPC receiver)"),
    }
    if uri.host().is_none_or(str::is_empty) {
        anyhow::bail!("--otlp {url:?} names no host");
    }
    Ok(())
}

/// Starts exporting this process's spans to `url` as `service`; the
/// tracer for the subscriber's OpenTelemetry layer.
pub fn start(url: &str, service: &'static str) -> anyhow::Result<Tracer> {
    check_url(url)?;
    // The gRPC client needs a runtime of its own: the commands' runtimes
    // start later and end before the last spans are sent.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tessera-otlp")
        .enable_all()
        .build()
        .context("cannot start the OTLP exporter's runtime")?;
    let entered = runtime.enter();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(5))
        .build()
        .with_context(|| format!("cannot export traces to {url}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service)
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        )
        .build();
    drop(entered);
    let tracer = provider.tracer("tessera");
    let _ = EXPORTING.set(Exporting {
        provider,
        _runtime: runtime,
    });
    Ok(tracer)
}

/// Sends the spans still in the batch and stops exporting (at the end of
/// the command, whatever its outcome).
pub fn finish() {
    if let Some(exporting) = EXPORTING.get()
        && let Err(e) = exporting.provider.shutdown()
    {
        tracing::warn!(%e, "could not send the last spans to the OTLP collector");
    }
}
