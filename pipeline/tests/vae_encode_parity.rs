//! The Wan VAE encoder (Wan2.1 and Wan2.2 layouts) and the Wan2.2 decoder against diffusers
//! 0.42.1 (`pipeline/parity/vae_encode.py`): tiny random-weight `AutoencoderKLWan`s, f32 on the
//! CPU, untiled and tiled. Tolerances: latent means and decoded video 1e-4 relative + 1e-4
//! absolute (`--nocapture` prints the largest difference of each check).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{assert_close, fixture, load_tensors};
use t2v_pipeline::wan::vae::{normalize_latents, AutoencoderKLWan, Tiling};
use t2v_pipeline::PipelineError;
use tch::{Device, Kind, Tensor};

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-4;
/// As the fixture's `vae.enable_tiling(32, 32, 16, 16)`.
const TILING: Tiling = Tiling {
    min_height: 32,
    min_width: 32,
    stride_height: 16,
    stride_width: 16,
};

/// `assert_close`, printing the largest absolute difference for the record.
fn check(what: &str, actual: &Tensor, expected: &Tensor, rtol: f64, atol: f64) {
    assert_eq!(actual.size(), expected.size(), "{what}: shape");
    let diff = (actual.to_kind(Kind::Double) - expected.to_kind(Kind::Double)).abs();
    println!("{what}: max |diff| {:.2e}", diff.max().double_value(&[]));
    assert_close(what, actual, expected, rtol, atol);
}

fn case(name: &str) -> (PathBuf, AutoencoderKLWan, HashMap<String, Tensor>) {
    let dir = fixture("vae_encode").join(name);
    let vae = load(&dir, Kind::Float);
    let reference = load_tensors(&dir.join("encode.safetensors"));
    (dir, vae, reference)
}

fn load(dir: &Path, kind: Kind) -> AutoencoderKLWan {
    AutoencoderKLWan::load(&dir.join("vae"), Device::Cpu, kind).expect("load the tiny VAE")
}

/// Every frame count, a batch of 2, normalisation, and the tiled encode of a larger video.
fn check_encode(name: &str) {
    let (_, mut vae, reference) = case(name);
    for frames in [1, 5, 6, 9, 13] {
        let mean = vae.encode(&reference[&format!("video_{frames}")]).unwrap();
        let expected = &reference[&format!("mean_{frames}")];
        check(
            &format!("{name} mean of {frames} frames"),
            &mean,
            expected,
            RTOL,
            ATOL,
        );
    }
    let batch = vae.encode(&reference["batch_video"]).unwrap();
    check(
        &format!("{name} batch of 2"),
        &batch,
        &reference["batch_mean"],
        RTOL,
        ATOL,
    );

    let normalized = normalize_latents(&reference["mean_5"], vae.config()).unwrap();
    check(
        &format!("{name} normalized"),
        &normalized,
        &reference["normalized_5"],
        1e-6,
        1e-6,
    );

    let untiled = vae.encode(&reference["tiled_video"]).unwrap();
    vae.enable_tiling(TILING).unwrap();
    let tiled = vae.encode(&reference["tiled_video"]).unwrap();
    check(
        &format!("{name} tiled mean"),
        &tiled,
        &reference["tiled_mean"],
        RTOL,
        ATOL,
    );
    let gap = (&tiled - &untiled).abs().max().double_value(&[]);
    assert!(gap > 1e-3, "tiled encode equals the plain one ({gap:.1e})");
}

#[test]
fn wan2_1_encode_matches_diffusers() {
    // base_dim 8, 3×5 latents of 24×40 video: 1, 5, 9, 13 frames → 1…4 latent frames.
    check_encode("wan21");
}

#[test]
fn wan2_2_encode_matches_diffusers() {
    // is_residual, patch 2, z_dim 48: 3×5 latents of 48×80 video.
    check_encode("wan22");
}

#[test]
fn wan2_2_decode_matches_diffusers() {
    check_wan2_2_decode("wan22");
}

#[test]
fn wan2_2_at_diffusers_unit_test_size_matches() {
    // base_dim 3, dim_mult [1, 1, 1, 1], 1 res block: the widths every residual shortcut keeps.
    check_encode("wan22_unit");
    check_wan2_2_decode("wan22_unit");
}

/// Decode of 1–4 latent frames, tiled, and the tiles stitched as the parallel decode does.
fn check_wan2_2_decode(name: &str) {
    let (_, mut vae, reference) = case(name);
    assert_eq!(
        (vae.config().spatial_scale(), vae.config().temporal_scale()),
        (16, 4)
    );
    for t in 1..=4 {
        let video = vae.decode(&reference[&format!("latents_{t}")]).unwrap();
        let expected = &reference[&format!("decoded_{t}")];
        check(
            &format!("decoded {t} latent frames"),
            &video,
            expected,
            RTOL,
            ATOL,
        );
    }
    vae.enable_tiling(TILING).unwrap();
    let tiled = vae.decode(&reference["tiled_latents"]).unwrap();
    check(
        "tiled decode",
        &tiled,
        &reference["tiled_decoded"],
        RTOL,
        ATOL,
    );
    // The tiles the parallel decode deals out, stitched, give the same frames.
    let z = vae.prepare(&reference["tiled_latents"]).unwrap();
    let grid = vae.tile_grid(&z, &TILING).unwrap();
    assert_eq!((grid.tiles.len(), grid.columns), (4 * 6, 6));
    let tiles = grid
        .tiles
        .iter()
        .map(|t| vae.decode_tile(&z, t).unwrap())
        .collect();
    let stitched = vae.stitch_tiles(&grid, tiles).unwrap().clamp(-1.0, 1.0);
    check("stitched tiles", &stitched, &tiled, 0.0, 0.0);
}

#[test]
fn wan2_2_bf16_matches_diffusers_bf16() {
    // bf16 has 8 significant bits: allow 2 bf16 ulps of the values' scale.
    let (dir, _, reference) = case("wan22");
    let vae = load(&dir, Kind::BFloat16);
    let video = vae.decode(&reference["latents_2"]).unwrap();
    assert_eq!(video.kind(), Kind::BFloat16);
    check(
        "bf16 decode",
        &video,
        &reference["decoded_bf16_2"],
        0.0,
        1.6e-2,
    );
    let mean = vae.encode(&reference["video_5"]).unwrap();
    let scale = reference["mean_bf16_5"].abs().max().double_value(&[]);
    check(
        "bf16 mean",
        &mean,
        &reference["mean_bf16_5"],
        0.0,
        scale * 1.6e-2,
    );
}

#[test]
fn encode_rejects_videos_it_cannot_encode() {
    let (_, wan22, _) = case("wan22");
    let (_, wan21, _) = case("wan21");
    let cases: [(&AutoencoderKLWan, &[i64]); 5] = [
        (&wan22, &[1, 3, 1, 40, 80]),  // not a multiple of 16
        (&wan22, &[1, 12, 1, 48, 80]), // patchified channels
        (&wan21, &[3, 1, 24, 40]),     // 4-D
        (&wan21, &[1, 3, 0, 24, 40]),  // no frames
        (&wan21, &[1, 3, 1, 4, 40]),   // smaller than one latent
    ];
    for (vae, shape) in cases {
        let video = Tensor::zeros(shape, (Kind::Float, Device::Cpu));
        match vae.encode(&video) {
            Err(PipelineError::InvalidInput { field, .. }) => assert_eq!(field, "video"),
            other => panic!(
                "{shape:?}: expected InvalidInput, got {:?}",
                other.map(|t| t.size())
            ),
        }
    }
}
