//! Keep libtorch's CUDA backend linked into the worker binary and its tests (build_support/libtorch.rs,
//! shared with pipeline/build.rs), and record libtorch's directory as the binary's run path.
//!
//! - No symbol of libtorch_cuda.so is referenced directly, so the linker's `--as-needed` drops it
//!   and `tch::Cuda::is_available()` then reports false on a GPU host.
//! - The run path lets `t2v-worker` start without `LD_LIBRARY_PATH` (tests start it with a
//!   cleared environment); an image that moves libtorch still sets `LD_LIBRARY_PATH`.
//! - `T2V_TORCH_CUDA` (read by src/gpu.rs): the CUDA version libtorch was built for, `cpu` for a
//!   CPU-only build, unset when no version file is found — so `doctor` can compare it with the
//!   driver's. libtorch offers no run-time query for it through tch.
use std::path::Path;

#[path = "../build_support/libtorch.rs"]
mod libtorch;

fn main() {
    let Some(lib) = libtorch::lib_dir() else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if let Some(cuda) = torch_cuda_version(&lib) {
        println!("cargo:rustc-env=T2V_TORCH_CUDA={cuda}");
    }
    libtorch::keep_torch_cuda_linked(&lib);
}

/// libtorch's CUDA version next to its `lib/`: PyTorch's `torch/version.py` (`cuda = '13.0'` or
/// `cuda: Optional[str] = None`), else a libtorch archive's `build-version` (`2.11.0+cu130`).
fn torch_cuda_version(lib: &Path) -> Option<String> {
    let root = lib.parent()?;
    let version_py = root.join("version.py");
    println!("cargo:rerun-if-changed={}", version_py.display());
    if let Ok(text) = std::fs::read_to_string(&version_py) {
        let line = text.lines().find(|l| l.starts_with("cuda"))?;
        let value = line.split('=').nth(1)?.trim();
        return Some(if value == "None" {
            "cpu".into()
        } else {
            value.trim_matches(|c| c == '\'' || c == '"').to_string()
        });
    }
    let build_version = std::fs::read_to_string(root.join("build-version")).ok()?;
    match build_version.trim().split_once('+') {
        Some((_, tag)) if tag.starts_with("cu") => Some(tag.to_string()),
        Some((_, "cpu")) => Some("cpu".into()),
        _ => None,
    }
}
