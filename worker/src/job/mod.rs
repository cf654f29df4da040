//! A job: one record of the requests topic from decode to its terminal event
//! (docs/design.md "The job contract", "Delivery semantics"). [`handle`] returns what the
//! consumer loop must do with the offset.
//!
//! # Layout
//! - [`lifecycle`]: job id and key → manifest lookup (a committed job answers from it) → bounds,
//!   model, deadline, cancel → Accepted → attempt marker → Started → generate with Progress →
//!   encode → upload into the run's own folder → manifest (create-only, the commit point) → Completed.
//! - [`failure`]: how an early end is classified — what is retried, what goes to the DLQ.
//! - [`checkpoints`]: what a checkpoint is, when one is taken, where it is stored, how a job resumes.
//! - [`attempts`]: attempt markers, so a job that keeps crashing workers ends in the DLQ.
//! - [`image`]: the conditioning image — inline or from an allowed URI, bounded, decoded.
//! - [`manifest`]: `manifest.json`, the commit point, and the Completed event built from it.

use std::time::{Duration, Instant};

use prost::Message as _;
use t2v_contract::{now_unix_ms, sha256_hex, validate, TraceContext};
use t2v_proto::v1::{
    generation_event::Kind, ErrorCode, Failed, GenerationEvent, GenerationRequest,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub mod attempts;
pub mod checkpoints;
pub mod failure;
pub mod image;
pub mod lifecycle;
pub mod manifest;

pub use checkpoints::{checkpoint_name, CHECKPOINT_DIR};

use crate::config::WorkerConfig;
use crate::generate::{GeneratorThread, ModelInfo};
use crate::http::Health;
use crate::kafka::control::CancelRegistry;
use crate::kafka::events::{Publisher, SourceRecord};
use crate::metrics::{outcome, phase, Metrics};
use crate::storage::Storage;
use lifecycle::Job;
use manifest::TimingsMs;
use std::sync::atomic::{AtomicU32, Ordering};

use std::sync::Arc;

/// What the consumer loop does with the record's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The terminal event (or DLQ copy, or re-queued request) is acknowledged: store the offset.
    Done,
    /// Stopped by shutdown or a revoked partition: do not store the offset; the next owner of
    /// the partition resumes it.
    Interrupted,
    /// Kafka did not acknowledge what had to be published: read the record again later.
    Redeliver,
}

/// Everything a job needs, shared by all jobs of a worker.
pub struct JobContext {
    pub cfg: Arc<WorkerConfig>,
    pub publisher: Publisher,
    pub storage: Storage,
    pub generator: GeneratorThread,
    pub model: ModelInfo,
    pub model_load: Duration,
    pub cancels: CancelRegistry,
    pub metrics: Arc<Metrics>,
    /// The worker's health: a job that finds the worker sick marks it here.
    pub health: Arc<Health>,
    /// Jobs in a row that ended with an internal error (reset by a completed one).
    pub internal_failures_in_a_row: AtomicU32,
    /// The running job's attempt marker, while it runs: a shutdown whose drain deadline passes
    /// gives it back (a slow step is not a crash).
    pub running_marker: std::sync::Mutex<Option<object_store::path::Path>>,
}

impl JobContext {
    /// Deletes the running job's attempt marker, if any (the drain deadline passed).
    pub async fn give_back_attempt(&self) {
        let marker = self
            .running_marker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(marker) = marker {
            if let Err(e) = self.storage.delete(&marker).await {
                tracing::warn!(%marker, error = %e, "cannot give the attempt back");
            }
        }
    }

    fn set_running_marker(&self, marker: Option<object_store::path::Path>) {
        *self
            .running_marker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = marker;
    }
}

/// The seed of a request that has none: derived from the job id, so every attempt of a job
/// renders the same video and the deterministic output keys never mix two renderings.
pub fn default_seed(job_id: &str) -> u64 {
    let digest = sha256_hex(job_id.as_bytes());
    u64::from_str_radix(&digest[..16], 16).expect("hex digits")
}

/// A one-line prompt summary for logs: at most `chars` characters.
pub fn prompt_summary(prompt: &str, chars: usize) -> String {
    if chars == 0 {
        return String::new();
    }
    let mut out: String = prompt.chars().take(chars).collect();
    if prompt.chars().count() > chars {
        out.push('…');
    }
    out.replace(['\n', '\r'], " ")
}

/// Handles one record of the requests topic from decode to its terminal event.
/// `stop` ends the job at the next step boundary with a checkpoint, without a terminal event
/// and without storing the offset: cancelled on shutdown, and when the record's partition is
/// revoked (its new owner resumes the job from that checkpoint).
pub async fn handle(
    ctx: &JobContext,
    record: SourceRecord,
    stop: CancellationToken,
) -> Disposition {
    // Only a valid job id names the job in spans and events, whatever size the key has.
    let key_id = record
        .key
        .as_deref()
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| validate::job_id(k).is_ok())
        .unwrap_or_default()
        .to_string();
    let (span, trace) = crate::trace::job_span(&key_id, &ctx.publisher.worker_id, &record.headers);
    async move {
        let started = Instant::now();
        let req = match decode(&record) {
            Ok(req) => req,
            Err(why) => {
                return unreadable(ctx, &record, &key_id, &trace, why.code, &why.reason).await
            }
        };
        crate::trace::record_request(req.attempt, &req.model);
        let mut job = Job {
            ctx,
            stop,
            record: &record,
            req,
            trace,
            accepted_at: started,
            timings: TimingsMs::default(),
            at_step: 0,
            admitted: false,
            run: String::new(),
            image: None,
        };
        ctx.metrics.set_in_flight(1);
        let result = job.run().await;
        ctx.metrics.set_in_flight(0);
        let (disposition, label, detail) = match result {
            Ok(label) => {
                ctx.internal_failures_in_a_row.store(0, Ordering::Relaxed);
                (Disposition::Done, label, String::new())
            }
            Err(stop) => job.finish_stop(stop).await,
        };
        if disposition != Disposition::Redeliver {
            ctx.metrics.job_finished(label);
        }
        ctx.metrics.phase(phase::TOTAL, started.elapsed());
        crate::trace::record_outcome(label);
        let t = job.timings;
        tracing::info!(
            outcome = label,
            detail,
            total_s = started.elapsed().as_secs_f64(),
            queue_wait_s = t.queue_wait as f64 / 1e3,
            denoise_s = t.denoise as f64 / 1e3,
            vae_decode_s = t.vae_decode as f64 / 1e3,
            encode_s = t.encode as f64 / 1e3,
            upload_s = t.upload as f64 / 1e3,
            steps = job.at_step,
            prompt = prompt_summary(&job.req.prompt, ctx.cfg.jobs.log_prompt_chars),
            "job finished"
        );
        disposition
    }
    .instrument(span)
    .await
}

/// A record that holds no request the worker can read.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
struct Unreadable {
    code: ErrorCode,
    reason: String,
}

/// The request in `record`, or why there is none: no value, more than
/// [`validate::MAX_REQUEST_BYTES`] (not even decoded), or not a `GenerationRequest`.
fn decode(record: &SourceRecord) -> Result<GenerationRequest, Unreadable> {
    let undecodable = |why: String| Unreadable {
        code: ErrorCode::Undecodable,
        reason: format!("ERROR_CODE_UNDECODABLE: not a t2v.v1.GenerationRequest ({why})"),
    };
    let payload = record
        .payload
        .as_deref()
        .ok_or_else(|| undecodable("the record has no value".into()))?;
    validate::request_size(payload.len()).map_err(|e| Unreadable {
        code: ErrorCode::InvalidArgument,
        reason: format!("ERROR_CODE_INVALID_ARGUMENT: {e}"),
    })?;
    GenerationRequest::decode(payload).map_err(|e| undecodable(e.to_string()))
}

/// A record that holds no request we can read: a DLQ copy, and a Failed event when the key
/// names a job.
async fn unreadable(
    ctx: &JobContext,
    record: &SourceRecord,
    key_id: &str,
    trace: &TraceContext,
    code: ErrorCode,
    reason: &str,
) -> Disposition {
    let reason = validate::truncate_reason(reason, validate::MAX_REASON_BYTES);
    let mut sent = ctx.publisher.dead_letter(record, &reason, 0).await;
    if sent.is_ok() && validate::job_id(key_id).is_ok() {
        let event = GenerationEvent {
            job_id: key_id.to_string(),
            emitted_at_unix_ms: now_unix_ms(),
            worker_id: ctx.publisher.worker_id.clone(),
            attempt: 0,
            labels: Default::default(),
            kind: Some(Kind::Failed(Failed {
                code: code as i32,
                message: format!("{reason}; the bytes are in the DLQ"),
                retryable: false,
            })),
        };
        sent = ctx.publisher.event(&event, trace).await;
    }
    match sent {
        Ok(()) => {
            ctx.metrics.job_finished(outcome::UNDECODABLE);
            crate::trace::record_outcome(outcome::UNDECODABLE);
            tracing::warn!(
                outcome = outcome::UNDECODABLE,
                reason,
                "record sent to the DLQ"
            );
            Disposition::Done
        }
        Err(e) if crate::retry::is_transient_kafka(&e) => {
            tracing::error!(error = %e, "the DLQ did not acknowledge; the record will be read again");
            Disposition::Redeliver
        }
        Err(e) => {
            // Reading it again would loop: the partition moves on, loudly.
            tracing::error!(error = %e, partition = record.partition, offset = record.offset, "Kafka refused the record's DLQ copy for good: skipping it");
            ctx.metrics.job_finished(outcome::DROPPED);
            Disposition::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_seeds_are_stable_per_job() {
        assert_eq!(default_seed("a"), default_seed("a"));
        assert_ne!(default_seed("a"), default_seed("b"));
    }

    #[test]
    fn prompt_summaries_are_truncated_to_one_line() {
        assert_eq!(prompt_summary("a cat\nsurfing", 64), "a cat surfing");
        assert_eq!(prompt_summary("abcdef", 3), "abc…");
        assert_eq!(prompt_summary("abc", 0), "");
    }
}
