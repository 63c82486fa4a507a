//! PixelLLM's point head: a small MLP on each decoder feature that regresses the token's
//! location as two points (the corners of its box), in parallel with the vocabulary head.
//!
//! As in scenic's `MlpPointPredictor`: optional LayerNorm (eps 1e-6), an MLP of `depth` layers
//! (GELU), and `coords = (p + 1) / 2`, so an output of 0 maps to the image centre. A referring
//! expression's box is the box around its tokens' points. Config (`kind = "point"`): `depth`
//! (default 3; 4 in the paper), `pre_norm` (default true), and optionally
//! `referring_box = { l1 = .., giou = .. }`: referring expressions trained with a detector's
//! box loss instead of the pixel L1 (`crate::heads::referring_box`; not in the paper).
use crate::error::{ModelError, Result};
use crate::heads::config::{options, HeadBuild};
use crate::heads::referring_box::{corner_loss_with_referring_boxes, ReferringBoxWeights};
use crate::heads::{
    pixel_l1, rows_of_four, DecodedTokens, HeadInputs, HeadLossPart, HeadPrediction, OutputHead,
    Reads,
};
use crate::presets::LmWidth;
use crate::presets::PixelDims;
use dfdx::prelude::*;
use pixel_core::geometry::{BoxXyxy, Point};
use pixel_core::nn::{Activation, LayerNorm, Mlp, Seq};
use pixel_core::params::{join, ParamVisitor, Params};
use serde::Deserialize;

/// Four numbers per token: `(x0, y0, x1, y1)`, two corner points.
pub type Corners = Const<4>;

/// How a corner head reads its MLP's four outputs per token, and how one example's box follows
/// from its tokens: the two regression heads differ only there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CornerKind {
    /// The paper's point head: two points, `coords = (p + 1) / 2`; an example's box is the box
    /// around all its valid tokens' points (scenic's `points_to_boxes`).
    Points,
    /// The box head: `(cx, cy, w, h)` through a sigmoid, so every output is a box inside the
    /// image; an example's box is the mean of its valid tokens' boxes.
    Box,
}

/// A per-token regression head: LayerNorm, an MLP, four numbers per decoder position read as
/// two corners; trained with the pixel L1 on the tokens that have a box.
#[derive(Debug, Clone)]
pub struct CornerHead<M: ConstDim, H: ConstDim, D: Device<f32> + pixel_core::ThreadSafe> {
    pub name: String,
    pub kind: CornerKind,
    pub norm: Option<LayerNorm<M, D>>,
    pub mlp: Mlp<M, H, Corners, D>,
    /// [`CornerKind::Box`]: `(cx, cy, w, h) -> (x0, y0, x1, y1)` as a constant matrix.
    centre_size_to_corners: Option<Tensor<Rank2<4, 4>, f32, D>>,
    /// Referring expressions' boxes trained with L1 + GIoU instead of the pixel L1.
    pub referring_box: Option<ReferringBoxWeights>,
}

/// The point head's keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointOptions {
    /// Linear layers of the MLP (at least 2).
    #[serde(default = "default_depth")]
    pub depth: usize,
    /// LayerNorm before the MLP.
    #[serde(default = "default_pre_norm")]
    pub pre_norm: bool,
    /// Weights of the referring box loss (`crate::heads::referring_box`); absent: the pixel L1
    /// trains referring boxes as it trains caption words (the paper).
    #[serde(default)]
    pub referring_box: Option<ReferringBoxWeights>,
}

fn default_depth() -> usize {
    3
}

fn default_pre_norm() -> bool {
    true
}

impl PointOptions {
    /// Parses and checks the keys of the head at `build.key`.
    pub fn parse<D>(build: &HeadBuild<'_, D>, table: &toml::Table) -> Result<Self> {
        let o: PointOptions = options(table, &build.key)?;
        if o.depth < 2 {
            return Err(build.error("depth", format!("must be at least 2, got {}", o.depth)));
        }
        if let Some(weights) = &o.referring_box {
            weights
                .check()
                .map_err(|message| build.error("referring_box", message))?;
        }
        Ok(o)
    }
}

/// The registry's constructor for `kind = "point"`.
pub fn build<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe>(
    build: &HeadBuild<'_, D>,
    table: &toml::Table,
) -> Result<Box<dyn OutputHead<P, D>>> {
    build_corner_head::<P, D>(build, table, CornerKind::Points)
}

/// A corner head of `kind` from the keys of the head at `build.key`.
pub fn build_corner_head<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe>(
    build: &HeadBuild<'_, D>,
    table: &toml::Table,
    kind: CornerKind,
) -> Result<Box<dyn OutputHead<P, D>>> {
    let o = PointOptions::parse(build, table)?;
    Ok(Box::new(
        CornerHead::<LmWidth<P>, P::PointHidden, D>::new(
            build.dev,
            &build.name,
            kind,
            o.depth,
            o.pre_norm,
        )
        .with_referring_box(o.referring_box),
    ))
}

impl<M: ConstDim, H: ConstDim, D: Device<f32> + pixel_core::ThreadSafe> CornerHead<M, H, D> {
    pub fn new(dev: &D, name: &str, kind: CornerKind, depth: usize, pre_norm: bool) -> Self {
        CornerHead {
            name: name.to_string(),
            kind,
            norm: pre_norm.then(|| LayerNorm::new(dev, 1e-6)),
            mlp: Mlp::new(dev, depth, Activation::Gelu),
            centre_size_to_corners: (kind == CornerKind::Box).then(|| centre_size_to_corners(dev)),
            referring_box: None,
        }
    }

    pub fn with_referring_box(mut self, weights: Option<ReferringBoxWeights>) -> Self {
        self.referring_box = weights;
        self
    }

    /// `[batch, tokens, M]` decoder features -> `[batch, tokens, 4]` corners in normalized image
    /// units (a box head's corners may pass the border by up to half the box).
    pub fn forward<T: Tape<f32, D>>(&self, features: Seq<M, D, T>) -> Seq<Corners, D, T> {
        let x = match &self.norm {
            Some(norm) => norm.forward(features),
            None => features,
        };
        let out = self.mlp.forward(x);
        match &self.centre_size_to_corners {
            Some(matrix) => out.sigmoid().matmul(matrix.clone()),
            None => (out + 1.0) * 0.5,
        }
    }

    /// The example's one box from its tokens' corners `[T * 4]` and which tokens count.
    fn object(&self, corners: &[f32], valid: &[bool]) -> Result<Option<BoxXyxy>> {
        if !valid.iter().any(|&v| v) {
            return Ok(None);
        }
        Ok(Some(match self.kind {
            CornerKind::Points => box_from_token_points(corners, valid)?,
            CornerKind::Box => mean_box(corners, valid),
        }))
    }
}

impl<P: PixelDims, H: ConstDim, D: Device<f32> + pixel_core::ThreadSafe> OutputHead<P, D>
    for CornerHead<LmWidth<P>, H, D>
{
    fn name(&self) -> &str {
        &self.name
    }

    fn reads(&self) -> Reads {
        Reads::DecoderFeatures
    }

    /// The pixel L1 as one part; with `referring_box`, its three parts (`pixel_l1`,
    /// `referring_l1`, `referring_giou`).
    fn loss(&self, inputs: &HeadInputs<P, D>) -> Result<Vec<HeadLossPart<D>>> {
        let corners = self.forward(inputs.decoder.retaped::<OwnedTape<f32, D>>());
        match self.referring_box {
            Some(weights) => corner_loss_with_referring_boxes(corners, inputs.batch, weights),
            None => Ok(pixel_l1(corners, inputs.batch)?
                .map(HeadLossPart::whole)
                .into_iter()
                .collect()),
        }
    }

    fn decode(
        &self,
        inputs: &HeadInputs<P, D>,
        tokens: &DecodedTokens,
        _earlier: &[Vec<HeadPrediction>],
    ) -> Result<Vec<HeadPrediction>> {
        let (b, t, _) = *inputs.decoder.shape();
        let corners = self.forward(inputs.decoder.clone()).as_vec();
        (0..b)
            .map(|row| {
                let mut p = HeadPrediction::empty(&self.name, Reads::DecoderFeatures, t);
                p.tokens = rows_of_four(&corners, row, t);
                p.object =
                    self.object(&corners[row * t * 4..(row + 1) * t * 4], &tokens.valid[row])?;
                Ok(p)
            })
            .collect()
    }
}

impl<M: ConstDim, H: ConstDim, D: Device<f32> + pixel_core::ThreadSafe> Params<D>
    for CornerHead<M, H, D>
{
    fn visit_params(
        &mut self,
        prefix: &str,
        v: &mut dyn ParamVisitor<D>,
    ) -> pixel_core::Result<()> {
        self.norm.visit_params(&join(prefix, "norm"), v)?;
        self.mlp.visit_params(&join(prefix, "mlp"), v)
    }
}

/// The two predicted points of one token.
pub fn token_points(corners: &[f32]) -> [Point; 2] {
    [
        Point::new(corners[0], corners[1]),
        Point::new(corners[2], corners[3]),
    ]
}

/// The box around all points of the valid tokens (scenic's `points_to_boxes`): how a referring
/// expression's per-token predictions become one box.
pub fn box_from_token_points(corners: &[f32], valid: &[bool]) -> Result<BoxXyxy> {
    let points: Vec<Point> = corners
        .chunks(4)
        .zip(valid)
        .filter(|(_, &v)| v)
        .flat_map(|(c, _)| token_points(c))
        .collect();
    let Some(first) = points.first() else {
        return Err(ModelError::Invalid(
            "no valid token to take a box from".into(),
        ));
    };
    let init = BoxXyxy::from_corners(*first, *first);
    Ok(points.iter().fold(init, |b, p| BoxXyxy {
        x0: b.x0.min(p.x),
        y0: b.y0.min(p.y),
        x1: b.x1.max(p.x),
        y1: b.y1.max(p.y),
    }))
}

/// `(cx, cy, w, h) -> (x0, y0, x1, y1)` as a matrix, so the conversion stays on the tape.
pub fn centre_size_to_corners<D: Device<f32> + pixel_core::ThreadSafe>(
    dev: &D,
) -> Tensor<Rank2<4, 4>, f32, D> {
    // Rows: cx, cy, w, h; columns: x0, y0, x1, y1.
    dev.tensor([
        [1.0, 0.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, 1.0],
        [-0.5, 0.0, 0.5, 0.0],
        [0.0, -0.5, 0.0, 0.5],
    ])
}

/// The coordinate-wise mean of the valid tokens' boxes `[T * 4]` (clipped to the image); the
/// whole image when no token is valid.
pub fn mean_box(corners: &[f32], valid: &[bool]) -> BoxXyxy {
    let boxes: Vec<&[f32]> = corners
        .chunks(4)
        .zip(valid)
        .filter(|(_, &v)| v)
        .map(|(b, _)| b)
        .collect();
    if boxes.is_empty() {
        return BoxXyxy::whole_image();
    }
    let n = boxes.len() as f32;
    let mean = |c: usize| boxes.iter().map(|b| b[c]).sum::<f32>() / n;
    BoxXyxy::from_corners(Point::new(mean(0), mean(1)), Point::new(mean(2), mean(3))).clip_unit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_core::nn::LinearWeight;
    use proptest::prelude::*;

    #[test]
    fn zero_output_maps_to_the_image_centre() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let mut head =
            CornerHead::<Const<8>, Const<16>, Cpu>::new(&dev, "point", CornerKind::Points, 3, true);
        head.mlp.last.weight =
            LinearWeight::Tensor(dev.zeros_like(&(Corners::default(), Const::<16>)));
        head.mlp.last.bias = Some(dev.zeros_like(&(Corners::default(),)));
        let out = head
            .forward(dev.sample_normal_like(&(2, 3, Const::<8>)))
            .as_vec();
        assert!(out.iter().all(|&v| (v - 0.5).abs() < 1e-6));
    }

    proptest! {
        #[test]
        fn box_from_points_contains_every_valid_point(
            corners in proptest::collection::vec(0.0f32..1.0, 4..40),
            seed in 0usize..100,
        ) {
            let n = corners.len() / 4;
            let corners = &corners[..n * 4];
            let valid: Vec<bool> = (0..n).map(|i| (i + seed) % 3 != 0 || i == 0).collect();
            let b = box_from_token_points(corners, &valid).unwrap();
            for (c, v) in corners.chunks(4).zip(&valid) {
                if *v {
                    for p in token_points(c) {
                        prop_assert!(p.x >= b.x0 && p.x <= b.x1 && p.y >= b.y0 && p.y <= b.y1);
                    }
                }
            }
        }

        #[test]
        fn box_corners_round_trip_through_token_points(x0 in 0.0f32..0.5, y0 in 0.0f32..0.5, w in 0.01f32..0.5, h in 0.01f32..0.5) {
            let b = BoxXyxy::new(x0, y0, x0 + w, y0 + h).unwrap();
            prop_assert_eq!(box_from_token_points(&b.to_array(), &[true]).unwrap(), b);
        }
    }
}
