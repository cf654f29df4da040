//! `t2v-kafka`: the rdkafka glue shared by the producer (`t2v`, `Submitter`) and the worker, so
//! both speak the same headers and retry the same errors. What the fleet agrees on independent
//! of the client library stays in t2v-contract.
//!
//! # Layout
//! - [`record_headers`]: t2v-contract's record headers as rdkafka `OwnedHeaders`.
//! - [`Retry`] / [`retry_class`] / [`is_transient`]: whether a failed Kafka call may succeed when
//!   tried again.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use t2v_contract::TraceContext;

/// The headers of a record whose value is the protobuf message `schema` (e.g.
/// `t2v.v1.GenerationRequest`), continuing `trace`.
pub fn record_headers(schema: &str, trace: &TraceContext) -> OwnedHeaders {
    let pairs = t2v_contract::headers::record_headers(schema, trace);
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

/// Whether trying again later may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Broker or network trouble that heals: retry with backoff.
    Transient,
    /// The same call fails the same way (too large, no such topic, not authorised, bad
    /// settings): retrying only delays the answer.
    Permanent,
}

/// Classifies an rdkafka error. Errors without a code (a dropped delivery, a consumer that
/// stopped) count as transient; client creation and config errors as permanent.
pub fn retry_class(e: &KafkaError) -> Retry {
    let code = match e {
        KafkaError::MessageProduction(code) => *code,
        KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..) => return Retry::Permanent,
        other => match other.rdkafka_error_code() {
            Some(code) => code,
            None => return Retry::Transient,
        },
    };
    if is_permanent_code(code) {
        Retry::Permanent
    } else {
        Retry::Transient
    }
}

/// `retry_class(e) == Retry::Transient`.
pub fn is_transient(e: &KafkaError) -> bool {
    retry_class(e) == Retry::Transient
}

fn is_permanent_code(code: RDKafkaErrorCode) -> bool {
    matches!(
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
            | RDKafkaErrorCode::InvalidConfig
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn size_topic_auth_and_config_errors_are_permanent_broker_trouble_is_not() {
        for permanent in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::InvalidConfig,
        ] {
            assert!(!is_transient(&KafkaError::MessageProduction(permanent)));
        }
        for transient in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::NotEnoughReplicas,
        ] {
            assert!(is_transient(&KafkaError::MessageProduction(transient)));
        }
        assert!(is_transient(&KafkaError::Canceled));
    }

    #[test]
    fn record_headers_carry_the_contract_headers() {
        let trace = TraceContext::new_root();
        let headers = record_headers("t2v.v1.GenerationEvent", &trace);
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            pairs[1],
            ("t2v-schema".into(), "t2v.v1.GenerationEvent".into())
        );
        assert_eq!(pairs[2], ("traceparent".into(), trace.traceparent()));
    }
}
