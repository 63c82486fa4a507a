//! Multi-layer perceptrons.
use crate::error::Result;
use crate::nn::{Linear, Seq};
use crate::params::{join, ParamVisitor, Params};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

/// Element-wise non-linearities used by the reference models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    /// Exact GELU (erf), PyTorch's `nn.GELU()`.
    Gelu,
    /// Tanh-approximated GELU, HF's `gelu_new` (T5 v1.1 / Flan-T5).
    GeluTanh,
    /// `x * sigmoid(x)`, as in SwiGLU.
    Silu,
}

impl Activation {
    pub fn apply<S: Shape, D: Device<f32>, T: Tape<f32, D>>(
        self,
        x: Tensor<S, f32, D, T>,
    ) -> Tensor<S, f32, D, T> {
        match self {
            Activation::Relu => x.relu(),
            Activation::Gelu => x.accurate_gelu(),
            Activation::GeluTanh => x.fast_gelu(),
            Activation::Silu => {
                let gate = x.retaped::<T>().sigmoid();
                x * gate
            }
        }
    }
}

/// SAM's `MLP`: `layers.0 .. layers.{n-1}`, activation between layers, none after the last.
/// `In -> Hidden -> ... -> Hidden -> Out` with `depth >= 2` linear layers.
#[derive(Debug, Clone)]
pub struct Mlp<In: ConstDim, Hidden: ConstDim, Out: ConstDim, D: Device<f32>> {
    pub first: Linear<In, Hidden, D>,
    pub middle: Vec<Linear<Hidden, Hidden, D>>,
    pub last: Linear<Hidden, Out, D>,
    pub activation: Activation,
}

impl<In: ConstDim, Hidden: ConstDim, Out: ConstDim, D: Device<f32>> Mlp<In, Hidden, Out, D> {
    pub fn new(dev: &D, depth: usize, activation: Activation) -> Self {
        assert!(depth >= 2, "an MLP needs at least 2 layers, got {depth}");
        Mlp {
            first: Linear::new(dev, true),
            middle: (0..depth - 2).map(|_| Linear::new(dev, true)).collect(),
            last: Linear::new(dev, true),
            activation,
        }
    }

    pub fn depth(&self) -> usize {
        self.middle.len() + 2
    }

    pub fn forward<T: Tape<f32, D>>(&self, x: Seq<In, D, T>) -> Seq<Out, D, T> {
        let mut h = self.activation.apply(self.first.forward(x));
        for layer in &self.middle {
            h = self.activation.apply(layer.forward(h));
        }
        self.last.forward(h)
    }
}

impl<In: ConstDim, Hidden: ConstDim, Out: ConstDim, D: Device<f32>> Params<D>
    for Mlp<In, Hidden, Out, D>
{
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.first.visit_params(&join(prefix, "layers.0"), v)?;
        for (i, layer) in self.middle.iter_mut().enumerate() {
            layer.visit_params(&join(prefix, &format!("layers.{}", i + 1)), v)?;
        }
        let last = format!("layers.{}", self.middle.len() + 1);
        self.last.visit_params(&join(prefix, &last), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::list_params;

    #[test]
    fn mlp_names_its_layers_like_sam() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let mut mlp = Mlp::<Const<4>, Const<8>, Const<2>, Cpu>::new(&dev, 3, Activation::Relu);
        let names: Vec<String> = list_params(&mut mlp).into_iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "layers.0.weight",
                "layers.0.bias",
                "layers.1.weight",
                "layers.1.bias",
                "layers.2.weight",
                "layers.2.bias"
            ]
        );
        let y = mlp.forward(dev.sample_normal_like(&(2usize, 3usize, Const::<4>)));
        assert_eq!(y.shape().1, 3);
    }

    #[test]
    fn silu_is_x_times_sigmoid() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let x = dev.tensor([-2.0f32, 0.0, 1.5]);
        let y = Activation::Silu.apply(x).as_vec();
        for (v, x) in y.iter().zip([-2.0f32, 0.0, 1.5]) {
            assert!((v - x / (1.0 + (-x).exp())).abs() < 1e-6);
        }
    }
}
