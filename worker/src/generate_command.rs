//! `t2v-worker generate`: one video from the command line, no Kafka — for trying a model
//! directory, checking a GPU, and comparing with diffusers.
//!
//! 1. load the model directory with `--device / --dtype / --memory-policy`; with `--image`, read
//!    and decode the conditioning image as a worker does a request's (`job::image`), after the
//!    model's kind said it takes one (and, for an image-to-video model, before saying it needs one);
//! 2. generate, showing a progress bar (plain step lines when stderr is not a terminal);
//! 3. optionally save the f32 frames as `.npy` (`(F, H, W, 3)` in [0, 1], what diffusers returns
//!    with `output_type="np"`) and the MP4 + thumbnail to a local directory or object-store URL;
//! 4. print one summary line with the seed and the per-phase timings.
//!
//! Every failure is one line naming the cause and the fix, with a non-zero exit.

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use t2v_contract::validate::MAX_IMAGE_OBJECT_BYTES;
use t2v_pipeline::GenerationOutput;
use t2v_proto::v1::Sampler;
use tch::{Device, Kind, Tensor};

use crate::config::{
    DeviceChoice, DevicesChoice, DtypeChoice, JobsConfig, MediaConfig, MemoryPolicyChoice,
};
use crate::generate::wan::{load_options, seconds, timings, to_rgb24, WanGenerator};
use crate::generate::{GenerateError, JobImage, JobSpec, ModelInfo, StepInfo, VideoGenerator};
use crate::gpu::{human, Gpu, PeakSampler};
use crate::media::MediaError;
use crate::storage::{Storage, StorageError};

/// Why `t2v-worker generate` failed; its Display is the one-line message for the user, naming
/// the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum GenerateCommandError {
    /// `--device / --dtype / --memory-policy` cannot be used here (e.g. `--device cuda` where
    /// libtorch sees no CUDA device).
    #[error(transparent)]
    InvalidFlags(GenerateError),
    /// The model directory did not load.
    #[error(transparent)]
    Load(GenerateError),
    /// The generation failed.
    #[error(transparent)]
    Generate(GenerateError),
    /// `--image` does not suit the model (it takes none, or needs one), or its bytes are not an
    /// image the fleet takes; the message is a worker's for the same request.
    #[error("{0}")]
    Image(String),
    /// The `--image` file cannot be read.
    #[error("cannot read --image {}: {source} — name a PNG, JPEG or WebP file", path.display())]
    ImageFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The loader or generator thread panicked or was cancelled.
    #[error("the {thread} thread failed: {source}")]
    Thread {
        /// `loader` or `generator`.
        thread: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A local file or directory of the outputs: `action` is `write`, `create`, `resolve` or
    /// `read`.
    #[error("cannot {action} {}: {source}", path.display())]
    OutputIo {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The frames could not be read out of their tensor for `--save-frames`.
    #[error("cannot write {}: {source}", path.display())]
    FramesTensor {
        path: PathBuf,
        #[source]
        source: tch::TchError,
    },
    /// The frames could not be converted for encoding.
    #[error(transparent)]
    Frames(GenerateError),
    /// The MP4 or thumbnail could not be encoded.
    #[error(transparent)]
    Encode(#[from] MediaError),
    /// `--out` cannot be opened or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl GenerateCommandError {
    fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::OutputIo {
            action,
            path,
            source,
        }
    }
}

/// The sampler flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerArg {
    /// UniPC multistep (the Wan default).
    Unipc,
    /// Flow-matching Euler.
    Euler,
}

/// Flags of `t2v-worker generate`. Unset settings take the model's defaults (for T2V-A14B
/// 832×480, 81 frames at 16 fps, 40 steps, guidance 4.0/3.0; I2V-A14B and TI2V-5B have their
/// own); with `--image` and neither `--width` nor `--height`, the size follows the image.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Diffusers-format model directory (model_index.json, transformer/, vae/, …).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    /// Frame count (rounded down to 4k + 1 as diffusers does).
    #[arg(long)]
    pub frames: Option<u32>,
    /// Frame rate of the MP4.
    #[arg(long)]
    pub fps: Option<u32>,
    /// Denoising steps.
    #[arg(long)]
    pub steps: Option<u32>,
    /// CFG scale (of the high-noise expert in two-expert models).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// CFG scale of the low-noise expert (two-expert models only).
    #[arg(long = "guidance-2")]
    pub guidance_2: Option<f32>,
    /// Flow shift (default: the scheduler config's).
    #[arg(long)]
    pub shift: Option<f32>,
    /// Sampler (default: the scheduler config's).
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerArg>,
    /// Noise seed (default: random, printed in the summary).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The image the video starts from, for image-to-video models (Wan2.2 I2V-A14B needs one,
    /// TI2V-5B takes one; a text-to-video model refuses it): a PNG, JPEG or WebP file of at most
    /// 4096×4096 pixels, decoded and resized to the video's size as a worker does a request's
    /// image. Without --width and --height the size is the image's aspect ratio at the model's
    /// default area.
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, value_enum, default_value = "auto")]
    pub dtype: DtypeChoice,
    #[arg(long, value_enum, default_value = "resident")]
    pub memory_policy: MemoryPolicyChoice,
    /// GiB the estimated peak must fit, checked before generating (as `[model]
    /// memory_budget_gib`); 0 = the GPU's total memory, no check on the CPU.
    #[arg(long, default_value_t = 0.0)]
    pub memory_budget_gib: f64,
    /// With `--device cuda`: the GPUs one job spans, `all` or CUDA ordinals such as `0,1`
    /// (as `[model] devices`); several split CFG × Ulysses over them (the layout follows from
    /// the count, which must divide the model's heads).
    #[arg(long, default_value = "all")]
    pub devices: String,
    /// Write the frames as float32 (frames, height, width, 3) in [0, 1] to this .npy file.
    #[arg(long)]
    pub save_frames: Option<PathBuf>,
    /// Write video.mp4 and thumbnail.jpg here: a local directory or any storage URL the worker
    /// takes (file:///dir, s3://bucket/prefix, gs://bucket/prefix, az://container/prefix).
    #[arg(long)]
    pub out: Option<String>,
}

/// Runs `generate`; the `Err`'s Display is the one-line message for the user.
pub async fn run(args: GenerateArgs) -> Result<(), GenerateCommandError> {
    let started = Instant::now();
    let (generator, device) = load(&args).await?;
    let load_time = started.elapsed();
    let model = generator.model();
    let image = condition_image(&args, &model).await?;
    let job = job_spec(&args, &model, image);
    let (output, gpu_peak) = generate(generator, job.clone(), device).await?;
    for warning in &output.warnings {
        eprintln!("warning: {warning}");
    }
    let written = write_outputs(&args, &output, job.fps).await?;
    let summary = summary(
        &output,
        job.steps,
        (load_time, started.elapsed()),
        gpu_peak,
        args.save_frames.as_deref(),
        &written,
    );
    println!("{summary}");
    Ok(())
}

/// Step 1: loads the model directory with `--device / --dtype / --memory-policy` (and the
/// preflight of `--memory-budget-gib`) on a blocking thread; returns the device it runs on.
async fn load(args: &GenerateArgs) -> Result<(WanGenerator, Device), GenerateCommandError> {
    let options = load_options(args.device, args.dtype, args.memory_policy)
        .map_err(GenerateCommandError::InvalidFlags)?;
    let (model, budget) = (args.model.clone(), args.memory_budget_gib);
    let devices = DevicesChoice::Text(args.devices.clone());
    let generator = tokio::task::spawn_blocking(move || {
        WanGenerator::load(&model, "wan", options)
            .and_then(|g| g.with_memory_budget(budget).with_devices(&devices))
            .map_err(GenerateCommandError::Load)
    })
    .await
    .map_err(|source| GenerateCommandError::Thread {
        thread: "loader",
        source,
    })??;
    Ok((generator, options.device))
}

/// Step 1b: the `--image` file decoded, or `None`. The model's kind refuses an image it takes
/// none of, and its absence when it needs one, in a worker's words; the bytes go through the
/// worker's own decode (`job::image::decode`), so they are taken or refused exactly as a
/// request's would be.
async fn condition_image(
    args: &GenerateArgs,
    model: &ModelInfo,
) -> Result<Option<JobImage>, GenerateCommandError> {
    let name = args.model.display().to_string();
    model
        .kind
        .check_request(&name, args.image.is_some())
        .map_err(GenerateCommandError::Image)?;
    let Some(path) = &args.image else {
        return Ok(None);
    };
    let bytes = read_image_file(path)?;
    let read = crate::job::image::ImageBytes {
        bytes,
        reference: path.display().to_string(),
    };
    let image = crate::job::image::decode(read)
        .await
        .map_err(|e| GenerateCommandError::Image(e.to_string()))?;
    Ok(Some(image))
}

/// The bytes of the `--image` file: at most [`MAX_IMAGE_OBJECT_BYTES`], as a worker reads an
/// image object.
fn read_image_file(path: &Path) -> Result<Bytes, GenerateCommandError> {
    use std::io::Read;
    let unreadable = |source| GenerateCommandError::ImageFile {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| {
            file.take(MAX_IMAGE_OBJECT_BYTES + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_IMAGE_OBJECT_BYTES {
        return Err(GenerateCommandError::Image(format!(
            "image {} is larger than the {} MiB an image may be — use a smaller PNG, JPEG or WebP",
            path.display(),
            MAX_IMAGE_OBJECT_BYTES / (1024 * 1024)
        )));
    }
    Ok(Bytes::from(bytes))
}

/// The job the flags describe; unset flags take the `model`'s defaults, an unset seed a random
/// one. With an image and no size, the size comes from the image as a worker picks it.
fn job_spec(args: &GenerateArgs, model: &ModelInfo, image: Option<JobImage>) -> JobSpec {
    let defaults = model.defaults;
    let size_from_image = image.is_some() && args.width.is_none() && args.height.is_none();
    let (width, height) = match &image {
        Some(image) if size_from_image => crate::job::lifecycle::size_for_image(
            image,
            defaults.width,
            defaults.height,
            model.size_multiple,
        ),
        _ => (
            args.width.unwrap_or(defaults.width),
            args.height.unwrap_or(defaults.height),
        ),
    };
    JobSpec {
        job_id: "generate".into(),
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        width,
        height,
        num_frames: args.frames.unwrap_or(defaults.num_frames),
        fps: args.fps.unwrap_or(defaults.fps),
        steps: args.steps.unwrap_or(defaults.steps),
        guidance_scale: args.guidance,
        guidance_scale_2: args.guidance_2,
        shift: args.shift,
        sampler: match args.sampler {
            None => Sampler::Unspecified,
            Some(SamplerArg::Unipc) => Sampler::Unipc,
            Some(SamplerArg::Euler) => Sampler::FlowEuler,
        },
        seed: args.seed.unwrap_or_else(|| rand::random::<u64>() >> 1),
        cache_threshold: None,
        image_reference: args.image.as_ref().map(|p| p.display().to_string()),
        size_from_image,
        image,
    }
}

/// The device's peak memory `used` (NVML) while generating and its total, in bytes.
type GpuPeak = Option<(u64, u64)>;

/// Step 2: generates `job` on a blocking thread, showing progress; on CUDA also samples the
/// GPU's peak memory.
async fn generate(
    mut generator: WanGenerator,
    job: JobSpec,
    device: Device,
) -> Result<(GenerationOutput, GpuPeak), GenerateCommandError> {
    let gpu = device.is_cuda().then(Gpu::shared).flatten();
    tokio::task::spawn_blocking(move || {
        let sampler = gpu.map(|g| (g, PeakSampler::start(g, Duration::from_millis(100))));
        let mut progress = Progress::new(job.steps);
        let result = generator.run(&job, None, &mut |step| progress.step(step));
        progress.finish();
        let peak = sampler.map(|(g, s)| (s.finish(g), g.memory().map_or(0, |m| m.total)));
        result
            .map(|o| (o, peak))
            .map_err(GenerateCommandError::Generate)
    })
    .await
    .map_err(|source| GenerateCommandError::Thread {
        thread: "generator",
        source,
    })?
}

/// Step 3: the `.npy` frames (`--save-frames`) and the MP4 + thumbnail (`--out`); returns the
/// URIs of the latter.
async fn write_outputs(
    args: &GenerateArgs,
    output: &GenerationOutput,
    fps: u32,
) -> Result<Vec<String>, GenerateCommandError> {
    if let Some(path) = &args.save_frames {
        write_npy(path, &output.frames)?;
    }
    let Some(out) = &args.out else {
        return Ok(Vec::new());
    };
    let frames = to_rgb24(&output.frames).map_err(GenerateCommandError::Frames)?;
    write_video(out, &frames, fps).await
}

/// Step 4: the summary line: size, steps, seed, the per-phase timings (`load` and `total` are
/// measured here), peak GPU memory and what was written.
fn summary(
    output: &GenerationOutput,
    steps: u32,
    (load, total): (Duration, Duration),
    gpu_peak: GpuPeak,
    frames_path: Option<&Path>,
    written: &[String],
) -> String {
    let t = timings(output);
    let mut summary = format!(
        "generated {} frames {}×{} in {} steps, seed {}: load {}, text encode {}, denoise {}, VAE decode {}, total {}",
        output.num_frames,
        output.width,
        output.height,
        steps,
        output.seed,
        seconds(load),
        seconds(t.text_encode),
        seconds(t.denoise),
        seconds(t.vae_decode),
        seconds(total),
    );
    if let Some((peak, total)) = gpu_peak {
        summary += &format!("; peak GPU memory {} of {}", human(peak), human(total));
    }
    if let Some(path) = frames_path {
        summary += &format!("; frames {}", path.display());
    }
    for uri in written {
        summary += &format!("; {uri}");
    }
    summary
}

/// A progress bar on a terminal, one line per step otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
}

impl Progress {
    fn new(total: u32) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(u64::from(total));
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Self {
            bar,
            started: Instant::now(),
        }
    }

    fn step(&mut self, step: StepInfo) -> ControlFlow<()> {
        match &self.bar {
            Some(bar) => {
                bar.set_position(u64::from(step.step));
                bar.set_message(format!("t={:.0}", step.timestep));
            }
            None => eprintln!(
                "step {}/{} t={:.1} {}",
                step.step,
                step.total,
                step.timestep,
                seconds(self.started.elapsed())
            ),
        }
        ControlFlow::Continue(())
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Writes `frames` as a NumPy `.npy` v1.0 file of little-endian float32 with their shape.
pub fn write_npy(path: &Path, frames: &Tensor) -> Result<(), GenerateCommandError> {
    let tensor = |source| GenerateCommandError::FramesTensor {
        path: path.to_path_buf(),
        source,
    };
    let shape = frames.size();
    let values = frames
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_contiguous())
        .map_err(tensor)?;
    let values = Vec::<f32>::try_from(&values.flatten(0, -1)).map_err(tensor)?;
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // magic (6) + version (2) + header length (2) + header, padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + values.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let mut file = std::fs::File::create(path).map_err(GenerateCommandError::io("write", path))?;
    file.write_all(&bytes)
        .map_err(GenerateCommandError::io("write", path))
}

/// Encodes the MP4 and thumbnail and puts them under `out` (a directory or store URL);
/// returns their URIs.
async fn write_video(
    out: &str,
    frames: &crate::generate::Frames,
    fps: u32,
) -> Result<Vec<String>, GenerateCommandError> {
    let url = if out.contains("://") {
        out.to_string()
    } else {
        std::fs::create_dir_all(out).map_err(GenerateCommandError::io("create", out))?;
        let dir = std::fs::canonicalize(out).map_err(GenerateCommandError::io("resolve", out))?;
        format!("file://{}", dir.display())
    };
    let storage = Storage::from_url(&url, &JobsConfig::default())?;
    let encoded = crate::media::encode(&MediaConfig::default(), frames, fps, "generate").await?;
    let mut uris = Vec::new();
    for (file, name, content_type) in [
        (&encoded.video, "video.mp4", "video/mp4"),
        (&encoded.thumbnail, "thumbnail.jpg", "image/jpeg"),
    ] {
        let bytes = std::fs::read(file).map_err(GenerateCommandError::io("read", file))?;
        let key = storage.path(name);
        storage
            .put(&key, Bytes::from(bytes), content_type, false)
            .await?;
        uris.push(storage.uri(&key));
    }
    Ok(uris)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_errors_are_one_line_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("x.npy");
        let err = write_npy(&path, &Tensor::from_slice(&[0.5f32])).unwrap_err();
        assert!(
            matches!(
                err,
                GenerateCommandError::OutputIo {
                    action: "write",
                    ..
                }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("cannot write {}: ", path.display())),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn npy_header_is_aligned_and_data_little_endian() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        let t = Tensor::from_slice(&[0.25f32, 1.0, -2.0, 3.5, 0.0, 1.5]).reshape([1, 2, 1, 3]);
        write_npy(&path, &t).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
        assert!(header.contains("'shape': (1, 2, 1, 3)"), "{header}");
        assert!(header.ends_with('\n'));
        let data = &bytes[10 + len..];
        assert_eq!(data.len(), 6 * 4);
        assert_eq!(f32::from_le_bytes(data[8..12].try_into().unwrap()), -2.0);
    }
}
