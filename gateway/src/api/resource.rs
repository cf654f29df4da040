//! The job resource: what `POST /v1/videos`, `GET /v1/videos/{id}`, the list and every SSE
//! message carry. Built from a job row; field names follow the protobuf JSON form the settings
//! and events already use (lowerCamelCase, 64-bit integers as strings inside `settings`).

use serde_json::{json, Map, Value};

use crate::db::JobRow;
use crate::links::{Link, Links};

/// The reserved label that carries the tenant on the request, and so on every event and the
/// manifest (workers copy labels). Clients cannot set it: the gateway refuses bodies that do.
pub const TENANT_LABEL: &str = "t2v.tenant";

/// The resource of `row`; for a completed job, with download links for the video and thumbnail.
pub async fn job_resource(row: &JobRow, links: &Links) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), json!(row.job_id));
    out.insert("state".into(), json!(row.state));
    out.insert("createdAtUnixMs".into(), json!(row.created_ms));
    out.insert("updatedAtUnixMs".into(), json!(row.updated_ms));
    out.insert("settings".into(), settings(&row.request));
    if let Some(started) = row.started.as_ref().and_then(|e| e.get("started")) {
        out.insert("used".into(), started.clone());
    }
    if row.state == "running" || row.state == "queued" {
        out.insert(
            "progress".into(),
            json!({"step": row.step.unwrap_or(0), "totalSteps": row.total_steps, "etaMs": row.eta_ms}),
        );
    }
    let terminal = row.terminal.as_ref();
    if let Some(c) = terminal.and_then(|t| t.get("completed")) {
        out.insert(
            "timings".into(),
            c.get("timings").cloned().unwrap_or(Value::Null),
        );
        out.insert("result".into(), result(row, c, links).await);
    }
    if let Some(f) = terminal.and_then(|t| t.get("failed")) {
        out.insert(
            "error".into(),
            json!({"code": f.get("code"), "message": f.get("message"), "retryable": f.get("retryable").cloned().unwrap_or(json!(false))}),
        );
    }
    if let Some(c) = terminal.and_then(|t| t.get("canceled")) {
        out.insert("canceled".into(), c.clone());
    }
    Value::Object(out)
}

/// The request as submitted, without the reserved tenant label, and an inline image as its
/// digest and size (rows are stored that way; this also covers rows an older gateway stored
/// with the bytes).
fn settings(request: &Value) -> Value {
    let mut settings = request.clone();
    super::image::redact(&mut settings);
    if let Some(labels) = settings.get_mut("labels").and_then(Value::as_object_mut) {
        labels.remove(TENANT_LABEL);
        if labels.is_empty() {
            settings.as_object_mut().map(|s| s.remove("labels"));
        }
    }
    settings
}

/// Video, thumbnail and manifest of a Completed event: their digests and sizes, and where to
/// get them.
async fn result(row: &JobRow, completed: &Value, links: &Links) -> Value {
    let mut out = Map::new();
    for name in ["video", "thumbnail", "manifest"] {
        let Some(artifact) = completed.get(name) else {
            continue;
        };
        let uri = artifact
            .get("uri")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut entry = json!({
            "sha256": artifact.get("sha256"),
            "sizeBytes": artifact.get("sizeBytes").and_then(Value::as_str).and_then(|s| s.parse::<u64>().ok()),
            "contentType": artifact.get("contentType"),
        });
        match links.link(uri, &row.job_id, name).await {
            Ok(Link::Signed {
                url,
                expires_at_unix_ms,
            }) => {
                entry["url"] = json!(url);
                entry["expiresAtUnixMs"] = json!(expires_at_unix_ms);
            }
            Ok(Link::Streamed { path }) => entry["url"] = json!(path),
            Err(e) => {
                tracing::warn!(job_id = %row.job_id, error = %e, "no download link");
                entry["linkError"] = json!(e);
            }
        }
        out.insert(name.into(), entry);
    }
    for key in ["seed", "model", "modelRevision"] {
        if let Some(v) = completed.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_label_is_not_shown_back() {
        let s = settings(&json!({"prompt": "x", "labels": {TENANT_LABEL: "acme", "team": "vfx"}}));
        assert_eq!(s, json!({"prompt": "x", "labels": {"team": "vfx"}}));
        let s = settings(&json!({"prompt": "x", "labels": {TENANT_LABEL: "acme"}}));
        assert_eq!(s, json!({"prompt": "x"}));
    }

    #[test]
    fn a_row_stored_with_the_image_bytes_shows_their_digest_only() {
        // "iVBORw0KGgo=" is the PNG signature, 8 bytes.
        let s = settings(&json!({"prompt": "x", "image": {"inline": "iVBORw0KGgo="}}));
        let signature = b"\x89PNG\r\n\x1a\n";
        assert_eq!(
            s["image"],
            json!({"sha256": t2v_contract::sha256_hex(signature), "sizeBytes": 8})
        );
    }
}
