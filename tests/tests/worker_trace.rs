//! Trace propagation through `t2v-worker run` (docs/design.md, "trace context"): the producer's
//! trace id appears on the worker's job and phase spans (JSON logs, spans logged on close) and on
//! every event it publishes, whose `traceparent` names the worker's job span, itself a child of
//! the producer's span.

use std::collections::HashSet;
use std::time::Duration;

use t2v_contract::headers::TRACEPARENT;
use t2v_contract::TraceContext;
use t2v_proto::v1::GenerationRequest;
use t2v_tests::{header, read_topic, synthetic_request, wait_completed, WorkerSetup};

/// The worker's JSON log lines.
fn json_lines(logs: &str) -> Vec<serde_json::Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn the_producers_trace_id_is_on_the_workers_spans_and_events() {
    let setup = WorkerSetup::new("trace", 1).await;
    let worker = setup.start_worker(&[
        ("T2V_MODEL__SYNTHETIC_STEP_MS", "10"),
        ("T2V_LOG__FORMAT", "json"),
    ]);
    let request = GenerationRequest {
        prompt: "a paper boat on a puddle".into(),
        ..synthetic_request("trace-1", 3)
    };
    let producer = TraceContext::new_root();
    setup
        .submitter()
        .submit_traced(request, producer.clone())
        .await
        .unwrap();
    let (events, _) = wait_completed(&setup.events, &worker, Duration::from_secs(90));

    // 1. Every event continues the trace from one new span: the worker's job span.
    let mut event_spans = HashSet::new();
    for record in read_topic(&setup.events, events.len(), Duration::from_secs(10)) {
        let tp = TraceContext::parse(&header(&record, TRACEPARENT).expect("traceparent"))
            .expect("a valid traceparent");
        assert_eq!(tp.trace_id, producer.trace_id, "the producer's trace id");
        assert!(tp.sampled);
        event_spans.insert(tp.span_id);
    }
    assert_eq!(event_spans.len(), 1, "one job span: {event_spans:?}");
    let job_span_id = *event_spans.iter().next().unwrap();
    assert_ne!(job_span_id, producer.span_id, "a span of the worker's own");

    // 2. The logs: the job span (child of the producer's span) and its phase spans carry the trace.
    let trace_hex = producer.trace_id_hex();
    let lines = json_lines(&worker.logs());
    let job_span = |line: &serde_json::Value| {
        line["spans"]
            .as_array()
            .and_then(|spans| spans.iter().find(|s| s["name"] == "job").cloned())
    };
    let finished = lines
        .iter()
        .find(|l| l["fields"]["message"] == "job finished")
        .unwrap_or_else(|| panic!("no summary line; logs:\n{}", worker.logs()));
    let job = job_span(finished).expect("the summary line is inside the job span");
    assert_eq!(job["trace_id"], trace_hex.as_str());
    assert_eq!(job["span_id"], format!("{job_span_id:016x}").as_str());
    assert_eq!(
        job["parent_span_id"],
        format!("{:016x}", producer.span_id).as_str()
    );
    let mut phases = HashSet::new();
    for line in &lines {
        if line["fields"]["message"] != "close" || line["span"]["name"] != "phase" {
            continue;
        }
        let job = job_span(line).expect("a phase span inside the job span");
        assert_eq!(job["trace_id"], trace_hex.as_str());
        let span_id = line["span"]["span_id"].as_str().unwrap_or_default();
        assert_eq!(span_id.len(), 16, "a W3C span id: {line}");
        assert_ne!(span_id, format!("{job_span_id:016x}"));
        phases.insert(
            line["span"]["phase"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    for phase in ["generate", "encode", "upload", "commit"] {
        assert!(
            phases.contains(phase),
            "phase span {phase} closed: {phases:?}\nlogs:\n{}",
            worker.logs()
        );
    }
}
