//! The box head: a 4-channel regression per token, the paper's alternative to two points.
//!
//! A [`CornerHead`] of kind [`CornerKind::Box`]: the point head's trunk (LayerNorm, MLP with
//! GELU), but the four outputs are a box's centre and size through a sigmoid, `(cx, cy, w, h)`,
//! so every prediction is a valid box inside the image; the loss is the same L1 on its corners
//! in pixels. A referring expression's box is the mean of its tokens' boxes. `point.rs` holds
//! the head and both kinds' geometry; this file is the registry's constructor for the kind.
//! Config (`kind = "box"`): `depth`, `pre_norm` as the point head's.
use crate::error::Result;
use crate::heads::config::HeadBuild;
use crate::heads::point::{build_corner_head, CornerKind};
use crate::heads::OutputHead;
use crate::presets::PixelDims;
use dfdx::prelude::*;

/// The registry's constructor for `kind = "box"`.
pub fn build<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe>(
    build: &HeadBuild<'_, D>,
    table: &toml::Table,
) -> Result<Box<dyn OutputHead<P, D>>> {
    build_corner_head::<P, D>(build, table, CornerKind::Box)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heads::point::{mean_box, CornerHead};
    use pixel_core::geometry::BoxXyxy;

    #[test]
    fn every_output_is_a_box_of_the_sigmoid_centre_and_size() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let head =
            CornerHead::<Const<8>, Const<16>, Cpu>::new(&dev, "box", CornerKind::Box, 2, true);
        let out = head
            .forward(dev.sample_normal_like(&(2, 5, Const::<8>)) * 3.0)
            .as_vec();
        for b in out.chunks(4) {
            assert!(b[0] <= b[2] && b[1] <= b[3], "{b:?}");
            let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
            assert!((0.0..=1.0).contains(&cx) && (0.0..=1.0).contains(&cy));
        }
    }

    #[test]
    fn mean_box_skips_invalid_tokens() {
        let corners = [
            0.0, 0.0, 0.5, 0.5, //
            0.2, 0.2, 0.7, 0.7, //
            0.9, 0.9, 1.0, 1.0,
        ];
        let b = mean_box(&corners, &[true, true, false]);
        assert_eq!(b.to_array(), [0.1, 0.1, 0.6, 0.6]);
        assert_eq!(mean_box(&corners, &[false; 3]), BoxXyxy::whole_image());
    }
}
