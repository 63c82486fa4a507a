//! Referring localization from boxes: Acc@0.5 and mean IoU over COCO-style `[x, y, w, h]` boxes
//! in pixels (no "+1"; IoU of boxes as pycocotools computes it).

use std::collections::BTreeMap;
use std::path::Path;

use super::{read_json, MetricsError};

/// IoU of two `[x, y, w, h]` boxes; 0 when the union is empty. Symmetric, in [0, 1].
pub fn iou_xywh(a: [f64; 4], b: [f64; 4]) -> f64 {
    let iw = ((a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0])).max(0.0);
    let ih = ((a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = a[2] * a[3] + b[2] * b[3] - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Referring localization scores, as `pixel metrics refloc` prints them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RefLocScores {
    /// Fraction of samples with IoU strictly greater than 0.5.
    pub acc50: f64,
    /// Mean IoU.
    pub miou: f64,
}

fn check_box(id: &str, b: &[f64]) -> Result<[f64; 4], MetricsError> {
    let arr: [f64; 4] = b.try_into().map_err(|_| MetricsError::InvalidBox {
        id: id.to_string(),
        bbox: b.to_vec(),
        why: "expected 4 numbers [x, y, w, h]",
    })?;
    if arr.iter().any(|v| !v.is_finite()) || arr[2] < 0.0 || arr[3] < 0.0 {
        return Err(MetricsError::InvalidBox {
            id: id.to_string(),
            bbox: b.to_vec(),
            why: "coordinates must be finite and width/height non-negative",
        });
    }
    Ok(arr)
}

/// Acc@0.5 and mIoU over ids; every ground-truth id needs a prediction and vice versa.
pub fn refloc_scores(
    gt: &BTreeMap<String, Vec<f64>>,
    preds: &BTreeMap<String, Vec<f64>>,
) -> Result<RefLocScores, MetricsError> {
    super::check_prediction_ids(gt, preds)?;
    let mut hits = 0usize;
    let mut sum = 0.0;
    for (id, g) in gt {
        let p = preds
            .get(id)
            .ok_or_else(|| MetricsError::MissingPrediction { id: id.clone() })?;
        let iou = iou_xywh(check_box(id, g)?, check_box(id, p)?);
        if iou > 0.5 {
            hits += 1;
        }
        sum += iou;
    }
    let n = gt.len() as f64;
    Ok(RefLocScores {
        acc50: hits as f64 / n,
        miou: sum / n,
    })
}

/// `pixel metrics refloc --gt G.json --preds P.json`.
pub fn refloc_from_files(gt: &Path, preds: &Path) -> Result<RefLocScores, MetricsError> {
    const LAYOUT: &str = "an object {\"<id>\": [x, y, w, h], ...} in pixels";
    let g: BTreeMap<String, Vec<f64>> = read_json(gt, LAYOUT)?;
    let p: BTreeMap<String, Vec<f64>> = read_json(preds, LAYOUT)?;
    refloc_scores(&g, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_half_overlap() {
        let v = iou_xywh([0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 2.0, 2.0]);
        assert!((v - 2.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn acc50_requires_strictly_more_than_half() {
        let mut gt = BTreeMap::new();
        let mut pr = BTreeMap::new();
        // IoU exactly 0.5: [0,0,2,1] vs [0,0,1,1] -> 1/2.
        gt.insert("a".to_string(), vec![0.0, 0.0, 2.0, 1.0]);
        pr.insert("a".to_string(), vec![0.0, 0.0, 1.0, 1.0]);
        let s = refloc_scores(&gt, &pr).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.acc50, 0.0);
        assert!((s.miou - 0.5).abs() < 1e-12);
    }

    #[test]
    fn malformed_box_names_the_id() {
        let mut gt = BTreeMap::new();
        gt.insert("x7".to_string(), vec![0.0, 0.0, 1.0]);
        let err = refloc_scores(&gt, &gt.clone())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("x7"), "{err}");
    }
}
