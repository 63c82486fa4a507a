//! Multi-layer perceptrons.
use crate::error::Result;
use crate::nn::{elementwise, host_grad_mut, Linear, Seq};
use crate::params::{join, ParamVisitor, Params};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};
use std::any::TypeId;

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
            Activation::Gelu => gelu(x),
            Activation::GeluTanh => gelu_tanh(x),
            Activation::Silu => {
                let gate = x.retaped::<T>().sigmoid();
                x * gate
            }
        }
    }
}

/// HF's `gelu_new`: on the CPU through [`elementwise::gelu_tanh_in_place`], and on a tape
/// with [`elementwise::gelu_tanh_backward`] as its backward op (dfdx's `fast_gelu` calls
/// `tanhf` per value and `expm1f` in its backward: 10% of the demo's training step, and 14% of
/// T5's encoder); dfdx's `fast_gelu` on another device.
fn gelu_tanh<S: Shape, D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor<S, f32, D, T>,
) -> Tensor<S, f32, D, T> {
    if TypeId::of::<D>() != TypeId::of::<Cpu>() {
        return x.fast_gelu();
    }
    // Contiguous, so that the host values and the gradient buffer are in logical order.
    let (x, tape) = x.contiguous().split_tape();
    let inputs = x.as_vec();
    let mut values = inputs.clone();
    elementwise::gelu_tanh_in_place(&mut values);
    let y = x.device().tensor_from_vec(values, *x.shape());
    if !T::OWNS_TAPE {
        return y.put_tape(tape);
    }
    let mut tape = tape;
    let ids = (x.ghost(), y.ghost());
    tape.add_backward_op(move |grads| {
        let (x_id, y_id) = &ids;
        let dy = host_grad_mut(grads.get_or_alloc_mut(y_id)?).to_vec();
        elementwise::gelu_tanh_backward(&inputs, &dy, host_grad_mut(grads.get_or_alloc_mut(x_id)?));
        Ok(())
    });
    y.put_tape(tape)
}

/// Exact GELU, `x * Phi(x)`, with the true derivative `Phi(x) + x * phi(x)`.
///
/// dfdx 0.13's `accurate_gelu` computes the value right but back-propagates
/// `Phi(x) + x * exp(-x^2 / 2) / sqrt(pi)`, missing the chain factor `1 / sqrt(2)` of
/// `erf(x / sqrt(2))` (found by the PyTorch twin, `tools/twin/`). With a tape this adds
/// `c * exp(-x^2 / 2)` and subtracts the same value off the tape, which leaves the value
/// as it is and corrects the derivative by `-c * x * exp(-x^2 / 2)`, with
/// `c = (1 - 1 / sqrt(2)) / sqrt(pi)`.
pub fn gelu<S: Shape, D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor<S, f32, D, T>,
) -> Tensor<S, f32, D, T> {
    if !T::OWNS_TAPE {
        return x.accurate_gelu();
    }
    let c = (1.0 - std::f32::consts::FRAC_1_SQRT_2) / std::f32::consts::PI.sqrt();
    let off_tape = (x.retaped::<NoneTape>().square() * -0.5).exp() * c;
    let on_tape = (x.retaped::<T>().square() * -0.5).exp() * c;
    let correction = on_tape - off_tape;
    x.accurate_gelu() + correction
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
    #[test]
    fn gelu_has_the_exact_value_and_derivative() {
        use dfdx::prelude::*;
        let dev: Cpu = Default::default();
        let xs = [-3.0f32, -1.0, -0.3, 0.0, 0.5, 1.0, 2.5];
        let x = dev.tensor(xs);
        let y = super::gelu(x.leaky_trace());
        let values = y.as_vec();
        let grads = y.sum().backward();
        let dx = grads.get(&x).as_vec();
        for (i, &v) in xs.iter().enumerate() {
            let v = v as f64;
            let cdf = 0.5 * (1.0 + libm::erf(v / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!((values[i] as f64 - v * cdf).abs() < 1e-6, "gelu({v})");
            assert!(
                (dx[i] as f64 - (cdf + v * pdf)).abs() < 1e-6,
                "gelu'({v}) = {}",
                dx[i]
            );
        }
    }

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

    #[test]
    fn gelu_tanh_and_its_gradient_equal_dfdx_fast_gelu() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let x = dev.sample_normal_like(&(3usize, 50usize)) * 3.0;
        let off_tape = Activation::GeluTanh.apply(x.clone()).as_vec();
        let ours = Activation::GeluTanh.apply(x.clone().leaky_traced());
        let dfdx = x.clone().leaky_traced().fast_gelu();
        for (a, b) in off_tape.iter().zip(&dfdx.as_vec()) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
        assert_eq!(ours.as_vec(), off_tape);
        let weights = dev.sample_normal_like(&(3usize, 50usize));
        let ours = (ours * weights.clone()).sum().backward();
        let dfdx = (dfdx * weights).sum().backward();
        let (ours, dfdx) = (ours.get(&x).as_vec(), dfdx.get(&x).as_vec());
        for (a, b) in ours.iter().zip(&dfdx) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}
