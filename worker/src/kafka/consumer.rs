//! `t2v-worker run`: the consumer loop (docs/design.md "Delivery semantics").
//!
//! One job at a time, and the loop keeps polling all the while, so rebalances are served and the
//! group never evicts the worker. The first record that arrives during a job is held as the next
//! job and every assigned partition is paused (partitions assigned meanwhile are paused in the
//! rebalance callback); when the job ends the held record starts at once and the partitions are
//! resumed. Holding one record instead of resuming on completion matters: librdkafka notices a
//! resume only when its broker thread next wakes (up to 1 s later, `rd_kafka_max_block_ms`), which
//! was most of the gap between consecutive jobs. A held record is given back (seek) if a rebalance
//! happened since it was fetched or the finished job must be read again.
//!
//! The worker reads every priority lane of its model (`kafka.requests_topics`, highest first).
//! Before a record starts, [`lanes`] checks the worker's own partitions: when a higher lane (or
//! one that waited past `kafka.lane_aging_secs`) has a backlog, the record is given back and only
//! that lane is fetched until its record arrives.
//!
//! Before anything loads, the host checks of `t2v-worker doctor` (/dev/shm, model directory, GPU)
//! run and a failure stops the start; the storage probe runs alongside and only logs.
//!
//! When a rebalance takes away the partition of the running job (cooperative-sticky moves
//! partitions to workers that join, e.g. on a scale-up), the job stops at the next step with a
//! checkpoint and no event, exactly as on shutdown: the new owner resumes it, and two workers never
//! run one job side by side.
//!
//! A record's offset is stored only after [`job::handle`] says its terminal event was
//! acknowledged; on shutdown the running job stops at the next step, its offset (and the held
//! record's) is not stored, and the consumer leaves the group within the drain deadline.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::{Backend, WorkerConfig};
use crate::doctor::{self, Finding};
use crate::generate::{GenerateError, GeneratorThread, SyntheticGenerator, VideoGenerator};
use crate::http::{self, Health};
use crate::job::{self, Disposition, JobContext};
use crate::kafka::client_config;
use crate::kafka::control;
use crate::kafka::events::{Publisher, SourceRecord};
use crate::kafka::lanes::{self, Choice, Lanes};
use crate::metrics::{phase, Metrics};
use crate::storage::Storage;

/// Rebalance, commit and statistics callbacks.
struct WorkerContext {
    /// Set while a record is held: partitions assigned now are paused too.
    holding: Arc<AtomicBool>,
    /// Counts rebalances, so a held record fetched before one is given back.
    rebalances: Arc<AtomicU64>,
    running: Arc<RunningPartition>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    requests_topics: Vec<String>,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        let lag = self
            .requests_topics
            .iter()
            .filter_map(|t| statistics.topics.get(t))
            .flat_map(|topic| topic.partitions.iter())
            .filter(|(p, _)| **p >= 0)
            .map(|(_, p)| p.consumer_lag.max(0))
            .sum();
        self.metrics.set_consumer_lag(lag);
    }
}

impl ConsumerContext for WorkerContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::SeqCst);
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = ?partitions.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), "partitions assigned");
                if self.holding.load(Ordering::SeqCst) {
                    // The next job is already held: new partitions wait until it starts.
                    if let Err(e) = consumer.pause(partitions) {
                        tracing::warn!(error = %e, "cannot pause newly assigned partitions");
                    }
                } else if let Err(e) = consumer.resume(partitions) {
                    // librdkafka keeps a partition's old pause flag when it is assigned back to the
                    // same member (e.g. after a session timeout during a job): clear it, or the
                    // partition is never fetched again.
                    tracing::warn!(error = %e, "cannot resume newly assigned partitions");
                }
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = ?partitions.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), "partitions revoked");
                self.running.revoked(partitions);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
        let assigned = consumer
            .assignment()
            .map(|a| a.count() > 0)
            .unwrap_or(false);
        self.health
            .partitions_assigned
            .store(assigned, Ordering::Relaxed);
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(offsets = ?offsets.to_topic_map(), "offsets committed"),
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
    }
}

/// The name this worker gives itself in events and attempt markers.
pub fn worker_id(cfg: &WorkerConfig) -> String {
    if !cfg.kafka.instance_id.is_empty() {
        return cfg.kafka.instance_id.clone();
    }
    let host = std::env::var("T2V_POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()))
        .unwrap_or_else(|_| "worker".into());
    format!("{host}:{}", std::process::id())
}

/// Builds the configured generator (on the generator thread).
pub fn build_generator(
    cfg: &WorkerConfig,
) -> impl FnOnce() -> Result<Box<dyn VideoGenerator>, GenerateError> + Send + 'static {
    let model = cfg.model.clone();
    move || match model.backend {
        Backend::Synthetic => {
            tracing::warn!("model.backend = synthetic: TEST/DEMO backend, videos are gradients, not model output");
            let synthetic = Box::new(
                SyntheticGenerator::new(
                    &model.name,
                    Duration::from_millis(model.synthetic_step_ms),
                )
                .with_kind(model.synthetic_kind),
            );
            if model.synthetic_hang_marker.is_empty() && model.synthetic_fail_after_jobs == 0 {
                return Ok(synthetic);
            }
            tracing::warn!("fault injection on: some synthetic jobs hang or fail on purpose");
            Ok(Box::new(crate::generate::faults::FaultInjecting::new(
                synthetic,
                &model.synthetic_hang_marker,
                model.synthetic_fail_after_jobs,
            )))
        }
        // The variant's LoRAs and preset, device, dtype, memory policy, budget and GPUs.
        Backend::Wan => Ok(Box::new(crate::generate::wan::WanGenerator::load_model(
            &model,
        )?)),
    }
}

fn source_record<M: Message>(m: &M) -> SourceRecord {
    SourceRecord {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers: m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The running job: its task and where its record came from.
struct RunningJob {
    task: tokio::task::JoinHandle<Disposition>,
    topic: String,
    partition: i32,
    offset: i64,
}

/// The running job's partition and its stop token, for the rebalance callback: a job whose
/// partition moves to another worker stops at the next step with a checkpoint, so two workers
/// never run it side by side (the new owner resumes it).
#[derive(Default)]
struct RunningPartition(std::sync::Mutex<Option<(String, i32, CancellationToken)>>);

impl RunningPartition {
    fn set(&self, value: Option<(String, i32, CancellationToken)>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
    }

    /// Stops the running job if `revoked` holds its partition.
    fn revoked(&self, revoked: &TopicPartitionList) {
        let guard = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((topic, partition, stop)) = guard.as_ref() {
            let moved = revoked
                .elements()
                .iter()
                .any(|e| e.topic() == topic && e.partition() == *partition);
            if moved && !stop.is_cancelled() {
                tracing::info!(
                    partition,
                    "the running job's partition was revoked: stopping it at the next step with a checkpoint; its new owner resumes it"
                );
                stop.cancel();
            }
        }
    }
}

/// A record fetched during a job, to run next.
struct Held {
    record: SourceRecord,
    /// The rebalance count when it was fetched.
    rebalances: u64,
}

fn start_job(
    ctx: &Arc<JobContext>,
    record: SourceRecord,
    shutdown: &CancellationToken,
    slot: &RunningPartition,
) -> RunningJob {
    let (topic, partition, offset) = (record.topic.clone(), record.partition, record.offset);
    let stop = shutdown.child_token();
    slot.set(Some((topic.clone(), partition, stop.clone())));
    let ctx = ctx.clone();
    let task = tokio::spawn(async move { job::handle(&ctx, record, stop).await });
    RunningJob {
        task,
        topic,
        partition,
        offset,
    }
}

fn pause_all<C: ConsumerContext>(consumer: &StreamConsumer<C>) {
    match consumer.assignment() {
        Ok(assigned) => {
            if let Err(e) = consumer.pause(&assigned) {
                tracing::warn!(error = %e, "cannot pause partitions");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the assignment"),
    }
}

fn resume_all<C: ConsumerContext>(consumer: &StreamConsumer<C>) {
    match consumer.assignment() {
        Ok(assigned) => {
            if let Err(e) = consumer.resume(&assigned) {
                tracing::warn!(error = %e, "cannot resume partitions");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the assignment"),
    }
}

/// Makes `record` the next one its partition delivers (a revoked partition needs nothing: its
/// next owner starts from the committed offset).
fn give_back<C: ConsumerContext>(consumer: &StreamConsumer<C>, record: &SourceRecord) {
    let r = record;
    if let Err(e) = consumer.seek(
        &r.topic,
        r.partition,
        Offset::Offset(r.offset),
        Duration::from_secs(5),
    ) {
        tracing::debug!(error = %e, partition = r.partition, offset = r.offset, "cannot seek back to the held record (partition revoked?)");
    }
}

fn one_partition(topic: &str, partition: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    list
}

/// Doctor findings in the worker's log: failures as errors, warnings as warnings.
fn log_findings(findings: &[Finding]) {
    for f in findings {
        match (f.ok, f.warning) {
            (false, _) => tracing::error!(check = f.check, "{}", f.message),
            (true, true) => tracing::warn!(check = f.check, "{}", f.message),
            (true, false) => tracing::info!(check = f.check, "{}", f.message),
        }
    }
}

/// Runs the worker until `shutdown` resolves, then drains within `shutdown.drain_deadline_secs`
/// (to reach a step boundary) + `checkpoint.max_write_secs` (to store the checkpoint). Host
/// checks (doctor's shm, model and GPU findings) run first and stop the start on a failure.
pub async fn run(
    cfg: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let stop = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());

    // 1. HTTP first: /healthz answers while the weights load.
    let http_task = serve_http(&cfg, &metrics, &health).await?;
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
    }
    // 2. Host checks: fail fast on what never heals.
    startup_checks(&cfg).await?;
    // 3. The generator loads on its own thread; meanwhile connect to storage and Kafka.
    let Some(started) = start_services(&cfg, &stop, &metrics, &health).await? else {
        return Ok(());
    };
    // 4. Join the group.
    let shared = LoopShared::default();
    let consumer = subscribe(&cfg, &shared, &health, &metrics)?;
    // 5. The loop: one job at a time, polling all the while.
    let publisher = started.ctx.publisher.clone();
    ConsumerLoop::new(consumer, started.ctx, shared, stop)
        .run()
        .await?;
    // 6. Stop the rest.
    started.control_stop.cancel();
    let _ = started.control_task.await;
    publisher.flush(Duration::from_secs(5));
    http_task.abort();
    tracing::info!("left the group; bye");
    Ok(())
}

async fn serve_http(
    cfg: &WorkerConfig,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (addr, http_task) = http::serve(&cfg.http, metrics.clone(), health.clone())
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{} — is the port taken? set [http] port",
                cfg.http.address, cfg.http.port
            )
        })?;
    tracing::info!(%addr, "HTTP server listening (/healthz, /readyz, /metrics)");
    Ok(http_task)
}

/// Doctor's shm, model and GPU lines; any failure stops the start. The storage probe only
/// informs (an outage is retried per job), so it runs alongside and does not hold up the start.
async fn startup_checks(cfg: &Arc<WorkerConfig>) -> anyhow::Result<()> {
    let startup_cfg = cfg.clone();
    let findings = tokio::task::spawn_blocking(move || doctor::startup(&startup_cfg))
        .await
        .context("the start-up checks crashed")?;
    let failed: Vec<String> = findings
        .iter()
        .filter(|f| !f.ok)
        .map(ToString::to_string)
        .collect();
    log_findings(&findings);
    if !failed.is_empty() {
        anyhow::bail!(
            "start-up checks failed:\n{}\n(`t2v-worker doctor` runs every check)",
            failed.join("\n")
        );
    }
    let cfg = cfg.clone();
    tokio::spawn(async move { log_findings(&doctor::storage_probe(&cfg).await) });
    Ok(())
}

/// A missing topic is a deployment error no retry heals: one line naming it, and no start. (When
/// the brokers cannot be reached, the start goes on: an outage is waited out, not fatal.)
async fn require_topics(cfg: &Arc<WorkerConfig>) -> anyhow::Result<()> {
    let probe_cfg = cfg.clone();
    let missing = tokio::task::spawn_blocking(move || doctor::missing_topics(&probe_cfg))
        .await
        .context("the topic check crashed")?;
    if let Some(first) = missing.first() {
        anyhow::bail!("{first}");
    }
    Ok(())
}

/// What the loop needs once the model is loaded, and the control reader to stop at the end.
struct Started {
    ctx: Arc<JobContext>,
    control_stop: CancellationToken,
    control_task: tokio::task::JoinHandle<()>,
}

/// Loads the generator while storage, the producer and the control reader connect; waits for
/// the control topic to be read to its end (30 s at most). `None`: shutdown came first.
async fn start_services(
    cfg: &Arc<WorkerConfig>,
    stop: &CancellationToken,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
) -> anyhow::Result<Option<Started>> {
    require_topics(cfg).await?;
    let (generator, loaded) = GeneratorThread::start(build_generator(cfg));
    let worker_id = worker_id(cfg);
    let storage = Storage::from_url(&cfg.storage.url, &cfg.jobs)?;
    let publisher = Publisher::new(&cfg.kafka, &cfg.jobs, &worker_id)
        .context("cannot create the Kafka producer")?;
    let control_stop = CancellationToken::new();
    let (cancels, mut caught_up, control_task) =
        control::start(&cfg.kafka, control_stop.clone())
            .context("cannot create the control-topic consumer")?;
    let (model, model_load) = tokio::select! {
        loaded = loaded => loaded.context("the generator thread died while loading")??,
        _ = stop.cancelled() => return Ok(None),
    };
    metrics.phase(phase::MODEL_LOAD, model_load);
    health.model_loaded.store(true, Ordering::Relaxed);
    tracing::info!(
        model = model.name,
        revision = model.revision,
        load_s = model_load.as_secs_f64(),
        "model loaded"
    );
    tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(30), caught_up.wait_for(|c| *c)) => {
            if r.is_err() { tracing::warn!("control topic not read to its end within 30 s; taking work, not ready until it is"); }
        }
        _ = stop.cancelled() => return Ok(None),
    }
    {
        let health = health.clone();
        tokio::spawn(async move {
            if caught_up.wait_for(|c| *c).await.is_ok() {
                health.cancels_caught_up.store(true, Ordering::Relaxed);
            }
        });
    }
    let ctx = Arc::new(JobContext {
        cfg: cfg.clone(),
        publisher,
        storage,
        generator,
        model,
        model_load,
        cancels,
        metrics: metrics.clone(),
        health: health.clone(),
        internal_failures_in_a_row: Default::default(),
        running_marker: Default::default(),
    });
    Ok(Some(Started {
        ctx,
        control_stop,
        control_task,
    }))
}

/// State the rebalance callback shares with the loop.
#[derive(Default, Clone)]
struct LoopShared {
    /// Set while a record is held: partitions assigned now are paused too.
    holding: Arc<AtomicBool>,
    /// Counts rebalances, so a held record fetched before one is given back.
    rebalances: Arc<AtomicU64>,
    running_partition: Arc<RunningPartition>,
}

/// The group consumer: offsets stored by hand after the terminal event, committed in the
/// background; cooperative-sticky; static membership when `instance_id` is set.
fn subscribe(
    cfg: &WorkerConfig,
    shared: &LoopShared,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<StreamConsumer<WorkerContext>> {
    let k = &cfg.kafka;
    let mut consumer_cfg = client_config(k, "t2v-worker");
    consumer_cfg
        .set("group.id", &k.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", k.session_timeout_ms.to_string())
        .set("max.poll.interval.ms", k.max_poll_interval_ms.to_string())
        .set(
            "statistics.interval.ms",
            k.statistics_interval_ms.to_string(),
        )
        .set("enable.partition.eof", "false");
    if !k.instance_id.is_empty() {
        consumer_cfg.set("group.instance.id", &k.instance_id);
    }
    for (key, value) in &k.properties {
        consumer_cfg.set(key, value);
    }
    let consumer: StreamConsumer<WorkerContext> = consumer_cfg
        .create_with_context(WorkerContext {
            holding: shared.holding.clone(),
            rebalances: shared.rebalances.clone(),
            running: shared.running_partition.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            requests_topics: k.requests_topics.clone(),
        })
        .context("cannot create the Kafka consumer")?;
    let topics: Vec<&str> = k.requests_topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .context("cannot subscribe to the request topics")?;
    tracing::info!(
        group = k.group_id,
        topics = ?k.requests_topics,
        worker_id = worker_id(cfg),
        "consuming"
    );
    Ok(consumer)
}

/// How long a worker that gave a record back for a higher lane waits for that lane's record.
const FOCUS_WAIT: Duration = Duration::from_secs(3);

/// Whether the loop goes on after an event.
enum Next {
    Continue,
    Leave,
}

/// The consumer loop's state; one method per event it reacts to.
struct ConsumerLoop {
    consumer: StreamConsumer<WorkerContext>,
    ctx: Arc<JobContext>,
    shared: LoopShared,
    stop: CancellationToken,
    running: Option<RunningJob>,
    held: Option<Held>,
    lanes: Lanes,
    /// While idle after giving a record back for a higher lane: fetch only that lane, until then.
    focus: Option<(usize, tokio::time::Instant)>,
    /// A focus that found nothing: start the next record without looking at the lanes again.
    start_next: bool,
    /// The running job may first finish its step, then write its checkpoint.
    drain: Duration,
    drain_until: Option<tokio::time::Instant>,
}

impl ConsumerLoop {
    fn new(
        consumer: StreamConsumer<WorkerContext>,
        ctx: Arc<JobContext>,
        shared: LoopShared,
        stop: CancellationToken,
    ) -> Self {
        let c = &ctx.cfg;
        let drain =
            Duration::from_secs(c.shutdown.drain_deadline_secs + c.checkpoint.max_write_secs);
        let lanes = Lanes::new(
            c.kafka.requests_topics.clone(),
            Duration::from_secs(c.kafka.lane_aging_secs),
        );
        Self {
            consumer,
            ctx,
            shared,
            stop,
            running: None,
            held: None,
            lanes,
            focus: None,
            start_next: false,
            drain,
            drain_until: None,
        }
    }

    /// Polls until shutdown (and the drain) ends it, then leaves the group.
    async fn run(mut self) -> anyhow::Result<()> {
        loop {
            let next = tokio::select! {
                _ = self.stop.cancelled(), if self.drain_until.is_none() => self.on_shutdown(),
                _ = tokio::time::sleep_until(self.drain_until.unwrap_or_else(tokio::time::Instant::now)), if self.drain_until.is_some() => {
                    tracing::error!(deadline_s = self.drain.as_secs(), "drain deadline passed: leaving without the running job (its offset is not stored)");
                    // A step slower than the deadline is not a crash: the attempt does not count.
                    self.ctx.give_back_attempt().await;
                    Next::Leave
                }
                _ = tokio::time::sleep_until(self.focus.map_or_else(tokio::time::Instant::now, |f| f.1)), if self.focus.is_some() => {
                    self.on_focus_expired();
                    Next::Continue
                }
                finished = async { (&mut self.running.as_mut().expect("guarded").task).await }, if self.running.is_some() => {
                    let disposition = finished.unwrap_or_else(|e| {
                        tracing::error!(error = %e, "the job task failed; the record will be read again");
                        Disposition::Redeliver
                    });
                    self.on_job_finished(disposition).await
                }
                message = self.consumer.recv() => match message {
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka consumer error");
                        Next::Continue
                    }
                    Ok(m) => {
                        if self.stop.is_cancelled() || self.held.is_some() {
                            self.put_back_fetched(m.topic(), m.partition(), m.offset());
                        } else {
                            let record = source_record(&m);
                            drop(m);
                            self.on_record(record);
                        }
                        Next::Continue
                    }
                },
            };
            if let Next::Leave = next {
                break;
            }
        }
        let sick = self.ctx.health.sick_reason();
        self.leave().await?;
        match sick {
            Some(reason) => anyhow::bail!("left the group because this worker is sick: {reason}"),
            None => Ok(()),
        }
    }

    fn on_shutdown(&mut self) -> Next {
        tracing::info!(
            job_running = self.running.is_some(),
            "shutdown requested: taking no more work"
        );
        if self.running.is_none() {
            return Next::Leave;
        }
        self.drain_until = Some(tokio::time::Instant::now() + self.drain);
        Next::Continue
    }

    /// Settles the finished job's offset, then starts the held record (if still ours) and
    /// resumes fetching.
    async fn on_job_finished(&mut self, disposition: Disposition) -> Next {
        let job = self.running.take().expect("a job was running");
        self.shared.running_partition.set(None);
        match disposition {
            Disposition::Done => self.store_offset(&job),
            Disposition::Interrupted => {}
            Disposition::Redeliver => self.read_again(&job).await,
        }
        if self.stop.is_cancelled() {
            return Next::Leave;
        }
        if self.ctx.health.sick_reason().is_some() {
            // No more work here: the held record goes back for the next owner of its partition.
            if let Some(next) = self.held.take() {
                give_back(&self.consumer, &next.record);
            }
            return Next::Leave;
        }
        if let Some(next) = self.held.take() {
            if next.rebalances == self.shared.rebalances.load(Ordering::SeqCst) {
                if let Choice::Prefer(lane) = self.choose(&next.record) {
                    give_back(&self.consumer, &next.record);
                    self.shared.holding.store(false, Ordering::SeqCst);
                    self.focus_on(lane);
                    return Next::Continue;
                }
                self.start(next.record);
            } else {
                tracing::info!(
                    partition = next.record.partition,
                    offset = next.record.offset,
                    "a rebalance happened since the next record was fetched: reading it again"
                );
                give_back(&self.consumer, &next.record);
            }
        }
        if self.shared.holding.swap(false, Ordering::SeqCst) {
            resume_all(&self.consumer);
        }
        Next::Continue
    }

    /// The job's terminal event is acknowledged: its record is done.
    fn store_offset(&self, job: &RunningJob) {
        // rd_kafka_offset_store stores `offset + 1`, the next record to read.
        if let Err(e) = self
            .consumer
            .store_offset(&job.topic, job.partition, job.offset)
        {
            tracing::warn!(error = %e, partition = job.partition, offset = job.offset, "cannot store the offset (partition revoked?) — its next owner will see the manifest");
        } else if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Async) {
            tracing::debug!(error = %e, "commit request not accepted");
        }
    }

    /// The job must run again: its record (and the held one) are read again after a pause.
    async fn read_again(&mut self, job: &RunningJob) {
        if let Some(next) = self.held.take() {
            give_back(&self.consumer, &next.record);
        }
        if let Err(e) = self.consumer.seek(
            &job.topic,
            job.partition,
            Offset::Offset(job.offset),
            Duration::from_secs(5),
        ) {
            tracing::warn!(error = %e, "cannot seek back to the record");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    /// A record fetched before its partition was paused (or after shutdown): read it again later.
    fn put_back_fetched(&self, topic: &str, partition: i32, offset: i64) {
        let _ = self.consumer.pause(&one_partition(topic, partition));
        if let Err(e) = self.consumer.seek(
            topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
            tracing::warn!(error = %e, "cannot seek back to a record fetched during a job");
        }
    }

    /// Starts `record` now (unless a higher lane waits), or holds it as the next job (fetching
    /// nothing more until it starts).
    fn on_record(&mut self, record: SourceRecord) {
        if self.running.is_none() {
            let lane = self.lanes.rank(&record.topic);
            match self.focus {
                Some((focus, _)) if focus != lane => {
                    // Fetched before the other lanes were paused: later.
                    self.put_back_fetched(&record.topic, record.partition, record.offset);
                }
                Some(_) => self.start(record),
                None => match self.choose(&record) {
                    Choice::Start => self.start(record),
                    Choice::Prefer(lane) => {
                        give_back(&self.consumer, &record);
                        self.focus_on(lane);
                    }
                },
            }
            return;
        }
        self.shared.holding.store(true, Ordering::SeqCst);
        self.held = Some(Held {
            record,
            rebalances: self.shared.rebalances.load(Ordering::SeqCst),
        });
        pause_all(&self.consumer);
    }

    /// Whether `record` may start now or a higher (or long-waiting) lane goes first.
    fn choose(&mut self, record: &SourceRecord) -> Choice {
        if self.lanes.is_single() || std::mem::take(&mut self.start_next) {
            return Choice::Start;
        }
        let backlog = tokio::task::block_in_place(|| lanes::backlogs(&self.consumer, &self.lanes));
        let choice = self.lanes.choose(
            self.lanes.rank(&record.topic),
            &backlog,
            std::time::Instant::now(),
        );
        if let Choice::Prefer(lane) = choice {
            tracing::info!(
                topic = record.topic,
                partition = record.partition,
                offset = record.offset,
                first = self.lanes.topics()[lane],
                "another lane goes first: the record is read again after it"
            );
        }
        choice
    }

    /// Fetches only from `lane` until a record of it arrives (or [`FOCUS_WAIT`] passes).
    fn focus_on(&mut self, lane: usize) {
        if let Ok(assigned) = self.consumer.assignment() {
            let (mut keep, mut rest) = (TopicPartitionList::new(), TopicPartitionList::new());
            for e in assigned.elements() {
                let list = if self.lanes.rank(e.topic()) == lane {
                    &mut keep
                } else {
                    &mut rest
                };
                list.add_partition(e.topic(), e.partition());
            }
            if let Err(e) = self
                .consumer
                .pause(&rest)
                .and_then(|()| self.consumer.resume(&keep))
            {
                tracing::warn!(error = %e, "cannot pause the other lanes");
            }
        }
        self.focus = Some((lane, tokio::time::Instant::now() + FOCUS_WAIT));
    }

    /// The preferred lane delivered nothing (its backlog moved to another worker): fetch from
    /// every lane again and start whatever comes next.
    fn on_focus_expired(&mut self) {
        tracing::info!("the preferred lane delivered nothing: reading every lane again");
        self.focus = None;
        self.start_next = true;
        resume_all(&self.consumer);
    }

    fn start(&mut self, record: SourceRecord) {
        self.lanes.started(self.lanes.rank(&record.topic));
        if self.focus.take().is_some() {
            resume_all(&self.consumer);
        }
        self.running = Some(start_job(
            &self.ctx,
            record,
            &self.stop,
            &self.shared.running_partition,
        ));
    }

    /// Commits what is done and closes the consumer, which leaves the group.
    async fn leave(self) -> anyhow::Result<()> {
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit: nothing to commit");
        }
        let consumer = self.consumer;
        tokio::task::spawn_blocking(move || drop(consumer))
            .await
            .context("closing the consumer")
    }
}
