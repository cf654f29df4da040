//! Guidance ≤ 1 skips the unconditional pass (half the transformer work), as diffusers'
//! `do_classifier_free_guidance = guidance_scale > 1`: the negative prompt is not encoded, and
//! the frames cannot depend on it. Were the unconditional pass run at guidance 0.5, the frames
//! would be `uncond + 0.5·(cond − uncond)` and change with the negative prompt, so these tests
//! fail if the skip is removed. On the tiny two-expert model of `make fixtures`, CPU, f32.

mod common;

use common::fixture;
use t2v_pipeline::denoise::StepControl;
use t2v_pipeline::{GenerationParams, LoadOptions, WanT2V};
use tch::{Device, Kind, Tensor};

fn tiny_pipeline() -> WanT2V {
    let dir = fixture("wan_pipeline").join("two_experts");
    WanT2V::load(&dir, LoadOptions::new(Device::Cpu, Kind::Float))
        .unwrap_or_else(|e| panic!("load {}: {e}", dir.display()))
}

/// The frames of a 32×32×5, 2-step video (seeded, so only the settings differ between calls).
fn frames(pipe: &mut WanT2V, guidance: (f64, f64), negative: &str) -> Tensor {
    let params = GenerationParams {
        prompt: "a red fox running through snow".into(),
        negative_prompt: Some(negative.into()),
        width: 32,
        height: 32,
        num_frames: 5,
        num_inference_steps: 2,
        guidance_scale: guidance.0,
        guidance_scale_2: Some(guidance.1),
        seed: Some(7),
        max_sequence_length: 16,
        ..GenerationParams::default()
    };
    pipe.generate(&params, &mut |_| StepControl::Continue)
        .unwrap_or_else(|e| panic!("generate at guidance {guidance:?}: {e}"))
        .frames
}

const NEGATIVE_A: &str = "blurry, low quality";
const NEGATIVE_B: &str = "a completely different negative prompt about green elephants";

#[test]
fn guidance_at_most_one_makes_the_negative_prompt_irrelevant() {
    let mut pipe = tiny_pipeline();
    // (1.0, 1.0): Lightning's setting; (0.5, 0.5): below 1; (1.0, 3.0): the high-noise scale
    // decides for both experts, as in diffusers.
    for guidance in [(1.0, 1.0), (0.5, 0.5), (1.0, 3.0)] {
        let a = frames(&mut pipe, guidance, NEGATIVE_A);
        let b = frames(&mut pipe, guidance, NEGATIVE_B);
        assert!(
            a.equal(&b),
            "guidance {guidance:?}: the frames depend on the negative prompt, so the unconditional pass ran"
        );
    }
    // The control: with guidance on, the negative prompt does change the frames (so the
    // equalities above are not an accident of the tiny model).
    let a = frames(&mut pipe, (1.5, 1.5), NEGATIVE_A);
    let b = frames(&mut pipe, (1.5, 1.5), NEGATIVE_B);
    assert!(!a.equal(&b), "guidance 1.5 ignored the negative prompt");
}

#[test]
fn the_negative_prompt_is_not_encoded_without_guidance() {
    let mut pipe = tiny_pipeline();
    let (prompt, negative) = pipe
        .encode_prompt("a red fox", Some(NEGATIVE_A), false, 16)
        .unwrap();
    assert_eq!(prompt.size()[..2], [1, 16]);
    assert!(
        negative.is_none(),
        "the negative prompt was encoded without CFG"
    );
    let (_, negative) = pipe
        .encode_prompt("a red fox", Some(NEGATIVE_A), true, 16)
        .unwrap();
    assert!(negative.is_some(), "CFG needs the negative embeddings");
}
