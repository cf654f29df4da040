//! Benchmark (not a test): the worker's cost per job outside the pipeline.
//!
//! One `t2v-worker run` with the synthetic backend at 0 ms per step takes N (default 10) jobs of
//! 81 frames at 832×480, all queued before the first starts, on the local stack (`make up`;
//! build the worker first: `cargo build -p t2v-worker`). From the events it prints, per job:
//! - pipeline: text encode + denoise + VAE decode (the synthetic render) — excluded from overhead;
//! - encode, upload: the Completed event's timings;
//! - in-job: Started → Completed minus pipeline (encode, upload, manifest, Completed publish);
//! - gap: Completed of one job → Started of the next (offset commit, next record's fetch and
//!   decode, dedupe read, Accepted, attempt marker, Started), and its part up to Accepted;
//! - overhead: in-job + the gap that follows it.
//!
//! Goals (docs/design.md "Performance"): overhead ≤ 1 s per job and gap ≤ 0.2 s on this machine.
//!
//! `[T2V_CONFIG=worker.toml] [WORKER_RUST_LOG=debug] cargo run -p t2v-tests --example worker_overhead [-- JOBS]`

use std::time::Duration;

use t2v_proto::v1::{generation_event::Kind, GenerationEvent, GenerationRequest};
use t2v_tests::{synthetic_request, WorkerSetup};

const WIDTH: u32 = 832;
const HEIGHT: u32 = 480;
const FRAMES: u32 = 81;
const OVERHEAD_GOAL_MS: u64 = 1000;
const GAP_GOAL_MS: u64 = 200;

/// The figures of one job, in milliseconds.
#[derive(Debug, Default, Clone, Copy)]
struct JobFigures {
    pipeline: u64,
    encode: u64,
    upload: u64,
    in_job: u64,
    gap: Option<u64>,
    /// The part of `gap` before the next job's Accepted (commit, fetch, decode, dedupe read).
    gap_to_accepted: Option<u64>,
}

/// Median and maximum of `values` (sorted copy).
fn median_max(values: &[u64]) -> (u64, u64) {
    let mut v = values.to_vec();
    v.sort_unstable();
    (v[v.len() / 2], *v.last().unwrap_or(&0))
}

/// Per-job figures in the order the jobs started (one worker: one job at a time).
fn figures(events: &[GenerationEvent]) -> Vec<JobFigures> {
    let mut out: Vec<JobFigures> = Vec::new();
    let mut started_at = None;
    let mut last_completed_at: Option<u64> = None;
    for e in events {
        match &e.kind {
            Some(Kind::Accepted(_)) => {
                if let (Some(prev), Some(done)) = (out.last_mut(), last_completed_at) {
                    prev.gap_to_accepted = Some(e.emitted_at_unix_ms.saturating_sub(done));
                }
            }
            Some(Kind::Started(_)) => {
                if let (Some(prev), Some(done)) = (out.last_mut(), last_completed_at) {
                    prev.gap = Some(e.emitted_at_unix_ms.saturating_sub(done));
                }
                started_at = Some(e.emitted_at_unix_ms);
            }
            Some(Kind::Completed(c)) => {
                let t = c.timings.unwrap_or_default();
                let pipeline = t.text_encode_ms + t.denoise_ms + t.vae_decode_ms;
                let span = e
                    .emitted_at_unix_ms
                    .saturating_sub(started_at.expect("Started precedes Completed"));
                out.push(JobFigures {
                    pipeline,
                    encode: t.encode_ms,
                    upload: t.upload_ms,
                    in_job: span.saturating_sub(pipeline),
                    gap: None,
                    gap_to_accepted: None,
                });
                last_completed_at = Some(e.emitted_at_unix_ms);
            }
            _ => {}
        }
    }
    out
}

fn row(name: &str, values: &[u64]) {
    let (median, max) = median_max(values);
    println!("{name:<34} median {median:>6} ms   max {max:>6} ms");
}

#[tokio::main]
async fn main() {
    let jobs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("JOBS is a number"))
        .unwrap_or(10);
    assert!(jobs >= 2, "at least 2 jobs, to measure a gap");
    let setup = WorkerSetup::new("overhead", 1).await;
    // An optional worker.toml (e.g. `[kafka.properties]` to try librdkafka settings).
    let config = std::env::var("T2V_CONFIG").unwrap_or_default();
    let mut env = vec![("T2V_MODEL__SYNTHETIC_STEP_MS", "0")];
    if !config.is_empty() {
        env.push(("T2V_CONFIG", &config));
    }
    // The worker's log filter, for diagnosis (its log path is printed at the end).
    let log_filter = std::env::var("WORKER_RUST_LOG").unwrap_or_default();
    if !log_filter.is_empty() {
        env.push(("RUST_LOG", &log_filter));
    }
    let worker = setup.start_worker(&env);
    worker.wait_ready(Duration::from_secs(60));

    let submitter = setup.submitter();
    for i in 0..jobs {
        submitter
            .submit(GenerationRequest {
                prompt: "a lighthouse at dusk, waves breaking".into(),
                width: WIDTH,
                height: HEIGHT,
                num_frames: FRAMES,
                fps: 16,
                seed: Some(i as u64),
                ..synthetic_request(&format!("overhead-{i}"), 4)
            })
            .await
            .unwrap();
    }
    let events = t2v_tests::wait_events(&setup.events, Duration::from_secs(600), |e| {
        e.iter()
            .filter(|e| matches!(e.kind, Some(Kind::Completed(_)) | Some(Kind::Failed(_))))
            .count()
            >= jobs
    });
    let failed = events
        .iter()
        .filter(|e| matches!(e.kind, Some(Kind::Failed(_))))
        .count();
    assert_eq!(failed, 0, "failed jobs; logs:\n{}", worker.logs());
    let figs = figures(&events);
    assert_eq!(figs.len(), jobs, "logs:\n{}", worker.logs());

    let pick = |f: fn(&JobFigures) -> u64| figs.iter().map(f).collect::<Vec<_>>();
    let gaps: Vec<u64> = figs.iter().filter_map(|f| f.gap).collect();
    let overhead: Vec<u64> = figs
        .iter()
        .filter_map(|f| f.gap.map(|g| f.in_job + g))
        .collect();
    println!(
        "worker overhead: {jobs} jobs of {FRAMES} frames at {WIDTH}x{HEIGHT}, synthetic backend at 0 ms/step, one worker"
    );
    row("pipeline (render; excluded)", &pick(|f| f.pipeline));
    row("encode (MP4 + thumbnail)", &pick(|f| f.encode));
    row("upload (video + thumbnail)", &pick(|f| f.upload));
    row("in-job (Started→Completed − pipe)", &pick(|f| f.in_job));
    row("gap (Completed→next Started)", &gaps);
    let to_accepted: Vec<u64> = figs.iter().filter_map(|f| f.gap_to_accepted).collect();
    row("  of which Completed→next Accepted", &to_accepted);
    row("overhead per job (in-job + gap)", &overhead);
    let (_, overhead_max) = median_max(&overhead);
    let (gap_median, gap_max) = median_max(&gaps);
    let (overhead_median, _) = median_max(&overhead);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "goal overhead ≤ {OVERHEAD_GOAL_MS} ms: median {overhead_median} ms, max {overhead_max} ms — {}",
        verdict(overhead_max <= OVERHEAD_GOAL_MS)
    );
    println!(
        "goal gap ≤ {GAP_GOAL_MS} ms: median {gap_median} ms, max {gap_max} ms — {}",
        verdict(gap_max <= GAP_GOAL_MS)
    );
    println!("worker log: {}", worker.log.display());
}
