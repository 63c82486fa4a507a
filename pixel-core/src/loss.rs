//! The training losses of PixelLLM: label-smoothed cross-entropy for text, masked L1 for locations.
use crate::error::{CoreError, Result};
use crate::nn::Seq;
use dfdx::prelude::*;

/// Mean over supervised tokens of the cross-entropy against the smoothed target that scenic's
/// PixelLLM (after GRiT) uses: `1 - eps` on the target, `eps / (V - 1)` on every other piece.
///
/// `logits` is `[batch, tokens, vocab]`, `targets` and `weights` are `[batch * tokens]`; a token
/// with weight 0 (padding, prompt) is ignored. Errors when no token is supervised.
pub fn label_smoothed_cross_entropy<V: ConstDim, D: Device<f32>, T: Tape<f32, D>>(
    logits: Seq<V, D, T>,
    targets: &[usize],
    weights: &[f32],
    smoothing: f32,
) -> Result<Tensor<(), f32, D, T>> {
    let (b, t, _) = *logits.shape();
    check_len("targets", targets.len(), b * t)?;
    check_len("weights", weights.len(), b * t)?;
    if let Some(bad) = targets
        .iter()
        .zip(weights)
        .find(|(&id, &w)| w > 0.0 && id >= V::SIZE)
    {
        return Err(CoreError::Invalid(format!(
            "target id {} is outside the vocabulary of {}",
            bad.0,
            V::SIZE
        )));
    }
    let total: f32 = weights.iter().sum();
    if total <= 0.0 {
        return Err(CoreError::Invalid(
            "cross-entropy over a batch with no supervised token".into(),
        ));
    }
    let dev = logits.device().clone();
    let log_probs = logits.log_softmax::<Axis<2>>();
    let mean_log_prob = log_probs.retaped::<T>().mean::<(usize, usize), Axis<2>>();
    let safe_targets: Vec<usize> = targets.iter().map(|&id| id.min(V::SIZE - 1)).collect();
    let target_log_prob = log_probs.select(dev.tensor_from_vec(safe_targets, (b, t)));
    // -[(1 - eps) lp_t + eps / (V - 1) * (sum_v lp_v - lp_t)], with sum_v = V * mean_v.
    let v = V::SIZE as f32;
    let on_target = 1.0 - smoothing - smoothing / (v - 1.0);
    let on_mean = smoothing * v / (v - 1.0);
    let per_token = target_log_prob * -on_target - mean_log_prob * on_mean;
    let weights = dev.tensor_from_vec(weights.to_vec(), (b, t));
    Ok((per_token * weights).sum() / total)
}

/// Mean absolute error over the entries whose weight is 1: `sum(|p - t| * w) / sum(w)`.
pub fn masked_l1<S: Shape, D: Device<f32>, T: Tape<f32, D>>(
    predictions: Tensor<S, f32, D, T>,
    targets: &[f32],
    weights: &[f32],
) -> Result<Tensor<(), f32, D, T>> {
    let shape = *predictions.shape();
    check_len("targets", targets.len(), shape.num_elements())?;
    check_len("weights", weights.len(), shape.num_elements())?;
    let total: f32 = weights.iter().sum();
    if total <= 0.0 {
        return Err(CoreError::Invalid(
            "L1 loss over a batch with no supervised location".into(),
        ));
    }
    let dev = predictions.device().clone();
    let targets = dev.tensor_from_vec(targets.to_vec(), shape);
    let weights = dev.tensor_from_vec(weights.to_vec(), shape);
    Ok(((predictions - targets).abs() * weights).sum() / total)
}

fn check_len(what: &str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(CoreError::Shape(format!(
            "{what} has {got} entries, expected {expected}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference_ce(
        logits: &[f32],
        vocab: usize,
        targets: &[usize],
        weights: &[f32],
        eps: f32,
    ) -> f32 {
        let mut total = 0.0;
        for (i, row) in logits.chunks(vocab).enumerate() {
            let max = row.iter().cloned().fold(f32::MIN, f32::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
            let logp: Vec<f32> = row.iter().map(|v| v - lse).collect();
            let others: f32 = (0..vocab)
                .filter(|&v| v != targets[i])
                .map(|v| -logp[v])
                .sum();
            total +=
                weights[i] * ((1.0 - eps) * -logp[targets[i]] + eps / (vocab - 1) as f32 * others);
        }
        total / weights.iter().sum::<f32>()
    }

    #[test]
    fn no_supervised_token_is_an_error() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let logits: Seq<Const<5>, Cpu> = dev.sample_normal_like(&(1, 2, Const));
        assert!(label_smoothed_cross_entropy(logits, &[0, 1], &[0.0, 0.0], 0.1).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn cross_entropy_matches_its_definition(seed in 0u64..1000, eps in 0.0f32..0.3, ignored in 0usize..6) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let logits: Seq<Const<7>, Cpu> = dev.sample_normal_like(&(2, 3, Const));
            let targets = vec![0, 3, 6, 2, 5, 1];
            let mut weights = vec![1.0; 6];
            weights[ignored] = 0.0;
            let expected = reference_ce(&logits.as_vec(), 7, &targets, &weights, eps);
            let got = label_smoothed_cross_entropy(logits, &targets, &weights, eps).unwrap().array();
            prop_assert!((got - expected).abs() < 1e-4, "{got} vs {expected}");
        }

        #[test]
        fn ignored_tokens_get_no_gradient(seed in 0u64..1000) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let logits: Seq<Const<4>, Cpu> = dev.sample_normal_like(&(1, 2, Const));
            let loss = label_smoothed_cross_entropy(logits.leaky_trace(), &[1, 2], &[1.0, 0.0], 0.1).unwrap();
            let grads = loss.backward();
            let g = grads.get(&logits).as_vec();
            prop_assert!(g[4..].iter().all(|v| *v == 0.0));
            prop_assert!(g[..4].iter().any(|v| *v != 0.0));
        }

        #[test]
        fn masked_l1_ignores_masked_entries(seed in 0u64..1000, junk in -100.0f32..100.0) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let p: Tensor<(usize, usize, Const<2>), f32, Cpu> = dev.tensor_from_vec(vec![0.1, 0.2, 0.3, 0.4], (1, 2, Const));
            let loss = masked_l1(p, &[0.0, 0.0, junk, junk], &[1.0, 1.0, 0.0, 0.0]).unwrap().array();
            prop_assert!((loss - 0.15).abs() < 1e-6);
        }
    }
}
