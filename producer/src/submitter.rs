//! `Submitter`: validates requests, gives them a ULID job id when they have none, and produces
//! them with the idempotent producer (acks=all) keyed by job id, with the t2v headers.
//! It also cancels jobs and follows a job's events to its terminal one.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::try_join_all;
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use t2v_contract::headers::schema;
use t2v_proto::v1::{control_command, Cancel, ControlCommand, GenerationRequest};

use t2v_contract::{now_unix_ms, validate, InvalidRequest, TraceContext};

pub use crate::error::SubmitError;
use crate::headers::record_headers;
use crate::watch::JobWatch;

/// Where and how to submit. Defaults suit the local stack (`make up`).
#[derive(Debug, Clone)]
pub struct SubmitterConfig {
    /// Kafka bootstrap servers, comma-separated.
    pub brokers: String,
    pub requests_topic: String,
    pub events_topic: String,
    pub control_topic: String,
    /// How long to wait for the brokers before giving up with [`SubmitError::BrokersUnreachable`].
    pub connect_timeout: Duration,
    /// librdkafka `message.timeout.ms`: how long a record may wait for delivery.
    pub delivery_timeout: Duration,
    /// Extra librdkafka properties (SASL, TLS, …), applied last.
    pub kafka: BTreeMap<String, String>,
}

impl Default for SubmitterConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".into(),
            requests_topic: "t2v.requests.v1".into(),
            events_topic: "t2v.events.v1".into(),
            control_topic: "t2v.control.v1".into(),
            connect_timeout: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(30),
            kafka: BTreeMap::new(),
        }
    }
}

impl SubmitterConfig {
    /// The librdkafka client config shared by the producer and event consumers.
    pub fn client_config(&self) -> ClientConfig {
        self.client_config_with(&[])
    }

    /// [`SubmitterConfig::client_config`] with a client's own `settings`; the extra properties
    /// of [`SubmitterConfig::kafka`] still come last, so they override both.
    pub fn client_config_with(&self, settings: &[(&str, &str)]) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers)
            .set("client.id", "t2v-producer")
            .set(
                "socket.connection.setup.timeout.ms",
                self.connect_timeout.as_millis().max(1000).to_string(),
            );
        for (key, value) in settings {
            cfg.set(*key, *value);
        }
        for (key, value) in &self.kafka {
            cfg.set(key, value);
        }
        cfg
    }
}

/// Where a request landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub job_id: String,
    pub partition: i32,
    pub offset: i64,
    /// The trace context sent in the `traceparent` header.
    pub trace: TraceContext,
}

/// One record to produce, keyed by its job id.
struct Outgoing<'a> {
    topic: &'a str,
    job_id: &'a str,
    schema: &'a str,
    payload: Vec<u8>,
}

/// Validates and publishes generation requests. Cheap to share (`&self` everywhere).
///
/// Retrying: librdkafka retries transient broker errors itself until `delivery_timeout`, and a
/// full local queue is waited out here. Whatever still fails comes back as a [`SubmitError`]
/// whose [`SubmitError::is_retryable`] says whether sending again may help (a request keeps its
/// job id, the fleet's idempotency key, so resubmitting it is safe).
pub struct Submitter {
    cfg: SubmitterConfig,
    producer: FutureProducer,
}

impl Submitter {
    /// Creates the idempotent producer. Does not contact the brokers; see [`Submitter::check_brokers`].
    pub fn new(cfg: SubmitterConfig) -> Result<Self, SubmitError> {
        let message_timeout = cfg.delivery_timeout.as_millis().to_string();
        let producer = cfg
            .client_config_with(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "5"),
                ("batch.num.messages", "10000"),
                ("queue.buffering.max.messages", "1000000"),
                ("compression.type", "lz4"),
                ("message.timeout.ms", &message_timeout),
            ])
            .create()?;
        Ok(Self { cfg, producer })
    }

    pub fn config(&self) -> &SubmitterConfig {
        &self.cfg
    }

    /// Fails within `connect_timeout` when no broker answers, or when the requests topic is missing.
    pub async fn check_brokers(&self) -> Result<(), SubmitError> {
        let producer = self.producer.clone();
        let topic = self.cfg.requests_topic.clone();
        let timeout = self.cfg.connect_timeout;
        let metadata = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(timeout))
        })
        .await
        .expect("metadata task does not panic")
        .map_err(|e| SubmitError::unreachable(&self.cfg.brokers, timeout, e))?;
        let exists = metadata.topics().iter().any(|t| {
            t.name() == self.cfg.requests_topic && t.error().is_none() && !t.partitions().is_empty()
        });
        if !exists {
            return Err(SubmitError::TopicMissing {
                topic: self.cfg.requests_topic.clone(),
                brokers: self.cfg.brokers.clone(),
            });
        }
        Ok(())
    }

    /// Validates `req`, assigns a ULID job id when empty and stamps `submitted_at_unix_ms`.
    pub fn prepare(&self, mut req: GenerationRequest) -> Result<GenerationRequest, InvalidRequest> {
        validate::request(&req)?;
        if req.job_id.is_empty() {
            req.job_id = ulid::Ulid::generate().to_string();
        }
        if req.submitted_at_unix_ms == 0 {
            req.submitted_at_unix_ms = now_unix_ms();
        }
        Ok(req)
    }

    /// Enqueues one record with the t2v headers; the returned future resolves when the brokers
    /// acknowledge it. A full local queue is the one send error retried here (librdkafka drains
    /// it); any other returns at once as [`SubmitError::Delivery`].
    fn enqueue(
        &self,
        out: &Outgoing<'_>,
        trace: &TraceContext,
    ) -> Result<DeliveryFuture, SubmitError> {
        let mut record = FutureRecord::to(out.topic)
            .key(out.job_id.as_bytes())
            .payload(&out.payload)
            .headers(record_headers(out.schema, trace));
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    self.producer.poll(Duration::from_millis(10));
                    record = returned;
                }
                Err((source, _)) => {
                    return Err(SubmitError::Delivery {
                        job_id: out.job_id.to_string(),
                        source,
                    })
                }
            }
        }
    }

    /// Enqueues one prepared request (see [`Submitter::enqueue`]).
    fn enqueue_request(
        &self,
        req: &GenerationRequest,
        trace: &TraceContext,
    ) -> Result<DeliveryFuture, SubmitError> {
        let out = Outgoing {
            topic: &self.cfg.requests_topic,
            job_id: &req.job_id,
            schema: schema::GENERATION_REQUEST,
            payload: req.encode_to_vec(),
        };
        self.enqueue(&out, trace)
    }

    async fn acknowledged(
        job_id: String,
        trace: TraceContext,
        delivery: DeliveryFuture,
    ) -> Result<Submitted, SubmitError> {
        match delivery.await {
            Ok(Ok(delivered)) => Ok(Submitted {
                job_id,
                partition: delivered.partition,
                offset: delivered.offset,
                trace,
            }),
            Ok(Err((source, _))) => Err(SubmitError::Delivery { job_id, source }),
            Err(_canceled) => Err(SubmitError::Delivery {
                job_id,
                source: KafkaError::Canceled,
            }),
        }
    }

    /// Validates and publishes one request, returning once the brokers acknowledged it (acks=all).
    pub async fn submit(&self, req: GenerationRequest) -> Result<Submitted, SubmitError> {
        self.submit_traced(req, TraceContext::new_root()).await
    }

    /// As [`Submitter::submit`], continuing the caller's trace.
    pub async fn submit_traced(
        &self,
        req: GenerationRequest,
        trace: TraceContext,
    ) -> Result<Submitted, SubmitError> {
        let req = self.prepare(req)?;
        let delivery = self.enqueue_request(&req, &trace)?;
        Self::acknowledged(req.job_id, trace, delivery).await
    }

    /// Validates every request first (nothing is produced when one is invalid), then publishes all
    /// of them pipelined, returning once all are acknowledged, in input order.
    pub async fn submit_many(
        &self,
        reqs: Vec<GenerationRequest>,
    ) -> Result<Vec<Submitted>, SubmitError> {
        let prepared = reqs
            .into_iter()
            .map(|r| self.prepare(r))
            .collect::<Result<Vec<_>, _>>()?;
        let mut pending = Vec::with_capacity(prepared.len());
        for req in prepared {
            let trace = TraceContext::new_root();
            let delivery = self.enqueue_request(&req, &trace)?;
            pending.push(Self::acknowledged(req.job_id, trace, delivery));
        }
        try_join_all(pending).await
    }

    /// Publishes a Cancel for `job_id` on the control topic.
    pub async fn cancel(&self, job_id: &str, reason: &str) -> Result<(), SubmitError> {
        validate::job_id(job_id)?;
        let command = ControlCommand {
            job_id: job_id.to_string(),
            issued_at_unix_ms: now_unix_ms(),
            command: Some(control_command::Command::Cancel(Cancel {
                reason: reason.to_string(),
            })),
        };
        let out = Outgoing {
            topic: &self.cfg.control_topic,
            job_id,
            schema: schema::CONTROL_COMMAND,
            payload: command.encode_to_vec(),
        };
        let trace = TraceContext::new_root();
        let delivery = self.enqueue(&out, &trace)?;
        Self::acknowledged(job_id.to_string(), trace, delivery)
            .await
            .map(|_| ())
    }

    /// Starts following the events of `job_id` from now on. Call it *before* submitting, so that
    /// no event can be missed.
    pub async fn watch_job(&self, job_id: &str) -> Result<JobWatch, SubmitError> {
        JobWatch::start(&self.cfg, Some(job_id.to_string())).await
    }

    /// Flushes anything still queued (bounded by `delivery_timeout`).
    pub fn flush(&self) -> Result<(), SubmitError> {
        self.producer
            .flush(Timeout::After(self.cfg.delivery_timeout))
            .map_err(SubmitError::from)
    }
}
