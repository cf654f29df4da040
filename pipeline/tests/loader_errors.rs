//! Broken model folders give one-line errors that name what is wrong and where.
//!
//! Each test copies a transformer fixture of `pipeline/parity/transformer.py` into a temporary
//! folder, breaks one thing (a shard, a tensor, a shape, a config key), loads it with
//! `WanTransformer3DModel::load` and checks the error's variant and message.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, load_tensors};
use t2v_pipeline::wan::WanTransformer3DModel;
use t2v_pipeline::PipelineError;
use tch::{Device, Kind, Tensor};

/// Copies `transformer/<case>/model` into a fresh temporary folder.
fn copy_model(case: &str) -> tempfile::TempDir {
    let source = fixture("transformer").join(case).join("model");
    let target = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap().flatten() {
        std::fs::copy(entry.path(), target.path().join(entry.file_name())).unwrap();
    }
    target
}

/// Loads the folder and returns the error with its one-line message.
fn load_error(dir: &Path) -> (PipelineError, String) {
    let err = WanTransformer3DModel::load(dir, Kind::Float, Device::Cpu)
        .expect_err("loading a broken folder must fail");
    let line = err.to_string();
    assert!(!line.contains('\n'), "error spans several lines: {line}");
    eprintln!("{line}");
    (err, line)
}

/// Rewrites the safetensors file `path` through `edit` (which may drop or replace tensors).
fn rewrite(path: &Path, edit: impl Fn(&str, Tensor) -> Option<Tensor>) {
    let tensors: Vec<(String, Tensor)> = load_tensors(path)
        .into_iter()
        .filter_map(|(name, tensor)| edit(&name, tensor).map(|t| (name, t)))
        .collect();
    Tensor::write_safetensors(&tensors, path).unwrap();
}

fn single_file(dir: &Path) -> PathBuf {
    dir.join("diffusion_pytorch_model.safetensors")
}

#[test]
fn missing_shard_names_the_shard() {
    let dir = copy_model("sharded");
    let shard = dir
        .path()
        .join("diffusion_pytorch_model-00002-of-00004.safetensors");
    std::fs::remove_file(&shard).unwrap();
    let (err, line) = load_error(dir.path());
    assert!(
        matches!(&err, PipelineError::MissingFile { path, .. } if *path == shard),
        "{line}"
    );
    assert!(line.contains(&shard.display().to_string()), "{line}");
}

#[test]
fn missing_tensor_names_the_key() {
    let dir = copy_model("tiny");
    let key = "blocks.1.attn2.norm_k.weight";
    rewrite(&single_file(dir.path()), |name, t| {
        (name != key).then_some(t)
    });
    let (err, line) = load_error(dir.path());
    assert!(
        matches!(&err, PipelineError::MissingTensor { key: k, .. } if k == key),
        "{line}"
    );
    assert!(line.contains(key), "{line}");
}

#[test]
fn missing_tensor_in_a_shard_names_the_key() {
    let dir = copy_model("sharded");
    let key = "proj_out.weight";
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(".safetensors")
        {
            rewrite(&entry.path(), |name, t| (name != key).then_some(t));
        }
    }
    let (_err, line) = load_error(dir.path());
    assert!(line.contains(&format!("`{key}`")), "{line}");
}

#[test]
fn wrong_shape_names_key_and_file() {
    let dir = copy_model("tiny");
    let file = single_file(dir.path());
    let key = "blocks.0.ffn.net.2.weight";
    rewrite(&file, |name, t| {
        Some(if name == key {
            t.narrow(1, 0, 7).contiguous()
        } else {
            t
        })
    });
    let (err, line) = load_error(dir.path());
    match &err {
        PipelineError::ShapeMismatch {
            key: k,
            file: f,
            expected,
            found,
        } => {
            assert_eq!(k, key);
            assert_eq!(f, &file);
            assert_eq!(expected, &[32, 48]);
            assert_eq!(found, &[32, 7]);
        }
        other => panic!("expected ShapeMismatch, got {other}"),
    }
    assert!(
        line.contains(key) && line.contains(&file.display().to_string()),
        "{line}"
    );
}

/// Edits config.json as JSON text and returns its path.
fn edit_config(
    dir: &Path,
    edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    path
}

#[test]
fn unknown_config_field_names_field_and_file() {
    let dir = copy_model("tiny");
    let config = edit_config(dir.path(), |c| {
        c.insert("foo".into(), 1.into());
    });
    let (err, line) = load_error(dir.path());
    assert!(matches!(err, PipelineError::Config { .. }), "{line}");
    assert!(line.contains("unknown field `foo`"), "{line}");
    assert!(line.contains(&config.display().to_string()), "{line}");
}

#[test]
fn image_to_video_config_is_refused_by_name() {
    let dir = copy_model("tiny");
    let config = edit_config(dir.path(), |c| {
        c.insert("image_dim".into(), 1280.into());
    });
    let (err, line) = load_error(dir.path());
    assert!(matches!(err, PipelineError::Config { .. }), "{line}");
    assert!(line.contains("image_dim = 1280"), "{line}");
    assert!(line.contains(&config.display().to_string()), "{line}");
}

#[test]
fn missing_config_names_the_file() {
    let dir = copy_model("tiny");
    let config = dir.path().join("config.json");
    std::fs::remove_file(&config).unwrap();
    let (err, line) = load_error(dir.path());
    assert!(
        matches!(&err, PipelineError::MissingFile { path, .. } if *path == config),
        "{line}"
    );
}
