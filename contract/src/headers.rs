//! Record header keys and values every t2v record carries: `content-type`, `t2v-schema` and the
//! W3C trace context `traceparent` / `tracestate` (docs/design.md "Topics"). A Kafka client turns
//! [`record_headers`] into its own header type at its edge.

use crate::trace::TraceContext;

/// Header keys.
pub const CONTENT_TYPE: &str = "content-type";
pub const SCHEMA: &str = "t2v-schema";
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// `content-type` value of every record.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/x-protobuf";

/// Fully-qualified message names, as carried in the `t2v-schema` header.
pub mod schema {
    pub const GENERATION_REQUEST: &str = "t2v.v1.GenerationRequest";
    pub const GENERATION_EVENT: &str = "t2v.v1.GenerationEvent";
    pub const CONTROL_COMMAND: &str = "t2v.v1.ControlCommand";
}

/// The headers, in order, of a record whose value is the protobuf message `schema` (e.g.
/// [`schema::GENERATION_REQUEST`]) carrying `trace`.
pub fn record_headers(schema: &str, trace: &TraceContext) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        (CONTENT_TYPE, PROTOBUF_CONTENT_TYPE.to_string()),
        (SCHEMA, schema.to_string()),
        (TRACEPARENT, trace.traceparent()),
    ];
    if let Some(state) = &trace.tracestate {
        headers.push((TRACESTATE, state.clone()));
    }
    headers
}

/// The longest `tracestate` carried on (W3C trace context: 32 list members, and vendors must
/// propagate at least 512 characters); a longer one is dropped, not cut, as the spec allows.
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// The trace context that a record's `traceparent` and `tracestate` header values carry, if any.
/// An invalid `traceparent` gives none; a `tracestate` over [`MAX_TRACESTATE_BYTES`] or with
/// characters outside printable ASCII is dropped, so every event copies at most that much.
pub fn trace_context(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<TraceContext> {
    let mut ctx = TraceContext::parse(traceparent?)?;
    ctx.tracestate = tracestate
        .filter(|s| s.len() <= MAX_TRACESTATE_BYTES && s.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .map(str::to_owned);
    Some(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_headers_carry_schema_and_trace() {
        let mut trace = TraceContext::new_root();
        let headers = record_headers(schema::GENERATION_EVENT, &trace);
        assert_eq!(headers.len(), 3);
        assert_eq!(headers[0], (CONTENT_TYPE, PROTOBUF_CONTENT_TYPE.into()));
        assert_eq!(headers[1], (SCHEMA, "t2v.v1.GenerationEvent".into()));
        assert_eq!(headers[2], (TRACEPARENT, trace.traceparent()));
        trace.tracestate = Some("vendor=1".into());
        let headers = record_headers(schema::GENERATION_EVENT, &trace);
        assert_eq!(headers[3], (TRACESTATE, "vendor=1".into()));
        let back = trace_context(Some(&headers[2].1), Some(&headers[3].1)).unwrap();
        assert_eq!(back, trace);
    }

    #[test]
    fn an_oversized_or_binary_tracestate_is_dropped() {
        let parent = TraceContext::new_root().traceparent();
        let huge = "a=".to_string() + &"b".repeat(MAX_TRACESTATE_BYTES);
        let ctx = trace_context(Some(&parent), Some(&huge)).unwrap();
        assert_eq!(ctx.tracestate, None);
        let ctx = trace_context(Some(&parent), Some("vendor=1,other=x")).unwrap();
        assert_eq!(ctx.tracestate.as_deref(), Some("vendor=1,other=x"));
        let ctx = trace_context(Some(&parent), Some("a=1\n")).unwrap();
        assert_eq!(ctx.tracestate, None);
        assert_eq!(trace_context(Some("00-zz"), Some("a=1")), None);
    }
}
