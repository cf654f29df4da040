//! The web console at `/`: plain HTML, CSS and one JavaScript module from `gateway/console/`,
//! embedded in the binary (no build step, nothing fetched at run time). It uses the public
//! `/v1` API with the signed-in caller's bearer token, so it can do nothing a client could not.
//!
//! Every console answer carries a strict Content-Security-Policy (scripts from this origin only,
//! no inline script or style, no framing) and an `ETag`; assets are revalidated on each load, so
//! a new gateway version is never mixed with an old cached script.
//!
//! # Layout
//! - this file: the assets, their routes and headers, `/console/config.json`.
//! - [`oidc`]: sign-in through the configured issuer (authorization code + PKCE).

pub mod oidc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::api::AppState;

/// One embedded file: its bytes, content type and entity tag.
struct Asset {
    body: &'static str,
    content_type: &'static str,
}

const INDEX: Asset = Asset {
    body: include_str!("../../console/index.html"),
    content_type: "text/html; charset=utf-8",
};
const SCRIPT: Asset = Asset {
    body: include_str!("../../console/console.js"),
    content_type: "text/javascript; charset=utf-8",
};
const STYLE: Asset = Asset {
    body: include_str!("../../console/console.css"),
    content_type: "text/css; charset=utf-8",
};

/// What the console may load: its own script and style, media from the gateway (as `blob:`
/// URLs of authorised downloads) or from signed object-store links (`https:`), requests to this
/// origin only. No inline script, no `eval`, no plugins, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' blob: https:; media-src 'self' blob: https:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes, merged into the gateway's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve(&INDEX, &headers) }),
        )
        .route(
            "/console/console.js",
            get(|headers: HeaderMap| async move { serve(&SCRIPT, &headers) }),
        )
        .route(
            "/console/console.css",
            get(|headers: HeaderMap| async move { serve(&STYLE, &headers) }),
        )
        .route("/console/config.json", get(config))
        .route("/console/oidc/login", get(oidc::login))
        .route("/console/oidc/token", post(oidc::token))
}

/// The security headers every console answer carries.
pub fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let fixed = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// An asset, or 304 when the client's copy (`If-None-Match`) is current.
fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = format!(
        "\"{}\"",
        &t2v_contract::sha256_hex(asset.body.as_bytes())[..32]
    );
    let cached = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag));
    let headers = [
        (header::ETAG, etag),
        // Revalidate every load: a 304 costs a round trip, a stale script a broken page.
        (header::CACHE_CONTROL, "no-cache".to_string()),
    ];
    let response = if cached {
        (StatusCode::NOT_MODIFIED, headers).into_response()
    } else {
        (
            headers,
            [(header::CONTENT_TYPE, asset.content_type)],
            asset.body,
        )
            .into_response()
    };
    secure(response)
}

/// `GET /console/config.json`: whether OIDC sign-in is offered and the models the form offers
/// (the served ones when requests are routed by model).
async fn config(State(state): State<AppState>) -> Response {
    let models = state
        .submitter
        .config()
        .routes
        .as_ref()
        .map(|routes| routes.served_models())
        .unwrap_or_default();
    let body = json!({"oidc": state.cfg.console.oidc.is_enabled(), "models": models});
    secure(([(header::CACHE_CONTROL, "no-cache")], Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_reference_only_what_the_policy_allows() {
        // No inline script or style: the policy would block them and the console would break.
        assert!(!INDEX.body.contains("<script>") && !INDEX.body.contains("style="));
        assert!(INDEX
            .body
            .contains(r#"<script type="module" src="/console/console.js">"#));
        assert!(INDEX.body.contains(r#"href="/console/console.css""#));
        assert!(!SCRIPT.body.contains("innerHTML") && !SCRIPT.body.contains("eval("));
        assert!(SCRIPT.body.contains("sessionStorage") && !SCRIPT.body.contains("localStorage"));
    }

    #[test]
    fn a_current_copy_is_not_sent_again() {
        let first = serve(&SCRIPT, &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(
            first.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let etag = first.headers()[header::ETAG].clone();
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, etag);
        let again = serve(&SCRIPT, &request);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            again.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
    }
}
