//! Where the demo's samples come from: the ShapesLN generator, or files in the real datasets'
//! formats read by [`crate::datasets`]: Localized Narratives for captions and word boxes, RefCOCO
//! for referring expressions (MDETR's json, or the refer toolkit's `instances.json` and refs),
//! Visual Genome region descriptions for region captions.
//!
//! [`export_shapes`] (`pixel export-shapes`) writes ShapesLN into those three formats, and the
//! `[dataset]` section of an experiment config ([`DatasetConfig`]) makes training and evaluation
//! read them back, so the same experiment runs from the generator or from files, and a real
//! dataset in these formats plugs into the same place.
//!
//! Within a split, the three files are joined on the image id: a narrative's `image_id`, a
//! referring expression's COCO image id (MDETR `original_id`, refer `image_id`) and a Visual
//! Genome image id
//! (COCO ids in Localized Narratives and RefCOCO agree, so real COCO files join as they are).
//! The narratives define the images of the split, in file order.
//!
//! Visual Genome ids are not COCO ids. With a split's `image_data` (Visual Genome's
//! `image_data.json`), a region joins the image whose COCO id its VG image's `coco_id` is, and
//! its box is normalised by `image_data`'s width and height (which must have the real image's
//! shape, up to scale and a pixel of rounding, or loading stops naming the record's line);
//! regions of VG images without a COCO id are unused. Without `image_data`, VG ids are taken as
//! the narratives' ids (as ShapesLN's export writes them) and boxes are normalised by the real
//! image's size.
//!
//! Loading reads every annotation file strictly (a malformed record stops with its file and
//! line), every image's size from its header (a missing image stops naming its path; one whose
//! header cannot be read fails when it is loaded), and checks records against the real image
//! sizes: an expression's declared size must be its image's (else an error), a region that
//! leaves its image or has no area is skipped. What each reader and the join skip or clip is
//! counted per split, file and [`Reason`] in a [`DataReport`]: printed to stderr at load, one
//! line per reason, kept by the data source ([`DataSource::report`]) and written by the demo
//! as `data_report.json`. A file that skips more than `dataset.max_skipped_fraction` of its
//! records stops loading, naming the file, the reasons and the counts.
use crate::datasets::{
    image_size, load_image,
    narratives::{write_narrative_records, LocalizedNarrative, TimedUtterance, TracePoint},
    read_mdetr_refexp, read_narratives, read_refer, read_vg_image_data,
    report::{FileReport, SplitReport},
    resolve_image,
    visual_genome::{normalized_region, read_vg_regions_with_lines},
    write_mdetr_refexp, write_vg_regions, DataReport, DatasetError, NarrativeSample, Reason,
    RefSample, RegionSample, SkipMode, VgImage,
};
use crate::error::{DataError, Result};
use crate::shapes_ln::{
    ReferringExpression, RegionCaption, Sample, ShapesLn, ShapesLnConfig, Split, TracedWord,
};
use image::{GrayImage, RgbImage};
use pixel_base::progress::{self, Job};
use pixel_metrics::masks::{Rle, RleCounts, Segmentation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Images in each split of the generator; training draws uniformly among them.
pub const GENERATED_IMAGES: u64 = 1_000_000;

/// A source of samples, indexed per split.
pub trait SampleSource {
    /// Number of images in `split`; [`SampleSource::load`] takes indices below it.
    fn images(&self, split: Split) -> u64;
    /// Image `index` of `split` with its annotations.
    fn load(&self, split: Split, index: u64) -> Result<Sample>;
}

impl SampleSource for ShapesLn {
    fn images(&self, _split: Split) -> u64 {
        GENERATED_IMAGES
    }

    fn load(&self, split: Split, index: u64) -> Result<Sample> {
        Ok(self.sample(split, index))
    }
}

/// The `[dataset]` section of an experiment config: the files of each split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub train: SplitFiles,
    pub validation: SplitFiles,
    /// Images named after their id (Localized Narratives, Visual Genome) are
    /// `<images>/<image_id>.<image_extension>`; COCO ids are zero-padded to 12 digits.
    #[serde(default = "default_image_extension")]
    pub image_extension: String,
    /// The largest fraction of a file's records that loading may skip (bad records: see
    /// [`Reason`]); over it, loading stops naming the file. In [0, 1]; default 0.01.
    #[serde(
        default = "default_max_skipped_fraction",
        deserialize_with = "pixel_base::range::fraction",
        serialize_with = "serialize_shortest"
    )]
    pub max_skipped_fraction: f32,
}

fn default_image_extension() -> String {
    "jpg".into()
}

fn default_max_skipped_fraction() -> f32 {
    0.01
}

/// Writes an f32 as its shortest decimal (`0.01`, not `0.009999999776482582`).
fn serialize_shortest<S: serde::Serializer>(x: &f32, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(shortest(*x))
}

/// The annotation files of one split and the folder of its images. Relative paths are
/// relative to the working directory. In TOML the referring expressions are given by exactly
/// one of `refexp` (MDETR) and `refer` (the refer toolkit), see [`SplitFilesToml`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SplitFilesToml", into = "SplitFilesToml")]
pub struct SplitFiles {
    pub images: PathBuf,
    /// Localized Narratives JSON Lines.
    pub narratives: PathBuf,
    /// RefCOCO / RefCOCO+ / RefCOCOg.
    pub referring: RefexpFiles,
    /// Visual Genome `region_descriptions.json`.
    pub regions: PathBuf,
    /// Visual Genome `image_data.json`: maps VG image ids to COCO ids and gives the size the
    /// region boxes are in. Without it, VG ids are taken as the narratives' ids.
    pub image_data: Option<PathBuf>,
}

/// A split's referring expressions, in one of the two formats RefCOCO is published in.
#[derive(Debug, Clone, PartialEq)]
pub enum RefexpFiles {
    /// MDETR's COCO-style json (`final_refcoco_train.json`, ...).
    Mdetr(PathBuf),
    /// The refer toolkit's files.
    Refer(ReferFiles),
}

/// The refer toolkit's `instances.json` and refs, and the refer split a `[dataset]` split reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferFiles {
    /// COCO images (sizes) and annotations (boxes, segmentations) of the dataset's folder.
    pub instances: PathBuf,
    /// `refs(unc).p` (or `(google)`, `(umd)`) converted to JSON by
    /// `tools/refer_pickle_to_json.py`.
    pub refs: PathBuf,
    /// The refs' `split` to read (`train`, `val`, `testA`, ...): a refs file holds every split.
    pub split: String,
}

impl RefexpFiles {
    /// The file the expressions are in: MDETR's json, or the refs.
    pub fn expressions(&self) -> &Path {
        match self {
            RefexpFiles::Mdetr(path) => path,
            RefexpFiles::Refer(refer) => &refer.refs,
        }
    }

    /// The file the boxes, masks and image sizes are in: MDETR's json, or `instances.json`.
    pub fn annotations(&self) -> &Path {
        match self {
            RefexpFiles::Mdetr(path) => path,
            RefexpFiles::Refer(refer) => &refer.instances,
        }
    }
}

/// [`SplitFiles`] as written in TOML, with both RefCOCO keys optional; converting it checks
/// that exactly one is given, so the error names the file and the split's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFilesToml {
    images: PathBuf,
    narratives: PathBuf,
    /// RefCOCO in MDETR's COCO-style json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refexp: Option<PathBuf>,
    /// RefCOCO in the refer toolkit's files: `{ instances, refs, split }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refer: Option<ReferFiles>,
    regions: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image_data: Option<PathBuf>,
}

impl TryFrom<SplitFilesToml> for SplitFiles {
    type Error = String;

    fn try_from(t: SplitFilesToml) -> std::result::Result<SplitFiles, String> {
        let referring = match (t.refexp, t.refer) {
            (Some(path), None) => RefexpFiles::Mdetr(path),
            (None, Some(refer)) => RefexpFiles::Refer(refer),
            (Some(_), Some(_)) => {
                return Err("gives both `refexp` and `refer`; give one: `refexp` for MDETR's json, `refer` for the refer toolkit's files".into())
            }
            (None, None) => {
                return Err("needs the referring expressions: `refexp = \"final_refcoco_train.json\"` (MDETR) or `refer = { instances = \"instances.json\", refs = \"refs_unc.json\", split = \"train\" }` (refer toolkit)".into())
            }
        };
        Ok(SplitFiles {
            images: t.images,
            narratives: t.narratives,
            referring,
            regions: t.regions,
            image_data: t.image_data,
        })
    }
}

impl From<SplitFiles> for SplitFilesToml {
    fn from(f: SplitFiles) -> SplitFilesToml {
        let (refexp, refer) = match f.referring {
            RefexpFiles::Mdetr(path) => (Some(path), None),
            RefexpFiles::Refer(refer) => (None, Some(refer)),
        };
        SplitFilesToml {
            images: f.images,
            narratives: f.narratives,
            refexp,
            refer,
            regions: f.regions,
            image_data: f.image_data,
        }
    }
}

/// The generator, or files.
#[derive(Debug)]
pub enum DataSource {
    Generator(ShapesLn),
    Files(FileDataset),
}

impl DataSource {
    /// The files of `dataset` when the config has that section, otherwise the generator.
    pub fn new(data: &ShapesLnConfig, seed: u64, dataset: Option<&DatasetConfig>) -> Result<Self> {
        match dataset {
            Some(files) => Ok(DataSource::Files(FileDataset::open(
                files,
                data.image_size,
            )?)),
            None => Ok(DataSource::Generator(
                ShapesLn::new(data.clone(), seed)
                    .map_err(|e| DataError::Invalid(format!("data: {e}")))?,
            )),
        }
    }

    /// One line for reports: which data the numbers are on.
    pub fn describe(&self) -> String {
        match self {
            DataSource::Generator(g) => format!("ShapesLN generator (seed {})", g.seed()),
            DataSource::Files(f) => format!(
                "files: {} ({} images), {} ({} images)",
                f.train.files.narratives.display(),
                f.train.entries.len(),
                f.validation.files.narratives.display(),
                f.validation.entries.len()
            ),
        }
    }

    /// What loading the files skipped or clipped; `None` for the generator.
    pub fn report(&self) -> Option<&DataReport> {
        match self {
            DataSource::Generator(_) => None,
            DataSource::Files(f) => Some(&f.report),
        }
    }

    /// Writes [`DataSource::report`] as JSON to `path` (nothing for the generator).
    pub fn write_report(&self, path: &Path) -> Result<()> {
        let Some(report) = self.report() else {
            return Ok(());
        };
        let text = serde_json::to_string_pretty(report)
            .map_err(|e| DataError::Invalid(format!("data report: {e}")))?;
        std::fs::write(path, text).map_err(|e| DataError::io(path, e))
    }
}

impl SampleSource for DataSource {
    fn images(&self, split: Split) -> u64 {
        match self {
            DataSource::Generator(g) => g.images(split),
            DataSource::Files(f) => f.images(split),
        }
    }

    fn load(&self, split: Split, index: u64) -> Result<Sample> {
        match self {
            DataSource::Generator(g) => g.load(split, index),
            DataSource::Files(f) => f.load(split, index),
        }
    }
}

/// Samples read from annotation files; pixels are decoded when a sample is loaded.
#[derive(Debug)]
pub struct FileDataset {
    train: FileSplit,
    validation: FileSplit,
    /// Images of another size are resized to this square (boxes are normalized, so they hold).
    image_size: u32,
    report: DataReport,
}

#[derive(Debug)]
struct FileSplit {
    /// Boxed, so that [`DataSource::Files`] stays near the generator's size.
    files: Box<SplitFiles>,
    entries: Vec<FileEntry>,
}

/// One image of a split and every annotation of it.
#[derive(Debug)]
struct FileEntry {
    file_name: String,
    narrative: NarrativeSample,
    referring: Vec<RefSample>,
    regions: Vec<NormalizedRegion>,
}

/// A region caption with its box normalised to its image, `[x0, y0, x1, y1]` in [0, 1].
#[derive(Debug, Clone)]
struct NormalizedRegion {
    phrase: String,
    bbox: [f32; 4],
}

impl FileDataset {
    /// Reads the annotation files of both splits (strictly: a malformed record is an error naming
    /// its file and line), checks that every image exists and the records against the images'
    /// sizes, reports what was skipped or clipped (a [`progress::line`] per reason, which
    /// `pixel-cli` prints; [`FileDataset::report`] keeps it all), and fails when a file skipped
    /// more than `config.max_skipped_fraction` of its records.
    pub fn open(config: &DatasetConfig, image_size: u32) -> Result<FileDataset> {
        let (train, train_files) = FileSplit::open(&config.train, &config.image_extension)?;
        let (validation, validation_files) =
            FileSplit::open(&config.validation, &config.image_extension)?;
        let report = DataReport {
            splits: vec![
                SplitReport {
                    split: "train".into(),
                    files: train_files,
                },
                SplitReport {
                    split: "validation".into(),
                    files: validation_files,
                },
            ],
        };
        for line in report.summary() {
            progress::line("data", &line);
        }
        report.check(config.max_skipped_fraction)?;
        Ok(FileDataset {
            train,
            validation,
            image_size,
            report,
        })
    }

    /// What loading skipped or clipped.
    pub fn report(&self) -> &DataReport {
        &self.report
    }

    fn split(&self, split: Split) -> &FileSplit {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
        }
    }
}

impl FileSplit {
    /// The split's entries and, per file, what was skipped or clipped.
    fn open(files: &SplitFiles, extension: &str) -> Result<(FileSplit, Vec<FileReport>)> {
        let (narratives, summary) = read_narratives(&files.narratives, SkipMode::Strict)?;
        let mut reports = vec![FileReport::from_summary(&files.narratives, &summary)];
        if narratives.is_empty() {
            return Err(DataError::Invalid(format!(
                "`{}` has no narrative; the narratives define the images of a split",
                files.narratives.display()
            )));
        }
        let images = split_images(files, extension, &narratives)?;
        let (refs_by_image, refexp_reports) = join_refexp(files, &images)?;
        let (regions_by_image, region_reports) = join_regions(files, &images)?;
        reports.extend(refexp_reports);
        reports.extend(region_reports);
        let entries: Vec<FileEntry> = narratives
            .into_iter()
            .map(|narrative| FileEntry {
                file_name: images[&narrative.image_id].file_name.clone(),
                // An image may have several narratives (COCO val has five); each gets all of
                // the image's expressions and regions.
                referring: refs_by_image
                    .get(&narrative.image_id)
                    .cloned()
                    .unwrap_or_default(),
                regions: regions_by_image
                    .get(&narrative.image_id)
                    .cloned()
                    .unwrap_or_default(),
                narrative,
            })
            .collect();
        check_every_task_has_an_image(files, &entries)?;
        let split = FileSplit {
            files: Box::new(files.clone()),
            entries,
        };
        Ok((split, reports))
    }
}

/// Training draws an image, then a task; every task must be available on some image.
fn check_every_task_has_an_image(files: &SplitFiles, entries: &[FileEntry]) -> Result<()> {
    let none = |what: &str, path: &Path| {
        DataError::Invalid(format!(
            "no image of `{}` has {what} in `{}`; the image ids must agree across the files",
            files.narratives.display(),
            path.display()
        ))
    };
    if entries.iter().all(|e| e.referring.is_empty()) {
        let what = match &files.referring {
            RefexpFiles::Mdetr(_) => "a referring expression".to_string(),
            RefexpFiles::Refer(refer) => {
                format!("a referring expression of split `{}`", refer.split)
            }
        };
        return Err(none(&what, files.referring.expressions()));
    }
    if entries.iter().all(|e| e.regions.is_empty()) {
        return Err(none("a region", &files.regions));
    }
    Ok(())
}

/// An image of a split.
#[derive(Debug)]
struct SplitImage {
    file_name: String,
    /// From the file's header; `None` when it cannot be read (the image then fails, naming its
    /// path, when it is loaded, and its records are not checked against its size).
    size: Option<(u32, u32)>,
}

/// The narratives' images by image id, with their sizes; a missing image is an error.
fn split_images(
    files: &SplitFiles,
    extension: &str,
    narratives: &[NarrativeSample],
) -> Result<HashMap<String, SplitImage>> {
    let mut images = HashMap::new();
    for n in narratives {
        if images.contains_key(&n.image_id) {
            continue;
        }
        let file_name = Path::new(&n.image_file_name())
            .with_extension(extension)
            .to_string_lossy()
            .into_owned();
        let size = match image_size(&files.images, &file_name) {
            Ok(size) => Some(size),
            Err(e @ DatasetError::MissingImage { .. }) => return Err(e.into()),
            Err(_) => None,
        };
        images.insert(n.image_id.clone(), SplitImage { file_name, size });
    }
    Ok(images)
}

/// Annotations by image id.
type ByImage<T> = HashMap<String, Vec<T>>;

/// The split's referring expressions by image id, each checked against its image's size; the
/// reports of their files (the expressions' file first).
fn join_refexp(
    files: &SplitFiles,
    images: &HashMap<String, SplitImage>,
) -> Result<(ByImage<RefSample>, Vec<FileReport>)> {
    let (refs, mut report, others) = match &files.referring {
        RefexpFiles::Mdetr(path) => {
            let (refs, summary) = read_mdetr_refexp(path, SkipMode::Strict)?;
            (refs, FileReport::from_summary(path, &summary), Vec::new())
        }
        RefexpFiles::Refer(refer) => {
            let (refs, summary) = read_refer(
                &refer.instances,
                &refer.refs,
                Some(&refer.split),
                SkipMode::Strict,
            )?;
            let instances = FileReport::from_summary(&refer.instances, &summary.instances);
            (
                refs,
                FileReport::from_summary(&refer.refs, &summary.refs),
                vec![instances],
            )
        }
    };
    let mut by_image: ByImage<RefSample> = HashMap::new();
    for r in refs {
        let key = r.image_id.to_string();
        let Some(image) = images.get(&key) else {
            report.unused += 1;
            continue;
        };
        match image.size {
            Some((width, height)) if (r.width, r.height) != (width, height) => {
                return Err(DataError::Invalid(format!(
                    "`{}` gives image {} as {}x{} but `{}` is {width}x{height}",
                    files.referring.annotations().display(),
                    r.image_id,
                    r.width,
                    r.height,
                    resolve_image(&files.images, &image.file_name).display()
                )));
            }
            _ => by_image.entry(key).or_default().push(r),
        }
    }
    let mut reports = vec![report];
    reports.extend(others);
    Ok((by_image, reports))
}

/// The split's region captions by image id, normalised; the reports of the regions file and,
/// when given, of `image_data`.
fn join_regions(
    files: &SplitFiles,
    images: &HashMap<String, SplitImage>,
) -> Result<(ByImage<NormalizedRegion>, Vec<FileReport>)> {
    let (regions, summary) = read_vg_regions_with_lines(&files.regions, SkipMode::Strict)?;
    let mut report = FileReport::from_summary(&files.regions, &summary);
    let image_data = files
        .image_data
        .as_deref()
        .map(|path| ImageData::read(path, images))
        .transpose()?;
    let mut by_image: ByImage<NormalizedRegion> = HashMap::new();
    for (line, region) in regions {
        let placed = match &image_data {
            Some(data) => data.place(&region, images, &files.images)?,
            None => same_ids_place(&region, images),
        };
        let (key, (width, height)) = match placed {
            Placement::Image { key, size } => (key, size),
            Placement::Unused => {
                report.unused += 1;
                continue;
            }
            Placement::Skip(reason) => {
                report.add(reason, line);
                continue;
            }
        };
        match normalized_region(region.bbox_xywh, width, height) {
            Ok(bbox) => by_image.entry(key).or_default().push(NormalizedRegion {
                phrase: region.phrase,
                bbox,
            }),
            Err((reason, _)) => report.add(reason, line),
        }
    }
    let mut reports = vec![report];
    reports.extend(image_data.map(|d| d.report));
    Ok((by_image, reports))
}

/// Where a Visual Genome region goes.
enum Placement {
    /// Into the split image `key`, its box in pixels of a `size` image.
    Image { key: String, size: (u32, u32) },
    /// Nowhere: its image is not in the split (or cannot be read, and fails when loaded).
    Unused,
    /// Left out, and counted.
    Skip(Reason),
}

/// Without `image_data`: the region's VG id is the split's image id, its box in the real size.
fn same_ids_place(region: &RegionSample, images: &HashMap<String, SplitImage>) -> Placement {
    let key = region.image_id.to_string();
    match images.get(&key).and_then(|image| image.size) {
        Some(size) => Placement::Image { key, size },
        None => Placement::Unused,
    }
}

/// A Visual Genome `image_data.json`: VG images by VG id, with their lines.
struct ImageData {
    path: PathBuf,
    by_vg_id: HashMap<i64, (usize, VgImage)>,
    report: FileReport,
}

impl ImageData {
    fn read(path: &Path, images: &HashMap<String, SplitImage>) -> Result<ImageData> {
        let (records, summary) = read_vg_image_data(path, SkipMode::Strict)?;
        let mut report = FileReport::from_summary(path, &summary);
        report.unused = records
            .iter()
            .filter(|(_, vg)| {
                vg.coco_id
                    .is_none_or(|coco| !images.contains_key(&coco.to_string()))
            })
            .count();
        Ok(ImageData {
            path: path.to_path_buf(),
            by_vg_id: records
                .into_iter()
                .map(|(line, vg)| (vg.image_id, (line, vg)))
                .collect(),
            report,
        })
    }

    /// The split image of `region`'s VG image (through its COCO id) and the size its box is in;
    /// an error when that size is not the real image's shape.
    fn place(
        &self,
        region: &RegionSample,
        images: &HashMap<String, SplitImage>,
        root: &Path,
    ) -> Result<Placement> {
        let Some((line, vg)) = self.by_vg_id.get(&region.image_id) else {
            return Ok(Placement::Skip(Reason::NotInImageData));
        };
        let Some(key) = vg.coco_id.map(|coco| coco.to_string()) else {
            return Ok(Placement::Unused);
        };
        let Some(image) = images.get(&key) else {
            return Ok(Placement::Unused);
        };
        let Some(real) = image.size else {
            return Ok(Placement::Unused);
        };
        let declared = (vg.width, vg.height);
        if !same_shape(declared, real) {
            return Err(DataError::Invalid(format!(
                "`{}` line {line}: VG image {} (COCO {key}) is {}x{}, but `{}` is {}x{}, not the same picture at another scale\n  help: check that image_data.json belongs to these images",
                self.path.display(),
                vg.image_id,
                vg.width,
                vg.height,
                resolve_image(root, &image.file_name).display(),
                real.0,
                real.1
            )));
        }
        Ok(Placement::Image {
            key,
            size: declared,
        })
    }
}

/// Whether an image declared `declared` (width, height) is the `real` one at another scale:
/// the real height is the declared one scaled by the widths' ratio, to a pixel of rounding at
/// either size.
fn same_shape(declared: (u32, u32), real: (u32, u32)) -> bool {
    let (dw, dh) = (f64::from(declared.0), f64::from(declared.1));
    let (rw, rh) = (f64::from(real.0), f64::from(real.1));
    let scale = rw / dw;
    (dh * scale - rh).abs() <= 1.0 + scale
}

impl SampleSource for FileDataset {
    fn images(&self, split: Split) -> u64 {
        self.split(split).entries.len() as u64
    }

    fn load(&self, split: Split, index: u64) -> Result<Sample> {
        let part = self.split(split);
        let entry = usize::try_from(index)
            .ok()
            .and_then(|i| part.entries.get(i))
            .ok_or_else(|| {
                DataError::Invalid(format!(
                    "image {index} of {} is out of range ({} images)",
                    part.files.narratives.display(),
                    part.entries.len()
                ))
            })?;
        // Expressions were checked against the image's size when the split was opened.
        let decoded = load_image(&part.files.images, &entry.file_name)?;
        let (width, height) = (decoded.width(), decoded.height());
        let image = model_image(&decoded, self.image_size);
        let masks = entry
            .referring
            .iter()
            .map(|r| {
                r.mask
                    .as_ref()
                    .map(|m| mask_image(m, width, height, self.image_size))
                    .transpose()
                    .map_err(|why| {
                        DataError::Invalid(format!(
                            "`{}`: the mask of \"{}\" (image {}) {why}",
                            part.files.referring.annotations().display(),
                            r.expression,
                            r.image_id
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let n = &entry.narrative;
        let words = n
            .utterances
            .iter()
            .flat_map(|u| {
                u.utterance.split_whitespace().map(|w| TracedWord {
                    word: w.to_string(),
                    bbox: u.bbox,
                    point: u.center,
                    object: None,
                })
            })
            .collect();
        Ok(Sample {
            image_id: n.image_id.clone(),
            image,
            objects: Vec::new(),
            caption: n.caption.clone(),
            words,
            trace: Vec::new(),
            timed_caption: Vec::new(),
            referring: entry
                .referring
                .iter()
                .enumerate()
                .zip(masks)
                .map(|((k, r), mask)| ReferringExpression {
                    text: r.expression.clone(),
                    object: k,
                    bbox: normalized_box(r.bbox_xywh, width, height),
                    mask,
                })
                .collect(),
            regions: entry
                .regions
                .iter()
                .enumerate()
                .map(|(k, r)| RegionCaption {
                    bbox: r.bbox,
                    caption: r.phrase.clone(),
                    object: k,
                })
                .collect(),
        })
    }
}

/// A COCO segmentation of a `width x height` image as a mask image (255 inside) of `side x side`,
/// the size the model sees (nearest-neighbour resize, as the image is resized).
fn mask_image(
    segmentation: &Segmentation,
    width: u32,
    height: u32,
    side: u32,
) -> std::result::Result<GrayImage, String> {
    let (w, h) = (width as usize, height as usize);
    let rle = segmentation.to_rle(Some((h, w)))?;
    if (rle.h, rle.w) != (h, w) {
        return Err(format!("is {}x{} (h x w), the image {h}x{w}", rle.h, rle.w));
    }
    // COCO masks are column-major.
    let inside = rle.decode()?;
    let full = GrayImage::from_fn(width, height, |x, y| {
        image::Luma([if inside[x as usize * h + y as usize] {
            255
        } else {
            0
        }])
    });
    Ok(if (width, height) == (side, side) {
        full
    } else {
        image::imageops::resize(&full, side, side, image::imageops::FilterType::Nearest)
    })
}

/// `[x, y, w, h]` in pixels -> normalized `[x0, y0, x1, y1]`, clipped to the image (COCO boxes
/// may overhang it by rounding).
fn normalized_box(xywh: [f64; 4], width: u32, height: u32) -> [f32; 4] {
    let (w, h) = (f64::from(width), f64::from(height));
    let [x, y, bw, bh] = xywh;
    [x / w, y / h, (x + bw) / w, (y + bh) / h].map(|v| v.clamp(0.0, 1.0) as f32)
}

/// Normalized `[x0, y0, x1, y1]` -> `[x, y, w, h]` in pixels; [`normalized_box`] inverts it
/// exactly for power-of-two image sizes.
fn pixel_box(b: [f32; 4], width: u32, height: u32) -> [f64; 4] {
    let (w, h) = (f64::from(width), f64::from(height));
    let [x0, y0, x1, y1] = b.map(f64::from);
    [x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h]
}

/// Where [`export_shapes`] puts the files of a split under `out`.
fn split_files(out: &Path, split: Split) -> SplitFiles {
    let dir = out.join(split.prefix());
    SplitFiles {
        images: out.join("images").join(split.prefix()),
        narratives: dir.join("localized_narratives.jsonl"),
        referring: RefexpFiles::Mdetr(dir.join("refcoco_mdetr.json")),
        regions: dir.join("region_descriptions.json"),
        image_data: None,
    }
}

/// Writes images `0..train` and `0..validation` of the generator as
/// `out/images/{train,val}/<index>.png` with, per split, `out/{train,val}/`
/// `localized_narratives.jsonl` (the generator's mouse traces), `refcoco_mdetr.json` (one
/// expression per object, with its mask as COCO RLE) and `region_descriptions.json` (one region
/// per object). Image ids are the indices within the split. Returns the `[dataset]` section that
/// reads the export back.
pub fn export_shapes(
    data: &ShapesLn,
    out: &Path,
    train: u64,
    validation: u64,
) -> Result<DatasetConfig> {
    let progress = Job::start("export", out.display(), 0, train + validation);
    let mut exported = 0;
    let config = DatasetConfig {
        train: split_files(out, Split::Train),
        validation: split_files(out, Split::Validation),
        image_extension: "png".into(),
        max_skipped_fraction: default_max_skipped_fraction(),
    };
    for (split, count, files) in [
        (Split::Train, train, &config.train),
        (Split::Validation, validation, &config.validation),
    ] {
        std::fs::create_dir_all(&files.images).map_err(|e| DataError::io(&files.images, e))?;
        let mut narratives = Vec::new();
        let mut refs = Vec::new();
        let mut regions = Vec::new();
        for index in 0..count {
            let sample = data.sample(split, index);
            let file_name = format!("{index}.png");
            let path = files.images.join(&file_name);
            sample
                .image
                .save(&path)
                .map_err(|e| DataError::Invalid(format!("cannot write {}: {e}", path.display())))?;
            narratives.push(narrative_record(&sample, index));
            let (width, height) = sample.image.dimensions();
            for r in &sample.referring {
                refs.push(RefSample {
                    image_id: index as i64,
                    file_name: file_name.clone(),
                    height,
                    width,
                    expression: r.text.clone(),
                    bbox_xywh: pixel_box(r.bbox, width, height),
                    mask: sample.objects.get(r.object).map(|o| rle_mask(&o.mask)),
                    tokens_positive: vec![[0, r.text.len()]],
                    ref_id: None,
                    sentence_id: None,
                    split: Some(split.prefix().into()),
                });
            }
            for r in &sample.regions {
                regions.push(RegionSample {
                    image_id: index as i64,
                    region_id: regions.len() as i64,
                    bbox_xywh: pixel_box(r.bbox, width, height),
                    phrase: r.caption.clone(),
                });
            }
            exported += 1;
            progress.set(exported);
        }
        write_narrative_records(&files.narratives, &narratives)?;
        write_mdetr_refexp(files.referring.expressions(), &refs)?;
        write_vg_regions(&files.regions, &regions)?;
    }
    progress.finish();
    Ok(config)
}

/// The sample's narrative with its mouse trace, under image id `index`.
fn narrative_record(sample: &Sample, index: u64) -> LocalizedNarrative {
    let ln = sample.localized_narrative();
    LocalizedNarrative {
        dataset_id: ln.dataset_id,
        image_id: index.to_string(),
        annotator_id: i64::from(ln.annotator_id),
        caption: ln.caption,
        timed_caption: ln
            .timed_caption
            .into_iter()
            .map(|u| TimedUtterance {
                utterance: u.utterance,
                start_time: shortest(u.start_time),
                end_time: shortest(u.end_time),
            })
            .collect(),
        traces: ln
            .traces
            .into_iter()
            .map(|trace| {
                trace
                    .into_iter()
                    .map(|p| TracePoint {
                        x: shortest(p.x),
                        y: shortest(p.y),
                        t: shortest(p.t),
                    })
                    .collect()
            })
            .collect(),
        voice_recording: None,
    }
}

/// The f64 nearest to the shortest decimal that reads back as `x` (`0.3`, not
/// `0.30000001192092896`): half the file size, and the word boxes read back still agree with
/// the generator's to 1e-5 (tested).
fn shortest(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// An object mask (255 = object) as compressed COCO RLE.
fn rle_mask(mask: &GrayImage) -> Segmentation {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    // COCO RLE runs over the mask in column-major order.
    let column_major: Vec<bool> = (0..w * h)
        .map(|i| mask.get_pixel((i / h) as u32, (i % h) as u32)[0] > 127)
        .collect();
    Segmentation::Rle {
        size: [h, w],
        counts: RleCounts::Compressed(Rle::encode(h, w, &column_major).to_compressed()),
    }
}

impl DatasetConfig {
    /// The `[dataset]` section as TOML, for pasting into an experiment config.
    pub fn to_toml_section(&self) -> Result<String> {
        #[derive(Serialize)]
        struct Section<'a> {
            dataset: &'a DatasetConfig,
        }
        toml::to_string(&Section { dataset: self })
            .map_err(|e| DataError::Invalid(format!("the [dataset] section as TOML: {e}")))
    }
}

/// The model's input: the image resized to its square side (Triangle filter), as training sees
/// dataset files and `pixel predict` sees a user's pictures; a stretch, not a pad, so normalized
/// coordinates map back to the original pixels by the image's own width and height.
pub fn model_image(image: &image::DynamicImage, side: u32) -> RgbImage {
    let rgb = image.to_rgb8();
    if rgb.dimensions() == (side, side) {
        return rgb;
    }
    image::imageops::resize(&rgb, side, side, image::imageops::FilterType::Triangle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_boxes_invert_exactly_for_power_of_two_sizes() {
        let b = [0.123_456_7, 0.5, 0.876_543_2, 0.999_9];
        assert_eq!(normalized_box(pixel_box(b, 64, 128), 64, 128), b);
    }

    #[derive(Debug, Deserialize)]
    struct Wrapper {
        dataset: DatasetConfig,
    }

    #[test]
    fn toml_section_parses_back() {
        let config = DatasetConfig {
            train: split_files(Path::new("runs/x \"y\""), Split::Train),
            validation: SplitFiles {
                image_data: Some("vg/image_data.json".into()),
                referring: RefexpFiles::Refer(ReferFiles {
                    instances: "refcoco/instances.json".into(),
                    refs: "refcoco/refs_unc.json".into(),
                    split: "val".into(),
                }),
                ..split_files(Path::new("runs/x"), Split::Validation)
            },
            image_extension: "png".into(),
            max_skipped_fraction: 0.25,
        };
        let text = config.to_toml_section().unwrap_or_else(|e| panic!("{e}"));
        let back: Wrapper = pixel_core::config::parse_toml(&text, Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.dataset, config);
    }

    /// A split gives its referring expressions in exactly one format; otherwise the error
    /// names the file, the split's key and what to write.
    #[test]
    fn a_split_needs_exactly_one_of_refexp_and_refer() {
        let split = |referring: &str| {
            format!("images = \"i\"\nnarratives = \"n.jsonl\"\n{referring}regions = \"r.json\"\n")
        };
        let refexp = "refexp = \"final_refcoco_train.json\"\n";
        let refer =
            "refer = { instances = \"instances.json\", refs = \"refs.json\", split = \"train\" }\n";
        let config = |train: &str| {
            format!(
                "[dataset.train]\n{train}\n[dataset.validation]\n{}",
                split(refexp)
            )
        };
        for (train, want) in [
            (split(""), "needs the referring expressions"),
            (
                split(&format!("{refexp}{refer}")),
                "gives both `refexp` and `refer`",
            ),
        ] {
            let err =
                pixel_core::config::parse_toml::<Wrapper>(&config(&train), Path::new("exp.toml"))
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
            assert!(
                err.contains("exp.toml") && err.contains("dataset.train") && err.contains(want),
                "{err}"
            );
        }
        let read = pixel_core::config::parse_toml::<Wrapper>(
            &config(&split(refer)),
            Path::new("exp.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read.dataset.train.referring,
            RefexpFiles::Refer(ReferFiles {
                instances: "instances.json".into(),
                refs: "refs.json".into(),
                split: "train".into(),
            })
        );
        assert_eq!(
            read.dataset.validation.referring,
            RefexpFiles::Mdetr("final_refcoco_train.json".into())
        );
    }
}
