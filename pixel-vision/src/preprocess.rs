//! Image preprocessing as the references do it: decode, resize the longest side to the model
//! size (bilinear), normalize with the backbone's mean / std, pad bottom / right with zeros.
use crate::conv::Images;
use crate::error::{VisionError, VisionResult};
use dfdx::prelude::*;
use image::imageops::FilterType;
use image::RgbImage;
use std::path::Path;

/// Per-channel mean and std in 0-255 units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// SAM's `pixel_mean` / `pixel_std` (ImageNet).
pub const SAM_NORMALIZATION: Normalization = Normalization {
    mean: [123.675, 116.28, 103.53],
    std: [58.395, 57.12, 57.375],
};

/// OpenAI CLIP's mean / std, which EVA02 (and scenic's GIT backbone) use.
#[allow(clippy::excessive_precision)]
pub const CLIP_NORMALIZATION: Normalization = Normalization {
    mean: [0.48145466 * 255.0, 0.4578275 * 255.0, 0.40821073 * 255.0],
    std: [0.26862954 * 255.0, 0.26130258 * 255.0, 0.27577711 * 255.0],
};

/// An image ready for a backbone: `[3, size, size]` values and where the image lies in them.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessed {
    pub pixels: Vec<f32>,
    pub size: usize,
    /// `(height, width)` of the resized image inside the padded square.
    pub resized: (usize, usize),
    /// `(height, width)` of the input image.
    pub original: (usize, usize),
}

impl Preprocessed {
    /// Factor from original pixel coordinates to model-input coordinates.
    pub fn scale(&self) -> f32 {
        self.resized.0 as f32 / self.original.0 as f32
    }
}

/// Decodes a PNG or JPEG file to RGB; the format is read from the bytes, not the extension.
/// A file that cannot be read and one that cannot be decoded (a truncated one included) are
/// different errors, both naming the path.
pub fn load_rgb(path: &Path) -> VisionResult<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| VisionError::io(path, e))?;
    let img = image::load_from_memory(&bytes).map_err(|e| VisionError::Image {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(img.to_rgb8())
}

/// segment-anything's `ResizeLongestSide.get_preprocess_shape`: the longest side becomes
/// `target`, the other is scaled and rounded half up.
pub fn longest_side_shape(height: usize, width: usize, target: usize) -> (usize, usize) {
    let scale = target as f64 / height.max(width) as f64;
    let h = (height as f64 * scale + 0.5) as usize;
    let w = (width as f64 * scale + 0.5) as usize;
    (h.max(1), w.max(1))
}

/// Resizes (longest side to `size`), normalizes and pads one image.
pub fn preprocess(img: &RgbImage, size: usize, norm: &Normalization) -> Preprocessed {
    let (h0, w0) = (img.height() as usize, img.width() as usize);
    let (h, w) = longest_side_shape(h0, w0, size);
    let resized = if (h, w) == (h0, w0) {
        img.clone()
    } else {
        image::imageops::resize(img, w as u32, h as u32, FilterType::Triangle)
    };
    let mut pixels = vec![0.0f32; 3 * size * size];
    for (x, y, p) in resized.enumerate_pixels() {
        let (x, y) = (x as usize, y as usize);
        for c in 0..3 {
            pixels[(c * size + y) * size + x] = (p[c] as f32 - norm.mean[c]) / norm.std[c];
        }
    }
    Preprocessed {
        pixels,
        size,
        resized: (h, w),
        original: (h0, w0),
    }
}

/// Stacks preprocessed images of one size into `pixel_values` `[B, 3, size, size]`.
pub fn to_images<D: Device<f32>>(dev: &D, batch: &[Preprocessed]) -> VisionResult<Images<D>> {
    let size = batch.first().map_or(0, |p| p.size);
    if batch.iter().any(|p| p.size != size) {
        return Err(VisionError::Input(
            "images of one batch must share a size".into(),
        ));
    }
    let values: Vec<f32> = batch
        .iter()
        .flat_map(|p| p.pixels.iter().copied())
        .collect();
    Ok(dev.tensor_from_vec(values, (batch.len(), 3, size, size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_side_becomes_the_target_and_padding_is_zero() {
        assert_eq!(longest_side_shape(480, 640, 1024), (768, 1024));
        let img = RgbImage::from_pixel(4, 2, image::Rgb([123, 116, 103]));
        let p = preprocess(&img, 8, &SAM_NORMALIZATION);
        assert_eq!(p.resized, (4, 8));
        // Inside the image: (v - mean) / std; below it: zero padding.
        assert!((p.pixels[0] - (123.0 - 123.675) / 58.395).abs() < 1e-6);
        assert_eq!(p.pixels[7 * 8], 0.0);
        assert_eq!(p.scale(), 2.0);
    }

    #[test]
    fn png_files_decode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        RgbImage::from_pixel(3, 5, image::Rgb([1, 2, 3]))
            .save(&path)
            .unwrap();
        let img = load_rgb(&path).unwrap();
        assert_eq!((img.width(), img.height()), (3, 5));
    }

    #[test]
    fn a_missing_image_is_an_error_naming_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.png");
        let err = load_rgb(&path).unwrap_err();
        assert!(matches!(err, VisionError::Io { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("missing.png"), "{message}");
    }

    #[test]
    fn an_undecodable_image_is_an_error_naming_its_path() {
        let dir = tempfile::tempdir().unwrap();
        // A PNG signature followed by garbage, and a file that is no image at all.
        let garbage = dir.path().join("garbage.png");
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        bytes.extend_from_slice(b"this is not a png chunk stream");
        std::fs::write(&garbage, bytes).unwrap();
        let text = dir.path().join("notes.png");
        std::fs::write(&text, "hello").unwrap();
        for path in [garbage, text] {
            let err = load_rgb(&path).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, VisionError::Image { .. }), "{message}");
            assert!(message.contains(&*path.to_string_lossy()), "{message}");
            assert!(message.starts_with("cannot decode image"), "{message}");
        }
    }
}
