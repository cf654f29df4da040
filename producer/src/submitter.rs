//! `Submitter`: validates requests, gives them a ULID job id when they have none, and produces
//! them with the idempotent producer (acks=all) keyed by job id, with the t2v headers.
//! It also cancels jobs and follows a job's events to its terminal one.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::try_join_all;
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use t2v_contract::headers::schema;
use t2v_proto::v1::{control_command, Cancel, ControlCommand, GenerationRequest};

use crate::headers::record_headers;
use t2v_contract::{now_unix_ms, validate, InvalidRequest, TraceContext};
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
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers)
            .set("client.id", "t2v-producer")
            .set(
                "socket.connection.setup.timeout.ms",
                self.connect_timeout.as_millis().max(1000).to_string(),
            );
        for (key, value) in &self.kafka {
            cfg.set(key, value);
        }
        cfg
    }
}

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
        reason: String,
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

impl SubmitError {
    /// True when trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::BrokersUnreachable { .. } | Self::Delivery { .. } | Self::Kafka(_)
        )
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

/// Validates and publishes generation requests. Cheap to share (`&self` everywhere).
pub struct Submitter {
    cfg: SubmitterConfig,
    producer: FutureProducer,
}

impl Submitter {
    /// Creates the idempotent producer. Does not contact the brokers; see [`Submitter::check_brokers`].
    pub fn new(cfg: SubmitterConfig) -> Result<Self, SubmitError> {
        let mut client = cfg.client_config();
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .set("compression.type", "lz4")
            .set(
                "message.timeout.ms",
                cfg.delivery_timeout.as_millis().to_string(),
            );
        for (key, value) in &cfg.kafka {
            client.set(key, value);
        }
        let producer = client.create()?;
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
        .expect("metadata task does not panic");
        let metadata = metadata.map_err(|e| SubmitError::BrokersUnreachable {
            brokers: self.cfg.brokers.clone(),
            timeout,
            reason: e.to_string(),
        })?;
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

    /// Enqueues one prepared request; the returned future resolves when the brokers acknowledge it.
    fn enqueue(
        &self,
        req: &GenerationRequest,
        trace: &TraceContext,
    ) -> Result<DeliveryFuture, SubmitError> {
        let payload = req.encode_to_vec();
        let mut record = FutureRecord::to(&self.cfg.requests_topic)
            .key(req.job_id.as_bytes())
            .payload(&payload)
            .headers(record_headers(schema::GENERATION_REQUEST, trace));
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // The local queue is full: let librdkafka drain it, then retry.
                    self.producer.poll(Duration::from_millis(10));
                    record = returned;
                }
                Err((e, _)) => {
                    return Err(SubmitError::Delivery {
                        job_id: req.job_id.clone(),
                        source: e,
                    })
                }
            }
        }
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
        let delivery = self.enqueue(&req, &trace)?;
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
            let delivery = self.enqueue(&req, &trace)?;
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
        let payload = command.encode_to_vec();
        let record = FutureRecord::to(&self.cfg.control_topic)
            .key(job_id.as_bytes())
            .payload(&payload)
            .headers(record_headers(
                schema::CONTROL_COMMAND,
                &TraceContext::new_root(),
            ));
        let delivery =
            self.producer
                .send_result(record)
                .map_err(|(source, _)| SubmitError::Delivery {
                    job_id: job_id.to_string(),
                    source,
                })?;
        Self::acknowledged(job_id.to_string(), TraceContext::new_root(), delivery)
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
