//! Trace point L1, with the semantics of PixelLLM's trace evaluator: every valid token's
//! predicted point is compared with its ground-truth point in normalized image coordinates, the
//! L1 distance `|dx| + |dy|` is averaged over valid tokens.

use super::MetricsError;

/// Mean over valid tokens of `|px - gx| + |py - gy|`; points are `[x, y]` normalized to [0, 1].
/// Returns 0 when no token is valid.
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
    if valid.len() != gt.len() {
        return Err(MetricsError::LengthMismatch {
            what: "validity mask vs points",
            left: valid.len(),
            right: gt.len(),
        });
    }
    let mut sum = 0.0f64;
    let mut n = 0usize;
    for ((p, g), &v) in pred.iter().zip(gt).zip(valid) {
        if v {
            sum += (p[0] as f64 - g[0] as f64).abs() + (p[1] as f64 - g[1] as f64).abs();
            n += 1;
        }
    }
    Ok(if n == 0 { 0.0 } else { sum / n as f64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_tokens_do_not_count() {
        let p = [[0.0, 0.0], [1.0, 1.0]];
        let g = [[0.5, 0.0], [0.0, 0.0]];
        let v = trace_point_l1(&p, &g, &[true, false]).unwrap_or(f64::NAN);
        assert!((v - 0.5).abs() < 1e-9);
    }

    #[test]
    fn mismatched_lengths_are_an_error() {
        assert!(trace_point_l1(&[[0.0, 0.0]], &[], &[]).is_err());
    }
}
