//! Sample panels (what the model saw, said and pointed at) and mask overlays.

use std::path::Path;

use image::{GrayImage, Rgb, RgbImage};

use super::draw::{self, BLACK, GREY, WHITE};
use super::{finite, font, save_png, RenderError};

/// One image with the words generated for it and boxes to show; normalized coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplePanel {
    pub image: RgbImage,
    /// Generated words in order, each with the point predicted for it (`[x, y]` in 0..1), if any.
    pub words: Vec<(String, Option<[f32; 2]>)>,
    /// Boxes `[x0, y0, x1, y1]` in 0..1 with a label and an outline colour (predicted and gt).
    pub boxes: Vec<([f32; 4], String, [u8; 3])>,
    pub title: String,
}

/// Longest side of each panel's image after nearest-neighbour upscaling.
const PANEL_IMAGE: u32 = 256;
/// Blank space around and between panels.
const PAD: i64 = 12;
/// Size of all text on panels, in pixels from ascent to descent.
const TEXT: f32 = 14.0;
/// Height of a line of text (the font's line at [`TEXT`], with a pixel to spare).
const LINE: i64 = 18;
/// Most panels in one row.
const COLUMNS: usize = 4;

/// Caption laid out in lines that fit `width` pixels: `(word index, x offset)` per line, with
/// the words' widths measured in the font. A word wider than a line gets a line of its own (and
/// is cut short when drawn, see [`shown_word`]).
fn wrap(words: &[(String, Option<[f32; 2]>)], width: i64) -> Vec<Vec<(usize, i64)>> {
    let space = font::text_width(" ", TEXT);
    let mut lines: Vec<Vec<(usize, i64)>> = vec![Vec::new()];
    let mut used = 0i64;
    for (i, (word, _)) in words.iter().enumerate() {
        let len = font::text_width(&shown_word(word, width), TEXT);
        let mut x = if used == 0 { 0 } else { used + space };
        if x + len > width && used > 0 {
            lines.push(Vec::new());
            x = 0;
        }
        if let Some(line) = lines.last_mut() {
            line.push((i, x));
        }
        used = x + len;
    }
    lines
}

/// `word` as printed on a line `width` pixels wide: whole, or cut short with "…".
fn shown_word(word: &str, width: i64) -> String {
    font::truncate(word, TEXT, width)
}

fn check_point(p: [f32; 2], what: impl Fn() -> String) -> Result<(), RenderError> {
    for v in p {
        finite(v as f64, &what)?;
    }
    Ok(())
}

/// Size of one panel's upscaled image.
fn display_size(image: &RgbImage) -> (u32, u32) {
    let (w, h) = image.dimensions();
    let scale = PANEL_IMAGE as f64 / w.max(h) as f64;
    (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    )
}

/// Draws one panel with its top-left at `(x, y)`.
fn draw_panel(canvas: &mut RgbImage, panel: &SamplePanel, x: i64, y: i64) {
    let width = PANEL_IMAGE as i64;
    let title = font::truncate(&panel.title, TEXT, width);
    font::text(canvas, x, y, &title, TEXT, BLACK);
    let (dw, dh) = display_size(&panel.image);
    let mut shown = draw::upscale_nearest(&panel.image, dw, dh);
    let (fw, fh) = (dw as f64, dh as f64);

    // Outlines first, then labels, so no outline cuts through a label.
    let mut pixel_boxes = Vec::with_capacity(panel.boxes.len());
    for (b, _, colour) in &panel.boxes {
        // Far-off coordinates would overflow pixel arithmetic; anything past the edge looks alike.
        let b = b.map(|v| v.clamp(-1.0, 2.0));
        let bx0 = (b[0].min(b[2]) as f64 * fw).round() as i64;
        let by0 = (b[1].min(b[3]) as f64 * fh).round() as i64;
        let bx1 = ((b[0].max(b[2]) as f64 * fw).round() as i64 - 1).max(bx0);
        let by1 = ((b[1].max(b[3]) as f64 * fh).round() as i64 - 1).max(by0);
        draw::rect_outline(&mut shown, bx0, by0, bx1, by1, 2, *colour);
        pixel_boxes.push((bx0, by0, bx1, by1));
    }
    let mut taken: Vec<(i64, i64, i64, i64)> = Vec::new();
    for ((_, label, colour), &(bx0, by0, _, by1)) in panel.boxes.iter().zip(&pixel_boxes) {
        if label.is_empty() {
            continue;
        }
        let label = font::truncate(label, TEXT, dw as i64 - 4);
        let (lw, lh) = (
            font::text_width(&label, TEXT) + 4,
            font::line_height(TEXT) + 2,
        );
        let lx = bx0.clamp(0, (dw as i64 - lw).max(0));
        // Above the box, else inside its top, else below it: the first spot free of other labels.
        let spots = [by0 - lh, by0 + 2, by1 + 1];
        let fits = |y: i64| y >= 0 && y + lh <= dh as i64;
        let free = |y: i64| {
            !taken
                .iter()
                .any(|&(x0, y0, x1, y1)| lx < x1 && x0 < lx + lw && y < y1 && y0 < y + lh)
        };
        let ly = spots
            .iter()
            .copied()
            .find(|&y| fits(y) && free(y))
            .or_else(|| spots.iter().copied().find(|&y| fits(y)))
            .unwrap_or(0);
        taken.push((lx, ly, lx + lw, ly + lh));
        draw::fill_rect(&mut shown, lx, ly, lx + lw, ly + lh, *colour);
        font::text(
            &mut shown,
            lx + 2,
            ly + 1,
            &label,
            TEXT,
            draw::contrasting(*colour),
        );
    }
    for (i, (_, point)) in panel.words.iter().enumerate() {
        if let Some([px, py]) = point {
            let cx = (px.clamp(0.0, 1.0) as f64 * (fw - 1.0)).round() as i64;
            let cy = (py.clamp(0.0, 1.0) as f64 * (fh - 1.0)).round() as i64;
            draw::disc(&mut shown, cx, cy, 5, BLACK);
            draw::disc(&mut shown, cx, cy, 4, WHITE);
            draw::disc(&mut shown, cx, cy, 3, draw::palette(i));
        }
    }
    let top = y + LINE;
    for (sx, sy, p) in shown.enumerate_pixels() {
        draw::put(canvas, x + sx as i64, top + sy as i64, p.0);
    }
    let caption_top = top + dh as i64 + 6;
    for (row, line) in wrap(&panel.words, width).iter().enumerate() {
        for &(i, dx) in line {
            let (word, point) = &panel.words[i];
            let colour = if point.is_some() {
                draw::palette(i)
            } else {
                GREY
            };
            font::text(
                canvas,
                x + dx,
                caption_top + row as i64 * LINE,
                &shown_word(word, width),
                TEXT,
                colour,
            );
        }
    }
}

fn panel_height(panel: &SamplePanel) -> i64 {
    let lines = if panel.words.is_empty() {
        0
    } else {
        wrap(&panel.words, PANEL_IMAGE as i64).len() as i64
    };
    LINE + display_size(&panel.image).1 as i64 + 6 + lines * LINE
}

/// A grid of sample panels; see [`samples_png`].
pub fn samples_image(panels: &[SamplePanel]) -> Result<RgbImage, RenderError> {
    if panels.is_empty() {
        return Err(RenderError::Empty("no sample panels".into()));
    }
    for (n, p) in panels.iter().enumerate() {
        let (w, h) = p.image.dimensions();
        if w == 0 || h == 0 {
            return Err(RenderError::Invalid {
                what: format!("image of panel {n} ({:?})", p.title),
                problem: format!("is {w}x{h}"),
            });
        }
        for (i, (word, point)) in p.words.iter().enumerate() {
            if let Some(point) = point {
                check_point(*point, || {
                    format!("point of word {i} ({word:?}) in panel {n}")
                })?;
            }
        }
        for (i, (b, label, _)) in p.boxes.iter().enumerate() {
            for v in b {
                finite(*v as f64, || format!("box {i} ({label:?}) in panel {n}"))?;
            }
        }
    }
    let columns = panels.len().min(COLUMNS);
    let rows = panels.len().div_ceil(columns);
    let row_heights: Vec<i64> = panels
        .chunks(columns)
        .map(|row| row.iter().map(panel_height).max().unwrap_or(0))
        .collect();
    let width = PAD + columns as i64 * (PANEL_IMAGE as i64 + PAD);
    let height = PAD + row_heights.iter().map(|h| h + PAD).sum::<i64>();
    debug_assert_eq!(row_heights.len(), rows);
    let mut canvas = RgbImage::from_pixel(width as u32, height as u32, Rgb(WHITE));
    let mut y = PAD;
    for (row, row_height) in panels.chunks(columns).zip(&row_heights) {
        for (c, panel) in row.iter().enumerate() {
            draw_panel(
                &mut canvas,
                panel,
                PAD + c as i64 * (PANEL_IMAGE as i64 + PAD),
                y,
            );
        }
        y += row_height + PAD;
    }
    Ok(canvas)
}

/// Writes a grid of panels to `path` (up to four per row). Each image is upscaled (nearest) to
/// 256 px, gets one dot per located word and its boxes with labels, and the caption below it
/// prints each word in its dot's colour (grey: no point), so a reader can match words to places.
/// Errors on no panels, an empty image, or a non-finite point or box.
pub fn samples_png(path: impl AsRef<Path>, panels: &[SamplePanel]) -> Result<(), RenderError> {
    save_png(&samples_image(panels)?, path)
}

/// `image` with `colour` blended in at opacity `alpha` (0..=1) where `mask` is set, scaled by the
/// mask value (0..255), so soft masks show their confidence.
pub fn mask_overlay(
    image: &RgbImage,
    mask: &GrayImage,
    colour: [u8; 3],
    alpha: f32,
) -> Result<RgbImage, RenderError> {
    if image.dimensions() != mask.dimensions() {
        return Err(RenderError::Invalid {
            what: "mask".into(),
            problem: format!(
                "is {}x{} but the image is {}x{}; resize the mask to the image first",
                mask.width(),
                mask.height(),
                image.width(),
                image.height()
            ),
        });
    }
    if !(0.0..=1.0).contains(&alpha) {
        return Err(RenderError::Invalid {
            what: "alpha".into(),
            problem: format!("is {alpha}; use 0..=1"),
        });
    }
    let mut out = image.clone();
    for (p, m) in out.pixels_mut().zip(mask.pixels()) {
        let a = alpha * m.0[0] as f32 / 255.0;
        for (v, &c) in p.0.iter_mut().zip(&colour) {
            *v = (*v as f32 * (1.0 - a) + c as f32 * a).round() as u8;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey_panel(words: Vec<(String, Option<[f32; 2]>)>) -> SamplePanel {
        SamplePanel {
            image: RgbImage::from_pixel(32, 32, Rgb([128, 128, 128])),
            words,
            boxes: Vec::new(),
            title: "t".into(),
        }
    }

    /// Top-left of the first panel's image on the canvas.
    const ORIGIN: (u32, u32) = (PAD as u32, (PAD + LINE) as u32);

    #[test]
    fn dots_are_drawn_where_the_words_point() {
        let panel = grey_panel(vec![
            ("red".into(), Some([0.25, 0.25])),
            ("thing".into(), Some([0.75, 0.5])),
            ("and".into(), None),
        ]);
        let img = samples_image(&[panel]).unwrap();
        let at = |x: f32, y: f32| {
            let px = ORIGIN.0 + (x * 255.0).round() as u32;
            let py = ORIGIN.1 + (y * 255.0).round() as u32;
            img.get_pixel(px, py).0
        };
        assert_eq!(at(0.25, 0.25), draw::palette(0));
        assert_eq!(at(0.75, 0.5), draw::palette(1));
        assert_eq!(at(0.5, 0.9), [128, 128, 128]);
        // The caption words are printed in their dot colours (and the unlocated one in grey):
        // anti-aliased, so count the pixels that are that colour blended at least half onto white.
        let below = |colour: [u8; 3]| {
            img.enumerate_pixels()
                .filter(|(_, y, p)| *y > ORIGIN.1 + 256 && tinted(p.0, colour))
                .count()
        };
        assert!(below(draw::palette(0)) > 10);
        assert!(below(draw::palette(1)) > 10);
        assert!(below(GREY) > 10);
        assert_eq!(below(draw::palette(2)), 0);
    }

    /// Whether `p` is `colour` blended onto white with coverage at least 1/2.
    fn tinted(p: [u8; 3], colour: [u8; 3]) -> bool {
        let depth = |c: u8| 255.0 - c as f32;
        let ch = (0..3)
            .max_by(|&a, &b| depth(colour[a]).total_cmp(&depth(colour[b])))
            .unwrap_or(0);
        let a = depth(p[ch]) / depth(colour[ch]);
        a >= 0.5
            && (0..3).all(|i| {
                let expected = 255.0 - a * depth(colour[i]);
                (p[i] as f32 - expected).abs() <= 3.0
            })
    }

    #[test]
    fn caption_words_sit_in_measured_slots_without_overlap() {
        let words: Vec<(String, Option<[f32; 2]>)> = ["Wide", "ill", "MMM", "a", "tiny", "word"]
            .iter()
            .map(|w| (w.to_string(), None))
            .collect();
        let lines = wrap(&words, 256);
        assert_eq!(lines.len(), 1);
        let space = font::text_width(" ", TEXT);
        for pair in lines[0].windows(2) {
            let ((i, x), (_, next)) = (pair[0], pair[1]);
            assert_eq!(next, x + font::text_width(&words[i].0, TEXT) + space);
        }
    }

    #[test]
    fn boxes_are_outlined_in_their_colour() {
        let mut panel = grey_panel(Vec::new());
        panel
            .boxes
            .push(([0.25, 0.5, 0.75, 1.0], "gt".into(), [0, 200, 0]));
        let img = samples_image(&[panel]).unwrap();
        let px = |x: u32, y: u32| img.get_pixel(ORIGIN.0 + x, ORIGIN.1 + y).0;
        assert_eq!(px(64, 200), [0, 200, 0]); // left edge
        assert_eq!(px(128, 255), [0, 200, 0]); // bottom edge
        assert_eq!(px(128, 200), [128, 128, 128]); // inside untouched
    }

    #[test]
    fn wide_images_keep_their_aspect_ratio() {
        let mut panel = grey_panel(vec![("dot".into(), Some([1.0, 1.0]))]);
        panel.image = RgbImage::from_pixel(64, 16, Rgb([128, 128, 128]));
        let img = samples_image(&[panel]).unwrap();
        // 64x16 shows as 256x64: grey stops at row 64, the dot sits in the bottom-right corner.
        assert_eq!(
            img.get_pixel(ORIGIN.0 + 10, ORIGIN.1 + 63).0,
            [128, 128, 128]
        );
        assert_ne!(
            img.get_pixel(ORIGIN.0 + 10, ORIGIN.1 + 64).0,
            [128, 128, 128]
        );
        assert_eq!(
            img.get_pixel(ORIGIN.0 + 255, ORIGIN.1 + 63).0,
            draw::palette(0)
        );
    }

    #[test]
    fn grid_has_four_columns_and_wraps_rows() {
        let panels: Vec<_> = (0..6)
            .map(|_| grey_panel(vec![("a".into(), None)]))
            .collect();
        let img = samples_image(&panels).unwrap();
        assert_eq!(img.width() as i64, PAD + 4 * (256 + PAD));
        let one = samples_image(&panels[..1]).unwrap();
        assert!(img.height() > one.height() * 2 - 2 * PAD as u32);
    }

    #[test]
    fn long_captions_wrap_inside_the_panel() {
        let words: Vec<_> = (0..40).map(|i| (format!("word{i}"), None)).collect();
        let lines = wrap(&words, 256);
        assert!(lines.len() > 3);
        for line in &lines {
            let &(last, x) = line.last().unwrap();
            assert!(x + font::text_width(&shown_word(&words[last].0, 256), TEXT) <= 256);
        }
        // A word wider than the panel gets its own line and is cut short with an ellipsis.
        let long = vec![
            ("a".into(), None),
            ("x".repeat(100), None),
            ("b".into(), None),
        ];
        let lines = wrap(&long, 256);
        assert_eq!(lines.len(), 3);
        let shown = shown_word(&long[1].0, 256);
        assert!(shown.ends_with('…') && font::text_width(&shown, TEXT) <= 256);
        assert!(samples_image(&[grey_panel(long)]).is_ok());
    }

    #[test]
    fn a_line_of_text_fits_the_line_height() {
        assert!(font::line_height(TEXT) <= LINE);
    }

    #[test]
    fn bad_panels_are_errors_not_panics() {
        assert!(matches!(samples_image(&[]), Err(RenderError::Empty(_))));
        let mut empty = grey_panel(Vec::new());
        empty.image = RgbImage::new(0, 5);
        assert!(matches!(
            samples_image(&[empty]),
            Err(RenderError::Invalid { .. })
        ));
        let nan = grey_panel(vec![("a".into(), Some([f32::NAN, 0.0]))]);
        assert!(matches!(
            samples_image(&[nan]),
            Err(RenderError::NonFinite { .. })
        ));
        let mut bad_box = grey_panel(Vec::new());
        bad_box
            .boxes
            .push(([0.0, 0.0, f32::INFINITY, 1.0], "b".into(), [0; 3]));
        assert!(matches!(
            samples_image(&[bad_box]),
            Err(RenderError::NonFinite { .. })
        ));
        // Out-of-range points and boxes are clipped, not errors.
        let mut outside = grey_panel(vec![("a".into(), Some([-3.0, 9.0]))]);
        outside
            .boxes
            .push(([-1.0, -1.0, 2.0, 2.0], "all".into(), [255, 0, 0]));
        assert!(samples_image(&[outside]).is_ok());
    }

    #[test]
    fn mask_overlay_tints_only_masked_pixels() {
        let image = RgbImage::from_pixel(4, 4, Rgb([0, 0, 0]));
        let mut mask = GrayImage::new(4, 4);
        mask.put_pixel(1, 2, image::Luma([255]));
        let out = mask_overlay(&image, &mask, [200, 100, 0], 0.5).unwrap();
        assert_eq!(out.get_pixel(1, 2).0, [100, 50, 0]);
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0]);
        assert!(mask_overlay(&image, &GrayImage::new(3, 4), [0; 3], 0.5).is_err());
        assert!(mask_overlay(&image, &mask, [0; 3], 1.5).is_err());
        assert!(mask_overlay(&image, &mask, [0; 3], f32::NAN).is_err());
    }
}
