//! Queue-aware placement on the real broker: 4 synthetic workers, ~40 jobs of mixed lengths
//! (1–3 s) arriving as a Poisson stream at ~85 % load. The same arrival schedule runs twice, once
//! hashed by job id and once placed by the shortest backlog; each job's queue wait is its
//! Accepted's `queue_wait_ms`. The ideal is a shared FIFO queue (M/G/4) over the same arrivals
//! and the job times the run measured (Accepted → terminal event). Backlog placement must come
//! within 1.5× the ideal (plus 0.1 s of slack for a loaded CI machine: with 40 jobs one unlucky
//! placement behind a long job moves the mean by ~0.05 s) and beat hashing. Placement follows
//! the jobs' events (Accepted names the request partition, Progress the time left), so after
//! the first job ends it ranks busy workers by when they are expected to free.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use t2v_producer::placement::parse_assignment;
use t2v_producer::{Placement, Submitter, SubmitterConfig};
use t2v_proto::v1::generation_event::Kind;
use t2v_tests::{brokers, is_terminal, synthetic_request, wait_events, WorkerSetup};

const WORKERS: usize = 4;
const PARTITIONS: i32 = 8;
const JOBS: usize = 40;
const STEP_MS: u64 = 100;
/// Steps per job: 10, 20 or 30 at 100 ms a step, so 1–3 s of denoising (mean 2 s).
const STEPS: [u32; 3] = [10, 20, 30];
const LOAD: f64 = 0.85;

/// One job of the schedule: when it is submitted (from the run's start) and its steps.
#[derive(Clone, Copy)]
struct Arrival {
    at: Duration,
    steps: u32,
}

/// SplitMix64: a seeded uniform in [0, 1).
fn uniform(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
}

/// Poisson arrivals at `LOAD` for jobs of mean length `mean_job`; steps drawn uniformly.
fn schedule(seed: u64, mean_job: Duration) -> Vec<Arrival> {
    let mut state = seed;
    let rate = LOAD * WORKERS as f64 / mean_job.as_secs_f64();
    let mut t = 0.0;
    (0..JOBS)
        .map(|_| {
            t += -(1.0 - uniform(&mut state)).ln() / rate;
            let pick = (uniform(&mut state) * STEPS.len() as f64) as usize;
            Arrival {
                at: Duration::from_secs_f64(t),
                steps: STEPS[pick.min(STEPS.len() - 1)],
            }
        })
        .collect()
}

/// What one run measured, per job in schedule order.
struct Measured {
    /// Submission times from the run's start, in ms (what the workers' queue wait counts from).
    submitted_ms: Vec<f64>,
    wait_ms: Vec<f64>,
    /// Accepted → terminal event: how long the job held its worker.
    service_ms: Vec<f64>,
    partitions: Vec<i32>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Waits of a FIFO queue shared by `workers` (M/G/W) for these arrivals and job times.
fn shared_queue(arrivals: &[f64], service: &[f64], workers: usize) -> Vec<f64> {
    let mut order: Vec<usize> = (0..arrivals.len()).collect();
    order.sort_by(|&a, &b| arrivals[a].total_cmp(&arrivals[b]));
    let mut free: BinaryHeap<Reverse<u64>> = (0..workers).map(|_| Reverse(0u64)).collect();
    let mut waits = vec![0.0; arrivals.len()];
    for i in order {
        let Reverse(at) = free.pop().unwrap();
        let start = (at as f64 / 1e3).max(arrivals[i]);
        free.push(Reverse(((start + service[i]) * 1e3).round() as u64));
        waits[i] = start - arrivals[i];
    }
    waits
}

/// Waits until `group` is a stable group of `members` members, each assigned partitions of `topic`.
fn wait_group(group: &str, topic: &str, members: usize) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(list) = consumer.fetch_group_list(Some(group), Duration::from_secs(5)) {
            if let Some(g) = list.groups().iter().find(|g| g.name() == group) {
                let assigned = g
                    .members()
                    .iter()
                    .filter(|m| {
                        parse_assignment(m.assignment().unwrap_or_default())
                            .unwrap()
                            .iter()
                            .any(|(t, p)| t == topic && !p.is_empty())
                    })
                    .count();
                last = format!(
                    "state {} members {} assigned {assigned}",
                    g.state(),
                    g.members().len()
                );
                if g.state() == "Stable" && g.members().len() == members && assigned == members {
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("group {group} not stable with {members} assigned members: {last}");
}

async fn run(
    setup: &WorkerSetup,
    placement: Placement,
    tag: &str,
    arrivals: &[Arrival],
) -> (Measured, u64) {
    let submitter = Submitter::new(SubmitterConfig {
        brokers: brokers(),
        requests_topic: setup.requests.clone(),
        events_topic: setup.events.clone(),
        control_topic: setup.control.clone(),
        group_id: setup.group.clone(),
        placement,
        ..Default::default()
    })
    .unwrap();
    // No job ids: only ids the Submitter assigns are placed by backlog (a caller's own id may
    // be sent again, and its copies must stay on one partition).
    let mut ids: Vec<String> = Vec::new();
    let start = tokio::time::Instant::now();
    let wall_start = t2v_contract::now_unix_ms();
    let mut submitted_ms = Vec::new();
    let mut partitions = Vec::new();
    for a in arrivals {
        tokio::time::sleep_until(start + a.at).await;
        let mut req = synthetic_request("", a.steps);
        req.prompt = format!("{tag} {}", req.prompt);
        req.submitted_at_unix_ms = t2v_contract::now_unix_ms();
        submitted_ms.push((req.submitted_at_unix_ms - wall_start) as f64);
        let submitted = submitter.submit(req).await.unwrap();
        partitions.push(submitted.partition);
        ids.push(submitted.job_id);
    }
    let fallbacks = submitter.placement_fallbacks();
    let mine = |e: &t2v_proto::v1::GenerationEvent| ids.contains(&e.job_id);
    let events = wait_events(&setup.events, Duration::from_secs(120), |events| {
        events
            .iter()
            .filter(|e| mine(e) && e.kind.as_ref().is_some_and(is_terminal))
            .count()
            >= ids.len()
    });
    let mut accepted = BTreeMap::new();
    let mut finished = BTreeMap::new();
    for e in events.iter().filter(|e| mine(e)) {
        match &e.kind {
            Some(Kind::Accepted(a)) => {
                accepted.insert(e.job_id.clone(), (a.queue_wait_ms, e.emitted_at_unix_ms));
            }
            Some(k) if is_terminal(k) => {
                assert!(matches!(k, Kind::Completed(_)), "{}: {k:?}", e.job_id);
                finished
                    .entry(e.job_id.clone())
                    .or_insert(e.emitted_at_unix_ms);
            }
            _ => {}
        }
    }
    assert_eq!(finished.len(), ids.len(), "every {tag} job completed");
    let mut wait_ms = Vec::new();
    let mut service_ms = Vec::new();
    for id in &ids {
        let (wait, accepted_at) = accepted[id];
        wait_ms.push(wait as f64);
        service_ms.push(finished[id].saturating_sub(accepted_at) as f64);
    }
    (
        Measured {
            submitted_ms,
            wait_ms,
            service_ms,
            partitions,
        },
        fallbacks,
    )
}

fn report(name: &str, m: &Measured) -> (f64, f64) {
    let ideal = shared_queue(
        &m.submitted_ms.iter().map(|s| s / 1e3).collect::<Vec<_>>(),
        &m.service_ms.iter().map(|s| s / 1e3).collect::<Vec<_>>(),
        WORKERS,
    );
    let (wait, ideal) = (mean(&m.wait_ms) / 1e3, mean(&ideal));
    let mut per_partition = vec![0; PARTITIONS as usize];
    for &p in &m.partitions {
        per_partition[p as usize] += 1;
    }
    println!(
        "{name:>8}: mean wait {wait:.2} s, min {:.2} s, max {:.2} s; ideal shared queue over the same arrivals and job times {ideal:.2} s; mean job {:.2} s; jobs per partition {per_partition:?}",
        m.wait_ms.iter().cloned().fold(f64::MAX, f64::min) / 1e3,
        m.wait_ms.iter().cloned().fold(0.0, f64::max) / 1e3,
        mean(&m.service_ms) / 1e3,
    );
    (wait, ideal)
}

#[tokio::test]
async fn backlog_placement_waits_close_to_a_shared_queue_and_less_than_hashing() {
    let setup = WorkerSetup::new("placement", PARTITIONS).await;
    let step = STEP_MS.to_string();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", step.as_str())]))
        .collect();
    for w in &workers {
        w.wait_ready(Duration::from_secs(60));
    }
    wait_group(&setup.group, &setup.requests, WORKERS);

    // The mean job: its steps plus ~0.3 s of overhead (encode, upload, events).
    let mean_steps = STEPS.iter().sum::<u32>() as f64 / STEPS.len() as f64;
    let mean_job = Duration::from_secs_f64(mean_steps * STEP_MS as f64 / 1e3 + 0.3);
    let arrivals = schedule(7, mean_job);

    let (hash, hash_fallbacks) = run(&setup, Placement::Hash, "hash", &arrivals).await;
    // Let the last offsets be committed before the next run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (backlog, backlog_fallbacks) = run(&setup, Placement::Backlog, "backlog", &arrivals).await;
    let (hash_wait, hash_ideal) = report("hash", &hash);
    let (backlog_wait, backlog_ideal) = report("backlog", &backlog);
    println!("fallbacks to hashing: hash run {hash_fallbacks}, backlog run {backlog_fallbacks}");
    println!(
        "backlog / ideal: {:.2}×; hash / ideal: {:.2}×",
        backlog_wait / backlog_ideal,
        hash_wait / hash_ideal
    );

    assert_eq!(hash_fallbacks, 0, "Placement::Hash is not a fallback");
    assert_eq!(backlog_fallbacks, 0, "the group was readable throughout");
    let slack = 0.1;
    assert!(
        backlog_wait <= 1.5 * backlog_ideal + slack,
        "backlog mean wait {backlog_wait:.2} s vs ideal {backlog_ideal:.2} s"
    );
    assert!(
        backlog_wait < hash_wait,
        "backlog {backlog_wait:.2} s vs hash {hash_wait:.2} s (hash ideal {hash_ideal:.2} s)"
    );
}
