//! `t2v-worker`: a GPU worker of the t2v fleet. It takes generation requests from Kafka
//! (`t2v.requests.v1`), renders each into a video, stores the MP4, a thumbnail and a manifest in
//! object storage and announces the result on `t2v.events.v1` — at-least-once in, exactly one
//! result out (docs/design.md).
//!
//! # Layout
//! - [`config`]: `WorkerConfig` — defaults < worker.toml < `T2V_…` env < flags, validated; its JSON Schema.
//! - [`kafka`]: the consumer-group loop ([`kafka::consumer`]), the producer of events, DLQ copies
//!   and re-queues ([`kafka::events`]), Cancel commands ([`kafka::control`]).
//! - [`job`]: one request's lifecycle from decode to its terminal event; how failures are
//!   classified ([`job::failure`]); checkpoints ([`job::checkpoints`]); attempt markers
//!   ([`job::attempts`]); the manifest, the commit point ([`job::manifest`]).
//! - [`generate`]: the `VideoGenerator` trait, its thread, the synthetic TEST/DEMO backend, the
//!   Wan backend and the memory preflight.
//! - [`retry`]: the one backoff policy and which errors are transient.
//! - [`storage`]: object_store with deterministic keys, create-only writes and retries.
//! - [`media`]: MP4 (H.264, yuv420p, faststart) and JPEG thumbnail through ffmpeg.
//! - [`gpu`]: NVML device memory and driver facts, libtorch's CUDA build version.
//! - [`generate_command`]: `t2v-worker generate`, one video from the command line without Kafka.
//! - [`doctor`]: `t2v-worker doctor`, one line per finding with the fix.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`; [`metrics`]: the Prometheus metrics.
//! - [`trace`]: OpenTelemetry job and phase spans, parented on the producer's `traceparent`, exported over OTLP/HTTP when configured.
//!
//! The `t2v-worker` binary (src/main.rs) parses flags and calls into these.

pub mod config;
pub mod doctor;
pub mod generate;
pub mod generate_command;
pub mod gpu;
pub mod http;
pub mod job;
pub mod kafka;
pub mod media;
pub mod metrics;
pub mod retry;
pub mod storage;
pub mod trace;

pub use config::WorkerConfig;
pub use generate::{Frames, GenerateError, JobSpec, StepInfo, VideoGenerator};
