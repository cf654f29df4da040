//! The job rows in PostgreSQL: connecting and migrating, creating a job under its idempotency
//! rule, reading one job or a tenant's page of jobs. Every read is scoped to the tenant, so a job
//! of another tenant is indistinguishable from one that does not exist.

use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
// Dynamic SQL here only splices the constant JOB_COLUMNS; every value is a bind parameter.
use sqlx::AssertSqlSafe;

use crate::config::Plan;
use crate::limits::{self, QuotaExceeded};

/// Migrations of `gateway/migrations`, embedded in the binary and run at start (every replica
/// may run them: sqlx takes an advisory lock).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects and brings the schema up to date.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to PostgreSQL: {e} — check database.url and that the server accepts connections"))?;
    MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| anyhow::anyhow!("migrating the database: {e}"))?;
    Ok(pool)
}

/// A job as a client may see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub job_id: String,
    pub tenant: String,
    pub seq: i64,
    pub request_digest: String,
    pub request: Value,
    pub state: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub version: i64,
    pub step: Option<i32>,
    pub total_steps: Option<i32>,
    pub eta_ms: Option<i64>,
    pub started: Option<Value>,
    pub terminal: Option<Value>,
}

impl JobRow {
    pub fn is_terminal(&self) -> bool {
        matches!(self.state.as_str(), "completed" | "failed" | "canceled")
    }
}

const JOB_COLUMNS: &str = "job_id, tenant, seq, request_digest, request, state, \
    (extract(epoch FROM created_at) * 1000)::bigint AS created_ms, \
    (extract(epoch FROM updated_at) * 1000)::bigint AS updated_ms, \
    version, step, total_steps, eta_ms, started, terminal";

/// What [`create_job`] did.
#[derive(Debug)]
pub enum Created {
    /// A new row, charged to today's quota: publish it.
    New(JobRow),
    /// The same tenant sent the same body under this id before: answer with that job.
    Existing(JobRow),
    /// The id exists with another body (or, never visible as such, another tenant).
    Conflict,
    Quota(QuotaExceeded),
}

/// Inserts the job and charges one video to the tenant's day in one transaction, so a job
/// exists if and only if it was counted. An id that exists already is answered by its row.
pub async fn create_job(
    pool: &PgPool,
    tenant: &str,
    plan: &Plan,
    job_id: &str,
    digest: &str,
    request: &Value,
    webhook_url: Option<&str>,
) -> Result<Created, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let inserted: Option<JobRow> = sqlx::query_as(AssertSqlSafe(format!(
        "INSERT INTO jobs (job_id, tenant, request_digest, request, webhook_url, charged_day) \
         VALUES ($1, $2, $3, $4, $5, (now() AT TIME ZONE 'UTC')::date) \
         ON CONFLICT (job_id) DO NOTHING RETURNING {JOB_COLUMNS}"
    )))
    .bind(job_id)
    .bind(tenant)
    .bind(digest)
    .bind(request)
    .bind(webhook_url)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = inserted else {
        tx.rollback().await?;
        return Ok(match job(pool, tenant, job_id).await? {
            Some(row) if row.request_digest == digest => Created::Existing(row),
            _ => Created::Conflict,
        });
    };
    if let Err(exceeded) = limits::charge_video(&mut tx, tenant, plan).await? {
        tx.rollback().await?;
        return Ok(Created::Quota(exceeded));
    }
    tx.commit().await?;
    Ok(Created::New(row))
}

/// Undoes [`create_job`] after the request could not be published: the row goes and the video
/// is given back, so the client's retry starts afresh.
pub async fn forget_unpublished(
    pool: &PgPool,
    tenant: &str,
    job_id: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let day: Option<(Option<String>,)> = sqlx::query_as(
        "DELETE FROM jobs WHERE job_id = $1 AND tenant = $2 AND version = 0 RETURNING charged_day::text",
    )
    .bind(job_id)
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((Some(day),)) = day {
        limits::refund_video(&mut tx, tenant, &day).await?;
    }
    tx.commit().await
}

/// The tenant's job `job_id`; `None` when it does not exist or belongs to another tenant.
pub async fn job(pool: &PgPool, tenant: &str, job_id: &str) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1 AND tenant = $2"
    )))
    .bind(job_id)
    .bind(tenant)
    .fetch_optional(pool)
    .await
}

/// One page of the tenant's jobs, newest first: rows with `seq` below `before` (the cursor),
/// in `state` when given. Asks for one more than `limit` so the caller knows whether more follow.
pub async fn list_jobs(
    pool: &PgPool,
    tenant: &str,
    state: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 \
         AND ($2::text IS NULL OR state = $2) AND ($3::bigint IS NULL OR seq < $3) \
         ORDER BY seq DESC LIMIT $4"
    )))
    .bind(tenant)
    .bind(state)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(pool)
    .await
}

/// A queued job's place in line: the queued jobs of its model, of any tenant, submitted before
/// it, plus one (only a count crosses tenants). An estimate: workers take lanes by priority and
/// partitions by backlog, not strictly in submission order.
pub async fn queue_position(pool: &PgPool, row: &JobRow) -> Result<i64, sqlx::Error> {
    let model = row
        .request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    sqlx::query_scalar(
        "SELECT count(*) + 1 FROM jobs WHERE state = 'queued' AND seq < $1 AND request->>'model' = $2",
    )
    .bind(row.seq)
    .bind(model)
    .fetch_one(pool)
    .await
}
