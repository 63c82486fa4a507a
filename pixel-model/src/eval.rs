//! Evaluation of the demo tasks against the best constant predictors.
//!
//! Locations are the scored head's: the first configured head that locates tokens.
//!
//! - Referring localization: a hit is IoU strictly above 0.5. A regression head (point, box) is
//!   fed the expression teacher-forced (as the official evaluation does on RefCOCO) and its box
//!   is the head's box over the valid tokens (the expression's last token, as trained; the hull
//!   of the point head's points); a text head (bins, string) generates its box, which is parsed
//!   (the whole image when it does not parse). The baseline is the constant box with the best
//!   training Acc@0.5.
//! - Trace captioning: each caption token's two predicted points (or box corners) against its
//!   word's box corners, mean absolute error in normalized coordinates over valid tokens,
//!   teacher-forced. The baseline is the per-coordinate median of the training token boxes, the
//!   constant that minimises L1.
//! - Each head's own metrics ([`crate::heads::OutputHead::metrics`]) over both tasks' examples
//!   and the predictions above (referring expressions as decoded for the referring box, captions
//!   teacher-forced), reported by head name.
use crate::error::Result;
use crate::heads::{HeadPrediction, Reads};
use crate::tasks::{Batch, Example, TaskKind};
use pixel_core::geometry::{BoxXyxy, Point};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Teacher-forced outputs for a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherForced {
    /// `[B * T]` argmax ids.
    pub argmax: Vec<usize>,
    /// `[B * T * 4]` the scored head's corners at each position (the whole image where it read
    /// none).
    pub corners: Vec<f32>,
    /// `[B][head]` what each head read, heads in config order.
    pub heads: Vec<Vec<HeadPrediction>>,
}

/// A generated sequence (without the start token) and the locations of its tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub ids: Vec<usize>,
    /// The scored head's corners for each generated token.
    pub corners: Vec<[f32; 4]>,
    /// What each head read (positions count from the start token), heads in config order.
    pub heads: Vec<HeadPrediction>,
}

/// What evaluation needs from a model.
pub trait Predictor {
    /// The batch of `examples` with the model's targets (a text-coordinate head writes boxes
    /// into the target text).
    fn batch(&self, examples: &[Example]) -> Result<Batch> {
        Batch::new(examples)
    }

    /// How the scored head reads locations: teacher-forced regression or generated text.
    fn reads(&self) -> Reads {
        Reads::DecoderFeatures
    }

    fn teacher_forced(&self, batch: &Batch) -> Result<TeacherForced>;
    fn generate(&self, batch: &Batch, max_new_tokens: usize) -> Result<Vec<Generated>>;

    /// Each head's own metrics over `examples` and what the heads read off them
    /// (`predictions[example][head]`); heads without metrics are left out. None by default.
    fn head_metrics(
        &self,
        _examples: &[Example],
        _predictions: &[Vec<HeadPrediction>],
    ) -> Result<HeadMetrics> {
        Ok(HeadMetrics::new())
    }
}

/// The heads' own metrics: by head name, then metric name.
pub type HeadMetrics = BTreeMap<String, BTreeMap<String, f64>>;

/// The prediction of the scored head: the first that locates tokens.
pub fn scored(heads: &[HeadPrediction]) -> Option<&HeadPrediction> {
    heads.iter().find(|h| h.reads.locates_tokens())
}

/// Room a text head gets to write a referring box: the prepared target's length plus a margin.
const GENERATION_MARGIN: usize = 4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferringReport {
    pub acc50: f32,
    pub miou: f32,
    pub baseline_acc50: f32,
    pub baseline_miou: f32,
    pub count: usize,
    /// Acc@0.5 over the expressions of images with `n` objects, by `n`: one object needs no
    /// reading of the expression, several need its words bound to the right object.
    #[serde(default, deserialize_with = "usize_keys")]
    pub acc50_by_objects: BTreeMap<usize, f32>,
    /// Acc@0.5 by the expression's length in tokens (EOS not counted): on ShapesLN one token
    /// names the kind alone, two add the colour or the size, three name all.
    #[serde(default, deserialize_with = "usize_keys")]
    pub acc50_by_expression_tokens: BTreeMap<usize, f32>,
    /// By objects in the image as `acc50_by_objects`: how often the predicted box overlaps the
    /// named object more than any other (IoU). It separates choosing the object from drawing its
    /// box: a model that binds but draws loosely scores high here and low on Acc@0.5.
    #[serde(default, deserialize_with = "usize_keys")]
    pub named_object_by_objects: BTreeMap<usize, f32>,
}

/// A map with integer keys read from JSON's string keys. `results.json` and `metrics.json`
/// flatten the report into their top level, and serde's flatten hands the keys on as strings,
/// which a `usize` key does not parse (serde-rs/serde#1183).
fn usize_keys<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<usize, f32>, D::Error> {
    BTreeMap::<String, f32>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| {
            k.parse::<usize>()
                .map(|k| (k, v))
                .map_err(|e| serde::de::Error::custom(format!("key `{k}`: {e}")))
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TraceReport {
    pub point_l1: f32,
    pub baseline_point_l1: f32,
    /// Teacher-forced next-token accuracy over caption tokens (EOS included).
    pub token_accuracy: f32,
    pub tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub referring_localization: ReferringReport,
    pub trace_captioning: TraceReport,
    /// Each head's own metrics on the examples scored above, as `heads.<name>.<metric>`;
    /// left out when no head has any (so reports of the built-in heads read as before).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub heads: HeadMetrics,
}

/// The best constant predictors, fitted on training examples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    pub referring_box: BoxXyxy,
    pub token_box: [f32; 4],
}

impl Baselines {
    /// Fits both baselines on training examples of the two tasks.
    pub fn fit(examples: &[Example]) -> Baselines {
        let targets: Vec<BoxXyxy> = examples
            .iter()
            .filter(|e| e.task == TaskKind::ReferringLocalization)
            .filter_map(|e| e.target_box)
            .collect();
        let token_boxes: Vec<[f32; 4]> = examples
            .iter()
            .filter(|e| e.task == TaskKind::TraceCaptioning)
            .flat_map(|e| e.token_boxes.iter().flatten().map(|b| b.to_array()))
            .collect();
        let mut token_box = [0.5; 4];
        for (c, slot) in token_box.iter_mut().enumerate() {
            let mut values: Vec<f32> = token_boxes.iter().map(|b| b[c]).collect();
            if !values.is_empty() {
                values.sort_by(f32::total_cmp);
                *slot = values[values.len() / 2];
            }
        }
        Baselines {
            referring_box: best_constant_box(&targets),
            token_box,
        }
    }
}

/// The box, among the mean box and a grid of centred sizes and positions, with the highest
/// Acc@0.5 (ties broken by mean IoU) on `targets`.
pub fn best_constant_box(targets: &[BoxXyxy]) -> BoxXyxy {
    let n = targets.len().max(1) as f32;
    let mean = targets.iter().fold([0.0; 4], |acc, b| {
        let a = b.to_array();
        [
            acc[0] + a[0] / n,
            acc[1] + a[1] / n,
            acc[2] + a[2] / n,
            acc[3] + a[3] / n,
        ]
    });
    let mut candidates = vec![BoxXyxy {
        x0: mean[0],
        y0: mean[1],
        x1: mean[2],
        y1: mean[3],
    }];
    let steps: Vec<f32> = (1..20).map(|i| i as f32 * 0.05).collect();
    let sizes: Vec<f32> = (1..16).map(|i| i as f32 * 0.05).collect();
    for &cx in &steps {
        for &cy in &steps {
            for &s in &sizes {
                let b = BoxXyxy::from_centre_size(Point::new(cx, cy), s, s).clip_unit();
                candidates.push(b);
            }
        }
    }
    let score = |c: &BoxXyxy| {
        let hits = targets.iter().filter(|t| c.iou(**t) > 0.5).count();
        let miou: f32 = targets.iter().map(|t| c.iou(*t)).sum();
        (hits, miou)
    };
    candidates
        .into_iter()
        .map(|c| (score(&c), c))
        .max_by(|(a, _), (b, _)| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
        .map(|(_, c)| c)
        .unwrap_or_else(BoxXyxy::whole_image)
}

/// Acc@0.5 (IoU strictly greater than 0.5) and mean IoU of `predictions` against `targets`.
pub fn acc50_and_miou(predictions: &[BoxXyxy], targets: &[BoxXyxy]) -> (f32, f32) {
    let n = targets.len().max(1) as f32;
    let ious: Vec<f32> = predictions
        .iter()
        .zip(targets)
        .map(|(p, t)| p.iou(*t))
        .collect();
    (
        ious.iter().filter(|&&v| v > 0.5).count() as f32 / n,
        ious.iter().sum::<f32>() / n,
    )
}

/// Acc@0.5 within each group of `groups` (one key per prediction), by key.
pub fn acc50_by_group(
    predictions: &[BoxXyxy],
    targets: &[BoxXyxy],
    groups: &[usize],
) -> BTreeMap<usize, f32> {
    let hits = predictions
        .iter()
        .zip(targets)
        .map(|(p, t)| p.iou(*t) > 0.5);
    share_by_group(hits, groups)
}

/// The share of `true` in `hits` within each group of `groups` (one key per hit), by key.
fn share_by_group(hits: impl Iterator<Item = bool>, groups: &[usize]) -> BTreeMap<usize, f32> {
    let mut tally: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    for (hit, g) in hits.zip(groups) {
        let entry = tally.entry(*g).or_default();
        entry.0 += usize::from(hit);
        entry.1 += 1;
    }
    tally
        .into_iter()
        .map(|(g, (hits, n))| (g, hits as f32 / n as f32))
        .collect()
}

/// Within each group of `groups`, the share of predictions whose IoU with their target is
/// positive and at least their IoU with every other box of `objects` (each example's boxes,
/// the target among them).
pub fn named_object_by_group(
    predictions: &[BoxXyxy],
    targets: &[BoxXyxy],
    objects: &[&[BoxXyxy]],
    groups: &[usize],
) -> BTreeMap<usize, f32> {
    let hits = predictions
        .iter()
        .zip(targets)
        .zip(objects)
        .map(|((p, t), boxes)| {
            let named = p.iou(*t);
            named > 0.0 && boxes.iter().all(|o| p.iou(*o) <= named)
        });
    share_by_group(hits, groups)
}

/// The scored head's box for each referring example (one batch), from
/// [`referring_head_predictions`]; the whole image where it gives none.
pub fn referring_boxes(model: &impl Predictor, examples: &[Example]) -> Result<Vec<BoxXyxy>> {
    Ok(referring_head_predictions(model, examples)?
        .iter()
        .map(|h| referring_box(h))
        .collect())
}

/// The scored head's box among one example's head predictions; the whole image where it gives
/// none.
fn referring_box(heads: &[HeadPrediction]) -> BoxXyxy {
    scored(heads)
        .and_then(|p| p.object)
        .unwrap_or_else(BoxXyxy::whole_image)
}

/// What every head read off each referring example (one batch), `[example][head]`:
/// teacher-forced for a regression head, generated and parsed for a text head. A mask head's
/// mask is prompted by the box of that same decode.
pub fn referring_head_predictions(
    model: &impl Predictor,
    examples: &[Example],
) -> Result<Vec<Vec<HeadPrediction>>> {
    let batch = model.batch(examples)?;
    Ok(match model.reads() {
        Reads::Text => model
            .generate(&batch, batch.target_len + GENERATION_MARGIN)?
            .into_iter()
            .map(|g| g.heads)
            .collect(),
        _ => model.teacher_forced(&batch)?.heads,
    })
}

/// Evaluates `model` on validation examples, `batch_size` at a time.
pub fn evaluate(
    model: &impl Predictor,
    examples: &[Example],
    baselines: &Baselines,
    batch_size: usize,
) -> Result<EvalReport> {
    let referring: Vec<&Example> = examples
        .iter()
        .filter(|e| e.task == TaskKind::ReferringLocalization)
        .collect();
    let traces: Vec<&Example> = examples
        .iter()
        .filter(|e| e.task == TaskKind::TraceCaptioning)
        .collect();

    // Every example scored and what each head read off it, for the heads' own metrics.
    let mut scored_examples: Vec<Example> = Vec::with_capacity(referring.len() + traces.len());
    let mut predictions: Vec<Vec<HeadPrediction>> = Vec::with_capacity(scored_examples.capacity());
    let mut predicted = Vec::new();
    let mut targets = Vec::new();
    for chunk in referring.chunks(batch_size.max(1)) {
        let owned: Vec<Example> = chunk.iter().map(|e| (*e).clone()).collect();
        let heads = referring_head_predictions(model, &owned)?;
        predicted.extend(heads.iter().map(|h| referring_box(h)));
        targets.extend(owned.iter().filter_map(|e| e.target_box));
        predictions.extend(heads);
        scored_examples.extend(owned);
    }
    let (acc50, miou) = acc50_and_miou(&predicted, &targets);
    let objects: Vec<usize> = referring.iter().map(|e| e.object_boxes.len()).collect();
    let acc50_by_objects = acc50_by_group(&predicted, &targets, &objects);
    let object_boxes: Vec<&[BoxXyxy]> = referring
        .iter()
        .map(|e| e.object_boxes.as_slice())
        .collect();
    let named_object_by_objects =
        named_object_by_group(&predicted, &targets, &object_boxes, &objects);
    let lengths: Vec<usize> = referring
        .iter()
        .map(|e| e.target_ids.len().saturating_sub(1))
        .collect();
    let acc50_by_expression_tokens = acc50_by_group(&predicted, &targets, &lengths);
    let constant = vec![baselines.referring_box; targets.len()];
    let (baseline_acc50, baseline_miou) = acc50_and_miou(&constant, &targets);

    let (mut l1_sum, mut baseline_sum, mut points) = (0.0f64, 0.0f64, 0usize);
    let (mut correct, mut tokens) = (0usize, 0usize);
    for chunk in traces.chunks(batch_size.max(1)) {
        let owned: Vec<Example> = chunk.iter().map(|e| (*e).clone()).collect();
        let batch = model.batch(&owned)?;
        let out = model.teacher_forced(&batch)?;
        for i in 0..batch.size * batch.target_len {
            if batch.target_weights[i] > 0.0 {
                tokens += 1;
                correct += usize::from(out.argmax[i] == batch.target_ids[i]);
            }
            if batch.location_weights[i * 4] > 0.0 {
                let gt = &batch.location_targets[i * 4..i * 4 + 4];
                let pred = &out.corners[i * 4..i * 4 + 4];
                l1_sum += mean_abs(pred, gt) as f64;
                baseline_sum += mean_abs(&baselines.token_box, gt) as f64;
                points += 1;
            }
        }
        predictions.extend(out.heads);
        scored_examples.extend(owned);
    }
    let heads = model.head_metrics(&scored_examples, &predictions)?;
    let per_point = |s: f64| {
        if points == 0 {
            0.0
        } else {
            (s / points as f64) as f32
        }
    };
    Ok(EvalReport {
        referring_localization: ReferringReport {
            acc50,
            miou,
            baseline_acc50,
            baseline_miou,
            count: targets.len(),
            acc50_by_objects,
            acc50_by_expression_tokens,
            named_object_by_objects,
        },
        trace_captioning: TraceReport {
            point_l1: per_point(l1_sum),
            baseline_point_l1: per_point(baseline_sum),
            token_accuracy: if tokens == 0 {
                0.0
            } else {
                correct as f32 / tokens as f32
            },
            tokens,
        },
        heads,
    })
}

/// Mean absolute difference of two corner quadruples: the per-token trace point L1.
pub fn mean_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len().max(1) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn acc50_counts_iou_strictly_above_half() {
        let t = BoxXyxy::new(0.0, 0.0, 1.0, 1.0).unwrap();
        let half = BoxXyxy::new(0.0, 0.0, 0.5, 1.0).unwrap();
        let (acc, miou) = acc50_and_miou(&[half, t], &[t, t]);
        assert_eq!(acc, 0.5);
        assert!((miou - 0.75).abs() < 1e-6);
    }

    #[test]
    fn named_object_by_group_counts_the_closest_object_not_the_fit() {
        let left = BoxXyxy::new(0.0, 0.0, 0.4, 0.4).unwrap();
        let right = BoxXyxy::new(0.6, 0.6, 1.0, 1.0).unwrap();
        // Loose but on the named object (IoU < 0.5), on the other object, and on neither.
        let loose = BoxXyxy::new(0.0, 0.0, 0.5, 0.7).unwrap();
        let nowhere = BoxXyxy::new(0.45, 0.45, 0.55, 0.55).unwrap();
        let objects: [&[BoxXyxy]; 4] = [&[left, right], &[left, right], &[left, right], &[left]];
        let by = named_object_by_group(
            &[loose, right, nowhere, left],
            &[left, left, left, left],
            &objects,
            &[2, 2, 2, 1],
        );
        assert!(loose.iou(left) < 0.5);
        assert_eq!(by[&2], 1.0 / 3.0);
        assert_eq!(by[&1], 1.0);
    }

    #[test]
    fn acc50_by_group_scores_each_group_alone() {
        let t = BoxXyxy::new(0.0, 0.0, 1.0, 1.0).unwrap();
        let miss = BoxXyxy::new(0.0, 0.0, 0.2, 0.2).unwrap();
        let by = acc50_by_group(&[t, miss, t, t], &[t, t, t, t], &[3, 3, 1, 3]);
        assert_eq!(by.len(), 2);
        assert_eq!(by[&1], 1.0);
        assert!((by[&3] - 2.0 / 3.0).abs() < 1e-6);
    }

    proptest! {
        #[test]
        fn best_constant_box_beats_the_mean_box(seed in 0u64..200) {
            let targets: Vec<BoxXyxy> = (0..30u64)
                .map(|i| {
                    let h = (seed * 31 + i * 17) % 100;
                    let x = (h % 10) as f32 / 12.0;
                    let y = (h / 10) as f32 / 12.0;
                    BoxXyxy::new(x, y, x + 0.15, y + 0.15).unwrap()
                })
                .collect();
            let best = best_constant_box(&targets);
            let n = targets.len() as f32;
            let mean = BoxXyxy {
                x0: targets.iter().map(|t| t.x0).sum::<f32>() / n,
                y0: targets.iter().map(|t| t.y0).sum::<f32>() / n,
                x1: targets.iter().map(|t| t.x1).sum::<f32>() / n,
                y1: targets.iter().map(|t| t.y1).sum::<f32>() / n,
            };
            let (best_acc, _) = acc50_and_miou(&vec![best; targets.len()], &targets);
            let (mean_acc, _) = acc50_and_miou(&vec![mean; targets.len()], &targets);
            prop_assert!(best_acc >= mean_acc);
        }
    }
}
