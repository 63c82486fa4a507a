//! RefCOCO / RefCOCO+ / RefCOCOg referring expressions, from either
//!
//! - MDETR's COCO-style files (`final_refcoco_train.json`, ...), which PixelLLM's
//!   `build_mdetr_ref_tfrecord.py` reads: one `images` entry per expression (`caption`,
//!   `original_id` = COCO image id, `tokens_positive_eval`...) and its referred object in
//!   `annotations` (`bbox` `[x, y, w, h]` in pixels, `segmentation`, `tokens_positive`); or
//! - the refer toolkit's `instances.json` (COCO images/annotations) with its refs, converted
//!   from `refs(unc).p` to JSON by `tools/refer_pickle_to_json.py` (`[{ref_id, ann_id, image_id,
//!   split, sentences: [{sent, raw, sent_id, tokens}]}]`): one sample per sentence.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{line_of, read_to_string, write_string, DatasetError, ReadSummary, SkipMode};
use crate::metrics::masks::Segmentation;

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
            Err(e) => summary.malformed(
                mode,
                path,
                format!("{key}[{i}] (line {})", line_of(text, r)),
                e.to_string(),
            )?,
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
    let mut out = Vec::new();
    for (i, im) in &images {
        let Some(list) = by_image.get(&im.id) else {
            summary.malformed(
                mode,
                path,
                format!(
                    "images[{i}] (id {}, line {})",
                    im.id,
                    line_of(&text, raw.images[*i])
                ),
                "no annotation refers to this expression".into(),
            )?;
            continue;
        };
        for (k, a) in list {
            if let Err(why) = check_box(&a.bbox, im.width, im.height) {
                let line = line_of(&text, raw.annotations[*k]);
                let location = format!("annotations[{k}] (id {}, line {line})", a.id);
                summary.malformed(mode, path, location, why)?;
                continue;
            }
            out.push(RefSample {
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
            });
        }
    }
    summary.samples = out.len();
    Ok((out, summary))
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

/// Reads the refer toolkit's `instances.json` and refs JSON; `split` keeps only that split.
pub fn read_refer(
    instances: &Path,
    refs: &Path,
    split: Option<&str>,
    mode: SkipMode,
) -> Result<(Vec<RefSample>, ReadSummary), DatasetError> {
    let text = read_to_string(instances)?;
    let raw: RawCoco = serde_json::from_str(&text).map_err(|source| DatasetError::Json {
        path: instances.to_path_buf(),
        expected: "a COCO instances file with `images` and `annotations` arrays",
        source,
    })?;
    let mut summary = ReadSummary::default();
    let images: HashMap<i64, CocoImage> =
        parse_elements::<CocoImage>(instances, &text, "images", &raw.images, mode, &mut summary)?
            .into_iter()
            .map(|(_, im)| (im.id, im))
            .collect();
    let anns: HashMap<i64, CocoAnnotation> = parse_elements::<CocoAnnotation>(
        instances,
        &text,
        "annotations",
        &raw.annotations,
        mode,
        &mut summary,
    )?
    .into_iter()
    .map(|(_, a)| (a.id, a))
    .collect();

    let refs_text = read_to_string(refs)?;
    let raw_refs: Vec<&RawValue> =
        serde_json::from_str(&refs_text).map_err(|source| DatasetError::Json {
            path: refs.to_path_buf(),
            expected:
                "a JSON array of refs (convert refs(unc).p with tools/refer_pickle_to_json.py)",
            source,
        })?;
    let mut out = Vec::new();
    for (i, r) in
        parse_elements::<ReferRef>(refs, &refs_text, "refs", &raw_refs, mode, &mut summary)?
    {
        if split.is_some_and(|s| s != r.split) {
            continue;
        }
        let location = format!(
            "refs[{i}] (ref_id {}, line {})",
            r.ref_id,
            line_of(&refs_text, raw_refs[i])
        );
        let Some(ann) = anns.get(&r.ann_id) else {
            summary.malformed(
                mode,
                refs,
                location,
                format!("ann_id {} is not in {}", r.ann_id, instances.display()),
            )?;
            continue;
        };
        let Some(im) = images.get(&r.image_id) else {
            summary.malformed(
                mode,
                refs,
                location,
                format!("image_id {} is not in {}", r.image_id, instances.display()),
            )?;
            continue;
        };
        if let Err(why) = check_box(&ann.bbox, im.width, im.height) {
            summary.malformed(mode, instances, format!("annotation id {}", ann.id), why)?;
            continue;
        }
        for s in &r.sentences {
            out.push(RefSample {
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
            });
        }
    }
    summary.samples = out.len();
    Ok((out, summary))
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
