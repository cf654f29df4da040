//! Shared helpers for the parity tests: where the reference fixtures live and how to compare.
#![allow(dead_code)]

use std::path::PathBuf;
use tch::Tensor;

/// Root of the reference fixtures written by `pipeline/parity/*.py` (`make fixtures`).
/// `T2V_FIXTURES` overrides the default `<workspace>/build/fixtures`.
pub fn fixtures_root() -> PathBuf {
    std::env::var_os("T2V_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/fixtures"))
}

/// The fixture folder `name`. Panics (the test fails, never skips) when it is missing.
pub fn fixture(name: &str) -> PathBuf {
    let dir = fixtures_root().join(name);
    assert!(
        dir.is_dir(),
        "reference fixtures not found at {} — run `make fixtures` (writes them with diffusers)",
        dir.display()
    );
    dir
}

/// Loads every tensor of a safetensors file into a name → tensor map (CPU).
pub fn load_tensors(path: &std::path::Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// Asserts `|actual - expected| <= atol + rtol * |expected|` elementwise, printing the worst offender.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, rtol: f64, atol: f64) {
    assert_eq!(
        actual.size(),
        expected.size(),
        "{what}: shape {:?} != reference {:?}",
        actual.size(),
        expected.size()
    );
    let a = actual
        .to_kind(tch::Kind::Double)
        .to_device(tch::Device::Cpu);
    let e = expected
        .to_kind(tch::Kind::Double)
        .to_device(tch::Device::Cpu);
    let diff = (&a - &e).abs();
    let allowed = e.abs() * rtol + atol;
    let excess = (&diff - &allowed).max().double_value(&[]);
    let max_abs = diff.max().double_value(&[]);
    let ref_scale = e.abs().max().double_value(&[]);
    assert!(
        excess <= 0.0,
        "{what}: max |diff| {max_abs:.3e} exceeds atol {atol:.1e} + rtol {rtol:.1e}·|ref| (ref max |x| {ref_scale:.3e})"
    );
}
