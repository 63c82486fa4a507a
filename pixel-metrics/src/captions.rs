//! Caption metrics over a corpus, as pycocoevalcap's `COCOEvalCap` computes them: tokenize
//! references and predictions with the PTB tokenizer, then BLEU-1..4, METEOR, ROUGE-L, CIDEr-D.

use std::collections::BTreeMap;
use std::path::Path;

use super::{bleu, cider, meteor::Meteor, read_json, rouge, tokenize, MetricsError};

/// Corpus caption scores, serialized as `pixel metrics captions` prints them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CaptionScores {
    pub bleu: [f64; 4],
    pub meteor: f64,
    pub rouge_l: f64,
    pub cider: f64,
}

/// References `{id: [caption, ...]}` and predictions `{id: caption}`.
pub type References = BTreeMap<String, Vec<String>>;
pub type Predictions = BTreeMap<String, String>;

/// Pairs predictions with references, checking both cover the same ids; tokenizes when asked.
pub fn pair_up(
    refs: &References,
    preds: &Predictions,
    tokenize: bool,
) -> Result<Vec<(String, Vec<String>)>, MetricsError> {
    if refs.is_empty() {
        return Err(MetricsError::Empty {
            what: "the reference set",
        });
    }
    if let Some(id) = preds.keys().find(|k| !refs.contains_key(*k)) {
        return Err(MetricsError::MissingReference {
            id: id.clone(),
            refs: "references".into(),
        });
    }
    let tok = |s: &str| {
        if tokenize {
            tokenize::ptb_tokenize(s)
        } else {
            s.to_string()
        }
    };
    refs.iter()
        .map(|(id, rs)| {
            let p = preds
                .get(id)
                .ok_or_else(|| MetricsError::MissingPrediction { id: id.clone() })?;
            if rs.is_empty() {
                return Err(MetricsError::EmptyReferences { id: id.clone() });
            }
            Ok((tok(p), rs.iter().map(|r| tok(r)).collect()))
        })
        .collect()
}

/// All caption metrics of already paired (and, if wanted, tokenized) captions.
pub fn score_pairs(pairs: &[(String, Vec<String>)], meteor: &Meteor) -> CaptionScores {
    CaptionScores {
        bleu: bleu::bleu(pairs),
        meteor: meteor.corpus(pairs).0,
        rouge_l: rouge::rouge_l(pairs).0,
        cider: cider::cider_d(pairs).0,
    }
}

/// All caption metrics from raw captions (PTB-tokenized first, as pycocoevalcap does).
pub fn score_captions(
    refs: &References,
    preds: &Predictions,
    meteor: &Meteor,
) -> Result<CaptionScores, MetricsError> {
    Ok(score_pairs(&pair_up(refs, preds, true)?, meteor))
}

/// `pixel metrics captions --refs R.json --preds P.json`.
pub fn captions_from_files(
    refs: &Path,
    preds: &Path,
    meteor: &Meteor,
) -> Result<CaptionScores, MetricsError> {
    let r: References = read_json(refs, "an object {\"<id>\": [\"caption\", ...], ...}")?;
    let p: Predictions = read_json(preds, "an object {\"<id>\": \"caption\", ...}")?;
    score_captions(&r, &p, meteor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_prediction_is_an_error_naming_the_id() {
        let mut refs = References::new();
        refs.insert("7".into(), vec!["a dog".into()]);
        let err = score_captions(&refs, &Predictions::new(), &Meteor::default());
        assert!(matches!(err, Err(MetricsError::MissingPrediction { id }) if id == "7"));
    }

    #[test]
    fn caption_against_itself_is_perfect() {
        let mut refs = References::new();
        let mut preds = Predictions::new();
        for (i, c) in ["a dog runs on the grass", "two cats sleep on a red sofa"]
            .iter()
            .enumerate()
        {
            refs.insert(i.to_string(), vec![c.to_string()]);
            preds.insert(i.to_string(), c.to_string());
        }
        let s = score_captions(&refs, &preds, &Meteor::default()).unwrap_or_else(|e| panic!("{e}"));
        for b in s.bleu {
            assert!((b - 1.0).abs() < 1e-6);
        }
        assert!((s.rouge_l - 1.0).abs() < 1e-12);
        assert!((s.meteor - 1.0).abs() < 1e-12, "{}", s.meteor);
    }
}
