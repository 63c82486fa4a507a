//! RefCOCO / RefCOCO+ / RefCOCOg referring expressions, from either
//!
//! - MDETR's COCO-style files (`final_refcoco_train.json`, ...), which PixelLLM's
//!   `build_mdetr_ref_tfrecord.py` reads: one `images` entry per expression (`caption`,
//!   `original_id` = COCO image id, `tokens_positive_eval`...) and its referred object in
//!   `annotations` (`bbox` `[x, y, w, h]` in pixels, `segmentation`, `tokens_positive`); or
//! - the refer toolkit's `instances.json` (COCO images/annotations) with its refs, converted
//!   from `refs(unc).p` to JSON by `tools/refer_pickle_to_json.py` (`[{ref_id, ann_id, image_id,
//!   split, sentences: [{sent, raw, sent_id, tokens}]}]`): one sample per sentence.
//!
//! Malformed records (a missing or mistyped field, a box that is not finite, has no area or
//! leaves its image's declared size by more than a pixel, a segmentation that does not decode
//! to a mask of that size, an expression without an annotation,
//! a ref naming an annotation or image the instances file lacks) are errors under
//! [`SkipMode::Strict`]. Left out of a well-formed file in every mode, each listed in
//! [`ReadSummary::dropped`] with its line and [`Reason`]:
//!
//! - [`Reason::EmptyExpression`]: an expression (MDETR `caption`, refer `sent`) that is empty
//!   or only white space.
//! - [`Reason::DuplicateId`]: in MDETR's files, an `images` id (one per expression) used by
//!   several entries: their annotations cannot be told apart, so every entry with that id is
//!   left out. In the refer toolkit's files, an image or annotation id already seen: the first
//!   is kept, as refs name them by id.
//!
//! The refer toolkit's two files are summarised apart ([`ReferSummary`]), so that each file's
//! report names its own lines.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    line_of, read_to_string, write_string, DatasetError, ReadSummary, Reason, SeenIds, SkipMode,
};
use pixel_metrics::masks::Segmentation;

/// One referring expression and its object.
#[derive(Debug, Clone, PartialEq)]
pub struct RefSample {
    /// COCO image id.
    pub image_id: i64,
    pub file_name: String,
    pub height: u32,
    pub width: u32,
    pub expression: String,
    /// `[x, y, w, h]` in pixels (COCO convention).
    pub bbox_xywh: [f64; 4],
    pub mask: Option<Segmentation>,
    /// Character spans of the expression that name the object (MDETR `tokens_positive`).
    pub tokens_positive: Vec<[usize; 2]>,
    /// refer toolkit `ref_id` / MDETR entry id.
    pub ref_id: Option<i64>,
    pub sentence_id: Option<i64>,
    /// `train`, `val`, `testA`, ... when known.
    pub split: Option<String>,
}

/// MDETR `images` entry (one per expression).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MdetrImage {
    #[serde(deserialize_with = "super::lenient::number")]
    pub id: i64,
    pub file_name: String,
    #[serde(deserialize_with = "super::lenient::number")]
    pub height: u32,
    #[serde(deserialize_with = "super::lenient::number")]
    pub width: u32,
    pub caption: String,
    /// The COCO image id (`original_img_id` in MDETR's flickr files).
    #[serde(
        default,
        alias = "original_img_id",
        deserialize_with = "super::lenient::optional_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub original_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentence_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_positive_eval: Option<Vec<Vec<[usize; 2]>>>,
}

/// MDETR / COCO `annotations` entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CocoAnnotation {
    pub id: i64,
    pub image_id: i64,
    pub bbox: [f64; 4],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<Segmentation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iscrowd: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_positive: Option<Vec<[usize; 2]>>,
}

/// A COCO `images` entry (refer toolkit `instances.json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CocoImage {
    #[serde(deserialize_with = "super::lenient::number")]
    pub id: i64,
    pub file_name: String,
    #[serde(deserialize_with = "super::lenient::number")]
    pub height: u32,
    #[serde(deserialize_with = "super::lenient::number")]
    pub width: u32,
}

/// One ref of the refer toolkit (after `tools/refer_pickle_to_json.py`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReferRef {
    pub ref_id: i64,
    pub ann_id: i64,
    pub image_id: i64,
    pub split: String,
    pub sentences: Vec<ReferSentence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReferSentence {
    pub sent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_id: Option<i64>,
}

#[derive(Deserialize)]
struct RawCoco<'a> {
    #[serde(borrow)]
    images: Vec<&'a RawValue>,
    #[serde(borrow)]
    annotations: Vec<&'a RawValue>,
}

/// A COCO `[x, y, w, h]` box must be finite, have a positive size, and lie in its image's
/// declared `width x height` (up to a pixel of rounding).
fn check_box(b: &[f64; 4], width: u32, height: u32) -> Result<(), String> {
    if b.iter().any(|v| !v.is_finite()) || b[2] <= 0.0 || b[3] <= 0.0 {
        return Err(format!(
            "bbox {b:?} must be finite with positive width and height"
        ));
    }
    let (w, h) = (f64::from(width), f64::from(height));
    if b[0] < -1.0 || b[1] < -1.0 || b[0] + b[2] > w + 1.0 || b[1] + b[3] > h + 1.0 {
        return Err(format!(
            "bbox {b:?} leaves its {width}x{height} image (the image's declared size)"
        ));
    }
    Ok(())
}

/// An annotation's box (see [`check_box`]) and segmentation must fit its image's declared
/// `width x height`; the segmentation is checked without decoding it, so a bad mask stops
/// reading rather than a training step that draws it.
fn check_annotation(a: &CocoAnnotation, width: u32, height: u32) -> Result<(), String> {
    check_box(&a.bbox, width, height)?;
    match &a.segmentation {
        Some(mask) => mask
            .check(height as usize, width as usize)
            .map_err(|why| format!("segmentation {why}")),
        None => Ok(()),
    }
}

/// Parses `images`/`annotations` element by element, so a bad element names its index and line
/// in `text`, the file they were borrowed from.
fn parse_elements<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    key: &str,
    raw: &[&RawValue],
    mode: SkipMode,
    summary: &mut ReadSummary,
) -> Result<Vec<(usize, T)>, DatasetError> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        match serde_json::from_str::<T>(r.get()) {
            Ok(v) => out.push((i, v)),
            Err(e) => {
                let line = line_of(text, r);
                let location = format!("{key}[{i}] (line {line})");
                summary.malformed(mode, path, location, line, e.to_string())?
            }
        }
    }
    Ok(out)
}

/// Reads an MDETR referring-expression file.
pub fn read_mdetr_refexp(
    path: &Path,
    mode: SkipMode,
) -> Result<(Vec<RefSample>, ReadSummary), DatasetError> {
    let text = read_to_string(path)?;
    let raw: RawCoco = serde_json::from_str(&text).map_err(|source| DatasetError::Json {
        path: path.to_path_buf(),
        expected: "an object with `images` and `annotations` arrays (MDETR refexp format)",
        source,
    })?;
    let mut summary = ReadSummary::default();
    let images: Vec<(usize, MdetrImage)> =
        parse_elements(path, &text, "images", &raw.images, mode, &mut summary)?;
    let anns: Vec<(usize, CocoAnnotation)> = parse_elements(
        path,
        &text,
        "annotations",
        &raw.annotations,
        mode,
        &mut summary,
    )?;
    let mut by_image: HashMap<i64, Vec<&(usize, CocoAnnotation)>> = HashMap::new();
    for a in &anns {
        by_image.entry(a.1.image_id).or_default().push(a);
    }
    let mut uses: HashMap<i64, usize> = HashMap::new();
    for (_, im) in &images {
        *uses.entry(im.id).or_default() += 1;
    }
    let mut out = Vec::new();
    for (i, im) in &images {
        let line = line_of(&text, raw.images[*i]);
        let location = format!("images[{i}] (id {}, line {line})", im.id);
        if let Some((cause, why)) = expression_problem(im, uses[&im.id]) {
            summary.drop_record(location, line, cause, why);
            continue;
        }
        let Some(list) = by_image.get(&im.id) else {
            let why = "no annotation refers to this expression".to_string();
            summary.malformed(mode, path, location, line, why)?;
            continue;
        };
        for (k, a) in list {
            if let Err(why) = check_annotation(a, im.width, im.height) {
                let line = line_of(&text, raw.annotations[*k]);
                let location = format!("annotations[{k}] (id {}, line {line})", a.id);
                summary.malformed(mode, path, location, line, why)?;
                continue;
            }
            out.push(mdetr_sample(im, a));
        }
    }
    summary.samples = out.len();
    Ok((out, summary))
}

/// Why an MDETR expression is left out, if it is: an empty expression, or an id that `uses`
/// entries share.
fn expression_problem(im: &MdetrImage, uses: usize) -> Option<(Reason, String)> {
    if im.caption.trim().is_empty() {
        return Some((Reason::EmptyExpression, "empty expression".into()));
    }
    (uses > 1).then(|| {
        (
            Reason::DuplicateId,
            format!(
                "expression id {} is used by {uses} `images` entries, so their annotations cannot be told apart; all are left out",
                im.id
            ),
        )
    })
}

/// The sample of an MDETR expression and its annotation.
fn mdetr_sample(im: &MdetrImage, a: &CocoAnnotation) -> RefSample {
    RefSample {
        image_id: im.original_id.unwrap_or(im.id),
        file_name: im.file_name.clone(),
        height: im.height,
        width: im.width,
        expression: im.caption.clone(),
        bbox_xywh: a.bbox,
        mask: a.segmentation.clone(),
        tokens_positive: a.tokens_positive.clone().unwrap_or_default(),
        ref_id: Some(im.id),
        sentence_id: im.sentence_id,
        split: None,
    }
}

/// Writes samples in MDETR's format (one `images` entry and one annotation per sample).
pub fn write_mdetr_refexp(path: &Path, samples: &[RefSample]) -> Result<(), DatasetError> {
    let images: Vec<MdetrImage> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| MdetrImage {
            id: i as i64,
            file_name: s.file_name.clone(),
            height: s.height,
            width: s.width,
            caption: s.expression.clone(),
            original_id: Some(s.image_id),
            dataset_name: s.split.clone().map(|_| "refcoco".to_string()),
            sentence_id: s.sentence_id,
            tokens_positive_eval: Some(vec![s.tokens_positive.clone()]),
        })
        .collect();
    let annotations: Vec<CocoAnnotation> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| CocoAnnotation {
            id: i as i64,
            image_id: i as i64,
            bbox: s.bbox_xywh,
            segmentation: s.mask.clone(),
            category_id: Some(1),
            area: Some(s.bbox_xywh[2] * s.bbox_xywh[3]),
            iscrowd: Some(0),
            tokens_positive: Some(s.tokens_positive.clone()),
        })
        .collect();
    let doc = serde_json::json!({
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object"}],
    });
    write_string(path, &doc.to_string())
}

/// A parsed element with the line it starts on.
struct Located<T> {
    index: usize,
    line: usize,
    value: T,
}

/// Elements by id, the first of each id kept and later ones listed as duplicates.
fn first_by_id<T>(
    key: &str,
    text: &str,
    raw: &[&RawValue],
    elements: Vec<(usize, T)>,
    id: impl Fn(&T) -> i64,
    summary: &mut ReadSummary,
) -> HashMap<i64, Located<T>> {
    let mut seen = SeenIds::default();
    let mut out = HashMap::new();
    for (index, value) in elements {
        let line = line_of(text, raw[index]);
        let id = id(&value);
        match seen.first(&format!("{key} id"), id, line) {
            Ok(()) => {
                out.insert(id, Located { index, line, value });
            }
            Err(why) => {
                let location = format!("{key}[{index}] (id {id}, line {line})");
                summary.drop_record(location, line, Reason::DuplicateId, why);
            }
        }
    }
    out
}

/// A malformed record found while joining a ref to its annotation: in the refs file (a
/// dangling id) or in `instances.json` (a bad box), its location, line and what is wrong.
struct Malformed {
    in_instances: bool,
    location: String,
    line: usize,
    why: String,
}

/// A refer toolkit `instances.json`, its images and annotations by id.
struct ReferInstances<'p> {
    path: &'p Path,
    images: HashMap<i64, Located<CocoImage>>,
    anns: HashMap<i64, Located<CocoAnnotation>>,
}

impl<'p> ReferInstances<'p> {
    /// Reads `instances.json`; a repeated image or annotation id keeps the first. The summary's
    /// `samples` counts the images and annotations kept.
    fn read(
        path: &'p Path,
        mode: SkipMode,
        summary: &mut ReadSummary,
    ) -> Result<ReferInstances<'p>, DatasetError> {
        let text = read_to_string(path)?;
        let raw: RawCoco = serde_json::from_str(&text).map_err(|source| DatasetError::Json {
            path: path.to_path_buf(),
            expected: "a COCO instances file with `images` and `annotations` arrays",
            source,
        })?;
        let images = parse_elements(path, &text, "images", &raw.images, mode, summary)?;
        let images = first_by_id(
            "images",
            &text,
            &raw.images,
            images,
            |im: &CocoImage| im.id,
            summary,
        );
        let anns = parse_elements(path, &text, "annotations", &raw.annotations, mode, summary)?;
        let anns = first_by_id(
            "annotations",
            &text,
            &raw.annotations,
            anns,
            |a: &CocoAnnotation| a.id,
            summary,
        );
        summary.samples = images.len() + anns.len();
        Ok(ReferInstances { path, images, anns })
    }

    /// The image and annotation `r` names (its box checked against the image), or the
    /// malformed record; `location` and `line` are `r`'s in `refs`.
    fn target(
        &self,
        r: &ReferRef,
        location: String,
        line: usize,
    ) -> Result<(&CocoImage, &CocoAnnotation), Malformed> {
        let missing = |why: String| Malformed {
            in_instances: false,
            location: location.clone(),
            line,
            why,
        };
        let instances = self.path.display();
        let ann = self
            .anns
            .get(&r.ann_id)
            .ok_or_else(|| missing(format!("ann_id {} is not in {instances}", r.ann_id)))?;
        let im = self
            .images
            .get(&r.image_id)
            .ok_or_else(|| missing(format!("image_id {} is not in {instances}", r.image_id)))?;
        check_annotation(&ann.value, im.value.width, im.value.height).map_err(|why| Malformed {
            in_instances: true,
            location: format!(
                "annotations[{}] (id {}, line {})",
                ann.index, ann.value.id, ann.line
            ),
            line: ann.line,
            why,
        })?;
        Ok((&im.value, &ann.value))
    }
}

/// The sample of one sentence of a ref.
fn refer_sample(
    r: &ReferRef,
    s: &ReferSentence,
    im: &CocoImage,
    ann: &CocoAnnotation,
) -> RefSample {
    RefSample {
        image_id: im.id,
        file_name: im.file_name.clone(),
        height: im.height,
        width: im.width,
        expression: s.sent.clone(),
        bbox_xywh: ann.bbox,
        mask: ann.segmentation.clone(),
        tokens_positive: Vec::new(),
        ref_id: Some(r.ref_id),
        sentence_id: s.sent_id,
        split: Some(r.split.clone()),
    }
}

/// What [`read_refer`] read and left out, per file. `instances` counts images and annotations
/// (a repeated id is dropped there, a box outside its image is malformed there); `refs` counts
/// the sentences of the split's refs (an empty one is dropped) and malformed refs (one naming
/// an image or annotation `instances.json` lacks). Refs of other splits are not counted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReferSummary {
    pub instances: ReadSummary,
    pub refs: ReadSummary,
}

/// Reads the refer toolkit's `instances.json` and refs JSON; `split` keeps only that split.
pub fn read_refer(
    instances: &Path,
    refs: &Path,
    split: Option<&str>,
    mode: SkipMode,
) -> Result<(Vec<RefSample>, ReferSummary), DatasetError> {
    let mut summary = ReferSummary::default();
    let coco = ReferInstances::read(instances, mode, &mut summary.instances)?;
    let refs_text = read_to_string(refs)?;
    let raw_refs: Vec<&RawValue> =
        serde_json::from_str(&refs_text).map_err(|source| DatasetError::Json {
            path: refs.to_path_buf(),
            expected:
                "a JSON array of refs (convert refs(unc).p with tools/refer_pickle_to_json.py)",
            source,
        })?;
    let parsed =
        parse_elements::<ReferRef>(refs, &refs_text, "refs", &raw_refs, mode, &mut summary.refs)?;
    let mut out = Vec::new();
    for (i, r) in parsed {
        if split.is_some_and(|s| s != r.split) {
            continue;
        }
        let line = line_of(&refs_text, raw_refs[i]);
        let location = format!("refs[{i}] (ref_id {}, line {line})", r.ref_id);
        match coco.target(&r, location, line) {
            Ok((im, ann)) => {
                let sentences = RefSentences {
                    index: i,
                    line,
                    r: &r,
                };
                out.extend(sentences.samples(im, ann, &mut summary.refs));
            }
            Err(m) => {
                let (path, file) = if m.in_instances {
                    (instances, &mut summary.instances)
                } else {
                    (refs, &mut summary.refs)
                };
                file.malformed(mode, path, m.location, m.line, m.why)?
            }
        }
    }
    summary.refs.samples = out.len();
    Ok((out, summary))
}

/// The sentences of ref `index` (starting at `line` of the refs file).
struct RefSentences<'a> {
    index: usize,
    line: usize,
    r: &'a ReferRef,
}

impl RefSentences<'_> {
    /// One sample per sentence; empty sentences are left out and listed in `summary`.
    fn samples(
        &self,
        im: &CocoImage,
        ann: &CocoAnnotation,
        summary: &mut ReadSummary,
    ) -> Vec<RefSample> {
        let (i, line, r) = (self.index, self.line, self.r);
        let mut out = Vec::new();
        for (k, s) in r.sentences.iter().enumerate() {
            if s.sent.trim().is_empty() {
                let location = format!(
                    "refs[{i}].sentences[{k}] (ref_id {}, line {line})",
                    r.ref_id
                );
                let why = "empty expression".to_string();
                summary.drop_record(location, line, Reason::EmptyExpression, why);
            } else {
                out.push(refer_sample(r, s, im, ann));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RefSample {
        RefSample {
            image_id: 581857,
            file_name: "COCO_train2014_000000581857.jpg".into(),
            height: 640,
            width: 427,
            expression: "lady with back to us".into(),
            bbox_xywh: [103.93, 299.99, 134.22, 177.42],
            mask: Some(Segmentation::Polygons(vec![vec![
                103.9, 300.0, 238.1, 300.0, 238.1, 477.4,
            ]])),
            tokens_positive: vec![[0, 4]],
            ref_id: None,
            sentence_id: Some(3),
            split: None,
        }
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    fn dropped(summary: &ReadSummary) -> Vec<(Reason, usize)> {
        summary.dropped.iter().map(|r| (r.cause, r.line)).collect()
    }

    /// Three expressions: `images[1]` is blank, `images[2]` and `images[3]` share id 2.
    const MDETR: &str = r#"{"images": [
{"id": 0, "file_name": "a.jpg", "height": 10, "width": 10, "caption": "left dog", "original_id": 5},
{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10, "caption": " ", "original_id": 5},
{"id": 2, "file_name": "a.jpg", "height": 10, "width": 10, "caption": "right dog", "original_id": 5},
{"id": 2, "file_name": "a.jpg", "height": 10, "width": 10, "caption": "cat", "original_id": 5}
],
"annotations": [
{"id": 0, "image_id": 0, "bbox": [0, 0, 5, 5]},
{"id": 1, "image_id": 1, "bbox": [0, 0, 5, 5]},
{"id": 2, "image_id": 2, "bbox": [5, 5, 5, 5]},
{"id": 3, "image_id": 2, "bbox": [1, 1, 2, 2]}
]}"#;

    #[test]
    fn mdetr_empty_and_duplicated_expressions_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = write(&dir, "refexp.json", MDETR);
        let (samples, summary) =
            read_mdetr_refexp(&path, SkipMode::Strict).unwrap_or_else(|e| panic!("{e}"));
        let expressions: Vec<&str> = samples.iter().map(|s| s.expression.as_str()).collect();
        assert_eq!(expressions, vec!["left dog"]);
        assert_eq!(
            dropped(&summary),
            vec![
                (Reason::EmptyExpression, 3),
                (Reason::DuplicateId, 4),
                (Reason::DuplicateId, 5)
            ]
        );
    }

    /// Image 9 twice, annotation 5 twice, and a ref with a blank sentence.
    const INSTANCES: &str = r#"{"images": [
{"id": 9, "file_name": "COCO_9.jpg", "height": 480, "width": 640},
{"id": 9, "file_name": "COCO_9_again.jpg", "height": 480, "width": 640}
],
"annotations": [
{"id": 5, "image_id": 9, "bbox": [1, 2, 30, 40]},
{"id": 5, "image_id": 9, "bbox": [100, 100, 30, 40]}
]}"#;
    const REFS: &str = r#"[
{"ref_id": 0, "ann_id": 5, "image_id": 9, "split": "val", "sentences": [
  {"sent": "left bowl", "sent_id": 0},
  {"sent": "", "sent_id": 1}
]}
]"#;

    #[test]
    fn refer_empty_sentences_and_duplicated_ids_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let instances = write(&dir, "instances.json", INSTANCES);
        let refs = write(&dir, "refs.json", REFS);
        let (samples, summary) =
            read_refer(&instances, &refs, None, SkipMode::Strict).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(samples.len(), 1);
        // The first image and annotation are kept.
        assert_eq!(samples[0].file_name, "COCO_9.jpg");
        assert_eq!(samples[0].bbox_xywh, [1.0, 2.0, 30.0, 40.0]);
        assert_eq!(
            dropped(&summary.instances),
            vec![(Reason::DuplicateId, 3), (Reason::DuplicateId, 7)]
        );
        assert_eq!(dropped(&summary.refs), vec![(Reason::EmptyExpression, 2)]);
        // One image and one annotation kept; one sentence read, one left out.
        assert_eq!((summary.instances.samples, summary.refs.samples), (2, 1));
    }

    /// COCO masks that do not fit their image (an RLE of another size, runs that do not sum to
    /// its pixels, a polygon with an odd coordinate count) are malformed: named with their
    /// line when reading strictly, skipped and counted otherwise.
    #[test]
    fn masks_that_do_not_fit_their_image_are_malformed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for (segmentation, why) in [
            (r#"{"size": [10, 12], "counts": [120]}"#, "size 10x12"),
            (
                r#"{"size": [10, 10], "counts": [40, 20, 30]}"#,
                "sum to h*w = 100",
            ),
            (r#"{"size": [10, 10], "counts": "0)"}"#, "segmentation"),
            ("[[1, 1, 5, 1, 5]]", "odd number of coordinates"),
        ] {
            let text = format!(
                r#"{{"images": [
{{"id": 0, "file_name": "a.jpg", "height": 10, "width": 10, "caption": "left dog", "original_id": 5}}
],
"annotations": [
{{"id": 0, "image_id": 0, "bbox": [0, 0, 5, 5],
  "segmentation": {segmentation}}}
]}}"#
            );
            let path = write(&dir, "refexp.json", &text);
            let err = read_mdetr_refexp(&path, SkipMode::Strict)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("annotations[0]") && err.contains("line 5") && err.contains(why),
                "{segmentation}: {err}"
            );
            let (samples, summary) =
                read_mdetr_refexp(&path, SkipMode::SkipAndCount).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                samples.is_empty() && summary.skipped.len() == 1,
                "{segmentation}"
            );
        }
    }

    #[test]
    fn mdetr_write_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("final_refcoco_val.json");
        write_mdetr_refexp(&p, &[sample()]).unwrap_or_else(|e| panic!("{e}"));
        let (got, summary) =
            read_mdetr_refexp(&p, SkipMode::Strict).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(summary.samples, 1);
        let mut want = sample();
        want.ref_id = Some(0);
        assert_eq!(got, vec![want]);
    }
}
