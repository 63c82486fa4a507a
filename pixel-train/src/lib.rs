//! The training loop: AdamW with warmup + cosine decay, gradient clipping, a progress bar,
//! a JSONL metrics log, atomic checkpoints and resumption.
//!
//! Checkpoints live in `RUN/checkpoints/step-NNNNNNN/` (model, optimizer state, trainer state);
//! `RUN/checkpoints/latest` names the newest complete one and is replaced atomically after all
//! its files are written, so a crash mid-save leaves the previous checkpoint in force. The run
//! deletes only folders it names itself (`step-NNNNNNN` under `checkpoints/`), never what
//! `latest` says. A loss, gradient or updated weight that is not finite, or a smoothed loss that
//! grows past `divergence_factor` times its minimum, stops training with an error naming the last
//! good checkpoint; a checkpoint is written only after the loss of its own weights (on the step's
//! batch) is finite and within that bound, so a good checkpoint never holds a diverged model.
//!
//! With `shards > 1` a step is data-parallel: the batch splits into shards that run forward and
//! backward on their own threads, and the loss is the mean of the shards' losses, as scenic
//! averages the losses of its devices. The gradients are summed in shard order, so a run gives
//! the same weights whatever the threads' timing.
pub mod error;

use dfdx::prelude::*;
pub use error::{Result, TrainError};
use pixel_base::progress::Job;
use pixel_core::checkpoint::{load_params, save_params, write_atomic, LoadOptions, TensorStore};
use pixel_core::optim::{alloc_grads, AdamW, AdamWConfig, WarmupCosine};
use pixel_core::params::{Params, Trainable};
use pixel_core::ThreadSafe;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One named part of a batch's loss: the vocabulary head's cross-entropy, an output head's
/// loss (named after the head), or a pretraining objective's term. The log keeps each part
/// under its own name, before and after weighting, whatever model or head produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct LossPart {
    pub name: String,
    /// The part as its loss function returns it.
    pub value: f32,
    /// The factor it enters the total with (a head's weight times the auxiliary ramp).
    pub weight: f32,
}

impl LossPart {
    pub fn new(name: impl Into<String>, value: f32, weight: f32) -> Self {
        LossPart {
            name: name.into(),
            value,
            weight,
        }
    }

    /// What the part adds to the total loss.
    pub fn weighted(&self) -> f32 {
        self.value * self.weight
    }
}

/// The loss of one batch, split into its named parts, in the order the model computed them.
pub type LossParts = Vec<LossPart>;

/// The parts of a loss averaged over shards: by name, a part a shard did not have (a head
/// with nothing to supervise there) counting as zero, as it does in that shard's total.
fn mean_parts(shards: &[LossParts]) -> LossParts {
    let scale = 1.0 / shards.len().max(1) as f32;
    let mut mean: LossParts = Vec::new();
    for part in shards.iter().flatten() {
        match mean.iter_mut().find(|m| m.name == part.name) {
            Some(m) => m.value += part.value * scale,
            None => mean.push(LossPart::new(&part.name, part.value * scale, part.weight)),
        }
    }
    mean
}

/// `name value (x weight)` for each part, for messages.
pub fn describe_parts(parts: &[LossPart]) -> String {
    parts
        .iter()
        .map(|p| format!("{} {} (x {})", p.name, p.value, p.weight))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A scalar loss with the gradient tape of its whole computation.
pub type TapedScalar<D> = Tensor<(), f32, D, OwnedTape<f32, D>>;

/// A model the loop can train: it computes a scalar loss with gradients recorded on `grads`.
pub trait TrainStep<D: Device<f32>>: Params<D> {
    type Batch;

    fn loss(
        &self,
        batch: &Self::Batch,
        grads: Gradients<f32, D>,
    ) -> Result<(TapedScalar<D>, LossParts)>;

    /// Scales the auxiliary losses (all but the main one) for the coming step
    /// (`TrainConfig::aux_loss_warmup_steps`); a model without them has nothing to scale.
    fn set_aux_loss_scale(&mut self, _scale: f32) {}

    /// Freezes the image encoder for the rest of the run
    /// (`TrainConfig::freeze_image_encoder_from_step`) and returns the checkpoint-name pattern
    /// of the parameters it froze, so the optimizer leaves them; `None` where the model has no
    /// image encoder to freeze.
    fn freeze_image_encoder(&mut self) -> Option<&'static str> {
        None
    }

    /// `batch` as `shards` non-empty batches for a data-parallel step, or `None` where the
    /// model's loss does not split (a contrastive loss, whose negatives are the whole batch).
    fn split_batch(_batch: &Self::Batch, _shards: usize) -> Option<Vec<Self::Batch>> {
        None
    }
}

/// `items` in `shards` contiguous runs whose lengths differ by at most one; `None` when there
/// are fewer items than shards.
pub fn split_evenly<T: Clone>(items: &[T], shards: usize) -> Option<Vec<Vec<T>>> {
    if shards == 0 || items.len() < shards {
        return None;
    }
    let (base, extra) = (items.len() / shards, items.len() % shards);
    let mut start = 0;
    Some(
        (0..shards)
            .map(|i| {
                let len = base + usize::from(i < extra);
                let run = items[start..start + len].to_vec();
                start += len;
                run
            })
            .collect(),
    )
}

/// Optimisation settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// At least 1.
    #[serde(deserialize_with = "pixel_core::config::range::at_least_one")]
    pub steps: u64,
    /// At least 1.
    #[serde(deserialize_with = "pixel_core::config::range::count")]
    pub batch_size: usize,
    /// Data-parallel threads: each step's batch splits into this many shards, each run on its
    /// own thread; the loss is the mean of the shards' losses. At least 1 (one thread, the plain
    /// batch loss), at most `batch_size`.
    #[serde(deserialize_with = "pixel_core::config::range::count")]
    pub shards: usize,
    /// The auxiliary losses (PixelLLM's output heads: everything but the text loss) enter at 0
    /// and rise linearly to their configured weights over this many steps, so that the
    /// captioner learns what objects look like before the location losses, whose gradients
    /// are several times larger, take most of each step. 0: full weight from the start. The
    /// divergence guard starts watching when the warmup ends (the loss rises by design until
    /// then); a non-finite loss stops the run at any step.
    pub aux_loss_warmup_steps: u64,
    /// From this step on the image encoder is frozen: it keeps what the steps before taught it
    /// (the objects' appearance, learnt from the text loss while the location losses ramp in),
    /// and the location losses train only what reads it. Unset: the encoder trains throughout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_image_encoder_from_step: Option<u64>,
    /// > 0.
    #[serde(deserialize_with = "pixel_core::config::range::positive")]
    pub peak_lr: f32,
    pub warmup_steps: u64,
    /// The learning rate at the end, as a fraction of `peak_lr`, in [0, 1].
    #[serde(deserialize_with = "pixel_core::config::range::fraction")]
    pub final_lr_ratio: f32,
    pub optimizer: AdamWConfig,
    /// At least 1.
    #[serde(deserialize_with = "pixel_core::config::range::at_least_one")]
    pub log_every: u64,
    /// Save a checkpoint every this many steps (and at the end); 0 saves only at the end.
    pub checkpoint_every: u64,
    pub seed: u64,
    /// Stop when the smoothed loss (an exponential average over about 10 steps) exceeds this
    /// factor (> 1) times its lowest value so far; 0 switches the check off.
    #[serde(deserialize_with = "divergence_factor")]
    pub divergence_factor: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            batch_size: 16,
            shards: 1,
            aux_loss_warmup_steps: 0,
            freeze_image_encoder_from_step: None,
            peak_lr: 1e-3,
            warmup_steps: 50,
            final_lr_ratio: 0.05,
            optimizer: AdamWConfig::default(),
            log_every: 10,
            checkpoint_every: 250,
            seed: 0,
            divergence_factor: 10.0,
        }
    }
}

fn divergence_factor<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f32, D::Error> {
    let v = f32::deserialize(d)?;
    if v == 0.0 || (v.is_finite() && v > 1.0) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be 0 (off) or a finite number > 1, got {v}"
        )))
    }
}

impl TrainConfig {
    /// The auxiliary losses' scale at `step`: `(step + 1) / aux_loss_warmup_steps`, at most 1.
    pub fn aux_loss_scale(&self, step: u64) -> f32 {
        if step >= self.aux_loss_warmup_steps {
            1.0
        } else {
            (step + 1) as f32 / self.aux_loss_warmup_steps as f32
        }
    }

    pub fn schedule(&self) -> WarmupCosine {
        WarmupCosine {
            peak_lr: self.peak_lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.steps,
            final_ratio: self.final_lr_ratio,
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "LogLineOnDisk")]
pub struct LogLine {
    pub step: u64,
    /// The total: the sum of the parts' `weighted`.
    pub loss: f32,
    /// Every part of the loss under its own name (`text`, then each head's).
    pub losses: Vec<LoggedLoss>,
    pub lr: f32,
    pub grad_norm: f32,
    pub elapsed_s: f64,
}

/// A loss part as logged: unweighted, its weight at that step, and weighted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedLoss {
    pub name: String,
    pub unweighted: f32,
    pub weight: f32,
    pub weighted: f32,
}

impl From<&LossPart> for LoggedLoss {
    fn from(part: &LossPart) -> Self {
        LoggedLoss {
            name: part.name.clone(),
            unweighted: part.value,
            weight: part.weight,
            weighted: part.weighted(),
        }
    }
}

impl LogLine {
    /// The part named `name`, if the step had it.
    pub fn part(&self, name: &str) -> Option<&LoggedLoss> {
        self.losses.iter().find(|l| l.name == name)
    }
}

/// A `metrics.jsonl` line as written now (`losses`), or as runs before named loss parts wrote it
/// (`text_loss` and `location_loss`, the heads' losses summed unweighted): a run started then
/// still resumes and plots.
#[derive(Deserialize)]
struct LogLineOnDisk {
    step: u64,
    loss: f32,
    losses: Option<Vec<LoggedLoss>>,
    text_loss: Option<f32>,
    location_loss: Option<f32>,
    lr: f32,
    grad_norm: f32,
    elapsed_s: f64,
}

impl TryFrom<LogLineOnDisk> for LogLine {
    type Error = String;

    fn try_from(line: LogLineOnDisk) -> std::result::Result<Self, String> {
        let losses = match (line.losses, line.text_loss, line.location_loss) {
            (Some(losses), _, _) => losses,
            (None, Some(text), Some(location)) => {
                // The old log kept the heads' losses summed, without their weight; the total
                // gives what they added to it.
                let weighted = line.loss - text;
                let weight = if location > 0.0 {
                    weighted / location
                } else {
                    0.0
                };
                vec![
                    LoggedLoss::from(&LossPart::new("text", text, 1.0)),
                    LoggedLoss {
                        name: "location".into(),
                        unweighted: location,
                        weight,
                        weighted,
                    },
                ]
            }
            _ => return Err("missing field `losses`".into()),
        };
        Ok(LogLine {
            step: line.step,
            loss: line.loss,
            losses,
            lr: line.lr,
            grad_norm: line.grad_norm,
            elapsed_s: line.elapsed_s,
        })
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// Steps run by this call (0 when resumed at the end).
    pub steps_run: u64,
    pub resumed_from: Option<u64>,
    /// The last step's log line, from the log when this call ran no step.
    pub last: Option<LogLine>,
    /// Training time of the whole run, across resumes (the last step's `elapsed_s`).
    pub wall_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    elapsed_s: f64,
    /// The divergence guard's history, so a resumed run watches as an uninterrupted one does.
    #[serde(default)]
    smoothed_loss: Option<f32>,
    #[serde(default)]
    lowest_loss: Option<(f32, u64)>,
}

/// Paths of a run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }
    pub fn metrics_log(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    fn latest_pointer(&self) -> PathBuf {
        self.checkpoints().join("latest")
    }
    /// The newest complete checkpoint folder, if any. `latest` must name a checkpoint folder
    /// this trainer writes (`step-NNNNNNN`), nothing else.
    pub fn latest_checkpoint(&self) -> Result<Option<PathBuf>> {
        let pointer = self.latest_pointer();
        if !pointer.exists() {
            return Ok(None);
        }
        let text =
            pixel_core::text::read_text(&pointer).map_err(|e| TrainError::io(&pointer, e))?;
        let name = text.trim();
        if checkpoint_step(name).is_none() {
            return Err(TrainError::Format {
                path: pointer,
                message: format!(
                    "it names `{name}`, not a checkpoint folder of this run (`step-` and the step number)\n  help: write the name of a folder in {} into it, or delete it to start over",
                    self.checkpoints().display()
                ),
            });
        }
        Ok(Some(self.checkpoints().join(name)))
    }

    /// The `step-NNNNNNN` folders under `checkpoints/` with their steps (no symbolic links).
    fn checkpoint_folders(&self) -> Result<Vec<(u64, PathBuf)>> {
        let dir = self.checkpoints();
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| TrainError::io(&dir, e))? {
            let entry = entry.map_err(|e| TrainError::io(&dir, e))?;
            let is_dir = entry
                .file_type()
                .map_err(|e| TrainError::io(entry.path(), e))?
                .is_dir();
            let step = entry.file_name().to_str().and_then(checkpoint_step);
            if let (true, Some(step)) = (is_dir, step) {
                found.push((step, entry.path()));
            }
        }
        Ok(found)
    }
}

/// The name of the checkpoint folder of `step`.
fn checkpoint_name(step: u64) -> String {
    format!("step-{step:07}")
}

/// The step of a checkpoint folder name this trainer writes, else `None`.
fn checkpoint_step(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    let well_formed = digits.len() >= 7 && digits.bytes().all(|b| b.is_ascii_digit());
    let step = digits.parse().ok().filter(|_| well_formed)?;
    (checkpoint_name(step) == name).then_some(step)
}

/// Watches the loss for divergence: an exponential average over about 10 steps against its
/// lowest value so far.
#[derive(Debug, Clone)]
struct DivergenceGuard {
    factor: f32,
    smoothed: Option<f32>,
    lowest: Option<(f32, u64)>,
}

impl DivergenceGuard {
    fn new(factor: f32) -> Self {
        DivergenceGuard {
            factor,
            smoothed: None,
            lowest: None,
        }
    }

    /// Takes the loss of `step`; `Err((smoothed, lowest, its step))` once it diverged.
    fn observe(&mut self, step: u64, loss: f32) -> std::result::Result<(), (f32, f32, u64)> {
        let smoothed = match self.smoothed {
            Some(s) => 0.9 * s + 0.1 * loss,
            None => loss,
        };
        self.smoothed = Some(smoothed);
        self.check(smoothed)?;
        if self.lowest.is_none_or(|(low, _)| smoothed < low) {
            self.lowest = Some((smoothed, step));
        }
        Ok(())
    }

    /// [`DivergenceGuard::observe`] when `watched`; nothing otherwise.
    fn observe_if(
        &mut self,
        watched: bool,
        step: u64,
        loss: f32,
    ) -> std::result::Result<(), (f32, f32, u64)> {
        if watched {
            self.observe(step, loss)
        } else {
            Ok(())
        }
    }

    /// Whether `loss` (a checkpoint's own loss) is within the bound, without recording it.
    fn check(&self, loss: f32) -> std::result::Result<(), (f32, f32, u64)> {
        match self.lowest {
            Some((low, at)) if self.factor > 0.0 && loss > self.factor * low => {
                Err((loss, low, at))
            }
            _ => Ok(()),
        }
    }
}

/// Trains `model` for `config.steps` steps; `next_batch(step)` must be deterministic in `step`
/// so that a resumed run sees the batches an uninterrupted one would.
pub fn train<D: Device<f32>, M: TrainStep<D> + ThreadSafe>(
    model: &mut M,
    trainable: &Trainable,
    config: &TrainConfig,
    run: &RunDir,
    resume: bool,
    mut next_batch: impl FnMut(u64) -> Result<M::Batch>,
) -> Result<TrainReport>
where
    M::Batch: ThreadSafe,
    Gradients<f32, D>: ThreadSafe,
{
    std::fs::create_dir_all(&run.root).map_err(|e| TrainError::io(&run.root, e))?;
    let mut optimizer = AdamW::new(config.optimizer);
    let mut start_step = 0;
    let mut elapsed_before = 0.0;
    let mut resumed_from = None;
    let mut guard = DivergenceGuard::new(config.divergence_factor);
    let checkpoint = if resume {
        run.latest_checkpoint()?
    } else {
        None
    };
    match checkpoint {
        Some(dir) => {
            let state = load_checkpoint(model, &mut optimizer, &dir)?;
            if state.step > config.steps {
                return Err(TrainError::Config {
                    key: "train.steps".into(),
                    message: format!(
                        "the run in {} is at step {} ({}), past train.steps = {}; resume with the steps it was started with, or train into another folder",
                        run.root.display(),
                        state.step,
                        dir.display(),
                        config.steps
                    ),
                });
            }
            start_step = state.step;
            elapsed_before = state.elapsed_s;
            guard.smoothed = state.smoothed_loss;
            guard.lowest = state.lowest_loss;
            resumed_from = Some(state.step);
            truncate_log(&run.metrics_log(), state.step)?;
        }
        // A fresh start (or a resume with nothing to resume): the log starts over too.
        None if run.metrics_log().exists() => std::fs::remove_file(run.metrics_log())
            .map_err(|e| TrainError::io(run.metrics_log(), e))?,
        None => {}
    }
    let schedule = config.schedule();
    let progress = Job::start("train", run.root.display(), start_step, config.steps);
    let started = Instant::now();
    let mut last = None;
    let diverged = |step: u64, (loss, lowest, at): (f32, f32, u64)| TrainError::Diverged {
        step,
        loss,
        lowest,
        lowest_step: at,
        factor: config.divergence_factor,
        checkpoint: run.latest_checkpoint().ok().flatten(),
    };
    let mut log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.metrics_log())
        .map_err(|e| TrainError::io(run.metrics_log(), e))?;
    let mut trainable = trainable.clone();
    let mut image_encoder_frozen = false;
    for step in start_step..config.steps {
        let shards = shard::<D, M>(next_batch(step)?, config.shards)?;
        model.set_aux_loss_scale(config.aux_loss_scale(step));
        if !image_encoder_frozen
            && config
                .freeze_image_encoder_from_step
                .is_some_and(|from| step >= from)
        {
            if let Some(pattern) = model.freeze_image_encoder() {
                trainable = trainable.freeze(pattern);
            }
            image_encoder_frozen = true;
        }
        let trainable = &trainable;
        let ShardedStep {
            loss: loss_value,
            parts,
            grads,
        } = sharded_step(model, trainable, &shards)?;
        if !loss_value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step,
                loss: loss_value,
                parts: describe_parts(&parts),
                checkpoint: run.latest_checkpoint().ok().flatten(),
            });
        }
        let watched = step >= config.aux_loss_warmup_steps;
        if let Err(d) = guard.observe_if(watched, step, loss_value) {
            return Err(diverged(step, d));
        }
        let lr = schedule.lr(step);
        let stats = optimizer
            .update_summed(model, &grads, trainable, lr)
            .map_err(|e| TrainError::NonFiniteGradient {
                step,
                message: e.to_string(),
                checkpoint: run.latest_checkpoint().ok().flatten(),
            })?;
        let done = step + 1;
        let elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        let line = LogLine {
            step: done,
            loss: loss_value,
            losses: parts.iter().map(LoggedLoss::from).collect(),
            lr,
            grad_norm: stats.grad_norm,
            elapsed_s,
        };
        if done % config.log_every.max(1) == 0 || done == config.steps {
            let json =
                serde_json::to_string(&line).map_err(|e| TrainError::Invalid(e.to_string()))?;
            writeln!(log_file, "{json}").map_err(|e| TrainError::io(run.metrics_log(), e))?;
            let each: Vec<String> = parts
                .iter()
                .map(|p| format!("{} {:.3}", p.name, p.weighted()))
                .collect();
            progress.note(&format!("loss {loss_value:.3} ({})", each.join(", ")));
        }
        if (config.checkpoint_every > 0 && done % config.checkpoint_every == 0)
            || done == config.steps
        {
            // The updated weights' own loss on this batch, before they may be called good.
            let (check, parts) = sharded_loss(model, &shards)?;
            if !check.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    step: done,
                    loss: check,
                    parts: describe_parts(&parts),
                    checkpoint: run.latest_checkpoint().ok().flatten(),
                });
            }
            if let Err(d) = guard.check(check) {
                return Err(diverged(done, d));
            }
            save_checkpoint(
                model,
                &optimizer,
                run,
                &TrainerState {
                    step: done,
                    elapsed_s,
                    smoothed_loss: guard.smoothed,
                    lowest_loss: guard.lowest,
                },
            )?;
        }
        progress.set(done);
        last = Some(line);
    }
    progress.finish();
    if last.is_none() {
        // Resumed at the end (e.g. killed during the evaluation that follows): the last step
        // is in the log.
        last = read_log(&run.metrics_log())?
            .into_iter()
            .rfind(|l| l.step == config.steps);
    }
    Ok(TrainReport {
        steps_run: config.steps - start_step,
        resumed_from,
        wall_s: last.as_ref().map_or(elapsed_before, |l| l.elapsed_s),
        last,
    })
}

/// `batch` as `shards` batches (itself when 1).
fn shard<D: Device<f32>, M: TrainStep<D>>(batch: M::Batch, shards: usize) -> Result<Vec<M::Batch>> {
    if shards == 1 {
        return Ok(vec![batch]);
    }
    M::split_batch(&batch, shards).ok_or_else(|| TrainError::Config {
        key: "train.shards".into(),
        message: format!(
            "this batch does not split into {shards} shards (fewer examples than shards, or a loss over the whole batch); use 1"
        ),
    })
}

/// One data-parallel step's loss (the mean of the shards'), its parts, and each shard's
/// gradient of its loss divided by the number of shards (their sum is the step's gradient).
pub struct ShardedStep<D: Device<f32>> {
    pub loss: f32,
    pub parts: LossParts,
    pub grads: Vec<Gradients<f32, D>>,
}

/// A training step's forward and backward passes as [`train`] runs them, without the update:
/// `batch` split into `shards` (1: the whole batch on this thread), each shard's loss and
/// gradients on its own thread.
pub fn forward_backward<D: Device<f32>, M: TrainStep<D> + ThreadSafe>(
    model: &mut M,
    trainable: &Trainable,
    batch: M::Batch,
    shards: usize,
) -> Result<ShardedStep<D>>
where
    M::Batch: ThreadSafe,
    Gradients<f32, D>: ThreadSafe,
{
    let shards = shard::<D, M>(batch, shards)?;
    sharded_step(model, trainable, &shards)
}

/// Runs the shards' forward and backward passes: shard 0 on this thread, every other on its own.
fn sharded_step<D: Device<f32>, M: TrainStep<D> + ThreadSafe>(
    model: &mut M,
    trainable: &Trainable,
    shards: &[M::Batch],
) -> Result<ShardedStep<D>>
where
    M::Batch: ThreadSafe,
    Gradients<f32, D>: ThreadSafe,
{
    let slots = shards
        .iter()
        .map(|_| alloc_grads(model, trainable))
        .collect::<pixel_core::Result<Vec<_>>>()?;
    let model = &*model;
    let scale = 1.0 / shards.len() as f32;
    let run = |batch: &M::Batch, grads| -> Result<(f32, LossParts, Gradients<f32, D>)> {
        let (loss, parts) = model.loss(batch, grads)?;
        let value = loss.as_vec()[0];
        Ok((value, parts, (loss * scale).backward()))
    };
    let results = run_shards(shards.iter().zip(slots).collect(), &run);
    let mut total = 0.0;
    let mut parts = Vec::with_capacity(results.len());
    let mut grads = Vec::with_capacity(results.len());
    for result in results {
        let (value, p, g) = result?;
        total += value * scale;
        parts.push(p);
        grads.push(g);
    }
    Ok(ShardedStep {
        loss: total,
        parts: mean_parts(&parts),
        grads,
    })
}

/// `run` on every job, in job order: the first on this thread, every other on its own.
#[cfg(not(feature = "cuda"))]
fn run_shards<B: ThreadSafe, G: Send, R: Send>(
    jobs: Vec<(&B, G)>,
    run: &(impl Fn(&B, G) -> R + ThreadSafe),
) -> Vec<R> {
    std::thread::scope(|scope| {
        let mut jobs = jobs.into_iter();
        let first = jobs.next();
        let others: Vec<_> = jobs
            .map(|(batch, grads)| scope.spawn(move || run(batch, grads)))
            .collect();
        let mut results = Vec::with_capacity(others.len() + 1);
        if let Some((batch, grads)) = first {
            results.push(run(batch, grads));
        }
        for handle in others {
            // A panic in a shard is a bug: raise it here as it was raised there.
            results.push(
                handle
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            );
        }
        results
    })
}

/// `run` on every job, in job order, one after another: dfdx's CUDA device cannot be shared
/// between threads, and the GPU runs the shards' kernels in turn anyway.
#[cfg(feature = "cuda")]
fn run_shards<B, G, R>(jobs: Vec<(&B, G)>, run: &impl Fn(&B, G) -> R) -> Vec<R> {
    jobs.into_iter()
        .map(|(batch, grads)| run(batch, grads))
        .collect()
}

/// The mean of the shards' losses and parts, without gradients.
fn sharded_loss<D: Device<f32>, M: TrainStep<D>>(
    model: &M,
    shards: &[M::Batch],
) -> Result<(f32, LossParts)> {
    let scale = 1.0 / shards.len() as f32;
    let mut total = 0.0;
    let mut parts = Vec::with_capacity(shards.len());
    for batch in shards {
        let (loss, p) = model.loss(batch, Gradients::leaky())?;
        total += loss.as_vec()[0] * scale;
        parts.push(p);
    }
    Ok((total, mean_parts(&parts)))
}

fn save_checkpoint<D: Device<f32>, M: Params<D>>(
    model: &mut M,
    optimizer: &AdamW,
    run: &RunDir,
    state: &TrainerState,
) -> Result<()> {
    let name = checkpoint_name(state.step);
    let dir = run.checkpoints().join(&name);
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    save_params(model, &dir.join("model.safetensors"), HashMap::new())?;
    optimizer
        .state()
        .write(&dir.join("optimizer.safetensors"))?;
    let state_json =
        serde_json::to_vec_pretty(state).map_err(|e| TrainError::Invalid(e.to_string()))?;
    write_atomic(&dir.join("trainer_state.json"), &state_json)?;
    write_atomic(&run.latest_pointer(), name.as_bytes())?;
    // Every other checkpoint folder this trainer named, half-deleted ones included.
    for (step, old) in run.checkpoint_folders()? {
        if step != state.step {
            std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
        }
    }
    Ok(())
}

fn load_checkpoint<D: Device<f32>, M: Params<D>>(
    model: &mut M,
    optimizer: &mut AdamW,
    dir: &Path,
) -> Result<TrainerState> {
    let state_path = dir.join("trainer_state.json");
    let text =
        pixel_core::text::read_text(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| TrainError::Format {
        path: state_path.clone(),
        message: e.to_string(),
    })?;
    // A run names its checkpoints `step-NNNNNNN` after the step they hold; a state that says
    // otherwise was edited or copied in, and resuming from it would repeat or skip steps.
    let named = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("step-"))
        .and_then(|n| n.parse::<u64>().ok());
    if named.is_some_and(|step| step != state.step) {
        return Err(TrainError::Format {
            path: state_path,
            message: format!(
                "says step {} but its folder is {}; the checkpoint was not written by this run as it is (remove it, or point `latest` at another)",
                state.step,
                dir.display()
            ),
        });
    }
    let store = TensorStore::read(&dir.join("model.safetensors"))?;
    load_params(model, &store, "", &LoadOptions::strict())?;
    optimizer.load_state(&TensorStore::read(&dir.join("optimizer.safetensors"))?)?;
    Ok(state)
}

/// Loads the model weights of the newest checkpoint of `run` (for evaluation).
pub fn load_latest_weights<D: Device<f32>, M: Params<D>>(
    model: &mut M,
    run: &RunDir,
) -> Result<u64> {
    let dir = run.latest_checkpoint()?.ok_or_else(|| {
        TrainError::Invalid(format!("no checkpoint in {}", run.checkpoints().display()))
    })?;
    let mut optimizer = AdamW::new(AdamWConfig::default());
    Ok(load_checkpoint(model, &mut optimizer, &dir)?.step)
}

/// Reads `metrics.jsonl`. A last line without its newline that does not parse is a write the
/// run did not finish (killed mid-line) and is dropped; any other bad line is an error.
pub fn read_log(path: &Path) -> Result<Vec<LogLine>> {
    let text = pixel_core::text::read_text(path).map_err(|e| TrainError::io(path, e))?;
    let torn_tail = !text.is_empty() && !text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut parsed = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(l) => parsed.push(l),
            Err(_) if torn_tail && i + 1 == lines.len() => {}
            Err(e) => {
                return Err(TrainError::Format {
                    path: path.to_path_buf(),
                    message: format!("line {}: {e}", i + 1),
                })
            }
        }
    }
    Ok(parsed)
}

/// Drops log lines past `step`, which a resumed run will write again.
fn truncate_log(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let kept: Vec<String> = read_log(path)?
        .into_iter()
        .filter(|l| l.step <= step)
        .map(|l| serde_json::to_string(&l).unwrap_or_default())
        .collect();
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    write_atomic(path, text.as_bytes()).map_err(TrainError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_core::loss::masked_l1;
    use pixel_core::nn::Linear;
    use pixel_core::params::{ParamTensor, ParamVisitor};

    /// A linear regressor whose targets can be poisoned with NaN.
    struct Regressor {
        layer: Linear<Const<4>, Const<1>, Cpu>,
        dev: Cpu,
    }

    impl Params<Cpu> for Regressor {
        fn visit_params(
            &mut self,
            prefix: &str,
            v: &mut dyn ParamVisitor<Cpu>,
        ) -> pixel_core::Result<()> {
            self.layer
                .visit_params(&pixel_core::params::join(prefix, "layer"), v)
        }
    }

    impl TrainStep<Cpu> for Regressor {
        type Batch = (Vec<f32>, Vec<f32>);

        fn loss(
            &self,
            batch: &Self::Batch,
            grads: Gradients<f32, Cpu>,
        ) -> Result<(TapedScalar<Cpu>, LossParts)> {
            let n = batch.1.len();
            let x = self
                .dev
                .tensor_from_vec(batch.0.clone(), (1, n, Const::<4>));
            let y = self.layer.forward(x.traced(grads));
            let loss = masked_l1(y, &batch.1, &vec![1.0; n])?;
            let value = loss.array();
            Ok((loss, vec![LossPart::new("squared_error", value, 1.0)]))
        }

        fn split_batch(batch: &Self::Batch, shards: usize) -> Option<Vec<Self::Batch>> {
            let rows: Vec<(Vec<f32>, f32)> = batch
                .0
                .chunks(4)
                .map(<[f32]>::to_vec)
                .zip(batch.1.iter().copied())
                .collect();
            let shards = split_evenly(&rows, shards)?;
            Some(
                shards
                    .into_iter()
                    .map(|rows| rows.into_iter().unzip())
                    .map(|(x, y): (Vec<Vec<f32>>, Vec<f32>)| (x.concat(), y))
                    .collect(),
            )
        }
    }

    fn regressor() -> Regressor {
        let dev = Cpu::seed_from_u64(7);
        Regressor {
            layer: Linear::new(&dev, true),
            dev,
        }
    }

    fn batch(step: u64, poison_at: Option<u64>) -> Result<(Vec<f32>, Vec<f32>)> {
        let x: Vec<f32> = (0..32 * 4)
            .map(|i| (((i as u64 * 2654435761 + step * 40503) % 1000) as f32 / 500.0) - 1.0)
            .collect();
        let y = x
            .chunks(4)
            .map(|r| {
                if Some(step) == poison_at {
                    f32::NAN
                } else {
                    r[0] - r[1] + 0.5 * r[3]
                }
            })
            .collect();
        Ok((x, y))
    }

    /// A fresh regressor trained in `run` for `steps` clean steps.
    fn train_fresh(run: &RunDir, steps: u64, resume: bool) -> Result<TrainReport> {
        train(
            &mut regressor(),
            &Trainable::all(),
            &config(steps),
            run,
            resume,
            |s| batch(s, None),
        )
    }

    /// Clean batches until `step`, where the batch source fails as a killed run would stop.
    fn killed_at(step: u64) -> impl FnMut(u64) -> Result<(Vec<f32>, Vec<f32>)> {
        move |s| {
            if s == step {
                Err(TrainError::Invalid("killed".into()))
            } else {
                batch(s, None)
            }
        }
    }

    fn config(steps: u64) -> TrainConfig {
        TrainConfig {
            steps,
            peak_lr: 0.05,
            warmup_steps: 5,
            checkpoint_every: 20,
            log_every: 1,
            optimizer: AdamWConfig {
                weight_decay: 0.0,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn loss_falls_and_the_log_has_every_step() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut model = regressor();
        let report = train(
            &mut model,
            &Trainable::all(),
            &config(60),
            &run,
            false,
            |s| batch(s, None),
        )
        .unwrap();
        let log = read_log(&run.metrics_log()).unwrap();
        assert_eq!(log.len(), 60);
        assert!(
            report.last.unwrap().loss < log[0].loss / 5.0,
            "{:?} -> {:?}",
            log[0],
            log[59]
        );
    }

    #[test]
    fn auxiliary_losses_ramp_in_over_the_warmup() {
        let config = TrainConfig {
            aux_loss_warmup_steps: 4,
            ..config(10)
        };
        let scales: Vec<f32> = (0..6).map(|s| config.aux_loss_scale(s)).collect();
        assert_eq!(scales, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        assert_eq!(TrainConfig::default().aux_loss_scale(0), 1.0);
    }

    #[test]
    fn split_evenly_keeps_order_and_balances_lengths() {
        let runs = split_evenly(&[1, 2, 3, 4, 5, 6, 7], 3).unwrap();
        assert_eq!(runs, vec![vec![1, 2, 3], vec![4, 5], vec![6, 7]]);
        assert!(split_evenly(&[1, 2], 3).is_none());
        assert!(split_evenly(&[1, 2], 0).is_none());
    }

    #[test]
    fn a_data_parallel_run_trains_as_one_thread_does() {
        // Equal shards of a mean loss: the mean of the shards' losses is the batch loss, so
        // four threads must reach the weights one thread reaches.
        let weights = |shards: usize| {
            let dir = tempfile::tempdir().unwrap();
            let mut model = regressor();
            let report = train(
                &mut model,
                &Trainable::all(),
                &TrainConfig {
                    shards,
                    ..config(30)
                },
                &RunDir::new(dir.path()),
                false,
                |s| batch(s, None),
            )
            .unwrap();
            (model.layer.weight.values(), report.last.unwrap().loss)
        };
        let (one, loss_one) = weights(1);
        let (four, loss_four) = weights(4);
        assert!(
            (loss_one - loss_four).abs() < 1e-5,
            "{loss_one} vs {loss_four}"
        );
        for (a, b) in one.iter().zip(&four) {
            assert!((a - b).abs() < 1e-5, "{one:?} vs {four:?}");
        }
    }

    #[test]
    fn a_batch_that_does_not_split_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = train(
            &mut regressor(),
            &Trainable::all(),
            &TrainConfig {
                shards: 33,
                ..config(3)
            },
            &RunDir::new(dir.path()),
            false,
            |s| batch(s, None),
        )
        .unwrap_err();
        assert!(
            matches!(&err, TrainError::Config { key, .. } if key == "train.shards"),
            "{err}"
        );
    }

    #[test]
    fn resumed_run_equals_uninterrupted_run() {
        let dir_a = tempfile::tempdir().unwrap();
        let mut straight = regressor();
        train(
            &mut straight,
            &Trainable::all(),
            &config(60),
            &RunDir::new(dir_a.path()),
            false,
            |s| batch(s, None),
        )
        .unwrap();

        let dir_b = tempfile::tempdir().unwrap();
        let run_b = RunDir::new(dir_b.path());
        let mut first = regressor();
        let interrupted = train(
            &mut first,
            &Trainable::all(),
            &config(60),
            &run_b,
            false,
            killed_at(45),
        );
        assert!(interrupted.is_err());
        let mut second = regressor();
        let report = train(
            &mut second,
            &Trainable::all(),
            &config(60),
            &run_b,
            true,
            |s| batch(s, None),
        )
        .unwrap();
        assert_eq!(report.resumed_from, Some(40));
        assert_eq!(second.layer.weight.values(), straight.layer.weight.values());
        let steps: Vec<u64> = read_log(&run_b.metrics_log())
            .unwrap()
            .iter()
            .map(|l| l.step)
            .collect();
        assert_eq!(steps, (1..=60).collect::<Vec<_>>());
    }

    #[test]
    fn shards_average_loss_parts_by_name_and_a_missing_part_counts_as_zero() {
        let mean = mean_parts(&[
            vec![
                LossPart::new("text", 1.0, 1.0),
                LossPart::new("point", 4.0, 0.1),
            ],
            vec![LossPart::new("text", 3.0, 1.0)],
        ]);
        assert_eq!(
            mean,
            [
                LossPart::new("text", 2.0, 1.0),
                LossPart::new("point", 2.0, 0.1)
            ]
        );
        assert!((mean[1].weighted() - 0.2).abs() < 1e-7);
    }

    #[test]
    fn a_log_line_from_before_named_parts_still_reads() {
        let old = r#"{"step":3,"loss":2.5,"text_loss":2.0,"location_loss":5.0,"lr":0.001,"grad_norm":1.5,"elapsed_s":0.3}"#;
        let line: LogLine = serde_json::from_str(old).unwrap();
        assert_eq!(line.part("text").unwrap().weighted, 2.0);
        let location = line.part("location").unwrap();
        assert_eq!(location.unweighted, 5.0);
        assert!(
            (location.weighted - 0.5).abs() < 1e-6,
            "the total less the text loss"
        );
        assert!((location.weight - 0.1).abs() < 1e-6);
        let new: LogLine = serde_json::from_str(&serde_json::to_string(&line).unwrap()).unwrap();
        assert_eq!(new.part("text"), line.part("text"));
        let neither = r#"{"step":3,"loss":2.5,"lr":0.001,"grad_norm":1.5,"elapsed_s":0.3}"#;
        let err = serde_json::from_str::<LogLine>(neither).unwrap_err();
        assert!(err.to_string().contains("losses"), "{err}");
    }

    #[test]
    fn nan_loss_stops_with_the_last_good_checkpoint_intact() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut model = regressor();
        let err = train(
            &mut model,
            &Trainable::all(),
            &config(60),
            &run,
            false,
            |s| batch(s, Some(45)),
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("NaN at step 45"), "{message}");
        assert!(message.contains("step-0000040"), "{message}");
        let mut restored = regressor();
        assert_eq!(load_latest_weights(&mut restored, &run).unwrap(), 40);
    }

    #[test]
    fn a_diverging_run_stops_before_it_writes_a_poisoned_checkpoint() {
        // Caught by the check before a checkpoint, and by the running guard between them.
        for (peak_lr, checkpoint_every) in [(1e9, 1), (10.0, 1), (1e9, 20)] {
            let dir = tempfile::tempdir().unwrap();
            let run = RunDir::new(dir.path());
            let mut model = regressor();
            let mut c = config(60);
            c.peak_lr = peak_lr;
            c.warmup_steps = 0;
            c.checkpoint_every = checkpoint_every;
            c.optimizer.clip_grad_norm = None;
            let err = train(&mut model, &Trainable::all(), &c, &run, false, |s| {
                batch(s, None)
            })
            .unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with("training diverged at step "),
                "lr {peak_lr}: {message}"
            );
            // Whatever was written holds the weights of a loss within the bound.
            if let Some(dir) = run.latest_checkpoint().unwrap() {
                let mut restored = regressor();
                let step = load_latest_weights(&mut restored, &run).unwrap();
                let (loss, _) = restored
                    .loss(&batch(step - 1, None).unwrap(), Gradients::leaky())
                    .unwrap();
                assert!(
                    loss.as_vec()[0] < 10.0,
                    "lr {peak_lr}: {} in {dir:?}",
                    loss.as_vec()[0]
                );
                assert!(message.contains(&checkpoint_name(step)), "{message}");
            }
        }
    }

    #[test]
    fn the_run_deletes_only_checkpoint_folders_it_named() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let other = dir.path().join("other-run/checkpoints/step-0000001");
        std::fs::create_dir_all(&other).unwrap();
        train_fresh(&run, 20, false).unwrap();
        // Pointers that reach outside the run, name nothing, or name what it did not write.
        for bad in [
            "../../other-run/checkpoints/step-0000001",
            "",
            "  ",
            "step-1",
            "step-00000x1",
            "/tmp",
        ] {
            std::fs::write(run.checkpoints().join("latest"), bad).unwrap();
            let err = run.latest_checkpoint().unwrap_err().to_string();
            assert!(
                err.contains("not a checkpoint folder of this run"),
                "{bad:?}: {err}"
            );
            let err = train_fresh(&run, 40, true).unwrap_err();
            assert!(err.to_string().contains("latest"), "{err}");
        }
        // A fresh run over the tampered folder writes its own checkpoints and removes only its
        // own names: a half-deleted old step folder goes, foreign folders and files stay.
        std::fs::create_dir_all(run.checkpoints().join("step-0000007")).unwrap();
        std::fs::create_dir_all(run.checkpoints().join("notes")).unwrap();
        std::fs::write(run.checkpoints().join("step-0000009.txt"), "keep").unwrap();
        train_fresh(&run, 20, false).unwrap();
        assert!(other.exists());
        let mut names: Vec<String> = std::fs::read_dir(run.checkpoints())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["latest", "notes", "step-0000009.txt", "step-0000020"]
        );
        assert_eq!(checkpoint_step("step-0000020"), Some(20));
        assert_eq!(checkpoint_step("step-12345678"), Some(12345678));
        assert_eq!(checkpoint_step("step-+000020"), None);
    }

    #[test]
    fn resume_bookkeeping_keeps_one_line_per_step_and_the_run_totals() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let all = |run: &RunDir| -> Vec<u64> {
            read_log(&run.metrics_log())
                .unwrap()
                .iter()
                .map(|l| l.step)
                .collect()
        };
        // A resume with no checkpoint starts over, log included.
        let _ = train(
            &mut regressor(),
            &Trainable::all(),
            &config(60),
            &run,
            false,
            killed_at(15),
        );
        assert_eq!(all(&run), (1..=15).collect::<Vec<_>>());
        let report = train_fresh(&run, 60, true).unwrap();
        assert_eq!((report.resumed_from, report.steps_run), (None, 60));
        assert_eq!(all(&run), (1..=60).collect::<Vec<_>>());
        let full = report.last.clone().unwrap();

        // Killed mid-line while logging: the torn tail is dropped on resume.
        let mut log = pixel_core::text::read_text(&run.metrics_log()).unwrap();
        log.push_str("{\"step\":61,\"loss\":0.");
        std::fs::write(run.metrics_log(), &log).unwrap();
        // Resumed at the end (killed during the evaluation after training): nothing to run,
        // and the report still has the last step and the whole run's training time.
        let report = train_fresh(&run, 60, true).unwrap();
        assert_eq!((report.resumed_from, report.steps_run), (Some(60), 0));
        assert_eq!(report.last.as_ref(), Some(&full));
        assert_eq!(report.wall_s, full.elapsed_s);
        assert_eq!(all(&run), (1..=60).collect::<Vec<_>>());

        // A resume with fewer steps than the run has done is refused.
        let err = train_fresh(&run, 40, true).unwrap_err().to_string();
        assert!(
            err.starts_with("train.steps: the run in") && err.contains("at step 60"),
            "{err}"
        );

        // A bad line that is not a torn tail is an error naming the line.
        std::fs::write(run.metrics_log(), "{\"step\":1}\nnot json\n").unwrap();
        let err = read_log(&run.metrics_log()).unwrap_err().to_string();
        assert!(err.contains("line 1") || err.contains("line 2"), "{err}");
    }
}
