//! Unit tests of the chaos suite's bookkeeping: the interruption pairs behind "steps redone",
//! busy-worker detection and the seeded fault schedule.

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
    assert_eq!(interruptions(&events, "a"), vec![(5, 4), (9, 8)]);
    assert_eq!(interruptions(&events, "b"), vec![]);
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
