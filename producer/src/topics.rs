//! Topic contracts from schemas/topics.yaml, and `apply`: create what is missing, grow
//! partitions that are too few, align cleanup policy and retention. Running it twice is a no-op.

use std::path::Path;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::util::Timeout;
use serde::Deserialize;

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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsFile {
    topics: Vec<TopicSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not a valid topics file: {reason}")]
    Parse { path: String, reason: String },
    #[error("topic {topic}: {reason}")]
    Apply { topic: String, reason: String },
    #[error(transparent)]
    Kafka(#[from] SubmitError),
}

/// Reads and checks schemas/topics.yaml.
pub fn load(path: &Path) -> Result<Vec<TopicSpec>, TopicsError> {
    let text = std::fs::read_to_string(path).map_err(|e| TopicsError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse(&text).map_err(|reason| TopicsError::Parse {
        path: path.display().to_string(),
        reason,
    })
}

fn parse(text: &str) -> Result<Vec<TopicSpec>, String> {
    let file: TopicsFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    for t in &file.topics {
        if t.partitions < 1 || t.replication_factor < 1 {
            return Err(format!(
                "{}: partitions and replication_factor must be >= 1",
                t.name
            ));
        }
        if !matches!(
            t.cleanup_policy.as_str(),
            "delete" | "compact" | "compact,delete"
        ) {
            return Err(format!(
                "{}: cleanup_policy must be delete, compact or compact,delete",
                t.name
            ));
        }
    }
    Ok(file.topics)
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
    let admin: AdminClient<DefaultClientContext> = client.create().map_err(SubmitError::from)?;
    let options = AdminOptions::new()
        .operation_timeout(Some(Timeout::After(timeout)))
        .request_timeout(Some(timeout));
    let metadata = admin
        .inner()
        .fetch_metadata(None, Timeout::After(timeout))
        .map_err(|e| SubmitError::BrokersUnreachable {
            brokers: brokers.to_string(),
            timeout,
            reason: e.to_string(),
        })?;
    let mut outcomes = Vec::new();
    for spec in specs {
        // A topic that is still electing leaders reports an error but exists all the same.
        let existing = metadata.topics().iter().find(|t| {
            t.name() == spec.name
                && !matches!(
                    t.error(),
                    Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                )
        });
        let retention = spec.retention_ms.to_string();
        let Some(existing) = existing else {
            let replication = replication_override.unwrap_or(spec.replication_factor);
            let topic = NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(replication),
            )
            .set("cleanup.policy", &spec.cleanup_policy)
            .set("retention.ms", &retention);
            for result in admin
                .create_topics([&topic], &options)
                .await
                .map_err(SubmitError::from)?
            {
                match result {
                    Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => {
                        return Err(TopicsError::Apply {
                            topic,
                            reason: format!("create failed: {code}"),
                        })
                    }
                }
            }
            outcomes.push((spec.name.clone(), Outcome::Created));
            continue;
        };
        let mut changes = Vec::new();
        let have = existing.partitions().len() as i32;
        if have < spec.partitions {
            let grow = NewPartitions::new(&spec.name, spec.partitions as usize);
            for result in admin
                .create_partitions([&grow], &options)
                .await
                .map_err(SubmitError::from)?
            {
                result.map_err(|(topic, code)| TopicsError::Apply {
                    topic,
                    reason: format!("growing partitions failed: {code}"),
                })?;
            }
            changes.push(format!("partitions {have} -> {}", spec.partitions));
        } else if have > spec.partitions {
            tracing::warn!(
                topic = spec.name,
                "has {have} partitions, more than the {} in topics.yaml; Kafka cannot shrink them — update topics.yaml",
                spec.partitions
            );
        }
        let resource = ResourceSpecifier::Topic(&spec.name);
        let described = admin
            .describe_configs([&resource], &options)
            .await
            .map_err(SubmitError::from)?;
        let mut current = std::collections::HashMap::new();
        for result in described {
            let config = result.map_err(|code| TopicsError::Apply {
                topic: spec.name.clone(),
                reason: format!("describe configs failed: {code}"),
            })?;
            for entry in config.entries {
                if let Some(value) = entry.value {
                    current.insert(entry.name, value);
                }
            }
        }
        let wanted = [
            ("cleanup.policy", spec.cleanup_policy.as_str()),
            ("retention.ms", retention.as_str()),
        ];
        let differing: Vec<_> = wanted
            .iter()
            .filter(|(k, v)| current.get(*k).map(String::as_str) != Some(*v))
            .collect();
        if !differing.is_empty() {
            // Incremental alter is not exposed by rdkafka; a plain alter replaces the topic's
            // dynamic configs, so send every config we own.
            let mut alter = AlterConfig::new(resource);
            for (k, v) in wanted {
                alter = alter.set(k, v);
            }
            for result in admin
                .alter_configs([&alter], &options)
                .await
                .map_err(SubmitError::from)?
            {
                result.map_err(|(_, code)| TopicsError::Apply {
                    topic: spec.name.clone(),
                    reason: format!("alter configs failed: {code}"),
                })?;
            }
            for (k, v) in differing {
                changes.push(format!(
                    "{k} {} -> {v}",
                    current.get(*k).map(String::as_str).unwrap_or("unset")
                ));
            }
        }
        outcomes.push((
            spec.name.clone(),
            if changes.is_empty() {
                Outcome::Unchanged
            } else {
                Outcome::Updated(changes)
            },
        ));
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_topics_file_parses_and_names_the_four_topics() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/topics.yaml");
        let specs = load(&path).unwrap();
        let names: Vec<_> = specs.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "t2v.requests.v1",
                "t2v.events.v1",
                "t2v.control.v1",
                "t2v.dlq.v1"
            ]
        );
        let control = &specs[2];
        assert_eq!(control.cleanup_policy, "compact");
    }

    #[test]
    fn bad_specs_are_rejected() {
        let bad = "topics:\n  - {name: a, key: k, value: v, partitions: 0, replication_factor: 1, cleanup_policy: delete, retention_ms: 1}\n";
        assert!(parse(bad).unwrap_err().contains("partitions"));
        let unknown = "topics:\n  - {name: a, key: k, value: v, partitions: 1, replication_factor: 1, cleanup_policy: delete, retention_ms: 1, extra: 2}\n";
        assert!(parse(unknown).unwrap_err().contains("extra"));
    }
}
