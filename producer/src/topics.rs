//! Topic contracts from schemas/topics.yaml, and `apply`: create what is missing, grow
//! partitions that are too few, align cleanup policy and retention. Running it twice is a no-op.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaResult;
use rdkafka::metadata::Metadata;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::util::Timeout;
use serde::Deserialize;

use crate::routes::{Lane, ModelRoute, Routes, RoutesError};
use crate::submitter::SubmitError;

/// One topic as schemas/topics.yaml describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    /// What the record key holds (documentation).
    pub key: String,
    /// What the record value holds (documentation).
    pub value: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub cleanup_policy: String,
    /// Milliseconds; -1 keeps records forever.
    pub retention_ms: i64,
    /// The topic's `max.message.bytes`; unset = the brokers' default (about 1 MiB).
    #[serde(default)]
    pub max_message_bytes: Option<i64>,
}

impl TopicSpec {
    /// The topic configs `topics apply` sets and keeps aligned.
    fn configs(&self) -> Vec<(&'static str, String)> {
        let mut configs = vec![
            ("cleanup.policy", self.cleanup_policy.clone()),
            ("retention.ms", self.retention_ms.to_string()),
        ];
        if let Some(max) = self.max_message_bytes {
            configs.push(("max.message.bytes", max.to_string()));
        }
        configs
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsFile {
    topics: Vec<TopicSpec>,
    /// Priority lanes and served models (see [`crate::routes`]).
    #[serde(default)]
    lanes: Vec<Lane>,
    #[serde(default)]
    models: Vec<ModelRoute>,
}

/// Request topics named only under `models` are made like this one.
pub const REQUEST_TOPIC_TEMPLATE: &str = "t2v.requests.v1";

#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid topics file: {source}")]
    Parse {
        path: String,
        #[source]
        source: SpecError,
    },
    /// The cluster refused one step (`create`, `growing partitions`, ...) for one topic.
    #[error("topic {topic}: {step} failed: {code}")]
    Apply {
        topic: String,
        step: &'static str,
        code: RDKafkaErrorCode,
    },
    #[error(transparent)]
    Kafka(#[from] SubmitError),
}

/// What is wrong with a topics file.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Yaml(#[from] serde_yaml::Error),
    #[error("{topic}: partitions and replication_factor must be >= 1")]
    Counts { topic: String },
    #[error("{topic}: cleanup_policy must be delete, compact or compact,delete")]
    CleanupPolicy { topic: String },
    #[error(transparent)]
    Routes(#[from] RoutesError),
    #[error("request topic {topic} is not under `topics` and there is no {REQUEST_TOPIC_TEMPLATE} to make it like")]
    NoTemplate { topic: String },
}

/// Reads and checks schemas/topics.yaml.
pub fn load(path: &Path) -> Result<Vec<TopicSpec>, TopicsError> {
    let text = std::fs::read_to_string(path).map_err(|source| TopicsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|source| TopicsError::Parse {
        path: path.display().to_string(),
        source,
    })
}

fn parse(text: &str) -> Result<Vec<TopicSpec>, SpecError> {
    let file: TopicsFile = serde_yaml::from_str(text)?;
    for t in &file.topics {
        if t.partitions < 1 || t.replication_factor < 1 {
            return Err(SpecError::Counts {
                topic: t.name.clone(),
            });
        }
        if !matches!(
            t.cleanup_policy.as_str(),
            "delete" | "compact" | "compact,delete"
        ) {
            return Err(SpecError::CleanupPolicy {
                topic: t.name.clone(),
            });
        }
    }
    let mut topics = file.topics;
    let Some(routes) = Routes::from_parts(file.lanes, file.models)? else {
        return Ok(topics);
    };
    for name in routes.all_request_topics() {
        if topics.iter().any(|t| t.name == name) {
            continue;
        }
        let template = topics
            .iter()
            .find(|t| t.name == REQUEST_TOPIC_TEMPLATE)
            .ok_or_else(|| SpecError::NoTemplate {
                topic: name.clone(),
            })?;
        let spec = TopicSpec {
            name,
            ..template.clone()
        };
        topics.push(spec);
    }
    Ok(topics)
}

/// What `apply` did to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Unchanged,
    Updated(Vec<String>),
}

/// Creates or reconciles every topic. `replication_override` replaces each spec's factor
/// (for production clusters of three or more brokers).
pub async fn apply(
    client: ClientConfig,
    specs: &[TopicSpec],
    replication_override: Option<i32>,
    timeout: Duration,
    brokers: &str,
) -> Result<Vec<(String, Outcome)>, TopicsError> {
    let admin = Admin::new(client, timeout)?;
    let metadata = admin
        .client
        .inner()
        .fetch_metadata(None, Timeout::After(timeout))
        .map_err(|e| SubmitError::unreachable(brokers, timeout, e))?;
    let mut outcomes = Vec::new();
    for spec in specs {
        let outcome = match existing_partitions(&metadata, &spec.name) {
            None => {
                let replication = replication_override.unwrap_or(spec.replication_factor);
                admin.create(spec, replication).await?;
                Outcome::Created
            }
            Some(have) => admin.reconcile(spec, have).await?,
        };
        outcomes.push((spec.name.clone(), outcome));
    }
    Ok(outcomes)
}

/// The partition count of topic `name`, or `None` when the cluster does not have it. A topic that
/// is still electing leaders reports an error but exists all the same.
fn existing_partitions(metadata: &Metadata, name: &str) -> Option<i32> {
    metadata
        .topics()
        .iter()
        .find(|t| {
            t.name() == name
                && !matches!(
                    t.error(),
                    Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                )
        })
        .map(|t| t.partitions().len() as i32)
}

/// The config changes that turn `current` into `wanted`, as `key old -> new` lines.
fn config_changes(wanted: &[(&str, &str)], current: &HashMap<String, String>) -> Vec<String> {
    wanted
        .iter()
        .filter_map(|(k, v)| {
            let have = current.get(*k).map(String::as_str);
            (have != Some(*v)).then(|| format!("{k} {} -> {v}", have.unwrap_or("unset")))
        })
        .collect()
}

/// Awaits an admin request about `topic`; fails with [`TopicsError::Apply`] when the cluster
/// refused it for a reason other than the `tolerated` ones.
async fn accepted<T, N>(
    request: impl Future<Output = KafkaResult<Vec<Result<T, (N, RDKafkaErrorCode)>>>>,
    topic: &str,
    step: &'static str,
    tolerated: &[RDKafkaErrorCode],
) -> Result<(), TopicsError> {
    for result in request.await.map_err(SubmitError::from)? {
        match result {
            Err((_, code)) if !tolerated.contains(&code) => {
                return Err(TopicsError::Apply {
                    topic: topic.to_string(),
                    step,
                    code,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// An admin client with the operation timeouts of one `apply`.
struct Admin {
    client: AdminClient<DefaultClientContext>,
    options: AdminOptions,
}

impl Admin {
    fn new(client: ClientConfig, timeout: Duration) -> Result<Self, TopicsError> {
        Ok(Self {
            client: client.create().map_err(SubmitError::from)?,
            options: AdminOptions::new()
                .operation_timeout(Some(Timeout::After(timeout)))
                .request_timeout(Some(timeout)),
        })
    }

    /// Creates `spec`'s topic; one that appeared in the meantime is fine.
    async fn create(&self, spec: &TopicSpec, replication: i32) -> Result<(), TopicsError> {
        let configs = spec.configs();
        let topic = configs.iter().fold(
            NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(replication),
            ),
            |topic, (key, value)| topic.set(key, value),
        );
        let request = self.client.create_topics([&topic], &self.options);
        let tolerated = [RDKafkaErrorCode::TopicAlreadyExists];
        accepted(request, &spec.name, "create", &tolerated).await
    }

    /// Grows the partitions of an existing topic that has `have` and aligns its configs.
    async fn reconcile(&self, spec: &TopicSpec, have: i32) -> Result<Outcome, TopicsError> {
        let mut changes = Vec::new();
        changes.extend(self.grow_partitions(spec, have).await?);
        changes.extend(self.align_configs(spec).await?);
        Ok(if changes.is_empty() {
            Outcome::Unchanged
        } else {
            Outcome::Updated(changes)
        })
    }

    /// Grows the topic to `spec.partitions` when it has fewer; Kafka cannot shrink, so more only
    /// warns. Returns the change made, if any.
    async fn grow_partitions(
        &self,
        spec: &TopicSpec,
        have: i32,
    ) -> Result<Option<String>, TopicsError> {
        if have > spec.partitions {
            tracing::warn!(
                topic = spec.name,
                "has {have} partitions, more than the {} in topics.yaml; Kafka cannot shrink them — update topics.yaml",
                spec.partitions
            );
        }
        if have >= spec.partitions {
            return Ok(None);
        }
        let grow = NewPartitions::new(&spec.name, spec.partitions as usize);
        let request = self.client.create_partitions([&grow], &self.options);
        accepted(request, &spec.name, "growing partitions", &[]).await?;
        Ok(Some(format!("partitions {have} -> {}", spec.partitions)))
    }

    /// The topic's current config values.
    async fn current_configs(&self, name: &str) -> Result<HashMap<String, String>, TopicsError> {
        let described = self
            .client
            .describe_configs([&ResourceSpecifier::Topic(name)], &self.options)
            .await
            .map_err(SubmitError::from)?;
        let mut current = HashMap::new();
        for result in described {
            let config = result.map_err(|code| TopicsError::Apply {
                topic: name.to_string(),
                step: "describe configs",
                code,
            })?;
            for entry in config.entries {
                if let Some(value) = entry.value {
                    current.insert(entry.name, value);
                }
            }
        }
        Ok(current)
    }

    /// Sets cleanup policy and retention where they differ from `spec`. Returns the changes made.
    async fn align_configs(&self, spec: &TopicSpec) -> Result<Vec<String>, TopicsError> {
        let configs = spec.configs();
        let wanted: Vec<(&str, &str)> = configs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let changes = config_changes(&wanted, &self.current_configs(&spec.name).await?);
        if changes.is_empty() {
            return Ok(changes);
        }
        // Incremental alter is not exposed by rdkafka; a plain alter replaces the topic's
        // dynamic configs, so send every config we own.
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&spec.name));
        for (k, v) in wanted {
            alter = alter.set(k, v);
        }
        let request = self.client.alter_configs([&alter], &self.options);
        accepted(request, &spec.name, "alter configs", &[]).await?;
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_topics_file_parses_and_names_every_topic() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/topics.yaml");
        let specs = load(&path).unwrap();
        let names: Vec<_> = specs.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "t2v.requests.v1",
                "t2v.events.v1",
                "t2v.control.v1",
                "t2v.dlq.v1",
                "t2v.requests.high.v1",
                "t2v.requests.batch.v1",
                "t2v.i2v.requests.high.v1",
                "t2v.i2v.requests.v1",
                "t2v.i2v.requests.batch.v1",
                "t2v.ti2v.requests.high.v1",
                "t2v.ti2v.requests.v1",
                "t2v.ti2v.requests.batch.v1"
            ]
        );
        let control = &specs[2];
        assert_eq!(control.cleanup_policy, "compact");
        // The lanes' topics are made like the normal lane's.
        assert_eq!(
            TopicSpec {
                name: specs[0].name.clone(),
                ..specs[4].clone()
            },
            specs[0]
        );
    }

    #[test]
    fn bad_specs_are_rejected() {
        let bad = "topics:\n  - {name: a, key: k, value: v, partitions: 0, replication_factor: 1, cleanup_policy: delete, retention_ms: 1}\n";
        assert!(parse(bad).unwrap_err().to_string().contains("partitions"));
        let unknown = "topics:\n  - {name: a, key: k, value: v, partitions: 1, replication_factor: 1, cleanup_policy: delete, retention_ms: 1, extra: 2}\n";
        assert!(parse(unknown).unwrap_err().to_string().contains("extra"));
    }

    #[test]
    fn config_changes_lists_only_what_differs() {
        let current = HashMap::from([
            ("cleanup.policy".to_string(), "delete".to_string()),
            ("retention.ms".to_string(), "1000".to_string()),
        ]);
        let wanted = [
            ("cleanup.policy", "delete"),
            ("retention.ms", "2000"),
            ("segment.ms", "5"),
        ];
        assert_eq!(
            config_changes(&wanted, &current),
            ["retention.ms 1000 -> 2000", "segment.ms unset -> 5"]
        );
        assert!(config_changes(&wanted[..1], &current).is_empty());
    }
}
