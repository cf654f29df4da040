//! Trace context for jobs (issue 5 "Observability"), without an OpenTelemetry SDK: the job's
//! `tracing` span and its phase spans carry W3C ids as fields — `trace_id` from the request's
//! `traceparent` (or a new root), a fresh `span_id` each, the job's `parent_span_id` — and every
//! event the job publishes carries `traceparent` = the same trace id + the job span's id, so a
//! backend (or a log search) joins producer, worker and event consumers on one trace id. The
//! spans reach the logs on close (with their busy/idle times); nothing is exported over OTLP.

use t2v_producer::headers::{TraceContext, TRACEPARENT, TRACESTATE};

/// A new non-zero span id.
pub fn new_span_id() -> u64 {
    rand::random::<u64>().max(1)
}

/// The job's context: the parent's trace (id, sampling, tracestate) with a new span id, or a
/// new root when the record carries no valid `traceparent`. Returns it with the parent's span id.
pub fn job_context(headers: &[(String, Option<Vec<u8>>)]) -> (TraceContext, Option<u64>) {
    let value = |key: &str| {
        headers
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    match value(TRACEPARENT).and_then(TraceContext::parse) {
        Some(parent) => {
            let parent_span = parent.span_id;
            let ctx = TraceContext {
                span_id: new_span_id(),
                tracestate: value(TRACESTATE).map(str::to_owned),
                ..parent
            };
            (ctx, Some(parent_span))
        }
        None => (TraceContext::new_root(), None),
    }
}

/// The span of one job, named `job`, carrying its W3C ids.
pub fn job_span(job_id: &str, ctx: &TraceContext, parent_span: Option<u64>) -> tracing::Span {
    tracing::info_span!(
        "job",
        job_id = %job_id,
        trace_id = %ctx.trace_id_hex(),
        span_id = %format!("{:016x}", ctx.span_id),
        parent_span_id = %parent_span.map(|s| format!("{s:016x}")).unwrap_or_default(),
    )
}

/// A phase of the current job (`generate`, `encode`, `upload`, `commit`, …): a child span with
/// a span id of its own.
pub fn phase_span(phase: &'static str) -> tracing::Span {
    tracing::info_span!("phase", phase, span_id = %format!("{:016x}", new_span_id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(key: &str, value: &str) -> (String, Option<Vec<u8>>) {
        (key.to_string(), Some(value.as_bytes().to_vec()))
    }

    #[test]
    fn a_job_continues_the_producers_trace_with_a_new_span() {
        let producer = TraceContext::new_root();
        let headers = vec![
            header("content-type", "application/x-protobuf"),
            header(TRACEPARENT, &producer.traceparent()),
            header(TRACESTATE, "vendor=1"),
        ];
        let (ctx, parent) = job_context(&headers);
        assert_eq!(ctx.trace_id, producer.trace_id);
        assert_ne!(ctx.span_id, producer.span_id);
        assert_eq!(parent, Some(producer.span_id));
        assert_eq!(ctx.tracestate.as_deref(), Some("vendor=1"));
        let again = TraceContext::parse(&ctx.traceparent()).unwrap();
        assert_eq!((again.trace_id, again.span_id), (ctx.trace_id, ctx.span_id));
    }

    #[test]
    fn a_missing_or_malformed_traceparent_starts_a_new_trace() {
        for headers in [vec![], vec![header(TRACEPARENT, "00-zz-1-01")]] {
            let (ctx, parent) = job_context(&headers);
            assert_ne!(ctx.trace_id, 0);
            assert_eq!(parent, None);
        }
    }
}
