//! A circle per token: centre `(cx, cy)` and diameter `s`, all in `[0, 1]` of the image
//! through a sigmoid, from LayerNorm + an MLP on the decoder features. A token's target circle
//! is the one around its box (centre of the box, diameter its longer side), trained with L1;
//! its predicted box is the circle's bounding square. A referring expression's box is the mean
//! of its valid tokens' squares.
use dfdx::prelude::*;
use pixel_core::geometry::BoxXyxy;
use pixel_core::loss::masked_l1;
use pixel_core::nn::{Activation, LayerNorm, Mlp, Seq};
use pixel_core::params::{join, ParamVisitor, Params};
use pixel_model::heads::{
    options, DecodedTokens, HeadBuild, HeadInputs, HeadPrediction, HeadTable, OutputHead, Reads,
    TapedScalar,
};
use pixel_model::model::{PixelDims, PixelTiny};
use pixel_model::presets::LmWidth;

type Dev = pixel_core::DefaultDevice;
type Hidden = <PixelTiny as PixelDims>::PointHidden;

/// `cx, cy, s` per token.
type Circle = Const<3>;

#[derive(Debug)]
pub struct CircleHead {
    name: String,
    norm: LayerNorm<LmWidth<PixelTiny>, Dev>,
    mlp: Mlp<LmWidth<PixelTiny>, Hidden, Circle, Dev>,
}

/// The head's keys (`[[model.heads]]` entries with `kind = "circle"`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircleOptions {
    /// Linear layers of the MLP, at least 2.
    #[serde(default = "default_depth")]
    pub depth: usize,
}

fn default_depth() -> usize {
    2
}

impl CircleHead {
    /// The registry's constructor: checks the keys, builds the layers.
    pub fn build(
        build: &HeadBuild<'_, Dev>,
        table: &HeadTable,
    ) -> pixel_model::Result<Box<dyn OutputHead<PixelTiny, Dev>>> {
        let o: CircleOptions = options(table, &build.key)?;
        if o.depth < 2 {
            return Err(build.error("depth", format!("must be at least 2, got {}", o.depth)));
        }
        Ok(Box::new(CircleHead {
            name: build.name.clone(),
            norm: LayerNorm::new(build.dev, 1e-6),
            mlp: Mlp::new(build.dev, o.depth, Activation::Gelu),
        }))
    }

    /// `[B, T, d_model]` -> `[B, T, 3]`: `(cx, cy, s)` in `[0, 1]`.
    fn forward<T: Tape<f32, Dev>>(
        &self,
        x: Seq<LmWidth<PixelTiny>, Dev, T>,
    ) -> Tensor<(usize, usize, Circle), f32, Dev, T> {
        self.mlp.forward(self.norm.forward(x)).sigmoid()
    }
}

/// The circle around a box: its centre and its longer side.
pub fn circle_of(b: &[f32]) -> [f32; 3] {
    let side = (b[2] - b[0]).max(b[3] - b[1]);
    [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0, side]
}

/// A circle's bounding square as `(x0, y0, x1, y1)`.
pub fn square_of(c: &[f32]) -> [f32; 4] {
    let r = c[2] / 2.0;
    [c[0] - r, c[1] - r, c[0] + r, c[1] + r]
}

impl OutputHead<PixelTiny, Dev> for CircleHead {
    fn name(&self) -> &str {
        &self.name
    }

    fn reads(&self) -> Reads {
        Reads::DecoderFeatures
    }

    fn loss(
        &self,
        inputs: &HeadInputs<PixelTiny, Dev>,
    ) -> pixel_model::Result<Option<TapedScalar<Dev>>> {
        let batch = inputs.batch;
        let targets: Vec<f32> = batch
            .location_targets
            .chunks(4)
            .flat_map(circle_of)
            .collect();
        // One weight per position (the batch repeats it for each of a box's four numbers).
        let weights: Vec<f32> = batch
            .location_weights
            .chunks(4)
            .flat_map(|w| [w[0]; 3])
            .collect();
        if weights.iter().all(|&w| w == 0.0) {
            return Ok(None);
        }
        let circles = self.forward(inputs.decoder.retaped::<OwnedTape<f32, Dev>>());
        Ok(Some(masked_l1(circles, &targets, &weights)?))
    }

    fn decode(
        &self,
        inputs: &HeadInputs<PixelTiny, Dev>,
        tokens: &DecodedTokens,
        _earlier: &[Vec<HeadPrediction>],
    ) -> pixel_model::Result<Vec<HeadPrediction>> {
        let (b, t, _) = *inputs.decoder.shape();
        let circles = self.forward(inputs.decoder.clone()).as_vec();
        Ok((0..b)
            .map(|row| {
                let mut p = HeadPrediction::empty(&self.name, Reads::DecoderFeatures, t);
                let squares: Vec<[f32; 4]> = circles[row * t * 3..(row + 1) * t * 3]
                    .chunks(3)
                    .map(square_of)
                    .collect();
                p.tokens = squares.iter().copied().map(Some).collect();
                p.object = mean_box(&squares, &tokens.valid[row]);
                p
            })
            .collect())
    }
}

/// The mean of the valid tokens' boxes, clipped to the image; `None` when no token is valid.
fn mean_box(boxes: &[[f32; 4]], valid: &[bool]) -> Option<BoxXyxy> {
    let chosen: Vec<&[f32; 4]> = boxes
        .iter()
        .zip(valid)
        .filter(|(_, &v)| v)
        .map(|(b, _)| b)
        .collect();
    if chosen.is_empty() {
        return None;
    }
    let n = chosen.len() as f32;
    let mean = |k: usize| (chosen.iter().map(|b| b[k]).sum::<f32>() / n).clamp(0.0, 1.0);
    BoxXyxy::from_array([mean(0), mean(1), mean(2), mean(3)]).ok()
}

impl Params<Dev> for CircleHead {
    fn visit_params(
        &mut self,
        prefix: &str,
        v: &mut dyn ParamVisitor<Dev>,
    ) -> pixel_core::Result<()> {
        self.norm.visit_params(&join(prefix, "norm"), v)?;
        self.mlp.visit_params(&join(prefix, "mlp"), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_and_its_circle_agree() {
        let b = [0.2, 0.3, 0.6, 0.5];
        let c = circle_of(&b);
        assert!(c.iter().all(|v| (v - 0.4).abs() < 1e-6), "{c:?}");
        let s = square_of(&c);
        assert!((s[0] - 0.2).abs() < 1e-6 && (s[2] - 0.6).abs() < 1e-6);
        assert!((s[1] - 0.2).abs() < 1e-6 && (s[3] - 0.6).abs() < 1e-6);
    }

    #[test]
    fn the_mean_box_reads_valid_tokens_only() {
        let boxes = [[0.0, 0.0, 0.2, 0.2], [0.4, 0.4, 0.8, 0.8]];
        let b = mean_box(&boxes, &[false, true]).unwrap();
        assert_eq!(b.to_array(), [0.4, 0.4, 0.8, 0.8]);
        assert!(mean_box(&boxes, &[false, false]).is_none());
    }
}
