//! Compiles proto/t2v/v1/*.proto with protox (pure Rust, no protoc on the machine) into prost
//! types, and writes the file descriptor set (with comments) for reflection, the JSON mapping and
//! the compatibility check.
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "t2v/v1/request.proto",
    "t2v/v1/events.proto",
    "t2v/v1/control.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::Compiler::new(["."])?
        .include_source_info(true)
        .include_imports(true)
        .open_files(PROTOS)?
        .file_descriptor_set();
    std::fs::write(
        out_dir.join("t2v_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    prost_build::Config::new()
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
