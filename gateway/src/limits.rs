//! Per-tenant rate limits and daily quotas, kept in PostgreSQL so every gateway replica sees
//! the same numbers. Each check is one statement that reads and updates under the row's lock:
//! two replicas can never both spend the last token or the last video of the day.
//!
//! - The rate limit is a token bucket per tenant (`rate_buckets`): `burst` tokens, refilled at
//!   `requests_per_sec`; every `/v1` request spends one.
//! - The daily quota (`daily_usage`, per UTC day) counts videos when they are submitted and
//!   GPU-seconds when they complete; a job that fails for an infrastructure reason gives its
//!   video back ([`refunds_video`]).

use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};
use t2v_proto::v1::ErrorCode;

use crate::config::Plan;

/// The bucket's state after a request was let through, for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateState {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
}

/// A request refused by the rate limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimited {
    pub limit: u32,
    /// Seconds until one token is back.
    pub retry_after_secs: u64,
}

/// A submission refused by the daily quota.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaExceeded {
    /// "videos" or "gpu_seconds".
    pub which: &'static str,
    pub limit: u64,
    /// Seconds until the next UTC day.
    pub retry_after_secs: u64,
}

/// Spends one token of `tenant`'s bucket, or says how long until one is back.
pub async fn take_token(
    pool: &PgPool,
    tenant: &str,
    plan: &Plan,
) -> Result<Result<RateState, RateLimited>, sqlx::Error> {
    let burst = f64::from(plan.burst);
    let rate = plan.requests_per_sec;
    // The refill is computed from the stored time under the row lock, so concurrent requests
    // on any replica each see the previous one's result.
    let left: Option<(f64,)> = sqlx::query_as(
        "INSERT INTO rate_buckets AS b (tenant, tokens, refreshed_at) \
         VALUES ($1, $2 - 1, clock_timestamp()) \
         ON CONFLICT (tenant) DO UPDATE SET \
           tokens = LEAST($2, b.tokens + extract(epoch FROM (EXCLUDED.refreshed_at - b.refreshed_at))::float8 * $3) - 1, \
           refreshed_at = EXCLUDED.refreshed_at \
         WHERE LEAST($2, b.tokens + extract(epoch FROM (EXCLUDED.refreshed_at - b.refreshed_at))::float8 * $3) >= 1 \
         RETURNING tokens",
    )
    .bind(tenant)
    .bind(burst)
    .bind(rate)
    .fetch_optional(pool)
    .await?;
    if let Some((tokens,)) = left {
        let tokens = tokens.max(0.0);
        return Ok(Ok(RateState {
            limit: plan.burst,
            remaining: tokens.floor() as u32,
            reset_secs: ((burst - tokens) / rate).ceil() as u64,
        }));
    }
    let (now_tokens,): (f64,) = sqlx::query_as(
        "SELECT LEAST($2, tokens + extract(epoch FROM (clock_timestamp() - refreshed_at))::float8 * $3) \
         FROM rate_buckets WHERE tenant = $1",
    )
    .bind(tenant)
    .bind(burst)
    .bind(rate)
    .fetch_one(pool)
    .await?;
    Ok(Err(RateLimited {
        limit: plan.burst,
        retry_after_secs: (((1.0 - now_tokens) / rate).ceil() as u64).max(1),
    }))
}

/// Counts one video against today's quota inside the job's transaction, unless the day's videos
/// or GPU-seconds are used up.
pub async fn charge_video(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    plan: &Plan,
) -> Result<Result<(), QuotaExceeded>, sqlx::Error> {
    let gpu_ms_limit = plan
        .gpu_seconds_per_day
        .saturating_mul(1000)
        .min(i64::MAX as u64) as i64;
    let videos_limit = plan.videos_per_day.min(i64::MAX as u64) as i64;
    let counted: Option<(i64, i64)> = sqlx::query_as(
        "INSERT INTO daily_usage AS u (tenant, day, videos) \
         VALUES ($1, (now() AT TIME ZONE 'UTC')::date, 1) \
         ON CONFLICT (tenant, day) DO UPDATE SET videos = u.videos + 1 \
         WHERE u.videos < $2 AND u.gpu_ms < $3 \
         RETURNING videos, gpu_ms",
    )
    .bind(tenant)
    .bind(videos_limit)
    .bind(gpu_ms_limit)
    .fetch_optional(&mut **tx)
    .await?;
    let retry_after_secs = seconds_to_next_utc_day();
    let exceeded = match counted {
        // A first row of the day is inserted whatever the limits: check them here.
        Some((videos, gpu_ms)) if videos <= videos_limit && gpu_ms < gpu_ms_limit => {
            return Ok(Ok(()))
        }
        Some((_, gpu_ms)) if gpu_ms >= gpu_ms_limit => "gpu_seconds",
        Some(_) => "videos",
        None => {
            let (_, gpu_ms) = used_today_in(tx, tenant).await?;
            if gpu_ms >= gpu_ms_limit {
                "gpu_seconds"
            } else {
                "videos"
            }
        }
    };
    let limit = if exceeded == "videos" {
        plan.videos_per_day
    } else {
        plan.gpu_seconds_per_day
    };
    Ok(Err(QuotaExceeded {
        which: exceeded,
        limit,
        retry_after_secs,
    }))
}

/// Gives one video of `day` back (`day` as PostgreSQL prints a date).
pub async fn refund_video(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    day: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE daily_usage SET videos = GREATEST(videos - 1, 0) WHERE tenant = $1 AND day = $2::date",
    )
    .bind(tenant)
    .bind(day)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Adds a finished job's GPU time to the day it was charged to.
pub async fn charge_gpu_ms(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    day: &str,
    gpu_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO daily_usage AS u (tenant, day, gpu_ms) VALUES ($1, $2::date, $3) \
         ON CONFLICT (tenant, day) DO UPDATE SET gpu_ms = u.gpu_ms + $3",
    )
    .bind(tenant)
    .bind(day)
    .bind(gpu_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Videos and GPU milliseconds the tenant used today (UTC), and the day.
pub async fn used_today(pool: &PgPool, tenant: &str) -> Result<(String, i64, i64), sqlx::Error> {
    let row: (String, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT d::text, u.videos, u.gpu_ms FROM (SELECT (now() AT TIME ZONE 'UTC')::date AS d) t \
         LEFT JOIN daily_usage u ON u.tenant = $1 AND u.day = t.d",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await?;
    Ok((row.0, row.1.unwrap_or(0), row.2.unwrap_or(0)))
}

async fn used_today_in(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
) -> Result<(i64, i64), sqlx::Error> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT videos, gpu_ms FROM daily_usage WHERE tenant = $1 AND day = (now() AT TIME ZONE 'UTC')::date",
    )
    .bind(tenant)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.unwrap_or((0, 0)))
}

/// Failures that were the fleet's fault, not the request's: the video does not count.
pub fn refunds_video(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::AttemptsExhausted
    )
}

/// Seconds until 00:00 UTC of the next day (at least 1).
pub fn seconds_to_next_utc_day() -> u64 {
    let now_secs = t2v_contract::now_unix_ms() / 1000;
    (86_400 - now_secs % 86_400).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_infrastructure_failures_give_the_video_back() {
        assert!(refunds_video(ErrorCode::Unavailable));
        assert!(refunds_video(ErrorCode::Internal));
        assert!(refunds_video(ErrorCode::AttemptsExhausted));
        assert!(!refunds_video(ErrorCode::InvalidArgument));
        assert!(!refunds_video(ErrorCode::ResourceExhausted));
        assert!(!refunds_video(ErrorCode::JobIdConflict));
    }

    #[test]
    fn the_next_day_is_at_most_a_day_away() {
        let s = seconds_to_next_utc_day();
        assert!((1..=86_400).contains(&s));
    }
}
