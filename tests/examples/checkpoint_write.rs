//! Benchmark (not a test): size and write time of an A14B 720p checkpoint (docs/design.md,
//! "The checkpoint format").
//!
//! The state of a 1280×720, 81-frame Wan2.2 A14B run: latents `[1, 16, 21, 90, 160]` f32 (VAE
//! stride 4 in time, 8 in space, 16 channels) and UniPC order 2's history — 2 model outputs and
//! the last sample, each of the latents' shape — so 4 tensors of 4,838,400 values. This builds a
//! file in the layout of `t2v_pipeline::checkpoint::DenoiseState::to_bytes` (safetensors: u64 LE
//! header length, JSON header with `__metadata__` padded to 8 bytes, raw LE f32; tensors
//! `latents`, `scheduler.model_outputs.{0,1}`, `scheduler.last_sample`) with random values, and
//! puts it 5 times to the local S3 server (`make up`) the two ways object_store can: one PUT, and
//! the multipart upload the worker uses at ≥ 16 MiB (`object_store::buffered::BufWriter`).
//! Prints each time and the medians. Goal: ≤ 2 s, to fit a 30 s spot notice.
//!
//! `cargo run -p t2v-tests --example checkpoint_write`

use std::time::{Duration, Instant};

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use t2v_tests::{bucket, unique_name};

const LATENT_SHAPE: [usize; 5] = [1, 16, 21, 90, 160];
const TENSORS: [&str; 4] = [
    "latents",
    "scheduler.model_outputs.0",
    "scheduler.model_outputs.1",
    "scheduler.last_sample",
];
const RUNS: usize = 5;
const GOAL: Duration = Duration::from_secs(2);

/// A checkpoint file of the A14B 720p shapes with pseudo-random values.
fn checkpoint_bytes() -> Vec<u8> {
    let numel: usize = LATENT_SHAPE.iter().product();
    let mut header = String::from(
        r#"{"__metadata__":{"t2v.format":"t2v-denoise-checkpoint/1","request_digest":"bench","model_revision":"bench"}"#,
    );
    for (i, name) in TENSORS.iter().enumerate() {
        let (start, end) = (4 * numel * i, 4 * numel * (i + 1));
        header.push_str(&format!(
            r#","{name}":{{"dtype":"F32","shape":{LATENT_SHAPE:?},"data_offsets":[{start},{end}]}}"#
        ));
    }
    header.push('}');
    let mut header = header.into_bytes();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + header.len() + 4 * numel * TENSORS.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    // Random values (xorshift): compressible data would flatter nothing here, but stay honest.
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..numel * TENSORS.len() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let v = (x as f32 / u32::MAX as f32) * 2.0 - 1.0;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[tokio::main]
async fn main() {
    let bytes = checkpoint_bytes();
    let numel: usize = LATENT_SHAPE.iter().product();
    println!(
        "A14B 720p checkpoint: {} tensors of {LATENT_SHAPE:?} f32 ({numel} values, {:.1} MB each) → {} bytes ({:.1} MB, {:.1} MiB)",
        TENSORS.len(),
        (4 * numel) as f64 / 1e6,
        bytes.len(),
        bytes.len() as f64 / 1e6,
        bytes.len() as f64 / (1024.0 * 1024.0)
    );
    let store = bucket();
    let prefix = unique_name("checkpoint-write").replace('.', "-");
    let mut single = Vec::new();
    let mut multipart = Vec::new();
    for run in 0..RUNS {
        let path = Path::from(format!("{prefix}/single/step-{run:06}.safetensors"));
        let payload = PutPayload::from(bytes.clone());
        let t = Instant::now();
        store.put(&path, payload).await.expect("put");
        single.push(t.elapsed());

        let path = Path::from(format!("{prefix}/multipart/step-{run:06}.safetensors"));
        let t = Instant::now();
        let mut writer = object_store::buffered::BufWriter::new(store.clone(), path.clone());
        tokio::io::AsyncWriteExt::write_all(&mut writer, &bytes)
            .await
            .expect("multipart write");
        tokio::io::AsyncWriteExt::shutdown(&mut writer)
            .await
            .expect("multipart complete");
        multipart.push(t.elapsed());
        println!(
            "run {}: single PUT {:.3} s, multipart {:.3} s",
            run + 1,
            single[run].as_secs_f64(),
            multipart[run].as_secs_f64()
        );
        assert_eq!(
            store.head(&path).await.expect("head").size,
            bytes.len() as u64
        );
    }
    for run in 0..RUNS {
        for kind in ["single", "multipart"] {
            let path = Path::from(format!("{prefix}/{kind}/step-{run:06}.safetensors"));
            let _ = store.delete(&path).await;
        }
    }
    let (s, m) = (median(single), median(multipart));
    let mb_s = |d: Duration| bytes.len() as f64 / 1e6 / d.as_secs_f64();
    println!(
        "median of {RUNS}: single PUT {:.3} s ({:.0} MB/s), multipart {:.3} s ({:.0} MB/s); goal ≤ {:.0} s: {}",
        s.as_secs_f64(),
        mb_s(s),
        m.as_secs_f64(),
        mb_s(m),
        GOAL.as_secs_f64(),
        if s.max(m) <= GOAL { "met" } else { "MISSED" }
    );
}
