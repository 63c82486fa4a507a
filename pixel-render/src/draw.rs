//! Drawing primitives on `RgbImage`: clipped rectangles, lines and dots (text: `font.rs`).
//!
//! Coordinates are signed so callers can draw partly off-canvas; everything clips silently.

use image::{Rgb, RgbImage};

pub(crate) const WHITE: [u8; 3] = [255, 255, 255];
pub(crate) const BLACK: [u8; 3] = [0, 0, 0];
pub const GREY: [u8; 3] = [120, 120, 120];

/// Colours that stay distinct from each other, on white and on most images (Tableau 10, with
/// the grey swapped for black so every series is visible).
pub(crate) const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [20, 20, 20],
    [188, 189, 34],
    [23, 190, 207],
];

/// Colour `i` of the palette used for series, bars and words (Tableau 10), cycling.
pub fn palette(i: usize) -> [u8; 3] {
    PALETTE[i % PALETTE.len()]
}

/// Sets one pixel if it is on the canvas.
pub(crate) fn put(img: &mut RgbImage, x: i64, y: i64, colour: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u64) < img.width() as u64 && (y as u64) < img.height() as u64 {
        img.put_pixel(x as u32, y as u32, Rgb(colour));
    }
}

/// Fills `[x0, x1) x [y0, y1)`.
pub(crate) fn fill_rect(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, colour: [u8; 3]) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    for y in y0.max(0)..y1.min(h) {
        for x in x0.max(0)..x1.min(w) {
            img.put_pixel(x as u32, y as u32, Rgb(colour));
        }
    }
}

/// Outlines `[x0, x1] x [y0, y1]` with lines `thickness` pixels wide, drawn inwards.
pub(crate) fn rect_outline(
    img: &mut RgbImage,
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
    thickness: i64,
    colour: [u8; 3],
) {
    let t = thickness.max(1);
    fill_rect(img, x0, y0, x1 + 1, y0 + t, colour);
    fill_rect(img, x0, y1 + 1 - t, x1 + 1, y1 + 1, colour);
    fill_rect(img, x0, y0, x0 + t, y1 + 1, colour);
    fill_rect(img, x1 + 1 - t, y0, x1 + 1, y1 + 1, colour);
}

/// A filled disc of radius `r` centred on `(cx, cy)`.
pub(crate) fn disc(img: &mut RgbImage, cx: i64, cy: i64, r: i64, colour: [u8; 3]) {
    for y in -r..=r {
        for x in -r..=r {
            if x * x + y * y <= r * r + r {
                put(img, cx + x, cy + y, colour);
            }
        }
    }
}

/// Black or white, whichever reads better on `background`.
pub(crate) fn contrasting(background: [u8; 3]) -> [u8; 3] {
    let [r, g, b] = background.map(f32::from);
    if 0.299 * r + 0.587 * g + 0.114 * b > 150.0 {
        BLACK
    } else {
        WHITE
    }
}

/// Nearest-neighbour resize, so individual pixels of small images stay visible.
pub(crate) fn upscale_nearest(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    RgbImage::from_fn(width, height, |x, y| {
        let sx = (x as u64 * w as u64 / width as u64) as u32;
        let sy = (y as u64 * h as u64 / height as u64) as u32;
        *img.get_pixel(sx.min(w - 1), sy.min(h - 1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(img: &RgbImage) -> usize {
        img.pixels().filter(|p| p.0 != WHITE).count()
    }

    #[test]
    fn drawing_off_canvas_clips_without_panicking() {
        let mut img = RgbImage::from_pixel(10, 10, Rgb(WHITE));
        disc(&mut img, 100, 100, 5, BLACK);
        fill_rect(&mut img, -9, -9, -1, 20, BLACK);
        assert_eq!(changed(&img), 0);
        // Only the top edge of this outline is on the canvas: one row of 2 px across it.
        rect_outline(&mut img, -5, 2, 20, 20, 2, BLACK);
        assert_eq!(changed(&img), 2 * 10);
    }

    #[test]
    fn upscale_keeps_blocks_of_source_pixels() {
        let src = RgbImage::from_fn(2, 2, |x, y| Rgb([x as u8 * 100, y as u8 * 100, 0]));
        let big = upscale_nearest(&src, 8, 8);
        assert_eq!(big.get_pixel(3, 3).0, [0, 0, 0]);
        assert_eq!(big.get_pixel(4, 0).0, [100, 0, 0]);
        assert_eq!(big.get_pixel(7, 7).0, [100, 100, 0]);
    }
}
