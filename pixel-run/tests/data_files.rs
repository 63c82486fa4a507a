//! ShapesLN exported to Localized Narratives, RefCOCO (MDETR) and Visual Genome files reads back
//! as the generator's samples with nothing skipped; training from the files draws the
//! generator's targets; the demo trains from the files, writes `data_report.json`, and
//! `pixel eval` evaluates its checkpoint. Bad records put into an export are skipped and counted
//! per file and reason (or clipped and counted), too many skips stop loading, and Visual Genome
//! regions join the narratives' images through `image_data.json`'s COCO ids. RefCOCO read from
//! the refer toolkit's `instances.json` and refs gives the same expressions, boxes and masks as
//! from MDETR's file, with its bad records counted per file.
use pixel_data::data_source::{
    export_shapes, DataSource, DatasetConfig, ReferFiles, RefexpFiles, SampleSource,
};
use pixel_data::datasets::{read_mdetr_refexp, read_vg_regions, DataReport, Reason, SkipMode};
use pixel_data::shapes_ln::{Sample, ShapesLn, Split};
use pixel_data::Result;
use pixel_lm::tokenizer::T5Tokenizer;
use pixel_metrics::masks::Segmentation;
use pixel_model::heads::HeadRegistry;
use pixel_model::model::VocabMap;
use pixel_model::task_mix::training_examples;
use pixel_model::tasks::{Example, ExampleBuilder};
use pixel_run::demo::run_demo;
use pixel_run::eval_run::{run_eval, EvalResults};
use pixel_run::experiment::ExperimentConfig;
use serde_json::{json, Value};
use std::path::Path;

const TRAIN: u64 = 6;
const VAL: u64 = 3;

fn close(a: [f32; 4], b: [f32; 4]) -> bool {
    a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5)
}

/// The generator restricted to its first images, as an export of them is.
struct FirstImages(ShapesLn);

impl SampleSource for FirstImages {
    fn images(&self, split: Split) -> u64 {
        match split {
            Split::Train => TRAIN,
            Split::Validation => VAL,
        }
    }
    fn load(&self, split: Split, index: u64) -> Result<Sample> {
        Ok(self.0.sample(split, index))
    }
}

fn exported(dir: &std::path::Path) -> (ExperimentConfig, ShapesLn, DataSource) {
    let (config, generator) = export_only(dir);
    let files = DataSource::new(&config.data, config.seed, config.dataset.as_ref()).unwrap();
    (config, generator, files)
}

/// The demo config reading an export of the generator's first images, before it is opened.
fn export_only(dir: &Path) -> (ExperimentConfig, ShapesLn) {
    let mut config = ExperimentConfig::builtin().unwrap();
    // The demo's EVA02 pretraining (1200 steps, cached by data) is not what these tests check.
    config.pretrain_eva = None;
    let generator = ShapesLn::new(config.data.clone(), config.seed).unwrap();
    config.dataset = Some(export_shapes(&generator, dir, TRAIN, VAL).unwrap());
    (config, generator)
}

fn dataset(config: &mut ExperimentConfig) -> &mut DatasetConfig {
    config.dataset.as_mut().unwrap()
}

fn open(config: &ExperimentConfig) -> Result<DataSource> {
    DataSource::new(&config.data, config.seed, config.dataset.as_ref())
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Writes `doc` pretty-printed (one key per line), so records have lines of their own.
fn write_pretty(path: &Path, doc: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(doc).unwrap()).unwrap();
}

/// Appends JSON Lines records to a narratives file.
fn append_lines(path: &Path, records: &[Value]) {
    let mut text = std::fs::read_to_string(path).unwrap();
    for r in records {
        text.push_str(&format!("{r}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// The `reason` count of `file` in the train split.
fn train_count(report: &DataReport, file: &Path, reason: Reason) -> usize {
    report.count("train", file, reason)
}

#[test]
fn exported_files_read_back_as_the_generator_samples() {
    let dir = tempfile::tempdir().unwrap();
    let (config, generator, files) = exported(dir.path());
    assert_eq!(files.images(Split::Train), TRAIN);
    assert_eq!(files.images(Split::Validation), VAL);
    let mut objects = 0;
    for (split, count) in [(Split::Train, TRAIN), (Split::Validation, VAL)] {
        for i in 0..count {
            let want = generator.sample(split, i);
            let got = files.load(split, i).unwrap();
            assert_eq!(got.image, want.image, "{split:?} {i}: PNG pixels");
            assert_eq!(got.caption, want.caption);
            assert_eq!(got.words.len(), want.words.len());
            for (g, w) in got.words.iter().zip(&want.words) {
                assert_eq!(g.word, w.word);
                assert!(close(g.bbox, w.bbox), "{:?} vs {:?}", g.bbox, w.bbox);
            }
            let texts = |s: &Sample| {
                let r: Vec<_> = s
                    .referring
                    .iter()
                    .map(|r| (r.text.clone(), r.bbox))
                    .collect();
                let g: Vec<_> = s
                    .regions
                    .iter()
                    .map(|r| (r.caption.clone(), r.bbox))
                    .collect();
                (r, g)
            };
            assert_eq!(texts(&got), texts(&want), "{split:?} {i}: boxes are exact");
            if split == Split::Train {
                objects += want.objects.len();
            }
        }
    }
    let train = &config.dataset.as_ref().unwrap().train;
    let (refs, _) = read_mdetr_refexp(train.referring.expressions(), SkipMode::Strict).unwrap();
    let (regions, _) = read_vg_regions(&train.regions, SkipMode::Strict).unwrap();
    assert_eq!((refs.len(), regions.len()), (objects, objects));
    // Masks are exported as COCO RLE with the object's pixel count.
    let first = generator.sample(Split::Train, 0);
    let area = refs[0]
        .mask
        .as_ref()
        .map(|m| m.to_rle(None).unwrap().area());
    let pixels = first.objects[0]
        .mask
        .pixels()
        .filter(|p| p[0] > 127)
        .count() as u64;
    assert_eq!(area, Some(pixels));
}

#[test]
fn training_from_files_draws_the_generator_targets() {
    let dir = tempfile::tempdir().unwrap();
    let (config, generator, files) = exported(dir.path());
    let tokenizer = T5Tokenizer::bundled().unwrap();
    let vocab = VocabMap::identity(32128);
    let builder = ExampleBuilder {
        tokenizer: &tokenizer,
        vocab: &vocab,
        max_target_tokens: config.tasks.max_target_tokens,
    };
    let first = FirstImages(generator);
    for step in 0..4 {
        let a = training_examples(&files, &builder, &config.tasks, 8, 0, step).unwrap();
        let b = training_examples(&first, &builder, &config.tasks, 8, 0, step).unwrap();
        let same = |x: &Example, y: &Example| {
            x.task == y.task
                && x.image == y.image
                && x.prompt_box == y.prompt_box
                && x.context_ids == y.context_ids
                && x.target_ids == y.target_ids
                && x.target_box == y.target_box
                && x.target_mask == y.target_mask
                && x.token_boxes.len() == y.token_boxes.len()
                && x.token_boxes
                    .iter()
                    .zip(&y.token_boxes)
                    .all(|(p, q)| match (p, q) {
                        (Some(p), Some(q)) => close(p.to_array(), q.to_array()),
                        (None, None) => true,
                        _ => false,
                    })
        };
        assert!(a.iter().zip(&b).all(|(x, y)| same(x, y)), "step {step}");
    }
}

/// RefCOCO masks reach referring examples from files (as the generator's do from its objects),
/// and an image with several narratives (COCO val has five) gives every one of them its
/// expressions and regions.
#[test]
fn files_give_masks_and_share_an_image_across_its_narratives() {
    let dir = tempfile::tempdir().unwrap();
    let (config, generator, _) = exported(dir.path());
    let train = &config.dataset.as_ref().unwrap().train;
    let first_line = std::fs::read_to_string(&train.narratives)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    // A second narrative of image 0, as a second annotator would write it (the same
    // annotator's would be a duplicate).
    let mut second: Value = serde_json::from_str(&first_line).unwrap();
    second["annotator_id"] = json!(second["annotator_id"].as_i64().unwrap() + 1);
    append_lines(&train.narratives, &[second]);
    let files = DataSource::new(&config.data, config.seed, config.dataset.as_ref()).unwrap();
    assert_eq!(files.images(Split::Train), TRAIN + 1);
    let want = generator.sample(Split::Train, 0);
    for index in [0, TRAIN] {
        let got = files.load(Split::Train, index).unwrap();
        assert_eq!(
            got.referring.len(),
            want.referring.len(),
            "narrative {index}"
        );
        assert_eq!(got.regions.len(), want.regions.len(), "narrative {index}");
        for (g, w) in got.referring.iter().zip(&want.referring) {
            assert_eq!(
                g.mask.as_ref(),
                Some(&want.objects[w.object].mask),
                "narrative {index}"
            );
        }
    }
}

#[test]
fn demo_trains_from_exported_files_and_eval_reads_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _, _) = exported(&dir.path().join("data"));
    config.train.steps = 2;
    config.train.batch_size = 4;
    config.train.warmup_steps = 1;
    config.train.checkpoint_every = 0;
    config.eval.validation_images = VAL;
    config.eval.baseline_images = TRAIN;
    config.eval.sample_images = 2;
    config.eval.max_new_tokens = 8;
    config.eval.batch_size = 4;
    let run = dir.path().join("run");
    let metrics = run_demo(&config, &run, false, &HeadRegistry::builtin()).unwrap();
    assert!(metrics.train.final_loss.is_some_and(f32::is_finite));
    assert!(run.join("metrics.json").is_file() && run.join("samples.png").is_file());
    let report: DataReport =
        serde_json::from_str(&std::fs::read_to_string(run.join("data_report.json")).unwrap())
            .unwrap();
    assert_eq!(report.splits.len(), 2);
    assert_eq!(report.skipped(), 0, "{report:?}");

    let out = dir.path().join("eval");
    let results = run_eval(&config, &run, &out, &HeadRegistry::builtin()).unwrap();
    assert_eq!(results.step, Some(2));
    assert_eq!(results.validation_images, VAL);
    assert!(
        results.data.contains("localized_narratives.jsonl"),
        "{}",
        results.data
    );
    let raw = std::fs::read(out.join("results.json")).unwrap();
    let json: EvalResults = serde_json::from_slice(&raw).unwrap();
    // The demo has no mask or detection head: their scores are absent, not zero.
    let raw = String::from_utf8(raw).unwrap();
    assert!(json.referring_segmentation.is_none() && json.dense_captioning.is_none());
    assert!(!raw.contains("referring_segmentation") && !raw.contains("dense_captioning"));
    // serde_json reads floats back to within an ulp or so.
    assert_eq!(json.rows.len(), results.rows.len());
    for (a, b) in json.rows.iter().zip(&results.rows) {
        assert_eq!((&a.task, &a.metric), (&b.task, &b.metric));
        assert!((a.value - b.value).abs() < 1e-12, "{a:?} vs {b:?}");
    }
    let table = std::fs::read_to_string(out.join("results.md")).unwrap();
    for metric in [
        "Acc@0.5", "mIoU", "point L1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D",
    ] {
        assert!(table.contains(metric), "{metric} missing from\n{table}");
    }
    let s = &results.trace_captions;
    assert!([s.meteor, s.rouge_l, s.cider]
        .iter()
        .chain(&s.bleu)
        .all(|v| v.is_finite()));
    // The same checkpoint on the generator's validation images: the same images, so the same
    // referring-localization numbers.
    config.dataset = None;
    let generated = run_eval(
        &config,
        &run,
        &dir.path().join("eval-generator"),
        &HeadRegistry::builtin(),
    )
    .unwrap();
    assert_eq!(
        generated.eval.referring_localization.count,
        results.eval.referring_localization.count
    );
    assert!(
        (generated.eval.referring_localization.miou - results.eval.referring_localization.miou)
            .abs()
            < 1e-4
    );
}

/// `pixel export-shapes` output loads with nothing skipped, clipped or unused.
#[test]
fn exported_files_load_with_nothing_skipped_or_clipped() {
    let dir = tempfile::tempdir().unwrap();
    let (config, generator, files) = exported(dir.path());
    let report = files.report().unwrap();
    assert!(report.summary().is_empty(), "{:?}", report.summary());
    let train = &config.dataset.as_ref().unwrap().train;
    let objects: usize = (0..TRAIN)
        .map(|i| generator.sample(Split::Train, i).objects.len())
        .sum();
    for (path, records) in [
        (train.narratives.as_path(), TRAIN as usize),
        (train.referring.expressions(), objects),
        (train.regions.as_path(), objects),
    ] {
        let f = report.file("train", path).unwrap();
        assert_eq!((f.records, f.unused), (records, 0), "{}", path.display());
        assert!(f.reasons.is_empty(), "{f:?}");
    }
}

/// A narrative with fewer than two trace points, a trace far outside the image, an empty
/// caption and the same annotator's narrative of an image again are each skipped and counted
/// with their file and line; a trace just outside the image is clipped, kept and counted.
#[test]
fn bad_narratives_are_skipped_and_counted_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) = export_only(dir.path());
    dataset(&mut config).max_skipped_fraction = 1.0;
    let path = config.dataset.as_ref().unwrap().train.narratives.clone();
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut r = first.clone();
        edit(&mut r);
        r
    };
    let point = |x: f64, y: f64, t: f64| json!({"x": x, "y": y, "t": t});
    let utterance = json!([{"utterance": "a shape", "start_time": 0.0, "end_time": 1.0}]);
    append_lines(
        &path,
        &[
            with(&|r| r["traces"] = json!([[point(0.5, 0.5, 0.0)]])),
            with(&|r| {
                r["annotator_id"] = json!(70);
                r["timed_caption"] = utterance.clone();
                r["traces"] = json!([[point(3.0, 40.0, 0.0), point(60.0, 12.0, 1.0)]]);
            }),
            with(&|r| {
                r["annotator_id"] = json!(71);
                r["caption"] = json!("");
            }),
            first.clone(),
            with(&|r| {
                r["annotator_id"] = json!(72);
                r["timed_caption"] = utterance.clone();
                r["traces"] = json!([[point(-0.03, 0.2, 0.0), point(0.6, 1.05, 1.0)]]);
            }),
        ],
    );
    let data = open(&config).unwrap();
    let report = data.report().unwrap();
    let line = |k: u64| format!("{}:{}", path.display(), TRAIN + k);
    let f = report.file("train", &path).unwrap();
    for (k, reason) in [
        (1, Reason::TooFewTracePoints),
        (2, Reason::TraceOutsideImage),
        (3, Reason::EmptyCaption),
        (4, Reason::DuplicateId),
        (5, Reason::TraceClipped),
    ] {
        let count = &f.reasons[&reason];
        assert_eq!(count.count, 1, "{reason:?}");
        assert_eq!(count.examples, vec![line(k)], "{reason:?}");
        assert_eq!(count.skipped, reason != Reason::TraceClipped);
    }
    assert_eq!((f.records, f.skipped()), (TRAIN as usize + 5, 4));
    // The clipped narrative is kept.
    assert_eq!(data.images(Split::Train), TRAIN + 1);
    assert_eq!(report.summary().len(), 5, "{:?}", report.summary());
}

/// An empty referring expression, an expression id two entries share, an empty region phrase,
/// a region outside its image, a region without area and a repeated Visual Genome image entry
/// are skipped and counted per file and reason.
#[test]
fn bad_expressions_and_regions_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, generator) = export_only(dir.path());
    dataset(&mut config).max_skipped_fraction = 1.0;
    let train = config.dataset.as_ref().unwrap().train.clone();
    let mut refexp = read_json(train.referring.expressions());
    refexp["images"][0]["caption"] = json!(" ");
    refexp["images"][2]["id"] = refexp["images"][1]["id"].clone();
    write_pretty(train.referring.expressions(), &refexp);
    let mut regions = read_json(&train.regions);
    let side = f64::from(config.data.image_size);
    regions[0]["regions"][0]["phrase"] = json!("");
    regions[1]["regions"][0]["x"] = json!(side + 10.0);
    regions[2]["regions"][0]["width"] = json!(0.0);
    let repeated = regions[3].clone();
    let repeated_regions = repeated["regions"].as_array().unwrap().len();
    regions.as_array_mut().unwrap().push(repeated);
    write_pretty(&train.regions, &regions);

    let data = open(&config).unwrap();
    let report = data.report().unwrap();
    assert_eq!(
        train_count(
            report,
            train.referring.expressions(),
            Reason::EmptyExpression
        ),
        1
    );
    assert_eq!(
        train_count(report, train.referring.expressions(), Reason::DuplicateId),
        2
    );
    for (reason, count) in [
        (Reason::EmptyPhrase, 1),
        (Reason::RegionOutsideImage, 1),
        (Reason::RegionZeroArea, 1),
        (Reason::DuplicateId, repeated_regions),
    ] {
        assert_eq!(
            train_count(report, &train.regions, reason),
            count,
            "{reason:?}"
        );
    }
    // Examples name the file and the line the region starts on.
    let example = &report.file("train", &train.regions).unwrap().reasons
        [&Reason::RegionOutsideImage]
        .examples[0];
    let text = std::fs::read_to_string(&train.regions).unwrap();
    let x_line = 1 + text
        .lines()
        .position(|l| l.contains(&format!("\"x\": {}", side + 10.0)))
        .unwrap();
    let named: usize = example
        .rsplit(':')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        example.starts_with(&train.regions.display().to_string())
            && named < x_line
            && x_line - named < 10,
        "{example} vs x at line {x_line}"
    );
    // What is left is the generator's, less the skipped records: image 0's first region, and
    // its first three expressions (`images[0..3]`, in export order).
    let first = generator.sample(Split::Train, 0);
    let got = data.load(Split::Train, 0).unwrap();
    assert_eq!(got.regions.len(), first.regions.len() - 1);
    assert_eq!(got.referring.len(), first.referring.len().saturating_sub(3));
}

/// Over `dataset.max_skipped_fraction`, loading stops naming the file, the reason and the
/// counts; at or under it, the file loads.
#[test]
fn too_many_skips_stop_loading_naming_file_reason_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) = export_only(dir.path());
    let path = config.dataset.as_ref().unwrap().train.narratives.clone();
    let mut single: Value = serde_json::from_str(
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    single["traces"] = json!([[{"x": 0.5, "y": 0.5, "t": 0.0}]]);
    append_lines(&path, &[single]);
    let records = TRAIN + 1;
    let err = open(&config)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains(&path.display().to_string())
            && err.contains("too_few_trace_points: 1")
            && err.contains(&format!("1 of {records} records"))
            && err.contains("max_skipped_fraction = 0.01"),
        "{err}"
    );
    dataset(&mut config).max_skipped_fraction = 1.0 / records as f32;
    assert!(open(&config).is_ok());
}

/// `dataset.max_skipped_fraction` is a fraction: outside [0, 1] the config fails naming the
/// file, the key and the line.
#[test]
fn max_skipped_fraction_outside_0_1_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = export_only(&dir.path().join("data"));
    let section = config.dataset.as_ref().unwrap().to_toml_section().unwrap();
    assert!(section.contains("max_skipped_fraction = 0.01"), "{section}");
    let path = dir.path().join("exp.toml");
    let good = format!("{}\n{section}", pixel_run::experiment::DEFAULT_DEMO_CONFIG);
    std::fs::write(&path, &good).unwrap();
    assert_eq!(
        ExperimentConfig::load(&path)
            .unwrap()
            .dataset
            .unwrap()
            .max_skipped_fraction,
        0.01
    );
    std::fs::write(
        &path,
        good.replace("max_skipped_fraction = 0.01", "max_skipped_fraction = 1.5"),
    )
    .unwrap();
    let err = ExperimentConfig::load(&path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("exp.toml")
            && err.contains("dataset.max_skipped_fraction")
            && err.contains("[0, 1]")
            && err.contains("line"),
        "{err}"
    );
}

/// An `image_data.json` record in the shape of the Visual Genome v1.2 release's.
fn vg_image(image_id: i64, coco_id: Option<u64>, width: u32, height: u32) -> Value {
    json!({
        "width": width,
        "url": format!("https://cs.stanford.edu/people/rak248/VG_100K/{image_id}.jpg"),
        "height": height,
        "image_id": image_id,
        "coco_id": coco_id,
        "flickr_id": null,
    })
}

/// Rewrites the train split's regions as Visual Genome publishes them: VG ids (5000 + the
/// COCO id) and boxes in an image twice the size (`scale` x the exported image's side), with
/// `image_data.json` mapping the VG ids to the narratives' (COCO) ids; plus a VG image that is
/// not COCO's and a region of an image `image_data.json` does not list.
fn regions_with_vg_ids(config: &mut ExperimentConfig, scale: (f64, f64)) -> std::path::PathBuf {
    let side = f64::from(config.data.image_size);
    let size = |s: f64| (side * s) as u32;
    let train = &mut dataset(config).train;
    let mut regions = read_json(&train.regions);
    let mut image_data = Vec::new();
    for entry in regions.as_array_mut().unwrap() {
        let coco = entry["id"].as_u64().unwrap();
        let vg = 5000 + coco as i64;
        entry["id"] = json!(vg);
        for r in entry["regions"].as_array_mut().unwrap() {
            r["image_id"] = json!(vg);
            for (key, s) in [
                ("x", scale.0),
                ("width", scale.0),
                ("y", scale.1),
                ("height", scale.1),
            ] {
                r[key] = json!(r[key].as_f64().unwrap() * s);
            }
        }
        image_data.push(vg_image(vg, Some(coco), size(scale.0), size(scale.1)));
    }
    let mut not_coco = regions[0].clone();
    not_coco["id"] = json!(7);
    for r in not_coco["regions"].as_array_mut().unwrap() {
        r["image_id"] = json!(7);
    }
    let mut unlisted = regions[0].clone();
    unlisted["id"] = json!(8);
    unlisted["regions"] = json!([unlisted["regions"][0].clone()]);
    unlisted["regions"][0]["image_id"] = json!(8);
    let unused = not_coco["regions"].as_array().unwrap().len();
    regions.as_array_mut().unwrap().extend([not_coco, unlisted]);
    image_data.push(vg_image(7, None, 800, 600));
    write_pretty(&train.regions, &regions);
    let path = train.regions.with_file_name("image_data.json");
    write_pretty(&path, &Value::Array(image_data));
    train.image_data = Some(path.clone());
    assert!(unused > 0);
    path
}

/// With `image_data`, regions join the narratives' images through VG's `coco_id` and are
/// normalised by `image_data`'s size: the generator's boxes come back exactly. Regions of a VG
/// image that is not COCO's are unused; a region of an image `image_data` lacks is counted.
#[test]
fn vg_regions_join_the_narratives_images_through_image_data() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, generator) = export_only(dir.path());
    dataset(&mut config).max_skipped_fraction = 0.5;
    let image_data = regions_with_vg_ids(&mut config, (2.0, 2.0));
    let data = open(&config).unwrap();
    for i in 0..TRAIN {
        let want = generator.sample(Split::Train, i);
        let got = data.load(Split::Train, i).unwrap();
        let boxes = |s: &Sample| {
            s.regions
                .iter()
                .map(|r| (r.caption.clone(), r.bbox))
                .collect::<Vec<_>>()
        };
        assert_eq!(boxes(&got), boxes(&want), "image {i}");
    }
    let report = data.report().unwrap();
    let regions = &config.dataset.as_ref().unwrap().train.regions;
    assert_eq!(train_count(report, regions, Reason::NotInImageData), 1);
    let f = report.file("train", regions).unwrap();
    assert_eq!(f.unused, generator.sample(Split::Train, 0).regions.len());
    let d = report.file("train", &image_data).unwrap();
    assert_eq!((d.records, d.unused), (TRAIN as usize + 1, 1));
}

/// An `image_data` size of another shape than the real image is an error naming the file and
/// the record's line.
#[test]
fn image_data_of_another_shape_is_an_error_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) = export_only(dir.path());
    dataset(&mut config).max_skipped_fraction = 0.5;
    let image_data = regions_with_vg_ids(&mut config, (2.0, 3.0));
    let err = open(&config)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains(&image_data.display().to_string())
            && err.contains("line 2")
            && err.contains("not the same picture"),
        "{err}"
    );
}

/// `instances.json` and refs in the refer toolkit's shape, made from the train split's MDETR
/// export: COCO image and annotation records (masks as crowd RLE runs, except the first
/// annotation's, a polygon of its box as a non-crowd annotation has), and refs as
/// `tools/refer_pickle_to_json.py` writes `refs(unc).p`, one per expression in split `train`,
/// plus a ref of split `val` that the train split must not read. The train split then reads
/// them (`refer = { instances, refs, split = "train" }`).
fn refer_files(config: &mut ExperimentConfig) -> ReferFiles {
    let train = &mut dataset(config).train;
    let mdetr = read_json(train.referring.expressions());
    let mut images = std::collections::BTreeMap::new();
    let mut annotations = Vec::new();
    let mut refs = Vec::new();
    let entries = mdetr["images"].as_array().unwrap();
    let anns = mdetr["annotations"].as_array().unwrap();
    for (k, (im, ann)) in entries.iter().zip(anns).enumerate() {
        let image_id = im["original_id"].as_i64().unwrap();
        images.entry(image_id).or_insert_with(|| {
            json!({
                "license": 3,
                "file_name": format!("COCO_train2014_{image_id:012}.jpg"),
                "coco_url": format!("http://mscoco.org/images/{image_id}"),
                "height": im["height"],
                "width": im["width"],
                "date_captured": "2013-11-14 16:28:13",
                "flickr_url": "http://farm4.staticflickr.com/3153/2970773875_164f0c0b83_z.jpg",
                "id": image_id,
            })
        });
        let mask: Segmentation = serde_json::from_value(ann["segmentation"].clone()).unwrap();
        let rle = mask.to_rle(None).unwrap();
        let b: Vec<f64> = serde_json::from_value(ann["bbox"].clone()).unwrap();
        let (segmentation, iscrowd) = if k == 0 {
            let (x0, y0, x1, y1) = (b[0], b[1], b[0] + b[2], b[1] + b[3]);
            (json!([[x0, y0, x1, y0, x1, y1, x0, y1]]), 0)
        } else {
            (json!({"counts": rle.counts, "size": [rle.h, rle.w]}), 1)
        };
        let ann_id = 1000 + k as i64;
        annotations.push(json!({
            "segmentation": segmentation,
            "area": rle.area(),
            "iscrowd": iscrowd,
            "image_id": image_id,
            "bbox": b,
            "category_id": 1,
            "id": ann_id,
        }));
        let sent = im["caption"].as_str().unwrap();
        let tokens: Vec<&str> = sent.split_whitespace().collect();
        refs.push(json!({
            "sent_ids": [k],
            "file_name": format!("COCO_train2014_{image_id:012}_{ann_id}.jpg"),
            "ann_id": ann_id,
            "ref_id": k,
            "image_id": image_id,
            "split": "train",
            "sentences": [{"tokens": tokens, "raw": sent, "sent_id": k, "sent": sent}],
            "category_id": 1,
        }));
    }
    let mut other_split = refs[0].clone();
    other_split["ref_id"] = json!(refs.len());
    other_split["split"] = json!("val");
    other_split["sentences"][0]["sent"] = json!("a validation expression");
    refs.push(other_split);
    let instances = json!({
        "info": {"description": "This is stable 1.0 version of the 2014 MS COCO dataset.", "year": 2014},
        "images": images.into_values().collect::<Vec<_>>(),
        "licenses": [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 3, "name": "Attribution License"}],
        "annotations": annotations,
        "categories": [{"supercategory": "shape", "id": 1, "name": "shape"}],
    });
    let dir = train.regions.parent().unwrap();
    let files = ReferFiles {
        instances: dir.join("instances.json"),
        refs: dir.join("refs(unc).json"),
        split: "train".into(),
    };
    write_pretty(&files.instances, &instances);
    write_pretty(&files.refs, &Value::Array(refs));
    train.referring = RefexpFiles::Refer(files.clone());
    files
}

/// The refer toolkit's files give the generator's expressions, boxes and masks (the polygon of
/// a non-crowd annotation filled), read only the configured split, and load with nothing
/// skipped; each file has its own report.
#[test]
fn refer_toolkit_files_read_back_as_the_generator_samples() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, generator) = export_only(dir.path());
    let refer = refer_files(&mut config);
    let data = open(&config).unwrap();
    let side = config.data.image_size;
    for i in 0..TRAIN {
        let want = generator.sample(Split::Train, i);
        let got = data.load(Split::Train, i).unwrap();
        let expressions = |s: &Sample| {
            s.referring
                .iter()
                .map(|r| (r.text.clone(), r.bbox))
                .collect::<Vec<_>>()
        };
        assert_eq!(expressions(&got), expressions(&want), "image {i}");
        for (k, (g, w)) in got.referring.iter().zip(&want.referring).enumerate() {
            let mask = g.mask.as_ref().unwrap();
            if i == 0 && k == 0 {
                // The box's polygon, filled: every pixel inside the box, most of it covered.
                let b = g.bbox.map(|v| v * side as f32);
                let inside = mask.enumerate_pixels().filter(|p| p.2[0] > 127);
                let (mut n, mut out) = (0, 0);
                for (x, y, _) in inside {
                    n += 1;
                    let (x, y) = (x as f32 + 0.5, y as f32 + 0.5);
                    out += usize::from(
                        x < b[0] - 1.0 || x > b[2] + 1.0 || y < b[1] - 1.0 || y > b[3] + 1.0,
                    );
                }
                let area = (b[2] - b[0]) * (b[3] - b[1]);
                assert!(
                    out == 0 && n as f32 > 0.8 * area,
                    "{n} pixels, {out} outside, box area {area}"
                );
            } else {
                assert_eq!(Some(mask), Some(&want.objects[w.object].mask), "image {i}");
            }
        }
    }
    let report = data.report().unwrap();
    assert!(report.summary().is_empty(), "{:?}", report.summary());
    let expressions = report.file("train", &refer.refs).unwrap();
    let objects: usize = (0..TRAIN)
        .map(|i| generator.sample(Split::Train, i).objects.len())
        .sum();
    assert_eq!(expressions.records, objects);
    let instances = report.file("train", &refer.instances).unwrap();
    assert_eq!(instances.records, TRAIN as usize + objects);
}

/// An empty sentence is counted in the refs file's report and a repeated annotation id in
/// instances.json's, each with its line; an annotation box outside its image stops loading
/// naming instances.json, and so does a split no ref has, naming the split.
#[test]
fn bad_refer_records_are_counted_in_their_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) = export_only(dir.path());
    dataset(&mut config).max_skipped_fraction = 1.0;
    let refer = refer_files(&mut config);
    dataset(&mut config).train.referring = RefexpFiles::Refer(ReferFiles {
        split: "trian".into(),
        ..refer.clone()
    });
    let err = open(&config)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("refs(unc).json") && err.contains("split `trian`"),
        "{err}"
    );
    dataset(&mut config).train.referring = RefexpFiles::Refer(refer.clone());
    let mut refs = read_json(&refer.refs);
    refs[1]["sentences"][0]["sent"] = json!(" ");
    write_pretty(&refer.refs, &refs);
    let mut instances = read_json(&refer.instances);
    let repeated = instances["annotations"][2].clone();
    instances["annotations"]
        .as_array_mut()
        .unwrap()
        .push(repeated);
    write_pretty(&refer.instances, &instances);
    let data = open(&config).unwrap();
    let report = data.report().unwrap();
    let example = |file: &Path, reason: Reason| {
        let f = report.file("train", file).unwrap();
        (
            f.reasons[&reason].count,
            f.reasons[&reason].examples[0].clone(),
        )
    };
    let (count, at) = example(&refer.refs, Reason::EmptyExpression);
    assert_eq!(count, 1);
    assert!(at.starts_with(&refer.refs.display().to_string()), "{at}");
    let (count, at) = example(&refer.instances, Reason::DuplicateId);
    assert_eq!(count, 1);
    assert!(
        at.starts_with(&refer.instances.display().to_string()),
        "{at}"
    );

    instances["annotations"][1]["bbox"][0] = json!(f64::from(config.data.image_size) + 5.0);
    write_pretty(&refer.instances, &instances);
    let err = open(&config)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("instances.json")
            && err.contains("annotations[1]")
            && err.contains("leaves its"),
        "{err}"
    );
}
