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
use crate::placement::{Placement, Placer};
use crate::properties;
use crate::routes::Routes;
use crate::watch::JobWatch;

/// Where and how to submit. Defaults suit the local stack (`make up`). Its `Debug` form shows
/// the values of secret properties (see [`crate::properties::is_secret`]) as `<redacted>`.
#[derive(Clone)]
pub struct SubmitterConfig {
    /// Kafka bootstrap servers, comma-separated.
    pub brokers: String,
    /// Where every request goes when `routes` is `None`.
    pub requests_topic: String,
    /// Route each request to its model's fleet and its priority's lane (schemas/topics.yaml,
    /// [`Routes::builtin`]); a model no fleet serves is refused. `None`: everything goes to
    /// `requests_topic` (one fleet, one lane).
    pub routes: Option<Routes>,
    pub events_topic: String,
    pub control_topic: String,
    /// How long to wait for the brokers before giving up with [`SubmitError::BrokersUnreachable`].
    pub connect_timeout: Duration,
    /// librdkafka `message.timeout.ms`: how long a record may wait for delivery.
    pub delivery_timeout: Duration,
    /// Extra librdkafka properties (SASL, TLS, …), applied last.
    pub kafka: BTreeMap<String, String>,
    /// The fleet's consumer group (the workers' `kafka.group_id`), read by [`Placement::Backlog`].
    pub group_id: String,
    /// How requests are spread over the requests topic's partitions (see [`crate::placement`]).
    pub placement: Placement,
}

impl Default for SubmitterConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".into(),
            requests_topic: "t2v.requests.v1".into(),
            routes: None,
            events_topic: "t2v.events.v1".into(),
            control_topic: "t2v.control.v1".into(),
            connect_timeout: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(30),
            kafka: BTreeMap::new(),
            group_id: "t2v-workers".into(),
            placement: Placement::default(),
        }
    }
}

impl std::fmt::Debug for SubmitterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kafka: BTreeMap<&str, &str> = self
            .kafka
            .iter()
            .map(|(k, v)| {
                let shown = if properties::is_secret(k) {
                    properties::REDACTED
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("SubmitterConfig")
            .field("brokers", &self.brokers)
            .field("requests_topic", &self.requests_topic)
            .field("routes", &self.routes)
            .field("events_topic", &self.events_topic)
            .field("control_topic", &self.control_topic)
            .field("connect_timeout", &self.connect_timeout)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("kafka", &kafka)
            .field("group_id", &self.group_id)
            .field("placement", &self.placement)
            .finish()
    }
}

impl SubmitterConfig {
    /// The request topic for `req`: its model's topic of its priority's lane, or
    /// `requests_topic` without routes. Fails for a model no fleet serves.
    pub fn request_topic(&self, req: &GenerationRequest) -> Result<&str, InvalidRequest> {
        match &self.routes {
            None => Ok(&self.requests_topic),
            Some(routes) => routes
                .topic(&req.model, req.priority)
                .map_err(|e| InvalidRequest {
                    field: "model",
                    message: e.to_string(),
                }),
        }
    }

    /// Every topic a request may go to.
    pub fn request_topics(&self) -> Vec<String> {
        match &self.routes {
            None => vec![self.requests_topic.clone()],
            Some(routes) => routes.all_request_topics(),
        }
    }

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
    /// `None`: the partition the key hashes to.
    partition: Option<i32>,
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
    placer: Placer,
    /// Job ids this Submitter assigned and has not sent yet: only those are placed by backlog.
    /// An id the caller chose may be sent again (a retry, a rerun); hashing keeps every copy on
    /// one partition, so two copies never run side by side on two workers.
    fresh_ids: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// At most this many assigned-but-unsent ids are remembered (a caller that prepares and never
/// sends must not grow the set without bound); past it the set starts afresh.
const MAX_FRESH_IDS: usize = 100_000;

impl Submitter {
    /// Creates the idempotent producer. Does not contact the brokers; see [`Submitter::check_brokers`].
    /// A refused property comes back as [`SubmitError::Kafka`] naming the key; the value of a
    /// secret one is redacted.
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
            .create()
            .map_err(properties::redact_error)?;
        let placer = Placer::new(&cfg);
        Ok(Self {
            cfg,
            producer,
            placer,
            fresh_ids: Default::default(),
        })
    }

    fn fresh_ids(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.fresh_ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn config(&self) -> &SubmitterConfig {
        &self.cfg
    }

    /// Requests hashed by job id because [`Placement::Backlog`] had no usable view of the group
    /// (no member, group unreadable); see [`crate::placement`].
    pub fn placement_fallbacks(&self) -> u64 {
        self.placer.fallbacks()
    }

    /// Fails within `connect_timeout` when no broker answers, or when a request topic is missing.
    pub async fn check_brokers(&self) -> Result<(), SubmitError> {
        for topic in self.cfg.request_topics() {
            self.check_topic(&topic).await?;
        }
        Ok(())
    }

    /// Fails within `connect_timeout` when no broker answers, or when `topic` is missing.
    pub async fn check_topic(&self, topic: &str) -> Result<(), SubmitError> {
        let producer = self.producer.clone();
        let wanted = topic.to_string();
        let topic = wanted.clone();
        let timeout = self.cfg.connect_timeout;
        let metadata = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(timeout))
        })
        .await
        .expect("metadata task does not panic")
        .map_err(|e| SubmitError::unreachable(&self.cfg.brokers, timeout, e))?;
        let exists = metadata
            .topics()
            .iter()
            .any(|t| t.name() == wanted && t.error().is_none() && !t.partitions().is_empty());
        if !exists {
            return Err(SubmitError::TopicMissing {
                topic: wanted,
                brokers: self.cfg.brokers.clone(),
            });
        }
        Ok(())
    }

    /// Validates `req`, assigns a ULID job id when empty and stamps `submitted_at_unix_ms`.
    /// With routes, a model no fleet serves is refused here (field `model`), before anything is sent.
    pub fn prepare(&self, mut req: GenerationRequest) -> Result<GenerationRequest, InvalidRequest> {
        validate::request(&req)?;
        self.cfg.request_topic(&req)?;
        if req.job_id.is_empty() {
            req.job_id = ulid::Ulid::generate().to_string();
            let mut fresh = self.fresh_ids();
            if fresh.len() >= MAX_FRESH_IDS {
                fresh.clear();
            }
            fresh.insert(req.job_id.clone());
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
        if let Some(partition) = out.partition {
            record = record.partition(partition);
        }
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

    /// Enqueues one prepared request (see [`Submitter::enqueue`]) on the partition that
    /// [`SubmitterConfig::placement`] picks; still keyed by its job id.
    async fn enqueue_request(
        &self,
        req: &GenerationRequest,
        trace: &TraceContext,
    ) -> Result<(&str, DeliveryFuture), SubmitError> {
        let topic = self.cfg.request_topic(req)?;
        let fresh = self.fresh_ids().remove(&req.job_id);
        let partition = if fresh {
            self.placer.partition(topic, &req.job_id).await
        } else {
            None
        };
        let out = Outgoing {
            topic,
            job_id: &req.job_id,
            schema: schema::GENERATION_REQUEST,
            payload: req.encode_to_vec(),
            partition,
        };
        Ok((topic, self.enqueue(&out, trace)?))
    }

    /// Waits for the brokers' acknowledgement of a record of `topic` (and tells placement
    /// where it landed).
    async fn acknowledged(
        &self,
        topic: &str,
        job_id: String,
        trace: TraceContext,
        delivery: DeliveryFuture,
    ) -> Result<Submitted, SubmitError> {
        match delivery.await {
            Ok(Ok(delivered)) => {
                self.placer
                    .landed(topic, delivered.partition, delivered.offset);
                Ok(Submitted {
                    job_id,
                    partition: delivered.partition,
                    offset: delivered.offset,
                    trace,
                })
            }
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
        let (topic, delivery) = self.enqueue_request(&req, &trace).await?;
        self.acknowledged(topic, req.job_id, trace, delivery).await
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
            let (topic, delivery) = self.enqueue_request(&req, &trace).await?;
            pending.push(self.acknowledged(topic, req.job_id, trace, delivery));
        }
        try_join_all(pending).await
    }

    /// As [`Submitter::submit_many`], but one failed record does not hide the others: every
    /// request is enqueued, and each one's outcome comes back with its job id, in input order.
    /// Only an invalid request (checked for all of them before anything is sent) fails the call.
    /// A rerun of the failed ones is safe when their job ids are kept (the fleet's idempotency key).
    pub async fn submit_each(
        &self,
        reqs: Vec<GenerationRequest>,
    ) -> Result<Vec<(String, Result<Submitted, SubmitError>)>, SubmitError> {
        let prepared = reqs
            .into_iter()
            .map(|r| self.prepare(r))
            .collect::<Result<Vec<_>, _>>()?;
        let mut pending = Vec::with_capacity(prepared.len());
        for req in prepared {
            let trace = TraceContext::new_root();
            let job_id = req.job_id.clone();
            let outcome = match self.enqueue_request(&req, &trace).await {
                Ok((topic, delivery)) => futures::future::Either::Left(
                    self.acknowledged(topic, req.job_id, trace, delivery),
                ),
                Err(e) => futures::future::Either::Right(futures::future::ready(Err(e))),
            };
            pending.push(async move { (job_id, outcome.await) });
        }
        Ok(futures::future::join_all(pending).await)
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
            partition: None,
        };
        let trace = TraceContext::new_root();
        let delivery = self.enqueue(&out, &trace)?;
        self.acknowledged(&self.cfg.control_topic, job_id.to_string(), trace, delivery)
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

/// The job id of line `line_number` (1-based) of a batch file when the line names none: `b-`
/// and the first 32 hex digits of the SHA-256 of the line number and the line's text (trimmed).
/// Resubmitting the same file yields the same ids, so the fleet renders each line once however
/// often the file is sent; the same text on another line is another job.
pub fn batch_job_id(line_number: usize, line: &str) -> String {
    let digest = t2v_contract::sha256_hex(format!("{line_number}\n{}", line.trim()).as_bytes());
    format!("b-{}", &digest[..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ids_the_submitter_assigns_are_placed_by_backlog() {
        let submitter = Submitter::new(SubmitterConfig::default()).unwrap();
        let request = GenerationRequest {
            model: "m".into(),
            prompt: "p".into(),
            ..Default::default()
        };
        let assigned = submitter.prepare(request.clone()).unwrap();
        assert!(submitter.fresh_ids().contains(&assigned.job_id));
        let chosen = submitter
            .prepare(GenerationRequest {
                job_id: "callers-own".into(),
                ..request
            })
            .unwrap();
        assert!(
            !submitter.fresh_ids().contains(&chosen.job_id),
            "a caller's id may come again: hashed"
        );
    }

    #[test]
    fn batch_job_ids_are_stable_valid_and_depend_on_line_and_text() {
        let a = batch_job_id(1, "{\"prompt\":\"a\"}");
        assert_eq!(a, batch_job_id(1, "{\"prompt\":\"a\"}\r"));
        assert_ne!(a, batch_job_id(2, "{\"prompt\":\"a\"}"));
        assert_ne!(a, batch_job_id(1, "{\"prompt\":\"b\"}"));
        assert_eq!(a.len(), 34);
        validate::job_id(&a).unwrap();
    }

    #[test]
    fn debug_redacts_secret_properties() {
        let cfg = SubmitterConfig {
            kafka: [
                ("sasl.password".to_string(), "hunter2".to_string()),
                ("client.id".to_string(), "me".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("me"),
            "{shown}"
        );
    }
}
