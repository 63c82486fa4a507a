//! Dense captioning mAP on Visual Genome (Johnson et al., DenseCap).
//!
//! The protocol, shared by densecap's Lua `eval/eval_utils.lua` (`DenseCaptioningEvaluator`)
//! and its port in scenic `projects/pixel_llm/densecap_evaluator.py` (which PixelLLM reports):
//!
//! 1. Per image, ground-truth boxes are merged: while some box overlaps others with IoU >= 0.7,
//!    the box with the most such neighbours (itself included; first on ties) and all of them
//!    become one box (their mean) that keeps all their captions.
//! 2. Per image, detections in decreasing score order each take the merged ground truth of
//!    highest IoU; the detection can only count if that ground truth was not taken before.
//! 3. All detections are sorted by score; for each IoU threshold and METEOR threshold, a
//!    detection is a true positive when it took a ground truth, its IoU >= the IoU threshold
//!    and its METEOR against that ground truth's captions (best caption) > the METEOR threshold.
//! 4. AP is the 100-point interpolated AP (mean over t = 0, 0.01, ..., 0.99 of the best precision
//!    at recall >= t) with recall over all merged ground truths; mAP averages over the threshold
//!    pairs, and the detection mAP over IoU thresholds alone.
//!
//! The two references differ in details; [`DensecapProtocol`] names each difference, with
//! [`DensecapProtocol::pixel_llm`] (the default) and [`DensecapProtocol::densecap_lua`].

#![allow(clippy::needless_range_loop)] // index loops mirror the reference implementation

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::meteor::MeteorScorer;
use super::{read_json, AnyId, MetricsError};

/// The knobs on which densecap's Lua evaluator and scenic's PixelLLM port differ.
#[derive(Debug, Clone, PartialEq)]
pub struct DensecapProtocol {
    /// IoU at or above which ground-truth boxes are merged (0.7 in both).
    pub merge_iou: f64,
    /// IoU thresholds (0.3, 0.4, 0.5, 0.6, 0.7 in both).
    pub iou_thresholds: Vec<f64>,
    /// METEOR thresholds (strictly greater): scenic 0, 0.05, ..., 0.25 (30 pairs);
    /// Lua 0.05, ..., 0.25 (25 pairs).
    pub meteor_thresholds: Vec<f64>,
    /// Lua: boxes span pixels `x..x+w-1` and IoU uses the "+1" areas. Scenic: continuous boxes.
    pub plus_one_pixel: bool,
    /// Lua: a detection overlapping no ground truth indexes `used[-1]`, which in torch is the
    /// image's *last* ground truth; it marks that one taken. Scenic: no side effect.
    pub lua_unmatched_takes_last: bool,
    /// Lua: the recall thresholds are accumulated as `t = t + 0.01` in floating point (so 0.29
    /// is 0.29000000000000004). Scenic: `t / 100`.
    pub lua_accumulated_recall_steps: bool,
    /// Scenic's `ignore_empty_string`: a matched ground truth with an empty caption compares
    /// "EMPTY" with "EMPTY".
    pub empty_caption_as_token: bool,
}

impl DensecapProtocol {
    /// scenic `projects/pixel_llm/densecap_evaluator.py` (what PixelLLM reports).
    pub fn pixel_llm() -> Self {
        Self {
            merge_iou: 0.7,
            iou_thresholds: vec![0.3, 0.4, 0.5, 0.6, 0.7],
            meteor_thresholds: vec![0.0, 0.05, 0.1, 0.15, 0.2, 0.25],
            plus_one_pixel: false,
            lua_unmatched_takes_last: false,
            lua_accumulated_recall_steps: false,
            empty_caption_as_token: true,
        }
    }

    /// densecap's Lua `eval_utils.lua`.
    pub fn densecap_lua() -> Self {
        Self {
            merge_iou: 0.7,
            iou_thresholds: vec![0.3, 0.4, 0.5, 0.6, 0.7],
            meteor_thresholds: vec![0.05, 0.1, 0.15, 0.2, 0.25],
            plus_one_pixel: true,
            lua_unmatched_takes_last: true,
            lua_accumulated_recall_steps: true,
            empty_caption_as_token: false,
        }
    }
}

impl Default for DensecapProtocol {
    fn default() -> Self {
        Self::pixel_llm()
    }
}

/// `G.json`: `{"images": [{"id"}], "annotations": [{"image_id", "bbox": [x, y, w, h], "caption"}]}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DensecapGt {
    pub images: Vec<DensecapImage>,
    pub annotations: Vec<DensecapGtAnnotation>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DensecapImage {
    pub id: AnyId,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DensecapGtAnnotation {
    pub image_id: AnyId,
    pub bbox: [f64; 4],
    pub caption: String,
}

/// One entry of `P.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DensecapPrediction {
    pub image_id: AnyId,
    pub bbox: [f64; 4],
    pub caption: String,
    pub score: f64,
}

/// Result of [`densecap_map`]; `map` and `map_detection` are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DensecapScores {
    pub map: f64,
    pub map_detection: f64,
    /// AP per `iou{t}_meteor{m}` pair.
    pub ap_breakdown: BTreeMap<String, f64>,
    /// Detection AP per `iou{t}`.
    pub det_breakdown: BTreeMap<String, f64>,
}

/// A merged ground-truth region: mean box and all captions.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedGt {
    pub bbox: [f64; 4],
    pub captions: Vec<String>,
}

fn iou(a: &[f64; 4], b: &[f64; 4], plus_one: bool) -> f64 {
    if plus_one {
        // x1 = x, x2 = x + w - 1 (densecap's box_utils convention), "+1" areas.
        let (ax2, ay2, bx2, by2) = (
            a[0] + a[2] - 1.0,
            a[1] + a[3] - 1.0,
            b[0] + b[2] - 1.0,
            b[1] + b[3] - 1.0,
        );
        let iw = ax2.min(bx2) - a[0].max(b[0]) + 1.0;
        let ih = ay2.min(by2) - a[1].max(b[1]) + 1.0;
        if iw > 0.0 && ih > 0.0 {
            let ua = a[2] * a[3] + b[2] * b[3] - iw * ih;
            iw * ih / ua
        } else {
            0.0
        }
    } else {
        super::boxes::iou_xywh(*a, *b)
    }
}

/// Merges one image's ground truth (step 1 of the protocol).
pub fn merge_gt_boxes(
    boxes: &[[f64; 4]],
    captions: &[String],
    protocol: &DensecapProtocol,
) -> Vec<MergedGt> {
    let n = boxes.len();
    let mut d = vec![vec![0.0f64; n]; n];
    for i in 0..n {
        for j in 0..n {
            d[i][j] = if i == j && protocol.plus_one_pixel {
                1.0
            } else {
                iou(&boxes[i], &boxes[j], protocol.plus_one_pixel)
            };
        }
    }
    let mut out = Vec::new();
    loop {
        let counts: Vec<usize> = (0..n)
            .map(|i| (0..n).filter(|&j| d[i][j] >= protocol.merge_iou).count())
            .collect();
        let Some((top, &best)) = counts.iter().enumerate().fold(
            None,
            |acc: Option<(usize, &usize)>, (i, c)| match acc {
                Some((_, b)) if *b >= *c => acc,
                _ => Some((i, c)),
            },
        ) else {
            break;
        };
        if best == 0 {
            break;
        }
        let members: Vec<usize> = (0..n)
            .filter(|&j| d[top][j] >= protocol.merge_iou)
            .collect();
        let mut mean = [0.0f64; 4];
        for &m in &members {
            for k in 0..4 {
                mean[k] += boxes[m][k];
            }
        }
        for v in mean.iter_mut() {
            *v /= members.len() as f64;
        }
        out.push(MergedGt {
            bbox: mean,
            captions: members
                .iter()
                .map(|&m| captions[m].replace('\n', ""))
                .collect(),
        });
        for &m in &members {
            for k in 0..n {
                d[m][k] = 0.0;
                d[k][m] = 0.0;
            }
        }
    }
    out
}

struct Record {
    ok: bool,
    iou: f64,
    score: f64,
    meteor: f64,
}

/// Dense captioning mAP and detection mAP. `scorer` gives METEOR of a detection's caption
/// against the captions of the ground truth it took (only asked for detections that took one).
pub fn densecap_map(
    gt: &DensecapGt,
    preds: &[DensecapPrediction],
    scorer: &dyn MeteorScorer,
    protocol: &DensecapProtocol,
) -> Result<DensecapScores, MetricsError> {
    if gt.images.is_empty() {
        return Err(MetricsError::Empty {
            what: "the ground-truth image list",
        });
    }
    let index: HashMap<&AnyId, usize> = gt
        .images
        .iter()
        .enumerate()
        .map(|(i, im)| (&im.id, i))
        .collect();
    let mut gt_boxes: Vec<Vec<[f64; 4]>> = vec![Vec::new(); gt.images.len()];
    let mut gt_caps: Vec<Vec<String>> = vec![Vec::new(); gt.images.len()];
    for (k, a) in gt.annotations.iter().enumerate() {
        let &i = index
            .get(&a.image_id)
            .ok_or_else(|| MetricsError::MissingReference {
                id: format!("annotations[{k}].image_id = {}", a.image_id),
                refs: "the ground-truth `images` list".into(),
            })?;
        if a.bbox.iter().any(|v| !v.is_finite()) || a.bbox[2] < 0.0 || a.bbox[3] < 0.0 {
            return Err(MetricsError::InvalidBox {
                id: format!("annotations[{k}]"),
                bbox: a.bbox.to_vec(),
                why: "coordinates must be finite and width/height non-negative",
            });
        }
        gt_boxes[i].push(a.bbox);
        gt_caps[i].push(a.caption.clone());
    }
    let mut dets: Vec<Vec<&DensecapPrediction>> = vec![Vec::new(); gt.images.len()];
    for (k, p) in preds.iter().enumerate() {
        let &i = index
            .get(&p.image_id)
            .ok_or_else(|| MetricsError::MissingReference {
                id: format!("predictions[{k}].image_id = {}", p.image_id),
                refs: "the ground-truth `images` list".into(),
            })?;
        if !p.score.is_finite() || p.bbox.iter().any(|v| !v.is_finite()) {
            return Err(MetricsError::InvalidBox {
                id: format!("predictions[{k}]"),
                bbox: p.bbox.to_vec(),
                why: "box and score must be finite numbers",
            });
        }
        dets[i].push(p);
    }

    let mut records: Vec<Record> = Vec::with_capacity(preds.len());
    let mut npos = 0usize;
    for i in 0..gt.images.len() {
        let merged = merge_gt_boxes(&gt_boxes[i], &gt_caps[i], protocol);
        npos += merged.len();
        let mut ds = dets[i].clone();
        ds.sort_by(|a, b| b.score.total_cmp(&a.score));
        let mut used = vec![false; merged.len()];
        for d in ds {
            let mut best: Option<(usize, f64)> = None;
            for (j, g) in merged.iter().enumerate() {
                let ov = iou(&d.bbox, &g.bbox, protocol.plus_one_pixel);
                if ov > best.map_or(0.0, |b| b.1) {
                    best = Some((j, ov));
                }
            }
            let (ok, ov, meteor) = match best {
                Some((j, ov)) => {
                    let ok = !used[j];
                    used[j] = true;
                    let meteor = if ok {
                        let caps = &merged[j].captions;
                        if protocol.empty_caption_as_token && caps.iter().any(|c| c.is_empty()) {
                            scorer.score("EMPTY", &["EMPTY".to_string()])?
                        } else {
                            scorer.score(&d.caption, caps)?
                        }
                    } else {
                        0.0
                    };
                    (ok, ov, meteor)
                }
                None => {
                    if protocol.lua_unmatched_takes_last {
                        if let Some(last) = used.last_mut() {
                            *last = true;
                        }
                    }
                    (false, 0.0, 0.0)
                }
            };
            records.push(Record {
                ok,
                iou: ov,
                score: d.score,
                meteor,
            });
        }
    }
    records.sort_by(|a, b| b.score.total_cmp(&a.score));

    let recall_steps: Vec<f64> = if protocol.lua_accumulated_recall_steps {
        let mut t = 0.0f64;
        let mut v = Vec::new();
        while t <= 1.0 {
            v.push(t);
            t += 0.01;
        }
        v
    } else {
        (0..100).map(|t| t as f64 / 100.0).collect()
    };
    let ap = |iou_t: f64, meteor_t: Option<f64>| -> f64 {
        let (mut tp, mut fp) = (0usize, 0usize);
        let mut rec = Vec::with_capacity(records.len());
        let mut prec = Vec::with_capacity(records.len());
        for r in &records {
            if r.ok && r.iou >= iou_t && meteor_t.is_none_or(|m| r.meteor > m) {
                tp += 1;
            } else {
                fp += 1;
            }
            rec.push(tp as f64 / npos as f64);
            prec.push(tp as f64 / (tp + fp) as f64);
        }
        // Recall never decreases, so `rec >= t` selects a suffix: take the suffix maximum of
        // precision at its first index (0 when the suffix is empty), as `max(prec * mask)`.
        let mut suffix_max = vec![0.0f64; prec.len() + 1];
        for k in (0..prec.len()).rev() {
            suffix_max[k] = suffix_max[k + 1].max(prec[k]);
        }
        let sum: f64 = recall_steps
            .iter()
            .map(|&t| suffix_max[rec.partition_point(|&r| r < t)])
            .sum();
        sum / recall_steps.len() as f64
    };

    let mut ap_breakdown = BTreeMap::new();
    let mut det_breakdown = BTreeMap::new();
    for &t in &protocol.iou_thresholds {
        det_breakdown.insert(format!("iou{t:.1}"), ap(t, None));
        for &m in &protocol.meteor_thresholds {
            ap_breakdown.insert(format!("iou{t:.1}_meteor{m:.2}"), ap(t, Some(m)));
        }
    }
    let mean = |m: &BTreeMap<String, f64>| {
        if m.is_empty() {
            0.0
        } else {
            m.values().sum::<f64>() / m.len() as f64
        }
    };
    Ok(DensecapScores {
        map: mean(&ap_breakdown),
        map_detection: mean(&det_breakdown),
        ap_breakdown,
        det_breakdown,
    })
}

/// `pixel metrics densecap --gt G.json --preds P.json`.
pub fn densecap_from_files(
    gt: &Path,
    preds: &Path,
    scorer: &dyn MeteorScorer,
    protocol: &DensecapProtocol,
) -> Result<DensecapScores, MetricsError> {
    let g: DensecapGt = read_json(
        gt,
        "{\"images\": [{\"id\": ...}], \"annotations\": [{\"image_id\", \"bbox\": [x, y, w, h], \"caption\"}]}",
    )?;
    let p: Vec<DensecapPrediction> = read_json(
        preds,
        "[{\"image_id\", \"bbox\": [x, y, w, h], \"caption\", \"score\"}, ...]",
    )?;
    densecap_map(&g, &p, scorer, protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Const(f64);
    impl MeteorScorer for Const {
        fn score(&self, _: &str, _: &[String]) -> Result<f64, MetricsError> {
            Ok(self.0)
        }
    }

    fn gt_one(boxes: &[[f64; 4]]) -> DensecapGt {
        DensecapGt {
            images: vec![DensecapImage { id: AnyId::Int(1) }],
            annotations: boxes
                .iter()
                .map(|b| DensecapGtAnnotation {
                    image_id: AnyId::Int(1),
                    bbox: *b,
                    caption: "a thing".into(),
                })
                .collect(),
        }
    }

    fn pred(b: [f64; 4], score: f64) -> DensecapPrediction {
        DensecapPrediction {
            image_id: AnyId::Int(1),
            bbox: b,
            caption: "a thing".into(),
            score,
        }
    }

    #[test]
    fn perfect_detections_score_one() {
        let g = gt_one(&[[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 10.0, 10.0]]);
        let p = vec![
            pred([0.0, 0.0, 10.0, 10.0], 0.9),
            pred([50.0, 50.0, 10.0, 10.0], 0.8),
        ];
        let s = densecap_map(&g, &p, &Const(1.0), &DensecapProtocol::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!((s.map - 1.0).abs() < 1e-12 && (s.map_detection - 1.0).abs() < 1e-12);
        assert_eq!(s.ap_breakdown.len(), 30);
    }

    #[test]
    fn overlapping_gt_boxes_merge_into_one() {
        let caps = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let m = merge_gt_boxes(
            &[
                [0.0, 0.0, 10.0, 10.0],
                [0.0, 0.0, 10.0, 9.0],
                [40.0, 40.0, 5.0, 5.0],
            ],
            &caps,
            &DensecapProtocol::default(),
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].captions, vec!["a".to_string(), "b".to_string()]);
        assert!((m[0].bbox[3] - 9.5).abs() < 1e-12);
    }

    #[test]
    fn second_detection_of_same_gt_is_false_positive() {
        let g = gt_one(&[[0.0, 0.0, 10.0, 10.0]]);
        let p = vec![
            pred([0.0, 0.0, 10.0, 10.0], 0.9),
            pred([0.0, 0.0, 10.0, 10.0], 0.8),
        ];
        let s = densecap_map(&g, &p, &Const(1.0), &DensecapProtocol::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!((s.map_detection - 1.0).abs() < 1e-12); // precision 1 at recall 1 reached first
    }

    #[test]
    fn low_meteor_counts_as_miss() {
        let g = gt_one(&[[0.0, 0.0, 10.0, 10.0]]);
        let p = vec![pred([0.0, 0.0, 10.0, 10.0], 0.9)];
        let s = densecap_map(&g, &p, &Const(0.0), &DensecapProtocol::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.map, 0.0);
        assert!((s.map_detection - 1.0).abs() < 1e-12);
    }
}
