//! Building blocks of the host inference paths ([`crate::HostEva02`],
//! [`crate::sam::HostSamImageEncoder`]): LayerNorms and linear layers on row-major `[rows,
//! width]` buffers, and the moves between token rows and attention heads.
use crate::layers::{Dense, Norm};
use dfdx::prelude::*;
use pixel_core::host_matrix::{Dtype, HostMatrix};
use pixel_core::nn::elementwise::layer_norm_in_place;
use pixel_core::nn::fused_attention::AttentionShape;
use pixel_core::params::ParamTensor;
use rayon::prelude::*;

/// Rows per task in the row-wise passes (LayerNorm, RoPE, the gate): a few hundred KB.
pub(crate) const ROWS_PER_TASK: usize = 32;

/// A LayerNorm's affine parameters.
#[derive(Debug, Clone)]
pub(crate) struct HostNorm {
    pub(crate) weight: Vec<f32>,
    pub(crate) bias: Vec<f32>,
    pub(crate) eps: f32,
}

impl HostNorm {
    pub(crate) fn new<I: Dim>(norm: &Norm<I, Cpu>) -> Self {
        HostNorm {
            weight: norm.weight.as_vec(),
            bias: norm.bias.as_vec(),
            eps: norm.eps as f32,
        }
    }

    /// Every row of `x` normalized in place, rows in parallel.
    pub(crate) fn rows_in_place(&self, x: &mut [f32]) {
        let width = self.weight.len();
        x.par_chunks_mut(width * ROWS_PER_TASK).for_each(|rows| {
            for row in rows.chunks_exact_mut(width) {
                layer_norm_in_place(row, &self.weight, &self.bias, self.eps);
            }
        });
    }

    /// `out` = the rows of `x` normalized.
    pub(crate) fn rows_into(&self, x: &[f32], out: &mut Vec<f32>) {
        out.clear();
        out.extend_from_slice(x);
        self.rows_in_place(out);
    }
}

/// One linear layer's weight and bias (zeros where it has none), possibly several stacked.
#[derive(Debug, Clone)]
pub(crate) struct HostLinear {
    pub(crate) weight: HostMatrix,
    pub(crate) bias: Vec<f32>,
}

impl HostLinear {
    /// The layers' weights stacked by output rows (q, k, v; SwiGLU's gate and value), in
    /// `dtype`.
    pub(crate) fn stacked<I: Dim, O: Dim>(layers: &[&Dense<I, O, Cpu>], dtype: Dtype) -> Self {
        let inp = layers[0].weight.dims()[1];
        let (mut weight, mut bias) = (Vec::new(), Vec::new());
        for layer in layers {
            let out = layer.weight.dims()[0];
            weight.extend(layer.weight.values());
            match &layer.bias {
                Some(b) => bias.extend(b.as_vec()),
                None => bias.extend(std::iter::repeat_n(0.0, out)),
            }
        }
        HostLinear {
            weight: HostMatrix::from_f32(bias.len(), inp, weight, dtype),
            bias,
        }
    }

    /// `out = x W^T + b`.
    pub(crate) fn forward_into(&self, x: &[f32], out: &mut Vec<f32>) {
        let rows = x.len() / self.weight.cols();
        out.clear();
        for _ in 0..rows {
            out.extend_from_slice(&self.bias);
        }
        self.weight.matmul_t_add(x, out);
    }

    /// `residual += x W^T + b`.
    pub(crate) fn add_to(&self, x: &[f32], residual: &mut [f32]) {
        residual
            .chunks_exact_mut(self.bias.len())
            .for_each(|row| row.iter_mut().zip(&self.bias).for_each(|(r, b)| *r += b));
        self.weight.matmul_t_add(x, residual);
    }
}

/// The token grid: `batch` images of `tokens` (class token first), `channels` wide.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub(crate) batch: usize,
    pub(crate) tokens: usize,
    pub(crate) channels: usize,
}

/// `qkv` `[batch * tokens, 3C]` split into q, k and v `[batch * heads, tokens, head_dim]`
/// (in `out`), and the shape of their self-attention.
pub(crate) fn split_qkv(
    qkv: &[f32],
    layout: Layout,
    heads: usize,
    out: &mut [Vec<f32>; 3],
) -> AttentionShape {
    for (part, buffer) in out.iter_mut().enumerate() {
        split_heads(qkv, part, layout, heads, buffer);
    }
    AttentionShape {
        groups: layout.batch * heads,
        queries: layout.tokens,
        keys: layout.tokens,
        head_dim: layout.channels / heads,
    }
}

/// Part `part` (0 q, 1 k, 2 v) of `qkv` `[batch * tokens, 3C]` as `[batch * heads, tokens,
/// head_dim]`.
fn split_heads(qkv: &[f32], part: usize, layout: Layout, heads: usize, out: &mut Vec<f32>) {
    let Layout {
        tokens, channels, ..
    } = layout;
    let head_dim = channels / heads;
    out.resize(qkv.len() / 3, 0.0);
    out.par_chunks_mut(tokens * head_dim)
        .enumerate()
        .for_each(|(group, dst)| {
            let (image, head) = (group / heads, group % heads);
            for (t, d) in dst.chunks_exact_mut(head_dim).enumerate() {
                let at = (image * tokens + t) * 3 * channels + part * channels + head * head_dim;
                d.copy_from_slice(&qkv[at..at + head_dim]);
            }
        });
}

/// `[batch * heads, tokens, head_dim]` back to `[batch * tokens, C]`.
pub(crate) fn merge_heads(by_head: &[f32], layout: Layout, heads: usize, out: &mut Vec<f32>) {
    let Layout {
        tokens, channels, ..
    } = layout;
    let head_dim = channels / heads;
    out.resize(by_head.len(), 0.0);
    out.par_chunks_mut(channels)
        .enumerate()
        .for_each(|(row, dst)| {
            let (image, t) = (row / tokens, row % tokens);
            for (head, d) in dst.chunks_exact_mut(head_dim).enumerate() {
                let at = ((image * heads + head) * tokens + t) * head_dim;
                d.copy_from_slice(&by_head[at..at + head_dim]);
            }
        });
}
