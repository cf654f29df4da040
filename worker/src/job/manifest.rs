//! `manifest.json`, the commit point of a job: written last, create-only, next to the outputs.
//! It holds everything a Completed event says except the manifest's own artifact, so a worker
//! that finds it can re-publish a Completed identical to the first ([`Manifest::completed`] is
//! the only way either is built). The outputs it names are immutable: see [`RUNS_DIR`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use t2v_proto::v1::{Artifact, Completed, Timings};

use t2v_contract::sha256_hex;

pub const FILE_NAME: &str = "manifest.json";
/// Each run of a job writes its outputs under `<job>/runs/<attempt>.<n>/` (`n` from its attempt
/// marker, so no two runs share a folder): a run that loses the race to commit can never
/// overwrite the files a manifest names. The committed run deletes the other runs' folders.
pub const RUNS_DIR: &str = "runs";
pub const CONTENT_TYPE: &str = "application/json";

/// A stored output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    pub uri: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub content_type: String,
}

impl From<&StoredFile> for Artifact {
    fn from(f: &StoredFile) -> Self {
        Artifact {
            uri: f.uri.clone(),
            size_bytes: f.size_bytes,
            sha256: f.sha256.clone(),
            content_type: f.content_type.clone(),
        }
    }
}

/// Phase timings in milliseconds (see `t2v.v1.Timings`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimingsMs {
    pub queue_wait: u64,
    pub model_load: u64,
    pub text_encode: u64,
    pub denoise: u64,
    pub vae_decode: u64,
    pub encode: u64,
    pub upload: u64,
    pub total: u64,
}

/// The conditioning image a job ran with: its URI when the request named one, and always the
/// SHA-256 and size of the bytes the worker read — never the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestImage {
    /// Empty for an inline image.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
    pub sha256: String,
    pub size_bytes: u64,
}

/// The manifest's JSON form (format version 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub job_id: String,
    pub model: String,
    pub model_revision: String,
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub num_frames: u32,
    pub fps: u32,
    pub num_inference_steps: u32,
    /// The request digest ([`crate::generate::JobSpec::digest`]) the video was made for: the
    /// same job id with another request is a conflict, not a duplicate. Empty in manifests
    /// written before it existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_digest: String,
    /// Absent for text-to-video.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ManifestImage>,
    pub labels: BTreeMap<String, String>,
    pub video: StoredFile,
    pub thumbnail: StoredFile,
    pub timings_ms: TimingsMs,
    /// What the step cache did (kind, threshold, forwards and forwards skipped); absent without
    /// one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_cache: Option<crate::generate::variant::StepCacheSummary>,
    pub worker_id: String,
    pub created_at_unix_ms: u64,
}

impl Manifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest serialises");
        out.push(b'\n');
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The Completed event of this job, given the stored manifest's URI and bytes.
    pub fn completed(&self, manifest_uri: &str, manifest_bytes: &[u8]) -> Completed {
        let t = self.timings_ms;
        Completed {
            video: Some((&self.video).into()),
            thumbnail: Some((&self.thumbnail).into()),
            manifest: Some(Artifact {
                uri: manifest_uri.to_string(),
                size_bytes: manifest_bytes.len() as u64,
                sha256: sha256_hex(manifest_bytes),
                content_type: CONTENT_TYPE.into(),
            }),
            seed: self.seed,
            model: self.model.clone(),
            model_revision: self.model_revision.clone(),
            timings: Some(Timings {
                queue_wait_ms: t.queue_wait,
                model_load_ms: t.model_load,
                text_encode_ms: t.text_encode,
                denoise_ms: t.denoise,
                vae_decode_ms: t.vae_decode,
                encode_ms: t.encode,
                upload_ms: t.upload,
                total_ms: t.total,
            }),
            width: self.width,
            height: self.height,
            num_frames: self.num_frames,
            fps: self.fps,
            num_inference_steps: self.num_inference_steps,
        }
    }
}
