//! Corpus BLEU-1..4 exactly as pycocoevalcap's `Bleu(4).compute_score` (`bleu_scorer.py`,
//! `option="closest"`): clipped n-gram counts and lengths are summed over the corpus, the
//! effective reference length of each segment is the reference length closest to the hypothesis
//! length (ties to the shorter), and the same `tiny`/`small` smoothing constants are used.

use std::collections::HashMap;

/// n-gram counts of a whitespace-tokenized sentence, for n = 1..=max_n.
pub(crate) fn ngram_counts<'a>(words: &[&'a str], max_n: usize) -> HashMap<Vec<&'a str>, usize> {
    let mut counts = HashMap::new();
    for n in 1..=max_n {
        if words.len() < n {
            break;
        }
        for w in words.windows(n) {
            *counts.entry(w.to_vec()).or_insert(0) += 1;
        }
    }
    counts
}

/// Per-segment sufficient statistics (`cook_test` in the reference).
#[derive(Debug, Clone, PartialEq)]
pub struct BleuStats {
    pub test_len: usize,
    pub ref_len: usize,
    pub guess: [usize; 4],
    pub correct: [usize; 4],
}

/// Statistics of one hypothesis against its references (already tokenized, space-separated).
pub fn bleu_stats(hypothesis: &str, references: &[String]) -> BleuStats {
    let hyp: Vec<&str> = hypothesis.split_whitespace().collect();
    let mut max_counts: HashMap<Vec<&str>, usize> = HashMap::new();
    let mut ref_lens = Vec::with_capacity(references.len());
    for r in references {
        let words: Vec<&str> = r.split_whitespace().collect();
        ref_lens.push(words.len());
        for (g, c) in ngram_counts(&words, 4) {
            let e = max_counts.entry(g).or_insert(0);
            *e = (*e).max(c);
        }
    }
    let test_len = hyp.len();
    // min over (|l - testlen|, l): closest, ties broken by the shorter reference.
    let ref_len = ref_lens
        .iter()
        .copied()
        .min_by_key(|&l| ((l as i64 - test_len as i64).abs(), l))
        .unwrap_or(0);
    let mut guess = [0usize; 4];
    for (k, g) in guess.iter_mut().enumerate() {
        *g = (test_len + 1).saturating_sub(k + 1);
    }
    let mut correct = [0usize; 4];
    for (g, c) in ngram_counts(&hyp, 4) {
        correct[g.len() - 1] += c.min(max_counts.get(&g).copied().unwrap_or(0));
    }
    BleuStats {
        test_len,
        ref_len,
        guess,
        correct,
    }
}

/// Corpus BLEU-1..4 from per-segment statistics.
pub fn corpus_bleu(stats: &[BleuStats]) -> [f64; 4] {
    const SMALL: f64 = 1e-9;
    const TINY: f64 = 1e-15;
    let mut test_len = 0usize;
    let mut ref_len = 0usize;
    let mut guess = [0usize; 4];
    let mut correct = [0usize; 4];
    for s in stats {
        test_len += s.test_len;
        ref_len += s.ref_len;
        for k in 0..4 {
            guess[k] += s.guess[k];
            correct[k] += s.correct[k];
        }
    }
    let mut out = [0.0; 4];
    let mut bleu = 1.0f64;
    for k in 0..4 {
        bleu *= (correct[k] as f64 + TINY) / (guess[k] as f64 + SMALL);
        out[k] = bleu.powf(1.0 / (k as f64 + 1.0));
    }
    let ratio = (test_len as f64 + TINY) / (ref_len as f64 + SMALL);
    if ratio < 1.0 {
        for v in out.iter_mut() {
            *v *= (1.0 - 1.0 / ratio).exp();
        }
    }
    out
}

/// Corpus BLEU-1..4 of `(hypothesis, references)` pairs.
pub fn bleu(pairs: &[(String, Vec<String>)]) -> [f64; 4] {
    let stats: Vec<BleuStats> = pairs.iter().map(|(h, r)| bleu_stats(h, r)).collect();
    corpus_bleu(&stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_reference_length_prefers_shorter_on_ties() {
        let s = bleu_stats("a b c d", &["a b c".into(), "a b c d e".into()]);
        assert_eq!(s.ref_len, 3);
    }

    #[test]
    fn brevity_penalty_applies_when_hypothesis_is_short() {
        let b = bleu(&[("a b".into(), vec!["a b c d".into()])]);
        assert!((b[0] - (1.0f64 - 2.0).exp()).abs() < 1e-6);
    }
}
