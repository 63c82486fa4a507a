//! The embedded font, DejaVu Sans: anti-aliased text on an `RgbImage` (rasterized by
//! `ab_glyph`), and the same font registered with plotters for the charts.
//!
//! The font ships inside the binary (`assets/fonts/DejaVuSans.ttf`, licence beside it), so
//! nothing looks for system fonts and a picture comes out the same on every machine.

use std::sync::LazyLock;

use ab_glyph::{point, Font, FontRef, GlyphId, PxScale, ScaleFont};
use image::RgbImage;

use super::RenderError;

/// DejaVu Sans 2.37 (Bitstream Vera licence: `assets/fonts/LICENSE-DejaVu.txt`).
const FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

static FONT: LazyLock<FontRef<'static>> = LazyLock::new(|| {
    FontRef::try_from_slice(FONT_BYTES)
        .expect("assets/fonts/DejaVuSans.ttf is embedded at build time and is a TrueType font")
});

/// The family name the charts ask plotters for; registered on first use by [`for_plotters`].
pub(crate) const FAMILY: &str = "pixel-llm DejaVu Sans";

static REGISTERED: LazyLock<bool> = LazyLock::new(|| {
    plotters::style::register_font(FAMILY, plotters::style::FontStyle::Normal, FONT_BYTES).is_ok()
});

/// Makes [`FAMILY`] available to plotters' text styles (once per process).
pub(crate) fn for_plotters() -> Result<(), RenderError> {
    if *REGISTERED {
        Ok(())
    } else {
        Err(RenderError::Draw(
            "plotters refused the embedded font DejaVuSans.ttf".into(),
        ))
    }
}

/// The glyphs of `s` at `size` pixels (ascent to descent), each with its pen position from the
/// start of the text (advance widths and kerning), and the advance of the whole text.
fn layout(s: &str, size: f32) -> (Vec<(GlyphId, f32)>, f32) {
    let font = FONT.as_scaled(PxScale::from(size));
    let mut pen = 0.0f32;
    let mut previous: Option<GlyphId> = None;
    let mut glyphs = Vec::with_capacity(s.len());
    for c in s.chars() {
        let id = font.glyph_id(c);
        if let Some(p) = previous {
            pen += font.kern(p, id);
        }
        glyphs.push((id, pen));
        pen += font.h_advance(id);
        previous = Some(id);
    }
    (glyphs, pen)
}

/// Width in pixels of `s` at `size`: where the next word may start (rounded up).
pub(crate) fn text_width(s: &str, size: f32) -> i64 {
    layout(s, size).1.ceil() as i64
}

/// Height in pixels of one line of text at `size`: ascent, descent and line gap, rounded up.
pub(crate) fn line_height(size: f32) -> i64 {
    let font = FONT.as_scaled(PxScale::from(size));
    (font.height() + font.line_gap()).ceil() as i64
}

/// `s` if it fits in `max_width` pixels at `size`, else its longest prefix that fits with "…"
/// after it (empty if not even that fits).
pub(crate) fn truncate(s: &str, size: f32, max_width: i64) -> String {
    if text_width(s, size) <= max_width {
        return s.to_string();
    }
    // The pen position of glyph n is the width of the first n characters (one glyph each), so
    // the longest prefix leaving room for the ellipsis is found in one pass; kerning against
    // the ellipsis is checked exactly on the way down.
    let room = max_width as f32 - layout("…", size).1;
    let (glyphs, _) = layout(s, size);
    let chars: Vec<char> = s.chars().collect();
    let longest = glyphs.iter().take_while(|(_, pen)| *pen <= room).count();
    (0..longest.min(chars.len()))
        .rev()
        .map(|n| chars[..n].iter().collect::<String>() + "…")
        .find(|t| text_width(t, size) <= max_width)
        .unwrap_or_default()
}

/// Distance in pixels from the top of a line of text at `size` to its baseline.
pub(crate) fn ascent(size: f32) -> i64 {
    FONT.as_scaled(PxScale::from(size)).ascent().round() as i64
}

/// Distance in pixels from the top of a line of text at `size` to the middle of its capitals
/// and digits: where a label centred on a tick or a legend swatch puts that tick.
pub(crate) fn middle(size: f32) -> i64 {
    let font = FONT.as_scaled(PxScale::from(size));
    let cap_height = FONT
        .outline(font.glyph_id('H'))
        .map_or(font.ascent() * 0.75, |o| {
            (o.bounds.max.y - o.bounds.min.y).abs() * font.v_scale_factor()
        });
    ascent(size) - (cap_height / 2.0).round() as i64
}

/// Rasterizes `s` at `size` pixels with the top of its line at `y` and its pen starting at `x`:
/// calls `put(x, y, coverage)` for each pixel the glyphs touch (coverage in 0..=1; a pixel
/// two glyphs share comes twice). Characters the font lacks print as its empty box. Returns
/// `x` + [`text_width`].
pub(crate) fn rasterize(
    x: i64,
    y: i64,
    s: &str,
    size: f32,
    mut put: impl FnMut(i64, i64, f32),
) -> i64 {
    let scale = PxScale::from(size);
    // Whole-pixel baseline: stems and the tops of lower-case letters land on pixel rows.
    let baseline = (y + ascent(size)) as f32;
    let (glyphs, advance) = layout(s, size);
    for (id, pen) in glyphs {
        let glyph = id.with_scale_and_position(scale, point(x as f32 + pen, baseline));
        let Some(outlined) = FONT.outline_glyph(glyph) else {
            continue; // a space
        };
        let bounds = outlined.px_bounds();
        let (left, top) = (bounds.min.x as i64, bounds.min.y as i64);
        outlined.draw(|gx, gy, coverage| {
            if coverage > 0.0 {
                put(left + gx as i64, top + gy as i64, coverage.min(1.0));
            }
        });
    }
    x + advance.ceil() as i64
}

/// Draws `s` at `size` pixels with the top of its line at `y` and its pen starting at `x`,
/// blending `colour` in by each pixel's coverage (anti-aliased) and clipping to the canvas.
/// The ink stays within `x..x + text_width` and `y..y + line_height`, give or take a pixel of
/// side bearing or anti-aliased edge (a "T" or "j" at the start, "_" below). Returns
/// `x` + [`text_width`].
pub(crate) fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, size: f32, colour: [u8; 3]) -> i64 {
    let (w, h) = (img.width() as i64, img.height() as i64);
    rasterize(x, y, s, size, |px, py, a| {
        if px < 0 || py < 0 || px >= w || py >= h {
            return;
        }
        let p = img.get_pixel_mut(px as u32, py as u32);
        for (v, &c) in p.0.iter_mut().zip(&colour) {
            *v = (*v as f32 * (1.0 - a) + c as f32 * a).round() as u8;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    const WHITE: [u8; 3] = [255, 255, 255];

    /// The box of pixels that differ from white: `(x0, y0, x1, y1)`, exclusive ends.
    fn ink_box(img: &RgbImage) -> Option<(u32, u32, u32, u32)> {
        img.enumerate_pixels()
            .filter(|(_, _, p)| p.0 != WHITE)
            .fold(None, |b, (x, y, _)| {
                let (x0, y0, x1, y1) = b.unwrap_or((x, y, x + 1, y + 1));
                Some((x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1)))
            })
    }

    #[test]
    fn text_inks_only_inside_its_measured_box() {
        let ascii: Vec<String> = (33u8..127).map(|b| char::from(b).to_string()).collect();
        let strings = ["Hi", "Quality wording: {jump}, 0.25", "ffi_Wy|", "Tj"];
        for size in [13.0, 15.0, 22.0] {
            for s in ascii.iter().map(String::as_str).chain(strings) {
                let mut img = RgbImage::from_pixel(400, 60, Rgb(WHITE));
                let (x, y) = (10, 10);
                let end = text(&mut img, x, y, s, size, [0, 0, 0]);
                assert_eq!(end, x + text_width(s, size), "{s}");
                let (x0, y0, x1, y1) = ink_box(&img).expect("text draws something");
                let (x0, y0, x1, y1) = (x0 as i64, y0 as i64, x1 as i64, y1 as i64);
                // Side bearings and anti-aliased edges may overhang the advance box by a pixel.
                let bottom = y + line_height(size);
                assert!(
                    x0 >= x - 1 && x1 <= end + 1,
                    "{s} at {size}: ink x {x0}..{x1}"
                );
                assert!(
                    y0 >= y && y1 <= bottom + 1,
                    "{s} at {size}: ink y {y0}..{y1}"
                );
                if s.len() > 1 {
                    // The ink fills the measured width: widths are the glyphs', not a cell's.
                    assert!(x1 - x0 >= (end - x) * 8 / 10, "{s} at {size}");
                }
            }
        }
    }

    #[test]
    fn widths_come_from_the_glyphs_advances() {
        let size = 13.0;
        assert!(text_width("Hello world", size) > text_width("Hello", size));
        // A proportional font: "W" is wider than "i", so equal counts need not be equal widths.
        assert!(text_width("WWWW", size) > 2 * text_width("iiii", size));
        assert!(text_width("Hello", 26.0) >= 2 * text_width("Hello", size) - 1);
        assert_eq!(text_width("", size), 0);
    }

    #[test]
    fn text_is_anti_aliased_in_its_colour() {
        let mut img = RgbImage::from_pixel(120, 30, Rgb(WHITE));
        let colour = [200, 40, 0];
        text(&mut img, 2, 2, "Rows of ink", 15.0, colour);
        let inked: Vec<[u8; 3]> = img.pixels().map(|p| p.0).filter(|p| *p != WHITE).collect();
        assert!(inked.contains(&colour), "some pixels fully covered");
        assert!(
            inked.iter().any(|p| *p != colour),
            "edge pixels blend with the background"
        );
        // Every inked pixel lies between white and the colour (same blend on every channel).
        for p in &inked {
            let a = (255.0 - p[1] as f32) / (255.0 - colour[1] as f32);
            for ch in 0..3 {
                let expected = 255.0 * (1.0 - a) + colour[ch] as f32 * a;
                assert!((p[ch] as f32 - expected).abs() <= 2.0, "{p:?}");
            }
        }
    }

    #[test]
    fn truncated_text_fits_and_ends_with_an_ellipsis() {
        let long = "a rather long label that cannot fit";
        let t = truncate(long, 13.0, 80);
        assert!(text_width(&t, 13.0) <= 80);
        assert!(t.ends_with('…') && t.len() > 3, "{t}");
        assert_eq!(truncate("short", 13.0, 80), "short");
        assert_eq!(truncate(long, 13.0, 2), "");
    }

    #[test]
    fn off_canvas_and_unusual_text_clips_without_panicking() {
        let mut img = RgbImage::from_pixel(10, 10, Rgb(WHITE));
        text(&mut img, -30, 2, "é off ☃ \u{0} \t", 26.0, [0, 0, 0]);
        text(&mut img, 5, -20, "below", 40.0, [0, 0, 0]);
        text(&mut img, i64::from(i32::MAX), 2, "far", 13.0, [0, 0, 0]);
        assert!(ink_box(&img).is_some());
    }

    #[test]
    fn the_font_reaches_plotters() {
        for_plotters().unwrap();
        let font = plotters::style::FontDesc::new(
            plotters::style::FontFamily::Name(FAMILY),
            13.0,
            plotters::style::FontStyle::Normal,
        );
        let (w, _) = font.box_size("Hello").unwrap();
        assert!((w as i64 - text_width("Hello", 13.0)).abs() <= 1);
    }
}
