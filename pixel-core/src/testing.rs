//! Helpers for tests across the workspace.

/// Asserts `|got - want| <= tol * max(1, max|want|)` element-wise, naming the first bad index.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(
        got.len(),
        want.len(),
        "length {} vs {}",
        got.len(),
        want.len()
    );
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "index {i}: got {g}, want {w} (tol {tol} x {scale})"
        );
    }
}

/// The largest absolute difference, for reporting parity errors.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
