//! t2v-contract's record headers as rdkafka headers.

use rdkafka::message::{Header, OwnedHeaders};
use t2v_contract::headers;
use t2v_contract::TraceContext;

/// The headers of a record whose value is the protobuf message `schema` (e.g. `t2v.v1.GenerationRequest`).
pub fn record_headers(schema: &str, trace: &TraceContext) -> OwnedHeaders {
    let pairs = headers::record_headers(schema, trace);
    pairs.iter().fold(
        OwnedHeaders::new_with_capacity(pairs.len()),
        |acc, (key, value)| {
            acc.insert(Header {
                key,
                value: Some(value.as_str()),
            })
        },
    )
}
