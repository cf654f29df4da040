//! `make soak`: the long fault-injection benchmark of [`t2v_tests::chaos::soak`] against the
//! shared stack (`make up`; build the worker first: `cargo build -p t2v-worker`). Kills and
//! restarts the Kafka broker and stops and starts the S3 server for minutes — run it alone,
//! never next to `make test`. Prints the table and exits 1 when anything was lost or
//! duplicated, an output does not match its manifest, or the contract was broken.
//!
//! `cargo run -p t2v-tests --example soak -- [--minutes 10] [--jobs 300] [--workers 4]
//!  [--seed N (default: the clock; printed)] [--steps 24] [--step-ms 100] [--checkpoint-every 4]
//!  [--step-timeout 5] [--fault-gap MIN-MAX seconds, 6-18] [--garbage N] [--oversized N]
//!  [--duplicates N] [--late-cancels N] [--conflicts N] [--settle SECS] [--no-hang]
//!  [--no-kafka] [--no-s3]`

use std::time::Duration;

use t2v_tests::chaos::soak::{run, SoakConfig};

fn parse(args: &[String]) -> Result<SoakConfig, String> {
    // --jobs first: the special submissions scale with it unless given.
    let jobs = args
        .iter()
        .position(|a| a == "--jobs")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<usize>().map_err(|e| format!("--jobs: {e}")))
        .transpose()?
        .unwrap_or(300);
    let mut cfg = SoakConfig::for_jobs(jobs);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut text = || -> Result<&String, String> {
            it.next().ok_or_else(|| format!("{flag} needs a value"))
        };
        let num =
            |v: &String| -> Result<u64, String> { v.parse().map_err(|e| format!("{flag}: {e}")) };
        match flag.as_str() {
            "--minutes" => cfg.minutes = text()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--jobs" => cfg.jobs = num(text()?)? as usize,
            "--workers" => cfg.workers = num(text()?)? as usize,
            "--seed" => cfg.seed = num(text()?)?,
            "--steps" => cfg.steps = num(text()?)? as u32,
            "--step-ms" => cfg.step_ms = num(text()?)?,
            "--checkpoint-every" => cfg.checkpoint_every = num(text()?)? as u32,
            "--step-timeout" => cfg.step_timeout_secs = num(text()?)?,
            "--fault-gap" => {
                let v = text()?;
                let (lo, hi) = v.split_once('-').ok_or(format!("{flag}: MIN-MAX"))?;
                cfg.fault_gap_secs = (num(&lo.to_string())?, num(&hi.to_string())?);
            }
            "--garbage" => cfg.garbage = num(text()?)? as usize,
            "--oversized" => cfg.oversized = num(text()?)? as usize,
            "--duplicates" => cfg.duplicates = num(text()?)? as usize,
            "--late-cancels" => cfg.late_cancels = num(text()?)? as usize,
            "--conflicts" => cfg.conflicts = num(text()?)? as usize,
            "--settle" => cfg.settle = Duration::from_secs(num(text()?)?),
            "--no-hang" => cfg.hang = false,
            "--no-kafka" => cfg.kafka_faults = false,
            "--no-s3" => cfg.s3_faults = false,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if cfg.workers == 0 || cfg.jobs == 0 || cfg.minutes <= 0.0 {
        return Err("--jobs, --workers and --minutes must be positive".into());
    }
    Ok(cfg)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = parse(&args).unwrap_or_else(|e| {
        eprintln!("soak: {e}");
        std::process::exit(2)
    });
    eprintln!(
        "soak: seed {} (repeat with --seed {}); {cfg:?}",
        cfg.seed, cfg.seed
    );
    let report = run(&cfg).await;
    println!("{}", report.table());
    if report.failed() {
        std::process::exit(1);
    }
}
