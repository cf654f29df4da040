//! `t2v-worker run`: the consumer loop (DESIGN.md "Delivery semantics", STYLE items 7–9).
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
use crate::kafka::control;
use crate::doctor::{self, Finding};
use crate::kafka::events::{client_config, Publisher, SourceRecord};
use crate::generate::{GenerateError, GeneratorThread, SyntheticGenerator, VideoGenerator};
use crate::http::{self, Health};
use crate::job::{self, Disposition, JobContext};
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
    requests_topic: String,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(topic) = statistics.topics.get(&self.requests_topic) {
            let lag = topic
                .partitions
                .iter()
                .filter(|(p, _)| **p >= 0)
                .map(|(_, p)| p.consumer_lag.max(0))
                .sum();
            self.metrics.set_consumer_lag(lag);
        }
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
            Ok(Box::new(SyntheticGenerator::new(
                &model.name,
                Duration::from_millis(model.synthetic_step_ms),
            )))
        }
        Backend::Wan => {
            let options = crate::generate::wan::load_options(model.device, model.dtype, model.memory_policy)?;
            tracing::info!(dir = %model.dir, ?options, "loading the Wan pipeline");
            let generator = crate::generate::wan::WanGenerator::load(
                std::path::Path::new(&model.dir),
                &model.name,
                options,
            )?
            .with_memory_budget(model.memory_budget_gib);
            Ok(Box::new(generator))
        }
    }
}

fn source_record<M: Message>(m: &M) -> SourceRecord {
    SourceRecord {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
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

/// The running job: its task and the record's topic, partition and offset.
type Running = (tokio::task::JoinHandle<Disposition>, String, i32, i64);

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
) -> Running {
    let (topic, partition, offset) = (record.topic.clone(), record.partition, record.offset);
    let stop = shutdown.child_token();
    slot.set(Some((topic.clone(), partition, stop.clone())));
    let ctx = ctx.clone();
    let handle = tokio::spawn(async move { job::handle(&ctx, record, stop).await });
    (handle, topic, partition, offset)
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
    let (addr, http_task) = http::serve(&cfg.http, metrics.clone(), health.clone())
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{} — is the port taken? set [http] port",
                cfg.http.address, cfg.http.port
            )
        })?;
    tracing::info!(%addr, "HTTP server listening (/healthz, /readyz, /metrics)");
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
    }

    // 2. Host checks first (doctor's shm, model and GPU lines): fail fast on what never heals.
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
    {
        // The storage probe only informs (an outage is retried per job), so it does not hold
        // up the start.
        let cfg = cfg.clone();
        tokio::spawn(async move { log_findings(&doctor::storage_probe(&cfg).await) });
    }

    // 3. The generator loads on its own thread; meanwhile connect to storage and Kafka.
    let (generator, loaded) = GeneratorThread::start(build_generator(&cfg));
    let worker_id = worker_id(&cfg);
    let storage = Storage::from_url(&cfg.storage.url, &cfg.jobs)?;
    let publisher = Publisher::new(&cfg.kafka, &cfg.jobs, &worker_id)
        .context("cannot create the Kafka producer")?;
    let control_stop = CancellationToken::new();
    let (cancels, mut caught_up, control_task) =
        control::start(&cfg.kafka, control_stop.clone())
            .context("cannot create the control-topic consumer")?;
    let (model, model_load) = tokio::select! {
        loaded = loaded => loaded.context("the generator thread died while loading")??,
        _ = stop.cancelled() => return Ok(()),
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
            if r.is_err() { tracing::warn!("control topic not read to its end within 30 s; continuing"); }
        }
        _ = stop.cancelled() => return Ok(()),
    }

    // 4. Join the group.
    let holding = Arc::new(AtomicBool::new(false));
    let rebalances = Arc::new(AtomicU64::new(0));
    let running_partition = Arc::new(RunningPartition::default());
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
            holding: holding.clone(),
            rebalances: rebalances.clone(),
            running: running_partition.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            requests_topic: k.requests_topic.clone(),
        })
        .context("cannot create the Kafka consumer")?;
    consumer
        .subscribe(&[&k.requests_topic])
        .context("cannot subscribe to the requests topic")?;
    tracing::info!(
        group = k.group_id,
        topic = k.requests_topic,
        worker_id,
        "consuming"
    );

    let ctx = Arc::new(JobContext {
        cfg: cfg.clone(),
        publisher: publisher.clone(),
        storage,
        generator,
        model,
        model_load,
        cancels,
        metrics: metrics.clone(),
    });
    // The running job may first finish its step, then write its checkpoint.
    let drain =
        Duration::from_secs(cfg.shutdown.drain_deadline_secs + cfg.checkpoint.max_write_secs);
    let mut running: Option<Running> = None;
    let mut held: Option<Held> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;

    // 5. The loop: one job at a time, polling all the while.
    loop {
        tokio::select! {
            _ = stop.cancelled(), if drain_until.is_none() => {
                tracing::info!(job_running = running.is_some(), "shutdown requested: taking no more work");
                if running.is_none() {
                    break;
                }
                drain_until = Some(tokio::time::Instant::now() + drain);
            }
            _ = tokio::time::sleep_until(drain_until.unwrap_or_else(tokio::time::Instant::now)), if drain_until.is_some() => {
                tracing::error!(deadline_s = drain.as_secs(), "drain deadline passed: leaving without the running job (its offset is not stored)");
                break;
            }
            finished = async { (&mut running.as_mut().expect("guarded").0).await }, if running.is_some() => {
                let (_, topic, partition, offset) = running.take().expect("guarded");
                running_partition.set(None);
                let disposition = finished.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "the job task failed; the record will be read again");
                    Disposition::Redeliver
                });
                match disposition {
                    Disposition::Done => {
                        // rd_kafka_offset_store stores `offset + 1`, the next record to read.
                        if let Err(e) = consumer.store_offset(&topic, partition, offset) {
                            tracing::warn!(error = %e, partition, offset, "cannot store the offset (partition revoked?) — its next owner will see the manifest");
                        } else if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
                            tracing::debug!(error = %e, "commit request not accepted");
                        }
                    }
                    Disposition::Interrupted => {}
                    Disposition::Redeliver => {
                        if let Some(next) = held.take() {
                            give_back(&consumer, &next.record);
                        }
                        if let Err(e) = consumer.seek(&topic, partition, Offset::Offset(offset), Duration::from_secs(5)) {
                            tracing::warn!(error = %e, "cannot seek back to the record");
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                if stop.is_cancelled() {
                    break;
                }
                if let Some(next) = held.take() {
                    if next.rebalances == rebalances.load(Ordering::SeqCst) {
                        running = Some(start_job(&ctx, next.record, &stop, &running_partition));
                    } else {
                        tracing::info!(partition = next.record.partition, offset = next.record.offset, "a rebalance happened since the next record was fetched: reading it again");
                        give_back(&consumer, &next.record);
                    }
                }
                if holding.swap(false, Ordering::SeqCst) {
                    resume_all(&consumer);
                }
            }
            message = consumer.recv() => match message {
                Err(e) => tracing::warn!(error = %e, "Kafka consumer error"),
                Ok(m) => {
                    if stop.is_cancelled() || held.is_some() {
                        // Fetched before its partition was paused: read it again later.
                        let list = one_partition(m.topic(), m.partition());
                        let _ = consumer.pause(&list);
                        if let Err(e) = consumer.seek(m.topic(), m.partition(), Offset::Offset(m.offset()), Duration::from_secs(5)) {
                            tracing::warn!(error = %e, "cannot seek back to a record fetched during a job");
                        }
                        continue;
                    }
                    let record = source_record(&m);
                    drop(m);
                    if running.is_some() {
                        // The next job: hold it, and fetch nothing more until it starts.
                        holding.store(true, Ordering::SeqCst);
                        held = Some(Held { record, rebalances: rebalances.load(Ordering::SeqCst) });
                        pause_all(&consumer);
                        continue;
                    }
                    running = Some(start_job(&ctx, record, &stop, &running_partition));
                }
            },
        }
    }

    // 6. Leave: commit what is done, close the consumer (leaves the group), stop the rest.
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "final commit: nothing to commit");
    }
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .context("closing the consumer")?;
    control_stop.cancel();
    let _ = control_task.await;
    publisher.flush(Duration::from_secs(5));
    http_task.abort();
    tracing::info!("left the group; bye");
    Ok(())
}
