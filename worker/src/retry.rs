//! How the worker retries in place: one backoff policy (`[jobs] retry_*`) for every storage and
//! Kafka call, and which errors are worth retrying at all. A permanent error (a refused
//! credential, a record the brokers will never take) returns at once, so the caller can classify
//! it instead of waiting out the budget. What happens after the budget is spent (re-queue, DLQ)
//! is the job's decision ([`crate::job`]).

use std::time::Duration;

use backon::ExponentialBuilder;
use rdkafka::error::KafkaError;

use crate::config::JobsConfig;

/// Exponential backoff with jitter between `retry_min_delay_ms` and `retry_max_delay_ms`, at
/// most `retry_times` retries.
pub fn policy(jobs: &JobsConfig) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(jobs.retry_min_delay_ms))
        .with_max_delay(Duration::from_millis(jobs.retry_max_delay_ms))
        .with_max_times(jobs.retry_times)
}

/// Whether a failed Kafka send may succeed when tried again: broker and network trouble heals,
/// a record too large, a topic that does not exist or a refused authorisation does not (one
/// classification for the producer and the worker: t2v-kafka).
pub fn is_transient_kafka(e: &KafkaError) -> bool {
    t2v_kafka::is_transient(e)
}
