//! Prometheus metrics served on `/metrics`. The names are a contract with the Helm chart's alerts
//! and dashboard: `t2v_jobs_total{outcome}`, `t2v_phase_duration_seconds{phase}` and
//! `t2v_gpu_memory_bytes{kind}`.
//!
//! GPU memory is NVML's view of the whole device ([`crate::gpu`]): `used` and `total`, read at
//! every scrape, and `job_peak`, the largest `used` seen during the current (or last) job —
//! read at each denoising step, at each scrape and when the job ends. libtorch's caching
//! allocator keeps what it reserved, so the reading when a job ends is close to its true peak.
//! On a host without an NVIDIA driver the gauge is absent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::gpu::{Gpu, GpuMemory};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Job outcomes, the `outcome` label of `t2v_jobs_total`.
pub mod outcome {
    pub const COMPLETED: &str = "completed";
    /// A job whose manifest already existed: Completed re-published.
    pub const DUPLICATE: &str = "duplicate";
    pub const FAILED: &str = "failed";
    pub const CANCELED: &str = "canceled";
    /// A record whose result and DLQ copy Kafka both refused for good: skipped, logged.
    pub const DROPPED: &str = "dropped";
    /// Undecodable records sent to the DLQ.
    pub const UNDECODABLE: &str = "undecodable";
    /// Stopped by shutdown; the offset is not stored, another worker takes it.
    pub const INTERRUPTED: &str = "interrupted";
    /// Published again with attempt + 1 after transient errors.
    pub const REQUEUED: &str = "requeued";
}

/// Phases, the `phase` label of `t2v_phase_duration_seconds`.
pub mod phase {
    pub const QUEUE_WAIT: &str = "queue_wait";
    pub const MODEL_LOAD: &str = "model_load";
    pub const TEXT_ENCODE: &str = "text_encode";
    pub const DENOISE: &str = "denoise";
    pub const VAE_DECODE: &str = "vae_decode";
    pub const ENCODE: &str = "encode";
    pub const UPLOAD: &str = "upload";
    pub const TOTAL: &str = "total";
}

fn phase_histogram() -> Histogram {
    // 10 ms .. about 45 min.
    Histogram::new(exponential_buckets(0.01, 2.0, 19))
}

/// Every metric of the worker.
pub struct Metrics {
    registry: Registry,
    jobs: Family<Labels, Counter>,
    phases: Family<Labels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    steps: Counter,
    gpu_memory: Family<Labels, Gauge>,
    /// The largest `used` reading since the current job started.
    job_peak: AtomicU64,
    /// When a step last read the GPU (steps read at most once a second).
    last_step_reading: Mutex<Option<Instant>>,
    gpu: Option<&'static Gpu>,
    consumer_lag: Gauge,
    /// `t2v_step_cache_forwards_total{outcome}`: `computed` or `skipped` by the step cache.
    step_cache: Family<Labels, Counter>,
}

/// `t2v_gpu_memory_bytes` kinds.
pub mod gpu_kind {
    pub const USED: &str = "used";
    pub const TOTAL: &str = "total";
    pub const JOB_PEAK: &str = "job_peak";
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The metrics, with GPU readings from NVML where a driver is present.
    pub fn new() -> Self {
        Self::with_gpu(Gpu::shared())
    }

    /// The metrics with GPU readings from `gpu` (`None`: no GPU gauge).
    pub fn with_gpu(gpu: Option<&'static Gpu>) -> Self {
        let mut registry = Registry::default();
        let jobs = Family::<Labels, Counter>::default();
        let phases =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(phase_histogram);
        let in_flight = Gauge::default();
        let steps = Counter::default();
        let gpu_memory = Family::<Labels, Gauge>::default();
        let consumer_lag = Gauge::default();
        let step_cache = Family::<Labels, Counter>::default();
        registry.register(
            "t2v_step_cache_forwards",
            "Transformer forwards of jobs with a step cache, by outcome (computed, skipped)",
            step_cache.clone(),
        );
        registry.register("t2v_jobs", "Jobs finished, by outcome", jobs.clone());
        registry.register(
            "t2v_phase_duration_seconds",
            "Time per job phase (queue_wait, model_load, text_encode, denoise, vae_decode, encode, upload, total)",
            phases.clone(),
        );
        registry.register(
            "t2v_jobs_in_flight",
            "Jobs running on this worker",
            in_flight.clone(),
        );
        registry.register(
            "t2v_denoise_steps",
            "Denoising steps completed (rate = steps per second)",
            steps.clone(),
        );
        registry.register(
            "t2v_gpu_memory_bytes",
            "GPU device memory from NVML, by kind (used now, total, job_peak: the largest used reading of the current or last job)",
            gpu_memory.clone(),
        );
        registry.register(
            "t2v_consumer_lag_records",
            "Requests not yet consumed on this worker's partitions (librdkafka statistics)",
            consumer_lag.clone(),
        );
        Self {
            registry,
            jobs,
            phases,
            in_flight,
            steps,
            gpu_memory,
            job_peak: AtomicU64::new(0),
            last_step_reading: Mutex::new(None),
            gpu,
            consumer_lag,
            step_cache,
        }
    }

    /// A job with a step cache finished its forwards: `skipped` of `forwards` were skipped.
    pub fn step_cache(&self, forwards: u32, skipped: u32) {
        let computed = forwards.saturating_sub(skipped);
        for (outcome, n) in [("computed", computed), ("skipped", skipped)] {
            self.step_cache
                .get_or_create(&vec![("outcome", outcome)])
                .inc_by(u64::from(n));
        }
    }

    pub fn job_finished(&self, outcome: &'static str) {
        self.jobs.get_or_create(&vec![("outcome", outcome)]).inc();
    }

    pub fn phase(&self, phase: &'static str, took: Duration) {
        self.phases
            .get_or_create(&vec![("phase", phase)])
            .observe(took.as_secs_f64());
    }

    /// Jobs running: a job starting (1) resets `job_peak`; each change reads the GPU, so the
    /// reading when a job ends lands in its peak.
    pub fn set_in_flight(&self, n: i64) {
        if n > 0 {
            self.job_peak.store(0, Ordering::Relaxed);
        }
        self.in_flight.set(n);
        self.read_gpu();
    }

    /// A denoising step finished (on the generator thread); reads the GPU at most once a second.
    pub fn step_done(&self) {
        self.steps.inc();
        if self.gpu.is_none() {
            return;
        }
        let due = {
            let mut last = self
                .last_step_reading
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            self.read_gpu();
        }
    }

    /// Records one GPU reading: `used`, `total`, and `job_peak` when above it.
    pub fn set_gpu_memory(&self, memory: GpuMemory) {
        let peak = self.job_peak.fetch_max(memory.used, Ordering::Relaxed);
        for (kind, bytes) in [
            (gpu_kind::USED, memory.used),
            (gpu_kind::TOTAL, memory.total),
            (gpu_kind::JOB_PEAK, peak.max(memory.used)),
        ] {
            self.gpu_memory
                .get_or_create(&vec![("kind", kind)])
                .set(bytes as i64);
        }
    }

    fn read_gpu(&self) {
        if let Some(memory) = self.gpu.and_then(|gpu| gpu.memory().ok()) {
            self.set_gpu_memory(memory);
        }
    }

    pub fn set_consumer_lag(&self, lag: i64) {
        self.consumer_lag.set(lag);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        self.read_gpu();
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String does not fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_charts_metric_names_are_exposed() {
        let m = Metrics::new();
        m.job_finished(outcome::COMPLETED);
        m.phase(phase::DENOISE, Duration::from_millis(1500));
        let text = m.render();
        assert!(
            text.contains("t2v_jobs_total{outcome=\"completed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("t2v_phase_duration_seconds_bucket{le=\"2.56\",phase=\"denoise\"} 1")
                || text
                    .contains("t2v_phase_duration_seconds_bucket{phase=\"denoise\",le=\"2.56\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn step_cache_forwards_are_counted_by_outcome() {
        let m = Metrics::with_gpu(None);
        m.step_cache(16, 5);
        m.step_cache(8, 0);
        let text = m.render();
        for line in [
            "t2v_step_cache_forwards_total{outcome=\"computed\"} 19",
            "t2v_step_cache_forwards_total{outcome=\"skipped\"} 5",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }

    #[test]
    fn gpu_memory_has_used_total_and_the_jobs_peak() {
        let m = Metrics::with_gpu(None);
        assert!(
            !m.render().contains("t2v_gpu_memory_bytes{"),
            "no readings, no samples"
        );
        let gib = crate::gpu::GIB;
        m.set_in_flight(1);
        for used in [10, 30, 20] {
            m.set_gpu_memory(GpuMemory {
                used: used * gib,
                total: 80 * gib,
            });
        }
        let text = m.render();
        for (kind, gib_value) in [("used", 20), ("total", 80), ("job_peak", 30)] {
            let line = format!(
                "t2v_gpu_memory_bytes{{kind=\"{kind}\"}} {}",
                gib_value * gib
            );
            assert!(text.contains(&line), "{line} missing:\n{text}");
        }
        // The next job starts its own peak.
        m.set_in_flight(0);
        m.set_in_flight(1);
        m.set_gpu_memory(GpuMemory {
            used: 5 * gib,
            total: 80 * gib,
        });
        let line = format!("t2v_gpu_memory_bytes{{kind=\"job_peak\"}} {}", 5 * gib);
        assert!(m.render().contains(&line), "{line}");
    }
}
