//! Producer throughput: requests/s that one `Submitter` gets acknowledged (acks=all, idempotent)
//! by the local broker. A benchmark, not a test: `make bench` (needs `make up`).
//!
//! `T2V_BENCH_REQUESTS` (default 200000) requests of a typical size, submitted in batches through
//! `Submitter::submit_many` to a fresh 8-partition topic; prints the median of 3 rounds.

use std::time::Instant;

use t2v_producer::topics::{self, TopicSpec};
use t2v_producer::{Submitter, SubmitterConfig};
use t2v_proto::v1::GenerationRequest;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let brokers = std::env::var("T2V_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let total: usize = std::env::var("T2V_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let topic = format!(
        "bench.requests.{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    let cfg = SubmitterConfig {
        brokers: brokers.clone(),
        requests_topic: topic.clone(),
        ..Default::default()
    };
    let spec = TopicSpec {
        name: topic.clone(),
        key: "job_id".into(),
        value: "t2v.v1.GenerationRequest".into(),
        partitions: 8,
        replication_factor: 1,
        cleanup_policy: "delete".into(),
        retention_ms: 3_600_000,
        max_message_bytes: None,
    };
    topics::apply(
        cfg.client_config(),
        &[spec],
        None,
        cfg.connect_timeout,
        &brokers,
    )
    .await?;
    let submitter = Submitter::new(cfg)?;
    submitter.check_brokers().await?;

    let request = |i: usize| GenerationRequest {
        model: "wan2.2-t2v-a14b".into(),
        prompt: format!("a red fox running through fresh snow at golden hour, cinematic, shot {i}"),
        width: 1280,
        height: 720,
        num_frames: 81,
        num_inference_steps: 40,
        seed: Some(i as u64),
        ..Default::default()
    };
    let batch = 20_000;
    let mut rates = Vec::new();
    for round in 0..3 {
        let start = Instant::now();
        let mut sent = 0;
        while sent < total {
            let n = batch.min(total - sent);
            submitter
                .submit_many((sent..sent + n).map(request).collect())
                .await?;
            sent += n;
        }
        let secs = start.elapsed().as_secs_f64();
        let rate = total as f64 / secs;
        println!(
            "round {round}: {total} requests acknowledged in {secs:.2} s = {rate:.0} requests/s"
        );
        rates.push(rate);
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    println!(
        "submit_throughput: median {:.0} requests/s (acks=all, idempotent, 8 partitions, {} bytes/request) on {} cores",
        rates[1],
        prost::Message::encoded_len(&request(0)),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    Ok(())
}
