//! `t2v-tests`: black-box tests that drive t2v-fleet the way users do, against the real Kafka
//! broker and S3 server started by `make up` (endpoints in `.stack/env`). Each test works on
//! fresh topics and a fresh key prefix, so tests run in parallel and in any order — except the
//! ones that take a shared service away (they say so).
//!
//! # Layout
//! - [`stack`]: the local stack and the build — `.stack/env`, brokers, the built binaries, fresh
//!   names, `scripts/stack.sh` and [`StackGuard`], which starts again what a test took down.
//! - [`kafka`]: topics, reading records and headers back, committed offsets, the worker's events
//!   (waiting for them, Completed, Started, terminal kinds).
//! - [`worker`]: [`WorkerSetup`] and [`WorkerProcess`] (`t2v-worker run` on fresh topics),
//!   [`synthetic_request`], the tiny model of `make fixtures` with its `generate` output, and a
//!   tiny-model job SIGTERMed after a checkpoint ([`InterruptedJob`]).
//! - [`s3`]: the stack's bucket — listing and getting objects — and [`S3Outage`].
//! - [`images`]: conditioning images for requests (PNGs of known colours, a GIF), putting them
//!   in the bucket, and the first frame of a stored video.
//! - [`chaos`]: the fault-injection suite of `make chaos` and `tests/chaos_bounded.rs`.
//! - `tests/*.rs`: one binary per behaviour (`producer_cli.rs`: the `t2v` CLI and `Submitter`;
//!   `worker_*.rs`: `t2v-worker`; `storage_backends.rs`: its `Storage` on each cloud backend).
//!
//! Everything public is re-exported here: `use t2v_tests::{WorkerSetup, wait_events, ...}`.

pub mod chaos;
pub mod gateway;
pub mod images;
pub mod kafka;
pub mod s3;
pub mod stack;
pub mod worker;

pub use images::*;
pub use kafka::*;
pub use s3::*;
pub use stack::*;
pub use worker::*;
