//! The caption is a function of the pixels: a hand-written reader that sees only the image
//! (connected components, mean colour, extent, a few probe pixels) rebuilds every caption exactly.
//! This is what makes ShapesLN learnable by a tiny model: nothing in the text is hidden noise.

use pixel_data::shapes_ln::{Colour, ShapesLn, ShapesLnConfig, Split};

/// A pixel belongs to an object when some channel is dark; backgrounds are light tints.
fn is_object(p: [u8; 3]) -> bool {
    p.iter().copied().min().unwrap_or(255) < 180
}

/// 4-connected components of object pixels, as pixel lists.
fn components(img: &image::RgbImage) -> Vec<Vec<(u32, u32)>> {
    let (w, h) = img.dimensions();
    let mut seen = vec![false; (w * h) as usize];
    let mut out = Vec::new();
    for start in 0..w * h {
        let (sx, sy) = (start % w, start / w);
        if seen[start as usize] || !is_object(img.get_pixel(sx, sy).0) {
            continue;
        }
        let mut stack = vec![(sx, sy)];
        seen[start as usize] = true;
        let mut pixels = Vec::new();
        while let Some((x, y)) = stack.pop() {
            pixels.push((x, y));
            let near = [
                (x.wrapping_sub(1), y),
                (x + 1, y),
                (x, y.wrapping_sub(1)),
                (x, y + 1),
            ];
            for (nx, ny) in near {
                if nx < w && ny < h {
                    let k = (ny * w + nx) as usize;
                    if !seen[k] && is_object(img.get_pixel(nx, ny).0) {
                        seen[k] = true;
                        stack.push((nx, ny));
                    }
                }
            }
        }
        out.push(pixels);
    }
    out
}

/// Reads one object: (centre x, centre y, caption phrase words).
fn read_object(img: &image::RgbImage, pixels: &[(u32, u32)]) -> (f32, f32, [&'static str; 3]) {
    let size = img.width() as f32;
    let x0 = pixels.iter().map(|p| p.0).min().unwrap();
    let x1 = pixels.iter().map(|p| p.0).max().unwrap() + 1;
    let y0 = pixels.iter().map(|p| p.1).min().unwrap();
    let y1 = pixels.iter().map(|p| p.1).max().unwrap() + 1;
    let mut mean = [0f32; 3];
    for &(x, y) in pixels {
        for (m, v) in mean.iter_mut().zip(img.get_pixel(x, y).0) {
            *m += v as f32 / pixels.len() as f32;
        }
    }
    let colour = Colour::ALL
        .into_iter()
        .min_by(|a, b| {
            let d = |c: &Colour| {
                c.rgb()
                    .iter()
                    .zip(mean)
                    .map(|(&n, m)| (n as f32 - m).powi(2))
                    .sum::<f32>()
            };
            d(a).total_cmp(&d(b))
        })
        .unwrap();
    let extent = (x1 - x0).max(y1 - y0) as f32 / size;
    let size_word = if extent > 0.27 { "large" } else { "small" };
    // Row widths tell the kinds apart: a square is full everywhere, a triangle full only at the
    // bottom, a circle full in the middle and wide a fifth of the way down, a cross narrow there.
    let bw = (x1 - x0) as f32;
    let width_at = |y: u32| pixels.iter().filter(|p| p.1 == y).count() as f32 / bw;
    let (top, bottom) = (width_at(y0), width_at(y1 - 1));
    let middle = width_at(y0 + (y1 - y0) / 2);
    let upper = width_at(y0 + (y1 - y0) / 5);
    let kind = if top > 0.9 && bottom > 0.9 {
        "square"
    } else if bottom > 0.7 && middle < 0.8 {
        "triangle"
    } else if upper > 0.55 {
        "circle"
    } else {
        "cross"
    };
    let cx = (x0 + x1) as f32 / 2.0 / size;
    let cy = (y0 + y1) as f32 / 2.0 / size;
    (cx, cy, [size_word, colour.word(), kind])
}

fn position(cx: f32, cy: f32) -> Vec<&'static str> {
    let h = [(cx < 1.0 / 3.0, "left"), (cx > 2.0 / 3.0, "right")];
    let v = [(cy < 1.0 / 3.0, "top"), (cy > 2.0 / 3.0, "bottom")];
    let h = h.iter().find(|p| p.0).map(|p| p.1);
    let v = v.iter().find(|p| p.0).map(|p| p.1);
    match (v, h) {
        (None, None) => vec!["in", "the", "middle"],
        (None, Some(h)) => vec!["on", "the", h],
        (Some(v), None) => vec!["at", "the", v],
        (Some(v), Some(h)) => vec!["at", "the", v, h],
    }
}

fn caption_from_pixels(img: &image::RgbImage) -> String {
    let mut objects: Vec<_> = components(img)
        .iter()
        .map(|c| read_object(img, c))
        .collect();
    objects.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut words = vec!["in", "this", "image", "we", "can", "see"];
    for (i, (cx, cy, phrase)) in objects.iter().enumerate() {
        words.push("a");
        words.extend(phrase);
        words.extend(position(*cx, *cy));
        if i + 1 < objects.len() {
            words.push("and");
        }
    }
    words.join(" ")
}

#[test]
fn captions_can_be_read_off_the_pixels() {
    // From 48 px up; at 32 px the smallest triangles are a few pixels and can read as crosses.
    for (size, seed) in [(64, 0u64), (48, 1), (96, 2)] {
        let g = ShapesLn::new(
            ShapesLnConfig {
                image_size: size,
                max_objects: 5,
                ..Default::default()
            },
            seed,
        )
        .unwrap();
        for split in [Split::Train, Split::Validation] {
            for s in g.samples(split, 0..300) {
                assert_eq!(
                    caption_from_pixels(&s.image),
                    s.caption,
                    "{} at {size} px",
                    s.image_id
                );
            }
        }
    }
}
