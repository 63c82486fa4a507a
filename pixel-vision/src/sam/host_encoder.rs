//! SAM's image encoder for inference on the host: the same function as
//! [`SamImageEncoder::forward`] without a tape, its blocks on row-major buffers reused from
//! block to block (as [`crate::HostEva02`] does for EVA02).
//!
//! Profiling SAM ViT-B at 1024 px on dfdx put about a quarter of the forward in element-wise
//! kernels, layout copies (window partition, head splits, the relative-position terms' permutes)
//! and fresh pages. Here each block's products take their bias (and the residual) in the
//! destination, LayerNorm and GELU are one pass over rows in parallel, windows are cut and put
//! back in one pass each, and attention is [`fused_attention`] with SAM's decomposed bias.
//!
//! SAM is frozen in PixelLLM, so this is also what a PixelLLM forward can run for it. The patch
//! embedding, position embedding and the neck stay [`SamImageEncoder`]'s.
use crate::conv::{FeatureMap, Images};
use crate::host_layers::{merge_heads, split_qkv, HostLinear, HostNorm, Layout, ROWS_PER_TASK};
use crate::sam::image_encoder::{get_rel_pos, SamImageEncoder};
use dfdx::prelude::*;
use pixel_core::host_matrix::Dtype;
use pixel_core::nn::elementwise::{dot, gelu_erf_in_place};
use pixel_core::nn::fused_attention::{fused_attention, AttentionShape, DecomposedBias};
use pixel_core::nn::Activation;
use rayon::prelude::*;

/// A [`SamImageEncoder`] for inference: the blocks' weights copied into host matrices of one
/// dtype.
#[derive(Debug, Clone)]
pub struct HostSamImageEncoder<C: ConstDim, O: ConstDim> {
    /// Patch and position embedding ([`SamImageEncoder::embed`]) and the neck; no blocks.
    stem: SamImageEncoder<C, O, Cpu>,
    blocks: Vec<HostSamBlock>,
}

/// A relative position table `[2 size - 1, head_dim]`.
type Table = Tensor<(usize, usize), f32, Cpu>;

/// One [`crate::sam::image_encoder::SamVisionLayer`].
#[derive(Debug, Clone)]
struct HostSamBlock {
    norm1: HostNorm,
    qkv: HostLinear,
    /// The learned relative position tables (`rel_pos_h`, `rel_pos_w`), resized per input.
    rel_pos: Option<(Table, Table)>,
    proj: HostLinear,
    norm2: HostNorm,
    lin1: HostLinear,
    lin2: HostLinear,
    heads: usize,
    /// 0 for global attention.
    window_size: usize,
}

/// The feature grid: `batch` maps of `height x width` tokens, `channels` wide.
#[derive(Debug, Clone, Copy)]
struct Grid {
    batch: usize,
    height: usize,
    width: usize,
    channels: usize,
}

/// Buffers one forward pass reuses in every block.
#[derive(Default)]
struct Scratch {
    normed: Vec<f32>,
    windows: Vec<f32>,
    qkv: Vec<f32>,
    heads: [Vec<f32>; 3],
    merged: Vec<f32>,
    projected: Vec<f32>,
    hidden: Vec<f32>,
}

impl<C: ConstDim, O: ConstDim> HostSamImageEncoder<C, O> {
    /// Copies `encoder`'s blocks into host matrices of `dtype` (biases, norms and relative
    /// position tables stay f32).
    ///
    /// Panics when a block's MLP activation is not the exact GELU, which every SAM has (a
    /// hand-built encoder with another is a caller's bug).
    pub fn new(encoder: &SamImageEncoder<C, O, Cpu>, dtype: Dtype) -> Self {
        let blocks = encoder
            .layers
            .iter()
            .map(|layer| {
                assert_eq!(
                    layer.mlp.activation,
                    Activation::Gelu,
                    "SAM's MLP uses the exact GELU"
                );
                let attn = &layer.attn;
                HostSamBlock {
                    norm1: HostNorm::new(&layer.layer_norm1),
                    qkv: HostLinear::stacked(&[&attn.qkv], dtype),
                    rel_pos: attn.rel_pos_h.clone().zip(attn.rel_pos_w.clone()),
                    proj: HostLinear::stacked(&[&attn.proj], dtype),
                    norm2: HostNorm::new(&layer.layer_norm2),
                    lin1: HostLinear::stacked(&[&layer.mlp.lin1], dtype),
                    lin2: HostLinear::stacked(&[&layer.mlp.lin2], dtype),
                    heads: attn.heads,
                    window_size: layer.window_size,
                }
            })
            .collect();
        HostSamImageEncoder {
            stem: SamImageEncoder {
                layers: Vec::new(),
                ..encoder.clone()
            },
            blocks,
        }
    }

    /// [`SamImageEncoder::forward`]: the image embeddings `[B, h*w, O]`.
    pub fn forward(&self, images: Images<Cpu>) -> FeatureMap<O, Cpu> {
        let embedded = self.stem.embed(images);
        let grid = Grid {
            batch: embedded.batch(),
            height: embedded.height,
            width: embedded.width,
            channels: C::SIZE,
        };
        let mut x = embedded.tokens.as_vec();
        let mut scratch = Scratch::default();
        for block in &self.blocks {
            block.forward(&mut x, grid, &mut scratch);
        }
        let dev = embedded.tokens.device().clone();
        let tokens = dev.tensor_from_vec(x, (grid.batch, grid.height * grid.width, C::default()));
        self.stem
            .neck
            .forward(FeatureMap::new(tokens, grid.height, grid.width))
    }
}

impl HostSamBlock {
    /// `x += attn(norm1(x))` (in windows when `window_size > 0`), then `x += mlp(norm2(x))`,
    /// on `x` `[batch * height * width, C]`.
    fn forward(&self, x: &mut [f32], grid: Grid, s: &mut Scratch) {
        let c = grid.channels;
        self.norm1.rows_into(x, &mut s.normed);
        let ws = self.window_size;
        let (layout, (ah, aw)) = if ws > 0 {
            let windows = partition(&s.normed, grid, ws, &mut s.windows);
            let layout = Layout {
                batch: windows,
                tokens: ws * ws,
                channels: c,
            };
            (layout, (ws, ws))
        } else {
            let layout = Layout {
                batch: grid.batch,
                tokens: grid.height * grid.width,
                channels: c,
            };
            (layout, (grid.height, grid.width))
        };
        let tokens = if ws > 0 { &s.windows } else { &s.normed };
        self.qkv.forward_into(tokens, &mut s.qkv);
        let shape = split_qkv(&s.qkv, layout, self.heads, &mut s.heads);
        let [q, k, v] = &s.heads;
        let terms = self
            .rel_pos
            .as_ref()
            .map(|(th, tw)| rel_pos_terms(q, shape, (ah, aw), th, tw));
        let bias = terms.as_ref().map(|(rel_h, rel_w)| DecomposedBias {
            rel_h,
            rel_w,
            kh: ah,
            kw: aw,
        });
        let out = fused_attention(q, k, v, shape, 1.0 / (shape.head_dim as f32).sqrt(), bias);
        merge_heads(&out, layout, self.heads, &mut s.merged);
        if ws > 0 {
            self.proj.forward_into(&s.merged, &mut s.projected);
            unpartition_add(&s.projected, grid, ws, x);
        } else {
            self.proj.add_to(&s.merged, x);
        }

        self.norm2.rows_into(x, &mut s.normed);
        self.lin1.forward_into(&s.normed, &mut s.hidden);
        let hidden = self.lin1.bias.len();
        s.hidden
            .par_chunks_mut(hidden * ROWS_PER_TASK)
            .for_each(gelu_erf_in_place);
        self.lin2.add_to(&s.hidden, x);
    }
}

/// segment-anything's `window_partition` of `x` `[batch * height * width, C]` into `out`
/// `[windows, ws * ws, C]`, zero-padded bottom and right; returns the number of windows.
fn partition(x: &[f32], grid: Grid, ws: usize, out: &mut Vec<f32>) -> usize {
    let Grid {
        batch,
        height,
        width,
        channels: c,
    } = grid;
    let (nh, nw) = (height.div_ceil(ws), width.div_ceil(ws));
    out.clear();
    out.resize(batch * nh * nw * ws * ws * c, 0.0);
    out.par_chunks_mut(ws * ws * c)
        .enumerate()
        .for_each(|(window, dst)| {
            let (b, wy, wx) = (window / (nh * nw), window / nw % nh, window % nw);
            for ty in 0..ws {
                let y = wy * ws + ty;
                if y >= height {
                    break;
                }
                let x0 = wx * ws;
                let cols = ws.min(width - x0);
                let from = ((b * height + y) * width + x0) * c;
                dst[ty * ws * c..(ty * ws + cols) * c].copy_from_slice(&x[from..from + cols * c]);
            }
        });
    batch * nh * nw
}

/// `window_unpartition` of `windows` `[windows, ws * ws, C]`, padding dropped, added to `x`
/// `[batch * height * width, C]`.
fn unpartition_add(windows: &[f32], grid: Grid, ws: usize, x: &mut [f32]) {
    let Grid {
        height,
        width,
        channels: c,
        ..
    } = grid;
    let (nh, nw) = (height.div_ceil(ws), width.div_ceil(ws));
    x.par_chunks_mut(width * c)
        .enumerate()
        .for_each(|(row, dst)| {
            let (b, y) = (row / height, row % height);
            let (wy, ty) = (y / ws, y % ws);
            for (xx, token) in dst.chunks_exact_mut(c).enumerate() {
                let (wx, tx) = (xx / ws, xx % ws);
                let window = (b * nh + wy) * nw + wx;
                let from = (window * ws * ws + ty * ws + tx) * c;
                for (t, v) in token.iter_mut().zip(&windows[from..from + c]) {
                    *t += v;
                }
            }
        });
}

/// `add_decomposed_rel_pos`'s two terms from the unscaled queries `q` `[groups, qh * qw,
/// head_dim]`: `rel_h[g, (y, x), ky] = q[g, (y, x)] . Rh[y, ky]` and `rel_w[g, (y, x), kx] =
/// q[g, (y, x)] . Rw[x, kx]`, with `Rh`, `Rw` the tables resized and gathered by
/// [`get_rel_pos`] (keys on the same grid as the queries).
fn rel_pos_terms(
    q: &[f32],
    shape: AttentionShape,
    (qh, qw): (usize, usize),
    table_h: &Table,
    table_w: &Table,
) -> (Vec<f32>, Vec<f32>) {
    let hd = shape.head_dim;
    let (kh, kw) = (qh, qw);
    let rh = get_rel_pos::<Cpu, NoneTape>(qh, kh, table_h).as_vec();
    let rw = get_rel_pos::<Cpu, NoneTape>(qw, kw, table_w).as_vec();
    let queries = qh * qw;
    let mut rel_h = vec![0.0f32; shape.groups * queries * kh];
    let mut rel_w = vec![0.0f32; shape.groups * queries * kw];
    rel_h
        .par_chunks_mut(queries * kh)
        .zip(rel_w.par_chunks_mut(queries * kw))
        .enumerate()
        .for_each(|(g, (out_h, out_w))| {
            for i in 0..queries {
                let (y, x) = (i / qw, i % qw);
                let query = &q[(g * queries + i) * hd..][..hd];
                for (ky, o) in out_h[i * kh..(i + 1) * kh].iter_mut().enumerate() {
                    *o = dot(query, &rh[(y * kh + ky) * hd..][..hd]);
                }
                for (kx, o) in out_w[i * kw..(i + 1) * kw].iter_mut().enumerate() {
                    *o = dot(query, &rw[(x * kw + kx) * hd..][..hd]);
                }
            }
        });
    (rel_h, rel_w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sam::SamConfig;
    use pixel_core::testing::{max_abs_diff, randomize_params};

    /// The test config's encoder (windows of 4 with padding at 96 px, global blocks, relative
    /// positions), every parameter random.
    fn encoder() -> SamImageEncoder<Const<64>, Const<32>, Cpu> {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let config = SamConfig::test().vision_config;
        let mut enc = SamImageEncoder::new(&dev, &config).unwrap();
        randomize_params(&mut enc, 7, 0.3);
        enc
    }

    #[test]
    fn host_blocks_equal_the_dfdx_encoder() {
        let enc = encoder();
        let host = HostSamImageEncoder::new(&enc, Dtype::F32);
        let dev: Cpu = Cpu::seed_from_u64(1);
        let size = enc.config.image_size;
        // The config's size, a batch of 2, and a smaller grid (resized tables, padded windows).
        for (batch, size) in [(1, size), (2, size), (1, size - 2 * enc.config.patch_size)] {
            let images: Images<Cpu> = dev.sample_normal_like(&(batch, 3, size, size));
            let want = enc.forward(images.clone());
            let got = host.forward(images);
            assert_eq!((got.height, got.width), (want.height, want.width));
            let err = max_abs_diff(&got.tokens.as_vec(), &want.tokens.as_vec());
            assert!(err <= 1e-4, "batch {batch} size {size}: {err}");
        }
    }

    #[test]
    fn bf16_weights_stay_within_bf16_rounding() {
        let enc = encoder();
        let dev: Cpu = Cpu::seed_from_u64(2);
        let size = enc.config.image_size;
        let images: Images<Cpu> = dev.sample_normal_like(&(1, 3, size, size));
        let want = enc.forward(images.clone()).tokens.as_vec();
        let got = HostSamImageEncoder::new(&enc, Dtype::Bf16)
            .forward(images)
            .tokens
            .as_vec();
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = max_abs_diff(&got, &want);
        assert!(err > 0.0, "bf16 weights changed nothing");
        assert!(err <= 0.05 * scale, "{err} against values up to {scale}");
    }
}
