//! One experiment's config, one TOML file (`configs/*.toml`): data, model, tasks, training,
//! evaluation and pretraining, each section read by the type of the crate or module that uses
//! it; the checks that need more than one section are here.
use crate::error::{Result, RunError};
use crate::pretrain::PretrainConfig;
use crate::pretrain_eva::EvaPretrainConfig;
use crate::pretrain_sam::SamPretrainConfig;
use pixel_data::data_source::DatasetConfig;
use pixel_data::shapes_ln::ShapesLnConfig;
use pixel_model::model::ModelConfig;
use pixel_model::task_mix::TaskMix;
use pixel_train::TrainConfig;
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

/// A post-parse check's [`RunError::Config`] as a config error of the file `origin`.
fn in_file(err: RunError, origin: &Path) -> RunError {
    match err {
        RunError::Config { key, message } => RunError::Core(pixel_core::CoreError::Config {
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

    /// The checks that need more than one value or a whole section, as [`RunError::Config`]
    /// (key path and message).
    pub fn validate(&self) -> Result<()> {
        self.tasks.check()?;
        if self.train.shards > self.train.batch_size {
            return Err(RunError::Config {
                key: "train.shards".into(),
                message: format!(
                    "{} shards of a batch of {}: each shard needs at least one example",
                    self.train.shards, self.train.batch_size
                ),
            });
        }
        self.model.validate()?;
        self.check_runnable()?;
        self.data.validate().map_err(|e| {
            let pixel_data::shapes_ln::ShapesLnError::InvalidConfig { field, problem } = e;
            RunError::Config {
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

    /// What the runners cannot do yet: train a preset other than `pixel-tiny`, or load the
    /// components' own checkpoints (both are `pixel_model::model::PixelLlm`'s in Rust).
    fn check_runnable(&self) -> Result<()> {
        let preset = &self.model.preset;
        if !pixel_model::presets::RUNNER_PRESETS.contains(&preset.as_str()) {
            return Err(RunError::Config {
                key: "model.preset".into(),
                message: format!(
                    "`{preset}` is a preset of the model (PixelLlm::<_, _>::new or \
                     ::from_checkpoints in Rust; `pixel inspect --preset {preset}` counts its \
                     parameters), but the runners (pixel demo, eval, ablate, grads, predict, \
                     serve) build {} only",
                    pixel_model::presets::RUNNER_PRESETS.join(", ")
                ),
            });
        }
        if !self.model.checkpoints.is_empty() {
            return Err(RunError::Config {
                key: "model.checkpoints".into(),
                message: "the runners do not load component checkpoints yet; \
                          PixelLlm::from_checkpoints does (pixel-model)"
                    .into(),
            });
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

    /// What the run's samples are (generator settings, dataset files, data seed): part of each
    /// pretraining stage's cache key, so a stage cached on other data is not reused.
    pub fn data_key(&self) -> serde_json::Value {
        serde_json::json!({ "data": self.data, "dataset": self.dataset, "seed": self.seed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_model::model::TinyPixelLlm;

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
                "final_lr_ratio = 0.5",
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
            ("steps = 3600", "steps = 0", "train.steps", "at least 1"),
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
    fn a_preset_the_runners_cannot_build_is_refused_naming_the_key() {
        let checkpoints = "[model.checkpoints]\nt5 = \"flan-t5-xl\"\n\n[model.lm]\n";
        for (from, to, key, says) in [
            (
                "preset = \"pixel-tiny\"",
                "preset = \"pixelllm-paper\"",
                "model.preset",
                "build pixel-tiny only",
            ),
            (
                "[model.lm]\n",
                checkpoints,
                "model.checkpoints",
                "PixelLlm::from_checkpoints",
            ),
        ] {
            let text = DEFAULT_DEMO_CONFIG.replacen(from, to, 1);
            let config: ExperimentConfig =
                pixel_core::config::parse_toml(&text, Path::new("paper.toml")).unwrap();
            let err = config
                .validate_as(Path::new("paper.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("paper.toml") && err.contains(key) && err.contains(says),
                "{err}"
            );
        }
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
}
