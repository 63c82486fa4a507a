//! Trace point L1, with the semantics of scenic `projects/pixel_llm/evaluators.py`
//! (`PointEvaluator`, reported as `point_l1`):
//!
//! - coordinates are normalized by the image width and height;
//! - a token's distance to one ground-truth point is the *mean* of `|dx|` and `|dy|`;
//! - with several ground-truth points per token, the closest one counts; with several predicted
//!   points, their distances are averaged;
//! - a token counts when it is valid (not padding) and its ground truth is not all zeros
//!   (`gt_coords.max() > 0`);
//! - per example: sum over counted tokens / (count + 1e-8); the dataset value is the mean over
//!   examples.

use super::MetricsError;

/// Distance of one predicted point set to one token's ground-truth points, both normalized.
fn token_distance(pred: &[[f32; 2]], gt: &[[f32; 2]]) -> f64 {
    if pred.is_empty() || gt.is_empty() {
        return 0.0;
    }
    let mut sum = 0.0f64;
    for p in pred {
        let mut best = f64::INFINITY;
        for g in gt {
            let d = ((p[0] as f64 - g[0] as f64).abs() + (p[1] as f64 - g[1] as f64).abs()) / 2.0;
            best = best.min(d);
        }
        sum += best;
    }
    sum / pred.len() as f64
}

/// Point L1 of one example with one predicted and one ground-truth point per token, in
/// normalized `[x, y]` coordinates; `valid` is the token (padding) mask.
pub fn trace_point_l1(
    pred: &[[f32; 2]],
    gt: &[[f32; 2]],
    valid: &[bool],
) -> Result<f64, MetricsError> {
    if pred.len() != gt.len() {
        return Err(MetricsError::LengthMismatch {
            what: "predicted vs ground-truth points",
            left: pred.len(),
            right: gt.len(),
        });
    }
    let pred: Vec<Vec<[f32; 2]>> = pred.iter().map(|p| vec![*p]).collect();
    let gt: Vec<Vec<[f32; 2]>> = gt.iter().map(|g| vec![*g]).collect();
    trace_point_l1_multi(&pred, &gt, valid)
}

/// Point L1 of one example with several predicted and ground-truth points per token.
pub fn trace_point_l1_multi(
    pred: &[Vec<[f32; 2]>],
    gt: &[Vec<[f32; 2]>],
    valid: &[bool],
) -> Result<f64, MetricsError> {
    if pred.len() != gt.len() {
        return Err(MetricsError::LengthMismatch {
            what: "predicted vs ground-truth tokens",
            left: pred.len(),
            right: gt.len(),
        });
    }
    if valid.len() != gt.len() {
        return Err(MetricsError::LengthMismatch {
            what: "validity mask vs tokens",
            left: valid.len(),
            right: gt.len(),
        });
    }
    let mut sum = 0.0f64;
    let mut n = 0.0f64;
    for ((p, g), &v) in pred.iter().zip(gt).zip(valid) {
        let has_gt = g.iter().flatten().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) > 0.0;
        if v && has_gt {
            sum += token_distance(p, g);
            n += 1.0;
        }
    }
    Ok(sum / (n + 1e-8))
}

/// Dataset point L1: the mean of per-example values.
pub fn mean_over_examples(per_example: &[f64]) -> f64 {
    if per_example.is_empty() {
        0.0
    } else {
        per_example.iter().sum::<f64>() / per_example.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_is_mean_of_coordinate_errors_over_valid_tokens() {
        let p = [[0.2, 0.2], [1.0, 1.0]];
        let g = [[0.6, 0.4], [0.5, 0.5]];
        let v = trace_point_l1(&p, &g, &[true, false]).unwrap_or(f64::NAN);
        // (0.4 + 0.2) / 2 = 0.3, the invalid token is ignored.
        assert!((v - 0.3).abs() < 1e-6, "{v}");
    }

    #[test]
    fn all_zero_ground_truth_is_padding() {
        let v = trace_point_l1(&[[0.9, 0.9]], &[[0.0, 0.0]], &[true]).unwrap_or(f64::NAN);
        assert_eq!(v, 0.0);
    }

    #[test]
    fn closest_ground_truth_point_counts() {
        let v = trace_point_l1_multi(
            &[vec![[0.5, 0.5]]],
            &[vec![[0.1, 0.1], [0.5, 0.6]]],
            &[true],
        )
        .unwrap_or(f64::NAN);
        assert!((v - 0.05).abs() < 1e-6, "{v}");
    }

    #[test]
    fn mismatched_lengths_are_an_error() {
        assert!(trace_point_l1(&[[0.0, 0.0]], &[], &[]).is_err());
    }
}
