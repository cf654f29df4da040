//! A request's conditioning image (docs/design.md "Conditioning images"), read and decoded
//! before any GPU work: the inline bytes, or the object behind `image.uri` — only under one of
//! `storage.image_uri_prefixes` (none by default), read with the worker's own storage
//! credentials, at most [`MAX_IMAGE_OBJECT_BYTES`] and never more than that buffered. Then
//! t2v-pipeline decodes it (PNG, JPEG or WebP, at most 4096×4096) on the blocking pool.
//!
//! What can never work — a URI outside the prefixes, a missing object, refused credentials, an
//! object too large, bytes that do not decode — is [`ImageError::Invalid`]: Failed
//! INVALID_ARGUMENT naming the problem. A storage outage is [`ImageError::Storage`]: the job is
//! re-queued like any other outage.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use t2v_contract::sha256_hex;
use t2v_contract::validate::{MAX_IMAGE_OBJECT_BYTES, MAX_INLINE_IMAGE_BYTES};
use t2v_proto::v1::{condition_image::Source, ConditionImage as RequestImage};
use tokio::io::AsyncReadExt;

use super::failure::{Failure, Stop};
use crate::config::JobsConfig;
use crate::generate::JobImage;
use crate::storage::{ObjectRead, Storage, StorageError};

/// Why a request's image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The request can never run with this image; the message names the URI's or the bytes'
    /// problem and the fix.
    #[error("{0}")]
    Invalid(String),
    /// Object storage did not answer within the retries: try the job again later.
    #[error(transparent)]
    Storage(StorageError),
    /// The worker cannot open a store it is configured to read (its credentials or settings).
    #[error("{0}")]
    Worker(String),
}

impl From<ImageError> for Stop {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Invalid(message) => Failure::invalid_input(message).into(),
            ImageError::Storage(e) => Stop::StorageDown(e),
            ImageError::Worker(message) => Failure::internal(message).into(),
        }
    }
}

/// The encoded image bytes of a request, and how the digest names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBytes {
    pub bytes: Bytes,
    /// The URI, or `inline sha256:<hex>` ([`reference`]).
    pub reference: String,
}

/// How the request digest (and the manifest) names a request's image without reading it: the
/// URI, or the SHA-256 of the inline bytes.
pub fn reference(image: &RequestImage) -> Option<String> {
    match image.source.as_ref()? {
        Source::Uri(uri) => Some(uri.clone()),
        Source::Inline(bytes) => Some(format!("inline sha256:{}", sha256_hex(bytes))),
    }
}

/// Checks a `storage.image_uri_prefixes` entry: a supported scheme with a bucket, or an
/// absolute `file://` directory.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let Some((scheme, rest)) = prefix.split_once("://") else {
        return Err("no scheme — use s3://bucket/dir/, gs://bucket/dir/, az://container/dir/ or file:///absolute/dir/".into());
    };
    match scheme {
        "file" if rest.starts_with('/') => Ok(()),
        "file" => {
            Err("a file:// prefix must be an absolute directory, file:///absolute/dir/".into())
        }
        "s3" | "gs" | "az" if !rest.split('/').next().unwrap_or_default().is_empty() => Ok(()),
        "s3" | "gs" | "az" => Err("no bucket or container name".into()),
        other => Err(format!(
            "{other}:// is not an image source — use s3://, gs://, az:// or file://"
        )),
    }
}

/// The prefix as a directory: `s3://b/dir` allows `s3://b/dir/…`, never `s3://b/dir-other/…`.
fn as_directory(prefix: &str) -> String {
    format!("{}/", prefix.trim_end_matches('/'))
}

/// Reads the bytes of `image`: inline as sent, or from its URI when `prefixes` allow it.
pub async fn read(
    image: &RequestImage,
    prefixes: &[String],
    jobs: &JobsConfig,
) -> Result<ImageBytes, ImageError> {
    let reference = reference(image).unwrap_or_default();
    let bytes = match &image.source {
        None => return Err(ImageError::Invalid("image is set but has neither uri nor inline — set one, or leave image unset for text-to-video".into())),
        Some(Source::Inline(bytes)) if bytes.len() > MAX_INLINE_IMAGE_BYTES => {
            return Err(ImageError::Invalid(format!(
                "image.inline is {} bytes, more than {MAX_INLINE_IMAGE_BYTES} — send the image by uri",
                bytes.len()
            )))
        }
        Some(Source::Inline(bytes)) => Bytes::copy_from_slice(bytes),
        Some(Source::Uri(uri)) => read_uri(uri, prefixes, jobs).await?,
    };
    Ok(ImageBytes { bytes, reference })
}

async fn read_uri(uri: &str, prefixes: &[String], jobs: &JobsConfig) -> Result<Bytes, ImageError> {
    let Some(prefix) = prefixes
        .iter()
        .map(|p| as_directory(p))
        .find(|p| uri.starts_with(p.as_str()))
    else {
        return Err(ImageError::Invalid(if prefixes.is_empty() {
            format!("image.uri {uri}: this worker reads no image URIs (storage.image_uri_prefixes is empty) — send the image inline (at most {} KiB), or ask the operator to allow its bucket", MAX_INLINE_IMAGE_BYTES / 1024)
        } else {
            format!(
                "image.uri {uri} is not under a location this worker may read ({}) — upload the image under one of them, or send it inline",
                prefixes.join(", ")
            )
        }));
    };
    let (scheme, rest) = uri.split_once("://").unwrap_or_default();
    if scheme == "file" {
        return read_file(
            uri,
            FsPath::new(rest),
            FsPath::new(&prefix["file://".len()..]),
        )
        .await;
    }
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let key = Path::parse(key).map_err(|e| {
        ImageError::Invalid(format!(
            "image.uri {uri} is not a plain object key ({e}) — name the object without '.', '..' or empty segments"
        ))
    })?;
    let store = Storage::from_url(&format!("{scheme}://{bucket}"), jobs)
        .map_err(|e| ImageError::Worker(format!("cannot open the image store of {uri}: {e}")))?;
    match store
        .get_at_most(&key, MAX_IMAGE_OBJECT_BYTES)
        .await
        .map_err(ImageError::Storage)?
    {
        ObjectRead::Found(bytes) => Ok(bytes),
        ObjectRead::Missing => Err(ImageError::Invalid(format!(
            "image.uri {uri}: no such object — upload the image first, or check the bucket and key"
        ))),
        ObjectRead::TooLarge { size } => Err(too_large(uri, size)),
        ObjectRead::Denied(why) => Err(ImageError::Invalid(format!(
            "image.uri {uri}: the worker's credentials may not read it ({why}) — put the image where the fleet can read it"
        ))),
    }
}

fn too_large(uri: &str, size: u64) -> ImageError {
    ImageError::Invalid(format!(
        "image.uri {uri} is {size} bytes or more, larger than the {} MiB an image may be — send a smaller PNG, JPEG or WebP",
        MAX_IMAGE_OBJECT_BYTES / (1024 * 1024)
    ))
}

/// A local file, only inside `allowed` once both are resolved (no `..` or symlink leads out).
async fn read_file(uri: &str, path: &FsPath, allowed: &FsPath) -> Result<Bytes, ImageError> {
    let resolve = |p: &FsPath| -> Result<PathBuf, ImageError> {
        std::fs::canonicalize(p).map_err(|e| {
            ImageError::Invalid(format!(
                "image.uri {uri}: cannot open {} ({e}) — check the path",
                p.display()
            ))
        })
    };
    let (file, dir) = (resolve(path)?, resolve(allowed)?);
    if !file.starts_with(&dir) {
        return Err(ImageError::Invalid(format!(
            "image.uri {uri} resolves to {}, outside {} — name a file inside the allowed directory",
            file.display(),
            dir.display()
        )));
    }
    let unreadable =
        |e: std::io::Error| ImageError::Invalid(format!("image.uri {uri}: cannot read it ({e})"));
    let opened = tokio::fs::File::open(&file).await.map_err(unreadable)?;
    let mut bytes = Vec::new();
    opened
        .take(MAX_IMAGE_OBJECT_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_IMAGE_OBJECT_BYTES {
        return Err(too_large(uri, bytes.len() as u64));
    }
    Ok(Bytes::from(bytes))
}

/// Decodes the bytes on the blocking pool (a 4096×4096 image takes a while, and the runtime
/// keeps polling Kafka meanwhile). The decoder's words are the error, after the reference.
pub async fn decode(image: ImageBytes) -> Result<JobImage, ImageError> {
    let ImageBytes { bytes, reference } = image;
    let sha256 = sha256_hex(&bytes);
    let size_bytes = bytes.len() as u64;
    let decoded =
        tokio::task::spawn_blocking(move || t2v_pipeline::image::decode_condition_image(&bytes))
            .await
            .map_err(|e| {
                ImageError::Invalid(format!(
                    "image {reference}: the decoder failed on these bytes ({e}) — send the image as a standard PNG, JPEG or WebP"
                ))
            })?
            .map_err(|e| ImageError::Invalid(format!("image {reference}: {e}")))?;
    Ok(JobImage {
        sha256,
        size_bytes,
        decoded: Arc::new(decoded),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri_image(uri: &str) -> RequestImage {
        RequestImage {
            source: Some(Source::Uri(uri.into())),
        }
    }

    fn invalid(result: Result<ImageBytes, ImageError>) -> String {
        match result {
            Err(ImageError::Invalid(message)) => message,
            other => panic!("expected an invalid image, got {other:?}"),
        }
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbImage::from_pixel(width, height, image::Rgb([200, 10, 10]))
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[tokio::test]
    async fn uris_outside_the_allowed_prefixes_are_refused_before_any_read() {
        let jobs = JobsConfig::default();
        let none = invalid(read(&uri_image("s3://b/cat.png"), &[], &jobs).await);
        assert!(
            none.contains("storage.image_uri_prefixes is empty"),
            "{none}"
        );
        assert!(none.contains("inline"), "{none}");
        let allowed = ["s3://inputs/cats".to_string()];
        for uri in [
            "s3://other/cat.png",
            "s3://inputs/cats-evil/x.png",
            "gs://inputs/cats/x.png",
        ] {
            let why = invalid(read(&uri_image(uri), &allowed, &jobs).await);
            assert!(why.contains("not under a location"), "{uri}: {why}");
        }
        let dotted = invalid(
            read(
                &uri_image("s3://inputs/cats/../secret.png"),
                &allowed,
                &jobs,
            )
            .await,
        );
        assert!(dotted.contains("plain object key"), "{dotted}");
    }

    #[tokio::test]
    async fn local_files_are_read_only_inside_the_allowed_directory() {
        let root = tempfile::tempdir().unwrap();
        let allowed_dir = root.path().join("images");
        std::fs::create_dir(&allowed_dir).unwrap();
        std::fs::write(allowed_dir.join("cat.png"), png(4, 4)).unwrap();
        std::fs::write(root.path().join("secret.png"), png(4, 4)).unwrap();
        std::os::unix::fs::symlink(root.path().join("secret.png"), allowed_dir.join("link.png"))
            .unwrap();
        let prefixes = [format!("file://{}", allowed_dir.display())];
        let jobs = JobsConfig::default();
        let uri = |p: &FsPath| uri_image(&format!("file://{}", p.display()));

        let read_back = read(&uri(&allowed_dir.join("cat.png")), &prefixes, &jobs)
            .await
            .unwrap();
        assert_eq!(read_back.bytes, png(4, 4));
        assert_eq!(
            read_back.reference,
            format!("file://{}", allowed_dir.join("cat.png").display())
        );

        let outside =
            invalid(read(&uri(&allowed_dir.join("../secret.png")), &prefixes, &jobs).await);
        assert!(outside.contains("outside"), "{outside}");
        let linked = invalid(read(&uri(&allowed_dir.join("link.png")), &prefixes, &jobs).await);
        assert!(linked.contains("outside"), "{linked}");
        let missing = invalid(read(&uri(&allowed_dir.join("none.png")), &prefixes, &jobs).await);
        assert!(missing.contains("cannot open"), "{missing}");
        let off = invalid(read(&uri(&allowed_dir.join("cat.png")), &[], &jobs).await);
        assert!(off.contains("reads no image URIs"), "{off}");
    }

    #[tokio::test]
    async fn inline_images_decode_and_bad_bytes_fail_with_the_decoders_words() {
        let bytes = png(8, 6);
        let inline = RequestImage {
            source: Some(Source::Inline(bytes.clone())),
        };
        let read_back = read(&inline, &[], &JobsConfig::default()).await.unwrap();
        assert_eq!(
            read_back.reference,
            format!("inline sha256:{}", sha256_hex(&bytes))
        );
        let image = decode(read_back).await.unwrap();
        assert_eq!((image.decoded.width(), image.decoded.height()), (8, 6));
        assert_eq!(image.sha256, sha256_hex(&bytes));
        assert_eq!(image.size_bytes, bytes.len() as u64);

        let corrupt = ImageBytes {
            bytes: Bytes::from_static(b"\x89PNG\r\n\x1a\nnot really"),
            reference: "inline sha256:00".into(),
        };
        let Err(ImageError::Invalid(why)) = decode(corrupt).await else {
            panic!("corrupt bytes decoded");
        };
        assert!(why.starts_with("image inline sha256:00: "), "{why}");
        let gif = ImageBytes {
            bytes: Bytes::from_static(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"),
            reference: "s3://b/a.gif".into(),
        };
        let Err(ImageError::Invalid(why)) = decode(gif).await else {
            panic!("a GIF decoded");
        };
        assert!(
            why.contains("GIF") || why.contains("PNG, JPEG or WebP"),
            "{why}"
        );
    }

    #[test]
    fn prefixes_are_checked_at_start() {
        for good in [
            "s3://inputs/",
            "gs://b",
            "az://container/dir",
            "file:///srv/images",
        ] {
            assert_eq!(check_prefix(good), Ok(()), "{good}");
        }
        for bad in ["inputs/", "http://host/", "s3:///dir", "file://relative"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
