//! Element-wise functions on host slices, written so that the compiler vectorizes them: libm's
//! `expf` and `tanhf` are a call per value, and `tanhf` took 12-14% of T5's encoder.

/// `e^x` to about 2 ulp in straight-line f32 arithmetic: `x = n ln 2 + r` with
/// `|r| <= ln 2 / 2`, `e^r` by its degree-6 Taylor polynomial, `2^n` put into the exponent
/// bits. Exactly 0 below -87.3, where libm's `expf` gives subnormals (under 1.2e-38) and then
/// 0, so a masked score's softmax weight stays exactly zero; e^88 above 88 (so that `2^n`
/// stays a normal f32).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let clamped = x.clamp(-87.3, 88.0);
    // Round to nearest by adding and subtracting 1.5 * 2^23: `f32::round` is a libm call
    // without SSE4.1, which would keep the loop from vectorizing.
    let n = (clamped * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    // ln 2 in two parts, so that `n * 0.693_145_75` is exact.
    let r = clamped - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let y = p * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        y
    }
}

/// The sum of `values` in 8 independent lanes, so that it vectorizes.
pub fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..8 {
            lanes[l] += c[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The largest of `values` (`f32::max` semantics; -inf for none) in 8 independent lanes.
pub fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for l in 0..8 {
            lanes[l] = lanes[l].max(c[l]);
        }
    }
    lanes.iter().copied().fold(tail, f32::max)
}

/// HF's `gelu_new` in place: `0.5 x (1 + tanh z)` with `z = sqrt(2 / pi) (x + 0.044715 x^3)`,
/// computed as `x / (1 + e^(-2z))` (the same function) with [`exp`].
pub fn gelu_tanh_in_place(x: &mut [f32]) {
    let c = (2.0f32 / std::f32::consts::PI).sqrt();
    x.iter_mut().for_each(|v| {
        let z = c * (*v + 0.044715 * *v * *v * *v);
        *v /= 1.0 + exp(-2.0 * z);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 4e-7, "relative error {worst:e}");
        assert_eq!(exp(-87.31), 0.0);
        assert_eq!(exp(-1e9), 0.0);
        assert!(exp(-87.3) > 0.0 && exp(200.0).is_finite());
    }

    #[test]
    fn sum_and_max_cover_every_value() {
        let values: Vec<f32> = (0..37).map(|i| i as f32).collect();
        assert_eq!(sum(&values), 666.0);
        assert_eq!(sum(&[]), 0.0);
        assert_eq!(max(&values), 36.0);
        assert_eq!(max(&[-3.0, -1.0, -2.0]), -1.0);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn gelu_tanh_equals_the_tanh_formula() {
        let mut x: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.003).collect();
        x.extend([-30.0, -12.0, 12.0, 30.0, 0.0]);
        let want: Vec<f64> = x
            .iter()
            .map(|&v| {
                let v = v as f64;
                let z = (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3));
                0.5 * v * (1.0 + z.tanh())
            })
            .collect();
        gelu_tanh_in_place(&mut x);
        for (g, w) in x.iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()),
                "{g} vs {w}"
            );
        }
    }
}
