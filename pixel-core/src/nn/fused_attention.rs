//! Softmax attention fused per block of queries, on the host: without a tape for inference and
//! frozen encoders, and on the tape with a backward pass that recomputes the scores.
//!
//! dfdx computes attention as whole-tensor steps: the scores, the bias added, the softmax's max,
//! subtraction, exponential, sum and division, each a fresh `[batch, heads, queries, keys]`
//! tensor. For SAM's global blocks at 1024 px that is 12 x 4096 x 4096 floats (805 MB) per
//! step, and profiling the ViT-B forward put a third of its time in those element-wise kernels
//! and in the kernel zeroing their fresh pages. Here each block of [`QUERY_BLOCK`] queries
//! computes its scores with one `gemm`, adds the bias, takes the softmax in place and multiplies
//! by the values with a second `gemm`, in a buffer that stays in cache. Blocks run in parallel.
//!
//! On a tape dfdx keeps each of those `[queries, keys]` tensors until the backward pass: for
//! EVA02-L at 384 px (16 heads x 730 x 730 per block) about 240 MB per block, 5.7 GB over 24
//! blocks, which alone kept `pixelllm-paper`'s training step from fitting in 24 GB.
//! [`attention_on_host`] keeps `q`, `k`, `v`, the output and one log-sum-exp per query, and
//! its backward pass recomputes each block's probabilities (as FlashAttention does).
use crate::nn::{elementwise, host_grad_mut, Heads};
use dfdx::prelude::*;
use rayon::prelude::*;
use std::sync::Arc;

/// Queries per block: a `[64, keys]` score buffer is 1 MB at 4096 keys.
pub const QUERY_BLOCK: usize = 64;

/// SAM's decomposed relative-position bias (`add_decomposed_rel_pos`): key `j = ky * kw + kx`
/// of query `i` gets `rel_h[i, ky] + rel_w[i, kx]`.
#[derive(Debug, Clone, Copy)]
pub struct DecomposedBias<'a> {
    /// `[batch * heads, queries, kh]`.
    pub rel_h: &'a [f32],
    /// `[batch * heads, queries, kw]`.
    pub rel_w: &'a [f32],
    pub kh: usize,
    pub kw: usize,
}

/// The shape of one attention: `groups` (batch x heads) independent `[queries, head_dim]` x
/// `[keys, head_dim]` problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub groups: usize,
    pub queries: usize,
    pub keys: usize,
    pub head_dim: usize,
}

/// `softmax(q k^T * scale + bias) v` for row-major `q` `[groups, queries, head_dim]`, `k` and
/// `v` `[groups, keys, head_dim]`; the result is `[groups, queries, head_dim]`.
///
/// Panics when a slice's length does not match `shape` (a caller's bug: it built them).
pub fn fused_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    scale: f32,
    bias: Option<DecomposedBias<'_>>,
) -> Vec<f32> {
    fused_attention_lse(q, k, v, shape, scale, bias).0
}

/// [`fused_attention`] and, per query, the log of its softmax's normaliser
/// (`log sum_j exp(s_ij)`, `[groups, queries]`), which the backward pass needs.
fn fused_attention_lse(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    scale: f32,
    bias: Option<DecomposedBias<'_>>,
) -> (Vec<f32>, Vec<f32>) {
    let AttentionShape {
        groups,
        queries,
        keys,
        head_dim: hd,
    } = shape;
    assert_eq!(
        q.len(),
        groups * queries * hd,
        "q must be [{groups}, {queries}, {hd}]"
    );
    assert_eq!(
        k.len(),
        groups * keys * hd,
        "k must be [{groups}, {keys}, {hd}]"
    );
    assert_eq!(
        v.len(),
        groups * keys * hd,
        "v must be [{groups}, {keys}, {hd}]"
    );
    if let Some(b) = bias {
        assert_eq!(
            b.kh * b.kw,
            keys,
            "the bias grid {}x{} is not {keys} keys",
            b.kh,
            b.kw
        );
        assert_eq!(b.rel_h.len(), groups * queries * b.kh);
        assert_eq!(b.rel_w.len(), groups * queries * b.kw);
    }
    let mut out = vec![0.0f32; groups * queries * hd];
    let mut lse = vec![0.0f32; groups * queries];
    let blocks_per_group = queries.div_ceil(QUERY_BLOCK);
    // Per group, per block of queries (a group's last block may be short).
    let tasks: Vec<(usize, usize)> = (0..groups)
        .flat_map(|g| (0..blocks_per_group).map(move |b| (g, b * QUERY_BLOCK)))
        .collect();
    let results: Vec<(usize, usize, Vec<f32>, Vec<f32>)> = tasks
        .into_par_iter()
        .map_init(Vec::new, |scores, (g, start)| {
            let rows = QUERY_BLOCK.min(queries - start);
            let q_block = &q[(g * queries + start) * hd..(g * queries + start + rows) * hd];
            let k_group = &k[g * keys * hd..(g + 1) * keys * hd];
            let v_group = &v[g * keys * hd..(g + 1) * keys * hd];
            scores.resize(rows * keys, 0.0);
            // scores[rows, keys] = scale * q_block k_group^T
            product(
                scores, rows, keys, hd, q_block, hd, 1, k_group, 1, hd, scale, false,
            );
            let mut block_lse = Vec::with_capacity(rows);
            for (r, row) in scores.chunks_exact_mut(keys).enumerate() {
                if let Some(b) = bias {
                    let i = g * queries + start + r;
                    let rh = &b.rel_h[i * b.kh..(i + 1) * b.kh];
                    let rw = &b.rel_w[i * b.kw..(i + 1) * b.kw];
                    for (ky, cells) in row.chunks_exact_mut(b.kw).enumerate() {
                        for (cell, w) in cells.iter_mut().zip(rw) {
                            *cell += rh[ky] + w;
                        }
                    }
                }
                block_lse.push(elementwise::softmax_in_place(row));
            }
            let mut block = vec![0.0f32; rows * hd];
            // block[rows, hd] = scores v_group
            product(
                &mut block, rows, hd, keys, scores, keys, 1, v_group, hd, 1, 1.0, false,
            );
            (g, start, block, block_lse)
        })
        .collect();
    for (g, start, block, block_lse) in results {
        let at = (g * queries + start) * hd;
        out[at..at + block.len()].copy_from_slice(&block);
        let at = g * queries + start;
        lse[at..at + block_lse.len()].copy_from_slice(&block_lse);
    }
    (out, lse)
}

/// The gradients `(dq, dk, dv)` of [`fused_attention`] without bias, from its inputs, output,
/// log-sum-exps and the output's gradient `d_out`. Per group and block of queries the
/// probabilities are recomputed from the log-sum-exps:
/// `dv += p^T d_out`, `ds = p * (d_out v^T - rowsum(d_out * out))`, `dq = scale ds k`,
/// `dk += scale ds^T q`. Groups run in parallel.
#[allow(clippy::too_many_arguments)]
fn fused_attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    shape: AttentionShape,
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let AttentionShape {
        groups,
        queries,
        keys,
        head_dim: hd,
    } = shape;
    let per_group: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..groups)
        .into_par_iter()
        .map(|g| {
            let q_group = &q[g * queries * hd..(g + 1) * queries * hd];
            let k_group = &k[g * keys * hd..(g + 1) * keys * hd];
            let v_group = &v[g * keys * hd..(g + 1) * keys * hd];
            let (mut dq, mut dk, mut dv) = (
                vec![0.0f32; queries * hd],
                vec![0.0f32; keys * hd],
                vec![0.0f32; keys * hd],
            );
            let (mut probs, mut d_scores) = (Vec::new(), Vec::new());
            for start in (0..queries).step_by(QUERY_BLOCK) {
                let rows = QUERY_BLOCK.min(queries - start);
                let at = (g * queries + start) * hd;
                let q_block = &q_group[start * hd..(start + rows) * hd];
                let dout_block = &d_out[at..at + rows * hd];
                let out_block = &out[at..at + rows * hd];
                probs.resize(rows * keys, 0.0);
                d_scores.resize(rows * keys, 0.0);
                // probs[rows, keys] = exp(scale q_block k^T - lse)
                product(
                    &mut probs, rows, keys, hd, q_block, hd, 1, k_group, 1, hd, scale, false,
                );
                for (r, row) in probs.chunks_exact_mut(keys).enumerate() {
                    let l = lse[g * queries + start + r];
                    elementwise::exp_shifted_in_place(row, l);
                }
                // dv[keys, hd] += probs^T dout_block
                product(
                    &mut dv, keys, hd, rows, &probs, 1, keys, dout_block, hd, 1, 1.0, true,
                );
                // d_scores[rows, keys] = dout_block v^T, then p * (dp - rowsum(dout * out))
                product(
                    &mut d_scores,
                    rows,
                    keys,
                    hd,
                    dout_block,
                    hd,
                    1,
                    v_group,
                    1,
                    hd,
                    1.0,
                    false,
                );
                for r in 0..rows {
                    let (dout_row, out_row) =
                        (&dout_block[r * hd..][..hd], &out_block[r * hd..][..hd]);
                    let delta: f32 = dout_row.iter().zip(out_row).map(|(a, b)| a * b).sum();
                    let (p_row, ds_row) = (
                        &probs[r * keys..][..keys],
                        &mut d_scores[r * keys..][..keys],
                    );
                    for (ds, p) in ds_row.iter_mut().zip(p_row) {
                        *ds = p * (*ds - delta);
                    }
                }
                // dq[rows, hd] = scale d_scores k
                product(
                    &mut dq[start * hd..(start + rows) * hd],
                    rows,
                    hd,
                    keys,
                    &d_scores,
                    keys,
                    1,
                    k_group,
                    hd,
                    1,
                    scale,
                    false,
                );
                // dk[keys, hd] += scale d_scores^T q_block
                product(
                    &mut dk, keys, hd, rows, &d_scores, 1, keys, q_block, hd, 1, scale, true,
                );
            }
            (dq, dk, dv)
        })
        .collect();
    let (mut dq, mut dk, mut dv) = (Vec::new(), Vec::new(), Vec::new());
    for (q_part, k_part, v_part) in per_group {
        dq.extend(q_part);
        dk.extend(k_part);
        dv.extend(v_part);
    }
    (dq, dk, dv)
}

/// `softmax(scale * q k^T) v` on the host, for `q` `[batch, heads, queries, head_dim]` and `k`,
/// `v` `[batch, heads, keys, head_dim]`, on `q`'s tape: the backward op keeps `q`, `k`, `v`,
/// the output and the log-sum-exps, and adds each input's gradient
/// ([`fused_attention_backward`]). CPU only: [`crate::nn::attention`] calls it for the CPU
/// device, and dfdx's ops otherwise.
pub fn attention_on_host<D: Device<f32>, T: Tape<f32, D>>(
    q: Heads<D, T>,
    k: Heads<D, T>,
    v: Heads<D, T>,
    scale: f32,
) -> Heads<D, T> {
    let (batch, heads, queries, hd) = *q.shape();
    let keys = k.shape().2;
    let shape = AttentionShape {
        groups: batch * heads,
        queries,
        keys,
        head_dim: hd,
    };
    // Contiguous, so that the host copies and the gradient buffers are in logical order.
    let (q, q_tape) = q.contiguous().split_tape();
    let (k, k_tape) = k.contiguous().split_tape();
    let (v, v_tape) = v.contiguous().split_tape();
    let mut tape = q_tape.merge(k_tape).merge(v_tape);
    let (q_host, k_host, v_host) = (q.as_vec(), k.as_vec(), v.as_vec());
    let (out_host, lse) = fused_attention_lse(&q_host, &k_host, &v_host, shape, scale, None);
    let out_shape = (batch, heads, queries, hd);
    if !T::OWNS_TAPE {
        return q
            .device()
            .tensor_from_vec(out_host, out_shape)
            .put_tape(tape);
    }
    // The backward op keeps a copy of the output; without a tape none is made.
    let out = q.device().tensor_from_vec(out_host.clone(), out_shape);
    let ids = (q.ghost(), k.ghost(), v.ghost(), out.ghost());
    let saved = Arc::new((q_host, k_host, v_host, out_host, lse));
    tape.add_backward_op(move |grads| {
        let (q_id, k_id, v_id, out_id) = &ids;
        let (q, k, v, out, lse) = &*saved;
        let d_out = host_grad_mut(grads.get_or_alloc_mut(out_id)?).to_vec();
        let (dq, dk, dv) = fused_attention_backward(q, k, v, out, lse, &d_out, shape, scale);
        for (id, d) in [(q_id, dq), (k_id, dk), (v_id, dv)] {
            for (g, x) in host_grad_mut(grads.get_or_alloc_mut(id)?).iter_mut().zip(d) {
                *g += x;
            }
        }
        Ok(())
    });
    out.put_tape(tape)
}

/// `dst[m, n] = scale * lhs[m, k] rhs[k, n]` (`+=` when `accumulate`), `dst` row-major and
/// contiguous; `lhs` and `rhs` with the given row and column strides.
#[allow(clippy::too_many_arguments)]
fn product(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_row: usize,
    lhs_col: usize,
    rhs: &[f32],
    rhs_row: usize,
    rhs_col: usize,
    scale: f32,
    accumulate: bool,
) {
    debug_assert!(dst.len() >= m * n);
    // SAFETY: every index the strides reach is in bounds for the slices the callers pass:
    // `lhs` holds m rows of k values and `rhs` k rows of n values in the layouts named.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_col as isize,
            lhs_row as isize,
            rhs.as_ptr(),
            rhs_col as isize,
            rhs_row as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Heads;
    use proptest::prelude::*;

    /// The direct formula in f64.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        s: AttentionShape,
        scale: f32,
        bias: Option<DecomposedBias<'_>>,
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; s.groups * s.queries * s.head_dim];
        for g in 0..s.groups {
            for i in 0..s.queries {
                let qi = &q[(g * s.queries + i) * s.head_dim..][..s.head_dim];
                let logits: Vec<f64> = (0..s.keys)
                    .map(|j| {
                        let kj = &k[(g * s.keys + j) * s.head_dim..][..s.head_dim];
                        let dot: f64 = qi.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let extra = bias.map_or(0.0, |b| {
                            let row = g * s.queries + i;
                            (b.rel_h[row * b.kh + j / b.kw] + b.rel_w[row * b.kw + j % b.kw]) as f64
                        });
                        dot * scale as f64 + extra
                    })
                    .collect();
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for d in 0..s.head_dim {
                    let value: f64 = (0..s.keys)
                        .map(|j| weights[j] / total * v[(g * s.keys + j) * s.head_dim + d] as f64)
                        .sum();
                    out[(g * s.queries + i) * s.head_dim + d] = value as f32;
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| ((((i as u64 + seed) * 2654435761) % 2001) as f32 - 1000.0) / 500.0)
            .collect()
    }

    type Taped = Heads<Cpu, OwnedTape<f32, Cpu>>;

    /// Output and the gradients of `sum(out * r)` for `q`, `k`, `v` through `attend`.
    fn output_and_grads(
        dev: &Cpu,
        (q, k, v): (&Heads<Cpu>, &Heads<Cpu>, &Heads<Cpu>),
        r: &Heads<Cpu>,
        attend: impl Fn(Taped, Taped, Taped) -> Taped,
    ) -> [Vec<f32>; 4] {
        let copy = |t: &Heads<Cpu>| dev.tensor_from_vec(t.as_vec(), *t.shape());
        let (q, k, v) = (copy(q), copy(k), copy(v));
        let grads = Gradients::leaky();
        let out = attend(
            q.trace(grads.clone()),
            k.trace(grads.clone()),
            v.trace(grads),
        );
        let values = out.retaped::<NoneTape>().as_vec();
        let grads = (out * r.clone()).sum().backward();
        [
            values,
            grads.get(&q).as_vec(),
            grads.get(&k).as_vec(),
            grads.get(&v).as_vec(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// On the tape, values and the gradients of q, k and v equal dfdx's attention, for
        /// query counts on both sides of a block and fewer or more keys than queries.
        #[test]
        fn on_the_tape_equals_dfdx(
            batch in 1usize..3, heads in 1usize..3, queries in 1usize..140, keys in 1usize..90,
            head_dim in 1usize..9, seed in 0u64..1000,
        ) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let q: Heads<Cpu> = dev.sample_normal_like(&(batch, heads, queries, head_dim));
            let k: Heads<Cpu> = dev.sample_normal_like(&(batch, heads, keys, head_dim));
            let v: Heads<Cpu> = dev.sample_normal_like(&(batch, heads, keys, head_dim));
            let r: Heads<Cpu> = dev.sample_normal_like(&(batch, heads, queries, head_dim));
            let scale = 1.0 / (head_dim as f32).sqrt();
            let fused = output_and_grads(&dev, (&q, &k, &v), &r, |q, k, v| {
                attention_on_host(q, k, v, scale)
            });
            let dfdx = output_and_grads(&dev, (&q, &k, &v), &r, |q, k, v| {
                (q.matmul(k.permute::<_, Axes4<0, 1, 3, 2>>()) * scale)
                    .softmax::<Axis<3>>()
                    .matmul(v)
            });
            for (what, (got, want)) in ["out", "dq", "dk", "dv"].iter().zip(fused.iter().zip(&dfdx)) {
                for (g, w) in got.iter().zip(want) {
                    prop_assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{what}: {g} vs {w}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Equal to the formula, with and without SAM's decomposed bias, for query counts on
        /// both sides of a block.
        #[test]
        fn equals_the_formula(
            groups in 1usize..4, queries in 1usize..150, kh in 1usize..7, kw in 1usize..7,
            head_dim in 1usize..9, with_bias: bool, seed in 0u64..100,
        ) {
            let s = AttentionShape { groups, queries, keys: kh * kw, head_dim };
            let q = values(groups * queries * head_dim, seed);
            let k = values(groups * s.keys * head_dim, seed + 1);
            let v = values(groups * s.keys * head_dim, seed + 2);
            let rel_h = values(groups * queries * kh, seed + 3);
            let rel_w = values(groups * queries * kw, seed + 4);
            let bias = with_bias.then_some(DecomposedBias { rel_h: &rel_h, rel_w: &rel_w, kh, kw });
            let scale = 1.0 / (head_dim as f32).sqrt();
            let got = fused_attention(&q, &k, &v, s, scale, bias);
            let want = reference(&q, &k, &v, s, scale, bias);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                prop_assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "[{i}] {g} vs {w}");
            }
        }
    }
}
