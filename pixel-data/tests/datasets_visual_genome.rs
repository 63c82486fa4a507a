//! Visual Genome region descriptions reader/writer.

use std::path::PathBuf;

use pixel_data::datasets::{visual_genome, SkipMode};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/datasets/vg_region_descriptions.json")
}

#[test]
fn regions_are_read_and_bad_boxes_named() {
    let err = visual_genome::read_vg_regions(&fixture(), SkipMode::Strict)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("[1].regions[1]") && err.contains("region_id 2001"),
        "{err}"
    );
    let (s, summary) = visual_genome::read_vg_regions(&fixture(), SkipMode::SkipAndCount)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.len(), 3);
    assert_eq!(summary.skipped.len(), 1);
    assert_eq!(s[0].bbox_xywh, [421.0, 57.0, 82.0, 139.0]);
    assert_eq!(s[0].image_file_name(), "1.jpg");
}

#[test]
fn write_then_read_round_trips() {
    let (s, _) = visual_genome::read_vg_regions(&fixture(), SkipMode::SkipAndCount)
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = dir.path().join("regions.json");
    visual_genome::write_vg_regions(&p, &s).unwrap_or_else(|e| panic!("{e}"));
    let (back, _) =
        visual_genome::read_vg_regions(&p, SkipMode::Strict).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, s);
}
