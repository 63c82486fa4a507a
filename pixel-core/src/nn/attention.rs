//! Scaled dot-product attention with an additive bias, and SAM-style multi-head attention.
use crate::error::Result;
use crate::nn::recording::note_attention;
use crate::nn::{Heads, Linear, Seq};
use crate::params::{join, ParamVisitor, Params};
use dfdx::prelude::*;

/// The additive bias that removes a key from attention; finite, so fully masked rows stay finite.
pub const MASKED: f32 = -1e9;

/// `[batch, tokens, heads * head_dim]` -> `[batch, heads, tokens, head_dim]`.
pub fn split_heads<C: ConstDim, D: Device<f32>, T: Tape<f32, D>>(
    x: Seq<C, D, T>,
    heads: usize,
) -> Heads<D, T> {
    let (b, s, _) = *x.shape();
    assert_eq!(
        C::SIZE % heads,
        0,
        "{} channels do not split into {heads} heads",
        C::SIZE
    );
    x.reshape_like(&(b, s, heads, C::SIZE / heads))
        .permute::<_, Axes4<0, 2, 1, 3>>()
}

/// `[batch, heads, tokens, head_dim]` -> `[batch, tokens, heads * head_dim]`.
pub fn merge_heads<C: ConstDim, D: Device<f32>, T: Tape<f32, D>>(x: Heads<D, T>) -> Seq<C, D, T> {
    let (b, h, s, dk) = *x.shape();
    assert_eq!(
        h * dk,
        C::SIZE,
        "{h} heads of {dk} do not make {} channels",
        C::SIZE
    );
    x.permute::<_, Axes4<0, 2, 1, 3>>()
        .reshape_like(&(b, s, C::default()))
}

/// Scores per head from which [`attention`] runs on the host. The tiny preset's attentions
/// (65 x 65 at most) stay with dfdx: with every attention on the host the demo took 9:01
/// instead of 8:36, the copies costing more than the small `[queries, keys]` tensors they save.
const HOST_ATTENTION_MIN_SCORES: usize = 128 * 128;

/// `softmax(scale * q k^T) v`. On the CPU device it runs fused on the host
/// ([`crate::nn::fused_attention::attention_on_host`]: no `[queries, keys]` tensor is kept for
/// the backward pass) from [`HOST_ATTENTION_MIN_SCORES`] scores per head, unless an
/// attention recording needs the probabilities or the values' width differs from the keys'.
pub fn attention<D: Device<f32>, T: Tape<f32, D>>(
    q: Heads<D, T>,
    k: Heads<D, T>,
    v: Heads<D, T>,
    scale: f32,
) -> Heads<D, T> {
    let (queries, keys) = (q.shape().2, k.shape().2);
    if std::any::TypeId::of::<D>() == std::any::TypeId::of::<Cpu>()
        && !crate::nn::recording::is_recording()
        && v.shape().3 == q.shape().3
        && queries * keys >= HOST_ATTENTION_MIN_SCORES
    {
        return crate::nn::fused_attention::attention_on_host(q, k, v, scale);
    }
    let scores = q.matmul(k.permute::<_, Axes4<0, 1, 3, 2>>()) * scale;
    let probs = scores.softmax::<Axis<3>>();
    note_attention(&probs);
    probs.matmul(v)
}

/// `softmax(scale * q k^T + bias) v`; `bias` is `[batch, heads, queries, keys]` and may carry
/// gradients (T5's relative position bias, SAM's decomposed relative positions).
pub fn attention_with_bias<D: Device<f32>, T, R: Tape<f32, D>>(
    q: Heads<D, T>,
    k: Heads<D, T>,
    v: Heads<D, T>,
    bias: Heads<D, R>,
    scale: f32,
) -> Heads<D, T>
where
    T: Tape<f32, D> + Merge<R>,
{
    let scores = q.matmul(k.permute::<_, Axes4<0, 1, 3, 2>>()) * scale;
    let probs = (scores + bias).softmax::<Axis<3>>();
    note_attention(&probs);
    probs.matmul(v)
}

/// Bias `[batch, heads, queries, keys]` that hides padded keys; `keep[b * keys + j]` is true
/// for a real token.
pub fn padding_bias<D: Device<f32>>(
    dev: &D,
    keep: &[bool],
    batch: usize,
    heads: usize,
    queries: usize,
    keys: usize,
) -> Heads<D> {
    assert_eq!(
        keep.len(),
        batch * keys,
        "padding mask has {} entries, expected {batch} x {keys}",
        keep.len()
    );
    let mut values = Vec::with_capacity(batch * heads * queries * keys);
    for b in 0..batch {
        let row: Vec<f32> = keep[b * keys..(b + 1) * keys]
            .iter()
            .map(|&k| if k { 0.0 } else { MASKED })
            .collect();
        for _ in 0..heads * queries {
            values.extend_from_slice(&row);
        }
    }
    dev.tensor_from_vec(values, (batch, heads, queries, keys))
}

/// Bias `[batch, heads, queries, keys]` that lets query `i` see keys `j <= i + offset` only;
/// `offset` is the number of cached keys before the first query when decoding step by step.
pub fn causal_bias<D: Device<f32>>(
    dev: &D,
    batch: usize,
    heads: usize,
    queries: usize,
    keys: usize,
    offset: usize,
) -> Heads<D> {
    let mut values = Vec::with_capacity(batch * heads * queries * keys);
    for _ in 0..batch * heads {
        for i in 0..queries {
            values.extend((0..keys).map(|j| if j <= i + offset { 0.0 } else { MASKED }));
        }
    }
    dev.tensor_from_vec(values, (batch, heads, queries, keys))
}

/// SAM's `Attention`: projections to an inner dim (embedding / downsample rate), heads, output
/// projection; names `q_proj`, `k_proj`, `v_proj`, `out_proj`.
#[derive(Debug, Clone)]
pub struct MultiHeadAttention<M: ConstDim, Inner: ConstDim, D: Device<f32>> {
    pub q_proj: Linear<M, Inner, D>,
    pub k_proj: Linear<M, Inner, D>,
    pub v_proj: Linear<M, Inner, D>,
    pub out_proj: Linear<Inner, M, D>,
    pub heads: usize,
}

impl<M: ConstDim, Inner: ConstDim, D: Device<f32>> MultiHeadAttention<M, Inner, D> {
    pub fn new(dev: &D, heads: usize) -> Self {
        assert_eq!(
            Inner::SIZE % heads,
            0,
            "inner dim {} must divide into {heads} heads",
            Inner::SIZE
        );
        MultiHeadAttention {
            q_proj: Linear::new(dev, true),
            k_proj: Linear::new(dev, true),
            v_proj: Linear::new(dev, true),
            out_proj: Linear::new(dev, true),
            heads,
        }
    }

    /// Attends from `q` to `k`/`v`; `key_keep` (`[batch * keys]`, true = real) hides padding.
    pub fn forward<T: Tape<f32, D>>(
        &self,
        q: Seq<M, D, T>,
        k: Seq<M, D, T>,
        v: Seq<M, D, T>,
        key_keep: Option<&[bool]>,
    ) -> Seq<M, D, T> {
        let (batch, queries, _) = *q.shape();
        let keys = k.shape().1;
        let q = split_heads(self.q_proj.forward(q), self.heads);
        let k = split_heads(self.k_proj.forward(k), self.heads);
        let v = split_heads(self.v_proj.forward(v), self.heads);
        let scale = 1.0 / ((Inner::SIZE / self.heads) as f32).sqrt();
        let out = match key_keep {
            Some(keep) => {
                let bias =
                    padding_bias(&q.device().clone(), keep, batch, self.heads, queries, keys);
                attention_with_bias(q, k, v, bias, scale)
            }
            None => attention(q, k, v, scale),
        };
        self.out_proj.forward(merge_heads::<Inner, D, T>(out))
    }
}

impl<M: ConstDim, Inner: ConstDim, D: Device<f32>> Params<D> for MultiHeadAttention<M, Inner, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.q_proj.visit_params(&join(prefix, "q_proj"), v)?;
        self.k_proj.visit_params(&join(prefix, "k_proj"), v)?;
        self.v_proj.visit_params(&join(prefix, "v_proj"), v)?;
        self.out_proj.visit_params(&join(prefix, "out_proj"), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_close;
    use proptest::prelude::*;

    type Mha = MultiHeadAttention<Const<8>, Const<8>, Cpu>;

    #[test]
    fn attention_matches_a_direct_loop() {
        let dev: Cpu = Cpu::seed_from_u64(3);
        let q: Heads<Cpu> = dev.sample_normal_like(&(1, 1, 2, 3));
        let k: Heads<Cpu> = dev.sample_normal_like(&(1, 1, 4, 3));
        let v: Heads<Cpu> = dev.sample_normal_like(&(1, 1, 4, 2));
        let out = attention(q.clone(), k.clone(), v.clone(), 0.5).as_vec();
        let (qv, kv, vv) = (q.as_vec(), k.as_vec(), v.as_vec());
        for i in 0..2 {
            let scores: Vec<f32> = (0..4)
                .map(|j| 0.5 * (0..3).map(|d| qv[i * 3 + d] * kv[j * 3 + d]).sum::<f32>())
                .collect();
            let max = scores.iter().cloned().fold(f32::MIN, f32::max);
            let exp: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f32 = exp.iter().sum();
            for d in 0..2 {
                let expected: f32 = (0..4).map(|j| exp[j] / total * vv[j * 2 + d]).sum();
                assert!((out[i * 2 + d] - expected).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn attention_on_the_host_equals_dfdx_above_the_threshold() {
        // 130 x 130 scores per head: past HOST_ATTENTION_MIN_SCORES, so the host path runs.
        let dev: Cpu = Cpu::seed_from_u64(4);
        let q: Heads<Cpu> = dev.sample_normal_like(&(1, 2, 130, 8));
        let k: Heads<Cpu> = dev.sample_normal_like(&(1, 2, 130, 8));
        let v: Heads<Cpu> = dev.sample_normal_like(&(1, 2, 130, 8));
        const { assert!(130 * 130 >= HOST_ATTENTION_MIN_SCORES) };
        let got = attention(q.clone(), k.clone(), v.clone(), 0.3).as_vec();
        let want = (q.matmul(k.permute::<_, Axes4<0, 1, 3, 2>>()) * 0.3)
            .softmax::<Axis<3>>()
            .matmul(v)
            .as_vec();
        crate::testing::assert_close(&got, &want, 1e-5);
    }

    #[test]
    fn split_then_merge_heads_is_identity() {
        let dev: Cpu = Cpu::seed_from_u64(1);
        let x: Seq<Const<12>, Cpu> = dev.sample_normal_like(&(2, 5, Const));
        let back = merge_heads::<Const<12>, Cpu, NoneTape>(split_heads(x.clone(), 3));
        assert_eq!(back.as_vec(), x.as_vec());
    }

    #[test]
    fn causal_bias_hides_the_future() {
        let dev: Cpu = Cpu::seed_from_u64(1);
        let bias = causal_bias(&dev, 1, 1, 3, 3, 0).as_vec();
        assert_eq!(bias[1], MASKED);
        assert_eq!(bias[3], 0.0);
        assert_eq!(bias[8], 0.0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn masked_keys_do_not_change_output(seed in 0u64..1000, real in 1usize..5, padded in 1usize..4) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let mha = Mha::new(&dev, 2);
            let q: Seq<Const<8>, Cpu> = dev.sample_normal_like(&(1, 3, Const));
            let kv_real: Seq<Const<8>, Cpu> = dev.sample_normal_like(&(1, real, Const));
            let junk: Seq<Const<8>, Cpu> = dev.sample_normal_like(&(1, padded, Const));
            let kv_padded = (kv_real.clone(), junk).concat_along(Axis::<1>).realize::<(usize, usize, Const<8>)>();
            let keep: Vec<bool> = (0..real + padded).map(|j| j < real).collect();
            let unpadded = mha.forward(q.clone(), kv_real.clone(), kv_real, None).as_vec();
            let masked = mha.forward(q, kv_padded.clone(), kv_padded, Some(&keep)).as_vec();
            assert_close(&masked, &unpadded, 1e-5);
        }
    }
}
