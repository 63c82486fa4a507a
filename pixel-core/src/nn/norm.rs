//! Normalisation layers over the channel axis of `[batch, tokens, channels]`.
//!
//! On the CPU each norm is one host op, forward and backward ([`layer_norm`], [`rms_norm`]):
//! through dfdx's ops a LayerNorm is eight broadcast kernels each way, each writing a fresh
//! tensor, and such kernels were a quarter of the demo's training step.
use crate::error::Result;
use crate::nn::{elementwise, host_grad_mut, Seq};
use crate::params::{join, ParamVisitor, Params};
use dfdx::prelude::*;
use std::any::TypeId;
use std::sync::Arc;

/// `[batch, tokens, channels]` with any channel dim type.
type Rows<C, D, T> = Tensor<(usize, usize, C), f32, D, T>;

/// LayerNorm over the last axis, `(x - mean) / sqrt(var + eps) * weight + bias` (population
/// variance), for any channel dim type: one host op on the CPU, dfdx's ops elsewhere.
pub fn layer_norm<C: Dim, D: Device<f32>, T: Tape<f32, D>>(
    x: Rows<C, D, T>,
    weight: &Tensor<(C,), f32, D>,
    bias: &Tensor<(C,), f32, D>,
    eps: f64,
) -> Rows<C, D, T> {
    if TypeId::of::<D>() != TypeId::of::<Cpu>() {
        let shape = *x.shape();
        return x.normalize::<Axis<2>>(eps)
            * weight
                .retaped::<T>()
                .broadcast_like::<_, Axes2<0, 1>>(&shape)
            + bias.retaped::<T>().broadcast_like::<_, Axes2<0, 1>>(&shape);
    }
    let (x, mut tape) = x.contiguous().split_tape();
    let width = x.shape().2.size();
    let (w, b) = (weight.as_vec(), bias.as_vec());
    let inputs = x.as_vec();
    let mut values = inputs.clone();
    for row in values.chunks_exact_mut(width) {
        elementwise::layer_norm_in_place(row, &w, &b, eps as f32);
    }
    let y = x.device().tensor_from_vec(values, *x.shape());
    if !T::OWNS_TAPE {
        return y.put_tape(tape);
    }
    let ids = (x.ghost(), weight.ghost(), bias.ghost(), y.ghost());
    let saved = Arc::new((inputs, w));
    tape.add_backward_op(move |grads| {
        let (x_id, w_id, b_id, y_id) = &ids;
        let (x, w) = &*saved;
        let dy = host_grad_mut(grads.get_or_alloc_mut(y_id)?).to_vec();
        let (mut dw, mut db) = (vec![0.0f32; width], vec![0.0f32; width]);
        let dx = host_grad_mut(grads.get_or_alloc_mut(x_id)?);
        let mut xhat = vec![0.0f32; width];
        let mut dxhat = vec![0.0f32; width];
        for ((x, dy), dx) in x
            .chunks_exact(width)
            .zip(dy.chunks_exact(width))
            .zip(dx.chunks_exact_mut(width))
        {
            let n = width as f32;
            let mean = elementwise::sum(x) / n;
            xhat.iter_mut().zip(x).for_each(|(h, v)| *h = v - mean);
            let var = elementwise::dot(&xhat, &xhat) / n;
            let r = 1.0 / (var + eps as f32).sqrt();
            xhat.iter_mut().for_each(|h| *h *= r);
            for i in 0..width {
                dxhat[i] = dy[i] * w[i];
                dw[i] += dy[i] * xhat[i];
                db[i] += dy[i];
            }
            let mean_d = elementwise::sum(&dxhat) / n;
            let mean_dx = elementwise::dot(&dxhat, &xhat) / n;
            for i in 0..width {
                dx[i] += r * (dxhat[i] - mean_d - xhat[i] * mean_dx);
            }
        }
        for (id, d) in [(w_id, dw), (b_id, db)] {
            for (g, v) in host_grad_mut(grads.get_or_alloc_mut(id)?).iter_mut().zip(d) {
                *g += v;
            }
        }
        Ok(())
    });
    y.put_tape(tape)
}

/// T5's norm, `x / sqrt(mean(x^2) + eps) * weight`: one host op on the CPU, dfdx's ops
/// elsewhere.
pub fn rms_norm<C: Dim, D: Device<f32>, T: Tape<f32, D>>(
    x: Rows<C, D, T>,
    weight: &Tensor<(C,), f32, D>,
    eps: f64,
) -> Rows<C, D, T> {
    let shape = *x.shape();
    if TypeId::of::<D>() != TypeId::of::<Cpu>() {
        let mean_square = x.retaped::<T>().square().mean::<(usize, usize), Axis<2>>();
        let inv_rms = (mean_square + eps as f32).sqrt().recip();
        return x
            * inv_rms.broadcast_like::<_, Axis<2>>(&shape)
            * weight
                .retaped::<T>()
                .broadcast_like::<_, Axes2<0, 1>>(&shape);
    }
    let (x, mut tape) = x.contiguous().split_tape();
    let width = shape.2.size();
    let w = weight.as_vec();
    let inputs = x.as_vec();
    let inv_rms: Vec<f32> = inputs
        .chunks_exact(width)
        .map(|row| 1.0 / (elementwise::dot(row, row) / width as f32 + eps as f32).sqrt())
        .collect();
    let mut values = inputs.clone();
    for (row, r) in values.chunks_exact_mut(width).zip(&inv_rms) {
        row.iter_mut().zip(&w).for_each(|(v, w)| *v = *v * r * w);
    }
    let y = x.device().tensor_from_vec(values, shape);
    if !T::OWNS_TAPE {
        return y.put_tape(tape);
    }
    let ids = (x.ghost(), weight.ghost(), y.ghost());
    let saved = Arc::new((inputs, inv_rms, w));
    tape.add_backward_op(move |grads| {
        let (x_id, w_id, y_id) = &ids;
        let (x, inv_rms, w) = &*saved;
        let dy = host_grad_mut(grads.get_or_alloc_mut(y_id)?).to_vec();
        let mut dw = vec![0.0f32; width];
        let dx = host_grad_mut(grads.get_or_alloc_mut(x_id)?);
        let mut dyw = vec![0.0f32; width];
        for (((x, dy), dx), r) in x
            .chunks_exact(width)
            .zip(dy.chunks_exact(width))
            .zip(dx.chunks_exact_mut(width))
            .zip(inv_rms)
        {
            for i in 0..width {
                dyw[i] = dy[i] * w[i];
                dw[i] += dy[i] * x[i] * r;
            }
            // d/dx of x r(x): r dyw - x r^3 mean(dyw x).
            let k = r * r * r * elementwise::dot(&dyw, x) / width as f32;
            for i in 0..width {
                dx[i] += r * dyw[i] - x[i] * k;
            }
        }
        for (g, v) in host_grad_mut(grads.get_or_alloc_mut(w_id)?)
            .iter_mut()
            .zip(dw)
        {
            *g += v;
        }
        Ok(())
    });
    y.put_tape(tape)
}

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
        layer_norm(x, &self.weight, &self.bias, self.eps)
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
        rms_norm(x, &self.weight, self.eps)
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

    /// The norms through dfdx's ops (what other devices run), for comparison.
    fn dfdx_layer_norm<T: Tape<f32, Cpu>>(
        x: Rows<usize, Cpu, T>,
        w: &Tensor<(usize,), f32, Cpu>,
        b: &Tensor<(usize,), f32, Cpu>,
    ) -> Rows<usize, Cpu, T> {
        let shape = *x.shape();
        x.normalize::<Axis<2>>(1e-5) * w.retaped::<T>().broadcast_like::<_, Axes2<0, 1>>(&shape)
            + b.retaped::<T>().broadcast_like::<_, Axes2<0, 1>>(&shape)
    }

    fn dfdx_rms_norm<T: Tape<f32, Cpu>>(
        x: Rows<usize, Cpu, T>,
        w: &Tensor<(usize,), f32, Cpu>,
    ) -> Rows<usize, Cpu, T> {
        let shape = *x.shape();
        let mean_square = x.retaped::<T>().square().mean::<(usize, usize), Axis<2>>();
        let inv_rms = (mean_square + 1e-5).sqrt().recip();
        x * inv_rms.broadcast_like::<_, Axis<2>>(&shape)
            * w.retaped::<T>().broadcast_like::<_, Axes2<0, 1>>(&shape)
    }

    fn assert_near(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 2e-5 * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// The host ops give dfdx's values and gradients (input, weight, bias).
        #[test]
        fn host_norms_equal_dfdx_ops_with_gradients(
            seed in 0u64..1000, rows in 1usize..5, width in 1usize..40, shift in -3.0f32..3.0,
        ) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let x: Rows<usize, Cpu, NoneTape> = dev.sample_normal_like(&(2, rows, width)) + shift;
            let w: Tensor<(usize,), f32, Cpu> = dev.sample_normal_like(&(width,));
            let b: Tensor<(usize,), f32, Cpu> = dev.sample_normal_like(&(width,));
            let probe: Rows<usize, Cpu, NoneTape> = dev.sample_normal_like(&(2, rows, width));

            let ours = layer_norm(x.leaky_trace(), &w, &b, 1e-5);
            let theirs = dfdx_layer_norm(x.leaky_trace(), &w, &b);
            assert_near("layer norm", &ours.as_vec(), &theirs.as_vec());
            let ours = (ours * probe.clone()).sum().backward();
            let theirs = (theirs * probe.clone()).sum().backward();
            assert_near("dx", &ours.get(&x).as_vec(), &theirs.get(&x).as_vec());
            assert_near("dw", &ours.get(&w).as_vec(), &theirs.get(&w).as_vec());
            assert_near("db", &ours.get(&b).as_vec(), &theirs.get(&b).as_vec());

            let ours = rms_norm(x.leaky_trace(), &w, 1e-5);
            let theirs = dfdx_rms_norm(x.leaky_trace(), &w);
            assert_near("rms norm", &ours.as_vec(), &theirs.as_vec());
            let ours = (ours * probe.clone()).sum().backward();
            let theirs = (theirs * probe).sum().backward();
            assert_near("rms dx", &ours.get(&x).as_vec(), &theirs.get(&x).as_vec());
            assert_near("rms dw", &ours.get(&w).as_vec(), &theirs.get(&w).as_vec());
        }
    }

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
