//! The main job: train a tiny PixelLLM on ShapesLN, evaluate it, and write what a person looks
//! at (`metrics.json`, `loss.png`, `samples.png`) into the run folder.
use crate::error::{Result, RunError};
use crate::experiment::ExperimentConfig;
use crate::pretrain::{install_lm, pretrained_lm, PretrainReport};
use crate::pretrain_eva::{pretrained_eva, EvaPretrainReport};
use crate::pretrain_sam::{pretrained_sam, SamPretrainReport};
use pixel_core::checkpoint::write_atomic;
use pixel_data::data_source::{DataSource, SampleSource};
use pixel_data::shapes_ln::{Sample, Split};
use pixel_lm::tokenizer::{T5Tokenizer, EOS_ID, PAD_ID};
use pixel_model::eval::{evaluate, referring_boxes, Baselines, EvalReport, Predictor};
use pixel_model::model::{PixelDims, PixelTiny, TinyHeadRegistry, TinyPixelLlm, VocabMap};
use pixel_model::task_mix::{evaluation_examples, training_examples};
use pixel_model::tasks::{Example, ExampleBuilder};
use pixel_render::{loss_curves_png, samples_png, SamplePanel, Scale};
use pixel_train::{read_log, train, LogLine, LoggedLoss, RunDir, TrainReport};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoMetrics {
    #[serde(flatten)]
    pub eval: EvalReport,
    pub train: TrainSummary,
    /// The LM's denoising pretraining, when the config has `[pretrain]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain: Option<PretrainReport>,
    /// EVA02's region-phrase pretraining, when the config has `[pretrain_eva]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain_eva: Option<EvaPretrainReport>,
    /// SAM's promptable-segmentation pretraining, when the config has `[pretrain_sam]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain_sam: Option<SamPretrainReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub final_loss: Option<f32>,
    pub train_wall_s: f64,
    pub eval_wall_s: f64,
    pub parameters: usize,
    pub trainable_parameters: usize,
}

/// Runs the demo into `out`; with `resume`, continues from the run's last checkpoint.
pub fn run_demo(
    config: &ExperimentConfig,
    out: &Path,
    resume: bool,
    heads: &TinyHeadRegistry,
) -> Result<DemoMetrics> {
    let tokenizer = T5Tokenizer::bundled().map_err(|e| RunError::Invalid(e.to_string()))?;
    let data = DataSource::new(&config.data, config.seed, config.dataset.as_ref())?;
    let mut model = TinyPixelLlm::build_with(&config.model, config.model_seed(), heads)?;
    let pretrain = pretrain_language_model(config, &mut model, &data, &tokenizer)?;
    let (pretrain_eva, pretrain_sam) =
        pretrain_image_encoders(config, &mut model, &data, &tokenizer)?;
    let vocab = model.vocab.clone();
    let builder = ExampleBuilder {
        tokenizer: &tokenizer,
        vocab: &vocab,
        max_target_tokens: config.tasks.max_target_tokens,
    };
    let trainable = config.model.trainable();
    let run = RunDir::new(out);
    keep_run_config(config, out, resume)?;
    data.write_report(&out.join("data_report.json"))?;
    let report: TrainReport = train(
        &mut model,
        &trainable,
        &config.train,
        &run,
        resume,
        |step| {
            Ok(training_examples(
                &data,
                &builder,
                &config.tasks,
                config.train.batch_size,
                config.train.seed,
                step,
            )?)
        },
    )?;

    let eval_started = std::time::Instant::now();
    let baseline_examples =
        evaluation_examples(&data, &builder, Split::Train, config.eval.baseline_images)?;
    let baselines = Baselines::fit(&baseline_examples);
    let validation = evaluation_examples(
        &data,
        &builder,
        Split::Validation,
        config.eval.validation_images,
    )?;
    let eval = evaluate(&model, &validation, &baselines, config.eval.batch_size)?;
    write_samples_png(
        &model,
        &data,
        &builder,
        &tokenizer,
        config,
        &out.join("samples.png"),
    )?;
    write_loss_png(&run, &out.join("loss.png"))?;
    let (parameters, trainable_parameters) = model.parameter_counts(&trainable);
    let metrics = DemoMetrics {
        eval,
        train: TrainSummary {
            steps: config.train.steps,
            final_loss: report.last.map(|l| l.loss),
            train_wall_s: report.wall_s,
            eval_wall_s: eval_started.elapsed().as_secs_f64(),
            parameters,
            trainable_parameters,
        },
        pretrain,
        pretrain_eva,
        pretrain_sam,
    };
    let json = serde_json::to_vec_pretty(&metrics).map_err(|e| RunError::Invalid(e.to_string()))?;
    write_atomic(&out.join("metrics.json"), &json)?;
    Ok(metrics)
}

/// Keys a resumed run may change: they change what is logged or evaluated, not the weights.
const RESUMABLE_CHANGES: &[&str] = &["eval.", "train.log_every", "train.checkpoint_every"];

/// Keeps the resolved config in `out/config.json`. A resumed run must have the config it was
/// started with, but for [`RESUMABLE_CHANGES`]; a change to anything else is an error naming the
/// first key that differs.
fn keep_run_config(config: &ExperimentConfig, out: &Path, resume: bool) -> Result<()> {
    let path = out.join("config.json");
    let current = serde_json::to_value(config).map_err(|e| RunError::Invalid(e.to_string()))?;
    if resume && path.exists() {
        let text = pixel_core::text::read_text(&path).map_err(|e| RunError::io(&path, e))?;
        // Through `ExperimentConfig`, so both sides turn f32s into JSON numbers the same way.
        let stored: ExperimentConfig =
            serde_json::from_str(&text).map_err(|e| RunError::Format {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let stored = serde_json::to_value(&stored).map_err(|e| RunError::Invalid(e.to_string()))?;
        let mut differences = Vec::new();
        differing_keys("", &stored, &current, &mut differences);
        if let Some((key, was, now)) = differences
            .into_iter()
            .find(|(key, _, _)| !RESUMABLE_CHANGES.iter().any(|p| key.starts_with(p)))
        {
            return Err(RunError::Config {
                key: key.clone(),
                message: format!(
                    "the run in {} was started with {key} = {was}, this config has {now}; a resumed run keeps what changes its result (its config is {}): train into another folder, or resume with that value",
                    out.display(),
                    path.display()
                ),
            });
        }
    }
    std::fs::create_dir_all(out).map_err(|e| RunError::io(out, e))?;
    // The struct's own field order, as `pixel ablate` writes it.
    let json =
        serde_json::to_string_pretty(config).map_err(|e| RunError::Invalid(e.to_string()))?;
    Ok(write_atomic(&path, json.as_bytes())?)
}

/// Every leaf key path where `a` and `b` differ, with both values (`absent` where missing).
fn differing_keys(
    prefix: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<(String, String, String)>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                let absent = Value::String("absent".into());
                differing_keys(
                    &path,
                    x.get(key).unwrap_or(&absent),
                    y.get(key).unwrap_or(&absent),
                    out,
                );
            }
        }
        _ if a != b => out.push((prefix.to_string(), a.to_string(), b.to_string())),
        _ => {}
    }
}

/// With `[pretrain]`, replaces `model`'s language model by the pretrained one (from the cache,
/// or pretrained now and cached).
pub fn pretrain_language_model(
    config: &ExperimentConfig,
    model: &mut TinyPixelLlm,
    data: &impl SampleSource,
    tokenizer: &T5Tokenizer,
) -> Result<Option<PretrainReport>> {
    let Some(pretrain) = &config.pretrain else {
        return Ok(None);
    };
    let (lm, report) = pretrained_lm::<PixelTiny>(
        pretrain,
        data,
        &config.data_key(),
        tokenizer,
        &model.vocab,
        config.model_seed(),
    )?;
    install_lm(model, lm);
    Ok(Some(report))
}

/// With `[pretrain_eva]` / `[pretrain_sam]`, replaces `model`'s EVA02 / SAM image encoder by
/// the pretrained one (from the cache, or pretrained now and cached).
pub fn pretrain_image_encoders(
    config: &ExperimentConfig,
    model: &mut TinyPixelLlm,
    data: &impl SampleSource,
    tokenizer: &T5Tokenizer,
) -> Result<(Option<EvaPretrainReport>, Option<SamPretrainReport>)> {
    let seed = config.model_seed();
    let eva = match &config.pretrain_eva {
        Some(pretrain) => {
            let (eva, report) = pretrained_eva::<PixelTiny>(
                pretrain,
                data,
                &config.data_key(),
                tokenizer,
                &model.vocab,
                seed,
            )?;
            model.image_encoder.eva = eva;
            Some(report)
        }
        None => None,
    };
    let sam = match &config.pretrain_sam {
        Some(pretrain) => {
            let (sam, report) =
                pretrained_sam::<PixelTiny>(pretrain, data, &config.data_key(), seed)?;
            model.image_encoder.sam = sam;
            Some(report)
        }
        None => None,
    };
    Ok((eva, sam))
}

/// The cache folder of each pretraining stage a config asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainingDirs {
    pub lm: Option<PathBuf>,
    pub eva: Option<PathBuf>,
    pub sam: Option<PathBuf>,
}

impl PretrainingDirs {
    /// The folders of `config`'s stages for a model with `vocab` (the LM's and EVA02's keys
    /// cover the vocabulary, which a head may extend): two runs with the same folder share
    /// that stage's pretraining, whatever else differs.
    pub fn of(config: &ExperimentConfig, vocab: &VocabMap) -> Self {
        let (seed, data) = (config.model_seed(), config.data_key());
        let preset = PixelTiny::NAME;
        Self {
            lm: config
                .pretrain
                .as_ref()
                .map(|p| crate::pretrain::cache_dir(p, seed, preset, vocab, &data)),
            eva: config
                .pretrain_eva
                .as_ref()
                .map(|p| crate::pretrain_eva::cache_dir(p, seed, preset, vocab, &data)),
            sam: config
                .pretrain_sam
                .as_ref()
                .map(|p| crate::pretrain_sam::cache_dir(p, seed, preset, &data)),
        }
    }
}

fn write_loss_png(run: &RunDir, path: &Path) -> Result<()> {
    let series = loss_series(&read_log(&run.metrics_log())?);
    let series: Vec<(&str, &[(f64, f64)])> = series
        .iter()
        .map(|(name, points)| (name.as_str(), points.as_slice()))
        .collect();
    loss_curves_png(
        path,
        &series,
        "PixelLLM tiny on ShapesLN: training loss",
        Scale::Log,
    )
    .map_err(|e| RunError::Invalid(format!("cannot write {}: {e}", path.display())))
}

/// The curves of `loss.png`: the total, then each part under its own name (`text`, `point`,
/// `point/referring_l1`, ...), as it enters the total and, where a weight scales it, as its
/// loss function returns it. A log axis cannot show zeros (a text-coordinate head has no loss of
/// its own; a ramp starts at 0), so only positive values are drawn and empty curves left out.
fn loss_series(log: &[LogLine]) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = vec![(
        "total".into(),
        log.iter().map(|l| (l.step as f64, l.loss as f64)).collect(),
    )];
    let mut names: Vec<&str> = Vec::new();
    for line in log {
        for part in &line.losses {
            if !names.contains(&part.name.as_str()) {
                names.push(&part.name);
            }
        }
    }
    for name in names {
        let curve = |value: fn(&LoggedLoss) -> f32| -> Vec<(f64, f64)> {
            log.iter()
                .filter_map(|l| l.part(name).map(|p| (l.step as f64, value(p) as f64)))
                .filter(|(_, v)| v.is_finite() && *v > 0.0)
                .collect()
        };
        let weighted = curve(|p| p.weighted);
        let unweighted = curve(|p| p.unweighted);
        let scaled = log
            .iter()
            .filter_map(|l| l.part(name))
            .any(|p| p.weight != 1.0);
        if scaled {
            series.push((format!("{name}, weighted"), weighted));
            series.push((format!("{name}, unweighted"), unweighted));
        } else {
            series.push((name.to_string(), weighted));
        }
    }
    series.retain(|(_, points)| !points.is_empty());
    series
}

/// Generated captions with one dot per word, and referring boxes (green = truth, red =
/// predicted), for the first validation images.
fn write_samples_png(
    model: &impl Predictor,
    data: &impl SampleSource,
    builder: &ExampleBuilder,
    tokenizer: &T5Tokenizer,
    config: &ExperimentConfig,
    path: &Path,
) -> Result<()> {
    let samples: Vec<Sample> = (0..config
        .eval
        .sample_images
        .min(data.images(Split::Validation)))
        .map(|i| data.load(Split::Validation, i))
        .collect::<pixel_data::Result<_>>()?;
    let captions: Vec<Example> = samples
        .iter()
        .map(|s| builder.trace_captioning(s))
        .collect::<pixel_model::Result<_>>()?;
    let generated = model.generate(&model.batch(&captions)?, config.eval.max_new_tokens)?;
    let mut panels = Vec::new();
    for (sample, generation) in samples.iter().zip(&generated) {
        let t5_ids: Vec<usize> = generation
            .ids
            .iter()
            .map(|&id| builder.vocab.to_t5(id))
            .collect();
        let words = words_with_points(tokenizer, &t5_ids, &generation.corners)?;
        let mut boxes = Vec::new();
        let referring = builder.referring_localization(sample)?;
        if let Some(first) = referring.first() {
            let predicted = referring_boxes(model, std::slice::from_ref(first))?[0];
            let text = sample.referring[0].text.clone();
            if let Some(truth) = first.target_box {
                boxes.push((truth.to_array(), format!("gt: {text}"), [0, 160, 0]));
            }
            boxes.push((predicted.to_array(), "pred".to_string(), [220, 0, 0]));
        }
        panels.push(SamplePanel {
            image: sample.image.clone(),
            words,
            boxes,
            title: sample.image_id.clone(),
        });
    }
    samples_png(path, &panels)
        .map_err(|e| RunError::Invalid(format!("cannot write {}: {e}", path.display())))
}

/// Groups generated tokens into words; each word's point is the centre of its first token's
/// predicted box. A token starts a new word when decoding the prefix up to it adds a word.
pub fn words_with_points(
    tokenizer: &T5Tokenizer,
    ids: &[usize],
    corners: &[[f32; 4]],
) -> Result<Vec<(String, Option<[f32; 2]>)>> {
    let end = ids
        .iter()
        .position(|&id| id == EOS_ID || id == PAD_ID)
        .unwrap_or(ids.len());
    let text = tokenizer
        .decode(&ids[..end])
        .map_err(|e| RunError::Invalid(e.to_string()))?;
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut points: Vec<Option<[f32; 2]>> = vec![None; words.len()];
    for i in 0..end {
        let prefix = tokenizer
            .decode(&ids[..=i])
            .map_err(|e| RunError::Invalid(e.to_string()))?;
        let word = prefix.split_whitespace().count();
        if word >= 1 && word <= points.len() && points[word - 1].is_none() {
            let c = corners[i];
            points[word - 1] = Some([(c[0] + c[2]) / 2.0, (c[1] + c[3]) / 2.0]);
        }
    }
    Ok(words.into_iter().map(String::from).zip(points).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_train::LossPart;

    #[test]
    fn the_loss_chart_draws_every_part_under_its_name_weighted_and_unweighted() {
        let line = |step: u64, ramp: f32| {
            let parts = [
                LossPart::new("text", 2.0, 1.0),
                LossPart::new("point/pixel_l1", 4.0, 0.1 * ramp),
                LossPart::new("point/referring_l1", 0.5, 5.0 * ramp),
                LossPart::new("circle", 0.3, 1.0),
            ];
            LogLine {
                step,
                loss: parts.iter().map(LossPart::weighted).sum(),
                losses: parts.iter().map(LoggedLoss::from).collect(),
                lr: 1e-3,
                grad_norm: 1.0,
                elapsed_s: 0.0,
            }
        };
        let series = loss_series(&[line(0, 0.0), line(10, 0.5)]);
        let names: Vec<&str> = series.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "total",
                "text",
                "point/pixel_l1, weighted",
                "point/pixel_l1, unweighted",
                "point/referring_l1, weighted",
                "point/referring_l1, unweighted",
                "circle",
            ]
        );
        // The ramp's zero at step 0 is left out of the weighted curve (a log axis).
        assert_eq!(series[4].1, [(10.0, 1.25)]);
        assert_eq!(series[5].1, [(0.0, 0.5), (10.0, 0.5)]);
        let dir = tempfile::tempdir().unwrap();
        let curves: Vec<(&str, &[(f64, f64)])> = series
            .iter()
            .map(|(n, p)| (n.as_str(), p.as_slice()))
            .collect();
        loss_curves_png(dir.path().join("loss.png"), &curves, "loss", Scale::Log).unwrap();
    }

    #[test]
    fn a_resumed_run_keeps_the_config_it_was_started_with() {
        let dir = tempfile::tempdir().unwrap();
        let config = ExperimentConfig::builtin().unwrap();
        keep_run_config(&config, dir.path(), false).unwrap();
        // What only changes the logging and the evaluation may differ.
        let mut changed = config.clone();
        changed.eval.validation_images += 1;
        changed.train.log_every = 1;
        keep_run_config(&changed, dir.path(), true).unwrap();
        for (edit, key) in [
            (
                Box::new(|c: &mut ExperimentConfig| c.train.peak_lr *= 2.0)
                    as Box<dyn Fn(&mut ExperimentConfig)>,
                "train.peak_lr",
            ),
            (Box::new(|c: &mut ExperimentConfig| c.seed += 1), "seed"),
            (
                Box::new(|c: &mut ExperimentConfig| c.train.steps += 1),
                "train.steps",
            ),
            (
                Box::new(|c: &mut ExperimentConfig| c.model.heads[0].weight = 1.0),
                "model.heads",
            ),
        ] {
            let mut other = config.clone();
            edit(&mut other);
            let err = keep_run_config(&other, dir.path(), true)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(key) && err.contains("was started with"),
                "{err}"
            );
            // A fresh run in the folder may change anything.
            keep_run_config(&other, dir.path(), false).unwrap();
            keep_run_config(&config, dir.path(), false).unwrap();
        }
    }
}
