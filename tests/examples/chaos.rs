//! `make chaos`: the fault-injection suite at full size against the shared stack
//! (`make up`; build the worker first: `cargo build -p t2v-worker`). Kills and restarts the
//! Kafka broker and stops and starts the S3 server — run it alone. Prints the table of
//! [`t2v_tests::chaos::ChaosReport`] and exits 1 when an invariant broke.
//!
//! `cargo run -p t2v-tests --example chaos -- [--jobs 20] [--workers 3] [--faults 10] [--seed 7]
//!  [--steps 40] [--step-ms 150] [--checkpoint-every 2] [--no-kafka] [--no-s3]`

use t2v_tests::chaos::{run, ChaosConfig};

fn parse(args: &[String]) -> Result<ChaosConfig, String> {
    let mut cfg = ChaosConfig::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || -> Result<u64, String> {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value"))?
                .parse()
                .map_err(|e| format!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--jobs" => cfg.jobs = value()? as usize,
            "--workers" => cfg.workers = value()? as usize,
            "--faults" => cfg.faults = value()? as usize,
            "--seed" => cfg.seed = value()?,
            "--steps" => cfg.steps = value()? as u32,
            "--step-ms" => cfg.step_ms = value()?,
            "--checkpoint-every" => cfg.checkpoint_every = value()? as u32,
            "--no-kafka" => cfg.kafka_faults = false,
            "--no-s3" => cfg.s3_faults = false,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(cfg)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = parse(&args).unwrap_or_else(|e| {
        eprintln!("chaos: {e}");
        std::process::exit(2)
    });
    eprintln!("chaos: {cfg:?}");
    let report = run(&cfg).await;
    println!("{}", report.table());
    if !report.violations.is_empty() {
        std::process::exit(1);
    }
}
