//! Pictures of training and results, as PNG: loss curves, bar charts with error bars, sample
//! panels (image, per-word points, captions, boxes) and mask overlays.
//!
//! Everything draws into a plain `image::RgbImage`: the charts through `plotters`' bitmap
//! backend, the panels with a few primitives of our own, and all text with one font embedded in
//! the binary (DejaVu Sans, rasterized anti-aliased by `ab_glyph`; `font.rs`), so reports look
//! the same on every machine and render on a headless CI machine with no fonts installed. Each
//! `*_png` function is its `*_image` twin plus [`save_png`]; the twins are what tests inspect.

mod draw;
mod font;
mod panels;
mod plot;

use std::path::{Path, PathBuf};

pub use draw::palette;
/// The grey of ground-truth boxes and prompts in panels.
pub use draw::GREY;
pub use panels::{mask_overlay, samples_image, samples_png, SamplePanel};
pub use plot::{
    bar_chart_image, bar_chart_png, loss_curves_image, loss_curves_png, BarGroup, Scale,
};

/// What went wrong while rendering; no rendering function panics on bad input.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// There was nothing to draw (no series, an empty series, no panels...).
    #[error("nothing to draw: {0}")]
    Empty(String),
    /// A number that must be finite was NaN or infinite.
    #[error("{what} is {value}, which cannot be drawn; drop or fix non-finite values first")]
    NonFinite { what: String, value: f64 },
    /// Log-scale plots need positive values.
    #[error("{what} is {value}, which has no logarithm; use Scale::Linear or drop it")]
    NonPositive { what: String, value: f64 },
    /// The plotting library failed while drawing a chart.
    #[error("could not draw the chart: {0}")]
    Draw(String),
    /// Some other argument was unusable.
    #[error("invalid {what}: {problem}")]
    Invalid { what: String, problem: String },
    /// The PNG could not be encoded or written.
    #[error("could not write PNG {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
}

/// Checks that `value` is finite, naming it in the error.
pub(crate) fn finite(value: f64, what: impl FnOnce() -> String) -> Result<f64, RenderError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(RenderError::NonFinite {
            what: what(),
            value,
        })
    }
}

/// Writes `image` as a PNG at `path`, creating missing parent folders.
pub fn save_png(image: &image::RgbImage, path: impl AsRef<Path>) -> Result<(), RenderError> {
    let path = path.as_ref();
    let write_error = |source| RenderError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| write_error(image::ImageError::IoError(e)))?;
    }
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_png_round_trips_and_reports_the_path_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/out.png");
        let img = image::RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3]));
        save_png(&img, &path).unwrap();
        let back = image::open(&path).unwrap().to_rgb8();
        assert_eq!(back, img);

        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let err = save_png(&img, blocker.join("out.png")).unwrap_err();
        assert!(err.to_string().contains("file/out.png"), "{err}");
    }
}
