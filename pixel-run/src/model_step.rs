//! `pixel step`: a few training steps of any PixelLLM preset (`pixel-tiny`, `pixelllm-test`,
//! `pixelllm-base`, `pixelllm-paper`), composed from its components' own checkpoints
//! (`[model.checkpoints]`) or initialised from scratch, each step timed phase by phase with the
//! process's peak memory. It answers what training the paper's model costs on a machine before
//! a run is planned on it; the examples are ShapesLN trace captions at the preset's image size.
//! Each phase is reported as it starts and each step as it ends, so a run the kernel kills for
//! memory shows how far it got.
use crate::error::{Result, RunError};
use dfdx::prelude::*;
use pixel_base::progress::Job;
use pixel_core::optim::{alloc_grads, AdamW, AdamWConfig};
use pixel_core::params::{frozen_on_host, ParamInfo};
use pixel_core::DefaultDevice;
use pixel_data::shapes_ln::{ShapesLn, ShapesLnConfig};
use pixel_lm::tokenizer::T5Tokenizer;
use pixel_model::heads::HeadRegistry;
use pixel_model::model::{parameter_list, ModelConfig, PixelLlm};
use pixel_model::presets::{with_preset, PixelDims, PresetVisitor, PRESETS};
use pixel_model::task_mix::{training_examples, TaskMix};
use pixel_model::tasks::ExampleBuilder;
use pixel_train::TrainStep;
use serde::Serialize;
use std::time::Instant;

/// What to run.
#[derive(Debug, Clone)]
pub struct StepOptions {
    pub steps: u64,
    pub batch_size: usize,
    pub seed: u64,
    /// AdamW's learning rate (the paper's 5e-5 by default in the CLI).
    pub lr: f32,
    /// Caption length in tokens, EOS included.
    pub caption_tokens: usize,
}

/// One training step: its loss and how long each phase took.
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    pub step: u64,
    pub loss: f32,
    pub forward_s: f64,
    pub backward_s: f64,
    pub update_s: f64,
    /// The process's peak resident memory so far, after the step.
    pub peak_rss_bytes: Option<u64>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub preset: String,
    pub image_size: usize,
    pub parameters: usize,
    pub trainable_parameters: usize,
    /// The least memory training needs: the weights (f32, or `model.frozen_dtype` for frozen
    /// weights kept on the host), and a gradient and two AdamW moments per trainable
    /// parameter; activations come on top.
    pub memory_floor_bytes: u64,
    /// Frozen weight matrices kept on the host (`model.frozen_dtype`): how many, and bytes.
    pub frozen_on_host: Option<(usize, u64)>,
    /// Building the model and loading its checkpoints.
    pub build_s: f64,
    /// The load report when `[model.checkpoints]` names files (what each filled, what starts
    /// from scratch); `None` for a model initialised from scratch.
    pub load_report: Option<String>,
    /// Peak resident memory after building (weights only).
    pub build_peak_rss_bytes: Option<u64>,
    pub steps: Vec<StepTiming>,
}

/// Builds the model `config` describes and trains it `options.steps` steps.
pub fn run_steps(config: &ModelConfig, options: &StepOptions) -> Result<StepReport> {
    if options.steps == 0 || options.batch_size == 0 || options.caption_tokens < 2 {
        return Err(RunError::Invalid(
            "steps and batch size must be at least 1, caption tokens at least 2".into(),
        ));
    }
    with_preset(&config.preset, Steps { config, options }).ok_or_else(|| RunError::Config {
        key: "model.preset".into(),
        message: format!(
            "`{}` is not a PixelLLM preset (one of {})",
            config.preset,
            PRESETS.join(", ")
        ),
    })?
}

struct Steps<'a> {
    config: &'a ModelConfig,
    options: &'a StepOptions,
}

impl PresetVisitor for Steps<'_> {
    type Output = Result<StepReport>;

    fn visit<P: PixelDims>(self) -> Result<StepReport> {
        let (config, options) = (self.config, self.options);
        let dev = DefaultDevice::seed_from_u64(options.seed);
        let registry = HeadRegistry::<P, DefaultDevice>::builtin();
        let trainable = config.trainable();
        // Counted from one block of each kind (2 GB and seconds for pixelllm-paper), so that a
        // model that cannot fit is refused before minutes of building.
        // (On a device of its own, so that the model's seeded initialisation is the same.)
        let list = parameter_list::<P, _>(&DefaultDevice::default(), config, &registry)?;
        let parameters: usize = list.iter().map(ParamInfo::numel).sum();
        let trainable_parameters: usize = list
            .iter()
            .filter(|p| trainable.is_trainable(&p.name))
            .map(ParamInfo::numel)
            .sum();
        let memory = MemoryFloor {
            weights: list.iter().map(ParamInfo::bytes).sum::<usize>() as u64,
            optimizer: 12 * trainable_parameters as u64,
        };
        drop(list);
        memory.check(P::NAME, available_memory_bytes())?;
        let job = Job::start("step", P::NAME, 0, options.steps);
        job.line(&format!(
            "{parameters} parameters, {trainable_parameters} trainable; training needs at least \
             {:.2} GB before activations",
            gb(memory.total())
        ));
        job.note("building");

        let started = Instant::now();
        let has_checkpoints = config.checkpoints.sam.is_some()
            || config.checkpoints.eva02.is_some()
            || config.checkpoints.t5.is_some();
        let (mut model, load_report) = if has_checkpoints {
            let (model, report) = PixelLlm::<P, _>::from_checkpoints(&dev, config, &registry)?;
            (model, Some(report.to_string()))
        } else {
            (PixelLlm::<P, _>::new(&dev, config, &registry)?, None)
        };
        let build_s = started.elapsed().as_secs_f64();
        let build_peak_rss_bytes = peak_rss_bytes();
        let moved = frozen_on_host(&mut model);
        let frozen_on_host = (moved.tensors > 0).then_some((moved.tensors, moved.bytes as u64));
        if let (Some(dtype), Some((tensors, bytes))) = (config.frozen_dtype, frozen_on_host) {
            job.line(&format!(
                "{tensors} frozen weight matrices kept on the host in {dtype}: {:.2} GB",
                gb(bytes)
            ));
        }
        job.line(&format!(
            "built in {build_s:.1} s, peak RSS {}",
            gb_text(build_peak_rss_bytes)
        ));

        let tokenizer = T5Tokenizer::bundled().map_err(|e| RunError::Invalid(e.to_string()))?;
        let vocab = model.vocab.clone();
        let builder = ExampleBuilder {
            tokenizer: &tokenizer,
            vocab: &vocab,
            max_target_tokens: options.caption_tokens,
        };
        let data = ShapesLn::new(
            ShapesLnConfig {
                image_size: P::image_size() as u32,
                ..ShapesLnConfig::default()
            },
            options.seed,
        )
        .map_err(|e| RunError::Invalid(e.to_string()))?;
        let mix = TaskMix {
            trace_captioning: 1.0,
            referring_localization: 0.0,
            location_captioning: 0.0,
            max_target_tokens: options.caption_tokens,
            referring_min_objects: 1,
            schedule: Vec::new(),
        };
        let mut optimizer = AdamW::new(AdamWConfig::default());
        let mut steps = Vec::new();
        for step in 0..options.steps {
            let examples = training_examples(
                &data,
                &builder,
                &mix,
                options.batch_size,
                options.seed,
                step,
            )?;
            job.note(&format!("step {step}: forward"));
            let phase = Instant::now();
            let grads = alloc_grads(&mut model, &trainable)?;
            let (loss, _) = model.loss(&examples, grads)?;
            let value = loss.array();
            let forward_s = phase.elapsed().as_secs_f64();
            if !value.is_finite() {
                return Err(RunError::Invalid(format!(
                    "step {step}: the loss is {value}"
                )));
            }
            job.note(&format!("step {step}: backward"));
            let phase = Instant::now();
            let grads = loss.backward();
            let backward_s = phase.elapsed().as_secs_f64();
            job.note(&format!("step {step}: update"));
            let phase = Instant::now();
            optimizer.update(&mut model, &grads, &trainable, options.lr)?;
            drop(grads);
            let timing = StepTiming {
                step,
                loss: value,
                forward_s,
                backward_s,
                update_s: phase.elapsed().as_secs_f64(),
                peak_rss_bytes: peak_rss_bytes(),
            };
            job.line(&format!(
                "step {step}: loss {value:.4}, forward {forward_s:.2} s, backward {backward_s:.2} s, \
                 update {:.2} s, peak RSS {}",
                timing.update_s,
                gb_text(timing.peak_rss_bytes)
            ));
            job.set(step + 1);
            steps.push(timing);
        }
        job.finish();
        Ok(StepReport {
            preset: P::NAME.to_string(),
            image_size: P::image_size(),
            memory_floor_bytes: memory.total(),
            frozen_on_host,
            parameters,
            trainable_parameters,
            build_s,
            load_report,
            build_peak_rss_bytes,
            steps,
        })
    }
}

/// The memory training needs at least, before activations.
struct MemoryFloor {
    /// Every parameter, in f32 or the type it is kept in on the host.
    weights: u64,
    /// A gradient and AdamW's two moments per trainable parameter, in f32.
    optimizer: u64,
}

impl MemoryFloor {
    fn total(&self) -> u64 {
        self.weights + self.optimizer
    }

    /// Refuses a run whose floor exceeds the memory the system has available.
    fn check(&self, preset: &str, available: Option<u64>) -> Result<()> {
        match available {
            Some(available) if self.total() > available => Err(RunError::Invalid(format!(
                "{preset} needs at least {:.1} GB ({:.1} GB of weights, {:.1} GB of gradients \
                 and AdamW moments, activations on top) and this machine has {:.1} GB available",
                gb(self.total()),
                gb(self.weights),
                gb(self.optimizer),
                gb(available)
            ))),
            _ => Ok(()),
        }
    }
}

fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

fn gb_text(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.2} GB", gb(b)))
}

/// `MemAvailable` of /proc/meminfo; `None` where there is none.
fn available_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The process's peak resident set (`VmHWM` of /proc/self/status); `None` where there is none.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_steps_of_the_test_preset_are_timed_and_lower_nothing_to_nan() {
        let config = ModelConfig::shipped("pixelllm-test").unwrap().unwrap();
        let options = StepOptions {
            steps: 2,
            batch_size: 1,
            seed: 0,
            lr: 1e-3,
            caption_tokens: 8,
        };
        let report = run_steps(&config, &options).unwrap();
        assert_eq!(report.preset, "pixelllm-test");
        assert_eq!(report.steps.len(), 2);
        assert!(report.load_report.is_none());
        assert!(report.trainable_parameters > 0 && report.trainable_parameters < report.parameters);
        for step in &report.steps {
            assert!(step.loss.is_finite() && step.loss > 0.0);
            assert!(step.forward_s > 0.0 && step.backward_s > 0.0);
        }
        if cfg!(target_os = "linux") {
            assert!(report.steps[1].peak_rss_bytes >= report.build_peak_rss_bytes);
            assert!(report.build_peak_rss_bytes.unwrap() > 0);
        }
        assert!(report.frozen_on_host.is_none());

        // Frozen weights in bf16: the floor counts them at 2 bytes, and the first step's loss
        // is the f32 one up to bf16 rounding.
        let bf16 = ModelConfig {
            frozen_dtype: Some(pixel_core::host_matrix::Dtype::Bf16),
            ..config
        };
        let host = run_steps(&bf16, &options).unwrap();
        let (tensors, bytes) = host.frozen_on_host.unwrap();
        assert!(tensors > 0);
        assert_eq!(host.memory_floor_bytes, report.memory_floor_bytes - bytes);
        let (got, want) = (host.steps[0].loss, report.steps[0].loss);
        assert!((got - want).abs() < 1e-2 * want, "{got} vs {want}");
    }

    #[test]
    fn a_model_over_the_available_memory_is_refused_with_the_numbers() {
        let floor = MemoryFloor {
            weights: 15_400_000_000,
            optimizer: 4_400_000_000,
        };
        let error = floor
            .check("pixelllm-paper", Some(16_000_000_000))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("pixelllm-paper needs at least 19.8 GB")
                && error.contains("15.4 GB of weights")
                && error.contains("16.0 GB available"),
            "{error}"
        );
        assert!(floor.check("pixelllm-paper", Some(20_000_000_000)).is_ok());
        assert!(floor.check("pixelllm-paper", None).is_ok());
    }

    #[test]
    fn an_unknown_preset_names_the_key() {
        let mut config = ModelConfig::shipped("pixelllm-test").unwrap().unwrap();
        config.preset = "pixelllm-huge".into();
        let options = StepOptions {
            steps: 1,
            batch_size: 1,
            seed: 0,
            lr: 1e-3,
            caption_tokens: 8,
        };
        let error = run_steps(&config, &options).unwrap_err().to_string();
        assert!(
            error.contains("model.preset") && error.contains("pixelllm-huge"),
            "{error}"
        );
    }
}
