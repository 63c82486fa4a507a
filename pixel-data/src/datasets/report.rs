//! What reading a dataset left out or changed: per split, per file and per [`Reason`], a count
//! and the first few locations (`file:line`) of the records concerned.
//!
//! A [`DataReport`] is what `pixel demo` writes as `data_report.json`; [`DataReport::summary`]
//! is the short form printed when a dataset is loaded, and [`DataReport::check`] turns too many
//! skipped records of one file into an error (`dataset.max_skipped_fraction`).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{DatasetError, ReadSummary, SkippedRecord};

/// Locations kept per file and reason as examples.
pub const MAX_EXAMPLES: usize = 5;

/// Why a record was skipped, or kept with a value changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not a record of the format (only under `SkipMode::SkipAndCount`; strict reading stops).
    Malformed,
    /// A narrative with fewer than two trace points: no location can be interpolated.
    TooFewTracePoints,
    /// A narrative whose trace, where it locates an utterance, leaves the image by more than
    /// [`super::narratives::TRACE_MARGIN`].
    TraceOutsideImage,
    /// Kept: a narrative whose trace leaves the image by at most the margin; those points are
    /// clipped to the image's border, as PixelLLM's preprocessing does.
    TraceClipped,
    /// A narrative whose caption is empty or only white space.
    EmptyCaption,
    /// A referring expression that is empty or only white space.
    EmptyExpression,
    /// A region description whose phrase is empty or only white space.
    EmptyPhrase,
    /// An id that an earlier record of the same file already has.
    DuplicateId,
    /// A region that leaves its image by more than a pixel of rounding.
    RegionOutsideImage,
    /// A region with no area once normalised to its image.
    RegionZeroArea,
    /// A region of an image that Visual Genome's `image_data.json` does not list.
    NotInImageData,
}

impl Reason {
    /// Whether records with this reason are left out (all but [`Reason::TraceClipped`]).
    pub fn skips(self) -> bool {
        self != Reason::TraceClipped
    }

    /// The reason's name in reports (`too_few_trace_points`).
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{self:?}"))
    }
}

/// The records of one file with one reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReasonCount {
    /// `true`: left out; `false`: kept with a value changed (clipped).
    pub skipped: bool,
    pub count: usize,
    /// The first [`MAX_EXAMPLES`] records, as `file:line`.
    pub examples: Vec<String>,
}

/// What reading one file left out or changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileReport {
    pub path: PathBuf,
    /// Records read (samples and records left out): the denominator of the skipped fraction.
    pub records: usize,
    /// Well-formed records of images that are not in the split (files may cover more images
    /// than one split, as Visual Genome's do): not used, and not a problem.
    pub unused: usize,
    pub reasons: BTreeMap<Reason, ReasonCount>,
}

impl FileReport {
    /// An empty report of `path`.
    pub fn new(path: &Path) -> FileReport {
        FileReport {
            path: path.to_path_buf(),
            ..FileReport::default()
        }
    }

    /// The report of what a reader returned for `path`.
    pub fn from_summary(path: &Path, summary: &ReadSummary) -> FileReport {
        let mut report = FileReport::new(path);
        report.records = summary.samples + summary.skipped.len() + summary.dropped.len();
        for record in summary
            .skipped
            .iter()
            .chain(&summary.dropped)
            .chain(&summary.clipped)
        {
            report.add_record(record);
        }
        report
    }

    fn add_record(&mut self, record: &SkippedRecord) {
        self.add(record.cause, record.line);
    }

    /// Counts one record of this file, starting at `line`, with `reason`.
    pub fn add(&mut self, reason: Reason, line: usize) {
        let example = format!("{}:{line}", self.path.display());
        let entry = self.reasons.entry(reason).or_insert_with(|| ReasonCount {
            skipped: reason.skips(),
            ..ReasonCount::default()
        });
        entry.count += 1;
        if entry.examples.len() < MAX_EXAMPLES {
            entry.examples.push(example);
        }
    }

    /// Records left out.
    pub fn skipped(&self) -> usize {
        self.reasons
            .values()
            .filter(|r| r.skipped)
            .map(|r| r.count)
            .sum()
    }

    /// Records left out over records read (0 for an empty file).
    pub fn skipped_fraction(&self) -> f64 {
        if self.records == 0 {
            0.0
        } else {
            self.skipped() as f64 / self.records as f64
        }
    }

    /// One line per reason: ``data: train: `x.jsonl`: skipped 3 of 120 records
    /// (empty_caption), e.g. lines 4, 9, 17``.
    fn summary_lines(&self, split: &str) -> Vec<String> {
        self.reasons
            .iter()
            .map(|(reason, count)| {
                let lines: Vec<&str> = count
                    .examples
                    .iter()
                    .filter_map(|e| e.rsplit(':').next())
                    .collect();
                format!(
                    "data: {split}: `{}`: {} {} of {} records ({}), e.g. line{} {}",
                    self.path.display(),
                    if count.skipped { "skipped" } else { "clipped" },
                    count.count,
                    self.records,
                    reason.name(),
                    if lines.len() == 1 { "" } else { "s" },
                    lines.join(", ")
                )
            })
            .collect()
    }

    /// `too_few_trace_points: 3 (e.g. x.jsonl:5, x.jsonl:9)`, for each skipping reason.
    fn skipped_reasons(&self) -> String {
        self.reasons
            .iter()
            .filter(|(_, c)| c.skipped)
            .map(|(reason, c)| {
                format!(
                    "{}: {} (e.g. {})",
                    reason.name(),
                    c.count,
                    c.examples.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The files of one split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitReport {
    /// `train`, `validation`.
    pub split: String,
    pub files: Vec<FileReport>,
}

/// What loading a dataset left out or changed, per split, file and reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataReport {
    pub splits: Vec<SplitReport>,
}

impl DataReport {
    /// The report of `file` in `split`, if it has one.
    pub fn file(&self, split: &str, file: &Path) -> Option<&FileReport> {
        self.splits
            .iter()
            .filter(|s| s.split == split)
            .flat_map(|s| &s.files)
            .find(|f| f.path == file)
    }

    /// How many records of `file` in `split` have `reason` (0 when none).
    pub fn count(&self, split: &str, file: &Path, reason: Reason) -> usize {
        self.file(split, file)
            .and_then(|f| f.reasons.get(&reason))
            .map_or(0, |c| c.count)
    }

    /// Records left out, over every split and file.
    pub fn skipped(&self) -> usize {
        self.splits
            .iter()
            .flat_map(|s| &s.files)
            .map(FileReport::skipped)
            .sum()
    }

    /// One line per split, file and reason; empty when nothing was left out or changed.
    pub fn summary(&self) -> Vec<String> {
        self.splits
            .iter()
            .flat_map(|s| s.files.iter().flat_map(|f| f.summary_lines(&s.split)))
            .collect()
    }

    /// Fails on the first file that skipped more than `max_fraction` of its records, naming
    /// the file, the reasons and the counts.
    pub fn check(&self, max_fraction: f32) -> Result<(), DatasetError> {
        let over = self
            .splits
            .iter()
            .flat_map(|s| &s.files)
            .find(|f| f.skipped_fraction() > f64::from(max_fraction));
        match over {
            None => Ok(()),
            Some(f) => Err(DatasetError::TooManySkipped {
                path: f.path.clone(),
                skipped: f.skipped(),
                records: f.records,
                max_fraction,
                reasons: f.skipped_reasons(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(records: usize, reasons: &[(Reason, usize)]) -> FileReport {
        let mut f = FileReport::new(Path::new("a.jsonl"));
        f.records = records;
        for &(reason, n) in reasons {
            for line in 0..n {
                f.add(reason, line + 1);
            }
        }
        f
    }

    #[test]
    fn clipped_records_are_counted_but_not_skipped() {
        let f = report(10, &[(Reason::TraceClipped, 3), (Reason::EmptyCaption, 1)]);
        assert_eq!(f.skipped(), 1);
        assert!((f.skipped_fraction() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn examples_stop_at_the_first_few() {
        let f = report(100, &[(Reason::DuplicateId, 8)]);
        let c = &f.reasons[&Reason::DuplicateId];
        assert_eq!(c.count, 8);
        assert_eq!(c.examples.len(), MAX_EXAMPLES);
        assert_eq!(c.examples[0], "a.jsonl:1");
    }

    #[test]
    fn too_many_skips_name_the_file_reason_and_counts() {
        let data = DataReport {
            splits: vec![SplitReport {
                split: "train".into(),
                files: vec![report(10, &[(Reason::EmptyCaption, 2)])],
            }],
        };
        assert!(data.check(0.2).is_ok());
        let err = data
            .check(0.1)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("a.jsonl") && err.contains("empty_caption: 2") && err.contains("2 of 10"),
            "{err}"
        );
    }

    #[test]
    fn reasons_serialize_as_snake_case_keys() {
        let f = report(1, &[(Reason::TooFewTracePoints, 1)]);
        let json = serde_json::to_string(&f).unwrap_or_default();
        assert!(json.contains("\"too_few_trace_points\":{"), "{json}");
        let back: FileReport = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, f);
        assert_eq!(Reason::RegionZeroArea.name(), "region_zero_area");
    }
}
