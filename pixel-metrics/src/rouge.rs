//! ROUGE-L as pycocoevalcap's `Rouge` (`rouge/rouge.py`): per image, the LCS-based precision
//! and recall are each maximised over the references, combined with beta = 1.2, and averaged
//! over images. Tokens are split on single spaces as the reference does.

/// Length of the longest common subsequence of two token lists.
pub fn lcs_len(a: &[&str], b: &[&str]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut prev = vec![0usize; short.len() + 1];
    let mut cur = vec![0usize; short.len() + 1];
    for x in long {
        for (j, y) in short.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[short.len()]
}

/// ROUGE-L of one candidate against its references (`Rouge.calc_score`).
pub fn rouge_l_single(candidate: &str, references: &[String]) -> f64 {
    const BETA: f64 = 1.2;
    let c: Vec<&str> = candidate.split(' ').collect();
    let mut prec_max = 0.0f64;
    let mut rec_max = 0.0f64;
    for r in references {
        let rt: Vec<&str> = r.split(' ').collect();
        let l = lcs_len(&rt, &c) as f64;
        prec_max = prec_max.max(l / c.len() as f64);
        rec_max = rec_max.max(l / rt.len() as f64);
    }
    if prec_max != 0.0 && rec_max != 0.0 {
        ((1.0 + BETA * BETA) * prec_max * rec_max) / (rec_max + BETA * BETA * prec_max)
    } else {
        0.0
    }
}

/// Mean ROUGE-L over `(candidate, references)` pairs, and the per-pair scores.
pub fn rouge_l(pairs: &[(String, Vec<String>)]) -> (f64, Vec<f64>) {
    let scores: Vec<f64> = pairs.iter().map(|(c, r)| rouge_l_single(c, r)).collect();
    (super::mean_score(&scores), scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcs_of_known_pair() {
        assert_eq!(lcs_len(&["a", "b", "c", "d"], &["b", "d", "x"]), 2);
    }

    #[test]
    fn identical_caption_scores_one() {
        assert!((rouge_l_single("a dog runs", &["a dog runs".into()]) - 1.0).abs() < 1e-12);
    }
}
