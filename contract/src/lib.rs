//! `t2v-contract`: what every side of a t2v-fleet agrees on beyond the wire types — the
//! producer, the worker and the tests all take these from here, so they cannot drift apart.
//! Nothing in it speaks Kafka: turning [`headers`] into a client's header type stays with the client.
//!
//! # Layout
//! - [`validate`]: the documented bounds of a `GenerationRequest` and the job-id rules, one line per
//!   violation naming the field and the allowed range (checked against the `.proto` comments by a test).
//! - [`defaults`]: the model defaults a request's zero values stand for (Wan2.2 T2V-A14B).
//! - [`headers`]: record header keys and values (`content-type`, `t2v-schema`, W3C trace context).
//! - [`trace`]: [`TraceContext`], the W3C `traceparent` / `tracestate` pair.
//! - [`now_unix_ms`] and [`sha256_hex`]: the clock and digest format every event and manifest uses.

pub mod defaults;
pub mod headers;
pub mod trace;
pub mod validate;

pub use defaults::ModelDefaults;
pub use trace::TraceContext;
pub use validate::InvalidRequest;

/// Milliseconds since the Unix epoch, the unit of every `*_unix_ms` field.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Lowercase hex SHA-256 of `bytes`, the form manifests and Completed events carry.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
