//! Position encodings: fixed sine-cosine tables and SAM's random Fourier features.
use crate::error::Result;
use crate::nn::Seq;
use crate::params::{join, ParamVisitor, Params};
use dfdx::prelude::*;

/// The transformer's 1D table `[positions, dim]`: `sin(p / 10000^(2i/dim))` in the first half of
/// the channels, `cos` in the second (the layout of MAE's `get_1d_sincos_pos_embed`).
pub fn sincos_1d(positions: &[f32], dim: usize) -> Vec<f32> {
    assert!(
        dim.is_multiple_of(2),
        "sine-cosine encoding needs an even dim, got {dim}"
    );
    let half = dim / 2;
    let mut out = Vec::with_capacity(positions.len() * dim);
    for &p in positions {
        let angles: Vec<f32> = (0..half)
            .map(|i| p / 10000f32.powf(i as f32 / half as f32))
            .collect();
        out.extend(angles.iter().map(|a| a.sin()));
        out.extend(angles.iter().map(|a| a.cos()));
    }
    out
}

/// MAE's 2D table `[height * width, dim]`: half the channels encode the row, half the column.
pub fn sincos_2d(height: usize, width: usize, dim: usize) -> Vec<f32> {
    assert!(
        dim.is_multiple_of(4),
        "2D sine-cosine encoding needs dim divisible by 4, got {dim}"
    );
    let mut out = Vec::with_capacity(height * width * dim);
    for y in 0..height {
        for x in 0..width {
            out.extend(sincos_1d(&[x as f32], dim / 2));
            out.extend(sincos_1d(&[y as f32], dim / 2));
        }
    }
    out
}

/// SAM's `PositionEmbeddingRandom`: coords in `[0, 1]` -> `2c - 1` -> `@ G` (`[2, Out/2]`,
/// Gaussian, frozen) -> `2 pi` -> `[sin, cos]`. Shared by image positions and prompts.
#[derive(Debug, Clone)]
pub struct RandomFourierEncoding<Out: ConstDim, D: Device<f32>> {
    pub gaussian_matrix: Tensor<(Const<2>, usize), f32, D>,
    _out: std::marker::PhantomData<Out>,
}

impl<Out: ConstDim, D: Device<f32>> RandomFourierEncoding<Out, D> {
    /// `scale` multiplies the Gaussian (SAM uses 1.0).
    pub fn new(dev: &D, scale: f32) -> Self {
        assert!(
            Out::SIZE.is_multiple_of(2),
            "Fourier features need an even dim, got {}",
            Out::SIZE
        );
        RandomFourierEncoding {
            gaussian_matrix: dev.sample_normal_like(&(Const::<2>, Out::SIZE / 2)) * scale,
            _out: Default::default(),
        }
    }

    /// Encodes `[batch, points, 2]` normalized `(x, y)` coordinates.
    pub fn forward(&self, coords: Tensor<(usize, usize, Const<2>), f32, D>) -> Seq<Out, D> {
        let (b, n, _) = *coords.shape();
        let projected = (coords * 2.0 - 1.0).matmul(self.gaussian_matrix.clone())
            * (2.0 * std::f32::consts::PI);
        let features = (projected.clone().sin(), projected.cos()).concat_along(Axis::<2>);
        features.reshape_like(&(b, n, Out::default()))
    }

    /// The dense `[1, h * w, Out]` encoding of the centres of an `h x w` grid (SAM's `get_dense_pe`).
    pub fn grid(&self, height: usize, width: usize) -> Seq<Out, D> {
        let mut coords = Vec::with_capacity(height * width * 2);
        for y in 0..height {
            for x in 0..width {
                coords.push((x as f32 + 0.5) / width as f32);
                coords.push((y as f32 + 0.5) / height as f32);
            }
        }
        let dev = self.gaussian_matrix.device().clone();
        self.forward(dev.tensor_from_vec(coords, (1, height * width, Const::<2>)))
    }
}

impl<Out: ConstDim, D: Device<f32>> Params<D> for RandomFourierEncoding<Out, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        v.visit(
            &join(prefix, "positional_encoding_gaussian_matrix"),
            &mut self.gaussian_matrix,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sincos_at_zero_is_zeros_then_ones() {
        let t = sincos_1d(&[0.0], 8);
        assert_eq!(t, vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(sincos_2d(3, 2, 8).len(), 6 * 8);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn fourier_features_lie_on_unit_circles(seed in 0u64..1000, x in 0.0f32..1.0, y in 0.0f32..1.0) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let pe = RandomFourierEncoding::<Const<8>, Cpu>::new(&dev, 1.0);
            let f = pe.forward(dev.tensor_from_vec(vec![x, y], (1, 1, Const::<2>))).as_vec();
            for i in 0..4 {
                prop_assert!((f[i] * f[i] + f[i + 4] * f[i + 4] - 1.0).abs() < 1e-4);
            }
        }
    }
}
