//! The conditioning image of `POST /v1/videos`: `image` is `{"uri": "s3://bucket/key"}` or
//! `{"inline": "<base64>"}`, the protobuf JSON form of `t2v.v1.ConditionImage`. Its bounds and
//! their words are the contract's ([`t2v_contract::validate`]); this module only makes sure a
//! malformed `image` is refused naming `image`, `image.uri` or `image.inline` rather than with the
//! JSON parser's words, and keeps the bytes out of what the gateway stores and shows: the job
//! resource names an inline image by its SHA-256 and size, as the manifest does.

use base64::alphabet;
use base64::engine::general_purpose::GeneralPurpose;
use base64::engine::{DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;
use serde_json::{json, Value};
use t2v_contract::validate::{self, InvalidRequest};
use t2v_proto::v1::ConditionImage;

/// The two forms, for messages.
const FORMS: &str =
    r#"{"uri": "s3://bucket/key"} or {"inline": "<base64 of a PNG, JPEG or WebP>"}"#;

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidRequest {
    InvalidRequest {
        field,
        message: message.into(),
    }
}

/// Decodes `image.inline` as the protobuf JSON mapping reads `bytes`: the standard or the
/// URL-safe alphabet, padded or not.
pub fn decode_inline(text: &str) -> Option<Vec<u8>> {
    let lenient =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    [alphabet::STANDARD, alphabet::URL_SAFE]
        .iter()
        .find_map(|a| GeneralPurpose::new(a, lenient).decode(text).ok())
}

/// Checks the JSON form of the body's `image` (absent or `null` = text-to-video) with the
/// contract's bounds, so that every malformed image is a 400 naming its field and the fix.
pub fn check_form(body: &Value) -> Result<(), InvalidRequest> {
    let Some(image) = body.get("image").filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let Some(fields) = image.as_object() else {
        return Err(invalid("image", format!("must be an object, {FORMS}")));
    };
    if let Some(unknown) = fields.keys().find(|k| *k != "uri" && *k != "inline") {
        return Err(invalid(
            "image",
            format!("has an unknown field {unknown:?} — send {FORMS}"),
        ));
    }
    match (fields.get("uri"), fields.get("inline")) {
        (Some(_), Some(_)) => Err(invalid(
            "image",
            "has both uri and inline — send one of them",
        )),
        (None, None) => validate::condition_image(&ConditionImage { source: None }),
        (Some(uri), None) => match uri.as_str() {
            Some(uri) => validate::image_uri(uri),
            None => Err(invalid("image.uri", format!("must be a string, {FORMS}"))),
        },
        (None, Some(inline)) => {
            let bytes = inline.as_str().and_then(decode_inline).ok_or_else(|| {
                invalid(
                    "image.inline",
                    "must be the image file's bytes in base64 (e.g. `base64 -w0 cat.png`)",
                )
            })?;
            validate::inline_image(bytes.len())
        }
    }
}

/// The request's JSON form as the gateway stores and shows it: an inline image becomes
/// `{"sha256": "<hex>", "sizeBytes": n}` of its bytes; a URI stays as sent.
pub fn redact(settings: &mut Value) {
    let Some(image) = settings.get_mut("image").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(inline) = image.remove("inline") else {
        return;
    };
    let bytes = inline.as_str().and_then(decode_inline).unwrap_or_default();
    image.insert("sha256".into(), json!(t2v_contract::sha256_hex(&bytes)));
    image.insert("sizeBytes".into(), json!(bytes.len()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use t2v_contract::validate::MAX_INLINE_IMAGE_BYTES;

    fn body(image: Value) -> Value {
        json!({"model": "m", "prompt": "p", "image": image})
    }

    fn field_of(image: Value) -> &'static str {
        check_form(&body(image)).expect_err("refused").field
    }

    #[test]
    fn both_forms_within_the_contracts_bounds_pass() {
        let b64 = base64::engine::general_purpose::STANDARD;
        for image in [
            json!({"uri": "s3://inputs/cat.png"}),
            json!({"inline": b64.encode([0x89u8; 10])}),
            json!({"inline": b64.encode(vec![1u8; MAX_INLINE_IMAGE_BYTES])}),
            Value::Null,
        ] {
            assert_eq!(check_form(&body(image.clone())), Ok(()), "{image}");
        }
        assert_eq!(check_form(&json!({"model": "m"})), Ok(()));
    }

    #[test]
    fn each_malformed_image_names_its_field() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let too_big = b64.encode(vec![1u8; MAX_INLINE_IMAGE_BYTES + 1]);
        assert_eq!(field_of(json!({"inline": too_big})), "image.inline");
        assert_eq!(field_of(json!({"inline": ""})), "image.inline");
        assert_eq!(field_of(json!({"inline": "not base64!"})), "image.inline");
        assert_eq!(field_of(json!({"inline": 7})), "image.inline");
        assert_eq!(field_of(json!({"uri": "https://host/a.png"})), "image.uri");
        assert_eq!(field_of(json!({"uri": ["s3://b/k"]})), "image.uri");
        assert_eq!(
            field_of(json!({"uri": "s3://b/k", "inline": "AA=="})),
            "image"
        );
        assert_eq!(field_of(json!({})), "image");
        assert_eq!(field_of(json!({"url": "s3://b/k"})), "image");
        assert_eq!(field_of(json!("s3://b/k")), "image");
        // The contract's own words, which say how to send it instead.
        let err = check_form(&body(
            json!({"inline": b64.encode(vec![1u8; MAX_INLINE_IMAGE_BYTES + 1])}),
        ))
        .unwrap_err();
        assert!(err.message.contains("by uri"), "{err}");
    }

    #[test]
    fn both_base64_alphabets_decode_padded_or_not() {
        let bytes = [0xfbu8, 0xff, 0xbf, 0x01];
        for text in ["+/+/AQ==", "+/+/AQ", "-_-_AQ==", "-_-_AQ"] {
            assert_eq!(decode_inline(text).as_deref(), Some(&bytes[..]), "{text}");
        }
        assert_eq!(decode_inline("a b"), None);
    }

    #[test]
    fn an_inline_image_is_stored_as_its_digest_and_size_and_a_uri_as_sent() {
        let bytes = b"\x89PNG not really".to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let mut settings = json!({"prompt": "p", "image": {"inline": b64}});
        redact(&mut settings);
        assert_eq!(
            settings["image"],
            json!({"sha256": t2v_contract::sha256_hex(&bytes), "sizeBytes": bytes.len()})
        );
        assert!(!settings.to_string().contains(&b64));
        let mut settings = json!({"prompt": "p", "image": {"uri": "s3://b/k.png"}});
        redact(&mut settings);
        assert_eq!(settings["image"], json!({"uri": "s3://b/k.png"}));
    }
}
