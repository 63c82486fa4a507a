//! Resizing token feature maps with separable interpolation matrices (gradients flow).
//!
//! The weights follow `jax.image.resize` (scenic's PixelLLM resizes feature maps with it):
//! half-pixel centres, the kernel widened by the scale when downsampling (antialiasing), taps
//! outside the input dropped and the remaining weights renormalised.
use crate::conv::FeatureMap;
use crate::layers::Tokens;
use dfdx::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeKernel {
    /// Triangle kernel (bilinear).
    Bilinear,
    /// Keys cubic with `a = -0.5` (bicubic).
    Bicubic,
}

impl ResizeKernel {
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            ResizeKernel::Bilinear => (1.0 - x).max(0.0),
            ResizeKernel::Bicubic => {
                if x >= 2.0 {
                    0.0
                } else if x >= 1.0 {
                    ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
                } else {
                    (1.5 * x - 2.5) * x * x + 1.0
                }
            }
        }
    }
}

/// Interpolation weights `[output, input]` for resizing one axis.
pub fn resize_matrix(input: usize, output: usize, kernel: ResizeKernel) -> Vec<f32> {
    let scale = output as f64 / input as f64;
    let inv = 1.0 / scale;
    let kernel_scale = inv.max(1.0);
    let mut m = vec![0.0f32; output * input];
    for o in 0..output {
        let sample = (o as f64 + 0.5) * inv - 0.5;
        if sample < -0.5 || sample > input as f64 - 0.5 {
            continue;
        }
        let weights: Vec<f64> = (0..input)
            .map(|i| kernel.weight((sample - i as f64) / kernel_scale))
            .collect();
        let total: f64 = weights.iter().sum();
        if total.abs() > 1e-9 {
            for (i, w) in weights.iter().enumerate() {
                m[o * input + i] = (w / total) as f32;
            }
        }
    }
    m
}

/// Resizes a `[B, h*w, C]` map to `out_h x out_w`.
pub fn resize_map<C: Dim, D: Device<f32>, T: Tape<f32, D>>(
    map: FeatureMap<C, D, T>,
    out_h: usize,
    out_w: usize,
    kernel: ResizeKernel,
) -> FeatureMap<C, D, T> {
    let (h, w, b) = (map.height, map.width, map.batch());
    if (h, w) == (out_h, out_w) {
        return map;
    }
    let c = map.channels();
    let cs = c.size();
    let dev = map.tokens.device().clone();
    let wy: Tensor<(usize, usize), f32, D> =
        dev.tensor_from_vec(resize_matrix(h, out_h, kernel), (out_h, h));
    let wx: Tensor<(usize, usize), f32, D> =
        dev.tensor_from_vec(resize_matrix(w, out_w, kernel), (out_w, w));
    // Rows: [B, H, W, C] -> [B, W*C, H] @ wy^T -> [B, W*C, Ho].
    let x = map
        .tokens
        .reshape_like(&(b, h, w * cs))
        .permute::<_, Axes3<0, 2, 1>>()
        .matmul(wy.permute::<_, Axes2<1, 0>>());
    // Columns: [B, W, C, Ho] -> [B, Ho*C, W] @ wx^T -> [B, Ho*C, Wo].
    let x = x
        .reshape_like(&(b, w, cs, out_h))
        .permute::<_, Axes4<0, 3, 2, 1>>()
        .reshape_like(&(b, out_h * cs, w))
        .matmul(wx.permute::<_, Axes2<1, 0>>());
    let tokens: Tokens<C, D, T> = x
        .reshape_like(&(b, out_h, cs, out_w))
        .permute::<_, Axes4<0, 1, 3, 2>>()
        .reshape_like(&(b, out_h * out_w, c));
    FeatureMap::new(tokens, out_h, out_w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn resizing_a_constant_map_keeps_it_constant(h in 1usize..6, w in 1usize..6, oh in 1usize..9, ow in 1usize..9, bicubic in any::<bool>()) {
            let dev: Cpu = Cpu::seed_from_u64(0);
            let kernel = if bicubic { ResizeKernel::Bicubic } else { ResizeKernel::Bilinear };
            let tokens: Tokens<Const<2>, Cpu> = dev.ones_like(&(1, h * w, Const)) * 3.0;
            let out = resize_map(FeatureMap::new(tokens, h, w), oh, ow, kernel);
            prop_assert_eq!(out.tokens.shape().1, oh * ow);
            for v in out.tokens.as_vec() {
                prop_assert!((v - 3.0).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn upsampling_by_two_interpolates_between_centres() {
        // Input [0, 1] -> output samples at -0.25, 0.25, 0.75, 1.25 (clamped at the edges).
        let m = resize_matrix(2, 4, ResizeKernel::Bilinear);
        let out: Vec<f32> = m.chunks(2).map(|r| r[1]).collect();
        assert_eq!(out, vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn resize_map_moves_rows_and_columns_independently() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        // value = 10 * y + x on a 2x2 grid, one channel.
        let tokens: Tokens<Const<1>, Cpu> =
            dev.tensor_from_vec(vec![0.0, 1.0, 10.0, 11.0], (1, 4, Const));
        let out = resize_map(FeatureMap::new(tokens, 2, 2), 4, 4, ResizeKernel::Bilinear);
        let v = out.tokens.as_vec();
        let axis = [0.0, 0.25, 0.75, 1.0];
        for y in 0..4 {
            for x in 0..4 {
                assert!((v[y * 4 + x] - (10.0 * axis[y] + axis[x])).abs() < 1e-5);
            }
        }
    }
}
