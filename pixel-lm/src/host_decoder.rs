//! The decoder step on host vectors, for generation.
//!
//! Decoding feeds one token per row, so every linear layer is a matrix-vector product that reads
//! each weight once: memory-bound work on which dfdx's general matmul (built for `m >= 1`
//! blocks) spends several times the necessary time. [`HostDecoder`] keeps host copies of the
//! decoder and LM head weights ([`HostWeights`], made once per model) and runs each step with
//! row-major dot products, with
//! the same arithmetic as [`T5::decode_step`] (tested equal to full-sequence decoding, and to HF
//! through the parity fixtures).
use crate::dims::T5Dims;
use crate::host_weights::{HostBlock, HostFf, HostLinear, HostWeights};
use crate::t5::{relative_position_bucket, T5Attention, T5DenseAct, T5};
use dfdx::prelude::*;
use pixel_core::nn::{Activation, Linear, LoraLinear, Mlp, RmsNorm, Seq};
use std::sync::Arc;

const MASKED: f32 = pixel_core::nn::attention::MASKED;

impl HostLinear {
    fn new<I: ConstDim, O: ConstDim, D: Device<f32>>(l: &Linear<I, O, D>) -> Self {
        HostLinear {
            w: l.weight.as_vec(),
            bias: l.bias.as_ref().map(|b| b.as_vec()),
            out: O::SIZE,
            inp: I::SIZE,
            lora: None,
        }
    }

    fn with_lora<I: ConstDim, O: ConstDim, D: Device<f32>>(l: &LoraLinear<I, O, D>) -> Self {
        let mut host = Self::new(&l.base);
        host.lora = l
            .lora
            .as_ref()
            .map(|a| (a.a.as_vec(), a.b.as_vec(), a.rank(), a.scale));
        host
    }

    /// `x` is `[rows, in]`; returns `[rows, out]`.
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let rows = x.len() / self.inp;
        let mut y = vec![0.0f32; rows * self.out];
        matvec(&self.w, self.inp, x, &mut y, self.out);
        if let Some(b) = &self.bias {
            for row in y.chunks_mut(self.out) {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        }
        if let Some((a, b, rank, scale)) = &self.lora {
            let mut down = vec![0.0f32; rows * rank];
            matvec(a, self.inp, x, &mut down, *rank);
            let mut up = vec![0.0f32; rows * self.out];
            matvec(b, *rank, &down, &mut up, self.out);
            y.iter_mut().zip(up).for_each(|(v, u)| *v += u * scale);
        }
        y
    }
}

/// `y[r, o] = W[o, :] . x[r, :]` for every row `r`: each weight row is read once for all rows.
///
/// Single-threaded on purpose: the work is memory-bound, and on the small shared machines this
/// runs on a second thread measured slower (spawn and contention) than it saved.
fn matvec(w: &[f32], inp: usize, x: &[f32], y: &mut [f32], out: usize) {
    let rows = x.len() / inp;
    for (o, wr) in w.chunks_exact(inp).enumerate().take(out) {
        for r in 0..rows {
            y[r * out + o] = dot(wr, &x[r * inp..(r + 1) * inp]);
        }
    }
}

/// Dot product with 16 independent lanes, so that it vectorizes without reassociation.
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

fn rms_norm(x: &[f32], w: &[f32], eps: f64) -> Vec<f32> {
    let d = w.len();
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(d) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = (ms + eps as f32).sqrt().recip();
        y.extend(row.iter().zip(w).map(|(v, w)| v * inv * w));
    }
    y
}

fn activate(act: Activation, x: &mut [f32]) {
    match act {
        Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::GeluTanh => x.iter_mut().for_each(|v| {
            let inner = (2.0f32 / std::f32::consts::PI).sqrt() * (*v + 0.044715 * v.powi(3));
            *v = 0.5 * *v * (1.0 + inner.tanh());
        }),
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

/// Softmax attention of one query head over `keys` cached keys/values laid out `[keys, inner]`.
#[allow(clippy::too_many_arguments)]
fn attend_head(
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

/// A [`Mlp`] on host vectors, with the decoder step's matrix-vector products: an output head
/// that runs at every decoding step (PixelLLM's point head) then costs about the bytes of its
/// weights, where a dfdx graph per step cost several times that (tensor set-up and a general
/// matmul for one row).
pub struct HostMlp {
    layers: Vec<HostLinear>,
    activation: Activation,
}

impl HostMlp {
    /// Host copies of `mlp`'s weights; make again after the weights change.
    pub fn new<I: ConstDim, H: ConstDim, O: ConstDim, D: Device<f32>>(
        mlp: &Mlp<I, H, O, D>,
    ) -> Self {
        let mut layers = vec![HostLinear::new(&mlp.first)];
        layers.extend(mlp.middle.iter().map(HostLinear::new));
        layers.push(HostLinear::new(&mlp.last));
        HostMlp {
            layers,
            activation: mlp.activation,
        }
    }

    /// `x` is `[rows, in]` (e.g. the hidden states of [`T5::host_step`]); returns `[rows, out]`,
    /// as [`Mlp::forward`] computes it.
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

/// Keys and values of one block for every row.
#[derive(Clone)]
struct BlockCache {
    /// Per row: self-attention keys / values `[steps, inner]`.
    self_k: Vec<Vec<f32>>,
    self_v: Vec<Vec<f32>>,
    /// Per row: cross-attention keys / values `[source, inner]`.
    cross_k: Vec<Vec<f32>>,
    cross_v: Vec<Vec<f32>>,
}

/// The decoder on host vectors with the key/value caches of `rows` sequences.
#[derive(Clone)]
pub struct HostDecoder {
    weights: Arc<HostWeights>,
    caches: Vec<BlockCache>,
    /// `[rows * source]`, true = real encoder token.
    cross_keep: Vec<bool>,
    source: usize,
    pub rows: usize,
    pub len: usize,
}

fn norm_vec<C: ConstDim, D: Device<f32>>(n: &RmsNorm<C, D>) -> Vec<f32> {
    n.weight.as_vec()
}

impl<P: T5Dims, D: Device<f32>> T5<P, D> {
    /// Host copies of the decoder and LM head weights, made on first use and kept until the
    /// parameters are next accessed mutably.
    pub fn host_weights(&self) -> Arc<HostWeights> {
        self.host_weights
            .0
            .get_or_init(|| Arc::new(self.make_host_weights()))
            .clone()
    }

    /// Forgets the host copies of the weights; needed only after assigning weights through the
    /// public fields directly.
    pub fn clear_host_weights(&mut self) {
        self.host_weights.clear();
    }

    fn make_host_weights(&self) -> HostWeights {
        let blocks = self
            .decoder
            .block
            .iter()
            .map(|b| {
                let sa: &T5Attention<P, D> = &b.self_attention;
                let (ca, cn) = b
                    .cross_attention
                    .as_ref()
                    .expect("decoder blocks cross-attend");
                let ff = match &b.ff {
                    T5DenseAct::Plain { wi, wo, act } => {
                        HostFf::Plain(HostLinear::new(wi), HostLinear::new(wo), *act)
                    }
                    T5DenseAct::Gated {
                        wi_0,
                        wi_1,
                        wo,
                        act,
                    } => HostFf::Gated(
                        HostLinear::new(wi_0),
                        HostLinear::new(wi_1),
                        HostLinear::new(wo),
                        *act,
                    ),
                };
                HostBlock {
                    self_norm: norm_vec(&b.self_attention_norm),
                    q: HostLinear::with_lora(&sa.q),
                    k: HostLinear::new(&sa.k),
                    v: HostLinear::with_lora(&sa.v),
                    o: HostLinear::new(&sa.o),
                    cross_norm: norm_vec(cn),
                    cq: HostLinear::with_lora(&ca.q),
                    co: HostLinear::new(&ca.o),
                    ff_norm: norm_vec(&b.ff_norm),
                    ff,
                }
            })
            .collect();
        let (head, head_scale) = match &self.lm_head {
            Some(h) => (HostLinear::new(h), 1.0),
            None => (
                HostLinear {
                    w: self.shared.weight.as_vec(),
                    bias: None,
                    out: P::Vocab::SIZE,
                    inp: P::Model::SIZE,
                    lora: None,
                },
                (P::Model::SIZE as f32).powf(-0.5),
            ),
        };
        let table = self.decoder.block[0]
            .self_attention
            .relative_attention_bias
            .as_ref()
            .expect("decoder block 0 has the position bias");
        HostWeights {
            blocks,
            final_norm: norm_vec(&self.decoder.final_layer_norm),
            head,
            head_scale,
            buckets: table.shape().0,
            position_table: table.as_vec(),
            max_distance: self.decoder.max_distance,
            heads: self.decoder.heads(),
            eps: self.config.layer_norm_epsilon,
        }
    }

    /// A host decoder for encoder states `[rows, source, d_model]`: cross-attention keys and
    /// values computed once, empty self-attention caches.
    pub fn host_decoder(
        &self,
        encoder_hidden: &Seq<P::Model, D>,
        encoder_mask: &[bool],
    ) -> HostDecoder {
        let (rows, source, _) = *encoder_hidden.shape();
        let inner = P::Inner::SIZE;
        let per_row = |t: Vec<f32>| -> Vec<Vec<f32>> {
            t.chunks(source * inner).map(<[f32]>::to_vec).collect()
        };
        let caches = self
            .decoder
            .block
            .iter()
            .map(|b| {
                let (ca, _) = b
                    .cross_attention
                    .as_ref()
                    .expect("decoder blocks cross-attend");
                BlockCache {
                    self_k: vec![Vec::new(); rows],
                    self_v: vec![Vec::new(); rows],
                    cross_k: per_row(ca.k.forward(encoder_hidden.clone()).as_vec()),
                    cross_v: per_row(ca.v.forward(encoder_hidden.clone()).as_vec()),
                }
            })
            .collect();
        HostDecoder {
            weights: self.host_weights(),
            caches,
            cross_keep: encoder_mask.to_vec(),
            source,
            rows,
            len: 0,
        }
    }

    /// One decoding step on the host decoder: the final hidden states `[rows, d_model]` and
    /// logits `[rows, vocab]`.
    pub fn host_step(&self, dec: &mut HostDecoder, ids: &[usize]) -> (Vec<f32>, Vec<f32>) {
        assert_eq!(ids.len(), dec.rows, "one token per row");
        let x = self
            .embed_tokens::<NoneTape>(self.ids(ids, dec.rows))
            .as_vec();
        dec.step(x)
    }
}

impl HostDecoder {
    fn step(&mut self, mut x: Vec<f32>) -> (Vec<f32>, Vec<f32>) {
        let w = self.weights.clone();
        let (rows, heads, pos) = (self.rows, w.heads, self.len);
        let position: Vec<f32> = (0..=pos)
            .flat_map(|j| {
                let bucket = relative_position_bucket(
                    j as i64 - pos as i64,
                    false,
                    w.buckets,
                    w.max_distance,
                );
                w.position_table[bucket * heads..(bucket + 1) * heads].to_vec()
            })
            .collect();
        for (b, c) in w.blocks.iter().zip(&mut self.caches) {
            let inner = b.q.out;
            let dk = inner / heads;
            // Self-attention over the cache and the new token.
            let h = rms_norm(&x, &b.self_norm, w.eps);
            let (q, k, v) = (b.q.forward(&h), b.k.forward(&h), b.v.forward(&h));
            let mut out = vec![0.0f32; rows * inner];
            for r in 0..rows {
                c.self_k[r].extend_from_slice(&k[r * inner..(r + 1) * inner]);
                c.self_v[r].extend_from_slice(&v[r * inner..(r + 1) * inner]);
                for hd in 0..heads {
                    let o = r * inner + hd * dk;
                    attend_head(
                        &q[o..o + dk],
                        &c.self_k[r],
                        &c.self_v[r],
                        inner,
                        hd,
                        dk,
                        |j| position[j * heads + hd],
                        &mut out[o..o + dk],
                    );
                }
            }
            x.iter_mut()
                .zip(b.o.forward(&out))
                .for_each(|(x, y)| *x += y);
            // Cross-attention over the encoder output.
            let h = rms_norm(&x, &b.cross_norm, w.eps);
            let q = b.cq.forward(&h);
            for r in 0..rows {
                let keep = &self.cross_keep[r * self.source..(r + 1) * self.source];
                for hd in 0..heads {
                    let o = r * inner + hd * dk;
                    attend_head(
                        &q[o..o + dk],
                        &c.cross_k[r],
                        &c.cross_v[r],
                        inner,
                        hd,
                        dk,
                        |j| if keep[j] { 0.0 } else { MASKED },
                        &mut out[o..o + dk],
                    );
                }
            }
            x.iter_mut()
                .zip(b.co.forward(&out))
                .for_each(|(x, y)| *x += y);
            // Feed-forward.
            let h = rms_norm(&x, &b.ff_norm, w.eps);
            let y = match &b.ff {
                HostFf::Plain(wi, wo, act) => {
                    let mut a = wi.forward(&h);
                    activate(*act, &mut a);
                    wo.forward(&a)
                }
                HostFf::Gated(wi_0, wi_1, wo, act) => {
                    let mut a = wi_0.forward(&h);
                    activate(*act, &mut a);
                    a.iter_mut()
                        .zip(wi_1.forward(&h))
                        .for_each(|(a, l)| *a *= l);
                    wo.forward(&a)
                }
            };
            x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
        }
        self.len += 1;
        let hidden = rms_norm(&x, &w.final_norm, w.eps);
        let logits = if w.head_scale != 1.0 {
            let scaled: Vec<f32> = hidden.iter().map(|v| v * w.head_scale).collect();
            w.head.forward(&scaled)
        } else {
            w.head.forward(&hidden)
        };
        (hidden, logits)
    }

    /// Keeps row `rows[i]` as row `i` of the self-attention caches (beam reordering).
    pub fn reorder(&mut self, rows: &[usize]) {
        assert_eq!(rows.len(), self.rows);
        for c in &mut self.caches {
            c.self_k = rows.iter().map(|&r| c.self_k[r].clone()).collect();
            c.self_v = rows.iter().map(|&r| c.self_v[r].clone()).collect();
        }
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

    #[test]
    fn matvec_matches_a_direct_loop() {
        let (out, inp, rows) = (37, 21, 3);
        let w: Vec<f32> = (0..out * inp)
            .map(|i| ((i * 7) % 13) as f32 - 6.0)
            .collect();
        let x: Vec<f32> = (0..rows * inp)
            .map(|i| ((i * 5) % 11) as f32 * 0.25)
            .collect();
        let mut y = vec![0.0; rows * out];
        matvec(&w, inp, &x, &mut y, out);
        for r in 0..rows {
            for o in 0..out {
                let want: f32 = (0..inp).map(|i| w[o * inp + i] * x[r * inp + i]).sum();
                assert!((y[r * out + o] - want).abs() < 1e-3);
            }
        }
    }
}
