//! LoRA adapters for the Wan transformer, fused into the weights at load time
//! (`W += strength · scale · (B @ A)` in f32, cast back to the weight dtype), so a step costs
//! nothing extra.
//!
//! Formats read (one safetensors file each; formats may be mixed within a file):
//! - diffusers / PEFT: `transformer.blocks.N.attn1.to_q.lora_A.weight` / `lora_B.weight`, also
//!   without the `transformer.` prefix, with `diffusion_model.` or `base_model.model.`, and
//!   `lora_B.bias` (PEFT's `lora_bias`, added to the bias);
//! - original Wan / ComfyUI / kohya: `diffusion_model.blocks.N.self_attn.q.lora_down.weight` /
//!   `lora_up.weight` + `.alpha`, with the original module names mapped to diffusers' (the table
//!   in WAN.md: `self_attn` → `attn1`, `cross_attn` → `attn2`, `q/k/v/o` → `to_q/to_k/to_v/to_out.0`,
//!   `ffn.0` → `ffn.net.0.proj`, `ffn.2` → `ffn.net.2`, `norm3` → `norm2`, `modulation` →
//!   `scale_shift_table`, `head.head` → `proj_out`, `time_embedding.0/2`, `time_projection.1`,
//!   `text_embedding.0/2` → `condition_embedder.…`);
//! - full deltas `….diff` (added to the weight) and `….diff_b` (added to the bias).
//!
//! Scale of one low-rank pair: `strength × alpha / rank` when the file has the module's `.alpha`;
//! else, in a PEFT file with diffusers' adapter metadata (`lora_adapter_metadata`), `strength ×
//! alpha / rank` with alpha from its `alpha_pattern` / `lora_alpha` (`/ √rank` with rsLoRA);
//! else `strength` (PEFT without metadata, as diffusers reads it: alpha = rank). Deltas
//! (`diff`, `diff_b`, `lora_B.bias`) are scaled by `strength` alone.
//!
//! Every key must land on a transformer weight of the right shape: an unknown key, a pair with a
//! half missing, or a LoRA for another base (shape mismatch) is an error naming the key, and all
//! files are checked before any weight changes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use tch::{nn, Kind, Tensor};

use crate::error::PipelineError;

/// One LoRA file and how strongly to apply it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    /// Multiplier of the adapter (1.0 = as trained; 0.0 = no change).
    pub strength: f64,
}

impl LoraSpec {
    pub fn new(path: impl Into<PathBuf>, strength: f64) -> Self {
        Self {
            path: path.into(),
            strength,
        }
    }
}

/// The LoRAs of a pipeline, per expert: `transformer` (the high-noise expert, or the only one)
/// and `transformer_2` (the low-noise expert of two-expert models).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExpertLoras {
    pub transformer: Vec<LoraSpec>,
    pub transformer_2: Vec<LoraSpec>,
}

impl ExpertLoras {
    pub fn is_empty(&self) -> bool {
        self.transformer.is_empty() && self.transformer_2.is_empty()
    }
}

/// Why a LoRA cannot be applied. Every message names the file, the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("cannot read LoRA file {path}: {source} — is it a safetensors file?")]
    Read {
        path: PathBuf,
        #[source]
        source: tch::TchError,
    },

    #[error("LoRA {path} holds no tensors — the file is empty or not a LoRA")]
    Empty { path: PathBuf },

    #[error("LoRA key `{key}` in {path} matches no Wan transformer weight{hint} — use a LoRA made for this Wan model's transformer, or remove the key")]
    UnknownKey {
        path: PathBuf,
        key: String,
        /// ` (looked for `…`)` when the key parsed but its target does not exist.
        hint: String,
    },

    #[error("LoRA key `{key}` in {path} has no matching `{missing}` — the file is truncated or not a LoRA; re-download or re-export it")]
    Unpaired {
        path: PathBuf,
        key: String,
        missing: String,
    },

    #[error("LoRA key `{key}` in {path} gives a delta of shape {found:?} for `{target}` of shape {expected:?} — the LoRA was made for another base model (another Wan size or version); use one trained on this model")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        target: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },

    #[error("LoRA key `{key}` in {path}: {message} — the file is malformed; re-export it")]
    Malformed {
        path: PathBuf,
        key: String,
        message: String,
    },

    #[error("LoRA {path}: strength {strength} is not a finite number — pass e.g. 1.0")]
    BadStrength { path: PathBuf, strength: f64 },

    #[error("LoRA for `transformer_2` given, but this model has a single transformer — give it for `transformer` instead")]
    NoSecondExpert,

    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl From<LoraError> for PipelineError {
    fn from(e: LoraError) -> Self {
        match e {
            LoraError::Torch(e) => PipelineError::Torch(e),
            other => PipelineError::invalid("lora", other.to_string()),
        }
    }
}

/// Which part of a LoRA pair or delta a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    /// `lora_A` / `lora_down`: `[rank, in, …]`.
    Down,
    /// `lora_B` / `lora_up`: `[out, rank, 1, …]`.
    Up,
    Alpha,
    /// Full weight delta.
    Diff,
    /// Full bias delta (`diff_b`, `lora_B.bias`).
    DiffBias,
}

const SUFFIXES: [(&str, Part); 9] = [
    (".lora_A.weight", Part::Down),
    (".lora_down.weight", Part::Down),
    (".lora_B.weight", Part::Up),
    (".lora_up.weight", Part::Up),
    (".lora_B.bias", Part::DiffBias),
    (".alpha", Part::Alpha),
    (".diff_b", Part::DiffBias),
    (".diff", Part::Diff),
    (".lora_up.bias", Part::DiffBias),
];

const PREFIXES: [&str; 5] = [
    "base_model.model.",
    "model.diffusion_model.",
    "diffusion_model.",
    "transformer.",
    "model.",
];

/// Splits a LoRA key into (diffusers module path, part). `None` when the suffix is not a LoRA's.
fn parse_key(key: &str) -> Option<(String, Part)> {
    let mut rest = key;
    for prefix in PREFIXES {
        if let Some(stripped) = rest.strip_prefix(prefix) {
            rest = stripped;
            break;
        }
    }
    let (module, part) = SUFFIXES
        .iter()
        .find_map(|(suffix, part)| rest.strip_suffix(suffix).map(|m| (m, *part)))?;
    Some((to_diffusers(module), part))
}

/// Original Wan module names → diffusers names (diffusers names pass through).
fn to_diffusers(module: &str) -> String {
    let parts: Vec<&str> = module.split('.').collect();
    let mapped: Option<String> = match parts.as_slice() {
        ["blocks", n, "self_attn" | "cross_attn", rest @ ..] => {
            let attn = if parts[2] == "self_attn" {
                "attn1"
            } else {
                "attn2"
            };
            let sub = match rest {
                ["q"] => "to_q".to_string(),
                ["k"] => "to_k".to_string(),
                ["v"] => "to_v".to_string(),
                ["o"] => "to_out.0".to_string(),
                other => other.join("."),
            };
            Some(format!("blocks.{n}.{attn}.{sub}"))
        }
        ["blocks", n, "ffn", "0"] => Some(format!("blocks.{n}.ffn.net.0.proj")),
        ["blocks", n, "ffn", "2"] => Some(format!("blocks.{n}.ffn.net.2")),
        ["blocks", n, "norm3"] => Some(format!("blocks.{n}.norm2")),
        ["blocks", n, "modulation"] => Some(format!("blocks.{n}.scale_shift_table")),
        ["head", "head"] => Some("proj_out".into()),
        ["head", "modulation"] => Some("scale_shift_table".into()),
        ["time_embedding", "0"] => Some("condition_embedder.time_embedder.linear_1".into()),
        ["time_embedding", "2"] => Some("condition_embedder.time_embedder.linear_2".into()),
        ["time_projection", "1"] => Some("condition_embedder.time_proj".into()),
        ["text_embedding", "0"] => Some("condition_embedder.text_embedder.linear_1".into()),
        ["text_embedding", "2"] => Some("condition_embedder.text_embedder.linear_2".into()),
        _ => None,
    };
    mapped.unwrap_or_else(|| module.to_string())
}

/// The tensors of one module in one file, with the keys they came from.
#[derive(Default)]
struct ModuleTensors {
    parts: BTreeMap<Part, (String, Tensor)>,
}

/// One file's updates, checked against the model: target variable → f32 delta builder.
struct Update {
    target: String,
    kind: UpdateKind,
}

enum UpdateKind {
    LowRank {
        down: Tensor,
        up: Tensor,
        scale: f64,
    },
    Full {
        delta: Tensor,
        scale: f64,
    },
}

impl Update {
    /// The f32 delta, on `device`, in the target's shape.
    fn delta(&self, shape: &[i64], device: tch::Device) -> Result<Tensor, tch::TchError> {
        match &self.kind {
            UpdateKind::LowRank { down, up, scale } => {
                let down = down.f_to_device(device)?.f_to_kind(Kind::Float)?;
                let up = up.f_to_device(device)?.f_to_kind(Kind::Float)?;
                let rank = down.size()[0];
                up.f_reshape([up.size()[0], rank])?
                    .f_matmul(&down.f_reshape([rank, -1])?)?
                    .f_mul_scalar(*scale)?
                    .f_reshape(shape)
            }
            UpdateKind::Full { delta, scale } => delta
                .f_to_device(device)?
                .f_to_kind(Kind::Float)?
                .f_mul_scalar(*scale)?
                .f_reshape(shape),
        }
    }
}

/// PEFT adapter metadata as diffusers writes it (`__metadata__.lora_adapter_metadata` of the
/// safetensors header: `LoraConfig` fields, prefixed `transformer.`). It sets the scale of pairs
/// that carry no `.alpha` tensor: `alpha / rank` (`alpha / √rank` with rsLoRA), alpha from
/// `alpha_pattern` where a pattern names the module, else `lora_alpha`.
#[derive(Debug, Default)]
struct AdapterMetadata {
    lora_alpha: Option<f64>,
    alpha_pattern: Vec<(String, f64)>,
    use_rslora: bool,
}

impl AdapterMetadata {
    fn read(path: &Path) -> Result<Option<Self>, LoraError> {
        use std::io::Read;
        let malformed = |message: String| LoraError::Malformed {
            path: path.to_path_buf(),
            key: "__metadata__".into(),
            message,
        };
        let Ok(mut file) = std::fs::File::open(path) else {
            return Ok(None); // the tensor read reports it
        };
        let mut len = [0u8; 8];
        if file.read_exact(&mut len).is_err() {
            return Ok(None);
        }
        let mut header = vec![0u8; u64::from_le_bytes(len).min(100 << 20) as usize];
        if file.read_exact(&mut header).is_err() {
            return Ok(None);
        }
        let Ok(header) = serde_json::from_slice::<serde_json::Value>(&header) else {
            return Ok(None);
        };
        let Some(text) = header
            .get("__metadata__")
            .and_then(|m| m.get("lora_adapter_metadata"))
            .and_then(|m| m.as_str())
        else {
            return Ok(None);
        };
        let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| malformed(format!("lora_adapter_metadata is not a JSON object: {e}")))?;
        let field = |name: &str| {
            fields
                .get(&format!("transformer.{name}"))
                .or_else(|| fields.get(name))
        };
        if field("use_dora").and_then(|v| v.as_bool()) == Some(true) {
            return Err(malformed(
                "DoRA adapters (use_dora) are not supported; use a plain LoRA".into(),
            ));
        }
        let mut meta = Self {
            lora_alpha: field("lora_alpha").and_then(|v| v.as_f64()),
            use_rslora: field("use_rslora").and_then(|v| v.as_bool()) == Some(true),
            ..Self::default()
        };
        if let Some(patterns) = field("alpha_pattern").and_then(|v| v.as_object()) {
            for (pattern, alpha) in patterns {
                let alpha = alpha.as_f64().ok_or_else(|| {
                    malformed(format!("alpha_pattern `{pattern}` is not a number"))
                })?;
                meta.alpha_pattern.push((pattern.clone(), alpha));
            }
        }
        Ok(Some(meta))
    }

    /// The scale of `module`'s pair of rank `rank` (PEFT matches a pattern as the whole module
    /// name or a dotted suffix of it).
    fn scale(&self, module: &str, rank: f64) -> f64 {
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(p, _)| module == p || module.ends_with(&format!(".{p}")))
            .map(|(_, a)| *a)
            .or(self.lora_alpha)
            .unwrap_or(rank);
        if self.use_rslora {
            alpha / rank.sqrt()
        } else {
            alpha / rank
        }
    }
}

/// Reads `spec` and checks every key against `variables` (the transformer's VarStore): the
/// updates to make, nothing changed yet.
fn plan(spec: &LoraSpec, variables: &HashMap<String, Tensor>) -> Result<Vec<Update>, LoraError> {
    if !spec.strength.is_finite() {
        return Err(LoraError::BadStrength {
            path: spec.path.clone(),
            strength: spec.strength,
        });
    }
    let planner = Planner {
        spec,
        variables,
        metadata: AdapterMetadata::read(&spec.path)?,
    };
    let mut updates = Vec::new();
    for (module, parts) in read_modules(spec)? {
        updates.extend(planner.module(&module, parts)?);
    }
    Ok(updates)
}

/// The file's tensors grouped by the model module they change (diffusers names).
fn read_modules(spec: &LoraSpec) -> Result<BTreeMap<String, ModuleTensors>, LoraError> {
    let path = &spec.path;
    let mut tensors = Tensor::read_safetensors(path).map_err(|source| LoraError::Read {
        path: path.clone(),
        source,
    })?;
    if tensors.is_empty() {
        return Err(LoraError::Empty { path: path.clone() });
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut modules: BTreeMap<String, ModuleTensors> = BTreeMap::new();
    for (key, tensor) in tensors {
        let Some((module, part)) = parse_key(&key) else {
            return Err(LoraError::UnknownKey {
                path: path.clone(),
                key,
                hint: String::new(),
            });
        };
        modules
            .entry(module)
            .or_default()
            .parts
            .insert(part, (key, tensor));
    }
    Ok(modules)
}

/// One file's plan against one model.
struct Planner<'a> {
    spec: &'a LoraSpec,
    variables: &'a HashMap<String, Tensor>,
    metadata: Option<AdapterMetadata>,
}

impl Planner<'_> {
    fn unknown(&self, key: &str, target: &str) -> LoraError {
        LoraError::UnknownKey {
            path: self.spec.path.clone(),
            key: key.to_string(),
            hint: format!(" (looked for `{target}`)"),
        }
    }

    /// The updates of one module: its low-rank pair (with alpha) and its full deltas.
    fn module(&self, module: &str, mut m: ModuleTensors) -> Result<Vec<Update>, LoraError> {
        // the module must exist before its parts are checked
        let exists = [
            format!("{module}.weight"),
            module.to_string(),
            format!("{module}.bias"),
        ]
        .iter()
        .any(|name| self.variables.contains_key(name));
        if !exists {
            let key = m
                .parts
                .values()
                .next()
                .map(|(k, _)| k.clone())
                .unwrap_or_default();
            return Err(self.unknown(&key, &format!("{module}.weight")));
        }
        // the weight: `module.weight`, or `module` itself (scale_shift_table)
        let weight_name = if self.variables.contains_key(&format!("{module}.weight")) {
            format!("{module}.weight")
        } else {
            module.to_string()
        };
        let alpha = m.parts.remove(&Part::Alpha);
        let down = m.parts.remove(&Part::Down);
        let up = m.parts.remove(&Part::Up);
        let mut updates = Vec::new();
        match (down, up) {
            (Some(down), Some(up)) => {
                updates.push(self.low_rank(module, &weight_name, down, up, alpha.as_ref())?)
            }
            (Some((key, _)), None) | (None, Some((key, _))) => return Err(self.unpaired(key)),
            (None, None) => {
                if let Some((alpha_key, _)) = &alpha {
                    return Err(LoraError::Unpaired {
                        path: self.spec.path.clone(),
                        key: alpha_key.clone(),
                        missing: alpha_key.replace(".alpha", ".lora_down.weight"),
                    });
                }
            }
        }
        for (part, target) in [
            (Part::Diff, weight_name),
            (Part::DiffBias, format!("{module}.bias")),
        ] {
            if let Some((key, delta)) = m.parts.remove(&part) {
                updates.push(self.full_delta(key, delta, target)?);
            }
        }
        Ok(updates)
    }

    /// `B @ A` scaled, checked against the weight's shape.
    fn low_rank(
        &self,
        module: &str,
        weight_name: &str,
        (down_key, down): (String, Tensor),
        (up_key, up): (String, Tensor),
        alpha: Option<&(String, Tensor)>,
    ) -> Result<Update, LoraError> {
        let path = &self.spec.path;
        let target = self
            .variables
            .get(weight_name)
            .ok_or_else(|| self.unknown(&down_key, weight_name))?;
        let (ds, us) = (down.size(), up.size());
        if ds.len() < 2 || us.len() < 2 || us[1] != ds[0] || us[2..].iter().any(|&d| d != 1) {
            return Err(LoraError::Malformed {
                path: path.clone(),
                key: up_key,
                message: format!(
                    "lora_up {us:?} does not pair with lora_down {ds:?} (expected [out, rank] and [rank, in])"
                ),
            });
        }
        let mut found = vec![us[0]];
        found.extend(&ds[1..]);
        let expected = target.size();
        if found != expected {
            return Err(LoraError::ShapeMismatch {
                path: path.clone(),
                key: down_key,
                target: weight_name.to_string(),
                expected,
                found,
            });
        }
        let scale = self.low_rank_scale(module, ds[0] as f64, alpha)?;
        Ok(Update {
            target: weight_name.to_string(),
            kind: UpdateKind::LowRank { down, up, scale },
        })
    }

    /// strength × alpha / rank with the file's alpha (kohya) or adapter metadata (PEFT);
    /// strength alone without either.
    fn low_rank_scale(
        &self,
        module: &str,
        rank: f64,
        alpha: Option<&(String, Tensor)>,
    ) -> Result<f64, LoraError> {
        let strength = self.spec.strength;
        let Some((alpha_key, alpha)) = alpha else {
            return Ok(match &self.metadata {
                Some(meta) => strength * meta.scale(module, rank),
                None => strength,
            });
        };
        if alpha.numel() != 1 {
            return Err(LoraError::Malformed {
                path: self.spec.path.clone(),
                key: alpha_key.clone(),
                message: format!("alpha has shape {:?}, expected a scalar", alpha.size()),
            });
        }
        let a = alpha.f_to_kind(Kind::Double)?.f_double_value(&[])?;
        Ok(strength * a / rank)
    }

    /// Half a pair: names the half that is missing.
    fn unpaired(&self, key: String) -> LoraError {
        let missing = if key.contains("lora_A") {
            key.replace("lora_A", "lora_B")
        } else if key.contains("lora_B") {
            key.replace("lora_B", "lora_A")
        } else if key.contains("lora_down") {
            key.replace("lora_down", "lora_up")
        } else {
            key.replace("lora_up", "lora_down")
        };
        LoraError::Unpaired {
            path: self.spec.path.clone(),
            key,
            missing,
        }
    }

    /// A full-weight (`diff`) or bias (`diff_b`) delta, checked against its target's shape.
    fn full_delta(
        &self,
        key: String,
        delta: Tensor,
        target_name: String,
    ) -> Result<Update, LoraError> {
        let target = self
            .variables
            .get(&target_name)
            .ok_or_else(|| self.unknown(&key, &target_name))?;
        let (expected, found) = (target.size(), delta.size());
        if expected != found {
            return Err(LoraError::ShapeMismatch {
                path: self.spec.path.clone(),
                key,
                target: target_name,
                expected,
                found,
            });
        }
        Ok(Update {
            target: target_name,
            kind: UpdateKind::Full {
                delta,
                scale: self.spec.strength,
            },
        })
    }
}

/// What [`fuse_loras`] changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FuseSummary {
    /// Weights changed (a weight touched by several files counts once).
    pub tensors: usize,
    /// LoRA pairs and deltas applied, all files together.
    pub updates: usize,
}

/// Fuses `loras` (in order) into the transformer weights of `vs`. Every file is read and checked
/// against the model first; on an error no weight has changed. Each weight is updated once, in
/// f32 (`W + Σ strength·scale·B@A + Σ strength·diff`), and cast back to its dtype. Files with
/// strength 0 are checked but change nothing.
pub fn fuse_loras(vs: &nn::VarStore, loras: &[LoraSpec]) -> Result<FuseSummary, LoraError> {
    let variables = vs.variables();
    let mut by_target: BTreeMap<String, Vec<Update>> = BTreeMap::new();
    let mut updates = 0;
    for spec in loras {
        let planned = plan(spec, &variables)?;
        if spec.strength == 0.0 {
            continue;
        }
        updates += planned.len();
        for update in planned {
            by_target
                .entry(update.target.clone())
                .or_default()
                .push(update);
        }
    }
    let tensors = by_target.len();
    tch::no_grad(|| -> Result<(), LoraError> {
        for (name, list) in by_target {
            let mut target = variables[&name].shallow_clone();
            let shape = target.size();
            // a copy even when the weight is f32 already
            let mut sum = target.f_to_dtype(Kind::Float, false, true)?;
            for update in &list {
                let delta = update.delta(&shape, target.device())?;
                let _ = sum.f_add_(&delta)?;
            }
            target.f_copy_(&sum)?;
        }
        Ok(())
    })?;
    Ok(FuseSummary { tensors, updates })
}

/// Checks `loras` against the model of `vs` without changing it (the load-time refusal alone).
pub fn check_loras(vs: &nn::VarStore, loras: &[LoraSpec]) -> Result<usize, LoraError> {
    let variables = vs.variables();
    let mut n = 0;
    for spec in loras {
        n += plan(spec, &variables)?.len();
    }
    Ok(n)
}

/// The diffusers module a LoRA key addresses (after prefix stripping and the original → diffusers
/// name map), or `None` when the key is not a LoRA key. For diagnostics (`doctor`) and tests.
pub fn diffusers_module(key: &str) -> Option<String> {
    parse_key(key).map(|(module, _)| module)
}

/// A LoRA file path exists and is a file (for config checks before a long load).
pub fn check_file(path: &Path) -> Result<(), PipelineError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(PipelineError::MissingFile {
            what: "LoRA file".into(),
            path: path.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_metadata_scales_by_pattern_then_global_alpha() {
        let meta = AdapterMetadata {
            lora_alpha: Some(8.0),
            alpha_pattern: vec![("ffn.net.2".into(), 2.0)],
            use_rslora: false,
        };
        assert_eq!(meta.scale("blocks.1.ffn.net.2", 4.0), 0.5);
        assert_eq!(meta.scale("blocks.1.attn1.to_q", 4.0), 2.0);
        // a pattern matches whole dotted names only
        assert_eq!(meta.scale("blocks.1.xffn.net.2", 4.0), 2.0);
        let rs = AdapterMetadata {
            lora_alpha: Some(8.0),
            use_rslora: true,
            ..AdapterMetadata::default()
        };
        assert_eq!(rs.scale("proj_out", 4.0), 4.0);
        assert_eq!(AdapterMetadata::default().scale("proj_out", 4.0), 1.0);
    }

    #[test]
    fn original_names_map_to_diffusers() {
        let cases = [
            (
                "diffusion_model.blocks.3.self_attn.q.lora_down.weight",
                "blocks.3.attn1.to_q",
            ),
            (
                "diffusion_model.blocks.3.self_attn.o.lora_up.weight",
                "blocks.3.attn1.to_out.0",
            ),
            (
                "diffusion_model.blocks.0.cross_attn.k.alpha",
                "blocks.0.attn2.to_k",
            ),
            (
                "diffusion_model.blocks.0.cross_attn.norm_q.diff",
                "blocks.0.attn2.norm_q",
            ),
            (
                "diffusion_model.blocks.1.ffn.0.lora_A.weight",
                "blocks.1.ffn.net.0.proj",
            ),
            (
                "diffusion_model.blocks.1.ffn.2.diff_b",
                "blocks.1.ffn.net.2",
            ),
            ("diffusion_model.blocks.1.norm3.diff", "blocks.1.norm2"),
            (
                "diffusion_model.blocks.1.modulation.diff",
                "blocks.1.scale_shift_table",
            ),
            ("diffusion_model.head.head.lora_up.weight", "proj_out"),
            ("diffusion_model.head.modulation.diff", "scale_shift_table"),
            (
                "diffusion_model.time_projection.1.diff_b",
                "condition_embedder.time_proj",
            ),
            (
                "diffusion_model.text_embedding.2.lora_down.weight",
                "condition_embedder.text_embedder.linear_2",
            ),
            (
                "diffusion_model.time_embedding.0.lora_down.weight",
                "condition_embedder.time_embedder.linear_1",
            ),
            (
                "transformer.blocks.2.attn1.to_q.lora_A.weight",
                "blocks.2.attn1.to_q",
            ),
            (
                "blocks.2.attn2.to_out.0.lora_B.weight",
                "blocks.2.attn2.to_out.0",
            ),
            (
                "base_model.model.blocks.2.ffn.net.2.lora_B.bias",
                "blocks.2.ffn.net.2",
            ),
        ];
        for (key, module) in cases {
            assert_eq!(diffusers_module(key).as_deref(), Some(module), "{key}");
        }
        assert_eq!(diffusers_module("lora_te_text_model_encoder.weight"), None);
        assert_eq!(diffusers_module("blocks.0.attn1.to_q.weight"), None);
    }
}
