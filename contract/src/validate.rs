//! The documented bounds of a `GenerationRequest` (proto/t2v/v1/request.proto; a test in
//! `tests/bounds_match_proto.rs` reads those comments back), checked before a request leaves the
//! producer and again by the worker before any GPU work. Every error names the field and the
//! allowed range in one line.

use t2v_proto::v1::{condition_image, ConditionImage, GenerationRequest, Sampler};

/// A request field outside its documented bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct InvalidRequest {
    /// The proto field name, e.g. `num_frames`.
    pub field: &'static str,
    /// What is allowed and what was given.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidRequest {
    InvalidRequest {
        field,
        message: message.into(),
    }
}

pub const MAX_ID_LEN: usize = 128;
pub const MAX_PROMPT_BYTES: usize = 8192;
pub const MIN_SIDE: u32 = 64;
pub const MAX_SIDE: u32 = 1920;
pub const SIDE_MULTIPLE: u32 = 16;
pub const MAX_FRAMES: u32 = 241;
pub const MAX_FPS: u32 = 60;
pub const MAX_STEPS: u32 = 200;
pub const MAX_GUIDANCE: f32 = 30.0;
pub const SHIFT_RANGE: (f32, f32) = (0.1, 50.0);
pub const MAX_PRIORITY: u32 = 9;
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_KEY_BYTES: usize = 63;
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
pub const MAX_ATTEMPT: u32 = 100;
/// `image.uri`: 1..=2048 bytes.
pub const MAX_IMAGE_URI_BYTES: usize = 2048;
/// The URI schemes `image.uri` may use (which of them a worker reads is its configuration).
pub const IMAGE_URI_SCHEMES: [&str; 4] = ["s3", "gs", "az", "file"];
/// `image.inline`: 1..=48 KiB of encoded image; larger images go by URI.
pub const MAX_INLINE_IMAGE_BYTES: usize = 48 * 1024;
/// The largest image object a worker reads from a URI (32 MiB), enforced while reading.
pub const MAX_IMAGE_OBJECT_BYTES: u64 = 32 * 1024 * 1024;
/// The largest conditioning image in pixels per side, checked by the decoder.
pub const MAX_IMAGE_SIDE: u32 = 4096;
/// `cache_threshold`: 0.0..=1.0 when set.
pub const CACHE_THRESHOLD_RANGE: (f32, f32) = (0.0, 1.0);
/// The largest encoded `GenerationRequest` the fleet takes. Every field at its bound fits in
/// well under half of it; the worker dead-letters larger records without decoding them.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The longest Failed message and DLQ reason: what a person reads, not a copy of the input.
pub const MAX_REASON_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes on a character boundary, with `…` when something was cut.
pub fn truncate_reason(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The size of an encoded request: at most [`MAX_REQUEST_BYTES`].
pub fn request_size(encoded_len: usize) -> Result<(), InvalidRequest> {
    if encoded_len > MAX_REQUEST_BYTES {
        return Err(invalid(
            "request",
            format!("the encoded request is {encoded_len} bytes, more than the {MAX_REQUEST_BYTES} allowed — shorten the prompts or labels, or send the image by uri"),
        ));
    }
    Ok(())
}

/// Checks a job id (also used for Cancel): 1..=128 chars of `[A-Za-z0-9._-]`.
pub fn job_id(id: &str) -> Result<(), InvalidRequest> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(invalid(
            "job_id",
            format!("must be 1..={MAX_ID_LEN} characters, got {}", id.len()),
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(
            "job_id",
            format!("may contain only A-Z a-z 0-9 . _ -, found {bad:?}"),
        ));
    }
    Ok(())
}

/// Width or height: 0 (model default) or 64..=1920 in steps of 16.
pub fn side(field: &'static str, value: u32) -> Result<(), InvalidRequest> {
    if value == 0 {
        return Ok(());
    }
    if !(MIN_SIDE..=MAX_SIDE).contains(&value) || !value.is_multiple_of(SIDE_MULTIPLE) {
        return Err(invalid(
            field,
            format!("must be {MIN_SIDE}..={MAX_SIDE} and a multiple of {SIDE_MULTIPLE} (0 = model default), got {value}"),
        ));
    }
    Ok(())
}

/// Frames: 0 (model default) or 1..=241 with frames % 4 == 1 (the VAE's temporal stride).
pub fn num_frames(value: u32) -> Result<(), InvalidRequest> {
    if value != 0 && (value > MAX_FRAMES || value % 4 != 1) {
        return Err(invalid(
            "num_frames",
            format!("must be 1..={MAX_FRAMES} with num_frames % 4 == 1, e.g. 81 (0 = model default), got {value}"),
        ));
    }
    Ok(())
}

fn up_to(field: &'static str, value: u32, max: u32) -> Result<(), InvalidRequest> {
    if value > max {
        return Err(invalid(
            field,
            format!("must be 1..={max} (0 = model default), got {value}"),
        ));
    }
    Ok(())
}

fn guidance(field: &'static str, value: Option<f32>) -> Result<(), InvalidRequest> {
    match value {
        Some(g) if !(g.is_finite() && (0.0..=MAX_GUIDANCE).contains(&g)) => Err(invalid(
            field,
            format!("must be 0.0..={MAX_GUIDANCE} (unset = model default), got {g}"),
        )),
        _ => Ok(()),
    }
}

/// Checks every documented bound. `job_id` may be empty here: the submitter assigns one.
pub fn request(req: &GenerationRequest) -> Result<(), InvalidRequest> {
    request_size(prost::Message::encoded_len(req))?;
    if !req.job_id.is_empty() {
        job_id(&req.job_id)?;
    }
    model(&req.model)?;
    prompts(&req.prompt, &req.negative_prompt)?;
    side("width", req.width)?;
    side("height", req.height)?;
    num_frames(req.num_frames)?;
    up_to("fps", req.fps, MAX_FPS)?;
    up_to("num_inference_steps", req.num_inference_steps, MAX_STEPS)?;
    guidance("guidance_scale", req.guidance_scale)?;
    guidance("guidance_scale_2", req.guidance_scale_2)?;
    shift(req.shift)?;
    sampler(req.sampler)?;
    if req.priority > MAX_PRIORITY {
        return Err(invalid(
            "priority",
            format!("must be 0..={MAX_PRIORITY}, got {}", req.priority),
        ));
    }
    labels(&req.labels)?;
    if let Some(image) = &req.image {
        condition_image(image)?;
    }
    cache_threshold(req.cache_threshold)?;
    if req.attempt > MAX_ATTEMPT {
        return Err(invalid(
            "attempt",
            format!("must be 0..={MAX_ATTEMPT}, got {}", req.attempt),
        ));
    }
    Ok(())
}

/// Model id: 1..=128 chars of `[A-Za-z0-9._/-]`.
pub fn model(id: &str) -> Result<(), InvalidRequest> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(invalid(
            "model",
            format!("must be 1..={MAX_ID_LEN} characters, got {}", id.len()),
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(invalid(
            "model",
            format!("may contain only A-Z a-z 0-9 . _ - /, found {bad:?}"),
        ));
    }
    Ok(())
}

fn prompts(prompt: &str, negative_prompt: &str) -> Result<(), InvalidRequest> {
    if prompt.trim().is_empty() {
        return Err(invalid("prompt", "must not be empty or only whitespace"));
    }
    for (field, text) in [("prompt", prompt), ("negative_prompt", negative_prompt)] {
        if text.len() > MAX_PROMPT_BYTES {
            return Err(invalid(
                field,
                format!(
                    "must be at most {MAX_PROMPT_BYTES} bytes of UTF-8, got {}",
                    text.len()
                ),
            ));
        }
    }
    Ok(())
}

fn shift(value: Option<f32>) -> Result<(), InvalidRequest> {
    let (lo, hi) = SHIFT_RANGE;
    match value {
        Some(shift) if !(shift.is_finite() && (lo..=hi).contains(&shift)) => Err(invalid(
            "shift",
            format!("must be {lo}..={hi} (unset = scheduler default), got {shift}"),
        )),
        _ => Ok(()),
    }
}

fn sampler(value: i32) -> Result<(), InvalidRequest> {
    if Sampler::try_from(value).is_err() {
        return Err(invalid(
            "sampler",
            format!(
                "must be SAMPLER_UNSPECIFIED, SAMPLER_UNIPC or SAMPLER_FLOW_EULER, got {value}"
            ),
        ));
    }
    Ok(())
}

/// The conditioning image: exactly one of a URI (1..=2048 bytes, `s3://`, `gs://`, `az://` or
/// `file://`) or inline bytes (1..=48 KiB).
pub fn condition_image(image: &ConditionImage) -> Result<(), InvalidRequest> {
    match &image.source {
        None => Err(invalid(
            "image",
            "is set but has neither uri nor inline — set one, or leave image unset for text-to-video",
        )),
        Some(condition_image::Source::Uri(uri)) => image_uri(uri),
        Some(condition_image::Source::Inline(bytes)) => inline_image(bytes.len()),
    }
}

/// `image.uri`: 1..=2048 bytes, a scheme of [`IMAGE_URI_SCHEMES`], and a bucket (or container)
/// and key — or, for `file://`, an absolute path.
pub fn image_uri(uri: &str) -> Result<(), InvalidRequest> {
    const FORMS: &str = "s3://bucket/key, gs://bucket/key, az://container/key or file:///path";
    if uri.is_empty() || uri.len() > MAX_IMAGE_URI_BYTES {
        return Err(invalid(
            "image.uri",
            format!(
                "must be 1..={MAX_IMAGE_URI_BYTES} bytes, got {} — use {FORMS}",
                uri.len()
            ),
        ));
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(invalid("image.uri", format!("has no scheme — use {FORMS}")));
    };
    if !IMAGE_URI_SCHEMES.contains(&scheme) {
        return Err(invalid(
            "image.uri",
            format!("scheme {scheme}:// is not supported — use {FORMS}"),
        ));
    }
    let well_formed = if scheme == "file" {
        rest.starts_with('/') && rest.len() > 1
    } else {
        matches!(rest.split_once('/'), Some((bucket, key)) if !bucket.is_empty() && !key.is_empty())
    };
    if !well_formed {
        return Err(invalid(
            "image.uri",
            format!("{uri:?} names no object — use {FORMS}"),
        ));
    }
    if uri.chars().any(char::is_control) {
        return Err(invalid(
            "image.uri",
            "contains control characters — send the object's URI without them",
        ));
    }
    Ok(())
}

/// `image.inline`: 1..=48 KiB.
pub fn inline_image(len: usize) -> Result<(), InvalidRequest> {
    if len == 0 || len > MAX_INLINE_IMAGE_BYTES {
        return Err(invalid(
            "image.inline",
            format!(
                "must be 1..={} KiB ({MAX_INLINE_IMAGE_BYTES} bytes), got {len} bytes — send a larger image by uri",
                MAX_INLINE_IMAGE_BYTES / 1024
            ),
        ));
    }
    Ok(())
}

/// `cache_threshold`: unset, or finite and 0.0..=1.0.
pub fn cache_threshold(value: Option<f32>) -> Result<(), InvalidRequest> {
    let (lo, hi) = CACHE_THRESHOLD_RANGE;
    match value {
        Some(t) if !(t.is_finite() && (lo..=hi).contains(&t)) => Err(invalid(
            "cache_threshold",
            format!("must be {lo:.1}..={hi:.1} (unset = the variant's setting, 0.0 = no step caching), got {t}"),
        )),
        _ => Ok(()),
    }
}

fn labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)> + Clone,
) -> Result<(), InvalidRequest> {
    let count = labels.clone().into_iter().count();
    if count > MAX_LABELS {
        return Err(invalid(
            "labels",
            format!("at most {MAX_LABELS} entries, got {count}"),
        ));
    }
    for (key, value) in labels {
        if key.is_empty() || key.len() > MAX_LABEL_KEY_BYTES || value.len() > MAX_LABEL_VALUE_BYTES
        {
            return Err(invalid(
                "labels",
                format!("keys must be 1..={MAX_LABEL_KEY_BYTES} bytes and values at most {MAX_LABEL_VALUE_BYTES}; label {key:?} breaks this"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> GenerationRequest {
        GenerationRequest {
            job_id: "job-1".into(),
            model: "wan2.2-t2v-a14b".into(),
            prompt: "a cat surfing".into(),
            width: 832,
            height: 480,
            num_frames: 81,
            ..Default::default()
        }
    }

    fn uri_image(uri: &str) -> ConditionImage {
        ConditionImage {
            source: Some(condition_image::Source::Uri(uri.into())),
        }
    }

    fn inline_image_of(len: usize) -> ConditionImage {
        ConditionImage {
            source: Some(condition_image::Source::Inline(vec![0x89; len])),
        }
    }

    #[test]
    fn images_and_cache_thresholds_at_their_bounds_pass() {
        let longest_uri = format!("gs://b/{}", "k".repeat(MAX_IMAGE_URI_BYTES - 7));
        assert_eq!(longest_uri.len(), MAX_IMAGE_URI_BYTES);
        for image in [
            uri_image("s3://t2v-inputs/cats/1.png"),
            uri_image("az://container/a/b.webp"),
            uri_image(&longest_uri),
            uri_image("file:///srv/images/cat.jpg"),
            inline_image_of(1),
            inline_image_of(MAX_INLINE_IMAGE_BYTES),
        ] {
            let req = GenerationRequest {
                image: Some(image.clone()),
                ..valid()
            };
            assert_eq!(request(&req), Ok(()), "{image:?}");
        }
        for threshold in [0.0, 0.15, 1.0] {
            let req = GenerationRequest {
                cache_threshold: Some(threshold),
                ..valid()
            };
            assert_eq!(request(&req), Ok(()), "{threshold}");
        }
    }

    #[test]
    fn image_errors_say_how_to_send_the_image_instead() {
        let too_big = condition_image(&inline_image_of(MAX_INLINE_IMAGE_BYTES + 1)).unwrap_err();
        assert!(too_big.message.contains("by uri"), "{too_big}");
        let scheme = image_uri("https://example.com/a.png").unwrap_err();
        assert!(scheme.message.contains("s3://bucket/key"), "{scheme}");
        let empty = condition_image(&ConditionImage { source: None }).unwrap_err();
        assert!(empty.message.contains("leave image unset"), "{empty}");
    }

    #[test]
    fn oversized_requests_and_reasons_are_bounded() {
        let mut req = valid();
        req.labels.insert("k".into(), "v".repeat(MAX_REQUEST_BYTES));
        assert_eq!(request(&req).unwrap_err().field, "request");
        let cut = truncate_reason(&"é".repeat(MAX_REASON_BYTES), MAX_REASON_BYTES);
        assert!(
            cut.len() <= MAX_REASON_BYTES && cut.ends_with('…'),
            "{}",
            cut.len()
        );
        assert_eq!(truncate_reason("short", MAX_REASON_BYTES), "short");
    }

    #[test]
    fn a_typical_request_passes() {
        assert_eq!(request(&valid()), Ok(()));
        let defaults = GenerationRequest {
            model: "m".into(),
            prompt: "p".into(),
            ..Default::default()
        };
        assert_eq!(request(&defaults), Ok(()));
    }

    #[test]
    fn each_bound_names_its_field() {
        type BreakIt = Box<dyn Fn(&mut GenerationRequest)>;
        let cases: Vec<(&str, BreakIt)> = vec![
            ("prompt", Box::new(|r| r.prompt = "   ".into())),
            (
                "prompt",
                Box::new(|r| r.prompt = "x".repeat(MAX_PROMPT_BYTES + 1)),
            ),
            ("width", Box::new(|r| r.width = 99999)),
            ("width", Box::new(|r| r.width = 840)),
            ("height", Box::new(|r| r.height = 1)),
            ("num_frames", Box::new(|r| r.num_frames = 80)),
            ("num_frames", Box::new(|r| r.num_frames = 245)),
            (
                "num_inference_steps",
                Box::new(|r| r.num_inference_steps = 201),
            ),
            (
                "guidance_scale",
                Box::new(|r| r.guidance_scale = Some(f32::NAN)),
            ),
            (
                "guidance_scale_2",
                Box::new(|r| r.guidance_scale_2 = Some(-1.0)),
            ),
            ("shift", Box::new(|r| r.shift = Some(0.0))),
            ("sampler", Box::new(|r| r.sampler = 42)),
            ("job_id", Box::new(|r| r.job_id = "has space".into())),
            ("model", Box::new(|r| r.model = String::new())),
            ("priority", Box::new(|r| r.priority = 10)),
            ("fps", Box::new(|r| r.fps = 61)),
            (
                "image",
                Box::new(|r| r.image = Some(ConditionImage { source: None })),
            ),
            ("image.uri", Box::new(|r| r.image = Some(uri_image("")))),
            (
                "image.uri",
                Box::new(|r| r.image = Some(uri_image("http://host/a.png"))),
            ),
            (
                "image.uri",
                Box::new(|r| r.image = Some(uri_image("s3://bucket"))),
            ),
            (
                "image.uri",
                Box::new(|r| r.image = Some(uri_image("s3:///key.png"))),
            ),
            (
                "image.uri",
                Box::new(|r| r.image = Some(uri_image("file://relative.png"))),
            ),
            (
                "image.uri",
                Box::new(|r| r.image = Some(uri_image("bucket/key.png"))),
            ),
            (
                "image.uri",
                Box::new(|r| {
                    let long = format!("s3://b/{}", "k".repeat(MAX_IMAGE_URI_BYTES));
                    r.image = Some(uri_image(&long))
                }),
            ),
            (
                "image.inline",
                Box::new(|r| r.image = Some(inline_image_of(0))),
            ),
            (
                "image.inline",
                Box::new(|r| r.image = Some(inline_image_of(MAX_INLINE_IMAGE_BYTES + 1))),
            ),
            (
                "cache_threshold",
                Box::new(|r| r.cache_threshold = Some(1.01)),
            ),
            (
                "cache_threshold",
                Box::new(|r| r.cache_threshold = Some(-0.1)),
            ),
            (
                "cache_threshold",
                Box::new(|r| r.cache_threshold = Some(f32::NAN)),
            ),
            (
                "cache_threshold",
                Box::new(|r| r.cache_threshold = Some(f32::INFINITY)),
            ),
        ];
        for (field, break_it) in cases {
            let mut req = valid();
            break_it(&mut req);
            let err = request(&req).expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().starts_with(&format!("invalid {field}: ")));
        }
    }
}
