//! RefCOCO readers: MDETR's format and the refer toolkit's instances + refs.

use std::path::PathBuf;

use pixel_data::datasets::{refcoco, SkipMode};
use pixel_metrics::masks::Segmentation;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/datasets")
        .join(name)
}

#[test]
fn mdetr_strict_mode_names_the_bad_annotation() {
    let err = refcoco::read_mdetr_refexp(&fixture("mdetr_refcoco.json"), SkipMode::Strict)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("mdetr_refcoco.json") && err.contains("annotations[2]"),
        "{err}"
    );
}

#[test]
fn mdetr_expressions_with_boxes_and_masks() {
    let (s, summary) =
        refcoco::read_mdetr_refexp(&fixture("mdetr_refcoco.json"), SkipMode::SkipAndCount)
            .unwrap_or_else(|e| panic!("{e}"));
    // annotations[2] is malformed, so expression images[2] has no annotation either.
    assert_eq!(summary.skipped.len(), 2, "{:?}", summary.skipped);
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].image_id, 581857);
    assert_eq!(s[0].expression, "lady with back to us");
    assert_eq!(s[0].bbox_xywh, [103.93, 299.99, 134.22, 177.42]);
    assert_eq!(s[0].tokens_positive, vec![[0, 4]]);
    assert!(matches!(s[0].mask, Some(Segmentation::Polygons(_))));
    let rle = s[1].mask.as_ref().map(|m| m.to_rle(None));
    assert!(matches!(rle, Some(Ok(r)) if r.area() == 25));
}

#[test]
fn refer_one_sample_per_sentence_with_split_filter() {
    let (all, summary) = refcoco::read_refer(
        &fixture("refer/instances.json"),
        &fixture("refer/refs.json"),
        None,
        SkipMode::SkipAndCount,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.len(), 3);
    // The dangling ref is the refs file's, not instances.json's.
    assert!(summary.instances.skipped.is_empty());
    assert_eq!(summary.refs.skipped.len(), 1);
    assert!(summary.refs.skipped[0].location.contains("ref_id 2"));
    let (test_a, _) = refcoco::read_refer(
        &fixture("refer/instances.json"),
        &fixture("refer/refs.json"),
        Some("testA"),
        SkipMode::SkipAndCount,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let expr: Vec<&str> = test_a.iter().map(|s| s.expression.as_str()).collect();
    assert_eq!(expr, vec!["left bowl", "bowl on the left"]);
    assert_eq!(test_a[0].file_name, "COCO_train2014_000000000009.jpg");
    assert_eq!(test_a[0].bbox_xywh, [1.08, 187.69, 611.59, 285.84]);
}

#[test]
fn refer_strict_mode_fails_on_dangling_annotation() {
    let err = refcoco::read_refer(
        &fixture("refer/instances.json"),
        &fixture("refer/refs.json"),
        None,
        SkipMode::Strict,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        err.contains("refs.json") && err.contains("ann_id 99"),
        "{err}"
    );
}

/// MDETR's flickr files write heights and widths as strings and the COCO/Flickr image id as
/// `original_img_id` (record quoted from a final_flickr_separateGT file; scenic's pixel_llm
/// conversion reads `original_img_id` or `original_id` with `int(...)`). A box that leaves its
/// image's declared size is malformed, named with its line.
#[test]
fn mdetr_records_as_the_publishers_write_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("final_flickr_separateGT_val.json");
    let doc = r#"{"images": [
{"file_name": "4886839805.jpg", "height": "500", "width": "371", "id": 27, "caption": "2 wet boys in blue swimming suits", "dataset_name": "flickr", "tokens_negative": [[0, 33]], "sentence_id": 2, "original_img_id": 4886839805, "tokens_positive_eval": [[[0, 10]], [[14, 33]]]},
{"file_name": "COCO_train2014_000000581857.jpg", "height": 640, "width": 427, "id": 28, "caption": "lady", "original_id": "581857"}
],
"annotations": [
{"id": 1, "image_id": 27, "bbox": [10.0, 20.0, 300.0, 400.0], "category_id": 1},
{"id": 2, "image_id": 28, "bbox": [100.0, 300.0, 400.0, 100.0], "category_id": 1}
]}"#;
    std::fs::write(&path, doc).unwrap();
    let (samples, summary) = refcoco::read_mdetr_refexp(&path, SkipMode::SkipAndCount).unwrap();
    assert_eq!(samples.len(), 1, "{summary:?}");
    assert_eq!(
        (samples[0].image_id, samples[0].width, samples[0].height),
        (4886839805, 371, 500)
    );
    let err = refcoco::read_mdetr_refexp(&path, SkipMode::Strict)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("annotations[1]")
            && err.contains("line 7")
            && err.contains("leaves its 427x640 image"),
        "{err}"
    );
}
