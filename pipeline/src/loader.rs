//! Loading the diffusers checkpoint layout: a component folder (`transformer/`, `vae/`,
//! `text_encoder/`, …) holds `config.json` and either one `*.safetensors` file or shards listed
//! by a `*.safetensors.index.json`. Weights are copied shard by shard into variables that the
//! module tree already created (with the target dtype and device), so a model is never held
//! twice: at most one shard is in host memory besides the model itself.
//!
//! Benchmarks at full size fill the same variables with [`random_weights`] instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use tch::{nn, Tensor};

use crate::error::{PipelineError, Result};

/// Reads and parses a JSON config. Unknown fields are an error where the type says
/// `deny_unknown_fields`; the message names the file.
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PipelineError::MissingFile {
            what: what.to_string(),
            path: path.to_path_buf(),
        },
        _ => PipelineError::io(path, e),
    })?;
    serde_json::from_str(&text).map_err(|e| PipelineError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// The safetensors files of one component folder, in load order.
/// `index.json` wins over a lone file; the shards it names must all exist.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PipelineError::MissingFile {
            what: "model component folder".into(),
            path: dir.to_path_buf(),
        },
        _ => PipelineError::io(dir, e),
    })?;
    let mut singles = Vec::new();
    let mut index = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors.index.json") {
            index = Some(entry.path());
        } else if name.ends_with(".safetensors") {
            singles.push(entry.path());
        }
    }
    if let Some(index_path) = index {
        let index: ShardIndex = read_json(&index_path, "safetensors shard index")?;
        let shards: Vec<PathBuf> = index
            .weight_map
            .values()
            .collect::<HashSet<_>>()
            .into_iter()
            .map(|shard| dir.join(shard))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for shard in &shards {
            if !shard.is_file() {
                return Err(PipelineError::MissingFile {
                    what: format!("weight shard listed in {}", index_path.display()),
                    path: shard.clone(),
                });
            }
        }
        return Ok(shards);
    }
    singles.sort();
    match singles.len() {
        0 => Err(PipelineError::MissingFile {
            what: "weights (*.safetensors or *.safetensors.index.json)".into(),
            path: dir.join("diffusion_pytorch_model.safetensors"),
        }),
        _ => Ok(singles),
    }
}

/// Copies the weights in `dir` into the variables of `vs`, converting dtype and device on the way.
/// Every variable must be found with the shape the module created; checkpoint tensors the
/// module does not use (tied copies, encoder halves) are ignored.
pub fn load_weights(vs: &nn::VarStore, dir: &Path) -> Result<()> {
    let variables: HashMap<String, Tensor> = vs.variables();
    let mut loaded: HashSet<String> = HashSet::with_capacity(variables.len());
    for shard in weight_files(dir)? {
        let tensors = Tensor::read_safetensors(&shard)?;
        for (key, source) in tensors {
            let Some(target) = variables.get(&key) else {
                continue;
            };
            if target.size() != source.size() {
                return Err(PipelineError::ShapeMismatch {
                    key,
                    file: shard,
                    expected: target.size(),
                    found: source.size(),
                });
            }
            tch::no_grad(|| {
                let mut target = target.shallow_clone();
                target.f_copy_(&source)
            })?;
            loaded.insert(key);
        }
    }
    let mut missing: Vec<&String> = variables.keys().filter(|k| !loaded.contains(*k)).collect();
    missing.sort();
    if let Some(first) = missing.first() {
        let key = if missing.len() > 1 {
            format!("{first}` (and {} more", missing.len() - 1) + ")`"
        } else {
            (*first).clone()
        };
        return Err(PipelineError::MissingTensor {
            key,
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Names of the tensors stored in `dir`'s safetensors files, read from their headers only.
pub fn tensor_names(dir: &Path) -> Result<HashSet<String>> {
    use std::io::Read;
    let mut keys = HashSet::new();
    for file in weight_files(dir)? {
        let mut reader = std::fs::File::open(&file).map_err(|e| PipelineError::io(&file, e))?;
        let mut len = [0u8; 8];
        reader
            .read_exact(&mut len)
            .map_err(|e| PipelineError::io(&file, e))?;
        let mut header = vec![0u8; u64::from_le_bytes(len).min(100 << 20) as usize];
        reader
            .read_exact(&mut header)
            .map_err(|e| PipelineError::io(&file, e))?;
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| PipelineError::Config {
                path: file.clone(),
                message: format!("unreadable safetensors header: {e}"),
            })?;
        keys.extend(
            header
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| k != "__metadata__"),
        );
    }
    Ok(keys)
}

/// Random weights in place, for benchmarks without checkpoints on disk — the one rule every
/// benchmark (and [`crate::WanT2V::random`]) draws by, and that `pipeline/bench/*.py` mirror:
/// in name order (so the same `tch::manual_seed` gives the same weights), N(0, 0.02), except
/// norm gains (`gamma`, 1-D `*norm*`) set to 1.
pub fn random_weights(vs: &nn::VarStore) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        let mut variables: Vec<_> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut tensor) in variables {
            let gain = name.ends_with("gamma") || (tensor.dim() == 1 && name.contains("norm"));
            if gain {
                let _ = tensor.f_fill_(1.0)?;
            } else {
                let _ = tensor.f_normal_(0.0, 0.02)?;
            }
        }
        Ok(())
    })
}
