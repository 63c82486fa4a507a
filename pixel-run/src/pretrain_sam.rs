//! SAM pretraining by promptable segmentation, as the paper freezes a SAM that has learned it.
//!
//! The preset's SAM image encoder gets a prompt encoder and a mask decoder at its output width
//! (SAM's own layout, shrunk) and learns to segment one object of each image from a box or a
//! point prompt (boxes on even steps, one point inside the object on odd steps), with SAM's loss:
//! focal (gamma 2, alpha 0.25) and dice on the low-resolution mask, 20 : 1, plus the squared
//! error of the predicted IoU. Only the image encoder is kept, for PixelLLM's frozen branch; its
//! metric is the mean IoU of held-out prompts' masks. Cached like the LM's pretraining
//! (`crate::pretrain`): `cache/<preset>-sam-<hash>`.
use crate::error::{Result, RunError};
use dfdx::prelude::*;
use pixel_core::nn::sincos_2d;
use pixel_core::params::{ParamVisitor, Params, Trainable};
use pixel_data::data_source::SampleSource;
use pixel_data::shapes_ln::{Sample, Split};
use pixel_model::heads::mask::area_average;
use pixel_model::model::PixelDims;
use pixel_train::{train, LossPart, LossParts, RunDir, TapedScalar, TrainConfig, TrainStep};
use pixel_vision::preprocess::SAM_NORMALIZATION;
use pixel_vision::sam::{
    MaskPrediction, SamConfig, SamImageEncoder, SamMaskDecoderConfig, SamModel,
    SamPromptEncoderConfig, SamPrompts,
};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[pretrain_sam]`: promptable segmentation of the SAM branch before PixelLLM training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamPretrainConfig {
    pub steps: u64,
    /// Images per step, one prompted object each.
    pub batch_size: usize,
    pub peak_lr: f32,
    #[serde(default = "default_warmup")]
    pub warmup_steps: u64,
    /// Validation images whose objects are segmented for the reported mean IoU.
    #[serde(default = "default_eval_images")]
    pub eval_images: u64,
    /// Folder of cached pretrained encoders (relative to the working directory).
    pub cache: PathBuf,
}

fn default_warmup() -> u64 {
    50
}
fn default_eval_images() -> u64 {
    100
}

/// SAM's focal : dice weighting.
const FOCAL_WEIGHT: f32 = 20.0;
const FOCAL_ALPHA: f32 = 0.25;

impl SamPretrainConfig {
    /// Checks values no type can rule out, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| {
            Err(RunError::Config {
                key: format!("pretrain_sam.{key}"),
                message,
            })
        };
        if self.steps == 0 {
            return bad("steps", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if !(self.peak_lr.is_finite() && self.peak_lr > 0.0) {
            return bad("peak_lr", format!("must be positive, got {}", self.peak_lr));
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

/// SAM at the preset's image-encoder widths: its prompt encoder and mask decoder run at the
/// encoder's output width, as in SAM.
pub fn sam_config<P: PixelDims>() -> SamConfig {
    let vision = P::sam();
    let width = P::SamOut::SIZE;
    SamConfig {
        prompt_encoder_config: SamPromptEncoderConfig {
            hidden_size: width,
            image_size: vision.image_size,
            patch_size: vision.patch_size,
            mask_input_channels: 4,
            num_point_embeddings: 4,
            layer_norm_eps: 1e-6,
        },
        mask_decoder_config: SamMaskDecoderConfig {
            hidden_size: width,
            mlp_dim: 4 * width,
            num_attention_heads: 4,
            iou_head_hidden_dim: 2 * width,
            ..Default::default()
        },
        vision_config: vision,
    }
}

/// SAM-tiny learning promptable segmentation.
#[derive(Debug, Clone)]
pub struct PromptableSegmenter<P: PixelDims, D: Device<f32>> {
    pub sam: SamModel<P::SamHidden, P::SamOut, D>,
    dev: D,
}

impl<P: PixelDims, D: Device<f32>> PromptableSegmenter<P, D> {
    /// A random SAM whose absolute positions start from a sine-cosine table, as
    /// `PixelLlm::new` starts its SAM.
    pub fn new(dev: &D) -> Result<Self> {
        let mut sam = SamModel::new(dev, &sam_config::<P>())
            .map_err(|e| RunError::Invalid(format!("SAM: {e}")))?;
        if let Some(pos) = &mut sam.vision_encoder.pos_embed {
            let (_, h, w, _) = *pos.shape();
            pos.copy_from(&sincos_2d(h, w, P::SamHidden::SIZE));
        }
        Ok(PromptableSegmenter {
            sam,
            dev: dev.clone(),
        })
    }

    /// Which tensors train: all but the Fourier matrix (a fixed buffer in SAM).
    pub fn trainable() -> Trainable {
        Trainable::all().freeze("shared_image_embedding.positional_embedding")
    }

    fn predict<T: Tape<f32, D>>(
        &self,
        batch: &SegmentationBatch,
        tape: T,
    ) -> Result<MaskPrediction<D, T>> {
        let s = batch.image_size;
        let pixels = self
            .dev
            .tensor_from_vec(batch.pixels.clone(), (batch.images, 3, s, s))
            .put_tape(tape);
        let embeddings = self.sam.image_embeddings(pixels);
        self.sam
            .predict_from_embeddings(embeddings, &batch.prompts, false)
            .map_err(|e| RunError::Invalid(format!("SAM: {e}")))
    }

    /// Mean IoU of the predicted masks (logit > 0) with the targets (coverage >= 0.5).
    pub fn mean_iou(&self, batch: &SegmentationBatch) -> Result<f32> {
        let masks = self.predict(batch, NoneTape)?.masks.as_vec();
        let cells = masks.len() / batch.images.max(1);
        let ious: Vec<f32> = masks
            .chunks(cells)
            .zip(batch.targets.chunks(cells))
            .map(|(m, t)| {
                let (mut inter, mut union) = (0usize, 0usize);
                for (&logit, &target) in m.iter().zip(t) {
                    let (a, b) = (logit > 0.0, target >= 0.5);
                    inter += usize::from(a && b);
                    union += usize::from(a || b);
                }
                if union == 0 {
                    1.0
                } else {
                    inter as f32 / union as f32
                }
            })
            .collect();
        Ok(ious.iter().sum::<f32>() / ious.len().max(1) as f32)
    }
}

impl<P: PixelDims, D: Device<f32>> Params<D> for PromptableSegmenter<P, D> {
    fn visit_params(
        &mut self,
        prefix: &str,
        v: &mut dyn ParamVisitor<D>,
    ) -> pixel_core::Result<()> {
        self.sam.visit_params(prefix, v)
    }
}

impl<P: PixelDims, D: Device<f32>> TrainStep<D> for PromptableSegmenter<P, D> {
    type Batch = SegmentationBatch;

    fn loss(
        &self,
        batch: &SegmentationBatch,
        grads: Gradients<f32, D>,
    ) -> pixel_train::Result<(TapedScalar<D>, LossParts)> {
        let start: Tensor<(), f32, D> = self.dev.zeros_like(&());
        let (_, tape) = start.traced(grads).split_tape();
        let MaskPrediction {
            masks: logits,
            iou_scores,
        } = self.predict(batch, tape)?;
        let shape = *logits.shape();
        let cells = (shape.2 * shape.3) as f32;
        let iou_targets = actual_ious(&logits.as_vec(), &batch.targets, batch.images);
        let t = self.dev.tensor_from_vec(batch.targets.clone(), shape);
        let p = logits.retaped::<OwnedTape<f32, D>>().sigmoid();
        // Focal loss (Lin et al.): alpha_t (1 - p_t)^2 CE, CE in its stable form
        // max(x, 0) - x t + ln(1 + e^-|x|).
        let ce = logits.retaped::<OwnedTape<f32, D>>().relu()
            + (logits.retaped::<OwnedTape<f32, D>>().abs().negate().exp() + 1.0).ln()
            - logits * t.clone();
        let p_t = p.retaped::<OwnedTape<f32, D>>() * t.clone()
            + (p.retaped::<OwnedTape<f32, D>>().negate() + 1.0) * (t.clone().negate() + 1.0);
        let alpha_t = t.clone() * (2.0 * FOCAL_ALPHA - 1.0) + (1.0 - FOCAL_ALPHA);
        let focal =
            ((p_t.negate() + 1.0).square() * ce * alpha_t).sum() / (cells * batch.images as f32);
        // Dice per mask, averaged: 1 - (2 sum(p t) + 1) / (sum p + sum t + 1).
        let overlap = (p.retaped::<OwnedTape<f32, D>>() * t.clone()).sum::<_, Axes2<2, 3>>();
        let total = (p + t).sum::<_, Axes2<2, 3>>();
        let dice = ((overlap * 2.0 + 1.0) / (total + 1.0)).negate() + 1.0;
        let dice = dice.mean();
        let iou_shape = *iou_scores.shape();
        let iou_error = (iou_scores - self.dev.tensor_from_vec(iou_targets, iou_shape))
            .square()
            .mean();
        let mask_loss = focal * FOCAL_WEIGHT + dice;
        let parts = vec![
            LossPart::new("mask", mask_loss.as_vec()[0], 1.0),
            LossPart::new("iou", iou_error.as_vec()[0], 1.0),
        ];
        Ok((mask_loss + iou_error, parts))
    }
}

/// The IoU of each predicted mask (logit > 0) with its target: what SAM's IoU head learns.
fn actual_ious(logits: &[f32], targets: &[f32], images: usize) -> Vec<f32> {
    let cells = logits.len() / images.max(1);
    logits
        .chunks(cells)
        .zip(targets.chunks(cells))
        .map(|(m, t)| {
            let (mut inter, mut union) = (0.0f32, 0.0f32);
            for (&logit, &target) in m.iter().zip(t) {
                let a = f32::from(u8::from(logit > 0.0));
                inter += a * target;
                union += a + target - a * target;
            }
            if union > 0.0 {
                inter / union
            } else {
                1.0
            }
        })
        .collect()
}

/// Images, one prompt each (all boxes or all points), and each prompted object's mask.
#[derive(Debug, Clone)]
pub struct SegmentationBatch {
    pub images: usize,
    pub image_size: usize,
    /// `[B, 3, S, S]` with SAM's normalization.
    pub pixels: Vec<f32>,
    pub prompts: SamPrompts,
    /// `[B, 1, 4h, 4w]`: the fraction of each low-resolution cell the object covers.
    pub targets: Vec<f32>,
}

impl SegmentationBatch {
    /// `(sample, object)` pairs prompted by their boxes, or by `points` (one pixel of the
    /// object each), on a low-resolution mask of `side x side`.
    pub fn new(
        chosen: &[(&Sample, usize)],
        points: Option<&[[f32; 2]]>,
        side: usize,
    ) -> Result<Self> {
        let (first, _) = chosen
            .first()
            .ok_or_else(|| RunError::Invalid("cannot batch zero images".into()))?;
        let s = first.image.width() as usize;
        let mut pixels = Vec::with_capacity(chosen.len() * 3 * s * s);
        let mut boxes = Vec::with_capacity(chosen.len() * 4);
        let mut targets = Vec::with_capacity(chosen.len() * side * side);
        for (sample, k) in chosen {
            let object = sample.objects.get(*k).ok_or_else(|| {
                RunError::Invalid(format!("{} has no object {k}", sample.image_id))
            })?;
            for c in 0..3 {
                let (mean, std) = (SAM_NORMALIZATION.mean[c], SAM_NORMALIZATION.std[c]);
                pixels.extend(sample.image.pixels().map(|p| (p.0[c] as f32 - mean) / std));
            }
            boxes.extend(object.bbox.map(|v| v * s as f32));
            targets.extend(area_average(&object.mask, side, side));
        }
        let prompts = SamPrompts {
            points: points.map(|p| {
                (
                    p.iter().flat_map(|xy| xy.map(|v| v * s as f32)).collect(),
                    vec![1; p.len()],
                )
            }),
            boxes: points.is_none().then_some(boxes),
            masks: None,
            batch: chosen.len(),
            prompts: 1,
        };
        Ok(SegmentationBatch {
            images: chosen.len(),
            image_size: s,
            pixels,
            prompts,
            targets,
        })
    }
}

/// A pixel of `sample`'s object `k` drawn uniformly, normalized, at the pixel's centre.
fn point_in(sample: &Sample, k: usize, rng: &mut impl Rng) -> Result<[f32; 2]> {
    let mask = &sample.objects[k].mask;
    let inside: Vec<(u32, u32)> = mask
        .enumerate_pixels()
        .filter(|(_, _, p)| p.0[0] > 0)
        .map(|(x, y, _)| (x, y))
        .collect();
    if inside.is_empty() {
        return Err(RunError::Invalid(format!(
            "{}: object {k} has an empty mask",
            sample.image_id
        )));
    }
    let (x, y) = inside[rng.gen_range(0..inside.len())];
    let (w, h) = mask.dimensions();
    Ok([(x as f32 + 0.5) / w as f32, (y as f32 + 0.5) / h as f32])
}

/// The low-resolution mask side of preset `P` (SAM's decoder upsamples its grid 4x).
fn mask_side<P: PixelDims>() -> usize {
    let v = P::sam();
    4 * v.image_size / v.patch_size
}

/// The batch of pretraining step `step`: deterministic in `(seed, step)`; boxes on even steps,
/// points on odd ones.
fn segmentation_batch<P: PixelDims>(
    data: &impl SampleSource,
    config: &SamPretrainConfig,
    seed: u64,
    step: u64,
) -> Result<SegmentationBatch> {
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ step.wrapping_mul(0xE703_7ED1_A0B4_28DB));
    let mut samples = Vec::with_capacity(config.batch_size);
    while samples.len() < config.batch_size {
        let sample = data.load(Split::Train, rng.gen_range(0..data.images(Split::Train)))?;
        if !sample.objects.is_empty() {
            let k = rng.gen_range(0..sample.objects.len());
            samples.push((sample, k));
        }
    }
    let chosen: Vec<(&Sample, usize)> = samples.iter().map(|(s, k)| (s, *k)).collect();
    let points = if step % 2 == 1 {
        Some(
            samples
                .iter()
                .map(|(s, k)| point_in(s, *k, &mut rng))
                .collect::<Result<Vec<_>>>()?,
        )
    } else {
        None
    };
    SegmentationBatch::new(&chosen, points.as_deref(), mask_side::<P>())
}

/// `sam-pretrain.json` in a cache folder: written last, so its presence marks a finished run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SamPretrainReport {
    pub config: SamPretrainConfig,
    pub seed: u64,
    pub preset: String,
    pub first_loss: Option<f32>,
    pub final_loss: Option<f32>,
    /// Mean IoU on every object of the validation images, prompted by its box.
    pub box_miou: f32,
    /// The same objects prompted by one point inside each.
    pub point_miou: f32,
    pub validation_objects: usize,
    pub wall_s: f64,
}

/// The cache folder: `cache/<preset>-sam-<hash>`, the hash over every setting that changes the
/// weights (not the cache path).
pub fn cache_dir(
    config: &SamPretrainConfig,
    seed: u64,
    preset: &str,
    data: &serde_json::Value,
) -> PathBuf {
    let mut keyed = config.clone();
    keyed.cache = PathBuf::new();
    let key = serde_json::json!({
        "pretrain_sam": keyed, "seed": seed, "preset": preset, "data": data
    });
    crate::pretrain::stage_cache_dir(&config.cache, &format!("{preset}-sam"), &key)
}

/// The SAM image encoder of preset `P` on the default device.
pub type SamEncoder<P> = SamImageEncoder<
    <P as PixelDims>::SamHidden,
    <P as PixelDims>::SamOut,
    pixel_core::DefaultDevice,
>;

/// The pretrained SAM image encoder of preset `P`: from the cache, or trained now (an
/// interrupted run resumes) and cached; `data_key` as in [`crate::pretrain::pretrained_lm`].
pub fn pretrained_sam<P: PixelDims>(
    config: &SamPretrainConfig,
    data: &impl SampleSource,
    data_key: &serde_json::Value,
    seed: u64,
) -> Result<(SamEncoder<P>, SamPretrainReport)> {
    config.validate()?;
    let dir = cache_dir(config, seed, P::NAME, data_key);
    let run = RunDir::new(&dir);
    let dev = pixel_core::DefaultDevice::seed_from_u64(seed);
    let mut segmenter = PromptableSegmenter::<P, _>::new(&dev)?;
    let report_path = dir.join("sam-pretrain.json");
    if let Some(report) = crate::pretrain::load_finished_stage(&mut segmenter, &run, &report_path)?
    {
        return Ok((segmenter.sam.vision_encoder, report));
    }
    let report = train(
        &mut segmenter,
        &PromptableSegmenter::<P, pixel_core::DefaultDevice>::trainable(),
        &config.train_config(seed),
        &run,
        true,
        |step| Ok(segmentation_batch::<P>(data, config, seed, step)?),
    )?;
    let validation = (0..config.eval_images.min(data.images(Split::Validation)))
        .map(|i| data.load(Split::Validation, i))
        .collect::<pixel_data::Result<Vec<_>>>()?;
    let chosen: Vec<(&Sample, usize)> = validation
        .iter()
        .flat_map(|s| (0..s.objects.len()).map(move |k| (s, k)))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let points = chosen
        .iter()
        .map(|(s, k)| point_in(s, *k, &mut rng))
        .collect::<Result<Vec<_>>>()?;
    let side = mask_side::<P>();
    let box_miou = segmenter.mean_iou(&SegmentationBatch::new(&chosen, None, side)?)?;
    let point_miou = segmenter.mean_iou(&SegmentationBatch::new(&chosen, Some(&points), side)?)?;
    let log = pixel_train::read_log(&run.metrics_log())?;
    let report = SamPretrainReport {
        config: config.clone(),
        seed,
        preset: P::NAME.to_string(),
        first_loss: log.first().map(|l| l.loss),
        final_loss: report.last.map(|l| l.loss),
        box_miou,
        point_miou,
        validation_objects: chosen.len(),
        wall_s: report.wall_s,
    };
    crate::pretrain::write_stage_report(&report_path, &report)?;
    Ok((segmenter.sam.vision_encoder, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_core::optim::{alloc_grads, AdamW, AdamWConfig};
    use pixel_data::shapes_ln::{ShapesLn, ShapesLnConfig};
    use pixel_model::model::PixelTiny;

    /// A few AdamW steps on one box-prompted batch: the segmentation loss falls, through SAM's
    /// image encoder, prompt encoder and mask decoder.
    #[test]
    fn segmentation_loss_falls_on_a_fixed_batch() {
        let data = ShapesLn::new(ShapesLnConfig::default(), 0).unwrap();
        let samples: Vec<Sample> = (0..4)
            .map(|i| data.load(Split::Train, i).unwrap())
            .collect();
        let chosen: Vec<(&Sample, usize)> = samples.iter().map(|s| (s, 0)).collect();
        let batch = SegmentationBatch::new(&chosen, None, mask_side::<PixelTiny>()).unwrap();
        assert_eq!(batch.targets.len(), 4 * 32 * 32);
        let dev = pixel_core::DefaultDevice::seed_from_u64(0);
        let mut model = PromptableSegmenter::<PixelTiny, _>::new(&dev).unwrap();
        let trainable = PromptableSegmenter::<PixelTiny, pixel_core::DefaultDevice>::trainable();
        let mut optimizer = AdamW::new(AdamWConfig::default());
        let mut losses = Vec::new();
        for _ in 0..30 {
            let grads = alloc_grads(&mut model, &trainable).unwrap();
            let (loss, parts) = model.loss(&batch, grads).unwrap();
            losses.push(parts[0].value);
            optimizer
                .update(&mut model, &loss.backward(), &trainable, 3e-3)
                .unwrap();
        }
        assert!(losses[29] < 0.5 * losses[0], "{losses:?}");
    }

    #[test]
    fn a_drawn_point_lies_on_its_object() {
        let data = ShapesLn::new(ShapesLnConfig::default(), 0).unwrap();
        let sample = data.load(Split::Train, 3).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for k in 0..sample.objects.len() {
            let [x, y] = point_in(&sample, k, &mut rng).unwrap();
            let mask = &sample.objects[k].mask;
            let (w, h) = mask.dimensions();
            let pixel = mask.get_pixel((x * w as f32) as u32, (y * h as f32) as u32);
            assert!(pixel.0[0] > 0);
        }
    }
}
