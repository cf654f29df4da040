//! Prometheus metrics served on `/metrics`. The names are a contract with the Helm chart's alerts
//! and dashboard: `t2v_jobs_total{outcome}`, `t2v_phase_duration_seconds{phase}` and
//! `t2v_gpu_memory_bytes{kind}`.

use std::time::Duration;

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
    consumer_lag: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let jobs = Family::<Labels, Counter>::default();
        let phases =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(phase_histogram);
        let in_flight = Gauge::default();
        let steps = Counter::default();
        let gpu_memory = Family::<Labels, Gauge>::default();
        let consumer_lag = Gauge::default();
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
            "GPU memory of the pipeline, by kind (allocated, reserved)",
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
            consumer_lag,
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

    pub fn set_in_flight(&self, n: i64) {
        self.in_flight.set(n);
    }

    pub fn step_done(&self) {
        self.steps.inc();
    }

    pub fn set_gpu_memory(&self, allocated: u64, reserved: u64) {
        for (kind, bytes) in [("allocated", allocated), ("reserved", reserved)] {
            self.gpu_memory
                .get_or_create(&vec![("kind", kind)])
                .set(bytes as i64);
        }
    }

    pub fn set_consumer_lag(&self, lag: i64) {
        self.consumer_lag.set(lag);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
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
        m.set_gpu_memory(1, 2);
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
        assert!(
            text.contains("t2v_gpu_memory_bytes{kind=\"reserved\"} 2"),
            "{text}"
        );
    }
}
