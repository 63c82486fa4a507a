//! `pixel eval`: a model from a training checkpoint, every configured task on the validation
//! split of the experiment's data (the generator or files), written as `results.json` and a
//! readable `results.md` table.
//!
//! Referring localization and trace point L1 come from [`pixel_model::eval::evaluate`], next to the
//! best constant predictors fitted on training images. Captioning tasks also generate text and
//! score it against the reference captions with pycocoevalcap's metrics ([`pixel_metrics`]:
//! PTB tokenization, BLEU-1..4, METEOR with exact and stem matching, ROUGE-L, CIDEr-D).
//! The heads that read the image are scored when configured ([`crate::eval_heads`]): a `mask`
//! head on referring segmentation, a `detection` head on dense captioning. A head with metrics
//! of its own (`OutputHead::metrics`) has them under `heads.<name>` and in a table of its own.
use crate::error::{Result, RunError};
use crate::eval_attention::{referring_attention, BindingReport, RegionShares};
use crate::eval_heads::{
    dense_captioning_report, segmentation_report, DenseCaptioningReport, Detection,
    SegmentationReport,
};
use crate::experiment::ExperimentConfig;
use image::GrayImage;
use pixel_core::checkpoint::{load_params_file, write_atomic};
use pixel_data::data_source::{DataSource, SampleSource};
use pixel_data::shapes_ln::{Sample, Split};
use pixel_lm::tokenizer::{T5Tokenizer, EOS_ID, PAD_ID};
use pixel_metrics::captions::{score_captions, CaptionScores, Predictions, References};
use pixel_metrics::Meteor;
use pixel_model::eval::{
    evaluate, referring_head_predictions, Baselines, EvalReport, HeadMetrics, Predictor,
};
use pixel_model::heads::{HeadConfig, HeadPrediction, Scored};
use pixel_model::model::{TinyHeadRegistry, TinyPixelLlm};
use pixel_model::task_mix::evaluation_examples;
use pixel_model::tasks::{Example, ExampleBuilder, TaskKind};
use pixel_render::{mask_overlay, palette, samples_png, RenderError, SamplePanel, GREY};
use pixel_train::RunDir;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `results.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalResults {
    /// The weights file evaluated, and its training step when the checkpoint folder names it.
    pub weights: PathBuf,
    pub step: Option<u64>,
    /// Which data the numbers are on.
    pub data: String,
    pub validation_images: u64,
    pub baseline_images: u64,
    #[serde(flatten)]
    pub eval: EvalReport,
    /// Generated trace captions against the reference captions.
    pub trace_captions: CaptionScores,
    /// Captions generated from region boxes, when location captioning is in the task mix.
    pub location_captions: Option<CaptionScores>,
    /// The mask head's masks for the referring expressions, when a `mask` head is configured
    /// (and the objects have masks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referring_segmentation: Option<SegmentationReport>,
    /// The detection head's proposals, captioned, when a `detection` head is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_captioning: Option<DenseCaptioningReport>,
    /// Where the decoder looks when it places a referring box in an image with several
    /// objects (dense fusion only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referring_attention: Option<BindingReport>,
    /// The table of `results.md`.
    pub rows: Vec<ResultRow>,
    pub wall_s: f64,
}

/// One line of the results table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub task: String,
    pub metric: String,
    pub value: f64,
    /// The best constant predictor's value, where the metric has one.
    pub baseline: Option<f64>,
}

/// The weights file `checkpoint` names, with its step when known: a run folder (its latest
/// checkpoint), a checkpoint folder (`step-NNNNNNN/`), or a `.safetensors` file.
pub fn resolve_checkpoint(checkpoint: &Path) -> Result<(PathBuf, Option<u64>)> {
    let step_of = |dir: &Path| {
        dir.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<u64>().ok())
    };
    if checkpoint.is_file() {
        let step = checkpoint.parent().and_then(step_of);
        return Ok((checkpoint.to_path_buf(), step));
    }
    let dir = if checkpoint.join("model.safetensors").is_file() {
        checkpoint.to_path_buf()
    } else if let Some(latest) = RunDir::new(checkpoint).latest_checkpoint()? {
        latest
    } else {
        return Err(RunError::Invalid(format!(
            "`{}` is not a checkpoint\n  help: give a run folder (with checkpoints/latest), a checkpoint folder (with model.safetensors) or a .safetensors file",
            checkpoint.display()
        )));
    };
    Ok((dir.join("model.safetensors"), step_of(&dir)))
}

/// Evaluates the checkpoint on the data of `config` and writes `out/results.json` and
/// `out/results.md`.
pub fn run_eval(
    config: &ExperimentConfig,
    checkpoint: &Path,
    out: &Path,
    heads: &TinyHeadRegistry,
) -> Result<EvalResults> {
    let started = std::time::Instant::now();
    if config.eval.densecap_max_proposals == 0 {
        return Err(RunError::Config {
            key: "eval.densecap_max_proposals".into(),
            message: "must be at least 1".into(),
        });
    }
    let tokenizer = T5Tokenizer::bundled().map_err(|e| RunError::Invalid(e.to_string()))?;
    let data = DataSource::new(&config.data, config.seed, config.dataset.as_ref())?;
    let mut model = TinyPixelLlm::build_with(&config.model, config.seed, heads)?;
    let (weights, step) = resolve_checkpoint(checkpoint)?;
    load_params_file(&mut model, &weights)?;
    let vocab = model.vocab.clone();
    let builder = ExampleBuilder {
        tokenizer: &tokenizer,
        vocab: &vocab,
        max_target_tokens: config.tasks.max_target_tokens,
    };
    let e = &config.eval;

    let baseline_images = e.baseline_images.min(data.images(Split::Train));
    let baselines = Baselines::fit(&evaluation_examples(
        &data,
        &builder,
        Split::Train,
        baseline_images,
    )?);
    let validation_images = e.validation_images.min(data.images(Split::Validation));
    let validation = evaluation_examples(&data, &builder, Split::Validation, validation_images)?;
    let eval = evaluate(&model, &validation, &baselines, e.batch_size)?;
    std::fs::create_dir_all(out).map_err(|e| RunError::io(out, e))?;
    let referring_segmentation = match head_of_kind(config, "mask") {
        Some(head) => referring_segmentation(
            &model,
            &validation,
            head,
            &baselines,
            config,
            &out.join("masks.png"),
        )?,
        None => None,
    };

    let samples: Vec<Sample> = (0..validation_images)
        .map(|i| data.load(Split::Validation, i))
        .collect::<pixel_data::Result<_>>()?;
    let meteor = Meteor::default();
    let mut trace = CaptionSet::default();
    let mut examples = Vec::with_capacity(samples.len());
    for s in &samples {
        trace.add_reference(&s.image_id, &s.caption);
        examples.push(builder.trace_captioning(s)?);
    }
    let generated = generate_texts(&model, &examples, &builder, &tokenizer, config)?;
    for (s, text) in samples.iter().zip(generated) {
        trace.add_prediction(&s.image_id, text);
    }
    let trace_captions = trace.score(&meteor)?;

    let location_captions = if config.tasks.trains_location_captioning() {
        let mut regions = CaptionSet::default();
        let mut examples = Vec::new();
        for s in &samples {
            for (k, r) in s.regions.iter().enumerate() {
                regions.add_reference(&format!("{}#{k}", s.image_id), &r.caption);
            }
            examples.extend(builder.location_captioning(s)?);
        }
        let keys: Vec<String> = samples
            .iter()
            .flat_map(|s| (0..s.regions.len()).map(|k| format!("{}#{k}", s.image_id)))
            .collect();
        let generated = generate_texts(&model, &examples, &builder, &tokenizer, config)?;
        for (key, text) in keys.iter().zip(generated) {
            regions.add_prediction(key, text);
        }
        Some(regions.score(&meteor)?)
    } else {
        None
    };

    let dense_captioning = match head_of_kind(config, "detection") {
        Some(head) => dense_captioning(
            &model,
            &builder,
            &tokenizer,
            config,
            &samples,
            head,
            &meteor,
            &out.join("densecap.png"),
        )?,
        None => None,
    };

    let referring_attention = referring_attention(&model, &validation, e.batch_size)?;
    let rows = result_rows(
        &eval,
        &trace_captions,
        location_captions.as_ref(),
        referring_segmentation.as_ref(),
        dense_captioning.as_ref(),
    );
    let results = EvalResults {
        weights,
        step,
        data: data.describe(),
        validation_images,
        baseline_images,
        eval,
        trace_captions,
        location_captions,
        referring_segmentation,
        dense_captioning,
        referring_attention,
        rows,
        wall_s: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_vec_pretty(&results).map_err(|e| RunError::Invalid(e.to_string()))?;
    write_atomic(&out.join("results.json"), &json)?;
    write_atomic(
        &out.join("results.md"),
        results_markdown(&results).as_bytes(),
    )?;
    Ok(results)
}

/// The name of the first configured head of `kind`.
fn head_of_kind<'c>(config: &'c ExperimentConfig, kind: &str) -> Option<&'c str> {
    config
        .model
        .heads
        .iter()
        .find(|h| h.kind == kind)
        .map(HeadConfig::name)
}

/// What head `name` read off one example, from all heads' predictions for it.
fn prediction_of(heads: Vec<HeadPrediction>, name: &str) -> Result<HeadPrediction> {
    heads
        .into_iter()
        .find(|h| h.head == name)
        .ok_or_else(|| RunError::Invalid(format!("head \"{name}\" gave no prediction")))
}

/// Referring segmentation: the mask head's mask for each validation expression whose object
/// has a mask, from the decode that gives the referring boxes (the mask is prompted by the
/// predicted box); `None` when no object has a mask (dataset files without masks). The first
/// `eval.sample_images` masks are drawn into `png` over their images, with the true box.
fn referring_segmentation(
    model: &impl Predictor,
    validation: &[Example],
    mask_head: &str,
    baselines: &Baselines,
    config: &ExperimentConfig,
    png: &Path,
) -> Result<Option<SegmentationReport>> {
    let batch_size = config.eval.batch_size;
    let referring: Vec<Example> = validation
        .iter()
        .filter(|e| e.task == TaskKind::ReferringLocalization && e.target_mask.is_some())
        .cloned()
        .collect();
    if referring.is_empty() {
        return Ok(None);
    }
    let mut predicted = Vec::with_capacity(referring.len());
    for chunk in referring.chunks(batch_size.max(1)) {
        for heads in referring_head_predictions(model, chunk)? {
            let mask = prediction_of(heads, mask_head)?
                .mask
                .ok_or_else(|| RunError::Invalid(format!("head \"{mask_head}\" gave no mask")))?;
            predicted.push(mask);
        }
    }
    let targets: Vec<GrayImage> = referring
        .iter()
        .filter_map(|e| e.target_mask.clone())
        .collect();
    referring
        .iter()
        .zip(&predicted)
        .take(config.eval.sample_images as usize)
        .enumerate()
        .map(|(i, (example, mask))| {
            // Dark shows on every ShapesLN colour; a palette colour would vanish on its twin.
            let image = mask_overlay(&example.image, mask, [0, 0, 0], 0.55)?;
            let truth = example
                .target_box
                .map(|b| (b.to_array(), "truth".to_string(), GREY));
            Ok(SamplePanel {
                image,
                words: Vec::new(),
                boxes: truth.into_iter().collect(),
                title: format!("expr {i}: mask dark, truth box"),
            })
        })
        .collect::<std::result::Result<Vec<_>, RenderError>>()
        .and_then(|panels| samples_png(png, &panels))
        .map_err(|e| RunError::Invalid(format!("{}: {e}", png.display())))?;
    segmentation_report(&predicted, &targets, baselines.referring_box).map(Some)
}

/// Dense captioning as the paper does it: each image's detection proposals (the best
/// `eval.densecap_max_proposals`) become location prompts, each prompt is captioned by greedy
/// generation, and the captioned boxes are scored against the image's region captions. The
/// first `eval.sample_images` images are drawn into `png` with their captioned boxes.
#[allow(clippy::too_many_arguments)]
fn dense_captioning(
    model: &impl Predictor,
    builder: &ExampleBuilder,
    tokenizer: &T5Tokenizer,
    config: &ExperimentConfig,
    samples: &[Sample],
    detection_head: &str,
    meteor: &Meteor,
    png: &Path,
) -> Result<Option<DenseCaptioningReport>> {
    let max = config.eval.densecap_max_proposals;
    // The detection head reads only the image, so any example of an image gives its proposals.
    let carriers: Vec<Example> = samples
        .iter()
        .map(|s| builder.trace_captioning(s))
        .collect::<pixel_model::Result<_>>()?;
    let mut proposals: Vec<Vec<Scored>> = Vec::with_capacity(samples.len());
    for chunk in carriers.chunks(config.eval.batch_size.max(1)) {
        for heads in model.teacher_forced(&model.batch(chunk)?)?.heads {
            let mut found = prediction_of(heads, detection_head)?.proposals;
            found.truncate(max);
            proposals.push(found);
        }
    }
    let prompts: Vec<Example> = samples
        .iter()
        .zip(&proposals)
        .flat_map(|(s, found)| builder.location_prompts(&s.image, found))
        .collect();
    let mut captions = generate_texts(model, &prompts, builder, tokenizer, config)?.into_iter();
    let detections: Vec<Vec<Detection>> = proposals
        .into_iter()
        .map(|found| {
            found
                .into_iter()
                .zip(captions.by_ref())
                .map(|(proposal, caption)| Detection { proposal, caption })
                .collect()
        })
        .collect();
    let panels: Vec<SamplePanel> = samples
        .iter()
        .zip(&detections)
        .take(config.eval.sample_images as usize)
        .map(|(sample, found)| SamplePanel {
            image: sample.image.clone(),
            words: Vec::new(),
            boxes: found
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let label = format!("{:.2} {}", d.proposal.score, d.caption);
                    (d.proposal.bbox.to_array(), label, palette(i))
                })
                .collect(),
            title: format!("{}: {} regions", sample.image_id, sample.regions.len()),
        })
        .collect();
    samples_png(png, &panels).map_err(|e| RunError::Invalid(format!("{}: {e}", png.display())))?;
    dense_captioning_report(samples, &detections, max, meteor)
}

/// References and predictions keyed by image (or region): an image with several narratives
/// gets all their captions as references and its first generation as prediction.
#[derive(Default)]
struct CaptionSet {
    refs: References,
    preds: Predictions,
}

impl CaptionSet {
    fn add_reference(&mut self, key: &str, caption: &str) {
        self.refs
            .entry(key.to_string())
            .or_default()
            .push(caption.to_string());
    }

    fn add_prediction(&mut self, key: &str, text: String) {
        self.preds.entry(key.to_string()).or_insert(text);
    }

    fn score(&self, meteor: &Meteor) -> Result<CaptionScores> {
        score_captions(&self.refs, &self.preds, meteor)
            .map_err(|e| RunError::Invalid(format!("caption metrics: {e}")))
    }
}

/// Greedy generations of `examples`, decoded to text up to the first EOS.
fn generate_texts(
    model: &impl Predictor,
    examples: &[Example],
    builder: &ExampleBuilder,
    tokenizer: &T5Tokenizer,
    config: &ExperimentConfig,
) -> Result<Vec<String>> {
    let mut texts = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(config.eval.batch_size.max(1)) {
        for g in model.generate(&model.batch(chunk)?, config.eval.max_new_tokens)? {
            let ids: Vec<usize> = g
                .ids
                .iter()
                .map(|&id| builder.vocab.to_t5(id))
                .take_while(|&id| id != EOS_ID && id != PAD_ID)
                .collect();
            texts.push(
                tokenizer
                    .decode(&ids)
                    .map_err(|e| RunError::Invalid(e.to_string()))?,
            );
        }
    }
    Ok(texts)
}

fn result_rows(
    eval: &EvalReport,
    trace: &CaptionScores,
    location: Option<&CaptionScores>,
    segmentation: Option<&SegmentationReport>,
    dense: Option<&DenseCaptioningReport>,
) -> Vec<ResultRow> {
    let row = |task: &str, metric: &str, value: f64, baseline: Option<f64>| ResultRow {
        task: task.into(),
        metric: metric.into(),
        value,
        baseline,
    };
    let r = &eval.referring_localization;
    let t = &eval.trace_captioning;
    let mut rows = vec![
        row(
            "referring localization",
            "Acc@0.5",
            r.acc50.into(),
            Some(r.baseline_acc50.into()),
        ),
        row(
            "referring localization",
            "mIoU",
            r.miou.into(),
            Some(r.baseline_miou.into()),
        ),
        row(
            "trace captioning",
            "point L1 (lower is better)",
            t.point_l1.into(),
            Some(t.baseline_point_l1.into()),
        ),
        row(
            "trace captioning",
            "token accuracy",
            t.token_accuracy.into(),
            None,
        ),
    ];
    for (n, acc) in &r.acc50_by_objects {
        let metric = format!("Acc@0.5, images with {n} object(s)");
        rows.push(row("referring localization", &metric, (*acc).into(), None));
    }
    for (n, share) in &r.named_object_by_objects {
        let metric = format!("box closest to the named object, {n} object(s)");
        rows.push(row(
            "referring localization",
            &metric,
            (*share).into(),
            None,
        ));
    }
    if let Some(s) = segmentation {
        let task = "referring segmentation";
        rows.push(row(task, "cIoU", s.ciou, Some(s.baseline_ciou)));
        rows.push(row(task, "gIoU", s.giou, Some(s.baseline_giou)));
        rows.push(row(task, "mask Acc@0.5", s.acc50, Some(s.baseline_acc50)));
    }
    let mut captions = |task: &str, s: &CaptionScores| {
        for (k, b) in s.bleu.iter().enumerate() {
            rows.push(row(task, &format!("BLEU-{}", k + 1), *b, None));
        }
        rows.push(row(task, "METEOR", s.meteor, None));
        rows.push(row(task, "ROUGE-L", s.rouge_l, None));
        rows.push(row(task, "CIDEr-D", s.cider, None));
    };
    captions("trace captioning", trace);
    if let Some(s) = location {
        captions("location captioning", s);
    }
    if let Some(d) = dense {
        rows.push(row("dense captioning", "mAP", d.map, None));
        rows.push(row(
            "dense captioning",
            "detection mAP",
            d.map_detection,
            None,
        ));
    }
    rows
}

/// `results.md`: what was evaluated, then one table row per metric.
pub fn results_markdown(results: &EvalResults) -> String {
    let step = results
        .step
        .map(|s| format!(" (step {s})"))
        .unwrap_or_default();
    let mut text = format!(
        "# Evaluation\n\n- weights: `{}`{step}\n- data: {}\n- validation images: {}; baselines \
         are the best constant predictors on {} training images\n- {} referring expressions, {} \
         caption tokens\n",
        results.weights.display(),
        results.data,
        results.validation_images,
        results.baseline_images,
        results.eval.referring_localization.count,
        results.eval.trace_captioning.tokens,
    );
    if let Some(s) = &results.referring_segmentation {
        text.push_str(&format!(
            "- {} referring masks from the mask head; its baseline is the constant box filled \
             as a mask\n",
            s.count
        ));
    }
    if let Some(d) = &results.dense_captioning {
        text.push_str(&format!(
            "- dense captioning: {} proposals (at most {} an image) captioned on {} images \
             against {} regions, PixelLLM's protocol (IoU 0.3..0.7 x METEOR 0..0.25)\n",
            d.proposals, d.max_proposals, d.images, d.regions
        ));
    }
    text.push_str("\n| task | metric | value | baseline |\n| --- | --- | --- | --- |\n");
    for r in &results.rows {
        let baseline = r
            .baseline
            .map(|b| format!("{b:.4}"))
            .unwrap_or_else(|| "—".into());
        text.push_str(&format!(
            "| {} | {} | {:.4} | {baseline} |\n",
            r.task, r.metric, r.value
        ));
    }
    text.push_str(
        "\nCaption metrics: greedy generations against the reference captions, PTB-tokenized, \
         BLEU/ROUGE-L/CIDEr-D as pycocoevalcap, METEOR native (exact and stem matching).\n",
    );
    text.push_str(&head_metrics_markdown(&results.eval.heads));
    if let Some(a) = &results.referring_attention {
        text.push_str(&binding_markdown(a));
    }
    text
}

/// The heads' own metrics as a table, one row per head and metric; nothing when no head has
/// any.
fn head_metrics_markdown(heads: &HeadMetrics) -> String {
    if heads.is_empty() {
        return String::new();
    }
    let mut text =
        "\nThe heads' own metrics (`OutputHead::metrics`), on the referring expressions \
                    and captions scored above:\n\n| head | metric | value |\n| --- | --- | --- |\n"
            .to_string();
    for (head, metrics) in heads {
        for (metric, value) in metrics {
            text.push_str(&format!("| {head} | {metric} | {value:.4} |\n"));
        }
    }
    text
}

/// The cross-attention table: one row per decoder block and head, then uniform attention.
fn binding_markdown(report: &BindingReport) -> String {
    let mut text = format!(
        "\nDecoder cross-attention where the box is regressed, {} expressions in images with \
         two or more objects: a decoder that reads the named object puts more on it than \
         uniform attention would.\n\n| block | head | named object | other objects | \
         background | text prompt |\n| --- | --- | --- | --- | --- | --- |\n",
        report.expressions
    );
    let row = |block: &str, head: &str, s: &RegionShares| {
        format!(
            "| {block} | {head} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            s.named, s.others, s.background, s.text
        )
    };
    for (block, heads) in report.attention.iter().enumerate() {
        for (head, s) in heads.iter().enumerate() {
            text.push_str(&row(&block.to_string(), &head.to_string(), s));
        }
    }
    text.push_str(&row("uniform", "—", &report.uniform));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_model::eval::{ReferringReport, TraceReport};

    #[test]
    fn a_flattened_report_reads_back_with_its_integer_keys() {
        #[derive(Serialize, Deserialize)]
        struct Flat {
            #[serde(flatten)]
            eval: EvalReport,
        }
        let report = EvalReport {
            referring_localization: ReferringReport {
                acc50: 0.5,
                miou: 0.4,
                baseline_acc50: 0.3,
                baseline_miou: 0.2,
                count: 4,
                acc50_by_objects: [(1, 1.0), (3, 0.25)].into(),
                acc50_by_expression_tokens: [(1, 0.5), (2, 0.5)].into(),
                named_object_by_objects: [(1, 1.0), (3, 0.5)].into(),
            },
            trace_captioning: TraceReport {
                point_l1: 0.1,
                baseline_point_l1: 0.2,
                token_accuracy: 0.5,
                tokens: 10,
            },
            heads: [(
                "circle".to_string(),
                [("centre_error_px".to_string(), 2.5)].into(),
            )]
            .into(),
        };
        let json = serde_json::to_string(&Flat {
            eval: report.clone(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let back: Flat = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!(back.eval, report);
    }

    #[test]
    fn head_metrics_are_left_out_when_no_head_has_any_and_tabled_otherwise() {
        let mut heads = HeadMetrics::new();
        assert_eq!(head_metrics_markdown(&heads), "");
        let json = serde_json::to_value(heads_only(heads.clone())).unwrap();
        assert!(json.get("heads").is_none(), "{json}");
        heads.insert(
            "circle".into(),
            [
                ("centre_error_px".into(), 2.5),
                ("radius_error_px".into(), 1.0),
            ]
            .into(),
        );
        let table = head_metrics_markdown(&heads);
        assert!(
            table.contains("| circle | centre_error_px | 2.5000 |"),
            "{table}"
        );
        assert!(
            table.contains("| circle | radius_error_px | 1.0000 |"),
            "{table}"
        );
        let json = serde_json::to_value(heads_only(heads)).unwrap();
        assert_eq!(json["heads"]["circle"]["radius_error_px"], 1.0);
    }

    /// A report with nothing but `heads`.
    fn heads_only(heads: HeadMetrics) -> EvalReport {
        EvalReport {
            referring_localization: ReferringReport {
                acc50: 0.0,
                miou: 0.0,
                baseline_acc50: 0.0,
                baseline_miou: 0.0,
                count: 0,
                acc50_by_objects: Default::default(),
                acc50_by_expression_tokens: Default::default(),
                named_object_by_objects: Default::default(),
            },
            trace_captioning: TraceReport {
                point_l1: 0.0,
                baseline_point_l1: 0.0,
                token_accuracy: 0.0,
                tokens: 0,
            },
            heads,
        }
    }

    #[test]
    fn checkpoint_folder_names_its_step_and_missing_checkpoint_says_what_to_give() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ckpt = dir.path().join("checkpoints/step-0000042");
        std::fs::create_dir_all(&ckpt).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(ckpt.join("model.safetensors"), b"").unwrap_or_else(|e| panic!("{e}"));
        let (weights, step) = resolve_checkpoint(&ckpt).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((weights, step), (ckpt.join("model.safetensors"), Some(42)));
        let err = resolve_checkpoint(&dir.path().join("nowhere"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("nowhere") && err.contains("help"), "{err}");
    }
}
