//! A request's conditioning image from what a user names (`t2v submit --image PATH|URI`):
//! a URI (`s3://`, `gs://`, `az://`, `file://`) passes through, checked against the contract;
//! a local PNG, JPEG or WebP file of at most 48 KiB goes inline; a larger one is uploaded to an
//! [`ImageStore`] — the object named by the SHA-256 of its bytes, so sending the same file again
//! uploads nothing new and names the same object — and sent as its URI. Without a store a larger
//! file is refused, saying so. The worker decodes the image and has the last word on its pixels.

use std::path::Path as FsPath;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path;
use object_store::{Attribute, Attributes, ObjectStore, PutMode, PutOptions, PutPayload};
use t2v_contract::sha256_hex;
use t2v_contract::validate::{self, MAX_IMAGE_OBJECT_BYTES, MAX_INLINE_IMAGE_BYTES};
use t2v_proto::v1::{condition_image::Source, ConditionImage};

/// Why an image cannot be attached to a request.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The argument, the file or the image store URL is wrong; nothing was sent.
    #[error("{0}")]
    Invalid(String),
    /// The image store did not take the upload.
    #[error("cannot upload the image to {uri}: {source} — check the store's endpoint and credentials (AWS_*, GOOGLE_*, AZURE_*)")]
    Upload {
        uri: String,
        #[source]
        source: object_store::Error,
    },
}

/// The image formats the fleet decodes, told apart by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
    WebP,
}

impl ImageFormat {
    /// The format of `bytes` by its signature, or `None` for anything else.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
            Some(Self::Jpeg)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Self::WebP)
        } else {
            None
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::WebP => "webp",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::WebP => "image/webp",
        }
    }
}

/// An image sent by URI, checked against the contract's bounds.
pub fn from_uri(uri: &str) -> Result<ConditionImage, ImageError> {
    validate::image_uri(uri).map_err(|e| ImageError::Invalid(e.to_string()))?;
    Ok(ConditionImage {
        source: Some(Source::Uri(uri.to_string())),
    })
}

/// An image sent inline: a PNG, JPEG or WebP of at most [`MAX_INLINE_IMAGE_BYTES`].
pub fn inline(bytes: Vec<u8>) -> Result<ConditionImage, ImageError> {
    check_format(&bytes, "the image")?;
    validate::inline_image(bytes.len()).map_err(|e| ImageError::Invalid(e.to_string()))?;
    Ok(ConditionImage {
        source: Some(Source::Inline(bytes)),
    })
}

fn check_format(bytes: &[u8], what: &str) -> Result<ImageFormat, ImageError> {
    ImageFormat::sniff(bytes).ok_or_else(|| {
        ImageError::Invalid(format!(
            "{what} is not a PNG, JPEG or WebP file — convert it to one of those"
        ))
    })
}

/// `PATH|URI` as given to `--image`: a URI when it has a scheme (`s3://…`), else a local file
/// (inline up to 48 KiB; larger ones need `store`).
pub async fn from_argument(
    argument: &str,
    store: Option<&ImageStore>,
) -> Result<ConditionImage, ImageError> {
    if argument.contains("://") {
        return from_uri(argument);
    }
    let path = FsPath::new(argument);
    let bytes = std::fs::read(path).map_err(|e| {
        ImageError::Invalid(format!(
            "cannot read --image {}: {e} — give a PNG, JPEG or WebP file or an s3://, gs://, az:// or file:// URI",
            path.display()
        ))
    })?;
    let what = format!("--image {}", path.display());
    let format = check_format(&bytes, &what)?;
    if bytes.len() <= MAX_INLINE_IMAGE_BYTES {
        return inline(bytes);
    }
    let Some(store) = store else {
        return Err(ImageError::Invalid(format!(
            "{what} is {} bytes, more than the {} KiB a request can carry inline — give --image-store s3://bucket/prefix (a place the fleet's workers may read) to upload it and send its URI, or give a URI the workers can read",
            bytes.len(),
            MAX_INLINE_IMAGE_BYTES / 1024
        )));
    };
    from_uri(&store.upload(bytes, format).await?)
}

/// Where `t2v submit` uploads images too large to go inline: `s3://bucket/prefix`,
/// `gs://…`, `az://container/prefix` or `file:///dir`, with credentials and endpoint from the
/// environment the way the worker reads them (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
pub struct ImageStore {
    store: Arc<dyn ObjectStore>,
    /// `<scheme>://<bucket>`: joined with a key, the URI the request carries.
    base_uri: String,
    prefix: Path,
    /// Whether the store keeps content types (the clouds do; the local filesystem cannot).
    content_types: bool,
}

impl ImageStore {
    pub fn from_url(url: &str) -> Result<Self, ImageError> {
        let bad = |why: String| {
            ImageError::Invalid(format!(
                "--image-store {url:?}: {why} — use s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or file:///dir"
            ))
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("no scheme".into()))?;
        let built = |e: object_store::Error| bad(e.to_string());
        if scheme == "file" {
            if !rest.starts_with('/') {
                return Err(bad("not an absolute directory".into()));
            }
            std::fs::create_dir_all(rest).map_err(|e| bad(e.to_string()))?;
            let store =
                object_store::local::LocalFileSystem::new_with_prefix(rest).map_err(built)?;
            return Ok(Self {
                store: Arc::new(store),
                base_uri: format!("file://{}", rest.trim_end_matches('/')),
                prefix: Path::default(),
                content_types: false,
            });
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket or container name".into()));
        }
        let store: Arc<dyn ObjectStore> = match scheme {
            "s3" => Arc::new(
                AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(built)?,
            ),
            "gs" => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(built)?,
            ),
            "az" => Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_container_name(bucket)
                    .build()
                    .map_err(built)?,
            ),
            other => return Err(bad(format!("{other}:// is not supported"))),
        };
        Ok(Self {
            store,
            base_uri: format!("{scheme}://{bucket}"),
            prefix: Path::from(prefix.trim_matches('/')),
            content_types: true,
        })
    }

    /// The URI an image with these bytes has in this store: `<prefix>/<sha256>.<ext>`.
    pub fn uri_of(&self, bytes: &[u8], format: ImageFormat) -> String {
        format!("{}/{}", self.base_uri, self.key_of(bytes, format))
    }

    fn key_of(&self, bytes: &[u8], format: ImageFormat) -> Path {
        self.prefix
            .clone()
            .join(format!("{}.{}", sha256_hex(bytes), format.extension()))
    }

    /// Uploads `bytes` (create-only: an object of the same name already holds the same bytes)
    /// and returns its URI.
    pub async fn upload(&self, bytes: Vec<u8>, format: ImageFormat) -> Result<String, ImageError> {
        if bytes.len() as u64 > MAX_IMAGE_OBJECT_BYTES {
            return Err(ImageError::Invalid(format!(
                "the image is {} bytes, more than the {} MiB a worker reads — send a smaller image",
                bytes.len(),
                MAX_IMAGE_OBJECT_BYTES / (1024 * 1024)
            )));
        }
        let key = self.key_of(&bytes, format);
        let uri = self.uri_of(&bytes, format);
        let attributes = if self.content_types {
            Attributes::from_iter([(Attribute::ContentType, format.content_type().to_string())])
        } else {
            Attributes::new()
        };
        let options = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&key, PutPayload::from(bytes), options)
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(uri),
            Err(object_store::Error::Precondition { .. }) => Ok(uri),
            Err(source) => Err(ImageError::Upload { uri, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_of(len: usize) -> Vec<u8> {
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        bytes.resize(len, 7);
        bytes
    }

    #[tokio::test]
    async fn small_files_go_inline_and_uris_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.png");
        std::fs::write(&path, png_of(MAX_INLINE_IMAGE_BYTES)).unwrap();
        let image = from_argument(path.to_str().unwrap(), None).await.unwrap();
        assert_eq!(
            image.source,
            Some(Source::Inline(png_of(MAX_INLINE_IMAGE_BYTES)))
        );
        let uri = from_argument("s3://inputs/cat.png", None).await.unwrap();
        assert_eq!(uri.source, Some(Source::Uri("s3://inputs/cat.png".into())));
        let bad = from_argument("http://host/cat.png", None)
            .await
            .unwrap_err();
        assert!(bad.to_string().contains("image.uri"), "{bad}");
    }

    #[tokio::test]
    async fn large_files_need_a_store_and_are_named_by_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("large.png");
        let bytes = png_of(MAX_INLINE_IMAGE_BYTES + 1);
        std::fs::write(&path, &bytes).unwrap();
        let refused = from_argument(path.to_str().unwrap(), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains("--image-store"), "{refused}");
        assert!(refused.contains("49153 bytes"), "{refused}");

        let store_dir = dir.path().join("store");
        let store = ImageStore::from_url(&format!("file://{}", store_dir.display())).unwrap();
        let sent = from_argument(path.to_str().unwrap(), Some(&store))
            .await
            .unwrap();
        let expected = format!("file://{}/{}.png", store_dir.display(), sha256_hex(&bytes));
        assert_eq!(sent.source, Some(Source::Uri(expected.clone())));
        assert_eq!(
            std::fs::read(store_dir.join(format!("{}.png", sha256_hex(&bytes)))).unwrap(),
            bytes
        );
        // Sending it again names the same object and is not an error.
        let again = from_argument(path.to_str().unwrap(), Some(&store))
            .await
            .unwrap();
        assert_eq!(again.source, Some(Source::Uri(expected)));
    }

    #[tokio::test]
    async fn other_formats_and_missing_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let gif = dir.path().join("a.gif");
        std::fs::write(&gif, b"GIF89a....").unwrap();
        let why = from_argument(gif.to_str().unwrap(), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(why.contains("not a PNG, JPEG or WebP"), "{why}");
        let missing = from_argument("/nonexistent/cat.png", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cannot read --image"), "{missing}");
        assert_eq!(
            ImageFormat::sniff(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(ImageFormat::WebP)
        );
        assert_eq!(
            ImageFormat::sniff(&[0xff, 0xd8, 0xff, 0xe0]),
            Some(ImageFormat::Jpeg)
        );
        assert!(ImageStore::from_url("ftp://host/x").is_err());
        assert!(ImageStore::from_url("s3:///prefix").is_err());
    }
}
