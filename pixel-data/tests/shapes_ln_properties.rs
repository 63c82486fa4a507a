//! Properties of ShapesLN that the training and evaluation code rely on, checked on random
//! seeds, indices and configs.

use pixel_data::shapes_ln::{
    vocabulary, Colour, LnRecord, ShapeKind, ShapesLn, ShapesLnConfig, Split,
};
use proptest::prelude::*;

/// Word boxes from an LN record by the official rule: each utterance's trace segment (points with
/// `start_time <= t <= end_time`), boxed and clipped to [0, 1], is assigned to all its words.
/// Written independently of the generator, from the record alone.
fn ln_word_boxes(record: &LnRecord) -> Vec<(String, [f32; 4])> {
    let points: Vec<_> = record.traces.iter().flatten().collect();
    let mut out = Vec::new();
    for u in &record.timed_caption {
        let seg: Vec<_> = points
            .iter()
            .filter(|p| p.t >= u.start_time && p.t <= u.end_time)
            .collect();
        assert!(
            !seg.is_empty(),
            "utterance {:?} has no trace points",
            u.utterance
        );
        let xs = seg.iter().map(|p| p.x.clamp(0.0, 1.0));
        let ys = seg.iter().map(|p| p.y.clamp(0.0, 1.0));
        let b = [
            xs.clone().fold(f32::INFINITY, f32::min),
            ys.clone().fold(f32::INFINITY, f32::min),
            xs.fold(f32::NEG_INFINITY, f32::max),
            ys.fold(f32::NEG_INFINITY, f32::max),
        ];
        for w in u.utterance.split_whitespace() {
            out.push((w.to_string(), b));
        }
    }
    out
}

/// Word boxes by PixelLLM's rule (scenic `trace2coord`): the trace, sorted by time, linearly
/// interpolated at 16 even times from each utterance's start to its end; the box of those points,
/// clipped to [0, 1], goes to every word of the utterance.
fn pixel_llm_word_boxes(record: &LnRecord) -> Vec<(String, [f64; 4])> {
    let mut points: Vec<_> = record.traces.iter().flatten().collect();
    points.sort_by(|a, b| a.t.total_cmp(&b.t));
    let ts: Vec<f64> = points.iter().map(|p| p.t as f64).collect();
    let at = |t: f64, v: &dyn Fn(usize) -> f64| {
        let i = ts.partition_point(|&s| s < t).clamp(1, ts.len() - 1);
        let (t0, t1) = (ts[i - 1], ts[i]);
        if t1 == t0 {
            return v(i - 1);
        }
        (v(i) - v(i - 1)) / (t1 - t0) * (t - t0) + v(i - 1)
    };
    let mut out = Vec::new();
    for u in &record.timed_caption {
        let (start, end) = (u.start_time as f64, u.end_time as f64);
        let mut b = [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ];
        for k in 0..16 {
            let t = if k == 15 {
                end
            } else {
                start + k as f64 * (end - start) / 15.0
            };
            let x = at(t, &|i| points[i].x as f64).clamp(0.0, 1.0);
            let y = at(t, &|i| points[i].y as f64).clamp(0.0, 1.0);
            b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
        }
        for w in u.utterance.split_whitespace() {
            out.push((w.to_string(), b));
        }
    }
    out
}

fn config_with(image_size: u32, max_objects: usize) -> ShapesLnConfig {
    ShapesLnConfig {
        image_size,
        max_objects,
        ..Default::default()
    }
}

fn split() -> impl Strategy<Value = Split> {
    prop_oneof![Just(Split::Train), Just(Split::Validation)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn sample_is_a_pure_function_of_seed_split_and_index(
        seed in any::<u64>(), index in any::<u64>(), split in split()
    ) {
        let a = ShapesLn::new(ShapesLnConfig::default(), seed).unwrap().sample(split, index);
        let b = ShapesLn::new(ShapesLnConfig::default(), seed).unwrap().sample(split, index);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn every_valid_config_generates_consistent_samples(
        image_size in 16u32..=200,
        objects in (1usize..=6).prop_flat_map(|max| (1..=max, Just(max))),
        shapes in proptest::sample::subsequence(ShapeKind::ALL.to_vec(), 1..=4),
        colours in proptest::sample::subsequence(Colour::ALL.to_vec(), 1..=6),
        small in (0.05f32..0.25, 0.0f32..0.05),
        large in (0.0f32..0.1, 0.0f32..0.1),
        margins in (0.0f32..=0.1, 0.0f32..=0.1, 0.0f32..=0.2),
        seed in any::<u64>(), index in any::<u64>(),
    ) {
        let (min_objects, max_objects) = objects;
        let small_diameter = [small.0, (small.0 + small.1).min(0.3)];
        let l0 = small_diameter[1] + 0.01 + large.0;
        let config = ShapesLnConfig {
            image_size,
            min_objects,
            max_objects,
            shapes,
            colours,
            small_diameter,
            large_diameter: [l0, (l0 + large.1).min(0.5)],
            position_margin: margins.0,
            order_margin: margins.1,
            min_gap: margins.2,
            ..Default::default()
        };
        // Too few (shape, colour, size) combinations for max_objects is the one rejection.
        let Ok(g) = ShapesLn::new(config.clone(), seed) else {
            prop_assert!(2 * config.shapes.len() * config.colours.len() < max_objects);
            return Ok(());
        };
        let s = g.sample(Split::Train, index);
        prop_assert!(s.objects.len() <= max_objects);
        prop_assert_eq!(s.image.dimensions(), (image_size, image_size));
        prop_assert_eq!(s.words.len(), s.caption.split_whitespace().count());
        prop_assert_eq!(s.referring.len(), s.objects.len());
        for o in &s.objects {
            prop_assert!(config.shapes.contains(&o.kind) && config.colours.contains(&o.colour));
        }
    }

    #[test]
    fn train_and_validation_differ_at_the_same_index(seed in any::<u64>(), index in any::<u64>()) {
        let g = ShapesLn::new(ShapesLnConfig::default(), seed).unwrap();
        prop_assert_ne!(g.sample(Split::Train, index).image, g.sample(Split::Validation, index).image);
    }

    #[test]
    fn exported_ln_record_reproduces_the_word_boxes(
        seed in any::<u64>(), index in 0u64..10_000, split in split(),
        size in prop_oneof![Just(32u32), Just(64), Just(100), Just(256)],
        max_objects in 1usize..=6,
    ) {
        let g = ShapesLn::new(config_with(size, max_objects), seed).unwrap();
        let s = g.sample(split, index);
        // Through JSON, as a tool reading LN files would get it.
        let json = serde_json::to_string(&s.localized_narrative()).unwrap();
        let record: LnRecord = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&record.caption, &s.caption);
        let from_ln = ln_word_boxes(&record);
        prop_assert_eq!(from_ln.len(), s.words.len());
        for ((word, b), w) in from_ln.iter().zip(&s.words) {
            prop_assert_eq!(word, &w.word);
            prop_assert_eq!(*b, w.bbox, "word {:?}", word);
        }
    }

    #[test]
    fn pixel_llm_interpolation_rule_reproduces_the_word_boxes(
        seed in any::<u64>(), index in 0u64..10_000, split in split(), max_objects in 1usize..=6,
    ) {
        let s = ShapesLn::new(config_with(64, max_objects), seed).unwrap().sample(split, index);
        let json = serde_json::to_string(&s.localized_narrative()).unwrap();
        let record: LnRecord = serde_json::from_str(&json).unwrap();
        let boxes = pixel_llm_word_boxes(&record);
        prop_assert_eq!(boxes.len(), s.words.len());
        for ((word, b), w) in boxes.iter().zip(&s.words) {
            prop_assert_eq!(word, &w.word);
            for (got, want) in b.iter().zip(w.bbox) {
                prop_assert!((got - want as f64).abs() < 1e-5, "{} {:?} vs {:?}", word, b, w.bbox);
            }
        }
    }

    #[test]
    fn words_naming_an_object_box_it_and_point_into_it(
        seed in any::<u64>(), index in 0u64..10_000, size in 32u32..=160,
    ) {
        let s = ShapesLn::new(config_with(size, 6), seed).unwrap().sample(Split::Train, index);
        for w in &s.words {
            let Some(o) = w.object else { continue };
            let obj = &s.objects[o];
            prop_assert_eq!(w.bbox, obj.bbox);
            let px = ((w.point[0] * size as f32) as u32).min(size - 1);
            let py = ((w.point[1] * size as f32) as u32).min(size - 1);
            prop_assert_eq!(obj.mask.get_pixel(px, py).0[0], 255, "{} of {}", w.word, s.image_id);
            prop_assert!([obj.size.word(), obj.colour.word(), obj.kind.word(), "a"].contains(&w.word.as_str()));
        }
    }

    #[test]
    fn every_box_and_point_is_normalized(seed in any::<u64>(), index in 0u64..10_000) {
        let s = ShapesLn::new(ShapesLnConfig::default(), seed).unwrap().sample(Split::Validation, index);
        let ok = |v: f32| (0.0..=1.0).contains(&v);
        for w in &s.words {
            prop_assert!(w.bbox.iter().all(|&v| ok(v)) && w.point.iter().all(|&v| ok(v)));
            prop_assert!(w.bbox[0] <= w.bbox[2] && w.bbox[1] <= w.bbox[3]);
        }
        for p in &s.trace {
            prop_assert!(ok(p.x) && ok(p.y));
        }
        for o in &s.objects {
            prop_assert!(o.bbox.iter().all(|&v| ok(v)) && o.bbox[0] < o.bbox[2] && o.bbox[1] < o.bbox[3]);
        }
    }

    #[test]
    fn referring_text_names_only_words_of_its_object(seed in any::<u64>(), index in 0u64..10_000) {
        let s = ShapesLn::new(config_with(64, 6), seed).unwrap().sample(Split::Train, index);
        for r in &s.referring {
            let o = &s.objects[r.object];
            let words: Vec<_> = r.text.split(' ').collect();
            prop_assert_eq!(words[0], "the");
            for w in &words[1..] {
                prop_assert!([o.size.word(), o.colour.word(), o.kind.word()].contains(w));
            }
            // No other object fits every word of the expression.
            let fits = s.objects.iter().filter(|p| {
                words[1..].iter().all(|w| [p.size.word(), p.colour.word(), p.kind.word()].contains(w))
            }).count();
            prop_assert_eq!(fits, 1, "{:?}", r.text);
        }
    }
}

#[test]
fn vocabulary_is_small_sorted_and_unique() {
    let v = vocabulary();
    assert!(v.len() < 60, "{}", v.len());
    let mut sorted = v.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, v);
}

#[test]
fn ln_record_has_the_localized_narratives_field_names() {
    let s = ShapesLn::new(ShapesLnConfig::default(), 0)
        .unwrap()
        .sample(Split::Train, 0);
    let value = serde_json::to_value(s.localized_narrative()).unwrap();
    for key in [
        "dataset_id",
        "image_id",
        "annotator_id",
        "caption",
        "timed_caption",
        "traces",
        "voice_recording",
    ] {
        assert!(value.get(key).is_some(), "missing {key}");
    }
    let u = &value["timed_caption"][0];
    assert!(
        u.get("utterance").is_some()
            && u.get("start_time").is_some()
            && u.get("end_time").is_some()
    );
    let p = &value["traces"][0][0];
    assert!(p.get("x").is_some() && p.get("y").is_some() && p.get("t").is_some());
}
