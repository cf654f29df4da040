//! The model revision (a digest of a directory's configs and sampled weights, cached across
//! restarts; LoRA files hashed the same way) and the precision that name the loaded weights.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use t2v_pipeline::LoadOptions;
use tch::{Device, Kind};

use super::load::missing_lora;
use crate::generate::GenerateError;

/// Hashes a LoRA file into a variant's revision as model weights are hashed.
pub(super) fn hash_lora(hasher: &mut Sha256, path: &Path) -> Result<(), GenerateError> {
    let meta = std::fs::metadata(path).map_err(|_| missing_lora(path))?;
    // The contents alone: the same file elsewhere is the same variant.
    let file = RevisionFile {
        path: path.to_path_buf(),
        relative: String::new(),
        weights: true,
        meta,
    };
    hash_weights(hasher, &file)
}

/// The version of the rule [`model_revision`] follows; part of every digest and cache key, so
/// a change of the rule changes every revision and never reads an older cache.
const REVISION_RULE: &str = "t2v-model-revision/2";

/// Bytes of each sample of a weights file's tensor data.
const SAMPLE_CHUNK: u64 = 64 * 1024;

/// Samples of a weights file's tensor data; data no longer than all of them is hashed whole.
const SAMPLE_CHUNKS: u64 = 16;

/// The largest safetensors header read (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

/// How deep [`model_revision`] looks for weights under the model directory.
const MAX_DEPTH: usize = 8;

/// A cache entry written for files changed this recently could miss a change made within the
/// same timestamp tick: none is written then.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// The revision of the model in `dir`: the first 12 hex digits of SHA-256 over, in order,
///
/// 1. the rule's version (`t2v-model-revision/2`);
/// 2. the configs, as before: `model_index.json`, then every `<component>/config.json` and
///    `<component>/scheduler_config.json` sorted by path — each as its relative path, its
///    length (u64 LE) and its bytes;
/// 3. every `*.safetensors` file under `dir` (recursively, symlinks followed, hidden entries
///    skipped), sorted by relative path (`/`-separated) — each as its relative path, its size,
///    its safetensors header (the first 8 bytes: the header length N as u64 LE, then the N
///    bytes of JSON: names, dtypes, shapes, offsets, metadata) and a sample of its tensor data:
///    all of it when it is at most 16 × 64 KiB, else 16 chunks of 64 KiB at evenly spaced
///    offsets, the first at the data's start and the last ending at the file's end.
///
/// So any re-trained or swapped weights (and any architecture or scheduler change) change the
/// revision, reading about 1 MiB per weights file however large.
///
/// The result is cached per model directory, keyed by the rule and the (relative path, size,
/// mtime, ctime, inode) of every file above: the first of
/// `$XDG_CACHE_HOME/t2v-fleet/revisions/<dir digest>.json`,
/// `$HOME/.cache/t2v-fleet/revisions/<dir digest>.json` and `<dir>/.t2v-revision.json` that
/// can be written. A restart with unchanged files reads it instead of the weights; any cache
/// problem (missing, unreadable, stale, not writable) just means computing.
pub fn model_revision(dir: &Path) -> Result<String, GenerateError> {
    let started = std::time::Instant::now();
    let (revision, cached) = revision_with_cache(dir, &default_cache_paths(dir), RACY_WINDOW)?;
    tracing::info!(
        dir = %dir.display(),
        %revision,
        cached,
        took_s = started.elapsed().as_secs_f64(),
        "model revision"
    );
    Ok(revision)
}

/// The weights dtype and device class of `options`, as checkpoints record them: `bf16/cuda`,
/// `f32/cpu`, ….
pub fn precision(options: &LoadOptions) -> String {
    let dtype = match options.dtype {
        Kind::Float => "f32".to_string(),
        Kind::BFloat16 => "bf16".to_string(),
        Kind::Half => "fp16".to_string(),
        Kind::Float8e4m3fn => "fp8".to_string(),
        Kind::Double => "f64".to_string(),
        other => format!("{other:?}").to_lowercase(),
    };
    let device = match options.device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => "cuda".to_string(),
        Device::Mps => "mps".to_string(),
        Device::Vulkan => "vulkan".to_string(),
        #[allow(unreachable_patterns)]
        other => format!("{other:?}").to_lowercase(),
    };
    format!("{dtype}/{device}")
}

/// A file the revision covers.
struct RevisionFile {
    path: std::path::PathBuf,
    /// Relative to the model directory, `/`-separated.
    relative: String,
    weights: bool,
    meta: std::fs::Metadata,
}

fn read_error(path: &Path, e: std::io::Error) -> GenerateError {
    GenerateError::Load(format!(
        "cannot read {}: {e} — is the model directory complete?",
        path.display()
    ))
}

fn relative_name(dir: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(dir).unwrap_or(path);
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The configs (in hashing order) and then the weights files (sorted) of `dir`.
fn revision_files(dir: &Path) -> Result<Vec<RevisionFile>, GenerateError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        GenerateError::Load(format!(
            "cannot read the model directory {}: {e} — set model.dir to a diffusers-format checkpoint",
            dir.display()
        ))
    })?;
    let mut configs = Vec::new();
    for entry in entries.flatten() {
        for name in ["config.json", "scheduler_config.json"] {
            let config = entry.path().join(name);
            if config.is_file() {
                configs.push(config);
            }
        }
    }
    configs.sort();
    let mut weights = Vec::new();
    find_weights(dir, 0, &mut weights)?;
    let mut files = Vec::new();
    for path in std::iter::once(dir.join("model_index.json")).chain(configs) {
        let meta = std::fs::metadata(&path).map_err(|e| read_error(&path, e))?;
        files.push(RevisionFile {
            relative: relative_name(dir, &path),
            path,
            weights: false,
            meta,
        });
    }
    let mut weights: Vec<RevisionFile> = weights
        .into_iter()
        .map(|(path, meta)| RevisionFile {
            relative: relative_name(dir, &path),
            path,
            weights: true,
            meta,
        })
        .collect();
    weights.sort_by(|a, b| a.relative.cmp(&b.relative));
    files.extend(weights);
    Ok(files)
}

/// Every `*.safetensors` file under `dir` (symlinks followed, hidden entries skipped).
fn find_weights(
    dir: &Path,
    depth: usize,
    out: &mut Vec<(std::path::PathBuf, std::fs::Metadata)>,
) -> Result<(), GenerateError> {
    let entries = std::fs::read_dir(dir).map_err(|e| read_error(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| read_error(dir, e))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // A dangling link or one we may not follow is no weights file.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                find_weights(&path, depth + 1, out)?;
            }
        } else if meta.is_file() && path.extension().is_some_and(|e| e == "safetensors") {
            out.push((path, meta));
        }
    }
    Ok(())
}

/// Hashes one safetensors file as [`model_revision`] says: size, header, sampled data.
fn hash_weights(hasher: &mut Sha256, file: &RevisionFile) -> Result<(), GenerateError> {
    use std::io::{Read, Seek, SeekFrom};
    let path = &file.path;
    let size = file.meta.len();
    let not_safetensors = |why: &str| {
        GenerateError::Load(format!(
            "{} is not a safetensors file ({why}) — is the model directory complete?",
            path.display()
        ))
    };
    let mut f = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| not_safetensors("shorter than 8 bytes"))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER || header_len > size.saturating_sub(8) {
        return Err(not_safetensors("header length past the end of the file"));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|e| read_error(path, e))?;
    hasher.update(size.to_le_bytes());
    hasher.update(len);
    hasher.update(&header);
    let data_start = 8 + header_len;
    let data_len = size - data_start;
    let mut chunk = Vec::new();
    if data_len <= SAMPLE_CHUNK * SAMPLE_CHUNKS {
        f.read_to_end(&mut chunk).map_err(|e| read_error(path, e))?;
        if chunk.len() as u64 != data_len {
            return Err(not_safetensors("its size changed while reading"));
        }
        hasher.update(&chunk);
        return Ok(());
    }
    chunk.resize(SAMPLE_CHUNK as usize, 0);
    for i in 0..SAMPLE_CHUNKS {
        let offset = data_start + i * (data_len - SAMPLE_CHUNK) / (SAMPLE_CHUNKS - 1);
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut chunk))
            .map_err(|e| read_error(path, e))?;
        hasher.update(offset.to_le_bytes());
        hasher.update(&chunk);
    }
    Ok(())
}

/// The revision of `files` (see [`model_revision`]), computed from their contents.
fn compute_revision(files: &[RevisionFile]) -> Result<String, GenerateError> {
    let mut hasher = Sha256::new();
    hasher.update(REVISION_RULE.as_bytes());
    for file in files {
        hasher.update((file.relative.len() as u64).to_le_bytes());
        hasher.update(file.relative.as_bytes());
        if file.weights {
            hash_weights(&mut hasher, file)?;
        } else {
            let bytes = std::fs::read(&file.path).map_err(|e| read_error(&file.path, e))?;
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        }
    }
    Ok(short_hex(&hasher.finalize()))
}

/// The first 12 hex digits of `digest`.
fn short_hex(digest: &[u8]) -> String {
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

fn nanos(time: std::io::Result<std::time::SystemTime>) -> i128 {
    match time.map(|t| t.duration_since(std::time::UNIX_EPOCH)) {
        Ok(Ok(d)) => d.as_nanos() as i128,
        Ok(Err(before)) => -(before.duration().as_nanos() as i128),
        Err(_) => 0,
    }
}

/// (ctime ns, inode) on Unix; nothing elsewhere.
#[cfg(unix)]
fn change_stamp(meta: &std::fs::Metadata) -> (i128, u64) {
    use std::os::unix::fs::MetadataExt;
    (
        i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        meta.ino(),
    )
}

#[cfg(not(unix))]
fn change_stamp(_meta: &std::fs::Metadata) -> (i128, u64) {
    (0, 0)
}

/// The cache key of `files`: SHA-256 (hex) of the rule and every file's relative path, size,
/// mtime, ctime and inode.
fn cache_key(dir: &Path, files: &[RevisionFile]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(REVISION_RULE.as_bytes());
    hasher.update(dir.to_string_lossy().as_bytes());
    for file in files {
        let (ctime, inode) = change_stamp(&file.meta);
        hasher.update((file.relative.len() as u64).to_le_bytes());
        hasher.update(file.relative.as_bytes());
        hasher.update([u8::from(file.weights)]);
        hasher.update(file.meta.len().to_le_bytes());
        hasher.update(nanos(file.meta.modified()).to_le_bytes());
        hasher.update(ctime.to_le_bytes());
        hasher.update(inode.to_le_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where the revision of `dir` may be cached, most preferred first (see [`model_revision`]).
pub(super) fn default_cache_paths(dir: &Path) -> Vec<std::path::PathBuf> {
    let absolute = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let name = format!(
        "{}.json",
        &t2v_contract::sha256_hex(absolute.to_string_lossy().as_bytes())[..16]
    );
    let non_empty = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
    let mut paths = Vec::new();
    if let Some(xdg) = non_empty("XDG_CACHE_HOME").map(std::path::PathBuf::from) {
        if xdg.is_absolute() {
            paths.push(xdg.join("t2v-fleet/revisions").join(&name));
        }
    }
    if let Some(home) = non_empty("HOME").map(std::path::PathBuf::from) {
        paths.push(home.join(".cache/t2v-fleet/revisions").join(&name));
    }
    paths.push(dir.join(".t2v-revision.json"));
    paths
}

/// The revision of `dir` and whether it came from a cache in `caches` (tried in order; the
/// first writable one receives a fresh value unless a file changed within `racy` of now).
pub(super) fn revision_with_cache(
    dir: &Path,
    caches: &[std::path::PathBuf],
    racy: Duration,
) -> Result<(String, bool), GenerateError> {
    let files = revision_files(dir)?;
    let key = cache_key(dir, &files);
    for cache in caches {
        if let Some(revision) = read_cache(cache, &key) {
            return Ok((revision, true));
        }
    }
    let revision = compute_revision(&files)?;
    let now = std::time::SystemTime::now();
    let settled = files.iter().all(|f| {
        let changed = nanos(f.meta.modified()).max(change_stamp(&f.meta).0);
        let now = nanos(Ok(now));
        now - changed >= racy.as_nanos() as i128
    });
    if settled {
        // Stat again: a file that changed while it was read must not be cached under the old key.
        let unchanged = revision_files(dir).is_ok_and(|again| cache_key(dir, &again) == key);
        if unchanged {
            for cache in caches {
                match write_cache(cache, &key, &revision) {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!(cache = %cache.display(), error = %e, "revision not cached there")
                    }
                }
            }
        }
    }
    Ok((revision, false))
}

/// The cached revision at `path` when it was stored under `key`.
fn read_cache(path: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let entry: serde_json::Value = serde_json::from_str(&text).ok()?;
    let revision = entry["revision"].as_str()?;
    let valid = entry["rule"] == REVISION_RULE
        && entry["key"] == key
        && revision.len() == 12
        && revision.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| revision.to_string())
}

/// Stores `revision` under `key` at `path` (written aside, then renamed into place).
fn write_cache(path: &Path, key: &str, revision: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let entry = serde_json::json!({ "rule": REVISION_RULE, "key": key, "revision": revision });
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, entry.to_string())?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
