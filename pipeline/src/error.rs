//! One error type for the whole crate. Every variant's message names the cause and, where
//! there is one, the fix — these lines reach users through `t2v-worker` unchanged.
use std::path::PathBuf;

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A file the checkpoint layout requires is absent.
    #[error("missing {what}: expected {path} — is the model directory complete? Re-download or re-sync it")]
    MissingFile { what: String, path: PathBuf },

    /// A tensor the model needs is not in any shard.
    #[error("missing tensor `{key}` in {dir} — the checkpoint is incomplete or for another model")]
    MissingTensor { key: String, dir: PathBuf },

    /// A tensor exists with the wrong shape.
    #[error("tensor `{key}` in {file} has shape {found:?}, the config expects {expected:?} — config.json and the weights disagree")]
    ShapeMismatch {
        key: String,
        file: PathBuf,
        expected: Vec<i64>,
        found: Vec<i64>,
    },

    /// A config file could not be parsed (unknown field, wrong type, bad JSON).
    #[error("invalid config {path}: {message}")]
    Config { path: PathBuf, message: String },

    /// A user-supplied generation setting is out of range.
    #[error("invalid {field}: {message}")]
    InvalidInput { field: String, message: String },

    /// A request's conditioning image cannot be used (format, size, corrupt bytes); the
    /// message says which and what to send instead.
    #[error("invalid image: {message}")]
    Image { message: String },

    /// The per-step callback asked the loop to stop.
    #[error("canceled at step {step}")]
    Canceled { step: usize },

    /// GPU (or host) memory ran out.
    #[error("out of memory: {message}")]
    OutOfMemory { message: String },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A collective between the ranks of a parallel run failed (a peer rank failed, or the
    /// ranks disagree on what they exchange).
    #[error("parallel run failed: {message}")]
    Collective { message: String },

    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// A config value this crate cannot honour, found by a check that does not know which file it
/// came from (`TransformerConfig::validate`, …): the key and why. [`Self::in_file`] names the
/// file, [`Self::in_component`] the component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigProblem {
    pub message: String,
}

impl ConfigProblem {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// As [`PipelineError::Config`] of the file `path`.
    pub fn in_file(self, path: impl Into<PathBuf>) -> PipelineError {
        PipelineError::Config {
            path: path.into(),
            message: self.message,
        }
    }

    /// As [`PipelineError::InvalidInput`] of `component` (a config built in code, not read).
    pub fn in_component(self, component: impl Into<String>) -> PipelineError {
        PipelineError::invalid(component, self.message)
    }
}

impl From<String> for ConfigProblem {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for ConfigProblem {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

impl PipelineError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidInput {
            field: field.into(),
            message: message.into(),
        }
    }
}
