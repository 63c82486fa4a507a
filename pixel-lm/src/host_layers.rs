//! T5's layers on host vectors over [`HostMatrix`] weights (f32, bf16 or f16, f32 arithmetic):
//! the pieces of the host decoder ([`crate::host_decoder`]) and the host encoder
//! ([`crate::host_t5`]), with the arithmetic of their dfdx counterparts in [`crate::t5`].
use dfdx::prelude::*;
use pixel_core::host_matrix::{Dtype, HostMatrix};
use pixel_core::nn::{Activation, Linear, LoraLinear, Mlp};
use pixel_core::params::ParamTensor;
use std::sync::Arc;

pub(crate) const MASKED: f32 = pixel_core::nn::attention::MASKED;

/// `W` of a dfdx linear layer, `[out, in]`, stored as `dtype`: shared with the layer when it
/// already keeps it on the host in `dtype`.
pub(crate) fn matrix<I: ConstDim, O: ConstDim, D: Device<f32>>(
    l: &Linear<I, O, D>,
    dtype: Dtype,
) -> Arc<HostMatrix> {
    match l.weight.host() {
        Some(m) if m.dtype() == dtype => m.clone(),
        _ => Arc::new(HostMatrix::from_f32(
            O::SIZE,
            I::SIZE,
            l.weight.values(),
            dtype,
        )),
    }
}

/// `y = W x (+ b) (+ scale * B A x)`; the LoRA factors stay f32 (they are small and may train).
pub(crate) struct HostLinear {
    w: Arc<HostMatrix>,
    bias: Option<Vec<f32>>,
    /// `A` `[rank, in]`, `B` `[out, rank]`, scale.
    lora: Option<(HostMatrix, HostMatrix, f32)>,
}

impl HostLinear {
    pub fn new(w: Arc<HostMatrix>) -> Self {
        HostLinear {
            w,
            bias: None,
            lora: None,
        }
    }

    pub fn from_linear<I: ConstDim, O: ConstDim, D: Device<f32>>(
        l: &Linear<I, O, D>,
        dtype: Dtype,
    ) -> Self {
        HostLinear {
            w: matrix(l, dtype),
            bias: l.bias.as_ref().map(|b| b.as_vec()),
            lora: None,
        }
    }

    pub fn from_lora<I: ConstDim, O: ConstDim, D: Device<f32>>(
        l: &LoraLinear<I, O, D>,
        dtype: Dtype,
    ) -> Self {
        let mut host = Self::from_linear(&l.base, dtype);
        host.lora = l.lora.as_ref().map(|a| {
            let rank = a.rank();
            (
                HostMatrix::from_f32(rank, I::SIZE, a.a.as_vec(), Dtype::F32),
                HostMatrix::from_f32(O::SIZE, rank, a.b.as_vec(), Dtype::F32),
                a.scale,
            )
        });
        host
    }

    pub fn out(&self) -> usize {
        self.w.rows()
    }

    pub fn bytes(&self) -> usize {
        self.w.bytes()
    }

    /// `x` is `[rows, in]`; returns `[rows, out]`.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut y = self.w.matmul_t(x);
        if let Some(b) = &self.bias {
            for row in y.chunks_mut(b.len()) {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        }
        if let Some((a, b, scale)) = &self.lora {
            let up = b.matmul_t(&a.matmul_t(x));
            y.iter_mut().zip(up).for_each(|(v, u)| *v += u * scale);
        }
        y
    }
}

/// T5's `RMSNorm` on each `w.len()`-wide row of `x`.
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f64) -> Vec<f32> {
    let d = w.len();
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(d) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = (ms + eps as f32).sqrt().recip();
        y.extend(row.iter().zip(w).map(|(v, w)| v * inv * w));
    }
    y
}

pub(crate) fn activate(act: Activation, x: &mut [f32]) {
    match act {
        Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::GeluTanh => pixel_core::nn::elementwise::gelu_tanh_in_place(x),
        Activation::Gelu => x
            .iter_mut()
            .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v as f64 / std::f64::consts::SQRT_2) as f32)),
        Activation::Silu => x.iter_mut().for_each(|v| *v = *v / (1.0 + (-*v).exp())),
    }
}

/// erf with |error| < 1.2e-7 (Numerical Recipes' erfc Chebyshev fit).
fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398
                                    + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 {
        1.0 - r
    } else {
        r - 1.0
    }
}

/// Dot product with 16 independent lanes (attention scores; the weights go through
/// [`HostMatrix`]).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Softmax attention (no score scaling, as T5) of one query head over keys/values laid out
/// `[keys, inner]`, with an additive `bias(key)` (position bias and masks).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    inner: usize,
    head: usize,
    dk: usize,
    bias: impl Fn(usize) -> f32,
    out: &mut [f32],
) {
    let keys = k.len() / inner;
    let off = head * dk;
    let mut scores: Vec<f32> = (0..keys)
        .map(|j| dot(q, &k[j * inner + off..j * inner + off + dk]) + bias(j))
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.iter_mut().for_each(|o| *o = 0.0);
    for (j, s) in scores.iter().enumerate() {
        let p = s / sum;
        let vr = &v[j * inner + off..j * inner + off + dk];
        out.iter_mut().zip(vr).for_each(|(o, v)| *o += p * v);
    }
}

/// `T5Attention`'s projections (LoRA on `q` and `v`, as [`T5Attention`]).
pub(crate) struct HostAttention {
    pub q: HostLinear,
    pub k: HostLinear,
    pub v: HostLinear,
    pub o: HostLinear,
}

impl HostAttention {
    pub fn bytes(&self) -> usize {
        self.q.bytes() + self.k.bytes() + self.v.bytes() + self.o.bytes()
    }
}

/// `DenseReluDense`: plain (`wi`, `wo`) or gated (`wi_0`, `wi_1`, `wo`).
pub(crate) enum HostFf {
    Plain(HostLinear, HostLinear, Activation),
    Gated(HostLinear, HostLinear, HostLinear, Activation),
}

impl HostFf {
    pub fn forward(&self, h: &[f32]) -> Vec<f32> {
        match self {
            HostFf::Plain(wi, wo, act) => {
                let mut a = wi.forward(h);
                activate(*act, &mut a);
                wo.forward(&a)
            }
            HostFf::Gated(wi_0, wi_1, wo, act) => {
                let mut a = wi_0.forward(h);
                activate(*act, &mut a);
                a.iter_mut().zip(wi_1.forward(h)).for_each(|(a, l)| *a *= l);
                wo.forward(&a)
            }
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            HostFf::Plain(a, b, _) => a.bytes() + b.bytes(),
            HostFf::Gated(a, b, c, _) => a.bytes() + b.bytes() + c.bytes(),
        }
    }
}

/// A [`Mlp`] on host vectors (f32), with the decoder step's matrix-vector products: an output
/// head that runs at every decoding step (PixelLLM's point head) then costs about the bytes of
/// its weights, where a dfdx graph per step cost several times that (tensor set-up and a
/// general matmul for one row).
pub struct HostMlp {
    layers: Vec<HostLinear>,
    activation: Activation,
}

impl HostMlp {
    /// Host copies of `mlp`'s weights; make again after the weights change.
    pub fn new<I: ConstDim, H: ConstDim, O: ConstDim, D: Device<f32>>(
        mlp: &Mlp<I, H, O, D>,
    ) -> Self {
        let mut layers = vec![HostLinear::from_linear(&mlp.first, Dtype::F32)];
        layers.extend(
            mlp.middle
                .iter()
                .map(|l| HostLinear::from_linear(l, Dtype::F32)),
        );
        layers.push(HostLinear::from_linear(&mlp.last, Dtype::F32));
        HostMlp {
            layers,
            activation: mlp.activation,
        }
    }

    /// `x` is `[rows, in]` (e.g. the hidden states of [`crate::T5::host_step`]); returns
    /// `[rows, out]`, as [`Mlp::forward`] computes it.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let (last, hidden) = self.layers.split_last().expect("an MLP has layers");
        let mut h = x.to_vec();
        for layer in hidden {
            h = layer.forward(&h);
            activate(self.activation, &mut h);
        }
        last.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_accurate() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (-2.0, -0.995_322_265_0),
        ] {
            assert!((erf(x) - want).abs() < 2e-7, "erf({x})");
        }
    }

    #[test]
    fn host_mlp_equals_the_dfdx_mlp() {
        let dev = Cpu::seed_from_u64(0);
        for act in [
            Activation::Relu,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Silu,
        ] {
            let mlp = Mlp::<Const<24>, Const<40>, Const<4>, Cpu>::new(&dev, 4, act);
            let x = dev.sample_normal_like(&(2usize, 3usize, Const::<24>));
            let want = mlp.forward(x.clone()).as_vec();
            let got = HostMlp::new(&mlp).forward(&x.as_vec());
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{act:?}: {g} vs {w}"
                );
            }
        }
    }
}
