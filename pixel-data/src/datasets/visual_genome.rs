//! Visual Genome region descriptions (`region_descriptions.json`):
//! `[{"id": image_id, "regions": [{"region_id", "image_id", "x", "y", "width", "height",
//! "phrase"}]}]` (version 1.0 files name the image key `image_id` instead of `id`), and the
//! image list `image_data.json`: `[{"image_id": 1, "coco_id": 12345 or null, "width": 800,
//! "height": 600, "url": "...", "flickr_id": ...}]` (the v1.2 release's shape; v1.0 names the
//! id `id`).
//!
//! Visual Genome image ids are not COCO ids; `image_data.json` maps them (`coco_id`, null for
//! the images that are not COCO's) and gives the size the region boxes are in.
//!
//! Malformed records (a missing or mistyped field, a box that is not finite or has a negative
//! size, an image of no pixels) are errors under [`SkipMode::Strict`]. Left out of a
//! well-formed file in every mode, each listed in [`ReadSummary::dropped`] with its line and
//! [`Reason`]:
//!
//! - [`Reason::EmptyPhrase`]: a region whose phrase is empty or only white space.
//! - [`Reason::DuplicateId`]: a `region_descriptions.json` entry of an image an earlier entry
//!   already gave (each of its regions is counted); an `image_data.json` record of an image id,
//!   or a COCO id, an earlier record already has. The first is kept.
//!
//! Where the image's size is known, [`normalized_region`] leaves out a region that leaves its
//! image by more than a pixel of rounding ([`Reason::RegionOutsideImage`]) or has no area once
//! normalised ([`Reason::RegionZeroArea`]).

use std::path::Path;

use serde_json::value::RawValue;

use super::{
    line_of, read_to_string, write_string, DatasetError, ReadSummary, Reason, SeenIds, SkipMode,
};
use pixel_metrics::densecap::{DensecapGt, DensecapGtAnnotation, DensecapImage};
use pixel_metrics::AnyId;

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
    let (regions, summary) = read_vg_regions_with_lines(path, mode)?;
    Ok((regions.into_iter().map(|(_, r)| r).collect(), summary))
}

/// [`read_vg_regions`], each region with the line it starts on.
pub fn read_vg_regions_with_lines(
    path: &Path,
    mode: SkipMode,
) -> Result<(Vec<(usize, RegionSample)>, ReadSummary), DatasetError> {
    let text = read_to_string(path)?;
    let raw: Vec<&RawValue> = serde_json::from_str(&text).map_err(|source| DatasetError::Json {
        path: path.to_path_buf(),
        expected: "a JSON array of {\"id\", \"regions\": [...]} (region_descriptions.json)",
        source,
    })?;
    let mut summary = ReadSummary::default();
    let mut seen = SeenIds::default();
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let line = line_of(&text, r);
        let entry: RawImageRegions = match serde_json::from_str(r.get()) {
            Ok(e) => e,
            Err(e) => {
                let location = format!("[{i}] (line {line})");
                summary.malformed(mode, path, location, line, e.to_string())?;
                continue;
            }
        };
        let repeated = seen.first("image id", entry.id, line).err();
        let regions = ImageRegions {
            path,
            text: &text,
            index: i,
            entry: &entry,
        };
        for (k, raw_region) in entry.regions.iter().enumerate() {
            if let Some(sample) =
                regions.read(k, raw_region, repeated.as_deref(), mode, &mut summary)?
            {
                out.push(sample);
            }
        }
    }
    summary.samples = out.len();
    Ok((out, summary))
}

/// One entry of `region_descriptions.json`, read region by region.
struct ImageRegions<'a> {
    path: &'a Path,
    text: &'a str,
    index: usize,
    entry: &'a RawImageRegions<'a>,
}

impl ImageRegions<'_> {
    /// Region `k` with its line, or `None` when it is skipped (malformed, under
    /// [`SkipMode::SkipAndCount`]) or left out (`repeated` says why the entry is a duplicate).
    fn read(
        &self,
        k: usize,
        raw: &RawValue,
        repeated: Option<&str>,
        mode: SkipMode,
        summary: &mut ReadSummary,
    ) -> Result<Option<(usize, RegionSample)>, DatasetError> {
        let (i, line) = (self.index, line_of(self.text, raw));
        let reg: VgRegion = match serde_json::from_str(raw.get()) {
            Ok(reg) => reg,
            Err(e) => {
                let location = format!("[{i}].regions[{k}] (line {line})");
                summary.malformed(mode, self.path, location, line, e.to_string())?;
                return Ok(None);
            }
        };
        let location = format!(
            "[{i}].regions[{k}] (region_id {}, line {line})",
            reg.region_id
        );
        let b = [reg.x, reg.y, reg.width, reg.height];
        if b.iter().any(|v| !v.is_finite()) || reg.width < 0.0 || reg.height < 0.0 {
            let why = format!("box {b:?} must be finite with non-negative width and height");
            summary.malformed(mode, self.path, location, line, why)?;
            return Ok(None);
        }
        if let Some(why) = repeated {
            summary.drop_record(location, line, Reason::DuplicateId, why.to_string());
            return Ok(None);
        }
        if reg.phrase.trim().is_empty() {
            summary.drop_record(location, line, Reason::EmptyPhrase, "empty phrase".into());
            return Ok(None);
        }
        let sample = RegionSample {
            image_id: reg.image_id.unwrap_or(self.entry.id),
            region_id: reg.region_id,
            bbox_xywh: b,
            phrase: reg.phrase,
        };
        Ok(Some((line, sample)))
    }
}

/// A region `[x, y, w, h]` in pixels of a `width x height` image as `[x0, y0, x1, y1]` in
/// [0, 1] (clipped: a pixel of rounding may overhang), or why it is left out.
pub fn normalized_region(
    b: [f64; 4],
    width: u32,
    height: u32,
) -> Result<[f32; 4], (Reason, String)> {
    let (w, h) = (f64::from(width), f64::from(height));
    let [x, y, bw, bh] = b;
    if width == 0 || height == 0 || x < -1.0 || y < -1.0 || x + bw > w + 1.0 || y + bh > h + 1.0 {
        return Err((
            Reason::RegionOutsideImage,
            format!("box {b:?} leaves its {width}x{height} image"),
        ));
    }
    let n = [x / w, y / h, (x + bw) / w, (y + bh) / h].map(|v| v.clamp(0.0, 1.0) as f32);
    if n[2] <= n[0] || n[3] <= n[1] {
        return Err((
            Reason::RegionZeroArea,
            format!("box {b:?} has no area in its {width}x{height} image"),
        ));
    }
    Ok(n)
}

/// One record of Visual Genome's `image_data.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VgImage {
    #[serde(alias = "id", deserialize_with = "super::lenient::number")]
    pub image_id: i64,
    /// The COCO id of the same photo; `None` (null) for images that are not COCO's.
    #[serde(default, deserialize_with = "super::lenient::optional_number")]
    pub coco_id: Option<i64>,
    /// The size the region boxes are in, in pixels.
    #[serde(deserialize_with = "super::lenient::number")]
    pub width: u32,
    #[serde(deserialize_with = "super::lenient::number")]
    pub height: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(
        default,
        deserialize_with = "super::lenient::optional_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub flickr_id: Option<i64>,
}

/// Reads `image_data.json`, each record with the line it starts on.
pub fn read_vg_image_data(
    path: &Path,
    mode: SkipMode,
) -> Result<(Vec<(usize, VgImage)>, ReadSummary), DatasetError> {
    let text = read_to_string(path)?;
    let raw: Vec<&RawValue> = serde_json::from_str(&text).map_err(|source| DatasetError::Json {
        path: path.to_path_buf(),
        expected: "a JSON array of {\"image_id\", \"coco_id\", \"width\", \"height\", ...} (Visual Genome image_data.json)",
        source,
    })?;
    let mut summary = ReadSummary::default();
    let (mut ids, mut coco_ids) = (SeenIds::default(), SeenIds::default());
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let line = line_of(&text, r);
        let location = format!("[{i}] (line {line})");
        let image: VgImage = match parse_vg_image(r) {
            Ok(image) => image,
            Err(why) => {
                summary.malformed(mode, path, location, line, why)?;
                continue;
            }
        };
        let repeated = ids.check("image id", &image.image_id).and_then(|()| {
            image
                .coco_id
                .map_or(Ok(()), |c| coco_ids.first("coco_id", c, line))
        });
        match repeated.and_then(|()| ids.first("image id", image.image_id, line)) {
            Ok(()) => out.push((line, image)),
            Err(why) => summary.drop_record(location, line, Reason::DuplicateId, why),
        }
    }
    summary.samples = out.len();
    Ok((out, summary))
}

/// One `image_data.json` record, or why it is malformed.
fn parse_vg_image(raw: &RawValue) -> Result<VgImage, String> {
    let image: VgImage = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
    if image.width == 0 || image.height == 0 {
        return Err(format!(
            "image {} is {}x{}: width and height must be positive",
            image.image_id, image.width, image.height
        ));
    }
    Ok(image)
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

    fn dropped(summary: &ReadSummary) -> Vec<(Reason, usize)> {
        summary.dropped.iter().map(|r| (r.cause, r.line)).collect()
    }

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("f.json");
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
        (dir, p)
    }

    #[test]
    fn empty_phrases_and_repeated_images_are_skipped_and_counted() {
        let (_dir, p) = write(
            r#"[{"id": 1, "regions": [
{"region_id": 1, "x": 1, "y": 2, "width": 3, "height": 4, "phrase": "a cat"},
{"region_id": 2, "x": 1, "y": 2, "width": 3, "height": 4, "phrase": ""}]},
{"id": 1, "regions": [
{"region_id": 3, "x": 1, "y": 2, "width": 3, "height": 4, "phrase": "a dog"},
{"region_id": 4, "x": 1, "y": 2, "width": 3, "height": 4, "phrase": "a hat"}]}]"#,
        );
        let (s, summary) = read_vg_regions(&p, SkipMode::Strict).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.len(), 1);
        assert_eq!(
            dropped(&summary),
            vec![
                (Reason::EmptyPhrase, 3),
                (Reason::DuplicateId, 5),
                (Reason::DuplicateId, 6)
            ]
        );
    }

    #[test]
    fn regions_leaving_their_image_or_without_area_are_left_out() {
        let reason = |b| normalized_region(b, 100, 50).err().map(|(r, _)| r);
        assert_eq!(
            reason([90.0, 0.0, 20.0, 10.0]),
            Some(Reason::RegionOutsideImage)
        );
        assert_eq!(
            reason([-5.0, 0.0, 20.0, 10.0]),
            Some(Reason::RegionOutsideImage)
        );
        assert_eq!(
            reason([10.0, 10.0, 0.0, 10.0]),
            Some(Reason::RegionZeroArea)
        );
        assert_eq!(
            reason([10.0, 50.0, 10.0, 0.5]),
            Some(Reason::RegionZeroArea)
        );
        // A pixel of rounding is clipped.
        assert_eq!(
            normalized_region([-0.5, 0.0, 100.5, 50.0], 100, 50),
            Ok([0.0, 0.0, 1.0, 1.0])
        );
    }

    /// Records in the shape of the Visual Genome v1.2 release's `image_data.json` (the first two
    /// are its first records; `coco_id` is null for images that are not COCO's).
    const IMAGE_DATA: &str = r#"[
{"width": 800, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg", "height": 600, "image_id": 1, "coco_id": null, "flickr_id": null},
{"width": 800, "url": "https://cs.stanford.edu/people/rak248/VG_100K/2.jpg", "height": 600, "image_id": 2, "coco_id": null, "flickr_id": null},
{"width": 500, "url": "https://cs.stanford.edu/people/rak248/VG_100K/51.jpg", "height": 333, "image_id": 51, "coco_id": 1000, "flickr_id": 2404563451},
{"width": 500, "url": "https://cs.stanford.edu/people/rak248/VG_100K/52.jpg", "height": 333, "image_id": 51, "coco_id": 1001, "flickr_id": null},
{"width": 500, "url": "https://cs.stanford.edu/people/rak248/VG_100K/53.jpg", "height": 333, "image_id": 53, "coco_id": 1000, "flickr_id": null}
]"#;

    #[test]
    fn image_data_in_the_publishers_shape_maps_vg_ids_to_coco_ids() {
        let (_dir, p) = write(IMAGE_DATA);
        let (images, summary) =
            read_vg_image_data(&p, SkipMode::Strict).unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<(i64, Option<i64>)> = images
            .iter()
            .map(|(_, im)| (im.image_id, im.coco_id))
            .collect();
        assert_eq!(ids, vec![(1, None), (2, None), (51, Some(1000))]);
        assert_eq!((images[2].1.width, images[2].1.height), (500, 333));
        assert_eq!(images[2].0, 4);
        // A repeated image id, then a repeated COCO id: the first is kept.
        assert_eq!(
            dropped(&summary),
            vec![(Reason::DuplicateId, 5), (Reason::DuplicateId, 6)]
        );
    }

    #[test]
    fn image_data_without_a_size_is_malformed_naming_its_line() {
        let (_dir, p) = write("[\n{\"image_id\": 1, \"width\": 0, \"height\": 5}\n]");
        let err = read_vg_image_data(&p, SkipMode::Strict)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("[0] (line 2)") && err.contains("0x5"), "{err}");
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
