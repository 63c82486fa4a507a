//! Element-wise and row-wise functions on host slices, written so that the compiler vectorizes
//! them: libm's `expf` and `tanhf` are a call per value, and `tanhf` took 12-14% of T5's
//! encoder. The build targets baseline x86-64 (SSE2, 4 lanes); each slice function runs its
//! loop compiled for AVX2 (8 lanes) where the CPU has it (`wide_fn!`), with the same results:
//! Rust does not fuse multiplies and adds, and the sums' lanes are explicit.

/// Defines `pub fn $name` whose body runs compiled for AVX2 when the CPU has it, else as
/// built: the body is an `#[inline(always)]` function called from both, so its loops (and the
/// `#[inline(always)]` functions they call) are vectorized 8 lanes wide in the AVX2 one.
macro_rules! wide_fn {
    ($(#[$attr:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// `e^x` to about 2 ulp in straight-line f32 arithmetic: `x = n ln 2 + r` with
/// `|r| <= ln 2 / 2`, `e^r` by its degree-6 Taylor polynomial, `2^n` put into the exponent
/// bits. Exactly 0 below -87.3, where libm's `expf` gives subnormals (under 1.2e-38) and then
/// 0, so a masked score's softmax weight stays exactly zero; e^88 above 88 (so that `2^n`
/// stays a normal f32).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let clamped = x.clamp(-87.3, 88.0);
    // Round to nearest by adding and subtracting 1.5 * 2^23: `f32::round` is a libm call
    // without SSE4.1, which would keep the loop from vectorizing. The sum's low mantissa bits
    // are then `n` itself, which gives `2^n` in integer arithmetic: `n as i32` saturates, one
    // lane at a time, and made the loop scalar again.
    let shifted = clamped * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = shifted - 12_582_912.0;
    // ln 2 in two parts, so that `n * 0.693_145_75` is exact.
    let r = clamped - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let exponent = shifted
        .to_bits()
        .wrapping_sub(12_582_912.0f32.to_bits())
        .wrapping_add(127);
    let y = p * f32::from_bits(exponent << 23);
    if x < -87.3 {
        0.0
    } else {
        y
    }
}

/// The sum of `values` in 8 independent lanes, so that it vectorizes.
#[inline(always)]
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
#[inline(always)]
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

wide_fn! {
    /// HF's `gelu_new` in place: `0.5 x (1 + tanh z)` with `z = sqrt(2 / pi) (x + 0.044715
    /// x^3)`, computed as `x / (1 + e^(-2z))` (the same function) with [`exp`].
    pub fn gelu_tanh_in_place(x: &mut [f32]) {
        let c = (2.0f32 / std::f32::consts::PI).sqrt();
        x.iter_mut().for_each(|v| {
            let z = c * (*v + 0.044715 * *v * *v * *v);
            *v /= 1.0 + exp(-2.0 * z);
        });
    }
}

/// `erf(x)` to 1.5e-7 absolute (Abramowitz and Stegun 7.1.26) with [`exp`]: libm's `erff`
/// is a call per value.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    if x < 0.0 {
        -y
    } else {
        y
    }
}

wide_fn! {
    /// The exact GELU in place, `x Phi(x) = x (1 + erf(x / sqrt 2)) / 2`, with [`erf`].
    pub fn gelu_erf_in_place(x: &mut [f32]) {
        x.iter_mut().for_each(|v| {
            *v *= 0.5 * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
        });
    }
}

wide_fn! {
    /// `sum_i a[i] b[i]` over the shorter length, in 8 independent lanes.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut lanes = [0.0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        for (x, y) in ca.zip(cb) {
            for l in 0..8 {
                lanes[l] += x[l] * y[l];
            }
        }
        lanes.iter().sum::<f32>() + tail
    }
}

wide_fn! {
    /// The gradient of [`gelu_tanh_in_place`]: `dx[i] += dy[i] * gelu'(x[i])`, with
    /// `s = 1 / (1 + e^(-2z))` (so `gelu = x s`) and `gelu' = s + 2 x s (1 - s) z'`.
    pub fn gelu_tanh_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        assert!(
            dy.len() == x.len() && dx.len() == x.len(),
            "GELU gradient of {} values from {} into {}",
            x.len(),
            dy.len(),
            dx.len()
        );
        let c = (2.0f32 / std::f32::consts::PI).sqrt();
        for ((g, v), d) in dx.iter_mut().zip(x).zip(dy) {
            let z = c * (*v + 0.044715 * *v * *v * *v);
            let dz = c * (1.0 + 3.0 * 0.044715 * *v * *v);
            let s = 1.0 / (1.0 + exp(-2.0 * z));
            *g += *d * (s + 2.0 * *v * s * (1.0 - s) * dz);
        }
    }
}

wide_fn! {
    /// `row[i] = e^(row[i] - shift)`.
    pub fn exp_shifted_in_place(row: &mut [f32], shift: f32) {
        row.iter_mut().for_each(|x| *x = exp(*x - shift));
    }
}

wide_fn! {
    /// `row <- softmax(row)`, stable (the maximum subtracted first); returns the log-sum-exp
    /// of the row it was given.
    pub fn softmax_in_place(row: &mut [f32]) -> f32 {
        let max = max(row);
        row.iter_mut().for_each(|x| *x = exp(*x - max));
        let sum = sum(row);
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
        max + sum.ln()
    }
}

wide_fn! {
    /// LayerNorm of one row in place: `(x - mean) / sqrt(var + eps) * weight + bias`, with the
    /// population variance (PyTorch's and dfdx's `normalize`), both sums in 8 lanes.
    pub fn layer_norm_in_place(row: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
        assert!(
            weight.len() == row.len() && bias.len() == row.len(),
            "LayerNorm of {} values with {} weights and {} biases",
            row.len(),
            weight.len(),
            bias.len()
        );
        let n = row.len().max(1) as f32;
        let mean = sum(row) / n;
        let mut lanes = [0.0f32; 8];
        let chunks = row.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
        for c in chunks {
            for l in 0..8 {
                lanes[l] += (c[l] - mean) * (c[l] - mean);
            }
        }
        let var = (lanes.iter().sum::<f32>() + tail) / n;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

wide_fn! {
    /// SwiGLU's gating: `out[j] = silu(gate[j]) * value[j]` with `silu(g) = g / (1 + e^-g)`.
    pub fn silu_gate(gate: &[f32], value: &[f32], out: &mut [f32]) {
        assert!(
            gate.len() == out.len() && value.len() == out.len(),
            "SwiGLU of {} gates and {} values into {}",
            gate.len(),
            value.len(),
            out.len()
        );
        for ((o, g), v) in out.iter_mut().zip(gate).zip(value) {
            *o = *g / (1.0 + exp(-*g)) * v;
        }
    }
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

    #[test]
    fn softmax_sums_to_one_and_returns_the_log_sum_exp() {
        let mut row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin() * 20.0).collect();
        let given = row.clone();
        let lse = softmax_in_place(&mut row);
        let want_lse = given.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
        assert!(
            (lse as f64 - want_lse).abs() <= 1e-5 * want_lse.abs(),
            "{lse} vs {want_lse}"
        );
        for (p, v) in row.iter().zip(&given) {
            let want = (*v as f64 - want_lse).exp();
            assert!((*p as f64 - want).abs() <= 1e-6, "{p} vs {want}");
        }
        let mut masked = vec![0.0, -1e9, 1.0];
        softmax_in_place(&mut masked);
        assert_eq!(masked[1], 0.0, "a masked score's weight is exactly zero");
    }

    #[test]
    fn layer_norm_equals_the_formula_in_f64() {
        let row: Vec<f32> = (0..37)
            .map(|i| (i as f32 * 0.37).sin() * 3.0 + 1.5)
            .collect();
        let weight: Vec<f32> = (0..37).map(|i| 0.5 + i as f32 * 0.01).collect();
        let bias: Vec<f32> = (0..37).map(|i| i as f32 * -0.02).collect();
        let mut got = row.clone();
        layer_norm_in_place(&mut got, &weight, &bias, 1e-6);
        let n = row.len() as f64;
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        for i in 0..row.len() {
            let want =
                (row[i] as f64 - mean) / (var + 1e-6).sqrt() * weight[i] as f64 + bias[i] as f64;
            assert!(
                (got[i] as f64 - want).abs() <= 2e-6,
                "{i}: {} vs {want}",
                got[i]
            );
        }
    }

    #[test]
    fn silu_gate_equals_the_formula_in_f64() {
        let gate: Vec<f32> = (-500..500).map(|i| i as f32 * 0.03).collect();
        let value: Vec<f32> = gate.iter().map(|g| 1.0 - g * 0.5).collect();
        let mut out = vec![0.0; gate.len()];
        silu_gate(&gate, &value, &mut out);
        for ((o, g), v) in out.iter().zip(&gate).zip(&value) {
            let (g, v) = (*g as f64, *v as f64);
            let want = g / (1.0 + (-g).exp()) * v;
            assert!(
                (*o as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{o} vs {want}"
            );
        }
    }

    #[test]
    fn gelu_erf_equals_the_exact_formula() {
        // erf in f64 by its series (|x| <= 3) and 1 beyond, where erfc < 2.3e-5 / x.
        let erf64 = |x: f64| -> f64 {
            if x.abs() > 6.0 {
                return x.signum();
            }
            let (mut term, mut total, mut n) = (x, x, 0.0f64);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -x * x / n;
                total += term / (2.0 * n + 1.0);
            }
            total * 2.0 / std::f64::consts::PI.sqrt()
        };
        let mut x: Vec<f32> = (-3000..3000).map(|i| i as f32 * 0.002).collect();
        x.extend([-20.0, -9.0, 9.0, 20.0]);
        let want: Vec<f64> = x
            .iter()
            .map(|&v| 0.5 * v as f64 * (1.0 + erf64(v as f64 / std::f64::consts::SQRT_2)))
            .collect();
        gelu_erf_in_place(&mut x);
        for (g, w) in x.iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()),
                "{g} vs {w}"
            );
        }
    }

    #[test]
    fn dot_covers_every_pair() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let b = vec![2.0; 21];
        assert_eq!(dot(&a, &b), 342.0);
        assert_eq!(dot(&[], &b), 0.0);
    }

    #[test]
    fn gelu_tanh_backward_equals_the_derivative_in_f64() {
        let x: Vec<f32> = (-3000..3000)
            .map(|i| i as f32 * 0.003)
            .chain([-40.0, 40.0])
            .collect();
        let dy: Vec<f32> = x.iter().map(|v| 0.5 - v * 0.1).collect();
        let mut dx = vec![1.0f32; x.len()];
        gelu_tanh_backward(&x, &dy, &mut dx);
        let c = (2.0 / std::f64::consts::PI).sqrt();
        for ((g, v), d) in dx.iter().zip(&x).zip(&dy) {
            let v = *v as f64;
            let t = (c * (v + 0.044715 * v.powi(3))).tanh();
            let slope = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * c * (1.0 + 0.134145 * v * v);
            let want = 1.0 + *d as f64 * slope;
            assert!(
                (*g as f64 - want).abs() <= 2e-6 * (1.0 + want.abs()),
                "{v}: {g} vs {want}"
            );
        }
    }
}
