//! `t2v-worker`: a GPU worker of the t2v fleet. It takes generation requests from Kafka
//! (`t2v.requests.v1`), renders each into a video, stores the MP4, a thumbnail and a manifest in
//! object storage and announces the result on `t2v.events.v1` — at-least-once in, exactly one
//! result out (DESIGN.md "The job contract", "Delivery semantics", "Operating it").
//!
//! # Layout
//! - [`config`]: `WorkerConfig` — defaults < worker.toml < `T2V_…` env < flags, validated; its JSON Schema.
//! - [`consumer`]: `run` — the consumer-group loop: pause while a job runs, offsets after the terminal event, shutdown.
//! - [`job`]: one request's lifecycle, decode to Completed, and how failures are classified.
//! - [`generator`]: the `VideoGenerator` trait, its dedicated thread, and the synthetic TEST/DEMO backend.
//! - [`gpu`]: NVML device memory and driver facts, libtorch's CUDA build version.
//! - [`preflight`]: a job's estimated peak memory against the limit, and the settings that fit.
//! - [`wan`]: `WanGenerator`, the Wan2.2 pipeline (t2v-pipeline) behind `VideoGenerator`.
//! - [`oneshot`]: `t2v-worker generate`, one video from the command line without Kafka.
//! - [`media`]: MP4 (H.264, yuv420p, faststart) and JPEG thumbnail through ffmpeg.
//! - [`storage`]: object_store with deterministic keys, create-only writes, sha256 and retries.
//! - [`attempts`]: attempt markers, so a job that keeps crashing workers ends in the DLQ.
//! - [`manifest`]: `manifest.json`, the commit point, and the Completed event built from it.
//! - [`events`]: the idempotent producer: events, DLQ copies, re-queues.
//! - [`control`]: Cancel commands from `t2v.control.v1`.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`; [`metrics`]: the Prometheus metrics.
//! - [`doctor`]: `t2v-worker doctor`, one line per finding with the fix.
//! - [`trace`]: OpenTelemetry job and phase spans, parented on the producer's `traceparent`, exported over OTLP/HTTP when configured.
//!
//! The `t2v-worker` binary (src/main.rs) parses flags and calls into these.

pub mod attempts;
pub mod config;
pub mod consumer;
pub mod control;
pub mod doctor;
pub mod events;
pub mod generator;
pub mod gpu;
pub mod http;
pub mod job;
pub mod manifest;
pub mod media;
pub mod metrics;
pub mod oneshot;
pub mod preflight;
pub mod storage;
pub mod trace;
pub mod wan;

pub use config::WorkerConfig;
pub use generator::{Frames, GenerateError, JobSpec, StepInfo, VideoGenerator};
