//! Scores of the heads that read the image, for `pixel eval`: referring segmentation (a `mask`
//! head) and dense captioning (a `detection` head whose proposals are captioned).
//!
//! Both hand the model's outputs to the benchmark metrics of [`pixel_metrics`], so the numbers
//! are computed as the references compute them: masks as COCO RLE into scenic's
//! `RefCocoEvaluator` formulas ([`refseg_scores`]: cIoU, gIoU, mask Acc@0.5), detections with
//! their captions into the PixelLLM dense-captioning protocol ([`densecap_map`], boxes as
//! `[x, y, w, h]` in pixels, METEOR against the merged ground truth's captions).
use crate::error::{Result, RunError};
use image::{GrayImage, Luma};
use pixel_core::geometry::BoxXyxy;
use pixel_data::shapes_ln::Sample;
use pixel_metrics::densecap::{
    DensecapGt, DensecapGtAnnotation, DensecapImage, DensecapPrediction,
};
use pixel_metrics::masks::{refseg_scores, RleCounts, Segmentation};
use pixel_metrics::{densecap_map, AnyId, DensecapProtocol, MeteorScorer, RefSegScores, Rle};
use pixel_model::heads::Scored;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Referring segmentation: the mask head's masks against the objects' masks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentationReport {
    /// Cumulative IoU: total intersection over total union.
    pub ciou: f64,
    /// Mean per-expression IoU.
    pub giou: f64,
    /// Fraction of expressions whose mask IoU is above 0.5.
    pub acc50: f64,
    /// The same three for the best constant box (fitted on training referring boxes) filled
    /// as a mask: what a model that ignores image and text gets.
    pub baseline_ciou: f64,
    pub baseline_giou: f64,
    pub baseline_acc50: f64,
    /// Referring expressions scored: those whose object has a mask.
    pub count: usize,
}

/// Dense captioning: detection proposals, each captioned, against the region captions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseCaptioningReport {
    /// mAP over IoU x METEOR thresholds (PixelLLM's protocol: 5 x 6 pairs).
    pub map: f64,
    /// mAP over IoU thresholds alone: the proposals as a detector.
    pub map_detection: f64,
    pub images: usize,
    /// Ground-truth regions, before the protocol merges overlapping ones.
    pub regions: usize,
    /// Proposals captioned, at most `max_proposals` per image.
    pub proposals: usize,
    pub max_proposals: usize,
}

/// One captioned proposal of a detection head.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub proposal: Scored,
    pub caption: String,
}

/// A binary mask (on above 127; the mask head writes 255 inside) as COCO RLE, whose runs are
/// column-major.
pub fn mask_segmentation(mask: &GrayImage) -> Segmentation {
    let (w, h) = mask.dimensions();
    let mut on = Vec::with_capacity((w * h) as usize);
    for x in 0..w {
        for y in 0..h {
            on.push(mask.get_pixel(x, y).0[0] > 127);
        }
    }
    let rle = Rle::encode(h as usize, w as usize, &on);
    Segmentation::Rle {
        size: [rle.h, rle.w],
        counts: RleCounts::Runs(rle.counts),
    }
}

/// `b` filled as a `width x height` mask: the pixels whose centre lies in the box.
pub fn box_mask(b: BoxXyxy, width: u32, height: u32) -> GrayImage {
    GrayImage::from_fn(width, height, |x, y| {
        let (cx, cy) = (
            (x as f32 + 0.5) / width as f32,
            (y as f32 + 0.5) / height as f32,
        );
        let inside = cx >= b.x0 && cx < b.x1 && cy >= b.y0 && cy < b.y1;
        Luma([if inside { 255 } else { 0 }])
    })
}

/// cIoU, gIoU and mask Acc@0.5 of `predicted` against `targets` (pairs in order).
fn refseg(predicted: &[GrayImage], targets: &[GrayImage]) -> Result<RefSegScores> {
    let keyed = |masks: &[GrayImage]| -> BTreeMap<String, Segmentation> {
        masks
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("{i:06}"), mask_segmentation(m)))
            .collect()
    };
    refseg_scores(&keyed(targets), &keyed(predicted))
        .map_err(|e| RunError::Invalid(format!("referring segmentation: {e}")))
}

/// The referring-segmentation report of `predicted` masks against `targets` (same order, same
/// sizes), with the constant `baseline` box filled as every prediction.
pub fn segmentation_report(
    predicted: &[GrayImage],
    targets: &[GrayImage],
    baseline: BoxXyxy,
) -> Result<SegmentationReport> {
    if predicted.len() != targets.len() {
        return Err(RunError::Invalid(format!(
            "referring segmentation: {} predicted masks for {} targets",
            predicted.len(),
            targets.len()
        )));
    }
    let model = refseg(predicted, targets)?;
    let constant: Vec<GrayImage> = targets
        .iter()
        .map(|t| box_mask(baseline, t.width(), t.height()))
        .collect();
    let base = refseg(&constant, targets)?;
    Ok(SegmentationReport {
        ciou: model.ciou,
        giou: model.giou,
        acc50: model.acc50,
        baseline_ciou: base.ciou,
        baseline_giou: base.giou,
        baseline_acc50: base.acc50,
        count: targets.len(),
    })
}

/// A normalized box as the densecap metric's `[x, y, w, h]` in pixels of a `width x height`
/// image.
fn xywh_pixels(b: [f32; 4], width: u32, height: u32) -> [f64; 4] {
    let (w, h) = (f64::from(width), f64::from(height));
    let [x0, y0, x1, y1] = b.map(f64::from);
    [x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h]
}

/// Dense-captioning scores of `detections[i]` on `samples[i]`, whose regions (boxes and
/// captions) are the ground truth. `None` when the samples have no region: the protocol's
/// recall is then undefined.
pub fn dense_captioning_report(
    samples: &[Sample],
    detections: &[Vec<Detection>],
    max_proposals: usize,
    meteor: &dyn MeteorScorer,
) -> Result<Option<DenseCaptioningReport>> {
    if samples.len() != detections.len() {
        return Err(RunError::Invalid(format!(
            "dense captioning: detections for {} images, {} images",
            detections.len(),
            samples.len()
        )));
    }
    let regions: usize = samples.iter().map(|s| s.regions.len()).sum();
    if regions == 0 {
        return Ok(None);
    }
    // Images are keyed by position: file image ids need not be unique across sources.
    let mut gt = DensecapGt {
        images: Vec::with_capacity(samples.len()),
        annotations: Vec::with_capacity(regions),
    };
    let mut predictions = Vec::new();
    for (i, (sample, found)) in samples.iter().zip(detections).enumerate() {
        let id = AnyId::Int(i as i64);
        let (w, h) = sample.image.dimensions();
        gt.images.push(DensecapImage { id: id.clone() });
        for r in &sample.regions {
            gt.annotations.push(DensecapGtAnnotation {
                image_id: id.clone(),
                bbox: xywh_pixels(r.bbox, w, h),
                caption: r.caption.clone(),
            });
        }
        for d in found {
            predictions.push(DensecapPrediction {
                image_id: id.clone(),
                bbox: xywh_pixels(d.proposal.bbox.to_array(), w, h),
                caption: d.caption.clone(),
                score: f64::from(d.proposal.score),
            });
        }
    }
    let scores = densecap_map(&gt, &predictions, meteor, &DensecapProtocol::pixel_llm())
        .map_err(|e| RunError::Invalid(format!("dense captioning: {e}")))?;
    Ok(Some(DenseCaptioningReport {
        map: scores.map,
        map_detection: scores.map_detection,
        images: samples.len(),
        regions,
        proposals: predictions.len(),
        max_proposals,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_data::shapes_ln::{ShapesLn, ShapesLnConfig, Split};
    use pixel_metrics::Meteor;

    fn samples(n: u64) -> Vec<Sample> {
        let data = ShapesLn::new(ShapesLnConfig::default(), 5).unwrap_or_else(|e| panic!("{e}"));
        (0..n).map(|i| data.sample(Split::Validation, i)).collect()
    }

    #[test]
    fn a_box_mask_holds_the_pixels_whose_centre_is_inside() {
        let b = BoxXyxy::new(0.25, 0.25, 0.75, 0.5).unwrap_or_else(|e| panic!("{e}"));
        let m = box_mask(b, 8, 8);
        for (x, y, p) in m.enumerate_pixels() {
            let inside = (2..6).contains(&x) && (2..4).contains(&y);
            assert_eq!(p.0[0] == 255, inside, "pixel ({x}, {y})");
        }
        // Column-major runs: 2 empty columns, then 4 columns of 2 on in 8.
        let Segmentation::Rle { size, counts } = mask_segmentation(&m) else {
            panic!("not RLE")
        };
        assert_eq!(size, [8, 8]);
        assert_eq!(counts, RleCounts::Runs(vec![18, 2, 6, 2, 6, 2, 6, 2, 20]));
    }

    #[test]
    fn the_true_masks_as_predictions_score_one() {
        let targets: Vec<GrayImage> = samples(4)
            .into_iter()
            .flat_map(|s| s.objects.into_iter().map(|o| o.mask))
            .collect();
        assert!(targets.len() >= 4);
        let r = segmentation_report(&targets, &targets, BoxXyxy::whole_image())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.ciou > 1.0 - 1e-6 && r.giou > 1.0 - 1e-6, "{r:?}");
        assert_eq!((r.acc50, r.count), (1.0, targets.len()));
        // The whole image covers every object: its IoU is the object's share of the image.
        assert!(r.baseline_ciou > 0.0 && r.baseline_ciou < 0.5, "{r:?}");
    }

    #[test]
    fn the_true_regions_as_detections_score_one() {
        let samples = samples(6);
        let detections: Vec<Vec<Detection>> = samples
            .iter()
            .map(|s| {
                s.regions
                    .iter()
                    .map(|r| Detection {
                        proposal: Scored {
                            bbox: BoxXyxy::from_array(r.bbox).unwrap_or_else(|e| panic!("{e}")),
                            score: 0.9,
                        },
                        caption: r.caption.clone(),
                    })
                    .collect()
            })
            .collect();
        let r = dense_captioning_report(&samples, &detections, 10, &Meteor::default())
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("the samples have regions"));
        assert!((r.map - 1.0).abs() < 1e-9, "{r:?}");
        assert!((r.map_detection - 1.0).abs() < 1e-9, "{r:?}");
        let regions: usize = samples.iter().map(|s| s.regions.len()).sum();
        assert_eq!((r.images, r.regions, r.proposals), (6, regions, regions));
        // No detection at all: nothing is found.
        let none = vec![Vec::new(); samples.len()];
        let r = dense_captioning_report(&samples, &none, 10, &Meteor::default())
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("the samples have regions"));
        assert_eq!((r.map, r.map_detection), (0.0, 0.0));
    }
}
