//! Keep libtorch's CUDA backend linked into the worker binary and its tests (as pipeline/build.rs),
//! and record libtorch's directory as the binary's run path.
//!
//! - No symbol of libtorch_cuda.so is referenced directly, so the linker's `--as-needed` drops it
//!   and `tch::Cuda::is_available()` then reports false on a GPU host (see shared/GPU.md).
//! - The run path lets `t2v-worker` start without `LD_LIBRARY_PATH` (tests start it with a
//!   cleared environment); an image that moves libtorch still sets `LD_LIBRARY_PATH`.
use std::path::PathBuf;

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
