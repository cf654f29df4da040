//! Placement simulation: how long a job waits for a GPU under hash placement, under the
//! Submitter's queue-aware placement (join the shortest backlog, as seen by a refresher), and
//! under an ideal shared queue. A benchmark, not a test: `make sim` (no Kafka needed).
//!
//! A discrete-event model, seeded, replaying the same Poisson arrivals and the same job times
//! through every policy:
//! - job times are lognormal around T (σ = 0.3, mean exactly T); all times print in units of T;
//! - **hash**: each job goes to a uniformly random partition of P = 32; partitions are spread
//!   evenly over the W workers (partition p → worker p mod W); each worker takes its
//!   partitions' records one at a time, first come first served;
//! - **count**: the submitter sees every worker's backlog (queued + running jobs) as of the
//!   last refresh (every Δ), adds the jobs it placed itself since then, and sends the job to a
//!   worker with the smallest backlog; ties between idle workers at random, ties between busy
//!   ones to the worker busy the longest (last seen finishing a job, or getting one while idle,
//!   the earliest), whose job is likely to end first — what placement does before it has seen
//!   a job end to end;
//! - **expected**: as count, but a busy worker is ranked by when it is expected to free: the
//!   end of its running job as that job's progress predicted it at the last refresh, plus one
//!   mean job per queued job — what placement does once it follows the jobs' events;
//!   shown for Δ = 250 ms against T = 60 s (a short Wan job) and Δ = T/8 (the end-to-end
//!   test's ~2 s jobs);
//! - **shared**: one FIFO queue served by all W workers (M/G/W) — the lower bound.
//!
//! `T2V_SIM_JOBS` (default 200000) jobs per cell, the first 10 % dropped as warm-up;
//! `T2V_SIM_SEED` (default 42).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PARTITIONS: usize = 32;
const SIGMA: f64 = 0.3;

/// One job: arrival time and service time, in units of T.
#[derive(Clone, Copy)]
struct Job {
    arrival: f64,
    service: f64,
}

/// Poisson arrivals at rate `load * workers` per T, lognormal service times with mean 1.
fn workload(rng: &mut StdRng, n: usize, workers: usize, load: f64) -> Vec<Job> {
    let rate = load * workers as f64;
    let mu = -SIGMA * SIGMA / 2.0;
    let mut t = 0.0;
    (0..n)
        .map(|_| {
            t += -(1.0 - rng.random::<f64>()).ln() / rate;
            // Box–Muller.
            let (u1, u2) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            Job {
                arrival: t,
                service: (mu + SIGMA * z).exp(),
            }
        })
        .collect()
}

/// Waits when job `i` goes to worker `route(i)` and every worker serves its jobs FIFO.
fn per_worker_fifo(
    jobs: &[Job],
    workers: usize,
    mut route: impl FnMut(usize) -> usize,
) -> Vec<f64> {
    let mut free_at = vec![0.0f64; workers];
    jobs.iter()
        .enumerate()
        .map(|(i, job)| {
            let w = route(i);
            let start = free_at[w].max(job.arrival);
            free_at[w] = start + job.service;
            start - job.arrival
        })
        .collect()
}

fn hash(jobs: &[Job], workers: usize, rng: &mut StdRng) -> Vec<f64> {
    per_worker_fifo(jobs, workers, |_| rng.random_range(0..PARTITIONS) % workers)
}

/// How a busy worker is ranked.
#[derive(Clone, Copy, PartialEq)]
enum Rank {
    /// Fewest jobs, then busy the longest.
    Count,
    /// Soonest expected end of its running job (known at the last refresh) plus a mean job
    /// (1 T) per queued one.
    Expected,
}

/// Placement with a view refreshed every `refresh` (units of T), busy workers ranked by `rank`.
fn backlog(jobs: &[Job], workers: usize, refresh: f64, rank: Rank, rng: &mut StdRng) -> Vec<f64> {
    let mut free_at = vec![0.0f64; workers];
    // Finish times of each worker's jobs not yet finished at the last look (FIFO: increasing).
    let mut pending: Vec<VecDeque<f64>> = vec![VecDeque::new(); workers];
    let mut seen = vec![0usize; workers];
    // When each worker was last seen to finish a job or to get one while idle.
    let mut busy_since = vec![0.0f64; workers];
    // When each worker's running job ends, as its progress said at the last refresh.
    let mut running_ends = vec![0.0f64; workers];
    let mut next_refresh = 0.0;
    let mut waits = Vec::with_capacity(jobs.len());
    for job in jobs {
        while job.arrival >= next_refresh {
            for (w, q) in pending.iter_mut().enumerate() {
                let before = q.len();
                while q.front().is_some_and(|&f| f <= next_refresh) {
                    q.pop_front();
                }
                if q.len() < before {
                    busy_since[w] = next_refresh;
                }
                seen[w] = q.len();
                running_ends[w] = q.front().copied().unwrap_or(next_refresh);
            }
            next_refresh += refresh;
        }
        let expected =
            |w: usize| (running_ends[w] - job.arrival).max(0.0) + seen[w].saturating_sub(1) as f64;
        let least = *seen.iter().min().expect("workers > 0");
        let ties: Vec<usize> = (0..workers).filter(|&w| seen[w] == least).collect();
        let w = if least > 0 && rank == Rank::Expected {
            (0..workers)
                .min_by(|&a, &b| expected(a).total_cmp(&expected(b)))
                .expect("workers > 0")
        } else if least == 0 {
            ties[rng.random_range(0..ties.len())]
        } else {
            let oldest = ties.iter().map(|&w| busy_since[w]).fold(f64::MAX, f64::min);
            let longest: Vec<usize> = ties
                .into_iter()
                .filter(|&w| busy_since[w] == oldest)
                .collect();
            longest[rng.random_range(0..longest.len())]
        };
        if seen[w] == 0 {
            busy_since[w] = job.arrival;
            running_ends[w] = job.arrival + 1.0; // a mean job, until its progress is seen
        }
        seen[w] += 1; // the submitter counts its own placements until the next refresh
        let start = free_at[w].max(job.arrival);
        free_at[w] = start + job.service;
        pending[w].push_back(free_at[w]);
        waits.push(start - job.arrival);
    }
    waits
}

/// M/G/W: one FIFO queue, the next job to whichever worker frees first.
fn shared(jobs: &[Job], workers: usize) -> Vec<f64> {
    // Free times as ordered integers (f64 bits of non-negative numbers order like the numbers).
    let mut free: BinaryHeap<Reverse<u64>> =
        (0..workers).map(|_| Reverse(0f64.to_bits())).collect();
    jobs.iter()
        .map(|job| {
            let Reverse(bits) = free.pop().expect("workers > 0");
            let start = f64::from_bits(bits).max(job.arrival);
            free.push(Reverse((start + job.service).to_bits()));
            start - job.arrival
        })
        .collect()
}

/// Mean and p99 after dropping the warm-up.
fn stats(mut waits: Vec<f64>) -> (f64, f64) {
    let warm = waits.len() / 10;
    let mut w = waits.split_off(warm);
    let mean = w.iter().sum::<f64>() / w.len() as f64;
    w.sort_by(f64::total_cmp);
    let p99 = w[(w.len() * 99 / 100).min(w.len() - 1)];
    (mean, p99)
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n: usize = env_or("T2V_SIM_JOBS", 200_000);
    let seed: u64 = env_or("T2V_SIM_SEED", 42);
    let fast = 1.0 / 240.0;
    let slow = 1.0 / 8.0;
    println!(
        "queue wait in units of T (mean job time); lognormal σ={SIGMA}, P={PARTITIONS}, {n} jobs per cell, seed {seed}"
    );
    println!("Δ: the refresher's period (Δ=T/240: 250 ms against 60 s jobs; Δ=T/8: 250 ms against the e2e test's 2 s jobs)");
    println!(
        "{:>3} {:>5} | {:>16} | {:>16} | {:>16} | {:>16} | {:>16}",
        "W",
        "load",
        "hash mean / p99",
        "count Δ=T/240",
        "expected Δ=T/240",
        "expected Δ=T/8",
        "shared mean/p99"
    );
    println!("{}", "-".repeat(3 + 1 + 5 + 5 * 19 + 1));
    for workers in [4usize, 8, 32] {
        for load in [0.5, 0.8, 0.9] {
            let mut rng =
                StdRng::seed_from_u64(seed ^ (workers as u64) << 8 ^ (load * 100.0) as u64);
            let jobs = workload(&mut rng, n, workers, load);
            let cells = [
                stats(hash(&jobs, workers, &mut rng)),
                stats(backlog(&jobs, workers, fast, Rank::Count, &mut rng)),
                stats(backlog(&jobs, workers, fast, Rank::Expected, &mut rng)),
                stats(backlog(&jobs, workers, slow, Rank::Expected, &mut rng)),
                stats(shared(&jobs, workers)),
            ];
            let cell = |(m, p): (f64, f64)| format!("{m:>7.3} / {p:>6.2}");
            println!(
                "{workers:>3} {:>4}% | {} | {} | {} | {} | {}",
                (load * 100.0).round(),
                cell(cells[0]),
                cell(cells[1]),
                cell(cells[2]),
                cell(cells[3]),
                cell(cells[4]),
            );
        }
    }
}
