//! Following job events on t2v.events.v1: a plain consumer without a group that assigns every
//! partition at its current end (or beginning), so nothing published after `start` is missed and
//! nothing is committed on the cluster's behalf.

use std::time::Duration;

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use t2v_proto::v1::{generation_event::Kind, GenerationEvent, Progress};

use crate::submitter::{SubmitError, SubmitterConfig};

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Terminal {
    Completed(GenerationEvent),
    Failed(GenerationEvent),
    Canceled(GenerationEvent),
}

/// True for Completed, Failed and Canceled.
pub fn is_terminal(event: &GenerationEvent) -> bool {
    matches!(
        event.kind,
        Some(Kind::Completed(_) | Kind::Failed(_) | Kind::Canceled(_))
    )
}

/// Where a watch starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Only events published after the watch started.
    Now,
    /// Everything the topic still retains.
    Beginning,
}

/// A stream of events, optionally for one job.
pub struct JobWatch {
    consumer: StreamConsumer,
    job_id: Option<String>,
}

impl JobWatch {
    /// Events of `job_id` (or all jobs) from now on.
    pub async fn start(cfg: &SubmitterConfig, job_id: Option<String>) -> Result<Self, SubmitError> {
        Self::start_at(cfg, job_id, StartAt::Now).await
    }

    /// Events of `job_id` (or all jobs) from `start` on.
    pub async fn start_at(
        cfg: &SubmitterConfig,
        job_id: Option<String>,
        start: StartAt,
    ) -> Result<Self, SubmitError> {
        let consumer: StreamConsumer = cfg
            .client_config_with(&[
                ("group.id", "t2v-watch-unused"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "false"),
            ])
            .create()?;
        // Metadata and watermarks are blocking calls: resolve the assignment off the runtime.
        let probe: BaseConsumer = cfg.client_config().create()?;
        let (topic, brokers, timeout) = (
            cfg.events_topic.clone(),
            cfg.brokers.clone(),
            cfg.connect_timeout,
        );
        let assignment = tokio::task::spawn_blocking(move || {
            assignment(&probe, &topic, start, &brokers, timeout)
        })
        .await
        .expect("assignment task does not panic")?;
        consumer.assign(&assignment)?;
        Ok(Self { consumer, job_id })
    }

    /// The next event (of the watched job, if one was given). Undecodable records are skipped
    /// with a warning: the events topic is written only by workers, and a reader must not stop.
    pub async fn next_event(&mut self) -> Result<GenerationEvent, SubmitError> {
        loop {
            let message = self.consumer.recv().await?;
            if let Some(job) = &self.job_id {
                if message.key() != Some(job.as_bytes()) {
                    continue;
                }
            }
            let payload = message.payload().unwrap_or_default();
            match GenerationEvent::decode(payload) {
                Ok(event) => return Ok(event),
                Err(e) => tracing::warn!(
                    partition = message.partition(),
                    offset = message.offset(),
                    "skipping undecodable event: {e}"
                ),
            }
        }
    }

    /// Waits for the job's terminal event, calling `on_progress` for each Progress on the way.
    /// `timeout` bounds the whole wait.
    pub async fn wait_terminal(
        &mut self,
        timeout: Option<Duration>,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<Option<Terminal>, SubmitError> {
        let wait = async {
            loop {
                let event = self.next_event().await?;
                match &event.kind {
                    Some(Kind::Progress(p)) => on_progress(p),
                    Some(Kind::Completed(_)) => return Ok(Terminal::Completed(event)),
                    Some(Kind::Failed(_)) => return Ok(Terminal::Failed(event)),
                    Some(Kind::Canceled(_)) => return Ok(Terminal::Canceled(event)),
                    _ => {}
                }
            }
        };
        match timeout {
            Some(limit) => match tokio::time::timeout(limit, wait).await {
                Ok(result) => result.map(Some),
                Err(_) => Ok(None),
            },
            None => wait.await.map(Some),
        }
    }
}

/// Every partition of `topic`, each at its end (or beginning).
fn assignment(
    probe: &BaseConsumer,
    topic: &str,
    start: StartAt,
    brokers: &str,
    timeout: Duration,
) -> Result<TopicPartitionList, SubmitError> {
    let metadata = probe
        .fetch_metadata(Some(topic), Timeout::After(timeout))
        .map_err(|e| SubmitError::unreachable(brokers, timeout, e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(SubmitError::TopicMissing {
            topic: topic.to_string(),
            brokers: brokers.to_string(),
        });
    }
    let mut list = TopicPartitionList::new();
    for p in partitions {
        let offset = match start {
            StartAt::Beginning => Offset::Beginning,
            StartAt::Now => {
                let (_, high) = probe.fetch_watermarks(topic, p, Timeout::After(timeout))?;
                Offset::Offset(high)
            }
        };
        list.add_partition_offset(topic, p, offset)?;
    }
    Ok(list)
}
