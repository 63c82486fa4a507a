//! CIDEr-D as pycocoevalcap's `Cider` (`cider/cider_scorer.py`): tf-idf n-gram vectors (n = 1..4)
//! with document frequencies counted over the reference sets of the evaluated corpus, clipped
//! numerator `min(hyp, ref) * ref`, Gaussian length penalty with sigma = 6, averaged over n and
//! references, times 10.

#![allow(clippy::needless_range_loop)] // index loops mirror the reference implementation

use std::collections::HashMap;

use super::bleu::ngram_counts;

type Counts<'a> = HashMap<Vec<&'a str>, usize>;

struct Vectorised<'a> {
    vec: [HashMap<Vec<&'a str>, f64>; 4],
    norm: [f64; 4],
    length: usize,
}

fn counts2vec<'a>(
    cnts: &Counts<'a>,
    df: &HashMap<Vec<&'a str>, f64>,
    ref_len: f64,
) -> Vectorised<'a> {
    let mut vec: [HashMap<Vec<&str>, f64>; 4] = Default::default();
    let mut norm = [0.0f64; 4];
    let mut length = 0usize;
    for (g, &tf) in cnts {
        let d = df.get(g).copied().unwrap_or(0.0).max(1.0).ln();
        let n = g.len() - 1;
        let v = tf as f64 * (ref_len - d);
        norm[n] += v * v;
        vec[n].insert(g.clone(), v);
        // The reference counts bigrams here (its `if n == 1`), which equals the word count
        // minus one; reproduced as is.
        if n == 1 {
            length += tf;
        }
    }
    for x in norm.iter_mut() {
        *x = x.sqrt();
    }
    Vectorised { vec, norm, length }
}

fn sim(h: &Vectorised, r: &Vectorised, sigma: f64) -> [f64; 4] {
    let delta = h.length as f64 - r.length as f64;
    let mut val = [0.0f64; 4];
    for n in 0..4 {
        for (g, &hv) in &h.vec[n] {
            let rv = r.vec[n].get(g).copied().unwrap_or(0.0);
            val[n] += hv.min(rv) * rv;
        }
        if h.norm[n] != 0.0 && r.norm[n] != 0.0 {
            val[n] /= h.norm[n] * r.norm[n];
        }
        val[n] *= std::f64::consts::E.powf(-(delta * delta) / (2.0 * sigma * sigma));
    }
    val
}

/// CIDEr-D over `(hypothesis, references)` pairs: (corpus mean, per-pair scores).
pub fn cider_d(pairs: &[(String, Vec<String>)]) -> (f64, Vec<f64>) {
    const SIGMA: f64 = 6.0;
    let tokenized: Vec<(Vec<&str>, Vec<Vec<&str>>)> = pairs
        .iter()
        .map(|(h, rs)| {
            (
                h.split_whitespace().collect(),
                rs.iter().map(|r| r.split_whitespace().collect()).collect(),
            )
        })
        .collect();
    let hyp_counts: Vec<Counts> = tokenized.iter().map(|(h, _)| ngram_counts(h, 4)).collect();
    let ref_counts: Vec<Vec<Counts>> = tokenized
        .iter()
        .map(|(_, rs)| rs.iter().map(|r| ngram_counts(r, 4)).collect())
        .collect();
    let mut df: HashMap<Vec<&str>, f64> = HashMap::new();
    for refs in &ref_counts {
        let mut seen: std::collections::HashSet<&Vec<&str>> = Default::default();
        for r in refs {
            for g in r.keys() {
                seen.insert(g);
            }
        }
        for g in seen {
            *df.entry(g.clone()).or_insert(0.0) += 1.0;
        }
    }
    let ref_len = (pairs.len() as f64).ln();
    let mut scores = Vec::with_capacity(pairs.len());
    for (h, refs) in hyp_counts.iter().zip(&ref_counts) {
        let hv = counts2vec(h, &df, ref_len);
        let mut score = [0.0f64; 4];
        for r in refs {
            let rv = counts2vec(r, &df, ref_len);
            let s = sim(&hv, &rv, SIGMA);
            for n in 0..4 {
                score[n] += s[n];
            }
        }
        let mut avg = score.iter().sum::<f64>() / 4.0;
        avg /= refs.len() as f64;
        avg *= 10.0;
        scores.push(avg);
    }
    (super::mean_score(&scores), scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrelated_caption_scores_zero() {
        let pairs = vec![
            ("a b c".to_string(), vec!["x y z".to_string()]),
            ("d e f".to_string(), vec!["d e f".to_string()]),
        ];
        let (_, s) = cider_d(&pairs);
        assert_eq!(s[0], 0.0);
    }
}
