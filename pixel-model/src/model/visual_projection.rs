//! The visual projection (scenic's `LinearProjectLayers`, `visual_project_layers = 'linear'`):
//! the prompt feature extractor's output tokens, of width `I`, into the language model's
//! embedding space of width `O`. A preset has one when the two widths differ (the paper: 1024
//! -> 2048 for Flan-T5-XL).
use dfdx::prelude::*;
use pixel_core::nn::{LayerNorm, Linear, LinearWeight, Seq};
use pixel_core::params::{join, ParamVisitor, Params};

/// A linear layer (`visual_projection.0`) and a LayerNorm (`visual_projection.1`, eps 1e-5),
/// scenic's names and default `use_projection_ln = True`.
#[derive(Debug, Clone)]
pub struct VisualProjection<I: ConstDim, O: ConstDim, D: Device<f32>> {
    pub linear: Linear<I, O, D>,
    pub norm: LayerNorm<O, D>,
}

impl<I: ConstDim, O: ConstDim, D: Device<f32>> VisualProjection<I, O, D> {
    /// The weight is drawn from N(0, 0.02²) and the bias is zero, as scenic initialises it.
    pub fn new(dev: &D) -> Self {
        let mut linear = Linear::new(dev, true);
        linear.weight =
            LinearWeight::Tensor(dev.sample_normal_like(&(O::default(), I::default())) * 0.02);
        linear.bias = Some(dev.zeros_like(&(O::default(),)));
        VisualProjection {
            linear,
            norm: LayerNorm::new(dev, 1e-5),
        }
    }

    /// `[B, N, I]` -> `[B, N, O]`.
    pub fn forward<T: Tape<f32, D>>(&self, x: Seq<I, D, T>) -> Seq<O, D, T> {
        self.norm.forward(self.linear.forward(x))
    }
}

impl<I: ConstDim, O: ConstDim, D: Device<f32>> Params<D> for VisualProjection<I, O, D> {
    fn visit_params(
        &mut self,
        prefix: &str,
        v: &mut dyn ParamVisitor<D>,
    ) -> pixel_core::Result<()> {
        self.linear.visit_params(&join(prefix, "0"), v)?;
        self.norm.visit_params(&join(prefix, "1"), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_core::params::list_params;

    #[test]
    fn the_projection_is_named_as_scenic_and_normalises_each_token() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let mut p = VisualProjection::<Const<4>, Const<6>, Cpu>::new(&dev);
        let names: Vec<String> = list_params(&mut p).into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["0.weight", "0.bias", "1.weight", "1.bias"]);
        let x: Seq<Const<4>, Cpu> = dev.sample_normal_like(&(2, 3, Const));
        let y = p.forward(x).as_vec();
        for token in y.chunks(6) {
            let mean = token.iter().sum::<f32>() / 6.0;
            assert!(mean.abs() < 1e-5, "{token:?}");
        }
    }
}
