//! One job over N ranks gives what one rank gives: CFG parallel, Ulysses sequence parallel and
//! both, N = 1, 2, 4 (and 8) ranks as threads on the CPU, f32, against today's single-device
//! loop — the latents within 1e-5 (N = 1 and CFG alone: every bit), the frames of the decode
//! within 1e-5, the tiles of the parallel VAE decode bit for bit. A tiny two-expert model with
//! random weights (4 heads, so Ulysses runs on 4 ranks) built here, no fixtures needed; its
//! 4-step UniPC schedule crosses the expert boundary after step 2, and the token count (45)
//! divides by neither 2 nor 4, so the padding of the last shards is exercised. A checkpoint
//! taken with one layout resumes under another.
//!
//! `T2V_TEST_DEVICE=cuda` runs the same checks with every rank on CUDA device 0 (N ranks placed
//! on one GPU); there the exact checks become the 1e-5 tolerance, as kernels may differ in the
//! last bits between matmuls of different row counts.

use std::collections::BTreeMap;

use t2v_pipeline::checkpoint::DenoiseState;
use t2v_pipeline::denoise::{
    denoise, DenoiseInput, DenoiseSettings, Expert, Experts, NoisePredictor, StepControl,
};
use t2v_pipeline::parallel::decode::decode_tiles_parallel;
use t2v_pipeline::parallel::{run_ranks, ParallelLayout, ParallelPlan, RankModels};
use t2v_pipeline::scheduler::{Scheduler, UniPcConfig, UniPcMultistepScheduler};
use t2v_pipeline::wan::vae::{AutoencoderKLWan, Tiling, VaeConfig};
use t2v_pipeline::wan::{TransformerConfig, WanTransformer3DModel};
use t2v_pipeline::PipelineError;
use tch::{nn, Device, Kind, Tensor};

const STEPS: usize = 4;
const TEXT_DIM: i64 = 16;
/// 16 latent channels (the Wan2.1 VAE's); grid 3 × 3 × 5 = 45 tokens after the (1, 2, 2) patch.
const LATENT_SHAPE: [i64; 5] = [1, 16, 3, 6, 10];
const TOLERANCE: f64 = 1e-5;

/// Where the ranks compute: the CPU, or CUDA device 0 with `T2V_TEST_DEVICE=cuda`.
fn device() -> Device {
    match std::env::var("T2V_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    }
}

/// The most two runs may differ by where the test asks for the same bits: none on the CPU.
fn exact() -> f64 {
    if device() == Device::Cpu {
        0.0
    } else {
        TOLERANCE
    }
}

fn tiny_config() -> TransformerConfig {
    TransformerConfig {
        patch_size: [1, 2, 2],
        num_attention_heads: 4,
        attention_head_dim: 12,
        in_channels: 16,
        out_channels: Some(16),
        text_dim: TEXT_DIM,
        freq_dim: 32,
        ffn_dim: 64,
        num_layers: 2,
        cross_attn_norm: true,
        rope_max_seq_len: 64,
        ..TransformerConfig::default()
    }
}

/// Deterministic values in (−1, 1) without libtorch's global generator (tests run in parallel).
fn hashed(shape: &[i64], salt: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    let x = (Tensor::arange(n, (Kind::Double, Device::Cpu)) * 12.9898 + salt * 78.233).sin()
        * 43758.5453;
    ((&x - x.floor()) * 2.0 - 1.0)
        .to_kind(Kind::Float)
        .view(shape)
}

/// Weights large enough for the attention to be far from uniform (so a wrong token, head or
/// rotary position shows): gains around 1, biases and modulation tables around 0, the rest
/// scaled by fan-in.
fn fill(vs: &nn::VarStore, salt: f64) {
    let mut variables: Vec<_> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (i, (name, mut t)) in variables.into_iter().enumerate() {
            let noise = hashed(&t.size(), salt + i as f64);
            let gain =
                (name.contains("norm") && name.ends_with("weight")) || name.ends_with("gamma");
            let value = if gain {
                noise * 0.2 + 1.0
            } else if name.ends_with("bias") || name.contains("scale_shift_table") {
                noise * 0.2
            } else {
                let fan_in = t.size()[1..].iter().product::<i64>().max(1) as f64;
                noise * (3.0 / fan_in).sqrt()
            };
            t.copy_(&value.to_kind(t.kind()));
        }
    });
}

fn expert(salt: f64) -> WanTransformer3DModel {
    let vs = nn::VarStore::new(device());
    let model = WanTransformer3DModel::new(&tiny_config(), vs.root()).unwrap();
    fill(&vs, salt);
    model
}

struct Setup {
    high: WanTransformer3DModel,
    low: WanTransformer3DModel,
    prompt: Tensor,
    negative: Tensor,
    noise: Tensor,
    settings: DenoiseSettings,
}

fn setup() -> Setup {
    let timesteps = scheduler().timesteps().to_vec();
    Setup {
        high: expert(1.0),
        low: expert(2.0),
        prompt: hashed(&[1, 8, TEXT_DIM], 3.0).to_device(device()),
        negative: hashed(&[1, 8, TEXT_DIM], 4.0).to_device(device()),
        noise: (hashed(&LATENT_SHAPE, 5.0) * 1.7).to_device(device()),
        settings: DenoiseSettings {
            guidance_scale: 4.0,
            guidance_scale_2: Some(3.0),
            // halfway between the 2nd and 3rd timestep: 2 steps per expert
            boundary_ratio: Some((timesteps[1] + timesteps[2]) / 2.0 / 1000.0),
            expand_timesteps: false,
        },
    }
}

fn scheduler() -> UniPcMultistepScheduler {
    let mut s = UniPcMultistepScheduler::new(UniPcConfig::wan(1000, 3.0));
    s.set_timesteps(STEPS, None).unwrap();
    s
}

/// A run's final latents, the expert of every step, and the state after `stop_after` steps.
struct Run {
    latents: Option<Tensor>,
    experts: Vec<Expert>,
    saved: Option<DenoiseState>,
}

/// The loop over `experts` from `start` (the noise, or a restored state), stopping after
/// `stop_after` steps when given.
fn run_loop<P: NoisePredictor + ?Sized>(
    s: &Setup,
    experts: &Experts<'_, P>,
    start: Option<&DenoiseState>,
    stop_after: Option<usize>,
) -> Run {
    let mut sched = scheduler();
    let (latents, start_step) = match start {
        None => (s.noise.shallow_clone(), 0),
        Some(state) => {
            sched.restore(&state.scheduler).unwrap();
            (
                state.latents.to_tensor().unwrap().to_device(device()),
                state.step,
            )
        }
    };
    let input = DenoiseInput {
        latents,
        prompt_embeds: &s.prompt,
        negative_prompt_embeds: Some(&s.negative),
        start_step,
    };
    let mut seen = Vec::new();
    let mut saved = None;
    let out = denoise(experts, &mut sched, &s.settings, input, &mut |end| {
        seen.push(end.expert);
        if Some(end.index + 1) == stop_after {
            saved = Some(DenoiseState::capture(end, 42).unwrap());
            return StepControl::Stop;
        }
        StepControl::Continue
    });
    let latents = match out {
        Ok(l) => Some(l),
        Err(PipelineError::Canceled { .. }) => None,
        Err(e) => panic!("denoise failed: {e}"),
    };
    Run {
        latents,
        experts: seen,
        saved,
    }
}

/// Today's single-device loop.
fn single(s: &Setup, start: Option<&DenoiseState>, stop_after: Option<usize>) -> Run {
    let experts = Experts {
        high: &s.high,
        low: Some(&s.low),
    };
    run_loop(s, &experts, start, stop_after)
}

/// The same loop with the predictions computed by `layout`'s ranks, all on the CPU.
fn parallel(
    s: &Setup,
    layout: ParallelLayout,
    start: Option<&DenoiseState>,
    stop_after: Option<usize>,
) -> Run {
    let plan = ParallelPlan::on_one_device(layout, device());
    let home = RankModels {
        high: s.high.share().unwrap(),
        low: Some(s.low.share().unwrap()),
    };
    let models = RankModels::for_ranks(&plan, &home, &[]).unwrap();
    run_ranks(&plan, models, |pool| {
        let high = pool.expert(Expert::High, None);
        let low = pool.expert(Expert::Low, None);
        let experts = Experts {
            high: &high,
            low: Some(&low),
        };
        run_loop(s, &experts, start, stop_after)
    })
    .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn layout(cfg: usize, ulysses: usize) -> ParallelLayout {
    ParallelLayout::new(cfg, ulysses, tiny_config().num_attention_heads).unwrap()
}

/// Runs `layout` against the single-device run and returns the max |diff| of the latents.
fn latents_diff(s: &Setup, reference: &Run, layout: ParallelLayout) -> f64 {
    let run = parallel(s, layout, None, None);
    assert_eq!(run.experts, reference.experts, "{layout}: experts per step");
    let diff = max_diff(
        run.latents.as_ref().unwrap(),
        reference.latents.as_ref().unwrap(),
    );
    println!("layout {layout}: latents max |diff| {diff:.3e}");
    diff
}

#[test]
fn the_schedule_crosses_the_expert_boundary() {
    let s = setup();
    let run = single(&s, None, None);
    assert_eq!(
        run.experts,
        [Expert::High, Expert::High, Expert::Low, Expert::Low]
    );
    // The guided prediction moves the latents a long way: a broken rank cannot hide in 1e-5.
    let moved = max_diff(run.latents.as_ref().unwrap(), &s.noise);
    assert!(moved > 0.1, "latents moved only {moved}");
}

#[test]
fn one_rank_and_cfg_parallel_are_bit_identical_to_one_device() {
    let s = setup();
    let reference = single(&s, None, None);
    for l in [layout(1, 1), layout(2, 1)] {
        assert_eq!(
            latents_diff(&s, &reference, l),
            0.0,
            "{l} is not bit-identical"
        );
    }
}

#[test]
fn ulysses_on_2_and_4_ranks_matches_one_device() {
    let s = setup();
    let reference = single(&s, None, None);
    for l in [layout(1, 2), layout(1, 4)] {
        let diff = latents_diff(&s, &reference, l);
        assert!(diff <= TOLERANCE, "{l}: latents differ by {diff:.3e}");
    }
}

#[test]
fn cfg_and_ulysses_combined_match_one_device() {
    let s = setup();
    let reference = single(&s, None, None);
    for l in [layout(2, 2), layout(2, 4)] {
        let diff = latents_diff(&s, &reference, l);
        assert!(diff <= TOLERANCE, "{l}: latents differ by {diff:.3e}");
    }
}

#[test]
fn a_token_count_that_the_ranks_divide_needs_no_padding() {
    // 3 × 4 × 4 = 48 tokens: whole shards on 2 and 4 ranks.
    let mut s = setup();
    s.noise = hashed(&[1, 16, 3, 8, 8], 6.0).to_device(device());
    let reference = single(&s, None, None);
    for l in [layout(1, 4), layout(2, 2)] {
        let diff = latents_diff(&s, &reference, l);
        assert!(diff <= TOLERANCE, "{l}: latents differ by {diff:.3e}");
    }
}

#[test]
fn a_checkpoint_resumes_under_another_layout() {
    let s = setup();
    let reference = single(&s, None, None);
    let reference = reference.latents.unwrap();
    let through_file = |state: DenoiseState| {
        let bytes = state.to_bytes(&BTreeMap::new()).unwrap();
        DenoiseState::from_bytes(&bytes).unwrap().0
    };
    // 2 × 2 ranks stop at the boundary, one device finishes; and the other way round.
    let saved = through_file(parallel(&s, layout(2, 2), None, Some(2)).saved.unwrap());
    let resumed = single(&s, Some(&saved), None).latents.unwrap();
    let diff = max_diff(&resumed, &reference);
    println!("4 ranks → 1: max |diff| {diff:.3e}");
    assert!(diff <= TOLERANCE, "4 ranks → 1: {diff:.3e}");

    let saved = through_file(single(&s, None, Some(3)).saved.unwrap());
    let resumed = parallel(&s, layout(1, 4), Some(&saved), None)
        .latents
        .unwrap();
    let diff = max_diff(&resumed, &reference);
    println!("1 rank → 4: max |diff| {diff:.3e}");
    assert!(diff <= TOLERANCE, "1 rank → 4: {diff:.3e}");
}

#[test]
fn a_failing_rank_fails_the_step_with_its_own_error_instead_of_hanging() {
    // The negative prompt has the wrong width: only the ranks of CFG group 1 fail; group 0
    // waits for their predictions and must be released by the abort.
    let mut s = setup();
    s.negative = hashed(&[1, 8, TEXT_DIM + 1], 4.0).to_device(device());
    let plan = ParallelPlan::on_one_device(layout(2, 2), device());
    let home = RankModels {
        high: s.high.share().unwrap(),
        low: Some(s.low.share().unwrap()),
    };
    let models = RankModels::for_ranks(&plan, &home, &[]).unwrap();
    let err = run_ranks(&plan, models, |pool| {
        let high = pool.expert(Expert::High, None);
        let latents = s.noise.shallow_clone();
        let timestep = Tensor::from_slice(&[999.0f32]).to_device(device());
        let first = high
            .predict_guided(&latents, &timestep, &s.prompt, Some(&s.negative), 4.0)
            .unwrap_err();
        let second = high
            .predict_guided(&latents, &timestep, &s.prompt, None, 1.0)
            .unwrap_err();
        (first.to_string(), second.to_string())
    })
    .unwrap();
    assert!(err.0.contains("encoder_hidden_states"), "{}", err.0);
    assert!(err.1.contains("an earlier step failed"), "{}", err.1);
}

#[test]
fn a_ulysses_degree_that_does_not_divide_the_heads_is_refused() {
    let err = ParallelLayout::new(1, 3, 4).unwrap_err().to_string();
    assert!(
        err.contains("must divide the model's 4 attention heads"),
        "{err}"
    );
}

fn tiny_vae() -> AutoencoderKLWan {
    let cfg = VaeConfig {
        base_dim: 4,
        num_res_blocks: 1,
        ..VaeConfig::default()
    };
    let vs = nn::VarStore::new(device());
    let vae = AutoencoderKLWan::new(&cfg, vs.root()).unwrap();
    fill(&vs, 7.0);
    vae
}

/// 32-pixel tiles every 24 pixels: the 6 × 10 latents (48 × 80 pixels) make 2 × 4 tiles.
const TILING: Tiling = Tiling {
    min_height: 32,
    min_width: 32,
    stride_height: 24,
    stride_width: 24,
};

#[test]
fn the_vae_tiles_decoded_on_2_and_4_ranks_equal_a_single_tiled_decode() {
    let mut vae = tiny_vae();
    let latents = hashed(&LATENT_SHAPE, 8.0).to_device(device());
    let untiled = vae.decode(&latents).unwrap();
    vae.enable_tiling(TILING).unwrap();
    let tiled = vae.decode(&latents).unwrap();
    assert_eq!(tiled.size(), [1, 3, 9, 48, 80]);
    for ranks in [2, 4] {
        let parallel =
            decode_tiles_parallel(&vae, &latents, TILING, &vec![device(); ranks]).unwrap();
        let diff = max_diff(&parallel, &tiled);
        assert!(
            diff <= exact(),
            "{ranks} ranks: frames differ from the tiled decode by {diff:.3e}"
        );
    }
    // What tiling itself changes (the blend of overlapping tiles), for the record.
    println!(
        "tiled vs untiled decode: max |diff| {:.3e}",
        max_diff(&tiled, &untiled)
    );
}

#[test]
fn frames_of_the_parallel_run_match_one_device() {
    let s = setup();
    let vae = tiny_vae();
    let frames = |latents: &Tensor| vae.decode(latents).unwrap();
    let reference = frames(single(&s, None, None).latents.as_ref().unwrap());
    for l in [layout(2, 1), layout(1, 4), layout(2, 2)] {
        let run = parallel(&s, l, None, None);
        let diff = max_diff(&frames(run.latents.as_ref().unwrap()), &reference);
        println!("layout {l}: frames max |diff| {diff:.3e}");
        assert!(diff <= TOLERANCE, "{l}: frames differ by {diff:.3e}");
    }
}
