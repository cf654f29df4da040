//! The conditioning image of image-to-video requests: decoded from PNG, JPEG or WebP bytes,
//! then resized and normalised exactly as diffusers' Wan image pipelines treat a PIL image.
//!
//! The reference path a user takes is `diffusers.utils.load_image` (EXIF orientation applied,
//! then `convert("RGB")`) followed by `VideoProcessor.preprocess(image, height, width)`:
//! `VaeImageProcessor.resize` with its defaults (`resize_mode="default"`: the image is stretched
//! to `width × height`, no crop; `resample="lanczos"`, `reducing_gap=None`), `pil_to_numpy`
//! (`u8 / 255` in f32) and `normalize` (`2x − 1`). [`ConditionImage::preprocess`] does the same;
//! the Lanczos filter is Pillow's own fixed-point resampling ([`lanczos`]), so the pixels are
//! identical to Pillow's.
//!
//! Decoding is the `image` crate's. PNG and WebP (lossless) decode to the same pixels as
//! Pillow; a JPEG's pixels may differ from Pillow's libjpeg-turbo by rounding in the IDCT and
//! chroma upsampling (a few levels on some pixels). 16-bit PNGs convert as Pillow converts them
//! (see `to_rgb8`).
//!
//! When a request leaves the size to the model, [`size_for_image`] picks it as diffusers' I2V
//! examples and the official Wan code do: the image's aspect ratio at the model's default area.

mod lanczos;

use std::io::Cursor;
use std::sync::Arc;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use tch::{Device, Kind, Tensor};

use crate::error::{PipelineError, Result};

/// The largest width and height accepted (the request contract's bound).
pub const MAX_IMAGE_SIDE: u32 = 4096;

/// A decoded conditioning image: 8-bit RGB, rows top to bottom, EXIF orientation applied.
/// Cloning is cheap (the pixels are shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionImage {
    width: u32,
    height: u32,
    /// `height · width · 3` bytes, RGB interleaved.
    rgb: Arc<[u8]>,
}

/// Decodes a conditioning image, the format sniffed from the bytes (not a name or a MIME type).
/// Refuses formats other than PNG, JPEG and WebP, images larger than
/// [`MAX_IMAGE_SIDE`]² (before decoding the pixels), and corrupt or truncated files.
pub fn decode_condition_image(bytes: &[u8]) -> Result<ConditionImage> {
    let format = image::guess_format(bytes).map_err(|_| {
        image_error("not a PNG, JPEG or WebP file (unrecognised header); send the image as PNG, JPEG or WebP")
    })?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP
    ) {
        return Err(image_error(format!(
            "{} images are not supported; convert it to PNG, JPEG or WebP",
            format_name(format)
        )));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| decode_error(format, &e))?;
    let (width, height) = decoder.dimensions();
    check_size(width, height)?;
    let orientation = decoder
        .orientation()
        .map_err(|e| decode_error(format, &e))?;
    let mut decoded = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(format, &e))?;
    decoded.apply_orientation(orientation);
    Ok(ConditionImage::from_rgb8(to_rgb8(decoded)))
}

/// `convert("RGB")` of Pillow: alpha dropped, grey replicated; 16-bit colour (and grey with
/// alpha) keeps the high byte of each sample, as Pillow opens such PNGs; 16-bit grey (Pillow's
/// `I;16`) is clipped to 255, as Pillow's `I;16 → RGB` conversion does.
fn to_rgb8(image: DynamicImage) -> image::RgbImage {
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma16(grey) => {
            let (width, height) = grey.dimensions();
            let rgb = grey
                .into_raw()
                .into_iter()
                .flat_map(|v| [v.min(255) as u8; 3])
                .collect();
            image::RgbImage::from_raw(width, height, rgb)
                .unwrap_or_else(|| image::RgbImage::new(width, height))
        }
        DynamicImage::ImageRgb16(_)
        | DynamicImage::ImageRgba16(_)
        | DynamicImage::ImageLumaA16(_) => {
            let rgb16 = image.to_rgb16();
            let (width, height) = rgb16.dimensions();
            let high_bytes = rgb16
                .into_raw()
                .into_iter()
                .map(|v| (v >> 8) as u8)
                .collect();
            image::RgbImage::from_raw(width, height, high_bytes)
                .unwrap_or_else(|| image::RgbImage::new(width, height))
        }
        other => other.to_rgb8(),
    }
}

impl ConditionImage {
    /// An image from RGB bytes (`height · width · 3`, rows top to bottom).
    pub fn from_rgb(width: u32, height: u32, rgb: Vec<u8>) -> Result<Self> {
        check_size(width, height)?;
        let expected = width as usize * height as usize * 3;
        if rgb.len() != expected {
            return Err(image_error(format!(
                "{} bytes for a {width}×{height} RGB image, expected {expected}",
                rgb.len()
            )));
        }
        Ok(Self {
            width,
            height,
            rgb: rgb.into(),
        })
    }

    fn from_rgb8(image: image::RgbImage) -> Self {
        let (width, height) = image.dimensions();
        Self {
            width,
            height,
            rgb: image.into_raw().into(),
        }
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// The RGB bytes, `height · width · 3`, rows top to bottom.
    pub fn rgb(&self) -> &[u8] {
        &self.rgb
    }

    /// Pillow's `Image.resize((width, height), Image.LANCZOS)` of this RGB image: the same image
    /// when the size already matches, else Pillow's two-pass fixed-point Lanczos.
    pub fn resize_lanczos(&self, width: u32, height: u32) -> Result<Self> {
        check_size(width, height)?;
        if (width, height) == (self.width, self.height) {
            return Ok(self.clone());
        }
        let rgb = lanczos::resize_rgb(&self.rgb, (self.width, self.height), (width, height));
        Self::from_rgb(width, height, rgb)
    }

    /// `[1, 3, H, W]` f32 in [−1, 1] on the CPU: `2 · (u8 / 255) − 1`, each operation rounded
    /// to f32 as numpy and torch do.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut planar = vec![0f32; 3 * w * h];
        for (pixel, rgb) in self.rgb.chunks_exact(3).enumerate() {
            for (channel, &value) in rgb.iter().enumerate() {
                planar[channel * w * h + pixel] = 2.0f32 * (f32::from(value) / 255.0f32) - 1.0f32;
            }
        }
        Ok(Tensor::f_from_slice(&planar)?
            .f_view([1, 3, h as i64, w as i64])?
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Float)?)
    }

    /// `VideoProcessor.preprocess(image, height, width)` of diffusers: resized (stretched) to
    /// `width × height` with Pillow's Lanczos, then `[1, 3, H, W]` f32 in [−1, 1] on the CPU.
    pub fn preprocess(&self, width: i64, height: i64) -> Result<Tensor> {
        let side = |value: i64, field: &str| {
            u32::try_from(value)
                .ok()
                .filter(|v| (1..=MAX_IMAGE_SIDE * 4).contains(v))
                .ok_or_else(|| PipelineError::invalid(field, format!("{value} is out of range")))
        };
        self.resize_lanczos(side(width, "width")?, side(height, "height")?)?
            .to_tensor()
    }
}

/// The frame size (width, height) for `image` when the request leaves it unset, as diffusers'
/// I2V examples and the official Wan `generate.py` choose it: the image's aspect ratio at
/// `max_area` pixels (the model's default width × height), each side rounded to the nearest
/// integer (half to even, as Python's `round`), then down to a multiple of `multiple` (the VAE's
/// spatial factor × the transformer's patch size), and at least `multiple`:
///
/// ```text
/// aspect = image.height / image.width
/// height = round(sqrt(max_area · aspect)) // multiple · multiple
/// width  = round(sqrt(max_area / aspect)) // multiple · multiple
/// ```
pub fn size_for_image(image: &ConditionImage, max_area: i64, multiple: i64) -> (i64, i64) {
    let aspect = f64::from(image.height) / f64::from(image.width);
    let side = |value: f64| {
        let rounded = value.sqrt().round_ties_even() as i64;
        (rounded / multiple * multiple).max(multiple)
    };
    (
        side(max_area as f64 / aspect),
        side(max_area as f64 * aspect),
    )
}

fn check_size(width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(image_error(format!(
            "{width}×{height} pixels is empty; send a non-empty image"
        )));
    }
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(image_error(format!(
            "{width}×{height} pixels exceeds the limit of {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE}; downscale it first"
        )));
    }
    Ok(())
}

fn decode_error(format: ImageFormat, error: &image::ImageError) -> PipelineError {
    match error {
        image::ImageError::Limits(_) => image_error(format!(
            "the {} is larger than {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} pixels; downscale it first",
            format_name(format)
        )),
        image::ImageError::Unsupported(e) => image_error(format!(
            "this {} uses a feature the decoder does not support ({e}); re-encode it as a plain PNG or JPEG",
            format_name(format)
        )),
        other => image_error(format!(
            "the {} is corrupt or truncated ({other}); re-export or re-upload it",
            format_name(format)
        )),
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::Avif => "AVIF",
        ImageFormat::Ico => "ICO",
        _ => "this format's",
    }
}

fn image_error(message: impl Into<String>) -> PipelineError {
    PipelineError::Image {
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use image::ImageEncoder as _;

    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let pixels = (0..width * height * 3)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let image = image::RgbImage::from_raw(width, height, pixels).unwrap();
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .unwrap();
        bytes
    }

    #[test]
    fn a_png_decodes_to_its_pixels() {
        let image = decode_condition_image(&png(5, 3)).unwrap();
        assert_eq!((image.width(), image.height()), (5, 3));
        assert_eq!(image.rgb()[..6], [0, 7, 14, 21, 28, 35]);
    }

    /// A 16-bit PNG written by hand: `color_type` 0 (grey) or 2 (RGB), one row.
    fn png16(samples: &[u16], width: u32, color_type: u8) -> Vec<u8> {
        let mut bytes = Vec::new();
        let color = match color_type {
            0 => image::ExtendedColorType::L16,
            _ => image::ExtendedColorType::Rgb16,
        };
        let raw: Vec<u8> = samples.iter().flat_map(|v| v.to_ne_bytes()).collect();
        image::codecs::png::PngEncoder::new(&mut bytes)
            .write_image(&raw, width, 1, color)
            .unwrap();
        bytes
    }

    #[test]
    fn sixteen_bit_pngs_convert_as_pillow_does() {
        // Pillow: RGB;16 keeps the high byte; I;16 → RGB clips at 255
        let rgb = decode_condition_image(&png16(&[0x1280, 0xff7f, 0x0181], 1, 2)).unwrap();
        assert_eq!(rgb.rgb(), [0x12, 0xff, 0x01]);
        let grey = decode_condition_image(&png16(&[0, 200, 1300], 3, 0)).unwrap();
        assert_eq!(grey.rgb(), [0, 0, 0, 200, 200, 200, 255, 255, 255]);
    }

    #[test]
    fn bad_images_are_clear_errors() {
        let message = |bytes: &[u8]| decode_condition_image(bytes).unwrap_err().to_string();
        assert!(message(b"hello world").contains("PNG, JPEG or WebP"));
        assert!(message(b"GIF89a\x01\x00\x01\x00").contains("GIF images are not supported"));
        let truncated = png(64, 64);
        let cut = message(&truncated[..truncated.len() / 2]);
        assert!(cut.contains("corrupt or truncated"), "{cut}");
        let large = message(&png(MAX_IMAGE_SIDE + 1, 1));
        assert!(
            large.contains("exceeds the limit") || large.contains("larger than"),
            "{large}"
        );
    }

    #[test]
    fn normalisation_is_pil_to_numpy_then_2x_minus_1() {
        let image = ConditionImage::from_rgb(1, 1, vec![0, 128, 255]).unwrap();
        let values = Vec::<f32>::try_from(image.to_tensor().unwrap().flatten(0, -1)).unwrap();
        assert_eq!(values, [-1.0, 2.0f32 * (128.0f32 / 255.0) - 1.0, 1.0]);
    }

    #[test]
    fn size_for_image_keeps_the_aspect_at_the_area() {
        let portrait = ConditionImage::from_rgb(600, 900, vec![0; 600 * 900 * 3]).unwrap();
        // sqrt(399360 · 1.5) = 773.98 → 774 → 768; sqrt(399360 / 1.5) = 515.99 → 516 → 512
        assert_eq!(size_for_image(&portrait, 832 * 480, 16), (512, 768));
        let wide = ConditionImage::from_rgb(1000, 10, vec![0; 1000 * 10 * 3]).unwrap();
        // sqrt(399360 · 0.01) = 63.2 → 63 → 48
        assert_eq!(size_for_image(&wide, 832 * 480, 16).1, 48);
    }
}
