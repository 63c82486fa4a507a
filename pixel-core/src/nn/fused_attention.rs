//! Softmax attention without a tape, fused per block of queries, for inference and frozen
//! encoders.
//!
//! dfdx computes attention as whole-tensor steps: the scores, the bias added, the softmax's max,
//! subtraction, exponential, sum and division, each a fresh `[batch, heads, queries, keys]`
//! tensor. For SAM's global blocks at 1024 px that is 12 x 4096 x 4096 floats (805 MB) per
//! step, and profiling the ViT-B forward put a third of its time in those element-wise kernels
//! and in the kernel zeroing their fresh pages. Here each block of [`QUERY_BLOCK`] queries
//! computes its scores with one `gemm`, adds the bias, takes the softmax in place and multiplies
//! by the values with a second `gemm`, in a buffer that stays in cache. Blocks run in parallel.
use rayon::prelude::*;

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
    let blocks_per_group = queries.div_ceil(QUERY_BLOCK);
    // Per group, per block of queries (a group's last block may be short).
    let tasks: Vec<(usize, usize)> = (0..groups)
        .flat_map(|g| (0..blocks_per_group).map(move |b| (g, b * QUERY_BLOCK)))
        .collect();
    let results: Vec<(usize, usize, Vec<f32>)> = tasks
        .into_par_iter()
        .map_init(Vec::new, |scores, (g, start)| {
            let rows = QUERY_BLOCK.min(queries - start);
            let q_block = &q[(g * queries + start) * hd..(g * queries + start + rows) * hd];
            let k_group = &k[g * keys * hd..(g + 1) * keys * hd];
            let v_group = &v[g * keys * hd..(g + 1) * keys * hd];
            scores.resize(rows * keys, 0.0);
            // scores[rows, keys] = scale * q_block k_group^T
            product(
                scores, rows, keys, hd, q_block, hd, 1, k_group, 1, hd, scale,
            );
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
                softmax_in_place(row);
            }
            let mut block = vec![0.0f32; rows * hd];
            // block[rows, hd] = scores v_group
            product(
                &mut block, rows, hd, keys, scores, keys, 1, v_group, hd, 1, 1.0,
            );
            (g, start, block)
        })
        .collect();
    for (g, start, block) in results {
        let at = (g * queries + start) * hd;
        out[at..at + block.len()].copy_from_slice(&block);
    }
    out
}

/// `dst[m, n] = scale * lhs[m, k] rhs[k, n]`, `dst` row-major and contiguous; `lhs` and `rhs`
/// with the given row and column strides.
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
            false,
            lhs.as_ptr(),
            lhs_col as isize,
            lhs_row as isize,
            rhs.as_ptr(),
            rhs_col as isize,
            rhs_row as isize,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `row <- softmax(row)`, stable (the maximum subtracted first).
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
