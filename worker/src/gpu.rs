//! The GPU as its driver sees it, through NVML (`nvml-wrapper` opens `libnvidia-ml.so.1` at run
//! time, so the binary still starts, and every query here answers `Err`, on a host without an
//! NVIDIA driver), and the CUDA facts of the libtorch this binary was built against.
//!
//! - [`Gpu::shared`]: the process's one NVML handle on the GPU the pipeline uses (CUDA device 0,
//!   i.e. the first entry of `CUDA_VISIBLE_DEVICES`), opened on first use.
//! - [`Gpu::memory`]: device memory `used` / `total` — the whole device, as `nvidia-smi` shows it,
//!   which is what runs out: libtorch's tensors, its caching allocator's reserve, the CUDA context
//!   and other processes.
//! - [`PeakSampler`]: the largest `used` over a stretch of time, read on its own thread.
//! - [`torch_cuda`]: the CUDA version libtorch was built for (baked in by build.rs from the torch
//!   install) and whether `libtorch_cuda.so` is mapped into this process.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nvml_wrapper::Nvml;

/// Bytes in a GiB.
pub const GIB: u64 = 1 << 30;

/// Device memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMemory {
    pub used: u64,
    pub total: u64,
}

/// A CUDA version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CudaVersion {
    pub major: u32,
    pub minor: u32,
}

impl CudaVersion {
    /// From NVML's / the CUDA driver API's integer form, `1000·major + 10·minor` (13000 = 13.0).
    pub fn from_driver_int(version: i32) -> Self {
        let version = version.max(0) as u32;
        Self {
            major: version / 1000,
            minor: version % 1000 / 10,
        }
    }
}

/// A string that is not a CUDA version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a CUDA version")]
pub struct CudaVersionError {
    /// The string as given.
    pub text: String,
}

impl FromStr for CudaVersion {
    type Err = CudaVersionError;

    /// `"13.0"`, `"12.8.1"` or a wheel tag `"cu130"` / `"cu128"`.
    fn from_str(s: &str) -> Result<Self, CudaVersionError> {
        let bad = || CudaVersionError {
            text: s.to_string(),
        };
        if let Some(digits) = s.strip_prefix("cu") {
            let n: u32 = digits.parse().map_err(|_| bad())?;
            return Ok(Self {
                major: n / 10,
                minor: n % 10,
            });
        }
        let mut parts = s.trim().split('.');
        let major = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        Ok(Self { major, minor })
    }
}

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What libtorch this binary was built against says about CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchCuda {
    /// A CUDA build of libtorch for this CUDA version.
    Cuda(CudaVersion),
    /// A CPU-only libtorch.
    CpuOnly,
    /// The build found no torch install to read (e.g. a LIBTORCH without version files).
    Unknown,
}

/// libtorch's CUDA version as build.rs read it (`T2V_TORCH_CUDA`: `13.0`, `cpu`, or unset).
pub fn torch_cuda() -> TorchCuda {
    match option_env!("T2V_TORCH_CUDA") {
        Some("cpu") => TorchCuda::CpuOnly,
        Some(v) => v.parse().map_or(TorchCuda::Unknown, TorchCuda::Cuda),
        None => TorchCuda::Unknown,
    }
}

/// Whether `libtorch_cuda.so` is mapped into this process (the linker keeps it only with
/// build.rs's `--no-as-needed`; without it libtorch sees no CUDA device).
pub fn libtorch_cuda_loaded() -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|maps| maps.contains("libtorch_cuda.so"))
}

/// Which NVML device is CUDA device 0 in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Index(u32),
    /// `GPU-…` or `MIG-…`, as `CUDA_VISIBLE_DEVICES` and `nvidia-smi -L` write them.
    Uuid(String),
}

impl Selector {
    /// CUDA device 0 from `CUDA_VISIBLE_DEVICES` (its first entry; unset or empty = index 0).
    /// An index there is NVML's order only with `CUDA_DEVICE_ORDER=PCI_BUS_ID` — the usual case
    /// on a Kubernetes node, where the device plugin exposes the pod's GPUs alone.
    pub fn from_visible_devices(value: Option<&str>) -> Self {
        let first = value
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .unwrap_or_default();
        if first.starts_with("GPU-") || first.starts_with("MIG-") {
            Selector::Uuid(first.to_string())
        } else {
            Selector::Index(first.parse().unwrap_or(0))
        }
    }
}

/// NVML on one GPU.
pub struct Gpu {
    nvml: Nvml,
    selector: Selector,
}

/// Why NVML gave no answer, with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    #[error("no NVIDIA driver here (NVML: {0}) — run on a GPU node with the NVIDIA driver and container toolkit (a pod needs an nvidia.com/gpu limit)")]
    NoDriver(String),
    #[error("NVML: {0}")]
    Nvml(String),
}

impl GpuError {
    /// NVML's own message, without the fix: for callers that say the cause and the fix in their
    /// own words.
    pub fn nvml_message(&self) -> &str {
        match self {
            Self::NoDriver(m) | Self::Nvml(m) => m,
        }
    }
}

impl Gpu {
    /// Opens NVML on CUDA device 0 of this process.
    pub fn open() -> Result<Self, GpuError> {
        let nvml = Nvml::init().map_err(|e| GpuError::NoDriver(e.to_string()))?;
        let selector =
            Selector::from_visible_devices(std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref());
        let gpu = Self { nvml, selector };
        gpu.device()?;
        Ok(gpu)
    }

    /// The process-wide handle (opened once; `None` where NVML or the GPU is missing).
    pub fn shared() -> Option<&'static Gpu> {
        static SHARED: OnceLock<Option<Gpu>> = OnceLock::new();
        SHARED
            .get_or_init(|| match Gpu::open() {
                Ok(gpu) => Some(gpu),
                Err(e) => {
                    tracing::debug!(error = %e, "no GPU memory readings");
                    None
                }
            })
            .as_ref()
    }

    fn device(&self) -> Result<nvml_wrapper::Device<'_>, GpuError> {
        let nvml = |e: nvml_wrapper::error::NvmlError| GpuError::Nvml(e.to_string());
        match &self.selector {
            Selector::Index(i) => self.nvml.device_by_index(*i).map_err(nvml),
            Selector::Uuid(uuid) => self.nvml.device_by_uuid(uuid.as_str()).map_err(nvml),
        }
    }

    /// Device memory in use and installed.
    pub fn memory(&self) -> Result<GpuMemory, GpuError> {
        let info = self
            .device()?
            .memory_info()
            .map_err(|e| GpuError::Nvml(e.to_string()))?;
        Ok(GpuMemory {
            used: info.used,
            total: info.total,
        })
    }

    /// The GPU's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub fn name(&self) -> Result<String, GpuError> {
        self.device()?
            .name()
            .map_err(|e| GpuError::Nvml(e.to_string()))
    }

    /// The kernel driver's version, e.g. `580.82.07`.
    pub fn driver_version(&self) -> Result<String, GpuError> {
        self.nvml
            .sys_driver_version()
            .map_err(|e| GpuError::Nvml(e.to_string()))
    }

    /// The newest CUDA version the driver supports.
    pub fn driver_cuda(&self) -> Result<CudaVersion, GpuError> {
        self.nvml
            .sys_cuda_driver_version()
            .map(CudaVersion::from_driver_int)
            .map_err(|e| GpuError::Nvml(e.to_string()))
    }
}

/// The largest `used` reading while it runs, sampled on its own thread (libtorch's caching
/// allocator keeps what it reserved, so a 100 ms cadence misses little).
pub struct PeakSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakSampler {
    pub fn start(gpu: &'static Gpu, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (stop_flag, peak_seen) = (stop.clone(), peak.clone());
        let thread = std::thread::Builder::new()
            .name("t2v-gpu-peak".into())
            .spawn(move || {
                while !stop_flag.load(Ordering::Relaxed) {
                    if let Ok(m) = gpu.memory() {
                        peak_seen.fetch_max(m.used, Ordering::Relaxed);
                    }
                    std::thread::sleep(every);
                }
            })
            .ok();
        Self { stop, peak, thread }
    }

    /// Stops sampling; the largest `used` seen, including a last reading now.
    pub fn finish(mut self, gpu: &Gpu) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let last = gpu.memory().map_or(0, |m| m.used);
        self.peak.load(Ordering::Relaxed).max(last)
    }
}

/// `bytes` for one-line messages: `12.34 GiB`, or `56.7 MiB` below a GiB.
pub fn human(bytes: u64) -> String {
    if bytes >= GIB {
        format!("{:.2} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_versions_parse_from_every_source() {
        let v13 = CudaVersion {
            major: 13,
            minor: 0,
        };
        assert_eq!("13.0".parse::<CudaVersion>(), Ok(v13));
        assert_eq!("cu130".parse::<CudaVersion>(), Ok(v13));
        assert_eq!(
            "12.8.1".parse::<CudaVersion>().unwrap(),
            CudaVersion {
                major: 12,
                minor: 8
            }
        );
        assert_eq!(CudaVersion::from_driver_int(13000), v13);
        assert_eq!(CudaVersion::from_driver_int(12040).to_string(), "12.4");
        assert_eq!(
            "13".parse::<CudaVersion>().unwrap_err().to_string(),
            "\"13\" is not a CUDA version"
        );
        assert!(CudaVersion::from_driver_int(12090) < v13);
    }

    #[test]
    fn cuda_device_0_follows_cuda_visible_devices() {
        assert_eq!(Selector::from_visible_devices(None), Selector::Index(0));
        assert_eq!(Selector::from_visible_devices(Some("")), Selector::Index(0));
        assert_eq!(
            Selector::from_visible_devices(Some("3,1")),
            Selector::Index(3)
        );
        assert_eq!(
            Selector::from_visible_devices(Some("GPU-8a3f,GPU-11")),
            Selector::Uuid("GPU-8a3f".into())
        );
        assert_eq!(
            Selector::from_visible_devices(Some("MIG-5c1e")),
            Selector::Uuid("MIG-5c1e".into())
        );
    }

    /// build.rs found the torch install it links and read its CUDA version (or CPU-only).
    #[test]
    fn build_rs_bakes_libtorchs_cuda_version() {
        match torch_cuda() {
            TorchCuda::Cuda(v) => assert!(v.major >= 11, "{v}"),
            TorchCuda::CpuOnly => {}
            TorchCuda::Unknown => panic!("build.rs did not set T2V_TORCH_CUDA"),
        }
    }

    #[test]
    fn sizes_read_in_the_right_unit() {
        assert_eq!(human(3 * GIB / 2), "1.50 GiB");
        assert_eq!(human(50 << 20), "50.0 MiB");
    }
}
