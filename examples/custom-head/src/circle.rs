//! A circle per token: centre `(cx, cy)` and diameter `s`, all in `[0, 1]` of the image
//! through a sigmoid, from LayerNorm + an MLP on the decoder features. A token's target circle
//! is the one around its box (centre of the box, diameter its longer side), trained with L1;
//! its predicted box is the circle's bounding square. A referring expression's box is the mean
//! of its valid tokens' squares.
//!
//! Besides what every head gives, each prediction carries the circles themselves
//! ([`Circles`], the head's own output type), and the head scores them with metrics of its own:
//! on referring expressions, the centre's and the radius's error in pixels.
use dfdx::prelude::*;
use pixel_core::geometry::BoxXyxy;
use pixel_core::loss::masked_l1;
use pixel_core::nn::{Activation, LayerNorm, Mlp, Seq};
use pixel_core::params::{join, ParamVisitor, Params};
use pixel_model::heads::{
    options, DecodedTokens, HeadBuild, HeadInputs, HeadLossPart, HeadPrediction, HeadTable,
    OutputHead, Reads,
};
use pixel_model::model::{PixelDims, PixelTiny};
use pixel_model::presets::LmWidth;
use pixel_model::tasks::{Example, TaskKind};
use pixel_model::ModelError;
use std::collections::BTreeMap;

type Dev = pixel_core::DefaultDevice;
type Hidden = <PixelTiny as PixelDims>::PointHidden;

/// `cx, cy, s` per token.
type CircleOutput = Const<3>;

#[derive(Debug)]
pub struct CircleHead {
    name: String,
    norm: LayerNorm<LmWidth<PixelTiny>, Dev>,
    mlp: Mlp<LmWidth<PixelTiny>, Hidden, CircleOutput, Dev>,
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
    ) -> Tensor<(usize, usize, CircleOutput), f32, Dev, T> {
        self.mlp.forward(self.norm.forward(x)).sigmoid()
    }
}

/// One circle in `[0, 1]` units of the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Circle {
    pub centre: [f32; 2],
    pub radius: f32,
}

impl Circle {
    /// From the head's `(cx, cy, s)` output (`s` the diameter).
    fn from_output(c: &[f32]) -> Circle {
        Circle {
            centre: [c[0], c[1]],
            radius: c[2] / 2.0,
        }
    }
}

/// What the circle head read off one example, kept as the prediction's extra
/// (`prediction.extra::<Circles>()`).
#[derive(Debug, Clone, PartialEq)]
pub struct Circles {
    /// One circle per decoder position.
    pub tokens: Vec<Circle>,
    /// The example's circle: the mean of its valid tokens' circles; `None` when none is valid.
    pub object: Option<Circle>,
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
    ) -> pixel_model::Result<Vec<HeadLossPart<Dev>>> {
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
            return Ok(Vec::new());
        }
        let circles = self.forward(inputs.decoder.retaped::<OwnedTape<f32, Dev>>());
        let l1 = masked_l1(circles, &targets, &weights)?;
        Ok(vec![HeadLossPart::whole(l1)])
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
                let outputs = &circles[row * t * 3..(row + 1) * t * 3];
                let squares: Vec<[f32; 4]> = outputs.chunks(3).map(square_of).collect();
                p.tokens = squares.iter().copied().map(Some).collect();
                p.object = mean_box(&squares, &tokens.valid[row]);
                let tokens_circles: Vec<Circle> =
                    outputs.chunks(3).map(Circle::from_output).collect();
                p.set_extra(Circles {
                    object: mean_circle(&tokens_circles, &tokens.valid[row]),
                    tokens: tokens_circles,
                });
                p
            })
            .collect())
    }

    /// On referring expressions: the mean distance from the predicted centre to the centre of
    /// the target box's circle (`centre_error_px`) and the mean difference of the radii
    /// (`radius_error_px`), in pixels of the model input. None without an expression to score.
    fn metrics(
        &self,
        examples: &[Example],
        predictions: &[HeadPrediction],
    ) -> pixel_model::Result<BTreeMap<String, f64>> {
        if examples.len() != predictions.len() {
            return Err(ModelError::Invalid(format!(
                "head \"{}\": {} predictions for {} examples",
                self.name,
                predictions.len(),
                examples.len()
            )));
        }
        let (mut centre, mut radius, mut count) = (0.0f64, 0.0f64, 0usize);
        for (example, prediction) in examples.iter().zip(predictions) {
            let (TaskKind::ReferringLocalization, Some(target)) =
                (example.task, example.target_box)
            else {
                continue;
            };
            let circles = prediction.extra::<Circles>().ok_or_else(|| {
                ModelError::Invalid(format!(
                    "head \"{}\": a prediction without its circles",
                    self.name
                ))
            })?;
            let Some(predicted) = circles.object else {
                continue;
            };
            let truth = Circle::from_output(&circle_of(&target.to_array()));
            let side = example.image.width() as f64;
            let [dx, dy] = [0, 1].map(|k| (predicted.centre[k] - truth.centre[k]) as f64);
            centre += dx.hypot(dy) * side;
            radius += (predicted.radius - truth.radius).abs() as f64 * side;
            count += 1;
        }
        if count == 0 {
            return Ok(BTreeMap::new());
        }
        let n = count as f64;
        Ok(BTreeMap::from([
            ("centre_error_px".to_string(), centre / n),
            ("radius_error_px".to_string(), radius / n),
        ]))
    }
}

/// The mean of the valid tokens' circles; `None` when no token is valid.
fn mean_circle(circles: &[Circle], valid: &[bool]) -> Option<Circle> {
    let chosen: Vec<&Circle> = circles
        .iter()
        .zip(valid)
        .filter(|(_, &v)| v)
        .map(|(c, _)| c)
        .collect();
    if chosen.is_empty() {
        return None;
    }
    let n = chosen.len() as f32;
    let mean = |value: fn(&Circle) -> f32| chosen.iter().map(|c| value(c)).sum::<f32>() / n;
    Some(Circle {
        centre: [mean(|c| c.centre[0]), mean(|c| c.centre[1])],
        radius: mean(|c| c.radius),
    })
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

    /// A 64 px example of `task` whose target box is `target`.
    fn example(task: TaskKind, target: Option<[f32; 4]>) -> Example {
        Example {
            task,
            image: image::RgbImage::new(64, 64),
            prompt_box: BoxXyxy::whole_image(),
            context_ids: vec![1],
            target_ids: vec![1],
            token_boxes: vec![None],
            target_box: target.map(|b| BoxXyxy::from_array(b).unwrap()),
            target_mask: None,
            object_boxes: Vec::new(),
        }
    }

    /// A prediction whose example circle is `object`.
    fn prediction(object: Option<Circle>) -> HeadPrediction {
        let mut p = HeadPrediction::empty("circle", Reads::DecoderFeatures, 1);
        p.set_extra(Circles {
            tokens: object.into_iter().collect(),
            object,
        });
        p
    }

    fn head() -> CircleHead {
        let dev = Dev::default();
        CircleHead {
            name: "circle".into(),
            norm: LayerNorm::new(&dev, 1e-6),
            mlp: Mlp::new(&dev, 2, Activation::Gelu),
        }
    }

    #[test]
    fn the_metrics_measure_referring_circles_in_pixels() {
        // The target's circle: centre (32, 24) px, radius 16 px (half the longer side).
        let target = [0.25, 0.25, 0.75, 0.5];
        let near = Circle {
            centre: [0.5 + 3.0 / 64.0, 0.375 + 4.0 / 64.0],
            radius: 0.25 + 2.0 / 64.0,
        };
        let exact = Circle {
            centre: [0.5, 0.375],
            radius: 0.25,
        };
        let examples = [
            example(TaskKind::ReferringLocalization, Some(target)),
            example(TaskKind::ReferringLocalization, Some(target)),
            // Not scored: a caption, and an expression whose head found no valid token.
            example(TaskKind::TraceCaptioning, None),
            example(TaskKind::ReferringLocalization, Some(target)),
        ];
        let predictions = [
            prediction(Some(near)),
            prediction(Some(exact)),
            prediction(Some(near)),
            prediction(None),
        ];
        let metrics = head().metrics(&examples, &predictions).unwrap();
        assert_eq!(metrics.len(), 2, "{metrics:?}");
        // (5 px + 0 px) / 2 and (2 px + 0 px) / 2.
        assert!(
            (metrics["centre_error_px"] - 2.5).abs() < 1e-4,
            "{metrics:?}"
        );
        assert!(
            (metrics["radius_error_px"] - 1.0).abs() < 1e-4,
            "{metrics:?}"
        );
        assert!(head().metrics(&[], &[]).unwrap().is_empty());
        let without = HeadPrediction::empty("circle", Reads::DecoderFeatures, 1);
        let err = head()
            .metrics(&examples[..1], &[without])
            .unwrap_err()
            .to_string();
        assert!(err.contains("without its circles"), "{err}");
    }

    #[test]
    fn the_mean_circle_reads_valid_tokens_only() {
        let a = Circle {
            centre: [0.1, 0.2],
            radius: 0.1,
        };
        let b = Circle {
            centre: [0.5, 0.6],
            radius: 0.3,
        };
        assert_eq!(mean_circle(&[a, b], &[false, true]), Some(b));
        let both = mean_circle(&[a, b], &[true, true]).unwrap();
        assert!((both.centre[0] - 0.3).abs() < 1e-6 && (both.radius - 0.2).abs() < 1e-6);
        assert_eq!(mean_circle(&[a, b], &[false, false]), None);
    }

    #[test]
    fn the_mean_box_reads_valid_tokens_only() {
        let boxes = [[0.0, 0.0, 0.2, 0.2], [0.4, 0.4, 0.8, 0.8]];
        let b = mean_box(&boxes, &[false, true]).unwrap();
        assert_eq!(b.to_array(), [0.4, 0.4, 0.8, 0.8]);
        assert!(mean_box(&boxes, &[false, false]).is_none());
    }
}
