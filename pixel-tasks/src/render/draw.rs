//! Drawing primitives on `RgbImage`: clipped rectangles, lines, dots and bitmap text.
//!
//! Coordinates are signed so callers can draw partly off-canvas; everything clips silently.

use image::{Rgb, RgbImage};

/// Glyph cell size of the embedded font (font8x8, public domain) at scale 1.
pub(crate) const GLYPH: i64 = 8;

pub(crate) const WHITE: [u8; 3] = [255, 255, 255];
pub(crate) const BLACK: [u8; 3] = [0, 0, 0];
pub(crate) const GREY: [u8; 3] = [120, 120, 120];
pub(crate) const LIGHT_GREY: [u8; 3] = [225, 225, 225];

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

/// Clips the segment `a`-`b` to the box `[lo, hi]` on both axes (Liang-Barsky); `None` if it
/// misses the box.
fn clip_segment(
    a: (f64, f64),
    b: (f64, f64),
    lo: (f64, f64),
    hi: (f64, f64),
) -> Option<((f64, f64), (f64, f64))> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [
        (-dx, a.0 - lo.0),
        (dx, hi.0 - a.0),
        (-dy, a.1 - lo.1),
        (dy, hi.1 - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let r = q / p;
            if p < 0.0 {
                t0 = t0.max(r);
            } else {
                t1 = t1.min(r);
            }
        }
    }
    (t0 <= t1).then_some((
        (a.0 + t0 * dx, a.1 + t0 * dy),
        (a.0 + t1 * dx, a.1 + t1 * dy),
    ))
}

/// A line from `a` to `b` with a square brush `thickness` pixels wide (Bresenham), clipped to
/// the canvas first so far-off or non-finite ends cost nothing.
pub(crate) fn line(
    img: &mut RgbImage,
    a: (f64, f64),
    b: (f64, f64),
    thickness: i64,
    colour: [u8; 3],
) {
    if !(a.0.is_finite() && a.1.is_finite() && b.0.is_finite() && b.1.is_finite()) {
        return;
    }
    let margin = thickness as f64 + 1.0;
    let hi = (img.width() as f64 + margin, img.height() as f64 + margin);
    let Some((a, b)) = clip_segment(a, b, (-margin, -margin), hi) else {
        return;
    };
    let (mut x, mut y) = (a.0.round() as i64, a.1.round() as i64);
    let b = (b.0.round() as i64, b.1.round() as i64);
    let dx = (b.0 - x).abs();
    let dy = -(b.1 - y).abs();
    let sx = if x < b.0 { 1 } else { -1 };
    let sy = if y < b.1 { 1 } else { -1 };
    let mut err = dx + dy;
    let lo = -(thickness - 1) / 2;
    let hi = thickness / 2;
    loop {
        for oy in lo..=hi {
            for ox in lo..=hi {
                put(img, x + ox, y + oy, colour);
            }
        }
        if (x, y) == b {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
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

/// Width in pixels of `text` at `scale`.
pub(crate) fn text_width(text: &str, scale: i64) -> i64 {
    text.chars().count() as i64 * GLYPH * scale
}

/// Draws `text` with its top-left corner at `(x, y)`; characters outside ASCII print as `?`.
/// Returns the x just past the text.
pub(crate) fn text(
    img: &mut RgbImage,
    x: i64,
    y: i64,
    s: &str,
    scale: i64,
    colour: [u8; 3],
) -> i64 {
    let scale = scale.max(1);
    let mut pen = x;
    for ch in s.chars() {
        let code = if ch.is_ascii() {
            ch as usize
        } else {
            '?' as usize
        };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let px = pen + col as i64 * scale;
                    let py = y + row as i64 * scale;
                    fill_rect(img, px, py, px + scale, py + scale, colour);
                }
            }
        }
        pen += GLYPH * scale;
    }
    pen
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
    fn text_draws_pixels_inside_its_cell_only() {
        let mut img = RgbImage::from_pixel(40, 20, Rgb(WHITE));
        let end = text(&mut img, 2, 3, "Hi", 1, BLACK);
        assert_eq!(end, 18);
        assert!(changed(&img) > 10);
        for (x, y, p) in img.enumerate_pixels() {
            if p.0 != WHITE {
                assert!((2..18).contains(&x) && (3..11).contains(&y), "({x}, {y})");
            }
        }
    }

    #[test]
    fn drawing_off_canvas_clips_without_panicking() {
        let mut img = RgbImage::from_pixel(10, 10, Rgb(WHITE));
        line(&mut img, (-50.0, -50.0), (60.0, 60.0), 3, BLACK);
        rect_outline(&mut img, -5, -5, 20, 20, 2, BLACK);
        disc(&mut img, 100, 100, 5, BLACK);
        text(&mut img, -30, 5, "é off", 2, BLACK);
        line(&mut img, (-1e300, 5.0), (1e300, 5.0), 1, BLACK);
        line(&mut img, (f64::NAN, 5.0), (1.0, 5.0), 1, BLACK);
        line(&mut img, (-10.0, -10.0), (-5.0, -1.0), 1, BLACK);
        assert!(changed(&img) > 0);
    }

    #[test]
    fn line_reaches_both_ends() {
        let mut img = RgbImage::from_pixel(10, 10, Rgb(WHITE));
        line(&mut img, (1.0, 2.0), (8.0, 7.0), 1, BLACK);
        assert_eq!(img.get_pixel(1, 2).0, BLACK);
        assert_eq!(img.get_pixel(8, 7).0, BLACK);
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
