//! Every bound and default constant of t2v-contract against the range and default that the
//! field's comment in `proto/t2v/v1/request.proto` documents: change one without the other and
//! this fails, naming the field.

use t2v_contract::defaults::WAN22_T2V_A14B as DEFAULTS;
use t2v_contract::validate::*;

/// The leading comment of `GenerationRequest.<field>` in the compiled descriptors.
fn comment(field: &str) -> String {
    comment_of("GenerationRequest", field)
}

/// The leading comment of `<message>.<field>` (a top-level message of request.proto).
fn comment_of(message_name: &str, field: &str) -> String {
    let pool = t2v_proto::descriptor_pool();
    let message = pool
        .get_message_by_name(&format!("t2v.v1.{message_name}"))
        .unwrap_or_else(|| panic!("{message_name} is in the descriptor pool"));
    let file = message.parent_file();
    let message_index = file
        .messages()
        .position(|m| m.full_name() == message.full_name())
        .unwrap_or_else(|| panic!("{message_name} is a top-level message of its file"));
    let field_index = message
        .descriptor_proto()
        .field
        .iter()
        .position(|f| f.name() == field)
        .unwrap_or_else(|| panic!("{message_name} has no field {field}"));
    // Source info path of a message field: [4 (message_type), message index, 2 (field), field index].
    let path = [4, message_index as i32, 2, field_index as i32];
    file.file_descriptor_proto()
        .source_code_info
        .as_ref()
        .expect("the descriptor set keeps source info")
        .location
        .iter()
        .find(|l| l.path == path)
        .and_then(|l| l.leading_comments.clone())
        .unwrap_or_else(|| panic!("{field} has no comment"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn assert_documents(field: &str, expected: &[String]) {
    assert_text_says(field, &comment(field), expected);
}

fn assert_text_says(field: &str, text: &str, expected: &[String]) {
    for want in expected {
        assert!(
            text.contains(want.as_str()),
            "request.proto documents {field} as {text:?}, which does not say {want:?} — change the comment and t2v-contract together"
        );
    }
}

#[test]
fn id_and_text_bounds_match_the_proto() {
    assert_documents(
        "job_id",
        &[format!("1..={MAX_ID_LEN} chars of [A-Za-z0-9._-]")],
    );
    assert_documents(
        "model",
        &[format!("1..={MAX_ID_LEN} chars of [A-Za-z0-9._/-]")],
    );
    assert_documents("prompt", &[format!("1..={MAX_PROMPT_BYTES} bytes")]);
    assert_documents(
        "negative_prompt",
        &[format!("0..={MAX_PROMPT_BYTES} bytes")],
    );
}

#[test]
fn size_and_sampling_bounds_match_the_proto() {
    for (field, default) in [("width", DEFAULTS.width), ("height", DEFAULTS.height)] {
        assert_documents(
            field,
            &[
                format!("0 = model default ({default})"),
                format!("{MIN_SIDE}..={MAX_SIDE} and a multiple of {SIDE_MULTIPLE}"),
            ],
        );
    }
    assert_documents(
        "num_frames",
        &[
            format!("0 = model default ({})", DEFAULTS.num_frames),
            format!("1..={MAX_FRAMES} with num_frames % 4 == 1"),
        ],
    );
    assert_documents(
        "fps",
        &[format!(
            "0 = model default ({}), else 1..={MAX_FPS}",
            DEFAULTS.fps
        )],
    );
    assert_documents(
        "num_inference_steps",
        &[format!(
            "0 = model default ({}), else 1..={MAX_STEPS}",
            DEFAULTS.steps
        )],
    );
    for field in ["guidance_scale", "guidance_scale_2"] {
        assert_documents(field, &[format!("0.0..={MAX_GUIDANCE:.1}")]);
    }
    assert_documents(
        "shift",
        &[format!("{:.1}..={:.1}", SHIFT_RANGE.0, SHIFT_RANGE.1)],
    );
}

#[test]
fn scheduling_and_label_bounds_match_the_proto() {
    assert_documents("priority", &[format!("Priority lane, 0..={MAX_PRIORITY}:")]);
    assert_documents(
        "labels",
        &[
            format!("At most {MAX_LABELS} entries"),
            format!(
                "keys 1..={MAX_LABEL_KEY_BYTES} bytes, values 0..={MAX_LABEL_VALUE_BYTES} bytes"
            ),
        ],
    );
    assert_documents("attempt", &[format!("0..={MAX_ATTEMPT}.")]);
}

#[test]
fn the_request_size_limit_matches_the_proto() {
    let pool = t2v_proto::descriptor_pool();
    let message = pool
        .get_message_by_name("t2v.v1.GenerationRequest")
        .unwrap();
    let file = message.parent_file();
    let comment = file
        .file_descriptor_proto()
        .source_code_info
        .as_ref()
        .unwrap()
        .location
        .iter()
        .find(|l| l.path == [4, 0])
        .and_then(|l| l.leading_comments.clone())
        .expect("GenerationRequest has a comment")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let documented = format!(
        "at most {} KiB ({MAX_REQUEST_BYTES} bytes)",
        MAX_REQUEST_BYTES / 1024
    );
    assert!(
        comment.contains(&documented),
        "request.proto documents the request size as {comment:?}, which does not say {documented:?}"
    );
}

#[test]
fn guidance_defaults_match_the_proto() {
    assert_documents(
        "guidance_scale",
        &[format!(
            "Unset = model default ({:.1}",
            DEFAULTS.guidance_scale
        )],
    );
    assert_documents(
        "guidance_scale_2",
        &[format!(
            "Unset = model default ({:.1}",
            DEFAULTS.guidance_scale_2
        )],
    );
}

#[test]
fn image_and_cache_threshold_bounds_match_the_proto() {
    let (lo, hi) = CACHE_THRESHOLD_RANGE;
    assert_documents(
        "cache_threshold",
        &[format!(
            "0.0 = no step caching for this job; else {lo:.1}..={hi:.1}"
        )],
    );
    let schemes: Vec<String> = IMAGE_URI_SCHEMES
        .iter()
        .map(|scheme| format!("{scheme}://"))
        .collect();
    let uri = comment_of("ConditionImage", "uri");
    assert_text_says("image.uri", &uri, &schemes);
    assert_text_says(
        "image.uri",
        &uri,
        &[
            format!("1..={MAX_IMAGE_URI_BYTES} bytes"),
            format!(
                "the object is at most {} MiB",
                MAX_IMAGE_OBJECT_BYTES / (1024 * 1024)
            ),
        ],
    );
    assert_text_says(
        "image.inline",
        &comment_of("ConditionImage", "inline"),
        &[
            format!("at most {} KiB", MAX_INLINE_IMAGE_BYTES / 1024),
            format!(
                "the whole request is at most {} KiB",
                MAX_REQUEST_BYTES / 1024
            ),
        ],
    );
    assert_text_says(
        "ConditionImage",
        &message_comment("ConditionImage"),
        &[format!("at most {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels")],
    );
    // Every scheme the comment names is one the contract accepts, and no other.
    let named: Vec<&str> = uri
        .split_whitespace()
        .filter_map(|word| word.split_once("://").map(|(scheme, _)| scheme))
        .collect();
    for scheme in &named {
        assert!(
            IMAGE_URI_SCHEMES.contains(scheme),
            "request.proto names {scheme}:// for image.uri, which t2v-contract refuses"
        );
    }
}

/// The leading comment of a top-level message of request.proto.
fn message_comment(message_name: &str) -> String {
    let pool = t2v_proto::descriptor_pool();
    let message = pool
        .get_message_by_name(&format!("t2v.v1.{message_name}"))
        .unwrap();
    let file = message.parent_file();
    let index = file
        .messages()
        .position(|m| m.full_name() == message.full_name())
        .unwrap();
    file.file_descriptor_proto()
        .source_code_info
        .as_ref()
        .unwrap()
        .location
        .iter()
        .find(|l| l.path == [4, index as i32])
        .and_then(|l| l.leading_comments.clone())
        .unwrap_or_else(|| panic!("{message_name} has no comment"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
