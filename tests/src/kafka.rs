//! Kafka on the stack's broker: isolated topics, reading records and their headers back, the
//! offsets a group committed, and the worker's `GenerationEvent`s — waiting for them and picking
//! them apart.

use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use t2v_proto::v1::{generation_event::Kind, Completed, GenerationEvent, Started};

use crate::stack::{brokers, unique_name};
use crate::worker::WorkerProcess;

fn client() -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers());
    cfg
}

/// A plain producer on the stack's broker, for records the `Submitter` would refuse (garbage,
/// invalid requests) or place differently (an explicit partition).
pub fn producer() -> FutureProducer {
    client()
        // Up to the brokers' default maximum (1 MiB) with headers, as poison tests send.
        .set("message.max.bytes", "2097152")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap()
}

/// The DLQ's `max.message.bytes`, as `schemas/topics.yaml` sets it: a 1 MiB record plus headers.
pub const DLQ_MAX_MESSAGE_BYTES: &str = "2097152";

/// Fresh requests, events and control topics, for tests of the producer side (the `t2v` CLI,
/// the `Submitter`).
#[derive(Debug, Clone)]
pub struct Topics {
    pub requests: String,
    pub events: String,
    pub control: String,
}

impl Topics {
    /// Creates them: requests with 3 partitions, events with `events_partitions`, control with 1.
    pub async fn create(events_partitions: i32) -> Self {
        let topics = Self::absent();
        create_topics(&[
            (&topics.requests, 3),
            (&topics.events, events_partitions),
            (&topics.control, 1),
        ])
        .await;
        topics
    }

    /// Fresh names that no broker has.
    pub fn absent() -> Self {
        Self {
            requests: unique_name("requests"),
            events: unique_name("events"),
            control: unique_name("control"),
        }
    }

    /// A `Submitter` for these topics.
    pub fn submitter(&self) -> t2v_producer::Submitter {
        submitter(&self.requests, &self.events, &self.control)
    }
}

/// A `Submitter` on the stack's broker for these topics.
pub fn submitter(requests: &str, events: &str, control: &str) -> t2v_producer::Submitter {
    t2v_producer::Submitter::new(t2v_producer::SubmitterConfig {
        brokers: brokers(),
        requests_topic: requests.into(),
        events_topic: events.into(),
        control_topic: control.into(),
        ..Default::default()
    })
    .unwrap()
}

/// Topic configs, as `(key, value)`.
pub type TopicConfigs<'a> = &'a [(&'a str, &'a str)];

/// Creates topics (one partition unless given) on the local broker.
pub async fn create_topics(names: &[(&str, i32)]) {
    let with_configs: Vec<(&str, i32, TopicConfigs<'_>)> =
        names.iter().map(|(n, p)| (*n, *p, &[][..])).collect();
    create_topics_with(&with_configs).await;
}

/// Creates topics with `(name, partitions, topic configs)`.
pub async fn create_topics_with(specs: &[(&str, i32, TopicConfigs<'_>)]) {
    let admin: AdminClient<DefaultClientContext> = client().create().unwrap();
    let topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|(n, p, configs)| {
            configs.iter().fold(
                NewTopic::new(n, *p, TopicReplication::Fixed(1)),
                |topic, (k, v)| topic.set(k, v),
            )
        })
        .collect();
    for result in admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .unwrap()
    {
        result.unwrap();
    }
    // The controller has the topics; wait until the broker serves their metadata too (on a busy
    // machine it can lag the create response, and a client that asks first sees no topic).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for (name, partitions, _) in specs {
        while partition_count(name) != *partitions as usize {
            assert!(
                std::time::Instant::now() < deadline,
                "topic {name} not served with {partitions} partitions 20 s after its creation"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Partition count of `topic` as the broker reports it (0 when missing).
pub fn partition_count(topic: &str) -> usize {
    let consumer: BaseConsumer = client().create().unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Timeout::After(Duration::from_secs(10)))
        .unwrap();
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .unwrap_or(0)
}

/// Total records ever written to `topic` (sum of high watermarks).
pub fn record_count(topic: &str) -> i64 {
    let consumer: BaseConsumer = client().create().unwrap();
    (0..partition_count(topic) as i32)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Timeout::After(Duration::from_secs(10)))
                .unwrap()
                .1
        })
        .sum()
}

/// A consumer of `group` (which never commits) assigned every partition of `topic` from the
/// beginning: it reads the whole topic, whoever else reads it.
pub fn reader(group: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = client()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partition_count(topic) as i32 {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    consumer
}

/// Reads `topic` from the beginning until `expected` records arrived or `timeout` passed.
pub fn read_topic(topic: &str, expected: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let consumer = reader("t2v-tests-reader", topic);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(m.detach());
        }
    }
    out
}

/// Header `key` of a record as a string.
pub fn header(message: &OwnedMessage, key: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Asserts that a DLQ copy says where it came from: `t2v-dlq-source-topic` and
/// `t2v-dlq-source-offset`.
pub fn assert_dlq_source(record: &OwnedMessage, topic: &str, offset: i64) {
    assert_eq!(
        header(record, "t2v-dlq-source-topic").as_deref(),
        Some(topic)
    );
    assert_eq!(
        header(record, "t2v-dlq-source-offset"),
        Some(offset.to_string())
    );
}

/// The offset committed by `group` on `topic`/`partition` (`None` when nothing was committed).
pub fn committed_offset(group: &str, topic: &str, partition: i32) -> Option<i64> {
    let consumer: BaseConsumer = client().set("group.id", group).create().unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let committed = consumer
        .committed_offsets(list, Timeout::After(Duration::from_secs(10)))
        .unwrap();
    match committed.elements()[0].offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// Polls the offset `group` committed on `topic`/`partition` for up to 10 s until it is
/// `expected`; returns the last value seen (auto-commit of stored offsets runs every second).
pub async fn wait_committed(
    group: &str,
    topic: &str,
    partition: i32,
    expected: i64,
) -> Option<i64> {
    let mut committed = None;
    for _ in 0..50 {
        committed = committed_offset(group, topic, partition);
        if committed == Some(expected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    committed
}

// ---------------------------------------------------------------------------------------------
// The worker's events.

/// Decoded events of `topic`, read until `done(events)` holds or `timeout` passes.
pub fn wait_events(
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[GenerationEvent]) -> bool,
) -> Vec<GenerationEvent> {
    let consumer = reader("t2v-tests-events", topic);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(decode_event(&m));
        }
    }
    out
}

/// Decoded events of `topic` until the first Completed or Failed (`timeout` at most): how a job
/// ends that no one cancels.
pub fn wait_job_end(topic: &str, timeout: Duration) -> Vec<GenerationEvent> {
    wait_events(topic, timeout, |e| {
        e.iter()
            .any(|e| matches!(e.kind, Some(Kind::Completed(_)) | Some(Kind::Failed(_))))
    })
}

/// A record of an events topic, decoded.
pub fn decode_event(record: &impl Message) -> GenerationEvent {
    GenerationEvent::decode(record.payload().unwrap_or_default()).expect("events decode")
}

/// How many of `events` have a kind that `pick` accepts.
pub fn count_kind(events: &[GenerationEvent], pick: fn(&Kind) -> bool) -> usize {
    events
        .iter()
        .filter(|e| e.kind.as_ref().is_some_and(pick))
        .count()
}

/// Whether `kind` ends a job: Completed, Failed or Canceled.
pub fn is_terminal(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Completed(_) | Kind::Failed(_) | Kind::Canceled(_)
    )
}

/// The terminal events of `job_id` in `events`, in topic order.
pub fn terminals<'a>(events: &'a [GenerationEvent], job_id: &str) -> Vec<&'a Kind> {
    events
        .iter()
        .filter(|e| e.job_id == job_id)
        .filter_map(|e| e.kind.as_ref())
        .filter(|k| is_terminal(k))
        .collect()
}

/// The first terminal event of `job_id` in `events`.
pub fn terminal<'a>(events: &'a [GenerationEvent], job_id: &str) -> Option<&'a Kind> {
    terminals(events, job_id).into_iter().next()
}

/// The Completed events of `events` with what they carry, in topic order.
pub fn completed(events: &[GenerationEvent]) -> Vec<(&GenerationEvent, &Completed)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Completed(c)) => Some((e, c)),
            _ => None,
        })
        .collect()
}

/// The Started events of `events` with what they carry, in topic order.
pub fn started_events(events: &[GenerationEvent]) -> Vec<(&GenerationEvent, &Started)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Started(s)) => Some((e, s)),
            _ => None,
        })
        .collect()
}

/// Every Started of `events`: the worker that sent it and the step it resumed from.
pub fn starts(events: &[GenerationEvent]) -> Vec<(String, u32)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Started(s)) => Some((e.worker_id.clone(), s.resumed_from_step)),
            _ => None,
        })
        .collect()
}

/// Reads `events_topic` until the job ends (`timeout` at most) after `worker` took it over from
/// an interrupted one; asserts two Started, the first from step 0, and returns the events and
/// those starts (see [`starts`]). Panics with `worker`'s logs otherwise.
pub fn wait_taken_over(
    events_topic: &str,
    worker: &WorkerProcess,
    timeout: Duration,
) -> (Vec<GenerationEvent>, Vec<(String, u32)>) {
    let events = wait_job_end(events_topic, timeout);
    let starts = starts(&events);
    assert_eq!(starts.len(), 2, "{starts:?}\nlogs:\n{}", worker.logs());
    assert_eq!(starts[0].1, 0, "the first run started from step 0");
    (events, starts)
}

/// Waits (60 s at most) for the first Started on `events_topic`; returns its
/// `emitted_at_unix_ms`. Panics with `worker`'s logs when none comes.
pub fn wait_started_at(events_topic: &str, worker: &WorkerProcess) -> u64 {
    let started = |e: &GenerationEvent| matches!(e.kind, Some(Kind::Started(_)));
    wait_events(events_topic, Duration::from_secs(60), |e| {
        e.iter().any(started)
    })
    .iter()
    .find(|e| started(e))
    .unwrap_or_else(|| panic!("no Started; logs:\n{}", worker.logs()))
    .emitted_at_unix_ms
}

/// Reads `events_topic` until its first Completed (`timeout` at most) and asserts there is that
/// one; returns the events read and the Completed. Panics with them and `worker`'s logs when
/// none comes.
pub fn wait_completed(
    events_topic: &str,
    worker: &WorkerProcess,
    timeout: Duration,
) -> (Vec<GenerationEvent>, Completed) {
    let events = wait_events(events_topic, timeout, |e| !completed(e).is_empty());
    let done = completed(&events);
    assert_eq!(
        done.len(),
        1,
        "one Completed; events: {events:?}\nlogs:\n{}",
        worker.logs()
    );
    let c = done[0].1.clone();
    (events, c)
}
