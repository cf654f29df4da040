//! A diffusers-format model directory, as `WanPipeline.save_pretrained` writes it and as the
//! `Wan-AI/*-Diffusers` repositories ship it:
//!
//! ```text
//! model_index.json        pipeline class, boundary_ratio, expand_timesteps, one entry per component
//! transformer/            config.json + diffusion_pytorch_model(-0000k-of-0000N).safetensors (+ index.json)
//! transformer_2/          the low-noise expert of Wan2.2 A14B (absent: [null, null])
//! text_encoder/           config.json + model(-0000k-of-0000N).safetensors (+ index.json)
//! tokenizer/              tokenizer.json (+ tokenizer_config.json, spiece.model)
//! vae/                    config.json + diffusion_pytorch_model.safetensors
//! scheduler/              scheduler_config.json
//! ```
//!
//! [`ModelDir::open`] reads `model_index.json`; [`ModelDir::check_complete`] walks every
//! component a `WanPipeline` needs and names the first missing file or weight shard, before
//! anything large is loaded. Component internals (configs, weights) belong to their loaders.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{PipelineError, Result};
use crate::loader;

mod kind;

pub use kind::ModelKind;

/// File name of the pipeline index at the directory's root.
pub const MODEL_INDEX: &str = "model_index.json";

/// The text-to-video pipeline class (T2V-A14B, TI2V-5B and Wan2.1 T2V ship with it).
pub const PIPELINE_CLASS: &str = "WanPipeline";

/// The image-to-video pipeline class (Wan2.2 I2V-A14B ships with it; TI2V-5B may be saved so).
pub const I2V_PIPELINE_CLASS: &str = "WanImageToVideoPipeline";

/// A component folder of a `WanPipeline` directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// The (high-noise, for A14B) DiT expert.
    Transformer,
    /// The low-noise DiT expert of Wan2.2 A14B.
    Transformer2,
    TextEncoder,
    Tokenizer,
    Vae,
    Scheduler,
}

impl Component {
    /// Every component, in the order `check_complete` visits them.
    pub const ALL: [Component; 6] = [
        Component::Transformer,
        Component::Transformer2,
        Component::TextEncoder,
        Component::Tokenizer,
        Component::Vae,
        Component::Scheduler,
    ];

    /// The key in `model_index.json`, which is also the folder name.
    pub fn name(self) -> &'static str {
        match self {
            Component::Transformer => "transformer",
            Component::Transformer2 => "transformer_2",
            Component::TextEncoder => "text_encoder",
            Component::Tokenizer => "tokenizer",
            Component::Vae => "vae",
            Component::Scheduler => "scheduler",
        }
    }

    /// Files the folder must hold besides weights.
    fn required_files(self) -> &'static [&'static str] {
        match self {
            Component::Transformer
            | Component::Transformer2
            | Component::TextEncoder
            | Component::Vae => &["config.json"],
            Component::Tokenizer => &["tokenizer.json"],
            Component::Scheduler => &["scheduler_config.json"],
        }
    }

    fn has_weights(self) -> bool {
        !matches!(self, Component::Tokenizer | Component::Scheduler)
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A component's `[library, class]` entry, e.g. `["diffusers", "WanTransformer3DModel"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentClass {
    pub library: String,
    pub class: String,
}

/// `[library, class]`, or `[null, null]` for a component the pipeline was saved without.
type Entry = Option<[Option<String>; 2]>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIndex {
    #[serde(rename = "_class_name")]
    class_name: String,
    #[serde(rename = "_diffusers_version", default)]
    diffusers_version: Option<String>,
    #[serde(rename = "_name_or_path", default)]
    _name_or_path: Option<String>,
    #[serde(default)]
    boundary_ratio: Option<f64>,
    #[serde(default)]
    expand_timesteps: Option<bool>,
    #[serde(default)]
    transformer: Entry,
    #[serde(default)]
    transformer_2: Entry,
    #[serde(default)]
    text_encoder: Entry,
    #[serde(default)]
    tokenizer: Entry,
    #[serde(default)]
    vae: Entry,
    #[serde(default)]
    scheduler: Entry,
    /// CLIP image encoder of Wan2.1 I2V (`WanImageToVideoPipeline`); must be null.
    #[serde(default)]
    image_encoder: Entry,
    #[serde(default)]
    #[serde(rename = "image_processor")]
    _image_processor: Entry,
}

/// A parsed `WanPipeline` model directory.
#[derive(Debug, Clone)]
pub struct ModelDir {
    root: PathBuf,
    pipeline_class: String,
    diffusers_version: Option<String>,
    boundary_ratio: Option<f64>,
    expand_timesteps: bool,
    /// Indexed like [`Component::ALL`].
    components: [Option<ComponentClass>; 6],
}

impl ModelDir {
    /// Reads `root/model_index.json` and checks it describes a text-to-video `WanPipeline`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let index_path = root.join(MODEL_INDEX);
        let config_error = |message: String| PipelineError::Config {
            path: index_path.clone(),
            message,
        };
        let value: serde_json::Value = loader::read_json(&index_path, "pipeline index")?;
        // The class first: another pipeline's extra components would otherwise be reported as
        // unknown fields, which hides the real cause.
        let class = value.get("_class_name").and_then(|c| c.as_str());
        if class != Some(PIPELINE_CLASS) && class != Some(I2V_PIPELINE_CLASS) {
            return Err(config_error(format!(
                "_class_name is {class:?}; only {PIPELINE_CLASS:?} and {I2V_PIPELINE_CLASS:?} (Wan T2V, I2V-A14B, TI2V-5B) directories are supported"
            )));
        }
        let raw: RawIndex =
            serde_json::from_value(value).map_err(|e| config_error(e.to_string()))?;
        if matches!(&raw.image_encoder, Some([Some(_), Some(_)])) {
            return Err(config_error(
                "image_encoder is set: a Wan2.1 I2V checkpoint (CLIP image embeddings) is not supported; use Wan2.2 I2V-A14B or TI2V-5B".into(),
            ));
        }
        let mut components: [Option<ComponentClass>; 6] = Default::default();
        let entries = [
            raw.transformer,
            raw.transformer_2,
            raw.text_encoder,
            raw.tokenizer,
            raw.vae,
            raw.scheduler,
        ];
        for ((slot, entry), component) in components.iter_mut().zip(entries).zip(Component::ALL) {
            *slot = match entry {
                None | Some([None, None]) => None,
                Some([Some(library), Some(class)]) => Some(ComponentClass { library, class }),
                Some(partial) => {
                    return Err(config_error(format!(
                        "{component} entry {partial:?} must be [library, class] or [null, null]"
                    )))
                }
            };
        }
        for expert in [Component::Transformer, Component::Transformer2] {
            let entry = &components[expert as usize];
            if let Some(c) = entry
                .as_ref()
                .filter(|c| c.class != "WanTransformer3DModel")
            {
                return Err(config_error(format!(
                    "{expert} is a {}, expected WanTransformer3DModel",
                    c.class
                )));
            }
        }
        if let Some(ratio) = raw.boundary_ratio {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(config_error(format!(
                    "boundary_ratio {ratio} must lie in [0, 1]"
                )));
            }
            if components[Component::Transformer2 as usize].is_none() {
                return Err(config_error(format!(
                    "boundary_ratio {ratio} switches to transformer_2, but transformer_2 is null"
                )));
            }
        }
        Ok(Self {
            root,
            pipeline_class: raw.class_name,
            diffusers_version: raw.diffusers_version,
            boundary_ratio: raw.boundary_ratio,
            expand_timesteps: raw.expand_timesteps.unwrap_or(false),
            components,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `_class_name` (always [`PIPELINE_CLASS`] once opened).
    pub fn pipeline_class(&self) -> &str {
        &self.pipeline_class
    }

    /// `_diffusers_version` of the writer, if recorded.
    pub fn diffusers_version(&self) -> Option<&str> {
        self.diffusers_version.as_deref()
    }

    /// Fraction of the 1000 training timesteps above which `transformer` (high noise) runs and
    /// below which `transformer_2` runs; `None`: `transformer` runs every step.
    pub fn boundary_ratio(&self) -> Option<f64> {
        self.boundary_ratio
    }

    /// Wan2.2 TI2V: the transformer takes one timestep per latent token.
    pub fn expand_timesteps(&self) -> bool {
        self.expand_timesteps
    }

    /// The `[library, class]` entry of `component`; `None` when absent or `[null, null]`.
    pub fn component(&self, component: Component) -> Option<&ComponentClass> {
        self.components[component as usize].as_ref()
    }

    pub fn has(&self, component: Component) -> bool {
        self.component(component).is_some()
    }

    /// The folder of `component` (whether or not it exists on disk). A component the index
    /// lists as absent is a config error that names it.
    pub fn path(&self, component: Component) -> Result<PathBuf> {
        if !self.has(component) {
            return Err(PipelineError::Config {
                path: self.root.join(MODEL_INDEX),
                message: format!("{component} is null or absent; this pipeline has no {component}"),
            });
        }
        Ok(self.root.join(component.name()))
    }

    /// Checks that every component a `WanPipeline` needs is listed and on disk: its folder, its
    /// config/tokenizer file and every weight shard (`*.safetensors`, or each file an
    /// `*.safetensors.index.json` names). Returns the first problem, naming the path expected.
    pub fn check_complete(&self) -> Result<()> {
        for required in [
            Component::Transformer,
            Component::TextEncoder,
            Component::Tokenizer,
            Component::Vae,
            Component::Scheduler,
        ] {
            self.path(required)?;
        }
        for component in Component::ALL.into_iter().filter(|c| self.has(*c)) {
            let dir = self.path(component)?;
            if !dir.is_dir() {
                return Err(PipelineError::MissingFile {
                    what: format!("{component} folder listed in {MODEL_INDEX}"),
                    path: dir,
                });
            }
            for file in component.required_files() {
                let path = dir.join(file);
                if !path.is_file() {
                    return Err(PipelineError::MissingFile {
                        what: format!("{component} {file}"),
                        path,
                    });
                }
            }
            if component.has_weights() {
                loader::weight_files(&dir)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const A14B_INDEX: &str = r#"{
      "_class_name": "WanPipeline", "_diffusers_version": "0.35.0.dev0",
      "boundary_ratio": 0.875, "expand_timesteps": false,
      "scheduler": ["diffusers", "UniPCMultistepScheduler"],
      "text_encoder": ["transformers", "UMT5EncoderModel"],
      "tokenizer": ["transformers", "T5TokenizerFast"],
      "transformer": ["diffusers", "WanTransformer3DModel"],
      "transformer_2": ["diffusers", "WanTransformer3DModel"],
      "vae": ["diffusers", "AutoencoderKLWan"]
    }"#;

    /// The index `WanPipeline.save_pretrained` (diffusers 0.42.1) writes for a TI2V-style pipeline.
    const TI2V_INDEX: &str = r#"{
      "_class_name": "WanPipeline", "_diffusers_version": "0.42.1",
      "boundary_ratio": null, "expand_timesteps": true,
      "scheduler": ["diffusers", "UniPCMultistepScheduler"],
      "text_encoder": ["transformers", "UMT5EncoderModel"],
      "tokenizer": ["transformers", "T5TokenizerFast"],
      "transformer": ["diffusers", "WanTransformer3DModel"],
      "transformer_2": [null, null],
      "vae": ["diffusers", "AutoencoderKLWan"]
    }"#;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// A complete A14B-shaped directory with empty files; transformer_2 is sharded.
    fn a14b_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join(MODEL_INDEX), A14B_INDEX);
        for c in ["transformer", "transformer_2", "text_encoder", "vae"] {
            write(&root.join(c).join("config.json"), "{}");
        }
        write(
            &root.join("transformer/diffusion_pytorch_model.safetensors"),
            "",
        );
        write(
            &root.join("transformer_2/diffusion_pytorch_model.safetensors.index.json"),
            r#"{"metadata": {}, "weight_map": {
                "a": "diffusion_pytorch_model-00001-of-00002.safetensors",
                "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}}"#,
        );
        for k in 1..=2 {
            let shard = format!("diffusion_pytorch_model-0000{k}-of-00002.safetensors");
            write(&root.join("transformer_2").join(shard), "");
        }
        write(&root.join("text_encoder/model.safetensors"), "");
        write(&root.join("vae/diffusion_pytorch_model.safetensors"), "");
        write(&root.join("tokenizer/tokenizer.json"), "{}");
        write(&root.join("scheduler/scheduler_config.json"), "{}");
        dir
    }

    #[test]
    fn reads_the_a14b_index() {
        let dir = a14b_dir();
        let model = ModelDir::open(dir.path()).unwrap();
        assert_eq!(model.boundary_ratio(), Some(0.875));
        assert!(!model.expand_timesteps());
        assert!(Component::ALL.iter().all(|c| model.has(*c)));
        assert_eq!(
            model.component(Component::TextEncoder).unwrap().class,
            "UMT5EncoderModel"
        );
        assert_eq!(
            model.path(Component::Transformer2).unwrap(),
            dir.path().join("transformer_2")
        );
        model.check_complete().unwrap();
    }

    #[test]
    fn null_components_are_absent() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join(MODEL_INDEX), TI2V_INDEX);
        let model = ModelDir::open(dir.path()).unwrap();
        assert!(model.expand_timesteps());
        assert_eq!(model.boundary_ratio(), None);
        assert!(!model.has(Component::Transformer2));
        let err = model.path(Component::Transformer2).unwrap_err().to_string();
        assert!(err.contains("transformer_2 is null"), "{err}");
    }

    #[test]
    fn check_complete_names_the_first_missing_shard() {
        let dir = a14b_dir();
        let shard = dir
            .path()
            .join("transformer_2/diffusion_pytorch_model-00002-of-00002.safetensors");
        fs::remove_file(&shard).unwrap();
        let err = ModelDir::open(dir.path())
            .unwrap()
            .check_complete()
            .unwrap_err();
        assert!(matches!(&err, PipelineError::MissingFile { path, .. } if *path == shard));
        let line = err.to_string();
        assert!(
            !line.contains('\n') && line.contains(&shard.display().to_string()),
            "{line}"
        );
    }

    #[test]
    fn check_complete_names_missing_folders_and_files() {
        let dir = a14b_dir();
        fs::remove_file(dir.path().join("tokenizer/tokenizer.json")).unwrap();
        let err = ModelDir::open(dir.path())
            .unwrap()
            .check_complete()
            .unwrap_err();
        assert!(
            err.to_string().contains("tokenizer/tokenizer.json"),
            "{err}"
        );

        fs::remove_dir_all(dir.path().join("vae")).unwrap();
        fs::write(dir.path().join("tokenizer/tokenizer.json"), "{}").unwrap();
        let err = ModelDir::open(dir.path())
            .unwrap()
            .check_complete()
            .unwrap_err();
        assert!(
            matches!(&err, PipelineError::MissingFile { path, .. } if *path == dir.path().join("vae")),
            "{err}"
        );
    }

    #[test]
    fn inconsistent_indexes_are_config_errors() {
        let cases = [
            (
                A14B_INDEX.replace("WanPipeline", "WanVACEPipeline"),
                "WanVACEPipeline",
            ),
            (
                A14B_INDEX.replace(
                    r#""transformer_2": ["diffusers", "WanTransformer3DModel"]"#,
                    r#""transformer_2": [null, null]"#,
                ),
                "transformer_2 is null",
            ),
            (A14B_INDEX.replace("0.875", "1.5"), "boundary_ratio 1.5"),
            (
                A14B_INDEX.replace(
                    r#""expand_timesteps": false"#,
                    r#""expand_timesteps": false, "foo": 1"#,
                ),
                "unknown field `foo`",
            ),
        ];
        for (index, needle) in cases {
            let dir = tempfile::tempdir().unwrap();
            write(&dir.path().join(MODEL_INDEX), &index);
            let err = ModelDir::open(dir.path()).unwrap_err();
            assert!(matches!(err, PipelineError::Config { .. }), "{err}");
            assert!(
                err.to_string().contains(needle),
                "{err} should mention {needle}"
            );
        }
        let missing = tempfile::tempdir().unwrap();
        let err = ModelDir::open(missing.path()).unwrap_err();
        assert!(matches!(err, PipelineError::MissingFile { .. }), "{err}");
    }

    #[test]
    fn a_pipeline_without_text_encoder_is_incomplete() {
        let dir = a14b_dir();
        let index = A14B_INDEX.replace(r#"["transformers", "UMT5EncoderModel"]"#, "[null, null]");
        write(&dir.path().join(MODEL_INDEX), &index);
        let err = ModelDir::open(dir.path())
            .unwrap()
            .check_complete()
            .unwrap_err();
        assert!(err.to_string().contains("no text_encoder"), "{err}");
    }
}
