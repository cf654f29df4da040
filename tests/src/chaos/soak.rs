//! The soak (`make soak`): the chaos machinery of the parent module run for minutes instead of
//! seconds, with every kind of hostile input the worker's contract names (docs/design.md
//! "Delivery semantics") mixed into a steady stream of valid jobs.
//!
//! For `minutes`, on fresh topics (the DLQ takes 2 MiB records) and a fresh prefix, `workers`
//! `t2v-worker run` processes (synthetic backend, the hang marker set, a short step timeout)
//! take `jobs` valid jobs submitted at random times over the first three quarters of the
//! window, while a seeded RNG draws:
//! - faults every few seconds: SIGKILL or SIGTERM of a (busy) worker, replaced at once; a fleet
//!   crash (SIGKILL of every worker but one, the others restarted 5–20 s later); SIGKILL and
//!   restart of the Kafka broker; stop and start of the S3 server;
//! - poison records up to 1 MiB: garbage bytes and oversized valid-looking requests — each must
//!   reach the DLQ byte for byte;
//! - duplicates: the same request again under its job id — one set of outputs, identical
//!   Completed events;
//! - late cancels: a cancel after Completed, then the same request again — still its identical
//!   Completed, never Canceled;
//! - conflicts: another prompt under a committed job id — Failed JOB_ID_CONFLICT with a DLQ copy,
//!   the original's outputs untouched;
//! - a hanging job (the hang marker in its prompt): every worker that takes it is stuck, so the
//!   watchdog re-queues it and takes the worker out; it must end Failed ATTEMPTS_EXHAUSTED in the
//!   DLQ (expected, not lost). Workers that exit on their own are restarted.
//!
//! Then it waits for every answer (`settle` at most) and checks; [`SoakReport::table`] prints
//! submissions, outcomes by code, lost jobs, duplicate outputs, outputs that do not match their
//! manifest, contract violations, fault counts and timings. [`SoakReport::failed`] is true when
//! any of the four (lost, duplicates, mismatches, violations) is non-zero.

use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use t2v_proto::v1::{Artifact, Completed, ErrorCode};

use super::check::{objects_by_job, steps_redone};
use super::*;

/// The marker the soak's workers hang on (`[model] synthetic_hang_marker`).
pub const HANG_MARKER: &str = "[soak-hang]";

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// How long faults and submissions go on.
    pub minutes: f64,
    pub jobs: usize,
    pub workers: usize,
    pub seed: u64,
    pub steps: u32,
    pub step_ms: u64,
    pub checkpoint_every: u32,
    /// `[jobs] step_timeout_secs` of the workers: how long the hanging job holds one.
    pub step_timeout_secs: u64,
    /// Seconds between two faults: drawn from `fault_gap_secs.0..=fault_gap_secs.1`.
    pub fault_gap_secs: (u64, u64),
    pub kafka_faults: bool,
    pub s3_faults: bool,
    pub garbage: usize,
    pub oversized: usize,
    pub duplicates: usize,
    pub late_cancels: usize,
    pub conflicts: usize,
    /// Whether a hanging job is submitted.
    pub hang: bool,
    /// How long to wait for every answer after the window.
    pub settle: Duration,
}

impl SoakConfig {
    /// The defaults of `make soak` for `jobs` jobs: the special submissions scale with them.
    pub fn for_jobs(jobs: usize) -> Self {
        Self {
            minutes: 10.0,
            jobs,
            workers: 4,
            seed: now_unix_ms(),
            steps: 24,
            step_ms: 100,
            checkpoint_every: 4,
            step_timeout_secs: 5,
            fault_gap_secs: (6, 18),
            kafka_faults: true,
            s3_faults: true,
            garbage: (jobs / 50).max(3),
            oversized: (jobs / 50).max(3),
            duplicates: (jobs / 15).max(3),
            late_cancels: (jobs / 30).max(3),
            conflicts: (jobs / 30).max(3),
            hang: true,
            settle: Duration::from_secs(300),
        }
    }

    fn window(&self) -> Duration {
        Duration::from_secs_f64(self.minutes * 60.0)
    }
}

impl Default for SoakConfig {
    fn default() -> Self {
        Self::for_jobs(300)
    }
}

/// A fault of the soak: one of the chaos suite's, or a crash of all workers but one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SoakFault {
    Chaos(Fault),
    FleetCrash,
}

impl SoakFault {
    fn name(self) -> String {
        match self {
            SoakFault::Chaos(f) => format!("{f:?}"),
            SoakFault::FleetCrash => "FleetCrash".into(),
        }
    }
}

/// One thing the soak does at its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Submit(usize),
    Garbage(usize),
    Oversized(usize),
    Hang,
    Duplicate,
    LateCancel,
    /// The same request again after a late cancel.
    Resubmit(usize),
    Conflict,
    Fault(SoakFault),
}

/// What the soak did and found.
#[derive(Debug, Default, Clone)]
pub struct SoakReport {
    pub seed: u64,
    pub valid_jobs: usize,
    pub submit_errors: usize,
    pub garbage: usize,
    pub oversized: usize,
    pub duplicates: usize,
    pub late_cancels: usize,
    pub conflicts: usize,
    pub hang_jobs: usize,
    pub completed: usize,
    /// Valid jobs that ended Failed (no Completed), by code.
    pub failed: BTreeMap<String, usize>,
    /// Expected refusals by kind and code: poison, conflicts, the hanging job.
    pub expected_failures: BTreeMap<String, usize>,
    pub lost: Vec<String>,
    pub duplicate_outputs: Vec<String>,
    pub mismatched: Vec<String>,
    pub violations: Vec<String>,
    pub hang: Vec<String>,
    pub faults: BTreeMap<String, usize>,
    pub busy_victims: usize,
    pub sick_exits: usize,
    pub restarts: usize,
    pub s3_outages: Vec<Outage>,
    pub kafka_outages: Vec<Duration>,
    pub interruptions: usize,
    pub max_redone: u64,
    pub outage_interruptions: usize,
    pub redo_over_bound: usize,
    pub latencies_ms: Vec<u64>,
    pub window: Duration,
    pub settle: Duration,
    pub wall: Duration,
}

impl SoakReport {
    /// Whether a goal was missed: anything lost, duplicated, mismatched or violated.
    pub fn failed(&self) -> bool {
        !(self.lost.is_empty()
            && self.duplicate_outputs.is_empty()
            && self.mismatched.is_empty()
            && self.violations.is_empty())
    }

    /// The table `make soak` prints.
    pub fn table(&self) -> String {
        let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
        let mut rows: Vec<(String, String)> = vec![
            ("seed".into(), self.seed.to_string()),
            ("jobs submitted (valid)".into(), self.valid_jobs.to_string()),
            (
                "submit errors (retried)".into(),
                self.submit_errors.to_string(),
            ),
            ("poison: garbage bytes".into(), self.garbage.to_string()),
            (
                "poison: oversized requests".into(),
                self.oversized.to_string(),
            ),
            ("duplicate submissions".into(), self.duplicates.to_string()),
            ("late cancels".into(), self.late_cancels.to_string()),
            (
                "conflicting job-id re-use".into(),
                self.conflicts.to_string(),
            ),
            ("hanging jobs".into(), self.hang_jobs.to_string()),
            ("completed (valid jobs)".into(), self.completed.to_string()),
        ];
        for (code, n) in &self.failed {
            rows.push((format!("failed (valid jobs): {code}"), n.to_string()));
        }
        if self.failed.is_empty() {
            rows.push(("failed (valid jobs)".into(), "0".into()));
        }
        for (what, n) in &self.expected_failures {
            rows.push((format!("expected refusals: {what}"), n.to_string()));
        }
        rows.extend([
            ("LOST".into(), self.lost.len().to_string()),
            (
                "DUPLICATE OUTPUTS".into(),
                self.duplicate_outputs.len().to_string(),
            ),
            (
                "OUTPUTS NOT MATCHING THE MANIFEST".into(),
                self.mismatched.len().to_string(),
            ),
            (
                "CONTRACT VIOLATIONS".into(),
                self.violations.len().to_string(),
            ),
        ]);
        for (kind, n) in &self.faults {
            rows.push((format!("faults: {kind}"), n.to_string()));
        }
        rows.extend([
            (
                "faults: total".into(),
                self.faults.values().sum::<usize>().to_string(),
            ),
            (
                "worker faults on a busy worker".into(),
                self.busy_victims.to_string(),
            ),
            (
                "workers that exited on their own (sick)".into(),
                self.sick_exits.to_string(),
            ),
            ("worker restarts".into(), self.restarts.to_string()),
            (
                "S3 outages".into(),
                durations(
                    self.s3_outages
                        .iter()
                        .map(|o| Duration::from_millis(o.to_ms.saturating_sub(o.from_ms))),
                ),
            ),
            (
                "Kafka outages".into(),
                durations(self.kafka_outages.iter().copied()),
            ),
            ("interruptions".into(), self.interruptions.to_string()),
            (
                "steps redone, S3 up (max per interruption)".into(),
                self.max_redone.to_string(),
            ),
            (
                "redone beyond the checkpoint interval, S3 up".into(),
                self.redo_over_bound.to_string(),
            ),
            (
                "interruptions during an S3 outage".into(),
                self.outage_interruptions.to_string(),
            ),
            (
                "job latency submit → first Completed (p50 / p95 / max)".into(),
                self.latency(),
            ),
            ("fault window".into(), secs(self.window)),
            ("settle after the window".into(), secs(self.settle)),
            ("wall time".into(), secs(self.wall)),
        ]);
        let mut out = String::from("| metric | value |\n|---|---|\n");
        for (k, v) in rows {
            out.push_str(&format!("| {k} | {v} |\n"));
        }
        for line in &self.hang {
            out.push_str(&format!("hang: {line}\n"));
        }
        for id in &self.lost {
            out.push_str(&format!("LOST: {id}\n"));
        }
        for v in &self.violations {
            out.push_str(&format!("VIOLATION: {v}\n"));
        }
        out
    }

    fn latency(&self) -> String {
        let mut l = self.latencies_ms.clone();
        if l.is_empty() {
            return "-".into();
        }
        l.sort_unstable();
        let at = |q: f64| l[((l.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
        format!("{:.1} / {:.1} / {:.1} s", at(0.5), at(0.95), at(1.0))
    }
}

fn durations(it: impl Iterator<Item = Duration>) -> String {
    let v: Vec<String> = it.map(|d| format!("{:.1} s", d.as_secs_f64())).collect();
    if v.is_empty() {
        "none".into()
    } else {
        format!("{}: {}", v.len(), v.join(", "))
    }
}

/// A record's key and payload.
type Record = (Vec<u8>, Vec<u8>);

/// Reads a topic's raw records (key, payload) from the beginning on a thread until dropped.
struct RecordLog {
    records: Arc<Mutex<Vec<Record>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RecordLog {
    fn start(topic: &str) -> Self {
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let consumer = reader("t2v-tests-soak", topic);
        let (sink, flag) = (records.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    let key = m.key().unwrap_or_default().to_vec();
                    let payload = m.payload().unwrap_or_default().to_vec();
                    sink.lock().unwrap().push((key, payload));
                }
            }
        });
        Self {
            records,
            stop,
            thread: Some(thread),
        }
    }

    fn snapshot(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.records.lock().unwrap().clone()
    }

    /// Whether a record keyed `key` with exactly `payload` is there.
    fn has(records: &[(Vec<u8>, Vec<u8>)], key: &str, payload: &[u8]) -> bool {
        records
            .iter()
            .any(|(k, p)| k == key.as_bytes() && p == payload)
    }
}

impl Drop for RecordLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The largest poison record: under the brokers' default 1 MiB (1,048,588 bytes with overhead).
const MAX_POISON: usize = 1_040_000;

/// A poison size: a third small, a third just over the 64 KiB request limit, a third up to
/// [`MAX_POISON`].
fn poison_size(rng: &mut Rng, floor: usize) -> usize {
    match rng.below(3) {
        0 => floor + rng.below(2048),
        1 => 65_537 + rng.below(4096),
        _ => 65_537 + rng.below(MAX_POISON - 65_537),
    }
}

/// Garbage bytes that no decoder takes (0xff is no protobuf tag) of about `size` bytes.
fn garbage(rng: &mut Rng, size: usize) -> Vec<u8> {
    let mut out = b"\xff\xfe".to_vec();
    while out.len() < size {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(size);
    out
}

/// A request that looks valid but breaks the 64 KiB limit through a label of about `size`
/// bytes.
fn oversized(id: &str, steps: u32, size: usize) -> Vec<u8> {
    let mut req = request(id, steps, 1);
    let base = req.encoded_len();
    req.labels
        .insert("blob".into(), "x".repeat(size.saturating_sub(base + 16)));
    req.encode_to_vec()
}

/// The plan: every action at its offset from the start, in time order.
fn plan(cfg: &SoakConfig, rng: &mut Rng) -> Vec<(Duration, Action)> {
    let window = cfg.window().as_millis().max(1000) as usize;
    let at = |rng: &mut Rng, from: f64, to: f64| {
        let (a, b) = (
            (window as f64 * from) as usize,
            (window as f64 * to) as usize,
        );
        Duration::from_millis((a + rng.below(b - a + 1)) as u64)
    };
    let mut plan = Vec::new();
    // Valid jobs in submission order, at sorted random times over the first 3/4.
    let mut times: Vec<Duration> = (0..cfg.jobs).map(|_| at(rng, 0.0, 0.75)).collect();
    times.sort();
    plan.extend(
        times
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, Action::Submit(i))),
    );
    for i in 0..cfg.garbage {
        plan.push((at(rng, 0.0, 0.9), Action::Garbage(i)));
    }
    for i in 0..cfg.oversized {
        plan.push((at(rng, 0.0, 0.9), Action::Oversized(i)));
    }
    if cfg.hang {
        plan.push((at(rng, 0.05, 0.15), Action::Hang));
    }
    for _ in 0..cfg.duplicates {
        plan.push((at(rng, 0.1, 0.95), Action::Duplicate));
    }
    for _ in 0..cfg.late_cancels {
        plan.push((at(rng, 0.2, 0.95), Action::LateCancel));
    }
    for _ in 0..cfg.conflicts {
        plan.push((at(rng, 0.2, 0.95), Action::Conflict));
    }
    // Faults: every kind once early on, the rest drawn; never two at the same moment.
    let mut kinds = vec![
        SoakFault::Chaos(Fault::WorkerKill),
        SoakFault::Chaos(Fault::WorkerTerm),
        SoakFault::FleetCrash,
    ];
    if cfg.kafka_faults {
        kinds.push(SoakFault::Chaos(Fault::KafkaKill));
    }
    if cfg.s3_faults {
        kinds.push(SoakFault::Chaos(Fault::S3Stop));
    }
    let mut first = kinds.clone();
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i + 1));
    }
    let (lo, hi) = (
        cfg.fault_gap_secs.0 * 1000,
        cfg.fault_gap_secs.1.max(cfg.fault_gap_secs.0) * 1000,
    );
    let mut t = lo + rng.below((hi - lo + 1) as usize) as u64;
    while (t as usize) < window {
        let fault = first.pop().unwrap_or_else(|| match rng.below(20) {
            // Worker faults are cheap and the point: most of them.
            0..=6 => SoakFault::Chaos(Fault::WorkerKill),
            7..=12 => SoakFault::Chaos(Fault::WorkerTerm),
            13..=14 => SoakFault::FleetCrash,
            _ => kinds[rng.below(kinds.len())],
        });
        plan.push((Duration::from_millis(t), Action::Fault(fault)));
        t += lo + rng.below((hi - lo + 1) as usize) as u64;
    }
    plan.sort_by_key(|(t, _)| *t);
    plan
}

/// What was submitted, for the checks.
#[derive(Default)]
struct Ledger {
    valid: Vec<GenerationRequest>,
    /// When each valid job was first submitted (Unix ms), by index.
    submitted_ms: Vec<Option<u64>>,
    /// Answers each valid job owes: its first, plus one per resubmission of the same request.
    owed: HashMap<String, usize>,
    /// Poison records by key: (kind, payload).
    poison: BTreeMap<String, (&'static str, Vec<u8>)>,
    /// Conflicting requests by job id: their payloads.
    conflicts: BTreeMap<String, Vec<Vec<u8>>>,
    canceled: BTreeSet<String>,
    hang: Option<String>,
}

impl Ledger {
    /// A submitted valid job, drawn at random: `committed` ones only (a Completed seen), and
    /// none that a cancel or a conflict already took.
    fn pick(&self, evs: &[GenerationEvent], rng: &mut Rng, committed: bool) -> Option<usize> {
        let done: BTreeSet<&str> = evs
            .iter()
            .filter(|e| matches!(e.kind, Some(Kind::Completed(_))))
            .map(|e| e.job_id.as_str())
            .collect();
        let candidates: Vec<usize> = (0..self.valid.len())
            .filter(|&i| self.submitted_ms[i].is_some())
            .filter(|&i| {
                let id = self.valid[i].job_id.as_str();
                !committed
                    || (done.contains(id)
                        && !self.canceled.contains(id)
                        && !self.conflicts.contains_key(id))
            })
            .collect();
        (!candidates.is_empty()).then(|| candidates[rng.below(candidates.len())])
    }
}

/// The soak's running state.
struct Soak<'a> {
    cfg: &'a SoakConfig,
    rng: Rng,
    fleet: Fleet,
    guard: StackGuard,
    events: EventLog,
    dlq: RecordLog,
    submitter: t2v_producer::Submitter,
    big: FutureProducer,
    ledger: Ledger,
    /// The chaos report the shared fault code fills: fault counts, busy victims, S3 outages.
    chaos: ChaosReport,
    report: SoakReport,
    /// Workers to start again at these times (after a fleet crash).
    restarts: Vec<Instant>,
    /// Actions still to do, at their times: the plan, late-cancel resubmissions, retries.
    pending: Vec<(Instant, Action)>,
    started: Instant,
}

impl Soak<'_> {
    /// Submits through the Submitter, retrying while the broker comes back.
    async fn submit(&mut self, req: GenerationRequest) -> bool {
        for _ in 0..5 {
            match self.submitter.submit(req.clone()).await {
                Ok(_) => return true,
                Err(e) => {
                    self.report.submit_errors += 1;
                    eprintln!("soak: submit {}: {e}", req.job_id);
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        false
    }

    /// Sends raw bytes keyed `key` to the requests topic.
    async fn send_raw(&mut self, key: &str, payload: &[u8]) -> bool {
        for _ in 0..5 {
            let sent = self
                .big
                .send(
                    FutureRecord::to(&self.fleet.setup.requests)
                        .key(key)
                        .payload(payload),
                    Duration::from_secs(30),
                )
                .await;
            match sent {
                Ok(_) => return true,
                Err((e, _)) => {
                    self.report.submit_errors += 1;
                    eprintln!("soak: send {key} ({} bytes): {e}", payload.len());
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        false
    }

    /// Does `action`; `Some(delay)` when it cannot yet (no committed job to pick) and should
    /// be tried again later.
    async fn act(&mut self, action: Action) -> Option<Duration> {
        match action {
            Action::Submit(i) => {
                let req = self.ledger.valid[i].clone();
                let at = now_unix_ms();
                if self.submit(req.clone()).await {
                    self.ledger.submitted_ms[i] = Some(at);
                    *self.ledger.owed.entry(req.job_id).or_default() += 1;
                }
            }
            Action::Garbage(i) => {
                let size = poison_size(&mut self.rng, 16);
                let id = format!("garbage-{i:03}");
                let bytes = garbage(&mut self.rng, size);
                if self.send_raw(&id, &bytes).await {
                    self.ledger.poison.insert(id, ("garbage", bytes));
                    self.report.garbage += 1;
                }
            }
            Action::Oversized(i) => {
                let size = poison_size(&mut self.rng, 65_537).max(65_537);
                let id = format!("oversized-{i:03}");
                let bytes = oversized(&id, self.cfg.steps, size);
                if self.send_raw(&id, &bytes).await {
                    self.ledger.poison.insert(id, ("oversized", bytes));
                    self.report.oversized += 1;
                }
            }
            Action::Hang => {
                let id = "hang-000".to_string();
                let req = GenerationRequest {
                    prompt: format!("soak job that hangs {HANG_MARKER}"),
                    ..request(&id, self.cfg.steps, 7)
                };
                if self.submit(req).await {
                    self.ledger.hang = Some(id);
                    self.report.hang_jobs += 1;
                }
            }
            Action::Duplicate => {
                let evs = self.events.snapshot();
                let Some(i) = self.ledger.pick(&evs, &mut self.rng, false) else {
                    return Some(Duration::from_secs(3));
                };
                let req = self.ledger.valid[i].clone();
                if self.submit(req.clone()).await {
                    *self.ledger.owed.entry(req.job_id).or_default() += 1;
                    self.report.duplicates += 1;
                }
            }
            Action::LateCancel => {
                let evs = self.events.snapshot();
                let Some(i) = self.ledger.pick(&evs, &mut self.rng, true) else {
                    return Some(Duration::from_secs(3));
                };
                let id = self.ledger.valid[i].job_id.clone();
                match self
                    .submitter
                    .cancel(&id, "soak: a cancel after Completed")
                    .await
                {
                    Ok(()) => {
                        self.ledger.canceled.insert(id);
                        self.report.late_cancels += 1;
                        return self.resubmit_later(i);
                    }
                    Err(e) => {
                        self.report.submit_errors += 1;
                        eprintln!("soak: cancel {id}: {e}");
                        return Some(Duration::from_secs(3));
                    }
                }
            }
            Action::Resubmit(i) => {
                let req = self.ledger.valid[i].clone();
                if self.submit(req.clone()).await {
                    *self.ledger.owed.entry(req.job_id).or_default() += 1;
                }
            }
            Action::Conflict => {
                let evs = self.events.snapshot();
                let Some(i) = self.ledger.pick(&evs, &mut self.rng, true) else {
                    return Some(Duration::from_secs(3));
                };
                let original = self.ledger.valid[i].clone();
                let other = GenerationRequest {
                    prompt: format!("soak: another video under {}", original.job_id),
                    submitted_at_unix_ms: now_unix_ms(),
                    ..original.clone()
                };
                let bytes = other.encode_to_vec();
                if self.send_raw(&original.job_id, &bytes).await {
                    self.ledger
                        .conflicts
                        .entry(original.job_id)
                        .or_default()
                        .push(bytes);
                    self.report.conflicts += 1;
                }
            }
            Action::Fault(fault) => self.fault(fault),
        }
        None
    }

    /// The resubmission that follows a late cancel: queued through the pending list.
    fn resubmit_later(&mut self, i: usize) -> Option<Duration> {
        self.pending
            .push((Instant::now() + Duration::from_secs(2), Action::Resubmit(i)));
        None
    }

    fn fault(&mut self, fault: SoakFault) {
        if self.fleet.workers.is_empty() {
            self.start_worker();
        }
        let t0 = Instant::now();
        match fault {
            SoakFault::Chaos(f) => {
                let result = inject(
                    f,
                    &mut self.fleet,
                    &self.events,
                    &mut self.guard,
                    &mut self.rng,
                    &mut self.chaos,
                );
                if let Err(e) = result {
                    self.report.violations.push(format!("fault {f:?}: {e}"));
                }
                if matches!(f, Fault::WorkerKill | Fault::WorkerTerm) {
                    self.report.restarts += 1;
                }
                if f == Fault::KafkaKill {
                    self.report.kafka_outages.push(t0.elapsed());
                }
            }
            SoakFault::FleetCrash => {
                let keep = self.rng.below(self.fleet.workers.len());
                let survivor = self.fleet.workers.swap_remove(keep);
                for mut w in std::mem::take(&mut self.fleet.workers) {
                    let _ = w.child.kill();
                    let _ = w.child.wait();
                    let delay = 5_000 + self.rng.below(15_000) as u64;
                    self.restarts
                        .push(Instant::now() + Duration::from_millis(delay));
                }
                self.fleet.workers.push(survivor);
            }
        }
        *self.report.faults.entry(fault.name()).or_default() += 1;
        eprintln!(
            "soak: {} at {:.1} s ({} workers)",
            fault.name(),
            self.started.elapsed().as_secs_f64(),
            self.fleet.workers.len()
        );
    }

    fn start_worker(&mut self) {
        self.fleet.start_one();
        self.report.restarts += 1;
    }

    /// Restarts workers that exited on their own and those a fleet crash took whose time came.
    fn tend(&mut self) {
        for code in self.fleet.reap() {
            self.report.sick_exits += 1;
            eprintln!(
                "soak: a worker exited on its own ({code}) at {:.1} s; restarting it",
                self.started.elapsed().as_secs_f64()
            );
            self.start_worker();
        }
        let now = Instant::now();
        let due = self.restarts.iter().filter(|t| **t <= now).count();
        self.restarts.retain(|t| *t > now);
        for _ in 0..due {
            self.start_worker();
        }
    }
}

// The late-cancel resubmissions live next to the plan.
impl Soak<'_> {
    fn take_due(&mut self, now: Instant) -> Option<Action> {
        let (i, _) = self
            .pending
            .iter()
            .enumerate()
            .filter(|(_, (t, _))| *t <= now)
            .min_by_key(|(_, (t, _))| *t)?;
        Some(self.pending.remove(i).1)
    }
}

/// Runs the soak; panics only on setup errors (the stack is down, a topic cannot be created).
pub async fn run(cfg: &SoakConfig) -> SoakReport {
    let started = Instant::now();
    let mut rng = Rng(cfg.seed);
    // The DLQ takes 1 MiB poison records with their headers, as in production.
    let setup = WorkerSetup::new("soak", cfg.workers.max(1) as i32).await;
    let mut env = worker_env(cfg.step_ms, cfg.checkpoint_every);
    env.extend([
        (
            "T2V_MODEL__SYNTHETIC_HANG_MARKER".to_string(),
            HANG_MARKER.to_string(),
        ),
        (
            "T2V_JOBS__STEP_TIMEOUT_SECS".to_string(),
            cfg.step_timeout_secs.to_string(),
        ),
    ]);
    let fleet = Fleet::launch(setup.clone(), env, cfg.workers);
    let events = EventLog::start(&setup.events);
    let dlq = RecordLog::start(&setup.dlq);
    let valid: Vec<GenerationRequest> = (0..cfg.jobs)
        .map(|i| request(&format!("job-{i:04}"), cfg.steps, 1000 + i as u64))
        .collect();
    let schedule = plan(cfg, &mut rng);
    let mut soak = Soak {
        cfg,
        rng,
        fleet,
        guard: StackGuard::default(),
        events,
        dlq,
        submitter: setup.submitter(),
        big: crate::kafka::producer(),
        ledger: Ledger {
            submitted_ms: vec![None; valid.len()],
            valid,
            ..Default::default()
        },
        chaos: ChaosReport::default(),
        report: SoakReport {
            seed: cfg.seed,
            ..Default::default()
        },
        restarts: Vec::new(),
        pending: schedule
            .into_iter()
            .map(|(t, a)| (started + t, a))
            .collect(),
        started,
    };

    // 1. The window: actions at their times, restarts when due.
    let window_end = started + cfg.window();
    let deadline = window_end + cfg.settle;
    loop {
        soak.tend();
        let now = Instant::now();
        if let Some(action) = soak.take_due(now) {
            // Faults end with the window; what is owed (late cancels, conflicts) is still done.
            if matches!(action, Action::Fault(_)) && now > window_end + Duration::from_secs(5) {
                continue;
            }
            if let Some(retry) = soak.act(action).await {
                if now < deadline {
                    soak.pending.push((now + retry, action));
                }
            }
            continue;
        }
        if soak.pending.is_empty() && now >= window_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    soak.report.window = started.elapsed();
    eprintln!(
        "soak: window over at {:.1} s; settling",
        soak.report.window.as_secs_f64()
    );

    // 2. Settle: every answer owed, workers tended meanwhile.
    while !soak.settled() && Instant::now() < deadline {
        soak.tend();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    soak.report.settle = started.elapsed() - soak.report.window;
    let all = soak.events.snapshot();
    let dlq = soak.dlq.snapshot();
    drop(std::mem::take(&mut soak.guard));

    // 3. The checks.
    soak.check(&all, &dlq).await;
    soak.report.wall = started.elapsed();
    soak.report
}

impl Soak<'_> {
    /// Whether every answer owed came: each valid job's Completed (one per submission of its
    /// request) or a Failed, a JOB_ID_CONFLICT per conflict, a DLQ copy per poison record, and
    /// the hanging job's end.
    fn settled(&self) -> bool {
        let evs = self.events.snapshot();
        let dlq = self.dlq.snapshot();
        let mut completed: HashMap<&str, usize> = HashMap::new();
        let mut failed: HashMap<&str, usize> = HashMap::new();
        let mut conflicts: HashMap<&str, usize> = HashMap::new();
        for e in &evs {
            match &e.kind {
                Some(Kind::Completed(_)) => *completed.entry(&e.job_id).or_default() += 1,
                Some(Kind::Failed(f)) if f.code == ErrorCode::JobIdConflict as i32 => {
                    *conflicts.entry(&e.job_id).or_default() += 1
                }
                Some(Kind::Failed(_)) => *failed.entry(&e.job_id).or_default() += 1,
                _ => {}
            }
        }
        let l = &self.ledger;
        l.owed.iter().all(|(id, n)| {
            completed.get(id.as_str()).copied().unwrap_or(0) >= *n
                || (!completed.contains_key(id.as_str()) && failed.contains_key(id.as_str()))
        }) && l
            .conflicts
            .iter()
            .all(|(id, c)| conflicts.get(id.as_str()).copied().unwrap_or(0) >= c.len())
            && l.poison
                .iter()
                .all(|(id, (_, bytes))| RecordLog::has(&dlq, id, bytes))
            && l.hang
                .as_ref()
                .is_none_or(|id| failed.contains_key(id.as_str()))
    }

    async fn check(&mut self, all: &[GenerationEvent], dlq: &[(Vec<u8>, Vec<u8>)]) {
        let prefix = self.fleet.setup.prefix.clone();
        let by_job = objects_by_job(&prefix).await;
        let l = &self.ledger;
        let r = &mut self.report;
        r.valid_jobs = l.submitted_ms.iter().filter(|s| s.is_some()).count();
        r.busy_victims = self.chaos.busy_victims;
        r.violations.append(&mut self.chaos.violations);
        r.s3_outages = self.chaos.s3_outages.clone();
        let up_again = now_unix_ms();
        for o in &mut r.s3_outages {
            o.to_ms = o.to_ms.min(up_again);
        }
        let of =
            |id: &str| -> Vec<&GenerationEvent> { all.iter().filter(|e| e.job_id == id).collect() };
        let code = |c: i32| {
            ErrorCode::try_from(c)
                .map(|c| {
                    c.as_str_name()
                        .trim_start_matches("ERROR_CODE_")
                        .to_string()
                })
                .unwrap_or_else(|_| c.to_string())
        };

        // Valid jobs.
        for (i, req) in l.valid.iter().enumerate() {
            let Some(submitted) = l.submitted_ms[i] else {
                continue;
            };
            let id = req.job_id.as_str();
            let evs = of(id);
            let files = by_job.get(id).cloned().unwrap_or_default();
            let completed: Vec<&Completed> = evs
                .iter()
                .filter_map(|e| match &e.kind {
                    Some(Kind::Completed(c)) => Some(c),
                    _ => None,
                })
                .collect();
            let conflicts_sent = l.conflicts.get(id).map_or(0, Vec::len);
            let mut conflict_answers = 0;
            for e in &evs {
                match &e.kind {
                    Some(Kind::Failed(f)) if f.code == ErrorCode::JobIdConflict as i32 => {
                        conflict_answers += 1;
                        if conflicts_sent == 0 {
                            r.violations
                                .push(format!("{id}: Failed JOB_ID_CONFLICT for its own request"));
                        }
                    }
                    Some(Kind::Failed(f)) if !completed.is_empty() => r.violations.push(format!(
                        "{id}: committed, yet answered Failed {}",
                        code(f.code)
                    )),
                    Some(Kind::Canceled(c)) if !completed.is_empty() => r.violations.push(format!(
                        "{id}: committed, yet answered Canceled ({})",
                        c.reason
                    )),
                    _ => {}
                }
            }
            if completed.is_empty() {
                let last_failed = evs.iter().rev().find_map(|e| match &e.kind {
                    Some(Kind::Failed(f)) if f.code != ErrorCode::JobIdConflict as i32 => {
                        Some(f.code)
                    }
                    _ => None,
                });
                let canceled = evs
                    .iter()
                    .any(|e| matches!(e.kind, Some(Kind::Canceled(_))));
                let outputs: Vec<&String> = files
                    .iter()
                    .filter(|f| !f.starts_with("attempts/") && !f.starts_with("checkpoint/"))
                    .collect();
                match (last_failed, canceled) {
                    (Some(c), _) => *r.failed.entry(code(c)).or_default() += 1,
                    (None, true) => *r.failed.entry("CANCELED".into()).or_default() += 1,
                    (None, false) if outputs.is_empty() => r.lost.push(id.to_string()),
                    (None, false) => r
                        .violations
                        .push(format!("{id}: outputs {outputs:?} but no terminal event")),
                }
                if !outputs.is_empty() && (last_failed.is_some() || canceled) {
                    r.violations
                        .push(format!("{id}: outputs {outputs:?} of a job that failed"));
                }
                continue;
            }
            r.completed += 1;
            if let Some(first) = evs
                .iter()
                .find(|e| matches!(e.kind, Some(Kind::Completed(_))))
            {
                r.latencies_ms
                    .push(first.emitted_at_unix_ms.saturating_sub(submitted));
            }
            // One distinct Completed, one video, as many answers as submissions.
            let distinct: BTreeSet<Vec<u8>> = completed.iter().map(|c| c.encode_to_vec()).collect();
            if distinct.len() > 1 {
                r.violations
                    .push(format!("{id}: {} different Completed", distinct.len()));
            }
            let videos: BTreeSet<(&str, &str)> = completed
                .iter()
                .filter_map(|c| c.video.as_ref())
                .map(|v| (v.uri.as_str(), v.sha256.as_str()))
                .collect();
            let stored_videos = files.iter().filter(|f| f.ends_with(".mp4")).count();
            if videos.len() > 1 || stored_videos > 1 {
                r.duplicate_outputs.push(format!(
                    "{id}: {} videos announced, {stored_videos} stored",
                    videos.len()
                ));
            }
            let owed = l.owed.get(id).copied().unwrap_or(1);
            if completed.len() < owed {
                r.violations.push(format!(
                    "{id}: {} Completed for {owed} submissions of its request",
                    completed.len()
                ));
            }
            if conflict_answers < conflicts_sent {
                r.violations.push(format!(
                    "{id}: {conflict_answers} JOB_ID_CONFLICT for {conflicts_sent} conflicting \
                     requests (a conflict was handed the original's video?)"
                ));
            }
            for bytes in l.conflicts.get(id).into_iter().flatten() {
                if !RecordLog::has(dlq, id, bytes) {
                    r.violations.push(format!(
                        "{id}: a conflicting request not in the DLQ byte for byte"
                    ));
                }
            }
            // The announced files are what the manifest recorded.
            let c = completed[0];
            let mut bad = Vec::new();
            for (what, a) in [
                ("video", &c.video),
                ("thumbnail", &c.thumbnail),
                ("manifest", &c.manifest),
            ] {
                if let Err(e) = matches_artifact(a.as_ref()).await {
                    bad.push(format!("{what}: {e}"));
                }
            }
            match (&c.manifest, &c.video) {
                (Some(m), Some(v)) => match fetch(&m.uri).await {
                    Some(bytes) if String::from_utf8_lossy(&bytes).contains(&v.sha256) => {}
                    Some(_) => bad.push("the manifest does not name the video's sha256".into()),
                    None => bad.push("manifest missing".into()),
                },
                _ => bad.push("no manifest or video in Completed".into()),
            }
            if !bad.is_empty() {
                r.mismatched.push(format!("{id}: {}", bad.join("; ")));
                r.violations.push(format!("{id}: {}", bad.join("; ")));
            }
        }

        // Poison: Failed (when keyed by a job id) and the DLQ, byte for byte; nothing stored.
        for (id, (kind, bytes)) in &l.poison {
            if !RecordLog::has(dlq, id, bytes) {
                let near = dlq.iter().filter(|(k, _)| k == id.as_bytes()).count();
                r.violations.push(format!(
                    "{id}: {kind} record of {} bytes not in the DLQ byte for byte ({near} copies \
                     under its key)",
                    bytes.len()
                ));
            }
            let evs = of(id);
            if evs
                .iter()
                .any(|e| matches!(e.kind, Some(Kind::Completed(_))))
                || by_job.contains_key(id)
            {
                r.violations
                    .push(format!("{id}: a poison record has a Completed or objects"));
            }
            let answer = evs
                .iter()
                .find_map(|e| match &e.kind {
                    Some(Kind::Failed(f)) => Some(code(f.code)),
                    _ => None,
                })
                .unwrap_or_else(|| "DLQ copy only".into());
            *r.expected_failures
                .entry(format!("{kind}: {answer}"))
                .or_default() += 1;
        }
        for id in l.conflicts.keys() {
            let n = l.conflicts[id].len();
            *r.expected_failures
                .entry("conflict: JOB_ID_CONFLICT".into())
                .or_default() += n;
        }

        // The hanging job: Failed ATTEMPTS_EXHAUSTED with a DLQ copy.
        if let Some(id) = &l.hang {
            let evs = of(id);
            let starts = evs
                .iter()
                .filter(|e| matches!(e.kind, Some(Kind::Started(_))))
                .count();
            let max_attempt = evs.iter().map(|e| e.attempt).max().unwrap_or(0);
            let in_dlq = dlq.iter().filter(|(k, _)| k == id.as_bytes()).count();
            let end = evs.iter().find_map(|e| match &e.kind {
                Some(Kind::Failed(f)) => Some(format!("Failed {}", code(f.code))),
                Some(Kind::Completed(_)) => Some("Completed".into()),
                Some(Kind::Canceled(_)) => Some("Canceled".into()),
                _ => None,
            });
            r.hang.push(format!(
                "{id}: {starts} runs started, highest attempt {max_attempt}, {in_dlq} DLQ \
                 copies, {} sick worker exits in all, ended: {}",
                r.sick_exits,
                end.clone().unwrap_or_else(|| "NOT YET".into())
            ));
            match end.as_deref() {
                Some("Failed ATTEMPTS_EXHAUSTED") if in_dlq > 0 => {
                    *r.expected_failures
                        .entry("hang: ATTEMPTS_EXHAUSTED".into())
                        .or_default() += 1;
                }
                other => r.violations.push(format!(
                    "{id}: a job that hangs every worker must end Failed ATTEMPTS_EXHAUSTED in \
                     the DLQ; it ended {} ({in_dlq} DLQ copies, attempt {max_attempt} after \
                     {starts} runs)",
                    other.unwrap_or("not at all within the run")
                )),
            }
        }

        // Interruptions and steps redone (the chaos suite's measure), reported.
        let chaos_cfg = ChaosConfig {
            checkpoint_every: self.cfg.checkpoint_every,
            ..ChaosConfig::default()
        };
        let mut redo = ChaosReport {
            s3_outages: r.s3_outages.clone(),
            ..Default::default()
        };
        let ids: Vec<String> = l.owed.keys().cloned().collect();
        steps_redone(&chaos_cfg, &ids, all, &mut redo);
        r.interruptions = redo.interruptions;
        r.max_redone = redo.max_redone;
        r.outage_interruptions = redo.outage_interruptions;
        r.redo_over_bound = redo.violations.len();
    }
}

/// The object at an `s3://bucket/key` URI, or `None` when missing.
async fn fetch(uri: &str) -> Option<Vec<u8>> {
    let key = uri
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, k)| k)
        .unwrap_or(uri);
    let got = crate::s3::bucket().get(&ObjectPath::from(key)).await.ok()?;
    got.bytes().await.ok().map(|b| b.to_vec())
}

/// Whether the stored object has the announced size and SHA-256.
async fn matches_artifact(a: Option<&Artifact>) -> Result<(), String> {
    let a = a.ok_or("not announced")?;
    let bytes = fetch(&a.uri)
        .await
        .ok_or_else(|| format!("{} missing", a.uri))?;
    if bytes.len() as u64 != a.size_bytes {
        return Err(format!(
            "{}: {} bytes, announced {}",
            a.uri,
            bytes.len(),
            a.size_bytes
        ));
    }
    if t2v_contract::sha256_hex(&bytes) != a.sha256 {
        return Err(format!("{}: sha256 differs", a.uri));
    }
    Ok(())
}
