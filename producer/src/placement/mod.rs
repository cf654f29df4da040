//! Queue-aware placement: send a request to a partition of the worker expected to free first,
//! instead of the partition its key hashes to.
//!
//! Keyed by job id alone, a request lands on a hash-chosen partition and waits behind that
//! partition's busy worker while other GPUs idle (`make sim` shows how much: at 8 workers and
//! 80 % load the mean wait is ≈ 2.2 T under hashing, against ≈ 0.165 T for one ideal shared
//! queue and for this placement).
//!
//! A background refresher, one per [`Submitter`](crate::Submitter) and started with it, reads
//! every 250 ms:
//! - the consumer group's members and the partitions of the request topics (every lane of every
//!   routed model, [`crate::routes`]) each was assigned
//!   (`DescribeGroups`, [`parse_assignment`] over each member's assignment bytes; module `group`);
//! - the group's committed offsets (a consumer with the group's `group.id` that never
//!   subscribes, so it never joins the group);
//! - the partitions' log-end offsets (and log-start, for a partition nothing was committed on);
//! - the events that arrived since the last read (module `running`): when each worker's running job
//!   is expected to end, and the fleet's mean job.
//!
//! A worker's backlog is Σ over its partitions of every request topic of (end − committed): its
//! queued jobs in all lanes plus the one running, since workers store an offset only after the
//! job's terminal event. This submitter's own placements that a read has not seen yet are added
//! on top (until the read's log end passes the offset they were acknowledged at), so a burst
//! spreads out. A submit to topic T picks, among the workers holding a partition of T, the one
//! expected to take a new job first (`ExpectedWait`) and a random partition of T it holds:
//! an idle worker (ties at random); else, once a job was seen end to end, the soonest expected
//! end of the running job plus a mean job per queued one — what a shared queue does, where the
//! next job goes to whoever frees first (`make sim`: equal to the shared queue to the third
//! decimal at 4–32 workers); before that, the fewest jobs, then the worker busy the longest.
//! When there is no usable view — no member holds a partition of T, the group cannot be
//! read, the view is older than [`STALE_AFTER`] — the request is hashed by its key exactly as
//! before, and the fallback is logged and counted ([`Placer::fallbacks`]).
//!
//! The record keeps its key (the job id), which workers require. What moves is only the
//! partition: a second submit of the same job id may now land on another partition, and so on
//! another worker (the manifest, written create-only, still keeps exactly one result; the GPU
//! time of the losing run is wasted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use rdkafka::consumer::BaseConsumer;

use crate::SubmitterConfig;

mod group;
mod running;

pub use group::{parse_assignment, AssignmentError};
use group::{read_backlogs, GroupRead};
use running::{EventsReader, RunningJobs};

/// How requests are spread over the requests topic's partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Placement {
    /// A partition of the consumer-group member with the shortest backlog; hashing when the
    /// group cannot be read.
    #[default]
    Backlog,
    /// The partition the job id hashes to (librdkafka's default partitioner).
    Hash,
}

/// How often the refresher reads the group.
/// Four times a second: a worker that finished a job looks busy until the next read, and with
/// minutes-long jobs at high load a second of that already sends some jobs behind a busy GPU.
/// A read is three requests (DescribeGroups, OffsetFetch, ListOffsets), cheap for the broker.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);
/// A view older than this is not used (the refresher keeps failing).
pub const STALE_AFTER: Duration = Duration::from_secs(10);
/// How long a submit waits for the refresher's first view before hashing.
pub const FIRST_VIEW_WAIT: Duration = Duration::from_secs(2);

/// One member of the group as the refresher saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerBacklog {
    pub member_id: String,
    /// Its partitions of the request topics: (topic, partition).
    pub partitions: Vec<(String, i32)>,
    /// Records on those partitions not yet committed, plus the requests this submitter placed
    /// on it since the view was taken.
    pub backlog: i64,
    /// Σ of the committed offsets of those partitions: it moves when the worker finishes a job.
    pub committed: i64,
    /// When the worker was last seen finishing a job, or getting one while idle: the start of
    /// its current job, as near as the refresher can tell.
    pub busy_since: Instant,
    /// When its running job is expected to end, from the jobs' events ([`RunningJobs`]).
    pub running_ends_at: Option<Instant>,
}

#[derive(Debug)]
struct View {
    workers: Vec<WorkerBacklog>,
    taken_at: Instant,
    /// The fleet's mean job, once the events showed one end to end.
    mean_job: Option<Duration>,
}

/// How soon a worker is expected to take a new job; smaller is sooner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ExpectedWait {
    Idle,
    /// The rest of its running job plus a mean job per queued one.
    Estimated(Duration),
    /// No job was seen end to end yet: the fewest jobs, then the one busy the longest (its job
    /// is the likeliest to end first).
    Counted {
        backlog: i64,
        busy_since: Instant,
    },
}

impl View {
    fn expected_wait(&self, w: &WorkerBacklog, now: Instant) -> ExpectedWait {
        if w.backlog <= 0 {
            return ExpectedWait::Idle;
        }
        let Some(mean) = self.mean_job else {
            return ExpectedWait::Counted {
                backlog: w.backlog,
                busy_since: w.busy_since,
            };
        };
        let running_ends_at = w.running_ends_at.unwrap_or(w.busy_since + mean);
        let queued = u32::try_from(w.backlog - 1).unwrap_or(u32::MAX);
        ExpectedWait::Estimated(running_ends_at.saturating_duration_since(now) + mean * queued)
    }
}

/// This submitter's placements not yet seen in a read of the log-end offsets, counted on top of
/// each read: a read that began before a record landed would otherwise forget it and send the
/// next request to the same, no longer idle, worker.
#[derive(Debug)]
struct PendingPlacement {
    topic: String,
    partition: i32,
    placed_at: Instant,
    /// Its offset once the brokers acknowledged it.
    offset: Option<i64>,
}

/// A placement never acknowledged (its send failed) is forgotten after this.
const PENDING_FOR: Duration = Duration::from_secs(10);

/// What submits and the refresher share, under one lock.
#[derive(Debug, Default)]
struct State {
    /// `None` until the first refresh, and after a refresh that found no usable member.
    view: Option<View>,
    pending: Vec<PendingPlacement>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Refreshes done (successful or not); the first one ends a submit's wait.
    refreshes: tokio::sync::watch::Sender<u64>,
    fallbacks: AtomicU64,
    stop: AtomicBool,
    /// Whether the last refresh was usable, to log changes only.
    usable: AtomicBool,
}

/// The placement state of one `Submitter`: the refresher (started on first use, stopped on
/// drop) and the fallback counter.
#[derive(Debug)]
pub struct Placer {
    placement: Placement,
    cfg: SubmitterConfig,
    /// Every request topic, read together: a worker's backlog counts all its lanes.
    topics: Vec<String>,
    shared: Arc<Shared>,
    started: OnceLock<()>,
}

impl Placer {
    /// Starts the refresher at once for [`Placement::Backlog`], so that the first submit finds
    /// a view instead of waiting for one.
    pub fn new(cfg: &SubmitterConfig) -> Self {
        let placer = Self {
            placement: cfg.placement,
            cfg: cfg.clone(),
            topics: cfg.request_topics(),
            shared: Arc::new(Shared::default()),
            started: OnceLock::new(),
        };
        if placer.placement == Placement::Backlog {
            placer.start();
        }
        placer
    }

    /// Requests that were hashed because [`Placement::Backlog`] had no usable view.
    pub fn fallbacks(&self) -> u64 {
        self.shared.fallbacks.load(Ordering::Relaxed)
    }

    /// The workers and backlogs of the latest view (empty when there is none).
    pub fn snapshot(&self) -> Vec<WorkerBacklog> {
        lock(&self.shared.state)
            .view
            .as_ref()
            .map(|v| v.workers.clone())
            .unwrap_or_default()
    }

    /// The partition of `topic` for the next request: `None` means hashing by key (always for
    /// [`Placement::Hash`]; for [`Placement::Backlog`] when there is no usable view, counted).
    pub async fn partition(&self, topic: &str, job_id: &str) -> Option<i32> {
        if self.placement == Placement::Hash {
            return None;
        }
        self.start();
        let mut refreshes = self.shared.refreshes.subscribe();
        if *refreshes.borrow_and_update() == 0 {
            let _ = tokio::time::timeout(FIRST_VIEW_WAIT, refreshes.changed()).await;
        }
        let now = Instant::now();
        let mut state = lock(&self.shared.state);
        let chosen = choose(&mut state.view, topic, now, &mut rand::rng());
        if let Some(partition) = chosen {
            state.pending.push(PendingPlacement {
                topic: topic.to_string(),
                partition,
                placed_at: now,
                offset: None,
            });
        }
        drop(state);
        if chosen.is_none() {
            self.shared.fallbacks.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(job_id, group = %self.cfg.group_id, "placement: no usable view of the group; hashing by job id");
        }
        chosen
    }

    /// The brokers acknowledged a request at `offset` of `topic`/`partition`: the next read of
    /// the log end that passes it counts it, and this submitter stops counting it itself.
    pub fn landed(&self, topic: &str, partition: i32, offset: i64) {
        let mut state = lock(&self.shared.state);
        if let Some(p) = state
            .pending
            .iter_mut()
            .find(|p| p.offset.is_none() && p.partition == partition && p.topic == topic)
        {
            p.offset = Some(offset);
        }
    }

    fn start(&self) {
        self.started.get_or_init(|| {
            let shared = Arc::clone(&self.shared);
            let cfg = self.cfg.clone();
            let topics = self.topics.clone();
            let spawned = std::thread::Builder::new()
                .name("t2v-placement".into())
                .spawn(move || refresher(cfg, topics, shared));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "placement: refresher did not start; hashing by job id");
                self.shared.refreshes.send_replace(1);
            }
        });
    }
}

impl Drop for Placer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Picks, among the workers holding a partition of `topic`, the one expected to free first
/// ([`View::expected_wait`]; ties at random) and a random partition of `topic` it holds, and
/// counts the request against it. `None` when the view is missing or stale, or no worker holds
/// a partition of `topic`.
fn choose(view: &mut Option<View>, topic: &str, now: Instant, rng: &mut impl Rng) -> Option<i32> {
    let view = view
        .as_mut()
        .filter(|v| now.saturating_duration_since(v.taken_at) < STALE_AFTER)?;
    let of_topic = |w: &WorkerBacklog| -> Vec<i32> {
        w.partitions
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| *p)
            .collect()
    };
    let candidates: Vec<usize> = (0..view.workers.len())
        .filter(|&i| !of_topic(&view.workers[i]).is_empty())
        .collect();
    let rank = |i: usize| view.expected_wait(&view.workers[i], now);
    let least = candidates.iter().map(|&i| rank(i)).min()?;
    let ties: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| rank(i) == least)
        .collect();
    let mean_job = view.mean_job;
    let worker = &mut view.workers[ties[rng.random_range(0..ties.len())]];
    if worker.backlog == 0 {
        worker.busy_since = now;
        worker.running_ends_at = mean_job.map(|m| now + m);
    }
    worker.backlog += 1;
    let partitions = of_topic(worker);
    Some(partitions[rng.random_range(0..partitions.len())])
}

/// Reads the group every [`REFRESH_EVERY`] until the `Placer` is dropped.
fn refresher(cfg: SubmitterConfig, topics: Vec<String>, shared: Arc<Shared>) {
    let consumer: Result<BaseConsumer, _> = cfg
        .client_config_with(&[
            ("group.id", cfg.group_id.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
        ])
        .create();
    let consumer = match consumer {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "placement: no group reader; hashing by job id");
            shared.refreshes.send_replace(1);
            return;
        }
    };
    let timeout = cfg.connect_timeout.min(Duration::from_secs(5));
    let mut events = events_reader(&cfg);
    let mut running = RunningJobs::default();
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        if let Some(reader) = events.as_mut() {
            if let Err(e) = reader.read_into(&mut running, timeout) {
                tracing::debug!(error = %e, "placement: job progress unread; counting jobs only");
            }
        }
        let read = read_backlogs(&consumer, &cfg.group_id, &topics, timeout);
        let usable = matches!(&read, Ok(r) if r.workers.iter().any(|w| !w.partitions.is_empty()));
        if usable != shared.usable.swap(usable, Ordering::Relaxed) || n == 0 {
            log_usable(&cfg.group_id, &read, usable);
        }
        install(&shared, read.ok().filter(|_| usable), &running);
        n += 1;
        shared.refreshes.send_replace(n);
        let next = started + REFRESH_EVERY;
        while !shared.stop.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50).min(next - Instant::now()));
        }
    }
}

fn log_usable(group: &str, read: &Result<GroupRead, String>, usable: bool) {
    match (read, usable) {
        (Ok(r), true) => {
            tracing::info!(
                group,
                members = r.workers.len(),
                "placement: placing by backlog"
            )
        }
        (Ok(_), false) => {
            tracing::info!(
                group,
                "placement: the group has no member on the requests topic; hashing by job id"
            )
        }
        (Err(e), _) => {
            tracing::warn!(group, error = %e, "placement: group unreadable; hashing by job id")
        }
    }
}

/// Makes a read the view submits choose from: busy-since times carried over, the running
/// jobs' expected ends, and this submitter's placements the read has not seen yet.
fn install(shared: &Shared, read: Option<GroupRead>, running: &RunningJobs) {
    let mut state = lock(&shared.state);
    let State { view, pending } = &mut *state;
    let now = Instant::now();
    *view = read.map(
        |GroupRead {
             mut workers,
             log_end,
         }| {
            carry_busy_since(view.as_ref(), &mut workers);
            for worker in &mut workers {
                worker.running_ends_at = running.expected_end(&worker.partitions);
            }
            count_pending(pending, &mut workers, &log_end, now);
            View {
                workers,
                taken_at: now,
                mean_job: running.mean_job(),
            }
        },
    );
}

/// Adds to their workers this submitter's placements that the read did not include (not yet
/// acknowledged, or acknowledged at or past the log end read), and forgets the others.
fn count_pending(
    pending: &mut Vec<PendingPlacement>,
    workers: &mut [WorkerBacklog],
    log_end: &HashMap<(String, i32), i64>,
    now: Instant,
) {
    pending.retain(|p| {
        let end = log_end.get(&(p.topic.clone(), p.partition));
        let seen = matches!((p.offset, end), (Some(offset), Some(&end)) if end > offset);
        !seen && now.saturating_duration_since(p.placed_at) < PENDING_FOR
    });
    for p in pending.iter() {
        let holder = workers.iter_mut().find(|w| {
            w.partitions
                .iter()
                .any(|(t, q)| *q == p.partition && *t == p.topic)
        });
        if let Some(worker) = holder {
            if worker.backlog == 0 {
                worker.busy_since = p.placed_at;
            }
            worker.backlog += 1;
        }
    }
}

/// The reader of the events topic that tells how far the running jobs are; `None` (placement
/// then counts jobs only) when no consumer can be made.
fn events_reader(cfg: &SubmitterConfig) -> Option<EventsReader> {
    // librdkafka refuses `assign` without a group id; this one is never joined (no subscribe)
    // and nothing is committed under it.
    let group = format!("{}.placement-events", cfg.group_id);
    let consumer: Result<BaseConsumer, _> = cfg
        .client_config_with(&[
            ("group.id", group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
        ])
        .create();
    match consumer {
        Ok(c) => Some(EventsReader::new(c, cfg.events_topic.clone())),
        Err(e) => {
            tracing::warn!(error = %e, "placement: no events reader; placing by job counts only");
            None
        }
    }
}

/// Keeps each worker's `busy_since` from the previous view (which counts this submitter's own
/// placements) unless the worker finished a job since (its committed offsets moved) or got
/// work while it was idle; `read_backlogs` stamps every worker with the time of the read.
fn carry_busy_since(previous: Option<&View>, workers: &mut [WorkerBacklog]) {
    let Some(previous) = previous else { return };
    for worker in workers {
        let Some(before) = previous
            .workers
            .iter()
            .find(|b| b.member_id == worker.member_id)
        else {
            continue;
        };
        let finished_one = before.committed != worker.committed;
        let got_work_while_idle = before.backlog == 0 && worker.backlog > 0;
        if !finished_one && !got_work_while_idle {
            worker.busy_since = before.busy_since;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn worker(id: &str, partitions: &[i32], backlog: i64) -> WorkerBacklog {
        WorkerBacklog {
            member_id: id.into(),
            partitions: partitions.iter().map(|&p| ("t".to_string(), p)).collect(),
            backlog,
            committed: 0,
            busy_since: Instant::now(),
            running_ends_at: None,
        }
    }

    #[test]
    fn a_lane_goes_to_the_least_busy_worker_holding_one_of_its_partitions() {
        let lanes = |id: &str, high: &[i32], normal: &[i32], backlog| {
            let mut w = worker(id, &[], backlog);
            w.partitions
                .extend(high.iter().map(|&p| ("high".to_string(), p)));
            w.partitions
                .extend(normal.iter().map(|&p| ("normal".to_string(), p)));
            w
        };
        let mut view = Some(View {
            workers: vec![
                lanes("idle-without-high", &[], &[0], 0),
                lanes("busy", &[0], &[1], 5),
                lanes("less-busy", &[1, 2], &[2], 1),
            ],
            taken_at: Instant::now(),
            mean_job: None,
        });
        let mut rng = StdRng::seed_from_u64(3);
        let high = choose(&mut view, "high", Instant::now(), &mut rng).unwrap();
        assert!([1, 2].contains(&high), "{high}");
        assert_eq!(
            choose(&mut view, "normal", Instant::now(), &mut rng),
            Some(0)
        );
        assert_eq!(choose(&mut view, "batch", Instant::now(), &mut rng), None);
    }

    #[test]
    fn among_equally_busy_workers_the_one_busy_the_longest_gets_the_job() {
        let now = Instant::now();
        let busy = |id: &str, p: i32, secs: u64| {
            let mut w = worker(id, &[p], 1);
            w.busy_since = now - Duration::from_secs(secs);
            w
        };
        let mut view = Some(View {
            workers: vec![
                busy("recent", 0, 5),
                busy("longest", 1, 90),
                busy("middle", 2, 40),
            ],
            taken_at: now,
            mean_job: None,
        });
        let mut rng = StdRng::seed_from_u64(11);
        assert_eq!(choose(&mut view, "t", Instant::now(), &mut rng), Some(1));
        // "longest" now has 2 queued: the next goes to the longest-busy of the two left.
        assert_eq!(choose(&mut view, "t", Instant::now(), &mut rng), Some(2));
    }

    #[test]
    fn busy_since_moves_only_when_a_job_ends_or_an_idle_worker_gets_one() {
        let long_ago = Instant::now() - Duration::from_secs(60);
        let at = |backlog, committed| {
            let mut w = worker("w", &[0], backlog);
            w.committed = committed;
            w.busy_since = long_ago;
            w
        };
        let previous = View {
            workers: vec![at(2, 10)],
            taken_at: long_ago,
            mean_job: None,
        };
        let carried = |mut now: WorkerBacklog| {
            now.busy_since = Instant::now();
            carry_busy_since(Some(&previous), std::slice::from_mut(&mut now));
            now.busy_since
        };
        assert_eq!(
            carried(at(3, 10)),
            long_ago,
            "more queued, same job running"
        );
        assert_ne!(
            carried(at(1, 11)),
            long_ago,
            "a job ended: the next one started"
        );
        let idle = View {
            workers: vec![at(0, 10)],
            taken_at: long_ago,
            mean_job: None,
        };
        let mut got_work = at(1, 10);
        got_work.busy_since = Instant::now();
        carry_busy_since(Some(&idle), std::slice::from_mut(&mut got_work));
        assert_ne!(got_work.busy_since, long_ago, "an idle worker got a job");
    }

    #[test]
    fn chooses_the_shortest_backlog_and_counts_its_own_placements() {
        let mut view = Some(View {
            workers: vec![
                worker("a", &[0, 1], 2),
                worker("b", &[2, 3], 0),
                worker("idle-no-partitions", &[], 0),
                worker("c", &[4], 1),
            ],
            taken_at: Instant::now(),
            mean_job: None,
        });
        let mut rng = StdRng::seed_from_u64(7);
        let first = choose(&mut view, "t", Instant::now(), &mut rng).unwrap();
        assert!([2, 3].contains(&first), "{first}");
        // b now counts 1, tied with c: the next two go one to each.
        let mut next = [
            choose(&mut view, "t", Instant::now(), &mut rng).unwrap(),
            choose(&mut view, "t", Instant::now(), &mut rng).unwrap(),
        ];
        next.sort();
        assert!(next[1] == 4 && [2, 3].contains(&next[0]), "{next:?}");
        let backlogs: Vec<i64> = view
            .as_ref()
            .unwrap()
            .workers
            .iter()
            .map(|w| w.backlog)
            .collect();
        assert_eq!(backlogs, [2, 2, 0, 2]);
    }

    #[test]
    fn once_jobs_were_seen_end_to_end_the_worker_expected_to_free_first_gets_the_job() {
        let now = Instant::now();
        let running = |id: &str, p: i32, backlog, ends_in_ms: Option<u64>| {
            let mut w = worker(id, &[p], backlog);
            w.busy_since = now - Duration::from_secs(1);
            w.running_ends_at = ends_in_ms.map(|ms| now + Duration::from_millis(ms));
            w
        };
        let mut view = Some(View {
            workers: vec![
                running("ends-in-5s", 0, 1, Some(5_000)),
                running("ends-in-1s", 1, 1, Some(1_000)),
                running("ends-in-0.5s-then-one-queued", 2, 2, Some(500)),
                // No progress seen: its start plus the mean job, 1 s from now.
                running("no-progress-yet", 3, 3, None),
            ],
            taken_at: now,
            mean_job: Some(Duration::from_secs(2)),
        });
        let mut rng = StdRng::seed_from_u64(5);
        let picks: Vec<i32> = (0..4)
            .map(|_| choose(&mut view, "t", now, &mut rng).unwrap())
            .collect();
        // Expected waits 5 / 1 / 2.5 / 5 s; each job placed adds the 2 s mean to its worker:
        // 1 s (then 3), 2.5 s (then 4.5), 3 s (then 5), 4.5 s. Counting jobs would have sent
        // the first to "ends-in-5s".
        assert_eq!(picks, [1, 2, 1, 2]);

        let mut idle_first = Some(View {
            workers: vec![running("busy", 0, 1, Some(10)), worker("idle", &[1], 0)],
            taken_at: now,
            mean_job: Some(Duration::from_secs(2)),
        });
        assert_eq!(choose(&mut idle_first, "t", now, &mut rng), Some(1));
        // The idle one now has a job of the mean length; the busy one ends in 10 ms.
        assert_eq!(choose(&mut idle_first, "t", now, &mut rng), Some(0));
    }

    #[test]
    fn a_read_counts_this_submitters_placements_it_did_not_see_yet() {
        let now = Instant::now();
        let pending = |partition, offset, secs_ago| PendingPlacement {
            topic: "t".into(),
            partition,
            placed_at: now - Duration::from_secs(secs_ago),
            offset,
        };
        let mut pending = vec![
            pending(0, None, 0),    // not acknowledged yet: counted
            pending(1, Some(5), 0), // the read's log end is 6: already in its backlog
            pending(2, Some(7), 0), // landed at the log end the read saw (7): counted
            pending(2, None, 11),   // never acknowledged, too old: forgotten
        ];
        let mut workers = vec![
            worker("a", &[0], 0),
            worker("b", &[1], 3),
            worker("c", &[2], 1),
        ];
        let log_end = [(0, 0), (1, 6), (2, 7)]
            .into_iter()
            .map(|(p, end)| (("t".to_string(), p), end))
            .collect();
        count_pending(&mut pending, &mut workers, &log_end, now);
        let backlogs: Vec<i64> = workers.iter().map(|w| w.backlog).collect();
        assert_eq!(backlogs, [1, 3, 2]);
        assert_eq!(
            workers[0].busy_since, now,
            "an idle worker given a job is busy from then"
        );
        assert_eq!(pending.len(), 2);
    }

    #[tokio::test]
    async fn an_acknowledgement_gives_the_oldest_unacknowledged_placement_its_offset() {
        let placer = Placer::new(&SubmitterConfig {
            placement: Placement::Hash,
            ..Default::default()
        });
        {
            let mut state = lock(&placer.shared.state);
            for partition in [3, 3, 4] {
                state.pending.push(PendingPlacement {
                    topic: "t".into(),
                    partition,
                    placed_at: Instant::now(),
                    offset: None,
                });
            }
        }
        placer.landed("t", 3, 41);
        placer.landed("t", 3, 42);
        placer.landed("other", 4, 9);
        let offsets: Vec<_> = lock(&placer.shared.state)
            .pending
            .iter()
            .map(|p| p.offset)
            .collect();
        assert_eq!(offsets, [Some(41), Some(42), None]);
    }

    #[test]
    fn ties_are_broken_at_random() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..64 {
            let mut view = Some(View {
                workers: vec![
                    worker("a", &[0], 0),
                    worker("b", &[1], 0),
                    worker("c", &[2], 0),
                ],
                taken_at: Instant::now(),
                mean_job: None,
            });
            seen.insert(choose(&mut view, "t", Instant::now(), &mut rng).unwrap());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn no_view_a_stale_view_or_no_partitions_mean_hashing() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(choose(&mut None, "t", Instant::now(), &mut rng), None);
        let mut empty = Some(View {
            workers: vec![worker("a", &[], 0)],
            taken_at: Instant::now(),
            mean_job: None,
        });
        assert_eq!(choose(&mut empty, "t", Instant::now(), &mut rng), None);
        if let Some(old) = Instant::now().checked_sub(STALE_AFTER + Duration::from_secs(1)) {
            let mut stale = Some(View {
                workers: vec![worker("a", &[0], 0)],
                taken_at: old,
                mean_job: None,
            });
            assert_eq!(choose(&mut stale, "t", Instant::now(), &mut rng), None);
        }
    }

    #[tokio::test]
    async fn hash_placement_never_reads_the_group() {
        let placer = Placer::new(&SubmitterConfig {
            placement: Placement::Hash,
            ..Default::default()
        });
        assert_eq!(placer.partition("t", "j").await, None);
        assert_eq!(placer.fallbacks(), 0);
        assert!(placer.started.get().is_none());
    }
}
