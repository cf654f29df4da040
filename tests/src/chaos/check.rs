//! What a chaos run promises, checked after the faults: outputs, Completed events, the DLQ, and
//! the steps redone per interruption (see the parent module's docs for how runs, interruptions
//! and overlaps are told apart).

use super::*;

/// Checks what the fleet promises; every broken invariant becomes a line in
/// `report.violations`.
pub(super) async fn check(
    cfg: &ChaosConfig,
    setup: &WorkerSetup,
    valid_ids: &[String],
    poison_ids: &[String],
    all: &[GenerationEvent],
    report: &mut ChaosReport,
) {
    let by_job = objects_by_job(&setup.prefix).await;
    let outputs = Outputs { all, by_job };
    outputs.check_valid(valid_ids, report);
    outputs.check_orphans(report);
    let dlq = read_topic(
        &setup.dlq,
        poison_ids.len() + valid_ids.len(),
        Duration::from_secs(10),
    );
    let dlq_keys: Vec<String> = dlq
        .iter()
        .map(|m| String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned())
        .collect();
    outputs.check_poison(valid_ids, poison_ids, &dlq_keys, report);
    steps_redone(cfg, valid_ids, all, report);
}

/// The object names under `prefix`, by job: `<prefix>/<job>/<file>` → `job: [file, ...]`.
pub(super) async fn objects_by_job(prefix: &str) -> BTreeMap<String, Vec<String>> {
    let mut by_job: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in list_keys(prefix).await {
        let rest = key.strip_prefix(&format!("{prefix}/")).unwrap_or(&key);
        if let Some((job, file)) = rest.split_once('/') {
            by_job
                .entry(job.to_string())
                .or_default()
                .push(file.to_string());
        }
    }
    by_job
}

/// What a run left: every event, and the stored objects by job.
struct Outputs<'a> {
    all: &'a [GenerationEvent],
    by_job: BTreeMap<String, Vec<String>>,
}

impl Outputs<'_> {
    /// The encoded Completed events of job `id`.
    fn completed_of(&self, id: &str) -> Vec<Vec<u8>> {
        self.all
            .iter()
            .filter(|e| e.job_id == id)
            .filter_map(|e| match &e.kind {
                Some(Kind::Completed(c)) => Some(c.encode_to_vec()),
                _ => None,
            })
            .collect()
    }

    /// Valid jobs: a manifest, ≥ 1 Completed, all identical, one video, no final Failed.
    fn check_valid(&self, valid_ids: &[String], report: &mut ChaosReport) {
        for id in valid_ids {
            let completed = self.completed_of(id);
            let files = self.by_job.get(id).cloned().unwrap_or_default();
            if completed.is_empty() {
                report.lost.push(id.clone());
                report.violations.push(format!("{id}: no Completed (lost)"));
                continue;
            }
            report.checkpoints_left += files
                .iter()
                .filter(|f| f.starts_with("checkpoint/"))
                .count();
            if !files.iter().any(|f| f == "manifest.json") {
                report.violations.push(format!("{id}: no manifest.json"));
            }
            let videos = files.iter().filter(|f| f.ends_with(".mp4")).count();
            let distinct: BTreeSet<&Vec<u8>> = completed.iter().collect();
            if distinct.len() > 1 || videos > 1 {
                report.duplicate_outputs.push(id.clone());
                report.violations.push(format!(
                    "{id}: {} distinct Completed, {videos} videos",
                    distinct.len()
                ));
            }
            if self.all.iter().any(|e| {
                &e.job_id == id && matches!(&e.kind, Some(Kind::Failed(f)) if !f.retryable)
            }) {
                report
                    .violations
                    .push(format!("{id}: a non-retryable Failed for a valid job"));
            }
        }
    }

    /// No output object of a job that never completed (attempt markers are not outputs).
    fn check_orphans(&self, report: &mut ChaosReport) {
        for (job, files) in &self.by_job {
            if self.completed_of(job).is_empty() {
                let outputs: Vec<&String> = files
                    .iter()
                    .filter(|f| !f.starts_with("attempts/") && !f.starts_with("checkpoint/"))
                    .collect();
                if !outputs.is_empty() {
                    report
                        .violations
                        .push(format!("{job}: outputs {outputs:?} without a Completed"));
                }
            }
        }
    }

    /// Poison: in the DLQ (keys `dlq_keys`), a Failed event, nothing else; no valid job there.
    fn check_poison(
        &self,
        valid_ids: &[String],
        poison_ids: &[String],
        dlq_keys: &[String],
        report: &mut ChaosReport,
    ) {
        for id in poison_ids {
            if !dlq_keys.contains(id) {
                report.violations.push(format!("{id}: not in the DLQ"));
            }
            if !self.completed_of(id).is_empty() || self.by_job.contains_key(id) {
                report
                    .violations
                    .push(format!("{id}: a poison message has a Completed or objects"));
            }
        }
        for key in dlq_keys {
            if valid_ids.contains(key) {
                report
                    .violations
                    .push(format!("{key}: a valid job is in the DLQ"));
            }
        }
    }
}

/// Resumes, overlaps and steps redone of the valid jobs, from the events in topic order and the
/// S3 outages in `report`; a violation per redo beyond the checkpoint interval with S3 up.
pub(super) fn steps_redone(
    cfg: &ChaosConfig,
    valid_ids: &[String],
    all: &[GenerationEvent],
    report: &mut ChaosReport,
) {
    let outages = report.s3_outages.clone();
    for id in valid_ids {
        let runs = interruptions(all, id);
        report.overlaps += runs.overlaps;
        for i in &runs.interruptions {
            let redone = i.redone() as u64;
            let during = i.during(&outages);
            report.interruptions += 1;
            report.interruption_lines.push(format!(
                "{id}: reached {}, resumed at {}: {redone} redone{}",
                i.before,
                i.from,
                if during { " (S3 outage)" } else { "" }
            ));
            if during {
                report.outage_interruptions += 1;
                report.outage_steps_redone += redone;
                report.outage_max_redone = report.outage_max_redone.max(redone);
                continue;
            }
            report.steps_redone += redone;
            report.max_redone = report.max_redone.max(redone);
            if redone > cfg.checkpoint_every as u64 {
                report.violations.push(format!(
                    "{id}: {redone} steps redone after reaching step {}, resumed at {}, \
                     with the S3 server up (bound: {} = [checkpoint] every_steps)",
                    i.before, i.from, cfg.checkpoint_every
                ));
            }
        }
        report.resumed_jobs += runs.interruptions.iter().any(|i| i.from > 0) as usize;
    }
}

/// A job's run resumed after earlier runs of it ended unfinished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interruption {
    /// The highest step the ended runs reported.
    pub before: u32,
    /// The step the new run resumed from.
    pub from: u32,
    /// `emitted_at_unix_ms` of the Started of the latest ended run that reached `before`: from
    /// then on it could have stored the checkpoint the new run should have found.
    pub earlier_started_ms: u64,
    /// `emitted_at_unix_ms` of the new run's Started.
    pub resumed_ms: u64,
}

impl Interruption {
    pub fn redone(&self) -> u32 {
        self.before.saturating_sub(self.from)
    }

    /// Whether an S3 outage falls between the earlier run's start and the resume, so the
    /// checkpoints that would have bounded the redo may have failed to store.
    pub fn during(&self, outages: &[Outage]) -> bool {
        outages
            .iter()
            .any(|o| o.overlaps(self.earlier_started_ms, self.resumed_ms))
    }
}

/// What the runs of one job show.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct JobRuns {
    pub interruptions: Vec<Interruption>,
    /// Starteds while an earlier run of the job still reported.
    pub overlaps: usize,
}

/// One worker's run of a job, as positions in the job's events.
struct Run {
    started: usize,
    started_ms: u64,
    from: u32,
    /// The last event of the run: its terminal event, or its last Progress.
    last: usize,
    reached: u32,
}

/// The runs of `job_id` until its first Completed (later Starteds answer duplicate submissions),
/// in topic order: each Started that follows runs which ended unfinished since the previous
/// Started is an interruption; each Started while an earlier run still reports is an overlap.
/// A run belongs to its worker (`worker_id`) and ends at that worker's terminal event of the
/// job, at its next Started of the job, or at its last event.
pub(crate) fn interruptions(events: &[GenerationEvent], job_id: &str) -> JobRuns {
    let evs: Vec<&GenerationEvent> = events.iter().filter(|e| e.job_id == job_id).collect();
    let mut runs: Vec<Run> = Vec::new();
    // The run each worker has open (not ended by a terminal event).
    let mut open: HashMap<&str, usize> = HashMap::new();
    for (at, e) in evs.iter().enumerate() {
        match &e.kind {
            Some(Kind::Started(s)) => {
                // A producer retry after a broker restart can write the same Started twice: it
                // starts no new run.
                if let Some(&r) = open.get(e.worker_id.as_str()) {
                    if evs[runs[r].started] == *e {
                        continue;
                    }
                }
                open.insert(&e.worker_id, runs.len());
                runs.push(Run {
                    started: at,
                    started_ms: e.emitted_at_unix_ms,
                    from: s.resumed_from_step,
                    last: at,
                    reached: s.resumed_from_step,
                });
            }
            Some(Kind::Progress(p)) => {
                if let Some(&r) = open.get(e.worker_id.as_str()) {
                    runs[r].last = at;
                    runs[r].reached = runs[r].reached.max(p.step);
                }
            }
            Some(k) if is_terminal(k) => {
                if let Some(r) = open.remove(e.worker_id.as_str()) {
                    runs[r].last = at;
                }
                if matches!(k, Kind::Completed(_)) {
                    break;
                }
            }
            _ => {}
        }
    }
    let mut out = JobRuns::default();
    for (n, run) in runs.iter().enumerate() {
        let earlier = &runs[..n];
        if earlier.iter().any(|r| r.last > run.started) {
            out.overlaps += 1;
        }
        // Runs that ended before this Started, not before the previous one: this Started is
        // the first to follow them.
        let previous = earlier.last().map_or(0, |r| r.started);
        if !earlier
            .iter()
            .any(|r| r.last < run.started && r.last >= previous)
        {
            continue;
        }
        let ended = earlier.iter().filter(|r| r.last < run.started);
        let before = ended.clone().map(|r| r.reached).max().unwrap_or(0);
        let earlier_started_ms = ended
            .filter(|r| r.reached == before)
            .map(|r| r.started_ms)
            .max()
            .unwrap_or(0);
        out.interruptions.push(Interruption {
            before,
            from: run.from,
            earlier_started_ms,
            resumed_ms: run.started_ms,
        });
    }
    out
}
