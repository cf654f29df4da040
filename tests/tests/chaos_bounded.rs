//! The bounded fault-injection suite of `make test`: 8 jobs on 2 workers, 5 faults —
//! SIGKILL and SIGTERM of busy workers and one stop/start of the S3 server; no Kafka kill (the
//! full `make chaos` does that) — with garbage, invalid and duplicate submissions. Every
//! invariant of [`t2v_tests::chaos`] must hold. The only test in this binary, because it stops
//! the shared S3 server (cargo runs test binaries one after another); the guard starts it again
//! on failure.

use std::time::Duration;

use t2v_tests::chaos::{run, ChaosConfig};

#[tokio::test]
async fn jobs_survive_worker_kills_and_an_s3_outage_with_nothing_lost_or_duplicated() {
    let cfg = ChaosConfig {
        jobs: 8,
        workers: 2,
        faults: 5,
        seed: 11,
        steps: 30,
        step_ms: 120,
        checkpoint_every: 2,
        kafka_faults: false,
        s3_faults: true,
        garbage: 2,
        invalid: 2,
        duplicates: 2,
        settle: Duration::from_secs(120),
    };
    let report = run(&cfg).await;
    println!("{}", report.table());
    assert!(report.violations.is_empty(), "{}", report.table());
    assert!(report.lost.is_empty() && report.duplicate_outputs.is_empty());
    assert_eq!(
        report.faults.values().sum::<usize>(),
        5,
        "{:?}",
        report.faults
    );
    assert!(
        report.faults.contains_key("WorkerKill") && report.faults.contains_key("WorkerTerm"),
        "{:?}",
        report.faults
    );
    assert!(
        report.interruptions > 0,
        "a fault interrupted a running job"
    );
    assert!(report.max_redone <= cfg.checkpoint_every as u64);
}
