//! Request routing from schemas/topics.yaml: which topic a request goes to, by its model (each
//! fleet serves one model and reads only that model's topics) and its priority lane (a worker
//! starts the next job from its highest lane with a backlog).
//!
//! The producer, the worker's defaults and the Helm chart all read the same file, so a request
//! always reaches a fleet that serves its model, and a model nobody serves is refused at submit
//! with the list of those that are.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The routing file the binaries carry: the repository's schemas/topics.yaml.
pub const BUILTIN_TOPICS_YAML: &str = include_str!("../../schemas/topics.yaml");

/// The highest priority a request may ask for (`GenerationRequest.priority` is 0..=9).
pub const MAX_PRIORITY: u32 = 9;

/// One priority lane: the priorities it takes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lane {
    pub name: String,
    pub priorities: Vec<u32>,
}

/// One served model and its request topic per lane.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRoute {
    pub name: String,
    /// Lane name → request topic.
    pub requests: BTreeMap<String, String>,
}

/// What is wrong with the routing part of a topics file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutesError {
    #[error("priority {0} is in no lane (every value 0..={MAX_PRIORITY} must be in exactly one)")]
    PriorityUnmapped(u32),
    #[error("priority {priority} is in two lanes, {first} and {second}")]
    PriorityTwice {
        priority: u32,
        first: String,
        second: String,
    },
    #[error("lane {lane}: priority {priority} is out of range 0..={MAX_PRIORITY}")]
    PriorityRange { lane: String, priority: u32 },
    #[error("model {model} names no topic for lane {lane} (every model needs one per lane)")]
    LaneMissing { model: String, lane: String },
    #[error("model {model} names a topic for {lane}, which is not a lane")]
    UnknownLane { model: String, lane: String },
    #[error("topic {topic} serves two lanes or models; each lane of each model needs its own")]
    TopicShared { topic: String },
    #[error("model {0} is listed twice")]
    ModelTwice(String),
    #[error("lanes are listed but no model is (add a `models` entry)")]
    NoModel,
    #[error("cannot read the routing file {path}: {message}")]
    File { path: String, message: String },
}

/// A request's model is served by no fleet of this deployment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no fleet serves model {model:?}; served: {} — name one of them, or add the model and its topics to schemas/topics.yaml and deploy a fleet for it", served.join(", "))]
pub struct ModelNotServed {
    pub model: String,
    pub served: Vec<String>,
}

/// The lanes (highest first) and the served models with their topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    lanes: Vec<Lane>,
    models: Vec<ModelRoute>,
}

#[derive(Deserialize)]
struct RoutingPart {
    #[serde(default)]
    lanes: Vec<Lane>,
    #[serde(default)]
    models: Vec<ModelRoute>,
}

impl Routes {
    /// The routes of the topics file built into the binary (schemas/topics.yaml).
    pub fn builtin() -> Self {
        Self::parse(BUILTIN_TOPICS_YAML)
            .expect("schemas/topics.yaml is checked by the producer's tests")
            .expect("schemas/topics.yaml has lanes and models")
    }

    /// The routes of a topics file; `Ok(None)` when it has neither lanes nor models.
    pub fn from_file(path: &Path) -> Result<Option<Self>, RoutesError> {
        let text = std::fs::read_to_string(path).map_err(|e| RoutesError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse_named(&text, &path.display().to_string())
    }

    /// The routes of a topics file's text; `Ok(None)` when it has neither lanes nor models.
    pub fn parse(text: &str) -> Result<Option<Self>, RoutesError> {
        Self::parse_named(text, "<text>")
    }

    fn parse_named(text: &str, path: &str) -> Result<Option<Self>, RoutesError> {
        let part: RoutingPart = serde_yaml::from_str(text).map_err(|e| RoutesError::File {
            path: path.to_string(),
            message: format!("{e} (lanes: [{{name, priorities}}], models: [{{name, requests: {{lane: topic}}}}])"),
        })?;
        Self::from_parts(part.lanes, part.models)
    }

    /// Checks that every priority has one lane and every model one topic per lane.
    pub fn from_parts(
        lanes: Vec<Lane>,
        models: Vec<ModelRoute>,
    ) -> Result<Option<Self>, RoutesError> {
        if lanes.is_empty() && models.is_empty() {
            return Ok(None);
        }
        check_lanes(&lanes)?;
        if models.is_empty() {
            return Err(RoutesError::NoModel);
        }
        check_models(&lanes, &models)?;
        Ok(Some(Self { lanes, models }))
    }

    /// The lanes, highest first.
    pub fn lanes(&self) -> &[Lane] {
        &self.lanes
    }

    /// The served models, the default (for a request without a model) first.
    pub fn models(&self) -> &[ModelRoute] {
        &self.models
    }

    pub fn served_models(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }

    /// The lane `priority` maps to (priorities past the range count as the highest).
    pub fn lane(&self, priority: u32) -> &Lane {
        let priority = priority.min(MAX_PRIORITY);
        self.lanes
            .iter()
            .find(|l| l.priorities.contains(&priority))
            .expect("every priority has a lane (checked at load)")
    }

    /// The served model a request's `model` field names (empty: the default model).
    pub fn model(&self, model: &str) -> Result<&ModelRoute, ModelNotServed> {
        if model.is_empty() {
            return Ok(&self.models[0]);
        }
        self.models
            .iter()
            .find(|m| m.name == model)
            .ok_or_else(|| ModelNotServed {
                model: model.to_string(),
                served: self.served_models(),
            })
    }

    /// The request topic for a request of `model` (empty: the default) at `priority`.
    pub fn topic(&self, model: &str, priority: u32) -> Result<&str, ModelNotServed> {
        let route = self.model(model)?;
        Ok(&route.requests[&self.lane(priority).name])
    }

    /// The request topics of `model`, highest lane first: what its workers read, in that order.
    pub fn request_topics(&self, model: &str) -> Result<Vec<String>, ModelNotServed> {
        let route = self.model(model)?;
        Ok(self
            .lanes
            .iter()
            .map(|l| route.requests[&l.name].clone())
            .collect())
    }

    /// Every request topic of every served model.
    pub fn all_request_topics(&self) -> Vec<String> {
        self.models
            .iter()
            .flat_map(|m| self.lanes.iter().map(|l| m.requests[&l.name].clone()))
            .collect()
    }
}

fn check_lanes(lanes: &[Lane]) -> Result<(), RoutesError> {
    let mut owner: BTreeMap<u32, &str> = BTreeMap::new();
    for lane in lanes {
        for &p in &lane.priorities {
            if p > MAX_PRIORITY {
                return Err(RoutesError::PriorityRange {
                    lane: lane.name.clone(),
                    priority: p,
                });
            }
            if let Some(first) = owner.insert(p, &lane.name) {
                return Err(RoutesError::PriorityTwice {
                    priority: p,
                    first: first.to_string(),
                    second: lane.name.clone(),
                });
            }
        }
    }
    match (0..=MAX_PRIORITY).find(|p| !owner.contains_key(p)) {
        Some(p) => Err(RoutesError::PriorityUnmapped(p)),
        None => Ok(()),
    }
}

fn check_models(lanes: &[Lane], models: &[ModelRoute]) -> Result<(), RoutesError> {
    let mut topics = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    for model in models {
        if !names.insert(model.name.as_str()) {
            return Err(RoutesError::ModelTwice(model.name.clone()));
        }
        for lane in lanes {
            if !model.requests.contains_key(&lane.name) {
                return Err(RoutesError::LaneMissing {
                    model: model.name.clone(),
                    lane: lane.name.clone(),
                });
            }
        }
        for (lane, topic) in &model.requests {
            if !lanes.iter().any(|l| &l.name == lane) {
                return Err(RoutesError::UnknownLane {
                    model: model.name.clone(),
                    lane: lane.clone(),
                });
            }
            if !topics.insert(topic.as_str()) {
                return Err(RoutesError::TopicShared {
                    topic: topic.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_models() -> Routes {
        Routes::parse(
            "lanes:\n  - {name: high, priorities: [7, 8, 9]}\n  - {name: normal, priorities: [0, 4, 5, 6]}\n  - {name: batch, priorities: [1, 2, 3]}\n\
             models:\n  - {name: base, requests: {high: b.high, normal: b.normal, batch: b.batch}}\n  - {name: fast, requests: {high: f.high, normal: f.normal, batch: f.batch}}\n",
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn the_builtin_file_routes_the_default_model_by_lane() {
        let routes = Routes::builtin();
        assert_eq!(routes.topic("", 0).unwrap(), "t2v.requests.v1");
        assert_eq!(
            routes.topic("wan2.2-t2v-a14b", 9).unwrap(),
            "t2v.requests.high.v1"
        );
        assert_eq!(routes.topic("", 2).unwrap(), "t2v.requests.batch.v1");
        assert_eq!(
            routes.request_topics("").unwrap(),
            [
                "t2v.requests.high.v1",
                "t2v.requests.v1",
                "t2v.requests.batch.v1"
            ]
        );
    }

    #[test]
    fn each_priority_maps_to_its_lane_and_model() {
        let routes = two_models();
        let lanes: Vec<&str> = (0..=9).map(|p| routes.lane(p).name.as_str()).collect();
        assert_eq!(
            lanes,
            [
                "normal", "batch", "batch", "batch", "normal", "normal", "normal", "high", "high",
                "high"
            ]
        );
        assert_eq!(routes.topic("fast", 8).unwrap(), "f.high");
        assert_eq!(routes.topic("", 3).unwrap(), "b.batch");
        assert_eq!(routes.all_request_topics().len(), 6);
    }

    #[test]
    fn an_unserved_model_is_refused_naming_the_served_ones() {
        let err = two_models().topic("wan2.1-t2v-14b", 0).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("\"wan2.1-t2v-14b\""), "{message}");
        assert!(message.contains("served: base, fast"), "{message}");
    }

    #[test]
    fn inconsistent_routes_are_refused() {
        let lanes = |p: &str| {
            format!("lanes:\n  - {{name: high, priorities: [{p}]}}\n  - {{name: low, priorities: [0, 1, 2, 3, 4, 5, 6]}}\n")
        };
        let model = "models:\n  - {name: m, requests: {high: t.h, low: t.l}}\n";
        assert!(Routes::parse(&format!("{}{model}", lanes("7, 8, 9"))).is_ok());
        let cases = [
            (
                format!("{}{model}", lanes("7, 8")),
                "priority 9 is in no lane",
            ),
            (format!("{}{model}", lanes("6, 7, 8, 9")), "in two lanes"),
            (format!("{}{model}", lanes("7, 8, 9, 10")), "out of range"),
            (
                format!(
                    "{}models:\n  - {{name: m, requests: {{high: t.h}}}}\n",
                    lanes("7, 8, 9")
                ),
                "no topic for lane low",
            ),
            (
                format!(
                    "{}models:\n  - {{name: m, requests: {{high: t.h, low: t.h}}}}\n",
                    lanes("7, 8, 9")
                ),
                "topic t.h serves two",
            ),
            (lanes("7, 8, 9"), "no model"),
        ];
        for (text, wanted) in cases {
            let err = Routes::parse(&text).unwrap_err().to_string();
            assert!(err.contains(wanted), "{err} should say {wanted}");
        }
        assert_eq!(Routes::parse("topics: []\n").unwrap(), None);
    }
}
