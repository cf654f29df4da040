//! `t2v-producer`: submit text-to-video jobs to a t2v-fleet and follow them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), t2v_producer::SubmitError> {
//! use t2v_producer::{Submitter, SubmitterConfig};
//! use t2v_proto::v1::GenerationRequest;
//! let submitter = Submitter::new(SubmitterConfig::default())?;
//! submitter.check_brokers().await?;
//! let req = GenerationRequest { model: "wan2.2-t2v-a14b".into(), prompt: "a red fox in snow".into(), ..Default::default() };
//! let mut watch = submitter.watch_job("fox-1").await?; // before submitting: no event is missed
//! submitter.submit(GenerationRequest { job_id: "fox-1".into(), ..req }).await?;
//! let terminal = watch.wait_terminal(None, |p| println!("step {}/{}", p.step, p.total_steps)).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`submitter`]: `Submitter` — validate, assign ULID job ids, produce idempotently (acks=all), cancel;
//!   [`submitter::batch_job_id`], the stable id of a batch file's line.
//! - [`placement`]: which partition a request goes to — the consumer-group member with the
//!   shortest backlog ([`Placement::Backlog`], the default), or the job id's hash.
//! - [`routes`]: which request topic a request goes to — its model's fleet, its priority's lane.
//! - [`error`]: `SubmitError`, and which Kafka failures are transient ([`Retry`]).
//! - [`headers`]: t2v-contract's record headers as rdkafka headers.
//! - [`image`]: a request's conditioning image from a path or URI — inline when small, else
//!   uploaded to an [`image::ImageStore`] under its SHA-256 and sent by URI.
//! - [`watch`]: follow a job's events to its terminal one.
//! - [`topics`]: schemas/topics.yaml and `topics apply`.
//! - [`json`]: the protobuf JSON form of the messages (batch files, `watch` output).
//! - [`properties`]: librdkafka properties from a file and the environment; secret redaction.
//!
//! Request bounds, header names, trace context and model defaults live in `t2v-contract`, shared
//! with the worker. The `t2v` CLI (src/main.rs) is a thin layer over these; docs/design.md
//! describes the whole system.

pub mod error;
pub mod headers;
pub mod image;
pub mod json;
pub mod placement;
pub mod properties;
pub mod routes;
pub mod submitter;
pub mod topics;
pub mod watch;

pub use error::{Retry, SubmitError};
pub use placement::Placement;
pub use routes::{ModelNotServed, Routes};
pub use submitter::{Submitted, Submitter, SubmitterConfig};
pub use t2v_contract::{InvalidRequest, TraceContext};
pub use watch::{JobWatch, StartAt, Terminal};
