//! `SubmitError`, and which Kafka failures are worth trying again.
//!
//! The split follows the worker's (`is_transient_kafka` in t2v-worker): broker and network trouble
//! heals, a record too large, a topic that does not exist, a refused credential or a bad client
//! config does not. docs/design.md ("Delivery semantics") says what each side does with them.

use std::time::Duration;

use rdkafka::error::KafkaError;
use t2v_contract::InvalidRequest;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The request breaks a documented bound; nothing was produced.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// No broker answered in time.
    #[error("cannot reach Kafka brokers at {brokers} within {timeout:?} ({reason}) — is the cluster up (`make up`) and --brokers / T2V_BROKERS right?")]
    BrokersUnreachable {
        brokers: String,
        timeout: Duration,
        reason: KafkaError,
    },
    /// The topic does not exist on the cluster.
    #[error("topic {topic} does not exist on {brokers} — create it with `t2v topics apply`")]
    TopicMissing { topic: String, brokers: String },
    /// The brokers did not acknowledge a record.
    #[error("Kafka did not acknowledge the record for job {job_id}: {source}")]
    Delivery {
        job_id: String,
        #[source]
        source: KafkaError,
    },
    #[error("Kafka client error: {0}")]
    Kafka(#[from] KafkaError),
}

pub use t2v_kafka::Retry;

impl SubmitError {
    /// `BrokersUnreachable` for a metadata request to `brokers` that failed within `timeout`.
    pub fn unreachable(brokers: &str, timeout: Duration, reason: KafkaError) -> Self {
        Self::BrokersUnreachable {
            brokers: brokers.to_string(),
            timeout,
            reason,
        }
    }

    /// Whether trying again later may succeed (see [`Retry`]).
    pub fn retry(&self) -> Retry {
        match self {
            Self::Invalid(_) | Self::TopicMissing { .. } => Retry::Permanent,
            Self::BrokersUnreachable { .. } => Retry::Transient,
            Self::Delivery { source: e, .. } | Self::Kafka(e) => t2v_kafka::retry_class(e),
        }
    }

    /// True when trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retry() == Retry::Transient
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode;

    fn delivery(code: RDKafkaErrorCode) -> SubmitError {
        SubmitError::Delivery {
            job_id: "j".into(),
            source: KafkaError::MessageProduction(code),
        }
    }

    #[test]
    fn size_topic_auth_and_config_errors_are_permanent() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::SaslAuthenticationFailed,
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::InvalidConfig,
        ] {
            assert_eq!(delivery(code).retry(), Retry::Permanent, "{code:?}");
            assert!(!delivery(code).is_retryable(), "{code:?}");
        }
        let config = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN,
            "x".into(),
            "linger".into(),
            "5".into(),
        );
        assert_eq!(SubmitError::Kafka(config).retry(), Retry::Permanent);
    }

    #[test]
    fn timeouts_transport_queue_and_leader_trouble_are_transient() {
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::LeaderNotAvailable,
        ] {
            assert_eq!(delivery(code).retry(), Retry::Transient, "{code:?}");
            assert!(delivery(code).is_retryable(), "{code:?}");
        }
        assert!(SubmitError::Kafka(KafkaError::Canceled).is_retryable());
        let down = SubmitError::unreachable(
            "b:9092",
            Duration::from_secs(1),
            KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure),
        );
        assert!(down.is_retryable());
    }

    #[test]
    fn bad_input_and_missing_topics_are_permanent() {
        let missing = SubmitError::TopicMissing {
            topic: "t".into(),
            brokers: "b".into(),
        };
        assert_eq!(missing.retry(), Retry::Permanent);
        let invalid = t2v_contract::validate::job_id("").unwrap_err();
        assert!(!SubmitError::Invalid(invalid).is_retryable());
    }
}
