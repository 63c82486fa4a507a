//! Shape geometry: inside tests for rasterizing, boxes, and the points a mouse trace visits.
//!
//! Every shape is centred at `(cx, cy)` with half-extent `h` (normalized image coordinates), so
//! its bounding box is exactly `[cx - h, cy - h, cx + h, cy + h]` whatever the kind. The trace that
//! "circles" an object visits its extreme points, which makes the trace-segment box equal the
//! object box, as the Localized Narratives rule (segment box -> word box) needs.

use serde::{Deserialize, Serialize};

/// The shape of an object; the lowercase name is the word used in captions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShapeKind {
    Circle,
    Square,
    Triangle,
    Cross,
}

impl ShapeKind {
    /// All kinds, in vocabulary order.
    pub const ALL: [ShapeKind; 4] = [
        ShapeKind::Circle,
        ShapeKind::Square,
        ShapeKind::Triangle,
        ShapeKind::Cross,
    ];

    /// The caption word for this kind.
    pub fn word(self) -> &'static str {
        match self {
            ShapeKind::Circle => "circle",
            ShapeKind::Square => "square",
            ShapeKind::Triangle => "triangle",
            ShapeKind::Cross => "cross",
        }
    }
}

/// Half the width of a cross arm, relative to the half-extent; thick enough to see at 32 px.
const CROSS_ARM: f32 = 0.3;

/// A placed shape in normalized coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Geometry {
    pub kind: ShapeKind,
    pub cx: f32,
    pub cy: f32,
    /// Half-extent: the shape spans `cx ± h`, `cy ± h`.
    pub h: f32,
}

impl Geometry {
    /// Normalized `[x0, y0, x1, y1]` box; exact, not pixel-rounded.
    pub fn bbox(&self) -> [f32; 4] {
        [
            self.cx - self.h,
            self.cy - self.h,
            self.cx + self.h,
            self.cy + self.h,
        ]
    }

    /// Whether the normalized point lies on the shape (boundary included).
    pub fn contains(&self, x: f32, y: f32) -> bool {
        let dx = x - self.cx;
        let dy = y - self.cy;
        let h = self.h;
        match self.kind {
            ShapeKind::Circle => dx * dx + dy * dy <= h * h,
            ShapeKind::Square => dx.abs() <= h && dy.abs() <= h,
            ShapeKind::Triangle => {
                // Apex at the top (cy - h), base at the bottom (cy + h): half-width grows with depth.
                if dy.abs() > h {
                    return false;
                }
                let half_width = (dy + h) / 2.0;
                dx.abs() <= half_width
            }
            ShapeKind::Cross => {
                let arm = CROSS_ARM * h;
                (dx.abs() <= arm && dy.abs() <= h) || (dy.abs() <= arm && dx.abs() <= h)
            }
        }
    }

    /// A point well inside the shape (its centroid): where a word that names it points.
    pub fn anchor(&self) -> [f32; 2] {
        match self.kind {
            ShapeKind::Triangle => [self.cx, self.cy + self.h / 3.0],
            _ => [self.cx, self.cy],
        }
    }

    /// Extreme points on the shape whose bounding box is [`Self::bbox`]; the segments from
    /// [`Self::anchor`] to each stay on the shape (all kinds are star-shaped about the anchor).
    pub fn extremes(&self) -> Vec<[f32; 2]> {
        let (cx, cy, h) = (self.cx, self.cy, self.h);
        match self.kind {
            ShapeKind::Circle | ShapeKind::Cross => {
                vec![[cx, cy - h], [cx + h, cy], [cx, cy + h], [cx - h, cy]]
            }
            ShapeKind::Square => vec![
                [cx - h, cy - h],
                [cx + h, cy - h],
                [cx + h, cy + h],
                [cx - h, cy + h],
            ],
            ShapeKind::Triangle => vec![[cx, cy - h], [cx + h, cy + h], [cx - h, cy + h]],
        }
    }

    /// Pixel mask of the shape on a `width x height` grid, sampled at pixel centres.
    pub fn rasterize(&self, width: u32, height: u32) -> image::GrayImage {
        image::GrayImage::from_fn(width, height, |x, y| {
            let nx = (x as f32 + 0.5) / width as f32;
            let ny = (y as f32 + 0.5) / height as f32;
            image::Luma([if self.contains(nx, ny) { 255 } else { 0 }])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(kind: ShapeKind) -> Geometry {
        Geometry {
            kind,
            cx: 0.4,
            cy: 0.6,
            h: 0.2,
        }
    }

    #[test]
    fn extremes_span_exactly_the_bbox() {
        for kind in ShapeKind::ALL {
            let g = shape(kind);
            let e = g.extremes();
            let x0 = e.iter().map(|p| p[0]).fold(f32::MAX, f32::min);
            let y0 = e.iter().map(|p| p[1]).fold(f32::MAX, f32::min);
            let x1 = e.iter().map(|p| p[0]).fold(f32::MIN, f32::max);
            let y1 = e.iter().map(|p| p[1]).fold(f32::MIN, f32::max);
            assert_eq!([x0, y0, x1, y1], g.bbox(), "{kind:?}");
        }
    }

    #[test]
    fn segments_from_anchor_to_extremes_stay_on_the_shape() {
        for kind in ShapeKind::ALL {
            let g = shape(kind);
            let a = g.anchor();
            assert!(g.contains(a[0], a[1]), "{kind:?} anchor");
            for e in g.extremes() {
                for k in 0..=20 {
                    let s = k as f32 / 20.0;
                    // Shrink by a hair so float rounding at the boundary does not count.
                    let s = s * 0.999;
                    let p = [a[0] + (e[0] - a[0]) * s, a[1] + (e[1] - a[1]) * s];
                    assert!(g.contains(p[0], p[1]), "{kind:?} {p:?}");
                }
            }
        }
    }

    #[test]
    fn masks_of_different_kinds_differ_and_fill_their_box() {
        let masks: Vec<_> = ShapeKind::ALL
            .iter()
            .map(|&k| shape(k).rasterize(64, 64))
            .collect();
        for i in 0..masks.len() {
            for j in i + 1..masks.len() {
                assert_ne!(masks[i], masks[j]);
            }
            let on = masks[i].pixels().filter(|p| p.0[0] > 0).count();
            // Box is 0.4 x 0.4 of 64 px = ~655 px; every kind covers a good part of it.
            assert!(on > 250 && on < 700, "{on}");
        }
    }
}
