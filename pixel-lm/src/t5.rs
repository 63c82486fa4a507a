//! T5 / Flan-T5 (Raffel et al. 2020; Chung et al. 2022), module for module as HF's
//! `T5ForConditionalGeneration`, with HF's state-dict names.
//!
//! ```text
//! shared                                     token embedding, also the v1.0 LM head
//! encoder.block.i.layer.0.SelfAttention      q k v o, relative_attention_bias (block 0 only)
//! encoder.block.i.layer.0.layer_norm
//! encoder.block.i.layer.1.DenseReluDense     wi wo (v1.0) | wi_0 wi_1 wo (v1.1 / Flan)
//! encoder.block.i.layer.1.layer_norm
//! encoder.final_layer_norm
//! decoder.block.i.layer.0.SelfAttention      causal, relative_attention_bias (block 0 only)
//! decoder.block.i.layer.1.EncDecAttention    no position bias
//! decoder.block.i.layer.2.DenseReluDense
//! decoder.final_layer_norm
//! lm_head                                    untied models only (v1.1 / Flan)
//! ```
//! T5 differs from the textbook transformer in four places, all here: pre-norm with
//! [`RmsNorm`], no `1/sqrt(d)` attention scaling, a learned bias per relative-position bucket
//! computed in block 0 and shared by every block, and (v1.0) the decoder output scaled by
//! `d_model^-0.5` before the tied LM head. There is no dropout: inference semantics throughout.
use crate::config::T5Config;
use crate::dims::T5Dims;
use crate::error::{LmError, Result};
use dfdx::prelude::*;
use pixel_core::nn::{
    attention_with_bias, causal_bias, merge_heads, padding_bias, split_heads, Activation,
    Embedding, Heads, Linear, LoraLinear, RmsNorm, Seq,
};
use pixel_core::params::{join, ParamVisitor, Params};

/// Token ids `[batch, tokens]` on the device.
pub type Ids<D> = Tensor<(usize, usize), usize, D>;

/// HF's `_relative_position_bucket`: the bucket of `relative_position = key - query`.
///
/// Bidirectional (encoder): half the buckets for keys after the query. Causal (decoder): keys
/// after the query all fall in bucket 0. Distances below `max_exact = buckets / 2` get a bucket
/// each, larger ones share log-spaced buckets up to `max_distance`. The log is taken in f32 as
/// HF does, so boundary cases agree.
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let n = if bidirectional {
        buckets /= 2;
        if relative_position > 0 {
            bucket += buckets;
        }
        relative_position.abs()
    } else {
        (-relative_position).max(0)
    };
    let max_exact = buckets / 2;
    if n < max_exact {
        bucket += n;
    } else {
        let ratio = (n as f32 / max_exact as f32).ln()
            / (max_distance as f64 / max_exact as f64).ln() as f32;
        let large = max_exact + (ratio * (buckets - max_exact) as f32) as i64;
        bucket += large.min(buckets - 1);
    }
    bucket as usize
}

/// Sends one taped tensor to `n` consumers: the first carries the tape, the others are
/// branches of it (same tensor id), so gradients from every consumer reach the tensor.
pub(crate) fn fan_out<S: Shape, D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor<S, f32, D, T>,
    n: usize,
) -> Vec<Tensor<S, f32, D, T>> {
    let (x, tape) = x.split_tape();
    let mut out = Vec::with_capacity(n);
    if n > 0 {
        out.push(x.clone().put_tape(tape));
    }
    out.extend((1..n).map(|_| x.retaped::<T>()));
    out
}

/// `T5Attention`: `q`, `k`, `v`, `o` without bias, no score scaling. LoRA goes on `q` and `v`.
#[derive(Debug, Clone)]
pub struct T5Attention<P: T5Dims, D: Device<f32>> {
    pub q: LoraLinear<P::Model, P::Inner, D>,
    pub k: Linear<P::Model, P::Inner, D>,
    pub v: LoraLinear<P::Model, P::Inner, D>,
    pub o: Linear<P::Inner, P::Model, D>,
    /// `[num_buckets, heads]`, in block 0 of each stack's self-attention only.
    pub relative_attention_bias: Option<Tensor<(usize, usize), f32, D>>,
    pub heads: usize,
}

impl<P: T5Dims, D: Device<f32>> T5Attention<P, D> {
    pub fn new(dev: &D, heads: usize, relative_buckets: Option<usize>) -> Self {
        T5Attention {
            q: LoraLinear::new(dev, false),
            k: Linear::new(dev, false),
            v: LoraLinear::new(dev, false),
            o: Linear::new(dev, false),
            relative_attention_bias: relative_buckets
                .map(|b| dev.sample_normal_like(&(b, heads)) * 0.1),
            heads,
        }
    }

    /// Attends from `x` to `kv` (`x` itself for self-attention) with an additive `bias`
    /// `[batch, heads, queries, keys]` (position bias and masks).
    pub fn forward<T, R>(
        &self,
        x: Seq<P::Model, D, T>,
        kv: Option<Seq<P::Model, D, T>>,
        bias: Heads<D, R>,
    ) -> Seq<P::Model, D, T>
    where
        T: Tape<f32, D> + Merge<R>,
        R: Tape<f32, D>,
    {
        let (q, kv) = match kv {
            Some(kv) => (self.q.forward(x), kv),
            None => (self.q.forward(x.retaped::<T>()), x),
        };
        let k = self.k.forward(kv.retaped::<T>());
        let v = self.v.forward(kv);
        self.attend(q, k, v, bias)
    }

    /// Splits projected `q`, `k`, `v` into heads, attends, merges and projects with `o`.
    fn attend<T, R>(
        &self,
        q: Seq<P::Inner, D, T>,
        k: Seq<P::Inner, D, T>,
        v: Seq<P::Inner, D, T>,
        bias: Heads<D, R>,
    ) -> Seq<P::Model, D, T>
    where
        T: Tape<f32, D> + Merge<R>,
        R: Tape<f32, D>,
    {
        let heads = self.heads;
        let out = attention_with_bias(
            split_heads(q, heads),
            split_heads(k, heads),
            split_heads(v, heads),
            bias,
            1.0,
        );
        self.o.forward(merge_heads::<P::Inner, D, T>(out))
    }

    /// The learned position bias `[batch, heads, queries, keys]` for queries at positions
    /// `offset..offset + queries` and keys at `0..keys`.
    pub fn position_bias<T: Tape<f32, D>>(
        &self,
        batch: usize,
        queries: usize,
        keys: usize,
        offset: usize,
        bidirectional: bool,
        max_distance: usize,
    ) -> Heads<D, T> {
        let table = self
            .relative_attention_bias
            .as_ref()
            .expect("position bias is computed by the block that has `relative_attention_bias`");
        let (buckets, heads) = *table.shape();
        let mut idx = Vec::with_capacity(queries * keys);
        for i in 0..queries {
            for j in 0..keys {
                let rel = j as i64 - (i + offset) as i64;
                idx.push(relative_position_bucket(
                    rel,
                    bidirectional,
                    buckets,
                    max_distance,
                ));
            }
        }
        let idx = table.device().tensor_from_vec(idx, (queries * keys,));
        table
            .retaped::<T>()
            .gather(idx)
            .reshape_like(&(queries, keys, heads))
            .permute::<_, Axes3<2, 0, 1>>()
            .broadcast_like::<_, Axis<0>>(&(batch, heads, queries, keys))
    }
}

impl<P: T5Dims, D: Device<f32>> Params<D> for T5Attention<P, D> {
    fn visit_params(
        &mut self,
        prefix: &str,
        v: &mut dyn ParamVisitor<D>,
    ) -> pixel_core::Result<()> {
        self.q.visit_params(&join(prefix, "q"), v)?;
        self.k.visit_params(&join(prefix, "k"), v)?;
        self.v.visit_params(&join(prefix, "v"), v)?;
        self.o.visit_params(&join(prefix, "o"), v)?;
        self.relative_attention_bias
            .visit_params(&join(prefix, "relative_attention_bias.weight"), v)
    }
}

/// `DenseReluDense`: `wo(act(wi x))` in T5 v1.0, `wo(act(wi_0 x) * wi_1 x)` in v1.1 / Flan.
#[derive(Debug, Clone)]
pub enum T5DenseAct<P: T5Dims, D: Device<f32>> {
    Plain {
        wi: Linear<P::Model, P::Ff, D>,
        wo: Linear<P::Ff, P::Model, D>,
        act: Activation,
    },
    Gated {
        wi_0: Linear<P::Model, P::Ff, D>,
        wi_1: Linear<P::Model, P::Ff, D>,
        wo: Linear<P::Ff, P::Model, D>,
        act: Activation,
    },
}

impl<P: T5Dims, D: Device<f32>> T5DenseAct<P, D> {
    pub fn new(dev: &D, gated: bool, act: Activation) -> Self {
        if gated {
            T5DenseAct::Gated {
                wi_0: Linear::new(dev, false),
                wi_1: Linear::new(dev, false),
                wo: Linear::new(dev, false),
                act,
            }
        } else {
            T5DenseAct::Plain {
                wi: Linear::new(dev, false),
                wo: Linear::new(dev, false),
                act,
            }
        }
    }

    pub fn forward<T: Tape<f32, D>>(&self, x: Seq<P::Model, D, T>) -> Seq<P::Model, D, T> {
        match self {
            T5DenseAct::Plain { wi, wo, act } => wo.forward(act.apply(wi.forward(x))),
            T5DenseAct::Gated {
                wi_0,
                wi_1,
                wo,
                act,
            } => {
                let gate = act.apply(wi_0.forward(x.retaped::<T>()));
                wo.forward(gate * wi_1.forward(x))
            }
        }
    }
}

impl<P: T5Dims, D: Device<f32>> Params<D> for T5DenseAct<P, D> {
    fn visit_params(
        &mut self,
        prefix: &str,
        v: &mut dyn ParamVisitor<D>,
    ) -> pixel_core::Result<()> {
        match self {
            T5DenseAct::Plain { wi, wo, .. } => {
                wi.visit_params(&join(prefix, "wi"), v)?;
                wo.visit_params(&join(prefix, "wo"), v)
            }
            T5DenseAct::Gated { wi_0, wi_1, wo, .. } => {
                wi_0.visit_params(&join(prefix, "wi_0"), v)?;
                wi_1.visit_params(&join(prefix, "wi_1"), v)?;
                wo.visit_params(&join(prefix, "wo"), v)
            }
        }
    }
}

/// Encoder output and its padding bias, as one decoder block's cross-attention sees them.
type CrossInput<P, D, T> = (Seq<<P as T5Dims>::Model, D, T>, Heads<D>);

/// A decoder block's cross-attention and the norm before it (`layer.1`).
pub type CrossAttention<P, D> = (T5Attention<P, D>, RmsNorm<<P as T5Dims>::Model, D>);

/// One T5 block: `layer.0` self-attention, `layer.1` cross-attention (decoder only), then the
/// feed-forward layer (`layer.1` in the encoder, `layer.2` in the decoder); each pre-norm with a
/// residual connection.
#[derive(Debug, Clone)]
pub struct T5Block<P: T5Dims, D: Device<f32>> {
    pub self_attention: T5Attention<P, D>,
    pub self_attention_norm: RmsNorm<P::Model, D>,
    pub cross_attention: Option<CrossAttention<P, D>>,
    pub ff: T5DenseAct<P, D>,
    pub ff_norm: RmsNorm<P::Model, D>,
}

impl<P: T5Dims, D: Device<f32>> T5Block<P, D> {
    pub fn new(
        dev: &D,
        config: &T5Config,
        is_decoder: bool,
        has_position_bias: bool,
    ) -> Result<Self> {
        let eps = config.layer_norm_epsilon;
        let heads = config.num_heads;
        let act = config.activation().map_err(LmError::Invalid)?;
        Ok(T5Block {
            self_attention: T5Attention::new(
                dev,
                heads,
                has_position_bias.then_some(config.relative_attention_num_buckets),
            ),
            self_attention_norm: RmsNorm::new(dev, eps),
            cross_attention: is_decoder
                .then(|| (T5Attention::new(dev, heads, None), RmsNorm::new(dev, eps))),
            ff: T5DenseAct::new(dev, config.is_gated(), act),
            ff_norm: RmsNorm::new(dev, eps),
        })
    }

    /// Full-sequence forward. `self_bias` is position bias plus mask; `cross` is the encoder
    /// output and its padding bias.
    pub fn forward<T>(
        &self,
        x: Seq<P::Model, D, T>,
        self_bias: Heads<D, T>,
        cross: Option<CrossInput<P, D, T>>,
    ) -> Seq<P::Model, D, T>
    where
        T: Tape<f32, D> + Merge<T> + Merge<NoneTape>,
    {
        let h = self.self_attention_norm.forward(x.retaped::<T>());
        let mut x = x + self.self_attention.forward(h, None, self_bias);
        if let (Some((attn, norm)), Some((enc, bias))) = (&self.cross_attention, cross) {
            let h = norm.forward(x.retaped::<T>());
            x = x + attn.forward(h, Some(enc), bias);
        }
        let h = self.ff_norm.forward(x.retaped::<T>());
        x + self.ff.forward(h)
    }
}

impl<P: T5Dims, D: Device<f32>> Params<D> for T5Block<P, D> {
    fn visit_params(
        &mut self,
        prefix: &str,
        v: &mut dyn ParamVisitor<D>,
    ) -> pixel_core::Result<()> {
        self.self_attention
            .visit_params(&join(prefix, "layer.0.SelfAttention"), v)?;
        self.self_attention_norm
            .visit_params(&join(prefix, "layer.0.layer_norm"), v)?;
        let ff = match &mut self.cross_attention {
            Some((attn, norm)) => {
                attn.visit_params(&join(prefix, "layer.1.EncDecAttention"), v)?;
                norm.visit_params(&join(prefix, "layer.1.layer_norm"), v)?;
                "layer.2"
            }
            None => "layer.1",
        };
        self.ff
            .visit_params(&join(prefix, &format!("{ff}.DenseReluDense")), v)?;
        self.ff_norm
            .visit_params(&join(prefix, &format!("{ff}.layer_norm")), v)
    }
}

/// `T5Stack`: the encoder or the decoder (blocks and `final_layer_norm`; the embedding is
/// [`T5::shared`]).
#[derive(Debug, Clone)]
pub struct T5Stack<P: T5Dims, D: Device<f32>> {
    pub block: Vec<T5Block<P, D>>,
    pub final_layer_norm: RmsNorm<P::Model, D>,
    pub is_decoder: bool,
    pub max_distance: usize,
}

impl<P: T5Dims, D: Device<f32>> T5Stack<P, D> {
    pub fn new(dev: &D, config: &T5Config, is_decoder: bool) -> Result<Self> {
        let layers = if is_decoder {
            config.decoder_layers()
        } else {
            config.num_layers
        };
        Ok(T5Stack {
            block: (0..layers)
                .map(|i| T5Block::new(dev, config, is_decoder, i == 0))
                .collect::<Result<_>>()?,
            final_layer_norm: RmsNorm::new(dev, config.layer_norm_epsilon),
            is_decoder,
            max_distance: config.relative_attention_max_distance,
        })
    }

    pub fn heads(&self) -> usize {
        self.block[0].self_attention.heads
    }

    /// Runs every block on `[batch, tokens, d_model]` inputs and applies `final_layer_norm`.
    ///
    /// Encoder: `mask` (`[batch * tokens]`, true = real token) hides padded keys. Decoder:
    /// attention is causal, `mask` is ignored, and `cross` is the encoder output with its mask.
    #[allow(clippy::type_complexity)]
    pub fn forward<T>(
        &self,
        x: Seq<P::Model, D, T>,
        mask: Option<&[bool]>,
        cross: Option<(Seq<P::Model, D, T>, &[bool])>,
    ) -> Seq<P::Model, D, T>
    where
        T: Tape<f32, D> + Merge<T> + Merge<NoneTape>,
    {
        self.forward_with_unordered_prefix(x, mask, cross, 0)
    }

    /// [`Self::forward`] where the first `prefix` tokens take no relative position bias: every
    /// pair with a query or key among them gets none (PixelLLM's visual tokens, whose raster
    /// order is not a sequence). `prefix = 0` is `forward`.
    #[allow(clippy::type_complexity)]
    pub fn forward_with_unordered_prefix<T>(
        &self,
        x: Seq<P::Model, D, T>,
        mask: Option<&[bool]>,
        cross: Option<(Seq<P::Model, D, T>, &[bool])>,
        prefix: usize,
    ) -> Seq<P::Model, D, T>
    where
        T: Tape<f32, D> + Merge<T> + Merge<NoneTape>,
    {
        let (batch, tokens, _) = *x.shape();
        let dev = x.device().clone();
        let heads = self.heads();
        let mut position = self.block[0].self_attention.position_bias::<T>(
            batch,
            tokens,
            tokens,
            0,
            !self.is_decoder,
            self.max_distance,
        );
        if prefix > 0 {
            let ordered: Vec<f32> = (0..tokens * tokens)
                .map(|i| f32::from(u8::from(i / tokens >= prefix && i % tokens >= prefix)))
                .collect();
            let keep = dev
                .tensor_from_vec(ordered, (tokens, tokens))
                .broadcast_like::<_, Axes2<0, 1>>(&(batch, heads, tokens, tokens));
            position = position * keep;
        }
        let mask = if self.is_decoder {
            causal_bias(&dev, batch, heads, tokens, tokens, 0)
        } else {
            match mask {
                Some(keep) => padding_bias(&dev, keep, batch, heads, tokens, tokens),
                None => dev.zeros_like(&(batch, heads, tokens, tokens)),
            }
        };
        let n = self.block.len();
        let biases = fan_out(position + mask, n);
        let cross: Vec<Option<CrossInput<P, D, T>>> = match cross {
            Some((enc, keep)) => {
                let keys = enc.shape().1;
                let bias = padding_bias(&dev, keep, batch, heads, tokens, keys);
                fan_out(enc, n)
                    .into_iter()
                    .map(|e| Some((e, bias.clone())))
                    .collect()
            }
            None => (0..n).map(|_| None).collect(),
        };
        let mut x = x;
        for ((block, bias), cross) in self.block.iter().zip(biases).zip(cross) {
            x = block.forward(x, bias, cross);
        }
        self.final_layer_norm.forward(x)
    }
}

impl<P: T5Dims, D: Device<f32>> Params<D> for T5Stack<P, D> {
    fn visit_params(
        &mut self,
        prefix: &str,
        v: &mut dyn ParamVisitor<D>,
    ) -> pixel_core::Result<()> {
        self.block.visit_params(&join(prefix, "block"), v)?;
        self.final_layer_norm
            .visit_params(&join(prefix, "final_layer_norm"), v)
    }
}

/// `T5ForConditionalGeneration` with compile-time channel dims `P` and run-time `config`.
#[derive(Debug, Clone)]
pub struct T5<P: T5Dims, D: Device<f32>> {
    pub config: T5Config,
    pub shared: Embedding<P::Vocab, P::Model, D>,
    pub encoder: T5Stack<P, D>,
    pub decoder: T5Stack<P, D>,
    /// `None` when tied to `shared` (T5 v1.0).
    pub lm_head: Option<Linear<P::Model, P::Vocab, D>>,
    /// Host copies of the decoder weights for generation, made on first use; cleared by every
    /// mutable parameter access (see [`crate::host_weights::HostWeightsCache`]).
    pub host_weights: crate::host_weights::HostWeightsCache,
}

impl<P: T5Dims, D: Device<f32>> T5<P, D> {
    /// A randomly initialised model; fails when `config`'s dims are not `P`'s.
    pub fn new(dev: &D, config: &T5Config) -> Result<Self> {
        crate::dims::check_dims::<P>(config).map_err(LmError::Invalid)?;
        config.validate().map_err(LmError::Invalid)?;
        Ok(T5 {
            config: config.clone(),
            shared: Embedding::new(dev),
            encoder: T5Stack::new(dev, config, false)?,
            decoder: T5Stack::new(dev, config, true)?,
            lm_head: (!config.tie_word_embeddings).then(|| Linear::new(dev, false)),
            host_weights: Default::default(),
        })
    }

    pub fn device(&self) -> D {
        self.shared.weight.device().clone()
    }

    /// Looks up token ids `[batch, tokens]` in `shared`.
    pub fn embed_tokens<T: Tape<f32, D>>(&self, ids: Ids<D>) -> Seq<P::Model, D, T> {
        self.shared.forward(ids)
    }

    /// Token ids from host values, `ids.len() == batch * tokens`.
    pub fn ids(&self, ids: &[usize], batch: usize) -> Ids<D> {
        let tokens = ids.len().checked_div(batch).unwrap_or(0);
        assert_eq!(
            batch * tokens,
            ids.len(),
            "{} ids do not split into {batch} rows",
            ids.len()
        );
        self.device().tensor_from_vec(ids.to_vec(), (batch, tokens))
    }

    /// The encoder on precomputed input embeddings (PixelLLM: visual tokens then the embedded
    /// prompt). `attention_mask` is `[batch * tokens]`, true for real tokens.
    pub fn encode_embeds<T>(
        &self,
        inputs_embeds: Seq<P::Model, D, T>,
        attention_mask: &[bool],
    ) -> Seq<P::Model, D, T>
    where
        T: Tape<f32, D> + Merge<T> + Merge<NoneTape>,
    {
        self.encoder
            .forward(inputs_embeds, Some(attention_mask), None)
    }

    /// [`Self::encode_embeds`] where the first `prefix` inputs take no relative position bias
    /// ([`T5Stack::forward_with_unordered_prefix`]).
    pub fn encode_embeds_with_unordered_prefix<T>(
        &self,
        inputs_embeds: Seq<P::Model, D, T>,
        attention_mask: &[bool],
        prefix: usize,
    ) -> Seq<P::Model, D, T>
    where
        T: Tape<f32, D> + Merge<T> + Merge<NoneTape>,
    {
        self.encoder.forward_with_unordered_prefix(
            inputs_embeds,
            Some(attention_mask),
            None,
            prefix,
        )
    }

    /// The encoder on token ids.
    pub fn encode<T>(&self, input_ids: Ids<D>, attention_mask: &[bool]) -> Seq<P::Model, D, T>
    where
        T: Tape<f32, D> + Merge<T> + Merge<NoneTape>,
    {
        self.encode_embeds(self.embed_tokens::<T>(input_ids), attention_mask)
    }

    /// The decoder with teacher forcing over the whole `[batch, steps]` input (causal): the final
    /// hidden state (after `final_layer_norm`, before the LM head), `[batch, steps, d_model]`.
    pub fn decode<T>(
        &self,
        decoder_input_ids: Ids<D>,
        encoder_hidden: Seq<P::Model, D, T>,
        encoder_mask: &[bool],
    ) -> Seq<P::Model, D, T>
    where
        T: Tape<f32, D> + Merge<T> + Merge<NoneTape>,
    {
        let x = self.embed_tokens::<T>(decoder_input_ids);
        self.decoder
            .forward(x, None, Some((encoder_hidden, encoder_mask)))
    }

    /// The LM head on decoder hidden states: `lm_head`, or for tied models `shared` after
    /// scaling by `d_model^-0.5`.
    pub fn lm_logits<T: Tape<f32, D>>(&self, hidden: Seq<P::Model, D, T>) -> Seq<P::Vocab, D, T> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let scale = (P::Model::SIZE as f32).powf(-0.5);
                (hidden * scale).matmul(
                    self.shared
                        .weight
                        .clone()
                        .permute::<(P::Model, P::Vocab), Axes2<1, 0>>(),
                )
            }
        }
    }

    /// Attaches fresh LoRA adapters (B = 0) to `q` and `v` of every self- and cross-attention
    /// of encoder and decoder.
    pub fn add_lora(&mut self, dev: &D, rank: usize, scale: f32) {
        self.host_weights.clear();
        for block in self
            .encoder
            .block
            .iter_mut()
            .chain(self.decoder.block.iter_mut())
        {
            let mut attns = vec![&mut block.self_attention];
            if let Some((cross, _)) = &mut block.cross_attention {
                attns.push(cross);
            }
            for attn in attns {
                attn.q.add_lora(dev, rank, scale);
                attn.v.add_lora(dev, rank, scale);
            }
        }
    }

    /// Rank and scale of the LoRA adapters, if any.
    pub fn lora(&self) -> Option<(usize, f32)> {
        let lora = self.encoder.block.first()?.self_attention.q.lora.as_ref()?;
        Some((lora.rank(), lora.scale))
    }
}

impl<P: T5Dims, D: Device<f32>> Params<D> for T5<P, D> {
    /// Also clears the host copies of the weights, since the visitor may change them.
    fn visit_params(
        &mut self,
        prefix: &str,
        v: &mut dyn ParamVisitor<D>,
    ) -> pixel_core::Result<()> {
        self.host_weights.clear();
        self.shared.visit_params(&join(prefix, "shared"), v)?;
        self.encoder.visit_params(&join(prefix, "encoder"), v)?;
        self.decoder.visit_params(&join(prefix, "decoder"), v)?;
        self.lm_head.visit_params(&join(prefix, "lm_head"), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HF's formula, written out with f64 logs, for comparison away from boundaries.
    #[test]
    fn buckets_follow_the_t5_layout() {
        // Bidirectional, 32 buckets: 0..8 exact for keys before, 16..24 for keys after.
        assert_eq!(relative_position_bucket(0, true, 32, 128), 0);
        assert_eq!(relative_position_bucket(-3, true, 32, 128), 3);
        assert_eq!(relative_position_bucket(3, true, 32, 128), 19);
        assert_eq!(relative_position_bucket(-1000, true, 32, 128), 15);
        assert_eq!(relative_position_bucket(1000, true, 32, 128), 31);
        // Causal: the future is bucket 0, the past uses all 32 buckets.
        assert_eq!(relative_position_bucket(5, false, 32, 128), 0);
        assert_eq!(relative_position_bucket(-5, false, 32, 128), 5);
        assert_eq!(relative_position_bucket(-1000, false, 32, 128), 31);
    }
}
