//! `[model] devices`: the GPUs one job runs on and the parallel plan they give
//! (t2v-pipeline's [`ParallelPlan`]: CFG × Ulysses, the layout following from the count).
//!
//! CUDA device 0 — the device the pipeline loads on — is rank 0; the others get a copy of the
//! experts. On the CPU the list is ignored. `[model] collectives` picks what moves the ranks'
//! tensors (NCCL or the in-process copies, t2v-pipeline's `parallel::collectives`). Checkpoints do not depend on it: the denoising state
//! is the same whatever the layout, so a job checkpointed on 8 GPUs resumes on 1 and vice versa.

use t2v_pipeline::parallel::{ParallelLayout, ParallelPlan};
use tch::Device;

use super::WanGenerator;
use crate::config::{CollectivesChoice, DevicesChoice};
use crate::generate::GenerateError;

/// The CUDA ordinals `choice` names, of the `visible` GPUs (`"all"`: every one), checked.
pub fn device_ordinals(choice: &DevicesChoice, visible: usize) -> Result<Vec<usize>, String> {
    let listed: Vec<usize> = match choice {
        DevicesChoice::Text(text) if text.trim() == "all" => (0..visible).collect(),
        DevicesChoice::Text(text) => text
            .split(',')
            .map(|part| part.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                format!("model.devices {text:?}: expected \"all\" or CUDA ordinals such as \"0,1\"")
            })?,
        DevicesChoice::Ordinals(list) => list.iter().map(|&i| i as usize).collect(),
    };
    if listed.is_empty() {
        return Err(
            "model.devices names no GPU (none visible, or an empty list) — list at least GPU 0"
                .into(),
        );
    }
    for (at, &ordinal) in listed.iter().enumerate() {
        if ordinal >= visible {
            return Err(format!(
                "model.devices names GPU {ordinal}, but the worker sees {visible} (CUDA_VISIBLE_DEVICES) — list GPUs below {visible} or use \"all\""
            ));
        }
        if listed[..at].contains(&ordinal) {
            return Err(format!("model.devices names GPU {ordinal} twice"));
        }
    }
    Ok(listed)
}

/// The devices of one job on `device` (the pipeline's, from `[model] device`): rank 0 first,
/// then the other listed GPUs; `[Cpu]` on the CPU.
pub fn resolve_devices(
    choice: &DevicesChoice,
    device: Device,
    visible: usize,
) -> Result<Vec<Device>, String> {
    let Device::Cuda(home) = device else {
        return Ok(vec![device]);
    };
    let ordinals = device_ordinals(choice, visible)?;
    if !ordinals.contains(&home) {
        return Err(format!(
            "model.devices {ordinals:?} leaves out GPU {home}, where the model loads — include it"
        ));
    }
    Ok(std::iter::once(home)
        .chain(ordinals.into_iter().filter(|&o| o != home))
        .map(Device::Cuda)
        .collect())
}

/// The plan for `devices` and a model of `heads` heads; `None` for one device.
pub fn plan_for(devices: &[Device], heads: i64) -> Result<Option<ParallelPlan>, String> {
    if devices.len() < 2 {
        return Ok(None);
    }
    let layout = ParallelLayout::for_devices(devices.len(), heads).map_err(|e| {
        format!(
            "{} GPUs: {e} — list a count that splits (e.g. 2, 4 or 8 for Wan2.2 A14B)",
            devices.len()
        )
    })?;
    ParallelPlan::new(layout, devices.to_vec())
        .map(Some)
        .map_err(|e| e.to_string())
}

impl WanGenerator {
    /// Runs every job on the GPUs of `[model] devices` (one process, one thread per GPU) with
    /// the default collectives (`auto`); a single GPU, or the CPU, keeps today's one-device path.
    pub fn with_devices(self, choice: &DevicesChoice) -> Result<Self, GenerateError> {
        self.with_parallel(choice, CollectivesChoice::Auto)
    }

    /// As [`Self::with_devices`], the ranks' tensors moved by `collectives`: NCCL that is
    /// asked for and cannot be loaded, or whose communicators cannot be created, fails the
    /// load here, in one line (the communicators are made now and kept for the first job).
    pub fn with_parallel(
        mut self,
        choice: &DevicesChoice,
        collectives: CollectivesChoice,
    ) -> Result<Self, GenerateError> {
        let device = self.pipe.options().device;
        let visible = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        let devices = resolve_devices(choice, device, visible).map_err(GenerateError::Load)?;
        let heads = self
            .pipe
            .configs()
            .map_err(|e| GenerateError::Load(e.to_string()))?
            .transformer
            .num_attention_heads;
        let plan = plan_for(&devices, heads)
            .map_err(GenerateError::Load)?
            .map(|plan| plan.with_collectives(collectives.into()));
        if let Some(plan) = &plan {
            let used = t2v_pipeline::parallel::prepare_collectives(plan)
                .map_err(|e| GenerateError::Load(e.to_string()))?;
            tracing::info!(layout = %plan.layout, gpus = devices.len(), collectives = %plan.collectives, collectives_used = %used, "one job spans several GPUs");
        }
        self.pipe
            .set_parallel(plan)
            .map_err(|e| GenerateError::Load(e.to_string()))?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> DevicesChoice {
        DevicesChoice::Text(s.into())
    }

    #[test]
    fn all_lists_and_text_name_the_gpus_rank_0_first() {
        let cuda = |v: &[usize]| v.iter().map(|&i| Device::Cuda(i)).collect::<Vec<_>>();
        let home = Device::Cuda(0);
        assert_eq!(
            resolve_devices(&text("all"), home, 4).unwrap(),
            cuda(&[0, 1, 2, 3])
        );
        assert_eq!(
            resolve_devices(&text("2, 0"), home, 4).unwrap(),
            cuda(&[0, 2])
        );
        assert_eq!(
            resolve_devices(&DevicesChoice::Ordinals(vec![1, 0]), home, 2).unwrap(),
            cuda(&[0, 1])
        );
        assert_eq!(
            resolve_devices(&text("0,1"), Device::Cpu, 0).unwrap(),
            vec![Device::Cpu]
        );
    }

    #[test]
    fn gpus_that_are_not_there_or_twice_or_without_gpu_0_are_refused() {
        let home = Device::Cuda(0);
        let err = |c: DevicesChoice, visible| resolve_devices(&c, home, visible).unwrap_err();
        assert!(err(text("0,5"), 2).contains("GPU 5, but the worker sees 2"));
        assert!(err(text("0,0"), 2).contains("GPU 0 twice"));
        assert!(err(text("1"), 2).contains("leaves out GPU 0"));
        assert!(err(text("zero"), 2).contains("expected \"all\""));
        assert!(err(text("all"), 0).contains("names no GPU"));
    }

    #[test]
    fn devices_come_from_the_file_as_a_list_and_from_the_env_as_text() {
        use crate::config::WorkerConfig;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(&file, "[model]\ndevices = [0, 1]\n").unwrap();
        let from_file = WorkerConfig::load(Some(&file), Vec::new(), &[]).unwrap();
        assert_eq!(from_file.model.devices, DevicesChoice::Ordinals(vec![0, 1]));
        let env = vec![("T2V_MODEL__DEVICES".to_string(), "0,1".to_string())];
        let from_env = WorkerConfig::load(None, env, &[]).unwrap();
        assert_eq!(device_ordinals(&from_env.model.devices, 4).unwrap(), [0, 1]);
        let default = WorkerConfig::load(None, Vec::new(), &[]).unwrap();
        assert_eq!(device_ordinals(&default.model.devices, 2).unwrap(), [0, 1]);
    }

    #[test]
    fn collectives_come_from_the_file_or_the_env_and_default_to_auto() {
        use crate::config::WorkerConfig;
        use t2v_pipeline::parallel::CollectivesChoice as Pipeline;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(&file, "[model]\ncollectives = \"copy\"\n").unwrap();
        let from_file = WorkerConfig::load(Some(&file), Vec::new(), &[]).unwrap();
        assert_eq!(from_file.model.collectives, CollectivesChoice::Copy);
        let env = vec![("T2V_MODEL__COLLECTIVES".to_string(), "nccl".to_string())];
        let from_env = WorkerConfig::load(Some(&file), env, &[]).unwrap();
        assert_eq!(from_env.model.collectives, CollectivesChoice::Nccl);
        assert_eq!(Pipeline::from(from_env.model.collectives), Pipeline::Nccl);
        let default = WorkerConfig::load(None, Vec::new(), &[]).unwrap();
        assert_eq!(default.model.collectives, CollectivesChoice::Auto);
        std::fs::write(&file, "[model]\ncollectives = \"mpi\"\n").unwrap();
        assert!(WorkerConfig::load(Some(&file), Vec::new(), &[]).is_err());
    }

    #[test]
    fn the_preflight_counts_one_ranks_share_of_the_tokens() {
        use t2v_pipeline::parallel::ParallelLayout;
        use t2v_pipeline::{GenerationParams, LoadOptions};
        let root = std::env::var_os("T2V_FIXTURES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/fixtures")
            });
        let dir = root.join("wan_pipeline/two_experts");
        assert!(
            dir.exists(),
            "{} missing — run `make fixtures`",
            dir.display()
        );
        let options = LoadOptions::new(Device::Cpu, tch::Kind::Float);
        let mut generator = WanGenerator::load(&dir, "tiny", options).unwrap();
        let params = GenerationParams {
            width: 256,
            height: 256,
            num_frames: 17,
            ..GenerationParams::default()
        };
        let request = generator.estimate_request(&params, options.memory).unwrap();
        let configs = generator.pipe.configs().unwrap();
        let one = generator.estimate_per_gpu(&configs, &request).unwrap();
        let two = ParallelLayout { cfg: 1, ulysses: 2 };
        generator
            .pipe
            .set_parallel(Some(ParallelPlan::on_one_device(two, Device::Cpu)))
            .unwrap();
        let split = generator.estimate_per_gpu(&configs, &request).unwrap();
        assert!(split.denoise < one.denoise, "{split:?} vs {one:?}");
    }

    #[test]
    fn the_layout_follows_the_count() {
        let gpus = |n: usize| (0..n).map(Device::Cuda).collect::<Vec<_>>();
        assert!(plan_for(&gpus(1), 40).unwrap().is_none());
        let plan = plan_for(&gpus(8), 40).unwrap().unwrap();
        assert_eq!(plan.layout.to_string(), "2x4");
        assert_eq!(plan.devices, gpus(8));
        let err = plan_for(&gpus(6), 40).unwrap_err();
        assert!(
            err.contains("6 GPUs") && err.contains("40 attention heads"),
            "{err}"
        );
    }
}
