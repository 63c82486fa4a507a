//! Normalisation layers over the channel axis of `[batch, tokens, channels]`.
use crate::error::Result;
use crate::nn::Seq;
use crate::params::{join, ParamVisitor, Params};
use dfdx::prelude::*;

/// LayerNorm with affine weight and bias (`weight`, `bias` as in PyTorch).
#[derive(Debug, Clone)]
pub struct LayerNorm<C: ConstDim, D: Device<f32>> {
    pub weight: Tensor<(C,), f32, D>,
    pub bias: Tensor<(C,), f32, D>,
    pub eps: f64,
}

impl<C: ConstDim, D: Device<f32>> LayerNorm<C, D> {
    pub fn new(dev: &D, eps: f64) -> Self {
        LayerNorm {
            weight: dev.ones_like(&(C::default(),)),
            bias: dev.zeros_like(&(C::default(),)),
            eps,
        }
    }

    pub fn forward<T: Tape<f32, D>>(&self, x: Seq<C, D, T>) -> Seq<C, D, T> {
        let shape = *x.shape();
        let normed = x.normalize::<Axis<2>>(self.eps);
        normed * self.weight.clone().broadcast_like::<_, Axes2<0, 1>>(&shape)
            + self.bias.clone().broadcast_like::<_, Axes2<0, 1>>(&shape)
    }
}

impl<C: ConstDim, D: Device<f32>> Params<D> for LayerNorm<C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        v.visit(&join(prefix, "weight"), &mut self.weight)?;
        v.visit(&join(prefix, "bias"), &mut self.bias)
    }
}

/// T5's LayerNorm: scale only, no mean subtraction, no bias (`x / sqrt(mean(x^2) + eps) * w`).
#[derive(Debug, Clone)]
pub struct RmsNorm<C: ConstDim, D: Device<f32>> {
    pub weight: Tensor<(C,), f32, D>,
    pub eps: f64,
}

impl<C: ConstDim, D: Device<f32>> RmsNorm<C, D> {
    pub fn new(dev: &D, eps: f64) -> Self {
        RmsNorm {
            weight: dev.ones_like(&(C::default(),)),
            eps,
        }
    }

    pub fn forward<T: Tape<f32, D>>(&self, x: Seq<C, D, T>) -> Seq<C, D, T> {
        let shape = *x.shape();
        let mean_square = x.retaped::<T>().square().mean::<(usize, usize), Axis<2>>();
        let inv_rms = (mean_square + self.eps as f32).sqrt().recip();
        x * inv_rms.broadcast_like::<_, Axis<2>>(&shape)
            * self.weight.clone().broadcast_like::<_, Axes2<0, 1>>(&shape)
    }
}

impl<C: ConstDim, D: Device<f32>> Params<D> for RmsNorm<C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        v.visit(&join(prefix, "weight"), &mut self.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn rms_norm_output_has_unit_rms(seed in 0u64..1000, scale in 0.1f32..10.0) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let norm = RmsNorm::<Const<8>, Cpu>::new(&dev, 1e-6);
            let x = dev.sample_normal_like(&(2usize, 3usize, Const::<8>)) * scale;
            let y = norm.forward(x).as_vec();
            for row in y.chunks(8) {
                let rms = (row.iter().map(|v| v * v).sum::<f32>() / 8.0).sqrt();
                prop_assert!((rms - 1.0).abs() < 1e-3);
            }
        }

        #[test]
        fn layer_norm_output_has_zero_mean_unit_variance(seed in 0u64..1000, shift in -5.0f32..5.0) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let norm = LayerNorm::<Const<16>, Cpu>::new(&dev, 1e-6);
            let x = dev.sample_normal_like(&(1usize, 4usize, Const::<16>)) + shift;
            for row in norm.forward(x).as_vec().chunks(16) {
                let mean = row.iter().sum::<f32>() / 16.0;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 16.0;
                prop_assert!(mean.abs() < 1e-4);
                prop_assert!((var - 1.0).abs() < 1e-2);
            }
        }
    }
}
