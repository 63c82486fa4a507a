//! The main job: train a tiny PixelLLM on ShapesLN, evaluate it, and write what a person looks
//! at (`metrics.json`, `loss.png`, `samples.png`) into the run folder.
use crate::error::{Result, TaskError};
use crate::eval::{evaluate, referring_boxes, Baselines, EvalReport, Predictor};
use crate::model::{ModelConfig, PixelTiny, TinyHeadRegistry, TinyPixelLlm};
use crate::pretrain::{install_lm, pretrained_lm, PretrainConfig, PretrainReport};
use crate::pretrain_eva::{pretrained_eva, EvaPretrainConfig, EvaPretrainReport};
use crate::pretrain_sam::{pretrained_sam, SamPretrainConfig, SamPretrainReport};
use crate::tasks::{Example, ExampleBuilder};
use pixel_core::checkpoint::write_atomic;
use pixel_data::data_source::{DataSource, DatasetConfig, SampleSource};
use pixel_data::shapes_ln::{Sample, ShapesLnConfig, Split};
use pixel_lm::tokenizer::{T5Tokenizer, EOS_ID, PAD_ID};
use pixel_render::{loss_curves_png, samples_png, SamplePanel, Scale};
use pixel_train::{read_log, train, LoggedLoss, RunDir, TrainConfig, TrainReport};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// An experiment, one TOML file (`configs/*.toml`): data, model, tasks, training and evaluation.
/// `pixel demo` runs it, and `pixel eval`, `pixel ablate` and `pixel grads` read it; the built-in
/// one is [`DEFAULT_DEMO_CONFIG`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    pub seed: u64,
    #[serde(default)]
    pub data: ShapesLnConfig,
    pub model: ModelConfig,
    pub tasks: TaskMix,
    pub train: TrainConfig,
    pub eval: EvalConfig,
    /// Read samples from files instead of the generator (`data` then sets only the image size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetConfig>,
    /// Seeds the model's initialisation (and its LM pretraining) instead of `seed`, which then
    /// seeds only the data: an ablation varies this over seeds and keeps one validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_seed: Option<u64>,
    /// Pretrain the language model by span corruption before training (`crate::pretrain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain: Option<PretrainConfig>,
    /// Pretrain EVA02 by region-phrase alignment before training (`crate::pretrain_eva`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain_eva: Option<EvaPretrainConfig>,
    /// Pretrain SAM's image encoder by promptable segmentation before training
    /// (`crate::pretrain_sam`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain_sam: Option<SamPretrainConfig>,
}

/// How often each task is drawn when filling a training batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMix {
    /// The tasks' shares (finite, >= 0, not all 0).
    #[serde(deserialize_with = "pixel_core::config::range::non_negative")]
    pub trace_captioning: f32,
    #[serde(deserialize_with = "pixel_core::config::range::non_negative")]
    pub referring_localization: f32,
    #[serde(deserialize_with = "pixel_core::config::range::non_negative")]
    pub location_captioning: f32,
    /// Captions are cut to this many tokens (EOS included); at least 2.
    #[serde(deserialize_with = "at_least_two")]
    pub max_target_tokens: usize,
    /// Referring examples are drawn only from images with at least this many objects (their
    /// regions, as evaluation counts them): 1, the default, takes any image; 2 spends the
    /// referring share on expressions that must be bound to one of several objects.
    #[serde(
        default = "one_object",
        deserialize_with = "pixel_core::config::range::count"
    )]
    pub referring_min_objects: usize,
    /// A curriculum: from each entry's `from_step` on (increasing), its shares replace the
    /// ones above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<LaterTaskMix>,
}

/// Task shares that take over from a step on (`[[tasks.schedule]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaterTaskMix {
    pub from_step: u64,
    #[serde(deserialize_with = "pixel_core::config::range::non_negative")]
    pub trace_captioning: f32,
    #[serde(deserialize_with = "pixel_core::config::range::non_negative")]
    pub referring_localization: f32,
    #[serde(deserialize_with = "pixel_core::config::range::non_negative")]
    pub location_captioning: f32,
    /// As [`TaskMix::referring_min_objects`], from `from_step` on.
    #[serde(
        default = "one_object",
        deserialize_with = "pixel_core::config::range::count"
    )]
    pub referring_min_objects: usize,
}

fn one_object() -> usize {
    1
}

impl TaskMix {
    /// The schedule entry in force at `step`; `None` before the first.
    fn later_at(&self, step: u64) -> Option<&LaterTaskMix> {
        self.schedule
            .iter()
            .rev()
            .find(|later| step >= later.from_step)
    }

    /// The fewest objects an image needs to give a referring example at `step`.
    pub fn referring_min_objects_at(&self, step: u64) -> usize {
        self.later_at(step)
            .map_or(self.referring_min_objects, |l| l.referring_min_objects)
    }

    /// The shares (trace captioning, referring, location captioning) in force at `step`.
    pub fn shares_at(&self, step: u64) -> [f32; 3] {
        self.later_at(step).map_or(
            [
                self.trace_captioning,
                self.referring_localization,
                self.location_captioning,
            ],
            |later| {
                [
                    later.trace_captioning,
                    later.referring_localization,
                    later.location_captioning,
                ]
            },
        )
    }

    /// Whether some step of the run draws location-captioning examples (evaluation then
    /// scores the task).
    pub fn trains_location_captioning(&self) -> bool {
        self.location_captioning > 0.0 || self.schedule.iter().any(|l| l.location_captioning > 0.0)
    }

    /// Every set of shares has a positive total, and the schedule's steps increase.
    pub fn check(&self) -> std::result::Result<(), TaskError> {
        let invalid = |key: String, message: String| TaskError::Config { key, message };
        let steps: Vec<u64> = self.schedule.iter().map(|l| l.from_step).collect();
        if steps.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid(
                "tasks.schedule".into(),
                format!("from_step must increase, got {steps:?}"),
            ));
        }
        let first = std::iter::once((String::from("tasks"), self.shares_at(0)));
        let later = self
            .schedule
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("tasks.schedule[{i}]"), self.shares_at(l.from_step)));
        for (key, shares) in first.chain(later) {
            if shares.iter().sum::<f32>() <= 0.0 {
                return Err(invalid(
                    key,
                    "the task shares are all 0: give at least one task a share".into(),
                ));
            }
        }
        Ok(())
    }
}

fn at_least_two<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    let v = usize::deserialize(d)?;
    if v >= 2 {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be at least 2 (a word and EOS), got {v}"
        )))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Validation images; every referring expression and caption of each is evaluated. At
    /// least 1: over none, every score would read 0.
    #[serde(deserialize_with = "pixel_core::config::range::at_least_one")]
    pub validation_images: u64,
    /// Training images the constant baselines are fitted on. At least 1.
    #[serde(deserialize_with = "pixel_core::config::range::at_least_one")]
    pub baseline_images: u64,
    /// Validation images shown in `samples.png`.
    pub sample_images: u64,
    /// At least 1.
    #[serde(deserialize_with = "pixel_core::config::range::count")]
    pub max_new_tokens: usize,
    /// At least 1.
    #[serde(deserialize_with = "pixel_core::config::range::count")]
    pub batch_size: usize,
    /// Dense captioning (with a `detection` head): at most this many proposals of an image,
    /// best first, are captioned and scored; the head's own `max_proposals` caps them too.
    #[serde(default = "default_densecap_max_proposals")]
    pub densecap_max_proposals: usize,
}

/// The detection head's own default `max_proposals`: more than a ShapesLN image has objects.
fn default_densecap_max_proposals() -> usize {
    10
}

/// A post-parse check's [`TaskError::Config`] as a config error of the file `origin`.
fn in_file(err: TaskError, origin: &Path) -> TaskError {
    match err {
        TaskError::Config { key, message } => TaskError::Core(pixel_core::CoreError::Config {
            path: origin.to_path_buf(),
            key,
            message,
        }),
        other => other,
    }
}

/// The built-in demo config; `configs/demo.toml` is the same file.
pub const DEFAULT_DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");

impl ExperimentConfig {
    pub fn builtin() -> Result<ExperimentConfig> {
        let origin = Path::new("configs/demo.toml");
        let config: ExperimentConfig = pixel_core::config::parse_toml(DEFAULT_DEMO_CONFIG, origin)?;
        config.validate_as(origin)?;
        Ok(config)
    }

    /// Reads, parses and checks the config at `path`: every error names the file and the key.
    pub fn load(path: &Path) -> Result<ExperimentConfig> {
        let config: ExperimentConfig = pixel_core::config::load_toml(path)?;
        config.validate_as(path)?;
        Ok(config)
    }

    /// The checks that need more than one value or a whole section, as [`TaskError::Config`]
    /// (key path and message).
    pub fn validate(&self) -> Result<()> {
        self.tasks.check()?;
        if self.train.shards > self.train.batch_size {
            return Err(TaskError::Config {
                key: "train.shards".into(),
                message: format!(
                    "{} shards of a batch of {}: each shard needs at least one example",
                    self.train.shards, self.train.batch_size
                ),
            });
        }
        self.model.validate()?;
        self.data.validate().map_err(|e| {
            let pixel_data::shapes_ln::ShapesLnError::InvalidConfig { field, problem } = e;
            TaskError::Config {
                key: format!("data.{field}"),
                message: problem,
            }
        })?;
        if let Some(p) = &self.pretrain {
            p.validate()?;
        }
        if let Some(p) = &self.pretrain_eva {
            p.validate()?;
        }
        if let Some(p) = &self.pretrain_sam {
            p.validate()?;
        }
        Ok(())
    }

    /// [`Self::validate`] with `origin` named in the error.
    pub fn validate_as(&self, origin: &Path) -> Result<()> {
        self.validate().map_err(|e| in_file(e, origin))
    }

    /// The seed of the model's initialisation and LM pretraining.
    pub fn model_seed(&self) -> u64 {
        self.model_seed.unwrap_or(self.seed)
    }
}

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

/// Draws in a row without an example before [`training_examples`] gives up on the data.
const MAX_EMPTY_DRAWS: usize = 1000;

/// Draws the examples of training step `step`: deterministic in `(seed, step)`.
pub fn training_examples(
    data: &impl SampleSource,
    builder: &ExampleBuilder,
    mix: &TaskMix,
    batch_size: usize,
    seed: u64,
    step: u64,
) -> Result<Vec<Example>> {
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let [trace, referring, location] = mix.shares_at(step);
    let total = trace + referring + location;
    if total.is_nan() || total <= 0.0 {
        return Err(TaskError::Invalid(format!(
            "tasks: at step {step} no task share is positive"
        )));
    }
    let min_objects = mix.referring_min_objects_at(step);
    let mut examples = Vec::with_capacity(batch_size);
    let mut empty_draws = 0;
    while examples.len() < batch_size {
        let sample = data.load(Split::Train, rng.gen_range(0..data.images(Split::Train)))?;
        let pick = rng.gen::<f32>() * total;
        let mut candidates = if pick < trace {
            vec![builder.trace_captioning(&sample)?]
        } else if pick < trace + referring {
            let mut referring = builder.referring_localization(&sample)?;
            referring.retain(|e| e.object_boxes.len() >= min_objects);
            referring
        } else {
            builder.location_captioning(&sample)?
        };
        if candidates.is_empty() {
            // A file sample may lack the drawn task (an image without referring expressions),
            // or have fewer objects than the referring examples need.
            empty_draws += 1;
            if empty_draws == MAX_EMPTY_DRAWS {
                return Err(TaskError::Config {
                    key: "tasks".into(),
                    message: format!(
                        "at step {step}, {MAX_EMPTY_DRAWS} training images in a row had no example of the drawn task (referring examples need images with at least {min_objects} objects: referring_min_objects)"
                    ),
                });
            }
            continue;
        }
        empty_draws = 0;
        let i = rng.gen_range(0..candidates.len());
        examples.push(candidates.swap_remove(i));
    }
    Ok(examples)
}

/// Every example of the evaluated tasks for images `0..count` of `split` (or all it has).
pub fn evaluation_examples(
    data: &impl SampleSource,
    builder: &ExampleBuilder,
    split: Split,
    count: u64,
) -> Result<Vec<Example>> {
    let mut examples = Vec::new();
    for i in 0..count.min(data.images(split)) {
        let sample = data.load(split, i)?;
        examples.push(builder.trace_captioning(&sample)?);
        examples.extend(builder.referring_localization(&sample)?);
    }
    Ok(examples)
}

/// Runs the demo into `out`; with `resume`, continues from the run's last checkpoint.
pub fn run_demo(
    config: &ExperimentConfig,
    out: &Path,
    resume: bool,
    heads: &TinyHeadRegistry,
) -> Result<DemoMetrics> {
    let tokenizer = T5Tokenizer::bundled().map_err(|e| TaskError::Invalid(e.to_string()))?;
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
    let json =
        serde_json::to_vec_pretty(&metrics).map_err(|e| TaskError::Invalid(e.to_string()))?;
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
    let current = serde_json::to_value(config).map_err(|e| TaskError::Invalid(e.to_string()))?;
    if resume && path.exists() {
        let text = pixel_core::text::read_text(&path).map_err(|e| TaskError::io(&path, e))?;
        // Through `ExperimentConfig`, so both sides turn f32s into JSON numbers the same way.
        let stored: ExperimentConfig =
            serde_json::from_str(&text).map_err(|e| TaskError::Format {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let stored =
            serde_json::to_value(&stored).map_err(|e| TaskError::Invalid(e.to_string()))?;
        let mut differences = Vec::new();
        differing_keys("", &stored, &current, &mut differences);
        if let Some((key, was, now)) = differences
            .into_iter()
            .find(|(key, _, _)| !RESUMABLE_CHANGES.iter().any(|p| key.starts_with(p)))
        {
            return Err(TaskError::Config {
                key: key.clone(),
                message: format!(
                    "the run in {} was started with {key} = {was}, this config has {now}; a resumed run keeps what changes its result (its config is {}): train into another folder, or resume with that value",
                    out.display(),
                    path.display()
                ),
            });
        }
    }
    std::fs::create_dir_all(out).map_err(|e| TaskError::io(out, e))?;
    // The struct's own field order, as `pixel ablate` writes it.
    let json =
        serde_json::to_string_pretty(config).map_err(|e| TaskError::Invalid(e.to_string()))?;
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
    let (lm, report) =
        pretrained_lm::<PixelTiny>(pretrain, data, tokenizer, &model.vocab, config.model_seed())?;
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
            let (eva, report) =
                pretrained_eva::<PixelTiny>(pretrain, data, tokenizer, &model.vocab, seed)?;
            model.image_encoder.eva = eva;
            Some(report)
        }
        None => None,
    };
    let sam = match &config.pretrain_sam {
        Some(pretrain) => {
            let (sam, report) = pretrained_sam::<PixelTiny>(pretrain, data, seed)?;
            model.image_encoder.sam = sam;
            Some(report)
        }
        None => None,
    };
    Ok((eva, sam))
}

fn write_loss_png(run: &RunDir, path: &Path) -> Result<()> {
    let log = read_log(&run.metrics_log())?;
    let mut series: Vec<(String, Vec<(f64, f64)>)> = vec![(
        "total".into(),
        log.iter().map(|l| (l.step as f64, l.loss as f64)).collect(),
    )];
    // Each part under its own name, as it enters the total and, where a weight scales it, as
    // its loss function returns it. A log axis cannot show zeros (a text-coordinate head has
    // no loss of its own; a ramp starts at 0), so only positive values are drawn.
    let mut names: Vec<&str> = Vec::new();
    for line in &log {
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
    let series: Vec<(&str, &[(f64, f64)])> = series
        .iter()
        .filter(|(_, points)| !points.is_empty())
        .map(|(name, points)| (name.as_str(), points.as_slice()))
        .collect();
    loss_curves_png(
        path,
        &series,
        "PixelLLM tiny on ShapesLN: training loss",
        Scale::Log,
    )
    .map_err(|e| TaskError::Invalid(format!("cannot write {}: {e}", path.display())))
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
        .collect::<Result<_>>()?;
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
        .map_err(|e| TaskError::Invalid(format!("cannot write {}: {e}", path.display())))
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
        .map_err(|e| TaskError::Invalid(e.to_string()))?;
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut points: Vec<Option<[f32; 2]>> = vec![None; words.len()];
    for i in 0..end {
        let prefix = tokenizer
            .decode(&ids[..=i])
            .map_err(|e| TaskError::Invalid(e.to_string()))?;
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
    use crate::tasks::TaskKind;
    use pixel_data::shapes_ln::ShapesLn;

    #[test]
    fn builtin_config_parses() {
        let config = ExperimentConfig::builtin().unwrap();
        assert!(config.train.steps > 0);
        config.model.validate().unwrap();
    }

    /// Settings that would reverse or switch off training, each refused at load with the
    /// file, the key, the allowed range and (when the parser knows it) the line.
    #[test]
    fn settings_out_of_range_are_refused_naming_file_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exp.toml");
        let cases = [
            (
                "clip_grad_norm = 1.0",
                "clip_grad_norm = 0.0",
                "train.optimizer.clip_grad_norm",
                "> 0",
            ),
            (
                "clip_grad_norm = 1.0",
                "clip_grad_norm = -1.0",
                "train.optimizer.clip_grad_norm",
                "> 0",
            ),
            ("peak_lr = 5e-4", "peak_lr = -5e-4", "train.peak_lr", "> 0"),
            (
                "final_lr_ratio = 0.05",
                "final_lr_ratio = -0.5",
                "train.final_lr_ratio",
                "in [0, 1]",
            ),
            (
                "weight_decay = 0.01",
                "weight_decay = -0.01",
                "train.optimizer.weight_decay",
                ">= 0",
            ),
            (
                "beta1 = 0.9",
                "beta1 = 1.0",
                "train.optimizer.beta1",
                "in [0, 1)",
            ),
            (
                "beta2 = 0.999",
                "beta2 = -0.1",
                "train.optimizer.beta2",
                "in [0, 1)",
            ),
            ("eps = 1e-8", "eps = 0.0", "train.optimizer.eps", "> 0"),
            ("eps = 1e-8", "eps = nan", "train.optimizer.eps", "> 0"),
            ("steps = 3200", "steps = 0", "train.steps", "at least 1"),
            ("shards = 2", "shards = 0", "train.shards", "at least 1"),
            (
                "validation_images = 150",
                "validation_images = 0",
                "eval.validation_images",
                "at least 1",
            ),
            (
                "baseline_images = 400",
                "baseline_images = 0",
                "eval.baseline_images",
                "at least 1",
            ),
            (
                "max_target_tokens = 40",
                "max_target_tokens = 0",
                "tasks.max_target_tokens",
                "at least 2",
            ),
            (
                "trace_captioning = 0.5",
                "trace_captioning = -0.5",
                "tasks.trace_captioning",
                ">= 0",
            ),
        ];
        for (good, bad, key, range) in cases {
            assert!(DEFAULT_DEMO_CONFIG.contains(good), "{good}");
            let text = DEFAULT_DEMO_CONFIG.replacen(good, bad, 1);
            std::fs::write(&path, &text).unwrap();
            let line = text.lines().position(|l| l.trim() == bad).unwrap() + 1;
            let err = ExperimentConfig::load(&path).unwrap_err().to_string();
            assert!(
                err.contains("exp.toml")
                    && err.contains(&format!("`{key}`"))
                    && err.contains(range)
                    && err.contains(&format!("line {line}")),
                "{bad}: {err}"
            );
        }
        // Checks after parsing name the file and the key.
        for (edits, key) in [
            (
                vec![
                    ("trace_captioning = 0.5", "trace_captioning = 0.0"),
                    (
                        "referring_localization = 0.5",
                        "referring_localization = 0.0",
                    ),
                ],
                "tasks",
            ),
            (
                vec![("label_smoothing = 0.1", "label_smoothing = 1.0")],
                "model.label_smoothing",
            ),
            (
                vec![("preset = \"pixel-tiny\"", "preset = \"pixel-huge\"")],
                "model.preset",
            ),
            (
                vec![("image_size = 64", "image_size = 8")],
                "data.image_size",
            ),
            (vec![("shards = 2", "shards = 17")], "train.shards"),
            (
                vec![(
                    "max_target_tokens = 40",
                    "max_target_tokens = 40\n[[tasks.schedule]]\nfrom_step = 9\ntrace_captioning = 1.0\nreferring_localization = 0.0\nlocation_captioning = 0.0\n[[tasks.schedule]]\nfrom_step = 9\ntrace_captioning = 1.0\nreferring_localization = 0.0\nlocation_captioning = 0.0",
                )],
                "tasks.schedule",
            ),
            (
                vec![(
                    "max_target_tokens = 40",
                    "max_target_tokens = 40\n[[tasks.schedule]]\nfrom_step = 9\ntrace_captioning = 0.0\nreferring_localization = 0.0\nlocation_captioning = 0.0",
                )],
                "tasks.schedule[0]",
            ),
        ] {
            let text = edits
                .iter()
                .fold(DEFAULT_DEMO_CONFIG.to_string(), |t, (a, b)| {
                    t.replacen(a, b, 1)
                });
            std::fs::write(&path, &text).unwrap();
            let err = ExperimentConfig::load(&path).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!(
                    "invalid config `{}`: at key `{key}`:",
                    path.display()
                )),
                "{edits:?}: {err}"
            );
        }
    }

    #[test]
    fn a_task_schedule_takes_over_from_its_steps() {
        let mut mix = ExperimentConfig::builtin().unwrap().tasks;
        let later = |from_step, referring| LaterTaskMix {
            from_step,
            trace_captioning: 1.0 - referring,
            referring_localization: referring,
            location_captioning: 0.0,
            referring_min_objects: 1,
        };
        mix.schedule = vec![later(10, 0.75), later(20, 1.0)];
        assert!(!mix.trains_location_captioning());
        mix.schedule[0].location_captioning = 0.1;
        assert!(mix.trains_location_captioning());
        mix.schedule[0].location_captioning = 0.0;
        let referring: Vec<f32> = [0, 9, 10, 19, 20, 99]
            .iter()
            .map(|&s| mix.shares_at(s)[1])
            .collect();
        assert_eq!(referring, vec![0.5, 0.5, 0.75, 0.75, 1.0, 1.0]);
        assert!(mix.check().is_ok());
        // Only referring from step 20: every drawn example is one.
        let data = ShapesLn::new(ExperimentConfig::builtin().unwrap().data, 0).unwrap();
        let tokenizer = pixel_lm::tokenizer::T5Tokenizer::bundled().unwrap();
        let vocab =
            crate::model::TinyPixelLlm::build(&ExperimentConfig::builtin().unwrap().model, 0)
                .unwrap()
                .vocab;
        let builder = ExampleBuilder {
            tokenizer: &tokenizer,
            vocab: &vocab,
            max_target_tokens: 40,
        };
        let drawn = training_examples(&data, &builder, &mix, 16, 0, 20).unwrap();
        assert!(drawn
            .iter()
            .all(|e| e.task == TaskKind::ReferringLocalization));

        // Referring examples from images with several objects only, from step 20 on.
        let objects = |mix: &TaskMix, step| -> Vec<usize> {
            (0..4)
                .flat_map(|seed| training_examples(&data, &builder, mix, 16, seed, step).unwrap())
                .map(|e| e.object_boxes.len())
                .collect()
        };
        assert!(objects(&mix, 20).contains(&1), "ShapesLN has lone objects");
        mix.schedule[1].referring_min_objects = 2;
        assert_eq!(mix.referring_min_objects_at(19), 1);
        assert!(objects(&mix, 20).iter().all(|&n| n >= 2));
        assert!(objects(&mix, 19).contains(&1), "before step 20, any image");
        // More objects than any image has: an error that names the key, not an endless draw.
        mix.schedule[1].referring_min_objects = 4;
        let err = training_examples(&data, &builder, &mix, 16, 0, 20).unwrap_err();
        assert!(err.to_string().contains("referring_min_objects"), "{err}");
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

    #[test]
    fn every_shipped_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut kinds = std::collections::BTreeMap::new();
        let files = std::fs::read_dir(&dir)
            .unwrap()
            .chain(std::fs::read_dir(dir.join("twin")).unwrap())
            .chain(std::fs::read_dir(dir.join("binding")).unwrap());
        for entry in files {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let config = ExperimentConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                // Building the model checks each head's own keys, which parsing leaves alone.
                TinyPixelLlm::build(&config.model, 0)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let name = path.file_stem().unwrap().to_string_lossy().to_string();
                let heads: Vec<String> =
                    config.model.heads.iter().map(|h| h.kind.clone()).collect();
                kinds.insert(name, (heads, config.tasks.location_captioning));
            }
        }
        assert!(kinds.contains_key("demo") && kinds.contains_key("lora-box"));
        // The examples of `pixel eval`'s head scores have the heads (and the task) they show.
        let (heads, _) = &kinds["refseg"];
        assert!(heads.contains(&"mask".to_string()), "{heads:?}");
        let (heads, location) = &kinds["densecap"];
        assert!(
            heads.contains(&"detection".to_string()) && *location > 0.0,
            "{heads:?}"
        );
    }

    #[test]
    fn bad_configs_name_the_key() {
        let unknown = DEFAULT_DEMO_CONFIG.replace("[train]\n", "[train]\nlearning_rate = 1.0\n");
        let err =
            pixel_core::config::parse_toml::<ExperimentConfig>(&unknown, Path::new("bad.toml"))
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("bad.toml") && err.contains("train") && err.contains("learning_rate"),
            "{err}"
        );
        let wrong_type =
            DEFAULT_DEMO_CONFIG.replace("output_tokens = 8", "output_tokens = \"eight\"");
        let err =
            pixel_core::config::parse_toml::<ExperimentConfig>(&wrong_type, Path::new("bad.toml"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("model.output_tokens"), "{err}");
    }

    #[test]
    fn new_eval_keys_default_and_misspelt_ones_fail() {
        let config = ExperimentConfig::builtin().unwrap();
        assert_eq!(config.eval.densecap_max_proposals, 10);
        let misspelt =
            DEFAULT_DEMO_CONFIG.replace("[eval]\n", "[eval]\ndensecap_max_proposal = 3\n");
        let err =
            pixel_core::config::parse_toml::<ExperimentConfig>(&misspelt, Path::new("bad.toml"))
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("eval") && err.contains("densecap_max_proposal"),
            "{err}"
        );
    }

    #[test]
    fn training_batches_are_deterministic_in_step() {
        let tokenizer = T5Tokenizer::bundled().unwrap();
        let config = ExperimentConfig::builtin().unwrap();
        let data = ShapesLn::new(config.data.clone(), 0).unwrap();
        let vocab = crate::model::VocabMap::identity(32128);
        let builder = ExampleBuilder {
            tokenizer: &tokenizer,
            vocab: &vocab,
            max_target_tokens: 48,
        };
        let a = training_examples(&data, &builder, &config.tasks, 4, 0, 7).unwrap();
        let b = training_examples(&data, &builder, &config.tasks, 4, 0, 7).unwrap();
        let c = training_examples(&data, &builder, &config.tasks, 4, 0, 8).unwrap();
        let ids = |e: &[Example]| e.iter().map(|x| x.target_ids.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
        assert_ne!(ids(&a), ids(&c));
        assert!(
            a.iter().all(|e| e.task != TaskKind::LocationCaptioning)
                || config.tasks.location_captioning > 0.0
        );
    }
}
