//! Visual Genome region descriptions (`region_descriptions.json`):
//! `[{"id": image_id, "regions": [{"region_id", "image_id", "x", "y", "width", "height",
//! "phrase"}]}]` (version 1.0 files name the image key `image_id` instead of `id`).

use std::path::Path;

use serde_json::value::RawValue;

use super::{line_of, read_to_string, write_string, DatasetError, ReadSummary, SkipMode};
use crate::metrics::densecap::{DensecapGt, DensecapGtAnnotation, DensecapImage};
use crate::metrics::AnyId;

/// One described region.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionSample {
    pub image_id: i64,
    pub region_id: i64,
    /// `[x, y, w, h]` in pixels.
    pub bbox_xywh: [f64; 4],
    pub phrase: String,
}

impl RegionSample {
    /// Image file name in `VG_100K*/`.
    pub fn image_file_name(&self) -> String {
        format!("{}.jpg", self.image_id)
    }
}

/// One image entry of `region_descriptions.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VgImageRegions {
    #[serde(alias = "image_id")]
    pub id: i64,
    pub regions: Vec<VgRegion>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VgRegion {
    #[serde(alias = "id")]
    pub region_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<i64>,
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    pub phrase: String,
}

/// An image entry with its regions left unparsed, so a bad region is reported (or skipped) on
/// its own, with its line.
#[derive(serde::Deserialize)]
struct RawImageRegions<'a> {
    #[serde(alias = "image_id")]
    id: i64,
    #[serde(borrow)]
    regions: Vec<&'a RawValue>,
}

/// Reads `region_descriptions.json`, one sample per region.
pub fn read_vg_regions(
    path: &Path,
    mode: SkipMode,
) -> Result<(Vec<RegionSample>, ReadSummary), DatasetError> {
    let text = read_to_string(path)?;
    let raw: Vec<&RawValue> = serde_json::from_str(&text).map_err(|source| DatasetError::Json {
        path: path.to_path_buf(),
        expected: "a JSON array of {\"id\", \"regions\": [...]} (region_descriptions.json)",
        source,
    })?;
    let mut summary = ReadSummary::default();
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let entry: RawImageRegions = match serde_json::from_str(r.get()) {
            Ok(e) => e,
            Err(e) => {
                let location = format!("[{i}] (line {})", line_of(&text, r));
                summary.malformed(mode, path, location, e.to_string())?;
                continue;
            }
        };
        for (k, raw_region) in entry.regions.iter().enumerate() {
            let line = line_of(&text, raw_region);
            let reg: VgRegion = match serde_json::from_str(raw_region.get()) {
                Ok(reg) => reg,
                Err(e) => {
                    let location = format!("[{i}].regions[{k}] (line {line})");
                    summary.malformed(mode, path, location, e.to_string())?;
                    continue;
                }
            };
            let b = [reg.x, reg.y, reg.width, reg.height];
            if b.iter().any(|v| !v.is_finite()) || reg.width < 0.0 || reg.height < 0.0 {
                summary.malformed(
                    mode,
                    path,
                    format!(
                        "[{i}].regions[{k}] (region_id {}, line {line})",
                        reg.region_id
                    ),
                    format!("box {b:?} must be finite with non-negative width and height"),
                )?;
                continue;
            }
            out.push(RegionSample {
                image_id: reg.image_id.unwrap_or(entry.id),
                region_id: reg.region_id,
                bbox_xywh: b,
                phrase: reg.phrase.clone(),
            });
        }
    }
    summary.samples = out.len();
    Ok((out, summary))
}

/// Writes samples as `region_descriptions.json`, grouped by image in first-seen order.
pub fn write_vg_regions(path: &Path, samples: &[RegionSample]) -> Result<(), DatasetError> {
    let mut images: Vec<VgImageRegions> = Vec::new();
    for s in samples {
        let region = VgRegion {
            region_id: s.region_id,
            image_id: Some(s.image_id),
            x: s.bbox_xywh[0],
            y: s.bbox_xywh[1],
            width: s.bbox_xywh[2],
            height: s.bbox_xywh[3],
            phrase: s.phrase.clone(),
        };
        match images.iter_mut().find(|im| im.id == s.image_id) {
            Some(im) => im.regions.push(region),
            None => images.push(VgImageRegions {
                id: s.image_id,
                regions: vec![region],
            }),
        }
    }
    let text = serde_json::to_string(&images).map_err(|e| DatasetError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    write_string(path, &text)
}

/// Dense-captioning ground truth (`pixel metrics densecap --gt`) from regions; `image_ids`
/// lists the evaluated images (images without regions still count).
pub fn regions_to_densecap_gt(samples: &[RegionSample], image_ids: &[i64]) -> DensecapGt {
    DensecapGt {
        images: image_ids
            .iter()
            .map(|&id| DensecapImage { id: AnyId::Int(id) })
            .collect(),
        annotations: samples
            .iter()
            .filter(|s| image_ids.contains(&s.image_id))
            .map(|s| DensecapGtAnnotation {
                image_id: AnyId::Int(s.image_id),
                bbox: s.bbox_xywh,
                caption: s.phrase.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_0_image_key_is_accepted() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("r.json");
        std::fs::write(
            &p,
            r#"[{"image_id": 7, "regions": [{"id": 1, "x": 1, "y": 2, "width": 3, "height": 4, "phrase": "a cat"}]}]"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (s, _) = read_vg_regions(&p, SkipMode::Strict).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s,
            vec![RegionSample {
                image_id: 7,
                region_id: 1,
                bbox_xywh: [1.0, 2.0, 3.0, 4.0],
                phrase: "a cat".into()
            }]
        );
    }

    #[test]
    fn densecap_gt_keeps_images_without_regions() {
        let s = vec![RegionSample {
            image_id: 1,
            region_id: 1,
            bbox_xywh: [0.0; 4],
            phrase: "x".into(),
        }];
        let gt = regions_to_densecap_gt(&s, &[1, 2]);
        assert_eq!(gt.images.len(), 2);
        assert_eq!(gt.annotations.len(), 1);
    }
}
