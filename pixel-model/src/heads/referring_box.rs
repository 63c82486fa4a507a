//! A box loss for referring expressions, as detectors train their boxes: L1 in normalized image
//! units plus generalized IoU, averaged over expressions.
//!
//! The corner heads' pixel L1 (scenic's `point_loss`) averages over every supervised token of
//! the batch, so an expression's one box weighs what one caption word does. With the L1's weight
//! of 0.1 in pixels that is about 0.08x the normalized L1 a detector gives its box, and there is
//! no overlap term. The PyTorch twin's bisection (tools/twin/README.md) found a 5 x L1 + 2 x GIoU
//! box loss among the changes that let the tiny model tell two objects apart. With this loss
//! the referring tokens leave the pixel L1, whose remaining tokens (captions) keep their share.
//! The three terms are the head's loss parts, so the log shows each on its own.
use crate::error::Result;
use crate::heads::{pixel_l1_weighted, HeadLossPart};
use crate::tasks::{Batch, TaskKind};
use dfdx::prelude::*;
use pixel_core::nn::Seq;
use serde::Deserialize;

/// Weights of the referring box loss terms, in the head's loss before the head's `weight`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferringBoxWeights {
    /// Sum over the four coordinates of `|predicted - target|`, normalized units.
    pub l1: f32,
    /// `1 - GIoU` of the predicted box (its two points' hull) and the target box.
    pub giou: f32,
}

impl ReferringBoxWeights {
    /// Both weights finite and non-negative, at least one positive.
    pub fn check(&self) -> std::result::Result<(), String> {
        if ![self.l1, self.giou]
            .iter()
            .all(|w| w.is_finite() && *w >= 0.0)
            || self.l1 + self.giou <= 0.0
        {
            return Err(format!(
                "l1 and giou must be finite and >= 0, one of them > 0; got l1 = {}, giou = {}",
                self.l1, self.giou
            ));
        }
        Ok(())
    }
}

/// The loss part names of a corner head with a referring box loss, logged as `<head>/<name>`:
/// the pixel L1 of the other supervised tokens, and the referring boxes' L1 and `1 - GIoU`.
pub const PIXEL_L1: &str = "pixel_l1";
pub const REFERRING_L1: &str = "referring_l1";
pub const REFERRING_GIOU: &str = "referring_giou";

/// A corner head's loss with referring expressions taken out of the pixel L1, as parts: the
/// pixel L1 over the other supervised tokens ([`PIXEL_L1`]), and over every supervised referring
/// token (mean over those tokens) the box L1 ([`REFERRING_L1`], weight `weights.l1`) and
/// `1 - GIoU` ([`REFERRING_GIOU`], weight `weights.giou`). Each part is there when the batch
/// has tokens for it.
pub fn corner_loss_with_referring_boxes<D: Device<f32> + pixel_core::ThreadSafe>(
    corners: Seq<Const<4>, D, OwnedTape<f32, D>>,
    batch: &Batch,
    weights: ReferringBoxWeights,
) -> Result<Vec<HeadLossPart<D>>> {
    let (b, t, _) = *corners.shape();
    let per_row = t * 4;
    let referring_row = |row: usize| batch.tasks[row] == TaskKind::ReferringLocalization;
    let mut other_weights = batch.location_weights.clone();
    let mut picked = Vec::new();
    for row in 0..b {
        if referring_row(row) {
            let span = row * per_row..(row + 1) * per_row;
            for (i, w) in batch.location_weights[span.clone()].chunks(4).enumerate() {
                if w[0] > 0.0 {
                    picked.push(row * t + i);
                }
            }
            other_weights[span].iter_mut().for_each(|w| *w = 0.0);
        }
    }
    let pixel_part = |l1| HeadLossPart::named(PIXEL_L1, l1, 1.0);
    if picked.is_empty() {
        let l1 = pixel_l1_weighted(corners, batch, &other_weights)?;
        return Ok(l1.map(pixel_part).into_iter().collect());
    }
    let dev = corners.device().clone();
    let n = picked.len();
    // The picked tokens' corners `[n, 4]` through a one-hot matrix, so the pixel L1 below keeps
    // its gradient (dfdx's CPU slice backward overwrites instead of adding).
    let mut one_hot = vec![0.0f32; n * b * t];
    let mut targets = Vec::with_capacity(n * 4);
    for (k, &token) in picked.iter().enumerate() {
        one_hot[k * b * t + token] = 1.0;
        targets.extend_from_slice(&batch.location_targets[token * 4..token * 4 + 4]);
    }
    // The pixel L1 reads a copy; `corners` itself (with the head's tape) feeds the box loss.
    let other_l1 = pixel_l1_weighted(
        corners.retaped::<OwnedTape<f32, D>>(),
        batch,
        &other_weights,
    )?;
    let (flat, tape) = corners.reshape_like(&(b * t, Const::<4>)).split_tape();
    let pred = dev
        .tensor_from_vec(one_hot, (n, b * t))
        .put_tape(tape)
        .matmul(flat);
    let (l1, giou) = referring_box_terms(pred, &targets);
    let mut parts: Vec<HeadLossPart<D>> = other_l1.map(pixel_part).into_iter().collect();
    parts.push(HeadLossPart::named(REFERRING_L1, l1, weights.l1));
    parts.push(HeadLossPart::named(REFERRING_GIOU, giou, weights.giou));
    Ok(parts)
}

/// A scalar on tape `T`.
type Scalar<D, T> = Tensor<(), f32, D, T>;

/// The referring box loss terms, unweighted, each a mean over the `n` rows of `pred` `[n, 4]`
/// (two points each; the box is their hull) against `targets` `[n * 4]` (x0, y0, x1, y1):
/// the L1 of the four coordinates summed, and `1 - GIoU`. The L1 holds `pred`'s own tape, the
/// GIoU a copy's: only their sum reaches what made `pred`.
pub fn referring_box_terms<D: Device<f32> + pixel_core::ThreadSafe, T: Tape<f32, D> + Merge<T>>(
    pred: Tensor<(usize, Const<4>), f32, D, T>,
    targets: &[f32],
) -> (Scalar<D, T>, Scalar<D, T>) {
    let dev = pred.device().clone();
    let n = pred.shape().0;
    let target = dev.tensor_from_vec(targets.to_vec(), (n, Const::<4>));
    let giou = generalized_iou(pred.retaped::<T>(), targets);
    // `pred` itself, with its tape, ends here.
    let l1 = (pred - target).abs().sum() * (1.0 / n as f32);
    (l1, giou.sum() * (-1.0 / n as f32) + 1.0)
}

/// GIoU `[n]` of the hulls of `pred`'s point pairs `[n, 4]` and the boxes `targets` `[n * 4]`.
fn generalized_iou<D: Device<f32> + pixel_core::ThreadSafe, T: Tape<f32, D> + Merge<T>>(
    pred: Tensor<(usize, Const<4>), f32, D, T>,
    targets: &[f32],
) -> Tensor<(usize,), f32, D, T> {
    let dev = pred.device().clone();
    let n = pred.shape().0;
    // One coordinate as `[n]` through a one-hot column (no slice on the tape).
    let coordinate = |k: usize| {
        let mut column = [[0.0f32]; 4];
        column[k] = [1.0];
        pred.retaped::<T>()
            .matmul(dev.tensor(column))
            .reshape_like(&(n,))
    };
    let target =
        |k: usize| dev.tensor_from_vec(targets.iter().skip(k).step_by(4).copied().collect(), (n,));
    let (ax, ay, bx, by) = (coordinate(0), coordinate(1), coordinate(2), coordinate(3));
    let (x0, x1) = (ax.retaped::<T>().minimum(bx.retaped::<T>()), ax.maximum(bx));
    let (y0, y1) = (ay.retaped::<T>().minimum(by.retaped::<T>()), ay.maximum(by));
    let (tx0, ty0, tx1, ty1) = (target(0), target(1), target(2), target(3));
    let target_area = (tx1.clone() - tx0.clone()) * (ty1.clone() - ty0.clone());
    let inter_w =
        (x1.retaped::<T>().minimum(tx1.clone()) - x0.retaped::<T>().maximum(tx0.clone())).relu();
    let inter_h =
        (y1.retaped::<T>().minimum(ty1.clone()) - y0.retaped::<T>().maximum(ty0.clone())).relu();
    let inter = inter_w * inter_h;
    let area = (x1.retaped::<T>() - x0.retaped::<T>()) * (y1.retaped::<T>() - y0.retaped::<T>());
    let union = area - inter.retaped::<T>() + target_area;
    let hull = (x1.maximum(tx1) - x0.minimum(tx0)) * (y1.maximum(ty1) - y0.minimum(ty0));
    let iou = inter / union.retaped::<T>().clamp(1e-7, f32::MAX);
    let outside = (hull.retaped::<T>() - union) / hull.clamp(1e-7, f32::MAX);
    iou - outside
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_core::geometry::BoxXyxy;

    fn giou_reference(p: [f32; 4], t: [f32; 4]) -> f32 {
        let (x0, x1) = (p[0].min(p[2]), p[0].max(p[2]));
        let (y0, y1) = (p[1].min(p[3]), p[1].max(p[3]));
        let iw = (x1.min(t[2]) - x0.max(t[0])).max(0.0);
        let ih = (y1.min(t[3]) - y0.max(t[1])).max(0.0);
        let inter = iw * ih;
        let union = (x1 - x0) * (y1 - y0) + (t[2] - t[0]) * (t[3] - t[1]) - inter;
        let hull = (x1.max(t[2]) - x0.min(t[0])) * (y1.max(t[3]) - y0.min(t[1]));
        inter / union - (hull - union) / hull
    }

    #[test]
    fn giou_equals_the_direct_formula_and_one_for_the_target_itself() {
        let dev: Cpu = Default::default();
        let preds = [
            [0.1, 0.2, 0.5, 0.6],
            [0.5, 0.6, 0.1, 0.2],
            [0.7, 0.7, 0.9, 0.95],
        ];
        let targets = [0.1, 0.2, 0.5, 0.6, 0.2, 0.1, 0.6, 0.4, 0.0, 0.0, 0.3, 0.3];
        let pred = dev.tensor_from_vec(preds.concat(), (3, Const::<4>));
        let got = generalized_iou(pred, &targets).as_vec();
        for (k, p) in preds.iter().enumerate() {
            let t = [0, 1, 2, 3].map(|c| targets[k * 4 + c]);
            assert!(
                (got[k] - giou_reference(*p, t)).abs() < 1e-6,
                "{k}: {got:?}"
            );
        }
        assert!((got[0] - 1.0).abs() < 1e-6);
        assert!(
            got[2] < 0.0,
            "disjoint boxes have a negative GIoU: {}",
            got[2]
        );
    }

    /// `analytic` equals central differences of `loss_at` around `values` (step 1e-3).
    fn assert_finite_differences(
        values: &[f32],
        analytic: &[f32],
        loss_at: impl Fn(&[f32]) -> f32,
    ) {
        for i in 0..values.len() {
            let (mut up, mut down) = (values.to_vec(), values.to_vec());
            up[i] += 1e-3;
            down[i] -= 1e-3;
            let numeric = (loss_at(&up) - loss_at(&down)) / 2e-3;
            assert!(
                (numeric - analytic[i]).abs() < 2e-2,
                "{i}: {numeric} vs {}",
                analytic[i]
            );
        }
    }

    /// Row 0 a caption with a box on token 0, row 1 a referring expression supervised at its
    /// token 1; 16 px images.
    fn two_row_batch() -> Batch {
        let (b, t) = (2, 2);
        let mut location_weights = vec![0.0; b * t * 4];
        location_weights[..4].fill(1.0);
        location_weights[12..16].fill(1.0);
        Batch {
            size: b,
            image_size: 16,
            pixels: vec![0.0; b * 3 * 16 * 16],
            prompt_boxes: vec![BoxXyxy::whole_image(); b],
            context_ids: vec![1; b],
            context_mask: vec![true; b],
            context_len: 1,
            decoder_input_ids: vec![0; b * t],
            target_ids: vec![1; b * t],
            target_weights: vec![1.0; b * t],
            target_len: t,
            location_targets: vec![
                0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0, 0.0, //
                0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.9, 0.8,
            ],
            location_weights,
            tasks: vec![TaskKind::TraceCaptioning, TaskKind::ReferringLocalization],
            target_boxes: vec![None, Some(BoxXyxy::whole_image())],
            target_masks: vec![None; b],
            object_boxes: vec![Vec::new(); b],
        }
    }

    /// The parts' weighted sum, as the model adds them up.
    fn weighted_sum(parts: Vec<HeadLossPart<Cpu>>) -> pixel_train::TapedScalar<Cpu> {
        parts
            .into_iter()
            .map(|p| p.loss * p.weight)
            .reduce(|a, b| a + b)
            .unwrap()
    }

    #[test]
    fn referring_tokens_leave_the_pixel_l1_and_get_the_box_loss_as_parts() {
        let dev: Cpu = Default::default();
        let batch = two_row_batch();
        let weights = ReferringBoxWeights { l1: 5.0, giou: 2.0 };
        let values: Vec<f32> = (0..16).map(|i| 0.05 * i as f32).collect();
        let parts_at = |v: &[f32]| {
            let corners = dev.tensor_from_vec(v.to_vec(), (2, 2, Const::<4>));
            corner_loss_with_referring_boxes(corners.leaky_trace(), &batch, weights).unwrap()
        };
        let parts = parts_at(&values);
        let named: Vec<(&str, f32)> = parts.iter().map(|p| (p.name.as_str(), p.weight)).collect();
        assert_eq!(
            named,
            [(PIXEL_L1, 1.0), (REFERRING_L1, 5.0), (REFERRING_GIOU, 2.0)]
        );
        // The caption token's pixel L1; the referring token's box L1 and 1 - GIoU.
        let pixel = (0..4)
            .map(|c| (values[c] - batch.location_targets[c]).abs() * 16.0)
            .sum::<f32>()
            / 4.0;
        let (pred, target) = (&values[12..16], &batch.location_targets[12..16]);
        let box_l1: f32 = pred.iter().zip(target).map(|(p, t)| (p - t).abs()).sum();
        let target = [target[0], target[1], target[2], target[3]];
        let one_minus_giou = 1.0 - giou_reference([pred[0], pred[1], pred[2], pred[3]], target);
        for (part, expected) in parts.iter().zip([pixel, box_l1, one_minus_giou]) {
            assert!(
                (part.loss.array() - expected).abs() < 1e-5,
                "{}: {} vs {expected}",
                part.name,
                part.loss.array()
            );
        }
        let loss_at = |v: &[f32]| weighted_sum(parts_at(v)).array();
        let corners = dev.tensor_from_vec(values.clone(), (2, 2, Const::<4>));
        let parts = corner_loss_with_referring_boxes(corners.leaky_trace(), &batch, weights);
        let grads = weighted_sum(parts.unwrap()).backward();
        assert_finite_differences(&values, &grads.get(&corners).as_vec(), loss_at);
    }

    #[test]
    fn a_batch_without_expressions_has_only_the_pixel_l1_and_trains_through_it() {
        let dev: Cpu = Default::default();
        let mut batch = two_row_batch();
        batch.tasks[1] = TaskKind::TraceCaptioning;
        let weights = ReferringBoxWeights { l1: 5.0, giou: 2.0 };
        let values: Vec<f32> = (0..16).map(|i| 0.05 * i as f32).collect();
        let corners = dev.tensor_from_vec(values, (2, 2, Const::<4>));
        let mut parts =
            corner_loss_with_referring_boxes(corners.leaky_trace(), &batch, weights).unwrap();
        assert_eq!(parts.len(), 1);
        let part = parts.remove(0);
        assert_eq!(part.name, PIXEL_L1);
        let all = crate::heads::pixel_l1(corners.leaky_trace(), &batch)
            .unwrap()
            .unwrap();
        assert_eq!(part.loss.array(), all.array());
        let grads = part.loss.backward();
        assert!(grads.get(&corners).as_vec().iter().any(|&g| g != 0.0));
    }

    #[test]
    fn box_terms_gradient_matches_finite_differences() {
        let dev: Cpu = Default::default();
        let p = [0.15f32, 0.25, 0.55, 0.5, 0.6, 0.65, 0.2, 0.3];
        let targets = [0.1, 0.2, 0.5, 0.6, 0.2, 0.1, 0.6, 0.4];
        let loss = |pred: Tensor<(usize, Const<4>), f32, Cpu, OwnedTape<f32, Cpu>>| {
            let (l1, giou) = referring_box_terms(pred, &targets);
            l1 * 5.0 + giou * 2.0
        };
        let loss_at = |values: &[f32]| {
            let pred = dev.tensor_from_vec(values.to_vec(), (2, Const::<4>));
            loss(pred.leaky_trace()).array()
        };
        let pred = dev.tensor_from_vec(p.to_vec(), (2, Const::<4>));
        let grads = loss(pred.leaky_trace()).backward();
        assert_finite_differences(&p, &grads.get(&pred).as_vec(), loss_at);
    }
}
