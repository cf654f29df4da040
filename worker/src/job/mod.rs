//! One request's life (DESIGN.md "The job contract", "Delivery semantics"):
//! decode → validate → dedupe via the manifest → Accepted → attempt marker → Started →
//! generate with Progress (throttled) → MP4 + thumbnail → upload → manifest (create-only, the
//! commit point) → Completed. [`handle`] returns what the consumer loop must do with the offset.
//!
//! Checkpoints (`checkpoints.rs`, issue 7): before Started the job resumes from the newest stored
//! checkpoint written for the same request digest and model revision; while it runs one is taken
//! every `[checkpoint] every_steps` / `every_secs` and at a stop (shutdown, or the partition
//! handed over); they are deleted once the job ends for good (Completed, Canceled, Failed).

use std::ops::ControlFlow;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path;
use prost::Message as _;
use rdkafka::error::KafkaError;
use t2v_contract::{now_unix_ms, validate, TraceContext};
use t2v_proto::v1::{
    generation_event::Kind, Accepted, Canceled, ErrorCode, Failed, GenerationEvent,
    GenerationRequest, Progress, Sampler, Started,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub mod attempts;
pub mod checkpoints;
pub mod manifest;

use checkpoints::JobHooks;
pub use checkpoints::{checkpoint_name, CHECKPOINT_DIR};

use crate::job::attempts;
use crate::config::WorkerConfig;
use crate::kafka::control::CancelRegistry;
use crate::kafka::events::{Publisher, SourceRecord};
use crate::job::checkpoints::Checkpoint;
use crate::generate::{GenerateError, GeneratorThread, JobSpec, ModelInfo, StepInfo};
use crate::job::manifest::{self, Manifest, StoredFile, TimingsMs};
use crate::media;
use crate::metrics::{outcome, phase, Metrics};
use crate::storage::{Storage, StorageError};
use t2v_contract::sha256_hex;
use crate::trace::phase_span;

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
}

/// A job ended early with this terminal event (or without one, for `Interrupted`/`Redeliver`).
enum Stop {
    Failed {
        code: ErrorCode,
        message: String,
        retryable: bool,
        dead_letter: bool,
    },
    Canceled {
        reason: String,
        at_step: u32,
    },
    Interrupted,
    StorageDown(StorageError),
    Kafka(KafkaError),
}

impl From<StorageError> for Stop {
    fn from(e: StorageError) -> Self {
        Stop::StorageDown(e)
    }
}

impl From<KafkaError> for Stop {
    fn from(e: KafkaError) -> Self {
        Stop::Kafka(e)
    }
}

fn failed(code: ErrorCode, message: impl Into<String>, retryable: bool, dead_letter: bool) -> Stop {
    Stop::Failed {
        code,
        message: message.into(),
        retryable,
        dead_letter,
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

struct Job<'a> {
    ctx: &'a JobContext,
    /// Shutdown, or this record's partition revoked: stop at the next step, checkpoint, no event.
    stop: CancellationToken,
    record: &'a SourceRecord,
    req: GenerationRequest,
    trace: TraceContext,
    accepted_at: Instant,
    timings: TimingsMs,
    at_step: u32,
}

impl Job<'_> {
    fn event(&self, kind: Kind) -> GenerationEvent {
        GenerationEvent {
            job_id: self.req.job_id.clone(),
            emitted_at_unix_ms: now_unix_ms(),
            worker_id: self.ctx.publisher.worker_id.clone(),
            attempt: self.req.attempt,
            labels: self.req.labels.clone(),
            kind: Some(kind),
        }
    }

    async fn emit(&self, kind: Kind) -> Result<(), KafkaError> {
        self.ctx
            .publisher
            .event(&self.event(kind), &self.trace)
            .await
    }

    /// The whole lifecycle after decoding; the `Ok` value is the outcome label.
    async fn run(&mut self) -> Result<&'static str, Stop> {
        let ctx = self.ctx;
        let req = &self.req;
        // 1. Validate, before anything else touches the request.
        validate::job_id(&req.job_id)
            .and_then(|()| validate::request(req))
            .map_err(|e| failed(ErrorCode::InvalidArgument, e.to_string(), false, true))?;
        if req.model != ctx.model.name {
            return Err(failed(
                ErrorCode::ModelNotFound,
                format!(
                    "this fleet serves model {:?}, not {:?} — submit to the fleet that serves it",
                    ctx.model.name, req.model
                ),
                false,
                false,
            ));
        }
        if req.deadline_unix_ms != 0 && now_unix_ms() > req.deadline_unix_ms {
            return Err(failed(
                ErrorCode::DeadlineExceeded,
                format!(
                    "the deadline ({} ms since epoch) passed before the job started",
                    req.deadline_unix_ms
                ),
                false,
                false,
            ));
        }
        if let Some(reason) = ctx.cancels.reason(&req.job_id) {
            return Err(Stop::Canceled { reason, at_step: 0 });
        }

        // 2. Dedupe: a manifest means the job completed; announce the same Completed again.
        let manifest_key = ctx.storage.job_path(&req.job_id, manifest::FILE_NAME);
        if let Some(bytes) = ctx.storage.get(&manifest_key).await? {
            self.delete_checkpoints().await;
            self.republish(&manifest_key, &bytes).await?;
            return Ok(outcome::DUPLICATE);
        }

        // 3. Accepted, then the attempt marker (poison jobs stop after max_attempts).
        self.timings.queue_wait = now_unix_ms().saturating_sub(req.submitted_at_unix_ms);
        if req.submitted_at_unix_ms > 0 {
            ctx.metrics.phase(
                phase::QUEUE_WAIT,
                Duration::from_millis(self.timings.queue_wait),
            );
        }
        self.emit(Kind::Accepted(Accepted {
            queue_wait_ms: self.timings.queue_wait,
        }))
        .await?;
        let (previous, marker) = attempts::claim(
            &ctx.storage,
            &self.req.job_id,
            self.req.attempt,
            &ctx.publisher.worker_id,
        )
        .await?;
        if previous >= ctx.cfg.jobs.max_attempts {
            return Err(failed(
                ErrorCode::AttemptsExhausted,
                format!(
                    "{previous} earlier attempts started and never finished (limit jobs.max_attempts = {}); the request is in the DLQ — inspect it before replaying",
                    ctx.cfg.jobs.max_attempts
                ),
                false,
                true,
            ));
        }
        let result = self.generate_and_store().await;
        if matches!(result, Err(Stop::Interrupted | Stop::StorageDown(_))) {
            // A clean stop is not a crash: give the attempt back.
            let _ = ctx.storage.delete(&marker).await;
        }
        result
    }

    async fn republish(&self, key: &Path, bytes: &Bytes) -> Result<(), Stop> {
        let manifest = Manifest::from_bytes(bytes).map_err(|e| {
            failed(
                ErrorCode::Internal,
                format!("the stored manifest {key} is unreadable ({e}) — delete it to let the job run again"),
                false,
                true,
            )
        })?;
        let completed = manifest.completed(&self.ctx.storage.uri(key), bytes);
        self.emit(Kind::Completed(completed)).await?;
        Ok(())
    }

    fn spec(&self) -> JobSpec {
        let (req, d) = (&self.req, self.ctx.model.defaults);
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        JobSpec {
            job_id: req.job_id.clone(),
            prompt: req.prompt.clone(),
            negative_prompt: req.negative_prompt.clone(),
            width: or(req.width, d.width),
            height: or(req.height, d.height),
            num_frames: or(req.num_frames, d.num_frames),
            fps: or(req.fps, d.fps),
            steps: or(req.num_inference_steps, d.steps),
            guidance_scale: req.guidance_scale,
            guidance_scale_2: req.guidance_scale_2,
            shift: req.shift,
            sampler: Sampler::try_from(req.sampler).unwrap_or(Sampler::Unspecified),
            seed: req.seed.unwrap_or_else(|| default_seed(&req.job_id)),
        }
    }

    async fn generate_and_store(&mut self) -> Result<&'static str, Stop> {
        let ctx = self.ctx;
        let spec = self.spec();
        self.timings.model_load = ctx.model_load.as_millis() as u64;
        let resume = self.find_checkpoint(&spec).await?;
        let resumed_from_step = resume.as_ref().map_or(0, |c| c.step);
        self.emit(Kind::Started(Started {
            model: ctx.model.name.clone(),
            model_revision: ctx.model.revision.clone(),
            seed: spec.seed,
            total_steps: spec.steps,
            resumed_from_step,
            width: spec.width,
            height: spec.height,
            num_frames: spec.num_frames,
        }))
        .await?;

        // 4. Generate on the generator thread; Progress goes out from here, at most one per interval.
        let (steps_tx, mut steps_rx) = tokio::sync::mpsc::unbounded_channel::<StepInfo>();
        let (cancels, shutdown, metrics, job_id) = (
            ctx.cancels.clone(),
            self.stop.clone(),
            ctx.metrics.clone(),
            spec.job_id.clone(),
        );
        let stop_on = shutdown.clone();
        let on_step = move |step: StepInfo| {
            metrics.step_done();
            let _ = steps_tx.send(step);
            if stop_on.is_cancelled() || cancels.reason(&job_id).is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let (writer_tx, writer_rx) = tokio::sync::mpsc::unbounded_channel::<Checkpoint>();
        let in_flight = Arc::new(AtomicBool::new(false));
        let hooks = JobHooks {
            on_step,
            every_steps: ctx.cfg.checkpoint.every_steps,
            every_secs: ctx.cfg.checkpoint.every_secs,
            last_step: resumed_from_step,
            last_at: Instant::now(),
            in_flight: in_flight.clone(),
            shutdown,
            writer: writer_tx,
        };
        let writer = self.write_checkpoints(writer_rx, in_flight, resume.as_ref().map(|c| c.step));
        let interval = Duration::from_millis(ctx.cfg.jobs.progress_interval_ms);
        let progress = async {
            let started = Instant::now();
            let mut last_sent: Option<Instant> = None;
            let mut last_step = 0;
            while let Some(s) = steps_rx.recv().await {
                last_step = s.step;
                if last_sent.is_some_and(|t| t.elapsed() < interval) {
                    continue;
                }
                last_sent = Some(Instant::now());
                let per_step = started.elapsed() / s.step.saturating_sub(resumed_from_step).max(1);
                let event = Kind::Progress(Progress {
                    step: s.step,
                    total_steps: s.total,
                    timestep: s.timestep,
                    eta_ms: (per_step * (s.total - s.step)).as_millis() as u64,
                    resumed_from_step,
                });
                if let Err(e) = self.emit(event).await {
                    tracing::warn!(error = %e, "a Progress event was not delivered");
                }
            }
            last_step
        };
        let (generated, last_step, ()) = async {
            tokio::join!(
                ctx.generator.generate(spec.clone(), resume, hooks),
                progress,
                writer
            )
        }
        .instrument(phase_span("generate"))
        .await;
        self.at_step = last_step;
        let generated = match generated {
            Ok(g) => g,
            Err(GenerateError::Stopped { at_step }) => {
                self.at_step = at_step;
                return Err(match ctx.cancels.reason(&spec.job_id) {
                    Some(reason) => {
                        self.delete_checkpoints().await;
                        Stop::Canceled { reason, at_step }
                    }
                    None => Stop::Interrupted,
                });
            }
            Err(GenerateError::OutOfMemory { message }) => {
                return Err(failed(ErrorCode::ResourceExhausted, message, false, false))
            }
            Err(GenerateError::InvalidInput(message)) => {
                return Err(failed(ErrorCode::InvalidArgument, message, false, true))
            }
            Err(e @ (GenerateError::Load(_) | GenerateError::Internal(_))) => {
                return Err(failed(ErrorCode::Internal, e.to_string(), true, false))
            }
        };
        let t = generated.timings;
        self.timings.text_encode = t.text_encode.as_millis() as u64;
        self.timings.denoise = t.denoise.as_millis() as u64;
        self.timings.vae_decode = t.vae_decode.as_millis() as u64;
        for (name, took) in [
            (phase::TEXT_ENCODE, t.text_encode),
            (phase::DENOISE, t.denoise),
            (phase::VAE_DECODE, t.vae_decode),
        ] {
            ctx.metrics.phase(name, took);
        }

        // 5. Encode.
        let encode_started = Instant::now();
        let encoded = media::encode(&ctx.cfg.media, &generated.frames, spec.fps, &spec.job_id)
            .instrument(phase_span("encode"))
            .await
            .map_err(|e| failed(ErrorCode::Internal, e.to_string(), true, false))?;
        let video_bytes = Bytes::from(std::fs::read(&encoded.video).map_err(|e| {
            failed(
                ErrorCode::Internal,
                format!("cannot read the encoded video: {e}"),
                true,
                false,
            )
        })?);
        let thumb_bytes = Bytes::from(std::fs::read(&encoded.thumbnail).map_err(|e| {
            failed(
                ErrorCode::Internal,
                format!("cannot read the thumbnail: {e}"),
                true,
                false,
            )
        })?);
        drop(encoded);
        let encode_took = encode_started.elapsed();
        self.timings.encode = encode_took.as_millis() as u64;
        ctx.metrics.phase(phase::ENCODE, encode_took);

        // 6. Upload the outputs, then the manifest, create-only: the commit point.
        let upload_started = Instant::now();
        let (video, thumbnail) = async {
            let video = self.upload("video.mp4", video_bytes, "video/mp4").await?;
            let thumbnail = self
                .upload("thumbnail.jpg", thumb_bytes, "image/jpeg")
                .await?;
            Ok::<_, Stop>((video, thumbnail))
        }
        .instrument(phase_span("upload"))
        .await?;
        let upload_took = upload_started.elapsed();
        self.timings.upload = upload_took.as_millis() as u64;
        ctx.metrics.phase(phase::UPLOAD, upload_took);
        self.timings.total = self.accepted_at.elapsed().as_millis() as u64;
        let manifest = Manifest {
            format: 1,
            job_id: spec.job_id.clone(),
            model: ctx.model.name.clone(),
            model_revision: ctx.model.revision.clone(),
            prompt: spec.prompt.clone(),
            negative_prompt: spec.negative_prompt.clone(),
            seed: spec.seed,
            width: spec.width,
            height: spec.height,
            num_frames: spec.num_frames,
            fps: spec.fps,
            num_inference_steps: spec.steps,
            labels: self.req.labels.clone().into_iter().collect(),
            video,
            thumbnail,
            timings_ms: self.timings,
            worker_id: ctx.publisher.worker_id.clone(),
            created_at_unix_ms: now_unix_ms(),
        };
        // The manifest and Completed, traced as one phase (`commit`).
        async {
            let key = ctx.storage.job_path(&spec.job_id, manifest::FILE_NAME);
            let bytes = Bytes::from(manifest.to_bytes());
            match ctx
                .storage
                .put(&key, bytes.clone(), manifest::CONTENT_TYPE, true)
                .await
            {
                Ok(()) => {}
                Err(StorageError::AlreadyExists(_)) => {
                    // Another worker committed this job first: announce its result, not ours.
                    let stored = ctx.storage.get(&key).await?.unwrap_or_default();
                    self.republish(&key, &stored).await?;
                    return Ok(outcome::DUPLICATE);
                }
                Err(e) => return Err(e.into()),
            }
            // 7. Completed; the checkpoints are of no use any more.
            self.delete_checkpoints().await;
            let completed = manifest.completed(&ctx.storage.uri(&key), &bytes);
            self.emit(Kind::Completed(completed)).await?;
            Ok::<_, Stop>(outcome::COMPLETED)
        }
        .instrument(phase_span("commit"))
        .await
    }

    async fn upload(
        &self,
        name: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<StoredFile, Stop> {
        let key = self.ctx.storage.job_path(&self.req.job_id, name);
        let file = StoredFile {
            uri: self.ctx.storage.uri(&key),
            size_bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
            content_type: content_type.into(),
        };
        self.ctx
            .storage
            .put(&key, bytes, content_type, false)
            .await?;
        Ok(file)
    }

    /// Turns an early stop into its terminal event, DLQ copy or re-queue.
    async fn finish_stop(&self, stop: Stop) -> (Disposition, &'static str, String) {
        let ctx = self.ctx;
        let result = match stop {
            Stop::Failed {
                code,
                message,
                retryable,
                dead_letter,
            } => {
                let outcome_code = code.as_str_name().to_string();
                let sent = async {
                    if dead_letter {
                        ctx.publisher
                            .dead_letter(
                                self.record,
                                &format!("{}: {message}", code.as_str_name()),
                                self.req.attempt,
                            )
                            .await?;
                    }
                    self.emit(Kind::Failed(Failed {
                        code: code as i32,
                        message: message.clone(),
                        retryable,
                    }))
                    .await
                }
                .await;
                if sent.is_ok() {
                    // Failed is final for this job id: its checkpoints would only cost storage.
                    self.delete_checkpoints().await;
                }
                tracing::warn!(code = code.as_str_name(), message, "job failed");
                (sent, outcome::FAILED, outcome_code)
            }
            Stop::Canceled { reason, at_step } => {
                let sent = self
                    .emit(Kind::Canceled(Canceled {
                        reason: reason.clone(),
                        at_step,
                    }))
                    .await;
                (
                    sent,
                    outcome::CANCELED,
                    format!("CANCELED at step {at_step}: {reason}"),
                )
            }
            Stop::Interrupted => {
                return (
                    Disposition::Interrupted,
                    outcome::INTERRUPTED,
                    format!(
                        "interrupted after step {} (shutdown, or the partition moved to another worker)",
                        self.at_step
                    ),
                )
            }
            Stop::StorageDown(e) => {
                tracing::warn!(error = %e, "object store unavailable after retries");
                if self.req.attempt < validate::MAX_ATTEMPT {
                    let mut again = self.req.clone();
                    again.attempt += 1;
                    let sent = ctx.publisher.requeue(&again, &self.trace).await;
                    (
                        sent,
                        outcome::REQUEUED,
                        format!("re-queued as attempt {}: {e}", again.attempt),
                    )
                } else {
                    let sent = self
                        .emit(Kind::Failed(Failed {
                            code: ErrorCode::Unavailable as i32,
                            message: e.to_string(),
                            retryable: true,
                        }))
                        .await;
                    (sent, outcome::FAILED, "ERROR_CODE_UNAVAILABLE".into())
                }
            }
            Stop::Kafka(e) => (Err(e), outcome::FAILED, String::new()),
        };
        match result {
            (Ok(()), label, detail) => (Disposition::Done, label, detail),
            (Err(e), _, _) => {
                tracing::error!(error = %e, "Kafka did not acknowledge; the record will be read again");
                (
                    Disposition::Redeliver,
                    outcome::FAILED,
                    format!("Kafka unavailable: {e}"),
                )
            }
        }
    }
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
    let key_id = record
        .key
        .as_deref()
        .and_then(|k| std::str::from_utf8(k).ok())
        .unwrap_or_default()
        .to_string();
    let (span, trace) = crate::trace::job_span(&key_id, &ctx.publisher.worker_id, &record.headers);
    async move {
        let started = Instant::now();
        let decoded = record
            .payload
            .as_deref()
            .ok_or_else(|| "the record has no value".to_string())
            .and_then(|p| GenerationRequest::decode(p).map_err(|e| e.to_string()));
        let req = match decoded {
            Ok(req) => req,
            Err(why) => return undecodable(ctx, &record, &key_id, &trace, &why).await,
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
        };
        ctx.metrics.set_in_flight(1);
        let result = job.run().await;
        ctx.metrics.set_in_flight(0);
        let (disposition, label, detail) = match result {
            Ok(label) => (Disposition::Done, label, String::new()),
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

/// Undecodable bytes: a DLQ copy, and a Failed event when the key names a job.
async fn undecodable(
    ctx: &JobContext,
    record: &SourceRecord,
    key_id: &str,
    trace: &TraceContext,
    why: &str,
) -> Disposition {
    let reason = format!("ERROR_CODE_UNDECODABLE: not a t2v.v1.GenerationRequest ({why})");
    let mut sent = ctx.publisher.dead_letter(record, &reason, 0).await;
    if sent.is_ok() && validate::job_id(key_id).is_ok() {
        let event = GenerationEvent {
            job_id: key_id.to_string(),
            emitted_at_unix_ms: now_unix_ms(),
            worker_id: ctx.publisher.worker_id.clone(),
            attempt: 0,
            labels: Default::default(),
            kind: Some(Kind::Failed(Failed {
                code: ErrorCode::Undecodable as i32,
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
        Err(e) => {
            tracing::error!(error = %e, "the DLQ did not acknowledge; the record will be read again");
            Disposition::Redeliver
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
