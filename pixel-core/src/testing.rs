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

/// Sets every parameter of `module` to values uniform in `[-scale, scale)` from a fixed
/// generator seeded by `seed`: a fresh module's norms are the identity and its biases often
/// zero, which would hide their wiring from a parity test.
pub fn randomize_params<D: dfdx::prelude::Device<f32>>(
    module: &mut dyn crate::params::Params<D>,
    seed: u64,
    scale: f32,
) {
    struct Randomize {
        state: u64,
        scale: f32,
    }
    impl<D: dfdx::prelude::Device<f32>> crate::params::ParamVisitor<D> for Randomize {
        fn visit(
            &mut self,
            _name: &str,
            tensor: &mut dyn crate::params::ParamTensor<D>,
        ) -> crate::Result<()> {
            let values: Vec<f32> = (0..tensor.numel())
                .map(|_| {
                    self.state = self
                        .state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    ((self.state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * self.scale
                })
                .collect();
            tensor.set_values(&values)
        }
    }
    module
        .visit_params("", &mut Randomize { state: seed, scale })
        .expect("a module's own parameters take values of their own size");
}
