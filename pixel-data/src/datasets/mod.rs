//! Readers (and writers) for the real datasets PixelLLM trains and evaluates on.
//!
//! | dataset | on-disk format | module | plain sample |
//! |---|---|---|---|
//! | Localized Narratives | JSON Lines, one narrative per line | [`narratives`] | [`NarrativeSample`] |
//! | RefCOCO / RefCOCO+ / RefCOCOg | MDETR's COCO-style json, or the refer toolkit's `instances.json` + refs (pickle converted by `tools/refer_pickle_to_json.py`) | [`refcoco`] | [`RefSample`] |
//! | Visual Genome region descriptions | `region_descriptions.json`, with `image_data.json` for image sizes and COCO ids | [`visual_genome`] | [`RegionSample`], [`VgImage`] |
//!
//! Every reader takes a [`SkipMode`]: [`SkipMode::Strict`] stops at the first malformed record
//! with an error naming the file and the line (JSON Lines), or the record's index or key and
//! the line it starts on (JSON);
//! [`SkipMode::SkipAndCount`] skips such records and lists each one in the returned
//! [`ReadSummary`]. Nothing is dropped silently.
//!
//! Malformed and bad are told apart. A record that is not a record of the format (not JSON, a
//! missing or mistyped field, a box with a negative size or one outside its image's declared
//! size) says the file is not what it claims: an error under [`SkipMode::Strict`]. A
//! well-formed record that cannot yield a good sample (a narrative with fewer than two trace
//! points, an empty caption or expression, an id repeated within a file, ...) is a bad record
//! in a good file: it is left out in every mode and listed, with its [`Reason`] and line, in
//! [`ReadSummary::dropped`]; a record kept with a value changed (trace points just outside the
//! image, clipped) is listed in [`ReadSummary::clipped`]. Each module's doc lists its reasons.
//! [`report`] counts them per file and reason ([`DataReport`]).
//!
//! The `serde` structs of each on-disk format are public, and every reader has a `write_*`
//! counterpart taking the plain samples, so synthetic data can be exported to the same formats.

pub mod lenient;
pub mod narratives;
pub mod refcoco;
pub mod report;
pub mod visual_genome;

use std::path::{Path, PathBuf};

pub use narratives::{read_narratives, write_narratives, NarrativeSample};
pub use refcoco::{read_mdetr_refexp, read_refer, write_mdetr_refexp, RefSample, ReferSummary};
pub use report::{DataReport, FileReport, Reason};
pub use visual_genome::{
    read_vg_image_data, read_vg_regions, write_vg_regions, RegionSample, VgImage,
};

/// Everything that can go wrong while reading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(
        "failed to read `{path}`: {source}{}",
        pixel_base::text::read_help(source)
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write `{path}`: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not valid JSON: {source}\n  help: expected {expected}")]
    Json {
        path: PathBuf,
        expected: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("malformed record in `{path}` at {location}: {why}\n  help: fix the record, or read with SkipMode::SkipAndCount to skip and count such records")]
    Record {
        path: PathBuf,
        location: String,
        why: String,
    },
    #[error("image `{path}` not found\n  help: check the image root folder (images are resolved as <root>/<file_name>)")]
    MissingImage { path: PathBuf },
    #[error("image `{path}` could not be decoded: {why}")]
    BadImage { path: PathBuf, why: String },
    #[error("`{path}`: {skipped} of {records} records skipped, over dataset.max_skipped_fraction = {max_fraction}: {reasons}\n  help: fix or remove those records, or raise dataset.max_skipped_fraction")]
    TooManySkipped {
        path: PathBuf,
        skipped: usize,
        records: usize,
        max_fraction: f32,
        /// Each reason with its count and first locations.
        reasons: String,
    },
}

/// What to do with a malformed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SkipMode {
    /// Fail on the first malformed record (the default).
    #[default]
    Strict,
    /// Skip malformed records and list them in the [`ReadSummary`].
    SkipAndCount,
}

/// One record a reader skipped (or kept with a value changed), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRecord {
    /// `line 12`, `images[3] (line 40)`, `refs[7] (ref_id 41, line 96)`, ...
    pub location: String,
    /// The 1-based line the record starts on.
    pub line: usize,
    /// What is wrong, for people.
    pub reason: String,
    /// What is wrong, for counting.
    pub cause: Reason,
}

/// What a reader read and what it left out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadSummary {
    /// Samples returned.
    pub samples: usize,
    /// Malformed records skipped under [`SkipMode::SkipAndCount`].
    pub skipped: Vec<SkippedRecord>,
    /// Well-formed records that cannot yield a sample and are left out by design, with the
    /// reason (e.g. a narrative with fewer than two trace points, which the PixelLLM
    /// preprocessing also drops), in every mode.
    pub dropped: Vec<SkippedRecord>,
    /// Records kept with a value changed (e.g. trace points just outside the image, clipped);
    /// their samples are among those returned.
    pub clipped: Vec<SkippedRecord>,
}

impl ReadSummary {
    /// Handles one malformed record according to `mode`.
    pub(crate) fn malformed(
        &mut self,
        mode: SkipMode,
        path: &Path,
        location: String,
        line: usize,
        why: String,
    ) -> Result<(), DatasetError> {
        match mode {
            SkipMode::Strict => Err(DatasetError::Record {
                path: path.to_path_buf(),
                location,
                why,
            }),
            SkipMode::SkipAndCount => {
                self.skipped.push(SkippedRecord {
                    location,
                    line,
                    reason: why,
                    cause: Reason::Malformed,
                });
                Ok(())
            }
        }
    }

    /// Leaves out one well-formed record that cannot yield a good sample.
    pub(crate) fn drop_record(
        &mut self,
        location: String,
        line: usize,
        cause: Reason,
        why: String,
    ) {
        self.dropped.push(SkippedRecord {
            location,
            line,
            reason: why,
            cause,
        });
    }

    /// Notes one record kept with a value changed.
    pub(crate) fn clip_record(
        &mut self,
        location: String,
        line: usize,
        cause: Reason,
        why: String,
    ) {
        self.clipped.push(SkippedRecord {
            location,
            line,
            reason: why,
            cause,
        });
    }
}

/// Ids seen so far in a file, with the line each was first seen on.
#[derive(Debug, Default)]
pub(crate) struct SeenIds<K>(std::collections::HashMap<K, usize>);

impl<K: std::hash::Hash + Eq + std::fmt::Display> SeenIds<K> {
    /// `Err(why)` when `id` was seen before (its first line named), else records it.
    pub(crate) fn first(&mut self, what: &str, id: K, line: usize) -> Result<(), String> {
        self.check(what, &id)?;
        self.0.insert(id, line);
        Ok(())
    }

    /// `Err(why)` when `id` was seen before, without recording it.
    pub(crate) fn check(&self, what: &str, id: &K) -> Result<(), String> {
        match self.0.get(id) {
            Some(first) => Err(format!(
                "{what} {id} repeats the record at line {first}; the first is kept"
            )),
            None => Ok(()),
        }
    }
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, DatasetError> {
    pixel_base::text::read_text(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn write_string(path: &Path, text: &str) -> Result<(), DatasetError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| DatasetError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, text).map_err(|source| DatasetError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The 1-based line of `raw` in `text`, the document it was borrowed from, so that a record
/// error in a pretty-printed JSON file names its line. Only called on the error path: it counts
/// newlines from the start of the file.
pub(crate) fn line_of(text: &str, raw: &serde_json::value::RawValue) -> usize {
    let offset = (raw.get().as_ptr() as usize)
        .saturating_sub(text.as_ptr() as usize)
        .min(text.len());
    1 + text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// `<root>/<file_name>`.
pub fn resolve_image(root: &Path, file_name: &str) -> PathBuf {
    root.join(file_name)
}

/// The width and height of `<root>/<file_name>` from its header (the pixels are not decoded).
pub fn image_size(root: &Path, file_name: &str) -> Result<(u32, u32), DatasetError> {
    let path = resolve_image(root, file_name);
    if !path.is_file() {
        return Err(DatasetError::MissingImage { path });
    }
    let bad = |e: &dyn std::fmt::Display| DatasetError::BadImage {
        path: path.clone(),
        why: e.to_string(),
    };
    image::ImageReader::open(&path)
        .map_err(|e| bad(&e))?
        .with_guessed_format()
        .map_err(|e| bad(&e))?
        .into_dimensions()
        .map_err(|e| bad(&e))
}

/// Loads and decodes `<root>/<file_name>`; a missing or undecodable image names its path.
pub fn load_image(root: &Path, file_name: &str) -> Result<image::DynamicImage, DatasetError> {
    let path = resolve_image(root, file_name);
    if !path.is_file() {
        return Err(DatasetError::MissingImage { path });
    }
    let reader = image::ImageReader::open(&path)
        .map_err(|e| DatasetError::BadImage {
            path: path.clone(),
            why: e.to_string(),
        })?
        .with_guessed_format()
        .map_err(|e| DatasetError::BadImage {
            path: path.clone(),
            why: e.to_string(),
        })?;
    reader.decode().map_err(|e| DatasetError::BadImage {
        path,
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_image_names_its_path() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let err = load_image(dir.path(), "nope.jpg")
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("nope.jpg")));
    }

    #[test]
    fn undecodable_image_names_its_path() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("bad.png"), b"not a png").unwrap_or_else(|e| panic!("{e}"));
        let err = load_image(dir.path(), "bad.png")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("bad.png"), "{err}");
    }

    #[test]
    fn png_round_trips_through_load_image() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let img = image::RgbImage::from_pixel(3, 2, image::Rgb([10, 20, 30]));
        img.save(dir.path().join("a.png"))
            .unwrap_or_else(|e| panic!("{e}"));
        let back = load_image(dir.path(), "a.png").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((back.width(), back.height()), (3, 2));
    }
}
