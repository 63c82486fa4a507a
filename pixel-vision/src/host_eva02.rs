//! EVA02's transformer blocks for inference on the host: the same function as
//! [`Eva02::forward_features`] without a tape, on plain row-major buffers reused from block to
//! block.
//!
//! Profiling EVA02-L at 448 px on dfdx put a third of the forward outside the matrix products:
//! each LayerNorm, bias, residual, RoPE and SwiGLU step is a fresh tensor written by a strided
//! broadcast kernel, RoPE's rotation a batched product. Here the weights are [`HostMatrix`]es
//! (f32, or bf16/f16 with f32 accumulation), q/k/v and SwiGLU's two inputs are one product
//! each, biases and residuals are already in the product's destination (`gemm` adds to it),
//! RoPE, LayerNorm and SwiGLU's gate are one pass over rows in parallel, and attention is
//! [`fused_attention`].
//!
//! The patch embedding, class token, position embedding (resized for another grid) stay
//! [`Eva02::embed`]'s; training keeps the dfdx model, whose tape this does not record.
use crate::conv::{check_images, Images};
use crate::eva02::{rope_tables, Eva02};
use crate::host_layers::{merge_heads, split_qkv, HostLinear, HostNorm, Layout, ROWS_PER_TASK};
use crate::VisionResult;
use dfdx::prelude::*;
use pixel_core::host_matrix::Dtype;
use pixel_core::nn::elementwise::silu_gate;
use pixel_core::nn::fused_attention::fused_attention;
use pixel_core::nn::Seq;
use rayon::prelude::*;

/// An [`Eva02`] for inference: the blocks' weights copied into [`HostMatrix`]es of one dtype.
#[derive(Debug, Clone)]
pub struct HostEva02<C: ConstDim> {
    /// Patch embedding, class token and position embedding ([`Eva02::embed`]); no blocks.
    stem: Eva02<C, Cpu>,
    blocks: Vec<HostBlock>,
    /// timm's `norm` at the end of `forward_features`, when the model has it.
    norm: Option<HostNorm>,
}

/// One [`crate::eva02::EvaBlock`].
#[derive(Debug, Clone)]
struct HostBlock {
    norm1: HostNorm,
    /// q, k, v stacked: `[3C, C]` (k's bias zero).
    qkv: HostLinear,
    attn_norm: Option<HostNorm>,
    proj: HostLinear,
    norm2: HostNorm,
    /// SwiGLU's gate and value stacked: `[2 hidden, C]`.
    fc1: HostLinear,
    mlp_norm: Option<HostNorm>,
    fc2: HostLinear,
    heads: usize,
}

/// Buffers one forward pass reuses in every block.
#[derive(Default)]
struct Scratch {
    normed: Vec<f32>,
    qkv: Vec<f32>,
    /// q, k, v as `[batch * heads, tokens, head_dim]`.
    heads: [Vec<f32>; 3],
    hidden: Vec<f32>,
}

impl<C: ConstDim> HostEva02<C> {
    /// Copies `eva`'s blocks into host matrices of `dtype` (biases and norms stay f32).
    pub fn new(eva: &Eva02<C, Cpu>, dtype: Dtype) -> Self {
        let blocks = eva
            .blocks
            .iter()
            .map(|b| {
                let attn = &b.attn;
                let qkv = match &attn.qkv {
                    Some(fused) => {
                        let mut qkv = HostLinear::stacked(&[fused], dtype);
                        let q = attn.q_bias.as_ref().expect("fused qkv has q_bias").as_vec();
                        let v = attn.v_bias.as_ref().expect("fused qkv has v_bias").as_vec();
                        let c = q.len();
                        qkv.bias[..c].copy_from_slice(&q);
                        qkv.bias[2 * c..].copy_from_slice(&v);
                        qkv
                    }
                    None => {
                        let msg = "separate q/k/v projections";
                        let q = attn.q_proj.as_ref().expect(msg);
                        let k = attn.k_proj.as_ref().expect(msg);
                        let v = attn.v_proj.as_ref().expect(msg);
                        HostLinear::stacked(&[q, k, v], dtype)
                    }
                };
                let mlp = &b.mlp;
                let fc1 = match (&mlp.fc1, &mlp.fc1_g, &mlp.fc1_x) {
                    (Some(packed), _, _) => HostLinear::stacked(&[packed], dtype),
                    (None, Some(g), Some(x)) => HostLinear::stacked(&[g, x], dtype),
                    _ => unreachable!("SwiGLU has either fc1 or fc1_g and fc1_x"),
                };
                HostBlock {
                    norm1: HostNorm::new(&b.norm1),
                    qkv,
                    attn_norm: attn.norm.as_ref().map(HostNorm::new),
                    proj: HostLinear::stacked(&[&attn.proj], dtype),
                    norm2: HostNorm::new(&b.norm2),
                    fc1,
                    mlp_norm: mlp.norm.as_ref().map(HostNorm::new),
                    fc2: HostLinear::stacked(&[&mlp.fc2], dtype),
                    heads: attn.heads,
                }
            })
            .collect();
        HostEva02 {
            stem: Eva02 {
                blocks: Vec::new(),
                ..eva.clone()
            },
            blocks,
            norm: eva.norm.as_ref().map(HostNorm::new),
        }
    }

    /// [`Eva02::forward_features`]: `[B, 1 + h*w, C]` and the grid `(h, w)`.
    pub fn forward_features(&self, images: Images<Cpu>) -> (Seq<C, Cpu>, (usize, usize)) {
        let (tokens, (h, w)) = self.stem.embed(images);
        let (batch, n, _) = *tokens.shape();
        let layout = Layout {
            batch,
            tokens: n,
            channels: C::SIZE,
        };
        let cfg = &self.stem.config;
        let rope = rope_tables(
            h,
            w,
            cfg.head_dim(),
            cfg.ref_feat_shape,
            cfg.rope_temperature,
        );
        let mut x = tokens.as_vec();
        let mut scratch = Scratch::default();
        for block in &self.blocks {
            block.forward(&mut x, layout, &rope, &mut scratch);
        }
        if let Some(norm) = &self.norm {
            norm.rows_in_place(&mut x);
        }
        let dev = tokens.device().clone();
        (dev.tensor_from_vec(x, (batch, n, C::default())), (h, w))
    }

    /// [`Self::forward_features`] for user input, checked as [`Eva02::try_forward_features`].
    pub fn try_forward_features(
        &self,
        images: Images<Cpu>,
    ) -> VisionResult<(Seq<C, Cpu>, (usize, usize))> {
        let (b, c, h, w) = *images.shape();
        check_images("pixel_values", &[b, c, h, w], 3, self.stem.config.img_size)?;
        Ok(self.forward_features(images))
    }
}

impl HostBlock {
    /// `x += attn(norm1(x))`, then `x += mlp(norm2(x))`, on `x` `[batch * tokens, C]`.
    fn forward(&self, x: &mut [f32], layout: Layout, rope: &(Vec<f32>, Vec<f32>), s: &mut Scratch) {
        let c = layout.channels;
        self.norm1.rows_into(x, &mut s.normed);
        self.qkv.forward_into(&s.normed, &mut s.qkv);
        rotate_queries_and_keys(&mut s.qkv, layout, self.heads, rope);
        let shape = split_qkv(&s.qkv, layout, self.heads, &mut s.heads);
        let [q, k, v] = &s.heads;
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        let out = fused_attention(q, k, v, shape, scale, None);
        merge_heads(&out, layout, self.heads, &mut s.normed);
        if let Some(norm) = &self.attn_norm {
            norm.rows_in_place(&mut s.normed);
        }
        self.proj.add_to(&s.normed, x);

        self.norm2.rows_into(x, &mut s.normed);
        self.fc1.forward_into(&s.normed, &mut s.qkv);
        let hidden = self.fc1.bias.len() / 2;
        s.hidden.resize(x.len() / c * hidden, 0.0);
        s.hidden
            .par_chunks_mut(hidden * ROWS_PER_TASK)
            .zip(s.qkv.par_chunks(2 * hidden * ROWS_PER_TASK))
            .for_each(|(out, gate_value)| {
                for (o, gv) in out
                    .chunks_exact_mut(hidden)
                    .zip(gate_value.chunks_exact(2 * hidden))
                {
                    let (gate, value) = gv.split_at(hidden);
                    silu_gate(gate, value, o);
                }
            });
        if let Some(norm) = &self.mlp_norm {
            norm.rows_in_place(&mut s.hidden);
        }
        self.fc2.add_to(&s.hidden, x);
    }
}

/// RoPE (timm's `apply_rot_embed_cat`: `x cos + rot(x) sin`, pairs `(a, b) -> (-b, a)`) on
/// the q and k of every patch token of `qkv` `[batch * tokens, 3C]`; class tokens stay.
fn rotate_queries_and_keys(
    qkv: &mut [f32],
    layout: Layout,
    heads: usize,
    (sin, cos): &(Vec<f32>, Vec<f32>),
) {
    let c = layout.channels;
    let head_dim = c / heads;
    qkv.par_chunks_mut(3 * c * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, rows)| {
            for (i, row) in rows.chunks_exact_mut(3 * c).enumerate() {
                let token = (task * ROWS_PER_TASK + i) % layout.tokens;
                if token == 0 {
                    continue;
                }
                let at = (token - 1) * head_dim;
                let (sin, cos) = (&sin[at..at + head_dim], &cos[at..at + head_dim]);
                for head in row[..2 * c].chunks_exact_mut(head_dim) {
                    for p in 0..head_dim / 2 {
                        let (a, b) = (head[2 * p], head[2 * p + 1]);
                        head[2 * p] = a * cos[2 * p] - b * sin[2 * p];
                        head[2 * p + 1] = b * cos[2 * p + 1] + a * sin[2 * p + 1];
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eva02::{Eva02Config, FinalNorm};
    use pixel_core::testing::max_abs_diff;

    /// Small models of each layout: fused q/k/v with packed SwiGLU (tiny, small), and separate
    /// projections with SwiGLU's norm, `attn.norm` and the final `norm` (base, large, CLIP).
    fn configs() -> Vec<Eva02Config> {
        let mut fused = Eva02Config::sized(28, 32, 2, 2, true, false);
        fused.ref_feat_shape = 2;
        let mut separate = Eva02Config::sized(42, 32, 2, 4, false, true);
        separate.ref_feat_shape = 3;
        separate.scale_attn_inner = true;
        separate.final_norm = FinalNorm::Features;
        vec![fused, separate]
    }

    /// Random weights, biases and norms (a fresh model's norms are the identity).
    fn randomized(dev: &Cpu, config: &Eva02Config) -> Eva02<Const<32>, Cpu> {
        let mut eva = Eva02::<Const<32>, Cpu>::new(dev, config).unwrap();
        pixel_core::testing::randomize_params(&mut eva, config.embed_dim as u64, 0.5);
        eva
    }

    #[test]
    fn host_blocks_equal_the_dfdx_model() {
        let dev: Cpu = Cpu::seed_from_u64(3);
        for config in configs() {
            let eva = randomized(&dev, &config);
            let host = HostEva02::new(&eva, Dtype::F32);
            for (batch, size) in [(1, config.img_size), (2, config.img_size), (1, 56)] {
                let images: Images<Cpu> = dev.sample_normal_like(&(batch, 3, size, size));
                let (want, grid) = eva.forward_features(images.clone());
                let (got, host_grid) = host.forward_features(images);
                assert_eq!(grid, host_grid);
                assert_eq!(got.shape(), want.shape());
                let err = max_abs_diff(&got.as_vec(), &want.as_vec());
                assert!(err <= 1e-4, "{config:?} batch {batch} size {size}: {err}");
            }
        }
    }

    #[test]
    fn bf16_weights_stay_within_bf16_rounding() {
        let dev: Cpu = Cpu::seed_from_u64(4);
        let config = &configs()[1];
        let eva = randomized(&dev, config);
        let images: Images<Cpu> = dev.sample_normal_like(&(1, 3, 42, 42));
        let want = eva.forward_features(images.clone()).0.as_vec();
        let got = HostEva02::new(&eva, Dtype::Bf16)
            .forward_features(images)
            .0
            .as_vec();
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = max_abs_diff(&got, &want);
        assert!(err > 0.0, "bf16 weights changed nothing");
        assert!(err <= 0.05 * scale, "{err} against values up to {scale}");
    }

    #[test]
    fn images_of_the_wrong_shape_are_refused() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let eva = randomized(&dev, &configs()[0]);
        let host = HostEva02::new(&eva, Dtype::F32);
        let images: Images<Cpu> = dev.zeros_like(&(1, 3, 30, 28));
        let err = host.try_forward_features(images).unwrap_err().to_string();
        assert!(err.contains("pixel_values"), "{err}");
    }
}
