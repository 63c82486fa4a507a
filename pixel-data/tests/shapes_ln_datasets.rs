//! ShapesLN exported as Localized Narratives JSON Lines reads back through the project's LN
//! reader (`datasets::narratives`, PixelLLM's per-word box rule) with the generator's word boxes.

use std::io::Write;

use pixel_data::datasets::narratives::read_narratives;
use pixel_data::datasets::SkipMode;
use pixel_data::shapes_ln::{ShapesLn, ShapesLnConfig, Split};

#[test]
fn ln_reader_recovers_the_generator_word_boxes() {
    let g = ShapesLn::new(
        ShapesLnConfig {
            max_objects: 6,
            ..Default::default()
        },
        11,
    )
    .unwrap();
    let samples: Vec<_> = (0..40).map(|i| g.sample(Split::Train, i)).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shapes_ln.jsonl");
    let mut file = std::fs::File::create(&path).unwrap();
    for s in &samples {
        let line = serde_json::to_string(&s.localized_narrative()).unwrap();
        writeln!(file, "{line}").unwrap();
    }
    drop(file);

    let (read, summary) = read_narratives(&path, SkipMode::Strict).unwrap();
    assert_eq!(summary.samples, samples.len());
    for (got, want) in read.iter().zip(&samples) {
        assert_eq!(got.image_id, want.image_id);
        assert_eq!(got.caption, want.caption);
        assert_eq!(got.words.len(), want.words.len());
        for ((word, b), w) in got.words.iter().zip(&want.words) {
            assert_eq!(word, &w.word);
            for (x, y) in b.iter().zip(w.bbox) {
                assert!(
                    (x - y).abs() < 1e-5,
                    "{} word {word:?}: {b:?} vs {:?}",
                    want.image_id,
                    w.bbox
                );
            }
        }
    }
}
