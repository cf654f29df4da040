//! Unit tests of the chaos suite's bookkeeping: runs, interruptions and overlaps behind "steps
//! redone", the S3-outage rule, busy-worker detection and the seeded fault schedule.

use super::*;
use t2v_proto::v1::{Completed, Progress, Started};

fn event(worker: &str, job: &str, kind: Kind) -> GenerationEvent {
    GenerationEvent {
        worker_id: worker.into(),
        job_id: job.into(),
        kind: Some(kind),
        ..Default::default()
    }
}

fn started(from: u32) -> Kind {
    Kind::Started(Started {
        resumed_from_step: from,
        ..Default::default()
    })
}

fn progress(step: u32) -> Kind {
    Kind::Progress(Progress {
        step,
        ..Default::default()
    })
}

/// `event` with an emission time (Unix ms).
fn at(ms: u64, worker: &str, job: &str, kind: Kind) -> GenerationEvent {
    GenerationEvent {
        emitted_at_unix_ms: ms,
        ..event(worker, job, kind)
    }
}

fn pairs(runs: &JobRuns) -> Vec<(u32, u32)> {
    runs.interruptions
        .iter()
        .map(|i| (i.before, i.from))
        .collect()
}

fn outage(from_ms: u64, to_ms: u64) -> Outage {
    Outage { from_ms, to_ms }
}

/// (interruptions, of which during an S3 outage, max steps redone with S3 up).
fn redo_counts(report: &ChaosReport) -> (usize, usize, u64) {
    (
        report.interruptions,
        report.outage_interruptions,
        report.max_redone,
    )
}

fn chaos_cfg() -> ChaosConfig {
    ChaosConfig {
        checkpoint_every: 2,
        ..ChaosConfig::default()
    }
}

/// The report fields `check` fills from the events and the outages alone.
fn redo_report(events: &[GenerationEvent], outages: &[Outage]) -> ChaosReport {
    let mut report = ChaosReport {
        s3_outages: outages.to_vec(),
        ..Default::default()
    };
    steps_redone(&chaos_cfg(), &["a".to_string()], events, &mut report);
    report
}

#[test]
fn interruptions_pair_the_step_reached_with_the_resume_step() {
    let events = vec![
        event("w1", "a", started(0)),
        event("w1", "a", progress(1)),
        event("w1", "b", started(0)),
        event("w1", "a", progress(5)),
        // w1 killed at step 5; w2 resumes a at 4, then is killed again at 9 → resume at 8.
        event("w2", "a", started(4)),
        event("w2", "a", progress(9)),
        event("w3", "a", started(8)),
        event("w3", "a", progress(10)),
        event("w3", "a", Kind::Completed(Completed::default())),
        // A duplicate submission after completion starts nothing new to count.
        event("w3", "a", started(0)),
    ];
    let a = interruptions(&events, "a");
    assert_eq!(pairs(&a), vec![(5, 4), (9, 8)]);
    assert_eq!(a.overlaps, 0);
    assert_eq!(interruptions(&events, "b"), JobRuns::default());
}

#[test]
fn a_run_still_reporting_after_a_new_started_is_an_overlap_not_an_interruption() {
    // The colleague's job-005: w1 runs on to step 30 after the partition moved to w2, which
    // resumed from the last stored checkpoint (22); w1 commits, w2's manifest is a duplicate.
    let mut events = vec![event("w1", "a", started(0))];
    events.extend((1..=24).map(|s| event("w1", "a", progress(s))));
    events.push(event("w2", "a", started(22)));
    events.extend((25..=30).map(|s| event("w1", "a", progress(s))));
    events.push(event("w2", "a", progress(23)));
    events.push(event("w1", "a", Kind::Completed(Completed::default())));
    events.push(event("w2", "a", progress(24)));
    events.push(event("w2", "a", Kind::Completed(Completed::default())));
    let runs = interruptions(&events, "a");
    assert_eq!(runs.overlaps, 1);
    assert_eq!(pairs(&runs), vec![]);
    let report = redo_report(&events, &[]);
    assert_eq!(
        (report.overlaps, report.interruptions, report.max_redone),
        (1, 0, 0)
    );
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

#[test]
fn an_overlap_does_not_pair_a_run_that_an_earlier_started_already_followed() {
    // w1 killed at 6, w2 resumes at 6 (an interruption); the partition moves on to w3 while
    // w2 still runs: w3's Started is an overlap only, not a second pair for w1's kill.
    let events = vec![
        event("w1", "a", started(0)),
        event("w1", "a", progress(6)),
        event("w2", "a", started(6)),
        event("w2", "a", progress(7)),
        event("w3", "a", started(6)),
        event("w2", "a", progress(8)),
        event("w3", "a", progress(7)),
    ];
    let runs = interruptions(&events, "a");
    assert_eq!(pairs(&runs), vec![(6, 6)]);
    assert_eq!(runs.overlaps, 1);
}

#[test]
fn a_kill_then_a_resume_on_another_worker_counts_the_steps_redone() {
    // w1 (busy with job b too) is killed after step 7 of a; its checkpoint at 6 was stored.
    // w2 resumes at 6, is killed after 9 with nothing reported since 8; w3 resumes at 8.
    let events = vec![
        at(1_000, "w1", "a", started(0)),
        at(1_100, "w1", "a", progress(6)),
        at(1_150, "w1", "b", started(0)),
        at(1_200, "w1", "a", progress(7)),
        at(5_000, "w2", "a", started(6)),
        at(5_100, "w2", "a", progress(9)),
        at(8_000, "w3", "a", started(8)),
        at(8_100, "w3", "a", progress(10)),
        at(8_200, "w3", "a", Kind::Completed(Completed::default())),
    ];
    let runs = interruptions(&events, "a");
    assert_eq!(pairs(&runs), vec![(7, 6), (9, 8)]);
    assert_eq!(runs.interruptions[0].earlier_started_ms, 1_000);
    assert_eq!(runs.interruptions[1].earlier_started_ms, 5_000);
    assert_eq!(runs.interruptions[1].resumed_ms, 8_000);
    // An outage long before the runs excuses nothing.
    let report = redo_report(&events, &[outage(100, 900)]);
    assert_eq!(
        (
            report.interruptions,
            report.steps_redone,
            report.max_redone,
            report.outage_interruptions,
            report.resumed_jobs
        ),
        (2, 2, 1, 0, 1)
    );
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

#[test]
fn a_started_written_twice_by_a_producer_retry_starts_no_new_run() {
    let events = vec![
        at(1_000, "w1", "a", started(4)),
        at(1_100, "w1", "a", progress(5)),
        at(1_000, "w1", "a", started(4)),
        at(1_200, "w1", "a", progress(6)),
    ];
    assert_eq!(interruptions(&events, "a"), JobRuns::default());
}

#[test]
fn a_worker_restarting_its_own_run_ends_the_earlier_one() {
    // w1's attempt fails retryably at step 5 (storage), w1 itself retries from 4.
    let events = vec![
        event("w1", "a", started(0)),
        event("w1", "a", progress(5)),
        event(
            "w1",
            "a",
            Kind::Failed(t2v_proto::v1::Failed {
                retryable: true,
                ..Default::default()
            }),
        ),
        event("w1", "a", started(4)),
        event("w1", "a", progress(6)),
    ];
    let runs = interruptions(&events, "a");
    assert_eq!((pairs(&runs), runs.overlaps), (vec![(5, 4)], 0));
}

#[test]
fn a_redo_beyond_the_bound_while_s3_was_down_is_reported_apart() {
    // w1 reaches 30 while its checkpoint writes after 22 fail (S3 down 3–6 s), then is killed;
    // w2 resumes from the last stored checkpoint, 22.
    let events = vec![
        at(1_000, "w1", "a", started(0)),
        at(2_000, "w1", "a", progress(22)),
        at(7_000, "w1", "a", progress(30)),
        at(9_000, "w2", "a", started(22)),
        at(9_100, "w2", "a", progress(23)),
    ];
    let report = redo_report(&events, &[outage(3_000, 6_000)]);
    assert_eq!(
        (
            report.interruptions,
            report.outage_interruptions,
            report.outage_steps_redone,
            report.outage_max_redone,
            report.max_redone
        ),
        (1, 1, 8, 8, 0)
    );
    assert_eq!(
        report.interruption_lines,
        vec!["a: reached 30, resumed at 22: 8 redone (S3 outage)".to_string()]
    );
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

#[test]
fn a_redo_beyond_the_bound_with_s3_up_is_a_violation() {
    // The same runs, the outage over before w1 started: w1 should have stored 28 or 30.
    let events = vec![
        at(10_000, "w1", "a", started(0)),
        at(12_000, "w1", "a", progress(22)),
        at(17_000, "w1", "a", progress(30)),
        at(19_000, "w2", "a", started(22)),
    ];
    let report = redo_report(&events, &[outage(3_000, 9_999)]);
    assert_eq!(redo_counts(&report), (1, 0, 8));
    assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
    assert!(
        report.violations[0].contains("8 steps redone after reaching step 30, resumed at 22"),
        "{}",
        report.violations[0]
    );
    // An outage after the resume excuses nothing either.
    let late = redo_report(&events, &[outage(19_001, 25_000)]);
    assert_eq!(late.violations.len(), 1, "{:?}", late.violations);
}

#[test]
fn the_outage_window_is_taken_from_the_latest_run_that_reached_the_step() {
    // w1 reaches 30 during the outage; w2 reaches 30 again with S3 up and should have stored
    // its checkpoint, so w3 resuming at 22 is a violation despite w1's outage.
    let events = vec![
        at(1_000, "w1", "a", started(0)),
        at(5_000, "w1", "a", progress(30)),
        at(8_000, "w2", "a", started(22)),
        at(9_000, "w2", "a", progress(30)),
        at(10_000, "w3", "a", started(22)),
    ];
    let report = redo_report(&events, &[outage(3_000, 6_000)]);
    assert_eq!(redo_counts(&report), (2, 1, 8));
    assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
}

#[test]
fn busy_workers_are_those_between_started_and_a_terminal_event() {
    let events = vec![
        event("w1", "a", started(0)),
        event("w2", "b", started(0)),
        event("w2", "b", progress(3)),
        event("w1", "a", Kind::Completed(Completed::default())),
        event("w3", "c", started(0)),
        // A terminal event of another job does not free w3.
        event("w3", "b", Kind::Completed(Completed::default())),
    ];
    let busy: Vec<String> = busy_workers(&events).into_iter().collect();
    assert_eq!(busy, vec!["w2".to_string(), "w3".to_string()]);
}

#[test]
fn the_schedule_is_seeded_and_has_every_enabled_kind() {
    let cfg = ChaosConfig::default();
    let a = schedule(&cfg, &mut Rng(3));
    assert_eq!(a, schedule(&cfg, &mut Rng(3)));
    assert_eq!(a.len(), cfg.faults);
    for kind in [
        Fault::WorkerKill,
        Fault::WorkerTerm,
        Fault::KafkaKill,
        Fault::S3Stop,
    ] {
        assert!(a.contains(&kind), "{a:?}");
    }
    let quiet = ChaosConfig {
        kafka_faults: false,
        s3_faults: false,
        ..cfg
    };
    assert!(schedule(&quiet, &mut Rng(3))
        .iter()
        .all(|f| matches!(f, Fault::WorkerKill | Fault::WorkerTerm)));
}
