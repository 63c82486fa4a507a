//! SAM's image encoder (segment-anything `ImageEncoderViT`, HF `SamVisionEncoder`): patch
//! embedding, absolute position embedding, ViT blocks with windowed or global attention and
//! decomposed relative positions, and the neck down to the prompt/decoder width.
use crate::conv::{Conv2d, FeatureMap, Images};
use crate::error::VisionResult;
use crate::layers::{
    from_heads, realize, slice_channels, to_heads, Dense, Heads, MlpBlock, Norm, Tokens,
};
use crate::resize::{resize_map, ResizeKernel};
use crate::sam::config::SamVisionConfig;
use dfdx::prelude::*;
use pixel_core::nn::fused_attention::{fused_attention, AttentionShape, DecomposedBias};
use pixel_core::nn::{attention_with_bias, Activation};
use pixel_core::params::{join, ParamVisitor, Params};
use pixel_core::Result;

/// The relative coordinate index table of `get_rel_pos`: entry `[i, j]` indexes the
/// `2 * max(q, k) - 1` long (resized) table for query `i` and key `j`.
pub fn rel_pos_index(q_size: usize, k_size: usize) -> Vec<usize> {
    // In f32, as PyTorch computes it, so truncation agrees at integer boundaries.
    let q_scale = (k_size as f64 / q_size as f64).max(1.0);
    let k_scale = (q_size as f64 / k_size as f64).max(1.0);
    let offset = ((k_size as f64 - 1.0) * k_scale) as f32;
    let mut out = Vec::with_capacity(q_size * k_size);
    for i in 0..q_size {
        for j in 0..k_size {
            let rel = (i as f32 * q_scale as f32 - j as f32 * k_scale as f32) + offset;
            out.push(rel as usize);
        }
    }
    out
}

/// Weights `[target, len]` of PyTorch's 1D linear interpolation (`align_corners=False`), as
/// `get_rel_pos` resizes a relative position table that does not fit the input size.
pub fn linear_resize_matrix(len: usize, target: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; target * len];
    let scale = len as f64 / target as f64;
    for i in 0..target {
        let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(len - 1);
        let i1 = (i0 + 1).min(len - 1);
        let lambda = (src - i0 as f64) as f32;
        m[i * len + i0] += 1.0 - lambda;
        m[i * len + i1] += lambda;
    }
    m
}

/// `get_rel_pos`: the `[q_size, k_size, head_dim]` relative position embeddings from a learned
/// `[L, head_dim]` table, linearly resized to `2 * max(q, k) - 1` rows when `L` differs.
pub fn get_rel_pos<D: Device<f32>, T: Tape<f32, D>>(
    q_size: usize,
    k_size: usize,
    table: &Tensor<(usize, usize), f32, D>,
) -> Tensor<(usize, usize, usize), f32, D, T> {
    let dev = table.device().clone();
    let (len, dim) = *table.shape();
    let target = 2 * q_size.max(k_size) - 1;
    let resized: Tensor<(usize, usize), f32, D, T> = if len == target {
        table.retaped::<T>()
    } else {
        let m: Tensor<(usize, usize), f32, D> =
            dev.tensor_from_vec(linear_resize_matrix(len, target), (target, len));
        // (m @ table) computed as (table^T @ m^T)^T so the tape stays on the left.
        table
            .retaped::<T>()
            .permute::<_, Axes2<1, 0>>()
            .matmul(m.permute::<_, Axes2<1, 0>>())
            .permute::<_, Axes2<1, 0>>()
    };
    let idx = dev.tensor_from_vec(rel_pos_index(q_size, k_size), (q_size, k_size));
    let out: Tensor<(usize, usize, usize), f32, D, T> = resized.gather(idx);
    debug_assert_eq!(out.shape().2, dim);
    out
}

/// The two terms of `add_decomposed_rel_pos` from the unscaled queries `q`
/// `[B, heads, q_h*q_w, head_dim]`: `rel_h` `[B*heads, q_h, q_w, k_h]` and `rel_w`
/// `[B*heads, q_h, q_w, k_w]`; key `(ky, kx)` of a query gets `rel_h[.., ky] + rel_w[.., kx]`.
pub fn decomposed_rel_pos_terms<D: Device<f32>, T: Tape<f32, D>>(
    q: Heads<D, T>,
    rel_pos_h: &Tensor<(usize, usize), f32, D>,
    rel_pos_w: &Tensor<(usize, usize), f32, D>,
    (qh, qw): (usize, usize),
    (kh, kw): (usize, usize),
) -> RelPosTerms<D, T> {
    let (b, heads, n, hd) = *q.shape();
    assert_eq!(n, qh * qw, "{n} queries do not form a {qh}x{qw} grid");
    let bh = b * heads;
    let rh = get_rel_pos::<D, T>(qh, kh, rel_pos_h); // [qh, kh, hd]
    let rw = get_rel_pos::<D, T>(qw, kw, rel_pos_w); // [qw, kw, hd]
    let r_q = q.reshape_like(&(bh, qh, qw, hd));
    // rel_h[b, y, x, ky] = sum_c q[b, y, x, c] * rh[y, ky, c]
    let rel_h = r_q
        .retaped::<T>()
        .permute::<_, Axes4<1, 0, 2, 3>>()
        .reshape_like(&(qh, bh * qw, hd))
        .matmul(rh.permute::<_, Axes3<0, 2, 1>>())
        .reshape_like(&(qh, bh, qw, kh))
        .permute::<_, Axes4<1, 0, 2, 3>>();
    // rel_w[b, y, x, kx] = sum_c q[b, y, x, c] * rw[x, kx, c]
    let rel_w = r_q
        .permute::<_, Axes4<2, 0, 1, 3>>()
        .reshape_like(&(qw, bh * qh, hd))
        .matmul(rw.permute::<_, Axes3<0, 2, 1>>())
        .reshape_like(&(qw, bh, qh, kw))
        .permute::<_, Axes4<1, 2, 0, 3>>();
    (rel_h, rel_w)
}

/// `rel_h` and `rel_w` of [`decomposed_rel_pos_terms`].
pub type RelPosTerms<D, T> = (
    Tensor<(usize, usize, usize, usize), f32, D, T>,
    Tensor<(usize, usize, usize, usize), f32, D, T>,
);

/// `add_decomposed_rel_pos` as an additive attention bias `[B, heads, q_h*q_w, k_h*k_w]`
/// from the unscaled queries `q` `[B, heads, q_h*q_w, head_dim]`.
pub fn decomposed_rel_pos_bias<D: Device<f32>, T: Tape<f32, D>>(
    q: Heads<D, T>,
    rel_pos_h: &Tensor<(usize, usize), f32, D>,
    rel_pos_w: &Tensor<(usize, usize), f32, D>,
    (qh, qw): (usize, usize),
    (kh, kw): (usize, usize),
) -> Heads<D, T> {
    let (b, heads, n, _) = *q.shape();
    let (rel_h, rel_w) = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, (qh, qw), (kh, kw));
    let full = (b * heads, qh, qw, kh, kw);
    let bias =
        rel_h.broadcast_like::<_, Axis<4>>(&full) + rel_w.broadcast_like::<_, Axis<3>>(&full);
    bias.reshape_like(&(b, heads, n, kh * kw))
}

/// Splits `[B, H, W, C]` into non-overlapping `ws x ws` windows `[B * nh * nw, ws*ws, C]`,
/// zero-padding bottom/right to a multiple of `ws` (segment-anything's `window_partition`).
/// Returns the windows and the padded grid size.
pub fn window_partition<C: Dim, D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor<(usize, usize, usize, C), f32, D, T>,
    ws: usize,
) -> (Tokens<C, D, T>, (usize, usize)) {
    let (b, h, w, c) = *x.shape();
    let (ph, pw) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
    let (hp, wp) = (h + ph, w + pw);
    let dev = x.device().clone();
    let mut x: Tensor<(usize, usize, usize, C), f32, D, T> = x;
    if ph > 0 {
        let zeros: Tensor<(usize, usize, usize, C), f32, D> = dev.zeros_like(&(b, ph, w, c));
        x = realize((x, zeros).concat_along(Axis::<1>));
    }
    if pw > 0 {
        let zeros: Tensor<(usize, usize, usize, C), f32, D> = dev.zeros_like(&(b, hp, pw, c));
        x = realize((x, zeros).concat_along(Axis::<2>));
    }
    let windows = x
        .reshape_like(&(b, hp / ws, ws, wp / ws, ws, c))
        .permute::<_, Axes6<0, 1, 3, 2, 4, 5>>()
        .reshape_like(&(b * (hp / ws) * (wp / ws), ws * ws, c));
    (windows, (hp, wp))
}

/// Inverse of [`window_partition`]: windows back to `[B, H, W, C]`, padding removed.
pub fn window_unpartition<C: Dim, D: Device<f32>, T: Tape<f32, D>>(
    windows: Tokens<C, D, T>,
    ws: usize,
    (hp, wp): (usize, usize),
    (h, w): (usize, usize),
) -> Tensor<(usize, usize, usize, C), f32, D, T> {
    let (nwin, _, c) = *windows.shape();
    let b = nwin / ((hp / ws) * (wp / ws));
    let x = windows
        .reshape_like(&(b, hp / ws, wp / ws, ws, ws, c))
        .permute::<_, Axes6<0, 1, 3, 2, 4, 5>>()
        .reshape_like(&(b, hp, wp, c));
    if hp > h || wp > w {
        x.slice((.., 0..h, 0..w, ..))
    } else {
        x
    }
}

/// Multi-head attention with a fused `qkv` projection and optional decomposed relative
/// position embeddings (`rel_pos_h`, `rel_pos_w`, `[2 * size - 1, head_dim]`).
#[derive(Debug, Clone)]
pub struct SamVisionAttention<C: ConstDim, D: Device<f32>> {
    pub qkv: Dense<C, usize, D>,
    pub proj: Dense<C, C, D>,
    pub rel_pos_h: Option<Tensor<(usize, usize), f32, D>>,
    pub rel_pos_w: Option<Tensor<(usize, usize), f32, D>>,
    pub heads: usize,
}

impl<C: ConstDim, D: Device<f32>> SamVisionAttention<C, D> {
    /// `input_size` is the grid the relative tables are made for (window or full grid).
    pub fn new(dev: &D, heads: usize, qkv_bias: bool, rel_pos: Option<(usize, usize)>) -> Self {
        let hd = C::SIZE / heads;
        SamVisionAttention {
            qkv: Dense::new(dev, C::default(), 3 * C::SIZE, qkv_bias),
            proj: Dense::new(dev, C::default(), C::default(), true),
            rel_pos_h: rel_pos.map(|(h, _)| dev.zeros_like(&(2 * h - 1, hd))),
            rel_pos_w: rel_pos.map(|(_, w)| dev.zeros_like(&(2 * w - 1, hd))),
            heads,
        }
    }

    /// `x`: `[B, h*w, C]` tokens of an `h x w` grid (a window or the whole map).
    pub fn forward<T: Tape<f32, D>>(
        &self,
        x: Tokens<C, D, T>,
        (h, w): (usize, usize),
    ) -> Tokens<C, D, T> {
        let c = C::SIZE;
        let qkv = self.qkv.forward(x);
        let q = to_heads(slice_channels(qkv.retaped::<T>(), 0..c), self.heads);
        let k = to_heads(slice_channels(qkv.retaped::<T>(), c..2 * c), self.heads);
        let v = to_heads(slice_channels(qkv, 2 * c..3 * c), self.heads);
        let scale = 1.0 / ((c / self.heads) as f32).sqrt();
        let (b, heads, n, hd) = *q.shape();
        if !T::OWNS_TAPE && !pixel_core::nn::recording::is_recording() {
            // Without a tape (inference, a frozen SAM) the fused kernel computes the same
            // attention block by block, never holding the [B, heads, n, n] scores.
            let terms = match (&self.rel_pos_h, &self.rel_pos_w) {
                (Some(rh), Some(rw)) => {
                    let (rel_h, rel_w) =
                        decomposed_rel_pos_terms(q.retaped::<T>(), rh, rw, (h, w), (h, w));
                    Some((rel_h.as_vec(), rel_w.as_vec()))
                }
                _ => None,
            };
            let bias = terms.as_ref().map(|(rel_h, rel_w)| DecomposedBias {
                rel_h,
                rel_w,
                kh: h,
                kw: w,
            });
            let shape = AttentionShape {
                groups: b * heads,
                queries: n,
                keys: n,
                head_dim: hd,
            };
            let out = fused_attention(&q.as_vec(), &k.as_vec(), &v.as_vec(), shape, scale, bias);
            let out: Heads<D, T> = q
                .device()
                .tensor_from_vec(out, (b, heads, n, hd))
                .retaped::<T>();
            return self.proj.forward(from_heads(out, C::default()));
        }
        let bias: Heads<D, T> = match (&self.rel_pos_h, &self.rel_pos_w) {
            (Some(rh), Some(rw)) => {
                decomposed_rel_pos_bias(q.retaped::<T>(), rh, rw, (h, w), (h, w))
            }
            _ => q.device().zeros_like(&(b, heads, n, n)).retaped::<T>(),
        };
        let out = attention_with_bias(q, k, v, bias, scale);
        self.proj.forward(from_heads(out, C::default()))
    }
}

impl<C: ConstDim, D: Device<f32>> Params<D> for SamVisionAttention<C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.rel_pos_h.visit_params(&join(prefix, "rel_pos_h"), v)?;
        self.rel_pos_w.visit_params(&join(prefix, "rel_pos_w"), v)?;
        self.qkv.visit_params(&join(prefix, "qkv"), v)?;
        self.proj.visit_params(&join(prefix, "proj"), v)
    }
}

/// One ViT block: `x + attn(norm1(x))` (windowed when `window_size > 0`), `x + mlp(norm2(x))`.
#[derive(Debug, Clone)]
pub struct SamVisionLayer<C: ConstDim, D: Device<f32>> {
    pub layer_norm1: Norm<C, D>,
    pub attn: SamVisionAttention<C, D>,
    pub layer_norm2: Norm<C, D>,
    pub mlp: MlpBlock<C, D>,
    pub window_size: usize,
}

impl<C: ConstDim, D: Device<f32>> SamVisionLayer<C, D> {
    pub fn forward<T: Tape<f32, D>>(
        &self,
        x: Tokens<C, D, T>,
        (h, w): (usize, usize),
    ) -> Tokens<C, D, T> {
        let b = x.shape().0;
        let normed = self.layer_norm1.forward(x.retaped::<T>());
        let attended = if self.window_size > 0 {
            let ws = self.window_size;
            let grid = normed.reshape_like(&(b, h, w, C::default()));
            let (windows, padded) = window_partition(grid, ws);
            let out = self.attn.forward(windows, (ws, ws));
            window_unpartition(out, ws, padded, (h, w)).reshape_like(&(b, h * w, C::default()))
        } else {
            self.attn.forward(normed, (h, w))
        };
        let x = x + attended;
        let out = self.mlp.forward(self.layer_norm2.forward(x.retaped::<T>()));
        x + out
    }
}

impl<C: ConstDim, D: Device<f32>> Params<D> for SamVisionLayer<C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.layer_norm1
            .visit_params(&join(prefix, "layer_norm1"), v)?;
        self.attn.visit_params(&join(prefix, "attn"), v)?;
        self.layer_norm2
            .visit_params(&join(prefix, "layer_norm2"), v)?;
        self.mlp.visit_params(&join(prefix, "mlp"), v)
    }
}

/// The neck: 1x1 conv (no bias), LayerNorm2d, 3x3 conv pad 1 (no bias), LayerNorm2d.
#[derive(Debug, Clone)]
pub struct SamNeck<C: ConstDim, O: ConstDim, D: Device<f32>> {
    pub conv1: Conv2d<C, O, D>,
    pub layer_norm1: Norm<O, D>,
    pub conv2: Conv2d<O, O, D>,
    pub layer_norm2: Norm<O, D>,
}

impl<C: ConstDim, O: ConstDim, D: Device<f32>> SamNeck<C, O, D> {
    pub fn new(dev: &D, eps: f64) -> Self {
        SamNeck {
            conv1: Conv2d::new(dev, C::default(), O::default(), 1, 1, 0, false),
            layer_norm1: Norm::new(dev, O::default(), eps),
            conv2: Conv2d::new(dev, O::default(), O::default(), 3, 1, 1, false),
            layer_norm2: Norm::new(dev, O::default(), eps),
        }
    }

    pub fn forward<T: Tape<f32, D>>(&self, x: FeatureMap<C, D, T>) -> FeatureMap<O, D, T> {
        let x = self.conv1.forward(x).map(|t| self.layer_norm1.forward(t));
        self.conv2.forward(x).map(|t| self.layer_norm2.forward(t))
    }
}

impl<C: ConstDim, O: ConstDim, D: Device<f32>> Params<D> for SamNeck<C, O, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.conv1.visit_params(&join(prefix, "conv1"), v)?;
        self.layer_norm1
            .visit_params(&join(prefix, "layer_norm1"), v)?;
        self.conv2.visit_params(&join(prefix, "conv2"), v)?;
        self.layer_norm2
            .visit_params(&join(prefix, "layer_norm2"), v)
    }
}

/// SAM's ViT image encoder with width `C` and output (neck) width `O`.
#[derive(Debug, Clone)]
#[allow(clippy::type_complexity)]
pub struct SamImageEncoder<C: ConstDim, O: ConstDim, D: Device<f32>> {
    pub patch_embed: Conv2d<usize, C, D>,
    /// `[1, grid, grid, C]`.
    pub pos_embed: Option<Tensor<(usize, usize, usize, C), f32, D>>,
    pub layers: Vec<SamVisionLayer<C, D>>,
    pub neck: SamNeck<C, O, D>,
    pub config: SamVisionConfig,
}

impl<C: ConstDim, O: ConstDim, D: Device<f32>> SamImageEncoder<C, O, D> {
    pub fn new(dev: &D, config: &SamVisionConfig) -> VisionResult<Self> {
        config.check_dims(C::SIZE, O::SIZE)?;
        let grid = config.image_size / config.patch_size;
        let eps = config.layer_norm_eps;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let global = config.global_attn_indexes.contains(&i);
                let window_size = if global { 0 } else { config.window_size };
                let input = if window_size == 0 {
                    (grid, grid)
                } else {
                    (window_size, window_size)
                };
                SamVisionLayer {
                    layer_norm1: Norm::new(dev, C::default(), eps),
                    attn: SamVisionAttention::new(
                        dev,
                        config.num_attention_heads,
                        config.qkv_bias,
                        config.use_rel_pos.then_some(input),
                    ),
                    layer_norm2: Norm::new(dev, C::default(), eps),
                    mlp: MlpBlock::new(dev, C::default(), config.mlp_dim(), Activation::Gelu),
                    window_size,
                }
            })
            .collect();
        Ok(SamImageEncoder {
            patch_embed: Conv2d::new(
                dev,
                config.num_channels,
                C::default(),
                config.patch_size,
                config.patch_size,
                0,
                true,
            ),
            pos_embed: config
                .use_abs_pos
                .then(|| dev.zeros_like(&(1, grid, grid, C::default()))),
            layers,
            neck: SamNeck::new(dev, eps),
            config: config.clone(),
        })
    }

    /// The token grid for an input of `height x width` pixels.
    pub fn grid(&self, height: usize, width: usize) -> (usize, usize) {
        (
            height / self.config.patch_size,
            width / self.config.patch_size,
        )
    }

    /// `pixel_values` `[B, 3, H, W]` (normalized, padded) -> image embeddings `[B, h*w, O]`
    /// (HF `get_image_embeddings`, as tokens; [`FeatureMap::to_nchw`] gives HF's layout).
    ///
    /// Inputs of another size than the config's work: the absolute position embedding is
    /// resized bicubically and the global blocks' relative tables linearly (as `get_rel_pos`).
    pub fn forward<T: Tape<f32, D>>(&self, images: Images<D, T>) -> FeatureMap<O, D, T> {
        let x = self.embed(images);
        let (h, w, b) = (x.height, x.width, x.batch());
        let mut tokens = x.tokens;
        for layer in &self.layers {
            tokens = layer.forward(tokens, (h, w));
        }
        debug_assert_eq!(tokens.shape().0, b);
        self.neck.forward(FeatureMap::new(tokens, h, w))
    }

    /// The tokens the first block takes: the patch embeddings plus the absolute position
    /// embedding (resized bicubically for another grid than the config's).
    pub fn embed<T: Tape<f32, D>>(&self, images: Images<D, T>) -> FeatureMap<C, D, T> {
        let x = self.patch_embed.forward_images(images);
        let (h, w) = (x.height, x.width);
        let mut tokens = x.tokens;
        if let Some(pos) = &self.pos_embed {
            let (_, ph, pw, _) = *pos.shape();
            // On the tape, so a resized table still trains.
            let pos: Tokens<C, D, T> = pos.retaped::<T>().reshape_like(&(1, ph * pw, C::default()));
            let pos = if (ph, pw) == (h, w) {
                pos
            } else {
                resize_map(FeatureMap::new(pos, ph, pw), h, w, ResizeKernel::Bicubic).tokens
            };
            let shape = *tokens.shape();
            tokens = tokens
                + pos
                    .reshape_like(&(h * w, C::default()))
                    .broadcast_like::<_, Axis<0>>(&shape);
        }
        FeatureMap::new(tokens, h, w)
    }
}

impl<C: ConstDim, O: ConstDim, D: Device<f32>> Params<D> for SamImageEncoder<C, O, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.pos_embed.visit_params(&join(prefix, "pos_embed"), v)?;
        self.patch_embed
            .visit_params(&join(prefix, "patch_embed.projection"), v)?;
        self.layers.visit_params(&join(prefix, "layers"), v)?;
        self.neck.visit_params(&join(prefix, "neck"), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        /// Without a tape the attention runs the fused kernel; with one, dfdx's ops (which a
        /// recording also forces): the same values, with and without relative positions.
        #[test]
        fn the_fused_no_tape_attention_equals_the_taped_one(
            seed in 0u64..1000, h in 1usize..7, w in 1usize..7, rel_pos: bool,
        ) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let mut attention =
                SamVisionAttention::<Const<8>, Cpu>::new(&dev, 2, true, rel_pos.then_some((h, w)));
            if rel_pos {
                attention.rel_pos_h = Some(dev.sample_normal_like(&(2 * h - 1, 4)));
                attention.rel_pos_w = Some(dev.sample_normal_like(&(2 * w - 1, 4)));
            }
            let x: Tokens<Const<8>, Cpu> = dev.sample_normal_like(&(2, h * w, Const));
            let fused = attention.forward(x.clone(), (h, w)).as_vec();
            let taped = attention
                .forward(x.clone().traced(Gradients::leaky()), (h, w))
                .retaped::<NoneTape>()
                .as_vec();
            let (recorded, maps) =
                pixel_core::nn::record_attention(|| attention.forward(x, (h, w)).as_vec());
            prop_assert_eq!(maps.len(), 1);
            for ((f, t), r) in fused.iter().zip(&taped).zip(&recorded) {
                prop_assert!((f - t).abs() <= 1e-5 * (1.0 + t.abs()), "{} vs {}", f, t);
                prop_assert_eq!(t, r);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn window_partition_then_unpartition_is_identity(seed in 0u64..1000, h in 1usize..9, w in 1usize..9, ws in 1usize..5) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let x: Tensor<(usize, usize, usize, Const<3>), f32, Cpu> = dev.sample_normal_like(&(2, h, w, Const));
            let (windows, padded) = window_partition(x.clone(), ws);
            prop_assert_eq!(windows.shape().1, ws * ws);
            let back = window_unpartition(windows, ws, padded, (h, w));
            prop_assert_eq!(back.as_vec(), x.as_vec());
        }

        #[test]
        fn rel_pos_tables_exist_for_any_input_size(q in 1usize..20, k in 1usize..20, len in 1usize..30) {
            let dev: Cpu = Cpu::seed_from_u64(0);
            let table: Tensor<(usize, usize), f32, Cpu> = dev.sample_normal_like(&(len, 4));
            let out = get_rel_pos::<Cpu, NoneTape>(q, k, &table);
            prop_assert_eq!(out.shape(), &(q, k, 4));
            let idx = rel_pos_index(q, k);
            prop_assert!(idx.iter().all(|&i| i < 2 * q.max(k) - 1));
            prop_assert!(out.as_vec().iter().all(|v| v.is_finite()));
        }

        #[test]
        fn linear_resize_rows_sum_to_one(len in 1usize..20, target in 1usize..40) {
            let m = linear_resize_matrix(len, target);
            for row in m.chunks(len) {
                prop_assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn encoder_runs_at_other_sizes_and_trains_patch_and_position_tables() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let config = crate::sam::SamConfig::test().vision_config;
        let enc = SamImageEncoder::<Const<64>, Const<32>, Cpu>::new(&dev, &config).unwrap();
        // 96 px instead of 128: a 6x6 grid, resized absolute and relative positions.
        let images: Images<Cpu> = dev.sample_normal_like(&(1, 3, 96, 96));
        let out = enc.forward(images.retaped::<OwnedTape<f32, Cpu>>());
        assert_eq!((out.height, out.width), (6, 6));
        let grads = out.tokens.square().sum().backward();
        for t in [
            &enc.layers[1].attn.rel_pos_h.as_ref().unwrap().clone(),
            &enc.layers[0].attn.rel_pos_w.as_ref().unwrap().clone(),
        ] {
            assert!(grads.get(t).as_vec().iter().any(|g| *g != 0.0));
        }
        assert!(grads
            .get(&enc.patch_embed.weight)
            .as_vec()
            .iter()
            .any(|g| *g != 0.0));
        assert!(grads
            .get(enc.pos_embed.as_ref().unwrap())
            .as_vec()
            .iter()
            .any(|g| *g != 0.0));
        assert!(grads
            .get(&enc.neck.conv2.weight)
            .as_vec()
            .iter()
            .any(|g| *g != 0.0));
    }

    #[test]
    fn rel_pos_index_matches_the_reference_formula_for_equal_sizes() {
        // q == k: index = i - j + (k - 1).
        let idx = rel_pos_index(3, 3);
        assert_eq!(idx, vec![2, 1, 0, 3, 2, 1, 4, 3, 2]);
    }
}
