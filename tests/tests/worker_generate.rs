//! `t2v-worker generate` on the tiny random-weight Wan models of `make fixtures`
//! (`pipeline/parity/wan_pipeline.py`, `i2v_pipeline.py`): the saved frames match diffusers
//! `WanPipeline(..., output_type="np")` within 1e-3 absolute (values in [0, 1]), and with
//! `--image` `WanImageToVideoPipeline` on the same image file; without a size the image picks it
//! as a worker does; bad inputs (an image for a text-to-video model, none for an image-to-video
//! one, a GIF) end with one line naming the cause and a non-zero exit; `--out` writes an H.264 MP4.
//!
//! Fixtures: `$T2V_FIXTURES` (default `<workspace>/build/fixtures`); missing ones fail the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use t2v_tests::{binary, copy_dir, fixture_dir};

/// Frames are compared with this absolute tolerance (values in [0, 1]).
const FRAMES_ATOL: f32 = 1e-3;

fn settings(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("settings.json")).expect("settings.json");
    serde_json::from_str(&text).expect("settings.json parses")
}

/// The CLI flags of the reference run in `settings.json`.
fn reference_args(s: &serde_json::Value) -> Vec<String> {
    let mut args = vec!["--prompt".to_string(), s["prompt"].as_str().unwrap().into()];
    if let Some(negative) = s["negative_prompt"].as_str() {
        args.extend(["--negative-prompt".into(), negative.into()]);
    }
    for (flag, key) in [
        ("--width", "width"),
        ("--height", "height"),
        ("--frames", "num_frames"),
        ("--steps", "num_inference_steps"),
        ("--seed", "seed"),
    ] {
        args.extend([flag.into(), s[key].as_i64().unwrap().to_string()]);
    }
    args.extend(["--guidance".into(), s["guidance_scale"].to_string()]);
    if let Some(g2) = s["guidance_scale_2"].as_f64() {
        args.extend(["--guidance-2".into(), g2.to_string()]);
    }
    // Unset, the reference pipelines pad to 512 as well.
    let max_sequence_length = s.get("max_sequence_length").unwrap_or(&512.into()).clone();
    assert_eq!(max_sequence_length, 512, "the CLI pads prompts to 512");
    args
}

fn generate(model: &Path, args: &[String]) -> Output {
    Command::new(binary("t2v-worker"))
        .arg("generate")
        .arg("--model")
        .arg(model)
        .args(["--device", "cpu", "--dtype", "f32"])
        .args(args)
        .output()
        .expect("running t2v-worker generate")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A float32 array `(shape, values)` from a `.npy` (v1/v2) or a safetensors `name`.
type Array = (Vec<usize>, Vec<f32>);

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn read_npy(path: &Path) -> Array {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "npy magic");
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let dims = header
        .split("'shape': (")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap();
    let shape = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().unwrap())
        .collect();
    (shape, f32s(&bytes[start + len..]))
}

fn read_safetensors(path: &Path, name: &str) -> Array {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let entry = &header[name];
    assert_eq!(entry["dtype"], "F32", "{name}");
    let shape = entry["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let offsets = entry["data_offsets"].as_array().unwrap();
    let (from, to) = (
        8 + len + offsets[0].as_u64().unwrap() as usize,
        8 + len + offsets[1].as_u64().unwrap() as usize,
    );
    (shape, f32s(&bytes[from..to]))
}

fn check_against_diffusers(case: &str) {
    let dir = fixture_dir(case);
    let s = settings(&dir);
    let tmp = tempfile::tempdir().unwrap();
    let npy = tmp.path().join("frames.npy");
    let mut args = reference_args(&s);
    args.extend(["--save-frames".into(), npy.display().to_string()]);
    let out = generate(&dir, &args);
    assert!(out.status.success(), "{case}: {}", stderr(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(&format!("seed {}", s["seed"])),
        "summary names the seed: {summary}"
    );
    assert!(
        summary.contains("denoise"),
        "summary has timings: {summary}"
    );

    let (shape, frames) = read_npy(&npy);
    let (ref_shape, reference) = read_safetensors(&dir.join("reference.safetensors"), "frames");
    let used = s["num_frames_used"].as_u64().unwrap() as usize;
    let (w, h) = (
        s["width"].as_u64().unwrap() as usize,
        s["height"].as_u64().unwrap() as usize,
    );
    assert_eq!(shape, [used, h, w, 3], "{case}: (frames, height, width, 3)");
    assert_eq!(shape, ref_shape);
    let diff = frames
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("{case}: max |frames − diffusers| = {diff:.3e}");
    assert!(
        diff <= FRAMES_ATOL,
        "{case}: max |frames − diffusers| {diff:.3e} > {FRAMES_ATOL:.0e}"
    );
    assert!(
        frames.iter().any(|v| *v > 0.05) && frames.iter().all(|v| (0.0..=1.0).contains(v)),
        "{case}: frames are an image in [0, 1]"
    );
}

#[test]
fn two_experts_frames_match_diffusers() {
    check_against_diffusers("two_experts");
}

#[test]
fn single_expert_frames_match_diffusers() {
    check_against_diffusers("single_expert");
}

/// One error line from the CLI (progress and warnings aside), naming `needle`.
fn assert_one_error_line(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected a failure");
    let text = stderr(out);
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("t2v-worker generate:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {text}");
    assert!(errors[0].contains(needle), "{needle:?} in {:?}", errors[0]);
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn a_missing_tokenizer_is_one_line_naming_the_path() {
    let source = fixture_dir("single_expert");
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_dir(&source, &model);
    std::fs::remove_dir_all(model.join("tokenizer")).unwrap();
    let out = generate(&model, &["--prompt".into(), "a cat".into()]);
    assert_one_error_line(&out, &model.join("tokenizer").display().to_string());
}

#[test]
fn an_impossible_size_is_one_line_naming_width() {
    let dir = fixture_dir("single_expert");
    let args: Vec<String> = [
        "--prompt", "a cat", "--width", "30", "--height", "48", "--frames", "5", "--steps", "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = generate(&dir, &args);
    assert_one_error_line(&out, "width");
    assert!(stderr(&out).contains("30"), "{}", stderr(&out));
}

#[test]
fn a_prompt_over_the_token_limit_is_one_line_naming_the_prompt() {
    let dir = fixture_dir("single_expert");
    let long_prompt = "a red fox running through fresh snow at dawn ".repeat(120);
    let args: Vec<String> = [
        "--prompt",
        &long_prompt,
        "--width",
        "64",
        "--height",
        "64",
        "--frames",
        "5",
        "--steps",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = generate(&dir, &args);
    assert_one_error_line(&out, "prompt");
    assert!(
        stderr(&out).contains("512"),
        "names the limit: {}",
        stderr(&out)
    );
}

#[test]
fn out_dir_gets_an_h264_mp4_with_every_frame_and_a_thumbnail() {
    let dir = fixture_dir("two_experts");
    let s = settings(&dir);
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("video");
    let mut args = reference_args(&s);
    args.extend(["--out".into(), out_dir.display().to_string()]);
    let out = generate(&dir, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let video = out_dir.join("video.mp4");
    let thumbnail = std::fs::read(out_dir.join("thumbnail.jpg")).expect("thumbnail.jpg");
    assert_eq!(&thumbnail[..2], &[0xff, 0xd8], "a JPEG");
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args([
            "-show_entries",
            "stream=codec_name,nb_read_frames,width,height",
        ])
        .args(["-of", "json"])
        .arg(&video)
        .output()
        .expect("ffprobe (install ffmpeg)");
    assert!(probe.status.success(), "{}", stderr(&probe));
    let info: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    let stream = &info["streams"][0];
    assert_eq!(stream["codec_name"], "h264", "{info}");
    assert_eq!(
        stream["nb_read_frames"].as_str().unwrap(),
        s["num_frames_used"].to_string(),
        "{info}"
    );
    assert_eq!(stream["width"], s["width"]);
    assert_eq!(stream["height"], s["height"]);
}

/// `make fixtures`' `i2v_pipeline/`, beside `wan_pipeline/`: the tiny I2V-A14B-shaped model
/// (`two_experts/`, its diffusers run in `reference.json` / `reference.safetensors`) and the
/// 61×37 image it was given (`image.png`).
fn i2v_fixture() -> PathBuf {
    let root = fixture_dir("two_experts").join("../../i2v_pipeline");
    assert!(
        root.join("two_experts/reference.json").exists(),
        "fixture {} missing — run `make fixtures`",
        root.display()
    );
    root
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn image_to_video_from_an_image_file_matches_diffusers() {
    let fixture = i2v_fixture();
    let dir = fixture.join("two_experts");
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    let s: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let npy = tmp.path().join("frames.npy");
    let mut args = reference_args(&s);
    args.extend([
        "--image".into(),
        fixture.join("image.png").display().to_string(),
    ]);
    args.extend(["--save-frames".into(), npy.display().to_string()]);
    let out = generate(&dir, &args);
    assert!(out.status.success(), "{}", stderr(&out));

    let (shape, frames) = read_npy(&npy);
    let (ref_shape, reference) = read_safetensors(&dir.join("reference.safetensors"), "frames");
    assert_eq!(shape, ref_shape, "(frames, height, width, 3)");
    let diff = frames
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("i2v: max |frames − diffusers| = {diff:.3e}");
    assert!(
        diff <= FRAMES_ATOL,
        "max |frames − diffusers| {diff:.3e} > {FRAMES_ATOL:.0e}"
    );
}

#[test]
fn without_a_size_the_image_picks_it_as_a_worker_does() {
    let fixture = i2v_fixture();
    let image = fixture.join("image.png").display().to_string();
    let args = strings(&[
        "--prompt", "a kite", "--frames", "1", "--steps", "1", "--seed", "1", "--image", &image,
    ]);
    let out = generate(&fixture.join("two_experts"), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    // The 61×37 image at I2V-A14B's default area (832×480), each side a multiple of 16.
    let area = 832.0 * 480.0;
    let aspect = 37.0 / 61.0_f64;
    let side = |v: f64| (v.round() as u32) / 16 * 16;
    let (width, height) = (side((area / aspect).sqrt()), side((area * aspect).sqrt()));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(&format!("generated 1 frames {width}×{height} ")),
        "{width}×{height} in {summary}"
    );
}

#[test]
fn an_image_the_model_cannot_take_is_one_line() {
    let fixture = i2v_fixture();
    let image = fixture.join("image.png").display().to_string();
    let small = [
        "--width", "48", "--height", "32", "--frames", "1", "--steps", "1",
    ];

    let mut args = strings(&["--prompt", "a cat", "--image", &image]);
    args.extend(strings(&small));
    let out = generate(&fixture_dir("single_expert"), &args);
    assert_one_error_line(&out, "takes no image");

    let mut args = strings(&["--prompt", "a cat"]);
    args.extend(strings(&small));
    let out = generate(&fixture.join("two_experts"), &args);
    assert_one_error_line(&out, "needs an image");

    let tmp = tempfile::tempdir().unwrap();
    let gif = tmp.path().join("cat.gif");
    std::fs::write(&gif, t2v_tests::gif()).unwrap();
    let mut args = strings(&["--prompt", "a cat", "--image", &gif.display().to_string()]);
    args.extend(strings(&small));
    let out = generate(&fixture.join("two_experts"), &args);
    assert_one_error_line(&out, &gif.display().to_string());
    assert!(
        stderr(&out).contains("PNG, JPEG or WebP"),
        "{}",
        stderr(&out)
    );

    let missing = tmp.path().join("none.png");
    let mut args = strings(&[
        "--prompt",
        "a cat",
        "--image",
        &missing.display().to_string(),
    ]);
    args.extend(strings(&small));
    let out = generate(&fixture.join("two_experts"), &args);
    assert_one_error_line(&out, "cannot read --image");
}

#[test]
fn help_explains_the_image_flag() {
    let out = Command::new(binary("t2v-worker"))
        .args(["generate", "--help"])
        .output()
        .expect("running t2v-worker generate --help");
    assert!(out.status.success(), "{}", stderr(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for words in ["--image <PATH>", "image-to-video", "PNG, JPEG or WebP"] {
        assert!(help.contains(words), "{words:?} in\n{help}");
    }
}
