//! Traces: an OpenTelemetry span per job and per phase, parented on the producer's `traceparent`,
//! exported over OTLP/HTTP when configured, and continued by every event the job publishes (the
//! trace context's path through the fleet: docs/design.md, "Headers").
//!
//! `t2v-worker run` always installs [`Telemetry::layer`] (tracing-opentelemetry over an SDK
//! tracer provider); the provider gets a batching OTLP exporter only when an endpoint is
//! configured ([`traces_endpoint`]). So the ids come from one place whether or not anything is
//! exported: the `job` span is an OpenTelemetry span whose trace id and parent are the
//! producer's (a new root when the record has no valid `traceparent`), its `phase` spans are its
//! children, and the events' `traceparent` names the job span. The ids are also recorded as
//! `trace_id` / `span_id` / `parent_span_id` fields, so logs show them (spans are logged on
//! close) and a log search joins producer, worker and event consumers without a collector.
//!
//! Without the layer (the library on its own, `generate`, a span filtered away) the ids are made
//! here, so events still carry a valid `traceparent`.
//!
//! Exporting never holds a job up: spans are queued and sent from the SDK's own thread, a failed
//! export is one warning (until an export succeeds again), and [`Telemetry::shutdown`] flushes
//! what is queued within [`SHUTDOWN_TIMEOUT`] when the worker exits.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use t2v_contract::headers::{TRACEPARENT, TRACESTATE};
use t2v_contract::TraceContext;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::TelemetryConfig;
use crate::metrics::outcome;

/// How long [`Telemetry::shutdown`] waits for the last spans to reach the collector.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The OTLP path of traces, appended to a base endpoint (OTLP exporter spec).
const TRACES_PATH: &str = "/v1/traces";

/// The crates whose spans become OpenTelemetry spans. Only ours: the HTTP client of the
/// exporter and the other libraries stay out, so exporting can never trace itself.
const TRACED_TARGETS: &[&str] = &["t2v_worker", "t2v_pipeline"];

/// The tracer provider of `t2v-worker run`, exporting or not.
pub struct Telemetry {
    provider: SdkTracerProvider,
    endpoint: Option<String>,
}

/// The exporter cannot be built from the configuration.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up OTLP export to {endpoint}: {source} — fix telemetry.otlp_endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT), or leave both empty to export nothing")]
pub struct TelemetryError {
    endpoint: String,
    source: opentelemetry_otlp::ExporterBuildError,
}

impl Telemetry {
    /// The provider for `cfg`: sampling, the resource (`service.name`, `service.instance.id` =
    /// `instance_id`, `service.version`) and, when [`traces_endpoint`] names a collector, a
    /// batching OTLP/HTTP exporter. Nothing is sent yet.
    pub fn start(cfg: &TelemetryConfig, instance_id: &str) -> Result<Self, TelemetryError> {
        let endpoint = traces_endpoint(&cfg.otlp_endpoint, |key| std::env::var(key).ok());
        let resource = Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .with_attributes([
                KeyValue::new("service.instance.id", instance_id.to_string()),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            ])
            .build();
        let mut builder = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio,
            ))))
            .with_resource(resource);
        if let Some(url) = &endpoint {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(url.clone())
                .build()
                .map_err(|source| TelemetryError {
                    endpoint: url.clone(),
                    source,
                })?;
            builder = builder.with_batch_exporter(WarnOnFailure::new(exporter, url));
        }
        Ok(Self {
            provider: builder.build(),
            endpoint,
        })
    }

    /// Where spans go (the full traces URL), if anywhere.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The layer that turns the worker's `tracing` spans into OpenTelemetry spans. It has its
    /// own filter (our crates, INFO and up), so `RUST_LOG` changes what is logged, never the ids.
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let scope = InstrumentationScope::builder("t2v-worker")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let targets = TRACED_TARGETS.iter().fold(Targets::new(), |t, target| {
            t.with_target(*target, tracing::Level::INFO)
        });
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer_with_scope(scope))
            .with_threads(false)
            .with_filter(targets)
    }

    /// Flushes the queued spans and stops exporting, waiting at most [`SHUTDOWN_TIMEOUT`]; call
    /// it after the last job (spans started afterwards get no ids from the provider). Blocks.
    pub fn shutdown(self) {
        let Some(endpoint) = self.endpoint else {
            return;
        };
        match self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            Ok(()) => tracing::info!(endpoint, "spans flushed to the OTLP collector"),
            Err(e) => tracing::warn!(
                endpoint,
                error = %e,
                "the last spans may not have reached the OTLP collector — check that it is reachable"
            ),
        }
    }
}

/// The OTLP/HTTP traces URL: `configured` (a base URL) when set, else the standard
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is), else `OTEL_EXPORTER_OTLP_ENDPOINT` (a base
/// URL); `None` = no export. `/v1/traces` is appended to a base URL that lacks it.
pub fn traces_endpoint(configured: &str, env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let nonempty = |v: Option<String>| v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let base = |url: String| {
        if url.trim_end_matches('/').ends_with(TRACES_PATH) {
            url
        } else {
            format!("{}{TRACES_PATH}", url.trim_end_matches('/'))
        }
    };
    if let Some(url) = nonempty(Some(configured.to_string())) {
        return Some(base(url));
    }
    if let Some(url) = nonempty(env(opentelemetry_otlp::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)) {
        return Some(url);
    }
    nonempty(env(opentelemetry_otlp::OTEL_EXPORTER_OTLP_ENDPOINT)).map(base)
}

/// An exporter that turns a failed export into one warning (and a line when it recovers), so an
/// unreachable collector is visible without flooding the logs every batch.
#[derive(Debug)]
struct WarnOnFailure<E> {
    inner: E,
    endpoint: String,
    failing: AtomicBool,
}

impl<E> WarnOnFailure<E> {
    fn new(inner: E, endpoint: &str) -> Self {
        Self {
            inner,
            endpoint: endpoint.to_string(),
            failing: AtomicBool::new(false),
        }
    }
}

impl<E: SpanExporter> SpanExporter for WarnOnFailure<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(e) if !self.failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                endpoint = self.endpoint,
                spans,
                error = %e,
                "OTLP export failed, spans dropped — check that the collector is reachable at telemetry.otlp_endpoint; jobs are not affected (further failures are logged at debug level until one succeeds)"
            ),
            Err(e) => {
                tracing::debug!(endpoint = self.endpoint, spans, error = %e, "OTLP export failed")
            }
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(endpoint = self.endpoint, "OTLP export works again")
            }
            Ok(()) => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A new non-zero span id.
pub fn new_span_id() -> u64 {
    rand::random::<u64>().max(1)
}

/// The producer's context carried by a record (`traceparent`, `tracestate`), if valid.
pub fn parent_context(headers: &[(String, Option<Vec<u8>>)]) -> Option<TraceContext> {
    let value = |key: &str| {
        headers
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    t2v_contract::headers::trace_context(value(TRACEPARENT), value(TRACESTATE))
}

/// The span of one job, named `job`, and the context its events carry: the producer's trace
/// (id, sampling, tracestate) with the job span's id. `attempt`, `model` and `outcome` are
/// recorded later ([`record_request`], [`record_outcome`]).
pub fn job_span(
    job_id: &str,
    worker_id: &str,
    headers: &[(String, Option<Vec<u8>>)],
) -> (tracing::Span, TraceContext) {
    let parent = parent_context(headers);
    let span = tracing::info_span!(
        "job",
        otel.kind = "consumer",
        otel.status_code = Empty,
        job_id = %job_id,
        worker_id = %worker_id,
        attempt = Empty,
        model = Empty,
        outcome = Empty,
        trace_id = Empty,
        span_id = Empty,
        parent_span_id = Empty,
    );
    if let Some(parent) = &parent {
        // Fails only without the OpenTelemetry layer; the fallback below covers that.
        let _ = span.set_parent(remote_context(parent));
    }
    let ctx = match otel_span_context(&span) {
        Some(sc) => TraceContext {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            sampled: sc.is_sampled(),
            tracestate: parent.as_ref().and_then(|p| p.tracestate.clone()),
        },
        None => match &parent {
            Some(parent) => TraceContext {
                span_id: new_span_id(),
                ..parent.clone()
            },
            None => TraceContext::new_root(),
        },
    };
    span.record("trace_id", ctx.trace_id_hex());
    span.record("span_id", format!("{:016x}", ctx.span_id));
    if let Some(parent) = &parent {
        span.record("parent_span_id", format!("{:016x}", parent.span_id));
    }
    (span, ctx)
}

/// Records the decoded request's `attempt` and `model` on the current job span.
pub fn record_request(attempt: u32, model: &str) {
    let span = tracing::Span::current();
    span.record("attempt", i64::from(attempt));
    span.record("model", model);
}

/// Records how the current job ended (a `metrics::outcome` label); failures mark the span as an
/// error, so trace backends show them.
pub fn record_outcome(label: &str) {
    let span = tracing::Span::current();
    span.record("outcome", label);
    if label == outcome::FAILED || label == outcome::UNDECODABLE {
        span.record("otel.status_code", "error");
    }
}

/// A phase of the current job (`generate`, `encode`, `upload`, `commit`, …): a child span of the
/// job span, exported under the phase's name, with a span id of its own.
pub fn phase_span(phase: &'static str) -> tracing::Span {
    let span = tracing::info_span!("phase", phase, otel.name = phase, span_id = Empty);
    let id = otel_span_context(&span)
        .map(|sc| u64::from_be_bytes(sc.span_id().to_bytes()))
        .unwrap_or_else(new_span_id);
    span.record("span_id", format!("{id:016x}"));
    span
}

/// The OpenTelemetry context of the producer's span, as a remote parent.
fn remote_context(parent: &TraceContext) -> opentelemetry::Context {
    let state = parent
        .tracestate
        .as_deref()
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    let flags = if parent.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(parent.trace_id.to_be_bytes()),
        SpanId::from_bytes(parent.span_id.to_be_bytes()),
        flags,
        true,
        state,
    ))
}

/// The ids the OpenTelemetry layer gave `span` (starting it), or `None` without the layer.
fn otel_span_context(span: &tracing::Span) -> Option<SpanContext> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::Value;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    fn header(key: &str, value: &str) -> (String, Option<Vec<u8>>) {
        (key.to_string(), Some(value.as_bytes().to_vec()))
    }

    /// Keeps what the provider exports.
    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    fn attribute(span: &SpanData, key: &str) -> Option<Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    }

    /// Runs `f` under a subscriber with the OpenTelemetry layer; returns what was exported.
    fn exported(f: impl FnOnce()) -> Vec<SpanData> {
        let collect = Collect::default();
        let telemetry = Telemetry {
            provider: SdkTracerProvider::builder()
                .with_simple_exporter(collect.clone())
                .build(),
            endpoint: None,
        };
        let subscriber = tracing_subscriber::registry().with(telemetry.layer());
        tracing::subscriber::with_default(subscriber, f);
        let spans = collect.0.lock().unwrap().clone();
        spans
    }

    #[test]
    fn the_job_span_continues_the_producers_trace_and_names_itself_in_the_events() {
        let producer = TraceContext::new_root();
        let headers = vec![
            header("content-type", "application/x-protobuf"),
            header(TRACEPARENT, &producer.traceparent()),
            header(TRACESTATE, "vendor=1"),
        ];
        let mut events_ctx = None;
        let spans = exported(|| {
            let (span, ctx) = job_span("job-1", "worker-a", &headers);
            events_ctx = Some(ctx);
            let _job = span.enter();
            record_request(2, "wan2.2-t2v-a14b");
            drop(phase_span("encode").entered());
            record_outcome(outcome::FAILED);
        });
        let ctx = events_ctx.unwrap();
        let job = spans.iter().find(|s| s.name == "job").expect("a job span");
        let encode = spans
            .iter()
            .find(|s| s.name == "encode")
            .expect("a phase span");

        let trace_id = TraceId::from_bytes(producer.trace_id.to_be_bytes());
        assert_eq!(job.span_context.trace_id(), trace_id);
        assert_eq!(
            job.parent_span_id,
            SpanId::from_bytes(producer.span_id.to_be_bytes())
        );
        assert!(job.parent_span_is_remote);
        assert_eq!(job.span_context.trace_state().header(), "vendor=1");
        assert_eq!(job.span_kind, opentelemetry::trace::SpanKind::Consumer);
        assert_eq!(attribute(job, "job_id"), Some("job-1".into()));
        assert_eq!(attribute(job, "worker_id"), Some("worker-a".into()));
        assert_eq!(attribute(job, "attempt"), Some(Value::I64(2)));
        assert_eq!(attribute(job, "model"), Some("wan2.2-t2v-a14b".into()));
        assert_eq!(attribute(job, "outcome"), Some("failed".into()));
        assert!(matches!(
            job.status,
            opentelemetry::trace::Status::Error { .. }
        ));

        assert_eq!(encode.span_context.trace_id(), trace_id);
        assert_eq!(encode.parent_span_id, job.span_context.span_id());

        // The events name the exported span.
        assert_eq!((ctx.trace_id, ctx.sampled), (producer.trace_id, true));
        assert_eq!(
            SpanId::from_bytes(ctx.span_id.to_be_bytes()),
            job.span_context.span_id()
        );
        assert_eq!(ctx.tracestate.as_deref(), Some("vendor=1"));
    }

    #[test]
    fn a_missing_or_malformed_traceparent_starts_a_new_trace() {
        for headers in [vec![], vec![header(TRACEPARENT, "00-zz-1-01")]] {
            let spans = exported(|| drop(job_span("job-2", "w", &headers).0));
            let job = spans.iter().find(|s| s.name == "job").expect("a job span");
            assert!(job.span_context.is_valid());
            assert_eq!(job.parent_span_id, SpanId::INVALID);
        }
    }

    #[test]
    fn without_the_layer_the_ids_are_made_here() {
        let producer = TraceContext::new_root();
        let headers = vec![header(TRACEPARENT, &producer.traceparent())];
        let (_span, ctx) = job_span("job-3", "w", &headers);
        assert_eq!(ctx.trace_id, producer.trace_id);
        assert_ne!(ctx.span_id, producer.span_id);
        let again = TraceContext::parse(&ctx.traceparent()).unwrap();
        assert_eq!((again.trace_id, again.span_id), (ctx.trace_id, ctx.span_id));
        let (_span, root) = job_span("job-4", "w", &[]);
        assert_ne!(root.trace_id, 0);
    }

    #[test]
    fn the_endpoint_comes_from_the_config_then_the_standard_variables() {
        let none = |_: &str| None;
        assert_eq!(traces_endpoint("", none), None);
        assert_eq!(
            traces_endpoint("http://collector:4318", none).as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            traces_endpoint("http://collector:4318/v1/traces/", none).as_deref(),
            Some("http://collector:4318/v1/traces/")
        );
        let env = |key: &str| match key {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://base:4318/".to_string()),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some("http://traces:9999/custom".to_string()),
            _ => None,
        };
        assert_eq!(
            traces_endpoint("https://mine:4318", env).as_deref(),
            Some("https://mine:4318/v1/traces")
        );
        assert_eq!(
            traces_endpoint("", env).as_deref(),
            Some("http://traces:9999/custom")
        );
        let base_only = |key: &str| {
            (key == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://base:4318/".to_string())
        };
        assert_eq!(
            traces_endpoint(" ", base_only).as_deref(),
            Some("http://base:4318/v1/traces")
        );
    }
}
