//! SAM's two-way transformer: prompt tokens and image tokens attend to each other.
//!
//! Used by the mask decoder and, unchanged, by PixelLLM's prompt feature extractor (scenic's
//! `PromptAdaptor`), which feeds it image tokens `[B, HW, C]`, their position encoding
//! `[1 or B, HW, C]` and query tokens `[B, N, C]` and reads back the updated queries.
use crate::layers::{expand_batch, from_heads, merge_tapes, to_heads, Dense, MlpBlock, Norm};
use dfdx::prelude::*;
use pixel_core::nn::{attention, Activation, Seq};
use pixel_core::params::{join, ParamVisitor, Params};
use pixel_core::Result;

/// SAM's `Attention`: `q_proj`, `k_proj`, `v_proj` down to an inner dim (`C / downsample`),
/// heads, `out_proj` back to `C`.
#[derive(Debug, Clone)]
pub struct DownsampledAttention<C: ConstDim, D: Device<f32>> {
    pub q_proj: Dense<C, usize, D>,
    pub k_proj: Dense<C, usize, D>,
    pub v_proj: Dense<C, usize, D>,
    pub out_proj: Dense<usize, C, D>,
    pub heads: usize,
}

impl<C: ConstDim, D: Device<f32>> DownsampledAttention<C, D> {
    pub fn new(dev: &D, heads: usize, downsample: usize) -> Self {
        assert!(
            downsample >= 1 && C::SIZE % downsample == 0,
            "{} channels cannot be downsampled by {downsample}",
            C::SIZE
        );
        let inner = C::SIZE / downsample;
        assert_eq!(
            inner % heads,
            0,
            "inner dim {inner} must divide into {heads} heads"
        );
        DownsampledAttention {
            q_proj: Dense::new(dev, C::default(), inner, true),
            k_proj: Dense::new(dev, C::default(), inner, true),
            v_proj: Dense::new(dev, C::default(), inner, true),
            out_proj: Dense::new(dev, inner, C::default(), true),
            heads,
        }
    }

    pub fn inner_dim(&self) -> usize {
        self.q_proj.out_dim()
    }

    pub fn forward<T: Tape<f32, D>>(
        &self,
        q: Seq<C, D, T>,
        k: Seq<C, D, T>,
        v: Seq<C, D, T>,
    ) -> Seq<C, D, T> {
        let inner = self.inner_dim();
        let q = to_heads(self.q_proj.forward(q), self.heads);
        let k = to_heads(self.k_proj.forward(k), self.heads);
        let v = to_heads(self.v_proj.forward(v), self.heads);
        let scale = 1.0 / ((inner / self.heads) as f32).sqrt();
        let out = attention(q, k, v, scale);
        self.out_proj.forward(from_heads(out, inner))
    }
}

impl<C: ConstDim, D: Device<f32>> Params<D> for DownsampledAttention<C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.q_proj.visit_params(&join(prefix, "q_proj"), v)?;
        self.k_proj.visit_params(&join(prefix, "k_proj"), v)?;
        self.v_proj.visit_params(&join(prefix, "v_proj"), v)?;
        self.out_proj.visit_params(&join(prefix, "out_proj"), v)
    }
}

/// One block: self-attention of the queries, queries -> image cross-attention, MLP on the
/// queries, image -> queries cross-attention (HF `SamTwoWayAttentionBlock`).
#[derive(Debug, Clone)]
pub struct TwoWayAttentionBlock<C: ConstDim, D: Device<f32>> {
    pub self_attn: DownsampledAttention<C, D>,
    pub layer_norm1: Norm<C, D>,
    pub cross_attn_token_to_image: DownsampledAttention<C, D>,
    pub layer_norm2: Norm<C, D>,
    pub mlp: MlpBlock<C, D>,
    pub layer_norm3: Norm<C, D>,
    pub layer_norm4: Norm<C, D>,
    pub cross_attn_image_to_token: DownsampledAttention<C, D>,
    /// The first block adds no position encoding to the queries' self-attention and replaces
    /// the queries by its output (no residual).
    pub skip_first_layer_pe: bool,
}

impl<C: ConstDim, D: Device<f32>> TwoWayAttentionBlock<C, D> {
    pub fn new(
        dev: &D,
        heads: usize,
        mlp_dim: usize,
        downsample: usize,
        eps: f64,
        skip_first_layer_pe: bool,
    ) -> Self {
        TwoWayAttentionBlock {
            self_attn: DownsampledAttention::new(dev, heads, 1),
            layer_norm1: Norm::new(dev, C::default(), eps),
            cross_attn_token_to_image: DownsampledAttention::new(dev, heads, downsample),
            layer_norm2: Norm::new(dev, C::default(), eps),
            mlp: MlpBlock::new(dev, C::default(), mlp_dim, Activation::Relu),
            layer_norm3: Norm::new(dev, C::default(), eps),
            layer_norm4: Norm::new(dev, C::default(), eps),
            cross_attn_image_to_token: DownsampledAttention::new(dev, heads, downsample),
            skip_first_layer_pe,
        }
    }

    /// `query_pe` is the original query tokens (a tape-free branch); `key_pe` is already
    /// expanded to the keys' batch.
    pub fn forward<T: Tape<f32, D>>(
        &self,
        queries: Seq<C, D, T>,
        keys: Seq<C, D, T>,
        query_pe: &Seq<C, D, T>,
        key_pe: &Seq<C, D>,
    ) -> (Seq<C, D, T>, Seq<C, D, T>) {
        let queries = if self.skip_first_layer_pe {
            self.self_attn
                .forward(queries.retaped::<T>(), queries.retaped::<T>(), queries)
        } else {
            let q = queries.retaped::<T>() + query_pe.retaped::<T>();
            let out = self
                .self_attn
                .forward(q.retaped::<T>(), q, queries.retaped::<T>());
            queries + out
        };
        let queries = self.layer_norm1.forward(queries);

        let q = queries.retaped::<T>() + query_pe.retaped::<T>();
        let k = keys.retaped::<T>() + key_pe.clone();
        let out = self
            .cross_attn_token_to_image
            .forward(q, k, keys.retaped::<T>());
        let queries = self.layer_norm2.forward(queries + out);

        let out = self.mlp.forward(queries.retaped::<T>());
        let queries = self.layer_norm3.forward(queries + out);

        let q = queries.retaped::<T>() + query_pe.retaped::<T>();
        let k = keys.retaped::<T>() + key_pe.clone();
        let out = self
            .cross_attn_image_to_token
            .forward(k, q, queries.retaped::<T>());
        let keys = self.layer_norm4.forward(keys + out);
        (queries, keys)
    }
}

impl<C: ConstDim, D: Device<f32>> Params<D> for TwoWayAttentionBlock<C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.self_attn.visit_params(&join(prefix, "self_attn"), v)?;
        self.layer_norm1
            .visit_params(&join(prefix, "layer_norm1"), v)?;
        self.cross_attn_token_to_image
            .visit_params(&join(prefix, "cross_attn_token_to_image"), v)?;
        self.layer_norm2
            .visit_params(&join(prefix, "layer_norm2"), v)?;
        self.mlp.visit_params(&join(prefix, "mlp"), v)?;
        self.layer_norm3
            .visit_params(&join(prefix, "layer_norm3"), v)?;
        self.layer_norm4
            .visit_params(&join(prefix, "layer_norm4"), v)?;
        self.cross_attn_image_to_token
            .visit_params(&join(prefix, "cross_attn_image_to_token"), v)
    }
}

/// SAM's `TwoWayTransformer` (HF names: `layers.N...`, `final_attn_token_to_image`,
/// `layer_norm_final_attn`). Generic over the token width `C`; depth, heads, MLP width and the
/// cross-attention downsample rate are run-time.
#[derive(Debug, Clone)]
pub struct TwoWayTransformer<C: ConstDim, D: Device<f32>> {
    pub layers: Vec<TwoWayAttentionBlock<C, D>>,
    pub final_attn_token_to_image: DownsampledAttention<C, D>,
    pub layer_norm_final_attn: Norm<C, D>,
}

impl<C: ConstDim, D: Device<f32>> TwoWayTransformer<C, D> {
    /// `eps` is the blocks' LayerNorm epsilon (HF 1e-6, segment-anything 1e-5); the final
    /// norm uses PyTorch's default 1e-5 in both references.
    pub fn new(
        dev: &D,
        depth: usize,
        heads: usize,
        mlp_dim: usize,
        downsample: usize,
        eps: f64,
    ) -> Self {
        TwoWayTransformer {
            layers: (0..depth)
                .map(|i| TwoWayAttentionBlock::new(dev, heads, mlp_dim, downsample, eps, i == 0))
                .collect(),
            final_attn_token_to_image: DownsampledAttention::new(dev, heads, downsample),
            layer_norm_final_attn: Norm::new(dev, C::default(), 1e-5),
        }
    }

    /// Runs the transformer.
    ///
    /// - `image_tokens`: `[B, HW, C]` (the keys),
    /// - `image_pe`: `[1 or B, HW, C]`, their position encoding (not trained),
    /// - `queries`: `[B, N, C]` prompt / query tokens, also used as their own position encoding.
    ///
    /// Returns the updated `(queries [B, N, C], image tokens [B, HW, C])`. Every recorded
    /// operation travels on the queries' tape, so a caller that reads only the queries still
    /// trains everything upstream of `image_tokens`.
    pub fn forward<T: Tape<f32, D>>(
        &self,
        image_tokens: Seq<C, D, T>,
        image_pe: &Seq<C, D>,
        queries: Seq<C, D, T>,
    ) -> (Seq<C, D, T>, Seq<C, D, T>) {
        let batch = image_tokens.shape().0;
        assert_eq!(
            queries.shape().0,
            batch,
            "queries and image tokens differ in batch size"
        );
        assert_eq!(
            image_pe.shape().1,
            image_tokens.shape().1,
            "position encoding and image tokens differ in length"
        );
        let key_pe = expand_batch(image_pe, batch);
        let query_pe = queries.retaped::<T>();
        let mut queries = queries;
        let mut keys = image_tokens;
        for layer in &self.layers {
            (queries, keys) = layer.forward(queries, keys, &query_pe, &key_pe);
        }
        let q = queries.retaped::<T>() + query_pe.retaped::<T>();
        let k = keys.retaped::<T>() + key_pe.clone();
        let out = self
            .final_attn_token_to_image
            .forward(q, k, keys.retaped::<T>());
        let queries = self.layer_norm_final_attn.forward(queries + out);
        let (queries, keys) = merge_tapes(queries, keys);
        (queries, keys)
    }
}

impl<C: ConstDim, D: Device<f32>> Params<D> for TwoWayTransformer<C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.layers.visit_params(&join(prefix, "layers"), v)?;
        self.final_attn_token_to_image
            .visit_params(&join(prefix, "final_attn_token_to_image"), v)?;
        self.layer_norm_final_attn
            .visit_params(&join(prefix, "layer_norm_final_attn"), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_core::params::{count_params, ParamTensor};

    type C = Const<16>;

    #[test]
    fn transformer_works_at_tiny_sizes_and_trains_everything() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let mut tr = TwoWayTransformer::<C, Cpu>::new(&dev, 2, 2, 32, 2, 1e-6);
        let image: Seq<C, Cpu> = dev.sample_normal_like(&(2, 12, C::default()));
        let pe: Seq<C, Cpu> = dev.sample_normal_like(&(1, 12, C::default()));
        let queries: Seq<C, Cpu> = dev.sample_normal_like(&(2, 3, C::default()));
        let (q, k) = tr.forward(image.leaky_trace(), &pe, queries.retaped());
        assert_eq!(q.shape().1, 3);
        assert_eq!(k.shape().1, 12);
        // Only the queries feed the loss; the image tokens still get gradients.
        let (q, _) = (q, k);
        let grads = q.square().sum().backward();
        assert!(grads.get(&image).as_vec().iter().any(|g| *g != 0.0));
        let w = &tr.layers[0].cross_attn_image_to_token.v_proj.weight;
        assert!(w.grad(&grads).iter().any(|g| *g != 0.0));
        // 2 blocks: 4 attentions of inner 16 + ... just check the count is stable.
        assert!(count_params(&mut tr) > 0);
    }

    #[test]
    fn batch_one_position_encoding_equals_an_expanded_one() {
        let dev: Cpu = Cpu::seed_from_u64(1);
        let tr = TwoWayTransformer::<C, Cpu>::new(&dev, 1, 2, 32, 2, 1e-6);
        let image: Seq<C, Cpu> = dev.sample_normal_like(&(2, 6, C::default()));
        let pe: Seq<C, Cpu> = dev.sample_normal_like(&(1, 6, C::default()));
        let queries: Seq<C, Cpu> = dev.sample_normal_like(&(2, 2, C::default()));
        let (a, _) = tr.forward(image.clone(), &pe, queries.clone());
        let pe2 = expand_batch(&pe, 2);
        let (b, _) = tr.forward(image, &pe2, queries);
        assert_eq!(a.as_vec(), b.as_vec());
    }
}
