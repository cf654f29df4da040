//! Cancel commands from the compacted t2v.control.v1. Every worker reads all of it, without a
//! consumer group, from the beginning, into a [`CancelRegistry`] that jobs consult before they
//! start and after every denoising step. A tombstone (empty value) lifts a cancel. The reader
//! retries until the topic can be read, and the worker is not ready until it has caught up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use t2v_proto::v1::{control_command, ControlCommand};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use t2v_contract::{now_unix_ms, validate};

use crate::config::KafkaConfig;
use crate::kafka::client_config;

/// How long a cancel is kept after this worker read it: the requests topic's retention (7 days);
/// a request older than that is gone from the topic anyway. (The time of reading, not the
/// command's `issued_at`: a client's clock is not ours to trust.)
const CANCEL_TTL_MS: u64 = 7 * 24 * 3600 * 1000;
/// At most this many cancels are kept; beyond it the oldest leave first.
const MAX_CANCELS: usize = 100_000;

/// Job ids canceled so far, with the reason given and when. Bounded: an entry leaves when its
/// job completed, after [`CANCEL_TTL_MS`], or as the oldest once [`MAX_CANCELS`] are held.
#[derive(Clone, Default)]
pub struct CancelRegistry {
    canceled: Arc<Mutex<HashMap<String, Cancelled>>>,
}

#[derive(Debug, Clone)]
struct Cancelled {
    reason: String,
    read_at_unix_ms: u64,
}

impl CancelRegistry {
    /// The reason, when `job_id` was canceled.
    pub fn reason(&self, job_id: &str) -> Option<String> {
        self.lock().get(job_id).map(|c| c.reason.clone())
    }

    /// `job_id` completed: a cancel can no longer change it.
    pub fn forget(&self, job_id: &str) {
        self.lock().remove(job_id);
    }

    /// How many cancels are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cancelled>> {
        self.canceled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One control record: a Cancel whose key is its valid job id, or a tombstone lifting one.
    /// Anything else is logged and ignored.
    fn apply(&self, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let key = key.and_then(|k| std::str::from_utf8(k).ok());
        let Some(bytes) = payload.filter(|p| !p.is_empty()) else {
            if let Some(id) = key {
                self.lock().remove(id);
            }
            return;
        };
        match ControlCommand::decode(bytes) {
            Ok(ControlCommand {
                job_id,
                command: Some(control_command::Command::Cancel(cancel)),
                ..
            }) => {
                if validate::job_id(&job_id).is_err() || key != Some(job_id.as_str()) {
                    tracing::warn!("ignoring a cancel whose key is not its valid job id");
                    return;
                }
                let reason = validate::truncate_reason(&cancel.reason, validate::MAX_REASON_BYTES);
                tracing::info!(job_id, reason, "cancel received");
                self.insert(job_id, reason, now_unix_ms());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring an undecodable control record"),
        }
    }

    fn insert(&self, job_id: String, reason: String, read_at_unix_ms: u64) {
        let mut map = self.lock();
        map.insert(
            job_id,
            Cancelled {
                reason,
                read_at_unix_ms,
            },
        );
        if map.len() > MAX_CANCELS {
            let now = now_unix_ms();
            map.retain(|_, c| now.saturating_sub(c.read_at_unix_ms) <= CANCEL_TTL_MS);
        }
        while map.len() > MAX_CANCELS {
            let oldest = map
                .iter()
                .min_by_key(|(_, c)| c.read_at_unix_ms)
                .map(|(id, _)| id.clone())
                .expect("the map is not empty");
            map.remove(&oldest);
        }
    }
}

/// The end offset of each partition of `topic` (0 for an empty one): what "caught up" means.
/// An error or a topic without partitions is `Err`, retried by the caller.
fn end_offsets(probe: &BaseConsumer, topic: &str) -> Result<HashMap<i32, i64>, EndOffsetsError> {
    let timeout = Timeout::After(Duration::from_secs(10));
    let metadata = probe.fetch_metadata(Some(topic), timeout)?;
    let mut ends = HashMap::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        if let Some(e) = t.error() {
            return Err(EndOffsetsError::Topic(format!("{e:?}")));
        }
        for p in t.partitions() {
            let (low, high) = probe.fetch_watermarks(topic, p.id(), timeout)?;
            ends.insert(p.id(), if high > low { high } else { 0 });
        }
    }
    if ends.is_empty() {
        return Err(EndOffsetsError::NoPartitions);
    }
    Ok(ends)
}

/// Why the control topic's end offsets cannot be read (yet).
#[derive(Debug, thiserror::Error)]
enum EndOffsetsError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("the brokers report {0} for the topic")]
    Topic(String),
    #[error("the topic has no partitions (missing?)")]
    NoPartitions,
}

/// Reads the end offsets, retrying with backoff (1 s doubling to 30 s) until they come or
/// `stop` fires: a broker outage at start must not leave the pod deaf to cancels for its life.
async fn wait_end_offsets(
    probe: Arc<BaseConsumer>,
    topic: &str,
    stop: &CancellationToken,
) -> Option<HashMap<i32, i64>> {
    let mut delay = Duration::from_secs(1);
    loop {
        let (probe, t) = (probe.clone(), topic.to_string());
        match tokio::task::spawn_blocking(move || end_offsets(&probe, &t)).await {
            Ok(Ok(ends)) => return Some(ends),
            Ok(Err(e)) => {
                tracing::warn!(topic, error = %e, retry_in = ?delay, "cannot read the control topic yet; cancels wait until it can be read")
            }
            Err(e) => tracing::warn!(topic, error = %e, "the control-topic probe failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Starts reading the control topic. The returned receiver turns `true` once everything that was
/// on the topic at start has been read (so a cancel issued before a job is taken is honoured);
/// until then the worker is not ready.
pub fn start(
    k: &KafkaConfig,
    stop: CancellationToken,
) -> Result<
    (
        CancelRegistry,
        watch::Receiver<bool>,
        tokio::task::JoinHandle<()>,
    ),
    KafkaError,
> {
    let mut cfg = client_config(k, "t2v-worker-control");
    cfg.set("group.id", format!("{}-control-unused", k.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    let consumer: StreamConsumer = cfg.create()?;
    let probe: Arc<BaseConsumer> = Arc::new(client_config(k, "t2v-worker-control-probe").create()?);
    let topic = k.control_topic.clone();
    let registry = CancelRegistry::default();
    let (caught_up_tx, caught_up) = watch::channel(false);
    let reg = registry.clone();
    let task = tokio::spawn(async move {
        let Some(ends) = wait_end_offsets(probe, &topic, &stop).await else {
            return;
        };
        let mut list = TopicPartitionList::new();
        for p in ends.keys() {
            list.add_partition_offset(&topic, *p, Offset::Beginning)
                .expect("a fresh list accepts partitions");
        }
        if let Err(e) = consumer.assign(&list) {
            tracing::error!(topic, error = %e, "cannot assign the control topic");
            return;
        }
        read_forever(&consumer, &reg, ends, &caught_up_tx, &stop).await;
    });
    Ok((registry, caught_up, task))
}

/// Applies every control record; flips `caught_up` once the start's end offsets are reached.
async fn read_forever(
    consumer: &StreamConsumer,
    registry: &CancelRegistry,
    mut pending: HashMap<i32, i64>,
    caught_up: &watch::Sender<bool>,
    stop: &CancellationToken,
) {
    pending.retain(|_, end| *end > 0);
    if pending.is_empty() {
        let _ = caught_up.send(true);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            message = consumer.recv() => match message {
                Ok(m) => {
                    registry.apply(m.key(), m.payload());
                    if pending.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
                        pending.remove(&m.partition());
                        if pending.is_empty() {
                            let _ = caught_up.send(true);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "control topic read error"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use t2v_proto::v1::Cancel;

    #[test]
    fn cancels_and_tombstones() {
        let reg = CancelRegistry::default();
        let cmd = ControlCommand {
            job_id: "a".into(),
            issued_at_unix_ms: 1,
            command: Some(control_command::Command::Cancel(Cancel {
                reason: "nope".into(),
            })),
        };
        reg.apply(Some(b"a"), Some(&cmd.encode_to_vec()));
        assert_eq!(reg.reason("a").as_deref(), Some("nope"));
        assert_eq!(reg.reason("b"), None);
        reg.apply(Some(b"a"), None);
        assert_eq!(reg.reason("a"), None);
        reg.apply(Some(b"x"), Some(b"\xff\xff garbage"));
        assert_eq!(reg.reason("x"), None);
    }

    fn cancel(job_id: &str, reason: &str, issued_at_unix_ms: u64) -> Vec<u8> {
        ControlCommand {
            job_id: job_id.into(),
            issued_at_unix_ms,
            command: Some(control_command::Command::Cancel(Cancel {
                reason: reason.into(),
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn only_well_formed_fresh_cancels_are_kept_and_they_leave() {
        let reg = CancelRegistry::default();
        let now = now_unix_ms();
        reg.apply(Some(b"other-key"), Some(&cancel("a", "r", now)));
        assert_eq!(reg.reason("a"), None, "key and job id must agree");
        reg.apply(Some(b"has space"), Some(&cancel("has space", "r", now)));
        assert!(reg.is_empty(), "invalid job ids are ignored");
        reg.insert("old".into(), "r".into(), now - CANCEL_TTL_MS - 1);
        for i in 0..MAX_CANCELS as u64 {
            reg.insert(format!("j{i}"), "r".into(), now - 1000 + i % 1000);
        }
        assert_eq!(reg.reason("old"), None, "read longer ago than the TTL");
        assert_eq!(reg.len(), MAX_CANCELS);
        reg.lock().clear();
        let long = "x".repeat(10 * validate::MAX_REASON_BYTES);
        reg.apply(Some(b"b"), Some(&cancel("b", &long, now)));
        assert!(reg.reason("b").unwrap().len() <= validate::MAX_REASON_BYTES);
        reg.forget("b");
        assert!(reg.is_empty(), "a completed job's cancel leaves");
        for i in 0..MAX_CANCELS as u64 + 10 {
            reg.insert(format!("k{i}"), "r".into(), now - 1000 + i % 1000);
        }
        assert_eq!(reg.len(), MAX_CANCELS, "the oldest leave first");
    }
}
