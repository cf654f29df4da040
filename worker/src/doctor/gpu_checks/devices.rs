//! The doctor's checks of `[model] devices` when a job spans several GPUs: every listed GPU
//! visible, a layout the model's heads allow, one GPU model for all (a job runs at the pace of
//! the slowest, and the memory preflight checks every GPU's estimated peak against GPU 0's
//! size), peer access between GPU 0 and the others (without it the ranks' exchanges go
//! through host memory), and which collectives move the ranks' tensors (`[model] collectives`:
//! NCCL, or the in-process copies).

use std::path::Path;

use nvml_wrapper::enum_wrappers::device::{P2pCapabilitiesIndex, P2pStatus};
use nvml_wrapper::Nvml;
use t2v_pipeline::parallel::collectives::{load_nccl, select, Collectives, Selection};
use t2v_pipeline::parallel::CollectivesChoice;
use t2v_pipeline::wan::TransformerConfig;
use tch::Device;

use super::super::{finding, warning, Finding};
use crate::config::{DeviceChoice, WorkerConfig};
use crate::generate::wan::devices::{plan_for, resolve_devices};

/// What NVML says about one listed GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuFacts {
    /// CUDA ordinal in this process.
    pub ordinal: usize,
    pub name: Result<String, String>,
    /// Peer access with GPU 0 (rank 0); `None` for GPU 0 itself.
    pub peer_with_first: Option<Result<bool, String>>,
}

/// The findings for `cfg`'s devices (nothing on the CPU).
pub fn findings(cfg: &WorkerConfig, torch_sees_cuda: bool) -> Vec<Finding> {
    let device = match cfg.model.device {
        DeviceChoice::Cuda => Device::Cuda(0),
        DeviceChoice::Auto if torch_sees_cuda => Device::Cuda(0),
        _ => return Vec::new(),
    };
    let visible = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    let devices = match resolve_devices(&cfg.model.devices, device, visible) {
        Ok(d) => d,
        Err(e) => return vec![finding("devices", false, e)],
    };
    if devices.len() < 2 {
        return vec![finding("devices", true, "one GPU per job")];
    }
    let mut out = Vec::new();
    let transformer = Path::new(&cfg.model.dir).join("transformer/config.json");
    // An unreadable model directory is the model check's failure already.
    if let Ok(t) = TransformerConfig::from_file(&transformer) {
        match plan_for(&devices, t.num_attention_heads) {
            Ok(Some(plan)) => out.push(finding(
                "devices",
                true,
                format!(
                    "{} GPUs per job, layout {} (CFG × Ulysses)",
                    devices.len(),
                    plan.layout
                ),
            )),
            Ok(None) => {}
            Err(e) => out.push(finding("devices", false, e)),
        }
    }
    out.push(collectives_finding(
        cfg.model.collectives.into(),
        &devices,
        load_nccl,
    ));
    let ordinals: Vec<usize> = devices
        .iter()
        .filter_map(|d| match d {
            Device::Cuda(i) => Some(*i),
            _ => None,
        })
        .collect();
    out.extend(gpu_findings(&gather(&ordinals)));
    out
}

/// Which collectives a job on `devices` uses with `choice`, NCCL loaded by `load`: an `auto`
/// whose NCCL cannot load warns (jobs run, on the slower copies); a requested one fails.
pub fn collectives_finding(
    choice: CollectivesChoice,
    devices: &[Device],
    load: impl FnOnce() -> t2v_pipeline::Result<Collectives>,
) -> Finding {
    match select(choice, devices) {
        Err(e) => finding("collectives", false, e.to_string()),
        Ok(Selection::Copy) => finding(
            "collectives",
            true,
            format!("in-process copies between the GPUs (collectives = {choice})"),
        ),
        Ok(Selection::Nccl { required }) => match (load(), required) {
            (Ok(nccl), _) => finding(
                "collectives",
                true,
                format!("{nccl} between the GPUs (collectives = {choice})"),
            ),
            (Err(e), true) => finding("collectives", false, e.to_string()),
            (Err(e), false) => warning(
                "collectives",
                format!("{e}; until then jobs exchange through the in-process copies (slower)"),
            ),
        },
    }
}

/// NVML's facts on the listed GPUs (CUDA ordinals mapped through `CUDA_VISIBLE_DEVICES`).
fn gather(ordinals: &[usize]) -> Vec<GpuFacts> {
    let unknown = |e: String| {
        ordinals
            .iter()
            .map(|&ordinal| GpuFacts {
                ordinal,
                name: Err(e.clone()),
                peer_with_first: (ordinal != ordinals[0]).then(|| Err(e.clone())),
            })
            .collect()
    };
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(e) => return unknown(e.to_string()),
    };
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let device = |ordinal: usize| {
        let entry = visible
            .as_deref()
            .and_then(|v| v.split(',').nth(ordinal))
            .map(str::trim);
        match entry {
            Some(id) if id.starts_with("GPU-") || id.starts_with("MIG-") => nvml.device_by_uuid(id),
            Some(id) => nvml.device_by_index(id.parse().unwrap_or(ordinal as u32)),
            None => nvml.device_by_index(ordinal as u32),
        }
        .map_err(|e| e.to_string())
    };
    let first = device(ordinals[0]);
    ordinals
        .iter()
        .map(|&ordinal| {
            let this = device(ordinal);
            let name = this
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|d| d.name().map_err(|e| e.to_string()));
            let peer_with_first = (ordinal != ordinals[0]).then(|| match (&first, &this) {
                (Ok(a), Ok(b)) => a
                    .p2p_status(b, P2pCapabilitiesIndex::Read)
                    .map(|s| s == P2pStatus::Ok)
                    .map_err(|e| e.to_string()),
                (Err(e), _) | (_, Err(e)) => Err(e.clone()),
            });
            GpuFacts {
                ordinal,
                name,
                peer_with_first,
            }
        })
        .collect()
}

/// One line on the GPU models, one per GPU without peer access to GPU 0.
pub fn gpu_findings(gpus: &[GpuFacts]) -> Vec<Finding> {
    let mut out = Vec::new();
    let names: Result<Vec<&String>, &String> = gpus.iter().map(|g| g.name.as_ref()).collect();
    match names {
        Err(e) => out.push(warning(
            "devices",
            format!("NVML cannot tell the GPUs' models ({e}): check by hand that all are the same — the memory preflight uses GPU 0's size"),
        )),
        Ok(names) if names.iter().all(|n| *n == names[0]) => out.push(finding(
            "devices",
            true,
            format!("{} × {}", names.len(), names[0]),
        )),
        Ok(names) => {
            let listed: Vec<String> = gpus
                .iter()
                .zip(&names)
                .map(|(g, n)| format!("GPU {} {n}", g.ordinal))
                .collect();
            out.push(finding(
                "devices",
                false,
                format!(
                    "the GPUs differ ({}): a job runs at the pace of the slowest and the memory preflight uses GPU 0's size — list GPUs of one model in model.devices",
                    listed.join(", ")
                ),
            ));
        }
    }
    for gpu in gpus {
        match &gpu.peer_with_first {
            Some(Ok(false)) => out.push(warning(
                "devices",
                format!("GPU {} has no peer access to GPU 0: the ranks' exchanges go through host memory, slower — use GPUs on one NVLink/PCIe switch", gpu.ordinal),
            )),
            Some(Err(e)) => out.push(warning(
                "devices",
                format!("NVML cannot tell whether GPU {} reaches GPU 0 directly ({e})", gpu.ordinal),
            )),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(ordinal: usize, name: &str, peer: Option<bool>) -> GpuFacts {
        GpuFacts {
            ordinal,
            name: Ok(name.into()),
            peer_with_first: peer.map(Ok),
        }
    }

    #[test]
    fn same_gpus_with_peer_access_are_one_ok_line() {
        let found = gpu_findings(&[gpu(0, "H100", None), gpu(1, "H100", Some(true))]);
        assert_eq!(found.len(), 1);
        assert!(found[0].ok && !found[0].warning && found[0].message == "2 × H100");
    }

    #[test]
    fn mixed_gpus_fail_and_missing_peer_access_warns() {
        let found = gpu_findings(&[gpu(0, "H100", None), gpu(1, "A100", Some(false))]);
        assert!(!found[0].ok && found[0].message.contains("GPU 0 H100, GPU 1 A100"));
        assert!(found[1].warning && found[1].message.contains("GPU 1 has no peer access"));
    }

    #[test]
    fn the_collectives_of_a_multi_gpu_job_are_reported() {
        let two = [Device::Cuda(0), Device::Cuda(1)];
        let missing = || -> t2v_pipeline::Result<Collectives> {
            Err(t2v_pipeline::PipelineError::invalid(
                "collectives",
                "NCCL cannot be loaded from /x/libnccl.so.2",
            ))
        };
        let auto = collectives_finding(CollectivesChoice::Auto, &two, missing);
        assert!(auto.ok && auto.warning, "{auto}");
        assert!(
            auto.message.contains("/x/libnccl.so.2") && auto.message.contains("in-process copies")
        );
        let nccl = collectives_finding(CollectivesChoice::Nccl, &two, missing);
        assert!(
            !nccl.ok && nccl.message.contains("/x/libnccl.so.2"),
            "{nccl}"
        );
        let copy = collectives_finding(CollectivesChoice::Copy, &two, missing);
        assert!(copy.ok && !copy.warning && copy.message.contains("in-process copies"));
        let twice = collectives_finding(CollectivesChoice::Nccl, &[Device::Cuda(0); 2], missing);
        assert!(
            !twice.ok && twice.message.contains("two ranks on cuda:0"),
            "{twice}"
        );
    }

    #[test]
    fn on_the_cpu_there_is_nothing_to_check() {
        let mut cfg = WorkerConfig::default();
        cfg.model.device = DeviceChoice::Cpu;
        assert!(findings(&cfg, false).is_empty());
    }
}
