//! Prometheus metrics at `/metrics`: requests by route and status, request latency, and
//! rejections by the rate limit and the daily quota, webhook attempts by outcome, placement's
//! fallbacks to hashing.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    /// The route template (`/v1/videos/{id}`), never the raw path: ids would explode the series.
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// `rate`, `videos` or `gpu_seconds`.
    pub limit: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `delivered`, `failed` (retried later) or `given_up`.
    pub outcome: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RouteLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram>,
    pub rejections: Family<RejectLabels, Counter>,
    pub events_applied: Counter,
    pub webhook_attempts: Family<WebhookLabels, Counter>,
    /// Requests hashed by job id because the consumer group could not be read (the
    /// Submitter's count, brought over at each scrape).
    placement_fallbacks: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("t2v_gateway");
        let requests = Family::<RouteLabels, Counter>::default();
        // 1 ms … ~4 s: submits are milliseconds, an SSE stream is recorded when it ends.
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 13,
            ))
        });
        let rejections = Family::<RejectLabels, Counter>::default();
        let events_applied = Counter::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        registry.register(
            "limit_rejections",
            "Requests refused by the rate limit or the daily quota",
            rejections.clone(),
        );
        registry.register(
            "events_read",
            "Events read from the events topic",
            events_applied.clone(),
        );
        let webhook_attempts = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts by outcome",
            webhook_attempts.clone(),
        );
        let placement_fallbacks = Counter::default();
        registry.register(
            "placement_fallbacks",
            "Requests placed by their job id's hash because the workers' consumer group could not be read",
            placement_fallbacks.clone(),
        );
        Self {
            placement_fallbacks,
            registry,
            requests,
            latency,
            rejections,
            events_applied,
            webhook_attempts,
        }
    }

    pub fn reject(&self, limit: &str) {
        self.rejections
            .get_or_create(&RejectLabels {
                limit: limit.to_string(),
            })
            .inc();
    }

    pub fn webhook_attempt(&self, outcome: &str) {
        self.webhook_attempts
            .get_or_create(&WebhookLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Brings the counter up to the Submitter's `total` (which only grows).
    pub fn set_placement_fallbacks(&self, total: u64) {
        let seen = self.placement_fallbacks.get();
        self.placement_fallbacks.inc_by(total.saturating_sub(seen));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_fallbacks_follow_the_submitters_count() {
        let metrics = Metrics::new();
        let line = |m: &Metrics| {
            m.encode()
                .lines()
                .find(|l| l.starts_with("t2v_gateway_placement_fallbacks_total "))
                .map(str::to_string)
        };
        assert_eq!(
            line(&metrics).as_deref(),
            Some("t2v_gateway_placement_fallbacks_total 0")
        );
        for (total, shown) in [(3, "3"), (3, "3"), (5, "5")] {
            metrics.set_placement_fallbacks(total);
            assert_eq!(
                line(&metrics),
                Some(format!("t2v_gateway_placement_fallbacks_total {shown}"))
            );
        }
    }
}
