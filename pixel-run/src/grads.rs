//! Training fidelity: one training step's inputs and gradients as tensors, for a twin of the
//! model in another framework (`tools/twin/`, PyTorch) to recompute and compare.
//!
//! `pixel grads` writes into one folder:
//! - `config.toml`: the experiment config, resolved;
//! - `init.safetensors`: every parameter of the model as training starts (checkpoint names);
//! - `batch.safetensors`: the step's batch ([`batch_tensors`] lists the names);
//! - `grads.safetensors`: the gradient of every trainable parameter under its name, and each
//!   loss term as a scalar `loss/<term>` (unweighted; `loss/total` is the weighted sum), with
//!   each term's weight as metadata `weight/<term>`;
//! - with `train_steps` > 0, the batches of training steps `0..train_steps` in
//!   `train/step-NNNNNNN.safetensors` (the demo's own, in its order) and the validation
//!   examples of each evaluated task as one batch each, `val-referring.safetensors` and
//!   `val-trace.safetensors`, so the twin can train on what the demo trains on and be scored on
//!   what the demo is scored on.
use crate::demo::{pretrain_image_encoders, pretrain_language_model};
use crate::error::{Result, RunError};
use crate::experiment::ExperimentConfig;
use dfdx::prelude::*;
use pixel_core::checkpoint::{save_params, StoredTensor, TensorStore};
use pixel_core::optim::alloc_grads;
use pixel_core::params::{ParamTensor, ParamVisitor, Params, Trainable};
use pixel_lm::tokenizer::T5Tokenizer;
use pixel_model::eval::Predictor;
use pixel_model::model::{TinyHeadRegistry, TinyPixelLlm};
use pixel_model::task_mix::{evaluation_examples, training_examples};
use pixel_model::tasks::{Batch, TaskKind};
use std::collections::HashMap;
use std::path::Path;

/// What [`write_grads`] wrote: the loss terms and how many tensors.
#[derive(Debug, Clone)]
pub struct GradsReport {
    /// `(term, value)`, the vocabulary head's first, then the heads' and `total`.
    pub losses: Vec<(String, f32)>,
    pub trainable_tensors: usize,
    pub batch_size: usize,
}

/// Builds the model of `config` (seeded as `pixel demo` seeds it, LM pretraining included),
/// draws training step `step`'s batch and writes the step's inputs and gradients into `out`.
pub fn write_grads(
    config: &ExperimentConfig,
    step: u64,
    train_steps: u64,
    out: &Path,
    heads: &TinyHeadRegistry,
) -> Result<GradsReport> {
    std::fs::create_dir_all(out).map_err(|e| RunError::io(out, e))?;
    let tokenizer = T5Tokenizer::bundled().map_err(|e| RunError::Invalid(e.to_string()))?;
    let data = pixel_data::data_source::DataSource::new(
        &config.data,
        config.seed,
        config.dataset.as_ref(),
    )?;
    let mut model = TinyPixelLlm::build_with(&config.model, config.model_seed(), heads)?;
    pretrain_language_model(config, &mut model, &data, &tokenizer)?;
    pretrain_image_encoders(config, &mut model, &data, &tokenizer)?;
    let builder = pixel_model::tasks::ExampleBuilder {
        tokenizer: &tokenizer,
        vocab: &model.vocab.clone(),
        max_target_tokens: config.tasks.max_target_tokens,
    };
    let examples = training_examples(
        &data,
        &builder,
        &config.tasks,
        config.train.batch_size,
        config.train.seed,
        step,
    )?;
    let batch = model.batch(&examples)?;
    if train_steps > 0 {
        let train = out.join("train");
        std::fs::create_dir_all(&train).map_err(|e| RunError::io(&train, e))?;
        for k in 0..train_steps {
            let examples = training_examples(
                &data,
                &builder,
                &config.tasks,
                config.train.batch_size,
                config.train.seed,
                k,
            )?;
            let path = train.join(format!("step-{k:07}.safetensors"));
            batch_tensors(&model.batch(&examples)?, &path)?;
        }
        let validation = evaluation_examples(
            &data,
            &builder,
            pixel_data::shapes_ln::Split::Validation,
            config.eval.validation_images,
        )?;
        for (task, name) in [
            (TaskKind::ReferringLocalization, "val-referring"),
            (TaskKind::TraceCaptioning, "val-trace"),
        ] {
            let chosen: Vec<_> = validation
                .iter()
                .filter(|e| e.task == task)
                .cloned()
                .collect();
            batch_tensors(
                &model.batch(&chosen)?,
                &out.join(format!("{name}.safetensors")),
            )?;
        }
    }

    let toml = toml::to_string(config).map_err(|e| RunError::Invalid(e.to_string()))?;
    let config_path = out.join("config.toml");
    std::fs::write(&config_path, toml).map_err(|e| RunError::io(&config_path, e))?;
    save_params(&mut model, &out.join("init.safetensors"), HashMap::new())?;
    batch_tensors(&batch, out.join("batch.safetensors").as_path())?;

    let trainable = config.model.trainable();
    let grads = alloc_grads(&mut model, &trainable)?;
    let (total, terms) = model.loss_terms(&batch, grads)?;
    let total_value = total.as_vec()[0];
    let gradients = total.backward();
    let mut store = TensorStore {
        origin: out.join("grads.safetensors"),
        ..Default::default()
    };
    let mut collector = GradCollector {
        grads: &gradients,
        trainable: &trainable,
        store: &mut store,
        count: 0,
    };
    model.visit_params("", &mut collector)?;
    let trainable_tensors = collector.count;
    let mut losses = Vec::new();
    for term in &terms {
        losses.push((term.name.clone(), term.value));
        store
            .metadata
            .insert(format!("weight/{}", term.name), term.weight.to_string());
    }
    losses.push(("total".to_string(), total_value));
    for (name, value) in &losses {
        store.insert(
            format!("loss/{name}"),
            StoredTensor::f32(vec![], vec![*value]),
        );
    }
    store.write(&store.origin.clone())?;
    Ok(GradsReport {
        losses,
        trainable_tensors,
        batch_size: batch.size,
    })
}

/// Copies the gradient of each trainable parameter into the store under its name.
struct GradCollector<'a, D: Device<f32> + pixel_core::ThreadSafe> {
    grads: &'a Gradients<f32, D>,
    trainable: &'a Trainable,
    store: &'a mut TensorStore,
    count: usize,
}

impl<D: Device<f32> + pixel_core::ThreadSafe> ParamVisitor<D> for GradCollector<'_, D> {
    fn visit(&mut self, name: &str, tensor: &mut dyn ParamTensor<D>) -> pixel_core::Result<()> {
        if self.trainable.is_trainable(name) {
            let values = tensor.grad(self.grads);
            self.store
                .insert(name, StoredTensor::f32(tensor.dims(), values));
            self.count += 1;
        }
        Ok(())
    }
}

/// The task ids `batch.safetensors` stores in `tasks`.
pub fn task_id(task: TaskKind) -> i64 {
    match task {
        TaskKind::TraceCaptioning => 0,
        TaskKind::ReferringLocalization => 1,
        TaskKind::LocationCaptioning => 2,
    }
}

/// Writes `batch` to `path` as tensors (B batch, S text-prompt, T target tokens, K objects):
/// `pixels` `[B, 3, H, W]` in `[0, 1]`; `prompt_boxes` `[B, 4]` normalized xyxy;
/// `context_ids` `[B, S]` (i64) and `context_mask` `[B, S]` (1 = real);
/// `decoder_input_ids`, `target_ids` `[B, T]` (i64) and `target_weights` `[B, T]`;
/// `location_targets`, `location_weights` `[B, T, 4]`; `tasks` `[B]` (i64, [`task_id`]);
/// `target_boxes` `[B, 4]` with `has_target_box` `[B]`; `target_masks` `[B, H, W]` in `{0, 1}`
/// with `has_target_mask` `[B]`; `object_boxes` `[B, K, 4]` with `object_counts` `[B]` (i64).
pub fn batch_tensors(batch: &Batch, path: &Path) -> Result<()> {
    let (b, s, t) = (batch.size, batch.context_len, batch.target_len);
    let side = batch.image_size as usize;
    let ids = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    let flags = |v: &[bool]| {
        v.iter()
            .map(|&x| f32::from(u8::from(x)))
            .collect::<Vec<_>>()
    };
    let mut store = TensorStore {
        origin: path.to_path_buf(),
        ..Default::default()
    };
    let mut put = |name: &str, tensor: StoredTensor| store.insert(name, tensor);
    put(
        "pixels",
        StoredTensor::f32(vec![b, 3, side, side], batch.pixels.clone()),
    );
    put(
        "prompt_boxes",
        StoredTensor::f32(
            vec![b, 4],
            batch
                .prompt_boxes
                .iter()
                .flat_map(|x| x.to_array())
                .collect(),
        ),
    );
    put(
        "context_ids",
        StoredTensor::i64(vec![b, s], ids(&batch.context_ids)),
    );
    put(
        "context_mask",
        StoredTensor::f32(vec![b, s], flags(&batch.context_mask)),
    );
    put(
        "decoder_input_ids",
        StoredTensor::i64(vec![b, t], ids(&batch.decoder_input_ids)),
    );
    put(
        "target_ids",
        StoredTensor::i64(vec![b, t], ids(&batch.target_ids)),
    );
    put(
        "target_weights",
        StoredTensor::f32(vec![b, t], batch.target_weights.clone()),
    );
    put(
        "location_targets",
        StoredTensor::f32(vec![b, t, 4], batch.location_targets.clone()),
    );
    put(
        "location_weights",
        StoredTensor::f32(vec![b, t, 4], batch.location_weights.clone()),
    );
    put(
        "tasks",
        StoredTensor::i64(vec![b], batch.tasks.iter().map(|&k| task_id(k)).collect()),
    );
    let boxes = |v: Option<pixel_core::geometry::BoxXyxy>| v.map_or([0.0; 4], |x| x.to_array());
    put(
        "target_boxes",
        StoredTensor::f32(
            vec![b, 4],
            batch.target_boxes.iter().flat_map(|&x| boxes(x)).collect(),
        ),
    );
    put(
        "has_target_box",
        StoredTensor::f32(
            vec![b],
            flags(
                &batch
                    .target_boxes
                    .iter()
                    .map(Option::is_some)
                    .collect::<Vec<_>>(),
            ),
        ),
    );
    let mut masks = Vec::with_capacity(b * side * side);
    for mask in &batch.target_masks {
        match mask {
            Some(m) => masks.extend(m.pixels().map(|p| f32::from(u8::from(p.0[0] > 0)))),
            None => masks.extend(std::iter::repeat_n(0.0, side * side)),
        }
    }
    put(
        "target_masks",
        StoredTensor::f32(vec![b, side, side], masks),
    );
    put(
        "has_target_mask",
        StoredTensor::f32(
            vec![b],
            flags(
                &batch
                    .target_masks
                    .iter()
                    .map(Option::is_some)
                    .collect::<Vec<_>>(),
            ),
        ),
    );
    let k = batch.object_boxes.iter().map(Vec::len).max().unwrap_or(0);
    let mut objects = Vec::with_capacity(b * k * 4);
    for row in &batch.object_boxes {
        objects.extend(row.iter().flat_map(|x| x.to_array()));
        objects.extend(std::iter::repeat_n(0.0, (k - row.len()) * 4));
    }
    put("object_boxes", StoredTensor::f32(vec![b, k, 4], objects));
    put(
        "object_counts",
        StoredTensor::i64(
            vec![b],
            batch.object_boxes.iter().map(|r| r.len() as i64).collect(),
        ),
    );
    store.write(path)?;
    Ok(())
}
