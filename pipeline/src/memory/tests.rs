//! The estimate's formulas checked by hand against the published models' shapes and against
//! the module trees, and parking round-tripped on the CPU.

use tch::{nn, Device};

use super::*;
use crate::wan::fp8;
use crate::wan::text_encoder::UMT5EncoderModel;
use crate::wan::vae::AutoencoderKLWan;

const GB: u64 = 1_000_000_000;

fn request(width: i64, height: i64, policy: MemoryPolicy) -> EstimateRequest {
    EstimateRequest {
        width,
        height,
        num_frames: 81,
        dtype: Kind::BFloat16,
        vae_dtype: Kind::BFloat16,
        text_len: 512,
        policy,
        image: ImageEncode::None,
    }
}

fn numel(vs: &nn::VarStore) -> i64 {
    vs.variables().values().map(|t| t.numel() as i64).sum()
}

#[test]
fn a14b_expert_weights_by_hand() {
    // P = 14,288,491,584 (diffusers). f32: time_embedder 256·5120 + 5120 + 5120² + 5120 =
    // 27,535,360; 40 blocks × (6·5120 table + 2·5120 norm2) = 1,638,400; output table 10,240.
    let cfg = TransformerConfig::wan22_t2v_a14b();
    assert_eq!(transformer_fp32_parameters(&cfg), 29_184_000);
    let bytes = transformer_weight_bytes(&cfg, 2);
    assert_eq!(bytes, (14_288_491_584 - 29_184_000) * 2 + 29_184_000 * 4);
    assert_eq!(bytes / 100_000_000, 286, "≈ 28.6 GB");
}

#[test]
fn a14b_fp8_expert_weights_by_hand() {
    // Q = 40·(8·5120² + 2·5120·13824) block linear weights at 1 byte instead of 2, and
    // 40·(9·5120 + 13824) f32 scales.
    let cfg = TransformerConfig::wan22_t2v_a14b();
    assert_eq!(fp8::fp8_parameters(&cfg), 14_050_918_400);
    assert_eq!(fp8::fp8_scale_parameters(&cfg), 2_396_160);
    let bf16 = transformer_weight_bytes(&cfg, 2);
    assert_eq!(transformer_weight_bytes_in(&cfg, Kind::BFloat16), bf16);
    let fp8_bytes = transformer_weight_bytes_in(&cfg, fp8::FP8);
    assert_eq!(fp8_bytes, bf16 - 14_050_918_400 + 2_396_160 * 4);
    assert_eq!(fp8_bytes / 100_000_000, 145, "≈ 14.6 GB");
}

#[test]
fn a14b_fp8_480p_both_experts_fit_48_gib_with_the_encoder_parked() {
    let policy = MemoryPolicy {
        offload_text_encoder: true,
        ..MemoryPolicy::all_resident()
    };
    let bf16 = estimate(&ModelConfigs::wan22_t2v_a14b(), &request(832, 480, policy)).unwrap();
    let mut req = request(832, 480, policy);
    req.dtype = fp8::FP8;
    let e = estimate(&ModelConfigs::wan22_t2v_a14b(), &req).unwrap();
    let saved = 2 * (bf16.transformer_weights - e.transformer_weights);
    // The FFN hidden's quantisation: its scaled bf16 copy and its e4m3 copy, 32,760 tokens ×
    // 13,824 × 3 bytes more activation.
    assert_eq!(bf16.denoise - e.denoise, saved - 3 * 32_760 * 13_824);
    assert_eq!(e.text_encoder_weights, bf16.text_encoder_weights);
    assert!(e.peak < 48 * (1 << 30), "{e:?}");
}

#[test]
fn umt5_xxl_parameters_by_hand() {
    // 256384·4096 + 24·(4·4096·4096 + 32·64 + 2·4096 + 3·4096·10240) + 4096
    let layer = 4 * 4096 * 4096 + 32 * 64 + 2 * 4096 + 3 * 4096 * 10240;
    let expected = 256_384 * 4096 + 24 * layer + 4096;
    assert_eq!(expected, 5_680_910_336);
    assert_eq!(umt5_parameters(&UMT5Config::umt5_xxl()), expected);
}

#[test]
fn parameter_formulas_match_the_module_trees() {
    let mut te = UMT5Config::default();
    (te.vocab_size, te.d_model, te.d_kv, te.d_ff) = (96, 16, 4, 24);
    (te.num_layers, te.num_heads) = (2, 3);
    let vs = nn::VarStore::new(Device::Cpu);
    UMT5EncoderModel::new(&te, vs.root()).unwrap();
    assert_eq!(umt5_parameters(&te), numel(&vs));

    let vae = VaeConfig {
        base_dim: 8,
        ..VaeConfig::default()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    AutoencoderKLWan::new(&vae, vs.root()).unwrap();
    assert_eq!(vae_parameters(&vae), numel(&vs));
    let vae = VaeConfig {
        base_dim: 8,
        decoder_base_dim: Some(12),
        ..VaeConfig::wan2_2()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    AutoencoderKLWan::new(&vae, vs.root()).unwrap();
    assert_eq!(vae_parameters(&vae), numel(&vs));
    let decoder = vs
        .variables()
        .into_iter()
        .filter(|(k, _)| k.starts_with("decoder."));
    let post_quant = vae.z_dim * vae.z_dim + vae.z_dim;
    let decoder_numel: i64 = decoder.map(|(_, t)| t.numel() as i64).sum();
    assert_eq!(vae_decoder_parameters(&vae), decoder_numel + post_quant);
}

#[test]
fn per_gpu_estimate_shrinks_the_activations_by_the_ulysses_degree() {
    let models = ModelConfigs::wan22_t2v_a14b();
    let req = request(1280, 720, MemoryPolicy::all_resident());
    let one = estimate(&models, &req).unwrap();
    let single = ParallelLayout::single();
    assert_eq!(estimate_per_gpu(&models, &req, single, 1).unwrap(), one);
    // CFG parallel alone: one forward per GPU at a time, as on one GPU.
    let cfg = ParallelLayout { cfg: 2, ulysses: 1 };
    let cfg_only = estimate_per_gpu(&models, &req, cfg, 1).unwrap();
    assert_eq!(cfg_only.denoise, one.denoise);
    // 2 × 4 on 8 GPUs: 75,600 tokens → 18,900 per rank, plus the all-to-all buffers.
    let eight = ParallelLayout { cfg: 2, ulysses: 4 };
    let per_gpu = estimate_per_gpu(&models, &req, eight, 8).unwrap();
    let (n, m, d) = (75_600u64, 18_900u64, 5120u64);
    let per_token = |t: u64| 6 * t * d * 2 + 3 * t * d * 4 + 2 * t * 13_824 * 2 + 2 * t * 128 * 4;
    let saved = per_token(n) - per_token(m) - 6 * m * d * 2;
    assert_eq!(one.denoise - per_gpu.denoise, saved);
    assert!(per_gpu.peak < one.peak, "{per_gpu:?}");
}

#[test]
fn a14b_480p_all_resident_by_hand() {
    let e = estimate(
        &ModelConfigs::wan22_t2v_a14b(),
        &request(832, 480, MemoryPolicy::all_resident()),
    )
    .unwrap();
    let expert = transformer_weight_bytes(&TransformerConfig::wan22_t2v_a14b(), 2);
    assert_eq!(e.text_encoder_weights, 5_680_910_336 * 2);
    // Denoise: latent 16×21×60×104 → N = 21·30·52 = 32,760 tokens of D = 5120.
    let (n, d) = (32_760u64, 5120u64);
    let activations = 6 * n * d * 2
        + 3 * n * d * 4
        + 2 * n * 13_824 * 2
        + 2 * n * 128 * 4
        + 3 * 512 * d * 2
        + 4 * (16 * 21 * 60 * 104) * 4;
    let embeds = 2 * 512 * 4096 * 2;
    let denoise = 2 * expert + e.text_encoder_weights + e.vae_weights + embeds + activations;
    assert_eq!(e.denoise, denoise);
    assert_eq!(activations / 10_000_000, 591, "≈ 5.9 GB of activations");
    // Weights alone are 2·28.64 + 11.36 GB; the whole run stays under the H100's 80 GB.
    assert!(e.peak > 68 * GB && e.peak < 80 * GB, "{e:?}");
    assert_eq!(e.pinned_host, 0);
}

#[test]
fn swap_experts_saves_one_expert_and_pins_both() {
    let all = estimate(
        &ModelConfigs::wan22_t2v_a14b(),
        &request(1280, 720, MemoryPolicy::all_resident()),
    )
    .unwrap();
    let low = MemoryPolicy {
        vae_tiling: None,
        ..MemoryPolicy::low_memory()
    };
    let swap = estimate(&ModelConfigs::wan22_t2v_a14b(), &request(1280, 720, low)).unwrap();
    let expert = all.transformer_weights;
    assert_eq!(
        all.denoise - swap.denoise,
        expert + all.text_encoder_weights
    );
    assert_eq!(swap.pinned_host, 2 * expert + all.text_encoder_weights);
    // During text encoding only the encoder and the VAE are on the device.
    assert!(swap.text_encode < 13 * GB, "{swap:?}");
    assert!(
        swap.peak < 80 * GB,
        "720p with swapping must fit an 80 GB card: {swap:?}"
    );
}

#[test]
fn vae_decode_cache_and_tiling_by_hand() {
    // Wan2.1 decoder (widths 384, 384, 192, 96 over stages at 1/8 … 1 of the frame): the
    // feature cache holds 2 frames of each cached conv's input, per output pixel:
    // conv_in 16/64 + mid 4·384/64, stage 0 (384+384+4·384)/64 + time_conv 384/64,
    // stage 1 (192+384+4·384)/16 + time_conv 384/16, stage 2 (192+192+4·192)/4,
    // stage 3 96+96+4·96, conv_out 96; each × 2 frames = 2364.5 elements per pixel.
    // The widest activation: 192 channels × 4 frames upsampled to full size = 768.
    let cfg = VaeConfig::default();
    let r = request(832, 480, MemoryPolicy::all_resident());
    let pixels = 480 * 832u64;
    let video = 3 * 81 * pixels;
    let expected = ((2364.5 + 3.0 * 768.0) * pixels as f64) as u64 * 2 + 2 * video * 2 + video * 4;
    assert_eq!(vae_decode_bytes(&cfg, &r, None), expected);
    let tiled = vae_decode_bytes(&cfg, &r, Some(Tiling::default()));
    let tile = ((2364.5 + 3.0 * 768.0) * 65_536.0) as u64 * 2;
    assert_eq!(tiled, tile + 3 * video * 2 + video * 4);
    assert!(tiled < expected / 2);
}

#[test]
fn vae_parameters_of_both_published_vaes_match_diffusers() {
    // Counted from diffusers' AutoencoderKLWan(...) built on the meta device.
    let wan21 = VaeConfig::default();
    assert_eq!(vae_encoder_parameters(&wan21), 53_596_928);
    assert_eq!(vae_decoder_parameters(&wan21), 73_295_603);
    let wan22 = VaeConfig::wan2_2();
    assert_eq!(vae_encoder_parameters(&wan22), 149_637_088);
    assert_eq!(vae_decoder_parameters(&wan22), 555_051_580);
}

#[test]
fn wan2_2_vae_decode_of_704p_121_frames_by_hand() {
    // Wan2.2 decoder (widths 1024, 1024, 1024, 512, 256; stages at 1/64 … 1 of the decoder's
    // 640×352 output): cache per output pixel (48 + 4·1024)/64·2 = 129.5, stage 0
    // 6144/64·2 + 1024/64·2 = 224, stage 1 6144/16·2 + 1024/16·2 = 896, stage 2 3584/4·2 =
    // 1792, stage 3 1792·2 = 3584, conv_out 256·2 = 512: 7137.5. The widest activation:
    // 512 channels × 4 frames at the last stage's size = 2048, 4 copies with the shortcut.
    let cfg = VaeConfig::wan2_2();
    let mut r = request(1280, 704, MemoryPolicy::low_memory());
    r.num_frames = 121;
    let video = 3 * 121 * 1280 * 704u64;
    let per_pixel = 7137.5 + 4.0 * 2048.0;
    let untiled = (per_pixel * (640.0 * 352.0)) as u64 * 2 + 3 * video * 2 + video * 4;
    assert_eq!(vae_decode_bytes(&cfg, &r, None), untiled);
    // Default tiles: 256 video pixels = 128 decoder pixels a side.
    let tiled = vae_decode_bytes(&cfg, &r, Some(Tiling::default()));
    let tile = (per_pixel * 16_384.0) as u64 * 2;
    assert_eq!(tiled, tile + 4 * video * 2 + video * 4);
    // With the weights the tiled decode stays far below a 24 GiB card.
    let weights = vae_parameters(&cfg) as u64 * 2;
    assert!(weights + tiled < 6 * GB, "{weights} + {tiled}");
    // Encoding the conditioning frame is smaller still.
    let encode = vae_encode_bytes(&cfg, &r, 1, Some(Tiling::default()));
    assert!(encode < tiled, "{encode}");
}

#[test]
fn what_each_kind_encodes_for_an_image() {
    let i2v = ModelKind::ImageToVideo { two_experts: true };
    assert_eq!(ImageEncode::of(i2v, true).frames(81), 81);
    assert_eq!(
        ImageEncode::of(ModelKind::TextImageToVideo, true).frames(121),
        1
    );
    assert_eq!(
        ImageEncode::of(ModelKind::TextImageToVideo, false).frames(121),
        0
    );
    let t2v = ModelKind::TextToVideo { two_experts: true };
    assert_eq!(ImageEncode::of(t2v, true), ImageEncode::None);
}

/// `models` at `r` without and with `image`: (without, with).
fn with_and_without_image(
    models: &ModelConfigs,
    r: EstimateRequest,
    image: ImageEncode,
) -> (MemoryEstimate, MemoryEstimate) {
    let without = estimate(models, &r).unwrap();
    let with = estimate(models, &EstimateRequest { image, ..r }).unwrap();
    (without, with)
}

#[test]
fn the_image_encode_is_counted_but_the_published_models_peak_elsewhere() {
    let ti2v = ModelConfigs::wan22_ti2v_5b();
    let i2v_expert = TransformerConfig {
        in_channels: 36,
        ..TransformerConfig::wan22_t2v_a14b()
    };
    let i2v = ModelConfigs {
        transformer: i2v_expert.clone(),
        transformer_2: Some(i2v_expert),
        text_encoder: UMT5Config::umt5_xxl(),
        vae: VaeConfig::default(),
        per_token_timesteps: false,
    };
    let ti2v_704p = EstimateRequest {
        num_frames: 121,
        ..request(1280, 704, MemoryPolicy::all_resident())
    };
    let cases = [
        (&ti2v, ti2v_704p, ImageEncode::FirstFrame),
        (
            &ti2v,
            EstimateRequest {
                policy: MemoryPolicy::low_memory(),
                ..ti2v_704p
            },
            ImageEncode::FirstFrame,
        ),
        (
            &i2v,
            request(832, 480, MemoryPolicy::all_resident()),
            ImageEncode::WithZeroFrames,
        ),
        (
            &i2v,
            request(1280, 720, MemoryPolicy::low_memory()),
            ImageEncode::WithZeroFrames,
        ),
    ];
    for (models, r, image) in cases {
        let (without, with) = with_and_without_image(models, r, image);
        assert_eq!(without.vae_encode, 0);
        assert!(with.vae_encode > with.vae_weights, "{with:?}");
        assert!(with.vae_encode < with.peak, "{with:?}");
        assert_eq!(with.peak, without.peak, "{r:?}");
    }
}

fn tiny_umt5() -> UMT5Config {
    let mut cfg = UMT5Config::umt5_xxl();
    (cfg.vocab_size, cfg.d_model, cfg.d_kv, cfg.d_ff) = (64, 32, 16, 64);
    (cfg.num_layers, cfg.num_heads) = (1, 2);
    cfg
}

#[test]
fn the_image_encode_sets_the_peak_where_it_dominates() {
    // A tiny transformer and text encoder beside the Wan2.2 VAE, one frame, tiled: the
    // encode's tiles (512 video pixels a side, patchified) are 4× the decode's in area.
    let tiny = ModelConfigs {
        transformer: TransformerConfig {
            num_attention_heads: 2,
            attention_head_dim: 16,
            text_dim: 32,
            freq_dim: 16,
            ffn_dim: 64,
            num_layers: 1,
            ..TransformerConfig::wan22_ti2v_5b()
        },
        transformer_2: None,
        text_encoder: tiny_umt5(),
        vae: VaeConfig::wan2_2(),
        per_token_timesteps: true,
    };
    let one_frame = EstimateRequest {
        num_frames: 1,
        ..request(1280, 704, MemoryPolicy::low_memory())
    };
    let (without, with) = with_and_without_image(&tiny, one_frame, ImageEncode::FirstFrame);
    assert_eq!(with.peak, with.vae_encode, "{with:?}");
    assert!(with.peak > without.peak, "{with:?} vs {without:?}");
    let phases = [without.text_encode, without.denoise, without.vae_decode];
    assert_eq!(without.peak, phases.into_iter().max().unwrap());
    // Spread over GPUs the decode is tiled by a VAE of its own; the encode keeps the
    // policy's tiles, and still sets each GPU's peak.
    let untiled = EstimateRequest {
        policy: MemoryPolicy::all_resident(),
        ..one_frame
    };
    let (_, one_gpu) = with_and_without_image(&tiny, untiled, ImageEncode::FirstFrame);
    let layout = ParallelLayout { cfg: 2, ulysses: 1 };
    let image = EstimateRequest {
        image: ImageEncode::FirstFrame,
        ..untiled
    };
    let per_gpu = estimate_per_gpu(&tiny, &image, layout, 2).unwrap();
    assert_eq!(per_gpu.vae_encode, one_gpu.vae_encode);
    assert!(per_gpu.vae_decode < one_gpu.vae_decode);
    assert_eq!(per_gpu.peak, per_gpu.vae_encode, "{per_gpu:?}");
}

#[test]
fn parked_weights_round_trip_on_the_cpu() {
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().var("w", &[2, 3], nn::Init::Const(1.5));
    let parked = ParkedWeights::new(vs.variables().into_iter().collect(), Device::Cpu).unwrap();
    parked.park().unwrap();
    assert!(!parked.is_on_device());
    parked.fetch().unwrap();
    assert!(parked.is_on_device());
    assert_eq!(w.sum(Kind::Float).double_value(&[]), 9.0);
    assert_eq!(parked.host_bytes(), 0);
}

#[test]
fn ti2v_5b_low_memory_covers_the_measured_peak_and_fits_an_l4() {
    // Measured with `make bench-ti2v` on an H100: text+image-to-video at 1280×704, 121 frames,
    // the low-memory policy, peaked at 16,280 MiB allocated (15.9 GiB), and ran with only an
    // L4's 23,034 MiB of the card free. Without the per-token modulation the estimate was
    // 14.1 GiB, below what ran.
    let ti2v = ModelConfigs::wan22_ti2v_5b();
    let request = EstimateRequest {
        num_frames: 121,
        image: ImageEncode::FirstFrame,
        ..request(1280, 704, MemoryPolicy::low_memory())
    };
    let e = estimate(&ti2v, &request).unwrap();
    let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
    assert_eq!(e.peak, e.denoise, "{e:?}");
    assert!(gib(e.peak) >= 16_280.0 / 1024.0, "{:.2} GiB", gib(e.peak));
    assert!(gib(e.peak) <= 22.0, "{:.2} GiB", gib(e.peak));
    let per_sample = estimate(
        &ModelConfigs {
            per_token_timesteps: false,
            ..ti2v
        },
        &request,
    )
    .unwrap();
    assert!(per_sample.peak < e.peak);
}
