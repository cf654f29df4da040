//! Keep libtorch's CUDA backend linked into every binary, test and example of this crate (see
//! build_support/libtorch.rs).

#[path = "../build_support/libtorch.rs"]
mod libtorch;

fn main() {
    if let Some(lib) = libtorch::lib_dir() {
        libtorch::keep_torch_cuda_linked(&lib);
    }
}
