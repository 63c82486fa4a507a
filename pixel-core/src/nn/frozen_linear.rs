//! The product of a tape-carrying input with a frozen weight kept as a [`HostMatrix`] (f32,
//! bf16 or f16 bits): gradients flow to the input, never to the weight.
//!
//! dfdx's matrix product keeps its input for the weight's gradient, computes that gradient in
//! the backward pass and allocates it, and wants the weight as an f32 tensor. Here the forward
//! pass is [`HostMatrix::matmul_t`], and the backward op holds only the shared weight (no
//! activation) and computes `dy W` alone. [`crate::nn::Linear`] runs it for a
//! [`crate::nn::LinearWeight::Host`] weight. CPU only: the weight lives on the host, and the
//! backward op adds to the input's gradient in host memory.
use crate::host_matrix::HostMatrix;
use crate::nn::host_grad_mut;
use dfdx::prelude::*;
use std::sync::Arc;

/// `x W^T` for a frozen `W` (`[O, I]`): on the tape, the backward op adds `dy W` to `x`'s
/// gradient and keeps nothing but `W`.
///
/// Panics in the backward pass when `D` is not [`Cpu`]: host weights are only made for the
/// CPU device (`LinearWeight::keep_frozen_on_host` refuses others).
///
/// Panics when `weight` is not `[out, in]` for `x`'s `in` (or for a type `O` of another
/// size): the caller built the weight for these dims.
pub fn frozen_matmul_t<I: Dim, O: Dim, D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor<(usize, usize, I), f32, D, T>,
    weight: &Arc<HostMatrix>,
) -> Tensor<(usize, usize, O), f32, D, T> {
    let out_dim = O::from_size(weight.rows()).expect("the weight's rows are the output dim");
    assert_eq!(
        weight.cols(),
        x.shape().2.size(),
        "the weight's columns are the input dim"
    );
    // Contiguous, so that the gradient buffer's order is the logical one.
    let x = x.contiguous();
    let (batch, tokens, _) = *x.shape();
    let (x, mut tape) = x.split_tape();
    let out = x
        .device()
        .tensor_from_vec(weight.matmul_t(&x.as_vec()), (batch, tokens, out_dim));
    if !T::OWNS_TAPE {
        return out.put_tape(tape);
    }
    let (x_id, out_id) = (x.ghost(), out.ghost());
    let weight = weight.clone();
    tape.add_backward_op(move |grads| {
        let dy = host_grad_mut(grads.get_or_alloc_mut(&out_id)?).to_vec();
        let dx = weight.matmul(&dy);
        for (g, d) in host_grad_mut(grads.get_or_alloc_mut(&x_id)?)
            .iter_mut()
            .zip(dx)
        {
            *g += d;
        }
        Ok(())
    });
    out.put_tape(tape)
}

#[cfg(test)]
mod tests {
    use crate::host_matrix::Dtype;
    use crate::nn::{Linear, LinearWeight, Seq};
    use crate::params::ParamTensor;
    use crate::testing::assert_close;
    use dfdx::prelude::*;
    use proptest::prelude::*;

    type In = Const<7>;
    type Out = Const<5>;

    /// The input's gradient of `sum(layer(x) * r)`.
    fn input_grad(
        dev: &Cpu,
        x: &Seq<In, Cpu>,
        r: &Seq<Out, Cpu>,
        layer: &Linear<In, Out, Cpu>,
    ) -> (Vec<f32>, Vec<f32>) {
        let x = dev.tensor_from_vec(x.as_vec(), *x.shape());
        let grads = Gradients::leaky();
        let y = layer.forward(x.trace(grads));
        let values = y.retaped::<NoneTape>().as_vec();
        let grads = (y * r.clone()).sum().backward();
        (values, grads.get(&x).as_vec())
    }

    /// `layer` with its weight kept on the host as `dtype`.
    fn frozen(layer: &Linear<In, Out, Cpu>, dtype: Dtype) -> Linear<In, Out, Cpu> {
        let mut frozen = layer.clone();
        assert!(frozen.weight.keep_frozen_on_host(dtype).unwrap());
        frozen
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// With f32 storage the layer is the tensor one, values and input gradient (a
        /// transposed input included); with bf16 it is the tensor one on the bf16-rounded
        /// weight.
        #[test]
        fn host_weight_equals_the_tensor_weight_it_stores(
            seed in 0u64..1000, batch in 1usize..3, tokens in 1usize..6, bias: bool,
            transposed: bool, bf16: bool,
        ) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let mut linear = Linear::<In, Out, Cpu>::new(&dev, bias);
            let host = frozen(&linear, if bf16 { Dtype::Bf16 } else { Dtype::F32 });
            linear.weight = LinearWeight::Tensor(
                dev.tensor_from_vec(host.weight.values(), (Out::default(), In::default())),
            );
            let x: Seq<In, Cpu> = if transposed {
                // [tokens, batch, in] permuted: strides that are not the standard ones.
                let t: Tensor<(usize, usize, In), f32, Cpu> =
                    dev.sample_normal_like(&(tokens, batch, In::default()));
                t.permute::<_, Axes3<1, 0, 2>>()
            } else {
                dev.sample_normal_like(&(batch, tokens, In::default()))
            };
            let r: Seq<Out, Cpu> = dev.sample_normal_like(&(batch, tokens, Out::default()));
            let (want_y, want_dx) = input_grad(&dev, &x, &r, &linear);
            let (got_y, got_dx) = input_grad(&dev, &x, &r, &host);
            assert_close(&got_y, &want_y, 1e-5);
            assert_close(&got_dx, &want_dx, 1e-5);
        }
    }

    #[test]
    fn a_host_weight_inside_a_taped_graph_passes_the_gradient_on() {
        // x -> Linear (trained) -> Linear (host weight) -> loss: the trained weight's gradient
        // equals the one through an all-dfdx graph.
        let dev: Cpu = Cpu::seed_from_u64(3);
        let first = Linear::<In, In, Cpu>::new(&dev, true);
        let second = Linear::<In, Out, Cpu>::new(&dev, false);
        let host = frozen(&second, Dtype::F32);
        let x: Seq<In, Cpu> = dev.sample_normal_like(&(2, 3, In::default()));
        let weight_grad = |last: &Linear<In, Out, Cpu>| {
            let mut grads = Gradients::leaky();
            first.weight.alloc_grad(&mut grads).unwrap();
            let h = first.forward(x.clone().traced(grads)).tanh();
            let grads = last.forward(h).square().mean().backward();
            first.weight.grad(&grads)
        };
        assert_close(&weight_grad(&host), &weight_grad(&second), 1e-5);
    }

    #[test]
    fn a_host_weight_loads_values_in_its_dtype_and_refuses_training() {
        let dev: Cpu = Cpu::seed_from_u64(4);
        let mut layer = frozen(&Linear::<In, Out, Cpu>::new(&dev, false), Dtype::Bf16);
        let values: Vec<f32> = (0..35).map(|i| 1.0 + i as f32 / 1024.0).collect();
        layer.weight.set_values(&values).unwrap();
        let host = layer.weight.host().unwrap();
        assert_eq!(host.dtype(), Dtype::Bf16);
        // bf16 keeps 8 bits of mantissa: 1 + 3/1024 rounds to 1.
        assert_eq!(layer.weight.values()[3], 1.0);
        assert!(layer.weight.set_values(&values[..34]).is_err());
        let err = layer
            .weight
            .alloc_grad(&mut Gradients::leaky())
            .unwrap_err();
        assert!(
            err.to_string().contains("frozen on the host in bf16"),
            "{err}"
        );
    }
}
