//! The delivery worker: every gateway runs one. Deliveries are rows of `webhook_deliveries`,
//! written by the events reader in the transaction that applies the terminal event, so each
//! event has exactly one row however many replicas read it. A worker claims due rows with
//! `FOR UPDATE SKIP LOCKED` and, in the same statement, leases them (moves `next_attempt_at`
//! past the delivery's time bound), so no two replicas deliver one event at the same time; a
//! replica that dies mid-delivery leaves a row that comes due again when the lease
//! (`webhooks.lease_ms`) ends (at-least-once). Each delivery runs in its own task under a semaphore: a slow receiver holds
//! one permit for at most `timeout_ms`, never the others.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{sign, GuardedResolver, UrlPolicy};
use crate::config::WebhooksConfig;
use crate::links::Links;
use crate::metrics::Metrics;

/// A claimed delivery.
#[derive(Debug, sqlx::FromRow)]
struct Due {
    id: i64,
    job_id: String,
    event_id: String,
    tenant: String,
    url: String,
    attempts: i32,
}

/// What one attempt came to.
enum Outcome {
    Delivered(u16),
    Failed { status: Option<u16>, error: String },
}

pub struct DeliveryWorker {
    pool: PgPool,
    cfg: Arc<WebhooksConfig>,
    links: Arc<Links>,
    metrics: Arc<Metrics>,
    policy: UrlPolicy,
    http: reqwest::Client,
    permits: Arc<Semaphore>,
}

impl DeliveryWorker {
    pub fn new(
        pool: PgPool,
        cfg: &WebhooksConfig,
        links: Arc<Links>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let policy = UrlPolicy::new(cfg);
        let http = reqwest::Client::builder()
            // A redirect could lead anywhere, the cluster's own network included.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would resolve names where the guard cannot see.
            .no_proxy()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .dns_resolver(Arc::new(GuardedResolver(policy.clone())))
            .user_agent("t2v-gateway-webhooks")
            .build()?;
        Ok(Self {
            pool,
            cfg: Arc::new(cfg.clone()),
            links,
            metrics,
            policy,
            http,
            permits: Arc::new(Semaphore::new(cfg.concurrency)),
        })
    }

    /// Claims and delivers due rows until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let poll = Duration::from_millis(self.cfg.poll_ms.max(10));
        loop {
            let free = self.permits.available_permits();
            let claimed = if free == 0 {
                Ok(Vec::new())
            } else {
                self.claim(free).await
            };
            match claimed {
                Ok(due) => {
                    for delivery in due {
                        let permit = self
                            .permits
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("the semaphore is never closed");
                        let worker = self.clone();
                        tokio::spawn(async move {
                            let _permit = permit;
                            worker.deliver(delivery).await;
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "claiming webhook deliveries; retrying"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Up to `limit` due rows, leased to this process for longer than one attempt can take
    /// (`webhooks.lease_ms`).
    async fn claim(&self, limit: usize) -> Result<Vec<Due>, sqlx::Error> {
        let lease_ms = self.cfg.lease().as_millis() as u64;
        sqlx::query_as(
            "UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $2::double precision / 1000) \
             WHERE id IN (SELECT id FROM webhook_deliveries \
                 WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt_at <= now() \
                 ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING d.id, d.job_id, d.event_id, d.tenant, d.url, d.attempts",
        )
        .bind(limit as i64)
        .bind(lease_ms as i64)
        .fetch_all(&self.pool)
        .await
    }

    async fn deliver(&self, due: Due) {
        let outcome = self.attempt(&due).await;
        let attempt = due.attempts + 1;
        match &outcome {
            Outcome::Delivered(status) => {
                tracing::info!(job_id = %due.job_id, webhook_id = %due.event_id, attempt, status, "webhook delivered")
            }
            Outcome::Failed { status, error } => {
                tracing::warn!(job_id = %due.job_id, webhook_id = %due.event_id, attempt, status, error = %error, "webhook attempt failed")
            }
        }
        // Counted before the row says so: whoever sees the row sees the count.
        let gives_up = attempt as u32 >= self.cfg.max_attempts;
        self.metrics.webhook_attempt(match (&outcome, gives_up) {
            (Outcome::Delivered(_), _) => "delivered",
            (Outcome::Failed { .. }, true) => "given_up",
            (Outcome::Failed { .. }, false) => "failed",
        });
        while let Err(e) = self.record(&due, &outcome).await {
            tracing::warn!(error = %e, webhook_id = %due.event_id, "recording a webhook attempt; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// One POST of the job resource, signed.
    async fn attempt(&self, due: &Due) -> Outcome {
        let failed = |error: String| Outcome::Failed {
            status: None,
            error,
        };
        // Literal addresses never pass the resolver: check them here (the policy may have changed).
        if let Err(e) = self.policy.parse(&due.url) {
            return failed(e);
        }
        let Some(secret) = self.cfg.tenants.get(&due.tenant).map(|t| t.secret.clone()) else {
            return failed(format!(
                "no webhook secret for tenant {} — set webhooks.tenants.{}.secret",
                due.tenant, due.tenant
            ));
        };
        let row = match crate::db::job(&self.pool, &due.tenant, &due.job_id).await {
            Ok(Some(row)) => row,
            Ok(None) => return failed("the job is gone".into()),
            Err(e) => return failed(format!("reading the job: {e}")),
        };
        let resource = crate::api::resource::job_resource(&row, &self.links).await;
        let body = serde_json::to_vec(&resource).expect("a JSON value serializes");
        let timestamp = (t2v_contract::now_unix_ms() / 1000) as i64;
        let signature = sign(secret.expose(), &due.event_id, timestamp, &body);
        let sent = self
            .http
            .post(&due.url)
            .header("content-type", "application/json")
            .header("webhook-id", &due.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Outcome::Delivered(r.status().as_u16()),
            Ok(r) => Outcome::Failed {
                status: Some(r.status().as_u16()),
                error: format!("the receiver answered {}", r.status()),
            },
            // Without the URL: its query may carry the receiver's own token, and this goes to logs.
            Err(e) => failed(describe(&e.without_url())),
        }
    }

    /// Writes the attempt into the row: delivered, due again after the backoff, or given up.
    async fn record(&self, due: &Due, outcome: &Outcome) -> Result<(), sqlx::Error> {
        let attempts = due.attempts + 1;
        let (status, error) = match outcome {
            Outcome::Delivered(s) => (Some(*s), None),
            Outcome::Failed { status, error } => (*status, Some(error.as_str())),
        };
        let entry = serde_json::json!({
            "attempt": attempts, "atUnixMs": t2v_contract::now_unix_ms(), "status": status, "error": error,
        });
        let delivered = matches!(outcome, Outcome::Delivered(_));
        let give_up = !delivered && attempts as u32 >= self.cfg.max_attempts;
        let wait_ms = backoff_ms(&self.cfg, attempts as u32);
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = $2, last_status = $3, last_error = $4, \
             log = log || jsonb_build_array($5::jsonb), \
             delivered_at = CASE WHEN $6 THEN now() END, given_up_at = CASE WHEN $7 THEN now() END, \
             next_attempt_at = now() + make_interval(secs => $8::double precision / 1000) \
             WHERE id = $1",
        )
        .bind(due.id)
        .bind(attempts)
        .bind(status.map(i32::from))
        .bind(error)
        .bind(entry)
        .bind(delivered)
        .bind(give_up)
        .bind(wait_ms as i64)
        .execute(&self.pool)
        .await?;
        if give_up {
            tracing::warn!(job_id = %due.job_id, webhook_id = %due.event_id, attempts, "webhook given up");
        }
        Ok(())
    }
}

/// The wait after failed attempt `attempt` (1-based): doubling from `backoff_initial_ms`, at
/// most `backoff_max_ms`.
pub fn backoff_ms(cfg: &WebhooksConfig, attempt: u32) -> u64 {
    let doublings = attempt.saturating_sub(1).min(40);
    cfg.backoff_initial_ms
        .saturating_mul(1u64 << doublings)
        .min(cfg.backoff_max_ms)
}

/// An error with its causes (a refused address is reported by the resolver, deep in the chain).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let cfg = WebhooksConfig::default();
        assert_eq!(backoff_ms(&cfg, 1), 30_000);
        assert_eq!(backoff_ms(&cfg, 2), 60_000);
        assert_eq!(backoff_ms(&cfg, 8), 3_600_000);
        assert_eq!(backoff_ms(&cfg, 200), 3_600_000);
        let total: u64 = (1..cfg.max_attempts).map(|a| backoff_ms(&cfg, a)).sum();
        assert!(total > 4 * 3_600_000, "retries span hours: {total} ms");
    }
}
