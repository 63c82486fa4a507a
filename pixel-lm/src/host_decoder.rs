//! The decoder step on host vectors, for generation.
//!
//! Decoding feeds one token per row, so every linear layer is a product of a few rows with each
//! weight matrix: memory-bound work on which dfdx's general matmul (built for `m >= 1` blocks)
//! spends several times the necessary time. [`DecoderWeights`] (in `host_weights`) holds the
//! decoder and LM head weights as [`HostMatrix`] (f32, bf16 or f16), and each step reads
//! every weight once for all rows of the batch (all sequences, all beams), with the arithmetic of
//! [`T5::decode_step`] (tested equal to full-sequence decoding, and to HF through the parity
//! fixtures).
//!
//! The f32 model ([`T5`]) makes its [`DecoderWeights`] lazily in f32 (here: the host copies of
//! its dfdx layers); the 16-bit model ([`crate::HostT5`]) holds them in its dtype.
use crate::dims::T5Dims;
use crate::host_layers::{attend_head, rms_norm, HostAttention, HostFf, HostLinear, MASKED};
use crate::host_weights::{DecoderBlock, DecoderWeights};
use crate::t5::{relative_position_bucket, T5Attention, T5DenseAct, T5};
use dfdx::prelude::*;
use pixel_core::host_matrix::{Dtype, HostMatrix};
use pixel_core::nn::{RmsNorm, Seq};
use rayon::prelude::*;
use std::sync::Arc;

pub use crate::host_layers::HostMlp;

impl DecoderWeights {
    /// A decoder for encoder states `[batch * source, d_model]` (mask `[batch * source]`, true =
    /// real token), each input repeated `repeat` times as consecutive rows (beams): the
    /// cross-attention keys and values computed once per input, empty self-attention caches.
    pub fn start(
        self: &Arc<Self>,
        encoder_hidden: &[f32],
        encoder_mask: &[bool],
        batch: usize,
        repeat: usize,
    ) -> HostDecoder {
        let source = encoder_mask.len() / batch.max(1);
        let expand = |t: Vec<f32>| -> Vec<Vec<f32>> {
            let per_input = t.len() / batch.max(1);
            t.chunks(per_input.max(1))
                .flat_map(|c| std::iter::repeat_n(c.to_vec(), repeat))
                .collect()
        };
        let caches = self
            .blocks
            .iter()
            .map(|b| {
                let rows = batch * repeat;
                BlockCache {
                    self_k: vec![Vec::new(); rows],
                    self_v: vec![Vec::new(); rows],
                    cross_k: expand(b.cross_attention.k.forward(encoder_hidden)),
                    cross_v: expand(b.cross_attention.v.forward(encoder_hidden)),
                }
            })
            .collect();
        HostDecoder {
            weights: self.clone(),
            caches,
            cross_keep: encoder_mask
                .chunks(source.max(1))
                .flat_map(|m| std::iter::repeat_n(m.to_vec(), repeat).flatten())
                .collect(),
            source,
            rows: batch * repeat,
            len: 0,
        }
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
    weights: Arc<DecoderWeights>,
    caches: Vec<BlockCache>,
    /// `[rows * source]`, true = real encoder token.
    cross_keep: Vec<bool>,
    source: usize,
    pub rows: usize,
    pub len: usize,
}

// The dfdx layers' host copies are made here, not in `host_layers`, so that `host_layers` and
// `host_weights` (which the model holds) never reach back to `t5`.
impl HostAttention {
    /// `T5Attention`'s projections stored as `dtype` (LoRA factors stay f32).
    pub(crate) fn from_dfdx<P: T5Dims, D: Device<f32>>(
        a: &T5Attention<P, D>,
        dtype: Dtype,
    ) -> Self {
        HostAttention {
            q: HostLinear::from_lora(&a.q, dtype),
            k: HostLinear::from_linear(&a.k, dtype),
            v: HostLinear::from_lora(&a.v, dtype),
            o: HostLinear::from_linear(&a.o, dtype),
        }
    }
}

impl HostFf {
    /// `DenseReluDense`'s weights stored as `dtype`.
    pub(crate) fn from_dfdx<P: T5Dims, D: Device<f32>>(
        ff: &T5DenseAct<P, D>,
        dtype: Dtype,
    ) -> Self {
        match ff {
            T5DenseAct::Plain { wi, wo, act } => HostFf::Plain(
                HostLinear::from_linear(wi, dtype),
                HostLinear::from_linear(wo, dtype),
                *act,
            ),
            T5DenseAct::Gated {
                wi_0,
                wi_1,
                wo,
                act,
            } => HostFf::Gated(
                HostLinear::from_linear(wi_0, dtype),
                HostLinear::from_linear(wi_1, dtype),
                HostLinear::from_linear(wo, dtype),
                *act,
            ),
        }
    }
}

fn norm_vec<C: ConstDim, D: Device<f32>>(n: &RmsNorm<C, D>) -> Vec<f32> {
    n.weight.as_vec()
}

impl<P: T5Dims, D: Device<f32>> T5<P, D> {
    /// f32 host copies of the decoder and LM head weights, made on first use and kept until
    /// the parameters are next accessed mutably.
    pub fn host_weights(&self) -> Arc<DecoderWeights> {
        self.host_weights
            .0
            .get_or_init(|| Arc::new(self.decoder_weights(Dtype::F32)))
            .clone()
    }

    /// Forgets the host copies of the weights; needed only after assigning weights through the
    /// public fields directly.
    pub fn clear_host_weights(&mut self) {
        self.host_weights.clear();
    }

    /// The decoder and LM head weights stored as `dtype`. `shared`, for tied models, is
    /// converted again here; [`crate::HostT5::from_model`] shares one copy instead.
    pub(crate) fn decoder_weights(&self, dtype: Dtype) -> DecoderWeights {
        let head = match &self.lm_head {
            Some(h) => crate::host_layers::matrix(h, dtype),
            None => Arc::new(HostMatrix::from_f32(
                P::Vocab::SIZE,
                P::Model::SIZE,
                self.shared.weight.as_vec(),
                dtype,
            )),
        };
        self.decoder_weights_with_head(dtype, head)
    }

    pub(crate) fn decoder_weights_with_head(
        &self,
        dtype: Dtype,
        head: Arc<HostMatrix>,
    ) -> DecoderWeights {
        let blocks = self
            .decoder
            .block
            .iter()
            .map(|b| {
                let (ca, cn) = b
                    .cross_attention
                    .as_ref()
                    .expect("decoder blocks cross-attend");
                DecoderBlock {
                    self_norm: norm_vec(&b.self_attention_norm),
                    self_attention: HostAttention::from_dfdx(&b.self_attention, dtype),
                    cross_norm: norm_vec(cn),
                    cross_attention: HostAttention::from_dfdx(ca, dtype),
                    ff_norm: norm_vec(&b.ff_norm),
                    ff: HostFf::from_dfdx(&b.ff, dtype),
                }
            })
            .collect();
        let table = self.decoder.block[0]
            .self_attention
            .relative_attention_bias
            .as_ref()
            .expect("decoder block 0 has the position bias");
        DecoderWeights {
            blocks,
            final_norm: norm_vec(&self.decoder.final_layer_norm),
            head,
            head_scale: if self.lm_head.is_some() {
                1.0
            } else {
                (P::Model::SIZE as f32).powf(-0.5)
            },
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
        let rows = encoder_hidden.shape().0;
        self.host_weights()
            .start(&encoder_hidden.as_vec(), encoder_mask, rows, 1)
    }

    /// One decoding step on the host decoder: the final hidden states `[rows, d_model]` and
    /// logits `[rows, vocab]`.
    pub fn host_step(&self, dec: &mut HostDecoder, ids: &[usize]) -> (Vec<f32>, Vec<f32>) {
        assert_eq!(ids.len(), dec.rows, "one token per row");
        dec.step(self.embed(ids))
    }
}

/// Token embeddings on the host: how a [`HostDecoder`]'s model turns ids into its inputs.
pub trait Embed {
    /// `[ids.len(), d_model]`.
    fn embed(&self, ids: &[usize]) -> Vec<f32>;
}

impl<P: T5Dims, D: Device<f32>> Embed for T5<P, D> {
    fn embed(&self, ids: &[usize]) -> Vec<f32> {
        self.embed_tokens::<NoneTape>(self.ids(ids, ids.len()))
            .as_vec()
    }
}

impl HostDecoder {
    /// One step on embedded inputs `x` `[rows, d_model]`: hidden states and logits.
    pub fn step(&mut self, x: Vec<f32>) -> (Vec<f32>, Vec<f32>) {
        rayon::scope(|_| self.step_in_pool(x))
    }

    fn step_in_pool(&mut self, mut x: Vec<f32>) -> (Vec<f32>, Vec<f32>) {
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
            let sa = &b.self_attention;
            let inner = sa.q.out();
            // Self-attention over the cache and the new token.
            let h = rms_norm(&x, &b.self_norm, w.eps);
            let (q, k, v) = (sa.q.forward(&h), sa.k.forward(&h), sa.v.forward(&h));
            let mut out = vec![0.0f32; rows * inner];
            for r in 0..rows {
                c.self_k[r].extend_from_slice(&k[r * inner..(r + 1) * inner]);
                c.self_v[r].extend_from_slice(&v[r * inner..(r + 1) * inner]);
            }
            attend_rows(&mut out, &q, &c.self_k, &c.self_v, heads, |_, hd, j| {
                position[j * heads + hd]
            });
            x.iter_mut()
                .zip(sa.o.forward(&out))
                .for_each(|(x, y)| *x += y);
            // Cross-attention over the encoder output.
            let ca = &b.cross_attention;
            let h = rms_norm(&x, &b.cross_norm, w.eps);
            let q = ca.q.forward(&h);
            let (keep, source) = (&self.cross_keep, self.source);
            attend_rows(&mut out, &q, &c.cross_k, &c.cross_v, heads, |r, _, j| {
                if keep[r * source + j] {
                    0.0
                } else {
                    MASKED
                }
            });
            x.iter_mut()
                .zip(ca.o.forward(&out))
                .for_each(|(x, y)| *x += y);
            // Feed-forward.
            let h = rms_norm(&x, &b.ff_norm, w.eps);
            x.iter_mut()
                .zip(b.ff.forward(&h))
                .for_each(|(x, y)| *x += y);
        }
        self.len += 1;
        let hidden = rms_norm(&x, &w.final_norm, w.eps);
        let logits = if w.head_scale != 1.0 {
            let scaled: Vec<f32> = hidden.iter().map(|v| v * w.head_scale).collect();
            w.head.matmul_t(&scaled)
        } else {
            w.head.matmul_t(&hidden)
        };
        (hidden, logits)
    }

    /// Keeps row `rows[i]` as row `i` of the self-attention caches (beam reordering), with the
    /// room [`Self::reserve`] made.
    pub fn reorder(&mut self, rows: &[usize]) {
        assert_eq!(rows.len(), self.rows);
        let keep = |cache: &[Vec<f32>]| -> Vec<Vec<f32>> {
            rows.iter()
                .map(|&r| {
                    let mut row = Vec::with_capacity(cache[r].capacity());
                    row.extend_from_slice(&cache[r]);
                    row
                })
                .collect()
        };
        for c in &mut self.caches {
            c.self_k = keep(&c.self_k);
            c.self_v = keep(&c.self_v);
        }
    }

    /// Makes room in the self-attention caches for `steps` more tokens, so that no step copies
    /// a growing cache (at batch 8, reallocations and their fresh pages were a quarter of a
    /// step).
    pub fn reserve(&mut self, steps: usize) {
        for (c, b) in self.caches.iter_mut().zip(&self.weights.blocks) {
            let inner = b.self_attention.q.out();
            for row in c.self_k.iter_mut().chain(c.self_v.iter_mut()) {
                row.reserve(steps * inner);
            }
        }
    }
}

/// Attention of every row's query heads (`q` `[rows, inner]`) over that row's `keys[r]` and
/// `values[r]` (`[n, inner]`), with the additive `bias(row, head, key)`, into `out`; rows in
/// parallel (a batch, beams).
fn attend_rows(
    out: &mut [f32],
    q: &[f32],
    keys: &[Vec<f32>],
    values: &[Vec<f32>],
    heads: usize,
    bias: impl Fn(usize, usize, usize) -> f32 + Sync,
) {
    let inner = q.len() / keys.len().max(1);
    let dk = inner / heads;
    out.par_chunks_mut(inner)
        .enumerate()
        .for_each(|(r, out_row)| {
            for hd in 0..heads {
                let span = hd * dk..(hd + 1) * dk;
                attend_head(
                    &q[r * inner + span.start..r * inner + span.end],
                    &keys[r],
                    &values[r],
                    inner,
                    hd,
                    dk,
                    |j| bias(r, hd, j),
                    &mut out_row[span],
                );
            }
        });
}

/// A model's embedding and a started [`HostDecoder`]: what greedy and beam search step.
pub struct Decoding<'a, E: Embed + ?Sized> {
    pub model: &'a E,
    pub decoder: HostDecoder,
}

impl<E: Embed + ?Sized> Decoding<'_, E> {
    /// Decodes one token per row: hidden states `[rows, d_model]` and logits `[rows, vocab]`.
    pub fn step(&mut self, ids: &[usize]) -> (Vec<f32>, Vec<f32>) {
        assert_eq!(ids.len(), self.decoder.rows, "one token per row");
        self.decoder.step(self.model.embed(ids))
    }
}
