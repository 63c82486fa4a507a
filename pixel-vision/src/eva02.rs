//! EVA02 ViT (Fang et al. 2023) as timm's `Eva` builds it for `eva02_*_patch14_*`: patch
//! embedding, class token, absolute position embedding, 2D RoPE on the patch tokens
//! (`RotaryEmbeddingCat`, interleaved pairs, `ref_feat_shape` rescaling), q/k/v with q and v
//! biases (fused `qkv` + `q_bias`/`v_bias` for tiny/small, separate `q_proj`/`k_proj`/`v_proj`
//! for base/large), a LayerNorm on the attention output before `proj` when `scale_attn_inner`
//! (`attn.norm`, the `eva02_*_clip_*` towers), SwiGLU (packed `fc1`, or `fc1_g`/`fc1_x` with the inner `norm` when
//! `scale_mlp`), and one final LayerNorm ([`FinalNorm`]): `fc_norm` (timm's default with
//! `global_pool='avg'`, applied after pooling, not in `forward_features`) or `norm` (token or no
//! pooling, as the CLIP towers: applied at the end of `forward_features`).
use crate::conv::{check_images, Conv2d, FeatureMap, Images};
use crate::error::{VisionError, VisionResult};
use crate::layers::{
    from_heads, slice_channels, slice_tokens, to_heads, Dense, Heads, Norm, Tokens,
};
use crate::resize::{resize_map, ResizeKernel};
use dfdx::prelude::*;
use pixel_core::checkpoint::{load_params, LoadOptions, TensorStore};
use pixel_core::nn::{attention, Seq};
use pixel_core::params::{join, ParamVisitor, Params};
use pixel_core::{CoreError, Result};
use serde::{Deserialize, Serialize};

/// Run-time configuration (timm's `Eva` arguments for EVA02).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Eva02Config {
    pub img_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// SwiGLU hidden width, `int(embed_dim * mlp_ratio)` with `mlp_ratio = 4 * 2 / 3`.
    pub mlp_hidden: usize,
    /// One `qkv` projection with `q_bias`/`v_bias` (tiny, small) or separate ones (base, large).
    pub qkv_fused: bool,
    /// SwiGLU with separate `fc1_g`/`fc1_x` and a LayerNorm before `fc2` (base, large).
    pub scale_mlp: bool,
    /// A LayerNorm (`attn.norm`) on the attention output before `proj` (timm's
    /// `scale_attn_inner`: the `eva02_*_clip_*` towers; false for the classifiers, and for
    /// configs written before it existed).
    pub scale_attn_inner: bool,
    /// The RoPE grid positions are rescaled so the feature grid maps onto this one.
    pub ref_feat_shape: usize,
    pub rope_temperature: f64,
    pub layer_norm_eps: f64,
    /// Which final LayerNorm the model has (timm's `use_fc_norm`): `"fc"` (`fc_norm`, the
    /// default) or `"features"` (`norm`, applied by `forward_features`).
    pub final_norm: FinalNorm,
    /// Classifier classes (0: no `head`).
    pub num_classes: usize,
}

/// The final LayerNorm of timm's `Eva`, which keeps one of `norm` and `fc_norm`: `use_fc_norm`
/// defaults to `global_pool == 'avg'`, and `norm` is there when `fc_norm` is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalNorm {
    /// `fc_norm`, applied by timm's `forward_head` after average pooling; `forward_features`
    /// ends with the last block (timm's default, `global_pool='avg'`: the classifiers).
    #[default]
    Fc,
    /// `norm`, applied at the end of `forward_features` (`global_pool='token'` or `''`, or
    /// `use_fc_norm=False`: the CLIP towers, feature extractors).
    Features,
}

impl FinalNorm {
    /// The timm state-dict name of this final norm's weight.
    pub fn weight_name(self) -> &'static str {
        match self {
            FinalNorm::Fc => "fc_norm.weight",
            FinalNorm::Features => "norm.weight",
        }
    }

    /// The final norm a timm `Eva` state dict has: `norm.weight` means [`FinalNorm::Features`],
    /// `fc_norm.weight` [`FinalNorm::Fc`]; both or neither is an error naming them.
    pub fn of_store(store: &TensorStore) -> VisionResult<Self> {
        let (fc, features) = (
            FinalNorm::Fc.weight_name(),
            FinalNorm::Features.weight_name(),
        );
        let problem = match (store.get(fc).is_some(), store.get(features).is_some()) {
            (true, false) => return Ok(FinalNorm::Fc),
            (false, true) => return Ok(FinalNorm::Features),
            (true, true) => format!(
                "it has both `{fc}` and `{features}`; an EVA02 here has one final norm (timm's \
                 `use_fc_norm` without `use_post_transformer_norm`): drop the one the model \
                 does not use"
            ),
            (false, false) => format!(
                "it has neither `{fc}` nor `{features}`, one of which an EVA02 here needs \
                 (timm's `Eva` without either norm, or not a timm `Eva` state dict?)"
            ),
        };
        Err(CoreError::CheckpointMismatch {
            path: store.origin.clone(),
            problems: vec![problem],
        }
        .into())
    }
}

impl Default for Eva02Config {
    fn default() -> Self {
        Eva02Config::sized(224, 192, 12, 3, true, false)
    }
}

impl Eva02Config {
    /// An EVA02 of the given image size and width with timm's defaults otherwise.
    pub fn sized(
        img_size: usize,
        embed_dim: usize,
        depth: usize,
        num_heads: usize,
        qkv_fused: bool,
        scale_mlp: bool,
    ) -> Self {
        Eva02Config {
            img_size,
            patch_size: 14,
            embed_dim,
            depth,
            num_heads,
            mlp_hidden: (embed_dim as f64 * (4.0 * 2.0 / 3.0)) as usize,
            qkv_fused,
            scale_mlp,
            scale_attn_inner: false,
            ref_feat_shape: 16,
            rope_temperature: 10000.0,
            layer_norm_eps: 1e-6,
            final_norm: FinalNorm::Fc,
            num_classes: 0,
        }
    }

    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    pub fn check(&self, dim: usize) -> VisionResult<()> {
        let problem = if self.embed_dim != dim {
            Some(format!(
                "embed_dim is {} but the model type has {dim}",
                self.embed_dim
            ))
        } else if !self.embed_dim.is_multiple_of(self.num_heads)
            || !self.head_dim().is_multiple_of(4)
        {
            Some(format!(
                "embed_dim {} must split into {} heads of a multiple of 4 (2D RoPE)",
                self.embed_dim, self.num_heads
            ))
        } else if self.patch_size == 0 || !self.img_size.is_multiple_of(self.patch_size) {
            Some(format!(
                "img_size {} is not a multiple of patch_size {}",
                self.img_size, self.patch_size
            ))
        } else {
            None
        };
        match problem {
            Some(p) => Err(VisionError::Config(format!("EVA02: {p}"))),
            None => Ok(()),
        }
    }
}

/// timm's `RotaryEmbeddingCat` (`in_pixels=False`) for an `h x w` grid: `(sin, cos)`, each
/// `[h*w, head_dim]` in the interleaved layout (`f0, f0, f1, f1, ...`; y bands then x bands).
pub fn rope_tables(
    h: usize,
    w: usize,
    head_dim: usize,
    ref_feat_shape: usize,
    temperature: f64,
) -> (Vec<f32>, Vec<f32>) {
    let bands_n = head_dim / 4;
    // timm computes bands and positions in float32.
    let bands: Vec<f32> = (0..bands_n)
        .map(|i| 1.0 / (temperature as f32).powf(i as f32 / bands_n as f32))
        .collect();
    let ty: Vec<f32> = (0..h)
        .map(|y| y as f32 / h as f32 * ref_feat_shape as f32)
        .collect();
    let tx: Vec<f32> = (0..w)
        .map(|x| x as f32 / w as f32 * ref_feat_shape as f32)
        .collect();
    let mut sin = Vec::with_capacity(h * w * head_dim);
    let mut cos = Vec::with_capacity(h * w * head_dim);
    for &py in &ty {
        for &px in &tx {
            for pos in [py, px] {
                for &b in &bands {
                    let angle = pos * b;
                    sin.extend([angle.sin(); 2]);
                    cos.extend([angle.cos(); 2]);
                }
            }
        }
    }
    (sin, cos)
}

/// The fixed matrix `R` with `x @ R = rot(x)`: pairs `(a, b) -> (-b, a)` (timm's `rot`).
fn rotation_matrix(dim: usize) -> Vec<f32> {
    let mut m = vec![0.0; dim * dim];
    for i in 0..dim / 2 {
        m[(2 * i + 1) * dim + 2 * i] = -1.0;
        m[(2 * i) * dim + 2 * i + 1] = 1.0;
    }
    m
}

/// 2D rotary position embedding for a grid, applied to patch tokens.
#[derive(Debug, Clone)]
pub struct Rope<D: Device<f32>> {
    /// `[h*w, head_dim]`.
    pub sin: Tensor<(usize, usize), f32, D>,
    pub cos: Tensor<(usize, usize), f32, D>,
    rot: Tensor<(usize, usize), f32, D>,
}

impl<D: Device<f32>> Rope<D> {
    pub fn new(
        dev: &D,
        h: usize,
        w: usize,
        head_dim: usize,
        ref_feat_shape: usize,
        temperature: f64,
    ) -> Self {
        let (sin, cos) = rope_tables(h, w, head_dim, ref_feat_shape, temperature);
        Rope {
            sin: dev.tensor_from_vec(sin, (h * w, head_dim)),
            cos: dev.tensor_from_vec(cos, (h * w, head_dim)),
            rot: dev.tensor_from_vec(rotation_matrix(head_dim), (head_dim, head_dim)),
        }
    }

    /// `x * cos + rot(x) * sin` on `[B, heads, h*w, head_dim]`.
    pub fn apply<T: Tape<f32, D>>(&self, x: Heads<D, T>) -> Heads<D, T> {
        let shape = *x.shape();
        let (b, heads, n, hd) = shape;
        let rotated = x
            .retaped::<T>()
            .reshape_like(&(b * heads, n, hd))
            .matmul(self.rot.clone())
            .reshape_like(&shape);
        x * self.cos.clone().broadcast_like::<_, Axes2<0, 1>>(&shape)
            + rotated * self.sin.clone().broadcast_like::<_, Axes2<0, 1>>(&shape)
    }
}

/// timm's name of the first block's attention-output norm, whose presence in a state dict means
/// `scale_attn_inner` ([`Eva02::from_store`]).
pub const ATTN_NORM_WEIGHT: &str = "blocks.0.attn.norm.weight";

/// EVA attention: q/k/v (k without bias), RoPE on patch tokens, `norm` on the heads' output
/// when `scale_attn_inner`, `proj`.
#[derive(Debug, Clone)]
pub struct EvaAttention<C: ConstDim, D: Device<f32>> {
    /// Fused projection `[3C, C]` without bias (tiny/small).
    pub qkv: Option<Dense<C, usize, D>>,
    pub q_bias: Option<Tensor<(C,), f32, D>>,
    pub v_bias: Option<Tensor<(C,), f32, D>>,
    /// Separate projections (base/large): `q_proj` and `v_proj` with bias, `k_proj` without.
    pub q_proj: Option<Dense<C, C, D>>,
    pub k_proj: Option<Dense<C, C, D>>,
    pub v_proj: Option<Dense<C, C, D>>,
    /// LayerNorm over the heads' concatenated output, before `proj` (`scale_attn_inner`).
    pub norm: Option<Norm<C, D>>,
    pub proj: Dense<C, C, D>,
    pub heads: usize,
}

impl<C: ConstDim, D: Device<f32>> EvaAttention<C, D> {
    /// `norm_eps`: the eps of `norm` (`Some` when `scale_attn_inner`), as for [`SwiGlu::new`].
    pub fn new(dev: &D, heads: usize, fused: bool, norm_eps: Option<f64>) -> Self {
        let c = C::default();
        EvaAttention {
            qkv: fused.then(|| Dense::new(dev, c, 3 * C::SIZE, false)),
            q_bias: fused.then(|| dev.zeros_like(&(c,))),
            v_bias: fused.then(|| dev.zeros_like(&(c,))),
            q_proj: (!fused).then(|| Dense::new(dev, c, c, true)),
            k_proj: (!fused).then(|| Dense::new(dev, c, c, false)),
            v_proj: (!fused).then(|| Dense::new(dev, c, c, true)),
            norm: norm_eps.map(|eps| Norm::new(dev, c, eps)),
            proj: Dense::new(dev, c, c, true),
            heads,
        }
    }

    /// `x`: `[B, 1 + h*w, C]` (class token first).
    #[allow(clippy::type_complexity)]
    pub fn forward<T: Tape<f32, D>>(&self, x: Seq<C, D, T>, rope: &Rope<D>) -> Seq<C, D, T> {
        let c = C::SIZE;
        let (q, k, v): (
            Tokens<usize, D, T>,
            Tokens<usize, D, T>,
            Tokens<usize, D, T>,
        ) = match &self.qkv {
            Some(qkv) => {
                let dev = x.device().clone();
                let zeros: Tensor<(usize,), f32, D> = dev.zeros_like(&(c,));
                let q_bias = self.q_bias.as_ref().expect("fused qkv has q_bias");
                let v_bias = self.v_bias.as_ref().expect("fused qkv has v_bias");
                let q_bias: Tensor<(usize,), f32, D, T> =
                    crate::layers::realize(q_bias.retaped::<T>());
                let v_bias: Tensor<(usize,), f32, D> = crate::layers::realize(v_bias.clone());
                let bias = (q_bias, zeros).concat_along(Axis::<0>);
                let bias = (bias, v_bias).concat_along(Axis::<0>);
                let y = qkv.forward(x);
                let shape = *y.shape();
                let y = y + bias.broadcast_like::<_, Axes2<0, 1>>(&shape);
                (
                    slice_channels(y.retaped::<T>(), 0..c),
                    slice_channels(y.retaped::<T>(), c..2 * c),
                    slice_channels(y, 2 * c..3 * c),
                )
            }
            None => {
                let msg = "separate q/k/v projections";
                let q = self.q_proj.as_ref().expect(msg).forward(x.retaped::<T>());
                let k = self.k_proj.as_ref().expect(msg).forward(x.retaped::<T>());
                let v = self.v_proj.as_ref().expect(msg).forward(x);
                (
                    crate::layers::realize(q),
                    crate::layers::realize(k),
                    crate::layers::realize(v),
                )
            }
        };
        let q = self.rotate(to_heads(q, self.heads), rope);
        let k = self.rotate(to_heads(k, self.heads), rope);
        let v = to_heads(v, self.heads);
        let scale = 1.0 / ((c / self.heads) as f32).sqrt();
        let out = from_heads(attention(q, k, v, scale), C::default());
        let out = match &self.norm {
            Some(norm) => norm.forward(out),
            None => out,
        };
        self.proj.forward(out)
    }

    /// RoPE on every token but the class token.
    fn rotate<T: Tape<f32, D>>(&self, x: Heads<D, T>, rope: &Rope<D>) -> Heads<D, T> {
        let n = x.shape().2;
        let cls = x.retaped::<T>().slice((.., .., 0..1, ..));
        let patches = rope.apply(x.slice((.., .., 1..n, ..)));
        (cls, patches).concat_along(Axis::<2>)
    }
}

impl<C: ConstDim, D: Device<f32>> Params<D> for EvaAttention<C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.q_bias.visit_params(&join(prefix, "q_bias"), v)?;
        self.v_bias.visit_params(&join(prefix, "v_bias"), v)?;
        self.qkv.visit_params(&join(prefix, "qkv"), v)?;
        self.q_proj.visit_params(&join(prefix, "q_proj"), v)?;
        self.k_proj.visit_params(&join(prefix, "k_proj"), v)?;
        self.v_proj.visit_params(&join(prefix, "v_proj"), v)?;
        self.norm.visit_params(&join(prefix, "norm"), v)?;
        self.proj.visit_params(&join(prefix, "proj"), v)
    }
}

/// SwiGLU: `fc2(norm(silu(gate) * x))`; packed (`fc1` = `[gate; x]`) or separate
/// (`fc1_g`, `fc1_x`, with `norm` when `scale_mlp`).
#[derive(Debug, Clone)]
pub struct SwiGlu<C: ConstDim, D: Device<f32>> {
    pub fc1: Option<Dense<C, usize, D>>,
    pub fc1_g: Option<Dense<C, usize, D>>,
    pub fc1_x: Option<Dense<C, usize, D>>,
    pub norm: Option<Norm<usize, D>>,
    pub fc2: Dense<usize, C, D>,
    pub hidden: usize,
}

impl<C: ConstDim, D: Device<f32>> SwiGlu<C, D> {
    pub fn new(dev: &D, hidden: usize, packed: bool, norm_eps: Option<f64>) -> Self {
        let c = C::default();
        SwiGlu {
            fc1: packed.then(|| Dense::new(dev, c, 2 * hidden, true)),
            fc1_g: (!packed).then(|| Dense::new(dev, c, hidden, true)),
            fc1_x: (!packed).then(|| Dense::new(dev, c, hidden, true)),
            norm: norm_eps.map(|eps| Norm::new(dev, hidden, eps)),
            fc2: Dense::new(dev, hidden, c, true),
            hidden,
        }
    }

    pub fn forward<T: Tape<f32, D>>(&self, x: Seq<C, D, T>) -> Seq<C, D, T> {
        let hid = self.hidden;
        let (gate, value) = match (&self.fc1, &self.fc1_g, &self.fc1_x) {
            (Some(fc1), _, _) => {
                let y = fc1.forward(x);
                (
                    slice_channels(y.retaped::<T>(), 0..hid),
                    slice_channels(y, hid..2 * hid),
                )
            }
            (None, Some(g), Some(v)) => (g.forward(x.retaped::<T>()), v.forward(x)),
            _ => unreachable!("SwiGLU has either fc1 or fc1_g and fc1_x"),
        };
        let gated = gate.retaped::<T>().sigmoid() * gate;
        let h = gated * value;
        let h = match &self.norm {
            Some(norm) => norm.forward(h),
            None => h,
        };
        self.fc2.forward(h)
    }
}

impl<C: ConstDim, D: Device<f32>> Params<D> for SwiGlu<C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.fc1.visit_params(&join(prefix, "fc1"), v)?;
        self.fc1_g.visit_params(&join(prefix, "fc1_g"), v)?;
        self.fc1_x.visit_params(&join(prefix, "fc1_x"), v)?;
        self.norm.visit_params(&join(prefix, "norm"), v)?;
        self.fc2.visit_params(&join(prefix, "fc2"), v)
    }
}

/// `x + attn(norm1(x))`, `x + mlp(norm2(x))`.
#[derive(Debug, Clone)]
pub struct EvaBlock<C: ConstDim, D: Device<f32>> {
    pub norm1: Norm<C, D>,
    pub attn: EvaAttention<C, D>,
    pub norm2: Norm<C, D>,
    pub mlp: SwiGlu<C, D>,
}

impl<C: ConstDim, D: Device<f32>> EvaBlock<C, D> {
    pub fn forward<T: Tape<f32, D>>(&self, x: Seq<C, D, T>, rope: &Rope<D>) -> Seq<C, D, T> {
        let out = self
            .attn
            .forward(self.norm1.forward(x.retaped::<T>()), rope);
        let x = x + out;
        let out = self.mlp.forward(self.norm2.forward(x.retaped::<T>()));
        x + out
    }
}

impl<C: ConstDim, D: Device<f32>> Params<D> for EvaBlock<C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.norm1.visit_params(&join(prefix, "norm1"), v)?;
        self.attn.visit_params(&join(prefix, "attn"), v)?;
        self.norm2.visit_params(&join(prefix, "norm2"), v)?;
        self.mlp.visit_params(&join(prefix, "mlp"), v)
    }
}

/// The EVA02 ViT of width `C` (timm state-dict names).
#[derive(Debug, Clone)]
pub struct Eva02<C: ConstDim, D: Device<f32>> {
    /// `[1, 1, C]`.
    pub cls_token: Tensor<(usize, usize, C), f32, D>,
    /// `[1, 1 + grid*grid, C]`.
    pub pos_embed: Tensor<(usize, usize, C), f32, D>,
    pub patch_embed: Conv2d<usize, C, D>,
    pub blocks: Vec<EvaBlock<C, D>>,
    /// timm `norm`, the end of `forward_features` ([`FinalNorm::Features`]).
    pub norm: Option<Norm<C, D>>,
    /// timm `fc_norm`, for pooled features ([`FinalNorm::Fc`]; unused by `forward_features`).
    pub fc_norm: Option<Norm<C, D>>,
    pub head: Option<Dense<C, usize, D>>,
    pub config: Eva02Config,
}

impl<C: ConstDim, D: Device<f32>> Eva02<C, D> {
    pub fn new(dev: &D, config: &Eva02Config) -> VisionResult<Self> {
        config.check(C::SIZE)?;
        let grid = config.grid();
        let eps = config.layer_norm_eps;
        let blocks = (0..config.depth)
            .map(|_| EvaBlock {
                norm1: Norm::new(dev, C::default(), eps),
                attn: EvaAttention::new(
                    dev,
                    config.num_heads,
                    config.qkv_fused,
                    config.scale_attn_inner.then_some(eps),
                ),
                norm2: Norm::new(dev, C::default(), eps),
                mlp: SwiGlu::new(
                    dev,
                    config.mlp_hidden,
                    !config.scale_mlp,
                    config.scale_mlp.then_some(eps),
                ),
            })
            .collect();
        Ok(Eva02 {
            cls_token: dev.sample_normal_like(&(1, 1, C::default())) * 0.02,
            pos_embed: dev.sample_normal_like(&(1, 1 + grid * grid, C::default())) * 0.02,
            patch_embed: Conv2d::new(
                dev,
                3,
                C::default(),
                config.patch_size,
                config.patch_size,
                0,
                true,
            ),
            blocks,
            norm: (config.final_norm == FinalNorm::Features)
                .then(|| Norm::new(dev, C::default(), eps)),
            fc_norm: (config.final_norm == FinalNorm::Fc)
                .then(|| Norm::new(dev, C::default(), eps)),
            head: (config.num_classes > 0)
                .then(|| Dense::new(dev, C::default(), config.num_classes, true)),
            config: config.clone(),
        })
    }

    /// Builds the model for a timm state dict and loads it: the final norm
    /// ([`FinalNorm::of_store`]) and `scale_attn_inner` ([`ATTN_NORM_WEIGHT`] present) are the
    /// file's, not `config`'s; everything else (widths, sizes) is `config`'s, and a file whose
    /// shapes differ is an error as in [`Self::load_store`].
    pub fn from_store(dev: &D, config: &Eva02Config, store: &TensorStore) -> VisionResult<Self> {
        let config = Eva02Config {
            final_norm: FinalNorm::of_store(store)?,
            scale_attn_inner: store.get(ATTN_NORM_WEIGHT).is_some(),
            ..config.clone()
        };
        let mut eva = Self::new(dev, &config)?;
        eva.load_store(store)?;
        Ok(eva)
    }

    /// Loads a timm state dict (safetensors) strictly; a `head` in the file sets the classes.
    /// The final norm and `scale_attn_inner` must be the config's: a file with the other final
    /// norm, or with(out) `attn.norm`, is an error that says so (use [`Self::from_store`] to
    /// follow the file).
    pub fn load_store(&mut self, store: &TensorStore) -> VisionResult<()> {
        if let Some(head) = store.get("head.weight") {
            let dev = self.cls_token.device().clone();
            self.config.num_classes = head.shape[0];
            self.head = Some(Dense::new(&dev, C::default(), head.shape[0], true));
        }
        match load_params(self, store, "", &LoadOptions::strict()) {
            Err(CoreError::CheckpointMismatch { path, mut problems }) => {
                problems.extend(self.final_norm_hint(store));
                problems.extend(self.attn_norm_hint(store));
                Err(CoreError::CheckpointMismatch { path, problems }.into())
            }
            other => Ok(other?),
        }
    }

    /// What to do when the file's final norm is not the config's (`None` when it is).
    fn final_norm_hint(&self, store: &TensorStore) -> Option<String> {
        let ours = self.config.final_norm;
        let theirs = FinalNorm::of_store(store).ok().filter(|f| *f != ours)?;
        let name = |f: FinalNorm| match f {
            FinalNorm::Fc => "fc",
            FinalNorm::Features => "features",
        };
        Some(format!(
            "the file's final norm is `{}` (timm's `{}`), the config's final_norm is \"{}\" \
             (`{}`): set final_norm = \"{}\", or build with Eva02::from_store to follow the file",
            theirs.weight_name(),
            theirs.weight_name().trim_end_matches(".weight"),
            name(ours),
            ours.weight_name(),
            name(theirs),
        ))
    }

    /// What to do when the file's `scale_attn_inner` is not the config's (`None` when it is).
    fn attn_norm_hint(&self, store: &TensorStore) -> Option<String> {
        let theirs = store.get(ATTN_NORM_WEIGHT).is_some();
        let ours = self.config.scale_attn_inner;
        if theirs == ours || self.config.depth == 0 {
            return None;
        }
        let has = if theirs { "has" } else { "does not have" };
        Some(format!(
            "the file {has} `{ATTN_NORM_WEIGHT}` (timm's scale_attn_inner, as the \
             eva02_*_clip_* towers), the config's scale_attn_inner is {ours}: set \
             scale_attn_inner = {theirs}, or build with Eva02::from_store to follow the file"
        ))
    }

    /// timm `forward_features`: `[B, 1 + h*w, C]` (class token first), ending with `norm` when
    /// the model has it ([`FinalNorm::Features`]), with the last block otherwise.
    ///
    /// Images of another size than the config's get a bicubically resized position embedding
    /// and RoPE positions for their grid.
    pub fn forward_features<T: Tape<f32, D>>(
        &self,
        images: Images<D, T>,
    ) -> (Seq<C, D, T>, (usize, usize)) {
        let (mut x, (h, w)) = self.embed(images);
        let cfg = &self.config;
        let rope = Rope::new(
            x.device(),
            h,
            w,
            cfg.head_dim(),
            cfg.ref_feat_shape,
            cfg.rope_temperature,
        );
        for block in &self.blocks {
            x = block.forward(x, &rope);
        }
        if let Some(norm) = &self.norm {
            x = norm.forward(x);
        }
        (x, (h, w))
    }

    /// The tokens the first block takes, `[B, 1 + h*w, C]`: the class token, then the patch
    /// embeddings, plus the position embedding (resized for another grid than the config's).
    pub fn embed<T: Tape<f32, D>>(&self, images: Images<D, T>) -> (Seq<C, D, T>, (usize, usize)) {
        let x = self.patch_embed.forward_images(images);
        let (h, w, b) = (x.height, x.width, x.batch());
        let cls = self
            .cls_token
            .retaped::<T>()
            .reshape_like(&(1, C::default()))
            .broadcast_like::<_, Axis<0>>(&(b, 1, C::default()));
        let tokens = (cls, x.tokens).concat_along(Axis::<1>);
        let tokens: Seq<C, D, T> = crate::layers::realize(tokens);
        let pos = self.position_embedding::<T>(h, w);
        let shape = *tokens.shape();
        let x = tokens
            + pos
                .reshape_like(&(1 + h * w, C::default()))
                .broadcast_like::<_, Axis<0>>(&shape);
        (x, (h, w))
    }

    /// [`Self::forward_features`] for user input: `images` must be `[B, 3, S, S]` with `B >= 1`
    /// and `S` the config's `img_size` (as timm's `Eva` with its default strict image size),
    /// else an error naming the expected and the actual shape.
    pub fn try_forward_features(
        &self,
        images: Images<D>,
    ) -> VisionResult<(Seq<C, D>, (usize, usize))> {
        let (b, c, h, w) = *images.shape();
        check_images("pixel_values", &[b, c, h, w], 3, self.config.img_size)?;
        Ok(self.forward_features(images))
    }

    /// The position embedding for an `h x w` grid (resized when it differs from the config's).
    fn position_embedding<T: Tape<f32, D>>(&self, h: usize, w: usize) -> Seq<C, D, T> {
        let n = self.pos_embed.shape().1 - 1;
        let g = (n as f64).sqrt() as usize;
        let pos = self.pos_embed.retaped::<T>();
        if g * g == n && (g, g) == (h, w) {
            return pos;
        }
        let cls = slice_tokens(pos.retaped::<T>(), 0..1);
        let grid = FeatureMap::new(slice_tokens(pos, 1..n + 1), g, g);
        let grid = resize_map(grid, h, w, ResizeKernel::Bicubic).tokens;
        crate::layers::realize((cls, grid).concat_along(Axis::<1>))
    }

    /// The patch tokens as a feature map `[B, h*w, C]` (class token dropped), as PixelLLM
    /// consumes EVA02 features.
    pub fn feature_map<T: Tape<f32, D>>(&self, images: Images<D, T>) -> FeatureMap<C, D, T> {
        let (x, (h, w)) = self.forward_features(images);
        FeatureMap::new(slice_tokens(x, 1..1 + h * w), h, w)
    }
}

impl<C: ConstDim, D: Device<f32>> Params<D> for Eva02<C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        v.visit(&join(prefix, "cls_token"), &mut self.cls_token)?;
        v.visit(&join(prefix, "pos_embed"), &mut self.pos_embed)?;
        self.patch_embed
            .visit_params(&join(prefix, "patch_embed.proj"), v)?;
        self.blocks.visit_params(&join(prefix, "blocks"), v)?;
        self.norm.visit_params(&join(prefix, "norm"), v)?;
        self.fc_norm.visit_params(&join(prefix, "fc_norm"), v)?;
        self.head.visit_params(&join(prefix, "head"), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_core::params::ParamTensor;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn rope_preserves_vector_norms(seed in 0u64..1000, h in 1usize..5, w in 1usize..5, reference in 1usize..20) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let rope = Rope::new(&dev, h, w, 8, reference, 10000.0);
            let x: Heads<Cpu> = dev.sample_normal_like(&(2, 3, h * w, 8));
            let y = rope.apply(x.clone()).as_vec();
            for (a, b) in x.as_vec().chunks(8).zip(y.chunks(8)) {
                let na: f32 = a.iter().map(|v| v * v).sum();
                let nb: f32 = b.iter().map(|v| v * v).sum();
                prop_assert!((na - nb).abs() <= 1e-4 * na.max(1.0));
            }
        }
    }

    #[test]
    fn rope_at_the_origin_is_the_identity() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let rope = Rope::new(&dev, 2, 2, 8, 16, 10000.0);
        let x: Heads<Cpu> = dev.sample_normal_like(&(1, 1, 4, 8));
        let y = rope.apply(x.clone()).as_vec();
        assert_eq!(&y[..8], &x.as_vec()[..8]);
    }

    #[test]
    fn eva02_trains_at_tiny_sizes() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let mut cfg = Eva02Config::sized(32, 32, 1, 2, false, true);
        cfg.patch_size = 8;
        cfg.ref_feat_shape = 4;
        let eva = Eva02::<Const<32>, Cpu>::new(&dev, &cfg).unwrap();
        let images: Images<Cpu> = dev.sample_normal_like(&(1, 3, 32, 32));
        let map = eva.feature_map(images.retaped::<OwnedTape<f32, Cpu>>());
        assert_eq!((map.height, map.width), (4, 4));
        let grads = map.tokens.square().sum().backward();
        assert!(eva.blocks[0]
            .attn
            .q_proj
            .as_ref()
            .unwrap()
            .weight
            .grad(&grads)
            .iter()
            .any(|g| *g != 0.0));
        assert!(grads.get(&eva.cls_token).as_vec().iter().any(|g| *g != 0.0));
        assert!(grads.get(&eva.pos_embed).as_vec().iter().any(|g| *g != 0.0));
    }
}
