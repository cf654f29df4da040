//! Loading: the `[model]` section's device, dtype and memory policy resolved to load options,
//! and [`WanGenerator`]'s constructors (the variant's LoRAs fused, its revision and precision).

use std::path::Path;

use t2v_contract::defaults::ModelDefaults;
use t2v_pipeline::memory::MemoryPolicy;
use t2v_pipeline::PipelineError;
use t2v_pipeline::{LoadOptions, WanT2V};
use tch::{Device, Kind};

use super::revision::{hash_lora, model_revision, precision};
use super::WanGenerator;
use crate::config::{DeviceChoice, DtypeChoice, MemoryPolicyChoice, ModelConfig};
use crate::generate::variant::{variant_revision, Variant};
use crate::generate::{GenerateError, ModelInfo, ModelKind};

/// The device `choice` names; `auto` takes CUDA device 0 when libtorch sees one.
pub fn resolve_device(choice: DeviceChoice) -> Result<Device, GenerateError> {
    match choice {
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err(GenerateError::Load(
            "device = cuda but libtorch sees no CUDA device — check the driver and that libtorch is a CUDA build, or use device = cpu".into(),
        )),
    }
}

/// The weight dtype `choice` names on `device`; `auto` is bf16 on CUDA and f32 on the CPU.
pub fn resolve_dtype(choice: DtypeChoice, device: Device) -> Kind {
    match choice {
        DtypeChoice::Auto if device.is_cuda() => Kind::BFloat16,
        DtypeChoice::Auto | DtypeChoice::F32 => Kind::Float,
        DtypeChoice::Bf16 => Kind::BFloat16,
        DtypeChoice::Fp16 => Kind::Half,
        DtypeChoice::Fp8 => t2v_pipeline::wan::fp8::FP8,
    }
}

pub fn memory_policy(choice: MemoryPolicyChoice) -> MemoryPolicy {
    match choice {
        MemoryPolicyChoice::Resident => MemoryPolicy::all_resident(),
        MemoryPolicyChoice::LowMemory => MemoryPolicy::low_memory(),
    }
}

/// The load options of `[model] device / dtype / memory_policy`; the VAE stays in f32.
pub fn load_options(
    device: DeviceChoice,
    dtype: DtypeChoice,
    memory: MemoryPolicyChoice,
) -> Result<LoadOptions, GenerateError> {
    let device = resolve_device(device)?;
    crate::generate::preflight::check_dtype(resolve_dtype(dtype, device), device)?;
    Ok(LoadOptions {
        device,
        dtype: resolve_dtype(dtype, device),
        vae_dtype: Kind::Float,
        memory: memory_policy(memory),
    })
}

/// Which requests the loaded model takes, as the job side checks them before any work.
fn model_kind(kind: t2v_pipeline::model_dir::ModelKind) -> ModelKind {
    use t2v_pipeline::model_dir::ModelKind as Dir;
    match kind {
        Dir::TextToVideo { .. } => ModelKind::TextToVideo,
        Dir::ImageToVideo { .. } => ModelKind::ImageToVideo,
        Dir::TextImageToVideo => ModelKind::TextImageToVideo,
    }
}

/// The published defaults (size, frames, fps, steps, guidance) of the model in `dir`, by its
/// kind: a TI2V-5B fleet's requests with zeros get 1280x704, 121 frames at 24 fps. A directory
/// whose kind cannot be read gets T2V-A14B's; its load then fails with the reason.
pub(crate) fn published_defaults(dir: &Path) -> ModelDefaults {
    t2v_pipeline::model_dir::ModelDir::open(dir)
        .and_then(|d| d.kind())
        .map(|kind| kind.defaults())
        .unwrap_or(t2v_contract::defaults::WAN22_T2V_A14B)
}

impl WanGenerator {
    /// Loads `dir` (the diffusers layout) with `options`; `name` is the model id requests use.
    pub fn load(dir: &Path, name: &str, options: LoadOptions) -> Result<Self, GenerateError> {
        let variant = Variant::for_model(&ModelConfig::default(), published_defaults(dir));
        Self::load_variant(dir, name, options, &variant)
    }

    /// Loads the whole `[model]` section: the variant's LoRAs and preset, device, dtype, memory
    /// policy, the preflight budget and the GPUs of a job.
    pub fn load_model(model: &ModelConfig) -> Result<Self, GenerateError> {
        let options = load_options(model.device, model.dtype, model.memory_policy)?;
        let variant = Variant::for_model(model, published_defaults(Path::new(&model.dir)));
        tracing::info!(dir = %model.dir, name = %model.name, ?options, ?variant, "loading the Wan pipeline");
        let generator = Self::load_variant(Path::new(&model.dir), &model.name, options, &variant)?
            .with_memory_budget(model.memory_budget_gib)
            .with_parallel(&model.devices, model.collectives)?;
        // The step cache runs on one device only (t2v-pipeline's step_cache): say so at start,
        // not in every job.
        if generator.cache.config.is_some() && generator.pipe.parallel_plan().is_some() {
            return Err(GenerateError::Load(
                "model.cache is set but model.devices spreads each job over several GPUs — the step cache runs on one GPU: set devices = [0] (and run one worker per GPU) or cache kind = \"off\"".into(),
            ));
        }
        Ok(generator)
    }

    /// Loads `dir` with `variant`'s LoRAs fused into the experts (a missing file or a LoRA for
    /// another base is refused here, naming the file and the fix); jobs take the variant's
    /// sampling defaults, and the revision covers the LoRAs and the preset
    /// ([`variant_revision`]).
    pub fn load_variant(
        dir: &Path,
        name: &str,
        options: LoadOptions,
        variant: &Variant,
    ) -> Result<Self, GenerateError> {
        if dir.as_os_str().is_empty() {
            return Err(GenerateError::Load(
                "model.dir is empty — set it to the diffusers-format checkpoint directory (env T2V_MODEL__DIR, flag --model-dir)".into(),
            ));
        }
        for spec in variant
            .loras
            .transformer
            .iter()
            .chain(&variant.loras.transformer_2)
        {
            t2v_pipeline::lora::check_file(&spec.path).map_err(|_| missing_lora(&spec.path))?;
        }
        let base_revision = model_revision(dir)?;
        let precision = precision(&options);
        let pipe = WanT2V::load_with_loras(dir, options, &variant.loras).map_err(load_error)?;
        // After the load, so a LoRA that is no safetensors file fails with the LoRA's message.
        let revision = variant_revision(&base_revision, variant, hash_lora)?;
        let kind = model_kind(pipe.kind());
        let patch = pipe.configs().map_err(load_error)?.transformer.patch_size[1];
        let size_multiple = (pipe.vae().config().spatial_ratio() * patch) as u32;
        Ok(Self {
            pipe,
            info: ModelInfo {
                name: name.to_string(),
                revision,
                precision,
                defaults: variant.sampling.defaults,
                kind,
                size_multiple,
            },
            limit: None,
            sampling: variant.sampling,
            cache: variant.cache.clone(),
        })
    }
}

/// A configured LoRA file that is not there, in one line with the fix.
pub(super) fn missing_lora(path: &Path) -> GenerateError {
    GenerateError::Load(format!(
        "LoRA file {} does not exist — fix its path in [[model.loras]] (env T2V_MODEL__LORAS) or remove the entry",
        path.display()
    ))
}

/// A load failure in the worker's terms (the pipeline's message names the file and the fix).
fn load_error(e: PipelineError) -> GenerateError {
    match e {
        PipelineError::OutOfMemory { message } => GenerateError::OutOfMemory {
            message: format!(
                "{message} while loading the weights — try memory_policy = \"low-memory\" or a smaller dtype"
            ),
        },
        other => GenerateError::Load(other.to_string()),
    }
}
