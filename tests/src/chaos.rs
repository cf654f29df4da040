//! Fault injection (docs/design.md "Delivery semantics"): N `t2v-worker run` processes (synthetic backend, a sleep per step,
//! a checkpoint every few steps) take M jobs on fresh topics and a fresh prefix while faults
//! chosen by a seeded RNG hit them — SIGKILL or SIGTERM of a busy worker (a replacement starts),
//! SIGKILL and restart of the Kafka broker, stop and start of the S3 server — with garbage bytes,
//! invalid requests and duplicate submissions mixed into the requests topic.
//!
//! [`run`] then checks what the fleet promises and returns a [`ChaosReport`]: every valid job has
//! a manifest and ≥ 1 Completed, all of its Completed identical; no output object of a job that
//! never completed; every poison message in the DLQ and nowhere else; no job lost; steps redone
//! per interruption ≤ the checkpoint interval while the checkpoint store was up.
//!
//! Steps redone are measured from the events, per run: a run is one worker's work on a job, from
//! its Started to its terminal event, or to its last event when the worker was killed, stopped
//! or lost the partition. A Started that follows runs which ended (no later event of theirs) is
//! an interruption: the highest step those runs reported (Progress every step) minus the new
//! run's `resumed_from_step` — a lower bound when a killed worker's last Progress never reached
//! the broker. A Started while an earlier run still reports is an overlap (the partition moved
//! while its old owner ran on), counted, not an interruption. The bound holds only when
//! checkpoints could be stored: an interruption whose earlier run overlaps an S3 outage of the
//! schedule is reported as redone during an outage, not as a violation.
//!
//! The broker and the S3 server are the shared stack's: a [`StackGuard`] starts them again when
//! dropped, so a failing run still leaves the stack up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use t2v_contract::now_unix_ms;
use t2v_proto::v1::{generation_event::Kind, GenerationEvent, GenerationRequest};

use crate::kafka::{decode_event, is_terminal, producer, read_topic, reader};
use crate::s3::list_keys;
use crate::stack::{Service, StackGuard};
use crate::worker::{synthetic_request, WorkerProcess, WorkerSetup};

mod check;
pub mod soak;

use check::check;
#[cfg(test)]
use check::*;

/// What to run and which faults to inject.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub jobs: usize,
    pub workers: usize,
    pub faults: usize,
    pub seed: u64,
    /// Steps per job and the synthetic sleep per step.
    pub steps: u32,
    pub step_ms: u64,
    /// `[checkpoint] every_steps` of the workers: the bound on steps redone per interruption.
    pub checkpoint_every: u32,
    /// Whether the fault mix includes SIGKILL + restart of the shared Kafka broker.
    pub kafka_faults: bool,
    /// Whether the fault mix includes stop + start of the shared S3 server.
    pub s3_faults: bool,
    pub garbage: usize,
    pub invalid: usize,
    /// Valid jobs submitted a second time with the same job id.
    pub duplicates: usize,
    /// How long to wait for every job after the last fault.
    pub settle: Duration,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        Self {
            jobs: 20,
            workers: 3,
            faults: 10,
            seed: 7,
            steps: 40,
            step_ms: 150,
            checkpoint_every: 2,
            kafka_faults: true,
            s3_faults: true,
            garbage: 3,
            invalid: 3,
            duplicates: 4,
            settle: Duration::from_secs(240),
        }
    }
}

/// A fault kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    WorkerKill,
    WorkerTerm,
    KafkaKill,
    S3Stop,
}

/// What a chaos run saw and checked.
#[derive(Debug, Default, Clone)]
pub struct ChaosReport {
    pub jobs: usize,
    pub poison: usize,
    pub duplicate_submissions: usize,
    pub faults: BTreeMap<String, usize>,
    pub lost: Vec<String>,
    /// Jobs with more than one distinct Completed or more than one video object.
    pub duplicate_outputs: Vec<String>,
    pub resumed_jobs: usize,
    /// Worker faults that hit a worker running a job (the others found every worker idle).
    pub busy_victims: usize,
    /// Every interruption: a run that ended unfinished, then a run of the job that resumed.
    pub interruptions: usize,
    /// Steps redone by the interruptions while the S3 server was up (the checkpoint bound
    /// applies to these).
    pub steps_redone: u64,
    pub max_redone: u64,
    /// Interruptions whose earlier run overlaps an S3 outage: checkpoints could not be stored,
    /// so the redo has no bound; counted apart.
    pub outage_interruptions: usize,
    pub outage_steps_redone: u64,
    pub outage_max_redone: u64,
    /// Starteds of a job while an earlier run of it still reported (its partition moved while
    /// the old owner ran on): not interruptions.
    pub overlaps: usize,
    /// The S3 outages the schedule caused, wall clock (Unix ms): stop-s3 issued → start-s3 done.
    pub s3_outages: Vec<Outage>,
    /// One line per interruption: job, step reached, resume step, whether S3 was down.
    pub interruption_lines: Vec<String>,
    /// Checkpoint objects still stored for completed jobs (a kill between the manifest and the
    /// checkpoint delete leaves one; harmless, reported).
    pub checkpoints_left: usize,
    pub wall: Duration,
    /// Every broken invariant, in words (empty: all held).
    pub violations: Vec<String>,
}

impl ChaosReport {
    /// The table `make chaos` prints.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("jobs (valid)".into(), self.jobs.to_string()),
            ("poison messages".into(), self.poison.to_string()),
            (
                "duplicate submissions".into(),
                self.duplicate_submissions.to_string(),
            ),
        ];
        for (kind, n) in &self.faults {
            rows.push((format!("faults: {kind}"), n.to_string()));
        }
        let total: usize = self.faults.values().sum();
        rows.extend([
            ("faults: total".into(), total.to_string()),
            ("lost".into(), self.lost.len().to_string()),
            (
                "duplicate outputs".into(),
                self.duplicate_outputs.len().to_string(),
            ),
            (
                "worker faults on a busy worker".into(),
                self.busy_victims.to_string(),
            ),
            ("resumed jobs".into(), self.resumed_jobs.to_string()),
            ("interruptions".into(), self.interruptions.to_string()),
            (
                "steps redone, S3 up (total)".into(),
                self.steps_redone.to_string(),
            ),
            (
                "steps redone, S3 up (max per interruption)".into(),
                self.max_redone.to_string(),
            ),
            (
                "interruptions during an S3 outage".into(),
                self.outage_interruptions.to_string(),
            ),
            (
                "steps redone during an S3 outage (total)".into(),
                self.outage_steps_redone.to_string(),
            ),
            (
                "steps redone during an S3 outage (max)".into(),
                self.outage_max_redone.to_string(),
            ),
            ("overlapping runs".into(), self.overlaps.to_string()),
            (
                "S3 outages".into(),
                self.s3_outages
                    .iter()
                    .map(|o| format!("{:.1} s", o.to_ms.saturating_sub(o.from_ms) as f64 / 1e3))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "checkpoints left after completion".into(),
                self.checkpoints_left.to_string(),
            ),
            (
                "wall time".into(),
                format!("{:.1} s", self.wall.as_secs_f64()),
            ),
            ("violations".into(), self.violations.len().to_string()),
        ]);
        let mut out = String::from("| metric | value |\n|---|---|\n");
        for (k, v) in rows {
            out.push_str(&format!("| {k} | {v} |\n"));
        }
        for line in &self.interruption_lines {
            out.push_str(&format!("interruption: {line}\n"));
        }
        for v in &self.violations {
            out.push_str(&format!("VIOLATION: {v}\n"));
        }
        out
    }
}

/// A span of wall-clock time (Unix ms, the clock of the workers' `emitted_at_unix_ms`) during
/// which the S3 server was down or not yet answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    pub from_ms: u64,
    pub to_ms: u64,
}

impl Outage {
    /// Whether the outage shares a moment with `[from_ms, to_ms]`.
    fn overlaps(&self, from_ms: u64, to_ms: u64) -> bool {
        self.from_ms <= to_ms && from_ms <= self.to_ms
    }
}

/// SplitMix64: a small seeded RNG, so a run's fault schedule is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Reads the events topic from the beginning on a thread until dropped.
struct EventLog {
    events: Arc<Mutex<Vec<GenerationEvent>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EventLog {
    fn start(topic: &str) -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let consumer = reader("t2v-tests-chaos", topic);
        let (sink, flag) = (events.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    sink.lock().unwrap().push(decode_event(&m));
                }
            }
        });
        Self {
            events,
            stop,
            thread: Some(thread),
        }
    }

    fn snapshot(&self) -> Vec<GenerationEvent> {
        self.events.lock().unwrap().clone()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Worker ids (`host:pid`) running a job now, by the events: the last Started/Progress of the
/// worker was not followed by a terminal event of that job.
fn busy_workers(events: &[GenerationEvent]) -> BTreeSet<String> {
    let mut current: HashMap<&str, Option<&str>> = HashMap::new();
    for e in events {
        match &e.kind {
            Some(Kind::Started(_)) | Some(Kind::Progress(_)) => {
                current.insert(&e.worker_id, Some(&e.job_id));
            }
            Some(k)
                if is_terminal(k)
                    && current.get(e.worker_id.as_str()) == Some(&Some(e.job_id.as_str())) =>
            {
                current.insert(&e.worker_id, None);
            }
            _ => {}
        }
    }
    current
        .into_iter()
        .filter(|(_, job)| job.is_some())
        .map(|(w, _)| w.to_string())
        .collect()
}

/// A valid chaos job: the synthetic request with its own prompt and seed.
fn request(job_id: &str, steps: u32, seed: u64) -> GenerationRequest {
    GenerationRequest {
        prompt: format!("chaos job {job_id}"),
        seed: Some(seed),
        submitted_at_unix_ms: now_unix_ms(),
        ..synthetic_request(job_id, steps)
    }
}

/// The chaos workers' settings: a sleep per step, a checkpoint every `checkpoint_every` steps,
/// Progress every step, a crash budget that repeated kills of one job do not use up.
fn worker_env(step_ms: u64, checkpoint_every: u32) -> Vec<(String, String)> {
    [
        ("T2V_MODEL__SYNTHETIC_STEP_MS", step_ms.to_string()),
        ("T2V_CHECKPOINT__EVERY_STEPS", checkpoint_every.to_string()),
        ("T2V_JOBS__PROGRESS_INTERVAL_MS", "0".to_string()),
        // Kills land on the same job more than the default 3 times by design.
        ("T2V_JOBS__MAX_ATTEMPTS", "50".to_string()),
        ("T2V_JOBS__RETRY_TIMES", "20".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The workers of a run, on one setup; a killed or stopped worker is replaced.
struct Fleet {
    setup: WorkerSetup,
    env: Vec<(String, String)>,
    workers: Vec<WorkerProcess>,
}

impl Fleet {
    /// Fresh topics and `cfg.workers` ready workers: a sleep per step, a checkpoint every
    /// `cfg.checkpoint_every` steps, Progress every step.
    async fn start(cfg: &ChaosConfig) -> Self {
        let setup = WorkerSetup::new("chaos", cfg.workers.max(1) as i32).await;
        Self::launch(
            setup,
            worker_env(cfg.step_ms, cfg.checkpoint_every),
            cfg.workers,
        )
    }

    /// `n` ready workers on `setup`, each started with `env`.
    fn launch(setup: WorkerSetup, env: Vec<(String, String)>, n: usize) -> Self {
        let mut fleet = Fleet {
            setup,
            env,
            workers: Vec::new(),
        };
        for _ in 0..n {
            fleet.start_one();
        }
        for w in &fleet.workers {
            w.wait_ready(Duration::from_secs(60));
        }
        fleet
    }

    /// Removes the workers that exited on their own (a sick worker leaves and exits non-zero)
    /// and returns their exit codes; the caller starts replacements.
    fn reap(&mut self) -> Vec<i32> {
        let mut codes = Vec::new();
        let mut i = 0;
        while i < self.workers.len() {
            if let Ok(Some(status)) = self.workers[i].child.try_wait() {
                codes.push(status.code().unwrap_or(-1));
                self.workers.swap_remove(i);
            } else {
                i += 1;
            }
        }
        codes
    }

    fn start_one(&mut self) {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.workers.push(self.setup.start_worker(&env));
    }

    /// Index of the worker whose id is `worker_id` (`host:pid`).
    fn by_id(&self, worker_id: &str) -> Option<usize> {
        self.workers
            .iter()
            .position(|w| worker_id.ends_with(&format!(":{}", w.child.id())))
    }

    /// A busy worker by the events, else any: its index and whether it was busy.
    fn pick(&self, events: &[GenerationEvent], rng: &mut Rng) -> (usize, bool) {
        let busy: Vec<usize> = busy_workers(events)
            .iter()
            .filter_map(|id| self.by_id(id))
            .collect();
        if busy.is_empty() {
            (rng.below(self.workers.len()), false)
        } else {
            (busy[rng.below(busy.len())], true)
        }
    }

    /// SIGKILLs or SIGTERMs a worker (a busy one when there is one), then starts a replacement.
    fn hit_worker(
        &mut self,
        fault: Fault,
        events: &EventLog,
        rng: &mut Rng,
        report: &mut ChaosReport,
    ) {
        let (i, busy) = self.pick(&events.snapshot(), rng);
        report.busy_victims += busy as usize;
        let mut victim = self.workers.swap_remove(i);
        if fault == Fault::WorkerKill {
            let _ = victim.child.kill();
            let _ = victim.child.wait();
        } else {
            victim.terminate();
            if victim.wait_exit(Duration::from_secs(30)).is_none() {
                report
                    .violations
                    .push("a SIGTERMed worker did not exit within 30 s".into());
            }
        }
        self.start_one();
    }
}

/// What a run submits: the valid jobs, and the ids of the poison records (garbage bytes, then
/// invalid requests).
struct Submissions {
    valid: Vec<GenerationRequest>,
    poison_ids: Vec<String>,
}

impl Submissions {
    fn valid_ids(&self) -> Vec<String> {
        self.valid.iter().map(|r| r.job_id.clone()).collect()
    }

    /// Submits the first `cfg.duplicates` valid jobs again, with the same job ids.
    async fn resubmit(&self, cfg: &ChaosConfig, submitter: &t2v_producer::Submitter) {
        for req in self.valid.iter().take(cfg.duplicates) {
            submitter
                .submit(req.clone())
                .await
                .expect("duplicate submit");
        }
    }
}

/// Submits the valid jobs with a poison record after each of the first ones (a plain producer:
/// the Submitter refuses invalid requests).
async fn submit_all(
    cfg: &ChaosConfig,
    setup: &WorkerSetup,
    submitter: &t2v_producer::Submitter,
) -> Submissions {
    let producer: FutureProducer = producer();
    let valid: Vec<GenerationRequest> = (0..cfg.jobs)
        .map(|i| request(&format!("job-{i:03}"), cfg.steps, 1000 + i as u64))
        .collect();
    let mut poison: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..cfg.garbage {
        let text = format!("\u{fffd}garbage {i}\u{0}\u{1}").into_bytes();
        poison.push((
            format!("garbage-{i}"),
            [b"\xff\xfe".as_slice(), &text].concat(),
        ));
    }
    for i in 0..cfg.invalid {
        let id = format!("invalid-{i}");
        let bad = GenerationRequest {
            num_frames: 80,
            ..request(&id, cfg.steps, 1)
        };
        poison.push((id, bad.encode_to_vec()));
    }
    let poison_ids = poison.iter().map(|(id, _)| id.clone()).collect();
    let mut poison = poison.into_iter();
    for req in &valid {
        submitter.submit(req.clone()).await.expect("submit");
        if let Some((key, payload)) = poison.next() {
            producer
                .send(
                    FutureRecord::to(&setup.requests)
                        .key(&key)
                        .payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce poison");
        }
    }
    assert_eq!(poison.len(), 0, "more poison records than valid jobs");
    Submissions { valid, poison_ids }
}

/// The fault schedule: every enabled kind at least once (when `faults` allows), the rest drawn
/// from the RNG, in a shuffled order.
fn schedule(cfg: &ChaosConfig, rng: &mut Rng) -> Vec<Fault> {
    let mut kinds = vec![Fault::WorkerKill, Fault::WorkerTerm];
    if cfg.s3_faults {
        kinds.push(Fault::S3Stop);
    }
    if cfg.kafka_faults {
        kinds.push(Fault::KafkaKill);
    }
    let mut plan: Vec<Fault> = kinds.iter().copied().take(cfg.faults).collect();
    while plan.len() < cfg.faults {
        // Worker faults are cheap and the point of the suite: two in three.
        plan.push(match rng.below(6) {
            0..=1 => Fault::WorkerKill,
            2..=3 => Fault::WorkerTerm,
            _ => kinds[rng.below(kinds.len())],
        });
    }
    for i in (1..plan.len()).rev() {
        plan.swap(i, rng.below(i + 1));
    }
    plan
}

/// Runs the suite; panics only on setup errors (the stack is down, a topic cannot be created).
pub async fn run(cfg: &ChaosConfig) -> ChaosReport {
    let started = Instant::now();
    let mut rng = Rng(cfg.seed);
    let mut guard = StackGuard::default();
    let mut report = ChaosReport {
        jobs: cfg.jobs,
        poison: cfg.garbage + cfg.invalid,
        duplicate_submissions: cfg.duplicates,
        ..Default::default()
    };

    // 1. Topics, the event log and the workers.
    let mut fleet = Fleet::start(cfg).await;
    let setup = fleet.setup.clone();
    let events = EventLog::start(&setup.events);

    // 2. Valid jobs, duplicates, garbage and invalid requests, interleaved.
    let submitter = setup.submitter();
    let submitted = submit_all(cfg, &setup, &submitter).await;

    // 3. Faults, every 1.5–4 s, with the duplicates submitted half-way.
    let plan = schedule(cfg, &mut rng);
    for (n, fault) in plan.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(1500 + rng.below(2500) as u64)).await;
        if n == plan.len() / 2 {
            submitted.resubmit(cfg, &submitter).await;
        }
        if let Err(e) = inject(
            *fault,
            &mut fleet,
            &events,
            &mut guard,
            &mut rng,
            &mut report,
        ) {
            report.violations.push(format!("fault {fault:?}: {e}"));
        }
        eprintln!(
            "chaos: fault {}/{}: {fault:?} at {:.1} s",
            n + 1,
            plan.len(),
            started.elapsed().as_secs_f64()
        );
        *report.faults.entry(format!("{fault:?}")).or_default() += 1;
    }
    if plan.is_empty() {
        submitted.resubmit(cfg, &submitter).await;
    }

    // 4. Wait until every valid job completed and every poison message failed.
    let valid_ids = submitted.valid_ids();
    let all = settle(cfg, &events, &valid_ids, &submitted.poison_ids).await;
    drop(events);
    drop(guard);
    let up_again = now_unix_ms();
    for outage in &mut report.s3_outages {
        outage.to_ms = outage.to_ms.min(up_again);
    }

    // 5. The checks.
    check(
        cfg,
        &setup,
        &valid_ids,
        &submitted.poison_ids,
        &all,
        &mut report,
    )
    .await;
    report.wall = started.elapsed();
    if !report.violations.is_empty() {
        for w in &fleet.workers {
            eprintln!("--- worker log {} ---\n{}", w.log.display(), w.logs());
        }
    }
    report
}

/// One fault of the plan; an S3 stop is recorded in `report.s3_outages`.
fn inject(
    fault: Fault,
    fleet: &mut Fleet,
    events: &EventLog,
    guard: &mut StackGuard,
    rng: &mut Rng,
    report: &mut ChaosReport,
) -> Result<(), String> {
    // Down for 2 s, then started again.
    let mut bounce = |service: Service| {
        guard.take_down(service).and_then(|_| {
            std::thread::sleep(Duration::from_secs(2));
            guard.bring_up(service)
        })
    };
    match fault {
        Fault::WorkerKill | Fault::WorkerTerm => {
            fleet.hit_worker(fault, events, rng, report);
            Ok(())
        }
        Fault::KafkaKill => bounce(Service::Kafka),
        Fault::S3Stop => {
            let from_ms = now_unix_ms();
            let result = bounce(Service::S3);
            // A failed start leaves the server down until the guard restarts it at the end.
            let to_ms = if result.is_ok() {
                now_unix_ms()
            } else {
                u64::MAX
            };
            report.s3_outages.push(Outage { from_ms, to_ms });
            result
        }
    }
}

/// Waits (`cfg.settle` at most) until every valid job completed — the duplicates twice — and
/// every poison message failed, then a little longer for late duplicates of events (a
/// redelivery after the broker restart); returns every event seen.
async fn settle(
    cfg: &ChaosConfig,
    events: &EventLog,
    valid_ids: &[String],
    poison_ids: &[String],
) -> Vec<GenerationEvent> {
    let deadline = Instant::now() + cfg.settle;
    let done = |evs: &[GenerationEvent]| {
        let count = |id: &String, f: fn(&Kind) -> bool| {
            evs.iter()
                .filter(|e| &e.job_id == id && e.kind.as_ref().is_some_and(f))
                .count()
        };
        let completed = |k: &Kind| matches!(k, Kind::Completed(_));
        valid_ids.iter().all(|id| count(id, completed) >= 1)
            && poison_ids
                .iter()
                .all(|id| count(id, |k| matches!(k, Kind::Failed(_))) >= 1)
            && valid_ids
                .iter()
                .take(cfg.duplicates)
                .all(|id| count(id, completed) >= 2)
    };
    while !done(&events.snapshot()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    events.snapshot()
}

#[cfg(test)]
mod tests;
