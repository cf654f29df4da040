//! Cancel commands from the compacted t2v.control.v1. Every worker reads all of it, without a
//! consumer group, from the beginning, into a [`CancelRegistry`] that jobs consult before they
//! start and after every denoising step. A tombstone (empty value) lifts a cancel.

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

use crate::config::KafkaConfig;
use crate::kafka::client_config;

/// Job ids canceled so far, with the reason given.
#[derive(Clone, Default)]
pub struct CancelRegistry {
    canceled: Arc<Mutex<HashMap<String, String>>>,
}

impl CancelRegistry {
    /// The reason, when `job_id` was canceled.
    pub fn reason(&self, job_id: &str) -> Option<String> {
        self.canceled
            .lock()
            .expect("registry lock")
            .get(job_id)
            .cloned()
    }

    fn apply(&self, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let mut map = self.canceled.lock().expect("registry lock");
        match payload.filter(|p| !p.is_empty()) {
            None => {
                if let Some(id) = key.and_then(|k| std::str::from_utf8(k).ok()) {
                    map.remove(id);
                }
            }
            Some(bytes) => match ControlCommand::decode(bytes) {
                Ok(ControlCommand {
                    job_id,
                    command: Some(control_command::Command::Cancel(cancel)),
                    ..
                }) => {
                    tracing::info!(job_id, reason = cancel.reason, "cancel received");
                    map.insert(job_id, cancel.reason);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "ignoring an undecodable control record"),
            },
        }
    }
}

/// Starts reading the control topic. The returned receiver turns `true` once everything that was
/// on the topic at start has been read (so a cancel issued before a job is taken is honoured).
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
    let probe: BaseConsumer = client_config(k, "t2v-worker-control-probe").create()?;
    let topic = k.control_topic.clone();
    let registry = CancelRegistry::default();
    let (caught_up_tx, caught_up) = watch::channel(false);
    let reg = registry.clone();
    let task = tokio::spawn(async move {
        // Partitions and end offsets are blocking calls: resolve them off the runtime.
        let probe_topic = topic.clone();
        let ends = tokio::task::spawn_blocking(move || -> Result<HashMap<i32, i64>, KafkaError> {
            let timeout = Timeout::After(Duration::from_secs(10));
            let metadata = probe.fetch_metadata(Some(&probe_topic), timeout)?;
            let mut ends = HashMap::new();
            for t in metadata.topics().iter().filter(|t| t.name() == probe_topic) {
                for p in t.partitions() {
                    let (low, high) = probe.fetch_watermarks(&probe_topic, p.id(), timeout)?;
                    ends.insert(p.id(), if high > low { high } else { 0 });
                }
            }
            Ok(ends)
        })
        .await
        .expect("watermark task does not panic");
        let mut pending = match ends {
            Ok(ends) if !ends.is_empty() => ends,
            Ok(_) => {
                tracing::error!(topic, "control topic missing — cancels will not be honoured; create it with `t2v topics apply`");
                let _ = caught_up_tx.send(true);
                return;
            }
            Err(e) => {
                tracing::error!(topic, error = %e, "cannot read the control topic — cancels will not be honoured");
                let _ = caught_up_tx.send(true);
                return;
            }
        };
        let mut list = TopicPartitionList::new();
        for p in pending.keys() {
            list.add_partition_offset(&topic, *p, Offset::Beginning)
                .expect("a fresh list accepts partitions");
        }
        if let Err(e) = consumer.assign(&list) {
            tracing::error!(topic, error = %e, "cannot assign the control topic");
            let _ = caught_up_tx.send(true);
            return;
        }
        pending.retain(|_, end| *end > 0);
        if pending.is_empty() {
            let _ = caught_up_tx.send(true);
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                message = consumer.recv() => match message {
                    Ok(m) => {
                        reg.apply(m.key(), m.payload());
                        if let Some(end) = pending.get(&m.partition()) {
                            if m.offset() + 1 >= *end {
                                pending.remove(&m.partition());
                                if pending.is_empty() {
                                    let _ = caught_up_tx.send(true);
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "control topic read error"),
                },
            }
        }
    });
    Ok((registry, caught_up, task))
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
}
