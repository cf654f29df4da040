//! `t2v-tests`: black-box tests that drive t2v-fleet the way users do, against the real Kafka
//! broker and S3 server started by `make up` (endpoints in `.stack/env`).
//!
//! # Layout
//! - this file: finding the stack and the built binaries, isolated topics, reading topics back.
//! - `tests/producer_cli.rs`: the `t2v` CLI and the `Submitter` on the real broker.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

/// The repository root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The endpoints `make up` wrote to `.stack/env`. Panics with the fix when the stack is not up.
pub fn stack_env() -> HashMap<String, String> {
    let path = workspace_root().join(".stack/env");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} not found — start the local stack with `make up`", path.display()));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn brokers() -> String {
    stack_env()["T2V_BROKERS"].clone()
}

/// A binary of this workspace, built by `cargo test --workspace` next to the test executables.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(path.exists(), "{} not built — run `cargo build --workspace` (or `make test`)", path.display());
    path
}

/// A fresh topic name, unique to this test run.
pub fn unique_name(prefix: &str) -> String {
    format!("test.{prefix}.{}", ulid::Ulid::new().to_string().to_lowercase())
}

fn client(brokers: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    cfg
}

/// Creates topics (one partition unless given) on the local broker.
pub async fn create_topics(names: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = client(&brokers()).create().unwrap();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&topics, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))))
        .await
        .unwrap()
    {
        result.unwrap();
    }
}

/// Partition count of `topic` as the broker reports it (0 when missing).
pub fn partition_count(topic: &str) -> usize {
    let consumer: BaseConsumer = client(&brokers()).create().unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Timeout::After(Duration::from_secs(10))).unwrap();
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .unwrap_or(0)
}

/// Total records ever written to `topic` (sum of high watermarks).
pub fn record_count(topic: &str) -> i64 {
    let consumer: BaseConsumer = client(&brokers()).create().unwrap();
    (0..partition_count(topic) as i32)
        .map(|p| consumer.fetch_watermarks(topic, p, Timeout::After(Duration::from_secs(10))).unwrap().1)
        .sum()
}

/// Reads `topic` from the beginning until `expected` records arrived or `timeout` passed.
pub fn read_topic(topic: &str, expected: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let mut cfg = client(&brokers());
    cfg.set("group.id", "t2v-tests-reader").set("enable.auto.commit", "false");
    let consumer: BaseConsumer = cfg.create().unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partition_count(topic) as i32 {
        list.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&list).unwrap();
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
