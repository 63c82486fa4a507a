//! The box head: a 4-channel regression per token, the paper's alternative to two points.
//!
//! Same trunk as the point head (LayerNorm, MLP with GELU), but the four outputs are a box's
//! centre and size through a sigmoid, `(cx, cy, w, h)`, so every prediction is a valid box
//! inside the image; the loss is the same L1 on its corners in pixels. A referring expression's
//! box is the mean of its tokens' boxes. Config (`kind = "box"`): `depth`, `pre_norm` as the
//! point head's.
use crate::error::Result;
use crate::heads::point::PointOptions;
use crate::heads::registry::HeadBuild;
use crate::heads::{
    pixel_l1, rows_of_four, DecodedTokens, HeadInputs, HeadPrediction, OutputHead, Reads,
};
use crate::model::presets::LmWidth;
use crate::model::PixelDims;
use crate::train::TapedScalar;
use dfdx::prelude::*;
use pixel_core::geometry::BoxXyxy;
use pixel_core::nn::{Activation, LayerNorm, Mlp, Seq};
use pixel_core::params::{join, ParamVisitor, Params};

#[derive(Debug, Clone)]
pub struct BoxHead<M: ConstDim, H: ConstDim, D: Device<f32>> {
    pub name: String,
    pub norm: Option<LayerNorm<M, D>>,
    pub mlp: Mlp<M, H, Const<4>, D>,
    /// `(cx, cy, w, h) -> (x0, y0, x1, y1)` as a matrix (a constant, not a parameter).
    to_corners: Tensor<Rank2<4, 4>, f32, D>,
}

/// The registry's constructor for `kind = "box"`.
pub fn build<P: PixelDims, D: Device<f32>>(
    build: &HeadBuild<'_, D>,
    table: &toml::Table,
) -> Result<Box<dyn OutputHead<P, D>>> {
    let o = PointOptions::parse(build, table)?;
    Ok(Box::new(BoxHead::<LmWidth<P>, P::PointHidden, D>::new(
        build.dev,
        &build.name,
        o.depth,
        o.pre_norm,
    )))
}

impl<M: ConstDim, H: ConstDim, D: Device<f32>> BoxHead<M, H, D> {
    pub fn new(dev: &D, name: &str, depth: usize, pre_norm: bool) -> Self {
        // Rows: cx, cy, w, h; columns: x0, y0, x1, y1.
        let to_corners = dev.tensor([
            [1.0, 0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0, 1.0],
            [-0.5, 0.0, 0.5, 0.0],
            [0.0, -0.5, 0.0, 0.5],
        ]);
        BoxHead {
            name: name.to_string(),
            norm: pre_norm.then(|| LayerNorm::new(dev, 1e-6)),
            mlp: Mlp::new(dev, depth, Activation::Gelu),
            to_corners,
        }
    }

    /// `[batch, tokens, M]` decoder features -> `[batch, tokens, 4]` box corners in `[0, 1]`
    /// units (the corners may pass the image border by up to half the box).
    pub fn forward<T: Tape<f32, D>>(&self, features: Seq<M, D, T>) -> Seq<Const<4>, D, T> {
        let x = match &self.norm {
            Some(norm) => norm.forward(features),
            None => features,
        };
        self.mlp
            .forward(x)
            .sigmoid()
            .matmul(self.to_corners.clone())
    }
}

impl<P: PixelDims, H: ConstDim, D: Device<f32>> OutputHead<P, D> for BoxHead<LmWidth<P>, H, D> {
    fn name(&self) -> &str {
        &self.name
    }

    fn reads(&self) -> Reads {
        Reads::DecoderFeatures
    }

    fn loss(&self, inputs: &HeadInputs<P, D>) -> Result<Option<TapedScalar<D>>> {
        let corners = self.forward(inputs.decoder.retaped::<OwnedTape<f32, D>>());
        pixel_l1(corners, inputs.batch)
    }

    fn decode(
        &self,
        inputs: &HeadInputs<P, D>,
        tokens: &DecodedTokens,
        _earlier: &[Vec<HeadPrediction>],
    ) -> Result<Vec<HeadPrediction>> {
        let (b, t, _) = *inputs.decoder.shape();
        let corners = self.forward(inputs.decoder.clone()).as_vec();
        Ok((0..b)
            .map(|row| {
                let mut p = HeadPrediction::empty(&self.name, Reads::DecoderFeatures, t);
                p.tokens = rows_of_four(&corners, row, t);
                p.object = mean_box(&p.tokens, &tokens.valid[row]);
                p
            })
            .collect())
    }
}

/// The coordinate-wise mean of the valid tokens' boxes (clipped to the image).
pub fn mean_box(tokens: &[Option<[f32; 4]>], valid: &[bool]) -> Option<BoxXyxy> {
    let boxes: Vec<[f32; 4]> = tokens
        .iter()
        .zip(valid)
        .filter(|(_, &v)| v)
        .filter_map(|(b, _)| *b)
        .collect();
    if boxes.is_empty() {
        return None;
    }
    let n = boxes.len() as f32;
    let mean = |c: usize| boxes.iter().map(|b| b[c]).sum::<f32>() / n;
    let [x0, y0, x1, y1] = [mean(0), mean(1), mean(2), mean(3)];
    Some(
        BoxXyxy::from_corners(
            pixel_core::geometry::Point::new(x0, y0),
            pixel_core::geometry::Point::new(x1, y1),
        )
        .clip_unit(),
    )
}

impl<M: ConstDim, H: ConstDim, D: Device<f32>> Params<D> for BoxHead<M, H, D> {
    fn visit_params(
        &mut self,
        prefix: &str,
        v: &mut dyn ParamVisitor<D>,
    ) -> pixel_core::Result<()> {
        self.norm.visit_params(&join(prefix, "norm"), v)?;
        self.mlp.visit_params(&join(prefix, "mlp"), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_output_is_a_box_of_the_sigmoid_centre_and_size() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let head = BoxHead::<Const<8>, Const<16>, Cpu>::new(&dev, "box", 2, true);
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
        let tokens = vec![
            Some([0.0, 0.0, 0.5, 0.5]),
            Some([0.2, 0.2, 0.7, 0.7]),
            Some([0.9, 0.9, 1.0, 1.0]),
        ];
        let b = mean_box(&tokens, &[true, true, false]).unwrap();
        assert_eq!(b.to_array(), [0.1, 0.1, 0.6, 0.6]);
        assert_eq!(mean_box(&tokens, &[false; 3]), None);
    }
}
