//! How the worker retries in place: one backoff policy (`[jobs] retry_*`) for every storage and
//! Kafka call, and which errors are worth retrying at all. A permanent error (a refused
//! credential, a record the brokers will never take) returns at once, so the caller can classify
//! it instead of waiting out the budget. What happens after the budget is spent (re-queue, DLQ)
//! is the job's decision ([`crate::job`]).

use std::time::Duration;

use backon::ExponentialBuilder;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

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
/// a record too large, a topic that does not exist or a refused authorisation does not.
pub fn is_transient_kafka(e: &KafkaError) -> bool {
    let code = match e {
        KafkaError::MessageProduction(code) => *code,
        KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..) => return false,
        other => match other.rdkafka_error_code() {
            Some(code) => code,
            None => return true,
        },
    };
    !matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::UnsupportedVersion
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_topic_and_auth_errors_are_permanent_broker_trouble_is_not() {
        for permanent in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert!(!is_transient_kafka(&KafkaError::MessageProduction(
                permanent
            )));
        }
        for transient in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::NotEnoughReplicas,
        ] {
            assert!(is_transient_kafka(&KafkaError::MessageProduction(
                transient
            )));
        }
    }
}
