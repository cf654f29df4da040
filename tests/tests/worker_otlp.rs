//! OpenTelemetry export from `t2v-worker run` (docs/design.md, "trace context"): with
//! `[telemetry] otlp_endpoint` set, each job becomes a `job` span, a child of the producer's
//! `traceparent`, with one child span per phase, sent over OTLP/HTTP (protobuf) to a collector —
//! here a small receiver in the test that decodes `ExportTraceServiceRequest`. The events' own
//! `traceparent` names the exported job span, the last spans are flushed when SIGTERM stops the
//! worker, and a collector that is not there costs one warning, never a job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use t2v_contract::headers::TRACEPARENT;
use t2v_contract::TraceContext;
use t2v_proto::v1::GenerationRequest;
use t2v_tests::{
    free_port, header, read_topic, synthetic_request, wait_completed, WorkerProcess, WorkerSetup,
};

/// One exported span with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

/// An OTLP/HTTP trace receiver on loopback, on a thread of its own (the test blocks on Kafka).
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    fn start() -> Self {
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let store = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| async move {
                let request =
                    ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
                let mut spans = store.lock().unwrap();
                for resource_spans in request.resource_spans {
                    let service = resource_spans
                        .resource
                        .as_ref()
                        .and_then(|r| string_attribute(&r.attributes, "service.name"))
                        .unwrap_or_default();
                    for scope in resource_spans.scope_spans {
                        for span in scope.spans {
                            spans.push(Received {
                                service: service.clone(),
                                span,
                            });
                        }
                    }
                }
                (
                    [(CONTENT_TYPE, "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Self { url, spans }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attribute(attributes, key).and_then(|v| match v {
        Value::StringValue(s) => Some(s),
        _ => None,
    })
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value)
}

fn request(job_id: &str) -> GenerationRequest {
    GenerationRequest {
        prompt: "a lantern drifting on a dark river".into(),
        ..synthetic_request(job_id, 3)
    }
}

/// Submits `job_id` under `producer`'s trace and waits for its Completed event; returns how
/// many events the job published.
async fn complete(
    setup: &WorkerSetup,
    worker: &WorkerProcess,
    job_id: &str,
    producer: &TraceContext,
) -> usize {
    setup
        .submitter()
        .submit_traced(request(job_id), producer.clone())
        .await
        .unwrap();
    let (events, _) = wait_completed(&setup.events, worker, Duration::from_secs(90));
    events.len()
}

/// Waits until the worker has logged `needle`.
fn wait_log(worker: &WorkerProcess, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !worker.logs().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the logs:\n{}",
            worker.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn jobs_and_phases_are_exported_as_children_of_the_producers_span() {
    let collector = Collector::start();
    let setup = WorkerSetup::new("otlp", 1).await;
    let mut worker = setup.start_worker(&[
        ("T2V_MODEL__SYNTHETIC_STEP_MS", "10"),
        ("T2V_TELEMETRY__OTLP_ENDPOINT", collector.url.as_str()),
        // Hold the batch for ten minutes: only the flush at exit can deliver these spans.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ]);
    let producer = TraceContext::new_root();
    let published = complete(&setup, &worker, "otlp-1", &producer).await;
    wait_log(&worker, "job finished", Duration::from_secs(10));
    assert!(
        collector.spans().is_empty(),
        "spans sent before shutdown although the batch waits 10 min: {:?}",
        collector.spans()
    );

    // 1. SIGTERM: the worker drains, flushes the queued spans and exits cleanly.
    let stopped = Instant::now();
    worker.stop(Duration::from_secs(30));
    let spans = collector.spans();
    eprintln!(
        "{} spans received; SIGTERM to exit {:?}",
        spans.len(),
        stopped.elapsed()
    );

    // 2. The job span: the producer's trace and span as parent, the job's attributes.
    let trace_id = producer.trace_id.to_be_bytes().to_vec();
    let jobs: Vec<&Received> = spans.iter().filter(|r| r.span.name == "job").collect();
    assert_eq!(jobs.len(), 1, "one job span: {spans:#?}");
    let job = &jobs[0].span;
    assert_eq!(jobs[0].service, "t2v-worker");
    assert_eq!(job.trace_id, trace_id, "the producer's trace id");
    assert_eq!(
        job.parent_span_id,
        producer.span_id.to_be_bytes().to_vec(),
        "a child of the producer's span"
    );
    assert_eq!(
        string_attribute(&job.attributes, "job_id").as_deref(),
        Some("otlp-1")
    );
    assert_eq!(
        string_attribute(&job.attributes, "outcome").as_deref(),
        Some("completed")
    );
    assert_eq!(
        string_attribute(&job.attributes, "model").as_deref(),
        Some("wan2.2-t2v-a14b")
    );
    assert_eq!(
        attribute(&job.attributes, "attempt"),
        Some(Value::IntValue(0))
    );
    assert!(string_attribute(&job.attributes, "worker_id").is_some_and(|w| !w.is_empty()));
    assert!(job.end_time_unix_nano > job.start_time_unix_nano);

    // 3. The phases: children of the job span, under their own names, inside its time.
    let phases: HashMap<&str, &Span> = spans
        .iter()
        .filter(|r| r.span.parent_span_id == job.span_id)
        .map(|r| (r.span.name.as_str(), &r.span))
        .collect();
    for name in ["generate", "encode", "upload", "commit"] {
        let phase = phases
            .get(name)
            .unwrap_or_else(|| panic!("no {name} span under the job: {spans:#?}"));
        assert_eq!(phase.trace_id, trace_id);
        assert!(
            phase.start_time_unix_nano >= job.start_time_unix_nano
                && phase.end_time_unix_nano <= job.end_time_unix_nano,
            "{name} lies inside the job span"
        );
    }

    // 4. The events continue the trace from the exported job span.
    let records = read_topic(&setup.events, published, Duration::from_secs(10));
    assert_eq!(records.len(), published);
    for record in records {
        let tp = TraceContext::parse(&header(&record, TRACEPARENT).expect("traceparent"))
            .expect("a valid traceparent");
        assert_eq!(tp.trace_id, producer.trace_id);
        assert_eq!(
            tp.span_id.to_be_bytes().to_vec(),
            job.span_id,
            "the event names the exported job span"
        );
    }
}

#[tokio::test]
async fn an_unreachable_collector_costs_a_warning_not_a_job() {
    let setup = WorkerSetup::new("otlp-down", 1).await;
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let mut worker = setup.start_worker(&[
        ("T2V_MODEL__SYNTHETIC_STEP_MS", "10"),
        ("T2V_TELEMETRY__OTLP_ENDPOINT", nobody.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ]);
    complete(&setup, &worker, "otlp-down-1", &TraceContext::new_root()).await;
    wait_log(&worker, "OTLP export failed", Duration::from_secs(20));

    let stopped = Instant::now();
    worker.stop(Duration::from_secs(30));
    let logs = worker.logs();
    let warnings = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("OTLP export failed"))
        .count();
    assert_eq!(warnings, 1, "one warning while failing:\n{logs}");
    assert!(
        stopped.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        stopped.elapsed()
    );
    eprintln!("SIGTERM to exit with no collector: {:?}", stopped.elapsed());
}
