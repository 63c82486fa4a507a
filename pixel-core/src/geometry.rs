//! Points and boxes, normalized to [0, 1] or in pixels, and the conversions between them.
//!
//! Boxes are `xyxy` (corner form) everywhere inside pixel-llm; COCO's `xywh` appears only at
//! the dataset and metric boundaries, through [`BoxXyxy::from_xywh`] and [`BoxXyxy::to_xywh`].
use crate::error::{CoreError, Result};
use serde::{Deserialize, Serialize};

/// A point `(x, y)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

impl Point {
    pub fn new(x: f32, y: f32) -> Self {
        Point { x, y }
    }

    /// Pixel coordinates -> normalized, for an image of `width` x `height`.
    pub fn normalize(self, width: f32, height: f32) -> Point {
        Point::new(self.x / width, self.y / height)
    }

    /// Normalized coordinates -> pixels, for an image of `width` x `height`.
    pub fn to_pixels(self, width: f32, height: f32) -> Point {
        Point::new(self.x * width, self.y * height)
    }

    /// Clamps both coordinates into `[0, 1]`.
    pub fn clip_unit(self) -> Point {
        Point::new(self.x.clamp(0.0, 1.0), self.y.clamp(0.0, 1.0))
    }

    /// L1 distance, the metric of trace captioning.
    pub fn l1(self, other: Point) -> f32 {
        (self.x - other.x).abs() + (self.y - other.y).abs()
    }
}

/// An axis-aligned box in corner form: `(x0, y0)` top-left, `(x1, y1)` bottom-right.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoxXyxy {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

impl BoxXyxy {
    /// A box from its corners; errors when a coordinate is not finite or the box is inverted.
    pub fn new(x0: f32, y0: f32, x1: f32, y1: f32) -> Result<Self> {
        let b = BoxXyxy { x0, y0, x1, y1 };
        if ![x0, y0, x1, y1].iter().all(|v| v.is_finite()) {
            return Err(CoreError::Geometry(format!(
                "box {b:?} has a non-finite coordinate"
            )));
        }
        if x1 < x0 || y1 < y0 {
            return Err(CoreError::Geometry(format!(
                "box {b:?} is inverted: need x0 <= x1 and y0 <= y1"
            )));
        }
        Ok(b)
    }

    /// The box spanned by two points in any order (the point head predicts two corners).
    pub fn from_corners(a: Point, b: Point) -> Self {
        BoxXyxy {
            x0: a.x.min(b.x),
            y0: a.y.min(b.y),
            x1: a.x.max(b.x),
            y1: a.y.max(b.y),
        }
    }

    /// The box of centre `centre` and size `width` x `height` (a negative size counts as its
    /// absolute value): how box regressors and detectors parameterize boxes.
    pub fn from_centre_size(centre: Point, width: f32, height: f32) -> Self {
        let (hw, hh) = (width.abs() / 2.0, height.abs() / 2.0);
        BoxXyxy::from_corners(
            Point::new(centre.x - hw, centre.y - hh),
            Point::new(centre.x + hw, centre.y + hh),
        )
    }

    /// The two corners `[(x0, y0), (x1, y1)]`.
    pub fn corners(self) -> [Point; 2] {
        [Point::new(self.x0, self.y0), Point::new(self.x1, self.y1)]
    }

    /// The whole image in normalized coordinates: the location prompt when there is none.
    pub fn whole_image() -> Self {
        BoxXyxy {
            x0: 0.0,
            y0: 0.0,
            x1: 1.0,
            y1: 1.0,
        }
    }

    /// From COCO's `[x, y, w, h]`.
    pub fn from_xywh(xywh: [f32; 4]) -> Result<Self> {
        let [x, y, w, h] = xywh;
        if w < 0.0 || h < 0.0 {
            return Err(CoreError::Geometry(format!(
                "box [x, y, w, h] = {xywh:?} has a negative width or height"
            )));
        }
        BoxXyxy::new(x, y, x + w, y + h)
    }

    /// To COCO's `[x, y, w, h]`.
    pub fn to_xywh(self) -> [f32; 4] {
        [self.x0, self.y0, self.x1 - self.x0, self.y1 - self.y0]
    }

    pub fn to_array(self) -> [f32; 4] {
        [self.x0, self.y0, self.x1, self.y1]
    }

    pub fn from_array(a: [f32; 4]) -> Result<Self> {
        BoxXyxy::new(a[0], a[1], a[2], a[3])
    }

    pub fn width(self) -> f32 {
        self.x1 - self.x0
    }

    pub fn height(self) -> f32 {
        self.y1 - self.y0
    }

    pub fn area(self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }

    pub fn center(self) -> Point {
        Point::new((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)
    }

    /// True when the box has no area; such boxes cannot be localization targets.
    pub fn is_degenerate(self) -> bool {
        self.area() <= 0.0
    }

    /// Clamps the box into `[0, w] x [0, h]`.
    pub fn clip(self, width: f32, height: f32) -> Self {
        BoxXyxy {
            x0: self.x0.clamp(0.0, width),
            y0: self.y0.clamp(0.0, height),
            x1: self.x1.clamp(0.0, width),
            y1: self.y1.clamp(0.0, height),
        }
    }

    /// Clamps the box into the unit square.
    pub fn clip_unit(self) -> Self {
        self.clip(1.0, 1.0)
    }

    pub fn normalize(self, width: f32, height: f32) -> Self {
        BoxXyxy {
            x0: self.x0 / width,
            y0: self.y0 / height,
            x1: self.x1 / width,
            y1: self.y1 / height,
        }
    }

    pub fn to_pixels(self, width: f32, height: f32) -> Self {
        BoxXyxy {
            x0: self.x0 * width,
            y0: self.y0 * height,
            x1: self.x1 * width,
            y1: self.y1 * height,
        }
    }

    pub fn intersection(self, other: BoxXyxy) -> f32 {
        let w = (self.x1.min(other.x1) - self.x0.max(other.x0)).max(0.0);
        let h = (self.y1.min(other.y1) - self.y0.max(other.y0)).max(0.0);
        w * h
    }

    /// Intersection over union in `[0, 1]`; two empty boxes have IoU 0.
    pub fn iou(self, other: BoxXyxy) -> f32 {
        let inter = self.intersection(other);
        let union = self.area() + other.area() - inter;
        if union <= 0.0 {
            0.0
        } else {
            (inter / union).clamp(0.0, 1.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unit_box() -> impl Strategy<Value = BoxXyxy> {
        (0.0f32..1.0, 0.0f32..1.0, 0.0f32..1.0, 0.0f32..1.0)
            .prop_map(|(a, b, c, d)| BoxXyxy::from_corners(Point::new(a, b), Point::new(c, d)))
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = BoxXyxy::new(0.0, 0.0, 2.0, 2.0).unwrap();
        let b = BoxXyxy::new(1.0, 1.0, 3.0, 3.0).unwrap();
        assert!((a.iou(b) - 1.0 / 7.0).abs() < 1e-6);
        assert_eq!(a.iou(a), 1.0);
    }

    #[test]
    fn inverted_and_non_finite_boxes_are_rejected() {
        assert!(BoxXyxy::new(1.0, 0.0, 0.0, 1.0).is_err());
        assert!(BoxXyxy::new(0.0, f32::NAN, 1.0, 1.0).is_err());
        assert!(BoxXyxy::from_xywh([0.0, 0.0, -1.0, 1.0]).is_err());
    }

    #[test]
    fn xywh_round_trip() {
        let b = BoxXyxy::from_xywh([10.0, 20.0, 30.0, 40.0]).unwrap();
        assert_eq!(b.to_array(), [10.0, 20.0, 40.0, 60.0]);
        assert_eq!(b.to_xywh(), [10.0, 20.0, 30.0, 40.0]);
    }

    proptest! {
        #[test]
        fn iou_is_symmetric_and_in_unit_interval(a in unit_box(), b in unit_box()) {
            let ab = a.iou(b);
            prop_assert!((0.0..=1.0).contains(&ab));
            prop_assert!((ab - b.iou(a)).abs() < 1e-6);
        }

        #[test]
        fn box_to_centre_size_to_box_round_trips(b in unit_box()) {
            let back = BoxXyxy::from_centre_size(b.center(), b.width(), b.height());
            for (x, y) in back.to_array().into_iter().zip(b.to_array()) {
                prop_assert!((x - y).abs() < 1e-5, "{b:?} -> {back:?}");
            }
        }

        #[test]
        fn box_to_corners_to_box_round_trips(b in unit_box()) {
            let [p, q] = b.corners();
            prop_assert_eq!(BoxXyxy::from_corners(q, p), b);
        }

        #[test]
        fn pixel_normalized_round_trip(b in unit_box(), w in 1.0f32..2000.0, h in 1.0f32..2000.0) {
            let back = b.to_pixels(w, h).normalize(w, h);
            for (x, y) in back.to_array().iter().zip(b.to_array()) {
                prop_assert!((x - y).abs() < 1e-5);
            }
        }

        #[test]
        fn clipped_box_lies_in_the_image(a in -2.0f32..3.0, b in -2.0f32..3.0, c in -2.0f32..3.0, d in -2.0f32..3.0) {
            let clipped = BoxXyxy::from_corners(Point::new(a, b), Point::new(c, d)).clip_unit();
            for v in clipped.to_array() {
                prop_assert!((0.0..=1.0).contains(&v));
            }
        }
    }
}
