//! The detection head: scored box proposals from the image features, for dense captioning.
//!
//! A CenterNet-style head on the image grid: for every cell an MLP (LayerNorm first) gives an
//! objectness logit and, through a sigmoid, the offset of a box centre inside the cell and the
//! box's width and height. A cell is positive for the object whose centre falls in it. Loss:
//! sigmoid cross-entropy on objectness (mean over cells) plus L1 on the four box numbers of the
//! positive cells. Proposals are the cells scoring at least `threshold`, best first, after
//! non-maximum suppression at IoU 0.5; each becomes a location prompt for captioning
//! ([`crate::tasks::ExampleBuilder::location_prompts`]). Config (`kind = "detection"`):
//! `depth` (default 2), `threshold` (default 0.5), `max_proposals` (default 10).
use crate::error::Result;
use crate::heads::config::{options, HeadBuild};
use crate::heads::{
    DecodedTokens, HeadInputs, HeadLossPart, HeadPrediction, OutputHead, Reads, Scored,
};
use crate::presets::PixelDims;
use dfdx::prelude::*;
use pixel_core::geometry::{BoxXyxy, Point};
use pixel_core::nn::{Activation, LayerNorm, Mlp, Seq};
use pixel_core::params::{join, ParamVisitor, Params};
use serde::Deserialize;

/// Per cell: objectness logit, centre offset x and y in the cell, width, height.
pub type CellOutputs = Const<5>;

#[derive(Debug)]
pub struct DetectionHead<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> {
    pub name: String,
    pub norm: LayerNorm<P::Visual, D>,
    pub mlp: Mlp<P::Visual, P::PointHidden, CellOutputs, D>,
    pub threshold: f32,
    pub max_proposals: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetectionOptions {
    #[serde(default = "default_depth")]
    depth: usize,
    #[serde(default = "default_threshold")]
    threshold: f32,
    #[serde(default = "default_max_proposals")]
    max_proposals: usize,
}

fn default_depth() -> usize {
    2
}

fn default_threshold() -> f32 {
    0.5
}

fn default_max_proposals() -> usize {
    10
}

/// The registry's constructor for `kind = "detection"`.
pub fn build<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe>(
    build: &HeadBuild<'_, D>,
    table: &toml::Table,
) -> Result<Box<dyn OutputHead<P, D>>> {
    let o: DetectionOptions = options(table, &build.key)?;
    build.require_image("the detection head")?;
    if o.depth < 2 {
        return Err(build.error("depth", format!("must be at least 2, got {}", o.depth)));
    }
    if !(o.threshold > 0.0 && o.threshold < 1.0) {
        return Err(build.error(
            "threshold",
            format!("must be in (0, 1), got {}", o.threshold),
        ));
    }
    if o.max_proposals == 0 {
        return Err(build.error("max_proposals", "must be at least 1"));
    }
    Ok(Box::new(DetectionHead::<P, D> {
        name: build.name.clone(),
        norm: LayerNorm::new(build.dev, 1e-6),
        mlp: Mlp::new(build.dev, o.depth, Activation::Gelu),
        threshold: o.threshold,
        max_proposals: o.max_proposals,
    }))
}

/// Training targets of one image on an `h x w` grid: `[h * w * 5]` values and which cells are
/// positive. Channel 0 is objectness; 1..5 the centre offset in the cell and the box size.
pub fn cell_targets(objects: &[BoxXyxy], h: usize, w: usize) -> (Vec<f32>, Vec<bool>) {
    let mut targets = vec![0.0; h * w * 5];
    let mut positive = vec![false; h * w];
    for b in objects {
        let c = b.center();
        let col = ((c.x * w as f32) as usize).min(w - 1);
        let row = ((c.y * h as f32) as usize).min(h - 1);
        let cell = row * w + col;
        positive[cell] = true;
        targets[cell * 5..cell * 5 + 5].copy_from_slice(&[
            1.0,
            (c.x * w as f32 - col as f32).clamp(0.0, 1.0),
            (c.y * h as f32 - row as f32).clamp(0.0, 1.0),
            b.width().clamp(0.0, 1.0),
            b.height().clamp(0.0, 1.0),
        ]);
    }
    (targets, positive)
}

/// Greedy non-maximum suppression: best first, dropping boxes with IoU above `iou` with a kept
/// one, at most `keep` boxes.
pub fn non_max_suppression(mut boxes: Vec<Scored>, iou: f32, keep: usize) -> Vec<Scored> {
    boxes.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Scored> = Vec::new();
    for b in boxes {
        if kept.len() == keep {
            break;
        }
        if kept.iter().all(|k| k.bbox.iou(b.bbox) <= iou) {
            kept.push(b);
        }
    }
    kept
}

impl<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> DetectionHead<P, D> {
    /// `[B, h*w, Visual]` image features -> `[B, h*w, 5]` raw cell outputs.
    pub fn forward<T: Tape<f32, D>>(&self, image: Seq<P::Visual, D, T>) -> Seq<CellOutputs, D, T> {
        self.mlp.forward(self.norm.forward(image))
    }

    /// Proposals of one image from its `[h * w * 5]` raw outputs.
    pub fn proposals(&self, outputs: &[f32], h: usize, w: usize) -> Vec<Scored> {
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        let boxes = outputs
            .chunks(5)
            .enumerate()
            .filter_map(|(cell, o)| {
                let score = sigmoid(o[0]);
                if score < self.threshold {
                    return None;
                }
                let (row, col) = (cell / w, cell % w);
                let cx = (col as f32 + sigmoid(o[1])) / w as f32;
                let cy = (row as f32 + sigmoid(o[2])) / h as f32;
                let (bw, bh) = (sigmoid(o[3]), sigmoid(o[4]));
                let bbox = BoxXyxy::from_centre_size(Point::new(cx, cy), bw, bh).clip_unit();
                Some(Scored { bbox, score })
            })
            .collect();
        non_max_suppression(boxes, 0.5, self.max_proposals)
    }
}

impl<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> OutputHead<P, D>
    for DetectionHead<P, D>
{
    fn name(&self) -> &str {
        &self.name
    }

    fn reads(&self) -> Reads {
        Reads::Image
    }

    fn loss(&self, inputs: &HeadInputs<P, D>) -> Result<Vec<HeadLossPart<D>>> {
        let (h, w) = (inputs.image.height, inputs.image.width);
        let batch = inputs.batch;
        let cells = batch.size * h * w;
        let (mut targets, mut positive) = (Vec::new(), Vec::new());
        for objects in &batch.object_boxes {
            let (t, p) = cell_targets(objects, h, w);
            targets.extend(t);
            positive.extend(p);
        }
        let positives = positive.iter().filter(|&&p| p).count().max(1);
        let mut objectness_weights = vec![0.0; cells * 5];
        let mut box_weights = vec![0.0; cells * 5];
        for (cell, &p) in positive.iter().enumerate() {
            objectness_weights[cell * 5] = 1.0 / cells as f32;
            if p {
                for c in 1..5 {
                    box_weights[cell * 5 + c] = 1.0 / (4 * positives) as f32;
                }
            }
        }
        let out = self.forward(inputs.image.tokens.retaped::<OwnedTape<f32, D>>());
        let shape = *out.shape();
        let dev = out.device().clone();
        let targets = dev.tensor_from_vec(targets, shape);
        let objectness_weights = dev.tensor_from_vec(objectness_weights, shape);
        let box_weights = dev.tensor_from_vec(box_weights, shape);
        let boxes = (out.retaped::<OwnedTape<f32, D>>().sigmoid() - targets.clone()).abs();
        let positive_part = out.retaped::<OwnedTape<f32, D>>().relu();
        let soft = (out.retaped::<OwnedTape<f32, D>>().abs().negate().exp() + 1.0).ln();
        let bce = positive_part + soft - out * targets;
        Ok(vec![HeadLossPart::whole(
            (bce * objectness_weights).sum() + (boxes * box_weights).sum(),
        )])
    }

    fn decode(
        &self,
        inputs: &HeadInputs<P, D>,
        _tokens: &DecodedTokens,
        _earlier: &[Vec<HeadPrediction>],
    ) -> Result<Vec<HeadPrediction>> {
        let (h, w) = (inputs.image.height, inputs.image.width);
        let out = self.forward(inputs.image.tokens.clone()).as_vec();
        let positions = inputs.decoder.shape().1;
        Ok(out
            .chunks(h * w * 5)
            .map(|image| {
                let mut p = HeadPrediction::empty(&self.name, Reads::Image, positions);
                p.proposals = self.proposals(image, h, w);
                p
            })
            .collect())
    }
}

impl<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> Params<D> for DetectionHead<P, D> {
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
    fn an_object_is_positive_in_the_cell_of_its_centre() {
        let b = BoxXyxy::new(0.5, 0.0, 0.9, 0.2).unwrap();
        let (t, p) = cell_targets(&[b], 4, 4);
        // Centre (0.7, 0.1): column 2, row 0.
        assert_eq!(p.iter().position(|&x| x), Some(2));
        let cell = &t[2 * 5..3 * 5];
        assert_eq!(cell[0], 1.0);
        assert!((cell[1] - 0.8).abs() < 1e-5 && (cell[2] - 0.4).abs() < 1e-5);
        assert!((cell[3] - 0.4).abs() < 1e-5 && (cell[4] - 0.2).abs() < 1e-5);
    }

    #[test]
    fn suppression_keeps_the_best_of_overlapping_boxes() {
        let a = BoxXyxy::new(0.0, 0.0, 0.5, 0.5).unwrap();
        let b = BoxXyxy::new(0.05, 0.0, 0.55, 0.5).unwrap();
        let c = BoxXyxy::new(0.6, 0.6, 0.9, 0.9).unwrap();
        let kept = non_max_suppression(
            vec![
                Scored {
                    bbox: b,
                    score: 0.6,
                },
                Scored {
                    bbox: a,
                    score: 0.9,
                },
                Scored {
                    bbox: c,
                    score: 0.7,
                },
            ],
            0.5,
            10,
        );
        assert_eq!(kept.iter().map(|s| s.bbox).collect::<Vec<_>>(), vec![a, c]);
    }
}
