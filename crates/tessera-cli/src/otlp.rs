//! Traces exported over OTLP (`--otlp URL`): the spans of a coordinator,
//! an aggregator or a participant (each round, its tasks, training,
//! uploads, aggregation and evaluation; joins and agreement) sent in
//! batches, over gRPC, to an OpenTelemetry collector. Each process exports
//! its own; the coordinator's round context travels with each task, so a
//! collector that receives from all of them shows one trace a round.
//!
//! Tracing never decides a run: a collector that is down or refuses spans
//! costs the spans (the exporter's error is logged), nothing else. A
//! collector on the same host or network is spoken to over `http://`; one
//! further away over `https://`, with `--otlp-tls DIR`: the roots that
//! verify the collector (`ca.pem`) and, where it asks for a client
//! certificate, the one this process presents (`cert.pem`, `key.pem`).

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The exporter's provider and the runtime its gRPC client lives on.
struct Exporting {
    provider: SdkTracerProvider,
    _runtime: tokio::runtime::Runtime,
}

static EXPORTING: OnceLock<Exporting> = OnceLock::new();

/// `url` and `tls` checked: `http://HOST:PORT` (an OTLP/gRPC receiver,
/// usually port 4317) without a TLS folder, or `https://HOST:PORT` with
/// one; the TLS to speak (none over http), else what is wrong.
pub fn check(url: &str, tls: Option<&Path>) -> anyhow::Result<Option<ClientTlsConfig>> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("--otlp {url:?} is not a URL: {e}"))?;
    let host = uri.host().unwrap_or_default();
    if host.is_empty() {
        anyhow::bail!("--otlp {url:?} names no host");
    }
    match (uri.scheme_str(), tls) {
        (Some("http"), None) => Ok(None),
        (Some("http"), Some(_)) => anyhow::bail!(
            "--otlp-tls is for a collector reached over https://, and --otlp {url:?} is plain http"
        ),
        (Some("https"), None) => anyhow::bail!(
            "--otlp {url:?} is reached over TLS: give --otlp-tls DIR, a folder holding ca.pem \
             (the roots that verify the collector; /etc/ssl/certs/ca-certificates.crt for a \
             public CA) and, where the collector asks for a client certificate, cert.pem and key.pem"
        ),
        (Some("https"), Some(dir)) => {
            let pems = tessera_tls::outside_pems(dir)
                .with_context(|| format!("--otlp-tls {}", dir.display()))?;
            let mut config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pems.ca))
                .domain_name(host.trim_start_matches('[').trim_end_matches(']'));
            if let Some((cert, key)) = pems.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            Ok(Some(config))
        }
        _ => anyhow::bail!(
            "--otlp {url:?} must be http://HOST:PORT or https://HOST:PORT (an OTLP/gRPC receiver)"
        ),
    }
}

/// Where and as what a process exports its spans.
#[derive(Debug, Clone, Copy)]
pub struct Export<'a> {
    /// The collector's URL (`--otlp`).
    pub url: &'a str,
    /// The TLS folder for an `https://` collector (`--otlp-tls`).
    pub tls: Option<&'a Path>,
    /// The service the spans are sent as.
    pub service: &'static str,
}

/// Starts exporting this process's spans as `export` says; the tracer for
/// the subscriber's OpenTelemetry layer.
pub fn start(export: Export<'_>) -> anyhow::Result<Tracer> {
    let Export { url, tls, service } = export;
    let tls = check(url, tls)?;
    // The gRPC client needs a runtime of its own: the commands' runtimes
    // start later and end before the last spans are sent.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tessera-otlp")
        .enable_all()
        .build()
        .context("cannot start the OTLP exporter's runtime")?;
    let entered = runtime.enter();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        exporter = exporter.with_tls_config(tls);
    }
    let exporter = exporter
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
