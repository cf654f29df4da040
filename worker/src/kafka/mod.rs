//! Everything the worker says to and hears from Kafka.
//!
//! - [`consumer`]: `run` — the consumer-group loop: pause while a job runs, offsets after the
//!   terminal event, rebalances, shutdown.
//! - [`events`]: [`Publisher`](events::Publisher), the idempotent producer of events, DLQ copies and re-queues.
//! - [`lanes`]: priority lanes — which request topic the next job comes from.
//! - [`control`]: Cancel commands from `t2v.control.v1`, read by every worker.
//! - here: the client settings every client of the worker shares; t2v-kafka's header glue.

use rdkafka::config::ClientConfig;

use crate::config::KafkaConfig;

pub mod consumer;
pub mod control;
pub mod events;
pub mod lanes;

/// The librdkafka settings every client of the worker shares: brokers, security, extra properties.
pub fn client_config(k: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &k.brokers)
        .set("client.id", client_id);
    let optional = [
        ("security.protocol", &k.security_protocol),
        ("sasl.mechanism", &k.sasl_mechanism),
        ("sasl.username", &k.sasl_username),
        ("sasl.password", &k.sasl_password),
        ("ssl.ca.location", &k.ssl_ca_location),
        ("ssl.certificate.location", &k.ssl_certificate_location),
        ("ssl.key.location", &k.ssl_key_location),
    ];
    for (key, value) in optional {
        if !value.is_empty() {
            cfg.set(key, value);
        }
    }
    for (key, value) in &k.properties {
        cfg.set(key, value);
    }
    cfg
}

pub use t2v_kafka::record_headers;
