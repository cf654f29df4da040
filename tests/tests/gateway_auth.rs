//! `t2v-gateway` refuses tokens that are expired, for another audience or issuer, signed by
//! another key, `alg: none`, or HS256 on a production gateway; and follows a JWKS URL, fetching
//! it again when a token names a key it has not seen (key rotation).

use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::{json, Value};
use t2v_tests::gateway::{
    fresh_database, now_secs, video_body, GatewayProcess, SigningKey, AUDIENCE, ISSUER,
};
use t2v_tests::WorkerSetup;

async fn status_and_error(gateway: &GatewayProcess, token: &str) -> (u16, String, String) {
    let r = gateway.get(token, "/v1/usage").await;
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|h| h.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body: Value = r.json().await.unwrap();
    (
        status,
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        challenge,
    )
}

#[tokio::test]
async fn bad_tokens_are_refused_with_the_reason() {
    let setup = WorkerSetup::new("gw-auth", 1).await;
    let key = SigningKey::generate("k1");
    let stranger = SigningKey::generate("k1");
    let gateway = GatewayProcess::start(&setup, &fresh_database(), &key, &[]).await;

    let (status, _, _) = status_and_error(&gateway, &key.token("acme", json!({}))).await;
    assert_eq!(status, 200, "a good token passes");

    let claims = |extra: Value| {
        let mut c = json!({"sub": "acme", "iss": ISSUER, "aud": AUDIENCE, "exp": now_secs() + 600});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    let cases = [
        (
            "expired",
            key.sign(&claims(json!({"exp": now_secs() - 600}))),
            "expired",
        ),
        (
            "not yet valid",
            key.sign(&claims(json!({"nbf": now_secs() + 600}))),
            "nbf",
        ),
        (
            "wrong audience",
            key.sign(&claims(json!({"aud": "someone-else"}))),
            "audience",
        ),
        (
            "wrong issuer",
            key.sign(&claims(json!({"iss": "https://evil.test"}))),
            "issuer",
        ),
        (
            "no exp",
            key.sign(&json!({"sub": "acme", "iss": ISSUER, "aud": AUDIENCE})),
            "exp",
        ),
        ("wrong key", stranger.sign(&claims(json!({}))), "signature"),
        ("no tenant", key.sign(&claims(json!({"sub": ""}))), "tenant"),
    ];
    for (what, token, reason) in cases {
        let (status, message, challenge) = status_and_error(&gateway, &token).await;
        assert_eq!(status, 401, "{what}");
        assert!(message.contains(reason), "{what}: {message}");
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\""),
            "{what}: {challenge}"
        );
    }

    // alg: none, and HS256 signed with the public key as the secret (the classic confusion).
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = b64.encode(claims(json!({})).to_string());
    let none = format!(
        "{}.{payload}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#)
    );
    let pem = std::fs::read(&key.public_pem_path).unwrap();
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(&pem).unwrap(),
    )
    .unwrap();
    for (what, token) in [
        ("alg none", none),
        ("HS256", hs256),
        ("garbage", "a.b.c".to_string()),
    ] {
        let (status, message, _) = status_and_error(&gateway, &token).await;
        assert_eq!(status, 401, "{what}");
        assert!(message.contains("algorithm"), "{what}: {message}");
    }
    let r = gateway
        .http
        .get(gateway.url("/v1/usage"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token");
    // None of them spent a video.
    let r = gateway
        .submit(
            &key.token("acme", json!({"exp": now_secs() - 600})),
            &video_body(4),
            None,
        )
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(t2v_tests::record_count(&setup.requests), 0);
}

#[tokio::test]
async fn a_jwks_url_is_followed_through_a_key_rotation() {
    let first = SigningKey::generate("2026-a");
    let second = SigningKey::generate("2026-b");
    let jwks = Arc::new(Mutex::new(json!({"keys": [first.jwk()]})));
    let served = jwks.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let served = served.clone();
            async move {
                let body = served.lock().unwrap().to_string();
                ([("content-type", "application/json")], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let setup = WorkerSetup::new("gw-jwks", 1).await;
    let gateway = GatewayProcess::start_with(
        &setup,
        &fresh_database(),
        None,
        &[
            ("T2V_GATEWAY__AUTH__JWKS_URL", &jwks_url),
            ("T2V_GATEWAY__AUTH__JWKS_MIN_REFRESH_SECS", "0"),
        ],
    )
    .await;
    assert_eq!(
        gateway
            .get(&first.token("acme", json!({})), "/v1/usage")
            .await
            .status(),
        200
    );
    assert_eq!(
        gateway
            .get(&second.token("acme", json!({})), "/v1/usage")
            .await
            .status(),
        401,
        "not published yet"
    );

    // The provider rotates: the new kid is fetched on first sight; the retired one stops working.
    *jwks.lock().unwrap() = json!({"keys": [second.jwk()]});
    assert_eq!(
        gateway
            .get(&second.token("acme", json!({})), "/v1/usage")
            .await
            .status(),
        200
    );
    let (status, message, _) = status_and_error(&gateway, &first.token("acme", json!({}))).await;
    assert_eq!(status, 401, "the retired key is gone from the fetched set");
    assert!(message.contains("2026-a"), "{message}");
}
