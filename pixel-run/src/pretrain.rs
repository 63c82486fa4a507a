//! Language-model pretraining: T5 span corruption on ShapesLN captions and referring expressions.
//!
//! The paper adapts a *pretrained* Flan-T5 (frozen, with LoRA); a randomly initialised tiny T5
//! that stays frozen can only pass its random features through, so the frozen-LM and LoRA
//! ablations say nothing without this step. T5's objective (Raffel et al. 2020, `span_corruption`
//! in t5.data.preprocessors): about 15% of the tokens, in spans of mean length 3, are replaced in
//! the input by one sentinel per span (`<extra_id_0>`, `<extra_id_1>`, ...); the target lists
//! each sentinel followed by the tokens it replaced, then EOS.
//!
//! A pretrained LM is cached under `pretrain.cache` in a folder named by a hash of the pretrain
//! settings, the seed, the preset and the sub-vocabulary, so the variants and seeds of an
//! ablation that share them pretrain once.
use crate::error::{Result, RunError};
use dfdx::prelude::*;
use pixel_core::checkpoint::write_atomic;
use pixel_core::loss::label_smoothed_cross_entropy;
use pixel_core::optim::AdamWConfig;
use pixel_core::params::{ParamVisitor, Params, Trainable};
use pixel_data::data_source::SampleSource;
use pixel_data::shapes_ln::Split;
use pixel_lm::presets::T5Dims;
use pixel_lm::t5::T5;
use pixel_lm::tokenizer::{T5Tokenizer, EOS_ID, PAD_ID};
use pixel_model::model::{LmMode, PixelDims, PixelLlm, VocabMap};
use pixel_model::vocab::SENTINELS;
use pixel_train::{
    load_latest_weights, train, LossPart, LossParts, RunDir, TapedScalar, TrainConfig, TrainStep,
};
use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[pretrain]`: denoising pretraining of the language model before PixelLLM training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub peak_lr: f32,
    #[serde(default = "default_warmup")]
    pub warmup_steps: u64,
    /// Fraction of tokens corrupted (T5: 0.15).
    #[serde(default = "default_noise_density")]
    pub noise_density: f32,
    /// Mean length of a corrupted span (T5: 3).
    #[serde(default = "default_mean_span_length")]
    pub mean_span_length: f32,
    /// Sequences are cut to this many tokens before corruption.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Denoise referring expressions as well as captions.
    #[serde(default = "default_true")]
    pub referring_expressions: bool,
    /// Folder of cached pretrained LMs (relative to the working directory).
    pub cache: PathBuf,
}

fn default_warmup() -> u64 {
    50
}
fn default_noise_density() -> f32 {
    0.15
}
fn default_mean_span_length() -> f32 {
    3.0
}
fn default_max_tokens() -> usize {
    40
}
fn default_true() -> bool {
    true
}

impl PretrainConfig {
    /// Checks values no type can rule out, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| {
            Err(RunError::Config {
                key: format!("pretrain.{key}"),
                message,
            })
        };
        if self.steps == 0 {
            return bad("steps", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if !(self.noise_density > 0.0 && self.noise_density < 1.0) {
            return bad(
                "noise_density",
                format!("must be in (0, 1), got {}", self.noise_density),
            );
        }
        if self.mean_span_length.is_nan() || self.mean_span_length < 1.0 {
            return bad(
                "mean_span_length",
                format!("must be >= 1, got {}", self.mean_span_length),
            );
        }
        if self.max_tokens < 2 {
            return bad(
                "max_tokens",
                format!("must be >= 2, got {}", self.max_tokens),
            );
        }
        if !(self.peak_lr.is_finite() && self.peak_lr > 0.0) {
            return bad("peak_lr", format!("must be positive, got {}", self.peak_lr));
        }
        Ok(())
    }

    fn train_config(&self, seed: u64) -> TrainConfig {
        stage_train_config(
            self.steps,
            self.batch_size,
            self.peak_lr,
            self.warmup_steps,
            seed,
        )
    }
}

/// One span-corrupted sequence, in model ids (sentinels included).
#[derive(Debug, Clone, PartialEq)]
pub struct Corrupted {
    /// The kept tokens with one sentinel per dropped span, then EOS.
    pub inputs: Vec<usize>,
    /// Each sentinel followed by the tokens it replaced, then EOS.
    pub targets: Vec<usize>,
}

/// Which of `len` tokens are noise: T5's `random_spans_noise_mask`. `round(len * density)`
/// noise tokens (at least 1, at most `len - 1`) in `round(noise / mean_span)` spans (at least 1,
/// at most `max_spans`), the lengths of noise and kept spans drawn as random positive
/// partitions and interleaved starting with a kept span.
pub fn noise_mask(
    len: usize,
    density: f32,
    mean_span_length: f32,
    max_spans: usize,
    rng: &mut impl Rng,
) -> Vec<bool> {
    if len < 2 {
        return vec![false; len];
    }
    let noise = ((len as f32 * density).round() as usize).clamp(1, len - 1);
    let spans = ((noise as f32 / mean_span_length).round() as usize)
        .clamp(1, max_spans.max(1))
        .min(noise)
        .min(len - noise);
    let noise_lengths = random_partition(noise, spans, rng);
    let kept_lengths = random_partition(len - noise, spans, rng);
    let mut mask = Vec::with_capacity(len);
    for (kept, dropped) in kept_lengths.into_iter().zip(noise_lengths) {
        mask.extend(std::iter::repeat_n(false, kept));
        mask.extend(std::iter::repeat_n(true, dropped));
    }
    mask
}

/// `total` split into `parts` positive lengths, uniformly over the compositions.
fn random_partition(total: usize, parts: usize, rng: &mut impl Rng) -> Vec<usize> {
    let mut cuts = rand::seq::index::sample(rng, total - 1, parts - 1).into_vec();
    cuts.iter_mut().for_each(|c| *c += 1);
    cuts.sort_unstable();
    let mut lengths = Vec::with_capacity(parts);
    let mut previous = 0;
    for cut in cuts.into_iter().chain([total]) {
        lengths.push(cut - previous);
        previous = cut;
    }
    lengths
}

/// Span-corrupts `tokens` (model ids, no EOS); `sentinels[k]` is the model id of `<extra_id_k>`.
pub fn span_corrupt(
    tokens: &[usize],
    density: f32,
    mean_span_length: f32,
    sentinels: &[usize],
    rng: &mut impl Rng,
) -> Corrupted {
    let mask = noise_mask(
        tokens.len(),
        density,
        mean_span_length,
        sentinels.len(),
        rng,
    );
    let mut inputs = Vec::new();
    let mut targets = Vec::new();
    let mut span = 0;
    for (i, (&token, &noise)) in tokens.iter().zip(&mask).enumerate() {
        if noise {
            if i == 0 || !mask[i - 1] {
                inputs.push(sentinels[span]);
                targets.push(sentinels[span]);
                span += 1;
            }
            targets.push(token);
        } else {
            inputs.push(token);
        }
    }
    inputs.push(EOS_ID);
    targets.push(EOS_ID);
    Corrupted { inputs, targets }
}

/// A padded batch of corrupted sequences.
#[derive(Debug, Clone)]
pub struct DenoiseBatch {
    pub size: usize,
    pub input_ids: Vec<usize>,
    pub input_mask: Vec<bool>,
    pub decoder_input_ids: Vec<usize>,
    pub target_ids: Vec<usize>,
    pub target_weights: Vec<f32>,
}

impl DenoiseBatch {
    pub fn new(rows: &[Corrupted]) -> Result<DenoiseBatch> {
        if rows.is_empty() {
            return Err(RunError::Invalid("cannot batch zero sequences".into()));
        }
        let input_len = rows.iter().map(|r| r.inputs.len()).max().unwrap_or(1);
        let target_len = rows.iter().map(|r| r.targets.len()).max().unwrap_or(1);
        let mut batch = DenoiseBatch {
            size: rows.len(),
            input_ids: Vec::new(),
            input_mask: Vec::new(),
            decoder_input_ids: Vec::new(),
            target_ids: Vec::new(),
            target_weights: Vec::new(),
        };
        for row in rows {
            let pad = |ids: &[usize], len: usize| {
                let mut v = ids.to_vec();
                v.resize(len, PAD_ID);
                v
            };
            batch.input_ids.extend(pad(&row.inputs, input_len));
            batch
                .input_mask
                .extend((0..input_len).map(|i| i < row.inputs.len()));
            // T5's decoder starts from the pad id and reads the target shifted right.
            let mut shifted = vec![PAD_ID];
            shifted.extend(&row.targets[..row.targets.len() - 1]);
            batch.decoder_input_ids.extend(pad(&shifted, target_len));
            batch.target_ids.extend(pad(&row.targets, target_len));
            batch.target_weights.extend((0..target_len).map(|i| {
                if i < row.targets.len() {
                    1.0
                } else {
                    0.0
                }
            }));
        }
        Ok(batch)
    }
}

/// The denoising objective on a bare T5 (no visual tokens): cross-entropy on the targets.
struct Denoiser<L: T5Dims, D: Device<f32>> {
    lm: T5<L, D>,
}

impl<L: T5Dims, D: Device<f32>> Params<D> for Denoiser<L, D> {
    fn visit_params(
        &mut self,
        prefix: &str,
        v: &mut dyn ParamVisitor<D>,
    ) -> pixel_core::Result<()> {
        self.lm.visit_params(prefix, v)
    }
}

impl<L: T5Dims, D: Device<f32>> TrainStep<D> for Denoiser<L, D> {
    type Batch = DenoiseBatch;

    fn loss(
        &self,
        batch: &DenoiseBatch,
        grads: Gradients<f32, D>,
    ) -> pixel_train::Result<(TapedScalar<D>, LossParts)> {
        let dev = self.lm.device();
        // The tape starts with the slots allocated for the trainable parameters.
        let start: Tensor<(), f32, D> = dev.zeros_like(&());
        let (_, tape) = start.traced(grads).split_tape();
        let embedded = self
            .lm
            .embed_tokens::<OwnedTape<f32, D>>(self.lm.ids(&batch.input_ids, batch.size));
        let (embedded, embed_tape) = embedded.split_tape();
        let encoded = self
            .lm
            .encode_embeds(embedded.put_tape(embed_tape.merge(tape)), &batch.input_mask);
        let hidden = self.lm.decode(
            self.lm.ids(&batch.decoder_input_ids, batch.size),
            encoded,
            &batch.input_mask,
        );
        let loss = label_smoothed_cross_entropy(
            self.lm.lm_logits(hidden),
            &batch.target_ids,
            &batch.target_weights,
            0.0,
        )?;
        let parts = vec![LossPart::new("span_corruption", loss.as_vec()[0], 1.0)];
        Ok((loss, parts))
    }
}

/// Draws the corrupted sequences of pretraining step `step`: deterministic in `(seed, step)`.
pub fn denoising_batch(
    data: &impl SampleSource,
    tokenizer: &T5Tokenizer,
    vocab: &VocabMap,
    config: &PretrainConfig,
    seed: u64,
    step: u64,
) -> Result<DenoiseBatch> {
    let sentinels = sentinel_ids(tokenizer, vocab)?;
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut rows = Vec::with_capacity(config.batch_size);
    while rows.len() < config.batch_size {
        let sample = data.load(Split::Train, rng.gen_range(0..data.images(Split::Train)))?;
        let text =
            if config.referring_expressions && !sample.referring.is_empty() && rng.gen_bool(0.5) {
                sample.referring[rng.gen_range(0..sample.referring.len())]
                    .text
                    .clone()
            } else {
                sample.caption.clone()
            };
        let mut tokens: Vec<usize> = tokenizer
            .encode(&text)
            .map_err(|e| RunError::Invalid(e.to_string()))?
            .into_iter()
            .filter(|&id| id != EOS_ID)
            .map(|id| vocab.to_model(id))
            .collect();
        tokens.truncate(config.max_tokens);
        if tokens.len() < 2 {
            continue;
        }
        rows.push(span_corrupt(
            &tokens,
            config.noise_density,
            config.mean_span_length,
            &sentinels,
            &mut rng,
        ));
    }
    DenoiseBatch::new(&rows)
}

/// Model ids of the sentinels; errors when the sub-vocabulary lacks one.
pub fn sentinel_ids(tokenizer: &T5Tokenizer, vocab: &VocabMap) -> Result<Vec<usize>> {
    SENTINELS
        .iter()
        .map(|piece| {
            let t5 = tokenizer
                .token_to_id(piece)
                .ok_or_else(|| RunError::Invalid(format!("the T5 tokenizer has no `{piece}`")))?;
            let id = vocab.to_model(t5);
            if vocab.to_t5(id) != t5 {
                return Err(RunError::Invalid(format!(
                    "the model's vocabulary lacks the sentinel `{piece}` that pretraining needs"
                )));
            }
            Ok(id)
        })
        .collect()
}

/// `pretrain.json` in a cache folder: written last, so its presence marks a finished pretrain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainReport {
    pub config: PretrainConfig,
    pub seed: u64,
    pub preset: String,
    pub first_loss: Option<f32>,
    pub final_loss: Option<f32>,
    pub wall_s: f64,
}

/// The cache folder of a pretrained LM: `cache/<preset>-<hash>` where the hash covers every
/// setting that changes the weights (not the cache path itself).
pub fn cache_dir(
    config: &PretrainConfig,
    seed: u64,
    preset: &str,
    vocab: &VocabMap,
    data: &serde_json::Value,
) -> PathBuf {
    let mut keyed = config.clone();
    keyed.cache = PathBuf::new();
    let t5_ids: Vec<usize> = (0..vocab.len()).map(|i| vocab.to_t5(i)).collect();
    let key = serde_json::json!({
        "pretrain": keyed, "seed": seed, "preset": preset, "vocab": t5_ids, "data": data
    });
    stage_cache_dir(&config.cache, preset, &key)
}

/// FNV-1a, 64 bit: a hash that is stable across builds (std's `DefaultHasher` is not promised
/// to be), so a cache folder outlives a recompile.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The pretrained language model of preset `P`: loaded from the cache, or trained now (an
/// interrupted pretrain resumes from its last checkpoint) and cached. `data_key` says what
/// `data` holds (see [`crate::experiment::ExperimentConfig::data_key`]): samples from other
/// data are another cache entry.
pub fn pretrained_lm<P: PixelDims>(
    config: &PretrainConfig,
    data: &impl SampleSource,
    data_key: &serde_json::Value,
    tokenizer: &T5Tokenizer,
    vocab: &VocabMap,
    seed: u64,
) -> Result<(T5<P::Lm, pixel_core::DefaultDevice>, PretrainReport)> {
    config.validate()?;
    let dir = cache_dir(config, seed, P::NAME, vocab, data_key);
    let run = RunDir::new(&dir);
    let dev = pixel_core::DefaultDevice::seed_from_u64(seed);
    let lm = T5::new(&dev, &P::language_model())
        .map_err(|e| RunError::Invalid(format!("language model: {e}")))?;
    let mut denoiser = Denoiser { lm };
    let report_path = dir.join("pretrain.json");
    if let Some(report) = load_finished_stage(&mut denoiser, &run, &report_path)? {
        return Ok((denoiser.lm, report));
    }
    sentinel_ids(tokenizer, vocab)?;
    let train_config = config.train_config(seed);
    let report = train(
        &mut denoiser,
        &Trainable::all(),
        &train_config,
        &run,
        true,
        |step| Ok(denoising_batch(data, tokenizer, vocab, config, seed, step)?),
    )?;
    let log = pixel_train::read_log(&run.metrics_log())?;
    let report = PretrainReport {
        config: config.clone(),
        seed,
        preset: P::NAME.to_string(),
        first_loss: log.first().map(|l| l.loss),
        final_loss: report.last.map(|l| l.loss),
        wall_s: report.wall_s,
    };
    write_stage_report(&report_path, &report)?;
    Ok((denoiser.lm, report))
}

/// The optimisation settings every pretraining stage shares: AdamW's defaults, linear warmup
/// then cosine decay to 5%, a log line every 10 steps, one checkpoint at the end.
pub(crate) fn stage_train_config(
    steps: u64,
    batch_size: usize,
    peak_lr: f32,
    warmup_steps: u64,
    seed: u64,
) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size,
        shards: 1,
        aux_loss_warmup_steps: 0,
        freeze_image_encoder_from_step: None,
        peak_lr,
        warmup_steps,
        final_lr_ratio: 0.05,
        optimizer: AdamWConfig::default(),
        log_every: 10,
        checkpoint_every: 0,
        seed,
        divergence_factor: TrainConfig::default().divergence_factor,
    }
}

/// `cache/<name>-<hash>`: a stage's cache folder, `key` holding every setting that changes its
/// weights (not the cache path itself).
pub(crate) fn stage_cache_dir(cache: &Path, name: &str, key: &serde_json::Value) -> PathBuf {
    cache.join(format!("{name}-{:016x}", fnv1a(key.to_string().as_bytes())))
}

/// A finished stage's report, read from `report_path` (written last, so its presence marks the
/// stage finished), with the stage's weights loaded into `model`; `None` when not finished.
pub(crate) fn load_finished_stage<D: Device<f32>, M: Params<D>, R: DeserializeOwned>(
    model: &mut M,
    run: &RunDir,
    report_path: &Path,
) -> Result<Option<R>> {
    if !report_path.exists() {
        return Ok(None);
    }
    load_latest_weights(model, run)?;
    let text =
        pixel_core::text::read_text(report_path).map_err(|e| RunError::io(report_path, e))?;
    let report = serde_json::from_str(&text).map_err(|e| RunError::Format {
        path: report_path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(Some(report))
}

/// Writes a finished stage's report (last, see [`load_finished_stage`]).
pub(crate) fn write_stage_report(report_path: &Path, report: &impl Serialize) -> Result<()> {
    let json = serde_json::to_vec_pretty(report).map_err(|e| RunError::Invalid(e.to_string()))?;
    Ok(write_atomic(report_path, &json)?)
}

/// Puts a pretrained LM into `model`, with fresh LoRA adapters when the model's LM mode is
/// `lora` (the adapters start at B = 0, so the pretrained function is unchanged at step 0).
pub fn install_lm<P: PixelDims>(
    model: &mut PixelLlm<P, pixel_core::DefaultDevice>,
    mut lm: T5<P::Lm, pixel_core::DefaultDevice>,
) {
    if model.config.lm.mode == LmMode::Lora {
        let dev = lm.device();
        lm.add_lora(&dev, model.config.lm.lora_rank, model.config.lm.lora_scale);
    }
    model.language_model = lm;
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_data::shapes_ln::ShapesLn;
    use pixel_model::model::{ModelConfig, TinyPixelLlm};
    use pixel_model::testing::demo_section;

    /// Mean denoising loss of `lm` over `batches`, without training.
    fn denoising_loss<L: T5Dims>(
        lm: &T5<L, pixel_core::DefaultDevice>,
        batches: &[DenoiseBatch],
    ) -> Result<f32> {
        let denoiser = Denoiser { lm: lm.clone() };
        let mut total = 0.0;
        for batch in batches {
            total += denoiser.loss(batch, Gradients::leaky())?.0.array();
        }
        Ok(total / batches.len().max(1) as f32)
    }

    const SENTINEL_IDS: [usize; 8] = [100, 101, 102, 103, 104, 105, 106, 107];

    /// Puts each target span back in place of its sentinel.
    fn reconstruct(c: &Corrupted) -> Vec<usize> {
        let mut spans: Vec<Vec<usize>> = Vec::new();
        for &id in &c.targets[..c.targets.len() - 1] {
            if SENTINEL_IDS.contains(&id) {
                spans.push(Vec::new());
            } else if let Some(span) = spans.last_mut() {
                span.push(id);
            }
        }
        let mut out = Vec::new();
        for &id in &c.inputs[..c.inputs.len() - 1] {
            match SENTINEL_IDS.iter().position(|&s| s == id) {
                Some(k) => out.extend(&spans[k]),
                None => out.push(id),
            }
        }
        out
    }

    #[test]
    fn span_corruption_reconstructs_with_ordered_sentinels_at_t5_density() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut noise, mut total, mut spans) = (0usize, 0usize, 0usize);
        for len in 2..60 {
            for _ in 0..20 {
                let tokens: Vec<usize> = (0..len).map(|_| rng.gen_range(3..90)).collect();
                let c = span_corrupt(&tokens, 0.15, 3.0, &SENTINEL_IDS, &mut rng);
                assert_eq!(reconstruct(&c), tokens, "{c:?}");
                assert_eq!(c.inputs.last(), Some(&EOS_ID));
                assert_eq!(c.targets.last(), Some(&EOS_ID));
                // Sentinels appear as 0, 1, 2, ... in both, the same number of times.
                let order = |ids: &[usize]| -> Vec<usize> {
                    ids.iter()
                        .filter_map(|id| SENTINEL_IDS.iter().position(|s| s == id))
                        .collect()
                };
                let k = order(&c.inputs);
                assert_eq!(k, (0..k.len()).collect::<Vec<_>>());
                assert_eq!(order(&c.targets), k);
                assert_eq!(c.targets.first(), Some(&SENTINEL_IDS[0]));
                let dropped = c.targets.len() - 1 - k.len();
                // round(len * 0.15), at least one token, at most len - 1.
                let expected = ((len as f32 * 0.15).round() as usize).clamp(1, len - 1);
                assert_eq!(dropped, expected, "len {len}");
                noise += dropped;
                total += len;
                spans += k.len();
            }
        }
        let density = noise as f32 / total as f32;
        assert!((density - 0.15).abs() < 0.02, "density {density}");
        let mean_span = noise as f32 / spans as f32;
        assert!((2.0..=3.5).contains(&mean_span), "mean span {mean_span}");
    }

    fn tiny_pretrain(cache: &std::path::Path, steps: u64) -> PretrainConfig {
        PretrainConfig {
            steps,
            batch_size: 8,
            peak_lr: 3e-3,
            warmup_steps: 5,
            noise_density: 0.15,
            mean_span_length: 3.0,
            max_tokens: 40,
            referring_expressions: true,
            cache: cache.to_path_buf(),
        }
    }

    #[test]
    fn pretraining_lowers_the_denoising_loss_and_the_cache_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let data = ShapesLn::new(demo_section("data"), 0).unwrap();
        let data_key = serde_json::json!({ "data": "demo", "seed": 0 });
        let tokenizer = T5Tokenizer::bundled().unwrap();
        let model: ModelConfig = demo_section("model");
        let vocab = TinyPixelLlm::build(&model, 0).unwrap().vocab;
        let config = tiny_pretrain(dir.path(), 60);
        // Held-out batches: another seed than training's.
        let held_out: Vec<DenoiseBatch> = (0..2)
            .map(|step| denoising_batch(&data, &tokenizer, &vocab, &config, 99, step).unwrap())
            .collect();
        let fresh = T5::<<pixel_model::model::PixelTiny as PixelDims>::Lm, _>::new(
            &pixel_core::DefaultDevice::seed_from_u64(3),
            &pixel_model::model::PixelTiny::language_model(),
        )
        .unwrap();
        let before = denoising_loss(&fresh, &held_out).unwrap();
        let (lm, report) = pretrained_lm::<pixel_model::model::PixelTiny>(
            &config, &data, &data_key, &tokenizer, &vocab, 3,
        )
        .unwrap();
        let after = denoising_loss(&lm, &held_out).unwrap();
        assert!(after < 0.7 * before, "denoising loss {before} -> {after}");
        let in_cache = |c: &PretrainConfig, seed| {
            cache_dir(c, seed, "pixel-tiny", &vocab, &data_key)
                .join("pretrain.json")
                .exists()
        };
        assert!(in_cache(&config, 3));

        // The second call loads the cached weights instead of training.
        let (cached, cached_report) = pretrained_lm::<pixel_model::model::PixelTiny>(
            &config, &data, &data_key, &tokenizer, &vocab, 3,
        )
        .unwrap();
        assert_eq!(denoising_loss(&cached, &held_out).unwrap(), after);
        assert_eq!(cached_report.final_loss, report.final_loss);
        // Another seed, setting or data is another cache entry; the cache path is not part of
        // the key.
        assert!(!in_cache(&config, 4));
        assert!(!in_cache(&tiny_pretrain(dir.path(), 61), 3));
        let other_data = serde_json::json!({ "data": "demo", "seed": 1 });
        assert!(!cache_dir(&config, 3, "pixel-tiny", &vocab, &other_data)
            .join("pretrain.json")
            .exists());
        let mut moved = config.clone();
        moved.cache = dir.path().join("elsewhere");
        assert_eq!(
            cache_dir(&moved, 3, "pixel-tiny", &vocab, &data_key).file_name(),
            cache_dir(&config, 3, "pixel-tiny", &vocab, &data_key).file_name()
        );
    }

    #[test]
    fn the_tiny_vocabulary_holds_the_sentinels() {
        let model: ModelConfig = demo_section("model");
        let vocab = TinyPixelLlm::build(&model, 0).unwrap().vocab;
        let tokenizer = T5Tokenizer::bundled().unwrap();
        let ids = sentinel_ids(&tokenizer, &vocab).unwrap();
        assert_eq!(ids.len(), SENTINELS.len());
        assert_eq!(
            tokenizer.encode("<extra_id_0>").unwrap(),
            vec![vocab.to_t5(ids[0]), EOS_ID]
        );
    }
}
