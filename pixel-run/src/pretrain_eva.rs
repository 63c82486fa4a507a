//! EVA02 pretraining by region-phrase alignment, as the paper starts from an EVA02 that has
//! learned image-text alignment (EVA-CLIP).
//!
//! CLIP aligns a whole image with its caption; PixelLLM needs features that say what is *where*,
//! so the contrastive pairs here are regions and their phrases (GLIP's and RegionCLIP's
//! choice): the EVA02 features under each object's box, averaged by how much of each grid cell
//! the box covers, against the object's phrase ("large blue square"). The phrase encoder is a
//! mean of learned word embeddings: ShapesLN's phrases are at most four words from a closed
//! vocabulary whose order carries no meaning. Each region is classified among the distinct
//! phrases of its batch (InfoNCE with a fixed temperature; two regions with the same phrase
//! are the same class, not negatives of each other). The metric is held-out retrieval: the
//! fraction of validation regions whose nearest phrase, among every distinct validation phrase,
//! is their own.
//!
//! Cached like the LM's pretraining (`crate::pretrain`): `cache/<preset>-eva-<hash>`.
use crate::error::{Result, RunError};
use dfdx::prelude::*;
use pixel_core::nn::{sincos_2d, Embedding, Linear, Seq};
use pixel_core::params::{join, ParamVisitor, Params, Trainable};
use pixel_data::data_source::SampleSource;
use pixel_data::shapes_ln::{Sample, Split};
use pixel_lm::tokenizer::{T5Tokenizer, EOS_ID};
use pixel_model::model::{PixelDims, VocabMap};
use pixel_model::presets::LmVocab;
use pixel_train::{train, LossPart, LossParts, RunDir, TapedScalar, TrainConfig, TrainStep};
use pixel_vision::eva02::Eva02;
use pixel_vision::preprocess::CLIP_NORMALIZATION;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

/// Width of the shared region-phrase embedding space.
pub type AlignWidth = Const<64>;

/// `[pretrain_eva]`: region-phrase alignment of the EVA02 branch before PixelLLM training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaPretrainConfig {
    pub steps: u64,
    /// Images per step; every region of each is an example.
    pub batch_size: usize,
    pub peak_lr: f32,
    #[serde(default = "default_warmup")]
    pub warmup_steps: u64,
    /// Softmax temperature of the cosine similarities (CLIP starts at 0.07).
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Validation images the retrieval accuracy is measured on.
    #[serde(default = "default_eval_images")]
    pub eval_images: u64,
    /// Folder of cached pretrained encoders (relative to the working directory).
    pub cache: PathBuf,
}

fn default_warmup() -> u64 {
    50
}
fn default_temperature() -> f32 {
    0.07
}
fn default_eval_images() -> u64 {
    200
}

impl EvaPretrainConfig {
    /// Checks values no type can rule out, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| {
            Err(RunError::Config {
                key: format!("pretrain_eva.{key}"),
                message,
            })
        };
        if self.steps == 0 {
            return bad("steps", "must be at least 1".into());
        }
        if self.batch_size < 2 {
            return bad(
                "batch_size",
                format!(
                    "must be at least 2 (negatives come from the batch), got {}",
                    self.batch_size
                ),
            );
        }
        if !(self.peak_lr.is_finite() && self.peak_lr > 0.0) {
            return bad("peak_lr", format!("must be positive, got {}", self.peak_lr));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(
                "temperature",
                format!("must be positive, got {}", self.temperature),
            );
        }
        Ok(())
    }

    fn train_config(&self, seed: u64) -> TrainConfig {
        crate::pretrain::stage_train_config(
            self.steps,
            self.batch_size,
            self.peak_lr,
            self.warmup_steps,
            seed,
        )
    }
}

/// EVA02 with a region projection, and a bag-of-words phrase encoder.
#[derive(Debug, Clone)]
pub struct RegionPhraseAligner<P: PixelDims, D: Device<f32>> {
    pub eva: Eva02<P::Eva, D>,
    pub region_projection: Linear<P::Eva, AlignWidth, D>,
    pub word_embeddings: Embedding<LmVocab<P>, AlignWidth, D>,
    pub phrase_projection: Linear<AlignWidth, AlignWidth, D>,
    temperature: f32,
    dev: D,
}

impl<P: PixelDims, D: Device<f32>> RegionPhraseAligner<P, D> {
    /// EVA02 as `PixelLlm::new` starts it (sine-cosine position table), and fresh heads.
    pub fn new(dev: &D, temperature: f32) -> Result<Self> {
        let mut eva = Eva02::new(dev, &P::eva())
            .map_err(|e| RunError::Invalid(format!("image encoder: {e}")))?;
        let grid = ((eva.pos_embed.shape().1 - 1) as f64).sqrt() as usize;
        let mut table = vec![0.0; P::Eva::SIZE];
        table.extend(sincos_2d(grid, grid, P::Eva::SIZE));
        eva.pos_embed.copy_from(&table);
        Ok(RegionPhraseAligner {
            eva,
            region_projection: Linear::new(dev, true),
            word_embeddings: Embedding::new(dev),
            phrase_projection: Linear::new(dev, true),
            temperature,
            dev: dev.clone(),
        })
    }

    /// `[1, R, A]` unit-length region embeddings and `[U, A]` unit-length phrase embeddings.
    fn embed<T: Tape<f32, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        batch: &RegionPhraseBatch,
        tape: T,
    ) -> (Seq<AlignWidth, D, T>, Seq<AlignWidth, D, T>) {
        let s = batch.image_size;
        let pixels = self
            .dev
            .tensor_from_vec(batch.pixels.clone(), (batch.images, 3, s, s))
            .put_tape(tape);
        let tokens = self.eva.feature_map(pixels).tokens;
        let (b, hw, _) = *tokens.shape();
        // [E, B*HW] x [B*HW, R] -> [R, E]: each region's box-weighted mean of its cells.
        let pooling = self
            .dev
            .tensor_from_vec(batch.region_pooling.clone(), (b * hw, batch.regions));
        let regions = tokens
            .reshape_like(&(b * hw, P::Eva::default()))
            .permute::<_, Axes2<1, 0>>()
            .matmul(pooling)
            .permute::<_, Axes2<1, 0>>()
            .reshape_like(&(1, batch.regions, P::Eva::default()));
        let regions = unit_length(self.region_projection.forward(regions));

        let (words, words_tape) = self
            .word_embeddings
            .forward::<T>(
                self.dev
                    .tensor_from_vec(batch.phrase_tokens.clone(), (1, batch.phrase_tokens.len())),
            )
            .split_tape();
        let (regions, regions_tape) = regions.split_tape();
        let regions = regions.put_tape(regions_tape.merge(words_tape));
        let averaging = self.dev.tensor_from_vec(
            batch.phrase_pooling.clone(),
            (batch.phrase_tokens.len(), batch.phrases),
        );
        let phrases = words
            .retaped::<T>()
            .reshape_like(&(batch.phrase_tokens.len(), AlignWidth::default()))
            .permute::<_, Axes2<1, 0>>()
            .matmul(averaging)
            .permute::<_, Axes2<1, 0>>()
            .reshape_like(&(1, batch.phrases, AlignWidth::default()));
        let phrases = unit_length(self.phrase_projection.forward(phrases));
        (regions, phrases)
    }

    /// `[R, U]` region-phrase similarities divided by the temperature.
    fn logits<T: Tape<f32, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        batch: &RegionPhraseBatch,
        tape: T,
    ) -> Tensor<(usize, usize), f32, D, T> {
        let (regions, phrases) = self.embed(batch, tape);
        let regions = regions.reshape_like(&(batch.regions, AlignWidth::default()));
        let phrases = phrases
            .reshape_like(&(batch.phrases, AlignWidth::default()))
            .permute::<_, Axes2<1, 0>>();
        regions.matmul(phrases) * (1.0 / self.temperature)
    }

    /// Fraction of the batch's regions whose most similar phrase is their own.
    pub fn retrieval_accuracy(&self, batch: &RegionPhraseBatch) -> f32 {
        let logits = self.logits(batch, NoneTape).as_vec();
        let hits = logits
            .chunks(batch.phrases)
            .zip(&batch.targets)
            .filter(|(row, &target)| {
                row.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .is_some_and(|(i, _)| i == target)
            })
            .count();
        hits as f32 / batch.regions.max(1) as f32
    }
}

/// `x / |x|` over the channels of each token.
fn unit_length<C: ConstDim, D: Device<f32>, T: Tape<f32, D>>(x: Seq<C, D, T>) -> Seq<C, D, T> {
    let shape = *x.shape();
    let norm = (x.retaped::<T>().square().sum::<_, Axis<2>>() + 1e-12)
        .sqrt()
        .broadcast_like::<_, Axis<2>>(&shape);
    x / norm
}

impl<P: PixelDims, D: Device<f32>> Params<D> for RegionPhraseAligner<P, D> {
    fn visit_params(
        &mut self,
        prefix: &str,
        v: &mut dyn ParamVisitor<D>,
    ) -> pixel_core::Result<()> {
        self.eva.visit_params(&join(prefix, "eva"), v)?;
        self.region_projection
            .visit_params(&join(prefix, "region_projection"), v)?;
        self.word_embeddings
            .visit_params(&join(prefix, "word_embeddings"), v)?;
        self.phrase_projection
            .visit_params(&join(prefix, "phrase_projection"), v)
    }
}

impl<P: PixelDims, D: Device<f32>> TrainStep<D> for RegionPhraseAligner<P, D> {
    type Batch = RegionPhraseBatch;

    fn loss(
        &self,
        batch: &RegionPhraseBatch,
        grads: Gradients<f32, D>,
    ) -> pixel_train::Result<(TapedScalar<D>, LossParts)> {
        // The tape starts with the slots allocated for the trainable parameters.
        let start: Tensor<(), f32, D> = self.dev.zeros_like(&());
        let (_, tape) = start.traced(grads).split_tape();
        let log_probs = self.logits(batch, tape).log_softmax::<Axis<1>>();
        let targets = self
            .dev
            .tensor_from_vec(batch.targets.clone(), (batch.regions,));
        let loss = log_probs.select(targets).mean().negate();
        let parts = vec![LossPart::new("region_phrase", loss.as_vec()[0], 1.0)];
        Ok((loss, parts))
    }
}

/// Images with their regions, and the distinct phrases of those regions.
#[derive(Debug, Clone)]
pub struct RegionPhraseBatch {
    pub images: usize,
    pub image_size: usize,
    /// `[B, 3, S, S]` with CLIP's normalization.
    pub pixels: Vec<f32>,
    pub regions: usize,
    /// `[B * HW, R]`: column r holds region r's weights over the cells of its image (the
    /// covered fraction of each cell, summing to 1).
    pub region_pooling: Vec<f32>,
    pub phrases: usize,
    /// The distinct phrases' tokens (model ids), one after the other.
    pub phrase_tokens: Vec<usize>,
    /// `[tokens, U]`: column u averages phrase u's tokens.
    pub phrase_pooling: Vec<f32>,
    /// `[R]`: the phrase of each region.
    pub targets: Vec<usize>,
}

impl RegionPhraseBatch {
    /// The regions of `samples` on a `grid x grid` feature map.
    pub fn new(
        samples: &[Sample],
        grid: usize,
        tokenizer: &T5Tokenizer,
        vocab: &VocabMap,
    ) -> Result<Self> {
        let first = samples
            .first()
            .ok_or_else(|| RunError::Invalid("cannot batch zero images".into()))?;
        let s = first.image.width() as usize;
        let cells = grid * grid;
        let mut pixels = Vec::with_capacity(samples.len() * 3 * s * s);
        let mut columns: Vec<Vec<(usize, f32)>> = Vec::new();
        let mut phrase_index: HashMap<&str, usize> = HashMap::new();
        let mut phrase_ids: Vec<Vec<usize>> = Vec::new();
        let mut targets = Vec::new();
        for (b, sample) in samples.iter().enumerate() {
            if sample.image.width() as usize != s || sample.image.height() as usize != s {
                return Err(RunError::Invalid(format!(
                    "region-phrase batches need {s} x {s} images, {} is {:?}",
                    sample.image_id,
                    sample.image.dimensions()
                )));
            }
            for c in 0..3 {
                let (mean, std) = (CLIP_NORMALIZATION.mean[c], CLIP_NORMALIZATION.std[c]);
                pixels.extend(sample.image.pixels().map(|p| (p.0[c] as f32 - mean) / std));
            }
            for region in &sample.regions {
                let weights = cell_coverage(region.bbox, grid);
                let total: f32 = weights.iter().sum();
                if total <= 0.0 {
                    continue;
                }
                columns.push(
                    weights
                        .iter()
                        .enumerate()
                        .filter(|(_, &w)| w > 0.0)
                        .map(|(i, &w)| (b * cells + i, w / total))
                        .collect(),
                );
                let next = phrase_index.len();
                let index = *phrase_index.entry(region.caption.as_str()).or_insert(next);
                if index == phrase_ids.len() {
                    let ids: Vec<usize> = tokenizer
                        .encode(&region.caption)
                        .map_err(|e| RunError::Invalid(e.to_string()))?
                        .into_iter()
                        .filter(|&id| id != EOS_ID)
                        .map(|id| vocab.to_model(id))
                        .collect();
                    if ids.is_empty() {
                        return Err(RunError::Invalid(format!(
                            "{}: a region has an empty phrase",
                            sample.image_id
                        )));
                    }
                    phrase_ids.push(ids);
                }
                targets.push(index);
            }
        }
        let regions = columns.len();
        let mut region_pooling = vec![0.0; samples.len() * cells * regions];
        for (r, column) in columns.iter().enumerate() {
            for &(row, w) in column {
                region_pooling[row * regions + r] = w;
            }
        }
        let phrases = phrase_ids.len();
        let tokens: usize = phrase_ids.iter().map(Vec::len).sum();
        let mut phrase_pooling = vec![0.0; tokens * phrases];
        let mut row = 0;
        for (u, ids) in phrase_ids.iter().enumerate() {
            for _ in ids {
                phrase_pooling[row * phrases + u] = 1.0 / ids.len() as f32;
                row += 1;
            }
        }
        Ok(RegionPhraseBatch {
            images: samples.len(),
            image_size: s,
            pixels,
            regions,
            region_pooling,
            phrases,
            phrase_tokens: phrase_ids.concat(),
            phrase_pooling,
            targets,
        })
    }
}

/// How much of each cell of a `grid x grid` map the normalized box covers, row-major.
pub fn cell_coverage(bbox: [f32; 4], grid: usize) -> Vec<f32> {
    let g = grid as f32;
    let overlap = |lo: f32, hi: f32, i: usize| {
        let (a, b) = (i as f32 / g, (i + 1) as f32 / g);
        (hi.min(b) - lo.max(a)).max(0.0) * g
    };
    let [x0, y0, x1, y1] = bbox;
    (0..grid)
        .flat_map(|r| (0..grid).map(move |c| overlap(y0, y1, r) * overlap(x0, x1, c)))
        .collect()
}

/// Draws the images of pretraining step `step`: deterministic in `(seed, step)`.
fn region_phrase_batch(
    data: &impl SampleSource,
    tokenizer: &T5Tokenizer,
    vocab: &VocabMap,
    grid: usize,
    config: &EvaPretrainConfig,
    seed: u64,
    step: u64,
) -> Result<RegionPhraseBatch> {
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ step.wrapping_mul(0xA076_1D64_78BD_642F));
    let samples = (0..config.batch_size)
        .map(|_| data.load(Split::Train, rng.gen_range(0..data.images(Split::Train))))
        .collect::<pixel_data::Result<Vec<_>>>()?;
    RegionPhraseBatch::new(&samples, grid, tokenizer, vocab)
}

/// `eva-pretrain.json` in a cache folder: written last, so its presence marks a finished run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvaPretrainReport {
    pub config: EvaPretrainConfig,
    pub seed: u64,
    pub preset: String,
    pub first_loss: Option<f32>,
    pub final_loss: Option<f32>,
    /// Held-out region -> phrase top-1 retrieval among every distinct validation phrase.
    pub retrieval_top1: f32,
    pub validation_regions: usize,
    pub validation_phrases: usize,
    pub wall_s: f64,
}

/// The cache folder: `cache/<preset>-eva-<hash>`, the hash over every setting that changes the
/// weights (not the cache path).
pub fn cache_dir(
    config: &EvaPretrainConfig,
    seed: u64,
    preset: &str,
    vocab: &VocabMap,
    data: &serde_json::Value,
) -> PathBuf {
    let mut keyed = config.clone();
    keyed.cache = PathBuf::new();
    let t5_ids: Vec<usize> = (0..vocab.len()).map(|i| vocab.to_t5(i)).collect();
    let key = serde_json::json!({
        "pretrain_eva": keyed, "seed": seed, "preset": preset, "vocab": t5_ids, "data": data
    });
    crate::pretrain::stage_cache_dir(&config.cache, &format!("{preset}-eva"), &key)
}

/// The pretrained EVA02 of preset `P`: from the cache, or trained now (an interrupted run
/// resumes) and cached; `data_key` as in [`crate::pretrain::pretrained_lm`].
pub fn pretrained_eva<P: PixelDims>(
    config: &EvaPretrainConfig,
    data: &impl SampleSource,
    data_key: &serde_json::Value,
    tokenizer: &T5Tokenizer,
    vocab: &VocabMap,
    seed: u64,
) -> Result<(Eva02<P::Eva, pixel_core::DefaultDevice>, EvaPretrainReport)> {
    config.validate()?;
    let dir = cache_dir(config, seed, P::NAME, vocab, data_key);
    let run = RunDir::new(&dir);
    let dev = pixel_core::DefaultDevice::seed_from_u64(seed);
    let mut aligner = RegionPhraseAligner::<P, _>::new(&dev, config.temperature)?;
    let grid = P::eva().grid();
    let report_path = dir.join("eva-pretrain.json");
    if let Some(report) = crate::pretrain::load_finished_stage(&mut aligner, &run, &report_path)? {
        return Ok((aligner.eva, report));
    }
    let report = train(
        &mut aligner,
        &Trainable::all(),
        &config.train_config(seed),
        &run,
        true,
        |step| {
            Ok(region_phrase_batch(
                data, tokenizer, vocab, grid, config, seed, step,
            )?)
        },
    )?;
    let validation = (0..config.eval_images.min(data.images(Split::Validation)))
        .map(|i| data.load(Split::Validation, i))
        .collect::<pixel_data::Result<Vec<_>>>()?;
    let batch = RegionPhraseBatch::new(&validation, grid, tokenizer, vocab)?;
    let log = pixel_train::read_log(&run.metrics_log())?;
    let report = EvaPretrainReport {
        config: config.clone(),
        seed,
        preset: P::NAME.to_string(),
        first_loss: log.first().map(|l| l.loss),
        final_loss: report.last.map(|l| l.loss),
        retrieval_top1: aligner.retrieval_accuracy(&batch),
        validation_regions: batch.regions,
        validation_phrases: batch.phrases,
        wall_s: report.wall_s,
    };
    crate::pretrain::write_stage_report(&report_path, &report)?;
    Ok((aligner.eva, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_core::optim::{alloc_grads, AdamW, AdamWConfig};
    use pixel_data::shapes_ln::{ShapesLn, ShapesLnConfig};
    use pixel_model::model::PixelTiny;

    fn batch(images: u64) -> (RegionPhraseBatch, VocabMap) {
        let tokenizer = T5Tokenizer::bundled().unwrap();
        let words = PixelTiny::vocabulary_words().unwrap();
        let vocab = VocabMap::from_words(&tokenizer, &words, LmVocab::<PixelTiny>::SIZE).unwrap();
        let data = ShapesLn::new(ShapesLnConfig::default(), 0).unwrap();
        let samples: Vec<Sample> = (0..images)
            .map(|i| data.load(Split::Train, i).unwrap())
            .collect();
        let batch = RegionPhraseBatch::new(&samples, 8, &tokenizer, &vocab).unwrap();
        (batch, vocab)
    }

    #[test]
    fn each_region_pools_its_own_image_and_names_its_phrase() {
        let (b, _) = batch(6);
        assert!(b.regions >= 6 && b.phrases <= b.regions);
        for r in 0..b.regions {
            let column: Vec<f32> = (0..b.images * 64)
                .map(|row| b.region_pooling[row * b.regions + r])
                .collect();
            assert!((column.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            let images: std::collections::BTreeSet<usize> = column
                .iter()
                .enumerate()
                .filter(|(_, &w)| w > 0.0)
                .map(|(row, _)| row / 64)
                .collect();
            assert_eq!(images.len(), 1, "region {r} pools cells of several images");
            assert!(b.targets[r] < b.phrases);
        }
        for u in 0..b.phrases {
            let total: f32 = (0..b.phrase_tokens.len())
                .map(|t| b.phrase_pooling[t * b.phrases + u])
                .sum();
            assert!((total - 1.0).abs() < 1e-5);
        }
    }

    /// A few AdamW steps on one batch: the contrastive loss falls (the gradient path from the
    /// loss to EVA02, the projections and the word embeddings works).
    #[test]
    fn region_phrase_loss_falls_on_a_fixed_batch() {
        let (b, _) = batch(4);
        let dev = pixel_core::DefaultDevice::seed_from_u64(0);
        let mut model = RegionPhraseAligner::<PixelTiny, _>::new(&dev, 0.07).unwrap();
        let trainable = Trainable::all();
        let mut optimizer = AdamW::new(AdamWConfig::default());
        let mut losses = Vec::new();
        for _ in 0..25 {
            let grads = alloc_grads(&mut model, &trainable).unwrap();
            let (loss, parts) = model.loss(&b, grads).unwrap();
            losses.push(parts[0].value);
            optimizer
                .update(&mut model, &loss.backward(), &trainable, 2e-3)
                .unwrap();
        }
        assert!(losses[24] < 0.5 * losses[0], "{losses:?}");
        assert!(model.retrieval_accuracy(&b) > 0.5);
    }

    #[test]
    fn cell_coverage_sums_to_the_box_area_in_cells() {
        let w = cell_coverage([0.1, 0.2, 0.6, 0.45], 8);
        let total: f32 = w.iter().sum();
        assert!((total - 0.5 * 0.25 * 64.0).abs() < 1e-4, "{total}");
        // A box inside one cell covers only that cell.
        let one = cell_coverage([0.13, 0.13, 0.24, 0.24], 8);
        assert_eq!(one.iter().filter(|&&v| v > 0.0).count(), 1);
        assert!(one[9] > 0.0);
    }
}
