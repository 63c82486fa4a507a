//! Bad input through the file data source: a malformed record in each of the three formats is an
//! error naming the file and the line; a missing image or a file that is not an image names its
//! path.
use pixel_data::data_source::{export_shapes, DataSource, DatasetConfig, SampleSource};
use pixel_data::shapes_ln::{ShapesLn, ShapesLnConfig, Split};
use serde_json::Value;
use std::path::Path;

fn export(dir: &Path) -> DatasetConfig {
    let generator = ShapesLn::new(ShapesLnConfig::default(), 3).unwrap();
    export_shapes(&generator, dir, 4, 2).unwrap()
}

fn open_error(dataset: &DatasetConfig) -> String {
    DataSource::new(&ShapesLnConfig::default(), 3, Some(dataset))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| panic!("the data source opened"))
}

/// Rewrites a JSON file pretty-printed (one key per line, as people edit them) after `edit`.
fn rewrite_pretty(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut doc);
    std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
}

/// The 1-based line of the first occurrence of `needle` in the file.
fn line_containing(path: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    1 + text
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in {}", path.display()))
}

#[test]
fn malformed_narrative_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = export(dir.path());
    let path = &dataset.train.narratives;
    let mut text = std::fs::read_to_string(path).unwrap();
    text.push_str("{\"dataset_id\": \"shapes_ln\", \"image_id\": \"9\"\n");
    std::fs::write(path, text).unwrap();
    let err = open_error(&dataset);
    assert!(
        err.contains("train/localized_narratives.jsonl") && err.contains("line 5"),
        "{err}"
    );
}

#[test]
fn malformed_refexp_annotation_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = export(dir.path());
    let path = dataset.validation.referring.expressions();
    rewrite_pretty(path, |doc| {
        doc["annotations"][1]["bbox"] = serde_json::json!([1.0, 2.0, "wide"]);
    });
    let line = line_containing(path, "\"wide\"");
    let err = open_error(&dataset);
    assert!(
        err.contains("val/refcoco_mdetr.json") && err.contains("annotations[1]"),
        "{err}"
    );
    // The record starts a few lines above its bad field.
    let named: usize = err
        .split("line ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no line in {err}"));
    assert!(
        named < line && line - named < 20,
        "line {named} vs field at {line}: {err}"
    );
}

#[test]
fn malformed_region_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = export(dir.path());
    let path = &dataset.train.regions;
    rewrite_pretty(path, |doc| {
        doc[0]["regions"][0]["width"] = serde_json::json!(-5.0);
    });
    let line = line_containing(path, "\"region_id\": 0");
    let err = open_error(&dataset);
    assert!(
        err.contains("train/region_descriptions.json") && err.contains("[0].regions[0]"),
        "{err}"
    );
    assert!(
        (line.saturating_sub(10)..=line).any(|l| err.contains(&format!("line {l})"))),
        "region at line {line}: {err}"
    );
}

#[test]
fn missing_image_names_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = export(dir.path());
    std::fs::remove_file(dataset.train.images.join("2.png")).unwrap();
    let err = open_error(&dataset);
    assert!(err.contains("images/train/2.png"), "{err}");
}

#[test]
fn file_that_is_not_an_image_names_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = export(dir.path());
    std::fs::write(dataset.validation.images.join("1.png"), "not a png").unwrap();
    let data = DataSource::new(&ShapesLnConfig::default(), 3, Some(&dataset)).unwrap();
    assert!(data.load(Split::Validation, 0).is_ok());
    let err = data
        .load(Split::Validation, 1)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("images/val/1.png"), "{err}");
}
