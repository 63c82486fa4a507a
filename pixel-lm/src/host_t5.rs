//! T5 for inference with frozen weights stored as f32, bf16 or f16 ([`Dtype`]), on host
//! vectors: encoder, KV-cached decoder, greedy and beam search, all arithmetic in f32.
//!
//! [`T5`] trains and holds f32 dfdx tensors; [`HostT5`] only runs, and holds each weight once in
//! its dtype ([`HostMatrix`], no f32 copy). Loaded from an HF folder, a bf16 checkpoint's bits
//! are kept as they are ([`HostT5::from_pretrained`]); from a trained [`T5`], the weights are
//! rounded ([`HostT5::from_model`], LoRA adapters kept in f32). Its dims come from
//! `config.json` at run time, so any T5 size loads without a preset.
//!
//! With f32 weights it computes what [`T5`] computes (to summation order); with bf16 weights
//! what HF computes in f32 from the bf16-rounded checkpoint (tested on the parity fixtures).
use crate::config::T5Config;
use crate::dims::T5Dims;
use crate::error::{LmError, Result};
use crate::generate::{search, GenerateOptions, HostGeneration};
use crate::host_decoder::{Embed, HostDecoder};
use crate::host_layers::{attend_head, rms_norm, HostAttention, HostFf, HostLinear};
use crate::host_weights::{DecoderBlock, DecoderWeights};
use crate::load::checkpoint_path;
use crate::t5::{relative_position_bucket, T5};
use dfdx::prelude::*;
use pixel_core::host_matrix::{read_matrices, Dtype, HostMatrix};
use pixel_core::CoreError;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

struct EncoderBlock {
    norm: Vec<f32>,
    attention: HostAttention,
    ff_norm: Vec<f32>,
    ff: HostFf,
}

/// A T5 whose weights are [`HostMatrix`]es of one [`Dtype`].
pub struct HostT5 {
    pub config: T5Config,
    dtype: Dtype,
    /// `shared`: the token embedding, and the LM head of tied models.
    shared: Arc<HostMatrix>,
    encoder: Vec<EncoderBlock>,
    encoder_norm: Vec<f32>,
    /// `[buckets, heads]` of encoder block 0.
    encoder_position: Vec<f32>,
    decoder: Arc<DecoderWeights>,
}

impl std::fmt::Debug for HostT5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HostT5 {{ {} + {} layers, {} }}",
            self.encoder.len(),
            self.decoder.blocks.len(),
            self.dtype
        )
    }
}

/// Which tensors keep the run's dtype: the matrices. Norm weights and position tables are
/// small and stay f32.
fn dtype_of(name: &str, dtype: Dtype) -> Dtype {
    if name.contains("layer_norm") || name.contains("relative_attention_bias") {
        Dtype::F32
    } else {
        dtype
    }
}

impl HostT5 {
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The decoder's weights, for [`DecoderWeights::step_bytes`] and [`HostDecoder`]s.
    pub fn decoder_weights(&self) -> &Arc<DecoderWeights> {
        &self.decoder
    }

    /// A trained model's weights, rounded to `dtype`.
    pub fn from_model<P: T5Dims, D: Device<f32>>(model: &T5<P, D>, dtype: Dtype) -> Self {
        let shared = Arc::new(HostMatrix::from_f32(
            P::Vocab::SIZE,
            P::Model::SIZE,
            model.shared.weight.as_vec(),
            dtype,
        ));
        let decoder = match &model.lm_head {
            Some(_) => model.decoder_weights(dtype),
            None => model.decoder_weights_with_head(dtype, shared.clone()),
        };
        let encoder = model
            .encoder
            .block
            .iter()
            .map(|b| EncoderBlock {
                norm: b.self_attention_norm.weight.as_vec(),
                attention: HostAttention::from_dfdx(&b.self_attention, dtype),
                ff_norm: b.ff_norm.weight.as_vec(),
                ff: HostFf::from_dfdx(&b.ff, dtype),
            })
            .collect();
        let encoder_position = model.encoder.block[0]
            .self_attention
            .relative_attention_bias
            .as_ref()
            .expect("encoder block 0 has the position bias")
            .as_vec();
        HostT5 {
            config: model.config.clone(),
            dtype,
            shared,
            encoder,
            encoder_norm: model.encoder.final_layer_norm.weight.as_vec(),
            encoder_position,
            decoder: Arc::new(decoder),
        }
    }

    /// Loads `dir/config.json` and its checkpoint (one file or shards) with the weights stored
    /// as `dtype`: a checkpoint already in `dtype` is copied bit for bit, never widened.
    /// Strict as [`T5::load_store`]: one error lists every missing, misshapen and unexpected
    /// tensor.
    pub fn from_pretrained(dir: &Path, dtype: Dtype) -> Result<Self> {
        let config = T5Config::from_file(&dir.join("config.json"))?;
        let path = checkpoint_path(dir)?;
        let tensors = read_matrices(&path, |name| dtype_of(name, dtype))?;
        let mut loader = Loader {
            tensors,
            problems: Vec::new(),
        };
        let model = Self::build(&config, dtype, &mut loader);
        loader.finish(&path)?;
        Ok(model)
    }

    fn build(config: &T5Config, dtype: Dtype, l: &mut Loader) -> Self {
        let (d, inner, ff, vocab) = (
            config.d_model,
            config.inner_dim(),
            config.d_ff,
            config.vocab_size,
        );
        let heads = config.num_heads;
        let buckets = config.relative_attention_num_buckets;
        let act = config
            .activation()
            .expect("T5Config::from_file validated the activation");
        let shared = Arc::new(l.matrix("shared.weight", vocab, d));
        let attention = |l: &mut Loader, p: &str| HostAttention {
            q: HostLinear::new(Arc::new(l.matrix(&format!("{p}.q.weight"), inner, d))),
            k: HostLinear::new(Arc::new(l.matrix(&format!("{p}.k.weight"), inner, d))),
            v: HostLinear::new(Arc::new(l.matrix(&format!("{p}.v.weight"), inner, d))),
            o: HostLinear::new(Arc::new(l.matrix(&format!("{p}.o.weight"), d, inner))),
        };
        let feed_forward = |l: &mut Loader, p: &str| {
            let mut w = |n: &str, rows, cols| {
                HostLinear::new(Arc::new(l.matrix(&format!("{p}.{n}.weight"), rows, cols)))
            };
            if config.is_gated() {
                HostFf::Gated(w("wi_0", ff, d), w("wi_1", ff, d), w("wo", d, ff), act)
            } else {
                HostFf::Plain(w("wi", ff, d), w("wo", d, ff), act)
            }
        };
        let encoder = (0..config.num_layers)
            .map(|i| {
                let p = format!("encoder.block.{i}");
                EncoderBlock {
                    norm: l.vector(&format!("{p}.layer.0.layer_norm.weight"), d),
                    attention: attention(l, &format!("{p}.layer.0.SelfAttention")),
                    ff_norm: l.vector(&format!("{p}.layer.1.layer_norm.weight"), d),
                    ff: feed_forward(l, &format!("{p}.layer.1.DenseReluDense")),
                }
            })
            .collect();
        let blocks = (0..config.decoder_layers())
            .map(|i| {
                let p = format!("decoder.block.{i}");
                DecoderBlock {
                    self_norm: l.vector(&format!("{p}.layer.0.layer_norm.weight"), d),
                    self_attention: attention(l, &format!("{p}.layer.0.SelfAttention")),
                    cross_norm: l.vector(&format!("{p}.layer.1.layer_norm.weight"), d),
                    cross_attention: attention(l, &format!("{p}.layer.1.EncDecAttention")),
                    ff_norm: l.vector(&format!("{p}.layer.2.layer_norm.weight"), d),
                    ff: feed_forward(l, &format!("{p}.layer.2.DenseReluDense")),
                }
            })
            .collect();
        let position = |l: &mut Loader, stack: &str| {
            l.vector_2d(
                &format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
                buckets,
                heads,
            )
        };
        let encoder_position = position(l, "encoder");
        let decoder_position = position(l, "decoder");
        let (head, head_scale) = if config.tie_word_embeddings {
            l.duplicate("lm_head.weight", &shared);
            (shared.clone(), (d as f32).powf(-0.5))
        } else {
            (Arc::new(l.matrix("lm_head.weight", vocab, d)), 1.0)
        };
        for name in ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"] {
            l.duplicate(name, &shared);
        }
        HostT5 {
            config: config.clone(),
            dtype,
            shared,
            encoder,
            encoder_norm: l.vector("encoder.final_layer_norm.weight", d),
            encoder_position,
            decoder: Arc::new(DecoderWeights {
                blocks,
                final_norm: l.vector("decoder.final_layer_norm.weight", d),
                head,
                head_scale,
                position_table: decoder_position,
                buckets,
                max_distance: config.relative_attention_max_distance,
                heads,
                eps: config.layer_norm_epsilon,
            }),
        }
    }

    /// The encoder on token ids `[batch, tokens]` (`mask` `[batch * tokens]`, true = real):
    /// its final hidden states `[batch * tokens, d_model]`, as [`T5::encode`] and HF compute
    /// them, padded positions included.
    pub fn encode(&self, ids: &[usize], mask: &[bool], batch: usize) -> Vec<f32> {
        self.encode_rows(ids, mask, batch, true)
    }

    /// [`Self::encode`] where padded positions are not computed (left zero): what decoding
    /// needs, since cross-attention masks them. Real positions get the same values, because a
    /// masked key's attention weight is exactly zero in f32 either way.
    pub fn encode_real(&self, ids: &[usize], mask: &[bool], batch: usize) -> Vec<f32> {
        self.encode_rows(ids, mask, batch, false)
    }

    /// The encoder over the positions it computes (all, or the real ones), each attending to
    /// the real positions of its sequence.
    fn encode_rows(&self, ids: &[usize], mask: &[bool], batch: usize, padded: bool) -> Vec<f32> {
        // On a pool thread, the products' and attention's parallel parts start without waking
        // the caller's thread in between.
        rayon::scope(|_| self.encode_rows_in_pool(ids, mask, batch, padded))
    }

    fn encode_rows_in_pool(
        &self,
        ids: &[usize],
        mask: &[bool],
        batch: usize,
        padded: bool,
    ) -> Vec<f32> {
        let tokens = ids.len() / batch.max(1);
        let (heads, eps, d) = (
            self.config.num_heads,
            self.config.layer_norm_epsilon,
            self.config.d_model,
        );
        let buckets = self.config.relative_attention_num_buckets;
        let max_distance = self.config.relative_attention_max_distance;
        // Position bias `[query, key, head]`.
        let mut position = Vec::with_capacity(tokens * tokens * heads);
        for i in 0..tokens {
            for j in 0..tokens {
                let bucket =
                    relative_position_bucket(j as i64 - i as i64, true, buckets, max_distance);
                position.extend_from_slice(
                    &self.encoder_position[bucket * heads..(bucket + 1) * heads],
                );
            }
        }
        // Computed positions (flat `r * tokens + i`), and per sequence the range of them that
        // are its rows and the indices (into those) of its real positions: the keys.
        let rows: Vec<usize> = (0..batch * tokens).filter(|&p| padded || mask[p]).collect();
        let ranges: Vec<std::ops::Range<usize>> = (0..batch)
            .map(|r| {
                let start = rows.partition_point(|&p| p < r * tokens);
                start..rows.partition_point(|&p| p < (r + 1) * tokens)
            })
            .collect();
        let row_ids: Vec<usize> = rows.iter().map(|&p| ids[p]).collect();
        let mut x = self.embed(&row_ids);
        for b in &self.encoder {
            let a = &b.attention;
            let inner = a.q.out();
            let dk = inner / heads;
            let h = rms_norm(&x, &b.norm, eps);
            let (q, k, v) = (a.q.forward(&h), a.k.forward(&h), a.v.forward(&h));
            let mut out = vec![0.0f32; rows.len() * inner];
            for range in &ranges {
                let keys: Vec<usize> = range.clone().filter(|&n| mask[rows[n]]).collect();
                let gather = |t: &[f32]| -> Vec<f32> {
                    keys.iter()
                        .flat_map(|&n| t[n * inner..(n + 1) * inner].iter().copied())
                        .collect()
                };
                let (kr, vr) = (gather(&k), gather(&v));
                out[range.start * inner..range.end * inner]
                    .par_chunks_mut(inner)
                    .zip(range.clone())
                    .for_each(|(out_row, n)| {
                        let i = rows[n] % tokens;
                        for hd in 0..heads {
                            let (o, span) = (n * inner + hd * dk, hd * dk..(hd + 1) * dk);
                            attend_head(
                                &q[o..o + dk],
                                &kr,
                                &vr,
                                inner,
                                hd,
                                dk,
                                |j| position[(i * tokens + rows[keys[j]] % tokens) * heads + hd],
                                &mut out_row[span],
                            );
                        }
                    });
            }
            x.iter_mut()
                .zip(a.o.forward(&out))
                .for_each(|(x, y)| *x += y);
            let h = rms_norm(&x, &b.ff_norm, eps);
            x.iter_mut()
                .zip(b.ff.forward(&h))
                .for_each(|(x, y)| *x += y);
        }
        let x = rms_norm(&x, &self.encoder_norm, eps);
        if padded {
            return x;
        }
        let mut full = vec![0.0f32; batch * tokens * d];
        for (n, &p) in rows.iter().enumerate() {
            full[p * d..(p + 1) * d].copy_from_slice(&x[n * d..(n + 1) * d]);
        }
        full
    }

    /// HF's `model(input_ids, attention_mask, decoder_input_ids)` with teacher forcing, the
    /// decoder run one cached step per position: encoder states `[batch * source, d_model]`,
    /// decoder hidden states `[batch * steps, d_model]` and logits `[batch * steps, vocab]`.
    pub fn forward(
        &self,
        input_ids: &[usize],
        mask: &[bool],
        batch: usize,
        decoder_input_ids: &[usize],
    ) -> HostForward {
        let encoder_hidden = self.encode(input_ids, mask, batch);
        let steps = decoder_input_ids.len() / batch.max(1);
        let (d, vocab) = (self.config.d_model, self.config.vocab_size);
        let mut decoder = self.start(&encoder_hidden, mask, batch);
        let mut decoder_hidden = vec![0.0f32; batch * steps * d];
        let mut logits = vec![0.0f32; batch * steps * vocab];
        for t in 0..steps {
            let ids: Vec<usize> = (0..batch)
                .map(|b| decoder_input_ids[b * steps + t])
                .collect();
            let (h, l) = self.step(&mut decoder, &ids);
            for b in 0..batch {
                let row = b * steps + t;
                decoder_hidden[row * d..(row + 1) * d].copy_from_slice(&h[b * d..(b + 1) * d]);
                logits[row * vocab..(row + 1) * vocab]
                    .copy_from_slice(&l[b * vocab..(b + 1) * vocab]);
            }
        }
        HostForward {
            encoder_hidden,
            decoder_hidden,
            logits,
        }
    }

    /// A decoder for encoder states `[batch * source, d_model]` from [`Self::encode`].
    pub fn start(&self, encoder_hidden: &[f32], mask: &[bool], batch: usize) -> HostDecoder {
        self.decoder.start(encoder_hidden, mask, batch, 1)
    }

    /// One decoding step, one token per row: hidden states `[rows, d_model]` and logits
    /// `[rows, vocab]`.
    pub fn step(&self, decoder: &mut HostDecoder, ids: &[usize]) -> (Vec<f32>, Vec<f32>) {
        assert_eq!(ids.len(), decoder.rows, "one token per row");
        decoder.step(self.embed(ids))
    }

    /// Greedy or beam search over a batch from its encoder states (e.g. PixelLLM's visual
    /// tokens and prompt, encoded elsewhere), as [`T5::generate`].
    pub fn generate_encoded(
        &self,
        encoder_hidden: &[f32],
        mask: &[bool],
        batch: usize,
        options: &GenerateOptions,
    ) -> HostGeneration {
        search(
            self,
            &self.decoder,
            &self.config,
            encoder_hidden,
            mask,
            batch,
            options,
        )
    }

    /// Greedy or beam search over token sequences of any lengths: padded into one batch (pad
    /// id, masked), encoded and decoded together. Row `i` of the result equals `inputs[i]`
    /// generated alone (tested).
    pub fn generate(&self, inputs: &[Vec<usize>], options: &GenerateOptions) -> HostGeneration {
        let (ids, mask) = pad_batch(inputs, self.config.pad_token_id);
        let enc = self.encode_real(&ids, &mask, inputs.len());
        self.generate_encoded(&enc, &mask, inputs.len(), options)
    }
}

/// Outputs of [`HostT5::forward`], row-major as HF's `[batch, tokens, ...]`.
#[derive(Debug, Clone)]
pub struct HostForward {
    pub encoder_hidden: Vec<f32>,
    pub decoder_hidden: Vec<f32>,
    pub logits: Vec<f32>,
}

impl Embed for HostT5 {
    fn embed(&self, ids: &[usize]) -> Vec<f32> {
        let d = self.config.d_model;
        let mut x = vec![0.0f32; ids.len() * d];
        for (row, &id) in x.chunks_exact_mut(d).zip(ids) {
            self.shared.row_into(id, row);
        }
        x
    }
}

/// Sequences of any lengths as one `[batch, longest]` batch of ids padded with `pad`, and its
/// mask (true = real token).
pub fn pad_batch(inputs: &[Vec<usize>], pad: usize) -> (Vec<usize>, Vec<bool>) {
    let longest = inputs.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(inputs.len() * longest);
    let mut mask = Vec::with_capacity(inputs.len() * longest);
    for row in inputs {
        ids.extend(
            row.iter()
                .copied()
                .chain(std::iter::repeat(pad))
                .take(longest),
        );
        mask.extend((0..longest).map(|i| i < row.len()));
    }
    (ids, mask)
}

/// Takes tensors out of a checkpoint by name and shape, collecting every problem.
struct Loader {
    tensors: BTreeMap<String, HostMatrix>,
    problems: Vec<String>,
}

impl Loader {
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> HostMatrix {
        match self.tensors.remove(name) {
            Some(m) if (m.rows(), m.cols()) == (rows, cols) => m,
            Some(m) => {
                self.problems.push(format!(
                    "tensor `{name}` has shape [{}, {}], the model expects [{rows}, {cols}]",
                    m.rows(),
                    m.cols()
                ));
                HostMatrix::from_f32(0, 0, Vec::new(), Dtype::F32)
            }
            None => {
                self.problems
                    .push(format!("missing tensor `{name}` (shape [{rows}, {cols}])"));
                HostMatrix::from_f32(0, 0, Vec::new(), Dtype::F32)
            }
        }
    }

    /// A 1-D f32 tensor (norm weights).
    fn vector(&mut self, name: &str, len: usize) -> Vec<f32> {
        self.matrix(name, 1, len).to_f32()
    }

    /// A 2-D f32 tensor, row-major.
    fn vector_2d(&mut self, name: &str, rows: usize, cols: usize) -> Vec<f32> {
        self.matrix(name, rows, cols).to_f32()
    }

    /// HF may store copies of `shared.weight` for tied embeddings: accepted when equal (both
    /// are read in the same dtype, so their stored values are compared).
    fn duplicate(&mut self, name: &str, shared: &HostMatrix) {
        if let Some(copy) = self.tensors.remove(name) {
            if copy != *shared {
                self.problems.push(format!(
                    "tensor `{name}` differs from `shared.weight`, but this model ties them"
                ));
            }
        }
    }

    fn finish(self, path: &Path) -> Result<()> {
        let mut problems = self.problems;
        problems.extend(
            self.tensors
                .keys()
                .map(|k| format!("unexpected tensor `{k}` (the model has no such parameter)")),
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LmError::Core(CoreError::CheckpointMismatch {
                path: path.to_path_buf(),
                problems,
            }))
        }
    }
}
