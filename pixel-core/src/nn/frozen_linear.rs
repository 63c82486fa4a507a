//! A linear layer whose weight is frozen and kept as a [`HostMatrix`] (f32, bf16 or f16 bits),
//! on dfdx's tape: gradients flow to its input, never to its weight.
//!
//! A frozen `Linear` still costs what a trained one does: dfdx's matrix product keeps its
//! input for the weight's gradient, computes that gradient in the backward pass and allocates
//! it, and the weight is f32. Here the forward pass is [`HostMatrix::matmul_t`], and the
//! backward op holds only the shared weight (no activation) and computes `dy W` alone, so a
//! frozen 2.85 G-parameter T5 under LoRA keeps 5.7 GB of bf16 weights instead of 11.4 GB of f32,
//! and no 11.4 GB of weight gradients appear during backward. CPU only: the weight lives on the
//! host.
use crate::host_matrix::{Dtype, HostMatrix};
use crate::nn::Seq;
use dfdx::prelude::*;
use std::marker::PhantomData;
use std::sync::Arc;

/// `y = x W^T + b` with `W` (`[out, in]`, as in PyTorch checkpoints) and `b` frozen.
#[derive(Debug, Clone)]
pub struct FrozenLinear<I: ConstDim, O: ConstDim> {
    pub weight: Arc<HostMatrix>,
    pub bias: Option<Tensor<(O,), f32, Cpu>>,
    dims: PhantomData<(I, O)>,
}

impl<I: ConstDim, O: ConstDim> FrozenLinear<I, O> {
    /// Panics unless `weight` is `[O, I]` and `bias` (when given) has `O` values: a wrong
    /// shape is a bug of the caller, which built `weight` for these dims.
    pub fn new(weight: HostMatrix, bias: Option<Tensor<(O,), f32, Cpu>>) -> Self {
        assert_eq!(
            (weight.rows(), weight.cols()),
            (O::SIZE, I::SIZE),
            "a FrozenLinear<{}, {}> weight must be [{}, {}]",
            I::SIZE,
            O::SIZE,
            O::SIZE,
            I::SIZE
        );
        FrozenLinear {
            weight: Arc::new(weight),
            bias,
            dims: PhantomData,
        }
    }

    /// The frozen copy of a trained layer's weight and bias, stored as `dtype`.
    pub fn from_linear(linear: &crate::nn::Linear<I, O, Cpu>, dtype: Dtype) -> Self {
        let weight = HostMatrix::from_f32(O::SIZE, I::SIZE, linear.weight.as_vec(), dtype);
        Self::new(weight, linear.bias.clone())
    }

    /// Applies the layer to every token of a `[batch, tokens, in]` tensor.
    pub fn forward<T: Tape<f32, Cpu>>(&self, x: Seq<I, Cpu, T>) -> Seq<O, Cpu, T> {
        let y = frozen_matmul_t(x, &self.weight);
        match &self.bias {
            Some(b) => {
                let shape = *y.shape();
                y + b.clone().broadcast_like::<_, Axes2<0, 1>>(&shape)
            }
            None => y,
        }
    }
}

/// `x W^T` for a frozen `W` (`[O, I]`): on the tape, the backward op adds `dy W` to `x`'s
/// gradient and keeps nothing but `W`.
pub fn frozen_matmul_t<I: ConstDim, O: ConstDim, T: Tape<f32, Cpu>>(
    x: Seq<I, Cpu, T>,
    weight: &Arc<HostMatrix>,
) -> Seq<O, Cpu, T> {
    debug_assert_eq!((weight.rows(), weight.cols()), (O::SIZE, I::SIZE));
    // Contiguous, so that the gradient buffer's order is the logical one.
    let x = x.contiguous();
    let (batch, tokens, _) = *x.shape();
    let (x, mut tape) = x.split_tape();
    let out = x
        .device()
        .tensor_from_vec(weight.matmul_t(&x.as_vec()), (batch, tokens, O::default()));
    let (x_id, out_id) = (x.ghost(), out.ghost());
    let weight = weight.clone();
    tape.add_backward_op(move |grads| {
        let dy: Vec<f32> = grads.get_or_alloc_mut(&out_id)?.to_vec();
        let dx = weight.matmul(&dy);
        for (g, d) in grads.get_or_alloc_mut(&x_id)?.iter_mut().zip(dx) {
            *g += d;
        }
        Ok(())
    });
    out.put_tape(tape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Linear;
    use crate::testing::assert_close;
    use proptest::prelude::*;

    type In = Const<7>;
    type Out = Const<5>;

    /// The input's gradient of `sum(layer(x) * r)`.
    fn input_grad(
        dev: &Cpu,
        x: &Seq<In, Cpu>,
        r: &Seq<Out, Cpu>,
        forward: impl Fn(Seq<In, Cpu, OwnedTape<f32, Cpu>>) -> Seq<Out, Cpu, OwnedTape<f32, Cpu>>,
    ) -> (Vec<f32>, Vec<f32>) {
        let x = dev.tensor_from_vec(x.as_vec(), *x.shape());
        let grads = Gradients::leaky();
        let y = forward(x.trace(grads));
        let values = y.retaped::<NoneTape>().as_vec();
        let grads = (y * r.clone()).sum().backward();
        (values, grads.get(&x).as_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// With f32 storage the layer is `Linear`, values and input gradient (a transposed
        /// input included); with bf16 it is `Linear` on the bf16-rounded weight.
        #[test]
        fn equals_linear_on_the_stored_weight(
            seed in 0u64..1000, batch in 1usize..3, tokens in 1usize..6, bias: bool,
            transposed: bool, bf16: bool,
        ) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let mut linear = Linear::<In, Out, Cpu>::new(&dev, bias);
            let dtype = if bf16 { Dtype::Bf16 } else { Dtype::F32 };
            let frozen = FrozenLinear::from_linear(&linear, dtype);
            linear.weight = dev.tensor_from_vec(frozen.weight.to_f32(), (Out::default(), In::default()));
            let x: Seq<In, Cpu> = if transposed {
                // [tokens, batch, in] permuted: strides that are not the standard ones.
                let t: Tensor<(usize, usize, In), f32, Cpu> =
                    dev.sample_normal_like(&(tokens, batch, In::default()));
                t.permute::<_, Axes3<1, 0, 2>>()
            } else {
                dev.sample_normal_like(&(batch, tokens, In::default()))
            };
            let r: Seq<Out, Cpu> = dev.sample_normal_like(&(batch, tokens, Out::default()));
            let (want_y, want_dx) = input_grad(&dev, &x, &r, |x| linear.forward(x));
            let (got_y, got_dx) = input_grad(&dev, &x, &r, |x| frozen.forward(x));
            assert_close(&got_y, &want_y, 1e-5);
            assert_close(&got_dx, &want_dx, 1e-5);
        }
    }

    #[test]
    fn a_frozen_layer_inside_a_taped_graph_passes_the_gradient_on() {
        // x -> Linear (trained) -> FrozenLinear -> loss: the trained weight's gradient equals
        // the one through an all-dfdx graph.
        let dev: Cpu = Cpu::seed_from_u64(3);
        let first = Linear::<In, In, Cpu>::new(&dev, true);
        let second = Linear::<In, Out, Cpu>::new(&dev, false);
        let frozen = FrozenLinear::from_linear(&second, Dtype::F32);
        let x: Seq<In, Cpu> = dev.sample_normal_like(&(2, 3, In::default()));
        let weight_grad = |use_frozen: bool| {
            let grads = Gradients::leaky();
            let h = first.forward(x.clone().traced(grads)).tanh();
            let y = if use_frozen {
                frozen.forward(h)
            } else {
                second.forward(h)
            };
            y.square().mean().backward().get(&first.weight).as_vec()
        };
        assert_close(&weight_grad(true), &weight_grad(false), 1e-5);
    }
}
