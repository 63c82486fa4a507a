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
        "failed to read `{path}`: {source}\n  help: check that the file exists and is readable"
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
    #[error("invalid paraphrase table `{path}` line {line}: {why}")]
    Paraphrase {
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
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    expected: &'static str,
) -> Result<T, MetricsError> {
    let text = std::fs::read_to_string(path).map_err(|source| MetricsError::Io {
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
