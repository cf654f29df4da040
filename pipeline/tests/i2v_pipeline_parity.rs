//! The image-to-video pipeline against diffusers `WanImageToVideoPipeline(..., output_type="np")`
//! on the CPU in f32, over the tiny Wan2.2 I2V-A14B-shaped directory and the 61×37 image that
//! `pipeline/parity/i2v_pipeline.py` writes (the image's aspect matches no video size, so the
//! Lanczos resize stretches it), plus the image decoding and resampling against Pillow and the
//! requests an I2V or T2V model refuses.
//!
//! Tolerances: frames (in [0, 1]) within 1e-3 absolute, the acceptance bar; the condition
//! (mask + normalised image latents) and the final latents within 1e-4; PNG pixels and Lanczos
//! resampling exactly equal to Pillow's.

mod common;

use common::{
    assert_close, fixture, generation_params, load_pipeline, load_tensors, max_abs, read_json, run,
    FRAMES_ATOL,
};
use t2v_pipeline::image::{decode_condition_image, ConditionImage};
use t2v_pipeline::memory::MemoryPolicy;
use t2v_pipeline::model_dir::ModelKind;
use t2v_pipeline::text_to_video::conditioning::{LatentCondition, VideoSize};
use t2v_pipeline::text_to_video::{GenerationParams, WanT2V};
use t2v_pipeline::PipelineError;
use tch::{Device, Kind, Tensor};

fn images() -> std::collections::HashMap<String, Tensor> {
    load_tensors(&fixture("i2v_pipeline").join("images.safetensors"))
}

fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture("i2v_pipeline").join(name)).expect("image fixture")
}

/// `H×W×3` u8 of Pillow → a [`ConditionImage`].
fn from_pillow(pixels: &Tensor) -> ConditionImage {
    let size = pixels.size();
    let bytes = Vec::<u8>::try_from(pixels.flatten(0, -1)).unwrap();
    ConditionImage::from_rgb(size[1] as u32, size[0] as u32, bytes).unwrap()
}

fn as_tensor(image: &ConditionImage) -> Tensor {
    Tensor::from_slice(image.rgb()).view([image.height() as i64, image.width() as i64, 3])
}

#[test]
fn png_decodes_to_pillows_pixels() {
    let decoded = decode_condition_image(&image_bytes("image.png")).unwrap();
    assert_eq!(as_tensor(&decoded), images()["png"]);
}

#[test]
fn lanczos_resize_equals_pillows_to_the_bit() {
    let images = images();
    let source = from_pillow(&images["png"]);
    let mut compared = 0;
    for (name, expected) in &images {
        let Some(size) = name.strip_prefix("lanczos_") else {
            continue;
        };
        let (w, h) = size.split_once('x').unwrap();
        let resized = source
            .resize_lanczos(w.parse().unwrap(), h.parse().unwrap())
            .unwrap();
        let actual = as_tensor(&resized);
        let differing = actual.ne_tensor(expected).sum(Kind::Int64).int64_value(&[]);
        assert_eq!(differing, 0, "{name}: {differing} bytes differ from Pillow");
        compared += 1;
    }
    assert!(compared >= 6, "only {compared} sizes in the fixture");
}

#[test]
fn lossless_webp_decodes_to_pillows_pixels() {
    let decoded = decode_condition_image(&image_bytes("image_lossless.webp")).unwrap();
    assert_eq!(as_tensor(&decoded), images()["webp_lossless"]);
}

/// Decodes the fixture's `file` and bounds (and prints) how far it lands from Pillow's pixels
/// `key`: at most 8 levels anywhere and 1 level on average.
fn assert_decodes_close_to_pillow(format: &str, file: &str, key: &str) {
    let decoded = decode_condition_image(&image_bytes(file)).unwrap();
    let expected = &images()[key];
    let actual = as_tensor(&decoded);
    let diff = max_abs(&actual, expected);
    let mean = (actual.to_kind(Kind::Double) - expected.to_kind(Kind::Double))
        .abs()
        .mean(Kind::Double)
        .double_value(&[]);
    println!("{format} vs Pillow: max {diff} levels, mean {mean:.4} levels");
    assert!(
        diff <= 8.0 && mean <= 1.0,
        "{format} differs from Pillow by max {diff}, mean {mean}"
    );
}

/// Lossy WebP: the `image` crate's VP8 decoder against libwebp's (with its YUV → RGB
/// upsampling); this bounds (and prints) the difference on the fixture's WebP.
#[test]
fn lossy_webp_decodes_close_to_pillow() {
    assert_decodes_close_to_pillow("lossy WebP", "image.webp", "webp");
}

/// The `image` crate's JPEG decoder is not libjpeg-turbo: pixels may differ by IDCT and chroma
/// upsampling rounding. This bounds (and prints) the difference on the fixture's JPEG.
#[test]
fn jpeg_decodes_close_to_pillow() {
    assert_decodes_close_to_pillow("JPEG", "image.jpg", "jpeg");
}

fn case() -> (
    std::path::PathBuf,
    serde_json::Value,
    std::collections::HashMap<String, Tensor>,
) {
    let dir = fixture("i2v_pipeline").join("two_experts");
    let settings = read_json(&dir.join("reference.json"));
    let reference = load_tensors(&dir.join("reference.safetensors"));
    (dir, settings, reference)
}

fn params(s: &serde_json::Value, image: Option<ConditionImage>) -> GenerationParams {
    GenerationParams {
        image,
        ..generation_params(s)
    }
}

fn load(dir: &std::path::Path) -> WanT2V {
    load_pipeline(dir, MemoryPolicy::all_resident())
}

#[test]
fn i2v_matches_diffusers() {
    let (dir, settings, reference) = case();
    let mut pipe = load(&dir);
    assert_eq!(pipe.kind(), ModelKind::ImageToVideo { two_experts: true });
    let image = decode_condition_image(&image_bytes("image.png")).unwrap();
    let params = params(&settings, Some(image.clone()));

    // prepare_latents' condition: mask + normalised latents of (image, black frames)
    let condition = LatentCondition::prepare(
        pipe.kind(),
        pipe.vae(),
        &image,
        VideoSize {
            width: params.width,
            height: params.height,
            num_frames: params.num_frames,
        },
        Device::Cpu,
    )
    .unwrap()
    .expect("an I2V model conditions on the image");
    match &condition {
        LatentCondition::Concat { condition } => {
            assert_close("condition", condition, &reference["condition"], 1e-4, 1e-4)
        }
        other => panic!("expected a concatenated condition, got {other:?}"),
    }

    let run = run(&mut pipe, &params);
    assert_close(
        "latents",
        &run.last_latents,
        &reference["latents"],
        1e-4,
        1e-4,
    );
    let diff = max_abs(&run.output.frames, &reference["frames"]);
    println!("I2V frames: max |ours − diffusers| = {diff:.3e}");
    assert!(diff <= FRAMES_ATOL, "frames differ by {diff}");
}

#[test]
fn an_i2v_model_refuses_a_request_without_an_image() {
    let (dir, settings, _) = case();
    let pipe = load(&dir);
    let error = pipe.resolve(&params(&settings, None)).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(&error, PipelineError::InvalidInput { field, .. } if field == "image")
            && message.contains("Wan2.2 I2V-A14B (two experts, image-to-video)")
            && message.contains("send an image")
            && !message.contains('\n'),
        "{message}"
    );
}

#[test]
fn a_t2v_model_refuses_an_image() {
    let dir = fixture("wan_pipeline").join("two_experts");
    let pipe = load(&dir);
    assert_eq!(pipe.kind(), ModelKind::TextToVideo { two_experts: true });
    let (_, settings, _) = case();
    let image = decode_condition_image(&image_bytes("image.png")).unwrap();
    let error = pipe.resolve(&params(&settings, Some(image))).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("text-to-video")
            && message.contains("takes no image")
            && !message.contains('\n'),
        "{message}"
    );
}

#[test]
fn the_size_left_to_the_model_follows_the_image() {
    let (dir, _, _) = case();
    let pipe = load(&dir);
    let image = decode_condition_image(&image_bytes("image.png")).unwrap();
    // 61×37 at 832×480: height round(sqrt(399360·37/61)) = 492 → 480, width 811 → 800
    assert_eq!(pipe.size_for_image(&image), (800, 480));
}
