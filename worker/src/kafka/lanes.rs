//! Priority lanes: the request topics a fleet reads, highest first (schemas/topics.yaml), and
//! which lane the next job comes from.
//!
//! Whenever a job is about to start, the worker looks at its lanes' backlogs on its own
//! partitions (log-end offset past the consumer's position). The job starts when no higher lane
//! has a backlog; otherwise its record is given back and the worker fetches only from the higher
//! lane. So a high-priority request placed on a worker's partition starts as soon as that worker
//! finishes its current job, whatever waits in the lower lanes.
//!
//! Aging keeps lower lanes from starving: a lane seen with a backlog at a decision while others
//! were served, for `lane_aging_secs` or longer, gives the next job (the longest-waiting such lane
//! first). A lane with a backlog therefore waits at most about `lane_aging_secs` plus one job per
//! lane above it before one of its jobs starts.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

/// What to do with the record about to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Start it.
    Start,
    /// Give it back and take the next job from this lane (index, highest lane 0).
    Prefer(usize),
}

/// The lanes of this worker and since when each has waited.
#[derive(Debug)]
pub struct Lanes {
    topics: Vec<String>,
    aging: Duration,
    /// When each lane was first seen with a backlog at a decision that did not serve it.
    waiting_since: Vec<Option<Instant>>,
}

impl Lanes {
    /// `topics`: highest lane first. `aging`: zero means strict priority.
    pub fn new(topics: Vec<String>, aging: Duration) -> Self {
        let n = topics.len();
        Self {
            topics,
            aging,
            waiting_since: vec![None; n],
        }
    }

    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// One lane only: nothing to choose.
    pub fn is_single(&self) -> bool {
        self.topics.len() <= 1
    }

    /// The lane of `topic` (0 = highest); a topic not among the lanes counts as the lowest.
    pub fn rank(&self, topic: &str) -> usize {
        self.topics
            .iter()
            .position(|t| t == topic)
            .unwrap_or(self.topics.len().saturating_sub(1))
    }

    /// Decides for a record of lane `candidate`, given which lanes have a backlog besides it.
    pub fn choose(&mut self, candidate: usize, backlog: &[bool], now: Instant) -> Choice {
        let waiting =
            |lane: usize| lane == candidate || backlog.get(lane).copied().unwrap_or(false);
        for lane in 0..self.topics.len() {
            if waiting(lane) {
                self.waiting_since[lane].get_or_insert(now);
            } else {
                self.waiting_since[lane] = None;
            }
        }
        let aged = if self.aging.is_zero() {
            None
        } else {
            (0..self.topics.len())
                .filter_map(|lane| self.waiting_since[lane].map(|since| (since, lane)))
                .filter(|(since, _)| now.saturating_duration_since(*since) >= self.aging)
                .min()
                .map(|(_, lane)| lane)
        };
        let highest = (0..self.topics.len())
            .find(|&lane| waiting(lane))
            .unwrap_or(candidate);
        match aged.unwrap_or(highest) {
            lane if lane == candidate => Choice::Start,
            lane => Choice::Prefer(lane),
        }
    }

    /// A job of `lane` started: it waits no more.
    pub fn started(&mut self, lane: usize) {
        if let Some(since) = self.waiting_since.get_mut(lane) {
            *since = None;
        }
    }
}

/// For each lane, whether any partition this consumer holds has records past its position.
/// Unreadable offsets count as no backlog (the job then starts as without lanes).
pub fn backlogs<C: ConsumerContext>(consumer: &StreamConsumer<C>, lanes: &Lanes) -> Vec<bool> {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let mut waiting = vec![false; lanes.topics().len()];
    let Ok(assigned) = consumer.assignment() else {
        return waiting;
    };
    let positions = consumer.position().unwrap_or_default();
    let mut unpositioned = TopicPartitionList::new();
    for e in assigned.elements() {
        let known = positions
            .find_partition(e.topic(), e.partition())
            .is_some_and(|p| matches!(p.offset(), Offset::Offset(_)));
        if !known {
            unpositioned.add_partition(e.topic(), e.partition());
        }
    }
    let committed = if unpositioned.count() > 0 {
        consumer
            .committed_offsets(unpositioned, TIMEOUT)
            .unwrap_or_default()
    } else {
        TopicPartitionList::new()
    };
    for e in assigned.elements() {
        let lane = lanes.rank(e.topic());
        if waiting[lane] {
            continue;
        }
        let (topic, partition) = (e.topic(), e.partition());
        let Ok((low, high)) = consumer.fetch_watermarks(topic, partition, TIMEOUT) else {
            tracing::debug!(
                topic,
                partition,
                "lanes: watermarks unreadable; counted as empty"
            );
            continue;
        };
        let next = [&positions, &committed]
            .iter()
            .find_map(
                |list| match list.find_partition(topic, partition)?.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                },
            )
            .unwrap_or(low);
        waiting[lane] = high > next.max(low);
    }
    waiting
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(aging_s: u64) -> Lanes {
        Lanes::new(
            vec!["high".into(), "normal".into(), "batch".into()],
            Duration::from_secs(aging_s),
        )
    }

    #[test]
    fn a_record_waits_for_any_higher_lane_with_a_backlog() {
        let mut l = lanes(600);
        let now = Instant::now();
        assert_eq!(l.choose(2, &[true, false, false], now), Choice::Prefer(0));
        assert_eq!(l.choose(2, &[false, true, false], now), Choice::Prefer(1));
        assert_eq!(l.choose(1, &[false, false, true], now), Choice::Start);
        assert_eq!(l.choose(0, &[false, true, true], now), Choice::Start);
        assert_eq!(l.choose(2, &[false, false, false], now), Choice::Start);
    }

    #[test]
    fn a_lane_that_waited_past_the_aging_time_goes_first() {
        let mut l = lanes(600);
        let t0 = Instant::now();
        // The batch lane is seen waiting while high jobs are served.
        assert_eq!(l.choose(0, &[false, false, true], t0), Choice::Start);
        l.started(0);
        let later = t0 + Duration::from_secs(599);
        assert_eq!(l.choose(0, &[true, false, true], later), Choice::Start);
        l.started(0);
        let aged = t0 + Duration::from_secs(600);
        assert_eq!(l.choose(0, &[true, false, true], aged), Choice::Prefer(2));
        // Its record then starts, and the lane waits afresh.
        assert_eq!(l.choose(2, &[true, false, false], aged), Choice::Start);
        l.started(2);
        assert_eq!(l.choose(2, &[true, false, true], aged), Choice::Prefer(0));
    }

    #[test]
    fn the_longest_waiting_aged_lane_goes_first_and_a_drained_lane_forgets() {
        let mut l = lanes(10);
        let t0 = Instant::now();
        l.choose(0, &[false, false, true], t0);
        l.started(0);
        l.choose(0, &[false, true, true], t0 + Duration::from_secs(5));
        l.started(0);
        let t = t0 + Duration::from_secs(20);
        assert_eq!(l.choose(0, &[false, true, true], t), Choice::Prefer(2));
        // The batch lane emptied meanwhile (another worker took it): it is forgotten.
        let mut m = lanes(10);
        m.choose(0, &[false, false, true], t0);
        m.started(0);
        m.choose(0, &[false, false, false], t0 + Duration::from_secs(5));
        m.started(0);
        assert_eq!(
            m.choose(0, &[false, false, true], t0 + Duration::from_secs(11)),
            Choice::Start
        );
    }

    #[test]
    fn zero_aging_is_strict_priority_and_one_lane_never_chooses() {
        let mut l = lanes(0);
        let t0 = Instant::now();
        l.choose(0, &[false, false, true], t0);
        assert_eq!(
            l.choose(0, &[false, false, true], t0 + Duration::from_secs(86_400)),
            Choice::Start
        );
        let single = Lanes::new(vec!["only".into()], Duration::from_secs(1));
        assert!(single.is_single());
        assert_eq!(single.rank("other"), 0);
    }
}
