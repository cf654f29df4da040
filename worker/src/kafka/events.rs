//! Everything the worker writes to Kafka: events on t2v.events.v1, dead letters on t2v.dlq.v1
//! and re-queued requests on t2v.requests.v1 — through one idempotent producer (acks=all), each
//! send awaited until the brokers acknowledge it and retried in place with backoff.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use prost::Message as _;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use t2v_contract::headers::schema;
use t2v_contract::TraceContext;
use t2v_proto::v1::{GenerationEvent, GenerationRequest};

use super::{client_config, record_headers};
use crate::config::{JobsConfig, KafkaConfig};

/// DLQ header names (schemas/topics.yaml).
pub mod dlq_header {
    pub const REASON: &str = "t2v-dlq-reason";
    pub const WORKER: &str = "t2v-dlq-worker";
    pub const ATTEMPT: &str = "t2v-dlq-attempt";
    pub const SOURCE_TOPIC: &str = "t2v-dlq-source-topic";
    pub const SOURCE_PARTITION: &str = "t2v-dlq-source-partition";
    pub const SOURCE_OFFSET: &str = "t2v-dlq-source-offset";
}

/// The largest record the worker's producer sends: a 1 MiB request with its headers and the
/// DLQ headers, with room to spare. The DLQ topic takes records this large (schemas/topics.yaml).
pub const DLQ_RECORD_MAX_BYTES: usize = 2 * 1024 * 1024;

/// A record as it arrived, kept whole for the DLQ.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (producer create time), Unix milliseconds, when it has one.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// The worker's producer.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    events_topic: String,
    dlq_topic: String,
    pub worker_id: String,
    retry: ExponentialBuilder,
}

impl Publisher {
    pub fn new(k: &KafkaConfig, jobs: &JobsConfig, worker_id: &str) -> Result<Self, KafkaError> {
        let mut cfg = client_config(k, "t2v-worker");
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", "30000")
            // A DLQ copy is the original record (up to the brokers' default 1 MiB) plus our
            // headers: librdkafka's own default (1,000,000 bytes) would refuse it locally.
            .set("message.max.bytes", DLQ_RECORD_MAX_BYTES.to_string());
        for (key, value) in &k.properties {
            cfg.set(key, value);
        }
        Ok(Self {
            producer: cfg.create()?,
            events_topic: k.events_topic.clone(),
            dlq_topic: k.dlq_topic.clone(),
            worker_id: worker_id.to_string(),
            retry: crate::retry::policy(jobs),
        })
    }

    async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), KafkaError> {
        let attempt = || async {
            let mut record = FutureRecord::to(topic)
                .payload(payload)
                .headers(headers.clone());
            if let Some(key) = key {
                record = record.key(key);
            }
            self.producer
                .send(record, Timeout::After(Duration::from_secs(10)))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        };
        attempt
            .retry(self.retry)
            .when(crate::retry::is_transient_kafka)
            .notify(
                |e, delay| tracing::warn!(topic, error = %e, ?delay, "Kafka send failed; retrying"),
            )
            .await
    }

    /// Publishes `event` keyed by its job id, continuing `trace`; returns once acknowledged.
    pub async fn event(
        &self,
        event: &GenerationEvent,
        trace: &TraceContext,
    ) -> Result<(), KafkaError> {
        let headers = record_headers(schema::GENERATION_EVENT, trace);
        self.send(
            &self.events_topic,
            Some(event.job_id.as_bytes()),
            &event.encode_to_vec(),
            headers,
        )
        .await
    }

    /// Copies `record` unchanged to the DLQ with headers saying why, who and from where.
    pub async fn dead_letter(
        &self,
        record: &SourceRecord,
        reason: &str,
        attempt: u32,
    ) -> Result<(), KafkaError> {
        let reason = t2v_contract::validate::truncate_reason(
            reason,
            t2v_contract::validate::MAX_REASON_BYTES,
        );
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len() + 6);
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let fields = [
            (dlq_header::REASON, reason.to_string()),
            (dlq_header::WORKER, self.worker_id.clone()),
            (dlq_header::ATTEMPT, attempt.to_string()),
            (dlq_header::SOURCE_TOPIC, record.topic.clone()),
            (dlq_header::SOURCE_PARTITION, record.partition.to_string()),
            (dlq_header::SOURCE_OFFSET, record.offset.to_string()),
        ];
        for (key, value) in &fields {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_str()),
            });
        }
        let payload = record.payload.as_deref().unwrap_or_default();
        self.send(&self.dlq_topic, record.key.as_deref(), payload, headers)
            .await
    }

    /// Publishes `req` again on `topic`, the request topic (lane) it came from, so a re-queue
    /// keeps its priority (with its attempt already raised).
    pub async fn requeue(
        &self,
        topic: &str,
        req: &GenerationRequest,
        trace: &TraceContext,
    ) -> Result<(), KafkaError> {
        let headers = record_headers(schema::GENERATION_REQUEST, trace);
        self.send(
            topic,
            Some(req.job_id.as_bytes()),
            &req.encode_to_vec(),
            headers,
        )
        .await
    }

    /// Waits for anything still queued.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(Timeout::After(timeout)) {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
    }
}
