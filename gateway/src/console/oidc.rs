//! Console sign-in through the configured OIDC issuer (`auth.issuer`, the one whose tokens the
//! gateway accepts): authorization code with PKCE for a public client. The browser makes the
//! verifier and `state` and keeps them in its tab; the gateway only reads the issuer's discovery
//! document, builds the authorization URL and trades the code for a token at the token endpoint
//! (so the console talks to its own origin only, and the page needs no CORS from the issuer).
//! The gateway keeps nothing: the token goes back to the tab that asked.

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use reqwest::Url;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::api::{ApiError, AppState};
use crate::config::ConsoleOidcConfig;

/// The two endpoints of the issuer's discovery document the console needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
}

/// The issuer as the console signs in with it: its settings and its discovery document, read
/// once (a failed read is tried again on the next sign-in).
pub struct Provider {
    cfg: ConsoleOidcConfig,
    issuer: String,
    http: reqwest::Client,
    discovery: OnceCell<Discovery>,
}

fn unavailable(message: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "identity_provider_unavailable",
        message,
    )
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
}

impl Provider {
    pub fn new(cfg: &ConsoleOidcConfig, issuer: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            cfg: cfg.clone(),
            issuer: issuer.to_string(),
            http,
            discovery: OnceCell::new(),
        })
    }

    async fn discovery(&self) -> Result<&Discovery, ApiError> {
        self.discovery
            .get_or_try_init(|| async {
                let url = discovery_url(&self.issuer);
                let fetched: Discovery = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| unavailable(format!("reading {url}: {e} — check auth.issuer and that the issuer is reachable from the gateway")))?
                    .json()
                    .await
                    .map_err(|e| unavailable(format!("{url} is not a discovery document ({e}) — check auth.issuer")))?;
                if fetched.issuer.trim_end_matches('/') != self.issuer.trim_end_matches('/') {
                    return Err(unavailable(format!(
                        "{url} names issuer {:?}, not {:?} — set auth.issuer to the issuer's exact identifier",
                        fetched.issuer, self.issuer
                    )));
                }
                Ok(fetched)
            })
            .await
    }
}

/// Where an issuer publishes its discovery document (OpenID Connect Discovery 1.0, section 4).
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Checks a PKCE or `state` value from the browser: base64url characters (RFC 7636's
/// unreserved set) of a bounded length.
fn check_param(
    name: &str,
    value: &str,
    lengths: std::ops::RangeInclusive<usize>,
) -> Result<(), ApiError> {
    let fine = lengths.contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if fine {
        Ok(())
    } else {
        Err(bad_request(format!(
            "{name} must be {}..={} characters of A-Z a-z 0-9 - . _ ~ — sign in again from the console",
            lengths.start(),
            lengths.end()
        )))
    }
}

/// The authorization request: the console's client, its redirect URL, the scopes, `state`,
/// and the S256 challenge of the browser's verifier.
pub fn authorization_url(
    endpoint: &str,
    cfg: &ConsoleOidcConfig,
    state: &str,
    code_challenge: &str,
) -> Result<Url, String> {
    let mut url = Url::parse(endpoint).map_err(|e| {
        format!("the issuer's authorization_endpoint {endpoint:?} is not a URL ({e})")
    })?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &cfg.client_id)
        .append_pair("redirect_uri", &cfg.redirect_url)
        .append_pair("scope", &cfg.scopes)
        .append_pair("state", state)
        .append_pair("code_challenge", code_challenge)
        .append_pair("code_challenge_method", "S256");
    Ok(url)
}

/// The token request's form body (RFC 6749 section 4.1.3 with RFC 7636's verifier).
pub fn token_form(cfg: &ConsoleOidcConfig, code: &str, code_verifier: &str) -> String {
    let mut form = Url::parse("http://form.invalid/").expect("a constant URL parses");
    form.query_pairs_mut()
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", &cfg.redirect_url)
        .append_pair("client_id", &cfg.client_id)
        .append_pair("code_verifier", code_verifier);
    form.query().unwrap_or_default().to_string()
}

fn provider(state: &AppState) -> Result<&Provider, ApiError> {
    state.oidc.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "oidc_not_configured",
            "this gateway offers no sign-in through an identity provider — paste a token, or ask the operator to set console.oidc.client_id",
        )
    })
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    state: String,
    code_challenge: String,
}

/// `GET /console/oidc/login?state=&code_challenge=`: a redirect to the issuer's sign-in.
pub async fn login(
    State(state): State<AppState>,
    query: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let provider = provider(&state)?;
    let Query(q) =
        query.map_err(|e| bad_request(format!("{e} — start sign-in from the console")))?;
    check_param("state", &q.state, 16..=128)?;
    // S256 of a verifier: 32 bytes in base64url.
    check_param("code_challenge", &q.code_challenge, 43..=43)?;
    let discovery = provider.discovery().await?;
    let url = authorization_url(
        &discovery.authorization_endpoint,
        &provider.cfg,
        &q.state,
        &q.code_challenge,
    )
    .map_err(unavailable)?;
    let response = (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, url.to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
    );
    Ok(super::secure(response.into_response()))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    code: String,
    code_verifier: String,
}

/// `POST /console/oidc/token` `{code, codeVerifier}`: the issuer's access token, `{accessToken}`.
pub async fn token(
    State(state): State<AppState>,
    body: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let provider = provider(&state)?;
    let Json(req) = body.map_err(|e| bad_request(format!("{e} — send {{code, codeVerifier}}")))?;
    check_param("codeVerifier", &req.code_verifier, 43..=128)?;
    if req.code.is_empty() || req.code.len() > 4096 {
        return Err(bad_request("code must be 1..=4096 bytes — sign in again"));
    }
    let discovery = provider.discovery().await?;
    let answer = provider
        .http
        .post(&discovery.token_endpoint)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(token_form(&provider.cfg, &req.code, &req.code_verifier))
        .send()
        .await
        .map_err(|e| {
            unavailable(format!(
                "the token endpoint did not answer ({e}) — try again shortly"
            ))
        })?;
    let status = answer.status();
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    let access_token = body.get("access_token").and_then(Value::as_str);
    match access_token {
        Some(token) if status.is_success() => {
            let response = (
                [(header::CACHE_CONTROL, "no-store")],
                Json(json!({"accessToken": token})),
            );
            Ok(super::secure(response.into_response()))
        }
        _ => {
            let said = body
                .get("error_description")
                .or_else(|| body.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("no access_token in the answer");
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "sign_in_failed",
                format!(
                    "the identity provider refused the sign-in ({status}: {said}) — sign in again"
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ConsoleOidcConfig {
        ConsoleOidcConfig {
            client_id: "t2v console".into(),
            redirect_url: "https://t2v.example.com/".into(),
            scopes: "openid profile".into(),
        }
    }

    #[test]
    fn the_authorization_url_carries_the_client_the_challenge_and_state() {
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        let url = authorization_url(
            "https://id.example/oauth2/authorize?tenant=t1",
            &cfg(),
            "st4te-0123456789",
            challenge,
        )
        .unwrap();
        assert_eq!(url.host_str(), Some("id.example"));
        assert_eq!(url.path(), "/oauth2/authorize");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let expect = [
            ("tenant", "t1"),
            ("response_type", "code"),
            ("client_id", "t2v console"),
            ("redirect_uri", "https://t2v.example.com/"),
            ("scope", "openid profile"),
            ("state", "st4te-0123456789"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ];
        let expect: Vec<(String, String)> = expect
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(pairs, expect);
        // Encoded, not pasted: a space or a slash cannot break out of its parameter.
        assert!(url.as_str().contains("client_id=t2v+console"), "{url}");
        assert!(
            url.as_str()
                .contains("redirect_uri=https%3A%2F%2Ft2v.example.com%2F"),
            "{url}"
        );
        assert!(authorization_url("not a url", &cfg(), "s", challenge).is_err());
    }

    #[test]
    fn the_token_form_sends_the_verifier_and_the_same_redirect() {
        let form = token_form(&cfg(), "c0de&x=1", "v".repeat(43).as_str());
        let pairs: Vec<(String, String)> = Url::parse(&format!("http://x/?{form}"))
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        assert_eq!(pairs[0], ("grant_type".into(), "authorization_code".into()));
        assert_eq!(pairs[1], ("code".into(), "c0de&x=1".into()));
        assert_eq!(
            pairs[2],
            ("redirect_uri".into(), "https://t2v.example.com/".into())
        );
        assert_eq!(pairs[3], ("client_id".into(), "t2v console".into()));
        assert_eq!(pairs[4], ("code_verifier".into(), "v".repeat(43)));
        assert_eq!(pairs.len(), 5);
    }

    #[test]
    fn discovery_is_read_from_the_well_known_path() {
        assert_eq!(
            discovery_url("https://id.example/realms/t2v/"),
            "https://id.example/realms/t2v/.well-known/openid-configuration"
        );
    }

    #[test]
    fn browser_values_are_checked_before_they_reach_a_url() {
        assert!(check_param("state", "abcdefghijklmnop", 16..=128).is_ok());
        assert!(check_param("state", "short", 16..=128).is_err());
        assert!(check_param("state", "abcdefghijklmnop&scope=x", 16..=128).is_err());
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(check_param("code_challenge", challenge, 43..=43).is_ok());
        let e = check_param("code_challenge", "x", 43..=43).unwrap_err();
        assert!(e.message.contains("43..=43"), "{}", e.message);
    }
}
