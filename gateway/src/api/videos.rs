//! `/v1/videos` and `/v1/usage`. Every handler starts from [`Authorized`] (token verified, one
//! rate-limit token spent) and reads or writes only the caller's own rows.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use t2v_contract::headers::schema::GENERATION_REQUEST;
use t2v_proto::v1::GenerationRequest;

use super::image;
use super::resource::{job_resource, TENANT_LABEL};
use super::{ApiError, AppState, Authorized};
use crate::db::{self, Created, JobRow};
use crate::limits;

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

fn bad_request(field: Option<&'static str>, message: impl Into<String>) -> ApiError {
    let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message);
    e.field = field;
    e
}

/// The job id of a submission with an `Idempotency-Key`: derived from the tenant and the key (so
/// two tenants' keys never meet). Without one, empty: the `Submitter` assigns a ULID, and places
/// that fresh id on the least-backlogged worker's partition.
fn job_id_for(tenant: &str, headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(String::new());
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
        .ok_or_else(|| {
            bad_request(None, format!("Idempotency-Key must be 1..={MAX_IDEMPOTENCY_KEY} visible ASCII characters — use e.g. a UUID"))
        })?;
    let digest = t2v_contract::sha256_hex(format!("{tenant}\n{key}").as_bytes());
    Ok(format!("idem-{}", &digest[..40]))
}

/// Parses and checks the body: the request's JSON form without `jobId`, unknown fields refused,
/// the shared contract's bounds. Returns the request and its canonical JSON (an inline image's
/// bytes included, so that an Idempotency-Key stands for the image too).
fn parse_request(body: &[u8]) -> Result<(GenerationRequest, String), ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| bad_request(None, "the body is not UTF-8 — send JSON"))?;
    // A malformed image is named by its field; a body that is not JSON gets the parser's words.
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        image::check_form(&value).map_err(|e| bad_request(Some(e.field), e.to_string()))?;
    }
    let req: GenerationRequest =
        t2v_producer::json::from_json(GENERATION_REQUEST, text).map_err(|e| {
            bad_request(
                None,
                format!("{e} — send the request's JSON form (see /openapi.json)"),
            )
        })?;
    if !req.job_id.is_empty() {
        return Err(bad_request(
            Some("job_id"),
            "jobId is assigned by the gateway — send an Idempotency-Key header instead",
        ));
    }
    if req.attempt != 0 || req.submitted_at_unix_ms != 0 {
        return Err(bad_request(
            Some("attempt"),
            "attempt and submittedAtUnixMs are set by the fleet — leave them out",
        ));
    }
    if req.labels.contains_key(TENANT_LABEL) {
        return Err(bad_request(
            Some("labels"),
            format!("label {TENANT_LABEL} is reserved for the caller's tenant — use another key"),
        ));
    }
    t2v_contract::validate::request(&req).map_err(|e| bad_request(Some(e.field), e.to_string()))?;
    let canonical = t2v_producer::json::to_json(GENERATION_REQUEST, &req);
    Ok((req, canonical))
}

/// Takes the gateway's own `webhookUrl` field (or `webhook_url`) out of the body, which is
/// otherwise the request's JSON form. A body that is not a JSON object is left for
/// [`parse_request`] to refuse with its usual words.
fn take_webhook_url(body: &[u8]) -> Result<(Vec<u8>, Option<String>), ApiError> {
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
        return Ok((body.to_vec(), None));
    };
    let mut url = None;
    for name in ["webhookUrl", "webhook_url"] {
        match fields.remove(name) {
            None => {}
            Some(Value::String(u)) if url.is_none() => url = Some(u),
            Some(Value::String(_)) => {
                return Err(bad_request(
                    Some("webhook_url"),
                    "webhookUrl is given twice — send it once",
                ))
            }
            Some(_) => {
                return Err(bad_request(
                    Some("webhook_url"),
                    "webhookUrl must be a string — send an https:// URL",
                ))
            }
        }
    }
    if url.is_none() {
        // Untouched: the request's JSON is parsed from exactly what the client sent.
        return Ok((body.to_vec(), None));
    }
    let rest = serde_json::to_vec(&Value::Object(fields)).expect("a JSON value serializes");
    Ok((rest, url))
}

/// The job's webhook: the request's own, else the tenant's default; checked (scheme, every
/// address the host resolves to) and refused when the tenant has no signing secret.
async fn webhook_for(
    state: &AppState,
    tenant: &str,
    requested: Option<String>,
) -> Result<Option<String>, ApiError> {
    let hooks = &state.cfg.webhooks;
    let configured = hooks.tenants.get(tenant);
    let Some(url) = requested.or_else(|| configured.and_then(|t| t.url.clone())) else {
        return Ok(None);
    };
    if configured.is_none_or(|t| t.secret.is_empty()) {
        return Err(bad_request(
            Some("webhook_url"),
            format!("tenant {tenant} has no webhook signing secret — ask the operator to set webhooks.tenants.{tenant}.secret, or leave webhookUrl out"),
        ));
    }
    let checked = crate::webhooks::UrlPolicy::new(hooks)
        .check(&url)
        .await
        .map_err(|e| bad_request(Some("webhook_url"), e))?;
    Ok(Some(checked.to_string()))
}

/// `POST /v1/videos`.
pub async fn create(
    State(state): State<AppState>,
    auth: Authorized,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = auth.caller.tenant.clone();
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            let max = state.cfg.http.max_body_bytes;
            ApiError::new(
                status,
                "body_too_large",
                format!("the body is over {max} bytes — shorten the prompt or the labels, or send the image by uri"),
            )
        } else {
            ApiError::new(
                status,
                "bad_body",
                format!("{rejection} — send the request as JSON"),
            )
        }
        .for_caller(&auth.caller)
    })?;
    let (body, webhook) = take_webhook_url(&body).map_err(|e| e.for_caller(&auth.caller))?;
    let (mut req, canonical) = parse_request(&body).map_err(|e| e.for_caller(&auth.caller))?;
    let webhook = webhook_for(&state, &tenant, webhook)
        .await
        .map_err(|e| e.for_caller(&auth.caller))?;
    // The webhook is part of what an Idempotency-Key stands for: another URL is another body.
    let digest = match &webhook {
        None => t2v_contract::sha256_hex(canonical.as_bytes()),
        Some(url) => t2v_contract::sha256_hex(format!("{canonical}\nwebhook {url}").as_bytes()),
    };
    req.job_id = job_id_for(&tenant, &headers)?;
    req.labels.insert(TENANT_LABEL.into(), tenant.clone());
    // The producer's own check (the bounds again, now with the tenant label, and the model's
    // route) before anything is written or charged; it assigns the id when there is no key.
    let req = state.submitter.prepare(req).map_err(|e| {
        bad_request(
            Some(e.field),
            format!("{e} (one label is the gateway's {TENANT_LABEL})"),
        )
        .for_caller(&auth.caller)
    })?;
    let job_id = req.job_id.clone();
    let mut settings: Value = serde_json::from_str(&canonical).expect("to_json writes JSON");
    // The row keeps what the job resource shows: an inline image's digest and size, not its bytes.
    image::redact(&mut settings);
    let created = db::create_job(
        &state.pool,
        &tenant,
        &auth.plan,
        &job_id,
        &digest,
        &settings,
        webhook.as_deref(),
    )
    .await?;
    let row = match created {
        Created::New(row) => {
            publish(&state, &tenant, req).await?;
            row
        }
        Created::Existing(row) => row,
        Created::Conflict => return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            "this Idempotency-Key was used with a different body — use a new key for a new request",
        )
        .for_caller(&auth.caller)),
        Created::Quota(q) => {
            state.metrics.reject(q.which);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                format!(
                    "daily quota of {} {} used up — it resets at 00:00 UTC (in {} s)",
                    q.limit,
                    q.which.replace('_', "-"),
                    q.retry_after_secs
                ),
            )
            .with_header("retry-after", q.retry_after_secs)
            .for_caller(&auth.caller));
        }
    };
    let resource = job_resource(&row, &state.links).await;
    let mut response = (StatusCode::ACCEPTED, auth.rate_headers(), Json(resource)).into_response();
    if let Ok(location) = format!("/v1/videos/{}", row.job_id).parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
        .extensions_mut()
        .insert(auth.log(Some(&row.job_id)));
    Ok(response)
}

/// Publishes a new job's request; when that fails the row and its quota charge are undone, so
/// the client's retry starts afresh.
async fn publish(state: &AppState, tenant: &str, req: GenerationRequest) -> Result<(), ApiError> {
    let job_id = req.job_id.clone();
    let Err(e) = state.submitter.submit(req).await else {
        return Ok(());
    };
    tracing::error!(job_id = %job_id, error = %e, "publishing a request");
    db::forget_unpublished(&state.pool, tenant, &job_id).await?;
    if let t2v_producer::SubmitError::Invalid(invalid) = e {
        return Err(bad_request(Some(invalid.field), invalid.to_string()));
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "queue_unavailable",
        "the job queue did not take the request — retry shortly (with the same Idempotency-Key)",
    )
    .with_header("retry-after", 2))
}

async fn owned(state: &AppState, auth: &Authorized, id: &str) -> Result<JobRow, ApiError> {
    db::job(&state.pool, &auth.caller.tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(id).for_caller(&auth.caller))
}

fn ok_json(auth: &Authorized, job_id: Option<&str>, status: StatusCode, body: Value) -> Response {
    let mut response = (status, auth.rate_headers(), Json(body)).into_response();
    response.extensions_mut().insert(auth.log(job_id));
    response
}

/// `GET /v1/videos/{id}`.
pub async fn get_one(
    State(state): State<AppState>,
    auth: Authorized,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = owned(&state, &auth, &id).await?;
    let mut resource = job_resource(&row, &state.links).await;
    if let Some(position) = queue_position(&state, &row).await? {
        resource["queuePosition"] = json!(position);
    }
    Ok(ok_json(&auth, Some(&id), StatusCode::OK, resource))
}

/// A queued job's place in line ([`db::queue_position`]); `None` once it left the queue.
async fn queue_position(state: &AppState, row: &JobRow) -> Result<Option<i64>, sqlx::Error> {
    if row.state != "queued" {
        return Ok(None);
    }
    db::queue_position(&state.pool, row).await.map(Some)
}

/// `DELETE /v1/videos/{id}`: asks the fleet to cancel; the row turns `canceled` when the worker's
/// Canceled event arrives.
pub async fn cancel(
    State(state): State<AppState>,
    auth: Authorized,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = owned(&state, &auth, &id).await?;
    if row.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_finished",
            format!("video {id} is already {} — nothing to cancel", row.state),
        )
        .for_caller(&auth.caller));
    }
    let reason = format!(
        "canceled by tenant {} through the gateway",
        auth.caller.tenant
    );
    state.submitter.cancel(&id, &reason).await.map_err(|e| {
        tracing::error!(job_id = %id, error = %e, "publishing a cancel");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_unavailable",
            "the cancel could not be sent — retry shortly",
        )
        .with_header("retry-after", 2)
    })?;
    let resource = job_resource(&row, &state.links).await;
    Ok(ok_json(&auth, Some(&id), StatusCode::ACCEPTED, resource))
}

/// The query of `GET /v1/videos`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

const STATES: [&str; 5] = ["queued", "running", "completed", "failed", "canceled"];

/// `GET /v1/videos?state=&limit=&cursor=`: the caller's jobs, newest first.
pub async fn list(
    State(state): State<AppState>,
    auth: Authorized,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| {
        bad_request(
            None,
            format!("{e} — the parameters are state, limit and cursor"),
        )
    })?;
    if let Some(s) = q.state.as_deref().filter(|s| !STATES.contains(s)) {
        return Err(bad_request(
            None,
            format!("state {s:?} is not one of {}", STATES.join(", ")),
        ));
    }
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(bad_request(
            None,
            format!("limit must be 1..=100, got {limit}"),
        ));
    }
    let before = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            bad_request(
                None,
                "cursor is not one this API gave — pass nextCursor back unchanged",
            )
        })?),
    };
    let mut rows = db::list_jobs(
        &state.pool,
        &auth.caller.tenant,
        q.state.as_deref(),
        before,
        limit,
    )
    .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = if more {
        rows.last().map(|r| r.seq.to_string())
    } else {
        None
    };
    let mut videos = Vec::with_capacity(rows.len());
    for row in &rows {
        videos.push(job_resource(row, &state.links).await);
    }
    Ok(ok_json(
        &auth,
        None,
        StatusCode::OK,
        json!({"videos": videos, "nextCursor": next}),
    ))
}

/// `GET /v1/usage`: today's quota, used and remaining, and the rate limit.
pub async fn usage(State(state): State<AppState>, auth: Authorized) -> Result<Response, ApiError> {
    let (day, videos, gpu_ms) = limits::used_today(&state.pool, &auth.caller.tenant).await?;
    let plan = &auth.plan;
    let gpu_seconds = (gpu_ms as u64).div_ceil(1000);
    let body = json!({
        "tenant": auth.caller.tenant,
        "day": day,
        "resetsInSeconds": limits::seconds_to_next_utc_day(),
        "videos": {"limit": plan.videos_per_day, "used": videos, "remaining": plan.videos_per_day.saturating_sub(videos as u64)},
        "gpuSeconds": {"limit": plan.gpu_seconds_per_day, "used": gpu_seconds, "remaining": plan.gpu_seconds_per_day.saturating_sub(gpu_seconds)},
        "rate": {"requestsPerSecond": plan.requests_per_sec, "burst": plan.burst, "remaining": auth.rate.remaining},
    });
    Ok(ok_json(&auth, None, StatusCode::OK, body))
}

/// `GET /v1/videos/{id}/events`: Server-Sent Events. One message per change of the job's row
/// or, while it is queued, of its queue position (event name = state, data = the job resource
/// with `queuePosition` while queued, id = the row's version), ending after the terminal state.
/// The row is read from PostgreSQL, so any replica can serve the stream and a reconnect after a
/// gateway restart continues where the job is.
pub async fn events(
    State(state): State<AppState>,
    auth: Authorized,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let first = owned(&state, &auth, &id).await?;
    let poll = Duration::from_millis(state.cfg.http.sse_poll_ms.max(20));
    let tenant = auth.caller.tenant.clone();
    // What the client saw last: the row's version and the queue position.
    type Seen = Option<(i64, Option<i64>)>;
    let stream = futures::stream::unfold(
        (Some(first), None::<(i64, Option<i64>)>, false),
        move |(mut pending, seen, done): (Option<JobRow>, Seen, bool)| {
            let state = state.clone();
            let (tenant, id) = (tenant.clone(), id.clone());
            async move {
                if done {
                    return None;
                }
                loop {
                    let row = match pending.take() {
                        Some(row) => row,
                        None => {
                            tokio::time::sleep(poll).await;
                            match db::job(&state.pool, &tenant, &id).await {
                                Ok(Some(row)) => row,
                                // Gone (its publish failed and it was forgotten): the stream ends.
                                Ok(None) => return None,
                                // The database will be back; the client keeps its stream.
                                Err(_) => continue,
                            }
                        }
                    };
                    let Ok(position) = queue_position(&state, &row).await else {
                        continue;
                    };
                    let now = (row.version, position);
                    if Some(now) == seen {
                        continue;
                    }
                    let mut resource = job_resource(&row, &state.links).await;
                    if let Some(position) = position {
                        resource["queuePosition"] = json!(position);
                    }
                    let event = Event::default()
                        .event(row.state.clone())
                        .id(row.version.to_string())
                        .json_data(resource)
                        .expect("a JSON value serialises");
                    return Some((Ok(event), (None, Some(now), row.is_terminal())));
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `GET /v1/videos/{id}/files/{name}`: a `file://` artifact (video or thumbnail) of a completed
/// job, streamed by the gateway (object stores get signed links instead).
pub async fn file(
    State(state): State<AppState>,
    auth: Authorized,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let row = owned(&state, &auth, &id).await?;
    let artifact = row
        .terminal
        .as_ref()
        .and_then(|t| t.get("completed"))
        .and_then(|c| c.get(name.as_str()))
        .filter(|_| ["video", "thumbnail", "manifest"].contains(&name.as_str()))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("video {id} has no completed {name} — wait for state completed; names are video, thumbnail and manifest")))?;
    let uri = artifact
        .get("uri")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let path = crate::links::file_path(uri).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "{name} of {id} is in object storage — use the signed url of GET /v1/videos/{id}"
            ),
        )
    })?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        ApiError::new(
            StatusCode::GONE,
            "artifact_missing",
            format!("{name} of {id} could not be read ({e}) — it may have been deleted"),
        )
    })?;
    let content_type = artifact
        .get("contentType")
        .and_then(Value::as_str)
        .unwrap_or("application/octet-stream")
        .to_string();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    response.extensions_mut().insert(auth.log(Some(&id)));
    Ok(response)
}
