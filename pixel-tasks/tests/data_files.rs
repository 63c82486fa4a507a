//! ShapesLN exported to Localized Narratives, RefCOCO (MDETR) and Visual Genome files reads back
//! as the generator's samples; training from the files draws the generator's targets; the demo
//! trains from the files and `pixel eval` evaluates its checkpoint.
use pixel_lm::tokenizer::T5Tokenizer;
use pixel_tasks::data_source::{export_shapes, DataSource, SampleSource};
use pixel_tasks::datasets::{read_mdetr_refexp, read_vg_regions, SkipMode};
use pixel_tasks::demo::{run_demo, training_examples, DemoConfig};
use pixel_tasks::eval_run::{run_eval, EvalResults};
use pixel_tasks::heads::HeadRegistry;
use pixel_tasks::model::VocabMap;
use pixel_tasks::shapes_ln::{Sample, ShapesLn, Split};
use pixel_tasks::tasks::{Example, ExampleBuilder};
use pixel_tasks::Result;

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

fn exported(dir: &std::path::Path) -> (DemoConfig, ShapesLn, DataSource) {
    let mut config = DemoConfig::builtin().unwrap();
    let generator = ShapesLn::new(config.data.clone(), config.seed).unwrap();
    let dataset = export_shapes(&generator, dir, TRAIN, VAL).unwrap();
    config.dataset = Some(dataset);
    let files = DataSource::new(&config.data, config.seed, config.dataset.as_ref()).unwrap();
    (config, generator, files)
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
    let (refs, _) = read_mdetr_refexp(&train.refexp, SkipMode::Strict).unwrap();
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
    let mut text = std::fs::read_to_string(&train.narratives).unwrap();
    // A second narrative of image 0, as a second annotator would write it.
    text.push_str(&first_line);
    text.push('\n');
    std::fs::write(&train.narratives, text).unwrap();
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
