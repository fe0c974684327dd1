//! Trace context across processes (OpenTelemetry, W3C Trace Context): a
//! span's `traceparent` and `tracestate` carried in a gRPC call's metadata.
//!
//! The coordinator writes its round's context into each task it hands out
//! ([`inject`]); a participant makes its task, training and upload spans
//! children of it ([`follow`]), so that one round is one trace across the
//! coordinator and every participant. The other way, a participant's
//! context only becomes a link of the coordinator's span ([`link`]): a
//! participant never chooses which trace the coordinator's spans join.
//!
//! Without an OpenTelemetry layer in the process's subscriber (no
//! `--otlp`), nothing is written and what is read changes nothing. A
//! malformed `traceparent` is ignored, never refused: tracing never decides
//! whether a call succeeds.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes `span`'s trace context into `metadata` (nothing when `span` is
/// not recorded by an OpenTelemetry layer).
pub fn inject(span: &tracing::Span, metadata: &mut MetadataMap) {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(&context, &mut Writer(metadata));
}

/// Makes `span`, not yet entered, a child of the valid trace context in
/// `metadata`; without one `span` keeps its own parent.
pub fn follow(span: &tracing::Span, metadata: &MetadataMap) {
    let context = TraceContextPropagator::new().extract(&Reader(metadata));
    if context.span().span_context().is_valid() {
        // A span already started, or not recorded, keeps its parent.
        let _ = span.set_parent(context);
    }
}

/// Makes `span`, not yet entered, a child of `parent` in the trace only
/// (its OpenTelemetry parent), not in this process's span tree: `parent`
/// then closes, and is exported, when it ends, even while `span` is still
/// open (a call a participant holds open).
pub fn under(span: &tracing::Span, parent: &tracing::Span) {
    let context = parent.context();
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// Adds the valid trace context in `metadata` to `span` as a link.
pub fn link(span: &tracing::Span, metadata: &MetadataMap) {
    let context = TraceContextPropagator::new().extract(&Reader(metadata));
    let linked = context.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

/// Makes `span`, not yet entered, a child of the span `parent` of trace
/// `trace`, both named by their ids alone: processes with no common caller
/// (gossip peers) that derive the same ids place their spans in one trace.
/// The parent is never exported: a collector shows the trace without its
/// root. All-zero ids (invalid) leave `span` as it is.
pub fn under_ids(span: &tracing::Span, trace: [u8; 16], parent: [u8; 8]) {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let remote = SpanContext::new(
        TraceId::from_bytes(trace),
        SpanId::from_bytes(parent),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    if remote.is_valid() {
        let context = opentelemetry::Context::new().with_remote_span_context(remote);
        let _ = span.set_parent(context);
    }
}

/// The `traceparent` a span writes, for tests and logs: `None` when the
/// span is not recorded.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut metadata = MetadataMap::new();
    inject(span, &mut metadata);
    metadata
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

struct Writer<'a>(&'a mut MetadataMap);

impl Injector for Writer<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct Reader<'a>(&'a MetadataMap);

impl Extractor for Reader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;

    /// A subscriber whose spans carry OpenTelemetry contexts (nothing exported).
    fn traced() -> impl tracing::Subscriber + Send + Sync {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
    }

    fn trace_id(span: &tracing::Span) -> opentelemetry::trace::TraceId {
        span.context().span().span_context().trace_id()
    }

    #[test]
    fn a_followed_span_joins_the_trace_that_was_injected() {
        tracing::subscriber::with_default(traced(), || {
            let round = tracing::info_span!("round");
            let mut metadata = MetadataMap::new();
            inject(&round, &mut metadata);
            let sent = traceparent(&round).unwrap_or_default();
            assert_eq!(
                metadata.get("traceparent").map(|v| v.to_str().ok()),
                Some(Some(sent.as_str()))
            );
            // A span elsewhere, a root of its own until it follows.
            let task = tracing::info_span!(parent: None, "task");
            follow(&task, &metadata);
            assert_eq!(trace_id(&task), trace_id(&round));
            let alone = tracing::info_span!(parent: None, "alone");
            assert_ne!(trace_id(&alone), trace_id(&round));
            // Under the round in the trace alone: the same trace, and the
            // round closes while the call is open.
            let call = tracing::info_span!(parent: None, "call");
            under(&call, &round);
            assert_eq!(trace_id(&call), trace_id(&round));
            drop(round);
        });
    }

    #[test]
    fn a_malformed_traceparent_is_ignored_and_nothing_is_written_untraced() {
        let theirs = opentelemetry::trace::TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736")
            .unwrap_or(opentelemetry::trace::TraceId::INVALID);
        let carrying = |value: &'static str| {
            let mut metadata = MetadataMap::new();
            metadata.insert("traceparent", MetadataValue::from_static(value));
            metadata
        };
        tracing::subscriber::with_default(traced(), || {
            // The well-formed one is followed (the control)...
            let span = tracing::info_span!(parent: None, "task");
            follow(
                &span,
                &carrying("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            );
            assert_eq!(trace_id(&span), theirs);
            // ...and none of these: no flags, version ff, a zero span id,
            // a short trace id, not one at all.
            for bad in [
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
                "zz-not-a-trace",
            ] {
                let span = tracing::info_span!(parent: None, "task");
                follow(&span, &carrying(bad));
                assert_ne!(trace_id(&span), theirs, "{bad}");
                assert!(span.context().span().span_context().is_valid(), "{bad}");
            }
        });
        // Without an OpenTelemetry layer nothing is written.
        let span = tracing::info_span!("round");
        assert_eq!(traceparent(&span), None);
    }
}
