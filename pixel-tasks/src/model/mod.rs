//! PixelLLM (Xu et al., CVPR 2024) assembled from its parts, in the order of the paper's figure:
//!
//! 1. image encoder: frozen SAM + trainable EVA02, features concatenated on channels;
//! 2. location prompt encoder: SAM's prompt encoder on the prompt box (whole image if none);
//! 3. prompt feature extractor: learnable output tokens through SAM's two-way transformer;
//! 4. language model: T5 whose encoder reads the visual tokens, then the text prompt;
//! 5. output heads: the vocabulary head and, on the same decoder features, the point head.
pub mod config;
pub mod presets;
pub mod prompt_feature_extractor;
pub mod vocab;

pub use config::{LmConfig, LmMode, ModelConfig};
pub use presets::{PixelDims, PixelTiny};
pub use prompt_feature_extractor::{PromptFeatureExtractor, PromptFuse};
pub use vocab::VocabMap;

use crate::error::{Result, TaskError};
use crate::eval::{Generated, Predictor, TeacherForced};
use crate::heads::point::Corners;
use crate::heads::PointHead;
use crate::tasks::Batch;
use crate::train::{LossParts, TapedScalar, TrainStep};
use dfdx::prelude::*;
use pixel_core::loss::{label_smoothed_cross_entropy, masked_l1};
use pixel_core::nn::{sincos_2d, Activation, Seq};
use pixel_core::params::{count_params, join, list_params, ParamVisitor, Params, Trainable};
use pixel_lm::generate::GenerateOptions;
use pixel_lm::presets::T5Dims;
use pixel_lm::t5::T5;
use pixel_vision::preprocess::{Normalization, CLIP_NORMALIZATION, SAM_NORMALIZATION};
use pixel_vision::{DualImageEncoder, Images, SamPromptEncoder};

type Lm<P> = <P as PixelDims>::Lm;
type LmWidth<P> = <<P as PixelDims>::Lm as T5Dims>::Model;
type LmVocab<P> = <<P as PixelDims>::Lm as T5Dims>::Vocab;

/// A PixelLLM with the widths of preset `P`.
#[derive(Debug, Clone)]
pub struct PixelLlm<P: PixelDims, D: Device<f32>> {
    pub image_encoder: DualImageEncoder<P::SamHidden, P::SamOut, P::Eva, P::Visual, D>,
    pub prompt_encoder: SamPromptEncoder<P::Prompt, D>,
    pub prompt_feature_extractor: PromptFeatureExtractor<P::Visual, P::Prompt, LmWidth<P>, D>,
    pub language_model: T5<Lm<P>, D>,
    pub point_head: PointHead<LmWidth<P>, P::PointHidden, D>,
    pub config: ModelConfig,
    pub vocab: VocabMap,
    dev: D,
}

/// The preset `pixel demo` trains.
pub type TinyPixelLlm = PixelLlm<PixelTiny, pixel_core::DefaultDevice>;

/// Everything a forward pass computes that a loss or a prediction reads.
struct Outputs<V: ConstDim, M: ConstDim, D: Device<f32>, T> {
    logits: Seq<V, D, T>,
    corners: Seq<Corners, D, T>,
    /// The T5 encoder's output, for generation (no tape: its ops are on the logits' tape).
    encoder_states: Seq<M, D>,
}

impl<P: PixelDims, D: Device<f32>> PixelLlm<P, D> {
    /// A randomly initialised model on `dev`.
    pub fn new(dev: &D, config: &ModelConfig, vocab: VocabMap) -> Result<Self> {
        config.validate().map_err(TaskError::Invalid)?;
        if config.preset != P::NAME {
            return Err(TaskError::Invalid(format!(
                "model.preset is `{}` but this model is `{}`",
                config.preset,
                P::NAME
            )));
        }
        let vision =
            |e: pixel_vision::VisionError| TaskError::Invalid(format!("image encoder: {e}"));
        let mut language_model = T5::new(dev, &P::language_model())
            .map_err(|e| TaskError::Invalid(format!("language model: {e}")))?;
        if config.lm.mode == LmMode::Lora {
            language_model.add_lora(dev, config.lm.lora_rank, config.lm.lora_scale);
        }
        let mut model = PixelLlm {
            image_encoder: DualImageEncoder::new(dev, &P::sam(), &P::eva()).map_err(vision)?,
            prompt_encoder: SamPromptEncoder::new(dev, &P::prompt_encoder()),
            prompt_feature_extractor: PromptFeatureExtractor::new(
                dev,
                config.output_tokens,
                config.prompt_feature_extractor_depth,
                P::two_way(),
                config.prompt_fuse,
            ),
            language_model,
            point_head: PointHead::new(
                dev,
                config.point_head_depth,
                config.point_head_pre_norm,
                Activation::Gelu,
            ),
            config: config.clone(),
            vocab,
            dev: dev.clone(),
        };
        model.init_absolute_positions();
        Ok(model)
    }

    /// Starts the backbones' absolute position embeddings from 2D sine-cosine tables (MAE's
    /// recipe for ViTs trained from scratch). SAM's reference initialisation is zeros, which a
    /// frozen SAM that was never pretrained would keep, leaving features that cannot tell where
    /// anything is. Loading pretrained weights overwrites these tables.
    fn init_absolute_positions(&mut self) {
        if let Some(pos) = &mut self.image_encoder.sam.pos_embed {
            let (_, h, w, _) = *pos.shape();
            pos.copy_from(&sincos_2d(h, w, P::SamHidden::SIZE));
        }
        let eva = &mut self.image_encoder.eva.pos_embed;
        let grid = ((eva.shape().1 - 1) as f64).sqrt() as usize;
        let mut table = vec![0.0; P::Eva::SIZE];
        table.extend(sincos_2d(grid, grid, P::Eva::SIZE));
        eva.copy_from(&table);
    }

    /// `(all parameters, trainable parameters)`.
    pub fn parameter_counts(&mut self, trainable: &Trainable) -> (usize, usize) {
        let all = count_params(self);
        let train = list_params(self)
            .iter()
            .filter(|p| trainable.is_trainable(&p.name))
            .map(|p| p.numel())
            .sum();
        (all, train)
    }

    /// Each backbone's input: the batch's `[0, 1]` pixels normalized by its mean and std.
    fn pixel_values(&self, batch: &Batch, normalization: &Normalization) -> Images<D> {
        let s = batch.image_size as usize;
        let plane = s * s;
        let mut values = batch.pixels.clone();
        for (i, v) in values.iter_mut().enumerate() {
            let c = (i / plane) % 3;
            *v = (*v * 255.0 - normalization.mean[c]) / normalization.std[c];
        }
        self.dev.tensor_from_vec(values, (batch.size, 3, s, s))
    }

    fn forward<T: Tape<f32, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        batch: &Batch,
        tape: T,
    ) -> Result<Outputs<LmVocab<P>, LmWidth<P>, D, T>> {
        let expected = P::sam().image_size as u32;
        if batch.image_size != expected {
            return Err(TaskError::Invalid(format!(
                "{} takes {expected} px images, the batch has {} px",
                P::NAME,
                batch.image_size
            )));
        }
        let b = batch.size;
        // 1. Image encoder: SAM without a tape (frozen), EVA02 on the training tape.
        let sam_pixels = self.pixel_values(batch, &SAM_NORMALIZATION);
        let eva_pixels = self.pixel_values(batch, &CLIP_NORMALIZATION).put_tape(tape);
        let features = self.image_encoder.forward(sam_pixels, eva_pixels).tokens;
        // 2. Location prompt: the prompt box's corners in the prompt encoder's pixel frame.
        let side = self.prompt_encoder.input_image_size as f32;
        let boxes: Vec<f32> = batch
            .prompt_boxes
            .iter()
            .flat_map(|bx| bx.to_array().map(|v| v * side))
            .collect();
        let sparse = self.prompt_encoder.embed_boxes::<T>(&boxes, b);
        let dense = self.prompt_encoder.dense_without_mask::<T>(b);
        // 3. Prompt feature extractor -> visual tokens in the LM's embedding space.
        let visual = self.prompt_feature_extractor.forward(
            features,
            &self.prompt_encoder.dense_pe(),
            dense,
            sparse,
        );
        // 4. T5: visual tokens first, then the text prompt.
        let n = visual.shape().1;
        let context = self
            .language_model
            .embed_tokens::<T>(self.language_model.ids(&batch.context_ids, b));
        let encoder_input = (visual, context).concat_along(Axis::<1>);
        let mask = self.encoder_mask(batch, n);
        let encoder_hidden = self.language_model.encode_embeds(encoder_input, &mask);
        let decoder_ids = self.language_model.ids(&batch.decoder_input_ids, b);
        let encoder_states = encoder_hidden.retaped::<NoneTape>();
        let hidden = self
            .language_model
            .decode(decoder_ids, encoder_hidden, &mask);
        // 5. The vocabulary head and the point head, side by side on the decoder features.
        let corners = self.point_head.forward(hidden.retaped::<T>());
        let logits = self.language_model.lm_logits(hidden);
        Ok(Outputs {
            logits,
            corners,
            encoder_states,
        })
    }

    /// `[B * (N + S)]`: the visual tokens are always real, the text prompt may be padded.
    fn encoder_mask(&self, batch: &Batch, visual_tokens: usize) -> Vec<bool> {
        let s = batch.context_len;
        (0..batch.size)
            .flat_map(|b| {
                std::iter::repeat_n(true, visual_tokens)
                    .chain(batch.context_mask[b * s..(b + 1) * s].iter().copied())
            })
            .collect()
    }
}

impl<P: PixelDims, D: Device<f32>> TrainStep<D> for PixelLlm<P, D> {
    type Batch = Batch;

    fn loss(&self, batch: &Batch, grads: Gradients<f32, D>) -> Result<(TapedScalar<D>, LossParts)> {
        // The tape starts with the slots allocated for the trainable parameters.
        let start: Tensor<(), f32, D> = self.dev.zeros_like(&());
        let (_, tape) = start.traced(grads).split_tape();
        let out = self.forward(batch, tape)?;
        let text = label_smoothed_cross_entropy(
            out.logits,
            &batch.target_ids,
            &batch.target_weights,
            self.config.label_smoothing,
        )?;
        // As scenic's `point_loss`: L1 on absolute coordinates, in pixels of the model input.
        let side = batch.image_size as f32;
        let pixel_targets: Vec<f32> = batch.location_targets.iter().map(|v| v * side).collect();
        let location = masked_l1(out.corners * side, &pixel_targets, &batch.location_weights)?;
        let parts = LossParts {
            text: text.as_vec()[0],
            location: location.as_vec()[0],
        };
        Ok((text + location * self.config.location_loss_weight, parts))
    }
}

impl<P: PixelDims, D: Device<f32>> Predictor for PixelLlm<P, D> {
    fn teacher_forced(&self, batch: &Batch) -> Result<TeacherForced> {
        let out = self.forward(batch, NoneTape)?;
        let v = LmVocab::<P>::SIZE;
        let logits = out.logits.as_vec();
        let argmax = logits
            .chunks(v)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(i, _)| i)
            })
            .collect();
        Ok(TeacherForced {
            argmax,
            corners: out.corners.as_vec(),
        })
    }

    fn generate(&self, batch: &Batch, max_new_tokens: usize) -> Result<Vec<Generated>> {
        let out = self.forward(batch, NoneTape)?;
        let n = out.encoder_states.shape().1 - batch.context_len;
        let mask = self.encoder_mask(batch, n);
        let generation = self.language_model.generate(
            &out.encoder_states,
            &mask,
            &GenerateOptions {
                max_new_tokens,
                num_beams: 1,
                length_penalty: 1.0,
            },
        );
        // As scenic's inference: the generated text is decoded once more with teacher forcing
        // and each token's location is read where that token is the decoder's input. The
        // locations are never fed back into decoding.
        let len = generation.sequences.first().map_or(0, Vec::len);
        if generation.sequences.iter().any(|s| s.len() != len) {
            return Err(TaskError::Invalid(
                "generated sequences differ in length".into(),
            ));
        }
        let ids: Vec<usize> = generation.sequences.iter().flatten().copied().collect();
        let hidden = self.language_model.decode::<NoneTape>(
            self.language_model.ids(&ids, batch.size),
            out.encoder_states,
            &mask,
        );
        let corners = self.point_head.forward(hidden).as_vec();
        Ok(generation
            .sequences
            .iter()
            .enumerate()
            .map(|(b, seq)| Generated {
                ids: seq[1..].to_vec(),
                corners: (1..len)
                    .map(|i| {
                        let at = (b * len + i) * 4;
                        [
                            corners[at],
                            corners[at + 1],
                            corners[at + 2],
                            corners[at + 3],
                        ]
                    })
                    .collect(),
            })
            .collect())
    }
}

impl<P: PixelDims, D: Device<f32>> Params<D> for PixelLlm<P, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> pixel_core::Result<()> {
        self.image_encoder
            .visit_params(&join(prefix, "image_encoder"), v)?;
        self.prompt_encoder
            .visit_params(&join(prefix, "prompt_encoder"), v)?;
        self.prompt_feature_extractor
            .visit_params(&join(prefix, "prompt_feature_extractor"), v)?;
        self.language_model
            .visit_params(&join(prefix, "language_model"), v)?;
        self.point_head.visit_params(&join(prefix, "point_head"), v)
    }
}

impl TinyPixelLlm {
    /// The demo's model: `pixel-tiny` on the default device, seeded.
    pub fn build(config: &ModelConfig, seed: u64) -> Result<Self> {
        let dev = pixel_core::DefaultDevice::seed_from_u64(seed);
        let tokenizer = pixel_lm::tokenizer::T5Tokenizer::bundled()
            .map_err(|e| TaskError::Invalid(e.to_string()))?;
        let words = PixelTiny::vocabulary_words().unwrap_or_default();
        let vocab = VocabMap::from_words(&tokenizer, &words, LmVocab::<PixelTiny>::SIZE)?;
        PixelLlm::new(&dev, config, vocab)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::{training_examples, DemoConfig};
    use crate::shapes_ln::ShapesLn;
    use crate::tasks::ExampleBuilder;
    use pixel_core::optim::alloc_grads;

    #[test]
    fn every_trainable_parameter_gets_a_gradient() {
        let config = DemoConfig::builtin().unwrap();
        let mut model = TinyPixelLlm::build(&config.model, 0).unwrap();
        let tok = pixel_lm::tokenizer::T5Tokenizer::bundled().unwrap();
        let vocab = model.vocab.clone();
        let builder = ExampleBuilder {
            tokenizer: &tok,
            vocab: &vocab,
            max_target_tokens: 40,
        };
        let data = ShapesLn::new(config.data.clone(), 0).unwrap();
        let ex = training_examples(&data, &builder, &config.tasks, 2, 0, 0).unwrap();
        let batch = Batch::new(&ex).unwrap();
        let trainable = config.model.trainable();
        let grads = alloc_grads(&mut model, &trainable).unwrap();
        let (loss, _) = model.loss(&batch, grads).unwrap();
        let grads = loss.backward();
        // dfdx's `Gradients::get` panics on a missing slot; a slot is missing when the tape that
        // holds it was dropped on the way to the loss, so no update would reach that parameter.
        struct Check<'a>(&'a Gradients<f32, Cpu>, &'a Trainable, Vec<String>);
        impl<'a> ParamVisitor<Cpu> for Check<'a> {
            fn visit(
                &mut self,
                name: &str,
                t: &mut dyn pixel_core::params::ParamTensor<Cpu>,
            ) -> pixel_core::Result<()> {
                if self.1.is_trainable(name) {
                    let g = self.0;
                    let t = &*t;
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.grad(g)))
                        .is_err()
                    {
                        self.2.push(name.to_string());
                    }
                }
                Ok(())
            }
        }
        let mut c = Check(&grads, &trainable, vec![]);
        model.visit_params("", &mut c).unwrap();
        assert!(c.2.is_empty(), "{:?}", c.2);
    }
}
