//! The job rows follow `t2v.events.v1`: the reference example of event-driven downstream
//! processing in this fleet.
//!
//! Exactly-once application without Kafka transactions: the position of the reader is data in
//! the same database as the rows. `event_offsets` holds, per partition, the next offset to apply;
//! applying an event and moving that offset past it happen in one transaction, under the
//! offset row's lock. So
//! - a crash before the commit applies nothing and moves nothing: the event is read again;
//! - a crash after it has both: the event is never applied twice;
//! - several gateway replicas may all read every partition (partitions are assigned manually
//!   from the stored offsets, no consumer group): whichever locks the offset row first applies
//!   the event, the others find the offset already past it and skip.
//!
//! Events of one job share a partition (keyed by job id), so they arrive in the order the worker
//! published them. A row that reached a terminal state takes no further events (a duplicate
//! request's identical `Completed` changes nothing). Events of jobs the gateway did not submit
//! move the offset and touch no row.

use std::time::Duration;

use prost::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};
use t2v_proto::v1::{generation_event::Kind, ErrorCode, GenerationEvent};
use tokio_util::sync::CancellationToken;

use crate::limits;

/// The events reader of one gateway process.
pub struct EventsReader {
    pool: PgPool,
    topic: String,
    consumer: StreamConsumer,
    /// Partitions assigned now.
    assigned: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("events topic {topic}: {source} — check kafka.brokers and that the topic exists")]
    Kafka {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("events topic {0} has no partitions — create it (`t2v topics apply`)")]
    NoPartitions(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl EventsReader {
    /// Assigns every partition of the events topic at the offsets stored in the database
    /// (the first offset still retained for a partition seen the first time).
    pub async fn start(
        pool: PgPool,
        cfg: &t2v_producer::SubmitterConfig,
    ) -> Result<Self, EventsError> {
        let topic = cfg.events_topic.clone();
        let kafka = |source| EventsError::Kafka {
            topic: topic.clone(),
            source,
        };
        let consumer: StreamConsumer = cfg
            .client_config_with(&[
                ("group.id", "t2v-gateway-unused"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("client.id", "t2v-gateway-events"),
            ])
            .create()
            .map_err(kafka)?;
        let reader = Self {
            pool,
            topic,
            consumer,
            assigned: std::sync::atomic::AtomicUsize::new(0),
        };
        reader.assign_all().await?;
        Ok(reader)
    }

    /// Assigns every partition the topic has now at its stored offset; a partition seen the
    /// first time starts at 0 (the first offset still retained). Called at start and whenever
    /// the topic has grown: partitions can be added, and events on them must not be missed.
    async fn assign_all(&self) -> Result<(), EventsError> {
        let kafka = |source| EventsError::Kafka {
            topic: self.topic.clone(),
            source,
        };
        let partitions = partitions(&self.consumer, &self.topic).map_err(kafka)?;
        if partitions.is_empty() {
            return Err(EventsError::NoPartitions(self.topic.clone()));
        }
        let mut assignment = TopicPartitionList::new();
        for partition in &partitions {
            sqlx::query(
                "INSERT INTO event_offsets (topic, partition, next_offset) VALUES ($1, $2, 0) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&self.topic)
            .bind(partition)
            .execute(&self.pool)
            .await?;
            let (next,): (i64,) = sqlx::query_as(
                "SELECT next_offset FROM event_offsets WHERE topic = $1 AND partition = $2",
            )
            .bind(&self.topic)
            .bind(partition)
            .fetch_one(&self.pool)
            .await?;
            assignment
                .add_partition_offset(&self.topic, *partition, Offset::Offset(next))
                .map_err(kafka)?;
        }
        // Re-reading from the stored offsets is safe: what was applied already is skipped.
        self.consumer.assign(&assignment).map_err(kafka)?;
        self.assigned
            .store(partitions.len(), std::sync::atomic::Ordering::Relaxed);
        tracing::info!(topic = %self.topic, partitions = partitions.len(), "events reader assigned");
        Ok(())
    }

    /// Assigns again when the topic has more partitions than are assigned.
    async fn follow_new_partitions(&self) {
        let assigned = self.assigned.load(std::sync::atomic::Ordering::Relaxed);
        match partitions(&self.consumer, &self.topic) {
            Ok(now) if now.len() > assigned => {
                if let Err(e) = self.assign_all().await {
                    tracing::warn!(error = %e, "assigning new partitions; retrying later");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading the events topic's partitions"),
        }
    }

    /// Applies events until `shutdown`. A database error is retried on the same event (the
    /// transaction rolled back, nothing was half-applied): the reader seeks back to it.
    /// Every `partition_refresh` the topic's partitions are read again (see [`Self::assign_all`]).
    pub async fn run(self, shutdown: CancellationToken, partition_refresh: Duration) {
        let mut refresh = tokio::time::interval(partition_refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return,
                _ = refresh.tick() => {
                    self.follow_new_partitions().await;
                    continue;
                }
                message = self.consumer.recv() => message,
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "reading events; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let (partition, offset) = (message.partition(), message.offset());
            let payload = message.payload().unwrap_or_default().to_vec();
            drop(message);
            while let Err(e) = self.apply(partition, offset, &payload).await {
                tracing::warn!(error = %e, partition, offset, "applying an event; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }

    /// Applies the event at `partition`/`offset` and moves the stored offset past it, in one
    /// transaction; does nothing when the stored offset is already past it.
    async fn apply(&self, partition: i32, offset: i64, payload: &[u8]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let (next,): (i64,) = sqlx::query_as(
            "SELECT next_offset FROM event_offsets WHERE topic = $1 AND partition = $2 FOR UPDATE",
        )
        .bind(&self.topic)
        .bind(partition)
        .fetch_one(&mut *tx)
        .await?;
        if offset < next {
            return tx.rollback().await;
        }
        match GenerationEvent::decode(payload) {
            Ok(event) => {
                let event_id = event_id(&self.topic, partition, offset);
                apply_event(&mut tx, &event, &event_id).await?
            }
            Err(e) => {
                tracing::warn!(partition, offset, error = %e, "not a GenerationEvent; skipped")
            }
        }
        sqlx::query(
            "UPDATE event_offsets SET next_offset = $3 WHERE topic = $1 AND partition = $2",
        )
        .bind(&self.topic)
        .bind(partition)
        .bind(offset + 1)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}

fn partitions(
    consumer: &StreamConsumer,
    topic: &str,
) -> Result<Vec<i32>, rdkafka::error::KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// A stable id of the event at `topic`/`partition`/`offset`: the webhook-id of its delivery.
fn event_id(topic: &str, partition: i32, offset: i64) -> String {
    let digest = t2v_contract::sha256_hex(format!("{topic}/{partition}/{offset}").as_bytes());
    format!("msg_{}", &digest[..32])
}

/// The protobuf JSON form of an event, as the job row stores it.
fn event_json(event: &GenerationEvent) -> Value {
    let text = t2v_producer::json::to_json(t2v_contract::headers::schema::GENERATION_EVENT, event);
    serde_json::from_str(&text).expect("to_json writes JSON")
}

/// What one event does to its job's row (nothing once the row is terminal).
async fn apply_event(
    tx: &mut Transaction<'_, Postgres>,
    event: &GenerationEvent,
    event_id: &str,
) -> Result<(), sqlx::Error> {
    const LIVE: &str = "job_id = $1 AND state NOT IN ('completed', 'failed', 'canceled')";
    let id = event.job_id.as_str();
    let Some(kind) = &event.kind else {
        return Ok(());
    };
    let (set, json) = match kind {
        Kind::Accepted(_) => ("version = version + 1".to_string(), None),
        Kind::Started(s) => (
            format!("state = 'running', started = $2, step = {}, total_steps = {}, eta_ms = NULL, version = version + 1",
                s.resumed_from_step, s.total_steps),
            Some(event_json(event)),
        ),
        Kind::Progress(p) => (
            format!("state = 'running', step = {}, total_steps = {}, eta_ms = {}, version = version + 1",
                p.step, p.total_steps, p.eta_ms.min(i64::MAX as u64)),
            None,
        ),
        Kind::Completed(_) => ("state = 'completed', terminal = $2, eta_ms = 0, version = version + 1".into(), Some(event_json(event))),
        Kind::Failed(_) => ("state = 'failed', terminal = $2, version = version + 1".into(), Some(event_json(event))),
        Kind::Canceled(_) => ("state = 'canceled', terminal = $2, version = version + 1".into(), Some(event_json(event))),
    };
    let sql = format!(
        "UPDATE jobs SET {set}, updated_at = now() WHERE {LIVE} RETURNING tenant, charged_day::text, webhook_url"
    );
    // Audited: `set` splices only integers decoded from the event; strings are bind parameters.
    let mut query =
        sqlx::query_as::<_, (String, Option<String>, Option<String>)>(sqlx::AssertSqlSafe(sql))
            .bind(id);
    if let Some(json) = json {
        query = query.bind(json);
    }
    let Some((tenant, day, webhook_url)) = query.fetch_optional(&mut **tx).await? else {
        return Ok(());
    };
    let terminal = matches!(
        kind,
        Kind::Completed(_) | Kind::Failed(_) | Kind::Canceled(_)
    );
    if let (true, Some(url)) = (terminal, webhook_url) {
        record_delivery(tx, id, event_id, &tenant, &url).await?;
    }
    account(tx, kind, &tenant, id, day.as_deref()).await
}

/// The webhook delivery of a terminal event, in the transaction that applies it: one row per
/// event (the unique event id makes a second insert a no-op, should one ever be tried).
async fn record_delivery(
    tx: &mut Transaction<'_, Postgres>,
    job_id: &str,
    event_id: &str,
    tenant: &str,
    url: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhook_deliveries (job_id, event_id, tenant, url) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(job_id)
    .bind(event_id)
    .bind(tenant)
    .bind(url)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Quota bookkeeping of a terminal event: GPU time of a finished video counts; a video that
/// failed for an infrastructure reason is given back (once: `charged_day` is cleared).
async fn account(
    tx: &mut Transaction<'_, Postgres>,
    kind: &Kind,
    tenant: &str,
    job_id: &str,
    day: Option<&str>,
) -> Result<(), sqlx::Error> {
    let Some(day) = day else { return Ok(()) };
    match kind {
        Kind::Completed(c) => {
            let gpu_ms = c
                .timings
                .as_ref()
                .map_or(0, |t| t.total_ms)
                .min(i64::MAX as u64) as i64;
            limits::charge_gpu_ms(tx, tenant, day, gpu_ms).await
        }
        Kind::Failed(f)
            if limits::refunds_video(ErrorCode::try_from(f.code).unwrap_or_default()) =>
        {
            limits::refund_video(tx, tenant, day).await?;
            sqlx::query("UPDATE jobs SET charged_day = NULL WHERE job_id = $1")
                .bind(job_id)
                .execute(&mut **tx)
                .await?;
            Ok(())
        }
        _ => Ok(()),
    }
}
