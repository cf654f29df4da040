//! When each worker's current job will end, as the workers' own events tell it.
//!
//! The backlog counts jobs, but a worker two seconds from the end of its job frees sooner than
//! one that has just started: one shared queue gives the next job to whoever frees first, and so
//! placement must know who that is. The refresher reads the events topic from its end and
//! follows each job: `Accepted` names the request partition it came from (hence the worker that
//! holds that partition), `Progress.eta_ms` says how long its denoising has left, and the
//! terminal event ends it. What follows the last step (VAE decode, encoding, upload) is learnt
//! as the mean gap between the last predicted end and the terminal event, and the mean job —
//! for queued jobs and for running ones with no progress yet — as the mean time from `Accepted`
//! to the terminal event.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use t2v_proto::v1::generation_event::Kind;
use t2v_proto::v1::GenerationEvent;

/// Weight of the newest job in the running means.
const SMOOTHING: f64 = 0.2;
/// Events handled per refresh at most, so one refresh never stalls on a flood.
const EVENTS_PER_REFRESH: usize = 20_000;

/// A request partition: (topic, partition).
type RequestPartition = (String, i32);

#[derive(Debug)]
struct Running {
    job_id: String,
    accepted_at: Instant,
    /// When denoising will end, from the last Progress's `eta_ms`.
    denoised_by: Option<Instant>,
}

/// The jobs running on the request partitions, and what the fleet's jobs take on average.
#[derive(Debug, Default)]
pub struct RunningJobs {
    by_partition: HashMap<RequestPartition, Running>,
    partition_of: HashMap<String, RequestPartition>,
    /// Accepted → terminal event, seconds.
    mean_job: Option<f64>,
    /// Terminal event − the last predicted end of denoising, seconds (may be negative).
    mean_tail: Option<f64>,
}

fn smooth(mean: &mut Option<f64>, sample: f64) {
    *mean = Some(match *mean {
        Some(m) => m + SMOOTHING * (sample - m),
        None => sample,
    });
}

impl RunningJobs {
    /// Takes one event in, seen at `at`.
    pub fn observe(&mut self, event: &GenerationEvent, at: Instant) {
        match &event.kind {
            Some(Kind::Accepted(a)) if !a.request_topic.is_empty() => {
                let partition = (a.request_topic.clone(), a.request_partition);
                if let Some(previous) = self.by_partition.remove(&partition) {
                    self.partition_of.remove(&previous.job_id);
                }
                self.partition_of
                    .insert(event.job_id.clone(), partition.clone());
                self.by_partition.insert(
                    partition,
                    Running {
                        job_id: event.job_id.clone(),
                        accepted_at: at,
                        denoised_by: None,
                    },
                );
            }
            Some(Kind::Progress(p)) => {
                if let Some(running) = self.running_mut(&event.job_id) {
                    running.denoised_by = Some(at + Duration::from_millis(p.eta_ms));
                }
            }
            Some(Kind::Completed(_) | Kind::Failed(_) | Kind::Canceled(_)) => {
                let Some(partition) = self.partition_of.remove(&event.job_id) else {
                    return;
                };
                let Some(running) = self.by_partition.remove(&partition) else {
                    return;
                };
                smooth(
                    &mut self.mean_job,
                    at.duration_since(running.accepted_at).as_secs_f64(),
                );
                if let Some(denoised_by) = running.denoised_by {
                    let tail = if at >= denoised_by {
                        at.duration_since(denoised_by).as_secs_f64()
                    } else {
                        -denoised_by.duration_since(at).as_secs_f64()
                    };
                    smooth(&mut self.mean_tail, tail);
                }
            }
            _ => {}
        }
    }

    fn running_mut(&mut self, job_id: &str) -> Option<&mut Running> {
        let partition = self.partition_of.get(job_id)?;
        self.by_partition
            .get_mut(partition)
            .filter(|r| r.job_id == job_id)
    }

    /// The mean job, once one was seen from Accepted to its end.
    pub fn mean_job(&self) -> Option<Duration> {
        self.mean_job.map(Duration::from_secs_f64)
    }

    /// When the job running on one of `partitions` (a worker's) is expected to end: its last
    /// progress plus the mean tail, or its start plus the mean job; `None` when no job is known
    /// to run there.
    pub fn expected_end(&self, partitions: &[RequestPartition]) -> Option<Instant> {
        let running = partitions
            .iter()
            .filter_map(|p| self.by_partition.get(p))
            .max_by_key(|r| r.accepted_at)?;
        match (running.denoised_by, self.mean_tail) {
            (Some(denoised_by), Some(tail)) if tail >= 0.0 => {
                Some(denoised_by + Duration::from_secs_f64(tail))
            }
            (Some(denoised_by), Some(tail)) => {
                Some(denoised_by.checked_sub(Duration::from_secs_f64(-tail))?)
            }
            (Some(denoised_by), None) => Some(denoised_by),
            (None, _) => Some(running.accepted_at + self.mean_job()?),
        }
    }
}

/// Reads the events topic from its end (no consumer group, nothing committed), for
/// [`RunningJobs`].
pub struct EventsReader {
    consumer: BaseConsumer,
    topic: String,
    assigned: bool,
}

impl EventsReader {
    pub fn new(consumer: BaseConsumer, topic: String) -> Self {
        Self {
            consumer,
            topic,
            assigned: false,
        }
    }

    /// Feeds every event that arrived since the last call into `jobs`. The first call assigns
    /// the topic's partitions at their end; until that works (the topic does not exist yet,
    /// the broker is down), it tries again on each call and reads nothing.
    pub fn read_into(&mut self, jobs: &mut RunningJobs, timeout: Duration) -> Result<(), String> {
        if !self.assigned {
            self.assign(timeout)?;
        }
        for _ in 0..EVENTS_PER_REFRESH {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(e)) => return Err(format!("reading {}: {e}", self.topic)),
                Some(Ok(message)) => {
                    let payload = message.payload().unwrap_or_default();
                    if let Ok(event) = <GenerationEvent as prost::Message>::decode(payload) {
                        jobs.observe(&event, Instant::now());
                    }
                }
            }
        }
        Ok(())
    }

    fn assign(&mut self, timeout: Duration) -> Result<(), String> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(|e| format!("metadata of {}: {e}", self.topic))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("the events topic {} does not exist", self.topic))?;
        let mut list = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            list.add_partition_offset(&self.topic, p, Offset::End)
                .map_err(|e| e.to_string())?;
        }
        self.consumer
            .assign(&list)
            .map_err(|e| format!("assigning {}: {e}", self.topic))?;
        self.assigned = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use t2v_proto::v1::{Accepted, Completed, Failed, Progress};

    fn event(job: &str, kind: Kind) -> GenerationEvent {
        GenerationEvent {
            job_id: job.into(),
            kind: Some(kind),
            ..Default::default()
        }
    }

    fn accepted(job: &str, partition: i32) -> GenerationEvent {
        event(
            job,
            Kind::Accepted(Accepted {
                queue_wait_ms: 0,
                request_topic: "t".into(),
                request_partition: partition,
            }),
        )
    }

    fn progress(job: &str, eta_ms: u64) -> GenerationEvent {
        event(
            job,
            Kind::Progress(Progress {
                eta_ms,
                ..Default::default()
            }),
        )
    }

    fn done(job: &str) -> GenerationEvent {
        event(job, Kind::Completed(Completed::default()))
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_job_ends_at_its_last_eta_plus_the_mean_tail_and_the_mean_fills_in_before_progress() {
        let t0 = Instant::now();
        let mut jobs = RunningJobs::default();
        let p0 = [("t".to_string(), 0)];
        // One job seen whole: 10 s from Accepted to Completed, its denoising predicted to end 2 s
        // before Completed.
        jobs.observe(&accepted("a", 0), t0);
        assert_eq!(jobs.expected_end(&p0), None, "no mean yet, no progress");
        jobs.observe(&progress("a", 5_000), t0 + 3 * SEC);
        assert_eq!(jobs.expected_end(&p0), Some(t0 + 8 * SEC));
        jobs.observe(&done("a"), t0 + 10 * SEC);
        assert_eq!(jobs.mean_job(), Some(10 * SEC));
        assert_eq!(jobs.expected_end(&p0), None, "nothing runs there now");

        let t1 = t0 + 20 * SEC;
        jobs.observe(&accepted("b", 0), t1);
        assert_eq!(
            jobs.expected_end(&p0),
            Some(t1 + 10 * SEC),
            "no progress: the mean job"
        );
        jobs.observe(&progress("b", 1_000), t1 + SEC);
        assert_eq!(
            jobs.expected_end(&p0),
            Some(t1 + 4 * SEC),
            "eta + the 2 s tail"
        );
        assert_eq!(jobs.expected_end(&[("t".to_string(), 1)]), None);
        assert_eq!(jobs.expected_end(&[("other".to_string(), 0)]), None);
    }

    #[test]
    fn a_new_job_on_a_partition_replaces_one_whose_end_was_never_seen() {
        let t0 = Instant::now();
        let mut jobs = RunningJobs::default();
        jobs.observe(&accepted("warmup", 3), t0);
        jobs.observe(&done("warmup"), t0 + 4 * SEC);
        // "lost" never ends (its worker died); "next" is accepted on the same partition.
        jobs.observe(&accepted("lost", 0), t0 + 5 * SEC);
        jobs.observe(&accepted("next", 0), t0 + 9 * SEC);
        let p0 = [("t".to_string(), 0)];
        assert_eq!(jobs.expected_end(&p0), Some(t0 + 13 * SEC));
        // Late events of the lost job change nothing.
        jobs.observe(&progress("lost", 60_000), t0 + 10 * SEC);
        jobs.observe(
            &event("lost", Kind::Failed(Failed::default())),
            t0 + 11 * SEC,
        );
        assert_eq!(jobs.expected_end(&p0), Some(t0 + 13 * SEC));
        assert_eq!(jobs.mean_job(), Some(4 * SEC));
        assert!(jobs.partition_of.len() <= 1 && jobs.by_partition.len() == 1);
    }

    #[test]
    fn accepted_events_without_a_partition_are_ignored() {
        let mut jobs = RunningJobs::default();
        jobs.observe(
            &event("old", Kind::Accepted(Accepted::default())),
            Instant::now(),
        );
        assert!(jobs.by_partition.is_empty() && jobs.partition_of.is_empty());
    }

    #[test]
    fn the_means_follow_recent_jobs() {
        let t0 = Instant::now();
        let mut jobs = RunningJobs::default();
        for (i, secs) in [10u64, 10, 2, 2, 2, 2, 2, 2, 2, 2].iter().enumerate() {
            let at = t0 + Duration::from_secs(100 * i as u64);
            let job = format!("j{i}");
            jobs.observe(&accepted(&job, 0), at);
            jobs.observe(&done(&job), at + Duration::from_secs(*secs));
        }
        let mean = jobs.mean_job().unwrap().as_secs_f64();
        assert!((2.0..3.5).contains(&mean), "{mean}");
    }
}
