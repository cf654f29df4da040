//! `/openapi.json` is an OpenAPI 3.1 document whose every path and method the router serves
//! (none answers 404 or 405), whose every `$ref` resolves, and which the gateway serves as is.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde_json::Value;
use t2v_gateway::api::{router, AppState, OPENAPI};
use t2v_gateway::config::{GatewayConfig, Secret};

fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

async fn serve() -> String {
    let mut cfg = GatewayConfig::default();
    cfg.database.url = Secret::new("postgres://nobody@127.0.0.1:1/none");
    cfg.auth.issuer = "iss".into();
    cfg.auth.audience = "aud".into();
    cfg.auth.hs256_secret = Secret::new("s");
    cfg.auth.allow_hs256 = true;
    let state = AppState {
        pool: sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(500))
            .connect_lazy(cfg.database.url.expose())
            .unwrap(),
        verifier: t2v_gateway::auth::Verifier::new(&cfg.auth).unwrap(),
        submitter: Arc::new(t2v_producer::Submitter::new(cfg.submitter_config().unwrap()).unwrap()),
        links: Arc::new(t2v_gateway::links::Links::new(cfg.link_ttl())),
        metrics: Arc::new(t2v_gateway::metrics::Metrics::new()),
        ready: Arc::new(AtomicBool::new(false)),
        oidc: None,
        cfg: Arc::new(cfg),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    base
}

#[tokio::test]
async fn every_documented_operation_is_served_and_every_ref_resolves() {
    let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r.strip_prefix('#').expect("local refs only");
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }

    let base = serve().await;
    let http = reqwest::Client::new();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 9);
    for (path, item) in paths {
        let concrete = path.replace("{id}", "some-id").replace("{name}", "video");
        for (method, operation) in item.as_object().unwrap() {
            assert!(
                operation["responses"].is_object(),
                "{method} {path} documents its responses"
            );
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let status = http
                .request(method.clone(), format!("{base}{concrete}"))
                .send()
                .await
                .unwrap()
                .status();
            assert!(
                status != 404 && status != 405,
                "{method} {path} is documented but answers {status}"
            );
            if path.starts_with("/v1/") {
                assert_eq!(status, 401, "{method} {path} needs a token");
                assert!(
                    operation["security"].is_array(),
                    "{method} {path} documents its bearer token"
                );
            }
        }
    }
    let served: Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, doc);
    // An undocumented path is not served.
    assert_eq!(
        http.get(format!("{base}/v1/secret"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[test]
fn the_request_documents_its_webhook_url() {
    let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    let field = &doc["components"]["schemas"]["VideoRequest"]["properties"]["webhookUrl"];
    assert_eq!(field["type"], "string");
    let described = field["description"].as_str().unwrap_or_default();
    for word in ["webhook-signature", "https", "private", "redirects"] {
        assert!(
            described.contains(word),
            "webhookUrl says {word}: {described}"
        );
    }
}

/// The JSON names of a proto message's fields.
fn proto_fields(message: &str) -> std::collections::BTreeSet<String> {
    t2v_proto::descriptor_pool()
        .get_message_by_name(message)
        .unwrap_or_else(|| panic!("{message} is in the descriptor set"))
        .fields()
        .map(|f| f.json_name().to_string())
        .collect()
}

fn schema_properties(doc: &Value, schema: &str) -> std::collections::BTreeSet<String> {
    doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{schema} has properties"))
        .keys()
        .cloned()
        .collect()
}

#[test]
fn the_request_schema_has_every_field_a_client_may_send() {
    let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    let mut expected = proto_fields("t2v.v1.GenerationRequest");
    for set_by_the_fleet in ["jobId", "attempt", "submittedAtUnixMs"] {
        assert!(expected.remove(set_by_the_fleet), "{set_by_the_fleet}");
    }
    expected.insert("webhookUrl".into());
    assert_eq!(schema_properties(&doc, "VideoRequest"), expected);
    assert_eq!(
        schema_properties(&doc, "Image"),
        proto_fields("t2v.v1.ConditionImage")
    );
}

#[test]
fn the_image_schema_states_the_contracts_bounds() {
    use t2v_contract::validate::{IMAGE_URI_SCHEMES, MAX_IMAGE_URI_BYTES, MAX_INLINE_IMAGE_BYTES};
    let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    let image = &doc["components"]["schemas"]["Image"];
    assert_eq!(
        doc["components"]["schemas"]["VideoRequest"]["properties"]["image"]["$ref"],
        "#/components/schemas/Image"
    );
    let uri = &image["properties"]["uri"];
    assert_eq!(uri["maxLength"], MAX_IMAGE_URI_BYTES);
    let described = uri["description"].as_str().unwrap_or_default();
    for scheme in IMAGE_URI_SCHEMES {
        assert!(described.contains(&format!("{scheme}://")), "{described}");
    }
    let inline = image["properties"]["inline"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        inline.contains(&format!("{MAX_INLINE_IMAGE_BYTES} bytes")),
        "{inline}"
    );
    // The job resource names an inline image by digest and size, never by its bytes.
    assert_eq!(
        schema_properties(&doc, "ImageSettings"),
        ["sha256", "sizeBytes", "uri"].map(String::from).into()
    );
}
