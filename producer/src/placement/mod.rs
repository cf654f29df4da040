//! Queue-aware placement: send a request to a partition of the worker with the shortest backlog,
//! instead of the partition its key hashes to.
//!
//! Keyed by job id alone, a request lands on a hash-chosen partition and waits behind that
//! partition's busy worker while other GPUs idle (`make sim` shows how much: at 8 workers and
//! 80 % load the mean wait is ≈ 2.2 T under hashing and ≈ 0.2 T with this placement, against
//! ≈ 0.17 T for one ideal shared queue).
//!
//! A background refresher, one per [`Submitter`](crate::Submitter) and started with it, reads
//! every 250 ms:
//! - the consumer group's members and the partitions of the request topics (every lane of every
//!   routed model, [`crate::routes`]) each was assigned
//!   (`DescribeGroups`, [`parse_assignment`] over each member's assignment bytes);
//! - the group's committed offsets (a consumer with the group's `group.id` that never
//!   subscribes, so it never joins the group);
//! - the partitions' log-end offsets (and log-start, for a partition nothing was committed on).
//!
//! A worker's backlog is Σ over its partitions of every request topic of (end − committed): its
//! queued jobs in all lanes plus the one running, since workers store an offset only after the
//! job's terminal event. A submit to topic T picks, among the workers holding a partition of T,
//! the one with the smallest backlog and a random partition of T it holds, and counts the job
//! against that worker until the next refresh, so a burst spreads out. Ties between idle workers
//! go at random; ties between busy ones go to the worker busy the longest (last seen finishing
//! a job, or getting one while idle, the earliest): its job is the likeliest to end first
//! (`make sim`: at 8 workers and 80 % load this takes the mean wait from 1.5× to 1.2× the ideal).
//! When there is no usable view — no member holds a partition of T, the group cannot be
//! read, the view is older than [`STALE_AFTER`] — the request is hashed by its key exactly as
//! before, and the fallback is logged and counted ([`Placer::fallbacks`]).
//!
//! The record keeps its key (the job id), which workers require. What moves is only the
//! partition: a second submit of the same job id may now land on another partition, and so on
//! another worker (the manifest, written create-only, still keeps exactly one result; the GPU
//! time of the losing run is wasted).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::SubmitterConfig;

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
}

#[derive(Debug)]
struct View {
    workers: Vec<WorkerBacklog>,
    taken_at: Instant,
}

#[derive(Debug, Default)]
struct Shared {
    /// `None` until the first refresh, and after a refresh that found no usable member.
    view: Mutex<Option<View>>,
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
        lock(&self.shared.view)
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
        let chosen = choose(&mut lock(&self.shared.view), topic, &mut rand::rng());
        if chosen.is_none() {
            self.shared.fallbacks.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(job_id, group = %self.cfg.group_id, "placement: no usable view of the group; hashing by job id");
        }
        chosen
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

/// Picks, among the workers holding a partition of `topic`, the least-backlogged one (ties at
/// random) and a random partition of `topic` it holds, and counts the request against it.
/// `None` when the view is missing or stale, or no worker holds a partition of `topic`.
fn choose(view: &mut Option<View>, topic: &str, rng: &mut impl Rng) -> Option<i32> {
    let view = view
        .as_mut()
        .filter(|v| v.taken_at.elapsed() < STALE_AFTER)?;
    let of_topic = |w: &WorkerBacklog| -> Vec<i32> {
        w.partitions
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| *p)
            .collect()
    };
    let least = view
        .workers
        .iter()
        .filter(|w| !of_topic(w).is_empty())
        .map(|w| w.backlog)
        .min()?;
    let mut ties: Vec<usize> = (0..view.workers.len())
        .filter(|&i| !of_topic(&view.workers[i]).is_empty() && view.workers[i].backlog == least)
        .collect();
    if least > 0 {
        // Every candidate is busy: the one busy the longest is likely to free up first.
        let oldest = ties.iter().map(|&i| view.workers[i].busy_since).min()?;
        ties.retain(|&i| view.workers[i].busy_since == oldest);
    }
    let worker = &mut view.workers[ties[rng.random_range(0..ties.len())]];
    if worker.backlog == 0 {
        worker.busy_since = Instant::now();
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
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let workers = read_backlogs(&consumer, &cfg.group_id, &topics, timeout).map(|mut w| {
            carry_busy_since(lock(&shared.view).as_ref(), &mut w);
            w
        });
        let usable = matches!(&workers, Ok(w) if w.iter().any(|w| !w.partitions.is_empty()));
        if usable != shared.usable.swap(usable, Ordering::Relaxed) || n == 0 {
            match (&workers, usable) {
                (Ok(w), true) => {
                    tracing::info!(group = %cfg.group_id, members = w.len(), "placement: placing by backlog")
                }
                (Ok(_), false) => {
                    tracing::info!(group = %cfg.group_id, "placement: the group has no member on the requests topic; hashing by job id")
                }
                (Err(e), _) => {
                    tracing::warn!(group = %cfg.group_id, error = %e, "placement: group unreadable; hashing by job id")
                }
            }
        }
        *lock(&shared.view) = match workers {
            Ok(workers) if usable => Some(View {
                workers,
                taken_at: Instant::now(),
            }),
            _ => None,
        };
        n += 1;
        shared.refreshes.send_replace(n);
        let next = started + REFRESH_EVERY;
        while !shared.stop.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50).min(next - Instant::now()));
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

/// Every member of `group` with its partitions of `topics` and their backlog.
fn read_backlogs(
    consumer: &BaseConsumer,
    group: &str,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<WorkerBacklog>, String> {
    let groups = consumer
        .fetch_group_list(Some(group), timeout)
        .map_err(|e| format!("describing the group: {e}"))?;
    let mut workers = Vec::new();
    for info in groups.groups().iter().filter(|g| g.name() == group) {
        if info.protocol_type() != "consumer" && !info.protocol_type().is_empty() {
            return Err(format!("protocol type {:?}", info.protocol_type()));
        }
        for member in info.members() {
            let assigned = parse_assignment(member.assignment().unwrap_or_default())
                .map_err(|e| format!("member {}: {e}", member.id()))?;
            let partitions: Vec<(String, i32)> = assigned
                .into_iter()
                .filter(|(t, _)| topics.contains(t))
                .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p)))
                .collect();
            workers.push(WorkerBacklog {
                member_id: member.id().to_string(),
                partitions,
                backlog: 0,
                committed: 0,
                busy_since: Instant::now(),
            });
        }
    }
    let all: Vec<(String, i32)> = workers.iter().flat_map(|w| w.partitions.clone()).collect();
    if all.is_empty() {
        return Ok(workers);
    }
    let committed = consumer
        .committed_offsets(partition_list(&all, Offset::Invalid), timeout)
        .map_err(|e| format!("committed offsets: {e}"))?;
    let log_end = list_offsets(consumer, &all, Offset::End, timeout)?;
    // A partition nothing was committed on counts from its log start (records deleted by
    // retention are not waiting for anyone).
    let uncommitted: Vec<(String, i32)> = all
        .iter()
        .filter(|(t, p)| {
            !matches!(
                committed.find_partition(t, *p).map(|e| e.offset()),
                Some(Offset::Offset(_))
            )
        })
        .cloned()
        .collect();
    let log_start = if uncommitted.is_empty() {
        TopicPartitionList::new()
    } else {
        list_offsets(consumer, &uncommitted, Offset::Beginning, timeout)?
    };
    let offset_of = |list: &TopicPartitionList, topic: &str, p: i32| match list
        .find_partition(topic, p)
        .map(|e| e.offset())
    {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    };
    for worker in &mut workers {
        for (topic, p) in &worker.partitions {
            let (topic, p) = (topic.as_str(), *p);
            let high = offset_of(&log_end, topic, p)
                .ok_or_else(|| format!("no log-end offset for {topic}/{p}"))?;
            let done = offset_of(&committed, topic, p)
                .or_else(|| offset_of(&log_start, topic, p))
                .unwrap_or(0);
            worker.backlog += (high - done.min(high)).max(0);
            worker.committed += done;
        }
    }
    Ok(workers)
}

fn partition_list(partitions: &[(String, i32)], offset: Offset) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, p) in partitions {
        // Infallible for Invalid/End/Beginning: only a negative `Offset::Offset` is refused.
        let _ = tpl.add_partition_offset(topic, *p, offset);
    }
    tpl
}

/// The log-end (`Offset::End`) or log-start (`Offset::Beginning`) offsets of `partitions`, in
/// one ListOffsets request per broker rather than two round trips per partition.
fn list_offsets(
    consumer: &BaseConsumer,
    partitions: &[(String, i32)],
    which: Offset,
    timeout: Duration,
) -> Result<TopicPartitionList, String> {
    let what = if which == Offset::End {
        "log-end"
    } else {
        "log-start"
    };
    let listed = consumer
        .offsets_for_times(partition_list(partitions, which), timeout)
        .map_err(|e| format!("{what} offsets: {e}"))?;
    if let Some(failed) = listed.elements().iter().find(|e| e.error().is_err()) {
        return Err(format!(
            "{what} offset of {}/{}: {:?}",
            failed.topic(),
            failed.partition(),
            failed.error()
        ));
    }
    Ok(listed)
}

/// Why assignment bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed member assignment: {0}")]
pub struct AssignmentError(&'static str);

/// The topics and partitions of a Kafka consumer-protocol member assignment
/// (`ConsumerProtocolAssignment`, every version): i16 version, i32 topic count, per topic an
/// i16-length string and an i32 count of i32 partitions, then user data (ignored). Empty bytes —
/// a member not assigned anything yet — are an empty assignment.
pub fn parse_assignment(bytes: &[u8]) -> Result<Vec<(String, Vec<i32>)>, AssignmentError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Reader(bytes);
    let version = r.i16()?;
    if version < 0 {
        return Err(AssignmentError("negative version"));
    }
    let topics = r.i32()?;
    if topics < 0 {
        return Ok(Vec::new()); // a null array
    }
    let mut out = Vec::new();
    for _ in 0..topics {
        let len = r.i16()?;
        let len = usize::try_from(len).map_err(|_| AssignmentError("null topic name"))?;
        let name = std::str::from_utf8(r.take(len)?)
            .map_err(|_| AssignmentError("topic name is not UTF-8"))?
            .to_string();
        let count = r.i32()?;
        let count = usize::try_from(count.max(0)).unwrap_or(0);
        if count > r.0.len() / 4 {
            return Err(AssignmentError("partition count past the end"));
        }
        let partitions = (0..count).map(|_| r.i32()).collect::<Result<Vec<_>, _>>()?;
        out.push((name, partitions));
    }
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AssignmentError> {
        if self.0.len() < n {
            return Err(AssignmentError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn i16(&mut self) -> Result<i16, AssignmentError> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<i32, AssignmentError> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn assignment(version: i16, topics: &[(&str, &[i32])], user_data: &[u8]) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend((topics.len() as i32).to_be_bytes());
        for (name, parts) in topics {
            b.extend((name.len() as i16).to_be_bytes());
            b.extend(name.as_bytes());
            b.extend((parts.len() as i32).to_be_bytes());
            for p in *parts {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((user_data.len() as i32).to_be_bytes());
        b.extend(user_data);
        b
    }

    #[test]
    fn parses_topics_and_partitions_and_ignores_user_data() {
        let bytes = assignment(
            1,
            &[("t2v.requests.v1", &[0, 5, 31]), ("other", &[2])],
            b"sticky",
        );
        assert_eq!(
            parse_assignment(&bytes).unwrap(),
            vec![
                ("t2v.requests.v1".to_string(), vec![0, 5, 31]),
                ("other".to_string(), vec![2]),
            ]
        );
        let v0 = assignment(0, &[("a", &[])], &[]);
        assert_eq!(parse_assignment(&v0).unwrap(), vec![("a".into(), vec![])]);
    }

    #[test]
    fn empty_and_null_are_no_assignment() {
        assert_eq!(parse_assignment(&[]).unwrap(), vec![]);
        let mut null = 3i16.to_be_bytes().to_vec();
        null.extend((-1i32).to_be_bytes());
        assert_eq!(parse_assignment(&null).unwrap(), vec![]);
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        let bytes = assignment(1, &[("topic", &[1, 2, 3])], b"x");
        // Every cut inside the topic array is an error.
        for cut in 1..bytes.len() - 5 {
            assert!(parse_assignment(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = assignment(1, &[("t", &[])], &[]);
        huge[9..13].copy_from_slice(&i32::MAX.to_be_bytes()); // partition count
        assert!(parse_assignment(&huge).is_err());
        let mut bad_name = assignment(1, &[("t", &[1])], &[]);
        bad_name[8] = 0xff;
        assert!(parse_assignment(&bad_name).is_err());
        assert!(parse_assignment(&(-1i16).to_be_bytes()).is_err());
    }

    fn worker(id: &str, partitions: &[i32], backlog: i64) -> WorkerBacklog {
        WorkerBacklog {
            member_id: id.into(),
            partitions: partitions.iter().map(|&p| ("t".to_string(), p)).collect(),
            backlog,
            committed: 0,
            busy_since: Instant::now(),
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
        });
        let mut rng = StdRng::seed_from_u64(3);
        let high = choose(&mut view, "high", &mut rng).unwrap();
        assert!([1, 2].contains(&high), "{high}");
        assert_eq!(choose(&mut view, "normal", &mut rng), Some(0));
        assert_eq!(choose(&mut view, "batch", &mut rng), None);
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
        });
        let mut rng = StdRng::seed_from_u64(11);
        assert_eq!(choose(&mut view, "t", &mut rng), Some(1));
        // "longest" now has 2 queued: the next goes to the longest-busy of the two left.
        assert_eq!(choose(&mut view, "t", &mut rng), Some(2));
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
        });
        let mut rng = StdRng::seed_from_u64(7);
        let first = choose(&mut view, "t", &mut rng).unwrap();
        assert!([2, 3].contains(&first), "{first}");
        // b now counts 1, tied with c: the next two go one to each.
        let mut next = [
            choose(&mut view, "t", &mut rng).unwrap(),
            choose(&mut view, "t", &mut rng).unwrap(),
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
            });
            seen.insert(choose(&mut view, "t", &mut rng).unwrap());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn no_view_a_stale_view_or_no_partitions_mean_hashing() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(choose(&mut None, "t", &mut rng), None);
        let mut empty = Some(View {
            workers: vec![worker("a", &[], 0)],
            taken_at: Instant::now(),
        });
        assert_eq!(choose(&mut empty, "t", &mut rng), None);
        if let Some(old) = Instant::now().checked_sub(STALE_AFTER + Duration::from_secs(1)) {
            let mut stale = Some(View {
                workers: vec![worker("a", &[0], 0)],
                taken_at: old,
            });
            assert_eq!(choose(&mut stale, "t", &mut rng), None);
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
