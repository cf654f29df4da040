//! `[[model.loras]]` checks: every file exists (at start and in `doctor`), and in `doctor` each
//! one fits its expert of the base model, with the same one-line refusal the load would give.
//!
//! The fit is checked against the base's safetensors headers, not its weights: the expert's
//! tensors stand in as zero-storage tensors of their stored shapes, which is all the LoRA plan
//! ([`t2v_pipeline::lora::check_loras`]) looks at. So an A14B expert costs a header read, not
//! 28 GB of memory.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use t2v_pipeline::loader::weight_files;
use t2v_pipeline::lora::{check_loras, LoraSpec};
use tch::{nn, Device, Kind, Tensor};

use super::{finding, Finding};
use crate::config::{LoraConfig, LoraExpert, WorkerConfig};

/// One line per missing LoRA file; nothing when every configured file is there.
pub fn lora_files(cfg: &WorkerConfig) -> Vec<Finding> {
    cfg.model
        .loras
        .iter()
        .filter(|lora| !Path::new(&lora.file).is_file())
        .map(missing)
        .collect()
}

/// Every LoRA: missing, refused by its expert (the load's message), or fitting.
pub fn loras(cfg: &WorkerConfig) -> Vec<Finding> {
    let dir = Path::new(&cfg.model.dir);
    let mut experts: HashMap<&'static str, Result<nn::VarStore, String>> = HashMap::new();
    let mut findings = Vec::new();
    for lora in &cfg.model.loras {
        if !Path::new(&lora.file).is_file() {
            findings.push(missing(lora));
            continue;
        }
        let components: &[&'static str] = match lora.expert {
            LoraExpert::Transformer => &["transformer"],
            LoraExpert::Transformer2 => &["transformer_2"],
            LoraExpert::Both => &["transformer", "transformer_2"],
        };
        for &component in components {
            let shapes = experts
                .entry(component)
                .or_insert_with(|| shape_store(&dir.join(component)));
            findings.push(fit(lora, component, shapes));
        }
    }
    findings
}

fn missing(lora: &LoraConfig) -> Finding {
    finding(
        "lora",
        false,
        format!(
            "LoRA file {} does not exist — fix its path in [[model.loras]] (env T2V_MODEL__LORAS) or remove the entry",
            lora.file
        ),
    )
}

/// Whether `lora` fits `component`, whose stored shapes are `shapes`.
fn fit(lora: &LoraConfig, component: &str, shapes: &Result<nn::VarStore, String>) -> Finding {
    let vs = match shapes {
        Ok(vs) => vs,
        Err(why) => {
            return finding(
                "lora",
                false,
                format!(
                    "cannot check {} against the base's {component}: {why}",
                    lora.file
                ),
            )
        }
    };
    let spec = LoraSpec::new(&lora.file, lora.strength);
    match check_loras(vs, &[spec]) {
        Ok(updates) => finding(
            "lora",
            true,
            format!(
                "{} fits {component} ({updates} updates at strength {})",
                lora.file, lora.strength
            ),
        ),
        Err(refused) => finding("lora", false, refused.to_string()),
    }
}

/// The tensors of the component folder `dir`, as zero-storage tensors of their stored shapes
/// (read from the safetensors headers), named as the loaded model's variables.
fn shape_store(dir: &Path) -> Result<nn::VarStore, String> {
    if !dir.is_dir() {
        return Err(format!(
            "{} does not exist — a LoRA for transformer_2 needs a two-expert model (Wan2.2 A14B); give it for transformer instead, or fix model.dir",
            dir.display()
        ));
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let files = weight_files(dir).map_err(|e| e.to_string())?;
    let mut variables = vs.variables_.lock().map_err(|e| e.to_string())?;
    for file in files {
        for (name, shape) in header_shapes(&file)? {
            let stand_in = Tensor::zeros([1], (Kind::Float, Device::Cpu))
                .reshape(vec![1; shape.len()])
                .expand(&shape, false);
            variables.named_variables.insert(name, stand_in);
        }
    }
    drop(variables);
    Ok(vs)
}

/// Tensor names and shapes of a safetensors file, from its header alone.
fn header_shapes(file: &Path) -> Result<Vec<(String, Vec<i64>)>, String> {
    let unreadable = |e: &dyn std::fmt::Display| format!("cannot read {}: {e}", file.display());
    let mut reader = std::fs::File::open(file).map_err(|e| unreadable(&e))?;
    let mut len = [0u8; 8];
    reader.read_exact(&mut len).map_err(|e| unreadable(&e))?;
    let mut header = vec![0u8; u64::from_le_bytes(len).min(100 << 20) as usize];
    reader.read_exact(&mut header).map_err(|e| unreadable(&e))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| unreadable(&e))?;
    Ok(header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .filter_map(|(name, entry)| {
            let shape = entry["shape"]
                .as_array()?
                .iter()
                .map(|d| d.as_i64())
                .collect::<Option<Vec<i64>>>()?;
            Some((name, shape))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend;

    fn tiny_model() -> std::path::PathBuf {
        let root = std::env::var_os("T2V_FIXTURES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/fixtures"));
        root.join("wan_pipeline/two_experts")
    }

    /// A PEFT LoRA on the first self-attention query, `dim` wide (the tiny model's is 32).
    fn lora_file(dir: &Path, name: &str, dim: i64) -> String {
        let path = dir.join(name);
        Tensor::write_safetensors(
            &[
                (
                    "transformer.blocks.0.attn1.to_q.lora_A.weight",
                    Tensor::ones([2, dim], (Kind::Float, Device::Cpu)),
                ),
                (
                    "transformer.blocks.0.attn1.to_q.lora_B.weight",
                    Tensor::ones([dim, 2], (Kind::Float, Device::Cpu)),
                ),
            ],
            &path,
        )
        .unwrap();
        path.display().to_string()
    }

    fn config(loras: Vec<LoraConfig>) -> WorkerConfig {
        let mut cfg = WorkerConfig::default();
        cfg.model.backend = Backend::Wan;
        cfg.model.dir = tiny_model().display().to_string();
        cfg.model.loras = loras;
        cfg
    }

    #[test]
    fn each_lora_is_found_and_checked_against_its_expert_in_one_line() {
        let tmp = tempfile::tempdir().unwrap();
        let fits = lora_file(tmp.path(), "fits.safetensors", 32);
        let other_base = lora_file(tmp.path(), "other.safetensors", 40);
        let lora = |file: &str, expert| LoraConfig {
            file: file.into(),
            strength: 1.0,
            expert,
        };
        let cfg = config(vec![
            lora(&fits, LoraExpert::Both),
            lora(&other_base, LoraExpert::Transformer2),
            lora("/nonexistent/low.safetensors", LoraExpert::Transformer),
        ]);
        let found = loras(&cfg);
        let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(found.len(), 4, "{lines:#?}");
        assert!(
            found[0].ok && found[0].message.contains("fits transformer "),
            "{lines:#?}"
        );
        assert!(
            found[1].ok && found[1].message.contains("fits transformer_2"),
            "{lines:#?}"
        );
        let wrong = &found[2];
        assert!(
            !wrong.ok
                && wrong.message.contains(&other_base)
                && wrong.message.contains("another base model"),
            "{wrong}"
        );
        let gone = &found[3];
        assert!(
            !gone.ok
                && gone.message.contains("/nonexistent/low.safetensors")
                && gone.message.contains("[[model.loras]]"),
            "{gone}"
        );
        assert!(lines.iter().all(|l| !l.contains('\n')), "{lines:#?}");

        let at_start = lora_files(&cfg);
        assert_eq!(at_start.len(), 1, "only the missing file: {at_start:?}");
        assert_eq!(at_start[0], found[3]);
    }

    #[test]
    fn a_transformer_2_lora_on_a_single_expert_model_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = lora_file(tmp.path(), "low.safetensors", 32);
        let mut cfg = config(vec![LoraConfig {
            file,
            strength: 1.0,
            expert: LoraExpert::Transformer2,
        }]);
        cfg.model.dir = tiny_model()
            .with_file_name("single_expert")
            .display()
            .to_string();
        let found = loras(&cfg);
        assert_eq!(found.len(), 1);
        assert!(
            !found[0].ok && found[0].message.contains("give it for transformer instead"),
            "{}",
            found[0]
        );
    }
}
