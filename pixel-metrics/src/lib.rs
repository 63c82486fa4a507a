//! Benchmark-faithful evaluation metrics, in plain Rust over plain data (no tensors).
//!
//! | metric | reference implementation it reproduces | module |
//! |---|---|---|
//! | BLEU-1..4 (corpus, "closest" ref length) | pycocoevalcap `bleu/bleu_scorer.py` | [`bleu`] |
//! | ROUGE-L (beta 1.2) | pycocoevalcap `rouge/rouge.py` | [`rouge`] |
//! | CIDEr-D (sigma 6, x10) | pycocoevalcap `cider/cider_scorer.py` | [`cider`] |
//! | PTB tokenization + punctuation removal | pycocoevalcap `tokenizer/ptbtokenizer.py` (Stanford PTBTokenizer 3.4.1) | [`tokenize`] |
//! | METEOR 1.5 | the `meteor-1.5.jar` that pycocoevalcap runs with `-l en -norm` | [`meteor`] |
//! | Acc@0.5, mIoU for boxes | COCO `[x, y, w, h]` convention | [`boxes`] |
//! | COCO RLE / polygon masks, cIoU, gIoU | pycocotools `maskApi.c` | [`masks`] |
//! | dense captioning mAP | scenic `pixel_llm/densecap_evaluator.py` and densecap `eval_utils.lua` | [`densecap`] |
//! | trace point L1 | PixelLLM trace evaluator | [`trace`] |
//!
//! Every metric has a JSON front end (`load_*`/`*_from_files`) used by `pixel metrics ...`.

pub mod bleu;
pub mod boxes;
pub mod captions;
pub mod cider;
pub mod densecap;
mod jar;
pub mod masks;
pub mod meteor;
pub mod rouge;
pub mod tokenize;
pub mod trace;

use std::path::{Path, PathBuf};

pub use boxes::{iou_xywh, refloc_scores, RefLocScores};
pub use captions::{score_captions, CaptionScores};
pub use densecap::{densecap_map, DensecapProtocol, DensecapScores};
pub use masks::{RefSegScores, Rle};
pub use meteor::{Meteor, MeteorScorer};
pub use trace::trace_point_l1;

/// Everything that can go wrong while computing a metric from user-supplied data.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "failed to read `{path}`: {source}{}",
        pixel_base::text::read_help(source)
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "failed to parse `{path}` as JSON: {source}\n  help: the expected layout is {expected}"
    )]
    Json {
        path: PathBuf,
        expected: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("prediction for id `{id}` has no reference in `{refs}`\n  help: predictions and references must cover the same ids")]
    MissingReference { id: String, refs: String },
    #[error("reference id `{id}` has no prediction\n  help: predictions and references must cover the same ids")]
    MissingPrediction { id: String },
    #[error(
        "id `{id}` has an empty reference list\n  help: give at least one reference caption per id"
    )]
    EmptyReferences { id: String },
    #[error("nothing to evaluate: {what} is empty")]
    Empty { what: &'static str },
    #[error("invalid box {bbox:?} for id `{id}`: {why}")]
    InvalidBox {
        id: String,
        bbox: Vec<f64>,
        why: &'static str,
    },
    #[error("invalid mask for id `{id}`: {why}")]
    InvalidMask { id: String, why: String },
    #[error("invalid METEOR data file `{path}` line {line}: {why}\n  help: paraphrase tables and synonym files come with meteor-1.5.jar (see `pixel metrics captions --help`)")]
    MeteorData {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("length mismatch: {what} ({left} vs {right})")]
    LengthMismatch {
        what: &'static str,
        left: usize,
        right: usize,
    },
    #[error("METEOR scorer failed: {0}")]
    Meteor(String),
}

/// Reads and deserializes a JSON file, naming the file (and the expected layout) on failure.
pub fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    expected: &'static str,
) -> Result<T, MetricsError> {
    let text = pixel_base::text::read_text(path).map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| MetricsError::Json {
        path: path.to_path_buf(),
        expected,
        source,
    })
}

/// A JSON object key: COCO ids are integers in some files and strings in others.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(untagged)]
pub enum AnyId {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for AnyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnyId::Int(i) => write!(f, "{i}"),
            AnyId::Str(s) => write!(f, "{s}"),
        }
    }
}

/// Fails unless `gt` is non-empty and every predicted id has a ground truth; the per-id loops
/// then report ground truths without a prediction.
pub(crate) fn check_prediction_ids<G, P>(
    gt: &std::collections::BTreeMap<String, G>,
    preds: &std::collections::BTreeMap<String, P>,
) -> Result<(), MetricsError> {
    if gt.is_empty() {
        return Err(MetricsError::Empty {
            what: "the ground-truth set",
        });
    }
    if let Some(id) = preds.keys().find(|k| !gt.contains_key(*k)) {
        return Err(MetricsError::MissingReference {
            id: id.clone(),
            refs: "ground truth".into(),
        });
    }
    Ok(())
}

/// The mean of per-pair scores, 0 for none (pycocoevalcap's corpus score for ROUGE-L, CIDEr).
pub(crate) fn mean_score(scores: &[f64]) -> f64 {
    if scores.is_empty() {
        0.0
    } else {
        scores.iter().sum::<f64>() / scores.len() as f64
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::masks::Rle;
    use super::meteor::{Meteor, MeteorScorer};
    use super::{bleu, boxes, cider, rouge};

    fn sentence() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-e]{1,3}", 1..12).prop_map(|w| w.join(" "))
    }

    fn bbox() -> impl Strategy<Value = [f64; 4]> {
        (-50.0f64..50.0, -50.0f64..50.0, 0.0f64..40.0, 0.0f64..40.0)
            .prop_map(|(x, y, w, h)| [x, y, w, h])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn bleu_of_caption_against_itself_is_one(s in sentence()) {
            let n = s.split(' ').count();
            let b = bleu::bleu(&[(s.clone(), vec![s])]);
            for (k, v) in b.iter().enumerate() {
                // BLEU-k of a sentence shorter than k is ~0 by the smoothing constants.
                if n > k {
                    prop_assert!((v - 1.0).abs() < 1e-6, "BLEU-{} = {}", k + 1, v);
                }
            }
        }

        #[test]
        fn rouge_l_and_meteor_of_caption_against_itself_are_one(s in sentence()) {
            prop_assert!((rouge::rouge_l_single(&s, std::slice::from_ref(&s)) - 1.0).abs() < 1e-12);
            let m = Meteor::default().score(&s, std::slice::from_ref(&s)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!((m - 1.0).abs() < 1e-12, "{}", m);
        }

        #[test]
        fn metric_values_are_bounded(h in sentence(), r in prop::collection::vec(sentence(), 1..4)) {
            let b = bleu::bleu(&[(h.clone(), r.clone())]);
            prop_assert!(b.iter().all(|v| (0.0..=1.0 + 1e-9).contains(v)));
            let m = Meteor::default().score(&h, &r).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!((0.0..=1.0).contains(&m));
            let (c, _) = cider::cider_d(&[(h, r)]);
            prop_assert!(c.is_finite() && c >= 0.0);
        }

        #[test]
        fn iou_is_symmetric_and_in_unit_interval(a in bbox(), b in bbox()) {
            let ab = boxes::iou_xywh(a, b);
            let ba = boxes::iou_xywh(b, a);
            prop_assert!((ab - ba).abs() < 1e-12);
            prop_assert!((0.0..=1.0).contains(&ab));
        }

        #[test]
        fn iou_of_box_with_itself_is_one(a in bbox()) {
            prop_assume!(a[2] > 1e-3 && a[3] > 1e-3);
            prop_assert!((boxes::iou_xywh(a, a) - 1.0).abs() < 1e-12);
        }

        #[test]
        fn malformed_rle_strings_are_errors_not_panics(s in "[\\x20-\\x7e]{0,40}") {
            if let Ok(r) = Rle::from_compressed(3, 3, &s) {
                let _ = r.decode();
            }
        }

        #[test]
        fn rle_encode_decode_and_string_round_trip(h in 1usize..20, w in 1usize..20, seed in prop::collection::vec(any::<bool>(), 400)) {
            let mask: Vec<bool> = seed.into_iter().take(h * w).collect();
            let r = Rle::encode(h, w, &mask);
            prop_assert_eq!(r.decode(), Ok(mask.clone()));
            prop_assert_eq!(r.area() as usize, mask.iter().filter(|&&m| m).count());
            let back = Rle::from_compressed(h, w, &r.to_compressed());
            prop_assert_eq!(back, Ok(r));
        }
    }
}
