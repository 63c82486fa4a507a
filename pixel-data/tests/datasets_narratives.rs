//! Localized Narratives reader: per-word boxes, error locations, skip-and-count, write/read
//! round trip.

use std::path::PathBuf;

use pixel_data::datasets::{
    narratives::{
        locate_utterances, read_narratives, write_narratives, LocalizedNarrative, NarrativeSample,
    },
    DatasetError, SkipMode,
};
use proptest::prelude::*;
use serde::Deserialize;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/datasets/localized_narratives.jsonl")
}

fn close(a: [f32; 4], b: [f32; 4]) -> bool {
    a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5)
}

#[test]
fn strict_mode_names_file_and_line_of_malformed_record() {
    let err = read_narratives(&fixture(), SkipMode::Strict).err();
    match err {
        Some(e @ DatasetError::Record { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("localized_narratives.jsonl") && msg.contains("line 2"),
                "{msg}"
            );
        }
        other => panic!("expected a record error, got {other:?}"),
    }
}

#[test]
fn skip_mode_skips_and_counts_and_drops_untraced_narratives_visibly() {
    let (samples, summary) =
        read_narratives(&fixture(), SkipMode::SkipAndCount).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(samples.len(), 2);
    assert_eq!(summary.samples, 2);
    let skipped: Vec<&str> = summary
        .skipped
        .iter()
        .map(|s| s.location.as_str())
        .collect();
    assert_eq!(skipped, vec!["line 2", "line 4"]);
    assert!(
        summary.skipped[1].reason.contains("ends"),
        "{:?}",
        summary.skipped[1]
    );
    assert_eq!(summary.dropped.len(), 1);
    assert_eq!(summary.dropped[0].location, "line 5");
}

#[test]
fn words_get_their_utterance_trace_box_clipped_to_the_image() {
    let (samples, _) =
        read_narratives(&fixture(), SkipMode::SkipAndCount).unwrap_or_else(|e| panic!("{e}"));
    let s = &samples[0];
    assert_eq!(s.image_file_name(), "000000000139.jpg");
    let words: Vec<&str> = s.words.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(
        words,
        vec!["In", "this", "image", "we", "can", "see", "a", "dog."]
    );
    // "In this image", 0..1 s: x -0.02 -> 0.2 (clipped at 0), y 0.1 -> 0.3.
    assert!(
        close(s.words[0].1, [0.0, 0.1, 0.2, 0.3]),
        "{:?}",
        s.words[0].1
    );
    assert_eq!(s.words[0].1, s.words[2].1);
    // "we can see", 1..1.5 s: halfway to the next trace point.
    assert!(
        close(s.words[3].1, [0.2, 0.3, 0.35, 0.4]),
        "{:?}",
        s.words[3].1
    );
    // "a dog.", 2..3 s: y runs past 1 and is clipped.
    assert!(
        close(s.words[7].1, [0.5, 0.5, 0.7, 1.0]),
        "{:?}",
        s.words[7].1
    );
    assert_eq!(s.utterances[0].points.len(), 16);
    // A zero-length utterance is a point box.
    assert_eq!(samples[1].image_file_name(), "0a1b2c.jpg");
    assert!(close(samples[1].words[0].1, [0.2, 0.3, 0.2, 0.3]));
}

#[derive(Deserialize)]
struct ScenicCase {
    record: LocalizedNarrative,
    /// scenic's trace2coord per utterance (unclipped); null when the narrative has < 2 points.
    expected: Option<Vec<ScenicUtterance>>,
}

#[derive(Deserialize)]
struct ScenicUtterance {
    bbox: [f64; 4],
    center: [f64; 2],
    points: Vec<[f64; 2]>,
}

/// Fixture from `tools/make_metric_fixtures.py`: random narratives (trace segments out of time
/// order, utterances reaching past the trace, zero-length utterances) run through scenic's
/// `trace2coord` logic with scipy.
#[test]
fn utterance_boxes_match_scenic_trace2coord() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/datasets/ln_scenic_reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cases: Vec<ScenicCase> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let clip = |v: f64| v.clamp(0.0, 1.0) as f32;
    let mut checked = 0;
    for (n, c) in cases.iter().enumerate() {
        let got = locate_utterances(&c.record);
        let Some(expected) = &c.expected else {
            assert!(got.is_none(), "case {n}: expected no locations");
            continue;
        };
        let got = got.unwrap_or_else(|| panic!("case {n}: no locations"));
        assert_eq!(got.len(), expected.len());
        for (u, e) in got.iter().zip(expected) {
            for k in 0..4 {
                assert!(
                    (u.bbox[k] - clip(e.bbox[k])).abs() < 1e-6,
                    "case {n}: {:?} vs {:?}",
                    u.bbox,
                    e.bbox
                );
            }
            for k in 0..2 {
                assert!(
                    (u.center[k] - clip(e.center[k])).abs() < 1e-5,
                    "case {n}: {:?} vs {:?}",
                    u.center,
                    e.center
                );
            }
            for (p, q) in u.points.iter().zip(&e.points) {
                assert!((p[0] - clip(q[0])).abs() < 1e-6 && (p[1] - clip(q[1])).abs() < 1e-6);
            }
            checked += 1;
        }
    }
    assert!(checked > 10, "only {checked} utterances checked");
}

fn arb_sample() -> impl Strategy<Value = NarrativeSample> {
    let word = "[a-z]{1,6}";
    let bbox = (0.0f32..1.0, 0.0f32..1.0, 0.0f32..1.0, 0.0f32..1.0)
        .prop_map(|(a, b, c, d)| [a.min(c), b.min(d), a.max(c), b.max(d)]);
    prop::collection::vec((word, bbox), 1..8).prop_map(|words| NarrativeSample {
        dataset_id: "synthetic".into(),
        image_id: "img1".into(),
        annotator_id: 0,
        caption: words
            .iter()
            .map(|(w, _)| w.clone())
            .collect::<Vec<_>>()
            .join(" "),
        words,
        utterances: Vec::new(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn written_narratives_read_back_with_the_same_words_and_boxes(sample in arb_sample()) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().join("ln.jsonl");
        write_narratives(&path, std::slice::from_ref(&sample)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (back, summary) = read_narratives(&path, SkipMode::Strict).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(summary.samples, 1);
        prop_assert_eq!(back[0].words.len(), sample.words.len());
        for ((w1, b1), (w2, b2)) in back[0].words.iter().zip(&sample.words) {
            prop_assert_eq!(w1, w2);
            prop_assert!(close(*b1, *b2), "{:?} vs {:?}", b1, b2);
        }
    }
}
