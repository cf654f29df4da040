//! Keep libtorch's CUDA backend linked into the worker binary and its tests (as pipeline/build.rs),
//! and record libtorch's directory as the binary's run path.
//!
//! - No symbol of libtorch_cuda.so is referenced directly, so the linker's `--as-needed` drops it
//!   and `tch::Cuda::is_available()` then reports false on a GPU host (see shared/GPU.md).
//! - The run path lets `t2v-worker` start without `LD_LIBRARY_PATH` (tests start it with a
//!   cleared environment); an image that moves libtorch still sets `LD_LIBRARY_PATH`.
//! - `T2V_TORCH_CUDA` (read by src/gpu.rs): the CUDA version libtorch was built for, `cpu` for a
//!   CPU-only build, unset when no version file is found — so `doctor` can compare it with the
//!   driver's. libtorch offers no run-time query for it through tch.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=T2V_VENV");
    let candidates = [
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .ok()
            .map(PathBuf::from),
        std::env::var("LIBTORCH")
            .ok()
            .map(|p| PathBuf::from(p).join("lib")),
        torch_lib_in_venv(),
    ];
    let Some(lib) = candidates
        .iter()
        .flatten()
        .find(|dir| dir.join("libtorch_cpu.so").exists())
    else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if let Some(cuda) = torch_cuda_version(lib) {
        println!("cargo:rustc-env=T2V_TORCH_CUDA={cuda}");
    }
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

fn torch_lib_in_venv() -> Option<PathBuf> {
    let venv = PathBuf::from(std::env::var("T2V_VENV").ok()?);
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.flatten()
        .map(|e| e.path().join("site-packages/torch/lib"))
        .find(|p| p.exists())
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
