//! Conditioning images for requests: PNGs whose halves have known colours (so a frame can be
//! told apart from the synthetic backend's gradients), a GIF, putting them in the stack's bucket,
//! and reading the first frame of a stored MP4 back with ffmpeg.

use std::process::Command;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use crate::s3::bucket;
use crate::stack::assert_success;

/// Left half of [`halves_png`].
pub const LEFT: [u8; 3] = [230, 20, 20];
/// Right half of [`halves_png`].
pub const RIGHT: [u8; 3] = [20, 20, 230];

/// A `width`×`height` PNG, its left half [`LEFT`] and its right half [`RIGHT`].
pub fn halves_png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, _| {
        image::Rgb(if x < width / 2 { LEFT } else { RIGHT })
    });
    encode(
        image::DynamicImage::ImageRgb8(image),
        image::ImageFormat::Png,
    )
}

/// The colour of [`plain_png`].
pub const PLAIN: [u8; 3] = [90, 160, 40];

/// A `width`×`height` PNG of one colour (small however large: it compresses to almost nothing).
pub fn plain_png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb(PLAIN));
    encode(
        image::DynamicImage::ImageRgb8(image),
        image::ImageFormat::Png,
    )
}

fn encode(image: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut out), format)
        .expect("encode a test image");
    out
}

/// A valid 1×1 GIF89a: a format the fleet does not take.
pub fn gif() -> Vec<u8> {
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;".to_vec()
}

/// Stores `bytes` at `key` in the stack's bucket and returns its `s3://` URI.
pub async fn put_object(key: &str, bytes: Vec<u8>) -> String {
    bucket()
        .put(&Path::from(key), PutPayload::from(bytes))
        .await
        .expect("put a test object");
    format!("s3://{}/{key}", crate::stack::stack_env()["T2V_S3_BUCKET"])
}

/// The first frame of an MP4, decoded by ffmpeg: (width, height, RGB24 bytes).
pub fn first_frame(mp4: &[u8], width: u32, height: u32) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("video.mp4");
    std::fs::write(&video, mp4).unwrap();
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&video)
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg runs (install ffmpeg)");
    assert_success(&out);
    assert_eq!(
        out.stdout.len(),
        (width * height * 3) as usize,
        "the first frame is {width}x{height} RGB"
    );
    out.stdout
}

/// The mean colour of the pixels of `rgb` (a `width`-wide frame) in columns `columns`, rows all.
pub fn mean_colour(rgb: &[u8], width: u32, columns: std::ops::Range<u32>) -> [f64; 3] {
    let mut sum = [0f64; 3];
    let mut count = 0f64;
    for (i, pixel) in rgb.chunks_exact(3).enumerate() {
        let x = i as u32 % width;
        if columns.contains(&x) {
            for c in 0..3 {
                sum[c] += f64::from(pixel[c]);
            }
            count += 1.0;
        }
    }
    sum.map(|s| s / count)
}

/// Whether `colour` is within `tolerance` of `expected` on every channel (the video is lossy).
pub fn close_to(colour: [f64; 3], expected: [u8; 3], tolerance: f64) -> bool {
    colour
        .iter()
        .zip(expected)
        .all(|(got, want)| (got - f64::from(want)).abs() <= tolerance)
}
