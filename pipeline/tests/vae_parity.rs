//! The Wan VAE decoder against diffusers 0.42.1 (`pipeline/parity/vae.py`): a tiny random-weight
//! `AutoencoderKLWan`, f32 on the CPU. Tolerances: decoded video 1e-4 relative + 1e-4 absolute
//! (values lie in [-1, 1]); frames in [0, 1] 1e-4 absolute; de-normalised latents 1e-6 relative.

mod common;

use std::path::Path;

use common::{assert_close, fixture, load_tensors};
use t2v_pipeline::wan::vae::{
    denormalize_latents, to_frames_f32, to_frames_u8, AutoencoderKLWan, Tiling, VaeConfig,
};
use t2v_pipeline::PipelineError;
use tch::{Device, Kind, Tensor};

const VIDEO_RTOL: f64 = 1e-4;
const VIDEO_ATOL: f64 = 1e-4;
const FRAMES_ATOL: f64 = 1e-4;

/// `assert_close`, printing the largest absolute difference for the record (`--nocapture`).
fn check(what: &str, actual: &Tensor, expected: &Tensor, rtol: f64, atol: f64) {
    let diff = (actual.to_kind(Kind::Double) - expected.to_kind(Kind::Double)).abs();
    println!("{what}: max |diff| {:.2e}", diff.max().double_value(&[]));
    assert_close(what, actual, expected, rtol, atol);
}

fn load(dir: &Path) -> AutoencoderKLWan {
    AutoencoderKLWan::load(&dir.join("vae"), Device::Cpu, Kind::Float).expect("load the tiny VAE")
}

/// De-normalise, decode, post-process, and compare every stage with the reference.
fn check_decode(dir: &Path) {
    let vae = load(dir);
    let reference = load_tensors(&dir.join("decode.safetensors"));

    let denormalized = denormalize_latents(&reference["latents"], vae.config()).unwrap();
    check(
        "denormalized latents",
        &denormalized,
        &reference["denormalized"],
        1e-6,
        1e-6,
    );

    // Decode the reference's own input so the decoder's error is measured alone.
    let video = vae.decode(&reference["denormalized"]).unwrap();
    check(
        "decoded video",
        &video,
        &reference["video"],
        VIDEO_RTOL,
        VIDEO_ATOL,
    );

    let frames = to_frames_f32(&video).unwrap();
    assert_eq!(frames.kind(), Kind::Float);
    check("frames", &frames, &reference["frames"], 0.0, FRAMES_ATOL);

    // 8-bit frames: equal except where a value sits within the decode error of a .5 boundary.
    let frames_u8 = to_frames_u8(&video).unwrap();
    assert_eq!(frames_u8.kind(), Kind::Uint8);
    assert_eq!(frames_u8.size(), reference["frames_u8"].size());
    let diff = (frames_u8.to_kind(Kind::Int) - reference["frames_u8"].to_kind(Kind::Int)).abs();
    let off = diff.gt(0).sum(Kind::Int64).int64_value(&[]);
    assert!(
        diff.max().int64_value(&[]) <= 1,
        "8-bit frames differ by more than 1"
    );
    assert!(
        off * 1000 <= diff.numel() as i64,
        "{off} of {} 8-bit values differ",
        diff.numel()
    );
}

#[test]
fn decode_matches_diffusers() {
    // 3 latent frames of 4×6 → 9 frames of 32×48, base_dim 16, 2 res blocks, temporal [F, T, T].
    check_decode(&fixture("vae"));
}

#[test]
fn variant_config_matches_diffusers() {
    // decoder_base_dim 12 ≠ base_dim 8, 1 res block, temporal [T, F, T]: 2 latent frames → 5.
    check_decode(&fixture("vae").join("variant"));
}

#[test]
fn tiled_decode_matches_diffusers() {
    let dir = fixture("vae");
    let mut vae = load(&dir);
    let reference = load_tensors(&dir.join("decode.safetensors"));
    // As the fixture's vae.enable_tiling(24, 24, 16, 16): 2×3 tiles with an 8-pixel blend.
    vae.enable_tiling(Tiling {
        min_height: 24,
        min_width: 24,
        stride_height: 16,
        stride_width: 16,
    })
    .unwrap();
    let tiled = vae.decode(&reference["denormalized"]).unwrap();
    check(
        "tiled video",
        &tiled,
        &reference["video_tiled"],
        VIDEO_RTOL,
        VIDEO_ATOL,
    );
    // Tiling really changes the result (the blend differs from an untiled decode).
    let untiled_gap = (&tiled - &reference["video"]).abs().max().double_value(&[]);
    assert!(
        untiled_gap > 1e-2,
        "tiled decode equals the plain one ({untiled_gap:.1e})"
    );

    vae.disable_tiling();
    let plain = vae.decode(&reference["denormalized"]).unwrap();
    check(
        "untiled video",
        &plain,
        &reference["video"],
        VIDEO_RTOL,
        VIDEO_ATOL,
    );
}

#[test]
fn bf16_decode_matches_diffusers_bf16() {
    // The VAE in bfloat16: the latents are cast first, de-normalised in bf16, decoded with the
    // RMS norms computed in f32, post-processed to f32 frames. The reference ran the same ops on
    // the same CPU kernels; bf16 has 8 significant bits, so allow 1 bf16 ulp near 1 (7.8e-3).
    let dir = fixture("vae");
    let vae = AutoencoderKLWan::load(&dir.join("vae"), Device::Cpu, Kind::BFloat16).unwrap();
    let reference = load_tensors(&dir.join("decode.safetensors"));
    let latents = reference["latents"].to_kind(Kind::BFloat16);
    let denormalized = denormalize_latents(&latents, vae.config()).unwrap();
    assert_eq!(denormalized.kind(), Kind::BFloat16);
    check(
        "bf16 denormalized",
        &denormalized,
        &reference["denormalized_bf16"],
        0.0,
        0.0,
    );
    let video = vae.decode(&denormalized).unwrap();
    assert_eq!(video.kind(), Kind::BFloat16);
    check("bf16 video", &video, &reference["video_bf16"], 0.0, 7.9e-3);
    let frames = to_frames_f32(&video).unwrap();
    check("bf16 frames", &frames, &reference["frames_bf16"], 0.0, 4e-3);
}

#[test]
fn decode_rejects_wrong_latent_shapes() {
    let vae = load(&fixture("vae"));
    for shape in [
        vec![1, 15, 2, 4, 6],
        vec![16, 2, 4, 6],
        vec![1, 16, 0, 4, 6],
    ] {
        let latents = Tensor::zeros(shape.as_slice(), (Kind::Float, Device::Cpu));
        match vae.decode(&latents) {
            Err(PipelineError::InvalidInput { field, .. }) => assert_eq!(field, "latents"),
            other => panic!(
                "shape {shape:?}: expected InvalidInput, got {:?}",
                other.map(|t| t.size())
            ),
        }
    }
    let video = Tensor::zeros([2, 3, 1, 8, 8], (Kind::Float, Device::Cpu));
    assert!(matches!(
        to_frames_f32(&video),
        Err(PipelineError::InvalidInput { .. })
    ));
}

#[test]
fn config_errors_name_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let write = |json: &str| std::fs::write(dir.path().join("config.json"), json).unwrap();

    write(r#"{"_class_name": "AutoencoderKLWan", "z_dim": 16, "tile_size": 3}"#);
    let err = VaeConfig::load(dir.path()).unwrap_err();
    assert!(matches!(err, PipelineError::Config { .. }), "{err}");
    assert!(err.to_string().contains("tile_size"), "{err}");

    // The Wan2.2 TI2V-5B VAE as its diffusers config.json describes it, but with 8× in space.
    write(
        r#"{"_class_name": "AutoencoderKLWan", "base_dim": 160, "decoder_base_dim": 256,
            "z_dim": 48, "is_residual": true, "patch_size": 2, "in_channels": 12,
            "out_channels": 12, "scale_factor_spatial": 8, "clip_output": false,
            "latents_mean": [], "latents_std": []}"#,
    );
    let err = VaeConfig::load(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("latents_mean has 0 entries"),
        "{err}"
    );
    let list = |v: &str| vec![v; 48].join(", ");
    write(&format!(
        r#"{{"z_dim": 48, "is_residual": true, "patch_size": 2, "in_channels": 3,
            "out_channels": 12, "scale_factor_spatial": 16,
            "latents_mean": [{}], "latents_std": [{}]}}"#,
        list("0.0"),
        list("1.0")
    ));
    let err = VaeConfig::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("in_channels 3"), "{err}");

    write(r#"{"_class_name": "AutoencoderKL"}"#);
    let err = VaeConfig::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("AutoencoderKLWan"), "{err}");

    // The fixture's own config parses and carries its random latents_mean.
    let cfg = VaeConfig::load(&fixture("vae").join("vae")).unwrap();
    assert_eq!(
        (cfg.base_dim, cfg.z_dim, cfg.latents_mean.len()),
        (16, 16, 16)
    );
    assert_ne!(cfg.latents_mean, VaeConfig::default().latents_mean);
}
