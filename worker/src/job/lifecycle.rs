//! One request's life after decoding: validate → manifest lookup → conditioning image read and
//! decoded → Accepted → attempt marker →
//! Started → generate with Progress (throttled) → MP4 + thumbnail → upload → manifest
//! (create-only, the commit point) → Completed. An early end is a [`Stop`], classified and
//! published by [`super::failure`].

use std::ops::ControlFlow;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path;
use rdkafka::error::KafkaError;
use t2v_contract::validate::truncate_reason;
use t2v_contract::{now_unix_ms, sha256_hex, validate, TraceContext};
use t2v_proto::v1::{
    generation_event::Kind, Accepted, ErrorCode, GenerationEvent, GenerationRequest, Progress,
    Sampler, Started,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::attempts;
use super::checkpoints::{Checkpoint, JobHooks};
use super::failure::{generate_failure, Failure, Stop};
use super::manifest::{self, Manifest, ManifestImage, StoredFile, TimingsMs};
use super::{default_seed, JobContext};
use crate::generate::{GenerateError, Generated, JobImage, JobSpec, StepInfo};
use crate::kafka::events::SourceRecord;
use crate::media;
use crate::metrics::{outcome, phase};
use crate::storage::StorageError;
use crate::trace::phase_span;

/// Resolves once no step has finished for `limit` (never, when `limit` is zero), with the time
/// since the last one: the watchdog of a stuck GPU call.
async fn no_step_for(last_step_at: &StepClock, limit: Duration) -> Duration {
    if limit.is_zero() {
        return std::future::pending().await;
    }
    loop {
        let since = last_step_at.since();
        if since >= limit {
            return since;
        }
        tokio::time::sleep((limit - since).min(Duration::from_secs(1))).await;
    }
}

/// When the last denoising step finished (or the generation started).
struct StepClock(std::sync::Mutex<Instant>);

impl StepClock {
    fn new() -> Self {
        Self(std::sync::Mutex::new(Instant::now()))
    }

    fn tick(&self) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    fn since(&self) -> Duration {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
    }
}

pub(super) struct Job<'a> {
    pub(super) ctx: &'a JobContext,
    /// Shutdown, or this record's partition revoked: stop at the next step, checkpoint, no event.
    pub(super) stop: CancellationToken,
    pub(super) record: &'a SourceRecord,
    pub(super) req: GenerationRequest,
    pub(super) trace: TraceContext,
    pub(super) accepted_at: Instant,
    pub(super) timings: TimingsMs,
    pub(super) at_step: u32,
    /// The request passed validation: its labels may be echoed on events.
    pub(super) admitted: bool,
    /// This run's folder name under [`manifest::RUNS_DIR`], `<attempt>.<n>`.
    pub(super) run: String,
    /// The request's conditioning image, once read and decoded.
    pub(super) image: Option<JobImage>,
}

/// The encoded outputs, read into memory for upload.
struct Encoded {
    video: Bytes,
    thumbnail: Bytes,
}

impl Job<'_> {
    /// The job id events are keyed by: the request's when valid, else the record key's when that
    /// is valid, else none (a Failed cannot be announced; the DLQ copy is the answer).
    pub(super) fn event_id(&self) -> Option<&str> {
        let key = self
            .record
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok());
        [Some(self.req.job_id.as_str()), key]
            .into_iter()
            .flatten()
            .find(|id| validate::job_id(id).is_ok())
    }

    /// An event of this job. It echoes only validated fields, so it stays small whatever the
    /// record carried.
    fn event(&self, kind: Kind) -> GenerationEvent {
        GenerationEvent {
            job_id: self.event_id().unwrap_or_default().to_string(),
            emitted_at_unix_ms: now_unix_ms(),
            worker_id: self.ctx.publisher.worker_id.clone(),
            attempt: self.req.attempt.min(validate::MAX_ATTEMPT),
            labels: if self.admitted {
                self.req.labels.clone()
            } else {
                Default::default()
            },
            kind: Some(kind),
        }
    }

    pub(super) async fn emit(&self, kind: Kind) -> Result<(), KafkaError> {
        self.ctx
            .publisher
            .event(&self.event(kind), &self.trace)
            .await
    }

    /// The whole lifecycle after decoding; the `Ok` value is the outcome label.
    pub(super) async fn run(&mut self) -> Result<&'static str, Stop> {
        let ctx = self.ctx;
        // 1. The job id names the outputs and must match the record key: check both first.
        self.check_identity()?;
        // 2. A committed job stays committed: whatever happened since (its deadline passed, a late
        //    cancel, a lost Completed ack), its manifest answers with the same Completed.
        let manifest_key = ctx.storage.job_path(&self.req.job_id, manifest::FILE_NAME);
        if let Some(bytes) = ctx.storage.get(&manifest_key).await? {
            self.delete_checkpoints().await;
            return self.answer_from_manifest(&manifest_key, &bytes).await;
        }
        // 3. Bounds, model, deadline, cancel; then the conditioning image, read and decoded
        //    before any GPU work.
        self.check_admissible()?;
        self.read_image().await?;
        // 4. Accepted, then the attempt marker (poison jobs stop after max_attempts).
        self.accept().await?;
        let (previous, marker) = attempts::claim(
            &ctx.storage,
            &self.req.job_id,
            self.req.attempt,
            &ctx.publisher.worker_id,
        )
        .await?;
        self.run = format!("{}.{previous:04}", self.req.attempt);
        ctx.set_running_marker(Some(marker.clone()));
        if previous >= ctx.cfg.jobs.max_attempts {
            return Err(Failure::poison(
                ErrorCode::AttemptsExhausted,
                format!(
                    "{previous} earlier attempts started and never finished (limit jobs.max_attempts = {}); the request is in the DLQ — inspect it before replaying",
                    ctx.cfg.jobs.max_attempts
                ),
            )
            .into());
        }
        // 5.–8. Generate, encode, upload, commit.
        let result = self.generate_and_store().await;
        ctx.set_running_marker(None);
        if matches!(
            result,
            Err(Stop::Interrupted | Stop::StorageDown(_) | Stop::Kafka(_))
        ) {
            // A clean stop or an outage is not a crash: give the attempt back.
            let _ = ctx.storage.delete(&marker).await;
        }
        result
    }

    /// A valid job id, and a record key (when there is one) equal to it: a request keyed
    /// otherwise would land one job on two partitions.
    fn check_identity(&self) -> Result<(), Stop> {
        let req = &self.req;
        validate::job_id(&req.job_id).map_err(|e| Failure::invalid_input(e.to_string()))?;
        if let Some(key) = self.record.key.as_deref() {
            if key != req.job_id.as_bytes() {
                return Err(Failure::invalid_input(format!(
                    "the record key {:?} differs from the request's job_id {:?} — key every request by its job_id (the t2v producer does)",
                    String::from_utf8_lossy(key),
                    req.job_id
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Bounds, model, deadline and cancel: what ends a job before any work.
    fn check_admissible(&mut self) -> Result<(), Stop> {
        let (ctx, req) = (self.ctx, &self.req);
        validate::request(req).map_err(|e| Failure::invalid_input(e.to_string()))?;
        self.admitted = true;
        if req.model != ctx.model.name {
            return Err(Failure::refused(
                ErrorCode::ModelNotFound,
                format!(
                    "this fleet serves model {:?}, not {:?} — submit to the fleet that serves it",
                    ctx.model.name, req.model
                ),
            )
            .into());
        }
        ctx.model
            .kind
            .check_request(&ctx.model.name, req.image.is_some())
            .map_err(Failure::invalid_input)?;
        if req.deadline_unix_ms != 0 && now_unix_ms() > req.deadline_unix_ms {
            return Err(Failure::refused(
                ErrorCode::DeadlineExceeded,
                format!(
                    "the deadline ({} ms since epoch) passed before the job started",
                    req.deadline_unix_ms
                ),
            )
            .into());
        }
        if let Some(reason) = ctx.cancels.reason(&req.job_id) {
            return Err(Stop::Canceled { reason, at_step: 0 });
        }
        Ok(())
    }

    /// Reads the request's image (inline, or from an allowed URI) and decodes it; a bad one
    /// fails the job with INVALID_ARGUMENT, an outage re-queues it.
    async fn read_image(&mut self) -> Result<(), Stop> {
        let Some(image) = &self.req.image else {
            return Ok(());
        };
        let storage = &self.ctx.cfg.storage;
        let read = super::image::read(image, &storage.image_uri_prefixes, &self.ctx.cfg.jobs)
            .instrument(phase_span("read_image"))
            .await?;
        let decoded = super::image::decode(read).await?;
        tracing::info!(
            sha256 = decoded.sha256,
            size_bytes = decoded.size_bytes,
            width = decoded.decoded.width(),
            height = decoded.decoded.height(),
            "conditioning image read"
        );
        self.image = Some(decoded);
        Ok(())
    }

    async fn accept(&mut self) -> Result<(), KafkaError> {
        let req = &self.req;
        self.timings.queue_wait = now_unix_ms().saturating_sub(req.submitted_at_unix_ms);
        if req.submitted_at_unix_ms > 0 {
            self.ctx.metrics.phase(
                phase::QUEUE_WAIT,
                Duration::from_millis(self.timings.queue_wait),
            );
        }
        self.emit(Kind::Accepted(Accepted {
            queue_wait_ms: self.timings.queue_wait,
            request_topic: self.record.topic.clone(),
            request_partition: self.record.partition,
        }))
        .await
    }

    /// The job is committed: the same request gets the identical Completed again; another
    /// request under the same job id gets a conflict, never someone else's video.
    async fn answer_from_manifest(
        &mut self,
        key: &Path,
        bytes: &Bytes,
    ) -> Result<&'static str, Stop> {
        let manifest = Manifest::from_bytes(bytes).map_err(|e| {
            Failure::poison(
                ErrorCode::Internal,
                format!("the stored manifest {key} is unreadable ({e}) — delete it to let the job run again"),
            )
        })?;
        let digest = self.spec().digest();
        let same_request = manifest.model == self.req.model
            && (manifest.request_digest.is_empty() || manifest.request_digest == digest);
        if !same_request {
            return Err(Failure::conflict(format!(
                "job id {:?} already names a committed video of another request (model {:?}, prompt {:?}) — submit this request under a new job id",
                self.req.job_id,
                manifest.model,
                truncate_reason(&manifest.prompt, 120),
            ))
            .into());
        }
        self.admitted = validate::request(&self.req).is_ok();
        let completed = manifest.completed(&self.ctx.storage.uri(key), bytes);
        self.emit(Kind::Completed(completed)).await?;
        Ok(outcome::DUPLICATE)
    }

    fn spec(&self) -> JobSpec {
        let (req, d) = (&self.req, self.ctx.model.defaults);
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        let size_from_image = req.image.is_some() && req.width == 0 && req.height == 0;
        let (width, height) = match &self.image {
            Some(image) if size_from_image => {
                size_for_image(image, d.width, d.height, self.ctx.model.size_multiple)
            }
            _ => (or(req.width, d.width), or(req.height, d.height)),
        };
        JobSpec {
            job_id: req.job_id.clone(),
            prompt: req.prompt.clone(),
            negative_prompt: req.negative_prompt.clone(),
            width,
            height,
            num_frames: or(req.num_frames, d.num_frames),
            fps: or(req.fps, d.fps),
            steps: or(req.num_inference_steps, d.steps),
            guidance_scale: req.guidance_scale,
            guidance_scale_2: req.guidance_scale_2,
            shift: req.shift,
            sampler: Sampler::try_from(req.sampler).unwrap_or(Sampler::Unspecified),
            seed: req.seed.unwrap_or_else(|| default_seed(&req.job_id)),
            cache_threshold: req.cache_threshold,
            image_reference: req.image.as_ref().and_then(super::image::reference),
            size_from_image,
            image: self.image.clone(),
        }
    }

    async fn generate_and_store(&mut self) -> Result<&'static str, Stop> {
        let spec = self.spec();
        self.timings.model_load = self.ctx.model_load.as_millis() as u64;
        let resume = self.find_checkpoint(&spec).await?;
        self.announce_started(&spec, resume.as_ref().map_or(0, |c| c.step))
            .await?;
        let generated = self.generate(&spec, resume).await?;
        let step_cache = generated.step_cache.clone();
        let encoded = self.encode(&spec, &generated).await?;
        drop(generated);
        let (video, thumbnail) = self.upload_outputs(encoded).await?;
        let manifest = Manifest {
            step_cache,
            ..self.manifest(&spec, video, thumbnail)
        };
        self.commit(manifest).await
    }

    async fn announce_started(
        &self,
        spec: &JobSpec,
        resumed_from_step: u32,
    ) -> Result<(), KafkaError> {
        let model = &self.ctx.model;
        self.emit(Kind::Started(Started {
            model: model.name.clone(),
            model_revision: model.revision.clone(),
            seed: spec.seed,
            total_steps: spec.steps,
            resumed_from_step,
            width: spec.width,
            height: spec.height,
            num_frames: spec.num_frames,
        }))
        .await
    }

    /// Step 4: generates on the generator thread (from `resume` when given) while Progress goes
    /// out from here, at most one per interval, and due checkpoints are written.
    async fn generate(
        &mut self,
        spec: &JobSpec,
        resume: Option<Checkpoint>,
    ) -> Result<Generated, Stop> {
        let ctx = self.ctx;
        let resumed_from_step = resume.as_ref().map_or(0, |c| c.step);
        let (steps_tx, steps_rx) = tokio::sync::mpsc::unbounded_channel::<StepInfo>();
        let (writer_tx, writer_rx) = tokio::sync::mpsc::unbounded_channel::<Checkpoint>();
        let in_flight = Arc::new(AtomicBool::new(false));
        let hooks = self.step_hooks(
            spec,
            steps_tx,
            writer_tx,
            in_flight.clone(),
            resumed_from_step,
        );
        let writer = self.write_checkpoints(writer_rx, in_flight, resume.as_ref().map(|c| c.step));
        let last_step_at = StepClock::new();
        let progress = self.report_progress(steps_rx, resumed_from_step, &last_step_at);
        let step_timeout = Duration::from_secs(ctx.cfg.jobs.step_timeout_secs);
        let joined = async {
            tokio::join!(
                ctx.generator.generate(spec.clone(), resume, hooks),
                progress,
                writer
            )
        };
        let (generated, last_step, ()) = tokio::select! {
            joined = joined.instrument(phase_span("generate")) => joined,
            stuck = no_step_for(&last_step_at, step_timeout) => {
                return Err(Stop::WorkerSick(format!(
                    "no denoising step finished in {} s (limit jobs.step_timeout_secs = {}): the GPU call is stuck",
                    stuck.as_secs(),
                    step_timeout.as_secs()
                )));
            }
        };
        self.at_step = last_step;
        let generated = match generated {
            Ok(g) => g,
            Err(GenerateError::Stopped { at_step }) => {
                self.at_step = at_step;
                return Err(self.stopped(at_step).await);
            }
            Err(e) => return Err(generate_failure(e).into()),
        };
        self.record_pipeline_timings(&generated);
        Ok(generated)
    }

    /// The hooks the generator thread calls at every step: progress out, stop on shutdown or
    /// cancel, checkpoints when due.
    fn step_hooks(
        &self,
        spec: &JobSpec,
        steps: tokio::sync::mpsc::UnboundedSender<StepInfo>,
        writer: tokio::sync::mpsc::UnboundedSender<Checkpoint>,
        in_flight: Arc<AtomicBool>,
        resumed_from_step: u32,
    ) -> JobHooks<impl FnMut(StepInfo) -> ControlFlow<()> + Send + 'static> {
        let ctx = self.ctx;
        let (cancels, metrics, job_id) = (
            ctx.cancels.clone(),
            ctx.metrics.clone(),
            spec.job_id.clone(),
        );
        let stop_on = self.stop.clone();
        let on_step = move |step: StepInfo| {
            metrics.step_done();
            let _ = steps.send(step);
            if stop_on.is_cancelled() || cancels.reason(&job_id).is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        JobHooks {
            on_step,
            every_steps: ctx.cfg.checkpoint.every_steps,
            every_secs: ctx.cfg.checkpoint.every_secs,
            last_step: resumed_from_step,
            last_at: Instant::now(),
            in_flight,
            shutdown: self.stop.clone(),
            writer,
        }
    }

    /// Publishes Progress for the steps the generator reports, at most one per
    /// `progress_interval_ms`; returns the last step seen.
    async fn report_progress(
        &self,
        mut steps: UnboundedReceiver<StepInfo>,
        resumed_from_step: u32,
        last_step_at: &StepClock,
    ) -> u32 {
        let interval = Duration::from_millis(self.ctx.cfg.jobs.progress_interval_ms);
        let started = Instant::now();
        let mut last_sent: Option<Instant> = None;
        let mut last_step = 0;
        while let Some(s) = steps.recv().await {
            last_step = s.step;
            last_step_at.tick();
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
    }

    /// The generator stopped at a step boundary: a cancel (checkpoints deleted) or an
    /// interruption (the checkpoint stays for the next owner).
    async fn stopped(&self, at_step: u32) -> Stop {
        match self.ctx.cancels.reason(&self.req.job_id) {
            Some(reason) => {
                self.delete_checkpoints().await;
                Stop::Canceled { reason, at_step }
            }
            None => Stop::Interrupted,
        }
    }

    fn record_pipeline_timings(&mut self, generated: &Generated) {
        let t = generated.timings;
        self.timings.text_encode = t.text_encode.as_millis() as u64;
        self.timings.denoise = t.denoise.as_millis() as u64;
        self.timings.vae_decode = t.vae_decode.as_millis() as u64;
        for (name, took) in [
            (phase::TEXT_ENCODE, t.text_encode),
            (phase::DENOISE, t.denoise),
            (phase::VAE_DECODE, t.vae_decode),
        ] {
            self.ctx.metrics.phase(name, took);
        }
        if let Some(cache) = &generated.step_cache {
            self.ctx.metrics.step_cache(cache.forwards, cache.skipped);
        }
    }

    /// Step 5: MP4 and thumbnail through ffmpeg, read back into memory.
    async fn encode(&mut self, spec: &JobSpec, generated: &Generated) -> Result<Encoded, Stop> {
        let ctx = self.ctx;
        let started = Instant::now();
        let encode = media::encode(&ctx.cfg.media, &generated.frames, spec.fps, &spec.job_id)
            .instrument(phase_span("encode"));
        let limit = ctx.cfg.jobs.encode_timeout_secs;
        let files = if limit == 0 {
            encode.await
        } else {
            tokio::time::timeout(Duration::from_secs(limit), encode)
                .await
                .map_err(|_| {
                    Stop::WorkerSick(format!(
                        "ffmpeg did not finish within {limit} s (limit jobs.encode_timeout_secs): the encoder is stuck"
                    ))
                })?
        }
        .map_err(|e| Failure::internal(e.to_string()))?;
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path)
                .map(Bytes::from)
                .map_err(|e| Failure::internal(format!("cannot read the {what}: {e}")))
        };
        let encoded = Encoded {
            video: read(&files.video, "encoded video")?,
            thumbnail: read(&files.thumbnail, "thumbnail")?,
        };
        drop(files);
        let took = started.elapsed();
        self.timings.encode = took.as_millis() as u64;
        ctx.metrics.phase(phase::ENCODE, took);
        Ok(encoded)
    }

    /// Step 6: the video and thumbnail at their deterministic keys.
    async fn upload_outputs(&mut self, encoded: Encoded) -> Result<(StoredFile, StoredFile), Stop> {
        let started = Instant::now();
        let stored = async {
            let video = self.upload("video.mp4", encoded.video, "video/mp4").await?;
            let thumbnail = self
                .upload("thumbnail.jpg", encoded.thumbnail, "image/jpeg")
                .await?;
            Ok::<_, Stop>((video, thumbnail))
        }
        .instrument(phase_span("upload"))
        .await?;
        let took = started.elapsed();
        self.timings.upload = took.as_millis() as u64;
        self.ctx.metrics.phase(phase::UPLOAD, took);
        Ok(stored)
    }

    async fn upload(
        &self,
        name: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<StoredFile, Stop> {
        let key = self.run_dir().join(name);
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

    fn runs_dir(&self) -> Path {
        self.ctx
            .storage
            .job_path(&self.req.job_id, manifest::RUNS_DIR)
    }

    /// Where this run's outputs go (never where another run's are).
    fn run_dir(&self) -> Path {
        self.runs_dir().join(self.run.as_str())
    }

    async fn delete_own_run(&self, run: &str) {
        let storage = &self.ctx.storage;
        if let Ok(keys) = storage.list(&self.runs_dir().join(run)).await {
            for key in keys {
                let _ = storage.delete(&key).await;
            }
        }
    }

    /// Deletes the outputs of runs other than `keep`. Best effort: a leftover costs storage,
    /// never correctness.
    async fn delete_runs_except(&self, keep: &str) {
        let storage = &self.ctx.storage;
        let keep = self.runs_dir().join(keep);
        let keys = match storage.list(&self.runs_dir()).await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the job's runs to tidy them");
                return;
            }
        };
        for key in keys {
            if key.prefix_matches(&keep) {
                continue;
            }
            if let Err(e) = storage.delete(&key).await {
                tracing::warn!(%key, error = %e, "cannot delete another run's output");
            }
        }
    }

    fn manifest(&mut self, spec: &JobSpec, video: StoredFile, thumbnail: StoredFile) -> Manifest {
        let ctx = self.ctx;
        self.timings.total = self.accepted_at.elapsed().as_millis() as u64;
        Manifest {
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
            request_digest: spec.digest(),
            image: spec.image.as_ref().map(|image| ManifestImage {
                uri: match &self.req.image.as_ref().and_then(|i| i.source.as_ref()) {
                    Some(t2v_proto::v1::condition_image::Source::Uri(uri)) => uri.clone(),
                    _ => String::new(),
                },
                sha256: image.sha256.clone(),
                size_bytes: image.size_bytes,
            }),
            labels: self.req.labels.clone().into_iter().collect(),
            video,
            thumbnail,
            timings_ms: self.timings,
            step_cache: None,
            worker_id: ctx.publisher.worker_id.clone(),
            created_at_unix_ms: now_unix_ms(),
        }
    }

    /// Steps 6–7: the manifest, create-only (the commit point), then Completed — traced as one phase
    /// (`commit`). When another worker committed first, its result is announced, not ours.
    async fn commit(&mut self, manifest: Manifest) -> Result<&'static str, Stop> {
        let ctx = self.ctx;
        async {
            let key = ctx.storage.job_path(&manifest.job_id, manifest::FILE_NAME);
            let bytes = Bytes::from(manifest.to_bytes());
            match ctx
                .storage
                .put(&key, bytes.clone(), manifest::CONTENT_TYPE, true)
                .await
            {
                Ok(()) => {}
                Err(StorageError::AlreadyExists(_)) => {
                    // Another run committed first: ours are orphans; its files stay untouched.
                    let own = self.run.clone();
                    let stored = ctx.storage.get(&key).await?.unwrap_or_default();
                    self.delete_own_run(&own).await;
                    return self.answer_from_manifest(&key, &stored).await;
                }
                Err(e) => return Err(e.into()),
            }
            // The checkpoints are of no use any more, nor is a cancel, nor other runs' outputs.
            self.delete_checkpoints().await;
            self.delete_runs_except(&self.run).await;
            ctx.cancels.forget(&manifest.job_id);
            let completed = manifest.completed(&ctx.storage.uri(&key), &bytes);
            self.emit(Kind::Completed(completed)).await?;
            Ok::<_, Stop>(outcome::COMPLETED)
        }
        .instrument(phase_span("commit"))
        .await
    }
}

/// The frame size of a request that leaves both sides to the model but brings an image: the
/// image's aspect ratio at the model's default area, in multiples of the model's
/// `size_multiple`, as the reference image-to-video pipelines choose it
/// (t2v_pipeline::image::size_for_image). `t2v-worker generate --image` sizes its video with it
/// too.
pub(crate) fn size_for_image(
    image: &JobImage,
    default_width: u32,
    default_height: u32,
    size_multiple: u32,
) -> (u32, u32) {
    let max_area = i64::from(default_width) * i64::from(default_height);
    let multiple = i64::from(size_multiple.max(validate::SIDE_MULTIPLE));
    let (width, height) = t2v_pipeline::image::size_for_image(&image.decoded, max_area, multiple);
    let side = |v: i64| (v as u32).clamp(validate::MIN_SIDE, validate::MAX_SIDE);
    (side(width), side(height))
}
