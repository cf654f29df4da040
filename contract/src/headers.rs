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

/// The trace context that a record's `traceparent` and `tracestate` header values carry, if any.
pub fn trace_context(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<TraceContext> {
    let mut ctx = TraceContext::parse(traceparent?)?;
    ctx.tracestate = tracestate.map(str::to_owned);
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
}
