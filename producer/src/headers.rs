//! Record headers every t2v record carries (DESIGN.md "Topics"): `content-type`, `t2v-schema`
//! and the W3C trace context `traceparent` / `tracestate`.

use rand::Rng;
use rdkafka::message::{Header, Headers, OwnedHeaders};

pub const CONTENT_TYPE: &str = "content-type";
pub const SCHEMA: &str = "t2v-schema";
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// A W3C trace context (https://www.w3.org/TR/trace-context/), version 00.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// A new root context with random ids, sampled.
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        Self {
            trace_id: rng.random::<u128>().max(1),
            span_id: rng.random::<u64>().max(1),
            sampled: true,
            tracestate: None,
        }
    }

    /// `00-<trace id>-<span id>-<flags>`.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }

    /// Parses a `traceparent` value; `None` when malformed or all-zero (as the spec says to ignore).
    pub fn parse(traceparent: &str) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2
            || version == "ff"
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
            tracestate: None,
        })
    }

    /// The trace id as 32 lowercase hex digits, as tracing backends show it.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// The headers of a record whose value is the protobuf message `schema` (e.g. `t2v.v1.GenerationRequest`).
pub fn record_headers(schema: &str, trace: &TraceContext) -> OwnedHeaders {
    let traceparent = trace.traceparent();
    let headers = OwnedHeaders::new_with_capacity(4)
        .insert(Header {
            key: CONTENT_TYPE,
            value: Some(t2v_proto::schema::CONTENT_TYPE),
        })
        .insert(Header {
            key: SCHEMA,
            value: Some(schema),
        })
        .insert(Header {
            key: TRACEPARENT,
            value: Some(traceparent.as_str()),
        });
    match &trace.tracestate {
        Some(state) => headers.insert(Header {
            key: TRACESTATE,
            value: Some(state.as_str()),
        }),
        None => headers,
    }
}

/// The value of header `key` as UTF-8, if present.
pub fn header_str<'a, H: Headers>(headers: &'a H, key: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The trace context carried by a record, if any.
pub fn trace_context<H: Headers>(headers: &H) -> Option<TraceContext> {
    let mut ctx = TraceContext::parse(header_str(headers, TRACEPARENT)?)?;
    ctx.tracestate = header_str(headers, TRACESTATE).map(str::to_owned);
    Some(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let ctx = TraceContext::new_root();
        let parsed = TraceContext::parse(&ctx.traceparent()).unwrap();
        assert_eq!(parsed.trace_id, ctx.trace_id);
        assert_eq!(parsed.span_id, ctx.span_id);
        assert!(parsed.sampled);
        assert_eq!(ctx.traceparent().len(), 55);
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-abc-def-01",
            "00-00000000000000000000000000000000-0000000000000001-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        let ok =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(ok.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
