//! Shared by the build scripts of the crates that link libtorch (pipeline, worker): where
//! libtorch's `lib/` is, and keeping its CUDA backend linked.

use std::path::PathBuf;

/// libtorch's `lib/` as tch-sys reports it, `$LIBTORCH/lib`, or the torch of `$T2V_VENV`: the
/// first that holds `libtorch_cpu.so`.
pub fn lib_dir() -> Option<PathBuf> {
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
    candidates
        .into_iter()
        .flatten()
        .find(|dir| dir.join("libtorch_cpu.so").exists())
}

fn torch_lib_in_venv() -> Option<PathBuf> {
    let venv = PathBuf::from(std::env::var("T2V_VENV").ok()?);
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.flatten()
        .map(|e| e.path().join("site-packages/torch/lib"))
        .find(|p| p.exists())
}

/// No symbol of libtorch_cuda.so is referenced directly, so the linker's `--as-needed` drops it
/// and `tch::Cuda::is_available()` then reports false on a GPU host: link it unconditionally
/// when `lib` has it.
pub fn keep_torch_cuda_linked(lib: &std::path::Path) {
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
